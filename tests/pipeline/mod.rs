//! The end-to-end oracle: the simulator (Green Sail, clock frozen, so every value a device
//! serves is known), a gateway (`daemon::run`) polling some of its devices, a TCP gate
//! between the gateway and the broker that the scenario opens and closes, and the sink
//! (SQLite in a scratch folder, or a fresh schema of PostgreSQL reached through a gate of
//! its own). After the faults, the report counts per gateway stream what the reliability
//! contract (`reference/reliability.md` §B.8) asks: committed, delivered distinct, declared
//! gaps, missing, spurious, corrupted (stored value ≠ what the simulator served), stored
//! duplicates, transport duplicates, conflicting duplicates, time to the first fresh reading
//! after the faults stop, and the integrity check of every SQLite file (the gateway's buffer
//! also after every crash).
//!
//! [`Setup`] says where each part runs. By default everything is in this process and the
//! broker is the sink's embedded one. A scenario that kills a service with SIGKILL runs it as
//! a child process (`child.rs`); the broker must then outlive the sink: an embedded broker
//! started by the test process, or the machine's Mosquitto (`FIVEZERO_TEST_MQTT`). Every run
//! has its own gateway id, sink client id and topic prefix, so runs on a shared broker never
//! mix.

#![allow(dead_code)] // Each scenario uses its own part.

pub(crate) mod child;
pub(crate) mod mqtt;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fivezero_gateway::buffer::{Buffer, BufferOptions};
use fivezero_gateway::config::Config;
use fivezero_model::wire::{Quality, Value};
use fivezero_sim::plant::Plant;
use fivezero_sim::scenario::Scenario;
use fivezero_sim::server::{DeviceSnapshot, Options, ServedValue, Simulator, SimulatorHandle};
use fivezero_sink::broker::{EmbeddedBroker, EmbeddedSettings};
use fivezero_sink::stats::SinkStats;
use fivezero_sink::store::postgres::PgStore;
use fivezero_sink::store::{self, AnyStore, ReadingsQuery, Store as _, StoredReading};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use child::{Child, Role, SinkCounts};

#[path = "../../gateway/tests/common/gate.rs"]
mod gate;
#[path = "../../gateway/tests/common/scrape.rs"]
mod scrape;

pub(crate) use gate::Gate;
pub(crate) use scrape::Metrics;

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

/// The machine's Mosquitto from `FIVEZERO_TEST_MQTT` (`mqtt://host:port`), if set.
pub(crate) fn shared_mqtt() -> Option<(String, u16)> {
    let text = std::env::var("FIVEZERO_TEST_MQTT").ok()?;
    let rest = text.strip_prefix("mqtt://")?.trim_end_matches('/');
    let (host, port) = rest.rsplit_once(':').unwrap_or((rest, "1883"));
    Some((host.to_owned(), port.parse().ok()?))
}

/// The machine's PostgreSQL from `FIVEZERO_TEST_POSTGRES`, if set.
pub(crate) fn postgres_url() -> Option<String> {
    std::env::var("FIVEZERO_TEST_POSTGRES")
        .ok()
        .filter(|u| !u.is_empty())
}

/// The `host:port` of a `postgres://[user[:password]@]host[:port][/db][?…]` URL, and the URL
/// with that part replaced by `replacement`.
fn split_pg_host(url: &str, replacement: &str) -> (String, String) {
    let (scheme, rest) = url.split_once("://").expect("a postgres:// URL");
    let (user, rest) = match rest.split_once('@') {
        Some((u, r)) => (format!("{u}@"), r),
        None => (String::new(), rest),
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let host = &rest[..end];
    let host = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5432")
    };
    (
        host,
        format!("{scheme}://{user}{replacement}{}", &rest[end..]),
    )
}

/// The URL with every connection's `search_path` set to `schema`.
fn url_in_schema(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-c%20search_path%3D{schema}")
}

/// Where a service runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    /// A task of the test's runtime.
    InProcess,
    /// A child process (the test binary run again), which can be killed with SIGKILL.
    Child,
}

