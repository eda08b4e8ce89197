//! The IO side of connections on the ring, through their pipes (pipe.rs: plain, TLS,
//! virtual): posting receives, feeding the plaintext that arrives to the HTTP/1.1 machine
//! (conn/http1), coalesced writes (fan-out frames and the machine's answers), linger and
//! close.

use super::*;

impl Shard {
    /// Posts the receive the connection's HTTP machine wants, unless one is in flight:
    /// request bytes (into the connection's receive buffer, or its TLS receive buffer), or
    /// bytes that only matter for the close (into the ring's discard buffer), or none.
    pub(super) fn post_recv(&mut self, slot: u32) -> std::io::Result<()> {
        let Some(conn) = slot_mut(&mut self.conns, slot) else {
            return Ok(());
        };
        if conn.closing || conn.pipe.receiving() {
            return Ok(());
        }
        let Machine::Http(HttpDriver {
            http, ws_upgrade, ..
        }) = &conn.machine
        else {
            return self.ws_post_recv(slot);
        };
        if ws_upgrade.is_some() && http.awaits_answer() {
            // A room WebSocket waiting for auth and admission: its client sends nothing
            // before the `101` (RFC 6455 §4.1), and a receive posted now would hold a
            // request-sized buffer for as long as the idle viewer stays.
            return Ok(());
        }
        let into = match http.read() {
            Read::Pause => return Ok(()),
            Read::Request { bytes_max } => {
                // Small first; larger as a request grows (a body at its limit).
                let buffered = http.buffered();
                let want = if buffered == 0 {
                    RECV_FIRST
                } else {
                    buffered.clamp(RECV_FIRST, RECV_CHUNK)
                };
                RecvInto::Request {
                    room: bytes_max.clamp(1, want),
                }
            }
            // Subscribers and lingering connections send nothing we keep: their bytes
            // land in the ring's discard buffer and are only counted (over TLS too: the
            // ciphertext is dropped undecrypted, as the plaintext would be).
            Read::Discard => {
                conn.recv = Vec::new();
                RecvInto::Discard
            }
        };
        let key = conn.key(slot).to_word();
        conn.pipe
            .post_recv(&mut self.ring, key, &mut conn.recv, into);
        Ok(())
    }

    /// A receive completed: what came goes to the connection's HTTP machine (decrypted
    /// first over TLS; a ClientHello is read by the TLS layer).
    pub(super) fn on_recv(&mut self, now: Instant, c: Completion) -> std::io::Result<()> {
        let Some(key) = ConnKey::from_word(c.key) else {
            return Ok(());
        };
        let slot = key.slot;
        let Some(conn) = slot_mut(&mut self.conns, slot).filter(|conn| conn.serial == key.serial)
        else {
            // The connection went first: the ring kept the buffer until now.
            self.recycle(c.held);
            return Ok(());
        };
        if conn.closing {
            let held = conn.pipe.settle(c);
            self.recycle(held);
            return Ok(());
        }
        let received = conn
            .pipe
            .on_recv(c, &mut conn.recv, self.shared.tls_http1.as_ref());
        let Machine::Http(HttpDriver { http, .. }) = &mut conn.machine else {
            return self.ws_received(now, slot, received);
        };
        match received {
            Received::Closed => {
                // The client closed (or the receive failed): the machine says what
                // follows (a refusal being written still goes out).
                http.handle_eof();
            }
            Received::Discarded { len } => {
                // Counted only: a flood is cut. A machine that reads a request never gets
                // these zeros: a discard receive is posted only once it stops reading one,
                // and it never reads one again.
                debug_assert!(
                    matches!(http.read(), Read::Discard | Read::Pause),
                    "discarded bytes a request wanted"
                );
                http.handle_received(now, &DISCARDED[..len]);
            }
            Received::Pooled(lease) => {
                // Straight from the pool's buffer (a WebSocket's receive; not posted for
                // requests today).
                http.handle_received(now, self.ring.provided(&lease));
                self.ring.give_back(lease);
            }
            Received::Data {
                established,
                closed,
            } => {
                // The plaintext goes to the machine at once (`recv` is only a scratch).
                http.handle_received(now, &conn.recv);
                conn.recv.clear();
                if closed {
                    http.handle_eof();
                }
                if established {
                    self.count_tls_handshake(TlsHandshake::Http1);
                }
                self.tls_flush(slot)?;
            }
            Received::Hello(Hello::Partial) => {}
            Received::Hello(Hello::Failed) => {
                return self.fail_tls(slot, RefusalReason::TlsError);
            }
            Received::Hello(Hello::H2) => return self.hand_off_h2(slot),
            Received::Hello(Hello::Http1) => {
                self.tls_flush(slot)?;
            }
            Received::HelloTooLarge => {
                return self.fail_tls(slot, RefusalReason::TlsClientHelloTooLarge);
            }
            Received::TlsFailed(err) => {
                tracing::debug!(shard = self.index, conn = slot, %err, "TLS receive failed");
                return self.fail_tls(slot, RefusalReason::TlsError);
            }
        }
        self.drive(now, slot)
    }

