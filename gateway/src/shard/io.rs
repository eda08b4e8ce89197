//! The IO side of plain connections on the ring: posting receives, feeding what arrives to
//! the HTTP/1.1 machine (conn/http1), coalesced writes (fan-out frames and the machine's
//! answers), linger and close.

use super::*;

impl Shard {
    /// Posts the receive the connection's HTTP machine wants, unless one is in flight:
    /// request bytes (into the connection's receive buffer, or its TLS receive buffer), or
    /// bytes that only matter for the close (into the shard's discard buffer), or none.
    pub(super) fn post_recv(&mut self, slot: u32) -> std::io::Result<()> {
        let discard_ptr = self.discard.as_mut_ptr();
        let discard_len = self.discard.len() as u32;
        let Some(conn) = slot_mut(&mut self.conns, slot) else {
            return Ok(());
        };
        if conn.recv_in_flight || conn.closing || conn.sink.is_some() {
            return Ok(());
        }
        let (ptr, len, discards) = match (conn.http.read(), conn.tls.as_deref_mut()) {
            (Read::Pause, _) => return Ok(()),
            (Read::Request { .. }, Some(tls)) if tls.in_hello() => {
                // The raw ClientHello stays in `recv` (an `h2` client is handed on with it).
                let room = crate::conn::tls::CLIENT_HELLO_BYTES_MAX
                    .saturating_sub(conn.recv.len())
                    .clamp(1, RECV_FIRST);
                conn.recv.reserve(room);
                let spare = conn.recv.spare_capacity_mut();
                (
                    spare.as_mut_ptr().cast::<u8>(),
                    spare.len().min(room) as u32,
                    false,
                )
            }
            (Read::Request { .. }, Some(tls)) => {
                let buf = tls.recv_buffer();
                (buf.as_mut_ptr(), buf.len() as u32, false)
            }
            (Read::Request { bytes_max }, None) => {
                // Small first; larger as a request grows (a body at its limit).
                let buffered = conn.http.buffered();
                let want = if buffered == 0 {
                    RECV_FIRST
                } else {
                    buffered.clamp(RECV_FIRST, RECV_CHUNK)
                };
                let room = bytes_max.clamp(1, want);
                debug_assert!(
                    conn.recv.is_empty(),
                    "received bytes go to the machine at once"
                );
                conn.recv.clear();
                conn.recv.reserve(room);
                let spare = conn.recv.spare_capacity_mut();
                (
                    spare.as_mut_ptr().cast::<u8>(),
                    spare.len().min(room) as u32,
                    false,
                )
            }
            // Subscribers and lingering connections send nothing we keep: their bytes
            // land in the shard's discard buffer, which is only counted (over TLS too: the
            // ciphertext is dropped undecrypted, as the plaintext would be).
            (Read::Discard, tls) => {
                if let Some(tls) = tls {
                    tls.release_recv();
                }
                conn.recv = Vec::new();
                (discard_ptr, discard_len, true)
            }
        };
        conn.recv_in_flight = true;
        conn.recv_discards = discards;
        let fd = conn.fd;
        // SAFETY: the receive buffer (or the TLS receive buffer, boxed in the slot) is
        // neither touched nor reallocated while `recv_in_flight` is set, and the slot
        // (boxed) outlives the operation; the discard buffer lives as long as the shard and
        // is never read but for its length.
        unsafe { self.ring.recv(slot, fd, ptr, len) }
    }

