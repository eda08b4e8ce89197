//! Subscribe authorization behind a circuit breaker (issue 5, item 3), against a real HTTP
//! upstream: a small std::net server in the test whose behaviour (allow, deny 401/403,
//! fail 500, hang past `--auth-timeout`, allow slowly) is switched at run time and which
//! counts the calls it receives.
//!
//! Every gateway here runs one shard, since each shard has its own breaker.

mod common;

use common::{run_to_exit, wait_until, Client, Metrics, Response, Server, PATIENCE};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the upstream answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// 204.
    Allow,
    /// This status at once.
    Status(u16),
    /// Sleeps far past any `--auth-timeout` used here, then answers 200.
    Hang,
    /// Sleeps this long, then answers 200.
    SlowAllow(Duration),
}

/// How long a hanging upstream sleeps.
const HANG: Duration = Duration::from_secs(2);

struct Upstream {
    addr: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    calls: Arc<AtomicUsize>,
    last_body: Arc<Mutex<Option<serde_json::Value>>>,
}

impl Upstream {
    fn start(mode: Mode) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let addr = listener.local_addr().unwrap();
        let upstream = Upstream {
            addr,
            mode: Arc::new(Mutex::new(mode)),
            calls: Arc::new(AtomicUsize::new(0)),
            last_body: Arc::new(Mutex::new(None)),
        };
        let (mode, calls, last_body) = (
            upstream.mode.clone(),
            upstream.calls.clone(),
            upstream.last_body.clone(),
        );
        // Lives until the test process ends; one thread per call so a hang blocks nothing.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (mode, calls, last_body) = (mode.clone(), calls.clone(), last_body.clone());
                std::thread::spawn(move || serve(stream, &mode, &calls, &last_body));
            }
        });
        upstream
    }

    fn url(&self) -> String {
        format!("http://{}/authorize", self.addr)
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn serve(
    mut stream: TcpStream,
    mode: &Mutex<Mode>,
    calls: &AtomicUsize,
    last_body: &Mutex<Option<serde_json::Value>>,
) {
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head_end, length) = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..at]).to_ascii_lowercase();
            assert!(head.starts_with("post /authorize http/1.1\r\n"), "{head}");
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .expect("content-length");
            break (at + 4, length);
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    while buf.len() < head_end + length {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body: serde_json::Value =
        serde_json::from_slice(&buf[head_end..head_end + length]).expect("JSON body");
    *last_body.lock().unwrap() = Some(body);
    calls.fetch_add(1, Ordering::SeqCst);
    let mode = *mode.lock().unwrap();
    let status = match mode {
        Mode::Allow => 204,
        Mode::Status(status) => status,
        Mode::Hang => {
            std::thread::sleep(HANG);
            200
        }
        Mode::SlowAllow(delay) => {
            std::thread::sleep(delay);
            200
        }
    };
    let _ = stream.write_all(
        format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
    );
}

/// `GET /rooms/{room}/events` on a fresh connection: the response head (an admitted
/// subscribe streams on, in the returned client) and how long it took.
fn subscribe(
    server: &Server,
    room: &str,
    headers: &[(&str, &str)],
) -> (Response, Duration, Client) {
    let mut client = server.client();
    let started = Instant::now();
    let response = client.request("GET", &format!("/rooms/{room}/events"), headers, b"");
    (response, started.elapsed(), client)
}

/// `ringcast_auth_results_total{result=…}` (one shard).
fn result_count(metrics: &Metrics, result: &str) -> u64 {
    metrics
        .samples("ringcast_auth_results_total")
        .iter()
        .filter(|(labels, _)| labels.contains(&format!("result=\"{result}\"")))
        .map(|(_, v)| *v as u64)
        .sum()
}

fn breaker_state(server: &Server) -> u64 {
    server.metrics().sum("ringcast_breaker_state")
}

fn transitions_to(metrics: &Metrics, to: &str) -> u64 {
    metrics
        .samples("ringcast_breaker_transitions_total")
        .iter()
        .filter(|(labels, _)| {
            labels.contains("upstream=\"auth\"") && labels.contains(&format!("to=\"{to}\""))
        })
        .map(|(_, v)| *v as u64)
        .sum()
}

/// Breaker flags that make the test run in seconds: judge after 4 calls in a 5 s window,
/// stay open 1 s, time calls out after 0.5 s (a hanging upstream sleeps 2 s).
const FAST_BREAKER: &[&str] = &[
    "--shards",
    "1",
    "--auth-timeout",
    "0.5",
    "--auth-breaker-window",
    "5",
    "--auth-breaker-calls-min",
    "4",
    "--auth-breaker-open",
    "1",
];

