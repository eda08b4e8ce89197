//! docs/OPERATIONS.md against the real binary (issue 9): every flag `ringcast --help` lists
//! has a row in the configuration table and every row names a real flag; every TOML key
//! the config file accepts is in the table and every key in the table is accepted.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

fn operations_md() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/OPERATIONS.md");
    std::fs::read_to_string(path).expect("read docs/OPERATIONS.md")
}

/// The rows of the configuration table: `| `--flag ARG` | TOML key | default | meaning |`.
fn table_rows(doc: &str) -> Vec<Vec<String>> {
    doc.lines()
        .filter(|line| line.starts_with("| `--"))
        .map(|line| {
            line.trim_matches('|')
                .split(" | ")
                .map(|cell| cell.trim().to_owned())
                .collect()
        })
        .collect()
}

/// `--flag` of a first cell such as "`--listen ADDR`".
fn row_flag(cell: &str) -> String {
    cell.trim_matches('`')
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Flags defined by `ringcast --help` (option lines only, not mentions in descriptions).
fn help_flags() -> BTreeSet<String> {
    let out = Command::new(common::RINGCAST)
        .arg("--help")
        .output()
        .expect("run ringcast --help");
    assert!(out.status.success(), "ringcast --help: {out:?}");
    String::from_utf8(out.stdout)
        .expect("utf-8 help")
        .lines()
        .filter_map(|line| {
            let line = line.trim_start();
            let line = line
                .strip_prefix("-h, ")
                .or(line.strip_prefix("-V, "))
                .unwrap_or(line);
            let flag = line.strip_prefix("--")?.split([' ', '<', '=']).next()?;
            Some(format!("--{flag}"))
        })
        .filter(|flag| flag != "--help" && flag != "--version")
        .collect()
}

/// TOML keys the config file accepts, as `--check-config` lists them for an unknown key.
fn file_keys() -> BTreeSet<String> {
    let path = std::env::temp_dir().join(format!("ringcast-docs-{}.toml", std::process::id()));
    std::fs::write(&path, "zz-not-a-key = 1\n").expect("write temp config");
    let out = Command::new(common::RINGCAST)
        .arg("--check-config")
        .arg(&path)
        .output()
        .expect("run ringcast --check-config");
    let _ = std::fs::remove_file(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = stderr
        .split_once("expected one of")
        .unwrap_or_else(|| panic!("no key list in: {stderr}"))
        .1;
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

#[test]
fn operations_md_lists_exactly_the_flags_of_ringcast_help() {
    let doc = operations_md();
    let documented: BTreeSet<String> = table_rows(&doc).iter().map(|r| row_flag(&r[0])).collect();
    let flags = help_flags();
    assert!(flags.len() > 30, "help parsed: {flags:?}");
    let missing: Vec<_> = flags.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&flags).collect();
    assert!(
        missing.is_empty(),
        "flags of `ringcast --help` missing from docs/OPERATIONS.md's table: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "docs/OPERATIONS.md's table lists flags ringcast does not have: {stale:?}"
    );
}

#[test]
fn operations_md_lists_exactly_the_keys_of_the_config_file() {
    let doc = operations_md();
    let documented: BTreeSet<String> = table_rows(&doc)
        .iter()
        .filter_map(|row| {
            let cell = row.get(1)?.trim_matches('`');
            let key = cell.split([' ', '=']).next()?;
            (!key.is_empty() && key != "—").then(|| key.to_owned())
        })
        .collect();
    let keys = file_keys();
    let missing: Vec<_> = keys.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&keys).collect();
    assert!(
        missing.is_empty(),
        "config file keys missing from docs/OPERATIONS.md's table: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "docs/OPERATIONS.md's table names TOML keys the config file rejects: {stale:?}"
    );
}

/// Subcommands `ringcast --help` lists under `Commands:`.
fn help_commands() -> BTreeSet<String> {
    let out = Command::new(common::RINGCAST)
        .arg("--help")
        .output()
        .expect("run ringcast --help");
    let help = String::from_utf8(out.stdout).expect("utf-8 help");
    help.lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[test]
fn operations_md_documents_every_subcommand_of_ringcast_help() {
    let doc = operations_md();
    let commands = help_commands();
    assert!(commands.contains("doctor"), "help parsed: {commands:?}");
    let missing: Vec<_> = commands
        .iter()
        .filter(|name| !doc.contains(&format!("| `ringcast {name}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "subcommands of `ringcast --help` missing from docs/OPERATIONS.md's command table: {missing:?}"
    );
}
