//! A whole WebSocket connection after the handshake (`ringcast_proto::conn::ws::WsConn`), driven
//! as the shard will drive it: client bytes (raw garbage, or well-formed masked frames of any
//! opcode, flags and length) arrive in arbitrary splits, the clock jumps (keep-alive, pong
//! and close timers fire), the server sends messages and closes, and the driver sometimes
//! leaves events and writes unpolled for a while.
//!
//! Invariants: no panic; received data held never exceeds the message limit plus one
//! control payload and one header; the write queue never exceeds its bound plus one frame
//! (plus one control frame); `handle_bytes` stalls only when an event or the write queue
//! asks it to; every text event is within the limit; `Closed` comes exactly once and is
//! the last event, no frame follows a close frame, and a closed connection has no timer;
//! the bytes written parse as unmasked server frames; and — when no timer fired and the
//! server sent nothing — events and writes are the same whatever the splits, as if every
//! byte had arrived at once.
#![no_main]

use ringcast_proto::conn::ws::machine::{WsConfig, WsConn, WsEvent};
use ringcast_proto::conn::ws::{encode_room_message, CloseCode};
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, Instant};

/// Largest frame the harness itself queues with `send_text` (its bound slack).
const SEND_BYTES_MAX: usize = 300;

struct Run {
    conn: WsConn,
    now: Instant,
    events: Vec<WsEvent>,
    written: Vec<u8>,
    closed_events: usize,
    close_written: bool,
}

impl Run {
    fn new(now: Instant, config: WsConfig) -> Self {
        Self {
            conn: WsConn::new(now, config),
            now,
            events: Vec::new(),
            written: Vec::new(),
            closed_events: 0,
            close_written: false,
        }
    }

    fn check(&self) {
        let config = self.conn.config();
        assert!(self.conn.buffered_bytes() <= config.message_bytes_max + 125 + 14);
        assert!(
            self.conn.transmit_bytes() <= config.transmit_bytes_max + SEND_BYTES_MAX + 2 * 127 + 14,
            "write queue {} over its bound",
            self.conn.transmit_bytes()
        );
        if self.conn.is_closed() {
            assert_eq!(self.conn.poll_timeout(), None, "a timer after the end");
        }
    }

    /// Feeds bytes; with `poll`, drains events and writes between rounds (else it stops at
    /// the first stall, leaving the rest unfed, as a driver that stopped reading).
    fn feed(&mut self, bytes: &[u8], poll: bool) -> usize {
        let mut used = 0;
        loop {
            let n = self.conn.handle_bytes(self.now, &bytes[used..]);
            assert!(n <= bytes.len() - used);
            used += n;
            self.check();
            if used == bytes.len() {
                break;
            }
            if n == 0 {
                // A stall must have a cause the driver can clear.
                assert!(
                    self.conn.transmit_bytes() > self.conn.config().transmit_bytes_max
                        || self.has_event_pending(),
                    "stalled without cause"
                );
            }
            if !poll {
                break;
            }
            self.drain();
        }
        if poll {
            self.drain();
        }
        used
    }

    fn has_event_pending(&mut self) -> bool {
        // Peek by taking one and keeping it in order.
        match self.conn.poll_event() {
            Some(event) => {
                self.take(event);
                true
            }
            None => false,
        }
    }

    fn take(&mut self, event: WsEvent) {
        assert_eq!(self.closed_events, 0, "an event after Closed: {event:?}");
        match &event {
            WsEvent::Text(text) => {
                assert!(text.len() <= self.conn.config().message_bytes_max)
            }
            WsEvent::Binary(data) => {
                assert!(data.len() <= self.conn.config().message_bytes_max)
            }
            WsEvent::Closed { .. } => {
                self.closed_events += 1;
                assert!(self.conn.is_closed());
            }
        }
        self.events.push(event);
    }

    fn drain(&mut self) {
        while let Some(event) = self.conn.poll_event() {
            self.take(event);
        }
        while let Some(frame) = self.conn.poll_transmit() {
            assert!(!self.close_written, "a frame after the close frame");
            let (opcode, payload_len, header) = server_frame(&frame);
            assert_eq!(header + payload_len, frame.len(), "one frame per transmit");
            if opcode == 0x8 {
                self.close_written = true;
            }
            self.written.extend_from_slice(&frame);
        }
        self.check();
    }
}

/// (opcode, payload length, header length) of one server frame; asserts it is unmasked,
/// final, without RSV bits, with a minimal length.
fn server_frame(frame: &[u8]) -> (u8, usize, usize) {
    assert_eq!(frame[0] & 0xF0, 0x80, "FIN, no RSV");
    assert_eq!(frame[1] & 0x80, 0, "unmasked");
    let (len, header) = match frame[1] & 0x7F {
        126 => (usize::from(u16::from_be_bytes([frame[2], frame[3]])), 4),
        127 => (
            u64::from_be_bytes(frame[2..10].try_into().unwrap()) as usize,
            10,
        ),
        short => (usize::from(short), 2),
    };
    assert!(header == 2 || len >= 126, "minimal length");
    assert!(header != 10 || len > 0xFFFF, "minimal length");
    let opcode = frame[0] & 0x0F;
    if opcode >= 0x8 {
        assert!(len <= 125, "control frame over 125 bytes");
    }
    (opcode, len, header)
}

