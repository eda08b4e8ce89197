//! The shard's fan-out subscriber ids: one [`ConnId`] per (connection, room) subscription
//! — an SSE stream's one, a room WebSocket's one, each room of a multiplexed WebSocket —
//! from one allocator, mapped back to the connection that holds it, so one connection can
//! follow several rooms and the fan-out never sees connection slots.
//!
//! Owns: the id ↔ connection table and its free list (dense ids: the fan-out indexes its
//! subscribers by them). Must not touch: the fan-out (the shard subscribes and disconnects
//! ids there), connections. An id is freed only after the fan-out forgot it
//! (`Fanout::handle_disconnect`), and only by the connection holding it, so a late action
//! or write completion never reaches another connection's subscription.

use crate::conn::key::ConnKey;
use ringcast_core::fanout::ConnId;

/// Subscriber ids in use and free.
#[derive(Debug, Default)]
pub(super) struct Subscriptions {
    owners: Vec<Option<ConnKey>>,
    free: Vec<u32>,
    live: usize,
}

impl Subscriptions {
    /// A new id for a subscription of the connection `owner`.
    pub(super) fn insert(&mut self, owner: ConnKey) -> ConnId {
        self.live += 1;
        match self.free.pop() {
            Some(id) => {
                let entry = &mut self.owners[id as usize];
                assert!(entry.is_none(), "a free id is free");
                *entry = Some(owner);
                ConnId(id)
            }
            None => {
                let id = u32::try_from(self.owners.len()).expect("fewer than 2^32 subscriptions");
                self.owners.push(Some(owner));
                ConnId(id)
            }
        }
    }

    /// Frees `id` (its connection closed or unsubscribed; the fan-out forgot it).
    pub(super) fn remove(&mut self, id: ConnId) {
        let entry = self.owners.get_mut(id.0 as usize).and_then(Option::take);
        assert!(entry.is_some(), "only an id in use is freed");
        self.live -= 1;
        self.free.push(id.0);
    }

    /// The connection holding `id`.
    pub(super) fn owner(&self, id: ConnId) -> Option<ConnKey> {
        self.owners.get(id.0 as usize).copied().flatten()
    }

    /// Ids in use.
    pub(super) fn len(&self) -> usize {
        self.live
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(slot: u32) -> ConnKey {
        ConnKey { slot, serial: 1 }
    }

    #[test]
    fn ids_are_dense_reused_and_name_their_connection() {
        let mut subs = Subscriptions::default();
        let a = subs.insert(key(5));
        let b = subs.insert(key(5));
        let c = subs.insert(key(9));
        assert_eq!((a, b, c), (ConnId(0), ConnId(1), ConnId(2)));
        assert_eq!(subs.owner(b), Some(key(5)));
        subs.remove(b);
        assert_eq!(subs.owner(b), None, "a freed id names no one");
        assert_eq!(subs.len(), 2);
        assert_eq!(subs.insert(key(7)), ConnId(1), "freed ids come back first");
        assert_eq!(subs.owner(ConnId(1)), Some(key(7)));
        assert_eq!(subs.owner(ConnId(99)), None);
    }

    #[test]
    #[should_panic(expected = "only an id in use is freed")]
    fn freeing_twice_is_a_bug() {
        let mut subs = Subscriptions::default();
        let a = subs.insert(key(1));
        subs.remove(a);
        subs.remove(a);
    }
}
