//! HTTP/1.1 request heads (parsed with `httparse`, routed by the one route table of
//! route.rs) and the responses ringcast writes. No IO here: the shard hands in bytes and
//! writes what comes back.

pub use crate::http::route::{Method, Route};
use bytes::Bytes;
use ringcast_core::event_id::{parse_resume_id, ResumeId};

/// Headers a request may carry at most; more gets 431.
pub const HEADERS_MAX: usize = 48;

/// A parsed request head, reduced to what ringcast uses.
#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    /// Bytes of the request line and headers, including the blank line.
    pub len: usize,
    /// The method.
    pub method: Method,
    /// What was asked for.
    pub route: Route,
    /// Declared body length.
    pub content_length: usize,
    /// The client sent `Expect: 100-continue` on HTTP/1.1 and waits for `100 Continue`
    /// before its body (RFC 9110 §10.1.1; ignored on HTTP/1.0).
    pub expect_continue: bool,
    /// The client asked to close after this request (or spoke HTTP/1.0 without keep-alive).
    pub close: bool,
    /// `Last-Event-ID` header or `last_event_id` query value (none when empty).
    pub last_event_id: Option<ResumeId>,
    /// The token of an `Authorization: Bearer` header.
    pub bearer: Option<String>,
    /// A `token` query value (for subscribes: `EventSource` cannot set headers).
    pub query_token: Option<String>,
    /// The `Idempotency-Key` header of a publish, checked (idempotency.rs).
    pub idempotency_key: Option<String>,
    /// For `/metrics`: the exposition format the `Accept` header asks for (Prometheus text
    /// for every other route).
    pub metrics_format: ringcast_core::metrics::Format,
}

/// A request that must be refused, with its status and a short reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status.
    pub status: u16,
    /// Plain-text reason for the body.
    pub reason: String,
    /// Extra header lines (`Name: value\r\n`).
    pub extra: &'static str,
}

impl Refusal {
    fn new(status: u16, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
            extra: "",
        }
    }

    /// The 404 every unknown path gets (also `/demo` under `--no-demo`).
    pub fn not_found() -> Self {
        Self::new(404, "not found")
    }
}

/// The outcome of parsing what a connection sent so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Partial,
    /// A full head.
    Head(Head),
}