    /// A completion for a connection that is gone (its op outlived it: the ring kept the
    /// memory until now) or closing: what it held goes back to the pools.
    pub(super) fn recycle(&mut self, held: Held) {
        match held {
            Held::Frames(frames) => self.recycle_frames(frames),
            Held::Bytes(out) => recycle_tls_out(&mut self.tls_out_pool, out),
            Held::Provided(lease) => self.ring.give_back(lease),
            _ => {}
        }
    }

    /// Keeps a write's frame vector for the next write (idle streams hold none).
    pub(super) fn recycle_frames(&mut self, mut frames: Vec<Bytes>) {
        frames.clear();
        if self.frame_vecs.len() < WRITE_VECS_POOLED_MAX
            && frames.capacity() <= ringcast_core::fanout::WRITE_FRAMES_MAX + 2
            && frames.capacity() != 0
        {
            self.frame_vecs.push(frames);
        }
    }

    /// Hands up to `write_budget` fan-out actions to the ring; returns how many.
    pub(super) fn write_out(&mut self, now: Instant) -> std::io::Result<usize> {
        let budget = self.config.write_budget;
        let stamped = self.shared.config.latency_metrics;
        let mut used = 0;
        while used < budget {
            let mut frames = std::mem::take(&mut self.scratch);
            frames.clear();
            self.stamp_scratch.clear();
            let action = if stamped {
                self.fanout
                    .poll_action_stamped(now, &mut frames, &mut self.stamp_scratch)
            } else {
                self.fanout.poll_action(now, &mut frames)
            };
            match action {
                None => {
                    self.scratch = frames;
                    break;
                }
                Some(Action::Write { conn: sub }) => match self.subscriber_slot(sub) {
                    None => frames.clear(),
                    Some(slot) if self.is_websocket(slot) => {
                        if !self.ws_fanout_write(slot, sub, &mut frames, false)? {
                            // Waits behind the connection's own write: its latency samples
                            // are not kept.
                            self.stamp_scratch.clear();
                        } else if !self.stamp_scratch.is_empty() {
                            self.attach_stamps(slot);
                        }
                    }
                    Some(slot) => {
                        self.start_write(slot, &mut frames)?;
                        if !self.stamp_scratch.is_empty() {
                            self.attach_stamps(slot);
                        }
                    }
                },
                Some(Action::Close { conn: sub, reason }) => match self.subscriber_slot(sub) {
                    None => frames.clear(),
                    // The frames end with the close frame (1013 after `lagged`, 1001 on a
                    // drain): the connection closes once they are written.
                    Some(slot) if self.is_websocket(slot) => {
                        self.ws_fanout_write(slot, sub, &mut frames, true)?;
                    }
                    Some(slot) => {
                        tracing::debug!(
                            shard = self.index,
                            conn = slot,
                            ?reason,
                            "closing subscriber"
                        );
                        let writable = self.conn(slot).is_some_and(|c| {
                            !c.pipe.writing()
                                && c.http()
                                    .is_some_and(|http| http.state() == HttpState::Streaming)
                        });
                        if writable && !frames.is_empty() {
                            if let Some(driver) = self.http_driver(slot) {
                                driver.close_after_write = true;
                            }
                            self.start_write(slot, &mut frames)?;
                        } else {
                            self.begin_close(slot)?;
                        }
                    }
                },
            }
            self.scratch = frames;
            used += 1;
        }
        Ok(used)
    }

