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

use std::fmt::Write as _;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::window_bounds;

const MICROSECOND_NANOS: u64 = 1_000;
const MILLISECOND_NANOS: u64 = 1_000_000;
const SECOND_NANOS: u64 = 1_000_000_000;
const NANOS_PER_SECOND: f64 = 1e9;

/// Upper bounds (inclusive, Prometheus `le`) of the finite histogram buckets, in
/// nanoseconds: 1-2-5 per decade from 10 µs to 50 s, then 60 s to close the range at one
/// minute. Anything slower lands in the `+Inf` bucket.
pub const BUCKET_BOUNDS_NANOS: [u64; 22] = [
    10 * MICROSECOND_NANOS,
    20 * MICROSECOND_NANOS,
    50 * MICROSECOND_NANOS,
    100 * MICROSECOND_NANOS,
    200 * MICROSECOND_NANOS,
    500 * MICROSECOND_NANOS,
    MILLISECOND_NANOS,
    2 * MILLISECOND_NANOS,
    5 * MILLISECOND_NANOS,
    10 * MILLISECOND_NANOS,
    20 * MILLISECOND_NANOS,
    50 * MILLISECOND_NANOS,
    100 * MILLISECOND_NANOS,
    200 * MILLISECOND_NANOS,
    500 * MILLISECOND_NANOS,
    SECOND_NANOS,
    2 * SECOND_NANOS,
    5 * SECOND_NANOS,
    10 * SECOND_NANOS,
    20 * SECOND_NANOS,
    50 * SECOND_NANOS,
    60 * SECOND_NANOS,
];

/// Number of buckets: one per finite bound plus `+Inf`.
pub const BUCKETS_LEN: usize = BUCKET_BOUNDS_NANOS.len() + 1;

const _: () = {
    assert!(BUCKET_BOUNDS_NANOS[0] > 0);
    let mut index = 1;
    while index < BUCKET_BOUNDS_NANOS.len() {
        assert!(
            BUCKET_BOUNDS_NANOS[index - 1] < BUCKET_BOUNDS_NANOS[index],
            "bucket bounds must increase"
        );
        index += 1;
    }
};

/// Default length of a [`WindowedHistogram`] window.
pub const WINDOW_DEFAULT: Duration = Duration::from_secs(10);
/// Windows a [`WindowedHistogram`] keeps (the current one and five complete ones: a minute
/// at the default length), so a scrape that comes a few windows late still finds its data.
pub const WINDOW_SLOTS: usize = 6;

/// Attempts a reader makes when it meets a slot being reset. A reset is about 25 stores; a
/// reader meeting one this many times in a row races a writer that resets the same slot
/// again and again, which only happens when windows are far shorter than a scrape takes.
const READ_ATTEMPTS_MAX: usize = 16;
/// A slot's start while its writer resets it. Readers never ask for this window: the
/// window before the current one always starts at least one window length below it.
const SLOT_RESETTING: u64 = u64::MAX;

const _: () = assert!(
    WINDOW_SLOTS >= 2,
    "one current and at least one complete window"
);

/// Index of the bucket holding `value_ns`: the first bound `>= value_ns`, else `+Inf`.
fn bucket_index(value_ns: u64) -> usize {
    BUCKET_BOUNDS_NANOS.partition_point(|&bound| bound < value_ns)
}

fn bound_seconds(index: usize) -> f64 {
    BUCKET_BOUNDS_NANOS[index] as f64 / NANOS_PER_SECOND
}

/// A latency histogram over [`BUCKET_BOUNDS_NANOS`], written by one shard and read by any
/// thread without locks.
///
/// Cumulative since creation, like a Prometheus histogram. The sum is kept in whole
/// nanoseconds and wraps after 2^64 ns (584 years of summed latency; 213 days at a million
/// 1 ms samples a second); Prometheus reads the wrap as a counter reset.
#[derive(Debug)]
pub struct AtomicHistogram {
    buckets: [AtomicU64; BUCKETS_LEN],
    sum_nanos: AtomicU64,
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl AtomicHistogram {
    /// An empty histogram (`const`, so it can live in a `static`).
    pub const fn new() -> Self {
        Self {
            buckets: [const { AtomicU64::new(0) }; BUCKETS_LEN],
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Records one value in nanoseconds: a bucket search over 22 bounds and two relaxed
    /// atomic adds.
    pub fn record(&self, value_ns: u64) {
        self.buckets[bucket_index(value_ns)].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(value_ns, Ordering::Relaxed);
    }

    /// Adds every sample of `snapshot` (relaxed adds, skipping empty buckets): a shard can
    /// record into a plain [`HistogramSnapshot`] on its hot path and add it here once per
    /// loop turn, so the per-sample cost is a bucket search and two plain adds.
    pub fn add(&self, snapshot: &HistogramSnapshot) {
        for (cell, count) in self.buckets.iter().zip(&snapshot.buckets) {
            if *count != 0 {
                cell.fetch_add(*count, Ordering::Relaxed);
            }
        }
        if snapshot.sum_nanos != 0 {
            self.sum_nanos
                .fetch_add(snapshot.sum_nanos, Ordering::Relaxed);
        }
    }

    /// The current contents as plain data.
    ///
    /// Read while the writer records, the snapshot may miss the latest samples, and its sum
    /// and buckets may disagree by the samples recorded during the read. Its count is the sum
    /// of its buckets, so `_count` always equals the `+Inf` bucket; each bucket (hence the
    /// count) never decreases from one snapshot to the next.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut buckets = [0; BUCKETS_LEN];
        for (count, cell) in buckets.iter_mut().zip(&self.buckets) {
            *count = cell.load(Ordering::Relaxed);
        }
        HistogramSnapshot {
            buckets,
            sum_nanos: self.sum_nanos.load(Ordering::Relaxed),
        }
    }

    /// Zeroes every cell (relaxed stores; the caller orders them against readers).
    fn reset(&self) {
        for cell in &self.buckets {
            cell.store(0, Ordering::Relaxed);
        }
        self.sum_nanos.store(0, Ordering::Relaxed);
    }
}

/// The contents of a histogram at one moment: plain data, mergeable across shards.
#[must_use]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Per-bucket (not cumulative) counts; the last one is `+Inf`.
    buckets: [u64; BUCKETS_LEN],
    sum_nanos: u64,
}

impl Default for HistogramSnapshot {
    fn default() -> Self {
        Self::EMPTY
    }
}

impl HistogramSnapshot {
    /// A snapshot with no samples.
    pub const EMPTY: Self = Self {
        buckets: [0; BUCKETS_LEN],
        sum_nanos: 0,
    };

    /// Adds one value in nanoseconds (for building snapshots without atomics).
    pub fn record(&mut self, value_ns: u64) {
        let index = bucket_index(value_ns);
        self.buckets[index] = self.buckets[index].wrapping_add(1);
        self.sum_nanos = self.sum_nanos.wrapping_add(value_ns);
    }

    /// Forgets every sample.
    pub fn clear(&mut self) {
        *self = Self::EMPTY;
    }

