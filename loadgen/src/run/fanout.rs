//! `ringload fanout`: connects subscribers over rooms, publishes at a fixed rate, checks
//! every delivery and gives a verdict. This module orchestrates the run and builds the
//! report; the IO lives in [`crate::plain::subscriber`] and [`crate::plain::publisher`]
//! (plain HTTP/1.1 and WebSocket, mio) or [`crate::transport::subscriber`] and
//! [`crate::transport::publisher`] (TLS, HTTP/2, HTTP/3). With `--publish-over ws` the
//! subscriber threads publish themselves, on their WebSocket connections.

use crate::check::checker::DeliveryCounts;
use crate::check::latency::{Latency, LatencySummary};
use crate::plain::publisher;
use crate::plain::socket;
use crate::plain::subscriber::{SubscriberSetup, SubscriberThread};
use crate::plain::websocket::WsSetup;
use crate::plan::publish::{
    self, PublishCounts, PublishOver, PublishPlan, PublishProgress, PublishResult, WsPublishPlan,
};
use crate::plan::subscribe::Control;
use crate::plan::target::UrlTemplate;
use crate::plan::transport::{Proto, TransportConfig};
use crate::proto::http1;
use crate::proto::template::Template;
use crate::run::progress::Progress;
use crate::transport::subscriber::StreamSubscriberSetup;
use crate::transport::{Endpoint, TransportError};
use serde::Serialize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most subscribers in one run.
pub const SUBSCRIBERS_MAX: usize = 10_000_000;

/// Most rooms in one run.
pub const ROOMS_MAX: usize = 1_000_000;

/// How often the main thread refreshes progress and checks for setup failures.
const WATCH_INTERVAL: Duration = Duration::from_millis(5);

/// How long after the window plus grace the main thread still waits for subscriber
/// threads that publish over WebSocket to report (they give up at the end of the window
/// plus grace themselves; this only covers a thread that stalls).
const WS_PUBLISH_SLACK: Duration = Duration::from_secs(2);

/// How often the progress line is redrawn.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// What to run.
#[derive(Debug, Clone)]
pub struct FanoutConfig {
    /// Subscribe URL template.
    pub sub_url: UrlTemplate,
    /// Further subscribe URL templates (repeated `--sub-url`, plain HTTP/1.1 only):
    /// subscriber `i` uses URL `(i / rooms) % (1 + len)` of `sub_url` then these.
    pub sub_url_more: Vec<UrlTemplate>,
    /// Publish URL template (not needed with `idle`).
    pub pub_url: Option<UrlTemplate>,
    /// Publish body template.
    pub pub_body: Template,
    /// Extra header lines for both kinds of request.
    pub headers: Vec<String>,
    /// Subscribers.
    pub subscribers: usize,
    /// Rooms.
    pub rooms: usize,
    /// Room name prefix (`r` gives r0, r1, …).
    pub room_prefix: String,
    /// Messages per second over all rooms.
    pub rate: f64,
    /// Publishing window.
    pub duration: Duration,
    /// Publisher connections.
    pub pub_conns: usize,
    /// Publish requests in flight per HTTP/1.1 publisher connection (1: no pipelining).
    pub pub_pipeline: usize,
    /// Time after publishing to collect deliveries.
    pub grace: Duration,
    /// Payload size.
    pub size: usize,
    /// Highest p99 from schedule a clean run may have.
    pub max_p99: Duration,
    /// Only connect and hold subscribers.
    pub idle: bool,
    /// How long to hold in idle mode.
    pub hold: Duration,
    /// Loopback source addresses to spread subscribers over.
    pub src_ips: u32,
    /// Subscriber threads.
    pub threads: usize,
    /// Time allowed for all subscribers to connect.
    pub connect_timeout: Duration,
    /// Protocol, streams per connection, TLS.
    pub transport: TransportConfig,
    /// How to publish: HTTP POST to `pub_url`, or on the WebSocket connections.
    pub publish_over: PublishOver,
}

