//! Per-shard figures and their exposition. Each shard writes its own cache-line-aligned
//! block of atomics once per loop turn (relaxed stores and adds, no locks); a scrape, on
//! whichever shard it lands, reads every block and renders them with
//! [`ringcast_core::metrics::Exposition`] (Prometheus text, or OpenMetrics when `Accept` asks).
//!
//! The publish→write latency is recorded per delivered frame: at the completion of the
//! write that carried it, `now − the frame's stamp at sequencing`, both from the process
//! clock. A shard records into a plain [`HistogramSnapshot`] during a turn (a bucket
//! search and two adds per frame) and adds it to its atomic histograms once per turn.

pub mod breakers;
pub mod process;

use crate::app::admission::{RefusalReason, Rejection, REFUSAL_REASONS, REJECTIONS};
use crate::mesh::virtual_conn::Transport;
use crate::shard::accept::AcceptErrno;
use ringcast_core::metrics::{
    AtomicHistogram, Exposition, Format, HistogramSnapshot, WindowedHistogram,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
    /// Reset notices sent (resume ids that could not be placed).
    Resets,
    /// Heartbeats sent.
    Heartbeats,
    /// Submission queue full events.
    SqFull,
    /// Completion queue overflow events.
    CqOverflow,
    /// Receives that found the ring's pool of provided buffers empty.
    PoolExhausted,
    /// Subscribers waiting for a write.
    DirtyQueue,
    /// Bytes submitted to writes and not yet written.
    PendingWriteBytes,
    /// Generation of the configuration in force (bumped by each SIGHUP reload).
    ConfigGeneration,
}

/// How many figures there are.
pub const FIGURES: usize = Figure::ConfigGeneration as usize + 1;

/// Whether a figure is a counter or a gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

const META: [(&str, Kind, &str); FIGURES] = [
    (
        "ringcast_connections",
        Kind::Gauge,
        "Open connections by transport.",
    ),
    ("ringcast_subscribers", Kind::Gauge, "Live SSE subscribers."),
    (
        "ringcast_tickers_live",
        Kind::Gauge,
        "Live per-connection tickers (heartbeat, request and idle timers).",
    ),
    (
        "ringcast_rooms",
        Kind::Gauge,
        "Rooms held (replicas count once per shard).",
    ),
    (
        "ringcast_publishes_total",
        Kind::Counter,
        "Messages sequenced.",
    ),
    (
        "ringcast_deliveries_total",
        Kind::Counter,
        "Message frames handed to subscriber writes.",
    ),
    (
        "ringcast_writes_total",
        Kind::Counter,
        "Socket writes submitted to io_uring.",
    ),
    (
        "ringcast_written_bytes_total",
        Kind::Counter,
        "Bytes written to sockets.",
    ),
    (
        "ringcast_slow_consumer_cuts_total",
        Kind::Counter,
        "Subscribers closed because the history head lapped them.",
    ),
    (
        "ringcast_gaps_total",
        Kind::Counter,
        "Gap notices sent on resume.",
    ),
    (
        "ringcast_resets_total",
        Kind::Counter,
        "Reset notices sent: resume ids the room could not place (another epoch, beyond the head, not an id).",
    ),
    (
        "ringcast_heartbeats_total",
        Kind::Counter,
        "Heartbeat comments sent.",
    ),
    (
        "ringcast_uring_sq_full_total",
        Kind::Counter,
        "Times an io_uring submission queue was full.",
    ),
    (
        "ringcast_uring_cq_overflow_total",
        Kind::Counter,
        "io_uring completion queue overflows.",
    ),
    (
        "ringcast_uring_pool_exhausted_total",
        Kind::Counter,
        "Receives that found no provided buffer free (received into their own buffer instead).",
    ),
    (
        "ringcast_write_queue_subscribers",
        Kind::Gauge,
        "Subscribers waiting for a write.",
    ),
    (
        "ringcast_pending_write_bytes",
        Kind::Gauge,
        "Bytes handed to socket writes and not yet written.",
    ),
    (
        "ringcast_config_generation",
        Kind::Gauge,
        "Configuration generation in force (1 at start, one more per SIGHUP reload).",
    ),
];

/// How a TLS connection accepted on a shard's ring came out of its handshake
/// (`ringcast_tls_handshakes_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum TlsHandshake {
    /// Completed on the ring: HTTP/1.1 over TLS served by the shard.
    Http1,
    /// The client offered ALPN `h2`: handed to the companion thread after the ClientHello.
    H2,
    /// Not TLS, refused by rustls, too large, too slow, or no room to hand it on.
    Failed,
}

