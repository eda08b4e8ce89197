//! The NDJSON body of `POST /publish` (`ringcast_proto::batch`): splitting and parsing any body
//! never panics, line numbers increase, no line holds a newline, and a line accepted
//! names a valid room (what the worker then hashes and sequences).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let mut previous = 0;
    for (number, line) in ringcast_proto::batch::lines(body).take(ringcast_proto::batch::BATCH_LINES_MAX) {
        assert!(number > previous);
        previous = number;
        assert!(!line.contains(&b'\n'));
        // One `\r` is stripped; more (`…\r\r\n`) stay, and JSON reads them as whitespace
        // (crash-9f1f70b6 was this assertion being too strict: see batch.rs's tests).
        assert!(!line.iter().all(u8::is_ascii_whitespace));
        match ringcast_proto::batch::parse_line(line) {
            Ok(ringcast_proto::batch::Line {
                room,
                data,
                idempotency_key,
            }) => {
                assert!(ringcast_core::room::validate_room_name(room.as_bytes()).is_ok());
                if let Some(key) = idempotency_key {
                    assert!(ringcast_proto::idempotency::validate_key(key.as_bytes()).is_ok());
                }
                // Whatever data a line carried, its frame is well formed.
                let frame = ringcast_core::sse::encode_message(
                    ringcast_core::event_id::EventId { epoch: 1, seq: 1 },
                    data.as_bytes(),
                );
                assert!(frame.ends_with(b"\n\n"));
            }
            Err(reason) => assert!(!reason.is_empty()),
        }
    }
});
