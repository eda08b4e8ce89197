//! JWT authorization of publishes and of subscribes to private rooms (`--publish-key`,
//! `--subscribe-key`, `--private-rooms`), checked on the shard thread in `Shard::process`,
//! so every transport (HTTP/1.1, TLS, HTTP/2, HTTP/3) gets the same answers.
//!
//! A key is given as:
//! - `hs256:SECRET` — an HS256 shared secret, inline;
//! - `hs256-file:PATH` — an HS256 secret read from a file (one trailing newline dropped);
//! - `rs256:PATH` or `es256:PATH` — a public key PEM file (SPKI `PUBLIC KEY`, or PKCS#1
//!   `RSA PUBLIC KEY` for RS256);
//! - `PATH` — a public key PEM file whose kind picks the algorithm (RSA → RS256, EC → ES256).
//!
//! Keys are read and decoded once, at start ([`TokenKey::parse`]); a token names its
//! algorithm in its header and any other than the key's is refused (no algorithm confusion).
//!
//! Claims: `exp` (required) and `nbf` (optional) are checked against the process clock with
//! [`LEEWAY_SECONDS`] of leeway; the rooms a token allows are `rooms: ["a", "b"]` and/or
//! `room: "a"`. Each entry is a [`RoomPattern`]: an exact name, `*` for every room, or a
//! prefix ending in `*` (`team-*`). Other claims (`sub`, `iss`, `aud`…) are ignored.
//!
//! Verification cost on the shard thread: an HMAC-SHA256 for HS256 (about a microsecond);
//! an RSA-2048 verify (tens of µs) or a P-256 verify (about 100 µs) for RS256/ES256, once
//! per publish request or subscribe, never per delivery.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::path::Path;

/// Seconds of clock skew allowed on `exp` and `nbf`: a token is still accepted this long
/// after it expired, and this long before it becomes valid.
pub const LEEWAY_SECONDS: u64 = 30;
/// Longest token looked at; longer ones are refused as invalid without being decoded (the
/// request head is bounded by `--max-header-bytes` anyway).
pub const TOKEN_BYTES_MAX: usize = 8 * 1024;
/// Room entries of one token that are considered; the rest are ignored, so a token cannot
/// make the check arbitrarily slow.
pub const TOKEN_ROOMS_MAX: usize = 1024;
/// Patterns `--private-rooms` may hold.
pub const PRIVATE_ROOM_PATTERNS_MAX: usize = 256;

/// A room name pattern: an exact name, `*` (every room), or `PREFIX*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomPattern {
    /// The name, or the prefix when `prefix` is set.
    text: String,
    /// Whether the pattern ended in `*`.
    prefix: bool,
}

impl RoomPattern {
    /// Parses a pattern as written in `--private-rooms` or a token's `rooms` claim. Only `*`
    /// at the end is special; a `*` elsewhere is refused for `--private-rooms` (room names
    /// cannot hold it) and simply matches nothing in a token.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (body, prefix) = match text.strip_suffix('*') {
            Some(body) => (body, true),
            None => (text, false),
        };
        if body.is_empty() && !prefix {
            return Err("empty room pattern".into());
        }
        if !body.is_empty() {
            ringcast_core::room::validate_room_name(body.as_bytes())
                .map_err(|err| format!("room pattern {text:?}: {err}"))?;
        }
        Ok(Self {
            text: body.to_owned(),
            prefix,
        })
    }

    /// Whether `room` matches.
    pub fn matches(&self, room: &str) -> bool {
        if self.prefix {
            room.starts_with(&self.text)
        } else {
            room == self.text
        }
    }
}

/// Why a request's token does not let it through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// No `Authorization: Bearer` header (nor `?token=` for a subscribe). 401.
    Missing,
    /// Not a well-formed JWT, a bad signature, another algorithm than the key's, no `exp`,
    /// or `nbf` in the future. 401; the text says which.
    Invalid(&'static str),
    /// `exp` passed (beyond the leeway). 401.
    Expired,
    /// A valid token whose claims do not list the room. 403.
    Forbidden,
}

impl TokenError {
    /// The HTTP status.
    pub fn status(self) -> u16 {
        match self {
            TokenError::Forbidden => 403,
            _ => 401,
        }
    }

