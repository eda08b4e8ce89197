//! The sequencer driven by a simulated process: several shards, each a [`Fanout`] and a
//! [`Sequencer`], bounded queues between them in place of the real ones, virtual time, and
//! mail delivered in whatever order a test or proptest picks.

use super::*;
use crate::conn_id::ConnId;
use crate::fanout::{Action, FanoutConfig};
use proptest::prelude::*;
use std::collections::{BTreeMap, HashMap};

/// Who waits for an answer: the shard that read publish number `publish`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reply {
    origin: usize,
    publish: u64,
}

type Seq = Sequencer<Reply, Letter<Reply>>;

const WINDOW: Duration = Duration::from_secs(120);

struct Shard {
    fanout: Fanout,
    seq: Seq,
    /// Frames each local subscriber received, by connection.
    received: HashMap<ConnId, Vec<Bytes>>,
}

/// A process of shards. `queues[from][to]` stands for the bounded queue between them.
struct Sim {
    now: Instant,
    shards: Vec<Shard>,
    queues: Vec<Vec<VecDeque<Letter<Reply>>>>,
    queue_capacity: usize,
    /// Every publish: origin, room, data.
    publishes: Vec<(usize, Arc<str>, String)>,
    /// Every answer, by publish number; a second answer fails the test.
    answers: BTreeMap<u64, Result<EventId, Refusal>>,
    /// Room counts gathered per waiting query.
    counts: HashMap<u64, (RoomInfo, usize)>,
}

impl Sim {
    fn new(shards: usize, outbox_max: usize, queue_capacity: usize) -> Self {
        let now = Instant::now();
        Self {
            now,
            shards: (0..shards)
                .map(|index| Shard {
                    fanout: Fanout::new(FanoutConfig::default(), now),
                    seq: Sequencer::new(index, shards, outbox_max, 64),
                    received: HashMap::new(),
                })
                .collect(),
            queues: (0..shards)
                .map(|_| (0..shards).map(|_| VecDeque::new()).collect())
                .collect(),
            queue_capacity,
            publishes: Vec::new(),
            answers: BTreeMap::new(),
            counts: HashMap::new(),
        }
    }

    fn room(index: usize) -> Arc<str> {
        Arc::from(format!("room-{index}"))
    }

    /// Subscribes connection `conn` of `shard` to `room` at its head.
    fn subscribe(&mut self, shard: usize, conn: u32, room: &str) {
        let s = &mut self.shards[shard];
        s.fanout
            .handle_subscribe(self.now, ConnId(conn), room, None, Bytes::new())
            .expect("subscribe");
        s.seq.forward_presence(&mut s.fanout);
    }

    fn answer(&mut self, publish: u64, result: Result<EventId, Refusal>) {
        let before = self.answers.insert(publish, result);
        assert_eq!(before, None, "publish {publish} answered twice");
    }

    /// A publish read on `origin`.
    fn publish(&mut self, origin: usize, room: &Arc<str>, key: Option<&str>) -> u64 {
        let number = self.publishes.len() as u64;
        let data = format!("p{number}");
        self.publishes.push((origin, room.clone(), data.clone()));
        let reply = Reply {
            origin,
            publish: number,
        };
        let s = &mut self.shards[origin];
        let routed = s.seq.handle_publish(
            &mut s.fanout,
            self.now,
            WINDOW,
            || number,
            room,
            Bytes::from(data),
            key.map(str::to_owned),
            reply,
        );
        match routed {
            Routed::Answered(result) => self.answer(number, result),
            Routed::Forwarded { owner } => assert_eq!(owner, owner_shard(room, self.shards.len())),
        }
        number
    }

    /// A copy of what `shard`'s outbox to `target` holds.
    fn outbox(&self, shard: usize, target: usize) -> Vec<Letter<Reply>> {
        self.shards[shard].seq.outboxes[target]
            .iter()
            .cloned()
            .collect()
    }

    /// Moves what `shard`'s outboxes hold into its queues, as far as they take it.
    fn flush(&mut self, shard: usize) {
        for target in 0..self.shards.len() {
            let outbox = self.shards[shard].seq.outbox_mut(target);
            let queue = &mut self.queues[shard][target];
            while queue.len() < self.queue_capacity {
                let Some(letter) = outbox.pop_front() else {
                    break;
                };
                queue.push_back(letter);
            }
        }
    }

