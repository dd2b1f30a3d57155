//! `fivezero-gateway read` against the Green Sail simulator, run as an integrator runs it.
//!
//! The simulator's clock is frozen (speed 0), so what `read` prints must be exactly what the
//! simulator's snapshot says it served, value and raw words alike.

mod common;
#[path = "fixtures/sim.rs"]
mod sim;

use std::net::SocketAddr;
use std::process::{Command, Output};

use fivezero_profiles::Table;
use fivezero_profiles::codec::{self, RegisterImage};
use fivezero_sim::fault::Fault;
use fivezero_sim::server::{DeviceSnapshot, ServedValue};
use serde_json::Value as Json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

fn read_args(profile: &str, addr: SocketAddr, unit: u8, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "read",
        "--profile",
        profile,
        "--tcp",
        &addr.to_string(),
        "--unit",
        &unit.to_string(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    v.extend(extra.iter().map(|s| (*s).to_owned()));
    v
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Compares every row of `read --json` with the snapshot, point by point.
fn compare(rows: &[Json], snap: &DeviceSnapshot) {
    assert_eq!(rows.len(), snap.points.len(), "{}", snap.device);
    for (row, point) in rows.iter().zip(&snap.points) {
        let who = format!("{} {}", snap.device, point.name);
        assert_eq!(row["point"], point.name.as_str(), "{who}");
        assert_eq!(row["metric"].as_str(), point.metric, "{who}");
        assert_eq!(row["address"], point.address, "{who}");
        let raw: Vec<String> = point.words.iter().map(|w| format!("0x{w:04X}")).collect();
        assert_eq!(row["raw"], serde_json::json!(raw), "{who}");
        match &point.value {
            ServedValue::Number(y) => {
                assert_eq!(row["quality"], "good", "{who}: {row}");
                let x = row["value"].as_f64().unwrap_or(f64::NAN);
                assert!(sim::same(x, *y), "{who}: read {x}, served {y}");
            }
            ServedValue::Text(t) => {
                assert_eq!(row["quality"], "good", "{who}: {row}");
                assert_eq!(row["value"], t.as_str(), "{who}");
            }
            ServedValue::NotAvailable(_) => {
                assert_eq!(row["value"], Json::Null, "{who}: {row}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_point_is_printed_as_the_simulator_serves_it() {
    let sim = sim::greensail(0.0).await;
    let devices = sim::devices(&sim);
    for name in [
        "pv-roof-a",
        "grid-meter",
        "boiler",
        "sorting-line-meter",
        "water-reused",
        "ev-mixer-1",
        "ev-loader-1",
    ] {
        let (_, profile, unit, addr) = devices
            .iter()
            .find(|d| d.0 == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in the scenario"));
        let out = gateway(read_args(&profile, addr, unit, &["--json"])).await;
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        let rows: Vec<Json> = serde_json::from_slice(&out.stdout).expect("a JSON array");
        let snap = sim.snapshot(name).expect("a snapshot");
        compare(&rows, &snap);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_table_has_a_summary_and_a_line_per_point_and_a_path_works_as_a_profile() {
    let sim = sim::greensail(0.0).await;
    let addr = sim.addr("main").expect("main listener");
    let file = fivezero_profiles::library_dir().join("sunspec-inverter.toml");
    let out = gateway(read_args(&file.display().to_string(), addr, 2, &[])).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let summary = lines.next().unwrap_or_default();
    assert!(
        summary.starts_with("sunspec-inverter (")
            && summary.contains("unit 2: 1 request (minimum 1)"),
        "{summary}"
    );
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["point", "metric", "value", "unit", "quality", "raw"]
    );
    let w = text
        .lines()
        .find(|l| l.starts_with("W "))
        .unwrap_or_else(|| panic!("no W line in\n{text}"));
    assert!(
        w.contains("pv.ac_power") && w.contains("kW") && w.contains("good"),
        "{w}"
    );
    let st = text
        .lines()
        .find(|l| l.starts_with("St "))
        .unwrap_or_default();
    assert!(
        st.contains("(SLEEPING)") || st.contains("(MPPT)") || st.contains("(STARTING)"),
        "{st}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("W_SF ") && l.contains("(scale factor)"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exceptions_show_per_point_and_the_exit_status_stays_0() {
    let sim = sim::greensail(0.0).await;
    let addr = sim.addr("main").expect("main listener");
    sim.set_fault("pv-roof-b", Fault::Exception(2))
        .expect("known device");
    let out = gateway(read_args("sunspec-inverter", addr, 3, &["--json"])).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: Vec<Json> = serde_json::from_slice(&out.stdout).expect("a JSON array");
    assert!(!rows.is_empty());
    for r in &rows {
        assert_eq!(r["quality"], "error", "{r}");
        assert_eq!(r["reason"], "exception 02 illegal data address", "{r}");
        assert_eq!(r["value"], Json::Null);
        assert_eq!(r["raw"], Json::Null);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_never_answers_or_cannot_be_reached_exits_1() {
    let sim = sim::greensail(0.0).await;
    let addr = sim.addr("main").expect("main listener");
    sim.set_fault("pv-facade-south", Fault::NoReply)
        .expect("known device");
    let out = gateway(read_args(
        "sunspec-inverter",
        addr,
        4,
        &["--timeout", "300ms"],
    ))
    .await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("unit 4 on tcp") && err.contains("did not answer within 300ms"),
        "{err}"
    );
    assert!(out.stdout.is_empty());

    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("address")
    };
    let out = gateway(read_args("sunspec-inverter", closed, 1, &[])).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot reach tcp 127.0.0.1:"),
        "{}",
        stderr(&out)
    );

    let out = gateway(read_args("no-such-profile", addr, 1, &[])).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no profile \"no-such-profile\" in the library"));
}

/// A serial server stand-in: RTU frames over TCP, unit 7 answering reads of registers from
/// `image`, any other unit silent.
async fn rtu_over_tcp(image: RegisterImage) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let image = image.clone();
            tokio::spawn(async move {
                let mut frame = [0u8; 8];
                while stream.read_exact(&mut frame).await.is_ok() {
                    let ok_crc = common::crc16(&frame[..6]).to_le_bytes() == [frame[6], frame[7]];
                    let table = match frame[1] {
                        3 => Table::Holding,
                        4 => Table::Input,
                        _ => continue,
                    };
                    if !ok_crc || frame[0] != 7 {
                        continue;
                    }
                    let start = u16::from_be_bytes([frame[2], frame[3]]);
                    let count = u16::from_be_bytes([frame[4], frame[5]]);
                    let mut out = vec![frame[0], frame[1], u8::try_from(count * 2).unwrap()];
                    for a in start..start + count {
                        let w = image.registers(table, a, 1).map_or(0, |w| w[0]);
                        out.extend_from_slice(&w.to_be_bytes());
                    }
                    let crc = common::crc16(&out);
                    out.extend_from_slice(&crc.to_le_bytes());
                    if stream.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtu_frames_over_tcp_reach_a_serial_server() {
    let profile = common::library_profile("eastron-sdm630");
    let image = common::image_for(&profile);
    let addr = rtu_over_tcp(image.clone()).await;
    let args: Vec<String> = [
        "read",
        "--profile",
        "eastron-sdm630",
        "--rtu-tcp",
        &addr.to_string(),
        "--unit",
        "7",
        "--json",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let out = gateway(args).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: Vec<Json> = serde_json::from_slice(&out.stdout).expect("a JSON array");
    assert_eq!(rows.len(), profile.points.len());
    for (i, (row, point)) in rows.iter().zip(&profile.points).enumerate() {
        assert_eq!(row["quality"], "good", "{}: {row}", point.name);
        match codec::decode(&profile, i, &image).expect("decodes") {
            codec::Decoded::Number(x) => {
                assert_eq!(row["value"].as_f64(), Some(x), "{}", point.name)
            }
            codec::Decoded::Text(t) => assert_eq!(row["value"], t.as_str()),
            codec::Decoded::NotAvailable(_) => assert_eq!(row["value"], Json::Null),
        }
    }

    // On a serial line, unit 0 (broadcast) is refused before anything is sent; a unit that
    // stays silent is "did not answer".
    let mut args: Vec<String> = ["read", "--profile", "eastron-sdm630", "--rtu-tcp"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    args.push(addr.to_string());
    let out = gateway([args.clone(), vec!["--unit".into(), "0".into()]].concat()).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("outside 1..=247"), "{}", stderr(&out));
    let out = gateway(
        [
            args,
            vec![
                "--unit".into(),
                "9".into(),
                "--timeout".into(),
                "200ms".into(),
            ],
        ]
        .concat(),
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("unit 9 on rtu_tcp"),
        "{}",
        stderr(&out)
    );
}
