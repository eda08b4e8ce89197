//! WebSocket connections on the shard's ring (issue 16, docs/PROTOCOL.md): the upgrade of
//! an HTTP/1.1 request on a WebSocket route, and the driver of its sans-IO [`WsConn`]
//! afterwards — plaintext from the pipe (plain or TLS) in, the machine's frames (and the
//! fan-out's, for a room) out through the pipe in one write, its deadline on the shard's
//! timer wheel, the close once its last frames are written. Over HTTP/2 (RFC 8441) the
//! pipe is a companion's tunnel (mesh/virtual_conn.rs): the same driver, a `200` instead
//! of the `101`, the stream's DATA in place of the socket.
//!
//! The HTTP/1.1 machine hands over once the request is checked (nothing written, nothing
//! buffered after it): the [`WsDriver`] takes its place in the connection
//! (`Machine::Http` becomes `Machine::Ws`, in the same memory), and from then on every
//! input of the connection goes to the driver (the loop's entry points — receive, write
//! done, timer, drive — ask `Conn::ws` first). The `101` is the driver's first write.
//!
//! Owns: the driver state of each WebSocket connection (its machine, what it was not yet
//! fed, an echo waiting for room, fan-out frames waiting for the write in flight). Must not
//! touch: frame parsing, close codes, keep-alive rules (the machine's), HTTP states (the
//! HTTP machine's), the pipe's ops and buffers (pipe.rs).
//!
//! `ws/io.rs` holds the connection's calls from the ring and the fan-out after the upgrade
//! (receive, write done, timer, fan-out frames, drain).

use super::*;
use crate::conn::ws::machine::{ECHO_MESSAGE_BYTES_MAX, MESSAGE_BYTES_MAX};
use crate::conn::ws::{
    accept, accept_extended_connect, CloseCode, CommandRefusal, HandshakeError, HeaderField,
    Opcode, OriginPolicy, SendError, UpgradeRequest, WsConfig, WsConn, WsEvent,
};
use crate::metrics::WsTransport;
use crate::uring::ring::POOL_BUFFER_BYTES;
use crate::uring::Lease;
use std::collections::VecDeque;

/// Bytes a WebSocket's receive asks for while the client sends little (an idle viewer, a
/// command). A plain connection's such receive takes a buffer of the ring's pool once data
/// comes (`RecvInto::Pooled`: it holds none while it waits); over TLS, a tunnel, or a ring
/// without a pool, it is the buffer an idle connection holds while its receive is in flight.
pub(super) const WS_RECV_BYTES: usize = 128;
/// Control objects (answers to commands) a connection holds before it stops reading
/// commands: a client that sends commands and never reads the answers stalls itself.
const WS_ANSWERS_MAX: usize = 64;
/// Frames of the machine's taken into one write (its queue holds at most
/// `TRANSMIT_BYTES_MAX` plus a frame; a ping flood's pongs are many small ones): the rest
/// goes in the next write.
const WS_WRITE_FRAMES_MAX: usize = ringcast_core::fanout::WRITE_FRAMES_MAX;

/// The machine limits of a shard's WebSocket connections, one shared copy per route kind
/// (made once per shard from the fixed settings): each connection holds a reference.
pub(super) struct WsConfigs {
    /// For room and multiplexed connections (`MESSAGE_BYTES_MAX`).
    rooms: Arc<WsConfig>,
    /// For the echo route (`ECHO_MESSAGE_BYTES_MAX`).
    echo: Arc<WsConfig>,
}

impl WsConfigs {
    /// The configs `--ws-ping-interval` and `--ws-pong-timeout` make.
    pub(super) fn new(ws: &crate::config::WsSettings) -> Self {
        let config = |message_bytes_max| {
            Arc::new(WsConfig {
                message_bytes_max,
                ping_interval: ws.ping_interval,
                pong_timeout: ws.pong_timeout,
                ..WsConfig::default()
            })
        };
        Self {
            rooms: config(MESSAGE_BYTES_MAX),
            echo: config(ECHO_MESSAGE_BYTES_MAX),
        }
    }

