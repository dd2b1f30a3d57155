//! The cloud sink: takes what gateways publish, stores it exactly once and serves the HTTP API.
//!
//! It depends on `fivezero-model` only (never on the gateway), so the wire contract is the one
//! thing the two sides share.
//!
//! ```text
//! [ingest: rumqttc v5, manual acks, bounded in-flight] --Publish--> [validate (pure)]
//!     --> [store: ONE transaction { stream lock; ledger plan; readings/records; watermark }]
//!     --> MQTT PubAck (only after COMMIT) --> retained AckWatermark on {prefix}/{site}/{gw}/ack
//! ```
//!
//! | module | what it does |
//! |---|---|
//! | [`config`] | the TOML configuration, `FIVEZERO_SINK_…` overrides, validation |
//! | [`validate`] | pure: topic + payload → a typed message or a rejection reason |
//! | [`store`] | the [`store::Store`] trait, the pure ledger logic, SQLite and PostgreSQL |
//! | [`ingest`] | the MQTT subscriber: the only code that touches the rumqttc event loop |
//! | [`broker`] | the embedded rumqttd broker for a single machine |
//! | [`stats`] | the counters ([`stats::SinkStats`]) |
//! | [`api`] | the HTTP query API (axum), its OpenAPI document, `/healthz`, `/readyz`, `/metrics` |
//! | [`service`] | ties them together: `fivezero-sink run` |

pub mod api;
pub mod broker;
pub mod config;
pub mod dashboard;
pub mod ingest;
pub mod service;
pub mod stats;
pub mod store;
pub mod validate;
