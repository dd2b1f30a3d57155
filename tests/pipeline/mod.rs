//! The end-to-end oracle: the simulator (Green Sail, clock frozen, so every value a device
//! serves is known), a gateway (`daemon::run`) polling some of its devices, a TCP gate
//! between the gateway and the broker that the scenario opens and closes, and the sink (its
//! embedded broker, SQLite in a scratch folder), all in this process. After the faults, the
//! report counts per gateway stream what the reliability contract (`reference/reliability.md`
//! §B.8) asks: committed, delivered distinct, declared gaps, missing, spurious, corrupted
//! (stored value ≠ what the simulator served), stored duplicates, transport duplicates,
//! conflicting duplicates, time to the first fresh reading after the faults stop, and the
//! integrity check of both SQLite files.

#![allow(dead_code)] // Each scenario uses its own part.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fivezero_gateway::buffer::{Buffer, BufferOptions};
use fivezero_gateway::config::Config;
use fivezero_model::wire::{Quality, Value};
use fivezero_sim::plant::Plant;
use fivezero_sim::scenario::Scenario;
use fivezero_sim::server::{DeviceSnapshot, Options, ServedValue, Simulator, SimulatorHandle};
use fivezero_sink::stats::SinkStats;
use fivezero_sink::store::{self, ReadingsQuery, Store as _};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

#[path = "../../gateway/tests/common/gate.rs"]
mod gate;

pub(crate) use gate::Gate;

/// Limit on every wait.
pub(crate) const LIMIT: Duration = Duration::from_secs(120);

/// Wall-clock UTC milliseconds.
pub(crate) fn now_ms() -> i64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970");
    i64::try_from(d.as_millis()).expect("fits")
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

async fn accepting(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "nothing accepts on {addr}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The running pipeline.
pub(crate) struct Pipeline {
    pub(crate) name: String,
    dir: PathBuf,
    pub(crate) sim: SimulatorHandle,
    pub(crate) gate: Gate,
    pub(crate) sink_stats: SinkStats,
    sink_url: String,
    sink_stop: Option<oneshot::Sender<()>>,
    sink: Option<JoinHandle<Result<(), fivezero_sink::service::ServiceError>>>,
    gateway_stop: Option<oneshot::Sender<()>>,
    gateway: Option<JoinHandle<anyhow::Result<()>>>,
    pub(crate) config: Config,
    pub(crate) devices: Vec<String>,
}

/// Per-stream counts of the oracle.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) committed: u64,
    pub(crate) delivered: u64,
    pub(crate) declared_gaps: u64,
    pub(crate) missing: u64,
    pub(crate) spurious: u64,
    pub(crate) corrupted: u64,
    pub(crate) stored_duplicates: u64,
    pub(crate) transport_duplicates: u64,
    pub(crate) conflicting_duplicates: u64,
    pub(crate) epochs: usize,
    pub(crate) integrity: Vec<String>,
}

