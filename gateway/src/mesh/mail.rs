//! Cross-shard message passing: one bounded single-producer queue per ordered pair of
//! shards plus an eventfd per shard to wake its loop. Nothing else is shared between
//! shards on the hot path.

use crate::app::admission::Rejection;
use crate::conn::key::ConnKey;
use crate::mesh::virtual_conn::{Transport, VirtualSink};
use crate::upstream::cluster::RedisRefusal;
use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use ringcast_core::sequencer::Letter;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

/// Messages one queue holds. A publish is refused (503) when its outbox backs up past
/// [`OUTBOX_MAX`], so the queues never need to grow.
pub const QUEUE_CAPACITY: usize = 8192;
/// Messages a shard keeps waiting for room in a full queue before it refuses publishes.
pub const OUTBOX_MAX: usize = 65_536;

/// Where a reply goes: a connection on a shard, by [`ConnKey`], so a reply to a connection
/// that has since closed is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyTo {
    /// Origin shard.
    pub shard: u32,
    /// The connection on the origin shard.
    pub conn: ConnKey,
    /// Line of a batch publish (0 for single publishes).
    pub index: u32,
}

/// Why a publish got no id: the owner shard's refusal, or Redis's in cluster mode. Carried
/// back to the shard that read the publish by [`Mail::Sequenced`]; its text is the 503's
/// body, the words tests and docs quote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PublishRefusal {
    /// The shard refused it (draining, queues full, room limit, write backlog).
    #[error("{}", .0.text())]
    Shard(Rejection),
    /// Redis did not append it (cluster mode).
    #[error(transparent)]
    Redis(#[from] RedisRefusal),
    /// A cluster publish on a shard without cluster mode (cannot happen).
    #[error("cluster mode is off")]
    ClusterOff,
    /// The connection's publish completed without its answer (cannot happen: it completes
    /// when the answer arrives).
    #[error("no answer from the owner shard")]
    NoAnswer,
}

impl From<Rejection> for PublishRefusal {
    fn from(rejection: Rejection) -> Self {
        PublishRefusal::Shard(rejection)
    }
}

impl From<ringcast_core::sequencer::Refusal> for PublishRefusal {
    fn from(refusal: ringcast_core::sequencer::Refusal) -> Self {
        PublishRefusal::Shard(refusal.into())
    }
}

impl From<Letter<ReplyTo>> for Mail {
    /// The sequencer's outgoing mail, variant for variant.
    fn from(letter: Letter<ReplyTo>) -> Self {
        match letter {
            Letter::Publish {
                room,
                data,
                reply,
                idempotency_key,
            } => Mail::Publish {
                room,
                data,
                reply,
                idempotency_key,
            },
            Letter::Sequenced { reply, result } => Mail::Sequenced {
                reply,
                result: result.map_err(PublishRefusal::from),
            },
            Letter::Frame {
                room,
                incarnation,
                id,
                frame,
                stamp_unix_nanos,
            } => Mail::Frame {
                room,
                incarnation,
                id,
                frame,
                stamp_unix_nanos,
            },
            Letter::Presence { room, subscribed } => Mail::Presence { room, subscribed },
            Letter::RoomQuery { room, reply } => Mail::RoomQuery { room, reply },
            Letter::RoomCount { reply, info } => Mail::RoomCount {
                reply,
                subscribers: info.subscribers,
                last_id: info.last_id,
                history_len: info.history_len,
            },
            Letter::Stopped { shard } => Mail::Stopped { shard },
        }
    }
}

