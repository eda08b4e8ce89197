//! Tests of the histograms, windows and exposition.

use super::exposition::*;
use super::histogram::*;
use super::*;
use proptest::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
    assert!(
        plain.ends_with("h_seconds_bucket{le=\"+Inf\"} 0\nh_seconds_sum 0\nh_seconds_count 0\n")
    );
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
