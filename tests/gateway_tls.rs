//! HTTP/1.1 over TLS on the shard's io_uring ring (issue 6): the ring accepts the
//! `--tls-listen` socket, reads the ClientHello, and either serves HTTP/1.1 over rustls on
//! byte buffers itself or hands an `h2` client to the companion thread. A TLS subscriber
//! that stops reading is cut as a plain one is; keep-alive works; what is not TLS is closed
//! and counted; ALPN picks the protocol on one port; the handshakes are counted by the
//! shard (`ringcast_tls_handshakes_total`), and the bytes on the wire are the ring's own.

mod common;
mod transports;

use common::{Client, PATIENCE};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use transports::{labelled, TestCert, TlsClient};

const WAIT: Duration = Duration::from_secs(5);

/// Starts ringcast with a fresh certificate, `--tls-listen` and `args`; returns the server,
/// the certificate and the TLS address.
fn start_tls(args: &[&str]) -> (common::Server, TestCert, SocketAddr) {
    let cert = TestCert::new();
    let mut all = cert.args();
    all.extend(["--tls-listen", "127.0.0.1:0"].map(String::from));
    all.extend(args.iter().map(|a| a.to_string()));
    let server = transports::start(&all);
    let tls = transports::addr_of(&server, "tls");
    (server, cert, tls)
}

fn refusals(server: &common::Server, reason: &str) -> u64 {
    labelled(
        &server.metrics(),
        "ringcast_refusals_total",
        &format!("reason=\"{reason}\""),
    )
}

fn handshakes(server: &common::Server, result: &str) -> u64 {
    labelled(
        &server.metrics(),
        "ringcast_tls_handshakes_total",
        &format!("result=\"{result}\""),
    )
}

#[test]
fn a_tls_subscriber_that_stops_reading_is_cut_while_a_tls_reader_gets_every_message() {
    const MESSAGES: u64 = 200;
    const MESSAGE_BYTES: usize = 32 * 1024;
    let (server, cert, tls) = start_tls(&["--shards", "1", "--history", "16"]);
    // The stuck one: a 4 KiB receive buffer, reads the response head, then nothing.
    let stuck = common::connect_with_recv_buffer(tls, 4096);
    let mut stuck = TlsClient::over(stuck, &cert, &[b"http/1.1"]);
    stuck.subscribe("/rooms/big/events");
    let mut reader = TlsClient::connect(tls, &cert, &[b"http/1.1"]);
    reader.subscribe("/rooms/big/events");
    assert!(common::wait_until(WAIT, || server
        .metrics()
        .sum("ringcast_subscribers")
        == 2));

    // The reader reports its progress; the publisher stays within half the history of it,
    // so a reader slowed by a loaded test machine (TLS in a debug build) is never lapped,
    // while the stuck one, which reads nothing, is.
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let read_so_far = progress.clone();
    let reading = std::thread::spawn(move || {
        for want in 1..=MESSAGES {
            let event = reader.next_event(PATIENCE);
            assert_eq!(
                event.id.map(|id| id.seq),
                Some(want),
                "reader got {:?}",
                event.event
            );
            assert_eq!(event.data.len(), MESSAGE_BYTES);
            assert!(event.data.starts_with(&format!("{want} ")));
            read_so_far.store(want, std::sync::atomic::Ordering::Release);
        }
        reader
    });
    let mut publisher = server.client();
    for seq in 1..=MESSAGES {
        let mut data = format!("{seq} ");
        data.push_str(&"x".repeat(MESSAGE_BYTES - data.len()));
        assert_eq!(publisher.publish("big", &data).seq, seq);
        let behind = || seq - progress.load(std::sync::atomic::Ordering::Acquire) <= 8;
        assert!(
            common::wait_until(PATIENCE, behind) || reading.is_finished(),
            "the reader stopped at {}",
            progress.load(std::sync::atomic::Ordering::Acquire)
        );
    }
    let _reader = reading
        .join()
        .expect("the reading TLS subscriber got every message");
    assert!(
        common::wait_until(WAIT, || server
            .metrics()
            .sum("ringcast_slow_consumer_cuts_total")
            >= 1),
        "the stuck TLS subscriber was not cut:\n{}",
        server.metrics().0
    );
    // Cut: the server closed it (the client sees the end once it reads what is buffered).
    assert!(
        common::wait_until(WAIT, || server.metrics().sum("ringcast_subscribers") == 1),
        "{}",
        server.metrics().0
    );
    assert!(
        stuck.closed_within(WAIT),
        "the cut connection is still open"
    );
    assert_eq!(transports::connections(&server.metrics(), "tls"), 1);
}

