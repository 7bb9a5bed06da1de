//! Rewrap cost of a key roll: the time to move every sealed data key of a
//! tenant from customer key version 1 to version 2 (the emulator over TLS,
//! through the official client, keys unwrapped by the vault as after a
//! restart), against the number of data keys (10, 100, 1,000 at 100
//! records each) and against records per data key (1,000 vs 100,000 at 10
//! data keys). A rewrap touches data keys only, so it should grow with
//! keys and stay flat with records.
//!
//! `cargo bench --bench rewrap` (KEYSEAL_BENCH_RUNS to change the runs).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use keyseal::clock::{Clock, ManualClock};
use keyseal::crypto::keyring::{CacheLimits, Keyring, RotationLimits};
use keyseal::crypto::root_key::ManagedRootKeys;
use keyseal::emulator::RecoveryLevel;
use keyseal::proto::v1::event::Kind;
use keyseal::proto::v1::{EncryptionEnabled, KeyRolled};
use keyseal::publish::synthetic;
use keyseal::records::store_batch;
use keyseal::sealing::seal_due;
use keyseal::storage::Store;
use reqwest::Method;

const TENANT: &str = "acme";
const SEAL_AFTER: Duration = Duration::from_secs(48 * 3600);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Seals `keys * per_key` records of 64 bytes under `keys` data keys
/// wrapped by key "k" v1, rolls "k" to v2 and times the rewrap (seconds).
async fn measure(keys: usize, per_key: usize) -> f64 {
    let state = tempfile::tempdir().unwrap();
    let vault = common::vault::Vault::start(common::vault::args(state.path(), RecoveryLevel::Recoverable)).await;
    let v1 = vault.create("k", serde_json::json!({"kty": "RSA", "key_size": 2048})).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("db")).unwrap());
    let rotation = RotationLimits { max_records: per_key as u64, ..RotationLimits::default() };
    let keyring = Keyring::new(
        store.clone(),
        ManagedRootKeys::load_or_create(&dir.path().join("roots")).unwrap(),
        Ok(vault.client()),
        CacheLimits::default(),
        rotation,
        Arc::new(keyseal::clock::SystemClock),
    );
    let clock = ManualClock::new(1_700_000_000_000);
    let mut txn = store.transaction();
    txn.event(
        TENANT,
        Kind::EncryptionEnabled(EncryptionEnabled { key_uri: vault.key_uri("k"), key_version: v1.clone() }),
    );
    txn.commit(clock.now_ms()).unwrap();
    let records = synthetic(TENANT, "r-", keys * per_key, 64, 1);
    for chunk in records.chunks(1000) {
        store_batch(&store, &keyring, chunk.to_vec(), clock.now_ms()).await.unwrap();
    }
    clock.advance(SEAL_AFTER + Duration::from_secs(1));
    let sealed = seal_due(&store, &keyring, &clock, SEAL_AFTER, &Default::default()).await.unwrap();
    assert_eq!(sealed.sealed as usize, keys * per_key);

    let v2 = common::vault::version_of(&vault.ok(Method::POST, "/keys/k/rotate", None).await);
    let mut txn = store.transaction();
    txn.event(TENANT, Kind::KeyRolled(KeyRolled { from_version: v1, to_version: v2 }));
    txn.commit(clock.now_ms()).unwrap();
    keyring.forget_cached();
    let started = Instant::now();
    let summary = keyring.rewrap_to_current_root(TENANT, clock.now_ms()).await.unwrap();
    let took = started.elapsed().as_secs_f64();
    assert_eq!(summary.rewrapped as usize, keys, "one rewrap per sealed data key");
    took
}

fn main() {
    let runs = env_usize("KEYSEAL_BENCH_RUNS", 3);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut series = Vec::new();
    println!("rewrap after a key roll (vault unwrap + wrap per data key), median of {runs} runs");
    for (keys, per_key) in [(10, 100), (100, 100), (1000, 100), (10, 1_000), (10, 100_000)] {
        let times: Vec<f64> = (0..runs).map(|_| runtime.block_on(measure(keys, per_key))).collect();
        let t = median(times);
        println!(
            "  {keys:>5} data keys x {per_key:>7} records: {:>8.1} ms  ({:.2} ms per data key)",
            t * 1000.0,
            t * 1000.0 / keys as f64
        );
        series.push(((keys, per_key), t));
    }
    let time = |k: (usize, usize)| series.iter().find(|(key, _)| *key == k).expect("measured").1;
    println!("grows with keys: 1,000 keys / 10 keys = {:.1}x (100 records each)", time((1000, 100)) / time((10, 100)));
    println!(
        "flat with records: 100,000 / 1,000 records per key = {:.2}x (10 keys)",
        time((10, 100_000)) / time((10, 1_000))
    );
}
