//! WebSocket (RFC 6455), the client side, without IO: the opening handshake (request with a
//! fresh `Sec-WebSocket-Key`, response checked for status 101, the `Upgrade`/`Connection`
//! tokens and `Sec-WebSocket-Accept`), server frames parsed straight from a read buffer
//! (many per read, a partial frame left for the caller to carry, as [`crate::proto::sse`]
//! does with lines), masked client frames, and the JSON objects of ringcast's protocol:
//! room messages `{"room":R,"id":ID,"data":"…"}` (ID a number or a string), control objects
//! with `"type"`, and `publish` requests answered by `ack` or `error` with the same `ref`.
//!
//! tungstenite does the frame header and the handshake key and accept derivation (its
//! no-IO parts); ringload keeps its own buffers and sockets so that a delivery is parsed in
//! place, without a copy or an allocation. Nothing here touches sockets or the clock.

use crate::proto::http1;
use serde::Deserialize;
use std::borrow::Cow;
use std::io::Cursor;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// Longest frame accepted from the server, header included. A longer one fails the
/// connection at once (from its header, before its payload arrives). 2 MiB holds the
/// largest `--size` payload (1 MiB) in a body template twice its size, as for SSE lines.
pub const FRAME_BYTES_MAX: usize = 2 * 1024 * 1024;

/// Longest message assembled from fragments (RFC 6455 §5.4).
pub const MESSAGE_BYTES_MAX: usize = FRAME_BYTES_MAX;

/// Longest control frame payload (RFC 6455 §5.5).
pub const CONTROL_PAYLOAD_BYTES_MAX: usize = 125;

/// Longest handshake response head: more without its end is not a WebSocket server.
pub const HANDSHAKE_BYTES_MAX: usize = 16 * 1024;

/// Headers read from a handshake response.
const HANDSHAKE_HEADERS_MAX: usize = 64;

/// Close code for a normal closure (RFC 6455 §7.4.1).
pub const CLOSE_NORMAL: u16 = 1000;

/// Close code for a protocol error.
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;

/// Close code for a text message that is not UTF-8.
pub const CLOSE_NOT_UTF8: u16 = 1007;

/// Close code for a message too big to process.
pub const CLOSE_TOO_BIG: u16 = 1009;

/// Why a handshake or a frame stream is unusable; the connection must be failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    /// The server answered the upgrade request with another status.
    #[error("answered HTTP {0} instead of 101 Switching Protocols")]
    Status(u16),
    /// The handshake response head is malformed or too long.
    #[error("bad handshake response: {0}")]
    BadResponse(String),
    /// A required handshake header is missing or wrong.
    #[error("handshake: {0}")]
    Handshake(&'static str),
    /// The server sent a masked frame (RFC 6455 §5.1: the client must close).
    #[error("the server sent a masked frame")]
    Masked,
    /// RSV bits set without a negotiated extension.
    #[error("frame with reserved bits set")]
    Reserved,
    /// An opcode RFC 6455 reserves.
    #[error("frame with reserved opcode {0}")]
    Opcode(u8),
    /// A control frame longer than 125 bytes or fragmented.
    #[error("bad control frame (longer than 125 bytes or fragmented)")]
    Control,
    /// A frame longer than [`FRAME_BYTES_MAX`].
    #[error("frame of {0} bytes is longer than the limit")]
    FrameTooLong(u64),
    /// A fragmented message longer than [`MESSAGE_BYTES_MAX`].
    #[error("fragmented message longer than the limit")]
    MessageTooLong,
    /// A continuation frame with no message to continue, or a new data frame inside a
    /// fragmented message.
    #[error("fragments out of order")]
    Fragments,
    /// A text message that is not UTF-8.
    #[error("text message is not UTF-8")]
    NotUtf8,
}

impl WsError {
    /// The close code to send when failing the connection for this error.
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::NotUtf8 => CLOSE_NOT_UTF8,
            WsError::FrameTooLong(_) | WsError::MessageTooLong => CLOSE_TOO_BIG,
            _ => CLOSE_PROTOCOL_ERROR,
        }
    }
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes, base64 (RFC 6455 §4.1).
pub fn new_key() -> String {
    tungstenite::handshake::client::generate_key()
}

/// The `Sec-WebSocket-Accept` a server must answer `key` with.
pub fn accept_for(key: &str) -> String {
    tungstenite::handshake::derive_accept_key(key.as_bytes())
}

