//! `ringload` binary: parses flags, runs a mode, prints the report, draws the plot, sets
//! the exit code (0 clean / ran, 1 not clean, 2 bad flags, unreachable target or unusable
//! plot input).

use anyhow::Context;
use clap::Parser;
use loadgen::check::latency::Latency;
use loadgen::cli::{Cli, Command, FanoutArgs, HttpArgs, OutputArgs, PlotArgs};
use loadgen::report::plot::PlotFile;
use loadgen::report::{plot, plot_input};
use loadgen::run::progress::Progress;
use loadgen::run::{fanout, sweep};
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code of a run that completed but was not clean.
const EXIT_NOT_CLEAN: u8 = 1;
/// Exit code for bad flags or an unreachable target (clap uses 2 as well).
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Http(args) => run_http(&args),
        Command::Fanout(args) => run_fanout(&args),
        Command::Plot(args) => run_plot(&args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("ringload: error: {error:#}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

fn write_hdr(output: &OutputArgs, histogram: &Latency, suffix: &str) -> anyhow::Result<()> {
    let Some(path) = &output.hdr_out else {
        return Ok(());
    };
    let mut path = path.clone().into_os_string();
    path.push(suffix);
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(&path)
            .with_context(|| format!("--hdr-out {}", path.to_string_lossy()))?,
    );
    histogram
        .write_percentile_distribution(&mut file)
        .with_context(|| format!("writing --hdr-out {}", path.to_string_lossy()))?;
    Ok(())
}

/// Creates the `--plot` file before the run, so that a bad path fails at once.
fn create_plot(output: &OutputArgs) -> anyhow::Result<Option<PlotFile>> {
    let Some(path) = &output.plot else {
        return Ok(None);
    };
    Ok(Some(PlotFile::create("--plot", path)?))
}

fn run_http(args: &HttpArgs) -> anyhow::Result<ExitCode> {
    let config = args.config()?;
    let plot_file = create_plot(&args.output)?;
    let mut progress = Progress::new(args.output.quiet || args.output.json);
    let report = loadgen::run::http::run(&config, &mut progress)?;
    write_hdr(&args.output, &report.latency_histogram, "")?;
    if args.output.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{report}");
    }
    if let Some(plot_file) = plot_file {
        let (heading, curves) = plot::http_plot(&report);
        plot_file.write(&plot::latency_svg(&heading, &curves)?)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn run_fanout(args: &FanoutArgs) -> anyhow::Result<ExitCode> {
    let config = args.config()?;
    let plot_file = create_plot(&args.output)?;
    let mut progress = Progress::new(args.output.quiet || args.output.json);
    if args.sweep {
        let json = args.output.json;
        let report = sweep::run(
            &config,
            args.sweep_steps,
            args.sweep_max,
            &mut progress,
            |step| {
                if !json {
                    println!("{step}");
                }
            },
        )?;
        if let Some(best) = &report.best {
            write_hdr(&args.output, &best.schedule_histogram, "")?;
            write_hdr(&args.output, &best.stamp_histogram, ".stamp")?;
        }
        if json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            match (report.best_rate, report.best_deliveries_per_s) {
                (Some(rate), Some(deliveries)) => {
                    println!("highest clean rate: {rate:.1} msg/s ({deliveries:.0} deliveries/s)")
                }
                _ => println!("no clean rate found"),
            }
        }
        if let Some(plot_file) = plot_file {
            let (heading, series) = plot::sweep_plot(&report, &config);
            plot_file.write(&plot::sweep_svg(&heading, &series)?)?;
        }
        return Ok(if report.best_rate.is_some() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_NOT_CLEAN)
        });
    }
    let report = fanout::run(&config, &mut progress)?;
    write_hdr(&args.output, &report.schedule_histogram, "")?;
    write_hdr(&args.output, &report.stamp_histogram, ".stamp")?;
    if args.output.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{report}");
    }
    if let Some(plot_file) = plot_file {
        let (heading, curves) = plot::fanout_plot(&report);
        plot_file.write(&plot::latency_svg(&heading, &curves)?)?;
    }
    Ok(if report.verdict.clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_NOT_CLEAN)
    })
}

fn run_plot(args: &PlotArgs) -> anyhow::Result<ExitCode> {
    let plot = plot_input::load(&args.inputs)?;
    let svg = plot.svg(args.title.as_deref(), &args.inputs)?;
    PlotFile::create("--out", &args.out)?.write(&svg)?;
    Ok(ExitCode::SUCCESS)
}
