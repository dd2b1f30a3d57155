//! The publisher against a private Mosquitto started by each test on a free port
//! (`/usr/sbin/mosquitto`; every test prints a reason and passes when it is absent): a broker
//! killed and restarted under continuous commits, the broker's maximum packet size, and TLS.

#[path = "common/publish_kit.rs"]
mod kit;

use std::collections::BTreeSet;
use std::num::{NonZeroU16, NonZeroU32};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fivezero_gateway::config::{MqttProtocol, MqttUrl};
use fivezero_gateway::outbox::{Lane, Outbox};
use fivezero_gateway::publish::{
    PublishError, PublishStats, Publisher, PublisherConfig, RetainUntil, TlsSettings,
};
use fivezero_model::topic::Topics;
use fivezero_model::wire::{self, AckWatermark, SCHEMA_VERSION, StreamAck};
use kit::{MemoryOutbox, Mode, Mosquitto, Probe, eventually};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

const SITE: &str = "test-site";
const LIMIT: Duration = Duration::from_secs(30);

fn config_for(url: MqttUrl, protocol: MqttProtocol, retain: RetainUntil) -> PublisherConfig {
    let gateway = format!("gw-{:08x}", rand::random::<u32>());
    let topics = Topics::new(&kit::unique_prefix(), SITE, &gateway).unwrap();
    let mut config = PublisherConfig::new(topics, url);
    config.protocol = protocol;
    config.retain_until = retain;
    config.window = NonZeroU16::new(8).unwrap();
    config.backoff_min = Duration::from_millis(200);
    config.backoff_max = Duration::from_secs(2);
    config.stall_min = Duration::from_secs(1);
    config.stall_max = Duration::from_secs(4);
    config.replay_rate = NonZeroU32::new(500).unwrap();
    config
}

struct Running {
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<(), PublishError>>,
    stats: PublishStats,
}

fn spawn(config: PublisherConfig, outbox: MemoryOutbox) -> Running {
    let publisher = Publisher::new(config, outbox);
    let stats = publisher.stats();
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(publisher.run(async move {
        let _ = rx.await;
    }));
    Running {
        stop: Some(tx),
        handle,
        stats,
    }
}

impl Running {
    async fn stop(mut self) -> Result<(), PublishError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(LIMIT, &mut self.handle)
            .await
            .expect("the publisher stops within the limit")
            .expect("the publisher task does not panic")
    }
}

