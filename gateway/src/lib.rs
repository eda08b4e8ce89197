//! ringcast's IO layer: configuration, the per-shard io_uring event loops, HTTP/1.1
//! framing, the per-shard companion threads for TLS, HTTP/2 and HTTP/3, cross-shard mail
//! and metrics exposition, over the sans-IO `shard` core.

pub mod accept;
pub mod admission;
pub mod auth;
pub mod batch;
pub mod breaker_figures;
pub mod clock;
pub mod cluster;
pub mod companion;
pub mod config;
pub mod config_check;
pub mod conn_key;
pub mod doctor;
pub mod h2;
pub mod h3;
pub mod http1;
pub mod http1_conn;
pub mod idempotency;
pub mod jwt;
pub mod kernel;
pub mod mailbox;
pub mod memory;
pub mod metrics;
pub mod quic_streams;
pub mod reload;
pub mod route;
pub mod server;
pub mod tls;
pub mod tls_conn;
pub mod uring;
pub mod virtual_conn;
pub mod worker;
// The WebSocket connection machine (issue 16); moves under `conn/mod.rs` at merge.
#[path = "conn/ws/mod.rs"]
pub mod ws;
