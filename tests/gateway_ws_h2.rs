//! WebSocket over HTTP/2 (RFC 8441 extended CONNECT, issue 16) against the real binary, on
//! the h2c and the TLS listeners: the SETTINGS announce ENABLE_CONNECT_PROTOCOL, a CONNECT
//! with `:protocol websocket` on `/ws/echo` is answered `200` (no key, no accept) and its
//! DATA frames carry RFC 6455 frames both ways through the shard's WebSocket driver (echo,
//! ping/pong, a message larger than a receive, close 1000, then the stream's end); CONNECTs
//! that are not for a WebSocket are refused with their status; a reset stream, a client's
//! end of stream and a dropped connection release the shard's connection (WebSocket
//! connections and tickers back to their baseline). Room WebSockets (`/rooms/{room}/ws`)
//! over HTTP/2 get a message published over HTTP/1.1, publish with an ack, resume, and
//! are refused by the same token checks as over HTTP/1.1; multiplexed ones (`/ws`)
//! subscribe by message, and the Origin allow-list applies; a viewer that stops reading is
//! cut as a socket is; many cycles leave nothing behind.
//!
//! The client is the `h2` crate (not the project's code), which can reset a stream and
//! send any `:protocol`; frames are built and parsed by `ws_client/`.

mod common;
mod transports;
mod ws_client;

use bytes::Bytes;
use common::Server;
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;
use transports::TestCert;
use ws_client::{close_frame, frame, parse_frame, Frame, BINARY, CLOSE, PING, PONG, TEXT};

/// How long anything the server should do at once may take.
const WAIT: Duration = Duration::from_secs(5);

type Client = h2::client::SendRequest<Bytes>;

/// An HTTP/2 connection over `io`; its driver runs on the test's runtime.
async fn h2_client<IO>(io: IO) -> Client
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (client, connection) = h2::client::handshake(io).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

async fn h2c(addr: SocketAddr) -> Client {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    h2_client(tcp).await
}

async fn h2_tls(addr: SocketAddr, cert: &TestCert) -> Client {
    h2_client(transports::tls_connect(addr, cert, &[b"h2"]).await).await
}

/// Whether the server's SETTINGS carried ENABLE_CONNECT_PROTOCOL = 1 (waits for them).
async fn extended_connect_enabled(client: &Client) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if client.is_extended_connect_protocol_enabled() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// One stream: its answer's status and headers, and its two halves.
struct Tunnel {
    status: u16,
    headers: http::HeaderMap,
    send: h2::SendStream<Bytes>,
    recv: h2::RecvStream,
    buf: Vec<u8>,
}

/// Sends a CONNECT for `path` (`protocol`: its `:protocol`, none for a classic CONNECT)
/// with `headers`, and waits for the answer's head.
async fn connect(
    client: &mut Client,
    path: &str,
    protocol: Option<&'static str>,
    headers: &[(&str, &str)],
) -> Tunnel {
    let mut builder = http::Request::builder().method(http::Method::CONNECT);
    builder = match protocol {
        Some(protocol) => builder
            .uri(format!("http://localhost{path}"))
            .extension(h2::ext::Protocol::from_static(protocol)),
        None => builder.uri("localhost:443"),
    };
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(()).unwrap();
    *client = client.clone().ready().await.expect("connection ready");
    let (response, send) = client.send_request(request, false).expect("request sent");
    let response = tokio::time::timeout(WAIT, response)
        .await
        .expect("an answer in time")
        .expect("an answer");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    Tunnel {
        status,
        headers,
        send,
        recv: response.into_body(),
        buf: Vec::new(),
    }
}

/// An extended CONNECT for a WebSocket on `path`.
async fn open_ws(client: &mut Client, path: &str) -> Tunnel {
    connect(
        client,
        path,
        Some("websocket"),
        &[("sec-websocket-version", "13")],
    )
    .await
}

