//! The machine's life after a request: the stream, closes from either side, the drain.

use super::*;

// --- the stream ---

#[test]
fn a_stream_has_no_deadline_no_buffer_and_drops_what_the_client_sends() {
    let mut pair = Pair::new();
    pair.send(&[SUBSCRIBE, GET].concat());
    assert_eq!(pair.conn.state(), State::Streaming);
    assert!(
        pair.written.is_empty(),
        "the fan-out writes the stream's head"
    );
    assert_eq!(pair.conn.read(), Read::Discard);
    pair.advance(secs(3600));
    assert_eq!(pair.closed, None);
    pair.send(GET);
    assert_eq!(pair.requests.len(), 1, "a stream takes no more requests");
    pair.eof();
    assert_eq!(pair.closed, Some(Close::Eof));
}

#[test]
fn a_subscriber_that_floods_is_closed() {
    let mut pair = Pair::new();
    pair.send(SUBSCRIBE);
    pair.send(&vec![0u8; DISCARD_BYTES_MAX]);
    assert_eq!(pair.closed, None);
    pair.send(b"!");
    assert_eq!(pair.closed, Some(Close::Flood));
}

// --- closes ---

#[test]
fn eof_half_way_through_a_request_closes_without_a_word() {
    for at in [1, 10, GET.len() - 1, POST.len() - 2] {
        let request = if at < GET.len() { GET } else { POST };
        let mut pair = Pair::new();
        pair.send(&request[..at]);
        pair.eof();
        assert_eq!(pair.closed, Some(Close::Eof));
        assert!(pair.written.is_empty());
        assert_eq!(pair.conn.poll_timeout(), None);
    }
}

#[test]
fn a_close_while_the_answer_is_pending_drops_the_answer() {
    let mut pair = Pair::new().hold();
    pair.send(POST);
    assert!(pair.conn.awaits_answer());
    pair.eof();
    assert_eq!(pair.closed, Some(Close::Eof));
    pair.conn.respond(ok(false));
    pair.drive();
    assert!(pair.written.is_empty(), "no write after the close");
    assert_eq!(pair.conn.poll_transmit(), None);
}

#[test]
fn a_driver_close_stops_everything() {
    let mut pair = Pair::new().manual_writes();
    pair.send(GET);
    pair.conn.close();
    assert_eq!(pair.conn.state(), State::Closed);
    assert_eq!(pair.conn.poll_timeout(), None);
    // The write in flight still completes (its buffer was the driver's): nothing follows.
    pair.conn.on_written(pair.now);
    pair.in_flight = None;
    pair.conn.handle_received(pair.now, GET);
    assert_eq!(pair.conn.poll_event(pair.now), None);
    assert_eq!(pair.conn.poll_transmit(), None);
}

#[test]
fn bytes_past_one_request_while_answering_close_the_connection() {
    // A driver that keeps receiving while told to pause (TLS records carry more).
    let mut pair = Pair::new().hold();
    pair.send(GET);
    let chunk = vec![b'x'; RECEIVE_BYTES_MAX];
    pair.send(&chunk);
    assert_eq!(pair.closed, None);
    pair.send(&chunk[..limits().buffer_bytes_max()]);
    assert_eq!(pair.closed, None);
    pair.send(b"x");
    assert_eq!(pair.closed, Some(Close::Flood));
}

#[test]
fn a_refusal_from_the_application_goes_after_the_answer_in_flight() {
    let mut pair = Pair::new().manual_writes();
    pair.send(GET);
    let now = pair.now;
    pair.conn
        .refuse(now, h1::refusal(&Refusal::not_found(), true));
    pair.drive();
    assert_eq!(pair.statuses(), [200]);
    pair.write_done();
    assert_eq!(pair.statuses(), [200, 404]);
    pair.write_done();
    assert_eq!(pair.lingers, 1);
}

#[test]
fn a_refusal_at_accept_needs_no_request() {
    let mut pair = Pair::new();
    let refusal = Refusal {
        status: 503,
        reason: "connection limit".into(),
        extra: "Retry-After: 1\r\n",
    };
    let now = pair.now;
    pair.conn.refuse(now, h1::refusal(&refusal, true));
    pair.drive();
    assert_eq!(pair.statuses(), [503]);
    assert_eq!(pair.conn.state(), State::Lingering);
}

// --- drain ---

#[test]
fn a_drain_closes_an_idle_connection_at_once() {
    let mut pair = Pair::new();
    pair.send(GET);
    pair.conn.handle_drain(pair.now, secs(1));
    pair.drive();
    assert_eq!(pair.closed, Some(Close::Drain));
}

#[test]
fn a_drain_hurries_a_connection_that_has_not_spoken_and_marks_it_for_503() {
    let mut pair = Pair::new();
    pair.advance(secs(2));
    pair.conn.handle_drain(pair.now, secs(1));
    assert!(pair.conn.draining());
    assert_eq!(pair.conn.poll_timeout(), Some(pair.at(3)));
    pair.advance(secs(1));
    assert_eq!(pair.refused, [(408, Cause::HeaderTimeout)]);
    // A nearer deadline is kept.
    let mut pair = Pair::new();
    pair.advance(secs(9));
    pair.conn.handle_drain(pair.now, secs(5));
    assert_eq!(pair.conn.poll_timeout(), Some(pair.at(10)));
}

#[test]
fn a_drain_lets_the_request_in_progress_finish_then_closes() {
    let mut pair = Pair::new().manual_writes();
    pair.send(&POST[..30]);
    pair.conn.handle_drain(pair.now, secs(1));
    assert!(!pair.conn.draining(), "it spoke before the drain: served");
    assert_eq!(pair.conn.poll_timeout(), Some(pair.at(10)), "not hurried");
    pair.send(&POST[30..]);
    assert_eq!(pair.requests.len(), 1);
    assert!(String::from_utf8_lossy(&pair.written).contains("Connection: close"));
    pair.write_done();
    assert_eq!(pair.closed, Some(Close::Answered));
}

#[test]
fn a_drain_closes_a_lingering_connection() {
    let mut pair = Pair::new();
    pair.send(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n");
    pair.conn.handle_drain(pair.now, secs(1));
    pair.drive();
    assert_eq!(pair.closed, Some(Close::Drain));
}

#[test]
fn a_drain_lets_a_refusal_being_written_go_out_then_linger() {
    // The stop signal can land while a connection accepted during the drain has its
    // 503 `draining` in flight: closing it then sent the client a bare FIN.
    let mut pair = Pair::new().manual_writes();
    pair.send(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(pair.conn.state(), State::Refusing);
    pair.conn.handle_drain(pair.now, secs(1));
    pair.drive();
    assert_eq!(pair.closed, None, "not while the refusal is being written");
    pair.write_done();
    assert_eq!((pair.conn.state(), pair.closed), (State::Lingering, None));
    assert_eq!(pair.statuses(), [404]);
    pair.eof();
    assert_eq!(pair.closed, Some(Close::Lingered));
}

#[test]
fn a_drain_leaves_a_stream_to_the_fan_out() {
    let mut pair = Pair::new();
    pair.send(SUBSCRIBE);
    pair.conn.handle_drain(pair.now, secs(1));
    pair.drive();
    assert_eq!((pair.conn.state(), pair.closed), (State::Streaming, None));
}