    pub(super) fn on_recv(&mut self, now: Instant, slot: u32, result: i32) -> std::io::Result<()> {
        let Some(conn) = slot_mut(&mut self.conns, slot) else {
            return Ok(());
        };
        conn.recv_in_flight = false;
        let discarded = std::mem::take(&mut conn.recv_discards);
        if conn.closing {
            return self.finish_close(slot);
        }
        if result <= 0 {
            // The client closed (or the receive failed): the machine says what follows
            // (a refusal being written still goes out).
            conn.http.handle_eof();
            return self.drive(now, slot);
        }
        let len = result as usize;
        if discarded {
            // Counted only: a flood is cut.
            conn.http.handle_received(now, &self.discard[..len]);
        } else if conn.tls.is_some() {
            return self.on_tls_recv(now, slot, len);
        } else {
            // SAFETY: the kernel initialised `len` bytes of the spare capacity.
            unsafe { conn.recv.set_len(conn.recv.len() + len) };
            conn.http.handle_received(now, &conn.recv);
            conn.recv.clear();
        }
        self.drive(now, slot)
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
                Some(Action::Write { conn }) => {
                    self.start_write(conn.0, &mut frames)?;
                    if !self.stamp_scratch.is_empty() {
                        self.attach_stamps(conn.0);
                    }
                }
                Some(Action::Close { conn, reason }) => {
                    tracing::debug!(
                        shard = self.index,
                        conn = conn.0,
                        ?reason,
                        "closing subscriber"
                    );
                    let writable = self.conn(conn.0).is_some_and(|c| {
                        !c.write_in_flight && c.http.state() == HttpState::Streaming
                    });
                    if writable && !frames.is_empty() {
                        if let Some(c) = self.conn(conn.0) {
                            c.close_after_write = true;
                        }
                        self.start_write(conn.0, &mut frames)?;
                    } else {
                        self.begin_close(conn.0)?;
                    }
                }
            }
            self.scratch = frames;
            used += 1;
        }
        Ok(used)
    }

    /// Hands the stamps of the write just started on `slot` to the connection, which
    /// records their latency when the write completes.
    pub(super) fn attach_stamps(&mut self, slot: u32) {
        let Some(conn) = slot_mut(&mut self.conns, slot).filter(|c| c.write_in_flight) else {
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

    /// Starts one writev of `frames` (taken) on `slot`.
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
            return self.finish_close(slot);
        }
        debug_assert!(!conn.write_in_flight, "one write in flight per connection");
        conn.frames = std::mem::replace(frames, self.frame_vecs.pop().unwrap_or_default());
        if conn.iov.capacity() == 0 {
            conn.iov = self.iov_vecs.pop().unwrap_or_default();
        }
        conn.write_len = conn.frames.iter().map(Bytes::len).sum();
        conn.written = 0;
        self.pending_write_bytes += conn.write_len;
        self.submit_write(slot)
    }

    pub(super) fn submit_write(&mut self, slot: u32) -> std::io::Result<()> {
        let Some(conn) = slot_mut(&mut self.conns, slot) else {
            return Ok(());
        };
        if let Some(sink) = &conn.sink {
            // Virtual: the companion takes the frames; the write stays in flight until it
            // mails `VirtualWriteDone` (or the connection closes).
            conn.write_in_flight = true;
            let sink = sink.clone();
            if sink.push(std::mem::take(&mut conn.frames)).is_err() {
                debug_assert!(false, "one write in flight per virtual connection");
                return self.begin_close(slot);
            }
            return Ok(());
        }
        if let Some(tls) = conn.tls.as_deref_mut() {
            // Encrypted and sent a chunk at a time (`tls_flush`, `on_tls_write`); the write
            // stays in flight until its last byte is sent.
            conn.write_in_flight = true;
            tls.start_write();
            if !self.tls_flush(slot)? {
                // Nothing to send (an empty write): a zero-length send completes it.
                return self.submit_tls_send(slot, false);
            }
            return Ok(());
        }
        conn.iov.clear();
        let mut skip = conn.written;
        for frame in &conn.frames {
            if skip >= frame.len() {
                skip -= frame.len();
                continue;
            }
            conn.iov.push(libc::iovec {
                iov_base: frame[skip..].as_ptr() as *mut libc::c_void,
                iov_len: frame.len() - skip,
            });
            skip = 0;
        }
        conn.write_in_flight = true;
        let (fd, iov, count) = (conn.fd, conn.iov.as_ptr(), conn.iov.len() as u32);
        // SAFETY: `iov` and the frames it points into are owned by the boxed connection
        // slot and are not modified until this write's completion is reaped
        // (`write_in_flight`); the slot is freed only after that.
        unsafe { self.ring.writev(slot, fd, iov, count) }
    }

    pub(super) fn on_write(&mut self, now: Instant, slot: u32, result: i32) -> std::io::Result<()> {
        if result > 0 {
            self.bytes_written += result as u64;
        }
        let Some(conn) = slot_mut(&mut self.conns, slot) else {
            return Ok(());
        };
        if conn.tls.is_some() {
            return self.on_tls_write(now, slot, result);
        }
        conn.write_in_flight = false;
        debug_assert!(conn.written <= conn.write_len);
        let remaining = conn.write_len - conn.written;
        if conn.closing || result < 0 {
            // Abandoned: nothing more of it will be written, and nothing was delivered.
            self.pending_write_bytes -= remaining;
            conn.frames.clear();
            conn.stamps.clear();
            return if conn.closing {
                self.finish_close(slot)
            } else {
                self.begin_close(slot)
            };
        }
        conn.written += result as usize;
        self.pending_write_bytes -= (result as usize).min(remaining);
        if conn.written < conn.write_len {
            return self.submit_write(slot);
        }
        self.write_complete(now, slot)
    }

    /// A write was delivered whole: records its latency samples, hands its vectors back
    /// to the shard, and moves the connection on (next request, fan-out, linger, close).
    pub(super) fn write_complete(&mut self, now: Instant, slot: u32) -> std::io::Result<()> {
        let Some(conn) = slot_mut(&mut self.conns, slot) else {
            return Ok(());
        };
        conn.write_in_flight = false;
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
        conn.frames.clear();
        conn.iov.clear();
        // Hand the vectors back to the shard: idle streams hold none.
        if self.frame_vecs.len() < WRITE_VECS_POOLED_MAX
            && conn.frames.capacity() <= ringcast_core::fanout::WRITE_FRAMES_MAX + 2
        {
            self.frame_vecs.push(std::mem::take(&mut conn.frames));
            self.iov_vecs.push(std::mem::take(&mut conn.iov));
        } else {
            conn.frames = Vec::new();
            conn.iov = Vec::new();
        }
        if conn.close_after_write {
            return self.begin_close(slot);
        }
        if conn.http.state() == HttpState::Streaming {
            // The fan-out's write: its next one may go.
            self.fanout.handle_write_done(now, ConnId(slot));
            return Ok(());
        }
        // The machine's write (an answer, `100 Continue`, a refusal): it goes on with the
        // next request, the body, a linger or a close.
        conn.http.on_written(now);
        self.drive(now, slot)
    }

    /// A refusal is written: a virtual connection closes; TLS sends `close_notify` first;
    /// then [`Self::linger`].
    pub(super) fn start_linger(&mut self, now: Instant, slot: u32) -> std::io::Result<()> {
        let Some(conn) = self.conn(slot) else {
            return Ok(());
        };
        if conn.sink.is_some() {
            return self.begin_close(slot);
        }
        if conn.tls.is_some() {
            return self.tls_linger(now, slot);
        }
        self.linger(now, slot)
    }

    /// After a refusal was written: half-closes and reads (into the discard buffer) until
    /// the client closes or the machine's linger deadline passes, so the client reads the
    /// answer, not a reset.
    pub(super) fn linger(&mut self, _now: Instant, slot: u32) -> std::io::Result<()> {
        let Some(conn) = self.conn(slot) else {
            return Ok(());
        };
        // SAFETY: shutdown takes no memory; the fd is open while the slot lives.
        unsafe { libc::shutdown(conn.fd, libc::SHUT_WR) };
        self.post_recv(slot)
    }

    /// Answers the request the connection's machine handed out (a HEAD's loses its body).
    pub(super) fn respond(&mut self, slot: u32, response: Bytes) -> std::io::Result<()> {
        let Some(conn) = self.conn(slot) else {
            return Ok(());
        };
        conn.http.respond(response);
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
        if conn.tls.as_ref().is_some_and(|tls| !tls.established()) {
            // No TLS session to write the answer in: close (the caller counted why).
            return self.begin_close(slot);
        }
        conn.http.refuse(now, response);
        self.drive(now, slot)
    }

    pub(super) fn begin_close(&mut self, slot: u32) -> std::io::Result<()> {
        self.cancel_timer(slot);
        let Some(conn) = slot_mut(&mut self.conns, slot) else {
            return Ok(());
        };
        if conn.closing {
            return Ok(());
        }
        conn.closing = true;
        conn.http.close();
        if conn.tls.is_some() {
            self.begin_tls_close(slot)?;
        } else if conn.recv_in_flight || conn.write_in_flight {
            // SAFETY: shutdown takes no memory; it makes in-flight operations complete.
            unsafe { libc::shutdown(conn.fd, libc::SHUT_RDWR) };
        }
        // A subscriber leaves the fan-out (a no-op for a connection that never streamed:
        // its slot's id names no one else).
        self.fanout.handle_disconnect(ConnId(slot));
        self.finish_close(slot)
    }

    pub(super) fn finish_close(&mut self, slot: u32) -> std::io::Result<()> {
        let Some(conn) = slot_mut(&mut self.conns, slot) else {
            return Ok(());
        };
        if let Some(sink) = conn.sink.clone() {
            if !conn.closing {
                return Ok(());
            }
            if conn.write_in_flight {
                // The companion holds the frames (refcounted); nothing waits for them.
                self.pending_write_bytes -= conn.forget_write();
            }
            sink.close();
            self.virtual_live -= 1;
            self.on_closed(slot);
            return Ok(());
        }
        // A TLS connection's frames are never the kernel's: only its send is waited for.
        let write_in_flight = match conn.tls.as_deref() {
            Some(tls) => tls.sending,
            None => conn.write_in_flight,
        };
        if !conn.closing || conn.recv_in_flight || write_in_flight || conn.close_submitted {
            return Ok(());
        }
        conn.close_submitted = true;
        let fd = conn.fd;
        self.ring.close(slot, fd)
    }

    pub(super) fn on_closed(&mut self, slot: u32) {
        if let Some(conn) = self.conns.get_mut(slot as usize).and_then(Option::take) {
            debug_assert!(
                conn.timer.is_none(),
                "a released connection holds no ticker"
            );
            if let Some(ip) = conn.peer {
                self.shared.per_ip.release(ip);
            }
            if conn.tls.is_some() {
                self.tls_live -= 1;
                self.shared.figures[self.index].transport_closed(Transport::Tls);
            }
            self.live -= 1;
            self.free.push(slot);
            for pacer in &mut self.accept_pacers {
                pacer.handle_descriptor_freed();
            }
        }
    }
}
