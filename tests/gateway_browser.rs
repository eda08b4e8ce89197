//! The demo page in a real browser (issues 9 and 16): headless Chromium, driven by
//! `tests/browser/demo.test.mjs` through playwright-core, opens `/demo` twice on one room and
//! checks fan-out, comments sent and acknowledged, a comment typed while cut off, resume
//! after the last id (no gap while the history covers it, a visible gap when it does not)
//! and a server restart on the same port — over SSE + POST and over one WebSocket, side by
//! side — and that a refused WebSocket falls back to SSE + POST. This file starts ringcast,
//! checks that it serves `GET /rooms/{room}/ws` (so the WebSocket checks cannot be skipped),
//! runs the script, and restarts ringcast when the script asks (SIGTERM, wait for the drain
//! to finish, start again on the same port).
//!
//! Chromium (`/usr/bin/chromium`) and `tests/browser/node_modules` are installed by
//! `.ci/run`; without them this test fails rather than skipping, so CI cannot go green
//! without running the browser.

mod common;

use common::{Client, Server};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
/// The whole browser run, restart included, normally takes 15–30 s.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);
/// Server settings the script relies on: 8 messages of history (its gap check publishes
/// 12 while a page is away) and a short drain.
const ARGS: &[&str] = &["--shards", "2", "--history", "8", "--drain-timeout", "3"];

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/browser")
}

/// `target/browser-artifacts` (next to `target/tmp`).
fn artifacts_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("browser-artifacts")
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
    if Command::new("node").arg("--version").output().is_err() {
        missing.push("node".into());
    }
    assert!(
        missing.is_empty(),
        "the browser test needs {}; run .ci/run, which installs them",
        missing.join(", ")
    );
}

/// Whether ringcast answers a WebSocket handshake on a room with `101 Switching Protocols`.
fn serves_room_websocket(server: &Server) -> bool {
    let mut client = Client::connect(server.addr);
    client
        .send(
            b"GET /rooms/browser-probe/ws HTTP/1.1\r\nHost: ringcast\r\nUpgrade: websocket\r\n\
              Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .expect("send the probe");
    let head = client.read_head().expect("probe answered");
    head.status == 101
}

#[test]
fn demo_page_fans_out_resumes_and_survives_a_restart() {
    require_tools();
    let mut server = Server::start(ARGS);
    let port = server.addr.port();
    assert!(
        serves_room_websocket(&server),
        "ringcast should serve GET /rooms/{{room}}/ws (issue 16):\n{}",
        server.log()
    );
    let mut node = Command::new("node")
        .arg(browser_dir().join("demo.test.mjs"))
        .args(["--port", &port.to_string(), "--ws", "served"])
        .arg("--artifacts")
        .arg(artifacts_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn node");
    let mut to_node = node.stdin.take().expect("piped stdin");
    let (lines_tx, lines) = mpsc::channel();
    let stdout = node.stdout.take().expect("piped stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let stderr = node.stderr.take().expect("piped stderr");
    let script_log = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
        }
        text
    });

    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let mut restarts = 0;
    let status = loop {
        if let Some(status) = node.try_wait().expect("try_wait node") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = node.kill();
            let _ = node.wait();
            panic!(
                "the browser script ran over {SCRIPT_TIMEOUT:?}:\n{}",
                script_log.join().unwrap_or_default()
            );
        }
        let Ok(line) = lines.recv_timeout(Duration::from_millis(50)) else {
            continue;
        };
        if line.trim() == "RINGCAST-RESTART" {
            server.signal(libc::SIGTERM);
            let exit = server.wait_exit(Duration::from_secs(10));
            assert!(
                exit.is_some_and(|s| s.success()),
                "ringcast should drain and exit 0 on SIGTERM: {exit:?}\n{}",
                server.log()
            );
            server = Server::start_at(&format!("127.0.0.1:{port}"), ARGS);
            restarts += 1;
            writeln!(to_node, "restarted").expect("answer the script");
        }
    };
    let log = script_log.join().unwrap_or_default();
    assert!(
        status.success(),
        "the browser script failed ({status}); screenshots in {}:\n{log}",
        artifacts_dir().display()
    );
    assert_eq!(restarts, 1, "the script restarts ringcast once:\n{log}");
    assert!(
        log.contains("transports: sse, ws (WebSocket served by ringcast)"),
        "the script ran the transports the server offers:\n{log}"
    );
    assert!(
        artifacts_dir().join("demo.png").exists(),
        "screenshot saved:\n{log}"
    );
    eprintln!("{log}");
}
