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
    // Refusals are counted as the HTTP routes' are: 400 bad_request, 413 body_too_large.
    let metrics = server.metrics();
    assert_eq!(
        metrics.by_reason("ringcast_refusals_total", "body_too_large"),
        1
    );
    assert_eq!(
        metrics.by_reason("ringcast_refusals_total", "bad_request"),
        5
    );
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
fn a_drain_delivers_what_was_accepted_then_closes_viewers_with_1001() {
    let mut server = Server::start(&["--shards", "2", "--drain-timeout", "3", "--ws-echo"]);
    let mut viewers: Vec<WsClient> = (0..4).map(|_| join(&server, "bye", "")).collect();
    let mut roomless = WsClient::open(server.addr, "/ws");
    let mut echo = WsClient::open(server.addr, "/ws/echo");
    let mut publisher = server.client();
    let ids: Vec<Id> = (0..50)
        .map(|n| publisher.publish("bye", &format!("m{n}")))
        .collect();
    server.signal(libc::SIGTERM);
    for viewer in &mut viewers {
        for (n, id) in ids.iter().enumerate() {
            assert_eq!(next_message(viewer, "bye"), (*id, format!("m{n}")));
        }
        let close = viewer.next_data(WAIT);
        assert_eq!(
            (close.opcode, close.close_code(), &close.payload[2..]),
            (CLOSE, Some(1001), &b"server draining"[..])
        );
        // Closed once the fan-out's close frame is out, not at the drain timeout (3 s).
        assert!(viewer.closed_within(Duration::from_secs(1)));
    }
    // Connections without rooms get the close handshake at once, with the same reason.
    for other in [&mut roomless, &mut echo] {
        let close = other.next_data(WAIT);
        assert_eq!(
            (close.opcode, close.close_code(), &close.payload[2..]),
            (CLOSE, Some(1001), &b"server draining"[..])
        );
        other.send(&close_frame(1001, ""));
        assert!(other.closed_within(WAIT));
    }
    assert!(
        server.wait_exit(WAIT).is_some(),
        "the gateway exits once the viewers left"
    );
}

/// The next `n` control objects (anything with a `type`), skipping room messages.
fn next_controls(client: &mut WsClient, n: usize) -> Vec<serde_json::Value> {
    let mut controls = Vec::new();
    while controls.len() < n {
        let value = client.next_json(WAIT);
        if value.get("type").is_some() {
            controls.push(value);
        }
    }
    controls
}

#[test]
fn a_multiplexed_connection_joins_and_leaves_rooms_by_message_and_by_query() {
    let server = Server::start(&["--shards", "2"]);
    let earlier: Vec<Id> = (1..=3)
        .map(|n| server.publish("c", &format!("c{n}")))
        .collect();
    let mut client = WsClient::open(server.addr, "/ws?rooms=a,b");
    let mut joined: Vec<String> = next_controls(&mut client, 2)
        .iter()
        .map(|v| {
            assert_eq!(v["type"], "subscribed", "{v}");
            v["room"].as_str().unwrap().to_owned()
        })
        .collect();
    joined.sort();
    assert_eq!(joined, ["a", "b"]);
    // By message, resuming after the first message of c.
    client.send_json(&json!({"type": "subscribe", "room": "c", "since": earlier[0].to_string()}));
    assert_eq!(
        client.next_json(WAIT),
        json!({"type": "subscribed", "room": "c"})
    );
    assert_eq!(
        next_message(&mut client, "c"),
        (earlier[1], "c2".to_owned())
    );
    assert_eq!(
        next_message(&mut client, "c"),
        (earlier[2], "c3".to_owned())
    );
    assert_eq!(server.metrics().sum("ringcast_subscribers"), 3);
    let a = server.publish("a", "to a");
    assert_eq!(next_message(&mut client, "a"), (a, "to a".to_owned()));
    let b = server.publish("b", "to b");
    assert_eq!(next_message(&mut client, "b"), (b, "to b".to_owned()));

    // Refusals are error objects; the connection goes on.
    client.send_json(&json!({"type": "subscribe", "room": "a"}));
    assert_eq!(
        client.next_json(WAIT),
        json!({"type":"error","room":"a","status":409,"reason":"already subscribed"})
    );
    client.send_json(&json!({"type": "unsubscribe", "room": "zz"}));
    assert_eq!(
        client.next_json(WAIT),
        json!({"type":"error","room":"zz","status":404,"reason":"not subscribed"})
    );

    // Leaving a: nothing more of it, b still flows.
    client.send_json(&json!({"type": "unsubscribe", "room": "a"}));
    assert_eq!(
        client.next_json(WAIT),
        json!({"type": "unsubscribed", "room": "a"})
    );
    server.publish("a", "not for you");
    let b2 = server.publish("b", "b again");
    assert_eq!(next_message(&mut client, "b"), (b2, "b again".to_owned()));
    assert_eq!(server.metrics().sum("ringcast_subscribers"), 2);

    // A publish over the multiplexed connection is acked too.
    client.send_json(&json!({"type": "publish", "room": "b", "data": "mine", "ref": "r1"}));
    let ack = next_controls(&mut client, 1).remove(0);
    assert_eq!(
        (ack["type"].as_str(), ack["ref"].as_str()),
        (Some("ack"), Some("r1")),
        "{ack}"
    );
    drop(client);
    assert!(common::wait_until(WAIT, || {
        server.metrics().sum("ringcast_subscribers") == 0
    }));
}

