//! The request side of one HTTP/1.1 connection, sans IO: which request the bytes received so
//! far make, when a body is worth a `100 Continue`, what is refused from the head, and which
//! deadline (`--header-timeout`, `--body-timeout`, `--idle-timeout`) runs. Time comes in as
//! `now`; nothing here reads a clock, a socket or a ring.
//!
//! The shard (shard/) drives one [`RequestReader`] per connection over its receive
//! buffer — plain, TLS (the plaintext rustls gives) and virtual connections alike — and the
//! `http1_conn` fuzz target drives the very same code with arbitrary bytes and clock jumps.
//! The buffer itself stays in the shard's connection (the ring receives into its spare
//! capacity); [`RequestReader::recv_room`] bounds it.

use crate::http::h1::{self as http1, Head, Parsed, Refusal};
use std::time::{Duration, Instant};

/// What bounds a request: sizes from the start-up settings, deadlines from the live ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `--max-header-bytes`.
    pub header_bytes_max: usize,
    /// `--max-message-bytes`: the largest body any route takes.
    pub body_bytes_max: usize,
    /// `--header-timeout`: from a request's first byte (a new connection's: from accept).
    pub header_timeout: Duration,
    /// `--body-timeout`: from a complete head to the end of its body.
    pub body_timeout: Duration,
    /// `--idle-timeout`: a keep-alive connection waiting for its next request.
    pub idle_timeout: Duration,
}

impl Limits {
    /// Most bytes a connection's receive buffer holds while reading a request: one head
    /// and one body at their limits, plus one byte to see that a head went over.
    pub fn buffer_bytes_max(&self) -> usize {
        self.header_bytes_max + self.body_bytes_max + 1
    }
}

/// What the connection is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Between requests on a keep-alive connection (idle deadline).
    Idle,
    /// A request head (header deadline).
    Head,
    /// The body of a head that passed [`http1::vet`] (body deadline).
    Body,
    /// A request was handed out; nothing is read until its answer is written (its
    /// deadline still runs).
    Answering,
    /// Refused or timed out: the connection closes.
    Done,
}

/// What to do after new bytes came in.
#[derive(Debug, PartialEq, Eq)]
#[must_use]
pub enum Step {
    /// Receive more (at most [`RequestReader::recv_room`] bytes).
    NeedMore,
    /// The head of a request with `Expect: 100-continue` passed every check the reader
    /// can make and its body is not here: write [`http1::CONTINUE`] (after the driver's own
    /// checks, e.g. tokens), then receive more.
    Continue(Head),
    /// A whole request: its head, and its body is `buf[head.len..end]`; consume `..end`.
    Request {
        /// The parsed head.
        head: Head,
        /// Where the request ends in the buffer.
        end: usize,
    },
    /// Answer this refusal and close (the body, if any, is never read).
    Refuse(Refusal),
}

/// What a deadline that passed asks for.
#[derive(Debug, PartialEq, Eq)]
#[must_use]
pub enum Expired {
    /// An idle keep-alive connection, or one whose answer was not taken in time: close it
    /// without a word.
    Close,
    /// A request not complete in time: answer 408 and close.
    Refuse(Refusal),
}

/// The request side of one HTTP/1.1 connection.
#[derive(Debug, Clone)]
pub struct RequestReader {
    phase: Phase,
    deadline: Option<Instant>,
    continue_sent: bool,
}

impl RequestReader {
    /// A connection accepted at `now`: its first head must be complete within
    /// `--header-timeout` of connecting (a slowloris client gets no more by trickling).
    pub fn new(now: Instant, limits: &Limits) -> Self {
        Self {
            phase: Phase::Head,
            deadline: Some(now + limits.header_timeout),
            continue_sent: false,
        }
    }

    /// What the connection waits for.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The deadline running, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    /// How many more bytes the buffer (now `buffered` long) may take: a request larger than
    /// [`Limits::buffer_bytes_max`] is refused before that, so this never grows it further.
    /// Zero while nothing is to be read.
    pub fn recv_room(&self, buffered: usize, limits: &Limits) -> usize {
        match self.phase {
            Phase::Idle | Phase::Head | Phase::Body => {
                limits.buffer_bytes_max().saturating_sub(buffered)
            }
            Phase::Answering | Phase::Done => 0,
        }
    }

