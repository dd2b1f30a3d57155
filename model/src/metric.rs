//! The metric catalogue: every quantity fivezero knows, with its canonical unit and kind.
//!
//! A device profile maps each register to one metric id from this catalogue; the codec converts
//! the device's unit into the metric's canonical unit, so every reading of
//! `electricity.import_energy` is in kWh whatever the meter sends. The KPI engine and the cloud
//! sink rely on that: they never see a device unit.
//!
//! Invariants, checked by the tests below:
//! - ids are unique, lower-case, `domain.quantity`, and sorted within their domain block;
//! - every canonical unit parses with [`crate::units::parse`];
//! - counters are cumulative totals (energy, volume, mass, hours) and gauges are instantaneous
//!   values; `state` metrics carry an enumerated or bit-field code and have no unit; `info`
//!   metrics carry text (serial number, firmware) and have no unit.
//!
//! Sign conventions: `electricity.active_power` is positive when the metered point draws from
//! the grid (import) and negative when it feeds in; generation metrics (`pv.*`) are positive
//! when producing.

use serde::{Deserialize, Serialize};

/// How a metric's values behave over time, which decides how windows aggregate them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// An instantaneous value (power, temperature, flow rate): averaged over time.
    Gauge,
    /// A running total that only grows, apart from rollover and meter resets (energy, volume,
    /// mass, hours): windows take deltas.
    Counter,
    /// An enumerated state or bit field (operating state, alarm word): last value wins.
    State,
    /// Descriptive text (serial number, firmware version): reported, never aggregated.
    Info,
}

impl Kind {
    /// The name used in profiles and on the wire.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Gauge => "gauge",
            Self::Counter => "counter",
            Self::State => "state",
            Self::Info => "info",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    /// Stable id, `domain.quantity`, used in profiles, on the wire and in the API.
    pub id: &'static str,
    /// Canonical unit every reading of this metric is converted to; empty for `state` and
    /// `info` metrics.
    pub unit: &'static str,
    /// Gauge, counter, state or info.
    pub kind: Kind,
    /// One line for integrators and the API's metric list.
    pub description: &'static str,
}

macro_rules! catalogue {
    ($( $id:literal, $unit:literal, $kind:ident, $desc:literal; )*) => {
        /// Every metric fivezero knows, grouped by domain.
        pub static CATALOGUE: &[Metric] = &[
            $( Metric { id: $id, unit: $unit, kind: Kind::$kind, description: $desc }, )*
        ];
    };
}

