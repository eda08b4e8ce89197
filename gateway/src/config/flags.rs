//! The `ringcast` command line (clap): every flag with its help text and default; the
//! file and the checks are config/mod.rs's.

use super::*;

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
    /// New streams per second one HTTP/2 or HTTP/3 connection may open sustained, counting
    /// subscriptions, WebSockets and streams reset before their answer ("rapid reset");
    /// burst: twice the connection's stream limit; past it 429 + Retry-After (1–1000)
    /// [default: 10].
    #[arg(long, value_name = "N")]
    pub new_streams_per_conn_per_sec: Option<u32>,
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
    /// Serve `GET /ws/echo`: a WebSocket that echoes every text and binary message, for the
    /// Autobahn conformance suite. It takes messages up to 16 MiB (ECHO_MESSAGE_BYTES_MAX,
    /// Autobahn 9.* sends that much); room WebSockets take 64 KiB [default: off].
    #[arg(long)]
    pub ws_echo: bool,
    /// Seconds a WebSocket may stay silent (no byte received) before the server pings it
    /// [default: 30].
    #[arg(long, value_name = "SECS")]
    pub ws_ping_interval: Option<f64>,
    /// Seconds after that ping, still silent, before the server closes the WebSocket with
    /// 1001 [default: 15].
    #[arg(long, value_name = "SECS")]
    pub ws_pong_timeout: Option<f64>,
    /// Origins allowed to open a WebSocket (`scheme://host[:port]`, compared without
    /// regard to case); comma-separated or repeated. A browser request from another
    /// origin gets 403; requests without `Origin` (not browsers) pass [default: any].
    #[arg(long, value_name = "ORIGINS", value_delimiter = ',')]
    pub ws_allowed_origins: Vec<String>,
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
