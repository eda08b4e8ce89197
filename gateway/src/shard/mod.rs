//! One shard's event loop: its io_uring ring, listener, connections, fan-out state and
//! mailbox. Runs on one pinned thread; owns everything it touches.
//!
//! A loop turn: reap completions (accepts, reads, finished writes), drain the mailbox,
//! expire timers, hand at most `write_budget` writes from the fan-out to the ring, flush
//! outgoing mail, publish figures, then submit and sleep until a completion or the next
//! deadline. The bounded write budget is what lets publishes that arrive during a big
//! fan-out ride in the same writes (DESIGN.md §2).

pub mod accept;
pub mod pipe;

use crate::app::admission::{RefusalReason, Rejection, REJECTIONS};
use crate::app::batch::{self, BATCH_LINES_MAX};
use crate::config::Config;
use crate::conn::http1::{Expired, Limits, Phase, RequestReader, Step};
use crate::conn::key::{ConnKey, Serials};
use crate::conn::tls::Hello;
use crate::http::h1::{self as http1, Method, Refusal, Route};
use crate::mesh::mail::{Mail, PublishRefusal, ReplyTo, OUTBOX_MAX};
use crate::mesh::virtual_conn::{Doorbell, Transport, VirtualSink};
use crate::metrics::{Figure, TlsHandshake, ROOM_SIZE_LABELS};
use crate::runtime::clock::ShardClock;
use crate::runtime::shared::Shared;
use crate::shard::accept::{AcceptErrno, AcceptPacer};
use crate::shard::pipe::{recycle_tls_out, Closing, Pipe, Received, RecvInto, Wrote};
use crate::uring::{Completion, Held, OpId, OpKind, Ring, LISTENER_PLAIN, LISTENER_TLS};
use bytes::Bytes;
use ringcast_core::event_id::{EventId, ResetReason, ResumeId};
use ringcast_core::fanout::{Action, ConnId, Fanout, FanoutConfig, FanoutError, Start};
use ringcast_core::metrics::HistogramSnapshot;
use ringcast_core::room::owner_shard;
use ringcast_core::timer_wheel::{TimerKey, TimerWheel};
use std::collections::VecDeque;
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
/// How long a connection refused for bad input may keep sending before it is closed (so
/// the client reads the refusal instead of a reset).
const LINGER: Duration = Duration::from_secs(2);
/// Longest sleep in one wait, so a stop request is seen promptly.
const WAIT_MAX: Duration = Duration::from_millis(100);
/// Mail taken from each queue per turn.
const MAIL_PER_TURN: usize = 4096;
/// Extra connection slots past the limit, used only to answer 503 before closing.
const REFUSAL_SLOTS: usize = 1024;
/// After a stop signal, how long a shard keeps taking mail before it starts closing
/// caught-up subscribers: long enough for messages other shards accepted before the
/// signal to arrive (mail is flushed every loop turn).
const DRAIN_SETTLE: Duration = Duration::from_millis(200);
/// How often a shard recounts its rooms by subscriber count for the metrics.
const ROOM_SIZES_PERIOD: Duration = Duration::from_secs(1);
/// Spare stamp vectors kept per shard (as the write vectors).
const STAMP_VECS_POOLED_MAX: usize = 4096;
/// The `retry:` hint (ms) sent to subscribers closed by a drain.
const DRAIN_RETRY_MS: u64 = 1000;
/// During a drain, how long a connection that has not sent its first request is waited
/// for (to answer it 503) before `--header-timeout`'s 408: a browser's speculative
/// connection may never send one, and must not hold the drain much past its 200 ms.
const DRAIN_REQUEST_WAIT: Duration = Duration::from_secs(1);
// A write never needs more iovecs than the kernel takes at once (ring.rs splits past it).
const _: () = assert!(ringcast_core::fanout::WRITE_FRAMES_MAX + 2 <= crate::uring::ring::IOV_MAX);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a request (or waiting for the next one on keep-alive).
    Reading,
    /// Waiting for other shards to answer.
    Waiting,
    /// An SSE stream.
    Streaming,
    /// A refusal was written; reading until the client closes.
    Lingering,
    /// Closing: waiting for in-flight operations, then the close.
    Closing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimerKind {
    /// The request reader's deadline (header, body or idle: http1_conn.rs), at this instant.
    Request(Instant),
    Linger,
}

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

struct Conn {
    serial: u32,
    state: State,
    /// The request's plaintext; empty while a plain receive holds it (the ring's op).
    buf: Vec<u8>,
    /// How the bytes travel (plain, TLS, virtual), the ops in flight and the write in
    /// progress (pipe.rs).
    pipe: Pipe,
    close_after_write: bool,
    timer: Option<(TimerKey, TimerKind)>,
    pending: Option<Pending>,
    outstanding: u32,
    keep_alive: bool,
    /// Accepted during a drain: its request is answered 503 `draining` (issue 14 case 9:
    /// answered, never reset).
    refuse_draining: bool,
    /// The client's address while it counts against the per-address limit.
    peer: Option<IpAddr>,
    /// Sequencing stamps of the message frames the write in flight carries.
    stamps: Vec<u64>,
    /// What `buf` makes of requests, and which request deadline runs (http1_conn.rs).
    reader: RequestReader,
    /// The write in flight is a `100 Continue`: the request's body comes next.
    interim: bool,
    /// The request being answered is a HEAD: responses go without their bodies.
    head_request: bool,
}

impl Conn {
    /// A connection about to read its first request.
    fn new(serial: u32, buf: Vec<u8>, keep_alive: bool, pipe: Pipe, reader: RequestReader) -> Self {
        Self {
            serial,
            state: State::Reading,
            buf,
            pipe,
            close_after_write: false,
            timer: None,
            pending: None,
            outstanding: 0,
            keep_alive,
            refuse_draining: false,
            peer: None,
            stamps: Vec::new(),
            reader,
            interim: false,
            head_request: false,
        }
    }
}

/// A connection slot (boxed: the table of a shard is mostly empty slots, and a `Conn` is
/// large). Nothing the kernel uses lives in it: ops own their memory (uring/ring.rs).
type Slot = Option<Box<Conn>>;

/// The connection in `slot`, borrowing only the slot table (so other fields of the worker
/// stay usable while it is held).
fn slot_mut(conns: &mut [Slot], slot: u32) -> Option<&mut Conn> {
    conns.get_mut(slot as usize).and_then(|c| c.as_deref_mut())
}

/// One shard.
pub struct Worker {
    index: usize,
    shards: usize,
    shared: Arc<Shared>,
    ring: Ring,
    listener: RawFd,
    /// The `--tls-listen` socket of this shard, when set.
    tls_listener: Option<RawFd>,
    /// Accepts are (re-)armed; cleared once a stopping shard has no connection left, when
    /// it cancels them and waits for their last completions before returning (so no
    /// accept in the ring keeps a listener open after the process exits).
    accepting: bool,
    /// Pacing of each listener's accept, by `LISTENER_PLAIN` / `LISTENER_TLS`.
    accept_pacers: [AcceptPacer; 2],
    /// Each listener's accept op while it is armed (to cancel it).
    accept_ops: [Option<OpId>; 2],
    fanout: Fanout,
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
    outbox: Vec<VecDeque<Mail>>,
    /// The word this shard's eventfd is read into, while no read is in flight (the ring's
    /// op holds it meanwhile).
    wake_word: Option<Box<u64>>,
    wake_pending: Vec<bool>,
    frame_vecs: Vec<Vec<Bytes>>,
    bytes_written: u64,
    /// Refusals by reason ([`Rejection`]).
    rejections: [u64; REJECTIONS],
    /// Settings in force and their generation (see [`LiveConfig`]).
    config: Arc<Config>,
    generation: u64,
    clock: ShardClock,
    /// Process-clock time at the start of the turn.
    now_unix: u64,
    /// Publish→write latencies recorded this turn, added to the figures at its end.
    latency_turn: HistogramSnapshot,
    stamp_scratch: Vec<u64>,
    stamp_vecs: Vec<Vec<u64>>,
    /// Bytes submitted to writes and not yet written (the admission bound).
    pending_write_bytes: usize,
    room_sizes_at: Instant,
    /// This shard's authorization breaker and calls, when `--auth-url` is set.
    auth: Option<crate::upstream::auth::AuthShard>,
    /// This shard's Redis breaker, calls and primed rooms, when `--cluster-redis` is set.
    cluster: Option<crate::upstream::cluster::ClusterShard>,
    /// Idempotency keys of the rooms this shard owns (single-node mode; idempotency.rs).
    idempotency: crate::app::idempotency::KeyTable,
}

