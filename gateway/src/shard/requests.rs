//! What a routed request does on this shard: subscribe (with resume and token checks),
//! room info, metrics and health answers, and completing a request that waited.

use super::*;

impl Shard {
    /// Refuses a request whose token does not let it through: 401 with a
    /// `WWW-Authenticate: Bearer` challenge, or 403; counted by reason.
    pub(super) fn refuse_token(
        &mut self,
        slot: u32,
        denied: crate::upstream::jwt::TokenError,
    ) -> std::io::Result<()> {
        self.count_refusal(RefusalReason::of_token(denied));
        tracing::debug!(shard = self.index, conn = slot, ?denied, "token refused");
        let refusal = Refusal {
            status: denied.status(),
            reason: denied.text().into(),
            extra: denied.challenge(),
        };
        self.refuse(slot, &refusal)
    }

    /// Refuses with 503, `Retry-After` and the reason, and counts it.
    pub(super) fn refuse_unavailable(
        &mut self,
        slot: u32,
        reason: Rejection,
    ) -> std::io::Result<()> {
        self.count_rejection(reason);
        let refusal = Refusal {
            status: 503,
            reason: reason.text().into(),
            extra: "Retry-After: 1\r\n",
        };
        self.refuse(slot, &refusal)
    }

    /// Hands out what the connection's HTTP machine has — notices and requests to the
    /// application, then its next write — then puts the connection's timer on the
    /// machine's deadline and posts the receive it wants. Called after every input to the
    /// machine (bytes, a completed write, a timer, an answer).
    pub(super) fn drive(&mut self, now: Instant, slot: u32) -> std::io::Result<()> {
        loop {
            let Some(conn) = self.conn(slot) else {
                return Ok(());
            };
            if conn.closing {
                return Ok(());
            }
            let Machine::Http(HttpDriver { http, .. }) = &mut conn.machine else {
                return self.ws_pump(now, slot);
            };
            if let Some(event) = http.poll_event(now) {
                self.on_http_event(now, slot, event)?;
                continue;
            }
            if conn.pipe.writing() {
                break;
            }
            let Some(bytes) = http.poll_transmit() else {
                break;
            };
            let mut frames = std::mem::take(&mut self.scratch);
            frames.clear();
            frames.push(bytes);
            let result = self.start_write(slot, &mut frames);
            self.scratch = frames;
            result?;
        }
        self.sync_timer(slot);
        self.post_recv(slot)
    }

    fn on_http_event(
        &mut self,
        now: Instant,
        slot: u32,
        event: http1_conn::Event,
    ) -> std::io::Result<()> {
        use http1_conn::{Cause, Event};
        match event {
            Event::Request(request) => self.on_request(now, slot, request),
            Event::Continue(head) => {
                if self
                    .conn(slot)
                    .and_then(|conn| conn.http())
                    .is_some_and(Connection::draining)
                {
                    return self.refuse_unavailable(slot, Rejection::Draining);
                }
                // Tokens are the last check before the body is asked for.
                if let Err(denied) = self.check_publish_token(&head) {
                    return self.refuse_token(slot, denied);
                }
                if let Some(http) = self.conn(slot).and_then(|conn| conn.http_mut()) {
                    http.accept_continue();
                }
                Ok(())
            }
            Event::Refused { refusal, cause } => {
                self.count_refusal(match cause {
                    Cause::Request => RefusalReason::of_parse(&refusal),
                    Cause::HeaderTimeout => RefusalReason::HeaderTimeout,
                    Cause::BodyTimeout => RefusalReason::BodyTimeout,
                });
                tracing::debug!(shard = self.index, conn = slot, status = refusal.status, reason = %refusal.reason, "request refused");
                Ok(())
            }
            Event::Linger => self.start_linger(now, slot),
            Event::Close(why) => {
                tracing::trace!(shard = self.index, conn = slot, ?why, "connection closes");
                self.begin_close(slot)
            }
        }
    }

