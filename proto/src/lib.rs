//! ringcast's protocol layer, sans IO: what bytes on a connection mean, with no socket,
//! thread, ring, clock or `unsafe`. The connection machines (`conn`: HTTP/1.1, TLS over
//! bytes, WebSocket), the one route table with HTTP/1.1 heads and responses (`http`), JWT
//! checks (`jwt`), NDJSON publish batches (`batch`) and idempotency keys (`idempotency`).
//! The gateway's shard loop drives these; the fuzz targets drive them too, without linking
//! the gateway's transports (tokio, hyper, quinn) or its Redis client.
#![forbid(unsafe_code)]

pub mod batch;
pub mod conn;
pub mod http;
pub mod idempotency;
pub mod jwt;
