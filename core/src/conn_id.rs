//! The number a driver gives each of its connections, shared by rooms (who follows them) and
//! the fan-out state machine (what to write to whom).

/// A connection as the driver numbers it (its slot in the driver's connection slab).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u32);
