//! `WsConn` driven by a scripted client on virtual time: masked frames, every split of the
//! bytes, clock jumps. No sockets.

use super::frame::{encode_room_message, CloseCode};
use super::machine::{SendError, WsConfig, WsConn, WsEvent};
use std::time::{Duration, Instant};

const MASK: [u8; 4] = [0x37, 0xFA, 0x21, 0x3D];

/// A client frame: first byte `b0` (FIN, RSV, opcode) and `payload`, masked.
fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![b0];
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xFFFF {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&MASK);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    out
}

fn text(payload: &str) -> Vec<u8> {
    frame(0x81, payload.as_bytes())
}

fn close(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    frame(0x88, &payload)
}

/// A server frame as the client reads it: (opcode, payload).
fn server_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        assert_eq!(bytes[0] & 0x70, 0, "server sets no RSV bit");
        assert_eq!(bytes[1] & 0x80, 0, "server frames are unmasked");
        let (len, header) = match bytes[1] & 0x7F {
            126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                10,
            ),
            short => (short as usize, 2),
        };
        out.push((bytes[0] & 0x0F, bytes[header..header + len].to_vec()));
        bytes = &bytes[header + len..];
    }
    out
}

/// The close code of a server close frame.
fn close_code(frame: &(u8, Vec<u8>)) -> Option<u16> {
    assert_eq!(frame.0, 0x8, "not a close frame: {frame:?}");
    (frame.1.len() >= 2).then(|| u16::from_be_bytes([frame.1[0], frame.1[1]]))
}

/// A connection and a virtual clock.
struct Harness {
    conn: WsConn,
    now: Instant,
    events: Vec<WsEvent>,
    written: Vec<u8>,
}

impl Harness {
    fn new(config: WsConfig) -> Self {
        let now = Instant::now();
        Self {
            conn: WsConn::new(now, config),
            now,
            events: Vec::new(),
            written: Vec::new(),
        }
    }

    fn small() -> Self {
        Self::new(WsConfig {
            message_bytes_max: 64,
            ..WsConfig::default()
        })
    }

    /// Feeds `bytes` as the driver would: polling events and writes until all are taken.
    fn feed(&mut self, bytes: &[u8]) {
        let mut used = 0;
        loop {
            used += self.conn.handle_bytes(self.now, &bytes[used..]);
            assert!(self.conn.buffered_bytes() <= self.conn.config().message_bytes_max + 125 + 14);
            self.drain();
            if used == bytes.len() {
                break;
            }
        }
    }

    fn drain(&mut self) {
        while let Some(event) = self.conn.poll_event() {
            assert!(
                !self
                    .events
                    .iter()
                    .any(|e| matches!(e, WsEvent::Closed { .. })),
                "an event after Closed: {event:?}"
            );
            self.events.push(event);
        }
        while let Some(bytes) = self.conn.poll_transmit() {
            let closed_before = server_frames(&self.written).iter().any(|f| f.0 == 0x8);
            assert!(!closed_before, "a frame after our close");
            self.written.extend_from_slice(&bytes);
        }
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        if self.conn.poll_timeout().is_some_and(|at| at <= self.now) {
            self.conn.handle_timeout(self.now);
        }
        self.drain();
    }

    fn frames(&self) -> Vec<(u8, Vec<u8>)> {
        server_frames(&self.written)
    }

    fn closed(&self) -> Option<(u16, bool)> {
        self.events.iter().find_map(|e| match e {
            WsEvent::Closed { code, clean, .. } => Some((*code, *clean)),
            _ => None,
        })
    }
}

