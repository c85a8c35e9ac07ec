//! `ferry relay --admin ADDR`: an HTTP interface (JSON, and Prometheus
//! text at `/metrics`) to look into and act on the queue, on either store.
//!
//! | method and path | what |
//! |---|---|
//! | `GET /metrics` | Prometheus text |
//! | `GET /queue` | a page of messages (`state`, `domain`, `sender`, `recipient`, `older_than`, `limit`, `cursor`) |
//! | `GET /queue/summary` | pending recipients per domain × age (like qshape) |
//! | `GET /queue/{id}` | one message: envelope, each recipient's state and last reply |
//! | `POST /queue/flush` | retry every deferred recipient now (`?domain=`) |
//! | `POST /queue/{id}/hold`, `/release` | hold or release one message |
//! | `DELETE /queue/{id}` | delete one message (`?bounce=true`: tell the sender) |
//! | `POST /queue/hold`, `/queue/release`, `DELETE /queue` | the same for every message a filter selects |
//!
//! Access: the interface listens on loopback unless a bearer token is set
//! (`--admin-token-env VAR`); with a token every request must carry
//! `Authorization: Bearer TOKEN`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Value, json};
use smtp_relay::inspect::{self, Filter, Listed, QueueInspect};
use smtp_relay::queue::{MessageId, MessageKind, RecipientState};

/// The largest page `GET /queue` returns.
pub const MAX_PAGE: usize = 1000;

/// What the handlers share.
pub struct AdminState<S> {
    /// The queue.
    pub store: S,
    /// The relay's name in bounces it sends for deleted messages.
    pub reporting_mta: String,
    /// The bearer token, when one is required.
    pub token: Option<String>,
    /// Renders the metrics.
    pub metrics: Option<PrometheusHandle>,
    /// Called at every flush (the scheduler forgets its destination
    /// backoff, so flushed mail is really tried).
    pub on_flush: Option<Arc<dyn Fn() + Send + Sync>>,
}

type Shared<S> = Arc<AdminState<S>>;

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

fn internal(err: std::io::Error) -> Response {
    error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string())
}

fn unix(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Parses a message id as printed (16 hex digits).
pub fn parse_id(text: &str) -> Option<MessageId> {
    u64::from_str_radix(text, 16).ok().map(MessageId)
}

/// A message as JSON.
pub fn message_json(listed: &Listed, now: SystemTime) -> Value {
    let message = &listed.message;
    let envelope = &message.envelope;
    let recipients: Vec<Value> = envelope
        .recipients
        .iter()
        .zip(&message.states)
        .map(|(recipient, state)| {
            let held = listed.held || inspect::is_held_state(state);
            let (name, attempts, next, last) = match state {
                RecipientState::Queued => ("queued", 0, None, None),
                RecipientState::Deferred {
                    attempts,
                    next_attempt,
                    last,
                    ..
                } => (
                    "deferred",
                    *attempts,
                    (!inspect::is_held_state(state)).then(|| unix(*next_attempt)),
                    Some(last),
                ),
                RecipientState::Delivered { last } => ("delivered", 0, None, Some(last)),
                RecipientState::Failed { last } => ("failed", 0, None, Some(last)),
            };
            let name = if held && !state.is_final() {
                "held"
            } else {
                name
            };
            json!({
                "address": recipient.address,
                "state": name,
                "attempts": attempts,
                "next_attempt": next,
                "last": last.map(|l| json!({
                    "diagnostic": l.diagnostic,
                    "remote_mta": l.remote_mta,
                    "at": unix(l.at),
                })),
            })
        })
        .collect();
    json!({
        "id": message.id.to_string(),
        "sender": envelope.sender.clone().unwrap_or_else(|| "<>".to_owned()),
        "kind": match envelope.kind {
            MessageKind::Normal => "message",
            MessageKind::Notification => "notification",
        },
        "received_at": unix(envelope.received_at),
        "age_seconds": now.duration_since(envelope.received_at).unwrap_or_default().as_secs(),
        "held": listed.held,
        "envid": envelope.envid,
        "smtputf8": envelope.smtputf8,
        "recipients": recipients,
    })
}

/// Builds a [`Filter`] from query parameters.
pub fn filter_from(params: &HashMap<String, String>) -> Result<Filter, String> {
    let state = params.get("state").map(|s| s.parse()).transpose()?;
    let older_than = params
        .get("older_than")
        .map(|s| crate::cli::parse_duration(s))
        .transpose()?;
    Ok(Filter {
        state,
        domain: params.get("domain").cloned(),
        sender: params.get("sender").cloned(),
        recipient: params.get("recipient").cloned(),
        older_than,
    })
}

async fn list<S: QueueInspect>(
    State(state): State<Shared<S>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let filter = match filter_from(&params) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let limit = match params.get("limit").map(|l| l.parse::<usize>()) {
        None => 100,
        Some(Ok(n)) if (1..=MAX_PAGE).contains(&n) => n,
        Some(_) => {
            return error(StatusCode::BAD_REQUEST, format!("limit: 1 to {MAX_PAGE}"));
        }
    };
    let cursor = match params.get("cursor").map(|c| parse_id(c)) {
        None => None,
        Some(Some(id)) => Some(id),
        Some(None) => return error(StatusCode::BAD_REQUEST, "cursor: not a message id"),
    };
    let now = SystemTime::now();
    match state.store.list(&filter, cursor, limit, now).await {
        Ok(page) => axum::Json(json!({
            "messages": page.messages.iter().map(|l| message_json(l, now)).collect::<Vec<_>>(),
            "next_cursor": page.next.map(|id| id.to_string()),
        }))
        .into_response(),
        Err(e) => internal(e),
    }
}

async fn show<S: QueueInspect>(State(state): State<Shared<S>>, Path(id): Path<String>) -> Response {
    let Some(id) = parse_id(&id) else {
        return error(StatusCode::BAD_REQUEST, "not a message id");
    };
    match state.store.get(id).await {
        Ok(Some(listed)) => axum::Json(message_json(&listed, SystemTime::now())).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "no such message"),
        Err(e) => internal(e),
    }
}

