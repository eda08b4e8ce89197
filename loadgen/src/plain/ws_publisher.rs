//! Publishing over the subscribers' own WebSocket connections (`--publish-over ws`), the
//! part of one subscriber thread's work that decides what to publish when and accounts for
//! the answers. Sans-IO: the subscriber loop asks [`WsPublisher::poll_due`] for what is due,
//! writes it, reports it with [`WsPublisher::on_sent`], and feeds back acks, errors,
//! disconnects and the time; nothing here touches a socket or reads the clock.
//!
//! The schedule is the HTTP publisher's: message `m` goes to room `r = m % rooms` with
//! sequence number `m / rooms + 1`, `m / rate` after the common start. Room `r` is published
//! on the connection of subscriber `r % subscribers`, which lives on thread
//! `(r % subscribers) % threads`; each thread publishes only its own rooms, so a room's
//! messages share one connection and keep their order.

use crate::plan::publish::{PublishResult, WsPublishPlan, PUBLISH_TIMEOUT};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Most publishes one thread has written without an answer. Beyond this due messages wait
/// (their lateness shows in the schedule-based latency) instead of the map growing without
/// bound against a server that never answers.
pub const WS_PUBLISH_IN_FLIGHT_MAX: usize = 65_536;

/// How often in-flight publishes are checked against [`PUBLISH_TIMEOUT`].
const TIMEOUT_SCAN_INTERVAL: Duration = Duration::from_millis(50);

/// One publish that is due: write it on local connection `conn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Due {
    /// Index of the connection among this thread's subscribers.
    pub conn: usize,
    /// The publish's `ref` (its message number).
    pub reference: u64,
    /// Room number.
    pub room: usize,
    /// Sequence number within the room (from 1).
    pub seq: u64,
    /// Scheduled send time, unix ns.
    pub scheduled_ns: u64,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    conn: usize,
    room: usize,
    seq: u64,
    sent_at: Instant,
}

/// What one publish's answer was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// `{"type":"ack","ref":N,…}`.
    Ack(u64),
    /// `{"type":"error","ref":N,"status":S,…}`.
    Error(u64, u16),
}

/// The publishing state of one subscriber thread.
#[derive(Debug)]
pub struct WsPublisher {
    rate: f64,
    /// Publishing window plus grace: past `start + window`, nothing is sent or awaited.
    window: Duration,
    rooms: usize,
    subscribers: usize,
    thread: usize,
    threads: usize,
    total: u64,
    /// (monotonic, wall ns) of the common start, once known.
    start: Option<(Instant, u64)>,
    /// Next message number to look at (this thread's or not).
    next: u64,
    in_flight: HashMap<u64, InFlight>,
    next_scan: Option<Instant>,
    result: PublishResult,
    finished: bool,
}

impl WsPublisher {
    /// Thread `thread` of `threads`, for `subscribers` subscribers over `rooms` rooms.
    pub fn new(
        plan: &WsPublishPlan,
        rooms: usize,
        subscribers: usize,
        thread: usize,
        threads: usize,
    ) -> Self {
        assert!(rooms > 0 && subscribers > 0 && threads > 0 && thread < threads);
        WsPublisher {
            rate: plan.rate,
            window: plan.duration + plan.grace,
            rooms,
            subscribers,
            thread,
            threads,
            total: (plan.rate * plan.duration.as_secs_f64()).round() as u64,
            start: None,
            next: 0,
            in_flight: HashMap::new(),
            next_scan: None,
            result: PublishResult::new(rooms),
            finished: false,
        }
    }

    /// The local connection that publishes message `message`, if it is this thread's.
    fn owner(&self, message: u64) -> Option<usize> {
        let room = (message % self.rooms as u64) as usize;
        let global = room % self.subscribers;
        (global % self.threads == self.thread).then_some(global / self.threads)
    }

    fn offset(&self, message: u64) -> Duration {
        Duration::from_secs_f64(message as f64 / self.rate)
    }

    /// The schedule starts at `now` (monotonic) = `wall_ns` (unix ns).
    pub fn start(&mut self, now: Instant, wall_ns: u64) {
        assert!(self.start.is_none(), "the schedule starts once");
        self.start = Some((now, wall_ns));
    }

    /// True once started.
    pub fn is_started(&self) -> bool {
        self.start.is_some()
    }

    /// The next publish of this thread due by `now`, if any (call until `None`).
    pub fn poll_due(&mut self, now: Instant) -> Option<Due> {
        let (start, wall_ns) = self.start?;
        if self.finished || self.in_flight.len() >= WS_PUBLISH_IN_FLIGHT_MAX {
            return None;
        }
        let elapsed = now.saturating_duration_since(start);
        while self.next < self.total && self.offset(self.next) <= elapsed {
            let message = self.next;
            self.next += 1;
            let Some(conn) = self.owner(message) else {
                continue;
            };
            self.result.counts.scheduled += 1;
            let room = (message % self.rooms as u64) as usize;
            return Some(Due {
                conn,
                reference: message,
                room,
                seq: message / self.rooms as u64 + 1,
                scheduled_ns: wall_ns + self.offset(message).as_nanos() as u64,
            });
        }
        None
    }

