//! A TLS pipe on a real ring and socket pair against a rustls client: the ClientHello, the
//! handshake, a request's plaintext handed over, a write encrypted and delivered whole, and
//! the `close_notify` of the close.

use super::*;
use crate::uring::{Completion, OpKind};
use rustls::pki_types::ServerName;
use std::io::{ErrorKind, Read, Write as _};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

const KEY: u64 = 7;

/// Submits and reaps until `want` completions came (or a second passed).
fn reap_n(ring: &mut Ring, want: usize) -> Vec<Completion> {
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut out = Vec::new();
    while out.len() < want && Instant::now() < deadline {
        ring.submit_and_wait(Duration::from_millis(10)).unwrap();
        ring.reap(&mut out);
    }
    assert_eq!(out.len(), want, "completions");
    out
}

fn configs() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let der = made.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(made.signing_key.serialize_der().into());
    let server =
        crate::config::tls::server_config((vec![der.clone()], key), &[b"http/1.1"]).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    (server, Arc::new(client))
}

/// The rustls client on the other end of the socket pair (non-blocking).
struct Client {
    tls: rustls::ClientConnection,
    sock: UnixStream,
}

impl Client {
    /// Writes whatever the client has to send.
    fn send(&mut self) {
        while self.tls.wants_write() {
            self.tls.write_tls(&mut self.sock).unwrap();
        }
    }

