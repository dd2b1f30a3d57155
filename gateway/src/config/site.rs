//! Validation of the site model: the devices' `role` entries, `[kpi]` and its factors.

use std::collections::BTreeMap;
use std::sync::Arc;

use fivezero_model::metric;

use super::raw::{RawDevice, RawFactor, RawKpi, RawRoles};
use super::validate::Problems;
use super::{DeviceConfig, KpiConfig, RoleSource};
use crate::kpi::{Accumulation, window_unit};
use crate::site::{FACTORS, Group, Measure, Provenanced, Role, factor_info};

/// Fuel roles and the factors they cannot do without.
const FUEL_FACTORS: &[(Role, &[&str])] = &[
    (Role::FuelCoal, &["coal_ncv", "coal_co2"]),
    (
        Role::FuelNaturalGas,
        &["natural_gas_ncv", "natural_gas_co2"],
    ),
    (Role::FuelDiesel, &["diesel_ncv", "diesel_co2"]),
    (Role::FuelBiomass, &["biomass_ncv", "biomass_co2"]),
];

/// KPI groups and the factors they cannot do without.
const GROUP_FACTORS: &[(Group, &[&str])] = &[(Group::ZeroWasteHeat, &["flue_gas_cp"])];

/// Builds the site model from `[kpi]` and the devices' roles. `devices` are the devices that
/// passed validation, `raws` every device entry, in file order.
pub(super) fn kpi(
    raw: &RawKpi,
    raws: &[RawDevice],
    devices: &[DeviceConfig],
    problems: &mut Problems,
) -> KpiConfig {
    let mut inputs: BTreeMap<Role, Vec<RoleSource>> = BTreeMap::new();
    for raw_device in raws {
        let Some(roles) = &raw_device.role else {
            continue;
        };
        let who = format!("device {:?}", raw_device.name);
        let Some(device) = devices.iter().find(|d| *d.name == *raw_device.name) else {
            continue; // Its own problems are reported already.
        };
        for entry in roles.entries() {
            for source in role_entry(entry, device, &who, problems) {
                let list = inputs.entry(source.0).or_default();
                if list.contains(&source.1) {
                    problems.push(format!(
                        "{who}: role {} names {} twice",
                        source.0, source.1.metric
                    ));
                } else {
                    list.push(source.1);
                }
            }
        }
    }

    let time_zone = match raw.time_zone.as_deref() {
        Some(name) => match jiff::tz::TimeZone::get(name) {
            Ok(_) => Some(name.to_owned()),
            Err(_) => {
                problems.push(format!(
                    "kpi.time_zone {name:?} is not an IANA time zone (such as \"Asia/Shanghai\")"
                ));
                None
            }
        },
        None => {
            if !inputs.is_empty() {
                problems.push(
                    "kpi.time_zone is required when devices have roles: windows close at the \
                     site's local midnight (such as time_zone = \"Asia/Shanghai\")"
                        .to_owned(),
                );
            }
            None
        }
    };

    let mut groups = Vec::new();
    for group in Group::ALL {
        let fed: Vec<Role> = inputs
            .keys()
            .copied()
            .filter(|r| r.group() == group)
            .collect();
        if fed.is_empty() {
            continue;
        }
        let missing: Vec<&str> = group
            .required()
            .iter()
            .filter(|r| !inputs.contains_key(r))
            .map(|r| r.name())
            .collect();
        if missing.is_empty() {
            groups.push(group);
        } else {
            let given: Vec<&str> = fed.iter().map(|r| r.name()).collect();
            problems.push(format!(
                "kpi: {group} cannot be computed: no device has the role{} {} (devices feed {} of it)",
                if missing.len() == 1 { "" } else { "s" },
                missing.join(", "),
                given.join(", ")
            ));
        }
    }

    let factors = factors(&raw.factors, problems);
    for (role, needed) in FUEL_FACTORS {
        if !inputs.contains_key(role) {
            continue;
        }
        for name in *needed {
            if !factors.contains_key(name) {
                let unit = factor_info(name).map_or("", |f| f.unit);
                problems.push(format!(
                    "kpi: a device feeds {role}, so [kpi.factors.{name}] is required \
                     (value in {unit}, year, publisher, document): the reference has no default"
                ));
            }
        }
    }

    for (group, needed) in GROUP_FACTORS {
        if !groups.contains(group) {
            continue;
        }
        for name in *needed {
            if !factors.contains_key(name) {
                let unit = factor_info(name).map_or("", |f| f.unit);
                problems.push(format!(
                    "kpi: {group} is computed, so [kpi.factors.{name}] is required \
                     (value in {unit}, year, publisher, document): the reference has no default"
                ));
            }
        }
    }

    KpiConfig {
        time_zone,
        inputs,
        groups,
        factors,
    }
}

