//! The sans-IO fan-out core of ringcast.
//!
//! This crate contains no networking code, spawns no threads and never reads the
//! operating system's clock: every state machine here (rooms, history rings, subscriber
//! cursors, the timer wheel, the circuit breaker, the process clock, metrics) is plain data
//! driven by calls that take `now`. The `gateway` crate is the thin IO layer that feeds it
//! socket events and the real time, and carries out the actions it returns.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod breaker;
pub mod clock;
pub mod conn_id;
pub mod drain;
pub mod event_id;
pub mod fanout;
pub mod frame;
pub mod history;
pub mod idempotency;
pub mod metrics;
pub mod pace;
pub mod room;
pub mod room_lru;
pub mod sequencer;
pub mod sse;
pub mod timer_wheel;
pub mod ws;
