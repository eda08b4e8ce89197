//! The fixed-rate publisher of `ringload fanout`: one thread, a few keep-alive HTTP/1.1
//! connections, messages released on a fixed schedule (round-robin over rooms). A room's
//! messages always use the same connection, and a connection sends its next request only
//! after the previous response, so per-room order is kept without pipelining; when the
//! server is slow, messages wait and their lateness shows in the schedule-based latency.

use crate::http1::{self, BodyReader};
use crate::http_bench::ErrorCounts;
use crate::latency::Latency;
use crate::payload::{self, Stamp};
use crate::socket;
use crate::target::UrlTemplate;
use crate::template::Template;
use mio::{Events, Interest, Poll, Token};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A publish without a complete answer after this long counts as a timeout failure.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// Time allowed for the publisher connections to be established before the run.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Most publisher connections.
pub const PUB_CONNS_MAX: usize = 4096;

/// Longest poll wait; bounds how late the stop flag and deadlines are noticed.
const POLL_WAIT_MAX: Duration = Duration::from_millis(10);

/// Bytes per read syscall for publish responses (they are small).
const READ_BUFFER_BYTES: usize = 16 * 1024;

/// mio events per poll.
const EVENTS_MAX: usize = 256;

/// What to publish.
#[derive(Debug, Clone)]
pub struct PublishPlan {
    /// Room names.
    pub rooms: Vec<String>,
    /// Publish URL (path may use `{room}`, `{seq}`).
    pub url: UrlTemplate,
    /// Body template (`{payload}`, `{room}`, `{seq}`).
    pub body: Template,
    /// Extra header lines.
    pub headers: Vec<String>,
    /// Publisher connections.
    pub connections: usize,
    /// Messages per second, all rooms together.
    pub rate: f64,
    /// Publishing window.
    pub duration: Duration,
    /// Extra time after the window in which late messages may still be sent.
    pub grace: Duration,
    /// Payload size in bytes.
    pub size: usize,
    /// Run id written into every payload.
    pub run_id: u32,
}

/// Why publishing could not start.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// A publisher connection could not be established.
    #[error("cannot connect publisher to {addr}: {reason}")]
    Connect {
        /// Address tried.
        addr: std::net::SocketAddr,
        /// OS message.
        reason: String,
    },
}

/// Publish outcome counts.
#[derive(Debug, Default, Clone, Serialize)]
pub struct PublishCounts {
    /// Messages the schedule asked for.
    pub scheduled: u64,
    /// Requests written.
    pub sent: u64,
    /// Answered 2xx.
    pub ok: u64,
    /// Answered with another status, by status code.
    pub failed_status: BTreeMap<u16, u64>,
    /// Requests that got no answer (connection errors, timeouts).
    pub errors: ErrorCounts,
    /// Messages never sent because the publisher fell too far behind schedule.
    pub unsent: u64,
}

impl PublishCounts {
    /// Publishes that failed (non-2xx or no answer).
    pub fn failed(&self) -> u64 {
        self.failed_status.values().sum::<u64>() + self.errors.total()
    }
}

/// Everything the publisher learned.
#[derive(Debug)]
pub struct PublishResult {
    /// Counts.
    pub counts: PublishCounts,
    /// Highest sequence number sent, per room.
    pub last_seq: Vec<u64>,
    /// 2xx answers per room.
    pub ok_per_room: Vec<u64>,
    /// Sequence numbers that failed, per room, ascending.
    pub failed_seqs: Vec<Vec<u64>>,
    /// Actual send time − scheduled time.
    pub lateness: Latency,
    /// Time from sending a publish to its complete answer.
    pub response_time: Latency,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    Idle,
    Writing,
    Head,
    Body,
    Broken,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    room: usize,
    seq: u64,
    sent_at: Instant,
}

struct PubConn {
    stream: Option<mio::net::TcpStream>,
    phase: Phase,
    queue: VecDeque<u64>,
    out: Vec<u8>,
    written: usize,
    carry: Vec<u8>,
    body: BodyReader,
    close_after: bool,
    in_flight: Option<InFlight>,
    status: u16,
}

