//! The transports besides ringload's own cleartext HTTP/1.1: HTTP/1.1 over TLS, HTTP/2
//! (TLS with ALPN or cleartext prior knowledge) and HTTP/3, on one tokio current-thread
//! runtime per pinned thread. [`connection`] opens connections and carries requests
//! (hyper, quinn + h3, rustls via [`tls`]); [`subscriber`], [`publisher`] and [`http`] are
//! the fan-out subscribers, the publisher and the `ringload http` worker on top of it, with
//! the same schedule and the same [`crate::check`] as the mio path; [`probe`] fails fast
//! before a run.
//!
//! Owns: runtimes, TLS and QUIC state, streams. Must not touch: `plain` (the mio
//! path) or `run`; it is given a plan from [`crate::plan`].

pub mod connection;
pub mod http;
pub mod probe;
pub mod publisher;
pub mod subscriber;
pub mod tls;

pub use connection::{Connection, Endpoint, QuicCloser, Response, TransportError};
