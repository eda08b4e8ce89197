//! Event ids as clients see them, and the resume ids clients send back.
//!
//! Inside a shard an id is a `u64` per room (single node: a sequence from 1; cluster: a
//! Redis stream id packed as `ms << 20 | seq`). Clients see it as the string
//! `"{epoch}-{seq}"` (the shape of a Redis stream id), which round-trips exactly through
//! JavaScript (`EventSource.lastEventId`, `JSON.parse`) where a `u64` above 2^53 would not:
//! - single node: `epoch` is the room's incarnation (the owner shard's clock, Unix
//!   microseconds, when the room first sequenced a message; strictly increasing per shard),
//!   so an id of an earlier process, or of a room freed and created again, is told apart;
//! - cluster: the Redis stream id `ms-seq` itself.
//!
//! A resume id the server cannot place (another epoch, beyond the head, a bare number from
//! before epochs, text of another shape) is answered with `event: reset` and everything
//! still held, never a silent skip ([`ResetReason`]). Only garbage (not visible ASCII, or
//! longer than [`RESUME_ID_BYTES_MAX`]) is refused outright.

use std::fmt;
use thiserror::Error;

/// Longest resume id accepted (`Last-Event-ID`, `?last_event_id=`), in bytes. Two `u64`s
/// and a dash take 41; the rest is slack for ids of other servers, which get a reset.
pub const RESUME_ID_BYTES_MAX: usize = 128;

/// Bits of a stream id's sequence part in a packed cluster id (`ms << 20 | seq`). 2^20
/// entries per millisecond per stream is far above what one Redis can append.
pub const STREAM_SEQ_BITS: u32 = 20;
const STREAM_SEQ_MASK: u64 = (1 << STREAM_SEQ_BITS) - 1;

/// An id as a client sees it: `"{epoch}-{seq}"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId {
    /// Single node: the room's incarnation; cluster: the stream id's milliseconds.
    pub epoch: u64,
    /// Single node: the message's number in its room (from 1); cluster: the stream id's
    /// sequence part.
    pub seq: u64,
}

impl EventId {
    /// The client-facing form of a packed cluster id `ms << 20 | seq`.
    pub fn from_stream_packed(packed: u64) -> Self {
        Self {
            epoch: packed >> STREAM_SEQ_BITS,
            seq: packed & STREAM_SEQ_MASK,
        }
    }

    /// The packed cluster id of a stream id, `None` when it does not fit (`ms` ≥ 2^44 or
    /// `seq` ≥ 2^20: beyond any stream this server reads).
    pub fn stream_packed(self) -> Option<u64> {
        (self.seq <= STREAM_SEQ_MASK && self.epoch < (1 << (64 - STREAM_SEQ_BITS)))
            .then_some(self.epoch << STREAM_SEQ_BITS | self.seq)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.epoch, self.seq)
    }
}

/// Why a resume id could not be placed in the room: sent in `event: reset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    /// `E-S` whose epoch is not the room's current one (an earlier process or incarnation).
    UnknownEpoch,
    /// `E-S` of the current epoch (or stream) above anything sequenced.
    BeyondHead,
    /// A bare number: an id of a server from before epochs.
    BareNumber,
    /// Text of another shape.
    NotAnId,
    /// The room's owner started a new incarnation while the subscriber was connected.
    RoomRestarted,
}

impl ResetReason {
    /// The reason as written in the reset notice.
    pub fn text(self) -> &'static str {
        match self {
            Self::UnknownEpoch => "unknown epoch",
            Self::BeyondHead => "beyond the head",
            Self::BareNumber => "bare number",
            Self::NotAnId => "not an id",
            Self::RoomRestarted => "room restarted",
        }
    }
}

/// A resume id as the client sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeId {
    /// `E-S`: to be placed against the room's epoch and head.
    At(EventId),
    /// Not an id this server hands out: the client gets a reset.
    Unplaceable(ResetReason),
}

/// Why a resume id was refused (400).
#[derive(Debug, Clone, Copy, Error, PartialEq, Eq)]
pub enum ResumeIdError {
    /// Longer than [`RESUME_ID_BYTES_MAX`].
    #[error("resume id longer than {RESUME_ID_BYTES_MAX} bytes")]
    TooLong,
    /// A byte outside visible ASCII.
    #[error("resume id may only hold visible ASCII")]
    BadByte,
}

