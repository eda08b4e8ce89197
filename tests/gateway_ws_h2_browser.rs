//! WebSocket over HTTP/2 (RFC 8441) with a browser's own stack (issue 16): headless
//! Chromium, driven by `tests/browser/ws_h2.test.mjs` through playwright-core, loads a page
//! over TLS with ALPN `h2`, then opens `wss://` WebSockets — which Chromium sends as extended
//! CONNECTs on that HTTP/2 connection because the server's SETTINGS announce
//! ENABLE_CONNECT_PROTOCOL — an echo and a room that gets a message published over HTTP/1.1.
//! The server's metrics must count them as `transport="h2"` WebSockets, none as HTTP/1.1.
//!
//! Chromium (`/usr/bin/chromium`) and `tests/browser/node_modules` are installed by
//! `.ci/run`; without them this test fails rather than skipping (as gateway_browser.rs).

mod common;
mod transports;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
/// The whole browser run normally takes 2–5 s.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/browser")
}

fn require_tools() {
    let mut missing = Vec::new();
    if !Path::new(CHROMIUM).exists() {
        missing.push(format!("{CHROMIUM} (Debian package `chromium`)"));
    }
    if !browser_dir().join("node_modules/playwright-core").exists() {
        missing.push(
            "tests/browser/node_modules/playwright-core (`npm ci --prefix tests/browser`)".into(),
        );
    }
    assert!(
        missing.is_empty(),
        "the browser test needs {}; run .ci/run, which installs them",
        missing.join(", ")
    );
}

/// `name{…transport="T"…}` summed over shards.
fn by_transport(metrics: &common::Metrics, name: &str, transport: &str) -> u64 {
    transports::labelled(metrics, name, &format!("transport=\"{transport}\""))
}

#[test]
fn chromium_opens_its_websockets_over_the_pages_http2_connection() {
    require_tools();
    let cert = transports::TestCert::new();
    let mut args = cert.args();
    args.extend(["--shards", "2", "--ws-echo", "--tls-listen", "127.0.0.1:0"].map(String::from));
    let server = transports::start(&args);
    let tls = transports::addr_of(&server, "tls");
    let mut node = Command::new("node")
        .arg(browser_dir().join("ws_h2.test.mjs"))
        .args(["--port", &tls.port().to_string()])
        .current_dir(browser_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn node");
    // A script that hangs is killed (it is our child; `done` keeps a reused pid safe).
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let (done, pid) = (done.clone(), node.id() as libc::pid_t);
        std::thread::spawn(move || {
            let start = Instant::now();
            while start.elapsed() < SCRIPT_TIMEOUT {
                if done.load(std::sync::atomic::Ordering::Acquire) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            // SAFETY: kill(2) on our own child's pid; no memory is involved.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        })
    };
    let mut to_node = node.stdin.take().expect("piped stdin");
    let mut lines = BufReader::new(node.stdout.take().expect("piped stdout")).lines();
    let mut published = None;
    let mut result = None;
    while let Some(Ok(line)) = lines.next() {
        if line.trim() == "RINGCAST-PUBLISH" {
            published = Some(server.publish("browser-h2", "published over HTTP/1.1"));
            writeln!(to_node, "published").expect("answer the script");
        } else if line.starts_with('{') {
            result = Some(serde_json::from_str::<serde_json::Value>(&line).expect("JSON"));
        }
    }
    let status = node.wait().expect("node exits");
    done.store(true, std::sync::atomic::Ordering::Release);
    watchdog.join().unwrap();
    let mut script_log = String::new();
    let _ = std::io::Read::read_to_string(&mut node.stderr.take().unwrap(), &mut script_log);
    let result = result.unwrap_or_else(|| panic!("no result ({status}):\n{script_log}"));
    assert!(result.get("error").is_none(), "{result}\n{script_log}");
    assert_eq!(result["page_status"], 200, "{result}");
    assert_eq!(
        result["page_protocol"], "h2",
        "the page came over HTTP/2: {result}"
    );
    assert_eq!(
        result["echo"],
        serde_json::json!({"data": "hello over h2 from chromium", "close": 1000}),
        "{result}"
    );
    let frames = &result["room"]["frames"];
    assert_eq!(
        frames[0],
        serde_json::json!({"type": "subscribed", "room": "browser-h2"}),
        "{result}"
    );
    let published = published.expect("the script asked for a publish");
    assert_eq!(
        frames[1],
        serde_json::json!({"room": "browser-h2", "id": published.to_string(), "data": "published over HTTP/1.1"}),
        "{result}"
    );
    assert_eq!(result["room"]["close"], 1000, "{result}");
    // Both came over the page's HTTP/2 connection, none as an HTTP/1.1 upgrade.
    let metrics = server.metrics();
    let upgrades = "ringcast_websocket_upgrades_total";
    assert_eq!(by_transport(&metrics, upgrades, "h2"), 2, "{}", metrics.0);
    assert_eq!(by_transport(&metrics, upgrades, "tls"), 0, "{}", metrics.0);
    assert_eq!(
        by_transport(&metrics, upgrades, "http1"),
        0,
        "{}",
        metrics.0
    );
    assert!(common::wait_until(Duration::from_secs(5), || by_transport(
        &server.metrics(),
        "ringcast_websocket_connections",
        "h2"
    ) == 0));
}
