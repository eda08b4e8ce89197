//! Unit tests of the HTTP/1.1 connection machine: no socket, virtual time. A `Pair` is the
//! machine and a scripted client with a tiny application behind it (quinn's `Pair` in
//! miniature): bytes go in as chunks, the clock moves by hand, writes complete when the
//! test says (or at once).

use super::*;
use crate::http::h1::{self, Method, Refusal, Route};
use bytes::Bytes;

mod hostile;
mod lifecycle;
use std::time::{Duration, Instant};

fn limits() -> Limits {
    Limits {
        header_bytes_max: 1024,
        body_bytes_max: 100,
        header_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(20),
        idle_timeout: Duration::from_secs(60),
    }
}

const GET: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
const POST: &[u8] = b"POST /rooms/a/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
const SUBSCRIBE: &[u8] = b"GET /rooms/a/events HTTP/1.1\r\nHost: x\r\n\r\n";

/// How the application behind the machine answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum App {
    /// Every request at once: 200 `ok`, or a stream for a GET of `/rooms/{r}/events`.
    Answer,
    /// Requests wait for [`Pair::answer`] (an answer from other shards or an upstream).
    Hold,
}

/// The machine, a client and an application, on a virtual clock.
struct Pair {
    conn: Connection,
    t0: Instant,
    now: Instant,
    app: App,
    /// Writes complete as soon as they start.
    auto_write: bool,
    /// `100 Continue` is refused (as a token check would).
    refuse_continue: bool,
    /// The write in flight.
    in_flight: Option<Bytes>,
    /// Everything written to the client, in order.
    written: Vec<u8>,
    /// Requests handed out: method, body.
    requests: Vec<(Method, Vec<u8>)>,
    refused: Vec<(u16, Cause)>,
    continues: usize,
    lingers: usize,
    closed: Option<Close>,
}

impl Pair {
    fn new() -> Self {
        Self::with(limits())
    }

    fn with(limits: Limits) -> Self {
        let t0 = Instant::now();
        Self {
            conn: Connection::new(t0, limits),
            t0,
            now: t0,
            app: App::Answer,
            auto_write: true,
            refuse_continue: false,
            in_flight: None,
            written: Vec::new(),
            requests: Vec::new(),
            refused: Vec::new(),
            continues: 0,
            lingers: 0,
            closed: None,
        }
    }

    fn hold(mut self) -> Self {
        self.app = App::Hold;
        self
    }

    fn manual_writes(mut self) -> Self {
        self.auto_write = false;
        self
    }

    fn at(&self, secs: u64) -> Instant {
        self.t0 + Duration::from_secs(secs)
    }

    /// The client sends `bytes` (one receive).
    fn send(&mut self, bytes: &[u8]) {
        self.conn.handle_received(self.now, bytes);
        self.drive();
    }

    /// The client closes.
    fn eof(&mut self) {
        self.conn.handle_eof();
        self.drive();
    }

    /// The clock moves on; a deadline that passed fires.
    fn advance(&mut self, by: Duration) {
        self.now += by;
        if self.conn.poll_timeout().is_some_and(|at| at <= self.now) {
            self.conn.handle_timeout(self.now);
            assert_eq!(self.conn.poll_timeout().filter(|at| *at <= self.now), None);
        }
        self.drive();
    }

    fn advance_to(&mut self, at: Instant) {
        let by = at.saturating_duration_since(self.now);
        self.advance(by);
    }

    /// The write in flight completes.
    fn write_done(&mut self) {
        assert!(self.in_flight.take().is_some(), "no write in flight");
        self.conn.on_written(self.now);
        self.drive();
    }

    /// The application answers the request it holds.
    fn answer(&mut self) {
        assert!(self.conn.awaits_answer());
        self.conn.respond(ok(!self.conn.keep_alive()));
        self.drive();
    }

