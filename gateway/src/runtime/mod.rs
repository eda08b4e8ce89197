//! Starting and stopping the process: one SO_REUSEPORT listener and one pinned thread per
//! shard, signal handling, and joining.

pub mod clock;
pub mod memory;
pub mod reload;
pub mod shared;

use crate::app::admission::PerIpConnections;
use crate::config::{Config, FixedConfig, Flags};
use crate::mesh::mail::Mesh;
use crate::metrics::ShardFigures;
use crate::runtime::clock::SharedClock;
use crate::runtime::reload::LiveConfig;
use crate::runtime::shared::Shared;
use crate::shard::Shard;
use anyhow::Context;
use ringcast_core::clock::ProcessClock;
use socket2::{Domain, Protocol, Socket, Type};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// Pending connections the kernel queues per listener.
pub const LISTEN_BACKLOG: i32 = 4096;

/// Fails when another socket already holds `addr`. Every shard's socket joins one
/// SO_REUSEPORT group, and the kernel lets any socket of the same user join such a group, so
/// a second gateway started by mistake on a busy port would silently take part of the
/// first one's connections. A probe bound without SO_REUSEPORT finds that out; it is closed
/// before the real sockets bind. `--share-port` skips the check (a deliberate handover).
fn ensure_unused(addr: SocketAddr, ty: Type, flag: &str) -> anyhow::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let protocol = if ty == Type::STREAM {
        Protocol::TCP
    } else {
        Protocol::UDP
    };
    let probe = Socket::new(Domain::for_address(addr), ty, Some(protocol))?;
    if ty == Type::STREAM {
        // Connections of an earlier run in TIME_WAIT do not make the address busy.
        probe.set_reuse_address(true)?;
    }
    match probe.bind(&addr.into()) {
        Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => anyhow::bail!(
            "{flag} {addr}: address already in use (another ringcast or another program \
             listens there; --share-port joins it on purpose)"
        ),
        // Any other problem is reported by the real bind, with its own context.
        _ => Ok(()),
    }
}

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

/// Receive and send buffer asked for on each shard's QUIC socket. One socket carries every
/// HTTP/3 connection of its shard, so a burst of ACKs from thousands of subscribers must
/// fit while the companion thread is busy sending; the kernel's default (~208 KiB) drops
/// them (`Udp: RcvbufErrors`) and the senders then wait out loss timers. The kernel caps it
/// at `net.core.rmem_max` / `wmem_max` (deploy/sysctl-ringcast.conf raises both to 4 MiB).
pub const UDP_BUFFER_BYTES: usize = 4 << 20;

fn udp_socket(addr: SocketAddr) -> anyhow::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    // Best effort: a smaller buffer (capped by the sysctls) still works, only less burst-proof.
    if let Err(error) = socket.set_recv_buffer_size(UDP_BUFFER_BYTES) {
        tracing::warn!(%error, "cannot set SO_RCVBUF on the QUIC socket");
    }
    if let Err(error) = socket.set_send_buffer_size(UDP_BUFFER_BYTES) {
        tracing::warn!(%error, "cannot set SO_SNDBUF on the QUIC socket");
    }
    socket
        .bind(&addr.into())
        .with_context(|| format!("cannot bind UDP {addr}"))?;
    Ok(socket.into())
}

/// Binds one listener per shard for each transport beside `--listen` that is on (all
/// sockets of a transport share the first one's port), and logs each address as
/// `listening TRANSPORT addr=…`. The TLS sockets are the shards' (their rings accept
/// them); the others their companions'.
#[allow(clippy::type_complexity)]
fn companion_listeners(
    config: &FixedConfig,
) -> anyhow::Result<(Vec<crate::companion::Listeners>, Vec<Option<Socket>>)> {
    let shards = config.shards;
    let mut out: Vec<crate::companion::Listeners> =
        (0..shards).map(|_| Default::default()).collect();
    let mut tls_sockets: Vec<Option<Socket>> = (0..shards).map(|_| None).collect();
    let transports = &config.transports;
    for (name, addr, tls) in [
        ("tls", transports.tls_listen, true),
        ("h2c", transports.h2c_listen, false),
    ] {
        let Some(addr) = addr else { continue };
        if !config.share_port {
            ensure_unused(addr, Type::STREAM, &format!("--{name}-listen"))?;
        }
        let first = listener(addr).with_context(|| format!("--{name}-listen"))?;
        let bound = first
            .local_addr()?
            .as_socket()
            .context("listener has no inet address")?;
        let mut sockets = vec![first];
        for _ in 1..shards {
            sockets.push(listener(bound)?);
        }
        for ((listeners, tls_socket), socket) in out.iter_mut().zip(&mut tls_sockets).zip(sockets) {
            if tls {
                *tls_socket = Some(socket);
            } else {
                listeners.h2c = Some(socket.into());
            }
        }
        tracing::info!(addr = %bound, transport = name, "listening {name} addr={bound}");
    }
    if let Some(addr) = transports.h3_listen {
        if !config.share_port {
            ensure_unused(addr, Type::DGRAM, "--h3-listen")?;
        }
        let first = udp_socket(addr).context("--h3-listen")?;
        let bound = first.local_addr()?;
        let mut sockets = vec![first];
        for _ in 1..shards {
            sockets.push(udp_socket(bound)?);
        }
        for (listeners, socket) in out.iter_mut().zip(sockets) {
            listeners.h3 = Some(socket);
        }
        crate::http::h1::advertise_h3(bound.port());
        tracing::info!(addr = %bound, transport = "h3", "listening h3 addr={bound}");
    }
    Ok((out, tls_sockets))
}

