//! The fixed-rate publisher of `ringload fanout` over the transports of
//! [`crate::transport`]. Same schedule and accounting as `plain::publisher`: message `m`
//! goes to room `m % rooms` at `m / rate` after the start; each room always uses the same
//! lane (`--pub-conns` lanes, room `r` on lane `r % lanes`), and a lane sends its next
//! publish only after the previous answer, so per-room order is kept. On HTTP/2 and HTTP/3
//! up to `--streams-per-conn` lanes share one connection; on HTTP/1.1 each lane has its own.

use crate::check::latency::Latency;
use crate::plan::publish::{
    PublishCounts, PublishError, PublishPlan, PublishProgress, PublishResult, CONNECT_TIMEOUT,
    PUBLISH_TIMEOUT,
};
use crate::proto::payload::{self, Stamp};
use crate::transport::{Connection, Endpoint, TransportError};
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Delay before a failed connection is tried again, so a dead server is not hammered.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(100);

/// One connection shared by lanes, replaced when it breaks.
struct Slot {
    endpoint: Endpoint,
    /// (generation, connection); the generation tells lanes whether the connection they
    /// saw break was already replaced.
    current: tokio::sync::Mutex<(u64, Option<Connection>)>,
}

impl Slot {
    /// A handle on a working connection, reconnecting if the one of `broken` generation
    /// (or none) is there.
    async fn handle(&self, broken: Option<u64>) -> Result<(u64, Connection), TransportError> {
        let mut guard = self.current.lock().await;
        let (generation, current) = &mut *guard;
        let usable = current
            .as_ref()
            .is_some_and(|connection| broken != Some(*generation) && !connection.is_closed());
        if usable {
            // HTTP/1.1 cannot share: its only lane takes the connection itself.
            if let Some(handle) = current
                .as_ref()
                .and_then(Connection::share)
                .or(current.take())
            {
                return Ok((*generation, handle));
            }
        }
        let connection = self.endpoint.connect().await?;
        *generation += 1;
        match connection.share() {
            Some(handle) => {
                *current = Some(connection);
                Ok((*generation, handle))
            }
            None => {
                *current = None;
                Ok((*generation, connection))
            }
        }
    }
}

struct Shared {
    plan: PublishPlan,
    progress: Arc<PublishProgress>,
    start: Instant,
    start_wall_ns: u64,
    total: u64,
    rooms: usize,
    lanes: usize,
    result: RefCell<PublishResult>,
    content_type: [(HeaderName, HeaderValue); 1],
}

impl Shared {
    fn offset(&self, message: u64) -> Duration {
        Duration::from_secs_f64(message as f64 / self.plan.rate)
    }
}

/// Lane state that outlives a lane cut off at the deadline.
#[derive(Default)]
struct LaneState {
    sent: u64,
    /// (room, seq) of the publish waiting for its answer.
    in_flight: Option<(usize, u64)>,
}