    /// The plain-text reason for the response body.
    pub fn text(self) -> &'static str {
        match self {
            TokenError::Missing => "bearer token required",
            TokenError::Invalid(why) => why,
            TokenError::Expired => "token expired",
            TokenError::Forbidden => "token does not allow this room",
        }
    }

    /// The `WWW-Authenticate` header line (RFC 6750 §3).
    pub fn challenge(self) -> &'static str {
        match self {
            TokenError::Missing => "WWW-Authenticate: Bearer realm=\"ringcast\"\r\n",
            TokenError::Invalid(_) => {
                "WWW-Authenticate: Bearer realm=\"ringcast\", error=\"invalid_token\"\r\n"
            }
            TokenError::Expired => {
                "WWW-Authenticate: Bearer realm=\"ringcast\", error=\"invalid_token\", error_description=\"token expired\"\r\n"
            }
            TokenError::Forbidden => {
                "WWW-Authenticate: Bearer realm=\"ringcast\", error=\"insufficient_scope\"\r\n"
            }
        }
    }
}

/// What a verified token allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    rooms: Vec<RoomPattern>,
}

impl Grant {
    /// Whether the token allows `room`.
    pub fn allows(&self, room: &str) -> bool {
        self.rooms.iter().any(|pattern| pattern.matches(room))
    }
}

/// The claims ringcast reads. NumericDates may be fractional (RFC 7519 §2).
#[derive(Debug, Deserialize)]
struct Claims {
    exp: Option<f64>,
    nbf: Option<f64>,
    #[serde(default)]
    rooms: Vec<String>,
    room: Option<String>,
}

/// A verification key, decoded once at start.
#[derive(Clone)]
pub struct TokenKey {
    /// How it was given, with an inline secret hidden (for logs, `Debug` and reload checks).
    source: String,
    /// Hash of an inline secret, so that a changed secret is told apart by reloads without
    /// keeping the secret in `source`.
    secret_digest: u64,
    validation: Validation,
    key: DecodingKey,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKey")
            .field("source", &self.source)
            .field("algorithm", &self.validation.algorithms)
            .finish()
    }
}

impl PartialEq for TokenKey {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source && self.secret_digest == other.secret_digest
    }
}

fn validation(algorithm: Algorithm) -> Validation {
    // exp/nbf are checked by `verify` against the process clock, not jsonwebtoken's
    // SystemTime; aud/iss are not used.
    let mut validation = Validation::new(algorithm);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    validation
}

fn read_pem(path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(Path::new(path)).map_err(|err| format!("cannot read key file {path:?}: {err}"))
}

