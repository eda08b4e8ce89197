//! A pace: at most `burst` actions at once and `per_sec` a second sustained, as a GCRA (a
//! token bucket kept as one number, the time at which it is full again). The gateway paces
//! what one connection may start without opening a new connection: a multiplexed
//! WebSocket's subscribes (`WS_SUBSCRIBE_BURST`), an HTTP/2 or HTTP/3 connection's new
//! streams (companion/bridge.rs).
//!
//! The state, [`Bucket`], is one `u32` (it fits a connection's padding, nothing is
//! allocated): the bucket's theoretical arrival time in ticks of the pace (one action
//! earned per tick) since the process clock's anchor, wrapping after 2^32 ticks (13.6 years
//! at 10 a second, 49 days at 1000). Sans-IO: time comes in as the time elapsed since that
//! anchor.
//!
//! Owns: the arithmetic. Must not touch: what a refused action gets, or when an action is
//! given back (the callers').

use std::time::Duration;

/// A limit: `burst` actions at once (after a quiet while), one more every `tick_us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    burst: u32,
    tick_us: u32,
}

impl Pace {
    /// `burst` at once and `per_sec` a second sustained (a tick of 10^6 / `per_sec` µs,
    /// rounded down: exact when `per_sec` divides 10^6, else a hair faster); `per_sec` is 1
    /// to 10^6 and `burst` at least 1 and below 2^31 (a bucket's debt is read modulo 2^32
    /// ticks).
    pub const fn per_sec(burst: u32, per_sec: u32) -> Pace {
        assert!(per_sec > 0 && per_sec <= 1_000_000, "a tick of 1 µs to 1 s");
        assert!(burst > 0 && burst < 1 << 31, "a burst read modulo 2^32");
        Pace {
            burst,
            tick_us: 1_000_000 / per_sec,
        }
    }

    /// Actions at once.
    pub const fn burst(self) -> u32 {
        self.burst
    }

    /// The time one action is earned in.
    pub const fn tick(self) -> Duration {
        Duration::from_micros(self.tick_us as u64)
    }

    /// The tick (wrapping) `elapsed` falls in, and how far into it (µs).
    fn now(self, elapsed: Duration) -> (u32, u64) {
        let elapsed_us = elapsed.as_micros();
        let tick_us = u128::from(self.tick_us);
        // Wraps after 2^32 ticks: `Bucket::ahead` reads differences modulo that.
        ((elapsed_us / tick_us) as u32, (elapsed_us % tick_us) as u64)
    }
}

/// One paced thing's bucket: the tick (wrapping) at which it is full again, `burst` ticks
/// ahead of now at most. A value behind now is a full bucket: the default, 0, is one at
/// every tick but the last `burst` before the count wraps, where it reads as a debt of at
/// most the burst (the same for a value left untouched for 2^32 ticks): it errs towards
/// refusing, for `burst` ticks, and only then.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    full_at_tick: u32,
}

const _: () = assert!(std::mem::size_of::<Bucket>() == 4);

impl Bucket {
    /// A bucket full at `elapsed`: unlike the default, full whatever the time (the default
    /// reads as a debt in the last `burst` ticks before the tick count wraps).
    pub fn full_at(elapsed: Duration, pace: Pace) -> Bucket {
        Bucket {
            full_at_tick: pace.now(elapsed).0,
        }
    }

    /// Ticks the bucket is behind full at tick `now` (0: full; `burst`: empty).
    fn ahead(self, now: u32, pace: Pace) -> u32 {
        match self.full_at_tick.wrapping_sub(now) {
            // Behind now: full (a wrapped difference is far past the burst).
            ahead if ahead > pace.burst => 0,
            ahead => ahead,
        }
    }

    /// Takes one action at `elapsed` (since the process clock's anchor), or refuses it with
    /// the wait until one is earned (at most one tick). A refusal changes nothing.
    #[must_use = "a refused action must be answered with its wait"]
    pub fn handle_take(&mut self, elapsed: Duration, pace: Pace) -> Result<(), Duration> {
        let (now, into_tick_us) = pace.now(elapsed);
        let ahead = self.ahead(now, pace);
        if ahead == pace.burst {
            // Empty: the next action is earned at the next tick.
            return Err(Duration::from_micros(
                u64::from(pace.tick_us) - into_tick_us,
            ));
        }
        self.full_at_tick = now.wrapping_add(ahead + 1);
        Ok(())
    }