/// Connects, then publishes `plan`; returns when every message was answered or the window
/// plus grace is over.
pub fn run(
    plan: &PublishPlan,
    progress: Arc<PublishProgress>,
    endpoint: &Endpoint,
    streams_per_conn: usize,
) -> Result<PublishResult, PublishError> {
    let connect_error = |reason: String| PublishError::Connect {
        addr: plan.url.addr,
        reason,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| connect_error(error.to_string()))?;
    let local = tokio::task::LocalSet::new();
    let result = local.block_on(&runtime, async {
        let rooms = plan.rooms.len().max(1);
        let lanes = plan.connections.clamp(1, rooms);
        let per_conn = streams_per_conn.max(1);
        let slot_count = lanes.div_ceil(per_conn);
        let mut slots = Vec::with_capacity(slot_count);
        let mut first_handles = Vec::with_capacity(lanes);
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        for _ in 0..slot_count {
            let connection = tokio::time::timeout_at(deadline, endpoint.connect())
                .await
                .map_err(|_| connect_error("timed out".into()))?
                .map_err(|error| connect_error(error.to_string()))?;
            for _ in 1..per_conn {
                first_handles.push(connection.share());
            }
            first_handles.push(None);
            slots.push(Rc::new(Slot {
                endpoint: endpoint.clone(),
                current: tokio::sync::Mutex::new((1, Some(connection))),
            }));
        }
        let shared = Rc::new(Shared {
            plan: plan.clone(),
            progress,
            start: Instant::now(),
            start_wall_ns: crate::check::clock::wall_ns(),
            total: (plan.rate * plan.duration.as_secs_f64()).round() as u64,
            rooms,
            lanes,
            result: RefCell::new(PublishResult {
                counts: PublishCounts::default(),
                last_seq: vec![0; rooms],
                ok_per_room: vec![0; rooms],
                failed_seqs: vec![Vec::new(); rooms],
                lateness: Latency::new(),
                response_time: Latency::new(),
            }),
            content_type: [(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain"),
            )],
        });
        shared.result.borrow_mut().counts.scheduled = shared.total;
        // Lane l rides slot l / per_conn; its first handle was prepared above (the last
        // lane of a slot starts without one and asks the slot).
        let mut tasks = Vec::with_capacity(lanes);
        for (lane, handle) in first_handles.into_iter().take(lanes).enumerate() {
            let slot = slots[lane / per_conn].clone();
            let shared = shared.clone();
            tasks.push(tokio::task::spawn_local(async move {
                let state = Rc::new(RefCell::new(LaneState::default()));
                let deadline = shared.start + shared.plan.duration + shared.plan.grace;
                let lane_total = lane_messages(&shared, lane);
                let finished = tokio::time::timeout_at(
                    deadline,
                    run_lane(&shared, &slot, lane, handle.map(|h| (1, h)), &state),
                )
                .await
                .is_ok();
                let state = state.borrow();
                let mut result = shared.result.borrow_mut();
                if !finished {
                    result.counts.unsent += lane_total - state.sent;
                    if let Some((room, seq)) = state.in_flight {
                        result.counts.errors.timeout += 1;
                        result.failed_seqs[room].push(seq);
                    }
                }
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
        let mut result = std::mem::replace(
            &mut *shared.result.borrow_mut(),
            PublishResult {
                counts: PublishCounts::default(),
                last_seq: Vec::new(),
                ok_per_room: Vec::new(),
                failed_seqs: Vec::new(),
                lateness: Latency::new(),
                response_time: Latency::new(),
            },
        );
        for seqs in &mut result.failed_seqs {
            seqs.sort_unstable();
        }
        Ok(result)
    });
    drop(local);
    result
}

/// Messages lane `lane` publishes in the whole run.
fn lane_messages(shared: &Shared, lane: usize) -> u64 {
    (lane..shared.rooms)
        .step_by(shared.lanes)
        .map(|room| {
            let room = room as u64;
            if shared.total > room {
                (shared.total - room).div_ceil(shared.rooms as u64)
            } else {
                0
            }
        })
        .sum()
}

async fn run_lane(
    shared: &Shared,
    slot: &Slot,
    lane: usize,
    mut connection: Option<(u64, Connection)>,
    state: &RefCell<LaneState>,
) {
    let rooms = shared.rooms as u64;
    let lane_rooms: Vec<u64> = (lane as u64..rooms).step_by(shared.lanes).collect();
    let mut broken: Option<u64> = None;
    let mut payload = Vec::with_capacity(shared.plan.size + 128);
    let mut body = Vec::with_capacity(shared.plan.size + 128);
    for round in 0.. {
        let first = round * rooms;
        if first >= shared.total {
            break;
        }
        for &room in &lane_rooms {
            let message = first + room;
            if message >= shared.total {
                break;
            }
            tokio::time::sleep_until(shared.start + shared.offset(message)).await;
            let mut handle = loop {
                match connection.take() {
                    Some(handle) => break handle,
                    None => match slot.handle(broken).await {
                        Ok(handle) => break handle,
                        Err(_) => {
                            shared.result.borrow_mut().counts.errors.connect += 1;
                            tokio::time::sleep(RECONNECT_BACKOFF).await;
                        }
                    },
                }
            };
            let ok = publish(
                shared,
                &mut handle.1,
                room as usize,
                message,
                state,
                &mut payload,
                &mut body,
            )
            .await;
            // A multiplexed connection survives a failed stream; an HTTP/1.1 connection
            // with an unanswered request does not.
            if ok || (handle.1.is_multiplexed() && !handle.1.is_closed()) {
                connection = Some(handle);
            } else {
                broken = Some(handle.0);
            }
        }
    }
}

/// Sends one publish and waits for its answer; false when the connection failed.
async fn publish(
    shared: &Shared,
    connection: &mut Connection,
    room: usize,
    message: u64,
    state: &RefCell<LaneState>,
    payload: &mut Vec<u8>,
    body: &mut Vec<u8>,
) -> bool {
    let plan = &shared.plan;
    let seq = message / shared.rooms as u64 + 1;
    let room_name = &plan.rooms[room];
    let scheduled_ns = shared.start_wall_ns + shared.offset(message).as_nanos() as u64;
    let sent_ns = crate::check::clock::wall_ns();
    payload.clear();
    payload::encode(
        payload,
        &Stamp {
            run: plan.run_id,
            room: room_name.as_bytes(),
            seq,
            sent_ns,
            scheduled_ns,
        },
        plan.size,
    );
    body.clear();
    plan.body.render_into(body, room_name, seq, payload);
    let path = plan.url.path.render(room_name, seq);
    {
        let mut result = shared.result.borrow_mut();
        result
            .lateness
            .record_ns(sent_ns as i64 - scheduled_ns as i64);
        result.counts.sent += 1;
        result.last_seq[room] = seq;
        shared
            .progress
            .sent
            .store(result.counts.sent, Ordering::Relaxed);
    }
    {
        let mut state = state.borrow_mut();
        state.sent += 1;
        state.in_flight = Some((room, seq));
    }
    let sent_at = Instant::now();
    let exchange = async {
        let mut response = connection
            .request(
                http::Method::POST,
                &path,
                &shared.content_type,
                Bytes::copy_from_slice(body),
            )
            .await?;
        response.drain().await?;
        Ok::<u16, TransportError>(response.status)
    };
    let outcome = tokio::time::timeout(PUBLISH_TIMEOUT, exchange).await;
    state.borrow_mut().in_flight = None;
    let mut result = shared.result.borrow_mut();
    match outcome {
        Ok(Ok(status)) => {
            result
                .response_time
                .record_us(sent_at.elapsed().as_micros() as u64);
            if (200..300).contains(&status) {
                result.counts.ok += 1;
                result.ok_per_room[room] += 1;
            } else {
                *result.counts.failed_status.entry(status).or_default() += 1;
                result.failed_seqs[room].push(seq);
            }
            true
        }
        Ok(Err(error)) => {
            match error {
                TransportError::Send(_) => result.counts.errors.write += 1,
                _ => result.counts.errors.read += 1,
            }
            result.failed_seqs[room].push(seq);
            false
        }
        Err(_) => {
            result.counts.errors.timeout += 1;
            result.failed_seqs[room].push(seq);
            false
        }
    }
}
