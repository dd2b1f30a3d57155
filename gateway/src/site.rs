//! The site model: which device metrics play which role in the five-zero KPIs, which KPI
//! groups the gateway can compute from them, and the factors it uses, with their provenance.
//!
//! A device takes roles in its `[[device]]` entry: `role = "grid"`, or a list such as
//! `role = ["material_recovered:sorting.recovered_mass", "landfilled"]`. A role alone takes
//! the first of the role's [default metrics](Role::defaults) that the device's profile has;
//! `role:metric` names the metric. Several devices may feed one role: their window sums
//! add up. Two shorthands keep simple configs short: `grid` is `grid_import` and
//! `grid_export`, `pv` is `renewable_generation`.
//!
//! A KPI group is computed when every one of its [required roles](Group::required) has a
//! source; a group with some but not all of them is refused by `check-config`, naming the
//! missing roles, so that a half-configured KPI never publishes as "insufficient data" for
//! ever. A group with no role at all is simply not computed.
//!
//! Factors (`[kpi.factors.NAME]`) carry value, unit, year of data, publisher and document;
//! every KPI record lists the ones it used. Defaults are those of `reference/kpis.md` for a
//! site in China: the MEE/NBS national average grid factor (2023 data, location-based),
//! GB/T 2589-2020 standard-coal coefficients, and IPCC 2006 CO2 factors for coal.

use std::fmt;

use fivezero_model::kpi::Coefficient;

/// One input of the KPIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Waste received into the plant (t).
    WasteReceived,
    /// Material drawn from stock into processing (t).
    StockDrawn,
    /// Recovered as material, products sold or reused (t).
    MaterialRecovered,
    /// Sent to energy recovery, such as residue fed to the boiler (t).
    EnergyRecovery,
    /// Sent to landfill or disposal (t).
    Landfilled,
    /// Change of the stock in the window, positive when it grew (t).
    StockChange,
    /// Fresh water taken in (m³).
    FreshWater,
    /// Treated water reused (m³).
    ReusedWater,
    /// Water discharged off site (m³).
    DischargedWater,
    /// Rainwater collected (m³).
    RainCollected,
    /// Rainwater used (m³).
    RainUsed,
    /// Steam generated (t).
    SteamGenerated,
    /// Steam put to use; one source per cascade stage (t).
    SteamUsed,
    /// Steam vented (t).
    SteamVented,
    /// Heat recovered from the flue gas, the recovery loop's heat meter (kWh).
    HeatRecovered,
    /// Flue-gas temperature at the stack exit (°C).
    FlueGasExitTemperature,
    /// Flue-gas volume flow at the stack (Nm³).
    FlueGasFlow,
    /// Whether the boiler is firing (a state, 1 or 0).
    BoilerRunning,
    /// On-site renewable generation: PV and other renewables (kWh).
    RenewableGeneration,
    /// Electricity imported from the grid (kWh).
    GridImport,
    /// Electricity exported to the grid (kWh).
    GridExport,
    /// Electricity consumed on site, when metered directly (kWh; reported).
    SiteConsumption,
    /// Energy delivered to electric vehicles (kWh; reported).
    EvCharging,
    /// Electrical energy of the compressed-air station (kWh).
    CompressorEnergy,
    /// Free air delivered by the compressed-air station (m³).
    AirDelivered,
    /// Coal burned on site (t).
    FuelCoal,
    /// Natural gas burned on site (Nm³).
    FuelNaturalGas,
    /// Diesel burned on site (m³).
    FuelDiesel,
    /// Biomass burned on site (t; biogenic, a memo item in carbon).
    FuelBiomass,
}

/// How a role's window value is formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// A total in this unit: a counter of it, or a rate per hour or minute integrated.
    Total(&'static str),
    /// A time-weighted mean in this unit.
    Mean(&'static str),
    /// A state (0 or 1) sampled over time.
    State,
}

impl fmt::Display for Measure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Total(u) => write!(f, "a total in {u}"),
            Self::Mean(u) => write!(f, "a mean in {u}"),
            Self::State => f.write_str("a state"),
        }
    }
}