fn start(upstream: &Upstream, extra: &[&str]) -> Server {
    let url = upstream.url();
    let mut args: Vec<&str> = vec!["--auth-url", &url];
    args.extend_from_slice(FAST_BREAKER);
    args.extend_from_slice(extra);
    Server::start(&args)
}

#[test]
fn allowed_subscriber_streams_and_upstream_gets_room_client_and_headers() {
    let upstream = Upstream::start(Mode::Allow);
    let server = start(&upstream, &[]);
    let (head, _, client) = subscribe(
        &server,
        "auth-ok",
        &[("Authorization", "Bearer good"), ("Cookie", "session=42")],
    );
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
    let mut sse = common::Sse { client };
    assert_eq!(server.publish("auth-ok", "hello").seq, 1);
    let event = sse.next_event(PATIENCE);
    assert_eq!(
        (event.id.map(|id| id.seq), event.data.as_str()),
        (Some(1), "hello")
    );

    let body = upstream.last_body.lock().unwrap().clone().expect("a call");
    assert_eq!(body["room"], "auth-ok");
    let local = sse.client.stream.local_addr().unwrap();
    assert_eq!(
        body["client"],
        local.to_string(),
        "the subscriber's ip:port"
    );
    assert_eq!(body["headers"]["authorization"], "Bearer good");
    assert_eq!(body["headers"]["cookie"], "session=42");
    assert_eq!(upstream.calls(), 1);
    let metrics = server.metrics();
    assert_eq!(result_count(&metrics, "allowed"), 1);
    assert_eq!(metrics.sum("ringcast_breaker_state"), 0, "closed");
}

#[test]
fn denials_pass_through_with_their_status_and_do_not_trip_the_breaker() {
    let upstream = Upstream::start(Mode::Status(403));
    let server = start(&upstream, &[]);
    for (status, reason) in [
        (403, "forbidden"),
        (401, "unauthorized"),
        (403, "forbidden"),
    ] {
        upstream.set(Mode::Status(status));
        for _ in 0..3 {
            let (response, _, _) = subscribe(&server, "auth-deny", &[]);
            assert_eq!(response.status, status, "{response:?}");
            assert_eq!(response.text(), format!("{reason}\n"));
            assert_eq!(response.header("retry-after"), None);
        }
    }
    let metrics = server.metrics();
    assert_eq!(result_count(&metrics, "denied"), 9);
    assert_eq!(
        metrics.sum("ringcast_breaker_state"),
        0,
        "denials are answers, not failures"
    );
    assert_eq!(transitions_to(&metrics, "open"), 0);
    assert_eq!(server.metrics().sum("ringcast_subscribers"), 0);
}

#[test]
fn failing_upstream_opens_the_breaker_subscribes_fail_fast_then_recover() {
    let upstream = Upstream::start(Mode::Status(500));
    let server = start(&upstream, &[]);

    // Two 500s and two timeouts: four failures in the window open the breaker.
    for mode in [Mode::Status(500), Mode::Status(500), Mode::Hang, Mode::Hang] {
        upstream.set(mode);
        let (response, took, _) = subscribe(&server, "auth-fail", &[]);
        assert_eq!(response.status, 503, "{mode:?}: {response:?}");
        assert_eq!(response.text(), "authorization failed\n");
        assert_eq!(response.header("retry-after"), Some("1"));
        if mode == Mode::Hang {
            assert!(
                took >= Duration::from_millis(400) && took < Duration::from_millis(1500),
                "a hanging upstream is cut at --auth-timeout: {took:?}"
            );
        }
    }
    assert_eq!(upstream.calls(), 4);
    let metrics = server.metrics();
    assert_eq!(
        metrics.sum("ringcast_breaker_state"),
        1,
        "open:\n{}",
        metrics.0
    );
    assert_eq!(transitions_to(&metrics, "open"), 1);
    assert_eq!(result_count(&metrics, "failed"), 4);

    // Open, the upstream still hanging (2 s): refused at once, upstream not called.
    for _ in 0..5 {
        let (response, took, _) = subscribe(&server, "auth-fail", &[]);
        assert_eq!(response.status, 503, "{response:?}");
        assert!(
            took < Duration::from_millis(300),
            "fail fast while open: {took:?}"
        );
        let retry_after: u64 = response
            .header("retry-after")
            .expect("Retry-After")
            .parse()
            .unwrap();
        assert_eq!(
            retry_after, 1,
            "the breaker's remaining open time, rounded up"
        );
        assert!(response.text().contains("circuit open"), "{response:?}");
    }
    assert_eq!(upstream.calls(), 4, "no upstream call while open");
    assert_eq!(result_count(&server.metrics(), "breaker_open"), 5);

    // The upstream recovers; once the open duration has passed, three probes succeed and
    // the breaker closes.
    upstream.set(Mode::Allow);
    assert!(
        wait_until(PATIENCE, || breaker_state(&server) == 2),
        "half-open after --auth-breaker-open"
    );
    let mut streams = Vec::new();
    for probe in 0..3 {
        let (response, _, client) = subscribe(&server, "auth-fail", &[]);
        assert_eq!(response.status, 200, "probe {probe}: {response:?}");
        streams.push(common::Sse { client });
    }
    assert_eq!(upstream.calls(), 7);
    let metrics = server.metrics();
    assert_eq!(
        metrics.sum("ringcast_breaker_state"),
        0,
        "closed:\n{}",
        metrics.0
    );
    assert_eq!(transitions_to(&metrics, "half_open"), 1);
    assert_eq!(transitions_to(&metrics, "closed"), 1);
    let (response, _, client) = subscribe(&server, "auth-fail", &[]);
    assert_eq!(response.status, 200);
    streams.push(common::Sse { client });
    assert_eq!(server.publish("auth-fail", "back").seq, 1);
    for sse in &mut streams {
        assert_eq!(sse.next_event(PATIENCE).data, "back");
    }
}

