//! A small blocking WebSocket client for the integration tests, written here (not a crate)
//! so a test can also be a bad client: unmasked frames, bytes split one at a time, frames
//! before the `101`, a close that never comes. Over a plain `TcpStream` or rustls.
//!
//! Only what the tests need: the opening handshake (raw request bytes, response head),
//! masked or unmasked frames out, server frames in (unmasked, any length), close parsing.

#![allow(dead_code)] // each test file uses a different part of this module

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A valid `Sec-WebSocket-Key` (base64 of 16 bytes; RFC 6455's example).
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// The `Sec-WebSocket-Accept` for [`KEY`].
pub const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// Opcodes.
pub const CONTINUATION: u8 = 0x0;
/// Text.
pub const TEXT: u8 = 0x1;
/// Binary.
pub const BINARY: u8 = 0x2;
/// Close.
pub const CLOSE: u8 = 0x8;
/// Ping.
pub const PING: u8 = 0x9;
/// Pong.
pub const PONG: u8 = 0xA;

/// The bytes of an upgrade request for `path` with the usual headers, `extra` lines added
/// (each `Name: value\r\n`) and, when `skip` names one, that header left out.
pub fn upgrade_request(path: &str, extra: &str, skip: Option<&str>) -> Vec<u8> {
    let headers = [
        ("Host", "localhost"),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", KEY),
        ("Sec-WebSocket-Version", "13"),
    ];
    let mut request = format!("GET {path} HTTP/1.1\r\n");
    for (name, value) in headers {
        if skip.is_some_and(|skip| skip.eq_ignore_ascii_case(name)) {
            continue;
        }
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(extra);
    request.push_str("\r\n");
    request.into_bytes()
}

/// A client frame: FIN as given, `opcode`, `payload` masked with a fixed key when `masked`.
pub fn frame(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        len @ 0..=125 => out.push(mask_bit | len as u8),
        len @ 126..=0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// A masked close frame with `code` and `reason`.
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    frame(true, CLOSE, &payload, true)
}

/// A frame the server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// FIN bit.
    pub fin: bool,
    /// Opcode.
    pub opcode: u8,
    /// Payload (server frames are never masked).
    pub payload: Vec<u8>,
}

impl Frame {
    /// A close frame's code (None for an empty close).
    pub fn close_code(&self) -> Option<u16> {
        assert_eq!(self.opcode, CLOSE, "{self:?}");
        (self.payload.len() >= 2).then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }

    /// The payload as text.
    pub fn text(&self) -> String {
        String::from_utf8(self.payload.clone()).expect("UTF-8 payload")
    }
}

/// What carries the bytes.
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS (rustls) over TCP.
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => &tls.sock,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.read(buf),
            Stream::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.write(buf),
            Stream::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(tcp) => tcp.flush(),
            Stream::Tls(tls) => tls.flush(),
        }
    }
}

/// One client connection.
pub struct WsClient {
    /// The stream.
    pub stream: Stream,
    buf: Vec<u8>,
    /// The response head to the upgrade (raw).
    pub head: String,
    /// Its status.
    pub status: u16,
}

impl WsClient {
    /// A plain TCP connection to `addr` that has sent nothing yet.
    pub fn connect_raw(addr: SocketAddr) -> WsClient {
        let tcp = TcpStream::connect(addr).expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        WsClient::over(Stream::Plain(tcp))
    }

    /// A client over `stream` (connected, nothing sent).
    pub fn over(stream: Stream) -> WsClient {
        WsClient {
            stream,
            buf: Vec::new(),
            head: String::new(),
            status: 0,
        }
    }

    /// Connects and upgrades on `path`; asserts the `101` and its accept key.
    pub fn open(addr: SocketAddr, path: &str) -> WsClient {
        let mut client = WsClient::connect_raw(addr);
        client.upgrade(path);
        client
    }

    /// Connects and sends the upgrade request for `path` with `extra` header lines;
    /// returns the client and the answer's status (the head is in [`Self::head`]).
    pub fn try_open(addr: SocketAddr, path: &str, extra: &str) -> (WsClient, u16) {
        let mut client = WsClient::connect_raw(addr);
        client.send(&upgrade_request(path, extra, None));
        let status = client.read_head(Duration::from_secs(10));
        (client, status)
    }

    /// The next text message (pings answered), parsed as JSON.
    pub fn next_json(&mut self, timeout: Duration) -> serde_json::Value {
        let frame = self.next_data(timeout);
        assert_eq!(frame.opcode, TEXT, "{frame:?}");
        serde_json::from_slice(&frame.payload)
            .unwrap_or_else(|err| panic!("{err}: {:?}", String::from_utf8_lossy(&frame.payload)))
    }

