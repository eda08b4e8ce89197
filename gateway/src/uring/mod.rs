//! The io_uring driver: one ring per shard (ring/), the operations ringcast submits and
//! what they hold (op.rs), the kernel check (probe.rs, doctor.rs) and the few system calls
//! made outside the ring (sys.rs). Every `unsafe` of the gateway lives in this folder.
//!
//! Buffer ownership rule: an operation owns the memory it points the kernel at (receive
//! buffer, iovec array and the frames it points to, TLS ciphertext, eventfd word) from its
//! submission until its last completion, which hands it back (tokio-uring's rule). Callers
//! never see a pointer; a caller that goes away first loses nothing (the ring keeps the
//! memory until the completion comes). The one exception holds no memory while in flight: a
//! receive from the ring's pool of provided buffers (ring/pool.rs) takes a buffer only when
//! its data comes, and its completion lends it ([`Lease`]) until the caller hands it back or
//! the ring next waits.
//!
//! Must not touch: connections, HTTP, timers or anything of the shard beyond the
//! descriptors and buffers it is handed.

pub mod doctor;
pub mod op;
pub mod probe;
pub mod ring;
pub mod sys;

pub use op::{Completion, Held, Lease, OpId, OpKind};
pub use ring::{Ring, RingStats, RING_ENTRIES};

use io_uring::opcode;

/// The accept of the plain HTTP/1.1 listener (`--listen`): its ops' key.
pub const LISTENER_PLAIN: u32 = 0;
/// The accept of the TLS listener (`--tls-listen`): its ops' key.
pub const LISTENER_TLS: u32 = 1;
// The shard indexes its per-listener accept state with these.
const _: () = assert!(LISTENER_PLAIN == 0 && LISTENER_TLS == 1);

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
