//! SVG plots of ringload results (`--plot`, `ringload plot`).
//!
//! Two kinds: latency by percentile in HdrHistogram's style (x = percentile on a log
//! `1/(1-p)` scale labelled 50%, 90%, 99%, 99.9%, …; y = latency in ms), and for sweeps the
//! achieved deliveries/s against the publish rate, with clean and unclean steps drawn
//! differently and the best clean rate marked. This module owns the drawing and the
//! series each kind of report contributes; reading saved `--json` reports is
//! `plot_input`'s job (it depends on this module, not the other way). plotters' SVG
//! backend writes text as `<text>` elements, so no font is loaded and nothing outside the
//! process is needed.

use crate::check::latency::{LatencySummary, PercentilePoint};
use crate::run::fanout::{FanoutConfig, FanoutReport};
use crate::run::http::HttpReport;
use crate::run::sweep::{SweepReport, SweepStep};
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Width of every plot.
pub const PLOT_WIDTH_PX: u32 = 1200;
/// Height of every plot.
pub const PLOT_HEIGHT_PX: u32 = 720;
/// Space above the chart for the title and the details line.
const HEADING_HEIGHT_PX: u32 = 64;
/// Margin around the chart and left of the heading.
const MARGIN_PX: u32 = 16;
/// Margin right of the chart: room for half of the last x tick label.
const MARGIN_RIGHT_PX: u32 = 40;
/// Room under the x axis for tick labels and the axis name.
const X_LABEL_AREA_PX: u32 = 56;
/// Room left of the y axis for tick labels and the axis name.
const Y_LABEL_AREA_PX: u32 = 88;
/// Top offsets of the title and the details line inside the heading.
const TITLE_Y_PX: i32 = 12;
const DETAILS_Y_PX: i32 = 40;

/// Font sizes as plotters takes them; it writes `font-size` as 1/1.24 of these (points to
/// pixels), so 16 here is about 13 px in the SVG.
const FONT: &str = "sans-serif";
const TITLE_FONT_SIZE: u32 = 26;
const DETAILS_FONT_SIZE: u32 = 17;
const AXIS_NAME_FONT_SIZE: u32 = 19;
const TICK_FONT_SIZE: u32 = 17;
const LEGEND_FONT_SIZE: u32 = 17;

/// Stroke of a data line.
const LINE_WIDTH_PX: u32 = 2;
/// Length of a line in a legend entry.
const LEGEND_LINE_PX: i32 = 24;
/// Dash and gap of the dashed (from-stamp) latency line.
const DASH_PX: u32 = 8;
const DASH_GAP_PX: u32 = 5;

/// Radius of a sweep step's marker. Each step is one filled circle of this radius (an
/// unclean step's is white inside a coloured ring of the same radius); legend glyphs use
/// other radii, so the filled `r="5"` circles of a sweep plot are its steps.
pub const STEP_MARKER_RADIUS_PX: u32 = 5;
/// Radius of the marker glyphs in the legend.
const LEGEND_MARKER_RADIUS_PX: u32 = 4;
/// Radius of the ring around the best clean step.
const BEST_MARKER_RADIUS_PX: u32 = 11;
/// Radius of the best-step ring in the legend.
const LEGEND_BEST_RADIUS_PX: u32 = 8;
/// Offset of the "best …" note from the best step.
const BEST_NOTE_OFFSET_PX: (i32, i32) = (12, 10);

/// Fewest ticks on the rate axis before finer ones are used.
const RATE_TICKS_MIN: usize = 5;
/// Room above the highest value on a linear y axis.
const Y_HEADROOM: f64 = 1.1;
/// The rate axis reaches this factor beyond the lowest and highest rate tried.
const RATE_AXIS_PADDING: f64 = 1.25;
/// The percentile axis shows at least up to 10^3 (99.9%)…
const PERCENTILE_DECADES_MIN: i32 = 3;
/// …and at most up to 10^7 (99.99999%); points further out are left off.
const PERCENTILE_DECADES_MAX: i32 = 7;
/// Longest details line; longer ones are cut with "…".
pub const DETAILS_CHARS_MAX: usize = 170;

