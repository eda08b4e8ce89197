//! Latency histograms (HdrHistogram, microseconds), their percentile summary, the
//! percentile points a plot draws, and the classic percentile-distribution text that
//! HdrHistogram plotters read.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::io::Write;

/// Highest latency recorded: one hour in microseconds; larger values saturate.
pub const LATENCY_US_MAX: u64 = 3_600_000_000;

/// Significant decimal digits kept by the histograms.
pub const SIGNIFICANT_DIGITS: u8 = 3;

/// Microseconds (the histogram's unit) per millisecond (the unit of every report).
const MICROS_PER_MS: f64 = 1000.0;

/// Percentile lines per halving of the remaining distance (as wrk2 and HdrHistogram use).
pub const TICKS_PER_HALF_DISTANCE: u32 = 5;

/// A latency histogram in microseconds.
#[derive(Debug, Clone)]
pub struct Latency {
    histogram: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    /// An empty histogram covering 1 µs ..= [`LATENCY_US_MAX`].
    pub fn new() -> Self {
        let histogram = Histogram::new_with_bounds(1, LATENCY_US_MAX, SIGNIFICANT_DIGITS)
            .expect("constant histogram bounds are valid");
        Latency { histogram }
    }

    /// Records one latency (clamped to the histogram's range).
    #[inline]
    pub fn record_us(&mut self, micros: u64) {
        self.histogram
            .saturating_record(micros.clamp(1, LATENCY_US_MAX));
    }

    /// Records a latency given in nanoseconds; negative (clock skew) counts as 1 µs.
    #[inline]
    pub fn record_ns(&mut self, nanos: i64) {
        self.record_us((nanos.max(0) as u64) / 1000);
    }

    /// Adds all values of `other`.
    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.histogram.add(&other.histogram);
    }

    /// Number of recorded values.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// The rows of the percentile distribution: (value in ms, quantile 0..=1, values so
    /// far). Steps of [`TICKS_PER_HALF_DISTANCE`] per halving of the distance to 100%, so
    /// the tail gets as many rows as the body; the last row is quantile 1 (the maximum).
    fn distribution_rows(&self) -> impl Iterator<Item = (f64, f64, u64)> + '_ {
        let histogram = &self.histogram;
        let mut total = 0u64;
        // An empty histogram has no rows (its iterator would report one zero row).
        let rows =
            (!histogram.is_empty()).then(|| histogram.iter_quantiles(TICKS_PER_HALF_DISTANCE));
        rows.into_iter().flatten().map(move |step| {
            total += step.count_since_last_iteration();
            let value_ms =
                histogram.highest_equivalent(step.value_iterated_to()) as f64 / MICROS_PER_MS;
            (value_ms, step.quantile_iterated_to(), total)
        })
    }

    /// The percentile points of the distribution, as `--hdr-out` lists them: from 0% (the
    /// minimum) to 100% (the maximum). Empty when nothing was recorded.
    pub fn percentiles(&self) -> Vec<PercentilePoint> {
        self.distribution_rows()
            .map(|(ms, quantile, _)| PercentilePoint {
                percentile: quantile * 100.0,
                ms,
            })
            .collect()
    }

    /// The summary figures.
    pub fn summary(&self) -> LatencySummary {
        let ms = |micros: u64| micros as f64 / 1000.0;
        let empty = self.histogram.is_empty();
        let at = |quantile: f64| {
            if empty {
                0.0
            } else {
                ms(self.histogram.value_at_quantile(quantile))
            }
        };
        LatencySummary {
            count: self.histogram.len(),
            min_ms: if empty { 0.0 } else { ms(self.histogram.min()) },
            mean_ms: if empty {
                0.0
            } else {
                self.histogram.mean() / 1000.0
            },
            p50_ms: at(0.5),
            p90_ms: at(0.9),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
            max_ms: if empty { 0.0 } else { ms(self.histogram.max()) },
            percentiles: self.percentiles(),
        }
    }

    /// Writes HdrHistogram's `outputPercentileDistribution` text with values in ms.
    pub fn write_percentile_distribution(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(
            out,
            "{:>12} {:>14} {:>10} {:>14}\n",
            "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
        )?;
        for (value, quantile, total) in self.distribution_rows() {
            if quantile < 1.0 {
                writeln!(
                    out,
                    "{value:12.3} {quantile:2.12} {total:10} {:14.2}",
                    1.0 / (1.0 - quantile)
                )?;
            } else {
                writeln!(out, "{value:12.3} {quantile:2.12} {total:10}")?;
            }
        }
        let histogram = &self.histogram;
        let (mean, stdev, max) = if histogram.is_empty() {
            (0.0, 0.0, 0.0)
        } else {
            (
                histogram.mean() / MICROS_PER_MS,
                histogram.stdev() / MICROS_PER_MS,
                histogram.highest_equivalent(histogram.max()) as f64 / MICROS_PER_MS,
            )
        };
        writeln!(
            out,
            "#[Mean    = {mean:12.3}, StdDeviation   = {stdev:12.3}]"
        )?;
        writeln!(
            out,
            "#[Max     = {max:12.3}, Total count    = {:12}]",
            histogram.len()
        )?;
        writeln!(
            out,
            "#[Buckets = {:12}, SubBuckets     = {:12}]",
            histogram.buckets(),
            histogram.distinct_values()
        )?;
        Ok(())
    }
}

