//! The poller on an RTU bus carried by in-memory pipes, on paused tokio time: schedules,
//! overruns, per-point intervals, the inter-frame delay, a dead unit, back-pressure and
//! shutdown, all deterministic and instant.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{
    Bus, BusEvent, BusTransports, BusUnit, HOUR_ALIGNED_MS, config, head, image_for,
    library_profile, load, next, profile_file,
};
use fivezero_gateway::poll::{DeviceReadings, InstantClock, PollOptions, spawn_with};
use fivezero_model::wire::Quality;
use fivezero_profiles::codec::{self, RegisterImage};
use tokio::sync::mpsc;
use tokio::time::Instant;

const LIMIT: Duration = Duration::from_secs(30);

/// Options on a bus; the clock reads `HOUR_ALIGNED_MS` at the instant returned.
fn options(bus: &Arc<Bus>) -> (PollOptions, Instant) {
    let start = Instant::now();
    (
        PollOptions {
            clock: Arc::new(InstantClock::starting_at(HOUR_ALIGNED_MS)),
            transports: Arc::new(BusTransports(Arc::clone(bus))),
            seed: Some(11),
        },
        start,
    )
}

/// UTC ms of a tokio instant, on the clock of [`options`].
fn utc(start: Instant, at: Instant) -> i64 {
    HOUR_ALIGNED_MS + i64::try_from(at.duration_since(start).as_millis()).unwrap()
}

fn rtu_device(name: &str, profile: &str, unit: u8, interval: &str, timeout: &str) -> String {
    format!(
        r#"
[[device]]
name = "{name}"
profile = "{profile}"
rtu = "/dev/ttyFAKE0"
baud = 9600
unit = {unit}
interval = "{interval}"
timeout = "{timeout}"
"#
    )
}

/// A profile of two holding registers far apart (two requests), the second read every
/// third cycle of a 1 s device.
const TWO_BLOCKS: &str = r#"
[device]
manufacturer = "Acme"
model = "Probe"
category = "meter"
source = "test"

[modbus]
max_gap = 0

[[point]]
name = "temperature"
metric = "ambient.temperature"
table = "holding"
address = 0
type = "i16"
unit = "°C"

[[point]]
name = "frequency"
metric = "electricity.frequency"
table = "holding"
address = 100
type = "u16"
unit = "Hz"
interval = "3s"
"#;

fn two_blocks(folder: &str) -> (String, RegisterImage) {
    let path = profile_file(folder, "acme-probe", TWO_BLOCKS);
    let profile = load(&path);
    let mut image = RegisterImage::new();
    codec::encode(&profile, 0, 21.0, &mut image).unwrap();
    codec::encode(&profile, 1, 50.0, &mut image).unwrap();
    (path.display().to_string(), image)
}

