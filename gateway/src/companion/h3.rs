//! HTTP/3 with quinn + h3 on a shard's companion thread: one QUIC endpoint per shard on its
//! own UDP socket (SO_REUSEPORT, all bound to the same address). Every request becomes a
//! virtual connection of the shard (companion.rs).
//!
//! Which shard a QUIC connection's packets reach: the kernel picks a socket of a
//! SO_REUSEPORT group by a hash of the 4-tuple, so every packet of one client address lands
//! on the same shard for as long as the group is unchanged (all sockets are bound before any
//! thread starts). A connection that changes address would be hashed elsewhere, so
//! migration is off (`ServerConfig::migration(false)`): such packets are dropped by the
//! other shard's endpoint and the client reconnects. docs/TRANSPORTS.md has the rest.
//!
//! Flow control: `send_data` returns once quinn took the frame into the stream's send
//! buffer, bounded by the peer's stream window; a stream whose reader stopped leaves its
//! batch in the sink and the fan-out cuts it as a slow consumer.

use crate::app::admission::RefusalReason;
use crate::companion::bridge::{Companion, StreamCount};
use crate::companion::quic_streams::{Stopped, Stops};
use crate::companion::stream_pace::StreamPace;
use crate::mesh::virtual_conn::Transport;
use bytes::{Buf, Bytes};
use std::sync::Arc;
use std::time::Duration;

/// How long a stream cut or drained by the shard may take to hand over its last frame.
const CLOSE_GRACE: Duration = Duration::from_millis(200);
/// A QUIC connection with no traffic at all for this long is closed (heartbeats keep SSE
/// streams well inside it).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a QUIC handshake may take once the client's address is validated (the same as
/// a TLS handshake over TCP); past it the half-open connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connection attempts a shard's endpoint holds before its accept loop takes them; past it
/// quinn refuses new ones. Every attempt without a validated address is answered with a
/// stateless Retry at once, so this only bounds a burst between two turns of the loop.
const INCOMING_MAX: usize = 1024;

/// HTTP/3's error code for a connection closed with nothing wrong (RFC 9114 §8.1).
const H3_NO_ERROR: quinn::VarInt = quinn::VarInt::from_u32(0x100);
/// HTTP/3's error code for a peer "exhibiting a behavior that might be generating
/// excessive load" (RFC 9114 §8.1): new streams far past the connection's pace.
const H3_EXCESSIVE_LOAD: quinn::VarInt = quinn::VarInt::from_u32(0x107);

type RequestStream =
    h3::server::RequestStream<crate::companion::quic_streams::RequestStream<Bytes>, Bytes>;

/// Runs shard `companion.index`'s QUIC endpoint on `socket`.
pub async fn serve(
    companion: Arc<Companion>,
    socket: std::net::UdpSocket,
    identity: crate::config::tls::Identity,
) {
    let endpoint = match endpoint(socket, identity, companion.streams_max().1) {
        Ok(endpoint) => endpoint,
        Err(err) => {
            tracing::error!(shard = companion.index, "QUIC endpoint failed: {err:#}");
            return;
        }
    };
    while let Some(incoming) = endpoint.accept().await {
        // Address validation before any state (RFC 9000 §8.1): an Initial without a token
        // gets a stateless Retry, so a spoofed source gets one small packet (no handshake
        // flight, no retransmissions, nothing held) and the per-address counts below are
        // only taken for addresses that answered.
        if !incoming.remote_address_validated() {
            if incoming.may_retry() {
                let _ = incoming.retry();
            } else {
                incoming.ignore(); // a second Initial without a valid token
            }
            continue;
        }
        let Some(place) = companion.admit_connection(incoming.remote_address().ip()) else {
            incoming.refuse();
            continue;
        };
        tokio::spawn(connection(companion.clone(), incoming, place));
    }
}

/// The QUIC endpoint; a connection may open `streams_max` request streams at once.
fn endpoint(
    socket: std::net::UdpSocket,
    identity: crate::config::tls::Identity,
    streams_max: u32,
) -> anyhow::Result<quinn::Endpoint> {
    let tls = crate::config::tls::server_config(identity, &[crate::config::tls::ALPN_H3])?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.migration(false);
    config.max_incoming(INCOMING_MAX);
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(streams_max.into())
        .max_idle_timeout(Some(IDLE_TIMEOUT.try_into()?));
    config.transport_config(Arc::new(transport));
    socket.set_nonblocking(true)?;
    Ok(quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )?)
}

