//! How one shard stops (SIGTERM/SIGINT): the drain choreography as a state machine.
//!
//! On the stop signal ([`Drain::handle_stop`]) the shard hurries its connections (idle
//! ones close; the others close after their current request; one that has not sent its
//! first request yet gets [`REQUEST_WAIT`] to send it and be answered 503). It keeps
//! taking mail for [`SETTLE`], so messages other shards accepted before the signal still
//! arrive, and until every other shard has stopped sequencing ([`Figures::peers_stopped`]:
//! no publish acked anywhere can still add a frame here), then drains its subscribers
//! (each closes once it has everything, with an SSE `retry:` of [`RETRY_MS`]). It keeps accepting, answering 503 `draining`, until every
//! shard is drained (has no connection left): were one shard to close its listener while
//! clients still arrive at the others' addresses in the same `SO_REUSEPORT` group, the
//! kernel would complete their handshakes on it and reset them at exit. Then it stops
//! accepting and, with no connection and no accept left in its ring, exits. At the
//! `--drain-timeout` deadline it closes whatever is left; [`EXIT_GRACE`] later it exits
//! even with operations in flight.
//!
//! Sans-IO: driven by `now` and the shard's figures ([`Figures`]); it returns what to do
//! ([`DrainAction`]) and never touches a connection, a listener or a flag between threads.

use std::time::{Duration, Instant};

/// After the stop signal, how long a shard keeps taking mail before it drains caught-up
/// subscribers: long enough for messages other shards accepted before the signal to arrive
/// (mail is flushed every loop turn).
pub const SETTLE: Duration = Duration::from_millis(200);
/// The `retry:` hint (ms) sent to subscribers closed by a drain.
pub const RETRY_MS: u64 = 1000;
/// During a drain, how long a connection that has not sent its first request is waited
/// for (to answer it 503) before the header timeout's 408: a browser's speculative
/// connection may never send one, and must not hold the drain much past [`SETTLE`].
pub const REQUEST_WAIT: Duration = Duration::from_secs(1);
/// How long after the drain deadline (when every connection was told to close) a shard
/// waits for the last completions before it exits anyway.
pub const EXIT_GRACE: Duration = Duration::from_secs(2);

/// What the shard reports each turn while stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Figures {
    /// Connections open on this shard (every kind).
    pub open: usize,
    /// Whether an accept is still in the ring (armed, or cancelled and not yet completed).
    pub accepts_armed: bool,
    /// Whether every shard (this one included) reports itself drained ([`Drain::drained`]).
    pub all_drained: bool,
    /// Whether every other shard has stopped sequencing and this one has taken in all
    /// they sequenced (`Sequencer::peers_stopped`): subscribers are drained only then, so
    /// a publish acked anywhere reaches this shard's subscribers before their close.
    pub peers_stopped: bool,
}

/// What the shard must do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum DrainAction {
    /// Close idle connections; make the others close after their current request (a
    /// refusal being written goes out first); give a connection that has not sent its
    /// first request `request_wait` to send it.
    HurryConnections {
        /// How long a connection still waiting for its first request is waited for.
        request_wait: Duration,
    },
    /// Start draining the fan-out's subscribers (`Fanout::handle_drain`): [`SETTLE`] after
    /// the signal, once every other shard stopped sequencing ([`Figures::peers_stopped`]).
    DrainSubscribers {
        /// The SSE `retry:` hint, in milliseconds.
        retry_ms: u64,
    },
    /// Cancel the accepts and arm no more.
    StopAccepting,
    /// The drain deadline passed: close every connection left.
    CloseAll,
    /// Leave the loop.
    Exit {
        /// Whether everything closed (false: the grace after the deadline ran out with
        /// operations still in flight).
        clean: bool,
    },
}

/// Where a shard is in its stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Serving.
    Running,
    /// The stop signal was seen: answering what is in flight, 503 to new requests.
    Stopping,
    /// Done: the loop exits.
    Stopped,
}

