//! Room WebSockets (`GET /rooms/{room}/ws`, issue 16) across their life, against the real
//! binary: what `tests/gateway_ws_rooms.rs` leaves out. Admission refusals answered before
//! the upgrade (connection limit, per-IP limit, room limit, draining: 503 + `Retry-After`),
//! an auth callback that fails (503 closed, or admitted with `--auth-fail-open`), one
//! idempotency key across transports and connections (one message, one id), a stuck
//! WebSocket viewer cut beside a stuck SSE one with the server healthy after, a drain that
//! delivers everything accepted before the signal to every viewer before its 1001, and
//! descriptors, tickers, subscribers and connections back at their baseline after 2,000
//! room connections ended eight ways.

mod common;
mod ws_client;

use common::{Id, Server};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use ws_client::{close_frame, frame, upgrade_request, WsClient, CLOSE, TEXT};

/// How long anything the server should do at once may take.
const WAIT: Duration = Duration::from_secs(5);

/// Opens `/rooms/{room}/ws{query}` and reads its `subscribed`.
fn join(addr: SocketAddr, room: &str, query: &str) -> WsClient {
    let mut client = WsClient::open(addr, &format!("/rooms/{room}/ws{query}"));
    assert_eq!(
        client.next_json(WAIT),
        json!({"type": "subscribed", "room": room})
    );
    client
}

/// The next room message (a JSON object without `type`): its id and data.
fn next_message(client: &mut WsClient) -> (Id, String) {
    let value = client.next_json(WAIT);
    assert!(value.get("type").is_none(), "a message, got {value}");
    (Id::of(&value["id"]), value["data"].as_str().unwrap().into())
}

/// Sends the upgrade for `path` and expects a refusal: its status, `Retry-After` and body.
fn refused(addr: SocketAddr, path: &str) -> (u16, Option<String>, String) {
    let (mut client, status) = WsClient::try_open(addr, path, "");
    assert_ne!(status, 101, "{path} was upgraded: {}", client.head);
    let body = client.read_body(WAIT);
    (status, client.header("retry-after"), body.trim_end().into())
}

/// Sends `request` on a new connection and reads its answer; `None` if the connection is
/// refused, reset or closed first (a shard whose listener closes during a drain).
fn try_answer(addr: SocketAddr, request: &[u8]) -> Option<common::Response> {
    let mut client = common::Client::from_stream(TcpStream::connect(addr).ok()?);
    client.send(request).ok()?;
    client.read_response().ok()
}

/// `/metrics`, or `None` while the server refuses the scrape (at a connection limit).
fn try_metrics(server: &Server) -> Option<common::Metrics> {
    let response = server.client().request("GET", "/metrics", &[], b"");
    (response.status == 200).then(|| common::Metrics(response.text()))
}

/// Waits until the server counted a 503 for `reason` (scrapes refused meanwhile are
/// retried: they count too, so this is at least one).
fn wait_for_rejection(server: &Server, reason: &str) -> u64 {
    let mut count = 0;
    let counted = common::wait_until(WAIT, || {
        count = try_metrics(server).map_or(0, |metrics| {
            metrics
                .samples("ringcast_admission_rejections_total")
                .iter()
                .filter(|(labels, _)| labels.contains(&format!("reason=\"{reason}\"")))
                .map(|(_, value)| *value as u64)
                .sum()
        });
        count > 0
    });
    assert!(counted, "no {reason} rejection counted");
    count
}

/// Waits until nothing of a WebSocket or subscriber is left and descriptors and tickers are
/// at `baseline` (from [`baseline`]); panics with the metrics if not.
fn assert_back_at(server: &Server, baseline: (u64, u64)) {
    let at_baseline = common::wait_until(WAIT, || {
        let metrics = server.metrics();
        metrics.sum("ringcast_websocket_connections") == 0
            && metrics.sum("ringcast_subscribers") == 0
            && metrics.sum("ringcast_fds_used") == baseline.0
            && metrics.sum("ringcast_tickers_live") == baseline.1
    });
    assert!(
        at_baseline,
        "not back at the baseline (fds, tickers) {baseline:?}:\n{}\n{:#?}",
        server.metrics().0,
        server.open_fds()
    );
}

