//! Circuit breaker (sans-IO) guarding one upstream dependency.
//!
//! States: **closed** (calls flow, outcomes are recorded) → **open** (calls are rejected
//! with a `Retry-After`) → **half-open** (a limited number of probe calls decide between
//! closed and open again).
//!
//! The rolling window is **time-based**: outcomes are counted in [`BUCKETS`] buckets of
//! `window / BUCKETS` each, keyed by the time the outcome was *recorded*; an outcome leaves
//! the window between `window × (BUCKETS − 1) / BUCKETS` and `window` after it was recorded.
//! Once the window holds at least `calls_min` outcomes, the breaker opens when the failure
//! rate exceeds `failure_rate_max` or the slow-call rate (calls slower than
//! `slow_call_duration`, whatever their outcome) exceeds `slow_rate_max`. Rates *equal* to
//! the maximum are tolerated, so a maximum of `1.0` disables that trigger.
//!
//! Open → half-open happens inside [`CircuitBreaker::allow`] once `open_duration` has passed.
//! Half-open hands out `half_open_probes` probe permits: if all of them succeed (and are not
//! slow) the breaker closes, any failed or slow probe opens it again. A probe permit that is
//! never recorded (request abandoned) would wedge the breaker, so a half-open round that has
//! handed out all its probes and not finished within `max(open_duration,
//! slow_call_duration)` counts as failed. Every transition starts a new era; permits from an
//! earlier era are ignored by [`CircuitBreaker::record`], and the window is cleared.

use std::time::{Duration, Instant};

use thiserror::Error;

/// Buckets of the rolling window (ten, as resilience4j's default time window: fine enough
/// that outcomes leave the window within 10 % of `window`, and summing them is cheap).
pub const BUCKETS: usize = 10;
/// Most probe permits a half-open round may hand out.
pub const HALF_OPEN_PROBES_MAX: u32 = 1_000;
/// Default rolling window.
pub const WINDOW_DEFAULT: Duration = Duration::from_secs(10);
/// Default highest tolerated failure rate.
pub const FAILURE_RATE_MAX_DEFAULT: f64 = 0.5;
/// Default duration above which a call counts as slow.
pub const SLOW_CALL_DURATION_DEFAULT: Duration = Duration::from_secs(1);
/// Default highest tolerated slow-call rate.
pub const SLOW_RATE_MAX_DEFAULT: f64 = 0.8;
/// Default number of outcomes in the window before rates are evaluated.
pub const CALLS_MIN_DEFAULT: u32 = 20;
/// Default time the breaker stays open before probing.
pub const OPEN_DURATION_DEFAULT: Duration = Duration::from_secs(5);
/// Default number of half-open probes.
pub const HALF_OPEN_PROBES_DEFAULT: u32 = 3;

const _: () = assert!(BUCKETS >= 2);
const _: () =
    assert!(HALF_OPEN_PROBES_DEFAULT >= 1 && HALF_OPEN_PROBES_DEFAULT <= HALF_OPEN_PROBES_MAX);
const _: () = assert!(WINDOW_DEFAULT.as_nanos() >= BUCKETS as u128);

/// Tuning of a [`CircuitBreaker`]; see the module doc for the semantics.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Length of the time-based rolling window (default [`WINDOW_DEFAULT`], 10 s).
    pub window: Duration,
    /// Highest tolerated failure rate in `0.0..=1.0` (default [`FAILURE_RATE_MAX_DEFAULT`],
    /// 50 %); a higher rate opens the breaker.
    pub failure_rate_max: f64,
    /// A call taking longer than this is slow (default [`SLOW_CALL_DURATION_DEFAULT`], 1 s).
    pub slow_call_duration: Duration,
    /// Highest tolerated slow-call rate in `0.0..=1.0` (default [`SLOW_RATE_MAX_DEFAULT`],
    /// 80 %).
    pub slow_rate_max: f64,
    /// Outcomes needed in the window before rates are evaluated (default
    /// [`CALLS_MIN_DEFAULT`], 20).
    pub calls_min: u32,
    /// Time spent open before probing (default [`OPEN_DURATION_DEFAULT`], 5 s).
    pub open_duration: Duration,
    /// Probe permits per half-open round, `1..=`[`HALF_OPEN_PROBES_MAX`] (default
    /// [`HALF_OPEN_PROBES_DEFAULT`], 3).
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window: WINDOW_DEFAULT,
            failure_rate_max: FAILURE_RATE_MAX_DEFAULT,
            slow_call_duration: SLOW_CALL_DURATION_DEFAULT,
            slow_rate_max: SLOW_RATE_MAX_DEFAULT,
            calls_min: CALLS_MIN_DEFAULT,
            open_duration: OPEN_DURATION_DEFAULT,
            half_open_probes: HALF_OPEN_PROBES_DEFAULT,
        }
    }
}

