//! What HTTP/2 and HTTP/3 share on a companion thread: the `Companion` (its shard's mail
//! outbox, doorbell and stream accounting), virtual streams with their sinks, the translation
//! of a request to HTTP/1.1 bytes and of the shard's answer back to response parts.
//! Must not touch sockets of the shard's ring or the shard's connections.

use super::stream_pace::{stream_pace, StreamPace, StreamRefusal};
use crate::mesh::mail::{Mail, TlsHandOff};
use crate::mesh::virtual_conn::{Doorbell, Transport, VirtualSink};
use crate::runtime::shared::Shared;
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// How long the flusher waits before retrying mail that found the shard's queue full.
const OUTBOX_RETRY: Duration = Duration::from_millis(1);
/// Largest response head the companion accepts from its shard (the shard writes ~300 B).
const RESPONSE_HEAD_BYTES_MAX: usize = 16 * 1024;
/// Streams an HTTP/2 or HTTP/3 connection may have open beyond its subscriptions
/// (`--max-streams-per-conn`), for publishes and queries beside them. The protocol's stream
/// limit (hyper's `max_concurrent_streams`, quinn's `max_concurrent_bidi_streams`) is the sum,
/// so even a client that opens only subscriptions is held by the protocol itself.
pub const SHORT_STREAMS_SLACK: usize = 16;

// The largest `--max-streams-per-conn` gives a burst the stream pace can hold
// (stream_pace.rs: twice the connection's streams, read modulo 2^32 ticks).
const _: () =
    assert!(2 * (crate::config::MAX_STREAMS_PER_CONN_LIMIT + SHORT_STREAMS_SLACK) < 1 << 31);
/// The body of the 429 for a subscription past `--max-streams-per-conn`.
const STREAMS_REFUSAL: &str = "too many streams on this connection\n";

/// The body of the 429 for a stream past its connection's pace.
const STREAM_RATE_REFUSAL: &str = "too many new streams on this connection\n";

/// The body of the 408 for a request body not complete within `--body-timeout` (the
/// shard's words on HTTP/1.1).
const BODY_TIMEOUT_REFUSAL: &str = "request body not complete in time\n";

/// The body length to declare to the shard for a request whose `Content-Length` is over
/// `limit` (`--max-message-bytes`): `limit + 1`, so the shard refuses it with 413 from the
/// head and the body is never read, as on HTTP/1.1. `None` when the request declares no
/// length or one within the limit (a length that is not digits is refused by hyper and h3).
pub fn declared_over_limit(parts: &http::request::Parts, limit: usize) -> Option<usize> {
    let declared = parts.headers.get(http::header::CONTENT_LENGTH)?;
    let over = match std::str::from_utf8(declared.as_bytes()) {
        Ok(digits) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
            digits.parse::<usize>().map_or(true, |len| len > limit)
        }
        _ => false,
    };
    over.then_some(limit.saturating_add(1))
}

/// Subscriptions open on one HTTP/2 or HTTP/3 connection.
#[derive(Debug, Default, Clone)]
pub struct StreamCount(Arc<AtomicUsize>);

/// One counted subscription; dropping it (when the stream ends) frees its place.
#[derive(Debug)]
pub struct StreamPlace(Arc<AtomicUsize>);

