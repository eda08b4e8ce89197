//! WebSocket connections on the shard's ring (issue 16, docs/PROTOCOL.md): the upgrade of
//! an HTTP/1.1 request on a WebSocket route, and the driver of its sans-IO [`WsConn`]
//! afterwards — plaintext from the pipe (plain or TLS) in, the machine's frames (and the
//! fan-out's, for a room) out through the pipe in one write, its deadline on the shard's
//! timer wheel, the close once its last frames are written.
//!
//! The HTTP/1.1 machine hands over with what it already offers a stream: once the request
//! is checked, `Connection::stream` (the SSE path's call) puts it in `Streaming` — no
//! deadline, no buffer, nothing to write, what it would read dropped — and from then on
//! every input of the connection goes to the [`WsDriver`] instead (`conn.ws` is set, and
//! the loop's entry points — receive, write done, timer, drive — ask it first). The `101`
//! is the driver's first write.
//!
//! Owns: the driver state of each WebSocket connection (its machine, what it was not yet
//! fed, an echo waiting for room, fan-out frames waiting for the write in flight). Must not
//! touch: frame parsing, close codes, keep-alive rules (the machine's), HTTP states (the
//! HTTP machine's), the pipe's ops and buffers (pipe.rs).

use super::*;
use crate::conn::ws::machine::{ECHO_MESSAGE_BYTES_MAX, MESSAGE_BYTES_MAX};
use crate::conn::ws::{
    accept, CloseCode, HandshakeError, HeaderField, OriginPolicy, SendError, UpgradeRequest,
    WsConfig, WsConn, WsEvent,
};

/// Bytes a WebSocket's receive asks for while the client sends little (an idle viewer, a
/// command): the buffer an idle connection holds while its receive is in flight.
const WS_RECV_BYTES: usize = 1024;
/// Frames of the machine's taken into one write (its queue holds at most
/// `TRANSMIT_BYTES_MAX` plus a frame; a ping flood's pongs are many small ones): the rest
/// goes in the next write.
const WS_WRITE_FRAMES_MAX: usize = ringcast_core::fanout::WRITE_FRAMES_MAX;

/// What a WebSocket connection serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum WsRoute {
    /// `GET /ws/echo` (`--ws-echo`): every message comes back.
    Echo,
}

/// One WebSocket connection's driver state (boxed in its `Conn`).
pub(super) struct WsDriver {
    machine: WsConn,
    route: WsRoute,
    /// Bytes at the front of the connection's receive buffer already fed to the machine;
    /// the rest waits for it (no receive is posted while any waits).
    fed: usize,
    /// The `101` (and, for a room, nothing else: the fan-out writes its `subscribed`), the
    /// head of the first write.
    preface: Option<Bytes>,
    /// An echo the machine's write queue had no room for: sent once a write took the
    /// queue; nothing more is fed meanwhile.
    held: Option<WsEvent>,
    /// Fan-out frames that came while a write was in flight: the next write carries them.
    fanout_frames: Vec<Bytes>,
    /// The write in flight carries fan-out frames: their subscription's write is done
    /// when it completes.
    write_carries_fanout: bool,
    /// The machine is over: close once its last frames are written.
    closed: bool,
    /// Upgraded from TLS (the metrics' transport label).
    tls: bool,
    /// What the next receive asks for: more after a receive that filled its room.
    recv_room: usize,
}

impl WsDriver {
    fn new(now: Instant, config: WsConfig, route: WsRoute, response: Bytes, tls: bool) -> Self {
        Self {
            machine: WsConn::new(now, config),
            route,
            fed: 0,
            preface: Some(response),
            held: None,
            fanout_frames: Vec::new(),
            write_carries_fanout: false,
            closed: false,
            tls,
            recv_room: WS_RECV_BYTES,
        }
    }

