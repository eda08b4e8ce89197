//! Subscribe authorization (`--auth-url`): before a `GET /rooms/{room}/events` is admitted,
//! ringcast POSTs the room, the client address and the request's headers to an upstream
//! HTTP service; 2xx admits, 401/403 refuse with the same status, anything else (other
//! statuses, connection errors, timeouts) is a failure: 503 + `Retry-After`, or admission
//! with `--auth-fail-open`.
//!
//! The call never runs on a shard loop. A shard asks its own [`AuthShard`] (one circuit
//! breaker per shard, so no lock and no cross-shard traffic on the subscribe path) which
//! either decides at once (breaker open, queue full) or hands a [`Job`] to a small pool of
//! blocking upstream threads over one bounded, process-wide queue. A thread makes the call
//! with `std::net::TcpStream` and connect/read/write timeouts, pushes the reply onto the
//! owning shard's bounded reply queue and writes its eventfd to wake the loop. The shard
//! drains replies every turn, records the outcome and latency in its breaker and resumes the
//! connection, unless it closed meanwhile (the slot's serial no longer matches).
//!
//! Only `http://` URLs are supported, with one connection per call (`Connection: close`);
//! the host name is resolved on the upstream thread at each call.

use crate::http::h1;
use crate::metrics::breakers::BreakerFigures;
use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use ringcast_core::breaker::{BreakerConfig, BreakerState, CircuitBreaker, Outcome, Permit};
use ringcast_core::metrics::Exposition;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// Upstream threads per process: enough for `WORKERS / latency` calls per second (80/s at
/// 100 ms), few enough that a hanging upstream ties up little memory.
pub const WORKERS: usize = 8;
/// Calls waiting for an upstream thread, per process; past it subscribes get 503 "auth
/// queue full" (a subscriber waits at most `--auth-timeout` anyway).
pub const QUEUE_MAX: usize = 1024;
/// Calls one shard may have in flight: as many as the queue and the threads hold, so a
/// shard's reply queue (of this capacity) can never be full.
pub const SHARD_IN_FLIGHT_MAX: usize = QUEUE_MAX + WORKERS;
/// Default `--auth-timeout`.
pub const TIMEOUT_DEFAULT: Duration = Duration::from_secs(2);
/// Largest upstream response head read; the body is never read.
pub const RESPONSE_HEAD_BYTES_MAX: usize = 16 * 1024;
/// Default `--auth-breaker-window`: shorter than the breaker's generic 10 s so a failing
/// upstream is noticed quickly at subscribe rates.
pub const BREAKER_WINDOW_DEFAULT: Duration = Duration::from_secs(5);
/// `Retry-After` seconds sent when a call failed or the queue is full.
const RETRY_AFTER_FAILED_SECONDS: u64 = 1;

const _: () = assert!(WORKERS >= 1 && QUEUE_MAX >= WORKERS);

/// Where the upstream lives: an `http://host[:port][/path]` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthUrl {
    /// Host name or address literal (IPv6 without brackets).
    pub host: String,
    /// TCP port (80 unless given).
    pub port: u16,
    /// Request target, `/` unless given.
    pub path: String,
}

impl AuthUrl {
    /// Parses an `http://` URL (with [`http::Uri`]); `https://`, user info and anything
    /// else is refused with a reason.
    pub fn parse(url: &str) -> Result<Self, String> {
        let expected = || format!("{url:?}: expected http://host[:port][/path]");
        let uri: http::Uri = url.parse().map_err(|err| format!("{url:?}: {err}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(_) => return Err(format!("{url:?}: only http:// URLs are supported")),
            None => return Err(expected()),
        }
        let authority = uri.authority().ok_or_else(expected)?;
        if authority.as_str().contains('@') {
            return Err(expected());
        }
        let host = authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|v6| v6.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            return Err(expected());
        }
        let mut path = match uri.path() {
            "" => "/".to_owned(),
            path => path.to_owned(),
        };
        if let Some(query) = uri.query() {
            path.push('?');
            path.push_str(query);
        }
        // `Uri` keeps an unparsable port (`auth:x`) in the authority without a number.
        let port = match authority.as_str().rsplit_once(':') {
            Some((_, port)) if !port.ends_with(']') => authority
                .port_u16()
                .ok_or_else(|| format!("{url:?}: bad port {port:?}"))?,
            _ => 80,
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            path,
        })
    }

    fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 80 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// Settings of the authorization callback.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthConfig {
    /// The upstream.
    pub url: AuthUrl,
    /// Longest a call may take, queueing included; later counts as a failure.
    pub timeout: Duration,
    /// Admit subscribers when the breaker is open, the queue is full or the call failed.
    pub fail_open: bool,
    /// Breaker of each shard.
    pub breaker: BreakerConfig,
}

