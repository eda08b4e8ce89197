//! One event (a room message, or a notice that rides in history) in both wire forms,
//! encoded once into one refcounted buffer: the SSE event, then the WebSocket text frame.
//! Every subscriber on every shard is handed a slice of that buffer in its own form
//! ([`Frame::get`]): `Bytes::slice` copies nothing, so a WebSocket viewer costs what an SSE
//! viewer costs.
//!
//! Owns the pairing of the two forms; the byte layouts are `sse.rs` and `ws.rs`. Must not
//! touch rooms or subscribers.

use crate::event_id::{EventId, ResetReason};
use crate::{sse, ws};
use bytes::Bytes;

/// How a subscriber's connection carries frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Server-Sent Events over an HTTP response (HTTP/1.1, HTTP/2, HTTP/3).
    #[default]
    Sse,
    /// WebSocket frames (RFC 6455, server side: unmasked), JSON text per docs/PROTOCOL.md.
    Ws,
}

/// An event's SSE and WebSocket forms in one buffer: `buf[..sse_end]` is the SSE form,
/// `buf[ws_start..]` the WebSocket frame (the few bytes between are slack of the WebSocket
/// header, see [`ws::put_room_message`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    buf: Bytes,
    sse_end: u32,
    ws_start: u32,
}

/// Longest text of an id: two `u64`s and a dash.
const ID_TEXT_BYTES_MAX: usize = 41;

/// `id` as clients see it (`E-S`), written on the stack (as the SSE `id:` line's digits).
fn id_text(id: EventId, buf: &mut [u8; ID_TEXT_BYTES_MAX]) -> &str {
    let mut cursor = &mut buf[..];
    sse::put_id(&mut cursor, id);
    let len = ID_TEXT_BYTES_MAX - cursor.len();
    std::str::from_utf8(&buf[..len]).expect("digits and a dash")
}

impl Frame {
    /// A room message: the SSE event `id: E-S` / `data: …` and the WebSocket text frame
    /// `{"room":R,"id":"E-S","data":"…"}` (data that is not UTF-8 has each bad sequence
    /// replaced by U+FFFD in the WebSocket form; the SSE form keeps the bytes).
    pub fn message(room: &str, id: EventId, data: &[u8]) -> Self {
        let mut text = [0; ID_TEXT_BYTES_MAX];
        let id_text = id_text(id, &mut text);
        // The WebSocket form: header, 29 bytes of JSON around the three strings, and the
        // strings (longer when escaped: the Vec grows, see below).
        let ws_guess = ws::SERVER_HEADER_BYTES_MAX + 29 + room.len() + id_text.len() + data.len();
        let mut buf = Vec::with_capacity(sse::message_len_max(data) + ws_guess);
        sse::put_message(&mut buf, id, data);
        let sse_end = buf.len();
        let ws_start = ws::put_room_message(&mut buf, room, id_text, data);
        if buf.capacity() > buf.len() + buf.len() / 8 + 64 {
            // Escaping grew the buffer (doubling): history holds it, so give the rest back.
            buf.shrink_to_fit();
        }
        Self::from_buffer(buf, sse_end, ws_start)
    }

    /// Both forms given as they are (copied into one buffer).
    pub fn from_parts(sse: &[u8], ws: &[u8]) -> Self {
        let mut buf = Vec::with_capacity(sse.len() + ws.len());
        buf.extend_from_slice(sse);
        buf.extend_from_slice(ws);
        Self::from_buffer(buf, sse.len(), sse.len())
    }

    fn from_buffer(buf: Vec<u8>, sse_end: usize, ws_start: usize) -> Self {
        assert!(sse_end <= ws_start && ws_start <= buf.len());
        let ws_start = u32::try_from(ws_start).expect("a frame is under 4 GiB");
        let sse_end = u32::try_from(sse_end).expect("a frame is under 4 GiB");
        Self {
            buf: Bytes::from(buf),
            sse_end,
            ws_start,
        }
    }

    /// The notice that ids `from..=to` are no longer held: SSE `event: gap` and
    /// `{"type":"gap","room":R,"from":ID,"to":ID}`.
    pub fn gap(room: &str, from: EventId, to: EventId) -> Self {
        let json = ws::encode_gap(room, &from.to_string(), &to.to_string());
        Self::from_parts(&sse::encode_gap(from, to), &ws::encode_text(&json))
    }

    /// The notice that a resume id could not be placed (or the room restarted): SSE
    /// `event: reset` (with `id: {resume_from}`) and
    /// `{"type":"reset","room":R,"reason":"…","held_from":ID|null,"id":ID?}`.
    pub fn reset(
        room: &str,
        reason: ResetReason,
        held_from: Option<EventId>,
        resume_from: Option<EventId>,
    ) -> Self {
        let held = held_from.map(|id| id.to_string());
        let resume = resume_from.map(|id| id.to_string());
        let json = ws::encode_reset(room, reason.text(), held.as_deref(), resume.as_deref());
        Self::from_parts(
            &sse::encode_reset(reason, held_from, resume_from),
            &ws::encode_text(&json),
        )
    }