impl Tunnel {
    fn send(&mut self, bytes: Vec<u8>) {
        self.send
            .send_data(Bytes::from(bytes), false)
            .expect("DATA sent");
    }

    /// The stream's next bytes; `None` at its end (or a reset).
    async fn data(&mut self) -> Option<Bytes> {
        match tokio::time::timeout(WAIT, self.recv.data())
            .await
            .expect("data or the end in time")
        {
            Some(Ok(data)) => {
                let _ = self.recv.flow_control().release_capacity(data.len());
                Some(data)
            }
            Some(Err(_)) | None => None,
        }
    }

    /// The next WebSocket frame; `None` once the stream ended.
    async fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some((frame, len)) = parse_frame(&self.buf) {
                self.buf.drain(..len);
                return Some(frame);
            }
            let data = self.data().await?;
            self.buf.extend_from_slice(&data);
        }
    }

    async fn expect_frame(&mut self) -> Frame {
        self.next_frame().await.expect("a frame, not the end")
    }

    /// The next text frame as JSON (pings answered).
    async fn next_json(&mut self) -> serde_json::Value {
        loop {
            let frame = self.expect_frame().await;
            match frame.opcode {
                PING => self.send(ws_client::frame(true, PONG, &frame.payload, true)),
                TEXT => return serde_json::from_str(&frame.text()).expect("JSON"),
                other => panic!("opcode {other}: {frame:?}"),
            }
        }
    }

    fn send_json(&mut self, value: &serde_json::Value) {
        self.send(frame(true, TEXT, value.to_string().as_bytes(), true));
    }

    /// The refusal's body as text.
    async fn body(&mut self) -> String {
        let mut out = Vec::new();
        while let Some(data) = self.data().await {
            out.extend_from_slice(&data);
        }
        String::from_utf8(out).unwrap()
    }
}

/// Open WebSockets over HTTP/2, summed over shards.
fn h2_websockets(metrics: &common::Metrics) -> u64 {
    transports::labelled(
        metrics,
        "ringcast_websocket_connections",
        "transport=\"h2\"",
    )
}

/// Waits until the server has `want` open WebSockets over HTTP/2 (the clients' tasks run
/// meanwhile); returns how many it has.
async fn wait_h2_websockets(server: &Server, want: u64) -> u64 {
    let metrics = transports::wait_metrics(server, WAIT, |m| h2_websockets(m) == want).await;
    h2_websockets(&metrics)
}

/// Echo, ping/pong, a large message and the close handshake on one tunnel.
async fn echo_session(mut ws: Tunnel) {
    assert_eq!(ws.status, 200);
    assert!(
        ws.headers.get("sec-websocket-accept").is_none(),
        "no accept over HTTP/2 (RFC 8441 §5): {:?}",
        ws.headers
    );
    assert!(ws.headers.get("content-length").is_none());

    ws.send(frame(true, TEXT, "hello over h2".as_bytes(), true));
    let echo = ws.expect_frame().await;
    assert_eq!((echo.opcode, echo.text()), (TEXT, "hello over h2".into()));

    ws.send(frame(true, PING, b"are you there", true));
    let pong = ws.expect_frame().await;
    assert_eq!(
        (pong.opcode, &pong.payload[..]),
        (PONG, &b"are you there"[..])
    );

    // Larger than any one receive (and than h2's 16 KiB frames): read in many steps.
    let big: Vec<u8> = (0..200_000u32).map(|n| n as u8).collect();
    ws.send(frame(true, BINARY, &big, true));
    let echo = ws.expect_frame().await;
    assert_eq!(echo.opcode, BINARY);
    assert!(echo.payload == big, "the echo of 200,000 bytes differs");

    ws.send(close_frame(1000, "bye"));
    let close = ws.expect_frame().await;
    assert_eq!(close.opcode, CLOSE);
    assert_eq!(close.close_code(), Some(1000));
    assert!(
        ws.next_frame().await.is_none(),
        "the stream ends after the close"
    );
}

