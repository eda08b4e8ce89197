//! The connect probe for the transports of [`crate::transport`]: one full connection
//! (TCP or QUIC, TLS, HTTP handshake) before a run, so an unreachable target or a refused
//! certificate is reported once, clearly, with exit code 2.

use crate::transport::Endpoint;
use std::time::Duration;

/// Opens and closes one connection to `endpoint` within `timeout`; the error text says why
/// it failed.
pub fn probe(endpoint: &Endpoint, timeout: Duration) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| error.to_string())?;
    runtime.block_on(async {
        match tokio::time::timeout(timeout, endpoint.connect()).await {
            Ok(Ok(_connection)) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    })
}
