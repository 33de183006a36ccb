//! The agent's HTTP/JSON API (axum on the agent's one-thread tokio runtime).
//!
//! | method and path            | body / query                                   | answer |
//! |----------------------------|------------------------------------------------|--------|
//! | `GET /v1/members`          |                                                | `{"members": [{name, addr, status, tags, incarnation, coordinate}]}` |
//! | `POST /v1/join`            | `{"addrs": ["ADDR", ...]}`                     | `{"joined": n, "failed": [ADDR, ...]}` once each seed answered (none: 500) |
//! | `POST /v1/leave`           |                                                | `{"left": NAME}`, then the agent exits |
//! | `POST /v1/force-leave`     | `{"name": N}`                                  | `{}` |
//! | `POST /v1/event`           | `{"name", "payload", "coalesce"}`              | `{}` |
//! | `POST /v1/query`           | `{"name", "payload", "filter_tags": {k: regex}, "filter_nodes": [..], "timeout_ms", "request_ack", "relay_factor"}` | NDJSON: `{"type": "ack"/"response", "from", "payload"}`..., then `{"type": "done", ...}` |
//! | `POST /v1/keys/install`, `/use`, `/remove` | `{"key": K}` (64 hex digits or 44 base64 characters) | per-member results |
//! | `GET /v1/keys`             |                                                | keys and how many members hold each |
//! | `GET /v1/rtt?a=A&b=B`      | `b` defaults to this node                      | `{"a", "b", "rtt_ms"}` |
//! | `GET /v1/monitor`          |                                                | NDJSON: `{"event": "subscribed", "name"}`, then one line per event |
//! | `GET /metrics`             |                                                | Prometheus text format |
//!
//! Errors are `{"error": MESSAGE, "code": CODE}` with status 400 (`bad_request`: the message
//! names the field), 401 (`unauthorized`), 404 (`not_found`), 413 (a body over
//! [`API_BODY_BYTES_MAX`]), 500 (`engine`) or 503 (`left`, or `busy`: more than [`super::MONITORS_MAX`] monitors, or
//! [`super::ops::JOINS_WAITING_MAX`] join seeds waited for).
//!
//! Engine calls block (they wait for the node's shard), so each runs on tokio's blocking
//! pool ([`super::API_BLOCKING_THREADS_MAX`] threads), never on the thread that serves.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt as _;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::API_BODY_BYTES_MAX;
use super::metrics::{Scrape, render};
use super::ops::{AgentState, ApiError, KeyOp, QueryLines, QueryRequest};
use super::parse_key_text;

/// Lines of a query's responses buffered between the engine and the HTTP body.
const QUERY_LINES_BUFFERED_MAX: usize = 64;

type Shared = Arc<AgentState>;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        error_response(status, self.code(), &self.to_string())
    }
}

fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({"error": message, "code": code});
    (status, axum::Json(body)).into_response()
}

/// The API's routes, behind the token check when `token` is set.
pub fn router(state: Shared, token: Option<String>) -> Router {
    let auth = Auth {
        token,
        state: Arc::clone(&state),
    };
    Router::new()
        .route("/v1/members", get(members))
        .route("/v1/join", post(join))
        .route("/v1/leave", post(leave))
        .route("/v1/force-leave", post(force_leave))
        .route("/v1/event", post(event))
        .route("/v1/query", post(query))
        .route("/v1/keys", get(keys_list))
        .route("/v1/keys/{op}", post(keys_op))
        .route("/v1/rtt", get(rtt))
        .route("/v1/monitor", get(monitor))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(API_BODY_BYTES_MAX))
        .layer(from_fn_with_state(auth, check_token))
        .with_state(state)
}

#[derive(Clone)]
struct Auth {
    token: Option<String>,
    state: Shared,
}

/// Compares without an early exit, so the time taken does not tell how much matched.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn check_token(State(auth): State<Auth>, req: Request, next: Next) -> Response {
    if let Some(token) = &auth.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| same_secret(g.as_bytes(), token.as_bytes())) {
            auth.state
                .counters
                .unauthorized
                .fetch_add(1, Ordering::Relaxed);
            let what = if given.is_some() {
                "wrong token"
            } else {
                "this agent wants a token"
            };
            let mut r = error_response(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                &format!(
                    "{what}: send `Authorization: Bearer TOKEN` (CLI: --token or RINGLEADER_TOKEN)"
                ),
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    next.run(req).await
}

async fn not_found(req: Request) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!(
            "no endpoint {} {}: see the API table in `ringleader-tools agent`'s documentation",
            req.method(),
            req.uri().path()
        ),
    )
}

/// Runs a blocking engine call off the serving thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Engine(format!("the engine call did not finish: {e}")))?
}

/// A JSON body as `T`, or 400 naming what is wrong.
fn body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::BadRequest(format!("body: {e}")))
}