    /// The config of a connection on `route`.
    fn of(&self, route: &WsRoute) -> Arc<WsConfig> {
        match route {
            WsRoute::Echo => self.echo.clone(),
            WsRoute::Room { .. } | WsRoute::Mux { .. } => self.rooms.clone(),
        }
    }
}

/// What a WebSocket connection serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum WsRoute {
    /// `GET /ws/echo` (`--ws-echo`): every message comes back.
    Echo,
    /// `GET /rooms/{room}/ws`: the room's messages from the fan-out (the room is its one
    /// subscription's); text messages are commands (ws_rooms.rs). What the upgrade
    /// carried, if anything ([`WsRoute::room`]).
    Room(Option<Box<WsCarried>>),
    /// `GET /ws`: rooms joined and left by message (or `?rooms=`); text messages are
    /// commands (ws_rooms.rs). What the upgrade carried, if anything ([`WsRoute::mux`]).
    Mux(Option<Box<WsCarried>>),
}

/// What a room or multiplexed WebSocket's upgrade carried and the connection keeps: boxed
/// apart, and only when there is any, so an anonymous viewer's route is 16 bytes (it was
/// 40 with these in place).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct WsCarried {
    /// The upgrade's token (`Authorization: Bearer` or `?token=`), for private rooms and
    /// publishes.
    token: Option<String>,
    /// A multiplexed upgrade's request head, forwarded to `--auth-url` with each subscribe
    /// (kept only when it is set).
    auth_head: Option<Box<[u8]>>,
}

impl WsCarried {
    /// `token` and `auth_head`, boxed, unless both are none.
    fn boxed(token: Option<String>, auth_head: Option<Box<[u8]>>) -> Option<Box<Self>> {
        (token.is_some() || auth_head.is_some()).then(|| Box::new(Self { token, auth_head }))
    }
}

impl WsRoute {
    /// A room WebSocket whose upgrade carried `token`.
    pub(super) fn room(token: Option<String>) -> Self {
        WsRoute::Room(WsCarried::boxed(token, None))
    }

    /// A multiplexed WebSocket whose upgrade carried `token` (and, with `--auth-url`, its
    /// request head).
    pub(super) fn mux(token: Option<String>, auth_head: Option<Box<[u8]>>) -> Self {
        WsRoute::Mux(WsCarried::boxed(token, auth_head))
    }

    /// What the upgrade carried, if anything.
    fn carried(&self) -> Option<&WsCarried> {
        match self {
            WsRoute::Echo => None,
            WsRoute::Room(carried) | WsRoute::Mux(carried) => carried.as_deref(),
        }
    }

    /// The token the upgrade carried.
    pub(super) fn token(&self) -> Option<&str> {
        self.carried().and_then(|carried| carried.token.as_deref())
    }

    /// The request head a multiplexed upgrade kept for `--auth-url`, if any.
    pub(super) fn auth_head(&self) -> Option<&[u8]> {
        self.carried()
            .and_then(|carried| carried.auth_head.as_deref())
    }
}

/// A room WebSocket's upgrade, checked and waiting for the auth callback and the fan-out's
/// admission (the HTTP machine is still answering its request meanwhile).
pub(super) struct WsUpgrade {
    /// The `101` to write first.
    pub(super) response: Bytes,
    /// The room it joins.
    pub(super) room: Arc<str>,
    /// The token it came with, for publishes.
    pub(super) token: Option<String>,
}

/// What the driver makes of one of its machine's events.
#[must_use]
enum Outcome {
    /// Answered (or nothing to answer).
    Done,
    /// The write queue has no room for the answer: the event waits for a write.
    Hold(WsEvent),
    /// A command for the shard (a room connection's text message).
    Command(String),
    /// Answered with a 400 error object (a binary message where commands are text): the
    /// shard counts it as the HTTP routes' bad requests.
    Refused,
}

/// One fan-out subscription of a WebSocket connection.
pub(super) struct WsRoom {
    /// The room it follows.
    pub(super) room: Arc<str>,
    /// Its fan-out subscriber id.
    pub(super) sub: ConnId,
    /// Where the fan-out's latest frames for it are (the fan-out gives a subscription one
    /// write at a time, and is told when it is done).
    write: RoomWrite,
}

