//! The one process clock, shared: the main thread owns the [`ProcessClock`] and feeds it a
//! realtime sample once a second; it publishes the clock's parameters here, in atomics
//! under a seqlock, and every shard computes the same `now_unix_nanos` from them without a
//! lock ([`ShardClock`]). A shard reads the parameters once per loop turn and never lets
//! its own readings go back.

use ringcast_core::clock::{ClockParams, ProcessClock};
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

/// Attempts a reader makes when it meets a publish in progress before keeping the
/// parameters it had (a publish is a handful of stores once a second, so two attempts
/// already almost never both collide).
const READ_ATTEMPTS_MAX: usize = 8;

/// The published clock: parameters, drift and corrections.
#[derive(Debug)]
pub struct SharedClock {
    anchor: Instant,
    /// Even when stable, odd while the keeper writes.
    sequence: AtomicU64,
    mono_ref_nanos: AtomicU64,
    anchor_unix_nanos: AtomicU64,
    correction_ref_nanos: AtomicU64,
    target_nanos: AtomicU64,
    slew_rate_ppm: AtomicU64,
    drift_seconds_bits: AtomicU64,
    corrections_total: AtomicU64,
}

impl SharedClock {
    /// Publishes `clock`'s current state.
    pub fn new(clock: &ProcessClock) -> Self {
        let shared = Self {
            anchor: clock.anchor(),
            sequence: AtomicU64::new(0),
            mono_ref_nanos: AtomicU64::new(0),
            anchor_unix_nanos: AtomicU64::new(0),
            correction_ref_nanos: AtomicU64::new(0),
            target_nanos: AtomicU64::new(0),
            slew_rate_ppm: AtomicU64::new(0),
            drift_seconds_bits: AtomicU64::new(0),
            corrections_total: AtomicU64::new(0),
        };
        shared.publish(clock);
        shared
    }

    /// Publishes `clock`'s state after a sample. One writer only (the clock keeper).
    pub fn publish(&self, clock: &ProcessClock) {
        assert_eq!(clock.anchor(), self.anchor, "one clock per process");
        let params = clock.params();
        let sequence = self.sequence.load(Ordering::Relaxed);
        self.sequence.store(sequence + 1, Ordering::Relaxed);
        // Orders the odd sequence before the parameter stores (see `read`).
        fence(Ordering::Release);
        self.mono_ref_nanos
            .store(params.mono_ref_nanos, Ordering::Relaxed);
        self.anchor_unix_nanos
            .store(params.anchor_unix_nanos, Ordering::Relaxed);
        self.correction_ref_nanos
            .store(params.correction_ref_nanos as u64, Ordering::Relaxed);
        self.target_nanos
            .store(params.target_nanos as u64, Ordering::Relaxed);
        self.slew_rate_ppm
            .store(u64::from(params.slew_rate_ppm), Ordering::Relaxed);
        self.sequence.store(sequence + 2, Ordering::Release);
        self.drift_seconds_bits
            .store(clock.drift_seconds().to_bits(), Ordering::Relaxed);
        self.corrections_total
            .store(clock.corrections_total(), Ordering::Relaxed);
    }

    /// The parameters and their sequence number, or `None` when every attempt met a
    /// publish in progress.
    pub fn read(&self) -> Option<(u64, ClockParams)> {
        for _ in 0..READ_ATTEMPTS_MAX {
            let before = self.sequence.load(Ordering::Acquire);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let params = ClockParams {
                mono_ref_nanos: self.mono_ref_nanos.load(Ordering::Relaxed),
                anchor_unix_nanos: self.anchor_unix_nanos.load(Ordering::Relaxed),
                correction_ref_nanos: self.correction_ref_nanos.load(Ordering::Relaxed) as i64,
                target_nanos: self.target_nanos.load(Ordering::Relaxed) as i64,
                slew_rate_ppm: self.slew_rate_ppm.load(Ordering::Relaxed) as u32,
            };
            // Orders the parameter loads before the second sequence load.
            fence(Ordering::Acquire);
            if self.sequence.load(Ordering::Relaxed) == before {
                return Some((before, params));
            }
        }
        None
    }

    /// The monotonic instant the parameters count from.
    pub fn anchor(&self) -> Instant {
        self.anchor
    }

    /// Gauge `ringcast_clock_drift_seconds` as of the latest sample.
    pub fn drift_seconds(&self) -> f64 {
        f64::from_bits(self.drift_seconds_bits.load(Ordering::Relaxed))
    }

    /// Counter `ringcast_clock_corrections_total`.
    pub fn corrections_total(&self) -> u64 {
        self.corrections_total.load(Ordering::Relaxed)
    }
}

/// The clock log lines are stamped with, once the process clock exists.
static LOG_CLOCK: OnceLock<(Arc<SharedClock>, Mutex<ShardClock>)> = OnceLock::new();

/// Makes log lines carry the process clock's time from now on (called once, by the
/// server, when it creates the clock). Later calls are ignored.
pub fn install_log_clock(shared: Arc<SharedClock>) {
    let view = Mutex::new(ShardClock::new(&shared));
    let _ = LOG_CLOCK.set((shared, view));
}