    /// Adds `other`'s samples to this one: merging the snapshots of several shards gives
    /// the snapshot of all their samples recorded into one histogram.
    pub fn merge(&mut self, other: &HistogramSnapshot) {
        for (count, other_count) in self.buckets.iter_mut().zip(&other.buckets) {
            *count = count.wrapping_add(*other_count);
        }
        self.sum_nanos = self.sum_nanos.wrapping_add(other.sum_nanos);
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.buckets
            .iter()
            .fold(0u64, |total, count| total.wrapping_add(*count))
    }

    /// Sum of the samples in nanoseconds.
    pub fn sum_nanos(&self) -> u64 {
        self.sum_nanos
    }

    /// Sum of the samples in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_nanos as f64 / NANOS_PER_SECOND
    }

    /// Per-bucket (not cumulative) counts, in the order of [`BUCKET_BOUNDS_NANOS`], then
    /// `+Inf`.
    pub fn bucket_counts(&self) -> &[u64; BUCKETS_LEN] {
        &self.buckets
    }

    /// `(upper bound in seconds, cumulative count)` per bucket, as exposed in `_bucket`
    /// samples; the last bound is `f64::INFINITY` and its count is [`Self::count`].
    pub fn cumulative_buckets(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        let mut cumulative = 0u64;
        self.buckets.iter().enumerate().map(move |(index, count)| {
            cumulative = cumulative.wrapping_add(*count);
            let bound = if index < BUCKET_BOUNDS_NANOS.len() {
                bound_seconds(index)
            } else {
                f64::INFINITY
            };
            (bound, cumulative)
        })
    }

    /// The `q` quantile in seconds, estimated as Prometheus' `histogram_quantile` does: find
    /// the bucket holding rank `q * count` and interpolate linearly between its bounds (the
    /// first bucket's lower bound is 0). A rank in the `+Inf` bucket reads as the highest
    /// finite bound (60 s).
    ///
    /// `None` when there are no samples or `q` is outside `0.0..=1.0` (or NaN).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if !(0.0..=1.0).contains(&q) {
            return None;
        }
        let count = self.count();
        if count == 0 {
            return None;
        }
        let last_bound = bound_seconds(BUCKET_BOUNDS_NANOS.len() - 1);
        let rank = q * count as f64;
        let mut below = 0u64;
        for (index, &in_bucket) in self.buckets.iter().enumerate() {
            if in_bucket == 0 {
                continue;
            }
            let through = below + in_bucket;
            if through as f64 >= rank {
                if index == BUCKET_BOUNDS_NANOS.len() {
                    return Some(last_bound);
                }
                let lower = if index == 0 {
                    0.0
                } else {
                    bound_seconds(index - 1)
                };
                let upper = bound_seconds(index);
                let fraction = (rank - below as f64) / in_bucket as f64;
                return Some(lower + (upper - lower) * fraction);
            }
            below = through;
        }
        // Unreachable: the last non-empty bucket holds rank `count >= q * count`.
        Some(last_bound)
    }
}

/// One ring slot: the window it holds and that window's histogram.
#[derive(Debug)]
struct WindowSlot {
    /// Start of the window held, [`SLOT_RESETTING`] while the writer resets it. Starts at 0:
    /// an empty window at the epoch, which is what an untouched slot holds.
    start_unix_nanos: AtomicU64,
    histogram: AtomicHistogram,
}

/// A latency histogram per wall-clock window, keeping the last [`WINDOW_SLOTS`] windows.
///
/// Windows are aligned to multiples of the window length since the Unix epoch
/// ([`window_bounds`]), so shards and nodes that record at the same wall times put samples
/// in the same windows, and [`Self::last_complete`] returns the same window everywhere:
/// merge the shards' snapshots and export them stamped with the window's end.
///
/// One writer (the owning shard) calls [`Self::record`]; any thread may read. When a sample
/// opens a new window in a slot, the writer resets the slot, marking it as being reset
/// while it does (a seqlock on the slot's window start), so a reader never mixes two
/// windows. A sample whose window has already been replaced in its slot (a `now` more than
/// [`WINDOW_SLOTS`] − 1 windows behind) is dropped.
///
/// A sample recorded with a `now` that lags the reader's `now` can land in a window the
/// reader already reported complete; with one process clock read each loop turn the lag is
/// one turn. Readers that need the window frozen can pass `now` minus a grace period.
#[derive(Debug)]
pub struct WindowedHistogram {
    window: Duration,
    window_nanos: u64,
    slots: [WindowSlot; WINDOW_SLOTS],
}

impl Default for WindowedHistogram {
    fn default() -> Self {
        Self::new(WINDOW_DEFAULT)
    }
}

impl WindowedHistogram {
    /// Empty windows of length `window` (e.g. [`WINDOW_DEFAULT`]).
    ///
    /// # Panics
    ///
    /// If `window` is zero or longer than `u64::MAX` nanoseconds.
    pub fn new(window: Duration) -> Self {
        assert!(!window.is_zero(), "window must be non-zero");
        let window_nanos =
            u64::try_from(window.as_nanos()).expect("window must fit in u64 nanoseconds");
        Self {
            window,
            window_nanos,
            slots: std::array::from_fn(|_| WindowSlot {
                start_unix_nanos: AtomicU64::new(0),
                histogram: AtomicHistogram::new(),
            }),
        }
    }

    /// The window length.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Records `value_ns` in the window holding `unix_nanos_now`, resetting the window's slot
    /// first if it still holds an older window.
    pub fn record(&self, unix_nanos_now: u64, value_ns: u64) {
        let (start, _) = window_bounds(unix_nanos_now, self.window);
        let slot = self.slot(start);
        let held = slot.start_unix_nanos.load(Ordering::Relaxed);
        if held > start {
            // The slot already holds a newer window: this window is gone.
            return;
        }
        if held < start {
            slot.start_unix_nanos
                .store(SLOT_RESETTING, Ordering::Relaxed);
            // Orders the marker before the zeroing: a reader that sees any zeroed cell then
            // sees the marker (or the new start) on its second read of the start.
            fence(Ordering::Release);
            slot.histogram.reset();
            slot.start_unix_nanos.store(start, Ordering::Release);
        }
        slot.histogram.record(value_ns);
    }

    /// Adds every sample of `snapshot` to the window holding `unix_nanos_now`, as
    /// [`Self::record`] does for one (a shard batches a loop turn's samples this way).
    pub fn add(&self, unix_nanos_now: u64, snapshot: &HistogramSnapshot) {
        let (start, _) = window_bounds(unix_nanos_now, self.window);
        let slot = self.slot(start);
        let held = slot.start_unix_nanos.load(Ordering::Relaxed);
        if held > start {
            return;
        }
        if held < start {
            slot.start_unix_nanos
                .store(SLOT_RESETTING, Ordering::Relaxed);
            // As in `record`.
            fence(Ordering::Release);
            slot.histogram.reset();
            slot.start_unix_nanos.store(start, Ordering::Release);
        }
        slot.histogram.add(snapshot);
    }

