//! The transports besides ringload's own HTTP/1.1 (the mio path): HTTP/1.1 over TLS and
//! HTTP/2 (hyper, TLS with ALPN `h2` or cleartext prior knowledge for `http://`), and
//! HTTP/3 (quinn + h3). One [`Endpoint`] describes where and how to connect; a
//! [`Connection`] carries requests; on HTTP/2 and HTTP/3 many requests share one connection
//! (see [`Connection::share`]).
//!
//! These run on a tokio current-thread runtime, one per ringload thread.

use crate::plan::transport::{Proto, TransportConfig};
use crate::transport::tls::{self, TlsError};
use bytes::{Buf, Bytes};
use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// HTTP/2 per-stream receive window: an SSE stream of 100-byte events that is read
/// promptly never needs more; larger windows only hide a stalled reader.
const H2_STREAM_WINDOW_BYTES: u32 = 1 << 20;

/// HTTP/2 connection receive window: the stream window times a few busy streams.
const H2_CONNECTION_WINDOW_BYTES: u32 = 16 << 20;

/// QUIC keep-alive: below every common idle timeout (quinn's default is 30 s), so idle
/// subscriptions (`--idle`) stay open without server heartbeats.
const QUIC_KEEP_ALIVE: Duration = Duration::from_secs(10);

/// Why a connection or request failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Configuration (TLS roots, URL) is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// `--proto h3` needs an https:// URL.
    #[error("--proto h3 needs an https:// URL (QUIC is always encrypted)")]
    H3NeedsTls,
    /// Connecting (TCP, TLS, QUIC or the HTTP/2 or HTTP/3 handshake) failed.
    #[error("connect failed: {0}")]
    Connect(String),
    /// Sending the request failed.
    #[error("request failed: {0}")]
    Send(String),
    /// Receiving the response failed.
    #[error("response failed: {0}")]
    Receive(String),
    /// A request could not be formed (bad header or URL).
    #[error("bad request: {0}")]
    Request(String),
}

/// Where to connect and how; built once, cloned into every thread.
#[derive(Clone)]
pub struct Endpoint {
    proto: Proto,
    addr: SocketAddr,
    server_name: String,
    /// `scheme://authority` prefixed to every path.
    origin: String,
    /// Host header value (HTTP/1.1).
    host_header: HeaderValue,
    /// False when `-H` gives its own Host header.
    send_host: bool,
    headers: Arc<[(HeaderName, HeaderValue)]>,
    tls: Option<tokio_rustls::TlsConnector>,
    quic: Option<quinn::ClientConfig>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("proto", &self.proto)
            .field("addr", &self.addr)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// Headers that are specific to one HTTP/1.1 connection and must not be sent on HTTP/2 or
/// HTTP/3 (RFC 9113 §8.2.2); `host` becomes the `:authority`.
const CONNECTION_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "host",
];

