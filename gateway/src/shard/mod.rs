//! One shard's event loop: its io_uring ring, listener, connections, fan-out state and
//! mailbox. Runs on one pinned thread; owns everything it touches.
//!
//! A loop turn: reap completions (accepts, reads, finished writes), drain the mailbox,
//! expire timers, hand at most `write_budget` writes from the fan-out to the ring, flush
//! outgoing mail, publish figures, then submit and sleep until a completion or the next
//! deadline. The bounded write budget is what lets publishes that arrive during a big
//! fan-out ride in the same writes (DESIGN.md §2).

pub mod accept;
mod conns;
mod deadline;
mod figures;
mod io;
mod mail;
pub mod pipe;
mod publish;
mod requests;
mod subscriptions;
mod tls_io;
mod upstreams;
mod ws;
#[cfg(test)]
mod ws_pool_tests;
mod ws_rooms;

use crate::app::admission::{RefusalReason, Rejection, REJECTIONS};
use crate::app::batch::{self, BATCH_LINES_MAX};
use crate::config::LiveSettings;
use crate::conn::http1::{self as http1_conn, Connection, Limits, Read, State as HttpState};
use crate::conn::key::{ConnKey, Serials};
use crate::conn::tls::Hello;
use crate::http::h1::{self as http1, Method, Refusal, Route};
use crate::mesh::mail::{Mail, PublishRefusal, ReplyTo, OUTBOX_MAX};
use crate::mesh::virtual_conn::{Doorbell, Transport, VirtualSink};
use crate::metrics::{Figure, TlsHandshake, ROOM_SIZE_LABELS};
use crate::runtime::clock::ShardClock;
use crate::runtime::shared::Shared;
use crate::shard::accept::{AcceptErrno, AcceptPacer};
use crate::shard::deadline::Deadline;
use crate::shard::pipe::{recycle_tls_out, Closing, Linger, Pipe, Received, RecvInto, Wrote};
use crate::uring::{Completion, Held, OpId, OpKind, Ring, LISTENER_PLAIN, LISTENER_TLS};
use bytes::Bytes;
use ringcast_core::drain::{Drain, DrainAction, Figures as DrainFigures};
use ringcast_core::event_id::{EventId, ResetReason, ResumeId};
use ringcast_core::fanout::{Action, ConnId, Fanout, FanoutError, Start};
use ringcast_core::metrics::HistogramSnapshot;
use ringcast_core::sequencer::{Routed, Sequencer};
use ringcast_core::timer_wheel::{TimerKey, TimerWheel};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes the first receive of a request asks for: a typical request head fits, and an
/// idle subscriber's connection never holds more (the buffer is freed once it streams).
const RECV_FIRST: usize = 2048;
/// Most bytes a later receive asks for at once.
const RECV_CHUNK: usize = 64 * 1024;
/// Spare write vectors kept per shard, so idle connections hold none.
const WRITE_VECS_POOLED_MAX: usize = 4096;
/// Resolution of the request/idle timer wheel.
const TIMER_TICK: Duration = Duration::from_millis(10);
/// Longest sleep in one wait, so a stop request is seen promptly.
const WAIT_MAX: Duration = Duration::from_millis(100);
/// Mail taken from each queue per turn.
const MAIL_PER_TURN: usize = 4096;
/// Extra connection slots past the limit, used only to answer 503 before closing.
const REFUSAL_SLOTS: usize = 1024;
/// How often a shard recounts its rooms by subscriber count for the metrics.
const ROOM_SIZES_PERIOD: Duration = Duration::from_secs(1);
/// Spare stamp vectors kept per shard (as the write vectors).
const STAMP_VECS_POOLED_MAX: usize = 4096;
// A write never needs more iovecs than the kernel takes at once (uring/ring/ splits past it).
const _: () = assert!(ringcast_core::fanout::WRITE_FRAMES_MAX + 2 <= crate::uring::ring::IOV_MAX);

#[derive(Debug)]
enum Pending {
    Publish {
        room: Arc<str>,
        result: Option<Result<EventId, PublishRefusal>>,
    },
    Batch {
        results: Vec<BatchLine>,
    },
    RoomInfo {
        room: Arc<str>,
        subscribers: usize,
        last_id: Option<EventId>,
        history_len: usize,
    },
}

