//! Subscriber threads of `ringload fanout`: each pinned thread runs one mio event loop over
//! its share of SSE (or, with `--proto ws`, WebSocket) connections, parses every delivery
//! without allocating and checks it against its subscriber's expected sequence (see
//! [`crate::check::tracker`]). With `--publish-over ws` the thread also publishes on its
//! WebSocket connections ([`crate::plain::ws_publisher`]).

use crate::check::checker::{Checker, DeliveryCounts, PendingEvent};
use crate::check::latency::Latency;
use crate::check::tracker::SeqTracker;
use crate::plain::socket;
use crate::plain::websocket::{WsConn, WsDelivery, WsSetup};
use crate::plain::ws_publisher::{Answer, WsPublisher};
use crate::plan::subscribe::{Control, ThreadResult, CONNECTS_IN_FLIGHT_MAX};
use crate::proto::chunked::ChunkedDecoder;
use crate::proto::http1::{self, BodyKind};
use crate::proto::payload::{self, Stamp};
use crate::proto::sse::{self, LINE_BYTES_MAX};
use crate::proto::ws;
use mio::{Events, Interest, Poll, Token};
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes read per read syscall: large, so one read carries many events.
pub const READ_BUFFER_BYTES: usize = 64 * 1024;

/// mio events taken per poll call.
const EVENTS_MAX: usize = 1024;

/// Longest poll wait; bounds how late the stop flag is noticed.
const POLL_WAIT: Duration = Duration::from_millis(10);

/// Everything the subscriber threads share, read-only.
#[derive(Debug)]
pub struct SubscriberSetup {
    /// Room names, index = room number.
    pub rooms: Vec<String>,
    /// Encoded subscribe request per (target, room): index `target * rooms + room`.
    pub requests: Vec<Vec<u8>>,
    /// Server addresses (repeated `--sub-url`); subscriber `i` uses target
    /// `(i / rooms) % addrs.len()`, so each room's subscribers are split evenly.
    pub addrs: Vec<SocketAddr>,
    /// Total subscribers; subscriber `i` joins room `i % rooms`.
    pub subscribers: usize,
    /// Number of subscriber threads; subscriber `i` lives on thread `i % threads`.
    pub threads: usize,
    /// Loopback source addresses to spread over (1 = let the kernel choose).
    pub src_ips: u32,
    /// Run id expected in payloads; others are stale.
    pub run_id: u32,
    /// Set with `--proto ws`: subscribe over WebSocket (`requests` is then unused).
    pub websocket: Option<WsSetup>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    Writing(usize),
    Head,
    Body,
    Closed,
}

#[derive(Debug)]
enum BodyFraming {
    Plain,
    Chunked(ChunkedDecoder),
    Length(u64),
    WebSocket(Box<WsConn>),
}

struct Subscriber {
    stream: Option<mio::net::TcpStream>,
    room: u32,
    target: u32,
    phase: Phase,
    framing: BodyFraming,
    carry: Vec<u8>,
    pending: PendingEvent,
    tracker: SeqTracker,
}

/// One subscriber thread.
pub struct SubscriberThread {
    /// Thread number.
    pub index: usize,
    /// Shared setup.
    pub setup: Arc<SubscriberSetup>,
    /// Shared control.
    pub control: Arc<Control>,
    /// CPU to pin to.
    pub core: Option<core_affinity::CoreId>,
}

struct Loop<'a> {
    setup: &'a SubscriberSetup,
    control: &'a Control,
    counts: DeliveryCounts,
    latency_stamp: Latency,
    latency_schedule: Latency,
    in_flight: usize,
    buffer: Vec<u8>,
    /// With `--publish-over ws`: this thread's share of the publishing.
    publisher: Option<WsPublisher>,
    /// Set once the publisher reported itself done.
    publisher_done: bool,
    /// Acks and errors read in one body, for the publisher (kept to reuse its capacity).
    answers: Vec<Answer>,
    /// Scratch for encoding a publish (payload, then the body around it).
    payload: Vec<u8>,
    /// Scratch for the body of a publish.
    body: Vec<u8>,
}