impl Endpoint {
    /// An endpoint for `addr` (`tls`: https://), with `headers` (`Name: value` lines,
    /// already validated) sent on every request.
    pub fn new(
        config: &TransportConfig,
        addr: SocketAddr,
        tls: bool,
        host: &str,
        host_header: &str,
        headers: &[String],
    ) -> Result<Endpoint, TransportError> {
        let mut parsed = Vec::with_capacity(headers.len());
        for line in headers {
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|error| TransportError::Request(format!("header '{line}': {error}")))?;
            if config.proto != Proto::H1 && CONNECTION_HEADERS.contains(&name.as_str()) {
                continue;
            }
            let value = HeaderValue::from_str(value.trim())
                .map_err(|error| TransportError::Request(format!("header '{line}': {error}")))?;
            parsed.push((name, value));
        }
        let user_has = |name: &HeaderName| parsed.iter().any(|(given, _)| given == name);
        let send_host = !user_has(&http::header::HOST);
        if !user_has(&http::header::USER_AGENT) {
            parsed.push((
                http::header::USER_AGENT,
                HeaderValue::from_static("ringload"),
            ));
        }
        let host_header = HeaderValue::from_str(host_header)
            .map_err(|error| TransportError::Request(format!("host '{host_header}': {error}")))?;
        let (tls_connector, quic) = match (config.proto, tls) {
            (Proto::H3, false) => return Err(TransportError::H3NeedsTls),
            (Proto::H3, true) => {
                let crypto = tls::client_config(&config.tls, &[b"h3"], true)?;
                let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto)
                    .map_err(|error| TlsError::Config(error.to_string()))?;
                let mut quic = quinn::ClientConfig::new(Arc::new(crypto));
                let mut transport = quinn::TransportConfig::default();
                transport.keep_alive_interval(Some(QUIC_KEEP_ALIVE));
                quic.transport_config(Arc::new(transport));
                (None, Some(quic))
            }
            (proto, true) => {
                let alpn: &[&[u8]] = if proto == Proto::H2 {
                    &[b"h2"]
                } else {
                    &[b"http/1.1"]
                };
                let crypto = tls::client_config(&config.tls, alpn, false)?;
                (
                    Some(tokio_rustls::TlsConnector::from(Arc::new(crypto))),
                    None,
                )
            }
            (_, false) => (None, None),
        };
        let scheme = if tls { "https" } else { "http" };
        Ok(Endpoint {
            proto: config.proto,
            addr,
            server_name: host.to_string(),
            origin: format!("{scheme}://{}", host_header.to_str().unwrap_or(host)),
            host_header,
            send_host,
            headers: parsed.into(),
            tls: tls_connector,
            quic,
        })
    }

    /// The protocol spoken.
    pub fn proto(&self) -> Proto {
        self.proto
    }

    /// Opens one connection (TCP or QUIC, TLS, HTTP handshake).
    pub async fn connect(&self) -> Result<Connection, TransportError> {
        let connect_error =
            |error: &dyn std::fmt::Display| TransportError::Connect(error.to_string());
        if let Some(quic) = &self.quic {
            // One UDP socket per QUIC connection, so a server that steers packets by
            // 4-tuple (SO_REUSEPORT) spreads connections over its shards.
            let bind: SocketAddr = if self.addr.is_ipv4() {
                (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let mut endpoint = quinn::Endpoint::client(bind).map_err(|e| connect_error(&e))?;
            endpoint.set_default_client_config(quic.clone());
            let quic_conn = endpoint
                .connect(self.addr, &self.server_name)
                .map_err(|e| connect_error(&e))?
                .await
                .map_err(|e| connect_error(&e))?;
            let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(quic_conn.clone()))
                .await
                .map_err(|e| connect_error(&e))?;
            tokio::spawn(async move {
                let _closed = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
            });
            return Ok(Connection {
                endpoint: self.clone(),
                inner: Inner::H3 {
                    send,
                    quic: quic_conn,
                    _endpoint: endpoint,
                },
            });
        }
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| connect_error(&e))?;
        let _ = tcp.set_nodelay(true);
        let inner = match &self.tls {
            Some(connector) => {
                let name = tls::server_name(&self.server_name)?;
                let stream = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| connect_error(&e))?;
                let negotiated = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                if self.proto == Proto::H2 && negotiated.as_deref() != Some(b"h2") {
                    return Err(TransportError::Connect(
                        "the server did not agree to HTTP/2 (ALPN h2)".into(),
                    ));
                }
                self.handshake(TokioIo::new(stream)).await?
            }
            None => self.handshake(TokioIo::new(tcp)).await?,
        };
        Ok(Connection {
            endpoint: self.clone(),
            inner,
        })
    }

    async fn handshake<T>(&self, io: TokioIo<T>) -> Result<Inner, TransportError>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let connect_error = |error: hyper::Error| TransportError::Connect(error.to_string());
        if self.proto == Proto::H2 {
            let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .initial_stream_window_size(H2_STREAM_WINDOW_BYTES)
                .initial_connection_window_size(H2_CONNECTION_WINDOW_BYTES)
                .adaptive_window(false)
                .handshake(io)
                .await
                .map_err(connect_error)?;
            tokio::spawn(async move {
                let _closed = conn.await;
            });
            Ok(Inner::H2(send))
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(connect_error)?;
            tokio::spawn(async move {
                let _closed = conn.await;
            });
            Ok(Inner::H1(send))
        }
    }
}

enum Inner {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
    H3 {
        send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
        quic: quinn::Connection,
        /// Keeps the UDP socket's driver alive as long as the connection.
        _endpoint: quinn::Endpoint,
    },
}

/// One open connection.
pub struct Connection {
    endpoint: Endpoint,
    inner: Inner,
}

/// A response whose head has arrived; the body is read with [`Response::chunk`].
pub struct Response {
    /// Status code.
    pub status: u16,
    body: Body,
}

enum Body {
    Hyper(hyper::body::Incoming),
    H3(Box<h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>>),
}

/// What closes one QUIC connection politely at the end of a run: a server learns at once
/// that the client is gone (CONNECTION_CLOSE) instead of sending into the void until its
/// idle timeout, which would load the next run against the same server.
#[derive(Clone)]
pub struct QuicCloser {
    quic: quinn::Connection,
    endpoint: quinn::Endpoint,
}

/// Longest wait for closing QUIC connections to drain at the end of a run.
pub const QUIC_CLOSE_GRACE: Duration = Duration::from_millis(500);

impl QuicCloser {
    /// Closes every connection, then waits (at most [`QUIC_CLOSE_GRACE`] in all) until
    /// their endpoints sent the close and went idle. Needs the runtime that drives them.
    pub async fn close_all(closers: Vec<QuicCloser>) {
        for closer in &closers {
            closer.quic.close(0u32.into(), b"run over");
        }
        let _ = tokio::time::timeout(QUIC_CLOSE_GRACE, async {
            for closer in &closers {
                closer.endpoint.wait_idle().await;
            }
        })
        .await;
    }
}