/// The process clock's reading for a log line, or the system's realtime clock before the
/// process clock exists.
pub fn log_unix_nanos() -> u64 {
    if let Some((shared, view)) = LOG_CLOCK.get() {
        if let Ok(mut view) = view.lock() {
            view.refresh(shared);
            return view.now_unix_nanos(Instant::now());
        }
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// `tracing` timestamps from the process clock (RFC 3339, UTC, microseconds), so log event
/// times agree with message stamps and metric windows.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogTime;

impl tracing_subscriber::fmt::time::FormatTime for LogTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        write!(w, "{}", rfc3339_micros(log_unix_nanos()))
    }
}

/// Formats Unix nanoseconds as `YYYY-MM-DDTHH:MM:SS.uuuuuuZ`.
pub fn rfc3339_micros(unix_nanos: u64) -> String {
    let secs = unix_nanos / 1_000_000_000;
    let micros = (unix_nanos % 1_000_000_000) / 1_000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// One shard's view of the process clock: the parameters it last read and the highest
/// reading it gave, so its readings never decrease.
#[derive(Debug, Clone)]
pub struct ShardClock {
    anchor: Instant,
    sequence: u64,
    params: ClockParams,
    last_unix_nanos: u64,
}

impl ShardClock {
    /// A view of `shared`.
    pub fn new(shared: &SharedClock) -> Self {
        let mut clock = Self {
            anchor: shared.anchor(),
            sequence: u64::MAX,
            params: ClockParams::default(),
            last_unix_nanos: 0,
        };
        clock.refresh(shared);
        clock
    }

    /// Picks up parameters published since the last call (once per loop turn).
    pub fn refresh(&mut self, shared: &SharedClock) {
        if let Some((sequence, params)) = shared.read() {
            if sequence != self.sequence {
                self.sequence = sequence;
                self.params = params;
            }
        }
    }

    /// Wall-clock time at `now` in Unix nanoseconds: the process clock's reading, held at
    /// this shard's previous reading if that was higher.
    pub fn now_unix_nanos(&mut self, now: Instant) -> u64 {
        let since = u64::try_from(now.saturating_duration_since(self.anchor).as_nanos())
            .unwrap_or(u64::MAX);
        let reading = self.params.now_unix_nanos(since).max(self.last_unix_nanos);
        self.last_unix_nanos = reading;
        reading
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_times_are_rfc3339_utc() {
        assert_eq!(rfc3339_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339_micros(1_767_225_600_123_456_789),
            "2026-01-01T00:00:00.123456Z"
        );
        assert_eq!(
            rfc3339_micros(951_825_600_000_000_000),
            "2000-02-29T12:00:00.000000Z"
        );
    }
    use std::time::{Duration, SystemTime};

    #[test]
    fn shards_read_what_the_keeper_computes() {
        let start = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        let mut keeper = ProcessClock::new(start, wall);
        let shared = SharedClock::new(&keeper);
        let mut shard = ShardClock::new(&shared);
        let at = start + Duration::from_millis(10);
        assert_eq!(shard.now_unix_nanos(at), keeper.now_unix_nanos(at));
        // Realtime 2 s ahead for a few samples: the keeper slews; shards follow.
        for second in 1..=5u64 {
            let mono = start + Duration::from_secs(second);
            let realtime = wall + Duration::from_secs(second + 2);
            keeper.handle_realtime_sample(mono, realtime);
            shared.publish(&keeper);
        }
        shard.refresh(&shared);
        let at = start + Duration::from_secs(6);
        assert_eq!(shard.now_unix_nanos(at), keeper.now_unix_nanos(at));
        assert!(shared.drift_seconds() > 1.0, "{}", shared.drift_seconds());
        assert_eq!(shared.corrections_total(), 1);
    }

    #[test]
    fn a_shard_reading_never_goes_back() {
        let start = Instant::now();
        let keeper = ProcessClock::new(start, SystemTime::now());
        let shared = SharedClock::new(&keeper);
        let mut shard = ShardClock::new(&shared);
        let later = shard.now_unix_nanos(start + Duration::from_secs(5));
        // An older instant (another thread's `now`) reads as the previous reading.
        assert_eq!(shard.now_unix_nanos(start + Duration::from_secs(1)), later);
    }

    #[test]
    fn readers_never_see_a_torn_publish() {
        let start = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        let mut keeper = ProcessClock::new(start, wall);
        let shared = Arc::new(SharedClock::new(&keeper));
        let reader = {
            let shared = shared.clone();
            std::thread::spawn(move || {
                let mut seen = 0;
                for _ in 0..200_000 {
                    if let Some((_, params)) = shared.read() {
                        // Every publish below keeps target − correction_ref within ±5 s
                        // and the rate at 0 or the default; a torn read mixes them.
                        let drift = params.target_nanos - params.correction_ref_nanos;
                        assert!(drift.abs() <= 5_000_000_000, "{params:?}");
                        assert!(params.slew_rate_ppm == 0 || params.slew_rate_ppm == 500);
                        seen += 1;
                    }
                }
                seen
            })
        };
        for step in 1..=20_000u64 {
            let offset = Duration::from_millis(step % 3000);
            keeper.handle_realtime_sample(
                start + Duration::from_millis(step),
                wall + Duration::from_millis(step) + offset,
            );
            shared.publish(&keeper);
        }
        assert!(reader.join().unwrap() > 0);
    }
}
