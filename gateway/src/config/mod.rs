//! Configuration: command-line flags (clap) over an optional TOML file (`--config`), over
//! built-in defaults. Flags win over the file; the file wins over defaults.

pub mod check;
pub mod tls;

use clap::Parser;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// Default listen address: loopback only, so a fresh run exposes nothing.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:8080";
/// Default largest message body, in bytes.
pub const MAX_MESSAGE_BYTES_DEFAULT: usize = 64 * 1024;
/// Default largest request head (request line + headers), in bytes.
pub const MAX_HEADER_BYTES_DEFAULT: usize = 16 * 1024;
/// Largest accepted `--max-message-bytes`.
pub const MAX_MESSAGE_BYTES_LIMIT: usize = 16 << 20;
/// Default bound on a shard's pending write bytes: far above what a healthy shard holds
/// (1000 subscribers × a few KiB in flight), low enough that a shard stuck behind slow
/// readers refuses new work instead of growing without bound.
pub const MAX_PENDING_WRITE_BYTES_DEFAULT: usize = 1 << 30;
/// Default `--header-timeout` and `--body-timeout`, in seconds.
pub const REQUEST_TIMEOUT_SECONDS_DEFAULT: f64 = 10.0;
/// Default `--max-streams-per-conn`: HTTP/2's recommended minimum concurrency is 100
/// (RFC 9113 §6.5.2); one browser tab rarely holds more than a few SSE streams.
pub const MAX_STREAMS_PER_CONN_DEFAULT: usize = 100;
/// Largest accepted `--max-streams-per-conn`.
pub const MAX_STREAMS_PER_CONN_LIMIT: usize = 10_000;

