//! The RFC 6455 frame codec: header parsing for client frames (§5.2), unmasking, close
//! frame payloads (§5.5.1, §7.4), and the encoder for server frames (unmasked).
//!
//! Owns byte layouts only; the rules that span frames (fragmentation, limits, the close
//! handshake) live in `machine.rs`. A server frame carries no mask, so a room message's frame
//! is the same bytes for every viewer: the fan-out core encodes it once
//! (`ringcast_core::frame::Frame`). The server-side encoders (header, text, ping, close, JSON
//! strings) are the core's (`ringcast_core::ws`), re-exported here.

use bytes::Bytes;
pub use ringcast_core::ws::{
    encode_close, encode_frame, server_header_len, Opcode, CLOSE_REASON_BYTES_MAX,
    CONTROL_PAYLOAD_BYTES_MAX,
};

/// Longest frame header: 2 bytes, a 64-bit length, a 4-byte mask (§5.2).
pub const FRAME_HEADER_BYTES_MAX: usize = 14;

/// Close status codes ringcast sends (§7.4.1, IANA registry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// 1000: the purpose of the connection is fulfilled (also the answer to a client's 1000).
    Normal,
    /// 1001: the server is going away (shutdown) or the peer stopped answering pings.
    GoingAway,
    /// 1002: a protocol error (bad framing, unmasked frame, reserved bits or opcodes).
    ProtocolError,
    /// 1007: a text message or close reason is not UTF-8.
    InvalidPayload,
    /// 1008: the message breaks a policy (auth revoked, a command refused outright).
    PolicyViolation,
    /// 1009: a message is larger than this connection takes.
    MessageTooBig,
    /// 1011: the server hit an unexpected condition.
    InternalError,
    /// 1013: the server is overloaded (a slow consumer cut, admission); try again later.
    TryAgainLater,
}

impl CloseCode {
    /// The code on the wire.
    pub fn code(self) -> u16 {
        match self {
            Self::Normal => 1000,
            Self::GoingAway => 1001,
            Self::ProtocolError => 1002,
            Self::InvalidPayload => 1007,
            Self::PolicyViolation => 1008,
            Self::MessageTooBig => 1009,
            Self::InternalError => 1011,
            Self::TryAgainLater => 1013,
        }
    }
}

/// Whether a peer may send `code` in a close frame (§7.4): 1000–1003, 1007–1014 (IANA
/// registered), 3000–4999 (libraries, applications). 1004–1006 and 1015 are reserved and
/// never on the wire; the rest is unassigned.
pub fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// A client frame's header, validated on its own (rules that need no other frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Last frame of its message.
    pub fin: bool,
    /// What the frame carries.
    pub opcode: Opcode,
    /// The masking key (client frames must be masked).
    pub mask: [u8; 4],
    /// Payload length in bytes.
    pub payload_len: u64,
    /// Header length in bytes (2 to 14; a `u8`, so a connection's frame state in its
    /// machine takes 8 bytes less).
    pub header_len: u8,
}

/// Why a client frame header is refused (each closes with 1002).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// RSV1–3 set without a negotiated extension.
    #[error("reserved bits set")]
    ReservedBits,
    /// An opcode RFC 6455 reserves.
    #[error("reserved opcode")]
    ReservedOpcode,
    /// The frame is not masked (§5.1: a server must close on an unmasked client frame).
    #[error("client frame not masked")]
    Unmasked,
    /// A control frame without FIN.
    #[error("fragmented control frame")]
    FragmentedControl,
    /// A control frame longer than 125 bytes.
    #[error("control frame longer than 125 bytes")]
    ControlTooLong,
    /// A 64-bit length with the top bit set, or a length not in its shortest form (§5.2:
    /// "the minimal number of bytes MUST be used").
    #[error("bad payload length encoding")]
    BadLength,
}

/// Bytes of header that `first_two` announces: 2, plus the extended length, plus the mask.
pub fn header_len(first_two: [u8; 2]) -> usize {
    let ext = match first_two[1] & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if first_two[1] & 0x80 != 0 { 4 } else { 0 };
    2 + ext + mask
}

