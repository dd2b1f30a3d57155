//! Test devices for the poller: a tokio-modbus TCP server and an RTU bus on in-memory
//! duplex pipes, both serving register images made with the profile codec.

#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fivezero_gateway::config::Config;
use fivezero_gateway::poll::transport::{BoxFuture, Connect};
use fivezero_gateway::poll::{DeviceReadings, LinkAddr, Transports};
use fivezero_profiles::codec::{self, RegisterImage};
use fivezero_profiles::{Profile, Table, load_file};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_modbus::client::Context;
use tokio_modbus::server::Service;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

/// An hour boundary (2023-11-14T22:00:00Z), so every point with an hourly interval is due in
/// the first cycle.
pub const HOUR_ALIGNED_MS: i64 = 1_700_000_000_000 - 1_700_000_000_000 % 3_600_000;

/// The shipped profile library.
pub fn library() -> PathBuf {
    fivezero_profiles::library_dir()
}

/// A profile of the library.
pub fn library_profile(id: &str) -> Arc<Profile> {
    Arc::new(load_file(&library().join(format!("{id}.toml"))).expect("library profile loads"))
}

/// A scratch folder unique to this test process and name.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "fivezero-gateway-test-{}-{name}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

/// A config from `text` (placed in a scratch folder named `name`), no environment.
pub fn config(name: &str, text: &str) -> Config {
    let file = scratch(name).join("gateway.toml");
    std::fs::write(&file, text).expect("write config");
    match Config::load_with_env(&file, Vec::new()) {
        Ok(c) => c,
        Err(e) => panic!("config refused:\n{e}"),
    }
}

/// The `[gateway]` and `[poll]` sections tests use: fast backoff, misconfigured blocks not
/// retried within a test.
pub fn head(backoff_max: &str) -> String {
    format!(
        r#"
[gateway]
id = "gw-test"
site = "site-test"
state_dir = "state"

[poll]
connect_timeout = "1s"
backoff_min = "100ms"
backoff_max = "{backoff_max}"
"#
    )
}

/// Every reading point of `profile` set to a distinct value (text points get "SN-…").
pub fn image_for(profile: &Profile) -> RegisterImage {
    let mut image = RegisterImage::new();
    for (i, p) in profile.points.iter().enumerate() {
        if p.metric.is_none() {
            continue;
        }
        if let fivezero_profiles::DataType::Ascii(_) = p.data_type {
            codec::encode_text(profile, i, "SN-1", &mut image).expect("text encodes");
            continue;
        }
        let value = if p.data_type.is_numeric() && p.data_type.width() == 1 {
            (i % 7) as f64
        } else {
            1.5 + i as f64
        };
        codec::encode(profile, i, value, &mut image)
            .unwrap_or_else(|e| panic!("point {} encodes: {e}", p.name));
    }
    image
}

/// Receives the next readings, failing the test after `limit`.
pub async fn next(rx: &mut mpsc::Receiver<DeviceReadings>, limit: Duration) -> DeviceReadings {
    match tokio::time::timeout(limit, rx.recv()).await {
        Ok(Some(r)) => r,
        Ok(None) => panic!("the readings channel closed"),
        Err(_) => panic!("no readings within {limit:?}"),
    }
}

/// Receives readings until one of `device` satisfies `pred`, failing after `limit` overall.
pub async fn until(
    rx: &mut mpsc::Receiver<DeviceReadings>,
    limit: Duration,
    mut pred: impl FnMut(&DeviceReadings) -> bool,
) -> DeviceReadings {
    let end = Instant::now() + limit;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let r = next(rx, left).await;
        if pred(&r) {
            return r;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A Modbus TCP server (tokio-modbus) serving images, with faults.
// ---------------------------------------------------------------------------------------------

/// What the server does with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this exception code.
    Exception(u8),
    /// Do not answer at all.
    Silence,
    /// Answer with one register fewer than asked.
    Short,
}

/// Which requests a fault applies to: unit and (table, start), or any request of the unit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub unit: u8,
    pub block: Option<(Table, u16)>,
}

#[derive(Debug, Default)]
pub struct ServerState {
    pub images: Mutex<HashMap<u8, RegisterImage>>,
    pub faults: Mutex<HashMap<Target, Fault>>,
    /// Faults that apply once, then clear.
    pub once: Mutex<HashMap<Target, Fault>>,
    pub connections: AtomicUsize,
    /// Every request seen: unit, table, start, count.
    pub log: Mutex<Vec<(u8, Table, u16, u16)>>,
}

