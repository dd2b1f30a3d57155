//! The plant physics over simulated days, stepped directly (no server): the day's five-zero
//! figures of the reference park, energy and mass balances, determinism, and refusals.

use std::path::Path;
use std::time::Instant;

use fivezero_model::Kind;
use fivezero_sim::Physics;
use fivezero_sim::plant::{Plant, PlantError};
use fivezero_sim::scenario::Scenario;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// The reference park in miniature: every model, the Green Sail sizes. The profile only
/// matters to the server, so every device uses the SDM630 profile.
fn park(seed: u64, clouds: f64) -> String {
    let mut s = format!(
        r#"
[site]
name = "test-park"
latitude = 36.07
longitude = 120.38
timezone = "Asia/Shanghai"
start = "2026-06-21T00:00:00+08:00"

[simulation]
seed = {seed}
step = "1s"
"#
    );
    let devices: &[(&str, &str, &str)] = &[
        ("grid", "grid_meter", "base_load_kw = 400"),
        (
            "pv-a",
            "pv",
            &format!("kwp = 2500\ntilt = 10\nclouds = {clouds}"),
        ),
        (
            "pv-b",
            "pv",
            &format!("kwp = 2500\ntilt = 10\nclouds = {clouds}"),
        ),
        (
            "pv-facade",
            "pv",
            &format!("kwp = 1000\ntilt = 90\nperformance_ratio = 0.78\nclouds = {clouds}"),
        ),
        (
            "boiler",
            "boiler",
            "rated_heat_kw = 8000\nfuel_lhv_mj_per_kg = 12\nefficiency = 0.85",
        ),
        (
            "recovery",
            "heat_recovery",
            "boiler = \"boiler\"\ndesign_efficiency = 0.9",
        ),
        (
            "stack",
            "stack",
            "boiler = \"boiler\"\nrecovery = \"recovery\"",
        ),
        (
            "steam-generated",
            "steam",
            "boiler = \"boiler\"\nstream = \"generated\"",
        ),
        (
            "steam-1",
            "steam",
            "boiler = \"boiler\"\nstream = \"stage\"\nshare = 0.55",
        ),
        (
            "steam-2",
            "steam",
            "boiler = \"boiler\"\nstream = \"stage\"\nshare = 0.25\npressure_bar = 4",
        ),
        (
            "steam-3",
            "steam",
            "boiler = \"boiler\"\nstream = \"stage\"\nshare = 0.17\npressure_bar = 12",
        ),
        (
            "steam-vent",
            "steam",
            "boiler = \"boiler\"\nstream = \"vent\"\nshare = 0.015",
        ),
        ("air", "compressor_station", "rated_power_kw = 250"),
        (
            "sorting",
            "sorting_line",
            "rated_tph = 460\npower_kw = 900\nshifts = [\"06:00-14:00\", \"14:00-22:00\", \"22:00-05:00\"]",
        ),
        ("sorting-meter", "submeter", "meters = \"sorting\""),
        ("boiler-meter", "submeter", "meters = \"boiler\""),
        ("base-meter", "submeter", "meters = \"grid\""),
        ("fresh", "water", "stream = \"fresh\"\ndaily_m3 = 150"),
        ("reused", "water", "stream = \"reused\"\ndaily_m3 = 2000"),
        (
            "rain-in",
            "water",
            "stream = \"rain_collected\"\ncatchment_m2 = 60000",
        ),
        (
            "rain-out",
            "water",
            "stream = \"rain_used\"\ndaily_m3 = 1200",
        ),
        ("outfall", "water", "stream = \"discharged\"\ndaily_m3 = 0"),
        (
            "loader-1",
            "ev_charger",
            "fleet = \"loader\"\nmax_power_kw = 22",
        ),
        (
            "loader-2",
            "ev_charger",
            "fleet = \"loader\"\nmax_power_kw = 22",
        ),
        (
            "mixer-1",
            "ev_charger",
            "fleet = \"mixer_truck\"\nmax_power_kw = 22",
        ),
        (
            "mixer-2",
            "ev_charger",
            "fleet = \"mixer_truck\"\nmax_power_kw = 22",
        ),
        ("car-1", "ev_charger", "fleet = \"car\"\nmax_power_kw = 22"),
    ];
    for (i, (name, physics, params)) in devices.iter().enumerate() {
        s.push_str(&format!(
            "\n[[device]]\nname = \"{name}\"\nprofile = \"eastron-sdm630\"\nunit_id = {}\nphysics = \"{physics}\"\n[device.params]\n{params}\n",
            i + 1
        ));
    }
    s
}

