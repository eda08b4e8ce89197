//! Hostile clients against the real `ringcast` binary (issue 14): accept under fd exhaustion, drain and restart (cases 8, 9, 15).

mod common;

use common::{Client, Server, RINGCAST};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// CPU time (user + system) the process `pid` used so far.
fn cpu_time(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf takes no pointers.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// Issue 14 case 8: with `RLIMIT_NOFILE` 96 and 160 clients connected, every accept failed
/// with EMFILE and the multishot accept was re-armed at once: the shard spun at full CPU
/// and logged "accept failed" millions of times. It must pause accepting, log once per
/// interval, count the errors, and serve again once descriptors are free.
#[test]
fn fd_exhaustion_pauses_accepting_instead_of_spinning() {
    let server = Server::start_with_fd_limit(96, &["--shards", "1"]);
    let clients: Vec<TcpStream> = (0..160)
        .map(|_| TcpStream::connect(server.addr).expect("connect (the kernel queues it)"))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_time(server.pid());
    let window = Duration::from_secs(2);
    std::thread::sleep(window);
    let used = cpu_time(server.pid()) - before;
    let log = server.log();
    let accept_lines = log.lines().filter(|l| l.contains("accept")).count();
    eprintln!("out of descriptors: {used:?} of CPU in {window:?}, {accept_lines} accept log lines");
    assert!(
        used < window / 5,
        "the server used {used:?} of CPU in {window:?} while out of descriptors"
    );
    assert!(
        accept_lines <= 20,
        "{accept_lines} log lines about accept; first ones:\n{}",
        log.lines().take(20).collect::<Vec<_>>().join("\n")
    );
    drop(clients);
    // Descriptors come back as the server sees the clients go; it serves again.
    let mut served = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while served.is_none() && Instant::now() < deadline {
        let mut client = Client::connect(server.addr);
        client
            .stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
        if client.send(request).is_ok() {
            if let Ok(response) = client.read_response() {
                served = Some(response);
            }
        }
    }
    let response = served.expect("served again after the clients closed");
    assert_eq!(response.status, 200, "{response:?}");
    let metrics = common::Metrics(response.text());
    let emfile: f64 = metrics
        .samples("ringcast_accept_errors_total")
        .iter()
        .filter(|(labels, _)| labels.contains("errno=\"EMFILE\""))
        .map(|(_, v)| v)
        .sum();
    assert!(emfile >= 1.0, "EMFILE not counted:\n{}", metrics.0);
    assert!(
        metrics.sum("ringcast_accept_pauses_total") >= 1,
        "{}",
        metrics.0
    );
}

/// What a client that connects during a drain got.
#[derive(Debug)]
enum DrainAnswer {
    /// Refused at connect.
    Refused,
    /// A 503 with `Retry-After` and `Connection: close`.
    Unavailable,
    /// Served: the server had not seen the signal yet (kill(2) returns before the
    /// handler runs).
    Served,
}

/// Connects and asks for `/healthz`; panics on anything but a refusal at connect or a
/// proper 503 (a reset or a close without an answer after the connection was accepted).
fn knock_during_drain(addr: SocketAddr) -> DrainAnswer {
    let stream = match TcpStream::connect(addr) {
        Ok(stream) => stream,
        Err(err) if err.kind() == ErrorKind::ConnectionRefused => return DrainAnswer::Refused,
        Err(err) => panic!("connect during the drain: {err}"),
    };
    let mut client = Client::from_stream(stream);
    client
        .send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap_or_else(|err| panic!("accepted, then the request could not be sent: {err}"));
    let response = client
        .read_response()
        .unwrap_or_else(|err| panic!("accepted during the drain, then no answer: {err}"));
    if response.status == 200 {
        return DrainAnswer::Served;
    }
    assert_eq!(response.status, 503, "{response:?}");
    assert!(response.header("retry-after").is_some(), "{response:?}");
    assert_eq!(
        response
            .header("connection")
            .map(|v| v.to_ascii_lowercase()),
        Some("close".to_owned()),
        "{response:?}"
    );
    DrainAnswer::Unavailable
}

/// Issue 14 case 9: a client that connected during a SIGTERM drain was accepted by the
/// kernel (the listener stayed open with no accept armed) and reset when the process
/// exited. It must get a 503 with `Retry-After` and `Connection: close`, or be refused.
#[test]
fn a_client_connecting_during_the_drain_is_answered_or_refused_never_reset() {
    // Knocks go on for 1.5 s; the deadline (3 s) closes whatever is left, a knock caught
    // by it included, so it stays well past the last knock on a loaded machine.
    let mut server = Server::start(&["--shards", "2", "--drain-timeout", "3"]);
    let _subscriber = server.subscribe("drain", None);
    // A request head in progress keeps the drain going until the drain timeout.
    let mut slow = server.client();
    slow.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    server.signal(libc::SIGTERM);
    let mut answers = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        answers.push(knock_during_drain(server.addr));
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("exits after the drain");
    assert_eq!(status.code(), Some(0), "{status}");
    let first_refusal = answers
        .iter()
        .position(|a| !matches!(a, DrainAnswer::Served))
        .unwrap_or_else(|| panic!("never refused during the drain: {answers:?}"));
    assert!(
        answers[first_refusal..]
            .iter()
            .all(|a| !matches!(a, DrainAnswer::Served)),
        "served after refusing: {answers:?}"
    );
    eprintln!("answers during the drain: {answers:?}");
}

/// A connection that never sends a request (a browser's speculative connection) is
/// answered, not closed unanswered, and does not hold the drain for `--header-timeout`
/// or `--drain-timeout` (10 s each here).
#[test]
fn a_silent_connection_gets_an_answer_and_does_not_hold_the_drain() {
    let mut server = Server::start(&["--shards", "1"]);
    let mut silent = TcpStream::connect(server.addr).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = silent.read_to_end(&mut answer);
    drop(silent);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    let status = server
        .wait_exit(Duration::from_secs(5))
        .expect("exits within 5 s");
    assert_eq!(status.code(), Some(0), "{status}");
    let took = signalled.elapsed();
    assert!(took < Duration::from_secs(3), "drain took {took:?}");
}

/// Starts `ringcast --listen LISTEN ARGS…` and waits for its address; `Err` with its
/// stderr when it exits first. Unlike `Server`, the caller reaps it with a blocking
/// `wait`, so a restart follows an exit without the polling delay.
// The child is returned to the caller, who waits for it (clippy cannot see through that).
#[allow(clippy::zombie_processes)]
fn spawn_listening(
    listen: &str,
    args: &[&str],
) -> Result<(std::process::Child, SocketAddr), String> {
    use std::io::BufRead;
    let mut child = Command::new(RINGCAST)
        .args(["--listen", listen])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringcast");
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    loop {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap_or(0) == 0 {
            let _ = child.wait();
            return Err(log);
        }
        log.push_str(&line);
        if let Some(at) = line.find("listening addr=") {
            let rest = &line[at + "listening addr=".len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
                .unwrap_or(rest.len());
            let addr = rest[..end].parse().expect("address");
            // Keep draining, so logging never blocks the server.
            std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
            return Ok((child, addr));
        }
    }
}

/// Issue 14 case 15: a gateway stopped cleanly and started again at once on the same
/// address failed about one time in three with "address already in use" while the last
/// run's connections sat in TIME_WAIT / FIN-WAIT-2. The cause: a shard with no connection
/// left returned while its multishot accept was still in the ring, and the kernel tears a
/// ring down after the process exits, so the listener stayed LISTEN for a moment and the
/// next start's busy-port check saw it. Every restart must bind.
#[test]
fn restart_on_the_same_address_binds_while_old_connections_linger() {
    let mut listen = "127.0.0.1:0".to_owned();
    // Clients of earlier runs stay open, so the server's side of them sits in FIN-WAIT-2
    // (and the ones that closed in TIME_WAIT) while the next run binds.
    let mut held = Vec::new();
    for round in 0..30 {
        let (mut child, addr) = spawn_listening(&listen, &["--shards", "4"])
            .unwrap_or_else(|log| panic!("round {round}: restart on {listen} failed:\n{log}"));
        listen = addr.to_string();
        if round % 3 == 2 {
            for i in 0..4 {
                held.push(
                    common::Sse::open(addr, &format!("/rooms/restart{i}/events"), &[]).client,
                );
            }
            let mut idle = Client::connect(addr);
            assert_eq!(idle.request("GET", "/healthz", &[], b"").status, 200);
            let mut closed = Client::connect(addr);
            assert_eq!(closed.request("GET", "/healthz", &[], b"").status, 200);
            drop(closed);
            held.push(idle);
        }
        // Otherwise no connection at all: every shard stops at once.
        // SAFETY: kill(2) takes no pointers; the pid is our child, not yet reaped.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
        let status = child.wait().expect("wait");
        assert_eq!(status.code(), Some(0), "round {round}: {status}");
    }
}
/// A loopback address no one listens on (bound and released at once).
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .unwrap()
}

/// Issue 14 case 15: SIGTERM arriving right after the listener was bound (before the
/// handlers were registered) ended the process with the default action (exit 143, no
/// drain). Signals are handled from before the first listener binds.
#[test]
fn sigterm_as_soon_as_the_port_accepts_drains_and_exits_zero() {
    for round in 0..10 {
        let addr = free_addr();
        let mut child = Command::new(RINGCAST)
            .args(["--listen", &addr.to_string(), "--shards", "2"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ringcast");
        let deadline = Instant::now() + common::PATIENCE;
        let mut probe = loop {
            if let Ok(stream) = TcpStream::connect(addr) {
                break stream;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("round {round}: exited with {status} before listening");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("round {round}: never listened");
            }
        };
        // SAFETY: kill(2) takes no pointers; the pid is our child, not yet reaped.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
        let _ = probe.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut sink = Vec::new();
        probe
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let _ = probe.read_to_end(&mut sink);
        drop(probe);
        let deadline = Instant::now() + common::PATIENCE;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("round {round}: still running after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(status.code(), Some(0), "round {round}: {status}");
    }
}
