//! The poller against a tiny tokio-modbus TCP server serving an SDM630 register image.
//!
//! Real sockets, so real time: intervals are short and every wait has a deadline.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{
    Fault, HOUR_ALIGNED_MS, ServerState, Target, config, head, image_for, library_profile, next,
    tcp_server, until,
};
use fivezero_gateway::poll::{
    DeviceReadings, DeviceState, InstantClock, PollOptions, RealTransports, spawn_with,
};
use fivezero_model::wire::{Quality, Value};
use fivezero_profiles::Profile;
use fivezero_profiles::codec::{self, Decoded, RegisterImage};
use fivezero_profiles::plan::{self, ReadRequest};
use tokio::sync::mpsc;

const LIMIT: Duration = Duration::from_secs(10);

fn options() -> PollOptions {
    PollOptions {
        clock: Arc::new(InstantClock::starting_at(HOUR_ALIGNED_MS)),
        transports: Arc::new(RealTransports),
        seed: Some(7),
    }
}

fn device(
    name: &str,
    addr: std::net::SocketAddr,
    unit: u8,
    interval: &str,
    timeout: &str,
) -> String {
    format!(
        r#"
[[device]]
name = "{name}"
profile = "eastron-sdm630"
tcp = "{addr}"
unit = {unit}
interval = "{interval}"
timeout = "{timeout}"
"#
    )
}

/// A server serving the SDM630 image as unit 1 (and any other units given).
async fn sdm_server(
    units: &[u8],
) -> (
    Arc<Profile>,
    RegisterImage,
    Arc<ServerState>,
    std::net::SocketAddr,
) {
    let profile = library_profile("eastron-sdm630");
    let image = image_for(&profile);
    let state = Arc::new(ServerState::default());
    for &u in units {
        state.images.lock().unwrap().insert(u, image.clone());
    }
    let addr = tcp_server(Arc::clone(&state)).await;
    (profile, image, state, addr)
}

/// The metric ids of the reading points of `req`.
fn metrics_of(profile: &Profile, req: &ReadRequest) -> Vec<&'static str> {
    req.points
        .iter()
        .filter_map(|&i| profile.points[i].metric.map(|m| m.id))
        .collect()
}

/// Asserts that every good reading holds exactly what the codec decodes from the served image.
fn assert_good_values_match(profile: &Profile, image: &RegisterImage, r: &DeviceReadings) {
    for reading in r.readings.iter().filter(|x| x.quality == Quality::Good) {
        let i = profile
            .points
            .iter()
            .position(|p| p.metric.is_some_and(|m| m.id == reading.metric))
            .unwrap();
        match codec::decode(profile, i, image).unwrap() {
            Decoded::Number(x) => {
                assert_eq!(reading.value, Some(Value::Number(x)), "{}", reading.metric)
            }
            other => panic!("{}: unexpected {other:?}", reading.metric),
        }
    }
}

/// The register-table blocks a full cycle reads, without the hourly serial number.
fn input_blocks(profile: &Profile) -> Vec<ReadRequest> {
    plan::plan_all(profile)
        .into_iter()
        .filter(|r| r.table == fivezero_profiles::Table::Input)
        .collect()
}

#[tokio::test]
async fn one_device_is_polled_and_every_point_decodes_to_the_value_served() {
    let (profile, image, _state, addr) = sdm_server(&[1]).await;
    let cfg = config(
        "tcp-one",
        &(head("60s") + &device("meter", addr, 1, "1s", "500ms")),
    );
    let (tx, mut rx) = mpsc::channel(16);
    let poller = spawn_with(&cfg, tx, options());

    let r = next(&mut rx, LIMIT).await;
    assert_eq!(&*r.device, "meter");
    // The clock starts on an hour boundary: the first cycle is that boundary's, and every
    // point (the hourly serial number too) is due.
    assert_eq!(r.ts_ms, HOUR_ALIGNED_MS);
    assert_eq!(r.cycle, u64::try_from(HOUR_ALIGNED_MS / 1000).unwrap());
    let expected: Vec<(&str, f64)> = profile
        .reading_points()
        .map(|i| {
            let x = codec::decode(&profile, i, &image)
                .unwrap()
                .number()
                .unwrap();
            (profile.points[i].metric.unwrap().id, x)
        })
        .collect();
    assert_eq!(r.readings.len(), expected.len());
    for (reading, (metric, x)) in r.readings.iter().zip(&expected) {
        assert_eq!(reading.metric, *metric);
        assert_eq!(reading.device, "meter");
        assert_eq!(
            reading.quality,
            Quality::Good,
            "{metric}: {:?}",
            reading.reason
        );
        assert_eq!(reading.value, Some(Value::Number(*x)), "{metric}");
        assert!(reading.ts >= r.ts_ms, "receipt time after the boundary");
    }
    // And they are the values that were encoded (1.5 + index for the float points).
    let v1 = r
        .readings
        .iter()
        .find(|x| x.metric == "electricity.voltage_l1")
        .unwrap();
    assert_eq!(v1.value, Some(Value::Number(1.5)));

    let next_cycle = next(&mut rx, LIMIT).await;
    assert_eq!(next_cycle.cycle, r.cycle + 1);
    assert_eq!(
        next_cycle.readings.len(),
        expected.len() - 1,
        "the serial number is hourly"
    );

    let h = &poller.health()[0];
    assert_eq!(h.state, DeviceState::Online);
    assert!(h.cycles >= 1 && h.requests >= 6);
    assert!(h.latency_last.is_some() && h.last_success_ms.is_some());
    assert_eq!(h.timeouts, 0);
    poller.shutdown().await;
}

