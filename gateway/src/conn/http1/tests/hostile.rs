//! The machine against what a client may ask: `100 Continue`, HEAD, and every hostile head
//! of issue 14 (tests/gateway_hostile_http1.rs has the real-binary versions).

use super::*;

// --- 100-continue ---

const EXPECT: &[u8] =
    b"POST /rooms/a/messages HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n";

#[test]
fn continue_is_written_once_then_the_body_is_read() {
    let mut pair = Pair::new().manual_writes();
    pair.send(EXPECT);
    assert_eq!(pair.continues, 1);
    assert_eq!(pair.written, h1::CONTINUE);
    assert_eq!(
        pair.conn.read(),
        Read::Pause,
        "nothing read while the 100 is written"
    );
    pair.write_done();
    assert_eq!(pair.conn.state(), State::Body);
    pair.send(b"he");
    assert_eq!(pair.continues, 1, "one 100 per request");
    pair.send(b"llo");
    assert_eq!(pair.requests, [(Method::Post, b"hello".to_vec())]);
    pair.write_done();
    assert_eq!(pair.statuses(), [100, 200]);
    // The next request asks again.
    pair.send(EXPECT);
    assert_eq!(pair.continues, 2);
}

#[test]
fn continue_is_not_written_when_the_body_is_in() {
    let mut pair = Pair::new();
    pair.send(&[EXPECT, b"hello"].concat());
    assert_eq!(pair.continues, 0);
    assert_eq!(pair.statuses(), [200]);
}

#[test]
fn a_head_the_application_refuses_gets_no_continue_and_its_body_is_never_read() {
    let mut pair = Pair::new();
    pair.refuse_continue = true;
    pair.send(EXPECT);
    assert_eq!(pair.statuses(), [401]);
    assert_eq!(pair.conn.state(), State::Lingering);
    pair.send(b"hello");
    assert!(pair.requests.is_empty());
}

#[test]
fn continue_refusals_from_the_head() {
    for (request, want) in [
        (&b"POST /healthz HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"[..], 405),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n", 413),
        (b"POST /publish HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 500\r\n\r\n", 413),
        (b"POST /publish HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\nContent-Length: 5\r\n\r\n", 417),
    ] {
        let mut pair = Pair::new();
        pair.send(request);
        assert_eq!(pair.continues, 0);
        assert_eq!(pair.statuses(), [want], "{}", String::from_utf8_lossy(request));
    }
}

#[test]
fn a_continue_the_client_does_not_take_closes_at_the_body_deadline() {
    let mut pair = Pair::new().manual_writes();
    pair.send(EXPECT);
    pair.advance(secs(20));
    assert_eq!(pair.closed, Some(Close::AnswerTimeout));
}

// --- HEAD ---