    /// The deadline the connection's timer must be at.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        self.machine.poll_timeout()
    }

    /// Whether the connection was upgraded from TLS.
    pub(super) fn tls(&self) -> bool {
        self.tls
    }

    /// Answers one event of the machine's; returns it back if it must wait for room in
    /// the write queue.
    fn on_event(&mut self, event: WsEvent) -> Option<WsEvent> {
        let sent = match (&self.route, &event) {
            (_, WsEvent::Closed { .. }) => {
                self.closed = true;
                return None;
            }
            (WsRoute::Echo, WsEvent::Text(text)) => self.machine.send_text(text),
            (WsRoute::Echo, WsEvent::Binary(data)) => self.machine.send_binary(data),
        };
        match sent {
            Err(SendError::Full) => Some(event),
            // Closing: nothing more may be sent, and nothing is owed.
            Err(SendError::Closing) | Ok(()) => None,
        }
    }
}

/// The `101` for an upgrade request's head (its bytes as received; the HTTP machine parsed
/// it already), or why it is refused.
fn upgrade_response(head: &[u8], origins: &OriginPolicy) -> Result<Bytes, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; crate::http::h1::HEADERS_MAX];
    let mut request = httparse::Request::new(&mut headers);
    let parsed = matches!(request.parse(head), Ok(httparse::Status::Complete(_)));
    debug_assert!(parsed, "the HTTP machine handed out a complete head");
    let fields: Vec<HeaderField<'_>> = request.headers.iter().map(HeaderField::from).collect();
    let upgrade = UpgradeRequest {
        method: request.method.unwrap_or(""),
        version: request.version.unwrap_or(0),
        headers: &fields,
    };
    accept(&upgrade, origins)
}

impl Shard {
    /// A request on a WebSocket route, routed and authorized: checks the handshake and
    /// upgrades, or refuses with the handshake's status and reason.
    pub(super) fn ws_open(
        &mut self,
        now: Instant,
        slot: u32,
        route: WsRoute,
        head: &[u8],
    ) -> std::io::Result<()> {
        let Some(conn) = self.conn(slot) else {
            return Ok(());
        };
        let response = if conn.pipe.is_virtual() {
            // HTTP/2 and HTTP/3 would need RFC 8441 / 9220 (not yet): the companion's
            // translation is not an upgrade.
            Err(HandshakeError::NotHttp11)
        } else {
            upgrade_response(head, &OriginPolicy::Any)
        };
        let response = match response {
            Ok(response) => response,
            Err(refused) => {
                let refusal = Refusal {
                    status: refused.status(),
                    reason: refused.to_string(),
                    extra: refused.extra_headers(),
                };
                self.count_refusal(RefusalReason::of_parse(&refusal));
                return self.refuse(slot, &refusal);
            }
        };
        let Some(conn) = self.conn(slot) else {
            return Ok(());
        };
        if conn.http.buffered() != 0 {
            // RFC 6455 §4.1: the client waits for the 101 before it sends a frame.
            let refusal = Refusal {
                status: 400,
                reason: "data sent before the handshake's answer".into(),
                extra: "",
            };
            self.count_refusal(RefusalReason::BadRequest);
            return self.refuse(slot, &refusal);
        }
        self.ws_upgrade(now, slot, route, response)
    }

    /// Takes the connection out of the HTTP machine's hands (it streams: no deadline, no
    /// buffer, nothing to write) and gives it to a [`WsDriver`], whose first write is the
    /// `101`.
    fn ws_upgrade(
        &mut self,
        now: Instant,
        slot: u32,
        route: WsRoute,
        response: Bytes,
    ) -> std::io::Result<()> {
        let ws = self.shared.config.ws;
        let message_bytes_max = match route {
            WsRoute::Echo => ECHO_MESSAGE_BYTES_MAX,
        };
        let config = WsConfig {
            message_bytes_max,
            ping_interval: ws.ping_interval,
            pong_timeout: ws.pong_timeout,
            ..WsConfig::default()
        };
        let Some(conn) = slot_mut(&mut self.conns, slot) else {
            return Ok(());
        };
        debug_assert!(conn.http.awaits_answer(), "upgraded in answer to a request");
        conn.http.stream();
        conn.recv = Vec::new();
        let tls = conn.pipe.is_tls();
        conn.ws = Some(Box::new(WsDriver::new(now, config, route, response, tls)));
        self.shared.figures[self.index].websocket_opened(tls);
        tracing::trace!(shard = self.index, conn = slot, tls, "websocket open");
        self.ws_pump(now, slot)
    }

