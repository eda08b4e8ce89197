//! Cluster mode (`--cluster-redis URL`): many nodes share rooms through Redis Streams
//! (docs/CLUSTER.md). Without the flag nothing here runs.
//!
//! - **Publish**: the shard that read the request hands an `XADD ringcast:{room} MAXLEN ~
//!   <history> * data … stamp …` to a publisher thread (one bounded queue per thread; a
//!   room always goes to the same thread, so one node's publishes to a room keep their
//!   order). The publisher is answered `201 {"id":…}` only once Redis answered; an error, a
//!   timeout, a full queue or an open breaker answer `503` + `Retry-After`, whose body says
//!   whether nothing was appended (not sent) or the outcome is unknown (sent, no answer).
//! - **Idempotency keys**: a publish with a key runs [`APPEND_ONCE_LUA`] instead, which
//!   appends and stores the key with the entry's id (`SET … PX <window>`) in one atomic
//!   step, or returns the id stored for the key: a retry within the window, on any node,
//!   even while the first is still queued in Redis, gets the first id (idempotency.rs).
//! - **Ids**: clients see the stream id `ms-seq` itself (SSE `id:`, publish answers);
//!   shards keep it packed as `ms << 20 | seq` (a `u64`: increasing, the same on every node,
//!   decoded back for `XRANGE`/`XREAD`; ringcast_core::event_id).
//! - **Follow**: one follower thread per node reads (`XREAD BLOCK`) the streams of the rooms
//!   this node has subscribers for and hands every entry, the node's own publishes
//!   included, to every shard as a frame: one order, the stream's, on every node. The first
//!   subscriber of a room on a shard waits until the follower has primed that shard's
//!   replica from the stream's tail (`XREVRANGE … COUNT <history>`). Frames go to the shards
//!   that hold the room; a shard that frees its replica (idle for `--room-idle-timeout`, or
//!   evicted at `--max-rooms`) lets go, and the room is unfollowed when no shard holds it.
//!   Followed rooms so count against the cap: a subscribe to a new room when every local
//!   room has a subscriber is refused before anything is followed.
//! - **Resume**: a `Last-Event-ID` older than the local replica is replayed from `XRANGE`
//!   (no gap notice) when the stream still holds it; a gap notice says what it no longer holds.
//!   One above the replica's head is kept when the stream has it (this node has not read it
//!   yet) and reset (`event: reset`, then everything held) when it is beyond the stream's
//!   last id; bare numbers and ids that do not fit are reset at once.
//! - **Outage**: connection errors mark Redis down (`/readyz` 503 "redis unreachable"),
//!   publishes fail fast through each shard's circuit breaker, subscribers stay connected,
//!   and the follower reconnects and goes on from the last id it read.
//!
//! Nothing here runs on a shard loop: shards talk to the threads through bounded queues and
//! are woken through their eventfd, as the authorization callback does (auth.rs).

