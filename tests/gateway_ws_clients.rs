//! ringcast's WebSocket routes as third-party clients see them (issue 16): the Python
//! `websockets` library and Node's `ws`, each driven by a script in `tests/ws-thirdparty/`
//! against the real binary.
//!
//! - Echo route (`--ws-echo`): the library's own handshake (it checks the accept key; its
//!   permessage-deflate and subprotocol offers are declined), text, binary and 1 MiB
//!   messages, fragmented sends, ping/pong, the server's keep-alive pings answered by the
//!   library, the close handshake (1000) and close 1007 as the library reports them, a
//!   refusal as an HTTP status.
//! - `/rooms/{room}/ws`: joined at once; messages published over HTTP arrive in order in
//!   exactly `{"room","id","data"}`; a publish over the socket is acked with its id; an
//!   idempotency key twice is one message; `?last_event_id=` replays what was missed, with
//!   a `gap` object when history lost some; a private room refused as HTTP 401/403 and
//!   joined with a token in the query; a message over the room limit closed with 1009.
//! - `GET /ws`: rooms in the query, one more by message, one left.
//! - SIGTERM (the script asks the test for it): every message published before it, then a
//!   close 1001 the library reports and answers, so the gateway exits at once.
//! - TLS (`wss://`, the library's own TLS verifying a test certificate): the echo with a
//!   1 MiB message, a room's delivery and a publish.
//! - A viewer that stops reading (Python only: it sets the socket's receive buffer): cut
//!   after fewer than all messages, in order up to the cut, reported by the library as a
//!   close (1013 after `lagged`, or the connection's end); the server serves the next.
//!
//! Each script prints `ok NAME` per check and exits 1 at the first failure; this file
//! compares the list, so a skipped check fails too. `python3` with `websockets` and
//! `tests/ws-thirdparty/node_modules` (`npm ci --prefix tests/ws-thirdparty`) are installed
//! by `.ci/run`; without them these tests fail rather than skip.

mod common;
mod transports;

use common::Server;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A script's whole run; each takes 2–4 s.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);

/// Echo server timers short enough that the scripts' 2 s quiet spell sees several
/// keep-alive pings, and a close (at 1.3 s) if the first went unanswered; the pong timeout
/// leaves a loaded machine a second to schedule the library's answer.
const ECHO_ARGS: &[&str] = &[
    "--shards",
    "2",
    "--ws-echo",
    "--ws-ping-interval",
    "0.3",
    "--ws-pong-timeout",
    "1",
];
/// The scripts' gap check publishes 12 messages while away and expects 8 held; their token
/// check signs with this key.
const ROOM_ARGS: &[&str] = &[
    "--shards",
    "2",
    "--history",
    "8",
    "--subscribe-key",
    "hs256:interop-secret",
    "--private-rooms",
    "private-*",
];

/// What the scripts check, in order, per part.
const ECHO_CHECKS: &[&str] = &[
    "handshake",
    "messages",
    "fragmented",
    "ping",
    "keepalive",
    "close_1000",
    "close_1007",
    "refused_404",
];
const ROOM_CHECKS: &[&str] = &[
    "join",
    "delivery",
    "publish_ack",
    "idempotency",
    "close_1000",
    "resume",
    "gap",
    "refused_401_403",
    "token_in_query",
    "close_1009",
    "multiplexed",
];

/// The drain: long enough that only the clients' answers to the 1001 let it end soon.
const DRAIN_ARGS: &[&str] = &["--shards", "2", "--drain-timeout", "10"];

fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/ws-thirdparty")
}

enum Client {
    PythonWebsockets,
    NodeWs,
}

impl Client {
    fn command(&self) -> Command {
        let (program, script) = match self {
            Client::PythonWebsockets => ("python3", "python_websockets.py"),
            Client::NodeWs => ("node", "node_ws.mjs"),
        };
        let mut command = Command::new(program);
        command.arg(scripts_dir().join(script));
        command
    }

    fn require(&self) {
        let installed = match self {
            Client::PythonWebsockets => Command::new("python3")
                .args(["-c", "import websockets.asyncio.client"])
                .output()
                .is_ok_and(|out| out.status.success()),
            Client::NodeWs => {
                scripts_dir().join("node_modules/ws").exists()
                    && Command::new("node").arg("--version").output().is_ok()
            }
        };
        let what = match self {
            Client::PythonWebsockets => "python3 with `websockets` (pip install websockets)",
            Client::NodeWs => "node and tests/ws-thirdparty/node_modules/ws (`npm ci --prefix tests/ws-thirdparty`)",
        };
        assert!(
            installed,
            "this test needs {what}; run .ci/run, which installs it"
        );
    }

    /// Runs the script's `part` against `server`; asserts it passed every check in `checks`.
    fn run(&self, server: &Server, part: &str, checks: &[&str]) {
        self.run_with(server, part, &[], checks);
    }