fn scenario(text: &str) -> Scenario {
    Scenario::parse(
        Path::new("test.toml"),
        text,
        &fivezero_profiles::library_dir(),
    )
    .expect("scenario parses")
}

struct Sim {
    plant: Plant,
    names: Vec<String>,
    start: i64,
}

impl Sim {
    fn new(text: &str) -> Self {
        let sc = scenario(text);
        Self {
            plant: Plant::new(&sc).expect("plant builds"),
            names: sc.devices.iter().map(|d| d.name.clone()).collect(),
            start: sc.site.start_ms,
        }
    }

    fn idx(&self, device: &str) -> usize {
        self.names
            .iter()
            .position(|n| n == device)
            .unwrap_or_else(|| panic!("no device {device}"))
    }

    fn get(&self, device: &str, metric: &str) -> f64 {
        self.plant
            .value(self.idx(device), metric)
            .unwrap_or_else(|| panic!("{device} has no {metric}"))
    }

    /// Advances to `t_ms` after the scenario start.
    fn at(&mut self, t_ms: i64) {
        self.plant.advance_to(self.start + t_ms);
    }

    fn all_values(&self) -> Vec<(String, &'static str, Option<f64>)> {
        let mut out = Vec::new();
        for (i, name) in self.names.iter().enumerate() {
            for m in self.plant.metrics(i) {
                out.push((name.clone(), m, self.plant.value(i, m)));
            }
        }
        out
    }
}

/// Counter deltas over the first simulated day.
fn day_deltas(sim: &mut Sim, counters: &[(&str, &str)]) -> Vec<f64> {
    let before: Vec<f64> = counters.iter().map(|(d, m)| sim.get(d, m)).collect();
    sim.at(DAY_MS);
    counters
        .iter()
        .zip(before)
        .map(|((d, m), b)| sim.get(d, m) - b)
        .collect()
}

fn error_of(text: &str) -> PlantError {
    Plant::new(&scenario(text)).expect_err("the plant is refused")
}

const SORTING: [&str; 5] = [
    "sorting.input_mass",
    "sorting.stock_drawn_mass",
    "sorting.recovered_mass",
    "sorting.energy_recovery_mass",
    "sorting.landfill_mass",
];

#[test]
fn a_day_of_sorting_recovers_92_percent_as_material_7_as_energy_and_landfills_under_1_percent() {
    let mut sim = Sim::new(&park(42, 1.0));
    let before: Vec<f64> = SORTING.iter().map(|m| sim.get("sorting", m)).collect();
    let mut separation = Vec::new();
    for h in 1..=24 {
        sim.at(h * HOUR_MS);
        if sim.get("sorting", "sorting.running") == 1.0 {
            separation.push(sim.get("sorting", "sorting.separation_rate"));
        }
    }
    let d: Vec<f64> = SORTING
        .iter()
        .zip(before)
        .map(|(m, b)| sim.get("sorting", m) - b)
        .collect();
    let (input, stock, material, energy, landfill) = (d[0], d[1], d[2], d[3], d[4]);
    let fed = input + stock;
    assert!(
        (9_000.0..10_600.0).contains(&input),
        "input {input:.0} t/day"
    );
    assert!(
        stock > 0.0 && stock < 0.02 * input,
        "stock drawn {stock:.1} t"
    );
    let (r_mat, r_en, r_land) = (material / fed, energy / fed, landfill / fed);
    assert!((r_mat - 0.92).abs() < 0.001, "material recovery {r_mat:.4}");
    assert!((r_en - 0.07).abs() < 0.0005, "energy recovery {r_en:.4}");
    assert!((r_land - 0.008).abs() < 0.0002, "landfill {r_land:.5}");
    assert!(r_mat + r_en >= 0.98, "total recovery {:.4}", r_mat + r_en);
    // Mass balance: the outputs are the feed minus its moisture (0.2 %).
    let moisture = fed - (material + energy + landfill);
    assert!(
        (moisture / fed - 0.002).abs() < 1e-6,
        "moisture share {:.6}",
        moisture / fed
    );
    let mean = separation.iter().sum::<f64>() / separation.len() as f64;
    assert!(
        separation.iter().all(|s| (96.5..99.5).contains(s)),
        "separation {separation:?}"
    );
    assert!((97.0..99.0).contains(&mean), "mean separation {mean:.2} %");
}