mod follower;
mod publisher;
mod resp;

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use follower::Follower;
use publisher::*;
use redis::Value;
use resp::*;
use ringcast_core::breaker::{BreakerConfig, BreakerState, CircuitBreaker, Outcome, Permit};
use ringcast_core::event_id::EventId;
use ringcast_core::frame::Frame;
use ringcast_core::metrics::Exposition;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// Publisher threads (each with its own Redis connection). Two keep one slow reply from
/// stalling every room; each pipelines up to [`PIPELINE_MAX`] commands per round trip.
pub const PUBLISHERS: usize = 2;
/// Publishes waiting for one publisher thread; past it publishes get 503 "redis queue full".
pub const PUBLISH_QUEUE_MAX: usize = 4096;
/// Commands one publisher sends in one pipeline.
pub const PIPELINE_MAX: usize = 256;
/// Calls one shard may have out: what the queues and pipelines hold, so a shard's reply
/// queue (of this capacity) is never full.
pub const SHARD_IN_FLIGHT_MAX: usize = PUBLISHERS * (PUBLISH_QUEUE_MAX + PIPELINE_MAX + 1);
/// Frames and notices waiting for one shard; when full the follower waits (it never drops).
pub const SHARD_MAIL_MAX: usize = 65_536;
/// Entries one `XREAD` takes per stream.
pub const READ_COUNT: usize = 1024;
/// A reply with this many entries for one stream (or this node's history, if smaller) makes
/// the follower ask Redis whether entries it never read were trimmed: a stream capped at
/// `N` ≥ this (every node's `--history` normally is) cannot lose unread entries otherwise.
pub const TRIM_CHECK_ENTRIES: usize = 16;
/// Streams in one `XREAD`: more rooms are read in several non-blocking calls.
pub const STREAMS_PER_READ: usize = 1024;
/// `XREAD BLOCK` milliseconds: also how long a new room waits at most before it is primed.
pub const BLOCK_MS: u64 = 100;
/// Entries one resume replays from `XRANGE` at most; beyond, a gap notice says the rest.
pub const REPLAY_MAX: usize = 4096;
/// Default `--cluster-timeout`: longest a Redis call may take, queueing included.
pub const TIMEOUT_DEFAULT: Duration = Duration::from_secs(1);
/// Default breaker window: short, so an outage is noticed within a few publishes.
pub const BREAKER_WINDOW_DEFAULT: Duration = Duration::from_secs(5);
/// Outcomes in the window before the breaker judges.
pub const BREAKER_CALLS_MIN_DEFAULT: u32 = 5;
/// Time the breaker stays open before probing.
pub const BREAKER_OPEN_DEFAULT: Duration = Duration::from_secs(1);
/// Reconnect back-off bounds.
const RECONNECT_MIN: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_millis(500);
/// Connection attempts one connect makes when a system call is interrupted (EINTR).
const CONNECT_ATTEMPTS_MAX: u32 = 3;
/// Bits of a stream id's sequence part in a packed id (ringcast_core::event_id).
pub const SEQ_BITS: u32 = ringcast_core::event_id::STREAM_SEQ_BITS;
const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;

const _: () = assert!(PUBLISHERS >= 1 && PIPELINE_MAX >= 1 && READ_COUNT >= 1);
const _: () = assert!(REPLAY_MAX + 2 <= ringcast_core::fanout::WRITE_FRAMES_MAX * 16);

/// Settings of cluster mode.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// `redis://host:port[/db]`.
    pub url: String,
    /// This node's name (logs, and a `node` field on every entry it appends).
    pub node_id: String,
    /// Longest a publish may wait for Redis, queueing included.
    pub timeout: Duration,
    /// Stream length cap (`MAXLEN ~`) and priming depth: the room history size.
    pub history: usize,
    /// Breaker of each shard.
    pub breaker: BreakerConfig,
}

/// The stream key of a room. The braces are a Redis Cluster hash tag.
pub fn stream_key(room: &str) -> String {
    format!("ringcast:{{{room}}}")
}

fn room_of_key(key: &[u8]) -> Option<&str> {
    let key = std::str::from_utf8(key).ok()?;
    key.strip_prefix("ringcast:{")?.strip_suffix('}')
}

/// The SSE id of a stream id `ms-seq`: `ms << 20 | seq`.
pub fn sse_id(stream_id: &str) -> Option<u64> {
    let (ms, seq) = stream_id.split_once('-')?;
    let (ms, seq): (u64, u64) = (ms.parse().ok()?, seq.parse().ok()?);
    (seq <= SEQ_MASK && ms < (1 << (64 - SEQ_BITS))).then_some(ms << SEQ_BITS | seq)
}

/// The stream id `ms-seq` of an SSE id.
pub fn stream_id(sse_id: u64) -> String {
    format!("{}-{}", sse_id >> SEQ_BITS, sse_id & SEQ_MASK)
}

/// Which publish a call is for; comes back unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// The connection on the shard.
    pub conn: crate::conn::key::ConnKey,
    /// Line of a batch publish (0 for single publishes).
    pub index: u32,
}