#[tokio::test(start_paused = true)]
async fn a_dead_unit_on_the_bus_never_stops_the_other_unit_from_being_polled_on_schedule() {
    let sdm = library_profile("eastron-sdm630");
    let bus = Bus::new([(1, BusUnit::Serve(image_for(&sdm))), (2, BusUnit::Dead)]);
    let cfg = config(
        "rtu-dead",
        &(head("60s")
            + &rtu_device("alive", "eastron-sdm630", 1, "1s", "300ms")
            + &rtu_device("dead", "eastron-sdm630", 2, "1s", "300ms")),
    );
    let (opts, _start) = options(&bus);
    let (tx, mut rx) = mpsc::channel(256);
    let poller = spawn_with(&cfg, tx, opts);

    let mut alive: Vec<DeviceReadings> = Vec::new();
    let mut dead: Vec<DeviceReadings> = Vec::new();
    while alive.len() < 120 {
        let r = next(&mut rx, LIMIT).await;
        if &*r.device == "alive" {
            alive.push(r);
        } else {
            dead.push(r);
        }
    }
    // Every cycle of the live unit, none skipped, every value good, read within its slot.
    let first = alive[0].cycle;
    for (k, r) in alive.iter().enumerate() {
        assert_eq!(r.cycle, first + k as u64, "cycle {k} missing");
        for x in &r.readings {
            assert_eq!(x.quality, Quality::Good, "{}: {:?}", x.metric, x.reason);
            assert!(
                x.ts - r.ts_ms < 500,
                "read {} ms after its boundary",
                x.ts - r.ts_ms
            );
        }
    }
    // The dead unit: no value ever, and its backoff keeps it from taking every turn.
    assert!(!dead.is_empty());
    assert!(
        dead.iter()
            .flat_map(|r| &r.readings)
            .all(|x| x.value.is_none())
    );
    let attempts = bus
        .events()
        .iter()
        .filter(|(_, e)| *e == BusEvent::Request(2))
        .count();
    assert!(
        attempts < 30,
        "the dead unit was tried {attempts} times in 120 s"
    );
    let h = poller.health();
    assert_eq!(h[0].overruns, 0);
    assert!(h[1].timeouts >= 1);
    poller.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_thousand_cycles_run_on_their_boundaries_without_drift() {
    let sdm = library_profile("eastron-sdm630");
    let bus = Bus::new([(1, BusUnit::Serve(image_for(&sdm)))]);
    let cfg = config(
        "rtu-drift",
        &(head("60s") + &rtu_device("meter", "eastron-sdm630", 1, "1s", "300ms")),
    );
    let (opts, start) = options(&bus);
    let (tx, mut rx) = mpsc::channel(16);
    let poller = spawn_with(&cfg, tx, opts);

    let first = next(&mut rx, LIMIT).await;
    let mut lag = Vec::new();
    let mut last = first.cycle;
    for _ in 0..1000 {
        let r = next(&mut rx, LIMIT).await;
        assert_eq!(r.cycle, last + 1);
        assert_eq!(r.ts_ms, i64::try_from(r.cycle).unwrap() * 1000);
        last = r.cycle;
        let latest = r.readings.iter().map(|x| x.ts).max().unwrap();
        lag.push(latest - r.ts_ms);
    }
    // The time from boundary to the last reply is the same in cycle 1 and cycle 1000.
    assert!(
        lag.iter().all(|l| *l == lag[0]),
        "lag varies: {:?}",
        &lag[..5]
    );
    assert!(lag[0] < 100);
    assert_eq!(
        utc(start, Instant::now()) / 1000,
        i64::try_from(last).unwrap(),
        "the paused clock and the cycles agree"
    );
    assert_eq!(poller.health()[0].overruns, 0);
    poller.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn slow_cycles_are_counted_as_overruns_and_skipped_never_bunched() {
    let path = profile_file(
        "rtu-overrun",
        "acme-slow",
        &TWO_BLOCKS.replace("interval = \"3s\"\n", ""),
    );
    let profile = load(&path);
    let mut image = RegisterImage::new();
    codec::encode(&profile, 0, 21.0, &mut image).unwrap();
    codec::encode(&profile, 1, 50.0, &mut image).unwrap();
    // Two requests of 650 ms each: a cycle takes 1.3 s of a 1 s interval.
    let bus = Bus::new([(1, BusUnit::Slow(image, Duration::from_millis(650)))]);
    let cfg = config(
        "rtu-overrun",
        &(head("60s") + &rtu_device("slow", &path.display().to_string(), 1, "1s", "2s")),
    );
    let (opts, start) = options(&bus);
    let (tx, mut rx) = mpsc::channel(64);
    let poller = spawn_with(&cfg, tx, opts);

    let mut cycles = Vec::new();
    for _ in 0..20 {
        let r = next(&mut rx, LIMIT).await;
        assert!(r.readings.iter().all(|x| x.quality == Quality::Good));
        cycles.push(r);
    }
    // Cycle starts are the first request of each cycle on the bus.
    let requests: Vec<i64> = bus
        .events()
        .iter()
        .filter(|(_, e)| *e == BusEvent::Request(1))
        .map(|(t, _)| utc(start, *t))
        .collect();
    let starts: Vec<i64> = requests
        .iter()
        .step_by(2)
        .copied()
        .take(cycles.len())
        .collect();
    for (r, s) in cycles.iter().zip(&starts) {
        let late = s - r.ts_ms;
        assert!(
            (0..=500).contains(&late),
            "cycle {} started {late} ms late",
            r.cycle
        );
    }
    assert!(starts.windows(2).all(|w| w[1] - w[0] >= 500), "{starts:?}");
    let skipped: u64 = cycles.windows(2).map(|w| w[1].cycle - w[0].cycle - 1).sum();
    assert!(skipped > 0, "no cycle was skipped");
    assert_eq!(
        cycles[0].cycle,
        u64::try_from(HOUR_ALIGNED_MS / 1000).unwrap()
    );
    // The poller may have skipped one more since the last cycle was received.
    let overruns = poller.health()[0].overruns;
    assert!(
        overruns == skipped || overruns == skipped + 1,
        "{overruns} vs {skipped}"
    );
    poller.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_point_with_its_own_interval_is_read_only_in_its_cycles() {
    let (path, image) = two_blocks("rtu-due");
    let bus = Bus::new([(1, BusUnit::Serve(image))]);
    let cfg = config(
        "rtu-due",
        &(head("60s") + &rtu_device("probe", &path, 1, "1s", "300ms")),
    );
    let (opts, _start) = options(&bus);
    let (tx, mut rx) = mpsc::channel(64);
    let poller = spawn_with(&cfg, tx, opts);

    for _ in 0..9 {
        let r = next(&mut rx, LIMIT).await;
        let metrics: Vec<&str> = r.readings.iter().map(|x| x.metric.as_str()).collect();
        if r.cycle % 3 == 0 {
            assert_eq!(
                metrics,
                ["ambient.temperature", "electricity.frequency"],
                "cycle {}",
                r.cycle
            );
        } else {
            assert_eq!(metrics, ["ambient.temperature"], "cycle {}", r.cycle);
        }
        assert!(r.readings.iter().all(|x| x.quality == Quality::Good));
    }
    let h = &poller.health()[0];
    assert!(h.requests_per_cycle == 1 || h.requests_per_cycle == 2);
    poller.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn frames_on_the_bus_keep_three_and_a_half_characters_of_silence() {
    let (path, image) = two_blocks("rtu-silence");
    let bus = Bus::new([
        (1, BusUnit::Serve(image.clone())),
        (2, BusUnit::Serve(image)),
    ]);
    let cfg = config(
        "rtu-silence",
        &(head("60s")
            + &rtu_device("a", &path, 1, "1s", "300ms")
            + &rtu_device("b", &path, 2, "1s", "300ms")),
    );
    let (opts, _start) = options(&bus);
    let (tx, mut rx) = mpsc::channel(64);
    let poller = spawn_with(&cfg, tx, opts);
    for _ in 0..10 {
        let _ = next(&mut rx, LIMIT).await;
    }
    poller.shutdown().await;

    // 9600 baud 8N1: 3.5 characters of 10 bits = 3.65 ms between a reply and the next request.
    let events = bus.events();
    let mut checked = 0;
    for w in events.windows(2) {
        if let ((t0, BusEvent::Reply(_)), (t1, BusEvent::Request(_))) = (w[0], w[1]) {
            assert!(t1 - t0 >= Duration::from_micros(3_645), "gap {:?}", t1 - t0);
            checked += 1;
        }
    }
    assert!(checked >= 10);
    // Both units had their turns in every cycle.
    let turns = |u| {
        events
            .iter()
            .filter(|(_, e)| *e == BusEvent::Request(u))
            .count()
    };
    assert!(
        turns(1).abs_diff(turns(2)) <= 2,
        "{} vs {}",
        turns(1),
        turns(2)
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_channel_drops_whole_cycles_and_counts_them_without_stopping_the_schedule() {
    let (path, image) = two_blocks("rtu-full");
    let bus = Bus::new([(1, BusUnit::Serve(image))]);
    let cfg = config(
        "rtu-full",
        &(head("60s") + &rtu_device("probe", &path, 1, "1s", "300ms")),
    );
    let (opts, _start) = options(&bus);
    let (tx, mut rx) = mpsc::channel(1);
    let poller = spawn_with(&cfg, tx, opts);

    // Nobody reads for 20 s.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let h = poller.health()[0].clone();
    assert!(h.cycles >= 15, "{} cycles", h.cycles);
    assert!(
        h.cycles_dropped >= h.cycles - 2,
        "{} dropped",
        h.cycles_dropped
    );
    assert_eq!(h.overruns, 0, "waiting for room never costs a cycle");
    // The one cycle that fitted is whole.
    let r = next(&mut rx, LIMIT).await;
    assert!(r.readings.iter().all(|x| x.quality == Quality::Good));
    poller.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_lets_the_cycle_in_flight_finish_and_delivers_it() {
    let path = profile_file(
        "rtu-stop",
        "acme-stop",
        &TWO_BLOCKS.replace("interval = \"3s\"\n", ""),
    );
    let profile = load(&path);
    let mut image = RegisterImage::new();
    codec::encode(&profile, 0, 21.0, &mut image).unwrap();
    codec::encode(&profile, 1, 50.0, &mut image).unwrap();
    let bus = Bus::new([(1, BusUnit::Slow(image, Duration::from_millis(300)))]);
    let cfg = config(
        "rtu-stop",
        &(head("60s") + &rtu_device("probe", &path.display().to_string(), 1, "1s", "1s")),
    );
    let (opts, start) = options(&bus);
    let (tx, mut rx) = mpsc::channel(64);
    let poller = spawn_with(&cfg, tx, opts);

    let first = next(&mut rx, LIMIT).await;
    // Stop 100 ms into the next cycle, while its first request is on the bus.
    let to_boundary = first.ts_ms + 1000 - utc(start, Instant::now());
    let at = Instant::now() + Duration::from_millis(u64::try_from(to_boundary + 100).unwrap());
    tokio::time::sleep_until(at).await;
    assert!(
        bus.events()
            .last()
            .is_some_and(|(_, e)| *e == BusEvent::Request(1))
    );
    poller.shutdown().await;
    let last = next(&mut rx, LIMIT).await;
    assert_eq!(last.cycle, first.cycle + 1);
    assert_eq!(last.readings.len(), 2);
    assert!(last.readings.iter().all(|x| x.quality == Quality::Good));
    assert!(rx.recv().await.is_none(), "nothing after the stop");
}
