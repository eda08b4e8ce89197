//! Reading Redis replies (RESP2 and RESP3 shapes alike): stream entries, lists, pairs,
//! and telling an interrupted call from a failed one.

use super::*;

/// Whether a call failed with EINTR: a socket with a timeout (SO_RCVTIMEO) returns it when a
/// signal, or SIGSTOP then SIGCONT, interrupts a blocked read (signal(7)).
pub(super) fn interrupted(err: &redis::RedisError) -> bool {
    use std::error::Error;
    // redis keeps an I/O error as `Arc<dyn Error + Send + Sync>` (the source).
    err.source()
        .and_then(|source| source.downcast_ref::<Arc<dyn Error + Send + Sync>>())
        .and_then(|inner| inner.downcast_ref::<std::io::Error>())
        .is_some_and(|io| io.kind() == std::io::ErrorKind::Interrupted)
}

pub(super) fn value_str(value: &Value) -> Option<&str> {
    match value {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
        Value::SimpleString(text) => Some(text),
        Value::VerbatimString { text, .. } => Some(text),
        _ => None,
    }
}

pub(super) fn list(value: &Value) -> Option<&[Value]> {
    match value {
        Value::Array(items) | Value::Set(items) => Some(items),
        _ => None,
    }
}

/// A RESP2 flat field list or a RESP3 map, as pairs.
pub(super) fn pairs(value: &Value) -> Option<Vec<(&Value, &Value)>> {
    match value {
        Value::Map(pairs) => Some(pairs.iter().map(|(k, v)| (k, v)).collect()),
        Value::Array(items) => Some(items.chunks_exact(2).map(|p| (&p[0], &p[1])).collect()),
        _ => None,
    }
}

/// An XREAD reply as (key, entries) per stream.
pub(super) fn streams(value: &Value) -> Vec<(&[u8], &[Value])> {
    fn pair<'a>(key: &'a Value, entries: &'a Value) -> Option<(&'a [u8], &'a [Value])> {
        match (key, list(entries)) {
            (Value::BulkString(key), Some(entries)) => Some((key.as_slice(), entries)),
            _ => None,
        }
    }
    match value {
        Value::Map(pairs) => pairs.iter().filter_map(|(k, v)| pair(k, v)).collect(),
        Value::Array(items) => items
            .iter()
            .filter_map(|item| match list(item) {
                Some([key, entries]) => pair(key, entries),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// One stream entry `[id, [field, value, …]]` as (SSE id, data, stamp).
pub(super) fn entry(value: &Value) -> Option<(u64, Vec<u8>, u64)> {
    let [id, fields] = list(value)? else {
        return None;
    };
    let id = sse_id(value_str(id)?)?;
    let mut data = Vec::new();
    let mut stamp = 0;
    for (name, value) in pairs(fields)? {
        match (value_str(name), value) {
            (Some("data"), Value::BulkString(bytes)) => data.clone_from(bytes),
            (Some("stamp"), value) => {
                stamp = value_str(value).and_then(|s| s.parse().ok()).unwrap_or(0)
            }
            _ => {}
        }
    }
    Some((id, data, stamp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupted_call_is_told_from_a_failed_one() {
        let eintr = std::io::Error::from(std::io::ErrorKind::Interrupted);
        assert!(interrupted(&redis::RedisError::from(eintr)));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(!interrupted(&redis::RedisError::from(refused)));
    }

    #[test]
    fn ids_round_trip_and_keep_order() {
        let cases = [
            ("0-0", 0),
            ("0-1", 1),
            ("1-0", 1 << 20),
            ("1700000000000-7", (1_700_000_000_000 << 20) | 7),
        ];
        for (stream, sse) in cases {
            assert_eq!(sse_id(stream), Some(sse), "{stream}");
            assert_eq!(stream_id(sse), stream);
        }
        assert!(sse_id("5-1048575").unwrap() < sse_id("6-0").unwrap());
        for bad in ["", "1", "a-1", "1-1048576", "1-"] {
            assert_eq!(sse_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn keys_name_their_room() {
        assert_eq!(stream_key("lobby"), "ringcast:{lobby}");
        assert_eq!(room_of_key(b"ringcast:{a:b}"), Some("a:b"));
        assert_eq!(room_of_key(b"other"), None);
    }

    #[test]
    fn entries_parse_from_resp2_and_resp3() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let fields = vec![
            bulk("data"),
            bulk("hi"),
            bulk("stamp"),
            bulk("42"),
            bulk("node"),
            bulk("a"),
        ];
        let resp2 = Value::Array(vec![bulk("3-1"), Value::Array(fields.clone())]);
        assert_eq!(entry(&resp2), Some(((3 << 20) | 1, b"hi".to_vec(), 42)));
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("ringcast:{r}"),
            Value::Array(vec![resp2.clone()]),
        ])]);
        let streams2 = streams(&reply);
        assert_eq!(streams2.len(), 1);
        assert_eq!(streams2[0].0, b"ringcast:{r}");
        let reply3 = Value::Map(vec![(bulk("ringcast:{r}"), Value::Array(vec![resp2]))]);
        assert_eq!(streams(&reply3).len(), 1);
    }
}
