//! What the gateway integration tests share: starting the real `ringcast` binary on a free
//! loopback port (killed on drop), a small blocking HTTP/1.1 client over `TcpStream`, an
//! incremental SSE reader with deadlines, and a `/metrics` scraper that sums over shards.
//!
//! Only std plus the gateway's own dependencies (`libc`, `socket2`); no async runtime, so a
//! test reads like the wire exchange it checks.

#![allow(dead_code)] // each test file uses a different part of this module

mod metrics;
pub mod redis;

pub use metrics::Metrics;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// The binary under test.
pub const RINGCAST: &str = env!("CARGO_BIN_EXE_ringcast");

/// How long a test waits for anything the server should do promptly.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A running `ringcast`, killed (SIGKILL) when dropped. Its stderr is drained by a thread
/// (so logging never blocks the server) and printed if the test panics.
pub struct Server {
    child: Option<Child>,
    /// Where it listens.
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

fn drain_stderr(child: &mut Child) -> (Arc<Mutex<String>>, mpsc::Receiver<SocketAddr>) {
    let stderr = child.stderr.take().expect("stderr is piped");
    let log = Arc::new(Mutex::new(String::new()));
    let (addr_tx, addr_rx) = mpsc::channel();
    let sink = log.clone();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stderr);
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if let Some(addr) = listening_addr(&line) {
                let _ = addr_tx.send(addr);
            }
            sink.lock().unwrap().push_str(&line);
        }
    });
    (log, addr_rx)
}

/// Finds `listening addr=IP:PORT` in a log line (which may carry ANSI colour codes).
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening addr=")? + "listening addr=".len()..];
    let end = rest
        .find(|c: char| {
            !(c.is_ascii_alphanumeric() || c == '.' || c == ':' || c == '[' || c == ']')
        })
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

impl Server {
    /// Starts `ringcast --listen 127.0.0.1:0 ARGS…` and waits until it logs its address.
    pub fn start(args: &[&str]) -> Server {
        Self::start_at("127.0.0.1:0", args)
    }

    /// Starts `ringcast --listen LISTEN ARGS…` (e.g. a restart on the port a previous run
    /// was given) and waits until it logs its address.
    pub fn start_at(listen: &str, args: &[&str]) -> Server {
        Self::start_with(Command::new(RINGCAST), listen, args)
    }

    /// As [`Self::start`], with `env` added to the server's environment.
    pub fn start_with_env(env: &[(&str, &str)], args: &[&str]) -> Server {
        let mut command = Command::new(RINGCAST);
        command.envs(env.iter().copied());
        Self::start_with(command, "127.0.0.1:0", args)
    }

    /// As [`Self::start`], with the soft and hard `RLIMIT_NOFILE` of the process set to
    /// `fds` (set in the child before exec, so only the server runs short of descriptors).
    pub fn start_with_fd_limit(fds: u64, args: &[&str]) -> Server {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(RINGCAST);
        // SAFETY: setrlimit is async-signal-safe and touches only the child.
        unsafe {
            command.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: fds,
                    rlim_max: fds,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Self::start_with(command, "127.0.0.1:0", args)
    }

    /// Starts `command --listen LISTEN ARGS…` and waits until it logs its address.
    fn start_with(mut command: Command, listen: &str, args: &[&str]) -> Server {
        let mut child = command
            .arg("--listen")
            .arg(listen)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ringcast");
        let (log, addr_rx) = drain_stderr(&mut child);
        let deadline = Instant::now() + PATIENCE;
        loop {
            match addr_rx.recv_timeout(Duration::from_millis(50)) {
                Ok(addr) => {
                    return Server {
                        child: Some(child),
                        addr,
                        log,
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {}
            }
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(50));
                panic!(
                    "ringcast {args:?} exited with {status} before listening:\n{}",
                    log.lock().unwrap()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "ringcast {args:?} did not log its address within {PATIENCE:?}:\n{}",
                    log.lock().unwrap()
                );
            }
        }
    }

    /// Process id, for signals.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// Sends a signal (e.g. `libc::SIGTERM`).
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) takes no pointers; the pid is our own child, not yet reaped.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({}, {signal})", self.pid());
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut().expect("running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// What the server's open file descriptors point at (`/proc/PID/fd`), for failure
    /// messages.
    pub fn open_fds(&self) -> Vec<String> {
        let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .map(|entry| {
                        let target = std::fs::read_link(entry.path())
                            .map(|t| t.display().to_string())
                            .unwrap_or_default();
                        format!("{} -> {target}", entry.file_name().to_string_lossy())
                    })
                    .collect()
            })
            .unwrap_or_default();
        fds.sort();
        fds
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// A new keep-alive client connection.
    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Subscribes to `room` (optionally resuming after `last_event_id` via the header).
    pub fn subscribe(&self, room: &str, last_event_id: Option<Id>) -> Sse {
        let id;
        let headers: &[(&str, &str)] = match last_event_id {
            Some(last) => {
                id = last.to_string();
                &[("Last-Event-ID", id.as_str())]
            }
            None => &[],
        };
        Sse::open(self.addr, &format!("/rooms/{room}/events"), headers)
    }