/// How often the main thread feeds the process clock a realtime sample.
const CLOCK_SAMPLE_PERIOD: Duration = Duration::from_secs(1);
/// How long the main thread sleeps between checks for SIGHUP and stopped shards.
const KEEPER_TICK: Duration = Duration::from_millis(50);

/// Runs the gateway until SIGINT or SIGTERM; returns once every shard has stopped.
///
/// The main thread, once the shards run, keeps the process clock (a realtime sample a
/// second, published to the shards) and handles SIGHUP reloads: `flags` are the
/// command-line flags, merged again over the re-read file so they still win.
pub fn run(config: Config, flags: Flags) -> anyhow::Result<()> {
    let Config {
        fixed: config,
        live,
    } = config;
    let shards = config.shards;
    // Handled before the first listener binds: a SIGTERM that comes as soon as the port
    // answers (a supervisor stopping a fresh start) drains and exits 0, instead of ending
    // the process by the default action.
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    let hangup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hangup.clone())?;
    if !config.share_port {
        ensure_unused(config.listen, Type::STREAM, "--listen")?;
    }
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
    let (mut companion_listeners, tls_listeners) = companion_listeners(&config)?;
    let identity = match &config.transports.tls {
        Some(files) => Some(files.load()?),
        None => None,
    };
    // HTTP/1.1 over TLS is served on the rings (ALPN `http/1.1`); `h2` clients go to the
    // companions through one bounded queue per shard.
    let (tls_http1, tls_handoff) = match (&identity, config.transports.tls_listen) {
        (Some((certs, key)), Some(_)) => {
            let http1 = crate::config::tls::server_config(
                (certs.clone(), key.clone_key()),
                &[crate::config::tls::ALPN_HTTP1],
            )?;
            let mut senders = Vec::with_capacity(shards);
            for listeners in &mut companion_listeners {
                let (sender, receiver) =
                    tokio::sync::mpsc::channel(crate::mesh::mail::TLS_HANDOFF_QUEUE_MAX);
                senders.push(sender);
                listeners.tls_handoff = Some(receiver);
            }
            (Some(http1), senders)
        }
        _ => (None, Vec::new()),
    };
    let mut clock = ProcessClock::new(Instant::now(), SystemTime::now());
    let mesh = Mesh::new(shards)?;
    let auth = match &config.auth {
        Some(auth) => {
            let wakers = (0..shards)
                .map(|shard| mesh.eventfd_owned(shard))
                .collect::<std::io::Result<Vec<_>>>()?;
            tracing::info!(url = ?auth.url, fail_open = auth.fail_open, "subscribe authorization on");
            Some(crate::upstream::auth::AuthPool::start(
                auth.clone(),
                wakers,
                crate::upstream::auth::WORKERS,
                crate::upstream::auth::QUEUE_MAX,
            )?)
        }
        None => None,
    };
    let cluster = match &config.cluster {
        Some(cluster) => {
            let wakers = (0..shards)
                .map(|shard| mesh.eventfd_owned(shard))
                .collect::<std::io::Result<Vec<_>>>()?;
            tracing::info!(url = %cluster.url, node = %cluster.node_id, "cluster mode on");
            Some(crate::upstream::cluster::ClusterPool::start(
                cluster.clone(),
                wakers,
            )?)
        }
        None => None,
    };
    let shared = Arc::new(Shared {
        mesh,
        auth,
        cluster,
        figures: (0..shards).map(|_| ShardFigures::default()).collect(),
        stop,
        drained: (0..shards).map(|_| AtomicBool::new(false)).collect(),
        clock: Arc::new(SharedClock::new(&clock)),
        live: LiveConfig::new(live),
        per_ip: PerIpConnections::default(),
        new_connections: crate::app::admission::PerIpRate::default(),
        tls_http1,
        tls_handoff,
        config,
    });
    crate::runtime::clock::install_log_clock(shared.clock.clone());
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    // Each shard reports once its ring is set up; "listening" is logged only when all are,
    // so scripts and tests that wait for that line find every shard serving.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<bool>();
    let mut threads = Vec::new();
    if config_has_companions(&shared) {
        for (index, listeners) in companion_listeners.into_iter().enumerate() {
            let core = (!cores.is_empty()).then(|| cores[index % cores.len()]);
            let identity = identity
                .as_ref()
                .map(|(certs, key)| (certs.clone(), key.clone_key()));
            // Detached: it serves until the stop flag, and ends with the process.
            crate::companion::spawn(index, shared.clone(), listeners, identity, core)?;
        }
    }
    for (index, (socket, tls_socket)) in listeners.into_iter().zip(tls_listeners).enumerate() {
        let shared = shared.clone();
        let ready = ready_tx.clone();
        let core = (!cores.is_empty()).then(|| cores[index % cores.len()]);
        let thread = std::thread::Builder::new()
            .name(format!("shard-{index}"))
            .spawn(move || -> anyhow::Result<()> {
                if let Some(core) = core {
                    if !core_affinity::set_for_current(core) {
                        tracing::warn!(shard = index, "could not pin to a CPU");
                    }
                }
                let tls_fd = tls_socket.as_ref().map(AsRawFd::as_raw_fd);
                let shard = Shard::new(index, shared, socket.as_raw_fd(), tls_fd)
                    .with_context(|| format!("shard {index}: cannot set up io_uring"));
                let _ = ready.send(shard.is_ok());
                let shard = shard?;
                shard
                    .run()
                    .with_context(|| format!("shard {index} failed"))?;
                drop(socket);
                drop(tls_socket);
                Ok(())
            })?;
        threads.push(thread);
    }
    drop(ready_tx);
    let ready = (0..shards)
        .filter(|_| ready_rx.recv().unwrap_or(false))
        .count();
    if ready == shards {
        tracing::info!(%addr, shards, "listening addr={addr}");
    } else {
        shared
            .stop
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
    keep_clock_and_config(&shared, &threads, &mut clock, &hangup, &flags);
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

fn config_has_companions(shared: &Shared) -> bool {
    shared.config.transports.any()
}

/// The main thread's work while shards run: a clock sample a second, SIGHUP reloads.
/// Returns once every shard thread has finished.
fn keep_clock_and_config(
    shared: &Shared,
    threads: &[JoinHandle<anyhow::Result<()>>],
    clock: &mut ProcessClock,
    hangup: &AtomicBool,
    flags: &Flags,
) {
    let mut next_sample = Instant::now() + CLOCK_SAMPLE_PERIOD;
    while !threads.iter().all(JoinHandle::is_finished) {
        std::thread::sleep(KEEPER_TICK);
        if threads.iter().any(JoinHandle::is_finished) {
            // A shard only returns after a stop request, or when it failed: stop the rest.
            shared.stop.store(true, Ordering::Relaxed);
        }
        if hangup.swap(false, Ordering::Relaxed) {
            reload(shared, flags);
        }
        let now = Instant::now();
        if now >= next_sample {
            next_sample = now + CLOCK_SAMPLE_PERIOD;
            clock.handle_realtime_sample(now, SystemTime::now());
            shared.clock.publish(clock);
        }
    }
}

/// Re-reads the config file and puts its live settings in force.
fn reload(shared: &Shared, flags: &Flags) {
    if flags.config.is_none() {
        tracing::warn!("SIGHUP: no --config file to reload");
        return;
    }
    let fresh = match Config::load(flags.clone()) {
        Ok(fresh) => fresh,
        Err(err) => {
            tracing::error!(%err, "SIGHUP: config not reloaded; the settings in force stay");
            return;
        }
    };
    let (_, current) = shared.live.current();
    let reloaded = crate::runtime::reload::apply(&shared.config, &current, &fresh);
    if !reloaded.not_live.is_empty() {
        tracing::warn!(
            settings = ?reloaded.not_live,
            "SIGHUP: these settings cannot change while running; restart to apply them"
        );
    }
    let generation = shared.live.replace(reloaded.live);
    tracing::info!(generation, changed = ?reloaded.changed, "config reloaded");
}
