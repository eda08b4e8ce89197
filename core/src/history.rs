//! A room's history: a bounded ring of already-encoded frames (each in its SSE and
//! WebSocket forms, one buffer: [`Frame`]) with increasing ids.
//!
//! Bounded both by message count and by bytes (both forms count). Frames are `Bytes`, so a frame that is
//! evicted while a write still carries it stays alive until that write completes. Ids are
//! increasing but need not be contiguous (cluster mode maps broker ids onto them).

use crate::frame::{Format, Frame};
use bytes::Bytes;
use std::collections::VecDeque;

/// Where a resume point stands relative to the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeFrom {
    /// Every frame after the cursor is still here.
    Complete,
    /// Frames after the cursor were evicted: ids `from..=to` are lost to this client.
    Gap {
        /// First missing id (cursor + 1).
        from: u64,
        /// Last missing id (just before the oldest frame still held).
        to: u64,
    },
}

/// A bounded ring of `(id, frame, stamp)`: the stamp is the process-clock time (Unix
/// nanoseconds, 0 when unknown) at which the owner shard sequenced the frame, carried to the
/// write so the publish→write latency can be measured.
#[derive(Debug)]
pub struct History {
    frames: VecDeque<(u64, Frame, u64)>,
    bytes: usize,
    messages_max: usize,
    bytes_max: usize,
    /// Highest id ever evicted (0 if none): a cursor below it has been lapped.
    evicted_up_to: u64,
    /// Highest id ever pushed (0 if none).
    last_id: u64,
}

impl History {
    /// A ring holding at most `messages_max` frames and `bytes_max` bytes (the newest frame
    /// is always kept, even when it alone exceeds `bytes_max`).
    pub fn new(messages_max: usize, bytes_max: usize) -> Self {
        assert!(messages_max > 0, "history must hold at least one message");
        Self {
            // Grown as frames arrive: most rooms hold few, and an idle room should cost little.
            frames: VecDeque::new(),
            bytes: 0,
            messages_max,
            bytes_max,
            evicted_up_to: 0,
            last_id: 0,
        }
    }

    /// Appends a frame; `id` must be above every id pushed before. Returns how many frames
    /// were evicted to stay within bounds.
    pub fn push(&mut self, id: u64, frame: Frame) -> usize {
        self.push_stamped(id, frame, 0)
    }

    /// As [`Self::push`], with the frame's sequencing stamp (Unix nanoseconds).
    pub fn push_stamped(&mut self, id: u64, frame: Frame, stamp_unix_nanos: u64) -> usize {
        assert!(
            id > self.last_id,
            "history ids must increase ({id} after {})",
            self.last_id
        );
        self.last_id = id;
        self.bytes += frame.len();
        self.frames.push_back((id, frame, stamp_unix_nanos));
        let mut evicted = 0;
        while self.frames.len() > self.messages_max
            || (self.bytes > self.bytes_max && self.frames.len() > 1)
        {
            if let Some((old_id, old, _)) = self.frames.pop_front() {
                self.bytes -= old.len();
                self.evicted_up_to = old_id;
                evicted += 1;
            }
        }
        evicted
    }

    /// Says that ids below `first_id` are not held and never will be (a cluster replica
    /// filled from the middle of the broker's log): a cursor below `first_id - 1` then
    /// counts as lapped, so resuming from it reports (or refetches) what is missing instead
    /// of silently skipping it.
    pub fn mark_held_from(&mut self, first_id: u64) {
        self.evicted_up_to = self.evicted_up_to.max(first_id.saturating_sub(1));
    }

    /// Highest id ever pushed, 0 when none was.
    pub fn last_id(&self) -> u64 {
        self.last_id
    }

    /// Oldest id still held.
    pub fn first_id(&self) -> Option<u64> {
        self.frames.front().map(|(id, _, _)| *id)
    }

    /// Frames currently held.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// True when no frame is held.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Bytes currently held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// True when a client whose last received id is `cursor` missed frames that are gone.
    pub fn is_lapped(&self, cursor: u64) -> bool {
        cursor < self.evicted_up_to
    }

    /// Tells whether resuming after `cursor` loses anything, and what.
    pub fn resume_from(&self, cursor: u64) -> ResumeFrom {
        if !self.is_lapped(cursor) {
            return ResumeFrom::Complete;
        }
        let to = self.first_id().map_or(self.last_id, |first| first - 1);
        ResumeFrom::Gap {
            from: cursor + 1,
            to,
        }
    }

    /// Appends to `out` up to `frames_max` frames with ids above `cursor`, oldest first, in
    /// `format`, and returns the id of the last one appended (or `cursor` when none was).
    pub fn collect_after(
        &self,
        cursor: u64,
        frames_max: usize,
        format: Format,
        out: &mut Vec<Bytes>,
    ) -> u64 {
        self.collect(cursor, frames_max, format, out, None)
    }

    /// As [`Self::collect_after`], also appending each frame's stamp to `stamps`.
    pub fn collect_after_stamped(
        &self,
        cursor: u64,
        frames_max: usize,
        format: Format,
        out: &mut Vec<Bytes>,
        stamps: &mut Vec<u64>,
    ) -> u64 {
        self.collect(cursor, frames_max, format, out, Some(stamps))
    }