/// The test's cloud sink: records every sequence it receives on `…/batches` and publishes
/// its contiguous watermark, retained, on `…/ack` whenever it grows.
struct Sink {
    seen: Arc<Mutex<BTreeSet<u64>>>,
    task: JoinHandle<()>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sink {
    async fn start(url: &MqttUrl, topics: &Topics, outbox: &MemoryOutbox) -> Self {
        let mut probe = Probe::start(url, &[topics.batches().to_owned()]).await;
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let shared = Arc::clone(&seen);
        let (ack_topic, gateway, epoch) = (
            topics.ack().to_owned(),
            topics.gateway().to_owned(),
            outbox.epoch(),
        );
        let task = tokio::spawn(async move {
            let mut published = 0;
            loop {
                let Some(m) = probe.next(Duration::from_secs(3600)).await else {
                    continue;
                };
                let contiguous = {
                    let mut seen = shared.lock().unwrap();
                    seen.extend(kit::sequences(std::slice::from_ref(&m)));
                    kit::contiguous(&seen)
                };
                if contiguous > published {
                    published = contiguous;
                    let ack = AckWatermark {
                        schema: SCHEMA_VERSION,
                        gateway: gateway.clone(),
                        streams: vec![StreamAck {
                            epoch,
                            seq: contiguous,
                        }],
                        ts: 1_700_000_000_000,
                    };
                    // A publish during the outage is lost; the next one carries it.
                    let _ = probe.client.try_publish(
                        &ack_topic,
                        rumqttc::QoS::AtLeastOnce,
                        true,
                        wire::encode(&ack),
                    );
                }
            }
        });
        Self { seen, task }
    }

    fn contiguous(&self) -> u64 {
        kit::contiguous(&self.seen.lock().unwrap())
    }
}

async fn an_outage_loses_nothing(protocol: MqttProtocol) {
    if !Mosquitto::available() {
        return;
    }
    let mut broker = Mosquitto::start("outage", "").await;
    let config = config_for(broker.url(), protocol, RetainUntil::SinkAck);
    let topics = config.topics.clone();
    let outbox = MemoryOutbox::new(topics.gateway(), SITE, Mode::SinkAck);
    let sink = Sink::start(&broker.url(), &topics, &outbox).await;
    let running = spawn(config, outbox.clone());
    let stats = running.stats.clone();

    // The plant keeps committing a batch of 5 readings every 10 ms throughout.
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let plant = {
        let outbox = outbox.clone();
        tokio::spawn(async move {
            loop {
                outbox.commit(5);
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(10)) => {}
                    _ = stop_rx.changed() => return,
                }
            }
        })
    };

    eventually("the sink to store 500 readings", LIMIT, || {
        sink.contiguous() >= 500
    })
    .await;
    // The broker dies (SIGKILL: nothing saved, in-flight messages lost).
    broker.kill();
    eventually("the publisher to notice", LIMIT, || {
        !stats.snapshot().connected
    })
    .await;
    let at_kill = outbox.committed_seq();
    eventually("commits to keep landing during the outage", LIMIT, || {
        outbox.committed_seq() >= at_kill + 1000
    })
    .await;
    // The broker comes back on the same port.
    broker.restart().await;
    eventually("the publisher to reconnect", LIMIT, || {
        stats.snapshot().connects >= 2
    })
    .await;
    let after = outbox.committed_seq();
    eventually("commits after the reconnect", LIMIT, || {
        outbox.committed_seq() >= after + 250
    })
    .await;
    stop_tx.send_replace(true);
    plant.await.unwrap();
    let last = outbox.committed_seq();

    // Then everything ends acknowledged by the broker and stored by the sink.
    eventually("every message to be broker-acked", LIMIT, || {
        outbox.all_broker_acked()
    })
    .await;
    eventually("the sink to hold every sequence", LIMIT, || {
        sink.contiguous() == last
    })
    .await;
    eventually("the sink's watermark to reach the outbox", LIMIT, || {
        outbox.sink_seq() == last
    })
    .await;
    let s = stats.snapshot();
    // No reconnect storm: two connections, a bounded number of failed attempts.
    assert!(
        (2..=3).contains(&s.connects),
        "{} connects: {s:?}",
        s.connects
    );
    assert!(
        s.connect_failures <= 15,
        "{} failed attempts: {s:?}",
        s.connect_failures
    );
    assert!(s.disconnects >= 1);
    assert!(s.published_messages >= u64::try_from(outbox.message_count()).unwrap());
    println!("outage over {protocol:?}: {s:?}");
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_and_restarted_loses_nothing_and_causes_no_storm_over_mqtt5() {
    an_outage_loses_nothing(MqttProtocol::V5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_and_restarted_loses_nothing_and_causes_no_storm_over_mqtt311() {
    an_outage_loses_nothing(MqttProtocol::V311).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_commit_goes_out_beside_the_backlog_not_behind_it() {
    if !Mosquitto::available() {
        return;
    }
    let broker = Mosquitto::start("live-lane", "").await;
    let mut config = config_for(broker.url(), MqttProtocol::V5, RetainUntil::SinkAck);
    // A backlog of 1,000 messages takes 10 s at this rate; no stall replay meanwhile.
    config.replay_rate = NonZeroU32::new(100).unwrap();
    config.stall_min = Duration::from_secs(120);
    config.stall_max = Duration::from_secs(120);
    let topics = config.topics.clone();
    let outbox = MemoryOutbox::new(topics.gateway(), SITE, Mode::SinkAck);
    // Given a backlog committed while the gateway could not publish
    for _ in 0..1000 {
        outbox.commit(5);
    }
    let split = outbox.committed_seq();
    let sink = Sink::start(&broker.url(), &topics, &outbox).await;
    let running = spawn(config, outbox.clone());
    let stats = running.stats.clone();
    eventually("the replay to start", LIMIT, || sink.contiguous() >= 50).await;

    // When a fresh batch is committed while the replay runs
    let fresh = outbox.commit(5);
    eventually("the fresh batch to reach the sink", LIMIT, || {
        sink.seen.lock().unwrap().contains(&fresh)
    })
    .await;

    // Then it arrived long before the backlog was replayed
    let replayed = sink.contiguous();
    assert!(
        replayed < split / 2,
        "the fresh batch waited for the replay: {replayed} of {split} replayed first"
    );
    // And the sink's watermark, a contiguous prefix, still passes every sequence once the
    // replay has filled the hole, with nothing published twice
    let last = outbox.committed_seq();
    eventually("the sink's watermark to reach the outbox", LIMIT, || {
        outbox.sink_seq() == last
    })
    .await;
    let s = stats.snapshot();
    assert_eq!(s.republished_messages, 0, "{s:?}");
    assert_eq!(s.published_messages, 1001, "{s:?}");
    assert!(
        outbox
            .lanes_seen()
            .iter()
            .any(|l| matches!(l, Lane::Live { after, .. } if *after == split)),
        "the live lane split the stream at the last commit before the connect"
    );
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_shrink_to_the_brokers_maximum_packet_size_and_a_too_large_one_waits() {
    if !Mosquitto::available() {
        return;
    }
    let broker = Mosquitto::start("maxpacket", "max_packet_size 2048").await;
    let config = config_for(broker.url(), MqttProtocol::V5, RetainUntil::BrokerAck);
    let topics = config.topics.clone();
    let outbox = MemoryOutbox::new(topics.gateway(), SITE, Mode::BrokerAck);
    let mut probe = Probe::start(&broker.url(), &[topics.batches().to_owned()]).await;
    for _ in 0..10 {
        outbox.commit(2);
    }
    let big = outbox.commit(60); // about 8 KB: more than the broker takes
    for _ in 0..10 {
        outbox.commit(2);
    }
    let running = spawn(config, outbox.clone());
    eventually("the small messages to be acked", LIMIT, || {
        outbox.broker_acked_count() == 20
    })
    .await;
    let s = running.stats.snapshot();
    assert!(s.oversized >= 1, "{s:?}");
    assert!(s.connected);
    assert_eq!(s.connects, 1, "the big message never killed the connection");
    assert!(
        !outbox.all_broker_acked(),
        "the big message stays in the buffer"
    );
    assert!(!outbox.broker_acks().iter().any(|&(first, _)| first == big));
    // Every read asked for messages that fit the broker's 2048 bytes.
    let limits = outbox.limits_seen();
    assert!(!limits.is_empty());
    let last = limits.last().unwrap();
    assert!(
        last.bytes_per_message < 2048 && last.bytes_per_message > 1500,
        "{last:?}"
    );
    let mut received = Vec::new();
    while kit::sequences(&received).len() < 40 {
        received.push(probe.next(LIMIT).await.expect("the small batches"));
    }
    assert!(!kit::sequences(&received).contains(&big));
    running.stop().await.unwrap();
}

// ------------------------------------------------------------------------------------------
// TLS
// ------------------------------------------------------------------------------------------

fn openssl(dir: &Path, args: &[&str]) -> bool {
    Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A CA, a server certificate for `localhost` and a client certificate, in `dir`; false when
/// openssl is missing or fails.
fn make_certificates(dir: &Path) -> bool {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("client.ext"),
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    let mut ok = true;
    for (name, subject) in [
        ("ca", "/CN=fivezero test CA"),
        ("other-ca", "/CN=another CA"),
    ] {
        let key = format!("{name}.key");
        let pem = format!("{name}.pem");
        let mut args = vec!["req", "-x509", "-days", "1", "-subj", subject];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &pem]);
        ok &= openssl(dir, &args);
    }
    for (name, subject) in [("server", "/CN=localhost"), ("client", "/CN=gw")] {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let pem = format!("{name}.pem");
        let ext = format!("{name}.ext");
        let mut args = vec!["req", "-subj", subject];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &csr]);
        ok &= openssl(dir, &args);
        ok &= openssl(
            dir,
            &[
                "x509",
                "-req",
                "-days",
                "1",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-extfile",
                &ext,
                "-out",
                &pem,
            ],
        );
    }
    // Mosquitto drops root privileges: let it read the keys.
    for f in ["server.key", "server.pem", "ca.pem"] {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o644));
    }
    ok
}