    /// A whole request the machine handed out: what it means, on this shard.
    fn on_request(
        &mut self,
        now: Instant,
        slot: u32,
        request: http1_conn::Request,
    ) -> std::io::Result<()> {
        let auth_on = self.auth.is_some();
        let Some(http) = self.conn(slot).and_then(|conn| conn.http()) else {
            return Ok(());
        };
        if http.draining() {
            return self.refuse_unavailable(slot, Rejection::Draining);
        }
        let close = !http.keep_alive();
        let http1_conn::Request { head, bytes } = request;
        // The authorization call forwards the subscriber's headers: keep its raw head
        // (subscribes only, and only with --auth-url; publishes never pay for this).
        let auth_head =
            (auth_on && matches!(head.route, Route::Events(_))).then(|| bytes[..head.len].to_vec());
        // The body without a copy: the request's bytes are the machine's buffer, handed over.
        let bytes = Bytes::from(bytes);
        let body = bytes.slice(head.len..);
        // Token checks (jwt.rs) come before anything else a route does, on every transport.
        let now_seconds = self.now_unix / 1_000_000_000;
        let jwt = self.shared.config.jwt.clone();
        match head.route {
            Route::Events(room) => {
                if let Some(jwt) = jwt.as_deref() {
                    let token = head.bearer.as_deref().or(head.query_token.as_deref());
                    if let Err(denied) = jwt.check_subscribe(&room, token, now_seconds) {
                        return self.refuse_token(slot, denied);
                    }
                }
                if head.method == Method::Head {
                    // The stream's head, then the end: no subscription (RFC 9110 §9.3.2).
                    if let Some(http) = self.conn(slot).and_then(|conn| conn.http_mut()) {
                        http.respond_and_close(http1::sse_head_then_close());
                    }
                    return self.drive(now, slot);
                }
                match auth_head {
                    Some(raw) => self.authorize(now, slot, room, head.last_event_id, raw),
                    None => self.subscribe(now, slot, &room, head.last_event_id),
                }
            }
            Route::Messages(room) => {
                if let Some(jwt) = jwt.as_deref() {
                    match jwt.publish_grant(head.bearer.as_deref(), now_seconds) {
                        Err(denied) => return self.refuse_token(slot, denied),
                        Ok(Some(grant)) if !grant.allows(&room) => {
                            return self
                                .refuse_token(slot, crate::upstream::jwt::TokenError::Forbidden)
                        }
                        Ok(_) => {}
                    }
                }
                self.publish_one(now, slot, room, body, head.idempotency_key)
            }
            Route::Publish => {
                let grant = match jwt
                    .as_deref()
                    .map(|jwt| jwt.publish_grant(head.bearer.as_deref(), now_seconds))
                {
                    Some(Err(denied)) => return self.refuse_token(slot, denied),
                    Some(Ok(grant)) => grant,
                    None => None,
                };
                self.publish_batch(now, slot, &body, grant.as_ref())
            }
            Route::Room(room) => self.room_info(slot, room),
            Route::Metrics => {
                let format = head.metrics_format;
                let now_unix = self.clock.now_unix_nanos(Instant::now());
                let text = crate::metrics::process::render(&self.shared, format, now_unix);
                self.respond(
                    slot,
                    http1::response(
                        200,
                        crate::http::negotiate::metrics_content_type(format),
                        "",
                        text.as_bytes(),
                        close,
                    ),
                )
            }
            Route::Healthz => {
                self.respond(slot, http1::response(200, "text/plain", "", b"ok\n", close))
            }
            Route::Demo if self.shared.config.demo => self.respond(
                slot,
                http1::response(
                    200,
                    "text/html; charset=utf-8",
                    "Cache-Control: no-cache\r\n",
                    http1::DEMO_HTML.as_bytes(),
                    close,
                ),
            ),
            Route::Demo => {
                self.count_refusal(RefusalReason::NotFound);
                self.refuse(slot, &http1::Refusal::not_found())
            }
            Route::WsEcho if self.shared.config.ws.echo => {
                self.ws_open_echo(now, slot, &bytes[..head.len])
            }
            Route::RoomWs(ref room) => {
                let room = room.clone();
                self.ws_open_room(now, slot, room, &head, &bytes[..head.len])
            }
            Route::Ws => self.ws_open_mux(now, slot, &head, &bytes[..head.len]),
            Route::WsEcho => {
                self.count_refusal(RefusalReason::NotFound);
                self.refuse(slot, &http1::Refusal::not_found())
            }
            Route::Readyz => {
                if self.shared.stop.load(Ordering::Relaxed) {
                    self.respond(
                        slot,
                        http1::response(
                            503,
                            "text/plain",
                            "Retry-After: 1\r\n",
                            b"draining\n",
                            close,
                        ),
                    )
                } else {
                    self.respond(
                        slot,
                        match self.cluster.as_ref().and_then(|c| c.unready_reason(now)) {
                            Some(reason) => http1::response(
                                503,
                                "text/plain",
                                "Retry-After: 1\r\n",
                                format!("{reason}\n").as_bytes(),
                                close,
                            ),
                            None => http1::response(200, "text/plain", "", b"ready\n", close),
                        },
                    )
                }
            }
        }
    }

    /// The token check a publish gets (jwt.rs), for a head whose body is not read yet.
    pub(super) fn check_publish_token(
        &self,
        head: &http1::Head,
    ) -> Result<(), crate::upstream::jwt::TokenError> {
        let Some(jwt) = self.shared.config.jwt.as_deref() else {
            return Ok(());
        };
        let now_seconds = self.now_unix / 1_000_000_000;
        match (
            &head.route,
            jwt.publish_grant(head.bearer.as_deref(), now_seconds)?,
        ) {
            (Route::Messages(room), Some(grant)) if !grant.allows(room) => {
                Err(crate::upstream::jwt::TokenError::Forbidden)
            }
            _ => Ok(()),
        }
    }

