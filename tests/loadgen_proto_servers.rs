//! In-test ringcast-compatible servers for the ringload protocol tests: HTTP/1.1 and
//! HTTP/2 over TLS (ALPN), cleartext HTTP/2 (prior knowledge) via hyper, and HTTP/3 via
//! quinn + h3, with an rcgen self-signed certificate. They speak the ringcast API:
//! `GET /rooms/{room}/events` (SSE, `id:`/`data:` events), `POST /rooms/{room}/messages`
//! → 201 `{"id":N}`, `GET /healthz` → 200, anything else 404. One fault: drop the n-th
//! publish (answered 201, never delivered). Everything binds 127.0.0.1 port 0.
#![allow(dead_code)]

use bytes::{Buf, Bytes};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// Which listener(s) a server has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Cleartext HTTP/2 with prior knowledge.
    H2c,
    /// TLS, ALPN h2 or http/1.1.
    Tls,
    /// HTTP/3 over QUIC.
    H3,
}

/// Server behaviour.
#[derive(Debug, Clone, Copy, Default)]
pub struct Behaviour {
    /// Do not deliver the n-th publish (1-based over all rooms), but answer it 201.
    pub drop_publish: Option<u64>,
}

struct Room {
    subscribers: Vec<mpsc::UnboundedSender<Bytes>>,
    next_id: u64,
}

/// The ringcast API without transport.
pub struct Api {
    behaviour: Behaviour,
    rooms: Mutex<HashMap<String, Room>>,
    publishes: AtomicU64,
    /// Connections accepted (TCP or QUIC), probes included.
    pub connections: AtomicU64,
    /// QUIC connections that ended (the client closed them, or closed their streams).
    pub closed_by_peer: AtomicU64,
    /// Requests served.
    pub requests: AtomicU64,
}

/// What a request gets.
pub enum Answer {
    /// A complete response.
    Full(u16, &'static str, Bytes),
    /// An SSE stream fed by the receiver.
    Events(mpsc::UnboundedReceiver<Bytes>),
}

fn room_of<'a>(path: &'a str, suffix: &str) -> Option<&'a str> {
    let room = path.strip_prefix("/rooms/")?.strip_suffix(suffix)?;
    (!room.is_empty() && !room.contains('/')).then_some(room)
}

impl Api {
    fn new(behaviour: Behaviour) -> Arc<Api> {
        Arc::new(Api {
            behaviour,
            rooms: Mutex::new(HashMap::new()),
            publishes: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            closed_by_peer: AtomicU64::new(0),
            requests: AtomicU64::new(0),
        })
    }

    /// Serves one request.
    pub fn answer(&self, method: &str, path: &str, body: &[u8]) -> Answer {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let path = path.split('?').next().unwrap_or(path);
        if method == "GET" && path == "/healthz" {
            return Answer::Full(200, "text/plain", Bytes::from_static(b"ok\n"));
        }
        if let (Some(room), "GET") = (room_of(path, "/events"), method) {
            let (sender, receiver) = mpsc::unbounded_channel();
            let _ = sender.send(Bytes::from_static(b": hello\n\n"));
            let mut rooms = self.rooms.lock().unwrap();
            let room = rooms.entry(room.to_string()).or_insert(Room {
                subscribers: Vec::new(),
                next_id: 1,
            });
            room.subscribers.push(sender);
            return Answer::Events(receiver);
        }
        if let (Some(room), "POST") = (room_of(path, "/messages"), method) {
            let number = self.publishes.fetch_add(1, Ordering::Relaxed) + 1;
            let mut rooms = self.rooms.lock().unwrap();
            let room = rooms.entry(room.to_string()).or_insert(Room {
                subscribers: Vec::new(),
                next_id: 1,
            });
            let id = room.next_id;
            room.next_id += 1;
            if self.behaviour.drop_publish != Some(number) {
                let mut event = format!("id: {id}\ndata: ").into_bytes();
                event.extend_from_slice(body);
                event.extend_from_slice(b"\n\n");
                let event = Bytes::from(event);
                room.subscribers
                    .retain(|subscriber| subscriber.send(event.clone()).is_ok());
            }
            return Answer::Full(
                201,
                "application/json",
                Bytes::from(format!("{{\"id\":{id}}}")),
            );
        }
        Answer::Full(404, "text/plain", Bytes::from_static(b"not found\n"))
    }

