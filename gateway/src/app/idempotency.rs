//! Idempotent publishes: a publish that carries an idempotency key (the `Idempotency-Key`
//! header of `POST /rooms/{room}/messages`, the `idempotency_key` field of a `POST /publish`
//! line) and is sent again within `--idempotency-window` gets the first publish's id back
//! instead of becoming a second message. Keys are scoped to their room.
//!
//! - **One node**: a room's owner shard sequences every publish of the room, one at a time,
//!   so it alone keeps the keys of its rooms, in a [`KeyTable`]. A retry, on any shard and
//!   even while the first answer is still on its way back, reaches the same owner and finds
//!   the key. Only a publish that was sequenced records its key: a refused one (503, 400)
//!   can be retried with the same key and is then a first publish.
//! - **Cluster** (cluster.rs): the key is stored in Redis by the script that appends the
//!   message, atomically, so a retry on any node within the window gets the first id.
//!
//! Sans-IO: time comes in as `now`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Longest idempotency key, in bytes.
pub const KEY_BYTES_MAX: usize = 128;
/// Default `--idempotency-keys-max`: keys one shard holds at most. Measured: ~220 bytes per key of 128 bytes in a 1-byte room
/// (RSS +13.6 MiB at the cap: one shard, 65,536 keyed publishes); a 128-byte room adds 128.
/// At the cap the oldest key is forgotten before its window ends (counted in
/// `ringcast_idempotency_keys_evicted_total`): a flood of new keys can shorten the window of
/// others, never refuse a publish. 65,536 keys over the default 120-s window is ~546 keyed
/// publishes per second per shard before that happens.
pub const KEYS_MAX_DEFAULT: usize = 65_536;
/// Default `--idempotency-window`.
pub const WINDOW_DEFAULT: Duration = Duration::from_secs(120);

/// Why an idempotency key was refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key is empty.
    #[error("idempotency key is empty")]
    Empty,
    /// The key is longer than [`KEY_BYTES_MAX`].
    #[error("idempotency key over 128 bytes")]
    TooLong,
    /// The key holds a byte outside printable ASCII (`!` to `~`, no spaces).
    #[error("idempotency key must be printable ASCII without spaces")]
    BadByte,
    /// The request carries more than one `Idempotency-Key` header.
    #[error("more than one idempotency-key header")]
    Repeated,
}

const _: () = assert!(KEY_BYTES_MAX <= 128, "KeyError::TooLong names the limit");

/// Checks an idempotency key (surrounding whitespace trimmed): 1 to [`KEY_BYTES_MAX`]
/// bytes of printable ASCII without spaces.
pub fn validate_key(value: &[u8]) -> Result<&str, KeyError> {
    let value = value.trim_ascii();
    if value.is_empty() {
        return Err(KeyError::Empty);
    }
    if value.len() > KEY_BYTES_MAX {
        return Err(KeyError::TooLong);
    }
    if !value.iter().all(u8::is_ascii_graphic) {
        return Err(KeyError::BadByte);
    }
    // Only ASCII bytes passed the check above.
    std::str::from_utf8(value).map_err(|_| KeyError::BadByte)
}

pub use ringcast_core::idempotency::{KeyTable, MailKey};

/// One shard's idempotency figures for `/metrics` (the shard stores, scrapes read).
#[derive(Debug, Default)]
pub struct Figures {
    replays: AtomicU64,
    keys: AtomicU64,
    evicted: AtomicU64,
    /// Replays found by Redis (cluster mode), added as they happen.
    cluster_replays: AtomicU64,
}

impl Figures {
    /// Stores a shard's table figures.
    pub fn publish(&self, table: &KeyTable) {
        self.replays.store(table.replays(), Ordering::Relaxed);
        self.keys.store(table.len() as u64, Ordering::Relaxed);
        self.evicted.store(table.evicted(), Ordering::Relaxed);
    }

    /// Counts one replay Redis found (cluster mode).
    pub fn add_cluster_replay(&self) {
        self.cluster_replays.fetch_add(1, Ordering::Relaxed);
    }
}

/// Adds the idempotency figures of every shard to a `/metrics` exposition.
pub fn expose<'a>(
    out: &mut ringcast_core::metrics::Exposition,
    shards: impl Iterator<Item = &'a Figures> + Clone,
) {
    let sum = |f: fn(&Figures) -> u64| shards.clone().map(f).sum::<u64>() as f64;
    out.counter(
        "ringcast_idempotent_replays_total",
        "Publishes with an idempotency key seen within the window: answered with the first publish's id, not sequenced again.",
        &[],
        sum(|f| f.replays.load(Ordering::Relaxed) + f.cluster_replays.load(Ordering::Relaxed)),
    );
    out.gauge(
        "ringcast_idempotency_keys",
        "Idempotency keys held by the shards (single-node mode; cluster mode keeps them in Redis).",
        &[],
        sum(|f| f.keys.load(Ordering::Relaxed)),
    );
    out.counter(
        "ringcast_idempotency_keys_evicted_total",
        "Idempotency keys forgotten before their window ended because a shard held --idempotency-keys-max.",
        &[],
        sum(|f| f.evicted.load(Ordering::Relaxed)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_table() {
        let long = "k".repeat(KEY_BYTES_MAX + 1);
        let max = "k".repeat(KEY_BYTES_MAX);
        let cases: &[(&[u8], Result<&str, KeyError>)] = &[
            (b"abc-123", Ok("abc-123")),
            (b"  padded\t", Ok("padded")),
            (max.as_bytes(), Ok(max.as_str())),
            (b"", Err(KeyError::Empty)),
            (b"   ", Err(KeyError::Empty)),
            (long.as_bytes(), Err(KeyError::TooLong)),
            (b"has space", Err(KeyError::BadByte)),
            (b"tab\there", Err(KeyError::BadByte)),
            (b"nul\0", Err(KeyError::BadByte)),
            ("caf\u{e9}".as_bytes(), Err(KeyError::BadByte)),
            (b"\x7f", Err(KeyError::BadByte)),
        ];
        for (value, want) in cases {
            assert_eq!(
                validate_key(value),
                *want,
                "{:?}",
                String::from_utf8_lossy(value)
            );
        }
    }
}
