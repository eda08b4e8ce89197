//! Glue to the upstreams: the subscribe authorization callback and the Redis cluster
//! (publish through Redis, follow rooms, resume from a stream), each answering later by
//! mail to a connection identified by its `ConnKey`.

use super::*;

/// Where a cluster-mode subscriber starts ([`Shard::cluster_start`]).
pub(super) enum ClusterStart {
    /// Redis is asked first (a replay or a check of an id above the replica's head); its
    /// answer joins the subscriber.
    Replaying,
    /// At once, from here.
    At(Start),
}

impl Shard {
    /// A subscribe that `--auth-url` must approve first: decided at once (breaker open,
    /// queue full) or the connection waits for [`Self::drain_auth`].
    pub(super) fn authorize(
        &mut self,
        now: Instant,
        slot: u32,
        room: String,
        last_event_id: Option<ResumeId>,
        head: Vec<u8>,
    ) -> std::io::Result<()> {
        let (Some(conn), false) = (
            self.conns.get(slot as usize).and_then(|c| c.as_deref()),
            self.stopping(),
        ) else {
            // Draining (or gone): the plain path refuses.
            return self.subscribe(now, slot, &room, last_event_id);
        };
        let ticket = crate::upstream::auth::Ticket {
            conn: ConnKey {
                slot,
                serial: conn.serial,
            },
            room,
            last_event_id,
        };
        let client = conn.pipe.raw_fd().and_then(crate::uring::sys::peer_addr);
        let Some(auth) = self.auth.as_mut() else {
            return self.subscribe(now, slot, &ticket.room, last_event_id);
        };
        match auth.begin(now, ticket, client, head) {
            crate::upstream::auth::Begin::Waiting => Ok(()),
            crate::upstream::auth::Begin::Decided(ticket, decision) => {
                self.finish_authorize(now, ticket, decision)
            }
        }
    }

    /// Resumes subscribes whose authorization call finished; replies for connections that
    /// closed meanwhile (serial changed, or no longer waiting) are dropped.
    pub(super) fn drain_auth(&mut self, now: Instant) {
        let Some(auth) = self.auth.as_mut() else {
            return;
        };
        // Bounded: a shard has at most SHARD_IN_FLIGHT_MAX calls out.
        let mut decided = Vec::new();
        while let Some(done) = auth.poll_decision(now) {
            decided.push(done);
        }
        auth.publish_figures(now);
        for (ticket, decision) in decided {
            if !self.is_waiting(ticket.conn) {
                continue;
            }
            if let Err(err) = self.finish_authorize(now, ticket, decision) {
                tracing::warn!(shard = self.index, %err, "resuming an authorized subscribe failed");
            }
        }
    }

    pub(super) fn finish_authorize(
        &mut self,
        now: Instant,
        ticket: crate::upstream::auth::Ticket,
        decision: crate::upstream::auth::Decision,
    ) -> std::io::Result<()> {
        if self
            .conn_by_key(ticket.conn)
            .is_some_and(|c| c.is_websocket())
        {
            // A multiplexed WebSocket's subscribe by message (ws_rooms.rs).
            let slot = ticket.conn.slot;
            self.ws_authorized(now, ticket, decision);
            return self.ws_pump(now, slot);
        }
        match decision.response() {
            None => self.subscribe(now, ticket.conn.slot, &ticket.room, ticket.last_event_id),
            Some(response) => {
                tracing::debug!(shard = self.index, conn = ticket.conn.slot, room = %ticket.room, ?decision, "subscribe not authorized");
                if matches!(
                    decision,
                    crate::upstream::auth::Decision::Refuse { status: 503, .. }
                ) {
                    self.count_rejection(Rejection::AuthUnavailable);
                }
                self.refuse_with(ticket.conn.slot, response)
            }
        }
    }

    pub(super) fn cluster_ticket(&self, slot: u32, index: u32) -> crate::upstream::cluster::Ticket {
        crate::upstream::cluster::Ticket {
            conn: self.key(slot),
            index,
        }
    }

    /// Hands one message to a Redis publisher (`XADD`); its answer comes as
    /// `Event::Published`. `Err` when refused at once.
    pub(super) fn cluster_append(
        &mut self,
        now: Instant,
        ticket: crate::upstream::cluster::Ticket,
        room: Arc<str>,
        data: Bytes,
        idempotency_key: Option<String>,
    ) -> Result<(), PublishRefusal> {
        if self.stopping() {
            self.count_rejection(Rejection::Draining);
            return Err(Rejection::Draining.into());
        }
        let stamp = if self.shared.config.latency_metrics {
            self.clock.now_unix_nanos(Instant::now())
        } else {
            0
        };
        let Some(cluster) = self.cluster.as_mut() else {
            return Err(PublishRefusal::ClusterOff);
        };
        let idempotency = idempotency_key.map(|key| crate::upstream::cluster::IdempotencyKey {
            key: key.into_boxed_str(),
            window: self.config.idempotency_window,
        });
        Ok(cluster.begin_publish(now, ticket, room, data, stamp, idempotency)?)
    }

