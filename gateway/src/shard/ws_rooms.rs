//! Room WebSockets (issue 16, docs/PROTOCOL.md): `GET /rooms/{room}/ws` joins the room
//! with the SSE route's checks — the token (`Authorization: Bearer` or `?token=`) for
//! private rooms, the auth callback, admission — and resumes with `?last_event_id=`; the
//! upgrade happens only once the fan-out admitted it, so every refusal is an HTTP answer.
//! Afterwards the fan-out writes the room's frames in their WebSocket form, and text
//! messages are commands: publish (acked with the id, or an error object), with the HTTP
//! route's token and idempotency rules.
//!
//! Owns: the upgrade waiting for auth and admission, command handling, publishes in
//! flight. Must not touch: frames and the machine (ws.rs), the fan-out's own state.

use super::upstreams::ClusterStart;
use super::ws::subscribe_rate::WS_SUBSCRIBES_PER_SEC;
use super::ws::{WsRoom, WsRoute, WsUpgrade};
use super::*;
use crate::conn::ws::protocol::{
    encode_ack, encode_error, encode_rate_error, encode_subscribed, encode_unsubscribed,
};
use crate::conn::ws::{parse_command, Command, Ref};
use ringcast_core::frame::Format;

/// Publishes one WebSocket connection may have waiting for their owner shard at once;
/// past it a publish gets 429. Bounds the acks a connection may be owed.
pub(super) const WS_PUBLISHES_IN_FLIGHT_MAX: usize = 16;

/// Rooms one multiplexed WebSocket may follow at once; past it a subscribe gets 429.
/// Bounds what one connection holds in the fan-out (a subscriber and a ticker per room).
pub(super) const WS_ROOMS_PER_CONN_MAX: usize = 64;

/// A publish waiting for its owner shard: what its ack or error carries.
#[derive(Debug)]
pub(super) struct PublishWait {
    reference: Option<Ref>,
    room: Arc<str>,
}

impl Shard {
    /// A request on `/rooms/{room}/ws`: the SSE route's token check (private rooms), the
    /// handshake, then the subscribe as an SSE request's (through the auth callback when
    /// set); the upgrade happens when the fan-out admits it ([`Self::ws_admitted`]).
    /// `raw_head`: the request head's bytes.
    pub(super) fn ws_open_room(
        &mut self,
        now: Instant,
        slot: u32,
        room: String,
        head: &http1::Head,
        raw_head: &[u8],
    ) -> std::io::Result<()> {
        // Browsers cannot set headers on a WebSocket: the query's token counts too.
        let token = head.bearer.clone().or(head.query_token.clone());
        if let Some(jwt) = self.shared.config.jwt.clone() {
            let now_seconds = self.now_unix / 1_000_000_000;
            if let Err(denied) = jwt.check_subscribe(&room, token.as_deref(), now_seconds) {
                return self.refuse_token(slot, denied);
            }
        }
        let Some(response) = self.ws_handshake(slot, raw_head)? else {
            return Ok(());
        };
        if let Some(driver) = self.http_driver(slot) {
            driver.ws_upgrade = Some(Box::new(WsUpgrade {
                response,
                room: Arc::from(room.as_str()),
                token,
            }));
        }
        let last_event_id = head.last_event_id;
        match self.auth.is_some() {
            // The authorization call forwards the request's headers.
            true => self.authorize(now, slot, room, last_event_id, raw_head.to_vec()),
            false => self.subscribe(now, slot, &room, last_event_id),
        }
    }

    /// What a new subscriber of `room` on `slot` is sent and what the fan-out writes it
    /// first: SSE and the stream's head, or for a WebSocket waiting to upgrade, WebSocket
    /// frames and its `subscribed` object (the `101` is the driver's own first write).
    pub(super) fn stream_head(&self, slot: u32, room: &str) -> (Format, Bytes) {
        let upgrading = self
            .conns
            .get(slot as usize)
            .and_then(|c| c.as_deref())
            .and_then(|c| c.http_driver())
            .is_some_and(|h| h.ws_upgrade.is_some());
        if upgrading {
            let subscribed = crate::conn::ws::frame::encode_frame(
                crate::conn::ws::Opcode::Text,
                encode_subscribed(room).as_bytes(),
            );
            (Format::Ws, subscribed)
        } else {
            (Format::Sse, http1::sse_head())
        }
    }