    /// Publishes answered so far.
    pub fn publishes(&self) -> u64 {
        self.publishes.load(Ordering::Relaxed)
    }
}

/// A self-signed certificate for localhost and 127.0.0.1, also written to a PEM file.
pub struct TestCert {
    /// DER certificate.
    pub cert: rustls::pki_types::CertificateDer<'static>,
    /// DER private key.
    pub key: rustls::pki_types::PrivateKeyDer<'static>,
    /// PEM file of the certificate (for `--ca`).
    pub pem_path: PathBuf,
}

impl TestCert {
    fn generate() -> TestCert {
        let certified =
            rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
                .expect("rcgen");
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let pem_path = std::env::temp_dir().join(format!(
            "ringload-test-ca-{}-{}.pem",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&pem_path, certified.cert.pem()).expect("write cert");
        TestCert {
            cert: certified.cert.der().clone(),
            key: rustls::pki_types::PrivateKeyDer::Pkcs8(
                certified.signing_key.serialize_der().into(),
            ),
            pem_path,
        }
    }

    fn server_config(&self, alpn: &[&[u8]], tls13_only: bool) -> rustls::ServerConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider);
        let builder = if tls13_only {
            builder.with_protocol_versions(&[&rustls::version::TLS13])
        } else {
            builder.with_safe_default_protocol_versions()
        };
        let mut config = builder
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![self.cert.clone()], self.key.clone_key())
            .expect("server cert");
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }
}

/// A running test server; stops when dropped (its runtime thread ends with the process).
pub struct ProtoServer {
    /// Where it listens (TCP or UDP).
    pub addr: SocketAddr,
    /// The API state.
    pub api: Arc<Api>,
    /// Its certificate (TLS and H3 kinds).
    pub cert: Option<TestCert>,
    kind: Kind,
}

impl ProtoServer {
    /// Starts a server of `kind`.
    pub fn start(kind: Kind, behaviour: Behaviour) -> ProtoServer {
        let api = Api::new(behaviour);
        let cert = (kind != Kind::H2c).then(TestCert::generate);
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let server_api = api.clone();
        let config = cert.as_ref().map(|cert| match kind {
            Kind::H3 => cert.server_config(&[b"h3"], true),
            _ => cert.server_config(&[b"h2", b"http/1.1"], false),
        });
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                match kind {
                    Kind::H3 => serve_h3(server_api, config.unwrap(), addr_tx).await,
                    _ => serve_tcp(server_api, config, addr_tx).await,
                }
            });
        });
        let addr = addr_rx.recv().expect("server address");
        ProtoServer {
            addr,
            api,
            cert,
            kind,
        }
    }

    /// `scheme://127.0.0.1:port` for this server.
    pub fn origin(&self) -> String {
        let scheme = if self.kind == Kind::H2c {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// The subscribe URL template.
    pub fn sub_url(&self) -> String {
        format!("{}/rooms/{{room}}/events", self.origin())
    }

    /// The publish URL template.
    pub fn pub_url(&self) -> String {
        format!("{}/rooms/{{room}}/messages", self.origin())
    }

    /// PEM path of the certificate.
    pub fn ca(&self) -> String {
        let cert = self.cert.as_ref().expect("TLS server");
        cert.pem_path.display().to_string()
    }
}

/// SSE body fed by a channel.
struct EventBody(mpsc::UnboundedReceiver<Bytes>);

impl Body for EventBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|event| event.map(|data| Ok(Frame::data(data))))
    }
}

