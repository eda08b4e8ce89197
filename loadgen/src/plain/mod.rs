//! ringload's own clients over plain TCP, one mio event loop per pinned thread: SSE
//! subscribers ([`subscriber`]), the fixed-rate publisher ([`publisher`]), the `ringload
//! http` worker ([`http`]) and non-blocking connects ([`socket`]). This is the fast path:
//! one read carries many events and parsing on the delivery path does not allocate.
//!
//! Owns: sockets, mio polls, per-connection state of cleartext HTTP/1.1. Must not touch:
//! `transport` (the tokio path) or `run`; it is given a plan from
//! [`crate::plan`], parses with [`crate::proto`] and judges with [`crate::check`].

pub mod http;
pub mod publisher;
pub mod socket;
pub mod subscriber;
