//! Hierarchical timer wheel for per-connection tickers (heartbeats, idle and header
//! timeouts).
//!
//! The wheel owns every live timer of one shard. It is sans-IO: time only comes in through
//! `now` arguments and [`TimerWheel::poll_timeout`] tells the driver when to wake up.
//!
//! # Layout
//!
//! Time is counted in ticks of a fixed resolution (`tick`, 1–10 ms in the gateway) from the
//! instant the wheel was created. There are [`LEVELS`] levels of [`SLOTS_PER_LEVEL`] slots;
//! a slot of level `l` spans `64^l` ticks, so the wheel covers `64^4` ticks (4.6 hours at
//! 1 ms). A timer sits in the level given by the highest bit in which its deadline tick
//! differs from the current tick; when time reaches the start of a higher-level slot, the
//! slot's timers are cascaded down. Deadlines beyond the wheel's range are parked in the
//! farthest top-level slot and re-placed from their true deadline when it is reached.
//!
//! Timers live in a slab preallocated for `capacity_max` entries and are linked into their
//! slot with intrusive doubly-linked lists, so insert, cancel and reset are O(1) and never
//! allocate; expiry is amortised O(1) (a timer is moved at most once per level, and a
//! per-level occupancy bitmap skips empty slots, so idle stretches cost nothing).
//!
//! # Keys
//!
//! [`TimerKey`] is index + generation and is neither `Clone` nor `Copy`: it belongs to the
//! one connection that armed the timer. When a timer expires or is cancelled its slab entry
//! gets a new generation, so a key kept past that point is stale and can never cancel or move
//! another connection's timer.

use std::time::{Duration, Instant};

use thiserror::Error;

/// Bits of the tick number consumed by one level.
const SLOT_BITS: usize = 6;
/// Slots per level (one bit each in the level's occupancy bitmap).
pub const SLOTS_PER_LEVEL: usize = 1 << SLOT_BITS;
/// Levels of the wheel.
pub const LEVELS: usize = 4;
/// Ticks covered by the whole wheel.
const RANGE_TICKS: u64 = 1 << (SLOT_BITS * LEVELS);
/// Ticks covered by one slot of the top level.
const TOP_SLOT_TICKS: u64 = 1 << (SLOT_BITS * (LEVELS - 1));
/// Farthest a timer is placed ahead of the current tick. Placing it one top-level slot
/// short of the full range keeps a parked timer out of the top-level slot holding the
/// current tick, so slot order stays time order.
const PLACEMENT_AHEAD_MAX_TICKS: u64 = RANGE_TICKS - TOP_SLOT_TICKS - 1;
/// Deadlines are clamped to this many ticks after the wheel's creation (8,900 years at
/// 1 ms), which keeps all tick arithmetic far from overflow.
const DEADLINE_TICKS_MAX: u64 = 1 << 48;
/// Coarsest accepted resolution.
pub const TICK_MAX: Duration = Duration::from_secs(1);
/// Largest accepted `capacity_max` (slab indices are `u32`, one value is the list end).
pub const CAPACITY_MAX: usize = (u32::MAX - 1) as usize;
/// List index of the ready list: timers that are due and wait for `poll_expired`.
const READY_LIST: usize = LEVELS * SLOTS_PER_LEVEL;
/// Slot lists plus the ready list.
const LISTS: usize = READY_LIST + 1;
/// End of a linked list.
const NIL: u32 = u32::MAX;

const _: () = assert!(SLOTS_PER_LEVEL == u64::BITS as usize); // occupancy bitmap is a u64
const _: () = assert!(SLOT_BITS * LEVELS < 48);
const _: () = assert!(DEADLINE_TICKS_MAX > RANGE_TICKS);
const _: () = assert!(PLACEMENT_AHEAD_MAX_TICKS > TOP_SLOT_TICKS);
const _: () = assert!(LISTS < NIL as usize);

/// Handle to one armed timer, returned by [`TimerWheel::insert`].
///
/// Deliberately not `Clone`/`Copy`: exactly one owner may cancel or reset the timer. The
/// generation makes a key stale once its timer expired or was cancelled.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct TimerKey {
    index: u32,
    generation: u32,
}

/// [`TimerWheel::insert`] failed because `capacity_max` timers are already live.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[error("timer wheel full: capacity_max live timers reached")]
pub struct WheelFull;