    /// The fan-out admitted a subscriber: a WebSocket waiting for it upgrades now.
    /// Returns whether it did (else the connection is an SSE stream).
    pub(super) fn ws_admitted(&mut self, now: Instant, slot: u32) -> std::io::Result<bool> {
        let Some(upgrade) = self.http_driver(slot).and_then(|h| h.ws_upgrade.take()) else {
            return Ok(false);
        };
        let WsUpgrade {
            response,
            room,
            token,
        } = *upgrade;
        // The driver holds the subscription from now on, with the fan-out's copy of the
        // room's name (the upgrade's own is freed).
        let room = self.fanout.room_name(&room).unwrap_or(room);
        let sub = self.http_driver(slot).and_then(|h| h.sub.take());
        debug_assert!(sub.is_some(), "admitted with a subscription");
        let rooms = sub.map(|sub| WsRoom::new(room.clone(), sub));
        self.ws_upgrade(now, slot, WsRoute::room(token), response, rooms)?;
        Ok(true)
    }

    /// A request on `/ws`: the handshake, then the upgrade at once (no room yet); the
    /// rooms of `?rooms=a,b` are joined right after it, live (each as a `subscribe`).
    /// Names that break the room rules, more than [`WS_ROOMS_PER_CONN_MAX`] of them, or a
    /// private one without a token allowing it are refused before the upgrade.
    pub(super) fn ws_open_mux(
        &mut self,
        now: Instant,
        slot: u32,
        head: &http1::Head,
        raw_head: &[u8],
    ) -> std::io::Result<()> {
        let token = head.bearer.clone().or(head.query_token.clone());
        let rooms = match rooms_query(raw_head) {
            Ok(rooms) => rooms,
            Err(reason) => {
                let refusal = Refusal {
                    status: 400,
                    reason,
                    extra: "",
                };
                self.count_refusal(RefusalReason::BadRequest);
                return self.refuse(slot, &refusal);
            }
        };
        if let Some(jwt) = self.shared.config.jwt.clone() {
            let now_seconds = self.now_unix / 1_000_000_000;
            for room in &rooms {
                if let Err(denied) = jwt.check_subscribe(room, token.as_deref(), now_seconds) {
                    return self.refuse_token(slot, denied);
                }
            }
        }
        if self.stopping() {
            return self.refuse_unavailable(slot, Rejection::Draining);
        }
        let Some(response) = self.ws_handshake(slot, raw_head)? else {
            return Ok(());
        };
        let auth_head = self.auth.is_some().then(|| Box::from(raw_head));
        let route = WsRoute::mux(token, auth_head);
        self.ws_upgrade(now, slot, route, response, None)?;
        for room in rooms {
            self.ws_subscribe(now, slot, room, None);
        }
        self.ws_pump(now, slot)
    }