#[test]
fn a_keep_alive_tls_connection_publishes_several_times_then_subscribes() {
    let (server, cert, tls) = start_tls(&["--shards", "2"]);
    let mut client = TlsClient::connect(tls, &cert, &[b"http/1.1"]);
    assert_eq!(client.alpn().as_deref(), Some(&b"http/1.1"[..]));
    let first = client.publish("keep", "one");
    assert_eq!(first.seq, 1);
    assert_eq!(client.publish("keep", "two"), first.at(2));
    // Two requests in one write: the second waits in the decrypted buffer.
    let mut pipelined = TlsClient::request_bytes("POST", "/rooms/keep/messages", Some("three"));
    pipelined.extend(TlsClient::request_bytes("GET", "/rooms/keep", None));
    client.send(&pipelined).unwrap();
    let third = client.read_response().unwrap();
    let third_body = format!("{{\"id\":\"{}\"}}", first.at(3));
    assert_eq!((third.status, third.text()), (201, third_body));
    let room = client.read_response().unwrap();
    let room: serde_json::Value = serde_json::from_slice(&room.body).unwrap();
    assert_eq!(room["last_id"], first.at(3));
    // Then, on the same connection, a subscription that resumes from the start.
    let subscribe = format!(
        "GET /rooms/keep/events HTTP/1.1\r\nHost: localhost\r\nLast-Event-ID: {}\r\n\r\n",
        first.at(0)
    );
    client.send(subscribe.as_bytes()).unwrap();
    let head = client.read_head().unwrap();
    assert_eq!(head.status, 200);
    for (id, data) in [(1, "one"), (2, "two"), (3, "three")] {
        let event = client.next_event(WAIT);
        assert_eq!(
            (event.id.map(|id| id.seq), event.data.as_str()),
            (Some(id), data)
        );
    }
    let id = server.publish("keep", "four");
    assert_eq!(client.next_event(WAIT).id, Some(id));
    assert_eq!(handshakes(&server, "http1"), 1);
}