/// Appends the opening handshake request for `path` with `key` (plus the user's `headers`).
pub fn encode_handshake(out: &mut Vec<u8>, host: &str, path: &str, headers: &[String], key: &str) {
    let mut lines = Vec::with_capacity(headers.len() + 4);
    lines.extend(headers.iter().cloned());
    lines.push("Upgrade: websocket".to_string());
    lines.push("Connection: Upgrade".to_string());
    lines.push(format!("Sec-WebSocket-Key: {key}"));
    lines.push("Sec-WebSocket-Version: 13".to_string());
    http1::encode_request(out, "GET", host, path, &lines, b"", false);
}

/// Checks the handshake response at the start of `buffer` against `key`: `Ok(None)` while
/// the head is incomplete, `Ok(Some(head_len))` when the server switched to WebSocket (the
/// bytes after the head are already frames).
pub fn parse_handshake(buffer: &[u8], key: &str) -> Result<Option<usize>, WsError> {
    let mut headers = [httparse::EMPTY_HEADER; HANDSHAKE_HEADERS_MAX];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buffer) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buffer.len() > HANDSHAKE_BYTES_MAX => {
            return Err(WsError::BadResponse("head longer than the limit".into()))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(error) => return Err(WsError::BadResponse(error.to_string())),
    };
    let status = response.code.unwrap_or(0);
    if status != 101 {
        return Err(WsError::Status(status));
    }
    let headers = &*response.headers;
    let header = |name: &'static str| {
        headers
            .iter()
            .filter(move |header| header.name.eq_ignore_ascii_case(name))
            .map(|header| header.value)
    };
    let has_token = |name: &'static str, token: &str| {
        header(name).any(|value| {
            value
                .split(|&byte| byte == b',')
                .any(|item| item.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    };
    if !has_token("upgrade", "websocket") {
        return Err(WsError::Handshake("no Upgrade: websocket"));
    }
    if !has_token("connection", "upgrade") {
        return Err(WsError::Handshake("no Connection: upgrade"));
    }
    let mut accepts = header("sec-websocket-accept");
    match (accepts.next(), accepts.next()) {
        (Some(value), None) if value.trim_ascii() == accept_for(key).as_bytes() => {}
        (None, _) => return Err(WsError::Handshake("no Sec-WebSocket-Accept")),
        _ => {
            return Err(WsError::Handshake(
                "Sec-WebSocket-Accept does not match the key",
            ))
        }
    }
    // ringload offers no extension and no subprotocol: a server may not pick one.
    if header("sec-websocket-extensions").next().is_some() {
        return Err(WsError::Handshake("an extension the client did not offer"));
    }
    if header("sec-websocket-protocol").next().is_some() {
        return Err(WsError::Handshake("a subprotocol the client did not offer"));
    }
    Ok(Some(head_len))
}

/// One complete frame, borrowed from the read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Last frame of its message.
    pub fin: bool,
    /// Its opcode.
    pub opcode: OpCode,
    /// Its payload (server frames are not masked).
    pub payload: &'a [u8],
}

/// Parses the frame at the start of `buffer`: `Ok(None)` while it is incomplete,
/// `Ok(Some((frame, length)))` with the bytes it takes. A frame announcing more than
/// [`FRAME_BYTES_MAX`] fails at once, from its header.
pub fn parse_frame(buffer: &[u8]) -> Result<Option<(Frame<'_>, usize)>, WsError> {
    let mut cursor = Cursor::new(buffer);
    let (header, length) = match FrameHeader::parse(&mut cursor) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return Ok(None),
        Err(_) => return Err(WsError::Opcode(buffer[0] & 0x0f)),
    };
    if header.mask.is_some() {
        return Err(WsError::Masked);
    }
    if header.rsv1 || header.rsv2 || header.rsv3 {
        return Err(WsError::Reserved);
    }
    let head = cursor.position() as usize;
    if length > (FRAME_BYTES_MAX - head) as u64 {
        return Err(WsError::FrameTooLong(length));
    }
    if matches!(header.opcode, OpCode::Control(_))
        && (length > CONTROL_PAYLOAD_BYTES_MAX as u64 || !header.is_final)
    {
        return Err(WsError::Control);
    }
    let end = head + length as usize;
    if buffer.len() < end {
        return Ok(None);
    }
    Ok(Some((
        Frame {
            fin: header.is_final,
            opcode: header.opcode,
            payload: &buffer[head..end],
        },
        end,
    )))
}

/// Receives what a server's frame stream carries, message by message.
pub trait WsSink {
    /// A complete text message (UTF-8 checked).
    fn on_text(&mut self, text: &str);
    /// A complete binary message.
    fn on_binary(&mut self, data: &[u8]);
    /// A ping; the caller answers it with a pong carrying the same payload.
    fn on_ping(&mut self, payload: &[u8]);
    /// A pong.
    fn on_pong(&mut self, payload: &[u8]);
    /// A close frame: its code (`None` when it has no body) and reason.
    fn on_close(&mut self, code: Option<u16>, reason: &[u8]);
}

