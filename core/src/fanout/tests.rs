//! The fan-out driven by a simulated shard: virtual time, subscribers whose sockets read
//! at once or never, no real IO.

use super::*;
use crate::event_id::{EventId, ResetReason, ResumeId};
use proptest::prelude::*;

mod ws;

/// The resume id a client holding message `seq` of `room`'s current incarnation sends.
fn resume_at(fanout: &Fanout, room: &str, seq: Option<u64>) -> Option<ResumeId> {
    let epoch = fanout
        .room_info(room)
        .and_then(|info| info.last_id)
        .map_or(0, |id| id.epoch);
    seq.map(|seq| ResumeId::At(EventId { epoch, seq }))
}

/// The seq part of an `id: E-S` line.
fn seq_of(line: &[u8]) -> u64 {
    let text = std::str::from_utf8(line).unwrap();
    let (_, seq) = text.split_once('-').expect("E-S");
    seq.parse().unwrap()
}

/// A driver stand-in: polls actions, "writes" by recording frames per connection, and
/// completes writes of connections that read.
struct Sim {
    fanout: Fanout,
    now: Instant,
    received: HashMap<ConnId, Vec<Bytes>>,
    writes: HashMap<ConnId, usize>,
    stuck: std::collections::HashSet<ConnId>,
    closed: Vec<(ConnId, CloseReason, Vec<Bytes>)>,
    pending_done: Vec<ConnId>,
}

impl Sim {
    fn new(config: FanoutConfig) -> Self {
        let now = Instant::now();
        Self {
            fanout: Fanout::new(config, now),
            now,
            received: HashMap::new(),
            writes: HashMap::new(),
            stuck: Default::default(),
            closed: Vec::new(),
            pending_done: Vec::new(),
        }
    }

    fn subscribe(&mut self, conn: u32, room: &str, last: Option<u64>) {
        let resume = resume_at(&self.fanout, room, last);
        self.fanout
            .handle_subscribe(
                self.now,
                ConnId(conn),
                room,
                resume,
                Bytes::from_static(b"HEAD"),
            )
            .expect("subscribe");
    }

    fn publish(&mut self, room: &str, data: &str) -> u64 {
        self.fanout
            .handle_publish(self.now, room, data.as_bytes())
            .expect("publish")
            .0
            .seq
    }

    /// One loop turn: complete the writes of readers, then hand out up to `budget` actions.
    fn turn(&mut self, budget: usize) -> usize {
        for conn in std::mem::take(&mut self.pending_done) {
            self.fanout.handle_write_done(self.now, conn);
        }
        self.fanout.handle_timeout(self.now);
        let mut done = 0;
        let mut out = Vec::new();
        while done < budget {
            out.clear();
            match self.fanout.poll_action(self.now, &mut out) {
                None => break,
                Some(Action::Write { conn }) => {
                    *self.writes.entry(conn).or_default() += 1;
                    self.received.entry(conn).or_default().append(&mut out);
                    if !self.stuck.contains(&conn) {
                        self.pending_done.push(conn);
                    }
                }
                Some(Action::Close { conn, reason }) => {
                    self.closed.push((conn, reason, std::mem::take(&mut out)));
                }
            }
            done += 1;
        }
        done
    }

    fn run_idle(&mut self) {
        while self.turn(64) > 0 || !self.pending_done.is_empty() {}
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
    }

