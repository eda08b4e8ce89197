//! `--plot` and `ringload plot` (issue 9): the SVG a run or saved `--json` reports produce,
//! read back as text — axis names, percentile ticks, legend entries, the latency polylines,
//! one marker per sweep step — and bad inputs exiting 2 with the file or flag named.

mod loadgen_support;

use loadgen::report::plot::{number_text, STEP_MARKER_RADIUS_PX};
use loadgen_support::{json, ringload, FanoutServer, Options};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("ringload-plot-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// `name` inside the directory, as a string argument.
    fn arg(&self, name: &str) -> String {
        self.path(name).to_string_lossy().into_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Reads an SVG file and checks that it is one SVG document.
fn read_svg(path: &Path) -> String {
    let svg = std::fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("no plot at {}: {error}", path.display()));
    assert!(
        svg.starts_with("<svg"),
        "not SVG: {}",
        &svg[..svg.len().min(200)]
    );
    assert!(svg.trim_end().ends_with("</svg>"), "SVG not closed");
    svg
}

/// Number of points of each `<polyline>`.
fn polyline_lengths(svg: &str) -> Vec<usize> {
    svg.split("<polyline")
        .skip(1)
        .map(|element| {
            let points = element.split("points=\"").nth(1).unwrap_or("");
            points
                .split('"')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .count()
        })
        .collect()
}

/// The step markers of a sweep plot: filled circles of the step radius, as (fill colour).
fn step_markers(svg: &str) -> Vec<String> {
    let radius = format!("r=\"{STEP_MARKER_RADIUS_PX}\"");
    svg.split("<circle")
        .skip(1)
        .filter(|element| element.contains(&radius))
        .filter_map(|element| {
            let fill = element.split("fill=\"").nth(1)?.split('"').next()?;
            (fill != "none").then(|| fill.to_string())
        })
        .collect()
}

fn assert_contains(svg: &str, texts: &[&str]) {
    for text in texts {
        assert!(svg.contains(text), "the plot lacks {text:?}");
    }
}

/// A short clean fanout run against `server` with `extra` flags; returns the report.
fn fanout_run(server: &FanoutServer, extra: &[&str]) -> Value {
    let sub_url = server.sub_url();
    let pub_url = server.pub_url();
    let mut args = vec![
        "fanout",
        "--sub-url",
        &sub_url,
        "--pub-url",
        &pub_url,
        "-s",
        "4",
        "-r",
        "2",
        "--rate",
        "200",
        "-d",
        "500ms",
        "--grace",
        "300ms",
        "-t",
        "2",
        "--json",
    ];
    args.extend_from_slice(extra);
    let output = ringload(&args);
    let report = json(&output);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{report}\n{}",
        stderr(&output)
    );
    report
}

fn assert_percentiles(latency: &Value) {
    let points = latency["percentiles"]
        .as_array()
        .unwrap_or_else(|| panic!("no percentiles in {latency}"));
    assert!(points.len() >= 5, "{latency}");
    assert_eq!(points[0]["percentile"], 0.0);
    assert_eq!(points[points.len() - 1]["percentile"], 100.0);
    let max = points[points.len() - 1]["ms"].as_f64().unwrap();
    assert!(
        (max - latency["max_ms"].as_f64().unwrap()).abs() < 0.01 * max.max(1.0),
        "{latency}"
    );
    // The fields other scripts read are still there.
    for key in ["count", "p50_ms", "p99_ms", "p999_ms", "max_ms"] {
        assert!(latency[key].is_number(), "{key} missing in {latency}");
    }
}

#[test]
fn fanout_plot_draws_both_latency_series() {
    let scratch = Scratch::new("fanout");
    let server = FanoutServer::start(Options::default());
    let plot = scratch.arg("latency.svg");
    let report = fanout_run(&server, &["--plot", &plot]);
    assert_percentiles(&report["latency_from_schedule"]);
    assert_percentiles(&report["latency_from_stamp"]);

    let svg = read_svg(Path::new(&plot));
    assert_contains(
        &svg,
        &[
            "ringload fanout: latency by percentile",
            "percentile (log scale of 1/(1-p))",
            "latency (ms)",
            "\n50%\n</text>",
            "\n90%\n</text>",
            "\n99%\n</text>",
            "\n99.9%\n</text>",
            "from schedule (p99",
            "from stamp (p99",
            &server.sub_url(),
            "200 msg/s",
            "4 subscribers over 2 rooms",
            "verdict: clean",
        ],
    );
    let longest = polyline_lengths(&svg).into_iter().max().unwrap_or(0);
    assert!(longest >= 5, "no latency line with 5 points or more");
}

