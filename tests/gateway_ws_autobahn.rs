//! The Autobahn|Testsuite against the real binary's WebSocket on the ring (issue 16):
//! `kosoku` (Python 3 runner of the suite's case files; `.ci/run` installs it) drives
//! `GET /ws/echo` of `ringcast --ws-echo` through cases 1–7, 9 and 10 — framing, pings,
//! reserved bits and opcodes, fragmentation, UTF-8, close handling, limits and big
//! messages up to 16 MiB — and every case must be OK, NON-STRICT or INFORMATIONAL. The
//! whole selection runs in about 15 s (debug build), so CI runs all of it.

mod common;

use common::Server;
use std::process::Command;
use std::time::{Duration, Instant};

/// Cases the issue asks for (12 and 13 are permessage-deflate, not offered).
const CASES: [&str; 9] = [
    "1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "10.*",
];
/// What kosoku runs of them (at least: a newer kosoku may add some).
const CASES_MIN: usize = 301;
/// Verdicts that pass (the suite's own: NON-STRICT and INFORMATIONAL are allowed).
const PASSING: [&str; 3] = ["OK", "NON-STRICT", "INFORMATIONAL"];
/// Time the whole run may take (15 s here; generous for a loaded CI machine).
const RUN_TIMEOUT: Duration = Duration::from_secs(600);

#[test]
fn autobahn_cases_1_to_7_9_and_10_pass_against_the_echo_on_the_ring() {
    let has_kosoku = Command::new("kosoku")
        .arg("--help")
        .output()
        .is_ok_and(|out| out.status.success());
    assert!(
        has_kosoku,
        "kosoku is not installed: run .ci/run (it installs it) or `pip install kosoku`"
    );
    let server = Server::start(&["--shards", "2", "--ws-echo"]);
    let out_dir = std::env::temp_dir().join(format!("ringcast-autobahn-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out_dir);
    let url = format!("ws://{}/ws/echo", server.addr);
    let mut kosoku = Command::new("kosoku");
    kosoku.arg(&url).arg("-o").arg(&out_dir);
    for case in CASES {
        kosoku.args(["-i", case]);
    }
    let started = Instant::now();
    let mut child = kosoku
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start kosoku");
    while child.try_wait().expect("kosoku").is_none() {
        if started.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            panic!("kosoku did not finish within {RUN_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = child.wait_with_output().expect("kosoku output");
    let index = std::fs::read_to_string(out_dir.join("index.json")).unwrap_or_else(|err| {
        panic!(
            "no report ({err}): {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let index: serde_json::Value = serde_json::from_str(&index).expect("index.json");
    let agent = index
        .as_object()
        .and_then(|agents| agents.values().next())
        .and_then(serde_json::Value::as_object)
        .expect("one agent in index.json");
    let mut failed = Vec::new();
    let mut tally = std::collections::BTreeMap::<String, usize>::new();
    for (case, report) in agent {
        let behavior = report["behavior"].as_str().unwrap_or("?");
        let close = report["behaviorClose"].as_str().unwrap_or("?");
        *tally.entry(behavior.to_owned()).or_default() += 1;
        if !PASSING.contains(&behavior) || !PASSING.contains(&close) {
            failed.push(format!("{case}: {behavior}/{close}"));
        }
    }
    eprintln!(
        "autobahn: {} cases in {:.1} s: {tally:?}",
        agent.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        agent.len() >= CASES_MIN,
        "{} cases ran, expected at least {CASES_MIN}",
        agent.len()
    );
    assert!(failed.is_empty(), "failed cases: {failed:?}");
    // Every connection of the suite was closed and released: none left open on the ring.
    assert!(
        common::wait_until(common::PATIENCE, || {
            server.metrics().sum("ringcast_websocket_connections") == 0
        }),
        "WebSockets still open after the suite"
    );
    assert!(
        server.metrics().sum("ringcast_websocket_upgrades_total") >= CASES_MIN as u64,
        "every case upgraded on the ring"
    );
    assert!(!server.log().contains("panicked"), "{}", server.log());
    let _ = std::fs::remove_dir_all(&out_dir);
}