    /// Reads what the server sent so far, moving its plaintext into `got`; true once the
    /// server's `close_notify` came.
    fn receive(&mut self, got: &mut Vec<u8>) -> bool {
        loop {
            match self.tls.read_tls(&mut self.sock) {
                Ok(0) => break,
                Ok(_) => {
                    self.tls.process_new_packets().unwrap();
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                Err(err) => panic!("client read: {err}"),
            }
        }
        let mut buf = [0u8; 4096];
        loop {
            match self.tls.reader().read(&mut buf) {
                Ok(0) => return true,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(err) if err.kind() == ErrorKind::WouldBlock => return false,
                Err(err) => panic!("client plaintext: {err}"),
            }
        }
    }
}

/// Sends everything the pipe's TLS session has queued (no write in progress), each send
/// completing before the next.
fn flush_all(ring: &mut Ring, pipe: &mut Pipe, pool: &mut Vec<Vec<u8>>) {
    while pipe.flush(ring, KEY, pool) {
        let c = reap_n(ring, 1).pop().unwrap();
        assert_eq!(c.kind, OpKind::Write);
        match pipe.on_write(ring, c, pool) {
            Wrote::Progress { credited: 0 } | Wrote::Idle => {}
            other => panic!("a send with no write behind it: {other:?}"),
        }
    }
}

/// Posts a request receive and completes it.
fn receive(
    ring: &mut Ring,
    pipe: &mut Pipe,
    buf: &mut Vec<u8>,
    config: &Arc<rustls::ServerConfig>,
) -> Received {
    pipe.post_recv(ring, KEY, buf, RecvInto::Request { room: 2048 });
    assert!(pipe.receiving());
    let c = reap_n(ring, 1).pop().unwrap();
    assert_eq!(c.kind, OpKind::Recv);
    pipe.on_recv(c, buf, Some(config))
}

#[test]
fn a_tls_pipe_hands_over_plaintext_writes_whole_and_says_close_notify() {
    let (server_config, client_config) = configs();
    let mut ring = Ring::with_entries(8).unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    theirs.set_nonblocking(true).unwrap();
    let mut client = Client {
        tls: rustls::ClientConnection::new(
            client_config,
            ServerName::try_from("localhost").unwrap(),
        )
        .unwrap(),
        sock: theirs,
    };
    let mut pipe = Pipe::tls(OwnedFd::from(ours));
    let (mut buf, mut pool, mut got) = (Vec::new(), Vec::new(), Vec::new());

    // The ClientHello: read raw (kept for an `h2` hand-off), then the session starts.
    client.send();
    let received = receive(&mut ring, &mut pipe, &mut buf, &server_config);
    assert!(
        matches!(received, Received::Hello(Hello::Http1)),
        "{received:?}"
    );
    assert!(pipe.handshaking());
    assert!(
        buf.is_empty(),
        "an HTTP/1.1 client's hello is not a request"
    );
    flush_all(&mut ring, &mut pipe, &mut pool);
    assert!(!client.receive(&mut got));
    client.send();

    // The client's Finished: established, no plaintext yet.
    let received = receive(&mut ring, &mut pipe, &mut buf, &server_config);
    assert!(
        matches!(
            received,
            Received::Data {
                established: true,
                closed: false
            }
        ),
        "{received:?}"
    );
    assert!(pipe.established() && !pipe.handshaking());
    assert!(buf.is_empty());
    flush_all(&mut ring, &mut pipe, &mut pool);
    assert!(!client.receive(&mut got));
    assert!(!client.tls.is_handshaking());

    // A request: its plaintext is appended to the receive buffer.
    let request = b"GET /rooms/a/events HTTP/1.1\r\nHost: x\r\n\r\n";
    client.tls.writer().write_all(request).unwrap();
    client.send();
    let received = receive(&mut ring, &mut pipe, &mut buf, &server_config);
    assert!(matches!(received, Received::Data { closed: false, .. }));
    assert_eq!(&buf[..], &request[..]);

    // A write of two frames goes out encrypted, credited whole.
    let frames = vec![
        Bytes::from_static(b"HTTP/1.1 200 OK\r\n\r\n"),
        Bytes::from_static(b"data: x\n\n"),
    ];
    let len: usize = frames.iter().map(Bytes::len).sum();
    pipe.start_write(&mut ring, KEY, frames, len, &mut pool)
        .unwrap();
    let mut credited_total = 0;
    loop {
        let c = reap_n(&mut ring, 1).pop().unwrap();
        match pipe.on_write(&mut ring, c, &mut pool) {
            Wrote::Progress { credited } => credited_total += credited,
            Wrote::Done { credited, frames } => {
                credited_total += credited;
                assert_eq!(frames.len(), 2, "the frames come back for the pool");
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(credited_total, len);
    assert!(!pipe.writing());
    assert!(!client.receive(&mut got));
    assert_eq!(&got[..], b"HTTP/1.1 200 OK\r\n\r\ndata: x\n\n");

    // The close says close_notify (a send that does not wait), then closes on the ring.
    assert_eq!(pipe.close(&mut ring, KEY), Closing::Submitted);
    assert_eq!(pipe.raw_fd(), None);
    let done = reap_n(&mut ring, 2);
    for c in done {
        if c.kind == OpKind::Write {
            assert!(matches!(pipe.settle(c), Held::Bytes(_)));
        } else {
            assert_eq!(c.kind, OpKind::Close);
        }
    }
    assert_eq!(ring.in_flight(), 0);
    assert!(client.receive(&mut got), "the client read close_notify");
}

/// A TLS pipe and its client through the handshake (the tickets sent too): established,
/// nothing queued on either side.
fn established(
    ring: &mut Ring,
    pool: &mut Vec<Vec<u8>>,
) -> (Pipe, Client, Arc<rustls::ServerConfig>) {
    let (server_config, client_config) = configs();
    let (ours, theirs) = UnixStream::pair().unwrap();
    theirs.set_nonblocking(true).unwrap();
    let mut client = Client {
        tls: rustls::ClientConnection::new(
            client_config,
            ServerName::try_from("localhost").unwrap(),
        )
        .unwrap(),
        sock: theirs,
    };
    let mut pipe = Pipe::tls(OwnedFd::from(ours));
    let (mut buf, mut got) = (Vec::new(), Vec::new());
    client.send();
    let received = receive(ring, &mut pipe, &mut buf, &server_config);
    assert!(matches!(received, Received::Hello(Hello::Http1)));
    flush_all(ring, &mut pipe, pool);
    client.receive(&mut got);
    client.send();
    let received = receive(ring, &mut pipe, &mut buf, &server_config);
    assert!(matches!(
        received,
        Received::Data {
            established: true,
            ..
        }
    ));
    flush_all(ring, &mut pipe, pool);
    client.receive(&mut got);
    assert!(!client.tls.is_handshaking() && got.is_empty());
    (pipe, client, server_config)
}

/// The S1-over-TLS regression guard (bench-results/i15-tls-2026-12-06): a stream's small
/// write is one send and one completion, nothing more; its plaintext frames are spent as
/// soon as they are encrypted (back to the shard's pool then, while hot, not at the
/// completion); its send buffer goes back to the pool at the completion.
#[test]
fn a_small_tls_write_is_one_send_and_its_frames_are_spent_once_encrypted() {
    let mut ring = Ring::with_entries(8).unwrap();
    let mut pool = Vec::new();
    let (mut pipe, mut client, _config) = established(&mut ring, &mut pool);
    let mut got = Vec::new();
    for round in 0..3 {
        let message = Bytes::from(format!("id: {round}\ndata: x\n\n").into_bytes());
        let frames = vec![message.clone(), Bytes::from_static(b": pad\n\n")];
        let len: usize = frames.iter().map(Bytes::len).sum();
        pipe.start_write(&mut ring, KEY, frames, len, &mut pool)
            .unwrap();
        assert_eq!(ring.in_flight(), 1, "one send per write");
        let spent = pipe.take_spent_frames().expect("encrypted whole at once");
        assert_eq!(spent.len(), 2);
        drop(spent);
        assert!(message.is_unique(), "the pipe keeps no frame of the write");
        assert!(pipe.take_spent_frames().is_none(), "spent once");

        let c = reap_n(&mut ring, 1).pop().unwrap();
        let Wrote::Done { credited, frames } = pipe.on_write(&mut ring, c, &mut pool) else {
            panic!("one send delivers a small write whole")
        };
        assert_eq!(credited, len);
        assert!(frames.is_empty(), "the frames went back at the start");
        assert_eq!(ring.in_flight(), 0, "nothing more is sent");
        assert_eq!(pool.len(), 1, "the send buffer is back in the pool");
        assert!(!pipe.writing());
    }
    ring.submit_and_wait(Duration::from_millis(10)).unwrap();
    let mut late = Vec::new();
    ring.reap(&mut late);
    assert!(late.is_empty(), "no completion beyond one per write");
    assert!(!client.receive(&mut got));
    assert_eq!(
        got,
        b"id: 0\ndata: x\n\n: pad\n\nid: 1\ndata: x\n\n: pad\n\nid: 2\ndata: x\n\n: pad\n\n"
    );
}

/// A write larger than one chunk keeps its frames until rustls has taken the last of them
/// (each chunk is encrypted when the previous send completes).
#[test]
fn a_tls_write_of_several_chunks_keeps_its_frames_until_the_last_chunk() {
    let mut ring = Ring::with_entries(8).unwrap();
    let mut pool = Vec::new();
    let (mut pipe, mut client, _config) = established(&mut ring, &mut pool);
    let frames: Vec<Bytes> = (0..40u8)
        .map(|i| Bytes::from(vec![b'a' + i % 26; 1000]))
        .collect();
    let len: usize = frames.iter().map(Bytes::len).sum();
    let want: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
    pipe.start_write(&mut ring, KEY, frames, len, &mut pool)
        .unwrap();
    assert!(pipe.take_spent_frames().is_none(), "more chunks to encrypt");
    let (mut credited, mut got, mut sends) = (0, Vec::new(), 0);
    loop {
        sends += 1;
        let c = reap_n(&mut ring, 1).pop().unwrap();
        // The client reads as the sends go (the socket pair's buffer is small).
        client.receive(&mut got);
        match pipe.on_write(&mut ring, c, &mut pool) {
            Wrote::Progress { credited: c } => credited += c,
            Wrote::Done {
                credited: c,
                frames,
            } => {
                credited += c;
                assert_eq!(frames.len(), 40, "the frames come back with the last send");
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(sends >= 3, "{sends} sends");
    assert_eq!(credited, len);
    client.receive(&mut got);
    assert!(got == want, "{} bytes of {}", got.len(), want.len());
}

/// Records the session queues while a send is in flight (here the tickets that follow the
/// client's Finished, received while the server's first flight is still being sent) go
/// out after that send: its completion must flush, not end the sending.
#[test]
fn records_queued_while_a_tls_send_is_in_flight_go_after_it() {
    let (server_config, client_config) = configs();
    let mut ring = Ring::with_entries(8).unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    theirs.set_nonblocking(true).unwrap();
    let mut client = Client {
        tls: rustls::ClientConnection::new(
            client_config,
            ServerName::try_from("localhost").unwrap(),
        )
        .unwrap(),
        sock: theirs,
    };
    let mut pipe = Pipe::tls(OwnedFd::from(ours));
    let (mut buf, mut pool, mut got) = (Vec::new(), Vec::new(), Vec::new());
    client.send();
    let received = receive(&mut ring, &mut pipe, &mut buf, &server_config);
    assert!(matches!(received, Received::Hello(Hello::Http1)));
    // The first flight's send completes; its completion is held back.
    assert!(pipe.flush(&mut ring, KEY, &mut pool));
    let flight = reap_n(&mut ring, 1).pop().unwrap();
    assert_eq!(flight.kind, OpKind::Write);
    // Meanwhile the client's Finished is received: the session queues its tickets.
    client.receive(&mut got);
    client.send();
    let received = receive(&mut ring, &mut pipe, &mut buf, &server_config);
    assert!(matches!(
        received,
        Received::Data {
            established: true,
            ..
        }
    ));
    // The flight's completion sends them.
    assert!(
        matches!(
            pipe.on_write(&mut ring, flight, &mut pool),
            Wrote::Progress { credited: 0 }
        ),
        "the queued tickets go next"
    );
    let c = reap_n(&mut ring, 1).pop().unwrap();
    assert!(matches!(
        pipe.on_write(&mut ring, c, &mut pool),
        Wrote::Idle
    ));
    assert!(
        !pipe.flush(&mut ring, KEY, &mut pool),
        "nothing left queued"
    );
    assert_eq!(ring.in_flight(), 0);
    assert!(!client.receive(&mut got));
    assert!(got.is_empty());
}
