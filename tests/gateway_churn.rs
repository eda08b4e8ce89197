//! Churn (issue 8): fan-out to a steady set of subscribers stays clean — every message of
//! its room exactly once and in order — while thousands of other subscribers come and go
//! around them (closing after the head, mid-stream, with a reset, mid-replay, or never
//! reading until they are cut as slow consumers) and a few read slowly. Meanwhile the
//! server's RSS, open fds and live tickers, sampled every second, stay flat, nothing
//! panics, and once churn stops every figure returns to its baseline.
//!
//! Alone in its file: it keeps both cores of a small CI machine busy for about 12 s, and
//! its bounds assume no other test of the same binary competes with it. The ten-minute
//! release-build version is `bench-results/soak/soak.py`.

mod common;

use common::{Client, Item, Metrics, Server, Sse};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Rooms the steady subscribers and the publisher use (`churn0` …).
const ROOMS: usize = 4;
/// Subscribers that read everything from before the first publish to after the last.
const STEADY_SUBSCRIBERS: usize = 200;
/// Subscribers that read a little every [`SLOW_READ_EVERY`].
const SLOW_READERS: usize = 4;
const SLOW_READ_EVERY: Duration = Duration::from_millis(100);
const SLOW_READ_BYTES: usize = 1024;
/// Messages per second over all steady rooms, round-robin: 50/s per room, so the
/// `--history 64` ring laps itself every ~1.3 s and churned resumes hit real gaps.
const PUBLISH_RATE_PER_S: u64 = 200;
const MESSAGE_BYTES: usize = 256;
/// How long the publishers run (the churn stops [`CHURN_STOPS_BEFORE_END`] earlier).
const RUN: Duration = Duration::from_secs(10);
/// The room the never-reading churners join, at a rate that laps a stopped reader within
/// ~1.5 s: a never-reader announces a small MSS (so the server's send buffer starts at
/// tens of KiB instead of the megabytes a 64 KiB loopback MSS gives) and a 2 KiB receive
/// buffer, so ~20 messages fill both and 64 more lap it. No steady subscriber reads it.
const FLOOD_ROOM: &str = "churn-flood";
const FLOOD_RATE_PER_S: u64 = 64;
const FLOOD_MESSAGE_BYTES: usize = 4 * 1024;
const NEVER_READ_MSS_BYTES: u32 = 536;
const NEVER_READ_RECV_BUFFER_BYTES: usize = 2048;
/// Churning connections per second over all churn threads; over the 8.5 s of churn this
/// makes ~4000, of which [`CHURNED_MIN`] must happen even on a loaded machine.
const CHURN_RATE_PER_S: u64 = 480;
const CHURN_THREADS: usize = 6;
/// The churn stops this long before the publishers, so that a visit reading mid-stream
/// always has messages coming (at 50/s per room it needs ~40 ms for its two events).
const CHURN_STOPS_BEFORE_END: Duration = Duration::from_millis(1500);
const CHURNED_MIN: u64 = 3000;
/// How long a never-reading churner stays connected (long enough to be lapped), and how
/// many each churn thread holds at once (the oldest is dropped early beyond that; each
/// thread starts ~13 a second).
const NEVER_READ_HOLD: Duration = Duration::from_secs(3);
const NEVER_READ_HELD_MAX: usize = 40;
/// The most churn connections open at once from the client side: the held never-readers
/// plus one in progress per thread. Server-side figures may run this much above their
/// baseline at any moment without anything leaking.
const CHURN_OPEN_MAX: u64 = (CHURN_THREADS * (NEVER_READ_HELD_MAX + 1)) as u64;
/// Samples before this are warm-up: history rings filling, allocator pools growing, the
/// churn ramping up to its steady number of open connections.
const WARM_UP: Duration = Duration::from_secs(3);
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Growth allowed after warm-up: 5 % of the baseline, but at least the churn's own open
/// connections for fds and tickers, and at least this for RSS (a debug build's RSS moves
/// by a few MiB with allocator and page-cache noise alone).
const GROWTH_PERCENT_MAX: u64 = 5;
const RSS_GROWTH_KB_MIN: u64 = 8 * 1024;

