//! What the transport tests (TLS, HTTP/2, HTTP/3) share: a throw-away certificate made
//! with rcgen at test time, the companion listeners' addresses from the server log, and
//! async SSE clients over hyper (HTTP/2, HTTP/1.1 over TLS) and quinn + h3 that feed one
//! event reader.

#![allow(dead_code)] // each test file uses a different part of this module

use crate::common::{Event, Server};
use bytes::{Buf, Bytes};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// A certificate for `localhost` and its key, as PEM files in a fresh directory.
pub struct TestCert {
    /// Certificate file.
    pub cert: PathBuf,
    /// Key file.
    pub key: PathBuf,
    /// The certificate, for the clients' root store.
    pub der: CertificateDer<'static>,
}

impl TestCert {
    /// Makes one (rcgen, at test time: no key is ever committed).
    pub fn new() -> TestCert {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .expect("rcgen makes a certificate");
        let dir = std::env::temp_dir().join(format!(
            "ringcast-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        TestCert {
            cert,
            key,
            der: made.cert.der().clone(),
        }
    }

    /// `--tls-cert FILE --tls-key FILE`.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.cert.display().to_string(),
            "--tls-key".into(),
            self.key.display().to_string(),
        ]
    }

    /// A client configuration trusting this certificate only, offering `alpn`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

