//! Hostile clients against the real `ringcast` binary (issue 14): each case is a request a
//! client on the open internet can send, found from outside with raw sockets. Every one gets
//! a clear answer, and the server keeps serving everyone else.

mod common;
mod transports;

use common::{Client, Server, PATIENCE};

/// Issue 14 case 1: `Content-Length: 2^64-1` on a GET wrapped `head + body` and panicked the
/// shard ("slice index starts at 72 but ends at 71"), which ended the whole process. The
/// declared length is refused from the head with 413 and the connection closed.
#[test]
fn a_content_length_of_2_pow_64_minus_1_is_refused_not_a_crash() {
    let server = Server::start(&["--shards", "2"]);
    for _ in 0..4 {
        // Four connections: both shards see it.
        let mut client = Client::connect(server.addr);
        client
            .send(
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 18446744073709551615\r\n\r\n",
            )
            .unwrap();
        let response = client.read_response().expect("an answer, not a reset");
        assert_eq!(response.status, 413, "{response:?}");
        client.read_until_closed(PATIENCE);
    }
    let mut client = Client::connect(server.addr);
    assert_eq!(client.request("GET", "/healthz", &[], b"").status, 200);
    assert_eq!(client.publish("a", "still here").seq, 1);
}

/// One raw request on a fresh connection: the status of the answer, or `None` if the
/// connection ended without one (a reset is an answer too for floods; the server's
/// survival is what the caller checks).
fn raw_status(server: &Server, request: &[u8]) -> Option<u16> {
    let mut client = Client::connect(server.addr);
    client
        .stream
        .set_read_timeout(Some(std::time::Duration::from_secs(3)))
        .unwrap();
    client.send(request).ok()?;
    client.read_head().ok().map(|head| head.status)
}

