//! The WebSocket side of the plain subscriber loop (`--proto ws`): what a subscriber
//! connection keeps besides the SSE state (its handshake key and request, the receive
//! state of a fragmented message, client frames waiting to be written) and the sink that
//! hands every text message to the [`Checker`] and answers pings. The loop in `subscriber`
//! owns the socket; frames are parsed by [`crate::proto::ws`].

use crate::check::checker::Checker;
use crate::plain::ws_publisher::Answer;
use crate::plan::publish::WsPublishPlan;
use crate::proto::ws::{self, ServerMessage, WsReader, WsSink};

/// What the WebSocket subscribers of a run share, read-only.
#[derive(Debug)]
pub struct WsSetup {
    /// `Host` header value per target (repeated `--sub-url`).
    pub hosts: Vec<String>,
    /// Handshake path per (target, room): index `target * rooms + room`.
    pub paths: Vec<String>,
    /// Extra header lines of the handshake request.
    pub headers: Vec<String>,
    /// Set with `--publish-over ws`: publish on these connections.
    pub publish: Option<WsPublishPlan>,
}

/// The WebSocket state of one subscriber connection (boxed: SSE subscribers do not pay
/// for it).
#[derive(Debug)]
pub(crate) struct WsConn {
    /// Index of the subscriber among its thread's (publishes name their connection so).
    pub(crate) local: usize,
    /// `Sec-WebSocket-Key` of this connection.
    pub(crate) key: String,
    /// The handshake request; emptied (and freed) once answered.
    pub(crate) request: Vec<u8>,
    /// Receive state.
    pub(crate) reader: WsReader,
    /// Client frames to write (pongs, close, publishes); `out[written..]` still to go.
    pub(crate) out: Vec<u8>,
    /// Bytes of `out` already written.
    pub(crate) written: usize,
}

impl WsConn {
    /// A connection of subscriber `local` to `target`, joining `room`, with a fresh key.
    pub(crate) fn new(
        setup: &WsSetup,
        rooms: usize,
        target: usize,
        room: usize,
        local: usize,
    ) -> Self {
        let key = ws::new_key();
        let mut request = Vec::new();
        ws::encode_handshake(
            &mut request,
            &setup.hosts[target],
            &setup.paths[target * rooms + room],
            &setup.headers,
            &key,
        );
        WsConn {
            local,
            key,
            request,
            reader: WsReader::default(),
            out: Vec::new(),
            written: 0,
        }
    }

    /// Bytes waiting to be written.
    pub(crate) fn pending(&self) -> &[u8] {
        &self.out[self.written..]
    }

    /// `count` more bytes were written; the buffer is reset once all are.
    pub(crate) fn advance(&mut self, count: usize) {
        self.written += count;
        assert!(self.written <= self.out.len());
        if self.written == self.out.len() {
            self.out.clear();
            self.written = 0;
        }
    }
}

/// Receives one read's worth of messages of one subscriber.
pub(crate) struct WsDelivery<'a, 'b> {
    /// Judges room messages.
    pub(crate) checker: Checker<'a>,
    /// Where pongs go.
    pub(crate) out: &'b mut Vec<u8>,
    /// Acks and errors for the publisher of this thread.
    pub(crate) answers: &'b mut Vec<Answer>,
    /// Set when the server sent a close frame: its code.
    pub(crate) closed: Option<Option<u16>>,
}

impl WsSink for WsDelivery<'_, '_> {
    #[inline]
    fn on_text(&mut self, text: &str) {
        match ws::parse_message(text) {
            Some(ServerMessage::Message { room, data }) => {
                self.checker.on_message(room.as_bytes(), data.as_bytes());
            }
            Some(ServerMessage::Gap) => self.checker.on_gap(),
            Some(ServerMessage::Subscription) => {}
            Some(ServerMessage::Ack {
                reference: Some(reference),
            }) => self.answers.push(Answer::Ack(reference)),
            Some(ServerMessage::Error {
                reference: Some(reference),
                status,
            }) => self.answers.push(Answer::Error(reference, status)),
            Some(
                ServerMessage::Ack { reference: None }
                | ServerMessage::Error {
                    reference: None, ..
                }
                | ServerMessage::Other,
            )
            | None => self.checker.on_foreign(),
        }
    }

    fn on_binary(&mut self, _data: &[u8]) {
        self.checker.on_foreign();
    }

    fn on_ping(&mut self, payload: &[u8]) {
        self.checker.on_heartbeat();
        ws::encode_pong(self.out, payload, ws::new_mask());
    }

    fn on_pong(&mut self, _payload: &[u8]) {}

    fn on_close(&mut self, code: Option<u16>, _reason: &[u8]) {
        self.closed = Some(code);
    }
}