/// One message between shards.
#[derive(Debug)]
pub enum Mail {
    /// Sequence this message in a room the receiver owns.
    Publish {
        /// Room name.
        room: Arc<str>,
        /// Message data.
        data: Bytes,
        /// Who waits for the id.
        reply: ReplyTo,
        /// The publish's idempotency key, if any (idempotency.rs).
        idempotency_key: Option<crate::app::idempotency::MailKey>,
    },
    /// The owner's answer to [`Mail::Publish`]: the id, or why it refused.
    Sequenced {
        /// Who waits.
        reply: ReplyTo,
        /// The id or a refusal reason.
        result: Result<ringcast_core::event_id::EventId, PublishRefusal>,
    },
    /// A sequenced frame for this shard's replica of a room.
    Frame {
        /// Room name.
        room: Arc<str>,
        /// The room's incarnation on its owner (see `ringcast_core::room::Room::incarnation`): the
        /// epoch of its ids.
        incarnation: u64,
        /// Its id.
        id: u64,
        /// The encoded frame in both forms (SSE, WebSocket), shared with every shard.
        frame: ringcast_core::frame::Frame,
        /// Process-clock time of sequencing (Unix nanoseconds; 0 when not recorded).
        stamp_unix_nanos: u64,
    },
    /// To a room's owner: the sender's first subscriber of `room` arrived (`subscribed`)
    /// or its last one left.
    Presence {
        /// Room name.
        room: Arc<str>,
        /// See `ringcast_core::fanout::Presence`.
        subscribed: bool,
    },
    /// How many subscribers of `room` do you hold?
    RoomQuery {
        /// Room name.
        room: Arc<str>,
        /// Who waits.
        reply: ReplyTo,
    },
    /// Answer to [`Mail::RoomQuery`].
    RoomCount {
        /// Who waits.
        reply: ReplyTo,
        /// Subscribers on the answering shard.
        subscribers: usize,
        /// Highest id in the answering shard's replica (`None` if it holds none): a
        /// replica may have been freed on the shard that asked.
        last_id: Option<ringcast_core::event_id::EventId>,
        /// Messages the answering shard's replica holds.
        history_len: usize,
    },
    /// The sender stopped: it sequences nothing more, and its frames came before this
    /// (`ringcast_core::sequencer::Letter::Stopped`).
    Stopped {
        /// The shard that stopped.
        shard: usize,
    },
    /// From the shard's companion thread: serve this request (complete HTTP/1.1 bytes,
    /// translated from TLS, HTTP/2 or HTTP/3) as a virtual connection writing to `sink`.
    VirtualOpen {
        /// Request head and body.
        request: Vec<u8>,
        /// Where the answer goes.
        sink: Arc<VirtualSink>,
        /// The transport, for metrics.
        transport: Transport,
    },
    /// From the companion: every frame of the batch taken from `sink` went to hyper/h3.
    VirtualWriteDone {
        /// The connection's sink (it holds the slot and serial).
        sink: Arc<VirtualSink>,
    },
    /// From the companion: a tunnel's posted receive is answered (its bytes, or the end,
    /// wait in `sink`: `VirtualSink::take_received`).
    VirtualReceived {
        /// The connection's sink.
        sink: Arc<VirtualSink>,
    },
    /// From the companion: the peer is gone (stream reset or connection closed).
    VirtualClose {
        /// The connection's sink.
        sink: Arc<VirtualSink>,
    },
}

/// Every queue and wake-up fd of the process.
pub struct Mesh {
    shards: usize,
    queues: Vec<ArrayQueue<Mail>>,
    /// Companion thread `i` → shard `i` (single producer each).
    companion_queues: Vec<ArrayQueue<Mail>>,
    eventfds: Vec<OwnedFd>,
}

impl Mesh {
    /// Queues for `shards` shards.
    pub fn new(shards: usize) -> io::Result<Self> {
        let mut eventfds = Vec::with_capacity(shards);
        for _ in 0..shards {
            eventfds.push(crate::uring::sys::eventfd()?);
        }
        let queues = (0..shards * shards)
            .map(|_| ArrayQueue::new(QUEUE_CAPACITY))
            .collect();
        let companion_queues = (0..shards)
            .map(|_| ArrayQueue::new(QUEUE_CAPACITY))
            .collect();
        Ok(Self {
            shards,
            queues,
            companion_queues,
            eventfds,
        })
    }

    /// Shards in the mesh.
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// The queue from `from` to `to`.
    pub fn queue(&self, from: usize, to: usize) -> &ArrayQueue<Mail> {
        &self.queues[from * self.shards + to]
    }

    /// The queue from `shard`'s companion thread to `shard`.
    pub fn companion_queue(&self, shard: usize) -> &ArrayQueue<Mail> {
        &self.companion_queues[shard]
    }

    /// Wakes `shard`'s loop (from a thread that holds no ring: the companion).
    pub fn wake(&self, shard: usize) {
        crate::uring::sys::eventfd_add_one(self.eventfds[shard].as_raw_fd());
    }

    /// The wake-up eventfd of `shard`.
    pub fn eventfd(&self, shard: usize) -> RawFd {
        self.eventfds[shard].as_raw_fd()
    }

