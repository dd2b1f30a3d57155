//! The HTTP query API (axum): read-only views of what the sink stored.
//!
//! | route | auth | what |
//! |---|---|---|
//! | `GET /healthz` | none | the process answers |
//! | `GET /readyz` | none | the database answers and ingest is connected to the broker |
//! | `GET /metrics` | none | the [`SinkStats`] counters, Prometheus text |
//! | `GET /api/v1/openapi.json` | none | this API's OpenAPI document, generated from the code |
//! | `GET /api/v1/sites…` | `read` | sites, gateways, devices, metrics, series, KPIs, coverage |
//! | `GET /api/v1/admin/…` | `admin` | dead letters and quarantined messages |
//!
//! # Invariants
//! - Every error is JSON `{error, detail}` with a 4xx for what the client can fix; database
//!   errors are logged and answered 503/500 without internals.
//! - Query strings are parsed strictly: an unknown or repeated parameter is a 400.
//! - Every query is bounded: `to - from` ≤ `http.max_range`, rows read ≤ `http.max_rows`
//!   (more is a 422), headers ≤ `http.max_header_size` (431), body ≤ `http.max_body_size`
//!   (413), at most `http.max_concurrency` requests at once (503, never queued), each within
//!   `http.request_timeout` (503).
//! - SQL is parameterised only (the [`Store`] methods).
//! - KPI ranges are recomputed from stored sums ([`scorecard`]), never by averaging ratios.
//! - The OpenAPI document says what is served: every operation lists the 400, 413, 431 and
//!   503 the parsing and limits above can give (and 500 where the database is read), and the
//!   patterns of `from`, `to`, `step` and `site` are the ones [`params`] enforces.
//!   `tests/schemathesis.rs` fuzzes the API against the document.

pub mod params;
pub mod scorecard;
pub mod series;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use fivezero_model::metric::{self, Kind};
use fivezero_model::topic;
use fivezero_model::wire::Period;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::config::{HttpConfig, Scope};
use crate::stats::SinkStats;
use crate::store::{AnyStore, KpiQuery, SeriesQuery, Store, StoreError, StoredKpi};

// ------------------------------------------------------------------------------------------
// Errors
// ------------------------------------------------------------------------------------------

/// An error answer: status, a stable code and a detail for humans. Never carries internals.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    detail: String,
}

/// The JSON body of every error.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Stable code: `bad_query`, `range_too_long`, `too_many_rows`, `unauthorized`,
    /// `forbidden`, `not_found`, `method_not_allowed`, `headers_too_large`, `body_too_large`,
    /// `busy`, `timeout`, `unavailable`, `internal`.
    pub error: String,
    /// What went wrong, for humans.
    pub detail: String,
}

impl ApiError {
    /// An error with a status, code and detail.
    #[must_use]
    pub fn new(status: StatusCode, code: &'static str, detail: String) -> Self {
        Self {
            status,
            code,
            detail,
        }
    }

    /// 400 `bad_query`.
    #[must_use]
    pub fn bad_query(detail: String) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_query", detail)
    }

    fn not_found(detail: String) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    fn too_many_rows(limit: u32) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "too_many_rows",
            format!("the query reads more than {limit} rows; narrow the range or widen the step"),
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "A query failed in the database.");
        if e.is_transient() {
            Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the database is unavailable; retry later".to_owned(),
            )
        } else {
            Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the query failed; the sink's log has the cause".to_owned(),
            )
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            axum::Json(ErrorBody {
                error: self.code.to_owned(),
                detail: self.detail,
            }),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

type ApiResult<T> = Result<T, ApiError>;

// ------------------------------------------------------------------------------------------
// State, router, server
// ------------------------------------------------------------------------------------------

struct Inner {
    store: AnyStore,
    stats: SinkStats,
    config: HttpConfig,
    permits: Arc<Semaphore>,
}

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState(Arc<Inner>);

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("config", &self.0.config.listen)
            .finish_non_exhaustive()
    }
}

impl ApiState {
    /// State over a store, the counters and the `[http]` settings.
    #[must_use]
    pub fn new(store: AnyStore, stats: SinkStats, config: HttpConfig) -> Self {
        let permits = Arc::new(Semaphore::new(config.max_concurrency));
        Self(Arc::new(Inner {
            store,
            stats,
            config,
            permits,
        }))
    }
}

/// The API's routes (paths as in the OpenAPI document).
pub const ROUTES: &[&str] = &[
    "/healthz",
    "/readyz",
    "/metrics",
    "/api/v1/openapi.json",
    "/api/v1/sites",
    "/api/v1/sites/{site}/gateways",
    "/api/v1/sites/{site}/devices",
    "/api/v1/sites/{site}/metrics",
    "/api/v1/sites/{site}/series",
    "/api/v1/sites/{site}/kpis",
    "/api/v1/sites/{site}/kpis/latest",
    "/api/v1/sites/{site}/coverage",
    "/api/v1/admin/dead_letters",
    "/api/v1/admin/quarantine",
];

