//! One shard's io_uring ring, with the operations ringcast submits as safe calls.
//!
//! Every operation owns the memory it points the kernel at, from its submission until its
//! last completion (tokio-uring's rule, `Writev { fd, bufs, iovs }`): the receive buffer,
//! the writev's frames and iovec array, the TLS ciphertext, the eventfd word. The ring
//! keeps them in its table of ops in flight, keyed by `user_data`, and hands them back in
//! the [`Completion`]. A caller that goes away first (a closed connection) loses nothing
//! and risks nothing: the completion comes later with the op's memory, and the caller
//! drops or reuses it. At drop, the ring cancels what is still in flight and waits (a
//! bounded time) for the kernel to let go; what it does not let go of is leaked, never
//! freed under the kernel.
//!
//! A full submission queue does not spin: the ring hands the queue to the kernel, and if
//! the kernel is busy (`EBUSY`: the completion queue has no room) it reaps completions into
//! its own list (returned by the next [`Ring::reap`]) and retries; an entry that still does
//! not fit waits in a FIFO of unqueued entries, moved in before each wait (TigerBeetle's
//! `io/linux.zig`: `unqueued`, `flush_completions`).
//!
//! Must not touch: connections, timers, HTTP; it knows descriptors, buffers and keys only.

use super::op::{Completion, Held, OpId, OpKind};
use bytes::Bytes;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::collections::VecDeque;
use std::io;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// Submission-queue entries per ring. Completions get twice as many.
pub const RING_ENTRIES: u32 = 4096;
/// Most operations in flight (or parked) on one ring. A shard holds at most three per
/// connection (receive, write, close) plus a few of its own; a million is far past any
/// `--max-connections` per shard, so reaching it is a leak, and asserted.
pub const OPS_MAX: usize = 1 << 20;
/// Most iovecs one writev carries (Linux's `IOV_MAX`): a write of more frames goes out
/// short and the caller sends the rest (as after any short write).
pub const IOV_MAX: usize = 1024;
/// Spare iovec arrays kept per ring, so idle connections hold none.
const IOV_VECS_POOLED_MAX: usize = 4096;
/// Bytes of the shared discard buffer receives of ignored input land in.
pub const DISCARD_BYTES: usize = 4096;
/// How long a dropped ring waits for the kernel to finish cancelled operations.
const DROP_WAIT: Duration = Duration::from_secs(1);
/// Rounds of "submit, reap to make room" one wait makes at most to move parked entries
/// in; the rest waits for the next turn (whose wait is then zero).
const FLUSH_ROUNDS_MAX: usize = 4;

/// The value every wake-up write adds to an eventfd: static, so the kernel may read it
/// for as long as the op takes.
static WAKE_WORD: u64 = 1;

/// Counters of ring trouble, exported as metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct RingStats {
    /// Times the submission queue was full when an entry was pushed.
    pub sq_full_total: u64,
    /// Completions the kernel dropped or buffered because the completion queue was full.
    pub cq_overflow_total: u64,
    /// `io_uring_enter` calls.
    pub enters_total: u64,
    /// Entries that waited in the unqueued FIFO.
    pub parked_total: u64,
}

/// One op in flight: what it is for and what it holds.
struct InFlight {
    kind: OpKind,
    key: u64,
    held: Held,
    /// The iovec array of a write, pointing into `held` (empty for other ops).
    iov: Vec<libc::iovec>,
    /// Bytes of spare capacity a receive into `held` may fill (0 for other ops).
    recv_room: usize,
}

/// A slot of the table of ops in flight; its generation changes each time it is freed.
struct Slot {
    generation: u32,
    op: Option<InFlight>,
}

/// One shard's ring.
pub struct Ring {
    ring: IoUring,
    /// Ops in flight, indexed by `OpId::index`.
    slots: Vec<Slot>,
    free: Vec<u32>,
    in_flight: usize,
    /// Entries that did not fit in the submission queue, oldest first.
    unqueued: VecDeque<squeue::Entry>,
    /// Completions reaped while making room, handed out by the next `reap`.
    ready: VecDeque<Completion>,
    iov_pool: Vec<Vec<libc::iovec>>,
    /// Scratch for the completion entries of one reap (`user_data`, result, flags).
    cqes: Vec<(u64, i32, u32)>,
    /// Receives whose bytes nobody reads land here (any number at once).
    discard: Box<[u8]>,
    stats: RingStats,
    /// Submits still to refuse with `EBUSY` (tests of the unqueued FIFO).
    #[cfg(test)]
    refuse_submits: usize,
    /// Whether the kernel knows multishot accept (5.19+).
    pub multishot_accept: bool,
}

