//! Scale-out on the machine's services (issue 6): two `fivezero-sink` processes in one MQTT 5
//! shared subscription on Mosquitto (`FIVEZERO_TEST_MQTT`), both writing to one PostgreSQL
//! database (`FIVEZERO_TEST_POSTGRES`, in a fresh schema dropped afterwards), three gateways
//! (the real buffer and publisher) publishing while one sink is killed with SIGKILL and
//! restarted again and again at random points of the stream. Afterwards every sequence of
//! every stream is stored exactly once, nothing is quarantined or dead-lettered, the gateways'
//! buffers drain, and the watermark never went backwards: neither the one stored per stream
//! nor the one each gateway applied (both sampled every 10 ms throughout).
//!
//! The retained `…/ack` topic itself is not strictly monotonic with two sinks: each sink
//! publishes the watermark of its own commit after the commit, and two sinks committing one
//! stream back to back can reach the broker in the opposite order. The gateway keeps the
//! highest it has seen, so nothing is lost or resent; the test counts such reorderings and
//! prints them. The topic converges all the same: each sink watches the ack topics and
//! republishes its higher value over a lower one (see the ingest module's "Watermark
//! convergence"), so at the end the retained ack of every stream, read by a fresh
//! subscription, equals the stored watermark.
//!
//! Without either variable the test prints "skipped: … not set" and passes.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{Probe, eventually, free_port, now_ms, scratch, shared_broker, unique_prefix};
use fivezero_gateway::buffer::{Buffer, BufferOptions};
use fivezero_gateway::config::MqttUrl;
use fivezero_gateway::outbox::Outbox;
use fivezero_gateway::poll::DeviceReadings;
use fivezero_gateway::publish::{Publisher, PublisherConfig};
use fivezero_model::topic::Topics;
use fivezero_model::wire::{self, Quality, Reading, Value};
use fivezero_sink::store::postgres::PgStore;
use fivezero_sink::store::{ReadingsQuery, Store};
use rumqttc::v5::mqttbytes::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

const SITE: &str = "scale";
const GATEWAYS: usize = 3;
/// Poll cycles each gateway appends, one every [`CYCLE_EVERY`].
const CYCLES: u64 = 600;
const READINGS_PER_CYCLE: u64 = 5;
const CYCLE_EVERY: Duration = Duration::from_millis(12);
/// Times the second sink is killed and restarted.
const KILLS: usize = 5;
/// The whole run (publishing, kills, drain) must finish within this.
const RUN_LIMIT: Duration = Duration::from_secs(45);

fn postgres_url() -> Option<String> {
    std::env::var("FIVEZERO_TEST_POSTGRES")
        .ok()
        .filter(|u| !u.is_empty())
}

/// The database URL with every connection's `search_path` set to `schema`.
fn url_in_schema(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-c%20search_path%3D{schema}")
}

/// A child process killed (SIGKILL) and reaped when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One sink process: its config file and HTTP port.
struct SinkProc {
    config: PathBuf,
    http: u16,
    child: Process,
}

impl SinkProc {
    fn write_config(
        dir: &Path,
        name: &str,
        storage: &str,
        (host, port): (&str, u16),
        prefix: &str,
        group: &str,
    ) -> (PathBuf, u16) {
        let http = free_port();
        let config = dir.join(format!("{name}.toml"));
        let text = format!(
            "[sink]\nclient_id = \"{name}\"\nshutdown_timeout = \"5s\"\n\
             [storage]\nurl = \"{storage}\"\n\
             [mqtt]\nbroker = \"mqtt://{host}:{port}\"\nprefix = \"{prefix}\"\n\
             shared_group = \"{group}\"\nsession_expiry = \"2m\"\n\
             [http]\nlisten = \"127.0.0.1:{http}\"\n"
        );
        std::fs::write(&config, text).unwrap();
        (config, http)
    }

    fn spawn(config: PathBuf, http: u16) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_fivezero-sink"))
            .args(["run", "--config"])
            .arg(&config)
            .env(
                "FIVEZERO_SINK_LOG",
                std::env::var("FIVEZERO_SINK_LOG").unwrap_or_else(|_| "error".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the sink binary starts");
        Self {
            config,
            http,
            child: Process(child),
        }
    }

    /// SIGKILL, reap, start again with the same configuration (same client id and session).
    fn kill_and_restart(self) -> Self {
        let Self {
            config,
            http,
            mut child,
        } = self;
        child.0.kill().unwrap();
        child.0.wait().unwrap();
        Self::spawn(config, http)
    }

    /// `/readyz` answers 200: the database is reachable and ingest is connected.
    async fn ready(&self) -> bool {
        let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", self.http)).await else {
            return false;
        };
        let req = "GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
        if s.write_all(req.as_bytes()).await.is_err() {
            return false;
        }
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.is_ok() && head.ends_with(b"200")
    }

