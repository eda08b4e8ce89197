//! `ringcast_core::sse::encode_message` on arbitrary data (newlines, `\r`, NUL, huge lines): the
//! frame is one event (`id:` line, `data:` lines, blank line), and an SSE parser reading
//! it gets back the id and exactly the data's lines, `\r\n` and `\r` read as `\n`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let (seq, data) = match input {
        [a, b, c, d, e, f, g, h, rest @ ..] => {
            (u64::from_le_bytes([*a, *b, *c, *d, *e, *f, *g, *h]), rest)
        }
        _ => (0, input),
    };
    let id = ringcast_core::event_id::EventId {
        epoch: seq.rotate_left(17),
        seq,
    };
    let frame = ringcast_core::sse::encode_message(id, data);
    assert!(frame.ends_with(b"\n\n"), "frame must end the event");
    let body = &frame[..frame.len() - 2];
    assert!(!body.contains(&b'\r'), "a bare \\r would end a line early");
    assert!(
        !body.windows(2).any(|w| w == b"\n\n"),
        "a blank line inside would end the event early"
    );
    let mut lines = body.split(|&b| b == b'\n');
    let id_line = lines.next().expect("an id line");
    assert_eq!(id_line, format!("id: {id}").as_bytes());
    let mut got: Vec<&[u8]> = Vec::new();
    for line in lines {
        got.push(
            line.strip_prefix(b"data: ")
                .expect("only data lines follow the id"),
        );
    }
    // The data as an SSE client sees it: lines split on \r\n, \r or \n, joined by \n.
    let mut want = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i] == b'\r' {
            want.push(b'\n');
            if data.get(i + 1) == Some(&b'\n') {
                i += 1;
            }
        } else {
            want.push(data[i]);
        }
        i += 1;
    }
    assert_eq!(got.join(&b'\n'), want);
});
