//! The NDJSON body of `POST /publish`: one `{"room":…,"data":…}` object per line, with an
//! optional `"idempotency_key"`. Pure parsing, no IO, so the shard and the `ndjson_batch`
//! fuzz target share it.

/// Lines one `POST /publish` batch may hold.
pub const BATCH_LINES_MAX: usize = 10_000;

/// The lines of a batch body worth parsing: split on `\n`, a trailing `\r` dropped, lines of
/// ASCII whitespace only skipped. Each comes with its 1-based line number in the body.
pub fn lines(body: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    body.split(|&b| b == b'\n')
        .enumerate()
        .map(|(index, line)| (index + 1, line.strip_suffix(b"\r").unwrap_or(line)))
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
}

/// One parsed line of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// A valid room name.
    pub room: String,
    /// A JSON string's contents, or any other JSON value re-serialised compactly.
    pub data: String,
    /// The `idempotency_key` string, checked as the `Idempotency-Key` header is
    /// (idempotency.rs).
    pub idempotency_key: Option<String>,
}

/// Parses one line into its room (a valid room name), its data: a JSON string's
/// contents, or any other JSON value re-serialised compactly, and its idempotency key.
/// `Err` is the reason, for the line's entry in the response.
pub fn parse_line(line: &[u8]) -> Result<Line, String> {
    let value = serde_json::from_slice::<serde_json::Value>(line)
        .map_err(|err| format!("not JSON: {err}"))?;
    let room = value
        .get("room")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| "missing \"room\" string".to_owned())?;
    let room = ringcast_core::room::validate_room_name(room.as_bytes())
        .map_err(|err| format!("bad room name: {err}"))?;
    let data = match value.get("data") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => return Err("missing \"data\"".to_owned()),
    };
    let idempotency_key = match value.get("idempotency_key") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(key)) => Some(
            crate::idempotency::validate_key(key.as_bytes())
                .map_err(|err| err.to_string())?
                .to_owned(),
        ),
        Some(_) => return Err("\"idempotency_key\" must be a string".to_owned()),
    };
    Ok(Line {
        room: room.to_owned(),
        data,
        idempotency_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_lines_table() {
        type Case<'a> = (&'a str, Result<(&'a str, &'a str), &'a str>);
        let cases: &[Case] = &[
            (r#"{"room":"a","data":"hi"}"#, Ok(("a", "hi"))),
            (r#"{"room":"a","data":{"x":1}}"#, Ok(("a", "{\"x\":1}"))),
            (r#"{"data":"hi"}"#, Err("missing \"room\" string")),
            (r#"{"room":"a b","data":"x"}"#, Err("bad room name")),
            (r#"{"room":"a"}"#, Err("missing \"data\"")),
            (r#"{"room":"a","data":"hi""#, Err("not JSON")),
            ("[1,2]", Err("missing \"room\" string")),
            (
                r#"{"room":"a","data":"x","idempotency_key":7}"#,
                Err("\"idempotency_key\" must be a string"),
            ),
            (
                r#"{"room":"a","data":"x","idempotency_key":"a b"}"#,
                Err("idempotency key must be printable"),
            ),
            (
                r#"{"room":"a","data":"x","idempotency_key":""}"#,
                Err("idempotency key is empty"),
            ),
        ];
        for (line, want) in cases {
            match (parse_line(line.as_bytes()), want) {
                (Ok(got), Ok((wr, wd))) => {
                    assert_eq!((got.room.as_str(), got.data.as_str()), (*wr, *wd))
                }
                (Err(e), Err(w)) => assert!(e.starts_with(w), "{e}"),
                (got, want) => panic!("{line}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn lines_skip_blank_and_keep_numbers() {
        let body = b"a\r\n\r\n  \nb\n\tc\r\n";
        let got: Vec<(usize, &[u8])> = lines(body).collect();
        assert_eq!(got, vec![(1, &b"a"[..]), (4, b"b"), (5, b"\tc")]);
        assert_eq!(lines(b"").count(), 0);
    }

    /// Fuzz crash-9f1f70b6 (`ndjson_batch`): a line ending `\r\r\n` keeps one `\r` after the
    /// strip. That is by design (only the line break is removed) and harmless: JSON reads
    /// the `\r` as whitespace, so the line publishes as if it had none.
    #[test]
    fn crash_9f1f70b6_a_second_cr_is_json_whitespace() {
        let body = b"{\"room\":\"a\",\"data\":\"x\"}\r\r\n";
        let got: Vec<(usize, &[u8])> = lines(body).collect();
        assert_eq!(got.len(), 1);
        assert!(got[0].1.ends_with(b"}\r"));
        let line = parse_line(got[0].1).unwrap();
        assert_eq!((line.room.as_str(), line.data.as_str()), ("a", "x"));
    }

    #[test]
    fn a_line_carries_its_idempotency_key() {
        let line = parse_line(br#"{"room":"a","data":"x","idempotency_key":"k-1"}"#).unwrap();
        assert_eq!(line.idempotency_key.as_deref(), Some("k-1"));
        let line = parse_line(br#"{"room":"a","data":"x","idempotency_key":null}"#).unwrap();
        assert_eq!(line.idempotency_key, None);
    }
}
