//! HTTP/2 with hyper on a shard's companion thread: TLS connections the shard's ring handed
//! over after reading a ClientHello that offers ALPN `h2` (the ClientHello is replayed to
//! tokio-rustls, which finishes the handshake), and the h2c listener (prior knowledge).
//! Every request becomes a virtual connection of the shard (companion.rs); an extended
//! CONNECT (RFC 8441, announced in SETTINGS) opens a WebSocket through a tunnel
//! (ws_tunnel.rs). HTTP/1.1 over TLS is served on the ring itself (tls_conn.rs).
//!
//! Flow control: hyper polls a response body only when the HTTP/2 stream has send
//! capacity (HTTP/1.1: when its write buffer has room), so a stream whose reader stopped
//! leaves its batch in the sink, its write stays in flight on the shard and the fan-out
//! cuts it as a slow consumer. Memory held for it: one batch.

use crate::app::admission::RefusalReason;
use crate::companion::bridge::{Companion, ConnectionPlace, StreamCount, VirtualBody};
use crate::companion::stream_pace::{PaceToken, StreamPace};
use crate::mesh::mail::TlsHandOff;
use crate::mesh::virtual_conn::Transport;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// How long a connection closed for `--header-timeout` has to take its GOAWAY before the
/// socket is dropped.
const GOAWAY_GRACE: Duration = Duration::from_secs(1);

/// The body of the 400 for a request whose stream ended in error before its body was whole.
const BODY_INCOMPLETE: &str = "request body incomplete\n";

/// The HPACK-decoded header list an HTTP/2 request may carry: `--max-header-bytes`, as the
/// head of an HTTP/1.1 request (hyper answers 431 past it, and a CONTINUATION flood ends
/// the connection).
fn header_list_bytes_max(max_header_bytes: usize) -> u32 {
    u32::try_from(max_header_bytes).unwrap_or(u32::MAX)
}

/// Reads a request body up to `limit` bytes; returns what was read and the length to
/// declare (past the limit: more than `limit`, with the rest unread, so the shard refuses
/// with 413 from the head).
pub async fn read_body(mut body: Incoming, limit: usize) -> Result<(Vec<u8>, usize), hyper::Error> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if out.len() + data.len() > limit {
                return Ok((Vec::new(), out.len() + data.len()));
            }
            out.extend_from_slice(&data);
        }
    }
    let len = out.len();
    Ok((out, len))
}

/// A response body that gives its stream's pace action back once it ended (see
/// `StreamPace`): hyper drops a body unfinished when the client resets its stream, and the
/// action stays taken.
pub struct PacedBody {
    body: VirtualBody,
    token: Option<PaceToken>,
}

impl PacedBody {
    fn new(body: VirtualBody, token: Option<PaceToken>) -> Self {
        Self { body, token }
    }

    fn fixed(body: bytes::Bytes) -> Self {
        Self::new(VirtualBody::Fixed(Some(body)), None)
    }
}

impl http_body::Body for PacedBody {
    type Data = bytes::Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Infallible>>> {
        let this = self.get_mut();
        let frame = std::task::ready!(Pin::new(&mut this.body).poll_frame(cx));
        if frame.is_none() {
            if let Some(token) = this.token.take() {
                token.give_back();
            }
        }
        Poll::Ready(frame)
    }
}

