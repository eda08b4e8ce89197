//! h3's QUIC traits over quinn for the server's connections: h3-quinn's `Connection`, except
//! that each request stream the client opens registers, under its id, a future that resolves
//! when the client stops it (STOP_SENDING, or the connection ends). h3 hides the quinn
//! stream, so without this a subscription whose client stopped it was only noticed at the
//! next write, up to `--heartbeat` later (issue 14).
//!
//! Unidirectional streams (control, QPACK) and the streams the server opens are h3-quinn's
//! own; request streams are [`RequestStream`], a plain port of h3-quinn's bidirectional
//! stream (its send side is the same code; its receive side copies each chunk out of quinn,
//! a request body being read once and small).

use bytes::{Buf, Bytes};
use futures_util::stream::{self, Stream, StreamExt};
use h3::error::Code;
use h3::quic::{self, ConnectionErrorIncoming, StreamErrorIncoming, StreamId, WriteBuf};
use quinn::VarInt;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

/// Bytes copied out of quinn per read of a request body.
const READ_CHUNK_BYTES_MAX: usize = 16 * 1024;

/// Resolves once the client stopped the stream or the connection ended.
pub type Stopped = Pin<Box<dyn Future<Output = ()> + Send + Sync>>;

type Accepted = Result<(quinn::SendStream, quinn::RecvStream), quinn::ConnectionError>;

/// The [`Stopped`] futures of one connection's open request streams, by stream id. An entry
/// lives as long as its stream (removed when the send side drops), so the table holds at
/// most the connection's stream limit.
#[derive(Clone, Default)]
pub struct Stops(Arc<Mutex<HashMap<u64, Stopped>>>);

impl Stops {
    /// Takes the future of stream `id` (once).
    pub fn take(&self, id: StreamId) -> Option<Stopped> {
        self.lock().remove(&id.into_inner())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Stopped>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A QUIC connection for h3's server (see the module comment).
pub struct Connection {
    inner: h3_quinn::Connection,
    incoming_bi: Pin<Box<dyn Stream<Item = Accepted> + Send + Sync>>,
    stops: Stops,
}

impl Connection {
    /// Wraps `connection`; request streams register their [`Stopped`] in `stops`.
    pub fn new(connection: quinn::Connection, stops: Stops) -> Self {
        Self {
            inner: h3_quinn::Connection::new(connection.clone()),
            incoming_bi: Box::pin(stream::unfold(connection, |connection| async {
                Some((connection.accept_bi().await, connection))
            })),
            stops,
        }
    }
}

impl<B: Buf> quic::Connection<B> for Connection {
    type RecvStream = h3_quinn::RecvStream;
    type OpenStreams = Opener;

    fn poll_accept_recv(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::RecvStream, ConnectionErrorIncoming>> {
        <h3_quinn::Connection as quic::Connection<B>>::poll_accept_recv(&mut self.inner, cx)
    }

    fn poll_accept_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::BidiStream, ConnectionErrorIncoming>> {
        let (send, recv) = ready!(self.incoming_bi.poll_next_unpin(cx))
            .expect("an unfolded stream never ends")
            .map_err(connection_error)?;
        let id = u64::from(VarInt::from(send.id()));
        let stopped = send.stopped();
        self.stops.lock().insert(
            id,
            Box::pin(async move {
                let _ = stopped.await;
            }),
        );
        Poll::Ready(Ok(RequestStream {
            send: SendHalf {
                stream: send,
                writing: None,
                stops: Some((self.stops.clone(), id)),
            },
            recv: RecvHalf { stream: recv },
        }))
    }

    fn opener(&self) -> Self::OpenStreams {
        Opener(<h3_quinn::Connection as quic::Connection<B>>::opener(
            &self.inner,
        ))
    }
}

impl<B: Buf> quic::OpenStreams<B> for Connection {
    type BidiStream = RequestStream<B>;
    type SendStream = h3_quinn::SendStream<B>;

    fn poll_open_bidi(
        &mut self,
        _cx: &mut Context<'_>,
    ) -> Poll<Result<Self::BidiStream, StreamErrorIncoming>> {
        Poll::Ready(Err(server_opens_no_request_stream()))
    }

    fn poll_open_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::SendStream, StreamErrorIncoming>> {
        <h3_quinn::Connection as quic::OpenStreams<B>>::poll_open_send(&mut self.inner, cx)
    }

    fn close(&mut self, code: Code, reason: &[u8]) {
        <h3_quinn::Connection as quic::OpenStreams<B>>::close(&mut self.inner, code, reason)
    }
}

/// Opens the server's unidirectional streams (h3-quinn's); a server opens no request stream.
pub struct Opener(h3_quinn::OpenStreams);

impl<B: Buf> quic::OpenStreams<B> for Opener {
    type BidiStream = RequestStream<B>;
    type SendStream = h3_quinn::SendStream<B>;

    fn poll_open_bidi(
        &mut self,
        _cx: &mut Context<'_>,
    ) -> Poll<Result<Self::BidiStream, StreamErrorIncoming>> {
        Poll::Ready(Err(server_opens_no_request_stream()))
    }

    fn poll_open_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::SendStream, StreamErrorIncoming>> {
        <h3_quinn::OpenStreams as quic::OpenStreams<B>>::poll_open_send(&mut self.0, cx)
    }

    fn close(&mut self, code: Code, reason: &[u8]) {
        <h3_quinn::OpenStreams as quic::OpenStreams<B>>::close(&mut self.0, code, reason)
    }
}

fn server_opens_no_request_stream() -> StreamErrorIncoming {
    StreamErrorIncoming::ConnectionErrorIncoming {
        connection_error: ConnectionErrorIncoming::InternalError(
            "the server opens no request stream".into(),
        ),
    }
}

/// A request stream the client opened.
pub struct RequestStream<B: Buf> {
    send: SendHalf<B>,
    recv: RecvHalf,
}

impl<B: Buf> quic::BidiStream<B> for RequestStream<B> {
    type SendStream = SendHalf<B>;
    type RecvStream = RecvHalf;

    fn split(self) -> (Self::SendStream, Self::RecvStream) {
        (self.send, self.recv)
    }
}

impl<B: Buf> quic::RecvStream for RequestStream<B> {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        self.recv.poll_data(cx)
    }

    fn stop_sending(&mut self, error_code: u64) {
        self.recv.stop_sending(error_code)
    }

    fn recv_id(&self) -> StreamId {
        self.recv.recv_id()
    }
}

impl<B: Buf> quic::SendStream<B> for RequestStream<B> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.send.poll_ready(cx)
    }