    /// Hands `to` up to `n` letters from `from`'s queue. Returns how many.
    fn deliver(&mut self, from: usize, to: usize, n: usize) -> usize {
        let mut handled = 0;
        while handled < n {
            let Some(letter) = self.queues[from][to].pop_front() else {
                break;
            };
            handled += 1;
            let now = self.now;
            let s = &mut self.shards[to];
            match letter {
                Letter::Publish {
                    room,
                    data,
                    reply,
                    idempotency_key,
                } => {
                    assert_eq!(from, reply.origin);
                    let key = idempotency_key.as_ref().map(MailKey::as_str);
                    let stamp = || reply.publish;
                    let _ = s.seq.handle_publish_letter(
                        &mut s.fanout,
                        now,
                        WINDOW,
                        stamp,
                        reply.origin,
                        &room,
                        &data,
                        key,
                        reply,
                    );
                }
                Letter::Sequenced { reply, result } => {
                    assert_eq!(to, reply.origin, "an answer goes back to its origin");
                    self.answer(reply.publish, result);
                }
                Letter::Frame {
                    room,
                    incarnation,
                    id,
                    frame,
                    stamp_unix_nanos,
                } => {
                    let _ = s.seq.handle_frame(
                        &mut s.fanout,
                        now,
                        &room,
                        incarnation,
                        id,
                        frame,
                        stamp_unix_nanos,
                    );
                }
                Letter::Presence { room, subscribed } => {
                    assert_eq!(
                        owner_shard(&room, SHARDS.max(to + 1).min(s.seq.shards())),
                        to
                    );
                    s.fanout.handle_presence(now, &room, subscribed);
                }
                Letter::RoomQuery { room, reply } => {
                    s.seq.handle_room_query(&s.fanout, from, &room, reply);
                }
                Letter::RoomCount { reply, info } => {
                    let (total, waiting) = self.counts.get_mut(&reply.publish).expect("asked");
                    merge_room_info(total, &info);
                    *waiting -= 1;
                }
                Letter::Stopped { shard } => {
                    assert_eq!(shard, from);
                    s.seq.handle_peer_stopped(shard);
                }
            }
        }
        handled
    }

    /// Writes what each shard's fan-out hands out, completing every write at once.
    fn write_out(&mut self) {
        for s in &mut self.shards {
            let mut out = Vec::new();
            loop {
                out.clear();
                match s.fanout.poll_action(self.now, &mut out) {
                    None => break,
                    Some(Action::Write { conn }) => {
                        s.received.entry(conn).or_default().append(&mut out);
                        s.fanout.handle_write_done(self.now, conn);
                    }
                    Some(Action::Close { .. }) => {}
                }
            }
        }
    }

    /// Flushes and delivers until no mail is left anywhere.
    fn settle(&mut self) {
        loop {
            let mut moved = 0;
            for shard in 0..self.shards.len() {
                self.flush(shard);
            }
            for from in 0..self.shards.len() {
                for to in 0..self.shards.len() {
                    moved += self.deliver(from, to, usize::MAX);
                }
            }
            self.write_out();
            if moved == 0 {
                break;
            }
        }
        for s in &self.shards {
            for target in 0..self.shards.len() {
                assert!(s.seq.outboxes[target].is_empty());
            }
        }
    }

    /// Message ids (seq) and data one subscriber received, in order.
    fn stream(&self, shard: usize, conn: u32) -> Vec<(u64, String)> {
        let frames = self.shards[shard].received.get(&ConnId(conn));
        let text: String = frames
            .into_iter()
            .flatten()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect();
        let mut out = Vec::new();
        let mut id = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("id: ") {
                let (_, seq) = rest.split_once('-').expect("E-S id");
                id = Some(seq.parse().unwrap());
            } else if let Some(data) = line.strip_prefix("data: ") {
                out.push((id.take().expect("id before data"), data.to_owned()));
            }
        }
        out
    }

    /// Every publish answered exactly once; per room, the accepted ones numbered 1, 2, …
    /// with no gap and no repeat, in the order each origin sent them; every subscriber on
    /// every shard received exactly those messages, in id order. `rooms` subscribers are
    /// connection `room` on every shard.
    fn check(&self, rooms: usize) {
        assert_eq!(
            self.answers.len(),
            self.publishes.len(),
            "every publish answered"
        );
        for room_index in 0..rooms {
            let room = Self::room(room_index);
            let mut accepted: Vec<(u64, String)> = Vec::new();
            let mut last_by_origin: HashMap<usize, u64> = HashMap::new();
            for (number, (origin, r, data)) in self.publishes.iter().enumerate() {
                if *r != room {
                    continue;
                }
                let Ok(id) = self.answers[&(number as u64)] else {
                    continue;
                };
                let last = last_by_origin.entry(*origin).or_insert(0);
                assert!(id.seq > *last, "{room}: origin {origin} out of order");
                *last = id.seq;
                accepted.push((id.seq, data.clone()));
            }
            accepted.sort();
            let seqs: Vec<u64> = accepted.iter().map(|(seq, _)| *seq).collect();
            assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "{room}");
            for shard in 0..self.shards.len() {
                assert_eq!(
                    self.stream(shard, room_index as u32),
                    accepted,
                    "{room} on shard {shard}"
                );
            }
        }
    }
}

