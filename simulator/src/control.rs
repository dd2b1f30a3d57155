//! The HTTP control endpoint (`--control 127.0.0.1:5080`): look at devices and switch faults
//! while the simulator runs.
//!
//! | request | answer |
//! |---|---|
//! | `GET /devices` | every device: name, unit id, listener and its address, profile id, fault, requests served |
//! | `GET /devices/{name}` | the device's snapshot as last served ([`crate::server::DeviceSnapshot`]); `?refresh=true` brings it to the current simulated time first |
//! | `PUT /devices/{name}/fault` | sets a fault from JSON: `{"kind":"exception","code":4}`, `{"kind":"late_reply","delay_ms":1500}`, `{"kind":"no_reply"}` … (see [`crate::fault`]) |
//! | `DELETE /devices/{name}/fault` | clears the fault; answers the one that was set |
//!
//! Errors are JSON `{"error": "..."}`: 400 for a body that is not a valid fault, 404 for an
//! unknown device or path. The endpoint has no authentication: bind it to loopback.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio::net::TcpListener;

use crate::fault::Fault;
use crate::server::Shared;

/// Serves the control endpoint on `listener` until the task is aborted.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    if let Err(err) = axum::serve(listener, router(shared)).await {
        tracing::error!("control endpoint stopped: {err}");
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/devices", get(list))
        .route("/devices/{name}", get(snapshot))
        .route(
            "/devices/{name}/fault",
            get(get_fault).put(put_fault).delete(delete_fault),
        )
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such path; try GET /devices".into(),
            )
        })
        .with_state(shared)
}

fn error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

fn unknown(name: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("no device named `{name}` in the scenario"),
    )
}

async fn list(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.devices_info()).into_response()
}

async fn snapshot(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let refresh = match query.get("refresh").map(String::as_str) {
        None | Some("false" | "0") => false,
        Some("true" | "1" | "") => true,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("refresh={other:?}: use true or false"),
            );
        }
    };
    let Some(index) = shared.scenario.device_index(&name) else {
        return unknown(&name);
    };
    // Encoding may advance the physics: keep it off the reactor.
    let task = tokio::task::spawn_blocking(move || shared.snapshot(index, refresh));
    match task.await {
        Ok(Some(s)) => axum::Json(s).into_response(),
        Ok(None) => unknown(&name),
        Err(err) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("snapshot failed: {err}"),
        ),
    }
}

async fn get_fault(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    match shared.scenario.device_index(&name) {
        Some(i) => {
            axum::Json(json!({ "device": name, "fault": shared.fault_of(i) })).into_response()
        }
        None => unknown(&name),
    }
}

async fn put_fault(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    if shared.scenario.device_index(&name).is_none() {
        return unknown(&name);
    }
    let fault: Fault = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(err) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "the body must be a fault such as {{\"kind\":\"exception\",\"code\":4}} or \
                     {{\"kind\":\"late_reply\",\"delay_ms\":1500}}: {err}"
                ),
            );
        }
    };
    match shared.set_fault(&name, Some(fault)) {
        Ok(previous) => axum::Json(json!({ "device": name, "fault": fault, "previous": previous }))
            .into_response(),
        Err(e) => error(StatusCode::NOT_FOUND, e.to_string()),
    }
}

async fn delete_fault(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    match shared.set_fault(&name, None) {
        Ok(previous) => axum::Json(json!({ "device": name, "fault": null, "previous": previous }))
            .into_response(),
        Err(e) => error(StatusCode::NOT_FOUND, e.to_string()),
    }
}