/// A role's name, measure, KPI group, default metrics and meaning.
struct RoleInfo {
    role: Role,
    name: &'static str,
    measure: Measure,
    group: Group,
    defaults: &'static [&'static str],
}

const ROLES: &[RoleInfo] = &[
    RoleInfo {
        role: Role::WasteReceived,
        name: "waste_received",
        measure: Measure::Total("t"),
        group: Group::ZeroWaste,
        defaults: &["sorting.input_mass", "sorting.input_rate"],
    },
    RoleInfo {
        role: Role::StockDrawn,
        name: "stock_drawn",
        measure: Measure::Total("t"),
        group: Group::ZeroWaste,
        defaults: &["sorting.stock_drawn_mass", "sorting.stock_drawn_rate"],
    },
    RoleInfo {
        role: Role::MaterialRecovered,
        name: "material_recovered",
        measure: Measure::Total("t"),
        group: Group::ZeroWaste,
        defaults: &["sorting.recovered_mass", "sorting.recovered_rate"],
    },
    RoleInfo {
        role: Role::EnergyRecovery,
        name: "energy_recovery",
        measure: Measure::Total("t"),
        group: Group::ZeroWaste,
        defaults: &[
            "sorting.energy_recovery_mass",
            "sorting.energy_recovery_rate",
            "boiler.fuel_feed_mass",
            "boiler.fuel_feed_rate",
        ],
    },
    RoleInfo {
        role: Role::Landfilled,
        name: "landfilled",
        measure: Measure::Total("t"),
        group: Group::ZeroWaste,
        defaults: &["sorting.landfill_mass", "sorting.landfill_rate"],
    },
    RoleInfo {
        role: Role::StockChange,
        name: "stock_change",
        measure: Measure::Total("t"),
        group: Group::ZeroWaste,
        defaults: &[],
    },
    RoleInfo {
        role: Role::FreshWater,
        name: "fresh_water",
        measure: Measure::Total("m³"),
        group: Group::ZeroWastewater,
        defaults: &[
            "water.fresh_volume",
            "flow.net_volume",
            "flow.volume",
            "flow.rate",
        ],
    },
    RoleInfo {
        role: Role::ReusedWater,
        name: "reused_water",
        measure: Measure::Total("m³"),
        group: Group::ZeroWastewater,
        defaults: &[
            "water.reused_volume",
            "flow.net_volume",
            "flow.volume",
            "flow.rate",
        ],
    },
    RoleInfo {
        role: Role::DischargedWater,
        name: "discharged_water",
        measure: Measure::Total("m³"),
        group: Group::ZeroWastewater,
        defaults: &[
            "water.discharged_volume",
            "flow.net_volume",
            "flow.volume",
            "flow.rate",
        ],
    },
    RoleInfo {
        role: Role::RainCollected,
        name: "rain_collected",
        measure: Measure::Total("m³"),
        group: Group::ZeroWastewater,
        defaults: &[
            "water.rain_collected_volume",
            "flow.net_volume",
            "flow.volume",
            "flow.rate",
        ],
    },
    RoleInfo {
        role: Role::RainUsed,
        name: "rain_used",
        measure: Measure::Total("m³"),
        group: Group::ZeroWastewater,
        defaults: &[
            "water.rain_used_volume",
            "flow.net_volume",
            "flow.volume",
            "flow.rate",
        ],
    },
    RoleInfo {
        role: Role::SteamGenerated,
        name: "steam_generated",
        measure: Measure::Total("t"),
        group: Group::ZeroExhaust,
        defaults: &["steam.generated_mass", "steam.mass", "steam.flow_rate"],
    },
    RoleInfo {
        role: Role::SteamUsed,
        name: "steam_used",
        measure: Measure::Total("t"),
        group: Group::ZeroExhaust,
        defaults: &["steam.used_mass", "steam.mass", "steam.flow_rate"],
    },
    RoleInfo {
        role: Role::SteamVented,
        name: "steam_vented",
        measure: Measure::Total("t"),
        group: Group::ZeroExhaust,
        defaults: &["steam.vented_mass", "steam.mass", "steam.flow_rate"],
    },
    RoleInfo {
        role: Role::HeatRecovered,
        name: "heat_recovered",
        measure: Measure::Total("kWh"),
        group: Group::ZeroWasteHeat,
        defaults: &["heat.energy", "heat.power"],
    },
    RoleInfo {
        role: Role::FlueGasExitTemperature,
        name: "flue_gas_exit_temperature",
        measure: Measure::Mean("°C"),
        group: Group::ZeroWasteHeat,
        defaults: &["stack.flue_gas_temperature", "boiler.flue_gas_temperature"],
    },
    RoleInfo {
        role: Role::FlueGasFlow,
        name: "flue_gas_flow",
        measure: Measure::Total("Nm³"),
        group: Group::ZeroWasteHeat,
        defaults: &["stack.flue_gas_flow", "boiler.flue_gas_flow"],
    },
    RoleInfo {
        role: Role::BoilerRunning,
        name: "boiler_running",
        measure: Measure::State,
        group: Group::ZeroWasteHeat,
        defaults: &["boiler.running"],
    },
    RoleInfo {
        role: Role::RenewableGeneration,
        name: "renewable_generation",
        measure: Measure::Total("kWh"),
        group: Group::ZeroEnergy,
        defaults: &["pv.energy", "pv.ac_power"],
    },
    RoleInfo {
        role: Role::GridImport,
        name: "grid_import",
        measure: Measure::Total("kWh"),
        group: Group::ZeroEnergy,
        defaults: &["electricity.import_energy"],
    },
    RoleInfo {
        role: Role::GridExport,
        name: "grid_export",
        measure: Measure::Total("kWh"),
        group: Group::ZeroEnergy,
        defaults: &["electricity.export_energy"],
    },
    RoleInfo {
        role: Role::SiteConsumption,
        name: "site_consumption",
        measure: Measure::Total("kWh"),
        group: Group::ZeroEnergy,
        defaults: &[
            "electricity.import_energy",
            "electricity.total_energy",
            "electricity.active_power",
        ],
    },
    RoleInfo {
        role: Role::EvCharging,
        name: "ev_charging",
        measure: Measure::Total("kWh"),
        group: Group::ZeroEnergy,
        defaults: &["ev.energy", "ev.power"],
    },
    RoleInfo {
        role: Role::CompressorEnergy,
        name: "compressor_energy",
        measure: Measure::Total("kWh"),
        group: Group::CompressedAir,
        defaults: &[
            "compressor.energy",
            "compressor.power",
            "electricity.import_energy",
            "electricity.total_energy",
            "electricity.active_power",
        ],
    },
    RoleInfo {
        role: Role::AirDelivered,
        name: "air_delivered",
        measure: Measure::Total("m³"),
        group: Group::CompressedAir,
        defaults: &[
            "compressor.delivered_volume",
            "compressor.free_air_delivery",
            "flow.volume",
        ],
    },
    RoleInfo {
        role: Role::FuelCoal,
        name: "fuel_coal",
        measure: Measure::Total("t"),
        group: Group::ZeroEnergy,
        defaults: &["fuel.coal_mass"],
    },
    RoleInfo {
        role: Role::FuelNaturalGas,
        name: "fuel_natural_gas",
        measure: Measure::Total("Nm³"),
        group: Group::ZeroEnergy,
        defaults: &["fuel.natural_gas_volume"],
    },
    RoleInfo {
        role: Role::FuelDiesel,
        name: "fuel_diesel",
        measure: Measure::Total("m³"),
        group: Group::ZeroEnergy,
        defaults: &["fuel.diesel_volume"],
    },
    RoleInfo {
        role: Role::FuelBiomass,
        name: "fuel_biomass",
        measure: Measure::Total("t"),
        group: Group::ZeroEnergy,
        defaults: &[
            "fuel.biomass_mass",
            "boiler.fuel_feed_mass",
            "boiler.fuel_feed_rate",
        ],
    },
];

