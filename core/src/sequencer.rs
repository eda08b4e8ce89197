//! Cross-shard sequencing (docs/ARCHITECTURE.md, step 4): one shard owns each room
//! ([`owner_shard`]) and alone numbers its messages; every other shard keeps a replica of
//! the room for its own subscribers. A publish read on shard *i* for a room shard *j*
//! owns goes to *j* as a [`Letter::Publish`]; *j* sequences it in its [`Fanout`], sends
//! the frame to every other shard ([`Letter::Frame`]) and the id (or its refusal) back to
//! *i* ([`Letter::Sequenced`]). The [`Sequencer`] owns that rule, the per-shard outboxes
//! it fills and the idempotency keys of the rooms this shard owns.
//!
//! Sans-IO: it never touches a queue between threads or a connection. Outgoing mail is
//! plain data ([`Letter`]) converted into the driver's mail type `M` (`M: From<Letter<R>>`,
//! a 1:1 mapping) and left in per-target outboxes that the driver moves to its queues
//! ([`Sequencer::outbox_mut`]); answers for connections come back as return values or, for
//! a forwarded publish, as a [`Letter::Sequenced`] the driver hands to whoever waits on
//! `reply` (an opaque token `R` it chose). Cluster mode (Redis sequences every room) does
//! not go through here.

use crate::event_id::EventId;
use crate::fanout::{Fanout, RoomInfo};
use crate::frame::Frame;
use crate::idempotency::{KeyTable, MailKey};
use crate::room::owner_shard;
use bytes::Bytes;
use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a publish got no id from this shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The shard is stopping (it sequences nothing new: its subscribers are draining).
    #[error("draining")]
    Draining,
    /// A queue to another shard holds the most mail it may ([`Sequencer::new`]'s
    /// `outbox_max`): sequencing would grow it further.
    #[error("shard queues full")]
    OutboxFull,
    /// The fan-out holds as many rooms as it may and this one is new.
    #[error("room limit reached")]
    RoomLimit,
}

/// One message between shards, as the sequencer writes it. `R` names who waits for an
/// answer (the driver's reply token: origin shard, connection, batch line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Letter<R> {
    /// To a room's owner: sequence this message.
    Publish {
        /// Room name.
        room: Arc<str>,
        /// Message data.
        data: Bytes,
        /// Who waits for the id.
        reply: R,
        /// The publish's idempotency key, if any.
        idempotency_key: Option<MailKey>,
    },
    /// The owner's answer to [`Letter::Publish`], to the shard that read the publish.
    Sequenced {
        /// Who waits.
        reply: R,
        /// The id, or why the owner refused.
        result: Result<EventId, Refusal>,
    },
    /// To every other shard: a sequenced frame for its replica of the room.
    Frame {
        /// Room name.
        room: Arc<str>,
        /// The room's incarnation on its owner: the epoch of its ids.
        incarnation: u64,
        /// The message's id in that incarnation.
        id: u64,
        /// The encoded frame in both forms (SSE and WebSocket), shared by every shard.
        frame: Frame,
        /// Process-clock time of sequencing (Unix nanoseconds; 0 when not recorded).
        stamp_unix_nanos: u64,
    },
    /// To a room's owner: this shard's first subscriber of the room arrived
    /// (`subscribed`) or its last one left, so the owner never frees a room followed
    /// elsewhere ([`Fanout::handle_presence`]).
    Presence {
        /// Room name.
        room: Arc<str>,
        /// True: the first subscriber arrived; false: the last one left.
        subscribed: bool,
    },
    /// To every other shard: what do you hold of `room`?
    RoomQuery {
        /// Room name.
        room: Arc<str>,
        /// Who waits.
        reply: R,
    },
    /// The answer to [`Letter::RoomQuery`].
    RoomCount {
        /// Who waits.
        reply: R,
        /// The answering shard's figures of the room (zero and `None` if it holds none).
        info: RoomInfo,
    },
    /// To every other shard, once, when the sender stops: it sequences nothing more, and
    /// every frame it sequenced was posted before this letter (mail between two shards
    /// keeps its order), so once the receiver has it, its replicas hold everything the
    /// sender acked ([`Sequencer::peers_stopped`]).
    Stopped {
        /// The shard that stopped.
        shard: usize,
    },
}

/// Where a publish read on this shard went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Routed {
    /// This shard owns the room (or refused to forward it): the answer, now.
    Answered(Result<EventId, Refusal>),
    /// Sent to the owner shard: the answer comes back as a [`Letter::Sequenced`] for the
    /// reply token, exactly once.
    Forwarded {
        /// The owner shard.
        owner: usize,
    },
}

/// One shard's side of cross-shard sequencing. See the module doc.
#[derive(Debug)]
pub struct Sequencer<R, M> {
    shard: usize,
    shards: usize,
    /// Mail waiting for room in the queue to each shard (this shard's own stays empty).
    outboxes: Vec<VecDeque<M>>,
    outbox_max: usize,
    /// Set once the shard stops: it sequences nothing new.
    stopping: bool,
    /// Which shards' [`Letter::Stopped`] arrived (this shard's own place stays false).
    peer_stopped: Vec<bool>,
    keys: KeyTable,
    /// The reply token type the letters carry.
    reply: PhantomData<fn(R)>,
}

