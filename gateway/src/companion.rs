//! A shard's companion thread: pinned to the shard's CPU, it runs a current-thread tokio
//! runtime with hyper (TLS, HTTP/2) and quinn (HTTP/3), and hands every request to its
//! shard as a virtual connection (virtual_conn.rs). The shard's io_uring loop stays
//! single-purpose; the only traffic between the two threads is mail (docs/TRANSPORTS.md).
//!
//! A request is translated to HTTP/1.1 bytes (`Connection: close`, the body read whole up
//! to `--max-message-bytes`), so routing, refusals, publish, room queries, metrics and auth
//! are the shard's own HTTP/1.1 code. The answer comes back as HTTP/1.1 bytes through the
//! sink: its head becomes the HTTP/2 or HTTP/3 response head, the rest its body.

use crate::mailbox::Mail;
use crate::virtual_conn::{Transport, VirtualSink};
use crate::worker::Shared;
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

/// How long the flusher waits before retrying mail that found the shard's queue full.
const OUTBOX_RETRY: Duration = Duration::from_millis(1);
/// How often the companion checks the stop flag.
const STOP_POLL: Duration = Duration::from_millis(50);
/// Largest response head the companion accepts from its shard (the shard writes ~300 B).
const RESPONSE_HEAD_BYTES_MAX: usize = 16 * 1024;

/// The listeners of one shard's companion, bound (SO_REUSEPORT) by the server before any
/// thread starts.
#[derive(Default)]
pub struct Listeners {
    /// TLS over TCP.
    pub tls: Option<std::net::TcpListener>,
    /// Cleartext HTTP/2.
    pub h2c: Option<std::net::TcpListener>,
    /// QUIC.
    pub h3: Option<std::net::UdpSocket>,
}

/// What a companion's tasks share.
pub struct Companion {
    /// The shard this companion serves.
    pub index: usize,
    /// The process-wide state (mesh, figures, settings, stop flag).
    pub shared: Arc<Shared>,
    /// Mail that found the queue to the shard full, sent by the flusher later. Only this
    /// thread touches it; the mutex is never contended.
    overflow: Mutex<VecDeque<Mail>>,
    wake_pending: AtomicBool,
    flush: tokio::sync::Notify,
}

impl Companion {
    /// Sends mail to the shard; the shard is woken once per runtime turn, not per mail.
    pub fn post(&self, mail: Mail) {
        let mut overflow = self.overflow.lock().expect("companion outbox");
        let mail = if overflow.is_empty() {
            self.shared
                .mesh
                .companion_queue(self.index)
                .push(mail)
                .err()
        } else {
            Some(mail)
        };
        if let Some(mail) = mail {
            overflow.push_back(mail);
        }
        drop(overflow);
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            self.flush.notify_one();
        }
    }

    /// Moves overflow mail into the queue and wakes the shard, once per runtime turn.
    async fn flusher(self: Arc<Self>) {
        loop {
            self.flush.notified().await;
            // Let the other ready tasks post first, so one wake-up carries their mail too.
            tokio::task::yield_now().await;
            loop {
                self.wake_pending.store(false, Ordering::Release);
                let stuck = {
                    let mut overflow = self.overflow.lock().expect("companion outbox");
                    let queue = self.shared.mesh.companion_queue(self.index);
                    while let Some(mail) = overflow.pop_front() {
                        if let Err(mail) = queue.push(mail) {
                            overflow.push_front(mail);
                            break;
                        }
                    }
                    !overflow.is_empty()
                };
                self.shared.mesh.wake(self.index);
                if !stuck {
                    break;
                }
                tokio::time::sleep(OUTBOX_RETRY).await;
            }
        }
    }

    /// Serves one request: mails it to the shard and waits for the answer's head.
    pub async fn open(
        self: &Arc<Self>,
        parts: &http::request::Parts,
        body: &[u8],
        body_len: usize,
        transport: Transport,
    ) -> (http::response::Parts, VirtualStream) {
        let sink = Arc::new(VirtualSink::default());
        let request = http1_request(parts, body, body_len);
        self.post(Mail::VirtualOpen {
            request,
            sink: sink.clone(),
            transport,
        });
        let mut stream = VirtualStream {
            companion: self.clone(),
            sink,
            pending: VecDeque::new(),
            done_owed: false,
            remaining: None,
        };
        let mut head = BytesMut::new();
        loop {
            let Some(frame) = std::future::poll_fn(|cx| stream.poll_frame(cx)).await else {
                // Closed before answering: no slot for it.
                let body = "connection limit reached\n";
                return (plain_parts(503, body), VirtualStream::ended(stream, body));
            };
            head.extend_from_slice(&frame);
            match parse_head(&head) {
                Ok(Some((parts, len, content_length))) => {
                    let rest = head.split_off(len).freeze();
                    if !rest.is_empty() {
                        stream.pending.push_front(rest);
                    }
                    stream.remaining = content_length;
                    return (parts, stream);
                }
                Ok(None) if head.len() <= RESPONSE_HEAD_BYTES_MAX => {}
                _ => {
                    tracing::warn!(shard = self.index, "shard answered with a bad head");
                    let body = "bad answer from the shard\n";
                    return (plain_parts(500, body), VirtualStream::ended(stream, body));
                }
            }
        }
    }
}