#[derive(Debug)]
enum BatchLine {
    Waiting,
    Done(Result<EventId, String>),
}

/// What speaks on a connection: the HTTP/1.1 machine, until a WebSocket upgrade puts the
/// WebSocket driver in its place (in the same memory: an upgraded connection holds no HTTP
/// state, and an idle WebSocket is one allocation, its `Conn`).
enum Machine {
    /// The HTTP/1.1 connection machine and what only HTTP/1.1 uses (`HttpDriver`).
    Http(HttpDriver),
    /// Upgraded to a WebSocket: its driver, which takes every input of the connection
    /// (ws.rs).
    Ws(ws::WsDriver),
}

/// An HTTP/1.1 connection's state: its machine and what only a connection answering
/// HTTP/1.1 requests (an SSE stream among them) uses. It shares its place with the
/// (larger) WebSocket driver, so what lives here costs a connection nothing; a WebSocket
/// holds none of it (the upgrade drops it).
struct HttpDriver {
    /// The HTTP/1.1 connection machine (conn/http1): request states, deadlines,
    /// keep-alive, `100 Continue`, HEAD, linger, drain, the stream after its head. The shard
    /// only moves its bytes and timer.
    http: Connection,
    /// An answer waiting for other shards (a publish, a batch, a room's figures): rare, so
    /// boxed.
    pending: Option<Box<Pending>>,
    /// Replies `pending` still waits for.
    outstanding: u32,
    /// The fan-out's last frames for a subscriber it cut: close once they are written.
    close_after_write: bool,
    /// A room WebSocket's checked upgrade, waiting for auth and admission (ws_rooms.rs).
    ws_upgrade: Option<Box<ws::WsUpgrade>>,
    /// Its fan-out subscription, once it streams (SSE) or before its upgrade (a room
    /// WebSocket; the driver holds it afterwards).
    sub: Option<ConnId>,
}

impl HttpDriver {
    /// A connection about to read its first request.
    fn new(http: Connection) -> Self {
        Self {
            http,
            pending: None,
            outstanding: 0,
            close_after_write: false,
            ws_upgrade: None,
            sub: None,
        }
    }
}

struct Conn {
    serial: u32,
    /// The HTTP/1.1 machine (with what only HTTP uses), or the WebSocket driver after an
    /// upgrade ([`Conn::http`], [`Conn::http_driver`], [`Conn::ws`]).
    machine: Machine,
    /// The receive buffer of a plain connection reading a request (its bytes go to `http`
    /// at once), of a TLS connection's ClientHello (kept whole: an `h2` client is handed on
    /// with it), and a TLS connection's decrypted plaintext. While a receive into it is in
    /// flight, the ring's op holds it (and this is empty).
    recv: Vec<u8>,
    /// How the bytes travel (plain, TLS, virtual), the ops in flight and the write in
    /// progress (pipe.rs).
    pipe: Pipe,
    /// Closing: the close is on the ring (or done); completions still due only settle.
    closing: bool,
    /// The timer-wheel entry for the machine's deadline, at this instant.
    timer: Option<(TimerKey, Deadline)>,
    /// The client's address while it counts against the per-address limit.
    peer: Option<IpAddr>,
    /// Sequencing stamps of the message frames the write in flight carries.
    stamps: Vec<u64>,
}

impl Conn {
    /// A connection about to read its first request.
    fn new(serial: u32, pipe: Pipe, http: Connection) -> Self {
        Self {
            serial,
            machine: Machine::Http(HttpDriver::new(http)),
            recv: Vec::new(),
            pipe,
            closing: false,
            timer: None,
            peer: None,
            stamps: Vec::new(),
        }
    }

    /// Its HTTP/1.1 state, unless it was upgraded to a WebSocket.
    fn http_driver(&self) -> Option<&HttpDriver> {
        match &self.machine {
            Machine::Http(driver) => Some(driver),
            Machine::Ws(_) => None,
        }
    }

    /// Its HTTP/1.1 state, unless it was upgraded to a WebSocket.
    fn http_driver_mut(&mut self) -> Option<&mut HttpDriver> {
        match &mut self.machine {
            Machine::Http(driver) => Some(driver),
            Machine::Ws(_) => None,
        }
    }

