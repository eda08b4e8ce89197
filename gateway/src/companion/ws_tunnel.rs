//! WebSockets over HTTP/2 (RFC 8441) on a shard's companion thread: the answer to an
//! extended CONNECT (`:protocol websocket` on a WebSocket route), and the pump that carries
//! the stream's bytes both ways between hyper and the shard's WebSocket driver.
//!
//! The shard serves the stream exactly as an HTTP/1.1 upgrade: the request goes to it as a
//! `GET` of the path through a tunnel's sink (mesh/virtual_conn.rs), so route, tokens, auth
//! callback and admission are the shard's; its WebSocket driver (shard/ws.rs) answers `200`
//! instead of `101` and then runs the same [`WsConn`](crate::conn::ws::WsConn) machine. The
//! DATA frames of the stream carry RFC 6455 frames; hyper hands the stream over as an
//! `Upgraded` once the `200` is sent.
//!
//! Bytes in both directions, one step at a time:
//! - shard → client: a write of the shard's is a batch in the sink; the pump takes it one
//!   chunk at a time and writes each to the stream before it takes the next, so a client
//!   that does not read (HTTP/2 flow control) keeps the shard's write in flight and the
//!   fan-out cuts it as it cuts a slow socket. Held: the chunk being written, and in
//!   hyper's upgrade glue at most two more (its channel, and the one waiting for window).
//! - client → shard: only while the shard has a receive posted, the pump reads at most that
//!   receive's room from the stream and mails it; meanwhile nothing is read, so the
//!   client's bytes wait in h2, which grants no more window than was read (at most the
//!   stream's initial window, hyper's default 1 MiB per stream and per connection).
//! - ends: the client's end of stream (or a reset, or its connection going) is the
//!   receive's end, and the shard closes the connection as for a socket's EOF; the shard's
//!   close ends the stream once the last chunk is written (END_STREAM), or after
//!   [`DRAIN_AFTER_CLOSE_MAX`] if the client does not take it; the pump's end (a write
//!   failed) mails `VirtualClose`.
//!
//! Owns: the CONNECT checks that need no shard (method, `:protocol`, route shape, the
//! per-connection stream count) and the pump. Must not touch: WebSocket framing, the
//! handshake's header checks (conn/ws), what the shard does with the bytes.

use crate::companion::bridge::{
    is_websocket_path, plain_parts, Companion, StreamCount, VirtualBody, VirtualStream,
};
use crate::mesh::virtual_conn::{Inbound, Transport};
use bytes::{Buf, Bytes};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How long a tunnel whose shard side closed may take to hand its last bytes to the
/// client (and end the stream) before it is dropped: the WebSocket machine's close
/// timeout already ran on the shard, this only bounds a client that stops reading.
pub const DRAIN_AFTER_CLOSE_MAX: Duration = Duration::from_secs(2);

/// Steps (a chunk written or taken, a receive answered) one poll of the pump makes before
/// it yields to the runtime's other tasks: a tunnel that always has work does not starve
/// them. Small: each step is at most one chunk or one receive.
const PUMP_STEPS_MAX: usize = 64;

/// Largest read for one receive: hyper hands over at most one DATA frame per read, and a
/// client's DATA frames are at most 16 KiB (hyper's default `SETTINGS_MAX_FRAME_SIZE`,
/// which ringcast keeps), so a larger buffer would only be allocated, never filled.
const READ_BYTES_MAX: usize = 16 * 1024;

/// The `:protocol` served: RFC 8441's registry token for RFC 6455.
const PROTOCOL_WEBSOCKET: &str = "websocket";

/// Why a CONNECT is refused before it reaches a shard.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConnectRefusal {
    /// No `:protocol`: a classic CONNECT (a proxy tunnel to an authority), which ringcast
    /// does not serve (501).
    #[error("CONNECT is served only as an extended CONNECT (RFC 8441) with :protocol websocket")]
    NotExtended,
    /// A `:protocol` other than `websocket` (501).
    #[error("unsupported :protocol (only websocket)")]
    Protocol,
    /// The path names no route (404), or is no room name (400).
    #[error("{0}")]
    Route(#[from] crate::http::route::RouteError),
    /// The path is a route but no WebSocket one (405, `Allow` its method).
    #[error("no WebSocket at this path")]
    NotWebSocket,
}

impl ConnectRefusal {
    /// The HTTP status of the refusal.
    pub fn status(&self) -> u16 {
        match self {
            Self::NotExtended | Self::Protocol => 501,
            Self::Route(route) => route.status(),
            Self::NotWebSocket => 405,
        }
    }

