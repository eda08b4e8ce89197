//! TLS connections on the ring: ciphertext in and out through the sans-IO `TlsConn`, the
//! hand-off of `h2` clients to the companion, TLS close and linger.

use super::*;

impl Shard {
    /// Counts a TLS connection's outcome (`ringcast_tls_handshakes_total`).
    pub(super) fn count_tls_handshake(&self, outcome: TlsHandshake) {
        self.shared.figures[self.index].add_tls_handshake(outcome);
    }

    /// Ciphertext the ring received on a TLS connection reading a request (or its
    /// ClientHello).
    pub(super) fn on_tls_recv(
        &mut self,
        now: Instant,
        slot: u32,
        len: usize,
    ) -> std::io::Result<()> {
        let Some(config) = self.shared.tls_http1.as_ref() else {
            return self.begin_close(slot);
        };
        let Some(conn) = slot_mut(&mut self.conns, slot) else {
            return Ok(());
        };
        let Some(tls) = conn.tls.as_deref_mut() else {
            return Ok(());
        };
        if tls.in_hello() {
            let old = conn.recv.len();
            // SAFETY: the kernel initialised `len` bytes of the spare capacity.
            unsafe { conn.recv.set_len(old + len) };
            let hello = tls.hello(&conn.recv[old..], config);
            let full = conn.recv.len() >= crate::conn::tls::CLIENT_HELLO_BYTES_MAX;
            return match hello {
                Hello::Partial if full => {
                    self.fail_tls(slot, RefusalReason::TlsClientHelloTooLarge)
                }
                Hello::Partial => self.post_recv(slot),
                Hello::Failed => self.fail_tls(slot, RefusalReason::TlsError),
                Hello::H2 => self.hand_off_h2(slot),
                Hello::Http1 => {
                    conn.recv = Vec::new();
                    self.tls_flush(slot)?;
                    self.post_recv(slot)
                }
            };
        }
        // The plaintext goes to the machine at once (`recv` is only a scratch here).
        let received = tls.receive(len, &mut conn.recv);
        conn.http.handle_received(now, &conn.recv);
        conn.recv.clear();
        let received = match received {
            Ok(received) => received,
            Err(err) => {
                tracing::debug!(shard = self.index, conn = slot, %err, "TLS receive failed");
                return self.fail_tls(slot, RefusalReason::TlsError);
            }
        };
        if received.established {
            self.count_tls_handshake(TlsHandshake::Http1);
        }
        if received.closed {
            if let Some(conn) = self.conn(slot) {
                conn.http.handle_eof();
            }
        }
        self.tls_flush(slot)?;
        self.drive(now, slot)
    }

    /// Closes a TLS connection whose handshake or records failed (an alert rustls made is
    /// sent first, without waiting for the peer), counted by `reason`.
    pub(super) fn fail_tls(&mut self, slot: u32, reason: RefusalReason) -> std::io::Result<()> {
        self.count_refusal(reason);
        let Some(conn) = self.conn(slot) else {
            return Ok(());
        };
        let established = conn.tls.as_ref().is_some_and(|tls| tls.established());
        if let Some(tls) = conn.tls.as_deref_mut() {
            tls.fail();
        }
        if !established {
            self.count_tls_handshake(TlsHandshake::Failed);
        }
        tracing::debug!(
            shard = self.index,
            conn = slot,
            reason = reason.label(),
            "TLS connection closed"
        );
        self.begin_close(slot)
    }