impl<R, M: From<Letter<R>>> Sequencer<R, M> {
    /// Shard `shard` of `shards`. A publish is refused ([`Refusal::OutboxFull`]) while
    /// any outbox holds `outbox_max` or more mail; at most `keys_max` idempotency keys are
    /// kept (the oldest goes first).
    pub fn new(shard: usize, shards: usize, outbox_max: usize, keys_max: usize) -> Self {
        assert!(shards >= 1 && shard < shards, "shard {shard} of {shards}");
        assert!(outbox_max >= 1, "an outbox must hold some mail");
        Self {
            shard,
            shards,
            outboxes: (0..shards).map(|_| VecDeque::new()).collect(),
            outbox_max,
            stopping: false,
            peer_stopped: vec![false; shards],
            keys: KeyTable::new(keys_max),
            reply: PhantomData,
        }
    }

    /// This shard's index.
    pub fn shard(&self) -> usize {
        self.shard
    }

    /// Shards in the process.
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// The shard that sequences `room`.
    pub fn owner(&self, room: &str) -> usize {
        owner_shard(room, self.shards)
    }

    /// Whether an outbox is at its bound (new publishes are refused).
    pub fn outbox_full(&self) -> bool {
        self.outboxes.iter().any(|q| q.len() >= self.outbox_max)
    }

    /// The idempotency keys held (for figures).
    pub fn keys(&self) -> &KeyTable {
        &self.keys
    }

    /// The shard stops: from now on every publish it would sequence is refused
    /// ([`Refusal::Draining`]); forwarding and replicas go on, so what other shards
    /// accepted before their own stop still arrives. Every other shard is told
    /// ([`Letter::Stopped`], after every frame this shard sequenced); later calls change
    /// nothing.
    pub fn handle_stop(&mut self) {
        if std::mem::replace(&mut self.stopping, true) {
            return;
        }
        let shard = self.shard;
        for target in (0..self.shards).filter(|&target| target != shard) {
            self.post(target, Letter::Stopped { shard });
        }
    }

    /// A [`Letter::Stopped`] from `shard`: everything it will ever sequence is in this
    /// shard's fan-out now.
    pub fn handle_peer_stopped(&mut self, shard: usize) {
        debug_assert_ne!(shard, self.shard, "a shard's own stop comes by mail");
        if let Some(stopped) = self.peer_stopped.get_mut(shard) {
            *stopped = true;
        }
    }

    /// Whether every other shard has stopped sequencing and this shard has taken in all it
    /// sequenced: no publish acked anywhere in the process can add a frame to this shard's
    /// replicas any more, so its subscribers may be drained (`drain::Figures`). Draining
    /// sooner (on time alone) could close a caught-up subscriber, the publisher itself
    /// included, before the frame of a publish the owner sequences, and acks, later.
    pub fn peers_stopped(&self) -> bool {
        let shard = self.shard;
        self.peer_stopped
            .iter()
            .enumerate()
            .all(|(index, &stopped)| stopped || index == shard)
    }

    /// Forgets idempotency keys recorded `window` or longer before `now`.
    pub fn handle_timeout(&mut self, now: Instant, window: Duration) {
        self.keys.handle_timeout(now, window);
    }

    /// The mail waiting for `target`'s queue, oldest first: the driver pops from the front
    /// and puts back at the front what its queue did not take.
    pub fn outbox_mut(&mut self, target: usize) -> &mut VecDeque<M> {
        &mut self.outboxes[target]
    }

    /// Queues `letter` for `target` (never this shard).
    fn post(&mut self, target: usize, letter: Letter<R>) {
        assert_ne!(target, self.shard, "mail to itself");
        self.outboxes[target].push_back(M::from(letter));
    }

    /// A publish read on this shard (a request of one of its connections): sequenced here
    /// when this shard owns the room, else sent to the owner with `reply` ([`Routed`]).
    /// `stamp` gives the process-clock time to stamp the frame with, read only when the
    /// message is sequenced. `window`: how long idempotency keys count.
    #[allow(clippy::too_many_arguments)] // one publish's parts; a struct would only rename them
    pub fn handle_publish(
        &mut self,
        fanout: &mut Fanout,
        now: Instant,
        window: Duration,
        stamp: impl FnOnce() -> u64,
        room: &Arc<str>,
        data: Bytes,
        idempotency_key: Option<String>,
        reply: R,
    ) -> Routed {
        let owner = self.owner(room);
        if owner == self.shard {
            let key = idempotency_key.as_deref();
            return Routed::Answered(self.sequence(fanout, now, window, stamp, room, &data, key));
        }
        if self.outbox_full() {
            return Routed::Answered(Err(Refusal::OutboxFull));
        }
        let letter = Letter::Publish {
            room: room.clone(),
            data,
            reply,
            idempotency_key: idempotency_key.map(MailKey::new),
        };
        self.post(owner, letter);
        Routed::Forwarded { owner }
    }