async fn summary<S: QueueInspect>(State(state): State<Shared<S>>) -> Response {
    match state.store.summary(SystemTime::now()).await {
        Ok(summary) => {
            let mut buckets: Vec<String> = inspect::AGE_BUCKETS
                .iter()
                .map(|m| format!("<{m}m"))
                .collect();
            buckets.push(format!(
                ">={}m",
                inspect::AGE_BUCKETS[inspect::AGE_BUCKETS.len() - 1]
            ));
            let domains: Vec<Value> = summary
                .domains
                .iter()
                .map(|(domain, counts)| {
                    json!({
                        "domain": domain,
                        "total": counts.iter().sum::<u64>(),
                        "counts": counts,
                    })
                })
                .collect();
            axum::Json(json!({
                "buckets": buckets,
                "domains": domains,
                "queued": summary.queued,
                "deferred": summary.deferred,
                "held": summary.held,
                "oldest": summary.oldest.map(unix),
            }))
            .into_response()
        }
        Err(e) => internal(e),
    }
}

async fn flush<S: QueueInspect>(
    State(state): State<Shared<S>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let domain = params.get("domain").map(String::as_str);
    if let Some(on_flush) = &state.on_flush {
        on_flush();
    }
    match state.store.flush(domain, SystemTime::now()).await {
        Ok(n) => axum::Json(json!({ "flushed": n })).into_response(),
        Err(e) => internal(e),
    }
}

async fn hold_one<S: QueueInspect>(
    State(state): State<Shared<S>>,
    Path(id): Path<String>,
) -> Response {
    set_held(state, id, true).await
}

async fn release_one<S: QueueInspect>(
    State(state): State<Shared<S>>,
    Path(id): Path<String>,
) -> Response {
    set_held(state, id, false).await
}

async fn set_held<S: QueueInspect>(state: Shared<S>, id: String, held: bool) -> Response {
    let Some(id) = parse_id(&id) else {
        return error(StatusCode::BAD_REQUEST, "not a message id");
    };
    match state.store.set_held(id, held, SystemTime::now()).await {
        Ok(true) => axum::Json(json!({ "id": id.to_string(), "held": held })).into_response(),
        Ok(false) => error(StatusCode::NOT_FOUND, "no such message"),
        Err(e) => internal(e),
    }
}

fn wants_bounce(params: &HashMap<String, String>) -> bool {
    params
        .get("bounce")
        .is_some_and(|b| b == "true" || b == "1")
}

async fn delete_one<S: QueueInspect>(
    State(state): State<Shared<S>>,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let Some(id) = parse_id(&id) else {
        return error(StatusCode::BAD_REQUEST, "not a message id");
    };
    let bounce = wants_bounce(&params).then_some(state.reporting_mta.as_str());
    match inspect::delete(&state.store, id, bounce, SystemTime::now()).await {
        Ok(true) => axum::Json(
            json!({ "id": id.to_string(), "deleted": true, "bounced": bounce.is_some() }),
        )
        .into_response(),
        Ok(false) => error(StatusCode::NOT_FOUND, "no such message"),
        Err(e) => internal(e),
    }
}

#[derive(Clone, Copy)]
enum Bulk {
    Hold,
    Release,
    Delete,
}