impl TlsHandshake {
    /// Every outcome, in label order.
    pub const ALL: [TlsHandshake; 3] =
        [TlsHandshake::Http1, TlsHandshake::H2, TlsHandshake::Failed];

    /// The `result` label value.
    pub fn label(self) -> &'static str {
        match self {
            TlsHandshake::Http1 => "http1",
            TlsHandshake::H2 => "h2",
            TlsHandshake::Failed => "failed",
        }
    }
}

/// Transports a WebSocket runs over on the shard's ring, in label order
/// (`ringcast_websocket_connections{transport}`): upgraded from plain HTTP/1.1, or from
/// HTTP/1.1 over TLS, or opened by an HTTP/2 extended CONNECT (RFC 8441, the companion's).
pub const WEBSOCKET_TRANSPORTS: [&str; 3] = ["http1", "tls", "h2"];

/// What a WebSocket runs over, as labelled in [`WEBSOCKET_TRANSPORTS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum WsTransport {
    /// Upgraded from plain HTTP/1.1.
    Http1,
    /// Upgraded from HTTP/1.1 over TLS.
    Tls,
    /// An HTTP/2 stream (RFC 8441 extended CONNECT), h2c or over TLS.
    H2,
}

/// Rooms are counted by how many subscribers they have on a shard: 0, 1, 2–10, 11–100,
/// 101–1000, more.
pub const ROOM_SIZE_LABELS: [&str; 6] = ["0", "1", "2-10", "11-100", "101-1000", "1001+"];

/// The bucket of a room with `subscribers` subscribers.
pub fn room_size_bucket(subscribers: usize) -> usize {
    match subscribers {
        0 => 0,
        1 => 1,
        2..=10 => 2,
        11..=100 => 3,
        101..=1000 => 4,
        _ => 5,
    }
}

/// Quantiles exported for the last complete latency window.
const QUANTILES: [(f64, &str); 4] = [(0.5, "0.5"), (0.9, "0.9"), (0.99, "0.99"), (0.999, "0.999")];

/// How far behind `now` a scrape looks for the last complete window: a shard adds its
/// turn's samples at the end of the turn, so a window is final a turn after it ends.
const WINDOW_GRACE: Duration = Duration::from_secs(1);

/// Labels of `ringcast_rooms_freed_total`, in [`ShardFigures::set_rooms_freed`] order.
pub const ROOMS_FREED_REASONS: [&str; 2] = ["idle", "evicted"];

/// One shard's block of figures, alone on its cache lines.
#[repr(align(128))]
#[derive(Debug)]
pub struct ShardFigures {
    values: [AtomicU64; FIGURES],
    rejections: [AtomicU64; REJECTIONS],
    /// 503s counted by the companion thread (added to `rejections` at exposition).
    companion_rejections: [AtomicU64; REJECTIONS],
    /// Other refusals, added as they happen by the shard and its companion (rare enough
    /// that a relaxed add each costs nothing measurable).
    refusals: [AtomicU64; REFUSAL_REASONS],
    room_sizes: [AtomicU64; ROOM_SIZE_LABELS.len()],
    /// Rooms freed, by [`ROOMS_FREED_REASONS`].
    rooms_freed: [AtomicU64; ROOMS_FREED_REASONS.len()],
    /// Open connections of the companion transports ([`Transport`], kept by the
    /// shard's companion thread).
    transports: [AtomicU64; Transport::ALL.len()],
    /// TLS connections by handshake outcome ([`TlsHandshake`], added by the shard).
    tls_handshakes: [AtomicU64; TlsHandshake::ALL.len()],
    /// Open WebSockets by [`WEBSOCKET_TRANSPORTS`].
    websockets: [AtomicU64; WEBSOCKET_TRANSPORTS.len()],
    /// WebSockets opened (upgrades answered `101`) by [`WEBSOCKET_TRANSPORTS`].
    websockets_total: [AtomicU64; WEBSOCKET_TRANSPORTS.len()],
    /// Idempotency keys held and replays (idempotency.rs).
    pub idempotency: crate::app::idempotency::Figures,
    /// Failed accepts by errno ([`AcceptErrno`], added by the shard).
    accept_errors: [AtomicU64; AcceptErrno::ALL.len()],
    /// Times the shard paused accepting for lack of resources.
    accept_pauses: AtomicU64,
    /// Listeners of the shard whose accepting is paused now.
    accept_paused: AtomicU64,
    /// Publish→write latency since start.
    pub latency: AtomicHistogram,
    /// Publish→write latency per wall-clock-aligned 10 s window.
    pub latency_window: WindowedHistogram,
}