/// Descriptors and tickers of an idle server: once the scrape is its only connection (the
/// connections of earlier requests may take a moment to be seen closed).
fn baseline(server: &Server) -> (u64, u64) {
    let mut metrics = server.metrics();
    let idle = common::wait_until(WAIT, || {
        metrics = server.metrics();
        metrics.sum("ringcast_connections") == 1
    });
    assert!(idle, "connections left open:\n{}", metrics.0);
    (
        metrics.sum("ringcast_fds_used"),
        metrics.sum("ringcast_tickers_live"),
    )
}

#[test]
fn the_connection_limit_refuses_the_upgrade_with_503_and_retry_after() {
    let server = Server::start(&["--shards", "1", "--max-connections", "3"]);
    let viewers: Vec<WsClient> = (0..3).map(|_| join(server.addr, "full", "")).collect();
    let (status, retry_after, body) = refused(server.addr, "/rooms/full/ws");
    assert_eq!(
        (status, retry_after.as_deref(), body.as_str()),
        (503, Some("1"), "connection limit reached")
    );
    drop(viewers);
    wait_for_rejection(&server, "connection_limit");
    assert_eq!(server.metrics().sum("ringcast_websocket_upgrades_total"), 3);
    // A place is free again: the next viewer is upgraded.
    let mut again = join(server.addr, "full", "");
    let id = server.publish("full", "room again");
    assert_eq!(next_message(&mut again), (id, "room again".into()));
}

#[test]
fn the_room_limit_refuses_the_upgrade_with_503_while_every_room_has_a_viewer() {
    let server = Server::start(&["--shards", "1", "--max-rooms", "2"]);
    let first = join(server.addr, "limit-a", "");
    let _second = join(server.addr, "limit-b", "");
    let (status, retry_after, body) = refused(server.addr, "/rooms/limit-c/ws");
    assert_eq!(
        (status, retry_after.as_deref(), body.as_str()),
        (503, Some("1"), "room limit reached")
    );
    assert_eq!(wait_for_rejection(&server, "room_limit"), 1);
    // A room without viewers makes way: the next upgrade evicts it.
    drop(first);
    assert!(common::wait_until(WAIT, || {
        server.metrics().sum("ringcast_subscribers") == 1
    }));
    let mut third = join(server.addr, "limit-c", "");
    let id = server.publish("limit-c", "made way");
    assert_eq!(next_message(&mut third), (id, "made way".into()));
}

#[test]
fn the_per_ip_limit_refuses_the_upgrade_with_503() {
    let server = Server::start(&["--shards", "2", "--max-connections-per-ip", "2"]);
    let first = join(server.addr, "per-ip", "");
    let second = join(server.addr, "per-ip", "");
    let (status, retry_after, body) = refused(server.addr, "/rooms/per-ip/ws");
    assert_eq!(
        (status, retry_after.as_deref(), body.as_str()),
        (
            503,
            Some("1"),
            "connection limit per client address reached"
        )
    );
    drop((first, second));
    wait_for_rejection(&server, "per_ip_limit");
    assert_eq!(server.metrics().sum("ringcast_websocket_upgrades_total"), 2);
}

