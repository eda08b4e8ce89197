//! Subscriber threads of `ringload fanout`: each pinned thread runs one mio event loop over
//! its share of SSE connections, parses every delivery without allocating and checks it
//! against its subscriber's expected sequence (see [`crate::check::tracker`]).

use crate::check::checker::{Checker, DeliveryCounts, PendingEvent, ThreadResult};
use crate::check::latency::Latency;
use crate::check::tracker::SeqTracker;
use crate::plain::socket;
use crate::plan::subscribe::{Control, CONNECTS_IN_FLIGHT_MAX};
use crate::proto::chunked::ChunkedDecoder;
use crate::proto::http1::{self, BodyKind};
use crate::proto::sse::{self, LINE_BYTES_MAX};
use mio::{Events, Interest, Poll, Token};
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

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
            if let Err(error) = poll.poll(&mut events, Some(POLL_WAIT)) {
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
            let request = &self.setup.requests
                [subscriber.target as usize * self.setup.rooms.len() + subscriber.room as usize];
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
        if matches!(subscriber.phase, Phase::Head | Phase::Body)
            && (event.is_readable() || event.is_read_closed() || event.is_error())
        {
            self.read_ready(subscriber);
        }
    }

    fn read_ready(&mut self, subscriber: &mut Subscriber) {
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
            if read < space {
                // Short read: the socket is drained; epoll reports the next arrival.
                return;
            }
        }
    }

    /// Accumulates the response head; returns false if the subscriber was closed.
    fn head(&mut self, subscriber: &mut Subscriber, read: usize) -> bool {
        subscriber.carry.extend_from_slice(&self.buffer[..read]);
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
        subscriber.phase = Phase::Body;
        self.in_flight = self.in_flight.saturating_sub(1);
        self.control.subscribed.fetch_add(1, Ordering::Relaxed);
        let rest = subscriber.carry.len() - head.head_len;
        self.buffer[..rest].copy_from_slice(&subscriber.carry[head.head_len..]);
        subscriber.carry.clear();
        subscriber.carry.shrink_to_fit();
        rest == 0 || self.body(subscriber, 0, rest)
    }

    /// Parses `buffer[carried..carried + read]` (raw body bytes) after the carried partial
    /// line `buffer[..carried]`; returns false if the subscriber was closed.
    fn body(&mut self, subscriber: &mut Subscriber, carried: usize, read: usize) -> bool {
        let now_ns = crate::check::clock::wall_ns();
        self.counts.bytes += read as u64;
        let raw = &mut self.buffer[carried..carried + read];
        let (plain, ended) = match &mut subscriber.framing {
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
}
