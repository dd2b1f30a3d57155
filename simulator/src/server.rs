//! Serving a scenario over Modbus TCP.
//!
//! [`Simulator::start`] opens one public TCP listener per distinct `listener` name of the
//! scenario (devices on one listener share it and are told apart by unit id, like the devices
//! behind a serial-to-TCP gateway). Each public listener is an MBAP-aware proxy
//! ([`crate::proxy`]) in front of a tokio-modbus server bound to an ephemeral loopback port; the
//! proxy injects the frame-level [`Fault`]s, the tokio-modbus service answers from the devices'
//! register images.
//!
//! # Time and values
//!
//! Simulated time is `site.start_ms + speed × (wall time since start)`, measured on the
//! monotonic clock. On every request the physics is advanced to the current simulated time;
//! when the device's image was encoded at another physics step it is encoded anew from the
//! physics values, then the request is answered from the image. Encoding, per device update:
//!
//! 1. Scale-factor helper points (points other points name as `scale_factor`): the simulator
//!    picks the smallest factor in −4..=10 (the most precision) with which every dependant's raw
//!    value fits its type, writes it, then encodes the dependants with it, so a value and its
//!    factor always agree within one image. Counters that would need to wrap are fitted without
//!    wrapping when some factor allows it.
//! 2. Numeric points with [`fivezero_profiles::codec::encode`]. A counter of an unsigned integer
//!    type (u16, u32, u64) that no longer fits is wrapped: the raw count modulo 2^bits is written
//!    with `encode_raw`, exactly as a real meter rolls over.
//! 3. Text points with `encode_text` (non-ASCII characters become `?`, too long text is cut).
//! 4. A metric the physics does not produce, or a value that cannot be written: the point's
//!    not-available sentinel (or NaN for floats) when it has one, else zero. The snapshot says
//!    which ([`ValueSource`]).
//!
//! Registers and bits no point covers read as 0.
//!
//! # Modbus semantics
//!
//! Functions 01, 02, 03 and 04 are served; any other function gets exception 01. A unit id no
//! device of the listener has gets exception 0x0B (gateway target failed to respond). A quantity
//! of 0 or above the profile's `max_registers` / `max_bits` (at most 125 / 2000) gets exception
//! 03; a range past address 65 535 gets exception 02.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use fivezero_model::Kind;
use fivezero_profiles::codec::{self, Decoded, EncodeError, NotAvailable, RegisterImage};
use fivezero_profiles::{DataType, Point, Profile, Table};
use serde::Serialize;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

use crate::Physics;
use crate::fault::Fault;
use crate::scenario::{MAIN_LISTENER, Scenario};

/// Most registers Modbus allows in one read.
const MODBUS_MAX_REGISTERS: u16 = 125;

/// Most coils or discrete inputs Modbus allows in one read.
const MODBUS_MAX_BITS: u16 = 2000;

/// Scale factors the simulator chooses from, most precise first.
const SF_CHOICES: std::ops::RangeInclusive<i16> = -4..=10;

/// How the simulator is run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Options {
    /// Address of the `main` listener (port 0 for a free port).
    pub listen: SocketAddr,
    /// Simulated seconds per wall-clock second (finite, ≥ 0; 0 freezes the clock).
    pub speed: f64,
    /// Address of the HTTP control endpoint, if one is wanted (normally loopback).
    pub control: Option<SocketAddr>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            speed: 1.0,
            control: None,
        }
    }
}

/// Why the simulator could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// `speed` is negative, NaN or infinite.
    #[error("speed {0} must be a finite number ≥ 0")]
    InvalidSpeed(f64),
    /// The address of a listener in `[listeners]` cannot be resolved.
    #[error("listener `{listener}`: address {address:?} cannot be resolved: {reason}")]
    ListenerAddress {
        /// The listener name.
        listener: String,
        /// The address as configured.
        address: String,
        /// What went wrong.
        reason: String,
    },
    /// A socket could not be bound.
    #[error("{what}: cannot listen on {addr}: {source}")]
    Bind {
        /// Which socket (listener name, internal server or control endpoint).
        what: String,
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A device name the scenario does not have.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("no device named `{0}` in the scenario")]
pub struct UnknownDevice(pub String);

/// Starts simulators; see [`Simulator::start`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Simulator;

