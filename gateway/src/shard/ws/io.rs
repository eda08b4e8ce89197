//! A WebSocket connection after its upgrade, at the ring's and the fan-out's calls: its
//! receive (posted, completed, lent from the ring's pool), its write done, its timer, the
//! fan-out's frames for it, and the drain. The driver state and the upgrade are ws.rs'.
//!
//! Must not touch: frame parsing or close rules (the machine's), the pipe's ops and
//! buffers (pipe.rs).

use super::*;

impl Shard {
    /// Takes subscription `sub` out of the driver's books (it unsubscribed: the fan-out
    /// forgot it, so no write of it is reported done); its frames already queued still go.
    pub(in crate::shard) fn ws_forget(&mut self, slot: u32, sub: ConnId) {
        if let Some(ws) = slot_mut(&mut self.conns, slot).and_then(|c| c.ws_mut()) {
            ws.rooms.retain(|room| room.sub != sub);
        }
    }

    /// Whether the connection in `slot` is a WebSocket.
    pub(in crate::shard) fn is_websocket(&self, slot: u32) -> bool {
        self.conns
            .get(slot as usize)
            .and_then(|c| c.as_deref())
            .is_some_and(|c| c.is_websocket())
    }

    /// Frames the fan-out has for a WebSocket subscriber (taken from `frames`): written
    /// now, after the connection's own frames, or after the write in flight. `cut`: the
    /// fan-out let the subscriber go and these end with a close frame. Returns whether a
    /// write carrying them started.
    pub(in crate::shard) fn ws_fanout_write(
        &mut self,
        slot: u32,
        sub: ConnId,
        frames: &mut Vec<Bytes>,
        cut: bool,
    ) -> std::io::Result<bool> {
        let Some(conn) = slot_mut(&mut self.conns, slot).filter(|c| !c.closing) else {
            frames.clear();
            return Ok(false);
        };
        let Machine::Ws(ws) = &mut conn.machine else {
            frames.clear();
            return Ok(false);
        };
        if ws.fanout_cut {
            // Another subscription's close frame is on its way: nothing may follow it.
            frames.clear();
            return Ok(false);
        }
        let room = ws.rooms.iter_mut().find(|room| room.sub == sub);
        // A cut may come while the subscription's write is in flight (then with no frames).
        debug_assert!(
            (cut && frames.is_empty())
                || room
                    .as_ref()
                    .is_some_and(|room| room.write == RoomWrite::Idle),
            "one fan-out write at a time per subscription"
        );
        if cut {
            if frames.is_empty() {
                // Its write is stuck: nothing more can be said.
                return self.begin_close(slot).map(|()| false);
            }
            ws.fanout_cut = true;
            ws.end_soon(self.now, self.origin);
        } else if let Some(room) = room {
            room.write = RoomWrite::Waiting;
        }
        if conn.pipe.writing() {
            if ws.fanout_frames.capacity() == 0 {
                ws.fanout_frames = self.frame_vecs.pop().unwrap_or_default();
            }
            ws.fanout_frames.append(frames);
            self.sync_timer(slot);
            return Ok(false);
        }
        // No write in flight: the frames go straight into one.
        self.ws_flush_with(slot, None, frames)?;
        Ok(true)
    }

    /// Posts the receive a WebSocket connection wants: none while the machine has bytes
    /// it has not taken, an echo waits, or the machine is over.
    pub(in crate::shard) fn ws_post_recv(&mut self, slot: u32) -> std::io::Result<()> {
        let Some(conn) = slot_mut(&mut self.conns, slot) else {
            return Ok(());
        };
        let Machine::Ws(ws) = &conn.machine else {
            return Ok(());
        };
        if conn.closing
            || conn.pipe.receiving()
            || ws.closed
            || ws.holds_event()
            || !conn.recv.is_empty()
        {
            return Ok(());
        }
        let room = ws.recv_room as usize;
        let into = if room == WS_RECV_BYTES {
            // The idle receive: from the ring's pool, holding nothing while it waits.
            RecvInto::Pooled { room }
        } else {
            RecvInto::Request { room }
        };
        let key = conn.key(slot).to_word();
        conn.pipe
            .post_recv(&mut self.ring, key, &mut conn.recv, into);
        Ok(())
    }

