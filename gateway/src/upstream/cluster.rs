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

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use redis::Value;
use ringcast_core::breaker::{BreakerConfig, BreakerState, CircuitBreaker, Outcome, Permit};
use ringcast_core::event_id::EventId;
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
    pub frames: Vec<Bytes>,
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
        /// Encoded SSE frame, shared by every shard.
        frame: Bytes,
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
        frames: Vec<(u64, Bytes, u64)>,
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

fn publisher_thread(hub: &Hub, receiver: &mpsc::Receiver<Job>) {
    let mut connection: Option<redis::Connection> = None;
    let mut batch = Vec::with_capacity(PIPELINE_MAX);
    let mut woken = vec![false; hub.replies.len()];
    loop {
        let Ok(job) = receiver.recv() else {
            return; // every sender dropped: the process is stopping
        };
        batch.push(job);
        while batch.len() < PIPELINE_MAX {
            match receiver.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if connection.is_none() {
            match hub.connect() {
                Ok(c) => connection = Some(c),
                Err(err) => hub.error("connect", &err),
            }
        }
        let mut publishes = Vec::with_capacity(batch.len());
        for job in batch.drain(..) {
            match job {
                Job::Publish { .. } => publishes.push(job),
                Job::Replay { shard, ticket } => {
                    let replay = connection.as_mut().and_then(|c| match replay(c, &ticket) {
                        Ok(replay) => Some(replay),
                        Err(err) => {
                            hub.error("replay", &err);
                            None
                        }
                    });
                    if replay.is_none() {
                        connection = None;
                    }
                    push_reply(hub, shard, Reply::Event(Event::Replayed { ticket, replay }));
                    woken[shard] = true;
                }
            }
        }
        if !publishes.is_empty() {
            let results = append(hub, &mut connection, &publishes);
            let started = Instant::now();
            for (job, result) in publishes.into_iter().zip(results) {
                let Job::Publish {
                    shard,
                    ticket,
                    permit,
                    submitted,
                    ..
                } = job
                else {
                    continue;
                };
                let latency = started.saturating_duration_since(submitted);
                push_reply(
                    hub,
                    shard,
                    Reply::Publish {
                        ticket,
                        permit,
                        result,
                        latency,
                    },
                );
                woken[shard] = true;
            }
        }
        for (shard, woken) in woken.iter_mut().enumerate() {
            if std::mem::take(woken) {
                hub.wake(shard);
            }
        }
    }
}

fn push_reply(hub: &Hub, shard: usize, reply: Reply) {
    if hub.replies[shard].push(reply).is_err() {
        // Cannot happen: a shard keeps at most SHARD_IN_FLIGHT_MAX calls out.
        debug_assert!(false, "cluster reply queue of shard {shard} full");
        tracing::error!(shard, "cluster reply queue full; reply dropped");
    }
}

/// Sends the publishes as one pipeline of XADDs; one result per job. A publish whose time
/// ran out in the queue is not sent (so it is certainly not stored).
fn append(
    hub: &Hub,
    connection: &mut Option<redis::Connection>,
    jobs: &[Job],
) -> Vec<Result<Appended, RedisRefusal>> {
    let now = Instant::now();
    let mut results = vec![Err(RedisRefusal::Unreachable); jobs.len()];
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    let mut sent = Vec::with_capacity(jobs.len());
    for (index, job) in jobs.iter().enumerate() {
        let Job::Publish {
            room,
            data,
            stamp,
            submitted,
            idempotency,
            ..
        } = job
        else {
            continue;
        };
        if now >= *submitted + hub.config.timeout {
            results[index] = Err(RedisRefusal::TimedOutUnsent);
            continue;
        }
        if let Some(idempotency) = idempotency {
            pipe.cmd("EVAL")
                .arg(APPEND_ONCE_LUA)
                .arg(2)
                .arg(stream_key(room))
                .arg(idempotency_record_key(room, &idempotency.key))
                .arg(hub.config.history)
                .arg(data.as_ref())
                .arg(*stamp)
                .arg(&hub.config.node_id)
                .arg(idempotency.window.as_millis().max(1) as u64);
            sent.push(index);
            continue;
        }
        pipe.cmd("XADD")
            .arg(stream_key(room))
            .arg("MAXLEN")
            .arg("~")
            .arg(hub.config.history)
            .arg("*")
            .arg("data")
            .arg(data.as_ref())
            .arg("stamp")
            .arg(*stamp)
            .arg("node")
            .arg(&hub.config.node_id);
        sent.push(index);
    }
    if sent.is_empty() {
        return results;
    }
    let Some(c) = connection.as_mut() else {
        return results;
    };
    match pipe.query::<Vec<Value>>(c) {
        Ok(values) => {
            for (index, value) in sent.into_iter().zip(values) {
                results[index] = match appended(&value) {
                    Some(appended) => Ok(appended),
                    None => {
                        tracing::warn!(?value, "XADD answered no usable id");
                        Err(RedisRefusal::Refused)
                    }
                };
            }
        }
        Err(err) => {
            hub.error("XADD", &err);
            // Sent: Redis may have appended (and will, once it runs what it read).
            let reason = if err.is_timeout() {
                RedisRefusal::TimedOutUnknown
            } else {
                RedisRefusal::LostUnknown
            };
            for index in sent {
                results[index] = Err(reason);
            }
            *connection = None;
        }
    }
    results
}

/// The answer to an `XADD` (a stream id) or to [`APPEND_ONCE_LUA`] (`[replayed, id]`).
fn appended(value: &Value) -> Option<Appended> {
    if let Some([flag, id]) = list(value) {
        return Some(Appended {
            id: sse_id(value_str(id)?)?,
            replayed: integer(flag)? == 1,
        });
    }
    Some(Appended {
        id: sse_id(value_str(value)?)?,
        replayed: false,
    })
}

/// The highest SSE id the stream at `key` no longer holds (trimmed or deleted), `None` when
/// there is no such stream. Trimming (`MAXLEN ~`) removes from the head and Redis does not
/// count it in `max-deleted-entry-id`, so when `entries-added` exceeds `length` everything
/// before `first-entry` counts as gone. Without those fields (Redis < 7.0) the entry before
/// the first held is taken as deleted. Conservative: a gap may be announced over ids that
/// never existed, never the other way round.
fn deleted_through(
    connection: &mut redis::Connection,
    key: &str,
) -> redis::RedisResult<Option<u64>> {
    let info: Value = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(key)
        .query(connection)
        .or_else(|err| {
            if err.code() == Some("ERR") {
                Ok(Value::Nil) // no such key: nothing is held
            } else {
                Err(err)
            }
        })?;
    let Some(fields) = pairs(&info) else {
        return Ok(None);
    };
    let mut deleted = None;
    let mut first = None;
    let mut added = None;
    let mut length = None;
    for (name, value) in fields {
        match value_str(name) {
            Some("max-deleted-entry-id") => {
                deleted = Some(value_str(value).and_then(sse_id).unwrap_or(0));
            }
            Some("first-entry") => first = entry(value).map(|(id, _, _)| id),
            Some("entries-added") => added = integer(value),
            Some("length") => length = integer(value),
            _ => {}
        }
    }
    let before_first = first.map_or(0, |id| id.saturating_sub(1));
    Ok(Some(match (deleted, added, length) {
        (Some(deleted), Some(added), Some(length)) if added > length => deleted.max(before_first),
        (Some(deleted), Some(_), Some(_)) => deleted,
        _ => before_first,
    }))
}

fn integer(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        other => value_str(other).and_then(|text| text.parse().ok()),
    }
}