    /// Its HTTP/1.1 machine, unless it was upgraded to a WebSocket.
    fn http(&self) -> Option<&Connection> {
        match &self.machine {
            Machine::Http(driver) => Some(&driver.http),
            Machine::Ws(_) => None,
        }
    }

    /// Its HTTP/1.1 machine, unless it was upgraded to a WebSocket.
    fn http_mut(&mut self) -> Option<&mut Connection> {
        match &mut self.machine {
            Machine::Http(driver) => Some(&mut driver.http),
            Machine::Ws(_) => None,
        }
    }

    /// Its WebSocket driver, once it was upgraded.
    fn ws(&self) -> Option<&ws::WsDriver> {
        match &self.machine {
            Machine::Ws(ws) => Some(ws),
            Machine::Http(_) => None,
        }
    }

    /// Its WebSocket driver, once it was upgraded.
    fn ws_mut(&mut self) -> Option<&mut ws::WsDriver> {
        match &mut self.machine {
            Machine::Ws(ws) => Some(ws),
            Machine::Http(_) => None,
        }
    }

    /// Whether it was upgraded to a WebSocket.
    fn is_websocket(&self) -> bool {
        matches!(self.machine, Machine::Ws(_))
    }

    /// The key naming this connection in `slot` (its ring ops carry it as one word).
    fn key(&self, slot: u32) -> ConnKey {
        ConnKey {
            slot,
            serial: self.serial,
        }
    }
}

/// A connection slot (boxed: the table of a shard is mostly empty slots, and a `Conn` is
/// large). Nothing the kernel uses lives in it: ops own their memory (uring/ring/).
type Slot = Option<Box<Conn>>;

// An idle WebSocket's state is its `Conn` alone, in mimalloc's 512-byte size class (issue
// 16's idle-memory bar, <= 1 KiB a connection): the driver shares the HTTP machine's place
// (and what only HTTP uses, `HttpDriver`, lives in the driver's shadow), what only a
// talking client uses is in `WsTalk` (made on first use), frames waiting behind a write
// borrow a vector of the shard's, and rare state is boxed (`Pending`, the WebSocket
// machine's close state, what an upgrade carried: `WsCarried`). mimalloc's classes here are
// 448, 512 and 640 bytes: past 512 every connection costs 128 B more. `Conn` is 496 B (the
// WebSocket side, `WsDriver`, is the larger: 328 B, beside 168 B every connection holds;
// `HttpDriver` is 192 B). The bound is the size itself, so that a field added to `Conn`,
// `HttpDriver` or `WsDriver` spends the last 16 B of the class on purpose (by moving this
// bound, at most to `CONN_CLASS_BYTES`), never the class by accident.
const CONN_BYTES_MAX: usize = 496;
/// The mimalloc size class `Conn` must stay in (see `CONN_BYTES_MAX`).
const CONN_CLASS_BYTES: usize = 512;
const _: () = assert!(CONN_BYTES_MAX <= CONN_CLASS_BYTES);
const _: () = assert!(std::mem::size_of::<Conn>() <= CONN_BYTES_MAX);

/// The connection in `slot`, borrowing only the slot table (so other fields of the shard
/// stay usable while it is held).
fn slot_mut(conns: &mut [Slot], slot: u32) -> Option<&mut Conn> {
    conns.get_mut(slot as usize).and_then(|c| c.as_deref_mut())
}