    /// `due` was written at `sent_ns` (unix ns), `now` (monotonic).
    pub fn on_sent(&mut self, due: &Due, sent_ns: u64, now: Instant) {
        self.result
            .lateness
            .record_ns(sent_ns as i64 - due.scheduled_ns as i64);
        self.result.counts.sent += 1;
        self.result.last_seq[due.room] = due.seq;
        let previous = self.in_flight.insert(
            due.reference,
            InFlight {
                conn: due.conn,
                room: due.room,
                seq: due.seq,
                sent_at: now,
            },
        );
        assert!(previous.is_none(), "a ref is sent once");
        self.next_scan.get_or_insert(now + TIMEOUT_SCAN_INTERVAL);
    }

    /// `due` could not be written (its connection is gone): a failed publish.
    pub fn on_unsent(&mut self, due: &Due) {
        self.result.counts.errors.write += 1;
        self.result.last_seq[due.room] = due.seq;
        self.result.failed_seqs[due.room].push(due.seq);
    }

    /// An answer arrived at `now`. Returns false when it answers nothing in flight (an
    /// unknown or repeated `ref`: counted as a parse error).
    pub fn on_answer(&mut self, answer: Answer, now: Instant) -> bool {
        let reference = match answer {
            Answer::Ack(reference) | Answer::Error(reference, _) => reference,
        };
        let Some(flight) = self.in_flight.remove(&reference) else {
            self.result.counts.errors.parse += 1;
            return false;
        };
        self.result
            .response_time
            .record_us(now.saturating_duration_since(flight.sent_at).as_micros() as u64);
        match answer {
            Answer::Ack(_) => {
                self.result.counts.ok += 1;
                self.result.ok_per_room[flight.room] += 1;
            }
            Answer::Error(_, status) => {
                *self.result.counts.failed_status.entry(status).or_default() += 1;
                self.result.failed_seqs[flight.room].push(flight.seq);
            }
        }
        true
    }

    /// Local connection `conn` closed: its publishes in flight get no answer.
    pub fn on_disconnect(&mut self, conn: usize) {
        let result = &mut self.result;
        self.in_flight.retain(|_, flight| {
            if flight.conn != conn {
                return true;
            }
            result.counts.errors.read += 1;
            result.failed_seqs[flight.room].push(flight.seq);
            false
        });
    }