    /// A [`Letter::Publish`] from shard `origin`: sequences it (this shard owns the room)
    /// and sends the answer back. Returns the answer too, for the driver's counters.
    #[allow(clippy::too_many_arguments)] // the letter's parts
    pub fn handle_publish_letter(
        &mut self,
        fanout: &mut Fanout,
        now: Instant,
        window: Duration,
        stamp: impl FnOnce() -> u64,
        origin: usize,
        room: &Arc<str>,
        data: &[u8],
        idempotency_key: Option<&str>,
        reply: R,
    ) -> Result<EventId, Refusal> {
        debug_assert_eq!(self.owner(room), self.shard, "publish sent to a non-owner");
        let result = self.sequence(fanout, now, window, stamp, room, data, idempotency_key);
        self.post(origin, Letter::Sequenced { reply, result });
        result
    }

    /// Sequences a message of a room this shard owns and sends the frame to every other
    /// shard. With an idempotency key seen within `window`: the first publish's id, and
    /// nothing sequenced. Only a sequenced publish records its key (a refused one may be
    /// retried with it).
    #[allow(clippy::too_many_arguments)] // one publish's parts
    fn sequence(
        &mut self,
        fanout: &mut Fanout,
        now: Instant,
        window: Duration,
        stamp: impl FnOnce() -> u64,
        room: &Arc<str>,
        data: &[u8],
        idempotency_key: Option<&str>,
    ) -> Result<EventId, Refusal> {
        if let Some(key) = idempotency_key {
            if let Some(id) = self.keys.handle_publish(now, window, room, key) {
                return Ok(id);
            }
        }
        if self.stopping {
            return Err(Refusal::Draining);
        }
        if self.outbox_full() {
            return Err(Refusal::OutboxFull);
        }
        let stamp_unix_nanos = stamp();
        let Ok((id, frame)) = fanout.handle_publish_stamped(now, stamp_unix_nanos, room, data)
        else {
            return Err(Refusal::RoomLimit);
        };
        let shard = self.shard;
        for target in (0..self.shards).filter(|&target| target != shard) {
            self.post(
                target,
                Letter::Frame {
                    room: room.clone(),
                    incarnation: id.epoch,
                    id: id.seq,
                    frame: frame.clone(),
                    stamp_unix_nanos,
                },
            );
        }
        if let Some(key) = idempotency_key {
            self.keys.record(now, room, key, id);
        }
        Ok(id)
    }

    /// A [`Letter::Frame`]: the owner's frame for this shard's replica. Returns whether it
    /// was new (a stale or repeated frame is dropped by the fan-out).
    #[allow(clippy::too_many_arguments)] // the letter's parts
    pub fn handle_frame(
        &mut self,
        fanout: &mut Fanout,
        now: Instant,
        room: &str,
        incarnation: u64,
        id: u64,
        frame: Frame,
        stamp_unix_nanos: u64,
    ) -> bool {
        fanout.handle_frame_replica(now, stamp_unix_nanos, room, incarnation, id, frame)
    }

    /// Tells the owners of rooms whose local presence changed ([`Fanout::poll_presence`]).
    pub fn forward_presence(&mut self, fanout: &mut Fanout) {
        while let Some(presence) = fanout.poll_presence() {
            let owner = self.owner(&presence.room);
            if owner != self.shard {
                let letter = Letter::Presence {
                    room: presence.room,
                    subscribed: presence.subscribed,
                };
                self.post(owner, letter);
            }
        }
    }

    /// Asks every other shard what it holds of `room` (for `GET /rooms/{room}`); returns
    /// how many answers ([`Letter::RoomCount`]) will come back for `reply`.
    pub fn query_room(&mut self, room: &Arc<str>, reply: R) -> usize
    where
        R: Clone,
    {
        let shard = self.shard;
        for target in (0..self.shards).filter(|&target| target != shard) {
            let letter = Letter::RoomQuery {
                room: room.clone(),
                reply: reply.clone(),
            };
            self.post(target, letter);
        }
        self.shards - 1
    }

    /// A [`Letter::RoomQuery`] from shard `origin`: answers with this shard's figures.
    pub fn handle_room_query(&mut self, fanout: &Fanout, origin: usize, room: &str, reply: R) {
        let info = fanout.room_info(room).unwrap_or(RoomInfo {
            subscribers: 0,
            last_id: None,
            history_len: 0,
        });
        self.post(origin, Letter::RoomCount { reply, info });
    }
}

/// The figures of one room over every shard, from this shard's and each
/// [`Letter::RoomCount`]: subscribers add up; the highest id and the longest history are
/// the most any replica holds (a replica may have been freed on some shard).
pub fn merge_room_info(total: &mut RoomInfo, part: &RoomInfo) {
    total.subscribers += part.subscribers;
    total.last_id = total.last_id.max(part.last_id);
    total.history_len = total.history_len.max(part.history_len);
}

#[cfg(test)]
mod tests;
