//! The systemd units in `systemd/`: `systemd-analyze verify` accepts the gateway's (with its
//! binary pointed at the one just built), and `systemd-analyze security --offline=true` rates
//! both units "OK" or better (exposure at most 4.0). Without `systemd-analyze` the tests print
//! "skipped: …" and pass.

use std::path::{Path, PathBuf};
use std::process::Command;

const ANALYZE: &str = "/usr/bin/systemd-analyze";

fn unit(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../systemd")
        .join(name)
}

fn available() -> bool {
    if Path::new(ANALYZE).is_file() {
        true
    } else {
        println!("skipped: {ANALYZE} is not installed");
        false
    }
}

/// The exposure `systemd-analyze security --offline=true` gives `file`.
fn exposure(file: &Path) -> f64 {
    let out = Command::new(ANALYZE)
        .args(["security", "--offline=true", "--no-pager"])
        .arg(file)
        .output()
        .expect("run systemd-analyze security");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no overall exposure in:\n{text}"));
    let value = line
        .split(':')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no number in {line:?}"));
    assert!(
        line.contains(" OK") || line.contains("SAFE"),
        "rated worse than OK: {line}"
    );
    value
}

#[test]
fn both_units_rate_ok_or_better_in_the_offline_security_analysis() {
    if !available() {
        return;
    }
    for name in ["fivezero-gateway.service", "fivezero-sink.service"] {
        let e = exposure(&unit(name));
        assert!(e <= 4.0, "{name}: exposure {e}");
        println!("{name}: exposure {e}");
    }
}

#[test]
fn systemd_accepts_the_gateway_unit() {
    if !available() {
        return;
    }
    let text = std::fs::read_to_string(unit("fivezero-gateway.service")).unwrap();
    for needed in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "StateDirectory=fivezero",
        "ConfigurationDirectory=fivezero",
        "SupplementaryGroups=dialout",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(text.contains(needed), "the unit lacks {needed}");
    }
    let dir = std::env::temp_dir().join(format!("fivezero-systemd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("fivezero-gateway.service");
    std::fs::write(
        &file,
        text.replace(
            "/usr/bin/fivezero-gateway",
            env!("CARGO_BIN_EXE_fivezero-gateway"),
        ),
    )
    .unwrap();
    let out = Command::new(ANALYZE)
        .args(["verify", "--no-pager"])
        .arg(&file)
        .output()
        .expect("run systemd-analyze verify");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
