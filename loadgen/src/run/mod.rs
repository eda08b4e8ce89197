//! Running a mode: `ringload fanout` ([`fanout`], and [`sweep`] for the highest clean rate)
//! and `ringload http` ([`http`]) probe their targets, start the IO threads of
//! [`crate::plain`] or [`crate::transport`], watch them ([`progress`], [`cpu`]) and merge
//! what they hand back into a report with a verdict. [`duration`] parses the time and rate
//! flags.
//!
//! Owns: threads, phases of a run, reports. Must not touch: sockets or wire formats
//! directly (those belong to the IO paths and [`crate::proto`]); nothing below imports it.

pub mod cpu;
pub mod duration;
pub mod fanout;
pub mod http;
pub mod progress;
pub mod sweep;