    fn collect(
        &self,
        cursor: u64,
        frames_max: usize,
        format: Format,
        out: &mut Vec<Bytes>,
        mut stamps: Option<&mut Vec<u64>>,
    ) -> u64 {
        let start = self.frames.partition_point(|(id, _, _)| *id <= cursor);
        let mut last = cursor;
        for (id, frame, stamp) in self.frames.range(start..).take(frames_max) {
            out.push(frame.get(format));
            if let Some(stamps) = stamps.as_deref_mut() {
                stamps.push(*stamp);
            }
            last = *id;
        }
        last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(n: usize) -> Frame {
        Frame::from_parts(&vec![b'x'; n], b"")
    }

    fn text(text: &str) -> Frame {
        Frame::from_parts(text.as_bytes(), format!("ws{text}").as_bytes())
    }

    #[test]
    fn evicts_by_count_and_bytes() {
        let mut h = History::new(3, 1000);
        for id in 1..=5 {
            h.push(id, frame(10));
        }
        assert_eq!(
            (h.first_id(), h.last_id(), h.len(), h.bytes()),
            (Some(3), 5, 3, 30)
        );
        assert!(h.is_lapped(1));
        assert!(!h.is_lapped(2));
        let mut h = History::new(100, 25);
        for id in 1..=5 {
            h.push(id, frame(10));
        }
        assert_eq!((h.first_id(), h.len()), (Some(4), 2));
        // A single frame bigger than the byte bound is still kept.
        h.push(6, frame(100));
        assert_eq!((h.first_id(), h.len()), (Some(6), 1));
    }

    #[test]
    fn resume_reports_gaps() {
        let mut h = History::new(3, usize::MAX);
        assert_eq!(h.resume_from(0), ResumeFrom::Complete);
        for id in 1..=10 {
            h.push(id, frame(1));
        }
        assert_eq!(h.resume_from(7), ResumeFrom::Complete);
        assert_eq!(h.resume_from(3), ResumeFrom::Gap { from: 4, to: 7 });
        assert_eq!(h.resume_from(0), ResumeFrom::Gap { from: 1, to: 7 });
    }

    #[test]
    fn stamps_travel_with_their_frames() {
        let mut h = History::new(2, usize::MAX);
        for id in 1..=3u64 {
            h.push_stamped(id, text(&id.to_string()), 100 * id);
        }
        let (mut out, mut stamps) = (Vec::new(), Vec::new());
        assert_eq!(
            h.collect_after_stamped(0, 10, Format::Sse, &mut out, &mut stamps),
            3
        );
        assert_eq!(out, vec![Bytes::from("2"), Bytes::from("3")]);
        assert_eq!(stamps, vec![200, 300]);
        h.push(4, text("4"));
        stamps.clear();
        assert_eq!(
            h.collect_after_stamped(3, 10, Format::Sse, &mut out, &mut stamps),
            4
        );
        assert_eq!(stamps, vec![0], "unstamped frames carry 0");
    }

    #[test]
    fn collect_after_respects_cursor_and_max() {
        let mut h = History::new(10, usize::MAX);
        for id in [2, 4, 6, 8] {
            h.push(id, text(&id.to_string()));
        }
        let mut out = Vec::new();
        assert_eq!(h.collect_after(3, 2, Format::Sse, &mut out), 6);
        assert_eq!(out, vec![Bytes::from("4"), Bytes::from("6")]);
        out.clear();
        assert_eq!(h.collect_after(3, 2, Format::Ws, &mut out), 6);
        assert_eq!(out, vec![Bytes::from("ws4"), Bytes::from("ws6")]);
        out.clear();
        assert_eq!(h.collect_after(8, 5, Format::Sse, &mut out), 8);
        assert!(out.is_empty());
    }

    #[test]
    fn held_from_makes_older_cursors_lapped() {
        let mut h = History::new(10, usize::MAX);
        for id in [100, 200] {
            h.push(id, frame(1));
        }
        assert_eq!(
            h.resume_from(5),
            ResumeFrom::Complete,
            "nothing evicted yet"
        );
        h.mark_held_from(100);
        assert_eq!(h.resume_from(5), ResumeFrom::Gap { from: 6, to: 99 });
        assert_eq!(h.resume_from(99), ResumeFrom::Complete);
        h.mark_held_from(50);
        assert_eq!(
            h.resume_from(60),
            ResumeFrom::Gap { from: 61, to: 99 },
            "never lowered"
        );
    }

    #[test]
    #[should_panic(expected = "history ids must increase")]
    fn rejects_non_increasing_ids() {
        let mut h = History::new(3, 100);
        h.push(2, frame(1));
        h.push(2, frame(1));
    }

    proptest! {
        #[test]
        fn ring_matches_model(sizes in proptest::collection::vec(1usize..50, 1..200), cap in 1usize..20, bytes_max in 1usize..400, cursor in 0u64..220) {
            let mut h = History::new(cap, bytes_max);
            let mut model: Vec<(u64, usize)> = Vec::new();
            for (i, size) in sizes.iter().enumerate() {
                let id = i as u64 + 1;
                h.push(id, frame(*size));
                model.push((id, *size));
                while model.len() > cap || (model.iter().map(|m| m.1).sum::<usize>() > bytes_max && model.len() > 1) {
                    model.remove(0);
                }
                prop_assert_eq!(h.len(), model.len());
                prop_assert_eq!(h.bytes(), model.iter().map(|m| m.1).sum::<usize>());
                prop_assert!(h.len() <= cap);
            }
            let mut out = Vec::new();
            let last = h.collect_after(cursor, usize::MAX, Format::Sse, &mut out);
            let want: Vec<_> = model.iter().filter(|m| m.0 > cursor).collect();
            prop_assert_eq!(out.len(), want.len());
            prop_assert_eq!(last, want.last().map_or(cursor, |m| m.0));
            let first = model[0].0;
            prop_assert_eq!(h.is_lapped(cursor), cursor + 1 < first);
        }
    }
}
