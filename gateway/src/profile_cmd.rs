//! `fivezero-gateway profile ...`: the integrator's profile tools.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use fivezero_model::metric::CATALOGUE;
use fivezero_profiles::{Profile, check_path, load_path, plan};

/// Validates every profile under `paths`; exit 0 only if all are valid. Warnings of the lint
/// pass (likely mistakes that are not errors) go to stderr as `file:line:column: warning: ...`
/// and never change the exit status.
pub(crate) fn check(paths: &[PathBuf]) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr().lock();
    let (mut valid, mut refused, mut warned) = (0usize, 0usize, 0usize);
    for path in paths {
        let loaded = match check_path(path) {
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
                Ok(checked) => {
                    valid += 1;
                    warned += checked.warnings.len();
                    for w in &checked.warnings {
                        let _ = writeln!(stderr, "{w}");
                    }
                    let warnings = match checked.warnings.len() {
                        0 => String::new(),
                        1 => ", 1 warning".to_owned(),
                        n => format!(", {n} warnings"),
                    };
                    let _ = writeln!(
                        stdout,
                        "{}: ok: {}{warnings}",
                        file.display(),
                        summary(&checked.profile)
                    );
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
    let _ = writeln!(
        stdout,
        "{valid} valid ({warned} warnings), {refused} refused"
    );
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

/// Lists the profile library (or another folder): id, manufacturer, model, category, points
/// and source. Profiles that do not load are reported on stderr and make the exit status 1.
pub(crate) fn list(dir: Option<&std::path::Path>) -> ExitCode {
    let dir = dir.map_or_else(fivezero_profiles::library_dir, std::path::Path::to_path_buf);
    let loaded = match load_path(&dir) {
        Ok(loaded) => loaded,
        Err(d) => {
            eprintln!("{d}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout().lock();
    let mut refused = 0usize;
    let _ = writeln!(
        stdout,
        "{:<34} {:<24} {:<15} {:>6}  model / source",
        "id", "manufacturer", "category", "points"
    );
    for (file, result) in loaded {
        match result {
            Ok(p) => {
                let points = p.reading_points().count();
                let _ = writeln!(
                    stdout,
                    "{:<34} {:<24} {:<15} {:>6}  {}",
                    p.id,
                    p.manufacturer,
                    p.category.as_str(),
                    points,
                    p.model
                );
                let _ = writeln!(
                    stdout,
                    "{:<34} {:<24} {:<15} {:>6}  source: {}",
                    "", "", "", "", p.source
                );
            }
            Err(_) => {
                refused += 1;
                eprintln!(
                    "{}: refused; run `fivezero-gateway profile check {}` for the errors",
                    file.display(),
                    file.display()
                );
            }
        }
    }
    if refused == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
