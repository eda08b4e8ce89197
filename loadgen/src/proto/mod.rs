//! Wire formats, pure: bytes in, values out (or values in, bytes out), no sockets, no
//! clock, no threads — each can be unit-tested on byte strings and fuzzed. HTTP/1.1 request
//! encoding and response heads ([`http1`]), chunked bodies ([`chunked`]), SSE framing
//! ([`sse`]), the WebSocket client codec ([`ws`]), URL and body templates ([`template`]) and
//! ringload's self-describing payload ([`payload`]).
//!
//! Owns: the byte layouts. Must not touch: other ringload modules (nothing here imports
//! outside `proto`), IO, time.

pub mod chunked;
pub mod http1;
pub mod payload;
pub mod sse;
pub mod template;
pub mod ws;
