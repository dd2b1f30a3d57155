//! Every poison payload of the reliability plan ends as acknowledged + dead-letter row with
//! its raw bytes + counter by reason, and the sink stays alive: a good batch sent after all of
//! them is stored, and nothing is redelivered in a loop.

mod common;

use std::collections::BTreeMap;

use common::{LIMIT, Probe, Sink, eventually, now_ms, scratch};
use fivezero_model::wire::{self, Batch, Epoch, Quality, Reading, SCHEMA_VERSION, Value};
use fivezero_sink::store::sqlite::SqliteStore;
use fivezero_sink::store::{ReadingsQuery, Store};

const SITE: &str = "s";
const GW: &str = "gw-ok";

fn batch(first_seq: u64, count: u32) -> Batch {
    Batch {
        schema: SCHEMA_VERSION,
        gateway: GW.into(),
        site: SITE.into(),
        epoch: Epoch(42),
        first_seq,
        count,
        readings: (0..count)
            .map(|i| Reading {
                ts: now_ms(),
                device: "meter".into(),
                metric: "electricity.import_energy".into(),
                value: Some(Value::Number(f64::from(i))),
                quality: Quality::Good,
                reason: None,
            })
            .collect(),
    }
}

fn text(b: &Batch) -> String {
    String::from_utf8(wire::encode(b)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_poison_payload_is_dead_lettered_counted_and_the_sink_stays_alive() {
    let dir = scratch("poison");
    let db = dir.join("sink.db");
    let sink = Sink::embedded(&db, "allowed_gateways = [\"gw-ok\", \"gw-other\"]").await;
    let topic = format!("fivezero/v1/{SITE}/{GW}/batches");
    let good = text(&batch(1, 2));

    let mut nan = text(&batch(1, 1));
    nan = nan.replace("\"value\":0.0", "\"value\":NaN");
    let inf = text(&batch(1, 1)).replace("\"value\":0.0", "\"value\":1e999");
    assert!(
        nan.contains("NaN") && inf.contains("1e999"),
        "the substitutions happened"
    );
    let mut zero = batch(1, 1);
    zero.count = 0;
    zero.readings.clear();
    let mut too_many = batch(1, 1);
    too_many.count = 10_001;
    let overflow = batch(u64::MAX, 1);
    let beyond_i64 = batch(u64::MAX / 2 + 1, 1);
    let mut old = batch(1, 1);
    old.readings[0].ts = now_ms() - 11 * 365 * 86_400_000;
    let mut seconds = batch(1, 1);
    seconds.readings[0].ts = now_ms() / 1000;
    let mut other_gw = batch(1, 1);
    other_gw.gateway = "gw-other".into();
    let mut other_site = batch(1, 1);
    other_site.site = "elsewhere".into();

    let cases: Vec<(String, Vec<u8>, &str)> = vec![
        (topic.clone(), good.as_bytes()[..good.len() / 2].to_vec(), "malformed"),
        (topic.clone(), br#"{"schema":2,"gateway":"gw-ok"}"#.to_vec(), "schema"),
        (
            topic.clone(),
            good.replacen("\"count\":2", "\"count\":\"2\"", 1).into_bytes(),
            "malformed",
        ),
        (topic.clone(), b"\xff\xfe not json".to_vec(), "malformed"),
        (topic.clone(), nan.into_bytes(), "malformed"),
        (topic.clone(), inf.into_bytes(), "malformed"),
        (topic.clone(), wire::encode(&zero), "invalid"),
        (topic.clone(), wire::encode(&too_many), "invalid"),
        (topic.clone(), wire::encode(&overflow), "invalid"),
        (topic.clone(), wire::encode(&beyond_i64), "seq_range"),
        (topic.clone(), wire::encode(&old), "invalid"),
        (topic.clone(), wire::encode(&seconds), "invalid"),
        (topic.clone(), wire::encode(&other_gw), "gateway_mismatch"),
        (topic.clone(), wire::encode(&other_site), "site_mismatch"),
        (
            format!("fivezero/v1/{SITE}/gw-stranger/batches"),
            good.replace("gw-ok", "gw-stranger").into_bytes(),
            "unknown_gateway",
        ),
        (topic.clone(), "[".repeat(20_000).into_bytes(), "malformed"),
        (topic.clone(), Vec::new(), "empty"),
        (
            format!("fivezero/v1/{SITE}/{GW}/gaps"),
            br#"{"schema":1,"gateway":"gw-ok","site":"s","epoch":"000000000000002a","first_seq":1,"count":1,"reason":"meltdown","declared_at":0}"#.to_vec(),
            "malformed",
        ),
        (
            format!("fivezero/v1/{SITE}/{GW}/kpi"),
            good.clone().into_bytes(),
            "malformed",
        ),
    ];
    let mut expected: BTreeMap<&str, u64> = BTreeMap::new();
    for (_, _, reason) in &cases {
        *expected.entry(reason).or_default() += 1;
    }

    // When each poison payload is published
    let probe = Probe::start("127.0.0.1", sink.port, &[]).await;
    for (t, payload, _) in &cases {
        probe.publish(t, payload.clone()).await;
    }

    // Then each one is counted by reason and kept with its raw bytes
    let stats = sink.stats.clone();
    let want = cases.len() as u64;
    eventually("every poison message is dead-lettered", LIMIT, || {
        let s = stats.snapshot();
        async move { s.dead_letters_total() >= want }
    })
    .await;
    let snap = sink.stats.snapshot();
    assert_eq!(snap.dead_letters, expected);
    let store = SqliteStore::open(&db).await.unwrap();
    let rows = store.dead_letters(100).await.unwrap();
    assert_eq!(rows.len(), cases.len());
    for (t, payload, reason) in &cases {
        assert!(
            rows.iter()
                .any(|r| &r.topic == t && &r.payload == payload && r.reason == *reason),
            "no dead letter for a {reason} payload on {t}"
        );
    }

    // When a payload larger than the packet limit is sent (refused by the broker itself)
    let big = Probe::start("127.0.0.1", sink.port, &[]).await;
    big.publish(&topic, vec![b' '; 300 * 1024]).await;
    drop(big);

    // Then the sink is still alive: a good batch is stored and acknowledged
    probe.publish(&topic, good.clone().into_bytes()).await;
    eventually("the good batch is stored", LIMIT, || {
        let store = store.clone();
        async move {
            store
                .readings(ReadingsQuery {
                    limit: 10,
                    ..ReadingsQuery::default()
                })
                .await
                .unwrap()
                .len()
                == 2
        }
    })
    .await;
    // and nothing was redelivered: the good batch came after every poison message on one
    // connection (QoS 1 keeps their order), and no dead letter beyond one per payload exists.
    assert_eq!(sink.stats.snapshot().dead_letters_total(), want);
    assert_eq!(store.dead_letters(100).await.unwrap().len(), cases.len());

    sink.stop().await.expect("the sink stops cleanly");
    let _ = std::fs::remove_dir_all(&dir);
}
