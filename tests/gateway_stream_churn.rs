//! Stream churn on one HTTP/2 or HTTP/3 connection ("rapid reset", CVE-2023-44487) against
//! the real binary: a client opening subscriptions and resetting (HTTP/2) or stopping
//! (HTTP/3) each once its head arrived, back to back on one connection, made a full
//! subscribe each (the protocol's stream limit only bounds streams open at once). Past the
//! connection's stream pace (2 × (`--max-streams-per-conn` + 16) at once, 10 a second) a new
//! stream gets 429 + `Retry-After` before any work, counted as
//! `ringcast_refusals_total{reason="stream_rate"}`; the connection and its other streams
//! stay, and a tick later it is served again. Requests whose answer ended are not counted
//! (a load generator's loop is never refused); requests reset before their answer are.
//!
//! The clients are the `h2` crate (which resets a stream when its handles are dropped) and
//! `h3` + quinn, not the project's code.

mod common;
mod transports;

use bytes::{Buf, Bytes};
use common::Server;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use transports::TestCert;

/// How long anything the server should do at once may take.
const WAIT: Duration = Duration::from_secs(5);
/// `--max-streams-per-conn` of these tests: the protocol's stream limit is 4 + 16 = 20 and
/// the pace's burst twice that.
const STREAMS_PER_CONN: &str = "4";
const BURST: usize = 40;
/// The pace's tick (10 a second): one stream earned per tick.
const TICK: Duration = Duration::from_millis(100);
/// More streams than the burst plus what a slow machine earns while making them.
const ATTEMPTS_MAX: usize = 400;

fn stream_rate_refusals(server: &Server) -> u64 {
    transports::labelled(
        &server.metrics(),
        "ringcast_refusals_total",
        "reason=\"stream_rate\"",
    )
}

/// Streams a client may have been given beyond the burst in `elapsed` (one a tick, and one
/// for the tick it started in).
fn earned(elapsed: Duration) -> usize {
    (elapsed.as_millis() / TICK.as_millis()) as usize + 1
}

// --- HTTP/2 ---

type H2 = h2::client::SendRequest<Bytes>;

