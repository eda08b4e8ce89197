//! The multiplexed WebSocket route (`GET /ws`, issue 16, docs/PROTOCOL.md) against the real
//! binary, beyond `tests/gateway_ws_rooms.rs` (join, leave, query, refusals, limits): each
//! message in exactly `{"room","id","data"}` and only of followed rooms, a room left and
//! joined again live only and once, `since` per room with replay, gap and reset side by
//! side, a publish acked into a room the publisher does not follow reaching another
//! connection, a stuck multiplexed viewer cut with the server healthy after, and
//! descriptors, tickers and subscribers back at their baseline after many connections
//! holding several rooms each.

mod common;
mod ws_client;

use common::{Id, Server};
use serde_json::{json, Value};
use std::time::Duration;
use ws_client::{close_frame, WsClient};

/// How long anything the server should do at once may take.
const WAIT: Duration = Duration::from_secs(5);

fn subscribe(client: &mut WsClient, room: &str) {
    client.send_json(&json!({"type": "subscribe", "room": room}));
    assert_eq!(
        client.next_json(WAIT),
        json!({"type": "subscribed", "room": room})
    );
}

/// The next room message: exactly `{"room","id","data"}`; (room, id, data).
fn next_message(client: &mut WsClient) -> (String, Id, String) {
    let frame = client.next_data(WAIT);
    let value: Value = serde_json::from_slice(&frame.payload).expect("JSON");
    let object = value.as_object().expect("an object");
    let keys: Vec<&str> = object.keys().map(String::as_str).collect();
    assert_eq!(
        frame.text(),
        format!(
            "{{\"room\":{},\"id\":{},\"data\":{}}}",
            object["room"], object["id"], object["data"]
        ),
        "exactly room, id, data ({keys:?})"
    );
    (
        object["room"].as_str().unwrap().into(),
        Id::of(&object["id"]),
        object["data"].as_str().unwrap().into(),
    )
}

#[test]
fn each_message_says_its_room_and_a_room_left_and_joined_again_is_live_only() {
    // One shard: with two, a subscribe without `since` starts at the viewer shard's copy of
    // the room, which may not yet hold a message whose 201 the publisher already has (the
    // owner's mail is on its way), so "while away" can arrive after the new `subscribed`
    // (SSE's subscribe takes the same path). Noticed here, left to the fan-out's owners.
    let server = Server::start(&["--shards", "1"]);
    let mut client = WsClient::open(server.addr, "/ws");
    subscribe(&mut client, "mux-a");
    subscribe(&mut client, "mux-b");
    // Interleaved over three rooms, one not followed: the two followed, in publish order.
    let a1 = server.publish("mux-a", "a1");
    server.publish("mux-c", "not followed");
    let b1 = server.publish("mux-b", "b1");
    let a2 = server.publish("mux-a", "a2");
    assert_eq!(next_message(&mut client), ("mux-a".into(), a1, "a1".into()));
    assert_eq!(next_message(&mut client), ("mux-b".into(), b1, "b1".into()));
    assert_eq!(next_message(&mut client), ("mux-a".into(), a2, "a2".into()));

    // Left, published to while away, joined again without `since`: live from then on,
    // once per message (the subscription's place reused, not doubled).
    for round in 0..3 {
        client.send_json(&json!({"type": "unsubscribe", "room": "mux-a"}));
        assert_eq!(
            client.next_json(WAIT),
            json!({"type": "unsubscribed", "room": "mux-a"})
        );
        server.publish("mux-a", &format!("while away {round}"));
        subscribe(&mut client, "mux-a");
        let live = server.publish("mux-a", &format!("live {round}"));
        let marker = server.publish("mux-b", &format!("marker {round}"));
        assert_eq!(
            next_message(&mut client),
            ("mux-a".into(), live, format!("live {round}"))
        );
        assert_eq!(
            next_message(&mut client),
            ("mux-b".into(), marker, format!("marker {round}"))
        );
    }
    assert_eq!(server.metrics().sum("ringcast_subscribers"), 2);
    client.send(&close_frame(1000, ""));
    assert_eq!(client.next_data(WAIT).close_code(), Some(1000));
    assert!(common::wait_until(WAIT, || {
        server.metrics().sum("ringcast_subscribers") == 0
    }));
}