/// Runs `bytes` in one piece, byte by byte, and split at every position; all three give
/// the same events and writes. Returns the one-piece harness.
fn every_split(config: WsConfig, bytes: &[u8]) -> Harness {
    let mut whole = Harness::new(config);
    whole.feed(bytes);
    let mut single = Harness::new(config);
    for byte in bytes {
        single.feed(std::slice::from_ref(byte));
    }
    assert_eq!(single.events, whole.events, "byte by byte");
    assert_eq!(single.written, whole.written, "byte by byte");
    for cut in 0..=bytes.len() {
        let mut split = Harness::new(config);
        split.feed(&bytes[..cut]);
        split.feed(&bytes[cut..]);
        assert_eq!(split.events, whole.events, "cut at {cut}");
        assert_eq!(split.written, whole.written, "cut at {cut}");
    }
    whole
}

fn small_config() -> WsConfig {
    WsConfig {
        message_bytes_max: 64,
        ..WsConfig::default()
    }
}

/// The protocol error cases: each gets a close 1002 and no message.
fn assert_fails_with(bytes: &[u8], code: u16) {
    let h = every_split(small_config(), bytes);
    let frames = h.frames();
    let last = frames.last().expect("a close frame");
    assert_eq!(close_code(last), Some(code), "{bytes:02x?}");
    assert!(
        !h.events
            .iter()
            .any(|e| matches!(e, WsEvent::Text(_) | WsEvent::Binary(_))),
        "no message from a failed stream"
    );
}

#[test]
fn text_and_binary_messages_in_any_split() {
    let mut bytes = text("hello");
    bytes.extend(frame(0x82, &[0, 1, 2, 255]));
    bytes.extend(text(""));
    bytes.extend(frame(0x81, "κόσμε".as_bytes()));
    let h = every_split(small_config(), &bytes);
    assert_eq!(
        h.events,
        vec![
            WsEvent::Text("hello".into()),
            WsEvent::Binary(vec![0, 1, 2, 255]),
            WsEvent::Text(String::new()),
            WsEvent::Text("κόσμε".into()),
        ]
    );
    assert!(h.written.is_empty());
}

#[test]
fn sixteen_and_sixty_four_bit_lengths() {
    let config = WsConfig {
        message_bytes_max: 70_000,
        ..WsConfig::default()
    };
    for len in [126, 65_535, 65_536, 70_000] {
        let payload = vec![b'x'; len];
        let mut h = Harness::new(config);
        h.feed(&frame(0x82, &payload));
        assert_eq!(h.events, vec![WsEvent::Binary(payload)]);
    }
}

#[test]
fn fragments_with_interleaved_control_frames() {
    let mut bytes = frame(0x01, b"fra");
    bytes.extend(frame(0x89, b"p1"));
    bytes.extend(frame(0x00, b"gme"));
    bytes.extend(frame(0x8A, b"unsolicited"));
    bytes.extend(frame(0x80, b"nted"));
    bytes.extend(frame(0x02, &[1]));
    bytes.extend(frame(0x80, &[2]));
    let h = every_split(small_config(), &bytes);
    assert_eq!(
        h.events,
        vec![
            WsEvent::Text("fragmented".into()),
            WsEvent::Binary(vec![1, 2])
        ]
    );
    assert_eq!(
        h.frames(),
        vec![(0xA, b"p1".to_vec())],
        "one pong, payload echoed"
    );
}

#[test]
fn ping_answered_with_same_payload() {
    let mut bytes = frame(0x89, &[]);
    bytes.extend(frame(0x89, &[7; 125]));
    let h = every_split(small_config(), &bytes);
    assert_eq!(h.frames(), vec![(0xA, vec![]), (0xA, vec![7; 125])]);
}

#[test]
fn utf8_split_across_fragments_is_valid() {
    let euro = "€".as_bytes(); // E2 82 AC
    let mut bytes = frame(0x01, &euro[..1]);
    bytes.extend(frame(0x00, &euro[1..2]));
    bytes.extend(frame(0x80, &euro[2..]));
    let h = every_split(small_config(), &bytes);
    assert_eq!(h.events, vec![WsEvent::Text("€".into())]);
}