async fn h2c(addr: SocketAddr) -> H2 {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

fn h2_request(method: &str, path: &str) -> http::Request<()> {
    http::Request::builder()
        .method(method)
        .uri(format!("http://localhost{path}"))
        .body(())
        .unwrap()
}

/// Sends a bodiless `GET path`; its response (head, and the body to read or drop).
async fn h2_get(client: &mut H2, path: &str) -> http::Response<h2::RecvStream> {
    let mut ready = client.clone().ready().await.expect("h2 connection ready");
    let (response, _) = ready
        .send_request(h2_request("GET", path), true)
        .expect("h2 request");
    *client = ready;
    tokio::time::timeout(WAIT, response)
        .await
        .expect("an answer in time")
        .expect("h2 response")
}

async fn h2_body(response: http::Response<h2::RecvStream>) -> String {
    let mut body = response.into_body();
    let mut text = Vec::new();
    while let Some(data) = body.data().await {
        let data = data.expect("h2 body");
        let _ = body.flow_control().release_capacity(data.len());
        text.extend_from_slice(&data);
    }
    String::from_utf8(text).unwrap()
}

/// Reads an SSE body until it carries `data: want`.
async fn h2_expect_event(body: &mut h2::RecvStream, want: &str) {
    let needle = format!("data: {want}\n");
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !seen.contains(&needle) {
        let data = tokio::time::timeout_at(deadline, body.data())
            .await
            .unwrap_or_else(|_| panic!("no {want:?} in time; got {seen:?}"))
            .expect("the stream stays")
            .expect("h2 body");
        let _ = body.flow_control().release_capacity(data.len());
        seen.push_str(&String::from_utf8_lossy(&data));
    }
}

/// Sends a bodiless `GET path`; its response, or why there is none (the connection went
/// away, or refused the stream).
async fn h2_try_get(
    client: &mut H2,
    path: &str,
) -> Result<http::Response<h2::RecvStream>, h2::Error> {
    let mut ready = client.clone().ready().await?;
    let (response, _) = ready.send_request(h2_request("GET", path), true)?;
    *client = ready;
    tokio::time::timeout(WAIT, response)
        .await
        .expect("an answer in time")
}

fn h2_server() -> (Server, SocketAddr) {
    let server = Server::start(&[
        "--shards",
        "1",
        "--h2c-listen",
        "127.0.0.1:0",
        "--max-streams-per-conn",
        STREAMS_PER_CONN,
    ]);
    let h2c = transports::addr_of(&server, "h2c");
    (server, h2c)
}

/// Subscribe, read the head (the subscribe work is done), reset; again and again on one
/// connection: past the burst the next stream gets 429 with `Retry-After`, the connection's
/// other subscription still gets its messages, and a tick later it is served again.
#[test]
fn an_h2_subscribe_and_reset_loop_is_refused_past_the_burst_and_the_connection_stays() {
    let (server, h2c_addr) = h2_server();
    transports::runtime().block_on(async {
        let mut client = h2c(h2c_addr).await;
        let witness = h2_get(&mut client, "/rooms/kept/events").await;
        assert_eq!(witness.status(), 200);
        let mut witness = witness.into_body();
        let started = Instant::now();
        let mut served = 0;
        let mut refused = None;
        for _ in 0..ATTEMPTS_MAX {
            let response = h2_get(&mut client, "/rooms/churn/events").await;
            if response.status() == 200 {
                served += 1;
                drop(response); // RST_STREAM(CANCEL): the body's handles are gone
                continue;
            }
            refused = Some(response);
            break;
        }
        let elapsed = started.elapsed();
        let refused = refused.unwrap_or_else(|| {
            panic!("{served} subscribe-and-reset streams in {elapsed:?}, none refused")
        });
        // The witness took one of the burst.
        assert!(
            served >= BURST - 1 && served <= BURST - 1 + earned(elapsed),
            "{served} served in {elapsed:?}"
        );
        assert_eq!(refused.status(), 429);
        assert_eq!(
            refused.headers().get("retry-after").map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
        assert_eq!(
            h2_body(refused).await,
            "too many new streams on this connection\n"
        );
        assert_eq!(stream_rate_refusals(&server), 1);
        // The connection and its other stream stay.
        server.publish("kept", "still here");
        h2_expect_event(&mut witness, "still here").await;
        // A tick later one more stream is served on the same connection.
        tokio::time::sleep(TICK + TICK / 2).await;
        let again = h2_get(&mut client, "/rooms/churn/events").await;
        assert_eq!(again.status(), 200);
    });
}

/// Requests whose answer ended give their place in the pace back: 3 × the burst of them
/// on one connection are all served. Requests reset before their answer (a POST whose body
/// never comes) keep theirs: past the burst the connection's next request gets 429.
#[test]
fn h2_requests_answered_are_never_refused_but_requests_reset_before_their_answer_are() {
    let (server, h2c_addr) = h2_server();
    transports::runtime().block_on(async {
        let mut client = h2c(h2c_addr).await;
        for n in 0..3 * BURST {
            let response = h2_get(&mut client, "/healthz").await;
            assert_eq!(response.status(), 200, "request {n}");
            h2_body(response).await;
        }
        assert_eq!(stream_rate_refusals(&server), 0);
        // Rounds of 10 POSTs whose body never comes; a GET after them is answered once
        // they were all accepted (in order); then the 10 are reset.
        let started = Instant::now();
        let mut abandoned = 0;
        let mut refused = None;
        for _ in 0..ATTEMPTS_MAX / 10 {
            let mut posts = Vec::new();
            for _ in 0..10 {
                let mut ready = client.clone().ready().await.expect("h2 connection ready");
                let mut request = h2_request("POST", "/rooms/a/messages");
                request
                    .headers_mut()
                    .insert("content-length", http::HeaderValue::from_static("10"));
                let (response, send) = ready.send_request(request, false).expect("h2 request");
                client = ready;
                posts.push((response, send));
            }
            let sentinel = h2_get(&mut client, "/healthz").await;
            for (_, mut send) in posts {
                send.send_reset(h2::Reason::CANCEL);
            }
            if sentinel.status() != 200 {
                refused = Some(sentinel);
                break;
            }
            h2_body(sentinel).await;
            abandoned += 10;
        }
        let elapsed = started.elapsed();
        let refused = refused.unwrap_or_else(|| {
            panic!("{abandoned} requests reset before their answer in {elapsed:?}, none refused")
        });
        assert_eq!(refused.status(), 429);
        assert!(
            abandoned + 10 >= BURST && abandoned <= BURST + earned(elapsed),
            "refused after {abandoned} reset in {elapsed:?}"
        );
        assert!(stream_rate_refusals(&server) >= 1);
        // The connection stays: a tick later it is answered again.
        tokio::time::sleep(TICK + TICK / 2).await;
        assert_eq!(h2_get(&mut client, "/healthz").await.status(), 200);
    });
}

/// A client that goes on opening streams as fast as they are refused: once its refusals
/// ran out too (a burst's worth, paced alike) the connection gets GOAWAY; the streams it
/// holds finish as usual (the subscription still gets its messages).
#[test]
fn an_h2_client_going_on_far_past_the_pace_gets_goaway_and_its_open_stream_stays() {
    let (server, h2c_addr) = h2_server();
    transports::runtime().block_on(async {
        let mut client = h2c(h2c_addr).await;
        let witness = h2_get(&mut client, "/rooms/kept/events").await;
        assert_eq!(witness.status(), 200);
        let mut witness = witness.into_body();
        let started = Instant::now();
        let (mut served, mut refused, mut gone) = (0, 0, None);
        for _ in 0..10 * ATTEMPTS_MAX {
            match h2_try_get(&mut client, "/rooms/churn/events").await {
                Ok(response) if response.status() == 200 => served += 1,
                Ok(response) => {
                    assert_eq!(response.status(), 429);
                    refused += 1;
                }
                Err(err) => {
                    gone = Some(err);
                    break;
                }
            }
        }
        let elapsed = started.elapsed();
        let gone = gone.unwrap_or_else(|| {
            panic!("{served} served and {refused} refused in {elapsed:?}, the connection stays")
        });
        assert!(
            gone.is_go_away() || gone.is_reset(),
            "GOAWAY (or a stream refused after it): {gone:?}"
        );
        assert!(
            served >= BURST - 1 && served <= BURST - 1 + earned(elapsed),
            "{served} served in {elapsed:?}"
        );
        // The refusals' own burst, then the one that ran them out.
        assert!(
            refused > BURST && refused <= BURST + 1 + 2 * earned(elapsed),
            "{refused} refused in {elapsed:?}"
        );
        assert_eq!(stream_rate_refusals(&server), refused as u64);
        server.publish("kept", "after the GOAWAY");
        h2_expect_event(&mut witness, "after the GOAWAY").await;
    });
}

/// A POST whose stream the client reset before its body was whole was published with an
/// empty body (a body read error was taken for an empty body). Nothing reaches the shard.
#[test]
fn an_h2_post_reset_before_its_body_is_whole_is_not_published() {
    let (server, h2c_addr) = h2_server();
    transports::runtime().block_on(async {
        let mut client = h2c(h2c_addr).await;
        let mut request = h2_request("POST", "/rooms/a/messages");
        request
            .headers_mut()
            .insert("content-length", http::HeaderValue::from_static("10"));
        let mut ready = client.clone().ready().await.expect("h2 connection ready");
        let (_response, mut send) = ready.send_request(request, false).expect("h2 request");
        client = ready;
        send.send_data(Bytes::from_static(b"abc"), false).unwrap();
        // Answered once the POST was accepted (streams are accepted in order).
        assert_eq!(h2_get(&mut client, "/healthz").await.status(), 200);
        send.send_reset(h2::Reason::CANCEL);
        tokio::time::sleep(TICK).await;
        assert_eq!(h2_get(&mut client, "/healthz").await.status(), 200);
    });
    assert_eq!(server.publish("a", "the first").seq, 1);
}

// --- HTTP/3 ---

type H3Stream = h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// An HTTP/3 connection whose streams the test ends as it likes.
struct H3(transports::H3Client);

impl H3 {
    async fn connect(addr: SocketAddr, cert: &TestCert) -> H3 {
        H3(transports::H3Client::connect(addr, cert, None).await)
    }

    /// Sends `GET path`; its status, `Retry-After` and stream (body unread).
    async fn get(&mut self, path: &str) -> (u16, Option<String>, H3Stream) {
        self.try_get(path).await.expect("an h3 answer")
    }

    /// [`Self::get`], or what ended the stream or connection instead.
    async fn try_get(&mut self, path: &str) -> Result<(u16, Option<String>, H3Stream), String> {
        let request = http::Request::builder()
            .uri(format!("https://localhost{path}"))
            .body(())
            .unwrap();
        let mut stream = tokio::time::timeout(WAIT, self.0.sender().send_request(request))
            .await
            .expect("a stream in time")
            .map_err(|err| format!("{err:?}"))?;
        stream.finish().await.map_err(|err| format!("{err:?}"))?;
        let response = tokio::time::timeout(WAIT, stream.recv_response())
            .await
            .expect("an answer in time")
            .map_err(|err| format!("{err:?}"))?;
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        Ok((response.status().as_u16(), retry_after, stream))
    }
}

async fn h3_body(stream: &mut H3Stream, until: Option<&str>) -> String {
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if until.is_some_and(|want| text.contains(want)) {
            return text;
        }
        match tokio::time::timeout_at(deadline, stream.recv_data()).await {
            Ok(Ok(Some(mut data))) => text.push_str(&String::from_utf8_lossy(
                &data.copy_to_bytes(data.remaining()),
            )),
            Ok(Ok(None)) if until.is_none() => return text,
            other => panic!(
                "body so far {text:?}, then {:?}",
                other.map(|r| r.map(|_| ()))
            ),
        }
    }
}

fn h3_server(cert: &TestCert) -> (Server, SocketAddr) {
    let mut args = cert.args();
    args.extend(
        [
            "--shards",
            "1",
            "--h3-listen",
            "127.0.0.1:0",
            "--max-streams-per-conn",
            STREAMS_PER_CONN,
        ]
        .map(String::from),
    );
    let server = transports::start(&args);
    let h3 = transports::addr_of(&server, "h3");
    (server, h3)
}

/// The HTTP/2 reset loop over HTTP/3: subscribe, read the head, stop the stream
/// (STOP_SENDING) and drop it; QUIC gives the stream credit back as streams close, so only
/// the pace holds it.
#[test]
fn an_h3_subscribe_and_stop_loop_is_refused_past_the_burst_and_the_connection_stays() {
    let cert = TestCert::new();
    let (server, h3_addr) = h3_server(&cert);
    transports::runtime().block_on(async {
        let mut client = H3::connect(h3_addr, &cert).await;
        let (status, _, mut witness) = client.get("/rooms/kept/events").await;
        assert_eq!(status, 200);
        let started = Instant::now();
        let mut served = 0;
        let mut refused = None;
        for _ in 0..ATTEMPTS_MAX {
            let (status, retry_after, mut stream) = client.get("/rooms/churn/events").await;
            if status == 200 {
                served += 1;
                stream.stop_sending(h3::error::Code::H3_REQUEST_CANCELLED);
                continue;
            }
            refused = Some((status, retry_after, stream));
            break;
        }
        let elapsed = started.elapsed();
        let (status, retry_after, mut stream) = refused.unwrap_or_else(|| {
            panic!("{served} subscribe-and-stop streams in {elapsed:?}, none refused")
        });
        assert!(
            served >= BURST - 1 && served <= BURST - 1 + earned(elapsed),
            "{served} served in {elapsed:?}"
        );
        assert_eq!((status, retry_after.as_deref()), (429, Some("1")));
        assert_eq!(
            h3_body(&mut stream, None).await,
            "too many new streams on this connection\n"
        );
        assert_eq!(stream_rate_refusals(&server), 1);
        server.publish("kept", "still here");
        h3_body(&mut witness, Some("data: still here\n")).await;
        tokio::time::sleep(TICK + TICK / 2).await;
        let (status, _, _again) = client.get("/rooms/churn/events").await;
        assert_eq!(status, 200);
    });
}

/// A client that goes on opening streams as fast as they are refused: once its refusals
/// ran out too, the connection is closed with H3_EXCESSIVE_LOAD (quinn offers the
/// companion no GOAWAY from a stream's task).
#[test]
fn an_h3_client_going_on_far_past_the_pace_is_closed_with_excessive_load() {
    let cert = TestCert::new();
    let (server, h3_addr) = h3_server(&cert);
    transports::runtime().block_on(async {
        let mut client = H3::connect(h3_addr, &cert).await;
        let started = Instant::now();
        let (mut served, mut refused, mut gone) = (0, 0, None);
        for _ in 0..10 * ATTEMPTS_MAX {
            match client.try_get("/rooms/churn/events").await {
                Ok((200, _, mut stream)) => {
                    served += 1;
                    stream.stop_sending(h3::error::Code::H3_REQUEST_CANCELLED);
                }
                Ok((status, _, _)) => {
                    assert_eq!(status, 429);
                    refused += 1;
                }
                Err(err) => {
                    gone = Some(err);
                    break;
                }
            }
        }
        let elapsed = started.elapsed();
        let gone = gone.unwrap_or_else(|| {
            panic!("{served} served and {refused} refused in {elapsed:?}, the connection stays")
        });
        assert!(gone.contains("EXCESSIVE_LOAD"), "{gone}");
        assert!(
            served >= BURST && served <= BURST + earned(elapsed),
            "{served} served in {elapsed:?}"
        );
        // The refusals' own burst; the one that ran them out closed the connection instead.
        assert!(
            refused >= BURST && refused <= BURST + 2 * earned(elapsed),
            "{refused} refused in {elapsed:?}"
        );
        assert_eq!(stream_rate_refusals(&server), refused as u64 + 1);
    });
}

/// Requests whose answer ended give their place in the pace back over HTTP/3 too: 3 × the
/// burst of them on one connection are all served.
#[test]
fn h3_requests_answered_are_never_refused() {
    let cert = TestCert::new();
    let (server, h3_addr) = h3_server(&cert);
    transports::runtime().block_on(async {
        let mut client = H3::connect(h3_addr, &cert).await;
        for n in 0..3 * BURST {
            let (status, _, mut stream) = client.get("/healthz").await;
            assert_eq!(status, 200, "request {n}");
            h3_body(&mut stream, None).await;
        }
    });
    assert_eq!(stream_rate_refusals(&server), 0);
}
