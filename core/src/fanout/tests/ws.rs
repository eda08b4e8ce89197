//! WebSocket subscribers beside SSE ones (issue 16): each message is encoded once, in both
//! forms, and every viewer gets a slice of that one buffer; every control frame has its
//! WebSocket form (docs/PROTOCOL.md).

use super::*;
use crate::frame::{Format, Frame};
use serde_json::Value;

const HEAD_101: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\n\r\n";

fn subscribe_ws(sim: &mut Sim, conn: u32, room: &str, last: Option<u64>) {
    let resume = resume_at(&sim.fanout, room, last);
    sim.fanout
        .handle_subscribe_in(
            sim.now,
            ConnId(conn),
            room,
            resume,
            Format::Ws,
            Bytes::from_static(HEAD_101),
        )
        .expect("subscribe");
}

/// Splits `bytes` into server frames: `(opcode, payload)` each, checking FIN, no RSV bit,
/// no mask and the length in its shortest form (RFC 6455 §5.2).
fn ws_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        assert!(bytes.len() >= 2, "half a header: {bytes:02x?}");
        assert_eq!(bytes[0] & 0xF0, 0x80, "FIN set, no RSV bit");
        assert_eq!(bytes[1] & 0x80, 0, "server frames are unmasked");
        let (len, header) = match bytes[1] & 0x7F {
            126 => {
                let len = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
                assert!(len >= 126, "16-bit length in its shortest form");
                (len, 4)
            }
            127 => {
                let mut be = [0; 8];
                be.copy_from_slice(&bytes[2..10]);
                let len = u64::from_be_bytes(be);
                assert!(
                    len > 0xFFFF && len >> 63 == 0,
                    "64-bit length in its shortest form"
                );
                (len as usize, 10)
            }
            short => (usize::from(short), 2),
        };
        assert!(bytes.len() >= header + len, "payload cut short");
        frames.push((bytes[0] & 0x0F, bytes[header..header + len].to_vec()));
        bytes = &bytes[header + len..];
    }
    frames
}

/// The JSON object of a write that is exactly one text frame.
fn ws_json(bytes: &[u8]) -> Value {
    let frames = ws_frames(bytes);
    assert_eq!(frames.len(), 1, "one frame");
    let (opcode, payload) = &frames[0];
    assert_eq!(*opcode, 0x1, "a text frame");
    let text = std::str::from_utf8(payload).expect("text frames are UTF-8");
    serde_json::from_str(text).expect("JSON")
}

/// The text a room message frame must carry, exactly.
fn message_text(room: &str, id: &str, data: &str) -> String {
    let json = |s: &str| serde_json::to_string(s).unwrap();
    format!(
        "{{\"room\":{},\"id\":{},\"data\":{}}}",
        json(room),
        json(id),
        json(data)
    )
}

/// Checks `bytes` is one text frame holding exactly the room message, and returns its data.
fn ws_message(bytes: &[u8], room: &str, id: EventId) -> String {
    let frames = ws_frames(bytes);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].0, 0x1, "a text frame");
    let text = String::from_utf8(frames[0].1.clone()).expect("UTF-8");
    let value: Value = serde_json::from_str(&text).unwrap();
    let object = value.as_object().expect("an object");
    assert_eq!(object.len(), 3, "only room, id, data: {text}");
    assert_eq!(object["room"], room);
    assert_eq!(object["id"], id.to_string());
    let data = object["data"]
        .as_str()
        .expect("data is a string")
        .to_owned();
    assert_eq!(text, message_text(room, &id.to_string(), &data));
    data
}

fn within(part: &Bytes, whole: &Bytes) -> bool {
    let range = whole.as_ptr_range();
    range.start <= part.as_ptr() && part.as_ptr_range().end <= range.end
}

