//! `ringcast_proto::http::h1::parse` on arbitrary bytes with small limits: it never panics, a head
//! it accepts lies within the input and the header limit, a POST's declared body respects
//! the body limit, a routed room name is valid, and `header_fields` agrees it is a head.
#![no_main]

use ringcast_proto::http::h1::{self as http1, Method, Parsed, Route};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first two bytes pick the limits (small, so the limit paths are reached); the
    // rest is what a connection sent.
    let [a, b, input @ ..] = data else { return };
    let max_header_bytes = 16 + usize::from(*a) * 4;
    let max_body_bytes = usize::from(*b) * 16;
    match http1::parse(input, max_header_bytes, max_body_bytes) {
        Ok(Parsed::Partial) => assert!(input.len() <= max_header_bytes),
        Ok(Parsed::Head(head)) => {
            assert!(
                head.len <= input.len(),
                "head {} > input {}",
                head.len,
                input.len()
            );
            assert!(head.len <= max_header_bytes);
            assert!(input[..head.len].ends_with(b"\n"));
            if head.method == Method::Post {
                assert!(head.content_length <= max_body_bytes);
            }
            match &head.route {
                Route::Events(room) | Route::Messages(room) | Route::Room(room) => {
                    assert!(ringcast_core::room::validate_room_name(room.as_bytes()).is_ok());
                }
                _ => {}
            }
            // The auth call's view of the same head parses it too.
            let fields = http1::header_fields(&input[..head.len]);
            assert!(fields.len() <= http1::HEADERS_MAX);
            // Rendering a response for it never panics.
            let _ = http1::response(200, "text/plain", "", b"ok", head.close);
        }
        Err(refusal) => {
            assert!((400..600).contains(&refusal.status), "{refusal:?}");
            let bytes = http1::refusal(&refusal, true);
            assert!(bytes.starts_with(b"HTTP/1.1 "));
        }
    }
});
