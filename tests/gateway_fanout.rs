//! Fan-out, resume and heartbeats of the real `ringcast` binary on loopback (issue 3):
//! every subscriber gets every message of its room exactly once and in order, across
//! shards; `Last-Event-ID` replays from history or announces a gap; idle streams get
//! heartbeat comments.

mod common;

use common::{Event, Id, Item, Server, Sse};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const SUBSCRIBERS: usize = 1000;
const ROOMS: usize = 10;
const MESSAGES_PER_ROOM: u64 = 20;
const READER_THREADS: usize = 8;

fn room_name(room: usize) -> String {
    format!("fan{room}")
}

/// 1000 subscribers over 10 rooms on 2 shards (rooms owned by both shards, subscribers
/// spread by SO_REUSEPORT, so publishes cross shards both ways). Each room gets 20
/// messages and then an end marker; each subscriber must see exactly ids 1..=20 with its
/// own room's data, in order, before the marker: a duplicate, a loss, a reorder or a
/// message of another room fails.
#[test]
fn every_subscriber_gets_every_message_of_its_room_once_in_order() {
    let started = Instant::now();
    let server = Server::start(&["--shards", "2"]);
    let owners: Vec<usize> = (0..ROOMS)
        .map(|r| ringcast_core::room::owner_shard(&room_name(r), 2))
        .collect();
    assert!(
        owners.contains(&0) && owners.contains(&1),
        "rooms should be owned by both shards: {owners:?}"
    );

    let (ready_tx, ready_rx) = mpsc::channel();
    let readers: Vec<_> = (0..READER_THREADS)
        .map(|thread| {
            let ready = ready_tx.clone();
            let addr = server.addr;
            std::thread::spawn(move || {
                let mine: Vec<usize> = (thread..SUBSCRIBERS).step_by(READER_THREADS).collect();
                let mut streams: Vec<(usize, Sse)> = mine
                    .iter()
                    .map(|&i| {
                        let room = i % ROOMS;
                        (
                            room,
                            Sse::open(addr, &format!("/rooms/{}/events", room_name(room)), &[]),
                        )
                    })
                    .collect();
                ready.send(()).expect("main waits");
                // Every stream's events sit in its socket buffer; read them one stream
                // after another.
                for (room, sse) in &mut streams {
                    let mut got: Vec<Event> = Vec::new();
                    loop {
                        let event = sse.next_event(Duration::from_secs(10));
                        if event.data == format!("end {}", room_name(*room)) {
                            break;
                        }
                        got.push(event);
                    }
                    // One room, one epoch: every id is `{epoch}-{n}`.
                    let epoch = got.first().and_then(|e| e.id).map_or(0, |id| id.epoch);
                    let want: Vec<Event> = (1..=MESSAGES_PER_ROOM)
                        .map(|id| Event {
                            id: Some(common::Id { epoch, seq: id }),
                            event: None,
                            data: format!("{} message {id}", room_name(*room)),
                        })
                        .collect();
                    assert_eq!(got, want, "subscriber of {}", room_name(*room));
                }
                streams.len()
            })
        })
        .collect();
    for _ in 0..READER_THREADS {
        ready_rx
            .recv_timeout(Duration::from_secs(15))
            .expect("every reader thread subscribed in time");
    }
    // Figures are published once per loop turn: poll until they show every subscriber.
    let mut subscribed = Vec::new();
    common::wait_until(Duration::from_secs(3), || {
        subscribed = server.metrics().per_shard("ringcast_subscribers");
        subscribed.iter().sum::<u64>() == SUBSCRIBERS as u64
    });
    assert_eq!(
        subscribed.iter().sum::<u64>(),
        SUBSCRIBERS as u64,
        "{subscribed:?}"
    );
    assert!(
        subscribed.iter().all(|&n| n > 0),
        "subscribers should sit on both shards: {subscribed:?}"
    );

    // Two keep-alive publishers, each interleaving half of the rooms.
    let publishers: Vec<_> = (0..2)
        .map(|half| {
            let addr = server.addr;
            std::thread::spawn(move || {
                let mut client = common::Client::connect(addr);
                for id in 1..=MESSAGES_PER_ROOM + 1 {
                    for room in (half..ROOMS).step_by(2) {
                        let name = room_name(room);
                        let data = if id > MESSAGES_PER_ROOM {
                            format!("end {name}")
                        } else {
                            format!("{name} message {id}")
                        };
                        assert_eq!(client.publish(&name, &data).seq, id, "{name}");
                    }
                }
            })
        })
        .collect();
    for publisher in publishers {
        publisher.join().expect("publisher");
    }
    let read: usize = readers.into_iter().map(|r| r.join().expect("reader")).sum();
    assert_eq!(read, SUBSCRIBERS);
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(20),
        "fan-out took {elapsed:?}"
    );
}