/// An authorization upstream that cannot decide: every call gets 500. Counts the calls.
fn failing_auth_upstream() -> (String, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let url = format!("http://{}/authorize", listener.local_addr().unwrap());
    let calls = Arc::new(Mutex::new(0));
    let seen = calls.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            if read_request_body(&mut stream).is_none() {
                continue;
            }
            *seen.lock().unwrap() += 1;
            let _ = stream.write_all(
                b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    (url, calls)
}

fn read_request_body(stream: &mut TcpStream) -> Option<Value> {
    stream.set_read_timeout(Some(WAIT)).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..at]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))?
                .trim()
                .parse()
                .ok()?;
            while buf.len() < at + 4 + length {
                let n = stream.read(&mut chunk).ok().filter(|&n| n > 0)?;
                buf.extend_from_slice(&chunk[..n]);
            }
            return serde_json::from_slice(&buf[at + 4..at + 4 + length]).ok();
        }
        let n = stream.read(&mut chunk).ok().filter(|&n| n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn an_auth_callback_that_fails_refuses_the_upgrade_with_503_unless_fail_open() {
    let (url, calls) = failing_auth_upstream();
    // Fail closed (the default): 503 + Retry-After before any upgrade.
    let closed = Server::start(&["--shards", "1", "--auth-url", &url, "--auth-timeout", "1"]);
    let (status, retry_after, body) = refused(closed.addr, "/rooms/auth-down/ws");
    assert_eq!(
        (status, retry_after.as_deref(), body.as_str()),
        (503, Some("1"), "authorization failed"),
        "as SSE answers it"
    );
    assert_eq!(*calls.lock().unwrap(), 1, "the callback was asked");
    wait_for_rejection(&closed, "auth_unavailable");
    assert_eq!(closed.metrics().sum("ringcast_websocket_upgrades_total"), 0);
    // --auth-fail-open: admitted and upgraded, a viewer like any other.
    let open = Server::start(&[
        "--shards",
        "1",
        "--auth-url",
        &url,
        "--auth-timeout",
        "1",
        "--auth-fail-open",
    ]);
    let mut viewer = join(open.addr, "auth-down", "");
    assert_eq!(*calls.lock().unwrap(), 2, "the callback was asked again");
    let id = open.publish("auth-down", "admitted");
    assert_eq!(next_message(&mut viewer), (id, "admitted".into()));
}

#[test]
fn one_idempotency_key_is_one_message_over_http_and_every_websocket() {
    let server = Server::start(&["--shards", "2"]);
    let mut viewer = join(server.addr, "idem", "");
    let response = server.client().request(
        "POST",
        "/rooms/idem/messages",
        &[("Idempotency-Key", "shared-1")],
        b"first",
    );
    assert_eq!(response.status, 201, "{response:?}");
    let json: Value = serde_json::from_slice(&response.body).unwrap();
    let first = Id::of(&json["id"]);
    // Retries of the same key over several WebSockets (spread over the shards by the
    // kernel), with other data: each acked with the first id, nothing published.
    let mut publishers: Vec<WsClient> = (0..4).map(|_| join(server.addr, "other", "")).collect();
    for (n, publisher) in publishers.iter_mut().enumerate() {
        publisher.send_json(
            &json!({"type": "publish", "room": "idem", "data": format!("retry {n}"),
            "ref": n, "idempotency_key": "shared-1"}),
        );
    }
    for (n, publisher) in publishers.iter_mut().enumerate() {
        let ack = publisher.next_json(WAIT);
        assert_eq!(
            ack,
            json!({"type": "ack", "ref": n, "room": "idem", "id": first.to_string()})
        );
    }
    // A new key over a WebSocket, then the same key over HTTP: the WebSocket's id.
    publishers[0].send_json(&json!({"type": "publish", "room": "idem", "data": "second",
        "ref": "s", "idempotency_key": "shared-2"}));
    let second = Id::of(&publishers[0].next_json(WAIT)["id"]);
    let response = server.client().request(
        "POST",
        "/rooms/idem/messages",
        &[("Idempotency-Key", "shared-2")],
        b"again",
    );
    assert_eq!(response.status, 201, "{response:?}");
    let json: Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(Id::of(&json["id"]), second);

    // The viewer got each message once: first, second, then a marker.
    let marker = server.publish("idem", "marker");
    assert_eq!(next_message(&mut viewer), (first, "first".into()));
    assert_eq!(next_message(&mut viewer), (second, "second".into()));
    assert_eq!(next_message(&mut viewer), (marker, "marker".into()));
    assert_eq!(second.seq, first.seq + 1);
}

#[test]
fn a_stuck_websocket_viewer_is_cut_like_a_stuck_sse_one_and_the_server_stays_healthy() {
    let server = Server::start(&["--shards", "1", "--history", "16"]);
    let before = baseline(&server);
    // Neither reads: small receive windows, so the server's writes stall at once.
    let mut stuck_ws = WsClient::over(ws_client::Stream::Plain(common::connect_with_recv_buffer(
        server.addr,
        4096,
    )));
    stuck_ws.send(&upgrade_request("/rooms/slow/ws", "", None));
    let mut stuck_sse =
        common::Client::from_stream(common::connect_with_recv_buffer(server.addr, 4096));
    stuck_sse
        .send(b"GET /rooms/slow/events HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(common::wait_until(WAIT, || {
        server.metrics().sum("ringcast_subscribers") == 2
    }));
    let mut reader = join(server.addr, "slow", "");
    let data = "z".repeat(32 * 1024);
    for _ in 0..200 {
        let id = server.publish("slow", &data);
        assert_eq!(next_message(&mut reader).0, id);
    }
    assert!(
        common::wait_until(WAIT, || server
            .metrics()
            .sum("ringcast_slow_consumer_cuts_total")
            == 2),
        "both stuck viewers cut:\n{}",
        server.metrics().0
    );
    // Cut, not kept: both sockets end (after whatever the server had written).
    let _ = stuck_sse.read_until_closed(WAIT);
    assert_eq!(stuck_ws.read_head(WAIT), 101, "{}", stuck_ws.head);
    let mut ended = false;
    for _ in 0..1000 {
        match stuck_ws.try_frame(WAIT) {
            Ok(frame) if frame.opcode == CLOSE => {
                assert_eq!(frame.close_code(), Some(1013));
                let _ = stuck_ws.try_send(&close_frame(1013, ""));
                ended = stuck_ws.closed_within(WAIT);
                break;
            }
            Ok(_) => {}
            Err(_) => {
                ended = true;
                break;
            }
        }
    }
    assert!(ended, "the stuck WebSocket viewer was never cut");

    // Healthy: others are served, and nothing of the cut viewers is left.
    let mut fresh = join(server.addr, "slow", "");
    let id = server.publish("slow", "after the cut");
    assert_eq!(next_message(&mut fresh), (id, "after the cut".into()));
    assert_eq!(next_message(&mut reader), (id, "after the cut".into()));
    drop((fresh, reader));
    assert_back_at(&server, before);
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