#[test]
fn extended_connect_is_announced_and_echoes_over_h2c_and_tls() {
    let cert = TestCert::new();
    let mut args = cert.args();
    args.extend(
        [
            "--shards",
            "2",
            "--ws-echo",
            "--tls-listen",
            "127.0.0.1:0",
            "--h2c-listen",
            "127.0.0.1:0",
        ]
        .map(String::from),
    );
    let server = transports::start(&args);
    let tls = transports::addr_of(&server, "tls");
    let h2c_addr = transports::addr_of(&server, "h2c");
    transports::runtime().block_on(async {
        let mut plain = h2c(h2c_addr).await;
        assert!(
            extended_connect_enabled(&plain).await,
            "h2c SETTINGS carry ENABLE_CONNECT_PROTOCOL = 1"
        );
        let mut secure = h2_tls(tls, &cert).await;
        assert!(
            extended_connect_enabled(&secure).await,
            "TLS h2 SETTINGS carry ENABLE_CONNECT_PROTOCOL = 1"
        );

        // Two at once on each connection: streams are independent WebSockets.
        let first = open_ws(&mut plain, "/ws/echo").await;
        let second = open_ws(&mut plain, "/ws/echo").await;
        let third = open_ws(&mut secure, "/ws/echo").await;
        assert_eq!(
            wait_h2_websockets(&server, 3).await,
            3,
            "{}",
            server.metrics().0
        );
        let upgrades = transports::labelled(
            &server.metrics(),
            "ringcast_websocket_upgrades_total",
            "transport=\"h2\"",
        );
        assert_eq!(upgrades, 3);
        tokio::join!(
            echo_session(first),
            echo_session(second),
            echo_session(third)
        );
        // The connections stay usable for other requests.
        let mut again = open_ws(&mut secure, "/ws/echo").await;
        again.send(frame(true, TEXT, b"again", true));
        assert_eq!(again.expect_frame().await.text(), "again");
        drop(again);
        drop((plain, secure));
        assert_eq!(
            wait_h2_websockets(&server, 0).await,
            0,
            "{}",
            server.metrics().0
        );
    });
}

#[test]
fn connects_that_open_no_websocket_are_refused() {
    let server = Server::start(&["--ws-echo", "--h2c-listen", "127.0.0.1:0"]);
    let h2c_addr = transports::addr_of(&server, "h2c");
    let without_echo = Server::start(&["--h2c-listen", "127.0.0.1:0"]);
    let without_echo = transports::addr_of(&without_echo, "h2c");
    transports::runtime().block_on(async {
        let mut client = h2c(h2c_addr).await;
        // (what, path, :protocol, headers, status, the refusal's words)
        type Case<'a> = (
            &'a str,
            &'a str,
            Option<&'static str>,
            &'a [(&'a str, &'a str)],
            u16,
            &'a str,
        );
        let version: &[(&str, &str)] = &[("sec-websocket-version", "13")];
        let cases: &[Case] = &[
            (
                "a classic CONNECT",
                "",
                None,
                &[],
                501,
                "only as an extended CONNECT",
            ),
            (
                "another protocol",
                "/ws/echo",
                Some("webtransport"),
                version,
                501,
                "unsupported :protocol",
            ),
            (
                "no route",
                "/nowhere",
                Some("websocket"),
                version,
                404,
                "not found",
            ),
            (
                "a bad room name",
                "/rooms/a%20b/ws",
                Some("websocket"),
                version,
                400,
                "bad room name",
            ),
            (
                "an SSE route",
                "/rooms/a/events",
                Some("websocket"),
                version,
                405,
                "no WebSocket at this path",
            ),
            (
                "no version",
                "/ws/echo",
                Some("websocket"),
                &[],
                426,
                "sec-websocket-version 13 required",
            ),
            (
                "version 8",
                "/ws/echo",
                Some("websocket"),
                &[("sec-websocket-version", "8")],
                426,
                "sec-websocket-version 13 required",
            ),
        ];
        for (what, path, protocol, headers, status, words) in cases {
            let mut answer = connect(&mut client, path, *protocol, headers).await;
            assert_eq!(answer.status, *status, "{what}");
            let body = answer.body().await;
            assert!(body.contains(words), "{what}: {body:?}");
        }
        let mut answer = connect(&mut client, "/rooms/a/events", Some("websocket"), version).await;
        assert_eq!(answer.status, 405);
        assert_eq!(answer.headers["allow"], "GET");
        answer.body().await;

        // The echo route without --ws-echo: the shard's own 404.
        let mut other = h2c(without_echo).await;
        let mut answer = open_ws(&mut other, "/ws/echo").await;
        assert_eq!(answer.status, 404);
        answer.body().await;

        // A GET on a WebSocket route over HTTP/2 is no upgrade.
        let request = http::Request::get("http://localhost/ws/echo")
            .body(())
            .unwrap();
        client = client.ready().await.unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 400);

        // After all that the connection still opens WebSockets.
        let mut ws = open_ws(&mut client, "/ws/echo").await;
        assert_eq!(ws.status, 200);
        ws.send(frame(true, TEXT, b"still here", true));
        assert_eq!(ws.expect_frame().await.text(), "still here");
    });
    let refusals = transports::labelled(
        &server.metrics(),
        "ringcast_refusals_total",
        "reason=\"method_not_allowed\"",
    );
    assert!(refusals >= 4, "{}", server.metrics().0);
}