/// Flags of the `ringcast` binary. Every flag but `--config` can also be set in the file.
#[derive(Debug, Parser, Default, Clone)]
#[command(
    name = "ringcast",
    version,
    about = "Thread-per-core io_uring SSE fan-out gateway",
    // `--heartbeat -1` must reach the range check (which names the flag) instead of clap
    // taking `-1` for an unknown short flag.
    allow_negative_numbers = true,
    disable_help_subcommand = true
)]
pub struct Flags {
    /// TOML config file; flags given on the command line win over it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Check a TOML config file (as `--config` reads it, merged with the other flags) and
    /// exit: prints `ok` (exit 0) or each error with its line (exit 2). Starts nothing.
    #[arg(long, value_name = "FILE")]
    pub check_config: Option<PathBuf>,
    /// Address to listen on for HTTP/1.1 [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Shard threads, one per CPU [default: every CPU this process may run on].
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
    /// Seconds between heartbeat comments on an SSE stream [default: 15].
    #[arg(long, value_name = "SECS")]
    pub heartbeat: Option<f64>,
    /// Largest message body in bytes; larger gets 413 [default: 65536].
    #[arg(long, value_name = "BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Largest request head in bytes; larger gets 431 [default: 16384].
    #[arg(long, value_name = "BYTES")]
    pub max_header_bytes: Option<usize>,
    /// Seconds a client has to send a complete request head; later gets 408 [default: 10].
    #[arg(long, value_name = "SECS")]
    pub header_timeout: Option<f64>,
    /// Seconds a client has to send a request's declared body once its head arrived; later
    /// gets 408 [default: 10].
    #[arg(long, value_name = "SECS")]
    pub body_timeout: Option<f64>,
    /// Seconds an idle keep-alive connection is kept between requests [default: 60].
    #[arg(long, value_name = "SECS")]
    pub idle_timeout: Option<f64>,
    /// Messages kept per room for Last-Event-ID resume [default: 256].
    #[arg(long, value_name = "N")]
    pub history: Option<usize>,
    /// Bytes kept per room for resume [default: 4194304].
    #[arg(long, value_name = "BYTES")]
    pub history_bytes: Option<usize>,
    /// Rooms per shard [default: 100000].
    #[arg(long, value_name = "N")]
    pub max_rooms: Option<usize>,
    /// Seconds a room with no subscriber and no publish is kept before it is freed with its
    /// history [default: 3600].
    #[arg(long, value_name = "SECS")]
    pub room_idle_timeout: Option<f64>,
    /// Connections per process, split evenly over shards [default: 1048576].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Milliseconds a subscriber may wait under load so later events share its write
    /// [default: 20].
    #[arg(long, value_name = "MS")]
    pub coalesce_delay_ms: Option<u64>,
    /// Queued subscribers per shard from which the coalescing delay applies [default: 2048].
    #[arg(long, value_name = "N")]
    pub coalesce_queue_min: Option<usize>,
    /// Writes handed to the ring per loop turn before reading new events [default: 64].
    #[arg(long, value_name = "N")]
    pub write_budget: Option<usize>,
    /// Seconds a stopping gateway gives subscribers to receive what was accepted before
    /// the signal [default: 10].
    #[arg(long, value_name = "SECS")]
    pub drain_timeout: Option<f64>,
    /// Log filter (tracing EnvFilter syntax) [default: info].
    #[arg(long, value_name = "FILTER")]
    pub log: Option<String>,
    /// Connections per client IP address, over the whole process and every transport
    /// (exact: counted in one table all shards share); 0 means no limit [default: 0].
    #[arg(long, value_name = "N")]
    pub max_connections_per_ip: Option<usize>,
    /// New connections per client IP address (IPv6: per /64) per second, over the whole
    /// process and every transport: a token bucket holding up to N; past it 503 + Retry-After
    /// (HTTP/1.1) or the connection is dropped (TLS, h2c, QUIC); 0 means no limit [default: 0].
    #[arg(long, value_name = "N")]
    pub max_new_connections_per_ip_per_sec: Option<u32>,
    /// Subscriptions (SSE streams) one HTTP/2 or HTTP/3 connection may hold; past it 429
    /// [default: 100].
    #[arg(long, value_name = "N")]
    pub max_streams_per_conn: Option<usize>,
    /// Bytes handed to socket writes and not yet written, per shard; past it new
    /// subscribes and publishes get 503 [default: 1073741824].
    #[arg(long, value_name = "BYTES")]
    pub max_pending_write_bytes: Option<usize>,
    /// Do not record the publish→write latency histogram (to measure what it costs).
    #[arg(long)]
    pub no_latency_metrics: bool,
    /// Subscribe authorization callback (http:// only): each `GET /rooms/{room}/events` is
    /// POSTed there first as JSON (room, client, headers); 2xx admits, 401/403 refuse
    /// [default: none, subscribes are not authorized].
    #[arg(long, value_name = "URL")]
    pub auth_url: Option<String>,
    /// Seconds an authorization call may take, queueing included [default: 2].
    #[arg(long, value_name = "SECS")]
    pub auth_timeout: Option<f64>,
    /// Admit subscribers when authorization is unavailable (breaker open, call failed,
    /// queue full) instead of answering 503.
    #[arg(long)]
    pub auth_fail_open: bool,
    /// Seconds of the auth circuit breaker's rolling window [default: 5].
    #[arg(long, value_name = "SECS")]
    pub auth_breaker_window: Option<f64>,
    /// Calls in the window before the auth breaker judges failure rates [default: 20].
    #[arg(long, value_name = "N")]
    pub auth_breaker_calls_min: Option<usize>,
    /// Seconds the auth breaker stays open before probing the upstream [default: 5].
    #[arg(long, value_name = "SECS")]
    pub auth_breaker_open: Option<f64>,
    /// Publishes need a JWT (`Authorization: Bearer`) checked with this key, whose `rooms`
    /// (or `room`) claim allows the room: `hs256:SECRET`, `hs256-file:PATH`, `rs256:PATH`,
    /// `es256:PATH`, or a public key PEM PATH [default: none, publishing is open].
    #[arg(long, value_name = "KEY")]
    pub publish_key: Option<String>,
    /// Key checking the JWTs of subscribers to private rooms (same forms as --publish-key)
    /// [default: none].
    #[arg(long, value_name = "KEY")]
    pub subscribe_key: Option<String>,
    /// Rooms whose subscribers need a token (`Authorization: Bearer` or `?token=`) listing
    /// them: names, `PREFIX*` or `*`; comma-separated or repeated [default: none].
    #[arg(long, value_name = "PATTERNS", value_delimiter = ',')]
    pub private_rooms: Vec<String>,
    /// TLS certificate chain (PEM), for `--tls-listen` and `--h3-listen`.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM: PKCS#8, PKCS#1 or SEC1), for `--tls-listen` and `--h3-listen`.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Address for TLS over TCP, accepted on the shards' rings: HTTP/1.1 served there,
    /// HTTP/2 (ALPN h2) by the companion thread [default: off].
    #[arg(long, value_name = "ADDR")]
    pub tls_listen: Option<SocketAddr>,
    /// Address for cleartext HTTP/2 with prior knowledge (h2c) [default: off].
    #[arg(long, value_name = "ADDR")]
    pub h2c_listen: Option<SocketAddr>,
    /// UDP address for HTTP/3 over QUIC; needs `--tls-cert` and `--tls-key` [default: off].
    #[arg(long, value_name = "ADDR")]
    pub h3_listen: Option<SocketAddr>,
    /// Cluster mode: share rooms with other nodes through Redis Streams at this
    /// `redis://host:port[/db]` URL (docs/CLUSTER.md) [default: off, single node].
    #[arg(long, value_name = "URL")]
    pub cluster_redis: Option<String>,
    /// This node's name in cluster mode (logs, and a field of each entry it appends)
    /// [default: host name and listen port].
    #[arg(long, value_name = "NAME")]
    pub node_id: Option<String>,
    /// Seconds a Redis call may take in cluster mode, queueing included; later gets 503
    /// [default: 1].
    #[arg(long, value_name = "SECS")]
    pub cluster_timeout: Option<f64>,
    /// Seconds a publish's idempotency key (`Idempotency-Key` header, `idempotency_key` in
    /// NDJSON) is remembered: a retry with the same key in the same room within it gets
    /// the first publish's id, not a second message [default: 120].
    #[arg(long, value_name = "SECS")]
    pub idempotency_window: Option<f64>,
    /// Idempotency keys one shard holds at most (single-node mode); at the cap the oldest
    /// is forgotten before its window ends [default: 65536].
    #[arg(long, value_name = "N")]
    pub idempotency_keys_max: Option<usize>,
    /// Do not serve the demo page (`GET /demo` answers 404).
    #[arg(long)]
    pub no_demo: bool,
    /// Join listening addresses another process already holds (SO_REUSEPORT), for a
    /// handover where the new gateway starts before the old one drains; without it a busy
    /// address is a startup error.
    #[arg(long)]
    pub share_port: bool,
    /// What to do instead of serving [default: serve].
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands of `ringcast`; without one it serves.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum Command {
    /// Print what this machine offers ringcast (kernel, io_uring and each operation it
    /// uses, ring setup flags, fd limits, sysctls, CPUs) and what ringcast will use; exit 0
    /// if ringcast can run here, 2 if not. Flags before `doctor` are taken into account.
    Doctor,
}

/// The same settings as read from a TOML file; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    listen: Option<SocketAddr>,
    shards: Option<usize>,
    heartbeat: Option<f64>,
    max_message_bytes: Option<usize>,
    max_header_bytes: Option<usize>,
    header_timeout: Option<f64>,
    body_timeout: Option<f64>,
    idle_timeout: Option<f64>,
    history: Option<usize>,
    history_bytes: Option<usize>,
    max_rooms: Option<usize>,
    room_idle_timeout: Option<f64>,
    max_connections: Option<usize>,
    coalesce_delay_ms: Option<u64>,
    coalesce_queue_min: Option<usize>,
    write_budget: Option<usize>,
    drain_timeout: Option<f64>,
    log: Option<String>,
    max_connections_per_ip: Option<usize>,
    max_new_connections_per_ip_per_sec: Option<u32>,
    max_streams_per_conn: Option<usize>,
    max_pending_write_bytes: Option<usize>,
    latency_metrics: Option<bool>,
    auth_url: Option<String>,
    auth_timeout: Option<f64>,
    auth_fail_open: Option<bool>,
    auth_breaker_window: Option<f64>,
    auth_breaker_calls_min: Option<usize>,
    auth_breaker_open: Option<f64>,
    publish_key: Option<String>,
    subscribe_key: Option<String>,
    private_rooms: Option<Vec<String>>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_listen: Option<SocketAddr>,
    h2c_listen: Option<SocketAddr>,
    h3_listen: Option<SocketAddr>,
    cluster_redis: Option<String>,
    node_id: Option<String>,
    cluster_timeout: Option<f64>,
    idempotency_window: Option<f64>,
    idempotency_keys_max: Option<usize>,
    demo: Option<bool>,
    share_port: Option<bool>,
}