/// What must return to its value once the churn is over.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Held {
    fds: u64,
    tickers: u64,
    subscribers: u64,
    connections: u64,
}

fn held(metrics: &Metrics) -> Held {
    Held {
        fds: metrics.sum("ringcast_fds_used"),
        tickers: metrics.sum("ringcast_tickers_live"),
        subscribers: metrics.sum("ringcast_subscribers"),
        connections: metrics.sum("ringcast_connections"),
    }
}

/// Waits until two readings a moment apart agree, and returns that reading.
fn settled(scraper: &mut Client) -> Held {
    let mut last = held(&scraper.metrics());
    let steady = common::wait_until(Duration::from_secs(5), || {
        std::thread::sleep(Duration::from_millis(100));
        let now = held(&scraper.metrics());
        let same = now == last;
        last = now;
        same
    });
    assert!(steady, "figures did not settle: {last:?}");
    last
}

/// Waits until the figures equal `want`; panics with both and the open fds if not.
fn expect_back_at(server: &Server, scraper: &mut Client, want: Held, what: &str) {
    let mut now = held(&scraper.metrics());
    common::wait_until(Duration::from_secs(5), || {
        now = held(&scraper.metrics());
        now == want
    });
    assert_eq!(
        now,
        want,
        "{what}: figures did not return to the baseline; open fds: {:#?}",
        server.open_fds()
    );
}

