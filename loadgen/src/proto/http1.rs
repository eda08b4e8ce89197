//! Minimal HTTP/1.1 client pieces: request encoding, response head parsing (httparse) and
//! response body framing (Content-Length, chunked, until close).

use crate::proto::chunked::{ChunkedDecoder, ChunkedError};

/// Largest response head accepted (bytes).
pub const HEAD_BYTES_MAX: usize = 64 * 1024;

/// Most response headers parsed.
pub const HEADERS_MAX: usize = 64;

/// Why a response could not be understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HttpError {
    /// httparse rejected the head.
    #[error("malformed response head: {0}")]
    Head(String),
    /// The head exceeded [`HEAD_BYTES_MAX`].
    #[error("response head longer than {HEAD_BYTES_MAX} bytes")]
    HeadTooLarge,
    /// Content-Length was not a number.
    #[error("bad Content-Length")]
    ContentLength,
    /// The chunked body was malformed.
    #[error("bad chunked body: {0}")]
    Chunked(#[from] ChunkedError),
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer encoding.
    Chunked,
    /// Until the server closes the connection.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    /// Status code.
    pub status: u16,
    /// Body framing.
    pub body: BodyKind,
    /// True when the server will close the connection after this response.
    pub close: bool,
    /// Length of the head in bytes (the body starts there).
    pub head_len: usize,
}

/// Parses a final (non-1xx) response head at the start of `buffer`; interim 1xx responses
/// are skipped (their length is included in `head_len`). `Ok(None)` means "need more".
pub fn parse_response_head(
    buffer: &[u8],
    request_was_head: bool,
) -> Result<Option<ResponseHead>, HttpError> {
    let mut skipped = 0;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
        let mut response = httparse::Response::new(&mut headers);
        let head_len = match response.parse(&buffer[skipped..]) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => {
                if buffer.len() > HEAD_BYTES_MAX {
                    return Err(HttpError::HeadTooLarge);
                }
                return Ok(None);
            }
            Err(error) => return Err(HttpError::Head(error.to_string())),
        };
        let status = response.code.unwrap_or(0);
        if (100..200).contains(&status) && status != 101 {
            skipped += head_len;
            continue;
        }
        let mut close = response.version == Some(0);
        let mut chunked = false;
        let mut length = None;
        for header in response.headers.iter() {
            if header.name.eq_ignore_ascii_case("content-length") {
                let text =
                    std::str::from_utf8(header.value).map_err(|_| HttpError::ContentLength)?;
                length = Some(
                    text.trim()
                        .parse::<u64>()
                        .map_err(|_| HttpError::ContentLength)?,
                );
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = contains_token(header.value, b"chunked");
            } else if header.name.eq_ignore_ascii_case("connection") {
                if contains_token(header.value, b"close") {
                    close = true;
                } else if contains_token(header.value, b"keep-alive") {
                    close = false;
                }
            }
        }
        let body = if request_was_head || status == 204 || status == 304 || status == 101 {
            BodyKind::Empty
        } else if chunked {
            BodyKind::Chunked
        } else if let Some(length) = length {
            BodyKind::Length(length)
        } else {
            close = true;
            BodyKind::UntilClose
        };
        return Ok(Some(ResponseHead {
            status,
            body,
            close,
            head_len: skipped + head_len,
        }));
    }
}

fn contains_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&byte| byte == b',')
        .any(|part| part.trim_ascii().eq_ignore_ascii_case(token))
}

/// Tracks how much of a response body is still to come.
#[derive(Debug, Clone)]
pub enum BodyReader {
    /// Bytes left of a Content-Length body.
    Length(u64),
    /// A chunked body in progress.
    Chunked(ChunkedDecoder),
    /// Body ends at connection close.
    UntilClose,
    /// Body complete.
    Done,
}

impl BodyReader {
    /// The reader for a body of `kind`.
    pub fn new(kind: BodyKind) -> Self {
        match kind {
            BodyKind::Empty | BodyKind::Length(0) => BodyReader::Done,
            BodyKind::Length(length) => BodyReader::Length(length),
            BodyKind::Chunked => BodyReader::Chunked(ChunkedDecoder::new()),
            BodyKind::UntilClose => BodyReader::UntilClose,
        }
    }

    /// True when the body is complete.
    pub fn is_done(&self) -> bool {
        matches!(self, BodyReader::Done)
    }

    /// Consumes body bytes from `buffer` (may be rewritten in place); returns how many raw
    /// bytes belonged to this body.
    pub fn skip(&mut self, buffer: &mut [u8]) -> Result<usize, HttpError> {
        match self {
            BodyReader::Length(left) => {
                let take = usize::try_from(*left).map_or(buffer.len(), |l| l.min(buffer.len()));
                *left -= take as u64;
                if *left == 0 {
                    *self = BodyReader::Done;
                }
                Ok(take)
            }
            BodyReader::Chunked(decoder) => {
                let decoded = decoder.decode_in_place(buffer)?;
                if decoder.is_done() {
                    *self = BodyReader::Done;
                }
                Ok(decoded.consumed)
            }
            BodyReader::UntilClose => Ok(buffer.len()),
            BodyReader::Done => Ok(0),
        }
    }
}

