//! A whole HTTP/1.1 connection, driven as the shard drives a socket's: the sans-IO
//! connection machine (`gateway::conn::http1::Connection`) with a small application behind
//! it and, on TLS connections, the ring's TLS session (`gateway::conn::tls`) with a rustls
//! client on the other end. Arbitrary client bytes arrive in arbitrary splits; the clock
//! jumps and timers fire at arbitrary times (early ones too, as a timer wheel may); writes
//! complete at arbitrary points; the application answers at once, later, streams, refuses;
//! the client closes; the shard drains; the driver closes.
//!
//! Invariants: no panic; the buffer never holds more than one request at its limits plus
//! one receive (and nothing, without capacity, between requests); no event and no write
//! after the close; one write at a time; every state that reads or answers has a deadline,
//! no deadline further than the longest timeout, a deadline that passed always ends its
//! state, and trickling never pushes a deadline back; one answer per request (a
//! `100 Continue` only for a head that asked, whose body is not in, at most once); a request
//! handed out is whole, its route answers its method and takes its body; and — with no
//! deadline passed and nothing but bytes and completions — the requests and the refusal
//! are the same whatever the splits, as if everything had arrived at once.
#![no_main]

use gateway::conn::http1::{Connection, Event, Limits, Read, State, LINGER, RECEIVE_BYTES_MAX};
use gateway::conn::tls::{Hello, TlsConn, RECV_BYTES};
use gateway::http::h1::{self as http1, Method, Route};
use libfuzzer_sys::fuzz_target;
use std::io::{Read as _, Write};
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