async fn handle(
    companion: Arc<Companion>,
    request: http::Request<Incoming>,
    transport: Transport,
    streams: StreamCount,
    pace: StreamPace,
    requested: Arc<AtomicBool>,
) -> Result<http::Response<PacedBody>, Infallible> {
    let (parts, body) = request.into_parts();
    requested.store(true, Ordering::Release);
    // Before any work: a stream past the connection's pace gets 429 (a reset loop).
    let token = match pace.try_open(std::time::Instant::now()) {
        Ok(token) => token,
        Err(refusal) => {
            // Past its refusals too: the connection's task sends GOAWAY (StreamPace::excess).
            let (head, body) = companion.refuse_stream_rate(refusal);
            return Ok(http::Response::from_parts(head, PacedBody::fixed(body)));
        }
    };
    if parts.method == http::Method::CONNECT {
        // RFC 8441: a WebSocket, or refused (ws_tunnel.rs). hyper gives it no body. A
        // session: its pace action is kept.
        drop(body);
        let response =
            crate::companion::ws_tunnel::serve_connect(companion, parts, transport, streams).await;
        return Ok(response.map(|body| PacedBody::new(body, None)));
    }
    // A subscription is a session: its pace action is kept, whatever its answer.
    let (place, token) = if crate::companion::bridge::is_subscribe(&parts) {
        let place = match streams.try_open(companion.streams_max().0) {
            Some(place) => Some(place),
            None => {
                let (head, body) = companion.refuse_stream();
                return Ok(http::Response::from_parts(head, PacedBody::fixed(body)));
            }
        };
        (place, None)
    } else {
        (None, Some(token))
    };
    let limit = companion.shared.config.max_message_bytes;
    let (body, body_len) = match crate::companion::bridge::declared_over_limit(&parts, limit) {
        // Refused (413) from the head; hyper resets the stream instead of reading the body.
        Some(declared) => (Vec::new(), declared),
        None => {
            let (_, body_timeout) = companion.request_timeouts();
            match tokio::time::timeout(body_timeout, read_body(body, limit)).await {
                Ok(Ok(read)) => read,
                Ok(Err(err)) => {
                    // The stream was reset (or broke the protocol, e.g. more DATA than its
                    // Content-Length) before its body was whole: nothing reaches the shard
                    // (the request was taken for one with an empty body: an abandoned
                    // publish was published empty). hyper sends this answer only if the
                    // stream is still open; the pace action is kept (abandoned).
                    tracing::debug!(shard = companion.index, %err, "request body incomplete");
                    let body = bytes::Bytes::from_static(BODY_INCOMPLETE.as_bytes());
                    let head = crate::companion::bridge::plain_parts(400, BODY_INCOMPLETE);
                    return Ok(http::Response::from_parts(head, PacedBody::fixed(body)));
                }
                Err(_) => {
                    let (head, body) = companion.refuse_body_timeout();
                    let body = PacedBody::new(VirtualBody::Fixed(Some(body)), token);
                    return Ok(http::Response::from_parts(head, body));
                }
            }
        }
    };
    let (head, stream) = companion.open(&parts, &body, body_len, transport).await;
    Ok(http::Response::from_parts(
        head,
        PacedBody::new(VirtualBody::Stream(stream, place), token),
    ))
}

/// Serves one TCP connection (plain or TLS) as HTTP/2 or HTTP/1.1.
async fn serve_connection<IO>(companion: Arc<Companion>, io: IO, transport: Transport)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let figures = &companion.shared.figures[companion.index];
    figures.transport_opened(transport);
    let requested = Arc::new(AtomicBool::new(false));
    let pace = companion.stream_pace();
    let service = {
        let companion = companion.clone();
        let streams = StreamCount::default();
        let pace = pace.clone();
        let requested = requested.clone();
        hyper::service::service_fn(move |request| {
            handle(
                companion.clone(),
                request,
                transport,
                streams.clone(),
                pace.clone(),
                requested.clone(),
            )
        })
    };
    let io = TokioIo::new(io);
    let result = match transport {
        Transport::H2 => {
            let (header_timeout, _) = companion.request_timeouts();
            let (_, config) = companion.shared.live.current();
            let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(hyper_util::rt::TokioTimer::new())
                .max_concurrent_streams(companion.streams_max().1)
                // SETTINGS_ENABLE_CONNECT_PROTOCOL = 1: WebSockets over HTTP/2 (RFC 8441).
                .enable_connect_protocol()
                .max_header_list_size(header_list_bytes_max(
                    companion.shared.config.max_header_bytes,
                ))
                // A peer that answers no PING within a heartbeat is gone, or floods
                // frames without reading the answers (SETTINGS, PING): closed.
                .keep_alive_interval(config.heartbeat)
                .keep_alive_timeout(config.heartbeat)
                .serve_connection(io, service);
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => result,
                // New streams far past the connection's pace (StreamPace): GOAWAY (hyper
                // offers NO_ERROR only), its open streams finish, no more are taken.
                () = pace.excess() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
                () = tokio::time::sleep(header_timeout), if !requested.load(Ordering::Acquire) => {
                    if requested.load(Ordering::Acquire) {
                        connection.await
                    } else {
                        // No complete request head within --header-timeout (nothing sent,
                        // or a header block left open): GOAWAY, then closed.
                        companion.count_timeout(RefusalReason::HeaderTimeout);
                        connection.as_mut().graceful_shutdown();
                        match tokio::time::timeout(GOAWAY_GRACE, connection).await {
                            Ok(result) => result,
                            Err(_) => Ok(()),
                        }
                    }
                }
            }
        }
        _ => {
            hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
        }
    };
    if let Err(err) = result {
        tracing::debug!(shard = companion.index, %err, transport = transport.label(), "connection ended");
    }
    companion.shared.figures[companion.index].transport_closed(transport);
}