/// An invalid [`BreakerConfig`].
#[derive(Debug, Error, Clone, PartialEq)]
pub enum BreakerConfigError {
    /// `window` is shorter than one nanosecond per bucket.
    #[error("window {0:?} too short")]
    Window(Duration),
    /// `failure_rate_max` is not within `0.0..=1.0`.
    #[error("failure_rate_max {0} not in 0.0..=1.0")]
    FailureRateMax(f64),
    /// `slow_rate_max` is not within `0.0..=1.0`.
    #[error("slow_rate_max {0} not in 0.0..=1.0")]
    SlowRateMax(f64),
    /// `half_open_probes` is zero or above [`HALF_OPEN_PROBES_MAX`].
    #[error("half_open_probes {0} not in 1..={HALF_OPEN_PROBES_MAX}")]
    HalfOpenProbes(u32),
}

impl BreakerConfig {
    /// Checks the limits; for config files, before [`CircuitBreaker::new`].
    pub fn validate(&self) -> Result<(), BreakerConfigError> {
        if self.window.as_nanos() < BUCKETS as u128 {
            return Err(BreakerConfigError::Window(self.window));
        }
        if !(0.0..=1.0).contains(&self.failure_rate_max) {
            return Err(BreakerConfigError::FailureRateMax(self.failure_rate_max));
        }
        if !(0.0..=1.0).contains(&self.slow_rate_max) {
            return Err(BreakerConfigError::SlowRateMax(self.slow_rate_max));
        }
        if self.half_open_probes == 0 || self.half_open_probes > HALF_OPEN_PROBES_MAX {
            return Err(BreakerConfigError::HalfOpenProbes(self.half_open_probes));
        }
        Ok(())
    }
}

/// State of a breaker, as seen by [`CircuitBreaker::state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls flow; outcomes fill the rolling window.
    Closed,
    /// Calls are rejected until `open_duration` has passed.
    Open,
    /// A limited number of probe calls decide whether to close or reopen.
    HalfOpen,
}

/// How a call ended; its latency is passed to [`CircuitBreaker::record`] separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The call succeeded.
    Success,
    /// The call failed (error, timeout, 5xx…).
    Failure,
}

/// Permission for one call, returned by [`CircuitBreaker::allow`]; hand it back to
/// [`CircuitBreaker::record`] with the outcome so that probes are accounted for.
#[must_use = "pass the permit back to CircuitBreaker::record with the call's outcome"]
#[derive(Debug, PartialEq, Eq)]
pub struct Permit {
    era: u64,
    probe: bool,
}

impl Permit {
    /// Whether this permit is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

/// [`CircuitBreaker::allow`] refused the call.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[error("circuit breaker open, retry after {retry_after:?}")]
pub struct Rejected {
    /// Time until the breaker will let a call through again (start of the half-open round,
    /// or the end of the current one).
    pub retry_after: Duration,
}

impl Rejected {
    /// `retry_after` in whole seconds, rounded up and at least 1, for a `Retry-After` header.
    pub fn retry_after_seconds(&self) -> u64 {
        let seconds = self.retry_after.as_secs();
        let rounded = if self.retry_after.subsec_nanos() > 0 {
            seconds + 1
        } else {
            seconds
        };
        rounded.max(1)
    }
}

/// Outcome counts of one bucket of the rolling window.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Bucket number since the window's origin; [`EMPTY_EPOCH`] when unused.
    epoch: u64,
    calls: u32,
    failures: u32,
    slow: u32,
}

const EMPTY_EPOCH: u64 = u64::MAX;
const EMPTY_BUCKET: Bucket = Bucket {
    epoch: EMPTY_EPOCH,
    calls: 0,
    failures: 0,
    slow: 0,
};