/// A resume that needs entries older than the shard's replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayTicket {
    /// The connection on the shard.
    pub conn: crate::conn::key::ConnKey,
    /// Room.
    pub room: Arc<str>,
    /// The client's `Last-Event-ID`.
    pub after: u64,
    /// Oldest id of the replica: the replay stops before it.
    pub before: u64,
    /// `after` is above the replica's head: Redis must say whether the stream has it.
    pub beyond_head: bool,
}

/// What a replay found.
#[derive(Debug)]
pub struct Replay {
    /// A gap notice (first), then frames, to write right after the response head.
    pub frames: Vec<Frame>,
    /// The cursor after them.
    pub after: u64,
    /// The resume id is beyond the stream's last id: it cannot be placed.
    pub beyond_head: bool,
}

/// A publish's idempotency key and how long Redis keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// The key (checked: idempotency::validate_key).
    pub key: Box<str>,
    /// `--idempotency-window` when the publish was read.
    pub window: Duration,
}

/// Appends a message unless its idempotency key is known: `KEYS[1]` the stream,
/// `KEYS[2]` the key's record (same hash tag); `ARGV` the `MAXLEN`, data, stamp, node and
/// window in ms. Returns `{0, id}` for a new entry, `{1, id}` for the first publish's. Atomic
/// (Redis runs a script alone), so two publishes of one key never both append.
pub const APPEND_ONCE_LUA: &str = r"
local first = redis.call('GET', KEYS[2])
if first then return {1, first} end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
  'data', ARGV[2], 'stamp', ARGV[3], 'node', ARGV[4])
redis.call('SET', KEYS[2], id, 'PX', ARGV[5])
return {0, id}
";

/// The Redis key recording an idempotency key of a room: the room's hash tag, so it sits
/// in the stream's slot (Redis Cluster runs a script only on keys of one slot).
pub fn idempotency_record_key(room: &str, key: &str) -> String {
    format!("ringcast:{{{room}}}:idem:{key}")
}

enum Job {
    Publish {
        shard: usize,
        ticket: Ticket,
        room: Arc<str>,
        data: Bytes,
        stamp: u64,
        permit: Permit,
        submitted: Instant,
        idempotency: Option<IdempotencyKey>,
    },
    Replay {
        shard: usize,
        ticket: ReplayTicket,
    },
}

/// What reaches a shard from the cluster threads.
#[derive(Debug)]
pub enum Event {
    /// An entry of a followed room.
    Frame {
        /// Room.
        room: Arc<str>,
        /// SSE id.
        id: u64,
        /// Encoded frame in both forms (SSE, WebSocket), shared by every shard.
        frame: Frame,
        /// The publishing node's process-clock time at publish (Unix ns).
        stamp_unix_nanos: u64,
    },
    /// The room is followed for this shard; its replica starts at `first_id` (none: the
    /// stream was empty) with `frames`, the stream's tail.
    Primed {
        /// Room.
        room: Arc<str>,
        /// Oldest entry primed.
        first_id: Option<u64>,
        /// The tail: `(id, frame, stamp)`, oldest first.
        frames: Vec<(u64, Frame, u64)>,
    },
    /// The room could not be followed (Redis unreachable).
    PrimeFailed {
        /// Room.
        room: Arc<str>,
    },
    /// A publish's outcome: the SSE id, or why it failed.
    Published {
        /// Who waits.
        ticket: Ticket,
        /// Id or reason.
        result: Result<u64, RedisRefusal>,
        /// The id is an earlier publish's, found by its idempotency key.
        replayed: bool,
    },
    /// A replay's outcome.
    Replayed {
        /// Who waits.
        ticket: ReplayTicket,
        /// What to write, or `None` when Redis could not say.
        replay: Option<Replay>,
    },
}

enum Reply {
    Event(Event),
    Publish {
        ticket: Ticket,
        permit: Permit,
        result: Result<Appended, RedisRefusal>,
        latency: Duration,
    },
}

/// What Redis answered to a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Appended {
    id: u64,
    /// The id is the first publish's of the same idempotency key.
    replayed: bool,
}

