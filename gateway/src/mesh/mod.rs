//! How threads talk: the bounded cross-shard mail queues with their eventfds (`mail`) and
//! the virtual connections through which a companion thread hands HTTP/2 and HTTP/3
//! requests to its shard (`virtual_conn`). Plain data and queues; no sockets.

pub mod mail;
pub mod virtual_conn;