/// Why the configuration could not be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML or holds an unknown key.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What toml said, with the line.
        message: String,
    },
    /// A value is out of its range.
    #[error("--{flag}: {message}")]
    Invalid {
        /// The flag (or file key) at fault.
        flag: &'static str,
        /// Why.
        message: String,
    },
}

/// The settings at start: flags over the file over defaults, checked. What a SIGHUP
/// reload may change ([`LiveSettings`]) is a type of its own, apart from what needs a
/// restart ([`FixedConfig`]), so a shard cannot read a stale copy of a live setting or a
/// live copy of a fixed one.
#[derive(Debug, Clone)]
pub struct Config {
    /// Read once at start.
    pub fixed: FixedConfig,
    /// Their values at start; the values in force are `runtime::reload::LiveConfig`'s.
    pub live: LiveSettings,
}

/// The settings read once at start: changing one in the file takes a restart (a reload
/// names it and keeps the old value).
#[derive(Debug, Clone)]
pub struct FixedConfig {
    /// HTTP/1.1 listen address.
    pub listen: SocketAddr,
    /// Shard threads.
    pub shards: usize,
    /// Largest message body.
    pub max_message_bytes: usize,
    /// Largest request head.
    pub max_header_bytes: usize,
    /// Messages kept per room.
    pub history: usize,
    /// Bytes kept per room.
    pub history_bytes: usize,
    /// Rooms per shard.
    pub max_rooms: usize,
    /// Log filter.
    pub log: String,
    /// Subscriptions one HTTP/2 or HTTP/3 connection may hold.
    pub max_streams_per_conn: usize,
    /// Whether the publish→write latency histogram is recorded.
    pub latency_metrics: bool,
    /// Subscribe authorization, when `--auth-url` is set.
    pub auth: Option<crate::upstream::auth::AuthConfig>,
    /// JWT checks of publishes and private-room subscribes, when a key is set.
    pub jwt: Option<std::sync::Arc<crate::upstream::jwt::JwtConfig>>,
    /// Where the file settings came from, for reloads.
    pub config_path: Option<PathBuf>,
    /// TLS and the companion transports (HTTP/2, HTTP/3), when any is on.
    pub transports: Transports,
    /// Cluster mode, when `--cluster-redis` is set.
    pub cluster: Option<crate::upstream::cluster::ClusterConfig>,
    /// Idempotency keys one shard holds at most.
    pub idempotency_keys_max: usize,
    /// Whether `GET /demo` serves the demo page.
    pub demo: bool,
    /// Whether the listeners may join addresses another process already listens on.
    pub share_port: bool,
    /// `max-connections` at start: the most a reload may raise it to (each shard sized its
    /// timer wheel for it).
    pub max_connections_cap: usize,
}