/// One shard.
pub struct Shard {
    index: usize,
    shards: usize,
    shared: Arc<Shared>,
    ring: Ring,
    listener: RawFd,
    /// The `--tls-listen` socket of this shard, when set.
    tls_listener: Option<RawFd>,
    /// The stop choreography: whether accepts are (re-)armed, when subscribers drain,
    /// when the shard exits (ringcast_core::drain).
    drain: Drain,
    /// Pacing of each listener's accept, by `LISTENER_PLAIN` / `LISTENER_TLS`.
    accept_pacers: [AcceptPacer; 2],
    /// Each listener's accept op while it is armed (to cancel it).
    accept_ops: [Option<OpId>; 2],
    fanout: Fanout,
    /// Fan-out subscriber ids, one per (connection, room) subscription (subscriptions.rs).
    subs: subscriptions::Subscriptions,
    conns: Vec<Slot>,
    free: Vec<u32>,
    live: usize,
    /// Virtual connections among `live`.
    virtual_live: usize,
    /// TLS connections among `live`.
    tls_live: usize,
    /// Spare TLS send buffers.
    tls_out_pool: Vec<Vec<u8>>,
    /// The companion's doorbell, rung once per turn after batches were pushed to sinks
    /// (virtual_conn.rs); known from the first virtual connection.
    virtual_doorbell: Option<Arc<Doorbell>>,
    conns_max: usize,
    serials: Serials,
    timers: TimerWheel<ConnKey>,
    completions: Vec<Completion>,
    scratch: Vec<Bytes>,
    /// Owner routing, replication to every shard, the outboxes and the idempotency keys of
    /// owned rooms (ringcast_core::sequencer).
    sequencer: Sequencer<ReplyTo, Mail>,
    /// The word this shard's eventfd is read into, while no read is in flight (the ring's
    /// op holds it meanwhile).
    wake_word: Option<Box<u64>>,
    wake_pending: Vec<bool>,
    frame_vecs: Vec<Vec<Bytes>>,
    bytes_written: u64,
    /// Refusals by reason ([`Rejection`]).
    rejections: [u64; REJECTIONS],
    /// The live settings in force and their generation (see `runtime::reload`); the
    /// fixed ones are `shared.config`.
    config: Arc<LiveSettings>,
    generation: u64,
    clock: ShardClock,
    /// Process-clock time at the start of the turn.
    now_unix: u64,
    /// The loop's clock at the start of the turn (for answers written outside a
    /// completion's handling, e.g. a refusal's linger deadline).
    now: Instant,
    /// Publish→write latencies recorded this turn, added to the figures at its end.
    latency_turn: HistogramSnapshot,
    stamp_scratch: Vec<u64>,
    stamp_vecs: Vec<Vec<u64>>,
    /// Bytes submitted to writes and not yet written (the admission bound).
    pending_write_bytes: usize,
    room_sizes_at: Instant,
    /// When the shard started: connections' timer deadlines count from it ([`Deadline`]).
    origin: Instant,
    /// The WebSocket machines' limits, shared by this shard's connections.
    ws_configs: ws::WsConfigs,
    /// This shard's authorization breaker and calls, when `--auth-url` is set.
    auth: Option<crate::upstream::auth::AuthShard>,
    /// This shard's Redis breaker, calls and primed rooms, when `--cluster-redis` is set.
    cluster: Option<crate::upstream::cluster::ClusterShard>,
}

impl Shard {
    /// Sets up shard `index` around its listener and, with `--tls-listen`, its TLS
    /// listener.
    pub fn new(
        index: usize,
        shared: Arc<Shared>,
        listener: RawFd,
        tls_listener: Option<RawFd>,
    ) -> std::io::Result<Self> {
        let (generation, live_config) = shared.live.current();
        let config = &*live_config;
        let now = Instant::now();
        let shards = shared.mesh.shards();
        let epoch_anchor_unix_micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let fanout = Fanout::new(
            shared
                .config
                .fanout_config(config, epoch_anchor_unix_micros),
            now,
        );
        let conns_max = config.max_connections.div_ceil(shards);
        Ok(Self {
            index,
            shards,
            ring: Ring::new()?,
            listener,
            tls_listener,
            drain: Drain::new(),
            accept_pacers: Default::default(),
            accept_ops: [None; 2],
            fanout,
            subs: subscriptions::Subscriptions::default(),
            conns: Vec::new(),
            free: Vec::new(),
            live: 0,
            virtual_live: 0,
            tls_live: 0,
            tls_out_pool: Vec::new(),
            virtual_doorbell: None,
            conns_max,
            serials: Serials::default(),
            timers: TimerWheel::new(now, TIMER_TICK, conns_max + REFUSAL_SLOTS),
            completions: Vec::with_capacity(1024),
            scratch: Vec::with_capacity(ringcast_core::fanout::WRITE_FRAMES_MAX + 2),
            sequencer: Sequencer::new(
                index,
                shards,
                OUTBOX_MAX,
                shared.config.idempotency_keys_max,
            ),
            wake_word: Some(Box::new(0)),
            wake_pending: vec![false; shards],
            frame_vecs: Vec::new(),
            bytes_written: 0,
            rejections: [0; REJECTIONS],
            config: live_config,
            generation,
            clock: ShardClock::new(&shared.clock),
            now_unix: 0,
            now,
            latency_turn: HistogramSnapshot::EMPTY,
            stamp_scratch: Vec::with_capacity(ringcast_core::fanout::WRITE_FRAMES_MAX),
            stamp_vecs: Vec::new(),
            pending_write_bytes: 0,
            room_sizes_at: now,
            origin: now,
            ws_configs: ws::WsConfigs::new(&shared.config.ws),
            auth: shared.auth.as_ref().map(|pool| pool.shard(index)),
            cluster: shared.cluster.as_ref().map(|pool| pool.shard(index)),
            shared,
        })
    }