    /// Subscribes to `room` resuming after `last_event_id` exactly as given (header).
    pub fn subscribe_after(&self, room: &str, last_event_id: &str) -> Sse {
        Sse::open(
            self.addr,
            &format!("/rooms/{room}/events"),
            &[("Last-Event-ID", last_event_id)],
        )
    }

    /// Publishes one message on a fresh connection; returns its id.
    pub fn publish(&self, room: &str, data: &str) -> Id {
        self.client().publish(room, data)
    }

    /// Scrapes `/metrics` on a fresh connection.
    pub fn metrics(&self) -> Metrics {
        self.client().metrics()
    }

    /// `GET /rooms/{room}` as JSON.
    pub fn room(&self, room: &str) -> serde_json::Value {
        let response = self
            .client()
            .request("GET", &format!("/rooms/{room}"), &[], b"");
        assert_eq!(response.status, 200, "{response:?}");
        serde_json::from_slice(&response.body).expect("room info is JSON")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- ringcast log ---\n{}", self.log.lock().unwrap());
        }
    }
}

/// Runs `ringcast ARGS…` expecting it to exit by itself (bad config); returns its exit code
/// and stderr. Kills it and panics if it is still running after `timeout`.
pub fn run_to_exit(args: &[&str], timeout: Duration) -> (Option<i32>, String) {
    let mut child = Command::new(RINGCAST)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringcast");
    let (log, _addr) = drain_stderr(&mut child);
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "ringcast {args:?} still running after {timeout:?}:\n{}",
                log.lock().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // Let the drain thread catch the last lines.
    std::thread::sleep(Duration::from_millis(50));
    let text = log.lock().unwrap().clone();
    (status.code(), text)
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes; says whether it held.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A TCP connection whose receive buffer is set (before connecting, so the window is
/// small from the start) to `bytes`.
pub fn connect_with_recv_buffer(addr: SocketAddr, bytes: usize) -> TcpStream {
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .expect("socket");
    socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
    socket.connect(&addr.into()).expect("connect");
    socket.into()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn is_timeout(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// A response: status, headers and (for a sized response) the body.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header fields in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body (empty for an SSE stream, whose body is read with [`Sse`]).
    pub body: Vec<u8>,
}

impl Response {
    /// A header's value (first match, name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A blocking HTTP/1.1 connection: send requests, read responses, keep alive.
pub struct Client {
    /// The socket.
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    /// Connects (TCP_NODELAY, reads time out after [`PATIENCE`]).
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        Client::from_stream(stream)
    }

    /// Wraps a connected socket.
    pub fn from_stream(stream: TcpStream) -> Client {
        stream.set_nodelay(true).expect("nodelay");
        stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes raw bytes.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads more bytes into the buffer; `Ok(0)` at end of stream.
    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 64 * 1024];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Reads a response head (status line and headers), not the body.
    pub fn read_head(&mut self) -> io::Result<Response> {
        let end = loop {
            if let Some(at) = find(&self.buf, b"\r\n\r\n") {
                break at;
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed before a full response head; got {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ),
                ));
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        let status = parts
            .next()
            .and_then(|s| s.parse().ok())
            .filter(|_| version.starts_with("HTTP/1."))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad status line {status_line:?}"),
                )
            })?;
        let headers = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        Ok(Response {
            status,
            headers,
            body: Vec::new(),
        })
    }

    /// Reads a full response; the body is `Content-Length` bytes (none if absent).
    pub fn read_response(&mut self) -> io::Result<Response> {
        let mut response = self.read_head()?;
        let len: usize = match response.header("content-length") {
            Some(v) => v
                .parse()
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "content-length"))?,
            None => 0,
        };
        while self.buf.len() < len {
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside a body",
                ));
            }
        }
        response.body = self.buf.drain(..len).collect();
        Ok(response)
    }

    /// Sends one request and reads its response (panics on IO errors).
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: ringcast\r\n");
        for (name, value) in headers {
            req.push_str(&format!("{name}: {value}\r\n"));
        }
        if method == "POST" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.send(&bytes).expect("send request");
        self.read_response()
            .unwrap_or_else(|err| panic!("{method} {path}: {err}"))
    }

    /// `POST /rooms/{room}/messages`; asserts 201 and returns the id.
    pub fn publish(&mut self, room: &str, data: &str) -> Id {
        let response = self.request(
            "POST",
            &format!("/rooms/{room}/messages"),
            &[],
            data.as_bytes(),
        );
        assert_eq!(response.status, 201, "publish to {room}: {response:?}");
        let json: serde_json::Value =
            serde_json::from_slice(&response.body).expect("publish answer is JSON");
        Id::of(&json["id"])
    }

    /// `GET /metrics` on this connection.
    pub fn metrics(&mut self) -> Metrics {
        let response = self.request("GET", "/metrics", &[], b"");
        assert_eq!(response.status, 200, "{response:?}");
        Metrics(response.text())
    }

    /// Reads until the server closes the connection (EOF or reset) within `timeout`;
    /// returns what was left to read. Panics if the connection is still open then.
    pub fn read_until_closed(&mut self, timeout: Duration) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "server did not close the connection within {timeout:?}; read {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.fill() {
                Ok(0) => break,
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::ConnectionReset => break,
                Err(err) if is_timeout(&err) => {}
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => panic!("reading until close: {err}"),
            }
        }
        self.stream.set_read_timeout(Some(PATIENCE)).unwrap();
        std::mem::take(&mut self.buf)
    }
}

