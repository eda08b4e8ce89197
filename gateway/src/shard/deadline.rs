//! A connection's timer deadline as its shard keeps it: 8 bytes of nanoseconds since the
//! shard started, exact and ordered (`Conn::timer`, the WebSocket driver's `end_by`).
//!
//! Owns: the conversion between an `Instant` and its 8-byte form. Must not touch: the timer
//! wheel, or when a connection's deadline moves (the machines decide that).

use std::time::{Duration, Instant};

/// A connection's timer deadline: nanoseconds since its shard's `origin`, plus one. Exact
/// (it converts back to the same `Instant`), in 8 bytes where an `Instant` takes 16, and
/// never 0, so the `Option` of a timer needs no tag of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Deadline(std::num::NonZeroU64);

impl Deadline {
    /// `at`, as its shard (started at `origin`) keeps it.
    pub(super) fn new(origin: Instant, at: Instant) -> Self {
        debug_assert!(at >= origin, "a deadline before its shard started");
        // Past u64 nanoseconds is 584 years after the start.
        let nanos =
            u64::try_from(at.saturating_duration_since(origin).as_nanos()).unwrap_or(u64::MAX - 1);
        Self(std::num::NonZeroU64::MIN.saturating_add(nanos))
    }

    /// The instant it stands for.
    pub(super) fn at(self, origin: Instant) -> Instant {
        origin + Duration::from_nanos(self.0.get() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringcast_core::timer_wheel::TimerKey;

    /// A timer's deadline is kept in 8 bytes: it must come back as the very instant (the
    /// machine is told its deadline was reached at it) and keep the order of instants
    /// (a WebSocket's timer stays put while its deadline moves later).
    #[test]
    fn deadline_comes_back_exactly_and_keeps_order() {
        let origin = Instant::now();
        let ats = [
            origin,
            origin + Duration::from_nanos(1),
            origin + Duration::from_millis(10),
            origin + Duration::from_secs(86_400 * 365 * 100) + Duration::from_nanos(7),
        ];
        for at in ats {
            assert_eq!(Deadline::new(origin, at).at(origin), at);
        }
        for pair in ats.windows(2) {
            assert!(Deadline::new(origin, pair[0]) < Deadline::new(origin, pair[1]));
        }
        assert_eq!(
            std::mem::size_of::<Option<(TimerKey, Deadline)>>(),
            16,
            "a timer takes no tag"
        );
    }
}