/// The router with every route, limit and auth layer.
pub fn router(state: ApiState) -> Router {
    let read = Router::new()
        .route("/api/v1/sites", get(sites))
        .route("/api/v1/sites/{site}/gateways", get(gateways))
        .route("/api/v1/sites/{site}/devices", get(devices))
        .route("/api/v1/sites/{site}/metrics", get(metrics))
        .route("/api/v1/sites/{site}/series", get(series_handler))
        .route("/api/v1/sites/{site}/kpis", get(kpis))
        .route("/api/v1/sites/{site}/kpis/latest", get(kpis_latest))
        .route("/api/v1/sites/{site}/coverage", get(coverage))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_read));
    let admin = Router::new()
        .route("/api/v1/admin/dead_letters", get(dead_letters))
        .route("/api/v1/admin/quarantine", get(quarantine))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    let open = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(prometheus))
        .route("/api/v1/openapi.json", get(openapi_json));
    open.merge(read)
        .merge(admin)
        .merge(crate::dashboard::router(
            state.0.store.clone(),
            state.0.config.clone(),
        ))
        .fallback(|| async { ApiError::not_found("no such route".to_owned()) })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "the API is read-only: GET only".to_owned(),
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), limits))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` resolves.
///
/// # Errors
/// The server fails.
pub async fn serve<F>(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: F,
) -> std::io::Result<()>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

// ------------------------------------------------------------------------------------------
// Middleware
// ------------------------------------------------------------------------------------------

/// Header and body sizes, concurrency and the request timeout.
async fn limits(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let cfg = &state.0.config;
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + request.uri().to_string().len();
    if header_bytes > cfg.max_header_size {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "request line and headers exceed {} bytes",
                cfg.max_header_size
            ),
        )
        .into_response();
    }
    let length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let chunked = request.headers().contains_key(header::TRANSFER_ENCODING);
    if chunked || length.is_some_and(|l| l > cfg.max_body_size) {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!(
                "request bodies are limited to {} bytes (and the API takes none)",
                cfg.max_body_size
            ),
        )
        .into_response();
    }
    let Ok(_permit) = Arc::clone(&state.0.permits).try_acquire_owned() else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "too many requests at once; retry later".to_owned(),
        )
        .into_response();
    };
    match tokio::time::timeout(cfg.request_timeout, next.run(request)).await {
        Ok(r) => r,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!(
                "the request took longer than {}",
                humantime::format_duration(cfg.request_timeout)
            ),
        )
        .into_response(),
    }
}

/// The scope of the request's bearer token; `Ok(None)` when no tokens are configured (open
/// API, loopback only).
fn scope_of(state: &ApiState, headers: &HeaderMap) -> ApiResult<Option<Scope>> {
    use sha2::Digest;
    let tokens = &state.0.config.tokens;
    if tokens.is_empty() {
        return Ok(None);
    }
    let unauthorized = |d: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", d.into());
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("an Authorization: Bearer token is required"))?;
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| unauthorized("the Authorization header must be Bearer <token>"))?;
    let hash: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
    // Compare with every token, without stopping at the first difference.
    let mut found = None;
    for t in tokens {
        let same = t
            .sha256
            .iter()
            .zip(hash.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
        if same {
            found = Some(t.scope);
        }
    }
    found
        .map(Some)
        .ok_or_else(|| unauthorized("the token is not valid"))
}

async fn require_read(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    match scope_of(&state, request.headers()) {
        Ok(_) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

async fn require_admin(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    match scope_of(&state, request.headers()) {
        Ok(None | Some(Scope::Admin)) => next.run(request).await,
        Ok(Some(Scope::Read)) => ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this route needs an admin token".to_owned(),
        )
        .into_response(),
        Err(e) => e.into_response(),
    }
}

// ------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------

/// No parameters at all.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParams {}

fn no_params(raw: Option<&str>) -> ApiResult<()> {
    params::parse::<NoParams>(raw).map(|_| ())
}

async fn known_site(
    state: &ApiState,
    site: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> ApiResult<String> {
    let Path(site) = site.map_err(|e| ApiError::bad_query(e.body_text()))?;
    topic::check_segment(&site).map_err(|e| ApiError::bad_query(format!("site {site:?} {e}")))?;
    if state.0.store.sites().await?.contains(&site) {
        Ok(site)
    } else {
        Err(ApiError::not_found(format!("no site {site:?}")))
    }
}

fn wants_csv(headers: &HeaderMap, format: Option<&str>) -> ApiResult<bool> {
    match format {
        Some("csv") => return Ok(true),
        Some("json") => return Ok(false),
        Some(other) => {
            return Err(ApiError::bad_query(format!(
                "format {other:?} is neither json nor csv"
            )));
        }
        None => {}
    }
    Ok(headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|m| m.trim().starts_with("text/csv"))))
}

fn csv_field(out: &mut String, text: &str) {
    if text.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&text.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(text);
    }
}

fn csv_response(header_row: &[&str], rows: Vec<Vec<String>>, name: &str) -> Response {
    let mut out = header_row.join(",");
    out.push('\n');
    for row in rows {
        for (i, f) in row.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            csv_field(&mut out, f);
        }
        out.push('\n');
    }
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}.csv\""),
            ),
        ],
        out,
    )
        .into_response()
}

fn opt(v: Option<f64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn enum_text<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

// ------------------------------------------------------------------------------------------
// Open routes
// ------------------------------------------------------------------------------------------

/// Liveness.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "The process answers", body = String)))]
async fn healthz(RawQuery(q): RawQuery) -> ApiResult<&'static str> {
    no_params(q.as_deref())?;
    Ok("ok\n")
}

/// Readiness: the database answers and ingest is connected.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Readiness {
    /// The database answered.
    pub database: bool,
    /// Ingest is connected to the broker.
    pub ingest: bool,
}

/// Readiness.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready: the database did not answer within 2 s or ingest \
            is not connected", body = Readiness)))]
async fn readyz(State(state): State<ApiState>, RawQuery(q): RawQuery) -> ApiResult<Response> {
    no_params(q.as_deref())?;
    let database = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        state.0.store.schema_version(),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    let r = Readiness {
        database,
        ingest: state.0.stats.is_connected(),
    };
    let status = if r.database && r.ingest {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((status, axum::Json(r)).into_response())
}

/// The counters in the Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "OpenMetrics text", body = String,
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8")))]
async fn prometheus(State(state): State<ApiState>, RawQuery(q): RawQuery) -> ApiResult<Response> {
    no_params(q.as_deref())?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.0.stats.render_prometheus(),
    )
        .into_response())
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "health",
    responses((status = 200, description = "The OpenAPI document", body = Object)))]
async fn openapi_json(RawQuery(q): RawQuery) -> ApiResult<Response> {
    no_params(q.as_deref())?;
    Ok(([(header::CONTENT_TYPE, "application/json")], openapi_text()).into_response())
}

/// The OpenAPI document as pretty JSON (what `/api/v1/openapi.json` serves and
/// `cloud-sink/openapi.json` holds).
#[must_use]
pub fn openapi_text() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|_| "{}".to_owned())
}

// ------------------------------------------------------------------------------------------
// Sites, gateways, devices, metrics
// ------------------------------------------------------------------------------------------

/// The sites.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Sites {
    /// Site ids, sorted.
    pub sites: Vec<String>,
}

/// Every site with data or a gateway.
#[utoipa::path(get, path = "/api/v1/sites", tag = "sites", security(("bearer" = [])),
    responses((status = 200, body = Sites), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn sites(
    State(state): State<ApiState>,
    RawQuery(q): RawQuery,
) -> ApiResult<axum::Json<Sites>> {
    no_params(q.as_deref())?;
    Ok(axum::Json(Sites {
        sites: state.0.store.sites().await?,
    }))
}

/// A gateway's status.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GatewayView {
    /// Gateway id.
    pub gateway: String,
    /// `online` (birth) or `offline` (last will or clean stop).
    pub status: String,
    /// When the sink received its last status, RFC 3339.
    pub last_seen: String,
    /// Software version.
    pub version: String,
    /// Current buffer epoch.
    pub epoch: Option<String>,
    /// Sequences buffered at the gateway not yet confirmed, as it last said.
    pub backlog: Option<u64>,
    /// The sink's watermark for the current epoch.
    pub watermark: Option<u64>,
}

/// The gateways of a site.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Gateways {
    /// Site id.
    pub site: String,
    /// Gateways, sorted.
    pub gateways: Vec<GatewayView>,
}

/// The gateways of a site, from their birth and will messages.
#[utoipa::path(get, path = "/api/v1/sites/{site}/gateways", tag = "sites", security(("bearer" = [])),
    params(SitePath),
    responses((status = 200, body = Gateways), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn gateways(
    State(state): State<ApiState>,
    site: Result<Path<String>, axum::extract::rejection::PathRejection>,
    RawQuery(q): RawQuery,
) -> ApiResult<axum::Json<Gateways>> {
    no_params(q.as_deref())?;
    let site = known_site(&state, site).await?;
    let gateways = state
        .0
        .store
        .gateways()
        .await?
        .into_iter()
        .filter(|g| g.site == site)
        .map(|g| GatewayView {
            gateway: g.gateway,
            status: g.state,
            last_seen: rfc3339(g.last_seen),
            version: g.version,
            epoch: g.epoch,
            backlog: g.backlog,
            watermark: g.watermark,
        })
        .collect();
    Ok(axum::Json(Gateways { site, gateways }))
}

/// A device of a site.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeviceView {
    /// Device name.
    pub device: String,
    /// Metrics it reports.
    pub metrics: Vec<String>,
    /// Readings stored.
    pub readings: u64,
    /// First reading, RFC 3339.
    pub first: String,
    /// Last reading, RFC 3339.
    pub last: String,
}

/// The devices of a site.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Devices {
    /// Site id.
    pub site: String,
    /// Devices, sorted.
    pub devices: Vec<DeviceView>,
}

/// The devices of a site, from the readings stored.
#[utoipa::path(get, path = "/api/v1/sites/{site}/devices", tag = "sites", security(("bearer" = [])),
    params(SitePath),
    responses((status = 200, body = Devices), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn devices(
    State(state): State<ApiState>,
    site: Result<Path<String>, axum::extract::rejection::PathRejection>,
    RawQuery(q): RawQuery,
) -> ApiResult<axum::Json<Devices>> {
    no_params(q.as_deref())?;
    let site = known_site(&state, site).await?;
    let mut map: BTreeMap<String, (Vec<String>, u64, i64, i64)> = BTreeMap::new();
    for s in state.0.store.site_series(site.clone()).await? {
        let e = map
            .entry(s.device)
            .or_insert((Vec::new(), 0, i64::MAX, i64::MIN));
        e.0.push(s.metric);
        e.1 += s.readings;
        e.2 = e.2.min(s.first_ts);
        e.3 = e.3.max(s.last_ts);
    }
    let devices = map
        .into_iter()
        .map(|(device, (metrics, readings, first, last))| DeviceView {
            device,
            metrics,
            readings,
            first: rfc3339(first),
            last: rfc3339(last),
        })
        .collect();
    Ok(axum::Json(Devices { site, devices }))
}

/// A metric of a site.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MetricView {
    /// Metric id.
    pub metric: String,
    /// Canonical unit (catalogue); empty when unknown.
    pub unit: String,
    /// `gauge`, `counter`, `state`, `info`; `unknown` when not in the catalogue.
    pub kind: String,
    /// Catalogue description.
    pub description: String,
    /// Devices reporting it.
    pub devices: Vec<String>,
    /// Readings stored.
    pub readings: u64,
}

/// The metrics of a site.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Metrics {
    /// Site id.
    pub site: String,
    /// Metrics, sorted.
    pub metrics: Vec<MetricView>,
}

/// The metrics of a site, with the catalogue's unit and kind.
#[utoipa::path(get, path = "/api/v1/sites/{site}/metrics", tag = "sites", security(("bearer" = [])),
    params(SitePath),
    responses((status = 200, body = Metrics), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn metrics(
    State(state): State<ApiState>,
    site: Result<Path<String>, axum::extract::rejection::PathRejection>,
    RawQuery(q): RawQuery,
) -> ApiResult<axum::Json<Metrics>> {
    no_params(q.as_deref())?;
    let site = known_site(&state, site).await?;
    let mut map: BTreeMap<String, (Vec<String>, u64)> = BTreeMap::new();
    for s in state.0.store.site_series(site.clone()).await? {
        let e = map.entry(s.metric).or_default();
        e.0.push(s.device);
        e.1 += s.readings;
    }
    let metrics = map
        .into_iter()
        .map(|(id, (devices, readings))| {
            let m = metric::lookup(&id);
            MetricView {
                unit: m.map(|m| m.unit.to_owned()).unwrap_or_default(),
                kind: m.map_or("unknown", |m| m.kind.as_str()).to_owned(),
                description: m.map(|m| m.description.to_owned()).unwrap_or_default(),
                metric: id,
                devices,
                readings,
            }
        })
        .collect();
    Ok(axum::Json(Metrics { site, metrics }))
}

// ------------------------------------------------------------------------------------------
// Series
// ------------------------------------------------------------------------------------------

/// Parameters of `/series`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SeriesParams {
    /// Device name.
    #[param(example = "grid-meter")]
    pub device: String,
    /// Metric id.
    #[param(example = "electricity.import_energy")]
    pub metric: String,
    /// Start, RFC 3339 or UTC ms, inclusive.
    #[param(
        pattern = "^([0-9]{1,15}|[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2}))$",
        example = "2026-06-01T00:00:00Z"
    )]
    pub from: String,
    /// End, RFC 3339 or UTC ms, exclusive.
    #[param(
        pattern = "^([0-9]{1,15}|[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2}))$",
        example = "2026-06-02T00:00:00Z"
    )]
    pub to: String,
    /// Bucket length, a whole number of `s`, `m`, `h` or `d` (`1m`, `15m`, `1h`); default:
    /// the shortest of 1m, 5m, 15m, 1h, 1d giving at most 1440 buckets.
    #[param(pattern = "^[1-9][0-9]{0,5}[smhd]$", example = "1h")]
    pub step: Option<String>,
    /// Default `delta` for counters, `last` for states, `avg` otherwise. `delta` is for
    /// counters only.
    #[param(value_type = Option<series::Agg>)]
    pub agg: Option<String>,
    /// `json` (default) or `csv`; `Accept: text/csv` also gives CSV.
    #[param(value_type = Option<FormatName>)]
    pub format: Option<String>,
}

/// The answer's format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FormatName {
    /// `application/json`.
    Json,
    /// `text/csv`.
    Csv,
}

/// A KPI scorecard period.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
pub enum PeriodName {
    /// One scorecard per stored 15-minute window.
    #[serde(rename = "15m")]
    FifteenMinutes,
    /// One scorecard per stored hourly window.
    #[serde(rename = "1h")]
    Hour,
    /// One scorecard per stored daily window.
    #[serde(rename = "1d")]
    Day,
    /// One scorecard per local calendar month, from the daily windows.
    #[serde(rename = "1mo")]
    Month,
}

/// The site of a `/api/v1/sites/{site}/…` route.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SitePath {
    /// Site id, as the gateways publish it: no `/`, `+`, `#` or control characters.
    #[param(
        pattern = "^[^/+#\\u0000-\\u001f\\u007f-\\u009f]+$",
        example = "qingdao-greensail"
    )]
    pub site: String,
}

