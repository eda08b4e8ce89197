//! The ring's pool of provided buffers (`IORING_REGISTER_PBUF_RING`, kernel 5.19+): one
//! buffer ring shared with the kernel, from which a receive posted with `BUFFER_SELECT`
//! takes a buffer only once its data has come. An idle connection's receive in flight then
//! holds no buffer at all, as an epoll server reads every socket into one shared buffer.
//!
//! The protocol (liburing's `io_uring_buf_ring`, the kernel's io_uring/kbuf.c): a
//! page-aligned array of [`POOL_BUFFERS`] 16-byte entries `{addr, len, bid}`, whose 16-bit
//! tail sits in the reserved field of entry 0. The tail is ours (published with release
//! order once an entry is written); the head is the kernel's. A completion whose flags carry
//! `IORING_CQE_F_BUFFER` names the buffer the kernel filled and took off the ring: it is
//! ours until we write it back at the tail.
//!
//! Lending: the completion carries a [`Lease`] (buffer, length, lending round). The caller
//! reads the bytes through the ring (`Ring::provided`: a borrow of the ring, so nothing can
//! give the buffer back while it reads) and hands the lease back (`Ring::give_back`), which
//! puts the buffer on the ring at once. A lease never handed back (a completion dropped on
//! some path) is taken back when the ring next waits: the round changes, and a lease of an
//! older round can be neither read (asserted: the kernel may be filling the buffer again)
//! nor handed back twice. No buffer stays out past one loop turn, and none is lost.
//!
//! Must not touch: ops or connections; it knows buffer ids, addresses and lengths only.

use crate::uring::op::Lease;
use io_uring::{types, IoUring};
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

/// Provided buffers per ring. More receives with data than this in one kernel entry
/// complete with `-ENOBUFS` (the ring posts them again into owned buffers: ring/mod.rs,
/// counted by `ringcast_uring_pool_exhausted_total`). A loop turn reaps at most
/// `2 * RING_ENTRIES` completions, but receives of data that came together are a small part
/// of them: idle viewers' pongs come back spread as their ping timers are (connections that
/// came in one burst of a second answer ~100 per 10 ms timer tick at 10k per shard), and
/// commands come one per client; 256 covers such a turn, and a larger burst is not lost,
/// only received into owned buffers for that turn. Not more, because the kernel takes the
/// buffers in ring order, so pongs alone make the whole pool resident within seconds: 256 ×
/// 512 B is 128 KiB per shard, 13 B per idle connection at 10k (1024 would be 52 B, a
/// twentieth of issue 16's 1 KiB bar).
pub const POOL_BUFFERS: u16 = 256;
/// Bytes of each provided buffer: a pong, a subscribe or a short publish fits; a receive
/// that fills it means the client sends a lot, and its next receives are the connection's
/// own, larger ones.
pub const POOL_BUFFER_BYTES: usize = 512;
/// The buffer group of the pool (one per ring).
pub const POOL_GROUP: u16 = 0;
const _: () = assert!(POOL_BUFFERS.is_power_of_two() && POOL_BUFFERS <= 32768);
const _: () = assert!(POOL_BUFFER_BYTES <= u32::MAX as usize);

/// One entry of the buffer ring, as the kernel reads it (`struct io_uring_buf`).
#[repr(C)]
struct Entry {
    addr: u64,
    len: u32,
    bid: u16,
    /// Entry 0's is the ring's tail; the others' are unused.
    resv: u16,
}
const _: () = assert!(std::mem::size_of::<Entry>() == std::mem::size_of::<types::BufRingEntry>());
const _: () = assert!(std::mem::size_of::<Entry>() == 16);