fn tokio_listener(listener: std::net::TcpListener) -> std::io::Result<tokio::net::TcpListener> {
    listener.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(listener)
}

/// Accepts cleartext HTTP/2 (prior knowledge) connections.
pub async fn serve_h2c(companion: Arc<Companion>, listener: std::net::TcpListener) {
    let listener = match tokio_listener(listener) {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!(shard = companion.index, %err, "h2c listener failed");
            return;
        }
    };
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let Some(place) = companion.admit_connection(peer.ip()) else {
            continue; // dropped: closed at once
        };
        let _ = stream.set_nodelay(true);
        let companion = companion.clone();
        tokio::spawn(async move {
            let _place = place;
            serve_connection(companion, stream, Transport::H2).await;
        });
    }
}

/// Serves the TLS connections the shard's ring hands over (clients offering ALPN `h2`):
/// the ClientHello the ring read is replayed to tokio-rustls, which completes the handshake
/// (choosing `h2`), then hyper serves HTTP/2. Admission (connection limits, the per-address
/// count and rate) happened on the ring at accept.
pub async fn serve_handoffs(
    companion: Arc<Companion>,
    mut handoffs: tokio::sync::mpsc::Receiver<TlsHandOff>,
    identity: crate::config::tls::Identity,
) {
    let config = match crate::config::tls::server_config(identity, crate::config::tls::ALPN_TCP) {
        Ok(config) => config,
        Err(err) => {
            tracing::error!(shard = companion.index, %err, "TLS configuration failed");
            return;
        }
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    while let Some(handoff) = handoffs.recv().await {
        let TlsHandOff { fd, hello, peer } = handoff;
        let place = peer.map(|ip| ConnectionPlace::adopt(companion.shared.clone(), ip));
        let stream = std::net::TcpStream::from(fd);
        let stream = match stream
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpStream::from_std(stream))
        {
            Ok(stream) => stream,
            Err(err) => {
                tracing::debug!(shard = companion.index, %err, "handed-off socket unusable");
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let companion = companion.clone();
        tokio::spawn(async move {
            let _place = place;
            let io = Replayed::new(hello, stream);
            // The handshake has --header-timeout, as on the ring (which counts it from the
            // accept; here it restarts at the hand-off, a ClientHello later).
            let (header_timeout, _) = companion.request_timeouts();
            let tls = match tokio::time::timeout(header_timeout, acceptor.accept(io)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => {
                    tracing::debug!(shard = companion.index, %err, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    companion.count_timeout(RefusalReason::TlsHandshakeTimeout);
                    return;
                }
            };
            let transport = match tls.get_ref().1.alpn_protocol() {
                Some(b"h2") => Transport::H2,
                _ => Transport::Tls,
            };
            serve_connection(companion, tls, transport).await;
        });
    }
}

/// A socket whose first bytes were already read by someone else (the ring read the
/// ClientHello): reads return those first, then the socket's. Writes go to the socket.
struct Replayed {
    head: Vec<u8>,
    at: usize,
    io: tokio::net::TcpStream,
}

impl Replayed {
    fn new(head: Vec<u8>, io: tokio::net::TcpStream) -> Self {
        Self { head, at: 0, io }
    }
}

impl AsyncRead for Replayed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.head.len() {
            let take = (this.head.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.head[this.at..this.at + take]);
            this.at += take;
            if this.at == this.head.len() {
                this.head = Vec::new(); // replayed: free it
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Replayed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    async fn read_exact(io: &mut Replayed, out: &mut [u8]) {
        let mut filled = 0;
        while filled < out.len() {
            let mut buf = tokio::io::ReadBuf::new(&mut out[filled..]);
            std::future::poll_fn(|cx| Pin::new(&mut *io).poll_read(cx, &mut buf))
                .await
                .unwrap();
            let read = buf.filled().len();
            assert!(read > 0, "end of stream");
            filled += read;
        }
    }

    #[test]
    fn replayed_bytes_come_before_the_socket_s() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        client.write_all(b" world").unwrap();
        runtime.block_on(async {
            server.set_nonblocking(true).unwrap();
            let server = tokio::net::TcpStream::from_std(server).unwrap();
            let mut replayed = Replayed::new(b"hello".to_vec(), server);
            let mut got = [0u8; 11];
            read_exact(&mut replayed, &mut got).await;
            assert_eq!(&got, b"hello world");
            let written =
                std::future::poll_fn(|cx| Pin::new(&mut replayed).poll_write(cx, b"back"))
                    .await
                    .unwrap();
            assert_eq!(written, 4);
        });
        let mut back = [0u8; 4];
        client.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"back");
    }
}