/// One bucket.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SeriesPoint {
    /// Bucket start, RFC 3339.
    pub time: String,
    /// Bucket start, UTC ms.
    pub ts: i64,
    /// The aggregate.
    pub value: f64,
    /// Readings in the bucket.
    pub count: u64,
}

/// A bucketed series.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Series {
    /// Site id.
    pub site: String,
    /// Device.
    pub device: String,
    /// Metric id.
    pub metric: String,
    /// Unit (catalogue).
    pub unit: String,
    /// Metric kind.
    pub kind: String,
    /// Aggregation used.
    pub agg: String,
    /// Bucket length, ms.
    pub step_ms: i64,
    /// Range start, UTC ms.
    pub from: i64,
    /// Range end, UTC ms.
    pub to: i64,
    /// Non-empty buckets, in time order.
    pub points: Vec<SeriesPoint>,
}

/// Time buckets of one device's metric; counters by delta.
#[utoipa::path(get, path = "/api/v1/sites/{site}/series", tag = "data", security(("bearer" = [])),
    params(SitePath, SeriesParams),
    responses((status = 200, description = "The buckets: JSON, or CSV (time,ts,value,count) with \
            `format=csv` or `Accept: text/csv`",
            content((Series = "application/json"), (String = "text/csv"))),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn series_handler(
    State(state): State<ApiState>,
    site: Result<Path<String>, axum::extract::rejection::PathRejection>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let p: SeriesParams = params::parse(q.as_deref())?;
    let csv = wants_csv(&headers, p.format.as_deref())?;
    let site = known_site(&state, site).await?;
    let cfg = &state.0.config;
    let (from, to) = (params::time("from", &p.from)?, params::time("to", &p.to)?);
    params::range(from, to, cfg.max_range)?;
    let span = to - from;
    let step = match &p.step {
        Some(s) => params::step("step", s)?,
        None => [60_000, 300_000, 900_000, 3_600_000, 86_400_000]
            .into_iter()
            .find(|s| span / s <= 1440)
            .unwrap_or(86_400_000),
    };
    let buckets = span.div_euclid(step) + i64::from(span % step != 0);
    if buckets > i64::from(cfg.max_rows) {
        return Err(ApiError::bad_query(format!(
            "{buckets} buckets exceed the limit of {}; widen the step",
            cfg.max_rows
        )));
    }
    let m = metric::lookup(&p.metric);
    let kind = m.map(|m| m.kind);
    let agg = match &p.agg {
        Some(a) => series::Agg::parse(a).ok_or_else(|| {
            ApiError::bad_query(format!(
                "agg {a:?} is not avg, min, max, sum, last or delta"
            ))
        })?,
        None => match kind {
            Some(Kind::Counter) => series::Agg::Delta,
            Some(Kind::State | Kind::Info) => series::Agg::Last,
            _ => series::Agg::Avg,
        },
    };
    if agg == series::Agg::Delta && kind.is_some_and(|k| k != Kind::Counter) {
        return Err(ApiError::bad_query(format!(
            "agg delta is for counters; {} is a {}",
            p.metric,
            kind.map_or("", Kind::as_str)
        )));
    }
    let points = state
        .0
        .store
        .series_points(SeriesQuery {
            site: site.clone(),
            device: p.device.clone(),
            metric: p.metric.clone(),
            from,
            to,
            limit: cfg.max_rows.saturating_add(1),
        })
        .await?;
    if points.len() > cfg.max_rows as usize {
        return Err(ApiError::too_many_rows(cfg.max_rows));
    }
    let buckets = series::aggregate(&points, from, step, agg);
    if csv {
        let rows = buckets
            .iter()
            .map(|b| {
                vec![
                    rfc3339(b.start),
                    b.start.to_string(),
                    b.value.to_string(),
                    b.count.to_string(),
                ]
            })
            .collect();
        return Ok(csv_response(
            &["time", "ts", "value", "count"],
            rows,
            "series",
        ));
    }
    Ok(axum::Json(Series {
        site,
        unit: m.map(|m| m.unit.to_owned()).unwrap_or_default(),
        kind: kind.map_or("unknown", Kind::as_str).to_owned(),
        device: p.device,
        metric: p.metric,
        agg: agg.as_str().to_owned(),
        step_ms: step,
        from,
        to,
        points: buckets
            .iter()
            .map(|b| SeriesPoint {
                time: rfc3339(b.start),
                ts: b.start,
                value: b.value,
                count: b.count,
            })
            .collect(),
    })
    .into_response())
}

// ------------------------------------------------------------------------------------------
// KPIs
// ------------------------------------------------------------------------------------------

/// Parameters of `/kpis`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct KpiParams {
    /// Start, RFC 3339 or UTC ms: windows starting at or after it.
    #[param(
        pattern = "^([0-9]{1,15}|[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2}))$",
        example = "2026-06-01T00:00:00Z"
    )]
    pub from: String,
    /// End, RFC 3339 or UTC ms: windows ending at or before it.
    #[param(
        pattern = "^([0-9]{1,15}|[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2}))$",
        example = "2026-06-02T00:00:00Z"
    )]
    pub to: String,
    /// `15m`, `1h`, `1d` (one scorecard per stored window of that length) or `1mo` (one per
    /// local calendar month, from the daily windows). Default: one scorecard for the whole
    /// range, from the hourly windows.
    #[param(value_type = Option<PeriodName>)]
    pub period: Option<String>,
    /// `json` (default) or `csv`; `Accept: text/csv` also gives CSV.
    #[param(value_type = Option<FormatName>)]
    pub format: Option<String>,
}