/// 1007 as soon as the bad byte arrives: the first fragment alone is enough, and the rest of
/// the message never needs to come.
#[test]
fn invalid_utf8_fails_fast_1007() {
    let mut h = Harness::small();
    h.feed(&frame(0x01, b"ok \xf4\x90"));
    assert_eq!(close_code(&h.frames()[0]), Some(1007));
    // Even inside one frame, before it ends: only part of the payload fed.
    let mut h = Harness::small();
    let whole = frame(0x81, b"a\xc0bcdefgh");
    h.feed(&whole[..8]);
    assert_eq!(close_code(&h.frames()[0]), Some(1007));
    // A character cut off at the message's end.
    assert_fails_with(&frame(0x81, b"a\xe2\x82"), 1007);
    // In a close reason.
    assert_fails_with(&frame(0x88, b"\x03\xe8\xff"), 1007);
}

#[test]
fn protocol_errors_close_1002() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unmasked", vec![0x81, 0x02, b'h', b'i']),
        ("rsv1", frame(0xC1, b"x")),
        ("rsv2", frame(0xA1, b"x")),
        ("rsv3", frame(0x91, b"x")),
        ("opcode 3", frame(0x83, b"")),
        ("opcode 0xB", frame(0x8B, b"")),
        ("ping over 125", frame(0x89, &[0; 126])),
        ("fragmented ping", frame(0x09, b"")),
        ("continuation first", frame(0x80, b"x")),
        (
            "text inside fragments",
            [frame(0x01, b"a"), frame(0x81, b"b")].concat(),
        ),
        (
            "binary inside fragments",
            [frame(0x02, b"a"), frame(0x82, b"b")].concat(),
        ),
        (
            "non-minimal 16-bit length",
            vec![0x81, 0xFE, 0, 5, 1, 2, 3, 4, 0, 0, 0, 0, 0],
        ),
        ("close of one byte", frame(0x88, &[3])),
        ("close code 1005", close(1005, "")),
        ("close code 999", close(999, "")),
        ("close code 2000", close(2000, "")),
        ("close code 5000", close(5000, "")),
    ];
    for (name, bytes) in cases {
        let h = every_split(small_config(), &bytes);
        let frames = h.frames();
        assert_eq!(close_code(frames.last().unwrap()), Some(1002), "{name}");
        assert!(
            !h.events
                .iter()
                .any(|e| matches!(e, WsEvent::Text(_) | WsEvent::Binary(_))),
            "{name}"
        );
    }
}

/// 1009 before the payload is read: a header announcing too much is enough.
#[test]
fn oversize_message_1009() {
    let mut h = Harness::small();
    let bytes = frame(0x82, &[0; 65]);
    h.feed(&bytes[..8]); // header + 2 payload bytes
    assert_eq!(close_code(&h.frames()[0]), Some(1009));
    assert!(h.conn.buffered_bytes() <= 14);
    // Over the limit only in sum across fragments.
    let mut bytes = frame(0x01, &[b'a'; 40]);
    bytes.extend(frame(0x80, &[b'a'; 25]));
    assert_fails_with(&bytes, 1009);
    // Exactly the limit passes.
    let mut bytes = frame(0x01, &[b'a'; 40]);
    bytes.extend(frame(0x80, &[b'a'; 24]));
    let h = every_split(small_config(), &bytes);
    assert_eq!(h.events, vec![WsEvent::Text("a".repeat(64))]);
}

/// A header announcing a large message allocates nothing until its bytes arrive, and the
/// buffer never grows past the limit.
#[test]
fn allocation_follows_received_bytes() {
    let config = WsConfig {
        message_bytes_max: 60_000,
        ..WsConfig::default()
    };
    let mut h = Harness::new(config);
    let bytes = frame(0x82, &vec![9; 60_000]);
    h.feed(&bytes[..8 + 10]);
    assert!(
        h.conn.buffered_bytes() < 1_000,
        "{}",
        h.conn.buffered_bytes()
    );
    for piece in bytes[18..].chunks(7_000) {
        h.feed(piece);
        assert!(h.conn.buffered_bytes() <= 60_000 + 125 + 14);
    }
    assert_eq!(h.events, vec![WsEvent::Binary(vec![9; 60_000])]);
}