#[test]
fn the_stack_leaves_at_about_40_degrees_while_the_recovery_loop_runs() {
    let mut sim = Sim::new(&park(42, 1.0));
    let mut temps = Vec::new();
    for m in 1..=1440 {
        sim.at(m * 60_000);
        assert_eq!(sim.get("boiler", "boiler.running"), 1.0);
        temps.push(sim.get("stack", "stack.flue_gas_temperature"));
    }
    let mean = temps.iter().sum::<f64>() / temps.len() as f64;
    let max = temps.iter().copied().fold(f64::MIN, f64::max);
    assert!((39.0..41.0).contains(&mean), "mean exit {mean:.2} °C");
    assert!(max < 42.0, "hottest minute {max:.2} °C");
    let outlet = sim.get("boiler", "boiler.flue_gas_temperature");
    assert!(
        (158.0..=182.0).contains(&outlet),
        "boiler outlet {outlet:.1} °C"
    );
}

#[test]
fn ninety_percent_of_the_flue_gas_heat_is_recovered() {
    // recovered / (recovered + heat left at the stack), the stack loss taken as a gateway would:
    // stack flow × c_p × (exit − 25 °C), sampled every 10 s.
    let mut sim = Sim::new(&park(42, 1.0));
    let before = sim.get("recovery", "heat.energy");
    let mut loss = 0.0;
    for k in 1..=8640 {
        sim.at(k * 10_000);
        let flow = sim.get("stack", "stack.flue_gas_flow");
        let exit = sim.get("stack", "stack.flue_gas_temperature");
        loss += flow * 1.38 * (exit - 25.0) / 3600.0 * (10.0 / 3600.0);
    }
    let recovered = sim.get("recovery", "heat.energy") - before;
    let ratio = recovered / (recovered + loss);
    assert!(
        (0.89..0.91).contains(&ratio),
        "recovery ratio {ratio:.4} ({recovered:.0} kWh recovered, {loss:.0} kWh lost)"
    );
    assert!(recovered > 5_000.0, "recovered {recovered:.0} kWh");
}

#[test]
fn when_the_recovery_loop_stops_the_stack_heats_up_to_the_boiler_outlet() {
    let text = park(42, 1.0).replace(
        "design_efficiency = 0.9",
        "design_efficiency = 0.9\noutage = [\"12:00-13:00\"]",
    );
    let mut sim = Sim::new(&text);
    sim.at(11 * HOUR_MS + 30 * 60_000);
    assert!((38.0..42.0).contains(&sim.get("stack", "stack.flue_gas_temperature")));
    let dust_running = sim.get("stack", "stack.dust_concentration");
    sim.at(12 * HOUR_MS + 30 * 60_000);
    let stack = sim.get("stack", "stack.flue_gas_temperature");
    let outlet = sim.get("boiler", "boiler.flue_gas_temperature");
    assert!(
        (stack - outlet).abs() < 2.0,
        "stack {stack:.1} °C, boiler outlet {outlet:.1} °C"
    );
    assert_eq!(sim.get("recovery", "heat.power"), 0.0);
    assert_eq!(sim.get("recovery", "heat.flow_rate"), 0.0);
    assert!(sim.get("stack", "stack.dust_concentration") > dust_running);
    sim.at(14 * HOUR_MS);
    assert!((38.0..42.0).contains(&sim.get("stack", "stack.flue_gas_temperature")));
    assert!(sim.get("recovery", "heat.power") > 100.0);
}

