//! Drawing results as SVG ([`plot`]): latency by percentile, or deliveries/s by publish
//! rate for a sweep, from a run or from saved `--json` reports ([`plot_input`]).
//!
//! Owns: plot layout and reading saved reports. Must not touch: running anything; it only
//! reads the report types of [`crate::run`] and [`crate::check`].

pub mod plot;
pub mod plot_input;
