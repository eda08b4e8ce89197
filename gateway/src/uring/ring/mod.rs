//! One shard's io_uring ring, with the operations ringcast submits as safe calls.
//!
//! Every operation owns the memory it points the kernel at, from its submission until its
//! last completion (tokio-uring's rule, `Writev { fd, bufs, iovs }`): the receive buffer,
//! the writev's frames and iovec array, the TLS ciphertext, the eventfd word. The ring
//! keeps them in its table of ops in flight, keyed by `user_data`, and hands them back in
//! the [`Completion`]. One slot per op, kept small (every idle connection has a receive in
//! flight): a write's iovec array is one of the ring's, named by index.
//!
//! A receive may instead take a buffer of the ring's pool of provided buffers
//! ([`Ring::recv_provided`], pool.rs) once its data has come: it holds nothing while it
//! waits, and its completion lends the buffer ([`Lease`]: read with [`Ring::provided`],
//! handed back with [`Ring::give_back`], taken back at the next wait if forgotten). When
//! more such receives have data at once than the pool has buffers, the kernel completes the
//! rest with `-ENOBUFS` without reading a byte; the ring never shows that to the caller: it
//! posts the same op again (same id) into an owned buffer of [`POOL_BUFFER_BYTES`], whose
//! completion gives that buffer as [`Held::Recv`] (counted: `pool_exhausted_total`). A
//! kernel that refuses the pool (older than 5.19, a seccomp filter) leaves the ring without
//! one: every provided receive is then such an owned one. A caller that goes away first (a closed connection) loses nothing
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

mod pool;

use self::pool::{Pool, POOL_GROUP};
pub use self::pool::{POOL_BUFFERS, POOL_BUFFER_BYTES};
use super::op::{Completion, Held, Lease, OpId, OpKind};
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
    /// Provided receives the kernel found no pool buffer for (`-ENOBUFS`), posted again
    /// into owned buffers.
    pub pool_exhausted_total: u64,
}

/// What an op in flight holds for the kernel: the caller's memory (given back in the
/// completion as [`Held`]) with what the ring needs to finish the op.
#[derive(Debug, Default)]
enum Memory {
    /// Nothing of the caller's (accept, cancel, close, a discard receive, a wake-up write).
    #[default]
    Nothing,
    /// A receive into the spare capacity of `buf`, `room` bytes of it.
    Recv { buf: Vec<u8>, room: u32 },
    /// A receive that takes a pool buffer once its data has come; `fd` is kept to post it
    /// again into an owned buffer when the pool has none (`-ENOBUFS`).
    Provided { fd: RawFd },
    /// A writev of `frames` through the ring's iovec array number `iov`.
    Frames { frames: Vec<Bytes>, iov: u32 },
    /// A send of `bytes` through the ring's iovec array number `iov`.
    Bytes { bytes: Vec<u8>, iov: u32 },
    /// An eventfd read's word.
    Word(Box<u64>),
}