#[test]
fn an_owned_room_is_sequenced_here_and_its_frame_goes_to_every_other_shard() {
    let mut sim = Sim::new(3, 16, 16);
    let room = (0..)
        .map(Sim::room)
        .find(|r| owner_shard(r, 3) == 1)
        .unwrap();
    let number = sim.publish(1, &room, None);
    assert_eq!(sim.answers[&number].map(|id| id.seq), Ok(1));
    for target in 0..3 {
        let outbox = sim.outbox(1, target);
        if target == 1 {
            assert!(outbox.is_empty(), "no mail to itself");
        } else {
            assert!(
                matches!(
                    &outbox[..],
                    [Letter::Frame {
                        id: 1,
                        stamp_unix_nanos: 0,
                        ..
                    }]
                ),
                "{outbox:?}"
            );
        }
    }
}

#[test]
fn a_foreign_room_goes_to_its_owner_whose_answer_comes_back() {
    let mut sim = Sim::new(3, 16, 16);
    let room = (0..)
        .map(Sim::room)
        .find(|r| owner_shard(r, 3) == 2)
        .unwrap();
    let number = sim.publish(0, &room, None);
    assert!(sim.answers.is_empty(), "waiting for the owner");
    assert!(matches!(
        &sim.outbox(0, 2)[..],
        [Letter::Publish {
            reply: Reply { origin: 0, .. },
            ..
        }]
    ));
    assert!(sim.shards[0].seq.outboxes[1].is_empty());
    sim.flush(0);
    assert_eq!(sim.deliver(0, 2, 1), 1);
    // The owner answered shard 0 and sent the frame to shards 0 and 1.
    assert!(matches!(
        &sim.outbox(2, 0)[..],
        [
            Letter::Frame { .. },
            Letter::Sequenced {
                reply: Reply { origin: 0, .. },
                result: Ok(_)
            }
        ]
    ));
    assert!(matches!(&sim.outbox(2, 1)[..], [Letter::Frame { .. }]));
    sim.settle();
    assert_eq!(sim.answers[&number].map(|id| id.seq), Ok(1));
}

#[test]
fn a_full_outbox_refuses_publishes_and_every_refusal_is_answered() {
    // Outboxes of 2, queues of 1: a flood refuses, nothing waits forever.
    let mut sim = Sim::new(2, 2, 1);
    let here = (0..)
        .map(Sim::room)
        .find(|r| owner_shard(r, 2) == 0)
        .unwrap();
    let there = (0..)
        .map(Sim::room)
        .find(|r| owner_shard(r, 2) == 1)
        .unwrap();
    for _ in 0..4 {
        sim.publish(0, &there, None);
        sim.publish(0, &here, None);
    }
    let refused = sim
        .answers
        .values()
        .filter(|a| **a == Err(Refusal::OutboxFull))
        .count();
    assert!(refused >= 4, "{:?}", sim.answers);
    sim.settle();
    assert_eq!(sim.answers.len(), 8);
    // The owner refuses too when its own outbox is full: the refusal still travels back.
    let mut sim = Sim::new(2, 1, 1);
    let there = (0..)
        .map(Sim::room)
        .find(|r| owner_shard(r, 2) == 1)
        .unwrap();
    sim.publish(1, &there, None); // its frame for shard 0 fills shard 1's outbox
    let number = sim.publish(0, &there, None);
    sim.flush(0);
    sim.deliver(0, 1, 1);
    sim.settle();
    assert_eq!(sim.answers[&number], Err(Refusal::OutboxFull));
}

