//! One whole HTTP/1.1 connection as a plain state machine (the shape of quinn-proto's
//! `Connection`): received plaintext and `now` go in (`handle_received`, `handle_eof`,
//! `handle_timeout`, `on_written`), and out come requests and notices for the application
//! (`poll_event`), the bytes to write (`poll_transmit`) and the one deadline that runs
//! (`poll_timeout`). The application answers a request with `respond`, `refuse`, `stream`
//! or by waiting (the answer comes later, from other shards or an upstream).
//!
//! It owns: the request states (idle, head, body, answering), keep-alive, pipelining (the
//! next request is not read until the answer to the current one is written), the header /
//! body / idle deadlines, `100 Continue`, HEAD (answers lose their body), the linger after
//! a refusal, the drain (`handle_drain`), and the SSE stream after its head (the machine
//! only knows that the connection streams: the fan-out's frames never pass through it; what
//! a subscriber sends is dropped, up to [`DISCARD_BYTES_MAX`]). Its only buffer holds the
//! request bytes not yet handed out, bounded by the header and body limits, empty and
//! without capacity between requests.
//!
//! It must not touch sockets, the ring, TLS, the clock, routing decisions beyond the parse
//! (what a request means is the application's), or the fan-out.

use super::Limits;
use crate::http::h1::{self, Head, Method, Parsed, Refusal};
use bytes::Bytes;
use std::time::{Duration, Instant};

/// How long a connection whose request was refused may keep sending once the refusal is
/// written (and, before that, how long the refusal may take to write), so the client reads
/// the refusal instead of a reset.
pub const LINGER: Duration = Duration::from_secs(2);
/// Most bytes a streaming or lingering connection may send (all dropped) before it is
/// closed: a subscriber has nothing to say after its request, and a refused client only
/// needs to finish its send.
pub const DISCARD_BYTES_MAX: usize = 64 * 1024;
/// Most plaintext a driver hands in one [`Connection::handle_received`] (a plain receive
/// asks for at most this; a TLS receive decrypts less). A connection that is not reading
/// (its answer is being written) holds at most one request at its limits plus this.
pub const RECEIVE_BYTES_MAX: usize = 64 * 1024;

/// Where the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Between requests on a keep-alive connection, nothing buffered (idle deadline).
    Idle,
    /// Reading a request head (header deadline, from the request's first byte; a new
    /// connection's from its accept).
    Head,
    /// Reading the body of a head that passed [`h1::vet`] (body deadline, from the head).
    Body,
    /// A request was handed out: nothing more is read until its answer is written (the
    /// request's deadline still runs: a client that does not take its answer is closed).
    Answering,
    /// An SSE stream: the fan-out writes; what the client sends is dropped.
    Streaming,
    /// A refusal is being written; the connection lingers, then closes.
    Refusing,
    /// The refusal is written and the write side half-closed: what the client still sends
    /// is dropped until it closes or [`LINGER`] passes.
    Lingering,
    /// Closed: nothing more comes out.
    Closed,
}

/// What the driver should receive next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// Request bytes: receive at most `bytes_max` and hand them to
    /// [`Connection::handle_received`].
    Request {
        /// The most the buffer may still take (never 0).
        bytes_max: usize,
    },
    /// Receive only to see the client close (or flood): the bytes are dropped, so a small
    /// shared buffer does.
    Discard,
    /// Receive nothing now (an answer is due or being written).
    Pause,
}

/// Why a connection closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// The client closed (or its receive failed).
    Eof,
    /// A keep-alive connection stayed idle for `--idle-timeout`.
    IdleTimeout,
    /// An answer was not written (or not produced) before the request's deadline.
    AnswerTimeout,
    /// The answer to a request that asked to close (or on a connection that may not be kept)
    /// is written.
    Answered,
    /// The linger after a refusal ended (its time passed, or the client closed).
    Lingered,
    /// The shard is draining and the connection has nothing in progress.
    Drain,
    /// The client sent more than [`DISCARD_BYTES_MAX`] while nothing was read, or more than
    /// a request at its limits while its answer was due.
    Flood,
}

/// What made the machine refuse a request (the application counts it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The head: malformed, over a limit, a method or body the route does not take.
    Request,
    /// The head was not complete within `--header-timeout`.
    HeaderTimeout,
    /// The body was not complete within `--body-timeout`.
    BodyTimeout,
}

