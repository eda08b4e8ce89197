//! `ringcast`: parses flags and config, sets up logging and runs the gateway.

use clap::Parser;
use gateway::config::{Command, Config, Flags};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let flags = Flags::parse();
    // Before anything allocates much: a huge page keeps freed memory resident (sys.rs).
    let thp_error = gateway::uring::sys::disable_transparent_huge_pages().err();
    if let Some(path) = &flags.check_config {
        let report = gateway::config::check::check_file(path, &flags);
        if report.problems.is_empty() {
            println!("ok");
            return std::process::ExitCode::SUCCESS;
        }
        eprint!("{report}");
        return std::process::ExitCode::from(2);
    }
    if flags.command == Some(Command::Doctor) {
        let config = Config::load(flags.clone()).map_err(|err| err.to_string());
        let report = gateway::uring::doctor::Report::gather(config);
        print!("{report}");
        return std::process::ExitCode::from(if report.can_run() { 0 } else { 2 });
    }
    let config = match Config::load(flags.clone()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("ringcast: {err}");
            return std::process::ExitCode::from(2);
        }
    };
    // No epoll backend: without io_uring (or an operation it needs) ringcast stops here,
    // saying what is missing and how to enable it.
    if let Err(err) = gateway::uring::probe::require() {
        eprintln!("ringcast: {err}");
        return std::process::ExitCode::from(2);
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&config.fixed.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_timer(gateway::runtime::clock::LogTime)
        .init();
    if let Some(err) = thp_error {
        tracing::warn!(%err, "could not turn transparent huge pages off: idle memory may stay higher");
    }
    match gateway::runtime::run(config, flags) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