/// Line colours (Okabe–Ito, readable for colour-blind eyes, dark enough on white).
const SERIES_COLORS: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
    RGBColor(140, 110, 30),
];
/// Colour of the legend entries that explain markers rather than name a series.
const KEY_COLOR: RGBColor = RGBColor(90, 90, 90);

/// Most series (inputs of `ringload plot`) one plot tells apart by colour.
pub const SERIES_MAX: usize = SERIES_COLORS.len();

/// Why a plot could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// plotters failed while drawing.
    #[error("drawing the plot failed: {0}")]
    Draw(String),
    /// The output file could not be created or written.
    #[error("{flag} {}: {source}", path.display())]
    File {
        /// The flag naming the file (`--plot`, `--out`).
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

impl<E: std::error::Error + Send + Sync> From<DrawingAreaErrorKind<E>> for PlotError {
    fn from(error: DrawingAreaErrorKind<E>) -> Self {
        PlotError::Draw(error.to_string())
    }
}

/// The two lines above a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Heading {
    /// What the plot shows.
    pub title: String,
    /// Where the figures come from (target, rate, subscribers, verdict, input files).
    pub details: String,
}

impl Heading {
    /// A heading whose details line is cut to [`DETAILS_CHARS_MAX`] characters.
    pub fn new(title: impl Into<String>, details: &str) -> Heading {
        let details = if details.chars().count() > DETAILS_CHARS_MAX {
            let mut cut: String = details.chars().take(DETAILS_CHARS_MAX - 1).collect();
            cut.push('…');
            cut
        } else {
            details.to_string()
        };
        Heading {
            title: title.into(),
            details,
        }
    }
}

/// One latency distribution to draw.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyCurve {
    /// Legend text.
    pub label: String,
    /// The distribution, 0% to 100% (the 100% point has no place on a `1/(1-p)` axis and
    /// is left off; the label carries the maximum).
    pub points: Vec<PercentilePoint>,
    /// Index into the palette (taken modulo [`SERIES_MAX`]).
    pub color: usize,
    /// Dashed instead of solid.
    pub dashed: bool,
}

impl LatencyCurve {
    /// A curve from a latency summary, labelled `name (p99 …, max …)`.
    pub fn from_summary(name: &str, summary: &LatencySummary, color: usize, dashed: bool) -> Self {
        LatencyCurve {
            label: format!(
                "{name} (p99 {}, max {})",
                ms_text(summary.p99_ms),
                ms_text(summary.max_ms)
            ),
            points: summary.percentiles.clone(),
            color,
            dashed,
        }
    }
}

/// One step of a sweep, as the rate plot needs it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SweepPoint {
    /// Publish rate tried (msg/s).
    pub rate: f64,
    /// Whether the run was clean.
    pub clean: bool,
    /// Deliveries per second achieved.
    pub deliveries_per_s: f64,
}

impl From<&SweepStep> for SweepPoint {
    fn from(step: &SweepStep) -> Self {
        SweepPoint {
            rate: step.rate,
            clean: step.clean,
            deliveries_per_s: step.deliveries_per_s,
        }
    }
}

/// One sweep to draw.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepSeries {
    /// Legend text (the best clean rate is added to it).
    pub label: String,
    /// The steps in the order they ran.
    pub steps: Vec<SweepPoint>,
    /// The highest clean rate, if any.
    pub best_rate: Option<f64>,
    /// Index into the palette (taken modulo [`SERIES_MAX`]).
    pub color: usize,
}

impl SweepSeries {
    /// A series from the steps of a sweep report.
    pub fn new(label: &str, steps: &[SweepStep], best_rate: Option<f64>, color: usize) -> Self {
        SweepSeries {
            label: label.to_string(),
            steps: steps.iter().map(SweepPoint::from).collect(),
            best_rate,
            color,
        }
    }

