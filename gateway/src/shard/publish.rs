//! Publishing: one message or an NDJSON batch, sequenced by the room's owner shard (mail
//! when the owner is another shard) and answered when the owner has assigned ids.

use super::*;

impl Shard {
    pub(super) fn outbox_full(&self) -> bool {
        self.outbox.iter().any(|q| q.len() >= OUTBOX_MAX)
    }

    /// Sequences a message of a room this shard owns and hands the frame to every other
    /// shard. With an idempotency key seen within the window: the first publish's id, and
    /// nothing sequenced.
    pub(super) fn sequence(
        &mut self,
        now: Instant,
        room: &Arc<str>,
        data: &[u8],
        idempotency_key: Option<&str>,
    ) -> Result<EventId, PublishRefusal> {
        let window = self.config.idempotency_window;
        if let Some(key) = idempotency_key {
            if let Some(id) = self.idempotency.handle_publish(now, window, room, key) {
                return Ok(id);
            }
        }
        if self.stopping() {
            self.count_rejection(Rejection::Draining);
            return Err(Rejection::Draining.into());
        }
        if self.outbox_full() {
            self.count_rejection(Rejection::ShardQueues);
            return Err(Rejection::ShardQueues.into());
        }
        // The stamp is read now rather than at the start of the turn: a turn can be long.
        let stamp = if self.shared.config.latency_metrics {
            self.clock.now_unix_nanos(Instant::now())
        } else {
            0
        };
        let (id, frame) = match self.fanout.handle_publish_stamped(now, stamp, room, data) {
            Ok(sequenced) => sequenced,
            Err(_) => {
                self.count_rejection(Rejection::RoomLimit);
                return Err(Rejection::RoomLimit.into());
            }
        };
        for target in 0..self.shards {
            if target != self.index {
                self.outbox[target].push_back(Mail::Frame {
                    room: room.clone(),
                    incarnation: id.epoch,
                    id: id.seq,
                    frame: frame.clone(),
                    stamp_unix_nanos: stamp,
                });
            }
        }
        if let Some(key) = idempotency_key {
            self.idempotency.record(now, room, key, id);
        }
        Ok(id)
    }

    pub(super) fn reply_to(&self, slot: u32, index: u32) -> ReplyTo {
        ReplyTo {
            shard: self.index as u32,
            conn: self.key(slot),
            index,
        }
    }

    pub(super) fn publish_one(
        &mut self,
        now: Instant,
        slot: u32,
        room: String,
        body: Vec<u8>,
        idempotency_key: Option<String>,
    ) -> std::io::Result<()> {
        let room: Arc<str> = Arc::from(room);
        if self.backlogged() {
            self.count_rejection(Rejection::PendingWriteBytes);
            return self.finish_publish(slot, &room, Err(Rejection::PendingWriteBytes.into()));
        }
        if self.cluster.is_some() {
            return self.cluster_publish(now, slot, room, Bytes::from(body), idempotency_key);
        }
        let owner = owner_shard(&room, self.shards);
        if owner == self.index {
            let result = self.sequence(now, &room, &body, idempotency_key.as_deref());
            return self.finish_publish(slot, &room, result);
        }
        if self.outbox_full() {
            self.count_rejection(Rejection::ShardQueues);
            return self.finish_publish(slot, &room, Err(Rejection::ShardQueues.into()));
        }
        let reply = self.reply_to(slot, 0);
        self.outbox[owner].push_back(Mail::Publish {
            room: room.clone(),
            data: Bytes::from(body),
            reply,
            idempotency_key: idempotency_key.map(crate::app::idempotency::MailKey::new),
        });
        if let Some(conn) = self.conn(slot) {
            conn.state = State::Waiting;
            conn.outstanding = 1;
            conn.pending = Some(Pending::Publish { room, result: None });
        }
        Ok(())
    }

    pub(super) fn finish_publish(
        &mut self,
        slot: u32,
        room: &str,
        result: Result<EventId, PublishRefusal>,
    ) -> std::io::Result<()> {
        let close = self.conn(slot).is_none_or(|c| !c.keep_alive);
        let response = match result {
            Ok(id) => http1::response(
                201,
                "application/json",
                "",
                format!("{{\"id\":\"{id}\"}}").as_bytes(),
                close,
            ),
            Err(reason) => {
                tracing::debug!(shard = self.index, room, %reason, "publish refused");
                http1::response(
                    503,
                    "text/plain",
                    "Retry-After: 1\r\n",
                    format!("{reason}\n").as_bytes(),
                    close,
                )
            }
        };
        self.respond(slot, response)
    }

    /// `grant`: what the request's token allows, when `--publish-key` is set; lines for
    /// other rooms fail alone (counted as `room_forbidden`).
    pub(super) fn publish_batch(
        &mut self,
        now: Instant,
        slot: u32,
        body: &[u8],
        grant: Option<&crate::upstream::jwt::Grant>,
    ) -> std::io::Result<()> {
        if self.backlogged() {
            self.count_rejection(Rejection::PendingWriteBytes);
            return self.finish_publish(slot, "(batch)", Err(Rejection::PendingWriteBytes.into()));
        }
        let mut results = Vec::new();
        let mut outstanding = 0;
        for (number, line) in batch::lines(body) {
            if results.len() >= BATCH_LINES_MAX {
                results.push(BatchLine::Done(Err(format!(
                    "line {number}: batch over {BATCH_LINES_MAX} lines"
                ))));
                break;
            }
            let batch::Line {
                room,
                data,
                idempotency_key,
            } = match batch::parse_line(line) {
                Ok(line) => line,
                Err(reason) => {
                    results.push(BatchLine::Done(Err(format!("line {number}: {reason}"))));
                    continue;
                }
            };
            if grant.is_some_and(|grant| !grant.allows(&room)) {
                self.count_refusal(RefusalReason::RoomForbidden);
                let text = crate::upstream::jwt::TokenError::Forbidden.text();
                results.push(BatchLine::Done(Err(format!("line {number}: {text}"))));
                continue;
            }
            let room: Arc<str> = Arc::from(room);
            let owner = owner_shard(&room, self.shards);
            if self.cluster.is_some() {
                let ticket = self.cluster_ticket(slot, results.len() as u32);
                let data = Bytes::from(data.into_bytes());
                match self.cluster_append(now, ticket, room, data, idempotency_key) {
                    Ok(()) => {
                        results.push(BatchLine::Waiting);
                        outstanding += 1;
                    }
                    Err(reason) => results.push(BatchLine::Done(Err(reason.to_string()))),
                }
            } else if owner == self.index {
                let result = self
                    .sequence(now, &room, data.as_bytes(), idempotency_key.as_deref())
                    .map_err(|reason| reason.to_string());
                results.push(BatchLine::Done(result));
            } else if self.outbox_full() {
                self.count_rejection(Rejection::ShardQueues);
                results.push(BatchLine::Done(Err(Rejection::ShardQueues
                    .text()
                    .to_owned())));
            } else {
                let reply = self.reply_to(slot, results.len() as u32);
                self.outbox[owner].push_back(Mail::Publish {
                    room,
                    data: Bytes::from(data.into_bytes()),
                    reply,
                    idempotency_key: idempotency_key.map(crate::app::idempotency::MailKey::new),
                });
                results.push(BatchLine::Waiting);
                outstanding += 1;
            }
        }
        if let Some(conn) = self.conn(slot) {
            conn.pending = Some(Pending::Batch { results });
            conn.outstanding = outstanding;
            conn.state = State::Waiting;
        }
        if outstanding == 0 {
            return self.complete_pending(slot);
        }
        Ok(())
    }
}
