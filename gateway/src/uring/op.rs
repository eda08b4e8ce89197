//! What an operation is and what it gives back: [`OpKind`], the caller's `key`, the memory
//! the op held for the kernel ([`Held`]) and the [`Completion`] that returns it, and the
//! [`Lease`] of a provided buffer. Plain data; the ring (ring/) is the only one that builds
//! entries from it.

use bytes::Bytes;
use std::num::NonZeroU64;
use std::os::fd::OwnedFd;

/// What an operation was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// Multishot (or single) accept on a listener.
    Accept,
    /// Receive into a buffer the op owns, one of the ring's provided buffers, or the ring's
    /// discard buffer.
    Recv,
    /// A writev of frames, or a send of one byte buffer (TLS ciphertext).
    Write,
    /// Close of a descriptor.
    Close,
    /// Read of this shard's wake-up eventfd.
    WakeRead,
    /// Write to another shard's wake-up eventfd.
    WakeWrite,
    /// Cancel of another operation.
    Cancel,
}

/// Names one operation in the ring until its (last) completion: the `user_data` the kernel
/// carries, index and generation of the ring's slot for the op. A stale id (its op
/// completed) names nothing: cancelling it is harmless. Never 0 (a generation is at least
/// 1), so an `Option<OpId>` takes 8 bytes, not 16 (a connection's pipe holds two).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OpId(pub(super) NonZeroU64);

impl OpId {
    pub(super) fn new(index: u32, generation: u32) -> Self {
        Self::from_word(u64::from(generation) << 32 | u64::from(index))
    }

    /// The id a completion's `user_data` carries (every entry this ring submits carries
    /// one).
    pub(super) fn from_word(word: u64) -> Self {
        Self(NonZeroU64::new(word).expect("an op's generation is at least 1"))
    }

    /// The `user_data` of its entries.
    pub(super) fn word(self) -> u64 {
        self.0.get()
    }

    pub(super) fn index(self) -> u32 {
        self.word() as u32
    }

    pub(super) fn generation(self) -> u32 {
        (self.word() >> 32) as u32
    }
}

/// The memory an operation held while the kernel could use it, handed back whole in its
/// completion (as tokio-uring's ops return their buffers): until then the caller has no
/// way to touch, move or free it, whatever becomes of the connection.
#[derive(Debug, Default)]
pub enum Held {
    /// The op pointed at no memory of the caller's (close, cancel, a discard receive).
    #[default]
    Nothing,
    /// A receive's buffer: its length grew by the bytes received.
    Recv(Vec<u8>),
    /// A writev's frames, all of them (written or not): the result says how many bytes
    /// went.
    Frames(Vec<Bytes>),
    /// A send of one buffer (TLS ciphertext), whole; the op sent from the offset given.
    Bytes(Vec<u8>),
    /// An eventfd read's word.
    Word(Box<u64>),
    /// An accepted connection's socket, owned from here (closed when dropped).
    Accepted(OwnedFd),
    /// A receive's bytes, in one of the ring's provided buffers (`Ring::recv_provided`):
    /// read them with `Ring::provided`, then hand the lease back (`Ring::give_back`).
    Provided(Lease),
}

/// One of the ring's provided buffers, lent to the caller with the bytes a receive put in
/// it (ring/pool.rs). Not `Clone`: handing it back (`Ring::give_back`) consumes it. A lease
/// not handed back is taken back when the ring next waits (`Ring::submit_and_wait`); reading
/// it after that is a programmer error, caught (the kernel may be writing the buffer again).
#[derive(Debug, PartialEq, Eq)]
pub struct Lease {
    pub(super) buffer: u16,
    pub(super) len: u32,
    /// The ring's lending round it belongs to (changes at each wait).
    pub(super) round: u32,
}

impl Lease {
    /// Bytes received into the buffer (at least 1).
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Never true: a receive that brought nothing lends no buffer.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One reaped completion.
#[derive(Debug)]
pub struct Completion {
    /// The operation that completed.
    pub op: OpId,
    /// What it was.
    pub kind: OpKind,
    /// The caller's key given when the op was started (a connection key, a listener, a
    /// target shard).
    pub key: u64,
    /// The kernel's result: ≥ 0 success value, < 0 `-errno`. For an accept that succeeded
    /// the socket is in `held` instead.
    pub result: i32,
    /// More completions follow for this multishot operation (its id stays valid).
    pub more: bool,
    /// What the operation held, given back.
    pub held: Held,
}