#[test]
fn since_resumes_each_room_on_its_own_with_gap_and_reset() {
    let server = Server::start(&["--shards", "2", "--history", "4"]);
    let kept: Vec<Id> = (0..3)
        .map(|n| server.publish("since-a", &format!("a{n}")))
        .collect();
    let lost: Vec<Id> = (0..7)
        .map(|n| server.publish("since-b", &format!("b{n}")))
        .collect();
    let mut client = WsClient::open(server.addr, "/ws");
    // Room a: after its first message, the two others.
    client
        .send_json(&json!({"type": "subscribe", "room": "since-a", "since": kept[0].to_string()}));
    assert_eq!(
        client.next_json(WAIT),
        json!({"type": "subscribed", "room": "since-a"})
    );
    assert_eq!(
        next_message(&mut client),
        ("since-a".into(), kept[1], "a1".into())
    );
    assert_eq!(
        next_message(&mut client),
        ("since-a".into(), kept[2], "a2".into())
    );
    // Room b: after its first of seven, four held: a gap for b1 and b2, then b3..b6.
    client
        .send_json(&json!({"type": "subscribe", "room": "since-b", "since": lost[0].to_string()}));
    assert_eq!(
        client.next_json(WAIT),
        json!({"type": "subscribed", "room": "since-b"})
    );
    assert_eq!(
        client.next_json(WAIT),
        json!({"type": "gap", "room": "since-b", "from": lost[1].to_string(), "to": lost[2].to_string()})
    );
    for (n, id) in lost.iter().enumerate().skip(3) {
        assert_eq!(
            next_message(&mut client),
            ("since-b".into(), *id, format!("b{n}"))
        );
    }
    // Room c: an id that cannot be placed, a reset, then what is held.
    let c0 = server.publish("since-c", "c0");
    client.send_json(&json!({"type": "subscribe", "room": "since-c", "since": "1-1"}));
    assert_eq!(
        client.next_json(WAIT),
        json!({"type": "subscribed", "room": "since-c"})
    );
    let reset = client.next_json(WAIT);
    assert_eq!(
        (reset["type"].as_str(), reset["room"].as_str()),
        (Some("reset"), Some("since-c")),
        "{reset}"
    );
    assert_eq!(
        next_message(&mut client),
        ("since-c".into(), c0, "c0".into())
    );
    // Live again on all three.
    let live: Vec<Id> = ["since-a", "since-b", "since-c"]
        .iter()
        .map(|room| server.publish(room, "live"))
        .collect();
    for id in live {
        assert_eq!(next_message(&mut client).1, id);
    }
}

#[test]
fn publishes_are_acked_into_any_room_and_reach_its_followers() {
    let server = Server::start(&["--shards", "2"]);
    let mut publisher = WsClient::open(server.addr, "/ws");
    let mut follower = WsClient::open(server.addr, "/ws?rooms=pub-x");
    assert_eq!(follower.next_json(WAIT)["type"], "subscribed");
    publisher
        .send_json(&json!({"type": "publish", "room": "pub-x", "data": "from mux", "ref": "r1"}));
    let ack = publisher.next_json(WAIT);
    assert_eq!(
        (
            ack["type"].as_str(),
            ack["ref"].as_str(),
            ack["room"].as_str()
        ),
        (Some("ack"), Some("r1"), Some("pub-x")),
        "{ack}"
    );
    assert_eq!(
        next_message(&mut follower),
        ("pub-x".into(), Id::of(&ack["id"]), "from mux".into())
    );
}