/// Which subscribe a call is for; goes to the upstream thread and comes back unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// Connection slot on the shard.
    pub slot: u32,
    /// The connection's serial, so a reply to a closed connection is dropped.
    pub serial: u32,
    /// Room asked for.
    pub room: String,
    /// Resume point of the subscribe.
    pub last_event_id: Option<ringcast_core::event_id::ResumeId>,
}

/// What to do with a subscribe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go on with the normal subscribe.
    Admit,
    /// Refuse with this status (401, 403 or 503) and reason.
    Refuse {
        /// HTTP status.
        status: u16,
        /// Short plain-text reason.
        reason: &'static str,
        /// `Retry-After` seconds (503 only).
        retry_after_seconds: Option<u64>,
    },
}

impl Decision {
    /// The refusal response (the connection closes after it); `None` for [`Decision::Admit`].
    pub fn response(&self) -> Option<Bytes> {
        let Decision::Refuse {
            status,
            reason,
            retry_after_seconds,
        } = self
        else {
            return None;
        };
        let extra = retry_after_seconds
            .map(|seconds| format!("Retry-After: {seconds}\r\n"))
            .unwrap_or_default();
        Some(h1::response(
            *status,
            "text/plain; charset=utf-8",
            &extra,
            format!("{reason}\n").as_bytes(),
            true,
        ))
    }
}

/// Outcome of [`AuthShard::begin`].
#[derive(Debug)]
pub enum Begin {
    /// The call is under way; the decision comes from [`AuthShard::poll_decision`].
    Waiting,
    /// Decided without calling the upstream.
    Decided(Ticket, Decision),
}

/// How an upstream call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// 2xx.
    Allow,
    /// 401 or 403.
    Deny(u16),
    /// Another status, a connection error or a timeout.
    Fail(String),
}

/// One call for an upstream thread.
#[derive(Debug)]
struct Job {
    shard: usize,
    ticket: Ticket,
    client: Option<SocketAddr>,
    /// The subscribe's raw request head; headers are parsed off the shard loop.
    head: Vec<u8>,
    permit: Permit,
    submitted: Instant,
}

/// A finished call, on its way back to the shard.
#[derive(Debug)]
struct Reply {
    ticket: Ticket,
    permit: Permit,
    verdict: Verdict,
    /// Time spent in the upstream call itself (queueing excluded), for the breaker.
    latency: Duration,
}

/// Auth figures of one shard, alone on its cache lines; written by the shard once per
/// loop turn, read at scrape.
#[repr(align(128))]
#[derive(Debug, Default)]
pub struct AuthFigures {
    /// Breaker state and transitions.
    breaker: BreakerFigures,
    /// Results, indexed by [`RESULTS`].
    results: [AtomicU64; RESULTS.len()],
    /// Calls in flight.
    in_flight: AtomicU64,
}

/// Labels of `ringcast_auth_results_total{result=…}`.
const RESULTS: [&str; 6] = [
    "allowed",
    "denied",
    "failed",
    "breaker_open",
    "queue_full",
    "fail_open_admitted",
];
const ALLOWED: usize = 0;
const DENIED: usize = 1;
const FAILED: usize = 2;
const BREAKER_OPEN: usize = 3;
const QUEUE_FULL: usize = 4;
const FAIL_OPEN_ADMITTED: usize = 5;

/// What the upstream threads and the shards share.
struct Hub {
    config: AuthConfig,
    /// Jobs sent and not yet taken by a thread.
    queued: AtomicUsize,
    queue_max: usize,
    /// One reply queue per shard.
    replies: Vec<ArrayQueue<Reply>>,
    /// One wake-up eventfd per shard (duplicates of the mesh's).
    wakers: Vec<File>,
    figures: Vec<AuthFigures>,
}