    /// The ids of message frames a connection received, in order.
    fn ids(&self, conn: u32) -> Vec<u64> {
        self.received
            .get(&ConnId(conn))
            .map(|frames| {
                frames
                    .iter()
                    .filter_map(|f| f.strip_prefix(b"id: "))
                    .map(|rest| {
                        let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
                        seq_of(&rest[..end])
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn frames(&self, conn: u32) -> &[Bytes] {
        self.received.get(&ConnId(conn)).map_or(&[], Vec::as_slice)
    }
}

#[test]
fn every_subscriber_gets_every_message_in_order_once() {
    let mut sim = Sim::new(FanoutConfig::default());
    for conn in 0..1000 {
        sim.subscribe(conn, &format!("r{}", conn % 7), None);
    }
    sim.run_idle();
    for round in 0..20 {
        for room in 0..7 {
            sim.publish(&format!("r{room}"), &format!("m{round}"));
        }
        sim.turn(64);
    }
    sim.run_idle();
    for conn in 0..1000 {
        assert_eq!(sim.ids(conn), (1..=20).collect::<Vec<_>>(), "conn {conn}");
        assert_eq!(sim.frames(conn)[0], Bytes::from_static(b"HEAD"));
    }
    assert_eq!(sim.fanout.stats().deliveries_total, 20_000);
}

#[test]
fn a_held_room_lends_its_name_and_an_unknown_one_none() {
    let mut sim = Sim::new(FanoutConfig::default());
    sim.subscribe(0, "a", None);
    let first = sim.fanout.room_name("a").expect("held");
    let second = sim.fanout.room_name("a").expect("held");
    assert_eq!(&*first, "a");
    assert!(Arc::ptr_eq(&first, &second), "one copy, shared");
    assert_eq!(sim.fanout.room_name("b"), None);
}

#[test]
fn writes_hand_back_the_sequencing_stamps_of_their_frames() {
    let now = Instant::now();
    let mut fanout = Fanout::new(FanoutConfig::default(), now);
    let head = Bytes::from_static(b"HEAD");
    fanout
        .handle_subscribe(now, ConnId(1), "r", None, head.clone())
        .unwrap();
    let (mut out, mut stamps) = (Vec::new(), Vec::new());
    // The first write carries only the stream head: no message, no stamp.
    assert_eq!(
        fanout.poll_action_stamped(now, &mut out, &mut stamps),
        Some(Action::Write { conn: ConnId(1) })
    );
    assert_eq!((out.len(), stamps.len()), (1, 0));
    fanout.handle_write_done(now, ConnId(1));
    let (id, frame) = fanout
        .handle_publish_stamped(now, 1_000, "r", b"a")
        .unwrap();
    assert!(fanout.handle_frame_replica(now, 2_000, "other", 5, 1, frame));
    fanout
        .handle_publish_stamped(now, 3_000, "r", b"b")
        .unwrap();
    fanout
        .handle_subscribe(
            now,
            ConnId(2),
            "other",
            resume_at(&fanout, "other", Some(0)),
            head,
        )
        .unwrap();
    out.clear();
    assert_eq!(
        fanout.poll_action_stamped(now, &mut out, &mut stamps),
        Some(Action::Write { conn: ConnId(1) })
    );
    assert_eq!(
        (id.seq, out.len(), stamps.as_slice()),
        (1, 2, &[1_000, 3_000][..])
    );
    out.clear();
    stamps.clear();
    assert_eq!(
        fanout.poll_action_stamped(now, &mut out, &mut stamps),
        Some(Action::Write { conn: ConnId(2) })
    );
    // Head plus the replicated frame, stamped by its owner.
    assert_eq!((out.len(), stamps.as_slice()), (2, &[2_000][..]));
}

#[test]
fn publishes_during_a_write_ride_in_the_next_write() {
    let mut sim = Sim::new(FanoutConfig::default());
    sim.subscribe(1, "a", None);
    sim.run_idle();
    sim.stuck.insert(ConnId(1));
    sim.publish("a", "one");
    sim.turn(64);
    assert_eq!(sim.writes[&ConnId(1)], 2);
    for i in 0..10 {
        sim.publish("a", &format!("x{i}"));
    }
    // A write is in flight: nothing more is handed out until it completes.
    assert_eq!(sim.turn(64), 0);
    sim.stuck.clear();
    sim.fanout.handle_write_done(sim.now, ConnId(1));
    assert_eq!(sim.turn(64), 1);
    assert_eq!(
        sim.writes[&ConnId(1)],
        3,
        "ten publishes coalesced into one write"
    );
    assert_eq!(sim.ids(1), (1..=11).collect::<Vec<_>>());
}

#[test]
fn resume_replays_exactly_the_missed_messages() {
    let mut sim = Sim::new(FanoutConfig::default());
    for i in 1..=10 {
        sim.publish("a", &format!("m{i}"));
    }
    sim.subscribe(1, "a", Some(6));
    sim.subscribe(2, "a", None);
    sim.subscribe(3, "a", Some(10));
    sim.run_idle();
    assert_eq!(sim.ids(1), vec![7, 8, 9, 10]);
    assert!(sim.ids(2).is_empty());
    assert!(sim.ids(3).is_empty(), "resuming at the head starts live");
    sim.publish("a", "m11");
    sim.run_idle();
    assert_eq!(sim.ids(1), vec![7, 8, 9, 10, 11]);
    assert_eq!(sim.ids(2), vec![11]);
    assert_eq!(sim.ids(3), vec![11]);
}

#[test]
fn too_old_an_id_gets_a_gap_notice_first() {
    let config = FanoutConfig {
        history_messages_max: 4,
        ..FanoutConfig::default()
    };
    let mut sim = Sim::new(config);
    for i in 1..=10 {
        sim.publish("a", &format!("m{i}"));
    }
    sim.subscribe(1, "a", Some(2));
    sim.run_idle();
    let frames = sim.frames(1);
    assert_eq!(
        frames[1],
        Bytes::from(format!(
            "event: gap\ndata: {{\"from\":\"{epoch}-3\",\"to\":\"{epoch}-6\"}}\n\n",
            epoch = sim.fanout.room_info("a").unwrap().last_id.unwrap().epoch
        ))
    );
    assert_eq!(sim.ids(1), vec![7, 8, 9, 10]);
    assert_eq!(sim.fanout.stats().gaps_total, 1);
}

#[test]
fn a_stuck_subscriber_is_cut_and_others_are_not_delayed() {
    let config = FanoutConfig {
        history_messages_max: 8,
        ..FanoutConfig::default()
    };
    let mut sim = Sim::new(config);
    for conn in 0..100 {
        sim.subscribe(conn, "a", None);
    }
    sim.run_idle();
    sim.stuck.insert(ConnId(0));
    sim.publish("a", "first");
    sim.turn(1000);
    for i in 0..20 {
        sim.publish("a", &format!("m{i}"));
        sim.turn(1000);
        // Every reader got message i+2 in this very turn.
        for conn in 1..100 {
            assert_eq!(sim.ids(conn).last(), Some(&(i + 2)), "conn {conn} delayed");
        }
    }
    assert_eq!(sim.closed.len(), 1);
    assert_eq!(sim.closed[0].0, ConnId(0));
    assert_eq!(sim.closed[0].1, CloseReason::Lapped);
    assert_eq!(sim.fanout.stats().slow_cuts_total, 1);
    assert_eq!(sim.fanout.subscribers_live(), 99);
    assert_eq!(sim.fanout.tickers_live(), 99);
}

#[test]
fn a_lapped_idle_subscriber_gets_the_terminal_event() {
    let config = FanoutConfig {
        history_messages_max: 4,
        write_frames_max: 2,
        ..FanoutConfig::default()
    };
    let mut sim = Sim::new(config);
    sim.subscribe(1, "a", None);
    sim.run_idle();
    // Ten messages land before the subscriber's next write is handed out.
    for i in 0..10 {
        sim.publish("a", &format!("m{i}"));
    }
    sim.turn(64);
    assert_eq!(sim.closed.len(), 1);
    assert!(sim.closed[0].2[0].starts_with(b"event: lagged"));
}

/// Regression (found by the churn test): a subscriber lapped before its first write got
/// the terminal event without the HTTP response head, which no client can read.
#[test]
fn lapped_before_the_first_write_still_gets_the_head() {
    let config = FanoutConfig {
        history_messages_max: 4,
        ..FanoutConfig::default()
    };
    let mut sim = Sim::new(config);
    for i in 0..4 {
        sim.publish("a", &format!("m{i}"));
    }
    sim.subscribe(1, "a", Some(1));
    for i in 0..10 {
        sim.publish("a", &format!("n{i}"));
    }
    sim.turn(64);
    assert_eq!(sim.closed.len(), 1);
    let frames = &sim.closed[0].2;
    assert_eq!(frames[0], Bytes::from_static(b"HEAD"));
    assert!(frames[1].starts_with(b"event: lagged"));
}

#[test]
fn heartbeats_arrive_on_idle_streams_and_tickers_die_with_connections() {
    let mut sim = Sim::new(FanoutConfig {
        heartbeat: Duration::from_secs(15),
        ..FanoutConfig::default()
    });
    for conn in 0..50 {
        sim.subscribe(conn, "a", None);
    }
    sim.run_idle();
    assert_eq!(sim.fanout.tickers_live(), 50);
    sim.advance(Duration::from_secs(14));
    sim.run_idle();
    assert_eq!(sim.frames(3).len(), 1, "no heartbeat before the period");
    sim.advance(Duration::from_millis(1100));
    sim.run_idle();
    assert_eq!(sim.frames(3)[1], Bytes::from_static(sse::HEARTBEAT));
    sim.advance(Duration::from_secs(15));
    sim.run_idle();
    assert_eq!(sim.frames(3).len(), 3);
    for conn in 0..50 {
        sim.fanout.handle_disconnect(ConnId(conn));
    }
    assert_eq!(sim.fanout.tickers_live(), 0);
    assert_eq!(sim.fanout.subscribers_live(), 0);
    assert_eq!(sim.fanout.room_info("a").unwrap().subscribers, 0);
}

#[test]
fn under_load_writes_wait_for_the_coalescing_delay() {
    let config = FanoutConfig {
        coalesce_queue_min: 10,
        coalesce_delay: Duration::from_millis(20),
        ..FanoutConfig::default()
    };
    let mut sim = Sim::new(config);
    for conn in 0..100 {
        sim.subscribe(conn, &format!("r{}", conn % 10), None);
    }
    sim.advance(Duration::from_millis(20));
    sim.run_idle();
    for room in 0..10 {
        sim.publish(&format!("r{room}"), "x");
    }
    assert_eq!(sim.turn(1000), 0, "a long queue waits");
    assert!(sim.fanout.poll_timeout().unwrap() > sim.now);
    for room in 0..10 {
        sim.publish(&format!("r{room}"), "y");
    }
    sim.advance(Duration::from_millis(20));
    assert_eq!(sim.turn(1000), 100);
    for conn in 0..100 {
        assert_eq!(
            sim.writes[&ConnId(conn)],
            2,
            "head write, then both events in one write"
        );
        assert_eq!(sim.ids(conn), vec![1, 2]);
    }
    // A short queue is served at once.
    sim.run_idle();
    sim.publish("r0", "z");
    assert_eq!(sim.turn(1000), 10);
}

#[test]
fn limits_are_enforced() {
    let config = FanoutConfig {
        rooms_max: 2,
        subscribers_max: 3,
        ..FanoutConfig::default()
    };
    let mut sim = Sim::new(config);
    sim.subscribe(0, "a", None);
    sim.subscribe(1, "b", None);
    let now = sim.now;
    let head = Bytes::new();
    assert_eq!(
        sim.fanout
            .handle_subscribe(now, ConnId(2), "c", None, head.clone()),
        Err(FanoutError::RoomsFull)
    );
    assert_eq!(
        sim.fanout
            .handle_subscribe(now, ConnId(0), "a", None, head.clone()),
        Err(FanoutError::AlreadySubscribed)
    );
    sim.subscribe(2, "a", None);
    assert_eq!(
        sim.fanout.handle_subscribe(now, ConnId(3), "a", None, head),
        Err(FanoutError::SubscribersFull)
    );
    assert_eq!(
        sim.fanout.handle_publish(now, "c", b"x"),
        Err(FanoutError::RoomsFull)
    );
    // Replicated frames of rooms owned elsewhere are never refused.
    let frame = Frame::message("c", EventId { epoch: 9, seq: 1 }, b"x");
    assert!(sim.fanout.handle_frame(now, "c", 1, frame.clone()));
    assert!(
        !sim.fanout.handle_frame(now, "c", 1, frame),
        "duplicate ignored"
    );
}

#[test]
fn draining_writes_everything_then_closes_with_a_retry_hint() {
    let mut sim = Sim::new(FanoutConfig::default());
    for conn in 0..10 {
        sim.subscribe(conn, "a", None);
    }
    sim.run_idle();
    sim.stuck.insert(ConnId(3));
    for i in 0..5 {
        sim.publish("a", &format!("m{i}"));
    }
    sim.turn(4);
    sim.fanout.handle_drain(sim.now, 2000);
    sim.run_idle();
    // Conn 3's write is stuck: it is neither closed nor given up on yet.
    assert_eq!(sim.closed.len(), 9);
    sim.stuck.clear();
    sim.fanout.handle_write_done(sim.now, ConnId(3));
    sim.run_idle();
    assert_eq!(sim.closed.len(), 10);
    for (conn, reason, frames) in &sim.closed {
        assert_eq!(*reason, CloseReason::Drained);
        assert_eq!(frames, &vec![Bytes::from("retry: 2000\n\n")]);
        assert_eq!(
            sim.ids(conn.0),
            vec![1, 2, 3, 4, 5],
            "conn {conn:?} got everything first"
        );
    }
    assert_eq!(sim.fanout.subscribers_live(), 0);
    assert_eq!(sim.fanout.tickers_live(), 0);
}

#[derive(Debug, Clone)]
enum Op {
    Subscribe(u32, u8, Option<u8>),
    Disconnect(u32),
    Publish(u8),
    Turn(u8),
    Stick(u32),
    Unstick(u32),
    Advance(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u32..40, 0u8..4, proptest::option::of(0u8..30))
            .prop_map(|(c, r, l)| Op::Subscribe(c, r, l)),
        (0u32..40).prop_map(Op::Disconnect),
        (0u8..4).prop_map(Op::Publish),
        (0u8..4).prop_map(Op::Publish),
        (1u8..50).prop_map(Op::Turn),
        (0u32..40).prop_map(Op::Stick),
        (0u32..40).prop_map(Op::Unstick),
        (0u16..20_000).prop_map(Op::Advance),
    ]
}

proptest! {
    /// Whatever happens, a subscriber's ids only increase without holes (unless a gap
    /// notice said so), tickers match subscribers, and nothing is handed to a stuck write.
    #[test]
    fn invariants_hold_under_random_schedules(ops in proptest::collection::vec(op(), 1..300)) {
        let config = FanoutConfig { history_messages_max: 6, write_frames_max: 3, coalesce_queue_min: 5, ..FanoutConfig::default() };
        let mut sim = Sim::new(config);
        let mut live: HashMap<u32, u8> = HashMap::new();
        for op in ops {
            match op {
                Op::Subscribe(c, r, l) => {
                    if let std::collections::hash_map::Entry::Vacant(e) = live.entry(c) {
                        sim.received.remove(&ConnId(c));
                        let room = format!("r{r}");
                        let resume = resume_at(&sim.fanout, &room, l.map(u64::from));
                        sim.fanout.handle_subscribe(sim.now, ConnId(c), &room, resume, Bytes::from_static(b"HEAD")).unwrap();
                        e.insert(r);
                    }
                }
                Op::Disconnect(c) => {
                    sim.fanout.handle_disconnect(ConnId(c));
                    sim.pending_done.retain(|p| p.0 != c);
                    sim.stuck.remove(&ConnId(c));
                    live.remove(&c);
                }
                Op::Publish(r) => { sim.publish(&format!("r{r}"), "m"); }
                Op::Turn(b) => { sim.turn(b as usize); }
                Op::Stick(c) => { sim.stuck.insert(ConnId(c)); }
                Op::Unstick(c) => {
                    if sim.stuck.remove(&ConnId(c)) && live.contains_key(&c) {
                        sim.pending_done.push(ConnId(c));
                    }
                }
                Op::Advance(ms) => sim.advance(Duration::from_millis(ms.into())),
            }
            for (conn, _, _) in sim.closed.drain(..) {
                live.remove(&conn.0);
                sim.stuck.remove(&conn);
                sim.pending_done.retain(|p| *p != conn);
            }
            prop_assert_eq!(sim.fanout.subscribers_live(), live.len());
            prop_assert_eq!(sim.fanout.tickers_live(), live.len());
        }
        for (conn, _) in live {
            let frames = sim.frames(conn);
            let mut last: Option<u64> = None;
            for f in frames {
                if f.starts_with(b"event: gap") || f.starts_with(b"event: reset") { last = None; continue; }
                if let Some(rest) = f.strip_prefix(b"id: ") {
                    let end = rest.iter().position(|&b| b == b'\n').unwrap();
                    let id = seq_of(&rest[..end]);
                    if let Some(prev) = last { prop_assert_eq!(id, prev + 1, "conn {} holes", conn); }
                    last = Some(id);
                }
            }
        }
    }
}

/// The text of the reset notice a connection received, if any.
fn reset_of(sim: &Sim, conn: u32) -> Option<String> {
    sim.frames(conn)
        .iter()
        .find(|f| f.starts_with(b"event: reset"))
        .map(|f| String::from_utf8(f.to_vec()).unwrap())
}

/// Issue 14 case 10 in the core: a resume id the room cannot place (another epoch, beyond
/// the head, a bare number of a server before epochs, text of another shape) gets a reset
/// notice and everything held, never a silent skip; the current epoch resumes as before.
#[test]
fn resume_ids_that_cannot_be_placed_get_a_reset_and_everything_held() {
    let config = FanoutConfig {
        history_messages_max: 4,
        epoch_anchor_unix_micros: 1_000_000,
        ..FanoutConfig::default()
    };
    let mut sim = Sim::new(config);
    for i in 1..=6 {
        sim.publish("a", &format!("m{i}"));
    }
    let epoch = sim.fanout.room_info("a").unwrap().last_id.unwrap().epoch;
    assert_eq!(epoch, 1_000_000, "the epoch is the anchor clock");
    let at = |epoch, seq| Some(ResumeId::At(EventId { epoch, seq }));
    let cases = [
        (at(epoch - 1, 2), Some("unknown epoch")),
        (at(epoch + 1, 6), Some("unknown epoch")),
        (at(epoch, 7), Some("beyond the head")),
        (
            Some(ResumeId::Unplaceable(ResetReason::BareNumber)),
            Some("bare number"),
        ),
        (
            Some(ResumeId::Unplaceable(ResetReason::NotAnId)),
            Some("not an id"),
        ),
        (at(epoch, 4), None),
    ];
    for (conn, (resume, reason)) in cases.iter().enumerate() {
        let conn = conn as u32;
        sim.fanout
            .handle_subscribe(
                sim.now,
                ConnId(conn),
                "a",
                *resume,
                Bytes::from_static(b"HEAD"),
            )
            .unwrap();
        sim.run_idle();
        match reason {
            Some(reason) => {
                assert_eq!(
                    reset_of(&sim, conn),
                    Some(format!(
                        "event: reset\nid: {epoch}-2\ndata: {{\"reason\":\"{reason}\",\"held_from\":\"{epoch}-3\"}}\n\n"
                    )),
                    "{resume:?}"
                );
                assert_eq!(sim.ids(conn), vec![3, 4, 5, 6], "{resume:?}");
            }
            None => {
                assert_eq!(reset_of(&sim, conn), None);
                assert_eq!(sim.ids(conn), vec![5, 6]);
            }
        }
    }
    assert_eq!(sim.fanout.stats().resets_total, 5);
    assert_eq!(sim.fanout.stats().gaps_total, 0);
}

/// A room that never sequenced a message has no epoch: any resume id is reset (nothing is
/// held, and the notice has no id to resume from).
#[test]
fn a_room_without_messages_resets_every_resume_id() {
    let mut sim = Sim::new(FanoutConfig::default());
    let resume = Some(ResumeId::At(EventId { epoch: 5, seq: 0 }));
    sim.fanout
        .handle_subscribe(
            sim.now,
            ConnId(1),
            "new",
            resume,
            Bytes::from_static(b"HEAD"),
        )
        .unwrap();
    sim.run_idle();
    assert_eq!(
        reset_of(&sim, 1).as_deref(),
        Some("event: reset\ndata: {\"reason\":\"unknown epoch\",\"held_from\":null}\n\n")
    );
    sim.publish("new", "first");
    sim.run_idle();
    assert_eq!(sim.ids(1), vec![1]);
}

/// Epochs strictly increase on a shard even when rooms start within one microsecond, and
/// follow the anchor clock through the monotonic `now`.
#[test]
fn room_epochs_strictly_increase() {
    let mut sim = Sim::new(FanoutConfig {
        epoch_anchor_unix_micros: 500,
        ..FanoutConfig::default()
    });
    let epoch = |sim: &Sim, room: &str| sim.fanout.room_info(room).unwrap().last_id.unwrap().epoch;
    sim.publish("a", "x");
    sim.publish("b", "x");
    assert_eq!((epoch(&sim, "a"), epoch(&sim, "b")), (500, 501));
    sim.advance(Duration::from_secs(1));
    sim.publish("c", "x");
    assert_eq!(epoch(&sim, "c"), 1_000_500);
    sim.publish("a", "y");
    assert_eq!(epoch(&sim, "a"), 500, "a room keeps its epoch");
}

/// A replica learns its room's epoch from the owner's frames; a frame of another epoch
/// (the owner freed the room and created it again) starts the replica over, and its
/// subscribers get a reset notice instead of ids that silently went back to 1.
#[test]
fn a_replica_follows_the_owners_epoch_and_restarts_with_it() {
    let mut sim = Sim::new(FanoutConfig::default());
    sim.subscribe(1, "r", None);
    sim.run_idle();
    let frame = |epoch, seq| Frame::message("r", EventId { epoch, seq }, b"x");
    for seq in 1..=3 {
        assert!(sim
            .fanout
            .handle_frame_replica(sim.now, 0, "r", 40, seq, frame(40, seq)));
    }
    sim.run_idle();
    assert_eq!(sim.ids(1), vec![1, 2, 3]);
    let info = sim.fanout.room_info("r").unwrap();
    assert_eq!(info.last_id, Some(EventId { epoch: 40, seq: 3 }));
    // A client of this replica resumes in its epoch.
    sim.subscribe(2, "r", Some(2));
    sim.run_idle();
    assert_eq!(sim.ids(2), vec![3]);
    // The owner starts over with epoch 41.
    assert!(sim
        .fanout
        .handle_frame_replica(sim.now, 0, "r", 41, 1, frame(41, 1)));
    sim.run_idle();
    for conn in [1, 2] {
        assert_eq!(
            reset_of(&sim, conn).as_deref(),
            Some("event: reset\nid: 41-0\ndata: {\"reason\":\"room restarted\",\"held_from\":null}\n\n"),
        );
        assert_eq!(sim.ids(conn).last(), Some(&1), "conn {conn}");
    }
    assert_eq!(sim.fanout.room_info("r").unwrap().history_len, 1);
}

/// Cluster ids (`stream_ids`) show as the stream id `ms-seq`, in frames, gaps and resets.
#[test]
fn stream_ids_show_as_stream_ids() {
    let mut sim = Sim::new(FanoutConfig {
        stream_ids: true,
        ..FanoutConfig::default()
    });
    let packed = |ms: u64, seq: u64| ms << 20 | seq;
    let id = packed(1_700_000_000_000, 3);
    let frame = Frame::message("s", EventId::from_stream_packed(id), b"x");
    assert!(sim.fanout.handle_frame(sim.now, "s", id, frame));
    assert_eq!(
        sim.fanout
            .room_info("s")
            .unwrap()
            .last_id
            .map(|i| i.to_string())
            .as_deref(),
        Some("1700000000000-3")
    );
    let absurd = ResumeId::At(EventId {
        epoch: u64::MAX,
        seq: 1,
    });
    assert_eq!(
        sim.fanout.place("s", Some(absurd)),
        Start::Reset(ResetReason::BeyondHead)
    );
    sim.fanout
        .handle_subscribe_replayed(
            sim.now,
            ConnId(1),
            "s",
            Start::Reset(ResetReason::BareNumber),
            Bytes::from_static(b"HEAD"),
            Vec::new(),
        )
        .unwrap();
    sim.run_idle();
    assert_eq!(
        reset_of(&sim, 1).as_deref(),
        Some("event: reset\nid: 1700000000000-2\ndata: {\"reason\":\"bare number\",\"held_from\":\"1700000000000-3\"}\n\n")
    );
    assert_eq!(sim.frames(1).len(), 3, "head, reset, the message");
}

fn idle_config(rooms_max: usize) -> FanoutConfig {
    FanoutConfig {
        rooms_max,
        room_idle_timeout: Duration::from_secs(60),
        ..FanoutConfig::default()
    }
}

#[test]
fn a_room_without_subscribers_or_publishes_is_freed_after_the_idle_timeout() {
    let mut sim = Sim::new(idle_config(100));
    sim.publish("quiet", "x");
    sim.subscribe(0, "followed", None);
    sim.advance(Duration::from_secs(30));
    sim.publish("busy", "x");
    sim.advance(Duration::from_secs(31));
    sim.run_idle();
    assert_eq!(sim.fanout.room_info("quiet"), None, "61 s idle: freed");
    assert!(sim.fanout.room_info("busy").is_some(), "31 s idle: kept");
    assert!(
        sim.fanout.room_info("followed").is_some(),
        "a subscriber keeps it"
    );
    assert_eq!(sim.fanout.stats().rooms_freed_idle_total, 1);
    assert_eq!(sim.fanout.rooms_len(), 2);

    // The last subscriber leaving starts the room's idle clock.
    sim.fanout.handle_disconnect(ConnId(0));
    sim.advance(Duration::from_secs(59));
    sim.run_idle();
    assert!(sim.fanout.room_info("followed").is_some());
    sim.advance(Duration::from_secs(1));
    assert!(sim.fanout.poll_timeout().is_some_and(|at| at <= sim.now));
    sim.run_idle();
    assert_eq!(sim.fanout.room_info("followed"), None);
    assert_eq!(sim.fanout.room_info("busy"), None);
    assert_eq!(sim.fanout.rooms_len(), 0);
    assert_eq!(sim.fanout.stats().rooms_freed_idle_total, 3);

    // A freed room comes back empty: its history went with it.
    sim.subscribe(1, "quiet", Some(0));
    assert_eq!(sim.publish("quiet", "again"), 1);
    sim.run_idle();
    assert_eq!(sim.ids(1), [1]);
}

#[test]
fn the_idle_sweep_is_bounded_per_turn() {
    let mut sim = Sim::new(idle_config(10_000));
    for room in 0..(ROOM_SWEEP_MAX * 3 + 5) {
        sim.publish(&format!("r{room}"), "x");
    }
    sim.advance(Duration::from_secs(61));
    let mut turns = 0;
    while sim.fanout.rooms_len() > 0 {
        let before = sim.fanout.rooms_len();
        sim.fanout.handle_timeout(sim.now);
        assert!(before - sim.fanout.rooms_len() <= ROOM_SWEEP_MAX);
        turns += 1;
    }
    assert_eq!(turns, 4);
    assert_eq!(sim.fanout.rooms_idle_len(), 0);
}

#[test]
fn at_the_cap_a_new_room_evicts_the_least_recently_used_room_without_subscribers() {
    let mut sim = Sim::new(idle_config(3));
    sim.publish("a", "x");
    sim.advance(Duration::from_secs(1));
    sim.publish("b", "x");
    sim.advance(Duration::from_secs(1));
    sim.subscribe(0, "c", None);
    sim.advance(Duration::from_secs(1));
    sim.publish("a", "again"); // "a" is now more recent than "b"
    sim.publish("d", "x");
    assert_eq!(sim.fanout.room_info("b"), None, "least recently used goes");
    assert!(sim.fanout.room_info("a").is_some());
    assert_eq!(sim.fanout.stats().rooms_freed_evicted_total, 1);
    sim.subscribe(1, "e", None); // evicts "a"
    sim.subscribe(2, "d", None);
    assert_eq!(sim.fanout.rooms_len(), 3);
    // Every room has a subscriber: now, and only now, a new room is refused.
    let now = sim.now;
    assert_eq!(
        sim.fanout.handle_publish(now, "f", b"x"),
        Err(FanoutError::RoomsFull)
    );
    assert_eq!(
        sim.fanout
            .handle_subscribe(now, ConnId(3), "f", None, Bytes::new()),
        Err(FanoutError::RoomsFull)
    );
    sim.fanout.handle_disconnect(ConnId(2));
    sim.publish("f", "x");
    assert_eq!(sim.fanout.room_info("d"), None);
    assert_eq!(sim.fanout.stats().rooms_freed_evicted_total, 3);
}

#[test]
fn subscribers_on_other_shards_keep_the_owners_room() {
    let mut owner = Sim::new(idle_config(2));
    let mut replica = Sim::new(idle_config(2));
    replica.subscribe(0, "r", None);
    let presence = replica.fanout.poll_presence().expect("first subscriber");
    assert!(presence.subscribed && &*presence.room == "r");
    assert_eq!(replica.fanout.poll_presence(), None);
    owner
        .fanout
        .handle_presence(owner.now, &presence.room, presence.subscribed);
    owner.publish("other", "x");
    owner.advance(Duration::from_secs(120));
    owner.run_idle();
    assert!(owner.fanout.room_info("r").is_some(), "followed elsewhere");
    assert_eq!(owner.fanout.room_info("other"), None);
    owner.publish("x", "x");
    owner.publish("y", "x");
    assert_eq!(
        owner.fanout.room_info("x"),
        None,
        "evicted in place of \"r\""
    );
    owner.subscribe(0, "y", None);
    let now = owner.now;
    assert_eq!(
        owner.fanout.handle_publish(now, "z", b"x"),
        Err(FanoutError::RoomsFull),
        "neither room may be evicted"
    );
    replica.fanout.handle_disconnect(ConnId(0));
    let presence = replica
        .fanout
        .poll_presence()
        .expect("last subscriber left");
    assert!(!presence.subscribed);
    owner
        .fanout
        .handle_presence(owner.now, &presence.room, presence.subscribed);
    owner.publish("z", "x");
    assert_eq!(owner.fanout.room_info("r"), None, "evicted once unfollowed");
}

/// Carries what the owner sequenced to the replica, as the driver's `Mail::Frame` does.
fn replicate(owner: &Sim, replica: &mut Sim, room: &str, id: u64, data: &str) -> bool {
    let incarnation = owner.fanout.room_incarnation(room).unwrap();
    replica.fanout.handle_frame_replica(
        replica.now,
        0,
        room,
        incarnation,
        id,
        Frame::message(
            room,
            EventId {
                epoch: incarnation,
                seq: id,
            },
            data.as_bytes(),
        ),
    )
}

#[test]
fn a_replica_follows_its_owner_when_a_room_is_freed_and_created_again() {
    // The owner freed the room (the replica's presence was still in flight) and a publish
    // created it again: ids restart at 1, and the replica's subscriber must get them, not
    // drop them as duplicates of the old room's ids.
    let mut owner = Sim::new(idle_config(100));
    let mut replica = Sim::new(idle_config(100));
    for n in 1..=3 {
        let id = owner.publish("r", "old");
        assert!(replicate(&owner, &mut replica, "r", id, "old"));
        assert_eq!(id, n);
    }
    let old = owner.fanout.room_incarnation("r").unwrap();
    replica.subscribe(0, "r", None);
    replica.run_idle();
    owner.advance(Duration::from_secs(61));
    owner.run_idle();
    assert_eq!(owner.fanout.room_info("r"), None);
    let id = owner.publish("r", "new");
    assert_eq!(id, 1);
    assert!(owner.fanout.room_incarnation("r").unwrap() > old);
    assert!(replicate(&owner, &mut replica, "r", id, "new"));
    let id = owner.publish("r", "new");
    assert!(replicate(&owner, &mut replica, "r", id, "new"));
    replica.run_idle();
    assert_eq!(replica.ids(0), [1, 2]);
    assert!(replica.closed.is_empty());
    // A late frame of the old incarnation is stale.
    assert!(!replica.fanout.handle_frame_replica(
        replica.now,
        0,
        "r",
        old,
        4,
        Frame::message("r", EventId { epoch: old, seq: 4 }, b"stale")
    ));
}

#[test]
fn a_replica_freed_while_its_owner_kept_the_room_reports_what_it_no_longer_holds() {
    let mut owner = Sim::new(idle_config(100));
    let mut replica = Sim::new(idle_config(1));
    for _ in 0..3 {
        let id = owner.publish("r", "m");
        replicate(&owner, &mut replica, "r", id, "m");
    }
    replica.publish("local", "x"); // evicts the replica of "r"
    assert_eq!(replica.fanout.room_info("r"), None);
    let id = owner.publish("r", "m");
    assert!(replicate(&owner, &mut replica, "r", id, "m"));
    replica.subscribe(0, "r", Some(1));
    let id = owner.publish("r", "m");
    assert!(replicate(&owner, &mut replica, "r", id, "m"));
    replica.run_idle();
    assert_eq!(replica.ids(0), [4, 5]);
    assert!(
        replica
            .frames(0)
            .iter()
            .any(|f| f.windows(3).any(|w| w == b"gap")),
        "{:?}",
        replica.frames(0)
    );

    // A replica created by a subscriber, before any frame: the subscriber starts at the
    // first frame it sees, not lapped by the ids it never held.
    let mut late = Sim::new(idle_config(100));
    late.subscribe(0, "r", None);
    let id = owner.publish("r", "m");
    assert!(replicate(&owner, &mut late, "r", id, "m"));
    late.run_idle();
    assert_eq!(late.ids(0), [6]);
    assert!(late.closed.is_empty());
}

#[test]
fn freed_rooms_are_handed_to_the_driver() {
    let mut sim = Sim::new(idle_config(1));
    assert!(sim.fanout.room_available("a"));
    sim.publish("a", "x");
    assert!(sim.fanout.room_available("b"), "a can be evicted");
    sim.subscribe(0, "a", None);
    assert!(sim.fanout.room_available("a"));
    assert!(!sim.fanout.room_available("b"), "every room is followed");
    sim.fanout.handle_disconnect(ConnId(0));
    sim.publish("b", "x");
    assert_eq!(sim.fanout.poll_freed().as_deref(), Some("a"));
    sim.advance(Duration::from_secs(61));
    sim.run_idle();
    assert_eq!(sim.fanout.poll_freed().as_deref(), Some("b"));
    assert_eq!(sim.fanout.poll_freed(), None);
}

/// What one step of the two-shard schedule does.
#[derive(Debug, Clone)]
enum Step {
    /// Subscribe connection `.0` of the replica shard to room `.1`.
    Subscribe(u32, u8),
    Disconnect(u32),
    /// Publish in room `.0` on the owner shard.
    Publish(u8),
    /// Deliver up to `.0` mails owner → replica.
    Frames(u8),
    /// Deliver up to `.0` mails replica → owner.
    Presences(u8),
    /// Advance both clocks by `.0` seconds (the idle timeout is 3 s).
    Advance(u8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u32..6, 0u8..4).prop_map(|(c, r)| Step::Subscribe(c, r)),
        (0u32..6).prop_map(Step::Disconnect),
        (0u8..4).prop_map(Step::Publish),
        (0u8..4).prop_map(Step::Publish),
        (0u8..8).prop_map(Step::Frames),
        (0u8..4).prop_map(Step::Presences),
        (0u8..4).prop_map(Step::Advance),
    ]
}

/// Each message's data is `incarnation:id`, as the owner numbered it.
fn incarnation_and_id(frame: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(frame).ok()?;
    let data = text.lines().find_map(|line| line.strip_prefix("data: "))?;
    let (incarnation, id) = data.split_once(':')?;
    Some((incarnation.parse().ok()?, id.parse().ok()?))
}

proptest! {
    /// Two shards, the owner (sequencing, 2 rooms at most) and a replica with subscribers,
    /// mail in flight both ways, rooms freed (idle, evicted) and created again at any time:
    /// a subscriber gets messages in order (incarnation, then id), every message published
    /// while it was subscribed reaches it, and once the mail is delivered the owner holds
    /// every room the replica's subscribers follow.
    #[test]
    fn freeing_rooms_loses_and_misorders_nothing_across_shards(
        steps in proptest::collection::vec(step(), 1..200)
    ) {
        let config = FanoutConfig {
            rooms_max: 2,
            room_idle_timeout: Duration::from_secs(3),
            ..FanoutConfig::default()
        };
        let mut owner = Sim::new(config.clone());
        let mut replica = Sim::new(config);
        replica.now = owner.now;
        let mut frames: VecDeque<(String, u64, u64, Frame)> = VecDeque::new();
        let mut presences: VecDeque<Presence> = VecDeque::new();
        // Subscriber → (room, messages published since it subscribed).
        let mut live: HashMap<u32, (String, Vec<(u64, u64)>)> = HashMap::new();
        for step in steps {
            match step {
                Step::Subscribe(c, r) => {
                    let room = format!("r{r}");
                    if !live.contains_key(&c)
                        && replica.fanout.handle_subscribe(
                            replica.now, ConnId(c), &room, None, Bytes::new()).is_ok()
                    {
                        replica.received.remove(&ConnId(c));
                        live.insert(c, (room, Vec::new()));
                    }
                }
                Step::Disconnect(c) => {
                    replica.fanout.handle_disconnect(ConnId(c));
                    replica.pending_done.retain(|p| p.0 != c);
                    live.remove(&c);
                }
                Step::Publish(r) => {
                    let room = format!("r{r}");
                    let next = owner
                        .fanout
                        .room_info(&room)
                        .and_then(|i| i.last_id)
                        .map_or(1, |last| last.seq + 1);
                    // The incarnation is numbered at the first publish: peek by publishing.
                    let now = owner.now;
                    let Ok((id, _)) = owner.fanout.handle_publish(now, &room, b"probe") else {
                        continue;
                    };
                    prop_assert_eq!(id.seq, next);
                    let incarnation = owner.fanout.room_incarnation(&room).unwrap();
                    // The probe was sequenced; the real frame replaces it for the replica.
                    let frame =
                        Frame::message(&room, id, format!("{incarnation}:{}", id.seq).as_bytes());
                    frames.push_back((room.clone(), incarnation, id.seq, frame));
                    for (room_of, expected) in live.values_mut() {
                        if *room_of == room {
                            expected.push((incarnation, id.seq));
                        }
                    }
                }
                Step::Frames(n) => {
                    for _ in 0..n {
                        let Some((room, incarnation, id, frame)) = frames.pop_front() else { break };
                        let now = replica.now;
                        replica.fanout.handle_frame_replica(now, 0, &room, incarnation, id, frame);
                    }
                }
                Step::Presences(n) => {
                    for _ in 0..n {
                        let Some(p) = presences.pop_front() else { break };
                        let now = owner.now;
                        owner.fanout.handle_presence(now, &p.room, p.subscribed);
                    }
                }
                Step::Advance(s) => {
                    owner.advance(Duration::from_secs(s.into()));
                    replica.advance(Duration::from_secs(s.into()));
                }
            }
            while let Some(p) = replica.fanout.poll_presence() {
                presences.push_back(p);
            }
            while owner.fanout.poll_presence().is_some() {}
            owner.run_idle();
            replica.run_idle();
            prop_assert!(replica.closed.is_empty(), "{:?}", replica.closed);
        }
        // Quiescence: every mail delivered.
        for (room, incarnation, id, frame) in frames.drain(..) {
            let now = replica.now;
            replica.fanout.handle_frame_replica(now, 0, &room, incarnation, id, frame);
        }
        for p in presences.drain(..) {
            let now = owner.now;
            owner.fanout.handle_presence(now, &p.room, p.subscribed);
        }
        replica.run_idle();
        for (conn, (room, expected)) in &live {
            let got: Vec<(u64, u64)> = replica
                .frames(*conn)
                .iter()
                .filter_map(|f| incarnation_and_id(f))
                .collect();
            prop_assert!(got.windows(2).all(|w| w[0] < w[1]), "conn {} misordered {:?}", conn, got);
            for message in expected {
                prop_assert!(got.contains(message), "conn {} lost {:?}: got {:?}", conn, message, got);
            }
            prop_assert!(owner.fanout.room_info(room).is_some(), "owner freed followed {}", room);
        }
    }
}
