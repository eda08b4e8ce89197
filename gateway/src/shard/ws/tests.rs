//! A shard on a real ring, turned by hand (the loop's steps, without its wait): WebSockets
//! that took fan-out frames — some of them behind a write in flight — hold no staging
//! vector once they are idle again, and share the fan-out's copy of their rooms' names
//! (issue 16's idle-memory bar).

use super::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;

/// A one-shard gateway's shard (no listener armed: the test hands it connections) and the
/// listener its clients connect to.
fn shard() -> (Shard, TcpListener) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let flags = crate::config::Flags {
        shards: Some(1),
        listen: Some(listener.local_addr().unwrap()),
        ..Default::default()
    };
    let config = crate::config::Config::merge(flags, Default::default()).unwrap();
    let shared = Shared::for_one_shard(config);
    let shard = Shard::new(0, shared, listener.as_raw_fd(), None).unwrap();
    (shard, listener)
}

/// One loop turn as `Shard::run` takes it, waiting at most a few milliseconds.
fn turn(shard: &mut Shard) {
    let now = Instant::now();
    shard.begin_turn(now);
    shard
        .ring
        .submit_and_wait(Duration::from_millis(2))
        .unwrap();
    let mut completions = Vec::new();
    shard.ring.reap(&mut completions);
    for completion in completions {
        shard.on_completion(now, completion).unwrap();
    }
    shard.drain_mail(now);
    shard.expire_timers(now);
    shard.fanout.handle_timeout(now);
    shard.write_out(now).unwrap();
    shard.forward_presence();
    shard.flush_outbox().unwrap();
}

/// A client connected to the shard (accepted here, handed to it as its accept would).
fn connect(shard: &mut Shard, listener: &TcpListener, request: &str) -> TcpStream {
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    shard
        .on_accept(Instant::now(), OwnedFd::from(server), false)
        .unwrap();
    client.set_nonblocking(true).unwrap();
    (&client).write_all(request.as_bytes()).unwrap();
    client
}

fn upgrade(target: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

fn publish(room: &str, data: &str) -> String {
    format!(
        "POST /rooms/{room}/messages HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{data}",
        data.len()
    )
}

/// Everything the client can read now, appended to `got`.
fn read_into(client: &TcpStream, got: &mut Vec<u8>) {
    let mut buf = [0; 4096];
    loop {
        match (&*client).read(&mut buf) {
            Ok(0) => return,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(err) => panic!("read: {err}"),
        }
    }
}

fn count(haystack: &[u8], needle: &str) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle.as_bytes())
        .count()
}

/// The WebSocket in the shard's slot `slot` (the test's connections take slots in order).
fn driver(shard: &Shard, slot: usize) -> (&Conn, &WsDriver) {
    let conn = shard.conns[slot].as_deref().expect("open");
    (conn, conn.ws().expect("a WebSocket"))
}

#[test]
fn an_idle_websocket_holds_no_staging_vectors_after_fan_out_messages() {
    let (mut shard, listener) = shard();
    // Slot 0: a room WebSocket; slot 1: a multiplexed one following two rooms, whose
    // `subscribed` frames come in one turn (the second waits behind the first's write).
    let room = connect(&mut shard, &listener, &upgrade("/rooms/r/ws"));
    let mux = connect(&mut shard, &listener, &upgrade("/ws?rooms=a,b"));
    let (mut room_got, mut mux_got) = (Vec::new(), Vec::new());
    let mut waited = false;
    let mut publishers = Vec::new();
    for round in 0..3 {
        if round > 0 {
            // Messages to all three rooms in one turn.
            for target in ["r", "a", "b"] {
                let message = publish(target, &format!("m{round}"));
                publishers.push(connect(&mut shard, &listener, &message));
            }
        }
        let want = 1 + round;
        for _ in 0..500 {
            turn(&mut shard);
            for slot in [0, 1] {
                if let Some(ws) = shard.conns[slot].as_deref().and_then(Conn::ws) {
                    waited |= !ws.fanout_frames.is_empty();
                }
            }
            read_into(&room, &mut room_got);
            read_into(&mux, &mut mux_got);
            let room_done = count(&room_got, "\"room\":\"r\"") == want;
            let mux_done = count(&mux_got, "\"room\":\"a\"") == want
                && count(&mux_got, "\"room\":\"b\"") == want;
            if room_done && mux_done {
                break;
            }
        }
        assert_eq!(count(&room_got, "\"room\":\"r\""), want, "round {round}");
        assert_eq!(count(&mux_got, "\"room\":\"b\""), want, "round {round}");
    }
    assert!(waited, "fan-out frames waited behind a write in flight");
    // A few more turns: every write completed, nothing moves.
    for _ in 0..5 {
        turn(&mut shard);
    }
    for slot in [0, 1] {
        let (conn, ws) = driver(&shard, slot);
        assert!(!conn.pipe.writing(), "slot {slot}: idle");
        assert_eq!(ws.fanout_frames.capacity(), 0, "slot {slot}: staged frames");
        assert!(
            ws.rooms.iter().all(|room| room.write == RoomWrite::Idle),
            "slot {slot}: every subscription's write is done"
        );
        assert_eq!(conn.stamps.capacity(), 0, "slot {slot}: latency stamps");
        assert!(ws.talk.is_none(), "slot {slot}: no talking part");
        assert!(conn.http_driver().is_none(), "slot {slot}: no HTTP state");
    }
    assert!(
        matches!(driver(&shard, 0).1.rooms, WsRooms::One(_)),
        "a room WebSocket's subscription in place"
    );
    assert_eq!(driver(&shard, 1).1.rooms.len(), 2);
    // The subscriptions share the fan-out's copy of their room's name.
    for (slot, room) in [(0, "r"), (1, "a"), (1, "b")] {
        let held = shard.fanout.room_name(room).unwrap();
        let (_, ws) = driver(&shard, slot);
        assert!(
            ws.rooms.iter().any(|sub| Arc::ptr_eq(&sub.room, &held)),
            "{room}"
        );
    }
}

