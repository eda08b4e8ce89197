//! Idempotent publishes (issue 14, case 13) against the real `ringcast` binary: a publisher
//! that retries with the same `Idempotency-Key` (or NDJSON `idempotency_key`) within
//! `--idempotency-window` gets the first publish's answer and the room holds one message, on
//! one node (every transport) and across a cluster; bad keys get 400; keys expire; and a
//! cluster publish that timed out after it was sent (Redis stalled by `DEBUG SLEEP`) says
//! "outcome unknown" so the publisher knows to retry with its key. The cluster tests start
//! their own `redis-server` (as tests/cluster.rs does).

mod common;
mod transports;

use common::redis::Redis;
use common::{wait_until, Client, Response, Server, PATIENCE};
use std::time::{Duration, Instant};

/// `POST /rooms/{room}/messages` with an optional `Idempotency-Key`.
fn publish_keyed(client: &mut Client, room: &str, data: &str, key: Option<&str>) -> Response {
    let headers: Vec<(&str, &str)> = key.map(|k| ("Idempotency-Key", k)).into_iter().collect();
    client.request(
        "POST",
        &format!("/rooms/{room}/messages"),
        &headers,
        data.as_bytes(),
    )
}

/// The `id` of a 201 answer, as JSON (whatever form ids take at the edge).
fn id_of(response: &Response) -> serde_json::Value {
    assert_eq!(response.status, 201, "{response:?}");
    let json: serde_json::Value = serde_json::from_slice(&response.body).expect("JSON");
    assert!(!json["id"].is_null(), "{json}");
    json["id"].clone()
}