    /// What the refusal is counted as (`ringcast_refusals_total{reason}`).
    fn reason(&self) -> crate::app::admission::RefusalReason {
        use crate::app::admission::RefusalReason;
        match self {
            Self::NotExtended | Self::Protocol | Self::NotWebSocket => {
                RefusalReason::MethodNotAllowed
            }
            Self::Route(crate::http::route::RouteError::NotFound) => RefusalReason::NotFound,
            Self::Route(_) => RefusalReason::BadRequest,
        }
    }
}

/// Checks a CONNECT request's `:protocol` and path: `Ok` for an extended CONNECT that may
/// open a WebSocket (the shard decides the rest).
pub fn check_connect(parts: &http::request::Parts) -> Result<(), ConnectRefusal> {
    let protocol = parts
        .extensions
        .get::<hyper::ext::Protocol>()
        .ok_or(ConnectRefusal::NotExtended)?;
    if !protocol.as_str().eq_ignore_ascii_case(PROTOCOL_WEBSOCKET) {
        return Err(ConnectRefusal::Protocol);
    }
    match is_websocket_path(parts.uri.path())? {
        true => Ok(()),
        false => Err(ConnectRefusal::NotWebSocket),
    }
}

/// Answers a `CONNECT` on an HTTP/2 connection: refused (counted) unless it is an extended
/// CONNECT for a WebSocket route within the connection's stream limit; otherwise the shard
/// decides, and its `200` starts the pump (on its own task, holding the stream's place).
pub async fn serve_connect(
    companion: Arc<Companion>,
    mut parts: http::request::Parts,
    transport: Transport,
    streams: StreamCount,
) -> http::Response<VirtualBody> {
    if let Err(refused) = check_connect(&parts) {
        companion.shared.figures[companion.index].add_refusal(refused.reason());
        tracing::debug!(shard = companion.index, %refused, "CONNECT refused");
        let body = format!("{refused}\n");
        let mut head = plain_parts(refused.status(), &body);
        if refused == ConnectRefusal::NotWebSocket {
            head.headers
                .insert(http::header::ALLOW, http::HeaderValue::from_static("GET"));
        }
        return http::Response::from_parts(head, VirtualBody::Fixed(Some(Bytes::from(body))));
    }
    // A WebSocket holds its stream as a subscription does.
    let Some(place) = streams.try_open(companion.streams_max().0) else {
        let (head, body) = companion.refuse_stream();
        return http::Response::from_parts(head, VirtualBody::Fixed(Some(body)));
    };
    let Some(upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
        // hyper gives every HTTP/2 CONNECT one; without it the stream cannot be taken.
        let body = "the stream cannot be taken over\n";
        return http::Response::from_parts(
            plain_parts(500, body),
            VirtualBody::Fixed(Some(Bytes::from_static(body.as_bytes()))),
        );
    };
    let (head, stream) = companion.open_tunnel(&parts, transport).await;
    if head.status != http::StatusCode::OK {
        // Refused by the shard (route, token, handshake, admission): its answer as is.
        return http::Response::from_parts(head, VirtualBody::Stream(stream, Some(place)));
    }
    let index = companion.index;
    tokio::spawn(async move {
        let _place = place;
        match upgrade.await {
            Ok(upgraded) => Pump::new(stream, TokioIo::new(upgraded)).await,
            // The stream went before the answer did: dropping `stream` tells the shard.
            Err(err) => tracing::debug!(shard = index, %err, "extended CONNECT not taken over"),
        }
    });
    // No body and no length: hyper sends the head alone and hands the stream over.
    let (mut head, ()) = http::Response::new(()).into_parts();
    head.status = http::StatusCode::OK;
    http::Response::from_parts(head, VirtualBody::Fixed(None))
}

/// Carries one tunnel's bytes both ways (see the module comment); resolves when the
/// tunnel is over. Generic over the client's stream (hyper's `Upgraded` today).
pub struct Pump<IO> {
    stream: VirtualStream,
    io: IO,
    /// The chunk being written to the client (what is left of it).
    out: Option<Bytes>,
    /// The shard closed and every chunk was taken.
    out_done: bool,
    /// The client's end was delivered, or the shard closed: nothing more is read.
    in_done: bool,
    /// Armed once the shard closed: past it the stream is dropped, written or not.
    drain_by: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Pump<IO> {
    /// A pump between `stream` (the shard's side) and `io` (the client's).
    pub fn new(stream: VirtualStream, io: IO) -> Self {
        Self {
            stream,
            io,
            out: None,
            out_done: false,
            in_done: false,
            drain_by: None,
        }
    }

    /// Reads for the shard's posted receive, if one is posted; true if it was answered.
    fn poll_inbound(&mut self, cx: &mut Context<'_>) -> bool {
        if self.in_done {
            return false;
        }
        let room = match self.stream.sink().poll_recv_room(cx) {
            Poll::Pending => return false,
            Poll::Ready(None) => {
                // The shard closed: it reads nothing more.
                self.in_done = true;
                return false;
            }
            Poll::Ready(Some(room)) => room,
        };
        // On the stack: an idle tunnel waiting for its client holds no read buffer; what
        // comes is copied out at its size.
        let mut space = [0u8; READ_BYTES_MAX];
        let mut buf = ReadBuf::new(&mut space[..room.min(READ_BYTES_MAX)]);
        let received = match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
            Poll::Pending => return false,
            Poll::Ready(Ok(())) if !buf.filled().is_empty() => Inbound::Data(buf.filled().to_vec()),
            // End of stream, a reset, or the connection gone: the shard closes.
            Poll::Ready(_) => {
                self.in_done = true;
                Inbound::End
            }
        };
        self.stream.sink().deliver(received);
        self.stream.received();
        true
    }

