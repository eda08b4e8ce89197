//! The process clock: one wall-clock estimate for the whole process, monotonic by
//! construction.
//!
//! [`ProcessClock`] anchors the monotonic clock (`Instant`) to wall time once, at start, and
//! from then on reads wall time as `anchor + elapsed monotonic time + correction`. The driver
//! feeds it one realtime sample a second ([`ProcessClock::handle_realtime_sample`]); the
//! offset between realtime and the uncorrected estimate is kept in a sliding window, and its
//! median (so a single outlier, e.g. an NTP step that is undone, is ignored) is the
//! correction target. When the remaining drift exceeds a threshold the clock *slews* toward
//! the target at a bounded rate (500 ppm by default, i.e. at most 0.5 ms per second) and
//! never steps: [`ProcessClock::now_unix_nanos`] is non-decreasing for non-decreasing
//! `mono_now`, whatever realtime does. A large realtime jump (say 2 s) is therefore absorbed
//! slowly (over about an hour at 500 ppm), which is the point: event ids and windows derived
//! from this clock never go back in time.
//!
//! Sans-IO: the driver reads `Instant::now()` and `SystemTime::now()` and passes them in.
//! [`window_bounds`] aligns time windows to wall-clock multiples so shards and nodes agree.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use thiserror::Error;

/// Default number of realtime samples in the drift window (16 s at one sample a second).
pub const WINDOW_SAMPLES_DEFAULT: usize = 16;
/// Largest accepted drift window (the window is a fixed array of this size).
pub const WINDOW_SAMPLES_MAX: usize = 64;
/// Default number of samples needed before any correction (a median of 3 already ignores
/// one outlier).
pub const SAMPLES_MIN_DEFAULT: usize = 3;
/// Default drift above which a slew episode starts.
pub const DRIFT_THRESHOLD_DEFAULT: Duration = Duration::from_millis(1);
/// Default slew rate: 500 ppm, at most 500 µs of correction per second.
pub const SLEW_RATE_PPM_DEFAULT: u32 = 500;
/// Largest accepted slew rate (10 %). It must stay below 1,000,000 ppm, otherwise a
/// backward slew could make the clock go back.
pub const SLEW_RATE_PPM_MAX: u32 = 100_000;

const PPM: u64 = 1_000_000;
const NANOS_PER_SECOND: f64 = 1e9;

const _: () = assert!(SLEW_RATE_PPM_MAX < PPM as u32);
const _: () = assert!(SLEW_RATE_PPM_DEFAULT <= SLEW_RATE_PPM_MAX);
const _: () = assert!(WINDOW_SAMPLES_DEFAULT <= WINDOW_SAMPLES_MAX);
const _: () = assert!(SAMPLES_MIN_DEFAULT >= 1 && SAMPLES_MIN_DEFAULT <= WINDOW_SAMPLES_DEFAULT);

/// Tuning of a [`ProcessClock`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClockConfig {
    /// Realtime samples kept for the median (default [`WINDOW_SAMPLES_DEFAULT`], at most
    /// [`WINDOW_SAMPLES_MAX`]).
    pub window_samples: usize,
    /// Samples needed before the median is trusted (default [`SAMPLES_MIN_DEFAULT`]).
    pub samples_min: usize,
    /// Drift magnitude above which a slew episode starts (default
    /// [`DRIFT_THRESHOLD_DEFAULT`]). Smaller drift is reported but left alone.
    pub drift_threshold: Duration,
    /// Slew rate in parts per million of elapsed time (default [`SLEW_RATE_PPM_DEFAULT`],
    /// at most [`SLEW_RATE_PPM_MAX`]).
    pub slew_rate_ppm: u32,
}

impl Default for ClockConfig {
    fn default() -> Self {
        Self {
            window_samples: WINDOW_SAMPLES_DEFAULT,
            samples_min: SAMPLES_MIN_DEFAULT,
            drift_threshold: DRIFT_THRESHOLD_DEFAULT,
            slew_rate_ppm: SLEW_RATE_PPM_DEFAULT,
        }
    }
}