impl StreamCount {
    /// A place for one more subscription, unless `max` are open.
    pub fn try_open(&self, max: usize) -> Option<StreamPlace> {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < max).then_some(open + 1)
            })
            .ok()
            .map(|_| StreamPlace(self.0.clone()))
    }

    /// Subscriptions open.
    pub fn open(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

impl Drop for StreamPlace {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether `path` is a WebSocket route (`/ws/echo`, `/rooms/{room}/ws`, `/ws`), where an
/// HTTP/2 extended CONNECT (RFC 8441) may open a WebSocket: asked of the route table.
pub fn is_websocket_path(path: &str) -> Result<bool, crate::http::route::RouteError> {
    crate::http::route::Route::parse(path).map(|route| route.is_websocket())
}

/// Whether a request is a subscription (`GET /rooms/{room}/events`), which counts against
/// `--max-streams-per-conn`: asked of the route table HTTP/1.1 routes with (route.rs).
pub fn is_subscribe(parts: &http::request::Parts) -> bool {
    let method = crate::http::route::Method::from_token(parts.method.as_str());
    crate::http::route::is_subscription(method, parts.uri.path())
}

/// Mail posted without waking the shard before the companion wakes it anyway (normally it
/// wakes the shard once, when its runtime goes idle).
const POSTS_PER_WAKE: usize = 1024;
/// Longest the shard is left unwoken with mail waiting while the runtime stays busy.
const WAKE_LATEST: Duration = Duration::from_millis(2);
/// Largest body chunk made by joining the frames of one batch: a batch becomes one HTTP/2
/// DATA frame or HTTP/3 `send_data` per this many bytes, not one per event.
const CHUNK_BYTES_MAX: usize = 64 * 1024;

/// One connection counted against `--max-connections-per-ip` in the process-wide table;
/// dropping it (when the connection ends) releases the count.
pub struct ConnectionPlace {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl ConnectionPlace {
    /// Takes over a count the shard acquired for `ip` (a handed-off TLS connection).
    pub fn adopt(shared: Arc<Shared>, ip: IpAddr) -> Self {
        Self { shared, ip }
    }
}

impl Drop for ConnectionPlace {
    fn drop(&mut self) {
        self.shared.per_ip.release(self.ip);
    }
}

/// The listeners of one shard's companion, bound (SO_REUSEPORT) by the server before any
/// thread starts, and its end of the shard's TLS hand-off queue.
#[derive(Default)]
pub struct Listeners {
    /// TLS connections of `h2` clients from the shard's ring (`--tls-listen`).
    pub tls_handoff: Option<tokio::sync::mpsc::Receiver<TlsHandOff>>,
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
    /// Mail was posted and the shard not woken since.
    wake_owed: AtomicBool,
    /// Mail posted since the shard was last woken.
    posted: AtomicUsize,
    /// The flusher was told about overflow mail.
    flush_pending: AtomicBool,
    flush: tokio::sync::Notify,
    /// Batches pushed by the shard are announced here (virtual_conn.rs).
    doorbell: Arc<Doorbell>,
}

impl Companion {
    /// `--max-streams-per-conn` (subscriptions) and the protocol's concurrent stream limit.
    pub fn streams_max(&self) -> (usize, u32) {
        let subscriptions = self.shared.config.max_streams_per_conn;
        (subscriptions, (subscriptions + SHORT_STREAMS_SLACK) as u32)
    }

    /// Admits a new connection from `ip` when it is within
    /// `--max-new-connections-per-ip-per-sec` (the bucket shared with the ring's listeners)
    /// and `--max-connections-per-ip` (the table shared with them); the place it holds is
    /// released when the returned guard drops. A refusal is counted.
    pub fn admit_connection(&self, ip: IpAddr) -> Option<ConnectionPlace> {
        let (_, config) = self.shared.live.current();
        let rate = config.max_new_connections_per_ip_per_sec;
        let refused = if !self
            .shared
            .new_connections
            .try_take(ip, std::time::Instant::now(), rate)
        {
            crate::app::admission::Rejection::NewConnectionRate
        } else if !self
            .shared
            .per_ip
            .try_acquire(ip, config.max_connections_per_ip)
        {
            crate::app::admission::Rejection::PerIpLimit
        } else {
            return Some(ConnectionPlace::adopt(self.shared.clone(), ip));
        };
        self.shared.figures[self.index].add_companion_rejection(refused);
        tracing::debug!(shard = self.index, %ip, reason = refused.label(), "new connection refused");
        None
    }

    /// The 429 answer (head and body) to a subscription past `--max-streams-per-conn`;
    /// counted.
    pub fn refuse_stream(&self) -> (http::response::Parts, Bytes) {
        self.shared.figures[self.index]
            .add_refusal(crate::app::admission::RefusalReason::StreamsPerConnection);
        (
            plain_parts(429, STREAMS_REFUSAL),
            Bytes::from_static(STREAMS_REFUSAL.as_bytes()),
        )
    }

    /// A new HTTP/2 or HTTP/3 connection's stream pace.
    pub fn stream_pace(&self) -> StreamPace {
        StreamPace::new(
            stream_pace(
                self.streams_max().1,
                self.shared.config.new_streams_per_conn_per_sec,
            ),
            self.shared.clock.anchor(),
            Instant::now(),
        )
    }

    /// The 429 answer (head and body, `Retry-After` in whole seconds) to a stream past its
    /// connection's pace; counted.
    pub fn refuse_stream_rate(&self, refusal: StreamRefusal) -> (http::response::Parts, Bytes) {
        self.shared.figures[self.index]
            .add_refusal(crate::app::admission::RefusalReason::StreamRate);
        if refusal.close {
            tracing::debug!(shard = self.index, "new streams far past the pace: closing");
        }
        let wait = refusal.wait;
        let mut parts = plain_parts(429, STREAM_RATE_REFUSAL);
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        parts.headers.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from(seconds.max(1)),
        );
        (parts, Bytes::from_static(STREAM_RATE_REFUSAL.as_bytes()))
    }

    /// `--header-timeout` and `--body-timeout` as in force now (they reload).
    pub fn request_timeouts(&self) -> (Duration, Duration) {
        let (_, config) = self.shared.live.current();
        (config.header_timeout, config.body_timeout)
    }

    /// Counts a request whose head or body did not arrive in time (the head: its stream
    /// or connection is dropped, there is no request to answer).
    pub fn count_timeout(&self, reason: crate::app::admission::RefusalReason) {
        self.shared.figures[self.index].add_refusal(reason);
    }

    /// The 408 answer (head and body) to a request whose body did not arrive within
    /// `--body-timeout`, as the shard answers on HTTP/1.1; counted.
    pub fn refuse_body_timeout(&self) -> (http::response::Parts, Bytes) {
        self.count_timeout(crate::app::admission::RefusalReason::BodyTimeout);
        (
            plain_parts(408, BODY_TIMEOUT_REFUSAL),
            Bytes::from_static(BODY_TIMEOUT_REFUSAL.as_bytes()),
        )
    }

    pub(super) fn new(index: usize, shared: Arc<Shared>) -> Self {
        Companion {
            index,
            shared,
            overflow: Mutex::new(VecDeque::new()),
            wake_owed: AtomicBool::new(false),
            posted: AtomicUsize::new(0),
            flush_pending: AtomicBool::new(false),
            flush: tokio::sync::Notify::new(),
            doorbell: Arc::new(Doorbell::default()),
        }
    }

    /// Sends mail to the shard. The shard shares the CPU, so it is not woken per mail but
    /// once when the runtime goes idle ([`Self::wake_shard`] from the park hook), or after
    /// [`POSTS_PER_WAKE`] mails: one wake-up carries every `VirtualWriteDone` of a round.
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
        let overflowed = mail.is_some();
        if let Some(mail) = mail {
            overflow.push_back(mail);
        }
        drop(overflow);
        let owed = self.wake_owed.swap(true, Ordering::AcqRel);
        if (overflowed || !owed) && !self.flush_pending.swap(true, Ordering::AcqRel) {
            self.flush.notify_one();
        }
        if self.posted.fetch_add(1, Ordering::Relaxed) + 1 >= POSTS_PER_WAKE {
            self.wake_shard();
        }
    }

    /// Wakes the shard if mail was posted since the last wake-up.
    pub(super) fn wake_shard(&self) {
        self.posted.store(0, Ordering::Relaxed);
        if self.wake_owed.swap(false, Ordering::AcqRel) {
            self.shared.mesh.wake(self.index);
        }
    }

    /// Wakes the tasks of the sinks the shard pushed to, answers first (see [`Doorbell`]).
    pub(super) async fn dispatcher(self: Arc<Self>) {
        let (mut urgent, mut streams) = (Vec::new(), Vec::new());
        loop {
            std::future::poll_fn(|cx| self.doorbell.poll_ready(cx, &mut urgent, &mut streams))
                .await;
            if !urgent.is_empty() {
                for sink in urgent.drain(..) {
                    sink.wake();
                }
                // Let the answers reach their sockets before the streams' round.
                tokio::task::yield_now().await;
            }
            for sink in streams.drain(..) {
                sink.wake();
            }
        }
    }

    /// Moves overflow mail into the queue (retrying while it is full) and wakes the shard;
    /// wakes it after [`WAKE_LATEST`] if the runtime stays too busy to go idle.
    pub(super) async fn flusher(self: Arc<Self>) {
        loop {
            self.flush.notified().await;
            self.flush_pending.store(false, Ordering::Release);
            if self.overflow.lock().expect("companion outbox").is_empty() {
                tokio::time::sleep(WAKE_LATEST).await;
                self.wake_shard();
                continue;
            }
            loop {
                self.flush_pending.store(false, Ordering::Release);
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
                self.wake_owed.store(true, Ordering::Release);
                self.wake_shard();
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
        let sink = Arc::new(VirtualSink::new(Some(self.doorbell.clone())));
        let request = http1_request(parts, body, body_len);
        self.open_sink(request, sink, transport).await
    }

    /// Opens an RFC 8441 WebSocket (an extended CONNECT the caller checked) as a tunnel:
    /// the shard gets it as a `GET` of its path (route, auth and admission as for an
    /// HTTP/1.1 upgrade) on a sink the client's bytes come in through too
    /// (virtual_conn.rs). A `200` head means the shard's WebSocket driver has it.
    pub async fn open_tunnel(
        self: &Arc<Self>,
        parts: &http::request::Parts,
        transport: Transport,
    ) -> (http::response::Parts, VirtualStream) {
        let sink = Arc::new(VirtualSink::tunnel(Some(self.doorbell.clone())));
        let request = http1_request_as("GET", parts, b"", 0);
        self.open_sink(request, sink, transport).await
    }

    async fn open_sink(
        self: &Arc<Self>,
        request: Vec<u8>,
        sink: Arc<VirtualSink>,
        transport: Transport,
    ) -> (http::response::Parts, VirtualStream) {
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
                    if content_length.is_none() {
                        stream.sink.set_streaming();
                    }
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
                    join_batch(batch, &mut self.pending);
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

    /// The connection's sink (a tunnel's receives go through it).
    pub fn sink(&self) -> &Arc<VirtualSink> {
        &self.sink
    }

    /// Mails the shard that a tunnel's receive was answered ([`VirtualSink::deliver`]).
    pub fn received(&self) {
        self.companion.post(Mail::VirtualReceived {
            sink: self.sink.clone(),
        });
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

/// Appends `batch` to `out` as few chunks as possible: frames are joined (copied) up to
/// [`CHUNK_BYTES_MAX`], so a batch of events costs one DATA frame / `send_data`, not one
/// per event. A lone frame, or one as large as a chunk, is passed on without a copy.
fn join_batch(batch: Vec<Bytes>, out: &mut VecDeque<Bytes>) {
    if batch.len() <= 1 {
        out.extend(batch);
        return;
    }
    let mut left: usize = batch.iter().map(Bytes::len).sum();
    let mut chunk = BytesMut::new();
    for frame in batch {
        left -= frame.len();
        if !chunk.is_empty() && chunk.len() + frame.len() > CHUNK_BYTES_MAX {
            out.push_back(chunk.split().freeze());
        }
        if frame.len() >= CHUNK_BYTES_MAX {
            out.push_back(frame);
            continue;
        }
        if chunk.is_empty() {
            chunk.reserve((frame.len() + left).min(CHUNK_BYTES_MAX));
        }
        chunk.extend_from_slice(&frame);
    }
    if !chunk.is_empty() {
        out.push_back(chunk.freeze());
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
    http1_request_as(parts.method.as_str(), parts, body, body_len)
}

/// [`http1_request`] with another method (an extended CONNECT becomes a `GET`).
fn http1_request_as(
    method: &str,
    parts: &http::request::Parts,
    body: &[u8],
    body_len: usize,
) -> Vec<u8> {
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nconnection: close\r\n");
    // Exactly one Host, as HTTP/1.1 requires (http1::parse refuses none or two): the
    // :authority, else a Host field the client sent, else empty (RFC 9112 §3.2).
    let host = parts
        .uri
        .authority()
        .map(|authority| authority.as_str().as_bytes())
        .or_else(|| parts.headers.get(http::header::HOST).map(|v| v.as_bytes()))
        .unwrap_or_default();
    out.extend_from_slice(b"host: ");
    out.extend_from_slice(host);
    out.extend_from_slice(b"\r\n");
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

/// A response body: fed by a virtual connection, or one piece the companion made itself.
pub enum VirtualBody {
    /// The shard's answer; a subscription holds its place on the connection until the
    /// body is dropped.
    Stream(VirtualStream, Option<StreamPlace>),
    /// A short answer (the 429 for too many streams).
    Fixed(Option<Bytes>),
}

impl http_body::Body for VirtualBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::convert::Infallible>>> {
        match self.get_mut() {
            VirtualBody::Stream(stream, _) => stream
                .poll_frame(cx)
                .map(|frame| frame.map(|data| Ok(http_body::Frame::data(data)))),
            VirtualBody::Fixed(data) => {
                Poll::Ready(data.take().map(|data| Ok(http_body::Frame::data(data))))
            }
        }
    }
}

#[cfg(test)]
mod tests;
