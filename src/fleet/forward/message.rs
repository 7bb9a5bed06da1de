//! The wire form of a forwarded admin request and of its answer: AMQP
//! headers and properties, and what each signature covers. Both sides go
//! through here, so what is signed and what is checked cannot drift apart.
//!
//! A request's signature covers the shard it is addressed to, its method,
//! path and query, content type, body, when it was sent and when it
//! expires, its correlation id and the queue its answer goes to. An
//! answer's covers the request's correlation id, its status, content type,
//! `Retry-After` and body. [`unpack_request`] and [`unpack_answer`] are
//! pure, so they are fuzzed directly (`fuzz/fuzz_targets/forward_unpack.rs`).

use std::time::Duration;

use axum::http::{StatusCode, header};
use bytes::Bytes;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};

use super::key::ForwardKey;
use crate::placement::ShardId;

const METHOD: &str = "x-keyseal-method";
const URI: &str = "x-keyseal-uri";
const SENT_AT: &str = "x-keyseal-sent-at";
const EXPIRES_AT: &str = "x-keyseal-expires-at";
const SIGNATURE: &str = "x-keyseal-signature";
const STATUS: &str = "x-keyseal-status";
const RETRY_AFTER: &str = "x-keyseal-retry-after";

/// How far a sender's clock may run ahead of the owner's.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);
/// The longest a forwarded request may live (`--forward-timeout` beyond
/// this is refused by owners).
pub const MAX_LIFETIME: Duration = Duration::from_secs(600);
/// The longest value an AMQP short string (a content type, a correlation
/// id) can hold.
pub const MAX_SHORT_STRING: usize = 255;

/// A forwarded request, as signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardedRequest {
    /// The shard whose owner it is addressed to.
    pub shard: ShardId,
    /// The HTTP method.
    pub method: String,
    /// Path and query; always under `/v1/`.
    pub uri: String,
    /// The client's `Content-Type`, if any (at most [`MAX_SHORT_STRING`] bytes).
    pub content_type: Option<String>,
    /// When the forwarding worker sent it (Unix ms).
    pub sent_at_ms: i64,
    /// When its sender stops waiting for the answer (Unix ms).
    pub expires_at_ms: i64,
    /// The correlation id its answer carries back.
    pub id: String,
    /// The queue its answer goes to.
    pub reply_to: String,
    /// The request body.
    pub body: Bytes,
}

/// The answer to a forwarded request, as signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardedAnswer {
    /// The request's correlation id.
    pub id: String,
    /// The HTTP status.
    pub status: StatusCode,
    /// Its `Content-Type`, if any.
    pub content_type: Option<String>,
    /// Its `Retry-After`, if any.
    pub retry_after: Option<String>,
    /// The answer body.
    pub body: Bytes,
}

/// Why a request or an answer is not accepted: an HTTP status, a stable
/// code and what went wrong (never a secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The status to answer with.
    pub status: StatusCode,
    /// The stable error code.
    pub code: &'static str,
    /// What is wrong.
    pub message: String,
    /// Whether the signature was checked and held, so the correlation id
    /// and reply queue are the sender's own and may be answered: an
    /// unsigned request is never answered, or anyone could make an owner
    /// publish to any queue.
    pub signed: bool,
}

impl Refusal {
    /// A refusal of a request whose signature held (or of an answer).
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), signed: true }
    }

    fn unsigned(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { signed: false, ..Self::new(status, code, message) }
    }

    fn malformed(what: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed_forward", format!("forwarded request without {what}"))
    }

    fn unsigned_malformed(what: &str) -> Self {
        Self { signed: false, ..Self::malformed(what) }
    }

    /// Whether the sender should get this refusal as an answer: signed,
    /// and not expired (an expired request's sender no longer listens).
    pub fn is_answerable(&self) -> bool {
        self.signed && !self.is_expired()
    }

    /// Whether the request's sender has given up on it: it is dropped
    /// unanswered instead of run.
    fn is_expired(&self) -> bool {
        self.code == "forward_expired"
    }
}

impl ForwardedRequest {
    fn signed_parts(&self) -> [Vec<u8>; 10] {
        [
            b"keyseal forwarded request v1".to_vec(),
            self.shard.0.to_be_bytes().to_vec(),
            self.method.as_bytes().to_vec(),
            self.uri.as_bytes().to_vec(),
            self.content_type.as_deref().unwrap_or("").as_bytes().to_vec(),
            self.sent_at_ms.to_be_bytes().to_vec(),
            self.expires_at_ms.to_be_bytes().to_vec(),
            self.id.as_bytes().to_vec(),
            self.reply_to.as_bytes().to_vec(),
            self.body.to_vec(),
        ]
    }