    /// The terminal notice of a slow consumer: SSE `event: lagged`, and for WebSocket
    /// `{"type":"lagged","room":R,"reason":"slow consumer","last_id":ID}` followed by a close
    /// frame 1013 (the connection ends right after).
    pub fn lagged(room: &str, last_id: EventId) -> Self {
        let json = ws::encode_lagged(room, Some(&last_id.to_string()));
        let mut frames = ws::encode_text(&json).to_vec();
        frames.extend_from_slice(&ws::encode_close(
            ws::CLOSE_TRY_AGAIN_LATER,
            "slow consumer",
        ));
        Self::from_parts(&sse::encode_lagged(last_id), &frames)
    }

    /// What a drained subscriber gets last: SSE `retry: {retry_ms}` (reconnect after that
    /// delay), WebSocket a close frame 1001 [`ws::CLOSE_REASON_DRAINING`].
    pub fn drain(retry_ms: u64) -> Self {
        Self::from_parts(
            &sse::encode_retry(retry_ms),
            &ws::encode_close(ws::CLOSE_GOING_AWAY, ws::CLOSE_REASON_DRAINING),
        )
    }

    /// The form a subscriber of `format` is sent: a slice of the shared buffer.
    pub fn get(&self, format: Format) -> Bytes {
        match format {
            Format::Sse => self.sse(),
            Format::Ws => self.ws(),
        }
    }

    /// The SSE form.
    pub fn sse(&self) -> Bytes {
        self.buf.slice(..self.sse_end as usize)
    }

    /// The WebSocket form.
    pub fn ws(&self) -> Bytes {
        self.buf.slice(self.ws_start as usize..)
    }

    /// The whole buffer both forms share (what history holds).
    pub fn buffer(&self) -> &Bytes {
        &self.buf
    }

    /// Bytes held (both forms).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True for a frame of no bytes in either form.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_share_one_buffer() {
        let id = EventId { epoch: 7, seq: 3 };
        let frame = Frame::message("lobby", id, b"hi");
        assert_eq!(frame.sse(), sse::encode_message(id, b"hi"));
        assert_eq!(frame.ws(), ws::encode_room_message("lobby", "7-3", b"hi"));
        let range = frame.buffer().as_ptr_range();
        for part in [frame.sse(), frame.ws()] {
            assert!(range.contains(&part.as_ptr()) && part.as_ptr_range().end <= range.end);
        }
        assert_eq!(frame.get(Format::Sse), frame.sse());
        assert_eq!(frame.get(Format::Ws), frame.ws());
    }

    use proptest::strategy::Strategy as _;

    proptest::proptest! {
        /// Any data, any id: the SSE form is the SSE encoder's, and the WebSocket form is
        /// one unmasked text frame whose payload is exactly the room message with the data
        /// as text (bad UTF-8 replaced).
        #[test]
        fn both_forms_of_any_message(
            epoch in proptest::num::u64::ANY,
            seq in proptest::num::u64::ANY,
            room in "[A-Za-z0-9_.:-]{1,128}",
            data in proptest::prop_oneof![
                proptest::collection::vec(proptest::num::u8::ANY, 0..400),
                proptest::arbitrary::any::<String>().prop_map(String::into_bytes),
            ],
        ) {
            let id = EventId { epoch, seq };
            let frame = Frame::message(&room, id, &data);
            proptest::prop_assert_eq!(frame.sse(), sse::encode_message(id, &data));
            let ws = frame.ws();
            proptest::prop_assert_eq!(ws[0], 0x81);
            let (len, header) = match ws[1] {
                126 => (usize::from(u16::from_be_bytes([ws[2], ws[3]])), 4),
                127 => panic!("under 64 KiB"),
                short => (usize::from(short), 2),
            };
            proptest::prop_assert_eq!(header, ws::server_header_len(len));
            proptest::prop_assert_eq!(ws.len(), header + len);
            let text = std::str::from_utf8(&ws[header..]).expect("UTF-8");
            let json = |value: &str| serde_json::to_string(value).unwrap();
            let want = format!(
                "{{\"room\":{},\"id\":{},\"data\":{}}}",
                json(&room),
                json(&id.to_string()),
                json(&String::from_utf8_lossy(&data)),
            );
            proptest::prop_assert_eq!(text, want);
        }
    }

    #[test]
    fn id_text_of_the_longest_id() {
        let mut buf = [0; ID_TEXT_BYTES_MAX];
        let id = EventId {
            epoch: u64::MAX,
            seq: u64::MAX,
        };
        assert_eq!(id_text(id, &mut buf), id.to_string());
    }

    #[test]
    fn escaping_heavy_data_is_encoded_whole() {
        let data = vec![1u8; 10_000]; // each byte becomes `\u0001`
        let frame = Frame::message("r", EventId { epoch: 1, seq: 1 }, &data);
        assert_eq!(frame.ws().len(), 4 + 33 + 6 * data.len());
    }
}
