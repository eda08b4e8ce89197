//! The opening handshake (RFC 6455 §4.2): checks an HTTP/1.1 upgrade request's head and
//! answers `101 Switching Protocols` with `Sec-WebSocket-Accept`, or a typed refusal.
//!
//! Owns header checks only. It takes the request head as [`UpgradeRequest`] (method, HTTP
//! minor version, header fields) so it does not depend on the HTTP parser: an `httparse`
//! header converts with `HeaderField::from`. Routing, auth and admission happen before it,
//! in the HTTP layer. No extension or subprotocol is negotiated (no permessage-deflate):
//! the client's offers are ignored, as §4.2.2 allows.
//!
//! Over HTTP/2 (RFC 8441 extended CONNECT, [`accept_extended_connect`]) the stream is
//! opened by `:method CONNECT` with `:protocol websocket` (the caller checked both): there
//! is no `Upgrade`/`Connection` token, no key and no accept (§5), and the answer is `200`;
//! `Sec-WebSocket-Version` and `Origin` are checked as over HTTP/1.1.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;

/// The GUID every server appends to the client's key (§1.3).
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// One header field of the request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderField<'a> {
    /// Field name (any case).
    pub name: &'a str,
    /// Field value as sent.
    pub value: &'a [u8],
}

impl<'a> From<&httparse::Header<'a>> for HeaderField<'a> {
    fn from(header: &httparse::Header<'a>) -> Self {
        Self {
            name: header.name,
            value: header.value,
        }
    }
}

/// What the handshake needs of a request head.
#[derive(Debug, Clone, Copy)]
pub struct UpgradeRequest<'a> {
    /// The method token (`GET`).
    pub method: &'a str,
    /// HTTP/1.x minor version (`1` for HTTP/1.1; httparse's `version`).
    pub version: u8,
    /// Every header field, in order.
    pub headers: &'a [HeaderField<'a>],
}

/// Which `Origin` values may open a WebSocket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum OriginPolicy {
    /// Any origin, or none (the default: ringcast's auth is the token, not the origin).
    #[default]
    Any,
    /// Only these origins (`scheme://host[:port]`, compared without regard to ASCII case).
    /// A request without `Origin` (not a browser) is let through: the header guards
    /// against other sites' pages in a browser, which always send it.
    AllowList(Vec<String>),
}

/// Why an upgrade request is refused: an HTTP status, a short reason, maybe a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// Not `GET` (405).
    #[error("websocket upgrade must be GET")]
    NotGet,
    /// Not HTTP/1.1 (400).
    #[error("websocket upgrade needs HTTP/1.1")]
    NotHttp11,
    /// No `Upgrade: websocket` token (426: this resource speaks only WebSocket).
    #[error("upgrade: websocket required")]
    NoUpgradeToken,
    /// No `Connection: upgrade` token (400).
    #[error("connection: upgrade required")]
    NoConnectionToken,
    /// `Sec-WebSocket-Version` missing or not 13 (426 with `Sec-WebSocket-Version: 13`).
    #[error("sec-websocket-version 13 required")]
    BadVersion,
    /// `Sec-WebSocket-Key` missing or not base64 of 16 bytes (400).
    #[error("sec-websocket-key must be base64 of 16 bytes")]
    BadKey,
    /// A field that must appear once appears more often (400).
    #[error("repeated {0} header")]
    Repeated(&'static str),
    /// `Origin` is not on the allow-list (403).
    #[error("origin not allowed")]
    OriginRefused,
}

impl HandshakeError {
    /// The HTTP status of the refusal.
    pub fn status(self) -> u16 {
        match self {
            Self::NotGet => 405,
            Self::NoUpgradeToken | Self::BadVersion => 426,
            Self::OriginRefused => 403,
            Self::NotHttp11 | Self::NoConnectionToken | Self::BadKey | Self::Repeated(_) => 400,
        }
    }

    /// Header lines (`Name: value\r\n`) the refusal must carry.
    pub fn extra_headers(self) -> &'static str {
        match self {
            Self::NotGet => "Allow: GET\r\n",
            Self::NoUpgradeToken => "Upgrade: websocket\r\nConnection: Upgrade\r\n",
            Self::BadVersion => "Sec-WebSocket-Version: 13\r\n",
            _ => "",
        }
    }
}

