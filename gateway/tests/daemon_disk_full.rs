//! The whole daemon on a full disk (issue 4, test 5): the gateway's state folder is on an
//! 8 MiB tmpfs the test mounts (root only: without the right to mount, the test prints
//! "skipped: …" and passes; the mount is undone by a guard, even when the test fails).
//!
//! The Green Sail simulator (frozen clock), `daemon::run` polling every device of the
//! scenario's main listener every 200 ms with its metrics on a free port, and a private
//! Mosquitto (started by the test on a free port) with the test playing the sink
//! (common/sink_play.rs: a subscriber on `batches` that publishes the ack watermark).
//!
//! Once readings flow, the sink holds its watermark back (so the buffer has to grow) and the
//! test fills the file system with a filler file until `ENOSPC`. It waits until the daemon
//! exports `fivezero_readings_dropped_total{intentional="false",reason="disk_full"} > 0`,
//! checks that the daemon still answers and its `run` future has not finished, deletes the
//! filler and acknowledges again; meanwhile everything committed before the disk filled
//! must reach the sink (publishing goes on). The buffer probes the disk every 10 s;
//! readings polled after the deletion must then reach the sink from every device.
//!
//! After a clean stop: every sequence the buffer committed arrived (`1..=committed`, one
//! epoch, no gap declared: readings dropped on a full disk never get a sequence), the
//! database passes `PRAGMA integrity_check`, and the drops were counted as `disk_full`.
//!
//! Without `/usr/sbin/mosquitto` the test prints "skipped: … is not installed" and passes.

#[path = "fixtures/sim.rs"]
mod sim;

#[path = "common/publish_kit.rs"]
mod kit;

#[path = "common/daemon_kit.rs"]
mod daemon_kit;

#[path = "common/scrape.rs"]
mod scrape;

#[path = "common/sink_play.rs"]
mod sink_play;

use daemon_kit::{SITE, config_text, now_ms};