#[test]
fn sse_and_ws_viewers_get_slices_of_one_encoding_on_every_shard() {
    let mut owner = Sim::new(FanoutConfig::default());
    let mut replica = Sim::new(FanoutConfig::default());
    owner.subscribe(1, "a", None);
    subscribe_ws(&mut owner, 2, "a", None);
    replica.subscribe(3, "a", None);
    subscribe_ws(&mut replica, 4, "a", None);
    owner.run_idle();
    replica.run_idle();
    let (id, frame) = owner.fanout.handle_publish(owner.now, "a", b"hi").unwrap();
    assert!(replica.fanout.handle_frame_replica(
        replica.now,
        0,
        "a",
        id.epoch,
        id.seq,
        frame.clone()
    ));
    owner.run_idle();
    replica.run_idle();
    let got = |sim: &Sim, conn| sim.frames(conn)[1].clone();
    let (sse_owner, ws_owner) = (got(&owner, 1), got(&owner, 2));
    let (sse_replica, ws_replica) = (got(&replica, 3), got(&replica, 4));
    assert_eq!(owner.frames(2)[0], HEAD_101, "the head goes out as given");
    for sse in [&sse_owner, &sse_replica] {
        assert_eq!(sse, &sse::encode_message(id, b"hi"));
    }
    for ws in [&ws_owner, &ws_replica] {
        assert_eq!(ws_message(ws, "a", id), "hi");
    }
    // One allocation holds all four: nothing was copied per viewer or per shard.
    for part in [&sse_owner, &ws_owner, &sse_replica, &ws_replica] {
        assert!(within(part, frame.buffer()), "a slice of the one buffer");
    }
    assert_eq!(sse_owner.as_ptr(), sse_replica.as_ptr());
    assert_eq!(ws_owner.as_ptr(), ws_replica.as_ptr());
    assert!(sse_owner.as_ptr_range().end <= ws_owner.as_ptr());
    assert_eq!(owner.fanout.stats().deliveries_total, 2);
}