/// A whole request, handed out of the buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    /// Its parsed head.
    pub head: Head,
    /// Its bytes: the head (`..head.len`), then the body.
    pub bytes: Vec<u8>,
}

impl Request {
    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.bytes[self.head.len..]
    }
}

/// What the application is told.
#[derive(Debug, PartialEq, Eq)]
#[must_use]
pub enum Event {
    /// A whole request: answer it ([`Connection::respond`], [`Connection::refuse`],
    /// [`Connection::stream`]) now or later.
    Request(Request),
    /// A head with `Expect: 100-continue` passed every check the machine makes and its body
    /// is not in: check what else would refuse it (tokens), then
    /// [`Connection::accept_continue`] or [`Connection::refuse`].
    Continue(Head),
    /// The machine refused the request (its refusal is queued for writing): count it.
    Refused {
        /// What was refused.
        refusal: Refusal,
        /// Why.
        cause: Cause,
    },
    /// The refusal is written: half-close the write side (after TLS `close_notify`) and
    /// keep receiving ([`Read::Discard`]) until the client closes or the deadline.
    Linger,
    /// Close the connection now (the machine is [`State::Closed`]).
    Close(Close),
}

/// A notice the machine holds for the application: only what the machine decides itself,
/// never a request, so it takes 2 bytes in every connection where an [`Event`] takes 176
/// (`poll_event` makes the event from it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Notice {
    /// The head was not complete in time: its 408 is queued ([`Event::Refused`], cause
    /// [`Cause::HeaderTimeout`]).
    HeaderTimeout,
    /// The body was not complete in time: its 408 is queued ([`Event::Refused`], cause
    /// [`Cause::BodyTimeout`]).
    BodyTimeout,
    /// [`Event::Linger`].
    Linger,
    /// [`Event::Close`].
    Close(Close),
}

impl Notice {
    /// The event it stands for.
    fn event(self) -> Event {
        match self {
            Notice::HeaderTimeout => Event::Refused {
                refusal: timeout_refusal(Cause::HeaderTimeout),
                cause: Cause::HeaderTimeout,
            },
            Notice::BodyTimeout => Event::Refused {
                refusal: timeout_refusal(Cause::BodyTimeout),
                cause: Cause::BodyTimeout,
            },
            Notice::Linger => Event::Linger,
            Notice::Close(why) => Event::Close(why),
        }
    }
}

/// What the write in flight is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writing {
    /// `100 Continue`: the body comes next.
    Interim,
    /// The answer to a request.
    Answer,
    /// A refusal: linger, then close.
    Refusal,
}

/// One HTTP/1.1 connection, sans IO.
#[derive(Debug)]
pub struct Connection {
    limits: Limits,
    state: State,
    /// Request bytes received and not handed out.
    buf: Vec<u8>,
    deadline: Option<Instant>,
    /// Queued for writing, not yet taken by [`Self::poll_transmit`].
    out: Option<(Bytes, Writing)>,
    /// Taken by the driver and not yet written ([`Self::on_written`]).
    writing: Option<Writing>,
    /// A notice for the application, ahead of anything parsed.
    notice: Option<Notice>,
    /// The connection may serve another request after this one.
    keep_alive: bool,
    /// Accepted (or not yet spoken) during a drain: its request gets 503 `draining`.
    draining: bool,
    /// The request being answered is a HEAD: answers go without their body.
    head_request: bool,
    /// `100 Continue` was asked for (handed out) for the request being read.
    continue_asked: bool,
    /// The client closed while a refusal was being written: close once it is.
    peer_closed: bool,
    /// Bytes dropped while streaming or lingering.
    discarded: usize,
}

impl Connection {
    /// A connection accepted at `now`: its first head must be complete within
    /// `--header-timeout` of connecting (a slowloris client gets no more by trickling).
    pub fn new(now: Instant, limits: Limits) -> Self {
        Self {
            limits,
            state: State::Head,
            buf: Vec::new(),
            deadline: Some(now + limits.header_timeout),
            out: None,
            writing: None,
            notice: None,
            keep_alive: true,
            draining: false,
            head_request: false,
            continue_asked: false,
            peer_closed: false,
            discarded: 0,
        }
    }