    pub(super) fn cluster_publish(
        &mut self,
        now: Instant,
        slot: u32,
        room: Arc<str>,
        data: Bytes,
        idempotency_key: Option<String>,
    ) -> std::io::Result<()> {
        let ticket = self.cluster_ticket(slot, 0);
        if let Err(reason) = self.cluster_append(now, ticket, room.clone(), data, idempotency_key) {
            return self.finish_publish(slot, &room, Err(reason));
        }
        if let Some(driver) = self.http_driver(slot) {
            driver.outstanding = 1;
            driver.pending = Some(Box::new(Pending::Publish { room, result: None }));
        }
        Ok(())
    }

    pub(super) fn refuse_redis(&mut self, slot: u32) -> std::io::Result<()> {
        let refusal = Refusal {
            status: 503,
            reason: "redis unreachable".into(),
            extra: "Retry-After: 1\r\n",
        };
        self.refuse(slot, &refusal)
    }

    /// A subscribe in cluster mode: waits until the room follows its stream on this node,
    /// and for a replay from Redis when `Last-Event-ID` is older than the replica.
    pub(super) fn cluster_subscribe(
        &mut self,
        now: Instant,
        slot: u32,
        room: &str,
        last_event_id: Option<ResumeId>,
    ) -> std::io::Result<()> {
        let conn_key = self.key(slot);
        self.release_freed_rooms();
        if !self.fanout.room_available(room) {
            // Refused before the room is followed: followed rooms count against the cap.
            return self.refuse_unavailable(slot, Rejection::RoomLimit);
        }
        let Some(cluster) = self.cluster.as_mut() else {
            return Ok(());
        };
        if !cluster.is_primed(room) {
            let waiter = crate::upstream::cluster::Waiter {
                conn: conn_key,
                last_event_id,
            };
            if !cluster.wait_primed(room, waiter) {
                return self.refuse_redis(slot);
            }
            return Ok(());
        }
        match self.cluster_start(conn_key, room, last_event_id) {
            ClusterStart::Replaying => Ok(()),
            ClusterStart::At(start) => self.admit_replayed(now, slot, room, start, Vec::new()),
        }
    }

    /// Where a subscriber `conn` of `room`, a room this node follows (cluster mode), starts
    /// for its resume id (SSE and WebSocket alike): older than the replica is replayed from
    /// Redis; above the replica's head, Redis says whether it is a real id this node has not
    /// read yet, or cannot be placed. [`ClusterStart::Replaying`]: a replay was begun and
    /// its answer joins the subscriber.
    pub(super) fn cluster_start(
        &mut self,
        conn: ConnKey,
        room: &str,
        since: Option<ResumeId>,
    ) -> ClusterStart {
        let mut start = self.fanout.place(room, since);
        if let Start::After(after) = start {
            let beyond_head = after > self.fanout.head_id(room).unwrap_or(0);
            let check = self.fanout.resume_check(room, after);
            let gap = matches!(
                check,
                Some((ringcast_core::history::ResumeFrom::Gap { .. }, _))
            );
            if gap || beyond_head {
                let ticket = crate::upstream::cluster::ReplayTicket {
                    conn,
                    room: Arc::from(room),
                    after,
                    before: check.map_or(after.saturating_add(1), |(_, first)| first),
                    beyond_head,
                };
                if self
                    .cluster
                    .as_mut()
                    .is_some_and(|cluster| cluster.begin_replay(ticket))
                {
                    return ClusterStart::Replaying;
                }
                if beyond_head {
                    // Redis cannot tell now: a reset rather than a cursor no message reaches.
                    start = Start::Reset(ResetReason::BeyondHead);
                }
            }
        }
        ClusterStart::At(start)
    }

    /// Takes what the cluster threads sent: publish outcomes, followed frames, rooms primed.
    pub(super) fn drain_cluster(&mut self, now: Instant) {
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let mut events = Vec::new();
        while events.len() < MAIL_PER_TURN {
            match cluster.poll_event(now) {
                Some(event) => events.push(event),
                None => break,
            }
        }
        cluster.publish_figures(now);
        if events.len() == MAIL_PER_TURN {
            // More is waiting: make sure the next turn does not sleep.
            self.shared.mesh.wake(self.index);
        }
        for event in events {
            if let Err(err) = self.on_cluster_event(now, event) {
                tracing::warn!(shard = self.index, %err, "cluster event handling failed");
            }
        }
    }

