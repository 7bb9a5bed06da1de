//! A forwarded admin request as it arrives in a lease queue, from anyone
//! who can publish: whatever the headers, properties and body, unpacking
//! answers without panicking; nothing unsigned is accepted; and a refusal
//! is answerable (its reply queue used) only if the signature held.
#![no_main]

use arbitrary::Arbitrary;
use keyseal::placement::ShardId;
use keyseal::fleet::forward::ForwardKey;
use keyseal::fleet::forward::message::{ForwardedRequest, unpack_request};
use lapin::BasicProperties;
use lapin::types::AMQPValue;
use libfuzzer_sys::fuzz_target;

const NOW: i64 = 1_800_000_000_000;

#[derive(Debug, Arbitrary)]
enum Value {
    Text(String),
    Number(i64),
    Unsigned(u32),
    Bool(bool),
}

#[derive(Debug, Arbitrary)]
struct Input {
    headers: Vec<(String, Value)>,
    content_type: Option<String>,
    correlation_id: Option<String>,
    reply_to: Option<String>,
    body: Vec<u8>,
    /// Sign a well-formed request made of the fields above, then alter it.
    sign: Option<Signed>,
}

#[derive(Debug, Arbitrary)]
struct Signed {
    method: String,
    uri: String,
    age_ms: i32,
    lifetime_ms: u32,
    shard: u8,
    tamper_body: bool,
}

fn short(text: Option<String>) -> Option<String> {
    text.map(|t| t.chars().take(100).collect())
}

fuzz_target!(|input: Input| {
    let key = ForwardKey::from_secrets(b"fuzzed deployment", None);
    let mut properties = match &input.sign {
        Some(signed) => ForwardedRequest {
            shard: ShardId(u32::from(signed.shard % 4)),
            method: signed.method.clone(),
            uri: signed.uri.clone(),
            content_type: short(input.content_type.clone()),
            sent_at_ms: NOW - i64::from(signed.age_ms),
            expires_at_ms: NOW - i64::from(signed.age_ms) + i64::from(signed.lifetime_ms),
            id: short(input.correlation_id.clone()).unwrap_or_default(),
            reply_to: short(input.reply_to.clone()).unwrap_or_default(),
            body: input.body.clone().into(),
        }
        .properties(&key),
        None => BasicProperties::default(),
    };
    let mut headers = properties.headers().clone().unwrap_or_default();
    for (name, value) in input.headers.iter().take(16) {
        let value = match value {
            Value::Text(text) => AMQPValue::LongString(text.as_str().into()),
            Value::Number(n) => AMQPValue::LongLongInt(*n),
            Value::Unsigned(n) => AMQPValue::LongUInt(*n),
            Value::Bool(b) => AMQPValue::Boolean(*b),
        };
        headers.insert(name.chars().take(100).collect::<String>().as_str().into(), value);
    }
    properties = properties.with_headers(headers);
    if input.sign.is_none() {
        if let Some(ct) = short(input.content_type) {
            properties = properties.with_content_type(ct.as_str().into());
        }
        if let Some(id) = short(input.correlation_id) {
            properties = properties.with_correlation_id(id.as_str().into());
        }
        if let Some(to) = short(input.reply_to) {
            properties = properties.with_reply_to(to.as_str().into());
        }
    }
    let mut body = input.body;
    if input.sign.as_ref().is_some_and(|s| s.tamper_body) {
        body.push(0);
    }
    match unpack_request(ShardId(0), &properties, &body, &key, NOW) {
        Ok(request) => {
            assert!(input.sign.is_some(), "an unsigned request was accepted");
            assert!(request.uri.starts_with("/v1/"));
            assert!(request.expires_at_ms >= NOW);
            assert_eq!(request.shard, ShardId(0));
        }
        Err(refusal) => {
            if refusal.is_answerable() {
                assert!(input.sign.is_some(), "an unsigned request would be answered: {refusal:?}");
            }
        }
    }
});
