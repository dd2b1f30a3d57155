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
//! mix. [`Broker::Private`] is a Mosquitto of the run's own, with persistence, that a scenario
//! stops (SIGTERM), kills (SIGKILL) and starts again on the same port.
//!
//! The report also holds the second, gateway-independent count of §B.8 ([`PollCount`]): per
//! device, the Modbus requests the simulator answered against the requests of the poll cycles
//! the sink holds. Every answered poll must be committed, except the polls in flight at each
//! kill of the gateway and at its final stop.

#![allow(dead_code)] // Each scenario uses its own part.

pub(crate) mod child;
pub(crate) mod mqtt;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fivezero_gateway::buffer::{Buffer, BufferOptions};
use fivezero_gateway::config::{Config, DeviceConfig};
use fivezero_model::wire::{Quality, Reading, Value};
use fivezero_profiles::Profile;
use fivezero_profiles::plan::{self, ReadRequest};
use fivezero_sim::fault::Fault;
use fivezero_sim::plant::Plant;
use fivezero_sim::scenario::Scenario;
use fivezero_sim::server::{
    DeviceSnapshot, Options, ServedValue, Simulator, SimulatorHandle, UnknownDevice,
};
use fivezero_sink::broker::{EmbeddedBroker, EmbeddedSettings};
use fivezero_sink::stats::SinkStats;
use fivezero_sink::store::postgres::PgStore;
use fivezero_sink::store::{self, AnyStore, ReadingsQuery, Store as _, StoredGap, StoredReading};
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
    /// A Mosquitto of the run's own ([`MOSQUITTO`]) on a free port, with `persistence true`
    /// in the run's scratch folder (see [`Mosquitto`]); the sink reaches it as a client, the
    /// gateway through the gate. [`Pipeline::stop_broker`], [`Pipeline::kill_broker`] and
    /// [`Pipeline::start_broker`] restart it on the same port with the same persistence file.
    /// A scenario checks [`Mosquitto::available`] first.
    Private,
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
    /// Check the simulator's count of answered requests against the committed polls
    /// ([`PollCount`]) in [`Report::assert_pass`] (the default). Devices a Modbus fault was
    /// put on through [`Pipeline::sim`] are left out in any case; false leaves out every
    /// device (the figures are still reported).
    pub(crate) count_polls: bool,
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
            count_polls: true,
        }
    }
}

/// The simulator's handle, remembering every device a scenario put a Modbus fault on (the
/// count of answered polls is not checked for those: a faulty reply may be retried, or
/// answered and refused). Everything else of [`SimulatorHandle`] is reached through `Deref`.
#[derive(Debug)]
pub(crate) struct Sim {
    handle: SimulatorHandle,
    faulted: Mutex<BTreeSet<String>>,
}

impl Sim {
    /// [`SimulatorHandle::set_fault`], remembering `device` as faulted for the rest of the run.
    pub(crate) fn set_fault(&self, device: &str, fault: Fault) -> Result<(), UnknownDevice> {
        self.faulted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(device.to_owned());
        self.handle.set_fault(device, fault)
    }

