//! The site model in the gateway config: devices' roles, `[kpi]`, factors with provenance,
//! which KPI groups are computed, and what `check-config` says of them.

mod common;

use std::process::Command;

use common::scratch;
use fivezero_gateway::config::{Config, ConfigError};
use fivezero_gateway::site::{Group, Role};

/// Writes `text` as `gateway.toml` in a scratch folder and loads it.
fn load(name: &str, text: &str) -> Result<Config, ConfigError> {
    let file = scratch(name).join("gateway.toml");
    std::fs::write(&file, text).unwrap();
    Config::load_with_env(&file, Vec::new())
}

fn problems(r: Result<Config, ConfigError>) -> Vec<String> {
    match r {
        Ok(_) => panic!("the config was accepted"),
        Err(e) => e.lines(),
    }
}

fn assert_problem(lines: &[String], expected: &str) {
    assert!(
        lines.iter().any(|l| l.contains(expected)),
        "no problem saying {expected:?} in {lines:#?}"
    );
}

/// A site with a grid meter, a PV inverter, the sorting line's PLC and two water meters;
/// `roles` sets the roles of each, in that order, and `kpi` is the `[kpi]` section.
fn site(roles: [&str; 5], kpi: &str) -> String {
    let devices = [
        ("grid-meter", "eastron-sdm630", 1),
        ("pv-roof-a", "sunspec-inverter", 2),
        ("sorting-plc", "sorting-line-template", 3),
        ("water-fresh", "tuf-2000m", 4),
        ("water-reused", "tuf-2000m", 5),
    ];
    let mut text = format!("[gateway]\nid = \"gw1\"\nsite = \"site1\"\n\n{kpi}\n");
    for ((name, profile, unit), role) in devices.iter().zip(roles) {
        text.push_str(&format!(
            "\n[[device]]\nname = \"{name}\"\nprofile = \"{profile}\"\ntcp = \"127.0.0.1:5020\"\nunit = {unit}\n"
        ));
        if !role.is_empty() {
            text.push_str(&format!("role = {role}\n"));
        }
    }
    text
}

const TZ: &str = "[kpi]\ntime_zone = \"Asia/Shanghai\"";