/// Labels of `ringcast_cluster_publishes_total{result=…}`.
const RESULTS: [&str; 5] = [
    "appended",
    "failed",
    "timed_out",
    "breaker_open",
    "queue_full",
];
const APPENDED: usize = 0;
const FAILED: usize = 1;
const TIMED_OUT: usize = 2;
const BREAKER_OPEN: usize = 3;
const QUEUE_FULL: usize = 4;

#[repr(align(128))]
#[derive(Debug, Default)]
struct ShardFigures {
    breaker: crate::metrics::breakers::BreakerFigures,
    results: [AtomicU64; RESULTS.len()],
}

struct Hub {
    config: ClusterConfig,
    /// Follower → shard (single producer).
    mail: Vec<ArrayQueue<Event>>,
    /// Publishers → shard.
    replies: Vec<ArrayQueue<Reply>>,
    wakers: Vec<File>,
    figures: Vec<ShardFigures>,
    /// The follower's view: its last Redis call succeeded.
    up: AtomicBool,
    errors: AtomicU64,
    rooms_followed: AtomicU64,
    entries_read: AtomicU64,
    /// Times the follower found entries trimmed before it read them (gap notices sent).
    follow_gaps: AtomicU64,
}

impl Hub {
    fn wake(&self, shard: usize) {
        if let Err(err) = (&self.wakers[shard]).write_all(&1u64.to_ne_bytes()) {
            tracing::warn!(shard, %err, "cannot wake shard");
        }
    }

    fn error(&self, what: &str, err: &redis::RedisError) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%err, what, "redis call failed");
    }

    fn connect(&self) -> redis::RedisResult<redis::Connection> {
        let client = redis::Client::open(self.config.url.as_str())?;
        // The handshake reads with a timeout set, so a signal or io_uring task work landing
        // on the thread fails it with EINTR: not Redis being unreachable, so try again.
        let mut attempts = 1;
        let connection = loop {
            match client.get_connection_with_timeout(self.config.timeout) {
                Err(err) if interrupted(&err) && attempts < CONNECT_ATTEMPTS_MAX => attempts += 1,
                result => break result?,
            }
        };
        // XREAD BLOCK holds a reply back for BLOCK_MS: reads may take that much longer.
        connection.set_read_timeout(Some(self.config.timeout + Duration::from_millis(BLOCK_MS)))?;
        connection.set_write_timeout(Some(self.config.timeout))?;
        Ok(connection)
    }
}

/// The cluster threads and their queues; one per process, in `runtime::shared::Shared`.
pub struct ClusterPool {
    hub: Arc<Hub>,
    publishers: Vec<mpsc::SyncSender<Job>>,
    follows: mpsc::Sender<Follow>,
}

/// A shard's request to the follower.
#[derive(Debug)]
enum Follow {
    /// Prime the shard's replica of the room and send it the room's frames.
    Start {
        /// Room.
        room: Arc<str>,
        /// The asking shard.
        shard: usize,
    },
    /// The shard freed its replica: stop sending it frames (and stop following the room
    /// when no shard holds it).
    Stop {
        /// Room.
        room: Arc<str>,
        /// The shard letting go.
        shard: usize,
    },
}

impl std::fmt::Debug for ClusterPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterPool")
            .field("url", &self.hub.config.url)
            .field("node", &self.hub.config.node_id)
            .finish()
    }
}

