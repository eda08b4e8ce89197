//! `ringload http`: wrk-like keep-alive load, closed loop or open loop at a fixed total
//! rate with coordinated-omission correction (latency counted from each request's
//! scheduled send time, as wrk2 does). This module probes the target, starts one pinned
//! worker per thread — the mio loop of [`crate::plain::http`] for plain HTTP/1.1, the
//! tokio one of [`crate::transport::http`] otherwise — and merges their counts into the
//! report.

use crate::check::latency::{Latency, LatencySummary};
use crate::plain::http::Worker;
use crate::plain::socket;
use crate::plan::http::ThreadStats;
pub use crate::plan::http::{ErrorCounts, HttpConfig};
use crate::proto::http1;
use crate::run::progress::Progress;
use crate::transport::http::StreamWorker;
use crate::transport::{Endpoint, TransportError};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most connections `-c` accepts.
pub const CONNECTIONS_MAX: usize = 1_000_000;

/// How often the progress line is refreshed.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// Timeout for the connect probe made before the run.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpRunError {
    /// The target refused or did not answer the connect probe.
    #[error("cannot connect to {addr}: {reason}")]
    Unreachable {
        /// The address tried.
        addr: std::net::SocketAddr,
        /// OS message.
        reason: String,
    },
    /// A worker thread could not be started or panicked.
    #[error("worker thread failed: {0}")]
    Thread(String),
    /// The transport could not be set up (TLS roots, URL for the protocol).
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The first connection over the chosen protocol failed.
    #[error("cannot connect to {url} over {proto}: {reason}")]
    Connect {
        /// The URL.
        url: String,
        /// "h1", "h2" or "h3".
        proto: &'static str,
        /// What failed.
        reason: String,
    },
}

/// The outcome of `ringload http`.
#[derive(Debug, Clone, Serialize)]
pub struct HttpReport {
    /// Always "http".
    pub mode: &'static str,
    /// Protocol: "h1", "h2" or "h3".
    pub proto: &'static str,
    /// Target URL.
    pub url: String,
    /// Connections.
    pub connections: usize,
    /// Threads.
    pub threads: usize,
    /// Measured seconds.
    pub duration_s: f64,
    /// Requested total rate (open loop) or null (closed loop).
    pub rate_target: Option<f64>,
    /// Completed requests.
    pub requests: u64,
    /// Completed requests per second.
    pub requests_per_s: f64,
    /// Response bytes read.
    pub bytes_read: u64,
    /// Response bytes per second.
    pub bytes_per_s: f64,
    /// Responses by status code.
    pub status_codes: BTreeMap<u16, u64>,
    /// Errors by kind.
    pub errors: ErrorCounts,
    /// Latency (from the scheduled time with `-R`, from the send otherwise).
    pub latency: LatencySummary,
    /// CPU seconds used by ringload during the run.
    pub cpu_s: f64,
    /// Full histogram for `--hdr-out`.
    #[serde(skip)]
    pub latency_histogram: Latency,
}

impl std::fmt::Display for HttpReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.rate_target {
            Some(rate) => format!("open loop at {rate} req/s (latency from schedule)"),
            None => "closed loop".to_string(),
        };
        writeln!(
            f,
            "ringload http {} over {} — {} connections, {} threads, {:.2}s, {mode}",
            self.url, self.proto, self.connections, self.threads, self.duration_s
        )?;
        writeln!(
            f,
            "  requests     {} ({:.1}/s)",
            self.requests, self.requests_per_s
        )?;
        writeln!(
            f,
            "  bytes read   {} ({:.1} MB/s)",
            self.bytes_read,
            self.bytes_per_s / 1e6
        )?;
        let codes: Vec<String> = self
            .status_codes
            .iter()
            .map(|(code, count)| format!("{code}: {count}"))
            .collect();
        writeln!(f, "  status       {}", codes.join(", "))?;
        let e = &self.errors;
        writeln!(
            f,
            "  errors       connect {}, read {}, write {}, timeout {}, parse {}",
            e.connect, e.read, e.write, e.timeout, e.parse
        )?;
        writeln!(f, "  latency      {}", self.latency)?;
        write!(f, "  cpu          {:.2}s", self.cpu_s)
    }
}