#[test]
fn a_clear_june_day_yields_5_to_7_kwh_per_kwp_over_the_6_mwp() {
    let mut sim = Sim::new(&park(42, 0.0));
    let pvs = ["pv-a", "pv-b", "pv-facade"];
    let before: Vec<f64> = pvs.iter().map(|d| sim.get(d, "pv.energy")).collect();
    let (mut peak_kw, mut peak_irr): (f64, f64) = (0.0, 0.0);
    for m in 1..=1440 {
        sim.at(m * 60_000);
        peak_kw = peak_kw.max(pvs.iter().map(|d| sim.get(d, "pv.ac_power")).sum());
        peak_irr = peak_irr.max(sim.get("pv-a", "pv.irradiance"));
    }
    let total: f64 = pvs
        .iter()
        .zip(before)
        .map(|(d, b)| sim.get(d, "pv.energy") - b)
        .sum();
    let specific = total / 6000.0;
    assert!(
        (5.0..7.0).contains(&specific),
        "{total:.0} kWh = {specific:.2} kWh/kWp"
    );
    assert!(
        (3_500.0..6_000.0).contains(&peak_kw),
        "peak {peak_kw:.0} kW"
    );
    assert!(
        (900.0..1_100.0).contains(&peak_irr),
        "peak irradiance {peak_irr:.0} W/m²"
    );
}

#[test]
fn grid_import_minus_export_equals_load_minus_pv_within_a_tenth_of_a_percent() {
    let mut sim = Sim::new(&park(42, 1.0));
    let counters = [
        ("grid", "electricity.import_energy"),
        ("grid", "electricity.export_energy"),
        ("base-meter", "electricity.import_energy"),
        ("sorting-meter", "electricity.import_energy"),
        ("boiler-meter", "electricity.import_energy"),
        ("air", "compressor.energy"),
        ("loader-1", "ev.energy"),
        ("loader-2", "ev.energy"),
        ("mixer-1", "ev.energy"),
        ("mixer-2", "ev.energy"),
        ("car-1", "ev.energy"),
        ("pv-a", "pv.energy"),
        ("pv-b", "pv.energy"),
        ("pv-facade", "pv.energy"),
    ];
    let d = day_deltas(&mut sim, &counters);
    let net = d[0] - d[1];
    let load: f64 = d[2..11].iter().sum();
    let pv: f64 = d[11..].iter().sum();
    assert!(
        d[0] > 0.0 && d[1] > 0.0,
        "a PV day both imports and exports: {:.0} / {:.0} kWh",
        d[0],
        d[1]
    );
    let err = (net - (load - pv)).abs() / load;
    assert!(
        err < 0.001,
        "import − export {net:.1} kWh, load − PV {:.1} kWh",
        load - pv
    );
}

#[test]
fn the_steam_cascade_puts_97_percent_to_use_and_vents_1_5_percent() {
    let mut sim = Sim::new(&park(42, 1.0));
    let d = day_deltas(
        &mut sim,
        &[
            ("boiler", "steam.generated_mass"),
            ("steam-generated", "steam.generated_mass"),
            ("steam-1", "steam.used_mass"),
            ("steam-2", "steam.used_mass"),
            ("steam-3", "steam.used_mass"),
            ("steam-vent", "steam.vented_mass"),
            ("boiler", "boiler.heat_output_energy"),
        ],
    );
    assert!(
        (d[0] - d[1]).abs() < 1e-6 * d[0],
        "boiler and header meter agree"
    );
    let used = (d[2] + d[3] + d[4]) / d[1];
    let vented = d[5] / d[1];
    assert!((used - 0.97).abs() < 1e-6 && used >= 0.95, "used {used:.4}");
    assert!(
        (vented - 0.015).abs() < 1e-6 && vented <= 0.02,
        "vented {vented:.4}"
    );
    // Steam ≈ heat / 2.7 GJ/t.
    assert!((d[1] - d[6] * 3.6 / 2700.0).abs() < 1e-6 * d[1]);
}

