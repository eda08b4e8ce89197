//! [`Pipe`]: how one connection's bytes travel — a plain socket, TLS over a socket, or a
//! virtual connection of the companion thread — behind one interface, so the HTTP code
//! sees plaintext only: a receive target ([`Pipe::post_recv`]), what a receive brought
//! ([`Pipe::on_recv`]: plaintext appended to the receive buffer, which the driver hands to the HTTP machine as `&[u8]`), one write at a time
//! ([`Pipe::start_write`], [`Pipe::on_write`]) and the close ([`Pipe::close`]).
//!
//! Owns: the socket (closed only through the ring), the TLS session, the virtual sink, the
//! ops in flight and the write in progress (its frames, length and progress). The ring's
//! ops own the memory the kernel uses (uring/ring/); a pipe only keeps their ids, each
//! checked against its completion. Must not touch: HTTP states, timers, the fan-out, or
//! any connection other than its own.
//!
//! Lives in `shard/`, not `conn/`: it submits to the shard's ring and pushes to the
//! companion's sink, which is IO; `conn/` holds the sans-IO machines (HTTP/1.1, TLS) that
//! must not.

use crate::conn::tls::{Hello, Received as TlsReceived, TlsConn, TlsFailure};
use crate::mesh::virtual_conn::{Inbound, VirtualSink};
use crate::uring::op::{Completion, Held, Lease, OpId};
use crate::uring::ring::Ring;
use crate::uring::sys::{self, Shutdown};
use bytes::Bytes;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

/// Bytes the first receive of a TLS ClientHello asks for (as a first request receive).
const HELLO_RECV_BYTES: usize = 2048;

/// What carries the bytes.
enum Transport {
    Plain,
    Tls(Box<TlsConn>),
    Virtual(Arc<VirtualSink>),
}

/// The write in progress: one per connection.
struct Write {
    /// The frames; empty while a plain writev holds them (the ring's op), once the
    /// companion took them (virtual), or once rustls took a TLS write's plaintext whole
    /// ([`Pipe::take_spent_frames`]).
    frames: Vec<Bytes>,
    /// Bytes of the whole write.
    len: usize,
    /// Bytes of it delivered so far.
    written: usize,
}

impl Write {
    fn remaining(&self) -> usize {
        assert!(
            self.written <= self.len,
            "{} written of {}",
            self.written,
            self.len
        );
        self.len - self.written
    }
}

/// Where the next receive goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvInto {
    /// The request: up to `room` more plaintext bytes are wanted (a TLS pipe picks its own
    /// ciphertext size).
    Request {
        /// Plaintext bytes the request reader has room for (at least 1).
        room: usize,
    },
    /// Nothing anyone reads (a subscriber's or a refused client's input): the ring's
    /// discard buffer.
    Discard,
    /// A small receive that may wait long (an idle WebSocket's): a plain pipe takes a
    /// buffer of the ring's pool once data comes, and the connection holds none meanwhile
    /// (its receive buffer is let go); where the ring has no pool, and for TLS and tunnels,
    /// as `Request { room }`.
    Pooled {
        /// Plaintext bytes wanted when no pool buffer is used (at least 1).
        room: usize,
    },
}

/// What a receive brought.
#[derive(Debug)]
pub enum Received {
    /// Plaintext is in a buffer the ring's pool lent (a plain pipe's `RecvInto::Pooled`):
    /// read it with `Ring::provided`, then hand the lease back (`Ring::give_back`).
    Pooled(Lease),
    /// Plaintext was appended to the receive buffer (perhaps none: a handshake record).
    Data {
        /// This receive completed the TLS handshake.
        established: bool,
        /// The peer's `close_notify` came with it: no more requests will.
        closed: bool,
    },
    /// Part of a TLS ClientHello, or all of it (raw, in the request buffer).
    Hello(Hello),
    /// The ClientHello filled its bound without completing.
    HelloTooLarge,
    /// The connection's TLS records failed (an alert may wait to be sent).
    TlsFailed(TlsFailure),
    /// End of stream or a receive error.
    Closed,
    /// `len` bytes went to the discard buffer: only their count matters.
    Discarded {
        /// Bytes received.
        len: usize,
    },
}