catalogue! {
    // Ambient conditions.
    "ambient.temperature", "°C", Gauge, "Outdoor air temperature.";
    // Biomass boiler.
    "boiler.buffer_temperature", "°C", Gauge, "Heat buffer (accumulator) temperature, top sensor.";
    "boiler.fan_speed", "rpm", Gauge, "Induced-draught (flue-gas) fan speed.";
    "boiler.flue_gas_flow", "Nm³/h", Gauge, "Flue gas volume flow leaving the boiler, at normal conditions.";
    "boiler.flue_gas_temperature", "°C", Gauge, "Flue gas temperature at the boiler outlet, before heat recovery.";
    "boiler.fuel_feed_mass", "t", Counter, "Total fuel fed to the boiler.";
    "boiler.fuel_feed_rate", "t/h", Gauge, "Fuel feed rate.";
    "boiler.heat_output_energy", "kWh", Counter, "Useful heat delivered by the boiler.";
    "boiler.heat_output_power", "kW", Gauge, "Useful heat output of the boiler.";
    "boiler.operating_hours", "h", Counter, "Hours the boiler has been firing.";
    "boiler.residual_o2", "%", Gauge, "Residual oxygen in the flue gas (volume, wet or as the analyser reports).";
    "boiler.return_temperature", "°C", Gauge, "Boiler water return temperature.";
    "boiler.running", "", State, "1 while the boiler is firing, 0 otherwise.";
    "boiler.state", "", State, "Boiler operating state code (labels in the profile).";
    "boiler.steam_pressure", "bar", Gauge, "Steam drum or header pressure (gauge).";
    "boiler.water_temperature", "°C", Gauge, "Boiler water (flow) temperature.";
    // Compressed air.
    "compressor.alarm_flags", "", State, "Controller alarm word; bit labels in the profile.";
    "compressor.delivered_volume", "m³", Counter, "Total free air delivered.";
    "compressor.element_outlet_temperature", "°C", Gauge, "Compression element outlet temperature.";
    "compressor.energy", "kWh", Counter, "Electrical energy drawn by the compressor or station.";
    "compressor.free_air_delivery", "m³/min", Gauge, "Free air delivery (FAD) at inlet conditions.";
    "compressor.load_hours", "h", Counter, "Hours running loaded.";
    "compressor.loaded", "", State, "1 while the compressor is loaded (delivering air), 0 when idling or stopped.";
    "compressor.outlet_pressure", "bar", Gauge, "Network (outlet) pressure, gauge.";
    "compressor.power", "kW", Gauge, "Electrical input power of the compressor or station.";
    "compressor.running", "", State, "1 while the motor runs, 0 when stopped.";
    "compressor.running_hours", "h", Counter, "Hours the motor has run.";
    // Device identity, reported with the gateway's status.
    "device.firmware_version", "", Info, "Firmware or software version text.";
    "device.manufacturer", "", Info, "Manufacturer name reported by the device (SunSpec Mn).";
    "device.model_name", "", Info, "Model name reported by the device.";
    "device.serial_number", "", Info, "Serial number reported by the device.";
    // Electricity, at any metered point (grid connection, sub-meter, inverter AC side).
    "electricity.active_power", "kW", Gauge, "Total active power; positive = drawn from the grid.";
    "electricity.active_power_l1", "kW", Gauge, "Active power of phase L1.";
    "electricity.active_power_l2", "kW", Gauge, "Active power of phase L2.";
    "electricity.active_power_l3", "kW", Gauge, "Active power of phase L3.";
    "electricity.apparent_power", "kVA", Gauge, "Total apparent power.";
    "electricity.current", "A", Gauge, "Total AC current, the sum of the phase currents (SunSpec A).";
    "electricity.current_l1", "A", Gauge, "Current of phase L1.";
    "electricity.current_l2", "A", Gauge, "Current of phase L2.";
    "electricity.current_l3", "A", Gauge, "Current of phase L3.";
    "electricity.current_n", "A", Gauge, "Neutral current.";
    "electricity.current_thd_l1", "%", Gauge, "Current total harmonic distortion, phase L1.";
    "electricity.current_thd_l2", "%", Gauge, "Current total harmonic distortion, phase L2.";
    "electricity.current_thd_l3", "%", Gauge, "Current total harmonic distortion, phase L3.";
    "electricity.export_energy", "kWh", Counter, "Active energy fed into the grid (export).";
    "electricity.frequency", "Hz", Gauge, "Grid frequency.";
    "electricity.import_energy", "kWh", Counter, "Active energy drawn from the grid (import).";
    "electricity.power_demand", "kW", Gauge, "Total active power demand over the meter's demand period.";
    "electricity.power_demand_max", "kW", Gauge, "Maximum active power demand since the last reset.";
    "electricity.power_factor", "1", Gauge, "Total power factor (-1 to 1).";
    "electricity.reactive_export_energy", "kvarh", Counter, "Reactive energy, export direction.";
    "electricity.reactive_import_energy", "kvarh", Counter, "Reactive energy, import direction.";
    "electricity.reactive_power", "kvar", Gauge, "Total reactive power.";
    "electricity.total_energy", "kWh", Counter, "Active energy, import plus export.";
    "electricity.voltage_l1", "V", Gauge, "Phase L1 to neutral voltage.";
    "electricity.voltage_l1_l2", "V", Gauge, "Line voltage L1-L2.";
    "electricity.voltage_l2", "V", Gauge, "Phase L2 to neutral voltage.";
    "electricity.voltage_l2_l3", "V", Gauge, "Line voltage L2-L3.";
    "electricity.voltage_l3", "V", Gauge, "Phase L3 to neutral voltage.";
    "electricity.voltage_l3_l1", "V", Gauge, "Line voltage L3-L1.";
    "electricity.voltage_thd_l1", "%", Gauge, "Voltage total harmonic distortion, phase L1.";
    "electricity.voltage_thd_l2", "%", Gauge, "Voltage total harmonic distortion, phase L2.";
    "electricity.voltage_thd_l3", "%", Gauge, "Voltage total harmonic distortion, phase L3.";
    // Electric-vehicle charging (loaders, mixer trucks, cars).
    "ev.cable_state", "", State, "Cable or plug state code (labels in the profile).";
    "ev.charging_state", "", State, "Charging state (IEC 61851 or vendor code; labels in the profile).";
    "ev.charging_time", "s", Gauge, "Time spent charging in the current session.";
    "ev.energy", "kWh", Counter, "Total energy delivered by the charge point.";
    "ev.power", "kW", Gauge, "Charging power.";
    "ev.session_energy", "kWh", Counter, "Energy delivered in the current session; resets when a session starts.";
    "ev.state_of_charge", "%", Gauge, "Vehicle state of charge, where the vehicle reports it.";
    // Flow meters (water, condensate, any liquid): the role in the gateway config says which loop.
    "flow.error_flags", "", State, "Flow meter error bits (labels in the profile).";
    "flow.negative_volume", "m³", Counter, "Reverse-flow totaliser.";
    "flow.net_volume", "m³", Counter, "Net totaliser (forward minus reverse).";
    "flow.rate", "m³/h", Gauge, "Volume flow rate.";
    "flow.signal_quality", "%", Gauge, "Measurement signal quality reported by the meter.";
    "flow.temperature", "°C", Gauge, "Medium temperature at the meter.";
    "flow.velocity", "m/s", Gauge, "Flow velocity.";
    "flow.volume", "m³", Counter, "Forward totaliser.";
    // Fuels, for scope-1 carbon and fossil energy.
    "fuel.biomass_mass", "t", Counter, "Biomass burned (biogenic; memo item in carbon accounts).";
    "fuel.coal_mass", "t", Counter, "Coal burned.";
    "fuel.diesel_volume", "m³", Counter, "Diesel dispensed or burned.";
    "fuel.natural_gas_volume", "Nm³", Counter, "Natural gas burned, at normal conditions.";
    // Heat meters (recovery loops, district heating, process heat).
    "heat.energy", "kWh", Counter, "Thermal energy totaliser.";
    "heat.error_flags", "", State, "Heat meter error code or bits (labels in the profile).";
    "heat.flow_rate", "m³/h", Gauge, "Heat-carrier volume flow.";
    "heat.power", "kW", Gauge, "Thermal power.";
    "heat.return_temperature", "°C", Gauge, "Return (cold side) temperature.";
    "heat.supply_temperature", "°C", Gauge, "Supply (hot side) temperature.";
    "heat.temperature_difference", "K", Gauge, "Supply minus return temperature.";
    "heat.volume", "m³", Counter, "Heat-carrier volume totaliser.";
    // Photovoltaics.
    "pv.ac_power", "kW", Gauge, "AC output power of the inverter or plant.";
    "pv.cabinet_temperature", "°C", Gauge, "Inverter cabinet temperature.";
    "pv.dc_current", "A", Gauge, "DC input current.";
    "pv.dc_power", "kW", Gauge, "DC input power.";
    "pv.dc_voltage", "V", Gauge, "DC input voltage.";
    "pv.energy", "kWh", Counter, "AC energy generated (lifetime total).";
    "pv.event_flags", "", State, "Inverter event bits (labels in the profile).";
    "pv.heatsink_temperature", "°C", Gauge, "Inverter heat-sink temperature.";
    "pv.irradiance", "W/m²", Gauge, "Plane-of-array irradiance.";
    "pv.operating_state", "", State, "Inverter operating state (SunSpec St or vendor code).";
    // Sorting line of a construction-waste plant (belt scales and PLC tags).
    "sorting.energy_recovery_mass", "t", Counter, "Residue sent to energy recovery (boiler fuel).";
    "sorting.energy_recovery_rate", "t/h", Gauge, "Residue flow to energy recovery.";
    "sorting.input_mass", "t", Counter, "Waste received into the line (belt-scale totaliser).";
    "sorting.input_rate", "t/h", Gauge, "Feed rate into the line.";
    "sorting.landfill_mass", "t", Counter, "Residue sent to landfill or disposal.";
    "sorting.landfill_rate", "t/h", Gauge, "Residue flow to landfill.";
    "sorting.recovered_mass", "t", Counter, "Material recovered as product (aggregate, metals, wood...).";
    "sorting.recovered_rate", "t/h", Gauge, "Recovered-material flow.";
    "sorting.running", "", State, "1 while the line runs, 0 when stopped.";
    "sorting.separation_rate", "%", Gauge, "Impurity separation rate reported by the line.";
    "sorting.stock_drawn_mass", "t", Counter, "Material drawn from stock into the line.";
    "sorting.stock_drawn_rate", "t/h", Gauge, "Material flow drawn from stock into the line.";
    // Stack emissions (continuous emission monitoring).
    "stack.co_concentration", "mg/Nm³", Gauge, "CO concentration in the stack gas.";
    "stack.dust_concentration", "mg/Nm³", Gauge, "Particulate (dust) concentration in the stack gas.";
    "stack.flue_gas_flow", "Nm³/h", Gauge, "Stack gas volume flow at normal conditions.";
    "stack.flue_gas_temperature", "°C", Gauge, "Flue gas temperature at the stack exit, after heat recovery.";
    "stack.nox_concentration", "mg/Nm³", Gauge, "NOx concentration (as NO2) in the stack gas.";
    "stack.o2", "%", Gauge, "Oxygen in the stack gas (volume).";
    "stack.so2_concentration", "mg/Nm³", Gauge, "SO2 concentration in the stack gas.";
    // Steam cascade.
    "steam.condensate_return_mass", "t", Counter, "Condensate returned to the boiler house.";
    "steam.flow_rate", "t/h", Gauge, "Steam mass flow at the metered point.";
    "steam.generated_mass", "t", Counter, "Steam generated.";
    "steam.mass", "t", Counter, "Steam mass totaliser of a steam meter; the role in the gateway config says which stream.";
    "steam.pressure", "bar", Gauge, "Steam pressure at the metered point (gauge).";
    "steam.temperature", "°C", Gauge, "Steam temperature at the metered point.";
    "steam.used_mass", "t", Counter, "Steam delivered to a use (one cascade stage per meter).";
    "steam.vented_mass", "t", Counter, "Steam vented to atmosphere.";
    // Water balance of the site.
    "water.discharged_volume", "m³", Counter, "Water discharged off site.";
    "water.fresh_volume", "m³", Counter, "Fresh (mains or well) water taken in.";
    "water.rain_collected_volume", "m³", Counter, "Rainwater collected into storage.";
    "water.rain_used_volume", "m³", Counter, "Stored rainwater put to use.";
    "water.reused_volume", "m³", Counter, "Treated water reused on site.";
}

