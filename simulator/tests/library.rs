//! Every profile of the shipped library, served by the simulator with its category's physics
//! and polled the way the gateway polls: every point decodes to the physics value, in the
//! metric's canonical unit, within the register's resolution (issue 7).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fivezero_profiles::codec::{self, Decoded, RegisterImage};
use fivezero_profiles::{Category, Profile, Table, library_dir, load_path, plan};
use fivezero_sim::plant::Plant;
use fivezero_sim::scenario::{MAIN_LISTENER, Scenario};
use fivezero_sim::server::{Options, ServedValue, Simulator, ValueSource};
use tokio::time::timeout;
use tokio_modbus::client::Context;
use tokio_modbus::prelude::*;

const ANSWER: Duration = Duration::from_secs(5);

/// Metrics a profile maps that the physics deliberately leaves out, served as the point's
/// not-available sentinel (or zero): an AC charge point learns no state of charge from the
/// vehicle over IEC 61851 (CHARX reports it only with ISO 15118), so the EV model has none.
const NOT_MODELLED: &[&str] = &["ev.state_of_charge"];

fn scenario_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/library.toml")
}

fn load() -> Scenario {
    Scenario::load(&scenario_path(), &library_dir()).expect("library.toml loads")
}

/// The physics a category is served with.
fn physics_for(category: Category) -> &'static [&'static str] {
    match category {
        Category::Meter => &["grid_meter", "submeter"],
        Category::PvInverter => &["pv"],
        Category::EvCharger => &["ev_charger"],
        Category::Boiler => &["boiler"],
        Category::Compressor => &["compressor_station"],
        Category::HeatMeter => &["heat_recovery"],
        Category::FlowMeter => &["water"],
        Category::StackAnalyser => &["stack"],
        Category::SortingLine => &["sorting_line"],
        Category::SteamMeter => &["steam"],
        Category::Weather | Category::Other => &[],
    }
}

#[test]
fn every_library_profile_has_a_device_in_the_library_scenario_with_its_categorys_physics() {
    let sc = load();
    let served: BTreeSet<&str> = sc.devices.iter().map(|d| d.profile.id.as_str()).collect();
    let mut missing = Vec::new();
    for (file, loaded) in load_path(&library_dir()).expect("library") {
        let profile = loaded.unwrap_or_else(|_| panic!("{} loads", file.display()));
        if !served.contains(profile.id.as_str()) {
            missing.push(profile.id);
        }
    }
    assert!(
        missing.is_empty(),
        "profiles without a device in {}: {missing:?}",
        scenario_path().display()
    );
    for d in &sc.devices {
        assert!(
            physics_for(d.profile.category).contains(&d.physics.as_str()),
            "{} ({}, {}) runs physics {}",
            d.name,
            d.profile.id,
            d.profile.category.as_str(),
            d.physics
        );
    }
}

/// The resolution of one raw count of a point in its canonical unit, given the scale factor
/// the simulator chose (0 when the point has none).
fn resolution(profile: &Profile, index: usize, image: &RegisterImage) -> f64 {
    let p = &profile.points[index];
    let sf = p
        .scale_factor
        .and_then(|j| match codec::decode(profile, j, image) {
            Ok(Decoded::Number(x)) => Some(x),
            _ => None,
        })
        .unwrap_or(0.0);
    (p.scale * p.conversion.scale * 10f64.powf(sf)).abs()
}

/// Readings whose canonical value must fall in a plausible range: a unit slip (W read as kW,
/// 0.1 V read as V) lands far outside.
fn plausible(metric: &str, x: f64) -> bool {
    let range = match metric {
        "electricity.voltage_l1" | "electricity.voltage_l2" | "electricity.voltage_l3" => {
            180.0..=260.0
        }
        "electricity.voltage_l1_l2" | "electricity.voltage_l2_l3" | "electricity.voltage_l3_l1" => {
            330.0..=450.0
        }
        "electricity.frequency" => 49.0..=51.0,
        "electricity.power_factor" => -1.0..=1.0,
        "ambient.temperature" => -40.0..=50.0,
        m if m.ends_with("temperature") => -40.0..=400.0,
        m if m.ends_with("o2") => 0.0..=21.0,
        _ => f64::NEG_INFINITY..=f64::INFINITY,
    };
    range.contains(&x)
}

