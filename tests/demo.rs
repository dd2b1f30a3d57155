//! The one-command demo: `fivezero` starts the simulator, the sink with its embedded broker
//! and the gateway, readings reach the sink's store, and SIGINT (Ctrl-C) stops everything
//! cleanly with exit status 0.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[test]
fn the_demo_runs_the_pipeline_and_stops_cleanly_on_ctrl_c() {
    let dir = std::env::temp_dir().join(format!("fivezero-demo-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut child = Command::new(env!("CARGO_BIN_EXE_fivezero"))
        .args(["--progress", "1", "--dir"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start fivezero");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    // Readings reach the sink: a progress line with a stored count above zero.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut lines = Vec::new();
    let stored = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            let _ = child.kill();
            panic!("no stored readings within 60 s:\n{}", lines.join("\n"));
        };
        let count = line
            .split(" items/s stored, ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok());
        lines.push(line);
        if let Some(n) = count.filter(|&n| n > 0) {
            break n;
        }
    };
    assert!(
        lines
            .iter()
            .any(|l| l.contains("KPIs: zero_waste, zero_wastewater")),
        "every KPI group is computed:\n{}",
        lines.join("\n")
    );

    // Ctrl-C stops it cleanly.
    let ok = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill -INT")
        .success();
    assert!(ok);
    let status = child.wait().expect("wait");
    let _ = reader.join();
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        rest.join("\n")
    );
    let last = rest.last().cloned().unwrap_or_default();
    assert!(last.starts_with("fivezero: stopped;"), "last line {last:?}");
    assert!(dir.join("sink.db").is_file() && dir.join("gateway.toml").is_file());
    println!("{stored} items stored before the stop; {last}");
    let _ = std::fs::remove_dir_all(&dir);
}