#[test]
fn plain_http_garbage_and_silence_on_the_tls_port_are_closed_and_counted() {
    let (server, cert, tls) = start_tls(&["--shards", "1", "--header-timeout", "1"]);
    // Plain HTTP: not a TLS record; closed at once.
    let started = Instant::now();
    let mut plain = Client::connect(tls);
    plain
        .send(b"GET /rooms/a/events HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let answer = plain.read_until_closed(Duration::from_secs(2));
    assert!(
        !answer.starts_with(b"HTTP/"),
        "an HTTP answer on the TLS port: {answer:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(900));
    // Garbage that looks like the start of a record with an impossible length.
    let mut garbage = Client::connect(tls);
    garbage.send(b"\x16\x03\x01\xff\xffnot tls at all").unwrap();
    garbage.read_until_closed(Duration::from_secs(2));
    // A ClientHello that never ends: handshake records past the limit.
    let mut huge = TcpStream::connect(tls).unwrap();
    let mut record = vec![0x16, 0x03, 0x01, 0x40, 0x00];
    record.extend([0x01, 0x00, 0xff, 0xff]); // client_hello of 64 KiB - 1
    record.resize(5 + 0x4000, 0);
    let mut sent = 0;
    for _ in 0..4 {
        match huge.write_all(&record) {
            Ok(()) => sent += 1,
            Err(_) => break,
        }
    }
    assert!(sent >= 1);
    huge.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut rest = Vec::new();
    let _ = huge.read_to_end(&mut rest);
    // Silence: closed at the header timeout.
    let silent_started = Instant::now();
    let mut silent = Client::connect(tls);
    silent.read_until_closed(Duration::from_secs(3));
    let silent_for = silent_started.elapsed();
    assert!(
        silent_for >= Duration::from_millis(900) && silent_for < Duration::from_millis(2500),
        "silent connection closed after {silent_for:?}"
    );

    assert!(common::wait_until(WAIT, || refusals(&server, "tls_error") >= 2));
    assert_eq!(refusals(&server, "tls_client_hello_too_large"), 1);
    assert_eq!(refusals(&server, "tls_handshake_timeout"), 1);
    assert_eq!(handshakes(&server, "failed"), 4);
    // Still serving, on both listeners.
    let mut fine = TlsClient::connect(tls, &cert, &[b"http/1.1"]);
    assert_eq!(fine.publish("after", "ok").seq, 1);
    assert_eq!(server.publish("after", "plain").seq, 2);
    assert!(common::wait_until(WAIT, || transports::connections(
        &server.metrics(),
        "tls"
    ) == 1));
}

#[test]
fn alpn_picks_http2_or_http1_on_the_same_port() {
    let (server, cert, tls) = start_tls(&["--shards", "2"]);
    let mut http1 = TlsClient::connect(tls, &cert, &[b"http/1.1"]);
    assert_eq!(http1.alpn().as_deref(), Some(&b"http/1.1"[..]));
    let mut no_alpn = TlsClient::connect(tls, &cert, &[]);
    assert_eq!(no_alpn.alpn(), None);
    http1.subscribe("/rooms/alpn/events");
    no_alpn.subscribe("/rooms/alpn/events");
    transports::runtime().block_on(async {
        let stream = transports::tls_connect(tls, &cert, &[b"h2", b"http/1.1"]).await;
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let mut h2 = transports::h2_connect(stream, None).await;
        let mut over_h2 = transports::h2_send(
            &mut h2,
            transports::request("/rooms/alpn/events", &[], None),
            true,
        )
        .await;
        assert_eq!(over_h2.status, 200);
        let metrics =
            transports::wait_metrics(&server, WAIT, |m| m.sum("ringcast_subscribers") == 3).await;
        assert_eq!(metrics.sum("ringcast_subscribers"), 3, "{}", metrics.0);
        assert_eq!(transports::connections(&metrics, "h2"), 1, "{}", metrics.0);
        assert_eq!(transports::connections(&metrics, "tls"), 2, "{}", metrics.0);
        let id = server.publish("alpn", "to every protocol");
        assert_eq!(over_h2.next_event(WAIT).await.id, Some(id));
    });
    assert_eq!(http1.next_event(WAIT).data, "to every protocol");
    assert_eq!(no_alpn.next_event(WAIT).data, "to every protocol");
    assert_eq!(handshakes(&server, "http1"), 2);
    assert_eq!(handshakes(&server, "h2"), 1);
}

/// What would fail if HTTP/1.1 over TLS went back to the companion thread: the shard
/// counts the handshakes it completed on its ring, and the answers are the shard's own
/// HTTP/1.1 bytes (hyper would rewrite the head and chunk the SSE body).
#[test]
fn tls_http1_is_served_by_the_ring_with_the_plain_listener_s_bytes() {
    let (server, cert, tls) = start_tls(&["--shards", "1"]);
    let mut over_tls = TlsClient::connect(tls, &cert, &[b"http/1.1"]);
    over_tls.subscribe("/rooms/bytes/events");
    let mut plain = Client::connect(server.addr);
    plain
        .send(b"GET /rooms/bytes/events HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    plain.read_head().unwrap();
    assert_eq!(handshakes(&server, "http1"), 1);
    assert_eq!(
        over_tls.last_head,
        String::from_utf8_lossy(gateway::http::h1::SSE_HEAD)
    );
    let id = server.publish("bytes", "same bytes");
    let event = over_tls.next_event(WAIT);
    assert_eq!((event.id, event.data.as_str()), (Some(id), "same bytes"));
    // Idle TLS subscribers: what each costs the server.
    const IDLE: usize = 200;
    let before = transports::rss_bytes(server.pid());
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        let mut client = TlsClient::connect(tls, &cert, &[b"http/1.1"]);
        client.subscribe("/rooms/idle/events");
        idle.push(client);
    }
    assert!(common::wait_until(WAIT, || server
        .metrics()
        .sum("ringcast_subscribers")
        == IDLE as u64 + 2));
    let after = transports::rss_bytes(server.pid());
    let each = after.saturating_sub(before) / IDLE as u64;
    eprintln!("RSS {before} -> {after} B: {each} B per idle TLS subscriber");
    assert!(each < 48 * 1024, "{each} B per idle TLS subscriber");
    assert_eq!(handshakes(&server, "http1"), IDLE as u64 + 1);
}
