//! The HTTP API against known data, over a real socket on a port the OS picks: every
//! endpoint, the KPI range rule (ratio of sums, not mean of ratios), hostile input, auth and
//! the OpenAPI document. Runs on SQLite always and on PostgreSQL when
//! `FIVEZERO_TEST_POSTGRES` names a server (otherwise that half prints "skipped" and passes).

use std::time::Duration;

mod common;

#[path = "common/http.rs"]
mod http;

use http::Answer;

#[path = "common/fixture.rs"]
mod fixture;

use common::{LIMIT, eventually};
use fivezero_sink::api::{self, ApiState};
use fivezero_sink::config::HttpConfig;
use fivezero_sink::stats::SinkStats;
use fivezero_sink::store::postgres::PgStore;
use fivezero_sink::store::sqlite::SqliteStore;
use fivezero_sink::store::{AnyStore, Store};
use fixture::{ADMIN, DAY, EPOCH, GW, METER, READ, SITE, batch, fill, http_config, raw, reading};
use serde_json::Value as Json;

/// A served API; dropped with the test's runtime.
struct Api {
    addr: std::net::SocketAddr,
}

async fn serve(store: AnyStore, config: HttpConfig) -> Api {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = ApiState::new(store, SinkStats::default(), config);
    tokio::spawn(api::serve(listener, state, std::future::pending()));
    Api { addr }
}

impl Api {
    async fn raw(&self, request: String) -> Answer {
        http::raw(self.addr, &request).await
    }

    async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        http::get_with(self.addr, path, headers).await
    }

    async fn get(&self, path: &str) -> Answer {
        self.get_with(path, &[("Authorization", &format!("Bearer {READ}"))])
            .await
    }
}

fn day_range() -> String {
    format!("from={DAY}&to={}", DAY + 86_400_000)
}

// ------------------------------------------------------------------------------------------
// Tests, run on each backend
// ------------------------------------------------------------------------------------------

async fn sites_gateways_devices_and_metrics_list_the_known_data(s: AnyStore) {
    fill(&s).await;
    let api = serve(s, http_config()).await;
    let j = api.get("/api/v1/sites").await.json();
    assert_eq!(j["sites"], serde_json::json!([SITE]));
    let j = api
        .get(&format!("/api/v1/sites/{SITE}/gateways"))
        .await
        .json();
    let g = &j["gateways"][0];
    assert_eq!(g["gateway"], GW);
    assert_eq!(g["status"], "online");
    assert_eq!(g["version"], "0.1.0");
    assert_eq!(g["backlog"], 40);
    assert_eq!(g["watermark"], 1460);
    assert_eq!(g["epoch"], EPOCH.to_string());
    let j = api
        .get(&format!("/api/v1/sites/{SITE}/devices"))
        .await
        .json();
    let names: Vec<&str> = j["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device"].as_str().unwrap())
        .collect();
    assert_eq!(names, [METER, "weather"]);
    assert_eq!(j["devices"][0]["readings"], 1440);
    let j = api
        .get(&format!("/api/v1/sites/{SITE}/metrics"))
        .await
        .json();
    let m = &j["metrics"];
    assert_eq!(m[0]["metric"], "ambient.temperature");
    assert_eq!(m[0]["kind"], "gauge");
    assert_eq!(m[1]["metric"], "electricity.import_energy");
    assert_eq!(m[1]["kind"], "counter");
    assert_eq!(m[1]["devices"], serde_json::json!([METER]));
}

