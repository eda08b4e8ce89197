//! Starting and stopping the process: one SO_REUSEPORT listener and one pinned thread per
//! shard, signal handling, and joining.

use crate::config::Config;
use crate::mailbox::Mesh;
use crate::metrics::ShardFigures;
use crate::worker::{Shared, Worker};
use anyhow::Context;
use socket2::{Domain, Protocol, Socket, Type};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Pending connections the kernel queues per listener.
const LISTEN_BACKLOG: i32 = 4096;

fn listener(addr: SocketAddr) -> anyhow::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket
        .bind(&addr.into())
        .with_context(|| format!("cannot listen on {addr}"))?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket)
}

/// Runs the gateway until SIGINT or SIGTERM; returns once every shard has stopped.
pub fn run(config: Config) -> anyhow::Result<()> {
    let shards = config.shards;
    // The first listener picks the port (when 0 was asked for); the others share it.
    let first = listener(config.listen)?;
    let addr = first
        .local_addr()?
        .as_socket()
        .context("listener has no inet address")?;
    let mut listeners = vec![first];
    for _ in 1..shards {
        listeners.push(listener(addr)?);
    }
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    let shared = Arc::new(Shared {
        mesh: Mesh::new(shards)?,
        figures: (0..shards).map(|_| ShardFigures::default()).collect(),
        stop,
        config,
    });
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    tracing::info!(%addr, shards, "listening addr={addr}");
    let mut threads = Vec::new();
    for (index, socket) in listeners.into_iter().enumerate() {
        let shared = shared.clone();
        let core = (!cores.is_empty()).then(|| cores[index % cores.len()]);
        let thread = std::thread::Builder::new()
            .name(format!("shard-{index}"))
            .spawn(move || -> anyhow::Result<()> {
                if let Some(core) = core {
                    if !core_affinity::set_for_current(core) {
                        tracing::warn!(shard = index, "could not pin to a CPU");
                    }
                }
                let worker = Worker::new(index, shared, socket.as_raw_fd())
                    .with_context(|| format!("shard {index}: cannot set up io_uring"))?;
                worker
                    .run()
                    .with_context(|| format!("shard {index} failed"))?;
                drop(socket);
                Ok(())
            })?;
        threads.push(thread);
    }
    let mut result = Ok(());
    for thread in threads {
        match thread.join() {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::error!("{err:#}");
                shared
                    .stop
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                result = Err(err);
            }
            Err(_) => {
                shared
                    .stop
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                result = Err(anyhow::anyhow!("a shard thread panicked"));
            }
        }
    }
    tracing::info!("stopped");
    result
}