#[test]
fn a_stopping_owner_refuses_with_draining_but_still_forwards_and_replicates() {
    let mut sim = Sim::new(2, 16, 16);
    let mine = (0..)
        .map(Sim::room)
        .find(|r| owner_shard(r, 2) == 0)
        .unwrap();
    let theirs = (0..)
        .map(Sim::room)
        .find(|r| owner_shard(r, 2) == 1)
        .unwrap();
    sim.shards[0].seq.handle_stop();
    let refused = sim.publish(0, &mine, None);
    let forwarded = sim.publish(0, &theirs, None);
    sim.settle();
    assert_eq!(sim.answers[&refused], Err(Refusal::Draining));
    assert_eq!(sim.answers[&forwarded].map(|id| id.seq), Ok(1));
    assert_eq!(
        sim.shards[0]
            .fanout
            .room_info(&theirs)
            .and_then(|i| i.last_id),
        sim.answers[&forwarded].ok(),
        "the stopping shard's replica still follows"
    );
}

#[test]
fn a_stopping_shard_tells_every_other_after_the_frames_it_sequenced_once() {
    let mut sim = Sim::new(3, 16, 16);
    let mine = (0..)
        .map(Sim::room)
        .find(|r| owner_shard(r, 3) == 0)
        .unwrap();
    let number = sim.publish(0, &mine, None);
    sim.shards[0].seq.handle_stop();
    sim.shards[0].seq.handle_stop();
    for target in [1, 2] {
        let outbox = sim.outbox(0, target);
        assert!(
            matches!(
                outbox[..],
                [Letter::Frame { id: 1, .. }, Letter::Stopped { shard: 0 }]
            ),
            "{outbox:?}"
        );
    }
    assert!(!sim.shards[1].seq.peers_stopped());
    sim.settle();
    assert_eq!(sim.answers[&number].map(|id| id.seq), Ok(1));
    assert!(!sim.shards[1].seq.peers_stopped(), "shard 2 still runs");
    assert!(!sim.shards[0].seq.peers_stopped());
    sim.shards[2].seq.handle_stop();
    sim.settle();
    assert!(sim.shards[1].seq.peers_stopped());
    assert!(!sim.shards[0].seq.peers_stopped(), "shard 1 still runs");
}

/// Issue 16: a publish read by a draining shard, acked by an owner that had not stopped
/// yet, reaches the publisher's own subscription (caught up, on the draining shard) before
/// its drain close, however late the owner's mail.
#[test]
fn an_ack_during_a_drain_means_the_frame_reaches_the_publishers_own_subscription_first() {
    use crate::drain::{Drain, DrainAction, Figures, RETRY_MS, SETTLE};
    use crate::fanout::CloseReason;
    let mut sim = Sim::new(2, 16, 16);
    let theirs = (0..)
        .map(Sim::room)
        .find(|r| owner_shard(r, 2) == 1)
        .unwrap();
    sim.subscribe(0, 7, &theirs);
    sim.settle();
    let start = sim.now;
    let mut drain = Drain::new();
    // One turn of shard 0's stop choreography, as the driver runs it; a drain close's
    // frame is recorded as the subscription's last.
    let turn = |sim: &mut Sim, drain: &mut Drain| {
        let figures = Figures {
            open: 1,
            accepts_armed: true,
            all_drained: false,
            peers_stopped: sim.shards[0].seq.peers_stopped(),
        };
        while let Some(action) = drain.poll_action(sim.now, figures) {
            if let DrainAction::DrainSubscribers { retry_ms } = action {
                sim.shards[0].fanout.handle_drain(sim.now, retry_ms);
            }
        }
        let s = &mut sim.shards[0];
        let mut out = Vec::new();
        while let Some(action) = s.fanout.poll_action(sim.now, &mut out) {
            s.received.entry(ConnId(7)).or_default().append(&mut out);
            match action {
                Action::Write { conn } => s.fanout.handle_write_done(sim.now, conn),
                Action::Close { reason, .. } => assert_eq!(reason, CloseReason::Drained),
            }
        }
    };
    sim.shards[0].seq.handle_stop();
    drain.handle_stop(start, Duration::from_secs(10));
    turn(&mut sim, &mut drain);
    // Read right after the signal and forwarded; the owner (still running) sequences it,
    // but its mail to shard 0 is slow.
    let number = sim.publish(0, &theirs, None);
    sim.flush(0);
    sim.deliver(0, 1, usize::MAX);
    sim.now = start + SETTLE * 3;
    turn(&mut sim, &mut drain);
    assert!(
        sim.stream(0, 7).is_empty(),
        "nothing to deliver yet, and the subscription is still open"
    );
    // The owner stops: its frame, the ack, then its stop reach shard 0.
    sim.shards[1].seq.handle_stop();
    sim.settle();
    turn(&mut sim, &mut drain);
    let id = sim.answers[&number].expect("acked by the running owner");
    assert_eq!(sim.stream(0, 7), [(id.seq, format!("p{number}"))]);
    let last = sim.shards[0].received[&ConnId(7)].last().unwrap().clone();
    assert_eq!(last, Frame::drain(RETRY_MS).sse(), "then the drain's close");
}

