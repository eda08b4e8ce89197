//! ringload: the load generator of ringcast.
//!
//! Two modes: `http` (wrk-like keep-alive load, optionally open loop with coordinated-
//! omission correction) and `fanout` (SSE subscribers over rooms plus a fixed-rate
//! publisher, with every delivery checked for loss, duplication, order and room, and
//! latency measured from both the publish stamp and the schedule). Thread-per-core mio
//! event loops for plain HTTP/1.1, where parsing on the delivery path does not allocate;
//! TLS, HTTP/2 and HTTP/3 (`--proto`) run on one tokio current-thread runtime per thread
//! ([`transport`], `stream_*`), checked by the same code. Results can be drawn as SVG
//! plots ([`plot`]), from a run or from saved reports ([`plot_input`]).
#![deny(missing_docs)]

pub mod chunked;
pub mod cli;
pub mod clock;
pub mod cpu;
pub mod duration;
pub mod fanout;
pub mod http1;
pub mod http_bench;
pub mod http_load;
pub mod latency;
pub mod payload;
pub mod plot;
pub mod plot_input;
pub mod progress;
pub mod publisher;
pub mod socket;
pub mod sse;
pub mod stream_http;
pub mod stream_probe;
pub mod stream_publisher;
pub mod stream_subscriber;
pub mod subscriber;
pub mod sweep;
pub mod target;
pub mod template;
pub mod tls;
pub mod tracker;
pub mod transport;

/// A payload (plus a generous body template around it) must fit one SSE line.
const _: () = assert!(payload::PAYLOAD_BYTES_MAX * 2 <= sse::LINE_BYTES_MAX);