    /// What a WebSocket connection's receive brought (the pipe already decrypted it).
    pub(in crate::shard) fn ws_received(
        &mut self,
        now: Instant,
        slot: u32,
        received: Received,
    ) -> std::io::Result<()> {
        match received {
            Received::Data { closed, .. } => {
                if let Some(conn) = self.conn(slot) {
                    if let Machine::Ws(ws) = &mut conn.machine {
                        // A receive that filled its room: the client sends a lot, ask more.
                        ws.recv_room = if conn.recv.len() >= ws.recv_room as usize {
                            RECV_CHUNK as u32
                        } else {
                            WS_RECV_BYTES as u32
                        };
                    }
                }
                // What rustls wants to send of its own (the write path sends it too).
                self.tls_flush(slot)?;
                if closed {
                    // TLS close_notify: the client sends nothing more. What it sent is
                    // answered (its close echoed), then the connection closes.
                    let origin = self.origin;
                    if let Some(ws) = self.conn(slot).and_then(|c| c.ws_mut()) {
                        ws.closed = true;
                        ws.end_soon(now, origin);
                    }
                }
                self.ws_pump(now, slot)
            }
            Received::Pooled(lease) => {
                if let Some(ws) = self.conn(slot).and_then(|c| c.ws_mut()) {
                    // A receive that filled the pool's buffer: the client sends a lot, ask
                    // more, into the connection's own buffer.
                    ws.recv_room = if lease.len() >= POOL_BUFFER_BYTES {
                        RECV_CHUNK as u32
                    } else {
                        WS_RECV_BYTES as u32
                    };
                }
                self.ws_take_lease(now, slot, lease);
                self.ws_pump(now, slot)
            }
            // The client went without a close handshake (1006): nothing more to tell it.
            Received::Closed => self.begin_close(slot),
            Received::TlsFailed(err) => {
                tracing::debug!(shard = self.index, conn = slot, %err, "TLS receive failed");
                self.fail_tls(slot, RefusalReason::TlsError)
            }
            Received::Discarded { .. } | Received::Hello(_) | Received::HelloTooLarge => {
                debug_assert!(false, "a WebSocket receives plaintext after its handshake");
                self.begin_close(slot)
            }
        }
    }

    /// The bytes of a receive into a pool buffer: the machine takes what it can straight
    /// from it; only the rest (it stopped at an event, or its write queue is full) is copied
    /// into the connection's own buffer, fed as the machine takes more. The buffer goes back
    /// to the pool before any event is answered.
    fn ws_take_lease(&mut self, now: Instant, slot: u32, lease: Lease) {
        if let Some(conn) = slot_mut(&mut self.conns, slot).filter(|c| !c.closing) {
            if let Machine::Ws(ws) = &mut conn.machine {
                let bytes = self.ring.provided(&lease);
                debug_assert!(
                    conn.recv.is_empty() && ws.fed == 0,
                    "no receive is posted while bytes wait"
                );
                let taken = if ws.holds_event() || ws.answers_full() {
                    0
                } else {
                    ws.machine.handle_bytes(now, bytes)
                };
                conn.recv.extend_from_slice(&bytes[taken..]);
            }
        }
        self.ring.give_back(lease);
    }

    /// A write of a WebSocket connection went whole: the fan-out's frames in it are done,
    /// and the connection moves on.
    pub(in crate::shard) fn ws_written(&mut self, now: Instant, slot: u32) -> std::io::Result<()> {
        let Some(ws) = slot_mut(&mut self.conns, slot).and_then(|c| c.ws_mut()) else {
            return Ok(());
        };
        if std::mem::take(&mut ws.write_ends) {
            // The fan-out's close frame is out: nothing more to say.
            return self.begin_close(slot);
        }
        for room in ws.rooms.iter_mut() {
            if room.write == RoomWrite::Writing {
                room.write = RoomWrite::Idle;
                self.fanout.handle_write_done(now, room.sub);
            }
        }
        self.ws_pump(now, slot)
    }

    /// The connection's timer fired: the machine's keep-alive ping, pong timeout or close
    /// timeout.
    pub(in crate::shard) fn ws_timeout(&mut self, now: Instant, slot: u32) -> std::io::Result<()> {
        if let Some(ws) = slot_mut(&mut self.conns, slot).and_then(|c| c.ws_mut()) {
            if ws.end_by.is_some_and(|end| now >= end.at(self.origin)) {
                // Its last frames were not taken in time (a client that does not read).
                return self.begin_close(slot);
            }
            ws.machine.handle_timeout(now);
        }
        self.ws_pump(now, slot)
    }

    /// The shard stops: a connection following rooms is left to the fan-out's drain
    /// (everything accepted before the signal, then its close frame 1001); any other
    /// starts the close handshake with 1001 now.
    pub(in crate::shard) fn ws_drain(&mut self, now: Instant, slot: u32) -> std::io::Result<()> {
        if let Some(ws) = slot_mut(&mut self.conns, slot).and_then(|c| c.ws_mut()) {
            if !ws.rooms.is_empty() {
                return Ok(());
            }
            let reason = ringcast_core::ws::CLOSE_REASON_DRAINING;
            ws.machine.send_close(now, CloseCode::GoingAway, reason);
        }
        self.ws_pump(now, slot)
    }
}