#[test]
fn ws_messages_escape_json_exactly() {
    let mut sim = Sim::new(FanoutConfig::default());
    subscribe_ws(&mut sim, 1, "r.1:x_y-z", None);
    sim.run_idle();
    let cases = [
        "plain",
        "",
        "say \"hi\"",
        "back\\slash \\\" both",
        "line\nfeed\r\ncr\ttab",
        "\u{0}\u{1}\u{1f}\u{7f}",
        "é 中文 😀 \u{2028}\u{2029}",
        "</script>",
    ];
    for data in cases {
        sim.publish("r.1:x_y-z", data);
    }
    sim.run_idle();
    let epoch = sim
        .fanout
        .room_info("r.1:x_y-z")
        .unwrap()
        .last_id
        .unwrap()
        .epoch;
    let frames = &sim.frames(1)[1..];
    assert_eq!(frames.len(), cases.len());
    for (seq, (frame, data)) in frames.iter().zip(cases).enumerate() {
        let id = EventId {
            epoch,
            seq: seq as u64 + 1,
        };
        assert_eq!(ws_message(frame, "r.1:x_y-z", id), data);
    }
    let text = |i: usize| String::from_utf8(ws_frames(&frames[i])[0].1.clone()).unwrap();
    assert!(text(2).ends_with(r#""data":"say \"hi\""}"#), "{}", text(2));
    assert!(text(3).ends_with(r#""data":"back\\slash \\\" both"}"#));
    assert!(text(4).ends_with(r#""data":"line\nfeed\r\ncr\ttab"}"#));
    assert!(text(5).ends_with("\"data\":\"\\u0000\\u0001\\u001f\u{7f}\"}"));
    assert!(text(6).contains("é 中文 😀"), "non-ASCII is kept as UTF-8");
}

#[test]
fn ws_data_that_is_not_utf8_gets_replacement_characters() {
    let mut sim = Sim::new(FanoutConfig::default());
    sim.subscribe(1, "a", None);
    subscribe_ws(&mut sim, 2, "a", None);
    sim.run_idle();
    let (id, _) = sim
        .fanout
        .handle_publish(sim.now, "a", b"ok \xFF\xFE \xE2\x82")
        .unwrap();
    sim.run_idle();
    assert_eq!(
        ws_message(&sim.frames(2)[1], "a", id),
        "ok \u{FFFD}\u{FFFD} \u{FFFD}"
    );
    assert_eq!(
        sim.frames(1)[1],
        sse::encode_message(id, b"ok \xFF\xFE \xE2\x82"),
        "the SSE form keeps the bytes"
    );
}

#[test]
fn ws_message_lengths_use_7_16_and_64_bit_headers() {
    let mut sim = Sim::new(FanoutConfig::default());
    subscribe_ws(&mut sim, 1, "a", None);
    sim.run_idle();
    let sizes = [10, 200, 64 << 10];
    for size in sizes {
        sim.publish("a", &"x".repeat(size));
    }
    sim.run_idle();
    for (frame, size) in sim.frames(1)[1..].iter().zip(sizes) {
        let want = match size {
            10 => 2,
            200 => 126,
            _ => 127,
        };
        assert_eq!(
            frame[1],
            if want == 2 {
                frame.len() as u8 - 2
            } else {
                want
            }
        );
        let frames = ws_frames(frame);
        let value: Value = serde_json::from_slice(&frames[0].1).unwrap();
        assert_eq!(value["data"].as_str().unwrap().len(), size);
    }
}

#[test]
fn ws_resume_gets_gap_and_reset_objects() {
    let mut sim = Sim::new(FanoutConfig {
        history_messages_max: 4,
        ..FanoutConfig::default()
    });
    for i in 1..=10 {
        sim.publish("a", &format!("m{i}"));
    }
    let epoch = sim.fanout.room_info("a").unwrap().last_id.unwrap().epoch;
    subscribe_ws(&mut sim, 1, "a", Some(2));
    sim.fanout
        .handle_subscribe_in(
            sim.now,
            ConnId(2),
            "a",
            Some(ResumeId::Unplaceable(ResetReason::BareNumber)),
            Format::Ws,
            Bytes::from_static(HEAD_101),
        )
        .unwrap();
    sim.run_idle();
    assert_eq!(
        ws_json(&sim.frames(1)[1]),
        serde_json::json!({"type":"gap","room":"a","from":format!("{epoch}-3"),"to":format!("{epoch}-6")})
    );
    assert_eq!(
        ws_json(&sim.frames(2)[1]),
        serde_json::json!({"type":"reset","room":"a","reason":"bare number","held_from":format!("{epoch}-7"),"id":format!("{epoch}-6")})
    );
    for conn in [1, 2] {
        let seqs: Vec<String> = sim.frames(conn)[2..]
            .iter()
            .map(|f| ws_json(f)["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            seqs,
            (7..=10).map(|s| format!("{epoch}-{s}")).collect::<Vec<_>>()
        );
    }
}

#[test]
fn a_lapped_ws_subscriber_gets_lagged_then_close_1013() {
    let mut sim = Sim::new(FanoutConfig {
        history_messages_max: 4,
        write_frames_max: 2,
        ..FanoutConfig::default()
    });
    subscribe_ws(&mut sim, 1, "a", None);
    sim.run_idle();
    let first = sim.publish("a", "m0");
    sim.run_idle();
    for i in 1..10 {
        sim.publish("a", &format!("m{i}"));
    }
    sim.turn(64);
    assert_eq!(sim.closed.len(), 1);
    let (conn, reason, out) = &sim.closed[0];
    assert_eq!((*conn, *reason), (ConnId(1), CloseReason::Lapped));
    assert_eq!(out.len(), 1);
    let frames = ws_frames(&out[0]);
    assert_eq!(frames.len(), 2, "lagged, then the close frame");
    let epoch = sim.fanout.room_info("a").unwrap().last_id.unwrap().epoch;
    let lagged: Value = serde_json::from_slice(&frames[0].1).unwrap();
    assert_eq!(
        lagged,
        serde_json::json!({"type":"lagged","room":"a","reason":"slow consumer","last_id":format!("{epoch}-{first}")})
    );
    assert_eq!(frames[1].0, 0x8, "close");
    assert_eq!(&frames[1].1[..2], &1013u16.to_be_bytes());
}

#[test]
fn ws_heartbeat_is_an_empty_ping() {
    let mut sim = Sim::new(FanoutConfig {
        heartbeat: Duration::from_secs(15),
        ..FanoutConfig::default()
    });
    sim.subscribe(1, "a", None);
    subscribe_ws(&mut sim, 2, "a", None);
    sim.run_idle();
    sim.advance(Duration::from_millis(15_100));
    sim.run_idle();
    assert_eq!(sim.frames(1)[1], sse::HEARTBEAT);
    assert_eq!(ws_frames(&sim.frames(2)[1]), vec![(0x9, Vec::new())]);
    assert_eq!(sim.fanout.stats().heartbeats_total, 2);
}

#[test]
fn draining_closes_ws_subscribers_with_1001() {
    let mut sim = Sim::new(FanoutConfig::default());
    sim.subscribe(1, "a", None);
    subscribe_ws(&mut sim, 2, "a", None);
    sim.run_idle();
    sim.publish("a", "last");
    sim.fanout.handle_drain(sim.now, 2000);
    sim.run_idle();
    assert_eq!(sim.closed.len(), 2);
    for (conn, reason, out) in &sim.closed {
        assert_eq!(*reason, CloseReason::Drained);
        match conn.0 {
            1 => assert_eq!(out, &vec![Bytes::from("retry: 2000\n\n")]),
            _ => {
                let frames = ws_frames(&out[0]);
                assert_eq!(frames.len(), 1);
                assert_eq!(frames[0].0, 0x8, "close");
                assert_eq!(&frames[0].1[..2], &1001u16.to_be_bytes());
                assert!(frames[0].1.len() <= 125);
                std::str::from_utf8(&frames[0].1[2..]).unwrap();
            }
        }
    }
    assert_eq!(
        ws_json(&sim.frames(2)[1])["data"],
        "last",
        "written before the close"
    );
}

#[test]
fn a_ws_viewer_of_a_replica_follows_a_room_restart() {
    let mut sim = Sim::new(FanoutConfig::default());
    subscribe_ws(&mut sim, 1, "r", None);
    sim.run_idle();
    let frame = |epoch, seq| Frame::message("r", EventId { epoch, seq }, b"x");
    for seq in 1..=2 {
        assert!(sim
            .fanout
            .handle_frame_replica(sim.now, 0, "r", 40, seq, frame(40, seq)));
    }
    sim.run_idle();
    assert!(sim
        .fanout
        .handle_frame_replica(sim.now, 0, "r", 41, 1, frame(41, 1)));
    sim.run_idle();
    let frames = &sim.frames(1)[1..];
    assert_eq!(frames.len(), 4);
    assert_eq!(
        ws_message(&frames[0], "r", EventId { epoch: 40, seq: 1 }),
        "x"
    );
    assert_eq!(
        ws_message(&frames[1], "r", EventId { epoch: 40, seq: 2 }),
        "x"
    );
    assert_eq!(
        ws_json(&frames[2]),
        serde_json::json!({"type":"reset","room":"r","reason":"room restarted","held_from":null,"id":"41-0"})
    );
    assert_eq!(
        ws_message(&frames[3], "r", EventId { epoch: 41, seq: 1 }),
        "x"
    );
}

#[test]
fn a_replayed_ws_subscribe_gets_the_replay_in_its_form_with_stream_ids() {
    let mut sim = Sim::new(FanoutConfig {
        stream_ids: true,
        ..FanoutConfig::default()
    });
    let packed = |ms: u64, seq: u64| ms << 20 | seq;
    let ids = [packed(1_700_000_000_000, 1), packed(1_700_000_000_000, 2)];
    let shown = |id| EventId::from_stream_packed(id);
    assert!(sim.fanout.handle_frame(
        sim.now,
        "s",
        ids[1],
        Frame::message("s", shown(ids[1]), b"live")
    ));
    let replay = vec![
        Frame::gap(
            "s",
            shown(packed(1_600_000_000_000, 0)),
            shown(packed(1_600_000_000_000, 9)),
        ),
        Frame::message("s", shown(ids[0]), b"old"),
    ];
    sim.fanout
        .handle_subscribe_replayed_in(
            sim.now,
            ConnId(1),
            "s",
            Start::After(ids[0]),
            Format::Ws,
            Bytes::from_static(HEAD_101),
            replay,
        )
        .unwrap();
    sim.run_idle();
    let frames = &sim.frames(1)[1..];
    assert_eq!(
        ws_json(&frames[0]),
        serde_json::json!({"type":"gap","room":"s","from":"1600000000000-0","to":"1600000000000-9"})
    );
    assert_eq!(ws_message(&frames[1], "s", shown(ids[0])), "old");
    assert_eq!(ws_message(&frames[2], "s", shown(ids[1])), "live");
    assert_eq!(
        ws_json(&frames[2])["id"],
        "1700000000000-2",
        "the stream id, as SSE shows it"
    );
}