/// The broker between the gateway and the sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Broker {
    /// The sink's embedded broker; it lives and dies with the (in-process) sink.
    SinkEmbedded,
    /// The sink's embedded broker started by the test process: it outlives every sink.
    TestEmbedded,
    /// The machine's Mosquitto.
    Shared {
        /// Host.
        host: String,
        /// Port.
        port: u16,
    },
}

/// How a scenario's pipeline is built.
#[derive(Debug, Clone)]
pub(crate) struct Setup {
    /// The simulator's devices the gateway polls (every 200 ms, 500 ms timeout).
    pub(crate) devices: Vec<String>,
    /// Whole sections appended to the gateway's config (`[publish]`, `[poll]`, …).
    pub(crate) gateway_extra: String,
    /// Where the gateway runs.
    pub(crate) gateway: Place,
    /// Where the sink runs.
    pub(crate) sink: Place,
    /// The broker.
    pub(crate) broker: Broker,
    /// PostgreSQL base URL (`FIVEZERO_TEST_POSTGRES`) instead of SQLite: the sink gets a
    /// fresh schema and reaches the server through [`Pipeline::pg_gate`].
    pub(crate) postgres: Option<String>,
    /// Lines added to the sink's `[sink]` section; `{gateway}` stands for the gateway's id.
    pub(crate) sink_extra: String,
    /// The gateway's byte budget, set after loading (below the validator's 1 MiB floor);
    /// a gateway child gets it through `child::BUDGET_ENV`.
    pub(crate) budget: Option<u64>,
    /// Serve the gateway's Prometheus endpoint (on a free port).
    pub(crate) metrics: bool,
    /// Variables added to a gateway child's environment (`FIVEZERO_FAILPOINTS`, …);
    /// [`Pipeline::set_gateway_env`] changes them for the next start.
    pub(crate) gateway_env: Vec<(String, String)>,
}

impl Setup {
    /// Everything in this process, the sink's embedded broker, SQLite.
    pub(crate) fn new(devices: &[&str], gateway_extra: &str) -> Self {
        Self {
            devices: devices.iter().map(|d| (*d).to_owned()).collect(),
            gateway_extra: gateway_extra.to_owned(),
            gateway: Place::InProcess,
            sink: Place::InProcess,
            broker: Broker::SinkEmbedded,
            postgres: None,
            sink_extra: String::new(),
            budget: None,
            metrics: false,
            gateway_env: Vec::new(),
        }
    }
}

enum GatewayRun {
    Stopped,
    InProcess {
        stop: oneshot::Sender<()>,
        task: JoinHandle<anyhow::Result<()>>,
    },
    Child(Child),
}

enum SinkRun {
    Stopped,
    InProcess {
        stop: oneshot::Sender<()>,
        task: JoinHandle<Result<(), fivezero_sink::service::ServiceError>>,
    },
    Child {
        child: Child,
        stats: PathBuf,
    },
}

/// The gate and schema of a PostgreSQL run.
struct Postgres {
    base: String,
    schema: String,
    gate: Gate,
}

/// The running pipeline.
pub(crate) struct Pipeline {
    pub(crate) name: String,
    dir: PathBuf,
    pub(crate) sim: SimulatorHandle,
    /// The gate between the gateway and the broker.
    pub(crate) gate: Gate,
    /// Where the broker listens: host and port.
    pub(crate) broker: (String, u16),
    /// The topic prefix of this run.
    pub(crate) prefix: String,
    test_broker: Option<EmbeddedBroker>,
    setup: Setup,
    sink_text: String,
    sink_file: PathBuf,
    sink_stats: SinkStats,
    sink: SinkRun,
    sink_incarnations: u32,
    /// The storage URL the sink uses.
    pub(crate) sink_url: String,
    /// The storage URL the oracle reads (not through any gate).
    read_url: String,
    postgres: Option<Postgres>,
    gateway_file: PathBuf,
    gateway: GatewayRun,
    pub(crate) config: Config,
    pub(crate) devices: Vec<String>,
    metrics: Option<SocketAddr>,
    /// `PRAGMA integrity_check` of the gateway's buffer after each kill.
    crash_integrity: Vec<String>,
}

