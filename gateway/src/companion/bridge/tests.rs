//! The bridge's unit tests: batching into chunks, request and response translation, what counts as a subscription, length limits from the head.

use super::*;

#[test]
fn batches_become_few_chunks() {
    let mut out = VecDeque::new();
    join_batch(vec![Bytes::from_static(b"one")], &mut out);
    assert_eq!(out.len(), 1);
    out.clear();
    join_batch(
        vec![
            Bytes::from_static(b"a"),
            Bytes::from_static(b"bc"),
            Bytes::from_static(b"d"),
        ],
        &mut out,
    );
    assert_eq!(out, [Bytes::from_static(b"abcd")]);
    out.clear();
    let big = Bytes::from(vec![b'x'; CHUNK_BYTES_MAX]);
    let half = Bytes::from(vec![b'y'; CHUNK_BYTES_MAX / 2 + 1]);
    join_batch(
        vec![
            half.clone(),
            half.clone(),
            big.clone(),
            Bytes::from_static(b"z"),
        ],
        &mut out,
    );
    let lens: Vec<usize> = out.iter().map(Bytes::len).collect();
    assert_eq!(lens, [half.len(), half.len(), big.len(), 1]);
    let joined: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
    let expected: Vec<u8> = [&half[..], &half[..], &big[..], b"z"].concat();
    assert_eq!(joined, expected);
}

#[test]
fn h2_request_becomes_http1() {
    let request = http::Request::builder()
        .method("GET")
        .uri("https://example.org:8443/rooms/a/events?last_event_id=3")
        .header("last-event-id", "2")
        .header("connection", "keep-alive")
        .body(())
        .unwrap();
    let (parts, ()) = request.into_parts();
    let bytes = http1_request(&parts, b"", 0);
    let text = String::from_utf8(bytes).unwrap();
    assert!(
        text.starts_with("GET /rooms/a/events?last_event_id=3 HTTP/1.1\r\n"),
        "{text}"
    );
    assert!(text.contains("host: example.org:8443\r\n"));
    assert!(text.contains("last-event-id: 2\r\n"));
    assert!(!text.contains("keep-alive"));
    assert!(text.ends_with("\r\n\r\n"));
}

/// The companion counts a request against `--max-streams-per-conn` exactly when the
/// route table makes it a subscription: `/rooms/a/b/events` (404 on HTTP/1.1) is none.
#[test]
fn subscriptions_are_what_the_route_table_says() {
    let parts = |method: &str, uri: &str| {
        let request = http::Request::builder().method(method).uri(uri);
        request.body(()).unwrap().into_parts().0
    };
    let table = [
        ("GET", "/rooms/a/events", true),
        (
            "GET",
            "https://example.org/rooms/a/events?last_event_id=1-2",
            true,
        ),
        ("HEAD", "/rooms/a/events", false),
        ("POST", "/rooms/a/events", false),
        ("GET", "/rooms/a/b/events", false),
        ("GET", "/rooms//events", false),
        ("GET", "/rooms/a%20b/events", false),
        ("GET", "/rooms/a/messages", false),
        ("GET", "/metrics", false),
    ];
    for (method, uri, want) in table {
        assert_eq!(is_subscribe(&parts(method, uri)), want, "{method} {uri}");
    }
}

#[test]
fn a_declared_length_over_the_limit_is_refused_from_the_head() {
    let parts = |length: &str| {
        let (parts, ()) = http::Request::builder()
            .method("POST")
            .uri("/rooms/a/messages")
            .header("content-length", length)
            .body(())
            .unwrap()
            .into_parts();
        parts
    };
    let table = [
        ("10", None),
        ("100", None),
        ("101", Some(101)),
        ("18446744073709551615", Some(101)),
        ("99999999999999999999999999", Some(101)),
        ("", None),
        ("-1", None),
    ];
    for (length, want) in table {
        assert_eq!(declared_over_limit(&parts(length), 100), want, "{length:?}");
    }
    let (none, ()) = http::Request::new(()).into_parts();
    assert_eq!(declared_over_limit(&none, 100), None);
}

#[test]
fn response_heads_lose_connection_fields() {
    let head = crate::http::h1::response(201, "application/json", "", b"{\"id\":1}", true);
    let (parts, len, content_length) = parse_head(&head).unwrap().unwrap();
    assert_eq!(parts.status, 201);
    assert_eq!(len, head.len() - 8);
    assert_eq!(content_length, Some(8));
    assert!(parts.headers.get("connection").is_none());
    let (parts, _, content_length) = parse_head(crate::http::h1::SSE_HEAD).unwrap().unwrap();
    assert_eq!(parts.status, 200);
    assert_eq!(content_length, None);
    assert!(matches!(parse_head(b"HTTP/1.1 200 OK\r\n"), Ok(None)));
}
