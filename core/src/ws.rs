//! WebSocket (RFC 6455) server frames as bytes: the unmasked frame header, text, ping and
//! close frames, JSON string escaping, and the JSON objects the fan-out sends (a room
//! message, gap, reset, lagged; docs/PROTOCOL.md).
//!
//! Owns byte layouts of what the server sends. A server frame carries no mask, so a room
//! message's frame is the same bytes for every viewer: it is encoded once at the room's owner
//! shard ([`crate::frame::Frame`]). Must not touch connections: parsing client frames, the
//! close handshake and keep-alive live in `ringcast-proto` (`conn::ws`), which builds its
//! frames with this module.

use bytes::{BufMut, Bytes, BytesMut};

/// Longest control frame payload (ping, pong, close), in bytes (§5.5).
pub const CONTROL_PAYLOAD_BYTES_MAX: usize = 125;
/// Longest close reason: a control payload less the 2-byte code.
pub const CLOSE_REASON_BYTES_MAX: usize = CONTROL_PAYLOAD_BYTES_MAX - 2;
/// Longest server frame header: 2 bytes and a 64-bit length (server frames are unmasked).
pub const SERVER_HEADER_BYTES_MAX: usize = 10;
/// A ping with an empty payload: the WebSocket form of the SSE heartbeat comment.
pub const PING_EMPTY: &[u8] = &[0x89, 0x00];
/// Close code 1001, "going away": the server drains or shuts down (§7.4.1).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// The reason of every 1001 a drain sends, whoever closes: the fan-out's drain of a
/// subscriber ([`crate::frame::Frame::drain`]) or the shard, for a connection that follows
/// no room (docs/PROTOCOL.md).
pub const CLOSE_REASON_DRAINING: &str = "server draining";
/// Close code 1013, "try again later": a slow consumer cut (after `lagged`).
pub const CLOSE_TRY_AGAIN_LATER: u16 = 1013;

/// A frame's opcode (§5.2); the others are reserved and fail the connection (1002).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    /// Continues a fragmented message.
    Continuation,
    /// Starts a text message (UTF-8).
    Text,
    /// Starts a binary message.
    Binary,
    /// Starts or answers the close handshake.
    Close,
    /// Asks for a pong.
    Ping,
    /// Answers a ping (or is unsolicited: a heartbeat).
    Pong,
}