/// Shorthands that stand for several roles.
const SHORTHANDS: &[(&str, &[Role])] = &[
    ("grid", &[Role::GridImport, Role::GridExport]),
    ("pv", &[Role::RenewableGeneration]),
];

impl Role {
    /// Every role, in the order of the KPI table.
    pub const ALL: [Self; 29] = [
        Self::WasteReceived,
        Self::StockDrawn,
        Self::MaterialRecovered,
        Self::EnergyRecovery,
        Self::Landfilled,
        Self::StockChange,
        Self::FreshWater,
        Self::ReusedWater,
        Self::DischargedWater,
        Self::RainCollected,
        Self::RainUsed,
        Self::SteamGenerated,
        Self::SteamUsed,
        Self::SteamVented,
        Self::HeatRecovered,
        Self::FlueGasExitTemperature,
        Self::FlueGasFlow,
        Self::BoilerRunning,
        Self::RenewableGeneration,
        Self::GridImport,
        Self::GridExport,
        Self::SiteConsumption,
        Self::EvCharging,
        Self::CompressorEnergy,
        Self::AirDelivered,
        Self::FuelCoal,
        Self::FuelNaturalGas,
        Self::FuelDiesel,
        Self::FuelBiomass,
    ];

    fn info(self) -> &'static RoleInfo {
        // Every role has exactly one entry; a test checks it.
        ROLES.iter().find(|i| i.role == self).unwrap_or(&ROLES[0])
    }

    /// The name used in the config, such as `grid_import`.
    #[must_use]
    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// How its window value is formed, and in which unit.
    #[must_use]
    pub fn measure(self) -> Measure {
        self.info().measure
    }

    /// The KPI group it feeds.
    #[must_use]
    pub fn group(self) -> Group {
        self.info().group
    }

    /// The catalogue metrics a device gives this role when the config names no metric: the
    /// first one its profile has.
    #[must_use]
    pub fn defaults(self) -> &'static [&'static str] {
        self.info().defaults
    }

    /// The role, or the roles of a shorthand, called `name`.
    #[must_use]
    pub fn parse(name: &str) -> Option<Vec<Self>> {
        if let Some((_, roles)) = SHORTHANDS.iter().find(|(s, _)| *s == name) {
            return Some(roles.to_vec());
        }
        ROLES.iter().find(|i| i.name == name).map(|i| vec![i.role])
    }

    /// Every name `parse` accepts, for error messages.
    #[must_use]
    pub fn names() -> Vec<&'static str> {
        SHORTHANDS
            .iter()
            .map(|(s, _)| *s)
            .chain(ROLES.iter().map(|i| i.name))
            .collect()
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of KPIs computed together from shared inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Group {
    /// Zero waste: recovery rates, landfill share, mass-balance closure.
    ZeroWaste,
    /// Zero wastewater: reuse rate, discharge, rainwater use.
    ZeroWastewater,
    /// Zero exhaust gas: steam cascade use and venting.
    ZeroExhaust,
    /// Zero waste heat: flue-gas heat recovery and exit temperature.
    ZeroWasteHeat,
    /// Zero energy consumption and carbon (scope 1, scope 2, avoided, intensity).
    ZeroEnergy,
    /// Compressor specific power.
    CompressedAir,
}

