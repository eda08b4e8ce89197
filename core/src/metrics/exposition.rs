//! The Prometheus text 0.0.4 / OpenMetrics 1.0.0 exposition ([`Exposition`], [`Format`]):
//! counters, gauges and histogram snapshots written as text. Must not touch: how the
//! histograms count (histogram.rs).

use std::fmt::Write as _;

use super::histogram::HistogramSnapshot;
use super::{MILLISECOND_NANOS, SECOND_NANOS};

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
pub(super) fn write_float(out: &mut String, value: f64) {
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
pub(super) fn write_canonical(out: &mut String, value: f64) {
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
pub(super) fn write_timestamp(out: &mut String, format: Format, unix_nanos: u64) {
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
