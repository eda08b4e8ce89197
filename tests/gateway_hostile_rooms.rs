//! Hostile clients against the real `ringcast` binary (issue 14): rooms reclaimed and the room cap (cases 7, 11).

mod common;
