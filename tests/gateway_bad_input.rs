//! Bad input against the real `ringcast` binary (issue 3): each malformed or refused
//! request gets its status with a short plain-text body, and then the connection is closed;
//! a publish accepted earlier on the same connection is still delivered.

mod common;

use common::{Client, Server};
use std::time::{Duration, Instant};

const MAX_MESSAGE_BYTES: usize = 1000;
/// Long enough that a loaded 2-core CI machine never times out a well-formed request of
/// these tests by accident, short enough to keep the 408 test quick.
const HEADER_TIMEOUT: Duration = Duration::from_millis(1500);

fn server() -> Server {
    Server::start(&[
        "--shards",
        "2",
        "--max-message-bytes",
        "1000",
        "--header-timeout",
        "1.5",
    ])
}

struct Case {
    name: &'static str,
    request: Vec<u8>,
    status: u16,
    allow: Option<&'static str>,
}

fn case(name: &'static str, request: impl Into<Vec<u8>>, status: u16) -> Case {
    Case {
        name,
        request: request.into(),
        status,
        allow: None,
    }
}

fn cases() -> Vec<Case> {
    let mut body_too_large = format!(
        "POST /rooms/a/messages HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        2 * MAX_MESSAGE_BYTES
    )
    .into_bytes();
    body_too_large.resize(body_too_large.len() + 2 * MAX_MESSAGE_BYTES, b'z');
    let many_headers: String = (0..60).map(|i| format!("X-Header-{i}: y\r\n")).collect();
    vec![
        case("garbage request line", "this is not http\r\n\r\n", 400),
        case(
            "bad room name",
            "GET /rooms/a%20b/events HTTP/1.1\r\nHost: x\r\n\r\n",
            400,
        ),
        case(
            "non-ASCII Last-Event-ID",
            "GET /rooms/a/events HTTP/1.1\r\nHost: x\r\nLast-Event-ID: s\u{f6}\u{f6}n\r\n\r\n",
            400,
        ),
        case("unknown path", "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        Case {
            allow: Some("POST"),
            ..case(
                "GET on messages",
                "GET /rooms/a/messages HTTP/1.1\r\nHost: x\r\n\r\n",
                405,
            )
        },
        Case {
            // GET routes answer HEAD too (issue 14 case 5).
            allow: Some("GET, HEAD"),
            ..case(
                "POST on events",
                "POST /rooms/a/events HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",
                405,
            )
        },
        case(
            "chunked body",
            "POST /rooms/a/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            411,
        ),
        case("body over --max-message-bytes", body_too_large, 413),
        case(
            "head over --max-header-bytes",
            format!(
                "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
                "y".repeat(20_000)
            ),
            431,
        ),
        case(
            "more than 48 headers",
            format!("GET /healthz HTTP/1.1\r\n{many_headers}\r\n"),
            431,
        ),
    ]
}

/// Reads a refusal and checks it is what `want` says, with a text body, and that the
/// server then closes the connection.
fn expect_refusal(client: &mut Client, name: &str, status: u16, allow: Option<&str>) {
    let response = client
        .read_response()
        .unwrap_or_else(|err| panic!("{name}: no response: {err}"));
    assert_eq!(response.status, status, "{name}: {response:?}");
    assert!(
        response
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain")),
        "{name}: {response:?}"
    );
    assert!(
        !response.text().trim().is_empty(),
        "{name}: the refusal has a body"
    );
    assert_eq!(response.header("connection"), Some("close"), "{name}");
    if let Some(allow) = allow {
        assert_eq!(response.header("allow"), Some(allow), "{name}");
    }
    let rest = client.read_until_closed(Duration::from_secs(5));
    assert!(
        rest.is_empty(),
        "{name}: nothing follows a refusal, got {:?}",
        String::from_utf8_lossy(&rest)
    );
}

#[test]
fn bad_requests_get_their_status_a_text_body_and_a_close() {
    let server = server();
    for Case {
        name,
        request,
        status,
        allow,
    } in cases()
    {
        let mut client = server.client();
        client
            .send(&request)
            .unwrap_or_else(|err| panic!("{name}: send: {err}"));
        expect_refusal(&mut client, name, status, allow);
    }
    // The server is still serving.
    let response = server.client().request("GET", "/healthz", &[], b"");
    assert_eq!((response.status, response.text().as_str()), (200, "ok\n"));
}

/// A head that is not complete within `--header-timeout` gets 408, not sooner.
#[test]
fn slow_request_head_gets_408() {
    let server = server();
    let mut client = server.client();
    let sent = Instant::now();
    client
        .send(b"GET /rooms/a/events HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    expect_refusal(&mut client, "partial head", 408, None);
    let waited = sent.elapsed();
    assert!(
        waited >= HEADER_TIMEOUT - Duration::from_millis(20),
        "408 after {waited:?}, before the {HEADER_TIMEOUT:?} timeout"
    );
    // A client that sends nothing at all is timed out too.
    let mut silent = server.client();
    expect_refusal(&mut silent, "no bytes", 408, None);
}

/// An accepted publish is never lost: on one keep-alive connection, a good publish (201)
/// pipelined with a garbage request; the subscriber still gets the message. The rooms
/// are owned by each shard in turn, so both the local and the cross-shard publish paths
/// are covered.
#[test]
fn accepted_publish_survives_a_bad_request_after_it() {
    let server = server();
    let rooms: Vec<String> = (0..)
        .map(|i| format!("kept{i}"))
        .filter(|room| ringcast_core::room::owner_shard(room, 2) == 0)
        .take(1)
        .chain(
            (0..)
                .map(|i| format!("kept{i}"))
                .filter(|room| ringcast_core::room::owner_shard(room, 2) == 1)
                .take(1),
        )
        .collect();
    for room in &rooms {
        let mut subscriber = server.subscribe(room, None);
        let mut client = server.client();
        // Sequentially first: 201, then the bad request on the same connection.
        let first = client.publish(room, "first");
        assert_eq!(first.seq, 1);
        client.send(b"GARBAGE\r\n\r\n").unwrap();
        expect_refusal(&mut client, "bad request after a publish", 400, None);
        // Pipelined: both in one write.
        let mut client = server.client();
        let mut bytes = format!(
            "POST /rooms/{room}/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nsecond"
        )
        .into_bytes();
        bytes.extend_from_slice(b"GET /rooms/a%20b/events HTTP/1.1\r\n\r\n");
        client.send(&bytes).unwrap();
        let accepted = client.read_response().expect("publish answer");
        assert_eq!(accepted.status, 201, "{accepted:?}");
        assert_eq!(accepted.text(), format!(r#"{{"id":"{}"}}"#, first.at(2)));
        expect_refusal(&mut client, "pipelined bad request", 400, None);

        for (id, data) in [(1, "first"), (2, "second")] {
            let event = subscriber.next_event(Duration::from_secs(5));
            assert_eq!(
                (event.id.map(|id| id.seq), event.data.as_str()),
                (Some(id), data),
                "{room}"
            );
        }
    }
}