/// A tier verdict.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TierView {
    /// `A` or `Z`.
    pub tier: String,
    /// `achieved`, `not_achieved` or `insufficient_data`.
    pub status: String,
}

/// One KPI over a range.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KpiView {
    /// KPI id.
    pub kpi: String,
    /// Unit of `value`.
    pub unit: String,
    /// The value; null when it cannot be computed (never zero for missing data).
    pub value: Option<f64>,
    /// Σ numerator.
    pub numerator: Option<f64>,
    /// Σ denominator (ratios).
    pub denominator: Option<f64>,
    /// Coverage, `0..=1`.
    pub coverage: f64,
    /// `ok`, `estimated`, `insufficient_data`, `no_denominator`, `meter_fault`.
    pub quality: String,
    /// Status per tier.
    pub tiers: Vec<TierView>,
    /// Windows with data.
    pub windows: u32,
    /// Windows expected.
    pub windows_expected: u32,
    /// Flags.
    pub flags: Vec<String>,
}

/// A scorecard of one period.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ScorecardView {
    /// Start, RFC 3339.
    pub start: String,
    /// End, RFC 3339.
    pub end: String,
    /// Window length the KPIs were recomputed from.
    pub source_period: String,
    /// KPIs, sorted by id.
    pub kpis: Vec<KpiView>,
}