impl Ring {
    /// Creates a ring of [`RING_ENTRIES`], with single-issuer/cooperative task-run hints
    /// where the kernel has them.
    pub fn new() -> io::Result<Self> {
        Self::with_entries(RING_ENTRIES)
    }

    /// Creates a ring of `entries` submission entries (tests use tiny ones).
    pub fn with_entries(entries: u32) -> io::Result<Self> {
        let ring = IoUring::builder()
            .setup_cqsize(entries * 2)
            .setup_single_issuer()
            .setup_defer_taskrun()
            // The kernel flags `IORING_SQ_TASKRUN` while deferred task work (a receive's
            // data, a write's room) waits for this thread; the crate's `submit()` then
            // enters with GETEVENTS, which runs it. Without it, a turn that does not wait
            // (write budget used, completions already reaped) never runs that work, and
            // its completions wait for the next turn that sleeps.
            .setup_taskrun_flag()
            .build(entries)
            .or_else(|_| IoUring::builder().setup_cqsize(entries * 2).build(entries))?;
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        let multishot_accept = super::multishot_accept(&probe);
        Ok(Self {
            ring,
            slots: Vec::new(),
            free: Vec::new(),
            in_flight: 0,
            unqueued: VecDeque::new(),
            ready: VecDeque::new(),
            iov_pool: Vec::new(),
            cqes: Vec::with_capacity(entries as usize * 2),
            discard: vec![0; DISCARD_BYTES].into_boxed_slice(),
            stats: RingStats::default(),
            #[cfg(test)]
            refuse_submits: 0,
            multishot_accept,
        })
    }

    /// Counters so far.
    pub fn stats(&self) -> RingStats {
        let mut stats = self.stats;
        // SAFETY: reading the overflow counter does not touch any entry.
        stats.cq_overflow_total = u64::from(unsafe { self.ring.completion_shared() }.overflow());
        stats
    }

    /// Operations submitted (or parked) whose last completion has not been reaped.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Entries waiting for room in the submission queue.
    pub fn parked(&self) -> usize {
        self.unqueued.len()
    }