fn rss_kb(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

fn room_name(room: usize) -> String {
    format!("churn{room}")
}

/// `ROOM SEQ ` padded with `.` to `bytes`: a subscriber can tell room and order from it.
fn payload(room: usize, seq: u64, bytes: usize) -> String {
    let mut data = format!("{room} {seq} ");
    data.extend(std::iter::repeat_n('.', bytes.saturating_sub(data.len())));
    data
}

/// What the publisher got sequenced: the last id per room, known once it is done.
struct Published {
    last_ids: [AtomicU64; ROOMS],
    done: AtomicBool,
}

/// One steady subscriber's account.
struct Steady {
    room: usize,
    received: u64,
    /// Loss, duplicates, reordering, foreign data or a stream end; the first few.
    faults: Vec<String>,
}

const FAULTS_KEPT: usize = 5;

fn fault(faults: &mut Vec<String>, text: String) {
    if faults.len() < FAULTS_KEPT {
        faults.push(text);
    }
}

/// Reads until every id the publisher got for `room` has arrived, checking each event
/// is the next id of the room and carries that room's payload.
fn read_steady(
    mut sse: Sse,
    room: usize,
    published: &Published,
    deadline: Instant,
) -> (Sse, Steady) {
    let mut account = Steady {
        room,
        received: 0,
        faults: Vec::new(),
    };
    let mut next = 1u64;
    loop {
        match sse.next_item(Duration::from_millis(200)) {
            Ok(Some(Item::Event(event))) => {
                account.received += 1;
                let want = payload(room, next, MESSAGE_BYTES);
                if event.id.map(|id| id.seq) != Some(next)
                    || event.event.is_some()
                    || event.data != want
                {
                    fault(
                        &mut account.faults,
                        format!(
                            "wanted id {next}, got id {:?} event {:?} data {:?}",
                            event.id,
                            event.event,
                            &event.data[..event.data.len().min(24)]
                        ),
                    );
                    // Resynchronise on what arrived, so one fault is reported once.
                    next = event.id.map_or(next, |id| id.seq);
                }
                next += 1;
            }
            Ok(Some(Item::Comment(_) | Item::Retry(_))) => {}
            Ok(None) => {
                fault(
                    &mut account.faults,
                    format!("stream ended before id {next}"),
                );
                break;
            }
            Err(err) if err.kind() == io::ErrorKind::TimedOut => {}
            Err(err) => {
                fault(
                    &mut account.faults,
                    format!("read error before id {next}: {err}"),
                );
                break;
            }
        }
        if published.done.load(Ordering::Acquire)
            && next > published.last_ids[room].load(Ordering::Acquire)
        {
            break;
        }
        if Instant::now() > deadline {
            fault(
                &mut account.faults,
                format!("still waiting for id {next} at the deadline"),
            );
            break;
        }
    }
    (sse, account)
}

/// One slow reader's account: the ids it saw and whether the server cut it.
struct Slow {
    ids: Vec<u64>,
    lagged: bool,
    ended: bool,
}

/// Reads [`SLOW_READ_BYTES`] every [`SLOW_READ_EVERY`] until `stop`.
fn read_slowly(mut stream: TcpStream, stop: &AtomicBool) -> Slow {
    stream
        .set_read_timeout(Some(Duration::from_millis(10)))
        .expect("timeout");
    let mut account = Slow {
        ids: Vec::new(),
        lagged: false,
        ended: false,
    };
    let mut buf = Vec::new();
    let mut chunk = [0u8; SLOW_READ_BYTES];
    while !stop.load(Ordering::Relaxed) && !account.ended {
        std::thread::sleep(SLOW_READ_EVERY);
        match stream.read(&mut chunk) {
            Ok(0) => account.ended = true,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(err) if err.kind() == io::ErrorKind::ConnectionReset => account.ended = true,
            Err(_) => {}
        }
        while let Some(at) = buf.windows(2).position(|w| w == b"\n\n") {
            let block = String::from_utf8_lossy(&buf[..at]).into_owned();
            buf.drain(..at + 2);
            for line in block.lines() {
                if let Some(id) = line.strip_prefix("id: ") {
                    account.ids.push(common::Id::parse(id).seq);
                }
                if line == "event: lagged" {
                    account.lagged = true;
                }
            }
        }
    }
    account
}

/// Publishes `payload(room, seq)` round-robin over the steady rooms at `rate` for
/// [`RUN`], on one keep-alive connection; checks each answer is the room's next id.
fn publish_steady(addr: SocketAddr, published: &Published) {
    let mut client = Client::connect(addr);
    let mut last = [0u64; ROOMS];
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < RUN {
        let room = (sent % ROOMS as u64) as usize;
        let seq = last[room] + 1;
        let id = client.publish(&room_name(room), &payload(room, seq, MESSAGE_BYTES));
        assert_eq!(
            id.seq, seq,
            "room {room}: the publish was not given the next id"
        );
        last[room] = seq;
        sent += 1;
        pace(start, sent, PUBLISH_RATE_PER_S);
    }
    for (cell, id) in published.last_ids.iter().zip(last) {
        cell.store(id, Ordering::Release);
    }
    published.done.store(true, Ordering::Release);
}

/// Publishes big messages to [`FLOOD_ROOM`] for [`RUN`].
fn publish_flood(addr: SocketAddr) -> u64 {
    let mut client = Client::connect(addr);
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < RUN {
        client.publish(FLOOD_ROOM, &payload(0, sent, FLOOD_MESSAGE_BYTES));
        sent += 1;
        pace(start, sent, FLOOD_RATE_PER_S);
    }
    sent
}

/// Sleeps until the `done`-th slot of a `rate`-per-second schedule (not at all when late).
fn pace(start: Instant, done: u64, rate: u64) {
    let due = start + Duration::from_micros(done * 1_000_000 / rate);
    if let Some(wait) = due.checked_duration_since(Instant::now()) {
        std::thread::sleep(wait);
    }
}

/// The ways a churning subscriber comes and goes.
#[derive(Debug, Clone, Copy)]
enum Churn {
    /// Subscribe, read the response head, close.
    AfterHead,
    /// Subscribe, read a couple of events, close with more unread (the kernel resets).
    MidStream,
    /// Subscribe, then close with `SO_LINGER` 0: an abrupt reset.
    Reset,
    /// Subscribe to the flood room with a tiny receive buffer and never read: the server
    /// must cut it as a slow consumer (or see it leave after [`NEVER_READ_HOLD`]).
    NeverRead,
    /// Resume from id 1, long gone from history: gap notice and replay, unread, close.
    Resume,
    /// Half a request head, then close.
    HalfRequest,
}

const CHURN_KINDS: [Churn; 6] = [
    Churn::AfterHead,
    Churn::MidStream,
    Churn::Reset,
    Churn::NeverRead,
    Churn::Resume,
    Churn::HalfRequest,
];

/// Sends a subscribe request on `stream` and reads the response head.
fn subscribe_on(stream: TcpStream, room: &str, headers: &str) -> io::Result<Sse> {
    let mut client = Client::from_stream(stream);
    client.send(
        format!(
            "GET /rooms/{room}/events HTTP/1.1\r\nHost: ringcast\r\n\
             Accept: text/event-stream\r\n{headers}\r\n"
        )
        .as_bytes(),
    )?;
    let head = client.read_head()?;
    if head.status != 200 {
        return Err(io::Error::other(format!(
            "subscribe answered {}",
            head.status
        )));
    }
    Ok(Sse { client })
}

/// One churner's visit. A never-reader is handed back to be held.
fn churn_once(addr: SocketAddr, kind: Churn, i: u64) -> io::Result<Option<TcpStream>> {
    let room = room_name(i as usize % ROOMS);
    match kind {
        Churn::AfterHead => drop(subscribe_on(TcpStream::connect(addr)?, &room, "")?),
        Churn::MidStream => {
            let mut sse = subscribe_on(TcpStream::connect(addr)?, &room, "")?;
            let mut events = 0;
            while events < 2 {
                match sse.next_item(Duration::from_secs(2))? {
                    Some(Item::Event(_)) => events += 1,
                    Some(_) => {}
                    None => return Err(io::Error::other("stream ended mid-stream")),
                }
            }
        }
        Churn::Reset => {
            let sse = subscribe_on(TcpStream::connect(addr)?, &room, "")?;
            socket2::SockRef::from(&sse.client.stream).set_linger(Some(Duration::ZERO))?;
        }
        Churn::NeverRead => {
            let socket = socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )?;
            socket.set_recv_buffer_size(NEVER_READ_RECV_BUFFER_BYTES)?;
            socket.set_tcp_mss(NEVER_READ_MSS_BYTES)?;
            socket.connect(&addr.into())?;
            let mut stream: TcpStream = socket.into();
            stream.write_all(
                format!(
                    "GET /rooms/{FLOOD_ROOM}/events HTTP/1.1\r\nHost: ringcast\r\n\
                     Accept: text/event-stream\r\n\r\n"
                )
                .as_bytes(),
            )?;
            return Ok(Some(stream));
        }
        Churn::Resume => drop(subscribe_on(
            TcpStream::connect(addr)?,
            &room,
            "Last-Event-ID: 1\r\n",
        )?),
        Churn::HalfRequest => {
            let mut stream = TcpStream::connect(addr)?;
            stream.write_all(b"GET /rooms/churn0/events HTTP/1.1\r\nHo")?;
        }
    }
    Ok(None)
}

