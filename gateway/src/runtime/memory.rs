//! Giving freed memory back to the system. mimalloc keeps the pages a thread freed in that
//! thread's heap until the thread allocates again or collects; a shard or companion thread
//! that served a burst (a flood of connections, 20,000 short-lived rooms) and then went
//! quiet would hold them for good. Each such thread calls [`collect`] about once a second,
//! so memory returns within seconds of a burst (tests/gateway_hostile.rs checks RSS comes
//! back within 10 %).

/// How often a thread collects its heap.
pub const COLLECT_PERIOD: std::time::Duration = std::time::Duration::from_secs(1);

/// Frees the calling thread's empty pages and returns what the allocator can to the
/// system. Costs a walk of the thread's heap pages, a few microseconds on a quiet heap.
pub fn collect() {
    crate::uring::sys::mimalloc_collect();
}