/// What a viewer that also publishes reads: messages, acks and refusals.
#[derive(Default)]
struct PublisherView {
    seen: Vec<Id>,
    acked: Vec<Id>,
    refused: usize,
}

impl PublisherView {
    /// Reads the next frame into the lists; false at the close (1001).
    fn read(&mut self, client: &mut WsClient) -> bool {
        let frame = client.next_data(WAIT);
        if frame.opcode == CLOSE {
            assert_eq!(frame.close_code(), Some(1001), "{frame:?}");
            return false;
        }
        let value: Value = serde_json::from_slice(&frame.payload).unwrap();
        match value["type"].as_str() {
            None => self.seen.push(Id::of(&value["id"])),
            Some("ack") => self.acked.push(Id::of(&value["id"])),
            Some("error") => {
                assert_eq!(value["status"], 503, "{value}");
                self.refused += 1;
            }
            Some(other) => panic!("unexpected {other}: {value}"),
        }
        true
    }
}

#[test]
fn a_drain_delivers_everything_accepted_before_the_signal_then_closes_with_1001() {
    let mut server = Server::start(&["--shards", "2", "--drain-timeout", "3"]);
    // Four viewers (both shards, whichever the kernel picks); the first also publishes.
    let mut viewers: Vec<WsClient> = (0..4).map(|_| join(server.addr, "drain", "")).collect();
    let publish = |n: usize| {
        frame(
            true,
            TEXT,
            json!({"type": "publish", "room": "drain", "data": format!("ws {n}"), "ref": n})
                .to_string()
                .as_bytes(),
            true,
        )
    };
    let mut publisher = PublisherView::default();
    for n in 0..3 {
        viewers[0].send(&publish(n));
    }
    while publisher.acked.len() < 3 {
        assert!(publisher.read(&mut viewers[0]));
    }
    // Accepted before the signal: three acked over the socket, then five 201s over HTTP,
    // the signal right after the last (their fan-out to the other shard may still be on
    // its way).
    let mut accepted = publisher.acked.clone();
    accepted.extend((0..5).map(|n| server.publish("drain", &format!("http {n}"))));
    server.signal(libc::SIGTERM);
    // Publishes right after the signal: acked, refused with 503, or not acted on when they
    // cross the server's close; each answered at most once, and the drain goes on.
    for n in 3..6 {
        let _ = viewers[0].try_send(&publish(n));
    }
    // A new viewer while the drain runs (the listener stays open while viewers are
    // connected): refused as HTTP, with Retry-After.
    // (A shard left with no connection closes its listener: a client the kernel hands it
    // then is refused or reset, and tries again.)
    let readyz = b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n";
    assert!(common::wait_until(WAIT, || {
        try_answer(server.addr, readyz).is_some_and(|answer| answer.status == 503)
    }));
    let mut refusal = None;
    assert!(common::wait_until(WAIT, || {
        refusal = try_answer(server.addr, &upgrade_request("/rooms/drain/ws", "", None));
        refusal.is_some()
    }));
    let refusal = refusal.unwrap();
    assert_eq!(
        (
            refusal.status,
            refusal.header("retry-after"),
            refusal.text().trim_end()
        ),
        (503, Some("1"), "draining"),
        "{refusal:?}"
    );

    while publisher.read(&mut viewers[0]) {}
    assert!(publisher.acked.len() + publisher.refused <= 6);
    // An ack, even one after the signal, means the publisher itself got the message before
    // its 1001.
    for id in &publisher.acked {
        assert!(
            publisher.seen.contains(id),
            "acked {id:?} reached its publisher before the 1001: acked {:?}, seen {:?}",
            publisher.acked,
            publisher.seen
        );
    }
    let mut seen_by = vec![publisher.seen.clone()];
    for viewer in &mut viewers[1..] {
        let mut view = PublisherView::default();
        while view.read(viewer) {}
        assert!(view.acked.is_empty() && view.refused == 0);
        seen_by.push(view.seen);
    }
    for (n, seen) in seen_by.iter().enumerate() {
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "viewer {n}: in order: {seen:?}"
        );
        assert!(
            seen.len() >= accepted.len() && seen[..accepted.len()] == accepted[..],
            "viewer {n} got everything accepted before the signal {accepted:?}, then its \
             1001: {seen:?}"
        );
    }
    for viewer in &mut viewers {
        let _ = viewer.try_send(&close_frame(1001, ""));
    }
    let exit = server.wait_exit(WAIT);
    assert!(
        exit.is_some_and(|s| s.success()),
        "drained and exited 0: {exit:?}\n{}",
        server.log()
    );
}