    /// The step run at the best clean rate.
    fn best_step(&self) -> Option<&SweepPoint> {
        let best = self.best_rate?;
        self.steps
            .iter()
            .find(|step| step.clean && step.rate == best)
    }
}

/// The two curves of a fanout run: from the schedule (solid, `colors.0`) and from the
/// publish stamp (dashed, `colors.1`), their names prefixed with `prefix` if given.
pub fn fanout_curves(
    prefix: Option<&str>,
    schedule: &LatencySummary,
    stamp: &LatencySummary,
    colors: (usize, usize),
) -> Vec<LatencyCurve> {
    let name = |what: &str| match prefix {
        Some(prefix) => format!("{prefix}: {what}"),
        None => what.to_string(),
    };
    vec![
        LatencyCurve::from_summary(&name("from schedule"), schedule, colors.0, false),
        LatencyCurve::from_summary(&name("from stamp"), stamp, colors.1, true),
    ]
}

/// The curve of an http run: corrected (from the schedule) in open loop, from the send in
/// closed loop.
pub fn http_curve(
    prefix: Option<&str>,
    latency: &LatencySummary,
    open_loop: bool,
    color: usize,
) -> LatencyCurve {
    let what = if open_loop {
        "latency from schedule (corrected)"
    } else {
        "latency from send (closed loop)"
    };
    let name = match prefix {
        Some(prefix) => format!("{prefix}: {what}"),
        None => what.to_string(),
    };
    LatencyCurve::from_summary(&name, latency, color, false)
}

/// Heading and curves of `ringload fanout --plot`.
pub fn fanout_plot(report: &FanoutReport) -> (Heading, Vec<LatencyCurve>) {
    let verdict = if report.verdict.clean {
        "verdict: clean".to_string()
    } else {
        format!("verdict: NOT clean: {}", report.verdict.reasons.join("; "))
    };
    let details = format!(
        "{} over {} · {} msg/s for {}s · {} subscribers over {} rooms · {}/{} delivered · {verdict}",
        report.sub_url,
        report.proto,
        number_text(report.rate),
        number_text(report.duration_s),
        report.subscribers,
        report.rooms,
        report.delivered,
        report.expected,
    );
    let curves = fanout_curves(
        None,
        &report.latency_from_schedule,
        &report.latency_from_stamp,
        (0, 1),
    );
    (
        Heading::new("ringload fanout: latency by percentile", &details),
        curves,
    )
}

/// Heading and curve of `ringload http --plot`.
pub fn http_plot(report: &HttpReport) -> (Heading, Vec<LatencyCurve>) {
    let mode = match report.rate_target {
        Some(rate) => format!("open loop at {} req/s", number_text(rate)),
        None => "closed loop".to_string(),
    };
    let details = format!(
        "{} over {} · {mode} · {} connections · {} requests in {}s · {} errors",
        report.url,
        report.proto,
        report.connections,
        report.requests,
        number_text(report.duration_s),
        report.errors.total(),
    );
    let curve = http_curve(None, &report.latency, report.rate_target.is_some(), 0);
    (
        Heading::new("ringload http: latency by percentile", &details),
        vec![curve],
    )
}

/// Heading and series of `ringload fanout --sweep --plot`.
pub fn sweep_plot(report: &SweepReport, config: &FanoutConfig) -> (Heading, Vec<SweepSeries>) {
    let best = match (report.best_rate, report.best_deliveries_per_s) {
        (Some(rate), Some(deliveries)) => format!(
            "highest clean rate {} msg/s ({} deliveries/s)",
            number_text(rate),
            si_text(deliveries)
        ),
        _ => "no clean rate".to_string(),
    };
    let details = format!(
        "{} over {} · {} subscribers over {} rooms · {}s per step · {best}",
        config.sub_url.text,
        config.transport.proto.name(),
        config.subscribers,
        config.rooms,
        number_text(config.duration.as_secs_f64()),
    );
    let series = SweepSeries::new(
        &config.sub_url.host_header,
        &report.steps,
        report.best_rate,
        0,
    );
    (
        Heading::new(
            "ringload fanout --sweep: deliveries/s by publish rate",
            &details,
        ),
        vec![series],
    )
}