impl ClusterPool {
    /// Starts the publisher threads and the follower; `wakers[i]` wakes shard `i`.
    pub fn start(config: ClusterConfig, wakers: Vec<OwnedFd>) -> std::io::Result<Self> {
        redis::Client::open(config.url.as_str())
            .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidInput, err))?;
        let shards = wakers.len();
        let hub = Arc::new(Hub {
            config,
            mail: (0..shards)
                .map(|_| ArrayQueue::new(SHARD_MAIL_MAX))
                .collect(),
            replies: (0..shards)
                .map(|_| ArrayQueue::new(SHARD_IN_FLIGHT_MAX))
                .collect(),
            wakers: wakers.into_iter().map(File::from).collect(),
            figures: (0..shards).map(|_| ShardFigures::default()).collect(),
            up: AtomicBool::new(false),
            errors: AtomicU64::new(0),
            rooms_followed: AtomicU64::new(0),
            entries_read: AtomicU64::new(0),
            follow_gaps: AtomicU64::new(0),
        });
        // Known reachable (or not) before the first request, so /readyz and the first
        // subscribes need not wait for the follower's first round.
        match hub.connect() {
            Ok(_) => hub.up.store(true, Ordering::Relaxed),
            Err(err) => tracing::warn!(url = %hub.config.url, %err, "redis unreachable at start"),
        }
        let mut publishers = Vec::with_capacity(PUBLISHERS);
        for index in 0..PUBLISHERS {
            let (sender, receiver) = mpsc::sync_channel(PUBLISH_QUEUE_MAX);
            let hub = hub.clone();
            std::thread::Builder::new()
                .name(format!("redis-pub-{index}"))
                .spawn(move || publisher_thread(&hub, &receiver))?;
            publishers.push(sender);
        }
        let (follows, receiver) = mpsc::channel();
        let follower_hub = hub.clone();
        std::thread::Builder::new()
            .name("redis-follow".into())
            .spawn(move || Follower::new(follower_hub, receiver).run())?;
        Ok(Self {
            hub,
            publishers,
            follows,
        })
    }

    /// The handle shard `index` keeps.
    pub fn shard(&self, index: usize) -> ClusterShard {
        ClusterShard {
            index,
            hub: self.hub.clone(),
            publishers: self.publishers.clone(),
            follows: self.follows.clone(),
            breaker: CircuitBreaker::new(self.hub.config.breaker.clone()),
            in_flight: 0,
            results: [0; RESULTS.len()],
            primed: HashSet::new(),
            waiting: HashMap::new(),
        }
    }
}

/// A subscriber waiting for its room to be primed.
#[derive(Debug, Clone, Copy)]
pub struct Waiter {
    /// The waiting connection.
    pub conn: crate::conn::key::ConnKey,
    /// Its `Last-Event-ID`.
    pub last_event_id: Option<ringcast_core::event_id::ResumeId>,
}

/// A shard's side of cluster mode: its breaker, calls out, rooms primed and subscribers
/// waiting for a room to be primed.
pub struct ClusterShard {
    index: usize,
    hub: Arc<Hub>,
    publishers: Vec<mpsc::SyncSender<Job>>,
    follows: mpsc::Sender<Follow>,
    breaker: CircuitBreaker,
    in_flight: usize,
    results: [u64; RESULTS.len()],
    primed: HashSet<Arc<str>>,
    waiting: HashMap<Arc<str>, Vec<Waiter>>,
}