    /// SIGTERM, then the exit status.
    async fn terminate(self) -> std::process::ExitStatus {
        let Self { mut child, .. } = self;
        let pid = child.0.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success());
        tokio::task::spawn_blocking(move || child.0.wait().unwrap())
            .await
            .unwrap()
    }
}

fn cycle(ts: i64, k: u64) -> DeviceReadings {
    DeviceReadings {
        device: Arc::from("meter"),
        ts_ms: ts,
        cycle: k,
        readings: (0..READINGS_PER_CYCLE)
            .map(|i| Reading {
                ts,
                device: "meter".into(),
                metric: if i % 2 == 0 {
                    "electricity.import_energy".into()
                } else {
                    "electricity.export_energy".into()
                },
                value: Some(Value::Number((k * READINGS_PER_CYCLE + i) as f64 + 0.5)),
                quality: Quality::Good,
                reason: None,
            })
            .collect(),
    }
}

/// The retained ack on `topic` as a fresh subscriber gets it, if any.
async fn retained_ack(host: &str, port: u16, topic: &str) -> Option<wire::AckWatermark> {
    let mut probe = Probe::start(host, port, &[topic.to_owned()]).await;
    loop {
        let m = probe.next(Duration::from_secs(2)).await?;
        if m.retain && m.topic == topic && !m.payload.is_empty() {
            return wire::decode_ack(&m.payload).ok();
        }
    }
}

/// A counter of a sink's `/metrics`.
async fn counter(http: u16, name: &str) -> Option<u64> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", http))
        .await
        .ok()?;
    let req = "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    s.write_all(req.as_bytes()).await.ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).await.ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Readings stored, over every stream.
