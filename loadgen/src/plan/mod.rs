//! What a run asks of its IO threads and what they hand back: plain data shared by the
//! orchestration in `run` and the two IO paths, `plain` (mio) and
//! `transport` (tokio), so that neither path depends on the other or on `run`.
//! Targets and URL templates ([`target`]), the protocol and TLS choice ([`transport`]),
//! the `ringload http` job and its counts ([`http`]), the publish plan and its result
//! ([`publish`]), and the subscriber threads' shared control block ([`subscribe`]).
//!
//! Owns: these types and their limits. Must not touch: sockets, runtimes, threads (the
//! only IO is resolving a target's host name); depends on [`crate::proto`] and
//! [`crate::check`] only.

pub mod http;
pub mod publish;
pub mod subscribe;
pub mod target;
pub mod transport;
