//! The `/metrics` figures of one shard's circuit breaker around an upstream (auth callback,
//! Redis): written by the shard once per loop turn, read at scrape. Shared by every
//! upstream so each exposes the same `ringcast_breaker_*` families.

use ringcast_core::breaker::{BreakerState, CircuitBreaker};
use ringcast_core::metrics::Exposition;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Breaker states and their `to` label, in the order of [`BreakerFigures::transitions`].
const STATES: [(BreakerState, &str); 3] = [
    (BreakerState::Closed, "closed"),
    (BreakerState::Open, "open"),
    (BreakerState::HalfOpen, "half_open"),
];

/// The gauge value of a breaker state: 0 closed, 1 open, 2 half-open.
pub fn state_value(state: BreakerState) -> u64 {
    match state {
        BreakerState::Closed => 0,
        BreakerState::Open => 1,
        BreakerState::HalfOpen => 2,
    }
}

/// State and transition counts of one shard's breaker.
#[derive(Debug, Default)]
pub struct BreakerFigures {
    state: AtomicU64,
    transitions: [AtomicU64; 3],
}

impl BreakerFigures {
    /// Stores the breaker's state as of `now` and its transition counts (owning shard only).
    pub fn publish(&self, breaker: &CircuitBreaker, now: Instant) {
        self.state
            .store(state_value(breaker.state(now)), Ordering::Relaxed);
        for (index, (state, _)) in STATES.iter().enumerate() {
            self.transitions[index].store(breaker.transitions_to(*state), Ordering::Relaxed);
        }
    }

    /// Adds `ringcast_breaker_state` and `ringcast_breaker_transitions_total` for one shard.
    pub fn expose(&self, out: &mut Exposition, upstream: &str, shard: &str) {
        let labels = [("upstream", upstream), ("shard", shard)];
        out.gauge(
            "ringcast_breaker_state",
            "Circuit breaker state per upstream (0 closed, 1 open, 2 half-open).",
            &labels,
            self.state.load(Ordering::Relaxed) as f64,
        );
        for (index, (_, to)) in STATES.iter().enumerate() {
            out.counter(
                "ringcast_breaker_transitions_total",
                "Circuit breaker transitions per upstream, by the state entered.",
                &[labels[0], labels[1], ("to", to)],
                self.transitions[index].load(Ordering::Relaxed) as f64,
            );
        }
    }
}
