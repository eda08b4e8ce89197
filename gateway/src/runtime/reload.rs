//! SIGHUP reloads: which settings change live, and how shards pick them up.
//!
//! The main thread re-reads the `--config` file, merges the original command-line flags
//! over it (flags still win) and keeps from the result only the settings a running shard
//! can apply ([`apply`]); the rest is logged as needing a restart. The new settings are
//! published as an `Arc<Config>` under a generation counter ([`LiveConfig`]): a shard loads
//! the counter once per loop turn (one relaxed load) and takes the lock only when it moved.

use crate::config::Config;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The configuration in force, swapped by reloads.
#[derive(Debug)]
pub struct LiveConfig {
    generation: AtomicU64,
    config: Mutex<Arc<Config>>,
}

impl LiveConfig {
    /// Generation 1 holding `config`.
    pub fn new(config: Config) -> Self {
        Self {
            generation: AtomicU64::new(1),
            config: Mutex::new(Arc::new(config)),
        }
    }

    /// The current generation (cheap: read once per loop turn).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The configuration in force and its generation.
    pub fn current(&self) -> (u64, Arc<Config>) {
        let config = self
            .config
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        (self.generation.load(Ordering::Acquire), config.clone())
    }

    /// Puts `config` in force as the next generation.
    pub fn replace(&self, config: Config) -> u64 {
        let mut held = self
            .config
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *held = Arc::new(config);
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }
}

/// What a reload changed.
#[derive(Debug, Clone)]
pub struct Reloaded {
    /// The settings now in force.
    pub config: Config,
    /// Live settings whose value changed.
    pub changed: Vec<&'static str>,
    /// Settings that differ in the file but need a restart (kept at their old value).
    pub not_live: Vec<&'static str>,
}

/// Takes from `fresh` (the file re-read, flags merged over it) the settings that can change
/// live; keeps everything else of `current` and names what differs.
///
/// Live: heartbeat, header, body, idle and room idle timeouts, coalescing delay and queue minimum,
/// write budget, max connections (lowering applies at once; raising is capped at the value
/// the process started with, `connections_cap`, because each shard sized its timer wheel
/// for it), connections and new connections per second per IP, pending write bytes, drain
/// timeout, idempotency window.
pub fn apply(current: &Config, fresh: &Config, connections_cap: usize) -> Reloaded {
    let mut config = current.clone();
    let mut changed = Vec::new();
    let mut not_live = Vec::new();
    macro_rules! live {
        ($($field:ident => $name:literal),* $(,)?) => {$(
            if config.$field != fresh.$field {
                config.$field = fresh.$field.clone();
                changed.push($name);
            }
        )*};
    }
    macro_rules! fixed {
        ($($field:ident => $name:literal),* $(,)?) => {$(
            if current.$field != fresh.$field {
                not_live.push($name);
            }
        )*};
    }
    live!(
        heartbeat => "heartbeat",
        header_timeout => "header-timeout",
        body_timeout => "body-timeout",
        idle_timeout => "idle-timeout",
        room_idle_timeout => "room-idle-timeout",
        coalesce_delay => "coalesce-delay-ms",
        coalesce_queue_min => "coalesce-queue-min",
        write_budget => "write-budget",
        max_connections_per_ip => "max-connections-per-ip",
        max_new_connections_per_ip_per_sec => "max-new-connections-per-ip-per-sec",
        max_pending_write_bytes => "max-pending-write-bytes",
        drain_timeout => "drain-timeout",
        idempotency_window => "idempotency-window",
    );
    let max_connections = fresh.max_connections.min(connections_cap);
    if max_connections != current.max_connections {
        config.max_connections = max_connections;
        changed.push("max-connections");
    }
    if fresh.max_connections > connections_cap {
        not_live.push("max-connections above its value at start");
    }
    fixed!(
        listen => "listen",
        shards => "shards",
        max_message_bytes => "max-message-bytes",
        max_header_bytes => "max-header-bytes",
        history => "history",
        history_bytes => "history-bytes",
        max_rooms => "max-rooms",
        log => "log",
        latency_metrics => "latency-metrics",
        auth => "auth-*",
        jwt => "publish-key, subscribe-key, private-rooms",
        max_streams_per_conn => "max-streams-per-conn",
        cluster => "cluster-redis, node-id, cluster-timeout",
        idempotency_keys_max => "idempotency-keys-max",
    );
    Reloaded {
        config,
        changed,
        not_live,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FileConfig, Flags};
    use std::time::Duration;

    fn config(file: &str, flags: Flags) -> Config {
        let file: FileConfig = toml::from_str(file).unwrap();
        Config::merge(flags, file).unwrap()
    }

    #[test]
    fn live_settings_change_and_fixed_ones_are_named() {
        let flags = Flags {
            shards: Some(2),
            ..Flags::default()
        };
        let current = config("heartbeat = 15.0\nmax-connections = 100", flags.clone());
        let fresh = config(
            "heartbeat = 2.0\nmax-connections = 50\nmax-connections-per-ip = 3\nhistory = 9",
            flags,
        );
        let reloaded = apply(&current, &fresh, 100);
        assert_eq!(reloaded.config.heartbeat, Duration::from_secs(2));
        assert_eq!(reloaded.config.max_connections, 50);
        assert_eq!(reloaded.config.max_connections_per_ip, 3);
        assert_eq!(
            reloaded.config.history, current.history,
            "history is not live"
        );
        assert_eq!(
            reloaded.changed,
            ["heartbeat", "max-connections-per-ip", "max-connections"]
        );
        assert_eq!(reloaded.not_live, ["history"]);
    }

    #[test]
    fn the_room_idle_timeout_is_live() {
        let current = config("room-idle-timeout = 3600.0", Flags::default());
        let fresh = config("room-idle-timeout = 5.0", Flags::default());
        let reloaded = apply(&current, &fresh, current.max_connections);
        assert_eq!(reloaded.config.room_idle_timeout, Duration::from_secs(5));
        assert_eq!(reloaded.changed, ["room-idle-timeout"]);
    }

    #[test]
    fn flags_still_win_and_raising_connections_is_capped() {
        let flags = Flags {
            shards: Some(1),
            write_budget: Some(7),
            ..Flags::default()
        };
        let current = config("max-connections = 100", flags.clone());
        let fresh = config("write-budget = 99\nmax-connections = 1000", flags);
        let reloaded = apply(&current, &fresh, 100);
        assert_eq!(
            reloaded.config.write_budget, 7,
            "the flag wins over the file"
        );
        assert_eq!(reloaded.config.max_connections, 100);
        assert!(reloaded.changed.is_empty(), "{:?}", reloaded.changed);
        assert_eq!(
            reloaded.not_live,
            ["max-connections above its value at start"]
        );
    }

    #[test]
    fn generations_count_replacements() {
        let live = LiveConfig::new(config("", Flags::default()));
        assert_eq!(live.generation(), 1);
        let (_, first) = live.current();
        let mut next = (*first).clone();
        next.write_budget = 3;
        assert_eq!(live.replace(next), 2);
        let (generation, now) = live.current();
        assert_eq!((generation, now.write_budget), (2, 3));
    }
}
