//! One `ringload http` worker thread for plain HTTP/1.1: a mio event loop over its share of
//! keep-alive connections, closed loop or following the open-loop schedule, counting into
//! [`ThreadStats`]. Started and merged by `run::http`; TLS, HTTP/2 and HTTP/3 run
//! in `transport::http` instead.

use crate::plain::socket;
pub use crate::plan::http::{ErrorCounts, HttpConfig};
use crate::plan::http::{ThreadStats, STATUS_CODES};
use crate::proto::http1::{self, BodyReader};
use mio::{Events, Interest, Poll, Token};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{ErrorKind, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes read per read syscall.
pub const READ_BUFFER_BYTES: usize = 64 * 1024;

/// mio events taken per poll call.
const EVENTS_MAX: usize = 1024;

/// How often in-flight requests are checked against `--timeout`; 50 ms keeps the scan
/// cost negligible while timeouts stay accurate to a few percent of the 2 s default.
const TIMEOUT_SCAN_INTERVAL: Duration = Duration::from_millis(50);

/// Delay before reconnecting after a failed connect, so a dead server is not hammered.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(100);

/// Longest single poll wait; bounds how late the stop flag is noticed.
const POLL_WAIT_MAX: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the connect to finish.
    Connecting,
    /// Connected, no request outstanding.
    Idle,
    /// Request partly written.
    Writing,
    /// Waiting for the response head.
    Head,
    /// Reading the response body.
    Body,
    /// Waiting to reconnect.
    Backoff,
}

struct Conn {
    stream: Option<mio::net::TcpStream>,
    phase: Phase,
    written: usize,
    carry: Vec<u8>,
    body: BodyReader,
    close_after: bool,
    /// Global connection number, fixes its slot in the open-loop schedule.
    global: u64,
    /// Requests sent on this connection's schedule so far.
    sent: u64,
    sent_at: Instant,
    scheduled: Instant,
    reconnect_at: Instant,
}

/// One plain HTTP/1.1 worker thread of `ringload http`.
pub(crate) struct Worker {
    /// Thread number.
    pub(crate) index: usize,
    /// Threads in total; connection `j` lives on thread `j % threads`.
    pub(crate) threads: usize,
    /// The run.
    pub(crate) config: HttpConfig,
    /// The encoded request, sent again and again.
    pub(crate) request: Arc<[u8]>,
    /// Set by the main thread at the end.
    pub(crate) stop: Arc<AtomicBool>,
    /// Completed requests per thread, for progress.
    pub(crate) counters: Arc<Vec<AtomicU64>>,
    /// Measurement start.
    pub(crate) start: Instant,
    /// CPU to pin to.
    pub(crate) core: Option<core_affinity::CoreId>,
}

