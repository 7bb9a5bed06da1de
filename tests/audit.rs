//! The key-use audit end to end, against the real RabbitMQ and the Key
//! Vault emulator over TLS: every root-key call (managed and customer,
//! wrap and unwrap) is an audit entry with its purpose and outcome, each
//! customer-key entry carries the `x-ms-client-request-id` the vault saw
//! (so it matches the vault's own AuditEvent log), entries page like a
//! listing and are relayed as `tenant.<t>.key_used`.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::byok::{WAIT, setup};
use common::*;
use futures_util::StreamExt;
use keyseal::broker::EVENTS_EXCHANGE;
use keyvault_emulator::RecoveryLevel;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde_json::Value;

const HOURS_49: Duration = Duration::from_secs(49 * 3600);

async fn get_json(url: &str) -> (u16, Value) {
    let response = reqwest::get(url).await.expect("admin API reachable");
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

/// Every audit entry of `tenant`, `limit` per page, and how many pages.
async fn audit_all(base: &str, tenant: &str, limit: usize) -> (Vec<Value>, usize) {
    let (mut entries, mut pages, mut after) = (Vec::new(), 0, String::new());
    loop {
        let (status, page) = get_json(&format!("{base}/v1/tenants/{tenant}/audit?limit={limit}{after}")).await;
        assert_eq!(status, 200, "{page}");
        entries.extend(page["entries"].as_array().expect("an entries array").iter().cloned());
        pages += 1;
        match page["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => return (entries, pages),
        }
    }
}

/// (rootKind, operation, purpose, outcome) of each entry.
fn kinds(entries: &[Value]) -> BTreeSet<(String, String, String, String)> {
    let field = |e: &Value, name: &str| e[name].as_str().unwrap_or_default().to_owned();
    entries
        .iter()
        .map(|e| (field(e, "rootKind"), field(e, "operation"), field(e, "purpose"), field(e, "outcome")))
        .collect()
}

fn kind(root: &str, operation: &str, purpose: &str) -> (String, String, String, String) {
    (root.to_owned(), operation.to_owned(), purpose.to_owned(), "ok".to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_root_key_call_is_audited_and_customer_calls_match_the_vaults_log() {
    // A short cache age: after the clock jumps 49 h every unwrapped key is
    // dropped, so the read below must unwrap through the vault again.
    let s = setup("audit", RecoveryLevel::Recoverable, None, &["--dek-cache-ttl", "1s"]).await;
    let connection = keyseal::broker::connect(&s.vhost.amqp_url(), "test").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    keyseal::broker::declare_topology(&connection, None).await.unwrap();
    channel.queue_declare("test.key_used".into(), QueueDeclareOptions::default(), FieldTable::default()).await.unwrap();
    channel
        .queue_bind(
            "test.key_used".into(),
            EVENTS_EXCHANGE.into(),
            "tenant.acme.key_used".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    s.rsa_key("acme-key").await;
    let key_uri = s.vault.key_uri("acme-key");
    let records = s.publish("acme", "rec-", 20).await;
    let (status, body) = s.enable("acme", &key_uri).await;
    assert_eq!(status, 200, "{body}");
    s.clock.advance(HOURS_49);
    assert_eq!(s.sweep().await["seal"]["sealed"], 20);
    s.clock.advance(Duration::from_secs(5));
    wait_until("the unwrapped keys to age out", WAIT, || async {
        s.worker.only().shard.keyring.cached_keys_of("acme") == 0
    })
    .await;
    s.assert_readable(&records[..1]).await;

    let wanted = [
        kind("managed", "wrap", "store"),
        kind("customer", "wrap", "validate"),
        kind("customer", "unwrap", "validate"),
        kind("managed", "unwrap", "seal"),
        kind("customer", "wrap", "seal"),
        kind("customer", "unwrap", "read"),
    ];
    let deadline = std::time::Instant::now() + WAIT;
    let entries = loop {
        let (entries, _) = audit_all(&s.base, "acme", 1000).await;
        let seen = kinds(&entries);
        if wanted.iter().all(|k| seen.contains(k)) {
            break entries;
        }
        assert!(std::time::Instant::now() < deadline, "not every kind of call was audited: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let (paged, pages) = audit_all(&s.base, "acme", 2).await;
    assert!(pages > 2, "pages of 2 follow one another");
    assert_eq!(paged[..entries.len()], entries[..], "paging returns the same entries in the same order");
    let sequences: Vec<u64> = entries.iter().map(|e| e["sequence"].as_u64().unwrap()).collect();
    assert!(sequences.is_sorted(), "oldest first: {sequences:?}");

    let vault_log = s.vault.emulator.audit_log();
    for entry in &entries {
        assert!(entry["durationMs"].as_f64().is_some_and(|ms| ms >= 0.0), "{entry}");
        match entry["rootKind"].as_str() {
            Some("customer") => {
                let id = entry["clientRequestId"].as_str().expect("a customer-key call names its request id");
                let seen = vault_log.iter().find(|event| event.correlation_id == id);
                let seen = seen.unwrap_or_else(|| panic!("the vault never saw request {id}: {entry}"));
                let operation = if entry["operation"] == "wrap" { "KeyWrap" } else { "KeyUnwrap" };
                assert_eq!(seen.operation_name, operation, "{entry}");
                let root = entry["rootKeyId"].as_str().unwrap();
                assert!(root.starts_with(&key_uri) && seen.id.starts_with(&key_uri), "{entry} vs {}", seen.id);
            }
            Some("managed") => {
                assert!(entry["clientRequestId"].is_null(), "nothing leaves the process: {entry}");
                assert!(entry["rootKeyId"].as_str().unwrap().starts_with("managed/v"), "{entry}");
            }
            other => panic!("unknown root kind {other:?}"),
        }
        let data_key = entry["dataKeyId"].as_str();
        match entry["purpose"].as_str() {
            Some("validate" | "canary") => assert!(data_key.is_none(), "a throwaway key: {entry}"),
            _ => assert!(data_key.is_some_and(|id| id.starts_with("hot/") || id.starts_with("sealed/")), "{entry}"),
        }
    }

    // Relayed like every event.
    let mut relayed = channel
        .basic_consume("test.key_used".into(), "t".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .unwrap();
    let delivery = tokio::time::timeout(WAIT, relayed.next()).await.expect("a key_used event").unwrap().unwrap();
    delivery.ack(BasicAckOptions::default()).await.unwrap();

    for (query, code) in
        [("limit=1001", "invalid_limit"), ("after=%21%21", "invalid_cursor"), ("color=red", "invalid_query")]
    {
        let (status, body) = get_json(&format!("{}/v1/tenants/acme/audit?{query}", s.base)).await;
        assert_eq!((status, body["error"]["code"].as_str()), (400, Some(code)), "{query}: {body}");
    }
    let (status, body) = get_json(&format!("{}/v1/tenants/nobody/audit", s.base)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("tenant_not_found")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_customer_key_call_is_audited_with_its_outcome() {
    let s = setup("audit-failed", RecoveryLevel::Recoverable, None, &["--dek-cache-ttl", "1s"]).await;
    s.rsa_key("acme-key").await;
    let key_uri = s.vault.key_uri("acme-key");
    let records = s.publish("acme", "rec-", 3).await;
    assert_eq!(s.enable("acme", &key_uri).await.0, 200);
    s.clock.advance(HOURS_49);
    assert_eq!(s.sweep().await["seal"]["sealed"], 3);
    s.clock.advance(Duration::from_secs(5));
    wait_until("the unwrapped keys to age out", WAIT, || async {
        s.worker.only().shard.keyring.cached_keys_of("acme") == 0
    })
    .await;
    s.vault.patch("acme-key", serde_json::json!({"attributes": {"enabled": false}})).await;
    let (status, _) = get_record(&s.base, "acme", &records[0].record_id).await;
    assert_eq!(status, 503, "the read fails while the key is disabled");

    wait_until("the failed unwrap in the audit", WAIT, || async {
        let (entries, _) = audit_all(&s.base, "acme", 1000).await;
        entries.iter().any(|e| {
            e["purpose"] == "read"
                && e["operation"] == "unwrap"
                && e["outcome"] == "key_disabled"
                && e["clientRequestId"].is_string()
        })
    })
    .await;
}