impl Simulator {
    /// Binds every listener, starts serving `scenario` with `physics`, and returns a handle to
    /// inspect and steer the running simulator. The listeners are bound when this returns.
    ///
    /// # Errors
    /// [`StartError`] for an invalid speed or an address that cannot be bound or resolved.
    pub async fn start(
        scenario: Scenario,
        physics: Box<dyn Physics>,
        options: Options,
    ) -> Result<SimulatorHandle, StartError> {
        if !options.speed.is_finite() || options.speed < 0.0 {
            return Err(StartError::InvalidSpeed(options.speed));
        }
        let names = listener_names(&scenario);
        let mut public = Vec::with_capacity(names.len());
        let mut addrs = BTreeMap::new();
        for name in &names {
            let addr = if name == MAIN_LISTENER {
                options.listen
            } else if let Some(configured) = scenario.listeners.get(name) {
                resolve(name, configured).await?
            } else {
                SocketAddr::new(options.listen.ip(), 0)
            };
            let listener = bind(name, addr).await?;
            let local = listener.local_addr().map_err(|source| StartError::Bind {
                what: format!("listener `{name}`"),
                addr,
                source,
            })?;
            addrs.insert(name.clone(), local);
            public.push((name.clone(), listener));
        }

        let shared = Arc::new(Shared::new(scenario, physics, options.speed, addrs.clone()));
        let mut tasks = Vec::new();
        for (name, listener) in public {
            let internal_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
            let internal = bind(&format!("internal server of `{name}`"), internal_addr).await?;
            let upstream = internal.local_addr().map_err(|source| StartError::Bind {
                what: format!("internal server of `{name}`"),
                addr: internal_addr,
                source,
            })?;
            let route = Arc::new(Route::new(Arc::clone(&shared), &name));
            tasks.push(tokio::spawn(serve_internal(internal, Arc::clone(&route))));
            tasks.push(tokio::spawn(crate::proxy::accept_loop(
                listener, upstream, route,
            )));
            tracing::debug!(listener = %name, %upstream, "internal Modbus server started");
        }

        let mut control = None;
        if let Some(addr) = options.control {
            if !addr.ip().is_loopback() {
                tracing::warn!(%addr, "the control endpoint has no authentication and is not on loopback");
            }
            let listener = bind("control endpoint", addr).await?;
            let local = listener.local_addr().map_err(|source| StartError::Bind {
                what: "control endpoint".into(),
                addr,
                source,
            })?;
            control = Some(local);
            tasks.push(tokio::spawn(crate::control::serve(
                listener,
                Arc::clone(&shared),
            )));
        }

        Ok(SimulatorHandle {
            shared,
            listeners: addrs,
            control,
            tasks,
        })
    }
}

/// The distinct listener names of a scenario, `main` first, then in order of first use.
fn listener_names(scenario: &Scenario) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for d in &scenario.devices {
        if !names.contains(&d.listener) {
            names.push(d.listener.clone());
        }
    }
    names.sort_by_key(|n| n != MAIN_LISTENER);
    names
}

async fn resolve(name: &str, configured: &str) -> Result<SocketAddr, StartError> {
    if let Ok(addr) = configured.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let err = |reason: String| StartError::ListenerAddress {
        listener: name.to_owned(),
        address: configured.to_owned(),
        reason,
    };
    tokio::net::lookup_host(configured)
        .await
        .map_err(|e| err(e.to_string()))?
        .next()
        .ok_or_else(|| err("no address found".into()))
}

async fn bind(what: &str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            what: what.to_owned(),
            addr,
            source,
        })
}

/// Runs the tokio-modbus server of one listener until the task is aborted (which also ends its
/// connections).
async fn serve_internal(listener: TcpListener, route: Arc<Route>) {
    let server = tokio_modbus::server::tcp::Server::new(listener);
    let service = Arc::new(ModbusService { route });
    let on_connected = |stream, socket_addr| {
        let service = Arc::clone(&service);
        async move {
            tokio_modbus::server::tcp::accept_tcp_connection(stream, socket_addr, |_| {
                Ok(Some(Arc::clone(&service)))
            })
        }
    };
    let on_error = |err: std::io::Error| tracing::debug!("internal Modbus connection ended: {err}");
    if let Err(err) = server.serve(&on_connected, on_error).await {
        tracing::error!("internal Modbus server stopped: {err}");
    }
}

/// A running simulator. Dropping it stops every listener, like [`SimulatorHandle::shutdown`].
pub struct SimulatorHandle {
    shared: Arc<Shared>,
    listeners: BTreeMap<String, SocketAddr>,
    control: Option<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl fmt::Debug for SimulatorHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimulatorHandle")
            .field("listeners", &self.listeners)
            .field("control", &self.control)
            .field("sim_time_ms", &self.sim_time_ms())
            .finish_non_exhaustive()
    }
}

/// One public listener and the devices behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListenerInfo {
    /// The listener name from the scenario (`main` for the command-line address).
    pub name: String,
    /// The address it is bound to.
    pub addr: SocketAddr,
    /// Names and unit ids of its devices, in scenario order.
    pub devices: Vec<(String, u8)>,
}