impl TokenKey {
    /// Parses a key given as `hs256:SECRET`, `hs256-file:PATH`, `rs256:PATH`, `es256:PATH`
    /// or `PATH` (module docs); files are read now.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let make = |source: String, secret_digest, algorithm, key| Self {
            source,
            secret_digest,
            validation: validation(algorithm),
            key,
        };
        if let Some(secret) = spec.strip_prefix("hs256:") {
            if secret.is_empty() {
                return Err("hs256: the secret is empty".into());
            }
            use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
            let digest = BuildHasherDefault::<DefaultHasher>::default().hash_one(secret);
            return Ok(make(
                "hs256:(secret)".into(),
                digest,
                Algorithm::HS256,
                DecodingKey::from_secret(secret.as_bytes())
                    .map_err(|err| format!("hs256: {err}"))?,
            ));
        }
        if let Some(path) = spec.strip_prefix("hs256-file:") {
            let mut secret = read_pem(path)?;
            if secret.last() == Some(&b'\n') {
                secret.pop();
                if secret.last() == Some(&b'\r') {
                    secret.pop();
                }
            }
            if secret.is_empty() {
                return Err(format!("hs256-file: {path:?} is empty"));
            }
            use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
            let digest = BuildHasherDefault::<DefaultHasher>::default().hash_one(&secret);
            return Ok(make(
                spec.to_owned(),
                digest,
                Algorithm::HS256,
                DecodingKey::from_secret(&secret).map_err(|err| format!("hs256-file: {err}"))?,
            ));
        }
        let bad = |kind: &str, path: &str, err: jsonwebtoken::errors::Error| {
            format!("{path:?} is not a {kind} public key PEM: {err}")
        };
        if let Some(path) = spec.strip_prefix("rs256:") {
            let key =
                DecodingKey::from_rsa_pem(&read_pem(path)?).map_err(|e| bad("RSA", path, e))?;
            return Ok(make(spec.to_owned(), 0, Algorithm::RS256, key));
        }
        if let Some(path) = spec.strip_prefix("es256:") {
            let key = DecodingKey::from_ec_pem(&read_pem(path)?).map_err(|e| bad("EC", path, e))?;
            return Ok(make(spec.to_owned(), 0, Algorithm::ES256, key));
        }
        if spec.is_empty() {
            return Err("empty key".into());
        }
        let pem = read_pem(spec)?;
        if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
            return Ok(make(spec.to_owned(), 0, Algorithm::RS256, key));
        }
        match DecodingKey::from_ec_pem(&pem) {
            Ok(key) => Ok(make(spec.to_owned(), 0, Algorithm::ES256, key)),
            Err(_) => Err(format!(
                "{spec:?} is neither an RSA nor an EC public key PEM (or write hs256:SECRET)"
            )),
        }
    }

    /// The algorithm tokens must be signed with.
    pub fn algorithm(&self) -> Algorithm {
        self.validation.algorithms[0]
    }

    /// How the key was given (an inline secret hidden).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Verifies `token` at `now_unix_seconds` (the process clock) and returns what it allows.
    pub fn verify(&self, token: &str, now_unix_seconds: u64) -> Result<Grant, TokenError> {
        use jsonwebtoken::errors::ErrorKind;
        if token.len() > TOKEN_BYTES_MAX {
            return Err(TokenError::Invalid("token too long"));
        }
        let claims = match jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation) {
            Ok(data) => data.claims,
            Err(err) => {
                return Err(TokenError::Invalid(match err.kind() {
                    ErrorKind::InvalidSignature => "invalid token: bad signature",
                    ErrorKind::InvalidAlgorithm => "invalid token: wrong algorithm",
                    ErrorKind::Json(_) => "invalid token: claims are not the expected JSON",
                    _ => "invalid token: malformed",
                }))
            }
        };
        let now = now_unix_seconds as f64;
        let leeway = LEEWAY_SECONDS as f64;
        let Some(exp) = claims.exp else {
            return Err(TokenError::Invalid("invalid token: no exp claim"));
        };
        if now > exp + leeway {
            return Err(TokenError::Expired);
        }
        if claims.nbf.is_some_and(|nbf| now + leeway < nbf) {
            return Err(TokenError::Invalid("invalid token: not valid yet (nbf)"));
        }
        let rooms = claims
            .room
            .iter()
            .chain(claims.rooms.iter())
            .take(TOKEN_ROOMS_MAX)
            .filter_map(|entry| RoomPattern::parse(entry).ok())
            .collect();
        Ok(Grant { rooms })
    }
}

/// The JWT settings: which requests need a token and the keys that check them.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtConfig {
    /// Checks publish tokens; every publish needs one when set.
    pub publish: Option<TokenKey>,
    /// Checks subscribe tokens for private rooms.
    pub subscribe: Option<TokenKey>,
    /// Rooms whose subscribers need a token.
    pub private_rooms: Vec<RoomPattern>,
}

impl JwtConfig {
    /// Builds the settings from the flags' text; `Err` names the flag at fault.
    pub fn new(
        publish: Option<&str>,
        subscribe: Option<&str>,
        private_rooms: &[String],
    ) -> Result<Option<Self>, (&'static str, String)> {
        let publish = publish
            .map(TokenKey::parse)
            .transpose()
            .map_err(|err| ("publish-key", err))?;
        let subscribe = subscribe
            .map(TokenKey::parse)
            .transpose()
            .map_err(|err| ("subscribe-key", err))?;
        let patterns = private_rooms
            .iter()
            .flat_map(|list| list.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(RoomPattern::parse)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| ("private-rooms", err))?;
        if patterns.len() > PRIVATE_ROOM_PATTERNS_MAX {
            return Err((
                "private-rooms",
                format!("more than {PRIVATE_ROOM_PATTERNS_MAX} patterns"),
            ));
        }
        match (&subscribe, patterns.is_empty()) {
            // Each relation blames the setting that is present, so `--check-config` can
            // point at its line.
            (None, false) => {
                return Err((
                    "private-rooms",
                    "needs --subscribe-key to check the tokens".into(),
                ))
            }
            (Some(_), true) => {
                return Err((
                    "subscribe-key",
                    "needs --private-rooms (use '*' for every room)".into(),
                ))
            }
            _ => {}
        }
        if publish.is_none() && subscribe.is_none() {
            return Ok(None);
        }
        Ok(Some(Self {
            publish,
            subscribe,
            private_rooms: patterns,
        }))
    }

