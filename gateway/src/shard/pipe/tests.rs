//! Pipes on a real ring and socket pair: receives into the request buffer, whole writes,
//! a close with a receive in flight, a tunnel's receives from the companion, and a write
//! forgotten at the close.

use super::*;
use crate::uring::{Completion, OpKind};
use std::io::{Read, Write as _};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

fn reap_one(ring: &mut Ring) -> Completion {
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut out = Vec::new();
    while out.is_empty() && Instant::now() < deadline {
        ring.submit_and_wait(Duration::from_millis(10)).unwrap();
        ring.reap(&mut out);
    }
    assert_eq!(out.len(), 1, "one completion");
    out.pop().unwrap()
}

#[test]
fn a_plain_pipe_receives_into_the_request_buffer_and_writes_frames_whole() {
    let mut ring = Ring::with_entries(8).unwrap();
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    let mut pipe = Pipe::plain(OwnedFd::from(ours));
    let mut buf = b"GET".to_vec();
    pipe.post_recv(&mut ring, 1, &mut buf, RecvInto::Request { room: 64 });
    assert!(pipe.receiving());
    assert!(buf.is_empty(), "the ring holds the request buffer");
    // A second post while one is in flight is a no-op.
    pipe.post_recv(&mut ring, 1, &mut buf, RecvInto::Request { room: 64 });
    theirs.write_all(b" / HTTP/1.1\r\n").unwrap();
    let c = reap_one(&mut ring);
    let received = pipe.on_recv(c, &mut buf, None);
    assert!(matches!(received, Received::Data { closed: false, .. }));
    assert_eq!(&buf[..], b"GET / HTTP/1.1\r\n");

    // A discard receive says only how much came: the bytes are nobody's (the ring's
    // discard buffer), and the receive buffer is not touched.
    buf.clear();
    pipe.post_recv(&mut ring, 1, &mut buf, RecvInto::Discard);
    theirs.write_all(b"junk").unwrap();
    let c = reap_one(&mut ring);
    let received = pipe.on_recv(c, &mut buf, None);
    assert!(matches!(received, Received::Discarded { len: 4 }));
    assert!(buf.is_empty());

    let frames = vec![
        Bytes::from_static(b"HTTP/1.1 200 OK\r\n"),
        Bytes::from_static(b"\r\n"),
    ];
    let len = frames.iter().map(Bytes::len).sum();
    let mut pool = Vec::new();
    pipe.start_write(&mut ring, 1, frames, len, &mut pool)
        .unwrap();
    assert!(pipe.writing());
    let c = reap_one(&mut ring);
    let Wrote::Done { credited, frames } = pipe.on_write(&mut ring, c, &mut pool) else {
        panic!("written whole")
    };
    assert_eq!((credited, frames.len()), (len, 2));
    assert!(!pipe.writing());
    let mut got = vec![0u8; len];
    theirs.read_exact(&mut got).unwrap();
    assert_eq!(&got[..], b"HTTP/1.1 200 OK\r\n\r\n");
}

#[test]
fn a_pipe_closed_with_a_receive_in_flight_closes_at_once_and_the_receive_settles() {
    let mut ring = Ring::with_entries(8).unwrap();
    let (ours, _theirs) = UnixStream::pair().unwrap();
    let mut pipe = Pipe::plain(OwnedFd::from(ours));
    let mut buf = Vec::new();
    pipe.post_recv(&mut ring, 1, &mut buf, RecvInto::Request { room: 64 });
    assert_eq!(pipe.close(&mut ring, 1), Closing::Submitted);
    assert_eq!(pipe.raw_fd(), None, "the socket is the ring's close's");
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut out = Vec::new();
    while out.len() < 2 && Instant::now() < deadline {
        ring.submit_and_wait(Duration::from_millis(10)).unwrap();
        ring.reap(&mut out);
    }
    assert_eq!(
        out.len(),
        2,
        "the receive (shut down) and the close complete"
    );
    let recv = out.into_iter().find(|c| c.kind == OpKind::Recv).unwrap();
    assert_eq!(recv.result, 0);
    assert!(matches!(pipe.settle(recv), Held::Recv(_)));
    assert!(!pipe.receiving());
    assert_eq!(ring.in_flight(), 0);
}