    /// A duplicate of `shard`'s wake-up eventfd, for a thread outside the mesh (the
    /// authorization pool) that must outlive a borrow of the mesh.
    pub fn eventfd_owned(&self, shard: usize) -> io::Result<OwnedFd> {
        self.eventfds[shard].try_clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 503 bodies a refused publish gets are today's words (tests and docs quote them).
    #[test]
    fn publish_refusals_read_as_before() {
        let table: &[(PublishRefusal, &str)] = &[
            (Rejection::Draining.into(), "draining"),
            (Rejection::ShardQueues.into(), "shard queues full"),
            (Rejection::RoomLimit.into(), "room limit reached"),
            (
                Rejection::PendingWriteBytes.into(),
                "shard write backlog over its limit",
            ),
            (
                RedisRefusal::TimedOutUnsent.into(),
                "redis timed out before the publish was sent: not appended",
            ),
            (
                RedisRefusal::Unreachable.into(),
                "redis unreachable: not appended",
            ),
            (
                RedisRefusal::Refused.into(),
                "redis refused the message: not appended",
            ),
            (
                RedisRefusal::QueueFull.into(),
                "redis queue full: not appended",
            ),
            (
                RedisRefusal::CircuitOpen.into(),
                "redis unavailable (circuit open): not appended",
            ),
            (
                RedisRefusal::TimedOutUnknown.into(),
                "redis timed out: outcome unknown: retry with the same Idempotency-Key",
            ),
            (
                RedisRefusal::LostUnknown.into(),
                "redis connection lost: outcome unknown: retry with the same Idempotency-Key",
            ),
            (PublishRefusal::ClusterOff, "cluster mode is off"),
            (PublishRefusal::NoAnswer, "no answer from the owner shard"),
        ];
        for (refusal, text) in table {
            assert_eq!(refusal.to_string(), *text, "{refusal:?}");
        }
    }

    /// The sequencer's refusals read, and are counted, as the shard's own did.
    #[test]
    fn sequencer_refusals_map_onto_the_same_words_and_counters() {
        use ringcast_core::sequencer::Refusal;
        let table = [
            (Refusal::Draining, Rejection::Draining, "draining"),
            (
                Refusal::OutboxFull,
                Rejection::ShardQueues,
                "shard queues full",
            ),
            (
                Refusal::RoomLimit,
                Rejection::RoomLimit,
                "room limit reached",
            ),
        ];
        for (refusal, rejection, text) in table {
            assert_eq!(Rejection::from(refusal), rejection);
            assert_eq!(PublishRefusal::from(refusal).to_string(), text);
        }
    }

    /// Every letter becomes the mail of the same name with the same contents.
    #[test]
    fn letters_map_one_to_one_onto_mail() {
        use ringcast_core::event_id::EventId;
        use ringcast_core::fanout::RoomInfo;
        use ringcast_core::sequencer::Refusal;
        let reply = ReplyTo {
            shard: 1,
            conn: ConnKey { slot: 2, serial: 3 },
            index: 4,
        };
        let room: Arc<str> = Arc::from("r");
        let id = EventId { epoch: 5, seq: 6 };
        let mail = Mail::from(Letter::Sequenced {
            reply,
            result: Err(Refusal::OutboxFull),
        });
        assert!(matches!(
            mail,
            Mail::Sequenced { reply: r, result: Err(PublishRefusal::Shard(Rejection::ShardQueues)) } if r == reply
        ));
        let mail = Mail::from(Letter::Frame {
            room: room.clone(),
            incarnation: 5,
            id: 6,
            frame: ringcast_core::frame::Frame::from_parts(b"f", b"w"),
            stamp_unix_nanos: 7,
        });
        assert!(matches!(
            mail,
            Mail::Frame { incarnation: 5, id: 6, stamp_unix_nanos: 7, ref frame, .. } if frame.sse() == "f" && frame.ws() == "w"
        ));
        let mail = Mail::from(Letter::RoomCount {
            reply,
            info: RoomInfo {
                subscribers: 8,
                last_id: Some(id),
                history_len: 9,
            },
        });
        assert!(matches!(
            mail,
            Mail::RoomCount { subscribers: 8, last_id: Some(l), history_len: 9, .. } if l == id
        ));
        let mail = Mail::from(Letter::Publish {
            room,
            data: Bytes::from_static(b"d"),
            reply,
            idempotency_key: Some(crate::app::idempotency::MailKey::new("k".into())),
        });
        assert!(matches!(
            mail,
            Mail::Publish { ref data, idempotency_key: Some(ref k), .. } if data == "d" && k.as_str() == "k"
        ));
    }

    /// A typed refusal costs the mail nothing over the `&'static str` it replaced.
    #[test]
    fn a_sequenced_answer_is_no_larger_than_before() {
        type Before = Result<ringcast_core::event_id::EventId, &'static str>;
        type After = Result<ringcast_core::event_id::EventId, PublishRefusal>;
        assert!(std::mem::size_of::<After>() <= std::mem::size_of::<Before>());
    }
}

/// TLS connections the shard may hand to its companion at once (`h2` clients between the
/// ring's ClientHello and the companion's accept). Past it the shard closes the connection
/// (`ringcast_admission_rejections_total{reason="shard_queues_full"}`).
pub const TLS_HANDOFF_QUEUE_MAX: usize = 1024;

/// A TLS connection the shard's ring accepted and read the ClientHello of, whose client
/// offers ALPN `h2`: the companion continues the handshake (tokio-rustls) and serves HTTP/2.
#[derive(Debug)]
pub struct TlsHandOff {
    /// The connected socket (blocking, as accepted).
    pub fd: std::os::fd::OwnedFd,
    /// Every byte the ring read from it: the ClientHello, replayed to rustls first.
    pub hello: Vec<u8>,
    /// The client's address when it counts against `--max-connections-per-ip` (released
    /// when the companion closes the connection).
    pub peer: Option<std::net::IpAddr>,
}
