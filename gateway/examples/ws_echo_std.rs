//! DEVELOPMENT HARNESS, not the product: a WebSocket echo server over blocking std
//! `TcpStream`s (one thread per connection) that drives `gateway::conn::ws::WsConn`, so the
//! Autobahn|Testsuite cases (via `kosoku`) can judge the sans-IO machine before it is wired
//! into the shard's io_uring loop. The real echo route is `GET /ws/echo` on the ring behind
//! `--ws-echo` (issue 16); this file goes away or stays as a debugging aid once that exists.
//!
//! Run: `cargo run -p gateway --example ws_echo_std -- 127.0.0.1:9002`, then
//! `kosoku ws://127.0.0.1:9002/ -i '1.*' …`. Every path is the echo; messages up to
//! `ECHO_MESSAGE_BYTES_MAX` (16 MiB, Autobahn 9.*).

use gateway::conn::ws::{
    accept, HeaderField, OriginPolicy, UpgradeRequest, WsConfig, WsConn, WsEvent,
};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Longest request head read before refusing.
const HEAD_BYTES_MAX: usize = 8 * 1024;
/// Bytes asked of each read.
const READ_BYTES: usize = 64 * 1024;

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9002".into());
    let listener = TcpListener::bind(&addr)?;
    eprintln!("ws_echo_std listening on {}", listener.local_addr()?);
    for stream in listener.incoming() {
        let stream = stream?;
        std::thread::spawn(move || {
            if let Err(err) = serve(stream) {
                eprintln!("connection: {err}");
            }
        });
    }
    Ok(())
}

fn serve(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(READ_BYTES);
    let head_len = loop {
        let mut headers = [httparse::EMPTY_HEADER; 48];
        let mut request = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(len)) = request.parse(&buf) {
            let fields: Vec<HeaderField> = request.headers.iter().map(HeaderField::from).collect();
            let upgrade = UpgradeRequest {
                method: request.method.unwrap_or(""),
                version: request.version.unwrap_or(0),
                headers: &fields,
            };
            match accept(&upgrade, &OriginPolicy::Any) {
                Ok(response) => stream.write_all(&response)?,
                Err(refusal) => {
                    let reason = refusal.to_string();
                    let response = format!(
                        "HTTP/1.1 {} Refused\r\n{}Content-Length: {}\r\nConnection: close\r\n\r\n{}",
                        refusal.status(),
                        refusal.extra_headers(),
                        reason.len(),
                        reason
                    );
                    return stream.write_all(response.as_bytes());
                }
            }
            break len;
        }
        if buf.len() > HEAD_BYTES_MAX {
            return Ok(());
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    buf.drain(..head_len);

    let config = WsConfig {
        message_bytes_max: gateway::conn::ws::machine::ECHO_MESSAGE_BYTES_MAX,
        ..WsConfig::default()
    };
    let mut conn = WsConn::new(Instant::now(), config);
    let mut chunk = vec![0u8; READ_BYTES];
    loop {
        // Feed what is buffered, answering events and writing frames as they come.
        let mut used = 0;
        loop {
            used += conn.handle_bytes(Instant::now(), &buf[used..]);
            while let Some(event) = conn.poll_event() {
                let sent = match event {
                    WsEvent::Text(text) => {
                        flush(&mut stream, &mut conn)?;
                        conn.send_text(&text)
                    }
                    WsEvent::Binary(data) => {
                        flush(&mut stream, &mut conn)?;
                        conn.send_binary(&data)
                    }
                    WsEvent::Closed { .. } => Ok(()),
                };
                let _ = sent; // refused only while closing: nothing to echo then
            }
            flush(&mut stream, &mut conn)?;
            if conn.is_closed() {
                // RFC 6455 §7.1.1: the server closes the TCP connection first.
                let _ = stream.shutdown(std::net::Shutdown::Both);
                return Ok(());
            }
            if used == buf.len() {
                break;
            }
        }
        buf.clear();
        // Read until the next deadline.
        let timeout = conn
            .poll_timeout()
            .map(|at| at.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(60))
            .max(Duration::from_millis(1));
        stream.set_read_timeout(Some(timeout))?;
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                conn.handle_timeout(Instant::now());
                while let Some(_event) = conn.poll_event() {}
                flush(&mut stream, &mut conn)?;
                if conn.is_closed() {
                    return Ok(());
                }
            }
            Err(err) => return Err(err),
        }
    }
}

fn flush(stream: &mut TcpStream, conn: &mut WsConn) -> std::io::Result<()> {
    while let Some(frame) = conn.poll_transmit() {
        stream.write_all(&frame)?;
    }
    Ok(())
}
