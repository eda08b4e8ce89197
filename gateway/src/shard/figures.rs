//! This shard's figures for `/metrics`: counters kept on the hot path as plain integers and
//! published to the shared atomics once per turn; rooms freed.

use super::*;

impl Shard {
    /// Counts a refusal.
    pub(super) fn count_rejection(&mut self, reason: Rejection) {
        self.rejections[reason as usize] += 1;
    }

    /// Counts a refusal that is not a 503 (`ringcast_refusals_total`).
    pub(super) fn count_refusal(&self, reason: RefusalReason) {
        self.shared.figures[self.index].add_refusal(reason);
    }

    /// Lets go of what is kept for rooms the fan-out freed: in cluster mode, the follower
    /// stops sending this shard their frames and unfollows a room no shard holds.
    pub(super) fn release_freed_rooms(&mut self) {
        while let Some(room) = self.fanout.poll_freed() {
            if let Some(cluster) = self.cluster.as_mut() {
                cluster.unfollow(&room);
            }
        }
    }

    pub(super) fn publish_figures(&mut self, now: Instant) {
        let figures = &self.shared.figures[self.index];
        if self.latency_turn.count() != 0 {
            figures.add_latency(self.now_unix, &self.latency_turn);
            self.latency_turn.clear();
        }
        if now >= self.room_sizes_at {
            // O(rooms), so once a second rather than per turn.
            self.room_sizes_at = now + ROOM_SIZES_PERIOD;
            let mut counts = [0u64; ROOM_SIZE_LABELS.len()];
            for subscribers in self.fanout.room_sizes() {
                counts[crate::metrics::room_size_bucket(subscribers)] += 1;
            }
            figures.set_room_sizes(&counts);
            // Same period: give back what a burst left in this thread's heap.
            crate::runtime::memory::collect();
        }
        for reason in Rejection::ALL {
            figures.set_rejections(reason, self.rejections[reason as usize]);
        }
        figures.set(Figure::PendingWriteBytes, self.pending_write_bytes as u64);
        figures.set(Figure::ConfigGeneration, self.generation);
        let stats = self.fanout.stats();
        let ring = self.ring.stats();
        figures.set(
            Figure::Connections,
            (self.live - self.virtual_live - self.tls_live) as u64,
        );
        debug_assert!(
            self.subs.len() >= self.fanout.subscribers_live(),
            "every fan-out subscriber has an id (cut ones keep theirs until their close)"
        );
        figures.set(Figure::Subscribers, self.fanout.subscribers_live() as u64);
        figures.set(
            Figure::Tickers,
            (self.fanout.tickers_live() + self.timers.len()) as u64,
        );
        figures.set(Figure::Rooms, self.fanout.rooms_len() as u64);
        figures.set_rooms_freed([
            stats.rooms_freed_idle_total,
            stats.rooms_freed_evicted_total,
        ]);
        figures.set(Figure::Publishes, stats.publishes_total);
        figures.set(Figure::Deliveries, stats.deliveries_total);
        figures.set(Figure::Writes, stats.writes_total);
        figures.set(Figure::BytesWritten, self.bytes_written);
        figures.set(Figure::SlowCuts, stats.slow_cuts_total);
        figures.set(Figure::Gaps, stats.gaps_total);
        figures.set(Figure::Resets, stats.resets_total);
        figures.set(Figure::Heartbeats, stats.heartbeats_total);
        figures.set(Figure::SqFull, ring.sq_full_total);
        figures.set(Figure::CqOverflow, ring.cq_overflow_total);
        figures.set(Figure::PoolExhausted, ring.pool_exhausted_total);
        figures.set(Figure::DirtyQueue, self.fanout.dirty_len() as u64);
        figures.idempotency.publish(self.sequencer.keys());
    }
}
