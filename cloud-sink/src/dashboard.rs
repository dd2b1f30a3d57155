//! The plant manager's dashboard: server-rendered HTML with SVG charts, served by the sink.
//!
//! | route | auth | what |
//! |---|---|---|
//! | `GET /` | read token (cookie) | the first site's page, with links to the others |
//! | `GET /sites/{site}` | read token (cookie) | one site's page |
//! | `GET /login` | none | the token form; `?token=…` checks it, sets the cookie, redirects to `/` |
//! | `GET /logout` | none | clears the cookie |
//! | `GET /assets/dashboard.css` | none | the style sheet (embedded in the binary) |
//!
//! A page takes `?range=day|week|month` (default `day`) and optionally `end=` (RFC 3339 or
//! UTC ms; default: now, rounded up to the hour). It shows:
//! - the five-zero scorecard over `[end - range, end)`: the same computation as
//!   `GET /api/v1/sites/{site}/kpis?from=…&to=…` (hourly windows, [`scorecard::scorecard`]),
//!   so the two always agree; the page links to that API call;
//! - trends: the headline KPIs per bucket (1 h for a day, 6 h for a week, 1 d for a month),
//!   each bucket recomputed from its windows' sums by the same rule;
//! - energy flows per bucket from the gateway's own energy sums (the role-mapped meters
//!   behind `zero_energy.*`): PV generation, consumption, grid import and export, EV charging;
//! - gateway health from the store: online/offline, last seen, backlog, watermark, declared gaps.
//!
//! # Invariants
//! - No JavaScript; every asset comes from the sink; charts are SVG drawn on the server by
//!   `plotters`.
//! - Every value put into HTML goes through [`html_escape`].
//! - When `[http]` has tokens, the pages need one (any scope): a bearer header or the
//!   `fivezero_token` cookie that `/login` sets (`HttpOnly; SameSite=Strict`, the token
//!   hex-encoded). Tokens are checked against their SHA-256 as the API does; the cookie is
//!   accepted on these pages only, never by `/api/v1/…`.
//! - Queries are bounded by `http.max_range` and `http.max_rows` as the API's are.

mod charts;
mod page;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use fivezero_model::topic;
use fivezero_model::wire::{KpiRecord, Period};
use serde::Deserialize;

use crate::api::{params, scorecard};
use crate::config::HttpConfig;
use crate::store::{AnyStore, GatewayInfo, KpiQuery, Store, StoreError, StreamInfo};

/// The cookie that carries the token (hex-encoded).
pub const COOKIE: &str = "fivezero_token";

/// How long the login cookie lasts, seconds.
const COOKIE_MAX_AGE: u32 = 7 * 86_400;

const HOUR_MS: i64 = 3_600_000;

/// The style sheet, embedded.
const CSS: &str = include_str!("../assets/dashboard.css");

struct Inner {
    store: AnyStore,
    config: HttpConfig,
}

/// What the dashboard's handlers share.
#[derive(Clone)]
struct Dashboard(Arc<Inner>);

impl std::fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dashboard")
            .field("tokens", &self.0.config.tokens.len())
            .finish_non_exhaustive()
    }
}

/// The dashboard's routes over `store`, with the auth and limits of `config`; merge it into
/// the API's router (whose limits layer then covers it too).
pub fn router<S>(store: AnyStore, config: HttpConfig) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let dash = Dashboard(Arc::new(Inner { store, config }));
    let pages = Router::new()
        .route("/", get(index))
        .route("/sites/{site}", get(site_page))
        .route_layer(middleware::from_fn_with_state(dash.clone(), require_login));
    Router::new()
        .route("/login", get(login))
        .route("/logout", get(logout))
        .route("/assets/dashboard.css", get(css))
        .merge(pages)
        .with_state(dash)
}

// ------------------------------------------------------------------------------------------
// Auth
// ------------------------------------------------------------------------------------------