/// Every event a fresh subscriber resuming from the start gets within `window`.
fn history(server: &Server, room: &str, window: Duration) -> Vec<common::Event> {
    // A bare number cannot be placed: a reset, then everything held.
    let mut sse = server.subscribe_after(room, "0");
    let mut events = Vec::new();
    let deadline = Instant::now() + window;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match sse.next_item(left) {
            // Plain messages only (not notices such as a gap or a reset).
            Ok(Some(common::Item::Event(event))) if event.event.is_none() => events.push(event),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    events
}

#[test]
fn a_retried_publish_with_the_same_idempotency_key_gets_the_first_id_not_a_second_message() {
    let server = Server::start(&["--shards", "2"]);
    // Several rooms, so some are owned by the shard that reads the request and some by the
    // other (the retry may come on another connection, another shard).
    for room in ["r0", "r1", "r2", "r3"] {
        let mut first = server.client();
        let answer = publish_keyed(&mut first, room, "hello", Some("order-42"));
        let id = id_of(&answer);
        for _ in 0..3 {
            let mut retry = server.client();
            let again = publish_keyed(&mut retry, room, "hello", Some("order-42"));
            assert_eq!(again.status, answer.status, "{again:?}");
            assert_eq!(again.body, answer.body, "the same answer as the first");
        }
        let again = publish_keyed(&mut first, room, "hello", Some("order-42"));
        assert_eq!(id_of(&again), id);
        assert_eq!(
            server.room(room)["history_len"],
            1,
            "{room} holds one message"
        );
        let events = history(&server, room, Duration::from_millis(300));
        assert_eq!(events.len(), 1, "{room}: {events:?}");
        assert_eq!(events[0].data, "hello");
    }
    let metrics = server.metrics();
    assert_eq!(metrics.sum("ringcast_idempotent_replays_total"), 16);
    assert_eq!(metrics.sum("ringcast_idempotency_keys"), 4);
}

#[test]
fn concurrent_publishes_with_one_key_make_one_message() {
    let server = Server::start(&["--shards", "2"]);
    let addr = server.addr;
    let answers: Vec<Vec<u8>> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(move || {
                    let mut client = Client::connect(addr);
                    let answer = publish_keyed(&mut client, "race", "once", Some("same"));
                    assert_eq!(answer.status, 201, "{answer:?}");
                    answer.body
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
    assert_eq!(server.room("race")["history_len"], 1);
}

#[test]
fn different_keys_and_no_key_make_separate_messages() {
    let server = Server::start(&["--shards", "2"]);
    let mut client = server.client();
    let a = id_of(&publish_keyed(&mut client, "room", "x", Some("a")));
    let b = id_of(&publish_keyed(&mut client, "room", "x", Some("b")));
    let c = id_of(&publish_keyed(&mut client, "room", "x", None));
    let d = id_of(&publish_keyed(&mut client, "room", "x", None));
    assert!(a != b && b != c && c != d, "{a} {b} {c} {d}");
    // Keys are scoped per room: the same key in another room is another message.
    id_of(&publish_keyed(&mut client, "other", "x", Some("a")));
    assert_eq!(server.room("room")["history_len"], 4);
    assert_eq!(server.room("other")["history_len"], 1);
    assert_eq!(server.metrics().sum("ringcast_idempotent_replays_total"), 0);
}

#[test]
fn a_bad_idempotency_key_is_refused_with_400_and_nothing_published() {
    let server = Server::start(&["--shards", "2"]);
    let long = "k".repeat(129);
    for key in [
        "",
        "   ",
        long.as_str(),
        "has space",
        "caf\u{e9}",
        "tab\tin",
    ] {
        let mut client = server.client();
        let answer = publish_keyed(&mut client, "room", "x", Some(key));
        assert_eq!(answer.status, 400, "{key:?}: {answer:?}");
        assert!(answer.text().contains("idempotency key"), "{answer:?}");
    }
    // Two keys on one request: which would count?
    let mut client = server.client();
    let answer = client.request(
        "POST",
        "/rooms/room/messages",
        &[("Idempotency-Key", "a"), ("Idempotency-Key", "b")],
        b"x",
    );
    assert_eq!(answer.status, 400, "{answer:?}");
    // 128 bytes is the limit, and allowed.
    let mut client = server.client();
    id_of(&publish_keyed(
        &mut client,
        "room",
        "x",
        Some(&"k".repeat(128)),
    ));
    assert_eq!(server.room("room")["history_len"], 1);
}

#[test]
fn an_idempotency_key_expires_after_the_window() {
    let server = Server::start(&["--shards", "2", "--idempotency-window", "1"]);
    let mut client = server.client();
    let first = id_of(&publish_keyed(&mut client, "room", "x", Some("k")));
    assert_eq!(
        id_of(&publish_keyed(&mut client, "room", "x", Some("k"))),
        first
    );
    std::thread::sleep(Duration::from_millis(1100));
    let later = id_of(&publish_keyed(&mut client, "room", "x", Some("k")));
    assert_ne!(later, first, "a new message once the window passed");
    assert_eq!(server.room("room")["history_len"], 2);
    // The shards forget expired keys without being asked.
    std::thread::sleep(Duration::from_millis(1100));
    let forgotten = wait_until(PATIENCE, || {
        server.metrics().sum("ringcast_idempotency_keys") == 0
    });
    assert!(forgotten, "{}", server.metrics().0);
}

#[test]
fn at_the_key_cap_the_oldest_key_is_forgotten_and_no_publish_refused() {
    let server = Server::start(&["--shards", "1", "--idempotency-keys-max", "2"]);
    let mut client = server.client();
    let first = id_of(&publish_keyed(&mut client, "room", "x", Some("k1")));
    id_of(&publish_keyed(&mut client, "room", "x", Some("k2")));
    let third = id_of(&publish_keyed(&mut client, "room", "x", Some("k3")));
    assert_eq!(
        id_of(&publish_keyed(&mut client, "room", "x", Some("k3"))),
        third
    );
    // k1 went to make room: its retry is a new message.
    assert_ne!(
        id_of(&publish_keyed(&mut client, "room", "x", Some("k1"))),
        first
    );
    let metrics = server.metrics();
    assert_eq!(metrics.sum("ringcast_idempotency_keys"), 2);
    assert_eq!(metrics.sum("ringcast_idempotency_keys_evicted_total"), 2);
    assert_eq!(server.room("room")["history_len"], 4);
}

#[test]
fn a_retried_ndjson_batch_with_keys_gets_the_same_results() {
    let server = Server::start(&["--shards", "2"]);
    let body = concat!(
        r#"{"room":"a","data":"one","idempotency_key":"k1"}"#,
        "\n",
        r#"{"room":"b","data":"two","idempotency_key":"k1"}"#,
        "\n",
        r#"{"room":"a","data":"three"}"#,
        "\n",
        r#"{"room":"a","data":"bad","idempotency_key":"no spaces"}"#,
        "\n",
    );
    let mut client = server.client();
    let first = client.request("POST", "/publish", &[], body.as_bytes());
    assert_eq!(first.status, 200, "{first:?}");
    let first: serde_json::Value = serde_json::from_slice(&first.body).unwrap();
    let results = first["results"].as_array().unwrap();
    assert!(!results[0]["id"].is_null() && !results[1]["id"].is_null());
    assert!(results[3]["error"]
        .as_str()
        .unwrap()
        .contains("idempotency key"));
    let again = client.request("POST", "/publish", &[], body.as_bytes());
    let again: serde_json::Value = serde_json::from_slice(&again.body).unwrap();
    let replayed = again["results"].as_array().unwrap();
    assert_eq!(replayed[0], results[0]);
    assert_eq!(replayed[1], results[1]);
    assert_ne!(
        replayed[2], results[2],
        "a line without a key is a new message"
    );
    // The header's key and a line's key share the room's table.
    let single = publish_keyed(&mut client, "a", "one", Some("k1"));
    assert_eq!(id_of(&single), results[0]["id"]);
    assert_eq!(server.room("a")["history_len"], 3, "one, three, three");
    assert_eq!(server.room("b")["history_len"], 1);
}

#[test]
fn an_idempotency_key_over_h2c_reaches_the_publish() {
    let args: Vec<String> = ["--shards", "2", "--h2c-listen", "127.0.0.1:0"]
        .map(String::from)
        .to_vec();
    let server = transports::start(&args);
    let h2c = transports::addr_of(&server, "h2c");
    let answers = transports::runtime().block_on(async {
        let mut answers = Vec::new();
        for _ in 0..2 {
            let mut conn =
                transports::h2_connect(tokio::net::TcpStream::connect(h2c).await.unwrap(), None)
                    .await;
            let request = transports::request(
                "/rooms/h2room/messages",
                &[("idempotency-key", "over-h2")],
                Some("hi"),
            );
            let stream = transports::h2_send(&mut conn, request, true).await;
            assert_eq!(stream.status, 201);
            answers.push(stream.text().await);
        }
        answers
    });
    assert_eq!(answers[0], answers[1]);
    // HTTP/1.1 sees the same key.
    let mut client = server.client();
    let answer = publish_keyed(&mut client, "h2room", "hi", Some("over-h2"));
    assert_eq!(answer.text(), answers[0]);
    assert_eq!(server.room("h2room")["history_len"], 1);
}

// Cluster mode.

fn node(redis: &Redis, extra: &[&str]) -> Server {
    let url = redis.url();
    let mut args = vec!["--shards", "2", "--cluster-redis", url.as_str()];
    args.extend_from_slice(extra);
    Server::start(&args)
}

#[test]
fn the_same_idempotency_key_on_two_cluster_nodes_makes_one_message() {
    let redis = Redis::start();
    let (a, b) = (node(&redis, &[]), node(&redis, &[]));
    let mut on_b = b.subscribe("shared", None);
    let first = publish_keyed(&mut a.client(), "shared", "once", Some("k-1"));
    let id = id_of(&first);
    let again = publish_keyed(&mut b.client(), "shared", "once", Some("k-1"));
    assert_eq!(
        again.body, first.body,
        "the first answer, from the other node"
    );
    let again = publish_keyed(&mut a.client(), "shared", "once", Some("k-1"));
    assert_eq!(again.body, first.body);
    // A new key is a new message.
    let other = id_of(&publish_keyed(
        &mut b.client(),
        "shared",
        "twice",
        Some("k-2"),
    ));
    assert_ne!(other, id);
    assert_eq!(redis.command(&["XLEN", "ringcast:{shared}"]), ":2");
    let got: Vec<String> = (0..2).map(|_| on_b.next_event(PATIENCE).data).collect();
    assert_eq!(got, ["once", "twice"]);
    let metrics = a.metrics().sum("ringcast_idempotent_replays_total")
        + b.metrics().sum("ringcast_idempotent_replays_total");
    assert_eq!(metrics, 2);
    // The record expires with the window (PX), in Redis.
    let ttl = redis.command(&["PTTL", "ringcast:{shared}:idem:k-1"]);
    let ttl: i64 = ttl.trim_start_matches(':').parse().unwrap();
    assert!(ttl > 0 && ttl <= 120_000, "{ttl}");
}

#[test]
fn a_cluster_publish_timed_out_after_sending_says_outcome_unknown_and_a_keyed_retry_gets_its_id() {
    let redis = Redis::start();
    let server = node(&redis, &["--cluster-timeout", "1"]);
    let mut sse = server.subscribe("stall", None);
    // The room's publisher thread connects to Redis on its first publish: connect it first
    // (a publish whose connection is still being made when its time runs out is not sent).
    let mut client = server.client();
    id_of(&publish_keyed(&mut client, "stall", "warm-up", None));
    assert_eq!(sse.next_event(PATIENCE).data, "warm-up");
    // Redis stalls 2 s, longer than --cluster-timeout: the XADD is read and run after it.
    let stall = {
        let port = redis.port;
        std::thread::spawn(move || {
            let redis = Redis::command_on(port, &["DEBUG", "SLEEP", "2"]);
            assert_eq!(redis, "+OK");
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    // An impatient publisher also retries at once on another connection, while the first
    // is still queued in Redis: that must not make a second message either.
    let mut impatient = server.client();
    let retry_now = "POST /rooms/stall/messages HTTP/1.1\r\nHost: x\r\nIdempotency-Key: c-7\r\nContent-Length: 7\r\n\r\ncomment";
    impatient.send(retry_now.as_bytes()).unwrap();
    let answer = publish_keyed(&mut client, "stall", "comment", Some("c-7"));
    let impatient_answer = impatient.read_response().unwrap();
    // The one sent says its outcome is unknown; one that waited behind it past
    // --cluster-timeout was never sent and says so.
    let unknown = "outcome unknown: retry with the same Idempotency-Key";
    for answer in [&answer, &impatient_answer] {
        assert_eq!(answer.status, 503, "{answer:?}");
        assert!(answer.header("retry-after").is_some(), "{answer:?}");
        let text = answer.text();
        assert!(
            text.contains(unknown) || text.contains("not appended"),
            "{answer:?}"
        );
    }
    assert!(
        [&answer, &impatient_answer]
            .iter()
            .any(|a| a.text().contains(unknown)),
        "{answer:?} {impatient_answer:?}"
    );
    stall.join().unwrap();
    // The message was appended after all and reaches the subscriber.
    let event = sse.next_event(PATIENCE);
    assert_eq!(event.data, "comment");
    // The retry gets its id, and no second message.
    let mut retry = server.client();
    let mut answer = publish_keyed(&mut retry, "stall", "comment", Some("c-7"));
    // The publisher's connection to Redis is re-made after the timeout: the first retry may
    // meet a breaker or a reconnect; a client retries on 503.
    let deadline = Instant::now() + PATIENCE;
    while answer.status == 503 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        answer = publish_keyed(&mut retry, "stall", "comment", Some("c-7"));
    }
    let id = id_of(&answer);
    assert_eq!(Some(&id), event.id.map(|id| id.to_string().into()).as_ref());
    assert_eq!(redis.command(&["XLEN", "ringcast:{stall}"]), ":2");
    let more = sse.items_for(Duration::from_millis(500));
    assert!(
        !more
            .iter()
            .any(|item| matches!(item, common::Item::Event(_))),
        "the subscriber sees the message once: {more:?}"
    );
    assert!(server.metrics().sum("ringcast_idempotent_replays_total") >= 1);
}

#[test]
fn a_cluster_publish_never_sent_says_nothing_was_appended() {
    let redis = Redis::start();
    let server = node(&redis, &["--cluster-timeout", "1"]);
    drop(redis);
    let mut client = server.client();
    let answer = publish_keyed(&mut client, "gone", "x", Some("k"));
    assert_eq!(answer.status, 503, "{answer:?}");
    assert!(answer.text().contains("not appended"), "{answer:?}");
}
