//! The plant simulator: a Modbus TCP server that serves device profiles with plant physics.
//!
//! A [`scenario::Scenario`] names the park's devices, their profiles and unit ids, and the
//! physics parameters. The [`Physics`] of the plant computes every device's values in canonical
//! units at a simulated time; the server encodes them into each device's registers with the
//! same codec the gateway decodes with, so the two can never disagree on layout. Time runs
//! faster than the wall clock on request (`--speed 60`), values are a pure function of the seed
//! and the simulated time, and faults can be switched on per device while it runs.

pub mod control;
pub mod fault;
pub mod plant;
pub mod proxy;
pub mod scenario;
pub mod server;

/// What the Modbus server needs from the plant model.
///
/// Devices are identified by their index in [`scenario::Scenario::devices`]. Values are in the
/// canonical unit of the metric (`fivezero_model::metric`), counters as ever-growing totals
/// (the server applies the register type's rollover).
pub trait Physics: Send {
    /// Moves the plant forward to simulated time `t_ms` (UTC milliseconds). Never goes back:
    /// an earlier time is ignored. The state reached is the same whatever the sequence of
    /// calls, because the model steps in fixed simulated increments.
    fn advance_to(&mut self, t_ms: i64);

    /// The simulated time the plant has reached.
    fn now_ms(&self) -> i64;

    /// The current value of a numeric metric of a device, or `None` if the model has none.
    fn value(&self, device: usize, metric: &str) -> Option<f64>;

    /// The current text of an info metric (serial number, firmware), or `None`.
    fn text(&self, device: usize, metric: &str) -> Option<String>;
}