    /// A connection that serves one request and closes (a virtual connection: the
    /// companion sends each HTTP/2 or HTTP/3 request on its own).
    pub fn one_request(mut self) -> Self {
        self.keep_alive = false;
        self
    }

    /// New deadlines from reloaded settings: they apply from the next deadline set (the
    /// one running is kept). The sizes are start-up settings and must not change.
    pub fn set_limits(&mut self, limits: Limits) {
        debug_assert_eq!(
            (limits.header_bytes_max, limits.body_bytes_max),
            (self.limits.header_bytes_max, self.limits.body_bytes_max),
            "sizes are fixed at start-up"
        );
        self.limits = limits;
    }

    /// Where the connection is.
    pub fn state(&self) -> State {
        self.state
    }

    /// The limits it reads requests under.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Whether the connection may serve another request after the current one (the
    /// `Connection:` header of an answer).
    pub fn keep_alive(&self) -> bool {
        self.keep_alive
    }

    /// Whether its request must be answered 503 `draining` (it connected, or had not spoken
    /// yet, when the drain began).
    pub fn draining(&self) -> bool {
        self.draining
    }

    /// Whether a request was handed out and its answer is neither queued nor being
    /// written: the application owes it one ([`Self::respond`], [`Self::refuse`],
    /// [`Self::stream`]).
    pub fn awaits_answer(&self) -> bool {
        self.state == State::Answering && self.out.is_none() && self.writing.is_none()
    }

    /// Whether a write of the machine's (an answer, `100 Continue`, a refusal) is queued or
    /// in flight.
    pub fn writing(&self) -> bool {
        self.out.is_some() || self.writing.is_some()
    }

    /// Bytes buffered and not handed out (bounded: [`Limits::buffer_bytes_max`] plus one
    /// receive).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The buffer's capacity (zero when nothing is buffered between requests).
    pub fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The deadline running, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    /// What to receive next.
    pub fn read(&self) -> Read {
        match self.state {
            State::Idle | State::Head | State::Body if !self.writing() => {
                let bytes_max = self
                    .limits
                    .buffer_bytes_max()
                    .saturating_sub(self.buf.len());
                // A buffer at the limit holds a request or a refusal, handed out first.
                debug_assert!(bytes_max > 0 || self.notice.is_some());
                Read::Request {
                    bytes_max: bytes_max.max(1),
                }
            }
            State::Streaming | State::Refusing | State::Lingering => Read::Discard,
            _ => Read::Pause,
        }
    }

    /// Plaintext the client sent (a receive: at most [`Read::Request`]'s `bytes_max`, or what
    /// one TLS receive decrypts; a virtual connection's whole request).
    pub fn handle_received(&mut self, now: Instant, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        match self.state {
            State::Idle | State::Head | State::Body | State::Answering => {
                if self.state == State::Idle {
                    // The next request's first byte starts its header clock.
                    self.state = State::Head;
                    self.deadline = Some(now + self.limits.header_timeout);
                }
                let bound = self.limits.buffer_bytes_max() + RECEIVE_BYTES_MAX;
                if self.buf.len() + data.len() > bound {
                    // Only a driver receiving while told to pause gets here (a request at
                    // its limits is handed out or refused before the buffer is this full).
                    self.close_with(Close::Flood);
                    return;
                }
                self.buf.extend_from_slice(data);
            }
            State::Streaming | State::Refusing | State::Lingering => {
                self.discarded += data.len();
                if self.discarded > DISCARD_BYTES_MAX {
                    self.close_with(Close::Flood);
                }
            }
            State::Closed => {}
        }
    }

    /// The client closed its side (a receive of 0 bytes, a TLS `close_notify`, an error).
    pub fn handle_eof(&mut self) {
        match self.state {
            State::Closed => {}
            // The refusal is still written; then the connection closes, no linger needed.
            State::Refusing => self.peer_closed = true,
            State::Lingering => self.close_with(Close::Lingered),
            _ => self.close_with(Close::Eof),
        }
    }