    fn send_data<T: Into<WriteBuf<B>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        self.send.send_data(data)
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.send.poll_finish(cx)
    }

    fn reset(&mut self, reset_code: u64) {
        self.send.reset(reset_code)
    }

    fn send_id(&self) -> StreamId {
        self.send.send_id()
    }
}

/// The send side of a request stream (h3-quinn's `SendStream`, plus its place in [`Stops`]).
pub struct SendHalf<B: Buf> {
    stream: quinn::SendStream,
    writing: Option<WriteBuf<B>>,
    stops: Option<(Stops, u64)>,
}

impl<B: Buf> Drop for SendHalf<B> {
    fn drop(&mut self) {
        if let Some((stops, id)) = self.stops.take() {
            stops.lock().remove(&id);
        }
    }
}

impl<B: Buf> quic::SendStream<B> for SendHalf<B> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        if let Some(data) = &mut self.writing {
            while data.has_remaining() {
                let written = ready!(Pin::new(&mut self.stream).poll_write(cx, data.chunk()))
                    .map_err(write_error)?;
                data.advance(written);
            }
        }
        self.writing = None;
        Poll::Ready(Ok(()))
    }

    fn send_data<T: Into<WriteBuf<B>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        if self.writing.is_some() {
            return Err(StreamErrorIncoming::ConnectionErrorIncoming {
                connection_error: ConnectionErrorIncoming::InternalError(
                    "send_data while the stream is not ready".into(),
                ),
            });
        }
        self.writing = Some(data.into());
        Ok(())
    }

    fn poll_finish(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        Poll::Ready(
            self.stream
                .finish()
                .map_err(|err| StreamErrorIncoming::Unknown(Box::new(err))),
        )
    }

    fn reset(&mut self, reset_code: u64) {
        let _ = self
            .stream
            .reset(VarInt::from_u64(reset_code).unwrap_or(VarInt::MAX));
    }

    fn send_id(&self) -> StreamId {
        stream_id(self.stream.id())
    }
}

/// The receive side of a request stream.
pub struct RecvHalf {
    stream: quinn::RecvStream,
}

impl quic::RecvStream for RecvHalf {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        let mut buf = [0u8; READ_CHUNK_BYTES_MAX];
        let read = ready!(self.stream.poll_read(cx, &mut buf)).map_err(read_error)?;
        Poll::Ready(Ok((read > 0).then(|| Bytes::copy_from_slice(&buf[..read]))))
    }

    fn stop_sending(&mut self, error_code: u64) {
        let _ = self
            .stream
            .stop(VarInt::from_u64(error_code).unwrap_or(VarInt::MAX));
    }

    fn recv_id(&self) -> StreamId {
        stream_id(self.stream.id())
    }
}

fn stream_id(id: quinn::StreamId) -> StreamId {
    StreamId::try_from(VarInt::from(id).into_inner()).expect("a QUIC stream id is a varint")
}

fn connection_error(err: quinn::ConnectionError) -> ConnectionErrorIncoming {
    match err {
        quinn::ConnectionError::ApplicationClosed(close) => {
            ConnectionErrorIncoming::ApplicationClose {
                error_code: close.error_code.into_inner(),
            }
        }
        quinn::ConnectionError::TimedOut => ConnectionErrorIncoming::Timeout,
        other => ConnectionErrorIncoming::Undefined(Arc::new(other)),
    }
}

fn write_error(err: quinn::WriteError) -> StreamErrorIncoming {
    match err {
        quinn::WriteError::Stopped(code) => StreamErrorIncoming::StreamTerminated {
            error_code: code.into_inner(),
        },
        quinn::WriteError::ConnectionLost(err) => StreamErrorIncoming::ConnectionErrorIncoming {
            connection_error: connection_error(err),
        },
        other => StreamErrorIncoming::Unknown(Box::new(other)),
    }
}

fn read_error(err: quinn::ReadError) -> StreamErrorIncoming {
    match err {
        quinn::ReadError::Reset(code) => StreamErrorIncoming::StreamTerminated {
            error_code: code.into_inner(),
        },
        quinn::ReadError::ConnectionLost(err) => StreamErrorIncoming::ConnectionErrorIncoming {
            connection_error: connection_error(err),
        },
        other => StreamErrorIncoming::Unknown(Box::new(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_future_is_taken_once_and_leaves_with_its_stream() {
        let stops = Stops::default();
        stops.lock().insert(4, Box::pin(std::future::ready(())));
        stops.lock().insert(8, Box::pin(std::future::ready(())));
        let id = |n: u64| StreamId::try_from(n).unwrap();
        assert!(stops.take(id(4)).is_some());
        assert!(stops.take(id(4)).is_none(), "taken once");
        // What SendHalf's drop does for a stream whose future was never taken.
        stops.lock().remove(&8);
        assert!(stops.take(id(8)).is_none());
        assert!(stops.lock().is_empty());
    }
}
