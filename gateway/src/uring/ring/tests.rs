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
    assert_eq!(ring.iovs_free.len(), 1);
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
    let _ = ring.complete(id, 8, 0);
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

/// Submits and reaps until a completion comes (or a second passed); the completion's lease,
/// if any, is good until the next wait.
fn reap_one(ring: &mut Ring) -> Completion {
    let mut done = reap_n(ring, 1);
    assert_eq!(done.len(), 1, "one completion: {done:?}");
    done.pop().unwrap()
}

/// A provided receive's bytes, read from its lease (given back at once) or from the owned
/// buffer it fell back to.
fn bytes_of(ring: &mut Ring, c: Completion) -> Vec<u8> {
    match c.held {
        Held::Provided(lease) => {
            assert_eq!(lease.len(), c.result as usize);
            let bytes = ring.provided(&lease).to_vec();
            ring.give_back(lease);
            bytes
        }
        Held::Recv(buf) => buf,
        held => panic!("a receive's bytes: {held:?} ({})", c.result),
    }
}

fn lent(ring: &Ring) -> usize {
    ring.pool.as_ref().expect("a pool").lent_len()
}

#[test]
fn a_provided_receive_lends_a_pool_buffer_holding_the_bytes() {
    let mut ring = Ring::with_pool(8, 4).unwrap();
    assert!(ring.provides_buffers(), "kernel 5.19+ takes a buffer ring");
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    let id = ring.recv_provided(5, ours.as_raw_fd());
    // Waiting for data, the op holds no buffer: nothing is lent, nothing owned.
    ring.submit_and_wait(Duration::ZERO).unwrap();
    assert!(matches!(
        ring.slots[id.index() as usize].memory,
        Memory::Provided { .. }
    ));
    assert_eq!(lent(&ring), 0);
    theirs.write_all(b"hello").unwrap();
    let c = reap_one(&mut ring);
    assert_eq!((c.op, c.kind, c.key, c.result), (id, OpKind::Recv, 5, 5));
    let Held::Provided(lease) = c.held else {
        panic!("a pool buffer is lent: {:?}", c.held)
    };
    assert_eq!(ring.provided(&lease), b"hello");
    assert_eq!(lent(&ring), 1);
    ring.give_back(lease);
    assert_eq!(lent(&ring), 0);
    assert_eq!(ring.in_flight(), 0);
}

#[test]
fn thousands_of_provided_receives_cycle_through_a_pool_of_four() {
    let mut ring = Ring::with_pool(64, 4).unwrap();
    let pairs: Vec<(UnixStream, UnixStream)> =
        (0..8).map(|_| UnixStream::pair().unwrap()).collect();
    for round in 0..500u32 {
        // Eight sockets, four buffers: at most four receives have data at a time here
        // (the others wait for the next round), so every one is lent a pool buffer.
        for (index, (ours, theirs)) in pairs.iter().enumerate().take(4) {
            let mut theirs = theirs;
            theirs
                .write_all(format!("{round}:{index}").as_bytes())
                .unwrap();
            ring.recv_provided(index as u64, ours.as_raw_fd());
        }
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(1);
        while got.len() < 4 && Instant::now() < deadline {
            ring.submit_and_wait(Duration::from_millis(10)).unwrap();
            let mut out = Vec::new();
            ring.reap(&mut out);
            for c in out {
                assert!(matches!(c.held, Held::Provided(_)), "round {round}: {c:?}");
                let key = c.key;
                got.push((key, bytes_of(&mut ring, c)));
            }
        }
        got.sort();
        let want: Vec<(u64, Vec<u8>)> = (0..4)
            .map(|index| (index, format!("{round}:{index}").into_bytes()))
            .collect();
        assert_eq!(got, want, "round {round}");
    }
    assert_eq!(ring.stats().pool_exhausted_total, 0);
    assert_eq!(lent(&ring), 0);
    assert_eq!(ring.in_flight(), 0);
}

