//! JWT publish and private-room subscribe tokens (issue 8, item 1) against the real binary,
//! over HTTP/1.1, HTTP/2 (h2c) and HTTP/3: no token, a bad signature, an expired token and a
//! token for another room are refused (401 with a `WWW-Authenticate: Bearer` challenge, or
//! 403), a valid one goes through — for publishes, and for subscribes with the header and
//! with `?token=`; every refusal is counted by reason. A second test checks an ES256 public
//! key file.

mod common;
mod transports;

use common::{Client, Server, Sse};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use transports::{h2_connect, h2_send, request, H3Client, TestCert};

const WAIT: Duration = Duration::from_secs(5);
const PUBLISH_SECRET: &str = "publish-secret";
const SUBSCRIBE_SECRET: &str = "subscribe-secret";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs256(secret: &str, claims: serde_json::Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// The tokens of one test case: `secret` signs them, `room` is what they allow.
struct Tokens {
    valid: String,
    bad_signature: String,
    expired: String,
    other_room: String,
}

impl Tokens {
    fn new(secret: &str, room: &str) -> Tokens {
        let exp = now() + 600;
        Tokens {
            valid: hs256(secret, serde_json::json!({"exp": exp, "rooms": [room]})),
            bad_signature: hs256(
                "not-the-key",
                serde_json::json!({"exp": exp, "rooms": [room]}),
            ),
            // Past the 30 s leeway.
            expired: hs256(
                secret,
                serde_json::json!({"exp": now() - 120, "rooms": [room]}),
            ),
            other_room: hs256(secret, serde_json::json!({"exp": exp, "room": "elsewhere"})),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    H1,
    H2,
    H3,
}

/// An answer with an end: status, `WWW-Authenticate`, body.
#[derive(Debug)]
struct Answer {
    status: u16,
    challenge: Option<String>,
    body: String,
}

struct Clients {
    server: Server,
    h2: hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>>,
    h3: H3Client,
}

impl Clients {
    /// A request that is answered and ends (refusals, publishes).
    async fn ask(
        &mut self,
        via: Via,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Answer {
        match via {
            Via::H1 => {
                let method = if body.is_some() { "POST" } else { "GET" };
                let mut client = Client::connect(self.server.addr);
                let response = client.request(method, path, headers, body.unwrap_or("").as_bytes());
                Answer {
                    status: response.status,
                    challenge: response.header("www-authenticate").map(str::to_owned),
                    body: response.text(),
                }
            }
            Via::H2 => {
                let stream = h2_send(&mut self.h2, request(path, headers, body), true).await;
                let challenge = stream
                    .headers
                    .get("www-authenticate")
                    .map(|v| v.to_str().unwrap().to_owned());
                Answer {
                    status: stream.status,
                    challenge,
                    body: stream.text().await,
                }
            }
            Via::H3 => {
                let stream = self.h3.send(path, headers, body, true).await;
                let challenge = stream
                    .headers
                    .get("www-authenticate")
                    .map(|v| v.to_str().unwrap().to_owned());
                Answer {
                    status: stream.status,
                    challenge,
                    body: stream.text().await,
                }
            }
        }
    }

    /// A subscribe that must be admitted; returns once `data`, published afterwards, arrived.
    async fn subscribe_ok(
        &mut self,
        via: Via,
        path: &str,
        headers: &[(&str, &str)],
        room: &str,
        data: &str,
    ) {
        let publish_token = hs256(
            PUBLISH_SECRET,
            serde_json::json!({"exp": now() + 60, "rooms": ["*"]}),
        );
        let bearer = format!("Bearer {publish_token}");
        let publish = |server: &Server| {
            let response = server.client().request(
                "POST",
                &format!("/rooms/{room}/messages"),
                &[("Authorization", &bearer)],
                data.as_bytes(),
            );
            assert_eq!(response.status, 201, "{response:?}");
        };
        match via {
            Via::H1 => {
                let mut sse = Sse::open(self.server.addr, path, headers);
                publish(&self.server);
                assert_eq!(sse.next_event(WAIT).data, data, "{via:?} {path}");
            }
            Via::H2 => {
                let mut stream = h2_send(&mut self.h2, request(path, headers, None), true).await;
                assert_eq!(stream.status, 200, "{via:?} {path}");
                wait_subscribers(&self.server, room).await;
                publish(&self.server);
                assert_eq!(stream.next_event(WAIT).await.data, data, "{via:?} {path}");
            }
            Via::H3 => {
                let mut stream = self.h3.send(path, headers, None, true).await;
                assert_eq!(stream.status, 200, "{via:?} {path}");
                wait_subscribers(&self.server, room).await;
                publish(&self.server);
                assert_eq!(stream.next_event(WAIT).await.data, data, "{via:?} {path}");
            }
        }
    }
}

/// The 200 head of an HTTP/2 or HTTP/3 subscribe can reach the client a moment before the
/// shard's fan-out counts it; wait until the room has a subscriber.
async fn wait_subscribers(server: &Server, room: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.room(room)["subscribers"].as_u64() == Some(0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no subscriber in {room}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn expect(answer: &Answer, status: u16, body: &str, what: &str) {
    assert_eq!(answer.status, status, "{what}: {answer:?}");
    assert!(answer.body.starts_with(body), "{what}: {answer:?}");
    if status == 401 || status == 403 {
        let challenge = answer.challenge.as_deref().unwrap_or_default();
        assert!(challenge.starts_with("Bearer "), "{what}: {answer:?}");
    }
    if status == 401 && body != "bearer token required" {
        assert!(
            answer
                .challenge
                .as_deref()
                .unwrap_or_default()
                .contains("invalid_token"),
            "{what}: {answer:?}"
        );
    }
}

#[test]
fn tokens_are_checked_the_same_on_http1_http2_and_http3() {
    let cert = TestCert::new();
    let mut args = cert.args();
    let publish_key = format!("hs256:{PUBLISH_SECRET}");
    let subscribe_key = format!("hs256:{SUBSCRIBE_SECRET}");
    args.extend(
        [
            "--shards",
            "2",
            "--h2c-listen",
            "127.0.0.1:0",
            "--h3-listen",
            "127.0.0.1:0",
            "--publish-key",
            &publish_key,
            "--subscribe-key",
            &subscribe_key,
            "--private-rooms",
            "private-*,vip",
        ]
        .map(String::from),
    );
    let server = transports::start(&args);
    let h2c = transports::addr_of(&server, "h2c");
    let h3 = transports::addr_of(&server, "h3");
    transports::runtime().block_on(async {
        let h2 = h2_connect(tokio::net::TcpStream::connect(h2c).await.unwrap(), None).await;
        let h3 = H3Client::connect(h3, &cert, None).await;
        let mut clients = Clients { server, h2, h3 };
        let publish = Tokens::new(PUBLISH_SECRET, "news");
        let subscribe = Tokens::new(SUBSCRIBE_SECRET, "private-1");
        let mut counted = 0;
        for via in [Via::H1, Via::H2, Via::H3] {
            // Publishes.
            let path = "/rooms/news/messages";
            let cases = [
                (None, 401, "bearer token required", "no token"),
                (
                    Some(&publish.bad_signature),
                    401,
                    "invalid token: bad signature",
                    "bad signature",
                ),
                (Some(&publish.expired), 401, "token expired", "expired"),
                (
                    Some(&publish.other_room),
                    403,
                    "token does not allow this room",
                    "other room",
                ),
                // A subscribe key's token is not a publish token.
                (
                    Some(&subscribe.valid),
                    401,
                    "invalid token: bad signature",
                    "subscribe token",
                ),
            ];
            for (token, status, body, what) in cases {
                let bearer = token.map(|t| format!("Bearer {t}"));
                let headers: Vec<(&str, &str)> = bearer
                    .iter()
                    .map(|b| ("authorization", b.as_str()))
                    .collect();
                let answer = clients.ask(via, path, &headers, Some("x")).await;
                expect(&answer, status, body, &format!("{via:?} publish, {what}"));
                counted += 1;
            }
            let bearer = format!("Bearer {}", publish.valid);
            let answer = clients
                .ask(via, path, &[("authorization", &bearer)], Some("hello"))
                .await;
            assert_eq!(answer.status, 201, "{via:?} valid publish: {answer:?}");
            // A batch: the token is checked once, each line's room against it.
            let batch =
                "{\"room\":\"news\",\"data\":\"a\"}\n{\"room\":\"sports\",\"data\":\"b\"}\n";
            let answer = clients
                .ask(via, "/publish", &[("authorization", &bearer)], Some(batch))
                .await;
            assert_eq!(answer.status, 200, "{via:?} batch: {answer:?}");
            let results: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
            assert!(results["results"][0]["id"].is_string(), "{via:?} {results}");
            assert_eq!(
                results["results"][1]["error"], "line 2: token does not allow this room",
                "{via:?} {results}"
            );
            counted += 1;
            let answer = clients.ask(via, "/publish", &[], Some(batch)).await;
            expect(
                &answer,
                401,
                "bearer token required",
                &format!("{via:?} batch, no token"),
            );
            counted += 1;

            // Subscribes to a private room, the token in the header and in the query.
            for in_query in [false, true] {
                let cases = [
                    (None, 401, "bearer token required", "no token"),
                    (
                        Some(&subscribe.bad_signature),
                        401,
                        "invalid token: bad signature",
                        "bad signature",
                    ),
                    (Some(&subscribe.expired), 401, "token expired", "expired"),
                    (
                        Some(&subscribe.other_room),
                        403,
                        "token does not allow this room",
                        "other room",
                    ),
                    (
                        Some(&publish.valid),
                        401,
                        "invalid token: bad signature",
                        "publish token",
                    ),
                ];
                for (token, status, body, what) in cases {
                    let (path, bearer) = match (token, in_query) {
                        (Some(t), true) => (format!("/rooms/private-1/events?token={t}"), None),
                        (Some(t), false) => (
                            "/rooms/private-1/events".to_owned(),
                            Some(format!("Bearer {t}")),
                        ),
                        (None, _) => ("/rooms/private-1/events".to_owned(), None),
                    };
                    let headers: Vec<(&str, &str)> = bearer
                        .iter()
                        .map(|b| ("authorization", b.as_str()))
                        .collect();
                    let answer = clients.ask(via, &path, &headers, None).await;
                    let what = format!("{via:?} subscribe (query: {in_query}), {what}");
                    expect(&answer, status, body, &what);
                    counted += 1;
                }
                let data = format!("{via:?} {in_query}");
                if in_query {
                    let path = format!("/rooms/private-1/events?token={}", subscribe.valid);
                    clients
                        .subscribe_ok(via, &path, &[], "private-1", &data)
                        .await;
                } else {
                    let bearer = format!("Bearer {}", subscribe.valid);
                    clients
                        .subscribe_ok(
                            via,
                            "/rooms/private-1/events",
                            &[("authorization", &bearer)],
                            "private-1",
                            &data,
                        )
                        .await;
                }
            }
            // Public rooms need no token.
            let data = format!("{via:?} public");
            clients
                .subscribe_ok(via, "/rooms/news/events", &[], "news", &data)
                .await;
        }
        let metrics = clients.server.metrics();
        let by_reason: Vec<(&str, u64)> = [
            "token_missing",
            "token_invalid",
            "token_expired",
            "room_forbidden",
        ]
        .into_iter()
        .map(|reason| (reason, metrics.by_reason("ringcast_refusals_total", reason)))
        .collect();
        // Per transport: publish 1 missing, 2 invalid, 1 expired, 1 forbidden; batch 1
        // forbidden line, 1 missing; subscribe ×2: 1 missing, 2 invalid, 1 expired, 1 forbidden.
        assert_eq!(
            by_reason,
            [
                ("token_missing", 3 * 4),
                ("token_invalid", 3 * 6),
                ("token_expired", 3 * 3),
                ("room_forbidden", 3 * 4)
            ],
            "{}",
            metrics.0
        );
        assert_eq!(by_reason.iter().map(|(_, n)| n).sum::<u64>(), counted);
    });
}

#[test]
fn an_es256_public_key_file_checks_publish_tokens() {
    let pair = rcgen::KeyPair::generate().expect("a P-256 key");
    let dir = std::env::temp_dir().join(format!("ringcast-jwt-es-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let public = dir.join("publish.pub.pem");
    std::fs::write(&public, pair.public_key_pem()).unwrap();
    let key = public.display().to_string();
    let server = Server::start(&["--shards", "1", "--publish-key", &key]);
    let signing = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
    let sign =
        |alg, claims: serde_json::Value| encode(&Header::new(alg), &claims, &signing).unwrap();
    let claims = serde_json::json!({"exp": now() + 60, "rooms": ["es-*"]});
    let good = sign(Algorithm::ES256, claims.clone());
    let mut client = server.client();
    let publish = |client: &mut Client, room: &str, token: &str| {
        let bearer = format!("Bearer {token}");
        client.request(
            "POST",
            &format!("/rooms/{room}/messages"),
            &[("Authorization", &bearer)],
            b"x",
        )
    };
    assert_eq!(publish(&mut client, "es-1", &good).status, 201);
    let response = publish(&mut server.client(), "other", &good);
    assert_eq!(response.status, 403, "{response:?}");
    // The key's own algorithm only: an HS256 token "signed" with the public key's PEM text
    // (the classic RS/HS confusion) is refused.
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(pair.public_key_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    let response = publish(&mut server.client(), "es-1", &confused);
    assert_eq!(response.status, 401, "{response:?}");
    assert_eq!(response.text(), "invalid token: wrong algorithm\n");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_private_room_without_a_subscribe_key_stops_the_start() {
    let (code, log) = common::run_to_exit(
        &["--listen", "127.0.0.1:0", "--private-rooms", "vip"],
        Duration::from_secs(5),
    );
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("--subscribe-key"), "{log}");
    let (code, log) = common::run_to_exit(
        &[
            "--listen",
            "127.0.0.1:0",
            "--publish-key",
            "/nonexistent.pem",
        ],
        Duration::from_secs(5),
    );
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("--publish-key"), "{log}");
}
