//! The fixed-rate publisher of `ringload fanout`: one thread, a few keep-alive HTTP/1.1
//! connections, messages released on a fixed schedule (round-robin over rooms). A room's
//! messages always use the same connection and go out on it in order. A connection has at
//! most `pipeline` requests written whose responses have not arrived (HTTP/1.1 pipelining,
//! `--pub-pipeline`; 1 = the next request only after the previous response); responses are
//! matched to requests in order. When the server is slow, messages wait and their lateness
//! shows in the schedule-based latency.

use crate::check::latency::Latency;
use crate::plain::socket;
use crate::plan::publish::{
    PublishCounts, PublishError, PublishPlan, PublishProgress, PublishResult, CONNECT_TIMEOUT,
    PUBLISH_TIMEOUT, PUB_PIPELINE_MAX,
};
use crate::proto::http1::{self, BodyReader};
use crate::proto::payload::{self, Stamp};
use mio::{Events, Interest, Poll, Token};
use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Longest poll wait; bounds how late the stop flag and deadlines are noticed.
const POLL_WAIT_MAX: Duration = Duration::from_millis(10);

/// Bytes per read syscall for publish responses (they are small).
const READ_BUFFER_BYTES: usize = 16 * 1024;

/// mio events per poll.
const EVENTS_MAX: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    Open,
    Broken,
}