/// Why a run could not be carried out (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    /// A target did not accept a probe connection.
    #[error("cannot connect to {flag} target {addr}: {reason}")]
    Unreachable {
        /// The flag naming the target.
        flag: &'static str,
        /// Address tried.
        addr: std::net::SocketAddr,
        /// OS message.
        reason: String,
    },
    /// Repeated `--sub-url` outside the plain HTTP/1.1 path.
    #[error("a repeated --sub-url needs plain http:// URLs with --proto h1 or ws")]
    SubUrls,
    /// `--proto ws` with an https:// subscribe URL.
    #[error("--proto ws needs a plain http:// --sub-url (WebSocket over TLS is not supported)")]
    WsTls,
    /// `--publish-over ws` without `--proto ws`.
    #[error("--publish-over ws needs --proto ws (it publishes on the subscribers' WebSocket connections)")]
    PublishOverWs,
    /// Subscribers could not be set up.
    #[error("subscribing failed: {0}")]
    Subscribe(String),
    /// Not all subscribers connected in time.
    #[error("only {connected} of {wanted} subscribers connected within {timeout:?} (see --connect-timeout)")]
    SubscribeTimeout {
        /// Connected so far.
        connected: usize,
        /// Wanted.
        wanted: usize,
        /// The limit.
        timeout: Duration,
    },
    /// The publisher could not start.
    #[error(transparent)]
    Publish(#[from] publish::PublishError),
    /// A thread could not be started or panicked.
    #[error("thread failed: {0}")]
    Thread(String),
    /// The transport for a URL could not be set up.
    #[error("{flag}: {error}")]
    Transport {
        /// The flag naming the URL.
        flag: &'static str,
        /// What is wrong.
        error: TransportError,
    },
    /// The probe connection over the chosen protocol failed.
    #[error("cannot connect to {flag} target {url} over {proto}: {reason}")]
    Connect {
        /// The flag naming the target.
        flag: &'static str,
        /// The URL template.
        url: String,
        /// "h1", "h2" or "h3".
        proto: &'static str,
        /// What failed.
        reason: String,
    },
}

/// Per-check counts of a run.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Checks {
    /// Expected messages that never arrived.
    pub lost: u64,
    /// Messages received twice or more.
    pub duplicates: u64,
    /// Messages that arrived after a later one.
    pub reordered: u64,
    /// Messages delivered to a subscriber of another room.
    pub wrong_room: u64,
    /// Subscriber connections that ended during the run.
    pub disconnects: u64,
    /// Deliveries from an earlier run (ignored).
    pub stale: u64,
    /// Events without a ringload payload (ignored).
    pub foreign: u64,
    /// `event: gap` notices received.
    pub gap_events: u64,
    /// Heartbeat comments received.
    pub heartbeats: u64,
}

/// Verdict of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// True when every check passed.
    pub clean: bool,
    /// Why not (empty when clean).
    pub reasons: Vec<String>,
}

/// The outcome of one fanout run.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutReport {
    /// "fanout" or "idle".
    pub mode: &'static str,
    /// Protocol: "h1", "h2" or "h3".
    pub proto: &'static str,
    /// Subscribe URL template (several, space-separated, when `--sub-url` was repeated).
    pub sub_url: String,
    /// Publish URL template.
    pub pub_url: Option<String>,
    /// How messages were published: "http" (POST to `pub_url`) or "ws" (on the
    /// subscribers' WebSocket connections).
    pub publish_over: PublishOver,
    /// Subscribers.
    pub subscribers: usize,
    /// Rooms.
    pub rooms: usize,
    /// Target rate (messages/s over all rooms).
    pub rate: f64,
    /// Publishes one HTTP/1.1 publisher connection may have in flight (`--pub-pipeline`).
    pub pub_pipeline: usize,
    /// Publishing window in seconds (hold time in idle mode).
    pub duration_s: f64,
    /// Payload bytes.
    pub size: usize,
    /// Subscriber threads.
    pub threads: usize,
    /// Seconds until every subscriber had its 200 response head.
    pub connect_time_s: f64,
    /// Subscribers connected.
    pub subscribers_connected: usize,
    /// Publish outcomes.
    pub published: PublishCounts,
    /// Deliveries expected: for each room, 2xx publishes × subscribers of the room.
    pub expected: u64,
    /// Distinct expected messages received.
    pub delivered: u64,
    /// Delivered per second of the publishing window.
    pub deliveries_per_s: f64,
    /// Check counts.
    pub checks: Checks,
    /// Receive time − publish stamp (actual send).
    pub latency_from_stamp: LatencySummary,
    /// Receive time − scheduled publish time (coordinated omission visible).
    pub latency_from_schedule: LatencySummary,
    /// Actual publish send time − scheduled time.
    pub publish_lateness: LatencySummary,
    /// Publish request → complete answer.
    pub publish_response_time: LatencySummary,
    /// Body bytes read by subscribers.
    pub bytes_read: u64,
    /// Subscriber read syscalls that returned data.
    pub reads: u64,
    /// CPU seconds ringload used while publishing and collecting.
    pub cpu_s: f64,
    /// CPU microseconds per delivery.
    pub cpu_us_per_delivery: f64,
    /// The verdict.
    pub verdict: Verdict,
    /// Full schedule-based histogram for `--hdr-out`.
    #[serde(skip)]
    pub schedule_histogram: Latency,
    /// Full stamp-based histogram for `--hdr-out`.
    #[serde(skip)]
    pub stamp_histogram: Latency,
}