/// Parses a client frame header from `buf`, which holds exactly
/// [`header_len`]`(buf[..2])` bytes.
pub fn parse_header(buf: &[u8]) -> Result<FrameHeader, HeaderError> {
    assert!(buf.len() >= 2 && buf.len() == header_len([buf[0], buf[1]]));
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(HeaderError::ReservedBits);
    }
    let opcode = Opcode::from_bits(b0 & 0x0F).ok_or(HeaderError::ReservedOpcode)?;
    let fin = b0 & 0x80 != 0;
    if b1 & 0x80 == 0 {
        return Err(HeaderError::Unmasked);
    }
    let (payload_len, rest) = match b1 & 0x7F {
        126 => {
            let len = u64::from(u16::from_be_bytes([buf[2], buf[3]]));
            if len < 126 {
                return Err(HeaderError::BadLength);
            }
            (len, &buf[4..])
        }
        127 => {
            let mut be = [0u8; 8];
            be.copy_from_slice(&buf[2..10]);
            let len = u64::from_be_bytes(be);
            if len >> 63 != 0 || len <= u64::from(u16::MAX) {
                return Err(HeaderError::BadLength);
            }
            (len, &buf[10..])
        }
        short => (u64::from(short), &buf[2..]),
    };
    if opcode.is_control() {
        if !fin {
            return Err(HeaderError::FragmentedControl);
        }
        if payload_len > CONTROL_PAYLOAD_BYTES_MAX as u64 {
            return Err(HeaderError::ControlTooLong);
        }
    }
    let mut mask = [0u8; 4];
    mask.copy_from_slice(rest);
    Ok(FrameHeader {
        fin,
        opcode,
        mask,
        payload_len,
        // At most `FRAME_HEADER_BYTES_MAX` (14): `buf` is a whole header (the assert above).
        header_len: buf.len() as u8,
    })
}

/// Unmasks `data` in place; `offset` is the position of `data[0]` in the frame's payload.
pub fn unmask(data: &mut [u8], mask: [u8; 4], offset: u64) {
    let mut key = mask;
    key.rotate_left((offset % 4) as usize);
    let word = u32::from_ne_bytes(key);
    let mut chunks = data.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let value = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&value.to_ne_bytes());
    }
    for (byte, k) in chunks.into_remainder().iter_mut().zip(key) {
        *byte ^= k;
    }
}

/// A peer's close payload, checked (§5.5.1, §7.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosePayload {
    /// The status code, or `None` for an empty payload (reported as 1005, never sent).
    pub code: Option<u16>,
    /// The reason (UTF-8, at most 123 bytes).
    pub reason: String,
}

/// Why a peer's close payload is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClosePayloadError {
    /// One byte: half a status code (1002).
    #[error("close payload of one byte")]
    OneByte,
    /// A code that may not be sent (1002).
    #[error("close code not allowed")]
    BadCode,
    /// The reason is not UTF-8 (1007).
    #[error("close reason not UTF-8")]
    BadReason,
}

impl ClosePayloadError {
    /// The code the server closes with in answer.
    pub fn close_code(self) -> CloseCode {
        match self {
            Self::OneByte | Self::BadCode => CloseCode::ProtocolError,
            Self::BadReason => CloseCode::InvalidPayload,
        }
    }
}

/// Parses an unmasked close payload (at most 125 bytes).
pub fn parse_close_payload(payload: &[u8]) -> Result<ClosePayload, ClosePayloadError> {
    match payload {
        [] => Ok(ClosePayload {
            code: None,
            reason: String::new(),
        }),
        [_] => Err(ClosePayloadError::OneByte),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !close_code_allowed(code) {
                return Err(ClosePayloadError::BadCode);
            }
            let reason = std::str::from_utf8(reason).map_err(|_| ClosePayloadError::BadReason)?;
            Ok(ClosePayload {
                code: Some(code),
                reason: reason.to_owned(),
            })
        }
    }
}

/// A close frame without a payload (the answer to a client close that carried no code).
pub fn encode_close_empty() -> Bytes {
    encode_frame(Opcode::Close, &[])
}