/// Serves one QUIC connection; `_place` holds its per-address count until it ends.
async fn connection(
    companion: Arc<Companion>,
    incoming: quinn::Incoming,
    _place: crate::companion::bridge::ConnectionPlace,
) {
    let connection = match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await {
        Ok(Ok(connection)) => connection,
        // Dropped: quinn closes a connection whose last handle is gone.
        Ok(Err(_)) | Err(_) => return,
    };
    let quic = connection.clone();
    let figures = &companion.shared.figures[companion.index];
    figures.transport_opened(Transport::H3);
    let streams = StreamCount::default();
    let pace = companion.stream_pace();
    let stops = Stops::default();
    let setup = h3::server::builder()
        .max_field_section_size(companion.shared.config.max_header_bytes as u64)
        .build(crate::companion::quic_streams::Connection::new(
            connection,
            stops.clone(),
        ))
        .await;
    match setup {
        Ok(mut h3) => {
            let (header_timeout, _) = companion.request_timeouts();
            let first_request = tokio::time::sleep(header_timeout);
            tokio::pin!(first_request);
            let mut requested = false;
            loop {
                let accepted = tokio::select! {
                    accepted = h3.accept() => accepted,
                    // No request within --header-timeout of the handshake: closed, as an h2
                    // connection gets its GOAWAY.
                    () = &mut first_request, if !requested => {
                        companion.count_timeout(RefusalReason::HeaderTimeout);
                        quic.close(H3_NO_ERROR, b"no request in time");
                        break;
                    }
                };
                requested = true;
                match accepted {
                    Ok(Some(resolver)) => {
                        let companion = companion.clone();
                        let streams = streams.clone();
                        let pace = pace.clone();
                        let quic = quic.clone();
                        let stops = stops.clone();
                        tokio::spawn(async move {
                            let (header_timeout, _) = companion.request_timeouts();
                            match tokio::time::timeout(header_timeout, resolver.resolve_request())
                                .await
                            {
                                Ok(Ok((request, stream))) => {
                                    let stopped = stops.take(stream.id());
                                    let stream = Request {
                                        stream,
                                        streams,
                                        pace,
                                        quic,
                                        stopped,
                                    };
                                    request_stream(companion, request, stream).await;
                                }
                                Ok(Err(_)) => {}
                                // The head did not arrive within --header-timeout: the stream
                                // is dropped (ended, its receive side stopped), as an HTTP/1.1
                                // connection gets its 408.
                                Err(_) => companion.count_timeout(RefusalReason::HeaderTimeout),
                            }
                        });
                    }
                    Ok(None) => break,
                    Err(err) => {
                        tracing::debug!(shard = companion.index, %err, "h3 connection ended");
                        break;
                    }
                }
            }
        }
        Err(err) => tracing::debug!(shard = companion.index, %err, "h3 setup failed"),
    }
    companion.shared.figures[companion.index].transport_closed(Transport::H3);
}

/// One request stream and what its connection shares with it.
struct Request {
    stream: RequestStream,
    /// The connection's subscriptions.
    streams: StreamCount,
    /// The connection's stream pace.
    pace: StreamPace,
    quic: quinn::Connection,
    /// Resolves when the peer stops the stream (STOP_SENDING).
    stopped: Option<Stopped>,
}

/// Sends a short answer the companion made (a refusal) and ends the stream; whether it
/// went out whole.
async fn answer_short(
    stream: &mut RequestStream,
    head: http::response::Parts,
    body: Bytes,
) -> bool {
    stream
        .send_response(http::Response::from_parts(head, ()))
        .await
        .is_ok()
        && stream.send_data(body).await.is_ok()
        && stream.finish().await.is_ok()
}

