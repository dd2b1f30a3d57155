//! The simulator's Modbus TCP server, proxy faults and control endpoint, driven by a
//! tokio-modbus client against a small test physics.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fivezero_profiles::codec::{self, RegisterImage};
use fivezero_profiles::{Profile, Table};
use fivezero_sim::Physics;
use fivezero_sim::fault::Fault;
use fivezero_sim::scenario::{DeviceSpec, MAIN_LISTENER, Scenario, Site};
use fivezero_sim::server::{Options, ServedValue, Simulator, SimulatorHandle, ValueSource};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_modbus::client::Context;
use tokio_modbus::prelude::*;

/// 2026-06-21T00:00:00+08:00.
const START_MS: i64 = 1_781_971_200_000;

/// Timeout of a client call that is expected to be answered.
const ANSWER: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------------------------
// Test physics
// ---------------------------------------------------------------------------------------------

/// What the test physics gives for one (device, metric).
#[derive(Debug, Clone, Copy)]
enum Knob {
    Fixed(f64),
    Missing,
}

type Knobs = Arc<Mutex<HashMap<(usize, String), Knob>>>;

/// Every metric of device `d` is `10 + d + len(metric)/8 + simulated hours since start`, unless
/// a knob says otherwise; `device.serial_number` is the text `SIM-000d` (and the number
/// `1000 + d`).
struct TestPhysics {
    step_ms: i64,
    now: i64,
    knobs: Knobs,
}

impl TestPhysics {
    fn boxed(knobs: &Knobs) -> Box<dyn Physics> {
        Box::new(Self {
            step_ms: 1000,
            now: START_MS,
            knobs: Arc::clone(knobs),
        })
    }
}

fn default_value(d: usize, metric: &str, now: i64) -> f64 {
    let hours = (now - START_MS) as f64 / 3_600_000.0;
    10.0 + d as f64 + metric.len() as f64 / 8.0 + hours
}

impl Physics for TestPhysics {
    fn advance_to(&mut self, t_ms: i64) {
        if t_ms > self.now {
            self.now = START_MS + (t_ms - START_MS) / self.step_ms * self.step_ms;
        }
    }

    fn now_ms(&self) -> i64 {
        self.now
    }

    fn value(&self, device: usize, metric: &str) -> Option<f64> {
        match self.knobs.lock().unwrap().get(&(device, metric.to_owned())) {
            Some(Knob::Fixed(v)) => Some(*v),
            Some(Knob::Missing) => None,
            None if metric == "device.serial_number" => Some(1000.0 + device as f64),
            None => Some(default_value(device, metric, self.now)),
        }
    }