/// The sources of one `role` entry: `ROLE`, `ROLE:METRIC`, or a shorthand.
fn role_entry(
    entry: &str,
    device: &DeviceConfig,
    who: &str,
    problems: &mut Problems,
) -> Vec<(Role, RoleSource)> {
    let (name, metric) = match entry.split_once(':') {
        Some((n, m)) => (n.trim(), Some(m.trim())),
        None => (entry.trim(), None),
    };
    let Some(roles) = Role::parse(name) else {
        problems.push(format!(
            "{who}: role {name:?} is not a role; roles are {}",
            Role::names().join(", ")
        ));
        return Vec::new();
    };
    let has = |id: &str| {
        device
            .profile
            .points
            .iter()
            .any(|p| p.metric.is_some_and(|m| m.id == id))
    };
    let mut out = Vec::new();
    for role in roles {
        let id = match metric {
            Some(id) => {
                let Some(m) = metric::lookup(id) else {
                    let hint = metric::closest(id)
                        .map(|m| format!(" (did you mean {}?)", m.id))
                        .unwrap_or_default();
                    problems.push(format!(
                        "{who}: role {role}: {id:?} is not a catalogue metric{hint}"
                    ));
                    continue;
                };
                if !has(m.id) {
                    problems.push(format!(
                        "{who}: role {role}: profile {} has no point with metric {}",
                        device.profile.id, m.id
                    ));
                    continue;
                }
                m.id
            }
            None => {
                if let Some(id) = role.defaults().iter().copied().find(|id| has(id)) {
                    id
                } else {
                    let tried = if role.defaults().is_empty() {
                        "this role has no default metric".to_owned()
                    } else {
                        format!("it has none of {}", role.defaults().join(", "))
                    };
                    problems.push(format!(
                        "{who}: role {role}: profile {}: {tried}; name the metric, as in \
                         role = \"{role}:METRIC\"",
                        device.profile.id
                    ));
                    continue;
                }
            }
        };
        if let Some(m) = metric::lookup(id) {
            if let Err(e) = fits(role, m) {
                problems.push(format!("{who}: role {role}: {}: {e}", m.id));
                continue;
            }
            out.push((
                role,
                RoleSource {
                    device: Arc::clone(&device.name),
                    metric: m.id,
                },
            ));
        }
    }
    out
}

/// Whether metric `m` gives `role` the window value it needs.
fn fits(role: Role, m: &metric::Metric) -> Result<(), String> {
    let acc = Accumulation::for_metric(m);
    match (role.measure(), acc) {
        (Measure::State, None) if m.kind == metric::Kind::State => Ok(()),
        (Measure::Mean(unit), Some(acc @ Accumulation::Mean))
        | (
            Measure::Total(unit),
            Some(acc @ (Accumulation::Counter | Accumulation::Integral { .. })),
        ) if window_unit(m.unit, acc) == unit => Ok(()),
        (measure, _) => Err(format!(
            "a {} in {} cannot give {measure}",
            m.kind,
            if m.unit.is_empty() { "no unit" } else { m.unit }
        )),
    }
}

/// `[kpi.factors]`, over the defaults.
fn factors(
    raws: &BTreeMap<String, RawFactor>,
    problems: &mut Problems,
) -> BTreeMap<&'static str, Provenanced> {
    let mut out: BTreeMap<&'static str, Provenanced> = FACTORS
        .iter()
        .filter_map(|f| Provenanced::default_of(f).map(|p| (f.name, p)))
        .collect();
    for (name, raw) in raws {
        let key = format!("kpi.factors.{name}");
        let Some(info) = factor_info(name) else {
            let names: Vec<&str> = FACTORS.iter().map(|f| f.name).collect();
            problems.push(format!(
                "{key} is not a factor; factors are {}",
                names.join(", ")
            ));
            continue;
        };
        let before = problems.0.len();
        if raw.unit != info.unit {
            problems.push(format!(
                "{key}.unit {:?} must be {:?} ({})",
                raw.unit, info.unit, info.what
            ));
        }
        if !raw.value.is_finite() || raw.value < 0.0 {
            problems.push(format!(
                "{key}.value {} must be a finite number, 0 or more",
                raw.value
            ));
        }
        if !(1990..=2100).contains(&raw.year) {
            problems.push(format!(
                "{key}.year {} is not a plausible year of data",
                raw.year
            ));
        }
        for (field, text) in [("publisher", &raw.publisher), ("document", &raw.document)] {
            if text.trim().is_empty() {
                problems.push(format!(
                    "{key}.{field} is empty: every factor carries its provenance"
                ));
            }
        }
        if problems.0.len() == before {
            out.insert(
                info.name,
                Provenanced {
                    value: raw.value,
                    unit: info.unit,
                    year: i32::try_from(raw.year).unwrap_or(0),
                    publisher: raw.publisher.trim().to_owned(),
                    document: raw.document.trim().to_owned(),
                },
            );
        }
    }
    out
}

impl RawRoles {
    fn entries(&self) -> Vec<&str> {
        match self {
            Self::One(s) => vec![s.as_str()],
            Self::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}
