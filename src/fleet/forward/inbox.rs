//! The owning side: each owned shard answers the requests arriving in its
//! lease queue. Requests run concurrently, up to
//! [`MAX_CONCURRENT_REQUESTS`] per shard, each in its own task, so one
//! slow request (a read against a slow vault, an erasure, a sweep) never
//! holds up another tenant's; the broker sends at most [`PREFETCH`]
//! unacknowledged requests ahead. A request is checked before it runs
//! (signed for this shard, not a replay, not past its deadline: a request
//! whose sender gave up is dropped unanswered), and a panic while serving
//! it becomes a 500 answer and a counted, logged event (the admin router's
//! outermost layer), never a dead inbox.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicPublishOptions};
use lapin::{Channel, Consumer};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::warn;

use super::Forwarded;
use super::key::ForwardKey;
use super::message::{ForwardedAnswer, Refusal, unpack_request};
use super::replay::{Admission, ReplayGuard};
use super::requester::now_ms;
use crate::broker::{self, PROBE_TYPE};
use crate::placement::ShardId;
use crate::telemetry::happenings::{Emit, ForwardedRequestRefused};

/// Most forwarded requests one shard serves at once.
pub const MAX_CONCURRENT_REQUESTS: usize = 16;
/// Unacknowledged requests the broker sends one shard's inbox ahead.
pub const PREFETCH: u16 = 2 * MAX_CONCURRENT_REQUESTS as u16;

/// What every inbox of a worker shares.
#[derive(Clone)]
pub struct InboxContext {
    /// The worker's admin routes, which serve each request.
    pub router: Router,
    /// The deployment's key, which checks requests and signs answers.
    pub key: ForwardKey,
    /// The ids of requests accepted and not yet expired.
    pub replays: Arc<ReplayGuard>,
}

/// Answers the requests in shard `shard`'s lease queue (`requests`, with
/// manual acks and a prefetch of [`PREFETCH`] on `channel`) until `stop`;
/// requests still running then are abandoned (their senders time out).
pub async fn serve_inbox(
    shard: ShardId,
    channel: Channel,
    mut requests: Consumer,
    context: InboxContext,
    stop: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_REQUESTS));
    let mut running = JoinSet::new();
    loop {
        let delivery = tokio::select! {
            () = stop.cancelled() => break,
            delivery = requests.next() => match delivery {
                Some(Ok(delivery)) => delivery,
                _ => break,
            },
        };
        while running.try_join_next().is_some() {}
        let permit = tokio::select! {
            () = stop.cancelled() => break,
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let (context, channel) = (context.clone(), channel.clone());
        running.spawn(async move {
            serve(shard, &channel, delivery, &context).await;
            drop(permit);
        });
    }
    running.shutdown().await;
    broker::close_channel(&channel, "shard handed over").await;
}

/// Answers one request, then acks it. A lease probe (another worker
/// asking whether the lease queue exists) is only acked: it asks nothing.
async fn serve(shard: ShardId, channel: &Channel, delivery: Delivery, context: &InboxContext) {
    if !is_probe(&delivery) {
        answer(shard, channel, &delivery, context).await;
    }
    if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
        warn!(error = %e, "acknowledging a forwarded request");
    }
}

/// Whether `delivery` is a lease probe: empty, of type [`PROBE_TYPE`].
fn is_probe(delivery: &Delivery) -> bool {
    delivery.data.is_empty() && delivery.properties.kind().as_ref().is_some_and(|kind| kind.as_str() == PROBE_TYPE)
}

/// Checks and runs one request and sends its answer, or counts why not.
async fn answer(shard: ShardId, channel: &Channel, delivery: &Delivery, context: &InboxContext) {
    let (answer, refused_for) = match admit(shard, delivery, context) {
        Ok((request, id, reply_to)) => (Some((run(&context.router, request).await, id, reply_to)), None),
        Err((refusal, id, reply_to)) => {
            let answer = refusal.is_answerable().then(|| (refused(&refusal), id, reply_to));
            (answer, Some(refusal.code))
        }
    };
    if let Some((response, id, reply_to)) = answer {
        if let Err(e) = reply(channel, context, id, reply_to, response).await {
            warn!(error = %e, "answering a forwarded request");
        }
    }
    // Counted after any answer is sent, so whoever sees the count move
    // has the answer (if there is one) ahead of later ones.
    if let Some(reason) = refused_for {
        ForwardedRequestRefused { shard, reason }.emit();
    }
}

/// A request to run, or a refusal to send: with its correlation id and
/// reply queue (only used when the refusal is answerable, i.e. signed).
type Admitted = (Request<Body>, String, String);
type Refused = (Refusal, String, String);

/// The HTTP request a delivery carries, once checked; else why not.
fn admit(shard: ShardId, delivery: &Delivery, context: &InboxContext) -> Result<Admitted, Refused> {
    let text = |value: &Option<lapin::types::ShortString>| value.as_ref().map(ToString::to_string).unwrap_or_default();
    let (id, reply_to) = (text(delivery.properties.correlation_id()), text(delivery.properties.reply_to()));
    let now = now_ms();
    let checked = unpack_request(shard, &delivery.properties, &delivery.data, &context.key, now);
    let request = checked.map_err(|refusal| (refusal, id.clone(), reply_to.clone()))?;
    let refuse = |status, code, message: &str| Err((Refusal::new(status, code, message), id.clone(), reply_to.clone()));
    match context.replays.admit(&request.id, request.expires_at_ms, now) {
        Admission::Fresh => {}
        Admission::Replayed => {
            return refuse(StatusCode::UNAUTHORIZED, "replayed", "this forwarded request was served already");
        }
        Admission::Full => {
            return refuse(StatusCode::SERVICE_UNAVAILABLE, "owner_busy", "too many forwarded requests at once");
        }
    }
    let mut http = Request::builder().method(request.method.as_str()).uri(request.uri.as_str());
    if let Some(content_type) = &request.content_type {
        http = http.header(header::CONTENT_TYPE, content_type.as_str());
    }
    let Ok(mut http) = http.body(Body::from(request.body)) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "malformed_forward",
            "forwarded request with an invalid method or path",
        );
    };
    http.extensions_mut().insert(Forwarded);
    Ok((http, request.id, request.reply_to))
}

/// Runs `request` through the admin routes, whose outermost layer turns
/// a panic into a 500 answer (`admin::contain_panics`).
async fn run(router: &Router, request: Request<Body>) -> axum::response::Response {
    match router.clone().oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

fn refused(refusal: &Refusal) -> axum::response::Response {
    let body = serde_json::json!({"error": {"code": refusal.code, "message": refusal.message}});
    let mut response = axum::response::Response::new(Body::from(body.to_string()));
    *response.status_mut() = refusal.status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    response
}

async fn reply(
    channel: &Channel,
    context: &InboxContext,
    id: String,
    reply_to: String,
    response: axum::response::Response,
) -> Result<(), lapin::Error> {
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map(|collected| collected.to_bytes()).unwrap_or_else(|_| Bytes::new());
    let answer = ForwardedAnswer::new(id, parts.status, &parts.headers, body);
    let properties = answer.properties(&context.key);
    channel
        .basic_publish("".into(), reply_to.as_str().into(), BasicPublishOptions::default(), &answer.body, properties)
        .await?;
    Ok(())
}
