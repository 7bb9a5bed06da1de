//! Custody of keys, end to end: the managed root key is never silently
//! replaced, unwrapped data keys are held no longer than they must be, and
//! data keys wrapped with RSA-OAEP (SHA-1) stay readable.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use common::byok::{Setup, WAIT, setup};
use common::vault::{Vault, args, decode, version_of};
use common::*;
use keyseal::broker::publish::synthetic;
use keyseal::clock::{ManualClock, SystemClock};
use keyseal::crypto::data_key::DataKeyId;
use keyseal::crypto::keyring::{CacheLimits, Keyring, RotationLimits};
use keyseal::crypto::root_key::ManagedRootKeys;
use keyseal::proto::store::WrappedDataKey;
use keyseal::proto::v1::root_key_ref::Root;
use keyseal::proto::v1::{IngestRecord, Layer, RootKeyRef};
use keyseal::storage::Store;
use keyseal::worker::Worker;
use keyvault_emulator::RecoveryLevel;
use serde_json::json;

const HOURS_49: Duration = Duration::from_secs(49 * 3600);

/// A worker that caches unwrapped keys for 100 h, with BYOK tenant `acme`
/// (key `acme-key`) and managed tenant `other`, 10 records each, sealed and
/// read back, so both have unwrapped data keys cached; their records.
async fn two_tenants_sealed_and_cached(name: &str, extra: &[&str]) -> (Setup, Vec<IngestRecord>, Vec<IngestRecord>) {
    let mut flags = vec!["--dek-cache-ttl", "100h"];
    flags.extend_from_slice(extra);
    let s = setup(name, RecoveryLevel::Recoverable, None, &flags).await;
    s.rsa_key("acme-key").await;
    assert_eq!(s.enable("acme", &s.vault.key_uri("acme-key")).await.0, 200);
    let acme = s.publish("acme", "a-", 10).await;
    let other = s.publish("other", "o-", 10).await;
    s.clock.advance(HOURS_49);
    assert_eq!(s.sweep().await["seal"]["sealed"], 20);
    s.assert_readable(&acme).await;
    s.assert_readable(&other).await;
    let running = s.worker.only();
    let keyring = &running.shard.keyring;
    assert!(keyring.cached_keys_of("acme") > 0 && keyring.cached_keys_of("other") > 0);
    (s, acme, other)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_refuses_to_start_without_the_root_key_its_store_was_written_under() {
    let vhost = Vhost::new("root-guard");
    let dir = tempfile::tempdir().unwrap();
    let worker = start_worker(&vhost, dir.path(), Arc::new(SystemClock), &[]).await;
    let records = synthetic("acme", "r-", 20, 200, 1);
    publish_confirmed(&vhost, &records).await;
    wait_for_records(&base_url(&worker), "acme", 20, WAIT).await;
    worker.stop().await;

    let roots = dir.path().join("root-keys");
    assert_eq!(std::fs::metadata(&roots).unwrap().permissions().mode() & 0o777, 0o700);
    let backup = tempfile::tempdir().unwrap();
    std::fs::copy(roots.join("managed-v1.pem"), backup.path().join("managed-v1.pem")).unwrap();
    std::fs::remove_dir_all(&roots).unwrap();

    let refused = Worker::start(settings(&vhost, dir.path(), &[]), Arc::new(SystemClock)).await;
    let message = match refused {
        Ok(worker) => {
            worker.stop().await;
            panic!("a worker started on a store whose root key is gone");
        }
        Err(e) => format!("{e:#}"),
    };
    let fingerprint = Store::open(&dir.path().join("db")).unwrap().managed_root_fingerprints().unwrap()[&1].clone();
    for needed in [roots.display().to_string(), "managed-v1.pem".into(), fingerprint, "Restore".into()] {
        assert!(message.contains(&needed), "the error names {needed}: {message}");
    }
    assert!(!roots.join("managed-v1.pem").exists(), "no new root key was created");

    std::fs::copy(backup.path().join("managed-v1.pem"), roots.join("managed-v1.pem")).unwrap();
    let worker = start_worker(&vhost, dir.path(), Arc::new(SystemClock), &[]).await;
    let base = base_url(&worker);
    for record in &records {
        assert_eq!(get_record(&base, "acme", &record.record_id).await, (200, record.payload.clone()));
    }
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_down_tenant_loses_its_unwrapped_keys_and_no_one_else_does() {
    let (s, _, other) = two_tenants_sealed_and_cached("custody-lockdown", &["--probe-interval", "100ms"]).await;
    let running = s.worker.only();
    let keyring = &running.shard.keyring;
    let others = keyring.cached_keys_of("other");

    s.vault.patch("acme-key", json!({"attributes": {"enabled": false}})).await;
    wait_until("acme degraded", WAIT, || async { s.status("acme").await["state"] == "degraded" }).await;
    s.clock.advance(Duration::from_secs(51 * 60));
    wait_until("acme locked down", WAIT, || async { s.status("acme").await["state"] == "locked_down" }).await;
    wait_until("acme's keys dropped", Duration::from_secs(5), || async { keyring.cached_keys_of("acme") == 0 }).await;
    assert_eq!(keyring.cached_keys_of("other"), others, "other tenants keep theirs");
    s.assert_readable(&other).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_byok_drops_that_tenants_unwrapped_keys_only() {
    let (s, acme, _) = two_tenants_sealed_and_cached("custody-disable", &[]).await;
    let running = s.worker.only();
    let keyring = &running.shard.keyring;
    let others = keyring.cached_keys_of("other");

    let (status, body) = s.disable("acme").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(keyring.cached_keys_of("acme"), 0);
    assert_eq!(keyring.cached_keys_of("other"), others, "other tenants keep theirs");
    s.assert_readable(&acme).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_keys_are_dropped_at_the_cache_age_and_the_writer_goes_on() {
    let vhost = Vhost::new("custody-ttl");
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let worker = start_worker(&vhost, dir.path(), Arc::new(clock.clone()), &["--dek-cache-ttl", "1m"]).await;
    let base = base_url(&worker);
    publish_confirmed(&vhost, &synthetic("acme", "a-", 10, 100, 1)).await;
    wait_for_records(&base, "acme", 10, WAIT).await;
    let running = worker.only();
    let keyring = &running.shard.keyring;
    assert_eq!(keyring.cached_keys_of("acme"), 1, "the hot writer's key");

    clock.advance(Duration::from_secs(61));
    wait_until("the writer's key dropped", Duration::from_secs(15), || async { keyring.cached_keys_of("acme") == 0 })
        .await;
    publish_confirmed(&vhost, &synthetic("acme", "b-", 10, 100, 1)).await;
    wait_for_records(&base, "acme", 20, WAIT).await;
    assert_eq!(worker.only().shard.store.data_keys_of("acme").unwrap().len(), 1, "the same writer, unwrapped again");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_key_wrapped_with_rsa_oaep_sha1_by_a_customer_key_unwraps() {
    let state = tempfile::tempdir().unwrap();
    let vault = Vault::start(args(state.path(), RecoveryLevel::Recoverable)).await;
    let bundle = vault.create_rsa("k").await;
    let version = version_of(&bundle);
    let plain = [7u8; 32];
    let (status, wrapped) = vault.wrap("k", &version, "RSA-OAEP", &plain).await;
    assert!(status.is_success(), "{wrapped}");

    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("db")).unwrap());
    let id = DataKeyId { tenant: "acme".into(), layer: Layer::Sealed, bucket: 20_000, generation: 0 }.to_bytes();
    let mut txn = store.transaction();
    txn.put_data_key(
        &id,
        &WrappedDataKey {
            wrapped_by: Some(RootKeyRef {
                root: Some(Root::VaultKeyId(bundle["key"]["kid"].as_str().unwrap().into())),
            }),
            algorithm: "RSA-OAEP".into(),
            wrapped: decode(&wrapped["value"]),
            created_at_unix_ms: 1,
            root_fingerprint: String::new(),
        },
    );
    txn.commit(1).unwrap();
    let keyring = Keyring::new(
        store,
        ManagedRootKeys::load_or_create(&dir.path().join("root-keys")).unwrap(),
        Ok(vault.client()),
        CacheLimits::default(),
        RotationLimits::default(),
        Arc::new(SystemClock),
    );
    let key = keyring.key(&id, keyseal::proto::v1::KeyPurpose::Read).await.expect("an RSA-OAEP wrapped key unwraps");
    assert_eq!(key.expose_for_wrapping(), plain.as_slice());
}