/// The settings a SIGHUP reload changes in running shards (docs/OPERATIONS.md, "Stopping and reloading").
#[derive(Debug, Clone, PartialEq)]
pub struct LiveSettings {
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// Time to send a full request head.
    pub header_timeout: Duration,
    /// Time to send a declared body once the head arrived.
    pub body_timeout: Duration,
    /// Keep-alive idle time between requests.
    pub idle_timeout: Duration,
    /// A room with no subscriber and no publish for this long is freed.
    pub room_idle_timeout: Duration,
    /// Connections per process.
    pub max_connections: usize,
    /// Coalescing delay under load.
    pub coalesce_delay: Duration,
    /// Queue length from which the coalescing delay applies.
    pub coalesce_queue_min: usize,
    /// Writes per loop turn.
    pub write_budget: usize,
    /// Time subscribers get on stop.
    pub drain_timeout: Duration,
    /// Connections per client IP over the process; 0 = no limit.
    pub max_connections_per_ip: usize,
    /// New connections per client IP per second (token bucket); 0 = no limit.
    pub max_new_connections_per_ip_per_sec: u32,
    /// Pending (submitted, not yet written) write bytes per shard.
    pub max_pending_write_bytes: usize,
    /// How long a publish's idempotency key is remembered (idempotency.rs).
    pub idempotency_window: Duration,
}

impl LiveSettings {
    /// The settings that differ from `other`, by their flag name. Every field is named
    /// here (the destructuring fails to compile when one is added and not named).
    pub fn changed_from(&self, other: &LiveSettings) -> Vec<&'static str> {
        let LiveSettings {
            heartbeat,
            header_timeout,
            body_timeout,
            idle_timeout,
            room_idle_timeout,
            max_connections,
            coalesce_delay,
            coalesce_queue_min,
            write_budget,
            drain_timeout,
            max_connections_per_ip,
            max_new_connections_per_ip_per_sec,
            max_pending_write_bytes,
            idempotency_window,
        } = self;
        let mut changed = Vec::new();
        let mut check = |differs: bool, name: &'static str| {
            if differs {
                changed.push(name);
            }
        };
        check(*heartbeat != other.heartbeat, "heartbeat");
        check(*header_timeout != other.header_timeout, "header-timeout");
        check(*body_timeout != other.body_timeout, "body-timeout");
        check(*idle_timeout != other.idle_timeout, "idle-timeout");
        check(
            *room_idle_timeout != other.room_idle_timeout,
            "room-idle-timeout",
        );
        check(*coalesce_delay != other.coalesce_delay, "coalesce-delay-ms");
        check(
            *coalesce_queue_min != other.coalesce_queue_min,
            "coalesce-queue-min",
        );
        check(*write_budget != other.write_budget, "write-budget");
        check(
            *max_connections_per_ip != other.max_connections_per_ip,
            "max-connections-per-ip",
        );
        check(
            *max_new_connections_per_ip_per_sec != other.max_new_connections_per_ip_per_sec,
            "max-new-connections-per-ip-per-sec",
        );
        check(
            *max_pending_write_bytes != other.max_pending_write_bytes,
            "max-pending-write-bytes",
        );
        check(*drain_timeout != other.drain_timeout, "drain-timeout");
        check(
            *idempotency_window != other.idempotency_window,
            "idempotency-window",
        );
        check(*max_connections != other.max_connections, "max-connections");
        changed
    }

    /// Puts the fan-out's live settings (heartbeat, coalescing, room idle timeout) in
    /// force in a running shard's fan-out.
    pub fn apply_to(&self, fanout: &mut ringcast_core::fanout::Fanout) {
        fanout.set_timings(self.heartbeat, self.coalesce_delay, self.coalesce_queue_min);
        fanout.set_room_idle_timeout(self.room_idle_timeout);
    }
}

