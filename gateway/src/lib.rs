//! ringcast's IO layer over the sans-IO `ringcast-core`: configuration, the per-CPU shards
//! (each an io_uring loop), the connection machines, HTTP, what requests mean, the
//! upstreams, the per-shard companion threads for HTTP/2 and HTTP/3, cross-shard mail and
//! metrics exposition. docs/ARCHITECTURE.md has the picture; dependencies run one way:
//!
//! ```text
//! runtime -> shard -> {app, upstream, companion::spawn, conn, http, uring, mesh, metrics}
//! app -> {http, mesh, upstream}      conn -> http      companion -> {mesh, http}
//! ```

pub mod app;
/// The sans-IO connection machines and HTTP semantics live in `ringcast-proto`.
pub use ringcast_proto::{conn, http};
pub mod companion;
pub mod config;
pub mod mesh;
pub mod metrics;
pub mod runtime;
pub mod shard;
pub mod upstream;
pub mod uring;
