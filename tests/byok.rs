//! Bring your own key, end to end over TLS: the official Azure Key Vault
//! client in the worker against the emulator, real RabbitMQ, real RocksDB.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::byok::setup;
use common::vault::{Vault, args};
use common::*;
use keyseal::broker::publish::synthetic;
use keyseal::clock::ManualClock;
use keyseal::proto::v1::root_key_ref::Root;
use keyvault_emulator::RecoveryLevel;
use reqwest::Method;
use serde_json::{Value, json};
const HOURS_49: Duration = Duration::from_secs(49 * 3600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enabling_a_valid_key_moves_sealed_data_keys_under_it() {
    let s = setup("byok-enable", RecoveryLevel::Recoverable, None, &[]).await;
    let version = s.rsa_key("acme-key").await;
    let before = s.publish("acme", "before-", 40).await;
    s.clock.advance(HOURS_49);
    assert_eq!(s.sweep().await["seal"]["sealed"], 40);
    assert!(s.sealed_roots("acme").iter().all(|r| matches!(r, Root::ManagedVersion(_))));

    let (status, body) = s.enable("acme", &s.vault.key_uri("acme-key")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rewrap"]["rewrapped"], 1);
    let encryption = &s.status("acme").await["encryption"];
    assert_eq!(encryption["mode"], "customer_key");
    assert_eq!(encryption["keyUri"], s.vault.key_uri("acme-key"));
    assert_eq!(encryption["keyVersion"], version.as_str());

    let after = s.publish("acme", "after-", 40).await;
    s.clock.advance(HOURS_49);
    assert_eq!(s.sweep().await["seal"]["sealed"], 40);
    let roots = s.sealed_roots("acme");
    assert_eq!(roots.len(), 2, "one sealed data key per day");
    for root in roots {
        match root {
            Root::VaultKeyId(kid) => assert!(kid.ends_with(&format!("/keys/acme-key/{version}")), "{kid}"),
            other => panic!("sealed data key still under {other:?}"),
        }
    }
    s.assert_readable(&before).await;
    s.assert_readable(&after).await;
    assert_eq!(s.status("acme").await["records"], json!({"hot": 0, "sealed": 80}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_unusable_key_is_refused_with_its_own_code_and_changes_nothing() {
    let s = setup("byok-refuse", RecoveryLevel::Recoverable, None, &[]).await;
    let records = s.publish("acme", "r-", 5).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let rsa = json!({"kty": "RSA", "key_size": 2048});
    s.vault.create("disabled", json!({"kty": "RSA", "key_size": 2048, "attributes": {"enabled": false}})).await;
    s.vault.create("expired", json!({"kty": "RSA", "key_size": 2048, "attributes": {"exp": now - 60}})).await;
    s.vault.create("future", json!({"kty": "RSA", "key_size": 2048, "attributes": {"nbf": now + 86_400}})).await;
    s.vault.create("ec", json!({"kty": "EC", "crv": "P-256"})).await;
    s.vault.create("wrap-only", json!({"kty": "RSA", "key_size": 2048, "key_ops": ["wrapKey", "encrypt"]})).await;
    s.vault.create("fine", rsa).await;

    let purgeable_state = tempfile::tempdir().unwrap();
    let purgeable = Vault::start(args(purgeable_state.path(), RecoveryLevel::RecoverablePurgeable)).await;
    purgeable.create("purgeable", json!({"kty": "RSA", "key_size": 2048})).await;

    let cases = [
        ("https://evil.example.com/keys/fine".to_owned(), 400, "untrusted_vault_host"),
        ("http://not-https/keys/x".to_owned(), 400, "invalid_key_uri"),
        (s.vault.key_uri("missing"), 422, "key_not_found"),
        (s.vault.key_uri("disabled"), 422, "key_disabled"),
        (s.vault.key_uri("expired"), 422, "key_expired"),
        (s.vault.key_uri("future"), 422, "key_not_yet_active"),
        (s.vault.key_uri("ec"), 422, "unsupported_key_type"),
        (s.vault.key_uri("wrap-only"), 422, "missing_key_operations"),
        // A host the worker does not trust is refused before any call...
        (purgeable.key_uri("purgeable"), 400, "untrusted_vault_host"),
    ];
    let mut codes = BTreeSet::new();
    for (uri, status, code) in &cases {
        let (got, body) = s.enable("acme", uri).await;
        assert_eq!((got, body["error"]["code"].as_str().unwrap()), (*status, *code), "{uri}: {body}");
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
        codes.insert(*code);
        assert_eq!(s.status("acme").await["encryption"]["mode"], "managed", "{uri} changed the tenant");
    }
    assert_eq!(codes.len(), cases.len() - 1, "each failure has its own code");
    assert!(s.sealed_roots("acme").is_empty());
    s.assert_readable(&records).await;
    s.worker.stop().await;

    // ...so trust the purge-enabled vault too, and see purge protection refused.
    let dir = tempfile::tempdir().unwrap();
    let mut flags = purgeable.worker_flags();
    flags.extend(["--trusted-vault-host".to_owned(), s.vault.host()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let worker = start_worker(&s.vhost, dir.path(), Arc::new(ManualClock::starting_now()), &flags).await;
    let response = reqwest::Client::new()
        .put(format!("{}/v1/tenants/acme/encryption", base_url(&worker)))
        .json(&json!({"keyUri": purgeable.key_uri("purgeable")}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 422);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "purge_protection_required", "{body}");
    // Bad bodies are 400 with a JSON error.
    let response = reqwest::Client::new()
        .put(format!("{}/v1/tenants/acme/encryption", base_url(&worker)))
        .body("{not json")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert_eq!(response.json::<Value>().await.unwrap()["error"]["code"], "invalid_json");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_disable_the_customer_key_can_be_deleted_and_everything_stays_readable() {
    let s = setup("byok-disable", RecoveryLevel::Recoverable, None, &[]).await;
    s.rsa_key("k").await;
    let (status, body) = s.enable("acme", &s.vault.key_uri("k")).await;
    assert_eq!(status, 200, "{body}");
    let sealed = s.publish("acme", "s-", 30).await;
    s.clock.advance(HOURS_49);
    assert_eq!(s.sweep().await["seal"]["sealed"], 30);
    let hot = s.publish("acme", "h-", 10).await;
    assert!(s.sealed_roots("acme").iter().all(|r| matches!(r, Root::VaultKeyId(_))));

    let (status, body) = s.disable("acme").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"]["encryption"]["mode"], "managed");
    assert!(s.sealed_roots("acme").iter().all(|r| matches!(r, Root::ManagedVersion(_))));

    let (status, _) = s.vault.call(Method::DELETE, "/keys/k", None).await;
    assert_eq!(status, 200);
    s.worker.only().shard.keyring.forget_cached();
    s.assert_readable(&sealed).await;
    s.assert_readable(&hot).await;
    let (status, body) = s.disable("acme").await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("customer_key_not_enabled")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_fails_cleanly_when_the_customer_key_is_gone() {
    let s = setup("byok-disable-fail", RecoveryLevel::Recoverable, None, &[]).await;
    s.rsa_key("k").await;
    assert_eq!(s.enable("acme", &s.vault.key_uri("k")).await.0, 200);
    let sealed = s.publish("acme", "s-", 10).await;
    s.clock.advance(HOURS_49);
    s.sweep().await;
    s.vault.patch("k", json!({"attributes": {"enabled": false}})).await;
    s.worker.only().shard.keyring.forget_cached();
    let (status, body) = s.disable("acme").await;
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("customer_key_unusable")), "{body}");
    assert_eq!(s.status("acme").await["encryption"]["mode"], "customer_key", "nothing changed");
    // Until a lockdown refuses reads, a read says why its key cannot be had.
    let (status, body) = get_record(&s.base, "acme", &sealed[0].record_id).await;
    let body: Value = serde_json::from_slice(&body).expect("a JSON error");
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("key_disabled")), "{body}");
    s.vault.patch("k", json!({"attributes": {"enabled": true}})).await;
    s.assert_readable(&sealed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_disabled_after_enabling_holds_that_tenant_in_hot_and_nothing_else() {
    let s = setup("byok-hold", RecoveryLevel::Recoverable, None, &[]).await;
    s.rsa_key("acme-key").await;
    assert_eq!(s.enable("acme", &s.vault.key_uri("acme-key")).await.0, 200);
    let acme = s.publish("acme", "a-", 20).await;
    let other = s.publish("other", "o-", 20).await;
    s.vault.patch("acme-key", json!({"attributes": {"enabled": false}})).await;

    s.clock.advance(HOURS_49);
    let summary = s.sweep().await;
    assert_eq!(summary["seal"]["tenants"], json!({"other": 20}), "{summary}");
    assert_eq!(summary["seal"]["heldBack"]["acme"], 20);
    assert_eq!(s.status("acme").await["records"], json!({"hot": 20, "sealed": 0}));
    assert_eq!(s.status("other").await["records"], json!({"hot": 0, "sealed": 20}));
    s.assert_readable(&other).await;

    s.vault.patch("acme-key", json!({"attributes": {"enabled": true}})).await;
    assert_eq!(s.sweep().await["seal"]["tenants"], json!({"acme": 20}));
    assert_eq!(s.status("acme").await["records"], json!({"hot": 0, "sealed": 20}));
    s.assert_readable(&acme).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_vault_calls_are_retried_until_they_succeed() {
    let s = setup("byok-throttle", RecoveryLevel::Recoverable, Some(2), &[]).await;
    s.rsa_key("k").await;
    let records = s.publish("acme", "t-", 10).await;
    s.clock.advance(HOURS_49);
    let (status, body) = s.enable("acme", &s.vault.key_uri("k")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.sweep().await["seal"]["sealed"], 10);
    s.worker.only().shard.keyring.forget_cached();
    s.assert_readable(&records).await;
    let calls = s.vault.emulator.calls();
    assert!(calls.get("throttled").copied().unwrap_or(0) > 0, "the vault did throttle: {calls:?}");
    let metrics = keyseal::telemetry::metrics::handle().render();
    assert!(
        metrics.lines().any(|l| l.starts_with("keyseal_vault_requests_total") && l.contains("outcome=\"ok\"")),
        "vault calls are counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_calls_grow_with_data_keys_not_records() {
    const PER_TENANT: usize = 25_000;
    let s = setup("byok-budget", RecoveryLevel::Recoverable, None, &[]).await;
    let tenants = ["t1", "t2", "t3", "t4"];
    for tenant in tenants {
        s.rsa_key(tenant).await;
        assert_eq!(s.enable(tenant, &s.vault.key_uri(tenant)).await.0, 200);
    }
    let before = s.vault.emulator.calls();
    let records: Vec<_> = tenants.iter().flat_map(|t| synthetic(t, "b-", PER_TENANT, 64, 1)).collect();
    publish_confirmed(&s.vhost, &records).await;
    for tenant in tenants {
        wait_for_records(&s.base, tenant, PER_TENANT as u64, Duration::from_secs(120)).await;
    }
    s.clock.advance(HOURS_49);
    assert_eq!(s.sweep().await["seal"]["sealed"], (4 * PER_TENANT) as u64);
    let after = s.vault.emulator.calls();
    let delta = |op: &str| after.get(op).copied().unwrap_or(0) - before.get(op).copied().unwrap_or(0);
    let sealed_data_keys: usize = tenants.iter().map(|t| s.sealed_roots(t).len()).sum();
    assert_eq!(sealed_data_keys, 4);
    // One wrap per sealed data key created; reads are the sweep's key check.
    assert_eq!(delta("wrapkey"), sealed_data_keys as u64);
    assert_eq!(delta("unwrapkey"), 0);
    assert!(delta("get_key") <= tenants.len() as u64, "one key check per tenant per sweep");
    let total: u64 = after.values().sum::<u64>() - before.values().sum::<u64>();
    assert!(total <= 2 * tenants.len() as u64, "{total} vault calls for {} records", records.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_latest_enabled_version_is_used_whatever_the_uri_names() {
    let s = setup("byok-version", RecoveryLevel::Recoverable, None, &[]).await;
    let older = s.rsa_key("k").await;
    let newest = s.rsa_key("k").await;
    assert_ne!(older, newest);
    s.vault.ok(Method::PATCH, &format!("/keys/k/{newest}"), Some(json!({"attributes": {"enabled": false}}))).await;
    let named = format!("{}/{newest}", s.vault.key_uri("k"));
    let (status, body) = s.enable("acme", &named).await;
    assert_eq!(status, 200, "{body}");
    let encryption = &body["status"]["encryption"];
    assert_eq!(encryption["keyUri"], named.as_str(), "the URI is recorded as given");
    assert_eq!(encryption["keyVersion"], older.as_str(), "the newest enabled version is used");
}