/// Whether a comma-separated header list holds `token` (ASCII case-insensitive).
fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|item| item.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// `Sec-WebSocket-Accept` for a client key: base64(SHA-1(key + GUID)) (§4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    let mut input = Vec::with_capacity(key.len() + ACCEPT_GUID.len());
    input.extend_from_slice(key);
    input.extend_from_slice(ACCEPT_GUID.as_bytes());
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    BASE64.encode(digest.as_ref())
}

/// Checks an upgrade request and returns the complete `101` response head to write.
pub fn accept(
    request: &UpgradeRequest<'_>,
    origins: &OriginPolicy,
) -> Result<Bytes, HandshakeError> {
    if request.method != "GET" {
        return Err(HandshakeError::NotGet);
    }
    if request.version != 1 {
        return Err(HandshakeError::NotHttp11);
    }
    let (mut upgrade, mut connection) = (false, false);
    let (mut version, mut key, mut origin) = (None, None, None);
    for field in request.headers {
        let name = field.name;
        let value = field.value;
        if name.eq_ignore_ascii_case("upgrade") {
            upgrade |= has_token(value, "websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            connection |= has_token(value, "upgrade");
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            if version.replace(value).is_some() {
                return Err(HandshakeError::Repeated("sec-websocket-version"));
            }
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            if key.replace(value).is_some() {
                return Err(HandshakeError::Repeated("sec-websocket-key"));
            }
        } else if name.eq_ignore_ascii_case("origin") && origin.replace(value).is_some() {
            return Err(HandshakeError::Repeated("origin"));
        }
    }
    if !upgrade {
        return Err(HandshakeError::NoUpgradeToken);
    }
    if !connection {
        return Err(HandshakeError::NoConnectionToken);
    }
    if version.map(<[u8]>::trim_ascii) != Some(b"13") {
        return Err(HandshakeError::BadVersion);
    }
    let key = key.map(<[u8]>::trim_ascii).ok_or(HandshakeError::BadKey)?;
    // 16 bytes are 24 base64 characters with padding; anything else is not a key.
    if key.len() != 24 || BASE64.decode(key).map(|raw| raw.len()) != Ok(16) {
        return Err(HandshakeError::BadKey);
    }
    check_origin(origins, origin)?;
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(key)
    );
    Ok(Bytes::from(response))
}

/// Refuses an `Origin` that is not on the allow-list (none is let through).
fn check_origin(origins: &OriginPolicy, origin: Option<&[u8]>) -> Result<(), HandshakeError> {
    if let (OriginPolicy::AllowList(allowed), Some(origin)) = (origins, origin) {
        let origin = origin.trim_ascii();
        if !allowed
            .iter()
            .any(|allowed| allowed.as_bytes().eq_ignore_ascii_case(origin))
        {
            return Err(HandshakeError::OriginRefused);
        }
    }
    Ok(())
}

/// The answer head to an RFC 8441 extended CONNECT that opens a WebSocket: a `200` with no
/// field (the stream's DATA then carries RFC 6455 frames both ways).
pub const EXTENDED_CONNECT_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\n\r\n";

