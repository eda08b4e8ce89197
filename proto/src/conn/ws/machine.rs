//! `WsConn`: one WebSocket connection after the handshake, sans IO (quinn's shape). The
//! driver hands it received bytes and `now`; it hands back events (complete, validated
//! messages; the end), frames to write, and the next deadline.
//!
//! Owns: the frame parser state, the message being reassembled, the close handshake, the
//! keep-alive (ping after `ping_interval` without a received byte, close 1001 when
//! `pong_timeout` more passes) and the close timeout, and a bounded queue of frames to
//! write. Must not touch sockets, the clock, rooms or JSON commands (protocol.rs): a room
//! message's frame comes in already encoded ([`WsConn::send_frame`]).
//!
//! Bounds: the machine holds at most one message (`message_bytes_max`), one control payload
//! (125 bytes) and one frame header (14 bytes) of received data; [`WsConn::handle_bytes`]
//! stops consuming while an event waits to be polled or the write queue is over
//! `transmit_bytes_max`, so the driver's own receive buffer is the only other place bytes
//! wait (and the driver stops reading the socket while it holds unconsumed bytes). The write
//! queue holds at most `transmit_bytes_max` plus one frame.

use super::frame::{
    self, encode_close, encode_close_empty, encode_frame, parse_close_payload, parse_header,
    CloseCode, FrameHeader, HeaderError, Opcode, CONTROL_PAYLOAD_BYTES_MAX, FRAME_HEADER_BYTES_MAX,
};
use super::utf8::Utf8Progress;
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest message a room connection takes, in bytes (commands and publishes are small).
pub const MESSAGE_BYTES_MAX: usize = 64 * 1024;
/// Largest message the echo route takes (Autobahn 9.* sends up to 16 MiB).
pub const ECHO_MESSAGE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Default write queue bound, in bytes: past it the machine stops reading (a client that
/// floods pings without reading the pongs stalls itself, not the server).
pub const TRANSMIT_BYTES_MAX: usize = 64 * 1024;
/// Default time without a received byte before the server pings.
pub const PING_INTERVAL_DEFAULT: Duration = Duration::from_secs(30);
/// Default time after that ping, still without a received byte, before the server closes
/// with 1001.
pub const PONG_TIMEOUT_DEFAULT: Duration = Duration::from_secs(15);
/// Default time the server waits for the client's close after sending its own.
pub const CLOSE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);

/// Per-connection limits and timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsConfig {
    /// Largest message (all its fragments), in bytes; more closes with 1009.
    pub message_bytes_max: usize,
    /// Write queue bound, in bytes (see the module comment).
    pub transmit_bytes_max: usize,
    /// Quiet time before a ping.
    pub ping_interval: Duration,
    /// Quiet time after the ping before closing with 1001.
    pub pong_timeout: Duration,
    /// Wait for the peer's close after ours, then drop.
    pub close_timeout: Duration,
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            message_bytes_max: MESSAGE_BYTES_MAX,
            transmit_bytes_max: TRANSMIT_BYTES_MAX,
            ping_interval: PING_INTERVAL_DEFAULT,
            pong_timeout: PONG_TIMEOUT_DEFAULT,
            close_timeout: CLOSE_TIMEOUT_DEFAULT,
        }
    }
}

/// What the connection tells its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum WsEvent {
    /// A complete text message, valid UTF-8.
    Text(String),
    /// A complete binary message.
    Binary(Vec<u8>),
    /// The connection is over: write what [`WsConn::poll_transmit`] still holds, then close
    /// the socket. Always the last event, exactly once.
    Closed {
        /// The close code: the one both sides agreed on (ours if we closed first, the
        /// peer's if it did; 1005 for a peer close without a code), or 1006 when the
        /// connection was dropped without a close handshake (timeout).
        code: u16,
        /// The reason that went with it.
        reason: String,
        /// The close handshake completed (both sides sent close).
        clean: bool,
    },
}

/// Why a frame could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// A close frame was sent: no data may follow (§5.5.1).
    #[error("connection closing")]
    Closing,
    /// The write queue is over its bound: the reader is slow.
    #[error("write queue full")]
    Full,
}

/// Where the close handshake stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Messages flow both ways.
    Open,
    /// We sent close; the peer's data is discarded until its close arrives or `deadline`
    /// (boxed: a closing connection is rare and brief, and the state of every open one
    /// takes 32 bytes less).
    CloseSent(Box<CloseSent>),
    /// Over; [`WsEvent::Closed`] is queued or taken.
    Closed,
}

