//! The io_uring driver: one ring per shard, the operations ringcast submits, and the
//! encoding of `user_data`. Every `unsafe` block of the gateway's socket IO lives here.
//!
//! Buffer ownership rule: whoever pushes an operation keeps the memory it points to
//! (receive buffer, iovec array and the frames it points to, eventfd word) alive and
//! unmoved until that operation's completion has been reaped. The shard enforces this by
//! keeping such memory in the connection slot, which is freed only after every operation
//! of the connection has completed.

pub mod doctor;
pub mod probe;

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// Submission-queue entries per ring. Completions get twice as many.
pub const RING_ENTRIES: u32 = 4096;
/// The accept of the plain HTTP/1.1 listener (`--listen`), in `user_data`'s slot field.
pub const LISTENER_PLAIN: u32 = 0;
/// The accept of the TLS listener (`--tls-listen`), in `user_data`'s slot field.
pub const LISTENER_TLS: u32 = 1;
// The shard indexes its per-listener accept state with these.
const _: () = assert!(LISTENER_PLAIN == 0 && LISTENER_TLS == 1);

/// What an operation was, carried in the top byte of `user_data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OpKind {
    /// Multishot (or single) accept on the shard's listener.
    Accept = 1,
    /// Receive into a connection's request buffer.
    Recv = 2,
    /// A connection's writev.
    Write = 3,
    /// Close of a connection's fd.
    Close = 4,
    /// Read of this shard's wake-up eventfd.
    WakeRead = 5,
    /// Write to another shard's wake-up eventfd.
    WakeWrite = 6,
    /// Cancel of the accept on shutdown.
    Cancel = 7,
}

impl OpKind {
    fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            1 => Self::Accept,
            2 => Self::Recv,
            3 => Self::Write,
            4 => Self::Close,
            5 => Self::WakeRead,
            6 => Self::WakeWrite,
            7 => Self::Cancel,
            _ => return None,
        })
    }
}

/// Packs an operation kind and a connection slot into `user_data`.
pub fn user_data(kind: OpKind, slot: u32) -> u64 {
    (u64::from(kind as u8) << 56) | u64::from(slot)
}

/// One reaped completion.
#[derive(Debug, Clone, Copy)]
pub struct Completion {
    /// What the operation was (None for a `user_data` ringcast never sets).
    pub kind: Option<OpKind>,
    /// The connection slot (or other index) it was for.
    pub slot: u32,
    /// The kernel's result: ≥ 0 success value, < 0 `-errno`.
    pub result: i32,
    /// More completions follow for this multishot operation.
    pub more: bool,
}

/// Counters of ring trouble, exported as metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct RingStats {
    /// Times the submission queue was full and had to be flushed before a push.
    pub sq_full_total: u64,
    /// Completions the kernel dropped or buffered because the completion queue was full.
    pub cq_overflow_total: u64,
    /// `io_uring_enter` calls.
    pub enters_total: u64,
}

/// One shard's ring.
pub struct Ring {
    ring: IoUring,
    stats: RingStats,
    /// Whether the kernel knows multishot accept (5.19+).
    pub multishot_accept: bool,
}