#[test]
fn water_is_reused_90_percent_nothing_is_discharged_and_rain_is_used_not_lost() {
    // Twelve June days of the reference seed; it rains on days 4 and 10.
    let mut sim = Sim::new(&park(42, 1.0));
    let start_in = sim.get("rain-in", "flow.volume");
    let start_out = sim.get("rain-out", "flow.volume");
    let daily = [
        ("reused", "flow.volume"),
        ("fresh", "flow.volume"),
        ("outfall", "flow.volume"),
    ];
    for day in 0..12 {
        let before: Vec<f64> = daily.iter().map(|(d, m)| sim.get(d, m)).collect();
        for h in 1..=24 {
            sim.at(day * DAY_MS + h * HOUR_MS);
            let collected = sim.get("rain-in", "flow.volume") - start_in;
            let used = sim.get("rain-out", "flow.volume") - start_out;
            assert!(
                used <= collected + 1e-9,
                "day {day} hour {h}: used {used:.1} > collected {collected:.1} m³"
            );
        }
        let d: Vec<f64> = daily
            .iter()
            .zip(before)
            .map(|((n, m), b)| sim.get(n, m) - b)
            .collect();
        let reuse = d[0] / (d[0] + d[1]);
        assert!(reuse >= 0.9, "day {day}: reuse {reuse:.3}");
        assert_eq!(d[2], 0.0, "day {day}: discharged {:.3} m³", d[2]);
    }
    let collected = sim.get("rain-in", "flow.volume") - start_in;
    let used = sim.get("rain-out", "flow.volume") - start_out;
    assert!(collected > 500.0, "it rained: {collected:.0} m³ collected");
    assert!(
        used >= 0.95 * collected,
        "rain used {used:.0} of {collected:.0} m³"
    );
}

#[test]
fn the_same_seed_gives_identical_values_however_advance_to_is_called() {
    let text = park(42, 1.0);
    let mut one = Sim::new(&text);
    let mut many = Sim::new(&text);
    let end = 9 * HOUR_MS + 12_345;
    one.at(end);
    let mut t = 0;
    while t < end {
        t = (t + 7_777).min(end);
        many.at(t);
        many.at(t - 50_000); // going back is ignored
        many.at(t);
    }
    assert_eq!(one.plant.now_ms(), many.plant.now_ms());
    assert_eq!(one.plant.now_ms(), one.start + 9 * HOUR_MS + 12_000);
    let (a, b) = (one.all_values(), many.all_values());
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(
            x.2.map(f64::to_bits),
            y.2.map(f64::to_bits),
            "{} {}",
            x.0,
            x.1
        );
    }
    // A fresh plant of the same scenario reaches the same state again.
    let mut again = Sim::new(&text);
    again.at(end);
    assert_eq!(again.all_values(), a);
}

#[test]
fn a_different_seed_gives_different_clouds() {
    let mut a = Sim::new(&park(42, 1.0));
    let mut b = Sim::new(&park(43, 1.0));
    let (mut differ, mut daylight) = (0, 0);
    for k in 1..=288 {
        a.at(k * 300_000);
        b.at(k * 300_000);
        let (x, y) = (
            a.get("pv-a", "pv.irradiance"),
            b.get("pv-a", "pv.irradiance"),
        );
        if x > 50.0 || y > 50.0 {
            daylight += 1;
            if (x - y).abs() > 0.02 * x.max(y) {
                differ += 1;
            }
        }
    }
    assert!(daylight > 150, "{daylight} daylight samples");
    assert!(
        differ > daylight / 5,
        "{differ} of {daylight} daylight samples differ"
    );
}