impl WsRoom {
    /// A subscription with no frames on their way.
    pub(super) fn new(room: Arc<str>, sub: ConnId) -> Self {
        Self {
            room,
            sub,
            write: RoomWrite::Idle,
        }
    }
}

/// A WebSocket's fan-out subscriptions: a room WebSocket's one in place (no allocation of
/// its own: an idle room WebSocket is its `Conn` alone), a multiplexed connection's in a
/// vector. Reads as a slice.
pub(super) enum WsRooms {
    /// One subscription (a room WebSocket's, or a multiplexed one's first).
    One(WsRoom),
    /// Any number (none at first, for a multiplexed connection).
    Many(Vec<WsRoom>),
}

impl Default for WsRooms {
    fn default() -> Self {
        WsRooms::Many(Vec::new())
    }
}

impl std::ops::Deref for WsRooms {
    type Target = [WsRoom];

    fn deref(&self) -> &[WsRoom] {
        match self {
            WsRooms::One(room) => std::slice::from_ref(room),
            WsRooms::Many(rooms) => rooms,
        }
    }
}

impl std::ops::DerefMut for WsRooms {
    fn deref_mut(&mut self) -> &mut [WsRoom] {
        match self {
            WsRooms::One(room) => std::slice::from_mut(room),
            WsRooms::Many(rooms) => rooms,
        }
    }
}

impl WsRooms {
    /// Adds a subscription: in place if it is the only one.
    pub(super) fn push(&mut self, room: WsRoom) {
        match self {
            WsRooms::Many(rooms) if rooms.capacity() == 0 => *self = WsRooms::One(room),
            WsRooms::Many(rooms) => rooms.push(room),
            WsRooms::One(_) => {
                let WsRooms::One(first) = std::mem::take(self) else {
                    unreachable!("matched One")
                };
                *self = WsRooms::Many(vec![first, room]);
            }
        }
    }

    /// Keeps the subscriptions `keep` says yes to.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&WsRoom) -> bool) {
        match self {
            WsRooms::One(room) if !keep(room) => *self = WsRooms::default(),
            WsRooms::One(_) => {}
            WsRooms::Many(rooms) => rooms.retain(keep),
        }
    }
}

/// Where a subscription's frames from the fan-out are: kept in the subscription itself
/// (its padding), so that a connection holds no vector of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RoomWrite {
    /// None on their way: the fan-out may hand it more.
    Idle,
    /// In the driver's `fanout_frames`, behind the write in flight.
    Waiting,
    /// In the write in flight: done when it completes.
    Writing,
}

/// One WebSocket connection's driver state (in its `Conn`, in the HTTP machine's place).
pub(super) struct WsDriver {
    machine: WsConn,
    route: WsRoute,
    /// Bytes at the front of the connection's receive buffer already fed to the machine;
    /// the rest waits for it (no receive is posted while any waits). A receive takes at
    /// most `RECV_CHUNK`, so this fits a `u32`.
    fed: u32,
    /// What a connection that sends commands or messages holds, made on its first
    /// command or echo: an idle viewer holds none.
    talk: Option<Box<WsTalk>>,
    /// Its fan-out subscriptions: the route's room, or the rooms a multiplexed connection
    /// joined (at most `WS_ROOMS_PER_CONN_MAX`, with the pending ones).
    pub(super) rooms: WsRooms,
    /// Fan-out frames that came while a write was in flight: the next write carries them.
    /// A vector of the shard's pool while any wait, none (no capacity) otherwise: frames
    /// that find no write in flight go straight into one.
    fanout_frames: Vec<Bytes>,
    /// The fan-out cut a subscription: its last frames (ending with a close frame) are in
    /// `fanout_frames` or the write in flight, nothing of the fan-out's goes after them,
    /// and the connection closes once they are out.
    fanout_cut: bool,
    /// The write in flight carries the cut's close frame.
    write_ends: bool,
    /// The machine is over: close once its last frames are written.
    closed: bool,
    /// The connection closes at this instant at the latest, written or not: set when the
    /// machine is over or the fan-out cut it, so a last write a client never reads cannot
    /// hold the connection (`close_timeout` after). A [`Deadline`] of its shard's: 8 bytes
    /// where an `Instant` takes 16.
    end_by: Option<Deadline>,
    /// What it runs over (the metrics' transport label).
    transport: WsTransport,
    /// What the next receive asks for: more after a receive that filled its room.
    recv_room: u32,
    /// The pace of a multiplexed connection's subscribes: kept here, not in `talk`, so
    /// that it holds across `release_talk` (one `u32`, in the driver's padding).
    pub(super) subscribe_rate: subscribe_rate::SubscribeRate,
}