#[test]
fn roles_take_the_profiles_default_metric_or_the_one_named_and_groups_are_computed() {
    let c = load(
        "site-full",
        &site(
            [
                "\"grid\"",
                "\"pv\"",
                r#"["waste_received", "material_recovered", "energy_recovery:sorting.energy_recovery_rate", "landfilled"]"#,
                "\"fresh_water\"",
                "\"reused_water:flow.volume\"",
            ],
            TZ,
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let k = &c.kpi;
    assert_eq!(k.time_zone.as_deref(), Some("Asia/Shanghai"));
    let source = |role: Role| -> Vec<(String, &str)> {
        k.inputs[&role]
            .iter()
            .map(|s| (s.device.to_string(), s.metric))
            .collect()
    };
    assert_eq!(
        source(Role::GridImport),
        [("grid-meter".to_owned(), "electricity.import_energy")]
    );
    assert_eq!(
        source(Role::GridExport),
        [("grid-meter".to_owned(), "electricity.export_energy")]
    );
    assert_eq!(
        source(Role::RenewableGeneration),
        [("pv-roof-a".to_owned(), "pv.energy")]
    );
    assert_eq!(
        source(Role::EnergyRecovery),
        [("sorting-plc".to_owned(), "sorting.energy_recovery_rate")],
        "a named metric wins over the default"
    );
    assert_eq!(
        source(Role::FreshWater),
        [("water-fresh".to_owned(), "flow.net_volume")],
        "the first default the profile has"
    );
    assert_eq!(
        source(Role::ReusedWater),
        [("water-reused".to_owned(), "flow.volume")]
    );
    assert_eq!(
        k.groups,
        [Group::ZeroWaste, Group::ZeroWastewater, Group::ZeroEnergy]
    );
    assert_eq!(k.factors["grid"].value, 0.5306);
    assert_eq!(k.factors["grid"].year, 2023);
}

#[test]
fn several_devices_feeding_one_role_are_all_kept() {
    let c = load(
        "site-sum",
        &site(
            [
                "\"grid\"",
                "\"pv\"",
                "",
                "\"fresh_water\"",
                r#"["fresh_water", "reused_water:flow.volume"]"#,
            ],
            TZ,
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let devices: Vec<&str> = c.kpi.inputs[&Role::FreshWater]
        .iter()
        .map(|s| &*s.device)
        .collect();
    assert_eq!(devices, ["water-fresh", "water-reused"]);
    assert!(c.kpi.groups.contains(&Group::ZeroWastewater));
}

#[test]
fn a_group_with_some_but_not_all_required_roles_is_refused_naming_the_missing_ones() {
    let lines = problems(load(
        "site-missing",
        &site(["\"grid_import\"", "", "\"landfilled\"", "", ""], TZ),
    ));
    assert_problem(
        &lines,
        "kpi: zero_waste cannot be computed: no device has the roles waste_received, \
         material_recovered, energy_recovery (devices feed landfilled of it)",
    );
    assert_problem(
        &lines,
        "kpi: zero_energy and carbon cannot be computed: no device has the role \
         renewable_generation (devices feed grid_import of it)",
    );
}

#[test]
fn bad_role_entries_are_named_with_the_device_and_a_way_out() {
    let lines = problems(load(
        "site-bad-roles",
        &site(
            [
                "\"grid_imports\"",
                "\"renewable_generation:pv.energie\"",
                r#"["steam_used", "material_recovered:sorting.separation_rate"]"#,
                "\"reused_water:electricity.import_energy\"",
                "\"stock_change\"",
            ],
            TZ,
        ),
    ));
    assert_problem(
        &lines,
        "device \"grid-meter\": role \"grid_imports\" is not a role; roles are grid, pv, waste_received",
    );
    assert_problem(
        &lines,
        "device \"pv-roof-a\": role renewable_generation: \"pv.energie\" is not a catalogue metric (did you mean pv.energy?)",
    );
    assert_problem(
        &lines,
        "device \"sorting-plc\": role steam_used: profile sorting-line-template: it has none of \
         steam.used_mass, steam.mass, steam.flow_rate; name the metric, as in role = \"steam_used:METRIC\"",
    );
    assert_problem(
        &lines,
        "device \"sorting-plc\": role material_recovered: sorting.separation_rate: a gauge in % cannot give a total in t",
    );
    assert_problem(
        &lines,
        "device \"water-fresh\": role reused_water: profile tuf-2000m has no point with metric electricity.import_energy",
    );
    assert_problem(
        &lines,
        "device \"water-reused\": role stock_change: profile tuf-2000m: this role has no default metric",
    );
}

#[test]
fn the_time_zone_is_required_with_roles_and_must_be_iana() {
    let lines = problems(load(
        "site-no-tz",
        &site(["\"grid\"", "\"pv\"", "", "", ""], ""),
    ));
    assert_problem(&lines, "kpi.time_zone is required when devices have roles");
    let lines = problems(load(
        "site-bad-tz",
        &site(
            ["\"grid\"", "\"pv\"", "", "", ""],
            "[kpi]\ntime_zone = \"Asia/Qingdao\"",
        ),
    ));
    assert_problem(
        &lines,
        "kpi.time_zone \"Asia/Qingdao\" is not an IANA time zone",
    );
    let c = load("site-none", &site(["", "", "", "", ""], "")).unwrap();
    assert!(c.kpi.groups.is_empty() && c.kpi.inputs.is_empty());
}

#[test]
fn factors_are_overridden_with_their_provenance_and_checked() {
    let kpi = format!(
        "{TZ}\n\n[kpi.factors.grid]\nvalue = 0.5703\nunit = \"kgCO2/kWh\"\nyear = 2022\n\
         publisher = \"MEE\"\ndocument = \"2023-2025 power-sector reporting notice\"\n"
    );
    let c = load(
        "site-factor",
        &site(["\"grid\"", "\"pv\"", "", "", ""], &kpi),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let grid = &c.kpi.factors["grid"];
    assert_eq!(
        (grid.value, grid.year, grid.publisher.as_str()),
        (0.5703, 2022, "MEE")
    );
    assert_eq!(
        grid.coefficient().source,
        "MEE, 2023-2025 power-sector reporting notice, 2022 data"
    );

    let kpi = format!(
        "{TZ}\n\n[kpi.factors.grid]\nvalue = 570.3\nunit = \"gCO2/kWh\"\nyear = 1900\n\
         publisher = \"\"\ndocument = \"x\"\n\n[kpi.factors.grid_average]\nvalue = 1.0\n\
         unit = \"kgCO2/kWh\"\nyear = 2023\npublisher = \"a\"\ndocument = \"b\"\n"
    );
    let lines = problems(load(
        "site-bad-factor",
        &site(["\"grid\"", "\"pv\"", "", "", ""], &kpi),
    ));
    assert_problem(
        &lines,
        "kpi.factors.grid.unit \"gCO2/kWh\" must be \"kgCO2/kWh\"",
    );
    assert_problem(&lines, "kpi.factors.grid.year 1900 is not a plausible year");
    assert_problem(
        &lines,
        "kpi.factors.grid.publisher is empty: every factor carries its provenance",
    );
    assert_problem(
        &lines,
        "kpi.factors.grid_average is not a factor; factors are grid, grid_residual",
    );
}

#[test]
fn a_fuel_without_a_default_calorific_value_needs_one_configured() {
    let text = format!(
        "{}\n\n[[device]]\nname = \"genset\"\nprofile = \"{}\"\ntcp = \"127.0.0.1:5020\"\nunit = 9\nrole = \"fuel_diesel:flow.volume\"\n",
        site(["\"grid\"", "\"pv\"", "", "", ""], TZ),
        "tuf-2000m"
    );
    let lines = problems(load("site-fuel", &text));
    assert_problem(
        &lines,
        "kpi: a device feeds fuel_diesel, so [kpi.factors.diesel_ncv] is required (value in MJ/m³",
    );
}

#[test]
fn check_config_reports_the_kpis_computed_their_inputs_and_factors() {
    let file = scratch("site-check").join("gateway.toml");
    std::fs::write(
        &file,
        site(
            [
                "\"grid\"",
                "\"pv\"",
                "",
                "\"fresh_water\"",
                "\"reused_water\"",
            ],
            TZ,
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fivezero-gateway"))
        .arg("check-config")
        .arg(&file)
        .output()
        .expect("run check-config");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    for line in [
        "kpi: windows of 15m, 1h and 1d in Asia/Shanghai; 2 of 6 groups computed",
        "  zero_wastewater: computed",
        "    fresh_water <- water-fresh flow.net_volume",
        "  zero_waste: not computed (needs waste_received, material_recovered, energy_recovery, landfilled)",
        "    grid_import <- grid-meter electricity.import_energy",
        "  factor grid = 0.5306 kgCO2/kWh (MEE/NBS, national average grid emission factor, 2023 data)",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "no line {line:?} in\n{stdout}"
        );
    }
}
