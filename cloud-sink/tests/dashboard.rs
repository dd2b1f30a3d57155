//! The plant manager's dashboard against known data, over a real socket on a port the OS
//! picks: the scorecard shows what `/api/v1/sites/{site}/kpis` returns, the charts are SVG
//! with lines, gateway health tells online from offline, and the token login works. A last
//! test renders the page in headless Chromium when it is installed (Debian's `chromium`),
//! and prints "skipped" otherwise.

mod common;

#[path = "common/http.rs"]
mod http;

use http::Answer;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use fivezero_model::kpi::{self, EnergySums, Factors, HeatSums, Sum, WasteSums, WaterSums};
use fivezero_model::wire::{
    BufferState, Epoch, Gap, GapReason, KpiBatch, KpiRecord, Period, Presence, SCHEMA_VERSION,
    Status, Window,
};
use fivezero_sink::api::{self, ApiState};
use fivezero_sink::config::{ApiToken, HttpConfig, Scope, hash_token};
use fivezero_sink::stats::SinkStats;
use fivezero_sink::store::sqlite::SqliteStore;
use fivezero_sink::store::{AnyStore, RawMessage, Store};
use serde_json::Value as Json;

const SITE: &str = "qd-greensail";
const EPOCH: Epoch = Epoch(0x0123_4567_89ab_cdef);
/// 2026-06-01T00:00:00Z.
const DAY: i64 = 1_780_272_000_000;
const END: i64 = DAY + 86_400_000;
const READ: &str = "read-token-0123456789";

fn hour(i: i64) -> Window {
    Window {
        start: DAY + i * 3_600_000,
        end: DAY + (i + 1) * 3_600_000,
        period: Period::Hour,
        tz: "Asia/Shanghai".into(),
    }
}

fn exact(v: f64) -> Option<Sum> {
    Some(Sum::exact(v))
}

/// A day of hourly windows of every pillar, with values that move through the day (sun in
/// the middle of the day, a weak waste-heat hour at 05:00), and hour 12 missing.
fn day_of_records() -> Vec<KpiRecord> {
    let mut out = Vec::new();
    for i in (0..24).filter(|i| *i != 12) {
        let w = hour(i);
        let f = i as f64;
        let recovered = 9.0 + (f * 0.7).sin() * 0.8;
        out.extend(kpi::zero_waste(
            &w,
            &WasteSums {
                received: exact(10.0),
                stock_drawn: None,
                material: exact(recovered * 0.6),
                energy: exact(recovered * 0.4),
                landfill: exact(10.0 - recovered),
                stock_change: None,
            },
        ));
        out.extend(kpi::zero_wastewater(
            &w,
            &WaterSums {
                fresh: exact(4.0 + f % 3.0),
                reused: exact(30.0),
                discharged: exact(0.05),
                rain_collected: None,
                rain_used: None,
            },
        ));
        out.extend(kpi::zero_waste_heat(
            &w,
            &HeatSums {
                recovered: exact(if i == 5 { 200.0 } else { 900.0 }),
                stack_loss: exact(100.0),
                exit_temperature: exact(38.0),
                exit_within_limit_share: exact(1.0),
            },
        ));
        let sun = (((f - 6.0) / 12.0 * std::f64::consts::PI).sin()).max(0.0);
        out.extend(kpi::energy_and_carbon(
            &w,
            &EnergySums {
                renewable_generated: exact(400.0 * sun),
                grid_import: exact(150.0 - 140.0 * sun),
                grid_export: exact(60.0 * sun),
                green_purchased: None,
            },
            &[],
            &Factors::default(),
        ));
        out.push(kpi::reported(
            &w,
            "zero_energy.ev_charging_kwh",
            "kWh",
            exact(if (8..18).contains(&i) { 40.0 } else { 5.0 }),
        ));
    }
    out
}

fn raw() -> RawMessage {
    RawMessage {
        topic: "t".into(),
        payload: b"{}".to_vec(),
        received_at: DAY,
    }
}

fn status(gateway: &str, state: Presence, ts: i64) -> Status {
    Status {
        schema: SCHEMA_VERSION,
        gateway: gateway.into(),
        site: SITE.into(),
        state,
        ts,
        version: "0.1.0".into(),
        epoch: Some(EPOCH),
        profiles: vec![],
        buffer: Some(BufferState {
            committed_seq: 5000,
            published_seq: 4990,
            broker_acked_seq: 4990,
            sink_acked_seq: 4960,
            bytes: 1,
            oldest_unsent_ts: None,
        }),
    }
}