#[test]
fn a_stuck_multiplexed_viewer_is_cut_and_the_server_stays_healthy() {
    let server = Server::start(&["--shards", "1", "--history", "16"]);
    let metrics = server.metrics();
    let (fds, tickers) = (
        metrics.sum("ringcast_fds_used"),
        metrics.sum("ringcast_tickers_live"),
    );
    // Follows a busy room and a quiet one, and never reads (a small receive window).
    let mut stuck = WsClient::over(ws_client::Stream::Plain(common::connect_with_recv_buffer(
        server.addr,
        4096,
    )));
    stuck.send(&ws_client::upgrade_request(
        "/ws?rooms=stuck-busy,stuck-quiet",
        "",
        None,
    ));
    let mut reader = WsClient::open(server.addr, "/ws?rooms=stuck-busy");
    assert_eq!(reader.next_json(WAIT)["type"], "subscribed");
    assert!(common::wait_until(WAIT, || {
        server.metrics().sum("ringcast_subscribers") == 3
    }));
    let data = "m".repeat(32 * 1024);
    for _ in 0..200 {
        let id = server.publish("stuck-busy", &data);
        assert_eq!(next_message(&mut reader).1, id);
    }
    assert!(
        common::wait_until(WAIT, || server
            .metrics()
            .sum("ringcast_slow_consumer_cuts_total")
            >= 1),
        "the stuck viewer cut:\n{}",
        server.metrics().0
    );
    // It reads now: what was written before the cut, maybe `lagged` for the busy room
    // and a close 1013, then the end; never all 200 messages.
    assert_eq!(stuck.read_head(WAIT), 101, "{}", stuck.head);
    let mut messages = 0;
    loop {
        match stuck.try_frame(WAIT) {
            Ok(frame) if frame.opcode == ws_client::CLOSE => {
                assert_eq!(frame.close_code(), Some(1013));
                let _ = stuck.try_send(&close_frame(1013, ""));
                assert!(stuck.closed_within(WAIT));
                break;
            }
            Ok(frame) => {
                let value: Value = serde_json::from_slice(&frame.payload).unwrap();
                match value["type"].as_str() {
                    None => messages += 1,
                    Some("lagged") => assert_eq!(value["room"], "stuck-busy", "{value}"),
                    Some(_) => {}
                }
            }
            Err(_) => break,
        }
    }
    assert!(messages < 200, "the stuck viewer was never cut");

    // Healthy: both rooms served to others, nothing of the stuck viewer left.
    let mut fresh = WsClient::open(server.addr, "/ws?rooms=stuck-quiet");
    assert_eq!(fresh.next_json(WAIT)["type"], "subscribed");
    let id = server.publish("stuck-quiet", "after the cut");
    assert_eq!(
        next_message(&mut fresh),
        ("stuck-quiet".into(), id, "after the cut".into())
    );
    let id = server.publish("stuck-busy", "still busy");
    assert_eq!(next_message(&mut reader).1, id);
    drop((fresh, reader, stuck));
    assert!(
        common::wait_until(WAIT, || {
            let metrics = server.metrics();
            metrics.sum("ringcast_websocket_connections") == 0
                && metrics.sum("ringcast_subscribers") == 0
                && metrics.sum("ringcast_fds_used") == fds
                && metrics.sum("ringcast_tickers_live") == tickers
        }),
        "not back to baseline (fds {fds}, tickers {tickers}):\n{}",
        server.metrics().0
    );
}

#[test]
fn descriptors_tickers_and_subscribers_come_back_after_many_multiplexed_connections() {
    const CYCLES: usize = 600;
    let server = Server::start(&["--shards", "2"]);
    let metrics = server.metrics();
    let (fds, tickers) = (
        metrics.sum("ringcast_fds_used"),
        metrics.sum("ringcast_tickers_live"),
    );
    for cycle in 0..CYCLES {
        match cycle % 4 {
            // Three rooms in the query, a clean close.
            0 => {
                let mut client = WsClient::open(server.addr, "/ws?rooms=ch-a,ch-b,ch-c");
                for _ in 0..3 {
                    assert_eq!(client.next_json(WAIT)["type"], "subscribed");
                }
                client.send(&close_frame(1000, ""));
                assert_eq!(client.next_data(WAIT).close_code(), Some(1000));
            }
            // Two by message, one left, dropped.
            1 => {
                let mut client = WsClient::open(server.addr, "/ws");
                subscribe(&mut client, "ch-a");
                subscribe(&mut client, "ch-d");
                client.send_json(&json!({"type": "unsubscribe", "room": "ch-a"}));
                assert_eq!(client.next_json(WAIT)["type"], "unsubscribed");
            }
            // Subscribes sent, dropped before any answer.
            2 => {
                let mut client = WsClient::open(server.addr, "/ws");
                for room in ["ch-a", "ch-e", "ch-f"] {
                    client.send_json(&json!({"type": "subscribe", "room": room}));
                }
            }
            // Rooms in the query, dropped before reading the 101.
            _ => {
                let mut client = WsClient::connect_raw(server.addr);
                client.send(&ws_client::upgrade_request("/ws?rooms=ch-a,ch-b", "", None));
            }
        }
    }
    assert!(
        common::wait_until(WAIT, || {
            let metrics = server.metrics();
            metrics.sum("ringcast_websocket_connections") == 0
                && metrics.sum("ringcast_subscribers") == 0
                && metrics.sum("ringcast_fds_used") == fds
                && metrics.sum("ringcast_tickers_live") == tickers
        }),
        "not back to baseline (fds {fds}, tickers {tickers}):\n{}",
        server.metrics().0
    );
    assert!(!server.log().contains("panicked"), "{}", server.log());
}
