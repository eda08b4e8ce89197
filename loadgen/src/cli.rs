//! Command-line flags (clap) and their conversion into run configurations. Flag values are
//! validated here so that a bad flag fails with a message naming it (exit code 2).

use crate::plain::socket::SOURCE_IPS_MAX;
use crate::plan::http::HttpConfig;
use crate::plan::publish::{PublishOver, PUB_CONNS_MAX, PUB_PIPELINE_MAX};
use crate::plan::target::{Target, UrlTemplate};
use crate::plan::transport::{
    Proto, TlsOptions, TransportConfig, STREAMS_PER_CONN_DEFAULT, STREAMS_PER_CONN_MAX,
};
use crate::proto::payload::PAYLOAD_BYTES_MAX;
use crate::proto::template::Template;
use crate::report::plot_input::PlotSource;
use crate::run::duration::{parse_duration, parse_rate};
use crate::run::fanout::{FanoutConfig, ROOMS_MAX, SUBSCRIBERS_MAX};
use crate::run::http::CONNECTIONS_MAX;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

/// Most worker threads.
pub const THREADS_MAX: usize = 1024;

/// Default publisher connections cap (one room's messages always share one connection).
pub const PUB_CONNS_DEFAULT_MAX: usize = 16;

/// Longest `ringload plot --title`.
pub const PLOT_TITLE_CHARS_MAX: usize = 200;

/// ringload — load generator for ringcast (and any SSE fan-out server with the same URLs).
#[derive(Debug, Parser)]
#[command(name = "ringload", version, about, long_about = None)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The modes.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// wrk-like HTTP/1.1 keep-alive load on one URL.
    Http(Box<HttpArgs>),
    /// Subscribers over rooms + fixed-rate publisher, every delivery checked.
    Fanout(Box<FanoutArgs>),
    /// Combine saved --json reports into one SVG plot, one labelled series per report.
    Plot(PlotArgs),
}

/// Output flags shared by both modes.
#[derive(Debug, Args, Clone)]
pub struct OutputArgs {
    /// Print one JSON object with every figure on stdout instead of the summary.
    #[arg(long)]
    pub json: bool,
    /// No progress line.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Write the latency percentile distribution (HdrHistogram text format) to FILE.
    #[arg(long, value_name = "FILE")]
    pub hdr_out: Option<PathBuf>,
    /// Write an SVG plot to FILE: latency by percentile, or with --sweep deliveries/s by
    /// publish rate.
    #[arg(long, value_name = "FILE.svg", value_parser = parse_svg_path)]
    pub plot: Option<PathBuf>,
}

/// Flags of `ringload plot`.
#[derive(Debug, Args)]
pub struct PlotArgs {
    /// SVG file to write.
    #[arg(long, value_name = "FILE.svg", value_parser = parse_svg_path)]
    pub out: PathBuf,
    /// Title above the plot (default: what it shows).
    #[arg(long, value_parser = parse_plot_title)]
    pub title: Option<String>,
    /// Saved `ringload … --json` reports, all sweeps or all single runs (fanout, http),
    /// each with an optional legend label after '=' (default: the file name).
    #[arg(value_name = "INPUT.json[=LABEL]", required = true, value_parser = parse_plot_source)]
    pub inputs: Vec<PlotSource>,
}

/// Protocol and TLS flags shared by both modes.
#[derive(Debug, Args, Clone)]
pub struct TransportArgs {
    /// Protocol: h1 (HTTP/1.1; TLS for https://), h2 (HTTP/2; TLS+ALPN for https://,
    /// prior-knowledge h2c for http://), h3 (HTTP/3 over QUIC; https:// only), ws (fanout
    /// only: subscribers open --sub-url, e.g. http://HOST/rooms/{room}/ws, as a WebSocket
    /// and read text frames {"room":R,"id":ID,"data":"…"}; plain http:// only; publishing
    /// stays HTTP POST unless --publish-over ws).
    #[arg(long, value_enum, default_value_t = Proto::H1)]
    pub proto: Proto,
    /// Streams (subscriptions, publish lanes, request lanes) sharing one HTTP/2 or HTTP/3
    /// connection.
    #[arg(long, default_value_t = STREAMS_PER_CONN_DEFAULT as u64, value_parser = clap::value_parser!(u64).range(1..=STREAMS_PER_CONN_MAX as u64))]
    pub streams_per_conn: u64,
    /// Accept any server certificate (self-signed test certificates).
    #[arg(long, conflicts_with = "ca")]
    pub insecure: bool,
    /// Trust the certificates in this PEM file instead of the system roots.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
}

