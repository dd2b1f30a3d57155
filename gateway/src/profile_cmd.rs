//! `fivezero-gateway profile ...`: the integrator's profile tools.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use fivezero_model::metric::CATALOGUE;
use fivezero_profiles::{Profile, load_path, plan};

/// Validates every profile under `paths`; exit 0 only if all are valid.
pub(crate) fn check(paths: &[PathBuf]) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr().lock();
    let (mut valid, mut refused) = (0usize, 0usize);
    for path in paths {
        let loaded = match load_path(path) {
            Ok(loaded) => loaded,
            Err(d) => {
                refused += 1;
                let _ = writeln!(stderr, "{d}");
                continue;
            }
        };
        if loaded.is_empty() {
            refused += 1;
            let _ = writeln!(stderr, "{}: no *.toml profiles found", path.display());
        }
        for (file, result) in loaded {
            match result {
                Ok(profile) => {
                    valid += 1;
                    let _ = writeln!(stdout, "{}: ok: {}", file.display(), summary(&profile));
                }
                Err(diagnostics) => {
                    refused += 1;
                    for d in diagnostics {
                        let _ = writeln!(stderr, "{d}");
                    }
                }
            }
        }
    }
    let _ = writeln!(stdout, "{valid} valid, {refused} refused");
    if refused == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// One line: who, what, how many points and requests per full cycle against the minimum.
fn summary(profile: &Profile) -> String {
    let requests = plan::plan_all(profile).len();
    let all: Vec<usize> = (0..profile.points.len()).collect();
    let minimum = plan::minimum_requests(profile, &all);
    format!(
        "{} {} ({}), {} points, {} requests per full cycle (minimum {})",
        profile.manufacturer,
        profile.model,
        profile.category.as_str(),
        profile.points.len(),
        requests,
        minimum
    )
}

/// Prints the metric catalogue.
pub(crate) fn metrics() -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    for m in CATALOGUE {
        let unit = if m.unit.is_empty() { "-" } else { m.unit };
        let _ = writeln!(
            stdout,
            "{:<40} {:<8} {:<8} {}",
            m.id,
            unit,
            m.kind.as_str(),
            m.description
        );
    }
    ExitCode::SUCCESS
}
