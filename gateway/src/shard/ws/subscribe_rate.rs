//! The pace of one multiplexed WebSocket's subscribes (docs/PROTOCOL.md, Limits): a GCRA
//! (a token bucket in one number) allowing [`WS_SUBSCRIBE_BURST`] subscribes at once and
//! [`WS_SUBSCRIBES_PER_SEC`] sustained. The number of rooms a connection holds is bounded
//! (`WS_ROOMS_PER_CONN_MAX`), but each subscribe costs the server (admission, a history
//! replay, an `--auth-url` call, a Redis read in cluster mode) and a client could otherwise
//! subscribe and unsubscribe in a tight loop on one connection, which SSE can only do by
//! opening connections (bounded by `--max-new-connections-per-ip-per-sec`).
//!
//! The state is one `u32` in the driver's padding (an idle viewer's `Conn` does not grow,
//! and nothing is allocated): the bucket's theoretical arrival time in ticks of
//! [`SUBSCRIBE_TICK_MS`] on the process clock, wrapping after 13.6 years. Sans-IO: time
//! comes in as the time elapsed since the process clock's anchor.
//!
//! Owns: the arithmetic of the pace. Must not touch: what a refused subscribe gets
//! (ws_rooms.rs), the driver's other state (ws.rs).

use crate::shard::ws_rooms::WS_ROOMS_PER_CONN_MAX;
use std::time::Duration;

/// Subscribes one WebSocket connection may make per second, sustained (one earned every
/// [`SUBSCRIBE_TICK_MS`]): well above a person switching rooms, well below a loop.
pub(in crate::shard) const WS_SUBSCRIBES_PER_SEC: u32 = 10;
/// Subscribes one WebSocket connection may make at once, after a quiet while: twice its
/// rooms, so a client joining all of them (`?rooms=` counts too) and then replacing every
/// one is never refused.
pub(in crate::shard) const WS_SUBSCRIBE_BURST: u32 = 2 * WS_ROOMS_PER_CONN_MAX as u32;
/// The pace's tick: one subscribe is earned per tick.
pub(in crate::shard) const SUBSCRIBE_TICK_MS: u32 = 1000 / WS_SUBSCRIBES_PER_SEC;

const _: () = assert!(1000 % WS_SUBSCRIBES_PER_SEC == 0, "a whole tick");
// A connection's `?rooms=` (at most WS_ROOMS_PER_CONN_MAX, joined right after the upgrade
// while its bucket is full) is never refused by the pace.
const _: () = assert!(WS_SUBSCRIBE_BURST as usize >= WS_ROOMS_PER_CONN_MAX);

// It fits the driver's padding (measured: `WsDriver` 392 B and `Conn` 560 B, with it or
// without it); an `Instant` (16 B) would not.
const _: () = assert!(std::mem::size_of::<SubscribeRate>() == 4);

/// One connection's subscribe pace: the tick (wrapping) at which its bucket is full
/// again, `WS_SUBSCRIBE_BURST` ticks ahead of now at most. A value behind now is a full
/// bucket: the default, 0, is one at every tick but the last `WS_SUBSCRIBE_BURST` before
/// the count wraps (13.6 years after the process started), where it reads as a debt of
/// at most the burst (the same for a value left untouched for 13.6 years): it errs
/// towards refusing, for a few seconds, and only then.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(in crate::shard) struct SubscribeRate {
    full_at_tick: u32,
}

impl SubscribeRate {
    /// Takes one subscribe at `elapsed` (since the process clock's anchor), or refuses it
    /// with the wait until one is earned (at most one tick). A refusal changes nothing.
    #[must_use = "a refused subscribe must be answered with its wait"]
    pub(in crate::shard) fn handle_subscribe(&mut self, elapsed: Duration) -> Result<(), Duration> {
        let elapsed_ms = elapsed.as_millis();
        let tick_ms = u128::from(SUBSCRIBE_TICK_MS);
        // Wraps after 2^32 ticks (13.6 years): `ahead` below is read modulo that.
        let now = (elapsed_ms / tick_ms) as u32;
        let ahead = match self.full_at_tick.wrapping_sub(now) {
            // Behind now: full (a wrapped difference is far past the burst).
            ahead if ahead > WS_SUBSCRIBE_BURST => 0,
            ahead => ahead,
        };
        if ahead == WS_SUBSCRIBE_BURST {
            // Empty: the next subscribe is earned at the next tick.
            let into_tick = (elapsed_ms % tick_ms) as u64;
            return Err(Duration::from_millis(
                u64::from(SUBSCRIBE_TICK_MS) - into_tick,
            ));
        }
        self.full_at_tick = now.wrapping_add(ahead + 1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(SUBSCRIBE_TICK_MS as u64);

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