impl TransportArgs {
    /// The transport configuration.
    pub fn config(&self) -> TransportConfig {
        TransportConfig {
            proto: self.proto,
            streams_per_conn: self.streams_per_conn as usize,
            tls: TlsOptions {
                insecure: self.insecure,
                ca: self.ca.clone(),
            },
        }
    }
}

/// Flags of `ringload http`.
#[derive(Debug, Args)]
pub struct HttpArgs {
    /// Target URL (http://host:port/path or https://…).
    #[arg(value_parser = parse_target)]
    pub url: Target,
    /// Connections in total.
    #[arg(short = 'c', long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=CONNECTIONS_MAX as u64))]
    pub connections: u64,
    /// Threads (default: number of CPUs this process may use), each pinned to one.
    #[arg(short = 't', long, value_parser = clap::value_parser!(u64).range(1..=THREADS_MAX as u64))]
    pub threads: Option<u64>,
    /// Duration (10s, 500ms, 1m).
    #[arg(short = 'd', long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Total requests per second: open loop, latency counted from the scheduled time.
    #[arg(short = 'R', long, value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Request method.
    #[arg(short = 'm', long, default_value = "GET", value_parser = parse_method)]
    pub method: String,
    /// Extra header `Name: value` (repeatable).
    #[arg(short = 'H', long = "header", value_parser = parse_header)]
    pub headers: Vec<String>,
    /// Request body.
    #[arg(long)]
    pub body: Option<String>,
    /// Per-request timeout.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Protocol and TLS.
    #[command(flatten)]
    pub transport: TransportArgs,
    /// Output.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Flags of `ringload fanout`.
#[derive(Debug, Args)]
pub struct FanoutArgs {
    /// Subscribe URL template, e.g. http://127.0.0.1:8080/rooms/{room}/events. Repeat it
    /// (plain HTTP/1.1 only) to spread each room's subscribers evenly over several servers.
    #[arg(long, required = true, value_parser = parse_url_template)]
    pub sub_url: Vec<UrlTemplate>,
    /// Publish URL template, e.g. http://127.0.0.1:8080/rooms/{room}/messages (not needed
    /// with --idle or --publish-over ws).
    #[arg(long, value_parser = parse_url_template, required_unless_present_any = ["idle", "publish_over"])]
    pub pub_url: Option<UrlTemplate>,
    /// How to publish: http (POST to --pub-url, default) or ws (with --proto ws: send
    /// {"type":"publish","room":R,"data":…,"ref":N} on the subscribers' own WebSocket
    /// connections, room r on the connection of subscriber r % subscribers, each answered by
    /// {"type":"ack","ref":N,…} or {"type":"error","ref":N,"status":…}).
    #[arg(long, value_enum, value_name = "http|ws")]
    pub publish_over: Option<PublishOver>,
    /// Publish body template; {payload} is the stamped payload.
    #[arg(long, default_value = "{payload}", value_parser = parse_body_template)]
    pub pub_body: Template,
    /// Subscribers in total (subscriber i joins room i % rooms).
    #[arg(short = 's', long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=SUBSCRIBERS_MAX as u64))]
    pub subscribers: u64,
    /// Rooms (named PREFIX0, PREFIX1, …).
    #[arg(short = 'r', long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=ROOMS_MAX as u64))]
    pub rooms: u64,
    /// Room name prefix.
    #[arg(long, default_value = "r", value_parser = parse_room_prefix)]
    pub room_prefix: String,
    /// Messages per second over all rooms (round-robin).
    #[arg(long, default_value = "100", value_parser = parse_rate)]
    pub rate: f64,
    /// Publishing duration.
    #[arg(short = 'd', long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Publisher connections, 1..=rooms (default: min(rooms, 16)).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=PUB_CONNS_MAX as u64))]
    pub pub_conns: Option<u64>,
    /// Publish requests in flight per publisher connection (HTTP/1.1 pipelining; plain
    /// http:// with --proto h1 or ws only). 1 = next request after the previous response.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=PUB_PIPELINE_MAX as u64))]
    pub pub_pipeline: u64,
    /// Time after publishing to collect deliveries.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub grace: Duration,
    /// Payload bytes.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=PAYLOAD_BYTES_MAX as u64))]
    pub size: u64,
    /// Highest p99 latency from schedule that still counts as clean.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    pub max_p99: Duration,
    /// Only connect the subscribers and hold them (memory tests).
    #[arg(long)]
    pub idle: bool,
    /// How long --idle holds the subscribers.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub hold: Duration,
    /// Spread client source addresses over 127.0.0.1..=127.0.0.N (beyond ~28k connections).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=SOURCE_IPS_MAX as i64))]
    pub src_ips: u32,
    /// Subscriber threads (default: number of CPUs this process may use), each pinned.
    #[arg(short = 't', long, value_parser = clap::value_parser!(u64).range(1..=THREADS_MAX as u64))]
    pub threads: Option<u64>,
    /// Extra header `Name: value` for subscribe and publish requests (repeatable).
    #[arg(short = 'H', long = "header", value_parser = parse_header)]
    pub headers: Vec<String>,
    /// Time allowed for all subscribers to connect.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Find the highest clean rate: double from --rate, then bisect.
    #[arg(long, conflicts_with = "idle")]
    pub sweep: bool,
    /// Most bisection steps of --sweep.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(0..=64))]
    pub sweep_steps: u32,
    /// Highest rate --sweep tries.
    #[arg(long, value_parser = parse_rate)]
    pub sweep_max: Option<f64>,
    /// Protocol and TLS.
    #[command(flatten)]
    pub transport: TransportArgs,
    /// Output.
    #[command(flatten)]
    pub output: OutputArgs,
}

fn parse_target(text: &str) -> Result<Target, String> {
    Target::parse(text).map_err(|error| error.to_string())
}

fn parse_url_template(text: &str) -> Result<UrlTemplate, String> {
    UrlTemplate::parse(text).map_err(|error| error.to_string())
}

fn parse_body_template(text: &str) -> Result<Template, String> {
    if text.contains(['\r', '\n']) {
        return Err("the body must not contain newlines (it becomes one SSE data line)".into());
    }
    Template::parse(text).map_err(|error| error.to_string())
}

fn parse_header(text: &str) -> Result<String, String> {
    crate::proto::http1::validate_header(text).map(|()| text.to_string())
}

fn parse_method(text: &str) -> Result<String, String> {
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_uppercase()) {
        return Err(format!(
            "'{text}' is not an HTTP method (use upper case, e.g. GET, POST)"
        ));
    }
    Ok(text.to_string())
}

