//! One tenant's vault trouble never stops sealing for the others: with the
//! emulator refusing (403), throttling (429) or failing (500) the wrap of
//! one tenant's new sealed data key, a sweep seals every other tenant, holds
//! that one back in hot with a reason, and seals it once the vault is fine.
//! Real RabbitMQ, the official Key Vault client over TLS.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::byok::{Setup, setup};
use common::*;
use keyseal::clock::ManualClock;
use keyseal::worker::Worker;
use keyvault_emulator::{Fault, FaultAction, RecoveryLevel};
use serde_json::{Value, json};

const SEAL: Duration = Duration::from_secs(49 * 3600);

fn wrap_fault(key: &str, status: u16) -> Fault {
    Fault { key: Some(key.to_owned()), operation: Some("wrapkey".to_owned()), action: FaultAction::Status(status) }
}

fn calls(s: &Setup, operation: &str) -> u64 {
    s.vault.emulator.calls().get(operation).copied().unwrap_or(0)
}

fn held_back_metric(reason: &str) -> u64 {
    let rendered = keyseal::telemetry::metrics::handle().render();
    let series = format!("keyseal_seal_held_back_total{{reason=\"{reason}\"}} ");
    rendered
        .lines()
        .find_map(|line| line.strip_prefix(&series))
        .map(|value| value.trim().parse::<f64>().expect("a number") as u64)
        .unwrap_or_else(|| panic!("{series} is registered"))
}

/// Two BYOK tenants with their own keys and a managed one; the vault
/// answers `status` to every wrap with tenant A's key. A sweep seals B and
/// the managed tenant, holds A back with `reason` (its vault call retried
/// `attempts` times in all), leaves A's records readable in hot; once the
/// fault is cleared the next sweep seals A.
async fn one_tenants_failing_wrap_holds_only_that_tenant(name: &str, status: u16, reason: &str, attempts: u64) {
    // A one-second retry budget: a throttled or failing wrap is retried once
    // (after the client's 2 s backoff) instead of for 45 s.
    let s =
        setup(name, RecoveryLevel::Recoverable, None, &["--probe-interval", "1h", "--vault-retry-budget", "1s"]).await;
    s.rsa_key("a-key").await;
    s.rsa_key("b-key").await;
    assert_eq!(s.enable("tenant-a", &s.vault.key_uri("a-key")).await.0, 200);
    assert_eq!(s.enable("tenant-b", &s.vault.key_uri("b-key")).await.0, 200);
    let a_records = s.publish("tenant-a", "a-", 20).await;
    let mut others = s.publish("tenant-b", "b-", 20).await;
    others.extend(s.publish("managed", "m-", 20).await);
    s.clock.advance(SEAL);
    s.vault.emulator.set_faults(vec![wrap_fault("a-key", status)]);
    let (faulted, counted) = (calls(&s, "faulted"), held_back_metric(reason));

    let summary = s.sweep().await;
    let seal = &summary["seal"];
    assert_eq!(seal["tenants"], json!({"tenant-b": 20, "managed": 20}), "the others seal: {summary}");
    assert_eq!(seal["heldBackReasons"], json!({"tenant-a": reason}), "{summary}");
    assert_eq!(seal["heldBack"]["tenant-a"], 20, "{summary}");
    assert_eq!(calls(&s, "faulted") - faulted, attempts, "one wrap, retried within the budget");
    assert_eq!(held_back_metric(reason) - counted, 1);
    assert_eq!(s.status("tenant-a").await["records"], json!({"hot": 20, "sealed": 0}), "nothing of A moved");
    assert!(s.sealed_roots("tenant-a").is_empty(), "no sealed data key of A was stored");
    s.assert_readable(&a_records).await;
    s.assert_readable(&others).await;

    s.vault.emulator.clear_faults();
    let summary = s.sweep().await;
    assert_eq!(summary["seal"]["tenants"], json!({"tenant-a": 20}), "{summary}");
    assert_eq!(summary["seal"]["heldBackReasons"], json!({}), "{summary}");
    assert_eq!(s.status("tenant-a").await["records"], json!({"hot": 0, "sealed": 20}));
    s.worker.only().shard.keyring.forget_cached();
    s.assert_readable(&a_records).await;
    s.assert_readable(&others).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrap_refused_by_policy_holds_back_only_its_tenant() {
    one_tenants_failing_wrap_holds_only_that_tenant("hold-403", 403, "missing_permission", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_wrap_holds_back_only_its_tenant() {
    one_tenants_failing_wrap_holds_only_that_tenant("hold-429", 429, "vault_throttled", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_vault_holds_back_only_its_tenant() {
    one_tenants_failing_wrap_holds_only_that_tenant("hold-500", 500, "vault_error", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_sends_its_settings_vault_token() {
    let state = tempfile::tempdir().unwrap();
    let vault = common::vault::Vault::start(common::vault::args(state.path(), RecoveryLevel::Recoverable)).await;
    vault.admin.create_rsa("k").await.unwrap();
    // Reading is allowed, wrapping is not: only the canary sees it.
    vault.emulator.set_identity("keyseal", "keyseal-token", &["get", "list"]);
    let vhost = Vhost::new("vault-token");
    let dir = tempfile::tempdir().unwrap();
    let flags = vault.worker_flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut settings = common::settings(&vhost, dir.path(), &flags);
    settings.vault_token = Some("keyseal-token".into());
    let worker = Worker::start(settings, Arc::new(ManualClock::starting_now())).await.expect("worker starts");
    let enable = || async {
        let response = reqwest::Client::new()
            .put(format!("{}/v1/tenants/acme/encryption", base_url(&worker)))
            .json(&json!({"keyUri": vault.key_uri("k")}))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json::<Value>().await.unwrap())
    };
    let (status, body) = enable().await;
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("wrap_unwrap_failed")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("ForbiddenByPolicy"), "{body}");
    assert_eq!(vault.emulator.calls().get("wrapkey").copied(), Some(1), "the key was read, the canary refused");

    vault.emulator.set_identity("keyseal", "keyseal-token", &["get", "list", "wrapKey", "unwrapKey"]);
    let (status, body) = enable().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"]["encryption"]["mode"], "customer_key", "{body}");
    worker.stop().await;
}
