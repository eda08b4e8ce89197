//! The follower thread: one per node, it reads (`XREAD BLOCK`) the streams of every room
//! this node follows, primes new replicas from the stream's tail, and hands each entry to
//! the shards that hold the room.

use super::*;

/// The follower: one thread, one connection, every followed room.
pub(super) struct Follower {
    hub: Arc<Hub>,
    requests: mpsc::Receiver<Follow>,
    connection: Option<redis::Connection>,
    /// Followed rooms and the last stream id read of each.
    rooms: Vec<(Arc<str>, String)>,
    /// Index in `rooms`, and the shards that hold the room (the only ones sent its frames).
    index: HashMap<Arc<str>, (usize, Vec<usize>)>,
    /// Rooms to prime and the shards that asked.
    pending: Vec<(Arc<str>, Vec<usize>)>,
    backoff: Duration,
}

impl Follower {
    pub(super) fn new(hub: Arc<Hub>, requests: mpsc::Receiver<Follow>) -> Self {
        Self {
            hub,
            requests,
            connection: None,
            rooms: Vec::new(),
            index: HashMap::new(),
            pending: Vec::new(),
            backoff: RECONNECT_MIN,
        }
    }

    pub(super) fn run(mut self) {
        loop {
            if self.connection.is_some() {
                self.take_requests(self.rooms.is_empty() && self.pending.is_empty());
            }
            if self.connection.is_none() {
                match self.hub.connect() {
                    Ok(c) => {
                        if !self.hub.up.swap(true, Ordering::Relaxed) {
                            tracing::info!(url = %self.hub.config.url, "redis reachable");
                        }
                        self.connection = Some(c);
                        self.backoff = RECONNECT_MIN;
                    }
                    Err(err) => {
                        self.take_requests(false);
                        self.failed("connect", &err);
                        std::thread::sleep(self.backoff);
                        self.backoff = (self.backoff * 2).min(RECONNECT_MAX);
                        continue;
                    }
                }
            }
            if let Err(err) = self.prime() {
                self.failed("prime", &err);
                continue;
            }
            if self.rooms.is_empty() {
                // Nothing to read: a PING per round keeps `up` (and /readyz) true to fact.
                if let Some(connection) = self.connection.as_mut() {
                    if let Err(err) = redis::cmd("PING").query::<Value>(connection) {
                        self.failed("PING", &err);
                    }
                }
                continue;
            }
            if let Err(err) = self.read() {
                self.failed("XREAD", &err);
            }
        }
    }

