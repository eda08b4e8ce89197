//! A deliberately simple ringcast-compatible server that batches events: publishes are
//! appended to a per-room buffer and a flusher writes each room's buffer to every
//! subscriber every `FLUSH_INTERVAL`, so each write carries many events. Used to measure
//! how many deliveries per second ringload can verify on one core:
//!
//! ```text
//! cargo run --release -p loadgen --example batch_server -- 127.0.0.1:8090 &
//! taskset -c 1 target/release/ringload fanout -t 1 -s 100 -r 10 --rate 10000 -d 5s \
//!   --sub-url 'http://127.0.0.1:8090/rooms/{room}/events' \
//!   --pub-url 'http://127.0.0.1:8090/rooms/{room}/messages'
//! ```

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often room buffers are flushed to subscribers.
const FLUSH_INTERVAL: Duration = Duration::from_millis(10);

#[derive(Default)]
struct Room {
    subscribers: Vec<TcpStream>,
    pending: Vec<u8>,
    next_id: u64,
}

type Rooms = Arc<Mutex<HashMap<String, Room>>>;

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8090".into());
    let listener = TcpListener::bind(&addr)?;
    eprintln!("batch_server listening on {addr}");
    let rooms: Rooms = Arc::default();
    let flusher = rooms.clone();
    std::thread::spawn(move || loop {
        std::thread::sleep(FLUSH_INTERVAL);
        let batches: Vec<(Vec<u8>, Vec<TcpStream>)> = {
            let mut rooms = flusher.lock().expect("lock");
            rooms
                .values_mut()
                .filter(|room| !room.pending.is_empty())
                .map(|room| {
                    let streams = room
                        .subscribers
                        .iter()
                        .filter_map(|s| s.try_clone().ok())
                        .collect();
                    (std::mem::take(&mut room.pending), streams)
                })
                .collect()
        };
        for (batch, streams) in batches {
            for mut stream in streams {
                let _ = stream.write_all(&batch);
            }
        }
    });
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let rooms = rooms.clone();
        std::thread::spawn(move || serve(stream, &rooms));
    }
    Ok(())
}

fn serve(stream: TcpStream, rooms: &Rooms) {
    let _ = stream.set_nodelay(true);
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut stream = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (method.as_str(), segments.as_slice()) {
            ("GET", ["rooms", room, "events"]) => {
                let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n";
                if stream.write_all(head).is_ok() {
                    let mut rooms = rooms.lock().expect("lock");
                    rooms
                        .entry(room.to_string())
                        .or_default()
                        .subscribers
                        .push(stream);
                }
                return;
            }
            ("POST", ["rooms", room, "messages"]) => {
                let id = {
                    let mut rooms = rooms.lock().expect("lock");
                    let room = rooms.entry(room.to_string()).or_default();
                    room.next_id += 1;
                    let id = room.next_id;
                    room.pending
                        .extend_from_slice(format!("id: {id}\ndata: ").as_bytes());
                    room.pending.extend_from_slice(&body);
                    room.pending.extend_from_slice(b"\n\n");
                    id
                };
                let answer = format!("{{\"id\":{id}}}");
                let response = format!(
                    "HTTP/1.1 201 Created\r\nContent-Length: {}\r\n\r\n{answer}",
                    answer.len()
                );
                if stream.write_all(response.as_bytes()).is_err() {
                    return;
                }
            }
            _ => {
                let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
            }
        }
    }
}
