//! The pace of one multiplexed WebSocket's subscribes (docs/PROTOCOL.md, Limits): a GCRA
//! (a token bucket in one number) allowing [`WS_SUBSCRIBE_BURST`] subscribes at once and
//! [`WS_SUBSCRIBES_PER_SEC`] sustained. The number of rooms a connection holds is bounded
//! (`WS_ROOMS_PER_CONN_MAX`), but each subscribe costs the server (admission, a history
//! replay, an `--auth-url` call, a Redis read in cluster mode) and a client could otherwise
//! subscribe and unsubscribe in a tight loop on one connection, which SSE can only do by
//! opening connections (bounded by `--max-new-connections-per-ip-per-sec`).
//!
//! The arithmetic is the gateway's pace (`ringcast_core::pace`, a GCRA shared with the
//! HTTP/2 and HTTP/3 stream pace); its state is one `u32` in the driver's padding (an idle
//! viewer's `Conn` does not grow, and nothing is allocated).
//!
//! Owns: the WebSocket's pace. Must not touch: what a refused subscribe gets
//! (ws_rooms.rs), the driver's other state (ws.rs).

use crate::shard::ws_rooms::WS_ROOMS_PER_CONN_MAX;
use ringcast_core::pace::{Bucket, Pace};
use std::time::Duration;

/// Subscribes one WebSocket connection may make per second, sustained (one earned every
/// tick of the pace, 100 ms): well above a person switching rooms, well below a loop.
pub(in crate::shard) const WS_SUBSCRIBES_PER_SEC: u32 = 10;
/// Subscribes one WebSocket connection may make at once, after a quiet while: twice its
/// rooms, so a client joining all of them (`?rooms=` counts too) and then replacing every
/// one is never refused.
pub(in crate::shard) const WS_SUBSCRIBE_BURST: u32 = 2 * WS_ROOMS_PER_CONN_MAX as u32;

/// The pace as the GCRA takes it.
const WS_SUBSCRIBE_PACE: Pace = Pace::per_sec(WS_SUBSCRIBE_BURST, WS_SUBSCRIBES_PER_SEC);

// A connection's `?rooms=` (at most WS_ROOMS_PER_CONN_MAX, joined right after the upgrade
// while its bucket is full) is never refused by the pace.
const _: () = assert!(WS_SUBSCRIBE_BURST as usize >= WS_ROOMS_PER_CONN_MAX);

// It fits the driver's padding (measured: `WsDriver` 328 B and `Conn` 496 B, with it or
// without it); an `Instant` (16 B) would not.
const _: () = assert!(std::mem::size_of::<SubscribeRate>() == 4);

/// One connection's subscribe pace: its bucket (`ringcast_core::pace::Bucket`, where a
/// default is a full bucket at every tick but the last `WS_SUBSCRIBE_BURST` before the tick
/// count wraps, 13.6 years after the process started).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(in crate::shard) struct SubscribeRate {
    bucket: Bucket,
}