#[test]
fn a_multiplexed_connection_is_bounded_in_rooms_and_checked_per_room() {
    let server = Server::start(&[
        "--shards",
        "1",
        "--subscribe-key",
        "hs256:sub-secret",
        "--private-rooms",
        "private-*",
    ]);
    // Before the upgrade: a bad name, a private room without a token.
    let (client, status) = WsClient::try_open(server.addr, "/ws?rooms=a%20b", "");
    assert_eq!(status, 400, "{}", client.head);
    let (client, status) = WsClient::try_open(server.addr, "/ws?rooms=a,private-x", "");
    assert_eq!(status, 401, "{}", client.head);
    // After it: by message, as error objects.
    let token = hs256("sub-secret", &["private-x"]);
    let mut client = WsClient::open(server.addr, &format!("/ws?token={token}"));
    client.send_json(&json!({"type": "subscribe", "room": "private-y"}));
    let denied = client.next_json(WAIT);
    assert_eq!(
        (denied["status"].as_u64(), denied["room"].as_str()),
        (Some(403), Some("private-y")),
        "{denied}"
    );
    client.send_json(&json!({"type": "subscribe", "room": "private-x"}));
    assert_eq!(
        client.next_json(WAIT),
        json!({"type": "subscribed", "room": "private-x"})
    );
    for n in 1..64 {
        client.send_json(&json!({"type": "subscribe", "room": format!("r{n}")}));
    }
    let _ = next_controls(&mut client, 63);
    client.send_json(&json!({"type": "subscribe", "room": "one-too-many"}));
    assert_eq!(
        client.next_json(WAIT),
        json!({"type":"error","room":"one-too-many","status":429,"reason":"at most 64 rooms per connection"})
    );
    let metrics = server.metrics();
    assert_eq!(metrics.sum("ringcast_subscribers"), 64);
    assert_eq!(
        metrics.by_reason("ringcast_refusals_total", "ws_rooms_per_connection"),
        1
    );
    drop(client);
    assert!(common::wait_until(WAIT, || {
        let metrics = server.metrics();
        metrics.sum("ringcast_subscribers") == 0
            && metrics.sum("ringcast_websocket_connections") == 0
    }));
}