#[test]
fn resets_ends_and_dropped_connections_release_the_shard_s_connections() {
    let server = Server::start(&[
        "--shards",
        "2",
        "--ws-echo",
        "--h2c-listen",
        "127.0.0.1:0",
        "--max-streams-per-conn",
        "20",
    ]);
    let h2c_addr = transports::addr_of(&server, "h2c");
    let tickers = server.metrics().sum("ringcast_tickers_live");
    transports::runtime().block_on(async {
        let mut client = h2c(h2c_addr).await;
        let mut tunnels = Vec::new();
        for _ in 0..20 {
            let mut ws = open_ws(&mut client, "/ws/echo").await;
            assert_eq!(ws.status, 200);
            ws.send(frame(true, TEXT, b"up", true));
            assert_eq!(ws.expect_frame().await.text(), "up");
            tunnels.push(ws);
        }
        assert_eq!(wait_h2_websockets(&server, 20).await, 20);
        // The 21st holds a stream like a subscription: past --max-streams-per-conn.
        let mut over = open_ws(&mut client, "/ws/echo").await;
        assert_eq!(over.status, 429);
        over.body().await;

        // Reset, mid-message for some (a frame's first half sent).
        for (n, ws) in tunnels.iter_mut().enumerate().take(10) {
            if n % 2 == 0 {
                let half = frame(true, TEXT, &[b'x'; 300], true);
                ws.send(half[..150].to_vec());
            }
            ws.send.send_reset(h2::Reason::CANCEL);
        }
        assert_eq!(wait_h2_websockets(&server, 10).await, 10, "resets release");
        // The client's end of stream without a close: the shard closes too, and ends its
        // side of the stream.
        for ws in tunnels.iter_mut().skip(10).take(5) {
            ws.send.send_data(Bytes::new(), true).unwrap();
        }
        for ws in tunnels.iter_mut().skip(10).take(5) {
            assert!(ws.next_frame().await.is_none(), "the server's side ends");
        }
        assert_eq!(wait_h2_websockets(&server, 5).await, 5, "ends release");
        // Places freed: the connection opens WebSockets again.
        let mut ws = open_ws(&mut client, "/ws/echo").await;
        assert_eq!(ws.status, 200);
        ws.send(frame(true, TEXT, b"again", true));
        assert_eq!(ws.expect_frame().await.text(), "again");
        tunnels.push(ws);
        assert_eq!(wait_h2_websockets(&server, 6).await, 6);
    });
    // The runtime is gone: the connection with the last six dropped without a word.
    let gone = transports::runtime().block_on(wait_h2_websockets(&server, 0));
    assert_eq!(gone, 0, "a dropped connection releases");
    assert!(
        common::wait_until(WAIT, || server.metrics().sum("ringcast_tickers_live")
            == tickers),
        "tickers back at their baseline: {}",
        server.metrics().0
    );
}

