//! Automatic key roll: a new key version (by rotate, or by creating a new
//! version) moves every sealed data key to it by rewrapping only the data
//! keys: every record stays readable and no record is rewritten.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::byok::{Setup, WAIT, setup};
use keyseal::proto::v1::root_key_ref::Root;
use keyseal::storage::CF_SEALED;
use keyvault_emulator::RecoveryLevel;
use reqwest::Method;
use serde_json::{Value, json};

const DAY: Duration = Duration::from_secs(24 * 3600);
const FAST_PROBES: [&str; 2] = ["--probe-interval", "100ms"];

/// Every sealed record's stored bytes, by key.
fn sealed_bytes(s: &Setup) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let running = s.worker.only();
    let db = running.shard.store.raw();
    db.iterator_cf(db.cf_handle(CF_SEALED).unwrap(), rocksdb::IteratorMode::Start)
        .map(|item| {
            let (k, v) = item.unwrap();
            (k.into_vec(), v.into_vec())
        })
        .collect()
}

async fn wait_for_version(s: &Setup, tenant: &str, version: &str) -> Value {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let status = s.status(tenant).await;
        let encryption = &status["encryption"];
        if encryption["keyVersion"] == version && encryption["rewrapPending"] == false {
            return status;
        }
        assert!(std::time::Instant::now() < deadline, "never rolled to {version}: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn assert_all_under(s: &Setup, tenant: &str, version: &str) {
    for root in s.sealed_roots(tenant) {
        match root {
            Root::VaultKeyId(kid) => assert!(kid.ends_with(&format!("/{version}")), "{kid} not on {version}"),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_and_new_versions_roll_data_keys_without_rewriting_records() {
    let s = setup("roll", RecoveryLevel::Recoverable, None, &FAST_PROBES).await;
    let v1 = s.rsa_key("k").await;
    assert_eq!(s.enable("acme", &s.vault.key_uri("k")).await.0, 200);
    let mut records = Vec::new();
    for day in 0..3 {
        records.extend(s.publish("acme", &format!("d{day}-"), 20).await);
        s.clock.advance(2 * DAY + Duration::from_secs(1));
        s.sweep().await;
    }
    assert_eq!(s.sealed_roots("acme").len(), 3, "a sealed data key per day");
    assert_all_under(&s, "acme", &v1);
    let before = sealed_bytes(&s);
    assert_eq!(before.len(), 60);

    // Roll 1: the vault's rotate operation.
    let rotated = s.vault.ok(Method::POST, "/keys/k/rotate", None).await;
    let v2 = common::vault::version_of(&rotated);
    let status = wait_for_version(&s, "acme", &v2).await;
    assert_eq!(status["dataKeys"]["onOlderRoot"], 0, "{status}");
    assert_all_under(&s, "acme", &v2);
    assert_eq!(sealed_bytes(&s), before, "zero records rewritten");

    // Roll 2: a new version created under the same name.
    let v3 = s.rsa_key("k").await;
    wait_for_version(&s, "acme", &v3).await;
    assert_all_under(&s, "acme", &v3);
    assert_eq!(sealed_bytes(&s), before, "zero records rewritten");

    s.worker.only().shard.keyring.forget_cached();
    s.assert_readable(&records).await;
    s.assert_replay_equal().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_roll_costs_at_most_two_vault_calls_per_data_key() {
    const DAYS: usize = 50;
    const PER_DAY: usize = 4_000;
    // Probes only when asked: the count below must be the roll's alone.
    let s = setup("roll-budget", RecoveryLevel::Recoverable, None, &["--probe-interval", "1h"]).await;
    s.rsa_key("k").await;
    assert_eq!(s.enable("acme", &s.vault.key_uri("k")).await.0, 200);
    for day in 0..DAYS {
        s.publish("acme", &format!("d{day}-"), PER_DAY).await;
        s.clock.advance(DAY);
        if day >= 2 {
            s.sweep().await;
        }
    }
    s.clock.advance(3 * DAY);
    s.sweep().await;
    assert_eq!(s.status("acme").await["records"], json!({"hot": 0, "sealed": DAYS * PER_DAY}));
    let data_keys = s.sealed_roots("acme").len();
    assert!(data_keys >= DAYS - 2, "{data_keys} sealed data keys");
    let before = sealed_bytes(&s);

    let v2 = common::vault::version_of(&s.vault.ok(Method::POST, "/keys/k/rotate", None).await);
    s.worker.only().shard.keyring.forget_cached();
    let calls_before = s.vault.emulator.calls();
    // A plain round (no canary): the count below is the roll's rewrap alone,
    // which the rewrapper task runs once the round has appended KeyRolled.
    let summary = s.worker.only().prober.probe_round(false).await.unwrap();
    assert!(summary.events >= 1);
    wait_for_version(&s, "acme", &v2).await;
    let calls_after = s.vault.emulator.calls();
    let delta = |op: &str| calls_after.get(op).copied().unwrap_or(0) - calls_before.get(op).copied().unwrap_or(0);
    assert_eq!(delta("unwrapkey") + delta("wrapkey"), 2 * data_keys as u64, "{calls_after:?}");
    assert_all_under(&s, "acme", &v2);
    assert_eq!(sealed_bytes(&s), before, "zero records rewritten");
    s.assert_replay_equal().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_policy_firing_in_the_vault_rolls_data_keys_like_a_manual_rotate() {
    let s = setup("roll-policy", RecoveryLevel::Recoverable, None, &FAST_PROBES).await;
    let v1 = s.rsa_key("k").await;
    assert_eq!(s.enable("acme", &s.vault.key_uri("k")).await.0, 200);
    let records = s.publish("acme", "p-", 20).await;
    s.clock.advance(2 * DAY + Duration::from_secs(1));
    s.sweep().await;
    assert_all_under(&s, "acme", &v1);
    let before = sealed_bytes(&s);

    // The customer's policy, not a call, makes the new version: 30 days on
    // the vault's clock.
    let policy = json!({
        "lifetimeActions": [{"trigger": {"timeAfterCreate": "P30D"}, "action": {"type": "Rotate"}}],
        "attributes": {"expiryTime": "P1Y"}
    });
    s.vault.ok(Method::PUT, "/keys/k/rotationpolicy", Some(policy)).await;
    s.vault.emulator.advance_clock(31 * DAY);
    let deadline = std::time::Instant::now() + WAIT;
    let v2 = loop {
        let latest = common::vault::version_of(&s.vault.ok(Method::GET, "/keys/k", None).await);
        if latest != v1 {
            break latest;
        }
        assert!(std::time::Instant::now() < deadline, "the rotation policy never fired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(s.vault.emulator.calls().get("rotate_key"), None, "no one called rotate");

    wait_for_version(&s, "acme", &v2).await;
    assert_all_under(&s, "acme", &v2);
    assert_eq!(sealed_bytes(&s), before, "zero records rewritten");
    s.worker.only().shard.keyring.forget_cached();
    s.assert_readable(&records).await;
}
