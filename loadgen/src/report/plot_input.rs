//! `ringload plot`: reads saved `--json` reports and turns them into one plot with a
//! labelled series per input — sweeps into deliveries/s by publish rate, single runs
//! (`fanout`, `http`) into latency-by-percentile curves. Mixing the two kinds is refused.
//! Drawing is [`crate::report::plot`]'s job.

use crate::check::latency::LatencySummary;
use crate::report::plot::{self, Heading, LatencyCurve, PlotError, SweepSeries, SERIES_MAX};
use crate::run::sweep::SweepStep;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Longest legend label.
pub const LABEL_CHARS_MAX: usize = 60;

/// Biggest report file read (a report is a few hundred KB at most).
pub const INPUT_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// One input of `ringload plot`: `FILE.json` or `FILE.json=LABEL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlotSource {
    /// The report file.
    pub path: PathBuf,
    /// Legend label (default: the file name without its extension).
    pub label: String,
}

impl PlotSource {
    /// Parses `FILE[=LABEL]`. The label is what follows the last `=`, unless that text
    /// contains a `/` (then the whole argument is a path).
    pub fn parse(text: &str) -> Result<PlotSource, String> {
        let (path, label) = match text.rsplit_once('=') {
            Some((path, label)) if !label.contains('/') => (path, Some(label)),
            _ => (text, None),
        };
        if path.is_empty() {
            return Err(format!(
                "'{text}' names no file (use FILE.json or FILE.json=LABEL)"
            ));
        }
        let path = PathBuf::from(path);
        let label = match label {
            Some(label) => label.to_string(),
            None => path.file_stem().map_or_else(
                || path.display().to_string(),
                |stem| stem.to_string_lossy().into_owned(),
            ),
        };
        if label.trim().is_empty() {
            return Err(format!("'{text}' has an empty label after '='"));
        }
        if label.chars().count() > LABEL_CHARS_MAX {
            return Err(format!(
                "the label of '{text}' is longer than {LABEL_CHARS_MAX} characters"
            ));
        }
        Ok(PlotSource { path, label })
    }
}

/// Why `ringload plot` cannot make its plot (exit code 2; each names the file).
#[derive(Debug, thiserror::Error)]
pub enum PlotInputError {
    /// More inputs than the plot has colours.
    #[error("{0} inputs given; a plot takes at most {SERIES_MAX}")]
    TooMany(usize),
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is larger than any report.
    #[error("{} is larger than {INPUT_BYTES_MAX} bytes; not a ringload --json report", path.display())]
    TooBig {
        /// The file.
        path: PathBuf,
    },
    /// The file is not a ringload JSON report.
    #[error("{} is not a ringload --json report: {reason}", path.display())]
    NotAReport {
        /// The file.
        path: PathBuf,
        /// What serde found wrong.
        reason: String,
    },
    /// The report has nothing to plot.
    #[error("{} has nothing to plot: {reason}", path.display())]
    NothingToPlot {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: &'static str,
    },
    /// Sweeps and single runs in one plot.
    #[error(
        "cannot plot the sweep report {} together with the single-run report {}: give only \
         sweeps (deliveries/s by publish rate) or only single runs (latency by percentile)",
        sweep.display(),
        single.display()
    )]
    MixedKinds {
        /// A sweep input.
        sweep: PathBuf,
        /// A single-run input.
        single: PathBuf,
    },
}

/// The part of a saved report a plot reads (serde ignores the other fields).
#[derive(Debug, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
enum SavedReport {
    Fanout {
        latency_from_schedule: LatencySummary,
        latency_from_stamp: LatencySummary,
    },
    Idle {},
    Http {
        rate_target: Option<f64>,
        latency: LatencySummary,
    },
    Sweep {
        steps: Vec<SweepStep>,
        best_rate: Option<f64>,
    },
}

/// A plot made of saved reports.
#[derive(Debug, Clone, PartialEq)]
pub enum SavedPlot {
    /// Latency curves of single runs.
    Latency(Vec<LatencyCurve>),
    /// Sweeps.
    Sweep(Vec<SweepSeries>),
}