    /// The slot of the connection holding fan-out subscription `sub`, while it is open.
    pub(super) fn subscriber_slot(&mut self, sub: ConnId) -> Option<u32> {
        let key = self.subs.owner(sub)?;
        self.conn_by_key(key).map(|_| key.slot)
    }

    /// Hands the stamps of the write just started on `slot` to the connection, which
    /// records their latency when the write completes.
    pub(super) fn attach_stamps(&mut self, slot: u32) {
        let Some(conn) = slot_mut(&mut self.conns, slot).filter(|c| c.pipe.writing()) else {
            self.stamp_scratch.clear();
            return;
        };
        debug_assert!(conn.stamps.is_empty(), "one write in flight per connection");
        if conn.stamps.capacity() == 0 {
            conn.stamps = self.stamp_vecs.pop().unwrap_or_default();
        }
        conn.stamps.clear();
        std::mem::swap(&mut conn.stamps, &mut self.stamp_scratch);
    }

    /// Starts one write of `frames` (taken) on `slot`.
    pub(super) fn start_write(
        &mut self,
        slot: u32,
        frames: &mut Vec<Bytes>,
    ) -> std::io::Result<()> {
        let Some(conn) = slot_mut(&mut self.conns, slot) else {
            frames.clear();
            return Ok(());
        };
        if conn.closing {
            frames.clear();
            return Ok(());
        }
        let frames = std::mem::replace(frames, self.frame_vecs.pop().unwrap_or_default());
        let len = frames.iter().map(Bytes::len).sum();
        let key = conn.key(slot).to_word();
        let started =
            conn.pipe
                .start_write(&mut self.ring, key, frames, len, &mut self.tls_out_pool);
        if let Err(frames) = started {
            debug_assert!(false, "one write in flight per virtual connection");
            self.recycle_frames(frames);
            return self.begin_close(slot);
        }
        // A TLS write encrypted whole: its frames are back in the pool at once.
        if let Some(frames) = conn.pipe.take_spent_frames() {
            self.recycle_frames(frames);
        }
        self.pending_write_bytes += len;
        Ok(())
    }

    /// A ring write of a connection completed (a plain writev, a TLS send).
    pub(super) fn on_write(&mut self, now: Instant, c: Completion) -> std::io::Result<()> {
        let Some(key) = ConnKey::from_word(c.key) else {
            return Ok(());
        };
        let Some(conn) =
            slot_mut(&mut self.conns, key.slot).filter(|conn| conn.serial == key.serial)
        else {
            // The connection went first: the ring kept the frames until now.
            self.recycle(c.held);
            return Ok(());
        };
        if conn.closing {
            let held = conn.pipe.settle(c);
            self.recycle(held);
            return Ok(());
        }
        let wrote = conn
            .pipe
            .on_write(&mut self.ring, c, &mut self.tls_out_pool);
        self.after_write(now, key.slot, wrote)
    }

    /// Moves a connection on after its write made progress, went whole or failed.
    pub(super) fn after_write(
        &mut self,
        now: Instant,
        slot: u32,
        wrote: Wrote,
    ) -> std::io::Result<()> {
        match wrote {
            Wrote::Progress { credited } => {
                self.pending_write_bytes -= credited;
                Ok(())
            }
            Wrote::Done { credited, frames } => {
                self.pending_write_bytes -= credited;
                self.recycle_frames(frames);
                self.write_complete(now, slot)
            }
            Wrote::Idle => {
                let linger = self
                    .conn(slot)
                    .is_some_and(|conn| conn.pipe.take_linger_after_send());
                if linger {
                    return self.linger(now, slot);
                }
                Ok(())
            }
            // The peer is gone: the write is forgotten by the close.
            Wrote::Failed => self.begin_close(slot),
        }
    }