    /// The next thing for the application, if any: notices first, then the request the
    /// buffer makes (only while nothing of the machine's is being written).
    pub fn poll_event(&mut self, now: Instant) -> Option<Event> {
        if let Some(notice) = self.notice.take() {
            return Some(notice.event());
        }
        if self.writing() || !matches!(self.state, State::Head | State::Body) {
            return None;
        }
        let head = match h1::parse(
            &self.buf,
            self.limits.header_bytes_max,
            self.limits.body_bytes_max,
        ) {
            Err(refusal) => return Some(self.refuse_request(now, refusal, Cause::Request)),
            Ok(Parsed::Partial) => return None,
            Ok(Parsed::Head(head)) => head,
        };
        if self.state == State::Head {
            if let Err(refusal) = h1::vet(&head) {
                return Some(self.refuse_request(now, refusal, Cause::Request));
            }
            // The head is in: from now on the body has `--body-timeout` (once, not per read).
            self.state = State::Body;
            self.deadline = Some(now + self.limits.body_timeout);
        }
        // `parse` refused any length over the body limit, so this cannot overflow.
        let end = head.len + head.content_length;
        if self.buf.len() < end {
            if head.expect_continue && !self.continue_asked {
                self.continue_asked = true;
                return Some(Event::Continue(head));
            }
            return None;
        }
        // The request leaves the buffer without a copy; the buffer keeps what follows (a
        // pipelined request), without capacity when nothing does.
        let rest = self.buf.split_off(end);
        let bytes = std::mem::replace(&mut self.buf, rest);
        self.state = State::Answering;
        self.continue_asked = false;
        self.keep_alive &= !head.close;
        self.head_request = head.method == Method::Head;
        Some(Event::Request(Request { head, bytes }))
    }

    /// Writes `100 Continue` for the head handed out in [`Event::Continue`].
    pub fn accept_continue(&mut self) {
        if self.state == State::Body && !self.writing() {
            self.out = Some((Bytes::from_static(h1::CONTINUE), Writing::Interim));
        }
    }

    /// The answer to the request handed out (a HEAD request's loses its body). Ignored
    /// unless one is owed (the connection closed meanwhile, or it was answered).
    pub fn respond(&mut self, response: Bytes) {
        if !self.awaits_answer() {
            return;
        }
        let response = if self.head_request {
            h1::head_only(&response)
        } else {
            response
        };
        self.out = Some((response, Writing::Answer));
    }

    /// Like [`Self::respond`], and the connection closes once the answer is written.
    pub fn respond_and_close(&mut self, response: Bytes) {
        if self.awaits_answer() {
            self.keep_alive = false;
            self.respond(response);
        }
    }

    /// Refuses with `response` (rendered by the caller: [`h1::refusal`] or a computed one),
    /// then lingers and closes. Works in every state that reads or answers (a connection
    /// refused at accept has sent nothing); ignored while streaming, refusing or closed.
    pub fn refuse(&mut self, now: Instant, response: Bytes) {
        match self.state {
            State::Idle | State::Head | State::Body | State::Answering => {}
            State::Streaming | State::Refusing | State::Lingering | State::Closed => return,
        }
        // A `100 Continue` or an answer in flight is finished by the driver; the refusal
        // queued here goes next. Nothing more is read as a request.
        let response = if self.head_request {
            h1::head_only(&response)
        } else {
            response
        };
        self.state = State::Refusing;
        self.keep_alive = false;
        self.buf = Vec::new();
        self.out = Some((response, Writing::Refusal));
        self.deadline = Some(now + LINGER);
    }

    /// The request handed out opened an SSE stream (the fan-out writes its head and
    /// frames): no deadline, no buffer; what the client sends is dropped.
    pub fn stream(&mut self) {
        if self.awaits_answer() {
            self.state = State::Streaming;
            self.deadline = None;
            self.buf = Vec::new();
        }
    }