/// Draws latency curves against the percentile (log `1/(1-p)` axis) as an SVG document.
pub fn latency_svg(heading: &Heading, curves: &[LatencyCurve]) -> Result<String, PlotError> {
    // Points as (1/(1-p), ms); 100% has no finite place and is left off.
    let inverse_tail = |point: &PercentilePoint| 1.0 / (1.0 - point.percentile / 100.0);
    let finite = |point: &&PercentilePoint| point.percentile >= 0.0 && point.percentile < 100.0;
    let x_reached = curves
        .iter()
        .flat_map(|curve| curve.points.iter().filter(finite).map(inverse_tail))
        .fold(1.0_f64, f64::max);
    let decades =
        (x_reached.log10().ceil() as i32).clamp(PERCENTILE_DECADES_MIN, PERCENTILE_DECADES_MAX);
    let x_max = 10f64.powi(decades);
    let series: Vec<Vec<(f64, f64)>> = curves
        .iter()
        .map(|curve| {
            curve
                .points
                .iter()
                .filter(finite)
                .map(|point| (inverse_tail(point), point.ms))
                .filter(|(x, ms)| *x <= x_max && ms.is_finite())
                .collect()
        })
        .collect();
    let y_max = axis_max(series.iter().flatten().map(|(_, ms)| *ms));
    // Ticks at 0%, 50%, then 90%, 99%, 99.9%, … up to the axis end.
    let mut ticks = vec![1.0, 2.0];
    ticks.extend((1..=decades).map(|decade| 10f64.powi(decade)));

    render(heading, |area| {
        let mut chart = ChartBuilder::on(area)
            .margin(MARGIN_PX)
            .margin_right(MARGIN_RIGHT_PX)
            .x_label_area_size(X_LABEL_AREA_PX)
            .y_label_area_size(Y_LABEL_AREA_PX)
            .build_cartesian_2d((1.0..x_max).log_scale().with_key_points(ticks), 0.0..y_max)?;
        chart
            .configure_mesh()
            .x_desc("percentile (log scale of 1/(1-p))")
            .y_desc("latency (ms)")
            .x_label_formatter(&|x| percentile_text(*x))
            .axis_desc_style((FONT, AXIS_NAME_FONT_SIZE))
            .label_style((FONT, TICK_FONT_SIZE))
            .draw()?;
        for (curve, points) in curves.iter().zip(&series) {
            let style = series_color(curve.color).stroke_width(LINE_WIDTH_PX);
            let annotation = if curve.dashed {
                chart.draw_series(DashedLineSeries::new(
                    points.iter().copied(),
                    DASH_PX,
                    DASH_GAP_PX,
                    style,
                ))?
            } else {
                chart.draw_series(LineSeries::new(points.iter().copied(), style))?
            };
            let dashed = curve.dashed;
            annotation
                .label(curve.label.as_str())
                .legend(move |(x, y)| {
                    let line = vec![(x, y), (x + LEGEND_LINE_PX, y)];
                    if dashed {
                        DashedPathElement::new(line, DASH_PX, DASH_GAP_PX, style).into_dyn()
                    } else {
                        PathElement::new(line, style).into_dyn()
                    }
                });
        }
        draw_legend(&mut chart, SeriesLabelPosition::UpperLeft)
    })
}