    /// `buf` is everything received and not yet consumed. Parses it and says what to do;
    /// call again after consuming a request's bytes and answering it
    /// ([`Self::handle_answered`]).
    pub fn handle_input(&mut self, now: Instant, buf: &[u8], limits: &Limits) -> Step {
        match self.phase {
            Phase::Answering | Phase::Done => return Step::NeedMore,
            Phase::Idle if buf.is_empty() => return Step::NeedMore,
            Phase::Idle => {
                // The next request's first byte starts its header clock.
                self.phase = Phase::Head;
                self.deadline = Some(now + limits.header_timeout);
            }
            Phase::Head | Phase::Body => {}
        }
        let head = match http1::parse(buf, limits.header_bytes_max, limits.body_bytes_max) {
            Err(refusal) => return self.refuse(refusal),
            Ok(Parsed::Partial) => return Step::NeedMore,
            Ok(Parsed::Head(head)) => head,
        };
        if self.phase == Phase::Head {
            if let Err(refusal) = http1::vet(&head) {
                return self.refuse(refusal);
            }
            // The head is in: from now on the body has `--body-timeout` (once, not per read).
            self.phase = Phase::Body;
            self.deadline = Some(now + limits.body_timeout);
        }
        // `parse` refused any length over the body limit, so this cannot overflow.
        let end = head.len + head.content_length;
        if buf.len() >= end {
            // The request's deadline keeps running while it is answered: a client that
            // does not read its answer is closed then, as one that does not send.
            self.phase = Phase::Answering;
            self.continue_sent = false;
            return Step::Request { head, end };
        }
        if head.expect_continue && !self.continue_sent {
            self.continue_sent = true;
            return Step::Continue(head);
        }
        Step::NeedMore
    }

    /// The answer to the last request was written; `buffered` bytes of the next one are
    /// already in (pipelined). The idle deadline runs if none are, the header one if some.
    pub fn handle_answered(&mut self, now: Instant, buffered: usize, limits: &Limits) {
        if self.phase != Phase::Answering {
            return;
        }
        if buffered == 0 {
            self.phase = Phase::Idle;
            self.deadline = Some(now + limits.idle_timeout);
        } else {
            self.phase = Phase::Head;
            self.deadline = Some(now + limits.header_timeout);
        }
    }

    /// The process is stopping: the deadline running comes no later than `deadline` (a
    /// connection that has sent nothing must not hold the drain for `--header-timeout`).
    pub fn hurry(&mut self, deadline: Instant) {
        if let Some(at) = self.deadline.as_mut() {
            *at = (*at).min(deadline);
        }
    }

    /// The connection stopped reading requests (it streams, or was refused): no deadline.
    pub fn finish(&mut self) {
        self.phase = Phase::Done;
        self.deadline = None;
    }

