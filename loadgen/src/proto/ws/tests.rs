//! Unit tests of the WebSocket client codec: handshake, frames at every split, masking,
//! hostile frames, message shapes.

use super::*;

/// An unmasked server frame.
fn server_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
    match payload.len() {
        len @ 0..=125 => out.push(len as u8),
        len @ 126..=0xffff => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

#[derive(Default)]
struct Recorder {
    log: Vec<String>,
}

impl WsSink for Recorder {
    fn on_text(&mut self, text: &str) {
        let shown = if text.len() > 40 {
            format!("{}…({})", &text[..10], text.len())
        } else {
            text.to_string()
        };
        self.log.push(format!("text {shown}"));
    }
    fn on_binary(&mut self, data: &[u8]) {
        self.log.push(format!("binary {}", data.len()));
    }
    fn on_ping(&mut self, payload: &[u8]) {
        self.log
            .push(format!("ping {}", String::from_utf8_lossy(payload)));
    }
    fn on_pong(&mut self, payload: &[u8]) {
        self.log
            .push(format!("pong {}", String::from_utf8_lossy(payload)));
    }
    fn on_close(&mut self, code: Option<u16>, reason: &[u8]) {
        self.log.push(format!(
            "close {code:?} {}",
            String::from_utf8_lossy(reason)
        ));
    }
}

/// Every frame kind and all three length encodings.
fn stream() -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(server_frame(
        true,
        0x1,
        br#"{"room":"r0","id":1,"data":"a"}"#,
    ));
    out.extend(server_frame(true, 0x9, b"hb"));
    out.extend(server_frame(true, 0x1, &vec![b'x'; 300]));
    out.extend(server_frame(false, 0x1, b"frag"));
    out.extend(server_frame(true, 0xA, b"p"));
    out.extend(server_frame(false, 0x0, b"men"));
    out.extend(server_frame(true, 0x0, b"ted"));
    out.extend(server_frame(true, 0x2, &vec![7; 70_000]));
    out.extend(server_frame(true, 0x1, "é€".as_bytes()));
    out.extend(server_frame(true, 0x8, b"\x03\xe8bye"));
    out
}

fn expected() -> Vec<String> {
    [
        r#"text {"room":"r0","id":1,"data":"a"}"#,
        "ping hb",
        "text xxxxxxxxxx…(300)",
        "pong p",
        "text fragmented",
        "binary 70000",
        "text é€",
        "close Some(1000) bye",
    ]
    .iter()
    .map(|line| line.to_string())
    .collect()
}

#[test]
fn parses_a_whole_stream() {
    let stream = stream();
    let mut reader = WsReader::default();
    let mut sink = Recorder::default();
    assert_eq!(reader.feed(&stream, &mut sink), Ok(stream.len()));
    assert_eq!(sink.log, expected());
}

/// Every split point gives the same messages when the unconsumed tail is carried over,
/// as the subscriber loop does between reads.
#[test]
fn parses_across_every_split() {
    let stream = stream();
    for split in 0..stream.len() {
        let mut reader = WsReader::default();
        let mut sink = Recorder::default();
        let used = reader.feed(&stream[..split], &mut sink).unwrap();
        let mut carried = stream[used..split].to_vec();
        carried.extend_from_slice(&stream[split..]);
        assert_eq!(
            reader.feed(&carried, &mut sink),
            Ok(carried.len()),
            "split at {split}"
        );
        assert_eq!(sink.log, expected(), "split at {split}");
    }
}

/// Byte by byte: nothing is reported before a frame is complete.
#[test]
fn incomplete_frames_wait() {
    let frame = server_frame(true, 0x1, &[b'y'; 200]);
    for len in 0..frame.len() {
        let mut sink = Recorder::default();
        assert_eq!(WsReader::default().feed(&frame[..len], &mut sink), Ok(0));
        assert!(sink.log.is_empty());
    }
}