#[test]
fn a_client_sending_commands_without_reading_the_answers_stalls_itself() {
    let server = Server::start(&["--shards", "1"]);
    let tcp = common::connect_with_recv_buffer(server.addr, 4096);
    let mut flooder = WsClient::over(ws_client::Stream::Plain(tcp));
    flooder.upgrade("/ws");
    if let ws_client::Stream::Plain(tcp) = &flooder.stream {
        tcp.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
    }
    // Each one is answered with an error object nobody reads.
    let bad = frame(true, TEXT, &[b'?'; 100], true);
    let burst: Vec<u8> = bad.iter().copied().cycle().take(bad.len() * 512).collect();
    let mut sent = 0usize;
    let blocked = loop {
        if flooder.try_send(&burst).is_err() {
            break true;
        }
        sent += burst.len();
        if sent > 256 << 20 {
            break false;
        }
    };
    assert!(
        blocked,
        "the server read {sent} bytes of commands without its answers going"
    );
    // The shard serves others meanwhile.
    let mut other = join(&server, "fine", "");
    let id = server.publish("fine", "still");
    assert_eq!(next_message(&mut other, "fine"), (id, "still".to_owned()));
}

/// An authorization upstream for `--auth-url`: admits rooms whose name starts with `ok`,
/// refuses the others with 403, and remembers the `X-User` header each call forwarded.
fn auth_upstream() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let log = log.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..at]).to_ascii_lowercase();
                        let length: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if buf.len() >= at + 4 + length {
                            let body: serde_json::Value =
                                serde_json::from_slice(&buf[at + 4..at + 4 + length]).unwrap();
                            let room = body["room"].as_str().unwrap_or_default().to_owned();
                            log.lock()
                                .unwrap()
                                .push(format!("{room} {}", body["headers"]));
                            let status = if room.starts_with("ok") { 204 } else { 403 };
                            let _ = stream.write_all(
                                format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                                    .as_bytes(),
                            );
                            return;
                        }
                    }
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[test]
fn the_auth_callback_decides_room_and_multiplexed_subscribes() {
    let (upstream, seen) = auth_upstream();
    let url = format!("http://{upstream}/authorize");
    let server = Server::start(&["--shards", "1", "--auth-url", &url]);
    // The room route: decided before the upgrade.
    let (refused, status) = WsClient::try_open(server.addr, "/rooms/no-a/ws", "X-User: u1\r\n");
    assert_eq!(status, 403, "{}", refused.head);
    let (mut room, status) = WsClient::try_open(server.addr, "/rooms/ok-a/ws", "X-User: u1\r\n");
    assert_eq!(status, 101, "{}", room.head);
    assert_eq!(
        room.next_json(WAIT),
        json!({"type": "subscribed", "room": "ok-a"})
    );
    // Multiplexed: each room asked for is decided, with the upgrade's headers forwarded.
    let (mut mux, status) =
        WsClient::try_open(server.addr, "/ws?rooms=ok-b,no-c", "X-User: u2\r\n");
    assert_eq!(status, 101, "{}", mux.head);
    mux.send_json(&json!({"type": "subscribe", "room": "ok-d"}));
    mux.send_json(&json!({"type": "subscribe", "room": "no-e"}));
    let mut answers: Vec<String> = next_controls(&mut mux, 4)
        .iter()
        .map(|v| {
            format!(
                "{} {} {}",
                v["room"].as_str().unwrap(),
                v["type"],
                v["status"]
            )
        })
        .collect();
    answers.sort();
    assert_eq!(
        answers,
        [
            "no-c \"error\" 403",
            "no-e \"error\" 403",
            "ok-b \"subscribed\" null",
            "ok-d \"subscribed\" null"
        ]
    );
    let id = server.publish("ok-d", "allowed");
    assert_eq!(next_message(&mut mux, "ok-d"), (id, "allowed".to_owned()));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 6, "{seen:?}");
    assert!(
        seen.iter().filter(|call| call.contains("u2")).count() == 4,
        "the upgrade's headers go with every subscribe: {seen:?}"
    );
}