#[test]
fn http_plot_draws_the_corrected_latency() {
    let scratch = Scratch::new("http");
    let server = FanoutServer::start(Options::default());
    let url = format!("http://{}/hello", server.addr);
    let plot = scratch.arg("http.svg");
    let output = ringload(&[
        "http", &url, "-c", "2", "-R", "200", "-d", "1s", "--json", "--plot", &plot,
    ]);
    let report = json(&output);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_percentiles(&report["latency"]);
    let svg = read_svg(Path::new(&plot));
    assert_contains(
        &svg,
        &[
            "ringload http: latency by percentile",
            "latency from schedule (corrected)",
            "open loop at 200 req/s",
            "2 connections",
            "latency (ms)",
            "\n99%\n</text>",
        ],
    );
    assert!(polyline_lengths(&svg).into_iter().any(|points| points >= 5));
}

/// A server taking 10 ms per publish: the sweep has clean and unclean steps. Its plot has
/// one marker per step (hollow for unclean ones) and the best rate; `ringload plot` of the
/// saved report twice, as A and B, has both series.
#[test]
fn sweep_plot_marks_every_step_and_the_best_rate() {
    let scratch = Scratch::new("sweep");
    let server = FanoutServer::start(Options {
        publish_delay_ms: 10,
        ..Options::default()
    });
    let (sub_url, pub_url) = (server.sub_url(), server.pub_url());
    let plot = scratch.arg("sweep.svg");
    let output = ringload(&[
        "fanout",
        "--sub-url",
        &sub_url,
        "--pub-url",
        &pub_url,
        "-s",
        "2",
        "-r",
        "1",
        "--rate",
        "25",
        "-d",
        "400ms",
        "--grace",
        "200ms",
        "--sweep",
        "--sweep-steps",
        "2",
        "--max-p99",
        "100ms",
        "--json",
        "--plot",
        &plot,
    ]);
    let report = json(&output);
    assert_eq!(output.status.code(), Some(0), "{report}");
    let steps = report["steps"].as_array().unwrap();
    let unclean = steps.iter().filter(|step| step["clean"] == false).count();
    assert!(unclean >= 1 && unclean < steps.len(), "{report}");
    let best = number_text(report["best_rate"].as_f64().unwrap());

    let svg = read_svg(Path::new(&plot));
    let markers = step_markers(&svg);
    assert_eq!(markers.len(), steps.len(), "one marker per sweep step");
    let hollow = markers.iter().filter(|fill| *fill == "#FFFFFF").count();
    assert_eq!(hollow, unclean, "unclean steps are hollow");
    assert_contains(
        &svg,
        &[
            "ringload fanout --sweep: deliveries/s by publish rate",
            "publish rate (msg/s, log scale)",
            "deliveries/s",
            "clean step",
            "not clean step",
            "best clean rate",
            &format!("best clean {best} msg/s"),
            &format!("best {best} msg/s"),
        ],
    );

    // The saved report, twice, side by side.
    let saved = scratch.path("sweep.json");
    std::fs::write(&saved, &output.stdout).unwrap();
    let both = scratch.arg("both.svg");
    let saved = saved.to_string_lossy();
    let output = ringload(&[
        "plot",
        "--out",
        &both,
        "--title",
        "ringcast beside its twin",
        &format!("{saved}=ringcast"),
        &format!("{saved}=twin"),
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let svg = read_svg(Path::new(&both));
    assert_eq!(step_markers(&svg).len(), 2 * steps.len());
    assert_contains(
        &svg,
        &[
            "ringcast beside its twin",
            &format!("ringcast: best clean {best} msg/s"),
            &format!("twin: best clean {best} msg/s"),
            "not clean step",
        ],
    );
}

#[test]
fn plot_combines_runs_labelled_a_and_b() {
    let scratch = Scratch::new("combine");
    let server = FanoutServer::start(Options::default());
    let mut inputs = Vec::new();
    for name in ["first", "second"] {
        let report = fanout_run(&server, &[]);
        let path = scratch.path(&format!("{name}.json"));
        std::fs::write(&path, report.to_string()).unwrap();
        inputs.push(path.to_string_lossy().into_owned());
    }
    let out = scratch.arg("ab.svg");
    let output = ringload(&[
        "plot",
        "--out",
        &out,
        &format!("{}=A", inputs[0]),
        &format!("{}=B", inputs[1]),
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let svg = read_svg(Path::new(&out));
    assert_contains(
        &svg,
        &[
            "latency by percentile",
            "A: from schedule (p99",
            "A: from stamp (p99",
            "B: from schedule (p99",
            "B: from stamp (p99",
            "first.json",
            "second.json",
            "\n99.9%\n</text>",
        ],
    );
    let long_lines = polyline_lengths(&svg)
        .into_iter()
        .filter(|points| *points >= 5)
        .count();
    assert!(long_lines >= 2, "one solid line per input");

    // Without labels, the file names label the series.
    let output = ringload(&["plot", "--out", &out, &inputs[0], &inputs[1]]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_contains(
        &read_svg(Path::new(&out)),
        &["first: from schedule", "second: from stamp"],
    );
}

#[test]
fn unusable_plot_inputs_exit_2_naming_the_file() {
    let scratch = Scratch::new("bad-inputs");
    let out = scratch.arg("out.svg");
    let sweep = scratch.path("sweep.json");
    std::fs::write(
        &sweep,
        r#"{"mode":"sweep","best_rate":100.0,"best_deliveries_per_s":200.0,"best":null,
            "steps":[{"rate":100.0,"clean":true,"deliveries_per_s":200.0,"p50_ms":1.0,
            "p99_ms":2.0,"reasons":[]}]}"#,
    )
    .unwrap();
    let latency = r#"{"count":3,"min_ms":1.0,"mean_ms":2.0,"p50_ms":2.0,"p90_ms":3.0,
        "p99_ms":3.0,"p999_ms":3.0,"max_ms":3.0,"percentiles":[{"percentile":0.0,"ms":1.0},
        {"percentile":50.0,"ms":2.0},{"percentile":100.0,"ms":3.0}]}"#;
    let http = scratch.path("http.json");
    std::fs::write(
        &http,
        format!(r#"{{"mode":"http","rate_target":null,"latency":{latency}}}"#),
    )
    .unwrap();
    let text = scratch.path("notes.json");
    std::fs::write(&text, "these are not JSON").unwrap();
    let idle = scratch.path("idle.json");
    std::fs::write(&idle, r#"{"mode":"idle","subscribers":10}"#).unwrap();
    let missing = scratch.path("missing.json");
    let arg = |path: &Path| path.to_string_lossy().into_owned();

    let cases: [(&[String], &[&str]); 4] = [
        (&[arg(&missing)], &["missing.json", "cannot read"]),
        (
            &[arg(&text)],
            &["notes.json", "not a ringload --json report"],
        ),
        (&[arg(&idle)], &["idle.json", "--idle"]),
        (
            &[arg(&sweep), arg(&http)],
            &["sweep.json", "http.json", "sweep"],
        ),
    ];
    for (inputs, expected) in cases {
        let mut args = vec!["plot", "--out", &out];
        args.extend(inputs.iter().map(String::as_str));
        let output = ringload(&args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
        for text in expected {
            assert!(
                stderr(&output).contains(text),
                "{args:?}: {}",
                stderr(&output)
            );
        }
        assert!(!Path::new(&out).exists(), "{args:?} left a plot behind");
    }
    // The good inputs alone do plot.
    let output = ringload(&["plot", "--out", &out, &arg(&sweep)]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(step_markers(&read_svg(Path::new(&out))).len(), 1);
}

#[test]
fn bad_plot_flags_exit_2_naming_the_flag() {
    let scratch = Scratch::new("bad-flags");
    let input = scratch.arg("a.json");
    let out = scratch.arg("out.svg");
    let png = scratch.arg("out.png");
    let cases: [(&[&str], &[&str]); 4] = [
        (&["plot", &input], &["--out"]),
        (&["plot", "--out", &png, &input], &["--out", ".svg"]),
        (&["plot", "--out", &out], &["INPUT.json"]),
        (
            &["plot", "--out", &out, "--colour", "red", &input],
            &["--colour"],
        ),
    ];
    for (args, expected) in cases {
        let output = ringload(args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
        for text in expected {
            assert!(
                stderr(&output).contains(text),
                "{args:?}: {}",
                stderr(&output)
            );
        }
    }

    let server = FanoutServer::start(Options::default());
    let (sub_url, pub_url) = (server.sub_url(), server.pub_url());
    let fanout = [
        "fanout",
        "--sub-url",
        &sub_url,
        "--pub-url",
        &pub_url,
        "-s",
        "2",
    ];
    let output = ringload(&[&fanout[..], &["--plot", &png]].concat());
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("--plot"), "{}", stderr(&output));
    let output = ringload(&[&fanout[..], &["--idle", "--hold", "1s", "--plot", &out]].concat());
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("--plot"), "{}", stderr(&output));

    // An unwritable --plot fails before the run, not after its 5 seconds.
    let nowhere = scratch.arg("no/such/dir/plot.svg");
    let started = Instant::now();
    let output = ringload(&[&fanout[..], &["-d", "5s", "--plot", &nowhere]].concat());
    assert_eq!(output.status.code(), Some(2));
    let text = stderr(&output);
    assert!(
        text.contains("--plot") && text.contains("plot.svg"),
        "{text}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the run went ahead"
    );
}
