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

use super::ws::{WsRoute, WsUpgrade};
use super::*;
use crate::conn::ws::protocol::{encode_ack, encode_error, encode_subscribed};
use crate::conn::ws::{parse_command, Command, Ref};
use ringcast_core::frame::Format;

/// Publishes one WebSocket connection may have waiting for their owner shard at once;
/// past it a publish gets 429. Bounds the acks a connection may be owed.
pub(super) const WS_PUBLISHES_IN_FLIGHT_MAX: usize = 16;

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
        if let Some(conn) = self.conn(slot) {
            conn.ws_upgrade = Some(Box::new(WsUpgrade {
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
            .is_some_and(|c| c.ws_upgrade.is_some());
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
        let Some(upgrade) = self.conn(slot).and_then(|c| c.ws_upgrade.take()) else {
            return Ok(false);
        };
        let WsUpgrade {
            response,
            room,
            token,
        } = *upgrade;
        // The driver holds the subscription from now on.
        let sub = self.conn(slot).and_then(|c| c.sub.take());
        debug_assert!(sub.is_some(), "admitted with a subscription");
        let rooms = sub.map(|sub| (room.clone(), sub));
        self.ws_upgrade(now, slot, WsRoute::Room { room, token }, response, rooms)?;
        Ok(true)
    }

    /// A text message on a room connection: a command, answered by an object.
    pub(super) fn ws_command(&mut self, now: Instant, slot: u32, text: &str) {
        let Some(ws) = self.conn(slot).and_then(|c| c.ws.as_deref_mut()) else {
            return;
        };
        match parse_command(text) {
            Err(refusal) => ws.answer(&refusal.to_json()),
            Ok(Command::Publish {
                room,
                data,
                reference,
                idempotency_key,
            }) => self.ws_publish(now, slot, room, data, reference, idempotency_key),
            Ok(Command::Subscribe { room, .. } | Command::Unsubscribe { room }) => {
                ws.answer(&encode_error(
                    None,
                    Some(&room),
                    400,
                    "this connection follows its route's room only",
                ));
            }
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
        let token = match self
            .conn(slot)
            .and_then(|c| c.ws.as_deref())
            .map(|ws| ws.route())
        {
            Some(WsRoute::Room { token, .. }) => token.clone(),
            _ => None,
        };
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
            refusal = Some(refused(413, &format!("data over {max} bytes")));
        }
        if refusal.is_none() && self.backlogged() {
            self.count_rejection(Rejection::PendingWriteBytes);
            refusal = Some(refused(503, Rejection::PendingWriteBytes.text()));
        }
        if refusal.is_none() && self.cluster.is_some() {
            refusal = Some(refused(
                501,
                "publish over WebSocket is not offered in cluster mode yet",
            ));
        }
        let Some(ws) = self.conn(slot).and_then(|c| c.ws.as_deref_mut()) else {
            return;
        };
        let free = ws.publishes.iter().position(Option::is_none);
        if refusal.is_none() && free.is_none() {
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
            return;
        };
        let room: Arc<str> = Arc::from(room);
        ws.publishes[index] = Some(PublishWait {
            reference,
            room: room.clone(),
        });
        let reply = self.reply_to(slot, index as u32);
        let data = Bytes::from(data.into_bytes());
        if let Routed::Answered(result) =
            self.route_publish(now, &room, data, idempotency_key, reply)
        {
            self.ws_published(slot, index as u32, result.map_err(PublishRefusal::from));
        }
    }

    /// A publish of this connection was sequenced (or refused): its ack or error object.
    pub(super) fn ws_published(
        &mut self,
        slot: u32,
        index: u32,
        result: Result<EventId, PublishRefusal>,
    ) {
        let Some(ws) = self.conn(slot).and_then(|c| c.ws.as_deref_mut()) else {
            return;
        };
        let Some(wait) = ws.publishes.get_mut(index as usize).and_then(Option::take) else {
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
        ws.answer(&json);
        if let Err(err) = self.ws_pump(self.now, slot) {
            tracing::warn!(shard = self.index, %err, "answering a WebSocket publish failed");
        }
    }
}
