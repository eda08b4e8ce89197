//! The whole process's exposition for `/metrics`: every shard's figures, the process
//! figures (clock, fds, per-address tables) and the upstream pools. It reads the shared
//! handles; it must not touch connections or the ring.

use super::{expose_shards, fds, Exposition, Format};
use crate::runtime::shared::Shared;

/// Renders every figure of every shard, the process figures and the latency histograms.
pub fn render(shared: &Shared, format: Format, now_unix_nanos: u64) -> String {
    let mut out = Exposition::new(format);
    expose_shards(&mut out, &shared.figures, now_unix_nanos);
    crate::app::idempotency::expose(&mut out, shared.figures.iter().map(|f| &f.idempotency));
    let clock = &shared.clock;
    out.gauge(
        "ringcast_clock_drift_seconds",
        "Offset between realtime and the process clock still to be slewed (positive: realtime ahead).",
        &[],
        clock.drift_seconds(),
    );
    out.counter(
        "ringcast_clock_corrections_total",
        "Slew episodes the process clock started.",
        &[],
        clock.corrections_total() as f64,
    );
    let (used, limit) = fds();
    out.gauge(
        "ringcast_fds_used",
        "Open file descriptors of the process.",
        &[],
        used as f64,
    );
    out.gauge(
        "ringcast_fds_limit",
        "File descriptor limit of the process.",
        &[],
        limit as f64,
    );
    out.gauge(
        "ringcast_client_addresses",
        "Client addresses holding connections (entries of the per-address table).",
        &[],
        shared.per_ip.addresses() as f64,
    );
    out.gauge(
        "ringcast_new_connection_rate_addresses",
        "Client addresses (IPv6: /64 blocks) remembered by the new-connection-rate table.",
        &[],
        shared.new_connections.addresses() as f64,
    );
    if let Some(pool) = &shared.cluster {
        crate::upstream::cluster::expose(&mut out, pool);
    }
    if let Some(pool) = &shared.auth {
        crate::upstream::auth::expose(&mut out, pool);
    }
    out.finish()
}