    /// `{"type":"subscribe","room":R,"since":ID?}` on a multiplexed connection: the SSE
    /// route's checks (private rooms with the upgrade's token, admission), then a fan-out
    /// subscription of its own, whose first frame is the `subscribed` object. Refusals
    /// are error objects: 409 already subscribed, 429 too many rooms, 429 with
    /// `retry_after_ms` past the connection's subscribe pace (ws/subscribe_rate.rs: a
    /// subscribe not refused 409 or for its room count takes one before any costly step,
    /// whether it is then admitted or refused), 401/403 token, the auth callback's status,
    /// 503 admission (or Redis unreachable in cluster mode).
    fn ws_subscribe(&mut self, now: Instant, slot: u32, room: String, since: Option<ResumeId>) {
        let now_seconds = self.now_unix / 1_000_000_000;
        let elapsed = now.saturating_duration_since(self.shared.clock.anchor());
        let Some(ws) = self.conn(slot).and_then(|c| c.ws_mut()) else {
            return;
        };
        let token = ws.route().token().map(str::to_owned);
        let held = ws.rooms.iter().any(|held| *held.room == *room)
            || ws.pending_rooms().iter().any(|held| **held == *room);
        let full = ws.rooms.len() + ws.pending_rooms().len() >= WS_ROOMS_PER_CONN_MAX;
        if !held && !full {
            if let Err(wait) = ws.subscribe_rate.handle_subscribe(elapsed) {
                ws.answer(&encode_rate_error(
                    &room,
                    &format!("more than {WS_SUBSCRIBES_PER_SEC} subscribes per second on this connection"),
                    u64::try_from(wait.as_millis()).expect("at most a tick"),
                ));
                self.count_refusal(RefusalReason::WsSubscribeRate);
                return;
            }
        }
        // Checked only for a subscribe that passed the pace (a signature check costs).
        let denied = self.shared.config.jwt.as_deref().filter(|_| !held && !full);
        let denied = denied.and_then(|jwt| {
            jwt.check_subscribe(&room, token.as_deref(), now_seconds)
                .err()
        });
        let refusal: Option<(u16, String)> = if held {
            Some((409, "already subscribed".into()))
        } else if full {
            self.count_refusal(RefusalReason::WsRoomsPerConnection);
            Some((
                429,
                format!("at most {WS_ROOMS_PER_CONN_MAX} rooms per connection"),
            ))
        } else if let Some(denied) = denied {
            self.count_refusal(RefusalReason::of_token(denied));
            Some((denied.status(), denied.text().into()))
        } else if self.auth.is_some() {
            self.ws_authorize(now, slot, room.clone(), since)
        } else {
            self.ws_admit(now, slot, &room, since)
        };
        if let Some((status, reason)) = refusal {
            if let Some(ws) = self.conn(slot).and_then(|c| c.ws_mut()) {
                ws.answer(&encode_error(None, Some(&room), status, &reason));
            }
        }
    }

    /// Admission, then the fan-out subscription; the refusal's status and reason if any.
    fn ws_admit(
        &mut self,
        now: Instant,
        slot: u32,
        room: &str,
        since: Option<ResumeId>,
    ) -> Option<(u16, String)> {
        if self.stopping() {
            self.count_rejection(Rejection::Draining);
            return Some((503, Rejection::Draining.text().into()));
        }
        if self.backlogged() {
            self.count_rejection(Rejection::PendingWriteBytes);
            return Some((503, Rejection::PendingWriteBytes.text().into()));
        }
        if self.cluster.is_some() {
            return self.ws_cluster_join(slot, room, since);
        }
        self.ws_join(now, slot, room, Err(since))
    }

    /// A subscribe by message in cluster mode: at once if this node follows the room's
    /// stream already, else once it has read it in ([`Self::ws_primed`]; the room counts
    /// as held meanwhile).
    fn ws_cluster_join(
        &mut self,
        slot: u32,
        room: &str,
        since: Option<ResumeId>,
    ) -> Option<(u16, String)> {
        self.release_freed_rooms();
        if !self.fanout.room_available(room) {
            // Refused before the room is followed: followed rooms count against the cap.
            self.count_rejection(Rejection::RoomLimit);
            return Some((503, Rejection::RoomLimit.text().into()));
        }
        let key = self.key(slot);
        let cluster = self.cluster.as_mut()?;
        if cluster.is_primed(room) {
            return self.ws_join_placed(slot, room, since);
        }
        let waiter = crate::upstream::cluster::Waiter {
            conn: key,
            last_event_id: since,
        };
        if !cluster.wait_primed(room, waiter) {
            return Some((503, "redis unreachable".into()));
        }
        let ws = self.conn(slot).and_then(|c| c.ws_mut())?;
        ws.talk().pending_rooms.push(Arc::from(room));
        None
    }