impl ClusterShard {
    /// Why the node is not ready (`/readyz`), if it is not.
    pub fn unready_reason(&self, now: Instant) -> Option<&'static str> {
        if !self.hub.up.load(Ordering::Relaxed) {
            Some("redis unreachable")
        } else if self.breaker.state(now) == BreakerState::Open {
            Some("redis unreachable (circuit open)")
        } else {
            None
        }
    }

    /// Whether this shard's replica of `room` follows the stream.
    pub fn is_primed(&self, room: &str) -> bool {
        self.primed.contains(room)
    }

    /// Queues a subscriber until `room` is primed; asks the follower on the first one.
    /// `false` when Redis is known to be down (refuse now).
    pub fn wait_primed(&mut self, room: &str, waiter: Waiter) -> bool {
        if !self.hub.up.load(Ordering::Relaxed) {
            return false;
        }
        if let Some(waiters) = self.waiting.get_mut(room) {
            waiters.push(waiter);
            return true;
        }
        let room: Arc<str> = Arc::from(room);
        let start = Follow::Start {
            room: room.clone(),
            shard: self.index,
        };
        if self.follows.send(start).is_err() {
            return false;
        }
        self.waiting.insert(room, vec![waiter]);
        true
    }

    /// This shard freed its replica of `room`: the follower stops sending it the room's
    /// frames, and a later subscriber waits for a fresh prime. Nothing when the room was not
    /// primed here (so a second call, or one for a room being primed again, does nothing).
    pub fn unfollow(&mut self, room: &Arc<str>) {
        if self.primed.remove(room) {
            let _ = self.follows.send(Follow::Stop {
                room: room.clone(),
                shard: self.index,
            });
        }
    }

    /// Takes the subscribers that waited for `room`.
    pub fn take_waiters(&mut self, room: &str) -> Vec<Waiter> {
        self.waiting.remove(room).unwrap_or_default()
    }

    /// Starts appending a message; `Err` with the reason when refused at once (nothing
    /// appended).
    pub fn begin_publish(
        &mut self,
        now: Instant,
        ticket: Ticket,
        room: Arc<str>,
        data: Bytes,
        stamp: u64,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<(), RedisRefusal> {
        if self.in_flight >= SHARD_IN_FLIGHT_MAX {
            self.results[QUEUE_FULL] += 1;
            return Err(RedisRefusal::QueueFull);
        }
        let permit = match self.breaker.allow(now) {
            Ok(permit) => permit,
            Err(_) => {
                self.results[BREAKER_OPEN] += 1;
                return Err(RedisRefusal::CircuitOpen);
            }
        };
        let publisher = &self.publishers[publisher_of(&room)];
        let job = Job::Publish {
            shard: self.index,
            ticket,
            room,
            data,
            stamp,
            permit,
            submitted: now,
            idempotency,
        };
        match publisher.try_send(job) {
            Ok(()) => {
                self.in_flight += 1;
                Ok(())
            }
            Err(mpsc::TrySendError::Full(Job::Publish { permit, .. }))
            | Err(mpsc::TrySendError::Disconnected(Job::Publish { permit, .. })) => {
                // Not a Redis failure: the permit goes back as a success-free no-op.
                self.breaker
                    .record(permit, Outcome::Success, Duration::ZERO, now);
                self.results[QUEUE_FULL] += 1;
                Err(RedisRefusal::QueueFull)
            }
            Err(_) => Err(RedisRefusal::QueueFull),
        }
    }

    /// Asks Redis for the entries between a resume point and the replica's oldest entry;
    /// `false` when it cannot be queued.
    pub fn begin_replay(&mut self, ticket: ReplayTicket) -> bool {
        if self.in_flight >= SHARD_IN_FLIGHT_MAX || !self.hub.up.load(Ordering::Relaxed) {
            return false;
        }
        let publisher = &self.publishers[publisher_of(&ticket.room)];
        let job = Job::Replay {
            shard: self.index,
            ticket,
        };
        if publisher.try_send(job).is_ok() {
            self.in_flight += 1;
            return true;
        }
        false
    }

    /// The next event for this shard: publish outcomes first (recorded in the breaker),
    /// then followed frames.
    pub fn poll_event(&mut self, now: Instant) -> Option<Event> {
        if let Some(reply) = self.hub.replies[self.index].pop() {
            self.in_flight -= 1;
            return Some(match reply {
                Reply::Event(event) => event,
                Reply::Publish {
                    ticket,
                    permit,
                    result,
                    latency,
                } => {
                    let (outcome, slot) = match result {
                        Ok(_) => (Outcome::Success, APPENDED),
                        Err(RedisRefusal::TimedOutUnsent | RedisRefusal::TimedOutUnknown) => {
                            (Outcome::Failure, TIMED_OUT)
                        }
                        Err(_) => (Outcome::Failure, FAILED),
                    };
                    self.results[slot] += 1;
                    let before = self.breaker.transitions_to(BreakerState::Open);
                    self.breaker.record(permit, outcome, latency, now);
                    if self.breaker.transitions_to(BreakerState::Open) != before {
                        tracing::warn!(
                            shard = self.index,
                            upstream = "redis",
                            "circuit breaker opened"
                        );
                    }
                    Event::Published {
                        ticket,
                        result: result.map(|appended| appended.id),
                        replayed: result.is_ok_and(|appended| appended.replayed),
                    }
                }
            });
        }
        let event = self.hub.mail[self.index].pop()?;
        match &event {
            Event::Primed { room, .. } => {
                self.primed.insert(room.clone());
            }
            Event::PrimeFailed { room } => {
                self.primed.remove(room);
            }
            _ => {}
        }
        Some(event)
    }

    /// Stores this shard's figures for `/metrics` (once per loop turn).
    pub fn publish_figures(&self, now: Instant) {
        let figures = &self.hub.figures[self.index];
        figures.breaker.publish(&self.breaker, now);
        for (index, value) in self.results.iter().enumerate() {
            figures.results[index].store(*value, Ordering::Relaxed);
        }
    }
}