async fn read_all(ctx: &mut Context, profile: &Profile) -> RegisterImage {
    let mut image = RegisterImage::new();
    for req in plan::plan_all(profile) {
        let call = match req.table {
            Table::Input => timeout(ANSWER, ctx.read_input_registers(req.start, req.count)).await,
            Table::Holding => {
                timeout(ANSWER, ctx.read_holding_registers(req.start, req.count)).await
            }
            Table::Coil => {
                let bits = timeout(ANSWER, ctx.read_coils(req.start, req.count))
                    .await
                    .expect("answer in time")
                    .expect("no transport error")
                    .expect("no exception");
                image.put_bits(req.table, req.start, &bits);
                continue;
            }
            Table::Discrete => {
                let bits = timeout(ANSWER, ctx.read_discrete_inputs(req.start, req.count))
                    .await
                    .expect("answer in time")
                    .expect("no transport error")
                    .expect("no exception");
                image.put_bits(req.table, req.start, &bits);
                continue;
            }
        };
        let words = call
            .expect("answer in time")
            .expect("no transport error")
            .unwrap_or_else(|e| panic!("{}: exception {e:?} for {req:?}", profile.id));
        assert_eq!(words.len(), usize::from(req.count));
        image.put_registers(req.table, req.start, &words);
    }
    image
}

#[tokio::test]
async fn every_library_profile_polled_through_the_simulator_reads_its_physics_in_canonical_units() {
    let sc = load();
    let plant = Plant::new(&sc).expect("plant builds");
    let options = Options {
        listen: "127.0.0.1:0".parse().unwrap(),
        speed: 0.0,
        control: None,
    };
    let sim = Simulator::start(sc.clone(), Box::new(plant), options)
        .await
        .expect("simulator starts");
    let addr = sim.addr(MAIN_LISTENER).expect("main listener");
    let mut problems = Vec::new();
    let mut checked = 0usize;
    for d in &sc.devices {
        let profile = &d.profile;
        let mut ctx = timeout(ANSWER, tcp::connect_slave(addr, Slave(d.unit_id)))
            .await
            .expect("connect in time")
            .expect("connect");
        let image = read_all(&mut ctx, profile).await;
        let snap = sim.snapshot(&d.name).expect("snapshot");
        for i in profile.reading_points() {
            let p = &profile.points[i];
            let metric = p.metric.expect("a reading point has a metric");
            let at = format!(
                "{} ({}) point `{}` ({})",
                d.name, profile.id, p.name, metric.id
            );
            let served = snap.point(&p.name).expect("served");
            let decoded = match codec::decode(profile, i, &image) {
                Ok(x) => x,
                Err(e) => {
                    problems.push(format!("{at}: {e}"));
                    continue;
                }
            };
            checked += 1;
            if ServedValue::from_decoded(decoded.clone()) != served.value {
                problems.push(format!(
                    "{at}: decoded {decoded:?}, served {:?}",
                    served.value
                ));
            }
            if NOT_MODELLED.contains(&metric.id) && served.source == ValueSource::NotProduced {
                continue;
            }
            if !matches!(served.source, ValueSource::Physics | ValueSource::Wrapped) {
                problems.push(format!("{at}: served from {:?}", served.source));
                continue;
            }
            match decoded {
                Decoded::Number(x) => {
                    // The unit the reading carries is the catalogue's canonical unit.
                    let physics = served.physics.unwrap_or(f64::NAN);
                    let tolerance =
                        resolution(profile, i, &image) * 0.5001 + physics.abs() * 1e-6 + 1e-9;
                    if served.source == ValueSource::Physics && (x - physics).abs() > tolerance {
                        problems.push(format!(
                            "{at}: decoded {x} {} but the physics says {physics} (tolerance {tolerance})",
                            metric.unit
                        ));
                    }
                    if !plausible(metric.id, x) {
                        problems.push(format!("{at}: {x} {} is implausible", metric.unit));
                    }
                }
                Decoded::Text(t) => {
                    if t.is_empty() {
                        problems.push(format!("{at}: empty text"));
                    }
                }
                Decoded::NotAvailable(why) => {
                    problems.push(format!("{at}: not available ({why:?})"));
                }
            }
        }
        // The gateway's plan is what the device served: one request per planned read.
        assert_eq!(
            sim.served_requests(&d.name),
            Some(plan::plan_all(profile).len() as u64),
            "{}",
            d.name
        );
    }
    sim.shutdown().await;
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
    assert!(checked > 200, "only {checked} points checked");
}