#[test]
fn receives_past_the_pool_fall_back_to_owned_buffers_and_lose_nothing() {
    receives_past_the_pool(64);
    // A submission queue of two: the receives posted again wait in the FIFO, in order.
    receives_past_the_pool(2);
}

fn receives_past_the_pool(entries: u32) {
    let mut ring = Ring::with_pool(entries, 2).unwrap();
    let pairs: Vec<(UnixStream, UnixStream)> =
        (0..8).map(|_| UnixStream::pair().unwrap()).collect();
    let mut ids = Vec::new();
    for (index, (ours, theirs)) in pairs.iter().enumerate() {
        let mut theirs = theirs;
        theirs
            .write_all(format!("data {index}").as_bytes())
            .unwrap();
        ids.push(ring.recv_provided(index as u64, ours.as_raw_fd()));
    }
    // All eight have data when submitted: two take the pool's buffers, six find none
    // (`-ENOBUFS`, not a byte read) and go on into owned buffers, under the same ids.
    let mut got = Vec::new();
    let mut provided = 0;
    let deadline = Instant::now() + Duration::from_secs(2);
    while got.len() < 8 && Instant::now() < deadline {
        ring.submit_and_wait(Duration::from_millis(10)).unwrap();
        let mut out = Vec::new();
        ring.reap(&mut out);
        for c in out {
            assert!(c.result > 0, "never -ENOBUFS: {c:?}");
            assert_eq!(c.op, ids[c.key as usize], "the same op completes");
            provided += usize::from(matches!(c.held, Held::Provided(_)));
            let key = c.key;
            got.push((key, bytes_of(&mut ring, c)));
        }
    }
    got.sort();
    let want: Vec<(u64, Vec<u8>)> = (0..8)
        .map(|index| (index, format!("data {index}").into_bytes()))
        .collect();
    assert_eq!(got, want, "every byte, once");
    assert_eq!(provided, 2, "the pool's two buffers");
    assert_eq!(ring.stats().pool_exhausted_total, 6);
    assert_eq!((lent(&ring), ring.in_flight()), (0, 0));
    // The pool is whole again: the next receives take its buffers.
    let (ours, theirs) = &pairs[0];
    let mut theirs = theirs;
    theirs.write_all(b"again").unwrap();
    ring.recv_provided(0, ours.as_raw_fd());
    let c = reap_one(&mut ring);
    assert!(matches!(c.held, Held::Provided(_)));
    assert_eq!(bytes_of(&mut ring, c), b"again");
}

#[test]
fn a_message_larger_than_a_pool_buffer_comes_whole_over_several_receives() {
    let mut ring = Ring::with_pool(8, 2).unwrap();
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    let message: Vec<u8> = (0..3 * POOL_BUFFER_BYTES + 7).map(|i| i as u8).collect();
    theirs.write_all(&message).unwrap();
    let mut got = Vec::new();
    while got.len() < message.len() {
        ring.recv_provided(0, ours.as_raw_fd());
        let c = reap_one(&mut ring);
        assert!(c.result as usize <= POOL_BUFFER_BYTES);
        got.extend(bytes_of(&mut ring, c));
    }
    assert_eq!(got, message);
}

#[test]
fn a_lease_not_handed_back_is_taken_back_at_the_next_wait() {
    let mut ring = Ring::with_pool(8, 1).unwrap();
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    theirs.write_all(b"one").unwrap();
    ring.recv_provided(0, ours.as_raw_fd());
    let c = reap_one(&mut ring);
    assert!(matches!(c.held, Held::Provided(_)));
    drop(c); // forgotten
    assert_eq!(lent(&ring), 1);
    ring.submit_and_wait(Duration::ZERO).unwrap();
    assert_eq!(lent(&ring), 0, "taken back at the wait");
    // The pool's one buffer serves the next receive.
    theirs.write_all(b"two").unwrap();
    ring.recv_provided(0, ours.as_raw_fd());
    let c = reap_one(&mut ring);
    assert!(matches!(c.held, Held::Provided(_)));
    assert_eq!(bytes_of(&mut ring, c), b"two");
}