/// Draws sweeps (deliveries/s against publish rate, log rate axis) as an SVG document:
/// a filled circle per clean step, a hollow one per unclean step, a ring and a note at the
/// best clean rate.
pub fn sweep_svg(heading: &Heading, series: &[SweepSeries]) -> Result<String, PlotError> {
    let steps = || series.iter().flat_map(|sweep| sweep.steps.iter());
    let rates = || steps().map(|step| step.rate).filter(|rate| *rate > 0.0);
    let rate_min = rates().fold(f64::INFINITY, f64::min);
    let rate_max = rates().fold(0.0_f64, f64::max);
    let (rate_min, rate_max) = if rate_min.is_finite() {
        (rate_min / RATE_AXIS_PADDING, rate_max * RATE_AXIS_PADDING)
    } else {
        (1.0, 10.0)
    };
    let y_max = axis_max(steps().map(|step| step.deliveries_per_s));
    let on_axis = |step: &&SweepPoint| step.rate > 0.0 && step.deliveries_per_s.is_finite();

    render(heading, |area| {
        let mut chart = ChartBuilder::on(area)
            .margin(MARGIN_PX)
            .margin_right(MARGIN_RIGHT_PX)
            .x_label_area_size(X_LABEL_AREA_PX)
            .y_label_area_size(Y_LABEL_AREA_PX)
            .build_cartesian_2d(
                (rate_min..rate_max)
                    .log_scale()
                    .with_key_points(rate_ticks(rate_min, rate_max)),
                0.0..y_max,
            )?;
        chart
            .configure_mesh()
            .x_desc("publish rate (msg/s, log scale)")
            .y_desc("deliveries/s")
            .x_label_formatter(&|rate| si_text(*rate))
            .y_label_formatter(&|deliveries| si_text(*deliveries))
            .axis_desc_style((FONT, AXIS_NAME_FONT_SIZE))
            .label_style((FONT, TICK_FONT_SIZE))
            .draw()?;
        for sweep in series {
            let color = series_color(sweep.color);
            let line = color.stroke_width(LINE_WIDTH_PX);
            let mut in_rate_order: Vec<(f64, f64)> = sweep
                .steps
                .iter()
                .filter(on_axis)
                .map(|step| (step.rate, step.deliveries_per_s))
                .collect();
            in_rate_order.sort_by(|a, b| a.0.total_cmp(&b.0));
            let label = match sweep.best_step() {
                Some(best) => format!(
                    "{}: best clean {} msg/s ({} deliveries/s)",
                    sweep.label,
                    number_text(best.rate),
                    si_text(best.deliveries_per_s)
                ),
                None => format!("{}: no clean rate", sweep.label),
            };
            chart
                .draw_series(LineSeries::new(in_rate_order, line))?
                .label(label)
                .legend(move |(x, y)| {
                    EmptyElement::at((x, y))
                        + PathElement::new(vec![(0, 0), (LEGEND_LINE_PX, 0)], line)
                        + Circle::new(
                            (LEGEND_LINE_PX / 2, 0),
                            LEGEND_MARKER_RADIUS_PX,
                            color.filled(),
                        )
                });
            chart.draw_series(sweep.steps.iter().filter(on_axis).map(|step| {
                let style = if step.clean {
                    color.filled()
                } else {
                    WHITE.filled()
                };
                Circle::new(
                    (step.rate, step.deliveries_per_s),
                    STEP_MARKER_RADIUS_PX,
                    style,
                )
            }))?;
            // The outline of unclean (hollow) markers.
            chart.draw_series(
                sweep
                    .steps
                    .iter()
                    .filter(on_axis)
                    .filter(|step| !step.clean)
                    .map(|step| {
                        Circle::new(
                            (step.rate, step.deliveries_per_s),
                            STEP_MARKER_RADIUS_PX,
                            color.stroke_width(LINE_WIDTH_PX),
                        )
                    }),
            )?;
            if let Some(best) = sweep.best_step().filter(on_axis) {
                let at = (best.rate, best.deliveries_per_s);
                chart.draw_series(std::iter::once(
                    EmptyElement::at(at)
                        + Circle::new((0, 0), BEST_MARKER_RADIUS_PX, line)
                        + Text::new(
                            format!("best {} msg/s", number_text(best.rate)),
                            BEST_NOTE_OFFSET_PX,
                            (FONT, LEGEND_FONT_SIZE).into_font().color(&color),
                        ),
                ))?;
            }
        }
        // What the markers mean.
        let key = KEY_COLOR;
        chart
            .draw_series(std::iter::empty::<Circle<(f64, f64), u32>>())?
            .label("clean step")
            .legend(move |(x, y)| {
                Circle::new(
                    (x + LEGEND_LINE_PX / 2, y),
                    LEGEND_MARKER_RADIUS_PX,
                    key.filled(),
                )
            });
        chart
            .draw_series(std::iter::empty::<Circle<(f64, f64), u32>>())?
            .label("not clean step")
            .legend(move |(x, y)| {
                Circle::new(
                    (x + LEGEND_LINE_PX / 2, y),
                    LEGEND_MARKER_RADIUS_PX,
                    key.stroke_width(LINE_WIDTH_PX),
                )
            });
        chart
            .draw_series(std::iter::empty::<Circle<(f64, f64), u32>>())?
            .label("best clean rate")
            .legend(move |(x, y)| {
                Circle::new(
                    (x + LEGEND_LINE_PX / 2, y),
                    LEGEND_BEST_RADIUS_PX,
                    key.stroke_width(LINE_WIDTH_PX),
                )
            });
        draw_legend(&mut chart, SeriesLabelPosition::UpperLeft)
    })
}

