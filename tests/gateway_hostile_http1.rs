//! Hostile clients against the real `ringcast` binary (issue 14): HTTP/1.1 request semantics (cases 2–6).

mod common;
mod transports;

use common::{Client, Server, PATIENCE};
use std::io::Read;
use std::time::{Duration, Instant};

/// How soon an answer the server can give from the head alone must arrive: well under the
/// `--body-timeout` the tests set, so a server that waits for the body fails.
const AT_ONCE: Duration = Duration::from_secs(2);

/// Sends `request` on a fresh connection and reads one response within `within`.
fn answer(server: &Server, request: &[u8], within: Duration) -> (Client, common::Response) {
    let mut client = Client::connect(server.addr);
    client.stream.set_read_timeout(Some(within)).unwrap();
    client.send(request).unwrap();
    let response = client
        .read_response()
        .unwrap_or_else(|err| panic!("no answer within {within:?} to {request:?}: {err}"));
    client.stream.set_read_timeout(Some(PATIENCE)).unwrap();
    (client, response)
}

/// The seq part of the room's last id (0 before its first message).
fn last_id(server: &Server, room: &str) -> u64 {
    let last = &server.room(room)["last_id"];
    if last.is_null() {
        0
    } else {
        common::Id::of(last).seq
    }
}

/// Issue 14 case 2: with two `Content-Length` fields the last one won, so a front proxy that
/// takes the first and ringcast disagree on where the request ends (request smuggling); a
/// `+5` was read as 5; `Transfer-Encoding` beside `Content-Length` got 411 as if it were
/// alone. Each is answered 400 and the connection closed, nothing published.
#[test]
fn conflicting_content_lengths_are_refused_as_request_smuggling() {
    let server = Server::start(&["--shards", "1", "--body-timeout", "5"]);
    let smuggled = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    for head in [
        format!(
            "Content-Length: 5\r\nContent-Length: {}",
            5 + smuggled.len()
        ),
        format!(
            "Content-Length: {}\r\nContent-Length: 5",
            5 + smuggled.len()
        ),
        "Content-Length: 5, 6".to_owned(),
        "Content-Length: +5".to_owned(),
        "Content-Length: -5".to_owned(),
        "Content-Length: 5\r\nTransfer-Encoding: chunked".to_owned(),
        "Transfer-Encoding: chunked\r\nContent-Length: 5".to_owned(),
    ] {
        let request =
            format!("POST /rooms/s/messages HTTP/1.1\r\nHost: x\r\n{head}\r\n\r\nhello{smuggled}");
        let (mut client, response) = answer(&server, request.as_bytes(), AT_ONCE);
        assert_eq!(response.status, 400, "{head:?}: {response:?}");
        assert_eq!(response.header("connection"), Some("close"), "{head:?}");
        let rest = client.read_until_closed(PATIENCE);
        assert!(
            rest.is_empty(),
            "{head:?}: more after the refusal: {rest:?}"
        );
    }
    assert_eq!(last_id(&server, "s"), 0, "a refused request published");
    // A repeated identical value (or a list of them) names one length: accepted.
    for head in [
        "Content-Length: 5\r\nContent-Length: 5",
        "Content-Length: 5, 5",
    ] {
        let request = format!("POST /rooms/s/messages HTTP/1.1\r\nHost: x\r\n{head}\r\n\r\nhello");
        let (_, response) = answer(&server, request.as_bytes(), AT_ONCE);
        assert_eq!(response.status, 201, "{head:?}: {response:?}");
    }
    assert_eq!(last_id(&server, "s"), 2);
}

/// Issue 14 case 3: an HTTP/1.1 request with no `Host`, or with two, was served. RFC 9112
/// §3.2: 400. HTTP/1.0 needs none.
#[test]
fn an_http_1_1_request_without_exactly_one_host_is_refused() {
    let server = Server::start(&["--shards", "1"]);
    for request in [
        "GET /healthz HTTP/1.1\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n",
        "POST /rooms/h/messages HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
    ] {
        let (mut client, response) = answer(&server, request.as_bytes(), AT_ONCE);
        assert_eq!(response.status, 400, "{request:?}: {response:?}");
        assert!(response.text().contains("host"), "{response:?}");
        client.read_until_closed(PATIENCE);
    }
    assert_eq!(last_id(&server, "h"), 0);
    let (_, response) = answer(&server, b"GET /healthz HTTP/1.0\r\n\r\n", AT_ONCE);
    assert_eq!(response.status, 200, "{response:?}");
    let (_, response) = answer(&server, b"GET /healthz HTTP/1.1\r\nHost: \r\n\r\n", AT_ONCE);
    assert_eq!(
        response.status, 200,
        "an empty Host is allowed: {response:?}"
    );
}

