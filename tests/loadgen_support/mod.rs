//! Test servers for the ringload integration tests: a small ringcast-compatible SSE and
//! WebSocket fan-out server (std::net, one thread per connection) with injectable faults,
//! and a plain HTTP responder. Everything binds 127.0.0.1 port 0.
//!
//! WebSocket, as ringcast's protocol: `GET /rooms/{room}/ws` joins the room; each message
//! is one text frame `{"room":R,"id":ID,"data":"…"}`; a client text frame
//! `{"type":"publish","room":R,"data":"…","ref":N}` is published like a POST (same faults)
//! and answered `{"type":"ack","ref":N,"room":R,"id":ID}` or
//! `{"type":"error","ref":N,"status":S,"reason":"…"}`. Client frames must be masked (an
//! unmasked one is answered with close 1002).
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One misbehaviour, triggered by the n-th publish (1-based, over all rooms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Behave.
    None,
    /// Do not deliver publish n.
    Drop(u64),
    /// Deliver publish n twice.
    Duplicate(u64),
    /// Deliver publish n after publish n+1.
    Swap(u64),
    /// Also deliver publish n to the subscribers of another room.
    WrongRoom(u64),
    /// Deliver publish n at once but answer it only after this many ms.
    StallPublish(u64, u64),
    /// Answer publish n with 500 and do not deliver it.
    FailPublish(u64),
    /// Close every subscriber connection at publish n.
    Disconnect(u64),
}

/// How the server speaks.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Fault to inject.
    pub fault: Fault,
    /// nchan style: chunked SSE stream, 202 publish answers with a chunked body,
    /// `event: message` lines and heartbeat comments.
    pub nchan_style: bool,
    /// Write each event in two pieces (split mid-line) to exercise reassembly.
    pub split_writes: bool,
    /// Sleep this long (ms) before answering every publish (a slow server).
    pub publish_delay_ms: u64,
    /// Besides `fault`: answer publish n (1-based) only after this many ms, `(n, ms)`.
    /// The publishes due meanwhile pile up, pipelined if the client pipelines.
    pub stall: Option<(u64, u64)>,
    /// WebSocket: ids as numbers (as the uWebSockets peer sends them), not strings.
    pub ws_number_ids: bool,
    /// WebSocket: send a ping right after the handshake (its pong is counted).
    pub ws_ping: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            fault: Fault::None,
            nchan_style: false,
            split_writes: false,
            publish_delay_ms: 0,
            stall: None,
            ws_number_ids: false,
            ws_ping: false,
        }
    }
}

/// One subscriber connection of a room.
enum Subscriber {
    Sse(TcpStream),
    /// Shared with the connection's own thread, which writes acks on it.
    Ws(Arc<Mutex<TcpStream>>),
}

struct Room {
    subscribers: Vec<Subscriber>,
    next_id: u64,
}

struct State {
    options: Options,
    rooms: Mutex<HashMap<String, Room>>,
    publishes: AtomicU64,
    held: Mutex<Option<(String, Vec<u8>)>>,
    requests: AtomicU64,
    pipelined: AtomicU64,
    pongs: AtomicU64,
    ws_publishes: AtomicU64,
}

/// A running fan-out test server.
pub struct FanoutServer {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl FanoutServer {
    /// Starts a server with `options`.
    pub fn start(options: Options) -> FanoutServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State {
            options,
            rooms: Mutex::new(HashMap::new()),
            publishes: AtomicU64::new(0),
            held: Mutex::new(None),
            requests: AtomicU64::new(0),
            pipelined: AtomicU64::new(0),
            pongs: AtomicU64::new(0),
            ws_publishes: AtomicU64::new(0),
        });
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let state = shared.clone();
                std::thread::spawn(move || serve(stream, &state));
            }
        });
        FanoutServer { addr, state }
    }

    /// `--sub-url` template.
    pub fn sub_url(&self) -> String {
        format!("http://{}/rooms/{{room}}/events", self.addr)
    }

    /// `--sub-url` template of the WebSocket route.
    pub fn ws_url(&self) -> String {
        format!("http://{}/rooms/{{room}}/ws", self.addr)
    }

    /// Pongs with the right payload received (answers to `ws_ping`).
    pub fn pongs(&self) -> u64 {
        self.state.pongs.load(Ordering::SeqCst)
    }

    /// Publishes received over WebSocket (part of `publishes`).
    pub fn ws_publishes(&self) -> u64 {
        self.state.ws_publishes.load(Ordering::SeqCst)
    }

    /// `--pub-url` template.
    pub fn pub_url(&self) -> String {
        format!("http://{}/rooms/{{room}}/messages", self.addr)
    }

    /// Publishes received so far.
    pub fn publishes(&self) -> u64 {
        self.state.publishes.load(Ordering::SeqCst)
    }

    /// Publishes read while the next request had already arrived (bytes of it read before
    /// this one was answered): the client pipelines. Always 0 for a client that sends its
    /// next request only after the previous response.
    pub fn pipelined_publishes(&self) -> u64 {
        self.state.pipelined.load(Ordering::SeqCst)
    }

    /// Plain requests (`/hello`, `/missing`) answered so far.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let length = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        path,
        headers,
        body,
    })
}

