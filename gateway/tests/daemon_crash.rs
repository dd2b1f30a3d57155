//! kill -9 of the gateway process while it publishes, several times, at random points: the
//! Green Sail simulator (frozen clock, in this process), the `fivezero-gateway` binary
//! (`run --config`, a child process polling three devices every 200 ms at
//! `synchronous = "full"`), and a private Mosquitto on a free port. The test plays the cloud
//! sink: it subscribes to the batches and publishes, retained, the watermark of the contiguous
//! sequences it holds.
//!
//! Each round waits until the subscriber has new sequences from the running gateway, waits a
//! random 0–400 ms more (so the kill lands anywhere: mid-poll, mid-commit, with publishes in
//! flight, before or after a PUBACK or a watermark is applied), sends SIGKILL, checks the
//! database (`PRAGMA integrity_check` = ok) and reads the watermark it holds, and starts the
//! gateway again. Every other round first kills the broker for 3 s, so that the kill lands
//! while the gateway replays a backlog (at most 10 messages of 50 readings a second, so the
//! replay lasts). After the last round the gateway is stopped with SIGTERM and must exit 0.
//!
//! Then: every sequence the buffer committed arrived (1..=committed, no hole); one epoch
//! (nothing was lost to relaxed fsync, so no sequence could be reused); a sequence that
//! arrived twice carried the same reading both times (`Received::take` checks), and every
//! duplicate after a restart lies above the watermark the buffer held when it was killed —
//! nothing the sink had confirmed (and the gateway had recorded) is ever sent again.
//!
//! Without `/usr/sbin/mosquitto` the test prints "skipped: … is not installed" and passes.

#[path = "fixtures/sim.rs"]
mod sim;

#[path = "common/publish_kit.rs"]
mod kit;

#[path = "common/daemon_kit.rs"]
mod daemon_kit;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use daemon_kit::{Received, collect_until, config_text, now_ms};
use fivezero_model::topic::Topics;
use kit::{Mosquitto, Probe};
use tokio::time::Instant;

/// Devices of the scenario polled by the gateway.
const DEVICES: [&str; 3] = ["grid-meter", "pv-roof-a", "boiler"];
/// kill -9 rounds.
const ROUNDS: usize = 6;
/// Limit on each wait.
const LIMIT: Duration = Duration::from_secs(60);
/// How long the broker stays down in the rounds that replay a backlog.
const OUTAGE: Duration = Duration::from_secs(3);
/// Small messages at a low rate, so a backlog takes a while to replay; reconnect quickly; and
/// replay what the sink has not confirmed 2 s after its watermark stalls (the subscriber that
/// replaces the one lost with the broker may miss what the gateway sent before it subscribed).
const PUBLISH: &str = "
[publish]
items_per_message = 50
replay_rate = 10
backoff_min = \"100ms\"
backoff_max = \"1s\"
stall_min = \"2s\"
stall_max = \"4s\"
";

/// The gateway binary, run as a child process.
struct Gateway {
    child: Child,
}

impl Gateway {
    fn start(config: &Path, log: &Path) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open the gateway's log");
        let child = Command::new(env!("CARGO_BIN_EXE_fivezero-gateway"))
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("FIVEZERO_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start fivezero-gateway");
        Self { child }
    }

    /// SIGKILL, and wait for it.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and wait (within `limit`) for its exit status.
    async fn terminate(&mut self, limit: Duration) -> ExitStatus {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill -TERM");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the gateway") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the gateway did not exit within {limit:?} of SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What the killed gateway's database holds: the integrity check's answer, and per stream