#[derive(Debug, Clone, Copy)]
struct Stopping {
    /// The `--drain-timeout` deadline.
    deadline: Instant,
    /// When subscribers are drained; `None` once they were.
    drain_at: Option<Instant>,
    /// `drain_at` passed and the drain waits for the other shards' stop (mail, not time).
    awaiting_peers: bool,
    /// The connections were not told yet.
    hurry_due: bool,
    /// Accepts still run.
    accepting: bool,
    /// The deadline passed and every connection was told to close.
    forced: bool,
}

/// One shard's stop, from the signal to the exit. See the module doc.
#[derive(Debug, Clone, Default)]
pub struct Drain {
    stopping: Option<Stopping>,
    stopped: bool,
}

impl Drain {
    /// A running shard.
    pub fn new() -> Self {
        Self::default()
    }

    /// Where the shard is.
    pub fn phase(&self) -> Phase {
        match (self.stopped, self.stopping) {
            (true, _) => Phase::Stopped,
            (false, Some(_)) => Phase::Stopping,
            (false, None) => Phase::Running,
        }
    }

    /// Whether the stop signal was seen.
    pub fn is_stopping(&self) -> bool {
        self.stopping.is_some() || self.stopped
    }

    /// Whether accepts may run (false once [`DrainAction::StopAccepting`] was returned).
    pub fn accepting(&self) -> bool {
        !self.stopped && self.stopping.is_none_or(|s| s.accepting)
    }

    /// The stop signal, seen at `now`; `drain_timeout` is the `--drain-timeout` in force.
    /// Later calls change nothing (the first signal sets the deadline).
    pub fn handle_stop(&mut self, now: Instant, drain_timeout: Duration) {
        if self.is_stopping() {
            return;
        }
        self.stopping = Some(Stopping {
            deadline: now + drain_timeout,
            drain_at: Some(now + SETTLE),
            awaiting_peers: false,
            hurry_due: true,
            accepting: true,
            forced: false,
        });
    }

    /// What this shard reports to the others while stopping: drained when it has no
    /// connection left (`open`). False while running.
    pub fn drained(&self, open: usize) -> bool {
        self.is_stopping() && open == 0
    }

    /// The next thing to do at `now` given the shard's figures; call until `None` (each
    /// action is returned once). After [`DrainAction::Exit`] it returns `None`.
    pub fn poll_action(&mut self, now: Instant, figures: Figures) -> Option<DrainAction> {
        let stopping = self.stopping.as_mut()?;
        if std::mem::take(&mut stopping.hurry_due) {
            return Some(DrainAction::HurryConnections {
                request_wait: REQUEST_WAIT,
            });
        }
        if stopping.drain_at.is_some_and(|at| now >= at) {
            stopping.awaiting_peers = !figures.peers_stopped;
            if figures.peers_stopped {
                stopping.drain_at = None;
                return Some(DrainAction::DrainSubscribers { retry_ms: RETRY_MS });
            }
        }
        if stopping.accepting && (figures.all_drained || stopping.forced) {
            // Clients that connected during the drain were answered (or the time is up).
            stopping.accepting = false;
            return Some(DrainAction::StopAccepting);
        }
        if figures.open == 0 && !figures.accepts_armed {
            return Some(self.exit(true));
        }
        if now >= stopping.deadline && !stopping.forced {
            stopping.forced = true;
            return Some(DrainAction::CloseAll);
        }
        if now >= stopping.deadline + EXIT_GRACE {
            return Some(self.exit(false));
        }
        None
    }

    fn exit(&mut self, clean: bool) -> DrainAction {
        debug_assert!(self.stopping.is_some(), "exit before the stop signal");
        self.stopping = None;
        self.stopped = true;
        DrainAction::Exit { clean }
    }

