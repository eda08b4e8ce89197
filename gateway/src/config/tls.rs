//! TLS settings: the certificate chain and key from PEM files, and the rustls server
//! configurations built from them (TCP with ALPN `h2`/`http/1.1`, QUIC with ALPN `h3`).
//! rustls runs on the `ring` provider (no C toolchain needed).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::PathBuf;
use std::sync::Arc;
use thiserror::Error;

/// ALPN protocols offered on the TLS TCP listener, preferred first.
pub const ALPN_TCP: &[&[u8]] = &[b"h2", b"http/1.1"];
/// ALPN protocol of HTTP/1.1: the only one the rings' TLS sessions offer (an `h2` client
/// is handed to the companion before its session starts).
pub const ALPN_HTTP1: &[u8] = b"http/1.1";
/// ALPN protocol of HTTP/3.
pub const ALPN_H3: &[u8] = b"h3";

/// Where the certificate chain and key live.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain (`--tls-cert`).
    pub cert: PathBuf,
    /// PEM private key (`--tls-key`).
    pub key: PathBuf,
}

/// Why the TLS files cannot be used.
#[derive(Debug, Error)]
pub enum TlsError {
    /// The certificate file is unreadable or holds no PEM certificate.
    #[error("{path}: {message}")]
    Cert {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The key file is unreadable or holds no PEM private key.
    #[error("{path}: {message}")]
    Key {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("certificate and key rejected: {0}")]
    Rejected(String),
}

impl TlsError {
    /// The flag to blame in a start-up error.
    pub fn flag(&self) -> &'static str {
        match self {
            TlsError::Cert { .. } | TlsError::Rejected(_) => "tls-cert",
            TlsError::Key { .. } => "tls-key",
        }
    }
}

/// A loaded certificate chain and its key.
pub type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

impl TlsFiles {
    /// Reads and checks both files, and that rustls accepts them as a pair.
    pub fn load(&self) -> Result<Identity, TlsError> {
        let cert_error = |message: String| TlsError::Cert {
            path: self.cert.display().to_string(),
            message,
        };
        let certs = CertificateDer::pem_file_iter(&self.cert)
            .map_err(|err| cert_error(format!("cannot read certificates: {err}")))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| cert_error(format!("bad PEM: {err}")))?;
        if certs.is_empty() {
            return Err(cert_error("no PEM certificate in the file".into()));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|err| TlsError::Key {
            path: self.key.display().to_string(),
            message: format!("no usable PEM private key: {err}"),
        })?;
        // Building a configuration checks that the key matches the certificate.
        server_config((certs.clone(), key.clone_key()), ALPN_TCP)?;
        Ok((certs, key))
    }
}

/// A rustls server configuration for `identity` offering `alpn`.
pub fn server_config(
    identity: Identity,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let (certs, key) = identity;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| TlsError::Rejected(err.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|err| TlsError::Rejected(err.to_string()))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}
