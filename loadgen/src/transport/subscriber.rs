//! Subscriber threads for the transports of [`crate::transport`] (HTTP/1.1 over TLS,
//! HTTP/2, HTTP/3): each pinned thread runs a tokio current-thread runtime; its
//! subscribers are grouped `--streams-per-conn` to a connection, one stream each. Every
//! delivery goes through the same [`Checker`] as on the mio path, and the thread hands back
//! the same [`ThreadResult`], so verdicts do not depend on the transport.

use crate::check::checker::{Checker, DeliveryCounts, PendingEvent};
use crate::check::latency::Latency;
use crate::check::tracker::SeqTracker;
use crate::plan::subscribe::{Control, ThreadResult, CONNECTS_IN_FLIGHT_MAX};
use crate::proto::sse::{self, LINE_BYTES_MAX};
use crate::transport::{Connection, Endpoint, QuicCloser, Response};
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How often a thread looks at the stop flag and publishes its delivery count.
const WATCH_INTERVAL: Duration = Duration::from_millis(10);

/// Everything the stream subscriber threads share, read-only.
#[derive(Debug)]
pub struct StreamSubscriberSetup {
    /// Room names, index = room number.
    pub rooms: Vec<String>,
    /// Subscribe path per room.
    pub paths: Vec<String>,
    /// Where and how to connect.
    pub endpoint: Endpoint,
    /// Subscriptions sharing one connection.
    pub streams_per_conn: usize,
    /// Total subscribers; subscriber `i` joins room `i % rooms`.
    pub subscribers: usize,
    /// Threads; subscriber `i` lives on thread `i % threads`.
    pub threads: usize,
    /// Run id expected in payloads.
    pub run_id: u32,
}

struct Subscription {
    room: u32,
    pending: PendingEvent,
    tracker: SeqTracker,
    /// Partial SSE line carried to the next chunk.
    carry: Vec<u8>,
}

struct ThreadState {
    counts: DeliveryCounts,
    latency_stamp: Latency,
    latency_schedule: Latency,
    subscriptions: Vec<Subscription>,
}

/// Shared per-thread context of the tasks.
struct Context {
    setup: Arc<StreamSubscriberSetup>,
    control: Arc<Control>,
    state: RefCell<ThreadState>,
    /// Headers of every subscribe request (as the mio path sends them).
    sse_headers: [(HeaderName, HeaderValue); 2],
    /// HTTP/3 connections to close politely when the run is over.
    quic: RefCell<Vec<QuicCloser>>,
}

/// Runs thread `index` until `control.stop`; returns its findings.
pub fn run_thread(
    index: usize,
    setup: Arc<StreamSubscriberSetup>,
    control: Arc<Control>,
    core: Option<core_affinity::CoreId>,
) -> ThreadResult {
    if let Some(core) = core {
        core_affinity::set_for_current(core);
    }
    let rooms = setup.rooms.len().max(1);
    let subscriptions: Vec<Subscription> = (index..setup.subscribers)
        .step_by(setup.threads.max(1))
        .map(|global| Subscription {
            room: (global % rooms) as u32,
            pending: PendingEvent::default(),
            tracker: SeqTracker::new(),
            carry: Vec::new(),
        })
        .collect();
    let context = Rc::new(Context {
        setup: setup.clone(),
        control: control.clone(),
        state: RefCell::new(ThreadState {
            counts: DeliveryCounts::default(),
            latency_stamp: Latency::new(),
            latency_schedule: Latency::new(),
            subscriptions,
        }),
        sse_headers: [
            (
                http::header::ACCEPT,
                HeaderValue::from_static("text/event-stream"),
            ),
            (
                http::header::CACHE_CONTROL,
                HeaderValue::from_static("no-cache"),
            ),
        ],
        quic: RefCell::new(Vec::new()),
    });
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => {
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, drive(index, context.clone()));
            let closers = std::mem::take(&mut *context.quic.borrow_mut());
            local.block_on(&runtime, QuicCloser::close_all(closers));
            // Dropping the set cancels the stream tasks (and their Rc on the context).
            drop(local);
            drop(runtime);
        }
        Err(error) => control.fail(format!("cannot start the runtime: {error}")),
    }
    let state = match Rc::try_unwrap(context) {
        Ok(context) => context.state.into_inner(),
        Err(context) => std::mem::replace(
            &mut *context.state.borrow_mut(),
            ThreadState {
                counts: DeliveryCounts::default(),
                latency_stamp: Latency::new(),
                latency_schedule: Latency::new(),
                subscriptions: Vec::new(),
            },
        ),
    };
    ThreadResult {
        counts: state.counts,
        trackers: state
            .subscriptions
            .into_iter()
            .map(|subscription| (subscription.room, subscription.tracker))
            .collect(),
        latency_stamp: state.latency_stamp,
        latency_schedule: state.latency_schedule,
        published: None,
    }
}