/// The body of one virtual connection's answer: the frames the shard pushes into its sink.
/// Taking the last frame of a batch mails `VirtualWriteDone`; dropping it mails
/// `VirtualClose` (the peer is gone, or the answer is complete).
pub struct VirtualStream {
    companion: Arc<Companion>,
    sink: Arc<VirtualSink>,
    pending: VecDeque<Bytes>,
    /// A batch was taken and `VirtualWriteDone` is not mailed yet.
    done_owed: bool,
    /// Body bytes left of a `Content-Length` answer; `None` for streams.
    remaining: Option<usize>,
}

impl VirtualStream {
    /// `stream` answering `body` (made by the companion) instead of what the shard sends.
    fn ended(mut stream: VirtualStream, body: &'static str) -> VirtualStream {
        stream.pending.clear();
        stream
            .pending
            .push_back(Bytes::from_static(body.as_bytes()));
        stream.remaining = Some(body.len());
        stream
    }

    /// The next piece of body; `None` at its end.
    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        loop {
            if self.remaining == Some(0) {
                return Poll::Ready(None);
            }
            if let Some(frame) = self.pending.pop_front() {
                if self.pending.is_empty() {
                    self.write_done();
                }
                if let Some(remaining) = &mut self.remaining {
                    *remaining = remaining.saturating_sub(frame.len());
                }
                return Poll::Ready(Some(frame));
            }
            match self.sink.poll_batch(cx) {
                Poll::Ready(Some(batch)) => {
                    self.pending.extend(batch);
                    self.done_owed = true;
                    if self.pending.is_empty() {
                        self.write_done();
                    }
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// The next piece of body (see [`Self::poll_frame`]).
    pub async fn next_frame(&mut self) -> Option<Bytes> {
        std::future::poll_fn(|cx| self.poll_frame(cx)).await
    }

    /// Resolves once the shard closed the connection (e.g. cut it as a slow consumer).
    pub async fn closed(&self) {
        self.sink.closed().await
    }

    fn write_done(&mut self) {
        if std::mem::take(&mut self.done_owed) {
            self.companion.post(Mail::VirtualWriteDone {
                sink: self.sink.clone(),
            });
        }
    }
}

impl Drop for VirtualStream {
    fn drop(&mut self) {
        if !self.sink.is_closed() {
            self.companion.post(Mail::VirtualClose {
                sink: self.sink.clone(),
            });
        }
    }
}

/// `http::Response` parts of a short plain-text answer the companion makes itself.
pub fn plain_parts(status: u16, body: &str) -> http::response::Parts {
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
    parts.headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    parts.headers.insert(
        http::header::CONTENT_LENGTH,
        http::HeaderValue::from(body.len()),
    );
    parts
}

/// Header fields not carried between HTTP/1.1 and HTTP/2/3 (connection-specific).
fn hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection" | "keep-alive" | "transfer-encoding" | "upgrade" | "te" | "proxy-connection"
    )
}

/// The request as HTTP/1.1 bytes. `body_len` may exceed `body.len()` when the body was over
/// the limit: the head then declares it and the shard answers 413 from the head alone.
pub fn http1_request(parts: &http::request::Parts, body: &[u8], body_len: usize) -> Vec<u8> {
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nconnection: close\r\n");
    if let Some(authority) = parts.uri.authority() {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(authority.as_str().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("content-length: {body_len}\r\n").as_bytes());
    for (name, value) in &parts.headers {
        let name = name.as_str();
        if hop_by_hop(name) || name == "content-length" || name == "host" {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// Parses an HTTP/1.1 response head the shard wrote: its parts (connection-specific fields
/// dropped), its length, and its `Content-Length` (`None` for an SSE stream).
#[allow(clippy::type_complexity)]
fn parse_head(bytes: &[u8]) -> Result<Option<(http::response::Parts, usize, Option<usize>)>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = http::StatusCode::from_u16(response.code.ok_or(())?).map_err(|_| ())?;
    let mut content_length = None;
    for header in response.headers.iter() {
        let name = header.name.to_ascii_lowercase();
        if hop_by_hop(&name) {
            continue;
        }
        if name == "content-length" {
            content_length = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse().ok());
        }
        let name = http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| ())?;
        let value = http::HeaderValue::from_bytes(header.value).map_err(|_| ())?;
        parts.headers.append(name, value);
    }
    Ok(Some((parts, len, content_length)))
}

/// Starts shard `index`'s companion thread on `core`; it runs until the stop flag is set.
pub fn spawn(
    index: usize,
    shared: Arc<Shared>,
    listeners: Listeners,
    tls: Option<crate::tls::Identity>,
    core: Option<core_affinity::CoreId>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let thread = std::thread::Builder::new()
        .name(format!("companion-{index}"))
        .spawn(move || {
            if let Some(core) = core {
                if !core_affinity::set_for_current(core) {
                    tracing::warn!(shard = index, "companion could not pin to a CPU");
                }
            }
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(err) => {
                    tracing::error!(shard = index, %err, "companion runtime failed");
                    return;
                }
            };
            let companion = Arc::new(Companion {
                index,
                shared,
                overflow: Mutex::new(VecDeque::new()),
                wake_pending: AtomicBool::new(false),
                flush: tokio::sync::Notify::new(),
            });
            runtime.block_on(run(companion, listeners, tls));
        })?;
    Ok(thread)
}

async fn run(companion: Arc<Companion>, listeners: Listeners, tls: Option<crate::tls::Identity>) {
    tokio::spawn(companion.clone().flusher());
    let mut tasks = Vec::new();
    if let Some(listener) = listeners.h2c {
        tasks.push(tokio::spawn(crate::h2::serve_h2c(
            companion.clone(),
            listener,
        )));
    }
    if let (Some(listener), Some(identity)) = (listeners.tls, tls.as_ref()) {
        let identity = (identity.0.clone(), identity.1.clone_key());
        tasks.push(tokio::spawn(crate::h2::serve_tls(
            companion.clone(),
            listener,
            identity,
        )));
    }
    if let (Some(socket), Some(identity)) = (listeners.h3, tls) {
        tasks.push(tokio::spawn(crate::h3::serve(
            companion.clone(),
            socket,
            identity,
        )));
    }
    while !companion.shared.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(STOP_POLL).await;
    }
    // Stop accepting; streams end as the shard drains and closes their sinks.
    for task in tasks {
        task.abort();
    }
    std::future::pending::<()>().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h2_request_becomes_http1() {
        let request = http::Request::builder()
            .method("GET")
            .uri("https://example.org:8443/rooms/a/events?last_event_id=3")
            .header("last-event-id", "2")
            .header("connection", "keep-alive")
            .body(())
            .unwrap();
        let (parts, ()) = request.into_parts();
        let bytes = http1_request(&parts, b"", 0);
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.starts_with("GET /rooms/a/events?last_event_id=3 HTTP/1.1\r\n"),
            "{text}"
        );
        assert!(text.contains("host: example.org:8443\r\n"));
        assert!(text.contains("last-event-id: 2\r\n"));
        assert!(!text.contains("keep-alive"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn response_heads_lose_connection_fields() {
        let head = crate::http1::response(201, "application/json", "", b"{\"id\":1}", true);
        let (parts, len, content_length) = parse_head(&head).unwrap().unwrap();
        assert_eq!(parts.status, 201);
        assert_eq!(len, head.len() - 8);
        assert_eq!(content_length, Some(8));
        assert!(parts.headers.get("connection").is_none());
        let (parts, _, content_length) = parse_head(crate::http1::SSE_HEAD).unwrap().unwrap();
        assert_eq!(parts.status, 200);
        assert_eq!(content_length, None);
        assert!(matches!(parse_head(b"HTTP/1.1 200 OK\r\n"), Ok(None)));
    }
}