#[test]
#[should_panic(expected = "held past a wait")]
fn a_lease_read_after_the_ring_took_it_back_is_caught() {
    let mut ring = Ring::with_pool(8, 1).unwrap();
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    theirs.write_all(b"one").unwrap();
    ring.recv_provided(0, ours.as_raw_fd());
    let c = reap_one(&mut ring);
    let Held::Provided(lease) = c.held else {
        panic!("lent")
    };
    ring.submit_and_wait(Duration::ZERO).unwrap();
    let _ = ring.provided(&lease);
}

#[test]
fn a_provided_receive_cancelled_or_shut_down_keeps_no_buffer() {
    let mut ring = Ring::with_pool(8, 2).unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let id = ring.recv_provided(1, ours.as_raw_fd());
    ring.submit_and_wait(Duration::ZERO).unwrap();
    ring.cancel(2, id);
    let done = reap_n(&mut ring, 2);
    let recv = done.iter().find(|c| c.kind == OpKind::Recv).unwrap();
    assert_eq!(recv.result, -libc::ECANCELED);
    assert!(matches!(recv.held, Held::Nothing));
    // Closed with a provided receive in flight: shut down, closed on the ring.
    let fd = ours.as_raw_fd();
    ring.recv_provided(3, fd);
    ring.submit_and_wait(Duration::ZERO).unwrap();
    sys::shutdown(fd, Shutdown::Both);
    ring.close(4, OwnedFd::from(ours));
    drop(theirs);
    let done = reap_n(&mut ring, 2);
    let recv = done.iter().find(|c| c.kind == OpKind::Recv).unwrap();
    assert_eq!(recv.result, 0);
    assert!(matches!(recv.held, Held::Nothing));
    assert_eq!((lent(&ring), ring.in_flight()), (0, 0));
    // Both buffers are still the pool's: two receives with data at once take them.
    let pairs: Vec<(UnixStream, UnixStream)> =
        (0..2).map(|_| UnixStream::pair().unwrap()).collect();
    for (key, (ours, theirs)) in pairs.iter().enumerate() {
        let mut theirs = theirs;
        theirs.write_all(b"x").unwrap();
        ring.recv_provided(key as u64, ours.as_raw_fd());
    }
    ring.submit_and_wait(Duration::ZERO).unwrap();
    let done = reap_n(&mut ring, 2);
    assert!(done.iter().all(|c| matches!(c.held, Held::Provided(_))));
    assert_eq!(ring.stats().pool_exhausted_total, 0);
}

#[test]
fn a_ring_dropped_with_a_provided_receive_in_flight_cancels_it() {
    let mut ring = Ring::with_pool(4, 2).unwrap();
    let (ours, _theirs) = UnixStream::pair().unwrap();
    ring.recv_provided(0, ours.as_raw_fd());
    ring.submit_and_wait(Duration::ZERO).unwrap();
    let started = Instant::now();
    drop(ring);
    assert!(started.elapsed() < DROP_WAIT, "the cancel completed");
}

#[test]
fn without_a_pool_a_provided_receive_uses_an_owned_buffer() {
    let mut ring = Ring::with_pool(8, 0).unwrap();
    assert!(!ring.provides_buffers());
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    theirs.write_all(b"plain").unwrap();
    ring.recv_provided(0, ours.as_raw_fd());
    let c = reap_one(&mut ring);
    let Held::Recv(buf) = &c.held else {
        panic!("an owned buffer: {:?}", c.held)
    };
    assert_eq!(&buf[..], b"plain");
    assert!(buf.capacity() <= POOL_BUFFER_BYTES);
}
