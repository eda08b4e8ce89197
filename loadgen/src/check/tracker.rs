//! Per-subscriber sequence checking: in order, gap, duplicate or late (reordered), and the
//! final loss count once the publisher says which sequence numbers were really published.
//!
//! State is small: the next expected sequence number and, only after a gap, a bounded list
//! of missing ranges. A number below `next` that is in a missing range arrived late
//! (reordered); one that is not was already seen (duplicate).

/// Most missing ranges remembered per subscriber. Beyond this the oldest range is counted
/// as lost right away (it can then no longer be excused by a failed publish or recognised
/// as reordered). 64 separate holes in one subscriber's stream already means a badly
/// broken run; the bound keeps memory per subscriber fixed.
pub const MISSING_RANGES_MAX: usize = 64;

/// What one arrival was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The expected next number.
    InOrder,
    /// Ahead of the expected number: the numbers in between are missing (so far).
    AfterGap,
    /// A number that was missing earlier and arrived late.
    Reordered,
    /// A number already received.
    Duplicate,
}

/// Sequence state of one subscriber (one room).
#[derive(Debug, Clone, Default)]
pub struct SeqTracker {
    next: u64,
    /// Half-open ranges `[start, end)` of numbers not yet seen, oldest first.
    missing: Vec<(u64, u64)>,
    /// Numbers dropped from `missing` because it was full; counted as lost.
    evicted: u64,
}

impl SeqTracker {
    /// A tracker expecting sequence number 1 first.
    pub fn new() -> Self {
        SeqTracker {
            next: 1,
            missing: Vec::new(),
            evicted: 0,
        }
    }

    /// Classifies the arrival of `seq` and updates the state.
    pub fn observe(&mut self, seq: u64) -> Arrival {
        if seq == self.next {
            self.next += 1;
            return Arrival::InOrder;
        }
        if seq > self.next {
            if self.missing.len() == MISSING_RANGES_MAX {
                let (start, end) = self.missing.remove(0);
                self.evicted += end - start;
            }
            self.missing.push((self.next, seq));
            self.next = seq + 1;
            return Arrival::AfterGap;
        }
        let found = self
            .missing
            .iter()
            .position(|&(start, end)| start <= seq && seq < end);
        let Some(index) = found else {
            return Arrival::Duplicate;
        };
        let (start, end) = self.missing[index];
        match (seq == start, seq + 1 == end) {
            (true, true) => {
                self.missing.remove(index);
            }
            (true, false) => self.missing[index].0 = seq + 1,
            (false, true) => self.missing[index].1 = seq,
            (false, false) => {
                self.missing[index].1 = seq;
                if self.missing.len() == MISSING_RANGES_MAX {
                    // No room to split: count the upper part as lost now.
                    self.evicted += end - (seq + 1);
                } else {
                    self.missing.insert(index + 1, (seq + 1, end));
                }
            }
        }
        Arrival::Reordered
    }

    /// Numbers never received among `1..=last_published`, not counting `failed` ones
    /// (publishes answered non-2xx; sorted ascending).
    pub fn lost(&self, last_published: u64, failed: &[u64]) -> u64 {
        let failed_in = |start: u64, end: u64| -> u64 {
            let low = failed.partition_point(|&seq| seq < start);
            let high = failed.partition_point(|&seq| seq < end);
            (high - low) as u64
        };
        let mut lost = self.evicted;
        for &(start, end) in &self.missing {
            let end = end.min(last_published + 1);
            if start < end {
                lost += (end - start) - failed_in(start, end);
            }
        }
        let tail_end = last_published + 1;
        if self.next < tail_end {
            lost += (tail_end - self.next) - failed_in(self.next, tail_end);
        }
        lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seqs: &[u64]) -> (SeqTracker, Vec<Arrival>) {
        let mut tracker = SeqTracker::new();
        let arrivals = seqs.iter().map(|&seq| tracker.observe(seq)).collect();
        (tracker, arrivals)
    }

    #[test]
    fn in_order_is_clean() {
        let (tracker, arrivals) = run(&[1, 2, 3]);
        assert!(arrivals.iter().all(|&a| a == Arrival::InOrder));
        assert_eq!(tracker.lost(3, &[]), 0);
        assert_eq!(tracker.lost(5, &[]), 2, "tail never arrived");
        assert_eq!(
            tracker.lost(5, &[4, 5]),
            0,
            "failed publishes are not expected"
        );
    }

    #[test]
    fn classifies_arrivals() {
        use Arrival::*;
        let table: &[(&[u64], &[Arrival], u64)] = &[
            (&[1, 3, 4], &[InOrder, AfterGap, InOrder], 1),
            (&[1, 3, 2], &[InOrder, AfterGap, Reordered], 0),
            (&[1, 2, 2, 3], &[InOrder, InOrder, Duplicate, InOrder], 0),
            (
                &[1, 5, 3, 3, 2, 4],
                &[
                    InOrder, AfterGap, Reordered, Duplicate, Reordered, Reordered,
                ],
                0,
            ),
            (&[2, 1], &[AfterGap, Reordered], 0),
        ];
        for (seqs, want, lost) in table {
            let (tracker, arrivals) = run(seqs);
            assert_eq!(&arrivals, want, "{seqs:?}");
            let last = *seqs.iter().max().unwrap();
            assert_eq!(tracker.lost(last, &[]), *lost, "{seqs:?}");
        }
    }

    #[test]
    fn gap_excused_by_failed_publish() {
        let (tracker, _) = run(&[1, 2, 4]);
        assert_eq!(tracker.lost(4, &[3]), 0);
        assert_eq!(tracker.lost(4, &[]), 1);
    }

    #[test]
    fn missing_ranges_are_bounded() {
        let mut tracker = SeqTracker::new();
        for index in 0..(MISSING_RANGES_MAX as u64 + 10) {
            tracker.observe(index * 2 + 2);
        }
        assert!(tracker.missing.len() <= MISSING_RANGES_MAX);
        let last = (MISSING_RANGES_MAX as u64 + 10) * 2;
        assert_eq!(tracker.lost(last, &[]), MISSING_RANGES_MAX as u64 + 10);
    }
}
