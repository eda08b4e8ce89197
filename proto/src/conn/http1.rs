//! One HTTP/1.1 connection, sans IO: the [`Connection`] machine (connection.rs) turns the
//! plaintext a client sends, and `now`, into requests for the application, the bytes to
//! write and the one deadline that runs: request states, keep-alive, pipelining,
//! `--header-timeout`, `--body-timeout`, `--idle-timeout`, `100 Continue`, HEAD, the linger
//! after a refusal, the drain and the SSE stream after its head. Nothing here reads a clock,
//! a socket or a ring, nor knows TLS (the shard hands it plaintext).
//!
//! The shard (shard/) drives one [`Connection`] per plain, TLS and virtual connection; the
//! unit tests (tests.rs) drive it with byte scripts on virtual time, and the `http1_conn`
//! fuzz target with arbitrary bytes, splits, timers and completions.

mod connection;
#[cfg(test)]
mod tests;

pub use connection::{
    Cause, Close, Connection, Event, Read, Request, State, DISCARD_BYTES_MAX, LINGER,
    RECEIVE_BYTES_MAX,
};

use std::time::Duration;

/// What bounds a request: sizes from the start-up settings, deadlines from the live ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `--max-header-bytes`.
    pub header_bytes_max: usize,
    /// `--max-message-bytes`: the largest body any route takes.
    pub body_bytes_max: usize,
    /// `--header-timeout`: from a request's first byte (a new connection's: from accept).
    pub header_timeout: Duration,
    /// `--body-timeout`: from a complete head to the end of its body.
    pub body_timeout: Duration,
    /// `--idle-timeout`: a keep-alive connection waiting for its next request.
    pub idle_timeout: Duration,
}

impl Limits {
    /// Most bytes a connection's receive buffer holds while reading a request: one head
    /// and one body at their limits, plus one byte to see that a head went over.
    pub fn buffer_bytes_max(&self) -> usize {
        self.header_bytes_max + self.body_bytes_max + 1
    }
}
