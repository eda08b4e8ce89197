//! Hostile clients against the real `ringcast` binary (issue 14): HTTP/2 and HTTP/3 hostile clients (case 14).

mod common;