/// What a connection made of its input.
#[derive(Debug, Default, PartialEq, Eq)]
struct Outcome {
    /// Each request handed out: method, head length, body length.
    requests: Vec<(Method, usize, usize)>,
    /// A refusal status, if the machine refused (compared as present or not).
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
        let mut recv = self.server.take_recv_buffer();
        recv.extend_from_slice(&self.wire[..len]);
        self.wire.drain(..len);
        match self.server.receive(recv, plain) {
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

/// The longest any deadline may lie ahead.
const DEADLINE_AHEAD_MAX: Duration = Duration::from_secs(60);

/// The shard's side of one connection: the machine, the transport and a small application.
struct Conn {
    machine: Connection,
    limits: Limits,
    /// Plain connections: client bytes not yet received (the kernel's socket buffer).
    wire: Vec<u8>,
    tls: Option<Session>,
    now: Instant,
    /// The write in flight (taken from the machine).
    in_flight: Option<bytes::Bytes>,
    /// The application holds the request handed out (answers on a later operation).
    held: bool,
    /// The request being read asked for `100 Continue` and got it.
    continued: bool,
    /// The machine said close, or the driver closed.
    closed: bool,
    /// Something other than bytes and completions happened (a deadline, an EOF, a drain,
    /// the application refusing or closing, TLS ending): the outcome may differ from
    /// everything at once.
    perturbed: bool,
    /// (state, requests handed out, deadline) at the last look: a deadline never moves
    /// later within one state of one request.
    last: (State, usize, Option<Instant>),
    outcome: Outcome,
}

impl Conn {
    fn buffer_bound(&self) -> usize {
        self.limits.buffer_bytes_max() + RECEIVE_BYTES_MAX
    }

    fn check(&mut self) {
        let machine = &self.machine;
        assert!(
            machine.buffered() <= self.buffer_bound(),
            "buffer {}",
            machine.buffered()
        );
        let deadline = machine.poll_timeout();
        if let Some(at) = deadline {
            assert!(at <= self.now + DEADLINE_AHEAD_MAX, "deadline too far");
        }
        match machine.state() {
            State::Idle => {
                assert_eq!(
                    machine.buffer_capacity(),
                    0,
                    "an idle connection holds a buffer"
                );
                assert!(deadline.is_some());
            }
            State::Head | State::Body | State::Answering | State::Refusing | State::Lingering => {
                assert!(
                    deadline.is_some(),
                    "{:?} without a deadline",
                    machine.state()
                )
            }
            State::Streaming => assert_eq!(deadline, None),
            State::Closed => {
                assert_eq!(deadline, None);
                assert!(!machine.writing());
                assert_eq!(machine.read(), Read::Pause);
                assert!(
                    self.closed,
                    "closed without a Close event or a driver close"
                );
            }
        }
        let now = (machine.state(), self.outcome.requests.len(), deadline);
        let (state, requests, before) = self.last;
        if state == now.0 && requests == now.1 {
            if let (Some(before), Some(after)) = (before, now.2) {
                assert!(after <= before, "{state:?}: deadline moved later");
            }
        }
        self.last = now;
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

    /// Hands out what the machine has: events, then a write.
    fn drive(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(event) = self.machine.poll_event(self.now) {
                progressed = true;
                self.on_event(event);
            }
            // Every notice is out: the state is one the application has been told of.
            self.check();
            if self.in_flight.is_none() {
                if let Some(bytes) = self.machine.poll_transmit() {
                    assert!(!self.closed, "a write after the close");
                    assert!(bytes.starts_with(b"HTTP/1.1 "));
                    if let Some(session) = &mut self.tls {
                        session.to_client(std::slice::from_ref(&bytes));
                    }
                    self.in_flight = Some(bytes);
                    progressed = true;
                }
            }
            if !progressed {
                return;
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        assert!(!self.closed, "an event after the close: {event:?}");
        match event {
            Event::Request(request) => {
                let head = &request.head;
                assert_eq!(self.machine.state(), State::Answering);
                assert_eq!(request.bytes.len(), head.len + head.content_length);
                assert!(head.len <= self.limits.header_bytes_max);
                assert!(head.content_length <= self.limits.body_bytes_max);
                assert!(head.route.allows(head.method), "{head:?}");
                assert!(head.content_length == 0 || head.route.takes_body());
                self.outcome
                    .requests
                    .push((head.method, head.len, head.content_length));
                self.continued = false;
                if matches!(head.route, Route::Events(_)) && head.method == Method::Get {
                    self.machine.stream();
                    assert_eq!(self.machine.buffer_capacity(), 0);
                } else if head.route == Route::Publish {
                    // Answered later (as a batch waits for other shards).
                    self.held = true;
                } else {
                    self.answer();
                }
            }
            Event::Continue(head) => {
                assert!(head.expect_continue);
                assert!(!self.continued, "a second 100 Continue");
                assert_eq!(self.machine.state(), State::Body);
                assert!(self.machine.buffered() < head.len + head.content_length);
                self.continued = true;
                self.machine.accept_continue();
            }
            Event::Refused { refusal, .. } => {
                assert!((400..500).contains(&refusal.status), "{refusal:?}");
                assert_eq!(self.machine.state(), State::Refusing);
                assert_eq!(self.machine.buffer_capacity(), 0);
                self.outcome.refused.get_or_insert(refusal.status);
            }
            Event::Linger => {
                assert_eq!(self.machine.state(), State::Lingering);
                assert_eq!(self.machine.poll_timeout(), Some(self.now + LINGER));
            }
            Event::Close(_) => {
                assert_eq!(self.machine.state(), State::Closed);
                self.closed = true;
                self.in_flight = None;
            }
        }
    }

    /// The application answers the request it holds (or the one handed out).
    fn answer(&mut self) {
        self.held = false;
        let close = !self.machine.keep_alive();
        self.machine
            .respond(http1::response(200, "text/plain", "", b"ok\n", close));
    }

    /// The write in flight completed.
    fn write_done(&mut self) {
        if self.in_flight.take().is_some() {
            self.machine.on_written(self.now);
        }
        self.drive();
    }

    /// One receive, as the shard posts it: at most what the machine takes; false when
    /// nothing is waiting (or TLS ended).
    fn receive(&mut self) -> bool {
        let bytes_max = match self.machine.read() {
            Read::Pause => return false,
            Read::Discard => RECV_MAX,
            Read::Request { bytes_max } => {
                assert!(bytes_max > 0);
                bytes_max
            }
        };
        match &mut self.tls {
            Some(session) => {
                if session.wire.is_empty() {
                    return false;
                }
                let mut plain = Vec::new();
                let open = session.receive(RECV_BYTES, &mut plain);
                assert!(plain.len() <= RECEIVE_BYTES_MAX);
                self.machine.handle_received(self.now, &plain);
                if !open {
                    self.perturbed = true;
                    self.machine.handle_eof();
                }
            }
            None => {
                if self.wire.is_empty() {
                    return false;
                }
                let len = bytes_max.min(RECV_MAX).min(self.wire.len());
                let chunk: Vec<u8> = self.wire.drain(..len).collect();
                self.machine.handle_received(self.now, &chunk);
            }
        }
        self.drive();
        true
    }

    /// Receives what is waiting and answers as the machine goes.
    fn pump(&mut self) {
        while !self.closed && self.receive() {}
    }

    /// The clock moves on and the timer fires (early or late).
    fn advance(&mut self, by: Duration) {
        self.now += by;
        if self.machine.poll_timeout().is_some_and(|at| at <= self.now) {
            self.perturbed = true;
        }
        self.machine.handle_timeout(self.now);
        if let Some(at) = self.machine.poll_timeout() {
            assert!(at > self.now, "a deadline that passed left its state");
        }
        self.drive();
    }

    /// Everything still on the wire is received, held requests answered, and every write
    /// completes.
    fn finish(&mut self) {
        for _ in 0..100_000 {
            if self.closed {
                return;
            }
            if self.in_flight.is_some() {
                self.write_done();
            } else if self.held && self.machine.awaits_answer() {
                self.answer();
                self.drive();
            } else if !self.receive() {
                return;
            }
        }
        panic!("no end");
    }
}

/// Everything at once, no clock, every write completing: what the connection must make of
/// `stream` whatever the splits.
fn at_once(stream: &[u8], limits: &Limits) -> Outcome {
    let now = Instant::now();
    let mut conn = Conn::new(now, *limits, None);
    conn.deliver(stream);
    conn.pump();
    conn.finish();
    conn.outcome
}

impl Conn {
    fn new(now: Instant, limits: Limits, tls: Option<Session>) -> Self {
        let machine = Connection::new(now, limits);
        let last = (machine.state(), 0, machine.poll_timeout());
        Conn {
            machine,
            limits,
            wire: Vec::new(),
            tls,
            now,
            in_flight: None,
            held: false,
            continued: false,
            closed: false,
            perturbed: false,
            last,
            outcome: Outcome::default(),
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
    let mut conn = Conn::new(Instant::now(), limits, tls);
    let mut sent = Vec::new();
    let mut rest = ops;
    while let [op, tail @ ..] = rest {
        rest = tail;
        match op {
            // Client bytes: the next 1..=32 input bytes, then what the machine takes.
            0..=159 => {
                let len = (usize::from(op & 31) + 1).min(rest.len());
                let (chunk, tail) = rest.split_at(len);
                rest = tail;
                if !conn.closed {
                    conn.deliver(chunk);
                    sent.extend_from_slice(chunk);
                    conn.pump();
                }
            }
            // The clock jumps 0–15.5 s (deadlines are 2, 10, 20 and 60 s) and the timer
            // fires, passed or not.
            160..=191 => conn.advance(Duration::from_millis(u64::from(op & 31) * 500)),
            // The write in flight completes, then what is waiting is received.
            192..=231 => {
                conn.write_done();
                conn.pump();
            }
            // The application answers a request it holds.
            232..=239 => {
                if conn.held && conn.machine.awaits_answer() {
                    conn.answer();
                    conn.drive();
                }
            }
            // The client closes.
            240..=243 => {
                conn.perturbed = true;
                conn.machine.handle_eof();
                conn.drive();
            }
            // The shard drains.
            244..=247 => {
                conn.perturbed = true;
                conn.machine.handle_drain(conn.now, Duration::from_secs(1));
                conn.drive();
            }
            // The application refuses what it holds (or the connection at accept).
            248..=251 => {
                conn.perturbed = true;
                let refusal = http1::Refusal {
                    status: 503,
                    reason: "busy".into(),
                    extra: "Retry-After: 1\r\n",
                };
                conn.machine
                    .refuse(conn.now, http1::refusal(&refusal, true));
                conn.drive();
            }
            // The driver closes (a write failed, the fan-out cut the stream).
            _ => {
                conn.perturbed = true;
                conn.machine.close();
                conn.closed = true;
                conn.in_flight = None;
                conn.drive();
                assert_eq!(conn.machine.poll_transmit(), None);
                assert_eq!(conn.machine.poll_event(conn.now), None);
            }
        }
    }
    conn.finish();
    if !conn.perturbed {
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