/// An event id as ringcast shows it: the string `"{epoch}-{seq}"` (single node: the room's
/// epoch and the message's number in it; cluster: the Redis stream id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id {
    /// The part before the dash.
    pub epoch: u64,
    /// The part after it.
    pub seq: u64,
}

impl Id {
    /// Parses `"E-S"`; panics on anything else.
    pub fn parse(text: &str) -> Id {
        let (epoch, seq) = text
            .split_once('-')
            .unwrap_or_else(|| panic!("id {text:?} is not E-S"));
        Id {
            epoch: epoch.parse().unwrap_or_else(|_| panic!("id {text:?}")),
            seq: seq.parse().unwrap_or_else(|_| panic!("id {text:?}")),
        }
    }

    /// A JSON id (publish answers, batch results, `last_id`): a string `"E-S"`.
    pub fn of(value: &serde_json::Value) -> Id {
        Id::parse(
            value
                .as_str()
                .unwrap_or_else(|| panic!("id {value} is not a string")),
        )
    }

    /// The id of message `seq` of the same epoch.
    pub fn at(self, seq: u64) -> Id {
        Id {
            epoch: self.epoch,
            seq,
        }
    }
}

impl std::fmt::Display for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.epoch, self.seq)
    }
}

impl PartialEq<Id> for serde_json::Value {
    fn eq(&self, id: &Id) -> bool {
        self.as_str() == Some(id.to_string().as_str())
    }
}

/// One SSE event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// `id:` field.
    pub id: Option<Id>,
    /// `event:` field (none for plain messages).
    pub event: Option<String>,
    /// `data:` lines joined with `\n`.
    pub data: String,
}

/// What an SSE stream carries: events and comments (heartbeats are `:` comments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// An event.
    Event(Event),
    /// A block of comment lines only; the text after the first `:`.
    Comment(String),
    /// A block with only a `retry:` field (reconnection delay in ms), which dispatches
    /// no event.
    Retry(u64),
}

