//! The shared vocabulary of fivezero.
//!
//! Everything the gateway, the simulator and the cloud sink must agree on lives here and nowhere
//! else: the [metric catalogue](metric), [unit parsing and conversion](units), the
//! [wire envelope](wire) published over MQTT, the [topic names](topic) and the
//! [five-zero KPI math](kpi).
//!
//! This crate does no I/O and has no async runtime, so every rule in it is tested as a plain
//! function.

pub mod kpi;
pub mod metric;
pub mod topic;
pub mod units;
pub mod wire;

pub use metric::{Kind, Metric};