    /// The most recent complete window as of `unix_nanos_now` (the one before the window
    /// holding `now`): `(window end in Unix nanoseconds, its samples)`. The end is the
    /// timestamp to export. A window in which nothing was recorded is returned empty.
    ///
    /// `None` before the first window since the epoch is complete, when the window's slot
    /// already holds a newer window (the reader's `now` is behind the writer's by
    /// [`WINDOW_SLOTS`] − 1 windows), or when the slot is reset under the reader
    /// on each of a bounded number of attempts.
    pub fn last_complete(&self, unix_nanos_now: u64) -> Option<(u64, HistogramSnapshot)> {
        let (current_start, _) = window_bounds(unix_nanos_now, self.window);
        let start = current_start.checked_sub(self.window_nanos)?;
        self.read_window(start)
            .map(|snapshot| (current_start, snapshot))
    }

    fn slot(&self, start: u64) -> &WindowSlot {
        // Consecutive windows take consecutive slots.
        let index = (start / self.window_nanos) % WINDOW_SLOTS as u64;
        &self.slots[index as usize]
    }

    /// The samples of the window starting at `start`, read seqlock-style.
    fn read_window(&self, start: u64) -> Option<HistogramSnapshot> {
        let slot = self.slot(start);
        for _ in 0..READ_ATTEMPTS_MAX {
            let held = slot.start_unix_nanos.load(Ordering::Acquire);
            if held == SLOT_RESETTING {
                std::hint::spin_loop();
                continue;
            }
            if held < start {
                // Nothing was recorded in the window: the slot still holds an older one.
                return Some(HistogramSnapshot::EMPTY);
            }
            if held > start {
                return None;
            }
            let snapshot = slot.histogram.snapshot();
            // Orders the cell reads before the second read of the start (see `record`).
            fence(Ordering::Acquire);
            if slot.start_unix_nanos.load(Ordering::Relaxed) == held {
                return Some(snapshot);
            }
        }
        None
    }
}

/// A text exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4.
    Prometheus,
    /// OpenMetrics text format 1.0.0.
    OpenMetrics,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric family: metadata and the sample lines written so far.
#[derive(Debug)]
struct Family {
    /// The family name as OpenMetrics has it (a counter's without `_total`).
    name: String,
    kind: Kind,
    help: String,
    samples: String,
}

/// A sample value: integers print exactly, floats per [`write_float`].
#[derive(Debug, Clone, Copy)]
enum Number {
    Integer(u64),
    Float(f64),
}

/// A Prometheus text 0.0.4 or OpenMetrics 1.0.0 exposition, built one metric at a time.
///
/// Samples are buffered per metric family, so calls for several families may interleave
/// (e.g. all of shard 0's metrics, then all of shard 1's): each family is written once, with
/// its `HELP` and `TYPE` lines, in the order of its first call, when [`Self::finish`] is
/// called. A family's type and help text are those of its first call.
///
/// Names follow the Prometheus rules: a metric name matches `[a-zA-Z_:][a-zA-Z0-9_:]*`, a
/// label name `[a-zA-Z_][a-zA-Z0-9_]*` not starting with `__`. A counter's name may be
/// given with or without `_total`: the samples end in `_total`, and so does the family
/// name in Prometheus text, while OpenMetrics names the family without it. Label values
/// are escaped (`\\`, `\"`, `\n`).
///
/// Calls that break these rules (a bad name, a family reused with another type, a label
/// name repeated, `le` on a histogram, a negative or NaN counter) are programming errors
/// and panic.
#[derive(Debug)]
pub struct Exposition {
    format: Format,
    /// Families in order of first use; tens of them, so found by a linear search.
    families: Vec<Family>,
}

impl Exposition {
    /// An empty exposition in `format`.
    pub fn new(format: Format) -> Self {
        Self {
            format,
            families: Vec::new(),
        }
    }

    /// The format being written.
    pub fn format(&self) -> Format {
        self.format
    }

    /// A counter sample: `value` is the total since the process started.
    ///
    /// # Panics
    ///
    /// If `value` is negative or NaN, or on the naming errors listed on [`Exposition`].
    pub fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        assert!(
            value >= 0.0,
            "counter {name} must be non-negative, got {value}"
        );
        let base = name.strip_suffix("_total").unwrap_or(name);
        let format = self.format;
        let samples = self.family(base, Kind::Counter, help, labels);
        write_sample(
            samples,
            format,
            base,
            "_total",
            labels,
            None,
            Number::Float(value),
            None,
        );
    }

    /// A gauge sample.
    ///
    /// # Panics
    ///
    /// On the naming errors listed on [`Exposition`].
    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.gauge_sample(name, help, labels, value, None);
    }

    /// A gauge sample with an explicit timestamp (e.g. a windowed value stamped with its
    /// window's end): integer milliseconds in Prometheus text, seconds in OpenMetrics.
    ///
    /// # Panics
    ///
    /// On the naming errors listed on [`Exposition`].
    pub fn gauge_at(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        value: f64,
        timestamp_unix_nanos: u64,
    ) {
        self.gauge_sample(name, help, labels, value, Some(timestamp_unix_nanos));
    }

    /// A histogram: cumulative `_bucket` samples (one per bound and `+Inf`, `le` in
    /// seconds), then `_sum` (seconds) and `_count`.
    ///
    /// # Panics
    ///
    /// If `labels` has `le`, or on the naming errors listed on [`Exposition`].
    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        snapshot: &HistogramSnapshot,
    ) {
        self.histogram_sample(name, help, labels, snapshot, None);
    }

    /// A histogram whose samples all carry `timestamp_unix_nanos` (e.g. a
    /// [`WindowedHistogram`] window stamped with its end); see [`Self::histogram`] and
    /// [`Self::gauge_at`].
    ///
    /// # Panics
    ///
    /// As [`Self::histogram`].
    pub fn histogram_at(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        snapshot: &HistogramSnapshot,
        timestamp_unix_nanos: u64,
    ) {
        self.histogram_sample(name, help, labels, snapshot, Some(timestamp_unix_nanos));
    }

    /// The exposition text: every family with its metadata, and `# EOF` for OpenMetrics.
    #[must_use]
    pub fn finish(self) -> String {
        let capacity = self
            .families
            .iter()
            .map(|family| family.samples.len() + family.help.len() + 2 * family.name.len() + 32)
            .sum::<usize>()
            + 6;
        let mut out = String::with_capacity(capacity);
        for family in &self.families {
            match self.format {
                Format::Prometheus => {
                    let suffix = if family.kind == Kind::Counter {
                        "_total"
                    } else {
                        ""
                    };
                    if !family.help.is_empty() {
                        out.push_str("# HELP ");
                        out.push_str(&family.name);
                        out.push_str(suffix);
                        out.push(' ');
                        escape_into(&mut out, &family.help, false);
                        out.push('\n');
                    }
                    out.push_str("# TYPE ");
                    out.push_str(&family.name);
                    out.push_str(suffix);
                    out.push(' ');
                    out.push_str(family.kind.as_str());
                    out.push('\n');
                }
                Format::OpenMetrics => {
                    // OpenMetrics: TYPE before HELP ("SHOULD be TYPE, UNIT, HELP").
                    out.push_str("# TYPE ");
                    out.push_str(&family.name);
                    out.push(' ');
                    out.push_str(family.kind.as_str());
                    out.push('\n');
                    if !family.help.is_empty() {
                        out.push_str("# HELP ");
                        out.push_str(&family.name);
                        out.push(' ');
                        escape_into(&mut out, &family.help, true);
                        out.push('\n');
                    }
                }
            }
            out.push_str(&family.samples);
        }
        if self.format == Format::OpenMetrics {
            out.push_str("# EOF\n");
        }
        out
    }

    fn gauge_sample(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        value: f64,
        timestamp_unix_nanos: Option<u64>,
    ) {
        let format = self.format;
        let samples = self.family(name, Kind::Gauge, help, labels);
        write_sample(
            samples,
            format,
            name,
            "",
            labels,
            None,
            Number::Float(value),
            timestamp_unix_nanos,
        );
    }

    fn histogram_sample(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        snapshot: &HistogramSnapshot,
        timestamp_unix_nanos: Option<u64>,
    ) {
        assert!(
            labels.iter().all(|(label, _)| *label != "le"),
            "histogram {name} must not have an `le` label"
        );
        let format = self.format;
        let samples = self.family(name, Kind::Histogram, help, labels);
        let mut le = String::with_capacity(24);
        for (bound, cumulative) in snapshot.cumulative_buckets() {
            le.clear();
            write_canonical(&mut le, bound);
            write_sample(
                samples,
                format,
                name,
                "_bucket",
                labels,
                Some(&le),
                Number::Integer(cumulative),
                timestamp_unix_nanos,
            );
        }
        write_sample(
            samples,
            format,
            name,
            "_sum",
            labels,
            None,
            Number::Float(snapshot.sum_seconds()),
            timestamp_unix_nanos,
        );
        write_sample(
            samples,
            format,
            name,
            "_count",
            labels,
            None,
            Number::Integer(snapshot.count()),
            timestamp_unix_nanos,
        );
    }

    /// The sample buffer of family `name`, created on first use; checks the names.
    fn family(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        labels: &[(&str, &str)],
    ) -> &mut String {
        for (index, (label, _)) in labels.iter().enumerate() {
            assert!(
                is_label_name(label),
                "invalid label name {label:?} on {name}"
            );
            assert!(
                labels[..index].iter().all(|(other, _)| other != label),
                "label {label} repeated on {name}"
            );
        }
        let index = match self.families.iter().position(|family| family.name == name) {
            Some(index) => {
                let existing = self.families[index].kind;
                assert!(
                    existing == kind,
                    "metric family {name} is a {}, not a {}",
                    existing.as_str(),
                    kind.as_str()
                );
                index
            }
            None => {
                assert!(is_metric_name(name), "invalid metric name {name:?}");
                self.families.push(Family {
                    name: name.to_owned(),
                    kind,
                    help: help.to_owned(),
                    samples: String::new(),
                });
                self.families.len() - 1
            }
        };
        &mut self.families[index].samples
    }
}