impl Worker {
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
        let fanout = Fanout::new(
            FanoutConfig {
                history_messages_max: config.history,
                history_bytes_max: config.history_bytes,
                rooms_max: config.max_rooms,
                heartbeat: config.heartbeat,
                coalesce_delay: config.coalesce_delay,
                coalesce_queue_min: config.coalesce_queue_min,
                stream_ids: shared.cluster.is_some(),
                epoch_anchor_unix_micros: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
                room_idle_timeout: config.room_idle_timeout,
                ..FanoutConfig::default()
            },
            now,
        );
        let conns_max = config.max_connections.div_ceil(shards);
        Ok(Self {
            index,
            shards,
            ring: Ring::new()?,
            listener,
            tls_listener,
            accepting: true,
            accept_pacers: Default::default(),
            accept_ops: [None; 2],
            fanout,
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
            outbox: (0..shards).map(|_| VecDeque::new()).collect(),
            wake_word: Some(Box::new(0)),
            wake_pending: vec![false; shards],
            frame_vecs: Vec::new(),
            bytes_written: 0,
            rejections: [0; REJECTIONS],
            config: live_config,
            generation,
            clock: ShardClock::new(&shared.clock),
            now_unix: 0,
            latency_turn: HistogramSnapshot::EMPTY,
            stamp_scratch: Vec::with_capacity(ringcast_core::fanout::WRITE_FRAMES_MAX),
            stamp_vecs: Vec::new(),
            pending_write_bytes: 0,
            room_sizes_at: now,
            auth: shared.auth.as_ref().map(|pool| pool.shard(index)),
            cluster: shared.cluster.as_ref().map(|pool| pool.shard(index)),
            idempotency: crate::app::idempotency::KeyTable::new(shared.config.idempotency_keys_max),
            shared,
        })
    }

    /// Runs the loop until a stop is requested and every connection is closed.
    pub fn run(mut self) -> std::io::Result<()> {
        self.arm_accepts(Instant::now())?;
        self.read_wake();
        let mut stop_deadline: Option<Instant> = None;
        let mut drain_at: Option<Instant> = None;
        let mut forced = false;
        loop {
            let now = Instant::now();
            self.begin_turn(now);
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
            self.idempotency
                .handle_timeout(now, self.config.idempotency_window);
            let budget_used = self.write_out(now)?;
            self.forward_presence();
            self.release_freed_rooms();
            self.flush_outbox()?;
            self.publish_figures(now);

            if self.shared.stop.load(Ordering::Relaxed) && stop_deadline.is_none() {
                stop_deadline = Some(now + self.config.drain_timeout);
                drain_at = Some(now + DRAIN_SETTLE);
                self.begin_stop(now)?;
            }
            if drain_at.is_some_and(|at| now >= at) {
                drain_at = None;
                tracing::info!(
                    shard = self.index,
                    subscribers = self.fanout.subscribers_live(),
                    "draining subscribers"
                );
                self.fanout.handle_drain(now, DRAIN_RETRY_MS);
            }
            if let Some(deadline) = stop_deadline {
                self.shared.drained[self.index].store(self.live == 0, Ordering::Relaxed);
                let all_drained = self
                    .shared
                    .drained
                    .iter()
                    .all(|drained| drained.load(Ordering::Relaxed));
                if all_drained && self.accepting {
                    // Clients that connected during the drain were answered; now stop.
                    self.stop_accepting()?;
                }
                if self.live == 0 && !self.accept_pacers.iter().any(AcceptPacer::armed) {
                    tracing::info!(shard = self.index, "shard stopped");
                    return Ok(());
                }
                if now >= deadline && !forced {
                    forced = true;
                    tracing::warn!(
                        shard = self.index,
                        open = self.live,
                        "drain timeout: closing the rest"
                    );
                    for slot in 0..self.conns.len() as u32 {
                        self.begin_close(slot)?;
                    }
                    if self.accepting {
                        self.stop_accepting()?;
                    }
                }
                if now >= deadline + Duration::from_secs(2) {
                    tracing::warn!(
                        shard = self.index,
                        open = self.live,
                        "shard stopped with operations in flight"
                    );
                    return Ok(());
                }
            }
            self.arm_accepts(now)?;
            let mut wait = WAIT_MAX;
            if budget_used >= self.config.write_budget {
                wait = Duration::ZERO;
            } else {
                let accept_pauses = self.accept_pacers.iter().map(AcceptPacer::poll_timeout);
                for deadline in [self.fanout.poll_timeout(), self.timers.poll_timeout()]
                    .into_iter()
                    .chain(accept_pauses)
                    .flatten()
                {
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
        if self.shared.live.generation() == self.generation {
            return;
        }
        let (generation, config) = self.shared.live.current();
        self.generation = generation;
        self.fanout.set_timings(
            config.heartbeat,
            config.coalesce_delay,
            config.coalesce_queue_min,
        );
        self.fanout.set_room_idle_timeout(config.room_idle_timeout);
        self.conns_max = config.max_connections.div_ceil(self.shards);
        tracing::debug!(shard = self.index, generation, "settings reloaded");
        self.config = config;
    }

    /// Counts a refusal.
    fn count_rejection(&mut self, reason: Rejection) {
        self.rejections[reason as usize] += 1;
    }

    /// Counts a refusal that is not a 503 (`ringcast_refusals_total`).
    fn count_refusal(&self, reason: RefusalReason) {
        self.shared.figures[self.index].add_refusal(reason);
    }

    /// Refuses a request whose token does not let it through: 401 with a
    /// `WWW-Authenticate: Bearer` challenge, or 403; counted by reason.
    fn refuse_token(
        &mut self,
        slot: u32,
        denied: crate::upstream::jwt::TokenError,
    ) -> std::io::Result<()> {
        self.count_refusal(RefusalReason::of_token(denied));
        tracing::debug!(shard = self.index, conn = slot, ?denied, "token refused");
        let refusal = Refusal {
            status: denied.status(),
            reason: denied.text().into(),
            extra: denied.challenge(),
        };
        self.refuse(slot, &refusal)
    }

    /// Refuses with 503, `Retry-After` and the reason, and counts it.
    fn refuse_unavailable(&mut self, slot: u32, reason: Rejection) -> std::io::Result<()> {
        self.count_rejection(reason);
        let refusal = Refusal {
            status: 503,
            reason: reason.text().into(),
            extra: "Retry-After: 1\r\n",
        };
        self.refuse(slot, &refusal)
    }

    /// Whether the shard's write backlog is past `--max-pending-write-bytes`.
    fn backlogged(&self) -> bool {
        self.pending_write_bytes > self.config.max_pending_write_bytes
    }

    /// Closes idle non-stream connections and makes the others close after their current
    /// request. Subscribers are drained later (`DRAIN_SETTLE`). Accepting goes on until
    /// the shard has no connection left: a client connecting meanwhile gets 503
    /// `draining` with `Retry-After` and `Connection: close` (were the accept cancelled
    /// now, the kernel would still complete its handshake on the open listener and reset
    /// it at exit).
    fn begin_stop(&mut self, now: Instant) -> std::io::Result<()> {
        for slot in 0..self.conns.len() as u32 {
            let Some(conn) = self.conn(slot) else {
                continue;
            };
            conn.keep_alive = false;
            // A connection that has not sent its first request yet (accepted since the
            // signal, or just before it) waits for it, to answer it 503: closing it would
            // be an accept and a close for a client that never got a word. Idle keep-alive
            // connections (served before; timed by `Idle`) are closed.
            let empty = conn.pipe.request_bytes(&conn.buf) == 0;
            let fresh = conn.state == State::Reading && empty && conn.reader.phase() == Phase::Head;
            conn.refuse_draining |= fresh;
            let idle = conn.state == State::Reading
                && empty
                && !conn.pipe.writing()
                && !conn.refuse_draining;
            if idle || conn.state == State::Lingering {
                self.begin_close(slot)?;
            } else if fresh {
                conn.reader.hurry(now + DRAIN_REQUEST_WAIT);
                self.sync_timer(slot);
            }
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
            if self.accepting && pacer.poll_arm(now) {
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
        self.accepting = false;
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

    /// A completion for a connection that is gone (its op outlived it: the ring kept the
    /// memory until now) or closing: what it held goes back to the pools.
    fn recycle(&mut self, held: Held) {
        match held {
            Held::Frames(frames) => self.recycle_frames(frames),
            Held::Bytes(out) => recycle_tls_out(&mut self.tls_out_pool, out),
            _ => {}
        }
    }

    /// Keeps a write's frame vector for the next write (idle streams hold none).
    fn recycle_frames(&mut self, mut frames: Vec<Bytes>) {
        frames.clear();
        if self.frame_vecs.len() < WRITE_VECS_POOLED_MAX
            && frames.capacity() <= ringcast_core::fanout::WRITE_FRAMES_MAX + 2
            && frames.capacity() != 0
        {
            self.frame_vecs.push(frames);
        }
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
        let reader = RequestReader::new(now, &self.limits());
        let pipe = if tls { Pipe::tls(fd) } else { Pipe::plain(fd) };
        let mut conn = Conn::new(serial, Vec::new(), !stopping, pipe, reader);
        conn.refuse_draining = stopping;
        if stopping {
            conn.reader.hurry(now + DRAIN_REQUEST_WAIT);
        }
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

    /// Opens a virtual connection for a request the companion thread translated to
    /// HTTP/1.1 (virtual_conn.rs): a slot like an accepted socket's, its request already read.
    fn open_virtual(
        &mut self,
        now: Instant,
        request: Vec<u8>,
        sink: Arc<VirtualSink>,
    ) -> std::io::Result<()> {
        if self.live >= self.conns_max + REFUSAL_SLOTS || self.stopping() {
            self.count_rejection(if self.stopping() {
                Rejection::Draining
            } else {
                Rejection::ConnectionLimit
            });
            // Closed without an answer: the companion answers 503 itself.
            sink.close();
            return Ok(());
        }
        let serial = self.serials.take();
        let reader = RequestReader::new(now, &self.limits());
        let slot = self.insert_conn(Conn::new(
            serial,
            request,
            false,
            Pipe::virtual_conn(sink.clone()),
            reader,
        ));
        sink.bind(ConnKey { slot, serial });
        if self.virtual_doorbell.is_none() {
            self.virtual_doorbell = sink.doorbell().cloned();
        }
        self.live += 1;
        self.virtual_live += 1;
        if self.live > self.conns_max {
            return self.refuse_unavailable(slot, Rejection::ConnectionLimit);
        }
        self.sync_timer(slot);
        self.process(now, slot)
    }

    /// Puts a connection in a free slot and returns it.
    fn insert_conn(&mut self, conn: Conn) -> u32 {
        let conn = Box::new(conn);
        match self.free.pop() {
            Some(slot) => {
                self.conns[slot as usize] = Some(conn);
                slot
            }
            None => {
                self.conns.push(Some(conn));
                (self.conns.len() - 1) as u32
            }
        }
    }

    fn conn(&mut self, slot: u32) -> Option<&mut Conn> {
        slot_mut(&mut self.conns, slot)
    }

    /// The connection `key` names while it is open; `None` once its slot holds another
    /// connection (the serial differs): a stale key never reaches it (conn_key.rs).
    fn conn_by_key(&mut self, key: ConnKey) -> Option<&mut Conn> {
        self.conn(key.slot).filter(|c| c.serial == key.serial)
    }

    /// The key of the connection in `slot`; with serial 0, which names no connection, when
    /// the slot is empty.
    fn key(&self, slot: u32) -> ConnKey {
        let conn = self.conns.get(slot as usize).and_then(|c| c.as_deref());
        let serial = conn.map_or(0, |c| c.serial);
        ConnKey { slot, serial }
    }

    /// What bounds a request: sizes from the start-up settings (buffers are sized by
    /// them), deadlines from the settings in force.
    fn limits(&self) -> Limits {
        Limits {
            header_bytes_max: self.shared.config.max_header_bytes,
            body_bytes_max: self.shared.config.max_message_bytes,
            header_timeout: self.config.header_timeout,
            body_timeout: self.config.body_timeout,
            idle_timeout: self.config.idle_timeout,
        }
    }

    /// Puts the connection's timer on its request reader's deadline (none: cancelled).
    fn sync_timer(&mut self, slot: u32) {
        let Some(conn) = slot_mut(&mut self.conns, slot) else {
            return;
        };
        let want = conn.reader.poll_timeout();
        if let Some((key, kind)) = conn.timer.take() {
            match (kind, want) {
                (TimerKind::Request(at), Some(want)) if at == want => {
                    conn.timer = Some((key, kind));
                    return;
                }
                (TimerKind::Request(_), Some(want)) if self.timers.reset(&key, want) => {
                    conn.timer = Some((key, TimerKind::Request(want)));
                    return;
                }
                _ => {
                    self.timers.cancel(key);
                }
            }
        }
        conn.timer = want.and_then(|at| {
            let key = self
                .timers
                .insert(
                    at,
                    ConnKey {
                        slot,
                        serial: conn.serial,
                    },
                )
                .ok()?;
            Some((key, TimerKind::Request(at)))
        });
    }

    fn arm_linger(&mut self, now: Instant, slot: u32) {
        let kind = TimerKind::Linger;
        let after = LINGER;
        let Some(conn) = slot_mut(&mut self.conns, slot) else {
            return;
        };
        if let Some((key, old)) = conn.timer.take() {
            if old == kind && self.timers.reset(&key, now + after) {
                conn.timer = Some((key, kind));
                return;
            }
            self.timers.cancel(key);
        }
        conn.timer = self
            .timers
            .insert(
                now + after,
                ConnKey {
                    slot,
                    serial: conn.serial,
                },
            )
            .ok()
            .map(|key| (key, kind));
    }

    fn cancel_timer(&mut self, slot: u32) {
        if let Some(conn) = slot_mut(&mut self.conns, slot) {
            if let Some((key, _)) = conn.timer.take() {
                self.timers.cancel(key);
            }
        }
    }

    fn expire_timers(&mut self, now: Instant) {
        while let Some(key) = self.timers.poll_expired(now) {
            let slot = key.slot;
            let Some(conn) = self.conn_by_key(key) else {
                continue;
            };
            let Some((_, kind)) = conn.timer.take() else {
                continue;
            };
            let reading = conn.state == State::Reading && !conn.pipe.writing();
            let handshaking = conn.pipe.handshaking();
            let result = match kind {
                TimerKind::Request(_) if reading && handshaking => {
                    self.fail_tls(slot, RefusalReason::TlsHandshakeTimeout)
                }
                TimerKind::Request(at) if reading => {
                    let reason = if conn.reader.phase() == Phase::Body {
                        RefusalReason::BodyTimeout
                    } else {
                        RefusalReason::HeaderTimeout
                    };
                    // The wheel fires within a tick of the deadline: it counts as reached.
                    match conn.reader.handle_timeout(now.max(at)) {
                        Some(Expired::Refuse(refusal)) => {
                            self.count_refusal(reason);
                            self.refuse(slot, &refusal)
                        }
                        Some(Expired::Close) => self.begin_close(slot),
                        None => {
                            self.sync_timer(slot);
                            Ok(())
                        }
                    }
                }
                _ => self.begin_close(slot),
            };
            if let Err(err) = result {
                tracing::warn!(shard = self.index, %err, "timer action failed");
            }
        }
    }

    /// Posts the connection's next receive (none while one is in flight, or for a virtual
    /// connection): the request's, while it reads one; else into the discard buffer
    /// (subscribers and lingering connections send nothing we keep).
    fn post_recv(&mut self, slot: u32) -> std::io::Result<()> {
        let limits = self.limits();
        let Some(conn) = slot_mut(&mut self.conns, slot) else {
            return Ok(());
        };
        if conn.state == State::Closing {
            return Ok(());
        }
        let into = if conn.state == State::Reading {
            let want = if conn.buf.is_empty() {
                RECV_FIRST
            } else {
                conn.buf.len().clamp(RECV_FIRST, RECV_CHUNK)
            };
            let room = conn
                .reader
                .recv_room(conn.buf.len(), &limits)
                .clamp(1, want);
            RecvInto::Request { room }
        } else {
            RecvInto::Discard
        };
        let key = ConnKey {
            slot,
            serial: conn.serial,
        };
        conn.pipe
            .post_recv(&mut self.ring, key.to_word(), &mut conn.buf, into);
        Ok(())
    }

    fn on_recv(&mut self, now: Instant, c: Completion) -> std::io::Result<()> {
        let Some(key) = ConnKey::from_word(c.key) else {
            return Ok(());
        };
        let slot = key.slot;
        let config = self.shared.tls_http1.clone();
        let Some(conn) = slot_mut(&mut self.conns, slot).filter(|conn| conn.serial == key.serial)
        else {
            // The connection went first: the ring kept the buffer until now.
            return Ok(());
        };
        if conn.state == State::Closing {
            let held = conn.pipe.settle(c);
            self.recycle(held);
            return Ok(());
        }
        let reading = conn.state == State::Reading;
        match conn
            .pipe
            .on_recv(c, &mut conn.buf, reading, config.as_ref())
        {
            Received::Closed => self.begin_close(slot),
            Received::Ignored => match conn.state {
                State::Streaming | State::Lingering => {
                    conn.buf = Vec::new();
                    self.post_recv(slot)
                }
                _ => Ok(()),
            },
            Received::Data {
                established,
                closed,
            } => {
                if established {
                    self.count_tls_handshake(TlsHandshake::Http1);
                }
                if closed {
                    return self.begin_close(slot);
                }
                self.tls_flush(slot)?;
                self.process(now, slot)
            }
            Received::Hello(Hello::Partial) => self.post_recv(slot),
            Received::Hello(Hello::Failed) => self.fail_tls(slot, RefusalReason::TlsError),
            Received::Hello(Hello::H2) => self.hand_off_h2(slot),
            Received::Hello(Hello::Http1) => {
                self.tls_flush(slot)?;
                self.post_recv(slot)
            }
            Received::HelloTooLarge => self.fail_tls(slot, RefusalReason::TlsClientHelloTooLarge),
            Received::TlsFailed(err) => {
                tracing::debug!(shard = self.index, conn = slot, %err, "TLS receive failed");
                self.fail_tls(slot, RefusalReason::TlsError)
            }
        }
    }

    /// Handles every complete request in the connection's buffer, one at a time.
    fn process(&mut self, now: Instant, slot: u32) -> std::io::Result<()> {
        let limits = self.limits();
        let auth_on = self.auth.is_some();
        let Some(conn) = self.conn(slot) else {
            return Ok(());
        };
        if conn.state != State::Reading || conn.pipe.writing() || conn.pipe.receiving() {
            return Ok(());
        }
        conn.head_request = false;
        let step = conn.reader.handle_input(now, &conn.buf, &limits);
        self.sync_timer(slot);
        let (head, total) = match step {
            Step::Refuse(refusal) => {
                self.count_refusal(RefusalReason::of_parse(&refusal));
                return self.refuse(slot, &refusal);
            }
            Step::NeedMore => return self.post_recv(slot),
            Step::Continue(head) => {
                if self.conn(slot).is_some_and(|conn| conn.refuse_draining) {
                    return self.refuse_unavailable(slot, Rejection::Draining);
                }
                // Tokens are the last check before the body is asked for.
                if let Err(denied) = self.check_publish_token(&head) {
                    return self.refuse_token(slot, denied);
                }
                if let Some(conn) = self.conn(slot) {
                    conn.interim = true;
                }
                return self.respond(slot, Bytes::from_static(http1::CONTINUE));
            }
            Step::Request { head, end } => (head, end),
        };
        let Some(conn) = self.conn(slot) else {
            return Ok(());
        };
        if conn.refuse_draining {
            return self.refuse_unavailable(slot, Rejection::Draining);
        }
        conn.keep_alive = !head.close;
        conn.head_request = head.method == Method::Head;
        let body: Vec<u8> = conn.buf[head.len..total].to_vec();
        // The authorization call forwards the subscriber's headers: keep its raw head
        // (subscribes only, and only with --auth-url; publishes never pay for this).
        let auth_head = (auth_on && matches!(head.route, Route::Events(_)))
            .then(|| conn.buf[..head.len].to_vec());
        conn.buf.drain(..total);
        let close = head.close;
        // Token checks (jwt.rs) come before anything else a route does, on every transport.
        let now_seconds = self.now_unix / 1_000_000_000;
        let jwt = self.shared.config.jwt.clone();
        match head.route {
            Route::Events(room) => {
                if let Some(jwt) = jwt.as_deref() {
                    let token = head.bearer.as_deref().or(head.query_token.as_deref());
                    if let Err(denied) = jwt.check_subscribe(&room, token, now_seconds) {
                        return self.refuse_token(slot, denied);
                    }
                }
                if head.method == Method::Head {
                    // The stream's head, then the end: no subscription (RFC 9110 §9.3.2).
                    if let Some(conn) = self.conn(slot) {
                        conn.keep_alive = false;
                    }
                    return self.respond(slot, http1::sse_head_then_close());
                }
                match auth_head {
                    Some(raw) => self.authorize(now, slot, room, head.last_event_id, raw),
                    None => self.subscribe(now, slot, &room, head.last_event_id),
                }
            }
            Route::Messages(room) => {
                if let Some(jwt) = jwt.as_deref() {
                    match jwt.publish_grant(head.bearer.as_deref(), now_seconds) {
                        Err(denied) => return self.refuse_token(slot, denied),
                        Ok(Some(grant)) if !grant.allows(&room) => {
                            return self
                                .refuse_token(slot, crate::upstream::jwt::TokenError::Forbidden)
                        }
                        Ok(_) => {}
                    }
                }
                self.publish_one(now, slot, room, body, head.idempotency_key)
            }
            Route::Publish => {
                let grant = match jwt
                    .as_deref()
                    .map(|jwt| jwt.publish_grant(head.bearer.as_deref(), now_seconds))
                {
                    Some(Err(denied)) => return self.refuse_token(slot, denied),
                    Some(Ok(grant)) => grant,
                    None => None,
                };
                self.publish_batch(now, slot, &body, grant.as_ref())
            }
            Route::Room(room) => self.room_info(slot, room),
            Route::Metrics => {
                let format = head.metrics_format;
                let now_unix = self.clock.now_unix_nanos(Instant::now());
                let text = crate::metrics::process::render(&self.shared, format, now_unix);
                self.respond(
                    slot,
                    http1::response(200, format.content_type(), "", text.as_bytes(), close),
                )
            }
            Route::Healthz => {
                self.respond(slot, http1::response(200, "text/plain", "", b"ok\n", close))
            }
            Route::Demo if self.shared.config.demo => self.respond(
                slot,
                http1::response(
                    200,
                    "text/html; charset=utf-8",
                    "Cache-Control: no-cache\r\n",
                    http1::DEMO_HTML.as_bytes(),
                    close,
                ),
            ),
            Route::Demo => {
                self.count_refusal(RefusalReason::NotFound);
                self.refuse(slot, &http1::Refusal::not_found())
            }
            Route::Readyz => {
                if self.shared.stop.load(Ordering::Relaxed) {
                    self.respond(
                        slot,
                        http1::response(
                            503,
                            "text/plain",
                            "Retry-After: 1\r\n",
                            b"draining\n",
                            close,
                        ),
                    )
                } else {
                    self.respond(
                        slot,
                        match self.cluster.as_ref().and_then(|c| c.unready_reason(now)) {
                            Some(reason) => http1::response(
                                503,
                                "text/plain",
                                "Retry-After: 1\r\n",
                                format!("{reason}\n").as_bytes(),
                                close,
                            ),
                            None => http1::response(200, "text/plain", "", b"ready\n", close),
                        },
                    )
                }
            }
        }
    }

    /// The token check a publish gets (jwt.rs), for a head whose body is not read yet.
    fn check_publish_token(
        &self,
        head: &http1::Head,
    ) -> Result<(), crate::upstream::jwt::TokenError> {
        let Some(jwt) = self.shared.config.jwt.as_deref() else {
            return Ok(());
        };
        let now_seconds = self.now_unix / 1_000_000_000;
        match (
            &head.route,
            jwt.publish_grant(head.bearer.as_deref(), now_seconds)?,
        ) {
            (Route::Messages(room), Some(grant)) if !grant.allows(room) => {
                Err(crate::upstream::jwt::TokenError::Forbidden)
            }
            _ => Ok(()),
        }
    }

    fn subscribe(
        &mut self,
        now: Instant,
        slot: u32,
        room: &str,
        last_event_id: Option<ResumeId>,
    ) -> std::io::Result<()> {
        if self.stopping() {
            return self.refuse_unavailable(slot, Rejection::Draining);
        }
        if self.backlogged() {
            return self.refuse_unavailable(slot, Rejection::PendingWriteBytes);
        }
        if self.cluster.is_some() {
            return self.cluster_subscribe(now, slot, room, last_event_id);
        }
        let admitted =
            self.fanout
                .handle_subscribe(now, ConnId(slot), room, last_event_id, http1::sse_head());
        self.admitted(slot, admitted)
    }

    /// Adds a cluster subscriber to the fan-out: `replay` are frames from Redis to write
    /// first, then history from where `start` says (see
    /// `Fanout::handle_subscribe_replayed`).
    fn admit_replayed(
        &mut self,
        now: Instant,
        slot: u32,
        room: &str,
        start: Start,
        replay: Vec<Bytes>,
    ) -> std::io::Result<()> {
        let admitted = self.fanout.handle_subscribe_replayed(
            now,
            ConnId(slot),
            room,
            start,
            http1::sse_head(),
            replay,
        );
        self.admitted(slot, admitted)
    }

    fn admitted(&mut self, slot: u32, admitted: Result<(), FanoutError>) -> std::io::Result<()> {
        match admitted {
            Ok(()) => {
                self.cancel_timer(slot);
                if let Some(conn) = self.conn(slot) {
                    conn.reader.finish();
                    conn.state = State::Streaming;
                    conn.buf = Vec::new();
                }
                self.post_recv(slot)
            }
            Err(err) => {
                let reason = match err {
                    FanoutError::RoomsFull => Rejection::RoomLimit,
                    FanoutError::SubscribersFull
                    | FanoutError::TimersFull
                    | FanoutError::AlreadySubscribed => Rejection::SubscriberLimit,
                };
                self.refuse_unavailable(slot, reason)
            }
        }
    }

    /// A subscribe that `--auth-url` must approve first: decided at once (breaker open,
    /// queue full) or the connection waits for [`Self::drain_auth`].
    fn authorize(
        &mut self,
        now: Instant,
        slot: u32,
        room: String,
        last_event_id: Option<ResumeId>,
        head: Vec<u8>,
    ) -> std::io::Result<()> {
        let (Some(conn), false) = (
            self.conns.get(slot as usize).and_then(|c| c.as_deref()),
            self.stopping(),
        ) else {
            // Draining (or gone): the plain path refuses.
            return self.subscribe(now, slot, &room, last_event_id);
        };
        let ticket = crate::upstream::auth::Ticket {
            slot,
            serial: conn.serial,
            room,
            last_event_id,
        };
        let client = conn.pipe.raw_fd().and_then(crate::uring::sys::peer_addr);
        let Some(auth) = self.auth.as_mut() else {
            return self.subscribe(now, slot, &ticket.room, last_event_id);
        };
        match auth.begin(now, ticket, client, head) {
            crate::upstream::auth::Begin::Waiting => {
                if let Some(conn) = self.conn(slot) {
                    conn.state = State::Waiting;
                }
                Ok(())
            }
            crate::upstream::auth::Begin::Decided(ticket, decision) => {
                self.finish_authorize(now, ticket, decision)
            }
        }
    }

    /// Resumes subscribes whose authorization call finished; replies for connections that
    /// closed meanwhile (serial changed, or no longer waiting) are dropped.
    fn drain_auth(&mut self, now: Instant) {
        let Some(auth) = self.auth.as_mut() else {
            return;
        };
        // Bounded: a shard has at most SHARD_IN_FLIGHT_MAX calls out.
        let mut decided = Vec::new();
        while let Some(done) = auth.poll_decision(now) {
            decided.push(done);
        }
        auth.publish_figures(now);
        for (ticket, decision) in decided {
            // auth::Ticket still holds slot and serial apart (auth.rs: left to the deps change).
            let key = ConnKey {
                slot: ticket.slot,
                serial: ticket.serial,
            };
            if !self.is_waiting(key) {
                continue;
            }
            if let Err(err) = self.finish_authorize(now, ticket, decision) {
                tracing::warn!(shard = self.index, %err, "resuming an authorized subscribe failed");
            }
        }
    }

    fn finish_authorize(
        &mut self,
        now: Instant,
        ticket: crate::upstream::auth::Ticket,
        decision: crate::upstream::auth::Decision,
    ) -> std::io::Result<()> {
        match decision.response() {
            None => self.subscribe(now, ticket.slot, &ticket.room, ticket.last_event_id),
            Some(response) => {
                tracing::debug!(shard = self.index, conn = ticket.slot, room = %ticket.room, ?decision, "subscribe not authorized");
                if matches!(
                    decision,
                    crate::upstream::auth::Decision::Refuse { status: 503, .. }
                ) {
                    self.count_rejection(Rejection::AuthUnavailable);
                }
                self.refuse_with(ticket.slot, response)
            }
        }
    }

    // Cluster mode (cluster.rs, docs/CLUSTER.md): publishes go to Redis from the shard that
    // read them; rooms are filled from the streams by the follower thread.

    fn cluster_ticket(&self, slot: u32, index: u32) -> crate::upstream::cluster::Ticket {
        crate::upstream::cluster::Ticket {
            conn: self.key(slot),
            index,
        }
    }

    /// Hands one message to a Redis publisher (`XADD`); its answer comes as
    /// `Event::Published`. `Err` when refused at once.
    fn cluster_append(
        &mut self,
        now: Instant,
        ticket: crate::upstream::cluster::Ticket,
        room: Arc<str>,
        data: Bytes,
        idempotency_key: Option<String>,
    ) -> Result<(), PublishRefusal> {
        if self.stopping() {
            self.count_rejection(Rejection::Draining);
            return Err(Rejection::Draining.into());
        }
        let stamp = if self.config.latency_metrics {
            self.clock.now_unix_nanos(Instant::now())
        } else {
            0
        };
        let Some(cluster) = self.cluster.as_mut() else {
            return Err(PublishRefusal::ClusterOff);
        };
        let idempotency = idempotency_key.map(|key| crate::upstream::cluster::IdempotencyKey {
            key: key.into_boxed_str(),
            window: self.config.idempotency_window,
        });
        Ok(cluster.begin_publish(now, ticket, room, data, stamp, idempotency)?)
    }

    fn cluster_publish(
        &mut self,
        now: Instant,
        slot: u32,
        room: Arc<str>,
        data: Bytes,
        idempotency_key: Option<String>,
    ) -> std::io::Result<()> {
        let ticket = self.cluster_ticket(slot, 0);
        if let Err(reason) = self.cluster_append(now, ticket, room.clone(), data, idempotency_key) {
            return self.finish_publish(slot, &room, Err(reason));
        }
        if let Some(conn) = self.conn(slot) {
            conn.state = State::Waiting;
            conn.outstanding = 1;
            conn.pending = Some(Pending::Publish { room, result: None });
        }
        Ok(())
    }

    fn refuse_redis(&mut self, slot: u32) -> std::io::Result<()> {
        let refusal = Refusal {
            status: 503,
            reason: "redis unreachable".into(),
            extra: "Retry-After: 1\r\n",
        };
        self.refuse(slot, &refusal)
    }

    /// A subscribe in cluster mode: waits until the room follows its stream on this node,
    /// and for a replay from Redis when `Last-Event-ID` is older than the replica.
    fn cluster_subscribe(
        &mut self,
        now: Instant,
        slot: u32,
        room: &str,
        last_event_id: Option<ResumeId>,
    ) -> std::io::Result<()> {
        let conn_key = self.key(slot);
        self.release_freed_rooms();
        if !self.fanout.room_available(room) {
            // Refused before the room is followed: followed rooms count against the cap.
            return self.refuse_unavailable(slot, Rejection::RoomLimit);
        }
        let Some(cluster) = self.cluster.as_mut() else {
            return Ok(());
        };
        if !cluster.is_primed(room) {
            let waiter = crate::upstream::cluster::Waiter {
                conn: conn_key,
                last_event_id,
            };
            if !cluster.wait_primed(room, waiter) {
                return self.refuse_redis(slot);
            }
            if let Some(conn) = self.conn(slot) {
                conn.state = State::Waiting;
            }
            return Ok(());
        }
        let mut start = self.fanout.place(room, last_event_id);
        if let Start::After(after) = start {
            // Older than the replica: replayed from Redis. Above the replica's head: Redis
            // says whether it is a real id this node has not read yet, or cannot be placed.
            let beyond_head = after > self.fanout.head_id(room).unwrap_or(0);
            let check = self.fanout.resume_check(room, after);
            let gap = matches!(
                check,
                Some((ringcast_core::history::ResumeFrom::Gap { .. }, _))
            );
            if gap || beyond_head {
                let ticket = crate::upstream::cluster::ReplayTicket {
                    conn: conn_key,
                    room: Arc::from(room),
                    after,
                    before: check.map_or(after.saturating_add(1), |(_, first)| first),
                    beyond_head,
                };
                if cluster.begin_replay(ticket) {
                    if let Some(conn) = self.conn(slot) {
                        conn.state = State::Waiting;
                    }
                    return Ok(());
                }
                if beyond_head {
                    // Redis cannot tell now: a reset rather than a cursor no message reaches.
                    start = Start::Reset(ResetReason::BeyondHead);
                }
            }
        }
        self.admit_replayed(now, slot, room, start, Vec::new())
    }

    /// Takes what the cluster threads sent: publish outcomes, followed frames, rooms primed.
    fn drain_cluster(&mut self, now: Instant) {
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let mut events = Vec::new();
        while events.len() < MAIL_PER_TURN {
            match cluster.poll_event(now) {
                Some(event) => events.push(event),
                None => break,
            }
        }
        cluster.publish_figures(now);
        if events.len() == MAIL_PER_TURN {
            // More is waiting: make sure the next turn does not sleep.
            self.shared.mesh.wake(self.index);
        }
        for event in events {
            if let Err(err) = self.on_cluster_event(now, event) {
                tracing::warn!(shard = self.index, %err, "cluster event handling failed");
            }
        }
    }

    fn on_cluster_event(
        &mut self,
        now: Instant,
        event: crate::upstream::cluster::Event,
    ) -> std::io::Result<()> {
        use crate::upstream::cluster::Event;
        match event {
            Event::Frame {
                room,
                id,
                frame,
                stamp_unix_nanos,
            } => {
                // Sent before the follower took this shard's release of the room: the
                // replica is gone, and a new one starts from a fresh prime.
                if self.cluster.as_ref().is_some_and(|c| c.is_primed(&room)) {
                    self.fanout
                        .handle_frame_stamped(now, stamp_unix_nanos, &room, id, frame);
                }
            }
            Event::Primed {
                room,
                first_id,
                frames,
            } => {
                for (id, frame, stamp) in frames {
                    self.fanout
                        .handle_frame_stamped(now, stamp, &room, id, frame);
                }
                // Created even for an empty stream, so that the replica is freed (and the
                // room unfollowed) when idle, whether or not a waiter is admitted.
                self.fanout
                    .handle_history_start(&room, first_id.unwrap_or(1));
                // Making place for the room may have evicted another.
                self.release_freed_rooms();
                let waiters = self
                    .cluster
                    .as_mut()
                    .map(|c| c.take_waiters(&room))
                    .unwrap_or_default();
                for waiter in waiters {
                    if self.is_waiting(waiter.conn) {
                        self.cluster_subscribe(now, waiter.conn.slot, &room, waiter.last_event_id)?;
                    }
                }
            }
            Event::PrimeFailed { room } => {
                let waiters = self
                    .cluster
                    .as_mut()
                    .map(|c| c.take_waiters(&room))
                    .unwrap_or_default();
                for waiter in waiters {
                    if self.is_waiting(waiter.conn) {
                        self.refuse_redis(waiter.conn.slot)?;
                    }
                }
            }
            Event::Published {
                ticket,
                result,
                replayed,
            } => {
                if replayed {
                    self.shared.figures[self.index]
                        .idempotency
                        .add_cluster_replay();
                }
                let reply = ReplyTo {
                    shard: self.index as u32,
                    conn: ticket.conn,
                    index: ticket.index,
                };
                let result = result
                    .map(EventId::from_stream_packed)
                    .map_err(PublishRefusal::Redis);
                return self.on_mail(now, Mail::Sequenced { reply, result });
            }
            Event::Replayed { ticket, replay } => {
                if !self.is_waiting(ticket.conn) {
                    return Ok(());
                }
                let (start, frames) = match replay {
                    Some(replay) if replay.beyond_head => {
                        (Start::Reset(ResetReason::BeyondHead), Vec::new())
                    }
                    Some(replay) => (Start::After(replay.after), replay.frames),
                    // Redis could not say whether an id above the replica exists.
                    None if ticket.beyond_head => {
                        (Start::Reset(ResetReason::BeyondHead), Vec::new())
                    }
                    // Redis could not say: the replica's own gap notice tells the client.
                    None => (Start::After(ticket.after), Vec::new()),
                };
                return self.admit_replayed(now, ticket.conn.slot, &ticket.room, start, frames);
            }
        }
        Ok(())
    }

    fn is_waiting(&self, key: ConnKey) -> bool {
        self.conns
            .get(key.slot as usize)
            .and_then(|c| c.as_deref())
            .is_some_and(|c| c.serial == key.serial && c.state == State::Waiting)
    }

    fn outbox_full(&self) -> bool {
        self.outbox.iter().any(|q| q.len() >= OUTBOX_MAX)
    }

    /// Sequences a message of a room this shard owns and hands the frame to every other
    /// shard. With an idempotency key seen within the window: the first publish's id, and
    /// nothing sequenced.
    fn sequence(
        &mut self,
        now: Instant,
        room: &Arc<str>,
        data: &[u8],
        idempotency_key: Option<&str>,
    ) -> Result<EventId, PublishRefusal> {
        let window = self.config.idempotency_window;
        if let Some(key) = idempotency_key {
            if let Some(id) = self.idempotency.handle_publish(now, window, room, key) {
                return Ok(id);
            }
        }
        if self.stopping() {
            self.count_rejection(Rejection::Draining);
            return Err(Rejection::Draining.into());
        }
        if self.outbox_full() {
            self.count_rejection(Rejection::ShardQueues);
            return Err(Rejection::ShardQueues.into());
        }
        // The stamp is read now rather than at the start of the turn: a turn can be long.
        let stamp = if self.config.latency_metrics {
            self.clock.now_unix_nanos(Instant::now())
        } else {
            0
        };
        let (id, frame) = match self.fanout.handle_publish_stamped(now, stamp, room, data) {
            Ok(sequenced) => sequenced,
            Err(_) => {
                self.count_rejection(Rejection::RoomLimit);
                return Err(Rejection::RoomLimit.into());
            }
        };
        for target in 0..self.shards {
            if target != self.index {
                self.outbox[target].push_back(Mail::Frame {
                    room: room.clone(),
                    incarnation: id.epoch,
                    id: id.seq,
                    frame: frame.clone(),
                    stamp_unix_nanos: stamp,
                });
            }
        }
        if let Some(key) = idempotency_key {
            self.idempotency.record(now, room, key, id);
        }
        Ok(id)
    }

    fn reply_to(&self, slot: u32, index: u32) -> ReplyTo {
        ReplyTo {
            shard: self.index as u32,
            conn: self.key(slot),
            index,
        }
    }

    fn publish_one(
        &mut self,
        now: Instant,
        slot: u32,
        room: String,
        body: Vec<u8>,
        idempotency_key: Option<String>,
    ) -> std::io::Result<()> {
        let room: Arc<str> = Arc::from(room);
        if self.backlogged() {
            self.count_rejection(Rejection::PendingWriteBytes);
            return self.finish_publish(slot, &room, Err(Rejection::PendingWriteBytes.into()));
        }
        if self.cluster.is_some() {
            return self.cluster_publish(now, slot, room, Bytes::from(body), idempotency_key);
        }
        let owner = owner_shard(&room, self.shards);
        if owner == self.index {
            let result = self.sequence(now, &room, &body, idempotency_key.as_deref());
            return self.finish_publish(slot, &room, result);
        }
        if self.outbox_full() {
            self.count_rejection(Rejection::ShardQueues);
            return self.finish_publish(slot, &room, Err(Rejection::ShardQueues.into()));
        }
        let reply = self.reply_to(slot, 0);
        self.outbox[owner].push_back(Mail::Publish {
            room: room.clone(),
            data: Bytes::from(body),
            reply,
            idempotency_key: idempotency_key.map(crate::app::idempotency::MailKey::new),
        });
        if let Some(conn) = self.conn(slot) {
            conn.state = State::Waiting;
            conn.outstanding = 1;
            conn.pending = Some(Pending::Publish { room, result: None });
        }
        Ok(())
    }

    fn finish_publish(
        &mut self,
        slot: u32,
        room: &str,
        result: Result<EventId, PublishRefusal>,
    ) -> std::io::Result<()> {
        let close = self.conn(slot).is_none_or(|c| !c.keep_alive);
        let response = match result {
            Ok(id) => http1::response(
                201,
                "application/json",
                "",
                format!("{{\"id\":\"{id}\"}}").as_bytes(),
                close,
            ),
            Err(reason) => {
                tracing::debug!(shard = self.index, room, %reason, "publish refused");
                http1::response(
                    503,
                    "text/plain",
                    "Retry-After: 1\r\n",
                    format!("{reason}\n").as_bytes(),
                    close,
                )
            }
        };
        self.respond(slot, response)
    }

    /// `grant`: what the request's token allows, when `--publish-key` is set; lines for
    /// other rooms fail alone (counted as `room_forbidden`).
    fn publish_batch(
        &mut self,
        now: Instant,
        slot: u32,
        body: &[u8],
        grant: Option<&crate::upstream::jwt::Grant>,
    ) -> std::io::Result<()> {
        if self.backlogged() {
            self.count_rejection(Rejection::PendingWriteBytes);
            return self.finish_publish(slot, "(batch)", Err(Rejection::PendingWriteBytes.into()));
        }
        let mut results = Vec::new();
        let mut outstanding = 0;
        for (number, line) in batch::lines(body) {
            if results.len() >= BATCH_LINES_MAX {
                results.push(BatchLine::Done(Err(format!(
                    "line {number}: batch over {BATCH_LINES_MAX} lines"
                ))));
                break;
            }
            let batch::Line {
                room,
                data,
                idempotency_key,
            } = match batch::parse_line(line) {
                Ok(line) => line,
                Err(reason) => {
                    results.push(BatchLine::Done(Err(format!("line {number}: {reason}"))));
                    continue;
                }
            };
            if grant.is_some_and(|grant| !grant.allows(&room)) {
                self.count_refusal(RefusalReason::RoomForbidden);
                let text = crate::upstream::jwt::TokenError::Forbidden.text();
                results.push(BatchLine::Done(Err(format!("line {number}: {text}"))));
                continue;
            }
            let room: Arc<str> = Arc::from(room);
            let owner = owner_shard(&room, self.shards);
            if self.cluster.is_some() {
                let ticket = self.cluster_ticket(slot, results.len() as u32);
                let data = Bytes::from(data.into_bytes());
                match self.cluster_append(now, ticket, room, data, idempotency_key) {
                    Ok(()) => {
                        results.push(BatchLine::Waiting);
                        outstanding += 1;
                    }
                    Err(reason) => results.push(BatchLine::Done(Err(reason.to_string()))),
                }
            } else if owner == self.index {
                let result = self
                    .sequence(now, &room, data.as_bytes(), idempotency_key.as_deref())
                    .map_err(|reason| reason.to_string());
                results.push(BatchLine::Done(result));
            } else if self.outbox_full() {
                self.count_rejection(Rejection::ShardQueues);
                results.push(BatchLine::Done(Err(Rejection::ShardQueues
                    .text()
                    .to_owned())));
            } else {
                let reply = self.reply_to(slot, results.len() as u32);
                self.outbox[owner].push_back(Mail::Publish {
                    room,
                    data: Bytes::from(data.into_bytes()),
                    reply,
                    idempotency_key: idempotency_key.map(crate::app::idempotency::MailKey::new),
                });
                results.push(BatchLine::Waiting);
                outstanding += 1;
            }
        }
        if let Some(conn) = self.conn(slot) {
            conn.pending = Some(Pending::Batch { results });
            conn.outstanding = outstanding;
            conn.state = State::Waiting;
        }
        if outstanding == 0 {
            return self.complete_pending(slot);
        }
        Ok(())
    }

    fn room_info(&mut self, slot: u32, room: String) -> std::io::Result<()> {
        let room: Arc<str> = Arc::from(room);
        let info = self.fanout.room_info(&room);
        let (subscribers, last_id, history_len) =
            info.map_or((0, None, 0), |i| (i.subscribers, i.last_id, i.history_len));
        let mut outstanding = 0;
        for target in 0..self.shards {
            if target != self.index {
                let reply = self.reply_to(slot, 0);
                self.outbox[target].push_back(Mail::RoomQuery {
                    room: room.clone(),
                    reply,
                });
                outstanding += 1;
            }
        }
        if let Some(conn) = self.conn(slot) {
            conn.pending = Some(Pending::RoomInfo {
                room,
                subscribers,
                last_id,
                history_len,
            });
            conn.outstanding = outstanding;
            conn.state = State::Waiting;
        }
        if outstanding == 0 {
            return self.complete_pending(slot);
        }
        Ok(())
    }

    fn complete_pending(&mut self, slot: u32) -> std::io::Result<()> {
        let Some(conn) = self.conn(slot) else {
            return Ok(());
        };
        let close = !conn.keep_alive;
        conn.state = State::Reading;
        let Some(pending) = conn.pending.take() else {
            return Ok(());
        };
        let response = match pending {
            Pending::Publish { room, result } => {
                return self.finish_publish(
                    slot,
                    &room,
                    result.unwrap_or(Err(PublishRefusal::NoAnswer)),
                );
            }
            Pending::Batch { results } => {
                let items: Vec<serde_json::Value> = results
                    .into_iter()
                    .map(|line| match line {
                        BatchLine::Done(Ok(id)) => serde_json::json!({ "id": id.to_string() }),
                        BatchLine::Done(Err(error)) => serde_json::json!({ "error": error }),
                        BatchLine::Waiting => serde_json::json!({ "error": "no answer" }),
                    })
                    .collect();
                let body = serde_json::json!({ "results": items }).to_string();
                http1::response(200, "application/json", "", body.as_bytes(), close)
            }
            Pending::RoomInfo {
                room,
                subscribers,
                last_id,
                history_len,
            } => {
                let last_id = last_id.map(|id| id.to_string());
                let body = serde_json::json!({ "room": &*room, "subscribers": subscribers, "last_id": last_id, "history_len": history_len }).to_string();
                http1::response(200, "application/json", "", body.as_bytes(), close)
            }
        };
        self.respond(slot, response)
    }

    fn drain_mail(&mut self, now: Instant) {
        for _ in 0..MAIL_PER_TURN {
            let Some(mail) = self.shared.mesh.companion_queue(self.index).pop() else {
                break;
            };
            if let Err(err) = self.on_mail(now, mail) {
                tracing::warn!(shard = self.index, %err, "companion mail handling failed");
            }
        }
        for from in 0..self.shards {
            if from == self.index {
                continue;
            }
            for _ in 0..MAIL_PER_TURN {
                let Some(mail) = self.shared.mesh.queue(from, self.index).pop() else {
                    break;
                };
                if let Err(err) = self.on_mail(now, mail) {
                    tracing::warn!(shard = self.index, %err, "mail handling failed");
                }
            }
        }
    }

    fn on_mail(&mut self, now: Instant, mail: Mail) -> std::io::Result<()> {
        match mail {
            Mail::VirtualOpen { request, sink, .. } => {
                return self.open_virtual(now, request, sink);
            }
            Mail::VirtualWriteDone { sink } => {
                let Some(key) = sink.key() else {
                    return Ok(());
                };
                let Some(wrote) = self
                    .conn_by_key(key)
                    .and_then(|conn| conn.pipe.on_virtual_written())
                else {
                    return Ok(());
                };
                return self.after_write(now, key.slot, wrote);
            }
            Mail::VirtualClose { sink } => {
                let Some(key) = sink.key() else {
                    return Ok(());
                };
                if self.conn_by_key(key).is_some() {
                    return self.begin_close(key.slot);
                }
            }
            Mail::Publish {
                room,
                data,
                reply,
                idempotency_key,
            } => {
                let key = idempotency_key
                    .as_ref()
                    .map(crate::app::idempotency::MailKey::as_str);
                let result = self.sequence(now, &room, &data, key);
                self.outbox[reply.shard as usize].push_back(Mail::Sequenced { reply, result });
            }
            Mail::Frame {
                room,
                incarnation,
                id,
                frame,
                stamp_unix_nanos,
            } => {
                self.fanout.handle_frame_replica(
                    now,
                    stamp_unix_nanos,
                    &room,
                    incarnation,
                    id,
                    frame,
                );
            }
            Mail::Presence { room, subscribed } => {
                self.fanout.handle_presence(now, &room, subscribed);
            }
            Mail::RoomQuery { room, reply } => {
                let info = self.fanout.room_info(&room);
                let (subscribers, last_id, history_len) =
                    info.map_or((0, None, 0), |i| (i.subscribers, i.last_id, i.history_len));
                self.outbox[reply.shard as usize].push_back(Mail::RoomCount {
                    reply,
                    subscribers,
                    last_id,
                    history_len,
                });
            }
            Mail::Sequenced { reply, result } => {
                let Some(conn) = self.conn_by_key(reply.conn) else {
                    return Ok(());
                };
                match &mut conn.pending {
                    Some(Pending::Publish {
                        result: slot_result,
                        ..
                    }) => *slot_result = Some(result),
                    Some(Pending::Batch { results }) => {
                        if let Some(line) = results.get_mut(reply.index as usize) {
                            *line = BatchLine::Done(result.map_err(|r| r.to_string()));
                        }
                    }
                    _ => return Ok(()),
                }
                assert!(conn.outstanding > 0, "a reply nobody waits for");
                conn.outstanding -= 1;
                if conn.outstanding == 0 {
                    return self.complete_pending(reply.conn.slot);
                }
            }
            Mail::RoomCount {
                reply,
                subscribers,
                last_id,
                history_len,
            } => {
                let Some(conn) = self.conn_by_key(reply.conn) else {
                    return Ok(());
                };
                if let Some(Pending::RoomInfo {
                    subscribers: total,
                    last_id: last_max,
                    history_len: history_max,
                    ..
                }) = &mut conn.pending
                {
                    *total += subscribers;
                    *last_max = (*last_max).max(last_id);
                    *history_max = (*history_max).max(history_len);
                    assert!(conn.outstanding > 0, "a count nobody waits for");
                    conn.outstanding -= 1;
                    if conn.outstanding == 0 {
                        return self.complete_pending(reply.conn.slot);
                    }
                }
            }
        }
        Ok(())
    }

    fn flush_outbox(&mut self) -> std::io::Result<()> {
        for target in 0..self.shards {
            let queue = self.shared.mesh.queue(self.index, target);
            let mut pushed = false;
            while let Some(mail) = self.outbox[target].pop_front() {
                match queue.push(mail) {
                    Ok(()) => pushed = true,
                    Err(mail) => {
                        self.outbox[target].push_front(mail);
                        break;
                    }
                }
            }
            if pushed {
                self.wake_pending[target] = true;
            }
        }
        for target in 0..self.shards {
            if std::mem::take(&mut self.wake_pending[target]) {
                let fd = self.shared.mesh.eventfd(target);
                self.ring.write_eventfd(target as u64, fd);
            }
        }
        Ok(())
    }

    /// Hands up to `write_budget` fan-out actions to the ring; returns how many.
    fn write_out(&mut self, now: Instant) -> std::io::Result<usize> {
        let budget = self.config.write_budget;
        let stamped = self.config.latency_metrics;
        let mut used = 0;
        while used < budget {
            let mut frames = std::mem::take(&mut self.scratch);
            frames.clear();
            self.stamp_scratch.clear();
            let action = if stamped {
                self.fanout
                    .poll_action_stamped(now, &mut frames, &mut self.stamp_scratch)
            } else {
                self.fanout.poll_action(now, &mut frames)
            };
            match action {
                None => {
                    self.scratch = frames;
                    break;
                }
                Some(Action::Write { conn }) => {
                    self.start_write(conn.0, &mut frames)?;
                    if !self.stamp_scratch.is_empty() {
                        self.attach_stamps(conn.0);
                    }
                }
                Some(Action::Close { conn, reason }) => {
                    tracing::debug!(
                        shard = self.index,
                        conn = conn.0,
                        ?reason,
                        "closing subscriber"
                    );
                    let writable = self
                        .conn(conn.0)
                        .is_some_and(|c| !c.pipe.writing() && c.state == State::Streaming);
                    if writable && !frames.is_empty() {
                        if let Some(c) = self.conn(conn.0) {
                            c.close_after_write = true;
                        }
                        self.start_write(conn.0, &mut frames)?;
                    } else {
                        self.begin_close(conn.0)?;
                    }
                }
            }
            self.scratch = frames;
            used += 1;
        }
        Ok(used)
    }

    /// Hands the stamps of the write just started on `slot` to the connection, which
    /// records their latency when the write completes.
    fn attach_stamps(&mut self, slot: u32) {
        let Some(conn) = slot_mut(&mut self.conns, slot).filter(|c| c.pipe.writing()) else {
            self.stamp_scratch.clear();
            return;
        };
        debug_assert!(conn.stamps.is_empty(), "one write in flight per connection");
        if conn.stamps.capacity() == 0 {
            conn.stamps = self.stamp_vecs.pop().unwrap_or_default();
        }
        conn.stamps.clear();
        std::mem::swap(&mut conn.stamps, &mut self.stamp_scratch);
    }

    /// Starts one write of `frames` (taken) on `slot`.
    fn start_write(&mut self, slot: u32, frames: &mut Vec<Bytes>) -> std::io::Result<()> {
        let Some(conn) = slot_mut(&mut self.conns, slot) else {
            frames.clear();
            return Ok(());
        };
        if conn.state == State::Closing {
            frames.clear();
            return Ok(());
        }
        let frames = std::mem::replace(frames, self.frame_vecs.pop().unwrap_or_default());
        let len = frames.iter().map(Bytes::len).sum();
        let key = ConnKey {
            slot,
            serial: conn.serial,
        };
        let started = conn.pipe.start_write(
            &mut self.ring,
            key.to_word(),
            frames,
            len,
            &mut self.tls_out_pool,
        );
        if started.is_err() {
            debug_assert!(false, "one write in flight per virtual connection");
            return self.begin_close(slot);
        }
        self.pending_write_bytes += len;
        Ok(())
    }

    /// A ring write of a connection completed (a plain writev, a TLS send).
    fn on_write(&mut self, now: Instant, c: Completion) -> std::io::Result<()> {
        let Some(key) = ConnKey::from_word(c.key) else {
            return Ok(());
        };
        let Some(conn) =
            slot_mut(&mut self.conns, key.slot).filter(|conn| conn.serial == key.serial)
        else {
            // The connection went first: the ring kept the frames until now.
            self.recycle(c.held);
            return Ok(());
        };
        if conn.state == State::Closing {
            let held = conn.pipe.settle(c);
            self.recycle(held);
            return Ok(());
        }
        let wrote = conn
            .pipe
            .on_write(&mut self.ring, c, &mut self.tls_out_pool);
        self.after_write(now, key.slot, wrote)
    }

    /// Moves a connection on after its write made progress, went whole or failed.
    fn after_write(&mut self, now: Instant, slot: u32, wrote: Wrote) -> std::io::Result<()> {
        match wrote {
            Wrote::Progress { credited } => {
                self.pending_write_bytes -= credited;
                Ok(())
            }
            Wrote::Done { credited, frames } => {
                self.pending_write_bytes -= credited;
                self.recycle_frames(frames);
                self.write_complete(now, slot)
            }
            Wrote::Idle => {
                let linger = self
                    .conn(slot)
                    .is_some_and(|conn| conn.pipe.take_linger_after_send());
                if linger {
                    return self.linger(now, slot);
                }
                Ok(())
            }
            // The peer is gone: the write is forgotten by the close.
            Wrote::Failed => self.begin_close(slot),
        }
    }

    /// A write was delivered whole: records its latency samples, hands its vectors back
    /// to the shard, and moves the connection on (next request, fan-out, linger, close).
    fn write_complete(&mut self, now: Instant, slot: u32) -> std::io::Result<()> {
        let Some(conn) = slot_mut(&mut self.conns, slot) else {
            return Ok(());
        };
        // Delivered: one latency sample per message frame the write carried.
        for &stamp in &conn.stamps {
            if stamp != 0 {
                // Saturating: the stamp may come from another shard's clock, read a turn
                // later than this one's (clock.rs), a few microseconds ahead.
                self.latency_turn
                    .record(self.now_unix.saturating_sub(stamp));
            }
        }
        if conn.stamps.capacity() != 0 {
            conn.stamps.clear();
            if self.stamp_vecs.len() < STAMP_VECS_POOLED_MAX
                && conn.stamps.capacity() <= ringcast_core::fanout::WRITE_FRAMES_MAX
            {
                self.stamp_vecs.push(std::mem::take(&mut conn.stamps));
            } else {
                conn.stamps = Vec::new();
            }
        }
        if conn.close_after_write {
            return self.begin_close(slot);
        }
        if std::mem::take(&mut conn.interim) {
            // `100 Continue` is out: read the body.
            return self.process(now, slot);
        }
        match conn.state {
            State::Streaming => {
                self.fanout.handle_write_done(now, ConnId(slot));
                Ok(())
            }
            State::Lingering if conn.pipe.is_virtual() => self.begin_close(slot),
            State::Lingering if conn.pipe.is_tls() => self.tls_linger(now, slot),
            State::Lingering => self.linger(now, slot),
            State::Reading => {
                if !conn.keep_alive {
                    return self.begin_close(slot);
                }
                let limits = self.limits();
                if let Some(conn) = self.conn(slot) {
                    conn.reader.handle_answered(now, conn.buf.len(), &limits);
                }
                self.sync_timer(slot);
                self.process(now, slot)
            }
            State::Waiting | State::Closing => Ok(()),
        }
    }

    /// After a refusal was written: half-closes and reads (into the discard buffer) until
    /// the client closes or `LINGER` passes, so the client reads the answer, not a reset.
    fn linger(&mut self, now: Instant, slot: u32) -> std::io::Result<()> {
        let Some(conn) = self.conn(slot) else {
            return Ok(());
        };
        conn.pipe.shutdown_write();
        self.arm_linger(now, slot);
        self.post_recv(slot)
    }

    fn respond(&mut self, slot: u32, response: Bytes) -> std::io::Result<()> {
        let head_only = self.conn(slot).is_some_and(|conn| conn.head_request);
        let mut frames = std::mem::take(&mut self.scratch);
        frames.clear();
        frames.push(if head_only {
            http1::head_only(&response)
        } else {
            response
        });
        let result = self.start_write(slot, &mut frames);
        self.scratch = frames;
        result
    }

    /// Writes a refusal, then lingers: reads until the client closes so it gets the
    /// answer rather than a reset.
    fn refuse(&mut self, slot: u32, refusal: &Refusal) -> std::io::Result<()> {
        tracing::debug!(shard = self.index, conn = slot, status = refusal.status, reason = %refusal.reason, "request refused");
        self.refuse_with(slot, http1::refusal(refusal, true))
    }

    /// [`Self::refuse`] with a response already rendered (e.g. a computed `Retry-After`).
    fn refuse_with(&mut self, slot: u32, response: Bytes) -> std::io::Result<()> {
        self.cancel_timer(slot);
        let Some(conn) = self.conn(slot) else {
            return Ok(());
        };
        conn.reader.finish();
        if conn.pipe.handshaking() {
            // No TLS session to write the answer in: close (the caller counted why).
            return self.begin_close(slot);
        }
        conn.state = State::Lingering;
        // A receive of the request still in flight ends now (what it brings is dropped).
        conn.pipe.shutdown_read();
        conn.buf = Vec::new();
        self.respond(slot, response)
    }

    /// Closes a connection: its write in progress is forgotten, and its pipe closes
    /// (on the ring, or at once for a virtual one). Ops still in flight complete on their
    /// own and keep their memory until then; the slot is released at the close's
    /// completion.
    fn begin_close(&mut self, slot: u32) -> std::io::Result<()> {
        self.cancel_timer(slot);
        let Some(conn) = slot_mut(&mut self.conns, slot) else {
            return Ok(());
        };
        if conn.state == State::Closing {
            return Ok(());
        }
        let was_streaming = conn.state == State::Streaming;
        conn.state = State::Closing;
        let key = ConnKey {
            slot,
            serial: conn.serial,
        };
        let forgotten = conn.pipe.forget_write();
        if forgotten.is_some() {
            // Abandoned: nothing more of it will be written, and nothing was delivered.
            conn.stamps.clear();
        }
        let closing = conn.pipe.close(&mut self.ring, key.to_word());
        let virtual_conn = conn.pipe.is_virtual();
        if let Some((remaining, frames)) = forgotten {
            self.pending_write_bytes -= remaining;
            self.recycle_frames(frames);
        }
        if was_streaming {
            self.fanout.handle_disconnect(ConnId(slot));
        }
        if closing == Closing::Done {
            if virtual_conn {
                self.virtual_live -= 1;
            }
            self.on_closed(key.to_word());
        }
        Ok(())
    }

    /// A connection's close completed (or it had nothing to close): its slot is free.
    fn on_closed(&mut self, key: u64) {
        let Some(key) = ConnKey::from_word(key) else {
            return;
        };
        let slot = key.slot;
        let open = self
            .conns
            .get_mut(slot as usize)
            .filter(|conn| conn.as_ref().is_some_and(|conn| conn.serial == key.serial));
        if let Some(conn) = open.and_then(Option::take) {
            debug_assert!(
                conn.timer.is_none(),
                "a released connection holds no ticker"
            );
            if let Some(ip) = conn.peer {
                self.shared.per_ip.release(ip);
            }
            if conn.pipe.is_tls() {
                self.tls_live -= 1;
                self.shared.figures[self.index].transport_closed(Transport::Tls);
            }
            self.live -= 1;
            self.free.push(slot);
            for pacer in &mut self.accept_pacers {
                pacer.handle_descriptor_freed();
            }
        }
    }

    // HTTP/1.1 over TLS on the ring (tls_conn.rs, docs/TRANSPORTS.md): the ring receives
    // and sends ciphertext; rustls turns it into the request buffer's plaintext and the
    // writes' frames into one send buffer per connection.

    /// Counts a TLS connection's outcome (`ringcast_tls_handshakes_total`).
    fn count_tls_handshake(&self, outcome: TlsHandshake) {
        self.shared.figures[self.index].add_tls_handshake(outcome);
    }

    /// Closes a TLS connection whose handshake or records failed (an alert rustls made is
    /// sent first, without waiting for the peer), counted by `reason`.
    fn fail_tls(&mut self, slot: u32, reason: RefusalReason) -> std::io::Result<()> {
        self.count_refusal(reason);
        let Some(conn) = self.conn(slot) else {
            return Ok(());
        };
        let established = conn.pipe.established();
        conn.pipe.fail_tls();
        if !established {
            self.count_tls_handshake(TlsHandshake::Failed);
        }
        tracing::debug!(
            shard = self.index,
            conn = slot,
            reason = reason.label(),
            "TLS connection closed"
        );
        self.begin_close(slot)
    }

    /// Hands a connection whose client offers ALPN `h2` to the companion thread, with the
    /// bytes read so far; its slot is released without closing the fd (the companion owns
    /// it now, and the per-address count until it closes). A full queue closes it.
    fn hand_off_h2(&mut self, slot: u32) -> std::io::Result<()> {
        self.cancel_timer(slot);
        let Some(conn) = slot_mut(&mut self.conns, slot) else {
            return Ok(());
        };
        let Some(fd) = conn.pipe.take_fd() else {
            return self.begin_close(slot);
        };
        let handoff = crate::mesh::mail::TlsHandOff {
            fd,
            hello: std::mem::take(&mut conn.buf),
            peer: conn.peer,
        };
        let sent = match self.shared.tls_handoff.get(self.index) {
            Some(queue) => queue.try_send(handoff).map_err(|err| err.into_inner()),
            None => Err(handoff),
        };
        match sent {
            Ok(()) => {
                self.count_tls_handshake(TlsHandshake::H2);
                if let Some(conn) = self.conns.get_mut(slot as usize).and_then(Option::take) {
                    debug_assert!(conn.timer.is_none());
                    self.tls_live -= 1;
                    self.shared.figures[self.index].transport_closed(Transport::Tls);
                    self.live -= 1;
                    self.free.push(slot);
                }
                Ok(())
            }
            Err(handoff) => {
                if let Some(conn) = self.conn(slot) {
                    conn.pipe.restore_fd(handoff.fd);
                }
                tracing::debug!(
                    shard = self.index,
                    conn = slot,
                    "companion queue full: h2 connection closed"
                );
                self.count_rejection(Rejection::ShardQueues);
                self.count_tls_handshake(TlsHandshake::Failed);
                self.begin_close(slot)
            }
        }
    }

    /// Starts the next send of a TLS connection unless one is in flight (pipe.rs);
    /// returns whether a send is in flight afterwards.
    fn tls_flush(&mut self, slot: u32) -> std::io::Result<bool> {
        let Some(conn) = slot_mut(&mut self.conns, slot) else {
            return Ok(false);
        };
        let key = ConnKey {
            slot,
            serial: conn.serial,
        };
        Ok(conn
            .pipe
            .flush(&mut self.ring, key.to_word(), &mut self.tls_out_pool))
    }

    /// A refusal was written over TLS: `close_notify`, then half-close and linger as a
    /// plain connection does.
    fn tls_linger(&mut self, now: Instant, slot: u32) -> std::io::Result<()> {
        let Some(conn) = slot_mut(&mut self.conns, slot) else {
            return Ok(());
        };
        let key = ConnKey {
            slot,
            serial: conn.serial,
        };
        conn.pipe.set_linger_after_send(true);
        if conn
            .pipe
            .close_notify(&mut self.ring, key.to_word(), &mut self.tls_out_pool)
        {
            return Ok(()); // `after_write` lingers once it is sent
        }
        conn.pipe.set_linger_after_send(false);
        self.linger(now, slot)
    }

    /// Tells each room's owner shard when this shard's subscribers of it come and go, so
    /// the owner never frees a room followed here (single-node mode; in cluster mode every
    /// node follows the broker and no shard owns a room).
    fn forward_presence(&mut self) {
        while let Some(presence) = self.fanout.poll_presence() {
            if self.cluster.is_some() {
                continue;
            }
            let owner = owner_shard(&presence.room, self.shards);
            if owner != self.index {
                self.outbox[owner].push_back(Mail::Presence {
                    room: presence.room,
                    subscribed: presence.subscribed,
                });
            }
        }
    }

    /// Lets go of what is kept for rooms the fan-out freed: in cluster mode, the follower
    /// stops sending this shard their frames and unfollows a room no shard holds.
    fn release_freed_rooms(&mut self) {
        while let Some(room) = self.fanout.poll_freed() {
            if let Some(cluster) = self.cluster.as_mut() {
                cluster.unfollow(&room);
            }
        }
    }

    fn publish_figures(&mut self, now: Instant) {
        let figures = &self.shared.figures[self.index];
        if self.latency_turn.count() != 0 {
            figures.add_latency(self.now_unix, &self.latency_turn);
            self.latency_turn.clear();
        }
        if now >= self.room_sizes_at {
            // O(rooms), so once a second rather than per turn.
            self.room_sizes_at = now + ROOM_SIZES_PERIOD;
            let mut counts = [0u64; ROOM_SIZE_LABELS.len()];
            for subscribers in self.fanout.room_sizes() {
                counts[crate::metrics::room_size_bucket(subscribers)] += 1;
            }
            figures.set_room_sizes(&counts);
            // Same period: give back what a burst left in this thread's heap.
            crate::runtime::memory::collect();
        }
        for reason in Rejection::ALL {
            figures.set_rejections(reason, self.rejections[reason as usize]);
        }
        figures.set(Figure::PendingWriteBytes, self.pending_write_bytes as u64);
        figures.set(Figure::ConfigGeneration, self.generation);
        let stats = self.fanout.stats();
        let ring = self.ring.stats();
        figures.set(
            Figure::Connections,
            (self.live - self.virtual_live - self.tls_live) as u64,
        );
        figures.set(Figure::Subscribers, self.fanout.subscribers_live() as u64);
        figures.set(
            Figure::Tickers,
            (self.fanout.tickers_live() + self.timers.len()) as u64,
        );
        figures.set(Figure::Rooms, self.fanout.rooms_len() as u64);
        figures.set_rooms_freed([
            stats.rooms_freed_idle_total,
            stats.rooms_freed_evicted_total,
        ]);
        figures.set(Figure::Publishes, stats.publishes_total);
        figures.set(Figure::Deliveries, stats.deliveries_total);
        figures.set(Figure::Writes, stats.writes_total);
        figures.set(Figure::BytesWritten, self.bytes_written);
        figures.set(Figure::SlowCuts, stats.slow_cuts_total);
        figures.set(Figure::Gaps, stats.gaps_total);
        figures.set(Figure::Resets, stats.resets_total);
        figures.set(Figure::Heartbeats, stats.heartbeats_total);
        figures.set(Figure::SqFull, ring.sq_full_total);
        figures.set(Figure::CqOverflow, ring.cq_overflow_total);
        figures.set(Figure::DirtyQueue, self.fanout.dirty_len() as u64);
        figures.idempotency.publish(&self.idempotency);
    }
}
