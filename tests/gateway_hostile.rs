//! Hostile clients against the real `ringcast` binary (issue 14): each case is a request a
//! client on the open internet can send, found from outside with raw sockets. Every one gets
//! a clear answer, and the server keeps serving everyone else.

mod common;

use common::{Client, Server, PATIENCE};

/// Issue 14 case 1: `Content-Length: 2^64-1` on a GET wrapped `head + body` and panicked the
/// shard ("slice index starts at 72 but ends at 71"), which ended the whole process. The
/// declared length is refused from the head with 413 and the connection closed.
#[test]
fn a_content_length_of_2_pow_64_minus_1_is_refused_not_a_crash() {
    let server = Server::start(&["--shards", "2"]);
    for _ in 0..4 {
        // Four connections: both shards see it.
        let mut client = Client::connect(server.addr);
        client
            .send(
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 18446744073709551615\r\n\r\n",
            )
            .unwrap();
        let response = client.read_response().expect("an answer, not a reset");
        assert_eq!(response.status, 413, "{response:?}");
        client.read_until_closed(PATIENCE);
    }
    let mut client = Client::connect(server.addr);
    assert_eq!(client.request("GET", "/healthz", &[], b"").status, 200);
    assert_eq!(client.publish("a", "still here").seq, 1);
}
