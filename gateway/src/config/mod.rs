//! Configuration: command-line flags (clap) over an optional TOML file (`--config`), over
//! built-in defaults. Flags win over the file; the file wins over defaults.

pub mod check;
mod flags;
mod settings;
pub mod tls;

pub use flags::{Command, Flags};
pub use settings::{FixedConfig, LiveSettings, Transports, WsSettings};

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
/// Default of `--new-streams-per-conn-per-sec`: well above a page switching rooms, well
/// below a reset loop (the WebSocket subscribe pace's figure, `WS_SUBSCRIBES_PER_SEC`).
pub const NEW_STREAMS_PER_CONN_PER_SEC_DEFAULT: u32 = 10;
/// Largest `--new-streams-per-conn-per-sec`: the pace's tick is then 1 ms.
pub const NEW_STREAMS_PER_CONN_PER_SEC_LIMIT: u32 = 1000;

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
    new_streams_per_conn_per_sec: Option<u32>,
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
    ws_echo: Option<bool>,
    ws_ping_interval: Option<f64>,
    ws_pong_timeout: Option<f64>,
    ws_allowed_origins: Option<Vec<String>>,
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
        let new_streams_per_conn_per_sec = in_range(
            "new-streams-per-conn-per-sec",
            flags
                .new_streams_per_conn_per_sec
                .or(file.new_streams_per_conn_per_sec)
                .unwrap_or(NEW_STREAMS_PER_CONN_PER_SEC_DEFAULT) as usize,
            1,
            NEW_STREAMS_PER_CONN_PER_SEC_LIMIT as usize,
        )? as u32;
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
        let origins = if flags.ws_allowed_origins.is_empty() {
            file.ws_allowed_origins.clone().unwrap_or_default()
        } else {
            flags.ws_allowed_origins.clone()
        };
        let origins = match origins.is_empty() {
            true => crate::conn::ws::OriginPolicy::Any,
            false => crate::conn::ws::OriginPolicy::AllowList(origins),
        };
        let ws = WsSettings {
            origins,
            echo: flags.ws_echo || file.ws_echo.unwrap_or(false),
            ping_interval: seconds(
                "ws-ping-interval",
                flags
                    .ws_ping_interval
                    .or(file.ws_ping_interval)
                    .unwrap_or(crate::conn::ws::machine::PING_INTERVAL_DEFAULT.as_secs_f64()),
            )?,
            pong_timeout: seconds(
                "ws-pong-timeout",
                flags
                    .ws_pong_timeout
                    .or(file.ws_pong_timeout)
                    .unwrap_or(crate::conn::ws::machine::PONG_TIMEOUT_DEFAULT.as_secs_f64()),
            )?,
        };
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
                new_streams_per_conn_per_sec,
                latency_metrics,
                auth,
                jwt,
                cluster,
                idempotency_keys_max,
                demo,
                share_port,
                ws,
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
mod tests;
