//! Any worker answers for any tenant: an admin request for a shard this
//! worker does not own is sent over AMQP to the owner's lease queue
//! (default exchange, `mandatory`, `reply_to` = `amq.rabbitmq.reply-to`,
//! expiring at its deadline), and the owner's answer is relayed. The owner
//! runs the request through its own admin router ([`serve_inbox`]).
//!
//! Auth is checked where the HTTP request arrives. The bearer token never
//! crosses the broker: with `KEYSEAL_ADMIN_TOKEN` set, a forwarded request
//! carries an HMAC-SHA256 under the token of its time, id, method, path and
//! body, and the owner refuses one that is not signed, altered, or older
//! than [`MAX_AGE`] (so a copy cannot be replayed later).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, Response, StatusCode, header};
use bytes::Bytes;
use futures_util::StreamExt;
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::BodyExt;
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, Consumer};
use rsa::sha2::Sha256;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::warn;

use crate::broker::{self, lease_queue};
use crate::shard::ShardId;

/// Oldest a signed forwarded request may be when its owner reads it.
pub const MAX_AGE: Duration = Duration::from_secs(60);
/// Largest answer relayed (a record is at most 1 MiB).
const MAX_ANSWER_BYTES: usize = 4 << 20;
const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";
const METHOD: &str = "x-keyseal-method";
const URI: &str = "x-keyseal-uri";
const SENT_AT: &str = "x-keyseal-sent-at";
const SIGNATURE: &str = "x-keyseal-signature";
const STATUS: &str = "x-keyseal-status";
const RETRY_AFTER: &str = "x-keyseal-retry-after";

/// Marks a request that came through a lease queue (a request extension,
/// which no HTTP client can set): it is not forwarded again, and its
/// signature stood in for the bearer token.
#[derive(Debug, Clone, Copy)]
pub struct Forwarded;

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// No worker holds the shard's lease (the broker returned the request).
    #[error("no worker owns shard {0} right now")]
    NoOwner(ShardId),
    /// The owner did not answer before the deadline.
    #[error("the owner of shard {shard} did not answer within {deadline:?}")]
    Timeout {
        /// The shard.
        shard: ShardId,
        /// How long it was given.
        deadline: Duration,
    },
    /// The broker failed.
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    /// The connection went while the request waited for its answer.
    #[error("the connection to the broker closed while waiting for the answer")]
    Disconnected,
    /// The request body could not be read.
    #[error("reading the request body: {0}")]
    Body(String),
}

/// The requesting side: one connection, opened on first use and again
/// after a failure, with one channel that consumes its direct replies.
pub struct Forwarder {
    amqp_url: String,
    token: Option<String>,
    deadline: Duration,
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
}

struct Session {
    connection: Connection,
    channel: Channel,
    pending: Arc<Mutex<HashMap<String, oneshot::Sender<Delivery>>>>,
    broken: CancellationToken,
}

impl Forwarder {
    /// A forwarder on `amqp_url`, signing with `token` when set, waiting
    /// `deadline` for each answer.
    pub fn new(amqp_url: &str, token: Option<String>, deadline: Duration) -> Self {
        Self { amqp_url: amqp_url.to_owned(), token, deadline, session: tokio::sync::Mutex::new(None) }
    }