#[test]
fn counters_never_decrease() {
    let mut sim = Sim::new(&park(42, 1.0));
    let counters: Vec<(usize, &'static str)> = (0..sim.names.len())
        .flat_map(|i| sim.plant.metrics(i).into_iter().map(move |m| (i, m)))
        .filter(|(_, m)| {
            fivezero_model::metric::lookup(m).is_some_and(|x| x.kind == Kind::Counter)
                && *m != "ev.session_energy"
        })
        .collect();
    assert!(counters.len() > 40, "{} counters", counters.len());
    let read = |sim: &Sim, i: usize, m: &str| sim.plant.value(i, m).unwrap_or(f64::NAN);
    let mut last: Vec<f64> = counters.iter().map(|&(i, m)| read(&sim, i, m)).collect();
    for k in 1..=2880 {
        sim.at(k * 30_000);
        for (j, &(i, m)) in counters.iter().enumerate() {
            let v = read(&sim, i, m);
            assert!(
                v >= last[j],
                "{} {m} fell from {} to {v}",
                sim.names[i],
                last[j]
            );
            last[j] = v;
        }
    }
}

#[test]
fn pv_is_zero_and_asleep_at_night() {
    let mut sim = Sim::new(&park(42, 1.0));
    let night = |sim: &Sim| {
        for pv in ["pv-a", "pv-b", "pv-facade"] {
            assert_eq!(sim.get(pv, "pv.ac_power"), 0.0);
            assert_eq!(sim.get(pv, "pv.dc_power"), 0.0);
            assert_eq!(sim.get(pv, "pv.irradiance"), 0.0);
            assert_eq!(sim.get(pv, "pv.operating_state"), 2.0, "{pv} sleeping");
        }
    };
    for m in (0..=240).step_by(10) {
        sim.at(m * 60_000);
        night(&sim);
    }
    sim.at(12 * HOUR_MS);
    let st = sim.get("pv-a", "pv.operating_state");
    assert!(st == 4.0 || st == 5.0, "producing at noon: state {st}");
    assert!(sim.get("pv-a", "pv.ac_power") > 300.0);
    for m in (20 * 60 + 30..24 * 60).step_by(10) {
        sim.at(m * 60_000);
        night(&sim);
    }
}

#[test]
fn charge_points_run_sessions_within_their_power_and_report_keba_style_codes() {
    let mut sim = Sim::new(&park(42, 1.0));
    let chargers = ["loader-1", "loader-2", "mixer-1", "mixer-2", "car-1"];
    let mut charging_minutes = 0;
    let mut new_sessions = 0;
    let mut last: Vec<f64> = chargers
        .iter()
        .map(|c| sim.get(c, "ev.session_energy"))
        .collect();
    for k in 1..=1440 {
        sim.at(k * 60_000);
        for (j, c) in chargers.iter().enumerate() {
            let p = sim.get(c, "ev.power");
            let state = sim.get(c, "ev.charging_state");
            let cable = sim.get(c, "ev.cable_state");
            let limit = if *c == "car-1" { 11.0 } else { 22.0 };
            assert!((0.0..=limit * 1.01).contains(&p), "{c}: {p} kW");
            match state as i64 {
                2 => {
                    assert_eq!((p, cable), (0.0, 1.0));
                    assert!(sim.plant.value(sim.idx(c), "ev.state_of_charge").is_none());
                }
                3 => {
                    charging_minutes += 1;
                    assert_eq!(cable, 7.0);
                    assert!(p > 0.0);
                    let soc = sim.get(c, "ev.state_of_charge");
                    assert!((0.0..=100.5).contains(&soc), "{c}: SoC {soc}");
                    let i = sim.get(c, "electricity.current_l1");
                    let expected = p * 1000.0 / (3.0 * 230.0);
                    assert!(
                        (i - expected).abs() < 0.1 * expected + 0.5,
                        "{c}: {i} A at {p} kW"
                    );
                }
                5 => assert_eq!((p, cable), (0.0, 7.0)),
                other => panic!("{c}: charging state {other}"),
            }
            let session = sim.get(c, "ev.session_energy");
            if session < last[j] {
                new_sessions += 1;
            }
            last[j] = session;
        }
    }
    assert!(
        charging_minutes > 200,
        "{charging_minutes} charging minutes"
    );
    assert!(
        new_sessions >= 3,
        "{new_sessions} sessions after each charger's first"
    );
}

#[test]
fn metrics_lists_what_value_and_text_answer() {
    let mut sim = Sim::new(&park(42, 1.0));
    sim.at(12 * HOUR_MS);
    for (i, name) in sim.names.iter().enumerate() {
        let metrics = sim.plant.metrics(i);
        assert!(metrics.contains(&"ambient.temperature"));
        for m in metrics {
            let entry = fivezero_model::metric::lookup(m)
                .unwrap_or_else(|| panic!("{name}: {m} is not in the catalogue"));
            if entry.kind == Kind::Info {
                let text = sim
                    .plant
                    .text(i, m)
                    .unwrap_or_else(|| panic!("{name}: no text for {m}"));
                assert!(!text.is_empty());
            } else if m != "ev.state_of_charge" {
                let v = sim
                    .plant
                    .value(i, m)
                    .unwrap_or_else(|| panic!("{name}: no value for {m}"));
                assert!(v.is_finite(), "{name}: {m} = {v}");
            }
        }
        assert_eq!(sim.plant.value(i, "no.such_metric"), None);
    }
    assert_eq!(
        sim.plant.text(0, "device.serial_number").as_deref(),
        Some("SIM-grid-42")
    );
    assert_eq!(
        sim.plant.text(0, "device.model_name").as_deref(),
        Some("SIM-grid_meter")
    );
    assert_eq!(sim.plant.value(999, "ambient.temperature"), None);
    assert!(sim.plant.metrics(999).is_empty());
    assert_eq!(sim.plant.value(sim.idx("grid"), "pv.ac_power"), None);
    let t = sim.get("grid", "ambient.temperature");
    assert!((15.0..32.0).contains(&t), "June noon in Qingdao: {t} °C");
}

#[test]
fn bad_scenarios_are_refused_naming_the_device_and_key() {
    let base = park(42, 1.0);
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "physics = \"grid_meter\"",
            "physics = \"grid_metre\"",
            "grid",
            "grid_metre",
        ),
        ("kwp = 1000\n", "kwpp = 1000\n", "pv-facade", "kwp"),
        (
            "base_load_kw = 400",
            "base_load_kw = 400\nbase_laod = 1",
            "grid",
            "base_laod",
        ),
        (
            "base_load_kw = 400",
            "base_load_kw = \"lots\"",
            "grid",
            "base_load_kw",
        ),
        ("rated_tph = 460", "rated_tph = -5", "sorting", "rated_tph"),
        (
            "meters = \"sorting\"",
            "meters = \"sortng\"",
            "sorting-meter",
            "meters",
        ),
        (
            "meters = \"sorting\"",
            "meters = \"fresh\"",
            "sorting-meter",
            "meters",
        ),
        ("share = 0.25", "share = 0.30", "steam-3", "share"),
        ("fleet = \"car\"", "fleet = \"bus\"", "car-1", "fleet"),
        ("\"22:00-05:00\"", "\"22:00-25:00\"", "sorting", "shifts"),
        (
            "recovery = \"recovery\"",
            "recovery = \"boiler\"",
            "stack",
            "recovery",
        ),
        (
            "stream = \"rain_used\"",
            "stream = \"rain_used\"\ncollected = \"fresh\"",
            "rain-out",
            "collected",
        ),
    ];
    for (from, to, device, key) in cases {
        let text = base.replacen(from, to, 1);
        assert_ne!(text, base, "{from} is not in the test scenario");
        let message = error_of(&text).to_string();
        assert!(
            message.contains(&format!("`{device}`")) && message.contains(key),
            "{from} → {to}: {message}"
        );
    }
}

