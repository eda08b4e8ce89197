//! ringcast's IO layer: configuration, the per-shard io_uring event loops, HTTP/1.1
//! framing, cross-shard mail and metrics exposition, over the sans-IO `shard` core.

pub mod admission;
pub mod auth;
pub mod clock;
pub mod config;
pub mod http1;
pub mod mailbox;
pub mod metrics;
pub mod reload;
pub mod server;
pub mod uring;
pub mod worker;