/// Known data: a day of KPI windows from `gw1` (online), a declared gap of 10 sequences,
/// and `gw2` gone offline.
async fn fill(s: &AnyStore) {
    let records = day_of_records();
    s.store_gap(
        Gap {
            schema: SCHEMA_VERSION,
            gateway: "gw1".into(),
            site: SITE.into(),
            epoch: EPOCH,
            first_seq: 1,
            count: 10,
            reason: GapReason::BufferFull,
            declared_at: DAY,
        },
        DAY,
    )
    .await
    .unwrap();
    let mut seq = 11;
    for chunk in records.chunks(200) {
        s.store_kpis(
            KpiBatch {
                schema: SCHEMA_VERSION,
                gateway: "gw1".into(),
                site: SITE.into(),
                epoch: EPOCH,
                first_seq: seq,
                count: u32::try_from(chunk.len()).unwrap(),
                records: chunk.to_vec(),
            },
            raw(),
        )
        .await
        .unwrap();
        seq += chunk.len() as u64;
    }
    s.store_status(status("gw1", Presence::Online, END), END)
        .await
        .unwrap();
    s.store_status(status("gw2", Presence::Offline, DAY), DAY)
        .await
        .unwrap();
}

fn token(name: &str, scope: Scope, secret: &str) -> ApiToken {
    let hex = hash_token(secret);
    let mut sha256 = [0u8; 32];
    for (i, b) in sha256.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).unwrap();
    }
    ApiToken {
        name: name.into(),
        scope,
        sha256,
    }
}

fn http_config(tokens: bool) -> HttpConfig {
    HttpConfig {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        tokens: if tokens {
            vec![token("dash", Scope::Read, READ)]
        } else {
            Vec::new()
        },
        ..HttpConfig::default()
    }
}

/// A served sink API (with the dashboard); dropped with the test's runtime.
struct Served {
    addr: std::net::SocketAddr,
}

async fn serve(name: &str, tokens: bool) -> Served {
    let dir = common::scratch(name);
    let store = AnyStore::Sqlite(SqliteStore::open(&dir.join("sink.db")).await.unwrap());
    fill(&store).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = ApiState::new(store, SinkStats::default(), http_config(tokens));
    tokio::spawn(api::serve(listener, state, std::future::pending()));
    Served { addr }
}

impl Served {
    async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        http::get_with(self.addr, path, headers).await
    }

    async fn get(&self, path: &str) -> Answer {
        self.get_with(path, &[]).await
    }
}

/// The value of attribute `name` in the tag text `tag`, unescaped.
fn attribute(tag: &str, name: &str) -> Option<String> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let end = start + tag[start..].find('"')?;
    Some(html_unescape(&tag[start..end]))
}

fn html_unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#x27;", "'")
        .replace("&amp;", "&")
}

/// The opening tags in `html` that carry attribute `name`.
fn tags_with<'a>(html: &'a str, name: &str) -> Vec<&'a str> {
    let needle = format!(" {name}=\"");
    html.match_indices(&needle)
        .filter_map(|(i, _)| {
            let open = html[..i].rfind('<')?;
            let close = i + html[i..].find('>')?;
            Some(&html[open..=close])
        })
        .collect()
}

/// The scorecard rows of a page: KPI id → (value, coverage, quality, tier A, tier Z).
type Row = (Option<f64>, f64, String, String, String);

fn scorecard_rows(html: &str) -> BTreeMap<String, Row> {
    tags_with(html, "data-kpi")
        .into_iter()
        .map(|t| {
            let value = attribute(t, "data-value").unwrap();
            (
                attribute(t, "data-kpi").unwrap(),
                (
                    (!value.is_empty()).then(|| value.parse().unwrap()),
                    attribute(t, "data-coverage").unwrap().parse().unwrap(),
                    attribute(t, "data-quality").unwrap(),
                    attribute(t, "data-tier-a").unwrap(),
                    attribute(t, "data-tier-z").unwrap(),
                ),
            )
        })
        .collect()
}

fn api_rows(j: &Json) -> BTreeMap<String, Row> {
    let card = &j["scorecards"][0];
    let tier = |k: &Json, name: &str| {
        k["tiers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["tier"] == name)
            .map(|t| t["status"].as_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    card["kpis"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["kpi"].as_str().unwrap().to_owned(),
                (
                    k["value"].as_f64(),
                    k["coverage"].as_f64().unwrap(),
                    k["quality"].as_str().unwrap().to_owned(),
                    tier(k, "A"),
                    tier(k, "Z"),
                ),
            )
        })
        .collect()
}

/// The element with `id` (from its opening tag to the matching `</figure>`/`</section>`).
fn element<'a>(html: &'a str, id: &str, close: &str) -> &'a str {
    let start = html
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no element {id}"));
    let end = start + html[start..].find(close).unwrap();
    &html[start..end]
}

fn page_path() -> String {
    format!("/?range=day&end={END}")
}

