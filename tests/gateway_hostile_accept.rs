//! Hostile clients against the real `ringcast` binary (issue 14): accept under fd exhaustion, drain and restart (cases 8, 9, 15).

mod common;