/// What a write completion did.
#[derive(Debug)]
#[must_use]
pub enum Wrote {
    /// Part of the write went; the rest is under way. `credited`: its bytes delivered now.
    Progress {
        /// Bytes of the write delivered by this completion.
        credited: usize,
    },
    /// The write went whole; its frames come back for the pool.
    Done {
        /// Bytes of the write delivered by this completion.
        credited: usize,
        /// The write's frames (empty for a virtual write).
        frames: Vec<Bytes>,
    },
    /// A TLS send with no write behind it (handshake, alert, `close_notify`) completed and
    /// nothing more is queued.
    Idle,
    /// The socket failed: nothing more will be written.
    Failed,
}

/// How a connection lingers once a refusal is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Linger {
    /// Nothing to linger on (a virtual connection): close.
    Close,
    /// A TLS `close_notify` is being sent; the half-close follows when it is
    /// ([`Pipe::take_linger_after_send`] then says so).
    AfterSend,
    /// Half-closed: read (into the discard buffer) until the client closes.
    Now,
}

/// What closing started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Closing {
    /// The close is on the ring: the slot is released at its completion.
    Submitted,
    /// Nothing to wait for (a virtual connection, or a socket already given away).
    Done,
}

/// One connection's transport, ops in flight and write in progress.
pub struct Pipe {
    /// The socket: `None` for a virtual connection, once its close was submitted, or once
    /// it was handed to the companion.
    fd: Option<OwnedFd>,
    transport: Transport,
    /// The receive in flight.
    recv: Option<OpId>,
    /// The ring write in flight (a plain writev, or a TLS send).
    send: Option<OpId>,
    write: Option<Write>,
    /// The TLS session was fed (a ClientHello, records received, a `close_notify`) since
    /// its last `fill`, so it may hold records to send (its first flight, tickets, an
    /// alert). While false, a send that completes a write whole leaves nothing to flush,
    /// and the session (rustls' state, cold by then) is not touched again.
    tls_fed: bool,
}

impl Pipe {
    /// A plain socket.
    pub fn plain(fd: OwnedFd) -> Self {
        Self::new(Some(fd), Transport::Plain)
    }

    /// A socket of the TLS listener: reads its ClientHello first.
    pub fn tls(fd: OwnedFd) -> Self {
        Self::new(Some(fd), Transport::Tls(Box::default()))
    }

    /// A virtual connection: writes go to `sink`; nothing is received (the request came
    /// with the mail), except a tunnel's client bytes ([`Self::on_virtual_recv`]).
    pub fn virtual_conn(sink: Arc<VirtualSink>) -> Self {
        Self::new(None, Transport::Virtual(sink))
    }

    fn new(fd: Option<OwnedFd>, transport: Transport) -> Self {
        Self {
            fd,
            transport,
            recv: None,
            send: None,
            write: None,
            tls_fed: true,
        }
    }

    /// Whether this is a TLS connection.
    pub fn is_tls(&self) -> bool {
        matches!(self.transport, Transport::Tls(_))
    }

    /// Whether this is a virtual connection.
    pub fn is_virtual(&self) -> bool {
        matches!(self.transport, Transport::Virtual(_))
    }

    /// Whether this is a tunnel: a virtual connection whose client's bytes come in too (an
    /// RFC 8441 WebSocket over HTTP/2, virtual_conn.rs).
    pub fn is_tunnel(&self) -> bool {
        matches!(&self.transport, Transport::Virtual(sink) if sink.is_tunnel())
    }

    /// A TLS connection still in its handshake: no answer can be written yet.
    pub fn handshaking(&self) -> bool {
        matches!(&self.transport, Transport::Tls(tls) if !tls.established())
    }

