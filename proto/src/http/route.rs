//! The route table: what a request's method and path mean, the same for every transport.
//!
//! HTTP/1.1 (http1.rs) parses a request head and routes its path here; the companion
//! (HTTP/2 and HTTP/3, companion.rs) asks the same table whether a request opens a
//! subscription before it hands the request to its shard. So a path is a subscription, a
//! publish, a 404 or a 400 alike on every transport. This module owns: the paths ringcast
//! serves, which method each answers, which take a body, which subscribe. It knows nothing
//! of bytes on the wire, status lines or headers (http1.rs), nor what a route does once
//! matched (the shard loop, shard/).

use ringcast_core::room::{validate_room_name, RoomNameError};
use thiserror::Error;

/// Methods ringcast tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// HEAD: served as GET, without the body (RFC 9110 §9.3.2).
    Head,
    /// POST.
    Post,
    /// Anything else.
    Other,
}

impl Method {
    /// The method a request line (or an HTTP/2 or HTTP/3 `:method`) names. Method names are
    /// case-sensitive (RFC 9110 §9.1): `get` is [`Method::Other`].
    pub fn from_token(token: &str) -> Method {
        match token {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            _ => Method::Other,
        }
    }
}

/// The resources ringcast serves. `R` is the room name: borrowed from the request while it
/// is routed ([`Route::parse`]), owned once the request is kept ([`Route::into_owned`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<R = String> {
    /// `/rooms/{room}/events`: the room's SSE stream.
    Events(R),
    /// `/rooms/{room}/messages`: publish one message to the room.
    Messages(R),
    /// `/rooms/{room}`: the room's figures.
    Room(R),
    /// `/publish`: a batch of messages (NDJSON, batch.rs).
    Publish,
    /// `/metrics`
    Metrics,
    /// `/healthz`
    Healthz,
    /// `/readyz`
    Readyz,
    /// `/demo`: the danmaku demo page (`http1::DEMO_HTML`), unless `--no-demo`.
    Demo,
    /// `/rooms/{room}/ws`: a WebSocket that joins the room at once (docs/PROTOCOL.md).
    RoomWs(R),
    /// `/ws`: a multiplexed WebSocket (rooms joined by message, or `?rooms=a,b`).
    Ws,
    /// `/ws/echo`: a WebSocket that echoes every message, only with `--ws-echo`
    /// (the conformance suite's endpoint).
    WsEcho,
}

/// Why a path names no route.
#[derive(Debug, PartialEq, Eq, Error)]
pub enum RouteError {
    /// No route has this path (404).
    #[error("not found")]
    NotFound,
    /// The path has a room's shape but the name is not a room name (400).
    #[error("bad room name: {0}")]
    BadRoomName(RoomNameError),
}

impl RouteError {
    /// The HTTP status of the refusal.
    pub fn status(&self) -> u16 {
        match self {
            RouteError::NotFound => 404,
            RouteError::BadRoomName(_) => 400,
        }
    }
}

impl<'a> Route<&'a str> {
    /// The route `path` names: the path of an origin-form target, without its query (HTTP/1.1
    /// request line, HTTP/2 and HTTP/3 `:path`). Matched exactly: no trailing slash, no
    /// percent-decoding (a room name never needs either).
    pub fn parse(path: &'a str) -> Result<Self, RouteError> {
        Ok(match path {
            "/publish" => Route::Publish,
            "/metrics" => Route::Metrics,
            "/healthz" => Route::Healthz,
            "/readyz" => Route::Readyz,
            "/demo" => Route::Demo,
            "/ws" => Route::Ws,
            "/ws/echo" => Route::WsEcho,
            _ => {
                let Some(rest) = path.strip_prefix("/rooms/") else {
                    return Err(RouteError::NotFound);
                };
                match rest.split_once('/') {
                    None => Route::Room(room(rest)?),
                    Some((name, "events")) => Route::Events(room(name)?),
                    Some((name, "messages")) => Route::Messages(room(name)?),
                    Some((name, "ws")) => Route::RoomWs(room(name)?),
                    Some(_) => return Err(RouteError::NotFound),
                }
            }
        })
    }

