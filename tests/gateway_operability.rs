//! Operability of the real `ringcast` binary (issue 5): `/metrics` is valid Prometheus text
//! (checked by `promtool`) and OpenMetrics on request, the publish→write latency histogram
//! counts deliveries, admission limits answer 503 with a reason and a labelled counter,
//! SIGHUP changes a limit without dropping connections, and SIGTERM during fan-out delivers
//! every acknowledged message before closing each stream with a `retry:` hint.

mod common;

use common::{Client, Item, Metrics, Server, Sse, PATIENCE};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Runs `promtool check metrics` on `text`; panics with its complaints.
fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is needed (Debian package `prometheus`; .ci/run installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool: {}\n{}{}\n--- input ---\n{text}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Parses `text` with the Python `prometheus_client` OpenMetrics parser (a strict one:
/// `# EOF`, counter `_total` suffixes, histogram buckets, escaping); returns the family names
/// it read, panics with its complaint.
fn openmetrics_parse(text: &str) -> Vec<String> {
    const SCRIPT: &str = "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as parse\nfor family in parse(sys.stdin.read()):\n    print(family.type, family.name, len(family.samples))\n";
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is needed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the OpenMetrics parser refused /metrics (pip install prometheus-client; .ci/run does): {}\n--- input ---\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A labelled sample's value, e.g. `reason="per_ip_limit"`, summed over shards.
fn sum_labelled(metrics: &Metrics, name: &str, label: &str) -> u64 {
    metrics
        .samples(name)
        .iter()
        .filter(|(labels, _)| labels.contains(label))
        .map(|(_, value)| *value as u64)
        .sum()
}

/// A client connected from another loopback address (127.0.0.2), which the gateway sees
/// as another client.
fn other_client(addr: SocketAddr) -> Client {
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .expect("socket");
    let source: SocketAddr = "127.0.0.2:0".parse().unwrap();
    socket.bind(&source.into()).expect("bind 127.0.0.2");
    socket.connect(&addr.into()).expect("connect");
    Client::from_stream(socket.into())
}

/// A fresh connection's first response (a connection refused at accept is answered
/// before it sends anything).
fn refused_at_accept(addr: SocketAddr) -> common::Response {
    let mut client = Client::connect(addr);
    client.read_response().expect("a response")
}

fn assert_unavailable(response: &common::Response, reason: &str) {
    assert_eq!(response.status, 503, "{response:?}");
    assert_eq!(response.header("retry-after"), Some("1"), "{response:?}");
    assert!(response.text().contains(reason), "{response:?}");
}

#[test]
fn metrics_pass_promtool_idle_and_after_traffic_and_speak_openmetrics() {
    let server = Server::start(&["--shards", "2"]);
    let mut scraper = server.client();
    let idle = scraper.request("GET", "/metrics", &[], b"");
    assert_eq!(
        idle.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    promtool_check(&idle.text());
    for name in [
        "ringcast_clock_drift_seconds",
        "ringcast_clock_corrections_total",
        "ringcast_fds_used",
        "ringcast_fds_limit",
        "ringcast_tickers_live",
        "ringcast_uring_sq_full_total",
        "ringcast_uring_cq_overflow_total",
        "ringcast_publish_to_write_seconds_count",
        "ringcast_pending_write_bytes",
    ] {
        assert!(
            !Metrics(idle.text()).samples(name).is_empty(),
            "{name} missing:\n{}",
            idle.text()
        );
    }
    assert!(idle
        .text()
        .contains("ringcast_connections{shard=\"0\",transport=\"http1\"}"));
    assert!(idle.text().contains("reason=\"pending_write_bytes\"} 0"));

    // Traffic: 20 subscribers in two rooms, 30 messages each.
    let mut streams: Vec<Sse> = (0..20)
        .map(|i| server.subscribe(&format!("m{}", i % 2), None))
        .collect();
    let before = scraper
        .metrics()
        .sum("ringcast_publish_to_write_seconds_count");
    let mut publisher = server.client();
    for n in 0..30 {
        publisher.publish("m0", &format!("a{n}"));
        publisher.publish("m1", &format!("b{n}"));
    }
    for sse in &mut streams {
        for _ in 0..30 {
            sse.next_event(PATIENCE);
        }
    }
    // Every delivered frame is one latency sample, recorded when its write completes.
    let mut after = scraper.metrics();
    assert!(common::wait_until(PATIENCE, || {
        after = scraper.metrics();
        after.sum("ringcast_publish_to_write_seconds_count") >= before + 20 * 30
    }));
    assert_eq!(after.sum("ringcast_deliveries_total"), 20 * 30);
    assert_eq!(
        after.sum("ringcast_publish_to_write_seconds_count"),
        after.sum("ringcast_deliveries_total"),
        "one sample per delivery"
    );
    // Rooms are recounted by size once a second: 10 subscribers per room, over 2 shards.
    assert!(common::wait_until(PATIENCE, || {
        let metrics = scraper.metrics();
        let bucket = |label| sum_labelled(&metrics, "ringcast_rooms_by_subscribers", label);
        bucket("subscribers=\"2-10\"") + bucket("subscribers=\"11-100\"") >= 2
    }));
    let text = scraper.request("GET", "/metrics", &[], b"").text();
    promtool_check(&text);

    let open = scraper.request(
        "GET",
        "/metrics",
        &[(
            "Accept",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        b"",
    );
    assert_eq!(open.status, 200);
    assert_eq!(
        open.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    let body = open.text();
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert!(
        body.contains("# TYPE ringcast_deliveries counter\n"),
        "{body}"
    );
    assert!(
        body.contains("ringcast_deliveries_total{shard=\"0\"}"),
        "{body}"
    );
    assert!(body.contains("# TYPE ringcast_publish_to_write_seconds histogram\n"));
    let families = openmetrics_parse(&body);
    assert!(
        families
            .iter()
            .any(|f| f.starts_with("counter ringcast_deliveries ")),
        "{families:?}"
    );
    assert!(
        families
            .iter()
            .any(|f| f.starts_with("histogram ringcast_publish_to_write_seconds ")),
        "{families:?}"
    );
}

/// The 10 s windows are aligned to wall-clock multiples of 10 s and stamped with their end.
#[test]
fn windowed_latency_quantiles_are_stamped_with_the_window_end() {
    let server = Server::start(&["--shards", "2"]);
    let mut sse = server.subscribe("w", None);
    let mut publisher = server.client();
    let mut scraper = server.client();
    let started = Instant::now();
    let mut line = None;
    // Publish until a complete window holds deliveries (at most ~12 s).
    while line.is_none() && started.elapsed() < Duration::from_secs(25) {
        publisher.publish("w", "x");
        sse.next_event(PATIENCE);
        std::thread::sleep(Duration::from_millis(100));
        let text = scraper.request("GET", "/metrics", &[], b"").text();
        line = text
            .lines()
            .find(|l| l.starts_with("ringcast_publish_to_write_window_seconds{quantile=\"0.99\"}"))
            .map(str::to_owned);
    }
    let line = line.expect("a window quantile within 25 s");
    let stamp_ms: u64 = line
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .expect("a timestamp");
    assert_eq!(
        stamp_ms % 10_000,
        0,
        "window end on a 10 s boundary: {line}"
    );
    let value: f64 = line.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(value > 0.0 && value < 1.0, "{line}");
}

#[test]
fn per_ip_limit_answers_503_with_reason_and_counts_it() {
    let server = Server::start(&["--shards", "2", "--max-connections-per-ip", "3"]);
    // Three streams from 127.0.0.1, spread over both shards: the limit is process-wide.
    let mut held: Vec<Sse> = (0..3).map(|_| server.subscribe("ip", None)).collect();
    for _ in 0..4 {
        assert_unavailable(
            &refused_at_accept(server.addr),
            "connection limit per client address",
        );
    }
    // Another loopback address is another client.
    let mut other = other_client(server.addr);
    let metrics = other.metrics();
    assert_eq!(
        sum_labelled(
            &metrics,
            "ringcast_admission_rejections_total",
            "reason=\"per_ip_limit\""
        ),
        4,
        "{}",
        metrics.0
    );
    // Streams held are untouched; closing one frees a place.
    let id = other.publish("ip", "still here");
    for sse in &mut held {
        assert_eq!(sse.next_event(PATIENCE).id, Some(id));
    }
    drop(held.pop());
    assert!(common::wait_until(PATIENCE, || {
        let mut client = Client::connect(server.addr);
        client
            .send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        client.read_response().map(|r| r.status).ok() == Some(200)
    }));
}

#[test]
fn pending_write_bytes_limit_refuses_publishes_and_subscribes() {
    let server = Server::start(&[
        "--shards",
        "1",
        "--max-pending-write-bytes",
        "1000000",
        "--history",
        "1000",
        "--history-bytes",
        "100000000",
    ]);
    let mut publisher = server.client();
    let data = "x".repeat(60_000);
    for _ in 0..100 {
        publisher.publish("big", &data);
    }
    // A reader that never reads, with a tiny window: its first write (6 MB of history)
    // stays in flight, mostly unwritten.
    let mut stuck = common::connect_with_recv_buffer(server.addr, 4096);
    stuck
        .write_all(b"GET /rooms/big/events?last_event_id=0 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut scraper = server.client();
    assert!(
        common::wait_until(PATIENCE, || scraper
            .metrics()
            .sum("ringcast_pending_write_bytes")
            > 1_000_000),
        "{}",
        scraper.metrics().0
    );
    let refused = publisher.request("POST", "/rooms/small/messages", &[], b"hi");
    assert_unavailable(&refused, "write backlog");
    let mut subscriber = server.client();
    subscriber
        .send(b"GET /rooms/small/events HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_unavailable(&subscriber.read_response().unwrap(), "write backlog");
    let metrics = scraper.metrics();
    assert_eq!(
        sum_labelled(
            &metrics,
            "ringcast_admission_rejections_total",
            "reason=\"pending_write_bytes\""
        ),
        2,
        "{}",
        metrics.0
    );
    // The backlog goes with the stuck reader.
    drop(stuck);
    assert!(common::wait_until(PATIENCE, || scraper
        .metrics()
        .sum("ringcast_pending_write_bytes")
        == 0));
    server.publish("small", "hi again");
}

#[test]
fn sighup_lowers_the_per_ip_limit_and_keeps_connections() {
    let dir = std::env::temp_dir().join(format!("ringcast-sighup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ringcast.toml");
    std::fs::write(&path, "max-connections-per-ip = 10\nheartbeat = 30.0\n").unwrap();
    let server = Server::start(&["--shards", "2", "--config", path.to_str().unwrap()]);
    let mut held: Vec<Sse> = (0..4).map(|_| server.subscribe("hup", None)).collect();
    let mut scraper = other_client(server.addr);
    assert_eq!(
        scraper.metrics().per_shard("ringcast_config_generation"),
        vec![1, 1]
    );

    std::fs::write(
        &path,
        "max-connections-per-ip = 4\nheartbeat = 0.3\nhistory = 7\n",
    )
    .unwrap();
    server.signal(libc::SIGHUP);
    assert!(
        common::wait_until(PATIENCE, || scraper
            .metrics()
            .per_shard("ringcast_config_generation")
            == vec![2, 2]),
        "{}",
        server.log()
    );
    // The fifth connection from 127.0.0.1 is now over the limit; the four held stay.
    assert_unavailable(
        &refused_at_accept(server.addr),
        "connection limit per client address",
    );
    // The heartbeat period changed live: held streams see comments within a second or so
    // (the old 30 s timers fire once at their old deadline, re-armed subscribers at 0.3 s).
    let mut fresh = {
        drop(held.pop());
        let mut opened = None;
        assert!(common::wait_until(PATIENCE, || {
            let mut client = Client::connect(server.addr);
            client
                .send(b"GET /rooms/hup/events HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            match client.read_head() {
                Ok(head) if head.status == 200 => {
                    opened = Some(Sse { client });
                    true
                }
                _ => false,
            }
        }));
        opened.unwrap()
    };
    let items = fresh.items_for(Duration::from_millis(1500));
    assert!(
        items
            .iter()
            .filter(|i| matches!(i, Item::Comment(_)))
            .count()
            >= 2,
        "{items:?}"
    );
    let id = scraper.publish("hup", "after reload");
    for sse in held.iter_mut().chain(std::iter::once(&mut fresh)) {
        assert_eq!(sse.next_event(PATIENCE).id, Some(id));
    }
    let log = server.log();
    assert!(log.contains("config reloaded"), "{log}");
    assert!(log.contains("cannot change while running"), "{log}");
    assert!(log.contains("history"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// One room's acknowledged ids, each with whether its 201 arrived before the signal.
type Acked = Vec<(u64, bool)>;

/// SIGTERM while a publisher runs at a steady rate to many subscribers: each subscriber
/// receives every message that was acknowledged (201), in order and once, then a `retry:`
/// hint, then the stream ends; the process exits 0.
#[test]
fn sigterm_during_fanout_delivers_every_acknowledged_message() {
    const ROOMS: usize = 3;
    const SUBSCRIBERS: usize = 60;
    let mut server = Server::start(&["--shards", "2", "--drain-timeout", "10"]);
    let streams: Vec<(usize, Sse)> = (0..SUBSCRIBERS)
        .map(|i| {
            (
                i % ROOMS,
                server.subscribe(&format!("term{}", i % ROOMS), None),
            )
        })
        .collect();
    let signalled = Arc::new(AtomicBool::new(false));
    // Ids acknowledged per room, and which of them came back before the signal was sent.
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::new(Mutex::new(vec![Vec::new(); ROOMS]));
    let publisher = {
        let (addr, signalled, acked) = (server.addr, signalled.clone(), acked.clone());
        std::thread::spawn(move || {
            let mut client = Client::connect(addr);
            for n in 0.. {
                let room = n % ROOMS;
                let request = format!(
                    "POST /rooms/term{room}/messages HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\nm{n}",
                    format!("m{n}").len()
                );
                if client.send(request.as_bytes()).is_err() {
                    return;
                }
                match client.read_response() {
                    Ok(response) if response.status == 201 => {
                        let before = !signalled.load(Ordering::SeqCst);
                        let json: serde_json::Value =
                            serde_json::from_slice(&response.body).unwrap();
                        acked.lock().unwrap()[room].push((common::Id::of(&json["id"]).seq, before));
                    }
                    // 503 draining, or the connection closed: the gateway is stopping.
                    _ => return,
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let readers: Vec<_> = streams
        .into_iter()
        .map(|(room, mut sse)| {
            std::thread::spawn(move || {
                let items = sse.expect_end(Duration::from_secs(20));
                (room, items)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    signalled.store(true, Ordering::SeqCst);
    server.signal(libc::SIGTERM);
    publisher.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    let before: usize = acked.iter().flatten().filter(|(_, b)| *b).count();
    assert!(
        before >= 30,
        "the publisher ran before the signal: {before}"
    );
    for reader in readers {
        let (room, items) = reader.join().unwrap();
        let ids: Vec<u64> = items
            .iter()
            .filter_map(|item| match item {
                Item::Event(event) => event.id.map(|id| id.seq),
                _ => None,
            })
            .collect();
        let want: Vec<u64> = acked[room].iter().map(|(id, _)| *id).collect();
        // Ids are contiguous from 1; every acknowledged one arrived, once, in order (a
        // message sequenced but whose 201 was lost in the stop may follow).
        assert!(
            ids.len() >= want.len(),
            "room {room}: got {} of {}",
            ids.len(),
            want.len()
        );
        assert_eq!(&ids[..want.len()], &want[..], "room {room}");
        assert!(
            ids.windows(2).all(|w| w[1] == w[0] + 1),
            "room {room}: {ids:?}"
        );
        assert!(
            matches!(items.last(), Some(Item::Retry(_))),
            "room {room}: stream did not end with a retry hint: {:?}",
            items.last()
        );
    }
    let status = server
        .wait_exit(Duration::from_secs(15))
        .expect("exits after draining");
    assert_eq!(status.code(), Some(0));
    assert!(TcpStream::connect(server.addr).is_err(), "still accepting");
}
