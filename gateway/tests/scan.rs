//! `fivezero-gateway scan` end to end, against a small tokio-modbus server.
//!
//! The simulator serves only the registers its profiles declare, and a profile cannot declare
//! the "SunS" marker or the model headers (a point without a metric must be a scale factor).
//! So these tests serve a fixed SunSpec register image, built with the profile codec's
//! `RegisterImage`: a SolarEdge-style inverter (common model, model 103 with the SE25K dump
//! from `reference/registers.md` §6.2) with a meter behind it (common model, model 203), and
//! variants. Anything outside the image is answered with exception 02, as real devices do.
//! Each draft `scan` writes is then loaded with `load_file` and read back with
//! `fivezero-gateway read` from the same server, so the discovered addresses are checked
//! against the values they must give.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, Output};
use std::sync::Arc;

use fivezero_profiles::Table;
use fivezero_profiles::codec::RegisterImage;
use serde_json::Value as Json;
use tokio::net::TcpListener;
use tokio_modbus::server::Service;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

// ---------------------------------------------------------------------------------------------
// The device
// ---------------------------------------------------------------------------------------------

/// Images by unit id; missing registers and units answer exception 02 and 0B.
#[derive(Debug, Clone)]
struct Images(Arc<HashMap<u8, RegisterImage>>);

impl Service for Images {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Result<Response, ExceptionCode>> + Send>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let out = match (self.0.get(&req.slave), req.request) {
            (None, _) => Err(ExceptionCode::GatewayTargetDevice),
            (Some(image), Request::ReadHoldingRegisters(start, count)) => image
                .registers(Table::Holding, start, count)
                .map(|w| Response::ReadHoldingRegisters(w.to_vec()))
                .ok_or(ExceptionCode::IllegalDataAddress),
            (Some(_), _) => Err(ExceptionCode::IllegalFunction),
        };
        Box::pin(std::future::ready(out))
    }
}

async fn serve(images: HashMap<u8, RegisterImage>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let service = Images(Arc::new(images));
    let server = tokio_modbus::server::tcp::Server::new(listener);
    tokio::spawn(async move {
        let on_connected = |stream, _peer| {
            let service = service.clone();
            async move { Ok(Some((service, stream))) }
        };
        let _ = server.serve(&on_connected, |_err| {}).await;
    });
    addr
}

/// Text as SunSpec strings: two characters per register, NUL-padded.
fn text(s: &str, registers: usize) -> Vec<u16> {
    let mut b = s.as_bytes().to_vec();
    b.resize(registers * 2, 0);
    b.chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect()
}

/// A common model (L = 65) at `at`.
fn common(image: &mut RegisterImage, at: u16, mn: &str, md: &str, vr: &str, sn: &str) {
    let mut words = vec![1, 65];
    words.extend(text(mn, 16));
    words.extend(text(md, 16));
    words.extend(text("", 8));
    words.extend(text(vr, 8));
    words.extend(text(sn, 16));
    words.push(1); // DA
    image.put_registers(Table::Holding, at, &words);
}

/// The SE25K model-103 data from registers.md §6.2 (after ID and L).
const SE25K: [u16; 50] = [
    0, 0, 0, 0, 65534, 3965, 3953, 3963, 2288, 2284, 2285, 65535, 0, 0, 4998, 65534, 0, 0, 0, 0, 0,
    0, 60, 8980, 0, 0, 0, 16, 65535, 0, 0, 32768, 3927, 32768, 32768, 65534, 2, 0, 65535, 65535,
    65535, 65535, 0, 0, 65535, 65535, 65535, 65535, 0, 0,
];

/// Model 203 data (after ID and L): 12.34 A on L1, 230.1 V, 50 Hz, −1.5 kW, 123456 Wh import.
fn meter_203() -> Vec<u16> {
    let mut d = vec![0x8000u16; 105];
    let mut set = |offset: usize, w: u16| d[offset - 2] = w;
    set(3, 1234); // AphA
    set(6, (-2i16) as u16); // A_SF
    set(8, 2301); // PhVphA
    set(12, 3985); // PhVphAB
    set(15, (-1i16) as u16); // V_SF
    set(16, 5000); // Hz
    set(17, (-2i16) as u16); // Hz_SF
    set(18, (-1500i16) as u16); // W
    set(22, 0); // W_SF
    set(38, 0); // TotWhExp (acc32 0: not accumulated)
    set(39, 0);
    set(46, 1); // TotWhImp = 0x0001_E240 = 123456
    set(47, 0xE240);
    set(54, 0); // TotWh_SF
    set(105, 0); // Evt
    set(106, 0);
    d
}

