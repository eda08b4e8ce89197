//! The self-describing publish payload: run id, room, per-room sequence number, the actual
//! send stamp and the scheduled send time, padded to a fixed size with a filler.
//!
//! Wire form (no newlines, so it fits one SSE `data:` line):
//! `rl1|<run as 8 hex digits>|<room>|<seq>|<sent unix ns>|<scheduled unix ns>|....`

use crate::proto::template::{format_u64, itoa_buffer};

/// Marker that starts every payload; found by substring search so the payload may be
/// embedded in a larger body (e.g. a JSON template).
pub const MAGIC: &[u8] = b"rl1|";

/// Byte used to pad the payload to the requested size.
pub const FILLER: u8 = b'.';

/// Largest payload size accepted (`--size`).
pub const PAYLOAD_BYTES_MAX: usize = 1024 * 1024;

/// Fields carried by one payload, borrowed from the bytes they were decoded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp<'a> {
    /// Run identifier; deliveries from another run (e.g. a previous sweep step) are stale.
    pub run: u32,
    /// Room the message was published to.
    pub room: &'a [u8],
    /// Per-room sequence number, starting at 1.
    pub seq: u64,
    /// Wall clock (CLOCK_REALTIME, unix ns) when the publish request was written.
    pub sent_ns: u64,
    /// Wall clock time (unix ns) at which the publish was scheduled.
    pub scheduled_ns: u64,
}

/// Appends the payload for `stamp` to `out`, padded with [`FILLER`] to `size` bytes
/// (payloads whose fields are longer than `size` are not truncated).
pub fn encode(out: &mut Vec<u8>, stamp: &Stamp<'_>, size: usize) {
    let start = out.len();
    let mut digits = itoa_buffer();
    out.extend_from_slice(MAGIC);
    let hex = b"0123456789abcdef";
    for shift in (0..8).rev() {
        out.push(hex[((stamp.run >> (shift * 4)) & 0xf) as usize]);
    }
    out.push(b'|');
    out.extend_from_slice(stamp.room);
    out.push(b'|');
    out.extend_from_slice(format_u64(&mut digits, stamp.seq));
    out.push(b'|');
    out.extend_from_slice(format_u64(&mut digits, stamp.sent_ns));
    out.push(b'|');
    out.extend_from_slice(format_u64(&mut digits, stamp.scheduled_ns));
    out.push(b'|');
    let written = out.len() - start;
    if written < size {
        out.resize(start + size, FILLER);
    }
}

/// Finds and decodes a payload inside `data`; `None` when there is none or it is malformed.
pub fn decode(data: &[u8]) -> Option<Stamp<'_>> {
    // The default body template is the payload alone: skip building a substring searcher.
    let at = if data.starts_with(MAGIC) {
        0
    } else {
        memchr::memmem::find(data, MAGIC)?
    };
    let mut rest = &data[at + MAGIC.len()..];
    let run_hex = take_field(&mut rest)?;
    if run_hex.len() != 8 {
        return None;
    }
    let mut run = 0u32;
    for &byte in run_hex {
        let nibble = match byte {
            b'0'..=b'9' => byte - b'0',
            b'a'..=b'f' => byte - b'a' + 10,
            _ => return None,
        };
        run = (run << 4) | u32::from(nibble);
    }
    let room = take_field(&mut rest)?;
    let seq = parse_u64(take_field(&mut rest)?)?;
    let sent_ns = parse_u64(take_field(&mut rest)?)?;
    let scheduled_ns = parse_u64(take_field(&mut rest)?)?;
    Some(Stamp {
        run,
        room,
        seq,
        sent_ns,
        scheduled_ns,
    })
}

fn take_field<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let bar = memchr::memchr(b'|', rest)?;
    let field = &rest[..bar];
    *rest = &rest[bar + 1..];
    Some(field)
}

/// Parses an unsigned decimal without sign or spaces; `None` on overflow or junk.
pub fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 {
        return None;
    }
    let mut value: u64 = 0;
    for &byte in digits {
        if !byte.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(byte - b'0'))?;
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Stamp<'static> {
        Stamp {
            run: 0xdead_beef,
            room: b"r12",
            seq: 77,
            sent_ns: 1_700_000_000_123_456_789,
            scheduled_ns: 1_700_000_000_000_000_000,
        }
    }

    #[test]
    fn round_trips_and_pads() {
        let mut out = Vec::new();
        encode(&mut out, &sample(), 100);
        assert_eq!(out.len(), 100);
        assert!(!out.contains(&b'\n'));
        assert_eq!(decode(&out), Some(sample()));
    }

    #[test]
    fn found_inside_a_larger_body() {
        let mut out = b"{\"data\":\"".to_vec();
        encode(&mut out, &sample(), 10);
        out.extend_from_slice(b"\"}");
        assert_eq!(decode(&out), Some(sample()));
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(decode(b"hello"), None);
        assert_eq!(decode(b"rl1|zzzzzzzz|r|1|2|3|"), None);
        assert_eq!(decode(b"rl1|00000001|r|x|2|3|"), None);
        assert_eq!(decode(b"rl1|00000001|r|1|2|3"), None);
        assert_eq!(parse_u64(b"99999999999999999999"), None);
    }
}