#[test]
fn room_websockets_over_h2_get_messages_publish_resume_and_are_authorized() {
    let cert = TestCert::new();
    let mut args = cert.args();
    args.extend(
        [
            "--shards",
            "2",
            "--tls-listen",
            "127.0.0.1:0",
            "--h2c-listen",
            "127.0.0.1:0",
            "--subscribe-key",
            "hs256:sub-secret",
            "--private-rooms",
            "private-*",
        ]
        .map(String::from),
    );
    let server = transports::start(&args);
    let tls = transports::addr_of(&server, "tls");
    let h2c_addr = transports::addr_of(&server, "h2c");
    transports::runtime().block_on(async {
        let mut plain = h2c(h2c_addr).await;
        let mut secure = h2_tls(tls, &cert).await;
        let mut viewers = vec![
            open_ws(&mut plain, "/rooms/lobby/ws").await,
            open_ws(&mut secure, "/rooms/lobby/ws").await,
        ];
        for viewer in &mut viewers {
            assert_eq!(viewer.status, 200);
            assert_eq!(
                viewer.next_json().await,
                json!({"type": "subscribed", "room": "lobby"})
            );
        }
        assert_eq!(wait_h2_websockets(&server, 2).await, 2);

        // Published over HTTP/1.1, received over HTTP/2 in exactly the agreed shape.
        let id = server.publish("lobby", "hello over h2");
        for viewer in &mut viewers {
            let message = viewer.next_json().await;
            assert_eq!(
                message,
                json!({"room": "lobby", "id": message["id"], "data": "hello over h2"})
            );
            assert_eq!(common::Id::of(&message["id"]), id);
        }

        // Published over the HTTP/2 WebSocket itself: the ack, and the message to both.
        viewers[0]
            .send_json(&json!({"type": "publish", "room": "lobby", "data": "from h2", "ref": 7}));
        let mut ack = None;
        let mut data = None;
        while ack.is_none() || data.is_none() {
            let value = viewers[0].next_json().await;
            if value["type"] == "ack" {
                ack = Some(value);
            } else {
                data = Some(value);
            }
        }
        let (ack, data) = (ack.unwrap(), data.unwrap());
        assert_eq!(ack["ref"], 7, "{ack}");
        assert_eq!(ack["id"], data["id"], "{ack} {data}");
        assert_eq!(data["data"], "from h2");
        assert_eq!(viewers[1].next_json().await["data"], "from h2");

        // Resume after the first message: the second comes again.
        let mut resumed = open_ws(&mut plain, &format!("/rooms/lobby/ws?last_event_id={id}")).await;
        assert_eq!(resumed.status, 200);
        let mut seen = Vec::new();
        while seen.len() < 2 {
            seen.push(resumed.next_json().await);
        }
        assert_eq!(seen[0]["type"], "subscribed", "{seen:?}");
        assert_eq!(seen[1]["data"], "from h2", "{seen:?}");

        // A private room: refused with the HTTP/1.1 statuses, before any WebSocket.
        let mut anonymous = open_ws(&mut plain, "/rooms/private-a/ws").await;
        assert_eq!(anonymous.status, 401);
        assert!(anonymous.headers.get("www-authenticate").is_some());
        anonymous.body().await;
        let token = hs256_subscribe("private-a");
        let mut member = open_ws(&mut secure, &format!("/rooms/private-a/ws?token={token}")).await;
        assert_eq!(member.status, 200);
        assert_eq!(member.next_json().await["type"], "subscribed");

        drop((viewers, resumed, member));
        assert_eq!(
            wait_h2_websockets(&server, 0).await,
            0,
            "{}",
            server.metrics().0
        );
    });
}