/// Parses a request head from `buf`.
pub fn parse(
    buf: &[u8],
    max_header_bytes: usize,
    max_body_bytes: usize,
) -> Result<Parsed, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            if buf.len() > max_header_bytes {
                return Err(Refusal::new(431, "request header fields too large"));
            }
            return Ok(Parsed::Partial);
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal::new(431, "too many header fields"))
        }
        Err(err) => return Err(Refusal::new(400, format!("bad request: {err}"))),
    };
    if len > max_header_bytes {
        return Err(Refusal::new(431, "request header fields too large"));
    }
    let method = Method::from_token(request.method.unwrap_or_default());
    let version = request.version.unwrap_or(1);
    let mut close = version == 0;
    let mut content_length = None;
    let mut chunked = false;
    let mut hosts = 0usize;
    let mut expect_continue = false;
    let mut last_event_id = None;
    let mut accept = None;
    let mut bearer = None;
    let mut idempotency_key = None;
    for header in request.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            // Every field and every list element must name the same length (RFC 9110
            // §8.6): two lengths are a smuggling attempt, whichever one a proxy took.
            for value in header.value.split(|&b| b == b',') {
                let length = parse_content_length(value, max_body_bytes)?;
                if content_length.is_some_and(|first| first != length) {
                    return Err(Refusal::new(400, "conflicting content-length"));
                }
                content_length = Some(length);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
        } else if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case("expect") {
            if !header
                .value
                .trim_ascii()
                .eq_ignore_ascii_case(b"100-continue")
            {
                return Err(Refusal::new(417, "only expect: 100-continue is supported"));
            }
            expect_continue = version == 1;
        } else if name.eq_ignore_ascii_case("connection") {
            let value = String::from_utf8_lossy(header.value).to_ascii_lowercase();
            if value.contains("close") {
                close = true;
            } else if value.contains("keep-alive") {
                close = false;
            }
        } else if name.eq_ignore_ascii_case("last-event-id") {
            last_event_id = parse_id(header.value)?;
        } else if name.eq_ignore_ascii_case("accept") {
            accept = std::str::from_utf8(header.value).ok();
        } else if name.eq_ignore_ascii_case("authorization") {
            bearer = crate::jwt::bearer_token(header.value).map(str::to_owned);
        } else if name.eq_ignore_ascii_case("idempotency-key") {
            let key = match idempotency_key {
                Some(_) => Err(crate::idempotency::KeyError::Repeated),
                None => crate::idempotency::validate_key(header.value),
            };
            let key = key.map_err(|err| Refusal::new(400, err.to_string()))?;
            idempotency_key = Some(key.to_owned());
        }
    }
    if chunked && content_length.is_some() {
        // RFC 9112 §6.3: a request with both is a smuggling attempt; answer and close.
        return Err(Refusal::new(
            400,
            "transfer-encoding together with content-length",
        ));
    }
    if chunked {
        return Err(Refusal::new(
            411,
            "chunked bodies are not accepted; send content-length",
        ));
    }
    // RFC 9112 §3.2: exactly one Host on HTTP/1.1 (HTTP/1.0 needs none).
    match (version, hosts) {
        (1, 0) => return Err(Refusal::new(400, "missing host header")),
        (_, 2..) => return Err(Refusal::new(400, "more than one host header")),
        _ => {}
    }
    let content_length = content_length.unwrap_or(0);
    let target = origin_form(request.path.unwrap_or("/"));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut query_token = None;
    for pair in query.split('&') {
        if let Some(value) = pair.strip_prefix("last_event_id=") {
            last_event_id = parse_id(value.as_bytes())?;
        } else if let Some(value) = pair.strip_prefix("token=") {
            // base64url and '.': nothing to percent-decode in a JWT.
            query_token = (!value.is_empty()).then(|| value.to_owned());
        }
    }
    let route = Route::parse(path)
        .map_err(|err| Refusal::new(err.status(), err.to_string()))?
        .into_owned();
    let metrics_format = if route == Route::Metrics {
        crate::http::negotiate::metrics_format(accept)
    } else {
        ringcast_core::metrics::Format::Prometheus
    };
    Ok(Parsed::Head(Head {
        metrics_format,
        len,
        method,
        route,
        content_length,
        expect_continue,
        close,
        last_event_id,
        bearer,
        query_token,
        idempotency_key,
    }))
}

/// The origin form (`/path?query`) of a request target that may be in absolute form
/// (`https://host/path?query`), which a server must accept (RFC 9112 §3.2.2) and some
/// clients send (hyper's connection-level client, proxies).
fn origin_form(target: &str) -> &str {
    for scheme in ["http://", "https://"] {
        let Some(prefix) = target.get(..scheme.len()) else {
            continue;
        };
        if !prefix.eq_ignore_ascii_case(scheme) {
            continue;
        }
        let rest = &target[scheme.len()..];
        return match rest.find(['/', '?']) {
            Some(at) if rest[at..].starts_with('/') => &rest[at..],
            _ => "/",
        };
    }
    target
}

/// A `Content-Length` value: decimal digits only (RFC 9110 §8.6), at most `max_body_bytes`
/// on every method. A declared length over the limit is refused from the head, so no route
/// ever waits for (or buffers) a body it would not take, and `len + content_length` cannot
/// overflow.
fn parse_content_length(value: &[u8], max_body_bytes: usize) -> Result<usize, Refusal> {
    let value = value.trim_ascii();
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(Refusal::new(400, "bad content-length"));
    }
    // All digits: only an overflow can fail, and an overflowing length is over any limit.
    let declared = std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(u64::MAX);
    if declared > max_body_bytes as u64 {
        return Err(Refusal::new(
            413,
            format!("body over {max_body_bytes} bytes"),
        ));
    }
    Ok(declared as usize)
}

/// A resume id (ringcast_core::event_id): `E-S`, or anything else visible that gets a reset; 400
/// for garbage.
fn parse_id(value: &[u8]) -> Result<Option<ResumeId>, Refusal> {
    parse_resume_id(value.trim_ascii())
        .map_err(|err| Refusal::new(400, format!("bad last event id: {err}")))
}

