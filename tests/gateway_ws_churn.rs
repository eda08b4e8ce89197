//! Subscribe churn on one multiplexed WebSocket (`GET /ws`, docs/PROTOCOL.md, Limits)
//! against the real binary: a client subscribing and unsubscribing in a tight loop gets
//! 429 with `retry_after_ms` past the connection's burst, keeps its connection and its
//! other room's messages, and is taken again once it waited as told.

mod common;
mod ws_client;

use common::Server;
use serde_json::{json, Value};
use std::time::Duration;
use ws_client::{frame, WsClient, TEXT};

/// How long anything the server should do at once may take.
const WAIT: Duration = Duration::from_secs(5);
/// The connection's burst (`WS_SUBSCRIBE_BURST`: twice `WS_ROOMS_PER_CONN_MAX`).
const BURST: usize = 128;
/// The sustained pace (`WS_SUBSCRIBES_PER_SEC`).
const PER_SEC: u64 = 10;

/// A refusal for the pace, exactly; its wait.
fn rate_refusal(value: &Value, room: &str) -> Option<Duration> {
    let wait = value.get("retry_after_ms")?.as_u64()?;
    let reason = format!("more than {PER_SEC} subscribes per second on this connection");
    assert_eq!(
        *value,
        json!({"type": "error", "room": room, "status": 429, "reason": reason, "retry_after_ms": wait})
    );
    assert!((1..=1000 / PER_SEC).contains(&wait), "{value}");
    Some(Duration::from_millis(wait))
}

/// The next room message of `keep` among `seen` or read now (control objects skipped).
fn keep_message(client: &mut WsClient, seen: &mut Vec<Value>) -> String {
    loop {
        if let Some(at) = seen.iter().position(|v| v.get("type").is_none()) {
            let message = seen.remove(at);
            assert_eq!(message["room"], "keep", "{message}");
            return message["data"].as_str().unwrap().to_owned();
        }
        seen.push(client.next_json(WAIT));
    }
}

#[test]
fn a_client_churning_subscribes_gets_429_past_its_burst_keeps_its_room_and_is_taken_after_waiting()
{
    let server = Server::start(&["--shards", "1"]);
    // `?rooms=` takes from the same pace (one subscribe here).
    let mut client = WsClient::open(server.addr, "/ws?rooms=keep");
    assert_eq!(
        client.next_json(WAIT),
        json!({"type": "subscribed", "room": "keep"})
    );
    server.publish("keep", "before");
    let mut others = Vec::new();
    assert_eq!(keep_message(&mut client, &mut others), "before");

    // Subscribe and unsubscribe "c", 200 times, in one write.
    let pairs = 200;
    let churn: Vec<u8> = (0..pairs)
        .flat_map(|_| {
            [
                json!({"type": "subscribe", "room": "c"}),
                json!({"type": "unsubscribe", "room": "c"}),
            ]
        })
        .flat_map(|command| frame(true, TEXT, command.to_string().as_bytes(), true))
        .collect();
    client.send(&churn);
    // Each unsubscribe is answered: `unsubscribed` after a subscribe taken, 404 after one
    // refused (its 429 comes first).
    let (mut left, mut not_held, mut refused) = (0, 0, 0);
    while left + not_held < pairs {
        let value = client.next_json(WAIT);
        match value["type"].as_str() {
            Some("unsubscribed") => left += 1,
            Some("error") if value["status"] == 404 => not_held += 1,
            Some("error") => {
                assert!(rate_refusal(&value, "c").is_some(), "{value}");
                refused += 1;
            }
            Some("subscribed") => assert_eq!(value["room"], "c"),
            _ => others.push(value),
        }
    }
    assert_eq!(refused, not_held);
    assert!(refused > 0, "429 past the burst ({left} taken)");
    // The whole burst was taken, and after it no more than the pace earned meanwhile.
    assert!(left >= BURST - 1, "{left} taken before a 429");
    assert!(left < pairs, "{left}");
    let refusals = server
        .metrics()
        .by_reason("ringcast_refusals_total", "ws_subscribe_rate");
    assert_eq!(refusals, refused as u64);

    // Still open, its other room untouched.
    server.publish("keep", "during");
    assert_eq!(keep_message(&mut client, &mut others), "during");

    // Empty again (one is earned per tick: take them until refused), then taken once it
    // waited as told.
    let mut wait = None;
    for _ in 0..100 {
        client.send_json(&json!({"type": "subscribe", "room": "c"}));
        let value = client.next_json(WAIT);
        if let Some(told) = rate_refusal(&value, "c") {
            wait = Some(told);
            break;
        }
        assert_eq!(value, json!({"type": "subscribed", "room": "c"}));
        client.send_json(&json!({"type": "unsubscribe", "room": "c"}));
        assert_eq!(
            client.next_json(WAIT),
            json!({"type": "unsubscribed", "room": "c"})
        );
    }
    let wait = wait.expect("refused again within 100 subscribes");
    std::thread::sleep(wait);
    client.send_json(&json!({"type": "subscribe", "room": "c"}));
    assert_eq!(
        client.next_json(WAIT),
        json!({"type": "subscribed", "room": "c"})
    );
    server.publish("keep", "after");
    assert_eq!(keep_message(&mut client, &mut others), "after");
    assert!(others.is_empty(), "{others:?}");
}