/// Per-connection receive state: only a fragmented message in progress (empty and without
/// allocation otherwise).
#[derive(Debug, Default)]
pub struct WsReader {
    /// Fragments so far of a message in progress.
    fragments: Vec<u8>,
    /// A fragmented message is in progress: `Some(true)` text, `Some(false)` binary.
    fragmented: Option<bool>,
}

impl WsReader {
    /// Parses every complete frame in `buffer` into `sink`; returns the bytes consumed (the
    /// rest is a partial frame the caller keeps and feeds again, prefixed to the next read).
    /// Stops after a close frame.
    pub fn feed(&mut self, buffer: &[u8], sink: &mut impl WsSink) -> Result<usize, WsError> {
        let mut at = 0;
        while let Some((frame, length)) = parse_frame(&buffer[at..])? {
            at += length;
            match frame.opcode {
                OpCode::Data(Data::Text | Data::Binary) if self.fragmented.is_some() => {
                    return Err(WsError::Fragments)
                }
                OpCode::Data(Data::Text) if frame.fin => sink.on_text(utf8(frame.payload)?),
                OpCode::Data(Data::Binary) if frame.fin => sink.on_binary(frame.payload),
                OpCode::Data(Data::Text | Data::Binary) => {
                    self.fragmented = Some(frame.opcode == OpCode::Data(Data::Text));
                    self.append(frame.payload)?;
                }
                OpCode::Data(Data::Continue) => {
                    let Some(text) = self.fragmented else {
                        return Err(WsError::Fragments);
                    };
                    self.append(frame.payload)?;
                    if frame.fin {
                        let message = std::mem::take(&mut self.fragments);
                        self.fragmented = None;
                        if text {
                            sink.on_text(utf8(&message)?);
                        } else {
                            sink.on_binary(&message);
                        }
                    }
                }
                OpCode::Control(Control::Ping) => sink.on_ping(frame.payload),
                OpCode::Control(Control::Pong) => sink.on_pong(frame.payload),
                OpCode::Control(Control::Close) => {
                    let (code, reason) = parse_close(frame.payload)?;
                    sink.on_close(code, reason);
                    return Ok(at);
                }
                OpCode::Data(Data::Reserved(code)) | OpCode::Control(Control::Reserved(code)) => {
                    return Err(WsError::Opcode(code))
                }
            }
        }
        Ok(at)
    }

    fn append(&mut self, payload: &[u8]) -> Result<(), WsError> {
        if self.fragments.len() + payload.len() > MESSAGE_BYTES_MAX {
            return Err(WsError::MessageTooLong);
        }
        self.fragments.extend_from_slice(payload);
        Ok(())
    }
}

fn utf8(text: &[u8]) -> Result<&str, WsError> {
    std::str::from_utf8(text).map_err(|_| WsError::NotUtf8)
}

/// Code and reason of a close frame's payload (RFC 6455 §5.5.1).
fn parse_close(payload: &[u8]) -> Result<(Option<u16>, &[u8]), WsError> {
    match payload {
        [] => Ok((None, &[])),
        [_] => Err(WsError::Control),
        [high, low, reason @ ..] => {
            utf8(reason)?;
            Ok((Some(u16::from_be_bytes([*high, *low])), reason))
        }
    }
}

/// Appends one masked client frame (RFC 6455 §5.3: every client frame is masked).
pub fn encode_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8], mask: [u8; 4]) {
    let header = FrameHeader {
        is_final: true,
        opcode,
        mask: Some(mask),
        ..FrameHeader::default()
    };
    header
        .format(payload.len() as u64, out)
        .expect("writing to a Vec cannot fail");
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask);
}

/// XORs `data` with `mask` (masking and unmasking are the same operation).
pub fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    for (index, byte) in data.iter_mut().enumerate() {
        *byte ^= mask[index & 3];
    }
}

/// A fresh, unpredictable masking key.
pub fn new_mask() -> [u8; 4] {
    rand::random()
}

/// Appends a masked pong answering a ping with `payload`.
pub fn encode_pong(out: &mut Vec<u8>, payload: &[u8], mask: [u8; 4]) {
    encode_frame(out, OpCode::Control(Control::Pong), payload, mask);
}

/// Appends a masked close frame with `code`.
pub fn encode_close(out: &mut Vec<u8>, code: u16, mask: [u8; 4]) {
    encode_frame(
        out,
        OpCode::Control(Control::Close),
        &code.to_be_bytes(),
        mask,
    );
}