impl SavedPlot {
    /// Draws the plot as an SVG document; `title` replaces the default title, and the
    /// details line lists the inputs.
    pub fn svg(&self, title: Option<&str>, sources: &[PlotSource]) -> Result<String, PlotError> {
        let inputs: Vec<String> = sources
            .iter()
            .map(|source| format!("{}: {}", source.label, source.path.display()))
            .collect();
        let details = inputs.join(" · ");
        match self {
            SavedPlot::Latency(curves) => {
                let title = title.unwrap_or("latency by percentile");
                plot::latency_svg(&Heading::new(title, &details), curves)
            }
            SavedPlot::Sweep(series) => {
                let title = title.unwrap_or("deliveries/s by publish rate");
                plot::sweep_svg(&Heading::new(title, &details), series)
            }
        }
    }
}

/// Reads every input and builds one plot: input `i` gets colour `i`; a fanout run gives
/// two curves (from schedule solid, from stamp dashed), an http run one, a sweep one series.
pub fn load(sources: &[PlotSource]) -> Result<SavedPlot, PlotInputError> {
    if sources.len() > SERIES_MAX {
        return Err(PlotInputError::TooMany(sources.len()));
    }
    let mut curves = Vec::new();
    let mut sweeps = Vec::new();
    let mut first_sweep: Option<&Path> = None;
    let mut first_single: Option<&Path> = None;
    for (color, source) in sources.iter().enumerate() {
        let path = source.path.as_path();
        let label = Some(source.label.as_str());
        match read_report(path)? {
            SavedReport::Fanout {
                latency_from_schedule,
                latency_from_stamp,
            } => {
                first_single.get_or_insert(path);
                has_percentiles(path, &latency_from_schedule)?;
                has_percentiles(path, &latency_from_stamp)?;
                curves.extend(plot::fanout_curves(
                    label,
                    &latency_from_schedule,
                    &latency_from_stamp,
                    (color, color),
                ));
            }
            SavedReport::Http {
                rate_target,
                latency,
            } => {
                first_single.get_or_insert(path);
                has_percentiles(path, &latency)?;
                curves.push(plot::http_curve(
                    label,
                    &latency,
                    rate_target.is_some(),
                    color,
                ));
            }
            SavedReport::Sweep { steps, best_rate } => {
                first_sweep.get_or_insert(path);
                if steps.is_empty() {
                    return Err(PlotInputError::NothingToPlot {
                        path: path.to_path_buf(),
                        reason: "the sweep has no steps",
                    });
                }
                sweeps.push(SweepSeries::new(&source.label, &steps, best_rate, color));
            }
            SavedReport::Idle {} => {
                return Err(PlotInputError::NothingToPlot {
                    path: path.to_path_buf(),
                    reason: "an --idle run publishes nothing, so it has no latency",
                })
            }
        }
        if let (Some(sweep), Some(single)) = (first_sweep, first_single) {
            return Err(PlotInputError::MixedKinds {
                sweep: sweep.to_path_buf(),
                single: single.to_path_buf(),
            });
        }
    }
    Ok(if sweeps.is_empty() {
        SavedPlot::Latency(curves)
    } else {
        SavedPlot::Sweep(sweeps)
    })
}

fn read_report(path: &Path) -> Result<SavedReport, PlotInputError> {
    let read_error = |source| PlotInputError::Read {
        path: path.to_path_buf(),
        source,
    };
    let size = std::fs::metadata(path).map_err(read_error)?.len();
    if size > INPUT_BYTES_MAX {
        return Err(PlotInputError::TooBig {
            path: path.to_path_buf(),
        });
    }
    let text = std::fs::read(path).map_err(read_error)?;
    serde_json::from_slice(&text).map_err(|error| PlotInputError::NotAReport {
        path: path.to_path_buf(),
        reason: error.to_string(),
    })
}