/// What the churn threads did.
#[derive(Debug, Default)]
struct Churned {
    visits: u64,
    never_read: u64,
    /// Failed visits of kind [`Churn::Resume`] (see the assertion on them).
    resume_failures: u64,
    /// Failed visits of every other kind.
    failures: u64,
    first_failures: Vec<String>,
}

/// Churns at this thread's share of [`CHURN_RATE_PER_S`] until `stop`.
fn churn(addr: SocketAddr, thread: usize, stop: &AtomicBool, visits: &AtomicU64) -> Churned {
    let rate = CHURN_RATE_PER_S / CHURN_THREADS as u64;
    let mut account = Churned::default();
    let mut held: VecDeque<(Instant, TcpStream)> = VecDeque::new();
    let start = Instant::now();
    // Each thread goes through every kind, starting at its own.
    let mut i = thread as u64;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        while held
            .front()
            .is_some_and(|(since, _)| now.duration_since(*since) > NEVER_READ_HOLD)
            || held.len() >= NEVER_READ_HELD_MAX
        {
            held.pop_front();
        }
        let kind =
            CHURN_KINDS[((account.visits + thread as u64) % CHURN_KINDS.len() as u64) as usize];
        match churn_once(addr, kind, i) {
            Ok(Some(stream)) => {
                account.never_read += 1;
                held.push_back((now, stream));
            }
            Ok(None) => {}
            Err(err) => {
                match kind {
                    Churn::Resume => account.resume_failures += 1,
                    _ => account.failures += 1,
                }
                if account.first_failures.len() < FAULTS_KEPT {
                    account.first_failures.push(format!("{kind:?}: {err}"));
                }
            }
        }
        account.visits += 1;
        visits.fetch_add(1, Ordering::Relaxed);
        i += CHURN_THREADS as u64;
        pace(start, account.visits, rate);
    }
    account
}