async fn series_buckets_counters_by_delta_and_gauges_by_mean(s: AnyStore) {
    fill(&s).await;
    let api = serve(s, http_config()).await;
    let j = api
        .get(&format!(
            "/api/v1/sites/{SITE}/series?device={METER}&metric=electricity.import_energy&{}&step=1h",
            day_range()
        ))
        .await
        .json();
    assert_eq!(j["agg"], "delta");
    let points = j["points"].as_array().unwrap();
    assert_eq!(points.len(), 24);
    assert_eq!(points[0]["value"], 59.0); // the first reading is the baseline
    assert_eq!(points[1]["value"], 60.0);
    let total: f64 = points.iter().map(|p| p["value"].as_f64().unwrap()).sum();
    assert_eq!(total, 1439.0);
    let j = api
        .get(&format!(
            "/api/v1/sites/{SITE}/series?device=weather&metric=ambient.temperature&{}&step=5m",
            day_range()
        ))
        .await
        .json();
    assert_eq!(j["agg"], "avg");
    assert_eq!(j["points"][0]["value"], 22.0); // 20..=24
    assert_eq!(j["points"][0]["count"], 5);
    // One day of 1-minute buckets by default, max as asked.
    let j = api
        .get(&format!(
            "/api/v1/sites/{SITE}/series?device=weather&metric=ambient.temperature&{}&agg=max",
            day_range()
        ))
        .await
        .json();
    assert_eq!(j["step_ms"], 60_000);
    assert_eq!(j["points"][9]["value"], 29.0);
}

async fn series_and_kpis_answer_csv_by_accept_or_format(s: AnyStore) {
    fill(&s).await;
    let api = serve(s, http_config()).await;
    let path = format!(
        "/api/v1/sites/{SITE}/series?device={METER}&metric=electricity.import_energy&{}&step=6h",
        day_range()
    );
    let a = api
        .get_with(
            &path,
            &[
                ("Authorization", &format!("Bearer {READ}")),
                ("Accept", "text/csv"),
            ],
        )
        .await;
    assert_eq!(a.status, 200);
    assert!(a.header("content-type").unwrap().starts_with("text/csv"));
    let lines: Vec<&str> = a.body.lines().collect();
    assert_eq!(lines[0], "time,ts,value,count");
    assert_eq!(lines.len(), 5);
    assert!(
        lines[2].starts_with("2026-06-01T06:00:00Z,"),
        "{}",
        lines[2]
    );
    let b = api.get(&format!("{path}&format=csv")).await;
    assert_eq!(b.body, a.body);
    let k = api
        .get(&format!(
            "/api/v1/sites/{SITE}/kpis?{}&format=csv",
            day_range()
        ))
        .await;
    assert_eq!(k.status, 200);
    assert!(
        k.body
            .starts_with("start,end,kpi,unit,value,numerator,denominator")
    );
    assert!(
        k.body
            .lines()
            .any(|l| l.contains("zero_waste.total_recovery_rate,1,0.995,99.5,100,"))
    );
}