/// A latency with values but no percentile points comes from a ringload that did not
/// write them yet.
fn has_percentiles(path: &Path, latency: &LatencySummary) -> Result<(), PlotInputError> {
    if latency.count > 0 && latency.percentiles.is_empty() {
        return Err(PlotInputError::NothingToPlot {
            path: path.to_path_buf(),
            reason: "its latencies carry no \"percentiles\" (written by an older ringload; run it again)",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_and_labels() {
        let table = [
            ("runs/a.json", "runs/a.json", "a"),
            ("runs/a.json=ringcast", "runs/a.json", "ringcast"),
            ("a.json=nginx+nchan", "a.json", "nginx+nchan"),
            ("x=y/b.json", "x=y/b.json", "b"),
            ("a=b.json=peer", "a=b.json", "peer"),
        ];
        for (text, path, label) in table {
            let source = PlotSource::parse(text).unwrap();
            assert_eq!(source.path, PathBuf::from(path), "{text}");
            assert_eq!(source.label, label, "{text}");
        }
        assert!(PlotSource::parse("=label").is_err());
        assert!(PlotSource::parse("a.json=").is_err());
        assert!(PlotSource::parse(&format!("a.json={}", "x".repeat(LABEL_CHARS_MAX + 1))).is_err());
    }

    fn write(dir: &Path, name: &str, text: &str) -> PlotSource {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        PlotSource {
            label: name.trim_end_matches(".json").to_string(),
            path,
        }
    }

    const LATENCY: &str = r#"{"count":3,"min_ms":1.0,"mean_ms":2.0,"p50_ms":2.0,"p90_ms":3.0,
        "p99_ms":3.0,"p999_ms":3.0,"max_ms":3.0,"percentiles":[{"percentile":0.0,"ms":1.0},
        {"percentile":50.0,"ms":2.0},{"percentile":100.0,"ms":3.0}]}"#;

    #[test]
    fn kinds_are_not_mixed() {
        let dir = std::env::temp_dir().join(format!("ringload-plot-input-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fanout = write(
            &dir,
            "fanout.json",
            &format!(
                r#"{{"mode":"fanout","extra":1,"latency_from_schedule":{LATENCY},"latency_from_stamp":{LATENCY}}}"#
            ),
        );
        let http = write(
            &dir,
            "http.json",
            &format!(r#"{{"mode":"http","rate_target":null,"latency":{LATENCY}}}"#),
        );
        let sweep = write(
            &dir,
            "sweep.json",
            r#"{"mode":"sweep","best_rate":100.0,"best":null,"steps":[{"rate":100.0,"clean":true,
                "deliveries_per_s":200.0,"p50_ms":1.0,"p99_ms":2.0,"reasons":[]}]}"#,
        );
        let idle = write(&dir, "idle.json", r#"{"mode":"idle"}"#);
        let old = write(
            &dir,
            "old.json",
            r#"{"mode":"http","rate_target":null,"latency":{"count":3,"min_ms":1.0,"mean_ms":2.0,
                "p50_ms":2.0,"p90_ms":3.0,"p99_ms":3.0,"p999_ms":3.0,"max_ms":3.0}}"#,
        );

        match load(&[fanout.clone(), http.clone()]).unwrap() {
            SavedPlot::Latency(curves) => {
                assert_eq!(curves.len(), 3);
                assert!(curves[0].label.starts_with("fanout: from schedule"));
                assert!(curves[1].dashed && curves[1].color == 0);
                assert!(curves[2].label.starts_with("http: latency from send"));
                assert_eq!(curves[2].color, 1);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(load(std::slice::from_ref(&sweep)).unwrap(), SavedPlot::Sweep(s) if s.len() == 1)
        );
        let error = load(&[sweep.clone(), fanout.clone()])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("sweep.json") && error.contains("fanout.json"),
            "{error}"
        );
        let error = load(&[idle]).unwrap_err().to_string();
        assert!(
            error.contains("idle.json") && error.contains("--idle"),
            "{error}"
        );
        let error = load(&[old]).unwrap_err().to_string();
        assert!(
            error.contains("old.json") && error.contains("percentiles"),
            "{error}"
        );
        let too_many = vec![http; SERIES_MAX + 1];
        assert!(matches!(load(&too_many), Err(PlotInputError::TooMany(_))));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
