//! The gateway configuration of the demo: every device of the Green Sail scenario, at the
//! addresses the simulator bound, with the roles that make every five-zero KPI group computed.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

use fivezero_sim::server::SimulatorHandle;

/// The roles of the park's devices (device name, `role` value as TOML). Devices not listed are
/// polled and published but feed no KPI.
const ROLES: &[(&str, &str)] = &[
    ("grid-meter", r#""grid""#),
    ("pv-roof-a", r#""pv""#),
    ("pv-roof-b", r#""pv""#),
    ("pv-facade-south", r#""pv""#),
    ("boiler", r#""boiler_running""#),
    ("heat-recovery", r#""heat_recovered""#),
    ("stack", r#"["flue_gas_exit_temperature", "flue_gas_flow"]"#),
    ("steam-generated", r#""steam_generated""#),
    ("steam-stage-1-maglev", r#""steam_used""#),
    ("steam-stage-2-curing-desalination", r#""steam_used""#),
    ("steam-stage-3-autoclaves", r#""steam_used""#),
    ("steam-vent", r#""steam_vented""#),
    (
        "compressed-air",
        r#"["compressor_energy", "air_delivered"]"#,
    ),
    (
        "sorting-line",
        r#"["waste_received", "stock_drawn", "material_recovered", "energy_recovery", "landfilled"]"#,
    ),
    ("water-fresh", r#""fresh_water""#),
    ("water-reused", r#""reused_water""#),
    ("rain-collected", r#""rain_collected""#),
    ("rain-used", r#""rain_used""#),
    ("water-discharged", r#""discharged_water""#),
    ("ev-loader-1", r#""ev_charging""#),
    ("ev-loader-2", r#""ev_charging""#),
    ("ev-mixer-1", r#""ev_charging""#),
    ("ev-mixer-2", r#""ev_charging""#),
    ("ev-car-1", r#""ev_charging""#),
];

/// Where the demo's gateway sends and keeps things.
#[derive(Debug)]
pub(crate) struct Places<'a> {
    /// The embedded broker of the sink.
    pub(crate) broker: SocketAddr,
    /// The gateway's buffer folder.
    pub(crate) state_dir: &'a Path,
    /// The gateway's Prometheus endpoint.
    pub(crate) metrics: SocketAddr,
}

/// The gateway config text for the simulator `sim`.
pub(crate) fn gateway_config(sim: &SimulatorHandle, places: &Places<'_>) -> String {
    let scenario = sim.scenario();
    let mut text = format!(
        r#"# Written by `cargo run` at the repository root: the Green Sail park's devices, polled
# from the simulator, published to the sink's embedded broker.

[gateway]
id = "greensail-gw1"
site = "{site}"
state_dir = "{state}"
shutdown_timeout = "10s"

[mqtt]
url = "mqtt://{broker}"

[buffer]
max_bytes = "256 MiB"

[metrics]
listen = "{metrics}"

[kpi]
time_zone = "{tz}"

[kpi.factors.flue_gas_cp]
value = 1.38
unit = "kJ/(Nm³·K)"
year = 2026
publisher = "fivezero demo"
document = "wet flue gas, as the simulator's heat balance assumes"
"#,
        site = scenario.site.name,
        state = places.state_dir.display(),
        broker = places.broker,
        metrics = places.metrics,
        tz = scenario.site.timezone,
    );
    for d in &scenario.devices {
        let Some(addr) = sim.addr(&d.listener) else {
            continue;
        };
        let _ = write!(
            text,
            "\n[[device]]\nname = \"{}\"\nprofile = \"{}\"\ntcp = \"{addr}\"\nunit = {}\ninterval = \"5s\"\n",
            d.name, d.profile.id, d.unit_id
        );
        if let Some((_, role)) = ROLES.iter().find(|(n, _)| *n == d.name) {
            let _ = writeln!(text, "role = {role}");
        }
    }
    text
}
