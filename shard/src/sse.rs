//! Server-Sent-Events framing: how a message, a gap notice, a heartbeat and a terminal
//! notice look on the wire. Every frame is encoded once into one refcounted buffer that
//! every subscriber on every shard shares.

use bytes::{BufMut, Bytes, BytesMut};

/// A heartbeat: an SSE comment line. Browsers ignore it; proxies see traffic.
pub const HEARTBEAT: &[u8] = b":\n\n";

/// Encodes one message as an SSE event: `id: N`, one `data:` line per line of `data`
/// (`\r\n`, `\r` and `\n` all end a line, as the SSE grammar says), then a blank line.
pub fn encode_message(id: u64, data: &[u8]) -> Bytes {
    let lines = 1 + data.iter().filter(|&&b| b == b'\n' || b == b'\r').count();
    let mut out = BytesMut::with_capacity(data.len() + 24 + lines * 7);
    out.put_slice(b"id: ");
    put_u64(&mut out, id);
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
    out.freeze()
}

/// Encodes the notice sent before a resumed stream when ids `from..=to` are no longer in
/// history: the client learns what it missed instead of being silently skipped. The
/// event carries no `id:` so the browser's last-event-id stays where it was.
pub fn encode_gap(from: u64, to: u64) -> Bytes {
    Bytes::from(format!(
        "event: gap\ndata: {{\"from\":{from},\"to\":{to}}}\n\n"
    ))
}

/// Encodes the terminal event sent to a subscriber that fell behind the history head (a
/// slow consumer) right before it is closed. `last_id` is the last id it was sent, so it
/// can resume from there (and will then get a gap notice).
pub fn encode_lagged(last_id: u64) -> Bytes {
    Bytes::from(format!(
        "event: lagged\ndata: {{\"reason\":\"slow consumer\",\"last_id\":{last_id}}}\n\n"
    ))
}

/// Encodes a `retry:` hint (milliseconds), sent before a server-initiated close so
/// clients reconnect after that delay.
pub fn encode_retry(retry_ms: u64) -> Bytes {
    Bytes::from(format!("retry: {retry_ms}\n\n"))
}

fn put_u64(out: &mut BytesMut, mut value: u64) {
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
        let cases: &[(u64, &[u8], &str)] = &[
            (1, b"hello", "id: 1\ndata: hello\n\n"),
            (0, b"", "id: 0\ndata: \n\n"),
            (42, b"a\nb", "id: 42\ndata: a\ndata: b\n\n"),
            (7, b"a\r\nb\rc", "id: 7\ndata: a\ndata: b\ndata: c\n\n"),
            (
                18446744073709551615,
                b"x\n",
                "id: 18446744073709551615\ndata: x\ndata: \n\n",
            ),
        ];
        for (id, data, want) in cases {
            assert_eq!(encode_message(*id, data), Bytes::from(*want), "id {id}");
        }
    }

    #[test]
    fn gap_and_lagged_have_no_id() {
        assert_eq!(
            encode_gap(3, 9),
            Bytes::from("event: gap\ndata: {\"from\":3,\"to\":9}\n\n")
        );
        assert!(!encode_lagged(5).starts_with(b"id:"));
        assert_eq!(encode_retry(1500), Bytes::from("retry: 1500\n\n"));
    }

    proptest::proptest! {
        #[test]
        fn every_byte_of_data_survives(id in proptest::num::u64::ANY, data in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
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
