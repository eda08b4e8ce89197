//! ringload's own clients over plain TCP, one mio event loop per pinned thread: SSE and
//! WebSocket subscribers ([`subscriber`], with the WebSocket connection state in
//! [`websocket`] and the sans-IO schedule of `--publish-over ws` in [`ws_publisher`]), the
//! fixed-rate HTTP publisher ([`publisher`]), the `ringload http` worker ([`http`]) and
//! non-blocking connects ([`socket`]). This is the fast path: one read carries many events
//! and parsing on the delivery path does not allocate.
//!
//! Owns: sockets, mio polls, per-connection state of cleartext HTTP/1.1 and WebSocket.
//! Must not touch:
//! `transport` (the tokio path) or `run`; it is given a plan from
//! [`crate::plan`], parses with [`crate::proto`] and judges with [`crate::check`].

pub mod http;
pub mod publisher;
pub mod socket;
pub mod subscriber;
pub mod websocket;
pub mod ws_publisher;