#[tokio::test]
async fn an_exception_02_on_one_block_marks_it_misconfigured_while_the_other_blocks_keep_reading() {
    let (profile, image, state, addr) = sdm_server(&[1]).await;
    let bad = input_blocks(&profile)[1].clone();
    state.faults.lock().unwrap().insert(
        Target {
            unit: 1,
            block: Some((bad.table, bad.start)),
        },
        Fault::Exception(2),
    );
    let cfg = config(
        "tcp-exception",
        &(head("60s") + &device("meter", addr, 1, "300ms", "500ms")),
    );
    let (tx, mut rx) = mpsc::channel(16);
    let poller = spawn_with(&cfg, tx, options());
    let bad_metrics = metrics_of(&profile, &bad);

    let reasons = |r: &DeviceReadings| -> Vec<Option<String>> {
        r.readings
            .iter()
            .filter(|x| bad_metrics.contains(&x.metric.as_str()))
            .map(|x| x.reason.clone())
            .collect()
    };
    let first = next(&mut rx, LIMIT).await;
    assert!(
        reasons(&first)
            .iter()
            .all(|r| r.as_deref() == Some("exception 02 illegal data address")),
        "{:?}",
        reasons(&first)
    );
    for _ in 0..3 {
        let r = next(&mut rx, LIMIT).await;
        assert!(
            reasons(&r)
                .iter()
                .all(|x| x.as_deref() == Some("misconfigured block")),
            "{:?}",
            reasons(&r)
        );
        for reading in &r.readings {
            if bad_metrics.contains(&reading.metric.as_str()) {
                assert_eq!(reading.value, None);
                assert_eq!(reading.quality, Quality::Error);
            } else {
                assert_eq!(reading.quality, Quality::Good, "{}", reading.metric);
            }
        }
        assert_good_values_match(&profile, &image, &r);
    }
    // Refused once, then skipped (retried only after backoff_max = 60 s).
    assert_eq!(state.requests_for(1, bad.table, bad.start), 1);
    let h = &poller.health()[0];
    assert_eq!(h.misconfigured_blocks, 1);
    assert_eq!(h.exceptions.get(&2), Some(&1));
    assert_eq!(h.state, DeviceState::Online);
    poller.shutdown().await;
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_reconnects_and_gives_error_readings() {
    let (_profile, _image, state, addr) = sdm_server(&[1]).await;
    state.faults.lock().unwrap().insert(
        Target {
            unit: 1,
            block: None,
        },
        Fault::Silence,
    );
    let cfg = config(
        "tcp-silent",
        &(head("1s") + &device("meter", addr, 1, "500ms", "200ms")),
    );
    let (tx, mut rx) = mpsc::channel(64);
    let poller = spawn_with(&cfg, tx, options());

    let first = next(&mut rx, LIMIT).await;
    assert!(!first.readings.is_empty());
    for r in &first.readings {
        assert_eq!(r.value, None);
        assert_eq!(r.quality, Quality::Error);
        assert_eq!(r.reason.as_deref(), Some("timeout"));
    }
    // Keep consuming until the poller has come back on a new connection.
    let end = tokio::time::Instant::now() + LIMIT;
    while state.connections.load(Ordering::SeqCst) < 2 {
        assert!(tokio::time::Instant::now() < end, "never reconnected");
        let r = next(&mut rx, LIMIT).await;
        for x in &r.readings {
            assert_eq!(x.value, None, "a value from a silent server");
            assert_eq!(x.quality, Quality::Error);
            let reason = x.reason.as_deref().unwrap_or_default();
            assert!(reason == "timeout" || reason == "unit offline", "{reason}");
        }
    }
    let h = &poller.health()[0];
    assert!(h.timeouts >= 1);
    assert!(h.reconnects >= 1);
    assert!(h.consecutive_failures >= 1);
    assert_eq!(h.last_success_ms, None);
    poller.shutdown().await;
}

#[tokio::test]
async fn a_short_reply_is_an_error_reading_never_a_wrong_value() {
    let (profile, image, state, addr) = sdm_server(&[1]).await;
    let blocks = input_blocks(&profile);
    let short = blocks.last().unwrap().clone();
    state.faults.lock().unwrap().insert(
        Target {
            unit: 1,
            block: Some((short.table, short.start)),
        },
        Fault::Short,
    );
    let cfg = config(
        "tcp-short",
        &(head("1s") + &device("meter", addr, 1, "300ms", "500ms")),
    );
    let (tx, mut rx) = mpsc::channel(64);
    let poller = spawn_with(&cfg, tx, options());
    let short_metrics = metrics_of(&profile, &short);

    let r = until(&mut rx, LIMIT, |r| {
        r.readings
            .iter()
            .any(|x| x.reason.as_deref() == Some("short reply"))
    })
    .await;
    for reading in &r.readings {
        if short_metrics.contains(&reading.metric.as_str()) {
            assert_eq!(reading.value, None, "{}", reading.metric);
            assert_eq!(reading.quality, Quality::Error);
            assert_eq!(reading.reason.as_deref(), Some("short reply"));
        }
    }
    // The blocks read before it are good and right.
    assert!(r.readings.iter().any(|x| x.quality == Quality::Good));
    assert_good_values_match(&profile, &image, &r);
    // Later cycles never turn the short block into a value either.
    for _ in 0..3 {
        let r = next(&mut rx, LIMIT).await;
        assert_good_values_match(&profile, &image, &r);
        assert!(
            r.readings
                .iter()
                .filter(|x| short_metrics.contains(&x.metric.as_str()))
                .all(|x| x.value.is_none())
        );
    }
    poller.shutdown().await;
}

#[tokio::test]
async fn a_busy_device_is_asked_once_more_within_the_cycle() {
    let (profile, image, state, addr) = sdm_server(&[1]).await;
    let busy = input_blocks(&profile)[0].clone();
    state.once.lock().unwrap().insert(
        Target {
            unit: 1,
            block: Some((busy.table, busy.start)),
        },
        Fault::Exception(6),
    );
    let cfg = config(
        "tcp-busy",
        &(head("60s") + &device("meter", addr, 1, "1s", "500ms")),
    );
    let (tx, mut rx) = mpsc::channel(16);
    let poller = spawn_with(&cfg, tx, options());

    let r = next(&mut rx, LIMIT).await;
    assert!(
        r.readings.iter().all(|x| x.quality == Quality::Good),
        "{:?}",
        r.readings
            .iter()
            .filter(|x| x.quality != Quality::Good)
            .collect::<Vec<_>>()
    );
    assert_good_values_match(&profile, &image, &r);
    assert_eq!(state.requests_for(1, busy.table, busy.start), 2);
    assert_eq!(poller.health()[0].exceptions.get(&6), Some(&1));
    poller.shutdown().await;
}

#[tokio::test]
async fn a_unit_offline_behind_a_gateway_never_stops_its_neighbour() {
    let (_profile, _image, state, addr) = sdm_server(&[1, 2]).await;
    state.faults.lock().unwrap().insert(
        Target {
            unit: 2,
            block: None,
        },
        Fault::Exception(0x0B),
    );
    let cfg = config(
        "tcp-gateway",
        &(head("60s")
            + &device("meter-1", addr, 1, "300ms", "500ms")
            + &device("meter-2", addr, 2, "300ms", "500ms")),
    );
    let (tx, mut rx) = mpsc::channel(64);
    let poller = spawn_with(&cfg, tx, options());

    let mut good_cycles = Vec::new();
    let mut offline_reasons = Vec::new();
    while good_cycles.len() < 4 {
        let r = next(&mut rx, LIMIT).await;
        if &*r.device == "meter-1" {
            assert!(r.readings.iter().all(|x| x.quality == Quality::Good));
            good_cycles.push(r.cycle);
        } else {
            assert!(r.readings.iter().all(|x| x.value.is_none()));
            offline_reasons.extend(r.readings.iter().filter_map(|x| x.reason.clone()));
        }
    }
    // Real time on a loaded machine may cost a cycle now and then; that no cycle of a bus
    // is lost to a dead neighbour is pinned on paused time in poll_rtu.rs.
    assert!(
        good_cycles.windows(2).all(|w| w[1] > w[0]),
        "{good_cycles:?}"
    );
    assert!(
        offline_reasons
            .iter()
            .any(|r| r == "exception 0B gateway target device failed to respond")
    );
    let h = poller.health();
    assert_eq!(h[0].state, DeviceState::Online);
    assert_eq!(h[1].state, DeviceState::Offline);
    poller.shutdown().await;
}

#[tokio::test]
async fn shutdown_finishes_and_closes_the_readings_channel() {
    let (_profile, _image, _state, addr) = sdm_server(&[1]).await;
    let cfg = config(
        "tcp-shutdown",
        &(head("60s") + &device("meter", addr, 1, "200ms", "500ms")),
    );
    let (tx, mut rx) = mpsc::channel(64);
    let poller = spawn_with(&cfg, tx, options());
    let _ = next(&mut rx, LIMIT).await;
    tokio::time::timeout(LIMIT, poller.shutdown())
        .await
        .expect("shutdown finishes");
    // Whatever was sent before the stop is still there, complete; then the channel ends.
    while let Some(r) = tokio::time::timeout(LIMIT, rx.recv())
        .await
        .expect("channel ends")
    {
        assert!(r.readings.iter().all(|x| x.quality == Quality::Good));
    }
}