fn parse_svg_path(text: &str) -> Result<PathBuf, String> {
    let is_svg = std::path::Path::new(text)
        .extension()
        .is_some_and(|extension| extension.eq_ignore_ascii_case("svg"));
    if !is_svg {
        return Err("the plot is written as SVG: give a file name ending in .svg".into());
    }
    Ok(PathBuf::from(text))
}

fn parse_plot_source(text: &str) -> Result<PlotSource, String> {
    PlotSource::parse(text)
}

fn parse_plot_title(text: &str) -> Result<String, String> {
    if text.chars().count() > PLOT_TITLE_CHARS_MAX {
        return Err(format!("at most {PLOT_TITLE_CHARS_MAX} characters"));
    }
    Ok(text.to_string())
}

fn parse_room_prefix(text: &str) -> Result<String, String> {
    let allowed = |byte: u8| byte.is_ascii_alphanumeric() || b"_.:-".contains(&byte);
    if text.len() > 100 || !text.bytes().all(allowed) {
        return Err("room prefix must be at most 100 of [A-Za-z0-9_.:-]".into());
    }
    Ok(text.to_string())
}

/// Number of CPUs this process may run on (its affinity mask), at least 1.
pub fn allowed_cpus() -> usize {
    core_affinity::get_core_ids().map_or(1, |ids| ids.len().max(1))
}

