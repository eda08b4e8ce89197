//! The single updating progress line on stderr (only when stderr is a terminal).

use std::io::{IsTerminal, Write};

/// Writes `\r`-updated status lines to stderr when enabled.
#[derive(Debug)]
pub struct Progress {
    enabled: bool,
    shown: bool,
}

impl Progress {
    /// Enabled only when stderr is a terminal and `quiet` is false.
    pub fn new(quiet: bool) -> Self {
        Progress {
            enabled: !quiet && std::io::stderr().is_terminal(),
            shown: false,
        }
    }

    /// Replaces the current line with `line`.
    pub fn update(&mut self, line: &str) {
        if self.enabled {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r{line}\x1b[K");
            let _ = err.flush();
            self.shown = true;
        }
    }

    /// Ends the progress line so later output starts on a fresh line.
    pub fn finish(&mut self) {
        if self.enabled && self.shown {
            let _ = writeln!(std::io::stderr());
            self.shown = false;
        }
    }
}
