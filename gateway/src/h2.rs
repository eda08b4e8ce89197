//! HTTP/2 (and HTTP/1.1 over TLS) with hyper on a shard's companion thread: the TLS
//! listener picks HTTP/2 or HTTP/1.1 by ALPN, the h2c listener speaks HTTP/2 with prior
//! knowledge. Every request becomes a virtual connection of the shard (companion.rs).
//!
//! Flow control: hyper polls a response body only when the HTTP/2 stream has send
//! capacity (HTTP/1.1: when its write buffer has room), so a stream whose reader stopped
//! leaves its batch in the sink, its write stays in flight on the shard and the fan-out
//! cuts it as a slow consumer. Memory held for it: one batch.

use crate::companion::{Companion, StreamCount, StreamPlace, VirtualStream};
use crate::virtual_conn::Transport;
use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            VirtualBody::Stream(stream, _) => stream
                .poll_frame(cx)
                .map(|frame| frame.map(|data| Ok(Frame::data(data)))),
            VirtualBody::Fixed(data) => Poll::Ready(data.take().map(|data| Ok(Frame::data(data)))),
        }
    }
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

async fn handle(
    companion: Arc<Companion>,
    request: http::Request<Incoming>,
    transport: Transport,
    streams: StreamCount,
) -> Result<http::Response<VirtualBody>, Infallible> {
    let (parts, body) = request.into_parts();
    let place = if crate::companion::is_subscribe(&parts) {
        match streams.try_open(companion.streams_max().0) {
            Some(place) => Some(place),
            None => {
                let (head, body) = companion.refuse_stream();
                return Ok(http::Response::from_parts(
                    head,
                    VirtualBody::Fixed(Some(body)),
                ));
            }
        }
    } else {
        None
    };
    let limit = companion.shared.config.max_message_bytes;
    let (body, body_len) = read_body(body, limit).await.unwrap_or_default();
    let (head, stream) = companion.open(&parts, &body, body_len, transport).await;
    Ok(http::Response::from_parts(
        head,
        VirtualBody::Stream(stream, place),
    ))
}

/// Serves one TCP connection (plain or TLS) as HTTP/2 or HTTP/1.1.
async fn serve_connection<IO>(companion: Arc<Companion>, io: IO, transport: Transport)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let figures = &companion.shared.figures[companion.index];
    figures.transport_opened(transport);
    let service = {
        let companion = companion.clone();
        let streams = StreamCount::default();
        hyper::service::service_fn(move |request| {
            handle(companion.clone(), request, transport, streams.clone())
        })
    };
    let io = TokioIo::new(io);
    let result = match transport {
        Transport::H2 => {
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .max_concurrent_streams(companion.streams_max().1)
                .serve_connection(io, service)
                .await
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
        if !companion.admit_connection(peer.ip()) {
            continue; // dropped: closed at once
        }
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(companion.clone(), stream, Transport::H2));
    }
}

/// Accepts TLS connections; ALPN `h2` gets HTTP/2, anything else HTTP/1.1.
pub async fn serve_tls(
    companion: Arc<Companion>,
    listener: std::net::TcpListener,
    identity: crate::tls::Identity,
) {
    let (listener, config) = match (
        tokio_listener(listener),
        crate::tls::server_config(identity, crate::tls::ALPN_TCP),
    ) {
        (Ok(listener), Ok(config)) => (listener, config),
        (Err(err), _) => {
            tracing::error!(shard = companion.index, %err, "TLS listener failed");
            return;
        }
        (_, Err(err)) => {
            tracing::error!(shard = companion.index, %err, "TLS configuration failed");
            return;
        }
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        if !companion.admit_connection(peer.ip()) {
            continue; // dropped before the handshake costs anything
        }
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let companion = companion.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => {
                    tracing::debug!(shard = companion.index, %err, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let transport = match tls.get_ref().1.alpn_protocol() {
                Some(b"h2") => Transport::H2,
                _ => Transport::Tls,
            };
            serve_connection(companion, tls, transport).await;
        });
    }
}