    /// Joins a room this node follows (cluster mode) where its replica places `since`, as
    /// an SSE subscribe does: a resume older than the replica is replayed from Redis, and
    /// Redis says whether an id beyond its head exists ([`Self::ws_replayed`]; the room
    /// counts as held meanwhile).
    fn ws_join_placed(
        &mut self,
        slot: u32,
        room: &str,
        since: Option<ResumeId>,
    ) -> Option<(u16, String)> {
        match self.cluster_start(self.key(slot), room, since) {
            ClusterStart::Replaying => {
                let ws = self.conn(slot).and_then(|c| c.ws_mut())?;
                ws.talk().pending_rooms.push(Arc::from(room));
                None
            }
            ClusterStart::At(start) => self.ws_join(self.now, slot, room, Ok((start, Vec::new()))),
        }
    }

    /// Redis answered a multiplexed connection's replay (cluster mode): it joins the room
    /// from `start`, the replayed frames first; the caller pumps it.
    pub(super) fn ws_replayed(
        &mut self,
        conn: ConnKey,
        room: &str,
        start: Start,
        replay: Vec<ringcast_core::frame::Frame>,
    ) {
        let Some(ws) = self
            .conn_by_key(conn)
            .filter(|c| !c.closing)
            .and_then(|c| c.ws_mut())
        else {
            return;
        };
        let Some(at) = ws.pending_rooms().iter().position(|r| **r == *room) else {
            return;
        };
        ws.talk().pending_rooms.swap_remove(at);
        if let Some((status, reason)) = self.ws_join(self.now, conn.slot, room, Ok((start, replay)))
        {
            if let Some(ws) = self.conn(conn.slot).and_then(|c| c.ws_mut()) {
                ws.answer(&encode_error(None, Some(room), status, &reason));
            }
        }
    }

    /// This node read in `room`'s stream (`primed`) or could not: the multiplexed
    /// connection waiting for it joins it or gets an error object; the caller pumps it.
    pub(super) fn ws_primed(
        &mut self,
        waiter: crate::upstream::cluster::Waiter,
        room: &str,
        primed: bool,
    ) {
        let slot = waiter.conn.slot;
        let Some(ws) = self
            .conn_by_key(waiter.conn)
            .filter(|c| !c.closing)
            .and_then(|c| c.ws_mut())
        else {
            return;
        };
        let Some(at) = ws.pending_rooms().iter().position(|r| **r == *room) else {
            return;
        };
        ws.talk().pending_rooms.swap_remove(at);
        let refusal = match primed {
            true => self.ws_join_placed(slot, room, waiter.last_event_id),
            false => Some((503, "redis unreachable".into())),
        };
        if let Some((status, reason)) = refusal {
            if let Some(ws) = self.conn(slot).and_then(|c| c.ws_mut()) {
                ws.answer(&encode_error(None, Some(room), status, &reason));
            }
        }
    }

    /// A subscribe by message that `--auth-url` must approve first (the upgrade's head is
    /// forwarded with the room): decided at once (breaker open, queue full) or later
    /// ([`Self::ws_authorized`]); the room counts as held meanwhile.
    fn ws_authorize(
        &mut self,
        now: Instant,
        slot: u32,
        room: String,
        since: Option<ResumeId>,
    ) -> Option<(u16, String)> {
        let key = self.key(slot);
        let conn = self
            .conns
            .get_mut(slot as usize)
            .and_then(|c| c.as_deref_mut())?;
        let client = conn.pipe.raw_fd().and_then(crate::uring::sys::peer_addr);
        let ws = conn.ws_mut()?;
        if !matches!(ws.route(), WsRoute::Mux(_)) {
            return None;
        }
        let head = ws
            .route()
            .auth_head()
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        ws.talk().pending_rooms.push(Arc::from(room.as_str()));
        let ticket = crate::upstream::auth::Ticket {
            conn: key,
            room,
            last_event_id: since,
        };
        let auth = self.auth.as_mut()?;
        if let crate::upstream::auth::Begin::Decided(ticket, decision) =
            auth.begin(now, ticket, client, head)
        {
            self.ws_authorized(now, ticket, decision);
        }
        None
    }