/// Parses a `Last-Event-ID` value (or `last_event_id` query value): `Ok(None)` when empty
/// (no resume, as the SSE spec says of an empty id), `Ok(Some(At))` for `E-S` with two
/// decimal `u64`s, `Ok(Some(Unplaceable))` for any other visible-ASCII text,
/// `Err` for garbage.
pub fn parse_resume_id(value: &[u8]) -> Result<Option<ResumeId>, ResumeIdError> {
    if value.len() > RESUME_ID_BYTES_MAX {
        return Err(ResumeIdError::TooLong);
    }
    if !value.iter().all(|b| b.is_ascii_graphic()) {
        return Err(ResumeIdError::BadByte);
    }
    if value.is_empty() {
        return Ok(None);
    }
    let digits = |part: &[u8]| -> Option<u64> {
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    if value.iter().all(u8::is_ascii_digit) {
        return Ok(Some(ResumeId::Unplaceable(ResetReason::BareNumber)));
    }
    let placed = value
        .iter()
        .position(|&b| b == b'-')
        .and_then(|dash| Some((digits(&value[..dash])?, digits(&value[dash + 1..])?)));
    Ok(Some(match placed {
        Some((epoch, seq)) => ResumeId::At(EventId { epoch, seq }),
        None => ResumeId::Unplaceable(ResetReason::NotAnId),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    type Parsed = Result<Option<ResumeId>, ResumeIdError>;

    #[test]
    fn resume_ids_table() {
        let at = |epoch, seq| Ok(Some(ResumeId::At(EventId { epoch, seq })));
        let reset = |reason| Ok(Some(ResumeId::Unplaceable(reason)));
        let long = "1".repeat(RESUME_ID_BYTES_MAX + 1);
        let cases: &[(&[u8], Parsed)] = &[
            (b"", Ok(None)),
            (b"1733450000000000-5", at(1_733_450_000_000_000, 5)),
            (b"0-0", at(0, 0)),
            (
                b"18446744073709551615-18446744073709551615",
                at(u64::MAX, u64::MAX),
            ),
            (b"5", reset(ResetReason::BareNumber)),
            (b"18446744073709551615", reset(ResetReason::BareNumber)),
            (b"99999999999999999999999", reset(ResetReason::BareNumber)),
            (b"18446744073709551616-1", reset(ResetReason::NotAnId)),
            (b"1-2-3", reset(ResetReason::NotAnId)),
            (b"-5", reset(ResetReason::NotAnId)),
            (b"5-", reset(ResetReason::NotAnId)),
            (b"+5-1", reset(ResetReason::NotAnId)),
            (b"soon", reset(ResetReason::NotAnId)),
            (long.as_bytes(), Err(ResumeIdError::TooLong)),
            (b"1 2", Err(ResumeIdError::BadByte)),
            ("é".as_bytes(), Err(ResumeIdError::BadByte)),
            (b"1\x00", Err(ResumeIdError::BadByte)),
        ];
        for (value, want) in cases {
            assert_eq!(
                parse_resume_id(value),
                *want,
                "{:?}",
                String::from_utf8_lossy(value)
            );
        }
    }

    #[test]
    fn stream_ids_pack_and_unpack() {
        for (text, packed) in [
            ("0-0", 0),
            ("0-1", 1),
            ("1-0", 1 << 20),
            ("1700000000000-7", (1_700_000_000_000 << 20) | 7),
        ] {
            let id = EventId::from_stream_packed(packed);
            assert_eq!(id.to_string(), text);
            assert_eq!(id.stream_packed(), Some(packed));
        }
        let too_big = [
            EventId {
                epoch: 1 << 44,
                seq: 0,
            },
            EventId {
                epoch: 1,
                seq: 1 << 20,
            },
            EventId {
                epoch: u64::MAX,
                seq: u64::MAX,
            },
        ];
        for id in too_big {
            assert_eq!(id.stream_packed(), None, "{id}");
        }
    }

    proptest::proptest! {
        #[test]
        fn every_id_shown_parses_back(epoch in proptest::num::u64::ANY, seq in proptest::num::u64::ANY) {
            let id = EventId { epoch, seq };
            let text = id.to_string();
            proptest::prop_assert_eq!(parse_resume_id(text.as_bytes()), Ok(Some(ResumeId::At(id))));
        }
    }
}