/// (epoch, next sequence, sink watermark).
fn inspect(db: &Path) -> (String, Vec<(i64, u64, u64)>) {
    let conn = rusqlite::Connection::open(db).expect("open the buffer database");
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    let mut stmt = conn
        .prepare("SELECT epoch, next_seq, sink_seq FROM streams ORDER BY id")
        .expect("prepare");
    let streams = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .expect("query")
        .collect::<Result<Vec<_>, _>>()
        .expect("rows");
    let streams = streams
        .into_iter()
        .map(|(e, n, s)| (e, n.unsigned_abs(), s.unsigned_abs()))
        .collect();
    (integrity, streams)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_publishing_loses_nothing_and_resends_only_what_was_not_confirmed() {
    if !Mosquitto::available() {
        return;
    }
    let started = Instant::now();

    // Given a private broker, the simulator with its clock frozen
    let mut broker = Mosquitto::start("daemon-crash", "").await;
    let sim = sim::greensail(0.0).await;
    // and a gateway config of its own (id, topic prefix, state folder)
    let id = format!("gw-crash-{:08x}", rand::random::<u32>());
    let prefix = format!("fivezero-test-{:016x}/v1", rand::random::<u64>());
    let dir: PathBuf = std::env::temp_dir().join(format!(
        "fivezero-daemon-crash-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let state_dir = dir.join("state");
    std::fs::create_dir_all(&state_dir).unwrap();
    let file = dir.join("gateway.toml");
    let log = dir.join("gateway.log");
    std::fs::write(
        &file,
        config_text(
            &sim,
            &DEVICES,
            &state_dir,
            &broker.url().to_string(),
            &prefix,
            &id,
            PUBLISH,
        ),
    )
    .unwrap();
    let db = state_dir.join(fivezero_gateway::buffer::FILE_NAME);
    let topics = Topics::new(&prefix, daemon_kit::SITE, &id).unwrap();
    let batches = topics.batches().to_owned();

    // and the sink subscribed before the gateway starts
    let mut probe = Probe::start(&broker.url(), std::slice::from_ref(&batches)).await;
    let mut got = Received {
        ack_topic: Some(topics.ack().to_owned()),
        ..Received::default()
    };

    // When the gateway is killed with SIGKILL at random points, round after round
    let mut gateway = Gateway::start(&file, &log);
    let mut kills = Vec::new();
    for round in 0..ROUNDS {
        if round % 2 == 1 {
            // a backlog builds while the broker is away, and is being replayed at the kill
            broker.kill();
            for m in probe.drain() {
                if m.topic == batches {
                    got.take(&m.payload, &id);
                }
            }
            drop(probe);
            tokio::time::sleep(OUTAGE).await;
            broker.restart().await;
            probe = Probe::start(&broker.url(), std::slice::from_ref(&batches)).await;
        }
        let seen = got.max_seq();
        collect_until(
            &mut probe,
            &batches,
            &id,
            &mut got,
            LIMIT,
            &format!("new sequences in round {round}"),
            |g| g.max_seq() > seen + 20,
        )
        .await;
        let pause = Duration::from_millis(rand::random::<u64>() % 400);
        let until = Instant::now() + pause;
        while let Some(m) = probe
            .next(until.saturating_duration_since(Instant::now()))
            .await
        {
            if m.topic == batches {
                got.take(&m.payload, &id);
                daemon_kit::acknowledge(&probe, &id, &mut got).await;
            }
        }
        gateway.kill();

        // then the database is sound after every kill
        let (integrity, streams) = inspect(&db);
        assert_eq!(integrity, "ok", "round {round}: integrity_check");
        assert_eq!(
            streams.len(),
            1,
            "round {round}: one stream at synchronous=full"
        );
        let (_, next_seq, sink_seq) = streams[0];
        kills.push(KillPoint {
            pause,
            committed: next_seq - 1,
            watermark: sink_seq,
            duplicates_before: got.duplicate_seqs.len(),
        });
        gateway = Gateway::start(&file, &log);
    }

    // and, restarted once more, it catches up and stops cleanly on SIGTERM
    let restarted_ms = now_ms();
    collect_until(
        &mut probe,
        &batches,
        &id,
        &mut got,
        LIMIT,
        "readings of every device polled after the last restart, with no hole below them",
        |g| DEVICES.iter().all(|d| g.has_after(d, restarted_ms)) && g.contiguous() == g.max_seq(),
    )
    .await;
    let status = gateway.terminate(LIMIT).await;
    assert!(
        status.success(),
        "SIGTERM: exit status {status}; log in {}",
        log.display()
    );
    let (integrity, streams) = inspect(&db);
    assert_eq!(integrity, "ok", "integrity_check after SIGTERM");
    assert_eq!(streams.len(), 1);
    let committed = streams[0].1 - 1;
    collect_until(
        &mut probe,
        &batches,
        &id,
        &mut got,
        LIMIT,
        "every committed sequence",
        |g| g.contiguous() >= committed,
    )
    .await;

    // Then nothing committed is missing, none was reused, and one stream carried it all
    assert_eq!(
        got.max_seq(),
        committed,
        "the subscriber has sequences the buffer never committed"
    );
    assert_eq!(got.contiguous(), committed, "a hole in the sequences");
    assert_eq!(got.epochs.len(), 1, "one epoch: {:?}", got.epochs);
    // and every duplicate after a kill is above the watermark the buffer held at that kill.
    for (round, k) in kills.iter().enumerate() {
        let end = kills
            .get(round + 1)
            .map_or(got.duplicate_seqs.len(), |n| n.duplicates_before);
        for &seq in &got.duplicate_seqs[k.duplicates_before..end] {
            assert!(
                seq > k.watermark,
                "round {round}: seq {seq} sent again though the buffer held the sink's watermark {}",
                k.watermark
            );
        }
    }
    let rounds: Vec<String> = kills
        .iter()
        .map(|k| {
            format!(
                "{} ms: committed {} watermark {}",
                k.pause.as_millis(),
                k.committed,
                k.watermark
            )
        })
        .collect();
    println!(
        "{ROUNDS} kills [{}]; {committed} sequences in {} batches, {} duplicate readings; {:?}",
        rounds.join("; "),
        got.batches,
        got.duplicates,
        started.elapsed()
    );

    drop(probe);
    sim.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// What the test saw at one kill.
#[derive(Debug)]
struct KillPoint {
    /// Wait after the round's new sequences arrived.
    pause: Duration,
    /// The last sequence the database held.
    committed: u64,
    /// The sink's watermark the database held.
    watermark: u64,
    /// Duplicates received before this kill.
    duplicates_before: usize,
}