#[test]
fn the_greensail_scenario_runs_a_day_with_the_reference_figures() {
    // The shipped reference scenario, with every profile swapped for one that surely exists
    // (profiles only matter to the server).
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/greensail.toml");
    let text = std::fs::read_to_string(&path)
        .expect("greensail.toml")
        .lines()
        .map(|l| {
            if l.starts_with("profile = ") {
                "profile = \"eastron-sdm630\""
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let sc = scenario(&text);
    assert_eq!((sc.seed, sc.step.as_secs()), (42, 1));
    assert_eq!(sc.devices.len(), 25);
    assert_eq!(
        sc.devices
            .iter()
            .filter(|d| d.listener == "ev-gateway")
            .count(),
        5
    );
    let mut sim = Sim::new(&text);
    let d = day_deltas(
        &mut sim,
        &[
            ("sorting-line", "sorting.input_mass"),
            ("sorting-line", "sorting.stock_drawn_mass"),
            ("sorting-line", "sorting.recovered_mass"),
            ("sorting-line", "sorting.energy_recovery_mass"),
            ("sorting-line", "sorting.landfill_mass"),
            ("water-reused", "flow.volume"),
            ("water-fresh", "flow.volume"),
            ("steam-generated", "steam.mass"),
            ("steam-vent", "steam.mass"),
            ("pv-roof-a", "pv.energy"),
            ("pv-roof-b", "pv.energy"),
            ("pv-facade-south", "pv.energy"),
            ("grid-meter", "electricity.import_energy"),
            ("grid-meter", "electricity.export_energy"),
            ("sorting-line-meter", "electricity.import_energy"),
        ],
    );
    let fed = d[0] + d[1];
    assert!((d[2] + d[3]) / fed >= 0.98 && d[4] / fed <= 0.01);
    assert!(d[5] / (d[5] + d[6]) >= 0.9);
    assert!(d[8] / d[7] <= 0.02);
    let pv = d[9] + d[10] + d[11];
    assert!((3.0 * 6000.0..7.0 * 6000.0).contains(&pv), "PV {pv:.0} kWh");
    assert!(d[12] > 0.0 && d[13] > 0.0 && d[14] > 0.0);
}

#[test]
fn a_day_of_one_second_steps_runs_in_well_under_a_second() {
    let mut sim = Sim::new(&park(42, 1.0));
    let t0 = Instant::now();
    sim.at(DAY_MS);
    let took = t0.elapsed();
    assert_eq!(sim.plant.steps(), 86_400);
    println!(
        "a day of 86,400 steps × {} devices took {took:?}",
        sim.names.len()
    );
    // Only meaningful in an optimised build.
    if !cfg!(debug_assertions) {
        assert!(took.as_secs_f64() < 0.5, "{took:?}");
    }
}

#[test]
fn every_point_of_the_greensail_profiles_is_produced_by_its_model() {
    // With the real profile library: what the server will ask each model for.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/greensail.toml");
    let sc =
        Scenario::load(&path, &fivezero_profiles::library_dir()).expect("greensail.toml loads");
    let mut plant = Plant::new(&sc).expect("plant builds");
    plant.advance_to(sc.site.start_ms + 13 * HOUR_MS);
    let mut missing = Vec::new();
    for (i, d) in sc.devices.iter().enumerate() {
        let produced = plant.metrics(i);
        for p in &d.profile.points {
            if let Some(m) = &p.metric
                && !produced.contains(&m.id)
            {
                missing.push(format!(
                    "{} ({}): {} → {}",
                    d.name, d.profile.id, p.name, m.id
                ));
            }
        }
    }
    assert!(missing.is_empty(), "not produced:\n{}", missing.join("\n"));
}

#[test]
fn a_charge_point_serves_charging_states_in_its_own_profiles_codes() {
    // Give the car charger ABB Terra AC codes: idle 0, charging 0x0400, plugged 0x0200.
    let text = park(42, 1.0).replace(
        "fleet = \"car\"\nmax_power_kw = 22",
        "fleet = \"car\"\nmax_power_kw = 22\nstate_codes = [0, 1024, 512]",
    );
    let mut sim = Sim::new(&text);
    let mut seen = std::collections::BTreeSet::new();
    for k in 1..=1440 {
        sim.at(k * 60_000);
        seen.insert(sim.get("car-1", "ev.charging_state") as i64);
    }
    assert!(seen.contains(&0) && seen.contains(&1024), "{seen:?}");
    assert!(
        seen.is_subset(&[0, 1024, 512].into_iter().collect()),
        "{seen:?}"
    );
}

#[test]
fn state_codes_must_be_three_numbers() {
    let text = park(42, 1.0).replace(
        "fleet = \"car\"\nmax_power_kw = 22",
        "fleet = \"car\"\nmax_power_kw = 22\nstate_codes = [0, 1024]",
    );
    let err = Plant::new(&scenario(&text)).unwrap_err().to_string();
    assert!(
        err.contains("car-1") && err.contains("state_codes"),
        "{err}"
    );
}