type ResponseBody = BoxBody<Bytes, Infallible>;

async fn hyper_service(
    api: Arc<Api>,
    request: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<ResponseBody>, Infallible> {
    let method = request.method().as_str().to_string();
    let path = request.uri().path().to_string();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|body| body.to_bytes())
        .unwrap_or_default();
    Ok(match api.answer(&method, &path, &body) {
        Answer::Full(status, content_type, body) => hyper::Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(Full::new(body).boxed())
            .unwrap(),
        Answer::Events(receiver) => hyper::Response::builder()
            .status(200)
            .header("content-type", "text/event-stream")
            .header("cache-control", "no-cache")
            .body(EventBody(receiver).boxed())
            .unwrap(),
    })
}

async fn serve_tcp(
    api: Arc<Api>,
    tls: Option<rustls::ServerConfig>,
    addr_tx: std::sync::mpsc::Sender<SocketAddr>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    addr_tx.send(listener.local_addr().unwrap()).unwrap();
    let acceptor = tls.map(|config| tokio_rustls::TlsAcceptor::from(Arc::new(config)));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        api.connections.fetch_add(1, Ordering::Relaxed);
        let api = api.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request| hyper_service(api.clone(), request));
            let executor = hyper_util::rt::TokioExecutor::new();
            match acceptor {
                Some(acceptor) => {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let builder = hyper_util::server::conn::auto::Builder::new(executor);
                    let _ = builder
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                }
                None => {
                    let _ = hyper::server::conn::http2::Builder::new(executor)
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                }
            }
        });
    }
}

async fn serve_h3(
    api: Arc<Api>,
    tls: rustls::ServerConfig,
    addr_tx: std::sync::mpsc::Sender<SocketAddr>,
) {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
    let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
    addr_tx.send(endpoint.local_addr().unwrap()).unwrap();
    while let Some(incoming) = endpoint.accept().await {
        api.connections.fetch_add(1, Ordering::Relaxed);
        let api = api.clone();
        tokio::spawn(async move {
            let Ok(connection) = incoming.await else {
                return;
            };
            let watched = connection.clone();
            let watcher = api.clone();
            tokio::spawn(async move {
                // Whichever side closes first (the client's CONNECTION_CLOSE, or the h3
                // layer here reacting to the client's streams ending), the client said it
                // is gone; a client that just vanishes ends nothing before the idle timeout.
                let _reason = watched.closed().await;
                watcher.closed_by_peer.fetch_add(1, Ordering::Relaxed);
            });
            let Ok(mut h3_conn) =
                h3::server::Connection::<_, Bytes>::new(h3_quinn::Connection::new(connection))
                    .await
            else {
                return;
            };
            while let Ok(Some(resolver)) = h3_conn.accept().await {
                let api = api.clone();
                tokio::spawn(async move {
                    let Ok((request, mut stream)) = resolver.resolve_request().await else {
                        return;
                    };
                    let mut body = Vec::new();
                    while let Ok(Some(mut data)) = stream.recv_data().await {
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            body.extend_from_slice(chunk);
                            let len = chunk.len();
                            data.advance(len);
                        }
                    }
                    let answer = api.answer(request.method().as_str(), request.uri().path(), &body);
                    match answer {
                        Answer::Full(status, content_type, body) => {
                            let response = http::Response::builder()
                                .status(status)
                                .header("content-type", content_type)
                                .body(())
                                .unwrap();
                            if stream.send_response(response).await.is_ok()
                                && stream.send_data(body).await.is_ok()
                            {
                                let _ = stream.finish().await;
                            }
                        }
                        Answer::Events(mut receiver) => {
                            let response = http::Response::builder()
                                .status(200)
                                .header("content-type", "text/event-stream")
                                .body(())
                                .unwrap();
                            if stream.send_response(response).await.is_err() {
                                return;
                            }
                            while let Some(event) = receiver.recv().await {
                                if stream.send_data(event).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
    }
}