/// The upstream threads and their queues; one per process, in `runtime::shared::Shared`.
/// Dropping every handle closes the queue and the threads exit.
#[derive(Clone)]
pub struct AuthPool {
    sender: mpsc::Sender<Job>,
    hub: Arc<Hub>,
}

impl std::fmt::Debug for AuthPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthPool")
            .field("url", &self.hub.config.url)
            .field("queued", &self.hub.queued.load(Ordering::Relaxed))
            .finish()
    }
}

impl AuthPool {
    /// Starts `workers` upstream threads with a queue of `queue_max` calls; `wakers[i]`
    /// wakes shard `i`.
    pub fn start(
        config: AuthConfig,
        wakers: Vec<OwnedFd>,
        workers: usize,
        queue_max: usize,
    ) -> std::io::Result<Self> {
        let shards = wakers.len();
        let hub = Arc::new(Hub {
            config,
            queued: AtomicUsize::new(0),
            queue_max,
            replies: (0..shards)
                .map(|_| ArrayQueue::new(SHARD_IN_FLIGHT_MAX))
                .collect(),
            wakers: wakers.into_iter().map(File::from).collect(),
            figures: (0..shards).map(|_| AuthFigures::default()).collect(),
        });
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        for index in 0..workers {
            let hub = hub.clone();
            let receiver = receiver.clone();
            std::thread::Builder::new()
                .name(format!("auth-{index}"))
                .spawn(move || upstream_thread(&hub, &receiver))?;
        }
        Ok(Self { sender, hub })
    }

    /// The handle shard `index` keeps.
    pub fn shard(&self, index: usize) -> AuthShard {
        AuthShard {
            index,
            pool: self.clone(),
            breaker: CircuitBreaker::new(self.hub.config.breaker.clone()),
            in_flight: 0,
            results: [0; RESULTS.len()],
        }
    }