impl Default for ShardFigures {
    fn default() -> Self {
        Self {
            values: Default::default(),
            rejections: Default::default(),
            companion_rejections: Default::default(),
            refusals: Default::default(),
            room_sizes: Default::default(),
            rooms_freed: Default::default(),
            transports: Default::default(),
            tls_handshakes: Default::default(),
            websockets: Default::default(),
            websockets_total: Default::default(),
            idempotency: Default::default(),
            accept_errors: Default::default(),
            accept_pauses: AtomicU64::new(0),
            accept_paused: AtomicU64::new(0),
            latency: AtomicHistogram::new(),
            latency_window: WindowedHistogram::new(ringcast_core::metrics::WINDOW_DEFAULT),
        }
    }
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

    /// Stores the rejection count of one reason.
    pub fn set_rejections(&self, reason: Rejection, value: u64) {
        self.rejections[reason as usize].store(value, Ordering::Relaxed);
    }

    /// Counts one 503 the companion thread made (the shard stores its own with
    /// [`Self::set_rejections`]).
    pub fn add_companion_rejection(&self, reason: Rejection) {
        self.companion_rejections[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one refusal (not a 503).
    pub fn add_refusal(&self, reason: RefusalReason) {
        self.refusals[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Refusals of one reason so far.
    pub fn refusals(&self, reason: RefusalReason) -> u64 {
        self.refusals[reason as usize].load(Ordering::Relaxed)
    }

    /// Stores the room counts per size bucket ([`ROOM_SIZE_LABELS`]).
    pub fn set_room_sizes(&self, counts: &[u64; ROOM_SIZE_LABELS.len()]) {
        for (cell, count) in self.room_sizes.iter().zip(counts) {
            cell.store(*count, Ordering::Relaxed);
        }
    }

    /// Stores the rooms freed so far, by reason ([`ROOMS_FREED_REASONS`]).
    pub fn set_rooms_freed(&self, counts: [u64; ROOMS_FREED_REASONS.len()]) {
        for (cell, count) in self.rooms_freed.iter().zip(counts) {
            cell.store(count, Ordering::Relaxed);
        }
    }

    /// One more open connection of `transport` (the companion thread counts its own).
    pub fn transport_opened(&self, transport: Transport) {
        self.transports[transport as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// One fewer open connection of `transport`.
    pub fn transport_closed(&self, transport: Transport) {
        self.transports[transport as usize].fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts one TLS connection's handshake outcome.
    pub fn add_tls_handshake(&self, outcome: TlsHandshake) {
        self.tls_handshakes[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// One more open WebSocket over `transport`, counted in the total too.
    pub fn websocket_opened(&self, transport: WsTransport) {
        self.websockets[transport as usize].fetch_add(1, Ordering::Relaxed);
        self.websockets_total[transport as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// One fewer open WebSocket over `transport`.
    pub fn websocket_closed(&self, transport: WsTransport) {
        self.websockets[transport as usize].fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts one failed accept; `paused` when it paused accepting.
    pub fn add_accept_error(&self, errno: AcceptErrno, paused: bool) {
        self.accept_errors[errno as usize].fetch_add(1, Ordering::Relaxed);
        if paused {
            self.accept_pauses.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Stores how many of the shard's listeners have accepting paused.
    pub fn set_accept_paused(&self, listeners: u64) {
        self.accept_paused.store(listeners, Ordering::Relaxed);
    }

    /// Adds a turn's latency samples, taken at `now_unix_nanos`.
    pub fn add_latency(&self, now_unix_nanos: u64, turn: &HistogramSnapshot) {
        self.latency.add(turn);
        self.latency_window.add(now_unix_nanos, turn);
    }
}

/// Sums a figure over shards.
pub fn total(shards: &[ShardFigures], figure: Figure) -> u64 {
    shards.iter().map(|s| s.get(figure)).sum()
}

/// Open file descriptors of this process and its soft limit.
pub fn fds() -> (u64, u64) {
    let used = std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count() as u64);
    let limit = crate::uring::sys::rlimit(libc::RLIMIT_NOFILE).map_or(0, |(soft, _)| soft);
    (used, limit)
}

/// The per-shard part of [`process::render`]: figures (label `shard`), rejections by reason, room
/// size buckets, and the latency histograms merged over shards.
pub fn expose_shards(out: &mut Exposition, shards: &[ShardFigures], now_unix_nanos: u64) {
    let mut labels = [String::new()];
    for (index, (name, kind, help)) in META.iter().enumerate() {
        for (shard, figures) in shards.iter().enumerate() {
            labels[0] = shard.to_string();
            let value = figures.values[index].load(Ordering::Relaxed) as f64;
            let shard_label = ("shard", labels[0].as_str());
            match kind {
                Kind::Counter => out.counter(name, help, &[shard_label], value),
                Kind::Gauge if index == Figure::Connections as usize => {
                    out.gauge(name, help, &[shard_label, ("transport", "http1")], value);
                    for transport in Transport::ALL {
                        let open = figures.transports[transport as usize].load(Ordering::Relaxed);
                        out.gauge(
                            name,
                            help,
                            &[shard_label, ("transport", transport.label())],
                            open as f64,
                        );
                    }
                }
                Kind::Gauge => out.gauge(name, help, &[shard_label], value),
            }
        }
    }
    for (shard, figures) in shards.iter().enumerate() {
        labels[0] = shard.to_string();
        for reason in Rejection::ALL {
            let value = figures.rejections[reason as usize].load(Ordering::Relaxed)
                + figures.companion_rejections[reason as usize].load(Ordering::Relaxed);
            out.counter(
                "ringcast_admission_rejections_total",
                "Requests and connections refused with 503, by reason.",
                &[("shard", &labels[0]), ("reason", reason.label())],
                value as f64,
            );
        }
    }
    for (shard, figures) in shards.iter().enumerate() {
        labels[0] = shard.to_string();
        for reason in RefusalReason::ALL {
            out.counter(
                "ringcast_refusals_total",
                "Requests refused with a status other than 503 (401, 403, 408, 4xx for malformed or oversized requests, 429) and TLS connections closed before a request (tls_*), by reason.",
                &[("shard", &labels[0]), ("reason", reason.label())],
                figures.refusals(reason) as f64,
            );
        }
    }
    for (shard, figures) in shards.iter().enumerate() {
        labels[0] = shard.to_string();
        for outcome in TlsHandshake::ALL {
            out.counter(
                "ringcast_tls_handshakes_total",
                "TLS connections accepted on the shard's ring, by handshake outcome (http1: served on the ring; h2: handed to the companion thread; failed).",
                &[("shard", &labels[0]), ("result", outcome.label())],
                figures.tls_handshakes[outcome as usize].load(Ordering::Relaxed) as f64,
            );
        }
    }
    for (shard, figures) in shards.iter().enumerate() {
        labels[0] = shard.to_string();
        for (index, transport) in WEBSOCKET_TRANSPORTS.iter().enumerate() {
            out.gauge(
                "ringcast_websocket_connections",
                "Open WebSocket connections on the shard's ring, by the transport they were upgraded from.",
                &[("shard", labels[0].as_str()), ("transport", transport)],
                figures.websockets[index].load(Ordering::Relaxed) as f64,
            );
        }
    }
    for (shard, figures) in shards.iter().enumerate() {
        labels[0] = shard.to_string();
        for (index, transport) in WEBSOCKET_TRANSPORTS.iter().enumerate() {
            out.counter(
                "ringcast_websocket_upgrades_total",
                "WebSocket upgrades answered 101 (HTTP/2: 200) on the shard's ring, by transport.",
                &[("shard", labels[0].as_str()), ("transport", transport)],
                figures.websockets_total[index].load(Ordering::Relaxed) as f64,
            );
        }
    }
    for (shard, figures) in shards.iter().enumerate() {
        labels[0] = shard.to_string();
        for errno in AcceptErrno::ALL {
            out.counter(
                "ringcast_accept_errors_total",
                "Failed accepts, by errno (EMFILE, ENFILE, ENOBUFS, ENOMEM pause accepting; other).",
                &[("shard", &labels[0]), ("errno", errno.label())],
                figures.accept_errors[errno as usize].load(Ordering::Relaxed) as f64,
            );
        }
        out.counter(
            "ringcast_accept_pauses_total",
            "Times the shard paused accepting because the process was out of descriptors or memory.",
            &[("shard", &labels[0])],
            figures.accept_pauses.load(Ordering::Relaxed) as f64,
        );
        out.gauge(
            "ringcast_accept_paused",
            "Listeners of the shard not accepting now for lack of descriptors or memory.",
            &[("shard", &labels[0])],
            figures.accept_paused.load(Ordering::Relaxed) as f64,
        );
    }
    for (shard, figures) in shards.iter().enumerate() {
        labels[0] = shard.to_string();
        for (bucket, size) in ROOM_SIZE_LABELS.iter().enumerate() {
            out.gauge(
                "ringcast_rooms_by_subscribers",
                "Rooms by how many subscribers they have on the shard (updated once a second).",
                &[("shard", &labels[0]), ("subscribers", size)],
                figures.room_sizes[bucket].load(Ordering::Relaxed) as f64,
            );
        }
    }
    for (shard, figures) in shards.iter().enumerate() {
        labels[0] = shard.to_string();
        for (reason, count) in ROOMS_FREED_REASONS.iter().zip(&figures.rooms_freed) {
            out.counter(
                "ringcast_rooms_freed_total",
                "Rooms freed with their history: idle (no subscriber and no publish for --room-idle-timeout) or evicted (least recently used unfollowed room, to make place at --max-rooms).",
                &[("shard", &labels[0]), ("reason", reason)],
                count.load(Ordering::Relaxed) as f64,
            );
        }
    }
    let mut total = HistogramSnapshot::EMPTY;
    for figures in shards {
        total.merge(&figures.latency.snapshot());
    }
    out.histogram(
        "ringcast_publish_to_write_seconds",
        "Time from a message's sequencing to the completion of the write that carried it, per delivered frame.",
        &[],
        &total,
    );
    let grace = WINDOW_GRACE.as_nanos() as u64;
    let mut window: Option<(u64, HistogramSnapshot)> = None;
    for figures in shards {
        let Some((end, snapshot)) = figures
            .latency_window
            .last_complete(now_unix_nanos.saturating_sub(grace))
        else {
            window = None;
            break;
        };
        let merged = window.get_or_insert((end, HistogramSnapshot::EMPTY));
        merged.1.merge(&snapshot);
    }
    if let Some((end, snapshot)) = window {
        out.gauge_at(
            "ringcast_publish_to_write_window_deliveries",
            "Deliveries in the last complete 10 s wall-clock window (stamped with its end).",
            &[],
            snapshot.count() as f64,
            end,
        );
        for (q, label) in QUANTILES {
            if let Some(value) = snapshot.quantile(q) {
                out.gauge_at(
                    "ringcast_publish_to_write_window_seconds",
                    "Publish-to-write latency quantiles over the last complete 10 s wall-clock window (stamped with its end).",
                    &[("quantile", label)],
                    value,
                    end,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_size_buckets_table() {
        let cases = [
            (0, "0"),
            (1, "1"),
            (2, "2-10"),
            (10, "2-10"),
            (11, "11-100"),
            (100, "11-100"),
            (101, "101-1000"),
            (1000, "101-1000"),
            (1001, "1001+"),
        ];
        for (subscribers, label) in cases {
            assert_eq!(
                ROOM_SIZE_LABELS[room_size_bucket(subscribers)],
                label,
                "{subscribers}"
            );
        }
    }

    #[test]
    fn shards_merge_into_one_histogram_and_one_window() {
        const SECOND: u64 = 1_000_000_000;
        let start = 1_767_225_600 * SECOND;
        let shards = [ShardFigures::default(), ShardFigures::default()];
        shards[0].set(Figure::Deliveries, 3);
        shards[1].set(Figure::Deliveries, 4);
        shards[1].set_rejections(Rejection::PerIpLimit, 2);
        shards[1].add_companion_rejection(Rejection::NewConnectionRate);
        shards[0].add_refusal(RefusalReason::TokenExpired);
        shards[1].add_tls_handshake(TlsHandshake::H2);
        let mut turn = HistogramSnapshot::EMPTY;
        turn.record(2_000_000);
        shards[0].add_latency(start + SECOND, &turn);
        turn.record(4_000_000);
        shards[1].add_latency(start + 2 * SECOND, &turn);
        let mut out = Exposition::new(Format::Prometheus);
        expose_shards(&mut out, &shards, start + 12 * SECOND);
        let text = out.finish();
        assert!(
            text.contains("ringcast_deliveries_total{shard=\"1\"} 4\n"),
            "{text}"
        );
        assert!(text.contains(
            "ringcast_admission_rejections_total{shard=\"1\",reason=\"per_ip_limit\"} 2\n"
        ));
        assert!(text.contains(
            "ringcast_admission_rejections_total{shard=\"1\",reason=\"new_connection_rate\"} 1\n"
        ));
        assert!(
            text.contains("ringcast_refusals_total{shard=\"0\",reason=\"token_expired\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("ringcast_tls_handshakes_total{shard=\"1\",result=\"h2\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("ringcast_publish_to_write_seconds_count 3\n"),
            "{text}"
        );
        // The window [start, start+10 s) is complete at start+11 s (12 s minus the grace),
        // stamped with its end in milliseconds.
        let end_ms = (start + 10 * SECOND) / 1_000_000;
        assert!(
            text.contains(&format!(
                "ringcast_publish_to_write_window_deliveries 3 {end_ms}\n"
            )),
            "{text}"
        );
        assert!(text.contains("ringcast_publish_to_write_window_seconds{quantile=\"0.99\"}"));
    }
}
