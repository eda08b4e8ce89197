//! SIGHUP reloads: how shards pick up new live settings.
//!
//! The main thread re-reads the `--config` file, merges the original command-line flags
//! over it (flags still win) and keeps from the result only the [`LiveSettings`] ([`apply`]);
//! a [`FixedConfig`] setting that differs is logged as needing a restart. The new settings
//! are published as an `Arc<LiveSettings>` under a generation counter ([`LiveConfig`]): a
//! shard loads the counter once per loop turn (one relaxed load) and takes the lock only
//! when it moved.

use crate::config::{Config, FixedConfig, LiveSettings};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The live settings in force, swapped by reloads.
#[derive(Debug)]
pub struct LiveConfig {
    generation: AtomicU64,
    settings: Mutex<Arc<LiveSettings>>,
}

impl LiveConfig {
    /// Generation 1 holding `settings`.
    pub fn new(settings: LiveSettings) -> Self {
        Self {
            generation: AtomicU64::new(1),
            settings: Mutex::new(Arc::new(settings)),
        }
    }

    /// The current generation (cheap: read once per loop turn).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The settings in force and their generation.
    pub fn current(&self) -> (u64, Arc<LiveSettings>) {
        let settings = self
            .settings
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        (self.generation.load(Ordering::Acquire), settings.clone())
    }

    /// Puts `settings` in force as the next generation.
    pub fn replace(&self, settings: LiveSettings) -> u64 {
        let mut held = self
            .settings
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *held = Arc::new(settings);
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }
}

/// What a reload changed.
#[derive(Debug, Clone)]
pub struct Reloaded {
    /// The live settings now in force.
    pub live: LiveSettings,
    /// Live settings whose value changed.
    pub changed: Vec<&'static str>,
    /// Settings that differ in the file but need a restart (kept at their old value).
    pub not_live: Vec<&'static str>,
}

/// Takes from `fresh` (the file re-read, flags merged over it) its live settings, in place
/// of `current`, and names what differs from `fixed` (the start-up config) and so needs a
/// restart. Raising `max-connections` is capped at its value at start
/// ([`FixedConfig::max_connections_cap`]), because each shard sized its timer wheel for
/// it; lowering applies at once.
pub fn apply(fixed: &FixedConfig, current: &LiveSettings, fresh: &Config) -> Reloaded {
    let mut live = fresh.live.clone();
    live.max_connections = live.max_connections.min(fixed.max_connections_cap);
    let changed = live.changed_from(current);
    let mut not_live = Vec::new();
    if fresh.live.max_connections > fixed.max_connections_cap {
        not_live.push("max-connections above its value at start");
    }
    not_live.extend(fresh.fixed.changed_from(fixed));
    Reloaded {
        live,
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
        let reloaded = apply(&current.fixed, &current.live, &fresh);
        assert_eq!(reloaded.live.heartbeat, Duration::from_secs(2));
        assert_eq!(reloaded.live.max_connections, 50);
        assert_eq!(reloaded.live.max_connections_per_ip, 3);
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
        let reloaded = apply(&current.fixed, &current.live, &fresh);
        assert_eq!(reloaded.live.room_idle_timeout, Duration::from_secs(5));
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
        let reloaded = apply(&current.fixed, &current.live, &fresh);
        assert_eq!(reloaded.live.write_budget, 7, "the flag wins over the file");
        assert_eq!(reloaded.live.max_connections, 100);
        assert!(reloaded.changed.is_empty(), "{:?}", reloaded.changed);
        assert_eq!(
            reloaded.not_live,
            ["max-connections above its value at start"]
        );
    }

    #[test]
    fn generations_count_replacements() {
        let live = LiveConfig::new(config("", Flags::default()).live);
        assert_eq!(live.generation(), 1);
        let (_, first) = live.current();
        let mut next = (*first).clone();
        next.write_budget = 3;
        assert_eq!(live.replace(next), 2);
        let (generation, now) = live.current();
        assert_eq!((generation, now.write_budget), (2, 3));
    }
}