    /// Takes a queue place; `false` when the queue is full.
    fn reserve(&self) -> bool {
        self.hub
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                (queued < self.hub.queue_max).then_some(queued + 1)
            })
            .is_ok()
    }

    fn release(&self) {
        self.hub.queued.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A shard's side of authorization: its breaker, its calls in flight and its counts.
#[derive(Debug)]
pub struct AuthShard {
    index: usize,
    pool: AuthPool,
    breaker: CircuitBreaker,
    in_flight: usize,
    results: [u64; RESULTS.len()],
}

impl AuthShard {
    /// Starts authorizing a subscribe from `client` whose request head is `head`: decides
    /// at once when the queue is full or the breaker is open (no upstream call), else
    /// queues the call.
    pub fn begin(
        &mut self,
        now: Instant,
        ticket: Ticket,
        client: Option<SocketAddr>,
        head: Vec<u8>,
    ) -> Begin {
        let fail_open = self.pool.hub.config.fail_open;
        // The queue place is taken before the breaker is asked, so a half-open probe
        // permit is never handed out for a call that cannot be queued.
        if self.in_flight >= SHARD_IN_FLIGHT_MAX || !self.pool.reserve() {
            self.results[QUEUE_FULL] += 1;
            let decision = self.unavailable(fail_open, "auth queue full", None);
            return Begin::Decided(ticket, decision);
        }
        let permit = match self.breaker.allow(now) {
            Ok(permit) => permit,
            Err(rejected) => {
                self.pool.release();
                self.results[BREAKER_OPEN] += 1;
                let decision = self.unavailable(
                    fail_open,
                    "authorization unavailable (circuit open)",
                    Some(rejected.retry_after_seconds()),
                );
                return Begin::Decided(ticket, decision);
            }
        };
        let job = Job {
            shard: self.index,
            ticket,
            client,
            head,
            permit,
            submitted: now,
        };
        match self.pool.sender.send(job) {
            Ok(()) => {
                self.in_flight += 1;
                Begin::Waiting
            }
            Err(mpsc::SendError(job)) => {
                // Every upstream thread is gone: a failed call.
                self.pool.release();
                self.breaker
                    .record(job.permit, Outcome::Failure, Duration::ZERO, now);
                self.results[FAILED] += 1;
                let decision = self.unavailable(fail_open, "authorization failed", None);
                Begin::Decided(job.ticket, decision)
            }
        }
    }

    /// The next finished call, with its outcome recorded in the breaker.
    pub fn poll_decision(&mut self, now: Instant) -> Option<(Ticket, Decision)> {
        let reply = self.pool.hub.replies[self.index].pop()?;
        self.in_flight -= 1;
        let fail_open = self.pool.hub.config.fail_open;
        let (outcome, decision) = match reply.verdict {
            Verdict::Allow => {
                self.results[ALLOWED] += 1;
                (Outcome::Success, Decision::Admit)
            }
            Verdict::Deny(status) => {
                self.results[DENIED] += 1;
                let reason = if status == 401 {
                    "unauthorized"
                } else {
                    "forbidden"
                };
                let decision = Decision::Refuse {
                    status,
                    reason,
                    retry_after_seconds: None,
                };
                (Outcome::Success, decision)
            }
            Verdict::Fail(why) => {
                tracing::debug!(shard = self.index, conn = reply.ticket.slot, room = %reply.ticket.room, why, "authorization call failed");
                self.results[FAILED] += 1;
                let decision = self.unavailable(fail_open, "authorization failed", None);
                (Outcome::Failure, decision)
            }
        };
        let before = self.breaker.transitions_to(BreakerState::Open);
        self.breaker
            .record(reply.permit, outcome, reply.latency, now);
        if self.breaker.transitions_to(BreakerState::Open) != before {
            tracing::warn!(
                shard = self.index,
                upstream = "auth",
                "circuit breaker opened"
            );
        }
        Some((reply.ticket, decision))
    }

    /// Calls under way.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The breaker's state at `now`.
    pub fn state(&self, now: Instant) -> BreakerState {
        self.breaker.state(now)
    }

    /// Stores this shard's figures for `/metrics` (relaxed stores, once per loop turn).
    pub fn publish_figures(&self, now: Instant) {
        let figures = &self.pool.hub.figures[self.index];
        figures.breaker.publish(&self.breaker, now);
        for (index, value) in self.results.iter().enumerate() {
            figures.results[index].store(*value, Ordering::Relaxed);
        }
        figures
            .in_flight
            .store(self.in_flight as u64, Ordering::Relaxed);
    }

    /// No answer from the upstream: 503 + `Retry-After`, or admission when failing open.
    fn unavailable(
        &mut self,
        fail_open: bool,
        reason: &'static str,
        retry_after_seconds: Option<u64>,
    ) -> Decision {
        if fail_open {
            self.results[FAIL_OPEN_ADMITTED] += 1;
            return Decision::Admit;
        }
        Decision::Refuse {
            status: 503,
            reason,
            retry_after_seconds: Some(retry_after_seconds.unwrap_or(RETRY_AFTER_FAILED_SECONDS)),
        }
    }
}

/// Adds the auth figures of every shard to a `/metrics` exposition (Prometheus text or
/// OpenMetrics): breaker state and transitions (label `upstream="auth"`), call results and
/// calls in flight.
pub fn expose(out: &mut Exposition, pool: &AuthPool) {
    for (shard, f) in pool.hub.figures.iter().enumerate() {
        let shard = shard.to_string();
        f.breaker.expose(out, "auth", &shard);
        let labels = [("shard", shard.as_str())];
        for (index, result) in RESULTS.iter().enumerate() {
            out.counter(
                "ringcast_auth_results_total",
                "Subscribe authorizations by result (allowed, denied, failed: the upstream answered or failed; breaker_open, queue_full: not called; fail_open_admitted: admitted without an answer).",
                &[labels[0], ("result", result)],
                f.results[index].load(Ordering::Relaxed) as f64,
            );
        }
        out.gauge(
            "ringcast_auth_in_flight",
            "Subscribe authorization calls under way.",
            &labels,
            f.in_flight.load(Ordering::Relaxed) as f64,
        );
    }
}

/// The client address of a connection (`getpeername`), for the upstream.
pub fn peer_addr(fd: RawFd) -> Option<SocketAddr> {
    crate::uring::sys::peer_addr(fd)
}

fn upstream_thread(hub: &Hub, receiver: &Mutex<mpsc::Receiver<Job>>) {
    loop {
        // Hold the lock only to take a job (std's Receiver is single-consumer).
        let job = match receiver.lock() {
            Ok(receiver) => receiver.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else {
            return; // every sender dropped: the process is stopping
        };
        hub.queued.fetch_sub(1, Ordering::AcqRel);
        let started = Instant::now();
        let verdict = call(&hub.config, &job, started);
        let reply = Reply {
            ticket: job.ticket,
            permit: job.permit,
            verdict,
            latency: started.elapsed(),
        };
        let shard = job.shard;
        if hub.replies[shard].push(reply).is_err() {
            // Cannot happen: a shard keeps at most SHARD_IN_FLIGHT_MAX calls in flight.
            debug_assert!(false, "auth reply queue of shard {shard} full");
            tracing::error!(shard, "auth reply queue full; reply dropped");
            continue;
        }
        if let Err(err) = (&hub.wakers[shard]).write_all(&1u64.to_ne_bytes()) {
            tracing::warn!(shard, %err, "cannot wake shard");
        }
    }
}

/// Makes one upstream call for `job`, within `config.timeout` of its submission.
fn call(config: &AuthConfig, job: &Job, now: Instant) -> Verdict {
    let deadline = job.submitted + config.timeout;
    let left = || {
        let left = deadline.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    };
    if now >= deadline {
        return Verdict::Fail("timed out waiting for an upstream thread".into());
    }
    let url = &config.url;
    let mut headers = serde_json::Map::new();
    for (name, value) in h1::header_fields(&job.head) {
        match headers.get_mut(&name) {
            Some(serde_json::Value::String(joined)) => {
                joined.push_str(", ");
                joined.push_str(&value);
            }
            _ => {
                headers.insert(name, serde_json::Value::String(value));
            }
        }
    }
    let body = serde_json::json!({
        "room": job.ticket.room,
        "client": job.client.map(|a| a.to_string()).unwrap_or_default(),
        "headers": headers,
    })
    .to_string();
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: ringcast\r\n\r\n{body}",
        url.path,
        url.host_header(),
        body.len()
    );
    let addr = match (url.host.as_str(), url.port).to_socket_addrs() {
        Ok(mut addrs) => match addrs.next() {
            Some(addr) => addr,
            None => return Verdict::Fail(format!("{} has no address", url.host)),
        },
        Err(err) => return Verdict::Fail(format!("resolving {}: {err}", url.host)),
    };
    let timed_out = || Verdict::Fail("timed out".into());
    let Some(wait) = left() else {
        return timed_out();
    };
    let mut stream = match TcpStream::connect_timeout(&addr, wait) {
        Ok(stream) => stream,
        Err(err) => return Verdict::Fail(format!("connecting to {addr}: {err}")),
    };
    let _ = stream.set_nodelay(true);
    let Some(wait) = left() else {
        return timed_out();
    };
    if let Err(err) = stream
        .set_write_timeout(Some(wait))
        .and_then(|()| stream.write_all(request.as_bytes()))
    {
        return Verdict::Fail(format!("sending to {addr}: {err}"));
    }
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; h1::HEADERS_MAX];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                return match response.code.unwrap_or(0) {
                    200..=299 => Verdict::Allow,
                    status @ (401 | 403) => Verdict::Deny(status),
                    status => Verdict::Fail(format!("upstream answered {status}")),
                };
            }
            Ok(httparse::Status::Partial) if buf.len() < RESPONSE_HEAD_BYTES_MAX => {}
            Ok(httparse::Status::Partial) => {
                return Verdict::Fail("upstream response head too large".into())
            }
            Err(err) => return Verdict::Fail(format!("bad upstream response: {err}")),
        }
        let Some(wait) = left() else {
            return timed_out();
        };
        if let Err(err) = stream.set_read_timeout(Some(wait)) {
            return Verdict::Fail(format!("reading from {addr}: {err}"));
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Verdict::Fail("upstream closed before answering".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return timed_out()
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Verdict::Fail(format!("reading from {addr}: {err}")),
        }
    }
}

#[cfg(test)]
mod tests;