impl Drop for TestCert {
    fn drop(&mut self) {
        if let Some(dir) = self.cert.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Starts `ringcast` with `args` (strings).
pub fn start(args: &[String]) -> Server {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(&args)
}

/// The address the server logged as `listening NAME addr=…`.
pub fn addr_of(server: &Server, name: &str) -> SocketAddr {
    let log = server.log();
    let marker = format!("listening {name} addr=");
    let at = log
        .find(&marker)
        .unwrap_or_else(|| panic!("no {marker} in the log:\n{log}"));
    let rest = &log[at + marker.len()..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
        .unwrap_or(rest.len());
    rest[..end].parse().expect("an address")
}

/// A current-thread tokio runtime for a test's clients.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Polls `/metrics` until `condition` holds (yielding to the clients in between).
pub async fn wait_metrics(
    server: &Server,
    timeout: Duration,
    mut condition: impl FnMut(&crate::common::Metrics) -> bool,
) -> crate::common::Metrics {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let metrics = server.metrics();
        if condition(&metrics) || tokio::time::Instant::now() > deadline {
            return metrics;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `ringcast_connections{transport="T"}` summed over shards.
pub fn connections(metrics: &crate::common::Metrics, transport: &str) -> u64 {
    labelled(
        metrics,
        "ringcast_connections",
        &format!("transport=\"{transport}\""),
    )
}

/// A response: status, headers, and its body arriving in pieces.
pub struct Stream {
    /// Status code.
    pub status: u16,
    /// Header fields.
    pub headers: http::HeaderMap,
    body: mpsc::Receiver<Bytes>,
    buf: Vec<u8>,
}

impl Stream {
    /// The next SSE event (comments skipped); panics after `timeout`.
    pub async fn next_event(&mut self, timeout: Duration) -> Event {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            while let Some(end) = find(&self.buf, b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8(block).unwrap();
                if let Some(event) = parse_event(&text) {
                    return event;
                }
            }
            match tokio::time::timeout_at(deadline, self.body.recv()).await {
                Ok(Some(piece)) => self.buf.extend_from_slice(&piece),
                Ok(None) => panic!(
                    "stream ended; unread: {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
                Err(_) => panic!("no event within {timeout:?}"),
            }
        }
    }

    /// The whole body (for answers with an end).
    pub async fn text(mut self) -> String {
        while let Some(piece) = self.body.recv().await {
            self.buf.extend_from_slice(&piece);
        }
        String::from_utf8(self.buf).unwrap()
    }

    /// Whether the body ends (the server closed the stream) within `timeout`, reading and
    /// dropping what comes until then.
    pub async fn ends_within(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.body.recv()).await {
                Ok(Some(_)) => {}
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse_event(block: &str) -> Option<Event> {
    let mut event = Event {
        id: None,
        event: None,
        data: String::new(),
    };
    let mut fields = 0;
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("id: ") {
            event.id = Some(crate::common::Id::parse(v));
        } else if let Some(v) = line.strip_prefix("event: ") {
            event.event = Some(v.to_owned());
        } else if let Some(v) = line.strip_prefix("data: ") {
            if fields > 0 && !event.data.is_empty() {
                event.data.push('\n');
            }
            event.data.push_str(v);
        } else {
            continue;
        }
        fields += 1;
    }
    (fields > 0).then_some(event)
}

/// Settings of an HTTP/2 client connection.
#[derive(Clone, Copy)]
pub struct H2Window {
    /// Bytes of each stream's window.
    pub stream: u32,
    /// Bytes of the connection's window (shared by its streams).
    pub connection: u32,
}

/// An HTTP/2 client connection over `io`.
pub async fn h2_connect<IO>(
    io: IO,
    window: Option<H2Window>,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Full<Bytes>>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    if let Some(window) = window {
        builder
            .adaptive_window(false)
            .initial_stream_window_size(window.stream)
            .initial_connection_window_size(window.connection);
    }
    let (send, connection) = builder
        .handshake(TokioIo::new(io))
        .await
        .expect("h2 handshake");
    tokio::spawn(connection);
    send
}

/// A TLS connection to `addr` trusting `cert`, offering `alpn`.
pub async fn tls_connect(
    addr: SocketAddr,
    cert: &TestCert,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(cert.client_config(alpn));
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake")
}

/// A request for `path` with `headers` and `body` (POST when there is a body).
pub fn request(
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> http::Request<http_body_util::Full<Bytes>> {
    let mut builder = http::Request::builder()
        .method(if body.is_some() { "POST" } else { "GET" })
        .uri(format!("https://localhost{path}"));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder
        .body(http_body_util::Full::new(Bytes::from(
            body.unwrap_or("").to_owned(),
        )))
        .unwrap()
}

/// Sends `request` on an HTTP/2 connection; the body is pumped into the [`Stream`] by a
/// task (or, with `read = false`, never read: the stuck reader).
pub async fn h2_send(
    send: &mut hyper::client::conn::http2::SendRequest<http_body_util::Full<Bytes>>,
    request: http::Request<http_body_util::Full<Bytes>>,
    read: bool,
) -> Stream {
    send.ready().await.expect("h2 connection ready");
    let response = send.send_request(request).await.expect("h2 response");
    hyper_stream(response, read)
}

/// Sends `request` on an HTTP/1.1 connection (e.g. over TLS).
pub async fn h1_send<IO>(io: IO, mut request: http::Request<http_body_util::Full<Bytes>>) -> Stream
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // hyper's connection-level client sends no Host of its own; HTTP/1.1 requires one
    // (the gateway refuses a request without it, issue 14 case 3).
    if let Some(authority) = request.uri().authority().cloned() {
        let host = http::HeaderValue::from_str(authority.as_str()).expect("authority");
        request
            .headers_mut()
            .entry(http::header::HOST)
            .or_insert(host);
    }
    let (mut send, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .expect("http1 handshake");
    tokio::spawn(connection);
    let response = send.send_request(request).await.expect("http1 response");
    hyper_stream(response, true)
}

fn hyper_stream(response: http::Response<hyper::body::Incoming>, read: bool) -> Stream {
    let (parts, mut body) = response.into_parts();
    let (tx, rx) = mpsc::channel(1024);
    if read {
        tokio::spawn(async move {
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(data) = frame.into_data() {
                    if tx.send(data).await.is_err() {
                        return;
                    }
                }
            }
        });
    } else {
        // Held, never polled: the client's flow-control window fills and stays full.
        tokio::spawn(async move {
            let _body = body;
            let _tx = tx;
            std::future::pending::<()>().await
        });
    }
    Stream {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: rx,
        buf: Vec::new(),
    }
}

/// An HTTP/3 client: one QUIC connection.
pub struct H3Client {
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    _endpoint: quinn::Endpoint,
}

impl H3Client {
    /// Its request sender, for a test that drives streams itself (resets, stops).
    pub fn sender(&mut self) -> &mut h3::client::SendRequest<h3_quinn::OpenStreams, Bytes> {
        &mut self.send
    }

    /// Connects to `addr` trusting `cert`; `window` bounds the receive windows (stream and
    /// connection) when set.
    pub async fn connect(addr: SocketAddr, cert: &TestCert, window: Option<u32>) -> H3Client {
        let tls = cert.client_config(&[b"h3"]);
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from((*tls).clone()).unwrap();
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        if let Some(window) = window {
            let mut transport = quinn::TransportConfig::default();
            transport
                .stream_receive_window(window.into())
                .receive_window(window.into());
            config.transport_config(Arc::new(transport));
        }
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(config);
        let connection = endpoint
            .connect(addr, "localhost")
            .unwrap()
            .await
            .expect("QUIC handshake");
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(connection))
            .await
            .expect("h3 setup");
        tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        H3Client {
            send,
            _endpoint: endpoint,
        }
    }

    /// Sends a request for `path` (POST with `body`); with `read = false` the body is never
    /// read.
    pub async fn send(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
        read: bool,
    ) -> Stream {
        let mut builder = http::Request::builder()
            .method(if body.is_some() { "POST" } else { "GET" })
            .uri(format!("https://localhost{path}"));
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let mut stream = self
            .send
            .send_request(builder.body(()).unwrap())
            .await
            .expect("h3 request");
        if let Some(body) = body {
            stream
                .send_data(Bytes::from(body.to_owned()))
                .await
                .expect("h3 body");
        }
        stream.finish().await.expect("h3 finish");
        let response = stream.recv_response().await.expect("h3 response");
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(async move {
            if !read {
                let _tx = tx;
                let _stream = stream;
                return std::future::pending::<()>().await;
            }
            while let Ok(Some(mut data)) = stream.recv_data().await {
                let piece = data.copy_to_bytes(data.remaining());
                if tx.send(piece).await.is_err() {
                    return;
                }
            }
        });
        Stream {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: rx,
            buf: Vec::new(),
        }
    }
}

/// Resident set size of process `pid`, in bytes.
pub fn rss_bytes(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS in /proc/PID/status");
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// A blocking HTTP/1.1 client over TLS (rustls over a `TcpStream`), for the ring's TLS
/// listener: send requests, read responses (keep-alive), read an SSE stream.
pub struct TlsClient {
    /// The TLS stream.
    pub tls: rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
    buf: Vec<u8>,
    /// The raw head of the last response read.
    pub last_head: String,
}

impl TlsClient {
    /// Connects to `addr` trusting `cert`, offering `alpn`, and completes the handshake.
    pub fn connect(addr: SocketAddr, cert: &TestCert, alpn: &[&[u8]]) -> TlsClient {
        TlsClient::over(
            std::net::TcpStream::connect(addr).expect("connect"),
            cert,
            alpn,
        )
    }

    /// As [`TlsClient::connect`] over a connected socket (e.g. one with a small receive
    /// buffer).
    pub fn over(tcp: std::net::TcpStream, cert: &TestCert, alpn: &[&[u8]]) -> TlsClient {
        tcp.set_nodelay(true).expect("nodelay");
        tcp.set_read_timeout(Some(crate::common::PATIENCE))
            .expect("timeout");
        let conn = rustls::ClientConnection::new(
            cert.client_config(alpn),
            ServerName::try_from("localhost").unwrap(),
        )
        .expect("client connection");
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock).expect("TLS handshake");
        }
        TlsClient {
            tls,
            buf: Vec::new(),
            last_head: String::new(),
        }
    }

    /// The ALPN protocol the server chose.
    pub fn alpn(&self) -> Option<Vec<u8>> {
        self.tls.conn.alpn_protocol().map(<[u8]>::to_vec)
    }

    /// Writes raw plaintext bytes.
    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        self.tls.write_all(bytes)?;
        self.tls.flush()
    }

    fn fill(&mut self) -> std::io::Result<usize> {
        use std::io::Read;
        let mut chunk = [0u8; 64 * 1024];
        let n = self.tls.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Reads a response head.
    pub fn read_head(&mut self) -> std::io::Result<crate::common::Response> {
        let end = loop {
            if let Some(at) = find(&self.buf, b"\r\n\r\n") {
                break at;
            }
            if self.fill()? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed before a response head",
                ));
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..end + 4]).into_owned();
        self.buf.drain(..end + 4);
        let mut lines = head.trim_end().split("\r\n");
        let status = lines
            .next()
            .and_then(|line| line.split(' ').nth(1))
            .and_then(|status| status.parse().ok())
            .expect("a status line");
        let headers = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        self.last_head = head;
        Ok(crate::common::Response {
            status,
            headers,
            body: Vec::new(),
        })
    }

    /// Reads a response with its `Content-Length` body.
    pub fn read_response(&mut self) -> std::io::Result<crate::common::Response> {
        let mut response = self.read_head()?;
        let len: usize = response
            .header("content-length")
            .map_or(0, |v| v.parse().expect("content-length"));
        while self.buf.len() < len {
            if self.fill()? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed inside a body",
                ));
            }
        }
        response.body = self.buf.drain(..len).collect();
        Ok(response)
    }

    /// The bytes of one request (POST with a `Content-Length` body when `body` is set).
    pub fn request_bytes(method: &str, path: &str, body: Option<&str>) -> Vec<u8> {
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
        if let Some(body) = body {
            request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        } else {
            request.push_str("\r\n");
        }
        request.into_bytes()
    }

    /// `POST /rooms/{room}/messages`; asserts 201 and returns the id.
    pub fn publish(&mut self, room: &str, data: &str) -> crate::common::Id {
        let path = format!("/rooms/{room}/messages");
        self.send(&TlsClient::request_bytes("POST", &path, Some(data)))
            .expect("send publish");
        let response = self.read_response().expect("publish answer");
        assert_eq!(response.status, 201, "{response:?}");
        let json: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        crate::common::Id::of(&json["id"])
    }

    /// `GET path` as a subscription; asserts `200 text/event-stream`.
    pub fn subscribe(&mut self, path: &str) {
        self.send(&TlsClient::request_bytes("GET", path, None))
            .expect("send subscribe");
        let head = self.read_head().expect("subscribe answer");
        assert_eq!(head.status, 200, "{head:?}");
        assert_eq!(head.header("content-type"), Some("text/event-stream"));
    }

    /// The next SSE event (comments skipped); panics after `timeout` or at the end.
    pub fn next_event(&mut self, timeout: Duration) -> Event {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            while let Some(end) = find(&self.buf, b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                if let Some(event) = parse_event(&String::from_utf8_lossy(&block)) {
                    return event;
                }
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            assert!(!left.is_zero(), "no event within {timeout:?}");
            self.tls.sock.set_read_timeout(Some(left)).unwrap();
            match self.fill() {
                Ok(0) => panic!("stream ended"),
                Ok(_) => {}
                Err(err)
                    if matches!(
                        err.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(err) => panic!("reading events: {err}"),
            }
        }
    }

    /// Whether the server ends the connection (close_notify, EOF, reset or a TLS error)
    /// within `timeout`, reading what comes until then.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            self.tls.sock.set_read_timeout(Some(left)).unwrap();
            match self.fill() {
                Ok(0) => return true,
                Ok(_) => {}
                Err(err)
                    if matches!(
                        err.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return true,
            }
        }
    }
}

/// A labelled counter (e.g. `result="http1"`) summed over shards.
pub fn labelled(metrics: &crate::common::Metrics, name: &str, label: &str) -> u64 {
    metrics
        .samples(name)
        .iter()
        .filter(|(labels, _)| labels.contains(label))
        .map(|(_, v)| *v as u64)
        .sum()
}