    /// `--auth-url` decided a multiplexed connection's subscribe: the subscription, or an
    /// error object with the callback's status (503 when it is unavailable); the caller
    /// pumps the connection.
    pub(super) fn ws_authorized(
        &mut self,
        now: Instant,
        ticket: crate::upstream::auth::Ticket,
        decision: crate::upstream::auth::Decision,
    ) {
        let slot = ticket.conn.slot;
        let Some(ws) = self
            .conn_by_key(ticket.conn)
            .filter(|c| !c.closing)
            .and_then(|c| c.ws_mut())
        else {
            return;
        };
        let Some(at) = ws.pending_rooms().iter().position(|r| **r == *ticket.room) else {
            return;
        };
        ws.talk().pending_rooms.swap_remove(at);
        let refusal = match decision {
            crate::upstream::auth::Decision::Admit => {
                self.ws_admit(now, slot, &ticket.room, ticket.last_event_id)
            }
            crate::upstream::auth::Decision::Refuse { status, reason, .. } => {
                if status == 503 {
                    self.count_rejection(Rejection::AuthUnavailable);
                }
                Some((status, reason.to_owned()))
            }
        };
        if let Some((status, reason)) = refusal {
            if let Some(ws) = self.conn(slot).and_then(|c| c.ws_mut()) {
                ws.answer(&encode_error(None, Some(&ticket.room), status, &reason));
            }
        }
        // Written by the caller's pump (this also runs inside the feed loop, for a
        // decision made at once).
    }

    /// Subscribes a multiplexed connection to `room` in the fan-out (its first frame: the
    /// `subscribed` object); the refusal's status and reason if the fan-out has no room.
    /// `place`: where to start, the client's resume id (single node) or a start the
    /// replica placed and frames Redis replayed (cluster mode).
    fn ws_join(
        &mut self,
        now: Instant,
        slot: u32,
        room: &str,
        place: Result<(Start, Vec<ringcast_core::frame::Frame>), Option<ResumeId>>,
    ) -> Option<(u16, String)> {
        let subscribed = crate::conn::ws::frame::encode_frame(
            crate::conn::ws::Opcode::Text,
            encode_subscribed(room).as_bytes(),
        );
        let sub = self.subs.insert(self.key(slot));
        let admitted = match place {
            Err(since) => {
                self.fanout
                    .handle_subscribe_in(now, sub, room, since, Format::Ws, subscribed)
            }
            Ok((start, replay)) => self.fanout.handle_subscribe_replayed_in(
                now,
                sub,
                room,
                start,
                Format::Ws,
                subscribed,
                replay,
            ),
        };
        match admitted {
            Ok(()) => {
                // The fan-out's copy of the room's name, shared.
                let name = self
                    .fanout
                    .room_name(room)
                    .unwrap_or_else(|| Arc::from(room));
                if let Some(ws) = self.conn(slot).and_then(|c| c.ws_mut()) {
                    ws.rooms.push(WsRoom::new(name, sub));
                }
                None
            }
            Err(err) => {
                self.subs.remove(sub);
                let reason = match err {
                    FanoutError::RoomsFull => Rejection::RoomLimit,
                    _ => Rejection::SubscriberLimit,
                };
                self.count_rejection(reason);
                Some((503, reason.text().into()))
            }
        }
    }

    /// `{"type":"unsubscribe","room":R}`: the subscription leaves the fan-out (frames of it
    /// already queued still go), then `unsubscribed`.
    fn ws_unsubscribe(&mut self, slot: u32, room: &str) {
        let Some(ws) = self.conn(slot).and_then(|c| c.ws_mut()) else {
            return;
        };
        let Some(sub) = ws
            .rooms
            .iter()
            .find(|held| *held.room == *room)
            .map(|held| held.sub)
        else {
            ws.answer(&encode_error(None, Some(room), 404, "not subscribed"));
            return;
        };
        self.fanout.handle_disconnect(sub);
        self.ws_forget(slot, sub);
        self.subs.remove(sub);
        if let Some(ws) = self.conn(slot).and_then(|c| c.ws_mut()) {
            ws.answer(&encode_unsubscribed(room));
        }
    }