impl Group {
    /// Every group.
    pub const ALL: [Self; 6] = [
        Self::ZeroWaste,
        Self::ZeroWastewater,
        Self::ZeroExhaust,
        Self::ZeroWasteHeat,
        Self::ZeroEnergy,
        Self::CompressedAir,
    ];

    /// The group's name, the prefix of its KPI ids.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::ZeroWaste => "zero_waste",
            Self::ZeroWastewater => "zero_wastewater",
            Self::ZeroExhaust => "zero_exhaust",
            Self::ZeroWasteHeat => "zero_waste_heat",
            Self::ZeroEnergy => "zero_energy and carbon",
            Self::CompressedAir => "compressed_air",
        }
    }

    /// The roles without which none of the group's KPIs has a value.
    #[must_use]
    pub const fn required(self) -> &'static [Role] {
        match self {
            Self::ZeroWaste => &[
                Role::WasteReceived,
                Role::MaterialRecovered,
                Role::EnergyRecovery,
                Role::Landfilled,
            ],
            Self::ZeroWastewater => &[Role::FreshWater, Role::ReusedWater],
            Self::ZeroExhaust => &[Role::SteamGenerated, Role::SteamUsed],
            Self::ZeroWasteHeat => &[
                Role::HeatRecovered,
                Role::FlueGasExitTemperature,
                Role::FlueGasFlow,
            ],
            Self::ZeroEnergy => &[Role::RenewableGeneration, Role::GridImport],
            Self::CompressedAir => &[Role::CompressorEnergy, Role::AirDelivered],
        }
    }
}

impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A factor's configurable name, its unit and its default, if the reference has one.
#[derive(Debug)]
pub struct FactorInfo {
    /// The key under `[kpi.factors]`.
    pub name: &'static str,
    /// The only unit accepted.
    pub unit: &'static str,
    /// What it is.
    pub what: &'static str,
    /// The default: value, year of data, publisher, document.
    pub default: Option<(f64, i32, &'static str, &'static str)>,
}

/// Every factor the KPIs use.
pub const FACTORS: &[FactorInfo] = &[
    FactorInfo {
        name: "grid",
        unit: "kgCO2/kWh",
        what: "location-based grid emission factor",
        default: Some((
            0.5306,
            2023,
            "MEE/NBS",
            "national average grid emission factor",
        )),
    },
    FactorInfo {
        name: "grid_residual",
        unit: "kgCO2/kWh",
        what: "market-based (residual mix) grid emission factor; without it no market-based scope 2",
        default: None,
    },
    FactorInfo {
        name: "electricity_coal_equivalent",
        unit: "kgce/kWh",
        what: "standard coal equivalent of electricity",
        default: Some((
            0.1229,
            2020,
            "SAC",
            "GB/T 2589-2020, electricity equivalent value",
        )),
    },
    FactorInfo {
        name: "heat_coal_equivalent",
        unit: "kgce/MJ",
        what: "standard coal equivalent of heat",
        default: Some((0.03412, 2020, "SAC", "GB/T 2589-2020, heat")),
    },
    FactorInfo {
        name: "coal_ncv",
        unit: "MJ/t",
        what: "net calorific value of the coal burned",
        default: Some((20_908.0, 2020, "SAC", "GB/T 2589-2020, raw coal")),
    },
    FactorInfo {
        name: "coal_co2",
        unit: "kgCO2/TJ",
        what: "CO2 factor of the coal burned, on NCV",
        default: Some((
            94_600.0,
            2006,
            "IPCC",
            "2006 Guidelines Vol. 2 Table 1.4, other bituminous coal",
        )),
    },
    FactorInfo {
        name: "natural_gas_ncv",
        unit: "MJ/Nm³",
        what: "net calorific value of the natural gas burned (the supplier's or a measured value)",
        default: None,
    },
    FactorInfo {
        name: "natural_gas_co2",
        unit: "kgCO2/TJ",
        what: "CO2 factor of natural gas, on NCV",
        default: Some((
            56_100.0,
            2006,
            "IPCC",
            "2006 Guidelines Vol. 2 Table 1.4, natural gas",
        )),
    },
    FactorInfo {
        name: "diesel_ncv",
        unit: "MJ/m³",
        what: "net calorific value of the diesel burned, per cubic metre (NCV per kg × density)",
        default: None,
    },
    FactorInfo {
        name: "diesel_co2",
        unit: "kgCO2/TJ",
        what: "CO2 factor of gas/diesel oil, on NCV",
        default: Some((
            74_100.0,
            2006,
            "IPCC",
            "2006 Guidelines Vol. 2 Table 1.4, gas/diesel oil",
        )),
    },
    FactorInfo {
        name: "biomass_ncv",
        unit: "MJ/t",
        what: "net calorific value of the biomass burned (measured: it varies with moisture)",
        default: None,
    },
    FactorInfo {
        name: "biomass_co2",
        unit: "kgCO2/TJ",
        what: "CO2 factor of wood and wood waste, on NCV (biogenic: a memo item, not scope 1)",
        default: Some((
            112_000.0,
            2006,
            "IPCC",
            "2006 Guidelines Vol. 2 Table 1.4, wood / wood waste",
        )),
    },
    FactorInfo {
        name: "flue_gas_cp",
        unit: "kJ/(Nm³·K)",
        what: "specific heat of the flue gas per normal cubic metre, for the heat left at the stack",
        default: None,
    },
];