async fn a_kpi_range_is_the_ratio_of_summed_windows_not_the_mean_of_ratios(s: AnyStore) {
    fill(&s).await;
    let api = serve(s, http_config()).await;
    let to = DAY + 2 * 3_600_000;
    let j = api
        .get(&format!("/api/v1/sites/{SITE}/kpis?from={DAY}&to={to}"))
        .await
        .json();
    assert_eq!(j["period"], "range");
    let cards = j["scorecards"].as_array().unwrap();
    assert_eq!(cards.len(), 1);
    let total = cards[0]["kpis"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kpi"] == "zero_waste.total_recovery_rate")
        .unwrap();
    // Windows: 0.5 / 1 (50 %) and 99 / 99 (100 %): mean of ratios 75 %, ratio of sums 99.5 %.
    assert_eq!(total["value"], 0.995);
    assert_eq!(total["numerator"], 99.5);
    assert_eq!(total["denominator"], 100.0);
    assert_eq!(total["coverage"], 1.0);
    assert_eq!(total["quality"], "ok");
    assert_eq!(total["windows"], 2);
    assert_eq!(
        total["tiers"],
        serde_json::json!([{"tier": "A", "status": "achieved"}, {"tier": "Z", "status": "achieved"}])
    );
    // Per hour: the windows as stored.
    let j = api
        .get(&format!(
            "/api/v1/sites/{SITE}/kpis?from={DAY}&to={to}&period=1h"
        ))
        .await
        .json();
    let values: Vec<f64> = j["scorecards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            c["kpis"]
                .as_array()
                .unwrap()
                .iter()
                .find(|k| k["kpi"] == "zero_waste.total_recovery_rate")
                .unwrap()["value"]
                .as_f64()
                .unwrap()
        })
        .collect();
    assert_eq!(values, [0.5, 1.0]);
    // A whole day holds 24 hourly windows: coverage 2/24, tiers withheld.
    let j = api
        .get(&format!("/api/v1/sites/{SITE}/kpis?{}", day_range()))
        .await
        .json();
    let total = j["scorecards"][0]["kpis"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kpi"] == "zero_waste.total_recovery_rate")
        .unwrap()
        .clone();
    assert_eq!(total["quality"], "estimated");
    assert_eq!(total["windows_expected"], 24);
    assert_eq!(total["tiers"][0]["status"], "insufficient_data");
    // The latest window of each KPI.
    let j = api
        .get(&format!("/api/v1/sites/{SITE}/kpis/latest"))
        .await
        .json();
    let card = &j["scorecards"][0];
    assert_eq!(card["source_period"], "1h");
    let total = card["kpis"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kpi"] == "zero_waste.total_recovery_rate")
        .unwrap();
    assert_eq!(total["value"], 1.0);
}

async fn coverage_lists_received_declared_gaps_and_missing_ranges(s: AnyStore) {
    fill(&s).await;
    let api = serve(s, http_config()).await;
    let j = api
        .get(&format!("/api/v1/sites/{SITE}/coverage"))
        .await
        .json();
    let st = &j["streams"][0];
    assert_eq!(st["gateway"], GW);
    assert_eq!(st["watermark"], 1460);
    assert_eq!(st["received"], 1440 + 10 + 5 + 10);
    assert_eq!(st["declared_gap_seqs"], 10);
    assert_eq!(
        st["declared_gaps"],
        serde_json::json!([{"first": 1451, "last": 1460, "count": 10, "reason": "buffer_full"}])
    );
    assert_eq!(
        st["missing"],
        serde_json::json!([{"first": 1461, "last": 1470, "count": 10}])
    );
    assert_eq!(st["highest"], 1485);
    let j = api
        .get(&format!(
            "/api/v1/sites/{SITE}/coverage?from={}",
            DAY + 400 * 86_400_000
        ))
        .await
        .json();
    assert_eq!(j["streams"], serde_json::json!([]));
}

async fn hostile_queries_get_the_right_4xx_as_json(s: AnyStore) {
    fill(&s).await;
    let api = serve(
        s,
        HttpConfig {
            max_rows: 1000,
            max_range: Duration::from_secs(40 * 86_400),
            ..http_config()
        },
    )
    .await;
    let series =
        format!("/api/v1/sites/{SITE}/series?device={METER}&metric=electricity.import_energy");
    let cases: Vec<(String, u16, &str)> = vec![
        (
            format!("{series}&{}&colour=red", day_range()),
            400,
            "bad_query",
        ),
        (
            format!("{series}&{}&device=pv", day_range()),
            400,
            "bad_query",
        ),
        (format!("{series}&from=yesterday&to=now"), 400, "bad_query"),
        (format!("{series}&from={DAY}&to={DAY}"), 400, "bad_query"),
        (format!("{series}&from=0&to={DAY}"), 400, "range_too_long"),
        (
            format!("{series}&{}&step=1s", day_range()),
            400,
            "bad_query",
        ),
        (
            format!("{series}&{}&step=1h&agg=median", day_range()),
            400,
            "bad_query",
        ),
        (
            format!("{series}&{}&step=1h", day_range()),
            422,
            "too_many_rows",
        ),
        (
            format!(
                "/api/v1/sites/{SITE}/series?device=weather&metric=ambient.temperature&{}&agg=delta",
                day_range()
            ),
            400,
            "bad_query",
        ),
        (
            format!("{series}&{}&format=xml", day_range()),
            400,
            "bad_query",
        ),
        (
            format!("/api/v1/sites/{SITE}/kpis?{}&period=2w", day_range()),
            400,
            "bad_query",
        ),
        (
            format!("/api/v1/sites/{SITE}/kpis?from={DAY}"),
            400,
            "bad_query",
        ),
        (
            format!("/api/v1/sites/{SITE}/coverage?to=x"),
            400,
            "bad_query",
        ),
        ("/api/v1/sites?x=1".to_owned(), 400, "bad_query"),
        ("/api/v1/sites/nowhere/devices".to_owned(), 404, "not_found"),
        ("/api/v1/sites/a%2Bb/devices".to_owned(), 400, "bad_query"),
        ("/api/v1/nothing".to_owned(), 404, "not_found"),
        (
            "/api/v1/admin/dead_letters?limit=0".to_owned(),
            400,
            "bad_query",
        ),
        (
            "/api/v1/admin/dead_letters?limit=-1".to_owned(),
            400,
            "bad_query",
        ),
    ];
    for (path, status, code) in cases {
        let token = if path.contains("/admin/") {
            ADMIN
        } else {
            READ
        };
        let a = api
            .get_with(&path, &[("Authorization", &format!("Bearer {token}"))])
            .await;
        assert_eq!(a.status, status, "{path}: {}", a.body);
        a.assert_error(status, code);
        assert!(
            !a.body.contains("sqlite") && !a.body.contains("postgres"),
            "{}",
            a.body
        );
    }
    let big = "x".repeat(20 * 1024);
    api.get_with("/api/v1/sites", &[("X-Big", &big)])
        .await
        .assert_error(431, "headers_too_large");
    api.raw(format!(
        "GET /api/v1/sites HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: Bearer {READ}\r\nContent-Length: 100000\r\n\r\n"
    ))
    .await
    .assert_error(413, "body_too_large");
    api.raw(format!(
        "POST /api/v1/sites HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: Bearer {READ}\r\nContent-Length: 0\r\n\r\n"
    ))
    .await
    .assert_error(405, "method_not_allowed");
}

async fn tokens_are_required_where_they_should_be(s: AnyStore) {
    fill(&s).await;
    let api = serve(s, http_config()).await;
    let a = api.get_with("/api/v1/sites", &[]).await;
    a.assert_error(401, "unauthorized");
    assert_eq!(a.header("www-authenticate"), Some("Bearer"));
    api.get_with("/api/v1/sites", &[("Authorization", "Bearer wrong")])
        .await
        .assert_error(401, "unauthorized");
    api.get_with("/api/v1/sites", &[("Authorization", "Basic abc")])
        .await
        .assert_error(401, "unauthorized");
    api.get_with(&format!("/api/v1/sites/{SITE}/kpis?{}", day_range()), &[])
        .await
        .assert_error(401, "unauthorized");
    assert_eq!(api.get("/api/v1/sites").await.status, 200);
    api.get("/api/v1/admin/quarantine")
        .await
        .assert_error(403, "forbidden");
    let a = api
        .get_with(
            "/api/v1/admin/dead_letters",
            &[("Authorization", &format!("Bearer {ADMIN}"))],
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["dead_letters"], serde_json::json!([]));
    let a = api.get_with("/healthz", &[]).await;
    assert_eq!((a.status, a.body.as_str()), (200, "ok\n"));
    let a = api.get_with("/metrics", &[]).await;
    assert_eq!(a.status, 200);
    assert!(
        a.body.contains("fivezero_sink_items_stored_total"),
        "{}",
        a.body
    );
    assert!(
        a.body.contains("fivezero_sink_broker_connected 0"),
        "{}",
        a.body
    );
    assert_eq!(api.get_with("/api/v1/openapi.json", &[]).await.status, 200);
    // Ready needs the database and ingest: here ingest never connected.
    let a = api.get_with("/readyz", &[]).await;
    assert_eq!(a.status, 503);
    assert_eq!(
        a.json(),
        serde_json::json!({"database": true, "ingest": false})
    );
}

async fn retention_deletes_old_readings_and_kpi_records_only(s: AnyStore) {
    fill(&s).await;
    let r = s
        .apply_retention(Some(DAY + 3_600_000), Some(DAY + 3_600_001))
        .await
        .unwrap();
    assert_eq!(r.readings, 60 + 10);
    assert_eq!(r.kpis, 5);
    // The ledger stays: the same batch again is a duplicate, not stored anew.
    let again = s
        .store_batch(
            batch(
                1441,
                (0..10)
                    .map(|i| {
                        reading(
                            DAY + i * 60_000,
                            "weather",
                            "ambient.temperature",
                            20.0 + i as f64,
                        )
                    })
                    .collect(),
            ),
            raw(),
        )
        .await
        .unwrap();
    assert!(matches!(
        again.outcome,
        fivezero_sink::store::Outcome::Duplicate { .. }
    ));
}

// ------------------------------------------------------------------------------------------
// Backends
// ------------------------------------------------------------------------------------------

fn postgres_url() -> Option<String> {
    std::env::var("FIVEZERO_TEST_POSTGRES")
        .ok()
        .filter(|u| !u.is_empty())
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "fivezero-api-{name}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let dir = super::scratch(stringify!($name));
                    let store = super::SqliteStore::open(&dir.join("sink.db")).await.unwrap();
                    super::$name(super::AnyStore::Sqlite(store)).await;
                    let _ = std::fs::remove_dir_all(&dir);
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(url) = super::postgres_url() else {
                        println!("skipped: FIVEZERO_TEST_POSTGRES not set");
                        return;
                    };
                    let schema = format!("fz_api_{:016x}", rand::random::<u64>());
                    let store = super::PgStore::open(&url, Some(&schema)).await.unwrap();
                    let outcome =
                        tokio::spawn(super::$name(super::AnyStore::Postgres(store))).await;
                    super::PgStore::drop_schema(&url, &schema).await.unwrap();
                    if let Err(e) = outcome {
                        std::panic::resume_unwind(e.into_panic());
                    }
                }
            )*
        }
    };
}

