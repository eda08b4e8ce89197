//! Tests of the ring on a real io_uring: ids, buffers given back, parking, drop.

use super::*;
use crate::uring::sys::{self, Shutdown};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

/// Submits and reaps until `want` completions came (or a second passed).
fn reap_n(ring: &mut Ring, want: usize) -> Vec<Completion> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(1);
    while out.len() < want && Instant::now() < deadline {
        ring.submit_and_wait(Duration::from_millis(10)).unwrap();
        ring.reap(&mut out);
    }
    out
}

#[test]
fn op_ids_round_trip_through_user_data() {
    for index in [0, 1, 77, u32::MAX] {
        for generation in [1, 2, u32::MAX] {
            let id = OpId::new(index, generation);
            assert_eq!((id.index(), id.generation()), (index, generation));
        }
    }
}

#[test]
fn a_receive_gives_its_buffer_back_grown_by_the_bytes_received() {
    let mut ring = Ring::with_entries(8).unwrap();
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    theirs.write_all(b"hello").unwrap();
    let mut buf = Vec::with_capacity(64);
    buf.extend_from_slice(b">");
    let id = ring.recv(7, ours.as_raw_fd(), buf, 16);
    assert_eq!(ring.in_flight(), 1);
    let done = reap_n(&mut ring, 1);
    assert_eq!(done.len(), 1);
    let c = &done[0];
    assert_eq!((c.op, c.kind, c.key, c.result), (id, OpKind::Recv, 7, 5));
    let Held::Recv(buf) = &c.held else {
        panic!("a receive gives its buffer back: {:?}", c.held)
    };
    assert_eq!(&buf[..], b">hello");
    assert_eq!(ring.in_flight(), 0);
}

#[test]
fn a_writev_sends_from_skip_and_gives_its_frames_back() {
    let mut ring = Ring::with_entries(8).unwrap();
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    let frames = vec![Bytes::from_static(b"ab"), Bytes::from_static(b"cd")];
    ring.writev(3, ours.as_raw_fd(), frames, 1);
    let done = reap_n(&mut ring, 1);
    assert_eq!(
        (done[0].kind, done[0].key, done[0].result),
        (OpKind::Write, 3, 3)
    );
    let Held::Frames(frames) = &done[0].held else {
        panic!("a writev gives its frames back")
    };
    assert_eq!(frames.len(), 2);
    let mut got = [0u8; 3];
    theirs.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"bcd");
    // The iovec array went back to the pool: the next write allocates none.
    assert_eq!(ring.iov_pool.len(), 1);
}

#[test]
fn a_writev_of_more_than_iov_max_frames_goes_short() {
    let mut ring = Ring::with_entries(8).unwrap();
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    let frames = vec![Bytes::from_static(b"x"); IOV_MAX + 5];
    ring.writev(0, ours.as_raw_fd(), frames, 0);
    let done = reap_n(&mut ring, 1);
    assert_eq!(
        done[0].result, IOV_MAX as i32,
        "one iovec per frame, IOV_MAX at most"
    );
    let mut got = vec![0u8; IOV_MAX];
    theirs.read_exact(&mut got).unwrap();
}

#[test]
fn a_send_gives_its_bytes_back_and_sends_from_the_offset() {
    let mut ring = Ring::with_entries(8).unwrap();
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    ring.send(1, ours.as_raw_fd(), b"xyz".to_vec(), 2, true);
    let done = reap_n(&mut ring, 1);
    assert_eq!(done[0].result, 1);
    assert!(matches!(&done[0].held, Held::Bytes(b) if b == b"xyz"));
    let mut got = [0u8; 1];
    theirs.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"z");
}

#[test]
fn an_op_outlives_its_connection_and_still_returns_its_buffer() {
    let mut ring = Ring::with_entries(8).unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let fd = ours.as_raw_fd();
    ring.recv(9, fd, b"kept".to_vec(), 32);
    ring.submit_and_wait(Duration::ZERO).unwrap();
    // The connection goes away: shut down, closed on the ring, the peer gone. Nothing
    // of the caller's refers to the buffer any more.
    sys::shutdown(fd, Shutdown::Both);
    ring.close(10, OwnedFd::from(ours));
    drop(theirs);
    let mut done = reap_n(&mut ring, 2);
    done.sort_by_key(|c| c.key);
    assert_eq!((done[0].kind, done[0].result), (OpKind::Recv, 0));
    assert!(matches!(&done[0].held, Held::Recv(b) if b == b"kept"));
    assert_eq!((done[1].kind, done[1].result), (OpKind::Close, 0));
    assert_eq!(ring.in_flight(), 0);
}