impl SubscriberThread {
    /// Runs until `control.stop`; returns the thread's findings.
    pub fn run(self) -> ThreadResult {
        if let Some(core) = self.core {
            core_affinity::set_for_current(core);
        }
        let setup = &*self.setup;
        let rooms = setup.rooms.len().max(1);
        let mut subscribers: Vec<Subscriber> = (self.index..setup.subscribers)
            .step_by(setup.threads.max(1))
            .map(|global| Subscriber {
                stream: None,
                room: (global % rooms) as u32,
                target: ((global / rooms) % setup.addrs.len().max(1)) as u32,
                phase: Phase::Closed,
                framing: BodyFraming::Plain,
                carry: Vec::new(),
                pending: PendingEvent::default(),
                tracker: SeqTracker::new(),
            })
            .collect();
        let mut state = Loop {
            setup,
            control: &self.control,
            counts: DeliveryCounts::default(),
            latency_stamp: Latency::new(),
            latency_schedule: Latency::new(),
            in_flight: 0,
            buffer: vec![0u8; LINE_BYTES_MAX + READ_BUFFER_BYTES],
            publisher: setup
                .websocket
                .as_ref()
                .and_then(|websocket| websocket.publish.as_ref())
                .map(|plan| {
                    WsPublisher::new(
                        plan,
                        rooms,
                        setup.subscribers,
                        self.index,
                        setup.threads.max(1),
                    )
                }),
            publisher_done: false,
            answers: Vec::new(),
            payload: Vec::new(),
            body: Vec::new(),
        };
        match Poll::new() {
            Ok(mut poll) => state.run(&mut poll, &mut subscribers, self.index),
            Err(error) => self.control.fail(format!("cannot create poller: {error}")),
        }
        ThreadResult {
            counts: state.counts,
            trackers: subscribers
                .into_iter()
                .map(|subscriber| (subscriber.room, subscriber.tracker))
                .collect(),
            latency_stamp: state.latency_stamp,
            latency_schedule: state.latency_schedule,
            published: state.publisher.map(WsPublisher::finish),
        }
    }
}