/// The part of a WebSocket's driver state only a talking client uses (boxed apart, made
/// on first use, so an idle viewer's driver stays small).
#[derive(Default)]
pub(super) struct WsTalk {
    /// An echo the machine's write queue had no room for: sent once a write took the
    /// queue; nothing more is fed meanwhile.
    held: Option<WsEvent>,
    /// Control objects to send (answers to commands, acks): written after the machine's
    /// frames; at most `WS_ANSWERS_MAX` (nothing more is fed meanwhile) plus one per
    /// publish in flight.
    answers: VecDeque<Bytes>,
    /// Publishes waiting for their owner shard's answer, by the reply index they carry
    /// (grown on first use, at most `WS_PUBLISHES_IN_FLIGHT_MAX` places).
    pub(super) publishes: Vec<Option<super::ws_rooms::PublishWait>>,
    /// Rooms a multiplexed connection asked for and has not joined yet: `--auth-url` has
    /// not decided, or (cluster mode) the room's stream is being read in on this node.
    pub(super) pending_rooms: Vec<Arc<str>>,
}

impl WsDriver {
    /// Its talking part, made now if it has none yet.
    pub(super) fn talk(&mut self) -> &mut WsTalk {
        self.talk.get_or_insert_with(Box::default)
    }

    /// Rooms a multiplexed connection asked for and has not joined yet.
    pub(super) fn pending_rooms(&self) -> &[Arc<str>] {
        self.talk.as_ref().map_or(&[], |talk| &talk.pending_rooms)
    }

    /// Whether an echo waits for room in the write queue.
    fn holds_event(&self) -> bool {
        self.talk.as_ref().is_some_and(|talk| talk.held.is_some())
    }

    /// Drops the talking part once it holds nothing (a multiplexed viewer after its
    /// subscribes were answered goes back to idle size).
    fn release_talk(&mut self) {
        if self.talk.as_deref().is_some_and(|talk| {
            talk.held.is_none()
                && talk.answers.is_empty()
                && talk.pending_rooms.is_empty()
                && talk.publishes.iter().all(Option::is_none)
        }) {
            self.talk = None;
        }
    }

    /// The echo that waited for room, taken.
    fn take_held(&mut self) -> Option<WsEvent> {
        self.talk.as_mut().and_then(|talk| talk.held.take())
    }

    fn new(now: Instant, config: Arc<WsConfig>, route: WsRoute, transport: WsTransport) -> Self {
        Self {
            machine: WsConn::new(now, config),
            route,
            fed: 0,
            talk: None,
            rooms: WsRooms::default(),
            fanout_frames: Vec::new(),
            fanout_cut: false,
            write_ends: false,
            closed: false,
            end_by: None,
            transport,
            recv_room: WS_RECV_BYTES as u32,
            subscribe_rate: Default::default(),
        }
    }

    /// The deadline the connection's timer must be at (its shard started at `origin`).
    pub(super) fn poll_timeout(&self, origin: Instant) -> Option<Instant> {
        let end_by = self.end_by.map(|end| end.at(origin));
        if self.closed {
            return end_by;
        }
        match (self.machine.poll_timeout(), end_by) {
            (Some(machine), Some(end)) => Some(machine.min(end)),
            (machine, end) => machine.or(end),
        }
    }

    /// The connection must close by `now` plus the close timeout at the latest (its shard
    /// started at `origin`).
    fn end_soon(&mut self, now: Instant, origin: Instant) {
        let end = Deadline::new(origin, now + self.machine.config().close_timeout);
        self.end_by = Some(self.end_by.map_or(end, |at| at.min(end)));
    }

    /// What the connection runs over.
    pub(super) fn transport(&self) -> WsTransport {
        self.transport
    }

