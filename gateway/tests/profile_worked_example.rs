//! The worked example of device-profiles/README.md ("a new boiler from its manual in ten
//! minutes") run as written: every `fivezero-gateway` command of its shell blocks, against the
//! simulator started from the scenario its `fivezero-sim` command names (issue 7).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fivezero_sim::plant::Plant;
use fivezero_sim::scenario::{MAIN_LISTENER, Scenario};
use fivezero_sim::server::{Options, Simulator};

/// The address the README's commands use; replaced by the simulator's free port.
const README_ADDR: &str = "127.0.0.1:5020";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The shell commands of the worked-example section, one per line, in order.
fn commands() -> Vec<String> {
    let readme = std::fs::read_to_string(repo().join("device-profiles/README.md")).unwrap();
    let start = readme
        .find("## Worked example")
        .expect("a worked example section");
    let end = start
        + 3
        + readme[start + 3..]
            .find("\n## ")
            .unwrap_or(readme.len() - start - 3);
    let section = &readme[start..end];
    let mut out = Vec::new();
    let mut inside = false;
    for line in section.lines() {
        let line = line.trim();
        if line.starts_with("```sh") {
            inside = true;
        } else if line.starts_with("```") {
            inside = false;
        } else if inside && !line.is_empty() {
            out.push(line.to_owned());
        }
    }
    out
}

async fn gateway(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_fivezero-gateway"))
            .args(&args)
            .current_dir(repo())
            .output()
            .expect("the gateway binary runs")
    })
    .await
    .expect("the blocking task ends")
}

fn arg_after<'a>(words: &'a [&'a str], flag: &str) -> &'a str {
    let i = words
        .iter()
        .position(|w| *w == flag)
        .unwrap_or_else(|| panic!("{flag} in {words:?}"));
    words[i + 1]
}

#[tokio::test]
async fn the_readme_worked_example_checks_clean_and_reads_every_point_good_from_the_simulator() {
    let commands = commands();
    assert_eq!(commands.len(), 3, "{commands:?}");

    // The simulator, as the README starts it (in-process, on a free port).
    let sim_line: Vec<&str> = commands[1].split_whitespace().collect();
    assert_eq!(sim_line[0], "fivezero-sim", "{commands:?}");
    assert_eq!(arg_after(&sim_line, "--listen"), README_ADDR);
    assert_eq!(arg_after(&sim_line, "--speed"), "0");
    let scenario = Scenario::load(
        &repo().join(arg_after(&sim_line, "--scenario")),
        &fivezero_profiles::library_dir(),
    )
    .expect("the example scenario loads");
    let plant = Plant::new(&scenario).expect("the physics start");
    let options = Options {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        speed: 0.0,
        control: None,
    };
    let sim = Simulator::start(scenario, Box::new(plant), options)
        .await
        .expect("the simulator starts");
    let addr = sim.addr(MAIN_LISTENER).expect("main listener").to_string();

    // `profile check`: valid, at the minimum, no warnings.
    let check: Vec<String> = commands[0].split_whitespace().map(str::to_owned).collect();
    assert_eq!(check[0], "fivezero-gateway");
    let out = gateway(check[1..].to_vec()).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("ok: Acme BX-200")
            && stdout.contains("2 requests per full cycle (minimum 2)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("1 valid (0 warnings), 0 refused"),
        "{stdout}"
    );
    assert!(!stderr.contains("warning"), "{stderr}");

    // `read` against the simulator: every point good, with its unit.
    let read: Vec<String> = commands[2]
        .replace(README_ADDR, &addr)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(read[0], "fivezero-gateway");
    let out = gateway(read[1..].to_vec()).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("7 good, 0 not available, 0 errors"),
        "{stdout}"
    );
    for (point, unit) in [
        ("boiler_temperature", "°C"),
        ("flue_gas_temperature", "°C"),
        ("residual_o2", "%"),
        ("heat_output", "kW"),
        ("heat_total", "kWh"),
        ("pellets_total", "t"),
    ] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(point))
            .unwrap_or_else(|| panic!("no row for {point} in:\n{stdout}"));
        assert!(
            row.split_whitespace().any(|w| w == unit) && row.contains("good"),
            "{row}"
        );
    }
    assert!(
        stdout.contains("(firing)") || stdout.contains("(low fire)"),
        "{stdout}"
    );

    // The metrics step 1 names exist.
    let out = gateway(vec!["profile".into(), "metrics".into()]).await;
    let metrics = String::from_utf8_lossy(&out.stdout);
    for id in [
        "boiler.water_temperature",
        "boiler.flue_gas_temperature",
        "boiler.residual_o2",
        "boiler.heat_output_power",
        "boiler.heat_output_energy",
        "boiler.fuel_feed_mass",
        "boiler.state",
    ] {
        assert!(metrics.contains(id), "{id}");
    }
    sim.shutdown().await;
}
