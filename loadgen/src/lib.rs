//! ringload: the load generator of ringcast.
//!
//! Two modes: `http` (wrk-like keep-alive load, optionally open loop with coordinated-
//! omission correction) and `fanout` (SSE subscribers over rooms plus a fixed-rate
//! publisher, with every delivery checked for loss, duplication, order and room, and
//! latency measured from both the publish stamp and the schedule).
//!
//! Layers, each depending only on the ones above it in this list:
//! - [`proto`]: wire formats (HTTP/1.1, chunked, SSE, templates, the payload), pure;
//! - [`check`]: judging deliveries (sequence tracker, latency, the checker), pure;
//! - [`plan`]: what the IO threads are asked to do and hand back, plain data;
//! - [`plain`]: ringload's own cleartext HTTP/1.1 on thread-per-core mio loops, where
//!   parsing on the delivery path does not allocate;
//! - [`transport`]: TLS, HTTP/2 and HTTP/3 (`--proto`) on one tokio current-thread runtime
//!   per thread, checked by the same code;
//! - [`run`]: the modes, which start the IO threads and build the reports;
//! - [`report`]: SVG plots from a run or from saved reports;
//! - [`cli`]: flags into run configurations (the binary `ringload` is glue over these).
#![deny(missing_docs)]

pub mod check;
pub mod cli;
pub mod plain;
pub mod plan;
pub mod proto;
pub mod report;
pub mod run;
pub mod transport;

/// A payload (plus a generous body template around it) must fit one SSE line.
const _: () = assert!(proto::payload::PAYLOAD_BYTES_MAX * 2 <= proto::sse::LINE_BYTES_MAX);

/// A partial WebSocket frame is carried in front of the next read like a partial SSE line,
/// in the same buffer (`plain::subscriber`), so it must fit where a line does.
const _: () = assert!(proto::ws::FRAME_BYTES_MAX <= proto::sse::LINE_BYTES_MAX);