/// The scorecards of a range.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Scorecards {
    /// Site id.
    pub site: String,
    /// Requested period; `range` for one scorecard over the whole range.
    pub period: String,
    /// Scorecards in time order.
    pub scorecards: Vec<ScorecardView>,
}

fn kpi_view(k: scorecard::RangeKpi) -> KpiView {
    KpiView {
        quality: enum_text(&k.quality),
        tiers: k
            .tiers
            .iter()
            .map(|t| TierView {
                tier: t.tier.clone(),
                status: enum_text(&t.status),
            })
            .collect(),
        kpi: k.kpi,
        unit: k.unit,
        value: k.value,
        numerator: k.numerator,
        denominator: k.denominator,
        coverage: k.coverage,
        windows: k.windows,
        windows_expected: k.windows_expected,
        flags: k.flags,
    }
}

fn expected_windows(start: i64, end: i64, window_ms: i64) -> u32 {
    // Days vary by an hour across DST changes; rounding absorbs it.
    u32::try_from((end - start + window_ms / 2) / window_ms).unwrap_or(u32::MAX)
}

/// The local calendar month `[start, end)` containing `ms` in `tz`.
fn month_of(ms: i64, tz: &str) -> Option<(i64, i64)> {
    let zone = jiff::tz::TimeZone::get(tz).ok()?;
    let local = jiff::Timestamp::from_millisecond(ms).ok()?.to_zoned(zone);
    let first = local.date().first_of_month();
    let start = first.to_zoned(local.time_zone().clone()).ok()?;
    let end = first
        .checked_add(jiff::Span::new().months(1))
        .ok()?
        .to_zoned(local.time_zone().clone())
        .ok()?;
    Some((
        start.timestamp().as_millisecond(),
        end.timestamp().as_millisecond(),
    ))
}

