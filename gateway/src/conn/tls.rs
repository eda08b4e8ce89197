//! TLS over byte buffers for one connection the shard's io_uring ring serves (HTTP/1.1
//! over TLS, docs/TRANSPORTS.md). No sockets and no `unsafe`: the shard hands in what the
//! ring received and sends what [`TlsConn::pending_out`] holds; rustls does the rest.
//!
//! A connection starts in the ClientHello phase: the raw bytes stay in the shard's request
//! buffer (so an `h2` client can be handed to the companion thread with them) and a
//! [`rustls::server::Acceptor`] reads a copy. Once the ClientHello is in, a client offering
//! ALPN `h2` goes to the companion; any other becomes a [`ServerConnection`] here, and from
//! then on ciphertext received is decrypted into the request buffer and every write's
//! plaintext is encrypted, [`SEND_CHUNK_BYTES`] at a time, into one send buffer.
//!
//! Ownership: while the ring receives or sends for this connection, the buffer is the
//! ring's op's, not this struct's ([`TlsConn::take_recv_buffer`], [`TlsConn::take_out`]):
//! it comes back with the completion, so no flag has to keep anyone off it.
//!
//! Bounds: the ClientHello ([`CLIENT_HELLO_BYTES_MAX`]), one receive buffer
//! ([`RECV_BYTES`], held only while a request is read), rustls' own buffers (its send
//! buffer limited to [`SEND_CHUNK_BYTES`], its received-plaintext buffer by rustls), and
//! one chunk of ciphertext in flight.

use bytes::Bytes;
use rustls::server::{Acceptor, ServerConnection};
use std::io::{self, IoSlice, Read};
use std::sync::Arc;

/// Largest ClientHello (with whatever arrives with it) read before the handshake is given
/// up: a ClientHello is 0.3–2 KB (post-quantum key shares included), so 16 KiB leaves room
/// for any real client and bounds what a connection that never finishes one can hold.
pub const CLIENT_HELLO_BYTES_MAX: usize = 16 * 1024;
/// Bytes of one ciphertext receive once the session is set up (rustls itself reads 4 KiB
/// at a time; a request head and its record overhead fit).
pub const RECV_BYTES: usize = 4096;
/// Plaintext encrypted per send: one full TLS record. Bounds the ciphertext a connection
/// holds at once (its send buffer and rustls' own), which matters for the subscribers a
/// slow reader leaves with a write in flight: each holds at most this much.
pub const SEND_CHUNK_BYTES: usize = 16 * 1024;
/// Frames handed to rustls per `write_vectored` call (it joins them into records).
const SLICES_PER_WRITE: usize = 64;

/// What the ClientHello said, once read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hello {
    /// Not complete yet: receive more.
    Partial,
    /// HTTP/1.1 (ALPN `http/1.1` or none): the session continues here.
    Http1,
    /// The client offers ALPN `h2`: hand the connection to the companion thread.
    H2,
    /// Not TLS, or a ClientHello rustls refuses; an alert may wait in the send buffer.
    Failed,
}

/// What a receive brought.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Received {
    /// The handshake completed with this receive.
    pub established: bool,
    /// The peer sent `close_notify`: no more requests will come.
    pub closed: bool,
}

/// Why a connection's TLS failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsFailure {
    /// rustls refused what the peer sent (an alert may wait in the send buffer).
    #[error("TLS error: {0}")]
    Protocol(String),
}

enum Phase {
    /// Reading the ClientHello.
    Hello(Box<Acceptor>),
    /// HTTP/1.1 over this session.
    Session(Box<ServerConnection>),
    /// Failed or handed off: nothing more is decrypted or encrypted.
    Done,
}

/// One connection's TLS state.
pub struct TlsConn {
    phase: Phase,
    /// Ciphertext to send, `out[sent..]`; while a send is in flight the ring's op holds
    /// it (`take_out`) and this is empty.
    out: Vec<u8>,
    sent: usize,
    /// Plaintext bytes of the current write whose ciphertext is in `out`.
    out_plain: usize,
    /// Plaintext bytes of the current write handed to rustls.
    taken: usize,
    /// Ciphertext receive buffer (`RECV_BYTES` of capacity), only while reading a request
    /// after the ClientHello; the ring's op holds it while a receive is in flight.
    recv: Vec<u8>,
    /// A send of `out` is in flight on the ring (which holds `out`).
    sending: bool,
    /// Once the current sends are done: half-close and linger (a refusal was written).
    pub linger_after_send: bool,
    established: bool,
}

