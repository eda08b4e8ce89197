//! What a `ringload http` run is asked to do and what each of its worker threads counts;
//! shared by the two workers, the mio loop for plain HTTP/1.1 (`plain::http`) and the tokio
//! one for TLS, HTTP/2 and HTTP/3 (`transport::http`), which depend on it and not on each
//! other.

use crate::check::latency::Latency;
use crate::plan::target::Target;
use crate::plan::transport::TransportConfig;
use serde::Serialize;
use std::time::Duration;

/// What to run.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// The target.
    pub target: Target,
    /// The URL as given (for the report).
    pub url: String,
    /// Request method.
    pub method: String,
    /// Extra header lines.
    pub headers: Vec<String>,
    /// Request body.
    pub body: Vec<u8>,
    /// Connections in total.
    pub connections: usize,
    /// Worker threads.
    pub threads: usize,
    /// Measurement duration.
    pub duration: Duration,
    /// Total requests per second (open loop), or `None` for closed loop.
    pub rate: Option<f64>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Protocol, streams per connection, TLS.
    pub transport: TransportConfig,
}

/// Errors by kind, as wrk reports them.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct ErrorCounts {
    /// Connect failures.
    pub connect: u64,
    /// Read failures or the server closing mid-request.
    pub read: u64,
    /// Write failures.
    pub write: u64,
    /// Requests without a complete answer within `--timeout`.
    pub timeout: u64,
    /// Malformed responses.
    pub parse: u64,
}

impl ErrorCounts {
    /// Adds `other` to `self`.
    pub fn add(&mut self, other: &ErrorCounts) {
        self.connect += other.connect;
        self.read += other.read;
        self.write += other.write;
        self.timeout += other.timeout;
        self.parse += other.parse;
    }

    /// Sum of all kinds.
    pub fn total(&self) -> u64 {
        self.connect + self.read + self.write + self.timeout + self.parse
    }
}

/// Status codes counted in a flat array (0..=999).
pub(crate) const STATUS_CODES: usize = 1000;

/// One worker thread's findings, merged into the report at the end.
#[derive(Debug)]
pub(crate) struct ThreadStats {
    pub(crate) requests: u64,
    pub(crate) bytes: u64,
    pub(crate) status: Vec<u64>,
    pub(crate) errors: ErrorCounts,
    pub(crate) latency: Latency,
}

impl ThreadStats {
    pub(crate) fn new() -> Self {
        ThreadStats {
            requests: 0,
            bytes: 0,
            status: vec![0; STATUS_CODES],
            errors: ErrorCounts::default(),
            latency: Latency::new(),
        }
    }

    pub(crate) fn merge(&mut self, other: &ThreadStats) {
        self.requests += other.requests;
        self.bytes += other.bytes;
        for (mine, theirs) in self.status.iter_mut().zip(&other.status) {
            *mine += theirs;
        }
        self.errors.add(&other.errors);
        self.latency.merge(&other.latency);
    }
}