    /// The route it serves.
    pub(super) fn route(&self) -> &WsRoute {
        &self.route
    }

    /// Queues a control object (a text frame) after the machine's frames.
    pub(super) fn answer(&mut self, json: &str) {
        if self.machine.is_open() {
            self.talk()
                .answers
                .push_back(crate::conn::ws::frame::encode_frame(
                    Opcode::Text,
                    json.as_bytes(),
                ));
        }
    }

    /// Handles one event of the machine's.
    fn on_event(&mut self, now: Instant, origin: Instant, event: WsEvent) -> Outcome {
        let sent = match (&self.route, event) {
            (_, WsEvent::Closed { .. }) => {
                self.closed = true;
                self.end_soon(now, origin);
                return Outcome::Done;
            }
            (WsRoute::Echo, event @ WsEvent::Text(_))
            | (WsRoute::Echo, event @ WsEvent::Binary(_)) => {
                let sent = match &event {
                    WsEvent::Text(text) => self.machine.send_text(text),
                    WsEvent::Binary(data) => self.machine.send_binary(data),
                    WsEvent::Closed { .. } => unreachable!("matched above"),
                };
                (sent, event)
            }
            (WsRoute::Room { .. } | WsRoute::Mux { .. }, WsEvent::Text(text)) => {
                return Outcome::Command(text)
            }
            (WsRoute::Room { .. } | WsRoute::Mux { .. }, WsEvent::Binary(_)) => {
                self.answer(&CommandRefusal::binary().to_json());
                return Outcome::Refused;
            }
        };
        match sent {
            (Err(SendError::Full), event) => Outcome::Hold(event),
            // Closing: nothing more may be sent, and nothing is owed.
            (Err(SendError::Closing) | Ok(()), _) => Outcome::Done,
        }
    }

    /// Whether commands must wait: answers are piling up (the client does not read).
    fn answers_full(&self) -> bool {
        self.talk
            .as_ref()
            .is_some_and(|talk| talk.answers.len() >= WS_ANSWERS_MAX)
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

/// The `200` for an RFC 8441 extended CONNECT, as the companion translated it to HTTP/1.1
/// bytes (the head as received), or why it is refused.
fn extended_connect_response(head: &[u8], origins: &OriginPolicy) -> Result<Bytes, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; crate::http::h1::HEADERS_MAX];
    let mut request = httparse::Request::new(&mut headers);
    let parsed = matches!(request.parse(head), Ok(httparse::Status::Complete(_)));
    debug_assert!(parsed, "the HTTP machine handed out a complete head");
    let fields: Vec<HeaderField<'_>> = request.headers.iter().map(HeaderField::from).collect();
    accept_extended_connect(&fields, origins)
}

impl Shard {
    /// A request on the echo route: checks the handshake and upgrades, or refuses.
    pub(super) fn ws_open_echo(
        &mut self,
        now: Instant,
        slot: u32,
        head: &[u8],
    ) -> std::io::Result<()> {
        match self.ws_handshake(slot, head)? {
            Some(response) => self.ws_upgrade(now, slot, WsRoute::Echo, response, None),
            None => Ok(()),
        }
    }

    /// Checks a request on a WebSocket route: the `101` to write, or `None` when it was
    /// refused (with the handshake's status, reason and headers).
    pub(super) fn ws_handshake(
        &mut self,
        slot: u32,
        head: &[u8],
    ) -> std::io::Result<Option<Bytes>> {
        let Some(conn) = slot_mut(&mut self.conns, slot) else {
            return Ok(None);
        };
        let response = if conn.pipe.is_tunnel() {
            // An HTTP/2 extended CONNECT (RFC 8441), answered `200` (companion/ws_tunnel.rs).
            extended_connect_response(head, &self.shared.config.ws.origins)
        } else if conn.pipe.is_virtual() {
            // A GET over HTTP/2 or HTTP/3 is no upgrade (HTTP/3's RFC 9220: not yet).
            Err(HandshakeError::NotHttp11)
        } else {
            upgrade_response(head, &self.shared.config.ws.origins)
        };
        let refusal = match response {
            Err(refused) => Refusal {
                status: refused.status(),
                reason: refused.to_string(),
                extra: refused.extra_headers(),
            },
            // RFC 6455 §4.1: the client waits for the 101 before it sends a frame.
            Ok(_) if conn.http().is_some_and(|http| http.buffered() != 0) => Refusal {
                status: 400,
                reason: "data sent before the handshake's answer".into(),
                extra: "",
            },
            Ok(response) => return Ok(Some(response)),
        };
        self.count_refusal(RefusalReason::of_parse(&refusal));
        self.refuse(slot, &refusal)?;
        Ok(None)
    }