    /// The clock reached `now`: what the deadline that passed, if any, asks for.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Expired> {
        if self.deadline.is_none_or(|deadline| now < deadline) {
            return None;
        }
        let phase = self.phase;
        self.finish();
        let text = match phase {
            Phase::Idle | Phase::Answering => return Some(Expired::Close),
            Phase::Head => "request head not complete in time",
            Phase::Body => "request body not complete in time",
            Phase::Done => return None,
        };
        Some(Expired::Refuse(Refusal {
            status: 408,
            reason: text.into(),
            extra: "",
        }))
    }

    fn refuse(&mut self, refusal: Refusal) -> Step {
        self.finish();
        Step::Refuse(refusal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            header_bytes_max: 1024,
            body_bytes_max: 100,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
        }
    }

    fn status(step: &Step) -> Option<u16> {
        match step {
            Step::Refuse(refusal) => Some(refusal.status),
            _ => None,
        }
    }

    #[test]
    fn a_request_split_byte_by_byte_is_one_request() {
        let limits = limits();
        let t0 = Instant::now();
        let mut reader = RequestReader::new(t0, &limits);
        let bytes =
            b"POST /rooms/a/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET";
        let request_len = bytes.len() - 3;
        for at in 1..request_len {
            assert_eq!(
                reader.handle_input(t0, &bytes[..at], &limits),
                Step::NeedMore,
                "{at}"
            );
        }
        let Step::Request { head, end } = reader.handle_input(t0, bytes, &limits) else {
            panic!()
        };
        assert_eq!((end, head.content_length), (request_len, 3));
        assert_eq!(reader.phase(), Phase::Answering);
        assert_eq!(reader.poll_timeout(), Some(t0 + limits.body_timeout));
        assert_eq!(
            reader.clone().handle_timeout(t0 + limits.body_timeout),
            Some(Expired::Close),
            "an answer not taken in time"
        );
        assert_eq!(
            reader.recv_room(0, &limits),
            0,
            "nothing read while answering"
        );
        // Pipelined bytes of the next request: the header clock runs.
        reader.handle_answered(t0, 3, &limits);
        assert_eq!(reader.phase(), Phase::Head);
        assert_eq!(reader.poll_timeout(), Some(t0 + limits.header_timeout));
    }

    #[test]
    fn deadlines_follow_the_phase_in_virtual_time() {
        let limits = limits();
        let t0 = Instant::now();
        let mut reader = RequestReader::new(t0, &limits);
        assert_eq!(reader.handle_timeout(t0 + Duration::from_secs(9)), None);
        // Trickling bytes does not push the header deadline back.
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(reader.handle_input(t1, b"GET /he", &limits), Step::NeedMore);
        assert_eq!(reader.poll_timeout(), Some(t0 + limits.header_timeout));
        let Some(Expired::Refuse(refusal)) = reader.handle_timeout(t0 + limits.header_timeout)
        else {
            panic!()
        };
        assert_eq!(refusal.status, 408);
        assert_eq!(reader.phase(), Phase::Done);

        // A head in, the body not: the body deadline from the head.
        let mut reader = RequestReader::new(t0, &limits);
        let head = b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n{";
        assert_eq!(reader.handle_input(t1, head, &limits), Step::NeedMore);
        assert_eq!(reader.poll_timeout(), Some(t1 + limits.body_timeout));
        let Some(Expired::Refuse(refusal)) = reader.handle_timeout(t1 + limits.body_timeout) else {
            panic!()
        };
        assert!(refusal.reason.contains("body"));

        // Idle between requests: closed without an answer; the next request's first byte
        // starts its header clock.
        let mut reader = RequestReader::new(t0, &limits);
        let get = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(matches!(
            reader.handle_input(t0, get, &limits),
            Step::Request { .. }
        ));
        reader.handle_answered(t1, 0, &limits);
        assert_eq!(reader.poll_timeout(), Some(t1 + limits.idle_timeout));
        let t2 = t1 + Duration::from_secs(30);
        assert_eq!(reader.handle_input(t2, b"G", &limits), Step::NeedMore);
        assert_eq!(reader.poll_timeout(), Some(t2 + limits.header_timeout));
        let mut idle = RequestReader::new(t0, &limits);
        assert!(matches!(
            idle.handle_input(t0, get, &limits),
            Step::Request { .. }
        ));
        idle.handle_answered(t0, 0, &limits);
        assert_eq!(
            idle.handle_timeout(t0 + limits.idle_timeout),
            Some(Expired::Close)
        );
    }

    #[test]
    fn continue_once_when_the_body_will_be_read() {
        let limits = limits();
        let t0 = Instant::now();
        let head = "POST /rooms/a/messages HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n";
        let mut reader = RequestReader::new(t0, &limits);
        assert!(matches!(
            reader.handle_input(t0, head.as_bytes(), &limits),
            Step::Continue(_)
        ));
        let partial = format!("{head}he");
        assert_eq!(
            reader.handle_input(t0, partial.as_bytes(), &limits),
            Step::NeedMore,
            "one 100 per request"
        );
        let whole = format!("{head}hello");
        assert!(matches!(
            reader.handle_input(t0, whole.as_bytes(), &limits),
            Step::Request { end, .. } if end == whole.len()
        ));
        // Body already in: no interim answer.
        let mut reader = RequestReader::new(t0, &limits);
        assert!(matches!(
            reader.handle_input(t0, whole.as_bytes(), &limits),
            Step::Request { .. }
        ));
        // Refused from the head: no 100.
        for (request, want) in [
            ("POST /healthz HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n", 405),
            ("GET /healthz HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n", 413),
            ("POST /publish HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 500\r\n\r\n", 413),
            ("POST /publish HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\nContent-Length: 5\r\n\r\n", 417),
        ] {
            let mut reader = RequestReader::new(t0, &limits);
            let step = reader.handle_input(t0, request.as_bytes(), &limits);
            assert_eq!(status(&step), Some(want), "{request:?}");
            assert_eq!(reader.phase(), Phase::Done);
            assert_eq!(reader.poll_timeout(), None);
        }
    }

    #[test]
    fn a_body_on_a_route_that_takes_none_is_refused_from_the_head() {
        let limits = limits();
        let t0 = Instant::now();
        for request in [
            "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n",
            "HEAD /rooms/a/events HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n",
        ] {
            let mut reader = RequestReader::new(t0, &limits);
            assert_eq!(
                status(&reader.handle_input(t0, request.as_bytes(), &limits)),
                Some(413)
            );
        }
    }

    #[test]
    fn the_buffer_never_needs_more_than_one_request_at_its_limits() {
        let limits = limits();
        let t0 = Instant::now();
        let mut reader = RequestReader::new(t0, &limits);
        assert_eq!(reader.recv_room(0, &limits), 1024 + 100 + 1);
        // A head over the limit is refused once the buffer holds one byte more than it.
        let big = vec![b'a'; limits.header_bytes_max + 1];
        assert_eq!(status(&reader.handle_input(t0, &big, &limits)), Some(431));
        let mut reader = RequestReader::new(t0, &limits);
        let mut long = b"GET /healthz HTTP/1.1\r\nX: ".to_vec();
        long.resize(limits.header_bytes_max + 1, b'y');
        assert_eq!(status(&reader.handle_input(t0, &long, &limits)), Some(431));
    }
}
