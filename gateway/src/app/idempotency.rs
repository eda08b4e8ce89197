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

use ringcast_core::event_id::EventId;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// A key on its way to the room's owner shard in `Mail::Publish` (mailbox.rs): one
/// thin pointer, because every slot of every mail queue is sized for the largest mail
/// (a `Box<str>` would add 16 bytes to each, for a field most publishes leave empty).
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::box_collection)] // the extra allocation buys the thin pointer
pub struct MailKey(Box<String>);

impl MailKey {
    /// Wraps a checked key.
    pub fn new(key: String) -> Self {
        Self(Box::new(key))
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The keys of the rooms one shard owns: `(room, key)` → the id its first publish got, for
/// a window from when it was sequenced. Bounded (`--idempotency-keys-max`).
#[derive(Debug, Default)]
pub struct KeyTable {
    /// `room` + ' ' + `key` (neither may hold a space, so the pair is unambiguous) → id.
    ids: HashMap<Arc<str>, EventId>,
    /// The same entries, oldest first, with when each was recorded: every entry of `ids` is
    /// here exactly once, so expiry and eviction pop the front.
    order: VecDeque<(Instant, Arc<str>)>,
    keys_max: usize,
    replays: u64,
    evicted: u64,
}

fn entry_name(room: &str, key: &str) -> String {
    format!("{room} {key}")
}

impl KeyTable {
    /// A table holding at most `keys_max` keys (at least 1).
    pub fn new(keys_max: usize) -> Self {
        Self {
            keys_max: keys_max.max(1),
            ..Self::default()
        }
    }

    /// Forgets the keys recorded `window` or longer before `now`.
    pub fn handle_timeout(&mut self, now: Instant, window: Duration) {
        while let Some((at, _)) = self.order.front() {
            if now.saturating_duration_since(*at) < window {
                break;
            }
            if let Some((_, name)) = self.order.pop_front() {
                self.ids.remove(&name);
            }
        }
    }

    /// The id of the first publish of `key` in `room` within the window, if any (a replay,
    /// counted).
    pub fn handle_publish(
        &mut self,
        now: Instant,
        window: Duration,
        room: &str,
        key: &str,
    ) -> Option<EventId> {
        self.handle_timeout(now, window);
        let id = *self.ids.get(entry_name(room, key).as_str())?;
        self.replays += 1;
        Some(id)
    }

    /// Records that the first publish of `key` in `room` got `id`. At the cap the oldest key
    /// goes first.
    pub fn record(&mut self, now: Instant, room: &str, key: &str, id: EventId) {
        let name: Arc<str> = Arc::from(entry_name(room, key));
        if self.ids.contains_key(&name) {
            return; // the first id stays
        }
        while self.ids.len() >= self.keys_max {
            let Some((_, oldest)) = self.order.pop_front() else {
                break;
            };
            self.ids.remove(&oldest);
            self.evicted += 1;
        }
        self.ids.insert(name.clone(), id);
        self.order.push_back((now, name));
        debug_assert_eq!(self.ids.len(), self.order.len());
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Publishes answered with a first publish's id so far.
    pub fn replays(&self) -> u64 {
        self.replays
    }

    /// Keys forgotten before their window ended because the table was full.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}

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

    fn id(seq: u64) -> EventId {
        EventId { epoch: 1, seq }
    }

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

    #[test]
    fn a_retry_within_the_window_gets_the_first_id_and_after_it_none() {
        let start = Instant::now();
        let window = Duration::from_secs(2);
        let mut table = KeyTable::new(16);
        assert_eq!(table.handle_publish(start, window, "a", "k"), None);
        table.record(start, "a", "k", id(7));
        // A second record of the same key (cannot happen: it was looked up first) keeps the
        // first id.
        table.record(start, "a", "k", id(8));
        let later = start + Duration::from_millis(1999);
        assert_eq!(table.handle_publish(later, window, "a", "k"), Some(id(7)));
        // Scoped per room.
        assert_eq!(table.handle_publish(later, window, "b", "k"), None);
        assert_eq!(table.replays(), 1);
        assert_eq!(table.handle_publish(start + window, window, "a", "k"), None);
        assert!(table.is_empty());
    }

    #[test]
    fn room_and_key_pairs_do_not_collide() {
        // "a b" + "c" vs "a" + "b c": rooms and keys hold no space, so these cannot both be
        // valid; the separator keeps valid pairs apart.
        let now = Instant::now();
        let mut table = KeyTable::new(16);
        table.record(now, "a:b", "c", id(1));
        assert_eq!(
            table.handle_publish(now, WINDOW_DEFAULT, "a", "b:c"),
            None,
            "different pairs"
        );
    }

    #[test]
    fn at_the_cap_the_oldest_key_goes_first() {
        let start = Instant::now();
        let window = Duration::from_secs(60);
        let mut table = KeyTable::new(3);
        for (i, key) in ["k0", "k1", "k2", "k3"].iter().enumerate() {
            table.record(
                start + Duration::from_secs(i as u64),
                "r",
                key,
                id(i as u64),
            );
        }
        assert_eq!(table.len(), 3);
        assert_eq!(table.evicted(), 1);
        let now = start + Duration::from_secs(5);
        assert_eq!(table.handle_publish(now, window, "r", "k0"), None);
        assert_eq!(table.handle_publish(now, window, "r", "k3"), Some(id(3)));
    }

    #[test]
    fn a_shorter_window_expires_older_keys_at_once() {
        let start = Instant::now();
        let mut table = KeyTable::new(16);
        table.record(start, "r", "old", id(1));
        table.record(start + Duration::from_secs(50), "r", "new", id(2));
        let now = start + Duration::from_secs(60);
        table.handle_timeout(now, Duration::from_secs(30));
        assert_eq!(table.len(), 1);
        assert_eq!(
            table.handle_publish(now, Duration::from_secs(30), "r", "new"),
            Some(id(2))
        );
    }
}
