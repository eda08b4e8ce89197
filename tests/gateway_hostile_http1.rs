//! Hostile clients against the real `ringcast` binary (issue 14): HTTP/1.1 request semantics (cases 2–6).

mod common;