    /// Sends `request` to shard `shard`'s owner and returns its answer.
    pub async fn forward(&self, shard: ShardId, request: Request<Body>) -> Result<Response<Body>, ForwardError> {
        let (parts, body) = request.into_parts();
        let body = axum::body::to_bytes(body, MAX_ANSWER_BYTES).await.map_err(|e| ForwardError::Body(e.to_string()))?;
        let uri = parts.uri.path_and_query().map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
        let session = self.session().await?;
        let id = request_id();
        let sent_at = now_ms();
        let mut headers = FieldTable::default();
        headers.insert(METHOD.into(), AMQPValue::LongString(parts.method.as_str().into()));
        headers.insert(URI.into(), AMQPValue::LongString(uri.as_str().into()));
        headers.insert(SENT_AT.into(), AMQPValue::LongLongInt(sent_at));
        if let Some(token) = &self.token {
            let signature = sign(token, sent_at, &id, parts.method.as_str(), &uri, &body);
            headers.insert(SIGNATURE.into(), AMQPValue::LongString(signature.as_str().into()));
        }
        let mut properties = BasicProperties::default()
            .with_correlation_id(id.as_str().into())
            .with_reply_to(DIRECT_REPLY_TO.into())
            .with_expiration(self.deadline.as_millis().to_string().into())
            .with_headers(headers);
        if let Some(content_type) = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
            properties = properties.with_content_type(content_type.into());
        }
        let (answer, answered) = oneshot::channel();
        session.pending.lock().expect("pending lock").insert(id.clone(), answer);
        let result = self.exchange(&session, shard, &body, properties, answered).await;
        session.pending.lock().expect("pending lock").remove(&id);
        if matches!(result, Err(ForwardError::Broker(_) | ForwardError::Disconnected)) {
            self.session.lock().await.take();
        }
        result
    }

    async fn exchange(
        &self,
        session: &Session,
        shard: ShardId,
        body: &[u8],
        properties: BasicProperties,
        answered: oneshot::Receiver<Delivery>,
    ) -> Result<Response<Body>, ForwardError> {
        let options = BasicPublishOptions { mandatory: true, ..Default::default() };
        let queue = lease_queue(shard.0);
        let confirm =
            session.channel.basic_publish("".into(), queue.as_str().into(), options, body, properties).await?.await?;
        if confirm.take_message().is_some() {
            return Err(ForwardError::NoOwner(shard));
        }
        let delivery = tokio::select! {
            answer = tokio::time::timeout(self.deadline, answered) => match answer {
                Ok(Ok(delivery)) => delivery,
                // The reply consumer ended: the connection is gone.
                Ok(Err(_)) => return Err(ForwardError::Disconnected),
                Err(_) => return Err(ForwardError::Timeout { shard, deadline: self.deadline }),
            },
            () = session.broken.cancelled() => return Err(ForwardError::Disconnected),
        };
        Ok(answer_response(&delivery))
    }

    async fn session(&self) -> Result<Arc<Session>, ForwardError> {
        let mut current = self.session.lock().await;
        if let Some(session) = current.as_ref().filter(|s| !s.broken.is_cancelled()) {
            return Ok(session.clone());
        }
        let connection = broker::connect(&self.amqp_url, "forwarder").await?;
        let channel = connection.create_channel().await?;
        let options = BasicConsumeOptions { no_ack: true, ..Default::default() };
        let replies = channel.basic_consume(DIRECT_REPLY_TO.into(), "".into(), options, FieldTable::default()).await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        let session =
            Arc::new(Session { connection, channel, pending: Arc::default(), broken: CancellationToken::new() });
        tokio::spawn(dispatch_replies(replies, session.pending.clone(), session.broken.clone()));
        *current = Some(session.clone());
        Ok(session)
    }

    /// Closes the connection.
    pub async fn close(&self) {
        if let Some(session) = self.session.lock().await.take() {
            broker::close(&session.connection, "keyseal forwarder stopping").await;
        }
    }
}

async fn dispatch_replies(
    mut replies: Consumer,
    pending: Arc<Mutex<HashMap<String, oneshot::Sender<Delivery>>>>,
    broken: CancellationToken,
) {
    while let Some(Ok(delivery)) = replies.next().await {
        let Some(id) = delivery.properties.correlation_id().as_ref().map(ShortString::to_string) else { continue };
        if let Some(answer) = pending.lock().expect("pending lock").remove(&id) {
            let _ = answer.send(delivery);
        }
    }
    broken.cancel();
    pending.lock().expect("pending lock").clear();
}

