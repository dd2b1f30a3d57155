//! `fivezero-gateway check-config FILE`: validates the config and every profile it names,
//! without opening a socket or a serial port, and prints what would be polled.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use fivezero_gateway::config::{Config, DeviceConfig, KpiConfig};
use fivezero_gateway::poll::links;
use fivezero_gateway::site::Group;
use fivezero_profiles::plan;

/// Cycles looked at to find the fewest and most requests a cycle needs (per-point intervals
/// make some cycles read more than others).
const CYCLES_SAMPLED: u64 = 1_000;

/// Validates `file`; exit status 1 with every problem on stderr if it is refused.
pub(crate) fn check(file: &Path) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr().lock();
    let config = match Config::load(file) {
        Ok(c) => c,
        Err(e) => {
            for line in e.lines() {
                let _ = writeln!(stderr, "{line}");
            }
            return ExitCode::FAILURE;
        }
    };
    let links = links(&config);
    let _ = writeln!(
        stdout,
        "{}: ok: gateway {:?} at site {:?}, {} devices on {} links, broker {}",
        file.display(),
        config.gateway.id,
        config.gateway.site,
        config.devices.len(),
        links.len(),
        config.mqtt.url
    );
    for link in &links {
        let ifd = if link.inter_frame_delay.is_zero() {
            String::new()
        } else {
            format!(
                " (inter-frame delay {})",
                humantime::format_duration(link.inter_frame_delay)
            )
        };
        let _ = writeln!(stdout, "link {}{ifd}", link.addr);
        for d in link.devices.iter().filter_map(|&i| config.devices.get(i)) {
            let _ = writeln!(stdout, "  {}", describe(d));
        }
    }
    for line in kpi_report(&config.kpi) {
        let _ = writeln!(stdout, "{line}");
    }
    ExitCode::SUCCESS
}

/// Which KPI groups are computed from which device metrics, and the factors in use.
fn kpi_report(kpi: &KpiConfig) -> Vec<String> {
    let mut out = Vec::new();
    let Some(tz) = &kpi.time_zone else {
        out.push("kpi: no device has a role; no KPI is computed".to_owned());
        return out;
    };
    out.push(format!(
        "kpi: windows of 15m, 1h and 1d in {tz}; {} of {} groups computed",
        kpi.groups.len(),
        Group::ALL.len()
    ));
    for group in Group::ALL {
        if kpi.groups.contains(&group) {
            out.push(format!("  {group}: computed"));
            for (role, sources) in kpi.inputs.iter().filter(|(r, _)| r.group() == group) {
                let from: Vec<String> = sources
                    .iter()
                    .map(|s| format!("{} {}", s.device, s.metric))
                    .collect();
                out.push(format!("    {role} <- {}", from.join(" + ")));
            }
        } else {
            let needs: Vec<&str> = group.required().iter().map(|r| r.name()).collect();
            out.push(format!(
                "  {group}: not computed (needs {})",
                needs.join(", ")
            ));
        }
    }
    for (name, f) in &kpi.factors {
        out.push(format!(
            "  factor {name} = {} {} ({}, {}, {} data)",
            f.value, f.unit, f.publisher, f.document, f.year
        ));
    }
    out
}

/// One line per device: unit, profile, timing and requests per cycle.
fn describe(d: &DeviceConfig) -> String {
    let (min, max) = requests_per_cycle(d);
    let requests = if min == max {
        format!("{min} request{} per cycle", if min == 1 { "" } else { "s" })
    } else {
        format!("{min} to {max} requests per cycle")
    };
    format!(
        "{} unit {}: profile {} ({}), every {}, timeout {}: {requests}",
        d.name,
        d.unit,
        d.profile.id,
        d.profile_path.display(),
        humantime::format_duration(d.interval),
        humantime::format_duration(d.timeout),
    )
}

/// Fewest and most requests over the first cycles of the schedule.
fn requests_per_cycle(d: &DeviceConfig) -> (usize, usize) {
    let mut seen = std::collections::HashMap::new();
    let (mut min, mut max) = (usize::MAX, 0);
    for cycle in 0..CYCLES_SAMPLED {
        let due = plan::due_points(&d.profile, d.interval, cycle);
        let n = *seen
            .entry(due)
            .or_insert_with_key(|due| plan::plan(&d.profile, due).len());
        min = min.min(n);
        max = max.max(n);
    }
    (min.min(max), max)
}