#[tokio::test]
async fn the_scorecard_shows_what_the_kpi_api_returns() {
    let s = serve("scorecard", false).await;
    let page = s.get(&page_path()).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.header("content-type")
            .is_some_and(|c| c.starts_with("text/html"))
    );
    let section = tags_with(&page.body, "data-from")[0];
    let (from, to) = (
        attribute(section, "data-from").unwrap(),
        attribute(section, "data-to").unwrap(),
    );
    assert_eq!(
        (from.as_str(), to.as_str()),
        (DAY.to_string().as_str(), END.to_string().as_str())
    );
    let shown = scorecard_rows(&page.body);
    let j: Json = serde_json::from_str(
        &s.get(&format!("/api/v1/sites/{SITE}/kpis?from={from}&to={to}"))
            .await
            .body,
    )
    .unwrap();
    let api = api_rows(&j);
    assert!(api.len() >= 15, "{j}");
    assert_eq!(shown, api, "the page and the API disagree");
    // Hour 12 is missing: 23 of 24 windows, so the range is estimated, shown as such.
    let total = &shown["zero_waste.total_recovery_rate"];
    assert!((total.1 - 23.0 / 24.0).abs() < 1e-12);
    assert_eq!(total.2, "estimated");
    // People see the value as a percentage with the tier verdicts.
    let v = total.0.unwrap() * 100.0;
    assert!(
        page.body.contains(&format!("{v:.1} %")),
        "no {v:.1} % on the page"
    );
    assert!(page.body.contains("✓ achieved"));
    // The range links, and a bad range is refused.
    for r in ["day", "week", "month"] {
        assert!(
            page.body
                .contains(&format!("href=\"?range={r}&amp;end={END}\""))
        );
        let other = s.get(&format!("/?range={r}&end={END}")).await;
        assert_eq!(other.status, 200, "{r}: {}", other.body);
        assert!(other.body.contains("id=\"scorecard\""));
    }
    assert_eq!(s.get("/?range=year").await.status, 400);
    assert_eq!(s.get("/?colour=red").await.status, 400);
    assert_eq!(
        s.get(&format!("/sites/{SITE}?range=day&end={END}"))
            .await
            .status,
        200
    );
    assert_eq!(s.get("/sites/nowhere").await.status, 404);
    // The style sheet is served by the sink.
    let css = s.get("/assets/dashboard.css").await;
    assert_eq!(css.status, 200);
    assert!(
        css.header("content-type")
            .is_some_and(|c| c.starts_with("text/css"))
    );
}

#[tokio::test]
async fn trends_and_energy_flows_are_svg_charts_with_lines() {
    let s = serve("charts", false).await;
    let page = s.get(&page_path()).await;
    assert_eq!(page.status, 200);
    for id in ["trend-kpis", "energy-flows"] {
        let figure = element(&page.body, id, "</figure>");
        let svg_start = figure
            .find("<svg")
            .unwrap_or_else(|| panic!("{id}: no <svg"));
        let svg = &figure[svg_start..];
        assert!(
            svg.trim_end().ends_with("</svg>"),
            "{id}: the SVG is not closed"
        );
        assert_eq!(svg.matches("<svg").count(), svg.matches("</svg>").count());
        assert!(svg.contains("xmlns=\"http://www.w3.org/2000/svg\""));
        // Five lines, each split in two runs by the missing hour 12.
        let polylines = svg.matches("<polyline").count();
        assert!(polylines >= 10, "{id}: {polylines} polylines");
        assert!(!svg.contains("<script"));
    }
    let energy = element(&page.body, "energy", "</section>");
    for name in ["PV generation", "Grid import", "Grid export", "EV charging"] {
        assert!(energy.contains(name), "no {name}");
    }
    // EV: 10 day hours at 40 kWh, 13 other hours at 5 kWh (hour 12 missing: 9 × 40).
    assert!(
        energy.contains(&format!("{:.0} kWh", 9.0 * 40.0 + 14.0 * 5.0)),
        "{energy}"
    );
}