async fn stored_readings(store: &PgStore) -> usize {
    match store.streams().await {
        Ok(streams) => streams
            .iter()
            .map(|s| usize::try_from(s.readings).unwrap_or(usize::MAX))
            .sum(),
        Err(e) => {
            println!("counting readings failed: {e}");
            0
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sinks_sharing_a_subscription_with_one_killed_repeatedly_store_every_sequence_once_in_postgres()
 {
    let Some((host, port)) = shared_broker() else {
        println!("skipped: FIVEZERO_TEST_MQTT not set");
        return;
    };
    let Some(pg) = postgres_url() else {
        println!("skipped: FIVEZERO_TEST_POSTGRES not set");
        return;
    };
    let schema = format!("fz_scale_{:016x}", rand::random::<u64>());
    // Creates the schema and migrates it; the sinks find it at the latest version.
    let store = PgStore::open(&pg, Some(&schema)).await.unwrap();
    let dir = scratch("scale-out");
    let outcome = tokio::spawn(scenario(
        host,
        port,
        url_in_schema(&pg, &schema),
        store,
        dir.clone(),
    ))
    .await;
    PgStore::drop_schema(&pg, &schema).await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

#[allow(clippy::too_many_lines)]
async fn scenario(host: String, port: u16, storage: String, store: PgStore, dir: PathBuf) {
    let prefix = unique_prefix();
    let group = format!("g{:08x}", rand::random::<u32>());
    let started = tokio::time::Instant::now();

    // Given a probe watching every gateway's retained ack topic
    let mut probe = Probe::start(&host, port, &[format!("{prefix}/{SITE}/+/ack")]).await;

    // and two sink processes in one shared subscription, writing to one PostgreSQL schema,
    let (a_config, a_http) = SinkProc::write_config(
        &dir,
        &format!("sink-a-{group}"),
        &storage,
        (&host, port),
        &prefix,
        &group,
    );
    let (b_config, b_http) = SinkProc::write_config(
        &dir,
        &format!("sink-b-{group}"),
        &storage,
        (&host, port),
        &prefix,
        &group,
    );
    let a = SinkProc::spawn(a_config, a_http);
    let mut b = SinkProc::spawn(b_config, b_http);
    for sink in [&a, &b] {
        eventually("both sinks are ready", common::LIMIT, || sink.ready()).await;
    }

    // and three gateways whose publishers run against the same broker,
    let mut gateways = Vec::new();
    for g in 0..GATEWAYS {
        let id = format!("gw-{g}-{:08x}", rand::random::<u32>());
        let topics = Topics::new(&prefix, SITE, &id).unwrap();
        let buffer = Buffer::open(&dir.join(&id), &BufferOptions::new(&id, SITE)).unwrap();
        let mut pc = PublisherConfig::new(
            topics.clone(),
            MqttUrl {
                tls: false,
                host: host.clone(),
                port,
            },
        );
        pc.items_per_message = std::num::NonZeroU32::new(20).unwrap();
        pc.replay_rate = std::num::NonZeroU32::new(1000).unwrap();
        // A watermark that stalls behind the broker's acks (a message the broker dropped)
        // is replayed after seconds, not the production minutes, to fit the run.
        pc.stall_min = Duration::from_secs(3);
        pc.stall_max = Duration::from_secs(6);
        let publisher = Publisher::new(pc, buffer.clone());
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let running = tokio::spawn(publisher.run(async move {
            let _ = stop_rx.await;
        }));
        gateways.push((id, topics, buffer, stop_tx, running));
    }

    // (a sampler records, every 10 ms, the watermark each gateway has applied and the one
    // stored for each stream, to check neither ever goes back)
    let (sampler_stop, mut sampler_rx) = oneshot::channel::<()>();
    let sampler = {
        let buffers: Vec<(String, Buffer)> = gateways
            .iter()
            .map(|(id, _, b, _, _)| (id.clone(), b.clone()))
            .collect();
        let store = store.clone();
        tokio::spawn(async move {
            let mut applied: BTreeMap<String, u64> = BTreeMap::new();
            let mut stored: BTreeMap<String, u64> = BTreeMap::new();
            let mut samples = 0u64;
            loop {
                for (id, b) in &buffers {
                    let w = b.stats().sink_acked_seq;
                    let last = applied.entry(id.clone()).or_default();
                    assert!(
                        w >= *last,
                        "{id}: applied watermark went back {last} -> {w}"
                    );
                    *last = w;
                }
                if let Ok(streams) = store.streams().await {
                    for s in streams {
                        let last = stored.entry(s.gateway.clone()).or_default();
                        assert!(
                            s.watermark >= *last,
                            "{}: stored watermark went back {last} -> {}",
                            s.gateway,
                            s.watermark
                        );
                        *last = s.watermark;
                    }
                }
                samples += 1;
                tokio::select! {
                    _ = &mut sampler_rx => return samples,
                    () = tokio::time::sleep(Duration::from_millis(10)) => {}
                }
            }
        })
    };

    // When the gateways append poll cycles at a steady pace
    let appenders: Vec<_> = gateways
        .iter()
        .map(|(_, _, buffer, _, _)| {
            let buffer = buffer.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(CYCLE_EVERY);
                let ts = now_ms();
                for k in 0..CYCLES {
                    tick.tick().await;
                    let t = ts + i64::try_from(k).unwrap();
                    buffer.append_readings(&cycle(t, k)).await.unwrap();
                }
            })
        })
        .collect();
    let total_per_gateway = CYCLES * READINGS_PER_CYCLE;
    let total = usize::try_from(total_per_gateway).unwrap() * GATEWAYS;

    // and the second sink is killed with SIGKILL and restarted at random points meanwhile
    // (after a random number of further readings are stored, each time),
    let mut last = 0;
    for kill in 1..=KILLS {
        let step = 200 + rand::random::<u64>() as usize % (total / (KILLS + 2));
        let target = (last + step).min(total - 1);
        eventually(
            &format!("more readings stored before kill {kill}"),
            RUN_LIMIT,
            || {
                let store = store.clone();
                async move { stored_readings(&store).await >= target }
            },
        )
        .await;
        b = b.kill_and_restart();
        last = stored_readings(&store).await;
        println!("kill {kill}: {last} of {total} readings stored");
    }
    for task in appenders {
        task.await.unwrap();
    }

    // Then every gateway's buffer drains: the sinks' watermark passes every sequence
    let remaining = RUN_LIMIT.saturating_sub(started.elapsed());
    for (id, _, buffer, _, _) in &gateways {
        eventually(
            &format!("{id}'s buffer drains"),
            remaining.max(Duration::from_secs(5)),
            || {
                let b = buffer.clone();
                async move {
                    let s = b.stats();
                    s.sink_acked_seq == total_per_gateway
                        && s.backlog == 0
                        && b.inventory().await.is_ok_and(|i| i.rows.is_empty())
                }
            },
        )
        .await;
    }

    // and every sequence of every stream is stored exactly once, in one stream per gateway,
    let rows = store
        .readings(ReadingsQuery {
            limit: 1_000_000,
            ..ReadingsQuery::default()
        })
        .await
        .unwrap();
    let mut per_stream: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    for r in &rows {
        per_stream
            .entry((r.gateway.clone(), r.epoch.clone()))
            .or_default()
            .push(r.seq);
    }
    assert_eq!(per_stream.len(), GATEWAYS, "one stream per gateway");
    for (id, _, buffer, _, _) in &gateways {
        let seqs = per_stream
            .get_mut(&(id.clone(), buffer.epoch().to_string()))
            .unwrap_or_else(|| panic!("{id} has no stored stream"));
        seqs.sort_unstable();
        let expected: Vec<u64> = (1..=total_per_gateway).collect();
        if *seqs != expected {
            let mut dup = seqs.clone();
            dup.dedup();
            panic!(
                "{id}: {} rows, {} distinct sequences of {total_per_gateway}",
                seqs.len(),
                dup.len()
            );
        }
    }
    for s in store.streams().await.unwrap() {
        assert_eq!(
            (s.watermark, s.readings),
            (total_per_gateway, total_per_gateway)
        );
    }
    // with no conflicting duplicate and no refused message,
    assert!(
        store.quarantined(10).await.unwrap().is_empty(),
        "quarantine"
    );
    assert!(
        store.dead_letters(10).await.unwrap().is_empty(),
        "dead letters"
    );

    // and the retained ack of every stream converges on the stored watermark (read by a fresh
    // subscription after the run: the sinks republish a higher value over a lower one),
    let stored_marks: BTreeMap<(String, String), u64> = store
        .streams()
        .await
        .unwrap()
        .into_iter()
        .map(|s| ((s.gateway, s.epoch), s.watermark))
        .collect();
    for (id, topics, buffer, _, _) in &gateways {
        let epoch = buffer.epoch();
        let want = stored_marks
            .get(&(id.clone(), epoch.to_string()))
            .copied()
            .unwrap_or_else(|| panic!("{id} has no stored stream"));
        eventually(
            &format!("{id}'s retained ack reaches the stored watermark {want}"),
            common::LIMIT,
            || {
                let (host, topic) = (host.clone(), topics.ack().to_owned());
                async move {
                    let got = retained_ack(&host, port, &topic).await;
                    got.as_ref().and_then(|a| a.seq_for(epoch)) == Some(want)
                }
            },
        )
        .await;
    }
    let republished = [&a, &b].map(|s| s.http);
    let mut republished_total = 0;
    for http in republished {
        republished_total += counter(http, "fivezero_sink_acks_republished_total")
            .await
            .unwrap_or(0);
    }

    // and the watermark never went back: neither the one stored per stream nor the one each
    // gateway applied (sampled all along), and the ack topic carried every gateway's final one.
    let _ = sampler_stop.send(());
    let samples = sampler.await.unwrap();
    let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    while let Some(m) = probe.next(Duration::from_millis(200)).await {
        if m.payload.is_empty() {
            continue;
        }
        let ack = wire::decode_ack(&m.payload).unwrap();
        for s in &ack.streams {
            seen.entry(format!("{} {}", ack.gateway, s.epoch))
                .or_default()
                .push(s.seq);
        }
    }
    let mut reordered = 0;
    for (id, _, buffer, _, _) in &gateways {
        let key = format!("{id} {}", buffer.epoch());
        let marks = seen
            .get(&key)
            .unwrap_or_else(|| panic!("no ack seen for {key}"));
        assert_eq!(marks.iter().max(), Some(&total_per_gateway), "{key}");
        // Each sink publishes its own commits' watermarks in order, but two sinks committing
        // one stream back to back can reach the broker in the other order, so the topic may
        // carry a lower value after a higher one; the gateway keeps the highest (checked
        // above). Counted here, not failed: see issue 6's report.
        reordered += marks.windows(2).filter(|w| w[1] < w[0]).count();
    }
    println!(
        "watermarks: {samples} samples never went back; {reordered} acks on the topic \
         arrived after a higher one (two sinks publishing); {republished_total} republished \
         by the sinks; every retained ack ended at the stored watermark"
    );
    println!(
        "{total} readings from {GATEWAYS} gateways, {KILLS} kills, {} acks seen, {:?}",
        seen.values().map(Vec::len).sum::<usize>(),
        started.elapsed()
    );

    // Clean up: stop the publishers, drain both sinks with SIGTERM (exit 0), clear the
    // retained topics.
    for (_, topics, buffer, stop, running) in gateways {
        let _ = stop.send(());
        let _ = tokio::time::timeout(common::LIMIT, running).await;
        buffer.close().await;
        for t in [topics.ack(), topics.status()] {
            probe
                .client
                .publish(t, QoS::AtLeastOnce, true, Vec::new())
                .await
                .unwrap();
        }
    }
    for sink in [a, b] {
        let exit = sink.terminate().await;
        assert!(exit.success(), "a sink exits 0 on SIGTERM: {exit:?}");
    }
}