on_both_backends!(
    sites_gateways_devices_and_metrics_list_the_known_data,
    series_buckets_counters_by_delta_and_gauges_by_mean,
    series_and_kpis_answer_csv_by_accept_or_format,
    a_kpi_range_is_the_ratio_of_summed_windows_not_the_mean_of_ratios,
    coverage_lists_received_declared_gaps_and_missing_ranges,
    hostile_queries_get_the_right_4xx_as_json,
    tokens_are_required_where_they_should_be,
    retention_deletes_old_readings_and_kpi_records_only,
);

// ------------------------------------------------------------------------------------------
// Limits: concurrency, request timeout, header and body sizes
// ------------------------------------------------------------------------------------------

/// A runtime whose blocking pool has a single thread. The SQLite store runs every call on
/// that pool, so a test that occupies the thread ([`hold_database`]) keeps every request
/// that reads the database in flight for as long as it wants, with no timing involved.
fn runtime_with_one_blocking_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// The blocking thread, held until this is dropped.
struct DatabaseHeld(#[allow(dead_code)] std::sync::mpsc::Sender<()>);

/// Occupies the runtime's only blocking thread; returns once it is occupied.
async fn hold_database() -> DatabaseHeld {
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (held, is_held) = tokio::sync::oneshot::channel::<()>();
    drop(tokio::task::spawn_blocking(move || {
        let _ = held.send(());
        // Returns when the sender is dropped.
        let _ = released.recv();
    }));
    is_held.await.unwrap();
    DatabaseHeld(release)
}

async fn sqlite_with_known_data(name: &str) -> (AnyStore, std::path::PathBuf) {
    let dir = scratch(name);
    let store = AnyStore::Sqlite(SqliteStore::open(&dir.join("sink.db")).await.unwrap());
    fill(&store).await;
    (store, dir)
}

#[test]
fn one_request_over_the_concurrency_limit_gets_503_busy_at_once_and_the_others_finish() {
    runtime_with_one_blocking_thread().block_on(async {
        let (store, dir) = sqlite_with_known_data("concurrency").await;
        let api = serve(
            store,
            HttpConfig {
                max_concurrency: 2,
                ..http_config()
            },
        )
        .await;
        // Free permits: the limit is not reached by requests one after another.
        for _ in 0..3 {
            assert_eq!(api.get("/api/v1/sites").await.status, 200);
        }
        let held = hold_database().await;
        let addr = api.addr;
        let slow: Vec<_> = (0..2)
            .map(|_| {
                tokio::spawn(async move {
                    let auth = format!("Bearer {READ}");
                    http::get_with(addr, "/api/v1/sites", &[("Authorization", &auth)]).await
                })
            })
            .collect();
        // /healthz reads no database: it answers 200 while a permit is free and 503 once
        // both slow requests hold theirs.
        eventually("both slow requests hold a permit", LIMIT, || async {
            api.get_with("/healthz", &[]).await.status == 503
        })
        .await;
        let busy = api.get_with("/healthz", &[]).await;
        busy.assert_error(503, "busy");
        assert_eq!(busy.header("retry-after"), Some("1"));
        // The third slow request is refused, not queued: it is answered while the database
        // is still held.
        api.get("/api/v1/sites").await.assert_error(503, "busy");
        for s in &slow {
            assert!(
                !s.is_finished(),
                "a slow request finished while the database was held"
            );
        }
        drop(held);
        for s in slow {
            let a = s.await.unwrap();
            assert_eq!(a.status, 200, "{}", a.body);
            assert_eq!(a.json()["sites"], serde_json::json!([SITE]));
        }
        // Permits are given back.
        assert_eq!(api.get_with("/healthz", &[]).await.status, 200);
        assert_eq!(api.get("/api/v1/sites").await.status, 200);
        let _ = std::fs::remove_dir_all(&dir);
    });
}

#[test]
fn a_request_over_the_timeout_gets_503_timeout_and_gives_its_permit_back() {
    runtime_with_one_blocking_thread().block_on(async {
        let (store, dir) = sqlite_with_known_data("timeout").await;
        let timeout = Duration::from_millis(300);
        let api = serve(
            store,
            HttpConfig {
                request_timeout: timeout,
                max_concurrency: 1,
                ..http_config()
            },
        )
        .await;
        assert_eq!(api.get("/api/v1/sites").await.status, 200);
        let held = hold_database().await;
        let started = std::time::Instant::now();
        let a = api
            .get(&format!("/api/v1/sites/{SITE}/kpis?{}", day_range()))
            .await;
        a.assert_error(503, "timeout");
        assert_eq!(a.header("retry-after"), Some("1"));
        assert!(a.json()["detail"].as_str().unwrap().contains("300ms"));
        // Not before the timeout (a lower bound, not a speed).
        assert!(started.elapsed() >= timeout);
        // With a limit of one request at once, the timed-out request gave its permit back:
        // the next one is served while the database is still held.
        let h = api.get_with("/healthz", &[]).await;
        assert_eq!((h.status, h.body.as_str()), (200, "ok\n"));
        drop(held);
        eventually("the database answers again", LIMIT, || async {
            api.get("/api/v1/sites").await.status == 200
        })
        .await;
        let _ = std::fs::remove_dir_all(&dir);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_and_body_limits_follow_the_configuration() {
    let (store, dir) = sqlite_with_known_data("sizes").await;
    let small = serve(
        store.clone(),
        HttpConfig {
            max_header_size: 1024,
            max_body_size: 1024,
            ..http_config()
        },
    )
    .await;
    let roomy = serve(store, http_config()).await;
    let auth = format!("Bearer {READ}");
    let header = "x".repeat(1500);
    let with_header = [("Authorization", auth.as_str()), ("X-Pad", header.as_str())];
    small
        .get_with("/api/v1/sites", &with_header)
        .await
        .assert_error(431, "headers_too_large");
    assert_eq!(
        roomy.get_with("/api/v1/sites", &with_header).await.status,
        200
    );
    // A long query string counts too.
    small
        .get(&format!("/api/v1/sites?{}", "a".repeat(1500)))
        .await
        .assert_error(431, "headers_too_large");
    let body = |n: usize| {
        format!(
            "GET /api/v1/sites HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: {auth}\r\n\
             Content-Length: {n}\r\n\r\n{}",
            "b".repeat(n)
        )
    };
    assert_eq!(small.raw(body(1000)).await.status, 200);
    small
        .raw(body(2000))
        .await
        .assert_error(413, "body_too_large");
    assert_eq!(roomy.raw(body(2000)).await.status, 200);
    // A chunked body has no length to check: refused whatever its size.
    small
        .raw(format!(
            "GET /api/v1/sites HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: {auth}\r\n\
             Transfer-Encoding: chunked\r\n\r\n1\r\nb\r\n0\r\n\r\n"
        ))
        .await
        .assert_error(413, "body_too_large");
    let _ = std::fs::remove_dir_all(&dir);
}

// ------------------------------------------------------------------------------------------
// OpenAPI
// ------------------------------------------------------------------------------------------

/// `cloud-sink/openapi.json` is the document the code generates; regenerate it with
/// `FIVEZERO_UPDATE_OPENAPI=1 cargo test -p fivezero-sink --test api openapi`.
#[test]
fn the_openapi_document_is_in_sync_with_the_code() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    let generated = api::openapi_text();
    if std::env::var_os("FIVEZERO_UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "cloud-sink/openapi.json is stale: run FIVEZERO_UPDATE_OPENAPI=1 cargo test -p fivezero-sink --test api openapi"
    );
    let doc: Json = serde_json::from_str(&generated).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for route in api::ROUTES {
        assert!(
            paths.contains_key(*route),
            "{route} is served but not documented"
        );
    }
    assert_eq!(
        paths.len(),
        api::ROUTES.len(),
        "documented routes that are not served"
    );
    // Strict parameters are documented: series names all of its parameters.
    let params: Vec<&str> = doc["paths"]["/api/v1/sites/{site}/series"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for p in [
        "site", "device", "metric", "from", "to", "step", "agg", "format",
    ] {
        assert!(params.contains(&p), "{p} missing in {params:?}");
    }
    // The patterns documented are the ones the parser enforces.
    for (path, name, pattern) in [
        (
            "/api/v1/sites/{site}/series",
            "from",
            api::params::TIME_PATTERN,
        ),
        (
            "/api/v1/sites/{site}/series",
            "to",
            api::params::TIME_PATTERN,
        ),
        (
            "/api/v1/sites/{site}/series",
            "step",
            api::params::STEP_PATTERN,
        ),
        (
            "/api/v1/sites/{site}/kpis",
            "from",
            api::params::TIME_PATTERN,
        ),
        ("/api/v1/sites/{site}/kpis", "to", api::params::TIME_PATTERN),
        (
            "/api/v1/sites/{site}/coverage",
            "from",
            api::params::TIME_PATTERN,
        ),
        (
            "/api/v1/sites/{site}/coverage",
            "to",
            api::params::TIME_PATTERN,
        ),
    ] {
        let p = doc["paths"][path]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap();
        assert_eq!(p["schema"]["pattern"], pattern, "{path} {name}");
    }
    // Every operation documents the answers the limits can give.
    for (path, item) in paths {
        let responses = item["get"]["responses"].as_object().unwrap();
        for status in ["400", "413", "431", "503"] {
            assert!(responses.contains_key(status), "{path} lacks {status}");
        }
    }
}

#[tokio::test]
async fn every_documented_route_is_served() {
    let dir = scratch("routes");
    let store = AnyStore::Sqlite(SqliteStore::open(&dir.join("sink.db")).await.unwrap());
    fill(&store).await;
    let api = serve(store, http_config()).await;
    for route in api::ROUTES {
        let path = route.replace("{site}", SITE);
        let a = api
            .get_with(&path, &[("Authorization", &format!("Bearer {ADMIN}"))])
            .await;
        assert_ne!(a.status, 404, "{path}: {}", a.body);
        assert_ne!(a.status, 405, "{path}: {}", a.body);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