    /// The devices a fault was put on so far.
    pub(crate) fn faulted(&self) -> BTreeSet<String> {
        self.faulted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Deref for Sim {
    type Target = SimulatorHandle;

    fn deref(&self) -> &SimulatorHandle {
        &self.handle
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
    pub(crate) sim: Sim,
    /// The gate between the gateway and the broker.
    pub(crate) gate: Gate,
    /// Where the broker listens: host and port.
    pub(crate) broker: (String, u16),
    /// The topic prefix of this run.
    pub(crate) prefix: String,
    test_broker: Option<EmbeddedBroker>,
    /// The run's own Mosquitto ([`Broker::Private`]).
    mosquitto: Option<Mosquitto>,
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
    /// Kills of the gateway ([`Pipeline::kill_gateway`]).
    gateway_kills: u64,
    /// The simulator's counts per device before the last look at the gateway child's stderr
    /// that did not find the line looked for (or at the child's start).
    before_last_look: BTreeMap<String, u64>,
    /// Once the line is found: those counts, from before the line was written.
    halted_since: Option<BTreeMap<String, u64>>,
    /// Per device, requests answered from (at the latest) the writing of a failpoint's
    /// marker to the kill, over every kill.
    halted_requests: BTreeMap<String, u64>,
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
    /// Kills of the gateway in the run: each may leave one poll per device answered but not
    /// committed, and so may the final stop.
    pub(crate) gateway_kills: u64,
    /// Per device polled: the simulator's count of answered requests against the committed
    /// polls.
    pub(crate) polls: Vec<PollCount>,
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
        let sim = Sim {
            handle: sim,
            faulted: Mutex::default(),
        };

        // The broker.
        let mut test_broker = None;
        let mut mosquitto = None;
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
            Broker::Private => {
                let m = Mosquitto::start(&dir.join("mosquitto")).await;
                let port = m.port;
                mosquitto = Some(m);
                (
                    ("127.0.0.1".to_owned(), port),
                    format!("broker = \"mqtt://127.0.0.1:{port}\""),
                )
            }
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
            mosquitto,
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
            gateway_kills: 0,
            before_last_look: BTreeMap::new(),
            halted_since: None,
            halted_requests: BTreeMap::new(),
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
        self.before_last_look = answered_requests(&self.sim, &self.config.devices);
        self.halted_since = None;
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
    ///
    /// The line is looked for every 10 ms, and the simulator's counts are taken before each
    /// look: when it is found, the counts taken before the last look that did not find it
    /// are from before the line was written. For a failpoint's marker these bound what the
    /// gateway polled while the point held it (its poller runs on): the next
    /// [`Pipeline::kill_gateway`] adds that to the polls allowed in flight.
    pub(crate) async fn gateway_stderr_line(
        &mut self,
        needle: &str,
        limit: Duration,
    ) -> Result<String, String> {
        let GatewayRun::Child(c) = &mut self.gateway else {
            panic!("only a gateway child's stderr can be watched");
        };
        let deadline = Instant::now() + limit;
        loop {
            let counts = answered_requests(&self.sim, &self.config.devices);
            if let Some(line) = c.find_stderr_line(needle) {
                self.halted_since = Some(self.before_last_look.clone());
                return Ok(line);
            }
            self.before_last_look = counts;
            if let Some(status) = c.exited() {
                return Err(format!(
                    "the gateway child ended ({status}) without writing {needle:?}"
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the gateway child wrote no {needle:?} within {limit:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
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
        self.gateway_kills += 1;
        if let Some(since) = self.halted_since.take() {
            let now = answered_requests(&self.sim, &self.config.devices);
            for (device, n) in now {
                let before = since.get(&device).copied().unwrap_or(0);
                *self.halted_requests.entry(device).or_default() += n.saturating_sub(before);
            }
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
        // An in-process sink's counters run on over its incarnations; a child's start at 0.
        let connected_before = match self.setup.sink {
            Place::InProcess => SinkCounts::of(&self.sink_stats).connections,
            Place::Child => 0,
        };
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
        while self.current_sink_counts().connections <= connected_before {
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

    /// Stops the sink cleanly (a child with SIGTERM) and waits until it has ended; its
    /// persistent session stays on the broker.
    pub(crate) async fn stop_sink(&mut self) {
        match std::mem::replace(&mut self.sink, SinkRun::Stopped) {
            SinkRun::Stopped => {}
            SinkRun::InProcess { stop, task } => {
                let _ = stop.send(());
                tokio::time::timeout(LIMIT, task)
                    .await
                    .expect("the sink stops")
                    .expect("no panic")
                    .unwrap_or_else(|e| panic!("{}: the sink failed: {e}", self.name));
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

    /// The run's own Mosquitto ([`Broker::Private`]).
    fn mosquitto(&mut self) -> &mut Mosquitto {
        self.mosquitto
            .as_mut()
            .expect("the run's own Mosquitto (Broker::Private)")
    }

    /// Stops the run's own Mosquitto with SIGTERM (it saves its persistence file on the way
    /// out) and waits until it has exited.
    pub(crate) async fn stop_broker(&mut self) {
        let name = self.name.clone();
        let status = self.mosquitto().stop().await;
        assert!(
            status.success(),
            "{name}: Mosquitto exits 0 on SIGTERM: {status:?}"
        );
    }

    /// Kills the run's own Mosquitto with SIGKILL: nothing is saved since its last autosave.
    pub(crate) fn kill_broker(&mut self) {
        self.mosquitto().kill();
    }

    /// Starts the run's own Mosquitto again on the same port with the same persistence file,
    /// and waits until it accepts connections.
    pub(crate) async fn start_broker(&mut self) {
        self.mosquitto().spawn().await;
    }

    /// The size of the run's own Mosquitto's persistence file (0 while it has none).
    pub(crate) fn broker_persisted_bytes(&mut self) -> u64 {
        std::fs::metadata(self.mosquitto().persistence_file()).map_or(0, |m| m.len())
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
        // The limit is on progress, not on the whole drain: after an hour's outage the live
        // lane shows fresh readings long before the replay ends, and the rest may take minutes.
        let store = self.store().await;
        let mut deadline = Instant::now() + LIMIT;
        let mut progress = 0;
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
            if watermark > progress {
                progress = watermark;
                deadline = Instant::now() + LIMIT;
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
                "{}: the sink's watermark stopped at {watermark} for {LIMIT:?}, short of the \
                 gateway's {committed}",
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
        report.gateway_kills = self.gateway_kills;
        let unstored = report.declared_gaps - report.overlap;
        report.polls = self.poll_counts(&rows, &gaps, &epoch, unstored);
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

    /// The [`PollCount`] of every device polled, from the readings stored in `epoch` and the
    /// gaps declared in it, `unstored` of whose sequences hold no stored reading. Call once
    /// the gateway has stopped: the simulator's counts are then final.
    fn poll_counts(
        &self,
        rows: &[StoredReading],
        gaps: &[StoredGap],
        epoch: &str,
        unstored: u64,
    ) -> Vec<PollCount> {
        let mut ordered: Vec<&StoredReading> = rows.iter().filter(|r| r.epoch == epoch).collect();
        ordered.sort_by_key(|r| r.seq);
        ordered.dedup_by_key(|r| r.seq);
        let hidden = Hidden {
            seqs: unstored,
            ranges: gaps.iter().filter(|g| g.epoch == epoch).count() as u64,
        };
        let faulted = self.sim.faulted();
        self.config
            .devices
            .iter()
            .map(|d| {
                let readings: Vec<&Reading> = ordered
                    .iter()
                    .filter(|r| r.reading.device == *d.name)
                    .map(|r| &r.reading)
                    .collect();
                let skipped = if faulted.contains(&*d.name) {
                    Some("Modbus faults injected")
                } else if !self.setup.count_polls {
                    Some("the scenario opted out")
                } else {
                    None
                };
                let answered = self
                    .sim
                    .served_requests(&d.name)
                    .expect("a device of the scenario");
                PollCount {
                    device: d.name.to_string(),
                    answered_requests: answered,
                    allowance: self.gateway_kills + 1,
                    halted_requests: self.halted_requests.get(&*d.name).copied().unwrap_or(0),
                    skipped,
                    ..PollCount::committed(&d.profile, d.interval, &readings, hidden)
                }
            })
            .collect()
    }

    /// Clears the retained topics a run leaves on a shared broker, stops the run's own
    /// Mosquitto, drops the PostgreSQL schema and removes the scratch folder.
    async fn clean_up(&mut self) {
        if let Some(mut m) = self.mosquitto.take() {
            m.kill();
        }
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
pub(crate) fn open_to_inspect(path: &Path) -> rusqlite::Result<rusqlite::Connection> {
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
    /// conflicting; one epoch; every sequence stored or declared; every database sound; and,
    /// for each device without faults, every poll the simulator answered committed but the
    /// polls in flight at the kills and the stop ([`PollCount::assert_pass`]).
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
        for c in &self.polls {
            c.assert_pass(name);
        }
    }
}

// ------------------------------------------------------------------------------------------
// The run's own Mosquitto
// ------------------------------------------------------------------------------------------

/// Where Debian's Mosquitto package installs the broker.
pub(crate) const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// Seconds between the saves of the run's own Mosquitto's in-memory state to its persistence
/// file: after a SIGKILL the file is up to this old.
const AUTOSAVE_S: u32 = 5;

/// The Mosquitto of [`Broker::Private`]: on a free port of 127.0.0.1, `persistence true`
/// with its file, config and log in a folder of the run's scratch folder. Every start uses the
/// same port and the same persistence file. Killed (SIGKILL) when dropped.
#[derive(Debug)]
pub(crate) struct Mosquitto {
    port: u16,
    dir: PathBuf,
    process: Option<std::process::Child>,
}

impl Mosquitto {
    /// Whether [`MOSQUITTO`] is installed; prints why a scenario skips when it is not.
    pub(crate) fn available() -> bool {
        let there = Path::new(MOSQUITTO).is_file();
        if !there {
            println!("skipped: {MOSQUITTO} is not installed (Debian package mosquitto)");
        }
        there
    }

    /// Writes the config into `dir` and starts the broker on a free port.
    async fn start(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("Mosquitto's folder");
        let port = free_addr().port();
        // As root Mosquitto drops to the `mosquitto` user unless told otherwise, and could
        // then not write its folder; as any other user `user` has no effect.
        let config = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nuser root\n\
             persistence true\npersistence_location {}/\npersistence_file mosquitto.db\n\
             autosave_interval {AUTOSAVE_S}\nlog_dest file {}\n\
             log_type error\nlog_type warning\nlog_type notice\nlog_type information\n",
            dir.display(),
            dir.join("mosquitto.log").display()
        );
        std::fs::write(dir.join("mosquitto.conf"), config).expect("write mosquitto.conf");
        let mut m = Self {
            port,
            dir: dir.to_owned(),
            process: None,
        };
        m.spawn().await;
        m
    }

    /// The persistence file.
    fn persistence_file(&self) -> PathBuf {
        self.dir.join("mosquitto.db")
    }

    /// Starts the broker with its config and waits until it accepts connections.
    async fn spawn(&mut self) {
        assert!(self.process.is_none(), "Mosquitto is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("mosquitto.stderr"))
            .expect("Mosquitto's stderr file");
        let process = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{MOSQUITTO} starts: {e}"));
        self.process = Some(process);
        accepting(SocketAddr::from(([127, 0, 0, 1], self.port))).await;
    }

    /// SIGTERM, and waits (on the blocking pool) for the exit status; SIGKILL and a panic
    /// when that takes longer than the limit.
    async fn stop(&mut self) -> ExitStatus {
        let mut p = self.process.take().expect("Mosquitto is running");
        let sent = Command::new("kill")
            .args(["-TERM", &p.id().to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(sent.success(), "SIGTERM to Mosquitto");
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + LIMIT;
            loop {
                match p.try_wait() {
                    Ok(Some(status)) => return status,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    _ => {
                        let _ = p.kill();
                        let _ = p.wait();
                        panic!("Mosquitto did not stop within {LIMIT:?} of SIGTERM");
                    }
                }
            }
        })
        .await
        .expect("Mosquitto stops")
    }

    /// SIGKILL, and reaps it.
    fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

// ------------------------------------------------------------------------------------------
// The simulator's count of answered polls
// ------------------------------------------------------------------------------------------

/// Reasons of a reading whose request got no reply the gateway could use although it may have
/// been sent, and answered late or cut (`PollError::reason`; `disconnected` also names a
/// link that could not be opened, whose request was not sent).
const TRANSPORT_FAILURES: [&str; 7] = [
    "timeout",
    "short reply",
    "long reply",
    "header mismatch",
    "function code mismatch",
    "invalid frame",
    fivezero_gateway::poll::cycle::DISCONNECTED,
];
/// Reasons of a reading whose request was never sent.
const NOT_SENT: [&str; 3] = [
    fivezero_gateway::poll::cycle::MISCONFIGURED,
    fivezero_gateway::poll::cycle::UNIT_OFFLINE,
    "not polled",
];

/// Sequences declared as gaps and not stored: the cycles they held are out of sight.
#[derive(Debug, Clone, Copy)]
struct Hidden {
    /// Such sequences (of any device).
    seqs: u64,
    /// Gap ranges declared (each may cut a cycle at either end).
    ranges: u64,
}

/// The second, gateway-independent count of §B.8 for one device: the Modbus requests the
/// simulator answered against the requests of the poll cycles the sink holds.
///
/// - **Committed polls** are counted from the stored readings, which are every committed
///   sequence but the declared gaps once `missing` is 0: a cycle holds one reading per due
///   point in profile order and its readings take consecutive sequences, so the device's
///   readings in sequence order are cut into cycles where the point order stops increasing.
///   (A reading's `ts` is the receipt time of its own request's reply, so distinct times
///   count requests that happened to land on different milliseconds, not cycles.) A cycle
///   counts when it holds every point due in each cycle; one missing some lies at the edge of
///   an evicted range and counts as hidden below.
/// - **Requests per poll** come from the profile's block plan (`plan::plan`), the same planner
///   the gateway runs, for the points due in every cycle (and, as the most, with every point
///   due: points with a long interval of their own add requests in some cycles). Each
///   committed cycle's own requests are `plan::plan` of the points it holds, so the count is
///   exact whatever is due when.
/// - A request of a committed cycle was **answered** when a reading of it came from a reply
///   (a value, a "not available", an exception, a decoding failure), and **maybe sent** when
///   answered or failed in transport (a timeout: the simulator may have answered late).
///
/// Checked by [`PollCount::assert_pass`], unless `skipped`:
/// - committed ≤ answered: answered requests of committed cycles ≤ the simulator's count
///   (the gateway never commits a reply the device did not give, nor one poll twice);
/// - answered − committed ≤ allowance: the simulator's count ≤ the maybe-sent requests of
///   committed cycles + `allowance` polls of the most requests each + the requests hidden in
///   declared gaps (each unstored sequence one reading, a cycle at least one per point due in
///   every cycle, plus two cut cycles per gap range, all charged to each device). The
///   allowance is one poll per gateway kill and one for the poll in flight at the final stop:
///   polls answered but not committed then are not yet obligations. A failpoint holds one
///   thread of the gateway while its poller runs on, which a crash would not: the requests
///   answered from the marker (at the latest) to the kill are allowed too
///   ([`Pipeline::gateway_stderr_line`]).
#[derive(Clone, Default)]
pub(crate) struct PollCount {
    /// The device.
    pub(crate) device: String,
    /// Requests the simulator answered (every incarnation of the gateway).
    pub(crate) answered_requests: u64,
    /// Requests of one poll with the points due in every cycle.
    pub(crate) requests_per_poll: u64,
    /// Requests of one poll with every point due.
    pub(crate) requests_per_poll_max: u64,
    /// Poll cycles among the committed (stored) readings.
    pub(crate) committed_polls: u64,
    /// Cycles stored in part only (at the edge of an evicted range), not counted above.
    pub(crate) partial_polls: u64,
    /// Requests of the committed cycles that the device answered.
    pub(crate) committed_answered: u64,
    /// Requests of the committed cycles that may have been sent.
    pub(crate) committed_sent: u64,
    /// Requests that may hide in declared gaps.
    pub(crate) hidden_requests: u64,
    /// Polls allowed in flight: gateway kills + 1.
    pub(crate) allowance: u64,
    /// Requests answered while a failpoint held the gateway (measured: from the last look
    /// at its stderr without the marker to the kill), also allowed.
    pub(crate) halted_requests: u64,
    /// Why the count is not checked, if it is not.
    pub(crate) skipped: Option<&'static str>,
}

/// Where a request of a committed cycle got, as its readings tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    NotSent,
    MaybeSent,
    Answered,
}

impl Outcome {
    fn of(r: &Reading) -> Self {
        match r.reason.as_deref() {
            _ if r.quality == Quality::Good => Self::Answered,
            Some(why) if NOT_SENT.contains(&why) => Self::NotSent,
            Some(why) if TRANSPORT_FAILURES.contains(&why) => Self::MaybeSent,
            _ => Self::Answered,
        }
    }
}

impl PollCount {
    /// The requests per poll of a device with `profile` polled every `interval`, and the
    /// committed figures of its committed `readings` (in sequence order); the rest is left
    /// at zero.
    fn committed(
        profile: &Profile,
        interval: Duration,
        readings: &[&Reading],
        hidden: Hidden,
    ) -> Self {
        let every: Vec<usize> = profile.reading_points().collect();
        let base: Vec<usize> = every
            .iter()
            .copied()
            .filter(|&i| profile.points[i].interval.is_none_or(|own| own <= interval))
            .collect();
        let mut count = Self {
            requests_per_poll: plan::plan(profile, &base).len() as u64,
            requests_per_poll_max: plan::plan(profile, &every).len() as u64,
            ..Self::default()
        };
        let mut plans: BTreeMap<Vec<usize>, Vec<ReadRequest>> = BTreeMap::new();
        for cycle in cycles(profile, readings) {
            if !base.iter().all(|i| cycle.contains_key(i)) {
                count.partial_polls += 1;
                continue;
            }
            let due: Vec<usize> = cycle.keys().copied().collect();
            let requests = plans
                .entry(due)
                .or_insert_with_key(|due| plan::plan(profile, due));
            let (answered, sent) = tally(requests, &cycle);
            count.committed_polls += 1;
            count.committed_answered += answered;
            count.committed_sent += sent;
        }
        if hidden.seqs > 0 {
            let cycles = hidden.seqs.div_ceil(base.len().max(1) as u64) + 2 * hidden.ranges;
            count.hidden_requests = cycles * count.requests_per_poll_max;
        }
        count
    }

    /// Polls the simulator answered, in polls of [`PollCount::requests_per_poll`].
    pub(crate) fn answered_polls(&self) -> f64 {
        self.answered_requests as f64 / self.requests_per_poll.max(1) as f64
    }

    /// Polls answered and not committed (in polls of [`PollCount::requests_per_poll`]).
    pub(crate) fn in_flight(&self) -> f64 {
        (self.answered_requests as f64 - self.committed_sent as f64)
            / self.requests_per_poll.max(1) as f64
    }

    /// Asserts committed ≤ answered and answered − committed ≤ allowance (see [`PollCount`]).
    pub(crate) fn assert_pass(&self, name: &str) {
        if let Err(e) = self.check() {
            panic!("{name}: {e}");
        }
    }

    /// What [`PollCount::assert_pass`] asserts: the first check that fails, if any.
    fn check(&self) -> Result<(), String> {
        if self.skipped.is_some() {
            return Ok(());
        }
        if self.committed_polls == 0 {
            return Err(format!("no committed poll: {self:?}"));
        }
        if self.committed_answered > self.answered_requests {
            return Err(format!(
                "the sink holds replies to more requests than the simulator answered: {self:?}"
            ));
        }
        let allowed = self.committed_sent
            + self.hidden_requests
            + self.halted_requests
            + self.allowance * self.requests_per_poll_max;
        if self.answered_requests > allowed {
            return Err(format!(
                "more polls answered and not committed than in flight at the kills and the \
                 stop: {self:?}"
            ));
        }
        Ok(())
    }
}

impl std::fmt::Debug for PollCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: answered {} requests = {:.1} polls of {}",
            self.device,
            self.answered_requests,
            self.answered_polls(),
            self.requests_per_poll
        )?;
        if self.requests_per_poll_max != self.requests_per_poll {
            write!(f, " (up to {})", self.requests_per_poll_max)?;
        }
        write!(
            f,
            ", committed {} polls ({} requests answered, {} maybe sent)",
            self.committed_polls, self.committed_answered, self.committed_sent
        )?;
        if self.partial_polls > 0 || self.hidden_requests > 0 {
            write!(
                f,
                " + {} partly stored, up to {} requests hidden in gaps",
                self.partial_polls, self.hidden_requests
            )?;
        }
        write!(
            f,
            ", not committed {:.1} polls, allowed {}",
            self.in_flight(),
            self.allowance
        )?;
        if self.halted_requests > 0 {
            write!(
                f,
                " + {} requests answered while halted at a failpoint",
                self.halted_requests
            )?;
        }
        match self.skipped {
            Some(why) => write!(f, " (not checked: {why})"),
            None => Ok(()),
        }
    }
}

/// A device's committed readings (in sequence order) cut into poll cycles, each as point
/// index → reading. A cycle's readings are one per due point in profile order, so a reading
/// whose point does not come after the previous one's starts the next cycle. A metric served
/// by several points takes the first of them after the previous point.
fn cycles<'a>(profile: &Profile, readings: &[&'a Reading]) -> Vec<BTreeMap<usize, &'a Reading>> {
    let mut points: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for i in profile.reading_points() {
        if let Some(m) = profile.points[i].metric {
            points.entry(m.id).or_default().push(i);
        }
    }
    let mut out: Vec<BTreeMap<usize, &Reading>> = Vec::new();
    let mut last: Option<usize> = None;
    for &r in readings {
        let Some(candidates) = points.get(r.metric.as_str()) else {
            continue; // Not the profile's: counted as corrupted.
        };
        let next = last.and_then(|l| candidates.iter().copied().find(|&i| i > l));
        let i = match next {
            Some(i) if !out.is_empty() => i,
            _ => {
                let Some(&first) = candidates.first() else {
                    continue;
                };
                out.push(BTreeMap::new());
                first
            }
        };
        if let Some(cycle) = out.last_mut() {
            cycle.insert(i, r);
        }
        last = Some(i);
    }
    out
}

/// Of the requests of one committed cycle: how many the device answered, and how many may
/// have been sent. A request whose points are all helpers (no reading of its own) counts as
/// sent when another request of the cycle was, and never as answered.
fn tally(requests: &[ReadRequest], cycle: &BTreeMap<usize, &Reading>) -> (u64, u64) {
    let (mut answered, mut sent, mut helpers) = (0, 0, 0);
    for req in requests {
        let outcome = req
            .points
            .iter()
            .filter_map(|p| cycle.get(p))
            .map(|r| Outcome::of(r))
            .max();
        match outcome {
            None => helpers += 1,
            Some(Outcome::Answered) => {
                answered += 1;
                sent += 1;
            }
            Some(Outcome::MaybeSent) => sent += 1,
            Some(Outcome::NotSent) => {}
        }
    }
    if sent > 0 {
        sent += helpers;
    }
    (answered, sent)
}

/// The simulator's count of answered requests of every device polled.
fn answered_requests(sim: &Sim, devices: &[DeviceConfig]) -> BTreeMap<String, u64> {
    devices
        .iter()
        .map(|d| {
            let n = sim
                .served_requests(&d.name)
                .expect("a device of the scenario");
            (d.name.to_string(), n)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An inverter whose plan has three requests (the temperature's scale factor is too far
    /// away to be read with it, so one request holds a helper point only) and a fourth, once
    /// an hour, for its serial number.
    fn profile() -> Profile {
        fivezero_profiles::load_str(
            Path::new("acme-inv.toml"),
            r#"
[device]
manufacturer = "Acme"
model = "Inv"
category = "pv_inverter"
source = "test"

[modbus]
max_registers = 4

[[point]]
name = "W"
metric = "pv.ac_power"
table = "holding"
address = 0
type = "i16"
unit = "W"
scale_factor = "W_SF"

[[point]]
name = "W_SF"
table = "holding"
address = 1
type = "i16"

[[point]]
name = "WH"
metric = "pv.energy"
table = "holding"
address = 2
type = "u32"
unit = "Wh"

[[point]]
name = "Tmp"
metric = "pv.cabinet_temperature"
table = "holding"
address = 20
type = "i16"
unit = "°C"
scale_factor = "Tmp_SF"

[[point]]
name = "Tmp_SF"
table = "holding"
address = 30
type = "i16"

[[point]]
name = "SN"
metric = "device.serial_number"
table = "holding"
address = 50
type = "string"
length = 2
interval = "1h"
"#,
        )
        .expect("the test profile is valid")
    }

    fn reading(metric: &str, why: Option<&str>) -> Reading {
        Reading {
            ts: 1_000,
            device: "inv".into(),
            metric: metric.into(),
            value: why.is_none().then_some(Value::Number(1.0)),
            quality: if why.is_none() {
                Quality::Good
            } else {
                Quality::Error
            },
            reason: why.map(str::to_owned),
        }
    }

    /// A cut cycle, then: all good; all good with the hourly point; a timeout at the second
    /// request (the third is not sent); the unit offline (nothing sent).
    fn readings() -> Vec<Reading> {
        let (w, wh, tmp, sn) = (
            "pv.ac_power",
            "pv.energy",
            "pv.cabinet_temperature",
            "device.serial_number",
        );
        let offline = Some("unit offline");
        vec![
            reading(wh, None),
            reading(tmp, None),
            reading(w, None),
            reading(wh, None),
            reading(tmp, None),
            reading(w, None),
            reading(wh, None),
            reading(tmp, None),
            reading(sn, None),
            reading(w, None),
            reading(wh, None),
            reading(tmp, Some("timeout")),
            reading(w, offline),
            reading(wh, offline),
            reading(tmp, offline),
        ]
    }

    fn counted() -> PollCount {
        let profile = profile();
        let rows = readings();
        let refs: Vec<&Reading> = rows.iter().collect();
        let none = Hidden { seqs: 0, ranges: 0 };
        PollCount {
            device: "inv".into(),
            allowance: 1,
            ..PollCount::committed(&profile, Duration::from_millis(200), &refs, none)
        }
    }

    #[test]
    fn committed_cycles_and_their_requests_are_counted_from_the_plan() {
        let c = counted();
        assert_eq!((c.requests_per_poll, c.requests_per_poll_max), (3, 4));
        assert_eq!((c.committed_polls, c.partial_polls), (4, 1));
        // Answered: 2 + 3 + 1 + 0; maybe sent: 3 + 4 + 3 (the helper's request counts with
        // the cycle) + 0.
        assert_eq!((c.committed_answered, c.committed_sent), (6, 10));
    }

    #[test]
    fn answered_polls_within_the_allowance_pass() {
        let mut c = counted();
        c.answered_requests = 10 + 4;
        assert_eq!(c.check(), Ok(()));
        c.answered_requests = 6;
        assert_eq!(c.check(), Ok(()));
        // Requests answered while a failpoint held the gateway widen the allowance.
        c.answered_requests = 10 + 4 + 2;
        c.halted_requests = 2;
        assert_eq!(c.check(), Ok(()));
    }

    #[test]
    fn more_answered_polls_than_in_flight_fail() {
        let mut c = counted();
        c.answered_requests = 10 + 4 + 1;
        let e = c.check().expect_err("one request too many");
        assert!(e.contains("more polls answered and not committed"), "{e}");
        c.skipped = Some("test");
        assert_eq!(c.check(), Ok(()), "not checked when skipped");
    }

    #[test]
    fn committed_replies_the_simulator_did_not_give_fail() {
        let mut c = counted();
        c.answered_requests = 5;
        let e = c.check().expect_err("one reply made up");
        assert!(e.contains("replies to more requests than"), "{e}");
    }

    #[test]
    fn evicted_sequences_widen_the_allowance() {
        let profile = profile();
        let rows = readings();
        let refs: Vec<&Reading> = rows.iter().collect();
        let gaps = Hidden { seqs: 7, ranges: 1 };
        let c = PollCount::committed(&profile, Duration::from_millis(200), &refs, gaps);
        // ⌈7 / 3 readings a cycle⌉ + 2 cut cycles, of 4 requests at most.
        assert_eq!(c.hidden_requests, (3 + 2) * 4);
    }
}
