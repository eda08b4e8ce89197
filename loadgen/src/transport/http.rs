//! `ringload http` over the transports of [`crate::transport`]. The load model is the mio
//! path's: `-c N` request lanes, each with one request outstanding (closed loop) or
//! following its open-loop schedule slot `lane + n × N` at `-R` (latency from the
//! schedule). On HTTP/2 and HTTP/3, `--streams-per-conn` lanes share one connection.

use crate::plan::http::{HttpConfig, ThreadStats, STATUS_CODES};
use crate::transport::{Connection, Endpoint, TransportError};
use bytes::Bytes;
use std::cell::{Cell, RefCell};
use std::ops::Range;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Delay before reconnecting after a failed connect, so a dead server is not hammered.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(100);

/// Longest wait between looks at the stop flag and progress updates.
const WATCH_INTERVAL: Duration = Duration::from_millis(20);

/// One `ringload http` thread on a tokio current-thread runtime.
pub(crate) struct StreamWorker {
    /// Thread number.
    pub(crate) index: usize,
    /// Threads in total; connection `j` lives on thread `j % threads`.
    pub(crate) threads: usize,
    /// The run.
    pub(crate) config: HttpConfig,
    /// Where and how to connect.
    pub(crate) endpoint: Endpoint,
    /// Set by the main thread at the end.
    pub(crate) stop: Arc<AtomicBool>,
    /// Completed requests per thread, for progress.
    pub(crate) counters: Arc<Vec<AtomicU64>>,
    /// Measurement start.
    pub(crate) start: std::time::Instant,
    /// CPU to pin to.
    pub(crate) core: Option<core_affinity::CoreId>,
}

struct Context {
    config: HttpConfig,
    endpoint: Endpoint,
    method: http::Method,
    body: Bytes,
    start: Instant,
    stats: RefCell<ThreadStats>,
}

impl StreamWorker {
    /// Runs until the duration is over or `stop`; returns the thread's findings.
    pub(crate) fn run(self) -> ThreadStats {
        if let Some(core) = self.core {
            core_affinity::set_for_current(core);
        }
        let mut stats = ThreadStats::new();
        let Ok(method) = http::Method::from_bytes(self.config.method.as_bytes()) else {
            stats.errors.parse += 1;
            return stats;
        };
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            stats.errors.connect += 1;
            return stats;
        };
        let start = Instant::from_std(self.start);
        let context = Rc::new(Context {
            body: Bytes::from(self.config.body.clone()),
            config: self.config.clone(),
            endpoint: self.endpoint.clone(),
            method,
            start,
            stats: RefCell::new(stats),
        });
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, async {
            tokio::time::sleep_until(start).await;
            let lanes = self.config.connections;
            let per_conn = self.config.transport.streams_per_conn();
            let connections = lanes.div_ceil(per_conn);
            for connection in (self.index..connections).step_by(self.threads.max(1)) {
                let first = connection * per_conn;
                let range = first..(first + per_conn).min(lanes);
                tokio::task::spawn_local(group(context.clone(), range));
            }
            let end = start + self.config.duration;
            loop {
                let now = Instant::now();
                if now >= end || self.stop.load(Ordering::Relaxed) {
                    break;
                }
                tokio::time::sleep((end - now).min(WATCH_INTERVAL)).await;
                let done = context.stats.borrow().requests;
                self.counters[self.index].store(done, Ordering::Relaxed);
            }
        });
        drop(local);
        drop(runtime);
        match Rc::try_unwrap(context) {
            Ok(context) => context.stats.into_inner(),
            Err(context) => std::mem::replace(&mut *context.stats.borrow_mut(), ThreadStats::new()),
        }
    }
}

/// One connection carrying `lanes` (global lane numbers), reconnected when it breaks.
async fn group(context: Rc<Context>, lanes: Range<usize>) {
    let sent: Vec<Rc<Cell<u64>>> = lanes.clone().map(|_| Rc::new(Cell::new(0))).collect();
    loop {
        let connection = match context.endpoint.connect().await {
            Ok(connection) => connection,
            Err(_) => {
                context.stats.borrow_mut().errors.connect += 1;
                tokio::time::sleep(RECONNECT_BACKOFF).await;
                continue;
            }
        };
        let mut connection = Some(connection);
        let mut tasks = Vec::with_capacity(lanes.len());
        let last = lanes.len() - 1;
        for (index, lane) in lanes.clone().enumerate() {
            let handle = if index == last {
                connection.take()
            } else {
                connection.as_ref().and_then(Connection::share)
            };
            let Some(handle) = handle else {
                continue;
            };
            tasks.push(tokio::task::spawn_local(run_lane(
                context.clone(),
                handle,
                lane as u64,
                sent[index].clone(),
            )));
        }
        for task in tasks {
            let _ = task.await;
        }
    }
}

/// Sends requests on one lane until its connection breaks.
async fn run_lane(
    context: Rc<Context>,
    mut connection: Connection,
    lane: u64,
    sent: Rc<Cell<u64>>,
) {
    let config = &context.config;
    loop {
        let scheduled = match config.rate {
            Some(rate) => {
                let slot = lane + sent.get() * config.connections as u64;
                let at = context.start + Duration::from_secs_f64(slot as f64 / rate);
                tokio::time::sleep_until(at).await;
                at
            }
            None => Instant::now(),
        };
        sent.set(sent.get() + 1);
        let sent_at = Instant::now();
        let exchange = async {
            let mut response = connection
                .request(
                    context.method.clone(),
                    &config.target.path,
                    &[],
                    context.body.clone(),
                )
                .await?;
            let bytes = response.drain().await?;
            Ok::<(u16, u64), TransportError>((response.status, bytes))
        };
        let outcome = tokio::time::timeout(config.timeout, exchange).await;
        let mut stats = context.stats.borrow_mut();
        match outcome {
            Ok(Ok((status, bytes))) => {
                let from = if config.rate.is_some() {
                    scheduled
                } else {
                    sent_at
                };
                stats.requests += 1;
                stats.bytes += bytes;
                stats.status[(status as usize).min(STATUS_CODES - 1)] += 1;
                stats
                    .latency
                    .record_us(Instant::now().saturating_duration_since(from).as_micros() as u64);
                continue;
            }
            Ok(Err(TransportError::Send(_))) => stats.errors.write += 1,
            Ok(Err(TransportError::Request(_))) => stats.errors.parse += 1,
            Ok(Err(_)) => stats.errors.read += 1,
            Err(_) => stats.errors.timeout += 1,
        }
        // A multiplexed connection survives a failed stream; HTTP/1.1 with an unanswered
        // request does not.
        if !connection.is_multiplexed() || connection.is_closed() {
            return;
        }
    }
}