/// Names of headers ringload sets itself unless the user gives their own.
const DEFAULT_HEADERS: [&str; 3] = ["host", "user-agent", "content-type"];

/// Appends an HTTP/1.1 request. `headers` are complete `Name: value` lines from `-H`.
/// `sse` adds `Accept: text/event-stream` (nchan answers 403 without it).
pub fn encode_request(
    out: &mut Vec<u8>,
    method: &str,
    host: &str,
    path: &str,
    headers: &[String],
    body: &[u8],
    sse: bool,
) {
    let user_has = |name: &str| {
        headers.iter().any(|line| {
            line.split(':')
                .next()
                .is_some_and(|n| n.trim().eq_ignore_ascii_case(name))
        })
    };
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !user_has(DEFAULT_HEADERS[0]) {
        out.extend_from_slice(b"Host: ");
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !user_has(DEFAULT_HEADERS[1]) {
        out.extend_from_slice(b"User-Agent: ringload\r\n");
    }
    if sse {
        out.extend_from_slice(b"Accept: text/event-stream\r\nCache-Control: no-cache\r\n");
    }
    for line in headers {
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let has_body = !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH");
    if has_body {
        if !body.is_empty() && !user_has(DEFAULT_HEADERS[2]) {
            out.extend_from_slice(b"Content-Type: text/plain\r\n");
        }
        let mut digits = crate::proto::template::itoa_buffer();
        out.extend_from_slice(b"Content-Length: ");
        out.extend_from_slice(crate::proto::template::format_u64(
            &mut digits,
            body.len() as u64,
        ));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// Checks a `-H` value: `Name: value`, no CR/LF.
pub fn validate_header(line: &str) -> Result<(), String> {
    let (name, _) = line
        .split_once(':')
        .ok_or_else(|| format!("header '{line}' must look like 'Name: value'"))?;
    if name.trim().is_empty() || name.contains(' ') || line.contains(['\r', '\n']) {
        return Err(format!("header '{line}' must look like 'Name: value'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_heads() {
        let text = b"HTTP/1.1 201 Created\r\nContent-Length: 8\r\n\r\n{\"id\":1}";
        let head = parse_response_head(text, false).unwrap().unwrap();
        assert_eq!(head.status, 201);
        assert_eq!(head.body, BodyKind::Length(8));
        assert!(!head.close);
        assert_eq!(&text[head.head_len..], b"{\"id\":1}");

        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
        let head = parse_response_head(chunked, false).unwrap().unwrap();
        assert_eq!(head.body, BodyKind::Chunked);
        assert!(head.close);

        let until_close = b"HTTP/1.0 200 OK\r\n\r\n";
        let head = parse_response_head(until_close, false).unwrap().unwrap();
        assert_eq!(head.body, BodyKind::UntilClose);

        let interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        let head = parse_response_head(interim, false).unwrap().unwrap();
        assert_eq!(
            (head.status, head.body, head.head_len),
            (204, BodyKind::Empty, interim.len())
        );

        assert_eq!(parse_response_head(b"HTTP/1.1 200 OK\r\n", false), Ok(None));
        assert!(parse_response_head(b"garbage\r\n\r\n", false).is_err());
    }

    #[test]
    fn skips_bodies() {
        let mut reader = BodyReader::new(BodyKind::Length(5));
        assert_eq!(reader.skip(&mut b"abc".to_vec()), Ok(3));
        assert_eq!(reader.skip(&mut b"deXYZ".to_vec()), Ok(2));
        assert!(reader.is_done());
        let mut reader = BodyReader::new(BodyKind::Chunked);
        assert_eq!(
            reader.skip(&mut b"2\r\nok\r\n0\r\n\r\nNEXT".to_vec()),
            Ok(12)
        );
        assert!(reader.is_done());
    }

    #[test]
    fn encodes_requests() {
        let mut out = Vec::new();
        encode_request(
            &mut out,
            "POST",
            "h:1",
            "/p",
            &["X-A: 1".into()],
            b"body",
            false,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("POST /p HTTP/1.1\r\nHost: h:1\r\n"));
        assert!(text.contains("X-A: 1\r\n"));
        assert!(text.ends_with("Content-Length: 4\r\n\r\nbody"));
        let mut out = Vec::new();
        encode_request(
            &mut out,
            "GET",
            "h",
            "/e",
            &["Host: other".into()],
            b"",
            true,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Accept: text/event-stream\r\n"));
        assert!(!text.contains("Host: h\r\n"));
        assert!(!text.contains("Content-Length"));
    }

    #[test]
    fn validates_headers() {
        assert!(validate_header("X-A: 1").is_ok());
        assert!(validate_header("nocolon").is_err());
        assert!(validate_header("Bad Name: 1").is_err());
    }
}