/// SolarEdge layout at `base`: inverter common + 103, meter common + 203, end model if `end`.
fn solaredge(base: u16, end: bool) -> RegisterImage {
    let mut image = RegisterImage::new();
    image.put_registers(Table::Holding, base, &[0x5375, 0x6E53]);
    common(
        &mut image,
        base + 2,
        "SolarEdge",
        "SE25K",
        "0003.2468",
        "7E0123AB",
    );
    image.put_registers(Table::Holding, base + 69, &[103, 50]);
    image.put_registers(Table::Holding, base + 71, &SE25K);
    common(
        &mut image,
        base + 121,
        "SolarEdge",
        "WND-3Y400",
        "23",
        "M-1",
    );
    image.put_registers(Table::Holding, base + 188, &[203, 105]);
    image.put_registers(Table::Holding, base + 190, &meter_203());
    if end {
        image.put_registers(Table::Holding, base + 295, &[0xFFFF, 0]);
    }
    image
}

// ---------------------------------------------------------------------------------------------
// Running the CLI
// ---------------------------------------------------------------------------------------------

async fn gateway(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_fivezero-gateway"))
            .args(&args)
            .output()
            .expect("the gateway binary runs")
    })
    .await
    .expect("the blocking task ends")
}

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fivezero-scan-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

/// `read --json` of `profile`: point name → row.
async fn read_back(profile: &Path, addr: SocketAddr) -> HashMap<String, Json> {
    let out = gateway(args(&[
        "read",
        "--profile",
        &profile.display().to_string(),
        "--tcp",
        &addr.to_string(),
        "--unit",
        "1",
        "--json",
    ]))
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: Vec<Json> = serde_json::from_slice(&out.stdout).expect("JSON array");
    rows.into_iter()
        .map(|r| (r["point"].as_str().unwrap_or_default().to_owned(), r))
        .collect()
}

fn number(rows: &HashMap<String, Json>, point: &str) -> f64 {
    let r = &rows[point];
    assert_eq!(r["quality"], "good", "{point}: {r}");
    r["value"]
        .as_f64()
        .unwrap_or_else(|| panic!("{point}: {r}"))
}