    /// The same route, its room name owned (to keep past the request's bytes).
    pub fn into_owned(self) -> Route<String> {
        match self {
            Route::Events(room) => Route::Events(room.to_owned()),
            Route::Messages(room) => Route::Messages(room.to_owned()),
            Route::Room(room) => Route::Room(room.to_owned()),
            Route::Publish => Route::Publish,
            Route::Metrics => Route::Metrics,
            Route::Healthz => Route::Healthz,
            Route::Readyz => Route::Readyz,
            Route::Demo => Route::Demo,
            Route::RoomWs(room) => Route::RoomWs(room.to_owned()),
            Route::Ws => Route::Ws,
            Route::WsEcho => Route::WsEcho,
        }
    }
}

fn room(name: &str) -> Result<&str, RouteError> {
    validate_room_name(name.as_bytes()).map_err(RouteError::BadRoomName)
}

impl<R> Route<R> {
    /// The method each route answers to (GET routes answer HEAD too).
    pub fn allowed(&self) -> Method {
        match self {
            Route::Messages(_) | Route::Publish => Method::Post,
            _ => Method::Get,
        }
    }

    /// Whether the route answers `method`.
    pub fn allows(&self, method: Method) -> bool {
        let allowed = self.allowed();
        method == allowed || (method == Method::Head && allowed == Method::Get)
    }

    /// Whether the route reads a request body (only the publishes do).
    pub fn takes_body(&self) -> bool {
        self.allowed() == Method::Post
    }

    /// Whether a `method` request on this route opens a subscription: an SSE stream that
    /// stays open (`GET /rooms/{room}/events`). `HEAD` gets the stream's head and the end.
    pub fn subscribes(&self, method: Method) -> bool {
        matches!(self, Route::Events(_)) && method == Method::Get
    }

    /// Whether the route is a WebSocket endpoint: a `GET` there must be an upgrade
    /// (conn/ws/handshake.rs), answered `101` or refused; over HTTP/2 an extended CONNECT
    /// (RFC 8441) opens one, answered `200`; HTTP/3 does not carry them (no RFC 9220).
    pub fn is_websocket(&self) -> bool {
        matches!(self, Route::RoomWs(_) | Route::Ws | Route::WsEcho)
    }
}