/// One slab entry; free entries are chained through `next`.
struct Entry<T> {
    /// Bumped every time the entry is freed, so old keys go stale.
    generation: u32,
    /// `Some` while the timer is live.
    value: Option<T>,
    /// Deadline rounded up to whole ticks since the wheel's origin.
    deadline_tick: u64,
    /// List the entry is linked into while live.
    list: u32,
    prev: u32,
    next: u32,
}

/// Earliest non-empty slot of the wheel.
#[derive(Debug, Clone, Copy)]
struct Expiration {
    level: usize,
    slot: usize,
    /// Tick at which the slot must be processed.
    start_tick: u64,
}

/// A hierarchical timer wheel holding at most `capacity_max` live timers, each carrying a
/// `T` returned to the owner when it expires.
pub struct TimerWheel<T> {
    origin: Instant,
    tick_nanos: u64,
    /// Every tick `<= elapsed_tick` has been processed.
    elapsed_tick: u64,
    entries: Vec<Entry<T>>,
    capacity_max: usize,
    free_head: u32,
    heads: [u32; LISTS],
    /// Bit `s` of `occupied[l]` is set when slot `s` of level `l` is non-empty.
    occupied: [u64; LEVELS],
    len: usize,
}

impl<T> TimerWheel<T> {
    /// Creates an empty wheel whose tick 0 is `now`.
    ///
    /// `tick` is the resolution: timers fire at most one tick late (when polled on time) and
    /// never early. `capacity_max` bounds the number of live timers; the slab is reserved for
    /// it up front.
    ///
    /// # Panics
    ///
    /// If `tick` is zero or above [`TICK_MAX`], or `capacity_max` is above [`CAPACITY_MAX`].
    pub fn new(now: Instant, tick: Duration, capacity_max: usize) -> Self {
        assert!(!tick.is_zero(), "timer wheel tick must be non-zero");
        assert!(
            tick <= TICK_MAX,
            "timer wheel tick {tick:?} above {TICK_MAX:?}"
        );
        assert!(
            capacity_max <= CAPACITY_MAX,
            "capacity_max {capacity_max} too large"
        );
        Self {
            origin: now,
            tick_nanos: tick.as_nanos() as u64,
            elapsed_tick: 0,
            entries: Vec::with_capacity(capacity_max),
            capacity_max,
            free_head: NIL,
            heads: [NIL; LISTS],
            occupied: [0; LEVELS],
            len: 0,
        }
    }

    /// Arms a timer firing at `deadline` (rounded up to the next tick) that yields `value`.
    ///
    /// A deadline already in the past fires on the next [`poll_expired`](Self::poll_expired).
    /// Fails with [`WheelFull`] when `capacity_max` timers are live (`value` is dropped).
    pub fn insert(&mut self, deadline: Instant, value: T) -> Result<TimerKey, WheelFull> {
        let index = self.allocate()?;
        let deadline_tick = self.deadline_tick(deadline);
        let entry = &mut self.entries[index as usize];
        entry.value = Some(value);
        entry.deadline_tick = deadline_tick;
        let generation = entry.generation;
        self.place(index);
        self.len += 1;
        Ok(TimerKey { index, generation })
    }

    /// Disarms the timer of `key`, returning its value if it was still live (not yet
    /// returned by `poll_expired`). A stale key returns `None` and touches nothing.
    pub fn cancel(&mut self, key: TimerKey) -> Option<T> {
        if !self.contains(&key) {
            return None;
        }
        self.unlink(key.index);
        Some(self.release(key.index))
    }

    /// Moves the live timer of `key` to `deadline` (heartbeat re-arm) without reallocating.
    /// A timer that is due but not yet polled is re-armed too. Returns `false`, changing
    /// nothing, if the key is stale.
    pub fn reset(&mut self, key: &TimerKey, deadline: Instant) -> bool {
        if !self.contains(key) {
            return false;
        }
        self.unlink(key.index);
        self.entries[key.index as usize].deadline_tick = self.deadline_tick(deadline);
        self.place(key.index);
        true
    }

    /// Whether the timer of `key` is still live.
    pub fn contains(&self, key: &TimerKey) -> bool {
        self.entries
            .get(key.index as usize)
            .is_some_and(|entry| entry.generation == key.generation && entry.value.is_some())
    }