/// What a connection that sent its close waits with.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CloseSent {
    code: u16,
    reason: String,
    deadline: Instant,
    /// After a framing error the stream cannot be parsed any further: wait only for the
    /// peer to go away.
    unparsable: bool,
}

/// Where the frame parser stands.
#[derive(Debug, Clone, Copy)]
enum Frame {
    /// Reading a header: `have` bytes of `head` so far.
    Header,
    /// Reading a payload: `read` of the header's length so far.
    Payload { header: FrameHeader, read: u64 },
}

/// The message being reassembled from fragments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Message {
    /// No fragmented message in progress.
    None,
    /// A text message (validated as it arrives).
    Text,
    /// A binary message.
    Binary,
}

const _: () = assert!(FRAME_HEADER_BYTES_MAX <= u8::MAX as usize); // `head_have` is a u8

/// One WebSocket connection, server side, after the `101` was written.
#[derive(Debug)]
pub struct WsConn {
    /// Shared by the connections of one kind (a driver makes one per route and hands each
    /// connection a reference): 8 bytes a connection instead of the whole config.
    config: Arc<WsConfig>,
    state: State,
    frame: Frame,
    head: [u8; FRAME_HEADER_BYTES_MAX],
    /// Bytes of `head` read so far (a `u8`: 8 bytes less in every connection's state).
    head_have: u8,
    /// The data message in progress and how it started.
    message: Message,
    message_buf: Vec<u8>,
    utf8: Utf8Progress,
    /// The control frame in progress (at most 125 bytes).
    control_buf: Vec<u8>,
    events: VecDeque<WsEvent>,
    transmit: VecDeque<Bytes>,
    transmit_bytes: usize,
    /// Last time a byte arrived.
    last_receive: Instant,
    /// When the outstanding keep-alive ping was sent.
    ping_sent: Option<Instant>,
}

impl WsConn {
    /// A connection whose handshake completed at `now`; `config` is a [`WsConfig`] or a
    /// shared `Arc<WsConfig>`.
    pub fn new(now: Instant, config: impl Into<Arc<WsConfig>>) -> Self {
        let config = config.into();
        assert!(
            config.message_bytes_max > 0,
            "a message limit of 0 takes nothing"
        );
        Self {
            config,
            state: State::Open,
            frame: Frame::Header,
            head: [0; FRAME_HEADER_BYTES_MAX],
            head_have: 0,
            message: Message::None,
            message_buf: Vec::new(),
            utf8: Utf8Progress::default(),
            control_buf: Vec::new(),
            events: VecDeque::new(),
            transmit: VecDeque::new(),
            transmit_bytes: 0,
            last_receive: now,
            ping_sent: None,
        }
    }

    /// The limits this connection runs with.
    pub fn config(&self) -> &WsConfig {
        &self.config
    }

    /// Feeds received bytes; returns how many were consumed. Fewer than `data.len()` only
    /// while an event waits ([`Self::poll_event`]) or the write queue is over its bound
    /// ([`Self::poll_transmit`]): handle those and feed the rest again. After the end every
    /// byte is consumed and ignored.
    #[must_use = "unconsumed bytes must be fed again"]
    pub fn handle_bytes(&mut self, now: Instant, data: &[u8]) -> usize {
        if !data.is_empty() {
            self.last_receive = now;
            self.ping_sent = None;
        }
        let mut used = 0;
        while used < data.len() {
            if self.state == State::Closed {
                return data.len();
            }
            if matches!(&self.state, State::CloseSent(close) if close.unparsable) {
                return data.len();
            }
            if !self.events.is_empty() || self.transmit_bytes > self.config.transmit_bytes_max {
                break;
            }
            used += self.step(now, &data[used..]);
        }
        used
    }

    /// One parser step over the front of `data`; returns the bytes it took (> 0).
    fn step(&mut self, now: Instant, data: &[u8]) -> usize {
        match self.frame {
            Frame::Header => {
                let have = usize::from(self.head_have);
                let need = if have < 2 {
                    2
                } else {
                    frame::header_len([self.head[0], self.head[1]])
                };
                let take = (need - have).min(data.len());
                self.head[have..have + take].copy_from_slice(&data[..take]);
                let have = have + take;
                // At most `FRAME_HEADER_BYTES_MAX`: the copy into `head` above checked it.
                self.head_have = have as u8;
                if have >= 2 && have == frame::header_len([self.head[0], self.head[1]]) {
                    let raw = self.head;
                    self.head_have = 0;
                    match parse_header(&raw[..have]) {
                        Ok(header) => self.on_header(now, header),
                        Err(err) => self.on_header_error(now, err),
                    }
                }
                take
            }
            Frame::Payload { header, read } => {
                let left = header.payload_len - read;
                let take = usize::try_from(left).unwrap_or(usize::MAX).min(data.len());
                let chunk = &data[..take];
                let done = read + take as u64 == header.payload_len;
                self.frame = Frame::Payload {
                    header,
                    read: read + take as u64,
                };
                self.on_payload(now, header, read, chunk);
                if done {
                    self.frame = Frame::Header;
                    self.on_frame_end(now, header);
                }
                take
            }
        }
    }