/// Entries of `ticket.room` after `ticket.after` and before the replica's oldest one, led by
/// a gap notice when the stream no longer holds some of them.
fn replay(connection: &mut redis::Connection, ticket: &ReplayTicket) -> redis::RedisResult<Replay> {
    let key = stream_key(&ticket.room);
    if ticket.beyond_head
        && last_generated(connection, &key)?.is_none_or(|last| ticket.after > last)
    {
        return Ok(Replay {
            frames: Vec::new(),
            after: ticket.after,
            beyond_head: true,
        });
    }
    // No stream: everything before the replica is gone.
    let deleted = deleted_through(connection, &key)?.unwrap_or(ticket.before.saturating_sub(1));
    let mut frames = Vec::new();
    let mut cursor = ticket.after;
    if deleted > ticket.after {
        let to = deleted.min(ticket.before.saturating_sub(1));
        frames.push(ringcast_core::sse::encode_gap(
            EventId::from_stream_packed(ticket.after + 1),
            EventId::from_stream_packed(to),
        ));
        cursor = to;
    }
    if cursor + 1 >= ticket.before {
        return Ok(Replay {
            frames,
            after: cursor,
            beyond_head: false,
        });
    }
    let entries: Value = redis::cmd("XRANGE")
        .arg(&key)
        .arg(format!("({}", stream_id(cursor)))
        .arg(format!("({}", stream_id(ticket.before)))
        .arg("COUNT")
        .arg(REPLAY_MAX)
        .query(connection)?;
    let list = list(&entries).unwrap_or(&[]);
    let complete = list.len() < REPLAY_MAX;
    for value in list {
        if let Some((id, data, _)) = entry(value) {
            frames.push(ringcast_core::sse::encode_message(
                EventId::from_stream_packed(id),
                &data,
            ));
            cursor = id;
        }
    }
    // Complete: nothing lies between the last entry and the replica's oldest, so the
    // replica continues from `before − 1` with no gap.
    let after = if complete {
        ticket.before.saturating_sub(1).max(cursor)
    } else {
        cursor
    };
    Ok(Replay {
        frames,
        after,
        beyond_head: false,
    })
}