impl std::fmt::Display for FanoutReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "ringload {} over {} — {} subscribers over {} rooms, {} threads",
            self.mode, self.proto, self.subscribers, self.rooms, self.threads
        )?;
        writeln!(
            f,
            "  connect      {}/{} subscribers in {:.3}s",
            self.subscribers_connected, self.subscribers, self.connect_time_s
        )?;
        if self.mode == "fanout" {
            let p = &self.published;
            writeln!(
                f,
                "  publish      {:.1} msg/s for {:.1}s, {}B{}: scheduled {}, sent {}, ok {}, failed {}, unsent {}",
                self.rate,
                self.duration_s,
                self.size,
                if self.publish_over == PublishOver::Ws { " over ws" } else { "" },
                p.scheduled,
                p.sent,
                p.ok,
                p.failed(),
                p.unsent
            )?;
            writeln!(
                f,
                "  deliveries   {}/{} expected ({:.0}/s)",
                self.delivered, self.expected, self.deliveries_per_s
            )?;
            let c = &self.checks;
            writeln!(
                f,
                "  checks       lost {}, duplicates {}, reordered {}, wrong room {}, disconnects {}",
                c.lost, c.duplicates, c.reordered, c.wrong_room, c.disconnects
            )?;
            writeln!(
                f,
                "  other        stale {}, foreign {}, gap events {}, heartbeats {}",
                c.stale, c.foreign, c.gap_events, c.heartbeats
            )?;
            writeln!(f, "  latency from schedule  {}", self.latency_from_schedule)?;
            writeln!(f, "  latency from stamp     {}", self.latency_from_stamp)?;
            writeln!(f, "  publish lateness       {}", self.publish_lateness)?;
            writeln!(f, "  publish response time  {}", self.publish_response_time)?;
            writeln!(
                f,
                "  cpu          {:.2}s ({:.3} us/delivery), {} reads ({:.1} bytes/read)",
                self.cpu_s,
                self.cpu_us_per_delivery,
                self.reads,
                self.bytes_read as f64 / self.reads.max(1) as f64
            )?;
        } else {
            writeln!(
                f,
                "  held         {:.1}s, disconnects {}, heartbeats {}",
                self.duration_s, self.checks.disconnects, self.checks.heartbeats
            )?;
            writeln!(f, "  cpu          {:.2}s", self.cpu_s)?;
        }
        if self.verdict.clean {
            write!(f, "verdict: clean")
        } else {
            write!(f, "verdict: NOT clean: {}", self.verdict.reasons.join("; "))
        }
    }
}

/// Room name of room `index`.
pub fn room_name(prefix: &str, index: usize) -> String {
    format!("{prefix}{index}")
}

