//! Publishing: one message or an NDJSON batch, sequenced by the room's owner shard (mail
//! when the owner is another shard) and answered when the owner has assigned ids.

use super::*;

impl Shard {
    /// A publish read on this shard, in single-node mode: sequenced here when this shard
    /// owns the room, else sent to the owner (`Routed::Forwarded`; the answer comes back
    /// as `Mail::Sequenced` for `reply`). Refusals are counted.
    pub(super) fn route_publish(
        &mut self,
        now: Instant,
        room: &Arc<str>,
        data: Bytes,
        idempotency_key: Option<String>,
        reply: ReplyTo,
    ) -> Routed {
        let (clock, latency_metrics) = (&mut self.clock, self.shared.config.latency_metrics);
        // The stamp is read when sequencing rather than at the start of the turn: a turn
        // can be long.
        let stamp = move || match latency_metrics {
            true => clock.now_unix_nanos(Instant::now()),
            false => 0,
        };
        let routed = self.sequencer.handle_publish(
            &mut self.fanout,
            now,
            self.config.idempotency_window,
            stamp,
            room,
            data,
            idempotency_key,
            reply,
        );
        if let Routed::Answered(Err(refusal)) = routed {
            self.count_rejection(refusal.into());
        }
        routed
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
        body: Bytes,
        idempotency_key: Option<String>,
    ) -> std::io::Result<()> {
        let room: Arc<str> = Arc::from(room);
        if self.backlogged() {
            self.count_rejection(Rejection::PendingWriteBytes);
            return self.finish_publish(slot, &room, Err(Rejection::PendingWriteBytes.into()));
        }
        if self.cluster.is_some() {
            return self.cluster_publish(now, slot, room, body, idempotency_key);
        }
        let reply = self.reply_to(slot, 0);
        if let Routed::Answered(result) =
            self.route_publish(now, &room, body, idempotency_key, reply)
        {
            return self.finish_publish(slot, &room, result.map_err(PublishRefusal::from));
        }
        if let Some(driver) = self.http_driver(slot) {
            driver.outstanding = 1;
            driver.pending = Some(Box::new(Pending::Publish { room, result: None }));
        }
        Ok(())
    }

    pub(super) fn finish_publish(
        &mut self,
        slot: u32,
        room: &str,
        result: Result<EventId, PublishRefusal>,
    ) -> std::io::Result<()> {
        let close = self
            .conn(slot)
            .is_none_or(|c| c.http().is_none_or(|http| !http.keep_alive()));
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
            } else {
                let reply = self.reply_to(slot, results.len() as u32);
                let data = Bytes::from(data.into_bytes());
                match self.route_publish(now, &room, data, idempotency_key, reply) {
                    Routed::Answered(result) => results.push(BatchLine::Done(
                        result.map_err(|refusal| PublishRefusal::from(refusal).to_string()),
                    )),
                    Routed::Forwarded { .. } => {
                        results.push(BatchLine::Waiting);
                        outstanding += 1;
                    }
                }
            }
        }
        if let Some(driver) = self.http_driver(slot) {
            driver.pending = Some(Box::new(Pending::Batch { results }));
            driver.outstanding = outstanding;
        }
        if outstanding == 0 {
            return self.complete_pending(slot);
        }
        Ok(())
    }
}