/// A tunnel's receive: posted once (no ring op), answered by the companion, its bytes
/// appended to the receive buffer; the client's end is the receive's end.
#[test]
fn a_tunnel_receives_what_the_companion_read_one_receive_at_a_time() {
    use crate::mesh::virtual_conn::Inbound;
    let mut ring = Ring::with_entries(8).unwrap();
    let sink = Arc::new(VirtualSink::tunnel(None));
    let mut pipe = Pipe::virtual_conn(sink.clone());
    assert!(pipe.is_tunnel());
    let mut buf = b"ab".to_vec();
    pipe.post_recv(&mut ring, 1, &mut buf, RecvInto::Request { room: 3 });
    assert!(pipe.receiving());
    assert_eq!(ring.in_flight(), 0, "no ring op for a tunnel");
    assert_eq!(&buf[..], b"ab", "the buffer stays with the connection");
    assert!(pipe.on_virtual_recv(&mut buf).is_none(), "not answered yet");
    sink.deliver(Inbound::Data(b"cde".to_vec()));
    let received = pipe.on_virtual_recv(&mut buf).unwrap();
    assert!(matches!(received, Received::Data { closed: false, .. }));
    assert_eq!(&buf[..], b"abcde");
    assert!(!pipe.receiving());
    // A discard receive asks nothing of a tunnel.
    pipe.post_recv(&mut ring, 1, &mut buf, RecvInto::Discard);
    assert!(!pipe.receiving());
    pipe.post_recv(&mut ring, 1, &mut buf, RecvInto::Request { room: 8 });
    sink.deliver(Inbound::End);
    assert!(matches!(
        pipe.on_virtual_recv(&mut buf),
        Some(Received::Closed)
    ));
    // A virtual connection that is no tunnel never receives.
    let mut plain = Pipe::virtual_conn(Arc::new(VirtualSink::new(None)));
    plain.post_recv(&mut ring, 2, &mut buf, RecvInto::Request { room: 8 });
    assert!(!plain.receiving());
    assert!(!plain.is_tunnel());
}

#[test]
fn a_write_forgotten_at_the_close_gives_back_what_was_not_delivered() {
    let mut ring = Ring::with_entries(8).unwrap();
    let sink = Arc::new(VirtualSink::new(None));
    let mut pipe = Pipe::virtual_conn(sink.clone());
    let mut pool = Vec::new();
    let frames = vec![Bytes::from_static(b"data: x\n\n")];
    pipe.start_write(&mut ring, 1, frames, 9, &mut pool)
        .unwrap();
    assert!(pipe.writing());
    let (remaining, _) = pipe.forget_write().unwrap();
    assert_eq!(remaining, 9);
    assert_eq!(pipe.close(&mut ring, 1), Closing::Done);
    assert!(sink.is_closed());
    assert_eq!(ring.in_flight(), 0, "a virtual pipe uses no ring op");
}

/// An idle receive of a plain pipe holds no buffer: the connection's receive buffer is let
/// go, and the bytes come in a buffer the ring's pool lends; where the ring has no pool,
/// the receive buffer is used as for a request.
#[test]
fn a_pooled_receive_holds_no_buffer_and_lends_the_pools() {
    let mut ring = Ring::with_pool(8, 2).unwrap();
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    let mut pipe = Pipe::plain(OwnedFd::from(ours));
    let mut buf = Vec::with_capacity(128);
    pipe.post_recv(&mut ring, 1, &mut buf, RecvInto::Pooled { room: 128 });
    assert!(pipe.receiving());
    assert_eq!(buf.capacity(), 0, "nothing held while the receive waits");
    theirs.write_all(b"ping").unwrap();
    let c = reap_one(&mut ring);
    let Received::Pooled(lease) = pipe.on_recv(c, &mut buf, None) else {
        panic!("the bytes are in a pool buffer")
    };
    assert_eq!(ring.provided(&lease), b"ping");
    ring.give_back(lease);
    assert_eq!(buf.capacity(), 0);
    assert!(!pipe.receiving());

    let mut ring = Ring::with_pool(8, 0).unwrap();
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    let mut pipe = Pipe::plain(OwnedFd::from(ours));
    pipe.post_recv(&mut ring, 1, &mut buf, RecvInto::Pooled { room: 16 });
    theirs.write_all(b"pong").unwrap();
    let c = reap_one(&mut ring);
    let received = pipe.on_recv(c, &mut buf, None);
    assert!(matches!(received, Received::Data { closed: false, .. }));
    assert_eq!(&buf[..], b"pong");
}
