//! SIGHUP reloads the gateway's configuration: a refused file is logged with its problems and
//! the running configuration kept; a valid one restarts the daemon in the same process with
//! it (a new device appears), with nothing lost across the restart. The `fivezero-gateway`
//! binary as a child process, the Green Sail simulator in-process, a private Mosquitto.
//!
//! Without `/usr/sbin/mosquitto` the test prints "skipped: … is not installed" and passes.

#[path = "fixtures/sim.rs"]
mod sim;

#[path = "common/publish_kit.rs"]
mod kit;

#[path = "common/daemon_kit.rs"]
mod daemon_kit;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use daemon_kit::{Received, collect_until, config_text, now_ms};
use fivezero_model::topic::Topics;
use kit::{Mosquitto, Probe, eventually};
use tokio::time::Instant;

const LIMIT: Duration = Duration::from_secs(30);

fn signal(child: &Child, name: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill -{name} failed");
}

fn log_has(log: &Path, text: &str) -> bool {
    std::fs::read_to_string(log).is_ok_and(|l| l.contains(text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_keeps_the_running_config_when_the_new_one_is_bad_and_applies_a_good_one() {
    if !Mosquitto::available() {
        return;
    }
    let broker = Mosquitto::start("daemon-reload", "").await;
    let sim = sim::greensail(0.0).await;
    let id = format!("gw-reload-{:08x}", rand::random::<u32>());
    let prefix = format!("fivezero-test-{:016x}/v1", rand::random::<u64>());
    let dir = std::env::temp_dir().join(format!(
        "fivezero-daemon-reload-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let state_dir = dir.join("state");
    std::fs::create_dir_all(&state_dir).unwrap();
    let file = dir.join("gateway.toml");
    let log = dir.join("gateway.log");
    let url = broker.url().to_string();
    let text = |devices: &[&str]| config_text(&sim, devices, &state_dir, &url, &prefix, &id, "");
    std::fs::write(&file, text(&["grid-meter"])).unwrap();
    let topics = Topics::new(&prefix, daemon_kit::SITE, &id).unwrap();
    let batches = topics.batches().to_owned();
    let mut probe = Probe::start(&broker.url(), std::slice::from_ref(&batches)).await;
    let mut got = Received::default();

    // Given the gateway running with one device
    let mut child = Command::new(env!("CARGO_BIN_EXE_fivezero-gateway"))
        .arg("run")
        .arg("--config")
        .arg(&file)
        .env("FIVEZERO_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start fivezero-gateway");
    collect_until(
        &mut probe,
        &batches,
        &id,
        &mut got,
        LIMIT,
        "readings of grid-meter",
        |g| g.cycles("grid-meter") >= 3,
    )
    .await;

    // When a bad configuration is written and SIGHUP sent
    std::fs::write(
        &file,
        text(&["grid-meter"]).replace("interval = \"200ms\"", "interval = \"2ms\""),
    )
    .unwrap();
    signal(&child, "HUP");
    eventually("the refusal in the log", LIMIT, || {
        log_has(&log, "SIGHUP: the new configuration is refused")
    })
    .await;
    // Then the problem is named, and the running configuration goes on polling
    assert!(log_has(&log, "interval"), "the problem is named in the log");
    let refused_ms = now_ms();
    collect_until(
        &mut probe,
        &batches,
        &id,
        &mut got,
        LIMIT,
        "readings of grid-meter after the refusal",
        |g| g.has_after("grid-meter", refused_ms),
    )
    .await;
    assert!(child.try_wait().unwrap().is_none(), "still running");

    // When a good configuration with a second device is written and SIGHUP sent
    std::fs::write(&file, text(&["grid-meter", "pv-roof-a"])).unwrap();
    signal(&child, "HUP");
    // Then the new device is polled, by the same process
    collect_until(
        &mut probe,
        &batches,
        &id,
        &mut got,
        LIMIT,
        "readings of pv-roof-a after the reload",
        |g| g.cycles("pv-roof-a") >= 3,
    )
    .await;
    assert!(log_has(&log, "SIGHUP: the new configuration is valid"));
    assert!(child.try_wait().unwrap().is_none(), "still running");

    // and SIGTERM stops it with exit 0, every sequence delivered across the reload.
    signal(&child, "TERM");
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit within {LIMIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status {status}");
    collect_until(
        &mut probe,
        &batches,
        &id,
        &mut got,
        LIMIT,
        "no hole in the sequences",
        |g| g.contiguous() == g.max_seq(),
    )
    .await;
    assert_eq!(got.epochs.len(), 1, "one stream across the reload");
    sim.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