/// Checks the header fields of an RFC 8441 extended CONNECT (`:protocol websocket`, which
/// the HTTP/2 layer checked, as the method) and returns the `200` head to answer with
/// ([`EXTENDED_CONNECT_RESPONSE`], written as HTTP/1.1 bytes for the layer that translates
/// it). `Sec-WebSocket-Version` must be 13 and `Origin` allowed, as over HTTP/1.1 (RFC 8441
/// §5); `Sec-WebSocket-Key` is not used and `Upgrade`/`Connection` cannot appear (HTTP/2
/// forbids connection-specific fields).
pub fn accept_extended_connect(
    headers: &[HeaderField<'_>],
    origins: &OriginPolicy,
) -> Result<Bytes, HandshakeError> {
    let (mut version, mut origin) = (None, None);
    for field in headers {
        let name = field.name;
        if name.eq_ignore_ascii_case("sec-websocket-version") {
            if version.replace(field.value).is_some() {
                return Err(HandshakeError::Repeated("sec-websocket-version"));
            }
        } else if name.eq_ignore_ascii_case("origin") && origin.replace(field.value).is_some() {
            return Err(HandshakeError::Repeated("origin"));
        }
    }
    if version.map(<[u8]>::trim_ascii) != Some(b"13") {
        return Err(HandshakeError::BadVersion);
    }
    check_origin(origins, origin)?;
    Ok(Bytes::from_static(EXTENDED_CONNECT_RESPONSE))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"dGhlIHNhbXBsZSBub25jZQ==";

    fn good() -> Vec<(&'static str, &'static [u8])> {
        vec![
            ("Host", b"example"),
            ("Upgrade", b"websocket"),
            ("Connection", b"Upgrade"),
            ("Sec-WebSocket-Key", KEY),
            ("Sec-WebSocket-Version", b"13"),
        ]
    }

    fn run(
        method: &str,
        version: u8,
        fields: &[(&str, &[u8])],
        origins: &OriginPolicy,
    ) -> Result<Bytes, HandshakeError> {
        let headers: Vec<HeaderField> = fields
            .iter()
            .map(|&(name, value)| HeaderField { name, value })
            .collect();
        accept(
            &UpgradeRequest {
                method,
                version,
                headers: &headers,
            },
            origins,
        )
    }

    /// The RFC's own example (§1.3): key `dGhlIHNhbXBsZSBub25jZQ==`.
    #[test]
    fn rfc_example_accept() {
        assert_eq!(accept_key(KEY), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let response = run("GET", 1, &good(), &OriginPolicy::Any).unwrap();
        assert_eq!(
            &response[..],
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );
    }

    /// Tokens are matched in comma lists, in any case, across repeated fields.
    #[test]
    fn tokens_in_lists_any_case() {
        let mut fields = good();
        fields[1] = ("upgrade", b"foo/1, WebSocket");
        fields[2] = ("CONNECTION", b"keep-alive, UPGRADE");
        run("GET", 1, &fields, &OriginPolicy::Any).unwrap();
        fields[2] = ("connection", b"keep-alive");
        fields.push(("Connection", b"upgrade"));
        run("GET", 1, &fields, &OriginPolicy::Any).unwrap();
        // "upgrades" is not the token "upgrade".
        let mut fields = good();
        fields[2] = ("connection", b"upgrades");
        assert_eq!(
            run("GET", 1, &fields, &OriginPolicy::Any),
            Err(HandshakeError::NoConnectionToken)
        );
    }

    #[test]
    fn refusals_with_status() {
        type Edit = fn(&mut Vec<(&'static str, &'static [u8])>);
        let cases: &[(&str, u8, Edit, HandshakeError, u16)] = &[
            ("POST", 1, |_| {}, HandshakeError::NotGet, 405),
            ("GET", 0, |_| {}, HandshakeError::NotHttp11, 400),
            (
                "GET",
                1,
                |f| f.retain(|h| h.0 != "Upgrade"),
                HandshakeError::NoUpgradeToken,
                426,
            ),
            (
                "GET",
                1,
                |f| f[1].1 = b"h2c",
                HandshakeError::NoUpgradeToken,
                426,
            ),
            (
                "GET",
                1,
                |f| f.retain(|h| h.0 != "Connection"),
                HandshakeError::NoConnectionToken,
                400,
            ),
            ("GET", 1, |f| f[4].1 = b"8", HandshakeError::BadVersion, 426),
            (
                "GET",
                1,
                |f| f.retain(|h| h.0 != "Sec-WebSocket-Version"),
                HandshakeError::BadVersion,
                426,
            ),
            (
                "GET",
                1,
                |f| f.retain(|h| h.0 != "Sec-WebSocket-Key"),
                HandshakeError::BadKey,
                400,
            ),
            (
                "GET",
                1,
                |f| f[3].1 = b"dGhlIHNhbXBsZSBub25jZQ",
                HandshakeError::BadKey,
                400,
            ),
            // 24 characters, valid base64, but 17 bytes would need more: 15 bytes + junk.
            (
                "GET",
                1,
                |f| f[3].1 = b"!!!!!!!!!!!!!!!!!!!!!!==",
                HandshakeError::BadKey,
                400,
            ),
            (
                "GET",
                1,
                |f| f[3].1 = b"AAAAAAAAAAAAAAAAAAAAAAAA",
                HandshakeError::BadKey,
                400,
            ),
            (
                "GET",
                1,
                |f| f.push(("sec-websocket-key", KEY)),
                HandshakeError::Repeated("sec-websocket-key"),
                400,
            ),
            (
                "GET",
                1,
                |f| f.push(("Sec-WebSocket-Version", b"13")),
                HandshakeError::Repeated("sec-websocket-version"),
                400,
            ),
        ];
        for (method, version, edit, want, status) in cases {
            let mut fields = good();
            edit(&mut fields);
            let got = run(method, *version, &fields, &OriginPolicy::Any);
            assert_eq!(got, Err(*want), "{method} {fields:?}");
            assert_eq!(want.status(), *status);
        }
        assert_eq!(
            HandshakeError::BadVersion.extra_headers(),
            "Sec-WebSocket-Version: 13\r\n"
        );
    }

    #[test]
    fn origin_allow_list() {
        let policy = OriginPolicy::AllowList(vec!["https://live.example".into()]);
        let mut fields = good();
        // No Origin: not a browser, let through.
        run("GET", 1, &fields, &policy).unwrap();
        fields.push(("Origin", b"HTTPS://LIVE.example"));
        run("GET", 1, &fields, &policy).unwrap();
        fields.pop();
        fields.push(("Origin", b"https://evil.example"));
        assert_eq!(
            run("GET", 1, &fields, &policy),
            Err(HandshakeError::OriginRefused)
        );
        assert_eq!(HandshakeError::OriginRefused.status(), 403);
        run("GET", 1, &fields, &OriginPolicy::Any).unwrap();
        fields.push(("origin", b"https://live.example"));
        assert_eq!(
            run("GET", 1, &fields, &policy),
            Err(HandshakeError::Repeated("origin"))
        );
    }

    /// RFC 8441 §5: no key, no upgrade tokens; version 13 and the origin as over HTTP/1.1.
    #[test]
    fn extended_connect_checks_version_and_origin_only() {
        let fields = |list: &[(&'static str, &'static [u8])]| -> Vec<HeaderField<'static>> {
            list.iter()
                .map(|&(name, value)| HeaderField { name, value })
                .collect()
        };
        let any = OriginPolicy::Any;
        let ok = fields(&[("host", b"example"), ("sec-websocket-version", b"13")]);
        assert_eq!(
            &accept_extended_connect(&ok, &any).unwrap()[..],
            b"HTTP/1.1 200 OK\r\n\r\n"
        );
        type Fields<'a> = &'a [(&'a str, &'a [u8])];
        let table: &[(Fields, HandshakeError)] = &[
            (&[], HandshakeError::BadVersion),
            (
                &[("sec-websocket-version", b"8")],
                HandshakeError::BadVersion,
            ),
            (
                &[
                    ("sec-websocket-version", b"13"),
                    ("Sec-WebSocket-Version", b"13"),
                ],
                HandshakeError::Repeated("sec-websocket-version"),
            ),
            (
                &[
                    ("sec-websocket-version", b"13"),
                    ("origin", b"https://a.example"),
                    ("origin", b"https://a.example"),
                ],
                HandshakeError::Repeated("origin"),
            ),
        ];
        for (list, want) in table {
            assert_eq!(
                accept_extended_connect(&fields(list), &any),
                Err(*want),
                "{list:?}"
            );
        }
        let policy = OriginPolicy::AllowList(vec!["https://live.example".into()]);
        let mut with_origin = ok.clone();
        with_origin.push(HeaderField {
            name: "origin",
            value: b"https://evil.example",
        });
        assert_eq!(
            accept_extended_connect(&with_origin, &policy),
            Err(HandshakeError::OriginRefused)
        );
        accept_extended_connect(&ok, &policy).unwrap();
    }
}