    /// Its AMQP properties, signed with `key`: publish them with the body
    /// to the shard's lease queue.
    pub fn properties(&self, key: &ForwardKey) -> BasicProperties {
        let parts = self.signed_parts();
        let signature = hex::encode(key.sign(&parts.each_ref().map(Vec::as_slice)));
        let mut headers = FieldTable::default();
        headers.insert(METHOD.into(), AMQPValue::LongString(self.method.as_str().into()));
        headers.insert(URI.into(), AMQPValue::LongString(self.uri.as_str().into()));
        headers.insert(SENT_AT.into(), AMQPValue::LongLongInt(self.sent_at_ms));
        headers.insert(EXPIRES_AT.into(), AMQPValue::LongLongInt(self.expires_at_ms));
        headers.insert(SIGNATURE.into(), AMQPValue::LongString(signature.as_str().into()));
        let lifetime = (self.expires_at_ms - self.sent_at_ms).max(1);
        let mut properties = BasicProperties::default()
            .with_correlation_id(self.id.as_str().into())
            .with_reply_to(self.reply_to.as_str().into())
            .with_expiration(lifetime.to_string().into())
            .with_headers(headers);
        if let Some(content_type) = &self.content_type {
            properties = properties.with_content_type(content_type.as_str().into());
        }
        properties
    }
}

/// Rebuilds and checks a request that arrived in shard `shard`'s lease
/// queue at `now_ms`: signed with `key` for this very shard, sent no later
/// than [`MAX_CLOCK_SKEW`] from now, not expired, a `/v1/` path.
pub fn unpack_request(
    shard: ShardId,
    properties: &BasicProperties,
    body: &[u8],
    key: &ForwardKey,
    now_ms: i64,
) -> Result<ForwardedRequest, Refusal> {
    let missing = Refusal::unsigned_malformed;
    let headers = properties.headers().as_ref().ok_or_else(|| missing("headers"))?;
    let request = ForwardedRequest {
        shard,
        method: long_string(headers, METHOD).ok_or_else(|| missing("a method"))?,
        uri: long_string(headers, URI).ok_or_else(|| missing("a path"))?,
        content_type: short_string(properties.content_type()),
        sent_at_ms: long_long(headers, SENT_AT).ok_or_else(|| missing("a time"))?,
        expires_at_ms: long_long(headers, EXPIRES_AT).ok_or_else(|| missing("a deadline"))?,
        id: short_string(properties.correlation_id()).ok_or_else(|| missing("a correlation id"))?,
        reply_to: short_string(properties.reply_to()).ok_or_else(|| missing("a reply queue"))?,
        body: Bytes::copy_from_slice(body),
    };
    let signature = long_string(headers, SIGNATURE).and_then(|s| hex::decode(s).ok()).unwrap_or_default();
    let parts = request.signed_parts();
    if !key.verify(&parts.each_ref().map(Vec::as_slice), &signature) {
        return Err(Refusal::unsigned(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the forwarded request is not signed by a worker of this deployment for this shard",
        ));
    }
    if !request.uri.starts_with("/v1/") {
        return Err(Refusal::malformed("a /v1 path"));
    }
    let lifetime = request.expires_at_ms.saturating_sub(request.sent_at_ms);
    if !(0..=MAX_LIFETIME.as_millis() as i64).contains(&lifetime) {
        return Err(Refusal::malformed("a deadline within ten minutes of its time"));
    }
    if request.sent_at_ms > now_ms.saturating_add(MAX_CLOCK_SKEW.as_millis() as i64) {
        return Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the forwarded request was sent in the future: are the workers' clocks in sync?",
        ));
    }
    if request.expires_at_ms < now_ms {
        return Err(Refusal::new(StatusCode::GATEWAY_TIMEOUT, "forward_expired", "its sender stopped waiting"));
    }
    Ok(request)
}

impl ForwardedAnswer {
    fn signed_parts(&self) -> [Vec<u8>; 6] {
        [
            b"keyseal forwarded answer v1".to_vec(),
            self.id.as_bytes().to_vec(),
            self.status.as_u16().to_be_bytes().to_vec(),
            self.content_type.as_deref().unwrap_or("").as_bytes().to_vec(),
            self.retry_after.as_deref().unwrap_or("").as_bytes().to_vec(),
            self.body.to_vec(),
        ]
    }