/// One reading of the server's process figures.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    rss_kb: u64,
    fds: u64,
    tickers: u64,
    subscribers: u64,
    connections: u64,
    churned: u64,
}

/// Samples every [`SAMPLE_EVERY`] until `stop`; hands the scraper back.
fn sample(
    mut scraper: Client,
    pid: i32,
    stop: &AtomicBool,
    churned: &AtomicU64,
) -> (Client, Vec<Sample>) {
    let start = Instant::now();
    let mut samples = Vec::new();
    let mut taken = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let figures = held(&scraper.metrics());
        samples.push(Sample {
            at: start.elapsed(),
            rss_kb: rss_kb(pid),
            fds: figures.fds,
            tickers: figures.tickers,
            subscribers: figures.subscribers,
            connections: figures.connections,
            churned: churned.load(Ordering::Relaxed),
        });
        taken += 1;
        let due = start + SAMPLE_EVERY * taken;
        while Instant::now() < due && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    (scraper, samples)
}

/// Asserts every sample after warm-up stays within `allowed` above the first one.
fn assert_flat(samples: &[Sample], what: &str, allowed_min: u64, value: fn(&Sample) -> u64) {
    let after: Vec<&Sample> = samples.iter().filter(|s| s.at >= WARM_UP).collect();
    assert!(
        after.len() >= 5,
        "too few samples after warm-up: {samples:#?}"
    );
    let baseline = value(after[0]);
    let allowed = (baseline * GROWTH_PERCENT_MAX / 100).max(allowed_min);
    let worst = after.iter().map(|s| value(s)).max().unwrap();
    eprintln!(
        "{what}: baseline {baseline} at {:?}, highest after {worst}, allowed {}",
        after[0].at,
        baseline + allowed
    );
    // The bound is only worth something if a leak of one per churned connection breaks it.
    let churned_after = after.last().unwrap().churned - after[0].churned;
    if what != "rss_kb" {
        assert!(
            allowed < churned_after / 2,
            "{what}: bound {allowed} would not catch one leak per churned connection \
             ({churned_after} churned after warm-up)"
        );
    }
    assert!(
        worst <= baseline + allowed,
        "{what} grew from {baseline} to {worst} during churn (allowed {allowed})"
    );
}

