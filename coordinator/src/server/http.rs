//! The coordinator's HTTP side, on the gRPC port (HTTP/1.1 and HTTP/2): the status web page
//! with its assets (all embedded: machines may be offline), its JSON API and live updates
//! (server-sent events), and Prometheus `/metrics`.
//!
//! Reading needs no token; `POST` (cancel, retry, drain) needs the operator token as
//! `Authorization: Bearer …`. Every answer is built by the same core calls the Operator
//! service adapts, so the page, `hlsfarm status --json` and the gRPC API agree; errors map to
//! HTTP statuses in one place ([`Error::http_status`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hlsfarm_common::blob::Blobs;
use hlsfarm_proto::v1;
use serde::Deserialize;
use tokio_stream::Stream;

use super::auth::{Role, Tokens};
use super::{Coordinator, Error};
use crate::view::{StatusJson, SweepTrialsJson};

const INDEX_HTML: &str = include_str!("../../web/index.html");
const APP_JS: &str = include_str!("../../web/app.js");
const APP_CSS: &str = include_str!("../../web/app.css");

#[derive(Clone)]
struct Http {
    c: Arc<Coordinator>,
    tokens: Tokens,
}

/// The HTTP routes, to merge with the gRPC services.
pub(super) fn router(c: Arc<Coordinator>, tokens: Tokens) -> axum::Router {
    let state = Http { c, tokens };
    axum::Router::new()
        .route(
            "/",
            get(|| async { asset(INDEX_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/assets/app.js",
            get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/assets/app.css",
            get(|| async { asset(APP_CSS, "text/css; charset=utf-8") }),
        )
        .route("/metrics", get(metrics))
        .route("/api/status", get(status))
        .route("/api/auth", get(auth))
        .route("/api/events", get(events))
        .route("/api/sweeps/{id}/trials", get(trials))
        .route("/api/sweeps/{id}/{file}", get(sweep_file))
        .route("/api/sweeps/{id}/cancel", post(cancel))
        .route("/api/sweeps/{id}/retry", post(retry))
        .route("/api/workers/{id}/drain", post(drain))
        .route("/api/trials/{key}/{file}", get(artifact))
        .with_state(state)
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// An error as JSON `{"error": "...", "kind": "..."}` with its HTTP status
/// ([`Error::http_status`], the one map).
fn error(e: &Error) -> Response {
    (
        e.http_status(),
        Json(serde_json::json!({ "error": e.to_string(), "kind": e.kind() })),
    )
        .into_response()
}

/// Whether the request carries the operator token.
fn operator(state: &Http, headers: &HeaderMap) -> Result<(), Error> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented.map(|t| state.tokens.role_of(t)) {
        Some(Some(Role::Operator)) => Ok(()),
        Some(_) => Err(Error::Denied(
            "this token is not the operator token (coordinator.operator_token)".into(),
        )),
        None => Err(Error::Unauthenticated(
            "changing anything needs the operator token: `Authorization: Bearer <token>`".into(),
        )),
    }
}

#[derive(Deserialize)]
struct StatusQuery {
    /// Include finished sweeps (default yes).
    all: Option<bool>,
}

async fn snapshot(state: &Http, all: bool) -> Result<StatusJson, Error> {
    let r = state
        .c
        .get_status(v1::GetStatusRequest {
            include_finished: all,
        })
        .await?;
    Ok(StatusJson::from(&r))
}

async fn status(State(state): State<Http>, Query(q): Query<StatusQuery>) -> Response {
    match snapshot(&state, q.all.unwrap_or(true)).await {
        Ok(s) => Json(s).into_response(),
        Err(e) => error(&e),
    }
}

async fn auth(State(state): State<Http>, headers: HeaderMap) -> Response {
    match operator(&state, &headers) {
        Ok(()) => Json(serde_json::json!({ "role": "operator" })).into_response(),
        Err(e) => error(&e),
    }
}

async fn metrics(State(state): State<Http>) -> Response {
    match snapshot(&state, true).await {
        Ok(s) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            state
                .c
                .metrics
                .render(&s, state.c.config.coordinator.lease_ms)
                .await,
        )
            .into_response(),
        Err(e) => error(&e),
    }
}

async fn trials(State(state): State<Http>, Path(id): Path<String>) -> Response {
    match state
        .c
        .get_results(v1::GetResultsRequest { sweep_id: id })
        .await
    {
        Ok(r) => Json(SweepTrialsJson::from(&r)).into_response(),
        Err(e) => error(&e),
    }
}

/// A sweep's plot or ranking as it stands now (`pareto.svg`, `ranking.csv`), built from the
/// results committed so far, so the page shows the choice while the sweep runs; the
/// aggregate writes the same files under `sweeps/<id>/` when it ends.
async fn sweep_file(
    State(state): State<Http>,
    Path((id, file)): Path<(String, String)>,
) -> Response {
    if file != "pareto.svg" && file != "ranking.csv" {
        return error(&Error::not_found(
            "a sweep's live files are pareto.svg and ranking.csv",
        ));
    }
    if let Err(e) = state.c.queue.sweep(&id).await {
        return error(&e.into());
    }
    let plan = match state.c.plan(&id).await {
        Ok(p) => p,
        Err(e) => return error(&e),
    };
    let summary = match state.c.sweep_summary(&id, &plan).await {
        Ok(s) => s.summary,
        Err(e) => return error(&Error::backend(e)),
    };
    let (content_type, body) = if file == "pareto.svg" {
        match crate::pareto::svg(&summary) {
            Ok(Some(svg)) => ("image/svg+xml", svg.into_bytes()),
            Ok(None) => {
                return error(&Error::not_found(
                    "nothing to plot yet: no trial has resource, latency or accuracy figures",
                ));
            }
            Err(e) => {
                return error(&Error::Internal(format!("cannot draw the plot: {e}")));
            }
        }
    } else {
        let objectives = crate::ranking::objectives_for(&summary, None);
        if objectives.is_empty() {
            return error(&Error::not_found(
                "nothing to rank yet: no trial has accuracy, a search metric, LUT or parameters",
            ));
        }
        match crate::ranking::ranking_csv(&summary, &objectives) {
            Ok(csv) => ("text/csv; charset=utf-8", csv),
            Err(e) => return error(&Error::Internal(format!("cannot write the ranking: {e}"))),
        }
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

#[derive(Deserialize, Default)]
struct Keys {
    /// Trial keys within the sweep; none means the whole sweep.
    #[serde(default)]
    trials: Vec<String>,
}

async fn cancel(
    State(state): State<Http>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<Keys>>,
) -> Response {
    if let Err(e) = operator(&state, &headers) {
        return error(&e);
    }
    let keys = body.map(|b| b.0).unwrap_or_default();
    match state
        .c
        .cancel(v1::CancelRequest {
            sweep_id: id,
            trial_keys: keys.trials,
        })
        .await
    {
        Ok(r) => Json(serde_json::json!({
            "dropped": r.dropped,
            "stopping": r.stopping,
        }))
        .into_response(),
        Err(e) => error(&e),
    }
}

async fn retry(
    State(state): State<Http>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<Keys>>,
) -> Response {
    if let Err(e) = operator(&state, &headers) {
        return error(&e);
    }
    let keys = body.map(|b| b.0).unwrap_or_default();
    match state
        .c
        .retry(v1::RetryRequest {
            sweep_id: id,
            trial_keys: keys.trials,
        })
        .await
    {
        Ok(r) => Json(serde_json::json!({ "requeued": r.requeued })).into_response(),
        Err(e) => error(&e),
    }
}

async fn drain(State(state): State<Http>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(e) = operator(&state, &headers) {
        return error(&e);
    }
    match state
        .c
        .drain_worker(v1::DrainWorkerRequest { worker_id: id })
        .await
    {
        Ok(_) => Json(serde_json::json!({ "draining": true })).into_response(),
        Err(e) => error(&e),
    }
}

/// A committed trial's `result.json` or tarball, from the store.
async fn artifact(
    State(state): State<Http>,
    Path((key, file)): Path<(String, String)>,
) -> Response {
    if key.len() != 64 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
        return error(&Error::invalid("a trial key is 64 hex digits"));
    }
    let content_type = match file.as_str() {
        "result.json" => "application/json",
        "artifacts.tar.gz" => "application/gzip",
        _ => {
            return error(&Error::not_found(
                "a trial keeps result.json and artifacts.tar.gz",
            ));
        }
    };
    // The tarball stays in the committed attempt's folder, which the trial's record names.
    let committed = if file == "result.json" {
        String::new()
    } else {
        match state.c.queue.trial(&key).await {
            Ok(record) => record.result_prefix,
            Err(e) => return error(&Error::not_found(e.to_string())),
        }
    };
    let path = Blobs::artifact_path(&key, &committed, &file);
    match state.c.blobs.get(&path).await {
        Ok(bytes) => {
            let mut response = (
                [
                    (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
                    (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                ],
                bytes,
            )
                .into_response();
            if file != "result.json"
                && let Ok(v) = HeaderValue::from_str(&format!(
                    "attachment; filename=\"{}-{file}\"",
                    &key[..12]
                ))
            {
                response
                    .headers_mut()
                    .insert(header::CONTENT_DISPOSITION, v);
            }
            response
        }
        Err(e) => error(&Error::not_found(format!(
            "{path} is not in the store (not committed yet, or the trial kept no such file): {e}"
        ))),
    }
}

/// Live updates: a `status` event with the whole [`StatusJson`] and the recent queue events
/// at once, then again whenever the queue's events stream moves (at most four times a
/// second).
async fn events(State(state): State<Http>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(16);
    tokio::spawn(async move {
        let mut cursor = String::new();
        let mut reader = None;
        let mut first = true;
        loop {
            let mut changed: Vec<serde_json::Value> = Vec::new();
            if reader.is_none() {
                reader = state.c.queue.events().await.ok();
                if cursor.is_empty() {
                    cursor = state
                        .c
                        .queue
                        .last_event_id()
                        .await
                        .unwrap_or_else(|_| "$".into());
                }
            }
            if !first {
                let got = match reader.as_mut() {
                    Some(r) => tokio::select! {
                        _ = tx.closed() => return,
                        _ = state.c.stop.cancelled() => return,
                        got = r.read(&cursor, 15_000, 500) => got,
                    },
                    None => Err(hlsfarm_common::queue::Error::Backend(
                        "no events reader".into(),
                    )),
                };
                match got {
                    Ok(events) => {
                        for e in events {
                            cursor = e.id.clone();
                            changed.push(serde_json::json!({
                                "time_unix_ms": e.time_ms(),
                                "kind": e.kind,
                                "trial": e.trial,
                                "sweep": e.sweep,
                                "state": e.state,
                                "worker": e.worker,
                                "message": e.message,
                            }));
                        }
                    }
                    Err(_) => {
                        reader = None;
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
            // Heartbeats also move ages: refresh at least every 15 s (the block above).
            let status = match snapshot(&state, true).await {
                Ok(s) => s,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let data = serde_json::json!({ "status": status, "events": changed });
            let event = Event::default().event("status").data(data.to_string());
            if tx.send(event).await.is_err() {
                return;
            }
            first = false;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    Sse::new(tokio_stream::StreamExt::map(
        tokio_stream::wrappers::ReceiverStream::new(rx),
        Ok,
    ))
    .keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
}