    /// Its AMQP properties, signed with `key`.
    pub fn properties(&self, key: &ForwardKey) -> BasicProperties {
        let parts = self.signed_parts();
        let signature = hex::encode(key.sign(&parts.each_ref().map(Vec::as_slice)));
        let mut headers = FieldTable::default();
        headers.insert(STATUS.into(), AMQPValue::LongUInt(u32::from(self.status.as_u16())));
        headers.insert(SIGNATURE.into(), AMQPValue::LongString(signature.as_str().into()));
        if let Some(after) = &self.retry_after {
            headers.insert(RETRY_AFTER.into(), AMQPValue::LongString(after.as_str().into()));
        }
        let mut properties =
            BasicProperties::default().with_correlation_id(self.id.as_str().into()).with_headers(headers);
        if let Some(content_type) = &self.content_type {
            properties = properties.with_content_type(content_type.as_str().into());
        }
        properties
    }

    /// The answer an owner sends for `response`'s parts: content types and
    /// `Retry-After` values that fit no short string are left out.
    pub fn new(id: String, status: StatusCode, headers: &axum::http::HeaderMap, body: Bytes) -> Self {
        let text = |name| headers.get(name).and_then(|v: &axum::http::HeaderValue| v.to_str().ok()).map(str::to_owned);
        Self {
            id,
            status,
            content_type: text(header::CONTENT_TYPE).filter(|ct| ct.len() <= MAX_SHORT_STRING),
            retry_after: text(header::RETRY_AFTER),
            body,
        }
    }

