//! [`ConnKey`]: which connection of a shard something that outlives a call is for (a reply
//! by mail, a timer, a Redis ticket, a virtual connection's sink), and [`Serials`], which
//! hands out the serial half.

/// One connection of one shard: its slot in the shard's connection table and the serial the
/// shard gave it when it took the slot.
///
/// Slots are reused as soon as a connection closes; serials are not. Whatever outlives the
/// call that made it (a reply by mail, a timer entry, an upstream ticket, a virtual
/// connection's sink) holds a `ConnKey`, never a bare slot, and the shard resolves it only
/// through a lookup that compares the serial (`Shard::conn_by_key`). So a stale key never
/// reaches a new connection in the same slot: a reply or timer for a connection that closed
/// is dropped. (A serial comes back only after 2^32 − 1 connections on the one shard, and it
/// would also need the same slot: far longer than any timer or upstream call lives.)
///
/// Modelled on `ringcast_core::timer_wheel::TimerKey`. The serial is never 0 ([`Serials`]), so
/// [`ConnKey::to_word`] is never 0 and 0 can mean "no connection yet" in an atomic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey {
    /// The connection's slot in its shard's table.
    pub slot: u32,
    /// The serial the shard gave the connection (never 0).
    pub serial: u32,
}

impl ConnKey {
    /// The key as one word (`slot << 32 | serial`), for an atomic; never 0.
    pub fn to_word(self) -> u64 {
        debug_assert_ne!(self.serial, 0, "serial 0 is never given");
        u64::from(self.slot) << 32 | u64::from(self.serial)
    }

    /// The key [`ConnKey::to_word`] made, or `None` for 0 (no connection).
    pub fn from_word(word: u64) -> Option<ConnKey> {
        (word != 0).then_some(ConnKey {
            slot: (word >> 32) as u32,
            serial: word as u32,
        })
    }
}

/// A shard's serials: 1, 2, … wrapping past `u32::MAX` back to 1; never 0.
#[derive(Debug)]
pub struct Serials {
    next: u32,
}

impl Default for Serials {
    fn default() -> Self {
        Self { next: 1 }
    }
}

impl Serials {
    /// The serial for the next connection.
    pub fn take(&mut self) -> u32 {
        let serial = self.next;
        self.next = self.next.wrapping_add(1).max(1);
        serial
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_skip_zero_when_they_wrap() {
        let mut serials = Serials::default();
        assert_eq!((serials.take(), serials.take()), (1, 2));
        serials.next = u32::MAX;
        assert_eq!((serials.take(), serials.take()), (u32::MAX, 1));
    }

    #[test]
    fn keys_round_trip_through_a_word_and_never_make_zero() {
        for key in [
            ConnKey { slot: 0, serial: 1 },
            ConnKey {
                slot: 7,
                serial: 42,
            },
            ConnKey {
                slot: u32::MAX,
                serial: u32::MAX,
            },
        ] {
            assert_ne!(key.to_word(), 0);
            assert_eq!(ConnKey::from_word(key.to_word()), Some(key));
        }
        assert_eq!(ConnKey::from_word(0), None);
    }
}
