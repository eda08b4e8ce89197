//! Safe wrappers of the few system calls the gateway makes outside the ring: descriptors
//! (eventfd, shutdown, `TCP_NODELAY`, the peer's address), resource limits, the
//! allocator's collect, and the process's transparent-huge-page switch. Every one is a plain call whose arguments are values or memory it
//! owns for the duration of the call; the reasoning is written once, here, so the rest of
//! `gateway/src` holds no `unsafe` (the ring's own is in `ring/`).
//!
//! Must not touch: the ring, connections, or any state beyond the call's arguments.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Runs `call` with `fd` borrowed (the borrow cannot outlive it).
///
/// Every `RawFd` handed to this module is a descriptor its caller owns and keeps open
/// across the call (a connection's socket while its slot lives, a listener, an eventfd of
/// the mesh): a borrow that ends with the call cannot outlive it. A descriptor that was
/// already closed makes the call fail with `EBADF` (or, if its number was reused, act on
/// another socket of this process), never touch memory: the calls below take no pointer
/// derived from the descriptor.
fn with_fd<T>(fd: RawFd, call: impl FnOnce(BorrowedFd<'_>) -> T) -> T {
    debug_assert!(fd >= 0, "a descriptor, not -1");
    // SAFETY: see above; the borrow lives only during `call`, whose result cannot hold it.
    call(unsafe { BorrowedFd::borrow_raw(fd) })
}

/// Which directions [`shutdown`] closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// No more receives: a receive in flight completes with 0.
    Read,
    /// No more sends: the peer reads end of stream after what was sent.
    Write,
    /// Both: operations in flight complete at once.
    Both,
}

/// `shutdown(2)`: makes the operations in flight on `fd` complete (a close alone would not
/// end a receive the ring holds: the op keeps the socket open). Errors (`ENOTCONN` after
/// the peer left) mean there is nothing left to shut down, and are ignored.
pub fn shutdown(fd: RawFd, how: Shutdown) {
    let how = match how {
        Shutdown::Read => std::net::Shutdown::Read,
        Shutdown::Write => std::net::Shutdown::Write,
        Shutdown::Both => std::net::Shutdown::Both,
    };
    with_fd(fd, |fd| {
        let _ = socket2::SockRef::from(&fd).shutdown(how);
    });
}

/// Sets `TCP_NODELAY` on an accepted socket (responses and frames go out whole, at once).
pub fn set_nodelay(fd: RawFd) {
    with_fd(fd, |fd| {
        let _ = socket2::SockRef::from(&fd).set_tcp_nodelay(true);
    });
}

/// The client address of a connected socket (`getpeername`).
pub fn peer_addr(fd: RawFd) -> Option<SocketAddr> {
    with_fd(fd, |fd| {
        socket2::SockRef::from(&fd).peer_addr().ok()?.as_socket()
    })
}

/// A new `eventfd(2)` (counter 0, close-on-exec).
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes no memory.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh, valid descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds 1 to an eventfd's counter (a `write(2)` of 8 bytes), waking whoever reads it;
/// for a thread that holds no ring (the companion). A full counter (`EAGAIN`) already wakes.
pub fn eventfd_add_one(fd: RawFd) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: write(2) reads the 8 bytes of `one` during the call only; `fd` is a
    // descriptor the caller keeps open (see `with_fd`).
    unsafe { libc::write(fd, one.as_ptr().cast(), one.len()) };
}

/// A resource limit's soft and hard values (`u64::MAX` for unlimited).
pub fn rlimit(resource: libc::__rlimit_resource_t) -> Option<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into memory we own, during the call only.
    if unsafe { libc::getrlimit(resource, &mut limit) } != 0 {
        return None;
    }
    Some((limit.rlim_cur, limit.rlim_max))
}

/// Frees the calling thread's empty heap pages and returns what mimalloc can to the system
/// (runtime/memory.rs says when).
pub fn mimalloc_collect() {
    // SAFETY: `mi_collect` takes no pointers and acts on the calling thread's own heap;
    // mimalloc is the global allocator of every binary that links this crate (main.rs).
    unsafe { libmimalloc_sys::mi_collect(true) };
}

/// The environment variable that, when set, leaves transparent huge pages to mimalloc (it
/// reads it itself: `MIMALLOC_ALLOW_THP=1` asks it to back its arenas with huge pages).
pub const ALLOW_THP_ENV: &str = "MIMALLOC_ALLOW_THP";

/// Turns transparent huge pages off for this process (`PR_SET_THP_DISABLE`), unless
/// [`ALLOW_THP_ENV`] is set. Returns whether they are now off.
///
/// Why: mimalloc (v3) reserves its arenas eagerly committed and, on a kernel whose THP mode
/// is `madvise` or `always`, asks for huge pages there. A 2-MiB page stays resident while
/// any of its bytes is in use and is never purged in smaller parts, so the memory a burst
/// of connections used and freed (request buffers, grown tables) stays in RSS: an idle
/// connection then costs ~600 B more RSS than its live allocations (measured:
/// bench-results/ws-idle-thp-2026-12-06/). Called first thing in `main`, before the
/// shards allocate; the kernel applies it to every later fault of the process.
pub fn disable_transparent_huge_pages() -> io::Result<bool> {
    if std::env::var_os(ALLOW_THP_ENV).is_some() {
        return Ok(false);
    }
    // SAFETY: `prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0)` takes plain integers and only sets a
    // flag on this process's memory descriptor; no memory of ours is read or written.
    let result = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(true)
}

/// Whether transparent huge pages are off for this process (`PR_GET_THP_DISABLE`).
pub fn transparent_huge_pages_disabled() -> bool {
    // SAFETY: `prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0)` takes plain integers and returns the
    // flag; no memory of ours is read or written.
    unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) == 1 }
}