/// The last id the stream at `key` ever gave out (`last-generated-id`), `None` when there is
/// no such stream.
fn last_generated(
    connection: &mut redis::Connection,
    key: &str,
) -> redis::RedisResult<Option<u64>> {
    let info: Value = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(key)
        .query(connection)
        .or_else(|err| {
            if err.code() == Some("ERR") {
                Ok(Value::Nil) // no such key
            } else {
                Err(err)
            }
        })?;
    Ok(pairs(&info).and_then(|fields| {
        fields.into_iter().find_map(|(name, value)| {
            (value_str(name) == Some("last-generated-id"))
                .then(|| value_str(value).and_then(sse_id))
                .flatten()
        })
    }))
}

/// The follower: one thread, one connection, every followed room.
struct Follower {
    hub: Arc<Hub>,
    requests: mpsc::Receiver<Follow>,
    connection: Option<redis::Connection>,
    /// Followed rooms and the last stream id read of each.
    rooms: Vec<(Arc<str>, String)>,
    /// Index in `rooms`, and the shards that hold the room (the only ones sent its frames).
    index: HashMap<Arc<str>, (usize, Vec<usize>)>,
    /// Rooms to prime and the shards that asked.
    pending: Vec<(Arc<str>, Vec<usize>)>,
    backoff: Duration,
}

impl Follower {
    fn new(hub: Arc<Hub>, requests: mpsc::Receiver<Follow>) -> Self {
        Self {
            hub,
            requests,
            connection: None,
            rooms: Vec::new(),
            index: HashMap::new(),
            pending: Vec::new(),
            backoff: RECONNECT_MIN,
        }
    }

    fn run(mut self) {
        loop {
            if self.connection.is_some() {
                self.take_requests(self.rooms.is_empty() && self.pending.is_empty());
            }
            if self.connection.is_none() {
                match self.hub.connect() {
                    Ok(c) => {
                        if !self.hub.up.swap(true, Ordering::Relaxed) {
                            tracing::info!(url = %self.hub.config.url, "redis reachable");
                        }
                        self.connection = Some(c);
                        self.backoff = RECONNECT_MIN;
                    }
                    Err(err) => {
                        self.take_requests(false);
                        self.failed("connect", &err);
                        std::thread::sleep(self.backoff);
                        self.backoff = (self.backoff * 2).min(RECONNECT_MAX);
                        continue;
                    }
                }
            }
            if let Err(err) = self.prime() {
                self.failed("prime", &err);
                continue;
            }
            if self.rooms.is_empty() {
                // Nothing to read: a PING per round keeps `up` (and /readyz) true to fact.
                if let Some(connection) = self.connection.as_mut() {
                    if let Err(err) = redis::cmd("PING").query::<Value>(connection) {
                        self.failed("PING", &err);
                    }
                }
                continue;
            }
            if let Err(err) = self.read() {
                self.failed("XREAD", &err);
            }
        }
    }

