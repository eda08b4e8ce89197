//! Connection lifecycle of the real `ringcast` binary (issue 3): thousands of
//! connect/subscribe/disconnect cycles leave no file descriptor, ticker or subscriber
//! behind, and SIGTERM/SIGINT close every stream and exit 0.

mod common;

use common::{Client, Metrics, Server};
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

const CYCLES: usize = 2000;
const CYCLE_THREADS: usize = 4;

/// What the leak test compares before and after.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Held {
    fds: u64,
    tickers: u64,
    subscribers: u64,
    connections: u64,
}

fn held(metrics: &Metrics) -> Held {
    Held {
        fds: metrics.sum("ringcast_fds_used"),
        tickers: metrics.sum("ringcast_tickers_live"),
        subscribers: metrics.sum("ringcast_subscribers"),
        connections: metrics.sum("ringcast_connections"),
    }
}

/// One client's visit; `i` picks the kind, most of them subscribers.
fn cycle(addr: std::net::SocketAddr, i: usize) {
    let room = format!("leak{}", i % 7);
    match i % 10 {
        // Connect and close without a byte.
        0 => drop(TcpStream::connect(addr).expect("connect")),
        // Half a request head, then close.
        1 => {
            let mut stream = TcpStream::connect(addr).expect("connect");
            let _ = stream.write_all(b"GET /rooms/leak0/events HTTP/1.1\r\nHo");
        }
        // A publish on a connection that asks to be closed.
        2 => {
            let mut client = Client::connect(addr);
            let response = client.request(
                "POST",
                &format!("/rooms/{room}/messages"),
                &[("Connection", "close")],
                format!("cycle {i}").as_bytes(),
            );
            assert_eq!(response.status, 201, "{response:?}");
            let _ = client.read_until_closed(Duration::from_secs(5));
        }
        // A resume that replays history the client never reads.
        3 => {
            let _sse = common::Sse::open(
                addr,
                &format!("/rooms/{room}/events"),
                &[("Last-Event-ID", "0")],
            );
        }
        // Subscribe, read the head, close.
        _ => {
            let _sse = common::Sse::open(addr, &format!("/rooms/{room}/events"), &[]);
        }
    }
}

#[test]
fn connect_subscribe_disconnect_cycles_leak_nothing() {
    let server = Server::start(&["--shards", "2"]);
    // One keep-alive scrape connection, so the scraper itself is counted the same way
    // (one connection, one timer, one fd) in every reading.
    // Warm up first: "listening" is logged before every shard has set up its ring, and a
    // connection is only answered once its shard runs, so after these every shard is up
    // (SO_REUSEPORT spreads 100 connections over both) and the baseline is complete.
    for i in 0..100 {
        cycle(server.addr, 10 * i + 4);
    }
    let mut scraper = server.client();
    let mut baseline = held(&scraper.metrics());
    assert!(common::wait_until(Duration::from_secs(3), || {
        let now = held(&scraper.metrics());
        let settled = now == baseline;
        baseline = now;
        settled
    }));
    assert_eq!(
        (baseline.subscribers, baseline.connections),
        (0, 1),
        "{baseline:?}"
    );
    let fds_before = server.open_fds();

    let started = Instant::now();
    let threads: Vec<_> = (0..CYCLE_THREADS)
        .map(|thread| {
            let addr = server.addr;
            std::thread::spawn(move || {
                for i in (thread..CYCLES).step_by(CYCLE_THREADS) {
                    cycle(addr, i);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("cycle thread");
    }
    eprintln!("{CYCLES} cycles in {:?}", started.elapsed());
    // The cycles did reach the server: the publishes among them were sequenced.
    assert!(scraper.metrics().sum("ringcast_publishes_total") >= (CYCLES / 10) as u64);

    let mut after = held(&scraper.metrics());
    common::wait_until(Duration::from_secs(5), || {
        after = held(&scraper.metrics());
        after == baseline
    });
    assert_eq!(
        after,
        baseline,
        "held after {CYCLES} cycles vs before; fds before {fds_before:#?}, after {:#?}",
        server.open_fds()
    );
}

/// SIGTERM (and SIGINT) with subscribers on both shards and an idle keep-alive
/// connection: every stream ends and the process exits 0 within a few seconds.
#[test]
fn termination_signal_closes_streams_and_exits_zero() {
    for (signal, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        let mut server = Server::start(&["--shards", "2"]);
        let mut streams: Vec<common::Sse> = (0..8)
            .map(|i| server.subscribe(&format!("bye{}", i % 3), None))
            .collect();
        let mut idle = server.client();
        assert_eq!(idle.request("GET", "/healthz", &[], b"").status, 200);
        assert_eq!(server.publish("bye0", "before").seq, 1);
        let signalled = Instant::now();
        server.signal(signal);
        for (i, sse) in streams.iter_mut().enumerate() {
            let items = sse.expect_end(Duration::from_secs(5));
            if i % 3 == 0 {
                // What was published before the signal still reaches its subscribers.
                let first = items.iter().find_map(|item| match item {
                    common::Item::Event(e) => Some(e),
                    _ => None,
                });
                assert_eq!(
                    first.map(|e| (e.id.map(|id| id.seq), e.data.as_str())),
                    Some((Some(1), "before")),
                    "{name}: {items:?}"
                );
            }
        }
        let _ = idle.read_until_closed(Duration::from_secs(5));
        let status = server
            .wait_exit(Duration::from_secs(5))
            .unwrap_or_else(|| panic!("still running 5 s after {name}"));
        assert_eq!(status.code(), Some(0), "{name}: {status}");
        eprintln!("{name}: exited after {:?}", signalled.elapsed());
        // Nothing listens any more.
        assert!(
            TcpStream::connect(server.addr).is_err(),
            "{name}: still accepting"
        );
    }
}

#[test]
fn a_second_gateway_on_a_busy_port_is_refused_unless_it_shares_on_purpose() {
    // Every shard socket is SO_REUSEPORT, and the kernel would let a second process of the
    // same user join the group and take part of the connections without a word.
    let first = Server::start(&["--shards", "1"]);
    let busy = first.addr.to_string();
    let output = std::process::Command::new(common::RINGCAST)
        .args(["--listen", &busy, "--shards", "1"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run a second ringcast");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "second gateway started: {stderr}");
    assert!(
        stderr.contains("--listen") && stderr.contains("address already in use"),
        "{stderr}"
    );
    // The first one was not disturbed.
    let mut events = first.subscribe("busy", None);
    assert_eq!(first.publish("busy", "still here").seq, 1);
    assert_eq!(events.next_event(Duration::from_secs(5)).data, "still here");

    // A deliberate handover joins the address.
    let mut second = Server::start_at(&busy, &["--shards", "1", "--share-port"]);
    assert_eq!(second.addr, first.addr);
    second.signal(libc::SIGTERM);
    assert!(second.wait_exit(Duration::from_secs(10)).is_some());
}