/// An invalid [`ClockConfig`].
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ClockConfigError {
    /// `window_samples` is zero or above [`WINDOW_SAMPLES_MAX`].
    #[error("window_samples {0} must be in 1..={WINDOW_SAMPLES_MAX}")]
    WindowSamples(usize),
    /// `samples_min` is zero or above `window_samples`.
    #[error("samples_min {0} must be in 1..=window_samples")]
    SamplesMin(usize),
    /// `slew_rate_ppm` is zero or above [`SLEW_RATE_PPM_MAX`].
    #[error("slew_rate_ppm {0} must be in 1..={SLEW_RATE_PPM_MAX}")]
    SlewRate(u32),
}

impl ClockConfig {
    /// Checks the limits; for config files, before [`ProcessClock::with_config`].
    pub fn validate(&self) -> Result<(), ClockConfigError> {
        if self.window_samples == 0 || self.window_samples > WINDOW_SAMPLES_MAX {
            return Err(ClockConfigError::WindowSamples(self.window_samples));
        }
        if self.samples_min == 0 || self.samples_min > self.window_samples {
            return Err(ClockConfigError::SamplesMin(self.samples_min));
        }
        if self.slew_rate_ppm == 0 || self.slew_rate_ppm > SLEW_RATE_PPM_MAX {
            return Err(ClockConfigError::SlewRate(self.slew_rate_ppm));
        }
        Ok(())
    }
}

/// Monotonic wall-clock estimate for the process, slewed toward realtime.
#[derive(Debug, Clone)]
pub struct ProcessClock {
    config: ClockConfig,
    anchor_mono: Instant,
    anchor_unix_nanos: u64,
    /// Monotonic instant of the latest sample; earlier `mono_now` reads are clamped to it.
    mono_ref: Instant,
    /// Correction applied at `mono_ref`.
    correction_ref_nanos: i64,
    /// Correction the clock slews toward (median raw offset).
    target_nanos: i64,
    /// Whether a slew episode is under way.
    slewing: bool,
    /// Ring of raw offsets: realtime minus the uncorrected estimate.
    offsets_nanos: [i64; WINDOW_SAMPLES_MAX],
    offsets_len: usize,
    offsets_next: usize,
    corrections_total: u64,
}

impl ProcessClock {
    /// A clock with the default [`ClockConfig`], reading `realtime_now` at `mono_now`.
    pub fn new(mono_now: Instant, realtime_now: SystemTime) -> Self {
        Self::with_config(ClockConfig::default(), mono_now, realtime_now)
    }

    /// A clock with `config`, reading `realtime_now` at `mono_now`.
    ///
    /// # Panics
    ///
    /// If `config` fails [`ClockConfig::validate`].
    pub fn with_config(config: ClockConfig, mono_now: Instant, realtime_now: SystemTime) -> Self {
        if let Err(error) = config.validate() {
            panic!("invalid clock config: {error}");
        }
        Self {
            config,
            anchor_mono: mono_now,
            anchor_unix_nanos: unix_nanos(realtime_now),
            mono_ref: mono_now,
            correction_ref_nanos: 0,
            target_nanos: 0,
            slewing: false,
            offsets_nanos: [0; WINDOW_SAMPLES_MAX],
            offsets_len: 0,
            offsets_next: 0,
            corrections_total: 0,
        }
    }

    /// The process's wall-clock estimate at `mono_now`, in nanoseconds since the Unix epoch.
    ///
    /// Non-decreasing for non-decreasing `mono_now`, across samples too; a `mono_now` older
    /// than the latest sample reads as that sample's instant.
    pub fn now_unix_nanos(&self, mono_now: Instant) -> u64 {
        let mono = mono_now.max(self.mono_ref);
        let estimate = i128::from(self.anchor_unix_nanos)
            + i128::from(self.elapsed_nanos(mono))
            + i128::from(self.correction_at(mono));
        estimate.clamp(0, i128::from(u64::MAX)) as u64
    }