    /// Arms accepting on `listener`: multishot where the kernel has it. Completions carry
    /// `key`, and the accepted socket as [`Held::Accepted`].
    pub fn accept(&mut self, key: u64, listener: RawFd) -> OpId {
        let entry = if self.multishot_accept {
            opcode::AcceptMulti::new(types::Fd(listener)).build()
        } else {
            opcode::Accept::new(
                types::Fd(listener),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
            .build()
        };
        self.start(OpKind::Accept, key, Held::Nothing, |_| entry)
    }

    /// Cancels `op` (no-op if it already completed); the cancel's own completion carries
    /// `key`.
    pub fn cancel(&mut self, key: u64, op: OpId) -> OpId {
        let entry = opcode::AsyncCancel::new(op.0).build();
        self.start(OpKind::Cancel, key, Held::Nothing, |_| entry)
    }

    /// Receives up to `room` bytes (at least 1) on `fd`, appended to `buf`: the
    /// completion gives `buf` back with its length grown by the result.
    pub fn recv(&mut self, key: u64, fd: RawFd, mut buf: Vec<u8>, room: usize) -> OpId {
        let room = room.clamp(1, u32::MAX as usize);
        buf.reserve(room);
        self.start(OpKind::Recv, key, Held::Recv(buf), |op| {
            let Held::Recv(buf) = &mut op.held else {
                unreachable!("built as a receive")
            };
            let spare = buf.spare_capacity_mut();
            op.recv_room = room.min(spare.len());
            opcode::Recv::new(
                types::Fd(fd),
                spare.as_mut_ptr().cast::<u8>(),
                op.recv_room as u32,
            )
            .build()
        })
    }

    /// Receives on `fd` into the ring's discard buffer: for input nobody reads (a
    /// subscriber's, a refused client's). The completion says only how many bytes came.
    pub fn recv_discard(&mut self, key: u64, fd: RawFd) -> OpId {
        let (ptr, len) = (self.discard.as_mut_ptr(), self.discard.len() as u32);
        // The kernel may write into `discard` for several receives at once; nothing ever
        // reads it, and it lives as long as the ring (leaked at drop if still in use).
        self.start(OpKind::Recv, key, Held::Nothing, |_| {
            opcode::Recv::new(types::Fd(fd), ptr, len).build()
        })
    }

    /// Writes `frames` to `fd`, from byte `skip` of their concatenation (what an earlier
    /// short write left), at most [`IOV_MAX`] frames at once. The completion gives the
    /// frames back; its result is the bytes written from `skip`.
    pub fn writev(&mut self, key: u64, fd: RawFd, frames: Vec<Bytes>, skip: usize) -> OpId {
        let iov = self.iov_pool.pop().unwrap_or_default();
        self.start_write(key, Held::Frames(frames), iov, move |op| {
            let Held::Frames(frames) = &op.held else {
                unreachable!("built as a writev")
            };
            fill_iov(&mut op.iov, frames.iter().map(|f| &f[..]), skip);
            opcode::Writev::new(types::Fd(fd), op.iov.as_ptr(), op.iov.len() as u32).build()
        })
    }

    /// Sends `bytes[from..]` to `fd` (TLS ciphertext). `nowait`: completes at once with
    /// `-EAGAIN` (or a short count) instead of waiting when the socket has no room
    /// (`RWF_NOWAIT`), for a last message (a `close_notify`) that must not keep a closing
    /// connection waiting on its peer. The completion gives `bytes` back whole.
    pub fn send(&mut self, key: u64, fd: RawFd, bytes: Vec<u8>, from: usize, nowait: bool) -> OpId {
        assert!(from <= bytes.len(), "send from {from} of {}", bytes.len());
        let iov = self.iov_pool.pop().unwrap_or_default();
        self.start_write(key, Held::Bytes(bytes), iov, move |op| {
            let Held::Bytes(bytes) = &op.held else {
                unreachable!("built as a send")
            };
            fill_iov(&mut op.iov, std::iter::once(&bytes[..]), from);
            let write = opcode::Writev::new(types::Fd(fd), op.iov.as_ptr(), op.iov.len() as u32);
            if nowait {
                write.rw_flags(libc::RWF_NOWAIT).build()
            } else {
                write.build()
            }
        })
    }

    /// Closes `fd` (owned: nothing else can close or use it after this).
    pub fn close(&mut self, key: u64, fd: OwnedFd) -> OpId {
        let entry = opcode::Close::new(types::Fd(fd.into_raw_fd())).build();
        self.start(OpKind::Close, key, Held::Nothing, |_| entry)
    }

    /// Reads an eventfd's counter into `word` (given back in the completion).
    pub fn read_eventfd(&mut self, key: u64, fd: RawFd, word: Box<u64>) -> OpId {
        self.start(OpKind::WakeRead, key, Held::Word(word), |op| {
            let Held::Word(word) = &mut op.held else {
                unreachable!("built as an eventfd read")
            };
            let ptr: *mut u64 = &mut **word;
            opcode::Read::new(types::Fd(fd), ptr.cast(), 8).build()
        })
    }

    /// Adds 1 to an eventfd (another shard's), waking its loop.
    pub fn write_eventfd(&mut self, key: u64, fd: RawFd) -> OpId {
        let ptr: *const u64 = &WAKE_WORD;
        self.start(OpKind::WakeWrite, key, Held::Nothing, |_| {
            opcode::Write::new(types::Fd(fd), ptr.cast(), 8).build()
        })
    }

    fn start_write(
        &mut self,
        key: u64,
        held: Held,
        mut iov: Vec<libc::iovec>,
        build: impl FnOnce(&mut InFlight) -> squeue::Entry,
    ) -> OpId {
        iov.clear();
        let id = self.insert(InFlight {
            kind: OpKind::Write,
            key,
            held,
            iov,
            recv_room: 0,
        });
        self.submit_built(id, build)
    }

    /// Registers an op holding `held`, builds its entry (pointing into the op's own memory,
    /// now in the table) and queues it.
    fn start(
        &mut self,
        kind: OpKind,
        key: u64,
        held: Held,
        build: impl FnOnce(&mut InFlight) -> squeue::Entry,
    ) -> OpId {
        let id = self.insert(InFlight {
            kind,
            key,
            held,
            iov: Vec::new(),
            recv_room: 0,
        });
        self.submit_built(id, build)
    }

    fn submit_built(
        &mut self,
        id: OpId,
        build: impl FnOnce(&mut InFlight) -> squeue::Entry,
    ) -> OpId {
        let op = self.slots[id.index() as usize]
            .op
            .as_mut()
            .expect("just inserted");
        let entry = build(op).user_data(id.0);
        self.push(entry);
        id
    }

    fn insert(&mut self, op: InFlight) -> OpId {
        assert!(
            self.in_flight < OPS_MAX,
            "ops in flight past OPS_MAX: a leak"
        );
        self.in_flight += 1;
        match self.free.pop() {
            Some(index) => {
                let slot = &mut self.slots[index as usize];
                debug_assert!(slot.op.is_none());
                slot.op = Some(op);
                OpId::new(index, slot.generation)
            }
            None => {
                let index = u32::try_from(self.slots.len()).expect("OPS_MAX fits u32");
                self.slots.push(Slot {
                    generation: 1,
                    op: Some(op),
                });
                OpId::new(index, 1)
            }
        }
    }

    /// Queues an entry whose memory its op owns (in `slots`, until its last completion).
    /// Never fails and never spins: a full queue goes to the kernel, and what still does
    /// not fit is parked, in order.
    fn push(&mut self, entry: squeue::Entry) {
        if self.unqueued.is_empty() && self.try_push(&entry) {
            return;
        }
        self.stats.sq_full_total += 1;
        if self.unqueued.is_empty() && self.submit_making_room().is_ok() && self.try_push(&entry) {
            return;
        }
        // Every parked entry is an op in flight: bounded by OPS_MAX (asserted in insert).
        debug_assert!(self.unqueued.len() < self.in_flight);
        self.stats.parked_total += 1;
        self.unqueued.push_back(entry);
    }

    fn try_push(&mut self, entry: &squeue::Entry) -> bool {
        // SAFETY: every pointer in `entry` is into memory its op owns in `slots` (heap
        // memory of a Vec or Box that does not move when the op does), the discard buffer
        // or a static; none of it is touched, moved or freed until the op's last
        // completion is reaped (`complete`), or the ring's drop leaks it.
        unsafe { self.ring.submission().push(entry) }.is_ok()
    }

    /// Moves parked entries into the submission queue, oldest first, while they fit.
    fn flush_unqueued(&mut self) {
        while let Some(entry) = self.unqueued.front() {
            let entry = entry.clone();
            if !self.try_push(&entry) {
                break;
            }
            self.unqueued.pop_front();
        }
    }

    /// Hands the submission queue to the kernel; when it refuses for lack of completion
    /// room (`EBUSY`), reaps completions into `ready` and tries once more.
    fn submit_making_room(&mut self) -> io::Result<()> {
        for _ in 0..2 {
            self.stats.enters_total += 1;
            match self.enter_submit() {
                Ok(_) => return Ok(()),
                Err(err) if err.raw_os_error() == Some(libc::EBUSY) => self.reap_into_ready(),
                Err(err) if err.raw_os_error() == Some(libc::EINTR) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// `io_uring_enter` to submit, without waiting. Tests make it refuse as a kernel
    /// with a full completion queue does.
    fn enter_submit(&mut self) -> io::Result<usize> {
        #[cfg(test)]
        if self.refuse_submits > 0 {
            self.refuse_submits -= 1;
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        self.ring.submit()
    }

    fn reap_into_ready(&mut self) {
        let mut completions = std::mem::take(&mut self.ready);
        let mut reaped = Vec::new();
        self.reap_cq(&mut reaped);
        completions.extend(reaped);
        self.ready = completions;
    }

    /// Submits what was queued (parked entries first, making room as needed) and waits for
    /// at least one completion, or `timeout`. Waits not at all when `timeout` is zero,
    /// when completions are already reaped, or when entries are still parked.
    pub fn submit_and_wait(&mut self, timeout: Duration) -> io::Result<()> {
        for _ in 0..FLUSH_ROUNDS_MAX {
            self.flush_unqueued();
            if self.unqueued.is_empty() {
                break;
            }
            self.submit_making_room()?;
        }
        let busy = !self.unqueued.is_empty() || !self.ready.is_empty();
        self.stats.enters_total += 1;
        let result = if timeout.is_zero() || busy {
            self.ring.submit()
        } else {
            let ts = types::Timespec::new()
                .sec(timeout.as_secs())
                .nsec(timeout.subsec_nanos());
            let args = types::SubmitArgs::new().timespec(&ts);
            self.ring.submitter().submit_with_args(1, &args)
        };
        match result {
            Ok(_) => Ok(()),
            Err(err) if err.raw_os_error() == Some(libc::EBUSY) => {
                self.reap_into_ready();
                Ok(())
            }
            Err(err) if matches!(err.raw_os_error(), Some(libc::ETIME | libc::EINTR)) => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// Moves every available completion into `out`, each with what its op held.
    pub fn reap(&mut self, out: &mut Vec<Completion>) {
        out.extend(self.ready.drain(..));
        self.reap_cq(out);
    }

    fn reap_cq(&mut self, out: &mut Vec<Completion>) {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.clear();
        cqes.extend(
            self.ring
                .completion()
                .map(|cqe| (cqe.user_data(), cqe.result(), cqe.flags())),
        );
        out.reserve(cqes.len());
        for &(data, result, flags) in &cqes {
            out.push(self.complete(OpId(data), result, cqueue::more(flags)));
        }
        self.cqes = cqes;
    }

    /// Ends (or, for a multishot op with `more`, continues) op `id` and gives back what it
    /// held.
    fn complete(&mut self, id: OpId, result: i32, more: bool) -> Completion {
        let slot = self
            .slots
            .get_mut(id.index() as usize)
            .expect("a completion for an op this ring started");
        assert_eq!(
            slot.generation,
            id.generation(),
            "a completion for an op that already ended"
        );
        if more {
            let op = slot.op.as_ref().expect("in flight");
            let held = if op.kind == OpKind::Accept && result >= 0 {
                Held::Accepted(own_accepted(result))
            } else {
                Held::Nothing
            };
            return Completion {
                op: id,
                kind: op.kind,
                key: op.key,
                result,
                more,
                held,
            };
        }
        let mut op = slot.op.take().expect("in flight");
        slot.generation = slot.generation.wrapping_add(1).max(1);
        self.free.push(id.index());
        assert!(self.in_flight > 0, "completions outnumber ops");
        self.in_flight -= 1;
        let mut held = std::mem::take(&mut op.held);
        match &mut held {
            Held::Recv(buf) if result > 0 => {
                let len = result as usize;
                assert!(
                    len <= op.recv_room,
                    "received {len} into room {}",
                    op.recv_room
                );
                // SAFETY: the kernel initialised `len` bytes of the spare capacity the
                // receive pointed at (`recv_room` of it, from `buf.len()`).
                unsafe { buf.set_len(buf.len() + len) };
            }
            Held::Nothing if op.kind == OpKind::Accept && result >= 0 => {
                held = Held::Accepted(own_accepted(result));
            }
            _ => {}
        }
        if op.iov.capacity() != 0 && self.iov_pool.len() < IOV_VECS_POOLED_MAX {
            op.iov.clear();
            self.iov_pool.push(op.iov);
        }
        Completion {
            op: id,
            kind: op.kind,
            key: op.key,
            result,
            more: false,
            held,
        }
    }
}

impl Drop for Ring {
    /// Cancels what is in flight and reaps until the kernel has let go of every op's memory
    /// (at most [`DROP_WAIT`]); what it still holds then is leaked, not freed.
    fn drop(&mut self) {
        if self.in_flight == 0 {
            return;
        }
        let live: Vec<OpId> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| slot.op.as_ref().is_some_and(|op| op.kind != OpKind::Cancel))
            .map(|(index, slot)| OpId::new(index as u32, slot.generation))
            .collect();
        for id in live {
            self.cancel(0, id);
        }
        let deadline = Instant::now() + DROP_WAIT;
        let mut reaped = Vec::new();
        while self.in_flight != 0 && Instant::now() < deadline {
            if self.submit_and_wait(Duration::from_millis(10)).is_err() {
                break;
            }
            reaped.clear();
            self.reap(&mut reaped);
        }
        if self.in_flight != 0 {
            tracing::warn!(
                ops = self.in_flight,
                "ring dropped with operations in flight: their buffers are leaked"
            );
            std::mem::forget(std::mem::take(&mut self.slots));
            std::mem::forget(std::mem::take(&mut self.discard));
        }
    }
}

/// Points `iov` at `buffers` from byte `skip` of their concatenation, at most [`IOV_MAX`]
/// entries.
fn fill_iov<'a>(
    iov: &mut Vec<libc::iovec>,
    buffers: impl Iterator<Item = &'a [u8]>,
    mut skip: usize,
) {
    iov.clear();
    for buffer in buffers {
        if iov.len() == IOV_MAX {
            break;
        }
        if skip >= buffer.len() {
            skip -= buffer.len();
            continue;
        }
        iov.push(libc::iovec {
            iov_base: buffer[skip..].as_ptr() as *mut libc::c_void,
            iov_len: buffer.len() - skip,
        });
        skip = 0;
    }
}

/// Takes ownership of the socket an accept completed with.
fn own_accepted(fd: i32) -> OwnedFd {
    assert!(fd >= 0, "an accept's result, not an error");
    // SAFETY: a successful accept's result is a new descriptor, handed out once, in this
    // one completion: nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[cfg(test)]
mod tests;