/// An open SSE subscription read incrementally.
pub struct Sse {
    /// The underlying connection (buffer included).
    pub client: Client,
}

impl Sse {
    /// `GET path` with extra headers; asserts `200 text/event-stream` with no length.
    pub fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Sse {
        Sse::open_on(Client::connect(addr), path, headers)
    }

    /// As [`Sse::open`] on an existing connection.
    pub fn open_on(mut client: Client, path: &str, headers: &[(&str, &str)]) -> Sse {
        let mut req =
            format!("GET {path} HTTP/1.1\r\nHost: ringcast\r\nAccept: text/event-stream\r\n");
        for (name, value) in headers {
            req.push_str(&format!("{name}: {value}\r\n"));
        }
        req.push_str("\r\n");
        client.send(req.as_bytes()).expect("send subscribe");
        let head = client
            .read_head()
            .unwrap_or_else(|err| panic!("GET {path}: {err}"));
        assert_eq!(head.status, 200, "GET {path}: {head:?}");
        assert_eq!(
            head.header("content-type"),
            Some("text/event-stream"),
            "{head:?}"
        );
        assert_eq!(head.header("content-length"), None, "{head:?}");
        Sse { client }
    }

    /// The next item within `timeout`: `Ok(None)` at end of stream (EOF or reset),
    /// `Err(TimedOut)` if nothing complete arrived in time.
    pub fn next_item(&mut self, timeout: Duration) -> io::Result<Option<Item>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(at) = find(&self.client.buf, b"\n\n") {
                let block = String::from_utf8_lossy(&self.client.buf[..at]).into_owned();
                self.client.buf.drain(..at + 2);
                return Ok(Some(parse_block(&block)));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no SSE item in time",
                ));
            }
            self.client.stream.set_read_timeout(Some(left))?;
            match self.client.fill() {
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::ConnectionReset => return Ok(None),
                Err(err) if is_timeout(&err) => {}
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
    }

    /// The next event (comments skipped) within `timeout`; panics on EOF or timeout.
    pub fn next_event(&mut self, timeout: Duration) -> Event {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_item(left) {
                Ok(Some(Item::Event(event))) => return event,
                Ok(Some(Item::Comment(_) | Item::Retry(_))) => {}
                Ok(None) => panic!("stream ended while waiting for an event"),
                Err(err) => panic!("waiting for an event: {err}"),
            }
        }
    }

    /// Every item that arrives within `window` (the stream must stay open).
    pub fn items_for(&mut self, window: Duration) -> Vec<Item> {
        let deadline = Instant::now() + window;
        let mut items = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return items;
            }
            match self.next_item(left) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => panic!("stream ended early; got {items:?}"),
                Err(err) if is_timeout(&err) => return items,
                Err(err) => panic!("reading items: {err}"),
            }
        }
    }

    /// Reads until the server ends the stream within `timeout`; returns the items seen
    /// on the way. Panics if the stream is still open then.
    pub fn expect_end(&mut self, timeout: Duration) -> Vec<Item> {
        let deadline = Instant::now() + timeout;
        let mut items = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_item(left) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => return items,
                Err(err) => panic!("stream still open after {timeout:?} ({err}); got {items:?}"),
            }
        }
    }
}

fn parse_block(block: &str) -> Item {
    let mut id = None;
    let mut event = None;
    let mut data: Option<String> = None;
    let mut comment = None;
    let mut retry = None;
    let mut fields = 0;
    for line in block.split('\n') {
        if let Some(text) = line.strip_prefix(':') {
            comment.get_or_insert_with(|| text.trim_start().to_owned());
            continue;
        }
        fields += 1;
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match name {
            "id" => id = Some(Id::parse(value)),
            "event" => event = Some(value.to_owned()),
            "retry" => {
                retry = Some(value.parse().expect("numeric retry"));
                fields -= 1;
            }
            "data" => match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_owned()),
            },
            other => panic!("unexpected SSE field {other:?} in {block:?}"),
        }
    }
    if fields == 0 {
        return match retry {
            Some(ms) => Item::Retry(ms),
            None => Item::Comment(comment.unwrap_or_default()),
        };
    }
    Item::Event(Event {
        id,
        event,
        data: data.unwrap_or_default(),
    })
}