fn is_metric_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == b'_' || first == b':')
        && bytes.all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b':')
}

fn is_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    !name.starts_with("__")
        && bytes
            .next()
            .is_some_and(|first| first.is_ascii_alphabetic() || first == b'_')
        && bytes.all(|byte| byte.is_ascii_alphanumeric() || byte == b'_')
}

/// Writes `name{labels,le="..."} value [timestamp]\n`.
#[allow(clippy::too_many_arguments)]
fn write_sample(
    out: &mut String,
    format: Format,
    name: &str,
    suffix: &str,
    labels: &[(&str, &str)],
    le: Option<&str>,
    value: Number,
    timestamp_unix_nanos: Option<u64>,
) {
    out.push_str(name);
    out.push_str(suffix);
    if !labels.is_empty() || le.is_some() {
        out.push('{');
        let le = le.map(|le| ("le", le));
        for (index, (label, label_value)) in labels.iter().copied().chain(le).enumerate() {
            if index > 0 {
                out.push(',');
            }
            out.push_str(label);
            out.push_str("=\"");
            escape_into(out, label_value, true);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    match value {
        Number::Integer(value) => write_integer(out, value),
        Number::Float(value) => write_float(out, value),
    }
    if let Some(nanos) = timestamp_unix_nanos {
        out.push(' ');
        write_timestamp(out, format, nanos);
    }
    out.push('\n');
}

/// Escapes `\` and newline, and `"` when `quote` (label values; OpenMetrics help text too;
/// Prometheus help text leaves `"` alone).
fn escape_into(out: &mut String, text: &str, quote: bool) {
    for character in text.chars() {
        match character {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            other => out.push(other),
        }
    }
}

fn write_integer(out: &mut String, value: impl std::fmt::Display) {
    write!(out, "{value}").expect("writing to a String cannot fail");
}

/// Writes a sample value: `NaN`, `+Inf`, `-Inf`; integral values below 2^53 as plain
/// integers (`42`, not `42.0` or `4.2e+01`); everything else as Go's `%g` would
/// ([`write_go_float`]), which both Prometheus and OpenMetrics parsers accept.
fn write_float(out: &mut String, value: f64) {
    // 2^53: every integer up to here is exact in an f64.
    const EXACT_INTEGER_MAX: f64 = 9_007_199_254_740_992.0;
    if value.is_nan() {
        out.push_str("NaN");
    } else if value.is_infinite() {
        out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
    } else if value.fract() == 0.0 && value.abs() < EXACT_INTEGER_MAX {
        write_integer(out, value as i64);
    } else {
        write_go_float(out, value);
    }
}

/// Writes a finite `value` as Go's `strconv.FormatFloat(value, 'g', -1, 64)`: the shortest
/// digits that read back exactly, in exponent form (`1e-05`, `1.5e+06`, exponent with a sign
/// and at least two digits) when the decimal exponent is below -4 or at least 6, else in
/// plain decimal form (`0.0001`, `123.45`, `100000`).
fn write_go_float(out: &mut String, value: f64) {
    // Rust's `{:e}` gives the same shortest digits: "-1.2345e-7".
    let scientific = format!("{value:e}");
    let (mantissa, exponent) = scientific
        .split_once('e')
        .expect("`{:e}` output has an exponent");
    let exponent: i32 = exponent.parse().expect("`{:e}` exponent is an integer");
    if (-4..6).contains(&exponent) {
        write!(out, "{value}").expect("writing to a String cannot fail");
    } else {
        let sign = if exponent < 0 { '-' } else { '+' };
        write!(out, "{mantissa}e{sign}{:02}", exponent.unsigned_abs())
            .expect("writing to a String cannot fail");
    }
}

/// Writes an `le` value in the OpenMetrics canonical form: Go's `%g`, with `.0` appended
/// when that has neither a point nor an exponent (`1.0`, `0.0001`, `1e-05`, `1e+06`), and
/// `+Inf`. Used for Prometheus text too, so both formats give the same label values.
fn write_canonical(out: &mut String, value: f64) {
    if !value.is_finite() {
        // Same spelling as sample values: `+Inf`, `-Inf`, `NaN`.
        write_float(out, value);
        return;
    }
    let start = out.len();
    write_go_float(out, value);
    if !out[start..].contains(['.', 'e']) {
        out.push_str(".0");
    }
}

/// Writes a timestamp: integer milliseconds (truncated) in Prometheus text; exact decimal
/// seconds in OpenMetrics (`1767225610.5`, no float rounding).
fn write_timestamp(out: &mut String, format: Format, unix_nanos: u64) {
    match format {
        Format::Prometheus => write_integer(out, unix_nanos / MILLISECOND_NANOS),
        Format::OpenMetrics => {
            let seconds = unix_nanos / SECOND_NANOS;
            let nanos = unix_nanos % SECOND_NANOS;
            if nanos == 0 {
                write_integer(out, seconds);
            } else {
                let start = out.len();
                write!(out, "{seconds}.{nanos:09}").expect("writing to a String cannot fail");
                let trimmed = out[start..].trim_end_matches('0').len();
                out.truncate(start + trimmed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    const SECOND: u64 = SECOND_NANOS;
    const MILLISECOND: u64 = MILLISECOND_NANOS;
    const MICROSECOND: u64 = MICROSECOND_NANOS;
    /// 2026-01-01T00:00:00Z, a multiple of 10 s.
    const START_UNIX_NANOS: u64 = 1_767_225_600 * SECOND;
    const WINDOW_NANOS: u64 = 10 * SECOND;

    fn assert_close(actual: Option<f64>, expected: f64) {
        let actual = actual.expect("a quantile");
        assert!(
            (actual - expected).abs() <= 1e-12 * expected.abs().max(1.0),
            "{actual} != {expected}"
        );
    }

    #[test]
    fn bucket_placement_table() {
        let cases: [(u64, usize); 12] = [
            (0, 0),
            (1, 0),
            (10 * MICROSECOND, 0),
            (10 * MICROSECOND + 1, 1),
            (20 * MICROSECOND, 1),
            (999 * MICROSECOND, 6),
            (MILLISECOND, 6),
            (MILLISECOND + 1, 7),
            (SECOND, 15),
            (60 * SECOND, 21),
            (60 * SECOND + 1, 22),
            (u64::MAX, 22),
        ];
        for (value, expected) in cases {
            assert_eq!(bucket_index(value), expected, "value {value}");
            let histogram = AtomicHistogram::new();
            histogram.record(value);
            let snapshot = histogram.snapshot();
            assert_eq!(snapshot.bucket_counts()[expected], 1, "value {value}");
            assert_eq!(snapshot.count(), 1);
            assert_eq!(snapshot.sum_nanos(), value);
        }
        assert_eq!(BUCKETS_LEN, 23);
    }

    #[test]
    fn cumulative_buckets_end_with_inf_and_count() {
        let mut snapshot = HistogramSnapshot::EMPTY;
        for value in [
            5 * MICROSECOND,
            3 * MILLISECOND,
            3 * MILLISECOND,
            90 * SECOND,
        ] {
            snapshot.record(value);
        }
        let buckets: Vec<(f64, u64)> = snapshot.cumulative_buckets().collect();
        assert_eq!(buckets.len(), BUCKETS_LEN);
        assert_eq!(buckets[0], (1e-5, 1));
        assert_eq!(buckets[7], (0.002, 1));
        assert_eq!(buckets[8], (0.005, 3));
        assert_eq!(buckets[21], (60.0, 3));
        assert_eq!(buckets[22], (f64::INFINITY, 4));
        assert!(buckets.windows(2).all(|pair| pair[0].1 <= pair[1].1));
        assert!((snapshot.sum_seconds() - 90.006005).abs() < 1e-9);
    }

    #[test]
    fn quantile_of_uniform_distribution_is_exact_at_bounds() {
        // 1 µs ..= 10 ms in 1 µs steps: uniform inside every bucket, so interpolation is exact.
        let histogram = AtomicHistogram::new();
        for micros in 1..=10_000 {
            histogram.record(micros * MICROSECOND);
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count(), 10_000);
        assert_close(snapshot.quantile(0.5), 0.005);
        assert_close(snapshot.quantile(0.9), 0.009);
        assert_close(snapshot.quantile(0.25), 0.0025);
        assert_close(snapshot.quantile(1.0), 0.01);
        assert_close(snapshot.quantile(0.0), 0.0);
    }

    #[test]
    fn quantile_of_bimodal_distribution() {
        let mut snapshot = HistogramSnapshot::EMPTY;
        for _ in 0..90 {
            snapshot.record(500 * MICROSECOND); // (200 µs, 500 µs]
        }
        for _ in 0..10 {
            snapshot.record(1_500 * MILLISECOND); // (1 s, 2 s]
        }
        assert_close(snapshot.quantile(0.5), 0.0002 + 0.0003 * 50.0 / 90.0);
        assert_close(snapshot.quantile(0.9), 0.0005);
        assert_close(snapshot.quantile(0.95), 1.5);
        assert_close(snapshot.quantile(0.99), 1.9);
        // q = 0 is the lower bound of the first non-empty bucket.
        assert_close(snapshot.quantile(0.0), 0.0002);
    }

    #[test]
    fn quantile_edge_cases() {
        let mut snapshot = HistogramSnapshot::EMPTY;
        assert_eq!(snapshot.quantile(0.5), None);
        snapshot.record(u64::MAX / 2);
        assert_close(snapshot.quantile(0.5), 60.0);
        assert_eq!(snapshot.quantile(1.5), None);
        assert_eq!(snapshot.quantile(-0.1), None);
        assert_eq!(snapshot.quantile(f64::NAN), None);
    }

    #[test]
    fn merge_of_two_shards_equals_recording_into_one() {
        let shard_a = AtomicHistogram::new();
        let shard_b = AtomicHistogram::new();
        let all = AtomicHistogram::new();
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for index in 0..10_000 {
            // xorshift: latencies spread over every bucket, +Inf included.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let value = (seed % (120 * SECOND)) >> (seed % 24);
            if index % 3 == 0 {
                shard_a.record(value);
            } else {
                shard_b.record(value);
            }
            all.record(value);
        }
        let mut merged = shard_a.snapshot();
        merged.merge(&shard_b.snapshot());
        assert_eq!(merged, all.snapshot());
        assert_eq!(merged.quantile(0.99), all.snapshot().quantile(0.99));
    }

    proptest! {
        #[test]
        fn merge_is_recording_into_one(values in proptest::collection::vec(any::<u64>(), 0..200), split in any::<usize>()) {
            let split = split % (values.len() + 1);
            let mut left = HistogramSnapshot::EMPTY;
            let mut right = HistogramSnapshot::EMPTY;
            let mut all = HistogramSnapshot::EMPTY;
            for (index, value) in values.iter().enumerate() {
                if index < split { left.record(*value) } else { right.record(*value) }
                all.record(*value);
            }
            left.merge(&right);
            prop_assert_eq!(left, all);
        }
    }

    #[test]
    fn shards_agree_on_window_and_report_it_only_when_complete() {
        let shard_a = WindowedHistogram::new(Duration::from_secs(10));
        let shard_b = WindowedHistogram::new(Duration::from_secs(10));
        let window_start = START_UNIX_NANOS + 30 * SECOND;
        let window_end = window_start + WINDOW_NANOS;
        // Different wall times in the same window.
        shard_a.record(window_start + 100 * MILLISECOND, 3 * MILLISECOND);
        shard_b.record(window_start + 9_900 * MILLISECOND, 7 * MILLISECOND);
        shard_b.record(window_end - 1, 7 * MILLISECOND);

        // Still inside the window: the previous (empty) window is reported, not this one.
        for shard in [&shard_a, &shard_b] {
            let (end, snapshot) = shard.last_complete(window_end - 1).expect("a window");
            assert_eq!(end, window_start);
            assert_eq!(snapshot.count(), 0);
        }

        let (end_a, snapshot_a) = shard_a.last_complete(window_end).expect("window a");
        let (end_b, snapshot_b) = shard_b
            .last_complete(window_end + 9 * SECOND)
            .expect("window b");
        assert_eq!(end_a, window_end);
        assert_eq!(end_b, window_end);
        let mut merged = snapshot_a;
        merged.merge(&snapshot_b);
        assert_eq!(merged.count(), 3);
        assert_eq!(merged.sum_nanos(), 17 * MILLISECOND);
        assert_eq!(merged.bucket_counts()[8], 1);
        assert_eq!(merged.bucket_counts()[9], 2);

        // A new window starts: the old one stays complete, the new one is not reported.
        shard_a.record(window_end + SECOND, SECOND);
        let (end, snapshot) = shard_a.last_complete(window_end + 2 * SECOND).unwrap();
        assert_eq!((end, snapshot.count()), (window_end, 1));
    }

    #[test]
    fn first_window_since_epoch_is_not_complete_before_its_end() {
        let histogram = WindowedHistogram::default();
        assert_eq!(histogram.window(), WINDOW_DEFAULT);
        histogram.record(SECOND, MILLISECOND);
        assert_eq!(histogram.last_complete(SECOND), None);
        let (end, snapshot) = histogram.last_complete(WINDOW_NANOS).unwrap();
        assert_eq!((end, snapshot.count()), (WINDOW_NANOS, 1));
    }

    #[test]
    fn old_slots_are_ignored_after_ring_wrap() {
        let histogram = WindowedHistogram::new(Duration::from_secs(10));
        let window_start = START_UNIX_NANOS;
        histogram.record(window_start, MILLISECOND);
        let wrap = WINDOW_SLOTS as u64 * WINDOW_NANOS;

        // The same slot, WINDOW_SLOTS windows later, with nothing recorded since: the old
        // window's sample must not show up as the new window's.
        let (end, snapshot) = histogram
            .last_complete(window_start + WINDOW_NANOS + wrap)
            .unwrap();
        assert_eq!(end, window_start + WINDOW_NANOS + wrap);
        assert_eq!(snapshot, HistogramSnapshot::EMPTY);

        // The writer reuses the slot: the old window is gone for a reader that asks late.
        histogram.record(window_start + wrap, 2 * MILLISECOND);
        assert_eq!(histogram.last_complete(window_start + WINDOW_NANOS), None);
        let (_, snapshot) = histogram
            .last_complete(window_start + WINDOW_NANOS + wrap)
            .unwrap();
        assert_eq!(
            (snapshot.count(), snapshot.sum_nanos()),
            (1, 2 * MILLISECOND)
        );

        // A late sample for the replaced window is dropped, not mixed into the new one.
        histogram.record(window_start + SECOND, 5 * SECOND);
        let (_, snapshot) = histogram
            .last_complete(window_start + WINDOW_NANOS + wrap)
            .unwrap();
        assert_eq!(snapshot.count(), 1);
    }

    #[test]
    fn windows_within_the_ring_are_kept_apart() {
        let histogram = WindowedHistogram::new(Duration::from_secs(10));
        for window in 0..WINDOW_SLOTS as u64 {
            for _ in 0..=window {
                histogram.record(START_UNIX_NANOS + window * WINDOW_NANOS, MILLISECOND);
            }
        }
        for window in 0..WINDOW_SLOTS as u64 - 1 {
            let end = START_UNIX_NANOS + (window + 1) * WINDOW_NANOS;
            let (reported_end, snapshot) = histogram.last_complete(end).unwrap();
            assert_eq!(reported_end, end);
            assert_eq!(snapshot.count(), window + 1);
        }
    }

    #[test]
    fn concurrent_reader_sees_counts_never_decrease() {
        const SAMPLES: u64 = 200_000;
        let histogram = Arc::new(AtomicHistogram::new());
        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let histogram = Arc::clone(&histogram);
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let mut previous = HistogramSnapshot::EMPTY;
                let mut reads = 0u64;
                loop {
                    let finished = done.load(Ordering::Acquire);
                    let snapshot = histogram.snapshot();
                    assert!(snapshot.count() >= previous.count());
                    for (now, before) in snapshot
                        .bucket_counts()
                        .iter()
                        .zip(previous.bucket_counts())
                    {
                        assert!(now >= before);
                    }
                    assert!(snapshot.sum_nanos() >= previous.sum_nanos());
                    previous = snapshot;
                    reads += 1;
                    if finished {
                        return (previous, reads);
                    }
                }
            })
        };
        for index in 0..SAMPLES {
            histogram.record((index % 1_000) * MILLISECOND);
        }
        done.store(true, Ordering::Release);
        let (last, reads) = reader.join().expect("reader panicked");
        assert!(reads >= 1);
        assert_eq!(last.count(), SAMPLES);
        assert_eq!(last, histogram.snapshot());
    }

    #[test]
    fn concurrent_reader_sees_complete_windows_whole() {
        // The writer records SAMPLES_PER_WINDOW samples per 1 µs window and publishes its
        // `now` after each; a window the reader gets back as complete must hold all of them.
        const SAMPLES_PER_WINDOW: u64 = 7;
        const WINDOWS: u64 = 20_000;
        let histogram = Arc::new(WindowedHistogram::new(Duration::from_micros(1)));
        let writer_now = Arc::new(AtomicU64::new(START_UNIX_NANOS));
        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let histogram = Arc::clone(&histogram);
            let writer_now = Arc::clone(&writer_now);
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let mut whole = 0u64;
                while !done.load(Ordering::Acquire) {
                    let now = writer_now.load(Ordering::Acquire);
                    if let Some((end, snapshot)) = histogram.last_complete(now) {
                        if end > START_UNIX_NANOS {
                            assert_eq!(snapshot.count(), SAMPLES_PER_WINDOW, "window {end}");
                            assert_eq!(snapshot.sum_nanos(), SAMPLES_PER_WINDOW * 1_000);
                            whole += 1;
                        }
                    }
                }
                whole
            })
        };
        for window in 0..WINDOWS {
            let start = START_UNIX_NANOS + window * MICROSECOND;
            for sample in 0..SAMPLES_PER_WINDOW {
                histogram.record(start + sample, 1_000);
            }
            writer_now.store(start + MICROSECOND, Ordering::Release);
        }
        done.store(true, Ordering::Release);
        let whole = reader.join().expect("reader panicked");
        println!("reader saw {whole} complete windows");
    }

    type Build = fn(&mut Exposition);

    fn render(format: Format, build: impl FnOnce(&mut Exposition)) -> String {
        let mut exposition = Exposition::new(format);
        build(&mut exposition);
        exposition.finish()
    }

    fn interleaved_families(exposition: &mut Exposition) {
        for shard in ["0", "1"] {
            exposition.counter(
                "ringcast_deliveries_total",
                "Events written to subscribers.",
                &[("shard", shard)],
                if shard == "0" { 5.0 } else { 7.0 },
            );
            exposition.gauge(
                "ringcast_subscribers",
                "Open subscriber connections.",
                &[("shard", shard)],
                3.0,
            );
        }
        // Without `_total`: the same family.
        exposition.counter(
            "ringcast_deliveries",
            "ignored: the first help wins",
            &[("shard", "2")],
            0.0,
        );
        exposition.gauge_at(
            "ringcast_publish_to_write_p99_seconds",
            "p99 over the last complete window.",
            &[],
            0.0125,
            START_UNIX_NANOS + 10 * SECOND + 500 * MILLISECOND,
        );
    }

    #[test]
    fn exposition_table() {
        let cases: [(Format, Build, &str); 4] = [
            (
                Format::Prometheus,
                interleaved_families,
                "# HELP ringcast_deliveries_total Events written to subscribers.\n\
                 # TYPE ringcast_deliveries_total counter\n\
                 ringcast_deliveries_total{shard=\"0\"} 5\n\
                 ringcast_deliveries_total{shard=\"1\"} 7\n\
                 ringcast_deliveries_total{shard=\"2\"} 0\n\
                 # HELP ringcast_subscribers Open subscriber connections.\n\
                 # TYPE ringcast_subscribers gauge\n\
                 ringcast_subscribers{shard=\"0\"} 3\n\
                 ringcast_subscribers{shard=\"1\"} 3\n\
                 # HELP ringcast_publish_to_write_p99_seconds p99 over the last complete window.\n\
                 # TYPE ringcast_publish_to_write_p99_seconds gauge\n\
                 ringcast_publish_to_write_p99_seconds 0.0125 1767225610500\n",
            ),
            (
                Format::OpenMetrics,
                interleaved_families,
                "# TYPE ringcast_deliveries counter\n\
                 # HELP ringcast_deliveries Events written to subscribers.\n\
                 ringcast_deliveries_total{shard=\"0\"} 5\n\
                 ringcast_deliveries_total{shard=\"1\"} 7\n\
                 ringcast_deliveries_total{shard=\"2\"} 0\n\
                 # TYPE ringcast_subscribers gauge\n\
                 # HELP ringcast_subscribers Open subscriber connections.\n\
                 ringcast_subscribers{shard=\"0\"} 3\n\
                 ringcast_subscribers{shard=\"1\"} 3\n\
                 # TYPE ringcast_publish_to_write_p99_seconds gauge\n\
                 # HELP ringcast_publish_to_write_p99_seconds p99 over the last complete window.\n\
                 ringcast_publish_to_write_p99_seconds 0.0125 1767225610.5\n\
                 # EOF\n",
            ),
            (
                Format::Prometheus,
                |exposition| exposition.gauge("ringcast_up", "", &[], 1.0),
                "# TYPE ringcast_up gauge\nringcast_up 1\n",
            ),
            (Format::OpenMetrics, |_| {}, "# EOF\n"),
        ];
        for (format, build, expected) in cases {
            assert_eq!(render(format, build), expected, "{format:?}");
        }
    }

    fn one_histogram(exposition: &mut Exposition) {
        let mut snapshot = HistogramSnapshot::EMPTY;
        snapshot.record(15 * MICROSECOND);
        snapshot.record(1_500 * MILLISECOND);
        snapshot.record(61 * SECOND);
        exposition.histogram_at(
            "ringcast_publish_to_write_seconds",
            "Publish to socket write.",
            &[("shard", "0")],
            &snapshot,
            START_UNIX_NANOS + 20 * SECOND,
        );
    }

    #[test]
    fn histogram_exposition_in_both_formats() {
        let bucket_lines = [
            ("1e-05", 0),
            ("2e-05", 1),
            ("5e-05", 1),
            ("0.0001", 1),
            ("0.0002", 1),
            ("0.0005", 1),
            ("0.001", 1),
            ("0.002", 1),
            ("0.005", 1),
            ("0.01", 1),
            ("0.02", 1),
            ("0.05", 1),
            ("0.1", 1),
            ("0.2", 1),
            ("0.5", 1),
            ("1.0", 1),
            ("2.0", 2),
            ("5.0", 2),
            ("10.0", 2),
            ("20.0", 2),
            ("50.0", 2),
            ("60.0", 2),
            ("+Inf", 3),
        ];
        for (format, header, timestamp, eof) in [
            (
                Format::Prometheus,
                "# HELP ringcast_publish_to_write_seconds Publish to socket write.\n\
                 # TYPE ringcast_publish_to_write_seconds histogram\n",
                "1767225620000",
                "",
            ),
            (
                Format::OpenMetrics,
                "# TYPE ringcast_publish_to_write_seconds histogram\n\
                 # HELP ringcast_publish_to_write_seconds Publish to socket write.\n",
                "1767225620",
                "# EOF\n",
            ),
        ] {
            let mut expected = header.to_owned();
            for (le, count) in bucket_lines {
                expected.push_str(&format!(
                    "ringcast_publish_to_write_seconds_bucket{{shard=\"0\",le=\"{le}\"}} {count} {timestamp}\n"
                ));
            }
            expected.push_str(&format!(
                "ringcast_publish_to_write_seconds_sum{{shard=\"0\"}} 62.500015 {timestamp}\n\
                 ringcast_publish_to_write_seconds_count{{shard=\"0\"}} 3 {timestamp}\n{eof}"
            ));
            assert_eq!(render(format, one_histogram), expected, "{format:?}");
        }
        let plain = render(Format::Prometheus, |exposition| {
            exposition.histogram("h_seconds", "h", &[], &HistogramSnapshot::EMPTY);
        });
        assert!(plain.contains("\nh_seconds_bucket{le=\"1e-05\"} 0\n"));
        assert!(plain
            .ends_with("h_seconds_bucket{le=\"+Inf\"} 0\nh_seconds_sum 0\nh_seconds_count 0\n"));
    }

    #[test]
    fn escaping() {
        let help = "Say \"hi\" \\ then\nbye";
        let label = "a\\b\"c\nd";
        let build = |exposition: &mut Exposition| {
            exposition.gauge(
                "ringcast_escape",
                help,
                &[("path", label), ("ok", "é✓")],
                1.0,
            );
        };
        assert_eq!(
            render(Format::Prometheus, build),
            "# HELP ringcast_escape Say \"hi\" \\\\ then\\nbye\n\
             # TYPE ringcast_escape gauge\n\
             ringcast_escape{path=\"a\\\\b\\\"c\\nd\",ok=\"é✓\"} 1\n"
        );
        assert_eq!(
            render(Format::OpenMetrics, build),
            "# TYPE ringcast_escape gauge\n\
             # HELP ringcast_escape Say \\\"hi\\\" \\\\ then\\nbye\n\
             ringcast_escape{path=\"a\\\\b\\\"c\\nd\",ok=\"é✓\"} 1\n\
             # EOF\n"
        );
    }

    #[test]
    fn float_formatting_table() {
        // (value, sample value, canonical `le`)
        let cases: [(f64, &str, &str); 17] = [
            (0.0, "0", "0.0"),
            (-0.0, "0", "-0.0"),
            (1.0, "1", "1.0"),
            (-3.0, "-3", "-3.0"),
            (1e-5, "1e-05", "1e-05"),
            (1e-4, "0.0001", "0.0001"),
            (0.5, "0.5", "0.5"),
            (0.95, "0.95", "0.95"),
            (1234.5678, "1234.5678", "1234.5678"),
            (100_000.0, "100000", "100000.0"),
            (1e6, "1000000", "1e+06"),
            (1_234_567.5, "1.2345675e+06", "1.2345675e+06"),
            (1.5e-7, "1.5e-07", "1.5e-07"),
            (
                9_007_199_254_740_992.0,
                "9.007199254740992e+15",
                "9.007199254740992e+15",
            ),
            (1e300, "1e+300", "1e+300"),
            (f64::INFINITY, "+Inf", "+Inf"),
            (f64::NAN, "NaN", "NaN"),
        ];
        for (value, sample, le) in cases {
            let mut out = String::new();
            write_float(&mut out, value);
            assert_eq!(out, sample, "sample {value}");
            out.clear();
            write_canonical(&mut out, value);
            assert_eq!(out, le, "le {value}");
        }
        let mut out = String::new();
        write_float(&mut out, f64::NEG_INFINITY);
        assert_eq!(out, "-Inf");
    }

    #[test]
    fn timestamp_formatting_table() {
        let cases: [(u64, &str, &str); 4] = [
            (START_UNIX_NANOS, "1767225600000", "1767225600"),
            (
                START_UNIX_NANOS + 500 * MILLISECOND,
                "1767225600500",
                "1767225600.5",
            ),
            (
                START_UNIX_NANOS + 1,
                "1767225600000",
                "1767225600.000000001",
            ),
            (
                START_UNIX_NANOS + 123_456_789,
                "1767225600123",
                "1767225600.123456789",
            ),
        ];
        for (nanos, prometheus, openmetrics) in cases {
            let mut out = String::new();
            write_timestamp(&mut out, Format::Prometheus, nanos);
            assert_eq!(out, prometheus);
            out.clear();
            write_timestamp(&mut out, Format::OpenMetrics, nanos);
            assert_eq!(out, openmetrics);
        }
    }

    #[test]
    #[should_panic(expected = "is a counter, not a gauge")]
    fn family_reused_with_another_type_panics() {
        let mut exposition = Exposition::new(Format::Prometheus);
        exposition.counter("ringcast_x_total", "x", &[], 1.0);
        exposition.gauge("ringcast_x", "x", &[], 1.0);
    }

    #[test]
    #[should_panic(expected = "invalid metric name")]
    fn invalid_metric_name_panics() {
        Exposition::new(Format::Prometheus).gauge("ringcast-x", "x", &[], 1.0);
    }

    #[test]
    #[should_panic(expected = "invalid label name")]
    fn reserved_label_name_panics() {
        Exposition::new(Format::Prometheus).gauge("ringcast_x", "x", &[("__name", "v")], 1.0);
    }

    #[test]
    #[should_panic(expected = "must not have an `le` label")]
    fn histogram_with_le_label_panics() {
        Exposition::new(Format::OpenMetrics).histogram(
            "ringcast_x_seconds",
            "x",
            &[("le", "1")],
            &HistogramSnapshot::EMPTY,
        );
    }

    #[test]
    #[should_panic(expected = "must be non-negative")]
    fn negative_counter_panics() {
        Exposition::new(Format::Prometheus).counter("ringcast_x_total", "x", &[], -1.0);
    }

    /// Runs `promtool check metrics` on a Prometheus exposition with every kind of sample.
    /// CI installs promtool (Debian package `prometheus`); without it the test only says so.
    #[test]
    fn promtool_accepts_prometheus_exposition() {
        use std::io::Write as _;
        use std::process::{Command, Stdio};

        let text = render(Format::Prometheus, |exposition| {
            interleaved_families(exposition);
            one_histogram(exposition);
            exposition.histogram(
                "ringcast_fanout_seconds",
                "Fan-out of one event.",
                &[("room", "a\\b\"c\nd")],
                &HistogramSnapshot::EMPTY,
            );
            exposition.gauge("ringcast_clock_drift_seconds", "Drift.", &[], -0.000123);
            exposition.gauge("ringcast_nan", "Not a number.", &[], f64::NAN);
        });
        let child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("note: promtool not on PATH, exposition not checked by promtool");
                return;
            }
            Err(error) => panic!("running promtool: {error}"),
        };
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(text.as_bytes())
            .expect("writing to promtool");
        let output = child.wait_with_output().expect("waiting for promtool");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() && stdout.trim().is_empty() && stderr.trim().is_empty(),
            "promtool: {}\nstdout: {stdout}\nstderr: {stderr}\ninput:\n{text}",
            output.status
        );
    }

    #[test]
    fn batched_adds_equal_single_records() {
        let values = [
            5 * MICROSECOND,
            3 * MILLISECOND,
            3 * MILLISECOND,
            90 * SECOND,
            0,
        ];
        let single = AtomicHistogram::new();
        let mut batch = HistogramSnapshot::EMPTY;
        for value in values {
            single.record(value);
            batch.record(value);
        }
        let batched = AtomicHistogram::new();
        batched.add(&batch);
        batched.add(&HistogramSnapshot::EMPTY);
        assert_eq!(batched.snapshot(), single.snapshot());
        batch.clear();
        assert_eq!(batch, HistogramSnapshot::EMPTY);

        let windowed = WindowedHistogram::new(Duration::from_nanos(WINDOW_NANOS));
        let mut turn = HistogramSnapshot::EMPTY;
        turn.record(2 * MILLISECOND);
        turn.record(7 * MILLISECOND);
        windowed.add(START_UNIX_NANOS + SECOND, &turn);
        windowed.add(START_UNIX_NANOS + 2 * SECOND, &turn);
        // The next window resets the slot before adding.
        windowed.add(START_UNIX_NANOS + WINDOW_NANOS + SECOND, &turn);
        let (end, last) = windowed
            .last_complete(START_UNIX_NANOS + WINDOW_NANOS + 2 * SECOND)
            .expect("a complete window");
        assert_eq!(end, START_UNIX_NANOS + WINDOW_NANOS);
        assert_eq!(last.count(), 4);
        assert_eq!(last.sum_nanos(), 18 * MILLISECOND);
        let (_, current) = windowed
            .last_complete(START_UNIX_NANOS + 2 * WINDOW_NANOS)
            .expect("the next window");
        assert_eq!(current.count(), 2);
    }
}