#[test]
fn a_repeated_idempotency_key_gets_the_first_id_from_any_shard() {
    let mut sim = Sim::new(3, 16, 16);
    let room = (0..)
        .map(Sim::room)
        .find(|r| owner_shard(r, 3) == 2)
        .unwrap();
    let first = sim.publish(0, &room, Some("k"));
    let again = sim.publish(1, &room, Some("k"));
    let local = sim.publish(2, &room, Some("k"));
    let other = sim.publish(1, &room, Some("k2"));
    sim.settle();
    let seq = |n: u64| sim.answers[&n].map(|id| id.seq);
    assert_eq!(
        (seq(first), seq(again), seq(local), seq(other)),
        (Ok(1), Ok(1), Ok(1), Ok(2))
    );
    assert_eq!(sim.shards[2].seq.keys().replays(), 2);
    assert_eq!(
        sim.shards[0].fanout.room_info(&room).unwrap().history_len,
        2
    );
}

#[test]
fn a_refused_publish_does_not_record_its_key() {
    let mut sim = Sim::new(1, 16, 16);
    let room = Sim::room(0);
    sim.shards[0].seq.handle_stop();
    let refused = sim.publish(0, &room, Some("k"));
    assert_eq!(sim.answers[&refused], Err(Refusal::Draining));
    assert!(sim.shards[0].seq.keys().is_empty());
}

#[test]
fn a_shard_at_its_room_limit_refuses_new_rooms() {
    let now = Instant::now();
    let mut fanout = Fanout::new(
        FanoutConfig {
            rooms_max: 1,
            ..FanoutConfig::default()
        },
        now,
    );
    let mut seq: Seq = Sequencer::new(0, 1, 16, 16);
    let reply = Reply {
        origin: 0,
        publish: 0,
    };
    let publish = |seq: &mut Seq, fanout: &mut Fanout, room: &str| {
        seq.handle_publish(
            fanout,
            now,
            WINDOW,
            || 0,
            &Arc::from(room),
            Bytes::new(),
            None,
            reply,
        )
    };
    // A followed room is never evicted to make room.
    fanout
        .handle_subscribe(now, ConnId(1), "a", None, Bytes::new())
        .unwrap();
    assert!(matches!(
        publish(&mut seq, &mut fanout, "a"),
        Routed::Answered(Ok(_))
    ));
    assert_eq!(
        publish(&mut seq, &mut fanout, "b"),
        Routed::Answered(Err(Refusal::RoomLimit))
    );
}

#[test]
fn presence_goes_to_the_owner_only() {
    let mut sim = Sim::new(3, 16, 16);
    let room = (0..)
        .map(Sim::room)
        .find(|r| owner_shard(r, 3) == 2)
        .unwrap();
    sim.subscribe(0, 7, &room);
    assert!(matches!(
        &sim.outbox(0, 2)[..],
        [Letter::Presence {
            subscribed: true,
            ..
        }]
    ));
    assert!(sim.shards[0].seq.outboxes[1].is_empty());
    sim.subscribe(2, 7, &room);
    assert!(
        sim.shards[2].seq.outboxes.iter().all(VecDeque::is_empty),
        "the owner tells no one"
    );
}