    /// Runs the loop until a stop is requested and every connection is closed.
    pub fn run(mut self) -> std::io::Result<()> {
        self.arm_accepts(Instant::now())?;
        self.read_wake();
        loop {
            let now = Instant::now();
            self.begin_turn(now);
            if self.stopping() && !self.drain.is_stopping() {
                self.drain.handle_stop(now, self.config.drain_timeout);
                self.sequencer.handle_stop();
            }
            self.completions.clear();
            let mut completions = std::mem::take(&mut self.completions);
            self.ring.reap(&mut completions);
            for completion in completions.drain(..) {
                self.on_completion(now, completion)?;
            }
            self.completions = completions;
            self.drain_mail(now);
            self.drain_auth(now);
            self.drain_cluster(now);
            self.expire_timers(now);
            self.fanout.handle_timeout(now);
            self.sequencer
                .handle_timeout(now, self.config.idempotency_window);
            let budget_used = self.write_out(now)?;
            self.forward_presence();
            self.release_freed_rooms();
            self.flush_outbox()?;
            self.publish_figures(now);
            if self.drain.is_stopping() && self.drive_drain(now)? {
                return Ok(());
            }
            self.arm_accepts(now)?;
            let mut wait = WAIT_MAX;
            if budget_used >= self.config.write_budget {
                wait = Duration::ZERO;
            } else {
                let accept_pauses = self.accept_pacers.iter().map(AcceptPacer::poll_timeout);
                let shard_deadlines = [
                    self.fanout.poll_timeout(),
                    self.timers.poll_timeout(),
                    self.drain.poll_timeout(),
                ];
                for deadline in shard_deadlines.into_iter().chain(accept_pauses).flatten() {
                    wait = wait.min(deadline.saturating_duration_since(now));
                }
                if wait < Duration::from_micros(50) {
                    wait = Duration::ZERO;
                }
            }
            if let Some(doorbell) = &self.virtual_doorbell {
                // One wake-up of the companion per turn, not one per pushed batch.
                doorbell.ring();
            }
            self.ring.submit_and_wait(wait)?;
        }
    }

    /// Once per turn: reads the process clock, and picks up reloaded settings.
    fn begin_turn(&mut self, now: Instant) {
        self.clock.refresh(&self.shared.clock);
        self.now_unix = self.clock.now_unix_nanos(now);
        self.now = now;
        if self.shared.live.generation() == self.generation {
            return;
        }
        let (generation, config) = self.shared.live.current();
        self.generation = generation;
        config.apply_to(&mut self.fanout);
        self.conns_max = config.max_connections.div_ceil(self.shards);
        tracing::debug!(shard = self.index, generation, "settings reloaded");
        self.config = config;
        // Reloaded timeouts hold for open connections too, from their next deadline.
        let limits = self.limits();
        for http in self.conns.iter_mut().flatten().filter_map(|c| c.http_mut()) {
            http.set_limits(limits);
        }
    }