#[test]
fn hostile_frames_fail_the_connection() {
    let mut too_long = vec![0x81, 127];
    too_long.extend_from_slice(&(3u64 << 20).to_be_bytes());
    let mut masked = vec![0x81, 0x81, 1, 2, 3, 4, b'a'];
    masked.truncate(7);
    let mut huge_fragments = Vec::new();
    huge_fragments.extend(server_frame(false, 0x1, &vec![b'a'; FRAME_BYTES_MAX - 16]));
    huge_fragments.extend(server_frame(true, 0x0, &[b'a'; 100]));
    let table: Vec<(&str, Vec<u8>, WsError)> = vec![
        ("masked", masked, WsError::Masked),
        ("rsv1", vec![0xC1, 0], WsError::Reserved),
        ("reserved opcode", vec![0x83, 0], WsError::Opcode(3)),
        (
            "reserved control opcode",
            vec![0x8B, 0],
            WsError::Opcode(0xB),
        ),
        (
            "long ping",
            server_frame(true, 0x9, &[0; 126]),
            WsError::Control,
        ),
        (
            "fragmented ping",
            server_frame(false, 0x9, b"x"),
            WsError::Control,
        ),
        (
            "announced too long",
            too_long,
            WsError::FrameTooLong(3 << 20),
        ),
        (
            "lone continuation",
            server_frame(true, 0x0, b"x"),
            WsError::Fragments,
        ),
        (
            "text inside a fragmented message",
            [
                server_frame(false, 0x1, b"a"),
                server_frame(true, 0x1, b"b"),
            ]
            .concat(),
            WsError::Fragments,
        ),
        (
            "not utf-8",
            server_frame(true, 0x1, b"\xff\xfe"),
            WsError::NotUtf8,
        ),
        (
            "fragments not utf-8",
            [
                server_frame(false, 0x1, b"\xe2\x82"),
                server_frame(true, 0x0, b"x"),
            ]
            .concat(),
            WsError::NotUtf8,
        ),
        (
            "close with one byte",
            server_frame(true, 0x8, b"\x03"),
            WsError::Control,
        ),
        ("message too long", huge_fragments, WsError::MessageTooLong),
    ];
    for (name, bytes, error) in table {
        let mut sink = Recorder::default();
        assert_eq!(
            WsReader::default().feed(&bytes, &mut sink),
            Err(error.clone()),
            "{name}"
        );
        assert!(error.close_code() >= 1002, "{name}");
    }
}

#[test]
fn accept_key_of_rfc_6455() {
    // RFC 6455 §1.3.
    assert_eq!(
        accept_for("dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
    let key = new_key();
    assert_eq!(key.len(), 24, "16 bytes in base64");
    assert_ne!(key, new_key(), "a fresh key per connection");
}

#[test]
fn handshake_request_offers_version_13() {
    let mut out = Vec::new();
    encode_handshake(&mut out, "h:1", "/rooms/r0/ws", &["X-A: b".into()], "KEY");
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with("GET /rooms/r0/ws HTTP/1.1\r\nHost: h:1\r\n"));
    for line in [
        "Upgrade: websocket\r\n",
        "Connection: Upgrade\r\n",
        "Sec-WebSocket-Key: KEY\r\n",
        "Sec-WebSocket-Version: 13\r\n",
        "X-A: b\r\n",
    ] {
        assert!(text.contains(line), "{line}");
    }
    assert!(text.ends_with("\r\n\r\n"));
}

fn response(lines: &[&str]) -> Vec<u8> {
    let mut out = lines.join("\r\n").into_bytes();
    out.extend_from_slice(b"\r\n\r\n");
    out
}

#[test]
fn handshake_response_is_checked() {
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let good = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: WebSocket",
        "Connection: keep-alive, Upgrade",
        "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
    ];
    let mut bytes = response(&good);
    let head_len = bytes.len();
    bytes.extend(server_frame(true, 0x1, b"first"));
    assert_eq!(parse_handshake(&bytes, key), Ok(Some(head_len)));
    for split in 0..head_len {
        assert_eq!(parse_handshake(&bytes[..split], key), Ok(None), "{split}");
    }
    let with = |index: usize, line: &'static str| {
        let mut lines = good.to_vec();
        lines[index] = line;
        response(&lines)
    };
    let table = [
        (with(0, "HTTP/1.1 200 OK"), WsError::Status(200)),
        (with(0, "HTTP/1.1 404 Not Found"), WsError::Status(404)),
        (
            with(1, "Upgrade: h2c"),
            WsError::Handshake("no Upgrade: websocket"),
        ),
        (
            with(2, "Connection: keep-alive"),
            WsError::Handshake("no Connection: upgrade"),
        ),
        (
            with(3, "Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            WsError::Handshake("Sec-WebSocket-Accept does not match the key"),
        ),
        (
            with(3, "X-Other: 1"),
            WsError::Handshake("no Sec-WebSocket-Accept"),
        ),
    ];
    for (bytes, error) in table {
        assert_eq!(parse_handshake(&bytes, key), Err(error));
    }
    let mut extension = good.to_vec();
    extension.push("Sec-WebSocket-Extensions: permessage-deflate");
    assert!(parse_handshake(&response(&extension), key).is_err());
    assert!(parse_handshake(&vec![b'a'; HANDSHAKE_BYTES_MAX + 1], key).is_err());
    assert!(matches!(
        parse_handshake(
            b"HTTP/1.1 101 Switching Protocols\r\nBad Header\r\n\r\n",
            key
        ),
        Err(WsError::BadResponse(_))
    ));
}