/// A slot of the table of ops in flight; its generation changes each time it is freed.
struct Slot {
    /// The caller's key of the op in the slot.
    key: u64,
    memory: Memory,
    generation: u32,
    /// What the op in the slot is; `None` while the slot is free.
    kind: Option<OpKind>,
}
/// Most bytes a slot takes: one per op in flight, and an idle connection has one.
pub const SLOT_BYTES_MAX: usize = 48;
const _: () = assert!(std::mem::size_of::<Slot>() <= SLOT_BYTES_MAX);

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
    /// The iovec arrays of writes, in flight or spare (`iovs_free`), named by index.
    iovs: Vec<Vec<libc::iovec>>,
    iovs_free: Vec<u32>,
    /// The provided buffers, when the kernel took them.
    pool: Option<Pool>,
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

    /// Creates a ring of `entries` submission entries (tests use tiny ones), with its pool of
    /// provided buffers where the kernel has them.
    pub fn with_entries(entries: u32) -> io::Result<Self> {
        Self::with_pool(entries, POOL_BUFFERS)
    }

    /// [`Self::with_entries`] with a pool of `pool_buffers` (a power of two, at most
    /// [`POOL_BUFFERS`]; tests use a few), or none for 0 (as when the kernel refuses one).
    pub fn with_pool(entries: u32, pool_buffers: u16) -> io::Result<Self> {
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
        let pool = if pool_buffers != 0 {
            Pool::register(&ring, pool_buffers)
                .inspect_err(|err| {
                    tracing::info!(%err, "no provided buffers: receives use their own buffers")
                })
                .ok()
        } else {
            None
        };
        Ok(Self {
            ring,
            slots: Vec::new(),
            free: Vec::new(),
            in_flight: 0,
            unqueued: VecDeque::new(),
            ready: VecDeque::new(),
            iovs: Vec::new(),
            iovs_free: Vec::new(),
            pool,
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

    /// Whether receives take provided buffers ([`Self::recv_provided`]).
    pub fn provides_buffers(&self) -> bool {
        self.pool.is_some()
    }

    /// Bytes of owned receive buffers held by receives in flight (tests: an idle
    /// connection's receive from the pool holds none).
    #[cfg(test)]
    pub(crate) fn recv_bytes_held(&self) -> usize {
        self.slots
            .iter()
            .filter(|slot| slot.kind.is_some())
            .map(|slot| match &slot.memory {
                Memory::Recv { buf, .. } => buf.capacity(),
                _ => 0,
            })
            .sum()
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
        self.start(OpKind::Accept, key, Memory::Nothing, |_| entry)
    }

    /// Cancels `op` (no-op if it already completed); the cancel's own completion carries
    /// `key`.
    pub fn cancel(&mut self, key: u64, op: OpId) -> OpId {
        let entry = opcode::AsyncCancel::new(op.word()).build();
        self.start(OpKind::Cancel, key, Memory::Nothing, |_| entry)
    }

    /// Receives up to `room` bytes (at least 1) on `fd`, appended to `buf`: the
    /// completion gives `buf` back with its length grown by the result.
    pub fn recv(&mut self, key: u64, fd: RawFd, mut buf: Vec<u8>, room: usize) -> OpId {
        let room = room.clamp(1, u32::MAX as usize);
        buf.reserve(room);
        let memory = Memory::Recv {
            buf,
            room: room as u32,
        };
        self.start(OpKind::Recv, key, memory, move |memory| {
            recv_entry(fd, memory)
        })
    }

    /// Receives on `fd` into one of the pool's buffers, taken only once data has come: the
    /// op holds no memory while it waits. The completion lends the buffer
    /// ([`Held::Provided`]: read it with [`Self::provided`], then [`Self::give_back`]); or,
    /// when the pool had no buffer free or the ring has no pool, gives an owned buffer of at
    /// most [`POOL_BUFFER_BYTES`] ([`Held::Recv`]). Never completes with `-ENOBUFS`.
    pub fn recv_provided(&mut self, key: u64, fd: RawFd) -> OpId {
        if self.pool.is_none() {
            return self.recv(key, fd, Vec::new(), POOL_BUFFER_BYTES);
        }
        self.start(OpKind::Recv, key, Memory::Provided { fd }, move |_| {
            provided_recv_entry(fd)
        })
    }

    /// The bytes a provided receive brought (borrowed from the ring: the buffer cannot go
    /// back while they are read). Panics for a lease the ring took back (held past a wait).
    pub fn provided(&self, lease: &Lease) -> &[u8] {
        self.pool
            .as_ref()
            .expect("a lease comes from the ring's pool")
            .bytes(lease)
    }

    /// Gives a lent buffer back to the pool (at once available to the kernel again).
    pub fn give_back(&mut self, lease: Lease) {
        if let Some(pool) = &mut self.pool {
            pool.give_back(lease);
        }
    }

    /// Receives on `fd` into the ring's discard buffer: for input nobody reads (a
    /// subscriber's, a refused client's). The completion says only how many bytes came.
    pub fn recv_discard(&mut self, key: u64, fd: RawFd) -> OpId {
        let (ptr, len) = (self.discard.as_mut_ptr(), self.discard.len() as u32);
        // The kernel may write into `discard` for several receives at once; nothing ever
        // reads it, and it lives as long as the ring (leaked at drop if still in use).
        self.start(OpKind::Recv, key, Memory::Nothing, |_| {
            opcode::Recv::new(types::Fd(fd), ptr, len).build()
        })
    }

    /// Writes `frames` to `fd`, from byte `skip` of their concatenation (what an earlier
    /// short write left), at most [`IOV_MAX`] frames at once. The completion gives the
    /// frames back; its result is the bytes written from `skip`.
    pub fn writev(&mut self, key: u64, fd: RawFd, frames: Vec<Bytes>, skip: usize) -> OpId {
        let index = self.take_iov();
        let iov = &mut self.iovs[index as usize];
        fill_iov(iov, frames.iter().map(|f| &f[..]), skip);
        // The iovecs point into the frames' heap memory, which does not move with the Vec.
        let entry = opcode::Writev::new(types::Fd(fd), iov.as_ptr(), iov.len() as u32).build();
        let memory = Memory::Frames { frames, iov: index };
        self.start(OpKind::Write, key, memory, |_| entry)
    }

    /// Sends `bytes[from..]` to `fd` (TLS ciphertext). `nowait`: completes at once with
    /// `-EAGAIN` (or a short count) instead of waiting when the socket has no room
    /// (`RWF_NOWAIT`), for a last message (a `close_notify`) that must not keep a closing
    /// connection waiting on its peer. The completion gives `bytes` back whole.
    pub fn send(&mut self, key: u64, fd: RawFd, bytes: Vec<u8>, from: usize, nowait: bool) -> OpId {
        assert!(from <= bytes.len(), "send from {from} of {}", bytes.len());
        let index = self.take_iov();
        let iov = &mut self.iovs[index as usize];
        fill_iov(iov, std::iter::once(&bytes[..]), from);
        // The iovec points into the bytes' heap memory, which does not move with the Vec.
        let write = opcode::Writev::new(types::Fd(fd), iov.as_ptr(), iov.len() as u32);
        let entry = if nowait {
            write.rw_flags(libc::RWF_NOWAIT).build()
        } else {
            write.build()
        };
        let memory = Memory::Bytes { bytes, iov: index };
        self.start(OpKind::Write, key, memory, |_| entry)
    }

    /// Closes `fd` (owned: nothing else can close or use it after this).
    pub fn close(&mut self, key: u64, fd: OwnedFd) -> OpId {
        let entry = opcode::Close::new(types::Fd(fd.into_raw_fd())).build();
        self.start(OpKind::Close, key, Memory::Nothing, |_| entry)
    }

    /// Reads an eventfd's counter into `word` (given back in the completion).
    pub fn read_eventfd(&mut self, key: u64, fd: RawFd, word: Box<u64>) -> OpId {
        self.start(OpKind::WakeRead, key, Memory::Word(word), |memory| {
            let Memory::Word(word) = memory else {
                unreachable!("built as an eventfd read")
            };
            let ptr: *mut u64 = &mut **word;
            opcode::Read::new(types::Fd(fd), ptr.cast(), 8).build()
        })
    }

    /// Adds 1 to an eventfd (another shard's), waking its loop.
    pub fn write_eventfd(&mut self, key: u64, fd: RawFd) -> OpId {
        let ptr: *const u64 = &WAKE_WORD;
        self.start(OpKind::WakeWrite, key, Memory::Nothing, |_| {
            opcode::Write::new(types::Fd(fd), ptr.cast(), 8).build()
        })
    }

    /// An iovec array for a write (a spare one, or a new one), by index.
    fn take_iov(&mut self) -> u32 {
        match self.iovs_free.pop() {
            Some(index) => index,
            None => {
                self.iovs.push(Vec::new());
                u32::try_from(self.iovs.len() - 1).expect("one array per op: fits u32")
            }
        }
    }

    /// A write's iovec array is free again; only `IOV_VECS_POOLED_MAX` spares keep their
    /// memory.
    fn release_iov(&mut self, index: u32) {
        let iov = &mut self.iovs[index as usize];
        iov.clear();
        if self.iovs_free.len() >= IOV_VECS_POOLED_MAX {
            *iov = Vec::new();
        }
        self.iovs_free.push(index);
    }

    /// Registers an op holding `memory`, builds its entry (pointing into the op's own
    /// memory, now in the table) and queues it.
    fn start(
        &mut self,
        kind: OpKind,
        key: u64,
        memory: Memory,
        build: impl FnOnce(&mut Memory) -> squeue::Entry,
    ) -> OpId {
        let id = self.insert(kind, key, memory);
        let memory = &mut self.slots[id.index() as usize].memory;
        let entry = build(memory).user_data(id.word());
        self.push(entry);
        id
    }

    fn insert(&mut self, kind: OpKind, key: u64, memory: Memory) -> OpId {
        assert!(
            self.in_flight < OPS_MAX,
            "ops in flight past OPS_MAX: a leak"
        );
        self.in_flight += 1;
        match self.free.pop() {
            Some(index) => {
                let slot = &mut self.slots[index as usize];
                debug_assert!(slot.kind.is_none());
                slot.kind = Some(kind);
                slot.key = key;
                slot.memory = memory;
                OpId::new(index, slot.generation)
            }
            None => {
                let index = u32::try_from(self.slots.len()).expect("OPS_MAX fits u32");
                self.slots.push(Slot {
                    key,
                    memory,
                    generation: 1,
                    kind: Some(kind),
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
        // memory of a Vec or Box that does not move when the op does), an iovec array of
        // `iovs` the op names (its heap memory, untouched until the op ends), the discard
        // buffer, the pool (whose buffers the kernel picks itself), or a static; none of
        // it is touched, moved or freed until the op's last completion is reaped
        // (`complete`), or the ring's drop leaks it.
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
    ///
    /// Lent pool buffers not handed back yet go back to the kernel first (a new lending
    /// round), except those of completions reaped and not handed out yet.
    pub fn submit_and_wait(&mut self, timeout: Duration) -> io::Result<()> {
        if let Some(pool) = &mut self.pool {
            pool.next_round(self.ready.iter_mut().filter_map(|c| match &mut c.held {
                Held::Provided(lease) => Some(lease),
                _ => None,
            }));
        }
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
            if let Some(completion) = self.complete(OpId::from_word(data), result, flags) {
                out.push(completion);
            }
        }
        self.cqes = cqes;
    }

    /// Ends (or, for a multishot op with `more` in `flags`, continues) op `id` and gives
    /// back what it held; `None` when the op goes on instead (a provided receive the pool
    /// had no buffer for, posted again into an owned one).
    fn complete(&mut self, id: OpId, result: i32, flags: u32) -> Option<Completion> {
        let slot = self
            .slots
            .get_mut(id.index() as usize)
            .expect("a completion for an op this ring started");
        assert_eq!(
            slot.generation,
            id.generation(),
            "a completion for an op that already ended"
        );
        let kind = slot.kind.expect("in flight");
        let key = slot.key;
        if cqueue::more(flags) {
            let held = if kind == OpKind::Accept && result >= 0 {
                Held::Accepted(own_accepted(result))
            } else {
                Held::Nothing
            };
            return Some(Completion {
                op: id,
                kind,
                key,
                result,
                more: true,
                held,
            });
        }
        let buffer = cqueue::buffer_select(flags);
        if let (Memory::Provided { fd }, true) = (&slot.memory, result == -libc::ENOBUFS) {
            // The pool had no buffer free: not a byte was read. The same op goes on into
            // a buffer of its own, submitted with the next entries.
            debug_assert!(buffer.is_none());
            let fd = *fd;
            slot.memory = Memory::Recv {
                buf: Vec::with_capacity(POOL_BUFFER_BYTES),
                room: POOL_BUFFER_BYTES as u32,
            };
            let entry = recv_entry(fd, &mut slot.memory).user_data(id.word());
            self.stats.pool_exhausted_total += 1;
            // Into the queue if it has room (no kernel entry here: this runs inside a
            // reap), else parked, in order.
            if !(self.unqueued.is_empty() && self.try_push(&entry)) {
                self.unqueued.push_back(entry);
            }
            return None;
        }
        slot.kind = None;
        slot.generation = slot.generation.wrapping_add(1).max(1);
        let memory = std::mem::take(&mut slot.memory);
        self.free.push(id.index());
        assert!(self.in_flight > 0, "completions outnumber ops");
        self.in_flight -= 1;
        let held = match memory {
            Memory::Nothing if kind == OpKind::Accept && result >= 0 => {
                Held::Accepted(own_accepted(result))
            }
            Memory::Nothing => Held::Nothing,
            Memory::Recv { mut buf, room } => {
                if result > 0 {
                    let len = result as usize;
                    assert!(len <= room as usize, "received {len} into room {room}");
                    // SAFETY: the kernel initialised `len` bytes of the spare capacity the
                    // receive pointed at (`room` of it, from `buf.len()`).
                    unsafe { buf.set_len(buf.len() + len) };
                }
                Held::Recv(buf)
            }
            Memory::Provided { .. } => {
                let pool = self.pool.as_mut().expect("a provided receive has a pool");
                match buffer {
                    Some(buffer) if result > 0 => {
                        Held::Provided(pool.take(buffer, result as usize))
                    }
                    Some(buffer) => {
                        pool.put_back_unused(buffer);
                        Held::Nothing
                    }
                    None => {
                        assert!(result <= 0, "a provided receive's bytes come in a buffer");
                        Held::Nothing
                    }
                }
            }
            Memory::Frames { frames, iov } => {
                self.release_iov(iov);
                Held::Frames(frames)
            }
            Memory::Bytes { bytes, iov } => {
                self.release_iov(iov);
                Held::Bytes(bytes)
            }
            Memory::Word(word) => Held::Word(word),
        };
        Some(Completion {
            op: id,
            kind,
            key,
            result,
            more: false,
            held,
        })
    }
}

/// The entry of a receive into the spare capacity of `memory`'s buffer.
fn recv_entry(fd: RawFd, memory: &mut Memory) -> squeue::Entry {
    let Memory::Recv { buf, room } = memory else {
        unreachable!("built as a receive")
    };
    let spare = buf.spare_capacity_mut();
    *room = (*room).min(u32::try_from(spare.len()).unwrap_or(u32::MAX));
    opcode::Recv::new(types::Fd(fd), spare.as_mut_ptr().cast::<u8>(), *room).build()
}

/// The entry of a receive that takes a pool buffer once its data has come.
fn provided_recv_entry(fd: RawFd) -> squeue::Entry {
    opcode::Recv::new(
        types::Fd(fd),
        std::ptr::null_mut(),
        POOL_BUFFER_BYTES as u32,
    )
    .buf_group(POOL_GROUP)
    .build()
    .flags(squeue::Flags::BUFFER_SELECT)
}

impl Drop for Ring {
    /// Cancels what is in flight and reaps until the kernel has let go of every op's memory
    /// (at most [`DROP_WAIT`]); what it still holds then is leaked, not freed.
    fn drop(&mut self) {
        if self.in_flight == 0 {
            self.unregister_pool();
            return;
        }
        let live: Vec<OpId> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| slot.kind.is_some_and(|kind| kind != OpKind::Cancel))
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
            std::mem::forget(std::mem::take(&mut self.iovs));
            std::mem::forget(std::mem::take(&mut self.discard));
            std::mem::forget(self.pool.take());
        } else {
            self.unregister_pool();
        }
    }
}

impl Ring {
    /// Takes the pool from the kernel (no op is in flight: none can pick a buffer); its
    /// memory is unmapped when the pool drops.
    fn unregister_pool(&mut self) {
        debug_assert_eq!(self.in_flight, 0);
        if self.pool.is_some() {
            let _ = self.ring.submitter().unregister_buf_ring(POOL_GROUP);
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