    /// Moves the shard's frames to the client; `Err` once the client cannot take them.
    fn poll_outbound(&mut self, cx: &mut Context<'_>) -> Result<bool, ()> {
        if self.out.is_none() && !self.out_done {
            match self.stream.poll_frame(cx) {
                Poll::Pending => return Ok(false),
                // An empty chunk has nothing to write (a write of nothing would read as
                // the client gone).
                Poll::Ready(Some(chunk)) if chunk.is_empty() => return Ok(true),
                Poll::Ready(Some(chunk)) => self.out = Some(chunk),
                Poll::Ready(None) => {
                    self.out_done = true;
                    return Ok(true);
                }
            }
        }
        let Some(chunk) = &mut self.out else {
            return Ok(false);
        };
        match Pin::new(&mut self.io).poll_write(cx, chunk) {
            Poll::Pending => Ok(false),
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Err(()),
            Poll::Ready(Ok(written)) => {
                chunk.advance(written);
                if chunk.is_empty() {
                    self.out = None;
                }
                Ok(true)
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Future for Pump<IO> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        for _ in 0..PUMP_STEPS_MAX {
            let inbound = this.poll_inbound(cx);
            let Ok(outbound) = this.poll_outbound(cx) else {
                // The client is gone: dropping the stream tells the shard.
                return Poll::Ready(());
            };
            if this.out_done && this.out.is_none() {
                // Everything written: END_STREAM (hyper sends it once what it holds is).
                if Pin::new(&mut this.io).poll_shutdown(cx).is_ready() {
                    return Poll::Ready(());
                }
            }
            if this.drain_by.is_none() && this.stream.sink().is_closed() {
                this.drain_by = Some(Box::pin(tokio::time::sleep(DRAIN_AFTER_CLOSE_MAX)));
            }
            if let Some(drain_by) = &mut this.drain_by {
                if drain_by.as_mut().poll(cx).is_ready() {
                    tracing::debug!("tunnel dropped: its last bytes were not taken in time");
                    return Poll::Ready(());
                }
            }
            if !inbound && !outbound {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, protocol: Option<&'static str>) -> http::request::Parts {
        let mut request = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(uri);
        if let Some(protocol) = protocol {
            request = request.extension(hyper::ext::Protocol::from_static(protocol));
        }
        request.body(()).unwrap().into_parts().0
    }

    /// Only `:protocol websocket` on a WebSocket route reaches a shard; every other CONNECT
    /// gets its status here.
    #[test]
    fn connects_are_sorted_by_protocol_and_route() {
        let table: &[(&str, Option<&'static str>, Result<(), u16>)] = &[
            ("http://h/ws/echo", Some("websocket"), Ok(())),
            ("http://h/ws/echo", Some("WebSocket"), Ok(())),
            ("http://h/ws", Some("websocket"), Ok(())),
            (
                "http://h/rooms/a/ws?last_event_id=1-2",
                Some("websocket"),
                Ok(()),
            ),
            ("h:443", None, Err(501)),
            ("http://h/ws/echo", None, Err(501)),
            ("http://h/ws/echo", Some("webtransport"), Err(501)),
            ("http://h/nowhere", Some("websocket"), Err(404)),
            ("http://h/ws/echo/", Some("websocket"), Err(404)),
            ("http://h/rooms/a%20b/ws", Some("websocket"), Err(400)),
            ("http://h/rooms/a/events", Some("websocket"), Err(405)),
            ("http://h/metrics", Some("websocket"), Err(405)),
        ];
        for (uri, protocol, want) in table {
            let got = check_connect(&parts(uri, *protocol)).map_err(|refused| refused.status());
            assert_eq!(got, *want, "{uri} {protocol:?}");
        }
    }
}
