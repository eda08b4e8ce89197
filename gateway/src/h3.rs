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

use crate::companion::{Companion, StreamCount};
use crate::virtual_conn::Transport;
use bytes::{Buf, Bytes};
use std::sync::Arc;
use std::time::Duration;

/// How long a stream cut or drained by the shard may take to hand over its last frame.
const CLOSE_GRACE: Duration = Duration::from_millis(200);
/// A QUIC connection with no traffic at all for this long is closed (heartbeats keep SSE
/// streams well inside it).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

type RequestStream = h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// Runs shard `companion.index`'s QUIC endpoint on `socket`.
pub async fn serve(
    companion: Arc<Companion>,
    socket: std::net::UdpSocket,
    identity: crate::tls::Identity,
) {
    let endpoint = match endpoint(socket, identity, companion.streams_max().1) {
        Ok(endpoint) => endpoint,
        Err(err) => {
            tracing::error!(shard = companion.index, "QUIC endpoint failed: {err:#}");
            return;
        }
    };
    while let Some(incoming) = endpoint.accept().await {
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
    identity: crate::tls::Identity,
    streams_max: u32,
) -> anyhow::Result<quinn::Endpoint> {
    let tls = crate::tls::server_config(identity, &[crate::tls::ALPN_H3])?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.migration(false);
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
    _place: crate::companion::ConnectionPlace,
) {
    let Ok(connection) = incoming.await else {
        return;
    };
    let figures = &companion.shared.figures[companion.index];
    figures.transport_opened(Transport::H3);
    let streams = StreamCount::default();
    match h3::server::Connection::new(h3_quinn::Connection::new(connection)).await {
        Ok(mut h3) => loop {
            match h3.accept().await {
                Ok(Some(resolver)) => {
                    let companion = companion.clone();
                    let streams = streams.clone();
                    tokio::spawn(async move {
                        if let Ok((request, stream)) = resolver.resolve_request().await {
                            request_stream(companion, request, stream, streams).await;
                        }
                    });
                }
                Ok(None) => break,
                Err(err) => {
                    tracing::debug!(shard = companion.index, %err, "h3 connection ended");
                    break;
                }
            }
        },
        Err(err) => tracing::debug!(shard = companion.index, %err, "h3 setup failed"),
    }
    companion.shared.figures[companion.index].transport_closed(Transport::H3);
}

async fn request_stream(
    companion: Arc<Companion>,
    request: http::Request<()>,
    mut stream: RequestStream,
    streams: StreamCount,
) {
    let (parts, ()) = request.into_parts();
    // Held until this function returns, i.e. until the stream ends.
    let _place = if crate::companion::is_subscribe(&parts) {
        match streams.try_open(companion.streams_max().0) {
            Some(place) => Some(place),
            None => {
                let (head, body) = companion.refuse_stream();
                if stream
                    .send_response(http::Response::from_parts(head, ()))
                    .await
                    .is_ok()
                    && stream.send_data(body).await.is_ok()
                {
                    let _ = stream.finish().await;
                }
                return;
            }
        }
    } else {
        None
    };
    let limit = companion.shared.config.max_message_bytes;
    let mut body = Vec::new();
    let mut body_len = 0;
    loop {
        match stream.recv_data().await {
            Ok(Some(mut chunk)) => {
                body_len += chunk.remaining();
                if body_len <= limit {
                    while chunk.has_remaining() {
                        let piece = chunk.chunk();
                        body.extend_from_slice(piece);
                        let n = piece.len();
                        chunk.advance(n);
                    }
                } else {
                    body.clear();
                    break;
                }
            }
            Ok(None) => break,
            Err(_) => return,
        }
    }
    let (head, mut answer) = companion.open(&parts, &body, body_len, Transport::H3).await;
    if stream
        .send_response(http::Response::from_parts(head, ()))
        .await
        .is_err()
    {
        return;
    }
    while let Some(frame) = answer.next_frame().await {
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
    let _ = stream.finish().await;
}
