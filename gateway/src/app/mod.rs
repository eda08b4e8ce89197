//! What requests mean, apart from how their bytes travel: admission (per-IP limits and the
//! refusals a client sees), NDJSON batch publishing, idempotency keys. Must not touch the
//! ring or sockets.

pub mod admission;
pub use ringcast_proto::{batch, idempotency};
