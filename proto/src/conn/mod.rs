//! Connection machines, sans IO: each turns the bytes a peer sends (and `now`) into what to
//! write back, deadlines and requests, and is driven by the shard loop. The whole HTTP/1.1
//! connection (`http1`), TLS over bytes (`tls`) and the connection identity (`key`).
//! Must not touch sockets, the ring, the clock or the fan-out core.

pub mod http1;
pub mod key;
pub mod tls;
pub mod ws;
