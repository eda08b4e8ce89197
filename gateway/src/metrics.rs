//! Per-shard counters and gauges, written by each shard to its own cache-line-padded
//! block of atomics once per loop turn (relaxed stores, no locks), merged at scrape into
//! Prometheus text.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// One figure a shard reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Figure {
    /// Open connections (HTTP/1.1).
    Connections,
    /// Live SSE subscribers.
    Subscribers,
    /// Live tickers: heartbeat timers plus request/idle timers.
    Tickers,
    /// Rooms held.
    Rooms,
    /// Messages sequenced.
    Publishes,
    /// Message frames written to subscribers.
    Deliveries,
    /// Writes submitted.
    Writes,
    /// Bytes written to sockets.
    BytesWritten,
    /// Subscribers cut for falling behind.
    SlowCuts,
    /// Gap notices sent.
    Gaps,
    /// Heartbeats sent.
    Heartbeats,
    /// Submission queue full events.
    SqFull,
    /// Completion queue overflow events.
    CqOverflow,
    /// Requests refused by admission control.
    Rejections,
    /// Subscribers waiting for a write.
    DirtyQueue,
}

/// How many figures there are.
pub const FIGURES: usize = Figure::DirtyQueue as usize + 1;

const META: [(&str, &str, &str); FIGURES] = [
    (
        "ringcast_connections",
        "gauge",
        "Open connections by transport.",
    ),
    ("ringcast_subscribers", "gauge", "Live SSE subscribers."),
    (
        "ringcast_tickers_live",
        "gauge",
        "Live per-connection tickers (heartbeat, request and idle timers).",
    ),
    (
        "ringcast_rooms",
        "gauge",
        "Rooms held (replicas count once per shard).",
    ),
    ("ringcast_publishes_total", "counter", "Messages sequenced."),
    (
        "ringcast_deliveries_total",
        "counter",
        "Message frames handed to subscriber writes.",
    ),
    (
        "ringcast_writes_total",
        "counter",
        "Socket writes submitted to io_uring.",
    ),
    (
        "ringcast_written_bytes_total",
        "counter",
        "Bytes written to sockets.",
    ),
    (
        "ringcast_slow_consumer_cuts_total",
        "counter",
        "Subscribers closed because the history head lapped them.",
    ),
    (
        "ringcast_gaps_total",
        "counter",
        "Gap notices sent on resume.",
    ),
    (
        "ringcast_heartbeats_total",
        "counter",
        "Heartbeat comments sent.",
    ),
    (
        "ringcast_uring_sq_full_total",
        "counter",
        "Times an io_uring submission queue was full.",
    ),
    (
        "ringcast_uring_cq_overflow_total",
        "counter",
        "io_uring completion queue overflows.",
    ),
    (
        "ringcast_admission_rejections_total",
        "counter",
        "Requests refused with 503 by admission control.",
    ),
    (
        "ringcast_write_queue_subscribers",
        "gauge",
        "Subscribers waiting for a write.",
    ),
];

/// One shard's block of figures, alone on its cache lines.
#[repr(align(128))]
#[derive(Debug, Default)]
pub struct ShardFigures {
    values: [AtomicU64; FIGURES],
}

impl ShardFigures {
    /// Stores a figure (only the owning shard writes).
    pub fn set(&self, figure: Figure, value: u64) {
        self.values[figure as usize].store(value, Ordering::Relaxed);
    }

    /// Reads a figure.
    pub fn get(&self, figure: Figure) -> u64 {
        self.values[figure as usize].load(Ordering::Relaxed)
    }
}

/// Sums a figure over shards.
pub fn total(shards: &[ShardFigures], figure: Figure) -> u64 {
    shards.iter().map(|s| s.get(figure)).sum()
}

/// Open file descriptors of this process and its soft limit.
pub fn fds() -> (u64, u64) {
    let used = std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count() as u64);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let limit = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur
    } else {
        0
    };
    (used, limit)
}

/// Renders every figure in the Prometheus text format, per shard.
pub fn render(shards: &[ShardFigures]) -> String {
    let mut out = String::with_capacity(4096);
    for (index, (name, kind, help)) in META.iter().enumerate() {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (shard, figures) in shards.iter().enumerate() {
            let value = figures.values[index].load(Ordering::Relaxed);
            if index == Figure::Connections as usize {
                let _ = writeln!(
                    out,
                    "{name}{{shard=\"{shard}\",transport=\"http1\"}} {value}"
                );
            } else {
                let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {value}");
            }
        }
    }
    let (used, limit) = fds();
    let _ = writeln!(out, "# HELP ringcast_fds_used Open file descriptors of the process.\n# TYPE ringcast_fds_used gauge\nringcast_fds_used {used}");
    let _ = writeln!(out, "# HELP ringcast_fds_limit File descriptor limit of the process.\n# TYPE ringcast_fds_limit gauge\nringcast_fds_limit {limit}");
    out
}