fn near(got: f64, want: f64) {
    assert!((got - want).abs() < 1e-9, "{got} != {want}");
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inverter_with_a_meter_is_listed_and_its_draft_reads_back_the_right_values() {
    let addr = serve(HashMap::from([(1, solaredge(40_000, true))])).await;
    let dir = scratch("inverter");
    let file = dir.join("se25k-draft.toml");
    let out = gateway(args(&[
        "scan",
        "--tcp",
        &addr.to_string(),
        "--unit",
        "1",
        "--emit-profile",
        &file.display().to_string(),
    ]))
    .await;
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(text.contains("marker \"SunS\" at 40000"), "{text}");
    for want in [
        "1 1 common 40002 65",
        "1 103 inverter, three phase (int+SF) 40069 50",
        "2 1 common 40121 65",
        "2 203 meter, wye three phase (int+SF) 40188 105",
    ] {
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>().join(" ") == want),
            "no {want:?} in\n{text}"
        );
    }
    assert!(text.contains("end model 0xFFFF at 40295"), "{text}");
    assert!(
        text.contains("device 1: manufacturer \"SolarEdge\", model \"SE25K\""),
        "{text}"
    );
    assert!(text.contains("wrote "), "{text}");

    let draft = std::fs::read_to_string(&file).expect("the draft is written");
    assert!(draft.starts_with("# DRAFT"), "{draft}");
    let profile = fivezero_profiles::load_file(&file).unwrap_or_else(|d| {
        panic!(
            "{}",
            d.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    assert_eq!(profile.id, "se25k-draft");
    assert_eq!(profile.manufacturer, "SolarEdge");

    let rows = read_back(&file, addr).await;
    near(number(&rows, "PPVphAB"), 396.5);
    near(number(&rows, "PhVphA"), 228.8);
    near(number(&rows, "Hz"), 49.98);
    near(number(&rows, "WH"), 3_941.14);
    near(number(&rows, "TmpSnk"), 39.27);
    near(number(&rows, "St"), 2.0);
    assert_eq!(rows["Md"]["value"], "SE25K");
    assert_eq!(rows["SN"]["value"], "7E0123AB");
    // TmpCab is 0x8000 on the SE25K: good, but not available.
    assert_eq!(rows["TmpCab"]["quality"], "good");
    assert_eq!(rows["TmpCab"]["value"], Json::Null);
    assert_eq!(rows["TmpCab"]["raw"], serde_json::json!(["0x8000"]));
    assert_eq!(rows["W_SF"]["metric"], Json::Null);

    // The profile check an integrator runs next passes too.
    let check = gateway(args(&["profile", "check", &file.display().to_string()])).await;
    assert!(check.status.success(), "{}", stderr(&check));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_meter_behind_the_inverter_is_drafted_as_device_2() {
    let addr = serve(HashMap::from([(1, solaredge(40_000, true))])).await;
    let dir = scratch("meter");
    let file = dir.join("se-meter.toml");
    let out = gateway(args(&[
        "scan",
        "--tcp",
        &addr.to_string(),
        "--unit",
        "1",
        "--device",
        "2",
        "--emit-profile",
        &file.display().to_string(),
    ]))
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("logical device 2 of 2 (models 1 at 40121, 203 at 40188)"));
    let rows = read_back(&file, addr).await;
    near(number(&rows, "AphA"), 12.34);
    near(number(&rows, "PhVphA"), 230.1);
    near(number(&rows, "PhVphAB"), 398.5);
    near(number(&rows, "Hz"), 50.0);
    near(number(&rows, "W"), -1.5); // kW
    near(number(&rows, "TotWhImp"), 123.456); // kWh
    assert_eq!(rows["TotWhExp"]["value"], Json::Null);
    assert_eq!(rows["Md"]["value"], "WND-3Y400");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_at_50000_without_end_model_is_found_after_the_other_bases_refuse() {
    let addr = serve(HashMap::from([(3, solaredge(50_000, false))])).await;
    let dir = scratch("base50000");
    let file = dir.join("at-50000.toml");
    let out = gateway(args(&[
        "scan",
        "--tcp",
        &addr.to_string(),
        "--unit",
        "3",
        "--emit-profile",
        &file.display().to_string(),
    ]))
    .await;
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(text.contains("marker \"SunS\" at 50000"), "{text}");
    assert!(
        text.contains("(not at 40000: exception 02 illegal data address)"),
        "{text}"
    );
    assert!(
        text.contains("(not at 0: exception 02 illegal data address)"),
        "{text}"
    );
    assert!(
        text.contains("no end model: illegal data address at 50295, taken as the end"),
        "{text}"
    );
    let profile = fivezero_profiles::load_file(&file).expect("the draft loads");
    assert_eq!(profile.point("W").map(|p| p.address), Some(50_083));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_without_sunspec_map_is_refused_with_what_each_base_answered() {
    let addr = serve(HashMap::from([(1, RegisterImage::new())])).await;
    let out = gateway(args(&["scan", "--tcp", &addr.to_string(), "--unit", "1"])).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("no SunSpec marker"), "{err}");
    assert!(
        err.contains("40000: exception 02 illegal data address"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_file_is_never_overwritten() {
    let addr = serve(HashMap::from([(1, solaredge(40_000, true))])).await;
    let dir = scratch("exists");
    let file = dir.join("mine.toml");
    std::fs::write(&file, "# my own work\n").unwrap();
    let out = gateway(args(&[
        "scan",
        "--tcp",
        &addr.to_string(),
        "--unit",
        "1",
        "--emit-profile",
        &file.display().to_string(),
    ]))
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("never overwritten"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "# my own work\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_cannot_be_reached_exits_1() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let out = gateway(args(&["scan", "--tcp", &closed.to_string(), "--unit", "1"])).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot reach tcp"),
        "{}",
        stderr(&out)
    );
}
