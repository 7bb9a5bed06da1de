//! Rewrap cost of a key roll: the time to move every sealed data key of a
//! tenant from customer key version 1 to version 2 (the emulator over TLS,
//! through the official client, keys unwrapped by the vault as after a
//! restart), against the number of data keys (10, 100, 1,000 at 100
//! records each) and against records per data key (1,000 vs 100,000 at 10
//! data keys). A rewrap touches data keys only, so it should grow with
//! keys and stay flat with records.
//!
//! Then the same roll of 1,000 data keys against a vault that answers like
//! a remote Key Vault (`--latency 30ms --throttle-rps 400`: 4,000 RSA-2048
//! operations per 10 s, two per key, so at most 200 keys/s), one key at a
//! time (`--vault-concurrency 1`) beside the default concurrency, in the
//! same run on the same store.
//!
//! `cargo bench --bench rewrap` (KEYSEAL_BENCH_RUNS to change the runs;
//! `cargo bench --bench rewrap -- throttled` for the second part only).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use keyseal::broker::publish::synthetic;
use keyseal::clock::{Clock, ManualClock};
use keyseal::crypto::keyring::{CacheLimits, Keyring, RotationLimits, VAULT_CONCURRENCY};
use keyseal::crypto::root_key::ManagedRootKeys;
use keyseal::proto::v1::event::Kind;
use keyseal::proto::v1::{EncryptionEnabled, KeyRolled};
use keyseal::records::{UnreadableTenants, store_batch};
use keyseal::storage::Store;
use keyseal::sweeps::seal::seal_due;
use keyvault_emulator::RecoveryLevel;
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

/// A store whose tenant has sealed data keys wrapped by key "k" of a vault.
struct Sealed {
    dir: tempfile::TempDir,
    store: Arc<Store>,
    clock: ManualClock,
    /// The version of "k" the keys are under.
    version: String,
}

impl Sealed {
    /// Seals `keys * per_key` records of 64 bytes under `keys` data keys
    /// wrapped by a new key "k" of `vault`.
    async fn under_new_key(vault: &common::vault::Vault, keys: usize, per_key: usize) -> Self {
        let version = vault.create("k", serde_json::json!({"kty": "RSA", "key_size": 2048})).await;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("db")).unwrap());
        let sealed = Self { dir, store, clock: ManualClock::new(1_700_000_000_000), version };
        let keyring = sealed.keyring(vault, per_key, VAULT_CONCURRENCY);
        let mut txn = sealed.store.transaction();
        txn.event(
            TENANT,
            Kind::EncryptionEnabled(EncryptionEnabled {
                key_uri: vault.key_uri("k"),
                key_version: sealed.version.clone(),
            }),
        );
        txn.commit(sealed.clock.now_ms()).unwrap();
        let records = synthetic(TENANT, "r-", keys * per_key, 64, 1);
        for chunk in records.chunks(1000) {
            store_batch(&sealed.store, &keyring, chunk.to_vec(), &UnreadableTenants::default(), sealed.clock.now_ms())
                .await
                .unwrap();
        }
        sealed.clock.advance(SEAL_AFTER + Duration::from_secs(1));
        let summary = seal_due(&sealed.store, &keyring, &sealed.clock, SEAL_AFTER, &Default::default()).await.unwrap();
        assert_eq!(summary.sealed as usize, keys * per_key);
        sealed
    }

    /// A keyring over the store (nothing unwrapped yet, as after a restart)
    /// with `per_key` records per data key and `concurrency` vault calls in flight.
    fn keyring(&self, vault: &common::vault::Vault, per_key: usize, concurrency: usize) -> Keyring {
        Keyring::new(
            self.store.clone(),
            ManagedRootKeys::load_or_create(&self.dir.path().join("roots")).unwrap(),
            Ok(vault.client()),
            CacheLimits::default(),
            RotationLimits { max_records: per_key as u64, ..RotationLimits::default() },
            Arc::new(keyseal::clock::SystemClock),
        )
        .with_vault_concurrency(concurrency)
    }

    /// Rolls "k" to a new version and times the rewrap of every sealed data
    /// key to it with `concurrency` vault calls in flight (seconds).
    async fn roll(&mut self, vault: &common::vault::Vault, concurrency: usize) -> f64 {
        let to = common::vault::version_of(&vault.ok(Method::POST, "/keys/k/rotate", None).await);
        let mut txn = self.store.transaction();
        txn.event(TENANT, Kind::KeyRolled(KeyRolled { from_version: self.version.clone(), to_version: to.clone() }));
        txn.commit(self.clock.now_ms()).unwrap();
        self.version = to;
        let keyring = self.keyring(vault, 1, concurrency);
        let started = Instant::now();
        let summary = keyring.rewrap_to_current_root(TENANT, self.clock.now_ms()).await.unwrap();
        let took = started.elapsed().as_secs_f64();
        assert_eq!(summary.rewrapped, summary.total, "one rewrap per sealed data key");
        took
    }
}

/// Seals under `keys` data keys of `per_key` records, rolls and times the rewrap (seconds).
async fn measure(keys: usize, per_key: usize) -> f64 {
    let state = tempfile::tempdir().unwrap();
    let vault = common::vault::Vault::start(common::vault::args(state.path(), RecoveryLevel::Recoverable)).await;
    let mut sealed = Sealed::under_new_key(&vault, keys, per_key).await;
    sealed.roll(&vault, VAULT_CONCURRENCY).await
}

/// Keys per second of a roll of `THROTTLED_KEYS` data keys against a vault
/// with 30 ms latency and 400 requests/s, one key at a time and with the
/// default concurrency, on the same store.
async fn measure_throttled() -> (f64, f64) {
    let state = tempfile::tempdir().unwrap();
    let mut args = common::vault::args(state.path(), RecoveryLevel::Recoverable);
    args.latency = Duration::from_millis(30);
    args.throttle_rps = std::num::NonZeroU32::new(400);
    let vault = common::vault::Vault::start(args).await;
    let mut sealed = Sealed::under_new_key(&vault, THROTTLED_KEYS, 1).await;
    let sequential = sealed.roll(&vault, 1).await;
    let concurrent = sealed.roll(&vault, VAULT_CONCURRENCY).await;
    (THROTTLED_KEYS as f64 / sequential, THROTTLED_KEYS as f64 / concurrent)
}

/// Data keys in the throttled roll.
const THROTTLED_KEYS: usize = 1000;

fn throttled(runtime: &tokio::runtime::Runtime, runs: usize) {
    println!(
        "rewrap of {THROTTLED_KEYS} data keys, vault --latency 30ms --throttle-rps 400 (at most 200 keys/s), median of {runs} runs"
    );
    let (sequential, concurrent): (Vec<f64>, Vec<f64>) =
        (0..runs).map(|_| runtime.block_on(measure_throttled())).unzip();
    let (sequential, concurrent) = (median(sequential), median(concurrent));
    println!("  one key at a time (--vault-concurrency 1): {sequential:>6.1} keys/s");
    println!("  {VAULT_CONCURRENCY} calls in flight (the default):       {concurrent:>6.1} keys/s");
    println!(
        "  {:.2}x the vault's limit of 200 keys/s (target >= 0.8), {:.1}x one at a time",
        concurrent / 200.0,
        concurrent / sequential
    );
}

fn main() {
    let runs = env_usize("KEYSEAL_BENCH_RUNS", 3);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    if std::env::args().any(|a| a == "throttled") {
        throttled(&runtime, runs);
        return;
    }
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
    throttled(&runtime, runs);
}