impl Default for TlsConn {
    fn default() -> Self {
        Self::new()
    }
}

impl TlsConn {
    /// A connection about to read its ClientHello.
    pub fn new() -> Self {
        Self {
            phase: Phase::Hello(Box::default()),
            out: Vec::new(),
            sent: 0,
            out_plain: 0,
            taken: 0,
            recv: Vec::new(),
            sending: false,
            linger_after_send: false,
            established: false,
        }
    }

    /// Whether the ClientHello is still being read (the raw bytes are the shard's).
    pub fn in_hello(&self) -> bool {
        matches!(self.phase, Phase::Hello(_))
    }

    /// Whether the handshake completed (refusals can be written).
    pub fn established(&self) -> bool {
        self.established && matches!(self.phase, Phase::Session(_))
    }

    /// Feeds `new` raw bytes to the ClientHello reader; on a complete HTTP/1.1 hello, the
    /// session starts with `config` and its first flight waits in the send buffer.
    pub fn hello(&mut self, new: &[u8], config: &Arc<rustls::ServerConfig>) -> Hello {
        let Phase::Hello(acceptor) = &mut self.phase else {
            return Hello::Failed;
        };
        let mut rest = new;
        while !rest.is_empty() {
            match acceptor.read_tls(&mut rest) {
                Ok(0) | Err(_) => {
                    self.phase = Phase::Done;
                    return Hello::Failed;
                }
                Ok(_) => {}
            }
        }
        let accepted = match acceptor.accept() {
            Ok(None) => return Hello::Partial,
            Ok(Some(accepted)) => accepted,
            Err((err, mut alert)) => {
                tracing::debug!(%err, "TLS ClientHello refused");
                let _ = alert.write_all(&mut self.out);
                self.phase = Phase::Done;
                return Hello::Failed;
            }
        };
        let offers_h2 = accepted
            .client_hello()
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == b"h2"));
        if offers_h2 {
            self.phase = Phase::Done;
            return Hello::H2;
        }
        match accepted.into_connection(config.clone()) {
            Ok(mut session) => {
                session.set_buffer_limit(Some(SEND_CHUNK_BYTES));
                self.phase = Phase::Session(Box::new(session));
                // Whatever came with the ClientHello (a compatibility ChangeCipherSpec)
                // waits in rustls' buffer: process it now.
                match self.process(&mut Vec::new()) {
                    Ok(_) => Hello::Http1,
                    Err(_) => Hello::Failed,
                }
            }
            Err((err, mut alert)) => {
                tracing::debug!(%err, "TLS handshake refused");
                let _ = alert.write_all(&mut self.out);
                self.phase = Phase::Done;
                Hello::Failed
            }
        }
    }

    /// The (empty) buffer for the next ciphertext receive, [`RECV_BYTES`] of capacity
    /// (allocated on first use): the ring's op holds it until [`Self::receive`] gets it
    /// back.
    pub fn take_recv_buffer(&mut self) -> Vec<u8> {
        let mut buf = std::mem::take(&mut self.recv);
        buf.clear();
        buf.reserve_exact(RECV_BYTES);
        buf
    }

    /// Frees the receive buffer (the connection streams or lingers: what it receives is
    /// discarded). Only while no receive is in flight.
    pub fn release_recv(&mut self) {
        self.recv = Vec::new();
    }

    /// Decrypts the ciphertext the ring received into `recv` (the buffer of
    /// [`Self::take_recv_buffer`], back from the ring), appending the plaintext to
    /// `plain`; keeps the buffer for the next receive.
    pub fn receive(&mut self, recv: Vec<u8>, plain: &mut Vec<u8>) -> Result<Received, TlsFailure> {
        let result = self.receive_from(&recv, plain);
        self.recv = recv;
        result
    }

    fn receive_from(
        &mut self,
        mut rest: &[u8],
        plain: &mut Vec<u8>,
    ) -> Result<Received, TlsFailure> {
        while !rest.is_empty() {
            let Phase::Session(session) = &mut self.phase else {
                return Err(TlsFailure::Protocol("no session".into()));
            };
            match session.read_tls(&mut rest) {
                Ok(0) => break,
                Ok(_) => {}
                Err(err) => return Err(TlsFailure::Protocol(err.to_string())),
            }
            let received = self.process(plain)?;
            if received.closed {
                return Ok(received);
            }
        }
        let mut received = Received::default();
        if let Phase::Session(session) = &self.phase {
            if !self.established && !session.is_handshaking() {
                self.established = true;
                received.established = true;
            }
        }
        Ok(received)
    }

    /// Processes what rustls buffered and moves the plaintext into `plain`. On an error
    /// the alert rustls queued is moved to the send buffer.
    fn process(&mut self, plain: &mut Vec<u8>) -> Result<Received, TlsFailure> {
        let Phase::Session(session) = &mut self.phase else {
            return Ok(Received::default());
        };
        if let Err(err) = session.process_new_packets() {
            drain(session, &mut self.out);
            self.phase = Phase::Done;
            return Err(TlsFailure::Protocol(err.to_string()));
        }
        match session.reader().read_to_end(plain) {
            Ok(_) => Ok(Received {
                established: false,
                closed: true,
            }),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => Ok(Received::default()),
            Err(err) => Err(TlsFailure::Protocol(err.to_string())),
        }
    }

    /// A new write of plaintext begins (the shard holds its frames).
    pub fn start_write(&mut self) {
        self.taken = 0;
        self.out_plain = 0;
    }

    /// The current write is abandoned (the connection closes): nothing of it is owed.
    pub fn abandon_write(&mut self) {
        self.taken = 0;
        self.out_plain = 0;
    }

    /// Moves the next ciphertext into the send buffer: whatever rustls has queued
    /// (handshake, tickets, alerts) and up to [`SEND_CHUNK_BYTES`] more of `frames`
    /// (`write_len` bytes in all) encrypted. Only while no send is in flight. Returns
    /// whether there is something to send.
    pub fn fill(&mut self, frames: &[Bytes], write_len: usize) -> bool {
        debug_assert!(
            !self.sending,
            "the send buffer is the kernel's while in flight"
        );
        if self.sent >= self.out.len() {
            self.out.clear();
            self.sent = 0;
        }
        if let Phase::Session(session) = &mut self.phase {
            if !session.is_handshaking() {
                while self.taken < write_len {
                    let mut slices = [IoSlice::new(&[]); SLICES_PER_WRITE];
                    let count = gather(frames, self.taken, &mut slices);
                    if count == 0 {
                        break;
                    }
                    let accepted =
                        match io::Write::write_vectored(&mut session.writer(), &slices[..count]) {
                            Ok(accepted) => accepted,
                            Err(_) => break,
                        };
                    self.taken += accepted;
                    self.out_plain += accepted;
                    let offered: usize = slices[..count].iter().map(|s| s.len()).sum();
                    if accepted < offered || self.out_plain >= SEND_CHUNK_BYTES {
                        break;
                    }
                }
            }
            drain(session, &mut self.out);
        }
        self.sent < self.out.len()
    }

    /// The ciphertext still to send.
    pub fn pending_out(&self) -> &[u8] {
        self.out.get(self.sent..).unwrap_or_default()
    }

    /// Whether a send is in flight (the ring holds the send buffer).
    pub fn sending(&self) -> bool {
        self.sending
    }

    /// Hands the send buffer to the ring for a send of `buffer[from..]`: until
    /// [`Self::restore_out`] nothing is encrypted into it.
    pub fn take_out(&mut self) -> (Vec<u8>, usize) {
        assert!(!self.sending, "one send in flight per connection");
        self.sending = true;
        (std::mem::take(&mut self.out), self.sent)
    }

    /// The send buffer is back from the ring (its send completed; [`Self::on_sent`] says
    /// how much of it went).
    pub fn restore_out(&mut self, out: Vec<u8>) {
        assert!(self.sending, "a send buffer comes back only from a send");
        debug_assert!(self.out.capacity() == 0);
        self.sending = false;
        self.out = out;
    }

    /// `len` bytes of the send buffer were sent. When all of it is, returns the plaintext
    /// bytes of the current write it carried (now delivered).
    pub fn on_sent(&mut self, len: usize) -> Option<usize> {
        self.sent += len;
        if self.sent < self.out.len() {
            return None;
        }
        self.out.clear();
        self.sent = 0;
        Some(std::mem::take(&mut self.out_plain))
    }

    /// Whether every plaintext byte of a write of `write_len` went to rustls.
    pub fn write_taken(&self, write_len: usize) -> bool {
        self.taken >= write_len
    }

    /// Queues `close_notify` (unless the session failed or already sent one) into the send
    /// buffer. Only while no send is in flight.
    pub fn close_notify(&mut self) {
        if self.sending {
            return;
        }
        if let Phase::Session(session) = &mut self.phase {
            session.send_close_notify();
            if self.sent >= self.out.len() {
                self.out.clear();
                self.sent = 0;
            }
            drain(session, &mut self.out);
        }
    }

    /// Marks the session failed: nothing more is encrypted (an alert already in the send
    /// buffer still goes).
    pub fn fail(&mut self) {
        self.phase = Phase::Done;
    }

    /// Whether the send buffer has no allocation (one can be given from a pool).
    pub fn needs_out_buffer(&self) -> bool {
        self.out.capacity() == 0
    }

    /// Gives the send buffer an allocation (from the shard's pool) when it has none.
    pub fn provide_out(&mut self, buffer: Vec<u8>) {
        if self.out.capacity() == 0 {
            self.out = buffer;
            self.out.clear();
            self.sent = 0;
        }
    }

    /// Takes the send buffer's allocation when it is empty and idle (for the pool).
    pub fn take_idle_out(&mut self) -> Option<Vec<u8>> {
        (!self.sending && self.out.is_empty() && self.out.capacity() != 0)
            .then(|| std::mem::take(&mut self.out))
    }
}

