//! Abuse limits (issue 8, item 2) against the real binary: the per-address new-connection
//! rate refuses a burst beyond its bucket with 503 + `Retry-After`; a body that does not
//! arrive in `--body-timeout` gets 408; an HTTP/2 or HTTP/3 connection holds at most
//! `--max-streams-per-conn` subscriptions (429 past it); and 1000 slowloris connections
//! dribbling a header byte a second neither slow new subscribers down nor outlive
//! `--header-timeout`. Each refusal shows in the metrics by reason.

mod common;
mod transports;

use common::{wait_until, Client, Server, Sse, PATIENCE};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use transports::{h2_connect, h2_send, request, H3Client, TestCert};

const WAIT: Duration = Duration::from_secs(5);

#[test]
fn a_burst_of_new_connections_beyond_the_bucket_gets_503() {
    let server = Server::start(&["--shards", "2", "--max-new-connections-per-ip-per-sec", "5"]);
    let mut statuses = Vec::new();
    let mut refused = None;
    let started = Instant::now();
    for _ in 0..12 {
        let response = Client::connect(server.addr).request("GET", "/healthz", &[], b"");
        if response.status == 503 && refused.is_none() {
            refused = Some(response.clone());
        }
        statuses.push(response.status);
    }
    let burst = started.elapsed();
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let rejected = statuses.iter().filter(|s| **s == 503).count();
    // 5 in the bucket, plus one per 200 ms the burst took.
    let refill = (burst.as_millis() / 200) as usize;
    assert!(ok >= 5 && ok <= 5 + refill, "{statuses:?} in {burst:?}");
    assert_eq!(ok + rejected, 12, "{statuses:?}");
    let refused = refused.expect("a refusal");
    assert_eq!(refused.header("retry-after"), Some("1"), "{refused:?}");
    assert_eq!(
        refused.text(),
        "too many new connections from this client address\n"
    );
    // A second later the bucket holds tokens again (the scrape itself needs one).
    std::thread::sleep(Duration::from_millis(1100));
    let metrics = server.metrics();
    assert_eq!(
        metrics.by_reason("ringcast_admission_rejections_total", "new_connection_rate"),
        rejected as u64,
        "{}",
        metrics.0
    );
}

#[test]
fn a_body_that_does_not_arrive_in_time_gets_408() {
    let server = Server::start(&["--shards", "1", "--body-timeout", "1"]);
    let mut client = server.client();
    let started = Instant::now();
    // The head in full, 3 of the 10 body bytes, then a byte every 300 ms: trickling does
    // not extend the deadline.
    client
        .send(b"POST /rooms/a/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        .unwrap();
    client
        .stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    for _ in 0..6 {
        let _ = client.stream.write_all(b"d");
        match client.stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&chunk[..n]);
                break;
            }
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(err) => panic!("{err}"),
        }
    }
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 408 "),
        "{text:?} after {elapsed:?}"
    );
    assert!(
        text.ends_with("request body not complete in time\n"),
        "{text:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_millis(3000),
        "{elapsed:?}"
    );
    let metrics = server.metrics();
    assert_eq!(
        metrics.by_reason("ringcast_refusals_total", "body_timeout"),
        1
    );
    assert_eq!(
        metrics.by_reason("ringcast_refusals_total", "header_timeout"),
        0
    );
    // A body that arrives whole in time is served.
    assert_eq!(server.publish("a", "in time").seq, 1);
}