/// Runs the benchmark; the probe failing is the only error after flag parsing.
pub fn run(config: &HttpConfig, progress: &mut Progress) -> Result<HttpReport, HttpRunError> {
    let endpoint = if config.transport.uses_mio(config.target.tls) {
        socket::probe(config.target.addr, PROBE_TIMEOUT).map_err(|error| {
            HttpRunError::Unreachable {
                addr: config.target.addr,
                reason: error.to_string(),
            }
        })?;
        None
    } else {
        let endpoint = Endpoint::new(
            &config.transport,
            config.target.addr,
            config.target.tls,
            &config.target.host,
            &config.target.host_header,
            &config.headers,
        )?;
        crate::transport::probe::probe(&endpoint, PROBE_TIMEOUT).map_err(|reason| {
            HttpRunError::Connect {
                url: config.url.clone(),
                proto: config.transport.proto.name(),
                reason,
            }
        })?;
        Some(endpoint)
    };
    let mut request = Vec::new();
    http1::encode_request(
        &mut request,
        &config.method,
        &config.target.host_header,
        &config.target.path,
        &config.headers,
        &config.body,
        false,
    );
    let request: Arc<[u8]> = request.into();
    // Threads beyond the number of connections would idle.
    let connections = config
        .connections
        .div_ceil(config.transport.streams_per_conn());
    let connections = if endpoint.is_some() {
        connections
    } else {
        config.connections
    };
    let threads = config.threads.clamp(1, connections.max(1));
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let stop = Arc::new(AtomicBool::new(false));
    let counters: Arc<Vec<AtomicU64>> = Arc::new((0..threads).map(|_| AtomicU64::new(0)).collect());
    let cpu_start = crate::run::cpu::process_cpu_time();
    let start = Instant::now() + Duration::from_millis(20);
    let mut handles = Vec::new();
    for index in 0..threads {
        let core = (!cores.is_empty()).then(|| cores[index % cores.len()]);
        if let Some(endpoint) = &endpoint {
            let worker = StreamWorker {
                index,
                threads,
                config: config.clone(),
                endpoint: endpoint.clone(),
                stop: stop.clone(),
                counters: counters.clone(),
                start,
                core,
            };
            let handle = std::thread::Builder::new()
                .name(format!("ringload-http-{index}"))
                .spawn(move || worker.run())
                .map_err(|error| HttpRunError::Thread(error.to_string()))?;
            handles.push(handle);
            continue;
        }
        let worker = Worker {
            index,
            threads,
            config: config.clone(),
            request: request.clone(),
            stop: stop.clone(),
            counters: counters.clone(),
            start,
            core,
        };
        let handle = std::thread::Builder::new()
            .name(format!("ringload-http-{index}"))
            .spawn(move || worker.run())
            .map_err(|error| HttpRunError::Thread(error.to_string()))?;
        handles.push(handle);
    }
    let end = start + config.duration;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        std::thread::sleep((end - now).min(PROGRESS_INTERVAL));
        let done: u64 = counters.iter().map(|c| c.load(Ordering::Relaxed)).sum();
        let elapsed = start.elapsed().as_secs_f64().max(1e-3);
        progress.update(&format!(
            "{:.1}s  {done} requests  {:.0} req/s",
            elapsed,
            done as f64 / elapsed
        ));
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = ThreadStats::new();
    for handle in handles {
        let stats = handle
            .join()
            .map_err(|_| HttpRunError::Thread("worker panicked".into()))?;
        total.merge(&stats);
    }
    progress.finish();
    let duration_s = config.duration.as_secs_f64();
    let status_codes = total
        .status
        .iter()
        .enumerate()
        .filter(|(_, &count)| count > 0)
        .map(|(code, &count)| (code as u16, count))
        .collect();
    Ok(HttpReport {
        mode: "http",
        proto: config.transport.proto.name(),
        url: config.url.clone(),
        connections: config.connections,
        threads,
        duration_s,
        rate_target: config.rate,
        requests: total.requests,
        requests_per_s: total.requests as f64 / duration_s,
        bytes_read: total.bytes,
        bytes_per_s: total.bytes as f64 / duration_s,
        status_codes,
        errors: total.errors,
        latency: total.latency.summary(),
        cpu_s: (crate::run::cpu::process_cpu_time() - cpu_start).as_secs_f64(),
        latency_histogram: total.latency,
    })
}
