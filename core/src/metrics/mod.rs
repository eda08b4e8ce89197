//! Metrics: lock-free per-shard latency histograms, wall-clock-aligned windows of them, and
//! the Prometheus / OpenMetrics text exposition.
//!
//! Each shard owns its metric blocks and is their only writer; the scraping thread (another
//! shard) reads them and merges the per-shard [`HistogramSnapshot`]s. Every cell is an
//! [`AtomicU64`] updated with `Relaxed` ordering, so the hot path takes no lock and no
//! `unsafe` is needed. Writers use `fetch_add` rather than `store(load() + n)`: uncontended it
//! costs a few nanoseconds more, and it stays exact should two threads ever share a block.
//!
//! - [`AtomicHistogram`]: cumulative histogram over the fixed log-linear
//!   [`BUCKET_BOUNDS_NANOS`] (1-2-5 per decade, 10 µs to 60 s, plus `+Inf`).
//! - [`WindowedHistogram`]: the same per wall-clock window ([`window_bounds`]), keeping the
//!   last [`WINDOW_SLOTS`] windows, so every shard and node reports the same window, stamped
//!   with the window's end.
//! - [`Exposition`]: writes counters, gauges and histograms as Prometheus text 0.0.4 or
//!   OpenMetrics 1.0.0 ([`Format`], negotiated from the `Accept` header).
//!
//! Sans-IO like the rest of the crate: time is passed in as Unix nanoseconds.
//!
//! `histogram.rs` holds the histograms, `exposition.rs` the text formats.

mod exposition;
mod histogram;
#[cfg(test)]
mod tests;

pub use exposition::*;
pub use histogram::*;

const MICROSECOND_NANOS: u64 = 1_000;
const MILLISECOND_NANOS: u64 = 1_000_000;
const SECOND_NANOS: u64 = 1_000_000_000;
const NANOS_PER_SECOND: f64 = 1e9;