use std::io::{ErrorKind, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use fivezero_gateway::buffer::{Buffer, BufferOptions, FILE_NAME};
use fivezero_gateway::config::Config;
use fivezero_gateway::daemon;
use fivezero_model::topic::Topics;
use kit::{Mosquitto, Probe};
use scrape::{Metrics, scrape};
use sink_play::Sink;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Size of the file system holding the state folder.
const FS_SIZE: &str = "8m";
/// Limit on each wait but the recovery.
const LIMIT: Duration = Duration::from_secs(20);
/// Limit on the recovery after the filler is deleted (the buffer probes every 10 s).
const RECOVERY: Duration = Duration::from_secs(30);
/// Between two scrapes.
const SCRAPE_EVERY: Duration = Duration::from_millis(100);

const DROPPED: &str = "fivezero_readings_dropped_total";
const DISK_FULL: [(&str, &str); 2] = [("intentional", "false"), ("reason", "disk_full")];

/// A tmpfs mounted for the test; unmounted (lazily if still busy) and removed when dropped.
#[derive(Debug)]
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` on a new folder `path`; `Err` says why it could not.
    fn mount(path: &Path, size: &str) -> Result<Self, String> {
        std::fs::create_dir_all(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output();
        match out {
            Ok(o) if o.status.success() => Ok(Self {
                path: path.to_path_buf(),
            }),
            Ok(o) => {
                let _ = std::fs::remove_dir(path);
                Err(format!(
                    "mount -t tmpfs failed ({}): {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                ))
            }
            Err(e) => {
                let _ = std::fs::remove_dir(path);
                Err(format!("cannot run mount: {e}"))
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Still busy (a test that failed with the daemon running): detach it now; the
            // kernel frees it when the last file is closed.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// Writes `path` until the file system is full; returns the bytes written.
fn fill(path: &Path) -> u64 {
    let mut file = std::fs::File::create(path).expect("create the filler");
    let chunk = vec![0xA5u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.kind() == ErrorKind::StorageFull => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("writing the filler: {e}"),
        }
    }
    // Small writes take the last partial blocks.
    loop {
        match file.write(&chunk[..512]) {
            Ok(n) if n > 0 => written += n as u64,
            _ => break,
        }
    }
    written
}

/// `PRAGMA integrity_check` of the buffer database in `dir`.
fn integrity(dir: &Path) -> String {
    let conn = rusqlite::Connection::open(dir.join(FILE_NAME)).expect("open the database");
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check")
}

/// Scrapes the daemon, failing the test when it does not answer or its `run` has finished.
async fn alive(addr: SocketAddr, daemon: &JoinHandle<anyhow::Result<()>>, when: &str) -> Metrics {
    assert!(
        !daemon.is_finished(),
        "the daemon's run finished {when} without being stopped"
    );
    scrape(addr)
        .await
        .unwrap_or_else(|| panic!("the metrics endpoint did not answer {when}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_drops_and_counts_readings_and_appends_resume_when_space_returns() {
    if !Mosquitto::available() {
        return;
    }
    let dir = std::env::temp_dir().join(format!(
        "fivezero-daemon-disk-full-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    // Given a small file system for the state folder
    let fs = match Tmpfs::mount(&dir.join("fs"), FS_SIZE) {
        Ok(fs) => fs,
        Err(why) => {
            println!("skipped: {why}");
            let _ = std::fs::remove_dir_all(&dir);
            return;
        }
    };
    let started = Instant::now();
    let state_dir = fs.path.join("state");
    let filler = fs.path.join("filler");

    // and a private broker, the simulator with its clock frozen
    let broker = Mosquitto::start("daemon-disk-full", "").await;
    let sim = sim::greensail(0.0).await;
    let devices: Vec<String> = sim
        .scenario()
        .devices
        .iter()
        .filter(|d| d.listener == fivezero_sim::scenario::MAIN_LISTENER)
        .map(|d| d.name.clone())
        .collect();
    let names: Vec<&str> = devices.iter().map(String::as_str).collect();

    // and a gateway of its own polling them, metrics on
    let id = format!("gw-diskfull-{:08x}", rand::random::<u32>());
    let prefix = format!("fivezero-test-{:016x}/v1", rand::random::<u64>());
    let file = dir.join("gateway.toml");
    let url = broker.url();
    std::fs::write(
        &file,
        config_text(
            &sim,
            &names,
            &state_dir,
            &format!("mqtt://{}:{}", url.host, url.port),
            &prefix,
            &id,
            "",
        ),
    )
    .unwrap();
    let mut config = Config::load_with_env(&file, Vec::new())
        .unwrap_or_else(|e| panic!("the config loads: {e}"));
    assert_eq!(config.devices.len(), names.len());
    let metrics = SocketAddr::from(([127, 0, 0, 1], kit::free_port()));
    config.metrics.listen = Some(metrics);
    let buffer_options = BufferOptions::from_config(&config.gateway, &config.buffer);
    let topics = Topics::new(&prefix, SITE, &id).unwrap();

    // and the test as its sink
    let mut sink = Sink::new(&topics, &id);
    let mut probe = Probe::start(&url, &sink.filters()).await;

    // When the daemon runs until readings arrive
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let daemon = tokio::spawn(daemon::run(config, async move {
        let _ = stop_rx.await;
    }));
    let deadline = Instant::now() + LIMIT;
    while sink.covered() == 0 {
        assert!(
            Instant::now() < deadline,
            "no reading arrived within {LIMIT:?}"
        );
        assert!(!daemon.is_finished(), "the daemon's run finished at start");
        sink.pump(&mut probe, SCRAPE_EVERY).await;
    }

    // and the sink holds its watermark back while a filler takes every free byte
    sink.acking = false;
    let filled = fill(&filler);
    let filled_ms = now_ms();

    // Then the daemon counts readings dropped on the full disk, and keeps running
    let deadline = Instant::now() + LIMIT;
    let mut next_scrape = Instant::now();
    let (dropped_full, committed_full) = loop {
        sink.pump(&mut probe, SCRAPE_EVERY).await;
        if Instant::now() < next_scrape {
            continue;
        }
        next_scrape = Instant::now() + SCRAPE_EVERY;
        let m = alive(metrics, &daemon, "on the full disk").await;
        let dropped = m.count(DROPPED, &DISK_FULL);
        if dropped > 0 {
            assert_eq!(
                m.get("fivezero_outbox_disk_failing", &[]),
                Some(1.0),
                "drops counted but the disk is not reported failing"
            );
            break (dropped, m.count("fivezero_outbox_committed_seq", &[]));
        }
        assert!(
            Instant::now() < deadline,
            "no disk_full drop counted within {LIMIT:?} of filling {filled} bytes"
        );
    };
    let failed_after = Duration::from_millis(u64::try_from(now_ms() - filled_ms).unwrap_or(0));

    // and publishing goes on: what was committed reaches the sink while the disk is full
    let deadline = Instant::now() + LIMIT;
    while sink.covered() < committed_full {
        assert!(
            Instant::now() < deadline,
            "timed out after {LIMIT:?} on the full disk waiting for the committed 1..={committed_full}: covered to {}",
            sink.covered()
        );
        alive(metrics, &daemon, "on the full disk").await;
        sink.pump(&mut probe, SCRAPE_EVERY).await;
    }
    assert!(filler.exists());

    // When space returns and the sink acknowledges again
    std::fs::remove_file(&filler).expect("delete the filler");
    let freed_ms = now_ms();
    sink.acking = true;
    sink.acknowledge(&probe).await;

    // Then readings polled after that arrive from every device, with no hole below them
    let deadline = Instant::now() + RECOVERY;
    let mut next_scrape = Instant::now();
    let final_metrics = loop {
        sink.pump(&mut probe, SCRAPE_EVERY).await;
        if Instant::now() < next_scrape {
            continue;
        }
        next_scrape = Instant::now() + SCRAPE_EVERY;
        let m = alive(metrics, &daemon, "after space returned").await;
        if sink.covered() == sink.max_seq() && names.iter().all(|d| sink.has_after(d, freed_ms)) {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {RECOVERY:?} waiting for readings polled after the filler was \
             deleted: {}/{} devices, covered to {} of {} received, disk failing {:?}, \
             dropped {}",
            names.iter().filter(|d| sink.has_after(d, freed_ms)).count(),
            names.len(),
            sink.covered(),
            sink.max_seq(),
            m.get("fivezero_outbox_disk_failing", &[]),
            m.count(DROPPED, &DISK_FULL)
        );
    };
    let dropped = final_metrics.count(DROPPED, &DISK_FULL);
    assert!(dropped >= dropped_full);
    assert_eq!(
        final_metrics.get("fivezero_outbox_disk_failing", &[]),
        Some(0.0),
        "appends resumed but the disk is still reported failing"
    );

    let _ = stop_tx.send(());
    tokio::time::timeout(LIMIT, daemon)
        .await
        .expect("the daemon stops within the limit")
        .expect("the daemon task does not panic")
        .expect("the daemon runs without error");

    // and the buffer, reopened, committed exactly what the sink received, in one stream
    let buffer = Buffer::open(&state_dir, &buffer_options).expect("the buffer reopens");
    let stats = buffer.stats();
    buffer.close().await;
    let committed = stats.committed_seq;
    let deadline = Instant::now() + LIMIT;
    while sink.covered() < committed.max(sink.max_seq()) {
        assert!(
            Instant::now() < deadline,
            "timed out after {LIMIT:?} waiting for every committed sequence: covered to {} of {committed}",
            sink.covered()
        );
        sink.pump(&mut probe, SCRAPE_EVERY).await;
    }
    assert_eq!(sink.epochs, [stats.epoch], "one stream, the buffer's");
    assert!(sink.gaps.is_empty(), "gaps declared: {:?}", sink.gaps);
    assert_eq!(sink.max_seq(), committed);
    assert_eq!(
        sink.readings.len() as u64,
        committed,
        "a hole in 1..={committed}"
    );

    // and the database is sound
    assert_eq!(integrity(&state_dir), "ok");

    println!(
        "{FS_SIZE} tmpfs: filler {filled} B, first disk_full drop counted {failed_after:?} \
         after filling; {dropped} readings dropped on the full disk; {committed} sequences \
         committed and received in {} batches ({} duplicates); {:?}",
        sink.batches,
        sink.duplicates,
        started.elapsed()
    );

    drop(probe);
    drop(broker);
    sim.shutdown().await;
    drop(fs);
    let _ = std::fs::remove_dir_all(&dir);
}