    fn closing(&self) -> bool {
        !matches!(self.state, State::Open)
    }

    fn on_header(&mut self, now: Instant, header: FrameHeader) {
        if header.opcode.is_control() {
            // At most 125 bytes: reserved at once (no amplification worth the name).
            self.control_buf.reserve_exact(header.payload_len as usize);
        } else if !self.closing() {
            self.check_data_header(now, header);
        }
        self.frame = Frame::Payload { header, read: 0 };
        if header.payload_len == 0 {
            self.frame = Frame::Header;
            self.on_frame_end(now, header);
        }
    }

    /// Fragmentation rules (§5.4) and the size limit, before any payload is read. A failure
    /// still reads the frame's payload (discarded) so the peer's close can be found after it.
    fn check_data_header(&mut self, now: Instant, header: FrameHeader) {
        match (header.opcode, self.message) {
            (Opcode::Continuation, Message::None) => {
                let reason = "continuation without a message";
                return self.fail(now, CloseCode::ProtocolError, reason, false);
            }
            (Opcode::Text | Opcode::Binary, Message::Text | Message::Binary) => {
                let reason = "new message inside a fragmented one";
                return self.fail(now, CloseCode::ProtocolError, reason, false);
            }
            (Opcode::Text, Message::None) => self.message = Message::Text,
            (Opcode::Binary, Message::None) => self.message = Message::Binary,
            _ => {}
        }
        let total = self.message_buf.len() as u64 + header.payload_len;
        if total > self.config.message_bytes_max as u64 {
            self.fail(now, CloseCode::MessageTooBig, "message too big", false);
        }
    }

    fn on_header_error(&mut self, now: Instant, err: HeaderError) {
        let reason = match err {
            HeaderError::ReservedBits => "reserved bits set",
            HeaderError::ReservedOpcode => "reserved opcode",
            HeaderError::Unmasked => "client frame not masked",
            HeaderError::FragmentedControl => "fragmented control frame",
            HeaderError::ControlTooLong => "control frame over 125 bytes",
            HeaderError::BadLength => "bad payload length",
        };
        if self.closing() {
            // Already closing: nothing more to say, the peer just is not listening.
            return self.drop_now();
        }
        self.fail(now, CloseCode::ProtocolError, reason, true);
    }

    fn on_payload(&mut self, now: Instant, header: FrameHeader, offset: u64, chunk: &[u8]) {
        if header.opcode.is_control() {
            let start = self.control_buf.len();
            self.control_buf.extend_from_slice(chunk);
            debug_assert!(self.control_buf.len() <= CONTROL_PAYLOAD_BYTES_MAX);
            frame::unmask(&mut self.control_buf[start..], header.mask, offset);
            return;
        }
        if self.closing() {
            return; // data after our close is discarded (§1.4)
        }
        let start = self.message_buf.len();
        let need = start + chunk.len();
        debug_assert!(
            need <= self.config.message_bytes_max,
            "checked at the header"
        );
        if need > self.message_buf.capacity() {
            // Grow with the bytes that arrived, never on the header's word alone (a 14-byte
            // header must not make the server allocate the whole limit), doubling for
            // amortized copies but never past the limit.
            let target = need
                .max(self.message_buf.capacity() * 2)
                .min(self.config.message_bytes_max);
            self.message_buf.reserve_exact(target - start);
        }
        self.message_buf.extend_from_slice(chunk);
        frame::unmask(&mut self.message_buf[start..], header.mask, offset);
        if self.message == Message::Text && self.utf8.advance(&self.message_buf).is_err() {
            self.fail(now, CloseCode::InvalidPayload, "text is not UTF-8", false);
        }
    }

