//! WebSocket (RFC 6455) as a sans-IO connection machine (issue 16): the upgrade handshake,
//! the frame codec, incremental UTF-8 validation, the per-connection state machine
//! ([`WsConn`]) and ringcast's JSON protocol over it (docs/PROTOCOL.md).
//!
//! Owns: bytes in, bytes and events out, deadlines out. Must not touch sockets, the ring,
//! the clock, rooms or the fan-out core: the shard loop drives it (`handle_bytes`,
//! `poll_event`, `poll_transmit`, `poll_timeout`, `handle_timeout`) as it drives
//! `http1_conn`.

pub mod frame;
pub mod handshake;
pub mod machine;
pub mod protocol;
pub mod utf8;

pub use frame::{encode_room_message, CloseCode, Opcode};
pub use handshake::{
    accept, accept_extended_connect, HandshakeError, HeaderField, OriginPolicy, UpgradeRequest,
};
pub use machine::{SendError, WsConfig, WsConn, WsEvent};
pub use protocol::{parse_command, Command, CommandError, CommandRefusal, Ref};

#[cfg(test)]
mod tests;