#[test]
fn an_http2_connection_holds_at_most_max_streams_per_conn_subscriptions() {
    let server = transports::start(
        &[
            "--shards",
            "1",
            "--h2c-listen",
            "127.0.0.1:0",
            "--max-streams-per-conn",
            "2",
        ]
        .map(String::from),
    );
    let h2c = transports::addr_of(&server, "h2c");
    transports::runtime().block_on(async {
        let mut conn = h2_connect(tokio::net::TcpStream::connect(h2c).await.unwrap(), None).await;
        let first = h2_send(&mut conn, request("/rooms/a/events", &[], None), true).await;
        let mut second = h2_send(&mut conn, request("/rooms/b/events", &[], None), true).await;
        assert_eq!((first.status, second.status), (200, 200));
        let third = h2_send(&mut conn, request("/rooms/c/events", &[], None), true).await;
        assert_eq!(third.status, 429);
        assert_eq!(third.text().await, "too many streams on this connection\n");
        // Other requests still go on beside the subscriptions.
        let published = h2_send(
            &mut conn,
            request("/rooms/b/messages", &[], Some("m")),
            true,
        )
        .await;
        assert_eq!(published.status, 201);
        assert_eq!(second.next_event(WAIT).await.data, "m");
        // Another connection has its own count.
        let mut other = h2_connect(tokio::net::TcpStream::connect(h2c).await.unwrap(), None).await;
        let elsewhere = h2_send(&mut other, request("/rooms/c/events", &[], None), true).await;
        assert_eq!(elsewhere.status, 200);
        // Ending a subscription frees its place (the client resets the stream once its
        // reader is gone and the next event arrives).
        drop(first);
        server.publish("a", "wake the dropped reader");
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut fourth;
        loop {
            fourth = h2_send(&mut conn, request("/rooms/d/events", &[], None), true).await;
            if fourth.status == 200 || tokio::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(fourth.status, 200);
        let metrics = server.metrics();
        let refused = metrics.by_reason("ringcast_refusals_total", "streams_per_connection");
        assert!(refused >= 1, "{}", metrics.0);
    });
}

#[test]
fn an_http3_connection_holds_at_most_max_streams_per_conn_subscriptions() {
    let cert = TestCert::new();
    let mut args = cert.args();
    args.extend(
        [
            "--shards",
            "1",
            "--h3-listen",
            "127.0.0.1:0",
            "--max-streams-per-conn",
            "1",
        ]
        .map(String::from),
    );
    let server = transports::start(&args);
    let h3 = transports::addr_of(&server, "h3");
    transports::runtime().block_on(async {
        let mut client = H3Client::connect(h3, &cert, None).await;
        let mut first = client.send("/rooms/a/events", &[], None, true).await;
        assert_eq!(first.status, 200);
        let second = client.send("/rooms/b/events", &[], None, true).await;
        assert_eq!(second.status, 429);
        assert_eq!(second.text().await, "too many streams on this connection\n");
        let published = client.send("/rooms/a/messages", &[], Some("m"), true).await;
        assert_eq!(published.status, 201);
        assert_eq!(first.next_event(WAIT).await.data, "m");
        let metrics = server.metrics();
        let refused = metrics.by_reason("ringcast_refusals_total", "streams_per_connection");
        assert_eq!(refused, 1, "{}", metrics.0);
    });
}

/// Slowloris: 1000 connections each sending a request head one byte a second.
#[test]
fn slowloris_connections_do_not_delay_new_subscribers_and_close_at_the_header_timeout() {
    const SLOW: usize = 1000;
    const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
    let server = Server::start(&["--shards", "2", "--header-timeout", "2"]);
    let addr = server.addr;
    // Connected (and the first bytes sent) by this thread; the dribbler takes them over.
    let mut slow = Vec::with_capacity(SLOW);
    for _ in 0..SLOW {
        let mut stream = TcpStream::connect(addr).expect("connect a slow client");
        let connected = Instant::now();
        stream
            .write_all(b"GET /rooms/slow/events HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .unwrap();
        stream.set_nonblocking(true).unwrap();
        slow.push((stream, connected));
    }
    let dribbler = std::thread::spawn(move || {
        // Per connection: what it read, and when it saw the end.
        let mut seen: Vec<(Vec<u8>, Option<Instant>)> = vec![(Vec::new(), None); SLOW];
        let mut next_byte = Instant::now() + Duration::from_secs(1);
        let deadline = Instant::now() + HEADER_TIMEOUT + Duration::from_secs(4);
        let mut chunk = [0u8; 512];
        while Instant::now() < deadline && seen.iter().any(|(_, end)| end.is_none()) {
            let dribble = Instant::now() >= next_byte;
            if dribble {
                next_byte += Duration::from_secs(1);
            }
            for ((stream, _), (read, end)) in slow.iter_mut().zip(seen.iter_mut()) {
                if end.is_some() {
                    continue;
                }
                if dribble {
                    let _ = stream.write(b"a");
                }
                loop {
                    match stream.read(&mut chunk) {
                        Ok(0) => {
                            *end = Some(Instant::now());
                            break;
                        }
                        Ok(n) => read.extend_from_slice(&chunk[..n]),
                        Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                        Err(_) => {
                            *end = Some(Instant::now());
                            break;
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        slow.into_iter()
            .zip(seen)
            .map(|((_, connected), (read, end))| (connected, read, end))
            .collect::<Vec<_>>()
    });

    // While they dribble, new subscribers get their 200 head promptly and their events.
    let mut worst = Duration::ZERO;
    for round in 0..5 {
        std::thread::sleep(Duration::from_millis(250));
        let started = Instant::now();
        let mut sse = Sse::open(addr, "/rooms/fresh/events", &[]);
        let head_after = started.elapsed();
        worst = worst.max(head_after);
        let id = server.publish("fresh", &format!("round {round}"));
        assert_eq!(sse.next_event(PATIENCE).id, Some(id));
    }
    assert!(
        worst < Duration::from_millis(200),
        "a new subscriber waited {worst:?} for its head"
    );

    let outcomes = dribbler.join().expect("dribbler");
    let mut late = Vec::new();
    let mut early = Vec::new();
    let mut not_408 = 0;
    for (connected, read, end) in &outcomes {
        let Some(end) = end else {
            late.push(None);
            continue;
        };
        let lived = end.duration_since(*connected);
        if lived < HEADER_TIMEOUT - Duration::from_millis(100) {
            early.push(lived);
        } else if lived > HEADER_TIMEOUT + Duration::from_millis(1500) {
            late.push(Some(lived));
        }
        if !read.starts_with(b"HTTP/1.1 408 ") {
            not_408 += 1;
        }
    }
    let lived: Vec<Duration> = outcomes
        .iter()
        .filter_map(|(connected, _, end)| end.map(|end| end.duration_since(*connected)))
        .collect();
    eprintln!(
        "slowest new subscriber head {worst:?}; slow connections lived {:?} to {:?}",
        lived.iter().min(),
        lived.iter().max()
    );
    assert!(
        early.is_empty(),
        "closed before the header timeout: {early:?}"
    );
    assert!(
        late.is_empty(),
        "closed late or not at all: {} {:?}",
        late.len(),
        &late[..late.len().min(5)]
    );
    assert_eq!(not_408, 0, "connections closed without a 408");
    assert!(wait_until(WAIT, || {
        server
            .metrics()
            .by_reason("ringcast_refusals_total", "header_timeout")
            >= SLOW as u64
    }));
}