impl Worker {
    /// Runs until `stop`; returns the thread's counts.
    pub(crate) fn run(self) -> ThreadStats {
        if let Some(core) = self.core {
            core_affinity::set_for_current(core);
        }
        let mut stats = ThreadStats::new();
        let Ok(mut poll) = Poll::new() else {
            stats.errors.connect += 1;
            return stats;
        };
        let mut events = Events::with_capacity(EVENTS_MAX);
        let mut buffer = vec![0u8; READ_BUFFER_BYTES];
        let mut conns: Vec<Conn> = (self.index..self.config.connections)
            .step_by(self.threads)
            .map(|global| Conn {
                stream: None,
                phase: Phase::Backoff,
                written: 0,
                carry: Vec::new(),
                body: BodyReader::Done,
                close_after: false,
                global: global as u64,
                sent: 0,
                sent_at: self.start,
                scheduled: self.start,
                reconnect_at: self.start,
            })
            .collect();
        let mut due: BinaryHeap<Reverse<(Instant, usize)>> = BinaryHeap::new();
        let end = self.start + self.config.duration;
        let mut next_scan = self.start;
        if let Some(wait) = self.start.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        for (id, conn) in conns.iter_mut().enumerate() {
            self.connect(&poll, conn, id, &mut stats);
        }
        loop {
            let now = Instant::now();
            if now >= end || self.stop.load(Ordering::Relaxed) {
                break;
            }
            while let Some(&Reverse((at, id))) = due.peek() {
                if at > now {
                    break;
                }
                due.pop();
                if conns[id].phase == Phase::Idle {
                    self.send(&mut conns[id], now, &mut stats);
                }
            }
            if now >= next_scan {
                next_scan = now + TIMEOUT_SCAN_INTERVAL;
                for (id, conn) in conns.iter_mut().enumerate() {
                    let in_flight =
                        matches!(conn.phase, Phase::Writing | Phase::Head | Phase::Body);
                    if in_flight && now.duration_since(conn.sent_at) > self.config.timeout {
                        stats.errors.timeout += 1;
                        self.reset(&poll, conn, id, now, &mut stats, false);
                    } else if conn.phase == Phase::Backoff && now >= conn.reconnect_at {
                        self.connect(&poll, conn, id, &mut stats);
                    }
                }
            }
            let mut wait = POLL_WAIT_MAX.min(end - now).min(next_scan - now);
            if let Some(&Reverse((at, _))) = due.peek() {
                wait = wait.min(at.saturating_duration_since(now));
            }
            if let Err(error) = poll.poll(&mut events, Some(wait)) {
                if error.kind() != ErrorKind::Interrupted {
                    break;
                }
            }
            for event in events.iter() {
                let id = event.token().0;
                let Some(conn) = conns.get_mut(id) else {
                    continue;
                };
                if conn.phase == Phase::Connecting {
                    if !(event.is_writable() || event.is_error() || event.is_write_closed()) {
                        continue;
                    }
                    let failed = conn.stream.as_ref().is_none_or(|stream| {
                        !matches!(stream.take_error(), Ok(None)) || stream.peer_addr().is_err()
                    });
                    if failed {
                        stats.errors.connect += 1;
                        conn.stream = None;
                        conn.phase = Phase::Backoff;
                        conn.reconnect_at = Instant::now() + RECONNECT_BACKOFF;
                        continue;
                    }
                    conn.phase = Phase::Idle;
                    self.became_idle(conn, id, Instant::now(), &mut due, &mut stats);
                    continue;
                }
                if conn.phase == Phase::Writing && event.is_writable() {
                    self.write_more(&poll, conn, id, &mut stats);
                }
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    let finished = self.read_ready(&poll, conn, id, &mut buffer, &mut stats);
                    if finished {
                        self.became_idle(conn, id, Instant::now(), &mut due, &mut stats);
                    }
                }
            }
            self.counters[self.index].store(stats.requests, Ordering::Relaxed);
        }
        stats
    }

    fn connect(&self, poll: &Poll, conn: &mut Conn, id: usize, stats: &mut ThreadStats) {
        let registered = socket::connect(self.config.target.addr, None).and_then(|mut stream| {
            poll.registry().register(
                &mut stream,
                Token(id),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(stream)
        });
        match registered {
            Ok(stream) => {
                conn.stream = Some(stream);
                conn.phase = Phase::Connecting;
            }
            Err(_) => {
                stats.errors.connect += 1;
                conn.stream = None;
                conn.phase = Phase::Backoff;
                conn.reconnect_at = Instant::now() + RECONNECT_BACKOFF;
            }
        }
    }

    /// Drops the connection and reconnects (immediately unless `backoff`).
    fn reset(
        &self,
        poll: &Poll,
        conn: &mut Conn,
        id: usize,
        now: Instant,
        stats: &mut ThreadStats,
        backoff: bool,
    ) {
        conn.stream = None;
        conn.carry.clear();
        if backoff {
            conn.phase = Phase::Backoff;
            conn.reconnect_at = now + RECONNECT_BACKOFF;
        } else {
            self.connect(poll, conn, id, stats);
        }
    }

    /// Next request on an idle connection: now (closed loop) or at its schedule slot.
    fn became_idle(
        &self,
        conn: &mut Conn,
        id: usize,
        now: Instant,
        due: &mut BinaryHeap<Reverse<(Instant, usize)>>,
        stats: &mut ThreadStats,
    ) {
        if conn.phase != Phase::Idle {
            return;
        }
        match self.config.rate {
            None => {
                conn.scheduled = now;
                self.send(conn, now, stats);
            }
            Some(rate) => {
                let slot = conn.global + conn.sent * self.config.connections as u64;
                let at = self.start + Duration::from_secs_f64(slot as f64 / rate);
                if at <= now {
                    self.send(conn, now, stats);
                } else {
                    due.push(Reverse((at, id)));
                }
            }
        }
    }

    fn send(&self, conn: &mut Conn, now: Instant, stats: &mut ThreadStats) {
        if let Some(rate) = self.config.rate {
            let slot = conn.global + conn.sent * self.config.connections as u64;
            conn.scheduled = self.start + Duration::from_secs_f64(slot as f64 / rate);
        } else {
            conn.scheduled = now;
        }
        conn.sent += 1;
        conn.sent_at = now;
        conn.written = 0;
        conn.phase = Phase::Writing;
        let Some(stream) = conn.stream.as_mut() else {
            return;
        };
        match write_some(stream, &self.request, &mut conn.written) {
            Ok(true) => conn.phase = Phase::Head,
            Ok(false) => {}
            Err(_) => {
                stats.errors.write += 1;
                conn.stream = None;
                conn.phase = Phase::Backoff;
                conn.reconnect_at = now;
            }
        }
    }

    fn write_more(&self, poll: &Poll, conn: &mut Conn, id: usize, stats: &mut ThreadStats) {
        let Some(stream) = conn.stream.as_mut() else {
            return;
        };
        match write_some(stream, &self.request, &mut conn.written) {
            Ok(true) => conn.phase = Phase::Head,
            Ok(false) => {}
            Err(_) => {
                stats.errors.write += 1;
                self.reset(poll, conn, id, Instant::now(), stats, false);
            }
        }
    }

    /// Reads what is available; returns true when a response completed and the
    /// connection is idle again.
    fn read_ready(
        &self,
        poll: &Poll,
        conn: &mut Conn,
        id: usize,
        buffer: &mut [u8],
        stats: &mut ThreadStats,
    ) -> bool {
        loop {
            let Some(stream) = conn.stream.as_mut() else {
                return false;
            };
            let read = match stream.read(buffer) {
                Ok(read) => read,
                Err(error) if error.kind() == ErrorKind::WouldBlock => return false,
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    if matches!(conn.phase, Phase::Writing | Phase::Head | Phase::Body) {
                        stats.errors.read += 1;
                    }
                    self.reset(poll, conn, id, Instant::now(), stats, false);
                    return false;
                }
            };
            if read == 0 {
                if matches!(conn.body, BodyReader::UntilClose) && conn.phase == Phase::Body {
                    conn.body = BodyReader::Done;
                    self.complete(conn, stats);
                } else if matches!(conn.phase, Phase::Writing | Phase::Head | Phase::Body) {
                    stats.errors.read += 1;
                }
                self.reset(poll, conn, id, Instant::now(), stats, false);
                return false;
            }
            stats.bytes += read as u64;
            match self.consume(conn, &mut buffer[..read], stats) {
                Ok(true) => {
                    if conn.close_after {
                        self.reset(poll, conn, id, Instant::now(), stats, false);
                        return false;
                    }
                    conn.phase = Phase::Idle;
                    return true;
                }
                Ok(false) => {}
                Err(()) => {
                    stats.errors.parse += 1;
                    self.reset(poll, conn, id, Instant::now(), stats, false);
                    return false;
                }
            }
            if read < buffer.len() {
                return false;
            }
        }
    }

    /// Feeds response bytes; Ok(true) when the response is complete.
    fn consume(
        &self,
        conn: &mut Conn,
        data: &mut [u8],
        stats: &mut ThreadStats,
    ) -> Result<bool, ()> {
        let mut pending = std::mem::take(&mut conn.carry);
        let data: &mut [u8] = if pending.is_empty() {
            data
        } else {
            pending.extend_from_slice(data);
            &mut pending
        };
        let mut at = 0;
        let result = loop {
            match conn.phase {
                Phase::Writing | Phase::Head => {
                    let no_body = self.config.method.eq_ignore_ascii_case("HEAD");
                    match http1::parse_response_head(&data[at..], no_body) {
                        Ok(Some(head)) => {
                            let slot = (head.status as usize).min(STATUS_CODES - 1);
                            stats.status[slot] += 1;
                            at += head.head_len;
                            conn.body = BodyReader::new(head.body);
                            conn.close_after = head.close;
                            conn.phase = Phase::Body;
                        }
                        Ok(None) => {
                            conn.carry.extend_from_slice(&data[at..]);
                            break Ok(false);
                        }
                        Err(_) => break Err(()),
                    }
                }
                Phase::Body => {
                    // Bytes after the body would be an unrequested response; ignored.
                    conn.body.skip(&mut data[at..]).map_err(|_| ())?;
                    if conn.body.is_done() {
                        self.complete(conn, stats);
                        break Ok(true);
                    }
                    break Ok(false);
                }
                _ => break Ok(false),
            }
        };
        if !pending.is_empty() && conn.carry.is_empty() {
            // Keep the allocation for the next partial head.
            pending.clear();
            conn.carry = pending;
        }
        result
    }

    fn complete(&self, conn: &mut Conn, stats: &mut ThreadStats) {
        let now = Instant::now();
        stats.requests += 1;
        let from = if self.config.rate.is_some() {
            conn.scheduled
        } else {
            conn.sent_at
        };
        stats
            .latency
            .record_us(now.saturating_duration_since(from).as_micros() as u64);
    }
}

/// Writes as much of `data[*written..]` as the socket takes; Ok(true) when all is written.
fn write_some(
    stream: &mut mio::net::TcpStream,
    data: &[u8],
    written: &mut usize,
) -> std::io::Result<bool> {
    while *written < data.len() {
        match stream.write(&data[*written..]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(count) => *written += count,
            Err(error) if error.kind() == ErrorKind::WouldBlock => return Ok(false),
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(true)
}
