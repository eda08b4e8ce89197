//! A whole HTTP/1.1 connection, driven as the worker drives a socket's: the request reader
//! (`gateway::conn::http1`), the parser and responses (`gateway::http::h1`) and, on TLS
//! connections, the ring's TLS session (`gateway::conn::tls`) with a rustls client on the
//! other end. Arbitrary client bytes arrive in arbitrary splits, the clock jumps between
//! them (timers fire), and answers complete at arbitrary points.
//!
//! Invariants: no panic; the receive buffer never holds more than one request at its
//! limits (plus one TLS receive); every connection that reads has a deadline, and a
//! deadline that passed always ends it; one answer per request (a `100 Continue` only for a
//! head that asked for one, whose body is not in, at most once); a request handed out lies
//! within the buffer, its route answers its method and takes its body; and — when no
//! deadline passed — the requests and the refusal are the same whatever the splits, as if
//! everything had arrived at once.
//!
//! The worker's own glue (ring submissions, slots, the timer wheel) is not driven: the cut
//! for this target is the sans-IO request reader the worker calls from `process` (see
//! fuzz/RUNS.md).
#![no_main]

use gateway::http::h1::{self as http1, Method};
use gateway::conn::http1::{Expired, Limits, Phase, RequestReader, Step};
use gateway::conn::tls::{Hello, TlsConn, RECV_BYTES};
use libfuzzer_sys::fuzz_target;
use std::io::{Read, Write};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Bytes a plain receive asks for at most (the worker's `RECV_CHUNK` is larger; smaller
/// here so one input makes many receives).
const RECV_MAX: usize = 256;

struct Tls {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

fn tls_configs() -> &'static Tls {
    static TLS: OnceLock<Tls> = OnceLock::new();
    TLS.get_or_init(|| {
        let cert = rustls::pki_types::CertificateDer::from(
            include_bytes!("../test_identity/cert.der").to_vec(),
        );
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(
            include_bytes!("../test_identity/key.der").to_vec().into(),
        );
        let server = gateway::config::tls::server_config((vec![cert.clone()], key), &[b"http/1.1"])
            .expect("server config");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(TrustAnything(provider)))
            .with_no_client_auth();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        Tls {
            server,
            client: Arc::new(client),
        }
    })
}