/// Which error counter a failure of in-flight publishes goes to.
#[derive(Debug, Clone, Copy)]
enum Failure {
    Read,
    Write,
    Parse,
    Timeout,
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
    /// Due messages not yet written.
    queue: VecDeque<u64>,
    /// Encoded requests; `out[written..]` still to be written.
    out: Vec<u8>,
    written: usize,
    carry: Vec<u8>,
    /// True between a parsed response head and the end of its body.
    in_body: bool,
    body: BodyReader,
    close_after: bool,
    /// Requests encoded (written or in `out`) without a response, oldest first; at most
    /// the plan's `pipeline`.
    in_flight: VecDeque<InFlight>,
    status: u16,
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
    assert!((1..=PUB_PIPELINE_MAX).contains(&plan.pipeline));
    let mut conns: Vec<PubConn> = Vec::with_capacity(connections);
    for id in 0..connections {
        let stream = connect(&poll, plan, id)?;
        conns.push(PubConn {
            stream: Some(stream),
            phase: Phase::Connecting,
            queue: VecDeque::new(),
            out: Vec::with_capacity((plan.size + 512) * plan.pipeline),
            written: 0,
            carry: Vec::new(),
            in_body: false,
            body: BodyReader::Done,
            close_after: false,
            in_flight: VecDeque::with_capacity(plan.pipeline),
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
                conn.phase = Phase::Open;
            }
        }
    }
    let mut publisher = Publisher {
        plan,
        poll,
        start: Instant::now(),
        start_wall_ns: crate::check::clock::wall_ns(),
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
                self.send_due(conn, now);
            }
            for (id, conn) in conns.iter_mut().enumerate() {
                if let Some(flight) = conn.in_flight.front() {
                    if now.duration_since(flight.sent_at) > PUBLISH_TIMEOUT {
                        self.fail_in_flight(conn, Failure::Timeout);
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
                    .all(|conn| conn.queue.is_empty() && conn.in_flight.is_empty());
            if all_done {
                break;
            }
            if now >= deadline || progress.stop.load(Ordering::Relaxed) {
                for conn in conns.iter_mut() {
                    self.result.counts.unsent += conn.queue.len() as u64;
                    self.fail_in_flight(conn, Failure::Timeout);
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
                if conn.phase == Phase::Connecting {
                    if connect_error(conn.stream.as_ref()).is_some() {
                        self.result.counts.errors.connect += 1;
                        conn.phase = Phase::Broken;
                    } else {
                        conn.phase = Phase::Open;
                    }
                }
                if conn.phase == Phase::Open && event.is_writable() && conn.written < conn.out.len()
                {
                    self.write_more(conn);
                }
                let closed = event.is_read_closed() || event.is_error();
                if conn.phase == Phase::Open && (event.is_readable() || closed) {
                    self.read_ready(conn, closed);
                }
            }
        }
        for seqs in &mut self.result.failed_seqs {
            seqs.sort_unstable();
        }
    }

    /// Encodes due messages while the pipeline has room, then writes them in one go.
    fn send_due(&mut self, conn: &mut PubConn, now: Instant) {
        if conn.phase != Phase::Open || conn.close_after {
            return;
        }
        let before = conn.in_flight.len();
        while conn.in_flight.len() < self.plan.pipeline {
            let Some(message) = conn.queue.pop_front() else {
                break;
            };
            self.encode(conn, message, now);
        }
        if conn.in_flight.len() > before {
            self.write_more(conn);
        }
    }

    /// Appends the request for `message` to the connection's output.
    fn encode(&mut self, conn: &mut PubConn, message: u64, now: Instant) {
        let room = (message % self.rooms as u64) as usize;
        let seq = message / self.rooms as u64 + 1;
        let room_name = &self.plan.rooms[room];
        let scheduled_ns = self.start_wall_ns + self.scheduled_offset(message).as_nanos() as u64;
        let sent_ns = crate::check::clock::wall_ns();
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
        if conn.written == conn.out.len() {
            conn.out.clear();
            conn.written = 0;
        }
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
        conn.in_flight.push_back(InFlight {
            room,
            seq,
            sent_at: now,
        });
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
                    self.fail_in_flight(conn, Failure::Write);
                    conn.phase = Phase::Broken;
                    return;
                }
            }
        }
    }

    /// Reads what arrived; with `closed` (the peer's FIN came with this event, which an
    /// edge-triggered poll will not report again) reads on to the end of the stream.
    fn read_ready(&mut self, conn: &mut PubConn, closed: bool) {
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
                if conn.in_body && matches!(conn.body, BodyReader::UntilClose) {
                    self.complete(conn);
                }
                self.fail_in_flight(conn, Failure::Read);
                conn.phase = Phase::Broken;
                return;
            }
            if conn.in_flight.is_empty() {
                // Bytes nobody asked for: the connection is out of step.
                self.result.counts.errors.parse += 1;
                conn.phase = Phase::Broken;
                return;
            }
            let mut data = std::mem::take(&mut conn.carry);
            data.extend_from_slice(&self.buffer[..read]);
            // Several pipelined responses may sit in one read: take them in order.
            let mut at = 0;
            while at < data.len() {
                if conn.in_flight.is_empty() {
                    self.result.counts.errors.parse += 1;
                    conn.phase = Phase::Broken;
                    return;
                }
                if !conn.in_body {
                    match http1::parse_response_head(&data[at..], false) {
                        Ok(Some(head)) => {
                            conn.status = head.status;
                            conn.close_after = head.close;
                            conn.body = BodyReader::new(head.body);
                            conn.in_body = true;
                            at += head.head_len;
                        }
                        Ok(None) => {
                            conn.carry = data[at..].to_vec();
                            break;
                        }
                        Err(_) => {
                            self.fail_in_flight(conn, Failure::Parse);
                            conn.phase = Phase::Broken;
                            return;
                        }
                    }
                }
                match conn.body.skip(&mut data[at..]) {
                    Ok(consumed) => at += consumed,
                    Err(_) => {
                        self.fail_in_flight(conn, Failure::Parse);
                        conn.phase = Phase::Broken;
                        return;
                    }
                }
                if !conn.body.is_done() {
                    break;
                }
                self.complete(conn);
                if conn.close_after {
                    // Requests behind a `Connection: close` answer get none.
                    self.fail_in_flight(conn, Failure::Read);
                    conn.phase = Phase::Broken;
                    return;
                }
            }
            if read < self.buffer.len() && !closed {
                return;
            }
        }
    }

    /// The response to the oldest in-flight request is complete.
    fn complete(&mut self, conn: &mut PubConn) {
        conn.in_body = false;
        let Some(flight) = conn.in_flight.pop_front() else {
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
    }

    /// Every request in flight on `conn` failed (counted under `failure`, one each).
    fn fail_in_flight(&mut self, conn: &mut PubConn, failure: Failure) {
        let count = conn.in_flight.len() as u64;
        let errors = &mut self.result.counts.errors;
        match failure {
            Failure::Read => errors.read += count,
            Failure::Write => errors.write += count,
            Failure::Parse => errors.parse += count,
            Failure::Timeout => errors.timeout += count,
        }
        for flight in conn.in_flight.drain(..) {
            self.result.failed_seqs[flight.room].push(flight.seq);
        }
    }

    fn reconnect(&mut self, conn: &mut PubConn, id: usize) {
        conn.stream = None;
        conn.carry.clear();
        conn.out.clear();
        conn.written = 0;
        conn.in_body = false;
        conn.close_after = false;
        conn.in_flight.clear();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::target::UrlTemplate;
    use crate::proto::template::Template;
    use std::net::TcpListener;

    /// Four messages due at once on one connection with `--pub-pipeline 4`.
    fn plan(addr: std::net::SocketAddr) -> PublishPlan {
        PublishPlan {
            rooms: vec!["r0".into()],
            url: UrlTemplate::parse(&format!("http://{addr}/p/{{room}}")).unwrap(),
            body: Template::parse("{payload}").unwrap(),
            headers: Vec::new(),
            connections: 1,
            pipeline: 4,
            rate: 1000.0,
            duration: Duration::from_millis(4),
            grace: Duration::from_secs(3),
            size: 50,
            run_id: 1,
        }
    }

    /// Serves one connection: reads until `requests` requests arrived (none answered
    /// before: the client must pipeline them), then writes `answer` at once and closes.
    fn serve_once(requests: usize, answer: &'static [u8]) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut seen = Vec::new();
            let mut buffer = [0u8; 4096];
            while seen.windows(5).filter(|w| w == b"POST ").count() < requests {
                let read = stream.read(&mut buffer).unwrap();
                assert!(read > 0, "client closed");
                seen.extend_from_slice(&buffer[..read]);
            }
            stream.write_all(answer).unwrap();
        });
        addr
    }

    /// Responses in one read are matched in order; a 500 fails only its own publish.
    #[test]
    fn pipelined_answers_in_one_read_match_in_order() {
        let addr = serve_once(
            4,
            b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok\
              HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nfail\
              HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n\
              HTTP/1.1 204 No Content\r\n\r\n",
        );
        let result = run(&plan(addr), &PublishProgress::default()).unwrap();
        assert_eq!(result.counts.sent, 4);
        assert_eq!(result.counts.ok, 3);
        assert_eq!(result.counts.failed_status.get(&500), Some(&1));
        assert_eq!(result.counts.errors.total(), 0);
        assert_eq!(result.failed_seqs, vec![vec![2]]);
        assert_eq!(result.response_time.count(), 4);
    }

    /// The connection closing with three publishes in flight fails all three.
    #[test]
    fn connection_loss_fails_every_publish_in_flight() {
        let addr = serve_once(4, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
        let result = run(&plan(addr), &PublishProgress::default()).unwrap();
        assert_eq!(result.counts.ok, 1);
        assert_eq!(result.counts.errors.read, 3);
        assert_eq!(result.counts.failed(), 3);
        assert_eq!(result.failed_seqs, vec![vec![2, 3, 4]]);
        assert_eq!(result.counts.unsent, 0);
    }
}