/// Why a publish got no id from Redis; its text is the 503's body (docs/CLUSTER.md quotes
/// them). "not appended" when the publish never reached Redis (or Redis refused it),
/// "outcome unknown" when it was sent and no answer came: it may be in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RedisRefusal {
    /// Its time ran out in the publisher's queue: never sent.
    #[error("redis timed out before the publish was sent: not appended")]
    TimedOutUnsent,
    /// No connection to Redis.
    #[error("redis unreachable: not appended")]
    Unreachable,
    /// Redis answered without a usable id.
    #[error("redis refused the message: not appended")]
    Refused,
    /// The shard's calls out or the publisher's queue are full.
    #[error("redis queue full: not appended")]
    QueueFull,
    /// The breaker is open: not tried.
    #[error("redis unavailable (circuit open): not appended")]
    CircuitOpen,
    /// Sent, and no answer within `--cluster-timeout`.
    #[error("redis timed out: outcome unknown: retry with the same Idempotency-Key")]
    TimedOutUnknown,
    /// Sent, and the connection failed before the answer.
    #[error("redis connection lost: outcome unknown: retry with the same Idempotency-Key")]
    LostUnknown,
}

fn publisher_of(room: &str) -> usize {
    ringcast_core::room::owner_shard(room, PUBLISHERS)
}

/// Adds the cluster figures to a `/metrics` exposition.
pub fn expose(out: &mut Exposition, pool: &ClusterPool) {
    let hub = &pool.hub;
    for (shard, f) in hub.figures.iter().enumerate() {
        let shard = shard.to_string();
        f.breaker.expose(out, "redis", &shard);
        let labels = [("shard", shard.as_str())];
        for (index, result) in RESULTS.iter().enumerate() {
            out.counter(
                "ringcast_cluster_publishes_total",
                "Publishes in cluster mode by result (appended: XADD answered; failed, timed_out: Redis error or no answer in time; breaker_open, queue_full: not sent).",
                &[labels[0], ("result", result)],
                f.results[index].load(Ordering::Relaxed) as f64,
            );
        }
    }
    out.gauge(
        "ringcast_redis_up",
        "1 when the follower's last Redis call succeeded.",
        &[],
        u8::from(hub.up.load(Ordering::Relaxed)) as f64,
    );
    out.counter(
        "ringcast_redis_errors_total",
        "Redis calls that failed (connection errors, timeouts, error replies).",
        &[],
        hub.errors.load(Ordering::Relaxed) as f64,
    );
    out.gauge(
        "ringcast_cluster_rooms_followed",
        "Room streams this node follows.",
        &[],
        hub.rooms_followed.load(Ordering::Relaxed) as f64,
    );
    out.counter(
        "ringcast_cluster_entries_read_total",
        "Stream entries the follower read and handed to the shards.",
        &[],
        hub.entries_read.load(Ordering::Relaxed) as f64,
    );
    out.counter(
        "ringcast_cluster_follow_gaps_total",
        "Times the follower fell behind a stream's length cap and sent live subscribers a gap notice.",
        &[],
        hub.follow_gaps.load(Ordering::Relaxed) as f64,
    );
}