/// Looks a metric up by id.
#[must_use]
pub fn lookup(id: &str) -> Option<&'static Metric> {
    CATALOGUE.iter().find(|m| m.id == id)
}

/// The catalogue id closest to `id` (by edit distance), to suggest a fix for a typo.
#[must_use]
pub fn closest(id: &str) -> Option<&'static Metric> {
    CATALOGUE
        .iter()
        .map(|m| (edit_distance(m.id, id), m))
        .filter(|(d, _)| *d <= id.len().max(4) / 3)
        .min_by_key(|(d, _)| *d)
        .map(|(_, m)| m)
}

/// Levenshtein distance on characters; small inputs only (ids, unit symbols).
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_unique_and_well_formed() {
        let mut seen = HashSet::new();
        for m in CATALOGUE {
            assert!(seen.insert(m.id), "duplicate metric id {}", m.id);
            let (domain, quantity) = m.id.split_once('.').expect("domain.quantity");
            for part in [domain, quantity] {
                assert!(
                    !part.is_empty()
                        && part
                            .chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                    "malformed id {}",
                    m.id
                );
            }
        }
    }

    #[test]
    fn every_canonical_unit_parses_and_states_have_no_unit() {
        for m in CATALOGUE {
            match m.kind {
                Kind::State | Kind::Info => assert_eq!(m.unit, "", "{} has a unit", m.id),
                Kind::Gauge | Kind::Counter => {
                    assert!(
                        crate::units::parse(m.unit).is_ok(),
                        "{}: canonical unit {:?} does not parse",
                        m.id,
                        m.unit
                    );
                }
            }
        }
    }

    #[test]
    fn the_catalogue_covers_what_the_kpis_need() {
        for id in [
            "electricity.import_energy",
            "electricity.export_energy",
            "pv.ac_power",
            "pv.energy",
            "boiler.flue_gas_temperature",
            "stack.flue_gas_temperature",
            "sorting.recovered_mass",
            "sorting.input_mass",
            "sorting.landfill_mass",
            "sorting.energy_recovery_mass",
            "water.reused_volume",
            "water.fresh_volume",
            "steam.vented_mass",
            "steam.generated_mass",
            "compressor.free_air_delivery",
            "ev.session_energy",
            "heat.energy",
        ] {
            assert!(lookup(id).is_some(), "{id} missing");
        }
    }

    #[test]
    fn a_typo_suggests_the_intended_metric() {
        assert_eq!(
            closest("electricity.import_enrgy").map(|m| m.id),
            Some("electricity.import_energy")
        );
        assert_eq!(closest("completely.unrelated_thing"), None);
    }
}