/// A subscribe token (HS256, `sub-secret`) for `room`, valid ten minutes.
fn hs256_subscribe(room: &str) -> String {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    encode(
        &Header::new(Algorithm::HS256),
        &json!({"exp": exp, "rooms": [room]}),
        &EncodingKey::from_secret(b"sub-secret").unwrap(),
    )
    .unwrap()
}

#[test]
fn an_h2_viewer_that_stops_reading_is_cut_like_a_socket_while_others_get_everything() {
    let server = Server::start(&[
        "--shards",
        "1",
        "--history",
        "16",
        "--h2c-listen",
        "127.0.0.1:0",
    ]);
    let h2c_addr = transports::addr_of(&server, "h2c");
    transports::runtime().block_on(async {
        // Each on its own connection: the stuck one's window is its connection's too.
        let mut stuck_client = h2c(h2c_addr).await;
        let mut stuck = open_ws(&mut stuck_client, "/rooms/slow/ws").await;
        assert_eq!(stuck.next_json().await["type"], "subscribed");
        let mut reader_client = h2c(h2c_addr).await;
        let mut reader = open_ws(&mut reader_client, "/rooms/slow/ws").await;
        assert_eq!(reader.next_json().await["type"], "subscribed");
        let data = "y".repeat(32 * 1024);
        for _ in 0..200 {
            let id = server.publish("slow", &data);
            let message = reader.next_json().await;
            assert_eq!(common::Id::of(&message["id"]), id);
        }
        let metrics = transports::wait_metrics(&server, WAIT, |m| {
            m.sum("ringcast_slow_consumer_cuts_total") == 1 && h2_websockets(m) == 1
        })
        .await;
        assert_eq!(
            metrics.sum("ringcast_slow_consumer_cuts_total"),
            1,
            "{}",
            metrics.0
        );
        assert_eq!(h2_websockets(&metrics), 1, "the stuck one is released");
        // The stuck viewer reads now: what was sent before the cut, then the end (with
        // `lagged` and 1013 if its last write could still go) — never all the messages.
        let mut messages = 0;
        while let Some(frame) = stuck.next_frame().await {
            if frame.opcode == CLOSE {
                assert_eq!(frame.close_code(), Some(1013));
                break;
            }
            let value: serde_json::Value = serde_json::from_slice(&frame.payload).unwrap();
            if value.get("type").is_none() {
                messages += 1;
            }
        }
        assert!(messages < 200, "the stuck viewer was never cut");
        // The reader is unaffected.
        let id = server.publish("slow", "after");
        assert_eq!(common::Id::of(&reader.next_json().await["id"]), id);
    });
}

