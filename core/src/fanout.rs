//! The per-shard fan-out state machine: rooms (replicas), subscribers with cursors, the
//! queue of subscribers that have something to be written, heartbeats and the
//! slow-consumer policy.
//!
//! Shape (as quinn-proto): `handle_*(now, …)` feeds events in; `poll_action(now, …)`
//! hands out the next write or close; `poll_timeout()` says when to call again. A
//! subscriber is a cursor into its room's history, not a queue: when its connection is
//! idle and the cursor is behind the head, one write carries every frame from cursor to
//! head (bounded by [`FanoutConfig::write_frames_max`]). Writes are handed out in the order
//! subscribers became dirty; the driver takes a bounded number per loop turn, so publishes
//! read in between ride in the same write. Under load (a long dirty queue) a subscriber
//! waits up to [`FanoutConfig::coalesce_delay`] after becoming dirty, so that later events
//! join its write.
//!
//! Each subscriber's connection carries one [`Format`] (SSE or WebSocket, given at
//! subscribe). A message is encoded once, in both forms ([`Frame`]); a write carries the
//! subscriber's slice of that shared buffer, and every notice (gap, reset, lagged), the
//! heartbeat and the drain in its form. The per-delivery work is the same for both.

use crate::event_id::{EventId, ResetReason, ResumeId};
use crate::frame::{Format, Frame};
use crate::history::ResumeFrom;
use crate::room::Room;
use crate::room_lru::RoomLru;
use crate::timer_wheel::{TimerKey, TimerWheel};
use crate::{sse, ws};
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

// Drivers name connections through the fan-out API; the type lives below rooms.
pub use crate::conn_id::ConnId;

/// Default history length per room, in messages.
pub const HISTORY_MESSAGES_DEFAULT: usize = 256;
/// Default history size per room, in bytes.
pub const HISTORY_BYTES_DEFAULT: usize = 4 << 20;
/// Default bound on rooms a shard creates for subscribers or owned publishes.
pub const ROOMS_MAX_DEFAULT: usize = 100_000;
/// Default bound on subscribers per shard.
pub const SUBSCRIBERS_MAX_DEFAULT: usize = 1 << 20;
/// Frames one write carries at most; below the kernel's IOV_MAX (1024) with room for the
/// response head and a gap notice.
pub const WRITE_FRAMES_MAX: usize = 512;
/// Default delay a dirty subscriber may wait under load so later events join its write.
/// Live comments tolerate tens of milliseconds; at low load it is never applied.
pub const COALESCE_DELAY_DEFAULT: Duration = Duration::from_millis(20);
/// Default dirty-queue length above which the loop counts as loaded. Chosen above a
/// 1000-subscriber room so one message to a big room is written at once.
pub const COALESCE_QUEUE_MIN_DEFAULT: usize = 2048;
/// Default heartbeat period.
pub const HEARTBEAT_DEFAULT: Duration = Duration::from_secs(15);
/// Resolution of the heartbeat wheel.
pub const HEARTBEAT_TICK: Duration = Duration::from_millis(10);
/// Default time a room with no subscriber and no publish is kept before it is freed.
pub const ROOM_IDLE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(3600);
/// Idle rooms freed per [`Fanout::handle_timeout`] at most: a turn frees a burst of rooms
/// that went idle together (20,000 in under a second of turns) without stalling writes.
/// Freeing a room is a hash removal and a few frees, well under a microsecond each.
pub const ROOM_SWEEP_MAX: usize = 256;
/// Room index capacity below which it is never shrunk (a few KiB).
const ROOM_INDEX_SHRINK_MIN: usize = 256;

/// Bounds and timings of one shard's fan-out.
#[derive(Debug, Clone)]
pub struct FanoutConfig {
    /// Messages kept per room for resume.
    pub history_messages_max: usize,
    /// Bytes kept per room for resume (the newest message is always kept).
    pub history_bytes_max: usize,
    /// Rooms this shard creates for subscribes and owned publishes (replicas of rooms owned
    /// elsewhere are always kept so no shard misses a frame; at most shards × this).
    pub rooms_max: usize,
    /// Subscribers this shard holds.
    pub subscribers_max: usize,
    /// Frames one write carries at most (≤ [`WRITE_FRAMES_MAX`]).
    pub write_frames_max: usize,
    /// Heartbeat comment period per subscriber.
    pub heartbeat: Duration,
    /// Longest a dirty subscriber waits under load.
    pub coalesce_delay: Duration,
    /// Dirty-queue length from which the delay applies.
    pub coalesce_queue_min: usize,
    /// A room with no subscriber (on any shard) and no publish for this long is freed,
    /// history and all.
    pub room_idle_timeout: Duration,
    /// Cluster mode: ids are packed Redis stream ids, shown as the stream id `ms-seq`
    /// (no room epochs). Otherwise ids are shown `{room incarnation}-{seq}`.
    pub stream_ids: bool,
    /// Unix time (microseconds) at the `now` given to [`Fanout::new`]: room incarnations
    /// (the epochs of ids) are this clock, read through the monotonic `now` of each publish.
    pub epoch_anchor_unix_micros: u64,
}

impl Default for FanoutConfig {
    fn default() -> Self {
        Self {
            history_messages_max: HISTORY_MESSAGES_DEFAULT,
            history_bytes_max: HISTORY_BYTES_DEFAULT,
            rooms_max: ROOMS_MAX_DEFAULT,
            subscribers_max: SUBSCRIBERS_MAX_DEFAULT,
            write_frames_max: WRITE_FRAMES_MAX,
            heartbeat: HEARTBEAT_DEFAULT,
            coalesce_delay: COALESCE_DELAY_DEFAULT,
            coalesce_queue_min: COALESCE_QUEUE_MIN_DEFAULT,
            room_idle_timeout: ROOM_IDLE_TIMEOUT_DEFAULT,
            stream_ids: false,
            epoch_anchor_unix_micros: 0,
        }
    }
}