#[test]
fn head_gets_the_answer_without_its_body() {
    let mut pair = Pair::new();
    pair.send(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let text = String::from_utf8_lossy(&pair.written).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"));
    assert!(text.contains("Content-Length: 3\r\n"), "GET's length");
    assert!(text.ends_with("\r\n\r\n"), "no body: {text:?}");
    // The next request is a GET again: its body is written.
    pair.send(GET);
    assert!(pair.written.ends_with(b"ok\n"));
}

#[test]
fn head_on_a_stream_gets_the_head_then_a_close() {
    let mut pair = Pair::new().hold().manual_writes();
    pair.send(b"HEAD /rooms/a/events HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(pair.requests, [(Method::Head, Vec::new())]);
    pair.conn.respond_and_close(h1::sse_head_then_close());
    pair.drive();
    pair.write_done();
    assert_eq!(pair.closed, Some(Close::Answered));
    assert_eq!(pair.statuses(), [200]);
}

// --- hostile requests (issue 14; tests/gateway_hostile_http1.rs has the real-binary ones) ---

/// Each is refused from its head with this status, nothing is handed to the application,
/// and what follows is never read as a request.
#[test]
fn hostile_heads_are_refused_and_never_reach_the_application() {
    let cases: &[(&str, u16)] = &[
        // Smuggling (RFC 9112 §6.3, RFC 9110 §8.6).
        ("POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
        ("POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\n", 400),
        ("POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        ("POST /publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
        // Bad and absurd lengths.
        ("POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n", 400),
        ("POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", 400),
        ("POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 5,\r\n\r\n", 400),
        ("POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 0x5\r\n\r\n", 400),
        ("GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 18446744073709551615\r\n\r\n", 413),
        ("POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n", 413),
        ("POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n", 413),
        // Host rules (RFC 9112 §3.2).
        ("GET /healthz HTTP/1.1\r\n\r\n", 400),
        ("GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        // Bodies nobody asked for.
        ("GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n", 413),
        ("GET /rooms/a/events HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n", 413),
        ("HEAD /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n", 413),
        // Methods and paths.
        ("DELETE /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        ("POST /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        ("GET /rooms/a/messages HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        ("GET /rooms/a/b/events HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        ("get /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        ("GET /healthz HTTP/1.1\r\nHost: x\r\nLast-Event-ID: \x01\r\n\r\n", 400),
        // Garbage.
        ("\x01\x02\r\n\r\n", 400),
        ("GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n", 400),
        ("GET\0/ HTTP/1.1\r\n\r\n", 400),
    ];
    for &(head, want) in cases {
        let request = [head.as_bytes(), b"hello", GET].concat();
        // At once and byte by byte: the same refusal.
        for bytewise in [false, true] {
            let mut pair = Pair::new();
            if bytewise {
                for byte in &request {
                    pair.send(std::slice::from_ref(byte));
                }
            } else {
                pair.send(&request);
            }
            assert!(pair.requests.is_empty(), "{head:?}");
            assert_eq!(pair.refused.len(), 1, "{head:?}");
            assert_eq!(pair.statuses(), [want], "{head:?} bytewise {bytewise}");
            assert!(String::from_utf8_lossy(&pair.written).contains("Connection: close"));
            assert_eq!(pair.conn.state(), State::Lingering, "{head:?}");
        }
    }
}

#[test]
fn a_head_over_its_limit_is_refused_once_one_byte_past_it() {
    let mut pair = Pair::new();
    let mut long = b"GET /healthz HTTP/1.1\r\nX: ".to_vec();
    long.resize(limits().header_bytes_max, b'y');
    pair.send(&long);
    assert!(pair.written.is_empty());
    pair.send(b"y");
    assert_eq!(pair.statuses(), [431]);
    // Too many header fields.
    let mut pair = Pair::new();
    let many = (0..60).map(|n| format!("X{n}: v\r\n")).collect::<String>();
    pair.send(format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes());
    assert_eq!(pair.statuses(), [431]);
}

#[test]
fn a_slowloris_client_is_cut_at_the_header_deadline_whatever_it_sends() {
    // One byte every 9 s: never an idle gap, yet the head is cut at 10 s.
    let mut pair = Pair::new();
    pair.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n");
    for _ in 0..3 {
        pair.advance(secs(3));
        pair.send(b"X");
    }
    pair.advance(secs(1));
    assert_eq!(pair.refused, [(408, Cause::HeaderTimeout)]);
    // A slow body is cut at the body deadline.
    let mut pair = Pair::new();
    pair.send(&POST[..POST.len() - 5]);
    for _ in 0..4 {
        pair.advance(secs(4));
        pair.send(b"h");
    }
    pair.advance(secs(4));
    assert_eq!(pair.refused, [(408, Cause::BodyTimeout)]);
}

#[test]
fn a_refused_request_after_a_good_one_is_refused_after_its_answer() {
    let mut pair = Pair::new();
    pair.send(&[GET, b"GET /healthz HTTP/1.1\r\n\r\n"].concat());
    assert_eq!(pair.requests.len(), 1);
    assert_eq!(pair.statuses(), [200, 400]);
}
