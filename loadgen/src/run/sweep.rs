//! `--sweep`: finds the highest clean publish rate. Doubles the rate from `--rate` until a
//! run is not clean, then bisects between the last clean and first unclean rate until they
//! are within [`SWEEP_PRECISION`] or the step budget is spent.

use crate::run::fanout::{self, FanoutConfig, FanoutError, FanoutReport};
use crate::run::progress::Progress;
use serde::{Deserialize, Serialize};

/// Bisection stops when (unclean − clean) / clean is below this.
pub const SWEEP_PRECISION: f64 = 0.05;

/// Most doubling steps (from `--rate`, 2^24 × start is far beyond any server).
pub const DOUBLINGS_MAX: u32 = 24;

/// One run of the sweep (read back from saved reports by `ringload plot`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepStep {
    /// Rate tried.
    pub rate: f64,
    /// Whether it was clean.
    pub clean: bool,
    /// Deliveries per second.
    pub deliveries_per_s: f64,
    /// p50 from schedule (ms).
    pub p50_ms: f64,
    /// p99 from schedule (ms).
    pub p99_ms: f64,
    /// Reasons when not clean.
    pub reasons: Vec<String>,
}

/// The sweep's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct SweepReport {
    /// Always "sweep".
    pub mode: &'static str,
    /// Every step in order.
    pub steps: Vec<SweepStep>,
    /// Highest clean rate found.
    pub best_rate: Option<f64>,
    /// Deliveries per second at the best rate.
    pub best_deliveries_per_s: Option<f64>,
    /// Full report of the best run.
    pub best: Option<FanoutReport>,
}

/// Runs the sweep; `on_step` is called after each run (for printing).
pub fn run(
    base: &FanoutConfig,
    bisect_steps: u32,
    rate_max: Option<f64>,
    progress: &mut Progress,
    mut on_step: impl FnMut(&SweepStep),
) -> Result<SweepReport, FanoutError> {
    let mut steps = Vec::new();
    let mut best: Option<FanoutReport> = None;
    let mut worst_unclean: Option<f64> = None;
    let mut try_rate = |rate: f64, steps: &mut Vec<SweepStep>, progress: &mut Progress| {
        let mut config = base.clone();
        config.rate = rate;
        let report = fanout::run(&config, progress)?;
        let step = SweepStep {
            rate,
            clean: report.verdict.clean,
            deliveries_per_s: report.deliveries_per_s,
            p50_ms: report.latency_from_schedule.p50_ms,
            p99_ms: report.latency_from_schedule.p99_ms,
            reasons: report.verdict.reasons.clone(),
        };
        on_step(&step);
        steps.push(step);
        Ok::<FanoutReport, FanoutError>(report)
    };

    // Find a bracket: clean ≤ x < unclean.
    let mut rate = base.rate;
    for _ in 0..DOUBLINGS_MAX {
        let report = try_rate(rate, &mut steps, progress)?;
        if report.verdict.clean {
            best = Some(report);
            if rate_max.is_some_and(|max| rate >= max) {
                break;
            }
            rate = rate_max.map_or(rate * 2.0, |max| (rate * 2.0).min(max));
        } else {
            worst_unclean = Some(rate);
            if best.is_some() {
                break;
            }
            // Not clean at the start rate: search downwards.
            rate /= 2.0;
            if rate < 1.0 {
                break;
            }
            if steps.len() as u32 > bisect_steps {
                break;
            }
        }
    }

    // Bisect the bracket.
    if let (Some(mut unclean), Some(_)) = (worst_unclean, &best) {
        for _ in 0..bisect_steps {
            let clean = best.as_ref().map_or(0.0, |report| report.rate);
            if clean <= 0.0 || (unclean - clean) / clean <= SWEEP_PRECISION {
                break;
            }
            let middle = ((clean + unclean) / 2.0).round().max(1.0);
            if middle <= clean || middle >= unclean {
                break;
            }
            let report = try_rate(middle, &mut steps, progress)?;
            if report.verdict.clean {
                best = Some(report);
            } else {
                unclean = middle;
            }
        }
    }
    Ok(SweepReport {
        mode: "sweep",
        steps,
        best_rate: best.as_ref().map(|report| report.rate),
        best_deliveries_per_s: best.as_ref().map(|report| report.deliveries_per_s),
        best,
    })
}

impl std::fmt::Display for SweepStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rate {:>10.1} msg/s: {:<9} {:>12.0} deliveries/s  p50 {:.2}ms  p99 {:.2}ms",
            self.rate,
            if self.clean { "clean" } else { "NOT clean" },
            self.deliveries_per_s,
            self.p50_ms,
            self.p99_ms
        )?;
        if !self.reasons.is_empty() {
            write!(f, "  ({})", self.reasons.join("; "))?;
        }
        Ok(())
    }
}