#[test]
fn tickers_connections_and_websockets_come_back_to_baseline_after_many_h2_cycles() {
    const CYCLES: usize = 600;
    let server = Server::start(&["--shards", "2", "--ws-echo", "--h2c-listen", "127.0.0.1:0"]);
    let h2c_addr = transports::addr_of(&server, "h2c");
    // Not descriptors: the companion's runtimes open theirs as they start, which may be
    // after this; the client connections are counted as h2 connections instead.
    let tickers = server.metrics().sum("ringcast_tickers_live");
    transports::runtime().block_on(async {
        // Four connections, 150 WebSockets each: within a connection's stream pace (a
        // burst of 232 sessions by default, companion/bridge.rs), which refuses a client
        // opening WebSockets on one connection faster than that.
        let mut clients = [
            h2c(h2c_addr).await,
            h2c(h2c_addr).await,
            h2c(h2c_addr).await,
            h2c(h2c_addr).await,
        ];
        for cycle in 0..CYCLES {
            let client = &mut clients[cycle % clients.len()];
            let mut ws = open_ws(client, "/ws/echo").await;
            assert_eq!(ws.status, 200, "cycle {cycle}");
            ws.send(frame(true, TEXT, b"x", true));
            assert_eq!(ws.expect_frame().await.text(), "x");
            // Three ways to end: the close handshake, a reset, the client's end of stream.
            match cycle % 3 {
                0 => {
                    ws.send(close_frame(1000, ""));
                    assert_eq!(ws.expect_frame().await.close_code(), Some(1000));
                    assert!(ws.next_frame().await.is_none());
                }
                1 => ws.send.send_reset(h2::Reason::CANCEL),
                _ => {
                    ws.send.send_data(Bytes::new(), true).unwrap();
                    assert!(ws.next_frame().await.is_none());
                }
            }
        }
        assert_eq!(wait_h2_websockets(&server, 0).await, 0);
        let upgrades = transports::labelled(
            &server.metrics(),
            "ringcast_websocket_upgrades_total",
            "transport=\"h2\"",
        );
        assert_eq!(upgrades, CYCLES as u64);
    });
    assert!(
        common::wait_until(WAIT, || {
            let metrics = server.metrics();
            metrics.sum("ringcast_tickers_live") == tickers
                && transports::connections(&metrics, "h2") == 0
                && h2_websockets(&metrics) == 0
        }),
        "tickers {tickers} at the start: {}",
        server.metrics().0
    );
}

#[test]
fn multiplexed_websockets_over_h2_subscribe_by_message_and_origins_are_checked() {
    let server = Server::start(&[
        "--shards",
        "2",
        "--h2c-listen",
        "127.0.0.1:0",
        "--ws-allowed-origins",
        "https://live.example",
    ]);
    let h2c_addr = transports::addr_of(&server, "h2c");
    transports::runtime().block_on(async {
        let mut client = h2c(h2c_addr).await;
        // The Origin allow-list, as for the HTTP/1.1 handshake.
        let mut foreign = connect(
            &mut client,
            "/ws",
            Some("websocket"),
            &[
                ("sec-websocket-version", "13"),
                ("origin", "https://evil.example"),
            ],
        )
        .await;
        assert_eq!(foreign.status, 403);
        assert!(foreign.body().await.contains("origin not allowed"));
        let mut ws = connect(
            &mut client,
            "/ws?rooms=a",
            Some("websocket"),
            &[
                ("sec-websocket-version", "13"),
                ("origin", "https://LIVE.example"),
            ],
        )
        .await;
        assert_eq!(ws.status, 200);
        assert_eq!(
            ws.next_json().await,
            json!({"type": "subscribed", "room": "a"})
        );
        ws.send_json(&json!({"type": "subscribe", "room": "b"}));
        assert_eq!(
            ws.next_json().await,
            json!({"type": "subscribed", "room": "b"})
        );
        for room in ["a", "b"] {
            let data = format!("to {room}");
            let id = server.publish(room, &data);
            let message = ws.next_json().await;
            assert_eq!(
                message,
                json!({"room": room, "id": message["id"], "data": data})
            );
            assert_eq!(common::Id::of(&message["id"]), id);
        }
        ws.send_json(&json!({"type": "unsubscribe", "room": "a"}));
        assert_eq!(
            ws.next_json().await,
            json!({"type": "unsubscribed", "room": "a"})
        );
        ws.send(close_frame(1000, ""));
        assert_eq!(ws.next_frame().await.unwrap().close_code(), Some(1000));
        assert!(ws.next_frame().await.is_none());
        assert_eq!(wait_h2_websockets(&server, 0).await, 0);
    });
}

