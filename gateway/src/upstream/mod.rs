//! Everything ringcast asks outside itself, each behind a circuit breaker: the subscribe
//! authorization callback (`auth`), JWT checks (`jwt`) and the Redis cluster (`cluster`).
//! Each runs on its own threads and talks to the shards by bounded queues; must not touch
//! the ring or the shards' connections.

pub mod auth;
pub mod cluster;
pub use ringcast_proto::jwt;