#[test]
fn a_room_query_gathers_every_shard() {
    let mut sim = Sim::new(3, 16, 16);
    let room = Sim::room(0);
    for shard in 0..3 {
        sim.subscribe(shard, 1, &room);
    }
    sim.subscribe(1, 2, &room);
    sim.publish(0, &room, None);
    sim.settle();
    let reply = Reply {
        origin: 0,
        publish: 99,
    };
    let s = &mut sim.shards[0];
    let total = s.fanout.room_info(&room).unwrap();
    let asked = s.seq.query_room(&room, reply);
    assert_eq!(asked, 2);
    sim.counts.insert(99, (total, asked));
    sim.settle();
    let (total, waiting) = &sim.counts[&99];
    assert_eq!(*waiting, 0);
    assert_eq!((total.subscribers, total.history_len), (4, 1));
    assert_eq!(total.last_id.map(|id| id.seq), Some(1));
}

#[derive(Debug, Clone)]
enum Op {
    /// Shard `origin` reads `lines` publishes to rooms from `room` on (a batch when > 1).
    Publish {
        origin: usize,
        room: usize,
        lines: usize,
    },
    Flush {
        shard: usize,
    },
    Deliver {
        from: usize,
        to: usize,
        n: usize,
    },
    Advance {
        ms: u64,
    },
}

const SHARDS: usize = 3;
const ROOMS: usize = 5;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..SHARDS, 0..ROOMS, 1..4usize)
            .prop_map(|(origin, room, lines)| Op::Publish { origin, room, lines }),
        2 => (0..SHARDS).prop_map(|shard| Op::Flush { shard }),
        3 => (0..SHARDS, 0..SHARDS, 1..5usize).prop_map(|(from, to, n)| Op::Deliver { from, to, n }),
        1 => (0..50u64).prop_map(|ms| Op::Advance { ms }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the interleaving of publishes, batches, flushes and deliveries, and however
    /// small the outboxes and queues: every publish is answered once, each room's accepted
    /// messages are numbered without gap in each origin's order, and every shard's
    /// subscriber of a room receives exactly those, in order.
    #[test]
    fn order_per_room_and_no_loss_across_shards(
        ops in proptest::collection::vec(op(), 1..120),
        outbox_max in 1..6usize,
        queue_capacity in 1..4usize,
    ) {
        let mut sim = Sim::new(SHARDS, outbox_max, queue_capacity);
        for shard in 0..SHARDS {
            for room in 0..ROOMS {
                sim.subscribe(shard, room as u32, &Sim::room(room));
            }
        }
        sim.settle();
        for op in ops {
            match op {
                Op::Publish { origin, room, lines } => {
                    for line in 0..lines {
                        sim.publish(origin, &Sim::room((room + line) % ROOMS), None);
                    }
                }
                Op::Flush { shard } => sim.flush(shard),
                Op::Deliver { from, to, n } => {
                    sim.deliver(from, to, n);
                }
                Op::Advance { ms } => {
                    sim.now += Duration::from_millis(ms);
                    sim.write_out();
                }
            }
        }
        sim.settle();
        sim.check(ROOMS);
    }
}

/// Issue 16: the frame that crosses shards carries both forms in one buffer, so a WebSocket
/// viewer on another shard gets the owner's encoding, not a copy.
#[test]
fn a_ws_viewer_on_another_shard_gets_the_owners_encoding() {
    let mut sim = Sim::new(2, 16, 16);
    let room = (0..)
        .map(Sim::room)
        .find(|r| owner_shard(r, 2) == 0)
        .unwrap();
    let s = &mut sim.shards[1];
    s.fanout
        .handle_subscribe_in(
            sim.now,
            ConnId(7),
            &room,
            None,
            crate::frame::Format::Ws,
            Bytes::new(),
        )
        .unwrap();
    s.seq.forward_presence(&mut s.fanout);
    sim.settle();
    let number = sim.publish(0, &room, None);
    let letters = sim.outbox(0, 1);
    let [Letter::Frame { frame, .. }] = &letters[..] else {
        panic!("one frame for shard 1: {letters:?}");
    };
    let frame = frame.clone();
    sim.settle();
    let id = sim.answers[&number].unwrap();
    let got = &sim.shards[1].received[&ConnId(7)];
    let ws = got.last().unwrap();
    assert_eq!(ws, &frame.ws());
    assert_eq!(
        ws.as_ptr(),
        frame.ws().as_ptr(),
        "the owner's buffer, not a copy"
    );
    let text = format!(r#"{{"room":"{room}","id":"{id}","data":"p{number}"}}"#);
    assert_eq!(&ws[2..], text.as_bytes());
    assert_eq!(ws[..2], [0x81, text.len() as u8]);
}
