//! What every shard (and companion) holds a reference to: the settings, the mesh of mail
//! queues, the figures blocks, the stop flag, the process clock and the upstream pools.
//! Built once by `runtime::run` before the threads start; plain shared handles, no logic.

use crate::app::admission::{PerIpConnections, PerIpRate};
use crate::config::FixedConfig;
use crate::mesh::mail::Mesh;
use crate::metrics::ShardFigures;
use crate::runtime::clock::SharedClock;
use crate::runtime::reload::LiveConfig;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// What the shards share: settings, the mesh, figures and the stop flag.
pub struct Shared {
    /// The settings read once at start (the live ones are in `live`).
    pub config: FixedConfig,
    /// Cross-shard queues.
    pub mesh: Mesh,
    /// One block of figures per shard.
    pub figures: Vec<ShardFigures>,
    /// Set by the signal handler.
    pub stop: Arc<AtomicBool>,
    /// Per shard, set while it is stopping with no connection left. Shards accept (and
    /// answer 503 `draining`) until every one is drained, so no shard closes its
    /// listener while clients still arrive at the others' addresses in the same group.
    pub drained: Vec<AtomicBool>,
    /// The process clock, kept by the main thread.
    pub clock: Arc<SharedClock>,
    /// The live settings in force (swapped by SIGHUP reloads).
    pub live: LiveConfig,
    /// Open connections per client address, over every shard.
    pub per_ip: PerIpConnections,
    /// New-connection token buckets per client address, over every shard and transport.
    pub new_connections: PerIpRate,
    /// Subscribe authorization threads, when `--auth-url` is set.
    pub auth: Option<crate::upstream::auth::AuthPool>,
    /// Redis publisher and follower threads, when `--cluster-redis` is set.
    pub cluster: Option<crate::upstream::cluster::ClusterPool>,
    /// The rustls configuration of HTTP/1.1 over TLS on the rings (ALPN `http/1.1`), when
    /// `--tls-listen` is set.
    pub tls_http1: Option<Arc<rustls::ServerConfig>>,
    /// Per shard, the queue to its companion thread for TLS connections whose client
    /// offers ALPN `h2` (empty without `--tls-listen`).
    pub tls_handoff: Vec<tokio::sync::mpsc::Sender<crate::mesh::mail::TlsHandOff>>,
}

#[cfg(test)]
impl Shared {
    /// What one shard shares in a unit test that builds a `Shard` by hand: `config`'s
    /// settings, no upstream, no TLS, a clock started now.
    pub(crate) fn for_one_shard(config: crate::config::Config) -> Arc<Self> {
        let crate::config::Config { fixed, live } = config;
        let clock = ringcast_core::clock::ProcessClock::new(
            std::time::Instant::now(),
            std::time::SystemTime::now(),
        );
        Arc::new(Self {
            mesh: Mesh::new(1).expect("a mesh of one shard"),
            auth: None,
            cluster: None,
            figures: vec![ShardFigures::default()],
            stop: Arc::new(AtomicBool::new(false)),
            drained: vec![AtomicBool::new(false)],
            clock: Arc::new(SharedClock::new(&clock)),
            live: LiveConfig::new(live),
            per_ip: PerIpConnections::default(),
            new_connections: PerIpRate::default(),
            tls_http1: None,
            tls_handoff: Vec::new(),
            config: fixed,
        })
    }
}