    /// When [`Drain::poll_action`] next has something to do by time alone (the settle,
    /// the deadline, the grace); `None` while running or stopped. Figures may change
    /// sooner: poll every turn.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let stopping = self.stopping.as_ref()?;
        if let Some(at) = stopping.drain_at.filter(|_| !stopping.awaiting_peers) {
            return Some(at);
        }
        if !stopping.forced {
            return Some(stopping.deadline);
        }
        Some(stopping.deadline + EXIT_GRACE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(10);

    fn busy() -> Figures {
        Figures {
            open: 3,
            accepts_armed: true,
            all_drained: false,
            peers_stopped: true,
        }
    }

    /// Every action due at `now`, in order.
    fn actions(drain: &mut Drain, now: Instant, figures: Figures) -> Vec<DrainAction> {
        let mut out = Vec::new();
        while let Some(action) = drain.poll_action(now, figures) {
            out.push(action);
            assert!(out.len() < 10, "poll_action loops: {out:?}");
        }
        out
    }

    #[test]
    fn a_running_shard_does_nothing_and_reports_not_drained() {
        let mut drain = Drain::new();
        let now = Instant::now();
        let idle = Figures {
            open: 0,
            accepts_armed: false,
            all_drained: true,
            peers_stopped: true,
        };
        assert_eq!(actions(&mut drain, now, idle), []);
        assert_eq!(drain.phase(), Phase::Running);
        assert!(drain.accepting());
        assert!(!drain.drained(0), "a running shard is not drained");
        assert_eq!(drain.poll_timeout(), None);
    }

    #[test]
    fn the_signal_hurries_connections_once_then_settles_before_draining_subscribers() {
        let start = Instant::now();
        let mut drain = Drain::new();
        drain.handle_stop(start, TIMEOUT);
        assert_eq!(drain.phase(), Phase::Stopping);
        assert_eq!(
            actions(&mut drain, start, busy()),
            [DrainAction::HurryConnections {
                request_wait: REQUEST_WAIT
            }]
        );
        assert_eq!(drain.poll_timeout(), Some(start + SETTLE));
        let before = start + SETTLE - Duration::from_millis(1);
        assert_eq!(actions(&mut drain, before, busy()), []);
        assert_eq!(
            actions(&mut drain, start + SETTLE, busy()),
            [DrainAction::DrainSubscribers { retry_ms: RETRY_MS }]
        );
        assert_eq!(actions(&mut drain, start + SETTLE, busy()), []);
        assert_eq!(drain.poll_timeout(), Some(start + TIMEOUT));
        assert!(drain.accepting(), "accepting until every shard is drained");
    }

    #[test]
    fn subscribers_drain_only_once_every_other_shard_stopped_sequencing() {
        let start = Instant::now();
        let mut drain = Drain::new();
        drain.handle_stop(start, TIMEOUT);
        let _ = actions(&mut drain, start, busy());
        let sequencing = Figures {
            peers_stopped: false,
            ..busy()
        };
        // The settle is over, but another shard may still ack a publish whose frame has
        // not reached this shard: no drain, and no wake-up by time for it (the peer's
        // mail wakes the shard).
        let late = start + SETTLE + Duration::from_secs(1);
        assert_eq!(actions(&mut drain, late, sequencing), []);
        assert_eq!(drain.poll_timeout(), Some(start + TIMEOUT));
        assert_eq!(
            actions(&mut drain, late, busy()),
            [DrainAction::DrainSubscribers { retry_ms: RETRY_MS }]
        );
        assert_eq!(actions(&mut drain, late, busy()), []);
        // A peer that never stops is cut by the deadline.
        let mut stuck = Drain::new();
        stuck.handle_stop(start, TIMEOUT);
        let _ = actions(&mut stuck, start + SETTLE, sequencing);
        assert_eq!(
            actions(&mut stuck, start + TIMEOUT, sequencing),
            [DrainAction::CloseAll, DrainAction::StopAccepting]
        );
    }

    #[test]
    fn a_second_signal_keeps_the_first_deadline() {
        let start = Instant::now();
        let mut drain = Drain::new();
        drain.handle_stop(start, TIMEOUT);
        let _ = actions(&mut drain, start, busy());
        drain.handle_stop(start + Duration::from_secs(5), TIMEOUT);
        let _ = actions(&mut drain, start + SETTLE, busy());
        assert_eq!(drain.poll_timeout(), Some(start + TIMEOUT));
    }

    #[test]
    fn accepting_goes_on_until_every_shard_is_drained_then_exits_once_accepts_end() {
        let start = Instant::now();
        let mut drain = Drain::new();
        drain.handle_stop(start, TIMEOUT);
        let at = start + SETTLE;
        let _ = actions(&mut drain, at, busy());
        // This shard is empty, another is not: keep accepting (503 to newcomers).
        let alone = Figures {
            open: 0,
            accepts_armed: true,
            all_drained: false,
            peers_stopped: true,
        };
        assert!(drain.drained(alone.open));
        assert_eq!(actions(&mut drain, at, alone), []);
        assert!(drain.accepting());
        let all = Figures {
            all_drained: true,
            peers_stopped: true,
            ..alone
        };
        assert_eq!(actions(&mut drain, at, all), [DrainAction::StopAccepting]);
        assert!(!drain.accepting());
        // The cancelled accept completes a turn later.
        let done = Figures {
            accepts_armed: false,
            ..all
        };
        assert_eq!(
            actions(&mut drain, at, done),
            [DrainAction::Exit { clean: true }]
        );
        assert_eq!(drain.phase(), Phase::Stopped);
        assert_eq!(actions(&mut drain, at, done), []);
        assert_eq!(drain.poll_timeout(), None);
    }

    #[test]
    fn no_exit_while_a_connection_is_open_even_with_accepts_ended() {
        let start = Instant::now();
        let mut drain = Drain::new();
        drain.handle_stop(start, TIMEOUT);
        let open = Figures {
            open: 1,
            accepts_armed: false,
            all_drained: false,
            peers_stopped: true,
        };
        let _ = actions(&mut drain, start + SETTLE, open);
        assert_eq!(
            actions(&mut drain, start + Duration::from_secs(9), open),
            []
        );
    }

    #[test]
    fn the_deadline_closes_everything_and_stops_accepting_then_the_grace_exits() {
        let start = Instant::now();
        let mut drain = Drain::new();
        drain.handle_stop(start, TIMEOUT);
        let _ = actions(&mut drain, start + SETTLE, busy());
        let deadline = start + TIMEOUT;
        assert_eq!(
            actions(&mut drain, deadline, busy()),
            [DrainAction::CloseAll, DrainAction::StopAccepting]
        );
        assert_eq!(drain.poll_timeout(), Some(deadline + EXIT_GRACE));
        assert_eq!(
            actions(&mut drain, deadline + Duration::from_secs(1), busy()),
            []
        );
        assert_eq!(
            actions(&mut drain, deadline + EXIT_GRACE, busy()),
            [DrainAction::Exit { clean: false }]
        );
        assert_eq!(drain.phase(), Phase::Stopped);
    }

    #[test]
    fn connections_closed_by_the_deadline_end_in_a_clean_exit() {
        let start = Instant::now();
        let mut drain = Drain::new();
        drain.handle_stop(start, TIMEOUT);
        let deadline = start + TIMEOUT;
        // A loop that slept past both the settle and the deadline does all in one turn.
        assert_eq!(
            actions(&mut drain, deadline, busy()),
            [
                DrainAction::HurryConnections {
                    request_wait: REQUEST_WAIT
                },
                DrainAction::DrainSubscribers { retry_ms: RETRY_MS },
                DrainAction::CloseAll,
                DrainAction::StopAccepting,
            ]
        );
        let closed = Figures {
            open: 0,
            accepts_armed: false,
            all_drained: false,
            peers_stopped: true,
        };
        assert_eq!(
            actions(&mut drain, deadline + Duration::from_millis(10), closed),
            [DrainAction::Exit { clean: true }]
        );
    }

    #[test]
    fn a_shard_with_nothing_left_when_all_are_drained_exits_before_the_settle() {
        // Every shard is drained at the signal: stop accepting at once; exit once the
        // cancelled accepts completed — before the settle (nothing to drain).
        let start = Instant::now();
        let mut drain = Drain::new();
        drain.handle_stop(start, TIMEOUT);
        let empty = Figures {
            open: 0,
            accepts_armed: true,
            all_drained: true,
            peers_stopped: true,
        };
        assert_eq!(
            actions(&mut drain, start, empty),
            [
                DrainAction::HurryConnections {
                    request_wait: REQUEST_WAIT
                },
                DrainAction::StopAccepting
            ]
        );
        let ended = Figures {
            accepts_armed: false,
            ..empty
        };
        assert_eq!(
            actions(&mut drain, start, ended),
            [DrainAction::Exit { clean: true }]
        );
    }
}