impl Opcode {
    /// The opcode of the low four bits of a frame's first byte, `None` when reserved.
    pub fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    /// The four bits on the wire.
    pub fn bits(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    /// Close, ping and pong: at most 125 bytes, never fragmented, allowed between the
    /// fragments of a message.
    pub fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

/// Bytes of a server (unmasked) header for a payload of `len` bytes: the length in its
/// shortest form (7, 16 or 64 bits).
pub fn server_header_len(len: usize) -> usize {
    if len < 126 {
        2
    } else if len <= usize::from(u16::MAX) {
        4
    } else {
        10
    }
}

/// Appends the header of a final (FIN), unmasked frame of `len` payload bytes.
pub fn put_server_header(out: &mut impl BufMut, opcode: Opcode, len: usize) {
    out.put_u8(0x80 | opcode.bits());
    if len < 126 {
        out.put_u8(len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.put_u8(126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
}

/// One complete, unfragmented, unmasked server frame.
pub fn encode_frame(opcode: Opcode, payload: &[u8]) -> Bytes {
    assert!(
        !opcode.is_control() || payload.len() <= CONTROL_PAYLOAD_BYTES_MAX,
        "control payload over 125 bytes"
    );
    assert!(
        opcode != Opcode::Continuation,
        "server frames are never fragmented"
    );
    let mut out = BytesMut::with_capacity(server_header_len(payload.len()) + payload.len());
    put_server_header(&mut out, opcode, payload.len());
    out.put_slice(payload);
    out.freeze()
}

/// A server close frame: `code` and `reason`, the reason cut at a character boundary to
/// fit 123 bytes.
pub fn encode_close(code: u16, reason: &str) -> Bytes {
    let mut cut = reason.len().min(CLOSE_REASON_BYTES_MAX);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut payload = Vec::with_capacity(2 + cut);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    encode_frame(Opcode::Close, &payload)
}

/// Appends `value` as a JSON string (quotes and escapes: serde_json's, so `"`, `\` and
/// control characters are escaped and everything else, non-ASCII included, is kept as is).
pub fn write_json_string(out: &mut Vec<u8>, value: &str) {
    // Most text needs no escape: copied whole after a scan the compiler vectorizes (no early
    // exit). Measured on a 1 KiB comment: 0.1 µs instead of serde_json's 0.9 µs.
    if !needs_escape(value.as_bytes()) {
        out.reserve(value.len() + 2);
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
        return;
    }
    // Writing a &str into a Vec cannot fail (no IO, no non-string keys).
    serde_json::to_writer(&mut *out, value).expect("a str serializes into a Vec");
}

/// Whether JSON needs an escape in `bytes`: a control character, `"` or `\`.
fn needs_escape(bytes: &[u8]) -> bool {
    bytes.iter().fold(false, |any, &b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    })
}

/// Appends a complete text frame whose payload is the room message
/// `{"room":R,"id":ID,"data":"…"}` to `out`, and returns where in `out` the frame starts.
/// Data that is not UTF-8 has each bad sequence replaced by U+FFFD (a text frame must be
/// UTF-8; an `EventSource` decodes the SSE form the same way).
///
/// The JSON is written after a gap as long as the longest header, then the header is
/// written right before it: the frame is `out[start..]` and `start - out_len_before` is at
/// most 8 (a room message is encoded once, so a few bytes of slack beat a second pass
/// measuring the escaped length).
pub fn put_room_message(out: &mut Vec<u8>, room: &str, id: &str, data: &[u8]) -> usize {
    let gap_at = out.len();
    out.resize(gap_at + SERVER_HEADER_BYTES_MAX, 0);
    out.extend_from_slice(b"{\"room\":");
    write_json_string(out, room);
    out.extend_from_slice(b",\"id\":");
    write_json_string(out, id);
    out.extend_from_slice(b",\"data\":");
    match std::str::from_utf8(data) {
        Ok(text) => write_json_string(out, text),
        // `from_utf8` checks ASCII a word at a time; the lossy walk is for the rare rest.
        Err(_) => write_json_string(out, &String::from_utf8_lossy(data)),
    }
    out.push(b'}');
    let payload_at = gap_at + SERVER_HEADER_BYTES_MAX;
    let len = out.len() - payload_at;
    let start = payload_at - server_header_len(len);
    let mut header = &mut out[start..payload_at];
    put_server_header(&mut header, Opcode::Text, len);
    start
}

/// The complete text frame of a room message, `{"room":R,"id":ID,"data":"…"}` (see
/// [`put_room_message`]).
pub fn encode_room_message(room: &str, id: &str, data: &[u8]) -> Bytes {
    let mut buf =
        Vec::with_capacity(SERVER_HEADER_BYTES_MAX + 29 + room.len() + id.len() + data.len());
    let start = put_room_message(&mut buf, room, id, data);
    Bytes::from(buf).slice(start..)
}

/// Builds `{"type":TYPE` … `}`: one JSON control object, fields appended in order.
#[derive(Debug)]
pub struct JsonObject(Vec<u8>);

impl JsonObject {
    /// `{"type":kind`.
    pub fn new(kind: &str) -> Self {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(b"{\"type\":");
        write_json_string(&mut out, kind);
        Self(out)
    }

    fn key(&mut self, key: &str) -> &mut Vec<u8> {
        self.0.push(b',');
        write_json_string(&mut self.0, key);
        self.0.push(b':');
        &mut self.0
    }

    /// Appends `"key":"value"`.
    pub fn string(mut self, key: &str, value: &str) -> Self {
        write_json_string(self.key(key), value);
        self
    }

    /// Appends `"key":json`, `json` written as it is (a number, `null`, a literal).
    pub fn raw(mut self, key: &str, json: &str) -> Self {
        self.key(key).extend_from_slice(json.as_bytes());
        self
    }

    /// Appends `"key":"id"`, or `"key":null` for `None`.
    pub fn id_or_null(self, key: &str, id: Option<&str>) -> Self {
        match id {
            Some(id) => self.string(key, id),
            None => self.raw(key, "null"),
        }
    }

    /// The object's text.
    pub fn end(mut self) -> String {
        self.0.push(b'}');
        // Only str pieces and serde_json output were written.
        String::from_utf8(self.0).expect("JSON text is UTF-8")
    }
}

/// `{"type":"reset","room":R,"reason":"…","held_from":ID|null,"id":ID?}`: the resume id could not be
/// placed; what follows starts at `held_from` (SSE's `event: reset`).
pub fn encode_reset(
    room: &str,
    reason: &str,
    held_from: Option<&str>,
    resume_from: Option<&str>,
) -> String {
    let object = JsonObject::new("reset")
        .string("room", room)
        .string("reason", reason)
        .id_or_null("held_from", held_from);
    // As SSE's `id:` line on `event: reset`: where a client that is cut before the next
    // message resumes, so that it is not reset again (absent when the room's epoch is unknown).
    match resume_from {
        Some(id) => object.string("id", id),
        None => object,
    }
    .end()
}

/// `{"type":"gap","room":R,"from":ID,"to":ID}`: these messages fell out of history (SSE's
/// `event: gap`).
pub fn encode_gap(room: &str, from: &str, to: &str) -> String {
    JsonObject::new("gap")
        .string("room", room)
        .string("from", from)
        .string("to", to)
        .end()
}

/// `{"type":"lagged","room":R,"reason":"slow consumer","last_id":ID|null}`: the client fell
/// too far behind; the server closes (1013) after it (SSE's `event: lagged`).
pub fn encode_lagged(room: &str, last_id: Option<&str>) -> String {
    JsonObject::new("lagged")
        .string("room", room)
        .string("reason", "slow consumer")
        .id_or_null("last_id", last_id)
        .end()
}

/// A text frame carrying `text` (a control object).
pub fn encode_text(text: &str) -> Bytes {
    encode_frame(Opcode::Text, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_frames_unmasked_with_minimal_lengths() {
        assert_eq!(&encode_frame(Opcode::Text, b"hi")[..], b"\x81\x02hi");
        let mid = encode_frame(Opcode::Binary, &[0; 126]);
        assert_eq!(&mid[..4], &[0x82, 126, 0, 126]);
        let top16 = encode_frame(Opcode::Binary, &[0; 65_535]);
        assert_eq!(&top16[..4], &[0x82, 126, 0xFF, 0xFF]);
        let big = encode_frame(Opcode::Binary, &[0; 65_536]);
        assert_eq!(&big[..10], &[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(&encode_close(1000, "")[..], b"\x88\x02\x03\xe8");
        assert_eq!(&encode_frame(Opcode::Ping, b"")[..], PING_EMPTY);
        // A long multi-byte reason is cut at a character boundary within 123 bytes.
        let close = encode_close(1001, &"é".repeat(100));
        assert_eq!(close[1] as usize, close.len() - 2);
        assert!(close.len() - 2 <= CONTROL_PAYLOAD_BYTES_MAX);
        std::str::from_utf8(&close[4..]).unwrap();
    }

    #[test]
    fn room_message_frame_is_exact_json() {
        let frame = encode_room_message("lobby", "17-3", "a \"quoted\"\\\n\u{1}é".as_bytes());
        assert_eq!(frame[0], 0x81);
        let json = &frame[2..];
        assert_eq!(frame[1] as usize, json.len());
        assert_eq!(
            std::str::from_utf8(json).unwrap(),
            r#"{"room":"lobby","id":"17-3","data":"a \"quoted\"\\\n\u0001é"}"#
        );
    }

    #[test]
    fn room_message_of_bytes_that_are_not_utf8_is_still_utf8() {
        let frame = encode_room_message("r", "1-1", b"a\xFFb\xC3");
        assert_eq!(
            std::str::from_utf8(&frame[2..]).unwrap(),
            "{\"room\":\"r\",\"id\":\"1-1\",\"data\":\"a\u{FFFD}b\u{FFFD}\"}"
        );
    }

    #[test]
    fn room_message_headers_at_each_length_boundary() {
        // Payload = 33 bytes of JSON around the data for room "r", id "1-1".
        for data_len in [0, 92, 93, 65_502, 65_503, 70_000] {
            let frame = encode_room_message("r", "1-1", &vec![b'x'; data_len]);
            let payload_len = data_len + 33;
            let header = server_header_len(payload_len);
            assert_eq!(frame.len(), header + payload_len, "{data_len}");
            match header {
                2 => assert_eq!(frame[1] as usize, payload_len),
                4 => {
                    assert_eq!(frame[1], 126);
                    assert_eq!(
                        u16::from_be_bytes([frame[2], frame[3]]) as usize,
                        payload_len
                    );
                }
                _ => {
                    assert_eq!(frame[1], 127);
                    let mut be = [0; 8];
                    be.copy_from_slice(&frame[2..10]);
                    assert_eq!(u64::from_be_bytes(be) as usize, payload_len);
                }
            }
        }
    }

    #[test]
    fn strings_escape_as_serde_json_does() {
        let cases = [
            "",
            "plain",
            "q\"",
            "b\\",
            "\u{0}\u{1f}",
            "\u{7f}é😀\u{2028}",
            "tab\t",
        ];
        for case in cases {
            let mut out = Vec::new();
            write_json_string(&mut out, case);
            assert_eq!(out, serde_json::to_vec(case).unwrap(), "{case:?}");
        }
    }

    #[test]
    fn control_objects_are_exact() {
        assert_eq!(
            encode_reset("a", "unknown epoch", Some("5-1"), Some("5-0")),
            r#"{"type":"reset","room":"a","reason":"unknown epoch","held_from":"5-1","id":"5-0"}"#
        );
        assert_eq!(
            encode_reset("a", "bare number", None, None),
            r#"{"type":"reset","room":"a","reason":"bare number","held_from":null}"#
        );
        assert_eq!(
            encode_gap("a", "5-1", "5-9"),
            r#"{"type":"gap","room":"a","from":"5-1","to":"5-9"}"#
        );
        assert_eq!(
            encode_lagged("a", Some("5-9")),
            r#"{"type":"lagged","room":"a","reason":"slow consumer","last_id":"5-9"}"#
        );
    }
}