impl FixedConfig {
    /// The settings that differ from `other` and would need a restart, by their flag
    /// names. Every field is named here (as in [`LiveSettings::changed_from`]); where the
    /// file settings came from and the connections cap (derived) are no settings.
    pub fn changed_from(&self, other: &FixedConfig) -> Vec<&'static str> {
        let FixedConfig {
            listen,
            shards,
            max_message_bytes,
            max_header_bytes,
            history,
            history_bytes,
            max_rooms,
            log,
            max_streams_per_conn,
            latency_metrics,
            auth,
            jwt,
            config_path: _,
            transports: _,
            cluster,
            idempotency_keys_max,
            demo: _,
            share_port: _,
            max_connections_cap: _,
        } = self;
        let mut changed = Vec::new();
        let mut check = |differs: bool, name: &'static str| {
            if differs {
                changed.push(name);
            }
        };
        check(*listen != other.listen, "listen");
        check(*shards != other.shards, "shards");
        check(
            *max_message_bytes != other.max_message_bytes,
            "max-message-bytes",
        );
        check(
            *max_header_bytes != other.max_header_bytes,
            "max-header-bytes",
        );
        check(*history != other.history, "history");
        check(*history_bytes != other.history_bytes, "history-bytes");
        check(*max_rooms != other.max_rooms, "max-rooms");
        check(*log != other.log, "log");
        check(*latency_metrics != other.latency_metrics, "latency-metrics");
        check(*auth != other.auth, "auth-*");
        check(
            *jwt != other.jwt,
            "publish-key, subscribe-key, private-rooms",
        );
        check(
            *max_streams_per_conn != other.max_streams_per_conn,
            "max-streams-per-conn",
        );
        check(
            *cluster != other.cluster,
            "cluster-redis, node-id, cluster-timeout",
        );
        check(
            *idempotency_keys_max != other.idempotency_keys_max,
            "idempotency-keys-max",
        );
        changed
    }

    /// One shard's fan-out settings at start: bounds from the fixed config, timings from
    /// the live settings in force (later reloads go through [`LiveSettings::apply_to`]).
    /// `epoch_anchor_unix_micros`: Unix time now, anchoring room incarnations.
    pub fn fanout_config(
        &self,
        live: &LiveSettings,
        epoch_anchor_unix_micros: u64,
    ) -> ringcast_core::fanout::FanoutConfig {
        ringcast_core::fanout::FanoutConfig {
            history_messages_max: self.history,
            history_bytes_max: self.history_bytes,
            rooms_max: self.max_rooms,
            heartbeat: live.heartbeat,
            coalesce_delay: live.coalesce_delay,
            coalesce_queue_min: live.coalesce_queue_min,
            stream_ids: self.cluster.is_some(),
            epoch_anchor_unix_micros,
            room_idle_timeout: live.room_idle_timeout,
            ..ringcast_core::fanout::FanoutConfig::default()
        }
    }
}

/// The listeners served by each shard's companion thread (docs/TRANSPORTS.md).
#[derive(Debug, Clone, Default)]
pub struct Transports {
    /// Certificate chain and key files, checked at load time.
    pub tls: Option<crate::config::tls::TlsFiles>,
    /// TLS over TCP (HTTP/2 or HTTP/1.1 by ALPN).
    pub tls_listen: Option<SocketAddr>,
    /// Cleartext HTTP/2 with prior knowledge.
    pub h2c_listen: Option<SocketAddr>,
    /// HTTP/3 over QUIC (UDP).
    pub h3_listen: Option<SocketAddr>,
}

impl Transports {
    /// Whether any companion transport is on.
    pub fn any(&self) -> bool {
        self.tls_listen.is_some() || self.h2c_listen.is_some() || self.h3_listen.is_some()
    }
}

/// The `--tls-*`, `--h2c-listen` and `--h3-listen` settings; the certificate and key are
/// loaded here so that a bad file stops the start with a message naming the flag.
fn transports(flags: &Flags, file: &FileConfig) -> Result<Transports, ConfigError> {
    let cert = flags.tls_cert.clone().or(file.tls_cert.clone());
    let key = flags.tls_key.clone().or(file.tls_key.clone());
    let tls_listen = flags.tls_listen.or(file.tls_listen);
    let h3_listen = flags.h3_listen.or(file.h3_listen);
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => {
            let files = crate::config::tls::TlsFiles { cert, key };
            files.load().map_err(|err| ConfigError::Invalid {
                flag: err.flag(),
                message: err.to_string(),
            })?;
            Some(files)
        }
        (None, None) => None,
        (Some(_), None) => {
            return Err(ConfigError::Invalid {
                flag: "tls-key",
                message: "--tls-cert needs --tls-key".into(),
            })
        }
        (None, Some(_)) => {
            return Err(ConfigError::Invalid {
                flag: "tls-cert",
                message: "--tls-key needs --tls-cert".into(),
            })
        }
    };
    if tls.is_none() && (tls_listen.is_some() || h3_listen.is_some()) {
        let needs = if tls_listen.is_some() {
            "--tls-listen"
        } else {
            "--h3-listen"
        };
        return Err(ConfigError::Invalid {
            flag: "tls-cert",
            message: format!("{needs} needs --tls-cert and --tls-key"),
        });
    }
    Ok(Transports {
        tls,
        tls_listen,
        h2c_listen: flags.h2c_listen.or(file.h2c_listen),
        h3_listen,
    })
}

fn seconds(flag: &'static str, value: f64) -> Result<Duration, ConfigError> {
    if !(value.is_finite() && value > 0.0 && value <= 86_400.0) {
        return Err(ConfigError::Invalid {
            flag,
            message: format!("{value} is not between 0 and 86400 seconds"),
        });
    }
    Ok(Duration::from_secs_f64(value))
}

fn in_range(
    flag: &'static str,
    value: usize,
    min: usize,
    max: usize,
) -> Result<usize, ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::Invalid {
            flag,
            message: format!("{value} is not between {min} and {max}"),
        });
    }
    Ok(value)
}

