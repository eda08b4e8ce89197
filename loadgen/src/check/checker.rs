//! What every delivery is judged by, whatever carried it: [`Checker`] takes one event
//! (an SSE event or a WebSocket message) of one subscriber, decodes the ringload payload in
//! it and classifies it (delivered, duplicate, reordered, wrong room, stale, foreign) into
//! [`DeliveryCounts`] and the latency histograms. No IO: the subscriber loops own sockets
//! and call in with the receive time.

use crate::check::latency::Latency;
use crate::check::tracker::{Arrival, SeqTracker};
use crate::proto::payload;
use crate::proto::sse::SseSink;
use serde::Serialize;

/// Per-thread (and, merged, per-run) delivery counts.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct DeliveryCounts {
    /// Distinct expected messages received (in order, after a gap, or late).
    pub delivered: u64,
    /// Messages received again.
    pub duplicates: u64,
    /// Messages that arrived after a later one of the same room.
    pub reordered: u64,
    /// Messages whose payload names another room.
    pub wrong_room: u64,
    /// Messages from another run (e.g. history replayed from an earlier sweep step).
    pub stale: u64,
    /// Events whose data carries no ringload payload.
    pub foreign: u64,
    /// `event: gap` notices.
    pub gap_events: u64,
    /// Comment lines (heartbeats).
    pub heartbeats: u64,
    /// Subscriber connections closed or failed after setup.
    pub disconnects: u64,
    /// Body bytes read.
    pub bytes: u64,
    /// Read syscalls that returned data.
    pub reads: u64,
}

impl DeliveryCounts {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &DeliveryCounts) {
        self.delivered += other.delivered;
        self.duplicates += other.duplicates;
        self.reordered += other.reordered;
        self.wrong_room += other.wrong_room;
        self.stale += other.stale;
        self.foreign += other.foreign;
        self.gap_events += other.gap_events;
        self.heartbeats += other.heartbeats;
        self.disconnects += other.disconnects;
        self.bytes += other.bytes;
        self.reads += other.reads;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum EventKind {
    #[default]
    Message,
    Gap,
    Other,
}

/// The event being assembled on one connection (its lines may span reads).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PendingEvent {
    kind: EventKind,
    has_data: bool,
    has_stamp: bool,
    run: u32,
    room_ok: bool,
    seq: u64,
    sent_ns: u64,
    scheduled_ns: u64,
}

/// The SSE sink that checks events of one subscriber (used by every subscriber path, so
/// every transport is judged by the same code).
pub(crate) struct Checker<'a> {
    pub(crate) pending: &'a mut PendingEvent,
    pub(crate) tracker: &'a mut SeqTracker,
    pub(crate) counts: &'a mut DeliveryCounts,
    pub(crate) latency_stamp: &'a mut Latency,
    pub(crate) latency_schedule: &'a mut Latency,
    pub(crate) room: &'a [u8],
    pub(crate) run_id: u32,
    pub(crate) now_ns: u64,
}

impl Checker<'_> {
    /// One complete message of a transport that frames messages itself (a WebSocket text
    /// message): `room` is the room the message names, `data` its data. Judged exactly as
    /// an SSE event carrying `data`; a message naming another room than the subscriber's
    /// counts as delivered to the wrong room even when its payload does not.
    #[inline]
    pub(crate) fn on_message(&mut self, room: &[u8], data: &[u8]) {
        *self.pending = PendingEvent::default();
        self.on_data(data);
        if room != self.room {
            self.pending.room_ok = false;
        }
        self.on_dispatch();
    }

    /// A notice that messages were skipped (SSE `event: gap`, WebSocket `"type":"gap"`).
    pub(crate) fn on_gap(&mut self) {
        self.counts.gap_events += 1;
    }

    /// A heartbeat (SSE comment, WebSocket ping).
    pub(crate) fn on_heartbeat(&mut self) {
        self.counts.heartbeats += 1;
    }

    /// Something that is not a ringload message (an unknown control object, a binary
    /// message, text that is not JSON).
    pub(crate) fn on_foreign(&mut self) {
        self.counts.foreign += 1;
    }
}