/// The `--plot` / `--out` file, created before the run so that a bad path fails at once
/// instead of after a long sweep. Removed again if dropped unwritten (the run failed).
#[derive(Debug)]
pub struct PlotFile {
    flag: &'static str,
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl PlotFile {
    /// Creates (or truncates) `path`; `flag` names it in errors.
    pub fn create(flag: &'static str, path: &Path) -> Result<PlotFile, PlotError> {
        let file = std::fs::File::create(path).map_err(|source| PlotError::File {
            flag,
            path: path.to_path_buf(),
            source,
        })?;
        Ok(PlotFile {
            flag,
            path: path.to_path_buf(),
            file: Some(file),
        })
    }

    /// Writes the SVG document and closes the file.
    pub fn write(mut self, svg: &str) -> Result<(), PlotError> {
        let result = match self.file.take() {
            Some(mut file) => file.write_all(svg.as_bytes()),
            None => Ok(()),
        };
        result.map_err(|source| PlotError::File {
            flag: self.flag,
            path: self.path.clone(),
            source,
        })
    }
}

impl Drop for PlotFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Draws the heading, then the chart below it with `draw_chart`, into an SVG string.
fn render(
    heading: &Heading,
    draw_chart: impl FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> Result<(), PlotError>,
) -> Result<String, PlotError> {
    let mut svg = String::new();
    {
        let root =
            SVGBackend::with_string(&mut svg, (PLOT_WIDTH_PX, PLOT_HEIGHT_PX)).into_drawing_area();
        root.fill(&WHITE)?;
        let (top, body) = root.split_vertically(HEADING_HEIGHT_PX);
        let left = MARGIN_PX as i32;
        top.draw(&Text::new(
            heading.title.as_str(),
            (left, TITLE_Y_PX),
            (FONT, TITLE_FONT_SIZE).into_font(),
        ))?;
        top.draw(&Text::new(
            heading.details.as_str(),
            (left, DETAILS_Y_PX),
            (FONT, DETAILS_FONT_SIZE).into_font().color(&KEY_COLOR),
        ))?;
        draw_chart(&body)?;
        root.present()?;
    }
    Ok(svg)
}

fn draw_legend<'a, 'b: 'a, Coords: CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'b>, Coords>,
    position: SeriesLabelPosition,
) -> Result<(), PlotError> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.9))
        .border_style(KEY_COLOR)
        .label_font((FONT, LEGEND_FONT_SIZE))
        .draw()?;
    Ok(())
}