/// Why the fan-out refused a subscribe or publish.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FanoutError {
    /// This shard already holds `rooms_max` rooms.
    #[error("room limit reached")]
    RoomsFull,
    /// This shard already holds `subscribers_max` subscribers.
    #[error("subscriber limit reached")]
    SubscribersFull,
    /// The connection is already subscribed.
    #[error("connection already subscribed")]
    AlreadySubscribed,
    /// The per-shard ticker wheel is full.
    #[error("timer capacity reached")]
    TimersFull,
}

/// Why the fan-out wants a connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The history head lapped the subscriber's cursor (slow consumer).
    Lapped,
    /// The shard is draining and the subscriber has been sent everything up to the head.
    Drained,
}

/// Where a new subscriber starts, once its resume id has been placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// At the head: only messages sequenced from now on.
    Head,
    /// After this (internal) id: every message after it still held, led by a gap notice
    /// for what is no longer held.
    After(u64),
    /// The resume id cannot be placed: `event: reset`, then everything held.
    Reset(ResetReason),
}

/// What the driver must do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Action {
    /// Write the frames appended to `out` to `conn`, as one write, then call
    /// [`Fanout::handle_write_done`].
    Write {
        /// Target connection.
        conn: ConnId,
    },
    /// The subscriber is gone from the fan-out: write the frames appended to `out` if the
    /// connection is writable (none if a write is stuck), then close it. For a
    /// [`Format::Ws`] subscriber the frames end with the WebSocket close frame (1013 after
    /// `lagged`, 1001 on drain): the driver must not send another, only wait for the
    /// peer's close (or not) and close the connection.
    Close {
        /// Target connection.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
}

/// Counters of one shard's fan-out, read by the metrics layer.
#[derive(Debug, Default, Clone)]
pub struct FanoutStats {
    /// Messages sequenced by this shard (owned rooms).
    pub publishes_total: u64,
    /// Frames received from owner shards.
    pub replicated_total: u64,
    /// Message frames handed out to writes (one per subscriber per message).
    pub deliveries_total: u64,
    /// Writes handed out.
    pub writes_total: u64,
    /// Subscribers cut for falling behind.
    pub slow_cuts_total: u64,
    /// Gap notices sent on resume.
    pub gaps_total: u64,
    /// Reset notices sent (resume ids that could not be placed, rooms restarted).
    pub resets_total: u64,
    /// Heartbeats handed out.
    pub heartbeats_total: u64,
    /// Rooms freed after `room_idle_timeout` without subscriber or publish.
    pub rooms_freed_idle_total: u64,
    /// Rooms freed at the room cap to make place for a new one (least recently used).
    pub rooms_freed_evicted_total: u64,
}

/// A change in whether this shard holds subscribers of a room, for the room's owner shard
/// (see [`Fanout::poll_presence`] and [`Fanout::handle_presence`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    /// The room.
    pub room: Arc<str>,
    /// True: the first subscriber arrived; false: the last one left.
    pub subscribed: bool,
}

/// Public facts about one room, for `GET /rooms/{room}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomInfo {
    /// This shard's subscribers of the room.
    pub subscribers: usize,
    /// Highest id sequenced, as clients see it (`None` if none).
    pub last_id: Option<EventId>,
    /// Messages held for resume.
    pub history_len: usize,
}

#[derive(Debug)]
struct Subscriber {
    room: u32,
    /// Index in the room's subscriber list.
    slot: u32,
    /// Tells queue entries of an earlier subscriber in the same slot apart.
    serial: u32,
    /// Last id handed to a write.
    cursor: u64,
    in_flight: bool,
    queued: bool,
    heartbeat_due: bool,
    /// A write was handed out (so the stream head is on its way).
    started: bool,
    /// The form its connection carries (fits in the padding after the flags).
    format: Format,
    /// What goes out before history frames, in order: the stream head, frames replayed
    /// from the cluster broker, a gap notice. Boxed: held only until written, so streaming
    /// subscribers stay small.
    /// (A box, not a bare `VecDeque`: 8 bytes instead of 32 in every subscriber.)
    #[allow(clippy::box_collection)]
    preamble: Option<Box<VecDeque<Bytes>>>,
    heartbeat: Option<TimerKey>,
}

// The transport's format rides in the padding after the flags: a subscriber costs what it
// cost before WebSocket.
const _: () = assert!(std::mem::size_of::<Subscriber>() <= 48);

/// One shard's fan-out state. See the module doc.
#[derive(Debug)]
pub struct Fanout {
    config: FanoutConfig,
    /// Room slots; a freed room leaves `None` (8 bytes), reused through `rooms_free`.
    rooms: Vec<Option<Box<Room>>>,
    rooms_free: Vec<u32>,
    rooms_live: usize,
    room_index: HashMap<Arc<str>, u32>,
    /// Rooms no subscriber follows, least recently active first.
    rooms_idle: RoomLru,
    /// The last incarnation this shard gave a room (Unix µs: see [`Room::incarnation`]);
    /// the next is above it.
    incarnation_last: u64,
    /// The `now` of [`Fanout::new`], paired with `config.epoch_anchor_unix_micros`.
    anchor: Instant,
    /// Rooms whose local subscribers went from none to some or back, for the owner.
    presence: VecDeque<Presence>,
    /// Rooms freed since the driver last asked ([`Fanout::poll_freed`]).
    freed: VecDeque<Arc<str>>,
    /// The latest `now` the driver passed in (for calls that take none).
    now: Instant,
    subscribers: Vec<Option<Subscriber>>,
    subscribers_live: usize,
    serial_next: u32,
    /// Subscribers with something to write, in the order they became dirty.
    dirty: VecDeque<(ConnId, u32, Instant)>,
    /// Subscribers lapped while a write was stuck: cut before any write.
    cuts: VecDeque<ConnId>,
    /// Set by [`Fanout::handle_drain`]: caught-up subscribers are closed with a retry hint
    /// (SSE) or a close frame 1001 (WebSocket).
    drain_retry: Option<Frame>,
    heartbeats: TimerWheel<(ConnId, u32)>,
    stats: FanoutStats,
}