    fn drive(&mut self) {
        loop {
            self.check();
            let mut progressed = false;
            while let Some(event) = self.conn.poll_event(self.now) {
                progressed = true;
                self.on_event(event);
            }
            if self.in_flight.is_none() {
                if let Some(bytes) = self.conn.poll_transmit() {
                    assert!(self.closed.is_none(), "a write after the close");
                    self.written.extend_from_slice(&bytes);
                    self.in_flight = Some(bytes);
                    progressed = true;
                }
            }
            if self.auto_write && self.in_flight.take().is_some() {
                self.conn.on_written(self.now);
                progressed = true;
            }
            if !progressed {
                self.check();
                return;
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        assert!(self.closed.is_none(), "an event after the close: {event:?}");
        match event {
            Event::Request(request) => {
                assert_eq!(self.conn.state(), State::Answering);
                assert_eq!(
                    request.bytes.len(),
                    request.head.len + request.head.content_length
                );
                self.requests
                    .push((request.head.method, request.body().to_vec()));
                let streams = matches!(request.head.route, Route::Events(_))
                    && request.head.method == Method::Get;
                if streams {
                    self.conn.stream();
                } else if self.app == App::Answer {
                    self.conn.respond(ok(!self.conn.keep_alive()));
                }
            }
            Event::Continue(head) => {
                assert!(head.expect_continue);
                self.continues += 1;
                if self.refuse_continue {
                    self.conn.refuse(
                        self.now,
                        h1::refusal(
                            &Refusal {
                                status: 401,
                                reason: "token".into(),
                                extra: "",
                            },
                            true,
                        ),
                    );
                } else {
                    self.conn.accept_continue();
                }
            }
            Event::Refused { refusal, cause } => {
                assert!((400..500).contains(&refusal.status), "{refusal:?}");
                assert_eq!(self.conn.state(), State::Refusing);
                self.refused.push((refusal.status, cause));
            }
            Event::Linger => {
                assert_eq!(self.conn.state(), State::Lingering);
                assert_eq!(self.conn.poll_timeout(), Some(self.now + LINGER));
                self.lingers += 1;
            }
            Event::Close(why) => {
                assert_eq!(self.conn.state(), State::Closed);
                self.closed = Some(why);
            }
        }
    }

    /// Invariants after every step.
    fn check(&self) {
        let conn = &self.conn;
        assert!(
            conn.buffered() <= conn.limits().buffer_bytes_max() + RECEIVE_BYTES_MAX,
            "buffer {}",
            conn.buffered()
        );
        match conn.state() {
            State::Idle => {
                assert_eq!(conn.buffered(), 0);
                assert_eq!(
                    conn.buffer_capacity(),
                    0,
                    "an idle connection holds no buffer"
                );
                assert!(conn.poll_timeout().is_some());
            }
            State::Head | State::Body | State::Answering | State::Refusing | State::Lingering => {
                assert!(
                    conn.poll_timeout().is_some(),
                    "{:?} without a deadline",
                    conn.state()
                )
            }
            State::Streaming | State::Closed => {
                assert_eq!(conn.poll_timeout(), None);
                assert_eq!(conn.buffer_capacity(), 0);
            }
        }
        if conn.state() == State::Closed {
            assert!(!conn.writing());
            assert_eq!(conn.read(), Read::Pause);
        }
    }

    /// The statuses of the answers written so far, in order.
    fn statuses(&self) -> Vec<u16> {
        statuses(&self.written)
    }
}

fn ok(close: bool) -> Bytes {
    h1::response(200, "text/plain", "", b"ok\n", close)
}

fn statuses(written: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(written);
    text.match_indices("HTTP/1.1 ")
        .map(|(at, _)| text[at + 9..at + 12].parse().expect("status"))
        .collect()
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

// --- requests, keep-alive, pipelining ---

#[test]
fn a_request_split_byte_by_byte_is_one_request_and_one_answer() {
    for request in [GET, POST] {
        let mut pair = Pair::new();
        for byte in request {
            pair.send(std::slice::from_ref(byte));
        }
        assert_eq!(pair.requests.len(), 1);
        assert_eq!(pair.statuses(), [200]);
        assert_eq!(pair.conn.state(), State::Idle);
        assert_eq!(
            pair.conn.poll_timeout(),
            Some(pair.now + limits().idle_timeout)
        );
    }
}

#[test]
fn keep_alive_serves_request_after_request() {
    let mut pair = Pair::new();
    for n in 1..=5 {
        pair.send(if n % 2 == 0 { POST } else { GET });
        assert_eq!(pair.requests.len(), n);
        assert_eq!(pair.conn.state(), State::Idle);
        pair.advance(secs(59));
    }
    assert_eq!(pair.requests[1].1, b"hello");
    assert_eq!(pair.statuses(), [200; 5]);
    assert_eq!(pair.closed, None);
}

#[test]
fn connection_close_and_http_1_0_close_after_their_answer() {
    for request in [
        &b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"[..],
        b"GET /healthz HTTP/1.0\r\n\r\n",
    ] {
        let mut pair = Pair::new().manual_writes();
        pair.send(request);
        assert_eq!(pair.requests.len(), 1);
        assert!(!pair.conn.keep_alive());
        assert!(String::from_utf8_lossy(&pair.written).contains("Connection: close"));
        assert_eq!(pair.closed, None, "not before the answer is written");
        pair.write_done();
        assert_eq!(pair.closed, Some(Close::Answered));
    }
    // HTTP/1.0 with keep-alive is kept.
    let mut pair = Pair::new();
    pair.send(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(pair.conn.state(), State::Idle);
}

#[test]
fn a_one_request_connection_closes_after_its_answer() {
    let mut pair = Pair::new();
    pair.conn = Connection::new(pair.now, limits()).one_request();
    pair.send(GET);
    assert!(String::from_utf8_lossy(&pair.written).contains("Connection: close"));
    assert_eq!(pair.closed, Some(Close::Answered));
}

/// Two and three pipelined requests, split at every byte position: the same requests and
/// answers, in order, whatever the split.
#[test]
fn pipelined_requests_split_at_every_position_are_answered_in_order() {
    let two = [GET, POST].concat();
    let three = [POST, GET, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n"].concat();
    for (stream, count) in [(two, 2), (three, 3)] {
        let want = {
            let mut pair = Pair::new();
            pair.send(&stream);
            pair.requests.clone()
        };
        assert_eq!(want.len(), count);
        for at in 0..=stream.len() {
            for second_split in [at, (at + stream.len()) / 2] {
                let mut pair = Pair::new();
                let (a, rest) = stream.split_at(at);
                let (b, c) = rest.split_at(second_split.saturating_sub(at).min(rest.len()));
                for chunk in [a, b, c] {
                    pair.send(chunk);
                }
                assert_eq!(pair.requests, want, "split at {at}/{second_split}");
                assert_eq!(pair.statuses(), vec![200; want.len()]);
                assert_eq!(pair.conn.state(), State::Idle);
            }
        }
    }
}

#[test]
fn the_next_request_waits_until_the_answer_is_written() {
    let mut pair = Pair::new().hold().manual_writes();
    pair.send(&[GET, GET, GET].concat());
    assert_eq!(pair.requests.len(), 1, "one request at a time");
    assert_eq!(
        pair.conn.read(),
        Read::Pause,
        "nothing read while answering"
    );
    assert!(pair.conn.awaits_answer());
    pair.answer();
    assert_eq!(pair.requests.len(), 1, "not before the answer is written");
    pair.write_done();
    assert_eq!(pair.requests.len(), 2);
    // Pipelined bytes were in when the answer was written: the header clock, not idle.
    pair.answer();
    pair.write_done();
    pair.answer();
    pair.write_done();
    assert_eq!(pair.requests.len(), 3);
    assert_eq!(pair.statuses(), [200; 3]);
    assert_eq!(pair.conn.state(), State::Idle);
}

#[test]
fn the_buffer_is_empty_and_without_capacity_between_requests() {
    let mut pair = Pair::new();
    pair.send(&POST[..20]);
    assert!(pair.conn.buffer_capacity() >= 20);
    pair.send(&POST[20..]);
    assert_eq!(pair.conn.state(), State::Idle);
    assert_eq!((pair.conn.buffered(), pair.conn.buffer_capacity()), (0, 0));
}

#[test]
fn the_read_size_is_bounded_by_one_request_at_its_limits() {
    let mut pair = Pair::new();
    let max = limits().buffer_bytes_max();
    assert_eq!(pair.conn.read(), Read::Request { bytes_max: max });
    pair.send(b"POST /publish HTTP/1.1\r\n");
    assert_eq!(
        pair.conn.read(),
        Read::Request {
            bytes_max: max - 24
        }
    );
}

// --- deadlines ---

#[test]
fn the_header_deadline_runs_from_the_accept_and_trickling_does_not_move_it() {
    let mut pair = Pair::new();
    for n in 0..9 {
        pair.advance(secs(1));
        pair.send(&GET[n..n + 1]);
    }
    assert_eq!(pair.conn.poll_timeout(), Some(pair.at(10)));
    pair.advance_to(pair.at(10));
    assert_eq!(pair.refused, [(408, Cause::HeaderTimeout)]);
    assert_eq!(pair.statuses(), [408]);
    assert!(String::from_utf8_lossy(&pair.written).contains("request head not complete"));
    // Then the linger, then the close.
    assert_eq!(pair.lingers, 1);
    assert_eq!(pair.conn.read(), Read::Discard);
    pair.advance(LINGER);
    assert_eq!(pair.closed, Some(Close::Lingered));
}

#[test]
fn a_silent_connection_gets_408_at_the_header_deadline() {
    let mut pair = Pair::new();
    pair.advance(secs(9));
    assert!(pair.written.is_empty());
    pair.advance(secs(1));
    assert_eq!(pair.refused, [(408, Cause::HeaderTimeout)]);
}

#[test]
fn the_header_deadline_of_a_later_request_runs_from_its_first_byte() {
    let mut pair = Pair::new();
    pair.send(GET);
    pair.advance(secs(50));
    pair.send(b"G");
    assert_eq!(pair.conn.state(), State::Head);
    assert_eq!(pair.conn.poll_timeout(), Some(pair.at(60)));
    pair.advance(secs(10));
    assert_eq!(pair.refused, [(408, Cause::HeaderTimeout)]);
}

#[test]
fn the_body_deadline_runs_once_from_the_head() {
    let mut pair = Pair::new();
    pair.advance(secs(5));
    pair.send(&POST[..POST.len() - 5]);
    assert_eq!(pair.conn.state(), State::Body);
    assert_eq!(pair.conn.poll_timeout(), Some(pair.at(25)));
    for _ in 0..3 {
        pair.advance(secs(5));
        pair.send(b"h");
    }
    assert_eq!(pair.conn.poll_timeout(), Some(pair.at(25)), "not per read");
    pair.advance_to(pair.at(25));
    assert_eq!(pair.refused, [(408, Cause::BodyTimeout)]);
    assert!(String::from_utf8_lossy(&pair.written).contains("request body not complete"));
}

#[test]
fn an_idle_keep_alive_connection_is_closed_without_a_word() {
    let mut pair = Pair::new();
    pair.send(GET);
    let answered = pair.written.len();
    pair.advance(secs(59));
    assert_eq!(pair.closed, None);
    pair.advance(secs(1));
    assert_eq!(pair.closed, Some(Close::IdleTimeout));
    assert_eq!(pair.written.len(), answered, "nothing written");
}

#[test]
fn an_answer_not_taken_before_the_deadline_closes_the_connection() {
    // The write never completes (a client that does not read).
    let mut pair = Pair::new().manual_writes();
    pair.send(GET);
    assert!(pair.in_flight.is_some());
    pair.advance(secs(20));
    assert_eq!(pair.closed, Some(Close::AnswerTimeout));
    // The late completion changes nothing.
    pair.write_done();
    assert_eq!(pair.statuses(), [200]);
}

#[test]
fn an_answer_never_produced_closes_at_the_deadline() {
    let mut pair = Pair::new().hold();
    pair.send(GET);
    assert!(pair.conn.awaits_answer());
    pair.advance(secs(20));
    assert_eq!(pair.closed, Some(Close::AnswerTimeout));
    // A late answer (other shards replied after all) is dropped.
    pair.conn.respond(ok(false));
    pair.drive();
    assert!(pair.written.is_empty());
}

#[test]
fn a_refusal_the_client_does_not_read_is_bounded_by_the_linger() {
    let mut pair = Pair::new().manual_writes();
    pair.send(b"BREW / HTTP/1.1\r\n\r\n");
    assert_eq!(pair.conn.state(), State::Refusing);
    pair.advance(LINGER);
    assert_eq!(pair.closed, Some(Close::Lingered));
}

#[test]
fn reloaded_timeouts_apply_from_the_next_deadline() {
    let mut pair = Pair::new();
    pair.conn.set_limits(Limits {
        idle_timeout: secs(5),
        header_timeout: secs(3),
        ..limits()
    });
    assert_eq!(
        pair.conn.poll_timeout(),
        Some(pair.at(10)),
        "the running one kept"
    );
    pair.send(GET);
    assert_eq!(pair.conn.poll_timeout(), Some(pair.at(5)));
    pair.send(b"G");
    assert_eq!(pair.conn.poll_timeout(), Some(pair.at(3)));
}

#[test]
fn a_timer_that_fires_early_does_nothing() {
    let mut pair = Pair::new();
    pair.conn.handle_timeout(pair.at(9));
    pair.drive();
    assert_eq!(pair.conn.state(), State::Head);
    assert_eq!(pair.conn.poll_timeout(), Some(pair.at(10)));
}

// --- linger ---

#[test]
fn a_refusal_lingers_then_closes_when_the_client_does() {
    let mut pair = Pair::new();
    pair.send(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(pair.refused, [(404, Cause::Request)]);
    assert_eq!(pair.lingers, 1);
    assert!(!pair.conn.keep_alive());
    // What the client still sends is dropped, not parsed.
    pair.send(GET);
    assert_eq!(pair.requests.len(), 0);
    assert_eq!(pair.statuses(), [404]);
    pair.eof();
    assert_eq!(pair.closed, Some(Close::Lingered));
}

#[test]
fn a_lingering_client_that_floods_is_closed() {
    let mut pair = Pair::new();
    pair.send(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n");
    let chunk = vec![b'x'; 16 * 1024];
    for _ in 0..4 {
        pair.send(&chunk);
    }
    assert_eq!(pair.closed, None, "{DISCARD_BYTES_MAX} bytes may come");
    pair.send(b"x");
    assert_eq!(pair.closed, Some(Close::Flood));
}

#[test]
fn a_client_that_closes_while_its_refusal_is_written_gets_it_then_the_close() {
    let mut pair = Pair::new().manual_writes();
    pair.send(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n");
    pair.eof();
    assert_eq!(pair.closed, None);
    pair.write_done();
    assert_eq!(pair.lingers, 0, "nothing to linger for");
    assert_eq!(pair.closed, Some(Close::Lingered));
    assert_eq!(pair.statuses(), [404]);
}