/// Whether `token` is one of the configured tokens (any scope). Compares with every hash,
/// without stopping at the first difference.
fn token_valid(config: &HttpConfig, token: &str) -> bool {
    use sha2::Digest;
    let hash: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
    let mut found = false;
    for t in &config.tokens {
        let diff = t
            .sha256
            .iter()
            .zip(hash.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        found |= diff == 0;
    }
    found
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The token in the request's `fivezero_token` cookie.
fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .find_map(|hex| String::from_utf8(hex_decode(hex)?).ok())
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Pages need a valid token in the cookie or a bearer header when tokens are configured;
/// without one a browser is sent to `/login`.
async fn require_login(State(d): State<Dashboard>, request: Request, next: Next) -> Response {
    let config = &d.0.config;
    if config.tokens.is_empty() {
        return next.run(request).await;
    }
    let headers = request.headers();
    let ok = cookie_token(headers).is_some_and(|t| token_valid(config, &t))
        || bearer_token(headers).is_some_and(|t| token_valid(config, t));
    if ok {
        next.run(request).await
    } else {
        see_other("/login", None)
    }
}

fn see_other(location: &'static str, cookie: Option<String>) -> Response {
    let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response();
    if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Parameters of `/login`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginParams {
    token: Option<String>,
}

async fn login(State(d): State<Dashboard>, RawQuery(q): RawQuery) -> Response {
    let config = &d.0.config;
    let p: LoginParams = match params::parse(q.as_deref()) {
        Ok(p) => p,
        Err(_) => {
            return html(
                StatusCode::BAD_REQUEST,
                page::login(Some("The login form takes one parameter: token.")),
            );
        }
    };
    if config.tokens.is_empty() {
        return see_other("/", None);
    }
    match p.token.as_deref().map(str::trim) {
        None | Some("") => html(StatusCode::OK, page::login(None)),
        Some(t) if token_valid(config, t) => {
            tracing::debug!("A dashboard login succeeded.");
            let cookie = format!(
                "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={COOKIE_MAX_AGE}",
                hex_encode(t.as_bytes())
            );
            see_other("/", Some(cookie))
        }
        Some(_) => {
            tracing::debug!("A dashboard login was refused.");
            html(
                StatusCode::UNAUTHORIZED,
                page::login(Some("That token is not valid.")),
            )
        }
    }
}

async fn logout() -> Response {
    see_other(
        "/login",
        Some(format!(
            "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
        )),
    )
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        CSS,
    )
        .into_response()
}

/// An HTML answer with the dashboard's security headers.
fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

fn error_page(status: StatusCode, detail: &str) -> Response {
    html(status, page::error(status, detail))
}

fn store_error(e: &StoreError) -> Response {
    tracing::error!(error = %e, "A dashboard query failed in the database.");
    if e.is_transient() {
        error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "The database is unavailable; reload the page in a moment.",
        )
    } else {
        error_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The query failed; the sink's log has the cause.",
        )
    }
}

// ------------------------------------------------------------------------------------------
// Pages
// ------------------------------------------------------------------------------------------

/// The span a page shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Range {
    Day,
    Week,
    Month,
}

impl Range {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "day" => Self::Day,
            "week" => Self::Week,
            "month" => Self::Month,
            _ => return None,
        })
    }

    const fn as_str(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
        }
    }

    const fn span_ms(self) -> i64 {
        match self {
            Self::Day => 24 * HOUR_MS,
            Self::Week => 7 * 24 * HOUR_MS,
            Self::Month => 30 * 24 * HOUR_MS,
        }
    }

    /// The trend bucket length.
    const fn step_ms(self) -> i64 {
        match self {
            Self::Day => HOUR_MS,
            Self::Week => 6 * HOUR_MS,
            Self::Month => 24 * HOUR_MS,
        }
    }
}

/// Parameters of a page.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PageParams {
    range: Option<String>,
    end: Option<String>,
}

/// One trend bucket: its start and its scorecard, by KPI id.
#[derive(Debug)]
struct Bucket {
    start: i64,
    kpis: BTreeMap<String, scorecard::RangeKpi>,
}

/// Everything one page shows.
#[derive(Debug)]
struct SiteView {
    site: String,
    sites: Vec<String>,
    range: Range,
    /// The `end` parameter as given, kept in the range links.
    end_param: Option<String>,
    from: i64,
    to: i64,
    tz: String,
    scorecard: Vec<scorecard::RangeKpi>,
    buckets: Vec<Bucket>,
    gateways: Vec<GatewayHealth>,
    auth: bool,
    now: i64,
}

/// A gateway's health row.
#[derive(Debug)]
struct GatewayHealth {
    info: GatewayInfo,
    /// Sequences declared lost, over all its epochs at this site.
    declared_gap_seqs: u64,
    /// Streams (epochs) seen.
    epochs: usize,
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

async fn index(State(d): State<Dashboard>, RawQuery(q): RawQuery) -> Response {
    let sites = match d.0.store.sites().await {
        Ok(s) => s,
        Err(e) => return store_error(&e),
    };
    let Some(site) = sites.first().cloned() else {
        return html(StatusCode::OK, page::empty(!d.0.config.tokens.is_empty()));
    };
    site_response(&d, site, sites, q.as_deref()).await
}

async fn site_page(
    State(d): State<Dashboard>,
    site: Result<Path<String>, axum::extract::rejection::PathRejection>,
    RawQuery(q): RawQuery,
) -> Response {
    let Ok(Path(site)) = site else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "The site in the address is not valid.",
        );
    };
    if topic::check_segment(&site).is_err() {
        return error_page(
            StatusCode::BAD_REQUEST,
            "The site in the address is not valid.",
        );
    }
    let sites = match d.0.store.sites().await {
        Ok(s) => s,
        Err(e) => return store_error(&e),
    };
    if !sites.contains(&site) {
        return error_page(StatusCode::NOT_FOUND, "No such site.");
    }
    site_response(&d, site, sites, q.as_deref()).await
}

