//! A subscriber that stops reading must not hold up the others (issue 3): once the room's
//! history head laps it, the server cuts it (`event: lagged` if it can still be written,
//! then close) and counts the cut, while a reading subscriber of the same room keeps
//! getting every message promptly. Alone in its file so the latency bound is not measured
//! under another test's load.

mod common;

use common::{Client, Item, Server, Sse};
use std::time::{Duration, Instant};

const MESSAGES: u64 = 200;
const MESSAGE_BYTES: usize = 32 * 1024;
const LATENCY_MAX: Duration = Duration::from_secs(1);

/// `SEQ MICROS ` (publish time since `start`) padded with `x` to `MESSAGE_BYTES`.
fn payload(seq: u64, start: Instant) -> String {
    let mut data = format!("{seq} {} ", start.elapsed().as_micros());
    data.push_str(&"x".repeat(MESSAGE_BYTES - data.len()));
    data
}

#[test]
fn stuck_subscriber_is_cut_while_a_reader_keeps_up() {
    let server = Server::start(&["--shards", "2", "--history", "16"]);
    // The stuck one: a 4 KiB receive buffer, reads the response head, then nothing.
    let stuck = common::connect_with_recv_buffer(server.addr, 4096);
    let mut stuck = Sse::open_on(Client::from_stream(stuck), "/rooms/big/events", &[]);
    let mut reader = server.subscribe("big", None);
    assert!(common::wait_until(Duration::from_secs(3), || server
        .metrics()
        .sum("ringcast_subscribers")
        == 2));

    let start = Instant::now();
    let reading = std::thread::spawn(move || {
        let mut worst = Duration::ZERO;
        for want in 1..=MESSAGES {
            let event = reader.next_event(Duration::from_secs(10));
            let arrived = start.elapsed();
            assert_eq!(
                event.id.map(|id| id.seq),
                Some(want),
                "reader got {:?}",
                event.event
            );
            let mut fields = event.data.splitn(3, ' ');
            let seq: u64 = fields.next().unwrap().parse().unwrap();
            let sent = Duration::from_micros(fields.next().unwrap().parse().unwrap());
            assert_eq!(seq, want);
            assert_eq!(event.data.len(), MESSAGE_BYTES);
            let latency = arrived.saturating_sub(sent);
            assert!(
                latency < LATENCY_MAX,
                "message {want} arrived {latency:?} after its publish"
            );
            worst = worst.max(latency);
        }
        (worst, reader)
    });
    let mut publisher = server.client();
    for seq in 1..=MESSAGES {
        assert_eq!(publisher.publish("big", &payload(seq, start)).seq, seq);
    }
    let (worst, _reader) = reading.join().expect("the reading subscriber kept up");
    eprintln!("worst publish-to-read latency: {worst:?}");

    // The stuck subscriber's stream ends (after whatever was already buffered for it),
    // and it never got anything past the point it was lapped.
    let items = stuck.expect_end(Duration::from_secs(10));
    let ids: Vec<u64> = items
        .iter()
        .filter_map(|item| match item {
            Item::Event(e) => e.id.map(|id| id.seq),
            Item::Comment(_) | Item::Retry(_) => None,
        })
        .collect();
    assert!(
        (ids.len() as u64) < MESSAGES,
        "the stuck subscriber was never cut: it got all {} messages",
        ids.len()
    );
    assert!(
        ids.windows(2).all(|w| w[1] == w[0] + 1),
        "what it got was in order"
    );
    assert!(
        common::wait_until(Duration::from_secs(3), || server
            .metrics()
            .sum("ringcast_slow_consumer_cuts_total")
            >= 1),
        "ringcast_slow_consumer_cuts_total did not count the cut"
    );
    // The reader is still subscribed (and the stuck one no longer is).
    let mut subscribers = Vec::new();
    common::wait_until(Duration::from_secs(3), || {
        subscribers = server.metrics().per_shard("ringcast_subscribers");
        subscribers.iter().sum::<u64>() == 1
    });
    assert_eq!(
        subscribers.iter().sum::<u64>(),
        1,
        "subscribers per shard after the cut: {subscribers:?}\n{}",
        server.metrics().0
    );
}