    /// Hands a connection whose client offers ALPN `h2` to the companion thread, with the
    /// bytes read so far; its slot is released without closing the fd (the companion owns
    /// it now, and the per-address count until it closes). A full queue closes it.
    pub(super) fn hand_off_h2(&mut self, slot: u32) -> std::io::Result<()> {
        self.cancel_timer(slot);
        let Some(conn) = slot_mut(&mut self.conns, slot) else {
            return Ok(());
        };
        debug_assert!(!conn.recv_in_flight && !conn.write_in_flight);
        // SAFETY: `conn.fd` is this connection's open socket with no operation in flight;
        // the `OwnedFd` owns it from here: either the companion gets it, or it is given
        // back to the slot below (`into_raw_fd`) and closed on the ring as usual.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(conn.fd) };
        let handoff = crate::mesh::mail::TlsHandOff {
            fd,
            hello: std::mem::take(&mut conn.recv),
            peer: conn.peer,
        };
        let sent = match self.shared.tls_handoff.get(self.index) {
            Some(queue) => queue.try_send(handoff).map_err(|err| err.into_inner()),
            None => Err(handoff),
        };
        match sent {
            Ok(()) => {
                self.count_tls_handshake(TlsHandshake::H2);
                if let Some(conn) = self.conns.get_mut(slot as usize).and_then(Option::take) {
                    debug_assert!(conn.timer.is_none());
                    self.tls_live -= 1;
                    self.shared.figures[self.index].transport_closed(Transport::Tls);
                    self.live -= 1;
                    self.free.push(slot);
                }
                Ok(())
            }
            Err(handoff) => {
                if let Some(conn) = self.conn(slot) {
                    conn.fd = std::os::fd::IntoRawFd::into_raw_fd(handoff.fd);
                }
                tracing::debug!(
                    shard = self.index,
                    conn = slot,
                    "companion queue full: h2 connection closed"
                );
                self.count_rejection(Rejection::ShardQueues);
                self.count_tls_handshake(TlsHandshake::Failed);
                self.begin_close(slot)
            }
        }
    }

    /// Starts the next send of a TLS connection unless one is in flight: what rustls has
    /// queued (handshake, tickets, alerts) and the next chunk of the write in progress.
    /// Returns whether a send is in flight afterwards.
    pub(super) fn tls_flush(&mut self, slot: u32) -> std::io::Result<bool> {
        let Some(conn) = slot_mut(&mut self.conns, slot) else {
            return Ok(false);
        };
        let Some(tls) = conn.tls.as_deref_mut() else {
            return Ok(false);
        };
        if tls.sending {
            return Ok(true);
        }
        if tls.needs_out_buffer() {
            if let Some(buffer) = self.tls_out_pool.pop() {
                tls.provide_out(buffer);
            }
        }
        let (frames, write_len) = if conn.write_in_flight {
            (&conn.frames[..], conn.write_len)
        } else {
            (&[][..], 0)
        };
        if tls.fill(frames, write_len) {
            self.submit_tls_send(slot, false)?;
            return Ok(true);
        }
        if let Some(buffer) = tls.take_idle_out() {
            if self.tls_out_pool.len() < TLS_OUT_POOLED_MAX
                && buffer.capacity() <= 2 * crate::conn::tls::SEND_CHUNK_BYTES
            {
                self.tls_out_pool.push(buffer);
            }
        }
        Ok(false)
    }

    /// Submits a send of the TLS connection's pending ciphertext; `nowait`: completes at
    /// once rather than wait for room (a closing connection's last words).
    pub(super) fn submit_tls_send(&mut self, slot: u32, nowait: bool) -> std::io::Result<()> {
        let Some(conn) = slot_mut(&mut self.conns, slot) else {
            return Ok(());
        };
        let Some(tls) = conn.tls.as_deref_mut() else {
            return Ok(());
        };
        if conn.iov.capacity() == 0 {
            conn.iov = self.iov_vecs.pop().unwrap_or_default();
        }
        let pending = tls.pending_out();
        let iovec = libc::iovec {
            iov_base: pending.as_ptr() as *mut libc::c_void,
            iov_len: pending.len(),
        };
        conn.iov.clear();
        conn.iov.push(iovec);
        tls.sending = true;
        let (fd, iov) = (conn.fd, conn.iov.as_ptr());
        // SAFETY: the iovec and the send buffer it points into live in the boxed slot and
        // are not touched while `sending` is set (`TlsConn::fill` and `close_notify` check
        // it); the slot is freed only after the completion (`finish_close` waits for it).
        unsafe {
            if nowait {
                self.ring.writev_nowait(slot, fd, iov, 1)
            } else {
                self.ring.writev(slot, fd, iov, 1)
            }
        }
    }

