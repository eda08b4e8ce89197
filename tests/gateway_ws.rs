//! WebSocket on the shard's ring (issue 16), against the real binary: the upgrade and its
//! refusals, the echo route (`--ws-echo`) for text, binary, fragmented and split messages,
//! pings, the close codes, the keep-alive ping and idle close with short timers, TLS
//! (wss), a client that floods pings without reading, and connections, descriptors and
//! tickers back at their baseline after many connect/disconnect cycles.
//!
//! The client is `ws_client/` (hand-written, so it can also misbehave).

mod common;
mod transports;
mod ws_client;

use common::Server;
use std::time::{Duration, Instant};
use ws_client::{
    close_frame, frame, upgrade_request, Stream, WsClient, BINARY, CLOSE, CONTINUATION, PING, PONG,
    TEXT,
};

/// How long anything the server should do at once may take.
const WAIT: Duration = Duration::from_secs(5);

fn echo_server(extra: &[&str]) -> Server {
    let mut args = vec!["--shards", "2", "--ws-echo"];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// `name{…transport="T"…}` summed over shards.
fn by_transport(server: &Server, name: &str, transport: &str) -> u64 {
    transports::labelled(
        &server.metrics(),
        name,
        &format!("transport=\"{transport}\""),
    )
}

#[test]
fn handshake_refusals_get_their_status_reason_and_headers() {
    let server = echo_server(&[]);
    // (what is wrong, the request, status, a header the refusal carries, its reason)
    type Case<'a> = (&'a str, Vec<u8>, u16, Option<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "no key",
            upgrade_request("/ws/echo", "", Some("Sec-WebSocket-Key")),
            400,
            None,
            "sec-websocket-key must be base64 of 16 bytes",
        ),
        (
            "a key of 15 bytes",
            upgrade_request(
                "/ws/echo",
                "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAA\r\n",
                Some("Sec-WebSocket-Key"),
            ),
            400,
            None,
            "sec-websocket-key must be base64 of 16 bytes",
        ),
        (
            "version 12",
            upgrade_request(
                "/ws/echo",
                "Sec-WebSocket-Version: 12\r\n",
                Some("Sec-WebSocket-Version"),
            ),
            426,
            Some(("Sec-WebSocket-Version", "13")),
            "sec-websocket-version 13 required",
        ),
        (
            "no version",
            upgrade_request("/ws/echo", "", Some("Sec-WebSocket-Version")),
            426,
            Some(("Sec-WebSocket-Version", "13")),
            "sec-websocket-version 13 required",
        ),
        (
            "no Upgrade",
            upgrade_request("/ws/echo", "", Some("Upgrade")),
            426,
            Some(("Upgrade", "websocket")),
            "upgrade: websocket required",
        ),
        (
            "Upgrade: h2c",
            upgrade_request("/ws/echo", "Upgrade: h2c\r\n", Some("Upgrade")),
            426,
            Some(("Upgrade", "websocket")),
            "upgrade: websocket required",
        ),
        (
            "no Connection: upgrade",
            upgrade_request("/ws/echo", "Connection: keep-alive\r\n", Some("Connection")),
            400,
            None,
            "connection: upgrade required",
        ),
        (
            "two keys",
            upgrade_request(
                "/ws/echo",
                &format!("Sec-WebSocket-Key: {}\r\n", ws_client::KEY),
                None,
            ),
            400,
            None,
            "repeated sec-websocket-key header",
        ),
        (
            "a frame before the 101",
            [
                upgrade_request("/ws/echo", "", None),
                frame(true, TEXT, b"early", true),
            ]
            .concat(),
            400,
            None,
            "data sent before the handshake's answer",
        ),
    ];
    for (what, request, status, header, reason) in cases {
        let mut client = WsClient::connect_raw(server.addr);
        client.send(&request);
        assert_eq!(client.read_head(WAIT), status, "{what}: {}", client.head);
        if let Some((name, value)) = header {
            assert_eq!(
                client.header(name).as_deref(),
                Some(value),
                "{what}: {}",
                client.head
            );
        }
        assert_eq!(client.read_body(WAIT).trim_end(), reason, "{what}");
        assert!(client.closed_within(WAIT), "{what}: a refusal closes");
    }
    // Not GET: the route answers GET (and HEAD) only.
    let mut post = WsClient::connect_raw(server.addr);
    post.send(
        b"POST /ws/echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(post.read_head(WAIT), 405, "{}", post.head);
    let metrics = server.metrics();
    assert_eq!(metrics.sum("ringcast_websocket_upgrades_total"), 0);
    assert_eq!(metrics.sum("ringcast_websocket_connections"), 0);

    // Without --ws-echo the route does not exist.
    let plain = Server::start(&["--shards", "1"]);
    let mut client = WsClient::connect_raw(plain.addr);
    client.send(&upgrade_request("/ws/echo", "", None));
    assert_eq!(client.read_head(WAIT), 404, "{}", client.head);
}