impl Connection {
    /// For HTTP/3, what closes the connection at the end of the run; `None` otherwise.
    pub fn quic_closer(&self) -> Option<QuicCloser> {
        match &self.inner {
            Inner::H3 {
                quic, _endpoint, ..
            } => Some(QuicCloser {
                quic: quic.clone(),
                endpoint: _endpoint.clone(),
            }),
            _ => None,
        }
    }

    /// Another handle on the same connection for a concurrent stream (HTTP/2, HTTP/3);
    /// `None` on HTTP/1.1, where a connection carries one request at a time.
    pub fn share(&self) -> Option<Connection> {
        let inner = match &self.inner {
            Inner::H1(_) => return None,
            Inner::H2(send) => Inner::H2(send.clone()),
            Inner::H3 {
                send,
                quic,
                _endpoint,
            } => Inner::H3 {
                send: send.clone(),
                quic: quic.clone(),
                _endpoint: _endpoint.clone(),
            },
        };
        Some(Connection {
            endpoint: self.endpoint.clone(),
            inner,
        })
    }

    /// True for HTTP/2 and HTTP/3 (streams fail independently of the connection).
    pub fn is_multiplexed(&self) -> bool {
        !matches!(self.inner, Inner::H1(_))
    }

    /// True when the connection can carry no more requests.
    pub fn is_closed(&self) -> bool {
        match &self.inner {
            Inner::H1(send) => send.is_closed(),
            Inner::H2(send) => send.is_closed(),
            Inner::H3 { quic, .. } => quic.close_reason().is_some(),
        }
    }

    /// Sends `method path` with `body` (and the endpoint's headers plus `extra`), returns
    /// once the response head arrived.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        extra: &[(HeaderName, HeaderValue)],
        body: Bytes,
    ) -> Result<Response, TransportError> {
        let uri: Uri = match self.inner {
            Inner::H1(_) => path.parse(),
            _ => format!("{}{path}", self.endpoint.origin).parse(),
        }
        .map_err(|error: http::uri::InvalidUri| TransportError::Request(error.to_string()))?;
        let mut builder = Request::builder().method(method).uri(uri);
        if matches!(self.inner, Inner::H1(_)) && self.endpoint.send_host {
            builder = builder.header(http::header::HOST, self.endpoint.host_header.clone());
        }
        for (name, value) in self.endpoint.headers.iter().chain(extra) {
            builder = builder.header(name, value);
        }
        match &mut self.inner {
            Inner::H1(send) => {
                let request = builder
                    .body(Full::new(body))
                    .map_err(|e| TransportError::Request(e.to_string()))?;
                send.ready()
                    .await
                    .map_err(|e| TransportError::Send(e.to_string()))?;
                let response = send
                    .send_request(request)
                    .await
                    .map_err(|e| TransportError::Receive(e.to_string()))?;
                Ok(Response {
                    status: response.status().as_u16(),
                    body: Body::Hyper(response.into_body()),
                })
            }
            Inner::H2(send) => {
                let request = builder
                    .body(Full::new(body))
                    .map_err(|e| TransportError::Request(e.to_string()))?;
                let response = send
                    .send_request(request)
                    .await
                    .map_err(|e| TransportError::Receive(e.to_string()))?;
                Ok(Response {
                    status: response.status().as_u16(),
                    body: Body::Hyper(response.into_body()),
                })
            }
            Inner::H3 { send, .. } => {
                let request = builder
                    .body(())
                    .map_err(|e| TransportError::Request(e.to_string()))?;
                let mut stream = send
                    .send_request(request)
                    .await
                    .map_err(|e| TransportError::Send(e.to_string()))?;
                if !body.is_empty() {
                    stream
                        .send_data(body)
                        .await
                        .map_err(|e| TransportError::Send(e.to_string()))?;
                }
                stream
                    .finish()
                    .await
                    .map_err(|e| TransportError::Send(e.to_string()))?;
                let response = stream
                    .recv_response()
                    .await
                    .map_err(|e| TransportError::Receive(e.to_string()))?;
                Ok(Response {
                    status: response.status().as_u16(),
                    body: Body::H3(Box::new(stream)),
                })
            }
        }
    }
}

impl Response {
    /// The next piece of the body; `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, TransportError> {
        match &mut self.body {
            Body::Hyper(body) => loop {
                match body.frame().await {
                    None => return Ok(None),
                    Some(Err(error)) => return Err(TransportError::Receive(error.to_string())),
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            return Ok(Some(data));
                        }
                        // Trailers: skipped.
                    }
                }
            },
            Body::H3(stream) => match stream.recv_data().await {
                Ok(Some(mut data)) => Ok(Some(data.copy_to_bytes(data.remaining()))),
                Ok(None) => Ok(None),
                Err(error) => Err(TransportError::Receive(error.to_string())),
            },
        }
    }

    /// Reads the body to its end; returns its length.
    pub async fn drain(&mut self) -> Result<u64, TransportError> {
        let mut bytes = 0;
        while let Some(data) = self.chunk().await? {
            bytes += data.len() as u64;
        }
        Ok(bytes)
    }
}
