//! Room names and per-room state: the name, its history ring and which of this shard's
//! subscribers follow it.

use crate::conn_id::ConnId;
use crate::history::History;
use std::sync::Arc;
use thiserror::Error;

/// Longest accepted room name, in bytes.
pub const ROOM_NAME_BYTES_MAX: usize = 128;

/// Why a room name was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RoomNameError {
    /// The name is empty.
    #[error("room name is empty")]
    Empty,
    /// The name is longer than [`ROOM_NAME_BYTES_MAX`].
    #[error("room name longer than {ROOM_NAME_BYTES_MAX} bytes")]
    TooLong,
    /// The name holds a byte outside `[A-Za-z0-9_.:-]`.
    #[error("room name may only hold A-Z a-z 0-9 _ . : -")]
    BadByte,
}

/// Checks a room name against `[A-Za-z0-9_.:-]{1,128}`.
pub fn validate_room_name(name: &[u8]) -> Result<&str, RoomNameError> {
    if name.is_empty() {
        return Err(RoomNameError::Empty);
    }
    if name.len() > ROOM_NAME_BYTES_MAX {
        return Err(RoomNameError::TooLong);
    }
    if !name
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
    {
        return Err(RoomNameError::BadByte);
    }
    // Only ASCII bytes passed the check above.
    std::str::from_utf8(name).map_err(|_| RoomNameError::BadByte)
}

/// Which shard sequences a room: a stable hash of its name (FNV-1a), so every shard (and
/// every restart) agrees without talking.
pub fn owner_shard(name: &str, shards: usize) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in name.as_bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % shards.max(1) as u64) as usize
}

/// One room as one shard sees it: the full history (every shard holds a replica) and the
/// subscribers this shard serves.
#[derive(Debug)]
pub struct Room {
    /// The validated name.
    pub name: Arc<str>,
    /// Encoded frames, bounded.
    pub history: History,
    /// This shard's subscribers of the room; each knows its own index here.
    pub subscribers: Vec<ConnId>,
    /// Which creation of the room this is, as its owner shard stamped it when the room first
    /// sequenced a message (0: not known yet, or cluster mode). It is the epoch clients see
    /// in ids (`{epoch}-{seq}`, ringcast_core::event_id): the owner's clock in Unix microseconds,
    /// strictly increasing per shard, so it also tells lifetimes of the process apart. A
    /// replica that sees a frame of a later incarnation starts over.
    pub incarnation: u64,
    /// Owner only: other shards that told it they hold subscribers of the room.
    pub remote_shards: u32,
}

impl Room {
    /// An empty room with a history of the given bounds (allocated as frames arrive).
    pub fn new(name: Arc<str>, history_messages_max: usize, history_bytes_max: usize) -> Self {
        Self {
            name,
            history: History::new(history_messages_max, history_bytes_max),
            subscribers: Vec::new(),
            incarnation: 0,
            remote_shards: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names_table() {
        let long = "a".repeat(129);
        let max = "a".repeat(128);
        let cases: &[(&str, Result<(), RoomNameError>)] = &[
            ("lobby", Ok(())),
            ("A-z_0.9:x", Ok(())),
            (&max, Ok(())),
            ("", Err(RoomNameError::Empty)),
            (&long, Err(RoomNameError::TooLong)),
            ("a b", Err(RoomNameError::BadByte)),
            ("a/b", Err(RoomNameError::BadByte)),
            ("é", Err(RoomNameError::BadByte)),
            ("a%20", Err(RoomNameError::BadByte)),
        ];
        for (name, want) in cases {
            assert_eq!(
                validate_room_name(name.as_bytes()).map(|_| ()),
                *want,
                "{name:?}"
            );
        }
    }

    #[test]
    fn owner_is_stable_and_in_range() {
        for shards in 1..8 {
            for name in ["a", "b", "lobby", "r17"] {
                let owner = owner_shard(name, shards);
                assert!(owner < shards);
                assert_eq!(owner, owner_shard(name, shards));
            }
        }
        assert_eq!(owner_shard("anything", 1), 0);
    }
}