    /// A text message on a room connection: a command, answered by an object.
    pub(super) fn ws_command(&mut self, now: Instant, slot: u32, text: &str) {
        let Some(ws) = self.conn(slot).and_then(|c| c.ws_mut()) else {
            return;
        };
        match parse_command(text) {
            Err(refusal) => {
                ws.answer(&refusal.to_json());
                self.count_refusal(RefusalReason::BadRequest);
            }
            Ok(Command::Publish {
                room,
                data,
                reference,
                idempotency_key,
            }) => self.ws_publish(now, slot, room, data, reference, idempotency_key),
            Ok(Command::Subscribe { room, .. } | Command::Unsubscribe { room })
                if !matches!(ws.route(), WsRoute::Mux { .. }) =>
            {
                ws.answer(&encode_error(
                    None,
                    Some(&room),
                    400,
                    "this connection follows its route's room only",
                ));
                self.count_refusal(RefusalReason::BadRequest);
            }
            Ok(Command::Subscribe { room, since }) => self.ws_subscribe(now, slot, room, since),
            Ok(Command::Unsubscribe { room }) => self.ws_unsubscribe(slot, &room),
        }
    }

    /// A publish over a WebSocket: the checks of `POST /rooms/{room}/messages` (token,
    /// size, backlog), then sequenced by the owner shard; the ack or error comes back as
    /// an object carrying the client's `ref`.
    fn ws_publish(
        &mut self,
        now: Instant,
        slot: u32,
        room: String,
        data: String,
        reference: Option<Ref>,
        idempotency_key: Option<String>,
    ) {
        let now_seconds = self.now_unix / 1_000_000_000;
        let refused = |status: u16, reason: &str| (status, reason.to_owned());
        let token = self
            .conn(slot)
            .and_then(|c| c.ws())
            .and_then(|ws| ws.route().token().map(str::to_owned));
        let mut refusal = None;
        if let Some(jwt) = self.shared.config.jwt.as_deref() {
            match jwt.publish_grant(token.as_deref(), now_seconds) {
                Err(denied) => {
                    self.count_refusal(RefusalReason::of_token(denied));
                    refusal = Some(refused(denied.status(), denied.text()));
                }
                Ok(Some(grant)) if !grant.allows(&room) => {
                    let denied = crate::upstream::jwt::TokenError::Forbidden;
                    self.count_refusal(RefusalReason::of_token(denied));
                    refusal = Some(refused(denied.status(), denied.text()));
                }
                Ok(_) => {}
            }
        }
        let max = self.shared.config.max_message_bytes;
        if refusal.is_none() && data.len() > max {
            self.count_refusal(RefusalReason::BodyTooLarge);
            refusal = Some(refused(413, &format!("data over {max} bytes")));
        }
        if refusal.is_none() && self.backlogged() {
            self.count_rejection(Rejection::PendingWriteBytes);
            refusal = Some(refused(503, Rejection::PendingWriteBytes.text()));
        }
        let Some(ws) = self.conn(slot).and_then(|c| c.ws_mut()) else {
            return;
        };
        let publishes = &mut ws.talk().publishes;
        let free = match publishes.iter().position(Option::is_none) {
            Some(index) => Some(index),
            None if publishes.len() < WS_PUBLISHES_IN_FLIGHT_MAX => {
                publishes.push(None);
                Some(publishes.len() - 1)
            }
            None => None,
        };
        let in_flight_full = refusal.is_none() && free.is_none();
        if in_flight_full {
            refusal = Some(refused(
                429,
                "too many publishes in flight on this connection",
            ));
        }
        let (Some(index), None) = (free, &refusal) else {
            let (status, reason) = refusal.expect("refused or a free place");
            ws.answer(&encode_error(
                reference.as_ref(),
                Some(&room),
                status,
                &reason,
            ));
            if in_flight_full {
                self.count_refusal(RefusalReason::WsPublishesInFlight);
            }
            return;
        };
        let room: Arc<str> = Arc::from(room);
        ws.talk().publishes[index] = Some(PublishWait {
            reference,
            room: room.clone(),
        });
        let data = Bytes::from(data.into_bytes());
        if self.cluster.is_some() {
            // Appended to the room's stream; the answer comes back as the HTTP route's.
            let ticket = self.cluster_ticket(slot, index as u32);
            if let Err(refusal) = self.cluster_append(now, ticket, room, data, idempotency_key) {
                self.ws_published(slot, index as u32, Err(refusal));
            }
            return;
        }
        let reply = self.reply_to(slot, index as u32);
        if let Routed::Answered(result) =
            self.route_publish(now, &room, data, idempotency_key, reply)
        {
            self.ws_published(slot, index as u32, result.map_err(PublishRefusal::from));
        }
    }