/// The authorization settings (`--auth-*`), `None` without `--auth-url`. The breaker keeps
/// `BreakerConfig`'s rates and probes; a call slower than the smaller of its 1 s slow-call
/// duration and the timeout counts as slow.
fn auth_config(
    flags: &Flags,
    file: &FileConfig,
) -> Result<Option<crate::upstream::auth::AuthConfig>, ConfigError> {
    use ringcast_core::breaker::{BreakerConfig, CALLS_MIN_DEFAULT, OPEN_DURATION_DEFAULT};
    let Some(url) = flags.auth_url.as_ref().or(file.auth_url.as_ref()) else {
        return Ok(None);
    };
    let url =
        crate::upstream::auth::AuthUrl::parse(url).map_err(|message| ConfigError::Invalid {
            flag: "auth-url",
            message,
        })?;
    let timeout = seconds(
        "auth-timeout",
        flags
            .auth_timeout
            .or(file.auth_timeout)
            .unwrap_or(crate::upstream::auth::TIMEOUT_DEFAULT.as_secs_f64()),
    )?;
    let breaker = BreakerConfig {
        window: seconds(
            "auth-breaker-window",
            flags
                .auth_breaker_window
                .or(file.auth_breaker_window)
                .unwrap_or(crate::upstream::auth::BREAKER_WINDOW_DEFAULT.as_secs_f64()),
        )?,
        calls_min: in_range(
            "auth-breaker-calls-min",
            flags
                .auth_breaker_calls_min
                .or(file.auth_breaker_calls_min)
                .unwrap_or(CALLS_MIN_DEFAULT as usize),
            1,
            1_000_000,
        )? as u32,
        open_duration: seconds(
            "auth-breaker-open",
            flags
                .auth_breaker_open
                .or(file.auth_breaker_open)
                .unwrap_or(OPEN_DURATION_DEFAULT.as_secs_f64()),
        )?,
        slow_call_duration: BreakerConfig::default().slow_call_duration.min(timeout),
        ..BreakerConfig::default()
    };
    breaker.validate().map_err(|err| ConfigError::Invalid {
        flag: "auth-breaker-window",
        message: err.to_string(),
    })?;
    Ok(Some(crate::upstream::auth::AuthConfig {
        url,
        timeout,
        fail_open: flags.auth_fail_open || file.auth_fail_open.unwrap_or(false),
        breaker,
    }))
}

/// The cluster settings (`--cluster-redis`, `--node-id`, `--cluster-timeout`), `None`
/// without `--cluster-redis`.
fn cluster_config(
    flags: &Flags,
    file: &FileConfig,
    listen: SocketAddr,
    history: usize,
) -> Result<Option<crate::upstream::cluster::ClusterConfig>, ConfigError> {
    use crate::upstream::cluster;
    let Some(url) = flags.cluster_redis.as_ref().or(file.cluster_redis.as_ref()) else {
        return Ok(None);
    };
    if !(url.starts_with("redis://") || url.starts_with("unix://")) {
        return Err(ConfigError::Invalid {
            flag: "cluster-redis",
            message: format!("{url:?}: expected redis://host:port[/db]"),
        });
    }
    let timeout = seconds(
        "cluster-timeout",
        flags
            .cluster_timeout
            .or(file.cluster_timeout)
            .unwrap_or(cluster::TIMEOUT_DEFAULT.as_secs_f64()),
    )?;
    let node_id = match flags.node_id.clone().or(file.node_id.clone()) {
        Some(id) if !id.is_empty() && id.len() <= 128 => id,
        Some(_) => {
            return Err(ConfigError::Invalid {
                flag: "node-id",
                message: "must hold 1 to 128 bytes".into(),
            })
        }
        None => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "node".into());
            format!("{host}:{}", listen.port())
        }
    };
    Ok(Some(cluster::ClusterConfig {
        url: url.clone(),
        node_id,
        timeout,
        history,
        breaker: ringcast_core::breaker::BreakerConfig {
            window: cluster::BREAKER_WINDOW_DEFAULT,
            calls_min: cluster::BREAKER_CALLS_MIN_DEFAULT,
            open_duration: cluster::BREAKER_OPEN_DEFAULT,
            slow_call_duration: timeout,
            ..ringcast_core::breaker::BreakerConfig::default()
        },
    }))
}

/// Reads and parses a TOML config file.
pub fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|err| ConfigError::Parse {
        path: path.to_owned(),
        message: err.to_string(),
    })
}

impl Config {
    /// Merges flags over the file (if any) over defaults and checks every value.
    pub fn load(flags: Flags) -> Result<Self, ConfigError> {
        let file = match &flags.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        Self::merge(flags, file)
    }