    /// Sends `value` as a text message.
    pub fn send_json(&mut self, value: &serde_json::Value) {
        self.send(&frame(true, TEXT, value.to_string().as_bytes(), true));
    }

    /// Sends the upgrade request for `path` and asserts the `101`.
    pub fn upgrade(&mut self, path: &str) {
        self.send(&upgrade_request(path, "", None));
        let status = self.read_head(Duration::from_secs(10));
        assert_eq!(status, 101, "{}", self.head);
        let head = self.head.to_ascii_lowercase();
        assert!(head.contains("upgrade: websocket"), "{}", self.head);
        assert!(
            self.head
                .contains(&format!("Sec-WebSocket-Accept: {ACCEPT}")),
            "{}",
            self.head
        );
    }

    /// Writes raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
        self.stream.flush().expect("flush");
    }

    /// Half-closes the sending side (TCP FIN; over TLS after `close_notify`).
    pub fn shutdown_write(&mut self) {
        if let Stream::Tls(tls) = &mut self.stream {
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
        let _ = self.stream.tcp().shutdown(std::net::Shutdown::Write);
    }

    /// Writes raw bytes, reporting failure (the server may have closed).
    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    fn fill(&mut self, deadline: Instant) -> io::Result<usize> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline"));
        }
        self.stream.tcp().set_read_timeout(Some(left))?;
        let mut chunk = [0u8; 64 * 1024];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Reads a response head; returns its status (the head is in [`Self::head`]).
    pub fn read_head(&mut self, timeout: Duration) -> u16 {
        let deadline = Instant::now() + timeout;
        let end = loop {
            if let Some(at) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            match self.fill(deadline) {
                Ok(0) => panic!("closed before a response head: {:?}", self.buf),
                Ok(_) => {}
                Err(err) => panic!("no response head: {err}"),
            }
        };
        self.head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end);
        self.status = self
            .head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status line");
        self.status
    }

    /// A header of the response head.
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }

    /// The body that followed a refusal's head (its `Content-Length`).
    pub fn read_body(&mut self, timeout: Duration) -> String {
        let len: usize = self
            .header("content-length")
            .map_or(0, |v| v.parse().expect("content-length"));
        let deadline = Instant::now() + timeout;
        while self.buf.len() < len {
            if self.fill(deadline).expect("body") == 0 {
                break;
            }
        }
        String::from_utf8_lossy(
            &self
                .buf
                .drain(..len.min(self.buf.len()))
                .collect::<Vec<_>>(),
        )
        .into_owned()
    }

    /// The next frame, or an error: EOF (`UnexpectedEof`), timeout, reset.
    pub fn try_frame(&mut self, timeout: Duration) -> io::Result<Frame> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((frame, len)) = parse_frame(&self.buf) {
                self.buf.drain(..len);
                return Ok(frame);
            }
            if self.fill(deadline)? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
            }
        }
    }

    /// The next frame; panics on EOF or after `timeout`.
    pub fn next_frame(&mut self, timeout: Duration) -> Frame {
        self.try_frame(timeout)
            .unwrap_or_else(|err| panic!("no frame within {timeout:?}: {err}"))
    }

    /// The next frame that is not a ping (pings are answered).
    pub fn next_data(&mut self, timeout: Duration) -> Frame {
        loop {
            let frame = self.next_frame(timeout);
            if frame.opcode != PING {
                return frame;
            }
            self.send(&self::frame(true, PONG, &frame.payload, true));
        }
    }

    /// Sends a text message and returns the echo's payload as text.
    pub fn echo_text(&mut self, text: &str) -> String {
        self.send(&frame(true, TEXT, text.as_bytes(), true));
        let echo = self.next_data(Duration::from_secs(10));
        assert_eq!(echo.opcode, TEXT, "{echo:?}");
        echo.text()
    }

    /// Whether the server closes the TCP connection within `timeout` (EOF or reset),
    /// dropping whatever else it sends until then.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            self.buf.clear();
            match self.fill(deadline) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if Instant::now() >= deadline {
                        return false;
                    }
                }
                Err(_) => return true,
            }
        }
    }
}

/// A server frame at the front of `buf` and its length, once whole.
fn parse_frame(buf: &[u8]) -> Option<(Frame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    assert_eq!(buf[1] & 0x80, 0, "server frames are not masked");
    let (len, at) = match buf[1] & 0x7f {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        len => (len as usize, 2),
    };
    let payload = buf.get(at..at + len)?.to_vec();
    let frame = Frame {
        fin: buf[0] & 0x80 != 0,
        opcode: buf[0] & 0x0f,
        payload,
    };
    Some((frame, at + len))
}