    /// A write was delivered whole: records its latency samples, hands its vectors back
    /// to the shard, and moves the connection on (next request, fan-out, linger, close).
    pub(super) fn write_complete(&mut self, now: Instant, slot: u32) -> std::io::Result<()> {
        let Some(conn) = slot_mut(&mut self.conns, slot) else {
            return Ok(());
        };
        // Delivered: one latency sample per message frame the write carried.
        for &stamp in &conn.stamps {
            if stamp != 0 {
                self.latency_turn
                    .record(self.now_unix.saturating_sub(stamp));
            }
        }
        if conn.stamps.capacity() != 0 {
            conn.stamps.clear();
            if self.stamp_vecs.len() < STAMP_VECS_POOLED_MAX
                && conn.stamps.capacity() <= ringcast_core::fanout::WRITE_FRAMES_MAX
            {
                self.stamp_vecs.push(std::mem::take(&mut conn.stamps));
            } else {
                conn.stamps = Vec::new();
            }
        }
        let Machine::Http(HttpDriver {
            http,
            close_after_write,
            sub,
            ..
        }) = &mut conn.machine
        else {
            return self.ws_written(now, slot);
        };
        if *close_after_write {
            return self.begin_close(slot);
        }
        if http.state() == HttpState::Streaming {
            // The fan-out's write: its next one may go.
            if let Some(sub) = *sub {
                self.fanout.handle_write_done(now, sub);
            }
            return Ok(());
        }
        // The machine's write (an answer, `100 Continue`, a refusal): it goes on with the
        // next request, the body, a linger or a close.
        http.on_written(now);
        self.drive(now, slot)
    }

    /// A refusal is written: the pipe half-closes (TLS after its `close_notify` is sent,
    /// see [`Self::after_write`]) and the connection reads until the client closes or the
    /// machine's linger deadline passes, so the client reads the answer, not a reset; a
    /// virtual connection just closes.
    pub(super) fn start_linger(&mut self, _now: Instant, slot: u32) -> std::io::Result<()> {
        let Some(conn) = slot_mut(&mut self.conns, slot) else {
            return Ok(());
        };
        let key = conn.key(slot).to_word();
        match conn
            .pipe
            .linger(&mut self.ring, key, &mut self.tls_out_pool)
        {
            Linger::Close => self.begin_close(slot),
            Linger::AfterSend => Ok(()),
            Linger::Now => self.post_recv(slot),
        }
    }

    /// After a refusal was written (and over TLS its `close_notify` sent): half-closes and
    /// reads (into the discard buffer).
    pub(super) fn linger(&mut self, _now: Instant, slot: u32) -> std::io::Result<()> {
        let Some(conn) = self.conn(slot) else {
            return Ok(());
        };
        conn.pipe.shutdown_write();
        self.post_recv(slot)
    }

    /// Answers the request the connection's machine handed out (a HEAD's loses its body).
    pub(super) fn respond(&mut self, slot: u32, response: Bytes) -> std::io::Result<()> {
        let Some(conn) = self.conn(slot) else {
            return Ok(());
        };
        if let Some(http) = conn.http_mut() {
            http.respond(response);
        }
        self.drive(self.now, slot)
    }

    /// Writes a refusal, then lingers: reads until the client closes so it gets the
    /// answer rather than a reset.
    pub(super) fn refuse(&mut self, slot: u32, refusal: &Refusal) -> std::io::Result<()> {
        tracing::debug!(shard = self.index, conn = slot, status = refusal.status, reason = %refusal.reason, "request refused");
        self.refuse_with(slot, http1::refusal(refusal, true))
    }