    /// Returns the next expired timer's value (deadline `<= now`), removing the timer, or
    /// `None` when nothing more is due. Call it in a loop until `None`.
    ///
    /// Timers come out in deadline order at tick resolution; timers that were already due
    /// when inserted or reset come out first. `now` should not decrease between calls (an
    /// earlier `now` is treated as the latest one seen). One call may cascade a higher-level
    /// slot, which costs O(timers in it); that work is amortised over those timers' lifetimes.
    pub fn poll_expired(&mut self, now: Instant) -> Option<T> {
        let now_tick = self.now_tick(now);
        loop {
            let head = self.heads[READY_LIST];
            if head != NIL {
                self.unlink(head);
                return Some(self.release(head));
            }
            match self.next_expiration() {
                Some(expiration) if expiration.start_tick <= now_tick => {
                    self.elapsed_tick = expiration.start_tick;
                    self.cascade(expiration);
                }
                _ => {
                    self.elapsed_tick = self.elapsed_tick.max(now_tick);
                    return None;
                }
            }
        }
    }

    /// When the driver should next call [`poll_expired`](Self::poll_expired); `None` if no
    /// timer is live.
    ///
    /// Never later than the earliest deadline rounded up to the tick. It may be earlier when
    /// the next event is the cascade of a higher-level slot: polling then returns `None` and
    /// `poll_timeout` moves forward. A timer that is already due yields an instant in the past.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.heads[READY_LIST] != NIL {
            return Some(self.tick_instant(self.elapsed_tick));
        }
        self.next_expiration()
            .map(|expiration| self.tick_instant(expiration.start_tick))
    }

    /// Number of live timers (armed, or due and not yet polled). Exported as the "live
    /// tickers" gauge, so a leaked timer shows here.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no timer is live.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Most timers that may be live at once.
    pub fn capacity_max(&self) -> usize {
        self.capacity_max
    }

    /// Takes a free slab entry (reusing freed ones first).
    fn allocate(&mut self) -> Result<u32, WheelFull> {
        if self.free_head != NIL {
            let index = self.free_head;
            self.free_head = self.entries[index as usize].next;
            return Ok(index);
        }
        if self.entries.len() >= self.capacity_max {
            return Err(WheelFull);
        }
        self.entries.push(Entry {
            generation: 0,
            value: None,
            deadline_tick: 0,
            list: NIL,
            prev: NIL,
            next: NIL,
        });
        Ok((self.entries.len() - 1) as u32)
    }

    /// Frees an unlinked live entry and returns its value.
    fn release(&mut self, index: u32) -> T {
        let entry = &mut self.entries[index as usize];
        let value = entry.value.take().expect("released entry is live");
        entry.generation = entry.generation.wrapping_add(1);
        entry.list = NIL;
        entry.prev = NIL;
        entry.next = self.free_head;
        self.free_head = index;
        self.len -= 1;
        value
    }

    /// Links an unlinked live entry into the ready list or the slot of its deadline.
    fn place(&mut self, index: u32) {
        let deadline_tick = self.entries[index as usize].deadline_tick;
        if deadline_tick <= self.elapsed_tick {
            self.link(READY_LIST, index);
            return;
        }
        let placement_tick = deadline_tick.min(self.elapsed_tick + PLACEMENT_AHEAD_MAX_TICKS);
        let level = level_for(self.elapsed_tick, placement_tick);
        let slot = ((placement_tick >> (SLOT_BITS * level)) as usize) & (SLOTS_PER_LEVEL - 1);
        self.link(level * SLOTS_PER_LEVEL + slot, index);
        self.occupied[level] |= 1 << slot;
    }

    /// Pushes `index` at the front of `list`.
    fn link(&mut self, list: usize, index: u32) {
        let head = self.heads[list];
        if head != NIL {
            self.entries[head as usize].prev = index;
        }
        let entry = &mut self.entries[index as usize];
        entry.list = list as u32;
        entry.prev = NIL;
        entry.next = head;
        self.heads[list] = index;
    }

    /// Removes a live entry from its list, clearing the slot's occupancy bit if emptied.
    fn unlink(&mut self, index: u32) {
        let Entry {
            list, prev, next, ..
        } = self.entries[index as usize];
        let list = list as usize;
        if prev == NIL {
            self.heads[list] = next;
        } else {
            self.entries[prev as usize].next = next;
        }
        if next != NIL {
            self.entries[next as usize].prev = prev;
        }
        if self.heads[list] == NIL && list < READY_LIST {
            let (level, slot) = (list / SLOTS_PER_LEVEL, list % SLOTS_PER_LEVEL);
            self.occupied[level] &= !(1 << slot);
        }
        let entry = &mut self.entries[index as usize];
        entry.list = NIL;
        entry.prev = NIL;
        entry.next = NIL;
    }

    /// Re-places every timer of a slot whose start tick is now `elapsed_tick`: level-0 (and
    /// due) timers go to the ready list, others to a lower level.
    fn cascade(&mut self, expiration: Expiration) {
        let list = expiration.level * SLOTS_PER_LEVEL + expiration.slot;
        let mut index = self.heads[list];
        self.heads[list] = NIL;
        self.occupied[expiration.level] &= !(1 << expiration.slot);
        while index != NIL {
            let next = self.entries[index as usize].next;
            self.place(index);
            index = next;
        }
    }

    /// The earliest non-empty slot across levels.
    fn next_expiration(&self) -> Option<Expiration> {
        let mut earliest: Option<Expiration> = None;
        for level in 0..LEVELS {
            let occupied = self.occupied[level];
            if occupied == 0 {
                continue;
            }
            let slot_ticks = 1u64 << (SLOT_BITS * level);
            let level_ticks = slot_ticks << SLOT_BITS;
            let now_slot =
                ((self.elapsed_tick >> (SLOT_BITS * level)) as usize) & (SLOTS_PER_LEVEL - 1);
            let ahead = occupied.rotate_right(now_slot as u32).trailing_zeros() as usize;
            let slot = (now_slot + ahead) % SLOTS_PER_LEVEL;
            let level_start = self.elapsed_tick & !(level_ticks - 1);
            let mut start_tick = level_start + slot as u64 * slot_ticks;
            if start_tick <= self.elapsed_tick {
                // Only a timer parked beyond the wheel's range wraps into a top-level slot
                // at or before the current one; it belongs to the next rotation.
                debug_assert_eq!(level, LEVELS - 1);
                start_tick += level_ticks;
            }
            let earlier = match earliest {
                None => true,
                Some(e) => start_tick < e.start_tick,
            };
            if earlier {
                earliest = Some(Expiration {
                    level,
                    slot,
                    start_tick,
                });
            }
        }
        earliest
    }

    /// Whole ticks from the origin to `now`, rounded down.
    fn now_tick(&self, now: Instant) -> u64 {
        let nanos = now.saturating_duration_since(self.origin).as_nanos();
        (nanos / u128::from(self.tick_nanos)).min(u128::from(DEADLINE_TICKS_MAX)) as u64
    }

    /// Whole ticks from the origin to `deadline`, rounded up so a timer never fires early.
    fn deadline_tick(&self, deadline: Instant) -> u64 {
        let nanos = deadline.saturating_duration_since(self.origin).as_nanos();
        nanos
            .div_ceil(u128::from(self.tick_nanos))
            .min(u128::from(DEADLINE_TICKS_MAX)) as u64
    }

    /// The instant of tick `tick`.
    fn tick_instant(&self, tick: u64) -> Instant {
        let nanos = u128::from(tick) * u128::from(self.tick_nanos);
        let duration = Duration::new(
            (nanos / 1_000_000_000) as u64,
            (nanos % 1_000_000_000) as u32,
        );
        // Ticks are clamped to DEADLINE_TICKS_MAX and tick to TICK_MAX: at most 2^48 s.
        self.origin
            .checked_add(duration)
            .expect("tick instant within Instant's range")
    }
}

