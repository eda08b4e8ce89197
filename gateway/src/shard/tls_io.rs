//! TLS connections on the ring: what is not the pipe's (pipe.rs moves the ciphertext
//! through the sans-IO `TlsConn`): handshake counts, failures and the hand-off of `h2`
//! clients to the companion.

use super::*;

impl Shard {
    /// Counts a TLS connection's outcome (`ringcast_tls_handshakes_total`).
    pub(super) fn count_tls_handshake(&self, outcome: TlsHandshake) {
        self.shared.figures[self.index].add_tls_handshake(outcome);
    }

    /// Closes a TLS connection whose handshake or records failed (an alert rustls made is
    /// sent first, without waiting for the peer), counted by `reason`.
    pub(super) fn fail_tls(&mut self, slot: u32, reason: RefusalReason) -> std::io::Result<()> {
        self.count_refusal(reason);
        let Some(conn) = self.conn(slot) else {
            return Ok(());
        };
        let established = conn.pipe.established();
        conn.pipe.fail_tls();
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
        let Some(fd) = conn.pipe.take_fd() else {
            return self.begin_close(slot);
        };
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
                    conn.pipe.restore_fd(handoff.fd);
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

    /// Starts the next send of a TLS connection unless one is in flight (pipe.rs);
    /// returns whether a send is in flight afterwards.
    pub(super) fn tls_flush(&mut self, slot: u32) -> std::io::Result<bool> {
        let Some(conn) = slot_mut(&mut self.conns, slot) else {
            return Ok(false);
        };
        let key = conn.key(slot).to_word();
        Ok(conn.pipe.flush(&mut self.ring, key, &mut self.tls_out_pool))
    }
}