#[test]
fn a_flood_of_connects_reset_before_their_answer_leaves_nothing_behind() {
    let server = Server::start(&["--shards", "2", "--ws-echo", "--h2c-listen", "127.0.0.1:0"]);
    let h2c_addr = transports::addr_of(&server, "h2c");
    // Not descriptors: the companion's runtimes open theirs as they start, which may be
    // after this; connections are counted by transport instead.
    let before = server.metrics();
    let (tickers, connections) = (
        before.sum("ringcast_tickers_live"),
        before.sum("ringcast_connections"),
    );
    transports::runtime().block_on(async {
        // CVE-2023-44487's shape with extended CONNECTs: each reset at once, no answer
        // awaited. hyper may end the connection for it (GOAWAY); either way the server
        // keeps nothing of them.
        let mut client = h2c(h2c_addr).await;
        let mut sent = 0;
        for _ in 0..2000 {
            let Ok(ready) = client.clone().ready().await else {
                break; // the server ended the connection
            };
            client = ready;
            let request = http::Request::builder()
                .method(http::Method::CONNECT)
                .uri("http://localhost/ws/echo")
                .header("sec-websocket-version", "13")
                .extension(h2::ext::Protocol::from_static("websocket"))
                .body(())
                .unwrap();
            let Ok((_, mut send)) = client.send_request(request, false) else {
                break;
            };
            send.send_reset(h2::Reason::CANCEL);
            sent += 1;
        }
        assert!(sent > 0);
        drop(client);
        assert_eq!(wait_h2_websockets(&server, 0).await, 0);
        // A new connection is served as ever.
        let mut fresh = h2c(h2c_addr).await;
        let mut ws = open_ws(&mut fresh, "/ws/echo").await;
        assert_eq!(ws.status, 200);
        ws.send(frame(true, TEXT, b"after the flood", true));
        assert_eq!(ws.expect_frame().await.text(), "after the flood");
    });
    assert!(
        common::wait_until(WAIT, || {
            let metrics = server.metrics();
            metrics.sum("ringcast_tickers_live") == tickers
                && h2_websockets(&metrics) == 0
                && metrics.sum("ringcast_connections") == connections
        }),
        "tickers {tickers} and connections {connections} at the start: {}",
        server.metrics().0
    );
}

#[test]
fn a_drain_closes_h2_websockets_with_1001_and_ends_their_streams() {
    let mut server = Server::start(&[
        "--shards",
        "2",
        "--drain-timeout",
        "3",
        "--ws-echo",
        "--h2c-listen",
        "127.0.0.1:0",
    ]);
    let h2c_addr = transports::addr_of(&server, "h2c");
    let runtime = transports::runtime();
    runtime.block_on(async {
        let mut client = h2c(h2c_addr).await;
        let mut viewer = open_ws(&mut client, "/rooms/bye/ws").await;
        assert_eq!(viewer.next_json().await["type"], "subscribed");
        let mut echo = open_ws(&mut client, "/ws/echo").await;
        assert_eq!(echo.status, 200);
        let id = server.publish("bye", "last words");
        server.signal(libc::SIGTERM);
        // What was accepted before the drain is delivered, then the close, then the end.
        let message = viewer.next_json().await;
        assert_eq!(common::Id::of(&message["id"]), id);
        let close = viewer.expect_frame().await;
        assert_eq!((close.opcode, close.close_code()), (CLOSE, Some(1001)));
        assert!(viewer.next_frame().await.is_none(), "the stream ends");
        let close = echo.expect_frame().await;
        assert_eq!((close.opcode, close.close_code()), (CLOSE, Some(1001)));
        echo.send(close_frame(1001, ""));
        assert!(echo.next_frame().await.is_none(), "the stream ends");
    });
    drop(runtime);
    assert!(
        server
            .wait_exit(WAIT)
            .is_some_and(|status| status.success()),
        "the gateway exits once its WebSockets left:\n{}",
        server.log()
    );
}