    pub(super) fn on_cluster_event(
        &mut self,
        now: Instant,
        event: crate::upstream::cluster::Event,
    ) -> std::io::Result<()> {
        use crate::upstream::cluster::Event;
        match event {
            Event::Frame {
                room,
                id,
                frame,
                stamp_unix_nanos,
            } => {
                // Sent before the follower took this shard's release of the room: the
                // replica is gone, and a new one starts from a fresh prime.
                if self.cluster.as_ref().is_some_and(|c| c.is_primed(&room)) {
                    self.fanout
                        .handle_frame_stamped(now, stamp_unix_nanos, &room, id, frame);
                }
            }
            Event::Primed {
                room,
                first_id,
                frames,
            } => {
                for (id, frame, stamp) in frames {
                    self.fanout
                        .handle_frame_stamped(now, stamp, &room, id, frame);
                }
                // Created even for an empty stream, so that the replica is freed (and the
                // room unfollowed) when idle, whether or not a waiter is admitted.
                self.fanout
                    .handle_history_start(&room, first_id.unwrap_or(1));
                // Making place for the room may have evicted another.
                self.release_freed_rooms();
                let waiters = self
                    .cluster
                    .as_mut()
                    .map(|c| c.take_waiters(&room))
                    .unwrap_or_default();
                for waiter in waiters {
                    if self
                        .conn_by_key(waiter.conn)
                        .is_some_and(|c| c.is_websocket())
                    {
                        // A multiplexed WebSocket's subscribe by message (ws_rooms.rs).
                        let slot = waiter.conn.slot;
                        self.ws_primed(waiter, &room, true);
                        self.ws_pump(now, slot)?;
                    } else if self.is_waiting(waiter.conn) {
                        self.cluster_subscribe(now, waiter.conn.slot, &room, waiter.last_event_id)?;
                    }
                }
            }
            Event::PrimeFailed { room } => {
                let waiters = self
                    .cluster
                    .as_mut()
                    .map(|c| c.take_waiters(&room))
                    .unwrap_or_default();
                for waiter in waiters {
                    if self
                        .conn_by_key(waiter.conn)
                        .is_some_and(|c| c.is_websocket())
                    {
                        let slot = waiter.conn.slot;
                        self.ws_primed(waiter, &room, false);
                        self.ws_pump(now, slot)?;
                    } else if self.is_waiting(waiter.conn) {
                        self.refuse_redis(waiter.conn.slot)?;
                    }
                }
            }
            Event::Published {
                ticket,
                result,
                replayed,
            } => {
                if replayed {
                    self.shared.figures[self.index]
                        .idempotency
                        .add_cluster_replay();
                }
                let reply = ReplyTo {
                    shard: self.index as u32,
                    conn: ticket.conn,
                    index: ticket.index,
                };
                let result = result
                    .map(EventId::from_stream_packed)
                    .map_err(PublishRefusal::Redis);
                return self.on_mail(now, Mail::Sequenced { reply, result });
            }
            Event::Replayed { ticket, replay } => {
                let websocket = self
                    .conn_by_key(ticket.conn)
                    .is_some_and(|c| c.is_websocket());
                if !websocket && !self.is_waiting(ticket.conn) {
                    return Ok(());
                }
                let (start, frames) = match replay {
                    Some(replay) if replay.beyond_head => {
                        (Start::Reset(ResetReason::BeyondHead), Vec::new())
                    }
                    Some(replay) => (Start::After(replay.after), replay.frames),
                    // Redis could not say whether an id above the replica exists.
                    None if ticket.beyond_head => {
                        (Start::Reset(ResetReason::BeyondHead), Vec::new())
                    }
                    // Redis could not say: the replica's own gap notice tells the client.
                    None => (Start::After(ticket.after), Vec::new()),
                };
                if websocket {
                    // A multiplexed WebSocket's subscribe by message (ws_rooms.rs).
                    self.ws_replayed(ticket.conn, &ticket.room, start, frames);
                    return self.ws_pump(now, ticket.conn.slot);
                }
                return self.admit_replayed(now, ticket.conn.slot, &ticket.room, start, frames);
            }
        }
        Ok(())
    }

    pub(super) fn is_waiting(&self, key: ConnKey) -> bool {
        self.conns
            .get(key.slot as usize)
            .and_then(|c| c.as_deref())
            .is_some_and(|c| {
                // A request waiting for its answer, or a WebSocket for its subscribes.
                c.serial == key.serial
                    && (c.is_websocket() || c.http().is_some_and(Connection::awaits_answer))
            })
    }
}