#[test]
fn descriptors_tickers_and_subscribers_come_back_after_2000_room_connections() {
    const CYCLES: usize = 2000;
    let server = Server::start(&["--shards", "2", "--history", "8"]);
    // A resume after the first message replays the second.
    let first = server.publish("churn", "one");
    let second = server.publish("churn", "two");
    let before = baseline(&server);
    let path = "/rooms/churn/ws";
    let resume = format!("?last_event_id={first}");
    for cycle in 0..CYCLES {
        match cycle % 8 {
            // A clean close.
            0 => {
                let mut client = join(server.addr, "churn", "");
                client.send(&close_frame(1000, ""));
                assert_eq!(client.next_data(WAIT).close_code(), Some(1000));
                assert!(client.closed_within(WAIT));
            }
            // Dropped without a close.
            1 => drop(join(server.addr, "churn", "")),
            // Resumed, then dropped.
            2 => {
                let mut client = join(server.addr, "churn", &resume);
                assert_eq!(next_message(&mut client), (second, "two".into()));
            }
            // Gone before the 101 was read.
            3 => {
                let mut client = WsClient::connect_raw(server.addr);
                client.send(&upgrade_request(path, "", None));
            }
            // Gone halfway through a frame header, and halfway through a message.
            4 => join(server.addr, "churn", "").send(&[0x81, 0xfe, 0x01]),
            5 => join(server.addr, "churn", "").send(&frame(false, TEXT, b"{\"ty", true)),
            // Gone with a publish in flight (no ack read).
            6 => join(server.addr, "churn", "")
                .send_json(&json!({"type": "publish", "room": "churn-out", "data": "x", "ref": 1})),
            // A bad command answered, then dropped.
            _ => {
                let mut client = join(server.addr, "churn", "");
                client.send(&frame(true, TEXT, b"not json", true));
                assert_eq!(client.next_json(WAIT)["status"], 400);
            }
        }
    }
    assert_back_at(&server, before);
    let metrics = server.metrics();
    assert!(
        metrics.sum("ringcast_websocket_upgrades_total") >= (CYCLES * 7 / 8) as u64,
        "{}",
        metrics.0
    );
    assert!(!server.log().contains("panicked"), "{}", server.log());
}