#[test]
fn fail_open_admits_on_failures_and_while_open_but_denials_still_refuse() {
    let upstream = Upstream::start(Mode::Status(403));
    let server = start(&upstream, &["--auth-fail-open"]);
    let (response, _, _) = subscribe(&server, "auth-open", &[]);
    assert_eq!(
        response.status, 403,
        "an answer is obeyed even when failing open"
    );

    upstream.set(Mode::Status(500));
    let mut streams = Vec::new();
    for _ in 0..4 {
        let (response, _, client) = subscribe(&server, "auth-open", &[]);
        assert_eq!(response.status, 200, "failed call, admitted: {response:?}");
        streams.push(common::Sse { client });
    }
    assert_eq!(
        breaker_state(&server),
        1,
        "three failures of four calls opened it"
    );

    upstream.set(Mode::Hang);
    let calls = upstream.calls();
    for _ in 0..3 {
        let (response, took, client) = subscribe(&server, "auth-open", &[]);
        assert_eq!(response.status, 200, "{response:?}");
        assert!(
            took < Duration::from_millis(300),
            "admitted at once: {took:?}"
        );
        streams.push(common::Sse { client });
    }
    assert_eq!(upstream.calls(), calls, "no upstream call while open");
    let metrics = server.metrics();
    assert_eq!(result_count(&metrics, "fail_open_admitted"), 7);
    assert_eq!(metrics.sum("ringcast_subscribers"), 7);
    assert_eq!(server.publish("auth-open", "x").seq, 1);
    for sse in &mut streams {
        assert_eq!(sse.next_event(PATIENCE).data, "x");
    }
}

#[test]
fn subscriber_gone_before_the_answer_is_not_streamed_to() {
    // The upstream answers after the subscriber hung up: the reply finds the connection
    // closed (or closing) and must leave no subscriber, call or ticker behind.
    let upstream = Upstream::start(Mode::SlowAllow(Duration::from_millis(300)));
    let server = start(&upstream, &[]);
    for _ in 0..5 {
        let mut stream = TcpStream::connect(server.addr).unwrap();
        stream
            .write_all(b"GET /rooms/auth-gone/events HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        drop(stream);
    }
    assert!(wait_until(PATIENCE, || upstream.calls() == 5));
    assert!(
        wait_until(PATIENCE, || {
            let metrics = server.metrics();
            metrics.sum("ringcast_auth_in_flight") == 0
                && metrics.sum("ringcast_subscribers") == 0
                && metrics.sum("ringcast_connections") <= 1
        }),
        "{}",
        server.metrics().0
    );
    upstream.set(Mode::Allow);
    let (response, _, _) = subscribe(&server, "auth-gone", &[]);
    assert_eq!(response.status, 200);
}

#[test]
fn auth_url_must_be_plain_http() {
    let (code, log) = run_to_exit(&["--auth-url", "https://auth.example/"], PATIENCE);
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains("--auth-url") && log.contains("only http://"),
        "{log}"
    );
}