/// The owning side: answers the requests arriving in shard `shard`'s lease
/// queue with `router` until `stop`. Requests that are unsigned or stale
/// (with a token set), expired or malformed get a 4xx answer.
pub async fn serve_inbox(
    channel: Channel,
    mut requests: Consumer,
    router: Router,
    token: Option<String>,
    stop: CancellationToken,
) {
    loop {
        let delivery = tokio::select! {
            () = stop.cancelled() => break,
            delivery = requests.next() => match delivery {
                Some(Ok(delivery)) => delivery,
                _ => break,
            },
        };
        let Some(reply_to) = delivery.properties.reply_to().clone() else { continue };
        let answer = answer(&delivery, &router, token.as_deref()).await;
        if let Err(e) = reply(&channel, &delivery, reply_to, answer).await {
            warn!(error = %e, "answering a forwarded request");
        }
    }
    broker::close_channel(&channel, "shard handed over").await;
}

async fn answer(delivery: &Delivery, router: &Router, token: Option<&str>) -> Response<Body> {
    let request = match unpack(delivery, token) {
        Ok(request) => request,
        Err((status, code, message)) => return refusal(status, code, message),
    };
    match router.clone().oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// Rebuilds the HTTP request from a delivery, checking its signature.
fn unpack(delivery: &Delivery, token: Option<&str>) -> Result<Request<Body>, (StatusCode, &'static str, String)> {
    let malformed =
        |what: &str| (StatusCode::BAD_REQUEST, "malformed_forward", format!("forwarded request without {what}"));
    let headers = delivery.properties.headers().as_ref().ok_or_else(|| malformed("headers"))?;
    let text = |name: &str| match headers.inner().get(name) {
        Some(AMQPValue::LongString(s)) => Some(s.to_string()),
        _ => None,
    };
    let method = text(METHOD).ok_or_else(|| malformed("a method"))?;
    let uri = text(URI).filter(|u| u.starts_with("/v1/")).ok_or_else(|| malformed("a /v1 path"))?;
    let id = delivery.properties.correlation_id().as_ref().map(ShortString::to_string).unwrap_or_default();
    if let Some(token) = token {
        let sent_at = match headers.inner().get(SENT_AT) {
            Some(AMQPValue::LongLongInt(at)) => *at,
            _ => return Err(malformed("a time")),
        };
        let signature = text(SIGNATURE).unwrap_or_default();
        if !verify(token, sent_at, &id, &method, &uri, &delivery.data, &signature) {
            return Err((
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the forwarded request is not signed with this deployment's token".into(),
            ));
        }
        if (now_ms() - sent_at).unsigned_abs() > MAX_AGE.as_millis() as u64 {
            return Err((StatusCode::UNAUTHORIZED, "unauthorized", "the forwarded request is too old".into()));
        }
    }
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| malformed("a valid method"))?;
    let mut request = Request::builder().method(method).uri(uri.as_str());
    if let Some(content_type) = delivery.properties.content_type() {
        request = request.header(header::CONTENT_TYPE, content_type.as_str());
    }
    let mut request = request.body(Body::from(delivery.data.clone())).map_err(|_| malformed("a valid path"))?;
    request.extensions_mut().insert(Forwarded);
    Ok(request)
}

async fn reply(
    channel: &Channel,
    delivery: &Delivery,
    reply_to: ShortString,
    answer: Response<Body>,
) -> Result<(), lapin::Error> {
    let (parts, body) = answer.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let mut headers = FieldTable::default();
    headers.insert(STATUS.into(), AMQPValue::LongUInt(u32::from(parts.status.as_u16())));
    if let Some(after) = parts.headers.get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()) {
        headers.insert(RETRY_AFTER.into(), AMQPValue::LongString(after.into()));
    }
    let mut properties = BasicProperties::default().with_headers(headers);
    if let Some(id) = delivery.properties.correlation_id() {
        properties = properties.with_correlation_id(id.clone());
    }
    if let Some(content_type) = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        properties = properties.with_content_type(content_type.into());
    }
    channel.basic_publish("".into(), reply_to, BasicPublishOptions::default(), &body, properties).await?;
    Ok(())
}