fn interop(name: &str) -> String {
    format!("{}/../tests/interop/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Runs one attack of an interop attacker script (tests/interop); its JSON report line.
fn attack(script: &str, addr: std::net::SocketAddr, attack: &str) -> String {
    let output = std::process::Command::new("python3")
        .arg(interop(script))
        .args(["--addr", &addr.to_string(), "--attack", attack])
        .args(["--seconds", "2"])
        .output()
        .expect("python3 runs (with h2/hyperframe/hpack and aioquic: .ci/run installs them)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        stdout.lines().last().is_some_and(|l| l.starts_with('{')),
        "{script} {attack}: no report\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Every hostile HTTP/1.1, HTTP/2 and HTTP/3 case of issue 14, once.
fn every_hostile_case(server: &Server, h2c: std::net::SocketAddr, h3: std::net::SocketAddr) {
    let requests: &[(&[u8], u16)] = &[
        // 1. crash
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 18446744073709551615\r\n\r\n",
            413,
        ),
        // 2. smuggling
        (
            b"POST /rooms/a/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 40\r\n\r\nhello",
            400,
        ),
        (
            b"POST /rooms/a/messages HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello",
            400,
        ),
        // 3. Host
        (b"GET /healthz HTTP/1.1\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        // 4. expectations
        (
            b"POST /rooms/a/messages HTTP/1.1\r\nHost: x\r\nExpect: teapot\r\nContent-Length: 5\r\n\r\n",
            417,
        ),
        // 5. HEAD on the stream: the head, then the end
        (b"HEAD /rooms/a/events HTTP/1.1\r\nHost: x\r\n\r\n", 200),
        // 6. bodies nobody asked for
        (
            b"GET /rooms/a/events HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n",
            413,
        ),
        // 10/12. resume ids that cannot be placed are reset, garbage refused
        (
            b"GET /rooms/a/events HTTP/1.1\r\nHost: x\r\nLast-Event-ID: \xff\xfe\r\n\r\n",
            400,
        ),
        // 13. a bad idempotency key
        (
            b"POST /rooms/a/messages HTTP/1.1\r\nHost: x\r\nIdempotency-Key: a b\r\nContent-Length: 1\r\n\r\nx",
            400,
        ),
    ];
    for (request, status) in requests {
        assert_eq!(
            raw_status(server, request),
            Some(*status),
            "{:?}",
            String::from_utf8_lossy(request)
        );
    }
    // 10. a bare number from another lifetime: reset, then everything held.
    let mut stream = server.subscribe_after("a", "18446744073709551615");
    assert_eq!(stream.next_event(PATIENCE).event.as_deref(), Some("reset"));
    drop(stream);
    // 7. rooms: 300 rooms published once each, over the cap of 50.
    let mut client = Client::connect(server.addr);
    for room in 0..300 {
        let response = client.request("POST", &format!("/rooms/churn{room}/messages"), &[], b"x");
        assert_eq!(response.status, 201, "room churn{room}: {response:?}");
    }
    // 13. idempotent retries: one message.
    for _ in 0..3 {
        let response = client.request(
            "POST",
            "/rooms/b/messages",
            &[("Idempotency-Key", "k1")],
            b"once",
        );
        assert_eq!(response.status, 201, "{response:?}");
    }
    // Slowloris: heads and bodies that never complete, 50 connections.
    let slow: Vec<Client> = (0..50)
        .map(|i| {
            let mut client = Client::connect(server.addr);
            let request: &[u8] = if i % 2 == 0 {
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "
            } else {
                b"POST /rooms/a/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab"
            };
            client.send(request).unwrap();
            client
        })
        .collect();
    // 14. HTTP/2 and HTTP/3 attack classes.
    for name in [
        "slow-body",
        "declared-over",
        "rapid-reset",
        "continuation",
        "hpack-bomb",
        "settings-flood",
        "ping-flood",
        "header-size",
    ] {
        attack("h2_hostile.py", h2c, name);
    }
    for name in ["slow-body", "qpack-bomb", "header-size", "amplification"] {
        attack("h3_hostile.py", h3, name);
    }
    for mut client in slow {
        client.read_until_closed(PATIENCE);
    }
}

/// A publish and a subscription over h2c and over HTTP/3, each on a connection closed after.
fn serve_each_transport(
    cert: &transports::TestCert,
    h2c: std::net::SocketAddr,
    h3: std::net::SocketAddr,
) {
    transports::runtime().block_on(async {
        let tcp = tokio::net::TcpStream::connect(h2c).await.unwrap();
        let mut send = transports::h2_connect(tcp, None).await;
        let mut events = transports::h2_send(
            &mut send,
            transports::request("/rooms/warm/events", &[], None),
            true,
        )
        .await;
        let publish = transports::h2_send(
            &mut send,
            transports::request("/rooms/warm/messages", &[], Some("h2")),
            true,
        )
        .await;
        assert_eq!(publish.status, 201);
        assert_eq!(events.next_event(PATIENCE).await.data, "h2");
        let mut client = transports::H3Client::connect(h3, cert, None).await;
        let mut events = client.send("/rooms/warm/events", &[], None, true).await;
        let publish = client
            .send("/rooms/warm/messages", &[], Some("h3"), true)
            .await;
        assert_eq!(publish.status, 201);
        assert_eq!(events.next_event(PATIENCE).await.data, "h3");
    });
}

/// Issue 14, "after all of it": a server that has taken every hostile case above, three
/// times over, still serves a publish and a resume, and its resident memory comes back
/// within 10 % of where it started (rooms freed by `--room-idle-timeout`, connections
/// closed by their timeouts, nothing left behind).
#[test]
fn after_every_hostile_case_the_server_still_serves_and_gives_its_memory_back() {
    let cert = transports::TestCert::new();
    let mut args = cert.args();
    args.extend(
        [
            "--shards",
            "2",
            "--max-rooms",
            "50",
            "--room-idle-timeout",
            "1",
            "--header-timeout",
            "1",
            "--body-timeout",
            "1",
            "--max-message-bytes",
            "4096",
            "--h2c-listen",
            "127.0.0.1:0",
            "--h3-listen",
            "127.0.0.1:0",
        ]
        .map(String::from),
    );
    let server = transports::start(&args);
    let h2c = transports::addr_of(&server, "h2c");
    let h3 = transports::addr_of(&server, "h3");
    // Where it started: a server in service, that has served a publish and a subscribe
    // over HTTP/1.1, HTTP/2 and HTTP/3 (each transport's one-time set-up is in the figure),
    // with one room that has a subscriber and history.
    let first = server.publish("a", "before");
    let mut watcher = server.subscribe("a", None);
    serve_each_transport(&cert, h2c, h3);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let start = transports::rss_bytes(server.pid());
    if std::env::var("HOSTILE_SMAPS").is_ok() {
        std::fs::copy(format!("/proc/{}/smaps", server.pid()), "/tmp/smaps.before").unwrap();
    }

    let rounds: usize = std::env::var("HOSTILE_ROUNDS").map_or(3, |v| v.parse().unwrap());
    for round in 0..rounds {
        every_hostile_case(&server, h2c, h3);
        eprintln!(
            "round {round}: RSS {} KiB",
            transports::rss_bytes(server.pid()) / 1024
        );
    }

    // Still serving: a publish reaches the live subscriber, a resume gets everything since.
    let after = server.publish("a", "after");
    assert_eq!(watcher.next_event(PATIENCE).data, "after");
    let mut resumed = server.subscribe("a", Some(first));
    let event = resumed.next_event(PATIENCE);
    assert_eq!((event.id, event.data.as_str()), (Some(after), "after"));

    // Memory back: rooms idle for a second are freed, every hostile connection closed.
    let mut rss = 0;
    let settled = common::wait_until(std::time::Duration::from_secs(20), || {
        rss = transports::rss_bytes(server.pid());
        rss <= start + start / 10
    });
    if std::env::var("HOSTILE_SMAPS").is_ok() {
        std::fs::copy(format!("/proc/{}/smaps", server.pid()), "/tmp/smaps.after").unwrap();
    }
    assert!(
        settled,
        "RSS {} KiB after, {} KiB at the start",
        rss / 1024,
        start / 1024
    );
    eprintln!(
        "RSS {} KiB at the start, {} KiB after three rounds of every case",
        start / 1024,
        rss / 1024
    );
    let rooms = server.metrics().sum("ringcast_rooms");
    assert!(rooms <= 4, "rooms left: {rooms}");
}

/// `THP_enabled` of a process's `/proc/PID/status`: 0 once it set `PR_SET_THP_DISABLE`.
fn thp_enabled(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("THP_enabled:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A huge page keeps the memory a burst used and freed resident (uring/sys.rs): the server
/// turns transparent huge pages off for itself, unless mimalloc is asked for them.
#[test]
fn transparent_huge_pages_are_off_unless_mimalloc_is_asked_for_them() {
    let server = Server::start(&["--shards", "1"]);
    let Some(enabled) = thp_enabled(server.pid()) else {
        eprintln!("skipped: this kernel's /proc/PID/status has no THP_enabled");
        return;
    };
    assert_eq!(enabled, 0, "the server runs with THP off");
    drop(server);
    let allowed = Server::start_with_env(&[("MIMALLOC_ALLOW_THP", "1")], &["--shards", "1"]);
    assert_eq!(
        thp_enabled(allowed.pid()),
        Some(1),
        "MIMALLOC_ALLOW_THP leaves THP to mimalloc"
    );
}