fn series_color(index: usize) -> RGBColor {
    SERIES_COLORS[index % SERIES_COLORS.len()]
}

/// Top of a linear axis starting at 0: the highest value plus headroom (1 if none).
fn axis_max(values: impl Iterator<Item = f64>) -> f64 {
    let highest = values
        .filter(|value| value.is_finite())
        .fold(0.0_f64, f64::max);
    if highest > 0.0 {
        highest * Y_HEADROOM
    } else {
        1.0
    }
}

/// Ticks for a log rate axis: 1-2-5 × 10^n within the range, or every 1..9 × 10^n when
/// that gives fewer than [`RATE_TICKS_MIN`] (a sweep often spans less than a decade).
fn rate_ticks(low: f64, high: f64) -> Vec<f64> {
    let within = |multiples: &[f64]| -> Vec<f64> {
        let first_decade = low.max(f64::MIN_POSITIVE).log10().floor() as i32;
        let last_decade = high.max(f64::MIN_POSITIVE).log10().ceil() as i32;
        (first_decade..=last_decade)
            .flat_map(|decade| multiples.iter().map(move |m| m * 10f64.powi(decade)))
            .filter(|tick| (low..=high).contains(tick))
            .collect()
    };
    let ticks = within(&[1.0, 2.0, 5.0]);
    if ticks.len() >= RATE_TICKS_MIN {
        ticks
    } else {
        within(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])
    }
}

/// The percentile at `inverse_tail` = 1/(1-p): 2 → "50%", 10 → "90%", 1000 → "99.9%".
pub fn percentile_text(inverse_tail: f64) -> String {
    let percent = 100.0 * (1.0 - 1.0 / inverse_tail.max(1.0));
    // One more decimal per decade beyond 99%.
    let decimals = (inverse_tail.max(1.0).log10().round() as i64 - 2).max(0) as usize;
    format!("{percent:.decimals$}%")
}

/// A count or rate with k/M suffix and at most two decimals: 1500 → "1.5k".
pub fn si_text(value: f64) -> String {
    let (scaled, suffix) = if value.abs() >= 1e6 {
        (value / 1e6, "M")
    } else if value.abs() >= 1e3 {
        (value / 1e3, "k")
    } else {
        (value, "")
    };
    format!("{}{suffix}", number_text(scaled))
}

/// A number with at most two decimals and no trailing zeros: 12.50 → "12.5", 3.0 → "3".
pub fn number_text(value: f64) -> String {
    let text = format!("{value:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".to_string()
    } else {
        text.to_string()
    }
}

/// A latency for a legend: "0.153 ms", "12.4 ms", "1520 ms".
fn ms_text(ms: f64) -> String {
    format!("{} ms", ms_number_text(ms))
}