/// A run id that differs between runs (and sweep steps) of one process and across
/// processes, so replayed history from an earlier run is recognised as stale.
fn new_run_id() -> u32 {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let nanos = crate::check::clock::wall_ns();
    let mix = (nanos as u32) ^ ((nanos >> 32) as u32) ^ std::process::id().rotate_left(16);
    mix.wrapping_add(COUNTER.fetch_add(0x9e37_79b9, Ordering::Relaxed))
}

/// Runs one fanout (or idle) measurement.
pub fn run(config: &FanoutConfig, progress: &mut Progress) -> Result<FanoutReport, FanoutError> {
    let probe = |flag: &'static str, addr| {
        socket::probe(addr, crate::run::http::PROBE_TIMEOUT).map_err(|error| {
            FanoutError::Unreachable {
                flag,
                addr,
                reason: error.to_string(),
            }
        })
    };
    let websocket = config.transport.proto == Proto::Ws;
    if websocket && config.sub_url.tls {
        return Err(FanoutError::WsTls);
    }
    let publish_over_ws = config.publish_over == PublishOver::Ws && !config.idle;
    if publish_over_ws && !websocket {
        return Err(FanoutError::PublishOverWs);
    }
    // Publishing is HTTP in every WebSocket run but `--publish-over ws`.
    let http_transport = config.transport.for_http();
    // An endpoint per URL that does not take the mio path, probed with one connection.
    let stream_endpoint = |flag: &'static str, url: &UrlTemplate| {
        if http_transport.uses_mio(url.tls) {
            probe(flag, url.addr)?;
            return Ok::<_, FanoutError>(None);
        }
        let endpoint = Endpoint::new(
            &http_transport,
            url.addr,
            url.tls,
            &url.host,
            &url.host_header,
            &config.headers,
        )
        .map_err(|error| FanoutError::Transport { flag, error })?;
        crate::transport::probe::probe(&endpoint, crate::run::http::PROBE_TIMEOUT).map_err(
            |reason| FanoutError::Connect {
                flag,
                url: url.text.clone(),
                proto: config.transport.proto.name(),
                reason,
            },
        )?;
        Ok(Some(endpoint))
    };
    let sub_endpoint = stream_endpoint("--sub-url", &config.sub_url)?;
    let sub_urls: Vec<&UrlTemplate> = std::iter::once(&config.sub_url)
        .chain(&config.sub_url_more)
        .collect();
    if sub_urls.len() > 1 {
        if sub_endpoint.is_some()
            || sub_urls
                .iter()
                .any(|url| !config.transport.uses_mio(url.tls))
        {
            return Err(FanoutError::SubUrls);
        }
        for url in &sub_urls[1..] {
            probe("--sub-url", url.addr)?;
        }
    }
    let pub_endpoint = match (&config.pub_url, config.idle || publish_over_ws) {
        (Some(pub_url), false) => stream_endpoint("--pub-url", pub_url)?,
        _ => None,
    };
    let rooms: Vec<String> = (0..config.rooms)
        .map(|index| room_name(&config.room_prefix, index))
        .collect();
    let requests = sub_urls
        .iter()
        .flat_map(|url| rooms.iter().map(move |room| (url, room)))
        .map(|(url, room)| {
            let mut request = Vec::new();
            let path = url.path.render(room, 0);
            http1::encode_request(
                &mut request,
                "GET",
                &url.host_header,
                &path,
                &config.headers,
                b"",
                true,
            );
            request
        })
        .collect();
    let threads = config.threads.clamp(1, config.subscribers.max(1));
    let run_id = new_run_id();
    let stream_setup = sub_endpoint.map(|endpoint| {
        Arc::new(StreamSubscriberSetup {
            rooms: rooms.clone(),
            paths: rooms
                .iter()
                .map(|room| config.sub_url.path.render(room, 0))
                .collect(),
            endpoint,
            streams_per_conn: config.transport.streams_per_conn(),
            subscribers: config.subscribers,
            threads,
            run_id,
        })
    });
    let websocket = websocket.then(|| WsSetup {
        hosts: sub_urls.iter().map(|url| url.host_header.clone()).collect(),
        paths: sub_urls
            .iter()
            .flat_map(|url| rooms.iter().map(move |room| url.path.render(room, 0)))
            .collect(),
        headers: config.headers.clone(),
        publish: publish_over_ws.then(|| WsPublishPlan {
            body: config.pub_body.clone(),
            rate: config.rate,
            duration: config.duration,
            grace: config.grace,
            size: config.size,
        }),
    });
    let setup = Arc::new(SubscriberSetup {
        rooms: rooms.clone(),
        requests,
        addrs: sub_urls.iter().map(|url| url.addr).collect(),
        subscribers: config.subscribers,
        threads,
        src_ips: config.src_ips,
        run_id,
        websocket,
    });
    let control = Arc::new(Control::new(threads));
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let connect_start = Instant::now();
    let mut handles = Vec::with_capacity(threads);
    for index in 0..threads {
        let core = (!cores.is_empty()).then(|| cores[index % cores.len()]);
        if let Some(stream_setup) = &stream_setup {
            let (stream_setup, control) = (stream_setup.clone(), control.clone());
            let handle = std::thread::Builder::new()
                .name(format!("ringload-sub-{index}"))
                .spawn(move || {
                    crate::transport::subscriber::run_thread(index, stream_setup, control, core)
                })
                .map_err(|error| FanoutError::Thread(error.to_string()))?;
            handles.push(handle);
            continue;
        }
        let thread = SubscriberThread {
            index,
            setup: setup.clone(),
            control: control.clone(),
            core,
        };
        let handle = std::thread::Builder::new()
            .name(format!("ringload-sub-{index}"))
            .spawn(move || thread.run())
            .map_err(|error| FanoutError::Thread(error.to_string()))?;
        handles.push(handle);
    }
    let stop_subscribers = |handles: Vec<std::thread::JoinHandle<_>>| {
        control.stop.store(true, Ordering::Relaxed);
        handles
            .into_iter()
            .map(|handle| handle.join())
            .collect::<Vec<_>>()
    };

    // Phase 1: every subscriber connected and answered 200.
    let mut last_draw = Instant::now();
    loop {
        let connected = control.subscribed.load(Ordering::Relaxed);
        if let Some(failure) = control.failure() {
            stop_subscribers(handles);
            progress.finish();
            return Err(FanoutError::Subscribe(failure));
        }
        if connected >= config.subscribers {
            break;
        }
        if connect_start.elapsed() > config.connect_timeout {
            stop_subscribers(handles);
            progress.finish();
            return Err(FanoutError::SubscribeTimeout {
                connected,
                wanted: config.subscribers,
                timeout: config.connect_timeout,
            });
        }
        if last_draw.elapsed() >= PROGRESS_INTERVAL {
            last_draw = Instant::now();
            progress.update(&format!(
                "connecting {connected}/{} subscribers ({:.1}s)",
                config.subscribers,
                connect_start.elapsed().as_secs_f64()
            ));
        }
        std::thread::sleep(WATCH_INTERVAL);
    }
    let connect_time = connect_start.elapsed();
    if publish_over_ws {
        let _ = control
            .publish_start
            .set(crate::check::clock::Anchor::now());
    }
    control.running.store(true, Ordering::Relaxed);
    let cpu_start = crate::run::cpu::process_cpu_time();

    // Phase 2: publish (or hold), then grace.
    let publish_progress = Arc::new(PublishProgress::default());
    let publish_result = if config.idle {
        progress.finish();
        eprintln!(
            "ringload: all {} subscribers connected in {:.3}s; holding for {:.1}s",
            config.subscribers,
            connect_time.as_secs_f64(),
            config.hold.as_secs_f64()
        );
        let end = Instant::now() + config.hold;
        while Instant::now() < end {
            std::thread::sleep((end - Instant::now()).min(PROGRESS_INTERVAL));
            progress.update(&format!(
                "holding {} subscribers, {:.0}s left",
                config.subscribers,
                end.saturating_duration_since(Instant::now()).as_secs_f64()
            ));
        }
        None
    } else if publish_over_ws {
        // The subscriber threads publish; wait until each has every answer (or gave up at
        // the end of the window plus grace), then give deliveries the grace period.
        let started = Instant::now();
        let give_up = started + config.duration + config.grace + WS_PUBLISH_SLACK;
        while control.publishers_done.load(Ordering::Relaxed) < threads && Instant::now() < give_up
        {
            std::thread::sleep(WATCH_INTERVAL.max(Duration::from_millis(50)));
            if last_draw.elapsed() >= PROGRESS_INTERVAL {
                last_draw = Instant::now();
                let delivered: u64 = control
                    .delivered
                    .iter()
                    .map(|c| c.0.load(Ordering::Relaxed))
                    .sum();
                let elapsed = started.elapsed().as_secs_f64().max(1e-3);
                progress.update(&format!(
                    "{elapsed:.1}s  published {} (over ws)  delivered {delivered} ({:.0}/s)",
                    control.published.load(Ordering::Relaxed),
                    delivered as f64 / elapsed
                ));
            }
        }
        progress.update("collecting deliveries (grace period)");
        std::thread::sleep(config.grace);
        None
    } else {
        let pub_url = config
            .pub_url
            .clone()
            .ok_or_else(|| FanoutError::Thread("no --pub-url".into()))?;
        let plan = PublishPlan {
            rooms: rooms.clone(),
            url: pub_url,
            body: config.pub_body.clone(),
            headers: config.headers.clone(),
            connections: config.pub_conns,
            pipeline: config.pub_pipeline,
            rate: config.rate,
            duration: config.duration,
            grace: config.grace,
            size: config.size,
            run_id,
        };
        let shared = publish_progress.clone();
        let pub_streams_per_conn = config.transport.streams_per_conn();
        let publisher = std::thread::Builder::new()
            .name("ringload-pub".into())
            .spawn(move || match pub_endpoint {
                Some(endpoint) => crate::transport::publisher::run(
                    &plan,
                    shared.clone(),
                    &endpoint,
                    pub_streams_per_conn,
                ),
                None => publisher::run(&plan, &shared),
            })
            .map_err(|error| FanoutError::Thread(error.to_string()))?;
        let started = Instant::now();
        while !publisher.is_finished() {
            std::thread::sleep(PROGRESS_INTERVAL.min(Duration::from_millis(50)));
            if last_draw.elapsed() >= PROGRESS_INTERVAL {
                last_draw = Instant::now();
                let delivered: u64 = control
                    .delivered
                    .iter()
                    .map(|c| c.0.load(Ordering::Relaxed))
                    .sum();
                let elapsed = started.elapsed().as_secs_f64().max(1e-3);
                progress.update(&format!(
                    "{elapsed:.1}s  published {}  delivered {delivered} ({:.0}/s)",
                    publish_progress.sent.load(Ordering::Relaxed),
                    delivered as f64 / elapsed
                ));
            }
        }
        let result = publisher
            .join()
            .map_err(|_| FanoutError::Thread("publisher panicked".into()));
        let result = match result {
            Ok(Ok(result)) => result,
            Ok(Err(error)) => {
                stop_subscribers(handles);
                progress.finish();
                return Err(error.into());
            }
            Err(error) => {
                stop_subscribers(handles);
                progress.finish();
                return Err(error);
            }
        };
        progress.update("collecting deliveries (grace period)");
        std::thread::sleep(config.grace);
        Some(result)
    };
    let cpu = crate::run::cpu::process_cpu_time().saturating_sub(cpu_start);
    let joined = stop_subscribers(handles);
    progress.finish();

    // Phase 3: merge and judge.
    let mut counts = DeliveryCounts::default();
    let mut stamp = Latency::new();
    let mut schedule = Latency::new();
    let mut lost = 0u64;
    let mut subscribers_per_room = vec![0u64; config.rooms.max(1)];
    let joined = joined
        .into_iter()
        .map(|thread| thread.map_err(|_| FanoutError::Thread("subscriber thread panicked".into())))
        .collect::<Result<Vec<_>, _>>()?;
    let mut publish_result = publish_result;
    if publish_over_ws {
        let mut merged = PublishResult::new(config.rooms.max(1));
        for thread in &joined {
            if let Some(published) = &thread.published {
                merged.merge(published);
            }
        }
        publish_result = Some(merged);
    }
    for thread in joined {
        counts.add(&thread.counts);
        stamp.merge(&thread.latency_stamp);
        schedule.merge(&thread.latency_schedule);
        for (room, tracker) in &thread.trackers {
            let room = *room as usize;
            subscribers_per_room[room] += 1;
            if let Some(result) = &publish_result {
                lost += tracker.lost(result.last_seq[room], &result.failed_seqs[room]);
            }
        }
    }
    let expected: u64 = publish_result.as_ref().map_or(0, |result| {
        result
            .ok_per_room
            .iter()
            .zip(&subscribers_per_room)
            .map(|(ok, subscribers)| ok * subscribers)
            .sum()
    });
    let checks = Checks {
        lost,
        duplicates: counts.duplicates,
        reordered: counts.reordered,
        wrong_room: counts.wrong_room,
        disconnects: counts.disconnects,
        stale: counts.stale,
        foreign: counts.foreign,
        gap_events: counts.gap_events,
        heartbeats: counts.heartbeats,
    };
    let schedule_summary = schedule.summary();
    let published = publish_result
        .as_ref()
        .map(|result| result.counts.clone())
        .unwrap_or_default();
    let verdict = judge(&checks, &published, &schedule_summary, config);
    let duration_s = if config.idle {
        config.hold.as_secs_f64()
    } else {
        config.duration.as_secs_f64()
    };
    let empty = Latency::new();
    Ok(FanoutReport {
        mode: if config.idle { "idle" } else { "fanout" },
        proto: config.transport.proto.name(),
        sub_url: sub_urls
            .iter()
            .map(|url| url.text.as_str())
            .collect::<Vec<_>>()
            .join(" "),
        pub_url: config.pub_url.as_ref().map(|url| url.text.clone()),
        publish_over: config.publish_over,
        subscribers: config.subscribers,
        rooms: config.rooms,
        rate: config.rate,
        pub_pipeline: config.pub_pipeline,
        duration_s,
        size: config.size,
        threads,
        connect_time_s: connect_time.as_secs_f64(),
        subscribers_connected: control.subscribed.load(Ordering::Relaxed),
        published,
        expected,
        delivered: counts.delivered,
        deliveries_per_s: counts.delivered as f64 / duration_s.max(1e-9),
        checks,
        latency_from_stamp: stamp.summary(),
        latency_from_schedule: schedule_summary,
        publish_lateness: publish_result
            .as_ref()
            .map_or(empty.summary(), |r| r.lateness.summary()),
        publish_response_time: publish_result
            .as_ref()
            .map_or(empty.summary(), |r| r.response_time.summary()),
        bytes_read: counts.bytes,
        reads: counts.reads,
        cpu_s: cpu.as_secs_f64(),
        cpu_us_per_delivery: if counts.delivered > 0 {
            cpu.as_secs_f64() * 1e6 / counts.delivered as f64
        } else {
            0.0
        },
        verdict,
        schedule_histogram: schedule,
        stamp_histogram: stamp,
    })
}

/// The clean / not clean decision with its reasons.
pub fn judge(
    checks: &Checks,
    published: &PublishCounts,
    schedule: &LatencySummary,
    config: &FanoutConfig,
) -> Verdict {
    let mut reasons = Vec::new();
    let mut check = |count: u64, what: &str| {
        if count > 0 {
            reasons.push(format!("{count} {what}"));
        }
    };
    check(checks.lost, "lost");
    check(checks.duplicates, "duplicated");
    check(checks.reordered, "reordered");
    check(checks.wrong_room, "delivered to the wrong room");
    check(checks.disconnects, "subscriber disconnects");
    check(published.failed(), "failed publishes");
    check(
        published.unsent,
        "publishes not sent (publisher fell behind)",
    );
    let limit_ms = config.max_p99.as_secs_f64() * 1000.0;
    if !config.idle && schedule.p99_ms > limit_ms {
        reasons.push(format!(
            "p99 from schedule {:.1}ms > --max-p99 {:.1}ms",
            schedule.p99_ms, limit_ms
        ));
    }
    Verdict {
        clean: reasons.is_empty(),
        reasons,
    }
}