/// How clients see internal id `id` of `room`.
fn shown(stream_ids: bool, room: &Room, id: u64) -> EventId {
    if stream_ids {
        EventId::from_stream_packed(id)
    } else {
        EventId {
            epoch: room.incarnation,
            seq: id,
        }
    }
}

impl Fanout {
    /// An empty shard fan-out. `now` anchors the heartbeat wheel.
    pub fn new(config: FanoutConfig, now: Instant) -> Self {
        assert!(config.write_frames_max >= 1 && config.write_frames_max <= WRITE_FRAMES_MAX);
        let timers_max = config.subscribers_max;
        Self {
            heartbeats: TimerWheel::new(now, HEARTBEAT_TICK, timers_max),
            config,
            rooms: Vec::new(),
            rooms_free: Vec::new(),
            rooms_live: 0,
            room_index: HashMap::new(),
            rooms_idle: RoomLru::new(),
            incarnation_last: 0,
            anchor: now,
            presence: VecDeque::new(),
            freed: VecDeque::new(),
            now,
            subscribers: Vec::new(),
            subscribers_live: 0,
            serial_next: 0,
            dirty: VecDeque::new(),
            cuts: VecDeque::new(),
            drain_retry: None,
            stats: FanoutStats::default(),
        }
    }

    /// A new room incarnation: Unix microseconds now, and above every one given out
    /// before, so ids of a room freed and created again, or of an earlier process, are told
    /// apart.
    fn next_incarnation(&mut self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.anchor).as_micros();
        let micros = self
            .config
            .epoch_anchor_unix_micros
            .saturating_add(u64::try_from(elapsed).unwrap_or(u64::MAX));
        self.incarnation_last = micros.max(self.incarnation_last.saturating_add(1));
        self.incarnation_last
    }

    /// The configuration in force.
    pub fn config(&self) -> &FanoutConfig {
        &self.config
    }

    /// Changes the timings that can change live (heartbeat period, coalescing).
    pub fn set_timings(
        &mut self,
        heartbeat: Duration,
        coalesce_delay: Duration,
        coalesce_queue_min: usize,
    ) {
        self.config.heartbeat = heartbeat;
        self.config.coalesce_delay = coalesce_delay;
        self.config.coalesce_queue_min = coalesce_queue_min;
    }

    /// Changes the room idle timeout (rooms already idle are measured against the new one).
    pub fn set_room_idle_timeout(&mut self, room_idle_timeout: Duration) {
        self.config.room_idle_timeout = room_idle_timeout;
    }

    /// Counters so far.
    pub fn stats(&self) -> &FanoutStats {
        &self.stats
    }

    /// Live subscribers on this shard.
    pub fn subscribers_live(&self) -> usize {
        self.subscribers_live
    }

    /// Live tickers (heartbeat timers) on this shard: equals the live subscribers unless a
    /// ticker leaked.
    pub fn tickers_live(&self) -> usize {
        self.heartbeats.len()
    }

    /// Rooms this shard holds.
    pub fn rooms_len(&self) -> usize {
        self.rooms_live
    }

    /// Rooms this shard holds that no subscriber follows (candidates for freeing).
    pub fn rooms_idle_len(&self) -> usize {
        self.rooms_idle.len()
    }

    /// The incarnation of a room this shard holds (see [`Room::incarnation`]).
    pub fn room_incarnation(&self, name: &str) -> Option<u64> {
        Some(self.room_at(*self.room_index.get(name)?).incarnation)
    }

    fn room_at(&self, index: u32) -> &Room {
        self.rooms[index as usize]
            .as_ref()
            .expect("a room index points at a live room")
    }

    fn room_at_mut(&mut self, index: u32) -> &mut Room {
        self.rooms[index as usize]
            .as_mut()
            .expect("a room index points at a live room")
    }

    /// Subscribers waiting for a write.
    pub fn dirty_len(&self) -> usize {
        self.dirty.len()
    }

    /// The room's name as the fan-out holds it, if this shard holds the room: a driver
    /// that keeps the name with each subscription shares it instead of making a copy.
    pub fn room_name(&self, name: &str) -> Option<Arc<str>> {
        self.room_index
            .get_key_value(name)
            .map(|(held, _)| held.clone())
    }

    /// Facts about a room, if this shard holds it.
    pub fn room_info(&self, name: &str) -> Option<RoomInfo> {
        let room = self.room_at(*self.room_index.get(name)?);
        let last_id = room.history.last_id();
        Some(RoomInfo {
            subscribers: room.subscribers.len(),
            last_id: (last_id > 0).then(|| shown(self.config.stream_ids, room, last_id)),
            history_len: room.history.len(),
        })
    }

    /// Subscriber counts per room on this shard, for the metrics' size buckets.
    pub fn room_sizes(&self) -> impl Iterator<Item = usize> + '_ {
        self.rooms
            .iter()
            .flatten()
            .map(|room| room.subscribers.len())
    }

    /// The room's slot, created if needed. At the cap, the least recently used room that
    /// no subscriber follows makes place; with none, `RoomsFull` unless `over_limit_ok`
    /// (replicas of rooms sequenced elsewhere are always kept, so no frame is lost).
    fn room_for(&mut self, name: &str, over_limit_ok: bool) -> Result<u32, FanoutError> {
        if let Some(&index) = self.room_index.get(name) {
            return Ok(index);
        }
        if self.rooms_live >= self.config.rooms_max {
            if let Some((victim, _)) = self.rooms_idle.front() {
                self.free_room(victim);
                self.stats.rooms_freed_evicted_total += 1;
            } else if !over_limit_ok {
                return Err(FanoutError::RoomsFull);
            }
        }
        let name: Arc<str> = Arc::from(name);
        let room = Room::new(
            name.clone(),
            self.config.history_messages_max,
            self.config.history_bytes_max,
        );
        let index = match self.rooms_free.pop() {
            Some(index) => {
                self.rooms[index as usize] = Some(Box::new(room));
                index
            }
            None => {
                self.rooms.push(Some(Box::new(room)));
                (self.rooms.len() - 1) as u32
            }
        };
        self.rooms_live += 1;
        self.room_index.insert(name, index);
        self.rooms_idle.touch(index, self.now);
        Ok(index)
    }

    /// Frees a room no subscriber follows: its history goes with it.
    fn free_room(&mut self, index: u32) {
        let room = self.rooms[index as usize]
            .take()
            .expect("only live rooms are freed");
        assert!(
            room.subscribers.is_empty() && room.remote_shards == 0,
            "a followed room is never freed"
        );
        self.room_index.remove(&room.name);
        self.freed.push_back(room.name);
        self.rooms_idle.remove(index);
        self.rooms_free.push(index);
        self.rooms_live -= 1;
        if self.rooms_live == 0 {
            // Every room is gone: give the slot tables back too.
            self.rooms = Vec::new();
            self.rooms_free = Vec::new();
            self.rooms_idle = RoomLru::new();
        }
        if self.room_index.capacity() > ROOM_INDEX_SHRINK_MIN
            && self.room_index.len() * 4 < self.room_index.capacity()
        {
            // Halving at a quarter full: amortized O(1) a room, and no flapping.
            self.room_index.shrink_to(self.room_index.len() * 2);
        }
    }

    /// Marks activity (a publish or frame) in a room: an idle room's clock starts again.
    fn room_touched(&mut self, index: u32, now: Instant) {
        if self.rooms_idle.contains(index) {
            self.rooms_idle.touch(index, now);
        }
    }

    /// Local subscribers of room `index` went from none to one (`subscribed`) or back.
    fn local_presence(&mut self, index: u32, subscribed: bool) {
        let now = self.now;
        let room = self.room_at(index);
        let (name, remote) = (room.name.clone(), room.remote_shards);
        self.presence.push_back(Presence {
            room: name,
            subscribed,
        });
        if subscribed {
            self.rooms_idle.remove(index);
        } else if remote == 0 {
            self.rooms_idle.touch(index, now);
        }
    }

    /// Hands out the next room freed (idle or evicted), so the driver can let go of what
    /// it keeps for the room (cluster mode: the stream it follows). The driver drains this
    /// every loop turn; it holds at most the rooms freed since.
    pub fn poll_freed(&mut self) -> Option<Arc<str>> {
        self.freed.pop_front()
    }

    /// Whether `room` is held here or a new room could be (below the cap, or a room no
    /// subscriber follows could make place).
    pub fn room_available(&self, room: &str) -> bool {
        self.room_index.contains_key(room)
            || self.rooms_live < self.config.rooms_max
            || !self.rooms_idle.is_empty()
    }

    /// Hands out the next change in this shard's presence in a room. The driver passes it
    /// to the room's owner shard ([`Fanout::handle_presence`]) unless it is the owner, so
    /// the owner never frees or evicts a room another shard's subscribers follow.
    pub fn poll_presence(&mut self) -> Option<Presence> {
        self.presence.pop_front()
    }

    /// Owner side of [`Fanout::poll_presence`]: another shard gained its first subscriber
    /// of `room` (the room is created if this shard freed it meanwhile) or lost its last.
    pub fn handle_presence(&mut self, now: Instant, room: &str, subscribed: bool) {
        self.now = now;
        let index = if subscribed {
            match self.room_for(room, true) {
                Ok(index) => index,
                Err(_) => return,
            }
        } else {
            match self.room_index.get(room) {
                Some(&index) => index,
                None => return,
            }
        };
        let room = self.room_at_mut(index);
        if subscribed {
            room.remote_shards += 1;
            self.rooms_idle.remove(index);
        } else {
            room.remote_shards = room.remote_shards.saturating_sub(1);
            if room.remote_shards == 0 && room.subscribers.is_empty() {
                self.rooms_idle.touch(index, now);
            }
        }
    }

    /// Frees rooms idle for `room_idle_timeout`, oldest first, at most [`ROOM_SWEEP_MAX`].
    fn sweep_idle_rooms(&mut self, now: Instant) {
        for _ in 0..ROOM_SWEEP_MAX {
            match self.rooms_idle.front() {
                Some((index, since)) if since + self.config.room_idle_timeout <= now => {
                    self.free_room(index);
                    self.stats.rooms_freed_idle_total += 1;
                }
                _ => return,
            }
        }
    }

    /// Subscribes `conn` to `room`. `head` (the stream head (for HTTP/1.1, the stream head)) goes out in the first
    /// write. With a resume id, [`Fanout::place`] decides where the cursor starts: after
    /// it (every message after it still in history is replayed, and a gap notice says what
    /// is no longer there), or, when it cannot be placed, a reset notice and everything
    /// held.
    pub fn handle_subscribe(
        &mut self,
        now: Instant,
        conn: ConnId,
        room: &str,
        resume: Option<ResumeId>,
        head: Bytes,
    ) -> Result<(), FanoutError> {
        self.handle_subscribe_in(now, conn, room, resume, Format::Sse, head)
    }

    /// As [`Fanout::handle_subscribe`], for a connection that carries `format`: every frame
    /// it is sent (messages, notices, heartbeats, the drain) is in that form; `head` goes
    /// out first as it is (for WebSocket: the 101 response, or a `subscribed` frame on a
    /// multiplexed connection).
    pub fn handle_subscribe_in(
        &mut self,
        now: Instant,
        conn: ConnId,
        room: &str,
        resume: Option<ResumeId>,
        format: Format,
        head: Bytes,
    ) -> Result<(), FanoutError> {
        let start = self.place(room, resume);
        self.handle_subscribe_replayed_in(now, conn, room, start, format, head, Vec::new())
    }

    /// Where a subscriber of `room` resuming with `resume` starts. Single node: `E-S`
    /// places only with the room's current incarnation as `E` and `S` at most the head.
    /// Cluster (`stream_ids`): a stream id that fits is taken as it is, even above this
    /// replica's head (it may be a real id this node has not received yet: the caller asks
    /// the broker first).
    pub fn place(&self, room: &str, resume: Option<ResumeId>) -> Start {
        let id = match resume {
            None => return Start::Head,
            Some(ResumeId::Unplaceable(reason)) => return Start::Reset(reason),
            Some(ResumeId::At(id)) => id,
        };
        if self.config.stream_ids {
            return id
                .stream_packed()
                .map_or(Start::Reset(ResetReason::BeyondHead), Start::After);
        }
        let Some(room) = self.room_index.get(room).map(|&i| self.room_at(i)) else {
            return Start::Reset(ResetReason::UnknownEpoch);
        };
        if room.incarnation == 0 || id.epoch != room.incarnation {
            Start::Reset(ResetReason::UnknownEpoch)
        } else if id.seq > room.history.last_id() {
            Start::Reset(ResetReason::BeyondHead)
        } else {
            Start::After(id.seq)
        }
    }

    /// A subscribe in cluster mode (ids are the broker's, the same on every node): `replay`
    /// (frames fetched from the broker, possibly led by a gap notice) goes out right after
    /// the head, then history after where `start` says. The caller has placed the resume
    /// id ([`Fanout::place`], then the broker for ids above this replica's head).
    pub fn handle_subscribe_replayed(
        &mut self,
        now: Instant,
        conn: ConnId,
        room: &str,
        start: Start,
        head: Bytes,
        replay: Vec<Frame>,
    ) -> Result<(), FanoutError> {
        self.handle_subscribe_replayed_in(now, conn, room, start, Format::Sse, head, replay)
    }

    /// As [`Fanout::handle_subscribe_replayed`], for a connection that carries `format`
    /// (see [`Fanout::handle_subscribe_in`]).
    #[allow(clippy::too_many_arguments)] // one subscribe's parts
    pub fn handle_subscribe_replayed_in(
        &mut self,
        now: Instant,
        conn: ConnId,
        room: &str,
        start: Start,
        format: Format,
        head: Bytes,
        replay: Vec<Frame>,
    ) -> Result<(), FanoutError> {
        let index = conn.0 as usize;
        if self.subscribers.get(index).is_some_and(Option::is_some) {
            return Err(FanoutError::AlreadySubscribed);
        }
        if self.subscribers_live >= self.config.subscribers_max {
            return Err(FanoutError::SubscribersFull);
        }
        self.now = now;
        let room_index = self.room_for(room, false)?;
        let serial = self.serial_next;
        let heartbeat = self
            .heartbeats
            .insert(now + self.config.heartbeat, (conn, serial))
            .map_err(|_| FanoutError::TimersFull)?;
        self.serial_next = self.serial_next.wrapping_add(1);
        if self.room_at(room_index).subscribers.is_empty() {
            self.local_presence(room_index, true);
        }
        let stream_ids = self.config.stream_ids;
        let room_ref = self.rooms[room_index as usize]
            .as_mut()
            .expect("room_for returns a live room");
        let head_id = room_ref.history.last_id();
        let (mut cursor, reset) = match start {
            Start::Head => (head_id, None),
            Start::After(id) => (id, None),
            Start::Reset(reason) => {
                let held_from = room_ref.history.first_id();
                let cursor = held_from.map_or(head_id, |first| first - 1);
                let known = stream_ids || room_ref.incarnation != 0;
                let notice = Frame::reset(
                    room,
                    reason,
                    held_from.map(|first| shown(stream_ids, room_ref, first)),
                    known.then(|| shown(stream_ids, room_ref, cursor)),
                )
                .get(format);
                self.stats.resets_total += 1;
                (cursor, Some(notice))
            }
        };
        let mut gap = None;
        if let ResumeFrom::Gap { from, to } = room_ref.history.resume_from(cursor) {
            gap = Some(
                Frame::gap(
                    room,
                    shown(stream_ids, room_ref, from),
                    shown(stream_ids, room_ref, to),
                )
                .get(format),
            );
            cursor = to;
            self.stats.gaps_total += 1;
        }
        let slot = room_ref.subscribers.len() as u32;
        room_ref.subscribers.push(conn);
        if self.subscribers.len() <= index {
            self.subscribers.resize_with(index + 1, || None);
        }
        self.subscribers[index] = Some(Subscriber {
            room: room_index,
            slot,
            serial,
            cursor,
            in_flight: false,
            queued: true,
            heartbeat_due: false,
            started: false,
            format,
            preamble: Some(Box::new(
                std::iter::once(head)
                    .chain(replay.iter().map(|frame| frame.get(format)))
                    .chain(reset)
                    .chain(gap)
                    .collect(),
            )),
            heartbeat: Some(heartbeat),
        });
        self.subscribers_live += 1;
        self.dirty.push_back((conn, serial, now));
        Ok(())
    }

    /// The highest id `room` holds on this shard (`None` when the shard holds no such room).
    pub fn head_id(&self, room: &str) -> Option<u64> {
        Some(self.room_at(*self.room_index.get(room)?).history.last_id())
    }

    /// Where resuming `room` after `last_event_id` stands in this shard's replica (`None`
    /// when the shard holds no such room).
    pub fn resume_check(&self, room: &str, last_event_id: u64) -> Option<(ResumeFrom, u64)> {
        let room = self.room_at(*self.room_index.get(room)?);
        let first = room
            .history
            .first_id()
            .unwrap_or(room.history.last_id() + 1);
        Some((room.history.resume_from(last_event_id), first))
    }

    /// Says that this replica of `room` starts at `first_id` (cluster mode: filled from the
    /// middle of the broker's log), so older resume points count as lapped.
    pub fn handle_history_start(&mut self, room: &str, first_id: u64) {
        if let Ok(index) = self.room_for(room, true) {
            self.room_at_mut(index).history.mark_held_from(first_id);
        }
    }

    /// Sequences a message in a room this shard owns: assigns the next id, encodes the
    /// frame once in both forms (SSE and WebSocket, one buffer: [`Frame`]), stores it and
    /// marks the room's subscribers dirty. Returns the id and the frame, which the driver
    /// hands to the other shards ([`Fanout::handle_frame`]). The room's first message gives
    /// it its incarnation, the epoch of its ids.
    pub fn handle_publish(
        &mut self,
        now: Instant,
        room: &str,
        data: &[u8],
    ) -> Result<(EventId, Frame), FanoutError> {
        self.handle_publish_stamped(now, 0, room, data)
    }

    /// As [`Fanout::handle_publish`], stamping the frame with the process-clock time of
    /// sequencing (Unix nanoseconds), which [`Fanout::poll_action_stamped`] hands back
    /// with every write that carries the frame.
    pub fn handle_publish_stamped(
        &mut self,
        now: Instant,
        stamp_unix_nanos: u64,
        room: &str,
        data: &[u8],
    ) -> Result<(EventId, Frame), FanoutError> {
        self.now = now;
        let room_index = self.room_for(room, false)?;
        if self.room_at(room_index).incarnation == 0 {
            // The first publish stamps the incarnation: only the owner sequences.
            let incarnation = self.next_incarnation(now);
            self.room_at_mut(room_index).incarnation = incarnation;
        }
        let room_ref = self.room_at(room_index);
        let id = room_ref.history.last_id() + 1;
        let shown_id = shown(self.config.stream_ids, room_ref, id);
        let frame = Frame::message(room, shown_id, data);
        self.append(now, room_index, id, frame.clone(), stamp_unix_nanos);
        self.stats.publishes_total += 1;
        Ok((shown_id, frame))
    }

    /// Stores a frame sequenced by the room's owner shard (or by the cluster broker) and
    /// marks this shard's subscribers dirty. Frames at or below the room's head are
    /// duplicates and ignored; returns whether it was new.
    pub fn handle_frame(&mut self, now: Instant, room: &str, id: u64, frame: Frame) -> bool {
        self.handle_frame_stamped(now, 0, room, id, frame)
    }

    /// As [`Fanout::handle_frame`], with the stamp the owner shard gave the frame.
    pub fn handle_frame_stamped(
        &mut self,
        now: Instant,
        stamp_unix_nanos: u64,
        room: &str,
        id: u64,
        frame: Frame,
    ) -> bool {
        self.handle_frame_replica(now, stamp_unix_nanos, room, 0, id, frame)
    }

    /// As [`Fanout::handle_frame_stamped`], for a frame of the room's `incarnation` as its
    /// owner shard numbered it (0: not numbered, cluster mode). A frame of an earlier
    /// incarnation is stale and ignored; one of a later incarnation (the owner freed the
    /// room and created it again while this replica kept it for its subscribers) starts the
    /// replica over: its history is dropped and its subscribers receive the new room's
    /// frames from its first id. A replica created by the frame holds nothing before it.
    pub fn handle_frame_replica(
        &mut self,
        now: Instant,
        stamp_unix_nanos: u64,
        room: &str,
        incarnation: u64,
        id: u64,
        frame: Frame,
    ) -> bool {
        self.now = now;
        let Ok(room_index) = self.room_for(room, true) else {
            return false;
        };
        if incarnation != 0 {
            let (history_messages_max, history_bytes_max) = (
                self.config.history_messages_max,
                self.config.history_bytes_max,
            );
            let replica = self.room_at_mut(room_index);
            if replica.incarnation == 0 {
                // First frame this replica sees: nothing before it is held here.
                replica.incarnation = incarnation;
                if replica.history.is_empty() {
                    replica.history.mark_held_from(id);
                    // Its subscribers joined at its (empty) head: they start at this frame.
                    for conn in replica.subscribers.clone() {
                        if let Some(sub) = self.subscribers[conn.0 as usize].as_mut() {
                            sub.cursor = sub.cursor.max(id - 1);
                        }
                    }
                }
            } else if incarnation < replica.incarnation {
                return false;
            } else if incarnation > replica.incarnation {
                replica.incarnation = incarnation;
                let old = std::mem::replace(
                    &mut replica.history,
                    crate::history::History::new(history_messages_max, history_bytes_max),
                );
                let subscribers = replica.subscribers.clone();
                // Its subscribers get what they had not yet received of the old room, then
                // are told (ids start again under a new epoch) and follow the new room from
                // its start.
                let notice = Frame::reset(
                    room,
                    ResetReason::RoomRestarted,
                    None,
                    Some(EventId {
                        epoch: incarnation,
                        seq: 0,
                    }),
                );
                for conn in subscribers {
                    self.restart_cursor(conn, &old);
                    if let Some(sub) = self.subscribers[conn.0 as usize].as_mut() {
                        sub.preamble
                            .get_or_insert_with(Default::default)
                            .push_back(notice.get(sub.format));
                        self.stats.resets_total += 1;
                    }
                }
            }
        }
        if id <= self.room_at(room_index).history.last_id() {
            return false;
        }
        self.append(now, room_index, id, frame, stamp_unix_nanos);
        self.stats.replicated_total += 1;
        true
    }

    /// The subscriber's room started over (a later incarnation): what it has not received
    /// of the `old` history goes out first, ahead of the new room's frames from its first
    /// id. One cut lapped in the old history is cut as it would have been.
    fn restart_cursor(&mut self, conn: ConnId, old: &crate::history::History) {
        let Some(sub) = self.subscribers[conn.0 as usize].as_mut() else {
            return;
        };
        if old.is_lapped(sub.cursor) {
            self.cuts.push_back(conn);
            return;
        }
        let mut rest = Vec::new();
        let mut cursor = sub.cursor;
        loop {
            let before = rest.len();
            cursor = old.collect_after(cursor, self.config.write_frames_max, sub.format, &mut rest);
            if rest.len() == before {
                break;
            }
        }
        if !rest.is_empty() {
            sub.preamble
                .get_or_insert_with(Default::default)
                .extend(rest);
        }
        sub.cursor = 0;
    }

    fn append(&mut self, now: Instant, room_index: u32, id: u64, frame: Frame, stamp: u64) {
        self.room_touched(room_index, now);
        let room = self.rooms[room_index as usize]
            .as_mut()
            .expect("append to a live room");
        room.history.push_stamped(id, frame, stamp);
        for conn in &room.subscribers {
            let Some(sub) = self.subscribers[conn.0 as usize].as_mut() else {
                continue;
            };
            if sub.in_flight {
                if room.history.is_lapped(sub.cursor) {
                    self.cuts.push_back(*conn);
                }
            } else if !sub.queued {
                sub.queued = true;
                self.dirty.push_back((*conn, sub.serial, now));
            }
        }
    }

    /// The driver finished writing what the last [`Action::Write`] for `conn` carried.
    pub fn handle_write_done(&mut self, now: Instant, conn: ConnId) {
        let Some(sub) = self
            .subscribers
            .get_mut(conn.0 as usize)
            .and_then(Option::as_mut)
        else {
            return;
        };
        sub.in_flight = false;
        let room = self.rooms[sub.room as usize]
            .as_ref()
            .expect("a subscriber's room is live");
        let due = sub.cursor < room.history.last_id()
            || sub.heartbeat_due
            || sub.preamble.is_some()
            || self.drain_retry.is_some();
        if due && !sub.queued {
            sub.queued = true;
            self.dirty.push_back((conn, sub.serial, now));
        }
    }

    /// The connection is gone (closed by the peer, by an error, or after a Close action):
    /// forget the subscriber and cancel its tickers. Idempotent.
    pub fn handle_disconnect(&mut self, conn: ConnId) {
        let Some(sub) = self
            .subscribers
            .get_mut(conn.0 as usize)
            .and_then(Option::take)
        else {
            return;
        };
        self.subscribers_live -= 1;
        if let Some(key) = sub.heartbeat {
            self.heartbeats.cancel(key);
        }
        let room = self.rooms[sub.room as usize]
            .as_mut()
            .expect("a subscriber's room is live");
        let slot = sub.slot as usize;
        room.subscribers.swap_remove(slot);
        if let Some(moved) = room.subscribers.get(slot) {
            if let Some(other) = self.subscribers[moved.0 as usize].as_mut() {
                other.slot = slot as u32;
            }
        }
        if room.subscribers.is_empty() {
            self.local_presence(sub.room, false);
        }
    }

    /// Starts draining: from now on, every subscriber whose cursor has reached its room's
    /// head (and whose writes are done) is handed out as [`Action::Close`] with
    /// [`CloseReason::Drained`], carrying an SSE `retry:` hint of `retry_ms` so the client
    /// reconnects (elsewhere) after that delay (a WebSocket subscriber: a close frame 1001). Subscribers still behind are written to
    /// first, so every message sequenced before the drain reaches them.
    pub fn handle_drain(&mut self, now: Instant, retry_ms: u64) {
        self.drain_retry = Some(Frame::drain(retry_ms));
        for (index, sub) in self.subscribers.iter_mut().enumerate() {
            if let Some(sub) = sub {
                if !sub.in_flight && !sub.queued {
                    sub.queued = true;
                    self.dirty
                        .push_back((ConnId(index as u32), sub.serial, now));
                }
            }
        }
    }

    /// Expires due heartbeat tickers and re-arms them, and frees rooms idle for
    /// `room_idle_timeout` (a bounded number per call; [`Fanout::poll_timeout`] says when
    /// more are due).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        self.sweep_idle_rooms(now);
        while let Some((conn, serial)) = self.heartbeats.poll_expired(now) {
            let Some(sub) = self
                .subscribers
                .get_mut(conn.0 as usize)
                .and_then(Option::as_mut)
            else {
                continue;
            };
            if sub.serial != serial {
                continue;
            }
            // The key held by the subscriber went stale when the timer fired.
            sub.heartbeat = self
                .heartbeats
                .insert(now + self.config.heartbeat, (conn, serial))
                .ok();
            if !sub.in_flight && !sub.queued {
                sub.heartbeat_due = true;
                sub.queued = true;
                self.dirty.push_back((conn, serial, now));
            }
        }
    }

    /// When the driver should call again at the latest: the next heartbeat, or the moment
    /// the oldest dirty subscriber's coalescing delay ends. `Some(now)`-like answers
    /// (a past instant) mean there is work now.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let dirty = self.dirty.front().map(|&(_, _, since)| {
            if self.dirty.len() > self.config.coalesce_queue_min {
                since + self.config.coalesce_delay
            } else {
                since
            }
        });
        let idle = self
            .rooms_idle
            .front()
            .map(|(_, since)| since + self.config.room_idle_timeout);
        [dirty, self.heartbeats.poll_timeout(), idle]
            .into_iter()
            .flatten()
            .min()
    }

    /// Hands out the next write or close, appending the frames it carries to `out`. `None`
    /// when nothing is due now.
    pub fn poll_action(&mut self, now: Instant, out: &mut Vec<Bytes>) -> Option<Action> {
        self.poll(now, out, None)
    }

    /// As [`Fanout::poll_action`], also appending to `stamps` the sequencing stamp of each
    /// message frame the action carries (not of stream heads, gap notices, heartbeats or
    /// retry hints), in order: the driver records publish→write latency from them when the
    /// write completes.
    pub fn poll_action_stamped(
        &mut self,
        now: Instant,
        out: &mut Vec<Bytes>,
        stamps: &mut Vec<u64>,
    ) -> Option<Action> {
        self.poll(now, out, Some(stamps))
    }

    fn poll(
        &mut self,
        now: Instant,
        out: &mut Vec<Bytes>,
        mut stamps: Option<&mut Vec<u64>>,
    ) -> Option<Action> {
        while let Some(conn) = self.cuts.pop_front() {
            if self
                .subscribers
                .get(conn.0 as usize)
                .is_some_and(Option::is_some)
            {
                self.handle_disconnect(conn);
                self.stats.slow_cuts_total += 1;
                return Some(Action::Close {
                    conn,
                    reason: CloseReason::Lapped,
                });
            }
        }
        while let Some(&(conn, serial, since)) = self.dirty.front() {
            if self.dirty.len() > self.config.coalesce_queue_min
                && now < since + self.config.coalesce_delay
            {
                return None;
            }
            self.dirty.pop_front();
            let Some(sub) = self
                .subscribers
                .get_mut(conn.0 as usize)
                .and_then(Option::as_mut)
            else {
                continue;
            };
            if sub.serial != serial || !sub.queued {
                continue;
            }
            sub.queued = false;
            debug_assert!(!sub.in_flight, "a queued subscriber has no write in flight");
            let room = self.rooms[sub.room as usize]
                .as_ref()
                .expect("a subscriber's room is live");
            if room.history.is_lapped(sub.cursor) {
                // A subscriber lapped before its first write still gets the stream head,
                // so the terminal event is readable as SSE.
                if !sub.started {
                    if let Some(head) = sub.preamble.as_mut().and_then(|p| p.pop_front()) {
                        out.push(head);
                    }
                }
                let last_id = shown(self.config.stream_ids, room, sub.cursor);
                out.push(Frame::lagged(&room.name, last_id).get(sub.format));
                self.handle_disconnect(conn);
                self.stats.slow_cuts_total += 1;
                return Some(Action::Close {
                    conn,
                    reason: CloseReason::Lapped,
                });
            }
            let start = out.len();
            if let Some(preamble) = sub.preamble.as_mut() {
                // Head and gap notice ride on top of a full write (WRITE_FRAMES_MAX leaves
                // room for them); a long replay takes several writes.
                let take = preamble.len().min(self.config.write_frames_max + 2);
                out.extend(preamble.drain(..take));
                if preamble.is_empty() {
                    sub.preamble = None;
                }
            }
            let extra = out.len() - start;
            let cursor = match stamps.as_deref_mut() {
                _ if sub.preamble.is_some() => sub.cursor,
                Some(stamps) => room.history.collect_after_stamped(
                    sub.cursor,
                    self.config.write_frames_max,
                    sub.format,
                    out,
                    stamps,
                ),
                None => room.history.collect_after(
                    sub.cursor,
                    self.config.write_frames_max,
                    sub.format,
                    out,
                ),
            };
            let delivered = out.len() - start - extra;
            debug_assert!(cursor >= sub.cursor, "a cursor never moves back");
            sub.cursor = cursor;
            if sub.heartbeat_due {
                sub.heartbeat_due = false;
                if out.len() == start {
                    out.push(Bytes::from_static(match sub.format {
                        Format::Sse => sse::HEARTBEAT,
                        Format::Ws => ws::PING_EMPTY,
                    }));
                    self.stats.heartbeats_total += 1;
                }
            }
            if out.len() == start {
                if let Some(retry) = &self.drain_retry {
                    out.push(retry.get(sub.format));
                    self.handle_disconnect(conn);
                    return Some(Action::Close {
                        conn,
                        reason: CloseReason::Drained,
                    });
                }
                continue;
            }
            sub.in_flight = true;
            sub.started = true;
            self.stats.deliveries_total += delivered as u64;
            self.stats.writes_total += 1;
            return Some(Action::Write { conn });
        }
        None
    }
}

#[cfg(test)]
mod tests;