    /// The HTTP response it stands for.
    pub fn into_response(self) -> axum::response::Response {
        let mut response = axum::response::Response::new(axum::body::Body::from(self.body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        if let Some(ct) = self.content_type.and_then(|ct| ct.parse().ok()) {
            headers.insert(header::CONTENT_TYPE, ct);
        }
        if let Some(after) = self.retry_after.and_then(|after| after.parse().ok()) {
            headers.insert(header::RETRY_AFTER, after);
        }
        response
    }
}

/// Rebuilds and checks the answer to request `id`: signed with `key` by
/// the owner, for this request. Anything else is refused, so a queue
/// squatter cannot answer for a shard.
pub fn unpack_answer(
    id: &str,
    properties: &BasicProperties,
    body: &[u8],
    key: &ForwardKey,
) -> Result<ForwardedAnswer, Refusal> {
    let forged = || {
        Refusal::new(
            StatusCode::BAD_GATEWAY,
            "forged_answer",
            "the answer is not signed by a worker of this deployment",
        )
    };
    let headers = properties.headers().as_ref().ok_or_else(forged)?;
    let status = match headers.inner().get(STATUS) {
        Some(AMQPValue::LongUInt(code)) => u16::try_from(*code).ok().and_then(|c| StatusCode::from_u16(c).ok()),
        _ => None,
    };
    let answer = ForwardedAnswer {
        id: id.to_owned(),
        status: status.ok_or_else(forged)?,
        content_type: short_string(properties.content_type()),
        retry_after: long_string(headers, RETRY_AFTER),
        body: Bytes::copy_from_slice(body),
    };
    let signature = long_string(headers, SIGNATURE).and_then(|s| hex::decode(s).ok()).unwrap_or_default();
    let parts = answer.signed_parts();
    if key.verify(&parts.each_ref().map(Vec::as_slice), &signature) { Ok(answer) } else { Err(forged()) }
}

fn long_string(headers: &FieldTable, name: &str) -> Option<String> {
    match headers.inner().get(name) {
        Some(AMQPValue::LongString(s)) => Some(s.to_string()),
        _ => None,
    }
}

fn long_long(headers: &FieldTable, name: &str) -> Option<i64> {
    match headers.inner().get(name) {
        Some(AMQPValue::LongLongInt(n)) => Some(*n),
        _ => None,
    }
}

fn short_string(value: &Option<ShortString>) -> Option<String> {
    value.as_ref().map(ShortString::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000;

    fn request() -> ForwardedRequest {
        ForwardedRequest {
            shard: ShardId(3),
            method: "DELETE".into(),
            uri: "/v1/tenants/acme?confirm=acme".into(),
            content_type: Some("application/json".into()),
            sent_at_ms: NOW,
            expires_at_ms: NOW + 30_000,
            id: "id-1".into(),
            reply_to: "amq.gen-reply".into(),
            body: Bytes::from_static(b"{}"),
        }
    }

    fn key() -> ForwardKey {
        ForwardKey::from_secrets(b"root secret", None)
    }

    #[test]
    fn a_signed_request_unpacks_as_sent() {
        let sent = request();
        let got = unpack_request(ShardId(3), &sent.properties(&key()), &sent.body, &key(), NOW + 5).unwrap();
        assert_eq!(got, sent);
    }

    #[test]
    fn every_signed_part_is_bound() {
        let sent = request();
        let properties = sent.properties(&key());
        let refused = |shard, properties: &BasicProperties, body: &[u8], key: &ForwardKey| {
            unpack_request(shard, properties, body, key, NOW).unwrap_err().code
        };
        assert_eq!(refused(ShardId(4), &properties, &sent.body, &key()), "unauthorized", "re-addressed");
        assert_eq!(refused(ShardId(3), &properties, b"{\"x\":1}", &key()), "unauthorized", "body altered");
        let other_key = ForwardKey::from_secrets(b"root secret", Some("token"));
        assert_eq!(refused(ShardId(3), &properties, &sent.body, &other_key), "unauthorized", "another deployment");
        let altered = [
            properties.clone().with_reply_to("amq.gen-thief".into()),
            properties.clone().with_correlation_id("id-2".into()),
            properties.clone().with_content_type("text/plain".into()),
            BasicProperties::default()
                .with_correlation_id("id-1".into())
                .with_reply_to("amq.gen-reply".into())
                .with_headers(properties.headers().clone().unwrap()),
        ];
        for properties in &altered {
            assert_eq!(refused(ShardId(3), properties, &sent.body, &key()), "unauthorized", "{properties:?}");
        }
        for header in [METHOD, URI, SENT_AT, EXPIRES_AT] {
            let mut headers = properties.headers().clone().unwrap();
            let value = match headers.inner().get(header).unwrap() {
                AMQPValue::LongString(_) => AMQPValue::LongString("/v1/tenants/other".into()),
                _ => AMQPValue::LongLongInt(NOW + 1),
            };
            headers.insert(header.into(), value);
            let properties = properties.clone().with_headers(headers);
            assert_eq!(refused(ShardId(3), &properties, &sent.body, &key()), "unauthorized", "{header}");
        }
        let unsigned = BasicProperties::default();
        assert_eq!(refused(ShardId(3), &unsigned, &sent.body, &key()), "malformed_forward");
        for (shard, properties) in [(ShardId(4), &properties), (ShardId(3), &unsigned)] {
            let refusal = unpack_request(shard, properties, &sent.body, &key(), NOW).unwrap_err();
            assert!(!refusal.is_answerable(), "an unchecked reply queue is never answered: {refusal:?}");
        }
    }

    #[test]
    fn time_bounds_hold() {
        let sent = request();
        let properties = sent.properties(&key());
        let at = |now| unpack_request(ShardId(3), &properties, &sent.body, &key(), now).map(|_| ()).map_err(|r| r.code);
        assert_eq!(at(NOW + 30_000), Ok(()));
        assert_eq!(at(NOW + 30_001), Err("forward_expired"));
        assert!(
            !unpack_request(ShardId(3), &properties, &sent.body, &key(), NOW + 30_001).unwrap_err().is_answerable()
        );
        assert_eq!(at(NOW - MAX_CLOCK_SKEW.as_millis() as i64 - 1), Err("unauthorized"), "from the future");
        let eternal = ForwardedRequest { expires_at_ms: NOW + MAX_LIFETIME.as_millis() as i64 + 1, ..request() };
        let got = unpack_request(ShardId(3), &eternal.properties(&key()), &eternal.body, &key(), NOW);
        assert_eq!(got.unwrap_err().code, "malformed_forward");
        let outside = ForwardedRequest { uri: "/metrics".into(), ..request() };
        let got = unpack_request(ShardId(3), &outside.properties(&key()), &outside.body, &key(), NOW);
        assert_eq!(got.unwrap_err().code, "malformed_forward");
    }

    #[test]
    fn answers_are_checked_against_their_request_and_the_key() {
        let answer = ForwardedAnswer {
            id: "id-1".into(),
            status: StatusCode::OK,
            content_type: Some("application/octet-stream".into()),
            retry_after: None,
            body: Bytes::from_static(b"payload"),
        };
        let properties = answer.properties(&key());
        assert_eq!(unpack_answer("id-1", &properties, b"payload", &key()).unwrap(), answer);
        assert_eq!(unpack_answer("id-2", &properties, b"payload", &key()).unwrap_err().code, "forged_answer");
        assert_eq!(unpack_answer("id-1", &properties, b"forged", &key()).unwrap_err().code, "forged_answer");
        let squatter = ForwardKey::from_secrets(b"guess", None);
        assert_eq!(
            unpack_answer("id-1", &answer.properties(&squatter), b"payload", &key()).unwrap_err().code,
            "forged_answer"
        );
        assert_eq!(
            unpack_answer("id-1", &BasicProperties::default(), b"payload", &key()).unwrap_err().code,
            "forged_answer"
        );
    }
}