#[tokio::test]
async fn gateway_health_tells_online_from_offline() {
    let s = serve("health", false).await;
    let page = s.get(&page_path()).await;
    let rows: BTreeMap<String, (String, String, String)> = tags_with(&page.body, "data-gateway")
        .into_iter()
        .map(|t| {
            (
                attribute(t, "data-gateway").unwrap(),
                (
                    attribute(t, "data-status").unwrap(),
                    attribute(t, "data-backlog").unwrap(),
                    attribute(t, "data-gap-seqs").unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows["gw1"].0, "online");
    assert_eq!(rows["gw2"].0, "offline");
    assert_eq!(rows["gw1"].2, "10", "the declared gap");
    let j: Json =
        serde_json::from_str(&s.get(&format!("/api/v1/sites/{SITE}/gateways")).await.body).unwrap();
    assert_eq!(rows["gw1"].1, j["gateways"][0]["backlog"].to_string());
    let health = element(&page.body, "gateways", "</section>");
    assert!(health.contains("● online") && health.contains("○ offline"));
}

#[tokio::test]
async fn with_tokens_the_pages_need_a_login_and_the_cookie_works_there_only() {
    let s = serve("auth", true).await;
    // No cookie: to the login form.
    let r = s.get(&page_path()).await;
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/login"));
    assert!(!r.body.contains("data-kpi"));
    let form = s.get("/login").await;
    assert_eq!(form.status, 200);
    assert!(
        form.body
            .contains("<form method=\"get\" action=\"/login\">")
    );
    // A wrong token is refused, and sets nothing.
    let wrong = s.get("/login?token=not-the-token").await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("set-cookie").is_none());
    assert!(wrong.body.contains("not valid"));
    let bogus_cookie = s
        .get_with(&page_path(), &[("Cookie", "fivezero_token=6e6f7065")])
        .await;
    assert_eq!(bogus_cookie.status, 303);
    // The right one sets an HttpOnly, SameSite=Strict cookie and goes to the page.
    let ok = s.get(&format!("/login?token={READ}")).await;
    assert_eq!(ok.status, 303);
    assert_eq!(ok.header("location"), Some("/"));
    let cookie = ok.header("set-cookie").unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(!cookie.contains(READ), "the token is not stored in clear");
    let pair = cookie.split(';').next().unwrap().to_owned();
    let page = s.get_with(&page_path(), &[("Cookie", &pair)]).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(!scorecard_rows(&page.body).is_empty());
    assert!(page.body.contains("href=\"/logout\""));
    // The cookie is for the dashboard only: the API still wants a bearer token.
    let api = s
        .get_with(
            &format!("/api/v1/sites/{SITE}/kpis?from={DAY}&to={END}"),
            &[("Cookie", &pair)],
        )
        .await;
    assert_eq!(api.status, 401);
    let bearer = format!("Bearer {READ}");
    let api = s
        .get_with(
            &format!("/api/v1/sites/{SITE}/kpis?from={DAY}&to={END}"),
            &[("Authorization", &bearer)],
        )
        .await;
    assert_eq!(api.status, 200);
    // Signing out clears the cookie.
    let out = s.get("/logout").await;
    assert_eq!(out.status, 303);
    assert!(
        out.header("set-cookie")
            .is_some_and(|c| c.contains("Max-Age=0"))
    );
}

/// The first of `chromium`, `chromium-browser` on PATH.
fn chromium() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|d| [d.join("chromium"), d.join("chromium-browser")])
        .find(|p| p.is_file())
}

/// Runs Chromium headless with `args` + `url` and waits (with a deadline) for it to exit;
/// its stdout.
async fn run_chromium(bin: &Path, profile: &Path, args: &[String], url: &str) -> String {
    let out_file = profile.with_extension("stdout");
    let mut child = std::process::Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdout(std::fs::File::create(&out_file).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "chromium exited with {status}");
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 90 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    std::fs::read_to_string(&out_file).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_chromium_renders_the_scorecard_the_api_returns() {
    let Some(bin) = chromium() else {
        println!("skipped: chromium not installed");
        return;
    };
    let s = serve("chromium", false).await;
    let dir = common::scratch("chromium-run");
    let url = format!("http://{}{}", s.addr, page_path());
    let dom = run_chromium(
        &bin,
        &dir.join("profile-dom"),
        &["--dump-dom".to_owned()],
        &url,
    )
    .await;
    assert!(dom.contains("id=\"scorecard\""), "the DOM has no scorecard");
    let shown = scorecard_rows(&dom);
    let j: Json = serde_json::from_str(
        &s.get(&format!("/api/v1/sites/{SITE}/kpis?from={DAY}&to={END}"))
            .await
            .body,
    )
    .unwrap();
    assert_eq!(
        shown,
        api_rows(&j),
        "the rendered page and the API disagree"
    );
    assert!(dom.contains("<svg"), "the charts are in the DOM");

    let png = dir.join("dashboard.png");
    run_chromium(
        &bin,
        &dir.join("profile-shot"),
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1280,1600".to_owned(),
        ],
        &url,
    )
    .await;
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(
        bytes.len() > 20_000,
        "a {} byte screenshot is blank",
        bytes.len()
    );
    println!("screenshot: {}", png.display());
    if let Some(copy) = std::env::var_os("FIVEZERO_DASHBOARD_SCREENSHOT") {
        std::fs::copy(&png, copy).unwrap();
    }
}