#[test]
fn steady_fanout_stays_clean_and_flat_under_subscriber_churn() {
    let test_started = Instant::now();
    let mut server = Server::start(&["--shards", "2", "--history", "64"]);
    let addr = server.addr;
    // Warm up every shard ("listening" comes before each shard has set up its ring;
    // SO_REUSEPORT spreads these over both), then take the empty baseline on one
    // keep-alive scrape connection, counted the same way in every reading.
    for i in 0..64 {
        drop(server.subscribe(&room_name(i % ROOMS), None));
    }
    let mut scraper = server.client();
    let empty = settled(&mut scraper);
    assert_eq!((empty.subscribers, empty.connections), (0, 1), "{empty:?}");

    let steady: Vec<(usize, Sse)> = (0..STEADY_SUBSCRIBERS)
        .map(|i| (i % ROOMS, server.subscribe(&room_name(i % ROOMS), None)))
        .collect();
    assert!(common::wait_until(common::PATIENCE, || scraper
        .metrics()
        .sum("ringcast_subscribers")
        == STEADY_SUBSCRIBERS as u64));
    let with_steady = settled(&mut scraper);
    let slow: Vec<TcpStream> = (0..SLOW_READERS)
        .map(|i| {
            let stream = common::connect_with_recv_buffer(addr, 8 * 1024);
            subscribe_on(stream, &room_name(i % ROOMS), "")
                .expect("slow reader subscribes")
                .client
                .stream
        })
        .collect();

    let published = Arc::new(Published {
        last_ids: Default::default(),
        done: AtomicBool::new(false),
    });
    let stop_churn = Arc::new(AtomicBool::new(false));
    let stop_slow = Arc::new(AtomicBool::new(false));
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let churned = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + RUN + common::PATIENCE;

    let readers: Vec<JoinHandle<(Sse, Steady)>> = steady
        .into_iter()
        .map(|(room, sse)| {
            let published = published.clone();
            std::thread::spawn(move || read_steady(sse, room, &published, deadline))
        })
        .collect();
    let slow_readers: Vec<JoinHandle<Slow>> = slow
        .into_iter()
        .map(|stream| {
            let stop = stop_slow.clone();
            std::thread::spawn(move || read_slowly(stream, &stop))
        })
        .collect();
    let sampler = {
        let (stop, churned, pid) = (stop_sampling.clone(), churned.clone(), server.pid());
        std::thread::spawn(move || sample(scraper, pid, &stop, &churned))
    };
    let churners: Vec<JoinHandle<Churned>> = (0..CHURN_THREADS)
        .map(|thread| {
            let (stop, churned) = (stop_churn.clone(), churned.clone());
            std::thread::spawn(move || churn(addr, thread, &stop, &churned))
        })
        .collect();
    let flood = std::thread::spawn(move || publish_flood(addr));
    let publisher = {
        let published = published.clone();
        std::thread::spawn(move || publish_steady(addr, &published))
    };

    // The churn stops a little before the publishers, so that a visit reading mid-stream
    // always has messages coming; the last samples see the churn wind down.
    std::thread::sleep(RUN - CHURN_STOPS_BEFORE_END);
    stop_churn.store(true, Ordering::Relaxed);
    publisher.join().expect("the steady publisher");
    let flood_sent = flood.join().expect("the flood publisher");
    stop_sampling.store(true, Ordering::Relaxed);
    let (mut scraper, samples) = sampler.join().expect("the sampler");
    let mut churn_total = Churned::default();
    for churner in churners {
        let account = churner.join().expect("a churn thread");
        churn_total.visits += account.visits;
        churn_total.never_read += account.never_read;
        churn_total.failures += account.failures;
        churn_total.resume_failures += account.resume_failures;
        churn_total.first_failures.extend(account.first_failures);
    }
    let last_ids: Vec<u64> = published
        .last_ids
        .iter()
        .map(|id| id.load(Ordering::Relaxed))
        .collect();
    eprintln!(
        "published {last_ids:?} per room and {flood_sent} flood messages; churned {churn_total:?}"
    );
    eprintln!("   t_s  rss_kb   fds  tickers  subscribers  connections  churned");
    for s in &samples {
        eprintln!(
            "{:>6.1} {:>7} {:>5} {:>8} {:>12} {:>12} {:>8}",
            s.at.as_secs_f64(),
            s.rss_kb,
            s.fds,
            s.tickers,
            s.subscribers,
            s.connections,
            s.churned
        );
    }

    // Deliveries to the steady subscribers: all of them, once each, in order.
    let mut steady_streams = Vec::new();
    let mut faulty = Vec::new();
    for reader in readers {
        let (sse, account) = reader.join().expect("a steady reader");
        let want = last_ids[account.room];
        if !account.faults.is_empty() || account.received != want {
            faulty.push(format!(
                "room {}: {} of {want} received; {:?}",
                account.room, account.received, account.faults
            ));
        }
        steady_streams.push(sse);
    }
    assert!(
        faulty.is_empty(),
        "{} of {STEADY_SUBSCRIBERS} steady subscribers saw loss, duplicates or reordering: \
         {:#?}",
        faulty.len(),
        &faulty[..faulty.len().min(10)]
    );
    assert!(
        last_ids
            .iter()
            .all(|&n| n * ROOMS as u64 * 2 >= PUBLISH_RATE_PER_S * RUN.as_secs()),
        "the publisher did not manage half its schedule: {last_ids:?}"
    );

    // The slow readers: what they got is each room's ids in order, with no hole (a cut
    // ends the stream, it does not skip).
    stop_slow.store(true, Ordering::Relaxed);
    for reader in slow_readers {
        let account = reader.join().expect("a slow reader");
        assert!(!account.ids.is_empty(), "a slow reader got nothing");
        assert!(
            account.ids.windows(2).all(|w| w[1] == w[0] + 1) && account.ids[0] == 1,
            "slow reader ids not contiguous from 1: {:?}",
            account.ids
        );
        eprintln!(
            "slow reader: ids 1..={}, lagged {}, ended {}",
            account.ids.last().unwrap(),
            account.lagged,
            account.ended
        );
    }

    // The churn happened, was served, and cut the never-readers as slow consumers.
    assert!(
        churn_total.visits >= CHURNED_MIN,
        "only {} churned connections (want {CHURNED_MIN})",
        churn_total.visits
    );
    assert_eq!(
        churn_total.failures, 0,
        "churned subscribes that failed: {:?}",
        churn_total.first_failures
    );
    // A resume from an id long gone from history is answered with the head, a gap notice
    // and the replay, even when more messages are published before its first write.
    // (Found by this test: the slow-consumer check ran before the unsent head, so such a
    // subscriber got `event: lagged` as its whole response and was closed.)
    assert_eq!(
        churn_total.resume_failures, 0,
        "resumes that got no response head: {:?}",
        churn_total.first_failures
    );
    // (A resume cut before its head, the failure asserted on above, counts as a cut too.)
    let cuts =
        scraper.metrics().sum("ringcast_slow_consumer_cuts_total") - churn_total.resume_failures;
    eprintln!(
        "slow-consumer cuts: {cuts} of {} never-readers",
        churn_total.never_read
    );
    assert!(
        cuts * 2 >= churn_total.never_read,
        "only {cuts} of {} never-reading subscribers were cut as slow consumers",
        churn_total.never_read
    );

    // Flat while churning.
    assert_flat(&samples, "fds", CHURN_OPEN_MAX, |s| s.fds);
    assert_flat(&samples, "tickers", CHURN_OPEN_MAX, |s| s.tickers);
    assert_flat(&samples, "rss_kb", RSS_GROWTH_KB_MIN, |s| s.rss_kb);

    // Back at baseline: with the steady subscribers only, then with nobody.
    expect_back_at(&server, &mut scraper, with_steady, "after churn");
    drop(steady_streams);
    expect_back_at(&server, &mut scraper, empty, "after every subscriber left");

    assert_eq!(
        server.wait_exit(Duration::ZERO),
        None,
        "ringcast exited during the churn:\n{}",
        server.log()
    );
    let log = server.log();
    assert!(!log.contains("panicked"), "ringcast panicked:\n{log}");
    eprintln!("churn test took {:?}", test_started.elapsed());
}