#[test]
fn a_full_submission_queue_parks_entries_in_order_and_loses_none() {
    let mut ring = Ring::with_entries(2).unwrap();
    let event = sys::eventfd().unwrap();
    // The kernel refuses the next submits (as with a full completion queue): what does
    // not fit waits in the FIFO instead of spinning.
    ring.refuse_submits = 2;
    let ids: Vec<OpId> = (0..6)
        .map(|key| ring.write_eventfd(key, event.as_raw_fd()))
        .collect();
    assert!(ring.parked() > 0, "entries past the queue are parked");
    assert!(ring.stats().sq_full_total > 0);
    assert_eq!(ring.in_flight(), 6);
    let done = reap_n(&mut ring, 6);
    assert_eq!(ring.parked(), 0);
    let keys: Vec<u64> = done.iter().map(|c| c.key).collect();
    assert_eq!(
        keys,
        (0..6).collect::<Vec<_>>(),
        "in submission order, none lost"
    );
    assert!(done.iter().all(|c| c.result == 8));
    assert_eq!(done.iter().map(|c| c.op).collect::<Vec<_>>(), ids);
    let mut word = [0u8; 8];
    std::fs::File::from(event).read_exact(&mut word).unwrap();
    assert_eq!(u64::from_ne_bytes(word), 6);
}

#[test]
fn many_more_ops_than_entries_all_complete() {
    let mut ring = Ring::with_entries(2).unwrap();
    let event = sys::eventfd().unwrap();
    for key in 0..100 {
        ring.write_eventfd(key, event.as_raw_fd());
    }
    let done = reap_n(&mut ring, 100);
    assert_eq!(done.len(), 100);
    assert_eq!(ring.in_flight(), 0);
}

#[test]
fn an_eventfd_read_gives_its_word_back() {
    let mut ring = Ring::with_entries(4).unwrap();
    let event = sys::eventfd().unwrap();
    ring.read_eventfd(0, event.as_raw_fd(), Box::new(0));
    ring.write_eventfd(1, event.as_raw_fd());
    let done = reap_n(&mut ring, 2);
    let read = done.iter().find(|c| c.kind == OpKind::WakeRead).unwrap();
    assert!(matches!(read.held, Held::Word(ref w) if **w == 1));
}

#[test]
fn an_accept_hands_over_the_socket() {
    let mut ring = Ring::with_entries(4).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let id = ring.accept(1, listener.as_raw_fd());
    ring.submit_and_wait(Duration::ZERO).unwrap();
    let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let done = reap_n(&mut ring, 1);
    let Held::Accepted(fd) = &done[0].held else {
        panic!("an accept owns its socket: {:?}", done[0])
    };
    assert_eq!(
        sys::peer_addr(fd.as_raw_fd()),
        Some(client.local_addr().unwrap())
    );
    if done[0].more {
        ring.cancel(2, id);
        reap_n(&mut ring, 2);
    }
}

#[test]
fn a_ring_dropped_with_ops_in_flight_cancels_them() {
    let mut ring = Ring::with_entries(4).unwrap();
    let (ours, _theirs) = UnixStream::pair().unwrap();
    ring.recv(0, ours.as_raw_fd(), Vec::new(), 16);
    ring.recv_discard(1, ours.as_raw_fd());
    ring.submit_and_wait(Duration::ZERO).unwrap();
    let started = Instant::now();
    drop(ring);
    assert!(started.elapsed() < DROP_WAIT, "the cancels completed");
}

#[test]
#[should_panic(expected = "already ended")]
fn a_completion_for_an_ended_op_is_caught() {
    let mut ring = Ring::with_entries(4).unwrap();
    let event = sys::eventfd().unwrap();
    let id = ring.write_eventfd(0, event.as_raw_fd());
    reap_n(&mut ring, 1);
    let _ = ring.complete(id, 8, false);
}

/// A turn that does not wait (`Duration::ZERO`) still runs the task work deferred to this
/// thread: data that arrived for a receive already waiting in the kernel is reaped at once,
/// not at the next turn that sleeps.
#[test]
fn a_turn_that_does_not_wait_still_runs_deferred_task_work() {
    let mut ring = Ring::with_entries(8).unwrap();
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    let id = ring.recv(9, ours.as_raw_fd(), Vec::with_capacity(64), 16);
    // Submitted with no data: the receive waits in the kernel for the socket.
    ring.submit_and_wait(Duration::ZERO).unwrap();
    let mut out = Vec::new();
    ring.reap(&mut out);
    assert!(out.is_empty(), "no data yet: {out:?}");
    // The data arrives: the kernel queues the receive as task work for this thread.
    theirs.write_all(b"late").unwrap();
    ring.submit_and_wait(Duration::ZERO).unwrap();
    ring.reap(&mut out);
    assert_eq!(
        out.len(),
        1,
        "the receive completed without a waiting enter"
    );
    assert_eq!((out[0].op, out[0].result), (id, 4));
}
