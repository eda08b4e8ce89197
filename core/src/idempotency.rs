//! Idempotency keys of the rooms one shard owns (single-node mode): a publish that
//! carries a key and is sent again within the window gets the first publish's id back
//! instead of becoming a second message. A room's owner shard sequences every publish of
//! the room, one at a time, so it alone keeps the keys of its rooms, in a [`KeyTable`];
//! the sequencer's `Sequencer` consults it. What a key may hold is checked at the
//! HTTP edge (gateway `app::idempotency`). Sans-IO: time comes in as `now`.

use crate::event_id::EventId;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A key on its way to the room's owner shard in `Mail::Publish` (the gateway's mail): one
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

#[cfg(test)]
mod tests {
    use super::*;

    fn id(seq: u64) -> EventId {
        EventId { epoch: 1, seq }
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
            table.handle_publish(now, Duration::from_secs(120), "a", "b:c"),
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