async fn drive(thread: usize, context: Rc<Context>) {
    let count = context.state.borrow().subscriptions.len();
    let per_conn = context.setup.streams_per_conn.max(1);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(CONNECTS_IN_FLIGHT_MAX));
    for first in (0..count).step_by(per_conn) {
        let ids = first..(first + per_conn).min(count);
        tokio::task::spawn_local(connection(
            context.clone(),
            handshakes.clone(),
            ids.collect(),
        ));
    }
    while !context.control.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(WATCH_INTERVAL).await;
        let delivered = context.state.borrow().counts.delivered;
        context.control.delivered[thread]
            .0
            .store(delivered, Ordering::Relaxed);
    }
}

/// One connection and its subscriptions (local ids into the thread's list).
async fn connection(
    context: Rc<Context>,
    handshakes: Arc<tokio::sync::Semaphore>,
    ids: Vec<usize>,
) {
    let Ok(permit) = handshakes.acquire_owned().await else {
        return;
    };
    let connection = match context.setup.endpoint.connect().await {
        Ok(connection) => connection,
        Err(error) => {
            for id in ids {
                close(&context, id, &error.to_string());
            }
            return;
        }
    };
    if let Some(closer) = connection.quic_closer() {
        context.quic.borrow_mut().push(closer);
    }
    // The permit is held until every subscription on the connection has its response
    // head, like the mio path's bound on subscribe requests in flight.
    let permit = Rc::new(permit);
    let mut connection = Some(connection);
    let last = ids.len().saturating_sub(1);
    for (index, id) in ids.into_iter().enumerate() {
        let handle = if index == last {
            connection.take()
        } else {
            connection.as_ref().and_then(Connection::share)
        };
        let Some(handle) = handle else {
            close(&context, id, "connection cannot carry another stream");
            continue;
        };
        tokio::task::spawn_local(subscription(context.clone(), permit.clone(), handle, id));
    }
}

async fn subscription(
    context: Rc<Context>,
    permit: Rc<tokio::sync::OwnedSemaphorePermit>,
    mut connection: Connection,
    id: usize,
) {
    let room = context.state.borrow().subscriptions[id].room as usize;
    let path = &context.setup.paths[room];
    let response = connection
        .request(http::Method::GET, path, &context.sse_headers, Bytes::new())
        .await;
    drop(permit);
    let mut response = match response {
        Ok(response) if (200..300).contains(&response.status) => response,
        Ok(response) => {
            let name = &context.setup.rooms[room];
            close(
                &context,
                id,
                &format!("subscribe answered HTTP {} (room {name})", response.status),
            );
            return;
        }
        Err(error) => {
            close(&context, id, &error.to_string());
            return;
        }
    };
    context.control.subscribed.fetch_add(1, Ordering::Relaxed);
    read_events(&context, &mut response, id).await;
    // `connection` lives until here: on HTTP/3 the request handles keep the connection.
    drop(connection);
}

async fn read_events(context: &Context, response: &mut Response, id: usize) {
    loop {
        match response.chunk().await {
            Ok(Some(data)) => {
                if let Err(reason) = feed(context, id, &data) {
                    close(context, id, reason);
                    return;
                }
            }
            Ok(None) => {
                close(context, id, "server ended the event stream");
                return;
            }
            Err(error) => {
                close(context, id, &error.to_string());
                return;
            }
        }
    }
}

/// Parses one body chunk of subscription `id`.
fn feed(context: &Context, id: usize, data: &[u8]) -> Result<(), &'static str> {
    let now_ns = crate::check::clock::wall_ns();
    let mut state = context.state.borrow_mut();
    let ThreadState {
        counts,
        latency_stamp,
        latency_schedule,
        subscriptions,
    } = &mut *state;
    counts.reads += 1;
    counts.bytes += data.len() as u64;
    let subscription = &mut subscriptions[id];
    let room = context.setup.rooms[subscription.room as usize].as_bytes();
    let mut checker = Checker {
        pending: &mut subscription.pending,
        tracker: &mut subscription.tracker,
        counts,
        latency_stamp,
        latency_schedule,
        room,
        run_id: context.setup.run_id,
        now_ns,
    };
    if subscription.carry.is_empty() {
        let used = sse::feed(data, &mut checker);
        subscription.carry.extend_from_slice(&data[used..]);
    } else {
        subscription.carry.extend_from_slice(data);
        let used = sse::feed(&subscription.carry, &mut checker);
        subscription.carry.drain(..used);
    }
    if subscription.carry.len() > LINE_BYTES_MAX {
        return Err("SSE line longer than the limit");
    }
    Ok(())
}

/// A subscription ended: during setup a failure, later a disconnect.
fn close(context: &Context, id: usize, reason: &str) {
    let control = &context.control;
    if control.stop.load(Ordering::Relaxed) {
        // The run is over: the thread itself is closing its connections.
        return;
    }
    if control.running.load(Ordering::Relaxed) {
        context.state.borrow_mut().counts.disconnects += 1;
    } else {
        let room = context.state.borrow().subscriptions[id].room as usize;
        control.fail(format!(
            "{} subscriber, room {}: {reason}",
            context.setup.endpoint.proto().name(),
            context.setup.rooms[room]
        ));
    }
}
