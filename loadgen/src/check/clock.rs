//! Wall-clock stamps (CLOCK_REALTIME, unix nanoseconds) for publish stamps and receive
//! times. Monotonic scheduling uses `std::time::Instant` directly.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Current CLOCK_REALTIME in unix nanoseconds.
#[inline]
pub fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64)
}

/// A pair of clocks read together, to translate monotonic schedule points to wall time.
#[derive(Debug, Clone, Copy)]
pub struct Anchor {
    /// Monotonic reading.
    pub instant: Instant,
    /// Wall reading at (nearly) the same moment.
    pub wall_ns: u64,
}

impl Anchor {
    /// Reads both clocks now.
    pub fn now() -> Self {
        Anchor {
            instant: Instant::now(),
            wall_ns: wall_ns(),
        }
    }

    /// Wall time (unix ns) of a monotonic point at `offset_ns` after the anchor.
    pub fn wall_at(&self, offset_ns: u64) -> u64 {
        self.wall_ns + offset_ns
    }
}