fn serve(stream: TcpStream, state: &State) {
    let _ = stream.set_nodelay(true);
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut stream = stream;
    while let Some(request) = read_request(&mut reader) {
        let segments: Vec<&str> = request.path.trim_start_matches('/').split('/').collect();
        match (request.method.as_str(), segments.as_slice()) {
            ("GET", ["rooms", room, "events"]) => {
                subscribe(stream, &request, room, state);
                return;
            }
            ("GET", ["rooms", room, "ws"]) => {
                subscribe_ws(stream, reader, &request, room, state);
                return;
            }
            ("POST", ["rooms", room, "messages"]) => {
                // BufReader reads whatever has arrived, so several pipelined requests come
                // in one read and wait in its buffer; bytes there now were sent before
                // this publish is answered.
                if !reader.buffer().is_empty() {
                    state.pipelined.fetch_add(1, Ordering::SeqCst);
                }
                if !publish(&mut stream, &request, room, state) {
                    return;
                }
            }
            ("GET", ["hello"]) | ("POST", ["hello"]) => {
                state.requests.fetch_add(1, Ordering::SeqCst);
                let _ =
                    stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world");
            }
            ("GET", ["chunked"]) => {
                state.requests.fetch_add(1, Ordering::SeqCst);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                );
            }
            _ => {
                state.requests.fetch_add(1, Ordering::SeqCst);
                let _ = stream
                    .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found");
            }
        }
    }
}

fn subscribe(mut stream: TcpStream, request: &Request, room: &str, state: &State) {
    let accepts_sse = request
        .headers
        .iter()
        .any(|(name, value)| name == "accept" && value.contains("text/event-stream"));
    if !accepts_sse {
        let _ = stream.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n");
        return;
    }
    let head: &[u8] = if state.options.nchan_style {
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
    } else {
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
    };
    let mut rooms = state.rooms.lock().unwrap();
    if stream.write_all(head).is_err() {
        return;
    }
    if state.options.nchan_style {
        let _ = write_frame(&mut stream, b": hi\n\n", state);
    }
    rooms
        .entry(room.to_string())
        .or_insert(Room {
            subscribers: Vec::new(),
            next_id: 1,
        })
        .subscribers
        .push(Subscriber::Sse(stream));
}

fn header<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request
        .headers
        .iter()
        .find(|(given, _)| given == name)
        .map(|(_, value)| value.as_str())
}

/// An unmasked server frame.
fn ws_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        len @ 0..=125 => out.push(len as u8),
        len @ 126..=0xffff => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

/// Reads one client frame: (opcode, unmasked payload), or `None` when the connection
/// ended or the frame was not masked.
fn read_ws_frame(reader: &mut impl Read) -> Option<Result<(u8, Vec<u8>), ()>> {
    let mut head = [0u8; 2];
    reader.read_exact(&mut head).ok()?;
    let length = match head[1] & 0x7f {
        126 => {
            let mut bytes = [0u8; 2];
            reader.read_exact(&mut bytes).ok()?;
            u64::from(u16::from_be_bytes(bytes))
        }
        127 => {
            let mut bytes = [0u8; 8];
            reader.read_exact(&mut bytes).ok()?;
            u64::from_be_bytes(bytes)
        }
        short => u64::from(short),
    };
    if head[1] & 0x80 == 0 {
        return Some(Err(()));
    }
    let mut mask = [0u8; 4];
    reader.read_exact(&mut mask).ok()?;
    let mut payload = vec![0u8; usize::try_from(length).ok()?];
    reader.read_exact(&mut payload).ok()?;
    for (index, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[index & 3];
    }
    Some(Ok((head[0] & 0x0f, payload)))
}

