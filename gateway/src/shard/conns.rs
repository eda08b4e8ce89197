//! The connection table: slots, keys, per-connection limits and timers (armed on the shard's
//! timer wheel, owned by the connection and cancelled with it), and virtual connections
//! opened by the companion.

use super::*;

impl Shard {
    /// Opens a virtual connection for a request the companion thread translated to
    /// HTTP/1.1 (virtual_conn.rs): a slot like an accepted socket's, its request already read.
    pub(super) fn open_virtual(
        &mut self,
        now: Instant,
        request: Vec<u8>,
        sink: Arc<VirtualSink>,
    ) -> std::io::Result<()> {
        if self.live >= self.conns_max + REFUSAL_SLOTS || self.stopping() {
            self.count_rejection(if self.stopping() {
                Rejection::Draining
            } else {
                Rejection::ConnectionLimit
            });
            // Closed without an answer: the companion answers 503 itself.
            sink.close();
            return Ok(());
        }
        let serial = self.serials.take();
        let reader = RequestReader::new(now, &self.limits());
        let slot = self.insert_conn(Conn::new(
            -1,
            serial,
            request,
            false,
            Some(sink.clone()),
            reader,
        ));
        sink.bind(ConnKey { slot, serial });
        if self.virtual_doorbell.is_none() {
            self.virtual_doorbell = sink.doorbell().cloned();
        }
        self.live += 1;
        self.virtual_live += 1;
        if self.live > self.conns_max {
            return self.refuse_unavailable(slot, Rejection::ConnectionLimit);
        }
        self.sync_timer(slot);
        self.process(now, slot)
    }

    /// Puts a connection in a free slot (boxed, so its buffers never move) and returns it.
    pub(super) fn insert_conn(&mut self, conn: Conn) -> u32 {
        let conn = Box::new(conn);
        match self.free.pop() {
            Some(slot) => {
                self.conns[slot as usize] = Some(conn);
                slot
            }
            None => {
                self.conns.push(Some(conn));
                (self.conns.len() - 1) as u32
            }
        }
    }

    pub(super) fn conn(&mut self, slot: u32) -> Option<&mut Conn> {
        slot_mut(&mut self.conns, slot)
    }

    /// The connection `key` names while it is open; `None` once its slot holds another
    /// connection (the serial differs): a stale key never reaches it (conn_key.rs).
    pub(super) fn conn_by_key(&mut self, key: ConnKey) -> Option<&mut Conn> {
        self.conn(key.slot).filter(|c| c.serial == key.serial)
    }

    /// The key of the connection in `slot`; with serial 0, which names no connection, when
    /// the slot is empty.
    pub(super) fn key(&self, slot: u32) -> ConnKey {
        let conn = self.conns.get(slot as usize).and_then(|c| c.as_deref());
        let serial = conn.map_or(0, |c| c.serial);
        ConnKey { slot, serial }
    }

    /// What bounds a request: sizes from the start-up settings (buffers are sized by
    /// them), deadlines from the settings in force.
    pub(super) fn limits(&self) -> Limits {
        Limits {
            header_bytes_max: self.shared.config.max_header_bytes,
            body_bytes_max: self.shared.config.max_message_bytes,
            header_timeout: self.config.header_timeout,
            body_timeout: self.config.body_timeout,
            idle_timeout: self.config.idle_timeout,
        }
    }

    /// Puts the connection's timer on its request reader's deadline (none: cancelled).
    pub(super) fn sync_timer(&mut self, slot: u32) {
        let Some(conn) = slot_mut(&mut self.conns, slot) else {
            return;
        };
        let want = conn.reader.poll_timeout();
        if let Some((key, kind)) = conn.timer.take() {
            match (kind, want) {
                (TimerKind::Request(at), Some(want)) if at == want => {
                    conn.timer = Some((key, kind));
                    return;
                }
                (TimerKind::Request(_), Some(want)) if self.timers.reset(&key, want) => {
                    conn.timer = Some((key, TimerKind::Request(want)));
                    return;
                }
                _ => {
                    self.timers.cancel(key);
                }
            }
        }
        conn.timer = want.and_then(|at| {
            let key = self
                .timers
                .insert(
                    at,
                    ConnKey {
                        slot,
                        serial: conn.serial,
                    },
                )
                .ok()?;
            Some((key, TimerKind::Request(at)))
        });
    }

    pub(super) fn arm_linger(&mut self, now: Instant, slot: u32) {
        let kind = TimerKind::Linger;
        let after = LINGER;
        let Some(conn) = slot_mut(&mut self.conns, slot) else {
            return;
        };
        if let Some((key, old)) = conn.timer.take() {
            if old == kind && self.timers.reset(&key, now + after) {
                conn.timer = Some((key, kind));
                return;
            }
            self.timers.cancel(key);
        }
        conn.timer = self
            .timers
            .insert(
                now + after,
                ConnKey {
                    slot,
                    serial: conn.serial,
                },
            )
            .ok()
            .map(|key| (key, kind));
    }

    pub(super) fn cancel_timer(&mut self, slot: u32) {
        if let Some(conn) = slot_mut(&mut self.conns, slot) {
            if let Some((key, _)) = conn.timer.take() {
                self.timers.cancel(key);
            }
        }
    }

    pub(super) fn expire_timers(&mut self, now: Instant) {
        while let Some(key) = self.timers.poll_expired(now) {
            let slot = key.slot;
            let Some(conn) = self.conn_by_key(key) else {
                continue;
            };
            let Some((_, kind)) = conn.timer.take() else {
                continue;
            };
            let reading = conn.state == State::Reading && !conn.write_in_flight;
            let handshaking = conn.tls.as_ref().is_some_and(|tls| !tls.established());
            let result = match kind {
                TimerKind::Request(_) if reading && handshaking => {
                    self.fail_tls(slot, RefusalReason::TlsHandshakeTimeout)
                }
                TimerKind::Request(at) if reading => {
                    let reason = if conn.reader.phase() == Phase::Body {
                        RefusalReason::BodyTimeout
                    } else {
                        RefusalReason::HeaderTimeout
                    };
                    // The wheel fires within a tick of the deadline: it counts as reached.
                    match conn.reader.handle_timeout(now.max(at)) {
                        Some(Expired::Refuse(refusal)) => {
                            self.count_refusal(reason);
                            self.refuse(slot, &refusal)
                        }
                        Some(Expired::Close) => self.begin_close(slot),
                        None => {
                            self.sync_timer(slot);
                            Ok(())
                        }
                    }
                }
                _ => self.begin_close(slot),
            };
            if let Err(err) = result {
                tracing::warn!(shard = self.index, %err, "timer action failed");
            }
        }
    }
}