/// Moves everything rustls queued to send into `out`.
fn drain(session: &mut ServerConnection, out: &mut Vec<u8>) {
    while session.wants_write() {
        match session.write_tls(out) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

/// Fills `slices` with `frames` from plaintext offset `skip`; returns how many.
fn gather<'a>(frames: &'a [Bytes], mut skip: usize, slices: &mut [IoSlice<'a>]) -> usize {
    let mut count = 0;
    for frame in frames {
        if count == slices.len() {
            break;
        }
        if skip >= frame.len() {
            skip -= frame.len();
            continue;
        }
        slices[count] = IoSlice::new(&frame[skip..]);
        skip = 0;
        count += 1;
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use std::io::Write;

    struct Pair {
        server_config: Arc<rustls::ServerConfig>,
        client_config: Arc<rustls::ClientConfig>,
    }

    fn pair(client_alpn: &[&[u8]]) -> Pair {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let der = made.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(made.signing_key.serialize_der().into());
        let server_config =
            crate::config::tls::server_config((vec![der.clone()], key), &[b"http/1.1"]).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = client_alpn.iter().map(|p| p.to_vec()).collect();
        Pair {
            server_config,
            client_config: Arc::new(client),
        }
    }

    fn client(pair: &Pair) -> rustls::ClientConnection {
        rustls::ClientConnection::new(
            pair.client_config.clone(),
            ServerName::try_from("localhost").unwrap(),
        )
        .unwrap()
    }

    /// Client → server: whatever the client has to send, through the server's receive
    /// path (in `RECV_BYTES` pieces, as the ring would).
    fn to_server(client: &mut rustls::ClientConnection, server: &mut TlsConn, plain: &mut Vec<u8>) {
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        for piece in wire.chunks(RECV_BYTES) {
            let mut buf = server.take_recv_buffer();
            buf.extend_from_slice(piece);
            server.receive(buf, plain).unwrap();
        }
    }

    /// Server → client: everything the server's send buffer holds (sent in 100-byte
    /// pieces, as short sends would).
    fn to_client(server: &mut TlsConn, frames: &[Bytes], client: &mut rustls::ClientConnection) {
        let write_len = frames.iter().map(Bytes::len).sum();
        while server.fill(frames, write_len) {
            loop {
                let piece = server.pending_out()[..server.pending_out().len().min(100)].to_vec();
                client.read_tls(&mut &piece[..]).unwrap();
                client.process_new_packets().unwrap();
                if server.on_sent(piece.len()).is_some() {
                    break;
                }
            }
        }
    }

    /// Feeds `wire` to the client whole (rustls reads at most 4 KiB at a time), moving the
    /// plaintext into `got`.
    fn feed(client: &mut rustls::ClientConnection, wire: &[u8], got: &mut Vec<u8>) {
        let mut rest = wire;
        while !rest.is_empty() {
            client.read_tls(&mut rest).unwrap();
            client.process_new_packets().unwrap();
            let _ = client.reader().read_to_end(got);
        }
    }

    fn handshake(pair: &Pair) -> (TlsConn, rustls::ClientConnection) {
        let mut server = TlsConn::new();
        let mut client = client(pair);
        let mut hello = Vec::new();
        client.write_tls(&mut hello).unwrap();
        // The ClientHello arrives in two pieces: the first is not enough.
        let (first, second) = hello.split_at(10);
        assert_eq!(server.hello(first, &pair.server_config), Hello::Partial);
        assert_eq!(server.hello(second, &pair.server_config), Hello::Http1);
        to_client(&mut server, &[], &mut client);
        let mut plain = Vec::new();
        to_server(&mut client, &mut server, &mut plain);
        assert!(server.established());
        to_client(&mut server, &[], &mut client);
        assert!(!client.is_handshaking());
        (server, client)
    }

    #[test]
    fn http1_session_round_trips_requests_and_chunked_writes() {
        let pair = pair(&[b"http/1.1"]);
        let (mut server, mut client) = handshake(&pair);
        client
            .writer()
            .write_all(b"GET / HTTP/1.1\r\n\r\n")
            .unwrap();
        let mut plain = Vec::new();
        to_server(&mut client, &mut server, &mut plain);
        assert_eq!(plain, b"GET / HTTP/1.1\r\n\r\n");

        // A write larger than a chunk goes out in several sends, all of it credited.
        let frames: Vec<Bytes> = (0..40)
            .map(|i| Bytes::from(vec![b'a' + (i % 26) as u8; 1000]))
            .collect();
        let write_len: usize = frames.iter().map(Bytes::len).sum();
        server.start_write();
        let mut credited = 0;
        let mut sends = 0;
        let mut got = Vec::new();
        while server.fill(&frames, write_len) {
            sends += 1;
            assert!(server.pending_out().len() < SEND_CHUNK_BYTES + 1024);
            let out = server.pending_out().to_vec();
            feed(&mut client, &out, &mut got);
            credited += server.on_sent(out.len()).unwrap();
        }
        assert!(sends >= 3, "{sends} sends");
        assert_eq!(credited, write_len);
        assert!(server.write_taken(write_len));
        let want: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
        assert!(
            got == want,
            "{} bytes decrypted of {}",
            got.len(),
            want.len()
        );

        // close_notify from the client ends the session.
        client.send_close_notify();
        let mut wire = Vec::new();
        client.write_tls(&mut wire).unwrap();
        let mut buf = server.take_recv_buffer();
        buf.extend_from_slice(&wire);
        assert!(server.receive(buf, &mut plain).unwrap().closed);
    }

    #[test]
    fn the_send_buffer_is_the_rings_while_a_send_is_in_flight() {
        let pair = pair(&[b"http/1.1"]);
        let (mut server, mut client) = handshake(&pair);
        let frames = [Bytes::from_static(b"HTTP/1.1 200 OK\r\n\r\n")];
        server.start_write();
        assert!(server.fill(&frames, frames[0].len()));
        let (out, from) = server.take_out();
        assert!(server.sending());
        assert!(server.pending_out().is_empty(), "nothing of it stays here");
        // While the ring holds it, close_notify waits (fill is not called: asserted).
        server.close_notify();
        assert!(server.pending_out().is_empty());
        let mut got = Vec::new();
        feed(&mut client, &out[from..], &mut got);
        server.restore_out(out);
        assert!(!server.sending());
        assert_eq!(
            server.on_sent(server.pending_out().len()),
            Some(frames[0].len())
        );
        assert_eq!(&got[..], &frames[0][..]);
    }

    #[test]
    fn a_client_offering_h2_is_handed_off_and_garbage_fails() {
        let pair_h2 = pair(&[b"h2", b"http/1.1"]);
        let mut client = client(&pair_h2);
        let mut hello = Vec::new();
        client.write_tls(&mut hello).unwrap();
        let mut server = TlsConn::new();
        assert_eq!(server.hello(&hello, &pair_h2.server_config), Hello::H2);

        let mut server = TlsConn::new();
        assert_eq!(
            server.hello(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &pair_h2.server_config),
            Hello::Failed
        );
    }
}
