//! A shard's companion thread: pinned to the shard's CPU, it runs a current-thread tokio
//! runtime with hyper (HTTP/2: h2c, and TLS connections the shard's ring handed over after
//! reading a ClientHello that offers ALPN `h2`) and quinn (HTTP/3), and hands every request
//! to its shard as a virtual connection (virtual_conn.rs). The shard's io_uring loop stays
//! single-purpose; the only traffic between the two threads is mail (docs/TRANSPORTS.md).
//!
//! A request is translated to HTTP/1.1 bytes (`Connection: close`, the body read whole up
//! to `--max-message-bytes`), so routing, refusals, publish, room queries, metrics and auth
//! are the shard's own HTTP/1.1 code. The answer comes back as HTTP/1.1 bytes through the
//! sink: its head becomes the HTTP/2 or HTTP/3 response head, the rest its body.

pub mod bridge;
pub mod h2;
pub mod h3;
pub mod quic_streams;
pub mod stream_pace;
pub mod ws_tunnel;

use self::bridge::Companion;
pub use self::bridge::Listeners;
use crate::runtime::shared::Shared;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How often the companion looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(50);

/// Starts shard `index`'s companion thread on `core`; it runs until the stop flag is set.
pub fn spawn(
    index: usize,
    shared: Arc<Shared>,
    listeners: Listeners,
    tls: Option<crate::config::tls::Identity>,
    core: Option<core_affinity::CoreId>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let thread = std::thread::Builder::new()
        .name(format!("companion-{index}"))
        .spawn(move || {
            if let Some(core) = core {
                if !core_affinity::set_for_current(core) {
                    tracing::warn!(shard = index, "companion could not pin to a CPU");
                }
            }
            let companion = Arc::new(Companion::new(index, shared));
            let parked = companion.clone();
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                // Idle: hand the shard the round's mail with one wake-up.
                .on_thread_park(move || parked.wake_shard())
                .build()
            {
                Ok(runtime) => runtime,
                Err(err) => {
                    tracing::error!(shard = index, %err, "companion runtime failed");
                    return;
                }
            };
            runtime.block_on(run(companion, listeners, tls));
        })?;
    Ok(thread)
}

async fn run(
    companion: Arc<Companion>,
    listeners: Listeners,
    tls: Option<crate::config::tls::Identity>,
) {
    tokio::spawn(companion.clone().flusher());
    tokio::spawn(companion.clone().dispatcher());
    // The runtime is this thread alone: the task collects this thread's heap.
    tokio::spawn(async {
        let mut period = tokio::time::interval(crate::runtime::memory::COLLECT_PERIOD);
        period.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            period.tick().await;
            crate::runtime::memory::collect();
        }
    });
    let mut tasks = Vec::new();
    if let Some(listener) = listeners.h2c {
        tasks.push(tokio::spawn(crate::companion::h2::serve_h2c(
            companion.clone(),
            listener,
        )));
    }
    if let (Some(handoffs), Some(identity)) = (listeners.tls_handoff, tls.as_ref()) {
        let identity = (identity.0.clone(), identity.1.clone_key());
        tasks.push(tokio::spawn(crate::companion::h2::serve_handoffs(
            companion.clone(),
            handoffs,
            identity,
        )));
    }
    if let (Some(socket), Some(identity)) = (listeners.h3, tls) {
        tasks.push(tokio::spawn(crate::companion::h3::serve(
            companion.clone(),
            socket,
            identity,
        )));
    }
    while !companion.shared.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(STOP_POLL).await;
    }
    // Stop accepting; streams end as the shard drains and closes their sinks.
    for task in tasks {
        task.abort();
    }
    std::future::pending::<()>().await
}