    fn text(&self, device: usize, metric: &str) -> Option<String> {
        (metric == "device.serial_number").then(|| format!("SIM-000{device}"))
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------------

fn sdm630() -> Arc<Profile> {
    let path = fivezero_profiles::library_dir().join("eastron-sdm630.toml");
    Arc::new(fivezero_profiles::load_file(&path).expect("the shipped SDM630 profile loads"))
}

/// A SunSpec-like inverter with scale factors, a wrapping u32 counter, a sentinel, text, a bit
/// and a discrete input.
const TEST_INVERTER: &str = r#"
[device]
manufacturer = "Test"
model = "SF inverter"
category = "pv_inverter"
source = "fivezero-sim tests"

[modbus]
max_gap = 16

[[point]]
name = "W"
metric = "pv.ac_power"
table = "holding"
address = 0
type = "i16"
unit = "W"
scale_factor = "W_SF"

[[point]]
name = "DCW"
metric = "pv.dc_power"
table = "holding"
address = 1
type = "u16"
unit = "W"
scale_factor = "W_SF"

[[point]]
name = "W_SF"
table = "holding"
address = 2
type = "i16"

[[point]]
name = "WH"
metric = "pv.energy"
table = "holding"
address = 3
type = "u32"
unit = "Wh"
scale_factor = "WH_SF"

[[point]]
name = "WH_SF"
table = "holding"
address = 5
type = "i16"

[[point]]
name = "import"
metric = "electricity.import_energy"
table = "holding"
address = 6
type = "u32"
scale = 0.01
unit = "kWh"

[[point]]
name = "Hz"
metric = "electricity.frequency"
table = "holding"
address = 8
type = "u16"
scale = 0.01
unit = "Hz"
not_available = [0xFFFF]

[[point]]
name = "cabinet_temperature"
metric = "pv.cabinet_temperature"
table = "holding"
address = 9
type = "i16"
scale = 0.1
unit = "°C"

[[point]]
name = "serial"
metric = "device.serial_number"
table = "holding"
address = 10
type = "string"
length = 4

[[point]]
name = "ground_fault"
metric = "pv.event_flags"
table = "holding"
address = 14
type = "bit"
bit = 3

[[point]]
name = "running"
metric = "compressor.running"
table = "discrete"
address = 0
type = "bool"
"#;

fn test_inverter() -> Arc<Profile> {
    let loaded = fivezero_profiles::load_str(Path::new("test-inverter.toml"), TEST_INVERTER);
    Arc::new(loaded.unwrap_or_else(|d| panic!("test profile refused: {d:?}")))
}

fn device(name: &str, profile: &Arc<Profile>, unit_id: u8, listener: &str) -> DeviceSpec {
    DeviceSpec {
        name: name.to_owned(),
        profile: Arc::clone(profile),
        unit_id,
        listener: listener.to_owned(),
        physics: "test".to_owned(),
        params: toml::Table::new(),
    }
}

fn scenario(devices: Vec<DeviceSpec>) -> Scenario {
    Scenario {
        site: Site {
            name: "test-park".into(),
            latitude: 36.07,
            longitude: 120.38,
            timezone: "Asia/Shanghai".into(),
            start_ms: START_MS,
        },
        seed: 1,
        step: Duration::from_secs(1),
        listeners: Default::default(),
        devices,
    }
}

fn options(speed: f64) -> Options {
    Options {
        listen: "127.0.0.1:0".parse().unwrap(),
        speed,
        control: None,
    }
}

/// Meters `meter-a` (unit 1) and `meter-b` (unit 2) on `main`, `meter-c` (unit 1) on `second`.
async fn three_meters(speed: f64, knobs: &Knobs) -> SimulatorHandle {
    let p = sdm630();
    let sc = scenario(vec![
        device("meter-a", &p, 1, MAIN_LISTENER),
        device("meter-b", &p, 2, MAIN_LISTENER),
        device("meter-c", &p, 1, "second"),
    ]);
    Simulator::start(sc, TestPhysics::boxed(knobs), options(speed))
        .await
        .unwrap()
}

async fn connect(sim: &SimulatorHandle, listener: &str, unit: u8) -> Context {
    let addr = sim.addr(listener).expect("listener exists");
    timeout(ANSWER, tcp::connect_slave(addr, Slave(unit)))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// Reads `voltage_l1` (input 0, 2 registers) and returns the words.
async fn read_voltage(ctx: &mut Context) -> Vec<u16> {
    timeout(ANSWER, ctx.read_input_registers(0, 2))
        .await
        .expect("answer in time")
        .expect("no transport error")
        .expect("no exception")
}

// ---------------------------------------------------------------------------------------------
// Serving
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn every_point_of_an_sdm630_reads_back_as_the_snapshot_says() {
    let knobs = Knobs::default();
    let sim = three_meters(0.0, &knobs).await;
    let profile = sdm630();
    let mut ctx = connect(&sim, MAIN_LISTENER, 1).await;

    // Read the device the way the gateway does: the planned requests, into an image.
    let mut image = RegisterImage::new();
    for req in fivezero_profiles::plan::plan_all(&profile) {
        let call = match req.table {
            Table::Input => ctx.read_input_registers(req.start, req.count).await,
            Table::Holding => ctx.read_holding_registers(req.start, req.count).await,
            other => panic!("SDM630 has no {other:?} points"),
        };
        let words = call.unwrap().unwrap();
        assert_eq!(words.len(), usize::from(req.count));
        image.put_registers(req.table, req.start, &words);
    }

    let snap = sim.snapshot("meter-a").unwrap();
    assert_eq!(snap.points.len(), profile.points.len());
    for (i, p) in profile.points.iter().enumerate() {
        let served = snap.point(&p.name).unwrap();
        let decoded = ServedValue::from_decoded(codec::decode(&profile, i, &image).unwrap());
        assert_eq!(decoded, served.value, "point {}", p.name);
        let words = image
            .registers(p.table, p.address, p.data_type.width())
            .unwrap();
        assert_eq!(words, served.words.as_slice(), "point {}", p.name);
        assert_eq!(served.source, ValueSource::Physics, "point {}", p.name);
        // The value is the physics value, to f32 precision.
        let physics = served.physics.unwrap();
        let got = decoded.number().unwrap();
        assert!(
            (got - physics).abs() <= physics.abs() * 1e-6,
            "{}: {got} vs {physics}",
            p.name
        );
    }
    assert_eq!(
        snap.point("serial_number").unwrap().value,
        ServedValue::Number(1000.0)
    );
    assert_eq!(
        sim.served_requests("meter-a"),
        Some(fivezero_profiles::plan::plan_all(&profile).len() as u64)
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn two_devices_share_a_listener_by_unit_id_and_a_third_answers_on_its_own_listener() {
    let knobs = Knobs::default();
    let sim = three_meters(0.0, &knobs).await;
    assert_ne!(sim.addr(MAIN_LISTENER), sim.addr("second"));
    assert_eq!(sim.addr("nowhere"), None);

    let mut a = connect(&sim, MAIN_LISTENER, 1).await;
    let mut b = connect(&sim, MAIN_LISTENER, 2).await;
    let mut c = connect(&sim, "second", 1).await;
    let (wa, wb, wc) = (
        read_voltage(&mut a).await,
        read_voltage(&mut b).await,
        read_voltage(&mut c).await,
    );
    for (name, words) in [("meter-a", &wa), ("meter-b", &wb), ("meter-c", &wc)] {
        let snap = sim.snapshot(name).unwrap();
        assert_eq!(&snap.point("voltage_l1").unwrap().words, words, "{name}");
        assert_eq!(sim.served_requests(name), Some(1), "{name}");
    }
    // The physics differs per device, so the three really are three devices.
    assert_ne!(wa, wb);
    assert_ne!(wa, wc);

    let listeners = sim.listeners();
    assert_eq!(listeners[0].name, MAIN_LISTENER);
    assert_eq!(
        listeners[0].devices,
        vec![("meter-a".to_owned(), 1), ("meter-b".to_owned(), 2)]
    );
    assert_eq!(listeners[1].devices, vec![("meter-c".to_owned(), 1)]);
    sim.shutdown().await;
}

#[tokio::test]
async fn an_unknown_unit_id_gets_exception_0x0b_like_a_serial_gateway() {
    let knobs = Knobs::default();
    let sim = three_meters(0.0, &knobs).await;
    let mut ctx = connect(&sim, MAIN_LISTENER, 7).await;
    let reply = timeout(ANSWER, ctx.read_input_registers(0, 2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply, Err(ExceptionCode::GatewayTargetDevice));
    // The connection stays usable for the units that exist.
    ctx.set_slave(Slave(2));
    read_voltage(&mut ctx).await;
    sim.shutdown().await;
}

#[tokio::test]
async fn a_read_beyond_the_device_limits_gets_exception_03_and_an_unknown_function_01() {
    let knobs = Knobs::default();
    let sim = three_meters(0.0, &knobs).await;
    let mut ctx = connect(&sim, MAIN_LISTENER, 1).await;
    // The SDM630 profile allows 80 registers per read.
    let ok = timeout(ANSWER, ctx.read_input_registers(0, 80))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ok.map(|w| w.len()), Ok(80));
    let over = timeout(ANSWER, ctx.read_input_registers(0, 81))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(over, Err(ExceptionCode::IllegalDataValue));
    let past_end = timeout(ANSWER, ctx.read_holding_registers(65_530, 10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(past_end, Err(ExceptionCode::IllegalDataAddress));
    let write = timeout(ANSWER, ctx.write_single_register(0, 1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(write, Err(ExceptionCode::IllegalFunction));
    // Unmapped registers read as zero.
    let gap = timeout(ANSWER, ctx.read_holding_registers(1000, 4))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(gap, Ok(vec![0; 4]));
    sim.shutdown().await;
}

#[tokio::test]
async fn coils_and_discrete_inputs_read_as_served_and_unmapped_bits_as_zero() {
    let knobs = Knobs::default();
    knobs
        .lock()
        .unwrap()
        .insert((0, "compressor.running".into()), Knob::Fixed(1.0));
    let p = test_inverter();
    let sc = scenario(vec![device("inv", &p, 3, MAIN_LISTENER)]);
    let sim = Simulator::start(sc, TestPhysics::boxed(&knobs), options(0.0))
        .await
        .unwrap();
    let mut ctx = connect(&sim, MAIN_LISTENER, 3).await;
    let bits = timeout(ANSWER, ctx.read_discrete_inputs(0, 4))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(bits, vec![true, false, false, false]);
    let coils = timeout(ANSWER, ctx.read_coils(0, 3))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(coils, vec![false; 3]);
    assert_eq!(
        sim.snapshot("inv").unwrap().point("running").unwrap().value,
        ServedValue::Number(1.0)
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn with_speed_3600_a_counter_advances_an_hour_of_physics_per_wall_second() {
    let knobs = Knobs::default();
    let sim = three_meters(3600.0, &knobs).await;
    let profile = sdm630();
    let index = profile
        .points
        .iter()
        .position(|p| p.name == "total_active_energy")
        .unwrap();
    let point = &profile.points[index];
    let mut ctx = connect(&sim, MAIN_LISTENER, 1).await;

    let mut read_energy = async || -> f64 {
        let words = timeout(ANSWER, ctx.read_input_registers(point.address, 2))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let mut image = RegisterImage::new();
        image.put_registers(Table::Input, point.address, &words);
        codec::decode(&profile, index, &image)
            .unwrap()
            .number()
            .unwrap()
    };

    let before_a = Instant::now();
    let a = read_energy().await;
    let after_a = Instant::now();
    // Let half a wall second pass (the quantity under test), then read again.
    tokio::time::sleep_until((after_a + Duration::from_millis(500)).into()).await;
    let before_b = Instant::now();
    let b = read_energy().await;
    let after_b = Instant::now();
    // The counter grows 1 kWh per simulated hour; speed 3600 makes that 1 kWh per wall second.
    let advanced_hours = b - a;
    let min = (before_b - after_a).as_secs_f64() - 2.0 / 3600.0; // minus two physics steps
    let max = (after_b - before_a).as_secs_f64() + 2.0 / 3600.0;
    assert!(
        (min..=max).contains(&advanced_hours),
        "{advanced_hours} simulated hours, expected within {min}..={max}"
    );
    let sim_elapsed_h = (sim.sim_time_ms() - START_MS) as f64 / 3_600_000.0;
    assert!(sim_elapsed_h >= b - default_value(0, "electricity.total_energy", START_MS) - 1e-3);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_scale_factor_and_its_dependants_agree_and_use_the_most_precise_factor_that_fits() {
    let knobs = Knobs::default();
    {
        let mut k = knobs.lock().unwrap();
        // (W kW, DCW kW, WH kWh) per device; expected W_SF and WH_SF.
        for (d, (w, dcw, wh)) in [
            (1.5, 2.0, 123.4567),
            (20.0, 30.0, 5.0e9),
            (-300.0, 0.5, 0.0),
        ]
        .into_iter()
        .enumerate()
        {
            k.insert((d, "pv.ac_power".into()), Knob::Fixed(w));
            k.insert((d, "pv.dc_power".into()), Knob::Fixed(dcw));
            k.insert((d, "pv.energy".into()), Knob::Fixed(wh));
        }
    }
    let expected = [("inv-0", -1, -4), ("inv-1", 0, 4), ("inv-2", 1, -4)];
    let p = test_inverter();
    let sc = scenario(vec![
        device("inv-0", &p, 1, MAIN_LISTENER),
        device("inv-1", &p, 2, MAIN_LISTENER),
        device("inv-2", &p, 3, MAIN_LISTENER),
    ]);
    let sim = Simulator::start(sc, TestPhysics::boxed(&knobs), options(0.0))
        .await
        .unwrap();
    for (unit, (name, w_sf, wh_sf)) in (1u8..).zip(expected) {
        let mut ctx = connect(&sim, MAIN_LISTENER, unit).await;
        // Values and factors in one read, as the planner keeps them.
        let words = timeout(ANSWER, ctx.read_holding_registers(0, 6))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let mut image = RegisterImage::new();
        image.put_registers(Table::Holding, 0, &words);
        let snap = sim.snapshot(name).unwrap();
        for (i, point) in p.points.iter().enumerate().take(5) {
            let decoded = ServedValue::from_decoded(codec::decode(&p, i, &image).unwrap());
            let served = snap.point(&point.name).unwrap();
            assert_eq!(decoded, served.value, "{name} {}", point.name);
            if let Some(physics) = served.physics {
                // Within half a step of the chosen factor (in W or Wh, canonical kW or kWh).
                let sf = if point.name == "WH" { wh_sf } else { w_sf };
                let half_step_canonical = 10f64.powi(sf) / 2.0 / 1000.0;
                let got = decoded.number().unwrap();
                assert!(
                    (got - physics).abs() <= half_step_canonical * (1.0 + 1e-9),
                    "{name} {}: {got} vs {physics}",
                    point.name
                );
            }
        }
        assert_eq!(
            snap.point("W_SF").unwrap().value,
            ServedValue::Number(f64::from(w_sf)),
            "{name}"
        );
        assert_eq!(
            snap.point("WH_SF").unwrap().value,
            ServedValue::Number(f64::from(wh_sf)),
            "{name}"
        );
        assert_eq!(snap.point("W_SF").unwrap().source, ValueSource::ScaleFactor);
        assert_eq!(
            snap.point("WH").unwrap().source,
            ValueSource::Physics,
            "{name}: fits without wrapping"
        );
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn a_u32_counter_wraps_like_the_device() {
    let knobs = Knobs::default();
    // import: u32 with scale 0.01 kWh, so it holds at most 42 949 672.95 kWh.
    let values = [1000.0, 42_949_672.95, 42_949_685.30, 50_000_000.0];
    for (d, v) in values.iter().enumerate() {
        knobs
            .lock()
            .unwrap()
            .insert((d, "electricity.import_energy".into()), Knob::Fixed(*v));
    }
    let p = test_inverter();
    let devices = (0..values.len())
        .map(|d| device(&format!("inv-{d}"), &p, d as u8 + 1, MAIN_LISTENER))
        .collect();
    let sim = Simulator::start(scenario(devices), TestPhysics::boxed(&knobs), options(0.0))
        .await
        .unwrap();
    let expected: [(u32, ValueSource); 4] = [
        (100_000, ValueSource::Physics),
        (u32::MAX, ValueSource::Physics),
        (1234, ValueSource::Wrapped),
        (
            (5_000_000_000u64 - (1u64 << 32)) as u32,
            ValueSource::Wrapped,
        ),
    ];
    for (d, (raw, source)) in expected.into_iter().enumerate() {
        let mut ctx = connect(&sim, MAIN_LISTENER, d as u8 + 1).await;
        let words = timeout(ANSWER, ctx.read_holding_registers(6, 2))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(words, vec![(raw >> 16) as u16, raw as u16], "device {d}");
        let served = sim.snapshot(&format!("inv-{d}")).unwrap();
        let import = served.point("import").unwrap();
        assert_eq!(import.source, source, "device {d}");
        assert_eq!(import.physics, Some(values[d]));
        assert_eq!(
            import.value,
            ServedValue::Number(f64::from(raw) * 0.01),
            "device {d}"
        );
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn a_metric_the_physics_does_not_produce_reads_as_its_sentinel_or_zero_and_the_snapshot_says_so()
 {
    let knobs = Knobs::default();
    {
        let mut k = knobs.lock().unwrap();
        k.insert((0, "electricity.frequency".into()), Knob::Missing);
        k.insert((0, "pv.cabinet_temperature".into()), Knob::Missing);
        k.insert((0, "pv.event_flags".into()), Knob::Fixed(8.0));
    }
    let p = test_inverter();
    let sc = scenario(vec![device("inv", &p, 1, MAIN_LISTENER)]);
    let sim = Simulator::start(sc, TestPhysics::boxed(&knobs), options(0.0))
        .await
        .unwrap();
    let mut ctx = connect(&sim, MAIN_LISTENER, 1).await;
    let words = timeout(ANSWER, ctx.read_holding_registers(8, 7))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(words[0], 0xFFFF, "Hz: its sentinel");
    assert_eq!(words[1], 0, "cabinet temperature: no sentinel, zero");
    assert_eq!(
        &words[2..6],
        &[0x5349, 0x4D2D, 0x3030, 0x3030],
        "serial text SIM-0000"
    );
    assert_eq!(words[6], 0x0008, "bit 3 of the event word");

    let snap = sim.snapshot("inv").unwrap();
    let hz = snap.point("Hz").unwrap();
    assert_eq!(hz.source, ValueSource::NotProduced);
    assert!(hz.value.is_not_available());
    let temp = snap.point("cabinet_temperature").unwrap();
    assert_eq!(temp.source, ValueSource::NotProduced);
    assert_eq!(temp.value, ServedValue::Number(0.0));
    assert_eq!(
        snap.point("serial").unwrap().value,
        ServedValue::Text("SIM-0000".into())
    );
    assert_eq!(
        snap.point("ground_fault").unwrap().value,
        ServedValue::Number(1.0)
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn after_shutdown_the_listeners_refuse_connections() {
    let knobs = Knobs::default();
    let sim = three_meters(0.0, &knobs).await;
    let addr = sim.addr(MAIN_LISTENER).unwrap();
    sim.shutdown().await;
    let refused = timeout(ANSWER, TcpStream::connect(addr)).await.unwrap();
    assert!(refused.is_err());
}

#[tokio::test]
async fn an_invalid_speed_is_refused() {
    let knobs = Knobs::default();
    for speed in [-1.0, f64::NAN, f64::INFINITY] {
        let sc = scenario(vec![device("m", &sdm630(), 1, MAIN_LISTENER)]);
        assert!(
            Simulator::start(sc, TestPhysics::boxed(&knobs), options(speed))
                .await
                .is_err()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------------------------

/// Reads `meter-b` every 20 ms on its own connection until stopped, counting answers and
/// failures: the witness that the other device keeps answering while `meter-a` misbehaves.
struct Witness {
    stop: Arc<AtomicBool>,
    answers: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Witness {
    async fn start(sim: &SimulatorHandle) -> Self {
        let mut ctx = connect(sim, MAIN_LISTENER, 2).await;
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(AtomicU64::new(0));
        let (s, a) = (Arc::clone(&stop), Arc::clone(&answers));
        let task = tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            while !s.load(Ordering::Relaxed) {
                tick.tick().await;
                match timeout(Duration::from_secs(1), ctx.read_input_registers(0, 2)).await {
                    Ok(Ok(Ok(w))) if w.len() == 2 => {
                        a.fetch_add(1, Ordering::Relaxed);
                    }
                    other => failures.push(format!("{other:?}")),
                }
            }
            failures
        });
        Self {
            stop,
            answers,
            task,
        }
    }

    /// Waits until the witness has answered `n` more times (deadline 5 s).
    async fn wait_answers(&self, n: u64) {
        let target = self.answers.load(Ordering::Relaxed) + n;
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.answers.load(Ordering::Relaxed) < target {
            assert!(
                Instant::now() < deadline,
                "the other device stopped answering"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn finish(self) {
        self.wait_answers(1).await;
        self.stop.store(true, Ordering::Relaxed);
        let failures = self.task.await.unwrap();
        assert!(failures.is_empty(), "the other device failed: {failures:?}");
    }
}

/// Starts three meters, puts `meter-a` into `fault` with a witness reading `meter-b`, runs
/// `observe` against `meter-a`'s address, then clears the fault and checks that a new
/// connection reads `meter-a` normally again.
async fn check_fault<F>(fault: Fault, observe: F)
where
    F: AsyncFnOnce(&SimulatorHandle, SocketAddr),
{
    let knobs = Knobs::default();
    let sim = three_meters(0.0, &knobs).await;
    let witness = Witness::start(&sim).await;
    witness.wait_answers(1).await;
    sim.set_fault("meter-a", fault).unwrap();
    assert_eq!(sim.fault("meter-a"), Some(fault));
    observe(&sim, sim.addr(MAIN_LISTENER).unwrap()).await;
    witness.wait_answers(2).await;
    assert_eq!(sim.clear_fault("meter-a"), Ok(Some(fault)));
    let mut ctx = connect(&sim, MAIN_LISTENER, 1).await;
    let words = read_voltage(&mut ctx).await;
    assert_eq!(
        sim.snapshot("meter-a")
            .unwrap()
            .point("voltage_l1")
            .unwrap()
            .words,
        words
    );
    witness.finish().await;
    sim.shutdown().await;
}

async fn client(addr: SocketAddr) -> Context {
    timeout(ANSWER, tcp::connect_slave(addr, Slave(1)))
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn an_exception_fault_answers_that_exception_to_every_request() {
    check_fault(Fault::Exception(4), async |sim, addr| {
        let mut ctx = client(addr).await;
        for _ in 0..3 {
            let reply = timeout(ANSWER, ctx.read_input_registers(0, 2))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(reply, Err(ExceptionCode::ServerDeviceFailure));
        }
        let reply = timeout(ANSWER, ctx.read_coils(0, 1))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply, Err(ExceptionCode::ServerDeviceFailure));
        assert_eq!(sim.served_requests("meter-a"), Some(4));
    })
    .await;
    check_fault(Fault::Exception(0x0B), async |_, addr| {
        let reply = timeout(ANSWER, client(addr).await.read_input_registers(0, 2))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply, Err(ExceptionCode::GatewayTargetDevice));
    })
    .await;
}

#[tokio::test]
async fn no_reply_makes_the_client_time_out_and_keeps_the_connection() {
    check_fault(Fault::NoReply, async |sim, addr| {
        let mut ctx = client(addr).await;
        let waited = timeout(Duration::from_millis(300), ctx.read_input_registers(0, 2)).await;
        assert!(waited.is_err(), "expected a client timeout, got {waited:?}");
        // The same connection answers again once the fault is gone.
        sim.clear_fault("meter-a").unwrap();
        let again = timeout(ANSWER, ctx.read_input_registers(0, 2))
            .await
            .unwrap()
            .unwrap();
        assert!(again.is_ok());
        sim.set_fault("meter-a", Fault::NoReply).unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_late_reply_arrives_after_the_client_timeout() {
    let delay = Duration::from_millis(800);
    check_fault(Fault::LateReply { delay }, async |_, addr| {
        let mut ctx = client(addr).await;
        let sent = Instant::now();
        let first = timeout(Duration::from_millis(200), ctx.read_input_registers(0, 2)).await;
        assert!(first.is_err(), "expected a client timeout, got {first:?}");
        // The next call on the same connection receives the first call's late reply: the
        // header mismatch of tokio-modbus #324.
        let second = timeout(ANSWER, ctx.read_input_registers(0, 2))
            .await
            .unwrap();
        assert!(
            matches!(
                second,
                Err(tokio_modbus::Error::Protocol(
                    ProtocolError::HeaderMismatch { .. }
                ))
            ),
            "{second:?}"
        );
        assert!(sent.elapsed() >= delay);
    })
    .await;
}

#[tokio::test]
async fn a_slow_device_answers_correctly_after_its_delay() {
    let delay = Duration::from_millis(150);
    check_fault(Fault::Slow { delay }, async |sim, addr| {
        let mut ctx = client(addr).await;
        let sent = Instant::now();
        let words = read_voltage(&mut ctx).await;
        assert!(sent.elapsed() >= delay);
        assert_eq!(
            sim.snapshot("meter-a")
                .unwrap()
                .point("voltage_l1")
                .unwrap()
                .words,
            words
        );
    })
    .await;
}

#[tokio::test]
async fn a_wrong_transaction_id_or_unit_id_is_a_header_mismatch() {
    for fault in [Fault::WrongTransactionId, Fault::WrongUnitId] {
        check_fault(fault, async |_, addr| {
            let reply = timeout(ANSWER, client(addr).await.read_input_registers(0, 2))
                .await
                .unwrap();
            assert!(
                matches!(
                    reply,
                    Err(tokio_modbus::Error::Protocol(
                        ProtocolError::HeaderMismatch { .. }
                    ))
                ),
                "{fault}: {reply:?}"
            );
        })
        .await;
    }
}

#[tokio::test]
async fn a_wrong_function_code_is_a_function_code_mismatch() {
    check_fault(Fault::WrongFunctionCode, async |_, addr| {
        let reply = timeout(ANSWER, client(addr).await.read_input_registers(0, 2))
            .await
            .unwrap();
        assert!(
            matches!(
                reply,
                Err(tokio_modbus::Error::Protocol(
                    ProtocolError::FunctionCodeMismatch { .. }
                ))
            ),
            "{reply:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn fewer_registers_sends_one_word_less_than_asked_with_a_consistent_byte_count() {
    check_fault(Fault::FewerRegisters, async |sim, addr| {
        let mut ctx = client(addr).await;
        // `call`, not `read_input_registers`: tokio-modbus only debug-asserts the count.
        let reply = timeout(ANSWER, ctx.call(Request::ReadInputRegisters(0, 10)))
            .await
            .unwrap();
        let Ok(Ok(Response::ReadInputRegisters(words))) = reply else {
            panic!("expected registers, got {reply:?}");
        };
        assert_eq!(words.len(), 9);
        let snap = sim.snapshot("meter-a").unwrap();
        assert_eq!(words[..2], snap.point("voltage_l1").unwrap().words[..]);
    })
    .await;
}

#[tokio::test]
async fn garbled_truncated_and_zero_length_frames_are_transport_errors() {
    for fault in [Fault::Garbled, Fault::TruncatedPdu, Fault::ZeroLength] {
        check_fault(fault, async |_, addr| {
            let reply = timeout(ANSWER, client(addr).await.read_input_registers(0, 2))
                .await
                .unwrap();
            assert!(
                matches!(reply, Err(tokio_modbus::Error::Transport(_))),
                "{fault}: {reply:?}"
            );
        })
        .await;
    }
}

#[tokio::test]
async fn a_huge_mbap_length_leaves_the_client_waiting_until_its_timeout() {
    check_fault(Fault::HugeLength, async |_, addr| {
        let waited = timeout(
            Duration::from_millis(300),
            client(addr).await.read_input_registers(0, 2),
        )
        .await;
        assert!(waited.is_err(), "expected a client timeout, got {waited:?}");
    })
    .await;
}

#[tokio::test]
async fn a_reply_sliced_into_single_bytes_is_reassembled() {
    check_fault(
        Fault::Sliced {
            gap: Duration::from_millis(5),
        },
        async |sim, addr| {
            let words = read_voltage(&mut client(addr).await).await;
            assert_eq!(
                sim.snapshot("meter-a")
                    .unwrap()
                    .point("voltage_l1")
                    .unwrap()
                    .words,
                words
            );
        },
    )
    .await;
}

/// A read of input register 0, 2 registers, unit 1, transaction 0x0102, as raw bytes.
const RAW_REQUEST: [u8; 12] = [
    0x01, 0x02, 0x00, 0x00, 0x00, 0x06, 0x01, 0x04, 0x00, 0x00, 0x00, 0x02,
];

#[tokio::test]
async fn drop_connection_closes_the_tcp_connection_on_the_next_request() {
    check_fault(Fault::DropConnection, async |_, addr| {
        let reply = timeout(ANSWER, client(addr).await.read_input_registers(0, 2))
            .await
            .unwrap();
        assert!(
            matches!(reply, Err(tokio_modbus::Error::Transport(_))),
            "{reply:?}"
        );
        // On the wire: an orderly close, no byte of reply.
        let mut raw = TcpStream::connect(addr).await.unwrap();
        raw.write_all(&RAW_REQUEST).await.unwrap();
        let mut buf = Vec::new();
        let n = timeout(ANSWER, raw.read_to_end(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 0);
    })
    .await;
}

#[tokio::test]
async fn reset_mid_frame_sends_half_a_reply_then_resets() {
    check_fault(Fault::ResetMidFrame, async |_, addr| {
        let reply = timeout(ANSWER, client(addr).await.read_input_registers(0, 2))
            .await
            .unwrap();
        assert!(
            matches!(reply, Err(tokio_modbus::Error::Transport(_))),
            "{reply:?}"
        );
        let mut raw = TcpStream::connect(addr).await.unwrap();
        raw.write_all(&RAW_REQUEST).await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 64];
        let end = timeout(ANSWER, async {
            loop {
                match raw.read(&mut chunk).await {
                    Ok(0) => break Ok(()),
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(e) => break Err(e),
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(buf.len(), 6, "half of the 13-byte reply");
        assert_eq!(&buf[..2], &RAW_REQUEST[..2]);
        assert_eq!(end.map_err(|e| e.kind()), Err(ErrorKind::ConnectionReset));
    })
    .await;
}

#[tokio::test]
async fn a_fault_for_an_unknown_device_is_refused() {
    let knobs = Knobs::default();
    let sim = three_meters(0.0, &knobs).await;
    assert!(sim.set_fault("nope", Fault::NoReply).is_err());
    assert!(sim.clear_fault("nope").is_err());
    assert_eq!(sim.snapshot("nope"), None);
    assert_eq!(sim.served_requests("nope"), None);
    sim.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Control endpoint
// ---------------------------------------------------------------------------------------------

/// One HTTP/1.1 request with `Connection: close`; the status and the JSON body.
async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let mut s = timeout(ANSWER, TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    timeout(ANSWER, s.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let json = if body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(body).unwrap()
    };
    (status, json)
}

async fn with_control() -> SimulatorHandle {
    let knobs = Knobs::default();
    let p = sdm630();
    let sc = scenario(vec![
        device("meter-a", &p, 1, MAIN_LISTENER),
        device("meter-c", &p, 1, "second"),
    ]);
    let opts = Options {
        control: Some("127.0.0.1:0".parse().unwrap()),
        ..options(0.0)
    };
    Simulator::start(sc, TestPhysics::boxed(&knobs), opts)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_control_endpoint_lists_devices_shows_snapshots_and_switches_faults() {
    let sim = with_control().await;
    let ctl = sim.control_addr().unwrap();

    let (status, list) = http(ctl, "GET", "/devices", "").await;
    assert_eq!(status, 200);
    assert_eq!(list[0]["name"], "meter-a");
    assert_eq!(list[0]["unit_id"], 1);
    assert_eq!(list[0]["listener"], "main");
    assert_eq!(list[0]["profile"], "eastron-sdm630");
    assert_eq!(list[1]["addr"], sim.addr("second").unwrap().to_string());

    let (status, snap) = http(ctl, "GET", "/devices/meter-a", "").await;
    assert_eq!(status, 200);
    assert_eq!(snap["sim_time_ms"], START_MS);
    let words = snap["points"][0]["words"].clone();
    assert_eq!(
        words,
        serde_json::json!(sim.snapshot("meter-a").unwrap().points[0].words)
    );

    let (status, set) = http(
        ctl,
        "PUT",
        "/devices/meter-a/fault",
        r#"{"kind":"exception","code":4}"#,
    )
    .await;
    assert_eq!(status, 200, "{set}");
    assert_eq!(sim.fault("meter-a"), Some(Fault::Exception(4)));
    let reply = timeout(
        ANSWER,
        connect(&sim, MAIN_LISTENER, 1)
            .await
            .read_input_registers(0, 2),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(reply, Err(ExceptionCode::ServerDeviceFailure));

    let (status, _) = http(
        ctl,
        "PUT",
        "/devices/meter-a/fault",
        r#"{"kind":"late_reply","delay_ms":1500}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        sim.fault("meter-a"),
        Some(Fault::LateReply {
            delay: Duration::from_millis(1500)
        })
    );

    let (status, cleared) = http(ctl, "DELETE", "/devices/meter-a/fault", "").await;
    assert_eq!(status, 200);
    assert_eq!(cleared["previous"]["kind"], "late_reply");
    assert_eq!(sim.fault("meter-a"), None);
    sim.shutdown().await;
}

#[tokio::test]
async fn the_control_endpoint_answers_bad_json_and_unknown_devices_with_json_errors() {
    let sim = with_control().await;
    let ctl = sim.control_addr().unwrap();
    for body in [
        "",
        "{",
        r#"{"kind":"bogus"}"#,
        r#"{"kind":"exception","code":0}"#,
        r#"{"kind":"exception"}"#,
        "[1,2]",
    ] {
        let (status, err) = http(ctl, "PUT", "/devices/meter-a/fault", body).await;
        assert_eq!(status, 400, "{body}");
        assert!(err["error"].is_string(), "{body}: {err}");
    }
    assert_eq!(sim.fault("meter-a"), None);
    let (status, err) = http(ctl, "GET", "/devices/meter-a?refresh=maybe", "").await;
    assert_eq!(status, 400);
    assert!(err["error"].is_string());
    for (method, path, body) in [
        ("GET", "/devices/nope", ""),
        ("PUT", "/devices/nope/fault", r#"{"kind":"no_reply"}"#),
        ("DELETE", "/devices/nope/fault", ""),
        ("GET", "/elsewhere", ""),
    ] {
        let (status, err) = http(ctl, method, path, body).await;
        assert_eq!(status, 404, "{method} {path}");
        assert!(err["error"].is_string(), "{method} {path}: {err}");
    }
    sim.shutdown().await;
}
