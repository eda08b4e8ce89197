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
        let http = Connection::new(now, self.limits()).one_request();
        let slot = self.insert_conn(Conn::new(serial, Pipe::virtual_conn(sink.clone()), http));
        sink.bind(ConnKey { slot, serial });
        if self.virtual_doorbell.is_none() {
            self.virtual_doorbell = sink.doorbell().cloned();
        }
        self.live += 1;
        self.virtual_live += 1;
        if self.live > self.conns_max {
            return self.refuse_unavailable(slot, Rejection::ConnectionLimit);
        }
        // The companion hands the request whole.
        if let Some(conn) = self.conn(slot) {
            if let Some(http) = conn.http_mut() {
                http.handle_received(now, &request);
            }
        }
        self.drive(now, slot)
    }

    /// A tunnel's receive was answered by the companion (virtual_conn.rs): its bytes go to
    /// the connection's WebSocket driver as a socket's would; the end closes it.
    pub(super) fn on_virtual_recv(
        &mut self,
        now: Instant,
        sink: &VirtualSink,
    ) -> std::io::Result<()> {
        let Some(key) = sink.key() else {
            return Ok(());
        };
        let Some(conn) = self.conn_by_key(key).filter(|conn| !conn.closing) else {
            return Ok(());
        };
        let Some(received) = conn.pipe.on_virtual_recv(&mut conn.recv) else {
            return Ok(());
        };
        if conn.is_websocket() {
            return self.ws_received(now, key.slot, received);
        }
        // Only a WebSocket posts a tunnel's receive.
        debug_assert!(
            false,
            "a tunnel's bytes for a connection that is no WebSocket"
        );
        self.begin_close(key.slot)
    }

    /// Puts a connection in a free slot and returns it.
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

    /// The HTTP/1.1 state of the connection in `slot`, unless it was upgraded.
    pub(super) fn http_driver(&mut self, slot: u32) -> Option<&mut HttpDriver> {
        slot_mut(&mut self.conns, slot).and_then(Conn::http_driver_mut)
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

    /// Puts the connection's timer on its HTTP machine's deadline (none: cancelled).
    pub(super) fn sync_timer(&mut self, slot: u32) {
        let Some(conn) = slot_mut(&mut self.conns, slot) else {
            return;
        };
        let want = match &conn.machine {
            _ if conn.closing => None,
            Machine::Ws(ws) => ws.poll_timeout(self.origin),
            Machine::Http(driver) => driver.http.poll_timeout(),
        };
        let want = want.map(|at| Deadline::new(self.origin, at));
        if let (true, Some((_, at)), Some(want)) = (conn.is_websocket(), &conn.timer, want) {
            if *at <= want {
                // A WebSocket's deadline moves with every byte received: the timer stays
                // where it is, and a firing before the deadline only syncs it again.
                return;
            }
        }
        if let Some((key, at)) = conn.timer.take() {
            match want {
                Some(want) if at == want => {
                    conn.timer = Some((key, at));
                    return;
                }
                Some(want) if self.timers.reset(&key, want.at(self.origin)) => {
                    conn.timer = Some((key, want));
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
                    at.at(self.origin),
                    ConnKey {
                        slot,
                        serial: conn.serial,
                    },
                )
                .ok()?;
            Some((key, at))
        });
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
            let origin = self.origin;
            let Some(conn) = self.conn_by_key(key) else {
                continue;
            };
            let Some((_, at)) = conn.timer.take() else {
                continue;
            };
            let at = at.at(origin);
            let handshaking = conn.pipe.handshaking();
            let result = if conn.is_websocket() {
                self.ws_timeout(now.max(at), slot)
            } else if handshaking {
                // No TLS session to write a 408 in.
                self.fail_tls(slot, RefusalReason::TlsHandshakeTimeout)
            } else {
                // The wheel fires within a tick of the deadline: it counts as reached.
                if let Some(http) = conn.http_mut() {
                    http.handle_timeout(now.max(at));
                }
                self.drive(now, slot)
            };
            if let Err(err) = result {
                tracing::warn!(shard = self.index, %err, "timer action failed");
            }
        }
    }
}
