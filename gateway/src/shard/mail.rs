//! Cross-shard mail: draining the inbound queues (bounded per turn), acting on each mail,
//! flushing the outbox, and forwarding presence.

use super::*;

impl Shard {
    pub(super) fn drain_mail(&mut self, now: Instant) {
        for _ in 0..MAIL_PER_TURN {
            let Some(mail) = self.shared.mesh.companion_queue(self.index).pop() else {
                break;
            };
            if let Err(err) = self.on_mail(now, mail) {
                tracing::warn!(shard = self.index, %err, "companion mail handling failed");
            }
        }
        for from in 0..self.shards {
            if from == self.index {
                continue;
            }
            for _ in 0..MAIL_PER_TURN {
                let Some(mail) = self.shared.mesh.queue(from, self.index).pop() else {
                    break;
                };
                if let Err(err) = self.on_mail(now, mail) {
                    tracing::warn!(shard = self.index, %err, "mail handling failed");
                }
            }
        }
    }

    pub(super) fn on_mail(&mut self, now: Instant, mail: Mail) -> std::io::Result<()> {
        match mail {
            Mail::VirtualOpen { request, sink, .. } => {
                return self.open_virtual(now, request, sink);
            }
            Mail::VirtualWriteDone { sink } => {
                let Some(key) = sink.key() else {
                    return Ok(());
                };
                let Some(wrote) = self
                    .conn_by_key(key)
                    .filter(|conn| !conn.closing)
                    .and_then(|conn| conn.pipe.on_virtual_written())
                else {
                    return Ok(());
                };
                return self.after_write(now, key.slot, wrote);
            }
            Mail::VirtualReceived { sink } => return self.on_virtual_recv(now, &sink),
            Mail::VirtualClose { sink } => {
                let Some(key) = sink.key() else {
                    return Ok(());
                };
                if self.conn_by_key(key).is_some() {
                    return self.begin_close(key.slot);
                }
            }
            Mail::Publish {
                room,
                data,
                reply,
                idempotency_key,
            } => {
                let key = idempotency_key
                    .as_ref()
                    .map(crate::app::idempotency::MailKey::as_str);
                let (clock, latency_metrics) =
                    (&mut self.clock, self.shared.config.latency_metrics);
                let stamp = move || match latency_metrics {
                    true => clock.now_unix_nanos(Instant::now()),
                    false => 0,
                };
                let result = self.sequencer.handle_publish_letter(
                    &mut self.fanout,
                    now,
                    self.config.idempotency_window,
                    stamp,
                    reply.shard as usize,
                    &room,
                    &data,
                    key,
                    reply,
                );
                if let Err(refusal) = result {
                    self.count_rejection(refusal.into());
                }
            }
            Mail::Frame {
                room,
                incarnation,
                id,
                frame,
                stamp_unix_nanos,
            } => {
                let _new = self.sequencer.handle_frame(
                    &mut self.fanout,
                    now,
                    &room,
                    incarnation,
                    id,
                    frame,
                    stamp_unix_nanos,
                );
            }
            Mail::Stopped { shard } => self.sequencer.handle_peer_stopped(shard),
            Mail::Presence { room, subscribed } => {
                self.fanout.handle_presence(now, &room, subscribed);
            }
            Mail::RoomQuery { room, reply } => {
                let origin = reply.shard as usize;
                self.sequencer
                    .handle_room_query(&self.fanout, origin, &room, reply);
            }
            Mail::Sequenced { reply, result } => {
                let Some(conn) = self.conn_by_key(reply.conn) else {
                    return Ok(());
                };
                let Some(driver) = conn.http_driver_mut() else {
                    self.ws_published(reply.conn.slot, reply.index, result);
                    return self.ws_pump(now, reply.conn.slot);
                };
                match driver.pending.as_deref_mut() {
                    Some(Pending::Publish {
                        result: slot_result,
                        ..
                    }) => *slot_result = Some(result),
                    Some(Pending::Batch { results }) => {
                        if let Some(line) = results.get_mut(reply.index as usize) {
                            *line = BatchLine::Done(result.map_err(|r| r.to_string()));
                        }
                    }
                    _ => return Ok(()),
                }
                assert!(driver.outstanding > 0, "a reply nobody waits for");
                driver.outstanding -= 1;
                if driver.outstanding == 0 {
                    return self.complete_pending(reply.conn.slot);
                }
            }
            Mail::RoomCount {
                reply,
                subscribers,
                last_id,
                history_len,
            } => {
                let Some(driver) = self.conn_by_key(reply.conn).and_then(Conn::http_driver_mut)
                else {
                    return Ok(());
                };
                if let Some(Pending::RoomInfo {
                    subscribers: total,
                    last_id: last_max,
                    history_len: history_max,
                    ..
                }) = driver.pending.as_deref_mut()
                {
                    *total += subscribers;
                    *last_max = (*last_max).max(last_id);
                    *history_max = (*history_max).max(history_len);
                    assert!(driver.outstanding > 0, "a count nobody waits for");
                    driver.outstanding -= 1;
                    if driver.outstanding == 0 {
                        return self.complete_pending(reply.conn.slot);
                    }
                }
            }
        }
        Ok(())
    }

    pub(super) fn flush_outbox(&mut self) -> std::io::Result<()> {
        for target in 0..self.shards {
            let queue = self.shared.mesh.queue(self.index, target);
            let mut pushed = false;
            let outbox = self.sequencer.outbox_mut(target);
            while let Some(mail) = outbox.pop_front() {
                match queue.push(mail) {
                    Ok(()) => pushed = true,
                    Err(mail) => {
                        outbox.push_front(mail);
                        break;
                    }
                }
            }
            if pushed {
                self.wake_pending[target] = true;
            }
        }
        for target in 0..self.shards {
            if std::mem::take(&mut self.wake_pending[target]) {
                let fd = self.shared.mesh.eventfd(target);
                self.ring.write_eventfd(target as u64, fd);
            }
        }
        Ok(())
    }

    /// Tells each room's owner shard when this shard's subscribers of it come and go, so
    /// the owner never frees a room followed here (single-node mode; in cluster mode every
    /// node follows the broker and no shard owns a room).
    pub(super) fn forward_presence(&mut self) {
        if self.cluster.is_some() {
            while self.fanout.poll_presence().is_some() {}
            return;
        }
        self.sequencer.forward_presence(&mut self.fanout);
    }
}
