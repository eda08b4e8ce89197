//! A shard on a real ring and loopback socket, turned by hand: what an idle plain WebSocket
//! holds for its receive (ws.rs, `RecvInto::Pooled`), before and after it talks.

use super::ws::WS_RECV_BYTES;
use super::*;
use crate::config::{Config, Flags};
use clap::Parser;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

/// A one-shard gateway serving `/ws/echo` on `listener`; `pool_buffers` 0: a ring without
/// provided buffers (as on a kernel that refuses them).
fn echo_shard(listener: &TcpListener, pool_buffers: u16) -> Shard {
    let flags = Flags::try_parse_from(["ringcast", "--shards", "1", "--ws-echo"]).unwrap();
    let shared = Shared::for_one_shard(Config::load(flags).unwrap());
    let mut shard = Shard::new(0, shared, listener.as_raw_fd(), None).unwrap();
    shard.ring = Ring::with_pool(crate::uring::RING_ENTRIES, pool_buffers).unwrap();
    shard
}

/// One loop turn's IO part: wait a little, handle what completed, re-arm the accept.
fn turn(shard: &mut Shard) {
    let now = Instant::now();
    shard.arm_accepts(now).unwrap();
    shard
        .ring
        .submit_and_wait(Duration::from_millis(2))
        .unwrap();
    let mut completions = Vec::new();
    shard.ring.reap(&mut completions);
    for completion in completions {
        shard.on_completion(now, completion).unwrap();
    }
}

/// Turns the shard until `client` has read `want` bytes (or a few seconds passed).
fn read_while_turning(shard: &mut Shard, client: &mut TcpStream, want: usize) -> Vec<u8> {
    client.set_nonblocking(true).unwrap();
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.len() < want && Instant::now() < deadline {
        turn(shard);
        match client.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(err) => panic!("read: {err}"),
        }
    }
    got
}

/// A masked client frame.
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x80 | opcode];
    match payload.len() {
        len @ 0..=125 => frame.push(0x80 | len as u8),
        len @ 126..=0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// The one WebSocket connection: its receive buffer's capacity, and whether a receive is
/// in flight, once the shard has settled.
fn idle_state(shard: &mut Shard) -> (usize, bool) {
    for _ in 0..5 {
        turn(shard);
    }
    let conn = shard
        .conns
        .iter()
        .flatten()
        .find(|conn| conn.is_websocket())
        .expect("the WebSocket connection");
    (conn.recv.capacity(), conn.pipe.receiving())
}

/// Upgrades a client on `/ws/echo`, then echoes a small message and one of 20 kB (larger
/// than a pool buffer: the connection's own receives take it); returns the receive bytes
/// held while idle after each step.
fn idle_receive_bytes(pool_buffers: u16) -> Vec<usize> {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut shard = echo_shard(&listener, pool_buffers);
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    client
        .write_all(
            b"GET /ws/echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
    let head = read_while_turning(&mut shard, &mut client, 12);
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    let mut held = Vec::new();
    let idle = |shard: &mut Shard| {
        let (capacity, receiving) = idle_state(shard);
        assert!(receiving, "an idle WebSocket has its receive posted");
        capacity + shard.ring.recv_bytes_held()
    };
    held.push(idle(&mut shard));
    client.write_all(&client_frame(1, b"hello")).unwrap();
    let echo = read_while_turning(&mut shard, &mut client, 7);
    assert_eq!(&echo[..], b"\x81\x05hello");
    held.push(idle(&mut shard));
    let big: Vec<u8> = (0..20_000).map(|i| i as u8).collect();
    client.write_all(&client_frame(2, &big)).unwrap();
    let echo = read_while_turning(&mut shard, &mut client, 4 + big.len());
    assert_eq!(
        &echo[4..],
        &big[..],
        "a message over a pool buffer comes whole"
    );
    // The receives that filled the pool buffer asked for more; once the client is quiet
    // again the connection is back to the pool.
    client.write_all(&client_frame(1, b"quiet")).unwrap();
    read_while_turning(&mut shard, &mut client, 7);
    held.push(idle(&mut shard));
    held
}

#[test]
fn an_idle_plain_websocket_holds_no_receive_buffer() {
    assert_eq!(
        idle_receive_bytes(16),
        [0, 0, 0],
        "neither its own receive buffer nor a buffer of the receive in flight"
    );
}

#[test]
fn without_a_pool_an_idle_websocket_holds_its_small_receive_buffer() {
    assert_eq!(idle_receive_bytes(0), [WS_RECV_BYTES; 3]);
}