/// The factor called `name`, if there is one.
#[must_use]
pub fn factor_info(name: &str) -> Option<&'static FactorInfo> {
    FACTORS.iter().find(|f| f.name == name)
}

/// A factor's value with its provenance, as configured or by default.
#[derive(Debug, Clone, PartialEq)]
pub struct Provenanced {
    /// The value, in the factor's unit.
    pub value: f64,
    /// The unit (always the factor's only accepted unit).
    pub unit: &'static str,
    /// Year of the data.
    pub year: i32,
    /// Who published it.
    pub publisher: String,
    /// The document it comes from.
    pub document: String,
}

impl Provenanced {
    /// The default of `info`, if it has one.
    #[must_use]
    pub fn default_of(info: &FactorInfo) -> Option<Self> {
        info.default.map(|(value, year, publisher, document)| Self {
            value,
            unit: info.unit,
            year,
            publisher: publisher.to_owned(),
            document: document.to_owned(),
        })
    }

    /// As the model's coefficient: the source reads "publisher, document, year data".
    #[must_use]
    pub fn coefficient(&self) -> Coefficient {
        Coefficient {
            value: self.value,
            unit: self.unit,
            source: format!("{}, {}, {} data", self.publisher, self.document, self.year),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_has_one_entry_and_a_unique_name() {
        for role in Role::ALL {
            assert_eq!(
                ROLES.iter().filter(|i| i.role == role).count(),
                1,
                "{role:?}"
            );
            assert_eq!(Role::parse(role.name()), Some(vec![role]));
        }
        assert_eq!(ROLES.len(), Role::ALL.len());
        let mut names = Role::names();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Role::ALL.len() + SHORTHANDS.len());
    }

    #[test]
    fn default_metrics_are_catalogue_metrics_that_give_the_role_its_measure() {
        use crate::kpi::{Accumulation, window_unit};
        for role in Role::ALL {
            for id in role.defaults() {
                let m = fivezero_model::metric::lookup(id)
                    .unwrap_or_else(|| panic!("{role}: {id} is not in the catalogue"));
                let got = match (Accumulation::for_metric(m), role.measure()) {
                    (None, Measure::State) => continue,
                    (Some(acc @ Accumulation::Mean), Measure::Mean(u))
                    | (
                        Some(acc @ (Accumulation::Counter | Accumulation::Integral { .. })),
                        Measure::Total(u),
                    ) => (window_unit(m.unit, acc), u),
                    (acc, measure) => {
                        panic!("{role}: {id} accumulates as {acc:?}, the role wants {measure}")
                    }
                };
                assert_eq!(got.0, got.1, "{role}: {id}");
            }
        }
    }

    #[test]
    fn every_required_role_belongs_to_its_group() {
        for g in Group::ALL {
            for r in g.required() {
                assert_eq!(r.group(), g, "{r}");
            }
        }
    }

    #[test]
    fn defaults_carry_their_provenance_into_the_coefficient() {
        let grid = Provenanced::default_of(factor_info("grid").unwrap()).unwrap();
        let c = grid.coefficient();
        assert!((c.value - 0.5306).abs() < 1e-12);
        assert_eq!(c.unit, "kgCO2/kWh");
        assert_eq!(
            c.source,
            "MEE/NBS, national average grid emission factor, 2023 data"
        );
        assert!(Provenanced::default_of(factor_info("diesel_ncv").unwrap()).is_none());
    }
}