/// The complete text frame of a room message, `{"room":R,"id":ID,"data":"…"}` (the fan-out
/// core encodes it once per message, beside the SSE form: `ringcast_core::frame::Frame`).
pub fn encode_room_message(room: &str, id: &str, data: &str) -> Bytes {
    ringcast_core::ws::encode_room_message(room, id, data.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_header(b0: u8, len: u64) -> Vec<u8> {
        let mut out = vec![b0];
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 0xFFFF {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&len.to_be_bytes());
        }
        out.extend_from_slice(&[1, 2, 3, 4]);
        out
    }

    #[test]
    fn header_lengths_7_16_64() {
        for len in [0u64, 125, 126, 65_535, 65_536, 1 << 40] {
            let raw = client_header(0x82, len);
            assert_eq!(header_len([raw[0], raw[1]]), raw.len());
            let header = parse_header(&raw).unwrap();
            assert_eq!(header.payload_len, len);
            assert_eq!(header.opcode, Opcode::Binary);
            assert!(header.fin);
            assert_eq!(header.mask, [1, 2, 3, 4]);
        }
    }

    #[test]
    fn header_refusals() {
        let cases: &[(&[u8], HeaderError)] = &[
            (&[0xC1, 0x80, 0, 0, 0, 0], HeaderError::ReservedBits),
            (&[0x91, 0x80, 0, 0, 0, 0], HeaderError::ReservedBits),
            (&[0xA1, 0x80, 0, 0, 0, 0], HeaderError::ReservedBits),
            (&[0x83, 0x80, 0, 0, 0, 0], HeaderError::ReservedOpcode),
            (&[0x8B, 0x80, 0, 0, 0, 0], HeaderError::ReservedOpcode),
            (&[0x81, 0x00], HeaderError::Unmasked),
            (&[0x09, 0x80, 0, 0, 0, 0], HeaderError::FragmentedControl),
            (
                &[0x89, 0xFE, 0, 126, 0, 0, 0, 0],
                HeaderError::ControlTooLong,
            ),
            (&[0x82, 0xFE, 0, 125, 0, 0, 0, 0], HeaderError::BadLength),
        ];
        for (raw, want) in cases {
            assert_eq!(parse_header(raw), Err(*want), "{raw:02x?}");
        }
        let mut top_bit = vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0];
        top_bit.extend_from_slice(&[0; 4]);
        assert_eq!(parse_header(&top_bit), Err(HeaderError::BadLength));
        let mut short64 = vec![0x82, 0xFF, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF];
        short64.extend_from_slice(&[0; 4]);
        assert_eq!(parse_header(&short64), Err(HeaderError::BadLength));
    }

    #[test]
    fn unmask_at_any_offset() {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let plain: Vec<u8> = (0..37u8).collect();
        let masked: Vec<u8> = plain
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        for cut in 0..masked.len() {
            let mut data = masked.clone();
            let (a, b) = data.split_at_mut(cut);
            unmask(a, mask, 0);
            unmask(b, mask, cut as u64);
            assert_eq!(data, plain, "cut {cut}");
        }
    }

    #[test]
    fn close_codes_per_rfc() {
        for ok in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1013, 3000, 4999,
        ] {
            assert!(close_code_allowed(ok), "{ok}");
        }
        for bad in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535,
        ] {
            assert!(!close_code_allowed(bad), "{bad}");
        }
        assert_eq!(parse_close_payload(&[3]), Err(ClosePayloadError::OneByte));
        assert_eq!(
            parse_close_payload(&[0x03, 0xE8, 0xFF]),
            Err(ClosePayloadError::BadReason)
        );
        let ok = parse_close_payload(b"\x03\xe8bye").unwrap();
        assert_eq!((ok.code, ok.reason.as_str()), (Some(1000), "bye"));
    }

    #[test]
    fn room_message_frame_is_exact_json() {
        // The core's encoding (core/src/ws.rs tests the bytes), decoded by a JSON parser.
        let frame = encode_room_message("lobby", "17-3", "a \"quoted\"\n\u{1}é");
        assert_eq!(frame[0], 0x81);
        let json = &frame[2..];
        assert_eq!(frame[1] as usize, json.len());
        let value: serde_json::Value = serde_json::from_slice(json).unwrap();
        assert_eq!(value["data"], "a \"quoted\"\n\u{1}é");
        // 16- and 64-bit lengths.
        for size in [200, 70_000] {
            let frame = encode_room_message("r", "1-1", &"x".repeat(size));
            let header = match frame[1] {
                126 => 4,
                127 => 10,
                _ => 2,
            };
            assert_eq!(header, server_header_len(frame.len() - header));
            let value: serde_json::Value = serde_json::from_slice(&frame[header..]).unwrap();
            assert_eq!(value["data"].as_str().unwrap().len(), size);
        }
    }
}