#[test]
fn rooms_keep_one_subscription_in_place_and_more_in_a_vector() {
    let room = |n: u32| WsRoom::new(Arc::from(format!("r{n}")), ConnId(n));
    let subs = |rooms: &WsRooms| rooms.iter().map(|room| room.sub.0).collect::<Vec<_>>();
    let mut rooms = WsRooms::default();
    assert!(rooms.is_empty());
    rooms.push(room(1));
    assert!(matches!(rooms, WsRooms::One(_)));
    rooms.push(room(2));
    rooms.push(room(3));
    assert_eq!(subs(&rooms), [1, 2, 3]);
    rooms.retain(|room| room.sub != ConnId(2));
    assert_eq!(subs(&rooms), [1, 3]);
    rooms
        .iter_mut()
        .for_each(|room| room.write = RoomWrite::Waiting);
    assert!(rooms.iter().all(|room| room.write == RoomWrite::Waiting));
    let mut one = WsRooms::One(room(7));
    one.retain(|room| room.sub != ConnId(7));
    assert!(one.is_empty());
    one.push(room(8));
    assert_eq!(subs(&one), [8]);
}

/// A client's text message, masked (with a zero key: the payload as it is).
fn text_frame(text: &str) -> Vec<u8> {
    assert!(text.len() < 126, "a short command");
    let mut frame = vec![0x81, 0x80 | text.len() as u8, 0, 0, 0, 0];
    frame.extend_from_slice(text.as_bytes());
    frame
}

#[test]
fn the_subscribe_pace_holds_after_the_talking_part_is_released() {
    use super::subscribe_rate::WS_SUBSCRIBE_BURST;
    let (mut shard, listener) = shard();
    let client = connect(&mut shard, &listener, &upgrade("/ws"));
    let mut got = Vec::new();
    let burst = WS_SUBSCRIBE_BURST as usize;
    // RFC 6455 §4.1: nothing before the `101`.
    for _ in 0..500 {
        turn(&mut shard);
        read_into(&client, &mut got);
        if count(&got, " 101 ") == 1 {
            break;
        }
    }
    assert_eq!(count(&got, " 101 "), 1);
    // The whole burst, churned on one room, answered and written out.
    let churn: Vec<u8> = (0..burst)
        .flat_map(|_| {
            let mut pair = text_frame(r#"{"type":"subscribe","room":"c"}"#);
            pair.extend(text_frame(r#"{"type":"unsubscribe","room":"c"}"#));
            pair
        })
        .collect();
    (&client).write_all(&churn).unwrap();
    for _ in 0..500 {
        turn(&mut shard);
        read_into(&client, &mut got);
        if count(&got, "\"type\":\"unsubscribed\"") == burst {
            break;
        }
    }
    assert_eq!(count(&got, "\"type\":\"unsubscribed\""), burst);
    assert_eq!(count(&got, "\"status\":429"), 0, "the burst is taken whole");
    for _ in 0..5 {
        turn(&mut shard);
    }
    // Idle again: no talking part, the `Conn` as small as a viewer's.
    let (conn, ws) = driver(&shard, 0);
    assert!(!conn.pipe.writing());
    assert!(ws.talk.is_none(), "released");
    // Still empty: distinct rooms in one write, well past what a few ticks earn.
    let rooms = 20;
    let more: Vec<u8> = (0..rooms)
        .flat_map(|n| text_frame(&format!(r#"{{"type":"subscribe","room":"x{n}"}}"#)))
        .collect();
    (&client).write_all(&more).unwrap();
    for _ in 0..500 {
        turn(&mut shard);
        read_into(&client, &mut got);
        let answered = count(&got, "\"status\":429") + count(&got, "\"room\":\"x");
        if answered >= rooms {
            break;
        }
    }
    assert!(
        count(&got, "\"status\":429") >= rooms / 2,
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(
        count(&got, "\"status\":429"),
        count(&got, "\"retry_after_ms\":")
    );
}