#[test]
fn text_binary_fragmented_empty_big_and_split_messages_come_back() {
    let server = echo_server(&[]);
    let mut client = WsClient::open(server.addr, "/ws/echo");
    assert_eq!(
        by_transport(&server, "ringcast_websocket_connections", "http1"),
        1
    );
    assert_eq!(client.echo_text("hello"), "hello");
    assert_eq!(client.echo_text(""), "");
    assert_eq!(client.echo_text("héllo wörld ✓"), "héllo wörld ✓");

    let bytes: Vec<u8> = (0..=255).collect();
    client.send(&frame(true, BINARY, &bytes, true));
    let echo = client.next_data(WAIT);
    assert_eq!((echo.opcode, echo.payload), (BINARY, bytes));

    // Fragments, with a ping between them (answered at once, payload and all).
    client.send(&frame(false, TEXT, b"frag", true));
    client.send(&frame(true, PING, b"between", true));
    client.send(&frame(true, CONTINUATION, b"mented", true));
    let pong = client.next_frame(WAIT);
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (PONG, &b"between"[..])
    );
    assert_eq!(client.next_data(WAIT).text(), "fragmented");

    // 16-bit and 64-bit lengths, many receives.
    for len in [200, 70_000, 1 << 20] {
        let big: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        client.send(&frame(true, BINARY, &big, true));
        let echo = client.next_data(WAIT);
        assert_eq!(echo.payload.len(), len);
        assert!(echo.payload == big, "{len} bytes came back changed");
    }

    // Everything split one byte per write, the handshake included.
    let mut split = WsClient::connect_raw(server.addr);
    // (The 101 is read before the frame goes: a client waits for it.)
    for byte in upgrade_request("/ws/echo", "", None) {
        split.send(&[byte]);
    }
    assert_eq!(split.read_head(WAIT), 101, "{}", split.head);
    for byte in frame(true, TEXT, "split ✓".as_bytes(), true) {
        split.send(&[byte]);
    }
    assert_eq!(split.next_data(WAIT).text(), "split ✓");

    client.send(&close_frame(1000, "done"));
    let close = client.next_frame(WAIT);
    assert_eq!(close.close_code(), Some(1000));
    assert!(
        client.closed_within(WAIT),
        "the server closes TCP after the handshake"
    );
    drop(split);
    assert!(common::wait_until(WAIT, || {
        server.metrics().sum("ringcast_websocket_connections") == 0
    }));
    assert_eq!(
        by_transport(&server, "ringcast_websocket_upgrades_total", "http1"),
        2
    );
}

#[test]
fn close_codes_1000_echoed_1002_unmasked_1007_bad_utf8_1009_too_big() {
    let server = echo_server(&[]);
    // (what, frames sent, the server's close code)
    let cases: [(&str, Vec<u8>, u16); 6] = [
        ("a clean close", close_frame(1000, "bye"), 1000),
        ("an unmasked frame", frame(true, TEXT, b"hi", false), 1002),
        (
            "text that is not UTF-8",
            frame(true, TEXT, &[b'a', 0xff, b'b'], true),
            1007,
        ),
        (
            "a 17 MiB message announced",
            // The header alone (FIN binary, masked, 64-bit length, mask key): refused
            // before any payload is read.
            [0x82, 0xff]
                .into_iter()
                .chain((17u64 << 20).to_be_bytes())
                .chain([1, 2, 3, 4])
                .collect(),
            1009,
        ),
        ("a reserved opcode", frame(true, 0x3, b"", true), 1002),
        (
            "a close with a 1-byte payload",
            frame(true, CLOSE, &[3], true),
            1002,
        ),
    ];
    for (what, bytes, code) in cases {
        let mut client = WsClient::open(server.addr, "/ws/echo");
        client.send(&bytes);
        let close = client.next_data(WAIT);
        assert_eq!(close.opcode, CLOSE, "{what}: {close:?}");
        assert_eq!(close.close_code(), Some(code), "{what}: {:?}", close.text());
        if code != 1000 {
            // The server closed first. After a framing error it cannot read our close
            // (it waits for the peer to go, at most its close timeout): we go.
            let _ = client.try_send(&close_frame(code, ""));
            client.shutdown_write();
        }
        assert!(
            client.closed_within(WAIT),
            "{what}: TCP closed after the close"
        );
    }
    assert!(common::wait_until(WAIT, || {
        server.metrics().sum("ringcast_websocket_connections") == 0
    }));
}