#[test]
fn client_frames_are_masked() {
    // RFC 6455 §5.7: a single-frame masked text message "Hello".
    let mut out = Vec::new();
    encode_frame(
        &mut out,
        OpCode::Data(Data::Text),
        b"Hello",
        [0x37, 0xfa, 0x21, 0x3d],
    );
    assert_eq!(
        out,
        [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
    );
    // A 16-bit length with a mask key after it.
    let payload = vec![b'z'; 300];
    let mask = new_mask();
    let mut out = Vec::new();
    encode_frame(&mut out, OpCode::Data(Data::Text), &payload, mask);
    assert_eq!(&out[..4], &[0x81, 0x80 | 126, 1, 44]);
    assert_eq!(&out[4..8], &mask);
    let mut body = out[8..].to_vec();
    apply_mask(&mut body, mask);
    assert_eq!(body, payload);
    let mut pong = Vec::new();
    encode_pong(&mut pong, b"hb", [1, 2, 3, 4]);
    assert_eq!(pong, [0x8A, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'b' ^ 2]);
    let mut close = Vec::new();
    encode_close(&mut close, CLOSE_NORMAL, [0; 4]);
    assert_eq!(close, [0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8]);
}

#[test]
fn publish_request_round_trips() {
    let mut out = Vec::new();
    let mask = [9, 8, 7, 6];
    encode_publish(&mut out, "r1", "say \"hi\"\\", 42, mask);
    assert_eq!(out[0], 0x81);
    assert_eq!(out[1] & 0x80, 0x80, "masked");
    let length = (out[1] & 0x7f) as usize;
    let mut body = out[6..].to_vec();
    assert_eq!(body.len(), length);
    apply_mask(&mut body, mask);
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        value,
        serde_json::json!({"type":"publish","room":"r1","data":"say \"hi\"\\","ref":42})
    );
}

#[test]
fn server_messages_are_read() {
    let message = |room: &'static str, data: &'static str| ServerMessage::Message {
        room: room.into(),
        data: data.into(),
    };
    let table: &[(&str, Option<ServerMessage<'static>>)] = &[
        (
            r#"{"room":"r0","id":17,"data":"rl1|x"}"#,
            Some(message("r0", "rl1|x")),
        ),
        (
            r#"{"room":"r0","id":"7-3","data":"d"}"#,
            Some(message("r0", "d")),
        ),
        (
            r#"{"id":1,"data":"d","room":"r9"}"#,
            Some(message("r9", "d")),
        ),
        (
            r#"{"room":"r0","id":1,"data":"a\"b"}"#,
            Some(message("r0", "a\"b")),
        ),
        (
            r#"{"room":"r0","id":1.5,"data":"d"}"#,
            Some(message("r0", "d")),
        ),
        (r#"{"room":"r0","data":"d"}"#, Some(ServerMessage::Other)),
        (
            r#"{"type":"ack","ref":5,"room":"r0","id":"1-2"}"#,
            Some(ServerMessage::Ack { reference: Some(5) }),
        ),
        (
            r#"{"type":"ack","ref":"6","id":3}"#,
            Some(ServerMessage::Ack { reference: Some(6) }),
        ),
        (
            r#"{"type":"error","ref":7,"status":429,"reason":"slow down"}"#,
            Some(ServerMessage::Error {
                reference: Some(7),
                status: 429,
            }),
        ),
        (
            r#"{"type":"error","status":400,"reason":"bad frame"}"#,
            Some(ServerMessage::Error {
                reference: None,
                status: 400,
            }),
        ),
        (
            r#"{"type":"gap","room":"r0","from":"1","to":"4"}"#,
            Some(ServerMessage::Gap),
        ),
        (
            r#"{"type":"subscribed","room":"r0"}"#,
            Some(ServerMessage::Subscription),
        ),
        (
            r#"{"type":"lagged","room":"r0"}"#,
            Some(ServerMessage::Other),
        ),
        (
            r#"{"type":"reset","room":"r0","reason":"x"}"#,
            Some(ServerMessage::Other),
        ),
        ("not json", None),
        (r#"{"room":"r0","id":1,"data":"d"} trailing"#, None),
    ];
    for (text, want) in table {
        assert_eq!(&parse_message(text), want, "{text}");
    }
    // The agreed shape is read in place, without a copy.
    match parse_message(r#"{"room":"r0","id":1,"data":"d"}"#) {
        Some(ServerMessage::Message {
            room: Cow::Borrowed(_),
            data: Cow::Borrowed(_),
        }) => {}
        other => panic!("not borrowed: {other:?}"),
    }
}