/// KPI scorecards recomputed for any range from the stored window sums.
#[utoipa::path(get, path = "/api/v1/sites/{site}/kpis", tag = "kpis", security(("bearer" = [])),
    params(SitePath, KpiParams),
    responses((status = 200, description = "The scorecards: JSON, or CSV (start,end,kpi,unit,\
            value,numerator,denominator,coverage,quality,tier_a,tier_z,windows,windows_expected) \
            with `format=csv` or `Accept: text/csv`",
            content((Scorecards = "application/json"), (String = "text/csv"))),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn kpis(
    State(state): State<ApiState>,
    site: Result<Path<String>, axum::extract::rejection::PathRejection>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let p: KpiParams = params::parse(q.as_deref())?;
    let csv = wants_csv(&headers, p.format.as_deref())?;
    let site = known_site(&state, site).await?;
    let cfg = &state.0.config;
    let (from, to) = (params::time("from", &p.from)?, params::time("to", &p.to)?);
    params::range(from, to, cfg.max_range)?;
    let (source, label) = match p.period.as_deref() {
        None => (Period::Hour, "range"),
        Some("15m") => (Period::FifteenMinutes, "15m"),
        Some("1h") => (Period::Hour, "1h"),
        Some("1d") => (Period::Day, "1d"),
        Some("1mo") => (Period::Day, "1mo"),
        Some(other) => {
            return Err(ApiError::bad_query(format!(
                "period {other:?} is not 15m, 1h, 1d or 1mo"
            )));
        }
    };
    let records = state
        .0
        .store
        .kpis_in_range(KpiQuery {
            site: site.clone(),
            period: source,
            from,
            to,
            limit: cfg.max_rows.saturating_add(1),
        })
        .await?;
    if records.len() > cfg.max_rows as usize {
        return Err(ApiError::too_many_rows(cfg.max_rows));
    }
    let window_ms = match source {
        Period::FifteenMinutes => 900_000,
        Period::Hour => 3_600_000,
        Period::Day => 86_400_000,
    };
    // Group into buckets: (start, end) → records.
    let mut buckets: BTreeMap<(i64, i64), Vec<fivezero_model::wire::KpiRecord>> = BTreeMap::new();
    for StoredKpi { record, .. } in records {
        let key = match label {
            "range" => (from, to),
            "1mo" => match month_of(record.window.start, &record.window.tz) {
                Some((a, b)) => (a.max(from), b.min(to)),
                None => continue,
            },
            _ => (record.window.start, record.window.end),
        };
        buckets.entry(key).or_default().push(record);
    }
    let scorecards: Vec<ScorecardView> = buckets
        .into_iter()
        .map(|((start, end), records)| {
            let expected = if matches!(label, "range" | "1mo") {
                expected_windows(start, end, window_ms)
            } else {
                1
            };
            ScorecardView {
                start: rfc3339(start),
                end: rfc3339(end),
                source_period: source.as_str().to_owned(),
                kpis: scorecard::scorecard(&records, expected)
                    .into_iter()
                    .map(kpi_view)
                    .collect(),
            }
        })
        .collect();
    if csv {
        return Ok(kpi_csv(&scorecards));
    }
    Ok(axum::Json(Scorecards {
        site,
        period: label.to_owned(),
        scorecards,
    })
    .into_response())
}

fn kpi_csv(cards: &[ScorecardView]) -> Response {
    let tier = |k: &KpiView, name: &str| {
        k.tiers
            .iter()
            .find(|t| t.tier == name)
            .map(|t| t.status.clone())
            .unwrap_or_default()
    };
    let mut rows = Vec::new();
    for c in cards {
        for k in &c.kpis {
            rows.push(vec![
                c.start.clone(),
                c.end.clone(),
                k.kpi.clone(),
                k.unit.clone(),
                opt(k.value),
                opt(k.numerator),
                opt(k.denominator),
                k.coverage.to_string(),
                k.quality.clone(),
                tier(k, "A"),
                tier(k, "Z"),
                k.windows.to_string(),
                k.windows_expected.to_string(),
            ]);
        }
    }
    csv_response(
        &[
            "start",
            "end",
            "kpi",
            "unit",
            "value",
            "numerator",
            "denominator",
            "coverage",
            "quality",
            "tier_a",
            "tier_z",
            "windows",
            "windows_expected",
        ],
        rows,
        "kpis",
    )
}

/// The latest window of every KPI and period.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LatestKpis {
    /// Site id.
    pub site: String,
    /// One scorecard per stored period (15m, 1h, 1d) with its latest windows.
    pub scorecards: Vec<ScorecardView>,
}

/// The latest closed window of every KPI, per period.
#[utoipa::path(get, path = "/api/v1/sites/{site}/kpis/latest", tag = "kpis", security(("bearer" = [])),
    params(SitePath),
    responses((status = 200, body = LatestKpis), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn kpis_latest(
    State(state): State<ApiState>,
    site: Result<Path<String>, axum::extract::rejection::PathRejection>,
    RawQuery(q): RawQuery,
) -> ApiResult<axum::Json<LatestKpis>> {
    no_params(q.as_deref())?;
    let site = known_site(&state, site).await?;
    let mut by_period: BTreeMap<&'static str, Vec<fivezero_model::wire::KpiRecord>> =
        BTreeMap::new();
    for k in state.0.store.kpis_latest(site.clone()).await? {
        by_period
            .entry(k.record.window.period.as_str())
            .or_default()
            .push(k.record);
    }
    let scorecards = by_period
        .into_iter()
        .map(|(period, records)| {
            let start = records.iter().map(|r| r.window.start).min().unwrap_or(0);
            let end = records.iter().map(|r| r.window.end).max().unwrap_or(0);
            // Each KPI's own latest window: recompute one window at a time.
            let mut kpis: Vec<KpiView> = Vec::new();
            let card = scorecard::scorecard(&records, 1);
            kpis.extend(card.into_iter().map(kpi_view));
            ScorecardView {
                start: rfc3339(start),
                end: rfc3339(end),
                source_period: period.to_owned(),
                kpis,
            }
        })
        .collect();
    Ok(axum::Json(LatestKpis { site, scorecards }))
}

// ------------------------------------------------------------------------------------------
// Coverage
// ------------------------------------------------------------------------------------------

/// Parameters of `/coverage`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CoverageParams {
    /// Streams active at or after this (RFC 3339 or UTC ms); default: all.
    #[param(
        pattern = "^([0-9]{1,15}|[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2}))$",
        example = "2026-06-01T00:00:00Z"
    )]
    pub from: Option<String>,
    /// Streams active before this (RFC 3339 or UTC ms); default: all.
    #[param(
        pattern = "^([0-9]{1,15}|[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2}))$",
        example = "2026-06-02T00:00:00Z"
    )]
    pub to: Option<String>,
}