/// What can be refused from a parsed head before any body is read: a method the route does
/// not answer (405), a body on a route that takes none (413: it would never be read, so it
/// is not waited for either).
pub fn vet(head: &Head) -> Result<(), Refusal> {
    if !head.route.allows(head.method) {
        return Err(method_not_allowed(head.route.allowed()));
    }
    if head.content_length > 0 && !head.route.takes_body() {
        return Err(Refusal::new(413, "this route takes no request body"));
    }
    Ok(())
}

/// The interim answer to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// A 405 for a route that answers to `allowed` only.
pub fn method_not_allowed(allowed: Method) -> Refusal {
    let extra = if allowed == Method::Post {
        "Allow: POST\r\n"
    } else {
        "Allow: GET, HEAD\r\n"
    };
    Refusal {
        status: 405,
        reason: "method not allowed".into(),
        extra,
    }
}

fn status_text(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        417 => "Expectation Failed",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// The `Alt-Svc` header line every response carries once HTTP/3 is on (set once at start).
static ALT_SVC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
/// The SSE head with [`ALT_SVC`] in it, built on first use.
static SSE_HEAD_ALT_SVC: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();

/// Makes every response advertise HTTP/3 on UDP `port` (`Alt-Svc: h3=":PORT"`). Called once,
/// before any response is rendered; later calls are ignored.
pub fn advertise_h3(port: u16) {
    let _ = ALT_SVC.set(format!("Alt-Svc: h3=\":{port}\"; ma=86400\r\n"));
}

fn alt_svc() -> &'static str {
    ALT_SVC.get().map_or("", String::as_str)
}

/// The head of an SSE stream ([`SSE_HEAD`], plus `Alt-Svc` when HTTP/3 is on).
pub fn sse_head() -> Bytes {
    SSE_HEAD_ALT_SVC
        .get_or_init(|| {
            let alt_svc = alt_svc();
            if alt_svc.is_empty() {
                return Bytes::from_static(SSE_HEAD);
            }
            let mut head = SSE_HEAD[..SSE_HEAD.len() - 2].to_vec();
            head.extend_from_slice(alt_svc.as_bytes());
            head.extend_from_slice(b"\r\n");
            Bytes::from(head)
        })
        .clone()
}

/// What a HEAD request gets of `response`: its head only (RFC 9110 §9.3.2), the
/// `Content-Length` still that of the body GET would get.
pub fn head_only(response: &Bytes) -> Bytes {
    match response.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) => response.slice(..end + 4),
        None => response.clone(),
    }
}

/// The SSE head a HEAD request gets: the stream's, saying the connection closes (no stream
/// follows).
pub fn sse_head_then_close() -> Bytes {
    let head = String::from_utf8_lossy(&sse_head()).replacen(
        "Connection: keep-alive",
        "Connection: close",
        1,
    );
    Bytes::from(head)
}

/// A complete response with a body.
pub fn response(status: u16, content_type: &str, extra: &str, body: &[u8], close: bool) -> Bytes {
    let connection = if close { "close" } else { "keep-alive" };
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: {connection}\r\n{extra}{}\r\n",
        status_text(status),
        body.len(),
        alt_svc(),
    )
    .into_bytes();
    out.extend_from_slice(body);
    Bytes::from(out)
}

/// A plain-text refusal; refusals of malformed requests close the connection.
pub fn refusal(refusal: &Refusal, close: bool) -> Bytes {
    let body = format!("{}\n", refusal.reason);
    response(
        refusal.status,
        "text/plain; charset=utf-8",
        refusal.extra,
        body.as_bytes(),
        close,
    )
}

/// Every header field of a complete request head, names lower-cased, values lossily decoded
/// (at most [`HEADERS_MAX`], as [`parse`] accepted). For the authorization call, off the shard
/// loop; the hot path never calls it.
pub fn header_fields(head: &[u8]) -> Vec<(String, String)> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut request = httparse::Request::new(&mut headers);
    if request.parse(head).is_err() {
        return Vec::new();
    }
    request
        .headers
        .iter()
        .take_while(|h| !h.name.is_empty())
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}