async fn request_stream(companion: Arc<Companion>, request: http::Request<()>, stream: Request) {
    let Request {
        mut stream,
        streams,
        pace,
        quic,
        stopped,
    } = stream;
    let mut stopped = stopped.unwrap_or_else(|| Box::pin(std::future::pending()));
    let (parts, ()) = request.into_parts();
    // Before any work: a stream past the connection's pace gets 429 (a reset loop; the
    // stream credit QUIC gives back as streams close does not bound it).
    let token = match pace.try_open(std::time::Instant::now()) {
        Ok(token) => token,
        Err(refusal) => {
            let (head, body) = companion.refuse_stream_rate(refusal);
            if refusal.close {
                // Past its refusals too: closed, with every stream (quinn offers no
                // GOAWAY from here).
                quic.close(H3_EXCESSIVE_LOAD, b"too many new streams");
            } else {
                answer_short(&mut stream, head, body).await;
            }
            return;
        }
    };
    // Held until this function returns, i.e. until the stream ends. A subscription is a
    // session: its pace action is kept, whatever its answer.
    let (_place, token) = if crate::companion::bridge::is_subscribe(&parts) {
        let place = match streams.try_open(companion.streams_max().0) {
            Some(place) => Some(place),
            None => {
                let (head, body) = companion.refuse_stream();
                answer_short(&mut stream, head, body).await;
                return;
            }
        };
        drop(token);
        (place, None)
    } else {
        (None, Some(token))
    };
    let limit = companion.shared.config.max_message_bytes;
    let (body, body_len) = match crate::companion::bridge::declared_over_limit(&parts, limit) {
        // Refused (413) from the head: the body is never read.
        Some(declared) => (Vec::new(), declared),
        None => {
            let (_, body_timeout) = companion.request_timeouts();
            match tokio::time::timeout(body_timeout, read_body(&mut stream, limit)).await {
                Ok(Ok(read)) => read,
                Ok(Err(_)) => return,
                Err(_) => {
                    // No stop_sending here: the cancelled read still holds the receive
                    // side (h3-quinn panics on it); dropping the stream stops it.
                    let (head, body) = companion.refuse_body_timeout();
                    if let (true, Some(token)) =
                        (answer_short(&mut stream, head, body).await, token)
                    {
                        token.give_back();
                    }
                    return;
                }
            }
        }
    };
    let (head, mut answer) = companion.open(&parts, &body, body_len, Transport::H3).await;
    if stream
        .send_response(http::Response::from_parts(head, ()))
        .await
        .is_err()
    {
        return;
    }
    loop {
        // The peer stopping the stream (STOP_SENDING) or closing its connection ends the
        // stream now, not at the next write (up to a heartbeat later): the subscription is
        // released at once, as over HTTP/2.
        let frame = tokio::select! {
            frame = answer.next_frame() => frame,
            () = &mut stopped => return,
            _ = quic.closed() => return,
        };
        let Some(frame) = frame else {
            break;
        };
        let sent = {
            let send = stream.send_data(frame);
            tokio::pin!(send);
            tokio::select! {
                biased;
                sent = &mut send => sent.is_ok(),
                () = answer.closed() => {
                    // Cut or drained: a short grace for the last frames, then reset.
                    matches!(tokio::time::timeout(CLOSE_GRACE, &mut send).await, Ok(Ok(())))
                }
            }
        };
        if !sent {
            stream.stop_stream(h3::error::Code::H3_REQUEST_CANCELLED);
            return;
        }
    }
    // Answered whole (a stopped or reset stream returned above): the work the request
    // started is done, and its pace action is given back.
    if stream.finish().await.is_ok() {
        if let Some(token) = token {
            token.give_back();
        }
    }
}

/// Reads a request body up to `limit` bytes; returns what was read and the length to
/// declare (past the limit: more than `limit`, with the rest unread, so the shard refuses
/// with 413 from the head).
async fn read_body(
    stream: &mut RequestStream,
    limit: usize,
) -> Result<(Vec<u8>, usize), h3::error::StreamError> {
    let mut body = Vec::new();
    while let Some(mut chunk) = stream.recv_data().await? {
        let len = body.len() + chunk.remaining();
        if len > limit {
            return Ok((Vec::new(), len));
        }
        while chunk.has_remaining() {
            let piece = chunk.chunk();
            body.extend_from_slice(piece);
            let n = piece.len();
            chunk.advance(n);
        }
    }
    let len = body.len();
    Ok((body, len))
}