    fn failed(&mut self, what: &str, err: &redis::RedisError) {
        if interrupted(err) {
            // A signal (SIGSTOP/SIGCONT, a debugger) cut a read short: the reply may be half
            // read, so reconnect and read again from the last id, but Redis is not down.
            tracing::debug!(%err, what, "redis call interrupted; reconnecting");
            self.connection = None;
            return;
        }
        self.hub.error(what, err);
        if self.hub.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(%err, what, "redis unreachable");
        }
        self.connection = None;
        for (room, shards) in std::mem::take(&mut self.pending) {
            self.send_to(&shards, || Event::PrimeFailed { room: room.clone() });
        }
        self.wake_all();
    }

    /// Takes follow requests; waits for one (up to BLOCK_MS) when `wait`.
    fn take_requests(&mut self, wait: bool) {
        if wait {
            match self.requests.recv_timeout(Duration::from_millis(BLOCK_MS)) {
                Ok(room) => self.request(room),
                Err(mpsc::RecvTimeoutError::Timeout) => return,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(BLOCK_MS));
                    return;
                }
            }
        }
        while let Ok(room) = self.requests.try_recv() {
            self.request(room);
        }
    }

    fn request(&mut self, request: Follow) {
        match request {
            // Followed already or not, the shard's replica is filled from the tail: it
            // holds nothing of the room (it never did, or it freed it).
            Follow::Start { room, shard } => {
                match self
                    .pending
                    .iter_mut()
                    .find(|(pending, _)| *pending == room)
                {
                    Some((_, shards)) if !shards.contains(&shard) => shards.push(shard),
                    Some(_) => {}
                    None => self.pending.push((room, vec![shard])),
                }
            }
            Follow::Stop { room, shard } => self.stop(&room, shard),
        }
    }

    /// `shard` no longer holds `room`; the room is unfollowed when no shard does.
    fn stop(&mut self, room: &Arc<str>, shard: usize) {
        let Some((position, holders)) = self.index.get_mut(room) else {
            return;
        };
        holders.retain(|&holder| holder != shard);
        if !holders.is_empty() {
            return;
        }
        let position = *position;
        self.index.remove(room);
        self.rooms.swap_remove(position);
        if let Some((moved, _)) = self.rooms.get(position) {
            if let Some(entry) = self.index.get_mut(moved) {
                entry.0 = position;
            }
        }
        self.hub
            .rooms_followed
            .store(self.rooms.len() as u64, Ordering::Relaxed);
    }

    /// Fills every shard's replica of each newly followed room from the stream's tail.
    fn prime(&mut self) -> redis::RedisResult<()> {
        while let Some((room, shards)) = self.pending.last().cloned() {
            let Some(connection) = self.connection.as_mut() else {
                return Ok(());
            };
            let tail: Value = redis::cmd("XREVRANGE")
                .arg(stream_key(&room))
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(self.hub.config.history)
                .query(connection)?;
            self.pending.pop();
            let mut entries: Vec<_> = list(&tail)
                .unwrap_or(&[])
                .iter()
                .filter_map(entry)
                .collect();
            entries.reverse();
            let first_id = entries.first().map(|(id, _, _)| *id);
            let last = entries
                .last()
                .map_or_else(|| "0-0".to_owned(), |(id, _, _)| stream_id(*id));
            self.hub
                .entries_read
                .fetch_add(entries.len() as u64, Ordering::Relaxed);
            let frames: Vec<_> = entries
                .into_iter()
                .map(|(id, data, stamp)| {
                    let frame = Frame::message(&room, EventId::from_stream_packed(id), &data);
                    (id, frame, stamp)
                })
                .collect();
            // Entries appended since the last XREAD are in the tail too: the next XREAD
            // hands them again, and a replica ignores ids it holds.
            self.send_to(&shards, || Event::Primed {
                room: room.clone(),
                first_id,
                frames: frames.clone(),
            });
            if let Some((_, holders)) = self.index.get_mut(&room) {
                for shard in shards {
                    if !holders.contains(&shard) {
                        holders.push(shard);
                    }
                }
                self.wake_all();
                continue;
            }
            self.index.insert(room.clone(), (self.rooms.len(), shards));
            self.rooms.push((room, last));
            self.hub
                .rooms_followed
                .store(self.rooms.len() as u64, Ordering::Relaxed);
            self.wake_all();
        }
        Ok(())
    }

    /// One round of XREAD over every followed room (blocking when they fit in one call).
    fn read(&mut self) -> redis::RedisResult<()> {
        let batches = self.rooms.len().div_ceil(STREAMS_PER_READ);
        let mut read = 0;
        for batch in 0..batches {
            let range =
                batch * STREAMS_PER_READ..((batch + 1) * STREAMS_PER_READ).min(self.rooms.len());
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT").arg(READ_COUNT);
            if batches == 1 {
                cmd.arg("BLOCK").arg(BLOCK_MS);
            }
            cmd.arg("STREAMS");
            for (room, _) in &self.rooms[range.clone()] {
                cmd.arg(stream_key(room));
            }
            for (_, last) in &self.rooms[range] {
                cmd.arg(last.as_str());
            }
            let Some(connection) = self.connection.as_mut() else {
                return Ok(());
            };
            let reply: Value = cmd.query(connection)?;
            self.hub.up.store(true, Ordering::Relaxed);
            for (key, entries) in streams(&reply) {
                let Some(room) = room_of_key(key) else {
                    continue;
                };
                let Some((position, _)) = self.index.get(room) else {
                    continue;
                };
                let position = *position;
                let room = self.rooms[position].0.clone();
                // A stream keeps at least its cap (MAXLEN ~, the publishing nodes' history)
                // of entries, so entries this node never saw can only have been trimmed when
                // the reply holds at least that many: only then is it worth asking Redis.
                if entries.len() >= self.hub.config.history.min(TRIM_CHECK_ENTRIES) {
                    if let Some(connection) = self.connection.as_mut() {
                        let seen = sse_id(&self.rooms[position].1).unwrap_or(0);
                        let deleted = deleted_through(connection, &stream_key(&room))?;
                        if let Some(deleted) = deleted.filter(|&deleted| deleted > seen) {
                            self.deliver_gap(&room, seen + 1, deleted);
                            self.rooms[position].1 = stream_id(deleted);
                        }
                    }
                }
                for value in entries {
                    let Some((id, data, stamp)) = entry(value) else {
                        continue;
                    };
                    self.deliver(&room, id, &data, stamp);
                    self.rooms[position].1 = stream_id(id);
                    read += 1;
                }
            }
        }
        if read > 0 {
            self.wake_all();
        } else if batches > 1 {
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// The follower fell behind the stream's length cap: entries `from..=to` were trimmed
    /// before this node read them. The live subscribers get the same gap notice a resume
    /// would, in order, as a history entry carrying id `to` (a resume from before it
    /// replays the notice too).
    fn deliver_gap(&self, room: &Arc<str>, from: u64, to: u64) {
        tracing::warn!(%room, from, to, "fell behind the stream cap: entries trimmed unread");
        self.hub.follow_gaps.fetch_add(1, Ordering::Relaxed);
        let frame = Frame::gap(
            room,
            EventId::from_stream_packed(from),
            EventId::from_stream_packed(to),
        );
        self.send_holders(room, || Event::Frame {
            room: room.clone(),
            id: to,
            frame: frame.clone(),
            stamp_unix_nanos: 0,
        });
    }

    fn deliver(&self, room: &Arc<str>, id: u64, data: &[u8], stamp: u64) {
        let frame = Frame::message(room, EventId::from_stream_packed(id), data);
        self.hub.entries_read.fetch_add(1, Ordering::Relaxed);
        self.send_holders(room, || Event::Frame {
            room: room.clone(),
            id,
            frame: frame.clone(),
            stamp_unix_nanos: stamp,
        });
    }

    /// Hands an event to every shard that holds `room`.
    fn send_holders(&self, room: &Arc<str>, event: impl Fn() -> Event) {
        if let Some((_, holders)) = self.index.get(room) {
            self.send_to(holders, event);
        }
    }

    /// Hands an event to each of `shards`, waiting (never dropping) while a queue is full.
    fn send_to(&self, shards: &[usize], event: impl Fn() -> Event) {
        for &shard in shards {
            let queue = &self.hub.mail[shard];
            let mut event = event();
            loop {
                match queue.push(event) {
                    Ok(()) => break,
                    Err(back) => {
                        event = back;
                        self.hub.wake(shard);
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        }
    }

    fn wake_all(&self) {
        for shard in 0..self.hub.mail.len() {
            self.hub.wake(shard);
        }
    }
}