/// Applies `action` to every message the filter in `params` selects, a
/// page at a time. A filter is required (`all=true` selects everything).
async fn bulk<S: QueueInspect>(
    state: Shared<S>,
    params: HashMap<String, String>,
    action: Bulk,
) -> Response {
    let filter = match filter_from(&params) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if filter == Filter::default() && params.get("all").is_none_or(|a| a != "true") {
        return error(
            StatusCode::BAD_REQUEST,
            "give a filter (state, domain, sender, recipient, older_than) or all=true",
        );
    }
    let bounce = wants_bounce(&params).then_some(state.reporting_mta.as_str());
    let now = SystemTime::now();
    let mut cursor = None;
    let mut count = 0u64;
    loop {
        let page = match state.store.list(&filter, cursor, 500, now).await {
            Ok(page) => page,
            Err(e) => return internal(e),
        };
        for listed in &page.messages {
            let id = listed.message.id;
            let done = match action {
                Bulk::Hold => state.store.set_held(id, true, now).await,
                Bulk::Release => state.store.set_held(id, false, now).await,
                Bulk::Delete => inspect::delete(&state.store, id, bounce, now).await,
            };
            match done {
                Ok(true) => count += 1,
                Ok(false) => {}
                Err(e) => return internal(e),
            }
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    axum::Json(json!({ "messages": count })).into_response()
}

async fn hold_many<S: QueueInspect>(
    State(state): State<Shared<S>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    bulk(state, params, Bulk::Hold).await
}

async fn release_many<S: QueueInspect>(
    State(state): State<Shared<S>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    bulk(state, params, Bulk::Release).await
}

async fn delete_many<S: QueueInspect>(
    State(state): State<Shared<S>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    bulk(state, params, Bulk::Delete).await
}

async fn metrics<S: QueueInspect>(State(state): State<Shared<S>>) -> Response {
    let Some(handle) = &state.metrics else {
        return error(StatusCode::NOT_FOUND, "metrics are not enabled");
    };
    // Queue depth is read from the store at scrape time, so it is right
    // on every node of a shared queue.
    let now = SystemTime::now();
    match state.store.summary(now).await {
        Ok(summary) => {
            for (name, value) in [
                ("queued", summary.queued),
                ("deferred", summary.deferred),
                ("held", summary.held),
            ] {
                metrics::gauge!("ferry_queue_recipients", "state" => name).set(value as f64);
            }
            for (domain, counts) in &summary.domains {
                metrics::gauge!("ferry_queue_recipients_by_destination", "destination" => domain.clone())
                    .set(counts.iter().sum::<u64>() as f64);
            }
            let oldest = summary.oldest.map_or(0.0, |o| {
                now.duration_since(o).unwrap_or_default().as_secs_f64()
            });
            metrics::gauge!("ferry_queue_oldest_message_seconds").set(oldest);
        }
        Err(e) => tracing::warn!(error = %e, "cannot read queue depth for metrics"),
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}

async fn authorize<S: Send + Sync + 'static>(
    State(state): State<Shared<S>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(token) = &state.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        // Compare without stopping at the first difference.
        let ok = given.is_some_and(|g| {
            g.len() == token.len()
                && g.bytes()
                    .zip(token.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        });
        if !ok {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                axum::Json(json!({ "error": "a valid bearer token is required" })),
            )
                .into_response();
        }
    }
    next.run(request).await
}

/// The admin interface's routes.
pub fn router<S: QueueInspect + Send + Sync + 'static>(state: AdminState<S>) -> Router {
    let state = Arc::new(state);
    Router::new()
        .route("/metrics", get(metrics::<S>))
        .route("/queue", get(list::<S>).delete(delete_many::<S>))
        .route("/queue/summary", get(summary::<S>))
        .route("/queue/flush", post(flush::<S>))
        .route("/queue/hold", post(hold_many::<S>))
        .route("/queue/release", post(release_many::<S>))
        .route("/queue/{id}", get(show::<S>).delete(delete_one::<S>))
        .route("/queue/{id}/hold", post(hold_one::<S>))
        .route("/queue/{id}/release", post(release_one::<S>))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            authorize::<S>,
        ))
        .with_state(state)
}

/// Refuses a non-loopback admin address without a token.
pub fn check_address(addr: SocketAddr, token: Option<&str>) -> Result<(), String> {
    if !addr.ip().is_loopback() && token.is_none() {
        return Err(format!(
            "--admin {addr}: not a loopback address; set a bearer token with --admin-token-env"
        ));
    }
    Ok(())
}

/// Serves the admin interface on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// How long `ferry queue` waits for the admin interface.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_without_a_token() {
        assert!(check_address("127.0.0.1:8025".parse().unwrap(), None).is_ok());
        assert!(check_address("[::1]:8025".parse().unwrap(), None).is_ok());
        assert!(check_address("0.0.0.0:8025".parse().unwrap(), None).is_err());
        assert!(check_address("0.0.0.0:8025".parse().unwrap(), Some("t")).is_ok());
    }

    #[test]
    fn filters_parse_from_the_query() {
        let params: HashMap<String, String> = [
            ("state", "deferred"),
            ("domain", "example.net"),
            ("older_than", "2h"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let filter = filter_from(&params).unwrap();
        assert_eq!(filter.state, Some(inspect::StateFilter::Deferred));
        assert_eq!(filter.domain.as_deref(), Some("example.net"));
        assert_eq!(filter.older_than, Some(Duration::from_secs(7200)));
        let bad: HashMap<String, String> = [("state".to_owned(), "stuck".to_owned())].into();
        assert!(filter_from(&bad).is_err());
    }
}