    /// Merges flags over file settings over defaults.
    pub fn merge(flags: Flags, file: FileConfig) -> Result<Self, ConfigError> {
        let cpus = core_affinity::get_core_ids().map_or(1, |ids| ids.len().max(1));
        let listen = flags.listen.or(file.listen).unwrap_or_else(|| {
            LISTEN_DEFAULT
                .parse()
                .expect("the default listen address parses")
        });
        let shards = in_range(
            "shards",
            flags.shards.or(file.shards).unwrap_or(cpus),
            1,
            1024,
        )?;
        let max_message_bytes = in_range(
            "max-message-bytes",
            flags
                .max_message_bytes
                .or(file.max_message_bytes)
                .unwrap_or(MAX_MESSAGE_BYTES_DEFAULT),
            1,
            MAX_MESSAGE_BYTES_LIMIT,
        )?;
        let auth = auth_config(&flags, &file)?;
        let private_rooms = if flags.private_rooms.is_empty() {
            file.private_rooms.clone().unwrap_or_default()
        } else {
            flags.private_rooms.clone()
        };
        let jwt = crate::upstream::jwt::JwtConfig::new(
            flags.publish_key.as_deref().or(file.publish_key.as_deref()),
            flags
                .subscribe_key
                .as_deref()
                .or(file.subscribe_key.as_deref()),
            &private_rooms,
        )
        .map_err(|(flag, message)| ConfigError::Invalid { flag, message })?
        .map(std::sync::Arc::new);
        let transports = transports(&flags, &file)?;
        let history = in_range(
            "history",
            flags
                .history
                .or(file.history)
                .unwrap_or(ringcast_core::fanout::HISTORY_MESSAGES_DEFAULT),
            1,
            1 << 20,
        )?;
        let cluster = cluster_config(&flags, &file, listen, history)?;
        let heartbeat = seconds(
            "heartbeat",
            flags.heartbeat.or(file.heartbeat).unwrap_or(15.0),
        )?;
        let max_header_bytes = in_range(
            "max-header-bytes",
            flags
                .max_header_bytes
                .or(file.max_header_bytes)
                .unwrap_or(MAX_HEADER_BYTES_DEFAULT),
            256,
            1 << 20,
        )?;
        let header_timeout = seconds(
            "header-timeout",
            flags
                .header_timeout
                .or(file.header_timeout)
                .unwrap_or(REQUEST_TIMEOUT_SECONDS_DEFAULT),
        )?;
        let body_timeout = seconds(
            "body-timeout",
            flags
                .body_timeout
                .or(file.body_timeout)
                .unwrap_or(REQUEST_TIMEOUT_SECONDS_DEFAULT),
        )?;
        let idle_timeout = seconds(
            "idle-timeout",
            flags.idle_timeout.or(file.idle_timeout).unwrap_or(60.0),
        )?;
        let history_bytes = in_range(
            "history-bytes",
            flags
                .history_bytes
                .or(file.history_bytes)
                .unwrap_or(ringcast_core::fanout::HISTORY_BYTES_DEFAULT),
            1,
            1 << 30,
        )?;
        let max_rooms = in_range(
            "max-rooms",
            flags
                .max_rooms
                .or(file.max_rooms)
                .unwrap_or(ringcast_core::fanout::ROOMS_MAX_DEFAULT),
            1,
            1 << 24,
        )?;
        let room_idle_timeout = seconds(
            "room-idle-timeout",
            flags
                .room_idle_timeout
                .or(file.room_idle_timeout)
                .unwrap_or(ringcast_core::fanout::ROOM_IDLE_TIMEOUT_DEFAULT.as_secs_f64()),
        )?;
        let max_connections = in_range(
            "max-connections",
            flags
                .max_connections
                .or(file.max_connections)
                .unwrap_or(1 << 20),
            shards,
            1 << 24,
        )?;
        let coalesce_delay = Duration::from_millis(in_range(
            "coalesce-delay-ms",
            flags
                .coalesce_delay_ms
                .or(file.coalesce_delay_ms)
                .unwrap_or(20) as usize,
            0,
            1000,
        )? as u64);
        let coalesce_queue_min = flags
            .coalesce_queue_min
            .or(file.coalesce_queue_min)
            .unwrap_or(ringcast_core::fanout::COALESCE_QUEUE_MIN_DEFAULT);
        let write_budget = in_range(
            "write-budget",
            flags.write_budget.or(file.write_budget).unwrap_or(64),
            1,
            100_000,
        )?;
        let drain_timeout = seconds(
            "drain-timeout",
            flags.drain_timeout.or(file.drain_timeout).unwrap_or(10.0),
        )?;
        let log = flags.log.or(file.log).unwrap_or_else(|| "info".to_owned());
        let max_connections_per_ip = in_range(
            "max-connections-per-ip",
            flags
                .max_connections_per_ip
                .or(file.max_connections_per_ip)
                .unwrap_or(0),
            0,
            1 << 24,
        )?;
        let max_new_connections_per_ip_per_sec = in_range(
            "max-new-connections-per-ip-per-sec",
            flags
                .max_new_connections_per_ip_per_sec
                .or(file.max_new_connections_per_ip_per_sec)
                .unwrap_or(0) as usize,
            0,
            1_000_000,
        )? as u32;
        let max_streams_per_conn = in_range(
            "max-streams-per-conn",
            flags
                .max_streams_per_conn
                .or(file.max_streams_per_conn)
                .unwrap_or(MAX_STREAMS_PER_CONN_DEFAULT),
            1,
            MAX_STREAMS_PER_CONN_LIMIT,
        )?;
        let max_pending_write_bytes = in_range(
            "max-pending-write-bytes",
            flags
                .max_pending_write_bytes
                .or(file.max_pending_write_bytes)
                .unwrap_or(MAX_PENDING_WRITE_BYTES_DEFAULT),
            1,
            1 << 40,
        )?;
        let latency_metrics = !flags.no_latency_metrics && file.latency_metrics.unwrap_or(true);
        let idempotency_window = seconds(
            "idempotency-window",
            flags
                .idempotency_window
                .or(file.idempotency_window)
                .unwrap_or(crate::app::idempotency::WINDOW_DEFAULT.as_secs_f64()),
        )?;
        let idempotency_keys_max = in_range(
            "idempotency-keys-max",
            flags
                .idempotency_keys_max
                .or(file.idempotency_keys_max)
                .unwrap_or(crate::app::idempotency::KEYS_MAX_DEFAULT),
            1,
            1 << 24,
        )?;
        let demo = !flags.no_demo && file.demo.unwrap_or(true);
        let share_port = flags.share_port || file.share_port.unwrap_or(false);
        let config_path = flags.config;
        let max_connections_cap = max_connections;
        Ok(Self {
            fixed: FixedConfig {
                transports,
                listen,
                shards,
                max_message_bytes,
                max_header_bytes,
                history,
                history_bytes,
                max_rooms,
                log,
                max_streams_per_conn,
                latency_metrics,
                auth,
                jwt,
                cluster,
                idempotency_keys_max,
                demo,
                share_port,
                config_path,
                max_connections_cap,
            },
            live: LiveSettings {
                heartbeat,
                header_timeout,
                body_timeout,
                idle_timeout,
                room_idle_timeout,
                max_connections,
                coalesce_delay,
                coalesce_queue_min,
                write_budget,
                drain_timeout,
                max_connections_per_ip,
                max_new_connections_per_ip_per_sec,
                max_pending_write_bytes,
                idempotency_window,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file_over_defaults() {
        let file: FileConfig =
            toml::from_str("heartbeat = 3.0\nhistory = 9\nlisten = \"127.0.0.1:9\"").unwrap();
        let flags = Flags {
            heartbeat: Some(1.5),
            ..Flags::default()
        };
        let config = Config::merge(flags, file).unwrap();
        assert_eq!(config.live.heartbeat, Duration::from_millis(1500));
        assert_eq!(config.fixed.history, 9);
        assert_eq!(config.fixed.listen.port(), 9);
        assert_eq!(config.fixed.max_message_bytes, MAX_MESSAGE_BYTES_DEFAULT);
    }

    #[test]
    fn bad_values_name_their_flag() {
        let flags = Flags {
            heartbeat: Some(-1.0),
            ..Flags::default()
        };
        let err = Config::merge(flags, FileConfig::default())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("--heartbeat:"), "{err}");
        let err = toml::from_str::<FileConfig>("nope = 1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
    }

    /// Every live setting is named, by its file key, when a reload changes it; a fixed one
    /// never is (it is not in the type).
    #[test]
    fn every_live_setting_is_named_by_its_key_when_it_changes() {
        let keys = [
            ("heartbeat", "2.0"),
            ("header-timeout", "2.0"),
            ("body-timeout", "2.0"),
            ("idle-timeout", "2.0"),
            ("room-idle-timeout", "2.0"),
            ("max-connections", "1000"),
            ("coalesce-delay-ms", "1"),
            ("coalesce-queue-min", "1"),
            ("write-budget", "1"),
            ("drain-timeout", "2.0"),
            ("max-connections-per-ip", "1"),
            ("max-new-connections-per-ip-per-sec", "1"),
            ("max-pending-write-bytes", "1"),
            ("idempotency-window", "2.0"),
        ];
        let base = Config::merge(Flags::default(), FileConfig::default()).unwrap();
        let text: String = keys.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
        let fresh = Config::merge(Flags::default(), toml::from_str(&text).unwrap()).unwrap();
        let mut changed = fresh.live.changed_from(&base.live);
        let mut want: Vec<&str> = keys.iter().map(|(k, _)| *k).collect();
        changed.sort_unstable();
        want.sort_unstable();
        assert_eq!(changed, want);
        assert!(fresh.fixed.changed_from(&base.fixed).is_empty());
        let fixed =
            Config::merge(Flags::default(), toml::from_str("history = 9").unwrap()).unwrap();
        assert_eq!(fixed.fixed.changed_from(&base.fixed), ["history"]);
        assert!(fixed.live.changed_from(&base.live).is_empty());
    }

    /// The fan-out takes its bounds from the fixed config and its timings from the live
    /// settings given.
    #[test]
    fn the_fanout_config_joins_fixed_bounds_and_live_timings() {
        let file = "history = 9\nmax-rooms = 7\nheartbeat = 3.0\nroom-idle-timeout = 5.0";
        let config = Config::merge(Flags::default(), toml::from_str(file).unwrap()).unwrap();
        let mut live = config.live.clone();
        live.heartbeat = Duration::from_secs(4);
        let fanout = config.fixed.fanout_config(&live, 42);
        assert_eq!((fanout.history_messages_max, fanout.rooms_max), (9, 7));
        assert_eq!(fanout.heartbeat, Duration::from_secs(4));
        assert_eq!(fanout.room_idle_timeout, Duration::from_secs(5));
        assert_eq!(
            (fanout.epoch_anchor_unix_micros, fanout.stream_ids),
            (42, false)
        );
    }
}