/// One point of a latency distribution: `percentile`% of the values are at most `ms`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct PercentilePoint {
    /// Share of the values, in percent (0 ..= 100).
    pub percentile: f64,
    /// Latency in milliseconds.
    pub ms: f64,
}

/// Percentiles of one latency distribution, in milliseconds (read back from saved reports
/// by `ringload plot`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LatencySummary {
    /// Values recorded.
    pub count: u64,
    /// Smallest value.
    pub min_ms: f64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest value.
    pub max_ms: f64,
    /// The whole distribution (what `--hdr-out` writes, and what `--plot` and
    /// `ringload plot` draw), from 0% to 100%. Absent in reports of older ringloads.
    #[serde(default)]
    pub percentiles: Vec<PercentilePoint>,
}

impl std::fmt::Display for LatencySummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.3}ms  p90 {:.3}ms  p99 {:.3}ms  p99.9 {:.3}ms  max {:.3}ms  (n={})",
            self.p50_ms, self.p90_ms, self.p99_ms, self.p999_ms, self.max_ms, self.count
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_percentiles() {
        let mut latency = Latency::new();
        for micros in 1..=1000 {
            latency.record_us(micros * 1000);
        }
        let summary = latency.summary();
        assert_eq!(summary.count, 1000);
        assert!((summary.p50_ms - 500.0).abs() < 1.0, "{summary:?}");
        assert!((summary.p99_ms - 990.0).abs() < 2.0, "{summary:?}");
        assert!((summary.max_ms - 1000.0).abs() < 1.0, "{summary:?}");
    }

    #[test]
    fn distribution_text_has_the_classic_shape() {
        let mut latency = Latency::new();
        for micros in [100, 200, 300, 4000] {
            latency.record_us(micros);
        }
        let mut out = Vec::new();
        latency.write_percentile_distribution(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(
            header,
            ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]
        );
        let rows: Vec<Vec<&str>> = text
            .lines()
            .skip(2)
            .filter(|line| !line.starts_with('#'))
            .map(|line| line.split_whitespace().collect())
            .collect();
        assert_eq!(rows.first().unwrap()[0], "0.100");
        let last = rows.last().unwrap();
        assert_eq!(last[1], "1.000000000000");
        assert_eq!(last[2], "4");
        assert!(text.contains("#[Max     ="));
        assert!(text.contains("Total count    =            4]"));
    }

    #[test]
    fn percentiles_match_the_distribution_text() {
        let mut latency = Latency::new();
        for micros in 1..=10_000 {
            latency.record_us(micros);
        }
        let points = latency.percentiles();
        let mut out = Vec::new();
        latency.write_percentile_distribution(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let rows = text.lines().skip(2).filter(|line| !line.starts_with('#'));
        assert_eq!(rows.count(), points.len());
        assert_eq!(points.first().unwrap().percentile, 0.0);
        assert!((points.first().unwrap().ms - 0.001).abs() < 1e-9);
        assert_eq!(points.last().unwrap().percentile, 100.0);
        assert!((points.last().unwrap().ms - 10.0).abs() < 0.01);
        assert!(points
            .windows(2)
            .all(|pair| pair[0].percentile <= pair[1].percentile && pair[0].ms <= pair[1].ms));
        // The tail is resolved: there are points beyond 99.9%.
        assert!(points
            .iter()
            .any(|point| point.percentile > 99.9 && point.percentile < 100.0));
        assert_eq!(latency.summary().percentiles, points);
    }

    #[test]
    fn empty_histogram_has_no_percentiles() {
        assert!(Latency::new().percentiles().is_empty());
        assert!(Latency::new().summary().percentiles.is_empty());
    }
}
