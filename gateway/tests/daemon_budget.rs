//! The whole daemon over its byte budget (issue 4, test 4): the Green Sail simulator (frozen
//! clock), `daemon::run` polling every device of the scenario's main listener every 200 ms,
//! and a private Mosquitto (started by the test on a free port, `persistence false`) that is
//! killed with SIGKILL while the gateway keeps polling into a small buffer.
//!
//! The budget is 128 KiB, below the 1 MiB floor the config validator accepts: the test loads
//! the config and then lowers `config.buffer.max_bytes`, so the buffer fills in seconds at
//! this rate instead of minutes.
//!
//! Nobody subscribes to the gateway's topics before the outage, so nothing the gateway
//! published then reached a sink: every sequence is either still in the buffer or evicted.
//! While the broker is dead the test watches the metrics endpoint until
//! `fivezero_readings_dropped_total{intentional="true",reason="buffer_full"}` has grown at
//! several separate scrapes (eviction happened several times over), checking each time
//! that the daemon still answers and its `run` future has not finished.
//!
//! The gateway reaches the broker through a TCP gate (common/gate.rs). The broker is
//! restarted with the gate closed, the test's probe subscribes to the `batches` and `gaps`
//! topics, and only then is the gate opened: nothing published after the restart can reach
//! the broker before the probe listens. The probe plays the sink (common/sink_play.rs): it
//! publishes the ack watermark, declared gaps counting as covered.
//!
//! Then: every sequence `1..=committed` is covered by a received reading or a received gap
//! (no hole); the gaps are disjoint and their counts add up exactly to the evicted count the
//! daemon exported; every gap says `buffer_full`; the `E` sequences evicted during the
//! outage (the count scraped just before the gate opens) are the oldest, `1..=E`, and none
//! of them arrived; everything after the newest gap arrived as readings; readings polled
//! after the reconnect arrived from every device; and the daemon ran until it was told to
//! stop.
//!
//! One overlap is tolerated and counted, because the buffer does it today: just after the
//! reconnect the buffer is still at its budget, and the next append evicts the oldest rows
//! held, which are the rows the publisher has just sent and the sink not yet acknowledged.
//! Those sequences arrive as readings *and* in a later gap notice (in about one run in
//! three here, a few hundred sequences). A delivered reading among the outage's evictions,
//! or a reading arriving after the gap notice that declared it evicted, fails the test.
//!
//! Without `/usr/sbin/mosquitto` the test prints "skipped: … is not installed" and passes.

#[path = "fixtures/sim.rs"]
mod sim;

#[path = "common/publish_kit.rs"]
mod kit;

#[path = "common/daemon_kit.rs"]
mod daemon_kit;

#[path = "common/gate.rs"]
mod gate;

#[path = "common/scrape.rs"]
mod scrape;

#[path = "common/sink_play.rs"]
mod sink_play;

use daemon_kit::{SITE, config_text, now_ms};

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use fivezero_gateway::buffer::{Buffer, BufferOptions};
use fivezero_gateway::config::Config;
use fivezero_gateway::daemon;
use fivezero_model::topic::Topics;
use fivezero_model::wire::GapReason;
use gate::Gate;
use kit::{Mosquitto, Probe};
use scrape::{Metrics, scrape};
use sink_play::Sink;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The buffer's budget, set after loading (the validator's floor is 1 MiB).
const BUDGET: u64 = 128 * 1024;
/// Separate scrapes at which the evicted count must have grown before the broker returns.
const EVICTIONS: usize = 4;
/// Limit on each wait.
const LIMIT: Duration = Duration::from_secs(30);
/// Between two scrapes.
const SCRAPE_EVERY: Duration = Duration::from_millis(100);
/// Reconnect within a second of the gate opening; replay what the sink has not confirmed
/// 2 s after its watermark stalls.
const PUBLISH: &str = "
[publish]
backoff_min = \"100ms\"
backoff_max = \"1s\"
stall_min = \"2s\"
stall_max = \"4s\"
";

const DROPPED: &str = "fivezero_readings_dropped_total";
const BUFFER_FULL: [(&str, &str); 2] = [("intentional", "true"), ("reason", "buffer_full")];