/// Live counters the main thread shows on the progress line.
#[derive(Debug, Default)]
pub struct PublishProgress {
    /// Requests written so far.
    pub sent: AtomicU64,
    /// Set to abandon publishing early (e.g. on Ctrl-C of the whole run).
    pub stop: AtomicBool,
}

/// Connects, then publishes `plan` starting right after; returns when every message was
/// answered or the window plus grace is over.
pub fn run(plan: &PublishPlan, progress: &PublishProgress) -> Result<PublishResult, PublishError> {
    let mut poll = Poll::new().map_err(|error| PublishError::Connect {
        addr: plan.url.addr,
        reason: error.to_string(),
    })?;
    let rooms = plan.rooms.len().max(1);
    let connections = plan.connections.clamp(1, rooms);
    let mut conns: Vec<PubConn> = Vec::with_capacity(connections);
    for id in 0..connections {
        let stream = connect(&poll, plan, id)?;
        conns.push(PubConn {
            stream: Some(stream),
            phase: Phase::Connecting,
            queue: VecDeque::new(),
            out: Vec::with_capacity(plan.size + 512),
            written: 0,
            carry: Vec::new(),
            body: BodyReader::Done,
            close_after: false,
            in_flight: None,
            status: 0,
        });
    }
    let mut events = Events::with_capacity(EVENTS_MAX);
    let connect_deadline = Instant::now() + CONNECT_TIMEOUT;
    while conns.iter().any(|conn| conn.phase == Phase::Connecting) {
        let now = Instant::now();
        if now >= connect_deadline {
            return Err(PublishError::Connect {
                addr: plan.url.addr,
                reason: "timed out".into(),
            });
        }
        let _ = poll.poll(&mut events, Some(POLL_WAIT_MAX));
        for event in events.iter() {
            let conn = &mut conns[event.token().0];
            if conn.phase == Phase::Connecting {
                if let Some(error) = connect_error(conn.stream.as_ref()) {
                    return Err(PublishError::Connect {
                        addr: plan.url.addr,
                        reason: error.to_string(),
                    });
                }
                conn.phase = Phase::Idle;
            }
        }
    }
    let mut publisher = Publisher {
        plan,
        poll,
        start: Instant::now(),
        start_wall_ns: crate::clock::wall_ns(),
        total: (plan.rate * plan.duration.as_secs_f64()).round() as u64,
        rooms,
        result: PublishResult {
            counts: PublishCounts::default(),
            last_seq: vec![0; rooms],
            ok_per_room: vec![0; rooms],
            failed_seqs: vec![Vec::new(); rooms],
            lateness: Latency::new(),
            response_time: Latency::new(),
        },
        payload: Vec::with_capacity(plan.size + 128),
        body: Vec::with_capacity(plan.size + 128),
        buffer: vec![0u8; READ_BUFFER_BYTES],
    };
    publisher.result.counts.scheduled = publisher.total;
    publisher.run(&mut conns, &mut events, progress);
    Ok(publisher.result)
}

fn connect(
    poll: &Poll,
    plan: &PublishPlan,
    id: usize,
) -> Result<mio::net::TcpStream, PublishError> {
    let mut stream =
        socket::connect(plan.url.addr, None).map_err(|error| PublishError::Connect {
            addr: plan.url.addr,
            reason: error.to_string(),
        })?;
    poll.registry()
        .register(
            &mut stream,
            Token(id),
            Interest::READABLE | Interest::WRITABLE,
        )
        .map_err(|error| PublishError::Connect {
            addr: plan.url.addr,
            reason: error.to_string(),
        })?;
    Ok(stream)
}

fn connect_error(stream: Option<&mio::net::TcpStream>) -> Option<std::io::Error> {
    let stream = stream?;
    match stream.take_error() {
        Ok(None) => stream.peer_addr().err(),
        Ok(Some(error)) | Err(error) => Some(error),
    }
}

struct Publisher<'a> {
    plan: &'a PublishPlan,
    poll: Poll,
    start: Instant,
    start_wall_ns: u64,
    total: u64,
    rooms: usize,
    result: PublishResult,
    payload: Vec<u8>,
    body: Vec<u8>,
    buffer: Vec<u8>,
}

