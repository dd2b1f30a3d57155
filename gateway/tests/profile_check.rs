//! `fivezero-gateway profile check` as an integrator runs it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn gateway() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fivezero-gateway"))
}

fn library() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../device-profiles/profiles")
}

/// A scratch folder unique to this test process.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "fivezero-profile-check-{}-{name}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_shipped_library_passes_with_a_summary_per_profile() {
    let out = gateway()
        .args(["profile", "check"])
        .arg(library())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sdm = stdout
        .lines()
        .find(|l| l.contains("eastron-sdm630.toml: ok: Eastron"))
        .unwrap_or_else(|| panic!("no SDM630 line in:\n{stdout}"));
    assert!(sdm.contains("requests per full cycle (minimum"), "{sdm}");
    assert!(stdout.contains(" refused"), "{stdout}");
    assert!(stdout.trim_end().ends_with(", 0 refused"), "{stdout}");
}

#[test]
fn a_misspelt_key_fails_with_file_line_and_column() {
    let dir = scratch("typo");
    let file = dir.join("bad-meter.toml");
    let sdm = std::fs::read_to_string(library().join("eastron-sdm630.toml")).unwrap();
    let broken = sdm.replacen("address = 0x0002", "adress = 0x0002", 1);
    std::fs::write(&file, &broken).unwrap();
    let line = broken
        .lines()
        .position(|l| l.starts_with("adress"))
        .unwrap()
        + 1;

    let out = gateway()
        .args(["profile", "check"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!("{}:{line}:1: error: unknown key `adress`", file.display());
    assert!(
        stderr.contains(&expected),
        "expected {expected:?} in:\n{stderr}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn an_out_of_range_address_fails_and_valid_files_beside_it_still_report() {
    let dir = scratch("range");
    let sdm = std::fs::read_to_string(library().join("eastron-sdm630.toml")).unwrap();
    std::fs::write(dir.join("good.toml"), &sdm).unwrap();
    let broken = sdm.replacen("address = 0x0002", "address = 65536", 1);
    std::fs::write(dir.join("far.toml"), &broken).unwrap();
    let line = broken.lines().position(|l| l == "address = 65536").unwrap() + 1;

    let out = gateway()
        .args(["profile", "check"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let expected = format!(
        "{}:{line}:11: error: point `voltage_l2`: address 65536 is outside 0..=65535",
        dir.join("far.toml").display()
    );
    assert!(
        stderr.contains(&expected),
        "expected {expected:?} in:\n{stderr}"
    );
    assert!(stdout.contains("good.toml: ok:"), "{stdout}");
    assert!(
        stdout.contains("1 valid (5 warnings), 1 refused"),
        "{stdout}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_missing_path_is_an_error_not_a_pass() {
    let out = gateway()
        .args(["profile", "check", "/nonexistent/fivezero/profiles"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/fivezero/profiles"));
}

#[test]
fn the_metric_catalogue_is_listed() {
    let out = gateway().args(["profile", "metrics"]).output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("electricity.import_energy")
                && l.contains("kWh")
                && l.contains("counter"))
    );
}

#[test]
fn the_library_is_listed_with_manufacturer_category_and_source() {
    let out = gateway().args(["profile", "list"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let sdm = stdout
        .lines()
        .find(|l| l.starts_with("eastron-sdm630 "))
        .unwrap_or_else(|| panic!("no SDM630 in:\n{stdout}"));
    assert!(
        sdm.contains("Eastron") && sdm.contains("meter") && sdm.contains(" 32 "),
        "{sdm}"
    );
    assert!(
        stdout.contains("source: Eastron SDM630 Modbus Protocol"),
        "{stdout}"
    );
    let shipped = std::fs::read_dir(library()).unwrap().count();
    let listed = stdout
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with("id "))
        .count();
    assert_eq!(listed, shipped, "{stdout}");
}

#[test]
fn a_likely_mistake_is_a_warning_with_file_and_line_and_the_check_still_passes() {
    let dir = scratch("lint");
    let file = dir.join("one-based.toml");
    let text = r#"[device]
manufacturer = "Acme"
model = "Lint"
category = "meter"
source = "gateway/tests/profile_check.rs"

[[point]]
name = "temperature"
metric = "flow.temperature"
table = "input"
address = 30001
type = "i16"
"#;
    std::fs::write(&file, text).unwrap();
    let out = gateway()
        .args(["profile", "check"])
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let modicon = format!(
        "{}:11:11: warning: point `temperature`: address 30001",
        file.display()
    );
    assert!(
        stderr.contains(&modicon),
        "expected {modicon:?} in:\n{stderr}"
    );
    let no_unit = format!(
        "{}:7:1: warning: point `temperature` has no `unit`",
        file.display()
    );
    assert!(
        stderr.contains(&no_unit),
        "expected {no_unit:?} in:\n{stderr}"
    );
    assert!(stdout.contains(", 2 warnings"), "{stdout}");
    assert!(
        stdout.contains("1 valid (2 warnings), 0 refused"),
        "{stdout}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