impl Pipeline {
    /// Starts the simulator, the sink and a gateway polling `devices` every 200 ms through an
    /// open gate, with `publish` appended to the gateway config.
    pub(crate) async fn start(name: &str, devices: &[&str], publish: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "fivezero-oracle-{name}-{}-{}",
            std::process::id(),
            now_ms()
        ));
        std::fs::create_dir_all(&dir).expect("scratch folder");

        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("simulator/scenarios/greensail.toml");
        let scenario =
            Scenario::load(&file, &fivezero_profiles::library_dir()).expect("the scenario");
        let plant = Plant::new(&scenario).expect("the physics");
        let sim = Simulator::start(
            scenario,
            Box::new(plant),
            Options {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                speed: 0.0,
                control: None,
            },
        )
        .await
        .expect("the simulator starts");

        let broker = free_addr();
        let sink_url = format!("sqlite://{}", dir.join("sink.db").display());
        let sink_text = format!(
            "[sink]\nclient_id = \"oracle-sink-{name}\"\n\n[storage]\nurl = \"{sink_url}\"\n\n\
             [mqtt]\nbroker = \"embedded\"\nlisten = \"{broker}\"\nlisten_v311 = \"\"\n\n\
             [http]\nlisten = \"\"\n"
        );
        let sink_config = fivezero_sink::config::Config::from_text(
            Path::new("oracle sink config"),
            &sink_text,
            Vec::new(),
        )
        .expect("the sink config");
        let sink_stats = SinkStats::default();
        let (sink_stop, stopped) = oneshot::channel::<()>();
        let sink = tokio::spawn(fivezero_sink::service::run(
            sink_config,
            sink_stats.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        accepting(broker).await;
        // The sink subscribes before the gateway publishes anything.
        let deadline = Instant::now() + Duration::from_secs(15);
        while sink_stats.snapshot().connections == 0 {
            assert!(Instant::now() < deadline, "the sink did not connect");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let gate = Gate::start(broker).await;
        let mut text = format!(
            "[gateway]\nid = \"oracle-{name}\"\nsite = \"{}\"\nstate_dir = \"{}\"\n\
             shutdown_timeout = \"10s\"\n\n[metrics]\nlisten = \"\"\n\n\
             [mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\nkeep_alive = \"5s\"\n\n{publish}\n",
            sim.scenario().site.name,
            dir.join("gateway").display(),
            gate.port()
        );
        for d in &sim.scenario().devices {
            if devices.contains(&d.name.as_str()) {
                let addr = sim.addr(&d.listener).expect("a listener");
                text.push_str(&format!(
                    "\n[[device]]\nname = \"{}\"\nprofile = \"{}\"\ntcp = \"{addr}\"\nunit = {}\n\
                     interval = \"200ms\"\ntimeout = \"500ms\"\n",
                    d.name, d.profile.id, d.unit_id
                ));
            }
        }
        let gateway_file = dir.join("gateway.toml");
        std::fs::write(&gateway_file, text).expect("write the gateway config");
        let config = Config::load(&gateway_file).unwrap_or_else(|e| panic!("{e}"));
        let (gateway_stop, stopped) = oneshot::channel::<()>();
        let gateway = tokio::spawn(fivezero_gateway::daemon::run(config.clone(), async move {
            let _ = stopped.await;
        }));
        Self {
            name: name.to_owned(),
            dir,
            sim,
            gate,
            sink_stats,
            sink_url,
            sink_stop: Some(sink_stop),
            sink: Some(sink),
            gateway_stop: Some(gateway_stop),
            gateway: Some(gateway),
            config,
            devices: devices.iter().map(|d| (*d).to_owned()).collect(),
        }
    }

    /// Readings stored by the sink so far (every stream).
    pub(crate) fn stored(&self) -> u64 {
        self.sink_stats.snapshot().stored_items
    }

    /// Waits until the sink has stored a reading polled at or after `ts` of every device;
    /// returns how long that took.
    pub(crate) async fn fresh_after(&self, ts: i64) -> Duration {
        let started = Instant::now();
        let store = store::open(&self.sink_url).await.expect("open the store");
        loop {
            let rows = store
                .readings(ReadingsQuery {
                    site: None,
                    gateway: Some(self.config.gateway.id.clone()),
                    device: None,
                    metric: None,
                    from: Some(ts),
                    to: None,
                    limit: 100_000,
                })
                .await
                .expect("query");
            let devices: BTreeSet<&str> = rows.iter().map(|r| r.reading.device.as_str()).collect();
            if self.devices.iter().all(|d| devices.contains(d.as_str())) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < LIMIT,
                "{}: no fresh reading of every device within {LIMIT:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the gateway (clean stop: commit, flush), waits until the sink holds everything
    /// the gateway committed or declared, stops the sink, and counts.
    pub(crate) async fn finish(mut self) -> Report {
        if let Some(tx) = self.gateway_stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.gateway.take() {
            tokio::time::timeout(LIMIT, task)
                .await
                .expect("the gateway stops")
                .expect("no panic")
                .expect("the gateway ran without error");
        }
        // The gateway's own account, from its buffer.
        let options = BufferOptions::from_config(&self.config.gateway, &self.config.buffer);
        let state_dir = self.config.gateway.state_dir.clone();
        let buffer = Buffer::open(&state_dir, &options).expect("the gateway buffer reopens");
        let stats = buffer.stats();
        buffer.close().await;
        let committed = stats.committed_seq;
        let epoch = stats.epoch.to_string();

        // What was not acknowledged at the stop goes out at the next start: restart the
        // gateway's publisher alone until the sink holds it all (a real gateway restarts).
        let store = store::open(&self.sink_url).await.expect("open the store");
        let deadline = Instant::now() + LIMIT;
        let mut restarted = None;
        loop {
            let streams = store.streams().await.expect("streams");
            let watermark = streams
                .iter()
                .filter(|s| s.gateway == self.config.gateway.id && s.epoch == epoch)
                .map(|s| s.watermark)
                .max()
                .unwrap_or(0);
            if watermark >= committed {
                break;
            }
            if restarted.is_none() {
                let (tx, rx) = oneshot::channel::<()>();
                let config = self.config.clone();
                let task = tokio::spawn(fivezero_gateway::daemon::run(config, async move {
                    let _ = rx.await;
                }));
                restarted = Some((tx, task));
            }
            assert!(
                Instant::now() < deadline,
                "{}: the sink's watermark {watermark} never reached the gateway's {committed}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if let Some((tx, task)) = restarted {
            let _ = tx.send(());
            let _ = tokio::time::timeout(LIMIT, task).await;
        }

        // The sink's account.
        let rows = store
            .readings(ReadingsQuery {
                site: None,
                gateway: Some(self.config.gateway.id.clone()),
                device: None,
                metric: None,
                from: None,
                to: None,
                limit: u32::MAX,
            })
            .await
            .expect("readings");
        let gaps = store
            .gaps(self.config.gateway.id.clone())
            .await
            .expect("gaps");
        let snapshots: BTreeMap<String, DeviceSnapshot> = self
            .devices
            .iter()
            .map(|d| (d.clone(), self.sim.snapshot(d).expect("a snapshot")))
            .collect();
        let mut report = Report {
            committed,
            ..Report::default()
        };
        let mut seen: BTreeMap<(String, u64), u32> = BTreeMap::new();
        for r in &rows {
            *seen.entry((r.epoch.clone(), r.seq)).or_default() += 1;
            if r.epoch != epoch || r.seq == 0 || r.seq > committed {
                report.spurious += 1;
            }
            if let Some(s) = snapshots.get(&r.reading.device)
                && !served_equals(s, &r.reading)
            {
                report.corrupted += 1;
            }
        }
        report.epochs = seen.keys().map(|(e, _)| e).collect::<BTreeSet<_>>().len();
        report.delivered = seen.len() as u64;
        report.stored_duplicates = seen.values().map(|&n| u64::from(n - 1)).sum();
        let declared: BTreeSet<u64> = gaps
            .iter()
            .filter(|g| g.epoch == epoch)
            .flat_map(|g| g.first_seq..g.first_seq + g.count)
            .collect();
        report.declared_gaps = declared.len() as u64;
        report.missing = (1..=committed)
            .filter(|s| !seen.contains_key(&(epoch.clone(), *s)) && !declared.contains(s))
            .count() as u64;
        let sink = self.sink_stats.snapshot();
        report.transport_duplicates = sink.duplicate_items;
        report.conflicting_duplicates = sink.conflicting_duplicates;

        if let Some(tx) = self.sink_stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.sink.take() {
            let _ = tokio::time::timeout(LIMIT, task).await;
        }
        for db in [
            state_dir.join(fivezero_gateway::buffer::FILE_NAME),
            self.dir.join("sink.db"),
        ] {
            let conn = rusqlite_open(&db);
            report.integrity.push(conn);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        report
    }
}

/// `PRAGMA integrity_check` of one SQLite file.
fn rusqlite_open(path: &Path) -> String {
    match rusqlite::Connection::open(path) {
        Ok(c) => c
            .query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0))
            .unwrap_or_else(|e| e.to_string()),
        Err(e) => e.to_string(),
    }
}

/// Whether a stored reading holds what the (frozen) simulator served for its point.
fn served_equals(snapshot: &DeviceSnapshot, r: &fivezero_model::wire::Reading) -> bool {
    let Some(point) = snapshot
        .points
        .iter()
        .find(|p| p.metric == Some(r.metric.as_str()))
    else {
        return false;
    };
    match (&r.quality, &r.value, &point.value) {
        (Quality::Good, Some(Value::Number(x)), ServedValue::Number(y)) => {
            x == y || (x - y).abs() <= 1e-9 * y.abs().max(1.0)
        }
        (Quality::Good, Some(Value::Text(x)), ServedValue::Text(y)) => x == y,
        (Quality::Good, None, ServedValue::NotAvailable(_)) => true,
        (Quality::Error | Quality::Stale, None, _) => true,
        _ => false,
    }
}

impl Report {
    /// Asserts the contract: nothing missing, spurious, corrupted, stored twice or
    /// conflicting; one epoch; both databases sound.
    pub(crate) fn assert_pass(&self, name: &str) {
        println!("{name}: {self:?}");
        assert!(self.committed > 0, "{name}: nothing committed");
        assert_eq!(self.missing, 0, "{name}: missing");
        assert_eq!(self.spurious, 0, "{name}: spurious");
        assert_eq!(self.corrupted, 0, "{name}: corrupted");
        assert_eq!(self.stored_duplicates, 0, "{name}: stored duplicates");
        assert_eq!(
            self.conflicting_duplicates, 0,
            "{name}: conflicting duplicates"
        );
        assert_eq!(self.epochs, 1, "{name}: epochs");
        assert_eq!(
            self.delivered + self.declared_gaps,
            self.committed,
            "{name}: delivered + declared = committed"
        );
        assert!(
            self.integrity.iter().all(|i| i == "ok"),
            "{name}: integrity {:?}",
            self.integrity
        );
    }
}