/// A latency with about three significant digits.
fn ms_number_text(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else if ms >= 10.0 {
        format!("{ms:.1}")
    } else if ms >= 1.0 {
        format!("{ms:.2}")
    } else {
        format!("{ms:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(label: &str, dashed: bool) -> LatencyCurve {
        let points = [0.0, 50.0, 75.0, 90.0, 99.0, 99.9, 99.99, 100.0]
            .iter()
            .enumerate()
            .map(|(index, percentile)| PercentilePoint {
                percentile: *percentile,
                ms: 1.0 + index as f64,
            })
            .collect();
        LatencyCurve {
            label: label.to_string(),
            points,
            color: 0,
            dashed,
        }
    }

    #[test]
    fn percentile_labels() {
        let table = [
            (1.0, "0%"),
            (2.0, "50%"),
            (10.0, "90%"),
            (100.0, "99%"),
            (1000.0, "99.9%"),
            (10_000.0, "99.99%"),
            (100_000.0, "99.999%"),
        ];
        for (inverse_tail, text) in table {
            assert_eq!(percentile_text(inverse_tail), text, "{inverse_tail}");
        }
    }

    #[test]
    fn number_labels() {
        assert_eq!(number_text(12.5), "12.5");
        assert_eq!(number_text(3.0), "3");
        assert_eq!(number_text(0.004), "0");
        assert_eq!(si_text(1500.0), "1.5k");
        assert_eq!(si_text(2_000_000.0), "2M");
        assert_eq!(si_text(25.0), "25");
        assert_eq!(ms_number_text(0.1534), "0.153");
        assert_eq!(ms_number_text(152.4), "152");
    }

    #[test]
    fn rate_ticks_cover_short_and_long_ranges() {
        assert_eq!(
            rate_ticks(160.0, 1000.0),
            [200.0, 300.0, 400.0, 500.0, 600.0, 700.0, 800.0, 900.0, 1000.0]
        );
        assert_eq!(
            rate_ticks(80.0, 64_000.0),
            [100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10_000.0, 20_000.0, 50_000.0]
        );
    }

    #[test]
    fn details_are_cut() {
        let heading = Heading::new("t", &"x".repeat(DETAILS_CHARS_MAX + 10));
        assert_eq!(heading.details.chars().count(), DETAILS_CHARS_MAX);
        assert!(heading.details.ends_with('…'));
        assert_eq!(Heading::new("t", "short").details, "short");
    }

    #[test]
    fn latency_plot_has_axes_ticks_legend_and_lines() {
        let heading = Heading::new("latency & more", "details <here>");
        let svg = latency_svg(
            &heading,
            &[curve("solid one", false), curve("dashed one", true)],
        )
        .unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100]);
        for text in [
            "latency &amp; more",
            "details &lt;here&gt;",
            "percentile (log scale of 1/(1-p))",
            "latency (ms)",
            "50%",
            "90%",
            "99%",
            "99.9%",
            "99.99%",
            "solid one",
            "dashed one",
        ] {
            // plotters writes each text on a line of its own inside <text>.
            assert!(
                svg.contains(&format!("\n{text}\n</text>")),
                "missing {text}"
            );
        }
        // The solid curve is one polyline with every finite point (7; 100% is left off).
        let longest = svg
            .split("<polyline")
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
            .max()
            .unwrap();
        assert_eq!(longest, 7);
    }

    #[test]
    fn empty_inputs_still_draw_axes() {
        let svg = latency_svg(&Heading::new("t", "d"), &[]).unwrap();
        assert!(svg.contains("latency (ms)"));
        let svg = sweep_svg(&Heading::new("t", "d"), &[]).unwrap();
        assert!(svg.contains("deliveries/s"));
    }

    #[test]
    fn sweep_plot_marks_each_step_once() {
        let steps = vec![
            SweepPoint {
                rate: 100.0,
                clean: true,
                deliveries_per_s: 1000.0,
            },
            SweepPoint {
                rate: 400.0,
                clean: false,
                deliveries_per_s: 2500.0,
            },
            SweepPoint {
                rate: 200.0,
                clean: true,
                deliveries_per_s: 2000.0,
            },
        ];
        let series = SweepSeries {
            label: "ringcast".into(),
            steps,
            best_rate: Some(200.0),
            color: 0,
        };
        let svg = sweep_svg(&Heading::new("t", "d"), &[series]).unwrap();
        let marker = format!("r=\"{STEP_MARKER_RADIUS_PX}\"");
        let circles: Vec<&str> = svg
            .split("<circle")
            .skip(1)
            .filter(|element| element.contains(&marker))
            .collect();
        let filled = circles
            .iter()
            .filter(|c| !c.contains("fill=\"none\""))
            .count();
        assert_eq!(filled, 3, "one filled marker per step");
        // The unclean step also has a ring.
        assert_eq!(circles.len(), 4);
        for text in [
            "ringcast: best clean 200 msg/s (2k deliveries/s)",
            "best 200 msg/s",
            "clean step",
            "not clean step",
            "best clean rate",
            "publish rate (msg/s, log scale)",
        ] {
            assert!(svg.contains(text), "missing {text}");
        }
    }
}