#[test]
fn a_silent_client_is_pinged_then_closed_with_1001_and_its_ticker_released() {
    let server = echo_server(&["--ws-ping-interval", "0.3", "--ws-pong-timeout", "0.4"]);
    let baseline = server.metrics().sum("ringcast_tickers_live");
    let mut client = WsClient::open(server.addr, "/ws/echo");
    let opened = Instant::now();
    let ping = client.next_frame(WAIT);
    assert_eq!(ping.opcode, PING, "{ping:?}");
    assert!(
        opened.elapsed() >= Duration::from_millis(250),
        "pinged too early"
    );
    // Answered: the connection lives on, and is pinged again after another quiet spell.
    client.send(&frame(true, PONG, &ping.payload, true));
    let again = client.next_frame(WAIT);
    assert_eq!(again.opcode, PING, "{again:?}");
    // Not answered: closed with 1001 once the pong timeout passes.
    let unanswered = Instant::now();
    let close = client.next_frame(WAIT);
    assert_eq!(close.close_code(), Some(1001), "{:?}", close.payload);
    assert!(unanswered.elapsed() >= Duration::from_millis(300));
    client.send(&close_frame(1001, ""));
    assert!(client.closed_within(WAIT));
    assert!(
        common::wait_until(WAIT, || server.metrics().sum("ringcast_tickers_live")
            == baseline),
        "the connection's timer is released with it"
    );
}

#[test]
fn wss_echo_over_the_rings_tls_listener() {
    let cert = transports::TestCert::new();
    let mut args = cert.args();
    args.extend(["--tls-listen", "127.0.0.1:0", "--shards", "1", "--ws-echo"].map(String::from));
    let server = transports::start(&args);
    let tls = transports::addr_of(&server, "tls");
    let stream = transports::TlsClient::connect(tls, &cert, &[b"http/1.1"]).tls;
    let mut client = WsClient::over(Stream::Tls(Box::new(stream)));
    client.upgrade("/ws/echo");
    assert_eq!(
        by_transport(&server, "ringcast_websocket_connections", "tls"),
        1
    );
    assert_eq!(client.echo_text("over TLS"), "over TLS");
    let big: Vec<u8> = (0..300_000).map(|i| (i % 253) as u8).collect();
    client.send(&frame(true, BINARY, &big, true));
    let echo = client.next_data(WAIT);
    assert!(
        echo.payload == big,
        "a multi-record message came back changed"
    );
    client.send(&frame(true, PING, b"p", true));
    assert_eq!(client.next_frame(WAIT).opcode, PONG);
    // The close and the TLS close_notify at once: the close is still echoed.
    client.send_then_close_notify(&close_frame(1000, ""));
    assert_eq!(client.next_frame(WAIT).close_code(), Some(1000));
    assert!(client.closed_within(WAIT));
    assert!(common::wait_until(WAIT, || {
        by_transport(&server, "ringcast_websocket_connections", "tls") == 0
    }));
    assert_eq!(
        by_transport(&server, "ringcast_websocket_upgrades_total", "tls"),
        1
    );
}

