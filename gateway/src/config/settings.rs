//! The checked settings, in two types: what a SIGHUP reload may change (`LiveSettings`)
//! and what takes a restart (`FixedConfig`), plus the companion listeners (`Transports`).

use super::*;

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
    /// New streams one HTTP/2 or HTTP/3 connection may open per second, sustained (its
    /// stream pace, companion/bridge.rs).
    pub new_streams_per_conn_per_sec: u32,
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
    /// WebSocket settings (`--ws-*`).
    pub ws: WsSettings,
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
            new_streams_per_conn_per_sec,
            latency_metrics,
            auth,
            jwt,
            config_path: _,
            transports: _,
            cluster,
            idempotency_keys_max,
            demo: _,
            share_port: _,
            ws,
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
            *new_streams_per_conn_per_sec != other.new_streams_per_conn_per_sec,
            "new-streams-per-conn-per-sec",
        );
        check(
            *cluster != other.cluster,
            "cluster-redis, node-id, cluster-timeout",
        );
        check(
            *idempotency_keys_max != other.idempotency_keys_max,
            "idempotency-keys-max",
        );
        check(
            *ws != other.ws,
            "ws-echo, ws-ping-interval, ws-pong-timeout, ws-allowed-origins",
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

/// The WebSocket settings (docs/PROTOCOL.md), read once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsSettings {
    /// Which `Origin`s may open a WebSocket (`--ws-allowed-origins`).
    pub origins: crate::conn::ws::OriginPolicy,
    /// Whether `GET /ws/echo` is served (`--ws-echo`).
    pub echo: bool,
    /// Silence before the server pings (`--ws-ping-interval`).
    pub ping_interval: Duration,
    /// Silence after the ping before closing with 1001 (`--ws-pong-timeout`).
    pub pong_timeout: Duration,
}

impl Default for WsSettings {
    fn default() -> Self {
        Self {
            origins: crate::conn::ws::OriginPolicy::Any,
            echo: false,
            ping_interval: crate::conn::ws::machine::PING_INTERVAL_DEFAULT,
            pong_timeout: crate::conn::ws::machine::PONG_TIMEOUT_DEFAULT,
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