    fn on_frame_end(&mut self, now: Instant, header: FrameHeader) {
        match header.opcode {
            Opcode::Ping => {
                let payload = std::mem::take(&mut self.control_buf);
                if !self.closing() {
                    self.queue(encode_frame(Opcode::Pong, &payload));
                }
            }
            // Freed, not cleared: an idle connection's keep-alive leaves no buffer behind.
            Opcode::Pong => self.control_buf = Vec::new(),
            Opcode::Close => {
                let payload = std::mem::take(&mut self.control_buf);
                self.on_close(&payload);
            }
            Opcode::Text | Opcode::Binary | Opcode::Continuation => {
                if self.closing() || !header.fin {
                    return;
                }
                let buf = std::mem::take(&mut self.message_buf);
                let kind = std::mem::replace(&mut self.message, Message::None);
                let utf8 = std::mem::take(&mut self.utf8);
                match kind {
                    Message::Text => {
                        if utf8.finish(&buf).is_err() {
                            return self.fail(
                                now,
                                CloseCode::InvalidPayload,
                                "text is not UTF-8",
                                false,
                            );
                        }
                        match String::from_utf8(buf) {
                            Ok(text) => self.events.push_back(WsEvent::Text(text)),
                            Err(_) => {
                                debug_assert!(false, "incremental check passed a bad text");
                                self.fail(
                                    now,
                                    CloseCode::InvalidPayload,
                                    "text is not UTF-8",
                                    false,
                                )
                            }
                        }
                    }
                    Message::Binary => self.events.push_back(WsEvent::Binary(buf)),
                    Message::None => unreachable!("a data frame end always has a message"),
                }
            }
        }
    }

    fn on_close(&mut self, payload: &[u8]) {
        match std::mem::replace(&mut self.state, State::Closed) {
            State::Open => match parse_close_payload(payload) {
                Ok(close) => {
                    // Echo the peer's code (§5.5.1); none for none.
                    self.queue(match close.code {
                        Some(code) => encode_close(code, ""),
                        None => encode_close_empty(),
                    });
                    self.finish(close.code.unwrap_or(1005), close.reason, true);
                }
                Err(err) => {
                    let code = err.close_code();
                    self.queue(encode_close(code.code(), &err.to_string()));
                    self.finish(code.code(), err.to_string(), true);
                }
            },
            State::CloseSent(close) => self.finish(close.code, close.reason, true),
            State::Closed => {}
        }
    }

    /// Fails the connection: our close frame with `code`, then wait for the peer's close.
    fn fail(&mut self, now: Instant, code: CloseCode, reason: &str, unparsable: bool) {
        debug_assert!(!self.closing());
        self.message_buf = Vec::new();
        self.message = Message::None;
        self.utf8 = Utf8Progress::default();
        self.start_close(now, code.code(), reason, unparsable);
    }

    fn start_close(&mut self, now: Instant, code: u16, reason: &str, unparsable: bool) {
        self.queue(encode_close(code, reason));
        self.state = State::CloseSent(Box::new(CloseSent {
            code,
            reason: reason.to_owned(),
            deadline: now + self.config.close_timeout,
            unparsable,
        }));
    }

    /// Over without a handshake (timeout, or garbage while closing).
    fn drop_now(&mut self) {
        let reason = match std::mem::replace(&mut self.state, State::Closed) {
            State::CloseSent(close) => close.reason,
            _ => String::new(),
        };
        self.finish(1006, reason, false);
    }

    fn finish(&mut self, code: u16, reason: String, clean: bool) {
        debug_assert_eq!(self.state, State::Closed);
        self.message_buf = Vec::new();
        self.control_buf = Vec::new();
        self.message = Message::None;
        self.events.push_back(WsEvent::Closed {
            code,
            reason,
            clean,
        });
    }

    fn queue(&mut self, frame: Bytes) {
        self.transmit_bytes += frame.len();
        self.transmit.push_back(frame);
    }

    /// The next event, if any. Poll until `None` after each `handle_*` call.
    pub fn poll_event(&mut self) -> Option<WsEvent> {
        let event = self.events.pop_front();
        if self.events.is_empty() {
            // An empty queue holds no memory (an idle connection holds none).
            self.events = VecDeque::new();
        }
        event
    }