/// Reads exactly the interim `100 Continue` (and nothing more) within `within`.
fn read_continue(client: &mut Client, within: Duration) -> std::io::Result<()> {
    client.stream.set_read_timeout(Some(within))?;
    let want = b"HTTP/1.1 100 Continue\r\n\r\n";
    let mut got = vec![0u8; want.len()];
    client.stream.read_exact(&mut got)?;
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
    client.stream.set_read_timeout(Some(PATIENCE))
}

/// Issue 14 case 4: `Expect: 100-continue` got no `100 Continue`, so a client waits (curl: one
/// second) before every body over 1 KiB. It comes once routing, method and size checks pass
/// and the body is not in yet; what would be refused is answered at once, body unread; other
/// expectations get 417.
#[test]
fn expect_100_continue_is_answered_when_the_body_will_be_read() {
    let server = Server::start(&["--shards", "1", "--body-timeout", "5"]);
    let mut client = Client::connect(server.addr);
    client
        .send(b"POST /rooms/e/messages HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        .unwrap();
    read_continue(&mut client, AT_ONCE).expect("a 100 Continue before the body");
    client.send(b"hello").unwrap();
    let response = client.read_response().unwrap();
    assert_eq!(response.status, 201, "{response:?}");
    // Keep-alive: the next request with its body already in gets no interim answer.
    client
        .send(b"POST /rooms/e/messages HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nworld")
        .unwrap();
    let response = client.read_response().unwrap();
    assert_eq!(response.status, 201, "{response:?}");
    assert_eq!(last_id(&server, "e"), 2);

    // Refused from the head: answered at once, no 100, body never sent.
    for (request, status) in [
        (
            "POST /healthz HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
            405,
        ),
        (
            "POST /nowhere HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
            404,
        ),
        (
            "POST /rooms/e/messages HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 99999999\r\n\r\n",
            413,
        ),
        (
            "POST /rooms/e/messages HTTP/1.1\r\nHost: x\r\nExpect: something-else\r\nContent-Length: 5\r\n\r\n",
            417,
        ),
    ] {
        let (mut client, response) = answer(&server, request.as_bytes(), AT_ONCE);
        assert_eq!(response.status, status, "{request:?}: {response:?}");
        client.read_until_closed(PATIENCE);
    }
    assert_eq!(last_id(&server, "e"), 2);
}

/// Issue 14 case 4 with the client that showed it: curl sends `Expect: 100-continue` for
/// large bodies (over 1 KiB in some versions, 1 MiB in others: asked for explicitly here) and
/// waits a second for the `100 Continue` before sending the body anyway.
#[test]
fn curl_posts_a_large_body_without_waiting_for_100_continue() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("curl not installed: skipped");
        return;
    }
    let server = Server::start(&["--shards", "1"]);
    let body = "x".repeat(4096);
    let url = format!("http://{}/rooms/c/messages", server.addr);
    let started = Instant::now();
    let out = std::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(["-H", "Expect: 100-continue", "--data-binary"])
        .arg(&body)
        .arg(&url)
        .output()
        .expect("run curl");
    let took = started.elapsed();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "201", "{out:?}");
    assert!(
        took < Duration::from_millis(800),
        "curl took {took:?}: it waited for a 100 Continue"
    );
}