/// Scrapes the daemon, failing the test when it does not answer or its `run` has finished.
async fn alive(addr: SocketAddr, daemon: &JoinHandle<anyhow::Result<()>>, when: &str) -> Metrics {
    assert!(
        !daemon.is_finished(),
        "the daemon's run finished {when} without being stopped"
    );
    scrape(addr)
        .await
        .unwrap_or_else(|| panic!("the metrics endpoint did not answer {when}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_budget_with_the_broker_down_the_oldest_readings_are_evicted_and_declared_as_gaps() {
    if !Mosquitto::available() {
        return;
    }
    let started = Instant::now();

    // Given a private broker behind a gate, the simulator with its clock frozen
    let mut broker = Mosquitto::start("daemon-budget", "").await;
    let gate = Gate::start(SocketAddr::from(([127, 0, 0, 1], broker.port))).await;
    let sim = sim::greensail(0.0).await;
    let devices: Vec<String> = sim
        .scenario()
        .devices
        .iter()
        .filter(|d| d.listener == fivezero_sim::scenario::MAIN_LISTENER)
        .map(|d| d.name.clone())
        .collect();
    let names: Vec<&str> = devices.iter().map(String::as_str).collect();
    assert!(names.len() >= 10, "main-listener devices: {names:?}");

    // and a gateway of its own polling all of them into a 128 KiB buffer, metrics on
    let id = format!("gw-budget-{:08x}", rand::random::<u32>());
    let prefix = format!("fivezero-test-{:016x}/v1", rand::random::<u64>());
    let dir = std::env::temp_dir().join(format!(
        "fivezero-daemon-budget-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let state_dir = dir.join("state");
    std::fs::create_dir_all(&state_dir).unwrap();
    let file = dir.join("gateway.toml");
    let url = format!("mqtt://127.0.0.1:{}", gate.port());
    std::fs::write(
        &file,
        config_text(&sim, &names, &state_dir, &url, &prefix, &id, PUBLISH),
    )
    .unwrap();
    let mut config = Config::load_with_env(&file, Vec::new())
        .unwrap_or_else(|e| panic!("the config loads: {e}"));
    assert_eq!(config.devices.len(), names.len());
    config.buffer.max_bytes = BUDGET;
    let metrics = SocketAddr::from(([127, 0, 0, 1], kit::free_port()));
    config.metrics.listen = Some(metrics);
    let buffer_options = BufferOptions::from_config(&config.gateway, &config.buffer);
    let topics = Topics::new(&prefix, SITE, &id).unwrap();

    // When the daemon runs and reaches the broker
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let daemon = tokio::spawn(daemon::run(config, async move {
        let _ = stop_rx.await;
    }));
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(m) = scrape(metrics).await
            && m.get("fivezero_mqtt_connected", &[]) == Some(1.0)
            && m.count("fivezero_readings_broker_acked_total", &[]) > 0
        {
            assert_eq!(
                m.count(DROPPED, &BUFFER_FULL),
                0,
                "evicted before the outage: the budget fills too fast for this test"
            );
            break;
        }
        assert!(!daemon.is_finished(), "the daemon's run finished at start");
        assert!(
            Instant::now() < deadline,
            "the gateway did not publish to the broker within {LIMIT:?}"
        );
        tokio::time::sleep(SCRAPE_EVERY).await;
    }

    // and the broker dies (SIGKILL) while polling goes on, until eviction happened several
    // times over
    broker.kill();
    let killed = Instant::now();
    let mut evicted_seen = vec![0u64];
    let deadline = Instant::now() + LIMIT;
    while evicted_seen.len() <= EVICTIONS {
        let m = alive(metrics, &daemon, "during the outage").await;
        let evicted = m.count(DROPPED, &BUFFER_FULL);
        let last = *evicted_seen.last().unwrap_or(&0);
        assert!(evicted >= last, "the evicted count went back");
        if evicted > last {
            evicted_seen.push(evicted);
        }
        assert!(
            Instant::now() < deadline,
            "the evicted count grew only at {:?} within {LIMIT:?}",
            &evicted_seen[1..]
        );
        tokio::time::sleep(SCRAPE_EVERY).await;
    }
    let outage = killed.elapsed();

    // and comes back, with the sink subscribed before the gateway can reach it again
    gate.close();
    broker.restart().await;
    let mut sink = Sink::new(&topics, &id);
    let mut probe = Probe::start(&broker.url(), &sink.filters()).await;
    // Sequences 1..=evicted_in_outage were evicted before the gateway could publish again.
    let evicted_in_outage = alive(metrics, &daemon, "before the reconnect")
        .await
        .count(DROPPED, &BUFFER_FULL);
    gate.open();
    let reconnected_ms = now_ms();

    // Then everything the daemon holds or declared reaches the sink, readings polled after
    // the reconnect from every device included, and no more is evicted once it is drained.
    let deadline = Instant::now() + LIMIT;
    let mut next_scrape = Instant::now();
    let evicted = loop {
        sink.pump(&mut probe, SCRAPE_EVERY).await;
        if Instant::now() < next_scrape {
            continue;
        }
        next_scrape = Instant::now() + SCRAPE_EVERY;
        let m = alive(metrics, &daemon, "after the reconnect").await;
        let evicted = m.count(DROPPED, &BUFFER_FULL);
        let held = m.count("fivezero_outbox_bytes", &[]);
        let settled = evicted == sink.gap_total()
            && held < BUDGET / 2
            && sink.covered() == sink.max_seq()
            && names.iter().all(|d| sink.has_after(d, reconnected_ms));
        if settled {
            break evicted;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {LIMIT:?}: evicted {evicted}, gaps received {} in {} notices, \
             {held} bytes held, covered to {} of {} received, devices with readings after \
             the reconnect {}/{}",
            sink.gap_total(),
            sink.gaps.len(),
            sink.covered(),
            sink.max_seq(),
            names
                .iter()
                .filter(|d| sink.has_after(d, reconnected_ms))
                .count(),
            names.len()
        );
    };
    assert!(
        !daemon.is_finished(),
        "the daemon's run finished before the stop"
    );
    let _ = stop_tx.send(());
    tokio::time::timeout(LIMIT, daemon)
        .await
        .expect("the daemon stops within the limit")
        .expect("the daemon task does not panic")
        .expect("the daemon runs without error");

    // and the buffer, reopened, committed exactly what the sink covers
    let buffer = Buffer::open(&state_dir, &buffer_options).expect("the buffer reopens");
    let stats = buffer.stats();
    buffer.close().await;
    let committed = stats.committed_seq;
    let deadline = Instant::now() + LIMIT;
    while sink.covered() < committed.max(sink.max_seq()) {
        assert!(
            Instant::now() < deadline,
            "timed out after {LIMIT:?} waiting for every committed sequence: covered to {} of {committed}",
            sink.covered()
        );
        sink.pump(&mut probe, SCRAPE_EVERY).await;
    }
    assert_eq!(sink.epochs, [stats.epoch], "one stream, the buffer's");
    assert_eq!(
        sink.max_seq(),
        committed,
        "the sink received sequences the buffer never committed"
    );

    // Every gap is an eviction under the budget, of this stream; the gaps are disjoint, and
    // their counts add up exactly to the evicted count.
    let mut gaps: Vec<(u64, u64)> = Vec::new();
    for (g, _) in &sink.gaps {
        assert_eq!(g.reason, GapReason::BufferFull, "{g:?}");
        assert_eq!(g.epoch, stats.epoch, "{g:?}");
        gaps.push((g.first_seq, g.first_seq + u64::from(g.count) - 1));
    }
    gaps.sort_unstable();
    for w in gaps.windows(2) {
        assert!(
            w[0].1 < w[1].0,
            "overlapping gaps {:?} and {:?}",
            w[0],
            w[1]
        );
    }
    assert!(evicted > 0);
    assert_eq!(
        sink.gap_total(),
        evicted,
        "the gaps declare {} sequences, the daemon counted {evicted} evicted",
        sink.gap_total()
    );

    // Every sequence 1..=committed is covered, by a reading or a gap: no hole.
    let in_gaps: BTreeSet<u64> = gaps.iter().flat_map(|&(a, b)| a..=b).collect();
    let holes: Vec<u64> = (1..=committed)
        .filter(|s| !in_gaps.contains(s) && !sink.readings.contains_key(s))
        .collect();
    assert!(
        holes.is_empty(),
        "{} sequences neither arrived nor were declared, from {:?} to {:?}",
        holes.len(),
        holes.first(),
        holes.last()
    );

    // The evicted ones are the oldest: the outage evicted sequences 1..=evicted_in_outage
    // and none of them arrived; every sequence above the newest gap arrived.
    assert!(
        (1..=evicted_in_outage).all(|s| in_gaps.contains(&s) && !sink.readings.contains_key(&s)),
        "the {evicted_in_outage} sequences evicted during the outage are not 1..={evicted_in_outage} \
         (gaps {gaps:?})"
    );
    let newest_evicted = gaps.last().map_or(0, |g| g.1);
    assert!(
        ((newest_evicted + 1)..=committed).all(|s| sink.readings.contains_key(&s)),
        "a sequence after the evicted ones is missing"
    );
    assert!(committed > newest_evicted, "nothing was kept");

    // A sequence both delivered and declared evicted comes from one behaviour of the buffer
    // only: right after the reconnect it is still at its budget, and the next append evicts
    // the oldest rows held, which are the rows the publisher has just sent and the sink has
    // not acknowledged yet. Such sequences lie above the outage's evictions, and their gap
    // notice reaches the sink after the readings. Anything else fails.
    let mut over_declared = 0u64;
    for (g, gap_arrival) in &sink.gaps {
        let last = g.first_seq + u64::from(g.count) - 1;
        for (s, (_, arrival)) in sink.readings.range(g.first_seq..=last) {
            assert!(
                *s > evicted_in_outage && arrival < gap_arrival,
                "seq {s} arrived as a reading (message {arrival}) and is in the gap {g:?} \
                 (message {gap_arrival}); the outage evicted 1..={evicted_in_outage}"
            );
            over_declared += 1;
        }
    }

    println!(
        "budget {BUDGET} B: evicted {evicted} of {committed} sequences in {} gap notices, \
         1..={evicted_in_outage} during the outage (count grew at {} scrapes of the {outage:?} outage: \
         {:?}); {over_declared} delivered before being evicted after the reconnect; {} \
         readings in {} batches ({} duplicates); {:?}",
        gaps.len(),
        evicted_seen.len() - 1,
        &evicted_seen[1..],
        sink.readings.len(),
        sink.batches,
        sink.duplicates,
        started.elapsed()
    );

    drop(probe);
    drop(gate);
    sim.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