/// What the control endpoint lists per device.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceInfo {
    /// Device name.
    pub name: String,
    /// Modbus unit id.
    pub unit_id: u8,
    /// Listener name.
    pub listener: String,
    /// Address of the listener.
    pub addr: Option<SocketAddr>,
    /// Profile id.
    pub profile: String,
    /// The fault currently set, if any.
    pub fault: Option<Fault>,
    /// Requests the device has answered (including exceptions).
    pub served_requests: u64,
}

impl SimulatorHandle {
    /// The address listener `listener` is bound to (`main` for [`Options::listen`]).
    #[must_use]
    pub fn addr(&self, listener: &str) -> Option<SocketAddr> {
        self.listeners.get(listener).copied()
    }

    /// Every listener with its address and devices, `main` first.
    #[must_use]
    pub fn listeners(&self) -> Vec<ListenerInfo> {
        let mut out: Vec<ListenerInfo> = self
            .listeners
            .iter()
            .map(|(name, addr)| ListenerInfo {
                name: name.clone(),
                addr: *addr,
                devices: self
                    .shared
                    .scenario
                    .devices
                    .iter()
                    .filter(|d| &d.listener == name)
                    .map(|d| (d.name.clone(), d.unit_id))
                    .collect(),
            })
            .collect();
        out.sort_by_key(|l| l.name != MAIN_LISTENER);
        out
    }

    /// The address of the control endpoint, when one was asked for.
    #[must_use]
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.control
    }

    /// The scenario being served.
    #[must_use]
    pub fn scenario(&self) -> &Scenario {
        &self.shared.scenario
    }

    /// Every device with its unit id, listener, profile, fault and request counter.
    #[must_use]
    pub fn devices(&self) -> Vec<DeviceInfo> {
        self.shared.devices_info()
    }

    /// Switches `device` into `fault` (replacing any other) until [`Self::clear_fault`].
    ///
    /// # Errors
    /// [`UnknownDevice`] when the scenario has no such device.
    pub fn set_fault(&self, device: &str, fault: Fault) -> Result<(), UnknownDevice> {
        self.shared.set_fault(device, Some(fault)).map(|_| ())
    }

    /// Clears the fault of `device`; returns the fault it had.
    ///
    /// # Errors
    /// [`UnknownDevice`] when the scenario has no such device.
    pub fn clear_fault(&self, device: &str) -> Result<Option<Fault>, UnknownDevice> {
        self.shared.set_fault(device, None)
    }

    /// The fault `device` is in, if any (`None` also for an unknown device).
    #[must_use]
    pub fn fault(&self, device: &str) -> Option<Fault> {
        self.shared
            .scenario
            .device_index(device)
            .and_then(|i| self.shared.fault_of(i))
    }

    /// The device's registers as last served, with every point's value as a client decodes it
    /// (the truth to compare a gateway against). Encodes the image first if no request has
    /// reached the device yet. `None` for an unknown device.
    #[must_use]
    pub fn snapshot(&self, device: &str) -> Option<DeviceSnapshot> {
        let i = self.shared.scenario.device_index(device)?;
        self.shared.snapshot(i, false)
    }

    /// Like [`Self::snapshot`], after bringing the device to the current simulated time.
    #[must_use]
    pub fn snapshot_now(&self, device: &str) -> Option<DeviceSnapshot> {
        let i = self.shared.scenario.device_index(device)?;
        self.shared.snapshot(i, true)
    }

    /// The current simulated time, UTC milliseconds.
    #[must_use]
    pub fn sim_time_ms(&self) -> i64 {
        self.shared.clock.now_ms()
    }

    /// Requests `device` has answered (including exceptions; swallowed requests are not
    /// counted). `None` for an unknown device.
    #[must_use]
    pub fn served_requests(&self, device: &str) -> Option<u64> {
        let i = self.shared.scenario.device_index(device)?;
        self.shared
            .devices
            .get(i)
            .map(|d| d.requests.load(Ordering::Relaxed))
    }

    /// Stops every listener, connection and the control endpoint, and waits for them to end.
    pub async fn shutdown(mut self) {
        let tasks = std::mem::take(&mut self.tasks);
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

impl Drop for SimulatorHandle {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Snapshot types
// ---------------------------------------------------------------------------------------------

/// A device's register image as served, point by point.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceSnapshot {
    /// Device name.
    pub device: String,
    /// Modbus unit id.
    pub unit_id: u8,
    /// Listener name.
    pub listener: String,
    /// Profile id.
    pub profile: String,
    /// The simulated time (UTC ms) of the physics step the image was encoded at.
    pub sim_time_ms: i64,
    /// Requests the device has answered so far.
    pub served_requests: u64,
    /// The fault currently set, if any.
    pub fault: Option<Fault>,
    /// Every point of the profile, in profile order.
    pub points: Vec<PointSnapshot>,
}

impl DeviceSnapshot {
    /// The point with this name.
    #[must_use]
    pub fn point(&self, name: &str) -> Option<&PointSnapshot> {
        self.points.iter().find(|p| p.name == name)
    }
}

/// One point of a [`DeviceSnapshot`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PointSnapshot {
    /// Point name from the profile.
    pub name: String,
    /// Metric id; `None` for a scale-factor helper.
    pub metric: Option<&'static str>,
    /// Register table (`holding`, `input`, `coil`, `discrete`).
    pub table: &'static str,
    /// 0-based address of the first register or bit.
    pub address: u16,
    /// What a client decodes from the served registers (canonical unit).
    pub value: ServedValue,
    /// Where the served value comes from.
    pub source: ValueSource,
    /// The value the physics gave for the point's metric, before encoding (counters before
    /// rollover); `None` when it gave none or the point is text or a scale factor.
    pub physics: Option<f64>,
    /// The raw words as served, in wire order (a coil or discrete input as one word, 0 or 1).
    pub words: Vec<u16>,
}