    /// A publish of this connection was sequenced (or refused): its ack or error object,
    /// queued; the caller pumps the connection.
    pub(super) fn ws_published(
        &mut self,
        slot: u32,
        index: u32,
        result: Result<EventId, PublishRefusal>,
    ) {
        let Some(ws) = self.conn(slot).and_then(|c| c.ws_mut()) else {
            return;
        };
        let Some(wait) = ws
            .talk()
            .publishes
            .get_mut(index as usize)
            .and_then(Option::take)
        else {
            debug_assert!(false, "an answer for a publish nobody waits for");
            return;
        };
        let json = match result {
            Ok(id) => encode_ack(wait.reference.as_ref(), &wait.room, &id.to_string()),
            Err(refusal) => encode_error(
                wait.reference.as_ref(),
                Some(&wait.room),
                503,
                &refusal.to_string(),
            ),
        };
        // Written by the caller's pump (never pumped from here: this also runs inside the
        // feed loop, for a publish answered at once).
        ws.answer(&json);
    }
}

/// The rooms of a `/ws?rooms=a,b` request head (none without the parameter), each checked
/// against the room name rules; at most [`WS_ROOMS_PER_CONN_MAX`], no name twice.
fn rooms_query(raw_head: &[u8]) -> Result<Vec<String>, String> {
    let line = raw_head.split(|&b| b == b'\r').next().unwrap_or_default();
    let target = line.split(|&b| b == b' ').nth(1).unwrap_or_default();
    let query = match target.iter().position(|&b| b == b'?') {
        Some(at) => &target[at + 1..],
        None => return Ok(Vec::new()),
    };
    let mut rooms: Vec<String> = Vec::new();
    for pair in query.split(|&b| b == b'&') {
        let Some(list) = pair.strip_prefix(b"rooms=") else {
            continue;
        };
        for name in list.split(|&b| b == b',').filter(|name| !name.is_empty()) {
            let name = ringcast_core::room::validate_room_name(name)
                .map_err(|err| format!("bad room name: {err}"))?;
            if rooms.iter().any(|held| held == name) {
                continue;
            }
            if rooms.len() == WS_ROOMS_PER_CONN_MAX {
                return Err(format!(
                    "at most {WS_ROOMS_PER_CONN_MAX} rooms per connection"
                ));
            }
            rooms.push(name.to_owned());
        }
    }
    Ok(rooms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_of_the_query_are_checked_deduplicated_and_bounded() {
        let head = |target: &str| format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n");
        let rooms = |target: &str| rooms_query(head(target).as_bytes());
        assert_eq!(rooms("/ws"), Ok(vec![]));
        assert_eq!(rooms("/ws?token=t"), Ok(vec![]));
        assert_eq!(
            rooms("/ws?rooms=a,b&token=t"),
            Ok(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            rooms("/ws?rooms=a,,a&rooms=c"),
            Ok(vec!["a".into(), "c".into()])
        );
        assert!(rooms("/ws?rooms=a%20b")
            .unwrap_err()
            .starts_with("bad room name"));
        let many: Vec<String> = (0..=WS_ROOMS_PER_CONN_MAX)
            .map(|n| format!("r{n}"))
            .collect();
        assert!(rooms(&format!("/ws?rooms={}", many.join(",")))
            .unwrap_err()
            .starts_with("at most"));
    }
}