    /// Takes the connection out of the HTTP machine's hands (it streams: no deadline, no
    /// buffer, nothing to write) and gives it to a [`WsDriver`], whose first write is the
    /// `101`.
    pub(super) fn ws_upgrade(
        &mut self,
        now: Instant,
        slot: u32,
        route: WsRoute,
        response: Bytes,
        room: Option<WsRoom>,
    ) -> std::io::Result<()> {
        let config = self.ws_configs.of(&route);
        let Some(conn) = slot_mut(&mut self.conns, slot) else {
            return Ok(());
        };
        // The upgrade drops the HTTP state: it must hold nothing that needs releasing.
        debug_assert!(
            conn.http_driver().is_some_and(|h| h.http.awaits_answer()
                && h.sub.is_none()
                && h.pending.is_none()
                && h.ws_upgrade.is_none()),
            "upgraded in answer to a request, holding nothing of HTTP's"
        );
        conn.recv = Vec::new();
        let transport = match (conn.pipe.is_tls(), conn.pipe.is_virtual()) {
            (true, _) => WsTransport::Tls,
            (false, true) => WsTransport::H2,
            (false, false) => WsTransport::Http1,
        };
        debug_assert!(!conn.pipe.writing(), "nothing written before the 101");
        let mut driver = WsDriver::new(now, config, route, transport);
        if let Some(room) = room {
            // In place: a room WebSocket follows its route's room only.
            driver.rooms = WsRooms::One(room);
        }
        // The HTTP machine's place is the driver's (it had nothing left to say: the request
        // was checked, nothing was written or buffered after it).
        conn.machine = Machine::Ws(driver);
        self.shared.figures[self.index].websocket_opened(transport);
        tracing::trace!(
            shard = self.index,
            conn = slot,
            ?transport,
            "websocket open"
        );
        // The `101` (the `200` of an HTTP/2 extended CONNECT; for a room, nothing else: the
        // fan-out writes its `subscribed`) is the first write, started now: the driver keeps
        // no place for it.
        self.ws_flush_with(slot, Some(response), &mut Vec::new())?;
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
        let Machine::Ws(ws) = &mut conn.machine else {
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
    /// everything is taken or it stops taking (an event waits for room, its write queue is
    /// over its bound, or answers pile up: the rest waits for a write).
    fn ws_feed(&mut self, now: Instant, slot: u32) {
        let origin = self.origin;
        loop {
            let Some(conn) = slot_mut(&mut self.conns, slot).filter(|c| !c.closing) else {
                return;
            };
            let Machine::Ws(ws) = &mut conn.machine else {
                return;
            };
            let event = match ws.take_held().or_else(|| ws.machine.poll_event()) {
                Some(event) => event,
                None => {
                    let fed = ws.fed as usize;
                    if fed == conn.recv.len() || ws.answers_full() {
                        break;
                    }
                    let taken = ws.machine.handle_bytes(now, &conn.recv[fed..]);
                    ws.fed = u32::try_from(fed + taken).expect("a receive buffer under 4 GiB");
                    if taken != 0 {
                        continue;
                    }
                    // An event waits, or the write queue is over its bound: a write must
                    // take it first.
                    match ws.machine.poll_event() {
                        Some(event) => event,
                        None => break,
                    }
                }
            };
            match ws.on_event(now, origin, event) {
                Outcome::Done => {}
                Outcome::Hold(event) => {
                    ws.talk().held = Some(event);
                    break;
                }
                Outcome::Command(text) => self.ws_command(now, slot, &text),
                Outcome::Refused => self.count_refusal(RefusalReason::BadRequest),
            }
        }
        let Some(conn) = slot_mut(&mut self.conns, slot) else {
            return;
        };
        let Machine::Ws(ws) = &mut conn.machine else {
            return;
        };
        if ws.fed as usize == conn.recv.len() {
            ws.fed = 0;
            conn.recv.clear();
            if conn.recv.capacity() > 4 * ws.recv_room as usize {
                // A burst's buffer is not kept by an idle connection.
                conn.recv = Vec::new();
            }
        }
    }

    /// Starts the next write of a WebSocket connection unless one is in flight: the
    /// `101` first, then the machine's frames, then fan-out frames that waited (dropped
    /// once the machine sent its close: nothing may follow it).
    fn ws_flush(&mut self, slot: u32) -> std::io::Result<()> {
        self.ws_flush_with(slot, None, &mut Vec::new())
    }

    /// [`Self::ws_flush`], with `preface` (the `101`) at the head of the write and
    /// `fanout` (frames the fan-out just handed over, taken) at its end.
    fn ws_flush_with(
        &mut self,
        slot: u32,
        preface: Option<Bytes>,
        fanout: &mut Vec<Bytes>,
    ) -> std::io::Result<()> {
        let Some(conn) = slot_mut(&mut self.conns, slot) else {
            fanout.clear();
            return Ok(());
        };
        if conn.closing || conn.pipe.writing() {
            debug_assert!(
                conn.closing || fanout.is_empty(),
                "fan-out frames wait in the driver while a write is in flight"
            );
            fanout.clear();
            return Ok(());
        }
        let Machine::Ws(ws) = &mut conn.machine else {
            fanout.clear();
            return Ok(());
        };
        let mut frames = self.frame_vecs.pop().unwrap_or_default();
        frames.extend(preface);
        while frames.len() < WS_WRITE_FRAMES_MAX {
            let Some(frame) = ws.machine.poll_transmit() else {
                break;
            };
            frames.push(frame);
        }
        debug_assert!(
            ws.rooms.iter().all(|room| room.write != RoomWrite::Writing),
            "no write in flight"
        );
        if ws.machine.is_open() {
            if let Some(talk) = ws.talk.as_deref_mut() {
                frames.extend(talk.answers.drain(..));
            }
            ws.release_talk();
            if !ws.fanout_frames.is_empty() || !fanout.is_empty() {
                if frames.is_empty() {
                    // The waiting frames' vector is the write's.
                    std::mem::swap(&mut frames, &mut ws.fanout_frames);
                } else {
                    frames.append(&mut ws.fanout_frames);
                }
                frames.append(fanout);
                for room in ws.rooms.iter_mut() {
                    if room.write == RoomWrite::Waiting {
                        room.write = RoomWrite::Writing;
                    }
                }
                ws.write_ends = ws.fanout_cut;
            }
        } else {
            // Nothing may follow the machine's close frame.
            if let Some(talk) = ws.talk.as_deref_mut() {
                talk.answers.clear();
            }
            ws.fanout_frames.clear();
            fanout.clear();
            for room in ws.rooms.iter_mut() {
                room.write = RoomWrite::Idle;
            }
        }
        // Nothing waits any more: the vector goes back to the shard's pool.
        let spare = std::mem::take(&mut ws.fanout_frames);
        if frames.is_empty() {
            self.recycle_frames(spare);
            self.recycle_frames(frames);
            return Ok(());
        }
        // Hand a consumed echo its room now that the queue is taken.
        let retry = ws.holds_event();
        self.recycle_frames(spare);
        self.start_write(slot, &mut frames)?;
        self.recycle_frames(frames);
        if retry {
            if let Some(ws) = slot_mut(&mut self.conns, slot).and_then(|c| c.ws_mut()) {
                if let Some(event) = ws.take_held() {
                    match ws.on_event(self.now, self.origin, event) {
                        Outcome::Hold(event) => ws.talk().held = Some(event),
                        Outcome::Done => {}
                        Outcome::Command(_) | Outcome::Refused => {
                            unreachable!("only an echo is held")
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

mod io;
pub(super) mod subscribe_rate;

#[cfg(test)]
mod tests;