/// The client's view of the server certificate: not checked (the session, not the PKI, is
/// under test, and checking costs a signature verification per input).
#[derive(Debug)]
struct TrustAnything(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for TrustAnything {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What the server is writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writing {
    /// `100 Continue`.
    Interim,
    /// The answer to a request; the connection closes after it when `close`.
    Answer { close: bool },
    /// A refusal; the connection closes after it.
    Refusal,
}

/// What a connection made of its input.
#[derive(Debug, Default, PartialEq, Eq)]
struct Outcome {
    /// Each request handed out: method, head length, body length.
    requests: Vec<(Method, usize, usize)>,
    /// The refusal status, if it was refused (compared as present or not).
    refused: Option<u16>,
}

/// One TLS session: the server's and the client's ends, and the client's plaintext answers.
struct Session {
    server: TlsConn,
    client: rustls::ClientConnection,
    /// Ciphertext the client wrote, not yet received by the server.
    wire: Vec<u8>,
}

impl Session {
    fn new() -> Option<Session> {
        let configs = tls_configs();
        let mut client = rustls::ClientConnection::new(
            configs.client.clone(),
            "localhost".try_into().expect("name"),
        )
        .ok()?;
        let mut server = TlsConn::new();
        let mut hello = Vec::new();
        client.write_tls(&mut hello).ok()?;
        assert_eq!(server.hello(&hello, &configs.server), Hello::Http1);
        let mut session = Session {
            server,
            client,
            wire: Vec::new(),
        };
        session.to_client(&[]);
        let mut plain = Vec::new();
        session.client_writes();
        session.receive_all(&mut plain);
        assert!(session.server.established(), "handshake");
        assert!(plain.is_empty());
        session.to_client(&[]);
        Some(session)
    }

    /// Moves what the client has to send onto the wire.
    fn client_writes(&mut self) {
        while self.client.wants_write() {
            if self.client.write_tls(&mut self.wire).is_err() {
                break;
            }
        }
    }

    fn receive_all(&mut self, plain: &mut Vec<u8>) {
        while !self.wire.is_empty() {
            self.receive(RECV_BYTES, plain);
        }
    }

    /// One receive of at most `len` ciphertext bytes, decrypted into `plain`. False when
    /// the session failed or closed.
    fn receive(&mut self, len: usize, plain: &mut Vec<u8>) -> bool {
        let len = len.min(self.wire.len()).min(RECV_BYTES);
        self.server.recv_buffer()[..len].copy_from_slice(&self.wire[..len]);
        self.wire.drain(..len);
        match self.server.receive(len, plain) {
            Ok(received) => !received.closed,
            Err(_) => false,
        }
    }

    /// Encrypts `frames` and hands the ciphertext to the client in short sends.
    fn to_client(&mut self, frames: &[bytes::Bytes]) {
        let write_len = frames.iter().map(bytes::Bytes::len).sum();
        self.server.start_write();
        while self.server.fill(frames, write_len) {
            loop {
                let out = self.server.pending_out();
                let piece = out[..out.len().min(1000)].to_vec();
                let mut rest = &piece[..];
                while !rest.is_empty() {
                    match self.client.read_tls(&mut rest) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    let _ = self.client.process_new_packets();
                    let _ = self.client.reader().read_to_end(&mut Vec::new());
                }
                if self.server.on_sent(piece.len()).is_some() {
                    break;
                }
            }
        }
        assert!(
            self.server.write_taken(write_len),
            "a write not all encrypted"
        );
    }
}

/// The connection's server side, as the worker keeps it.
struct Conn {
    limits: Limits,
    reader: RequestReader,
    buf: Vec<u8>,
    /// Plain connections: client bytes not yet received (the kernel's socket buffer).
    wire: Vec<u8>,
    tls: Option<Session>,
    now: Instant,
    writing: Option<Writing>,
    /// The body of the request being read asked for `100 Continue` and got it.
    continued: bool,
    closed: bool,
    timed_out: bool,
    /// The TLS session failed or closed under the reader.
    cut: bool,
    outcome: Outcome,
}

impl Conn {
    fn buffer_bound(&self) -> usize {
        // A TLS receive decrypts up to one receive of ciphertext at once, not bounded by
        // the reader's room (the worker's TLS path receives `RECV_BYTES` each time).
        self.limits.buffer_bytes_max() + if self.tls.is_some() { RECV_BYTES } else { 0 }
    }

    fn check(&self) {
        assert!(
            self.buf.len() <= self.buffer_bound(),
            "buffer {} over {}",
            self.buf.len(),
            self.buffer_bound()
        );
        if !self.closed {
            match self.reader.phase() {
                Phase::Idle | Phase::Head | Phase::Body | Phase::Answering => {
                    assert!(self.reader.poll_timeout().is_some(), "no deadline");
                }
                Phase::Done => assert!(self.writing == Some(Writing::Refusal)),
            }
        }
    }

    /// Client bytes arrive.
    fn deliver(&mut self, bytes: &[u8]) {
        match &mut self.tls {
            Some(session) => {
                let _ = session.client.writer().write_all(bytes);
                session.client_writes();
            }
            None => self.wire.extend_from_slice(bytes),
        }
    }

    fn write(&mut self, writing: Writing, response: bytes::Bytes) {
        assert!(response.starts_with(b"HTTP/1.1 "));
        assert!(self.writing.is_none(), "one write at a time");
        if let Some(session) = &mut self.tls {
            session.to_client(&[response]);
        }
        self.writing = Some(writing);
    }

    /// The write in flight completed.
    fn write_done(&mut self) {
        match self.writing.take() {
            None => {}
            Some(Writing::Interim) => self.process(),
            Some(Writing::Answer { close: true }) | Some(Writing::Refusal) => self.closed = true,
            Some(Writing::Answer { close: false }) => {
                self.reader
                    .handle_answered(self.now, self.buf.len(), &self.limits);
                self.process();
            }
        }
    }

    /// The clock moves on; a passed deadline fires as the worker's wheel fires it.
    fn advance(&mut self, by: Duration) {
        self.now += by;
        let Some(deadline) = self.reader.poll_timeout() else {
            return;
        };
        if self.closed || self.now < deadline {
            return;
        }
        self.timed_out = true;
        if self.writing.is_some() {
            // Not reading: the worker closes it.
            self.closed = true;
            return;
        }
        match self.reader.handle_timeout(self.now) {
            Some(Expired::Close) => self.closed = true,
            Some(Expired::Refuse(refusal)) => {
                assert_eq!(refusal.status, 408);
                self.write(Writing::Refusal, http1::refusal(&refusal, true));
            }
            None => panic!(
                "deadline {deadline:?} passed at {:?} without effect",
                self.now
            ),
        }
        assert_eq!(self.reader.poll_timeout(), None);
    }

    /// The worker's `process`: handles what the buffer holds, receives when it needs more.
    fn process(&mut self) {
        while !self.closed && self.writing.is_none() {
            self.check();
            match self.reader.handle_input(self.now, &self.buf, &self.limits) {
                Step::NeedMore => {
                    let room = self.reader.recv_room(self.buf.len(), &self.limits);
                    assert!(room > 0, "more needed with a full buffer");
                    if !self.receive(room) {
                        return;
                    }
                }
                Step::Continue(head) => {
                    assert!(head.expect_continue);
                    assert!(!self.continued, "a second 100 Continue");
                    assert!(self.buf.len() < head.len + head.content_length);
                    self.continued = true;
                    self.write(Writing::Interim, bytes::Bytes::from_static(http1::CONTINUE));
                }
                Step::Request { head, end } => {
                    assert!(end <= self.buf.len());
                    assert_eq!(end, head.len + head.content_length);
                    assert!(head.len <= self.limits.header_bytes_max);
                    assert!(head.content_length <= self.limits.body_bytes_max);
                    assert!(head.route.allows(head.method), "{head:?}");
                    assert!(head.content_length == 0 || head.route.takes_body());
                    self.outcome
                        .requests
                        .push((head.method, head.len, head.content_length));
                    self.buf.drain(..end);
                    self.continued = false;
                    let full = http1::response(200, "text/plain", "", b"ok\n", head.close);
                    let response = if head.method == Method::Head {
                        http1::head_only(&full)
                    } else {
                        full
                    };
                    self.write(Writing::Answer { close: head.close }, response);
                }
                Step::Refuse(refusal) => {
                    assert!((400..600).contains(&refusal.status), "{refusal:?}");
                    assert_eq!(self.reader.phase(), Phase::Done);
                    assert_eq!(self.reader.poll_timeout(), None);
                    self.outcome.refused = Some(refusal.status);
                    self.write(Writing::Refusal, http1::refusal(&refusal, true));
                }
            }
        }
        self.check();
    }

    /// One receive of at most `room` bytes; false when nothing is waiting (or TLS ended).
    fn receive(&mut self, room: usize) -> bool {
        match &mut self.tls {
            Some(session) => {
                if session.wire.is_empty() {
                    return false;
                }
                if !session.receive(RECV_BYTES, &mut self.buf) {
                    self.closed = true;
                    self.cut = true;
                    return false;
                }
                true
            }
            None => {
                if self.wire.is_empty() {
                    return false;
                }
                let len = room.min(RECV_MAX).min(self.wire.len());
                self.buf.extend_from_slice(&self.wire[..len]);
                self.wire.drain(..len);
                true
            }
        }
    }

    /// Everything still on the wire is received and every answer completes.
    fn finish(&mut self) {
        loop {
            let pending = match &self.tls {
                Some(session) => !session.wire.is_empty(),
                None => !self.wire.is_empty(),
            };
            if self.closed || (self.writing.is_none() && !pending) {
                return;
            }
            let before = (self.buf.len(), self.writing, self.outcome.requests.len());
            if self.writing.is_some() {
                self.write_done();
            } else {
                self.process();
            }
            let after = (self.buf.len(), self.writing, self.outcome.requests.len());
            if before == after && self.writing.is_none() {
                let still = match &self.tls {
                    Some(session) => !session.wire.is_empty(),
                    None => !self.wire.is_empty(),
                };
                assert!(!still, "stalled with bytes on the wire");
                return;
            }
        }
    }
}

/// Everything at once, no clock: what the connection must make of `stream` whatever the
/// splits.
fn at_once(stream: &[u8], limits: &Limits) -> Outcome {
    let now = Instant::now();
    let mut reader = RequestReader::new(now, limits);
    let mut buf = stream.to_vec();
    let mut outcome = Outcome::default();
    loop {
        match reader.handle_input(now, &buf, limits) {
            Step::NeedMore => return outcome,
            Step::Continue(_) => {}
            Step::Request { head, end } => {
                outcome
                    .requests
                    .push((head.method, head.len, head.content_length));
                buf.drain(..end);
                if head.close {
                    return outcome;
                }
                reader.handle_answered(now, buf.len(), limits);
            }
            Step::Refuse(refusal) => {
                outcome.refused = Some(refusal.status);
                return outcome;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // Three bytes of settings: transport and small limits (so limit paths are reached);
    // then operations.
    let [mode, a, b, ops @ ..] = data else { return };
    let limits = Limits {
        header_bytes_max: 32 + usize::from(*a) * 4,
        body_bytes_max: usize::from(*b) * 4,
        header_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(20),
        idle_timeout: Duration::from_secs(60),
    };
    // Mode 0 runs over TLS: a handshake each, about 100 times the cost of a plain input
    // under the fuzzer's instrumentation, so one mode value in 256 (the corpus keeps TLS
    // inputs that reach new code, so they are run more often than that).
    let tls = if *mode == 0 {
        match Session::new() {
            Some(session) => Some(session),
            None => return,
        }
    } else {
        None
    };
    let start = Instant::now();
    let mut conn = Conn {
        limits,
        reader: RequestReader::new(start, &limits),
        buf: Vec::new(),
        wire: Vec::new(),
        tls,
        now: start,
        writing: None,
        continued: false,
        closed: false,
        timed_out: false,
        cut: false,
        outcome: Outcome::default(),
    };
    let mut sent = Vec::new();
    let mut rest = ops;
    while let [op, tail @ ..] = rest {
        rest = tail;
        match op {
            // Client bytes: the next 1..=64 input bytes.
            0..=191 => {
                let len = (usize::from(op & 63) + 1).min(rest.len());
                let (chunk, tail) = rest.split_at(len);
                rest = tail;
                if !conn.closed {
                    conn.deliver(chunk);
                    sent.extend_from_slice(chunk);
                    conn.process();
                }
            }
            // The clock jumps 0–15.5 s (deadlines are 10, 20 and 60 s).
            192..=223 => conn.advance(Duration::from_millis(u64::from(op & 31) * 500)),
            // The write in flight completes.
            _ => conn.write_done(),
        }
    }
    conn.finish();
    if !conn.timed_out && !conn.cut {
        // The status of a refusal may depend on how much arrived (a head both too long
        // and malformed is 431 or 400), not whether there is one.
        let want = at_once(&sent, &limits);
        assert_eq!(
            conn.outcome.requests, want.requests,
            "requests depend on the splits"
        );
        assert_eq!(
            conn.outcome.refused.is_some(),
            want.refused.is_some(),
            "refusal depends on the splits: {:?} vs {:?}",
            conn.outcome.refused,
            want.refused
        );
    }
});