/// Per-stream counts of the oracle.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) committed: u64,
    pub(crate) delivered: u64,
    pub(crate) declared_gaps: u64,
    /// Sequences both stored and declared as a gap (the gap was declared after the reading
    /// reached the sink; the reading keeps precedence there).
    pub(crate) overlap: u64,
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
    /// Starts the simulator, the broker, the sink and a gateway polling `setup.devices` every
    /// 200 ms through an open gate.
    pub(crate) async fn start(name: &str, setup: Setup) -> Self {
        assert!(
            setup.broker != Broker::SinkEmbedded || setup.sink == Place::InProcess,
            "a sink child needs a broker that outlives it"
        );
        let tag = format!("{:08x}", rand::random::<u32>());
        let dir = std::env::temp_dir().join(format!(
            "fivezero-oracle-{name}-{}-{tag}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("scratch folder");
        let prefix = format!("fivezero-oracle/{tag}");

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

        // The broker.
        let mut test_broker = None;
        let (broker, sink_broker) = match &setup.broker {
            Broker::SinkEmbedded => {
                let a = free_addr();
                (
                    ("127.0.0.1".to_owned(), a.port()),
                    format!("broker = \"embedded\"\nlisten = \"{a}\"\nlisten_v311 = \"\""),
                )
            }
            Broker::TestEmbedded => {
                let a = free_addr();
                let b = fivezero_sink::broker::start(&EmbeddedSettings {
                    listen: a,
                    listen_v311: None,
                    max_packet_size: 256 * 1024,
                })
                .await
                .expect("the test's embedded broker starts");
                test_broker = Some(b);
                (
                    ("127.0.0.1".to_owned(), a.port()),
                    format!("broker = \"mqtt://{a}\""),
                )
            }
            Broker::Shared { host, port } => (
                (host.clone(), *port),
                format!("broker = \"mqtt://{host}:{port}\""),
            ),
        };

        // The store.
        let (sink_url, read_url, postgres) = match &setup.postgres {
            None => {
                let u = format!("sqlite://{}", dir.join("sink.db").display());
                (u.clone(), u, None)
            }
            Some(base) => {
                let schema = format!("fz_oracle_{:016x}", rand::random::<u64>());
                PgStore::open(base, Some(&schema))
                    .await
                    .unwrap_or_else(|e| panic!("PostgreSQL schema {schema}: {e}"));
                let (server, _) = split_pg_host(base, "");
                let upstream = server
                    .to_socket_addrs()
                    .ok()
                    .and_then(|mut a| a.next())
                    .unwrap_or_else(|| panic!("PostgreSQL at {server}"));
                let gate = Gate::start(upstream).await;
                let (_, gated) = split_pg_host(base, &format!("127.0.0.1:{}", gate.port()));
                (
                    url_in_schema(&gated, &schema),
                    url_in_schema(base, &schema),
                    Some(Postgres {
                        base: base.clone(),
                        schema,
                        gate,
                    }),
                )
            }
        };

        let sink_text = format!(
            "[sink]\nclient_id = \"oracle-sink-{name}-{tag}\"\nshutdown_timeout = \"10s\"\n{}\n\n\
             [storage]\nurl = \"{sink_url}\"\n\n\
             [mqtt]\n{sink_broker}\nprefix = \"{prefix}\"\nsession_expiry = \"2m\"\n\
             keep_alive = \"5s\"\n\n[http]\nlisten = \"\"\n",
            setup
                .sink_extra
                .replace("{gateway}", &format!("oracle-{name}-{tag}"))
        );
        let sink_file = dir.join("sink.toml");
        std::fs::write(&sink_file, &sink_text).expect("write the sink config");

        // The gateway's config.
        let upstream = (broker.0.as_str(), broker.1)
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .expect("the broker's address");
        let gate = Gate::start(upstream).await;
        let metrics = setup.metrics.then(free_addr);
        let metrics_text = metrics.map_or_else(String::new, |a| a.to_string());
        let mut text = format!(
            "[gateway]\nid = \"oracle-{name}-{tag}\"\nsite = \"{}\"\nstate_dir = \"{}\"\n\
             shutdown_timeout = \"10s\"\n\n[metrics]\nlisten = \"{metrics_text}\"\n\n\
             [mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\nprefix = \"{prefix}\"\nkeep_alive = \"5s\"\n\n\
             {}\n",
            sim.scenario().site.name,
            dir.join("gateway").display(),
            gate.port(),
            setup.gateway_extra
        );
        for d in &sim.scenario().devices {
            if setup.devices.contains(&d.name) {
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
        let mut config = Config::load(&gateway_file).unwrap_or_else(|e| panic!("{e}"));
        if let Some(b) = setup.budget {
            config.buffer.max_bytes = b;
        }
        assert_eq!(
            config.devices.len(),
            setup.devices.len(),
            "every device found"
        );

        let mut p = Self {
            name: name.to_owned(),
            dir,
            sim,
            gate,
            broker,
            prefix,
            test_broker,
            devices: setup.devices.clone(),
            setup,
            sink_text,
            sink_file,
            sink_stats: SinkStats::default(),
            sink: SinkRun::Stopped,
            sink_incarnations: 0,
            sink_url,
            read_url,
            postgres,
            gateway_file,
            gateway: GatewayRun::Stopped,
            config,
            metrics,
            crash_integrity: Vec::new(),
        };
        // The sink subscribes before the gateway publishes anything.
        p.start_sink().await;
        p.start_gateway();
        p
    }

    /// The scratch folder.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The gateway's topics.
    pub(crate) fn topics(&self) -> fivezero_model::topic::Topics {
        fivezero_model::topic::Topics::new(
            &self.prefix,
            &self.config.gateway.site,
            &self.config.gateway.id,
        )
        .expect("valid topics")
    }

    /// The gate in front of PostgreSQL (PostgreSQL runs only).
    pub(crate) fn pg_gate(&self) -> &Gate {
        &self.postgres.as_ref().expect("a PostgreSQL run").gate
    }

    /// Starts the gateway (in process or as a child, as set up).
    pub(crate) fn start_gateway(&mut self) {
        assert!(
            matches!(self.gateway, GatewayRun::Stopped),
            "the gateway is already running"
        );
        self.gateway = match self.setup.gateway {
            Place::InProcess => {
                let (stop, stopped) = oneshot::channel::<()>();
                let task = tokio::spawn(fivezero_gateway::daemon::run(
                    self.config.clone(),
                    async move {
                        let _ = stopped.await;
                    },
                ));
                GatewayRun::InProcess { stop, task }
            }
            Place::Child => {
                let mut env = self.setup.gateway_env.clone();
                if let Some(b) = self.setup.budget {
                    env.push((child::BUDGET_ENV.to_owned(), b.to_string()));
                }
                GatewayRun::Child(Child::spawn_with_env(
                    Role::Gateway,
                    &self.gateway_file,
                    None,
                    &self.dir.join("gateway.log"),
                    &env,
                ))
            }
        };
    }

    /// The variables added to the gateway child's environment from its next start on.
    pub(crate) fn set_gateway_env(&mut self, env: Vec<(String, String)>) {
        self.setup.gateway_env = env;
    }

    /// Waits until the gateway child running now writes a whole stderr line containing
    /// `needle` and returns it; an error when it ends first or `limit` passes.
    pub(crate) async fn gateway_stderr_line(
        &mut self,
        needle: &str,
        limit: Duration,
    ) -> Result<String, String> {
        match &mut self.gateway {
            GatewayRun::Child(c) => c.stderr_line(needle, limit).await,
            _ => panic!("only a gateway child's stderr can be watched"),
        }
    }

    /// Sends SIGTERM to the gateway child without waiting for it to end.
    pub(crate) fn signal_term_gateway(&self) {
        match &self.gateway {
            GatewayRun::Child(c) => c.signal_term(),
            _ => panic!("only a gateway child can be signalled"),
        }
    }

    /// Whether the gateway is running (it has not ended on its own).
    pub(crate) fn gateway_running(&mut self) -> bool {
        match &mut self.gateway {
            GatewayRun::Stopped => false,
            GatewayRun::InProcess { task, .. } => !task.is_finished(),
            GatewayRun::Child(c) => c.exited().is_none(),
        }
    }

    /// Kills the gateway child with SIGKILL and opens its buffer as the next start will find
    /// it: returns `PRAGMA integrity_check`'s answer (also kept for the report) and the
    /// highest sequence committed (0 when the child died before creating its buffer).
    pub(crate) fn kill_gateway(&mut self) -> (String, u64) {
        match std::mem::replace(&mut self.gateway, GatewayRun::Stopped) {
            GatewayRun::Child(c) => c.kill(),
            _ => panic!("only a gateway child can be killed"),
        }
        let path = self
            .config
            .gateway
            .state_dir
            .join(fivezero_gateway::buffer::FILE_NAME);
        if !path.exists() {
            return ("ok".to_owned(), 0);
        }
        let check = integrity_check(&path);
        self.crash_integrity.push(check.clone());
        let committed = open_to_inspect(&path)
            .and_then(|c| {
                c.query_row(
                    "SELECT COALESCE(MAX(next_seq), 1) - 1 FROM streams",
                    [],
                    |r| r.get::<_, i64>(0),
                )
            })
            .map_or(0, i64::unsigned_abs);
        (check, committed)
    }

    /// Starts the sink and waits until it is connected to the broker.
    pub(crate) async fn start_sink(&mut self) {
        assert!(
            matches!(self.sink, SinkRun::Stopped),
            "the sink is already running"
        );
        self.sink_incarnations += 1;
        match self.setup.sink {
            Place::InProcess => {
                let config = fivezero_sink::config::Config::from_text(
                    Path::new("oracle sink config"),
                    &self.sink_text,
                    Vec::new(),
                )
                .expect("the sink config");
                let (stop, stopped) = oneshot::channel::<()>();
                let task = tokio::spawn(fivezero_sink::service::run(
                    config,
                    self.sink_stats.clone(),
                    async move {
                        let _ = stopped.await;
                    },
                ));
                self.sink = SinkRun::InProcess { stop, task };
            }
            Place::Child => {
                let stats = self
                    .dir
                    .join(format!("sink-stats-{}.txt", self.sink_incarnations));
                let child = Child::spawn(
                    Role::Sink,
                    &self.sink_file,
                    Some(&stats),
                    &self.dir.join("sink.log"),
                );
                self.sink = SinkRun::Child { child, stats };
            }
        }
        if self.setup.broker == Broker::SinkEmbedded {
            accepting(SocketAddr::from(([127, 0, 0, 1], self.broker.1))).await;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.current_sink_counts().connections == 0 {
            if let SinkRun::Child { child, .. } = &mut self.sink {
                assert!(
                    child.exited().is_none(),
                    "{}: the sink child ended at start; see {}",
                    self.name,
                    self.dir.join("sink.log").display()
                );
            }
            assert!(Instant::now() < deadline, "the sink did not connect");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the sink child with SIGKILL.
    pub(crate) fn kill_sink(&mut self) {
        match std::mem::replace(&mut self.sink, SinkRun::Stopped) {
            SinkRun::Child { child, .. } => child.kill(),
            _ => panic!("only a sink child can be killed"),
        }
    }

    /// Kills the sink child with SIGKILL as soon as `ready` says so, polled every
    /// millisecond on a blocking thread (so the kill follows the observation within
    /// microseconds), or after `limit` regardless; returns whether `ready` held.
    pub(crate) async fn kill_sink_when<F>(&mut self, limit: Duration, mut ready: F) -> bool
    where
        F: FnMut() -> bool + Send + 'static,
    {
        let child = match std::mem::replace(&mut self.sink, SinkRun::Stopped) {
            SinkRun::Child { child, .. } => child,
            _ => panic!("only a sink child can be killed"),
        };
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + limit;
            let held = loop {
                if ready() {
                    break true;
                }
                if Instant::now() >= deadline {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(1));
            };
            child.kill();
            held
        })
        .await
        .expect("the kill does not panic")
    }

    /// The counters of the sink running now.
    pub(crate) fn current_sink_counts(&self) -> SinkCounts {
        match &self.sink {
            SinkRun::Stopped => SinkCounts::default(),
            SinkRun::InProcess { .. } => SinkCounts::of(&self.sink_stats),
            SinkRun::Child { stats, .. } => SinkCounts::read(stats),
        }
    }

    /// The sink's counters over every incarnation.
    pub(crate) fn sink_counts(&self) -> SinkCounts {
        let mut total = SinkCounts::of(&self.sink_stats);
        for i in 1..=self.sink_incarnations {
            let f = self.dir.join(format!("sink-stats-{i}.txt"));
            total = total.plus(SinkCounts::read(&f));
        }
        total
    }

    /// The sink's statistics (in-process sink).
    pub(crate) fn sink_stats(&self) -> &SinkStats {
        &self.sink_stats
    }

    /// Readings stored by the sink so far (every stream).
    pub(crate) fn stored(&self) -> u64 {
        self.sink_counts().stored_items
    }

    /// The sink's store, read directly (never through a gate).
    pub(crate) async fn store(&self) -> AnyStore {
        store::open(&self.read_url).await.expect("open the store")
    }

    /// Scrapes the gateway's metrics endpoint (set up with `metrics`).
    pub(crate) async fn gateway_metrics(&self) -> Option<Metrics> {
        scrape::scrape(self.metrics.expect("metrics set up")).await
    }

    /// The readings of this gateway polled in `from..to` (UTC ms).
    pub(crate) async fn readings(
        &self,
        store: &AnyStore,
        from: Option<i64>,
        to: Option<i64>,
    ) -> Vec<StoredReading> {
        store
            .readings(ReadingsQuery {
                site: None,
                gateway: Some(self.config.gateway.id.clone()),
                device: None,
                metric: None,
                from,
                to,
                limit: u32::MAX,
            })
            .await
            .expect("query")
    }

    /// Waits until the sink has stored a reading polled at or after `ts` of every device;
    /// returns how long that took.
    pub(crate) async fn fresh_after(&self, ts: i64) -> Duration {
        self.fresh_where(ts, &self.devices, false).await
    }

    /// Waits until the sink has stored a reading of quality `good` polled at or after `ts`
    /// of every one of `devices` (any quality when `good` is false); returns how long that
    /// took.
    pub(crate) async fn fresh_where(&self, ts: i64, devices: &[String], good: bool) -> Duration {
        let started = Instant::now();
        let store = self.store().await;
        loop {
            let rows = self.readings(&store, Some(ts), None).await;
            let seen: BTreeSet<&str> = rows
                .iter()
                .filter(|r| !good || r.reading.quality == Quality::Good)
                .map(|r| r.reading.device.as_str())
                .collect();
            if devices.iter().all(|d| seen.contains(d.as_str())) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < LIMIT,
                "{}: no fresh reading of every one of {devices:?} within {LIMIT:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the gateway (clean stop: commit, flush), waits until the sink holds everything
    /// the gateway committed or declared, stops the sink, and counts.
    pub(crate) async fn finish(mut self) -> Report {
        match std::mem::replace(&mut self.gateway, GatewayRun::Stopped) {
            GatewayRun::Stopped => {}
            GatewayRun::InProcess { stop, task } => {
                let _ = stop.send(());
                tokio::time::timeout(LIMIT, task)
                    .await
                    .expect("the gateway stops")
                    .expect("no panic")
                    .expect("the gateway ran without error");
            }
            GatewayRun::Child(c) => {
                let status = c.terminate().await;
                assert!(
                    status.success(),
                    "{}: the gateway child exits 0 on SIGTERM: {status:?}; see {}",
                    self.name,
                    self.dir.join("gateway.log").display()
                );
            }
        }
        if matches!(self.sink, SinkRun::Stopped) {
            self.start_sink().await;
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
        // gateway in this process until the sink holds it all (a real gateway restarts).
        let store = self.store().await;
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
                // Without devices: it publishes what is buffered and polls nothing, so the
                // count of committed sequences taken above stays the whole account.
                let mut config = self.config.clone();
                config.devices.clear();
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
        let rows = self.readings(&store, None, None).await;
        let gaps = store
            .gaps(self.config.gateway.id.clone())
            .await
            .expect("gaps");
        let quarantined = store
            .quarantined(u32::MAX)
            .await
            .expect("quarantine")
            .iter()
            .filter(|q| q.gateway == self.config.gateway.id)
            .count() as u64;
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
        report.overlap = declared
            .iter()
            .filter(|s| seen.contains_key(&(epoch.clone(), **s)))
            .count() as u64;
        report.missing = (1..=committed)
            .filter(|s| !seen.contains_key(&(epoch.clone(), *s)) && !declared.contains(s))
            .count() as u64;
        let sink = self.sink_counts();
        report.transport_duplicates = sink.duplicate_items;
        report.conflicting_duplicates = sink.conflicting.max(quarantined);
        drop(store);

        match std::mem::replace(&mut self.sink, SinkRun::Stopped) {
            SinkRun::Stopped => {}
            SinkRun::InProcess { stop, task } => {
                let _ = stop.send(());
                let _ = tokio::time::timeout(LIMIT, task).await;
            }
            SinkRun::Child { child, .. } => {
                let status = child.terminate().await;
                assert!(
                    status.success(),
                    "{}: the sink child exits 0 on SIGTERM: {status:?}",
                    self.name
                );
            }
        }
        report.integrity.push(integrity_check(
            &state_dir.join(fivezero_gateway::buffer::FILE_NAME),
        ));
        report.integrity.append(&mut self.crash_integrity);
        if self.postgres.is_none() {
            report
                .integrity
                .push(integrity_check(&self.dir.join("sink.db")));
        }
        self.clean_up().await;
        report
    }

    /// Clears the retained topics a run leaves on a shared broker, drops the PostgreSQL
    /// schema and removes the scratch folder.
    async fn clean_up(&mut self) {
        if let Broker::Shared { host, port } = &self.setup.broker {
            let client = mqtt::Client::connect(host, *port).await;
            let topics = self.topics();
            for t in [topics.ack(), topics.status()] {
                client.publish(t, Vec::new(), true).await;
            }
            client.wait_acked(2).await;
        }
        if let Some(pg) = self.postgres.take() {
            drop(pg.gate);
            PgStore::drop_schema(&pg.base, &pg.schema)
                .await
                .unwrap_or_else(|e| panic!("drop schema {}: {e}", pg.schema));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Pipeline {
    /// A scenario that failed before [`Pipeline::finish`] still drops its PostgreSQL schema
    /// (on a thread of its own, as this may run inside the runtime); the scratch folder stays
    /// for its logs.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "{}: logs and databases kept in {}",
                self.name,
                self.dir.display()
            );
        }
        if let Some(pg) = self.postgres.take() {
            let Postgres { base, schema, gate } = pg;
            drop(gate);
            let _ = std::thread::spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    let _ = rt.block_on(PgStore::drop_schema(&base, &schema));
                }
            })
            .join();
        }
    }
}

/// Opens a SQLite file for a look that leaves it as found: closing the connection does not
/// checkpoint the WAL, so a gateway restarted after a kill still recovers its own WAL.
fn open_to_inspect(path: &Path) -> rusqlite::Result<rusqlite::Connection> {
    let c = rusqlite::Connection::open(path)?;
    c.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )?;
    Ok(c)
}

/// `PRAGMA integrity_check` of one SQLite file.
pub(crate) fn integrity_check(path: &Path) -> String {
    match open_to_inspect(path) {
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
    /// conflicting; one epoch; every sequence stored or declared; every database sound.
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
            self.delivered + self.declared_gaps - self.overlap,
            self.committed,
            "{name}: delivered + declared - overlap = committed"
        );
        assert!(
            self.integrity.iter().all(|i| i == "ok"),
            "{name}: integrity {:?}",
            self.integrity
        );
    }
}
