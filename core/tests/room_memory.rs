//! What an empty room costs a shard replica, counted by a global allocator: 20,000 rooms
//! that each got one publish and lost their subscriber, and that the idle sweep then frees.
//! Its own test binary, so no other test allocates meanwhile.

use bytes::Bytes;
use ringcast_core::event_id::EventId;
use ringcast_core::fanout::{ConnId, Fanout, FanoutConfig};
use ringcast_core::frame::Frame;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; the counter only
// observes sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const ROOMS: usize = 20_000;
/// The aim of issue 14: an empty room costs a shard replica at most 1 KiB.
const ROOM_BYTES_MAX: usize = 1024;

#[test]
fn an_empty_room_costs_under_a_kibibyte_and_freeing_returns_it() {
    let mut now = Instant::now();
    let config = FanoutConfig {
        room_idle_timeout: Duration::from_secs(60),
        ..FanoutConfig::default()
    };
    let mut fanout = Fanout::new(config, now);
    // The frame is shared by every replica (encoded once), so it is not the room's cost.
    let frame = Frame::message("room", EventId { epoch: 1, seq: 1 }, b"x");
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    for room in 0..ROOMS {
        let name = format!("room-{room:05}");
        fanout
            .handle_subscribe(now, ConnId(0), &name, None, Bytes::new())
            .unwrap();
        fanout.handle_frame(now, &name, 1, frame.clone());
        fanout.handle_disconnect(ConnId(0));
        while fanout.poll_presence().is_some() {}
        let mut out = Vec::new();
        while fanout.poll_action(now, &mut out).is_some() {}
    }
    let held = LIVE_BYTES.load(Ordering::Relaxed) - before;
    let per_room = held as usize / ROOMS;
    println!(
        "{ROOMS} empty rooms (one message each, no subscriber): {held} bytes, {per_room} a room"
    );
    assert_eq!(fanout.rooms_len(), ROOMS);
    assert!(per_room <= ROOM_BYTES_MAX, "{per_room} bytes a room");

    now += Duration::from_secs(61);
    while fanout.rooms_len() > 0 {
        fanout.handle_timeout(now);
        while fanout.poll_freed().is_some() {}
    }
    let left = LIVE_BYTES.load(Ordering::Relaxed) - before;
    println!("after the idle sweep: {left} bytes");
    // With every room gone the slot tables and the index are given back too.
    assert!(left < 64 << 10, "{left} bytes left");
}
