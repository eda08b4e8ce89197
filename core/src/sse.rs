//! Server-Sent-Events framing: how a message, a gap notice, a heartbeat and a terminal
//! notice look on the wire. Every frame is encoded once into one refcounted buffer that
//! every subscriber on every shard shares.

use crate::event_id::{EventId, ResetReason};
use bytes::{BufMut, Bytes, BytesMut};

/// A heartbeat: an SSE comment line. Browsers ignore it; proxies see traffic.
pub const HEARTBEAT: &[u8] = b":\n\n";

/// Encodes one message as an SSE event: `id: E-S`, one `data:` line per line of `data`
/// (`\r\n`, `\r` and `\n` all end a line, as the SSE grammar says), then a blank line.
pub fn encode_message(id: EventId, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(message_len_max(data));
    put_message(&mut out, id, data);
    out.freeze()
}

/// At least the length of [`encode_message`]'s frame for `data` (exact but for the
/// digits of the id, counted at their longest).
pub fn message_len_max(data: &[u8]) -> usize {
    let lines = 1 + data.iter().filter(|&&b| b == b'\n' || b == b'\r').count();
    data.len() + 48 + lines * 7
}

/// Appends the SSE event of [`encode_message`] to `out`.
pub fn put_message(out: &mut impl BufMut, id: EventId, data: &[u8]) {
    out.put_slice(b"id: ");
    put_id(out, id);
    out.put_u8(b'\n');
    let mut rest = data;
    loop {
        let end = rest.iter().position(|&b| b == b'\n' || b == b'\r');
        out.put_slice(b"data: ");
        match end {
            Some(i) => {
                out.put_slice(&rest[..i]);
                out.put_u8(b'\n');
                let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = &rest[i + skip..];
            }
            None => {
                out.put_slice(rest);
                out.put_u8(b'\n');
                break;
            }
        }
    }
    out.put_u8(b'\n');
}

/// Encodes the notice sent before a resumed stream when ids `from..=to` are no longer in
/// history: the client learns what it missed instead of being silently skipped. The
/// event carries no `id:` so the browser's last-event-id stays where it was.
pub fn encode_gap(from: EventId, to: EventId) -> Bytes {
    Bytes::from(format!(
        "event: gap\ndata: {{\"from\":\"{from}\",\"to\":\"{to}\"}}\n\n"
    ))
}

/// Encodes the notice sent instead of a resume the server cannot place (an id of another
/// epoch, beyond the head, or of another shape): what follows is everything still held,
/// from `held_from` (`null` when nothing is). It carries `id: {resume_from}` (the id just
/// before `held_from`, when the room's epoch is known) so that a client that reconnects
/// before the next message resumes from there instead of being reset again.
pub fn encode_reset(
    reason: ResetReason,
    held_from: Option<EventId>,
    resume_from: Option<EventId>,
) -> Bytes {
    let id = resume_from.map_or_else(String::new, |id| format!("id: {id}\n"));
    let held_from = held_from.map_or_else(|| "null".to_owned(), |id| format!("\"{id}\""));
    let reason = reason.text();
    Bytes::from(format!(
        "event: reset\n{id}data: {{\"reason\":\"{reason}\",\"held_from\":{held_from}}}\n\n"
    ))
}

/// Encodes the terminal event sent to a subscriber that fell behind the history head (a
/// slow consumer) right before it is closed. `last_id` is the last id it was sent, so it
/// can resume from there (and will then get a gap notice).
pub fn encode_lagged(last_id: EventId) -> Bytes {
    Bytes::from(format!(
        "event: lagged\ndata: {{\"reason\":\"slow consumer\",\"last_id\":\"{last_id}\"}}\n\n"
    ))
}

/// Encodes a `retry:` hint (milliseconds), sent before a server-initiated close so
/// clients reconnect after that delay.
pub fn encode_retry(retry_ms: u64) -> Bytes {
    Bytes::from(format!("retry: {retry_ms}\n\n"))
}