#[test]
fn a_client_flooding_pings_without_reading_stalls_itself_not_the_server() {
    let server = Server::start(&["--shards", "1", "--ws-echo"]);
    let rss_before = transports::rss_bytes(server.pid());
    let tcp = common::connect_with_recv_buffer(server.addr, 4096);
    let mut flooder = WsClient::over(Stream::Plain(tcp));
    flooder.upgrade("/ws/echo");
    if let Stream::Plain(tcp) = &flooder.stream {
        tcp.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
    }
    // Pings the server must answer, never read: once its write queue is full it stops
    // reading, the socket buffers fill, and the flooder's writes block.
    let ping = frame(true, PING, &[7; 125], true);
    let burst: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * 512)
        .collect();
    let mut sent = 0usize;
    let blocked = loop {
        match flooder.try_send(&burst) {
            Ok(()) => sent += burst.len(),
            Err(_) => break true,
        }
        if sent > 256 << 20 {
            break false;
        }
    };
    assert!(
        blocked,
        "the server kept reading {sent} bytes of pings nobody reads the pongs of"
    );
    // Meanwhile the shard serves others.
    let mut other = WsClient::open(server.addr, "/ws/echo");
    assert_eq!(other.echo_text("still here"), "still here");
    let grown = transports::rss_bytes(server.pid()).saturating_sub(rss_before);
    assert!(grown < 32 << 20, "RSS grew {grown} bytes for one flooder");
    drop(flooder);
    drop(other);
    assert!(common::wait_until(WAIT, || {
        server.metrics().sum("ringcast_websocket_connections") == 0
    }));
}

#[test]
fn connections_descriptors_tickers_and_subscribers_come_back_to_baseline_after_2000_cycles() {
    const CYCLES: usize = 2000;
    // Echo, a room, a multiplexed connection with two rooms.
    const PATHS: [&str; 3] = ["/ws/echo", "/rooms/churn/ws", "/ws?rooms=churn,other"];
    let server = echo_server(&[]);
    let before = server.metrics();
    let (fds, tickers) = (
        before.sum("ringcast_fds_used"),
        before.sum("ringcast_tickers_live"),
    );
    let started = Instant::now();
    for cycle in 0..CYCLES {
        let path = PATHS[cycle % PATHS.len()];
        let mut client = WsClient::connect_raw(server.addr);
        client.send(&upgrade_request(path, "", None));
        if cycle % 5 == 4 {
            // Gone before reading the 101.
            continue;
        }
        assert_eq!(client.read_head(WAIT), 101);
        match cycle % 5 {
            0 => {
                if path == "/ws/echo" {
                    assert_eq!(client.echo_text("x"), "x");
                }
                client.send(&close_frame(1000, ""));
                // Its `subscribed` objects may come first.
                loop {
                    let frame = client.next_frame(WAIT);
                    if frame.opcode == CLOSE {
                        assert_eq!(frame.close_code(), Some(1000));
                        break;
                    }
                }
            }
            // Dropped without a close.
            1 => {}
            // Dropped halfway through a frame header.
            2 => client.send(&[0x81, 0xfe, 0x01]),
            // Dropped halfway through a message.
            _ => client.send(&frame(false, TEXT, b"half", true)),
        }
    }
    eprintln!("{CYCLES} cycles in {:?}", started.elapsed());
    assert!(
        common::wait_until(WAIT, || {
            let metrics = server.metrics();
            metrics.sum("ringcast_websocket_connections") == 0
                && metrics.sum("ringcast_subscribers") == 0
                && metrics.sum("ringcast_fds_used") == fds
                && metrics.sum("ringcast_tickers_live") == tickers
        }),
        "not back to baseline (fds {fds}, tickers {tickers}):\n{}",
        server.metrics().0
    );
    assert!(server.metrics().sum("ringcast_websocket_upgrades_total") >= (CYCLES * 4 / 5) as u64);
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

#[test]
fn only_allowed_origins_open_a_websocket_when_a_list_is_set() {
    let server = echo_server(&[
        "--ws-allowed-origins",
        "https://good.example,https://also.example:8443",
    ]);
    for (origin, status) in [
        ("Origin: https://evil.example\r\n", 403),
        ("Origin: https://good.example.evil\r\n", 403),
        ("Origin: HTTPS://GOOD.example\r\n", 101),
        ("Origin: https://also.example:8443\r\n", 101),
        // Not a browser: the token is the auth, not the origin.
        ("", 101),
    ] {
        let (client, got) = WsClient::try_open(server.addr, "/ws/echo", origin);
        assert_eq!(got, status, "{origin:?}: {}", client.head);
    }
}
