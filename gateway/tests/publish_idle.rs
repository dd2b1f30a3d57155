//! An idle publisher costs nothing: after its commits are published it neither reads the
//! outbox nor burns CPU until something new is committed. Alone in its test binary, so the
//! process's CPU time is the publisher's. Runs against the machine's Mosquitto
//! (`FIVEZERO_TEST_MQTT`); without it the test prints why it skips.

#[path = "common/publish_kit.rs"]
mod kit;

use std::time::Duration;

use fivezero_gateway::config::MqttProtocol;
use fivezero_gateway::publish::{Publisher, PublisherConfig, RetainUntil};
use fivezero_model::topic::Topics;
use kit::{MemoryOutbox, Mode, eventually};
use tokio::sync::oneshot;

const SITE: &str = "test-site";
const LIMIT: Duration = Duration::from_secs(20);

/// CPU seconds this process has used (user + system), from `/proc/self/stat`.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // The clock tick (USER_HZ) is 100 on every Linux this runs on.
    Some((utime + stime) / 100.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_publisher_neither_reads_the_outbox_nor_spins() {
    let Some(url) = kit::shared_broker() else {
        println!("skipped: FIVEZERO_TEST_MQTT not set");
        return;
    };
    if cpu_seconds().is_none() {
        println!("skipped: no /proc/self/stat to read CPU time from");
        return;
    }
    let gateway = format!("gw-{:08x}", rand::random::<u32>());
    let topics = Topics::new(&kit::unique_prefix(), SITE, &gateway).unwrap();
    let mut config = PublisherConfig::new(topics, url);
    config.protocol = MqttProtocol::V5;
    config.retain_until = RetainUntil::BrokerAck;
    let outbox = MemoryOutbox::new(&gateway, SITE, Mode::BrokerAck);
    let publisher = Publisher::new(config, outbox.clone());
    let stats = publisher.stats();
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(publisher.run(async move {
        let _ = stopped.await;
    }));
    eventually("the publisher to connect", LIMIT, || {
        stats.snapshot().connected
    })
    .await;

    // Given commits published one at a time (the live lane opens at the connect and merges)
    for _ in 0..20 {
        outbox.commit(5);
        eventually("the commit to be broker-acked", LIMIT, || {
            outbox.all_broker_acked()
        })
        .await;
    }
    // When nothing is committed for two seconds
    let (reads, cpu) = (outbox.pending_calls(), cpu_seconds().unwrap());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_reads = outbox.pending_calls() - reads;
    let idle_cpu = cpu_seconds().unwrap() - cpu;

    // Then the publisher neither reads the outbox nor keeps waking (a loop woken by its own
    // timer every millisecond used 0.19 CPU s of the two seconds here; idle uses none)
    assert!(idle_reads <= 2, "{idle_reads} outbox reads while idle");
    assert!(idle_cpu < 0.1, "{idle_cpu:.2} CPU seconds while idle");
    assert!(reads <= 20 * 4, "{reads} outbox reads for 20 commits");
    println!(
        "idle: {idle_reads} outbox reads, {idle_cpu:.2} CPU s in 2 s; {reads} reads for 20 commits"
    );

    let _ = stop.send(());
    tokio::time::timeout(LIMIT, handle)
        .await
        .expect("the publisher stops")
        .expect("no panic")
        .expect("a clean stop");
}