/// The client closes: the server echoes the code, the handshake is clean, and bytes after it
/// are ignored.
#[test]
fn client_close_is_echoed_and_later_data_ignored() {
    for (code, reason) in [(1000, "bye"), (1001, ""), (3000, "app"), (4999, "é")] {
        let mut bytes = text("before");
        bytes.extend(close(code, reason));
        bytes.extend(text("after"));
        bytes.extend(frame(0x89, b"late ping"));
        let h = every_split(small_config(), &bytes);
        assert_eq!(h.events[0], WsEvent::Text("before".into()));
        assert_eq!(
            h.events[1],
            WsEvent::Closed {
                code,
                reason: reason.into(),
                clean: true
            }
        );
        assert_eq!(h.events.len(), 2);
        let frames = h.frames();
        assert_eq!(frames.len(), 1, "only the close answer: {frames:?}");
        assert_eq!(close_code(&frames[0]), Some(code));
        assert!(h.conn.is_closed());
        assert_eq!(h.conn.poll_timeout(), None, "no timer after the end");
    }
    // A close without a code: answered without a code, reported as 1005.
    let h = every_split(small_config(), &frame(0x88, &[]));
    assert_eq!(h.frames(), vec![(0x8, vec![])]);
    assert_eq!(h.closed(), Some((1005, true)));
}

/// The server closes first (shutdown 1001, policy 1008, internal 1011, overload 1013): data
/// that crosses our close is dropped, the client's close completes the handshake.
#[test]
fn server_close_handshake() {
    for code in [
        CloseCode::Normal,
        CloseCode::GoingAway,
        CloseCode::PolicyViolation,
        CloseCode::InternalError,
        CloseCode::TryAgainLater,
    ] {
        let mut h = Harness::small();
        h.conn.send_text("last words").unwrap();
        assert!(h.conn.is_open());
        h.conn.send_close(h.now, code, "reason");
        assert!(!h.conn.is_open());
        assert_eq!(h.conn.send_text("too late"), Err(SendError::Closing));
        h.drain();
        let frames = h.frames();
        assert_eq!(frames[0], (0x1, b"last words".to_vec()));
        assert_eq!(close_code(&frames[1]), Some(code.code()));
        assert_eq!(&frames[1].1[2..], b"reason");
        // Data in flight, fragments, a ping: no event, no pong.
        h.feed(&text("crossing"));
        h.feed(&frame(0x01, b"frag"));
        h.feed(&frame(0x89, b"p"));
        assert!(h.events.is_empty());
        assert_eq!(h.frames().len(), 2);
        h.feed(&close(1000, ""));
        assert_eq!(h.closed(), Some((code.code(), true)));
    }
}

/// After our close the client gets `close_timeout` to answer, then the connection drops.
#[test]
fn close_timeout_drops() {
    let mut h = Harness::small();
    h.conn.send_close(h.now, CloseCode::GoingAway, "shutdown");
    h.drain();
    let deadline = h.conn.poll_timeout().unwrap();
    assert_eq!(deadline, h.now + h.conn.config().close_timeout);
    h.advance(h.conn.config().close_timeout - Duration::from_millis(1));
    assert!(h.closed().is_none());
    h.advance(Duration::from_millis(1));
    assert_eq!(h.closed(), Some((1006, false)));
    assert!(h.conn.is_closed());
    assert_eq!(h.conn.poll_timeout(), None);
}