impl ServerState {
    pub fn requests_for(&self, unit: u8, table: Table, start: u16) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(u, t, s, _)| *u == unit && *t == table && *s == start)
            .count()
    }

    fn fault(&self, unit: u8, table: Table, start: u16) -> Option<Fault> {
        let keys = [
            Target {
                unit,
                block: Some((table, start)),
            },
            Target { unit, block: None },
        ];
        for k in &keys {
            if let Some(f) = self.once.lock().unwrap().remove(k) {
                return Some(f);
            }
        }
        let faults = self.faults.lock().unwrap();
        keys.iter().find_map(|k| faults.get(k).cloned())
    }

    /// The answer to a read: `Ok(None)` means silence.
    fn answer(&self, unit: u8, req: &Request<'_>) -> Result<Option<Response>, ExceptionCode> {
        let (table, start, count) = match *req {
            Request::ReadCoils(a, n) => (Table::Coil, a, n),
            Request::ReadDiscreteInputs(a, n) => (Table::Discrete, a, n),
            Request::ReadHoldingRegisters(a, n) => (Table::Holding, a, n),
            Request::ReadInputRegisters(a, n) => (Table::Input, a, n),
            _ => return Err(ExceptionCode::IllegalFunction),
        };
        self.log.lock().unwrap().push((unit, table, start, count));
        let fault = self.fault(unit, table, start);
        match fault {
            Some(Fault::Exception(code)) => return Err(ExceptionCode::new(code)),
            Some(Fault::Silence) => return Ok(None),
            _ => {}
        }
        let images = self.images.lock().unwrap();
        let Some(image) = images.get(&unit) else {
            return Ok(None);
        };
        let short = u16::from(fault == Some(Fault::Short));
        if table.is_bits() {
            let bits: Vec<bool> = (start..start.saturating_add(count))
                .map(|a| image.bit(table, a).unwrap_or(false))
                .collect();
            return Ok(Some(if table == Table::Coil {
                Response::ReadCoils(bits)
            } else {
                Response::ReadDiscreteInputs(bits)
            }));
        }
        let words: Vec<u16> = (start..start.saturating_add(count - short))
            .map(|a| image.registers(table, a, 1).map_or(0, |w| w[0]))
            .collect();
        Ok(Some(if table == Table::Holding {
            Response::ReadHoldingRegisters(words)
        } else {
            Response::ReadInputRegisters(words)
        }))
    }
}

#[derive(Debug, Clone)]
struct TcpService(Arc<ServerState>);

impl Service for TcpService {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Result<Option<Response>, ExceptionCode>> + Send>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let out = self.0.answer(req.slave, &req.request);
        Box::pin(async move { out })
    }
}

/// Starts a Modbus TCP server on 127.0.0.1:0 serving `state`; returns its address.
pub async fn tcp_server(state: Arc<ServerState>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let server = tokio_modbus::server::tcp::Server::new(listener);
    tokio::spawn(async move {
        let on_connected = |stream, _peer| {
            let state = Arc::clone(&state);
            async move {
                state.connections.fetch_add(1, Ordering::SeqCst);
                Ok(Some((TcpService(state), stream)))
            }
        };
        let _ = server.serve(&on_connected, |_err| {}).await;
    });
    addr
}

// ---------------------------------------------------------------------------------------------
// An RTU bus on in-memory pipes.
// ---------------------------------------------------------------------------------------------

/// How one unit on the bus behaves.
#[derive(Debug, Clone)]
pub enum BusUnit {
    /// Answers from its image at once.
    Serve(RegisterImage),
    /// Answers from its image after a delay.
    Slow(RegisterImage, Duration),
    /// Never answers.
    Dead,
}

/// Something the bus saw, with the (tokio) time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusEvent {
    /// A complete request frame arrived for this unit.
    Request(u8),
    /// A reply frame left for this unit.
    Reply(u8),
}

/// A serial bus carrying RTU frames over `tokio::io::duplex`; every link the poller opens
/// gets a fresh pipe (as reopening a port would).
#[derive(Debug, Default)]
pub struct Bus {
    pub units: Mutex<BTreeMap<u8, BusUnit>>,
    pub opened: AtomicUsize,
    pub events: Mutex<Vec<(Instant, BusEvent)>>,
}