    /// A TLS connection's send completed.
    pub(super) fn on_tls_write(
        &mut self,
        now: Instant,
        slot: u32,
        result: i32,
    ) -> std::io::Result<()> {
        if result > 0 {
            self.bytes_written += result as u64;
        }
        let Some(conn) = slot_mut(&mut self.conns, slot) else {
            return Ok(());
        };
        let Some(tls) = conn.tls.as_deref_mut() else {
            return Ok(());
        };
        tls.sending = false;
        if conn.closing {
            // The write was abandoned when the close began; only the send was waited for.
            return self.finish_close(slot);
        }
        if result < 0 {
            // The peer is gone: nothing more to tell it.
            tls.fail();
            return self.begin_close(slot);
        }
        let Some(plain) = tls.on_sent(result as usize) else {
            return self.submit_tls_send(slot, false);
        };
        if conn.write_in_flight {
            debug_assert!(conn.written <= conn.write_len);
            let credit = plain.min(conn.write_len - conn.written);
            conn.written += credit;
            self.pending_write_bytes -= credit;
        }
        if self.tls_flush(slot)? {
            return Ok(());
        }
        let Some(conn) = slot_mut(&mut self.conns, slot) else {
            return Ok(());
        };
        if conn.write_in_flight {
            return self.write_complete(now, slot);
        }
        let linger = conn
            .tls
            .as_deref_mut()
            .is_some_and(|tls| std::mem::take(&mut tls.linger_after_send));
        if linger {
            return self.linger(now, slot);
        }
        Ok(())
    }

    /// A refusal was written over TLS: `close_notify`, then half-close and linger as a
    /// plain connection does.
    pub(super) fn tls_linger(&mut self, now: Instant, slot: u32) -> std::io::Result<()> {
        if let Some(tls) = self.conn(slot).and_then(|c| c.tls.as_deref_mut()) {
            tls.close_notify();
            tls.linger_after_send = true;
        }
        if self.tls_flush(slot)? {
            return Ok(()); // `on_tls_write` lingers once it is sent
        }
        if let Some(tls) = self.conn(slot).and_then(|c| c.tls.as_deref_mut()) {
            tls.linger_after_send = false;
        }
        self.linger(now, slot)
    }

    /// The TLS part of [`Self::begin_close`]: a write in progress is abandoned (its frames
    /// were never the kernel's, only the send buffer is); with no send in flight,
    /// `close_notify` (or a pending alert) goes out in a send that does not wait for the
    /// peer; a send in flight (a reader that stopped) is cut by a shutdown.
    pub(super) fn begin_tls_close(&mut self, slot: u32) -> std::io::Result<()> {
        let Some(conn) = slot_mut(&mut self.conns, slot) else {
            return Ok(());
        };
        if conn.tls.is_none() {
            return Ok(());
        }
        let abandoned = conn.write_in_flight;
        if abandoned {
            self.pending_write_bytes -= conn.forget_write();
        }
        let Some(tls) = conn.tls.as_deref_mut() else {
            return Ok(());
        };
        if abandoned {
            tls.abandon_write();
        }
        let stuck = tls.sending;
        if !stuck {
            tls.close_notify();
        }
        let goodbye = !stuck && !tls.pending_out().is_empty();
        if stuck || conn.recv_in_flight {
            let how = if stuck {
                libc::SHUT_RDWR
            } else {
                libc::SHUT_RD
            };
            // SAFETY: shutdown takes no memory; it makes in-flight operations complete.
            unsafe { libc::shutdown(conn.fd, how) };
        }
        if goodbye {
            self.submit_tls_send(slot, true)?;
        }
        Ok(())
    }
}