/// Issue 14 case 5: HEAD on a GET route answered 405. RFC 9110 §9.3.2: the head GET would
/// get, no body. On the SSE route: the head, then close, no subscription.
#[test]
fn head_gets_the_get_head_without_a_body() {
    let server = Server::start(&["--shards", "1"]);
    let mut client = Client::connect(server.addr);
    client
        .send(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let head = client.read_head().unwrap();
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(head.header("content-length"), Some("3"), "GET's length");
    // No body followed: the next response on the connection starts right after the head.
    let response = client.request("GET", "/healthz", &[], b"");
    assert_eq!((response.status, response.text().as_str()), (200, "ok\n"));
    client
        .send(b"HEAD /rooms/hd HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let head = client.read_head().unwrap();
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(client.request("GET", "/healthz", &[], b"").status, 200);

    // The SSE route: the stream's head, then the end.
    let mut sse = Client::connect(server.addr);
    sse.send(b"HEAD /rooms/hd/events HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let head = sse.read_head().unwrap();
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
    let rest = sse.read_until_closed(PATIENCE);
    assert!(rest.is_empty(), "a body after HEAD: {rest:?}");
    assert_eq!(server.metrics().sum("ringcast_subscribers"), 0);
    assert_eq!(server.room("hd")["subscribers"], 0);

    // 405 names both.
    let (_, response) = answer(
        &server,
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        AT_ONCE,
    );
    assert_eq!(response.status, 405);
    assert_eq!(response.header("allow"), Some("GET, HEAD"), "{response:?}");
}

/// Issue 14 case 6: a GET declaring a body made the server read it (11 MiB, and 300 MiB over
/// TLS) until the body timeout. A route that takes no body refuses a non-zero one from the
/// head and closes, unread.
#[test]
fn a_body_on_a_route_that_takes_none_is_refused_from_the_head() {
    let server = Server::start(&["--shards", "1", "--body-timeout", "10"]);
    for request in [
        "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n",
        "GET /rooms/b/events HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n",
        "HEAD /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n",
    ] {
        let (mut client, response) = answer(&server, request.as_bytes(), AT_ONCE);
        assert!(
            matches!(response.status, 400 | 413),
            "{request:?}: {response:?}"
        );
        assert_eq!(response.header("connection"), Some("close"));
        client.read_until_closed(PATIENCE);
    }
    // A zero length is no body.
    let (_, response) = answer(
        &server,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        AT_ONCE,
    );
    assert_eq!(response.status, 200);
}

/// Issue 14 case 6 over TLS: a GET with `Content-Length: 10^12` read 300 MiB (RSS 35 → 721
/// MiB). Refused from the head; what the client sends after is not kept.
#[test]
fn a_tls_get_declaring_a_terabyte_is_refused_at_once_and_nothing_is_buffered() {
    let cert = transports::TestCert::new();
    let mut args = cert.args();
    args.extend(
        [
            "--tls-listen",
            "127.0.0.1:0",
            "--shards",
            "1",
            "--body-timeout",
            "10",
        ]
        .map(String::from),
    );
    let server = transports::start(&args);
    let tls = transports::addr_of(&server, "tls");
    let rss_before = transports::rss_bytes(server.pid());
    for length in ["1000000000000", "1000"] {
        let mut client = transports::TlsClient::connect(tls, &cert, &[b"http/1.1"]);
        client.tls.sock.set_read_timeout(Some(AT_ONCE)).unwrap();
        client
            .send(
                format!("GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n")
                    .as_bytes(),
            )
            .unwrap();
        let response = client.read_response().expect("an answer at once");
        assert!(matches!(response.status, 400 | 413), "{response:?}");
        // The client keeps sending; the server must not keep it (it may reset us).
        let chunk = vec![b'x'; 64 * 1024];
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(500) {
            if client.send(&chunk).is_err() {
                break;
            }
        }
        assert!(client.closed_within(PATIENCE));
    }
    // Over TLS too, a body that will be read is asked for with `100 Continue`.
    let mut client = transports::TlsClient::connect(tls, &cert, &[b"http/1.1"]);
    client.tls.sock.set_read_timeout(Some(AT_ONCE)).unwrap();
    client
        .send(b"POST /rooms/t/messages HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
        .unwrap();
    let interim = client.read_head().expect("100 Continue over TLS");
    assert_eq!(interim.status, 100);
    client.send(b"hi").unwrap();
    assert_eq!(client.read_response().unwrap().status, 201);
    let rss_after = transports::rss_bytes(server.pid());
    assert!(
        rss_after < rss_before + 8 * 1024 * 1024,
        "RSS {rss_before} -> {rss_after}"
    );
    let mut client = Client::connect(server.addr);
    assert_eq!(client.request("GET", "/healthz", &[], b"").status, 200);
}

/// A subscriber has nothing to say after its request, yet the shard read and dropped
/// whatever it sent, forever (a client could keep a shard busy reading junk). The HTTP/1.1
/// machine (conn::http1) drops at most `DISCARD_BYTES_MAX` (64 KiB) of it, then closes the
/// connection and the subscription goes.
#[test]
fn a_subscriber_that_floods_its_stream_is_closed() {
    let server = Server::start(&["--shards", "1"]);
    let mut client = Client::connect(server.addr);
    client
        .send(b"GET /rooms/flood/events HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let head = client.read_head().unwrap();
    assert_eq!(head.status, 200, "{head:?}");
    assert!(common::wait_until(PATIENCE, || {
        server.metrics().sum("ringcast_subscribers") == 1
    }));
    // 128 KiB of junk (the server may cut the connection before it is all sent).
    let junk = vec![b'x'; 16 * 1024];
    for _ in 0..8 {
        if client.send(&junk).is_err() {
            break;
        }
    }
    assert!(
        common::wait_until(PATIENCE, || {
            server.metrics().sum("ringcast_subscribers") == 0
        }),
        "the flooding subscriber is still subscribed"
    );
    client.read_until_closed(PATIENCE);
    // A well-behaved subscriber is not affected.
    let mut sse = server.subscribe("flood", None);
    let id = server.publish("flood", "still here");
    let event = sse.next_event(PATIENCE);
    assert_eq!((event.id, event.data.as_str()), (Some(id), "still here"));
}