impl Bus {
    pub fn new(units: impl IntoIterator<Item = (u8, BusUnit)>) -> Arc<Self> {
        Arc::new(Self {
            units: Mutex::new(units.into_iter().collect()),
            ..Self::default()
        })
    }

    pub fn events(&self) -> Vec<(Instant, BusEvent)> {
        self.events.lock().unwrap().clone()
    }
}

/// The poller's transports for tests: every link is a pipe to `bus`.
#[derive(Debug)]
pub struct BusTransports(pub Arc<Bus>);

impl Transports for BusTransports {
    fn connector(&self, _link: &LinkAddr) -> Arc<dyn Connect> {
        Arc::new(BusConnect(Arc::clone(&self.0)))
    }
}

#[derive(Debug)]
struct BusConnect(Arc<Bus>);

impl Connect for BusConnect {
    fn connect(&self) -> BoxFuture<'_, io::Result<Context>> {
        Box::pin(async move {
            let (client, server) = tokio::io::duplex(1024);
            self.0.opened.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve_bus(Arc::clone(&self.0), server));
            Ok(tokio_modbus::client::rtu::attach(client))
        })
    }
}

/// CRC-16/MODBUS.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc = 0xFFFFu16;
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

fn with_crc(mut frame: Vec<u8>) -> Vec<u8> {
    let crc = crc16(&frame);
    frame.extend_from_slice(&crc.to_le_bytes());
    frame
}

async fn serve_bus(bus: Arc<Bus>, mut pipe: DuplexStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 256];
    loop {
        let n = match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        // Read requests are 8 bytes: unit, function, address, count, CRC.
        while buf.len() >= 8 {
            let frame: Vec<u8> = buf.drain(..8).collect();
            if crc16(&frame[..6]).to_le_bytes() != [frame[6], frame[7]] {
                continue;
            }
            let unit = frame[0];
            bus.events
                .lock()
                .unwrap()
                .push((Instant::now(), BusEvent::Request(unit)));
            let behaviour = bus.units.lock().unwrap().get(&unit).cloned();
            let (image, delay) = match behaviour {
                Some(BusUnit::Serve(image)) => (image, Duration::ZERO),
                Some(BusUnit::Slow(image, d)) => (image, d),
                Some(BusUnit::Dead) | None => continue,
            };
            let reply = rtu_reply(&frame, &image);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            bus.events
                .lock()
                .unwrap()
                .push((Instant::now(), BusEvent::Reply(unit)));
            if pipe.write_all(&reply).await.is_err() {
                return;
            }
        }
    }
}

fn rtu_reply(frame: &[u8], image: &RegisterImage) -> Vec<u8> {
    let (unit, function) = (frame[0], frame[1]);
    let start = u16::from_be_bytes([frame[2], frame[3]]);
    let count = u16::from_be_bytes([frame[4], frame[5]]);
    let table = match function {
        1 => Table::Coil,
        2 => Table::Discrete,
        3 => Table::Holding,
        4 => Table::Input,
        _ => return with_crc(vec![unit, function | 0x80, 1]),
    };
    let mut out = vec![unit, function];
    if table.is_bits() {
        let mut bytes = vec![0u8; usize::from(count).div_ceil(8)];
        for i in 0..count {
            if image.bit(table, start + i).unwrap_or(false) {
                bytes[usize::from(i / 8)] |= 1 << (i % 8);
            }
        }
        out.push(u8::try_from(bytes.len()).unwrap());
        out.extend(bytes);
    } else {
        out.push(u8::try_from(count * 2).unwrap());
        for a in start..start + count {
            let w = image.registers(table, a, 1).map_or(0, |w| w[0]);
            out.extend_from_slice(&w.to_be_bytes());
        }
    }
    with_crc(out)
}

/// Writes `text` as a profile file in a scratch folder; returns its path.
pub fn profile_file(folder: &str, id: &str, text: &str) -> PathBuf {
    let path = scratch(folder).join(format!("{id}.toml"));
    std::fs::write(&path, text).expect("write profile");
    path
}

/// Loads a profile file written by [`profile_file`].
pub fn load(path: &Path) -> Arc<Profile> {
    Arc::new(load_file(path).expect("test profile is valid"))
}