fn subscribe_ws(
    stream: TcpStream,
    mut reader: BufReader<TcpStream>,
    request: &Request,
    room: &str,
    state: &State,
) {
    let mut stream = stream;
    let key = header(request, "sec-websocket-key");
    let upgrade = header(request, "upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let version = header(request, "sec-websocket-version") == Some("13");
    let (Some(key), true, true) = (key, upgrade, version) else {
        let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        return;
    };
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    let conn = Arc::new(Mutex::new(stream.try_clone().expect("clone")));
    {
        let mut rooms = state.rooms.lock().unwrap();
        let mut first = head.into_bytes();
        if state.options.ws_ping {
            first.extend(ws_frame(0x9, b"hb"));
        }
        if conn.lock().unwrap().write_all(&first).is_err() {
            return;
        }
        rooms
            .entry(room.to_string())
            .or_insert(Room {
                subscribers: Vec::new(),
                next_id: 1,
            })
            .subscribers
            .push(Subscriber::Ws(conn.clone()));
    }
    loop {
        let (opcode, payload) = match read_ws_frame(&mut reader) {
            None => return,
            Some(Err(())) => {
                let _ = conn
                    .lock()
                    .unwrap()
                    .write_all(&ws_frame(0x8, &1002u16.to_be_bytes()));
                return;
            }
            Some(Ok(frame)) => frame,
        };
        match opcode {
            0x8 => {
                let _ = conn.lock().unwrap().write_all(&ws_frame(0x8, &payload));
                return;
            }
            0xA if payload == b"hb" => {
                state.pongs.fetch_add(1, Ordering::SeqCst);
            }
            0x1 => {
                let Ok(message) = serde_json::from_slice::<serde_json::Value>(&payload) else {
                    continue;
                };
                if message["type"] != "publish" {
                    continue;
                }
                state.ws_publishes.fetch_add(1, Ordering::SeqCst);
                let target = message["room"].as_str().unwrap_or_default().to_string();
                let data = message["data"]
                    .as_str()
                    .unwrap_or_default()
                    .as_bytes()
                    .to_vec();
                let (status, n) = accept_publish(&target, &data, state);
                let answer = if status < 300 {
                    serde_json::json!({"type": "ack", "ref": message["ref"], "room": target, "id": format!("{EPOCH}-{n}")})
                } else {
                    serde_json::json!({"type": "error", "ref": message["ref"], "room": target, "status": status, "reason": "fail"})
                };
                let frame = ws_frame(0x1, answer.to_string().as_bytes());
                if conn.lock().unwrap().write_all(&frame).is_err() {
                    return;
                }
            }
            _ => {}
        }
    }
}

fn write_frame(stream: &mut TcpStream, frame: &[u8], state: &State) -> std::io::Result<()> {
    let mut wire = Vec::new();
    if frame.first().is_some_and(|&byte| byte == 0x81) {
        // A WebSocket frame: no chunked framing.
        wire.extend_from_slice(frame);
    } else if state.options.nchan_style {
        wire.extend_from_slice(format!("{:x}\r\n", frame.len()).as_bytes());
        wire.extend_from_slice(frame);
        wire.extend_from_slice(b"\r\n");
    } else {
        wire.extend_from_slice(frame);
    }
    if state.options.split_writes {
        let middle = wire.len() / 2;
        stream.write_all(&wire[..middle])?;
        stream.flush()?;
        std::thread::sleep(Duration::from_micros(200));
        stream.write_all(&wire[middle..])
    } else {
        stream.write_all(&wire)
    }
}

/// The epoch part of the ids this server hands out (as ringcast: `"{epoch}-{seq}"`).
const EPOCH: u64 = 1_765_000_000_000_000;

fn deliver(rooms: &mut HashMap<String, Room>, room: &str, data: &[u8], state: &State) {
    let Some(entry) = rooms.get_mut(room) else {
        return;
    };
    let id = entry.next_id;
    entry.next_id += 1;
    let text = String::from_utf8_lossy(data);
    let ws_id = if state.options.ws_number_ids {
        id.to_string()
    } else {
        format!("\"{EPOCH}-{id}\"")
    };
    let ws_message = format!(
        r#"{{"room":{},"id":{ws_id},"data":{}}}"#,
        serde_json::to_string(room).unwrap(),
        serde_json::to_string(&text).unwrap()
    );
    let ws_wire = ws_frame(0x1, ws_message.as_bytes());
    let mut frame = Vec::new();
    if state.options.nchan_style {
        frame.extend_from_slice(b"event: message\n");
    }
    // ringcast's ids are strings "{epoch}-{seq}"; nchan's are opaque too.
    frame.extend_from_slice(format!("id: {EPOCH}-{id}\ndata: ").as_bytes());
    frame.extend_from_slice(data);
    frame.extend_from_slice(b"\n\n");
    if state.options.nchan_style {
        frame.extend_from_slice(b":\n\n");
    }
    entry.subscribers.retain_mut(|subscriber| match subscriber {
        Subscriber::Sse(stream) => write_frame(stream, &frame, state).is_ok(),
        Subscriber::Ws(conn) => write_frame(&mut conn.lock().unwrap(), &ws_wire, state).is_ok(),
    });
}

/// Returns false when the connection should close.
fn publish(stream: &mut TcpStream, request: &Request, room: &str, state: &State) -> bool {
    let (status, n) = accept_publish(room, &request.body, state);
    let answer = if status == 500 {
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nfail".to_vec()
    } else if state.options.nchan_style {
        let text = b"queued messages: 1\r\nlast requested: 0 sec. ago\r\nactive subscribers: 1\r\n";
        let mut answer = b"HTTP/1.1 202 Accepted\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        answer.extend_from_slice(format!("{:x}\r\n", text.len()).as_bytes());
        answer.extend_from_slice(text);
        answer.extend_from_slice(b"\r\n0\r\n\r\n");
        answer
    } else {
        let body = format!("{{\"id\":\"{EPOCH}-{n}\"}}");
        format!("HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
    };
    stream.write_all(&answer).is_ok()
}

/// Publish number n (1-based, over all rooms) with the faults applied: (status, n).
fn accept_publish(room: &str, body: &[u8], state: &State) -> (u16, u64) {
    let n = state.publishes.fetch_add(1, Ordering::SeqCst) + 1;
    let fault = state.options.fault;
    let mut status = if state.options.nchan_style { 202 } else { 201 };
    let mut stall_ms = state.options.publish_delay_ms;
    if let Some((at, ms)) = state.options.stall {
        if at == n {
            stall_ms += ms;
        }
    }
    {
        let mut rooms = state.rooms.lock().unwrap();
        match fault {
            Fault::Drop(at) if at == n => {}
            Fault::FailPublish(at) if at == n => status = 500,
            Fault::Duplicate(at) if at == n => {
                deliver(&mut rooms, room, body, state);
                deliver(&mut rooms, room, body, state);
            }
            Fault::Swap(at) if at == n => {
                *state.held.lock().unwrap() = Some((room.to_string(), body.to_vec()));
            }
            Fault::Swap(at) if at + 1 == n => {
                deliver(&mut rooms, room, body, state);
                if let Some((held_room, held)) = state.held.lock().unwrap().take() {
                    deliver(&mut rooms, &held_room, &held, state);
                }
            }
            Fault::WrongRoom(at) if at == n => {
                deliver(&mut rooms, room, body, state);
                let other = rooms.keys().find(|name| name.as_str() != room).cloned();
                if let Some(other) = other {
                    deliver(&mut rooms, &other, body, state);
                }
            }
            Fault::Disconnect(at) if at == n => {
                for entry in rooms.values_mut() {
                    for subscriber in entry.subscribers.drain(..) {
                        let _ = match subscriber {
                            Subscriber::Sse(stream) => stream.shutdown(std::net::Shutdown::Both),
                            Subscriber::Ws(conn) => {
                                conn.lock().unwrap().shutdown(std::net::Shutdown::Both)
                            }
                        };
                    }
                }
            }
            Fault::StallPublish(at, ms) if at == n => {
                deliver(&mut rooms, room, body, state);
                stall_ms += ms;
            }
            _ => deliver(&mut rooms, room, body, state),
        }
    }
    if stall_ms > 0 {
        std::thread::sleep(Duration::from_millis(stall_ms));
    }
    (status, n)
}

/// Runs the ringload binary with `args`.
pub fn ringload(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringload"))
        .args(args)
        .output()
        .expect("run ringload")
}

/// Parses ringload's `--json` stdout, with the whole output in the panic message if not.
pub fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "stdout is not JSON ({error}); status {:?}\nstdout: {}\nstderr: {}",
            output.status.code(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// An address on 127.0.0.1 with nothing listening.
pub fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}
