//! Hostile clients against the real `ringcast` binary (issue 14): ids with an epoch, absurd resume ids, idempotent publishes (cases 10, 12, 13).

mod common;