    /// When [`Self::handle_timeout`] or [`Self::poll_due`] has work next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let (start, _) = self.start?;
        if self.finished {
            return None;
        }
        let next_due = (self.next < self.total).then(|| start + self.offset(self.next));
        [next_due, self.next_scan, Some(start + self.window)]
            .into_iter()
            .flatten()
            .min()
    }

    /// Times out publishes unanswered for [`PUBLISH_TIMEOUT`]; at the end of the window
    /// gives up on everything left.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some((start, _)) = self.start else {
            return;
        };
        if self.finished {
            return;
        }
        if now >= start + self.window {
            for (_, flight) in self.in_flight.drain() {
                self.result.counts.errors.timeout += 1;
                self.result.failed_seqs[flight.room].push(flight.seq);
            }
            while self.next < self.total {
                if self.owner(self.next).is_some() {
                    self.result.counts.scheduled += 1;
                    self.result.counts.unsent += 1;
                }
                self.next += 1;
            }
            self.finished = true;
            return;
        }
        if self.next_scan.is_some_and(|scan| now >= scan) {
            let result = &mut self.result;
            self.in_flight.retain(|_, flight| {
                if now.saturating_duration_since(flight.sent_at) < PUBLISH_TIMEOUT {
                    return true;
                }
                result.counts.errors.timeout += 1;
                result.failed_seqs[flight.room].push(flight.seq);
                false
            });
            self.next_scan = (!self.in_flight.is_empty()).then_some(now + TIMEOUT_SCAN_INTERVAL);
        }
    }

    /// True when every message of this thread was sent and answered (or given up).
    pub fn is_done(&self) -> bool {
        self.finished
            || (self.start.is_some() && self.next == self.total && self.in_flight.is_empty())
    }

    /// The findings, failed sequence numbers sorted.
    pub fn finish(mut self) -> PublishResult {
        for seqs in &mut self.result.failed_seqs {
            seqs.sort_unstable();
        }
        self.result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::template::Template;

    fn plan(rate: f64, duration_ms: u64) -> WsPublishPlan {
        WsPublishPlan {
            body: Template::parse("{payload}").unwrap(),
            rate,
            duration: Duration::from_millis(duration_ms),
            grace: Duration::from_millis(500),
            size: 32,
        }
    }

    /// Drains what is due at `now`.
    fn due(publisher: &mut WsPublisher, now: Instant) -> Vec<Due> {
        std::iter::from_fn(|| publisher.poll_due(now)).collect()
    }

    #[test]
    fn schedule_splits_rooms_over_threads_in_order() {
        // 1000 msg/s for 10 ms: 10 messages over 4 rooms, 6 subscribers, 2 threads.
        let start = Instant::now();
        let mut all = Vec::new();
        for thread in 0..2 {
            let mut publisher = WsPublisher::new(&plan(1000.0, 10), 4, 6, thread, 2);
            assert_eq!(publisher.poll_due(start), None, "nothing before the start");
            publisher.start(start, 1_000);
            let early = due(&mut publisher, start);
            let early_refs: Vec<u64> = early.iter().map(|due| due.reference).collect();
            assert_eq!(early_refs, if thread == 0 { vec![0] } else { vec![] });
            let late = due(&mut publisher, start + Duration::from_millis(20));
            for due in early.iter().chain(&late) {
                let global = due.room % 6;
                assert_eq!(global % 2, thread, "room {} on its thread", due.room);
                assert_eq!(due.conn, global / 2);
                assert_eq!(due.seq, due.reference / 4 + 1);
                assert_eq!(due.scheduled_ns, 1_000 + due.reference * 1_000_000);
                all.push(due.reference);
            }
            assert!(publisher.poll_timeout().is_some());
        }
        all.sort_unstable();
        assert_eq!(
            all,
            (0..10).collect::<Vec<_>>(),
            "every message exactly once"
        );
    }

    #[test]
    fn answers_are_matched_by_ref() {
        let start = Instant::now();
        let mut publisher = WsPublisher::new(&plan(1000.0, 3), 1, 1, 0, 1);
        publisher.start(start, 0);
        let dues = due(&mut publisher, start + Duration::from_millis(5));
        assert_eq!(dues.len(), 3);
        for due in &dues {
            publisher.on_sent(due, 10, start);
        }
        let later = start + Duration::from_millis(7);
        assert!(publisher.on_answer(Answer::Ack(2), later));
        assert!(publisher.on_answer(Answer::Error(0, 429), later));
        assert!(
            !publisher.on_answer(Answer::Ack(2), later),
            "answered twice"
        );
        assert!(!publisher.is_done());
        assert!(publisher.on_answer(Answer::Ack(1), later));
        assert!(publisher.is_done());
        let result = publisher.finish();
        assert_eq!(result.counts.scheduled, 3);
        assert_eq!(result.counts.sent, 3);
        assert_eq!(result.counts.ok, 2);
        assert_eq!(result.counts.failed_status.get(&429), Some(&1));
        assert_eq!(result.counts.errors.parse, 1);
        assert_eq!(result.failed_seqs, vec![vec![1]]);
        assert_eq!(result.ok_per_room, vec![2]);
        assert_eq!(result.last_seq, vec![3]);
        assert_eq!(result.response_time.count(), 3);
    }

    #[test]
    fn disconnect_timeout_and_window_end_fail_what_is_left() {
        let start = Instant::now();
        // Two rooms, two subscribers on one thread: room 0 on conn 0, room 1 on conn 1.
        let mut publisher = WsPublisher::new(&plan(1000.0, 6), 2, 2, 0, 1);
        publisher.start(start, 0);
        let dues = due(&mut publisher, start + Duration::from_millis(3));
        assert_eq!(dues.len(), 4);
        for due in &dues {
            publisher.on_sent(due, 0, start);
        }
        publisher.on_disconnect(0);
        let result_read = publisher.result.counts.errors.read;
        assert_eq!(result_read, 2, "room 0's two publishes");
        // Unanswered past PUBLISH_TIMEOUT, but the window (6 ms + 500 ms) is over first.
        let end = start + Duration::from_millis(506);
        assert!(publisher.poll_timeout().unwrap() <= end);
        publisher.handle_timeout(end);
        assert!(publisher.is_done());
        assert_eq!(publisher.poll_timeout(), None);
        let result = publisher.finish();
        assert_eq!(result.counts.errors.timeout, 2);
        assert_eq!(result.counts.unsent, 2, "messages 4 and 5 never sent");
        assert_eq!(result.counts.scheduled, 6);
        assert_eq!(result.failed_seqs, vec![vec![1, 2], vec![1, 2]]);
    }

    #[test]
    fn unanswered_publishes_time_out() {
        let start = Instant::now();
        let mut plan = plan(1000.0, 1);
        plan.grace = PUBLISH_TIMEOUT * 2;
        let mut publisher = WsPublisher::new(&plan, 1, 1, 0, 1);
        publisher.start(start, 0);
        let dues = due(&mut publisher, start);
        assert_eq!(dues.len(), 1);
        publisher.on_sent(&dues[0], 0, start);
        publisher.handle_timeout(start + TIMEOUT_SCAN_INTERVAL);
        assert!(!publisher.is_done());
        publisher.handle_timeout(start + PUBLISH_TIMEOUT + TIMEOUT_SCAN_INTERVAL);
        assert!(publisher.is_done());
        assert_eq!(publisher.finish().counts.errors.timeout, 1);
    }
}
