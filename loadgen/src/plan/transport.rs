//! How a run connects: the wire protocol (`--proto`), streams per connection and the TLS
//! certificate policy. Plain data read from the flags; the connections themselves are built
//! in `transport` (and by `plain` for cleartext HTTP/1.1).

use std::path::PathBuf;

/// Most streams per connection `--streams-per-conn` accepts.
pub const STREAMS_PER_CONN_MAX: usize = 10_000;

/// Default streams per HTTP/2 or HTTP/3 connection: 100 is the lowest
/// `SETTINGS_MAX_CONCURRENT_STREAMS` RFC 9113 recommends a server to allow.
pub const STREAMS_PER_CONN_DEFAULT: usize = 100;

/// The wire protocol (`--proto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// HTTP/1.1 (TLS for https:// URLs).
    #[default]
    H1,
    /// HTTP/2: TLS with ALPN h2 for https://, cleartext prior knowledge (h2c) for http://.
    H2,
    /// HTTP/3 over QUIC (https:// only).
    H3,
    /// WebSocket (RFC 6455) over plain TCP, `ringload fanout` only: each subscriber opens
    /// `--sub-url` (e.g. `http://HOST/rooms/{room}/ws`) as a WebSocket and every text
    /// message `{"room":R,"id":ID,"data":"…"}` is checked as an SSE event would be.
    /// Publishing stays HTTP/1.1 POST unless `--publish-over ws`.
    Ws,
}

impl Proto {
    /// Name for reports: "h1", "h2", "h3", "ws".
    pub fn name(self) -> &'static str {
        match self {
            Proto::H1 => "h1",
            Proto::H2 => "h2",
            Proto::H3 => "h3",
            Proto::Ws => "ws",
        }
    }
}

/// Transport flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportConfig {
    /// Wire protocol.
    pub proto: Proto,
    /// Concurrent streams per HTTP/2 or HTTP/3 connection (HTTP/1.1: always 1).
    pub streams_per_conn: usize,
    /// Certificate checking.
    pub tls: TlsOptions,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            proto: Proto::H1,
            streams_per_conn: STREAMS_PER_CONN_DEFAULT,
            tls: TlsOptions::default(),
        }
    }
}

impl TransportConfig {
    /// True when ringload's own mio path (plain HTTP/1.1, WebSocket) serves a URL with this
    /// `tls` flag.
    pub fn uses_mio(&self, tls: bool) -> bool {
        matches!(self.proto, Proto::H1 | Proto::Ws) && !tls
    }

    /// Streams that share one connection.
    pub fn streams_per_conn(&self) -> usize {
        match self.proto {
            Proto::H1 | Proto::Ws => 1,
            Proto::H2 | Proto::H3 => self.streams_per_conn.max(1),
        }
    }

    /// The configuration for plain HTTP requests (publishing, probes): WebSocket runs are
    /// published over HTTP/1.1.
    pub fn for_http(&self) -> TransportConfig {
        let proto = match self.proto {
            Proto::Ws => Proto::H1,
            proto => proto,
        };
        TransportConfig {
            proto,
            ..self.clone()
        }
    }
}

/// How the server certificate is checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// Accept any certificate (`--insecure`).
    pub insecure: bool,
    /// Trust only the certificates in this PEM file (`--ca FILE`); `None` = system roots.
    pub ca: Option<PathBuf>,
}
