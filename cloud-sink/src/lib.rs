//! The cloud sink: takes what gateways publish, stores it exactly once and serves the HTTP API.
//!
//! It depends on `fivezero-model` only (never on the gateway), so the wire contract is the one
//! thing the two sides share.
