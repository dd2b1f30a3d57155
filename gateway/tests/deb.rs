//! The Debian package of the gateway (built by `.ci/run` with cargo-deb into
//! `target/debian/`): its files, its conffile, its maintainer script, and the packaged config,
//! which must validate where the package puts the profile library. Without a built package
//! the content test prints "skipped: …" and passes.

use std::path::{Path, PathBuf};
use std::process::Command;

use fivezero_gateway::config::Config;

/// `target/debian`, next to the folder of the test binary's `fivezero-gateway`.
fn debian_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_fivezero-gateway"))
        .parent()
        .and_then(Path::parent)
        .expect("the target folder")
        .join("debian")
}

fn package() -> Option<PathBuf> {
    let dir = debian_dir();
    let found = std::fs::read_dir(&dir).ok().and_then(|entries| {
        entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("fivezero-gateway_") && n.ends_with(".deb"))
            })
            .max()
    });
    if found.is_none() {
        println!(
            "skipped: no fivezero-gateway .deb in {} (`cargo deb -p fivezero-gateway`; .ci/run builds it)",
            dir.display()
        );
    }
    found
}

fn dpkg_deb(args: &[&str], deb: &Path) -> String {
    let out = Command::new("dpkg-deb")
        .args(args)
        .arg(deb)
        .output()
        .expect("run dpkg-deb");
    assert!(
        out.status.success(),
        "dpkg-deb {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn library() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../device-profiles/profiles")
}

#[test]
fn the_package_holds_the_binary_unit_config_and_profile_library() {
    let Some(deb) = package() else {
        return;
    };
    let listing = dpkg_deb(&["--contents"], &deb);
    let files: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    let has = |path: &str| files.iter().any(|f| f.trim_start_matches('.') == path);
    for path in [
        "/usr/bin/fivezero-gateway",
        "/etc/fivezero/gateway.toml",
        "/usr/share/doc/fivezero-gateway/README.md",
    ] {
        assert!(has(path), "{path} is not in the package:\n{listing}");
    }
    assert!(
        has("/lib/systemd/system/fivezero-gateway.service")
            || has("/usr/lib/systemd/system/fivezero-gateway.service"),
        "the unit is not in the package:\n{listing}"
    );
    let profiles: Vec<String> = std::fs::read_dir(library())
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    for p in &profiles {
        assert!(
            has(&format!("/usr/share/fivezero/profiles/{p}")),
            "profile {p} is not in the package"
        );
    }

    let control = std::env::temp_dir().join(format!("fivezero-deb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&control);
    let out = Command::new("dpkg-deb")
        .arg("--control")
        .arg(&deb)
        .arg(&control)
        .status()
        .expect("dpkg-deb --control");
    assert!(out.success());
    let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap_or_default();
    assert!(
        conffiles.lines().any(|l| l == "/etc/fivezero/gateway.toml"),
        "the config is not a conffile: {conffiles:?}"
    );
    let postinst = std::fs::read_to_string(control.join("postinst")).expect("a postinst");
    assert!(
        postinst.contains("adduser --system") && postinst.contains("dialout"),
        "the postinst does not create the user:\n{postinst}"
    );
    let fields = std::fs::read_to_string(control.join("control")).unwrap();
    assert!(fields.contains("Package: fivezero-gateway"));
    assert!(fields.contains("adduser"), "depends on adduser:\n{fields}");
    let _ = std::fs::remove_dir_all(&control);
    println!(
        "{}: {} files, {} profiles",
        deb.display(),
        files.len(),
        profiles.len()
    );
}

#[test]
fn the_packaged_config_validates_with_the_library_where_the_package_puts_it() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/gateway/gateway.toml");
    let vars = vec![(
        "FIVEZERO_GATEWAY__PROFILE_DIR".to_owned(),
        library().display().to_string(),
    )];
    let config = Config::load_with_env(&file, vars).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.gateway.state_dir, Path::new("/var/lib/fivezero"));
    assert_eq!(
        config.metrics.listen,
        Some("127.0.0.1:9464".parse().unwrap())
    );
}