/// A sequence range.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SeqRangeView {
    /// First sequence.
    pub first: u64,
    /// Last sequence (inclusive).
    pub last: u64,
    /// Sequences in it.
    pub count: u64,
    /// For a declared gap: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One stream's coverage.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StreamCoverage {
    /// Gateway id.
    pub gateway: String,
    /// Epoch.
    pub epoch: String,
    /// First seen, RFC 3339.
    pub first_seen: String,
    /// Last written, RFC 3339.
    pub last_seen: String,
    /// Highest sequence with nothing missing below it.
    pub watermark: u64,
    /// Highest sequence received or declared.
    pub highest: u64,
    /// Sequences stored (readings + KPI records).
    pub received: u64,
    /// Sequences declared lost by the gateway.
    pub declared_gap_seqs: u64,
    /// Declared gaps (the first 1000).
    pub declared_gaps: Vec<SeqRangeView>,
    /// Sequences neither received nor declared, above the watermark (the first 1000 ranges).
    pub missing: Vec<SeqRangeView>,
    /// Sequences missing in total (within the ranges listed).
    pub missing_seqs: u64,
    /// More ranges exist than listed.
    pub truncated: bool,
}

/// Coverage of a site's streams.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Coverage {
    /// Site id.
    pub site: String,
    /// Streams, by gateway and epoch.
    pub streams: Vec<StreamCoverage>,
}

const MAX_LISTED: u32 = 1000;

/// Per gateway stream: received, declared gaps, missing ranges.
#[utoipa::path(get, path = "/api/v1/sites/{site}/coverage", tag = "data", security(("bearer" = [])),
    params(SitePath, CoverageParams),
    responses((status = 200, body = Coverage), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn coverage(
    State(state): State<ApiState>,
    site: Result<Path<String>, axum::extract::rejection::PathRejection>,
    RawQuery(q): RawQuery,
) -> ApiResult<axum::Json<Coverage>> {
    let p: CoverageParams = params::parse(q.as_deref())?;
    let site = known_site(&state, site).await?;
    let from = p
        .from
        .as_deref()
        .map(|t| params::time("from", t))
        .transpose()?;
    let to = p.to.as_deref().map(|t| params::time("to", t)).transpose()?;
    if let (Some(a), Some(b)) = (from, to) {
        params::range(a, b, state.0.config.max_range)?;
    }
    let store = &state.0.store;
    let mut streams = Vec::new();
    let mut gaps_by_gateway: BTreeMap<String, Vec<crate::store::StoredGap>> = BTreeMap::new();
    for s in store.streams().await? {
        if s.site != site
            || from.is_some_and(|f| s.last_seen < f)
            || to.is_some_and(|t| s.first_seen >= t)
        {
            continue;
        }
        if !gaps_by_gateway.contains_key(&s.gateway) {
            let g = store.gaps(s.gateway.clone()).await?;
            gaps_by_gateway.insert(s.gateway.clone(), g);
        }
        let declared_gaps: Vec<SeqRangeView> = gaps_by_gateway
            .get(&s.gateway)
            .into_iter()
            .flatten()
            .filter(|g| g.epoch == s.epoch)
            .take(MAX_LISTED as usize)
            .map(|g| SeqRangeView {
                first: g.first_seq,
                last: g.first_seq + g.count.saturating_sub(1),
                count: g.count,
                reason: Some(g.reason.clone()),
            })
            .collect();
        let ranges = store
            .ranges_above(
                s.gateway.clone(),
                s.epoch.clone(),
                s.watermark,
                MAX_LISTED * 10,
            )
            .await?;
        let truncated_ranges = ranges.len() >= (MAX_LISTED * 10) as usize;
        let mut cursor = s.watermark + 1;
        let mut missing = Vec::new();
        for r in &ranges {
            if r.first > cursor {
                missing.push(SeqRangeView {
                    first: cursor,
                    last: r.first - 1,
                    count: r.first - cursor,
                    reason: None,
                });
            }
            cursor = cursor.max(r.last.saturating_add(1));
        }
        let truncated = truncated_ranges || missing.len() > MAX_LISTED as usize;
        missing.truncate(MAX_LISTED as usize);
        streams.push(StreamCoverage {
            missing_seqs: missing.iter().map(|m| m.count).sum(),
            highest: cursor - 1,
            received: s.readings + s.kpis,
            declared_gap_seqs: s.gap_seqs,
            gateway: s.gateway,
            epoch: s.epoch,
            first_seen: rfc3339(s.first_seen),
            last_seen: rfc3339(s.last_seen),
            watermark: s.watermark,
            declared_gaps,
            missing,
            truncated,
        });
    }
    Ok(axum::Json(Coverage { site, streams }))
}

// ------------------------------------------------------------------------------------------
// Admin
// ------------------------------------------------------------------------------------------

/// Parameters of the admin lists.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LimitParams {
    /// Most entries, newest first (1..=1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

fn limit_of(p: &LimitParams) -> ApiResult<u32> {
    match p.limit {
        None => Ok(100),
        Some(l) if (1..=MAX_LISTED).contains(&l) => Ok(l),
        Some(l) => Err(ApiError::bad_query(format!("limit {l} is not 1..=1000"))),
    }
}

/// A dead letter.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeadLetterView {
    /// Row id.
    pub id: i64,
    /// When, RFC 3339.
    pub received_at: String,
    /// Topic.
    pub topic: String,
    /// Reason label.
    pub reason: String,
    /// Detail.
    pub detail: String,
    /// Payload size, bytes.
    pub payload_bytes: usize,
}

