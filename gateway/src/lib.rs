//! `fivezero-gateway`: the edge daemon's library.
//!
//! - [`config`]: the gateway's TOML configuration, environment overrides and validation
//!   (including every device profile).
//! - [`poll`]: the Modbus poller, one task per physical link, producing decoded readings on a
//!   bounded channel, with per-device health.
//!
//! - [`outbox`]: the seam between the buffer and the publisher.
//! - [`buffer`]: the SQLite store-and-forward buffer, source of truth for sequence numbers and
//!   acknowledgements.
//! - [`publish`]: the MQTT publisher.
//! - [`sunspec`]: SunSpec discovery and draft profiles (`fivezero-gateway scan`).
//! - [`failpoints`]: the kill -9 failpoints (K1–K7), compiled in only with the cargo feature
//!   `failpoints`.
//!
//! The binary (`src/main.rs`) is the CLI on top.

pub mod buffer;
pub mod config;
pub mod daemon;
pub mod failpoints;
pub mod kpi;
pub mod metrics;
pub mod outbox;
pub mod poll;
pub mod publish;
pub mod site;
pub mod sunspec;