    /// The clock's state as plain integers, for handing to other threads (e.g. in atomics
    /// under a seqlock): [`ClockParams::now_unix_nanos`] then reads exactly what
    /// [`Self::now_unix_nanos`] does, until the next sample.
    pub fn params(&self) -> ClockParams {
        ClockParams {
            mono_ref_nanos: self.elapsed_nanos(self.mono_ref),
            anchor_unix_nanos: self.anchor_unix_nanos,
            correction_ref_nanos: self.correction_ref_nanos,
            target_nanos: self.target_nanos,
            slew_rate_ppm: if self.slewing {
                self.config.slew_rate_ppm
            } else {
                0
            },
        }
    }

    /// The monotonic instant the clock is anchored at; [`ClockParams`] count from it.
    pub fn anchor(&self) -> Instant {
        self.anchor_mono
    }

    /// Feeds one realtime reading (the driver calls this about once a second).
    ///
    /// Updates the median offset; starts a slew episode when the remaining drift exceeds
    /// `drift_threshold`; the episode ends once the correction has caught up with its target.
    pub fn handle_realtime_sample(&mut self, mono_now: Instant, realtime_now: SystemTime) {
        let mono = mono_now.max(self.mono_ref);
        // Freeze the correction reached so far: the output stays continuous.
        let correction = self.correction_at(mono);
        let caught_up = correction == self.target_nanos;
        self.correction_ref_nanos = correction;
        self.mono_ref = mono;
        if self.slewing && caught_up {
            self.slewing = false;
        }

        let uncorrected = i128::from(self.anchor_unix_nanos) + i128::from(self.elapsed_nanos(mono));
        let offset = i128::from(unix_nanos(realtime_now)) - uncorrected;
        self.offsets_nanos[self.offsets_next] =
            offset.clamp(i64::MIN.into(), i64::MAX.into()) as i64;
        self.offsets_next = (self.offsets_next + 1) % self.config.window_samples;
        self.offsets_len = (self.offsets_len + 1).min(self.config.window_samples);
        if self.offsets_len < self.config.samples_min {
            return;
        }
        self.target_nanos = self.median_offset_nanos();
        let drift = self.target_nanos.abs_diff(self.correction_ref_nanos);
        if !self.slewing && u128::from(drift) > self.config.drift_threshold.as_nanos() {
            self.slewing = true;
            self.corrections_total += 1;
        }
    }

    /// Estimated offset still to be corrected as of the latest sample, in seconds (positive:
    /// realtime is ahead of the process clock). Gauge `ringcast_clock_drift_seconds`.
    pub fn drift_seconds(&self) -> f64 {
        (self.target_nanos - self.correction_ref_nanos) as f64 / NANOS_PER_SECOND
    }

    /// Slew episodes started so far. Counter `ringcast_clock_corrections_total`.
    pub fn corrections_total(&self) -> u64 {
        self.corrections_total
    }

    /// Whether a slew episode is under way.
    pub fn is_slewing(&self) -> bool {
        self.slewing
    }

    /// The clock's configuration.
    pub fn config(&self) -> &ClockConfig {
        &self.config
    }

    fn elapsed_nanos(&self, mono: Instant) -> u64 {
        duration_nanos(mono.saturating_duration_since(self.anchor_mono))
    }

    /// Correction at `mono >= mono_ref`: moves from the reference toward the target at the
    /// slew rate, then holds. Integer steps of at most 1 ns per ns keep the output monotonic.
    fn correction_at(&self, mono: Instant) -> i64 {
        if !self.slewing {
            return self.correction_ref_nanos;
        }
        let since = duration_nanos(mono.saturating_duration_since(self.mono_ref));
        let step = u128::from(since) * u128::from(self.config.slew_rate_ppm) / u128::from(PPM);
        let remaining = self.target_nanos.abs_diff(self.correction_ref_nanos);
        let step = step.min(u128::from(remaining)) as u64;
        if self.target_nanos >= self.correction_ref_nanos {
            self.correction_ref_nanos.saturating_add_unsigned(step)
        } else {
            self.correction_ref_nanos.saturating_sub_unsigned(step)
        }
    }