    /// The next frame to write, if any (a close frame is the last one ever).
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        let frame = self.transmit.pop_front()?;
        self.transmit_bytes -= frame.len();
        if self.transmit.is_empty() {
            // An empty queue holds no memory (an idle connection's keep-alive leaves none).
            self.transmit = VecDeque::new();
        }
        Some(frame)
    }

    /// Bytes waiting in the write queue.
    pub fn transmit_bytes(&self) -> usize {
        self.transmit_bytes
    }

    /// Bytes of memory the machine holds for received data (the capacity of the message
    /// and control buffers, and the header bytes): at most the message limit plus 125 plus 14.
    pub fn buffered_bytes(&self) -> usize {
        self.message_buf.capacity() + self.control_buf.capacity() + usize::from(self.head_have)
    }

    /// Messages may still be sent: no close frame was queued. A shard that writes room
    /// frames beside [`Self::poll_transmit`] (straight from history, coalesced as for SSE)
    /// must stop when this turns false, so the close frame stays the last one written.
    pub fn is_open(&self) -> bool {
        !self.closing()
    }

    /// The connection is over (the `Closed` event is queued or was taken).
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The next time [`Self::handle_timeout`] must run, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Open => Some(match self.ping_sent {
                None => self.last_receive + self.config.ping_interval,
                Some(sent) => sent + self.config.pong_timeout,
            }),
            State::CloseSent(close) => Some(close.deadline),
            State::Closed => None,
        }
    }

    /// Runs the timers due at `now`: the keep-alive ping, the pong timeout (close 1001),
    /// the close timeout (drop).
    pub fn handle_timeout(&mut self, now: Instant) {
        match &self.state {
            State::Open => match self.ping_sent {
                None if now >= self.last_receive + self.config.ping_interval => {
                    self.queue(encode_frame(Opcode::Ping, b"ringcast"));
                    self.ping_sent = Some(now);
                }
                Some(sent) if now >= sent + self.config.pong_timeout => {
                    self.start_close(now, CloseCode::GoingAway.code(), "ping timeout", false);
                }
                _ => {}
            },
            State::CloseSent(close) if now >= close.deadline => self.drop_now(),
            _ => {}
        }
    }

    /// Queues a frame encoded elsewhere (a room message from [`super::encode_room_message`],
    /// shared by every viewer). Refused once closing, or when the queue is over its bound
    /// (an empty queue takes any one frame, so one message always fits).
    pub fn send_frame(&mut self, frame: Bytes) -> Result<(), SendError> {
        if self.closing() {
            return Err(SendError::Closing);
        }
        if self.transmit_bytes > 0
            && self.transmit_bytes + frame.len() > self.config.transmit_bytes_max
        {
            return Err(SendError::Full);
        }
        self.queue(frame);
        Ok(())
    }

    /// Queues a text message (a control object, an echo).
    pub fn send_text(&mut self, text: &str) -> Result<(), SendError> {
        self.send_frame(encode_frame(Opcode::Text, text.as_bytes()))
    }

    /// Queues a binary message (the echo route).
    pub fn send_binary(&mut self, data: &[u8]) -> Result<(), SendError> {
        self.send_frame(encode_frame(Opcode::Binary, data))
    }

    /// Starts the close handshake from the server side (shutdown 1001, slow consumer 1013,
    /// policy 1008, …): our close frame, then wait for the peer's close at most
    /// `close_timeout`. Ignored when already closing.
    pub fn send_close(&mut self, now: Instant, code: CloseCode, reason: &str) {
        if !self.closing() {
            self.fail(now, code, reason, false);
        }
    }
}

#[cfg(test)]
mod memory_tests {
    //! What an idle connection keeps of its queues and buffers (private fields: checked here,
    //! beside them).

    use super::*;

    /// A client frame (masked with a zero key) of `opcode` carrying `payload`.
    fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        assert!(payload.len() < 126);
        let mut frame = vec![0x80 | opcode, 0x80 | payload.len() as u8, 0, 0, 0, 0];
        frame.extend_from_slice(payload);
        frame
    }

    #[test]
    fn an_idle_connection_keeps_no_queue_or_buffer_after_a_keep_alive_and_a_message() {
        let now = Instant::now();
        let mut conn = WsConn::new(now, WsConfig::default());
        let later = now + PING_INTERVAL_DEFAULT;
        conn.handle_timeout(later);
        let ping = conn.poll_transmit().expect("the keep-alive ping");
        assert_eq!(ping[0], 0x89);
        assert_eq!(conn.poll_transmit(), None);
        let pong = client_frame(0xA, b"ringcast");
        assert_eq!(conn.handle_bytes(later, &pong), pong.len());
        let text = client_frame(0x1, b"hi");
        assert_eq!(conn.handle_bytes(later, &text), text.len());
        assert_eq!(conn.poll_event(), Some(WsEvent::Text("hi".into())));
        assert_eq!(conn.poll_event(), None);
        assert!(conn.is_open());
        assert_eq!(conn.transmit.capacity(), 0, "write queue");
        assert_eq!(conn.events.capacity(), 0, "event queue");
        assert_eq!(conn.control_buf.capacity(), 0, "control payload");
        assert_eq!(conn.message_buf.capacity(), 0, "message");
    }
}