    /// Moves a WebSocket connection on after any input: feeds the machine what waits,
    /// answers its events, starts the next write, closes once the machine is over and its
    /// last frames are out, then puts the timer on the machine's deadline and posts the
    /// receive it wants.
    pub(super) fn ws_pump(&mut self, now: Instant, slot: u32) -> std::io::Result<()> {
        self.ws_feed(now, slot);
        self.ws_flush(slot)?;
        let Some(conn) = self.conn(slot) else {
            return Ok(());
        };
        if conn.closing {
            return Ok(());
        }
        let Some(ws) = conn.ws.as_deref_mut() else {
            return Ok(());
        };
        if ws.closed && !conn.pipe.writing() && ws.machine.transmit_bytes() == 0 {
            // RFC 6455 §7.1.1: the server closes the TCP connection first.
            return self.begin_close(slot);
        }
        self.sync_timer(slot);
        self.ws_post_recv(slot)
    }

    /// Feeds the machine the received bytes it has not taken, answering its events, until
    /// everything is taken or it stops taking (an event waits for room, or its write queue
    /// is over its bound: the rest waits for a write).
    fn ws_feed(&mut self, now: Instant, slot: u32) {
        let Some(conn) = slot_mut(&mut self.conns, slot) else {
            return;
        };
        let Some(ws) = conn.ws.as_deref_mut() else {
            return;
        };
        loop {
            if let Some(event) = ws.held.take().or_else(|| ws.machine.poll_event()) {
                ws.held = ws.on_event(event);
                if ws.held.is_some() {
                    break;
                }
                continue;
            }
            if ws.fed == conn.recv.len() {
                break;
            }
            let taken = ws.machine.handle_bytes(now, &conn.recv[ws.fed..]);
            ws.fed += taken;
            if taken == 0 {
                // An event waits (answered next round), or the write queue is over its
                // bound: a write must take it first.
                let Some(event) = ws.machine.poll_event() else {
                    break;
                };
                ws.held = ws.on_event(event);
                if ws.held.is_some() {
                    break;
                }
            }
        }
        if ws.fed == conn.recv.len() {
            ws.fed = 0;
            conn.recv.clear();
            if conn.recv.capacity() > 4 * ws.recv_room {
                // A burst's buffer is not kept by an idle connection.
                conn.recv = Vec::new();
            }
        }
    }

    /// Starts the next write of a WebSocket connection unless one is in flight: the
    /// `101` first, then the machine's frames, then fan-out frames that waited (dropped
    /// once the machine sent its close: nothing may follow it).
    fn ws_flush(&mut self, slot: u32) -> std::io::Result<()> {
        let Some(conn) = slot_mut(&mut self.conns, slot) else {
            return Ok(());
        };
        if conn.closing || conn.pipe.writing() {
            return Ok(());
        }
        let Some(ws) = conn.ws.as_deref_mut() else {
            return Ok(());
        };
        let mut frames = self.frame_vecs.pop().unwrap_or_default();
        frames.extend(ws.preface.take());
        while frames.len() < WS_WRITE_FRAMES_MAX {
            let Some(frame) = ws.machine.poll_transmit() else {
                break;
            };
            frames.push(frame);
        }
        if ws.machine.is_open() {
            ws.write_carries_fanout = !ws.fanout_frames.is_empty();
            frames.append(&mut ws.fanout_frames);
        } else {
            ws.fanout_frames.clear();
        }
        if frames.is_empty() {
            self.recycle_frames(frames);
            return Ok(());
        }
        // Hand a consumed echo its room now that the queue is taken.
        let retry = ws.held.is_some();
        self.start_write(slot, &mut frames)?;
        self.recycle_frames(frames);
        if retry {
            if let Some(ws) = slot_mut(&mut self.conns, slot).and_then(|c| c.ws.as_deref_mut()) {
                if let Some(event) = ws.held.take() {
                    ws.held = ws.on_event(event);
                }
            }
        }
        Ok(())
    }

