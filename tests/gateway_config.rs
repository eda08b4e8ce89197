//! Configuration of the real `ringcast` binary (issue 3): a TOML file is honoured, a flag
//! wins over the file, and a bad key or value stops the process with exit code 2 and a
//! message naming the key or flag.

mod common;

use common::{Item, Server};
use std::path::PathBuf;
use std::time::Duration;

/// A config file in the temp dir, removed on drop.
struct ConfigFile(PathBuf);

impl ConfigFile {
    fn new(name: &str, text: &str) -> ConfigFile {
        let path =
            std::env::temp_dir().join(format!("ringcast-test-{}-{name}.toml", std::process::id()));
        std::fs::write(&path, text).expect("write config file");
        ConfigFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 temp path")
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn heartbeats_within(server: &Server, window: Duration) -> usize {
    let mut sse = server.subscribe("cfg-quiet", None);
    sse.items_for(window)
        .iter()
        .filter(|item| matches!(item, Item::Comment(_)))
        .count()
}

fn history_len_after(server: &Server, publishes: u64) -> u64 {
    let mut client = server.client();
    for id in 1..=publishes {
        assert_eq!(client.publish("cfg", &format!("m{id}")).seq, id);
    }
    server.room("cfg")["history_len"].as_u64().unwrap()
}

#[test]
fn file_settings_are_used_and_flags_win_over_them() {
    let file = ConfigFile::new("good", "heartbeat = 0.3\nhistory = 4\n");
    let server = Server::start(&["--config", file.path()]);
    // Defaults would be a 15 s heartbeat and 256 messages of history.
    assert!(heartbeats_within(&server, Duration::from_millis(1000)) >= 2);
    assert_eq!(history_len_after(&server, 10), 4);
    drop(server);

    let server = Server::start(&["--config", file.path(), "--history", "6"]);
    assert_eq!(history_len_after(&server, 10), 6, "the flag wins");
    assert!(
        heartbeats_within(&server, Duration::from_millis(1000)) >= 2,
        "keys the flags do not set still come from the file"
    );
}

#[test]
fn bad_keys_and_values_exit_2_naming_them() {
    let unknown = ConfigFile::new("unknown", "heartbeat = 0.3\nbogus-key = 1\n");
    let negative = ConfigFile::new("negative", "heartbeat = -1.0\n");
    let mistyped = ConfigFile::new("mistyped", "history = \"lots\"\n");
    let missing =
        std::env::temp_dir().join(format!("ringcast-test-{}-missing.toml", std::process::id()));
    let missing = missing.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--config", unknown.path()], "bogus-key"),
        (&["--config", negative.path()], "heartbeat"),
        (&["--config", mistyped.path()], "history"),
        (&["--config", missing], missing),
        // Regression: clap took `-1` for an unknown short flag ("unexpected argument
        // '-1'"), so the message did not name --heartbeat.
        (&["--heartbeat", "-1"], "--heartbeat"),
        (&["--heartbeat=-1"], "--heartbeat"),
        (&["--heartbeat", "0"], "--heartbeat"),
        (&["--history", "0"], "--history"),
        (&["--shards", "lots"], "--shards"),
        (&["--no-such-flag"], "--no-such-flag"),
    ];
    for (args, named) in cases {
        let mut all = vec!["--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let (code, stderr) = common::run_to_exit(&all, Duration::from_secs(5));
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(named),
            "{args:?}: the message should name {named:?}: {stderr}"
        );
        assert!(!stderr.contains("listening"), "{args:?}: {stderr}");
    }
}

#[test]
fn demo_page_is_served_unless_turned_off() {
    let server = Server::start(&["--shards", "1"]);
    let page = server.client().request("GET", "/demo", &[], b"");
    assert_eq!(page.status, 200, "{page:?}");
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let html = page.text();
    assert!(
        html.contains("new EventSource("),
        "the page subscribes with EventSource"
    );
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "the page loads nothing from elsewhere (no CDN)"
    );
    assert!(
        html.len() < 15 * 1024,
        "the page stays small: {} bytes",
        html.len()
    );
    drop(server);

    let off = ConfigFile::new("demo-off", "demo = false\n");
    for args in [&["--no-demo"][..], &["--config", off.path()][..]] {
        let mut all = vec!["--shards", "1"];
        all.extend_from_slice(args);
        let server = Server::start(&all);
        let page = server.client().request("GET", "/demo", &[], b"");
        assert_eq!(page.status, 404, "{args:?}: {page:?}");
    }
}

/// Runs `ringcast --check-config FILE ARGS…`; returns the exit code, stdout and stderr.
fn check_config(file: &ConfigFile, args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(common::RINGCAST)
        .arg("--check-config")
        .arg(file.path())
        .args(args)
        .output()
        .expect("run ringcast --check-config");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_says_ok_or_explains_each_error_with_its_line() {
    let good = ConfigFile::new("check-good", "# a comment\nheartbeat = 2.5\ndemo = false\n");
    let (code, stdout, stderr) = check_config(&good, &[]);
    assert_eq!((code, stdout.as_str()), (Some(0), "ok\n"), "{stderr}");

    let bad = ConfigFile::new(
        "check-bad",
        "shards = 0\nheartbeat = 1.0\nbogus = 2\n  history = \"lots\"\nwrite-budget = 0\n",
    );
    let (code, stdout, stderr) = check_config(&bad, &[]);
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    let want = [
        (":1:1: shards: ", "not between 1 and 1024"),
        (":3:1: bogus: ", "unknown field"),
        (":4:3: history: ", "invalid type"),
        (":5:1: write-budget: ", "not between 1 and 100000"),
    ];
    assert_eq!(lines.len(), want.len(), "one line per problem:\n{stderr}");
    for (line, (place, why)) in lines.iter().zip(want) {
        assert!(
            line.starts_with(bad.path()) && line.contains(place) && line.contains(why),
            "{line:?} should name {place:?} and say {why:?}"
        );
    }

    let syntax = ConfigFile::new("check-syntax", "heartbeat = 1.0\nhistory = = 3\n");
    let (code, _, stderr) = check_config(&syntax, &[]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.starts_with(&format!("{}:2:11: ", syntax.path())),
        "{stderr}"
    );

    // Flags beside it are merged as a start would; their errors have no line.
    let (code, _, stderr) = check_config(&good, &["--history", "0"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("--history"), "{stderr}");
}