impl Loop<'_> {
    fn run(&mut self, poll: &mut Poll, subscribers: &mut [Subscriber], thread: usize) {
        let mut events = Events::with_capacity(EVENTS_MAX);
        let mut next_open = 0;
        while !self.control.stop.load(Ordering::Relaxed) {
            while next_open < subscribers.len() && self.in_flight < CONNECTS_IN_FLIGHT_MAX {
                let global = thread + next_open * self.setup.threads.max(1);
                self.open(poll, &mut subscribers[next_open], next_open, global);
                next_open += 1;
            }
            self.publish_due(subscribers);
            let wait = match self.publisher.as_ref().and_then(WsPublisher::poll_timeout) {
                Some(at) => POLL_WAIT.min(at.saturating_duration_since(Instant::now())),
                None => POLL_WAIT,
            };
            if let Err(error) = poll.poll(&mut events, Some(wait)) {
                if error.kind() != ErrorKind::Interrupted {
                    self.control.fail(format!("poll failed: {error}"));
                    return;
                }
            }
            for event in events.iter() {
                let id = event.token().0;
                let Some(subscriber) = subscribers.get_mut(id) else {
                    continue;
                };
                self.handle(subscriber, event);
            }
            self.control.delivered[thread]
                .0
                .store(self.counts.delivered, Ordering::Relaxed);
        }
    }

    fn open(&mut self, poll: &Poll, subscriber: &mut Subscriber, id: usize, global: usize) {
        let source =
            (self.setup.src_ips > 1).then(|| socket::source_ip(global, self.setup.src_ips));
        let addr = self.setup.addrs[subscriber.target as usize];
        let connected = socket::connect(addr, source).and_then(|mut stream| {
            poll.registry().register(
                &mut stream,
                Token(id),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(stream)
        });
        match connected {
            Ok(stream) => {
                if let Some(websocket) = &self.setup.websocket {
                    subscriber.framing = BodyFraming::WebSocket(Box::new(WsConn::new(
                        websocket,
                        self.setup.rooms.len(),
                        subscriber.target as usize,
                        subscriber.room as usize,
                        id,
                    )));
                }
                subscriber.stream = Some(stream);
                subscriber.phase = Phase::Connecting;
                self.in_flight += 1;
            }
            Err(error) => self
                .control
                .fail(format!("cannot connect subscriber to {addr}: {error}")),
        }
    }

    /// A subscriber's connection ended: during setup a failure, later a disconnect.
    fn close(&mut self, subscriber: &mut Subscriber, reason: &str) {
        let was = subscriber.phase;
        subscriber.phase = Phase::Closed;
        subscriber.stream = None;
        if matches!(was, Phase::Connecting | Phase::Writing(_) | Phase::Head) {
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        if let (BodyFraming::WebSocket(conn), Some(publisher)) =
            (&subscriber.framing, self.publisher.as_mut())
        {
            publisher.on_disconnect(conn.local);
        }
        if self.control.running.load(Ordering::Relaxed) {
            self.counts.disconnects += 1;
        } else if !self.control.stop.load(Ordering::Relaxed) {
            self.control.fail(format!(
                "subscriber to {} room {}: {reason}",
                self.setup.addrs[subscriber.target as usize],
                self.setup.rooms[subscriber.room as usize]
            ));
        }
    }

    fn handle(&mut self, subscriber: &mut Subscriber, event: &mio::event::Event) {
        if subscriber.phase == Phase::Connecting {
            if !(event.is_writable() || event.is_error() || event.is_write_closed()) {
                return;
            }
            let error = match subscriber.stream.as_ref() {
                Some(stream) => match stream.take_error() {
                    Ok(None) => stream.peer_addr().err(),
                    Ok(Some(error)) | Err(error) => Some(error),
                },
                None => return,
            };
            if let Some(error) = error {
                self.close(subscriber, &format!("connect failed: {error}"));
                return;
            }
            subscriber.phase = Phase::Writing(0);
        }
        if let Phase::Writing(mut written) = subscriber.phase {
            let request = match &subscriber.framing {
                BodyFraming::WebSocket(conn) => &conn.request,
                _ => {
                    &self.setup.requests[subscriber.target as usize * self.setup.rooms.len()
                        + subscriber.room as usize]
                }
            };
            let Some(stream) = subscriber.stream.as_mut() else {
                return;
            };
            while written < request.len() {
                match stream.write(&request[written..]) {
                    Ok(count) => written += count,
                    Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                    Err(error) if error.kind() == ErrorKind::Interrupted => {}
                    Err(error) => {
                        self.close(subscriber, &format!("write failed: {error}"));
                        return;
                    }
                }
            }
            subscriber.phase = if written == request.len() {
                Phase::Head
            } else {
                Phase::Writing(written)
            };
        }
        if subscriber.phase == Phase::Body && event.is_writable() && !self.flush(subscriber) {
            return;
        }
        if matches!(subscriber.phase, Phase::Head | Phase::Body)
            && (event.is_readable() || event.is_read_closed() || event.is_error())
        {
            self.read_ready(subscriber, event.is_read_closed() || event.is_error());
        }
    }

    /// Reads what arrived. With `closed` (the peer's FIN came with this event, which an
    /// edge-triggered poll does not report again) reads on to the end of the stream even
    /// after a short read, so the disconnect is not missed.
    fn read_ready(&mut self, subscriber: &mut Subscriber, closed: bool) {
        loop {
            let carried = subscriber.carry.len();
            let in_body = subscriber.phase == Phase::Body;
            // In the body the carried partial line goes in front of the new bytes so
            // lines are contiguous; during the head, bytes accumulate in `carry`.
            let read_at = if in_body {
                self.buffer[..carried].copy_from_slice(&subscriber.carry);
                subscriber.carry.clear();
                carried
            } else {
                0
            };
            let Some(stream) = subscriber.stream.as_mut() else {
                return;
            };
            let space = READ_BUFFER_BYTES;
            let read = match stream.read(&mut self.buffer[read_at..read_at + space]) {
                Ok(read) => read,
                Err(error) => {
                    if in_body {
                        subscriber.carry.extend_from_slice(&self.buffer[..carried]);
                    }
                    match error.kind() {
                        ErrorKind::WouldBlock => return,
                        ErrorKind::Interrupted => continue,
                        _ => {
                            self.close(subscriber, &format!("read failed: {error}"));
                            return;
                        }
                    }
                }
            };
            if read == 0 {
                self.close(subscriber, "server closed the connection");
                return;
            }
            self.counts.reads += 1;
            if in_body {
                if !self.body(subscriber, carried, read) {
                    return;
                }
            } else if !self.head(subscriber, read) {
                return;
            }
            if read < space && !closed {
                // Short read: the socket is drained; epoll reports the next arrival.
                return;
            }
        }
    }

    /// Accumulates the response head; returns false if the subscriber was closed.
    fn head(&mut self, subscriber: &mut Subscriber, read: usize) -> bool {
        subscriber.carry.extend_from_slice(&self.buffer[..read]);
        if let BodyFraming::WebSocket(conn) = &mut subscriber.framing {
            let head_len = match ws::parse_handshake(&subscriber.carry, &conn.key) {
                Ok(Some(head_len)) => head_len,
                Ok(None) => return true,
                Err(ws::WsError::Status(status)) => {
                    let room = &self.setup.rooms[subscriber.room as usize];
                    self.close(
                        subscriber,
                        &format!("subscribe answered HTTP {status} (room {room})"),
                    );
                    return false;
                }
                Err(error) => {
                    self.close(subscriber, &format!("WebSocket {error}"));
                    return false;
                }
            };
            conn.request = Vec::new();
            return self.subscribed(subscriber, head_len);
        }
        let head = match http1::parse_response_head(&subscriber.carry, false) {
            Ok(Some(head)) => head,
            Ok(None) => return true,
            Err(error) => {
                self.close(subscriber, &format!("bad subscribe response: {error}"));
                return false;
            }
        };
        if !(200..300).contains(&head.status) {
            let room = &self.setup.rooms[subscriber.room as usize];
            self.close(
                subscriber,
                &format!("subscribe answered HTTP {} (room {room})", head.status),
            );
            return false;
        }
        subscriber.framing = match head.body {
            BodyKind::Chunked => BodyFraming::Chunked(ChunkedDecoder::new()),
            BodyKind::Length(length) => BodyFraming::Length(length),
            BodyKind::UntilClose => BodyFraming::Plain,
            BodyKind::Empty => {
                self.close(subscriber, "subscribe response has no body");
                return false;
            }
        };
        self.subscribed(subscriber, head.head_len)
    }

    /// The response head (`head_len` bytes of `carry`) admitted the subscriber; what
    /// follows it is body. Returns false if the subscriber was closed.
    fn subscribed(&mut self, subscriber: &mut Subscriber, head_len: usize) -> bool {
        subscriber.phase = Phase::Body;
        self.in_flight = self.in_flight.saturating_sub(1);
        self.control.subscribed.fetch_add(1, Ordering::Relaxed);
        let rest = subscriber.carry.len() - head_len;
        self.buffer[..rest].copy_from_slice(&subscriber.carry[head_len..]);
        subscriber.carry.clear();
        subscriber.carry.shrink_to_fit();
        rest == 0 || self.body(subscriber, 0, rest)
    }

    /// Parses `buffer[carried..carried + read]` (raw body bytes) after the carried partial
    /// line `buffer[..carried]`; returns false if the subscriber was closed.
    fn body(&mut self, subscriber: &mut Subscriber, carried: usize, read: usize) -> bool {
        let now_ns = crate::check::clock::wall_ns();
        self.counts.bytes += read as u64;
        if matches!(subscriber.framing, BodyFraming::WebSocket(_)) {
            return self.frames(subscriber, carried, read, now_ns);
        }
        let raw = &mut self.buffer[carried..carried + read];
        let (plain, ended) = match &mut subscriber.framing {
            BodyFraming::WebSocket(_) => unreachable!("handled above"),
            BodyFraming::Plain => (read, false),
            BodyFraming::Length(left) => {
                let take = usize::try_from(*left).map_or(read, |l| l.min(read));
                *left -= take as u64;
                (take, *left == 0)
            }
            BodyFraming::Chunked(decoder) => match decoder.decode_in_place(raw) {
                Ok(decoded) => (decoded.data_len, decoder.is_done()),
                Err(error) => {
                    self.close(subscriber, &format!("bad chunked stream: {error}"));
                    return false;
                }
            },
        };
        let data = &self.buffer[..carried + plain];
        let mut checker = Checker {
            pending: &mut subscriber.pending,
            tracker: &mut subscriber.tracker,
            counts: &mut self.counts,
            latency_stamp: &mut self.latency_stamp,
            latency_schedule: &mut self.latency_schedule,
            room: self.setup.rooms[subscriber.room as usize].as_bytes(),
            run_id: self.setup.run_id,
            now_ns,
        };
        let used = sse::feed(data, &mut checker);
        let tail = &data[used..];
        if tail.len() > LINE_BYTES_MAX {
            self.close(subscriber, "SSE line longer than the limit");
            return false;
        }
        subscriber.carry.extend_from_slice(tail);
        if ended {
            self.close(subscriber, "server ended the event stream");
            return false;
        }
        true
    }

    /// Parses WebSocket frames in `buffer[..carried + read]` (the carried partial frame,
    /// then the new bytes); returns false if the subscriber was closed.
    fn frames(
        &mut self,
        subscriber: &mut Subscriber,
        carried: usize,
        read: usize,
        now_ns: u64,
    ) -> bool {
        let Subscriber {
            framing: BodyFraming::WebSocket(conn),
            pending,
            tracker,
            carry,
            room,
            ..
        } = subscriber
        else {
            unreachable!("only called for WebSocket subscribers");
        };
        let data = &self.buffer[..carried + read];
        let mut sink = WsDelivery {
            checker: Checker {
                pending,
                tracker,
                counts: &mut self.counts,
                latency_stamp: &mut self.latency_stamp,
                latency_schedule: &mut self.latency_schedule,
                room: self.setup.rooms[*room as usize].as_bytes(),
                run_id: self.setup.run_id,
                now_ns,
            },
            out: &mut conn.out,
            answers: &mut self.answers,
            closed: None,
        };
        let fed = conn.reader.feed(data, &mut sink);
        let closed = sink.closed;
        let failure = match fed {
            Ok(used) => {
                // parse_frame refuses frames over FRAME_BYTES_MAX from their header, so a
                // partial frame always fits in front of the next read.
                assert!(data.len() - used < ws::FRAME_BYTES_MAX);
                carry.extend_from_slice(&data[used..]);
                None
            }
            Err(error) => {
                ws::encode_close(&mut conn.out, error.close_code(), ws::new_mask());
                Some(format!("bad WebSocket stream: {error}"))
            }
        };
        if let Some(code) = closed {
            // Echo the close (RFC 6455 §5.5.1) before dropping the connection.
            ws::encode_close(
                &mut conn.out,
                code.unwrap_or(ws::CLOSE_NORMAL),
                ws::new_mask(),
            );
        }
        let answered = std::mem::take(&mut self.answers);
        match self.publisher.as_mut() {
            Some(publisher) => {
                let now = Instant::now();
                for answer in &answered {
                    publisher.on_answer(*answer, now);
                }
            }
            None => self.counts.foreign += answered.len() as u64,
        }
        self.answers = answered;
        self.answers.clear();
        if !self.flush(subscriber) {
            return false;
        }
        if let Some(reason) = failure {
            self.close(subscriber, &reason);
            return false;
        }
        if let Some(code) = closed {
            let code = code.map_or("no code".to_string(), |code| code.to_string());
            self.close(subscriber, &format!("server closed the WebSocket ({code})"));
            return false;
        }
        true
    }

    /// Writes what a WebSocket subscriber has waiting; returns false if it was closed.
    fn flush(&mut self, subscriber: &mut Subscriber) -> bool {
        let (BodyFraming::WebSocket(conn), Some(stream)) =
            (&mut subscriber.framing, subscriber.stream.as_mut())
        else {
            return true;
        };
        while !conn.pending().is_empty() {
            match stream.write(conn.pending()) {
                Ok(count) => conn.advance(count),
                Err(error) if error.kind() == ErrorKind::WouldBlock => return true,
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(error) => {
                    self.close(subscriber, &format!("write failed: {error}"));
                    return false;
                }
            }
        }
        true
    }

    /// With `--publish-over ws`: starts the schedule once the main thread set its start,
    /// then writes every publish due on its subscriber's connection.
    fn publish_due(&mut self, subscribers: &mut [Subscriber]) {
        let Some(mut publisher) = self.publisher.take() else {
            return;
        };
        if !publisher.is_started() {
            if let Some(anchor) = self.control.publish_start.get() {
                publisher.start(anchor.instant, anchor.wall_ns);
            }
        }
        let now = Instant::now();
        publisher.handle_timeout(now);
        let plan = self
            .setup
            .websocket
            .as_ref()
            .and_then(|websocket| websocket.publish.as_ref())
            .expect("a publisher has a plan");
        let mut written = Vec::new();
        while let Some(due) = publisher.poll_due(now) {
            let subscriber = &mut subscribers[due.conn];
            let BodyFraming::WebSocket(conn) = &mut subscriber.framing else {
                publisher.on_unsent(&due);
                continue;
            };
            if subscriber.phase != Phase::Body {
                publisher.on_unsent(&due);
                continue;
            }
            let room = &self.setup.rooms[due.room];
            let sent_ns = crate::check::clock::wall_ns();
            self.payload.clear();
            payload::encode(
                &mut self.payload,
                &Stamp {
                    run: self.setup.run_id,
                    room: room.as_bytes(),
                    seq: due.seq,
                    sent_ns,
                    scheduled_ns: due.scheduled_ns,
                },
                plan.size,
            );
            self.body.clear();
            plan.body
                .render_into(&mut self.body, room, due.seq, &self.payload);
            let data = String::from_utf8_lossy(&self.body);
            ws::encode_publish(&mut conn.out, room, &data, due.reference, ws::new_mask());
            publisher.on_sent(&due, sent_ns, now);
            self.control.published.fetch_add(1, Ordering::Relaxed);
            written.push(due.conn);
        }
        let done = publisher.is_done();
        // Back before flushing: a connection that fails now fails its publishes in flight.
        self.publisher = Some(publisher);
        written.dedup();
        for id in written {
            self.flush(&mut subscribers[id]);
        }
        if !self.publisher_done && done {
            self.publisher_done = true;
            self.control.publishers_done.fetch_add(1, Ordering::Relaxed);
        }
    }
}