/// Whether a `method` request for `path` opens a subscription (what counts against
/// `--max-streams-per-conn` on HTTP/2 and HTTP/3). The table HTTP/1.1 routes with, so a
/// path HTTP/1.1 answers with 404 or 400 is no subscription on any transport.
pub fn is_subscription(method: Method, path: &str) -> bool {
    Route::parse(path).is_ok_and(|route| route.subscribes(method))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route and its neighbours: what the path means, the method it answers, whether
    /// it takes a body and whether GET on it subscribes.
    #[test]
    fn route_table() {
        use Method::{Get, Post};
        // (path, route, method answered, takes a body, GET subscribes)
        let routes: &[(&str, Route<&str>, Method, bool, bool)] = &[
            ("/rooms/a/events", Route::Events("a"), Get, false, true),
            ("/rooms/a/messages", Route::Messages("a"), Post, true, false),
            ("/rooms/a", Route::Room("a"), Get, false, false),
            (
                "/rooms/a.b:c-d_9",
                Route::Room("a.b:c-d_9"),
                Get,
                false,
                false,
            ),
            ("/publish", Route::Publish, Post, true, false),
            ("/metrics", Route::Metrics, Get, false, false),
            ("/healthz", Route::Healthz, Get, false, false),
            ("/readyz", Route::Readyz, Get, false, false),
            ("/demo", Route::Demo, Get, false, false),
            ("/rooms/a/ws", Route::RoomWs("a"), Get, false, false),
            ("/ws", Route::Ws, Get, false, false),
            ("/ws/echo", Route::WsEcho, Get, false, false),
        ];
        for (path, want, method, body, subscribes) in routes {
            let route = Route::parse(path);
            assert_eq!(route.as_ref(), Ok(want), "{path}");
            let route = route.unwrap();
            assert_eq!(route.allowed(), *method, "{path}");
            assert_eq!(route.takes_body(), *body, "{path}");
            assert_eq!(route.subscribes(Get), *subscribes, "{path}");
            assert_eq!(is_subscription(Get, path), *subscribes, "{path}");
            assert_eq!(route.clone().into_owned().allowed(), *method, "{path}");
            let websocket = path.ends_with("/ws") || path.starts_with("/ws");
            assert_eq!(route.is_websocket(), websocket, "{path}");
        }
    }

    /// Paths that name no route: 404 for an unknown shape (`/rooms/a/b/events` among them,
    /// which the companion once counted as a subscription), 400 for a bad room name.
    #[test]
    fn paths_without_a_route() {
        let cases: &[(&str, u16)] = &[
            ("/", 404),
            ("/nope", 404),
            ("/demo/x", 404),
            ("/publish/", 404),
            ("/rooms", 404),
            ("/rooms/a/nope", 404),
            ("/rooms/a/events/", 404),
            ("/rooms/a/b/events", 404),
            ("/rooms/a/b/messages", 404),
            ("/rooms/a/ws/", 404),
            ("/ws/", 404),
            ("/ws/echo/x", 404),
            ("/rooms//ws", 400),
            ("/ROOMS/a/events", 404),
            ("/rooms/", 400),
            ("/rooms//events", 400),
            ("/rooms/a%20b/events", 400),
            ("/rooms/a b", 400),
        ];
        for (path, status) in cases {
            let refused = Route::parse(path).expect_err(path);
            assert_eq!(refused.status(), *status, "{path}");
            assert!(!is_subscription(Method::Get, path), "{path}");
        }
        assert_eq!(Route::parse("/x").unwrap_err().to_string(), "not found");
        assert_eq!(
            Route::parse("/rooms//events").unwrap_err().to_string(),
            "bad room name: room name is empty"
        );
    }

    /// Which method each route answers: GET routes answer HEAD too; nothing answers others.
    #[test]
    fn methods_each_route_answers() {
        use Method::{Get, Head, Other, Post};
        let table: &[(&str, [bool; 4])] = &[
            //                      GET    HEAD   POST   other
            ("/rooms/a/events", [true, true, false, false]),
            ("/rooms/a/messages", [false, false, true, false]),
            ("/rooms/a", [true, true, false, false]),
            ("/publish", [false, false, true, false]),
            ("/metrics", [true, true, false, false]),
            ("/healthz", [true, true, false, false]),
            ("/readyz", [true, true, false, false]),
            ("/demo", [true, true, false, false]),
            ("/rooms/a/ws", [true, true, false, false]),
            ("/ws", [true, true, false, false]),
        ];
        for (path, answers) in table {
            let route = Route::parse(path).unwrap();
            for (method, want) in [Get, Head, Post, Other].into_iter().zip(answers) {
                assert_eq!(route.allows(method), *want, "{method:?} {path}");
            }
        }
        // Only GET on the events route subscribes; HEAD gets the stream's head and the end.
        for method in [Head, Post, Other] {
            assert!(!is_subscription(method, "/rooms/a/events"), "{method:?}");
        }
    }

    #[test]
    fn method_tokens_are_case_sensitive() {
        for (token, want) in [
            ("GET", Method::Get),
            ("HEAD", Method::Head),
            ("POST", Method::Post),
            ("PUT", Method::Other),
            ("get", Method::Other),
            ("", Method::Other),
        ] {
            assert_eq!(Method::from_token(token), want, "{token:?}");
        }
    }
}