/// Appends a masked text frame asking the server to publish `data` to `room`; the answer
/// (`ack` or `error`) carries `reference`.
pub fn encode_publish(out: &mut Vec<u8>, room: &str, data: &str, reference: u64, mask: [u8; 4]) {
    #[derive(serde::Serialize)]
    struct Publish<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        room: &'a str,
        data: &'a str,
        #[serde(rename = "ref")]
        reference: u64,
    }
    let json = serde_json::to_vec(&Publish {
        kind: "publish",
        room,
        data,
        reference,
    })
    .expect("serialising plain strings cannot fail");
    encode_frame(out, OpCode::Data(Data::Text), &json, mask);
}

/// What one text message from the server means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage<'a> {
    /// A room message: the room it names and its data.
    Message {
        /// `"room"`.
        room: Cow<'a, str>,
        /// `"data"`.
        data: Cow<'a, str>,
    },
    /// A publish was accepted: its `ref` (`None` if not a number ringload sent).
    Ack {
        /// `"ref"`.
        reference: Option<u64>,
    },
    /// A request failed: its `ref` if any, and the HTTP-like status.
    Error {
        /// `"ref"`.
        reference: Option<u64>,
        /// `"status"` (0 when missing).
        status: u16,
    },
    /// `{"type":"gap",…}`: messages were skipped.
    Gap,
    /// `{"type":"subscribed"}` or `{"type":"unsubscribed"}`.
    Subscription,
    /// Any other object (`lagged`, `reset`, unknown types, or a message without its fields).
    Other,
}

/// Reads one text message. Room messages of the exact agreed shape
/// `{"room":"R","id":ID,"data":"D"}` without escapes are read in place; anything else goes
/// through serde_json. `None` when it is not a JSON object.
pub fn parse_message(text: &str) -> Option<ServerMessage<'_>> {
    if let Some((room, data)) = fast_message(text) {
        return Some(ServerMessage::Message {
            room: Cow::Borrowed(room),
            data: Cow::Borrowed(data),
        });
    }
    #[derive(Deserialize)]
    struct Wire<'a> {
        #[serde(rename = "type", borrow, default)]
        kind: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        room: Option<Cow<'a, str>>,
        #[serde(default)]
        id: Option<serde::de::IgnoredAny>,
        #[serde(borrow, default)]
        data: Option<Cow<'a, str>>,
        #[serde(rename = "ref", default)]
        reference: Option<serde_json::Value>,
        #[serde(default)]
        status: Option<u16>,
    }
    let wire: Wire<'_> = serde_json::from_str(text).ok()?;
    let reference = wire.reference.as_ref().and_then(|value| match value {
        serde_json::Value::Number(number) => number.as_u64(),
        serde_json::Value::String(text) => text.parse().ok(),
        _ => None,
    });
    Some(
        match (wire.kind.as_deref(), wire.room, wire.id, wire.data) {
            (None, Some(room), Some(_), Some(data)) => ServerMessage::Message { room, data },
            (Some("ack"), ..) => ServerMessage::Ack { reference },
            (Some("error"), ..) => ServerMessage::Error {
                reference,
                status: wire.status.unwrap_or(0),
            },
            (Some("gap"), ..) => ServerMessage::Gap,
            (Some("subscribed" | "unsubscribed"), ..) => ServerMessage::Subscription,
            _ => ServerMessage::Other,
        },
    )
}

/// `{"room":"R","id":N-or-"S","data":"D"}` with no escape in R, S or D: (R, D).
fn fast_message(text: &str) -> Option<(&str, &str)> {
    let rest = text.strip_prefix(r#"{"room":""#)?;
    let (room, rest) = plain_string(rest)?;
    let rest = rest.strip_prefix(r#","id":"#)?;
    let rest = match rest.strip_prefix('"') {
        Some(string) => plain_string(string)?.1,
        None => {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return None;
            }
            &rest[digits..]
        }
    };
    let rest = rest.strip_prefix(r#","data":""#)?;
    let (data, rest) = plain_string(rest)?;
    (rest == "}").then_some((room, data))
}

/// The JSON string body up to its closing quote, if it has no escape or control byte.
fn plain_string(text: &str) -> Option<(&str, &str)> {
    let end = memchr::memchr2(b'"', b'\\', text.as_bytes())?;
    let bytes = text.as_bytes();
    // A fold, not `any`: without the early exit the loop vectorises.
    let control = bytes[..end]
        .iter()
        .fold(false, |seen, &byte| seen | (byte < 0x20));
    if bytes[end] != b'"' || control {
        return None;
    }
    // Both cuts are at an ASCII quote, so at character boundaries.
    Some((&text[..end], &text[end + 1..]))
}

#[cfg(test)]
mod tests;
