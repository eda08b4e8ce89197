//! Judging deliveries, pure: the per-subscriber sequence tracker ([`tracker`]), latency
//! histograms ([`latency`]), the wall clock that stamps them ([`clock`]) and the
//! [`checker::Checker`] every subscriber path feeds its events to, so a verdict never
//! depends on the transport that carried the messages.
//!
//! Owns: what counts as delivered, lost, duplicated, reordered, stale, foreign or in the
//! wrong room. Must not touch: sockets, threads, flags; depends only on [`crate::proto`].

pub mod checker;
pub mod clock;
pub mod latency;
pub mod tracker;