/// A served value, as the codec decodes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServedValue {
    /// A number in the metric's canonical unit (for a scale-factor helper: the factor).
    Number(f64),
    /// Text of a string point.
    Text(String),
    /// The registers say "not available"; why.
    NotAvailable(String),
}

impl ServedValue {
    /// The number, if this is one.
    #[must_use]
    pub fn number(&self) -> Option<f64> {
        match self {
            Self::Number(x) => Some(*x),
            _ => None,
        }
    }

    /// The text, if this is text.
    #[must_use]
    pub fn text(&self) -> Option<&str> {
        match self {
            Self::Text(t) => Some(t),
            _ => None,
        }
    }

    /// Whether a client reads "not available".
    #[must_use]
    pub fn is_not_available(&self) -> bool {
        matches!(self, Self::NotAvailable(_))
    }

    /// The served value for a decode result.
    #[must_use]
    pub fn from_decoded(d: Decoded) -> Self {
        match d {
            Decoded::Number(x) => Self::Number(x),
            Decoded::Text(t) => Self::Text(t),
            Decoded::NotAvailable(why) => Self::NotAvailable(describe(why)),
        }
    }
}

fn describe(why: NotAvailable) -> String {
    match why {
        NotAvailable::Sentinel(s) => format!("sentinel {s:#X}"),
        NotAvailable::NotANumber => "not a number".into(),
        NotAvailable::ScaleFactorNotAvailable => "scale factor not available".into(),
        NotAvailable::ScaleFactorOutOfRange(sf) => format!("scale factor {sf} out of range"),
    }
}

/// Where a served value comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ValueSource {
    /// The physics value (or text), encoded as is.
    Physics,
    /// A counter that rolled over: the physics total's raw count modulo the register range.
    Wrapped,
    /// A scale factor chosen by the simulator for its dependants.
    ScaleFactor,
    /// The physics produces no value for the metric: the not-available sentinel (or NaN) was
    /// written when the point has one, else zero.
    NotProduced,
    /// The physics value could not be written (out of range, a sentinel pattern ...): the
    /// not-available sentinel or zero was written instead.
    EncodeFailed {
        /// What the codec said.
        error: String,
    },
}

// ---------------------------------------------------------------------------------------------
// Shared state
// ---------------------------------------------------------------------------------------------

/// The simulated clock.
#[derive(Debug, Clone, Copy)]
struct Clock {
    start: Instant,
    start_ms: i64,
    speed: f64,
}

impl Clock {
    fn now_ms(&self) -> i64 {
        let elapsed_ms = self.start.elapsed().as_secs_f64() * 1000.0 * self.speed;
        // `as` saturates; the clock cannot run past i64 in practice.
        self.start_ms.saturating_add(elapsed_ms as i64)
    }
}

/// State shared by the proxy, the Modbus service, the control endpoint and the handle.
pub(crate) struct Shared {
    pub(crate) scenario: Scenario,
    clock: Clock,
    physics: Mutex<Box<dyn Physics>>,
    devices: Vec<Device>,
    listeners: BTreeMap<String, SocketAddr>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("clock", &self.clock)
            .field("listeners", &self.listeners)
            .finish_non_exhaustive()
    }
}

/// Per-device serving state.
struct Device {
    plan: EncodePlan,
    state: Mutex<DeviceState>,
    fault: Mutex<Option<Fault>>,
    requests: AtomicU64,
}