    /// Whether subscribing to `room` needs a token.
    pub fn is_private(&self, room: &str) -> bool {
        self.private_rooms.iter().any(|p| p.matches(room))
    }

    /// The grant of a publish's token (`Ok(None)`: publishing is open).
    pub fn publish_grant(
        &self,
        bearer: Option<&str>,
        now_unix_seconds: u64,
    ) -> Result<Option<Grant>, TokenError> {
        let Some(key) = &self.publish else {
            return Ok(None);
        };
        let token = bearer.ok_or(TokenError::Missing)?;
        key.verify(token, now_unix_seconds).map(Some)
    }

    /// Whether a subscribe to `room` with `token` (header or query) may go on.
    pub fn check_subscribe(
        &self,
        room: &str,
        token: Option<&str>,
        now_unix_seconds: u64,
    ) -> Result<(), TokenError> {
        let Some(key) = &self.subscribe else {
            return Ok(());
        };
        if !self.is_private(room) {
            return Ok(());
        }
        let grant = key.verify(token.ok_or(TokenError::Missing)?, now_unix_seconds)?;
        if grant.allows(room) {
            Ok(())
        } else {
            Err(TokenError::Forbidden)
        }
    }
}

/// The token of an `Authorization` header value: `Bearer TOKEN` (scheme case-insensitive,
/// RFC 6750 §2.1); `None` for any other scheme or an empty token.
pub fn bearer_token(value: &[u8]) -> Option<&str> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    const NOW: u64 = 1_767_225_600;

    fn token(secret: &str, claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn patterns_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("lobby", "lobby", true),
            ("lobby", "lobby2", false),
            ("private-*", "private-a", true),
            ("private-*", "private-", true),
            ("private-*", "public", false),
            ("private:*", "private:x", true),
            ("*", "anything", true),
        ];
        for (pattern, room, want) in cases {
            assert_eq!(
                RoomPattern::parse(pattern).unwrap().matches(room),
                *want,
                "{pattern} {room}"
            );
        }
        assert!(RoomPattern::parse("").is_err());
        assert!(RoomPattern::parse("a b*").is_err());
        assert!(RoomPattern::parse("a*b").is_err());
    }

    #[test]
    fn verify_table() {
        let key = TokenKey::parse("hs256:s3cret").unwrap();
        let exp = NOW + 60;
        let cases: Vec<(String, Result<Vec<&str>, TokenError>)> = vec![
            (
                token(
                    "s3cret",
                    serde_json::json!({"exp": exp, "rooms": ["a", "team-*"]}),
                ),
                Ok(vec!["a", "team-x"]),
            ),
            (
                token("s3cret", serde_json::json!({"exp": exp, "room": "b"})),
                Ok(vec!["b"]),
            ),
            (
                token("other", serde_json::json!({"exp": exp, "rooms": ["*"]})),
                Err(TokenError::Invalid("invalid token: bad signature")),
            ),
            (
                token("s3cret", serde_json::json!({"rooms": ["*"]})),
                Err(TokenError::Invalid("invalid token: no exp claim")),
            ),
            (
                // Expired, but within the leeway.
                token(
                    "s3cret",
                    serde_json::json!({"exp": NOW - LEEWAY_SECONDS, "rooms": ["*"]}),
                ),
                Ok(vec!["z"]),
            ),
            (
                token(
                    "s3cret",
                    serde_json::json!({"exp": NOW - LEEWAY_SECONDS - 1, "rooms": ["*"]}),
                ),
                Err(TokenError::Expired),
            ),
            (
                token(
                    "s3cret",
                    serde_json::json!({"exp": exp, "nbf": NOW + LEEWAY_SECONDS + 5, "rooms": ["*"]}),
                ),
                Err(TokenError::Invalid("invalid token: not valid yet (nbf)")),
            ),
            (
                token(
                    "s3cret",
                    serde_json::json!({"exp": exp as f64 + 0.5, "nbf": NOW + 10, "rooms": ["*"]}),
                ),
                Ok(vec!["z"]),
            ),
            (
                "not.a.token".into(),
                Err(TokenError::Invalid("invalid token: malformed")),
            ),
            (
                token("s3cret", serde_json::json!({"exp": exp, "rooms": "a"})),
                Err(TokenError::Invalid(
                    "invalid token: claims are not the expected JSON",
                )),
            ),
        ];
        for (token, want) in cases {
            let got = key.verify(&token, NOW);
            match (got, want) {
                (Ok(grant), Ok(rooms)) => {
                    for room in rooms {
                        assert!(grant.allows(room), "{token}: {room}");
                    }
                    // "z" marks the `*` tokens, which allow everything.
                    let star = grant.allows("z");
                    assert_eq!(grant.allows("elsewhere"), star, "{token}");
                }
                (got, want) => assert_eq!(got.map(|_| ()), want.map(|_| ()), "{token}"),
            }
        }
    }

    #[test]
    fn another_algorithm_is_refused() {
        let key = TokenKey::parse("hs256:s3cret").unwrap();
        let token = encode(
            &Header::new(Algorithm::HS384),
            &serde_json::json!({"exp": NOW + 60, "rooms": ["*"]}),
            &EncodingKey::from_secret(b"s3cret").unwrap(),
        )
        .unwrap();
        assert_eq!(
            key.verify(&token, NOW),
            Err(TokenError::Invalid("invalid token: wrong algorithm"))
        );
    }

    #[test]
    fn es256_public_key_file_is_detected() {
        let pair = rcgen::KeyPair::generate().unwrap();
        let dir = std::env::temp_dir().join(format!("ringcast-jwt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("es256.pub.pem");
        std::fs::write(&path, pair.public_key_pem()).unwrap();
        let key = TokenKey::parse(path.to_str().unwrap()).unwrap();
        assert_eq!(key.algorithm(), Algorithm::ES256);
        let signed = encode(
            &Header::new(Algorithm::ES256),
            &serde_json::json!({"exp": NOW + 60, "rooms": ["a"]}),
            &EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap();
        assert!(key.verify(&signed, NOW).unwrap().allows("a"));
        assert!(TokenKey::parse(&format!("rs256:{}", path.display())).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn config_relations_and_subscribe_checks() {
        let private = vec!["private-*,vip".to_owned()];
        assert_eq!(
            JwtConfig::new(None, None, &private).unwrap_err().0,
            "private-rooms"
        );
        assert_eq!(
            JwtConfig::new(None, Some("hs256:k"), &[]).unwrap_err().0,
            "subscribe-key"
        );
        assert_eq!(JwtConfig::new(None, None, &[]).unwrap(), None);
        let config = JwtConfig::new(None, Some("hs256:k"), &private)
            .unwrap()
            .unwrap();
        assert!(config.is_private("vip") && config.is_private("private-x"));
        assert_eq!(config.check_subscribe("public", None, NOW), Ok(()));
        assert_eq!(
            config.check_subscribe("vip", None, NOW),
            Err(TokenError::Missing)
        );
        let only_a = token(
            "k",
            serde_json::json!({"exp": NOW + 5, "rooms": ["private-a"]}),
        );
        assert_eq!(
            config.check_subscribe("private-a", Some(&only_a), NOW),
            Ok(())
        );
        assert_eq!(
            config.check_subscribe("vip", Some(&only_a), NOW),
            Err(TokenError::Forbidden)
        );
        assert_eq!(config.publish_grant(None, NOW), Ok(None), "publish is open");
        assert!(format!("{config:?}").contains("hs256:(secret)"));
        assert!(!format!("{config:?}").contains("\"k\""));
    }

    #[test]
    fn bearer_header_values() {
        assert_eq!(bearer_token(b"Bearer abc.def.ghi"), Some("abc.def.ghi"));
        assert_eq!(bearer_token(b"bearer  x "), Some("x"));
        assert_eq!(bearer_token(b"Basic dXNlcjpwdw=="), None);
        assert_eq!(bearer_token(b"Bearer "), None);
        assert_eq!(bearer_token(b"Bearer"), None);
        assert_eq!(bearer_token(b"\xff"), None);
    }
}