    pub(super) fn subscribe(
        &mut self,
        now: Instant,
        slot: u32,
        room: &str,
        last_event_id: Option<ResumeId>,
    ) -> std::io::Result<()> {
        if self.stopping() {
            return self.refuse_unavailable(slot, Rejection::Draining);
        }
        if self.backlogged() {
            return self.refuse_unavailable(slot, Rejection::PendingWriteBytes);
        }
        if self.cluster.is_some() {
            return self.cluster_subscribe(now, slot, room, last_event_id);
        }
        let (format, head) = self.stream_head(slot, room);
        let sub = self.subs.insert(self.key(slot));
        let admitted = self
            .fanout
            .handle_subscribe_in(now, sub, room, last_event_id, format, head);
        self.admitted(slot, sub, admitted)
    }

    /// Adds a cluster subscriber to the fan-out: `replay` are frames from Redis to write
    /// first, then history from where `start` says (see
    /// `Fanout::handle_subscribe_replayed`).
    pub(super) fn admit_replayed(
        &mut self,
        now: Instant,
        slot: u32,
        room: &str,
        start: Start,
        replay: Vec<ringcast_core::frame::Frame>,
    ) -> std::io::Result<()> {
        let (format, head) = self.stream_head(slot, room);
        let sub = self.subs.insert(self.key(slot));
        let admitted = self
            .fanout
            .handle_subscribe_replayed_in(now, sub, room, start, format, head, replay);
        self.admitted(slot, sub, admitted)
    }

    /// The fan-out's answer to subscription `sub` of the connection in `slot`.
    pub(super) fn admitted(
        &mut self,
        slot: u32,
        sub: ConnId,
        admitted: Result<(), FanoutError>,
    ) -> std::io::Result<()> {
        match admitted {
            Ok(()) => {
                if let Some(driver) = self.http_driver(slot) {
                    debug_assert!(driver.sub.is_none(), "one subscription per request");
                    driver.sub = Some(sub);
                }
                if self.ws_admitted(self.now, slot)? {
                    return Ok(());
                }
                if let Some(conn) = self.conn(slot) {
                    if let Some(http) = conn.http_mut() {
                        http.stream();
                    }
                    conn.recv = Vec::new();
                }
                self.drive(self.now, slot)
            }
            Err(err) => {
                self.subs.remove(sub);
                let reason = match err {
                    FanoutError::RoomsFull => Rejection::RoomLimit,
                    FanoutError::SubscribersFull
                    | FanoutError::TimersFull
                    | FanoutError::AlreadySubscribed => Rejection::SubscriberLimit,
                };
                self.refuse_unavailable(slot, reason)
            }
        }
    }

    pub(super) fn room_info(&mut self, slot: u32, room: String) -> std::io::Result<()> {
        let room: Arc<str> = Arc::from(room);
        let info = self.fanout.room_info(&room);
        let (subscribers, last_id, history_len) =
            info.map_or((0, None, 0), |i| (i.subscribers, i.last_id, i.history_len));
        let reply = self.reply_to(slot, 0);
        let outstanding = self.sequencer.query_room(&room, reply);
        if let Some(driver) = self.http_driver(slot) {
            driver.pending = Some(Box::new(Pending::RoomInfo {
                room,
                subscribers,
                last_id,
                history_len,
            }));
            driver.outstanding = u32::try_from(outstanding).expect("at most 1024 shards");
        }
        if outstanding == 0 {
            return self.complete_pending(slot);
        }
        Ok(())
    }

    pub(super) fn complete_pending(&mut self, slot: u32) -> std::io::Result<()> {
        let Some(driver) = self.http_driver(slot) else {
            return Ok(());
        };
        let close = !driver.http.keep_alive();
        let Some(pending) = driver.pending.take() else {
            return Ok(());
        };
        let response = match *pending {
            Pending::Publish { room, result } => {
                return self.finish_publish(
                    slot,
                    &room,
                    result.unwrap_or(Err(PublishRefusal::NoAnswer)),
                );
            }
            Pending::Batch { results } => {
                let items: Vec<serde_json::Value> = results
                    .into_iter()
                    .map(|line| match line {
                        BatchLine::Done(Ok(id)) => serde_json::json!({ "id": id.to_string() }),
                        BatchLine::Done(Err(error)) => serde_json::json!({ "error": error }),
                        BatchLine::Waiting => serde_json::json!({ "error": "no answer" }),
                    })
                    .collect();
                let body = serde_json::json!({ "results": items }).to_string();
                http1::response(200, "application/json", "", body.as_bytes(), close)
            }
            Pending::RoomInfo {
                room,
                subscribers,
                last_id,
                history_len,
            } => {
                let last_id = last_id.map(|id| id.to_string());
                let body = serde_json::json!({ "room": &*room, "subscribers": subscribers, "last_id": last_id, "history_len": history_len }).to_string();
                http1::response(200, "application/json", "", body.as_bytes(), close)
            }
        };
        self.respond(slot, response)
    }
}
