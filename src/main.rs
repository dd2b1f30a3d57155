//! `cargo run --release` at the root: the whole fivezero pipeline on one machine.
//!
//! Until the simulator, gateway daemon and sink land, this checks the shipped device-profile
//! library and prints what it holds, so the command is already useful to an integrator.

use std::process::ExitCode;

fn main() -> ExitCode {
    let dir = fivezero_profiles::library_dir();
    let loaded = match fivezero_profiles::load_path(&dir) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let mut failed = false;
    for (path, result) in loaded {
        match result {
            Ok(p) => println!(
                "{:<24} {:<14} {} {} ({} points)",
                p.id,
                p.category.as_str(),
                p.manufacturer,
                p.model,
                p.points.len()
            ),
            Err(diagnostics) => {
                failed = true;
                eprintln!("{}: refused", path.display());
                for d in diagnostics {
                    eprintln!("{d}");
                }
            }
        }
    }
    println!(
        "\nThe one-command demo (simulated plant, gateway, broker, sink, dashboard) is being built; see README.md."
    );
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