/// Dead letters.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeadLetters {
    /// Newest first.
    pub dead_letters: Vec<DeadLetterView>,
}

/// The latest refused messages (admin).
#[utoipa::path(get, path = "/api/v1/admin/dead_letters", tag = "admin", security(("bearer" = [])),
    params(LimitParams),
    responses((status = 200, body = DeadLetters), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn dead_letters(
    State(state): State<ApiState>,
    RawQuery(q): RawQuery,
) -> ApiResult<axum::Json<DeadLetters>> {
    let p: LimitParams = params::parse(q.as_deref())?;
    let rows = state.0.store.dead_letters(limit_of(&p)?).await?;
    Ok(axum::Json(DeadLetters {
        dead_letters: rows
            .into_iter()
            .map(|d| DeadLetterView {
                id: d.id,
                received_at: rfc3339(d.received_at),
                topic: d.topic,
                reason: d.reason,
                detail: d.detail,
                payload_bytes: d.payload.len(),
            })
            .collect(),
    }))
}

/// A quarantined message.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct QuarantinedView {
    /// Row id.
    pub id: i64,
    /// Gateway id.
    pub gateway: String,
    /// Epoch.
    pub epoch: String,
    /// First sequence.
    pub first_seq: u64,
    /// Count.
    pub count: u64,
    /// What conflicted.
    pub detail: String,
}

/// Quarantined messages.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct QuarantineList {
    /// Newest first.
    pub quarantined: Vec<QuarantinedView>,
}

/// The latest conflicting duplicates (admin).
#[utoipa::path(get, path = "/api/v1/admin/quarantine", tag = "admin", security(("bearer" = [])),
    params(LimitParams),
    responses((status = 200, body = QuarantineList), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn quarantine(
    State(state): State<ApiState>,
    RawQuery(q): RawQuery,
) -> ApiResult<axum::Json<QuarantineList>> {
    let p: LimitParams = params::parse(q.as_deref())?;
    let rows = state.0.store.quarantined(limit_of(&p)?).await?;
    Ok(axum::Json(QuarantineList {
        quarantined: rows
            .into_iter()
            .map(|d| QuarantinedView {
                id: d.id,
                gateway: d.gateway,
                epoch: d.epoch,
                first_seq: d.first_seq,
                count: d.count,
                detail: d.detail,
            })
            .collect(),
    }))
}

// ------------------------------------------------------------------------------------------
// OpenAPI
// ------------------------------------------------------------------------------------------

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The answers every operation can give besides its own: the limits of [`limits`] apply to
/// every route, every route parses its query strictly, and the routes behind a token read
/// the database, which can fail.
struct CommonErrors;

impl utoipa::Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::schema::OneOfBuilder;
        use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
        let error = |description: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("ErrorBody")))
                            .build(),
                    )
                    .build(),
            )
        };
        let all: [(&str, &str); 4] = [
            (
                "400",
                "`bad_query`: an unknown, repeated or malformed query parameter",
            ),
            (
                "413",
                "`body_too_large`: a request body over `http.max_body_size`",
            ),
            (
                "431",
                "`headers_too_large`: headers over `http.max_header_size`",
            ),
            (
                "503",
                "`busy`: `http.max_concurrency` requests already running; `timeout`: over \
                 `http.request_timeout`; `unavailable`: the database is unreachable. Retry after \
                 the seconds in `Retry-After`",
            ),
        ];
        for item in openapi.paths.paths.values_mut() {
            let Some(op) = item.get.as_mut() else {
                continue;
            };
            let reads_database = op.security.is_some();
            let responses = &mut op.responses.responses;
            for (status, description) in all {
                match responses.get_mut(status) {
                    None => {
                        responses.insert(status.to_owned(), error(description));
                    }
                    // `/readyz` answers 503 with its own body when not ready: either body.
                    Some(RefOr::T(r)) => {
                        for content in r.content.values_mut() {
                            if let Some(own) = content.schema.take_if(|o| !is_error_body(o)) {
                                content.schema = Some(
                                    OneOfBuilder::new()
                                        .item(own)
                                        .item(Ref::from_schema_name("ErrorBody"))
                                        .into(),
                                );
                                r.description = format!("{}; or {description}", r.description);
                            }
                        }
                    }
                    Some(RefOr::Ref(_)) => {}
                }
            }
            if reads_database && !responses.contains_key("500") {
                responses.insert("500".to_owned(), error(INTERNAL));
            }
        }
    }
}

const INTERNAL: &str =
    "`internal`: the query failed in the database (the sink's log has the cause)";

fn is_error_body(schema: &utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>) -> bool {
    matches!(schema, utoipa::openapi::RefOr::Ref(r) if r.ref_location.ends_with("/ErrorBody"))
}

/// The OpenAPI document, generated from the handlers' annotations.
#[derive(OpenApi)]
#[openapi(
    info(title = "fivezero sink API", description = "Read-only queries over what the cloud sink stored: sites, gateways, series, five-zero KPI scorecards recomputed from stored sums, coverage."),
    paths(healthz, readyz, prometheus, openapi_json, sites, gateways, devices, metrics,
        series_handler, kpis, kpis_latest, coverage, dead_letters, quarantine),
    components(schemas(ErrorBody, series::Agg, FormatName, PeriodName)),
    modifiers(&BearerAuth, &CommonErrors)
)]
#[derive(Debug)]
pub struct ApiDoc;