    /// The next bytes to write, if any: one write at a time, taken once; report it
    /// written with [`Self::on_written`].
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        if self.writing.is_some() || self.state == State::Closed {
            return None;
        }
        let (bytes, writing) = self.out.take()?;
        self.writing = Some(writing);
        Some(bytes)
    }

    /// The bytes last taken from [`Self::poll_transmit`] are all written. A kept-alive
    /// connection goes on with its next request (already buffered or not), a refusal
    /// lingers, an answer on a connection that is not kept closes.
    pub fn on_written(&mut self, now: Instant) {
        let Some(writing) = self.writing.take() else {
            debug_assert!(self.state == State::Closed, "no write in flight");
            return;
        };
        match (writing, self.state) {
            (_, State::Closed) => {}
            // A refusal queued behind this write goes next.
            (Writing::Interim | Writing::Answer, State::Refusing) => {}
            (Writing::Interim, _) => {}
            (Writing::Answer, _) if !self.keep_alive => self.close_with(Close::Answered),
            (Writing::Answer, _) => {
                debug_assert_eq!(self.state, State::Answering);
                self.head_request = false;
                if self.buf.is_empty() {
                    self.state = State::Idle;
                    self.buf = Vec::new();
                    self.deadline = Some(now + self.limits.idle_timeout);
                } else {
                    // Pipelined bytes of the next request are in: its header clock runs.
                    self.state = State::Head;
                    self.deadline = Some(now + self.limits.header_timeout);
                }
            }
            (Writing::Refusal, _) if self.peer_closed => self.close_with(Close::Lingered),
            (Writing::Refusal, _) => {
                self.state = State::Lingering;
                self.deadline = Some(now + LINGER);
                self.notice = Some(Notice::Linger);
            }
        }
    }

    /// The clock reached `now`: the deadline that passed, if any, refuses (408) or closes.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.deadline.is_none_or(|deadline| now < deadline) {
            return;
        }
        self.deadline = None;
        match self.state {
            State::Idle => self.close_with(Close::IdleTimeout),
            // Not reading (a `100 Continue` the client does not take): closed as an answer.
            State::Head | State::Body if self.writing() => self.close_with(Close::AnswerTimeout),
            State::Head => {
                self.refuse(
                    now,
                    h1::refusal(&timeout_refusal(Cause::HeaderTimeout), true),
                );
                self.notice = Some(Notice::HeaderTimeout);
            }
            State::Body => {
                self.refuse(now, h1::refusal(&timeout_refusal(Cause::BodyTimeout), true));
                self.notice = Some(Notice::BodyTimeout);
            }
            State::Answering => self.close_with(Close::AnswerTimeout),
            State::Refusing | State::Lingering => self.close_with(Close::Lingered),
            State::Streaming | State::Closed => {}
        }
    }

    /// The shard is draining (or this connection was accepted during a drain): no request
    /// after the current one. A connection idle between requests, or lingering after its
    /// refusal was written, closes now; one still writing its refusal (a 503 `draining`
    /// among them) finishes it first and lingers as any refusal does; one that has not
    /// sent its first request is waited for at most `wait` (to answer it 503 `draining`,
    /// never a bare reset).
    pub fn handle_drain(&mut self, now: Instant, wait: Duration) {
        self.keep_alive = false;
        match self.state {
            State::Idle | State::Lingering => self.close_with(Close::Drain),
            State::Head if self.buf.is_empty() && !self.writing() => {
                self.draining = true;
                let hurried = now + wait;
                self.deadline = Some(self.deadline.map_or(hurried, |at| at.min(hurried)));
            }
            _ => {}
        }
    }

    /// The driver closed the connection (a write failed, the fan-out cut it, the drain
    /// timed out): nothing more comes out.
    pub fn close(&mut self) {
        self.state = State::Closed;
        self.deadline = None;
        self.buf = Vec::new();
        self.out = None;
        self.writing = None;
        self.notice = None;
    }

    fn close_with(&mut self, why: Close) {
        self.close();
        self.notice = Some(Notice::Close(why));
    }

    fn refuse_request(&mut self, now: Instant, refusal: Refusal, cause: Cause) -> Event {
        self.refuse(now, h1::refusal(&refusal, true));
        Event::Refused { refusal, cause }
    }
}

/// The 408 of a deadline that passed (`cause` is a timeout's).
fn timeout_refusal(cause: Cause) -> Refusal {
    debug_assert_ne!(cause, Cause::Request, "not a timeout");
    let reason = match cause {
        Cause::HeaderTimeout | Cause::Request => "request head not complete in time",
        Cause::BodyTimeout => "request body not complete in time",
    };
    Refusal {
        status: 408,
        reason: reason.into(),
        extra: "",
    }
}
