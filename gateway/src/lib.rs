//! `fivezero-gateway`: the edge daemon's library.
//!
//! - [`config`]: the gateway's TOML configuration, environment overrides and validation
//!   (including every device profile).
//! - [`poll`]: the Modbus poller, one task per physical link, producing decoded readings on a
//!   bounded channel, with per-device health.
//!
//! The buffer, the edge KPIs and the publisher follow in later issues; the binary
//! (`src/main.rs`) is the CLI on top.

pub mod config;
pub mod poll;