    /// Whether a TLS connection's handshake completed.
    pub fn established(&self) -> bool {
        matches!(&self.transport, Transport::Tls(tls) if tls.established())
    }

    /// The socket, while the pipe has one (for `getpeername`).
    pub fn raw_fd(&self) -> Option<RawFd> {
        self.fd.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// A receive is in flight (on the ring, or a tunnel's in the companion).
    pub fn receiving(&self) -> bool {
        self.recv.is_some()
            || matches!(&self.transport, Transport::Virtual(sink) if sink.receiving())
    }

    /// A write is in progress (started and not yet delivered whole, failed or forgotten).
    pub fn writing(&self) -> bool {
        self.write.is_some()
    }

    /// Posts a receive into `into` unless one is in flight (or there is no socket): for a
    /// plain pipe and a TLS ClientHello, the receive buffer `buf` itself goes to the ring
    /// (no copy) and comes back in the completion; for a TLS session, its ciphertext
    /// buffer.
    pub fn post_recv(&mut self, ring: &mut Ring, key: u64, buf: &mut Vec<u8>, into: RecvInto) {
        if self.recv.is_some() {
            return;
        }
        if let Transport::Virtual(sink) = &self.transport {
            // Only a tunnel receives (its client's bytes, from the companion); `buf` stays
            // here and the bytes are appended to it ([`Self::on_virtual_recv`]).
            if let RecvInto::Request { room } | RecvInto::Pooled { room } = into {
                sink.post_recv(room);
            }
            return;
        }
        let Some(fd) = self.raw_fd() else {
            return;
        };
        let op = match (&mut self.transport, into) {
            (Transport::Virtual(_), _) => return,
            (Transport::Plain, RecvInto::Pooled { .. }) if ring.provides_buffers() => {
                debug_assert!(buf.is_empty(), "bytes wait in the receive buffer");
                // Nothing held while the receive waits: the pool lends a buffer for the data.
                *buf = Vec::new();
                ring.recv_provided(key, fd)
            }
            (Transport::Plain, RecvInto::Request { room } | RecvInto::Pooled { room }) => {
                ring.recv(key, fd, std::mem::take(buf), room)
            }
            (Transport::Tls(tls), RecvInto::Request { .. } | RecvInto::Pooled { .. })
                if tls.in_hello() =>
            {
                // The raw ClientHello stays in `buf` (an `h2` client is handed on with it).
                let room = crate::conn::tls::CLIENT_HELLO_BYTES_MAX
                    .checked_sub(buf.len())
                    .expect("a ClientHello past its bound was refused")
                    .clamp(1, HELLO_RECV_BYTES);
                ring.recv(key, fd, std::mem::take(buf), room)
            }
            (Transport::Tls(tls), RecvInto::Request { .. } | RecvInto::Pooled { .. }) => {
                let recv = tls.take_recv_buffer();
                let room = recv.capacity();
                ring.recv(key, fd, recv, room)
            }
            (transport, RecvInto::Discard) => {
                if let Transport::Tls(tls) = transport {
                    // Ciphertext nobody decrypts, as the plaintext would be dropped.
                    tls.release_recv();
                }
                ring.recv_discard(key, fd)
            }
        };
        self.recv = Some(op);
    }

    /// A receive completed: plaintext is appended to `buf` (the receive buffer, empty
    /// while a plain receive or a ClientHello receive holds it: it comes back here).
    pub fn on_recv(
        &mut self,
        completion: Completion,
        buf: &mut Vec<u8>,
        tls_config: Option<&Arc<rustls::ServerConfig>>,
    ) -> Received {
        assert_eq!(
            self.recv.take(),
            Some(completion.op),
            "a receive completes the receive in flight"
        );
        let result = completion.result;
        if result <= 0 {
            return Received::Closed;
        }
        let len = result as usize;
        let held = match completion.held {
            Held::Recv(held) => held,
            Held::Provided(lease) => {
                debug_assert!(matches!(self.transport, Transport::Plain));
                return Received::Pooled(lease);
            }
            _ => return Received::Discarded { len },
        };
        match &mut self.transport {
            Transport::Plain => {
                debug_assert!(buf.is_empty(), "the ring held the receive buffer");
                *buf = held;
                Received::Data {
                    established: false,
                    closed: false,
                }
            }
            Transport::Tls(tls) if tls.in_hello() => {
                debug_assert!(buf.is_empty(), "the ring held the ClientHello");
                self.tls_fed = true;
                *buf = held;
                let old = buf.len() - len;
                let Some(config) = tls_config else {
                    return Received::TlsFailed(TlsFailure::Protocol("no TLS config".into()));
                };
                let hello = tls.hello(&buf[old..], config);
                if hello == Hello::Partial && buf.len() >= crate::conn::tls::CLIENT_HELLO_BYTES_MAX
                {
                    return Received::HelloTooLarge;
                }
                if hello == Hello::Http1 {
                    *buf = Vec::new();
                }
                Received::Hello(hello)
            }
            Transport::Tls(tls) => {
                self.tls_fed = true;
                match tls.receive(held, buf) {
                    Ok(TlsReceived {
                        established,
                        closed,
                    }) => Received::Data {
                        established,
                        closed,
                    },
                    Err(failure) => Received::TlsFailed(failure),
                }
            }
            Transport::Virtual(_) => unreachable!("a virtual pipe posts no ring receive"),
        }
    }

    /// Starts one write of `frames` (`len` bytes), the only one in progress. Returns the
    /// frames back if the pipe cannot take them (a virtual sink already holding a batch).
    pub fn start_write(
        &mut self,
        ring: &mut Ring,
        key: u64,
        frames: Vec<Bytes>,
        len: usize,
        tls_out_pool: &mut Vec<Vec<u8>>,
    ) -> Result<(), Vec<Bytes>> {
        assert!(self.write.is_none(), "one write in progress per connection");
        debug_assert_eq!(len, frames.iter().map(Bytes::len).sum::<usize>());
        match &mut self.transport {
            Transport::Virtual(sink) => {
                // The companion takes the frames; the write is in progress until it mails
                // `VirtualWriteDone` (or the connection closes).
                sink.push(frames)?;
                self.write = Some(Write {
                    frames: Vec::new(),
                    len,
                    written: 0,
                });
            }
            Transport::Plain => {
                let Some(fd) = self.fd.as_ref().map(AsRawFd::as_raw_fd) else {
                    return Err(frames);
                };
                assert!(self.send.is_none(), "one writev in flight");
                self.send = Some(ring.writev(key, fd, frames, 0));
                self.write = Some(Write {
                    frames: Vec::new(),
                    len,
                    written: 0,
                });
            }
            Transport::Tls(tls) => {
                // Encrypted and sent a chunk at a time (`flush`, `on_write`); the frames
                // are never the kernel's.
                tls.start_write();
                self.write = Some(Write {
                    frames,
                    len,
                    written: 0,
                });
                if !self.flush(ring, key, tls_out_pool) {
                    // Nothing to send (an empty write): a zero-length send completes it.
                    self.submit_send(ring, key, false);
                }
            }
        }
        Ok(())
    }

    /// The companion handed a virtual write's frames on: it is delivered whole.
    pub fn on_virtual_written(&mut self) -> Option<Wrote> {
        let write = self.write.take()?;
        Some(Wrote::Done {
            credited: write.remaining(),
            frames: write.frames,
        })
    }

    /// A write (plain writev or TLS send) completed.
    pub fn on_write(
        &mut self,
        ring: &mut Ring,
        completion: Completion,
        tls_out_pool: &mut Vec<Vec<u8>>,
    ) -> Wrote {
        assert_eq!(
            self.send.take(),
            Some(completion.op),
            "a write completes the write in flight"
        );
        let key = completion.key;
        let result = completion.result;
        match (&mut self.transport, completion.held) {
            (Transport::Plain, Held::Frames(frames)) => {
                let fd = self.fd.as_ref().map(AsRawFd::as_raw_fd);
                let write = self.write.as_mut().expect("a writev belongs to a write");
                if result < 0 {
                    return Wrote::Failed;
                }
                let sent = result as usize;
                assert!(
                    sent <= write.remaining(),
                    "wrote {sent} of {}",
                    write.remaining()
                );
                write.written += sent;
                if write.written < write.len {
                    let fd = fd.expect("open while writing");
                    self.send = Some(ring.writev(key, fd, frames, write.written));
                    return Wrote::Progress { credited: sent };
                }
                self.write = None;
                Wrote::Done {
                    credited: sent,
                    frames,
                }
            }
            (Transport::Tls(tls), Held::Bytes(out)) => {
                tls.restore_out(out);
                if result < 0 {
                    // The peer is gone: nothing more to tell it.
                    tls.fail();
                    return Wrote::Failed;
                }
                let Some(plain) = tls.on_sent(result as usize) else {
                    self.submit_send(ring, key, false);
                    return Wrote::Progress { credited: 0 };
                };
                let credited = match self.write.as_mut() {
                    Some(write) => {
                        assert!(
                            plain <= write.remaining(),
                            "{plain} of {}",
                            write.remaining()
                        );
                        write.written += plain;
                        plain
                    }
                    None => {
                        assert_eq!(plain, 0, "plaintext sent without a write");
                        0
                    }
                };
                let whole = self
                    .write
                    .as_ref()
                    .is_none_or(|write| write.written == write.len);
                if whole && !self.tls_fed {
                    // The last fill drained the session and nothing fed it since: no
                    // record waits, so the session is not asked (the usual end of a
                    // stream's write: one send, one completion, no second fill).
                    if let Some(buffer) = tls.take_idle_out() {
                        recycle_tls_out(tls_out_pool, buffer);
                    }
                } else if self.flush(ring, key, tls_out_pool) {
                    return Wrote::Progress { credited };
                }
                match self.write.take() {
                    Some(write) => {
                        assert_eq!(write.written, write.len, "a TLS write sent whole");
                        Wrote::Done {
                            credited,
                            frames: write.frames,
                        }
                    }
                    None => Wrote::Idle,
                }
            }
            (_, held) => unreachable!("a write completion holding {held:?}"),
        }
    }

    /// The frames of the write in progress once the pipe no longer needs them: a TLS
    /// write whose plaintext rustls took whole (what is left to send is ciphertext in the
    /// send buffer). Usually right after [`Self::start_write`]: the frames go back to the
    /// pool while they are hot, not at the completion. `None` otherwise (a plain writev's
    /// frames are the ring's until it completes; a write of more than one chunk waits for
    /// its last).
    pub fn take_spent_frames(&mut self) -> Option<Vec<Bytes>> {
        let (Transport::Tls(tls), Some(write)) = (&self.transport, self.write.as_mut()) else {
            return None;
        };
        if write.frames.is_empty() || !tls.write_taken(write.len) {
            return None;
        }
        Some(std::mem::take(&mut write.frames))
    }

    /// The companion answered a tunnel's receive (`Mail::VirtualReceived`): its bytes are
    /// appended to `buf` (the receive buffer, which stays with the connection); `None` if
    /// no answer waits (a stale mail).
    pub fn on_virtual_recv(&mut self, buf: &mut Vec<u8>) -> Option<Received> {
        let Transport::Virtual(sink) = &self.transport else {
            return None;
        };
        Some(match sink.take_received()? {
            Inbound::Data(data) if buf.is_empty() => {
                *buf = data;
                Received::Data {
                    established: false,
                    closed: false,
                }
            }
            Inbound::Data(data) => {
                buf.extend_from_slice(&data);
                Received::Data {
                    established: false,
                    closed: false,
                }
            }
            Inbound::End => Received::Closed,
        })
    }

    /// Gives up the write in progress (the connection closes): returns its bytes not
    /// delivered, and its frames (if the pipe holds them) for the pool.
    pub fn forget_write(&mut self) -> Option<(usize, Vec<Bytes>)> {
        let write = self.write.take()?;
        if let Transport::Tls(tls) = &mut self.transport {
            tls.abandon_write();
        }
        Some((write.remaining(), write.frames))
    }

    /// Starts the next send of a TLS connection unless one is in flight: what rustls has
    /// queued (handshake, tickets, alerts) and the next chunk of the write in progress.
    /// Returns whether a send is in flight afterwards (always false for other pipes).
    pub fn flush(&mut self, ring: &mut Ring, key: u64, tls_out_pool: &mut Vec<Vec<u8>>) -> bool {
        let Transport::Tls(tls) = &mut self.transport else {
            return false;
        };
        if tls.sending() {
            return true;
        }
        if tls.needs_out_buffer() {
            if let Some(buffer) = tls_out_pool.pop() {
                tls.provide_out(buffer);
            }
        }
        let (frames, len) = match &self.write {
            Some(write) => (&write.frames[..], write.len),
            None => (&[][..], 0),
        };
        // Whatever the session holds goes to the send buffer now (`fill` drains it).
        self.tls_fed = false;
        if tls.fill(frames, len) {
            self.submit_send(ring, key, false);
            return true;
        }
        if let Some(buffer) = tls.take_idle_out() {
            recycle_tls_out(tls_out_pool, buffer);
        }
        false
    }

    /// Sends a TLS connection's pending ciphertext; `nowait`: completes at once rather
    /// than wait for room (a closing connection's last words).
    fn submit_send(&mut self, ring: &mut Ring, key: u64, nowait: bool) {
        let (Transport::Tls(tls), Some(fd)) = (&mut self.transport, self.fd.as_ref()) else {
            return;
        };
        let (out, from) = tls.take_out();
        assert!(self.send.is_none(), "one send in flight");
        self.send = Some(ring.send(key, fd.as_raw_fd(), out, from, nowait));
    }

    /// Queues a TLS `close_notify` and sends it: true while a send is in flight afterwards
    /// (a refused TLS client's answer, then its end). Other pipes: false.
    fn close_notify(&mut self, ring: &mut Ring, key: u64, tls_out_pool: &mut Vec<Vec<u8>>) -> bool {
        if let Transport::Tls(tls) = &mut self.transport {
            tls.close_notify();
            self.tls_fed = true;
        }
        self.flush(ring, key, tls_out_pool)
    }

    /// A refusal was written: a TLS session says `close_notify` first; then the sending
    /// side is half-closed, so the client reads the answer and the end, not a reset.
    pub fn linger(&mut self, ring: &mut Ring, key: u64, tls_out_pool: &mut Vec<Vec<u8>>) -> Linger {
        match &mut self.transport {
            Transport::Virtual(_) => return Linger::Close,
            Transport::Tls(tls) => {
                tls.linger_after_send = true;
                if self.close_notify(ring, key, tls_out_pool) {
                    return Linger::AfterSend;
                }
                self.take_linger_after_send();
            }
            Transport::Plain => {}
        }
        self.shutdown_write();
        Linger::Now
    }

    /// Whether the connection lingers now that its sends are done (asked once).
    pub fn take_linger_after_send(&mut self) -> bool {
        match &mut self.transport {
            Transport::Tls(tls) => std::mem::take(&mut tls.linger_after_send),
            _ => false,
        }
    }

    /// Marks a TLS session failed (an alert already queued still goes at the close).
    pub fn fail_tls(&mut self) {
        if let Transport::Tls(tls) = &mut self.transport {
            tls.fail();
        }
    }

    /// Half-closes the sending side (a refusal was written; the client reads it, then the
    /// end).
    pub fn shutdown_write(&self) {
        if let Some(fd) = self.raw_fd() {
            sys::shutdown(fd, Shutdown::Write);
        }
    }

    /// Closes: a virtual connection's sink at once; a socket on the ring, after a TLS
    /// `close_notify` (or a pending alert) sent without waiting for the peer. Ops still in
    /// flight are made to complete (shutdown) and keep their memory until they do; the
    /// write in progress must have been forgotten first.
    pub fn close(&mut self, ring: &mut Ring, key: u64) -> Closing {
        assert!(
            self.write.is_none(),
            "the write was forgotten before the close"
        );
        if let Transport::Virtual(sink) = &self.transport {
            sink.close();
            return Closing::Done;
        }
        let Some(fd) = self.raw_fd() else {
            return Closing::Done;
        };
        let stuck = self.send.is_some();
        let mut goodbye = false;
        match &mut self.transport {
            Transport::Tls(tls) => {
                if !stuck {
                    tls.close_notify();
                    goodbye = !tls.pending_out().is_empty();
                }
                if stuck {
                    sys::shutdown(fd, Shutdown::Both);
                } else if self.recv.is_some() {
                    // The goodbye still goes out; only the receive must end.
                    sys::shutdown(fd, Shutdown::Read);
                }
            }
            _ if stuck || self.recv.is_some() => sys::shutdown(fd, Shutdown::Both),
            _ => {}
        }
        if goodbye {
            self.submit_send(ring, key, true);
        }
        let fd = self.fd.take().expect("checked above");
        // Ops in flight complete on their own (shut down above); the ring keeps their
        // memory until then, whatever becomes of this connection.
        ring.close(key, fd);
        Closing::Submitted
    }

    /// A completion for a connection that is closing: forgets its op and gives back what
    /// it held (for the pools); nothing more is started.
    pub fn settle(&mut self, completion: Completion) -> Held {
        if self.recv == Some(completion.op) {
            self.recv = None;
        } else {
            assert_eq!(
                self.send.take(),
                Some(completion.op),
                "a completion of this pipe's op"
            );
        }
        if let (Transport::Tls(tls), Held::Bytes(_)) = (&mut self.transport, &completion.held) {
            // The send buffer never comes back to the session: it is closing.
            tls.fail();
        }
        completion.held
    }

    /// Takes the socket out (a TLS client handed to the companion); `None` while an op is
    /// in flight on it (never, when the ClientHello just came: nothing is sent before).
    pub fn take_fd(&mut self) -> Option<OwnedFd> {
        let idle = self.recv.is_none() && self.send.is_none();
        debug_assert!(idle, "no op in flight on a socket given away");
        if !idle {
            return None;
        }
        self.fd.take()
    }

    /// Gives a socket back after a hand-off that did not happen.
    pub fn restore_fd(&mut self, fd: OwnedFd) {
        assert!(self.fd.is_none());
        self.fd = Some(fd);
    }
}

/// Keeps a TLS send buffer for another connection, if the pool has room and it is not
/// oversized.
pub fn recycle_tls_out(pool: &mut Vec<Vec<u8>>, mut buffer: Vec<u8>) {
    if pool.len() < TLS_OUT_POOLED_MAX
        && buffer.capacity() <= 2 * crate::conn::tls::SEND_CHUNK_BYTES
        && buffer.capacity() != 0
    {
        buffer.clear();
        pool.push(buffer);
    }
}

/// Spare TLS send buffers kept per shard (each about one TLS record,
/// `conn::tls::SEND_CHUNK_BYTES`), so idle TLS streams hold none.
pub const TLS_OUT_POOLED_MAX: usize = 256;

#[cfg(test)]
mod tls_tests;

#[cfg(test)]
mod tests;