#[derive(Debug, Clone, Copy)]
enum Mode {
    Closed,
    Open {
        until: Instant,
    },
    HalfOpen {
        since: Instant,
        probes_issued: u32,
        probes_succeeded: u32,
    },
}

/// A circuit breaker for one upstream; see the module doc.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    mode: Mode,
    /// Bumped on every transition; permits of older eras are ignored.
    era: u64,
    /// Origin of the bucket numbering, set by the first recorded outcome.
    origin: Option<Instant>,
    bucket_nanos: u64,
    buckets: [Bucket; BUCKETS],
    /// Transitions into closed, open, half-open.
    transitions: [u64; 3],
}

impl CircuitBreaker {
    /// A closed breaker with an empty window.
    ///
    /// # Panics
    ///
    /// If `config` fails [`BreakerConfig::validate`].
    pub fn new(config: BreakerConfig) -> Self {
        if let Err(error) = config.validate() {
            panic!("invalid breaker config: {error}");
        }
        let bucket_nanos =
            u64::try_from(config.window.as_nanos() / BUCKETS as u128).unwrap_or(u64::MAX);
        Self {
            config,
            mode: Mode::Closed,
            era: 0,
            origin: None,
            bucket_nanos,
            buckets: [EMPTY_BUCKET; BUCKETS],
            transitions: [0; 3],
        }
    }

    /// Asks to make one call at `now`. Closed: always allowed. Open: rejected with the time
    /// left until half-open, or, once `open_duration` has passed, turns half-open and hands
    /// out the first probe. Half-open: hands out up to `half_open_probes` probes, then
    /// rejects until the round is decided.
    pub fn allow(&mut self, now: Instant) -> Result<Permit, Rejected> {
        match self.mode {
            Mode::Closed => Ok(Permit {
                era: self.era,
                probe: false,
            }),
            Mode::Open { until } => {
                if now < until {
                    return Err(Rejected {
                        retry_after: until - now,
                    });
                }
                self.transition(Mode::HalfOpen {
                    since: now,
                    probes_issued: 0,
                    probes_succeeded: 0,
                });
                self.allow(now)
            }
            Mode::HalfOpen {
                since,
                probes_issued,
                probes_succeeded,
            } => {
                if probes_issued < self.config.half_open_probes {
                    self.mode = Mode::HalfOpen {
                        since,
                        probes_issued: probes_issued + 1,
                        probes_succeeded,
                    };
                    return Ok(Permit {
                        era: self.era,
                        probe: true,
                    });
                }
                let round_end = since + self.probe_timeout();
                if now < round_end {
                    return Err(Rejected {
                        retry_after: round_end - now,
                    });
                }
                // Probes were lost (never recorded): treat the round as failed.
                self.trip(now);
                Err(Rejected {
                    retry_after: self.config.open_duration,
                })
            }
        }
    }

    /// Records how the call of `permit` ended. Closed: the outcome enters the rolling window
    /// and the rates are evaluated. Half-open probe: a failure or a slow call reopens, the
    /// last of `half_open_probes` successes closes. Permits from before the latest
    /// transition are ignored.
    pub fn record(&mut self, permit: Permit, outcome: Outcome, latency: Duration, now: Instant) {
        if permit.era != self.era {
            return;
        }
        let failed = outcome == Outcome::Failure;
        let slow = latency > self.config.slow_call_duration;
        match self.mode {
            Mode::Closed => {
                self.count(now, failed, slow);
                if self.rates_exceeded(now) {
                    self.trip(now);
                }
            }
            Mode::HalfOpen {
                since,
                probes_issued,
                probes_succeeded,
            } if permit.probe => {
                if failed || slow {
                    self.trip(now);
                } else if probes_succeeded + 1 >= self.config.half_open_probes {
                    self.transition(Mode::Closed);
                } else {
                    self.mode = Mode::HalfOpen {
                        since,
                        probes_issued,
                        probes_succeeded: probes_succeeded + 1,
                    };
                }
            }
            // Not reachable with a current-era permit; nothing to account.
            Mode::HalfOpen { .. } | Mode::Open { .. } => {}
        }
    }