impl Publisher<'_> {
    fn scheduled_offset(&self, message: u64) -> Duration {
        Duration::from_secs_f64(message as f64 / self.plan.rate)
    }

    fn run(&mut self, conns: &mut [PubConn], events: &mut Events, progress: &PublishProgress) {
        let deadline = self.start + self.plan.duration + self.plan.grace;
        let mut next_message = 0u64;
        loop {
            let now = Instant::now();
            let elapsed = now - self.start;
            while next_message < self.total && self.scheduled_offset(next_message) <= elapsed {
                let room = (next_message % self.rooms as u64) as usize;
                conns[room % conns.len()].queue.push_back(next_message);
                next_message += 1;
            }
            for conn in conns.iter_mut() {
                if conn.phase == Phase::Idle && !conn.queue.is_empty() {
                    self.send(conn, now);
                }
            }
            for (id, conn) in conns.iter_mut().enumerate() {
                if let Some(flight) = conn.in_flight {
                    if now.duration_since(flight.sent_at) > PUBLISH_TIMEOUT {
                        self.result.counts.errors.timeout += 1;
                        self.fail_in_flight(conn);
                        self.reconnect(conn, id);
                    }
                }
                if conn.phase == Phase::Broken {
                    self.reconnect(conn, id);
                }
            }
            progress
                .sent
                .store(self.result.counts.sent, Ordering::Relaxed);
            let all_done = next_message == self.total
                && conns
                    .iter()
                    .all(|conn| conn.queue.is_empty() && conn.in_flight.is_none());
            if all_done {
                break;
            }
            if now >= deadline || progress.stop.load(Ordering::Relaxed) {
                for conn in conns.iter_mut() {
                    self.result.counts.unsent += conn.queue.len() as u64;
                    if conn.in_flight.is_some() {
                        self.result.counts.errors.timeout += 1;
                        self.fail_in_flight(conn);
                    }
                }
                self.result.counts.unsent += self.total - next_message;
                break;
            }
            let mut wait = POLL_WAIT_MAX.min(deadline - now);
            if next_message < self.total {
                let next = self.scheduled_offset(next_message);
                wait = wait.min(next.saturating_sub(elapsed));
            }
            if let Err(error) = self.poll.poll(events, Some(wait)) {
                if error.kind() != ErrorKind::Interrupted {
                    break;
                }
            }
            for event in events.iter() {
                let id = event.token().0;
                let Some(conn) = conns.get_mut(id) else {
                    continue;
                };
                match conn.phase {
                    Phase::Connecting => {
                        if connect_error(conn.stream.as_ref()).is_some() {
                            self.result.counts.errors.connect += 1;
                            conn.phase = Phase::Broken;
                        } else {
                            conn.phase = Phase::Idle;
                        }
                    }
                    Phase::Writing if event.is_writable() => self.write_more(conn),
                    _ => {}
                }
                if matches!(conn.phase, Phase::Head | Phase::Body | Phase::Idle)
                    && (event.is_readable() || event.is_read_closed() || event.is_error())
                {
                    self.read_ready(conn);
                }
            }
        }
        for seqs in &mut self.result.failed_seqs {
            seqs.sort_unstable();
        }
    }

    fn send(&mut self, conn: &mut PubConn, now: Instant) {
        let Some(message) = conn.queue.pop_front() else {
            return;
        };
        let room = (message % self.rooms as u64) as usize;
        let seq = message / self.rooms as u64 + 1;
        let room_name = &self.plan.rooms[room];
        let scheduled_ns = self.start_wall_ns + self.scheduled_offset(message).as_nanos() as u64;
        let sent_ns = crate::clock::wall_ns();
        self.payload.clear();
        payload::encode(
            &mut self.payload,
            &Stamp {
                run: self.plan.run_id,
                room: room_name.as_bytes(),
                seq,
                sent_ns,
                scheduled_ns,
            },
            self.plan.size,
        );
        self.body.clear();
        self.plan
            .body
            .render_into(&mut self.body, room_name, seq, &self.payload);
        let path = self.plan.url.path.render(room_name, seq);
        conn.out.clear();
        http1::encode_request(
            &mut conn.out,
            "POST",
            &self.plan.url.host_header,
            &path,
            &self.plan.headers,
            &self.body,
            false,
        );
        self.result
            .lateness
            .record_ns(sent_ns as i64 - scheduled_ns as i64);
        self.result.counts.sent += 1;
        self.result.last_seq[room] = seq;
        conn.in_flight = Some(InFlight {
            room,
            seq,
            sent_at: now,
        });
        conn.written = 0;
        conn.phase = Phase::Writing;
        self.write_more(conn);
    }

    fn write_more(&mut self, conn: &mut PubConn) {
        let Some(stream) = conn.stream.as_mut() else {
            return;
        };
        while conn.written < conn.out.len() {
            match stream.write(&conn.out[conn.written..]) {
                Ok(count) => conn.written += count,
                Err(error) if error.kind() == ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.result.counts.errors.write += 1;
                    self.fail_in_flight(conn);
                    conn.phase = Phase::Broken;
                    return;
                }
            }
        }
        conn.phase = Phase::Head;
    }

    fn read_ready(&mut self, conn: &mut PubConn) {
        loop {
            let Some(stream) = conn.stream.as_mut() else {
                return;
            };
            let read = match stream.read(&mut self.buffer) {
                Ok(read) => read,
                Err(error) if error.kind() == ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(_) => 0,
            };
            if read == 0 {
                if conn.phase == Phase::Body && matches!(conn.body, BodyReader::UntilClose) {
                    self.complete(conn);
                } else if conn.in_flight.is_some() {
                    self.result.counts.errors.read += 1;
                    self.fail_in_flight(conn);
                }
                conn.phase = Phase::Broken;
                return;
            }
            if conn.phase == Phase::Idle {
                // Bytes nobody asked for: the connection is out of step.
                self.result.counts.errors.parse += 1;
                conn.phase = Phase::Broken;
                return;
            }
            let mut data = std::mem::take(&mut conn.carry);
            data.extend_from_slice(&self.buffer[..read]);
            let mut at = 0;
            loop {
                if conn.phase == Phase::Writing || conn.phase == Phase::Head {
                    match http1::parse_response_head(&data[at..], false) {
                        Ok(Some(head)) => {
                            conn.status = head.status;
                            conn.close_after = head.close;
                            conn.body = BodyReader::new(head.body);
                            conn.phase = Phase::Body;
                            at += head.head_len;
                        }
                        Ok(None) => {
                            conn.carry = data[at..].to_vec();
                            break;
                        }
                        Err(_) => {
                            self.result.counts.errors.parse += 1;
                            self.fail_in_flight(conn);
                            conn.phase = Phase::Broken;
                            return;
                        }
                    }
                }
                if conn.phase == Phase::Body {
                    match conn.body.skip(&mut data[at..]) {
                        Ok(_) => {}
                        Err(_) => {
                            self.result.counts.errors.parse += 1;
                            self.fail_in_flight(conn);
                            conn.phase = Phase::Broken;
                            return;
                        }
                    }
                    if conn.body.is_done() {
                        self.complete(conn);
                    }
                    break;
                }
            }
            if read < self.buffer.len() {
                return;
            }
        }
    }

    fn complete(&mut self, conn: &mut PubConn) {
        let Some(flight) = conn.in_flight.take() else {
            return;
        };
        self.result
            .response_time
            .record_us(flight.sent_at.elapsed().as_micros() as u64);
        if (200..300).contains(&conn.status) {
            self.result.counts.ok += 1;
            self.result.ok_per_room[flight.room] += 1;
        } else {
            *self
                .result
                .counts
                .failed_status
                .entry(conn.status)
                .or_default() += 1;
            self.result.failed_seqs[flight.room].push(flight.seq);
        }
        conn.phase = if conn.close_after {
            Phase::Broken
        } else {
            Phase::Idle
        };
    }

    fn fail_in_flight(&mut self, conn: &mut PubConn) {
        if let Some(flight) = conn.in_flight.take() {
            self.result.failed_seqs[flight.room].push(flight.seq);
        }
    }

    fn reconnect(&mut self, conn: &mut PubConn, id: usize) {
        conn.stream = None;
        conn.carry.clear();
        conn.in_flight = None;
        match connect(&self.poll, self.plan, id) {
            Ok(stream) => {
                conn.stream = Some(stream);
                conn.phase = Phase::Connecting;
            }
            Err(_) => {
                self.result.counts.errors.connect += 1;
                conn.phase = Phase::Broken;
            }
        }
    }
}