    /// Gives back one action taken earlier (it turned out to cost nothing worth pacing): the
    /// bucket is one action fuller, up to full. Giving back more than was taken only fills
    /// the bucket, which a quiet while does anyway.
    pub fn handle_give_back(&mut self, elapsed: Duration, pace: Pace) {
        let (now, _) = pace.now(elapsed);
        if self.ahead(now, pace) > 0 {
            self.full_at_tick = self.full_at_tick.wrapping_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACE: Pace = Pace::per_sec(128, 10);
    const BURST: u32 = PACE.burst();
    const TICK: Duration = PACE.tick();

    /// How many of `n` actions at `at` are taken.
    fn take(bucket: &mut Bucket, at: Duration, n: u32) -> u32 {
        (0..n)
            .filter(|_| bucket.handle_take(at, PACE).is_ok())
            .count() as u32
    }

    #[test]
    fn a_full_burst_at_once_then_one_per_tick() {
        let mut bucket = Bucket::default();
        let start = Duration::from_secs(5);
        assert_eq!(take(&mut bucket, start, 1000), BURST);
        // Empty: refused until the next tick, with the wait to it.
        assert_eq!(bucket.handle_take(start, PACE), Err(TICK));
        let later = start + Duration::from_millis(30);
        assert_eq!(
            bucket.handle_take(later, PACE),
            Err(TICK - Duration::from_millis(30))
        );
        assert_eq!(take(&mut bucket, start + TICK, 10), 1);
        // Sustained: a client trying 5 a tick for 10 s (100 ticks) gets one a tick.
        let mut taken = 0;
        let mut at = start + TICK;
        for _ in 0..100 {
            at += TICK;
            taken += take(&mut bucket, at, 5);
        }
        assert_eq!(taken, 100);
    }

    #[test]
    fn a_refusal_costs_nothing_and_the_wait_it_names_is_enough() {
        let mut bucket = Bucket::default();
        let start = Duration::from_millis(1234);
        assert_eq!(take(&mut bucket, start, BURST), BURST);
        let wait = bucket.handle_take(start, PACE).unwrap_err();
        for _ in 0..100 {
            assert_eq!(
                bucket.handle_take(start, PACE),
                Err(wait),
                "retrying is free"
            );
        }
        assert!(wait <= TICK && !wait.is_zero());
        assert!(bucket
            .handle_take(start + wait - Duration::from_millis(1), PACE)
            .is_err());
        assert_eq!(bucket.handle_take(start + wait, PACE), Ok(()));
    }

    #[test]
    fn a_quiet_while_refills_the_bucket_up_to_the_burst_only() {
        let mut bucket = Bucket::default();
        let start = Duration::from_secs(60);
        assert_eq!(take(&mut bucket, start, BURST), BURST);
        // Ten ticks earn ten.
        assert_eq!(take(&mut bucket, start + 10 * TICK, 1000), 10);
        // An hour earns the burst, not more.
        let hour = start + Duration::from_secs(3600);
        assert_eq!(take(&mut bucket, hour, 1000), BURST);
        // A new bucket (the default) at any time: a full burst.
        for at in [Duration::ZERO, TICK, Duration::from_secs(86_400 * 400)] {
            assert_eq!(take(&mut Bucket::default(), at, 1000), BURST);
        }
    }

    #[test]
    fn the_tick_count_wrapping_keeps_the_pace() {
        // 2^32 ticks after the anchor the tick count wraps to 0: the bucket keeps its
        // debt across it, and refills as before.
        let wrap = TICK * u32::MAX + TICK;
        let mut bucket = Bucket::default();
        assert_eq!(take(&mut bucket, wrap - 300 * TICK, 1000), BURST);
        let before = wrap - 3 * TICK;
        assert_eq!(take(&mut bucket, before, 1000), BURST);
        assert_eq!(take(&mut bucket, wrap, 1000), 3);
        assert!(bucket.handle_take(wrap, PACE).is_err());
        assert_eq!(take(&mut bucket, wrap + TICK * BURST, 1000), BURST);
        // A default bucket just before the wrap reads as a debt; one made full does not.
        let just_before = wrap - 2 * TICK;
        assert_eq!(take(&mut Bucket::default(), just_before, 1000), BURST - 2);
        let mut full = Bucket::full_at(just_before, PACE);
        assert_eq!(take(&mut full, just_before, 1000), BURST);
    }

    /// Any rate: its tick, and that many earned in a second.
    #[test]
    fn any_rate_earns_its_count_in_a_second() {
        for per_sec in [1, 3, 7, 10, 13, 100, 333, 999, 1000] {
            let pace = Pace::per_sec(1, per_sec);
            assert_eq!(
                pace.tick(),
                Duration::from_micros(1_000_000 / u64::from(per_sec))
            );
            let mut bucket = Bucket::default();
            let start = Duration::from_secs(9);
            assert_eq!(bucket.handle_take(start, pace), Ok(()));
            // Trying every 100 µs for a second: one a tick, `per_sec` in all.
            let taken = (1..=10_000u64)
                .filter(|n| {
                    let at = start + Duration::from_micros(100 * n);
                    bucket.handle_take(at, pace).is_ok()
                })
                .count() as u32;
            assert_eq!(taken, per_sec, "{per_sec} a second");
        }
    }

    #[test]
    fn what_is_given_back_can_be_taken_again_but_never_past_full() {
        let mut bucket = Bucket::default();
        let start = Duration::from_secs(7);
        // Actions given back as they end never empty the bucket, however many.
        for _ in 0..10_000 {
            assert_eq!(bucket.handle_take(start, PACE), Ok(()));
            bucket.handle_give_back(start, PACE);
        }
        assert_eq!(bucket, Bucket::full_at(start, PACE));
        // Emptied, one given back is one more taken.
        assert_eq!(take(&mut bucket, start, 1000), BURST);
        bucket.handle_give_back(start, PACE);
        assert_eq!(take(&mut bucket, start, 1000), 1);
        // Giving back to a full bucket leaves it full: still the burst, not more.
        let later = start + Duration::from_secs(3600);
        for _ in 0..10 {
            bucket.handle_give_back(later, PACE);
        }
        assert_eq!(take(&mut bucket, later, 1000), BURST);
    }
}