#[test]
fn in_cluster_mode_a_room_websocket_on_one_node_gets_what_a_websocket_on_another_publishes() {
    let redis = common::redis::Redis::start();
    let url = redis.url();
    let node = |_: usize| Server::start(&["--shards", "2", "--cluster-redis", url.as_str()]);
    let (viewer_node, publisher_node) = (node(0), node(1));
    let mut viewer = join(&viewer_node, "cl", "");
    let mut publisher = join(&publisher_node, "cl", "");
    publisher.send_json(
        &json!({"type": "publish", "room": "cl", "data": "across", "ref": 1,
        "idempotency_key": "k"}),
    );
    let ack = next_controls(&mut publisher, 1).remove(0);
    assert_eq!(
        (ack["type"].as_str(), ack["ref"].as_u64()),
        (Some("ack"), Some(1)),
        "{ack}"
    );
    let (id, data) = next_message(&mut viewer, "cl");
    assert_eq!((id, data.as_str()), (Id::of(&ack["id"]), "across"));
    // A retry with the same key: the first publish's id, nothing new.
    publisher.send_json(
        &json!({"type": "publish", "room": "cl", "data": "across", "ref": 2,
        "idempotency_key": "k"}),
    );
    let again = next_controls(&mut publisher, 1).remove(0);
    assert_eq!(again["id"], ack["id"], "{again}");
    // Resume on the viewer's node from before the message.
    let mut late = join(&viewer_node, "cl", "?last_event_id=0-0");
    let first = late.next_data(WAIT);
    let value: serde_json::Value = serde_json::from_slice(&first.payload).unwrap();
    assert!(
        value["type"] == "reset" || value["id"] == ack["id"],
        "{value}"
    );
}

#[test]
fn a_thousand_publishes_in_one_write_are_all_acked_in_order() {
    // Owner shard local (one shard): each is answered at once, inside the feed loop.
    let server = Server::start(&["--shards", "1"]);
    let mut client = WsClient::open(server.addr, "/ws");
    let burst: Vec<u8> = (0..1000)
        .flat_map(|n| {
            let command = json!({"type": "publish", "room": "burst", "data": "x", "ref": n});
            frame(true, TEXT, command.to_string().as_bytes(), true)
        })
        .collect();
    client.send(&burst);
    for n in 0..1000u64 {
        let ack = client.next_json(WAIT);
        assert_eq!(
            (ack["type"].as_str(), ack["ref"].as_u64()),
            (Some("ack"), Some(n)),
            "{ack}"
        );
        assert_eq!(Id::of(&ack["id"]).seq, n + 1);
    }
}

#[test]
fn in_cluster_mode_a_multiplexed_connection_joins_rooms_other_nodes_publish_to() {
    let redis = common::redis::Redis::start();
    let url = redis.url();
    let node = || Server::start(&["--shards", "2", "--cluster-redis", url.as_str()]);
    let (viewer_node, publisher_node) = (node(), node());
    let early = publisher_node.publish("cm-b", "before");
    let mut client = WsClient::open(viewer_node.addr, "/ws?rooms=cm-a");
    assert_eq!(
        client.next_json(WAIT),
        json!({"type": "subscribed", "room": "cm-a"})
    );
    // Joined by message, from before the first message (a stream id a millisecond older:
    // replayed from Redis, as for SSE).
    let before = Id {
        epoch: early.epoch - 1,
        seq: 0,
    };
    client.send_json(&json!({"type": "subscribe", "room": "cm-b", "since": before.to_string()}));
    assert_eq!(
        client.next_json(WAIT),
        json!({"type": "subscribed", "room": "cm-b"})
    );
    let first = next_message(&mut client, "cm-b");
    assert_eq!(first, (early, "before".to_owned()));
    let a = publisher_node.publish("cm-a", "to a");
    assert_eq!(next_message(&mut client, "cm-a"), (a, "to a".to_owned()));
    let b = publisher_node.publish("cm-b", "to b");
    assert_eq!(next_message(&mut client, "cm-b"), (b, "to b".to_owned()));
    client.send_json(&json!({"type": "subscribe", "room": "cm-a"}));
    assert_eq!(client.next_json(WAIT)["status"], 409);
}