/// A masked client frame from fuzz bytes: `b0` as given (FIN, RSV, opcode: may be bad).
fn client_frame(b0: u8, mask: [u8; 4], payload: &[u8], out: &mut Vec<u8>) {
    out.push(b0);
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
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
}

/// Reads the input as operations.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(first)
    }

    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let Some(setup) = input.byte() else { return };
    let config = WsConfig {
        message_bytes_max: [16, 125, 200, 1024][usize::from(setup & 3)],
        transmit_bytes_max: [0, 64, 512, 4096][usize::from((setup >> 2) & 3)],
        ping_interval: Duration::from_millis(100),
        pong_timeout: Duration::from_millis(50),
        close_timeout: Duration::from_millis(30),
    };
    let start = Instant::now();
    let mut run = Run::new(start, config);
    // Client bytes in order, for the all-at-once comparison.
    let mut stream = Vec::new();
    let mut timers_or_sends = false;
    let mut unpolled = Vec::new();

    while let Some(op) = input.byte() {
        match op % 8 {
            // Raw bytes (garbage, or a hand-written header).
            0 => {
                let n = usize::from(input.byte().unwrap_or(0));
                let bytes = input.bytes(n);
                stream.extend_from_slice(bytes);
                unpolled.extend_from_slice(bytes);
            }
            // A well-formed masked frame with fuzzed first byte, in one or more pieces.
            1 | 2 => {
                let b0 = input.byte().unwrap_or(0x81);
                let mask = [input.byte().unwrap_or(0), 1, 2, input.byte().unwrap_or(3)];
                let n = usize::from(input.byte().unwrap_or(0));
                // Some lengths past 125 and 64 KiB from a small input: repeat the bytes.
                let repeat = if op & 0x10 != 0 { 300 } else { 1 };
                let payload: Vec<u8> = input.bytes(n).repeat(repeat);
                let mut frame = Vec::new();
                client_frame(b0, mask, &payload, &mut frame);
                stream.extend_from_slice(&frame);
                unpolled.extend_from_slice(&frame);
            }
            // Deliver what is pending, cut at a fuzzed point (the rest stays pending).
            3 => {
                let cut = usize::from(input.byte().unwrap_or(255)).min(unpolled.len());
                let piece: Vec<u8> = unpolled.drain(..cut).collect();
                let used = run.feed(&piece, op & 0x10 == 0);
                if used < piece.len() {
                    // The driver stopped at a stall without polling: it polls now and
                    // feeds the rest.
                    run.drain();
                    let _ = run.feed(&piece[used..], true);
                }
            }
            // The clock moves; timers that are due fire.
            4 => {
                let ms = u64::from(input.byte().unwrap_or(0));
                run.now += Duration::from_millis(ms);
                if let Some(at) = run.conn.poll_timeout() {
                    if at <= run.now {
                        timers_or_sends = true;
                        run.conn.handle_timeout(run.now);
                    }
                }
                if op & 0x10 == 0 {
                    run.drain();
                }
            }
            // The server sends a control object or a room message.
            5 => {
                timers_or_sends = true;
                let n = usize::from(input.byte().unwrap_or(0)).min(SEND_BYTES_MAX - 40);
                let text = String::from_utf8_lossy(input.bytes(n)).into_owned();
                let mut text: String = text.chars().take(n).collect();
                while text.len() > SEND_BYTES_MAX - 14 {
                    text.pop();
                }
                if op & 0x10 == 0 {
                    let _ = run.conn.send_text(&text);
                } else {
                    let frame = encode_room_message("r", "1-1", &text);
                    if frame.len() <= SEND_BYTES_MAX {
                        let _ = run.conn.send_frame(frame);
                    }
                }
                run.check();
            }
            // The server closes.
            6 => {
                timers_or_sends = true;
                let code = [
                    CloseCode::Normal,
                    CloseCode::GoingAway,
                    CloseCode::PolicyViolation,
                    CloseCode::InternalError,
                    CloseCode::TryAgainLater,
                ][usize::from(op >> 4) % 5];
                run.conn.send_close(run.now, code, "server");
                run.check();
            }
            // Poll everything.
            _ => run.drain(),
        }
    }
    // Deliver the rest and run out the clock: the connection must end (a close that the
    // client never answers times out).
    let rest = std::mem::take(&mut unpolled);
    let _ = run.feed(&rest, true);
    for _ in 0..4 {
        run.now += Duration::from_millis(200);
        if run.conn.poll_timeout().is_some_and(|at| at <= run.now) {
            run.conn.handle_timeout(run.now);
        }
        run.drain();
    }
    assert!(run.conn.is_closed(), "the timers end every connection");
    assert_eq!(run.closed_events, 1, "Closed exactly once");

    if !timers_or_sends {
        // Same bytes, all at once, no timer: the same events and writes up to the point
        // where the split run's timers started acting (none fired here before the end).
        let mut whole = Run::new(start, config);
        let _ = whole.feed(&stream, true);
        let split_events: Vec<_> = run
            .events
            .iter()
            .filter(|e| !matches!(e, WsEvent::Closed { .. }))
            .collect();
        let whole_events: Vec<_> = whole
            .events
            .iter()
            .filter(|e| !matches!(e, WsEvent::Closed { .. }))
            .collect();
        assert_eq!(split_events, whole_events);
        assert!(run.written.starts_with(&whole.written));
    }
});
