//! Hostile clients against the real `ringcast` binary (issue 14): HTTP/2 and HTTP/3 hostile clients (case 14).
//!
//! The attacks are made by stacks not written here: `tests/interop/h2_hostile.py`
//! (hyperframe/hpack, raw frames over h2c) and `tests/interop/h3_hostile.py` (aioquic), one
//! attack per run, each printing a JSON line saying what the server did. Every test checks
//! the attacker got a clear answer or lost its connection (or stream), that the server's RSS
//! stayed bounded, and that it still serves a publish afterwards.

mod common;
mod transports;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use transports::TestCert;

/// RSS an attack may add to the server (its buffers are bounded well below this).
const RSS_GROWTH_BYTES_MAX: u64 = 16 * 1024 * 1024;

fn script(name: &str) -> String {
    format!("{}/../tests/interop/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Runs one attack of `script` against `addr`; its JSON report.
fn attack(script_name: &str, addr: SocketAddr, attack: &str, extra: &[&str]) -> serde_json::Value {
    let addr = addr.to_string();
    let mut args = vec![
        script(script_name),
        "--addr".into(),
        addr,
        "--attack".into(),
    ];
    args.push(attack.into());
    args.extend(extra.iter().map(|s| s.to_string()));
    let output = Command::new("python3")
        .args(&args)
        .output()
        .expect("python3 runs (with h2/hyperframe/hpack and aioquic: .ci/run installs them)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|_| {
        panic!(
            "{script_name} {attack}: no JSON report\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// A server with h2c and HTTP/3 listeners and `extra` flags; its h2c and QUIC addresses.
fn start(cert: &TestCert, extra: &[&str]) -> (common::Server, SocketAddr, SocketAddr) {
    let mut args = cert.args();
    args.extend(
        [
            "--shards",
            "1",
            "--h2c-listen",
            "127.0.0.1:0",
            "--h3-listen",
            "127.0.0.1:0",
        ]
        .map(String::from),
    );
    args.extend(extra.iter().map(|s| s.to_string()));
    let server = transports::start(&args);
    let h2c = transports::addr_of(&server, "h2c");
    let h3 = transports::addr_of(&server, "h3");
    (server, h2c, h3)
}

/// The server is still up, serves a publish, and its RSS grew by less than
/// [`RSS_GROWTH_BYTES_MAX`] since `before`.
fn still_serving(server: &common::Server, before: u64, what: &str) {
    let after = transports::rss_bytes(server.pid());
    eprintln!("{what}: server RSS before {before} B, after {after} B");
    assert!(
        after < before + RSS_GROWTH_BYTES_MAX,
        "{what}: RSS grew from {before} to {after} bytes"
    );
    assert!(server.publish("after", "still here").seq >= 1, "{what}");
}

fn statuses(report: &serde_json::Value) -> Vec<u64> {
    report["statuses"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
        .unwrap_or_default()
}

fn seconds(report: &serde_json::Value) -> f64 {
    report["seconds"].as_f64().unwrap_or(f64::MAX)
}

// --- issue 14 case 14: timeouts and the body limit on every transport ---

/// An HTTP/2 request whose body never completed got no answer at all (no timer on the
/// companion: 26 such streams per connection held forever); it gets 408 after
/// `--body-timeout`, as on HTTP/1.1, and the refusal is counted.
#[test]
fn an_h2_request_body_that_never_completes_gets_408() {
    let cert = TestCert::new();
    let (server, h2c, _) = start(&cert, &["--body-timeout", "1"]);
    let report = attack("h2_hostile.py", h2c, "slow-body", &["--seconds", "4"]);
    assert_eq!(statuses(&report), [408], "{report}");
    assert!(seconds(&report) < 3.0, "{report}");
    let refusals = transports::labelled(
        &server.metrics(),
        "ringcast_refusals_total",
        "reason=\"body_timeout\"",
    );
    assert_eq!(refusals, 1, "{}", server.metrics().0);
}

/// The same over HTTP/3.
#[test]
fn an_h3_request_body_that_never_completes_gets_408() {
    let cert = TestCert::new();
    let (server, _, h3) = start(&cert, &["--body-timeout", "1"]);
    let report = attack("h3_hostile.py", h3, "slow-body", &["--seconds", "4"]);
    assert_eq!(statuses(&report), [408], "{report}");
    assert!(seconds(&report) < 3.0, "{report}");
    let refusals = transports::labelled(
        &server.metrics(),
        "ringcast_refusals_total",
        "reason=\"body_timeout\"",
    );
    assert_eq!(refusals, 1, "{}", server.metrics().0);
}

/// An h2c connection that never completes a request head (nothing after the preface, or a
/// HEADERS frame without END_HEADERS and no CONTINUATION) was held for ever; it is closed
/// (GOAWAY) after `--header-timeout`.
#[test]
fn an_h2_connection_without_a_complete_head_is_closed_after_the_header_timeout() {
    let cert = TestCert::new();
    let (server, h2c, _) = start(&cert, &["--header-timeout", "1"]);
    for what in ["idle", "no-headers"] {
        let report = attack("h2_hostile.py", h2c, what, &["--seconds", "4"]);
        assert_eq!(report["closed"], true, "{report}");
        assert!(!report["goaway"].is_null(), "{report}");
        assert!(seconds(&report) < 3.0, "{report}");
    }
    let refusals = transports::labelled(
        &server.metrics(),
        "ringcast_refusals_total",
        "reason=\"header_timeout\"",
    );
    assert_eq!(refusals, 2, "{}", server.metrics().0);
}

/// A TLS client offering ALPN `h2` that stops after its ClientHello was held 10 s by the
/// companion (a constant) whatever `--header-timeout` said; the handshake has
/// `--header-timeout`, as on the ring, and is counted.
#[test]
fn an_h2_tls_handshake_that_stalls_is_closed_after_the_header_timeout() {
    let cert = TestCert::new();
    let (server, _, _) = start(
        &cert,
        &["--header-timeout", "1", "--tls-listen", "127.0.0.1:0"],
    );
    let tls = transports::addr_of(&server, "tls");
    let report = attack("h2_hostile.py", tls, "tls-stall", &["--seconds", "4"]);
    assert_eq!(report["closed"], true, "{report}");
    assert!(
        report["received_bytes"].as_u64() > Some(0),
        "the server's flight: {report}"
    );
    assert!(seconds(&report) < 3.0, "{report}");
    let refusals = transports::labelled(
        &server.metrics(),
        "ringcast_refusals_total",
        "reason=\"tls_handshake_timeout\"",
    );
    assert_eq!(refusals, 1, "{}", server.metrics().0);
}

/// An HTTP/3 request stream whose HEADERS frame never completes was held for ever; it is
/// ended after `--header-timeout`. A QUIC connection that sends no request at all is
/// closed after it (it was held until the 60-s idle timeout, or for ever with PINGs).
#[test]
fn an_h3_request_head_that_never_completes_is_ended_after_the_header_timeout() {
    let cert = TestCert::new();
    let (server, _, h3) = start(&cert, &["--header-timeout", "1"]);
    let report = attack("h3_hostile.py", h3, "no-headers", &["--seconds", "4"]);
    assert_eq!(report["stream_closed"], true, "{report}");
    assert!(seconds(&report) < 3.0, "{report}");
    let report = attack("h3_hostile.py", h3, "idle", &["--seconds", "4"]);
    assert_eq!(report["closed"], true, "{report}");
    assert!(seconds(&report) < 3.0, "{report}");
    let refusals = transports::labelled(
        &server.metrics(),
        "ringcast_refusals_total",
        "reason=\"header_timeout\"",
    );
    assert_eq!(refusals, 2, "{}", server.metrics().0);
}

/// A request declaring a body over `--max-message-bytes` waited for the body (none comes)
/// instead of being refused from its headers; it gets 413 at once on both transports, as
/// on HTTP/1.1 (the body timeout is long here: the answer must come from the head).
#[test]
fn a_declared_body_over_the_limit_is_refused_from_the_headers_over_h2_and_h3() {
    let cert = TestCert::new();
    let (server, h2c, h3) = start(&cert, &["--body-timeout", "30"]);
    let before = transports::rss_bytes(server.pid());
    for (script, addr) in [("h2_hostile.py", h2c), ("h3_hostile.py", h3)] {
        let report = attack(script, addr, "declared-over", &["--seconds", "4"]);
        assert_eq!(statuses(&report), [413], "{script}: {report}");
        assert!(seconds(&report) < 2.0, "{script}: {report}");
    }
    still_serving(&server, before, "declared-over");
}

/// A body without a declared length that grows past the limit is cut there with 413 and
/// not buffered further (attack class: body size).
#[test]
fn a_body_growing_past_the_limit_is_cut_with_413_over_h2_and_h3() {
    let cert = TestCert::new();
    let (server, h2c, h3) = start(&cert, &["--max-message-bytes", "65536"]);
    let before = transports::rss_bytes(server.pid());
    for (script, addr) in [("h2_hostile.py", h2c), ("h3_hostile.py", h3)] {
        let report = attack(script, addr, "body-over", &["--seconds", "4"]);
        assert_eq!(statuses(&report), [413], "{script}: {report}");
    }
    still_serving(&server, before, "body-over");
}

// --- issue 14 case 14: HTTP/3 subscriptions released at once ---

/// An HTTP/3 subscription whose client closed the connection stayed counted (and was
/// written to) until the next heartbeat; it is released at once, as over HTTP/2.
#[test]
fn an_h3_subscription_whose_connection_closed_is_released_at_once() {
    let cert = TestCert::new();
    let (server, _, h3) = start(&cert, &["--heartbeat", "60"]);
    let mut child = Command::new("python3")
        .args([
            script("h3_hostile.py"),
            "--addr".into(),
            h3.to_string(),
            "--attack".into(),
            "release-close".into(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("200"), "{first}");
    assert!(
        common::wait_until(Duration::from_secs(2), || server
            .metrics()
            .sum("ringcast_subscribers")
            == 1),
        "{}",
        server.metrics().0
    );
    child.stdin.take().unwrap().write_all(b"close\n").unwrap();
    assert!(child.wait().unwrap().success());
    let closed = Instant::now();
    assert!(
        common::wait_until(Duration::from_secs(2), || server
            .metrics()
            .sum("ringcast_subscribers")
            == 0),
        "still subscribed {:?} after the close:\n{}",
        closed.elapsed(),
        server.metrics().0
    );
}

/// An HTTP/3 subscription the client stopped (STOP_SENDING) held its place until the next
/// heartbeat, so a re-subscribe on the same connection got 429; it is released at once.
#[test]
fn an_h3_subscription_stopped_by_its_client_is_released_at_once() {
    let cert = TestCert::new();
    let (server, _, h3) = start(&cert, &["--heartbeat", "60", "--max-streams-per-conn", "1"]);
    let report = attack(
        "h3_hostile.py",
        h3,
        "release-stop",
        &["--seconds", "4", "--pause", "0.5"],
    );
    assert_eq!(report["first"], 200, "{report}");
    assert_eq!(report["second"], 200, "{report}");
    assert!(
        common::wait_until(Duration::from_secs(2), || server
            .metrics()
            .sum("ringcast_subscribers")
            == 0),
        "{}",
        server.metrics().0
    );
}

// --- issue 14 case 14: QUIC before address validation ---

/// 1,000 QUIC Initials that never complete a handshake held ~45 KiB each until the idle
/// timeout, and the server's retransmissions reached 3.19x the bytes received before address
/// validation (RFC 9000 §8.1 allows 3x). Every Initial without a token gets a stateless
/// Retry: nothing is held, and what is sent is well under 3x.
#[test]
fn quic_initials_that_never_complete_get_a_retry_and_hold_nothing() {
    let cert = TestCert::new();
    let (server, _, h3) = start(&cert, &[]);
    let before = transports::rss_bytes(server.pid());
    let report = attack(
        "h3_hostile.py",
        h3,
        "amplification",
        &["--count", "1000", "--seconds", "2"],
    );
    let ratio = report["ratio"].as_f64().unwrap();
    assert!(ratio <= 3.0, "amplification {ratio}: {report}");
    assert_eq!(report["retries"], report["packets"], "{report}");
    assert!(report["retries"].as_u64().unwrap() > 0, "{report}");
    still_serving(&server, before, "1,000 unanswered Initials");
    // A real client still connects (it answers the Retry).
    let report = attack("h3_hostile.py", h3, "declared-over", &["--seconds", "4"]);
    assert_eq!(statuses(&report), [413], "{report}");
}

// --- HTTP/2 attack classes: the attacker's connection (or stream) ends, memory is bounded ---

fn h2_attack_is_contained(name: &str, flags: &[&str], check: impl Fn(&serde_json::Value)) {
    let cert = TestCert::new();
    let (server, h2c, _) = start(&cert, flags);
    let before = transports::rss_bytes(server.pid());
    let report = attack("h2_hostile.py", h2c, name, &["--seconds", "5"]);
    check(&report);
    still_serving(&server, before, name);
}

/// Rapid reset (CVE-2023-44487): HEADERS + RST_STREAM pairs end the connection (GOAWAY
/// ENHANCE_YOUR_CALM, possibly lost to a reset as for the CONTINUATION flood).
#[test]
fn h2_rapid_reset_is_closed() {
    h2_attack_is_contained("rapid-reset", &[], |report| {
        assert_eq!(report["closed"], true, "{report}");
    });
}

/// CONTINUATION flood: a header block that never ends, growing past the header limit,
/// ends the connection (GOAWAY, which the attacker may not get to read: the server closes
/// with the flood unread in its buffer, so the kernel resets the connection).
#[test]
fn h2_continuation_flood_is_closed() {
    h2_attack_is_contained("continuation", &[], |report| {
        assert_eq!(report["closed"], true, "{report}");
    });
}

/// HPACK bomb: one dynamic-table entry referenced 4,000 times (16 MiB decoded from 4 KB)
/// is refused (stream reset) without the server keeping it.
#[test]
fn h2_hpack_bomb_is_reset() {
    h2_attack_is_contained("hpack-bomb", &[], |report| {
        assert!(report["reset_count"].as_u64() >= Some(1), "{report}");
    });
}

/// SETTINGS flood without reading the ACKs: the server stops reading, its PING goes
/// unanswered, and the connection is closed within a heartbeat or two.
#[test]
fn h2_settings_flood_is_closed() {
    h2_attack_is_contained("settings-flood", &["--heartbeat", "0.5"], |report| {
        assert_eq!(report["closed"], true, "{report}");
    });
}

/// PING flood without reading the answers: closed as the SETTINGS flood.
#[test]
fn h2_ping_flood_is_closed() {
    h2_attack_is_contained("ping-flood", &["--heartbeat", "0.5"], |report| {
        assert_eq!(report["closed"], true, "{report}");
    });
}

/// 300 concurrent subscriptions on one connection: past `--max-streams-per-conn` they get
/// 429, past the protocol limit RST_STREAM(REFUSED_STREAM).
#[test]
fn h2_stream_limits_hold() {
    h2_attack_is_contained("streams", &["--max-streams-per-conn", "8"], |report| {
        let statuses = statuses(report);
        assert!(statuses.contains(&429), "{report}");
        assert!(report["reset_count"].as_u64() >= Some(1), "{report}");
        assert!(report["resets"][0] == 7, "REFUSED_STREAM: {report}");
    });
}

/// A 64 KiB header block (over `--max-header-bytes`) ends the connection (GOAWAY).
#[test]
fn h2_header_block_over_the_limit_is_closed() {
    h2_attack_is_contained("header-size", &[], |report| {
        assert_eq!(report["closed"], true, "{report}");
    });
}

// --- HTTP/3 attack classes ---

/// QPACK bomb: dynamic-table inserts the server never offered room for, and a request
/// referencing them, close the connection (QPACK_DECOMPRESSION_FAILED).
#[test]
fn h3_qpack_bomb_closes_the_connection() {
    let cert = TestCert::new();
    let (server, _, h3) = start(&cert, &[]);
    let before = transports::rss_bytes(server.pid());
    let report = attack("h3_hostile.py", h3, "qpack-bomb", &["--seconds", "4"]);
    assert_eq!(report["closed"], true, "{report}");
    still_serving(&server, before, "qpack-bomb");
}

/// 64 KiB of header fields (over `--max-header-bytes`) are refused with 431.
#[test]
fn h3_header_section_over_the_limit_gets_431() {
    let cert = TestCert::new();
    let (server, _, h3) = start(&cert, &[]);
    let before = transports::rss_bytes(server.pid());
    let report = attack("h3_hostile.py", h3, "header-size", &["--seconds", "4"]);
    assert_eq!(statuses(&report), [431], "{report}");
    still_serving(&server, before, "h3 header-size");
}