/// Appends `id` as clients see it, `E-S`.
pub fn put_id(out: &mut impl BufMut, id: EventId) {
    put_u64(out, id.epoch);
    out.put_u8(b'-');
    put_u64(out, id.seq);
}

fn put_u64(out: &mut impl BufMut, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.put_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_framing_table() {
        let id = |epoch, seq| EventId { epoch, seq };
        let cases: &[(EventId, &[u8], &str)] = &[
            (id(9, 1), b"hello", "id: 9-1\ndata: hello\n\n"),
            (id(0, 0), b"", "id: 0-0\ndata: \n\n"),
            (id(1, 42), b"a\nb", "id: 1-42\ndata: a\ndata: b\n\n"),
            (
                id(1, 7),
                b"a\r\nb\rc",
                "id: 1-7\ndata: a\ndata: b\ndata: c\n\n",
            ),
            (
                id(u64::MAX, u64::MAX),
                b"x\n",
                "id: 18446744073709551615-18446744073709551615\ndata: x\ndata: \n\n",
            ),
        ];
        for (id, data, want) in cases {
            assert_eq!(encode_message(*id, data), Bytes::from(*want), "id {id}");
        }
    }

    #[test]
    fn gap_and_lagged_have_no_id() {
        let id = |seq| EventId { epoch: 7, seq };
        assert_eq!(
            encode_gap(id(3), id(9)),
            Bytes::from("event: gap\ndata: {\"from\":\"7-3\",\"to\":\"7-9\"}\n\n")
        );
        assert_eq!(
            encode_lagged(id(5)),
            Bytes::from(
                "event: lagged\ndata: {\"reason\":\"slow consumer\",\"last_id\":\"7-5\"}\n\n"
            )
        );
        assert_eq!(encode_retry(1500), Bytes::from("retry: 1500\n\n"));
    }

    #[test]
    fn reset_names_its_reason_and_where_history_starts() {
        let id = |seq| EventId { epoch: 7, seq };
        assert_eq!(
            encode_reset(ResetReason::UnknownEpoch, Some(id(4)), Some(id(3))),
            Bytes::from(
                "event: reset\nid: 7-3\ndata: {\"reason\":\"unknown epoch\",\"held_from\":\"7-4\"}\n\n"
            )
        );
        assert_eq!(
            encode_reset(ResetReason::BareNumber, None, None),
            Bytes::from("event: reset\ndata: {\"reason\":\"bare number\",\"held_from\":null}\n\n")
        );
    }

    proptest::proptest! {
        #[test]
        fn every_byte_of_data_survives(epoch in proptest::num::u64::ANY, seq in proptest::num::u64::ANY, data in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let id = EventId { epoch, seq };
            let frame = encode_message(id, &data);
            let text = frame.to_vec();
            // Parse back the SSE event: data lines joined by '\n'.
            let mut got_id = None;
            let mut got: Vec<Vec<u8>> = Vec::new();
            assert!(text.ends_with(b"\n\n"));
            for line in text[..text.len() - 2].split(|&b| b == b'\n') {
                if let Some(v) = line.strip_prefix(b"id: ") { got_id = Some(v.to_vec()); }
                else if let Some(v) = line.strip_prefix(b"data: ") { got.push(v.to_vec()); }
                else { panic!("unexpected line {:?}", line); }
            }
            let want: Vec<u8> = {
                let s = data.clone();
                let mut out = Vec::new();
                let mut i = 0;
                while i < s.len() {
                    if s[i] == b'\r' { out.push(b'\n'); if s.get(i + 1) == Some(&b'\n') { i += 1; } }
                    else { out.push(s[i]); }
                    i += 1;
                }
                out
            };
            proptest::prop_assert_eq!(got.join(&b'\n'), want);
            proptest::prop_assert_eq!(got_id, Some(id.to_string().into_bytes()));
        }
    }
}
