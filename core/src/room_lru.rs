//! Which rooms could be freed, oldest activity first: an intrusive doubly linked list over
//! room slots. A room is on the list while no subscriber (on any shard) follows it; its
//! place is the last publish or the moment its last subscriber left. The idle sweep reads
//! the front (O(1) per room freed, never a scan) and eviction at the room cap takes it.

use std::time::Instant;

/// No slot: the end of the list.
const NIL: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Link {
    prev: u32,
    next: u32,
    /// Last activity, `None` while the slot is not on the list.
    since: Option<Instant>,
}

const UNLINKED: Link = Link {
    prev: NIL,
    next: NIL,
    since: None,
};

/// Rooms without subscribers, least recently active first. Slots are the fan-out's room
/// slots; the list grows with the highest slot seen (16 bytes a slot).
#[derive(Debug, Default)]
pub struct RoomLru {
    links: Vec<Link>,
    head: u32,
    tail: u32,
    len: usize,
}

impl RoomLru {
    /// An empty list.
    pub fn new() -> Self {
        Self {
            links: Vec::new(),
            head: NIL,
            tail: NIL,
            len: 0,
        }
    }

    /// Rooms on the list.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no room is on the list.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when `slot` is on the list.
    pub fn contains(&self, slot: u32) -> bool {
        self.links
            .get(slot as usize)
            .is_some_and(|link| link.since.is_some())
    }

    /// Puts `slot` at the back (most recent) with activity `now`, moving it if it was
    /// already on the list. `now` never goes back, so the list stays sorted by activity.
    pub fn touch(&mut self, slot: u32, now: Instant) {
        self.remove(slot);
        if self.links.len() <= slot as usize {
            self.links.resize(slot as usize + 1, UNLINKED);
        }
        self.links[slot as usize] = Link {
            prev: self.tail,
            next: NIL,
            since: Some(now),
        };
        if self.tail == NIL {
            self.head = slot;
        } else {
            self.links[self.tail as usize].next = slot;
        }
        self.tail = slot;
        self.len += 1;
    }

    /// Takes `slot` off the list (nothing if it is not on it).
    pub fn remove(&mut self, slot: u32) {
        let Some(link) = self.links.get(slot as usize).copied() else {
            return;
        };
        if link.since.is_none() {
            return;
        }
        if link.prev == NIL {
            self.head = link.next;
        } else {
            self.links[link.prev as usize].next = link.next;
        }
        if link.next == NIL {
            self.tail = link.prev;
        } else {
            self.links[link.next as usize].prev = link.prev;
        }
        self.links[slot as usize] = UNLINKED;
        self.len -= 1;
    }

    /// The least recently active room and its last activity.
    pub fn front(&self) -> Option<(u32, Instant)> {
        if self.head == NIL {
            return None;
        }
        let since = self.links[self.head as usize].since?;
        Some((self.head, since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn order(lru: &RoomLru) -> Vec<u32> {
        let mut out = Vec::new();
        let mut at = lru.head;
        while at != NIL {
            out.push(at);
            at = lru.links[at as usize].next;
        }
        out
    }

    #[test]
    fn touch_moves_to_back_and_remove_unlinks() {
        let t0 = Instant::now();
        let mut lru = RoomLru::new();
        for slot in [3, 0, 7, 1] {
            lru.touch(slot, t0);
        }
        assert_eq!(order(&lru), [3, 0, 7, 1]);
        lru.touch(0, t0 + Duration::from_secs(1));
        assert_eq!(order(&lru), [3, 7, 1, 0]);
        lru.remove(3);
        lru.remove(3);
        lru.remove(99);
        assert_eq!(order(&lru), [7, 1, 0]);
        assert_eq!(lru.front(), Some((7, t0)));
        lru.remove(0);
        assert_eq!(lru.tail, 1);
        assert_eq!(lru.len(), 2);
        assert!(!lru.contains(0) && lru.contains(7));
        lru.remove(7);
        lru.remove(1);
        assert!(lru.is_empty());
        assert_eq!(lru.front(), None);
        assert_eq!((lru.head, lru.tail), (NIL, NIL));
    }
}
