//! Admission control: why a request may be refused (each reason is a label of
//! `ringcast_admission_rejections_total` and the text of the 503), and the per-client-IP
//! connection count.
//!
//! The per-IP limit is exact over the process: every shard counts in one table, striped
//! by address hash so shards accepting different clients never touch the same lock. A
//! per-shard table (limit ÷ shards each) would need no lock, but SO_REUSEPORT spreads one
//! client's connections over shards by port hash, so such a client would be refused
//! anywhere between limit ÷ shards and the limit, depending on luck. The table is touched
//! once at accept and once at close (never per request or delivery), and holds at most one
//! entry per open connection.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::Mutex;

/// Lock stripes of the per-IP table: well above the shard count, so two shards accepting
/// different clients rarely share a stripe.
pub const IP_STRIPES: usize = 64;

/// Why a request was refused with 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Rejection {
    /// The process holds `--max-connections`.
    ConnectionLimit,
    /// The client's address holds `--max-connections-per-ip`.
    PerIpLimit,
    /// The shard's pending write bytes are past `--max-pending-write-bytes`.
    PendingWriteBytes,
    /// The gateway is stopping.
    Draining,
    /// A cross-shard queue is full.
    ShardQueues,
    /// The shard holds its room limit.
    RoomLimit,
    /// The shard holds its subscriber (or ticker) limit.
    SubscriberLimit,
    /// The subscribe authorization upstream is unavailable (breaker open).
    AuthUnavailable,
}

/// How many reasons there are.
pub const REJECTIONS: usize = Rejection::AuthUnavailable as usize + 1;

impl Rejection {
    /// Every reason, in label order.
    pub const ALL: [Rejection; REJECTIONS] = [
        Rejection::ConnectionLimit,
        Rejection::PerIpLimit,
        Rejection::PendingWriteBytes,
        Rejection::Draining,
        Rejection::ShardQueues,
        Rejection::RoomLimit,
        Rejection::SubscriberLimit,
        Rejection::AuthUnavailable,
    ];

    /// The `reason` label value.
    pub fn label(self) -> &'static str {
        match self {
            Rejection::ConnectionLimit => "connection_limit",
            Rejection::PerIpLimit => "per_ip_limit",
            Rejection::PendingWriteBytes => "pending_write_bytes",
            Rejection::Draining => "draining",
            Rejection::ShardQueues => "shard_queues_full",
            Rejection::RoomLimit => "room_limit",
            Rejection::SubscriberLimit => "subscriber_limit",
            Rejection::AuthUnavailable => "auth_unavailable",
        }
    }

    /// The reason sent in the 503 body.
    pub fn text(self) -> &'static str {
        match self {
            Rejection::ConnectionLimit => "connection limit reached",
            Rejection::PerIpLimit => "connection limit per client address reached",
            Rejection::PendingWriteBytes => "shard write backlog over its limit",
            Rejection::Draining => "draining",
            Rejection::ShardQueues => "shard queues full",
            Rejection::RoomLimit => "room limit reached",
            Rejection::SubscriberLimit => "subscriber limit reached",
            Rejection::AuthUnavailable => "authorization upstream unavailable",
        }
    }
}

/// Open connections per client address, over every shard.
#[derive(Debug)]
pub struct PerIpConnections {
    hasher: RandomState,
    stripes: Vec<Mutex<HashMap<IpAddr, u32>>>,
}

impl Default for PerIpConnections {
    fn default() -> Self {
        Self {
            hasher: RandomState::new(),
            stripes: (0..IP_STRIPES)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
        }
    }
}

impl PerIpConnections {
    fn stripe(&self, ip: &IpAddr) -> std::sync::MutexGuard<'_, HashMap<IpAddr, u32>> {
        let index = self.hasher.hash_one(ip) as usize % IP_STRIPES;
        // A panic while holding a stripe leaves a count, not a broken map: keep going.
        self.stripes[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts one more connection from `ip` unless it already holds `limit` (0: no limit);
    /// says whether it was admitted. Each admission must be matched by [`Self::release`].
    pub fn try_acquire(&self, ip: IpAddr, limit: usize) -> bool {
        let mut stripe = self.stripe(&ip);
        let count = stripe.entry(ip).or_insert(0);
        if limit != 0 && *count as usize >= limit {
            if *count == 0 {
                stripe.remove(&ip);
            }
            return false;
        }
        *count += 1;
        true
    }

    /// Forgets one connection from `ip`; the entry goes with the last one.
    pub fn release(&self, ip: IpAddr) {
        let mut stripe = self.stripe(&ip);
        match stripe.get_mut(&ip) {
            Some(count) if *count > 1 => *count -= 1,
            Some(_) => {
                stripe.remove(&ip);
            }
            None => debug_assert!(false, "released an address that holds no connection"),
        }
    }

    /// Connections counted for `ip`.
    pub fn count(&self, ip: IpAddr) -> usize {
        self.stripe(&ip).get(&ip).map_or(0, |count| *count as usize)
    }

    /// Addresses held (entries in the table).
    pub fn addresses(&self) -> usize {
        self.stripes
            .iter()
            .map(|stripe| stripe.lock().map_or(0, |map| map.len()))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_is_per_address_and_entries_go_with_the_last_connection() {
        let table = PerIpConnections::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "::1".parse().unwrap();
        assert!(table.try_acquire(a, 2));
        assert!(table.try_acquire(a, 2));
        assert!(!table.try_acquire(a, 2), "third from one address");
        assert!(table.try_acquire(b, 2), "another address is not affected");
        assert_eq!((table.count(a), table.count(b)), (2, 1));
        // Lowered live: existing connections stay, new ones are refused.
        assert!(!table.try_acquire(a, 1));
        table.release(a);
        assert!(!table.try_acquire(a, 1));
        table.release(a);
        table.release(b);
        assert_eq!(table.addresses(), 0, "no entry outlives its connections");
        // 0 is no limit, but connections are still counted (so a limit set by a reload
        // sees them).
        for _ in 0..100 {
            assert!(table.try_acquire(a, 0));
        }
        assert_eq!(table.count(a), 100);
        assert!(!table.try_acquire(a, 100));
        assert_eq!(table.addresses(), 1);
    }

    #[test]
    fn refused_first_connection_leaves_no_entry() {
        let table = PerIpConnections::default();
        let a: IpAddr = "10.0.0.2".parse().unwrap();
        // A limit of 0 means none, so use a table already at a limit of 1 from elsewhere.
        assert!(table.try_acquire(a, 1));
        assert!(!table.try_acquire(a, 1));
        table.release(a);
        assert_eq!(table.addresses(), 0);
    }

    #[test]
    fn labels_are_distinct_and_in_order() {
        for (index, reason) in Rejection::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, index);
            assert!(Rejection::ALL[..index]
                .iter()
                .all(|other| other.label() != reason.label()));
        }
    }
}
