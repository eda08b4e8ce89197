//! `ringcast --check-config FILE`: reads a config file the way `--config` does and explains
//! every problem it can find with the line it is on, without starting anything.
//!
//! toml stops at the first error and [`Config::merge`] at the first bad value, so the check
//! works in three passes: the TOML syntax (one error: nothing after it can be read), then
//! each top-level key on its own against [`FileConfig`] (every unknown key and mistyped
//! value), then the merged values, removing each key found out of range and merging again
//! until the rest passes (every range error, each named with its key's line).

use crate::config::{Config, ConfigError, FileConfig, Flags};
use serde::de::IgnoredAny;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line and column, when the problem sits at a place in the file (not, say, in
    /// a flag given beside `--check-config` or a file that cannot be read).
    pub position: Option<(usize, usize)>,
    /// What is wrong.
    pub message: String,
}

/// The problems of one file, printed one per line as `FILE:LINE:COL: message`.
#[derive(Debug)]
pub struct Report {
    /// The file checked.
    pub path: PathBuf,
    /// Its problems, in file order; empty when it is fine.
    pub problems: Vec<Problem>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.display();
        for problem in &self.problems {
            match problem.position {
                Some((line, column)) => writeln!(f, "{path}:{line}:{column}: {}", problem.message)?,
                None => writeln!(f, "{path}: {}", problem.message)?,
            }
        }
        Ok(())
    }
}

/// Checks the file at `path` merged under `flags` (as `ringcast --config FILE FLAGS…`
/// would start).
pub fn check_file(path: &Path, flags: &Flags) -> Report {
    let problems = match std::fs::read_to_string(path) {
        Ok(text) => check_text(&text, flags),
        Err(err) => vec![Problem {
            position: None,
            message: format!("cannot read: {err}"),
        }],
    };
    Report {
        path: path.to_owned(),
        problems,
    }
}

/// Checks config `text` merged under `flags`.
pub fn check_text(text: &str, flags: &Flags) -> Vec<Problem> {
    // Pass 1: syntax.
    let mut table: toml::Table = match toml::from_str(text) {
        Ok(table) => table,
        Err(err) => {
            return vec![Problem {
                position: err.span().map(|span| line_column(text, span.start)),
                message: one_line(err.message()),
            }]
        }
    };
    let positions = key_positions(text);
    // Pass 2: each key alone, so every unknown key and mistyped value is reported; those
    // keys are left out of pass 3.
    let mut problems = Vec::new();
    table.retain(|key, value| {
        let mut single = toml::Table::new();
        single.insert(key.to_owned(), value.clone());
        let Err(err) = FileConfig::deserialize(toml::Value::Table(single)) else {
            return true;
        };
        problems.push(Problem {
            position: positions.get(key).copied(),
            message: format!("{key}: {}", one_line(err.message())),
        });
        false
    });
    // Pass 3: values and their relations, as the gateway merges them.
    let flags = Flags {
        config: None,
        check_config: None,
        ..flags.clone()
    };
    // Each round removes one key, so this ends; the bound only documents that.
    for _ in 0..=table.len() {
        let file = match FileConfig::deserialize(toml::Value::Table(table.clone())) {
            Ok(file) => file,
            Err(err) => {
                // Pass 2 accepted every key alone; a whole-table error is unexpected.
                problems.push(Problem {
                    position: None,
                    message: one_line(err.message()),
                });
                break;
            }
        };
        match Config::merge(flags.clone(), file) {
            Ok(_) => break,
            Err(ConfigError::Invalid { flag, message }) => {
                let in_file = table.remove(flag).is_some();
                problems.push(Problem {
                    position: in_file.then(|| positions.get(flag).copied()).flatten(),
                    message: if in_file {
                        format!("{flag}: {message}")
                    } else {
                        format!("--{flag} (command line or a setting it needs): {message}")
                    },
                });
                if !in_file {
                    break;
                }
            }
            Err(other) => {
                problems.push(Problem {
                    position: None,
                    message: other.to_string(),
                });
                break;
            }
        }
    }
    problems.sort_by_key(|p| p.position);
    problems
}

/// toml's multi-line messages ("invalid string\nexpected …") on one line.
fn one_line(message: &str) -> String {
    message.trim().lines().collect::<Vec<_>>().join("; ")
}

/// 1-based line and column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Where each top-level key of `text` is set (1-based line and column of the key, from
/// toml's spans), or an empty map if `text` does not parse.
fn key_positions(text: &str) -> HashMap<String, (usize, usize)> {
    let keys: BTreeMap<toml::Spanned<String>, IgnoredAny> =
        toml::from_str(text).unwrap_or_default();
    keys.into_keys()
        .map(|key| {
            let position = line_column(text, key.span().start);
            (key.into_inner(), position)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Vec<(Option<(usize, usize)>, String)> {
        check_text(text, &Flags::default())
            .into_iter()
            .map(|p| (p.position, p.message))
            .collect()
    }

    #[test]
    fn good_files_pass() {
        assert!(check("").is_empty());
        assert!(check("# comment\nheartbeat = 3.0\nhistory = 9\ndemo = false\n").is_empty());
    }

    /// A problem expected at (line, column), its message naming the third field.
    type Want = (usize, usize, &'static str);

    #[test]
    fn each_problem_names_its_line_table() {
        let cases: &[(&str, &[Want])] = &[
            // syntax: one error, at its place
            ("heartbeat = 3.0\nhistory = = 4\n", &[(2, 11, "")]),
            ("heartbeat = 3.0\n[oops\n", &[(2, 6, "")]),
            // unknown keys and wrong types: all of them, and the range errors of the rest
            (
                "bogus = 1\nheartbeat = 1.0\n  history = \"lots\"\nshards = 0\n",
                &[(1, 1, "bogus"), (3, 3, "history"), (4, 1, "shards")],
            ),
            // range errors: all of them, named by key
            (
                "shards = 0\nheartbeat = -1.0\nwrite-budget = 64\nhistory = 0\n",
                &[(1, 1, "shards"), (2, 1, "heartbeat"), (4, 1, "history")],
            ),
        ];
        for (text, want) in cases {
            let got = check(text);
            assert_eq!(got.len(), want.len(), "{text:?}: {got:?}");
            for ((position, message), (line, column, names)) in got.iter().zip(want.iter()) {
                assert_eq!(*position, Some((*line, *column)), "{text:?}: {got:?}");
                assert!(message.contains(names), "{text:?}: {message}");
            }
        }
    }

    #[test]
    fn relation_errors_without_a_line_say_so() {
        let got = check("tls-listen = \"127.0.0.1:0\"\n");
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].1.contains("tls-cert"), "{got:?}");
    }

    #[test]
    fn line_column_counts_from_one() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
        let positions = key_positions("x = 1\n  'y' = 2\n\"z\" = 3\n[t]\na = 1\n");
        assert_eq!(positions.get("x"), Some(&(1, 1)));
        assert_eq!(positions.get("y"), Some(&(2, 3)));
        assert_eq!(positions.get("z"), Some(&(3, 1)));
        assert_eq!(positions.get("t"), Some(&(4, 2)));
        assert_eq!(positions.get("a"), None);
        assert!(!key_positions("xy = 1\n").contains_key("x"));
    }
}
