//! Lock-free latency histograms: [`AtomicHistogram`] over the fixed log-linear
//! [`BUCKET_BOUNDS_NANOS`], its [`HistogramSnapshot`], and [`WindowedHistogram`], the same per
//! wall-clock window. Must not touch: the text formats (exposition.rs).

use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::time::Duration;

use super::{MICROSECOND_NANOS, MILLISECOND_NANOS, NANOS_PER_SECOND, SECOND_NANOS};
use crate::clock::window_bounds;

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
pub(super) fn bucket_index(value_ns: u64) -> usize {
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