/// A flag combination that clap cannot check by itself.
#[derive(Debug, thiserror::Error)]
pub enum FlagError {
    /// `--pub-conns` outside 1..=rooms.
    #[error("--pub-conns {0} must be between 1 and --rooms ({1})")]
    PubConns(u64, u64),
    /// `--pub-pipeline` above 1 where the publisher does not speak plain HTTP/1.1.
    #[error("--pub-pipeline above 1 needs a plain http:// --pub-url with --proto h1")]
    PubPipeline,
    /// `--duration 0`.
    #[error("--duration must be longer than zero")]
    ZeroDuration,
    /// `--plot` with `--idle`: nothing is published, so there is no latency to plot.
    #[error("--plot needs a publishing run; --idle has no latency to plot")]
    PlotIdle,
    /// `--proto ws` given to `ringload http`.
    #[error("--proto ws is for `ringload fanout` (subscribers over WebSocket); `ringload http` speaks h1, h2 or h3")]
    WsHttp,
    /// `--proto ws` with an https:// `--sub-url`.
    #[error("--proto ws needs a plain http:// --sub-url (WebSocket over TLS is not supported)")]
    WsTls,
    /// `--publish-over ws` without `--proto ws`.
    #[error("--publish-over ws needs --proto ws (it publishes on the subscribers' WebSocket connections)")]
    PublishOverWs,
    /// `--publish-over http` (or no `--publish-over`) without `--pub-url`.
    #[error("--pub-url is needed to publish over http (or give --idle, or --publish-over ws with --proto ws)")]
    NoPubUrl,
}

impl HttpArgs {
    /// The run configuration.
    pub fn config(&self) -> Result<HttpConfig, FlagError> {
        if self.duration.is_zero() {
            return Err(FlagError::ZeroDuration);
        }
        if self.transport.proto == Proto::Ws {
            return Err(FlagError::WsHttp);
        }
        let connections = self.connections as usize;
        Ok(HttpConfig {
            url: format!(
                "{}://{}{}",
                if self.url.tls { "https" } else { "http" },
                self.url.host_header,
                self.url.path
            ),
            target: self.url.clone(),
            method: self.method.clone(),
            headers: self.headers.clone(),
            body: self.body.clone().unwrap_or_default().into_bytes(),
            connections,
            threads: self
                .threads
                .map_or_else(allowed_cpus, |t| t as usize)
                .min(connections),
            duration: self.duration,
            rate: self.rate,
            timeout: self.timeout,
            transport: self.transport.config(),
        })
    }
}

impl FanoutArgs {
    /// The run configuration.
    pub fn config(&self) -> Result<FanoutConfig, FlagError> {
        let pub_conns = self
            .pub_conns
            .unwrap_or_else(|| self.rooms.min(PUB_CONNS_DEFAULT_MAX as u64));
        if pub_conns > self.rooms {
            return Err(FlagError::PubConns(pub_conns, self.rooms));
        }
        let transport = self.transport.config();
        let publish_over = self.publish_over.unwrap_or_default();
        if transport.proto == Proto::Ws && self.sub_url.iter().any(|url| url.tls) {
            return Err(FlagError::WsTls);
        }
        if publish_over == PublishOver::Ws && transport.proto != Proto::Ws {
            return Err(FlagError::PublishOverWs);
        }
        if publish_over == PublishOver::Http && self.pub_url.is_none() && !self.idle {
            return Err(FlagError::NoPubUrl);
        }
        let pipelines = |url: &UrlTemplate| transport.for_http().uses_mio(url.tls);
        if self.pub_pipeline > 1 && !self.pub_url.as_ref().is_none_or(pipelines) {
            return Err(FlagError::PubPipeline);
        }
        if self.duration.is_zero() && !self.idle {
            return Err(FlagError::ZeroDuration);
        }
        if self.idle && self.output.plot.is_some() {
            return Err(FlagError::PlotIdle);
        }
        Ok(FanoutConfig {
            sub_url: self.sub_url[0].clone(),
            sub_url_more: self.sub_url[1..].to_vec(),
            pub_url: self.pub_url.clone(),
            pub_body: self.pub_body.clone(),
            headers: self.headers.clone(),
            subscribers: self.subscribers as usize,
            rooms: self.rooms as usize,
            room_prefix: self.room_prefix.clone(),
            rate: self.rate,
            duration: self.duration,
            pub_conns: pub_conns as usize,
            pub_pipeline: self.pub_pipeline as usize,
            grace: self.grace,
            size: self.size as usize,
            max_p99: self.max_p99,
            idle: self.idle,
            hold: self.hold,
            src_ips: self.src_ips,
            threads: self.threads.map_or_else(allowed_cpus, |t| t as usize),
            connect_timeout: self.connect_timeout,
            transport,
            publish_over,
        })
    }
}