/// The HTTP answer carried by a reply.
fn answer_response(delivery: &Delivery) -> Response<Body> {
    let headers = delivery.properties.headers().as_ref();
    let field = |name: &str| headers.and_then(|h| h.inner().get(name));
    let status = match field(STATUS) {
        Some(AMQPValue::LongUInt(code)) => u16::try_from(*code).ok().and_then(|c| StatusCode::from_u16(c).ok()),
        _ => None,
    };
    let Some(status) = status else {
        return refusal(
            StatusCode::BAD_GATEWAY,
            "malformed_answer",
            "the shard's owner sent an answer without a status".into(),
        );
    };
    let mut response = Response::new(Body::from(delivery.data.clone()));
    *response.status_mut() = status;
    if let Some(content_type) =
        delivery.properties.content_type().as_ref().and_then(|ct| HeaderValue::from_str(ct.as_str()).ok())
    {
        response.headers_mut().insert(header::CONTENT_TYPE, content_type);
    }
    if let Some(AMQPValue::LongString(after)) = field(RETRY_AFTER) {
        if let Ok(after) = HeaderValue::from_str(&after.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, after);
        }
    }
    response
}

fn refusal(status: StatusCode, code: &str, message: String) -> Response<Body> {
    let body = serde_json::json!({"error": {"code": code, "message": message}});
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

type HmacSha256 = Hmac<Sha256>;

fn mac(token: &str, sent_at: i64, id: &str, method: &str, uri: &str, body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(token.as_bytes()).expect("HMAC takes keys of any length");
    for part in [sent_at.to_string().as_bytes(), id.as_bytes(), method.as_bytes(), uri.as_bytes()] {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    mac.update(body);
    mac
}

fn sign(token: &str, sent_at: i64, id: &str, method: &str, uri: &str, body: &[u8]) -> String {
    hex::encode(mac(token, sent_at, id, method, uri, body).finalize().into_bytes())
}

/// Checks a signature in constant time.
fn verify(token: &str, sent_at: i64, id: &str, method: &str, uri: &str, body: &[u8], signature: &str) -> bool {
    let Ok(signature) = hex::decode(signature) else { return false };
    mac(token, sent_at, id, method, uri, body).verify_slice(&signature).is_ok()
}

/// A random request id (the correlation id).
fn request_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS random source");
    hex::encode(bytes)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_binds_every_part_of_the_request() {
        let signature = sign("token", 1_000, "id", "DELETE", "/v1/tenants/acme/encryption", b"");
        assert!(verify("token", 1_000, "id", "DELETE", "/v1/tenants/acme/encryption", b"", &signature));
        for (token, at, id, method, uri, body) in [
            ("other", 1_000, "id", "DELETE", "/v1/tenants/acme/encryption", &b""[..]),
            ("token", 1_001, "id", "DELETE", "/v1/tenants/acme/encryption", b""),
            ("token", 1_000, "id2", "DELETE", "/v1/tenants/acme/encryption", b""),
            ("token", 1_000, "id", "PUT", "/v1/tenants/acme/encryption", b""),
            ("token", 1_000, "id", "DELETE", "/v1/tenants/acmf/encryption", b""),
            ("token", 1_000, "id", "DELETE", "/v1/tenants/acme/encryption", b"{}"),
        ] {
            assert!(!verify(token, at, id, method, uri, body, &signature), "{token} {at} {id} {method} {uri}");
        }
        assert!(!verify("token", 1_000, "id", "DELETE", "/v1/tenants/acme/encryption", b"", "zz"));
        assert!(!verify("token", 1_000, "id", "DELETE", "/v1/tenants/acme/encryption", b"", ""));
    }
}