    /// The state [`allow`](Self::allow) would act in at `now`: an open breaker whose
    /// `open_duration` has passed reads half-open, a half-open round whose probes were lost
    /// reads open.
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.mode {
            Mode::Closed => BreakerState::Closed,
            Mode::Open { until } if now < until => BreakerState::Open,
            Mode::Open { .. } => BreakerState::HalfOpen,
            Mode::HalfOpen {
                since,
                probes_issued,
                ..
            } if probes_issued >= self.config.half_open_probes
                && now >= since + self.probe_timeout() =>
            {
                BreakerState::Open
            }
            Mode::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Transitions so far, all states together.
    pub fn transitions_total(&self) -> u64 {
        self.transitions.iter().sum()
    }

    /// Transitions into `state` so far (metric label `to`).
    pub fn transitions_to(&self, state: BreakerState) -> u64 {
        self.transitions[state_index(state)]
    }

    /// The breaker's configuration.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// How long a half-open round with all probes out may last before it counts as failed.
    fn probe_timeout(&self) -> Duration {
        self.config
            .open_duration
            .max(self.config.slow_call_duration)
    }

    fn trip(&mut self, now: Instant) {
        let until = now + self.config.open_duration;
        self.transition(Mode::Open { until });
    }

    fn transition(&mut self, mode: Mode) {
        self.mode = mode;
        self.era += 1;
        self.buckets = [EMPTY_BUCKET; BUCKETS];
        let state = match mode {
            Mode::Closed => BreakerState::Closed,
            Mode::Open { .. } => BreakerState::Open,
            Mode::HalfOpen { .. } => BreakerState::HalfOpen,
        };
        self.transitions[state_index(state)] += 1;
    }

    fn epoch(&mut self, now: Instant) -> u64 {
        let origin = *self.origin.get_or_insert(now);
        let since = now.saturating_duration_since(origin).as_nanos();
        u64::try_from(since / u128::from(self.bucket_nanos)).unwrap_or(EMPTY_EPOCH - 1)
    }

    fn count(&mut self, now: Instant, failed: bool, slow: bool) {
        let epoch = self.epoch(now);
        let bucket = &mut self.buckets[(epoch % BUCKETS as u64) as usize];
        if bucket.epoch != epoch {
            *bucket = Bucket {
                epoch,
                ..EMPTY_BUCKET
            };
        }
        bucket.calls = bucket.calls.saturating_add(1);
        bucket.failures = bucket.failures.saturating_add(u32::from(failed));
        bucket.slow = bucket.slow.saturating_add(u32::from(slow));
    }

    fn rates_exceeded(&mut self, now: Instant) -> bool {
        let current = self.epoch(now);
        let (mut calls, mut failures, mut slow) = (0u64, 0u64, 0u64);
        for bucket in &self.buckets {
            let in_window = bucket.epoch != EMPTY_EPOCH
                && bucket.epoch <= current
                && current - bucket.epoch < BUCKETS as u64;
            if in_window {
                calls += u64::from(bucket.calls);
                failures += u64::from(bucket.failures);
                slow += u64::from(bucket.slow);
            }
        }
        if calls == 0 || calls < u64::from(self.config.calls_min) {
            return false;
        }
        let failure_rate = failures as f64 / calls as f64;
        let slow_rate = slow as f64 / calls as f64;
        failure_rate > self.config.failure_rate_max || slow_rate > self.config.slow_rate_max
    }
}

fn state_index(state: BreakerState) -> usize {
    match state {
        BreakerState::Closed => 0,
        BreakerState::Open => 1,
        BreakerState::HalfOpen => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FAST: Duration = Duration::from_millis(10);
    const SLOW: Duration = Duration::from_secs(2);

    fn config() -> BreakerConfig {
        BreakerConfig {
            window: Duration::from_secs(10),
            failure_rate_max: 0.5,
            slow_call_duration: Duration::from_secs(1),
            slow_rate_max: 0.5,
            calls_min: 10,
            open_duration: Duration::from_secs(5),
            half_open_probes: 2,
        }
    }

    fn call(breaker: &mut CircuitBreaker, now: Instant, outcome: Outcome, latency: Duration) {
        let permit = breaker.allow(now).expect("allowed");
        breaker.record(permit, outcome, latency, now);
    }

    /// Opens a fresh breaker at `now` with ten failures.
    fn opened(now: Instant) -> CircuitBreaker {
        let mut breaker = CircuitBreaker::new(config());
        for _ in 0..10 {
            call(&mut breaker, now, Outcome::Failure, FAST);
        }
        assert_eq!(breaker.state(now), BreakerState::Open);
        breaker
    }

    #[test]
    fn closed_to_open_table() {
        struct Case {
            name: &'static str,
            /// (failures, slow successes, fast successes)
            calls: (u32, u32, u32),
            expected: BreakerState,
        }
        let cases = [
            Case {
                name: "all fine",
                calls: (0, 0, 20),
                expected: BreakerState::Closed,
            },
            Case {
                name: "failure rate at max tolerated",
                calls: (5, 0, 5),
                expected: BreakerState::Closed,
            },
            Case {
                name: "failure rate above max",
                calls: (6, 0, 4),
                expected: BreakerState::Open,
            },
            Case {
                name: "slow rate at max tolerated",
                calls: (0, 5, 5),
                expected: BreakerState::Closed,
            },
            Case {
                name: "slow rate above max",
                calls: (0, 6, 4),
                expected: BreakerState::Open,
            },
            Case {
                name: "below calls_min all failing",
                calls: (9, 0, 0),
                expected: BreakerState::Closed,
            },
            Case {
                name: "below calls_min all slow",
                calls: (0, 9, 0),
                expected: BreakerState::Closed,
            },
            Case {
                name: "reaching calls_min",
                calls: (10, 0, 0),
                expected: BreakerState::Open,
            },
        ];
        for case in cases {
            let now = Instant::now();
            let mut breaker = CircuitBreaker::new(config());
            let (failures, slow, fast) = case.calls;
            for _ in 0..fast {
                call(&mut breaker, now, Outcome::Success, FAST);
            }
            for _ in 0..slow {
                call(&mut breaker, now, Outcome::Success, SLOW);
            }
            for _ in 0..failures {
                call(&mut breaker, now, Outcome::Failure, FAST);
            }
            assert_eq!(breaker.state(now), case.expected, "case {}", case.name);
            let opened = u64::from(case.expected == BreakerState::Open);
            assert_eq!(
                breaker.transitions_to(BreakerState::Open),
                opened,
                "case {}",
                case.name
            );
            assert_eq!(breaker.transitions_total(), opened, "case {}", case.name);
        }
    }

    #[test]
    fn latency_equal_to_slow_call_duration_is_not_slow() {
        let now = Instant::now();
        let mut breaker = CircuitBreaker::new(config());
        for _ in 0..20 {
            call(
                &mut breaker,
                now,
                Outcome::Success,
                config().slow_call_duration,
            );
        }
        assert_eq!(breaker.state(now), BreakerState::Closed);
    }

    #[test]
    fn open_rejects_with_retry_after() {
        let now = Instant::now();
        let mut breaker = opened(now);
        let rejected = breaker
            .allow(now + Duration::from_millis(1500))
            .unwrap_err();
        assert_eq!(rejected.retry_after, Duration::from_millis(3500));
        assert_eq!(rejected.retry_after_seconds(), 4);
        let rejected = breaker.allow(now + Duration::from_secs(1)).unwrap_err();
        assert_eq!(rejected.retry_after_seconds(), 4);
        assert_eq!(
            Rejected {
                retry_after: Duration::from_millis(1)
            }
            .retry_after_seconds(),
            1
        );
    }

    #[test]
    fn open_to_half_open_at_allow_after_duration() {
        let now = Instant::now();
        let mut breaker = opened(now);
        let later = now + config().open_duration;
        assert_eq!(
            breaker.state(later - Duration::from_nanos(1)),
            BreakerState::Open
        );
        assert_eq!(breaker.state(later), BreakerState::HalfOpen);
        assert_eq!(
            breaker.transitions_to(BreakerState::HalfOpen),
            0,
            "only allow transitions"
        );
        let permit = breaker.allow(later).unwrap();
        assert!(permit.is_probe());
        assert_eq!(breaker.transitions_to(BreakerState::HalfOpen), 1);
        breaker.record(permit, Outcome::Success, FAST, later);
    }

    #[test]
    fn half_open_closes_after_all_probes_succeed() {
        let now = Instant::now();
        let mut breaker = opened(now);
        let later = now + config().open_duration;
        let first = breaker.allow(later).unwrap();
        let second = breaker.allow(later).unwrap();
        breaker.record(second, Outcome::Success, FAST, later);
        assert_eq!(breaker.state(later), BreakerState::HalfOpen);
        breaker.record(first, Outcome::Success, FAST, later);
        assert_eq!(breaker.state(later), BreakerState::Closed);
        assert_eq!(breaker.transitions_to(BreakerState::Closed), 1);
        assert_eq!(breaker.transitions_total(), 3);
        // The window was cleared: the old failures do not reopen it.
        call(&mut breaker, later, Outcome::Success, FAST);
        assert_eq!(breaker.state(later), BreakerState::Closed);
    }

    #[test]
    fn half_open_reopens_on_failed_or_slow_probe() {
        for (outcome, latency) in [(Outcome::Failure, FAST), (Outcome::Success, SLOW)] {
            let now = Instant::now();
            let mut breaker = opened(now);
            let later = now + config().open_duration;
            let first = breaker.allow(later).unwrap();
            let second = breaker.allow(later).unwrap();
            breaker.record(first, outcome, latency, later);
            assert_eq!(
                breaker.state(later),
                BreakerState::Open,
                "{outcome:?} {latency:?}"
            );
            assert_eq!(breaker.transitions_to(BreakerState::Open), 2);
            // The other probe's result belongs to the finished round and is ignored.
            breaker.record(second, Outcome::Success, FAST, later);
            assert_eq!(breaker.state(later), BreakerState::Open);
            assert_eq!(
                breaker.allow(later).unwrap_err().retry_after,
                config().open_duration
            );
        }
    }

    #[test]
    fn half_open_limits_concurrent_probes() {
        let now = Instant::now();
        let mut breaker = opened(now);
        let later = now + config().open_duration;
        let first = breaker.allow(later).unwrap();
        let second = breaker.allow(later).unwrap();
        let rejected = breaker.allow(later).unwrap_err();
        let probe_timeout = config().open_duration.max(config().slow_call_duration);
        assert_eq!(rejected.retry_after, probe_timeout);
        breaker.record(first, Outcome::Success, FAST, later);
        assert!(
            breaker.allow(later).is_err(),
            "a recorded probe does not free a slot"
        );
        breaker.record(second, Outcome::Success, FAST, later);
        assert!(breaker.allow(later).is_ok());
    }

    #[test]
    fn lost_probes_reopen_after_probe_timeout() {
        let now = Instant::now();
        let mut breaker = opened(now);
        let later = now + config().open_duration;
        let _lost_first = breaker.allow(later).unwrap();
        let _lost_second = breaker.allow(later).unwrap();
        let timeout = later + config().open_duration;
        assert_eq!(breaker.state(timeout), BreakerState::Open);
        let rejected = breaker.allow(timeout).unwrap_err();
        assert_eq!(rejected.retry_after, config().open_duration);
        assert_eq!(breaker.transitions_to(BreakerState::Open), 2);
        assert!(breaker
            .allow(timeout + config().open_duration)
            .unwrap()
            .is_probe());
    }

    #[test]
    fn stale_closed_permit_is_ignored_after_opening() {
        let now = Instant::now();
        let mut breaker = CircuitBreaker::new(config());
        let in_flight = breaker.allow(now).unwrap();
        for _ in 0..10 {
            call(&mut breaker, now, Outcome::Failure, FAST);
        }
        let later = now + config().open_duration;
        let probe = breaker.allow(later).unwrap();
        // Completing late, the pre-open call must not count as a probe.
        breaker.record(in_flight, Outcome::Success, FAST, later);
        breaker.record(probe, Outcome::Success, FAST, later);
        assert_eq!(breaker.state(later), BreakerState::HalfOpen);
    }

    #[test]
    fn old_outcomes_leave_the_window() {
        let start = Instant::now();
        let mut breaker = CircuitBreaker::new(config());
        for _ in 0..9 {
            call(&mut breaker, start, Outcome::Failure, FAST);
        }
        // Ten seconds later the nine failures have left the window: one more failure is
        // below calls_min, and five successes and five failures do not exceed 50 %.
        let later = start + config().window;
        call(&mut breaker, later, Outcome::Failure, FAST);
        assert_eq!(breaker.state(later), BreakerState::Closed);
        for _ in 0..5 {
            call(&mut breaker, later, Outcome::Success, FAST);
        }
        for _ in 0..4 {
            call(&mut breaker, later, Outcome::Failure, FAST);
        }
        assert_eq!(breaker.state(later), BreakerState::Closed);
        // Within the window the same nine failures plus one do open it.
        let mut breaker = CircuitBreaker::new(config());
        for _ in 0..9 {
            call(&mut breaker, start, Outcome::Failure, FAST);
        }
        let inside = start + config().window * 8 / 10;
        call(&mut breaker, inside, Outcome::Failure, FAST);
        assert_eq!(breaker.state(inside), BreakerState::Open);
    }

    #[test]
    fn config_validation() {
        assert_eq!(BreakerConfig::default().validate(), Ok(()));
        let cases = [
            (
                BreakerConfig {
                    window: Duration::from_nanos(9),
                    ..config()
                },
                BreakerConfigError::Window(Duration::from_nanos(9)),
            ),
            (
                BreakerConfig {
                    failure_rate_max: 1.5,
                    ..config()
                },
                BreakerConfigError::FailureRateMax(1.5),
            ),
            (
                BreakerConfig {
                    slow_rate_max: -0.1,
                    ..config()
                },
                BreakerConfigError::SlowRateMax(-0.1),
            ),
            (
                BreakerConfig {
                    half_open_probes: 0,
                    ..config()
                },
                BreakerConfigError::HalfOpenProbes(0),
            ),
        ];
        for (config, error) in cases {
            assert_eq!(config.validate(), Err(error));
        }
        let nan = BreakerConfig {
            failure_rate_max: f64::NAN,
            ..config()
        };
        assert!(nan.validate().is_err());
    }

    #[derive(Debug, Clone)]
    enum Step {
        Allow,
        Record {
            pick: usize,
            failed: bool,
            slow: bool,
        },
        Advance {
            ms: u64,
        },
    }

    proptest! {
        /// Whatever happens, a breaker never hands out more than `half_open_probes` probes
        /// per round, never lets a call through while open, and counts every transition.
        #[test]
        fn invariants_hold(steps in proptest::collection::vec(prop_oneof![
            3 => Just(Step::Allow),
            3 => (any::<usize>(), any::<bool>(), any::<bool>()).prop_map(|(pick, failed, slow)| Step::Record { pick, failed, slow }),
            1 => (0..3_000u64).prop_map(|ms| Step::Advance { ms }),
        ], 1..300)) {
            let mut now = Instant::now();
            let mut breaker = CircuitBreaker::new(config());
            let mut permits: Vec<Permit> = Vec::new();
            let mut probes_this_round = 0u32;
            let mut last_half_opens = 0u64;
            for step in steps {
                match step {
                    Step::Allow => {
                        let before = breaker.state(now);
                        match breaker.allow(now) {
                            Ok(permit) => {
                                prop_assert_ne!(before, BreakerState::Open);
                                if breaker.transitions_to(BreakerState::HalfOpen) != last_half_opens {
                                    last_half_opens = breaker.transitions_to(BreakerState::HalfOpen);
                                    probes_this_round = 0;
                                }
                                if permit.is_probe() {
                                    probes_this_round += 1;
                                    prop_assert!(probes_this_round <= config().half_open_probes);
                                }
                                permits.push(permit);
                            }
                            Err(rejected) => {
                                prop_assert_ne!(before, BreakerState::Closed);
                                prop_assert!(rejected.retry_after > Duration::ZERO);
                                prop_assert!(rejected.retry_after <= config().open_duration.max(config().slow_call_duration));
                            }
                        }
                    }
                    Step::Record { pick, failed, slow } if !permits.is_empty() => {
                        let permit = permits.swap_remove(pick % permits.len());
                        let outcome = if failed { Outcome::Failure } else { Outcome::Success };
                        breaker.record(permit, outcome, if slow { SLOW } else { FAST }, now);
                    }
                    Step::Record { .. } => {}
                    Step::Advance { ms } => now += Duration::from_millis(ms),
                }
                let counted: u64 = [BreakerState::Closed, BreakerState::Open, BreakerState::HalfOpen]
                    .into_iter()
                    .map(|state| breaker.transitions_to(state))
                    .sum();
                prop_assert_eq!(counted, breaker.transitions_total());
            }
        }
    }
}