    fn median_offset_nanos(&self) -> i64 {
        let mut sorted = [0i64; WINDOW_SAMPLES_MAX];
        let sorted = &mut sorted[..self.offsets_len];
        sorted.copy_from_slice(&self.offsets_nanos[..self.offsets_len]);
        sorted.sort_unstable();
        let middle = self.offsets_len / 2;
        if self.offsets_len % 2 == 1 {
            sorted[middle]
        } else {
            ((i128::from(sorted[middle - 1]) + i128::from(sorted[middle])) / 2) as i64
        }
    }
}

/// A [`ProcessClock`]'s state at its latest sample, as plain integers ([`ProcessClock::params`]).
///
/// Monotonic time is counted in nanoseconds since [`ProcessClock::anchor`], so the whole
/// state fits in five words another thread can read without a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClockParams {
    /// Monotonic nanoseconds (since the anchor) of the latest sample.
    pub mono_ref_nanos: u64,
    /// Wall time at the anchor, nanoseconds since the Unix epoch.
    pub anchor_unix_nanos: u64,
    /// Correction applied at the latest sample.
    pub correction_ref_nanos: i64,
    /// Correction being slewed toward.
    pub target_nanos: i64,
    /// Slew rate in ppm; 0 when no slew episode is under way.
    pub slew_rate_ppm: u32,
}

impl ClockParams {
    /// The wall-clock estimate `mono_since_anchor_nanos` after the anchor: the same value as
    /// [`ProcessClock::now_unix_nanos`] for the clock these parameters came from, and
    /// non-decreasing in its argument.
    pub fn now_unix_nanos(&self, mono_since_anchor_nanos: u64) -> u64 {
        let mono = mono_since_anchor_nanos.max(self.mono_ref_nanos);
        let since = mono - self.mono_ref_nanos;
        let step = u128::from(since) * u128::from(self.slew_rate_ppm) / u128::from(PPM);
        let remaining = self.target_nanos.abs_diff(self.correction_ref_nanos);
        let step = step.min(u128::from(remaining)) as u64;
        let correction = if self.target_nanos >= self.correction_ref_nanos {
            self.correction_ref_nanos.saturating_add_unsigned(step)
        } else {
            self.correction_ref_nanos.saturating_sub_unsigned(step)
        };
        let estimate =
            i128::from(self.anchor_unix_nanos) + i128::from(mono) + i128::from(correction);
        estimate.clamp(0, i128::from(u64::MAX)) as u64
    }
}

/// The wall-clock window of length `window` holding `unix_nanos`: `(start, end)` in
/// nanoseconds since the Unix epoch, `start` inclusive and a multiple of `window`, `end`
/// exclusive. Aligned to the epoch, so every shard and node computes the same windows.
///
/// # Panics
///
/// If `window` is zero.
pub fn window_bounds(unix_nanos: u64, window: Duration) -> (u64, u64) {
    assert!(!window.is_zero(), "window must be non-zero");
    let window_nanos = duration_nanos(window);
    let start = unix_nanos - unix_nanos % window_nanos;
    (start, start.saturating_add(window_nanos))
}

/// Nanoseconds since the Unix epoch, 0 before it.
fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, duration_nanos)
}