fn cert_dir() -> Option<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "fivezero-publish-tls-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755));
    if make_certificates(&dir) {
        Some(dir)
    } else {
        println!("skipped: openssl could not make test certificates");
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_publishes_and_a_wrong_ca_never_connects() {
    if !Mosquitto::available() {
        return;
    }
    let Some(dir) = cert_dir() else {
        return;
    };
    let d = |f: &str| dir.join(f);
    let broker = Mosquitto::start(
        "tls",
        &format!(
            "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true",
            d("ca.pem").display(),
            d("server.pem").display(),
            d("server.key").display()
        ),
    )
    .await;
    let url = MqttUrl {
        tls: true,
        host: "localhost".into(),
        port: broker.port,
    };

    // With the right CA and a client certificate every message goes through.
    let mut config = config_for(url.clone(), MqttProtocol::V5, RetainUntil::BrokerAck);
    config.tls = Some(
        TlsSettings::from_files(
            Some(&d("ca.pem")),
            Some(&d("client.pem")),
            Some(&d("client.key")),
        )
        .unwrap(),
    );
    let outbox = MemoryOutbox::new(config.topics.gateway(), SITE, Mode::BrokerAck);
    for _ in 0..20 {
        outbox.commit(3);
    }
    let running = spawn(config, outbox.clone());
    eventually("every message over TLS", LIMIT, || {
        outbox.all_broker_acked()
    })
    .await;
    running.stop().await.unwrap();

    // With a CA that did not sign the server's certificate it never connects, keeps
    // retrying with backoff, and still stops cleanly.
    let mut config = config_for(url, MqttProtocol::V5, RetainUntil::BrokerAck);
    config.tls = Some(TlsSettings::from_files(Some(&d("other-ca.pem")), None, None).unwrap());
    let outbox = MemoryOutbox::new(config.topics.gateway(), SITE, Mode::BrokerAck);
    outbox.commit(1);
    let running = spawn(config, outbox.clone());
    let stats = running.stats.clone();
    eventually("two failed attempts", LIMIT, || {
        stats.snapshot().connect_failures >= 2
    })
    .await;
    assert_eq!(stats.snapshot().connects, 0);
    running.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
