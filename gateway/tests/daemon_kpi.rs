//! The daemon runs its KPI task when devices have roles: polled cycles of those devices feed
//! the engine, and the engine's state is in the buffer after a clean stop, fitting the config,
//! so the next start continues the open windows. The Green Sail simulator in-process (clock
//! frozen), `daemon::run` with a private Mosquitto.
//!
//! Without `/usr/sbin/mosquitto` the test prints "skipped: … is not installed" and passes.

#[path = "fixtures/sim.rs"]
mod sim;

#[path = "common/publish_kit.rs"]
mod kit;

#[path = "common/daemon_kit.rs"]
mod daemon_kit;

use std::time::Duration;

use daemon_kit::{Received, collect_until, config_text};
use fivezero_gateway::buffer::{Buffer, BufferOptions};
use fivezero_gateway::config::Config;
use fivezero_gateway::daemon;
use fivezero_gateway::kpi::task::Site;
use fivezero_model::topic::Topics;
use kit::{Mosquitto, Probe};
use tokio::sync::oneshot;

const DEVICES: [&str; 2] = ["grid-meter", "pv-roof-a"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kpi_engine_runs_with_the_daemon_and_its_state_survives_a_clean_stop() {
    if !Mosquitto::available() {
        return;
    }
    let broker = Mosquitto::start("daemon-kpi", "").await;
    let sim = sim::greensail(0.0).await;
    let id = format!("gw-kpi-{:08x}", rand::random::<u32>());
    let prefix = format!("fivezero-test-{:016x}/v1", rand::random::<u64>());
    let dir = std::env::temp_dir().join(format!(
        "fivezero-daemon-kpi-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let state_dir = dir.join("state");
    std::fs::create_dir_all(&state_dir).unwrap();
    let mut text = config_text(
        &sim,
        &DEVICES,
        &state_dir,
        &broker.url().to_string(),
        &prefix,
        &id,
        "\n[kpi]\ntime_zone = \"Asia/Shanghai\"\n",
    );
    // Roles on the two devices (their entries are the last two of the text, in order).
    for name in DEVICES {
        let role = if name == "grid-meter" { "grid" } else { "pv" };
        text = text.replace(
            &format!("name = \"{name}\"\n"),
            &format!("name = \"{name}\"\nrole = \"{role}\"\n"),
        );
    }
    let file = dir.join("gateway.toml");
    std::fs::write(&file, &text).unwrap();
    let config = Config::load(&file).unwrap_or_else(|e| panic!("{e}"));
    assert!(!config.kpi.groups.is_empty(), "zero energy is computed");

    // When the daemon polls five cycles of each device and stops cleanly
    let topics = Topics::new(&prefix, daemon_kit::SITE, &id).unwrap();
    let batches = topics.batches().to_owned();
    let mut probe = Probe::start(&broker.url(), std::slice::from_ref(&batches)).await;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let daemon = tokio::spawn(daemon::run(config.clone(), async move {
        let _ = stop_rx.await;
    }));
    let options = BufferOptions::from_config(&config.gateway, &config.buffer);
    let mut got = Received::default();
    collect_until(
        &mut probe,
        &batches,
        &id,
        &mut got,
        Duration::from_secs(30),
        "five cycles of every device",
        |g| DEVICES.iter().all(|d| g.cycles(d) >= 5),
    )
    .await;
    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(30), daemon)
        .await
        .expect("the daemon stops")
        .expect("no panic")
        .expect("no error");

    // Then the engine's state is stored, and fits the config for the next start.
    let buffer = Buffer::open(&state_dir, &options).expect("the buffer reopens");
    let state = buffer.kpi_state().await.expect("state read");
    buffer.close().await;
    let state = state.expect("the KPI state is stored at a clean stop");
    let fresh = Site::new(&config, None)
        .expect("the site builds")
        .expect("KPIs are computed")
        .save()
        .expect("save");
    assert_ne!(state, fresh, "the stored state holds the cycles polled");
    let site = Site::new(&config, Some(&state))
        .expect("the site builds")
        .expect("KPIs are computed");
    assert_eq!(
        site.save().expect("save"),
        state,
        "the stored state restores exactly"
    );
    sim.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