    /// [`Self::refuse`] with a response already rendered (e.g. a computed `Retry-After`).
    pub(super) fn refuse_with(&mut self, slot: u32, response: Bytes) -> std::io::Result<()> {
        let now = self.now;
        let Some(conn) = self.conn(slot) else {
            return Ok(());
        };
        if conn.pipe.handshaking() {
            // No TLS session to write the answer in: close (the caller counted why).
            return self.begin_close(slot);
        }
        if let Some(http) = conn.http_mut() {
            http.refuse(now, response);
        }
        self.drive(now, slot)
    }

    /// Closes a connection: its write in progress is forgotten, and its pipe closes
    /// (on the ring, or at once for a virtual one). Ops still in flight complete on their
    /// own and keep their memory until then; the slot is released at the close's
    /// completion.
    pub(super) fn begin_close(&mut self, slot: u32) -> std::io::Result<()> {
        self.cancel_timer(slot);
        let Some(conn) = slot_mut(&mut self.conns, slot) else {
            return Ok(());
        };
        if conn.closing {
            return Ok(());
        }
        conn.closing = true;
        if let Some(http) = conn.http_mut() {
            http.close();
        }
        let key = conn.key(slot).to_word();
        let forgotten = conn.pipe.forget_write();
        if forgotten.is_some() {
            // Abandoned: nothing more of it will be written, and nothing was delivered.
            conn.stamps.clear();
        }
        let closing = conn.pipe.close(&mut self.ring, key);
        let virtual_conn = conn.pipe.is_virtual();
        // Its subscriptions leave the fan-out (a no-op for one the fan-out already let go)
        // and their ids are free.
        let ws_rooms = conn.ws_mut().map(|ws| std::mem::take(&mut ws.rooms));
        let subs = conn
            .http_driver_mut()
            .and_then(|h| h.sub.take())
            .into_iter();
        let ws_subs = ws_rooms
            .iter()
            .flat_map(|rooms| rooms.iter())
            .map(|held| held.sub);
        for sub in subs.chain(ws_subs) {
            self.fanout.handle_disconnect(sub);
            self.subs.remove(sub);
        }
        if let Some((remaining, frames)) = forgotten {
            self.pending_write_bytes -= remaining;
            self.recycle_frames(frames);
        }
        if closing == Closing::Done {
            if virtual_conn {
                self.virtual_live -= 1;
            }
            self.on_closed(key);
        }
        Ok(())
    }

    /// A connection's close completed (or it had nothing to close): its slot is free.
    pub(super) fn on_closed(&mut self, key: u64) {
        let Some(key) = ConnKey::from_word(key) else {
            return;
        };
        let slot = key.slot;
        let open = self
            .conns
            .get_mut(slot as usize)
            .filter(|conn| conn.as_ref().is_some_and(|conn| conn.serial == key.serial));
        if let Some(conn) = open.and_then(Option::take) {
            debug_assert!(
                conn.timer.is_none(),
                "a released connection holds no ticker"
            );
            debug_assert!(
                match &conn.machine {
                    Machine::Http(driver) => driver.sub.is_none(),
                    Machine::Ws(ws) => ws.rooms.is_empty(),
                },
                "a released connection holds no subscription id"
            );
            if let Some(ip) = conn.peer {
                self.shared.per_ip.release(ip);
            }
            if conn.pipe.is_tls() {
                self.tls_live -= 1;
                self.shared.figures[self.index].transport_closed(Transport::Tls);
            }
            if let Some(ws) = conn.ws() {
                self.shared.figures[self.index].websocket_closed(ws.transport());
            }
            self.live -= 1;
            self.free.push(slot);
            for pacer in &mut self.accept_pacers {
                pacer.handle_descriptor_freed();
            }
        }
    }
}

/// What the machine is handed for bytes the ring dropped into its discard buffer (it only
/// counts them: they are a stream's or a refused client's, never read).
static DISCARDED: [u8; crate::uring::ring::DISCARD_BYTES] = [0; crate::uring::ring::DISCARD_BYTES];
