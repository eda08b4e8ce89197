//! Room WebSockets (`GET /rooms/{room}/ws`, issue 16) against the real binary: joined at
//! once with `subscribed`, messages in exactly the agreed shape (the same bytes on every
//! shard), resume with `?last_event_id=`, publish with ack and idempotency, bad commands
//! answered with error objects, the SSE route's auth (private rooms, publish tokens) and
//! admission refusals before the upgrade, the 64 KiB message limit (1009), a slow reader
//! cut with `lagged` and 1013, and the drain's 1001.

mod common;
mod ws_client;

use common::{Id, Server};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use ws_client::{close_frame, frame, WsClient, BINARY, CLOSE, TEXT};

const WAIT: Duration = Duration::from_secs(5);

fn hs256(secret: &str, rooms: &[&str]) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    encode(
        &Header::new(Algorithm::HS256),
        &json!({"exp": exp, "rooms": rooms}),
        &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// Opens `/rooms/{room}/ws{query}` and reads its `subscribed`.
fn join(server: &Server, room: &str, query: &str) -> WsClient {
    let mut client = WsClient::open(server.addr, &format!("/rooms/{room}/ws{query}"));
    assert_eq!(
        client.next_json(WAIT),
        json!({"type": "subscribed", "room": room})
    );
    client
}

/// The next room message, checked for exactly the agreed shape; its id and data.
fn next_message(client: &mut WsClient, room: &str) -> (Id, String) {
    let frame = client.next_data(WAIT);
    assert_eq!(frame.opcode, TEXT, "{frame:?}");
    let value: serde_json::Value = serde_json::from_slice(&frame.payload).unwrap();
    let object = value.as_object().expect("an object");
    let keys: Vec<&str> = object.keys().map(String::as_str).collect();
    assert_eq!(
        frame.text(),
        format!(
            "{{\"room\":\"{}\",\"id\":\"{}\",\"data\":{}}}",
            room,
            object["id"].as_str().unwrap(),
            serde_json::to_string(&object["data"]).unwrap()
        ),
        "exactly room, id, data in that order ({keys:?})"
    );
    (
        Id::of(&object["id"]),
        object["data"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn viewers_join_at_once_and_get_every_message_in_the_agreed_shape_on_every_shard() {
    let server = Server::start(&["--shards", "2"]);
    let mut viewers: Vec<WsClient> = (0..6).map(|_| join(&server, "lobby", "")).collect();
    let first = server.publish("lobby", "hello");
    let second = server.publish("lobby", "quote \" and ✓");
    for viewer in &mut viewers {
        assert_eq!(next_message(viewer, "lobby"), (first, "hello".to_owned()));
        assert_eq!(
            next_message(viewer, "lobby"),
            (second, "quote \" and ✓".to_owned())
        );
    }
    let metrics = server.metrics();
    assert_eq!(metrics.sum("ringcast_websocket_connections"), 6);
    assert_eq!(metrics.sum("ringcast_subscribers"), 6);
    drop(viewers);
    assert!(common::wait_until(WAIT, || {
        let metrics = server.metrics();
        metrics.sum("ringcast_websocket_connections") == 0
            && metrics.sum("ringcast_subscribers") == 0
    }));
}

#[test]
fn a_viewer_resumes_after_its_last_id_and_is_told_when_an_id_cannot_be_placed() {
    let server = Server::start(&["--shards", "2"]);
    let ids: Vec<Id> = (1..=3)
        .map(|n| server.publish("resume", &format!("m{n}")))
        .collect();
    let mut viewer = join(&server, "resume", &format!("?last_event_id={}", ids[0]));
    assert_eq!(
        next_message(&mut viewer, "resume"),
        (ids[1], "m2".to_owned())
    );
    assert_eq!(
        next_message(&mut viewer, "resume"),
        (ids[2], "m3".to_owned())
    );
    // An id of another epoch: a reset object, then what the room holds.
    let mut stranger = join(&server, "resume", "?last_event_id=1-1");
    let reset = stranger.next_json(WAIT);
    assert_eq!(reset["type"], "reset", "{reset}");
    assert_eq!(reset["room"], "resume", "{reset}");
    assert_eq!(next_message(&mut stranger, "resume").0, ids[0]);
}

#[test]
fn publishes_over_the_socket_are_acked_with_their_id_and_deduplicated_by_key() {
    let server = Server::start(&["--shards", "2"]);
    let mut viewer = join(&server, "talk", "");
    let mut other_shard = join(&server, "talk", "");
    viewer.send_json(&json!({"type": "publish", "room": "talk", "data": "hi", "ref": 7}));
    // The ack and the message itself, in either order.
    let (mut ack, mut message) = (None, None);
    for _ in 0..2 {
        let value = viewer.next_json(WAIT);
        if value.get("type").is_some() {
            ack = Some(value);
        } else {
            message = Some(value);
        }
    }
    let ack = ack.expect("an ack");
    let message = message.expect("the message");
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["ref"], 7, "{ack}");
    assert_eq!(ack["room"], "talk", "{ack}");
    assert_eq!(ack["id"], message["id"], "{ack} {message}");
    let id = Id::of(&ack["id"]);
    assert_eq!(
        next_message(&mut other_shard, "talk"),
        (id, "hi".to_owned())
    );

    // The same idempotency key twice: one message, both acks carry its id.
    for reference in ["a", "b"] {
        viewer.send_json(&json!({"type": "publish", "room": "other", "data": "once",
            "ref": reference, "idempotency_key": "k-1"}));
        let ack = viewer.next_json(WAIT);
        assert_eq!(
            (ack["type"].as_str(), ack["ref"].as_str()),
            (Some("ack"), Some(reference))
        );
        assert_eq!(Id::of(&ack["id"]).seq, 1, "{ack}");
    }
    assert_eq!(
        server.room("other")["last_id"]
            .as_str()
            .map(Id::parse)
            .unwrap()
            .seq,
        1
    );
}

#[test]
fn bad_commands_get_error_objects_and_the_connection_stays_open() {
    let server = Server::start(&["--shards", "1", "--max-message-bytes", "100"]);
    let mut viewer = join(&server, "errs", "");
    let cases: [(&[u8], u8, serde_json::Value); 6] = [
        (b"not json", TEXT, json!({"type":"error","status":400,"reason":"not JSON"})),
        (b"{\"room\":\"x\"}", TEXT, json!({"type":"error","room":"x","status":400,"reason":"missing type"})),
        (b"{\"type\":\"dance\"}", TEXT, json!({"type":"error","status":400,"reason":"unknown type"})),
        (b"\x00\x01", BINARY, json!({"type":"error","status":400,"reason":"binary messages are not commands"})),
        (
            b"{\"type\":\"subscribe\",\"room\":\"b\"}",
            TEXT,
            json!({"type":"error","room":"b","status":400,"reason":"this connection follows its route's room only"}),
        ),
        (
            br#"{"type":"publish","room":"errs","ref":1,"data":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#,
            TEXT,
            json!({"type":"error","ref":1,"room":"errs","status":413,"reason":"data over 100 bytes"}),
        ),
    ];
    for (bytes, opcode, want) in cases {
        viewer.send(&frame(true, opcode, bytes, true));
        assert_eq!(
            viewer.next_json(WAIT),
            want,
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    viewer.send_json(&json!({"type": "publish", "room": "errs", "data": "fine"}));
    let ack = viewer.next_json(WAIT);
    assert_eq!(ack["type"], "ack", "{ack}");
    assert!(ack.get("ref").is_none(), "no ref, none echoed: {ack}");
}

#[test]
fn private_rooms_and_publish_tokens_are_checked_as_for_sse() {
    let server = Server::start(&[
        "--shards",
        "1",
        "--subscribe-key",
        "hs256:sub-secret",
        "--private-rooms",
        "private-*",
        "--publish-key",
        "hs256:pub-secret",
    ]);
    // Refused before the upgrade, as an HTTP answer.
    let (anonymous, status) = WsClient::try_open(server.addr, "/rooms/private-a/ws", "");
    assert_eq!(status, 401, "{}", anonymous.head);
    assert!(
        anonymous.header("www-authenticate").is_some(),
        "{}",
        anonymous.head
    );
    let other = hs256("sub-secret", &["private-b"]);
    let (client, status) = WsClient::try_open(
        server.addr,
        &format!("/rooms/private-a/ws?token={other}"),
        "",
    );
    assert_eq!(status, 403, "{}", client.head);
    assert_eq!(server.metrics().sum("ringcast_websocket_upgrades_total"), 0);
    // A token for the room, in the query (browsers cannot set headers on a WebSocket).
    let token = hs256("sub-secret", &["private-a"]);
    let mut member = WsClient::open(server.addr, &format!("/rooms/private-a/ws?token={token}"));
    assert_eq!(member.next_json(WAIT)["type"], "subscribed");
    // Publishing needs a publish token: this connection's is a subscribe token.
    member.send_json(&json!({"type": "publish", "room": "private-a", "data": "x", "ref": 1}));
    let refused = member.next_json(WAIT);
    assert_eq!(
        (refused["type"].as_str(), refused["status"].as_u64()),
        (Some("error"), Some(401)),
        "{refused}"
    );
    // A publisher with a publish token in the header.
    let publish = hs256("pub-secret", &["public"]);
    let mut publisher = WsClient::connect_raw(server.addr);
    publisher.send(&ws_client::upgrade_request(
        "/rooms/public/ws",
        &format!("Authorization: Bearer {publish}\r\n"),
        None,
    ));
    assert_eq!(publisher.read_head(WAIT), 101, "{}", publisher.head);
    assert_eq!(publisher.next_json(WAIT)["type"], "subscribed");
    publisher.send_json(&json!({"type": "publish", "room": "public", "data": "ok", "ref": 2}));
    publisher.send_json(&json!({"type": "publish", "room": "elsewhere", "data": "no", "ref": 3}));
    let mut answers = Vec::new();
    while answers.len() < 2 {
        let value = publisher.next_json(WAIT);
        if value.get("type").is_some() {
            answers.push(value);
        }
    }
    answers.sort_by_key(|a| a["ref"].as_u64());
    assert_eq!(answers[0]["type"], "ack", "{answers:?}");
    assert_eq!(
        (answers[1]["type"].as_str(), answers[1]["status"].as_u64()),
        (Some("error"), Some(403))
    );
}

#[test]
fn a_message_over_the_room_limit_is_closed_with_1009_not_buffered() {
    let server = Server::start(&["--shards", "1"]);
    let mut viewer = join(&server, "big", "");
    // 16 MiB announced on a room route (64 KiB limit): refused from the header.
    let mut bytes = vec![0x81, 0xff];
    bytes.extend_from_slice(&(16u64 << 20).to_be_bytes());
    bytes.extend_from_slice(&[1, 2, 3, 4]);
    bytes.extend_from_slice(&[b'x'; 4096]);
    viewer.send(&bytes);
    let close = viewer.next_data(WAIT);
    assert_eq!((close.opcode, close.close_code()), (CLOSE, Some(1009)));
    let _ = viewer.try_send(&close_frame(1009, ""));
    viewer.shutdown_write();
    assert!(viewer.closed_within(WAIT));
}

#[test]
fn a_viewer_that_stops_reading_is_cut_with_lagged_and_1013_while_others_get_everything() {
    let server = Server::start(&["--shards", "1", "--history", "16"]);
    let stuck_tcp = common::connect_with_recv_buffer(server.addr, 4096);
    let mut stuck = WsClient::over(ws_client::Stream::Plain(stuck_tcp));
    stuck.upgrade("/rooms/slow/ws");
    let mut reader = join(&server, "slow", "");
    let data = "y".repeat(32 * 1024);
    for _ in 0..200 {
        let id = server.publish("slow", &data);
        assert_eq!(next_message(&mut reader, "slow").0, id);
    }
    assert!(common::wait_until(WAIT, || {
        server.metrics().sum("ringcast_slow_consumer_cuts_total") == 1
    }));
    // The stuck viewer reads now: what was buffered for it, then the end — `lagged` and
    // close 1013 when its last write could still go, else just the end of the stream
    // (its write was stuck, as an SSE subscriber's) — never all the messages.
    let mut messages = 0;
    let mut lagged = false;
    loop {
        let frame = match stuck.try_frame(WAIT) {
            Ok(frame) => frame,
            Err(err) => {
                assert!(
                    matches!(
                        err.kind(),
                        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                    ),
                    "{err}"
                );
                break;
            }
        };
        if frame.opcode == CLOSE {
            assert_eq!(frame.close_code(), Some(1013));
            assert!(lagged, "lagged before the close");
            break;
        }
        let value: serde_json::Value = serde_json::from_slice(&frame.payload).unwrap();
        match value["type"].as_str() {
            Some("lagged") => lagged = true,
            Some(_) => {}
            None => messages += 1,
        }
    }
    assert!(messages < 200, "the stuck viewer was never cut");
    assert!(common::wait_until(WAIT, || {
        server.metrics().sum("ringcast_websocket_connections") == 1
    }));
}

#[test]
fn a_drain_closes_viewers_with_1001() {
    let mut server = Server::start(&["--shards", "1", "--drain-timeout", "2"]);
    let mut viewer = join(&server, "bye", "");
    let id = server.publish("bye", "last");
    server.signal(libc::SIGTERM);
    assert_eq!(next_message(&mut viewer, "bye").0, id);
    let close = viewer.next_data(WAIT);
    assert_eq!((close.opcode, close.close_code()), (CLOSE, Some(1001)));
    let _ = viewer.try_send(&close_frame(1001, ""));
    assert!(viewer.closed_within(WAIT));
    assert!(
        server.wait_exit(WAIT).is_some(),
        "the gateway exits once the viewer left"
    );
}