async fn site_response(
    d: &Dashboard,
    site: String,
    sites: Vec<String>,
    q: Option<&str>,
) -> Response {
    let p: PageParams = match params::parse(q) {
        Ok(p) => p,
        Err(_) => {
            return error_page(
                StatusCode::BAD_REQUEST,
                "The page takes range=day|week|month and end (RFC 3339 or UTC milliseconds).",
            );
        }
    };
    let Some(range) = Range::parse(p.range.as_deref().unwrap_or("day")) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "The range is one of day, week or month.",
        );
    };
    let now = now_ms();
    let to = match p.end.as_deref() {
        Some(e) => match params::time("end", e) {
            Ok(t) => t,
            Err(_) => {
                return error_page(
                    StatusCode::BAD_REQUEST,
                    "The end is RFC 3339 (2026-01-01T00:00:00Z) or UTC milliseconds.",
                );
            }
        },
        None => now.div_euclid(HOUR_MS) * HOUR_MS + HOUR_MS,
    };
    let from = to.saturating_sub(range.span_ms());
    if params::range(from, to, d.0.config.max_range).is_err() {
        return error_page(
            StatusCode::BAD_REQUEST,
            "The range is longer than this sink's http.max_range allows.",
        );
    }
    match gather(d, site, sites, range, from, to).await {
        Ok(Gathered::View(mut v)) => {
            v.end_param = p.end;
            v.now = now;
            html(StatusCode::OK, page::site(&v))
        }
        Ok(Gathered::TooManyRows) => error_page(
            StatusCode::UNPROCESSABLE_ENTITY,
            "The range holds more KPI records than http.max_rows allows; choose a shorter one.",
        ),
        Err(e) => store_error(&e),
    }
}

enum Gathered {
    View(Box<SiteView>),
    TooManyRows,
}

/// Windows of `window_ms` that `[start, end)` should hold (as the API counts them).
fn expected_windows(start: i64, end: i64, window_ms: i64) -> u32 {
    u32::try_from((end - start + window_ms / 2) / window_ms).unwrap_or(u32::MAX)
}

async fn gather(
    d: &Dashboard,
    site: String,
    sites: Vec<String>,
    range: Range,
    from: i64,
    to: i64,
) -> Result<Gathered, StoreError> {
    let store = &d.0.store;
    let max_rows = d.0.config.max_rows;
    let stored = store
        .kpis_in_range(KpiQuery {
            site: site.clone(),
            period: Period::Hour,
            from,
            to,
            limit: max_rows.saturating_add(1),
        })
        .await?;
    if stored.len() > max_rows as usize {
        return Ok(Gathered::TooManyRows);
    }
    let records: Vec<KpiRecord> = stored.into_iter().map(|k| k.record).collect();
    let tz = records
        .first()
        .map_or_else(|| "UTC".to_owned(), |r| r.window.tz.clone());
    // The whole range: exactly what /api/v1/sites/{site}/kpis?from&to computes.
    let card = scorecard::scorecard(&records, expected_windows(from, to, HOUR_MS));
    // Trend buckets, each recomputed from its own windows by the same rule.
    let step = range.step_ms();
    let mut by_bucket: BTreeMap<i64, Vec<KpiRecord>> = BTreeMap::new();
    for r in records {
        let start = from + (r.window.start - from).div_euclid(step) * step;
        by_bucket.entry(start).or_default().push(r);
    }
    let per_bucket = expected_windows(0, step, HOUR_MS);
    let buckets = by_bucket
        .into_iter()
        .map(|(start, rs)| Bucket {
            start,
            kpis: scorecard::scorecard(&rs, per_bucket)
                .into_iter()
                .map(|k| (k.kpi.clone(), k))
                .collect(),
        })
        .collect();
    let streams: Vec<StreamInfo> = store
        .streams()
        .await?
        .into_iter()
        .filter(|s| s.site == site)
        .collect();
    let gateways = store
        .gateways()
        .await?
        .into_iter()
        .filter(|g| g.site == site)
        .map(|info| {
            let mine = streams.iter().filter(|s| s.gateway == info.gateway);
            GatewayHealth {
                declared_gap_seqs: mine.clone().map(|s| s.gap_seqs).sum(),
                epochs: mine.count(),
                info,
            }
        })
        .collect();
    Ok(Gathered::View(Box::new(SiteView {
        site,
        sites,
        range,
        end_param: None,
        from,
        to,
        tz,
        scorecard: card,
        buckets,
        gateways,
        auth: !d.0.config.tokens.is_empty(),
        now: 0,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_tokens_round_trip_through_hex() {
        let mut headers = HeaderMap::new();
        let token = "s3cr=t; with \"odd\" bytes ✓";
        let value = format!("other=1; {COOKIE}={}; x=y", hex_encode(token.as_bytes()));
        headers.insert(header::COOKIE, HeaderValue::from_str(&value).unwrap());
        assert_eq!(cookie_token(&headers).as_deref(), Some(token));
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("fivezero_token=zz"),
        );
        assert_eq!(cookie_token(&headers), None);
    }

    #[test]
    fn ranges_parse_and_bucket_as_documented() {
        assert_eq!(Range::parse("week"), Some(Range::Week));
        assert_eq!(Range::parse("year"), None);
        assert_eq!(Range::Day.span_ms() / Range::Day.step_ms(), 24);
        assert_eq!(Range::Week.span_ms() / Range::Week.step_ms(), 28);
        assert_eq!(Range::Month.span_ms() / Range::Month.step_ms(), 30);
    }
}