impl SubscribeRate {
    /// Takes one subscribe at `elapsed` (since the process clock's anchor), or refuses it
    /// with the wait until one is earned (at most one tick), in whole milliseconds rounded
    /// up: it is sent as `retry_after_ms`, and a client waiting that long must be taken. A
    /// refusal changes nothing.
    #[must_use = "a refused subscribe must be answered with its wait"]
    pub(in crate::shard) fn handle_subscribe(&mut self, elapsed: Duration) -> Result<(), Duration> {
        self.bucket
            .handle_take(elapsed, WS_SUBSCRIBE_PACE)
            .map_err(|wait| {
                Duration::from_millis(
                    u64::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(u64::MAX),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = WS_SUBSCRIBE_PACE.tick();

    /// How many of `n` subscribes at `at` are taken.
    fn take(rate: &mut SubscribeRate, at: Duration, n: u32) -> u32 {
        (0..n).filter(|_| rate.handle_subscribe(at).is_ok()).count() as u32
    }

    #[test]
    fn a_full_burst_at_once_then_one_per_tick() {
        let mut rate = SubscribeRate::default();
        let start = Duration::from_secs(5);
        assert_eq!(take(&mut rate, start, 1000), WS_SUBSCRIBE_BURST);
        // Empty: refused until the next tick, with the wait to it.
        assert_eq!(rate.handle_subscribe(start), Err(TICK));
        let later = start + Duration::from_millis(30);
        assert_eq!(
            rate.handle_subscribe(later),
            Err(TICK - Duration::from_millis(30))
        );
        assert_eq!(take(&mut rate, start + TICK, 10), 1);
        // Sustained: a client trying 5 a tick for 10 s (100 ticks) gets one a tick.
        let mut taken = 0;
        let mut at = start + TICK;
        for _ in 0..100 {
            at += TICK;
            taken += take(&mut rate, at, 5);
        }
        assert_eq!(taken, 10 * WS_SUBSCRIBES_PER_SEC);
    }

    #[test]
    fn a_refusal_costs_nothing_and_the_wait_it_names_is_enough() {
        let mut rate = SubscribeRate::default();
        let start = Duration::from_millis(1234);
        assert_eq!(
            take(&mut rate, start, WS_SUBSCRIBE_BURST),
            WS_SUBSCRIBE_BURST
        );
        let wait = rate.handle_subscribe(start).unwrap_err();
        for _ in 0..100 {
            assert_eq!(rate.handle_subscribe(start), Err(wait), "retrying is free");
        }
        assert!(wait <= TICK && !wait.is_zero());
        assert!(rate
            .handle_subscribe(start + wait - Duration::from_millis(1))
            .is_err());
        assert_eq!(rate.handle_subscribe(start + wait), Ok(()));
        // Between two milliseconds (34.5 ms into a tick): the wait is sent in whole
        // milliseconds, rounded up, and waiting that long is enough.
        let mut rate = SubscribeRate::default();
        let between = start + Duration::from_micros(500);
        assert_eq!(
            take(&mut rate, between, WS_SUBSCRIBE_BURST),
            WS_SUBSCRIBE_BURST
        );
        let wait = rate.handle_subscribe(between).unwrap_err();
        assert_eq!(wait, Duration::from_millis(66));
        assert_eq!(rate.handle_subscribe(between + wait), Ok(()));
    }

    #[test]
    fn a_quiet_while_refills_the_bucket_up_to_the_burst_only() {
        let mut rate = SubscribeRate::default();
        let start = Duration::from_secs(60);
        assert_eq!(
            take(&mut rate, start, WS_SUBSCRIBE_BURST),
            WS_SUBSCRIBE_BURST
        );
        // Ten ticks earn ten.
        assert_eq!(take(&mut rate, start + 10 * TICK, 1000), 10);
        // An hour earns the burst, not more.
        let hour = start + Duration::from_secs(3600);
        assert_eq!(take(&mut rate, hour, 1000), WS_SUBSCRIBE_BURST);
        // `?rooms=` on a new connection (default state) at any time: all of them taken.
        for at in [Duration::ZERO, TICK, Duration::from_secs(86_400 * 400)] {
            let mut fresh = SubscribeRate::default();
            assert_eq!(
                take(&mut fresh, at, WS_ROOMS_PER_CONN_MAX as u32),
                WS_ROOMS_PER_CONN_MAX as u32
            );
        }
    }

    #[test]
    fn the_tick_count_wrapping_keeps_the_pace() {
        // 2^32 ticks after the anchor the tick count wraps to 0: the bucket keeps its
        // debt across it, and refills as before.
        let wrap = TICK * u32::MAX + TICK;
        let mut rate = SubscribeRate::default();
        assert_eq!(take(&mut rate, wrap - 300 * TICK, 1000), WS_SUBSCRIBE_BURST);
        let before = wrap - 3 * TICK;
        assert_eq!(take(&mut rate, before, 1000), WS_SUBSCRIBE_BURST);
        assert_eq!(take(&mut rate, wrap, 1000), 3);
        assert!(rate.handle_subscribe(wrap).is_err());
        assert_eq!(
            take(&mut rate, wrap + TICK * WS_SUBSCRIBE_BURST, 1000),
            WS_SUBSCRIBE_BURST
        );
    }
}
