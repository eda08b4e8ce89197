//! Token parsing (`ringcast_proto::jwt`, `ringcast_proto::http::h1`): the `Authorization: Bearer` header and
//! the `?token=` / `?last_event_id=` query pairs of an events request, then verification
//! with a fixed HS256 key. Two modes, chosen by the first byte:
//! - even: `query \0 authorization-value`, both arbitrary, through `http1::parse`, and any
//!   token found verified (mostly refused: the fuzzer cannot forge the HMAC);
//! - odd: `header-json \0 claims-json`, both arbitrary, signed here with the key, so the
//!   JOSE header and the claims are parsed past the signature check.
//!
//! Never panics; a token accepted had an `exp` no older than the leeway; what the parser
//! extracted is what the request spelled.
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ringcast_proto::http::h1::{self as http1, Parsed, Route};
use ringcast_proto::jwt::{self, TokenKey, LEEWAY_SECONDS};
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const SECRET: &str = "fuzz-secret";
/// A fixed "now" (2026-01-01T00:00:00Z), so runs are reproducible.
const NOW: u64 = 1_767_225_600;

fn key() -> &'static TokenKey {
    static KEY: OnceLock<TokenKey> = OnceLock::new();
    KEY.get_or_init(|| TokenKey::parse(&format!("hs256:{SECRET}")).expect("hs256 key"))
}

fn split_nul(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    }
}

/// Verifies `token`; an accepted one must carry an unexpired `exp` in its claims.
fn check_verify(token: &str) {
    let Ok(grant) = key().verify(token, NOW) else {
        return;
    };
    let claims = token
        .split('.')
        .nth(1)
        .expect("a verified JWT has a payload");
    let claims = URL_SAFE_NO_PAD
        .decode(claims)
        .expect("payload is base64url");
    // Lossy: serde_json skips an ignored claim's string without checking its UTF-8, so
    // jsonwebtoken accepts a signed token with invalid UTF-8 in a claim ringcast does not
    // read (crash-abf0a863 was a strict parse here; harmless: only the key holder signs).
    let claims = String::from_utf8_lossy(&claims);
    // Likewise a claim ringcast does not read may hold a number serde_json's Value cannot
    // represent (crash-1b17b597: `1.2…e6666645`); jsonwebtoken skips it. Only the key
    // holder signs, so the check below applies to claims that parse as a Value.
    let Ok(claims) = serde_json::from_str::<serde_json::Value>(&claims) else {
        return;
    };
    let exp = claims["exp"]
        .as_f64()
        .expect("an accepted token has a numeric exp");
    assert!(
        exp + LEEWAY_SECONDS as f64 >= NOW as f64,
        "expired token accepted"
    );
    let _ = grant.allows("a");
}

fn through_http1(query: &[u8], authorization: &[u8]) {
    if authorization.iter().any(|&b| b == b'\r' || b == b'\n') {
        // A line break would end the header, and a blank line the head, early
        // (crash-f2e3871d: see http1.rs's `a_bare_lf_blank_line_ends_the_head`).
        return;
    }
    let mut request = b"GET /rooms/a/events?".to_vec();
    request.extend_from_slice(query);
    request.extend_from_slice(b" HTTP/1.1\r\nAuthorization: ");
    request.extend_from_slice(authorization);
    request.extend_from_slice(b"\r\n\r\n");
    let Ok(Parsed::Head(head)) = http1::parse(&request, 64 * 1024, 1024) else {
        return;
    };
    assert_eq!(head.route, Route::Events("a".into()));
    assert_eq!(head.len, request.len());
    let query = std::str::from_utf8(query).expect("httparse accepted it as a path");
    let pairs: Vec<&str> = query.split('&').collect();
    if let Some(id) = head.last_event_id {
        let spelled = pairs
            .iter()
            .filter_map(|pair| pair.strip_prefix("last_event_id="))
            .next_back();
        let parsed = spelled.and_then(|v| {
            ringcast_core::event_id::parse_resume_id(v.trim_ascii().as_bytes())
                .ok()
                .flatten()
        });
        assert_eq!(parsed, Some(id));
    }
    if let Some(token) = &head.query_token {
        assert!(!token.is_empty() && !token.contains('&'));
        assert!(pairs
            .iter()
            .any(|pair| pair.strip_prefix("token=") == Some(token)));
        check_verify(token);
    }
    if let Some(token) = &head.bearer {
        assert!(!token.is_empty() && token.trim() == token);
        assert!(String::from_utf8_lossy(authorization).contains(token.as_str()));
        check_verify(token);
    }
    // The extraction alone, on the raw value.
    if let Some(token) = jwt::bearer_token(authorization) {
        assert!(!token.is_empty());
    }
}

fn signed(header: &[u8], claims: &[u8]) {
    let mut token = URL_SAFE_NO_PAD.encode(header);
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(claims));
    let signature = jsonwebtoken::crypto::sign(
        token.as_bytes(),
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        Algorithm::HS256,
    )
    .expect("HMAC signs anything");
    token.push('.');
    token.push_str(&signature);
    check_verify(&token);
}

fuzz_target!(|data: &[u8]| {
    let [mode, rest @ ..] = data else { return };
    let (a, b) = split_nul(rest);
    if mode % 2 == 0 {
        through_http1(a, b);
    } else {
        signed(a, b);
    }
});