    fn failed(&mut self, what: &str, err: &redis::RedisError) {
        if interrupted(err) {
            // A signal (SIGSTOP/SIGCONT, a debugger) cut a read short: the reply may be half
            // read, so reconnect and read again from the last id, but Redis is not down.
            tracing::debug!(%err, what, "redis call interrupted; reconnecting");
            self.connection = None;
            return;
        }
        self.hub.error(what, err);
        if self.hub.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(%err, what, "redis unreachable");
        }
        self.connection = None;
        for (room, shards) in std::mem::take(&mut self.pending) {
            self.send_to(&shards, || Event::PrimeFailed { room: room.clone() });
        }
        self.wake_all();
    }

    /// Takes follow requests; waits for one (up to BLOCK_MS) when `wait`.
    fn take_requests(&mut self, wait: bool) {
        if wait {
            match self.requests.recv_timeout(Duration::from_millis(BLOCK_MS)) {
                Ok(room) => self.request(room),
                Err(mpsc::RecvTimeoutError::Timeout) => return,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(BLOCK_MS));
                    return;
                }
            }
        }
        while let Ok(room) = self.requests.try_recv() {
            self.request(room);
        }
    }

    fn request(&mut self, request: Follow) {
        match request {
            // Followed already or not, the shard's replica is filled from the tail: it
            // holds nothing of the room (it never did, or it freed it).
            Follow::Start { room, shard } => {
                match self
                    .pending
                    .iter_mut()
                    .find(|(pending, _)| *pending == room)
                {
                    Some((_, shards)) if !shards.contains(&shard) => shards.push(shard),
                    Some(_) => {}
                    None => self.pending.push((room, vec![shard])),
                }
            }
            Follow::Stop { room, shard } => self.stop(&room, shard),
        }
    }

    /// `shard` no longer holds `room`; the room is unfollowed when no shard does.
    fn stop(&mut self, room: &Arc<str>, shard: usize) {
        let Some((position, holders)) = self.index.get_mut(room) else {
            return;
        };
        holders.retain(|&holder| holder != shard);
        if !holders.is_empty() {
            return;
        }
        let position = *position;
        self.index.remove(room);
        self.rooms.swap_remove(position);
        if let Some((moved, _)) = self.rooms.get(position) {
            if let Some(entry) = self.index.get_mut(moved) {
                entry.0 = position;
            }
        }
        self.hub
            .rooms_followed
            .store(self.rooms.len() as u64, Ordering::Relaxed);
    }

    /// Fills every shard's replica of each newly followed room from the stream's tail.
    fn prime(&mut self) -> redis::RedisResult<()> {
        while let Some((room, shards)) = self.pending.last().cloned() {
            let Some(connection) = self.connection.as_mut() else {
                return Ok(());
            };
            let tail: Value = redis::cmd("XREVRANGE")
                .arg(stream_key(&room))
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(self.hub.config.history)
                .query(connection)?;
            self.pending.pop();
            let mut entries: Vec<_> = list(&tail)
                .unwrap_or(&[])
                .iter()
                .filter_map(entry)
                .collect();
            entries.reverse();
            let first_id = entries.first().map(|(id, _, _)| *id);
            let last = entries
                .last()
                .map_or_else(|| "0-0".to_owned(), |(id, _, _)| stream_id(*id));
            self.hub
                .entries_read
                .fetch_add(entries.len() as u64, Ordering::Relaxed);
            let frames: Vec<_> = entries
                .into_iter()
                .map(|(id, data, stamp)| {
                    let frame =
                        ringcast_core::sse::encode_message(EventId::from_stream_packed(id), &data);
                    (id, frame, stamp)
                })
                .collect();
            // Entries appended since the last XREAD are in the tail too: the next XREAD
            // hands them again, and a replica ignores ids it holds.
            self.send_to(&shards, || Event::Primed {
                room: room.clone(),
                first_id,
                frames: frames.clone(),
            });
            if let Some((_, holders)) = self.index.get_mut(&room) {
                for shard in shards {
                    if !holders.contains(&shard) {
                        holders.push(shard);
                    }
                }
                self.wake_all();
                continue;
            }
            self.index.insert(room.clone(), (self.rooms.len(), shards));
            self.rooms.push((room, last));
            self.hub
                .rooms_followed
                .store(self.rooms.len() as u64, Ordering::Relaxed);
            self.wake_all();
        }
        Ok(())
    }

    /// One round of XREAD over every followed room (blocking when they fit in one call).
    fn read(&mut self) -> redis::RedisResult<()> {
        let batches = self.rooms.len().div_ceil(STREAMS_PER_READ);
        let mut read = 0;
        for batch in 0..batches {
            let range =
                batch * STREAMS_PER_READ..((batch + 1) * STREAMS_PER_READ).min(self.rooms.len());
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT").arg(READ_COUNT);
            if batches == 1 {
                cmd.arg("BLOCK").arg(BLOCK_MS);
            }
            cmd.arg("STREAMS");
            for (room, _) in &self.rooms[range.clone()] {
                cmd.arg(stream_key(room));
            }
            for (_, last) in &self.rooms[range] {
                cmd.arg(last.as_str());
            }
            let Some(connection) = self.connection.as_mut() else {
                return Ok(());
            };
            let reply: Value = cmd.query(connection)?;
            self.hub.up.store(true, Ordering::Relaxed);
            for (key, entries) in streams(&reply) {
                let Some(room) = room_of_key(key) else {
                    continue;
                };
                let Some((position, _)) = self.index.get(room) else {
                    continue;
                };
                let position = *position;
                let room = self.rooms[position].0.clone();
                // A stream keeps at least its cap (MAXLEN ~, the publishing nodes' history)
                // of entries, so entries this node never saw can only have been trimmed when
                // the reply holds at least that many: only then is it worth asking Redis.
                if entries.len() >= self.hub.config.history.min(TRIM_CHECK_ENTRIES) {
                    if let Some(connection) = self.connection.as_mut() {
                        let seen = sse_id(&self.rooms[position].1).unwrap_or(0);
                        let deleted = deleted_through(connection, &stream_key(&room))?;
                        if let Some(deleted) = deleted.filter(|&deleted| deleted > seen) {
                            self.deliver_gap(&room, seen + 1, deleted);
                            self.rooms[position].1 = stream_id(deleted);
                        }
                    }
                }
                for value in entries {
                    let Some((id, data, stamp)) = entry(value) else {
                        continue;
                    };
                    self.deliver(&room, id, &data, stamp);
                    self.rooms[position].1 = stream_id(id);
                    read += 1;
                }
            }
        }
        if read > 0 {
            self.wake_all();
        } else if batches > 1 {
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// The follower fell behind the stream's length cap: entries `from..=to` were trimmed
    /// before this node read them. The live subscribers get the same gap notice a resume
    /// would, in order, as a history entry carrying id `to` (a resume from before it
    /// replays the notice too).
    fn deliver_gap(&self, room: &Arc<str>, from: u64, to: u64) {
        tracing::warn!(%room, from, to, "fell behind the stream cap: entries trimmed unread");
        self.hub.follow_gaps.fetch_add(1, Ordering::Relaxed);
        let frame = ringcast_core::sse::encode_gap(
            EventId::from_stream_packed(from),
            EventId::from_stream_packed(to),
        );
        self.send_holders(room, || Event::Frame {
            room: room.clone(),
            id: to,
            frame: frame.clone(),
            stamp_unix_nanos: 0,
        });
    }

    fn deliver(&self, room: &Arc<str>, id: u64, data: &[u8], stamp: u64) {
        let frame = ringcast_core::sse::encode_message(EventId::from_stream_packed(id), data);
        self.hub.entries_read.fetch_add(1, Ordering::Relaxed);
        self.send_holders(room, || Event::Frame {
            room: room.clone(),
            id,
            frame: frame.clone(),
            stamp_unix_nanos: stamp,
        });
    }

    /// Hands an event to every shard that holds `room`.
    fn send_holders(&self, room: &Arc<str>, event: impl Fn() -> Event) {
        if let Some((_, holders)) = self.index.get(room) {
            self.send_to(holders, event);
        }
    }

    /// Hands an event to each of `shards`, waiting (never dropping) while a queue is full.
    fn send_to(&self, shards: &[usize], event: impl Fn() -> Event) {
        for &shard in shards {
            let queue = &self.hub.mail[shard];
            let mut event = event();
            loop {
                match queue.push(event) {
                    Ok(()) => break,
                    Err(back) => {
                        event = back;
                        self.hub.wake(shard);
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        }
    }

    fn wake_all(&self) {
        for shard in 0..self.hub.mail.len() {
            self.hub.wake(shard);
        }
    }
}

/// Whether a call failed with EINTR: a socket with a timeout (SO_RCVTIMEO) returns it when a
/// signal, or SIGSTOP then SIGCONT, interrupts a blocked read (signal(7)).
fn interrupted(err: &redis::RedisError) -> bool {
    use std::error::Error;
    // redis keeps an I/O error as `Arc<dyn Error + Send + Sync>` (the source).
    err.source()
        .and_then(|source| source.downcast_ref::<Arc<dyn Error + Send + Sync>>())
        .and_then(|inner| inner.downcast_ref::<std::io::Error>())
        .is_some_and(|io| io.kind() == std::io::ErrorKind::Interrupted)
}

fn value_str(value: &Value) -> Option<&str> {
    match value {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
        Value::SimpleString(text) => Some(text),
        Value::VerbatimString { text, .. } => Some(text),
        _ => None,
    }
}

fn list(value: &Value) -> Option<&[Value]> {
    match value {
        Value::Array(items) | Value::Set(items) => Some(items),
        _ => None,
    }
}

/// A RESP2 flat field list or a RESP3 map, as pairs.
fn pairs(value: &Value) -> Option<Vec<(&Value, &Value)>> {
    match value {
        Value::Map(pairs) => Some(pairs.iter().map(|(k, v)| (k, v)).collect()),
        Value::Array(items) => Some(items.chunks_exact(2).map(|p| (&p[0], &p[1])).collect()),
        _ => None,
    }
}

/// An XREAD reply as (key, entries) per stream.
fn streams(value: &Value) -> Vec<(&[u8], &[Value])> {
    fn pair<'a>(key: &'a Value, entries: &'a Value) -> Option<(&'a [u8], &'a [Value])> {
        match (key, list(entries)) {
            (Value::BulkString(key), Some(entries)) => Some((key.as_slice(), entries)),
            _ => None,
        }
    }
    match value {
        Value::Map(pairs) => pairs.iter().filter_map(|(k, v)| pair(k, v)).collect(),
        Value::Array(items) => items
            .iter()
            .filter_map(|item| match list(item) {
                Some([key, entries]) => pair(key, entries),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// One stream entry `[id, [field, value, …]]` as (SSE id, data, stamp).
fn entry(value: &Value) -> Option<(u64, Vec<u8>, u64)> {
    let [id, fields] = list(value)? else {
        return None;
    };
    let id = sse_id(value_str(id)?)?;
    let mut data = Vec::new();
    let mut stamp = 0;
    for (name, value) in pairs(fields)? {
        match (value_str(name), value) {
            (Some("data"), Value::BulkString(bytes)) => data.clone_from(bytes),
            (Some("stamp"), value) => {
                stamp = value_str(value).and_then(|s| s.parse().ok()).unwrap_or(0)
            }
            _ => {}
        }
    }
    Some((id, data, stamp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupted_call_is_told_from_a_failed_one() {
        let eintr = std::io::Error::from(std::io::ErrorKind::Interrupted);
        assert!(interrupted(&redis::RedisError::from(eintr)));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(!interrupted(&redis::RedisError::from(refused)));
    }

    #[test]
    fn ids_round_trip_and_keep_order() {
        let cases = [
            ("0-0", 0),
            ("0-1", 1),
            ("1-0", 1 << 20),
            ("1700000000000-7", (1_700_000_000_000 << 20) | 7),
        ];
        for (stream, sse) in cases {
            assert_eq!(sse_id(stream), Some(sse), "{stream}");
            assert_eq!(stream_id(sse), stream);
        }
        assert!(sse_id("5-1048575").unwrap() < sse_id("6-0").unwrap());
        for bad in ["", "1", "a-1", "1-1048576", "1-"] {
            assert_eq!(sse_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn keys_name_their_room() {
        assert_eq!(stream_key("lobby"), "ringcast:{lobby}");
        assert_eq!(room_of_key(b"ringcast:{a:b}"), Some("a:b"));
        assert_eq!(room_of_key(b"other"), None);
    }

    #[test]
    fn entries_parse_from_resp2_and_resp3() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let fields = vec![
            bulk("data"),
            bulk("hi"),
            bulk("stamp"),
            bulk("42"),
            bulk("node"),
            bulk("a"),
        ];
        let resp2 = Value::Array(vec![bulk("3-1"), Value::Array(fields.clone())]);
        assert_eq!(entry(&resp2), Some(((3 << 20) | 1, b"hi".to_vec(), 42)));
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("ringcast:{r}"),
            Value::Array(vec![resp2.clone()]),
        ])]);
        let streams2 = streams(&reply);
        assert_eq!(streams2.len(), 1);
        assert_eq!(streams2[0].0, b"ringcast:{r}");
        let reply3 = Value::Map(vec![(bulk("ringcast:{r}"), Value::Array(vec![resp2]))]);
        assert_eq!(streams(&reply3).len(), 1);
    }
}
