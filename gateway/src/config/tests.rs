//! Unit tests of flags over file over defaults, the checks and the live/fixed split.

use super::*;

#[test]
fn flags_win_over_file_over_defaults() {
    let file: FileConfig =
        toml::from_str("heartbeat = 3.0\nhistory = 9\nlisten = \"127.0.0.1:9\"").unwrap();
    let flags = Flags {
        heartbeat: Some(1.5),
        ..Flags::default()
    };
    let config = Config::merge(flags, file).unwrap();
    assert_eq!(config.live.heartbeat, Duration::from_millis(1500));
    assert_eq!(config.fixed.history, 9);
    assert_eq!(config.fixed.listen.port(), 9);
    assert_eq!(config.fixed.max_message_bytes, MAX_MESSAGE_BYTES_DEFAULT);
}

#[test]
fn bad_values_name_their_flag() {
    let flags = Flags {
        heartbeat: Some(-1.0),
        ..Flags::default()
    };
    let err = Config::merge(flags, FileConfig::default())
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("--heartbeat:"), "{err}");
    let err = toml::from_str::<FileConfig>("nope = 1")
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope"), "{err}");
}

/// Every live setting is named, by its file key, when a reload changes it; a fixed one
/// never is (it is not in the type).
#[test]
fn every_live_setting_is_named_by_its_key_when_it_changes() {
    let keys = [
        ("heartbeat", "2.0"),
        ("header-timeout", "2.0"),
        ("body-timeout", "2.0"),
        ("idle-timeout", "2.0"),
        ("room-idle-timeout", "2.0"),
        ("max-connections", "1000"),
        ("coalesce-delay-ms", "1"),
        ("coalesce-queue-min", "1"),
        ("write-budget", "1"),
        ("drain-timeout", "2.0"),
        ("max-connections-per-ip", "1"),
        ("max-new-connections-per-ip-per-sec", "1"),
        ("max-pending-write-bytes", "1"),
        ("idempotency-window", "2.0"),
    ];
    let base = Config::merge(Flags::default(), FileConfig::default()).unwrap();
    let text: String = keys.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
    let fresh = Config::merge(Flags::default(), toml::from_str(&text).unwrap()).unwrap();
    let mut changed = fresh.live.changed_from(&base.live);
    let mut want: Vec<&str> = keys.iter().map(|(k, _)| *k).collect();
    changed.sort_unstable();
    want.sort_unstable();
    assert_eq!(changed, want);
    assert!(fresh.fixed.changed_from(&base.fixed).is_empty());
    let fixed = Config::merge(Flags::default(), toml::from_str("history = 9").unwrap()).unwrap();
    assert_eq!(fixed.fixed.changed_from(&base.fixed), ["history"]);
    assert!(fixed.live.changed_from(&base.live).is_empty());
}

/// The fan-out takes its bounds from the fixed config and its timings from the live
/// settings given.
#[test]
fn the_fanout_config_joins_fixed_bounds_and_live_timings() {
    let file = "history = 9\nmax-rooms = 7\nheartbeat = 3.0\nroom-idle-timeout = 5.0";
    let config = Config::merge(Flags::default(), toml::from_str(file).unwrap()).unwrap();
    let mut live = config.live.clone();
    live.heartbeat = Duration::from_secs(4);
    let fanout = config.fixed.fanout_config(&live, 42);
    assert_eq!((fanout.history_messages_max, fanout.rooms_max), (9, 7));
    assert_eq!(fanout.heartbeat, Duration::from_secs(4));
    assert_eq!(fanout.room_idle_timeout, Duration::from_secs(5));
    assert_eq!(
        (fanout.epoch_anchor_unix_micros, fanout.stream_ids),
        (42, false)
    );
}

/// `--new-streams-per-conn-per-sec` (the HTTP/2 and HTTP/3 stream pace): 10 by default,
/// from the file or the flag, 1 to 1000.
#[test]
fn the_stream_pace_is_10_a_second_unless_set_within_1_to_1000() {
    let merged = |flag: Option<u32>, file: &str| {
        let flags = Flags {
            new_streams_per_conn_per_sec: flag,
            ..Flags::default()
        };
        Config::merge(flags, toml::from_str(file).unwrap())
            .map(|config| config.fixed.new_streams_per_conn_per_sec)
            .map_err(|err| err.to_string())
    };
    assert_eq!(merged(None, ""), Ok(NEW_STREAMS_PER_CONN_PER_SEC_DEFAULT));
    assert_eq!(NEW_STREAMS_PER_CONN_PER_SEC_DEFAULT, 10);
    assert_eq!(merged(None, "new-streams-per-conn-per-sec = 250"), Ok(250));
    assert_eq!(
        merged(Some(1000), "new-streams-per-conn-per-sec = 250"),
        Ok(1000)
    );
    for bad in [0, 1001, u32::MAX] {
        let err = merged(Some(bad), "").unwrap_err();
        assert!(
            err.starts_with("--new-streams-per-conn-per-sec:"),
            "{bad}: {err}"
        );
    }
}
