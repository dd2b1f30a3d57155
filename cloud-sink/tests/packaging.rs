//! The sink's systemd unit and Debian package: `systemd-analyze verify` accepts the unit with
//! its binary pointed at the one just built, and the package built by `.ci/run` (cargo-deb,
//! `target/debian/`) holds the binary, the unit, `/etc/fivezero/sink.toml` as a conffile and a
//! postinst creating the service user. The packaged config validates. Without
//! `systemd-analyze` or a built package the tests print "skipped: …" and pass.

use std::path::{Path, PathBuf};
use std::process::Command;

const ANALYZE: &str = "/usr/bin/systemd-analyze";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn systemd_accepts_the_sink_unit() {
    if !Path::new(ANALYZE).is_file() {
        println!("skipped: {ANALYZE} is not installed");
        return;
    }
    let text = std::fs::read_to_string(repo().join("systemd/fivezero-sink.service")).unwrap();
    for needed in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "StateDirectory=fivezero",
        "ConfigurationDirectory=fivezero",
    ] {
        assert!(text.contains(needed), "the unit lacks {needed}");
    }
    let dir = std::env::temp_dir().join(format!("fivezero-sink-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("fivezero-sink.service");
    std::fs::write(
        &file,
        text.replace(
            "/usr/bin/fivezero-sink",
            env!("CARGO_BIN_EXE_fivezero-sink"),
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

#[test]
fn the_packaged_config_validates() {
    let file = repo().join("packaging/sink/sink.toml");
    let config = fivezero_sink::config::Config::load(&file).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.storage_url, "sqlite:///var/lib/fivezero/sink.db");
}

#[test]
fn the_package_holds_the_binary_unit_and_config() {
    let debian = Path::new(env!("CARGO_BIN_EXE_fivezero-sink"))
        .parent()
        .and_then(Path::parent)
        .expect("the target folder")
        .join("debian");
    let deb = std::fs::read_dir(&debian).ok().and_then(|entries| {
        entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("fivezero-sink_") && n.ends_with(".deb"))
            })
            .max()
    });
    let Some(deb) = deb else {
        println!(
            "skipped: no fivezero-sink .deb in {} (`cargo deb -p fivezero-sink`; .ci/run builds it)",
            debian.display()
        );
        return;
    };
    let out = Command::new("dpkg-deb")
        .arg("--contents")
        .arg(&deb)
        .output()
        .expect("dpkg-deb --contents");
    let listing = String::from_utf8_lossy(&out.stdout);
    for path in [
        "./usr/bin/fivezero-sink",
        "./etc/fivezero/sink.toml",
        "./usr/lib/systemd/system/fivezero-sink.service",
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(path)),
            "{path} is not in the package:\n{listing}"
        );
    }
    let control = std::env::temp_dir().join(format!("fivezero-sink-deb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&control);
    let ok = Command::new("dpkg-deb")
        .arg("--control")
        .arg(&deb)
        .arg(&control)
        .status()
        .expect("dpkg-deb --control")
        .success();
    assert!(ok);
    let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap_or_default();
    assert!(conffiles.lines().any(|l| l == "/etc/fivezero/sink.toml"));
    let postinst = std::fs::read_to_string(control.join("postinst")).expect("a postinst");
    assert!(postinst.contains("adduser --system"));
    let _ = std::fs::remove_dir_all(&control);
}