struct DeviceState {
    image: RegisterImage,
    /// The physics time the image was encoded at; `None` before the first encoding.
    encoded_at: Option<i64>,
    /// Per point: where the value came from and the physics value.
    points: Vec<(ValueSource, Option<f64>)>,
}

/// Locks a mutex, recovering from poisoning (a panic elsewhere never stops the simulator).
fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn new(
        scenario: Scenario,
        physics: Box<dyn Physics>,
        speed: f64,
        listeners: BTreeMap<String, SocketAddr>,
    ) -> Self {
        let devices = scenario
            .devices
            .iter()
            .map(|d| Device {
                plan: EncodePlan::new(&d.profile),
                state: Mutex::new(DeviceState {
                    image: RegisterImage::new(),
                    encoded_at: None,
                    points: vec![(ValueSource::NotProduced, None); d.profile.points.len()],
                }),
                fault: Mutex::new(None),
                requests: AtomicU64::new(0),
            })
            .collect();
        let clock = Clock {
            start: Instant::now(),
            start_ms: scenario.site.start_ms,
            speed,
        };
        Self {
            scenario,
            clock,
            physics: Mutex::new(physics),
            devices,
            listeners,
        }
    }

    pub(crate) fn fault_of(&self, device: usize) -> Option<Fault> {
        self.devices.get(device).and_then(|d| *lock(&d.fault))
    }

    /// Sets or clears the fault of the named device; returns the previous one.
    pub(crate) fn set_fault(
        &self,
        name: &str,
        fault: Option<Fault>,
    ) -> Result<Option<Fault>, UnknownDevice> {
        let device = self
            .scenario
            .device_index(name)
            .and_then(|i| self.devices.get(i))
            .ok_or_else(|| UnknownDevice(name.to_owned()))?;
        let previous = std::mem::replace(&mut *lock(&device.fault), fault);
        match fault {
            Some(f) => tracing::info!(device = name, fault = %f, "fault set"),
            None => tracing::info!(device = name, "fault cleared"),
        }
        Ok(previous)
    }

    pub(crate) fn devices_info(&self) -> Vec<DeviceInfo> {
        self.scenario
            .devices
            .iter()
            .zip(&self.devices)
            .map(|(spec, d)| DeviceInfo {
                name: spec.name.clone(),
                unit_id: spec.unit_id,
                listener: spec.listener.clone(),
                addr: self.listeners.get(&spec.listener).copied(),
                profile: spec.profile.id.clone(),
                fault: *lock(&d.fault),
                served_requests: d.requests.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Brings the device's image to the current simulated time, then runs `f` on it.
    fn with_fresh_image<R>(&self, dev: usize, f: impl FnOnce(&DeviceState) -> R) -> Option<R> {
        let device = self.devices.get(dev)?;
        let spec = self.scenario.devices.get(dev)?;
        let mut physics = lock(&self.physics);
        physics.advance_to(self.clock.now_ms());
        let t = physics.now_ms();
        let mut state = lock(&device.state);
        if state.encoded_at != Some(t) {
            encode_device(
                &spec.profile,
                &device.plan,
                physics.as_ref(),
                dev,
                &mut state,
            );
            state.encoded_at = Some(t);
        }
        drop(physics);
        Some(f(&state))
    }

    pub(crate) fn snapshot(&self, dev: usize, refresh: bool) -> Option<DeviceSnapshot> {
        let device = self.devices.get(dev)?;
        let spec = self.scenario.devices.get(dev)?;
        if refresh || lock(&device.state).encoded_at.is_none() {
            self.with_fresh_image(dev, |_| ())?;
        }
        let state = lock(&device.state);
        let profile = &spec.profile;
        let points = profile
            .points
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let value = match codec::decode(profile, i, &state.image) {
                    Ok(d) => ServedValue::from_decoded(d),
                    Err(e) => ServedValue::NotAvailable(e.to_string()),
                };
                let (source, physics) = state
                    .points
                    .get(i)
                    .cloned()
                    .unwrap_or((ValueSource::NotProduced, None));
                PointSnapshot {
                    name: p.name.clone(),
                    metric: p.metric.map(|m| m.id),
                    table: p.table.as_str(),
                    address: p.address,
                    value,
                    source,
                    physics,
                    words: point_words(p, &state.image),
                }
            })
            .collect();
        Some(DeviceSnapshot {
            device: spec.name.clone(),
            unit_id: spec.unit_id,
            listener: spec.listener.clone(),
            profile: profile.id.clone(),
            sim_time_ms: state.encoded_at.unwrap_or(self.scenario.site.start_ms),
            served_requests: device.requests.load(Ordering::Relaxed),
            fault: *lock(&device.fault),
            points,
        })
    }

    /// Answers one Modbus request for device `dev`.
    fn answer(&self, dev: usize, request: &Request<'_>) -> Result<Response, ExceptionCode> {
        let (Some(device), Some(spec)) = (self.devices.get(dev), self.scenario.devices.get(dev))
        else {
            return Err(ExceptionCode::GatewayTargetDevice);
        };
        device.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(Fault::Exception(code)) = *lock(&device.fault) {
            return Err(ExceptionCode::new(code));
        }
        let limits = spec.profile.limits;
        let max_regs = limits.max_registers.clamp(1, MODBUS_MAX_REGISTERS);
        let max_bits = limits.max_bits.clamp(1, MODBUS_MAX_BITS);
        match *request {
            Request::ReadCoils(addr, n) => {
                check_range(addr, n, max_bits)?;
                self.read_bits(dev, Table::Coil, addr, n)
                    .map(Response::ReadCoils)
            }
            Request::ReadDiscreteInputs(addr, n) => {
                check_range(addr, n, max_bits)?;
                self.read_bits(dev, Table::Discrete, addr, n)
                    .map(Response::ReadDiscreteInputs)
            }
            Request::ReadHoldingRegisters(addr, n) => {
                check_range(addr, n, max_regs)?;
                self.read_words(dev, Table::Holding, addr, n)
                    .map(Response::ReadHoldingRegisters)
            }
            Request::ReadInputRegisters(addr, n) => {
                check_range(addr, n, max_regs)?;
                self.read_words(dev, Table::Input, addr, n)
                    .map(Response::ReadInputRegisters)
            }
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }

    fn read_words(
        &self,
        dev: usize,
        table: Table,
        start: u16,
        count: u16,
    ) -> Result<Vec<u16>, ExceptionCode> {
        self.with_fresh_image(dev, |state| {
            if let Some(words) = state.image.registers(table, start, count) {
                return words.to_vec();
            }
            addresses(start, count)
                .map(|a| {
                    state
                        .image
                        .registers(table, a, 1)
                        .and_then(|w| w.first().copied())
                        .unwrap_or(0)
                })
                .collect()
        })
        .ok_or(ExceptionCode::ServerDeviceFailure)
    }

    fn read_bits(
        &self,
        dev: usize,
        table: Table,
        start: u16,
        count: u16,
    ) -> Result<Vec<bool>, ExceptionCode> {
        self.with_fresh_image(dev, |state| {
            addresses(start, count)
                .map(|a| state.image.bit(table, a).unwrap_or(false))
                .collect()
        })
        .ok_or(ExceptionCode::ServerDeviceFailure)
    }
}

/// Exception 03 for a quantity of 0 or above the device's limit, 02 for a range past 65 535.
fn check_range(addr: u16, count: u16, max: u16) -> Result<(), ExceptionCode> {
    if count == 0 || count > max {
        return Err(ExceptionCode::IllegalDataValue);
    }
    if u32::from(addr) + u32::from(count) > 65_536 {
        return Err(ExceptionCode::IllegalDataAddress);
    }
    Ok(())
}

/// `start`, `start + 1`, … for `count` addresses, stopping at 65 535.
fn addresses(start: u16, count: u16) -> impl Iterator<Item = u16> {
    (u32::from(start)..u32::from(start) + u32::from(count)).filter_map(|a| u16::try_from(a).ok())
}

/// The words of a point as served (a bit as one word 0 or 1).
fn point_words(p: &Point, image: &RegisterImage) -> Vec<u16> {
    match p.data_type {
        DataType::Bool => image
            .bit(p.table, p.address)
            .map(u16::from)
            .into_iter()
            .collect(),
        dt => image
            .registers(p.table, p.address, dt.width())
            .map(<[u16]>::to_vec)
            .unwrap_or_default(),
    }
}

// ---------------------------------------------------------------------------------------------
// Routing: unit id → device
// ---------------------------------------------------------------------------------------------

/// The devices of one listener by unit id, with the shared state.
#[derive(Debug)]
pub(crate) struct Route {
    pub(crate) shared: Arc<Shared>,
    units: [Option<usize>; 256],
}

impl Route {
    fn new(shared: Arc<Shared>, listener: &str) -> Self {
        let mut units = [None; 256];
        for (i, d) in shared.scenario.devices.iter().enumerate() {
            if d.listener == listener
                && let Some(slot) = units.get_mut(usize::from(d.unit_id))
            {
                *slot = Some(i);
            }
        }
        Self { shared, units }
    }

    /// The device behind `unit`, if any.
    pub(crate) fn device(&self, unit: u8) -> Option<usize> {
        self.units.get(usize::from(unit)).copied().flatten()
    }

    /// The fault of the device behind `unit`.
    pub(crate) fn fault(&self, unit: u8) -> Option<Fault> {
        self.device(unit).and_then(|d| self.shared.fault_of(d))
    }
}

/// The tokio-modbus service of one listener.
#[derive(Debug)]
struct ModbusService {
    route: Arc<Route>,
}

type Answer = Pin<Box<dyn Future<Output = Result<Response, ExceptionCode>> + Send>>;

impl tokio_modbus::server::Service for ModbusService {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = Answer;

    fn call(&self, req: Self::Request) -> Self::Future {
        let Some(dev) = self.route.device(req.slave) else {
            tracing::debug!(unit = req.slave, "request for an unknown unit id");
            return Box::pin(std::future::ready(Err(ExceptionCode::GatewayTargetDevice)));
        };
        let shared = Arc::clone(&self.route.shared);
        Box::pin(async move {
            // Advancing the physics may take a while at high speed: keep it off the reactor.
            tokio::task::spawn_blocking(move || shared.answer(dev, &req.request))
                .await
                .unwrap_or(Err(ExceptionCode::ServerDeviceFailure))
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding physics values into a device's image
// ---------------------------------------------------------------------------------------------

/// The order points are encoded in: scale factors with their dependants, then the rest.
#[derive(Debug, Clone)]
struct EncodePlan {
    /// Each scale-factor point with the points that use it.
    groups: Vec<(usize, Vec<usize>)>,
    /// Every other point, in profile order.
    rest: Vec<usize>,
}

impl EncodePlan {
    fn new(profile: &Profile) -> Self {
        let sf_points: BTreeSet<usize> = profile
            .points
            .iter()
            .filter_map(|p| p.scale_factor)
            .collect();
        let groups = sf_points
            .iter()
            .map(|&sf| {
                let deps = profile
                    .points
                    .iter()
                    .enumerate()
                    .filter(|(i, p)| p.scale_factor == Some(sf) && !sf_points.contains(i))
                    .map(|(i, _)| i)
                    .collect();
                (sf, deps)
            })
            .collect();
        let rest = (0..profile.points.len())
            .filter(|i| {
                !sf_points.contains(i)
                    && profile
                        .points
                        .get(*i)
                        .and_then(|p| p.scale_factor)
                        .is_none_or(|sf| !sf_points.contains(&sf))
            })
            .collect();
        Self { groups, rest }
    }
}

/// What the physics gives for one point.
enum Input {
    Number(f64),
    Text(String),
    None,
}

fn input_for(p: &Point, physics: &dyn Physics, dev: usize) -> Input {
    let Some(metric) = p.metric else {
        return Input::None;
    };
    let value = physics.value(dev, metric.id).filter(|v| v.is_finite());
    if let DataType::Ascii(_) = p.data_type {
        return match physics.text(dev, metric.id) {
            Some(t) => Input::Text(t),
            None => value.map_or(Input::None, |v| Input::Text(number_text(v))),
        };
    }
    match value {
        Some(v) => Input::Number(v),
        None => physics
            .text(dev, metric.id)
            .and_then(|t| t.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite())
            .map_or(Input::None, Input::Number),
    }
}

fn number_text(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn encode_device(
    profile: &Profile,
    plan: &EncodePlan,
    physics: &dyn Physics,
    dev: usize,
    state: &mut DeviceState,
) {
    let inputs: Vec<Input> = profile
        .points
        .iter()
        .map(|p| input_for(p, physics, dev))
        .collect();
    let mut sources = vec![(ValueSource::NotProduced, None); profile.points.len()];
    let image = &mut state.image;
    for (sf, deps) in &plan.groups {
        let values: Vec<(usize, f64)> = deps
            .iter()
            .filter_map(|&i| match inputs.get(i) {
                Some(Input::Number(v)) => Some((i, *v)),
                _ => None,
            })
            .collect();
        let chosen = choose_scale_factor(profile, *sf, &values, image);
        write_scale_factor(profile, *sf, chosen, image);
        if let Some(slot) = sources.get_mut(*sf) {
            *slot = (ValueSource::ScaleFactor, None);
        }
        for &i in deps {
            if let (Some(slot), Some(input)) = (sources.get_mut(i), inputs.get(i)) {
                *slot = encode_point(profile, i, input, image);
            }
        }
    }
    for &i in &plan.rest {
        if let (Some(slot), Some(input)) = (sources.get_mut(i), inputs.get(i)) {
            *slot = encode_point(profile, i, input, image);
        }
    }
    state.points = sources;
}

fn write_scale_factor(profile: &Profile, sf_point: usize, sf: i16, image: &mut RegisterImage) {
    // Scale-factor points are i16 (checked when the profile is loaded).
    let _ = codec::encode_raw(profile, sf_point, u64::from(sf as u16), image);
}

/// The smallest factor in −4..=10 with which every dependant fits without wrapping; failing
/// that, the smallest with which every non-wrapping dependant fits (counters then wrap); failing
/// that, the one with which the most non-wrapping dependants fit.
fn choose_scale_factor(
    profile: &Profile,
    sf_point: usize,
    values: &[(usize, f64)],
    image: &mut RegisterImage,
) -> i16 {
    let mut fallback: Option<i16> = None;
    let mut best: Option<(usize, i16)> = None;
    for sf in SF_CHOICES {
        write_scale_factor(profile, sf_point, sf, image);
        let mut all = true;
        let mut fixed_ok = 0usize;
        let mut fixed_all = true;
        for &(i, v) in values {
            let ok = codec::encode(profile, i, v, image).is_ok();
            all &= ok;
            if !profile.points.get(i).is_some_and(wraps) {
                if ok {
                    fixed_ok += 1;
                } else {
                    fixed_all = false;
                }
            }
        }
        if all {
            return sf;
        }
        if fixed_all && fallback.is_none() {
            fallback = Some(sf);
        }
        if best.is_none_or(|(n, _)| fixed_ok > n) {
            best = Some((fixed_ok, sf));
        }
    }
    fallback.or(best.map(|(_, sf)| sf)).unwrap_or(0)
}

/// Counters of unsigned integer types roll over like the device's register.
fn wraps(p: &Point) -> bool {
    p.kind == Kind::Counter && matches!(p.data_type, DataType::U16 | DataType::U32 | DataType::U64)
}

fn encode_point(
    profile: &Profile,
    i: usize,
    input: &Input,
    image: &mut RegisterImage,
) -> (ValueSource, Option<f64>) {
    let Some(p) = profile.points.get(i) else {
        return (ValueSource::NotProduced, None);
    };
    let result = match input {
        Input::None => {
            write_missing(profile, i, p, image);
            return (ValueSource::NotProduced, None);
        }
        Input::Number(v) => encode_number(profile, i, p, *v, image).map(|s| (s, Some(*v))),
        Input::Text(t) => codec::encode_text(profile, i, &clean_text(p, t), image)
            .map(|()| (ValueSource::Physics, None)),
    };
    match result {
        Ok(done) => done,
        Err(e) => {
            write_missing(profile, i, p, image);
            let physics = match input {
                Input::Number(v) => Some(*v),
                _ => None,
            };
            (
                ValueSource::EncodeFailed {
                    error: e.to_string(),
                },
                physics,
            )
        }
    }
}

fn encode_number(
    profile: &Profile,
    i: usize,
    p: &Point,
    v: f64,
    image: &mut RegisterImage,
) -> Result<ValueSource, EncodeError> {
    let v = match p.data_type {
        DataType::Bool => f64::from(u8::from(v != 0.0)),
        DataType::Bit(n) if v != 0.0 && v != 1.0 => {
            // A whole state word for a bit point: take the point's bit of it.
            if v >= 1.0 && v.fract() == 0.0 && v < 18_446_744_073_709_551_616.0 {
                ((v as u64).checked_shr(u32::from(n)).unwrap_or(0) & 1) as f64
            } else {
                1.0
            }
        }
        _ => v,
    };
    if wraps(p) {
        // Lifetime counters roll over like the device's register; say when one did.
        if codec::encode(profile, i, v, image).is_ok() {
            return Ok(ValueSource::Physics);
        }
        codec::encode_wrapping(profile, i, v, image)?;
        return Ok(ValueSource::Wrapped);
    }
    codec::encode(profile, i, v, image).map(|()| ValueSource::Physics)
}

/// Text a point can hold: ASCII without NUL, cut to the point's length.
fn clean_text(p: &Point, text: &str) -> String {
    let max = usize::from(p.data_type.width()) * 2;
    text.chars()
        .map(|c| if c.is_ascii() && c != '\0' { c } else { '?' })
        .take(max)
        .collect()
}

/// Writes "no value": the sentinel (or NaN) when the point has one, else zero.
fn write_missing(profile: &Profile, i: usize, p: &Point, image: &mut RegisterImage) {
    if codec::encode_not_available(profile, i, image).is_ok() {
        return;
    }
    match p.data_type {
        // Only this bit: other bits of the register belong to other points.
        DataType::Bit(_) => {
            let _ = codec::encode(profile, i, 0.0, image);
        }
        DataType::Bool => image.put_bits(p.table, p.address, &[false]),
        dt => image.put_registers(p.table, p.address, &vec![0; usize::from(dt.width())]),
    }
}
