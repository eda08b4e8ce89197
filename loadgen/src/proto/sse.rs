//! Server-Sent Events framing: splits a byte stream into lines and reports fields to a
//! sink, without allocating. The caller keeps the unconsumed tail (a partial line) and
//! feeds it again, prefixed to the next read, so events split across reads work.

/// Longest SSE line accepted; a longer partial line is a protocol error.
pub const LINE_BYTES_MAX: usize = 2 * 1024 * 1024;

/// Receives the fields of an SSE stream as they are parsed.
pub trait SseSink {
    /// A `data:` line (value without the single optional leading space).
    fn on_data(&mut self, value: &[u8]);
    /// An `event:` line.
    fn on_event_type(&mut self, value: &[u8]);
    /// A comment line (starts with `:`), used by servers as heartbeat.
    fn on_comment(&mut self);
    /// A blank line: the pending event (if any) is complete.
    fn on_dispatch(&mut self);
}

/// Parses all complete lines in `buffer`, returns how many bytes were consumed; the rest
/// is a partial line the caller must keep. `id:`, `retry:` and unknown fields are ignored.
pub fn feed(buffer: &[u8], sink: &mut impl SseSink) -> usize {
    let mut at = 0;
    while let Some(offset) = memchr::memchr(b'\n', &buffer[at..]) {
        let end = at + offset;
        let mut line = &buffer[at..end];
        at = end + 1;
        if let [head @ .., b'\r'] = line {
            line = head;
        }
        dispatch_line(line, sink);
    }
    at
}

fn dispatch_line(line: &[u8], sink: &mut impl SseSink) {
    match line.first() {
        None => sink.on_dispatch(),
        Some(b':') => sink.on_comment(),
        Some(b'd') if line.starts_with(b"data") => {
            if let Some(value) = field_value(line, 4) {
                sink.on_data(value);
            }
        }
        Some(b'e') if line.starts_with(b"event") => {
            if let Some(value) = field_value(line, 5) {
                sink.on_event_type(value);
            }
        }
        _ => {}
    }
}

/// Value of a `name:value` line whose name is `name_len` bytes long; `None` if the name
/// continues (e.g. `datax:`). A line that is just the name has an empty value.
fn field_value(line: &[u8], name_len: usize) -> Option<&[u8]> {
    match line.get(name_len) {
        None => Some(&[]),
        Some(b':') => {
            let value = &line[name_len + 1..];
            Some(value.strip_prefix(b" ").unwrap_or(value))
        }
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        log: Vec<String>,
    }

    impl SseSink for Recorder {
        fn on_data(&mut self, value: &[u8]) {
            self.log
                .push(format!("data={}", String::from_utf8_lossy(value)));
        }
        fn on_event_type(&mut self, value: &[u8]) {
            self.log
                .push(format!("event={}", String::from_utf8_lossy(value)));
        }
        fn on_comment(&mut self) {
            self.log.push("comment".into());
        }
        fn on_dispatch(&mut self) {
            self.log.push("dispatch".into());
        }
    }

    const STREAM: &[u8] =
        b": hello\n\nid: 1\ndata: one\n\nid: 2\r\ndata:two\r\n\r\nevent: gap\ndata: 3-5\n\n:\n";

    fn expected() -> Vec<String> {
        [
            "comment",
            "dispatch",
            "data=one",
            "dispatch",
            "data=two",
            "dispatch",
            "event=gap",
            "data=3-5",
            "dispatch",
            "comment",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    #[test]
    fn parses_a_whole_stream() {
        let mut sink = Recorder::default();
        assert_eq!(feed(STREAM, &mut sink), STREAM.len());
        assert_eq!(sink.log, expected());
    }

    /// Every split point must give the same result when the tail is carried over.
    #[test]
    fn parses_across_every_split() {
        for split in 0..STREAM.len() {
            let mut sink = Recorder::default();
            let used = feed(&STREAM[..split], &mut sink);
            let mut carried = STREAM[used..split].to_vec();
            carried.extend_from_slice(&STREAM[split..]);
            assert_eq!(feed(&carried, &mut sink), carried.len());
            assert_eq!(sink.log, expected(), "split at {split}");
        }
    }

    #[test]
    fn ignores_lookalike_fields() {
        let mut sink = Recorder::default();
        feed(b"datax: no\ndata\nevents: no\nretry: 5\n", &mut sink);
        assert_eq!(sink.log, vec!["data=".to_string()]);
    }
}