/// A duration in nanoseconds, saturating at `u64::MAX` (584 years).
fn duration_nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECOND: u64 = 1_000_000_000;
    /// 2026-01-01T00:00:00Z, the wall time at the anchor.
    const START_UNIX_NANOS: u64 = 1_767_225_600 * SECOND;
    /// Slew allowed per second at the default rate.
    const SLEW_PER_SECOND_NANOS: u64 = SECOND * SLEW_RATE_PPM_DEFAULT as u64 / PPM;

    /// Virtual time: monotonic nanos since `base`, realtime given as unix nanos.
    struct Sim {
        base: Instant,
        clock: ProcessClock,
    }

    impl Sim {
        fn new() -> Self {
            let base = Instant::now();
            let clock = ProcessClock::new(base, system_time(START_UNIX_NANOS));
            Self { base, clock }
        }

        fn mono(&self, nanos: u64) -> Instant {
            self.base + Duration::from_nanos(nanos)
        }

        fn sample(&mut self, mono_nanos: u64, realtime_nanos: u64) {
            let mono = self.mono(mono_nanos);
            self.clock
                .handle_realtime_sample(mono, system_time(realtime_nanos));
        }

        fn read(&self, mono_nanos: u64) -> u64 {
            self.clock.now_unix_nanos(self.mono(mono_nanos))
        }

        /// Runs `seconds` of one sample a second with `realtime(second)`, reading the clock
        /// every 250 ms; checks monotonicity and the slew bound; returns the output at each
        /// whole second.
        fn run(
            &mut self,
            from_second: u64,
            seconds: u64,
            realtime: impl Fn(u64) -> u64,
        ) -> Vec<u64> {
            let mut outputs = Vec::new();
            let mut previous: Option<(u64, u64)> = None;
            for second in from_second..from_second + seconds {
                for quarter in 0..4 {
                    let mono_nanos = second * SECOND + quarter * SECOND / 4;
                    let output = self.read(mono_nanos);
                    if let Some((previous_mono, previous_output)) = previous {
                        let elapsed = mono_nanos - previous_mono;
                        let advanced = output
                            .checked_sub(previous_output)
                            .expect("clock went back");
                        let bound = elapsed * SLEW_RATE_PPM_DEFAULT as u64 / PPM + 1;
                        assert!(
                            advanced.abs_diff(elapsed) <= bound,
                            "slew {advanced} over {elapsed}"
                        );
                    }
                    previous = Some((mono_nanos, output));
                    if quarter == 0 {
                        outputs.push(output);
                        self.sample(mono_nanos, realtime(second));
                    }
                }
            }
            outputs
        }
    }

    fn system_time(unix_nanos: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(unix_nanos)
    }

    fn on_time(second: u64) -> u64 {
        START_UNIX_NANOS + second * SECOND
    }

    #[test]
    fn tracks_realtime_without_drift() {
        let mut sim = Sim::new();
        let outputs = sim.run(0, 60, on_time);
        assert_eq!(outputs[59], on_time(59));
        assert_eq!(sim.clock.drift_seconds(), 0.0);
        assert_eq!(sim.clock.corrections_total(), 0);
    }

    #[test]
    fn single_outlier_is_ignored() {
        let mut sim = Sim::new();
        sim.run(0, 20, |second| {
            if second == 10 {
                on_time(second) + 2 * SECOND
            } else {
                on_time(second)
            }
        });
        assert_eq!(sim.clock.corrections_total(), 0);
        assert_eq!(sim.clock.drift_seconds(), 0.0);
        assert_eq!(sim.read(20 * SECOND), on_time(20));
    }

    #[test]
    fn outlier_among_first_samples_is_ignored() {
        let mut sim = Sim::new();
        sim.run(0, 5, |second| {
            if second == 0 {
                on_time(0) + 2 * SECOND
            } else {
                on_time(second)
            }
        });
        assert_eq!(sim.clock.corrections_total(), 0);
    }

    #[test]
    fn forward_jump_is_slewed_at_bounded_rate() {
        let mut sim = Sim::new();
        let jumped = |second: u64| {
            if second < 10 {
                on_time(second)
            } else {
                on_time(second) + 2 * SECOND
            }
        };
        sim.run(0, 100, jumped);
        // Samples 10..=99 are jumped. At second 17 half of the 16-sample window is jumped
        // and the median (midpoint of the two middle values, 1 s) crosses the threshold: the
        // slew starts there and has run for 82 seconds by second 99.
        assert_eq!(sim.clock.corrections_total(), 1);
        assert!(sim.clock.is_slewing());
        let slewed = 82 * SLEW_PER_SECOND_NANOS;
        let drift = sim.clock.drift_seconds();
        assert!(
            (drift - (2.0 - slewed as f64 / 1e9)).abs() < 1e-6,
            "drift {drift}"
        );
        assert_eq!(sim.read(99 * SECOND), on_time(99) + slewed);
    }

    #[test]
    fn forward_jump_is_fully_absorbed_then_stops() {
        let mut sim = Sim::new();
        let jumped = |second: u64| on_time(second) + 2 * SECOND;
        // 2 s at 500 µs/s takes 4000 s, plus the samples_min warm-up.
        sim.run(0, 4010, jumped);
        assert_eq!(sim.read(4010 * SECOND), on_time(4010) + 2 * SECOND);
        assert_eq!(sim.clock.drift_seconds(), 0.0);
        assert!(!sim.clock.is_slewing());
        assert_eq!(sim.clock.corrections_total(), 1);
    }

    #[test]
    fn backward_jump_never_steps_back() {
        let mut sim = Sim::new();
        let jumped = |second: u64| {
            if second < 10 {
                on_time(second)
            } else {
                on_time(second) - 2 * SECOND
            }
        };
        let outputs = sim.run(0, 100, jumped);
        assert!(outputs.windows(2).all(|pair| pair[1] > pair[0]));
        assert_eq!(sim.clock.corrections_total(), 1);
        let slewed = 82 * SLEW_PER_SECOND_NANOS;
        let drift = sim.clock.drift_seconds();
        assert!(
            (drift - (-2.0 + slewed as f64 / 1e9)).abs() < 1e-6,
            "drift {drift}"
        );
        assert_eq!(sim.read(99 * SECOND), on_time(99) - slewed);
    }

    #[test]
    fn slow_drift_is_tracked() {
        // Realtime runs 100 ppm fast for 10 minutes: 60 ms in total.
        let mut sim = Sim::new();
        let fast = |second: u64| on_time(second) + second * SECOND * 100 / PPM;
        sim.run(0, 600, fast);
        let error = sim.read(599 * SECOND).abs_diff(fast(599));
        // Median lag (~8 samples × 100 µs) plus the threshold bound the error.
        assert!(
            error < 2 * DRIFT_THRESHOLD_DEFAULT.as_nanos() as u64,
            "error {error} ns"
        );
        assert!(sim.clock.drift_seconds().abs() < 0.002);
        assert!(sim.clock.corrections_total() >= 1);
    }

    #[test]
    fn drift_below_threshold_is_reported_not_corrected() {
        let mut sim = Sim::new();
        sim.run(0, 20, |second| on_time(second) + 500_000);
        assert_eq!(sim.clock.corrections_total(), 0);
        assert!((sim.clock.drift_seconds() - 0.0005).abs() < 1e-12);
        assert_eq!(sim.read(20 * SECOND), on_time(20));
    }

    #[test]
    fn stale_mono_reads_clamp_to_latest_sample() {
        let mut sim = Sim::new();
        sim.run(0, 30, |second| on_time(second) + 2 * SECOND);
        let at_sample = sim.read(29 * SECOND);
        assert_eq!(sim.read(28 * SECOND), at_sample);
    }

    #[test]
    fn window_bounds_table() {
        let cases: [(u64, Duration, (u64, u64)); 5] = [
            (0, Duration::from_secs(1), (0, SECOND)),
            (SECOND - 1, Duration::from_secs(1), (0, SECOND)),
            (SECOND, Duration::from_secs(1), (SECOND, 2 * SECOND)),
            (
                START_UNIX_NANOS + 61 * SECOND,
                Duration::from_secs(60),
                (
                    START_UNIX_NANOS + 60 * SECOND,
                    START_UNIX_NANOS + 120 * SECOND,
                ),
            ),
            (u64::MAX, Duration::from_nanos(10), (u64::MAX - 5, u64::MAX)),
        ];
        for (unix_nanos, window, expected) in cases {
            assert_eq!(
                window_bounds(unix_nanos, window),
                expected,
                "{unix_nanos} {window:?}"
            );
        }
    }

    #[test]
    fn config_validation() {
        assert_eq!(ClockConfig::default().validate(), Ok(()));
        let bad = ClockConfig {
            window_samples: 0,
            ..ClockConfig::default()
        };
        assert_eq!(bad.validate(), Err(ClockConfigError::WindowSamples(0)));
        let bad = ClockConfig {
            samples_min: 17,
            ..ClockConfig::default()
        };
        assert_eq!(bad.validate(), Err(ClockConfigError::SamplesMin(17)));
        let bad = ClockConfig {
            slew_rate_ppm: PPM as u32,
            ..ClockConfig::default()
        };
        assert_eq!(bad.validate(), Err(ClockConfigError::SlewRate(PPM as u32)));
    }

    #[derive(Debug, Clone)]
    enum Step {
        Sample { advance_ms: u64, offset_ms: i64 },
        Read { advance_ms: u64, behind_ms: u64 },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0..3_000u64, -5_000..5_000i64).prop_map(|(advance_ms, offset_ms)| Step::Sample {
                advance_ms,
                offset_ms
            }),
            (0..3_000u64, prop_oneof![Just(0u64), 0..2_000u64]).prop_map(
                |(advance_ms, behind_ms)| Step::Read {
                    advance_ms,
                    behind_ms
                }
            ),
        ]
    }

    proptest! {
        #[test]
        fn output_is_monotonic_and_slew_bounded(steps in proptest::collection::vec(step(), 1..300), window_samples in 1usize..20, slew_rate_ppm in 1u32..=SLEW_RATE_PPM_MAX) {
            let config = ClockConfig { window_samples, samples_min: 1, slew_rate_ppm, ..ClockConfig::default() };
            let base = Instant::now();
            let mut clock = ProcessClock::with_config(config, base, system_time(START_UNIX_NANOS));
            let mut mono_ms = 0u64;
            let mut sample_ms = 0u64;
            let mut last_read_ms = 0u64;
            let mut last_read_fresh = true;
            let mut last_output = clock.now_unix_nanos(base);
            for step in steps {
                match step {
                    Step::Sample { advance_ms, offset_ms } => {
                        mono_ms += advance_ms;
                        sample_ms = mono_ms;
                        let realtime = (START_UNIX_NANOS + mono_ms * 1_000_000).saturating_add_signed(offset_ms * 1_000_000);
                        clock.handle_realtime_sample(base + Duration::from_millis(mono_ms), system_time(realtime));
                    }
                    Step::Read { advance_ms, behind_ms } => {
                        mono_ms += advance_ms;
                        // A shard whose `now` lags the driver's may read an instant before the
                        // latest sample, as long as its own instants do not decrease.
                        let read_ms = mono_ms.saturating_sub(behind_ms).max(last_read_ms);
                        let fresh = read_ms >= sample_ms;
                        let output = clock.now_unix_nanos(base + Duration::from_millis(read_ms));
                        prop_assert!(output >= last_output, "went back: {} < {}", output, last_output);
                        // Another thread holding only the published parameters reads the same.
                        prop_assert_eq!(clock.params().now_unix_nanos(read_ms * 1_000_000), output);
                        prop_assert_eq!(clock.anchor(), base);
                        if fresh && last_read_fresh {
                            // Both reads on the slewed line: the rate is bounded both ways.
                            let elapsed = (read_ms - last_read_ms) * 1_000_000;
                            let bound = elapsed * u64::from(slew_rate_ppm) / PPM + 1;
                            prop_assert!((output - last_output).abs_diff(elapsed) <= bound);
                        }
                        last_output = output;
                        last_read_ms = read_ms;
                        last_read_fresh = fresh;
                    }
                }
            }
        }
    }
}