/// Anonymous memory of our own (page-aligned; pages are backed once first written).
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Self> {
        // SAFETY: an anonymous private mapping takes no memory of ours; the result is
        // checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).expect("mmap returned no null mapping");
        Ok(Self { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours, unmapped once; the pool drops it only when no op
        // can use it any more (the ring's drop leaks the pool otherwise).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The pool: the buffer ring, the buffers, and which are lent.
pub(super) struct Pool {
    /// Buffers in the pool ([`POOL_BUFFERS`]; tests use fewer), a power of two.
    buffers: u16,
    /// The buffer ring: `buffers` entries.
    entries: Mapping,
    /// The buffers, one after the other.
    data: Mapping,
    /// Entries written so far (wrapping), as last published.
    tail: u16,
    /// Per buffer: the lending round it is out in, 0 while the kernel has it (or may take
    /// it: it is on the ring).
    lent_round: Box<[u32]>,
    /// Buffers lent this round (perhaps given back since).
    lent: Vec<u16>,
    /// The lending round (never 0).
    round: u32,
}

impl Pool {
    /// Registers a pool of `buffers` (a power of two, at most [`POOL_BUFFERS`]) with
    /// `ring` and puts every buffer on it; an error when the kernel refuses (older than
    /// 5.19, or a seccomp filter).
    pub(super) fn register(ring: &IoUring, buffers: u16) -> io::Result<Self> {
        assert!(buffers.is_power_of_two() && buffers <= POOL_BUFFERS);
        let entries = Mapping::new(usize::from(buffers) * std::mem::size_of::<Entry>())?;
        let data = Mapping::new(usize::from(buffers) * POOL_BUFFER_BYTES)?;
        // SAFETY: `entries` is page-aligned memory of ours, `buffers` entries long (zeroed:
        // tail 0, an empty ring). It stays mapped until the group is unregistered or the
        // ring is gone: the ring's drop unregisters it first, or leaks the pool.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                entries.ptr.as_ptr() as u64,
                buffers,
                POOL_GROUP,
                0,
            )?;
        }
        let mut pool = Self {
            buffers,
            entries,
            data,
            tail: 0,
            lent_round: vec![0; usize::from(buffers)].into_boxed_slice(),
            lent: Vec::new(),
            round: 1,
        };
        for buffer in 0..buffers {
            pool.put_on_ring(buffer);
        }
        Ok(pool)
    }

    /// Writes `buffer` at the tail of the ring and publishes it to the kernel.
    fn put_on_ring(&mut self, buffer: u16) {
        assert!(buffer < self.buffers, "buffer {buffer} of {}", self.buffers);
        debug_assert_eq!(
            self.lent_round[usize::from(buffer)],
            0,
            "a buffer is not lent"
        );
        let index = usize::from(self.tail & (self.buffers - 1));
        let entry = self.entries.ptr.as_ptr().cast::<Entry>();
        let addr = self.buffer_ptr(buffer) as u64;
        // SAFETY: `index` is in the ring (masked). The entry at the tail is not published
        // yet, so the kernel does not read it; fields are written one by one through raw
        // pointers, leaving `resv` (entry 0's is the tail the kernel reads) alone. Each
        // buffer is on the ring at most once (`lent_round` says who has it), so the ring
        // never holds more than `buffers` entries and the tail never laps the head.
        unsafe {
            let entry = entry.add(index);
            std::ptr::addr_of_mut!((*entry).addr).write(addr);
            std::ptr::addr_of_mut!((*entry).len).write(POOL_BUFFER_BYTES as u32);
            std::ptr::addr_of_mut!((*entry).bid).write(buffer);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: entry 0's `resv` is the ring's tail, a u16 in our mapping, aligned (offset
        // 14); the kernel only reads it. Release: the entry written above is visible first.
        let tail = unsafe { AtomicU16::from_ptr(std::ptr::addr_of_mut!((*entry).resv)) };
        tail.store(self.tail, Ordering::Release);
    }

    fn buffer_ptr(&self, buffer: u16) -> *mut u8 {
        // SAFETY: `buffer < self.buffers` (callers check it), so the offset is inside the
        // `data` mapping.
        unsafe {
            self.data
                .ptr
                .as_ptr()
                .add(usize::from(buffer) * POOL_BUFFER_BYTES)
        }
    }

    /// A completion says the kernel filled `buffer` with `len` bytes and took it off the
    /// ring: it is lent to the caller this round.
    pub(super) fn take(&mut self, buffer: u16, len: usize) -> Lease {
        assert!(buffer < self.buffers, "the kernel named buffer {buffer}");
        assert!(
            (1..=POOL_BUFFER_BYTES).contains(&len),
            "received {len} into a buffer of {POOL_BUFFER_BYTES}"
        );
        let round = &mut self.lent_round[usize::from(buffer)];
        assert_eq!(
            *round, 0,
            "the kernel filled buffer {buffer} while it was lent"
        );
        *round = self.round;
        self.lent.push(buffer);
        Lease {
            buffer,
            len: len as u32,
            round: self.round,
        }
    }

    /// A completion took `buffer` with nothing in it (end of stream, an error): straight
    /// back on the ring.
    pub(super) fn put_back_unused(&mut self, buffer: u16) {
        assert!(buffer < self.buffers, "the kernel named buffer {buffer}");
        assert_eq!(
            self.lent_round[usize::from(buffer)],
            0,
            "buffer {buffer} lent"
        );
        self.put_on_ring(buffer);
    }

    /// The bytes of a lease of this round.
    pub(super) fn bytes(&self, lease: &Lease) -> &[u8] {
        assert_eq!(
            self.lent_round[usize::from(lease.buffer)],
            lease.round,
            "a lease read after the ring took its buffer back (held past a wait)"
        );
        // SAFETY: the buffer is off the ring (lent this round: `take` saw the kernel give
        // it up, and it is put back only by `give_back` or `next_round`, both `&mut self`,
        // which this borrow excludes), so the kernel does not write it; the kernel wrote
        // `lease.len` bytes of it (checked against the buffer's size in `take`).
        unsafe { std::slice::from_raw_parts(self.buffer_ptr(lease.buffer), lease.len()) }
    }

    /// Puts a lease's buffer back on the ring. A lease of an older round (its buffer was
    /// taken back already) is a programmer error, and ignored.
    pub(super) fn give_back(&mut self, lease: Lease) {
        let round = &mut self.lent_round[usize::from(lease.buffer)];
        if *round != lease.round {
            debug_assert!(false, "a lease handed back after the ring took it back");
            return;
        }
        *round = 0;
        self.put_on_ring(lease.buffer);
    }

    /// A new lending round (the ring is about to wait): buffers lent and not given back go
    /// back on the ring, except those of `keep` (completions reaped but not yet handed out),
    /// which move to the new round.
    pub(super) fn next_round<'a>(&mut self, keep: impl Iterator<Item = &'a mut Lease>) {
        let old = self.round;
        self.round = self.round.wrapping_add(1).max(1);
        let mut kept = Vec::new();
        for lease in keep {
            debug_assert_eq!(lease.round, old, "a reaped lease of this round");
            self.lent_round[usize::from(lease.buffer)] = self.round;
            lease.round = self.round;
            kept.push(lease.buffer);
        }
        let mut lent = std::mem::take(&mut self.lent);
        for buffer in lent.drain(..) {
            if self.lent_round[usize::from(buffer)] == old {
                self.lent_round[usize::from(buffer)] = 0;
                self.put_on_ring(buffer);
            }
        }
        lent.extend(kept);
        self.lent = lent;
    }

    /// Buffers lent and not yet given back (tests).
    #[cfg(test)]
    pub(super) fn lent_len(&self) -> usize {
        self.lent_round.iter().filter(|round| **round != 0).count()
    }
}