/// Quiet for `ping_interval`: a ping; any byte resets it; still quiet for `pong_timeout`:
/// close 1001, then the close timeout drops it.
#[test]
fn keepalive_ping_then_pong_timeout() {
    let config = WsConfig {
        ping_interval: Duration::from_secs(30),
        pong_timeout: Duration::from_secs(10),
        close_timeout: Duration::from_secs(2),
        ..small_config()
    };
    let mut h = Harness::new(config);
    assert_eq!(h.conn.poll_timeout(), Some(h.now + Duration::from_secs(30)));
    h.advance(Duration::from_secs(29));
    assert!(h.written.is_empty());
    h.advance(Duration::from_secs(1));
    assert_eq!(h.frames(), vec![(0x9, b"ringcast".to_vec())]);
    // The pong (any byte) resets the cycle.
    h.advance(Duration::from_secs(5));
    h.feed(&frame(0x8A, b"ringcast"));
    assert_eq!(h.conn.poll_timeout(), Some(h.now + Duration::from_secs(30)));
    // Quiet again: ping, then no answer.
    h.advance(Duration::from_secs(30));
    assert_eq!(h.frames().len(), 2);
    h.advance(Duration::from_secs(10));
    let frames = h.frames();
    assert_eq!(close_code(&frames[2]), Some(1001));
    assert!(h.closed().is_none(), "waits for the close answer");
    h.advance(Duration::from_secs(2));
    assert_eq!(h.closed(), Some((1006, false)));
}

/// A ping flood that never reads its pongs: the machine stops consuming once its write
/// queue is over the bound, so it holds no more than the bound plus one pong.
#[test]
fn ping_flood_stalls_at_the_write_bound() {
    let config = WsConfig {
        transmit_bytes_max: 1_000,
        ..small_config()
    };
    let mut conn = WsConn::new(Instant::now(), config);
    let now = Instant::now();
    let flood: Vec<u8> = (0..1_000).flat_map(|_| frame(0x89, &[0; 100])).collect();
    let used = conn.handle_bytes(now, &flood);
    assert!(used < flood.len());
    assert!(
        conn.transmit_bytes() <= 1_000 + 102,
        "{}",
        conn.transmit_bytes()
    );
    assert_eq!(
        conn.handle_bytes(now, &flood[used..]),
        0,
        "stalled until written"
    );
    while conn.poll_transmit().is_some() {}
    assert!(conn.handle_bytes(now, &flood[used..]) > 0);
}

/// One message per `handle_bytes` round: the next waits (in the driver's buffer) until the
/// event is taken, so the machine never holds two messages.
#[test]
fn one_message_held_at_a_time() {
    let mut conn = WsConn::new(Instant::now(), small_config());
    let now = Instant::now();
    let bytes = [text("one"), text("two")].concat();
    let used = conn.handle_bytes(now, &bytes);
    assert_eq!(used, text("one").len());
    assert_eq!(conn.handle_bytes(now, &bytes[used..]), 0);
    assert_eq!(conn.poll_event(), Some(WsEvent::Text("one".into())));
    assert_eq!(conn.handle_bytes(now, &bytes[used..]), bytes.len() - used);
    assert_eq!(conn.poll_event(), Some(WsEvent::Text("two".into())));
}

/// A slow reader: `send_frame` refuses past the bound (the shard cuts it, 1013), but an
/// empty queue takes any one frame, so one big message always fits.
#[test]
fn send_queue_bounded() {
    let config = WsConfig {
        transmit_bytes_max: 100,
        ..small_config()
    };
    let mut conn = WsConn::new(Instant::now(), config);
    let frame = encode_room_message("r", "1-1", &"x".repeat(300));
    conn.send_frame(frame.clone()).unwrap();
    assert_eq!(conn.send_frame(frame.clone()), Err(SendError::Full));
    assert_eq!(conn.poll_transmit(), Some(frame));
    conn.send_text("small").unwrap();
}

/// An idle connection costs its struct and nothing on the heap (issue 16's bar: ≤ 1 KiB of
/// RSS per idle WebSocket connection, all layers together).
#[test]
fn idle_connection_is_small() {
    let size = std::mem::size_of::<WsConn>();
    // 328 bytes when written (x86_64); the bound catches a field that grows it by a lot.
    assert!(size <= 384, "WsConn is {size} bytes");
    let conn = WsConn::new(Instant::now(), WsConfig::default());
    assert_eq!(conn.buffered_bytes(), 0);
    assert_eq!(conn.transmit_bytes(), 0);
}