impl SseSink for Checker<'_> {
    #[inline]
    fn on_data(&mut self, value: &[u8]) {
        self.pending.has_data = true;
        if let Some(stamp) = payload::decode(value) {
            self.pending.has_stamp = true;
            self.pending.run = stamp.run;
            self.pending.room_ok = stamp.room == self.room;
            self.pending.seq = stamp.seq;
            self.pending.sent_ns = stamp.sent_ns;
            self.pending.scheduled_ns = stamp.scheduled_ns;
        }
    }

    fn on_event_type(&mut self, value: &[u8]) {
        self.pending.kind = match value {
            b"message" => EventKind::Message,
            b"gap" => EventKind::Gap,
            _ => EventKind::Other,
        };
    }

    fn on_comment(&mut self) {
        self.counts.heartbeats += 1;
    }

    #[inline]
    fn on_dispatch(&mut self) {
        let event = std::mem::take(self.pending);
        match event.kind {
            EventKind::Gap => self.counts.gap_events += 1,
            EventKind::Other => self.counts.foreign += 1,
            EventKind::Message if !event.has_data => {}
            EventKind::Message if !event.has_stamp => self.counts.foreign += 1,
            EventKind::Message if event.run != self.run_id => self.counts.stale += 1,
            EventKind::Message if !event.room_ok => self.counts.wrong_room += 1,
            EventKind::Message => {
                let arrival = self.tracker.observe(event.seq);
                if arrival == Arrival::Duplicate {
                    self.counts.duplicates += 1;
                    return;
                }
                if arrival == Arrival::Reordered {
                    self.counts.reordered += 1;
                }
                self.counts.delivered += 1;
                self.latency_stamp
                    .record_ns(self.now_ns as i64 - event.sent_ns as i64);
                self.latency_schedule
                    .record_ns(self.now_ns as i64 - event.scheduled_ns as i64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::payload::Stamp;

    fn payload(room: &[u8], seq: u64, run: u32) -> Vec<u8> {
        let mut out = Vec::new();
        payload::encode(
            &mut out,
            &Stamp {
                run,
                room,
                seq,
                sent_ns: 1_000,
                scheduled_ns: 500,
            },
            40,
        );
        out
    }

    /// A framed message (WebSocket) is judged as an SSE event with the same data, and the
    /// room the frame names is checked too.
    #[test]
    fn framed_messages_are_judged_like_events() {
        let mut pending = PendingEvent::default();
        let mut tracker = SeqTracker::new();
        let mut counts = DeliveryCounts::default();
        let (mut stamp, mut schedule) = (Latency::new(), Latency::new());
        let mut checker = Checker {
            pending: &mut pending,
            tracker: &mut tracker,
            counts: &mut counts,
            latency_stamp: &mut stamp,
            latency_schedule: &mut schedule,
            room: b"r0",
            run_id: 7,
            now_ns: 2_000,
        };
        checker.on_message(b"r0", &payload(b"r0", 1, 7));
        checker.on_message(b"r0", &payload(b"r0", 1, 7));
        checker.on_message(b"r1", &payload(b"r0", 2, 7));
        checker.on_message(b"r0", &payload(b"r1", 3, 7));
        checker.on_message(b"r0", &payload(b"r0", 4, 8));
        checker.on_message(b"r0", b"hello");
        checker.on_gap();
        checker.on_heartbeat();
        assert_eq!(
            counts,
            DeliveryCounts {
                delivered: 1,
                duplicates: 1,
                wrong_room: 2,
                stale: 1,
                foreign: 1,
                gap_events: 1,
                heartbeats: 1,
                ..DeliveryCounts::default()
            }
        );
        assert_eq!(stamp.count(), 1);
        assert_eq!(schedule.count(), 1);
    }
}