    /// Posts the receive a WebSocket connection wants: none while the machine has bytes
    /// it has not taken, an echo waits, or the machine is over.
    pub(super) fn ws_post_recv(&mut self, slot: u32) -> std::io::Result<()> {
        let Some(conn) = slot_mut(&mut self.conns, slot) else {
            return Ok(());
        };
        let Some(ws) = conn.ws.as_deref() else {
            return Ok(());
        };
        if conn.closing
            || conn.pipe.receiving()
            || ws.closed
            || ws.held.is_some()
            || !conn.recv.is_empty()
        {
            return Ok(());
        }
        let into = RecvInto::Request { room: ws.recv_room };
        let key = conn.key(slot).to_word();
        conn.pipe
            .post_recv(&mut self.ring, key, &mut conn.recv, into);
        Ok(())
    }

    /// What a WebSocket connection's receive brought (the pipe already decrypted it).
    pub(super) fn ws_received(
        &mut self,
        now: Instant,
        slot: u32,
        received: Received,
    ) -> std::io::Result<()> {
        match received {
            Received::Data { closed, .. } => {
                if let Some(conn) = self.conn(slot) {
                    if let Some(ws) = conn.ws.as_deref_mut() {
                        // A receive that filled its room: the client sends a lot, ask more.
                        ws.recv_room = if conn.recv.len() >= ws.recv_room {
                            RECV_CHUNK
                        } else {
                            WS_RECV_BYTES
                        };
                    }
                }
                // What rustls wants to send of its own (the write path sends it too).
                self.tls_flush(slot)?;
                self.ws_pump(now, slot)?;
                if closed {
                    // TLS close_notify: the client sends nothing more.
                    return self.begin_close(slot);
                }
                Ok(())
            }
            // The client went without a close handshake (1006): nothing more to tell it.
            Received::Closed => self.begin_close(slot),
            Received::TlsFailed(err) => {
                tracing::debug!(shard = self.index, conn = slot, %err, "TLS receive failed");
                self.fail_tls(slot, RefusalReason::TlsError)
            }
            Received::Discarded { .. } | Received::Hello(_) | Received::HelloTooLarge => {
                debug_assert!(false, "a WebSocket receives plaintext after its handshake");
                self.begin_close(slot)
            }
        }
    }

    /// A write of a WebSocket connection went whole: the fan-out's frames in it are done,
    /// and the connection moves on.
    pub(super) fn ws_written(&mut self, now: Instant, slot: u32) -> std::io::Result<()> {
        let Some(ws) = slot_mut(&mut self.conns, slot).and_then(|c| c.ws.as_deref_mut()) else {
            return Ok(());
        };
        if std::mem::take(&mut ws.write_carries_fanout) {
            self.fanout.handle_write_done(now, ConnId(slot));
        }
        self.ws_pump(now, slot)
    }

    /// The connection's timer fired: the machine's keep-alive ping, pong timeout or close
    /// timeout.
    pub(super) fn ws_timeout(&mut self, now: Instant, slot: u32) -> std::io::Result<()> {
        if let Some(ws) = slot_mut(&mut self.conns, slot).and_then(|c| c.ws.as_deref_mut()) {
            ws.machine.handle_timeout(now);
        }
        self.ws_pump(now, slot)
    }

    /// The shard stops: the close handshake with 1001, then the close.
    pub(super) fn ws_drain(&mut self, now: Instant, slot: u32) -> std::io::Result<()> {
        if let Some(ws) = slot_mut(&mut self.conns, slot).and_then(|c| c.ws.as_deref_mut()) {
            ws.machine
                .send_close(now, CloseCode::GoingAway, "server shutting down");
        }
        self.ws_pump(now, slot)
    }
}

/// Room WebSockets take at most this much per message (commands, publishes).
const _: () = assert!(MESSAGE_BYTES_MAX <= ECHO_MESSAGE_BYTES_MAX);