/// Publishes `m1..=m{count}` to a new room; returns the first id.
fn publish_numbered(server: &Server, room: &str, count: u64) -> Id {
    let mut client = server.client();
    let first = client.publish(room, "m1");
    assert_eq!(first.seq, 1);
    for id in 2..=count {
        assert_eq!(client.publish(room, &format!("m{id}")), first.at(id));
    }
    first
}

/// Message `m{id}` of the epoch of `first`.
fn message(first: Id, id: u64) -> Event {
    Event {
        id: Some(first.at(id)),
        event: None,
        data: format!("m{id}"),
    }
}

fn next_events(sse: &mut Sse, count: usize) -> Vec<Event> {
    (0..count)
        .map(|_| sse.next_event(Duration::from_secs(5)))
        .collect()
}

/// `Last-Event-ID: {epoch}-6` (header) and `?last_event_id={epoch}-6` (query) after 10 publishes replay
/// exactly 7..=10, then continue live. Several subscribers per form so both shards' history
/// replicas serve a resume.
#[test]
fn resume_replays_after_last_event_id_then_goes_live() {
    let server = Server::start(&["--shards", "2"]);
    let first = publish_numbered(&server, "resume", 10);
    let mut streams: Vec<Sse> = Vec::new();
    for _ in 0..4 {
        streams.push(server.subscribe("resume", Some(first.at(6))));
        streams.push(Sse::open(
            server.addr,
            &format!("/rooms/resume/events?last_event_id={}", first.at(6)),
            &[],
        ));
    }
    for sse in &mut streams {
        assert_eq!(
            next_events(sse, 4),
            (7..=10).map(|n| message(first, n)).collect::<Vec<_>>()
        );
    }
    assert_eq!(server.publish("resume", "m11"), first.at(11));
    for sse in &mut streams {
        assert_eq!(sse.next_event(Duration::from_secs(5)), message(first, 11));
    }
    // A plain subscriber gets no replay: only what is published after it joined.
    let mut live = server.subscribe("resume", None);
    assert_eq!(server.publish("resume", "m12"), first.at(12));
    assert_eq!(live.next_event(Duration::from_secs(5)), message(first, 12));
    assert_eq!(server.metrics().sum("ringcast_gaps_total"), 0);
}

/// With `--history 4`, resuming after id 2 when 10 were published: 3..=6 are gone, so the
/// stream opens with `event: gap` `{"from":3,"to":6}`, then 7..=10; the gap is counted.
#[test]
fn resume_past_history_starts_with_a_gap_notice() {
    let server = Server::start(&["--shards", "2", "--history", "4"]);
    let first = publish_numbered(&server, "short", 10);
    assert_eq!(server.metrics().sum("ringcast_gaps_total"), 0);
    let mut sse = server.subscribe("short", Some(first.at(2)));
    let gap = sse.next_event(Duration::from_secs(5));
    assert_eq!(gap.event.as_deref(), Some("gap"), "{gap:?}");
    assert_eq!(gap.id, None, "a gap notice carries no id: {gap:?}");
    let range: serde_json::Value = serde_json::from_str(&gap.data).expect("gap data is JSON");
    assert_eq!(
        range,
        serde_json::json!({"from": first.at(3).to_string(), "to": first.at(6).to_string()})
    );
    assert_eq!(
        next_events(&mut sse, 4),
        (7..=10).map(|n| message(first, n)).collect::<Vec<_>>()
    );
    // Figures are published once per loop turn: poll.
    assert!(
        common::wait_until(Duration::from_secs(3), || server
            .metrics()
            .sum("ringcast_gaps_total")
            >= 1),
        "ringcast_gaps_total did not count the gap"
    );
}

/// `--heartbeat 0.3`: an idle subscriber gets at least two `:` comments within 1.2 s
/// (the default period is 15 s, so none would come without the setting).
#[test]
fn idle_subscriber_gets_heartbeat_comments() {
    let server = Server::start(&["--heartbeat", "0.3"]);
    let mut sse = server.subscribe("quiet", None);
    let items = sse.items_for(Duration::from_millis(1200));
    let heartbeats = items
        .iter()
        .filter(|item| matches!(item, Item::Comment(_)))
        .count();
    assert!(heartbeats >= 2, "heartbeats in 1.2 s: {items:?}");
    assert!(
        items.iter().all(|item| matches!(item, Item::Comment(_))),
        "an idle room sends only comments: {items:?}"
    );
    assert!(server.metrics().sum("ringcast_heartbeats_total") >= 2);
}