impl Ring {
    /// Creates a ring, with single-issuer/cooperative task-run hints where the kernel has
    /// them.
    pub fn new() -> io::Result<Self> {
        let ring = IoUring::builder()
            .setup_cqsize(RING_ENTRIES * 2)
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(RING_ENTRIES)
            .or_else(|_| {
                IoUring::builder()
                    .setup_cqsize(RING_ENTRIES * 2)
                    .build(RING_ENTRIES)
            })?;
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        let multishot_accept = multishot_accept(&probe);
        Ok(Self {
            ring,
            stats: RingStats::default(),
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

    /// Pushes an entry, flushing the submission queue to the kernel when it is full.
    ///
    /// # Safety
    /// Every buffer the entry points to must stay valid and unmoved until its completion
    /// has been reaped (see the module doc).
    unsafe fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: forwarded from this function's contract.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            self.stats.sq_full_total += 1;
            match self.ring.submit() {
                Ok(_) => {}
                Err(err) if err.raw_os_error() == Some(libc::EBUSY) => {
                    // Completion queue full: the caller reaps on its next turn; we must
                    // make room now, so wait for nothing and retry.
                    std::thread::yield_now();
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Arms accepting on `listener`: multishot where the kernel has it. `listener_index`
    /// ([`LISTENER_PLAIN`] or [`LISTENER_TLS`]) comes back in the completions' `slot`.
    pub fn accept(&mut self, listener: RawFd, listener_index: u32) -> io::Result<()> {
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
        // SAFETY: accept without an address buffer points at no memory of ours.
        unsafe { self.push(&entry.user_data(user_data(OpKind::Accept, listener_index))) }
    }

    /// Cancels the accept armed for `listener_index` (shutdown).
    pub fn cancel_accept(&mut self, listener_index: u32) -> io::Result<()> {
        let entry = opcode::AsyncCancel::new(user_data(OpKind::Accept, listener_index)).build();
        // SAFETY: a cancel points at no memory.
        unsafe { self.push(&entry.user_data(user_data(OpKind::Cancel, listener_index))) }
    }

    /// Receives into `buf[..len]` of connection `slot`.
    ///
    /// # Safety
    /// `buf..buf+len` must stay valid, unmoved and otherwise unused until the completion.
    pub unsafe fn recv(&mut self, slot: u32, fd: RawFd, buf: *mut u8, len: u32) -> io::Result<()> {
        let entry = opcode::Recv::new(types::Fd(fd), buf, len).build();
        // SAFETY: forwarded from this function's contract.
        unsafe { self.push(&entry.user_data(user_data(OpKind::Recv, slot))) }
    }

    /// Writes the `count` iovecs at `iov` to connection `slot`.
    ///
    /// # Safety
    /// The iovec array and every buffer it points to must stay valid and unmoved until
    /// the completion.
    pub unsafe fn writev(
        &mut self,
        slot: u32,
        fd: RawFd,
        iov: *const libc::iovec,
        count: u32,
    ) -> io::Result<()> {
        let entry = opcode::Writev::new(types::Fd(fd), iov, count).build();
        // SAFETY: forwarded from this function's contract.
        unsafe { self.push(&entry.user_data(user_data(OpKind::Write, slot))) }
    }

    /// As [`Self::writev`], but completes at once with `-EAGAIN` (or a short count)
    /// instead of waiting when the socket has no room (`RWF_NOWAIT`): for a last message
    /// (a TLS `close_notify`) that must not keep a closing connection waiting on its peer.
    ///
    /// # Safety
    /// As [`Self::writev`].
    pub unsafe fn writev_nowait(
        &mut self,
        slot: u32,
        fd: RawFd,
        iov: *const libc::iovec,
        count: u32,
    ) -> io::Result<()> {
        let entry = opcode::Writev::new(types::Fd(fd), iov, count)
            .rw_flags(libc::RWF_NOWAIT)
            .build();
        // SAFETY: forwarded from this function's contract.
        unsafe { self.push(&entry.user_data(user_data(OpKind::Write, slot))) }
    }

    /// Closes `fd` of connection `slot`.
    pub fn close(&mut self, slot: u32, fd: RawFd) -> io::Result<()> {
        let entry = opcode::Close::new(types::Fd(fd)).build();
        // SAFETY: close points at no memory.
        unsafe { self.push(&entry.user_data(user_data(OpKind::Close, slot))) }
    }

    /// Reads this shard's eventfd into `word`.
    ///
    /// # Safety
    /// `word` must stay valid and unmoved until the completion.
    pub unsafe fn read_eventfd(&mut self, fd: RawFd, word: *mut u64) -> io::Result<()> {
        let entry = opcode::Read::new(types::Fd(fd), word.cast(), 8).build();
        // SAFETY: forwarded from this function's contract.
        unsafe { self.push(&entry.user_data(user_data(OpKind::WakeRead, 0))) }
    }

    /// Adds `*word` to another shard's eventfd, waking its loop.
    ///
    /// # Safety
    /// `word` must stay valid and unmoved until the completion.
    pub unsafe fn write_eventfd(
        &mut self,
        target: u32,
        fd: RawFd,
        word: *const u64,
    ) -> io::Result<()> {
        let entry = opcode::Write::new(types::Fd(fd), word.cast(), 8).build();
        // SAFETY: forwarded from this function's contract.
        unsafe { self.push(&entry.user_data(user_data(OpKind::WakeWrite, target))) }
    }

    /// Submits what was pushed and waits for at least one completion, or `timeout`.
    /// `timeout` zero submits without waiting.
    pub fn submit_and_wait(&mut self, timeout: Duration) -> io::Result<()> {
        self.stats.enters_total += 1;
        let result = if timeout.is_zero() {
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
            Err(err)
                if matches!(
                    err.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    /// Moves every available completion into `out`.
    pub fn reap(&mut self, out: &mut Vec<Completion>) {
        for cqe in self.ring.completion() {
            let data = cqe.user_data();
            out.push(Completion {
                kind: OpKind::from_u8((data >> 56) as u8),
                slot: data as u32,
                result: cqe.result(),
                more: cqueue::more(cqe.flags()),
            });
        }
    }
}

/// Whether the kernel behind `probe` has multishot accept: the probe lists accept, but
/// not its multishot flag, so the release decides (5.19+).
pub fn multishot_accept(probe: &io_uring::Probe) -> bool {
    probe.is_supported(opcode::AcceptMulti::CODE) && kernel_at_least(5, 19)
}

fn kernel_at_least(major: u32, minor: u32) -> bool {
    let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return false;
    };
    let mut parts = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (have_major, have_minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (have_major, have_minor) >= (major, minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trips() {
        for kind in [
            OpKind::Accept,
            OpKind::Recv,
            OpKind::Write,
            OpKind::Close,
            OpKind::WakeRead,
            OpKind::WakeWrite,
            OpKind::Cancel,
        ] {
            for slot in [0, 1, 77, u32::MAX] {
                let data = user_data(kind, slot);
                assert_eq!(OpKind::from_u8((data >> 56) as u8), Some(kind));
                assert_eq!(data as u32, slot);
            }
        }
    }
}