    /// Carries out what the stop choreography says this turn (ringcast_core::drain);
    /// returns whether the shard may exit.
    fn drive_drain(&mut self, now: Instant) -> std::io::Result<bool> {
        let drained = self.drain.drained(self.live);
        self.shared.drained[self.index].store(drained, Ordering::Relaxed);
        let figures = DrainFigures {
            open: self.live,
            accepts_armed: self.accept_pacers.iter().any(AcceptPacer::armed),
            all_drained: self
                .shared
                .drained
                .iter()
                .all(|d| d.load(Ordering::Relaxed)),
            peers_stopped: self.sequencer.peers_stopped(),
        };
        while let Some(action) = self.drain.poll_action(now, figures) {
            match action {
                DrainAction::HurryConnections { request_wait } => {
                    self.begin_stop(now, request_wait)?
                }
                DrainAction::DrainSubscribers { retry_ms } => {
                    tracing::info!(
                        shard = self.index,
                        subscribers = self.fanout.subscribers_live(),
                        "draining subscribers"
                    );
                    self.fanout.handle_drain(now, retry_ms);
                }
                DrainAction::StopAccepting => self.stop_accepting()?,
                DrainAction::CloseAll => {
                    tracing::warn!(
                        shard = self.index,
                        open = self.live,
                        "drain timeout: closing the rest"
                    );
                    for slot in 0..self.conns.len() as u32 {
                        self.begin_close(slot)?;
                    }
                }
                DrainAction::Exit { clean: true } => {
                    tracing::info!(shard = self.index, "shard stopped");
                    return Ok(true);
                }
                DrainAction::Exit { clean: false } => {
                    tracing::warn!(
                        shard = self.index,
                        open = self.live,
                        "shard stopped with operations in flight"
                    );
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Whether the shard's write backlog is past `--max-pending-write-bytes`.
    fn backlogged(&self) -> bool {
        self.pending_write_bytes > self.config.max_pending_write_bytes
    }

    /// Closes idle non-stream connections and makes the others close after their current
    /// request; one that has not sent its first request gets `request_wait`.
    /// Subscribers are drained later (`drain::SETTLE`). Accepting goes on until
    /// the shard has no connection left: a client connecting meanwhile gets 503
    /// `draining` with `Retry-After` and `Connection: close` (were the accept cancelled
    /// now, the kernel would still complete its handshake on the open listener and reset
    /// it at exit).
    fn begin_stop(&mut self, now: Instant, request_wait: Duration) -> std::io::Result<()> {
        for slot in 0..self.conns.len() as u32 {
            let Some(conn) = self.conn(slot) else {
                continue;
            };
            let Some(http) = conn.http_mut() else {
                self.ws_drain(now, slot)?;
                continue;
            };
            // The machine closes idle and lingering connections, lets requests in progress
            // finish (then closes), and waits for the first request of one that has not
            // sent it (to answer it 503: closing it would be an accept and a close for a
            // client that never got a word) at most `request_wait`.
            http.handle_drain(now, request_wait);
            self.drive(now, slot)?;
        }
        Ok(())
    }

    /// Arms the accept of each listener that has none in the ring and is not paused, and
    /// logs accept failures (at most once per interval per listener, with a count).
    fn arm_accepts(&mut self, now: Instant) -> std::io::Result<()> {
        let listeners = [
            (LISTENER_PLAIN, Some(self.listener)),
            (LISTENER_TLS, self.tls_listener),
        ];
        let mut paused = 0;
        for (index, listener) in listeners {
            let Some(listener) = listener else {
                continue;
            };
            let pacer = &mut self.accept_pacers[index as usize];
            if let Some(trouble) = pacer.poll_log(now) {
                // One line per interval, however fast accepts fail.
                tracing::warn!(
                    shard = self.index,
                    errors = trouble.errors,
                    errno = trouble.errno,
                    pause_ms = trouble.pause.map(|p| p.as_millis() as u64),
                    "accept failed"
                );
            }
            if self.drain.accepting() && pacer.poll_arm(now) {
                self.accept_ops[index as usize] =
                    Some(self.ring.accept(u64::from(index), listener));
                pacer.handle_armed();
            }
            paused += u64::from(pacer.paused());
        }
        self.shared.figures[self.index].set_accept_paused(paused);
        Ok(())
    }

    /// Cancels the accepts in the ring and arms no more; the loop returns once their last
    /// completions are reaped.
    fn stop_accepting(&mut self) -> std::io::Result<()> {
        for (index, pacer) in self.accept_pacers.iter().enumerate() {
            if let (true, Some(op)) = (pacer.armed(), self.accept_ops[index]) {
                self.ring.cancel(index as u64, op);
            }
        }
        Ok(())
    }

    fn stopping(&self) -> bool {
        self.shared.stop.load(Ordering::Relaxed)
    }

    fn on_completion(&mut self, now: Instant, c: Completion) -> std::io::Result<()> {
        match c.kind {
            OpKind::Accept => {
                let index = c.key as usize;
                let tls = index == LISTENER_TLS as usize;
                let pacer = &mut self.accept_pacers[index];
                if !c.more {
                    // Re-armed at the end of the turn (`arm_accepts`), unless paused.
                    pacer.handle_ended();
                    self.accept_ops[index] = None;
                }
                if let Held::Accepted(fd) = c.held {
                    pacer.handle_accepted();
                    self.on_accept(now, fd, tls)?;
                } else if c.result != -libc::ECANCELED {
                    let errno = -c.result;
                    let paused = pacer.handle_error(now, errno).is_some();
                    self.shared.figures[self.index]
                        .add_accept_error(AcceptErrno::of(errno), paused);
                    if paused && c.more {
                        self.ring.cancel(c.key, c.op);
                    }
                }
            }
            OpKind::Recv => self.on_recv(now, c)?,
            OpKind::Write => {
                if c.result > 0 {
                    self.bytes_written += c.result as u64;
                }
                self.on_write(now, c)?;
            }
            OpKind::Close => self.on_closed(c.key),
            OpKind::WakeRead => {
                if let Held::Word(word) = c.held {
                    self.wake_word = Some(word);
                }
                self.read_wake();
            }
            OpKind::WakeWrite | OpKind::Cancel => {}
        }
        Ok(())
    }

    /// Reads this shard's eventfd again (its completion wakes the loop when mail comes).
    fn read_wake(&mut self) {
        let eventfd = self.shared.mesh.eventfd(self.index);
        let word = self.wake_word.take().expect("one eventfd read in flight");
        self.ring.read_eventfd(0, eventfd, word);
    }

    /// A connection accepted on the plain listener, or on the TLS one (`tls`): a TLS
    /// connection reads its ClientHello first, and is refused by closing it (there is no
    /// session yet to write a 503 in), counted as the plain one is.
    fn on_accept(&mut self, now: Instant, fd: OwnedFd, tls: bool) -> std::io::Result<()> {
        let stopping = self.stopping();
        if self.live >= self.conns_max + REFUSAL_SLOTS {
            // Past the refusal slots there is no room even to answer 503: close at once
            // (counted, so it is not silent in the metrics).
            drop(fd);
            self.count_rejection(if stopping {
                Rejection::Draining
            } else {
                Rejection::ConnectionLimit
            });
            return Ok(());
        }
        let raw_fd = fd.as_raw_fd();
        crate::uring::sys::set_nodelay(raw_fd);
        let serial = self.serials.take();
        let mut http = Connection::new(now, self.limits());
        if stopping {
            // Accepted during a drain: its request is answered 503 `draining` (issue 14
            // case 9: answered, never reset).
            http.handle_drain(now, ringcast_core::drain::REQUEST_WAIT);
        }
        let pipe = if tls { Pipe::tls(fd) } else { Pipe::plain(fd) };
        let conn = Conn::new(serial, pipe, http);
        if tls {
            self.tls_live += 1;
            self.shared.figures[self.index].transport_opened(Transport::Tls);
        }
        let slot = self.insert_conn(conn);
        self.live += 1;
        if self.live > self.conns_max {
            return self.refuse_unavailable(slot, Rejection::ConnectionLimit);
        }
        if let Some(ip) = crate::uring::sys::peer_addr(raw_fd).map(|addr| addr.ip()) {
            let rate = self.config.max_new_connections_per_ip_per_sec;
            if !self.shared.new_connections.try_take(ip, now, rate) {
                return self.refuse_unavailable(slot, Rejection::NewConnectionRate);
            }
            if !self
                .shared
                .per_ip
                .try_acquire(ip, self.config.max_connections_per_ip)
            {
                return self.refuse_unavailable(slot, Rejection::PerIpLimit);
            }
            if let Some(conn) = self.conn(slot) {
                conn.peer = Some(ip);
            }
        }
        self.sync_timer(slot);
        self.post_recv(slot)
    }

    // Cluster mode (cluster.rs, docs/CLUSTER.md): publishes go to Redis from the shard that
    // read them; rooms are filled from the streams by the follower thread.

    // HTTP/1.1 over TLS on the ring (tls_conn.rs, docs/TRANSPORTS.md): the ring receives
    // and sends ciphertext; rustls turns it into the request buffer's plaintext and the
    // writes' frames into one send buffer per connection.
}