impl<T> std::fmt::Debug for TimerWheel<T> {
    /// Summary only: values are not required to be `Debug`, and a full dump of 100k
    /// timers helps nobody.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimerWheel")
            .field("tick_nanos", &self.tick_nanos)
            .field("elapsed_tick", &self.elapsed_tick)
            .field("len", &self.len)
            .field("capacity_max", &self.capacity_max)
            .finish_non_exhaustive()
    }
}

/// Level holding a timer placed at `placement_tick` while the wheel is at `elapsed_tick`:
/// the level of the highest bit in which the two differ.
fn level_for(elapsed_tick: u64, placement_tick: u64) -> usize {
    // The low bits are forced on so that equal ticks land in level 0.
    let masked = (elapsed_tick ^ placement_tick) | (SLOTS_PER_LEVEL as u64 - 1);
    let significant = (u64::BITS - 1 - masked.leading_zeros()) as usize;
    (significant / SLOT_BITS).min(LEVELS - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const MS: Duration = Duration::from_millis(1);

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    /// Polls everything due at `now`.
    fn drain<T>(wheel: &mut TimerWheel<T>, now: Instant) -> Vec<T> {
        std::iter::from_fn(|| wheel.poll_expired(now)).collect()
    }

    /// Steps virtual time 1 ms at a time and records the tick each value fired at.
    fn fire_ticks<T>(wheel: &mut TimerWheel<T>, base: Instant, until_ms: u64) -> Vec<(u64, T)> {
        let mut fired = Vec::new();
        for ms in 0..=until_ms {
            for value in drain(wheel, at(base, ms)) {
                fired.push((ms, value));
            }
        }
        fired
    }

    #[test]
    fn fires_at_deadline_table() {
        struct Case {
            name: &'static str,
            deadlines_ms: &'static [u64],
            expected: &'static [(u64, u32)],
        }
        let cases = [
            Case {
                name: "empty",
                deadlines_ms: &[],
                expected: &[],
            },
            Case {
                name: "zero fires at once",
                deadlines_ms: &[0],
                expected: &[(0, 0)],
            },
            Case {
                name: "single",
                deadlines_ms: &[5],
                expected: &[(5, 0)],
            },
            Case {
                name: "order",
                deadlines_ms: &[30, 10, 20],
                expected: &[(10, 1), (20, 2), (30, 0)],
            },
            Case {
                name: "level 0 edge",
                deadlines_ms: &[63, 64],
                expected: &[(63, 0), (64, 1)],
            },
            Case {
                name: "level 1",
                deadlines_ms: &[65, 200, 4095],
                expected: &[(65, 0), (200, 1), (4095, 2)],
            },
            Case {
                name: "level 2",
                deadlines_ms: &[4096, 4097, 15_000],
                expected: &[(4096, 0), (4097, 1), (15_000, 2)],
            },
            Case {
                name: "same tick",
                deadlines_ms: &[7, 7],
                expected: &[(7, 0), (7, 1)],
            },
        ];
        for case in cases {
            let base = Instant::now();
            let mut wheel = TimerWheel::new(base, MS, 16);
            for (value, &ms) in case.deadlines_ms.iter().enumerate() {
                wheel.insert(at(base, ms), value as u32).unwrap();
            }
            let mut fired = fire_ticks(&mut wheel, base, 16_000);
            fired.sort_unstable();
            assert_eq!(fired, case.expected, "case {}", case.name);
            assert!(wheel.is_empty(), "case {}", case.name);
        }
    }

    #[test]
    fn deadline_rounds_up_to_tick_and_never_fires_early() {
        let base = Instant::now();
        let mut wheel = TimerWheel::new(base, Duration::from_millis(10), 4);
        let deadline = base + Duration::from_millis(25);
        wheel.insert(deadline, "x").unwrap();
        assert_eq!(wheel.poll_timeout(), Some(base + Duration::from_millis(30)));
        assert_eq!(wheel.poll_expired(base + Duration::from_millis(29)), None);
        assert_eq!(
            wheel.poll_expired(base + Duration::from_millis(30)),
            Some("x")
        );
    }

    #[test]
    fn past_deadline_fires_on_next_poll() {
        let base = Instant::now();
        let mut wheel = TimerWheel::new(base, MS, 4);
        assert_eq!(wheel.poll_expired(at(base, 1000)), None);
        wheel.insert(at(base, 10), 1).unwrap();
        wheel.insert(base, 2).unwrap();
        assert_eq!(wheel.poll_timeout(), Some(at(base, 1000)));
        let mut fired = drain(&mut wheel, at(base, 1000));
        fired.sort_unstable();
        assert_eq!(fired, vec![1, 2]);
    }

    #[test]
    fn cascades_across_every_level_and_beyond_range() {
        let base = Instant::now();
        let mut wheel = TimerWheel::new(base, MS, 64);
        let deadlines_ms = [
            1,
            63,
            64,
            4095,
            4096,
            262_143,
            262_144,
            RANGE_TICKS - 1,
            RANGE_TICKS,
            RANGE_TICKS + 12_345,
            3 * RANGE_TICKS + 7,
        ];
        for (value, &ms) in deadlines_ms.iter().enumerate() {
            wheel.insert(at(base, ms), value).unwrap();
        }
        // Drive like the gateway does: sleep until poll_timeout, then poll.
        let mut fired = Vec::new();
        let mut wakeups = 0;
        while let Some(wake) = wheel.poll_timeout() {
            wakeups += 1;
            assert!(wakeups < 1000, "too many wakeups");
            while let Some(value) = wheel.poll_expired(wake) {
                fired.push((wake, value));
            }
        }
        assert_eq!(fired.len(), deadlines_ms.len());
        for (index, (wake, value)) in fired.iter().enumerate() {
            assert_eq!(*value, index, "deadline order");
            assert_eq!(*wake, at(base, deadlines_ms[*value]), "exact tick");
        }
    }

    #[test]
    fn cancel_and_stale_keys() {
        let base = Instant::now();
        let mut wheel = TimerWheel::new(base, MS, 2);
        let a = wheel.insert(at(base, 10), 'a').unwrap();
        assert_eq!(wheel.cancel(a), Some('a'));
        assert!(wheel.is_empty());
        // The freed entry is reused with a new generation.
        let b = wheel.insert(at(base, 10), 'b').unwrap();
        let stale = TimerKey {
            index: b.index,
            generation: b.generation.wrapping_sub(1),
        };
        assert_eq!(wheel.cancel(stale), None);
        assert!(!wheel.reset(
            &TimerKey {
                index: b.index,
                generation: b.generation.wrapping_sub(1)
            },
            base
        ));
        assert_eq!(wheel.len(), 1);
        assert_eq!(drain(&mut wheel, at(base, 10)), vec!['b']);
        // b expired: its key is stale, and a new timer in the same entry is untouched.
        let c = wheel.insert(at(base, 20), 'c').unwrap();
        assert!(!wheel.contains(&b));
        assert!(!wheel.reset(&b, at(base, 11)));
        assert_eq!(wheel.cancel(b), None);
        assert!(wheel.contains(&c));
        assert_eq!(wheel.len(), 1);
        assert_eq!(wheel.cancel(c), Some('c'));
        assert_eq!(wheel.poll_timeout(), None);
    }

    #[test]
    fn cancel_due_but_unpolled_timer() {
        let base = Instant::now();
        let mut wheel = TimerWheel::new(base, MS, 4);
        let a = wheel.insert(at(base, 5), 1).unwrap();
        let b = wheel.insert(at(base, 5), 2).unwrap();
        let first = wheel.poll_expired(at(base, 5)).unwrap();
        let other = if first == 1 { b } else { a };
        assert_eq!(wheel.cancel(other), Some(3 - first));
        assert_eq!(wheel.poll_expired(at(base, 5)), None);
        assert!(wheel.is_empty());
    }

    #[test]
    fn reset_moves_timer_both_ways() {
        let base = Instant::now();
        let mut wheel = TimerWheel::new(base, MS, 4);
        let heartbeat = wheel.insert(at(base, 15_000), "hb").unwrap();
        let idle = wheel.insert(at(base, 10_000), "idle").unwrap();
        assert!(wheel.reset(&heartbeat, at(base, 100)));
        assert!(wheel.reset(&idle, at(base, 20_000)));
        assert_eq!(
            fire_ticks(&mut wheel, base, 30_000),
            vec![(100, "hb"), (20_000, "idle")]
        );
        assert!(!wheel.reset(&heartbeat, at(base, 40_000)));
        assert!(wheel.is_empty());
    }

    #[test]
    fn capacity_limit() {
        let base = Instant::now();
        let mut wheel = TimerWheel::new(base, MS, 2);
        let a = wheel.insert(at(base, 1), 0).unwrap();
        let _b = wheel.insert(at(base, 2), 1).unwrap();
        assert_eq!(wheel.insert(at(base, 3), 2), Err(WheelFull));
        assert_eq!(wheel.len(), 2);
        wheel.cancel(a);
        assert!(wheel.insert(at(base, 3), 2).is_ok());
        assert_eq!(
            wheel.entries.capacity(),
            2,
            "slab never grows past capacity_max"
        );
    }

    #[test]
    fn idle_jump_is_cheap() {
        // A timer parked far out plus a jump of hours must not step tick by tick.
        let base = Instant::now();
        let mut wheel = TimerWheel::new(base, MS, 4);
        wheel.insert(at(base, 10 * RANGE_TICKS), ()).unwrap();
        assert_eq!(wheel.poll_expired(at(base, 10 * RANGE_TICKS - 1)), None);
        assert_eq!(wheel.len(), 1);
        assert_eq!(wheel.poll_expired(at(base, 10 * RANGE_TICKS)), Some(()));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert { delay_ms: u64, past: bool },
        Cancel { pick: usize },
        Reset { pick: usize, delay_ms: u64 },
        Advance { ms: u64 },
    }

    fn delay() -> impl Strategy<Value = u64> {
        prop_oneof![0..100u64, 0..5_000u64, 0..300_000u64, 0..(2 * RANGE_TICKS),]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (delay(), proptest::bool::weighted(0.1)).prop_map(|(delay_ms, past)| Op::Insert { delay_ms, past }),
            1 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
            2 => (any::<usize>(), delay()).prop_map(|(pick, delay_ms)| Op::Reset { pick, delay_ms }),
            3 => delay().prop_map(|ms| Op::Advance { ms }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn matches_btreemap_model(tick_ms in 1u64..=10, capacity_max in 1usize..40, ops in proptest::collection::vec(op(), 1..200)) {
            let base = Instant::now();
            let tick = Duration::from_millis(tick_ms);
            let mut wheel = TimerWheel::new(base, tick, capacity_max);
            // Model: timer id -> deadline (ms since base).
            let mut model: BTreeMap<u32, u64> = BTreeMap::new();
            // Keys held by "connections", including stale ones.
            let mut keys: Vec<(u32, TimerKey)> = Vec::new();
            let mut now_ms = 0u64;
            let mut next_id = 0u32;
            for op in ops {
                match op {
                    Op::Insert { delay_ms, past } => {
                        let deadline_ms = if past { now_ms.saturating_sub(delay_ms) } else { now_ms + delay_ms };
                        let id = next_id;
                        next_id += 1;
                        match wheel.insert(at(base, deadline_ms), id) {
                            Ok(key) => {
                                prop_assert!(model.len() < capacity_max);
                                model.insert(id, deadline_ms);
                                keys.push((id, key));
                            }
                            Err(WheelFull) => prop_assert_eq!(model.len(), capacity_max),
                        }
                    }
                    Op::Cancel { pick } if !keys.is_empty() => {
                        let (id, key) = keys.swap_remove(pick % keys.len());
                        let expected = model.remove(&id).map(|_| id);
                        prop_assert_eq!(wheel.cancel(key), expected);
                    }
                    Op::Reset { pick, delay_ms } if !keys.is_empty() => {
                        let (id, key) = &keys[pick % keys.len()];
                        let deadline_ms = now_ms + delay_ms;
                        let live = model.contains_key(id);
                        prop_assert_eq!(wheel.reset(key, at(base, deadline_ms)), live);
                        if live {
                            model.insert(*id, deadline_ms);
                        }
                    }
                    Op::Cancel { .. } | Op::Reset { .. } => {}
                    Op::Advance { ms } => {
                        now_ms += ms;
                        let now = at(base, now_ms);
                        while let Some(id) = wheel.poll_expired(now) {
                            let deadline_ms = model.remove(&id);
                            prop_assert!(deadline_ms.is_some(), "timer {} fired twice or after cancel", id);
                            prop_assert!(deadline_ms.unwrap() <= now_ms, "timer {} fired early", id);
                        }
                        for (&id, &deadline_ms) in &model {
                            prop_assert!(deadline_ms + tick_ms > now_ms, "timer {} due at {} missed at {}", id, deadline_ms, now_ms);
                        }
                    }
                }
                prop_assert_eq!(wheel.len(), model.len());
                match model.values().min() {
                    None => prop_assert_eq!(wheel.poll_timeout(), None),
                    Some(&earliest_ms) => {
                        let timeout = wheel.poll_timeout();
                        prop_assert!(timeout.is_some());
                        // A timer already due reports (at the latest) the last polled instant.
                        prop_assert!(timeout.unwrap() <= at(base, earliest_ms.max(now_ms)) + tick);
                    }
                }
            }
        }
    }
}