/// The demo page served at `GET /demo`: one self-contained HTML file (inline CSS and JS, no
/// external resources) that watches a room and sends comments over one WebSocket (or over
/// `EventSource` + POST where the WebSocket is refused) and flies each message across a
/// stage. Compiled in so the binary alone is a working demo.
pub const DEMO_HTML: &str = include_str!("demo.html");

/// The head of an SSE stream; the body runs until the connection closes.
pub const SSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: keep-alive\r\nX-Accel-Buffering: no\r\nAccess-Control-Allow-Origin: *\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;
    use ringcast_core::event_id::{EventId, ResetReason};

    /// Parses `req` with a `Host` added after the request line when it has none (HTTP/1.1
    /// requires one; the tables below are about other things).
    fn head(req: &str) -> Result<Parsed, Refusal> {
        let with_host;
        let req = match req.split_once("\r\n") {
            Some((line, rest)) if !req.to_ascii_lowercase().contains("\r\nhost:") => {
                with_host = format!("{line}\r\nHost: t\r\n{rest}");
                &with_host
            }
            _ => req,
        };
        parse(req.as_bytes(), 1024, 100)
    }

    #[test]
    fn absolute_form_targets_route_as_their_path() {
        for (target, want) in [
            (
                "https://localhost/rooms/a/events?last_event_id=3",
                "/rooms/a/events?last_event_id=3",
            ),
            ("HTTP://example.org:8080/healthz", "/healthz"),
            ("https://example.org", "/"),
            ("https://example.org?x=1", "/"),
            ("/rooms/a", "/rooms/a"),
            ("httpx://no/scheme", "httpx://no/scheme"),
        ] {
            assert_eq!(origin_form(target), want, "{target}");
        }
        let Ok(Parsed::Head(head)) =
            head("GET https://localhost/rooms/a/events?last_event_id=1-3 HTTP/1.1\r\n\r\n")
        else {
            panic!("absolute form not parsed");
        };
        assert_eq!(head.route, Route::Events("a".into()));
        let at = EventId { epoch: 1, seq: 3 };
        assert_eq!(head.last_event_id, Some(ResumeId::At(at)));
    }

    fn status(req: &str) -> u16 {
        head(req).map(|_| 200).unwrap_or_else(|r| r.status)
    }

    #[test]
    fn routes_and_refusals_table() {
        let cases: &[(&str, u16)] = &[
            ("GET /rooms/a/events HTTP/1.1\r\n\r\n", 200),
            (
                "POST /rooms/a/messages HTTP/1.1\r\nContent-Length: 3\r\n\r\n",
                200,
            ),
            ("GET /rooms/a HTTP/1.1\r\n\r\n", 200),
            ("GET /demo HTTP/1.1\r\n\r\n", 200),
            ("GET /demo/x HTTP/1.1\r\n\r\n", 404),
            ("GET /nope HTTP/1.1\r\n\r\n", 404),
            ("GET /rooms/a/nope HTTP/1.1\r\n\r\n", 404),
            ("GET /rooms/a%20b/events HTTP/1.1\r\n\r\n", 400),
            ("GET /rooms//events HTTP/1.1\r\n\r\n", 400),
            ("BLAH\r\n\r\n", 400),
            ("GET / HTTP/9.9\r\n\r\n", 400),
            (
                "POST /rooms/a/messages HTTP/1.1\r\nContent-Length: 101\r\n\r\n",
                413,
            ),
            (
                "POST /rooms/a/messages HTTP/1.1\r\nContent-Length: x\r\n\r\n",
                400,
            ),
            (
                "POST /rooms/a/messages HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                411,
            ),
            // Issue 14 case 2: request smuggling.
            (
                "POST /rooms/a/messages HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 30\r\n\r\n",
                400,
            ),
            (
                "POST /rooms/a/messages HTTP/1.1\r\nContent-Length: 3, 4\r\n\r\n",
                400,
            ),
            (
                "POST /rooms/a/messages HTTP/1.1\r\nContent-Length: 3,\r\n\r\n",
                400,
            ),
            (
                "POST /rooms/a/messages HTTP/1.1\r\nContent-Length: +3\r\n\r\n",
                400,
            ),
            (
                "POST /rooms/a/messages HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
                200,
            ),
            (
                "POST /rooms/a/messages HTTP/1.1\r\nContent-Length: 3 , 3\r\n\r\n",
                200,
            ),
            (
                "POST /rooms/a/messages HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                400,
            ),
            (
                "POST /rooms/a/messages HTTP/1.1\r\nTransfer-Encoding: identity\r\nContent-Length: 3\r\n\r\n",
                400,
            ),
            // Case 4: expectations.
            (
                "POST /rooms/a/messages HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n",
                200,
            ),
            (
                "POST /rooms/a/messages HTTP/1.1\r\nExpect: 101-switch\r\nContent-Length: 3\r\n\r\n",
                417,
            ),
        ];
        for (req, want) in cases {
            assert_eq!(status(req), *want, "{req:?}");
        }
        let long = format!(
            "GET /rooms/a/events?last_event_id={} HTTP/1.1\r\n\r\n",
            "1".repeat(200)
        );
        assert_eq!(status(&long), 400, "an absurdly long resume id");
        let many: String = (0..60).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(status(&format!("GET /healthz HTTP/1.1\r\n{many}\r\n")), 431);
        let big = format!("GET /healthz HTTP/1.1\r\nX: {}\r\n", "y".repeat(2000));
        assert_eq!(status(&big), 431, "partial head over the limit");
        assert_eq!(
            head("GET /healthz HTTP/1.1\r\nHost: x"),
            Ok(Parsed::Partial)
        );
    }

    /// Issue 14 case 3: HTTP/1.1 needs exactly one `Host` (RFC 9112 §3.2); HTTP/1.0 none.
    #[test]
    fn host_is_required_once_on_http_1_1() {
        let status = |req: &str| match parse(req.as_bytes(), 1024, 100) {
            Ok(_) => 200,
            Err(refusal) => refusal.status,
        };
        assert_eq!(status("GET /healthz HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(
            status("GET /healthz HTTP/1.1\r\nHost: a\r\nHOST: a\r\n\r\n"),
            400
        );
        assert_eq!(status("GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"), 200);
        assert_eq!(status("GET /healthz HTTP/1.1\r\nHost:\r\n\r\n"), 200);
        assert_eq!(status("GET /healthz HTTP/1.0\r\n\r\n"), 200);
    }

    /// Issue 14 cases 5 and 6: HEAD is GET without a body; no GET/HEAD route takes a body.
    #[test]
    fn head_on_get_routes_and_no_body_where_none_is_taken() {
        let vetted = |req: &str| match head(req) {
            Ok(Parsed::Head(h)) => vet(&h).map(|()| h.method).map_err(|r| r.status),
            other => panic!("{other:?}"),
        };
        assert_eq!(vetted("HEAD /healthz HTTP/1.1\r\n\r\n"), Ok(Method::Head));
        assert_eq!(
            vetted("HEAD /rooms/a/events HTTP/1.1\r\n\r\n"),
            Ok(Method::Head)
        );
        assert_eq!(vetted("HEAD /publish HTTP/1.1\r\n\r\n"), Err(405));
        assert_eq!(vetted("PUT /healthz HTTP/1.1\r\n\r\n"), Err(405));
        assert_eq!(
            vetted("GET /healthz HTTP/1.1\r\nContent-Length: 1\r\n\r\n"),
            Err(413)
        );
        assert_eq!(
            vetted("GET /healthz HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
            Ok(Method::Get)
        );
        assert_eq!(
            method_not_allowed(Method::Get).extra,
            "Allow: GET, HEAD\r\n"
        );
        let full = response(200, "text/plain", "", b"ok\n", false);
        let head = head_only(&full);
        assert!(head.ends_with(b"Content-Length: 3\r\nConnection: keep-alive\r\n\r\n"));
        assert_eq!(head.len() + 3, full.len());
    }

    #[test]
    fn header_fields_for_authorization() {
        let fields = header_fields(
            b"GET /rooms/a/events HTTP/1.1\r\nAuthorization: Bearer t\r\nCookie: a=1\r\n\r\n",
        );
        assert_eq!(
            fields,
            vec![
                ("authorization".to_owned(), "Bearer t".to_owned()),
                ("cookie".to_owned(), "a=1".to_owned()),
            ]
        );
        assert!(header_fields(b"BLAH\r\n\r\n").is_empty());
    }

    #[test]
    fn metrics_format_follows_accept() {
        use ringcast_core::metrics::Format;
        let cases = [
            ("GET /metrics HTTP/1.1\r\n\r\n", Format::Prometheus),
            (
                "GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n",
                Format::OpenMetrics,
            ),
            (
                "GET /metrics HTTP/1.1\r\nAccept: text/plain;version=0.0.4\r\n\r\n",
                Format::Prometheus,
            ),
            (
                "GET /healthz HTTP/1.1\r\nAccept: application/openmetrics-text\r\n\r\n",
                Format::Prometheus,
            ),
        ];
        for (request, want) in cases {
            let Ok(Parsed::Head(h)) = head(request) else {
                panic!("{request}")
            };
            assert_eq!(h.metrics_format, want, "{request}");
        }
    }

    #[test]
    fn resume_ids_from_header_or_query() {
        let Ok(Parsed::Head(h)) = head("GET /rooms/a/events?last_event_id=7 HTTP/1.1\r\n\r\n")
        else {
            panic!()
        };
        let bare = Some(ResumeId::Unplaceable(ResetReason::BareNumber));
        assert_eq!(h.last_event_id, bare);
        let Ok(Parsed::Head(h)) =
            head("GET /rooms/a/events HTTP/1.1\r\nLast-Event-ID: 1733-12\r\n\r\n")
        else {
            panic!()
        };
        let at = EventId {
            epoch: 1733,
            seq: 12,
        };
        assert_eq!(
            (h.last_event_id, h.route),
            (Some(ResumeId::At(at)), Route::Events("a".into()))
        );
        let Ok(Parsed::Head(h)) = head("GET /rooms/a/events?last_event_id=x HTTP/1.1\r\n\r\n")
        else {
            panic!()
        };
        let other = Some(ResumeId::Unplaceable(ResetReason::NotAnId));
        assert_eq!(h.last_event_id, other, "text of another shape gets a reset");
        let Ok(Parsed::Head(h)) = head("GET /healthz HTTP/1.0\r\n\r\n") else {
            panic!()
        };
        assert!(h.close);
    }

    #[test]
    fn tokens_from_header_or_query() {
        let Ok(Parsed::Head(h)) = head(
            "GET /rooms/a/events?token=q.r.s&x=1 HTTP/1.1\r\nAuthorization: Bearer h.i.j\r\n\r\n",
        ) else {
            panic!()
        };
        assert_eq!(h.bearer.as_deref(), Some("h.i.j"));
        assert_eq!(h.query_token.as_deref(), Some("q.r.s"));
        let Ok(Parsed::Head(h)) =
            head("GET /rooms/a/events HTTP/1.1\r\nAuthorization: Basic eDp5\r\n\r\n")
        else {
            panic!()
        };
        assert_eq!((h.bearer, h.query_token), (None, None));
    }

    /// Issue 14 case 1: `GET` with `Content-Length: 2^64-1` wrapped `len + content_length`
    /// and panicked the shard on a slice index. Every method refuses a declared length over
    /// the limit from the head.
    #[test]
    fn a_content_length_over_the_limit_is_refused_on_every_method() {
        for method in ["GET", "POST", "PUT"] {
            for length in ["18446744073709551615", "99999999999999999999999", "101"] {
                let req = format!("{method} /healthz HTTP/1.1\r\nContent-Length: {length}\r\n\r\n");
                assert_eq!(status(&req), 413, "{req:?}");
            }
        }
    }

    /// Fuzz crash-f2e3871d (`token`): a header value carrying `\n\n` ends the head there
    /// (httparse takes bare LF line ends), so `Head::len` stops at the first blank line and
    /// what follows is the body or the next request, never more headers of this one.
    #[test]
    fn a_bare_lf_blank_line_ends_the_head() {
        let request =
            b"GET /rooms/a/events HTTP/1.1\r\nHost: x\r\nAuthorization: _id={\n\nnt_i\r\n\r\n";
        let Ok(Parsed::Head(h)) = parse(request, 1024, 100) else {
            panic!()
        };
        assert_eq!(h.len, request.iter().position(|&b| b == b'{').unwrap() + 3);
        assert_eq!(h.bearer, None);
    }
}