    /// As [`Self::run`], with more arguments for the script.
    fn run_with(&self, server: &Server, part: &str, extra: &[String], checks: &[&str]) {
        self.require();
        let mut child = self
            .command()
            .args(["--port", &server.addr.port().to_string(), "--part", part])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the client script");
        let mut to_script = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let (lines_tx, lines) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
        });
        let err = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let started = Instant::now();
        let mut out = String::new();
        let status = loop {
            if let Ok(line) = lines.recv_timeout(Duration::from_millis(20)) {
                // The script asks for the drain with a line, and goes on once told.
                if line.trim() == "RINGCAST-SIGTERM" {
                    server.signal(libc::SIGTERM);
                    writeln!(to_script, "signalled").expect("answer the script");
                }
                out.push_str(&line);
                out.push('\n');
                continue;
            }
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if started.elapsed() > SCRIPT_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the {part} script ran over {SCRIPT_TIMEOUT:?}:\n{out}");
            }
        };
        reader.join().unwrap();
        out.extend(lines.try_iter().map(|line| line + "\n"));
        let err = err.join().unwrap();
        let passed: Vec<&str> = out
            .lines()
            .filter_map(|line| line.strip_prefix("ok "))
            .collect();
        assert!(
            status.success() && passed == checks,
            "{part}: {status}; passed {passed:?} of {checks:?}\n--- stdout ---\n{out}\n--- stderr ---\n{err}"
        );
        assert!(!server.log().contains("panicked"), "{}", server.log());
    }
}

#[test]
fn python_websockets_talks_to_the_echo_route() {
    let server = Server::start(ECHO_ARGS);
    Client::PythonWebsockets.run(&server, "echo", ECHO_CHECKS);
}

#[test]
fn node_ws_talks_to_the_echo_route() {
    let server = Server::start(ECHO_ARGS);
    Client::NodeWs.run(&server, "echo", ECHO_CHECKS);
}

#[test]
fn python_websockets_joins_publishes_and_resumes_on_a_room() {
    let server = Server::start(ROOM_ARGS);
    Client::PythonWebsockets.run(&server, "room", ROOM_CHECKS);
}

#[test]
fn node_ws_joins_publishes_and_resumes_on_a_room() {
    let server = Server::start(ROOM_ARGS);
    Client::NodeWs.run(&server, "room", ROOM_CHECKS);
}

/// After the drain script: the gateway exits 0 at once (both ends closed cleanly), not at
/// the drain or close timeout.
fn assert_drained(mut server: Server) {
    let exit = server.wait_exit(Duration::from_secs(2));
    assert!(
        exit.is_some_and(|status| status.success()),
        "exit {exit:?} after the client answered the close:\n{}",
        server.log()
    );
}

#[test]
fn python_websockets_sees_a_drain_as_a_clean_1001_after_every_message() {
    let server = Server::start(DRAIN_ARGS);
    Client::PythonWebsockets.run(&server, "drain", &["close_1001"]);
    assert_drained(server);
}

#[test]
fn node_ws_sees_a_drain_as_a_clean_1001_after_every_message() {
    let server = Server::start(DRAIN_ARGS);
    Client::NodeWs.run(&server, "drain", &["close_1001"]);
    assert_drained(server);
}

/// A gateway with `--ws-echo` and a TLS listener, and the script's arguments to reach it
/// (`--tls-port`, `--ca`); the certificate's files live as long as the returned value.
fn tls_server() -> (Server, Vec<String>, transports::TestCert) {
    let cert = transports::TestCert::new();
    let mut args = cert.args();
    args.extend(["--tls-listen", "127.0.0.1:0", "--shards", "2", "--ws-echo"].map(String::from));
    let server = transports::start(&args);
    let tls = transports::addr_of(&server, "tls");
    let extra = vec![
        "--tls-port".into(),
        tls.port().to_string(),
        "--ca".into(),
        cert.cert.display().to_string(),
    ];
    (server, extra, cert)
}

#[test]
fn python_websockets_over_tls_verifies_the_certificate_and_talks_to_echo_and_rooms() {
    let (server, extra, _cert) = tls_server();
    Client::PythonWebsockets.run_with(&server, "wss", &extra, &["echo_over_tls", "room_over_tls"]);
}

#[test]
fn node_ws_over_tls_verifies_the_certificate_and_talks_to_echo_and_rooms() {
    let (server, extra, _cert) = tls_server();
    Client::NodeWs.run_with(&server, "wss", &extra, &["echo_over_tls", "room_over_tls"]);
}

#[test]
fn python_websockets_reader_that_stops_is_cut_and_the_server_goes_on() {
    let server = Server::start(&["--shards", "1", "--history", "16"]);
    Client::PythonWebsockets.run(&server, "slow", &["slow_reader_cut", "server_healthy"]);
    assert_eq!(server.metrics().sum("ringcast_slow_consumer_cuts_total"), 1);
}