async fn members(State(s): State<Shared>) -> Result<Response, ApiError> {
    let v = blocking(move || s.members()).await?;
    Ok(axum::Json(json!({ "members": v })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinBody {
    addrs: Vec<String>,
}

async fn join(State(s): State<Shared>, b: Bytes) -> Result<Response, ApiError> {
    let req: JoinBody = body(&b)?;
    let addrs = req
        .addrs
        .iter()
        .map(|a| {
            a.parse::<SocketAddr>()
                .map_err(|_| ApiError::BadRequest(format!("addrs: `{a}` is not IP:PORT")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let v = blocking(move || s.join(&addrs)).await?;
    Ok(axum::Json(v).into_response())
}

async fn leave(State(s): State<Shared>) -> Result<Response, ApiError> {
    let name = s.name().to_string();
    let st = Arc::clone(&s);
    let r = blocking(move || st.leave("api")).await;
    // Stop whatever the outcome: a node that failed to leave cleanly is stopped anyway.
    s.request_leave();
    r?;
    Ok(axum::Json(json!({ "left": name })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameBody {
    name: String,
}

async fn force_leave(State(s): State<Shared>, b: Bytes) -> Result<Response, ApiError> {
    let req: NameBody = body(&b)?;
    let v = blocking(move || s.force_leave(&req.name)).await?;
    Ok(axum::Json(v).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventBody {
    name: String,
    #[serde(default)]
    payload: String,
    #[serde(default = "super::ops::yes")]
    coalesce: bool,
}

async fn event(State(s): State<Shared>, b: Bytes) -> Result<Response, ApiError> {
    let req: EventBody = body(&b)?;
    let v = blocking(move || s.user_event(&req.name, req.payload.as_bytes(), req.coalesce)).await?;
    Ok(axum::Json(v).into_response())
}

/// An NDJSON body fed by a blocking iterator (the engine's stream); ends with it.
pub fn ndjson(lines: QueryLines) -> Response {
    let (tx, trx) = tokio::sync::mpsc::channel::<serde_json::Value>(QUERY_LINES_BUFFERED_MAX);
    // The engine side blocks; a blocking-pool thread carries its lines over.
    tokio::task::spawn_blocking(move || {
        for v in lines {
            if tx.blocking_send(v).is_err() {
                break; // the client went away
            }
        }
    });
    let stream = futures_util::stream::unfold(trx, |mut r| async move {
        let v = r.recv().await?;
        Some((Ok::<_, Infallible>(Bytes::from(format!("{v}\n"))), r))
    });
    ndjson_response(Body::from_stream(stream))
}

fn ndjson_response(body: Body) -> Response {
    let mut r = Response::new(body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    r
}

async fn query(State(s): State<Shared>, b: Bytes) -> Result<Response, ApiError> {
    let req: QueryRequest = body(&b)?;
    let plan = req.plan()?;
    let rx = blocking(move || s.query(plan)).await?;
    Ok(ndjson(rx))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyBody {
    key: String,
}

async fn keys_op(
    State(s): State<Shared>,
    Path(op): Path<String>,
    b: Bytes,
) -> Result<Response, ApiError> {
    let op = match op.as_str() {
        "install" => KeyOp::Install,
        "use" => KeyOp::Use,
        "remove" => KeyOp::Remove,
        other => {
            return Err(ApiError::BadRequest(format!(
                "no key operation `{other}`: use install, use or remove (list is GET /v1/keys)"
            )));
        }
    };
    let req: KeyBody = body(&b)?;
    let key = parse_key_text(&req.key).map_err(|e| ApiError::BadRequest(format!("key: {e}")))?;
    let v = blocking(move || s.keys(op, Some(key))).await?;
    Ok(axum::Json(v).into_response())
}

async fn keys_list(State(s): State<Shared>) -> Result<Response, ApiError> {
    let v = blocking(move || s.keys(KeyOp::List, None)).await?;
    Ok(axum::Json(v).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RttParams {
    a: String,
    b: Option<String>,
}

async fn rtt(
    State(s): State<Shared>,
    q: Result<Query<RttParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(format!("query string: {e}")))?;
    let b = q.b.unwrap_or_else(|| s.name().to_string());
    let v = blocking(move || s.rtt(&q.a, &b)).await?;
    Ok(axum::Json(v).into_response())
}

async fn monitor(State(s): State<Shared>) -> Result<Response, ApiError> {
    let rx = s.subscribe()?;
    let first = json!({"event": "subscribed", "name": s.name()});
    let head = futures_util::stream::once(async move {
        Ok::<_, Infallible>(Bytes::from(format!("{first}\n")))
    });
    let rest = futures_util::stream::unfold((rx, s), |(mut rx, s)| async move {
        let line = match rx.recv().await {
            Ok(line) => format!("{line}\n"),
            Err(RecvError::Lagged(n)) => {
                s.counters
                    .monitor_lines_lost
                    .fetch_add(n, Ordering::Relaxed);
                format!("{}\n", json!({"event": "lost", "lines": n}))
            }
            Err(RecvError::Closed) => return None,
        };
        Some((Ok::<_, Infallible>(Bytes::from(line)), (rx, s)))
    });
    Ok(ndjson_response(Body::from_stream(head.chain(rest))))
}

async fn metrics(State(s): State<Shared>) -> Result<Response, ApiError> {
    let st = Arc::clone(&s);
    let (members, census, queued) = blocking(move || st.census()).await?;
    let text = render(&Scrape {
        name: s.name(),
        census: &census,
        members: &members,
        events_queued: queued,
        monitors: s.subscribers(),
        agent: &s.counters,
    });
    let mut r = Response::new(Body::from(text));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
        assert!(!same_secret(b"", b"a"));
    }

    #[test]
    fn ndjson_streams_every_line_then_ends() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let lines = vec![
                json!({"type": "response", "from": "n2"}),
                json!({"type": "done", "responses": 1}),
            ];
            let r = ndjson(Box::new(lines.into_iter()));
            assert_eq!(r.headers()[header::CONTENT_TYPE], "application/x-ndjson");
            let bytes = axum::body::to_bytes(r.into_body(), 1 << 16)
                .await
                .expect("body");
            let text = String::from_utf8(bytes.to_vec()).expect("utf-8");
            let lines: Vec<serde_json::Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).expect("json line"))
                .collect();
            assert_eq!(lines.len(), 2, "{text}");
            assert_eq!(lines[0]["from"], "n2");
            assert_eq!(lines[1]["type"], "done");
        });
    }
}
