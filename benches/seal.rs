//! Seal sweep throughput, three ways in the same run on freshly populated
//! stores: keyseal's sweep with the managed key (decrypt under the hot data
//! key, re-encrypt under the sealed one, atomic move with events); the same
//! sweep with every tenant on its own Key Vault key (the emulator over TLS,
//! through the official client); and a plain column-family-to-column-family
//! move of the same records without crypto. A fourth phase times the
//! re-encryption sweep (unpaced) over the same records once sealed and
//! older than `--max-dek-age`. Every phase starts once RocksDB has flushed
//! and finished compacting what was written before it. Prints medians, the
//! ratios and the vault calls per 1,000,000 records sealed.
//!
//! `cargo bench --bench seal` (KEYSEAL_BENCH_RECORDS, KEYSEAL_BENCH_RUNS to change the size);
//! `-- profile <managed|customer|plain|reencrypt>` runs one phase once, for
//! a profiler.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyseal::broker::publish::synthetic;
use keyseal::clock::{Clock, ManualClock};
use keyseal::crypto::keyring::{CacheLimits, Keyring, RotationLimits};
use keyseal::crypto::root_key::ManagedRootKeys;
use keyseal::proto::v1::EncryptionEnabled;
use keyseal::proto::v1::event::Kind;
use keyseal::records::{UnreadableTenants, store_batch};
use keyseal::storage::{CF_BY_TENANT, CF_BY_TIME, CF_HOT, CF_SEALED, Store};
use keyseal::sweeps::seal::seal_due;
use keyseal::sweeps::{Pacer, Progress, SweepKind, reencrypt};
use keyvault_emulator::RecoveryLevel;
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions};

const SEAL_AFTER: Duration = Duration::from_secs(48 * 3600);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

const TENANTS: [&str; 4] = ["alpha", "bravo", "charlie", "delta"];

/// A store holding `count` 1 KiB records in `hot`, all due for sealing;
/// with `vault`, every tenant has its own key there.
async fn populate(
    dir: &Path,
    roots: &Path,
    count: usize,
    clock: &ManualClock,
    vault: Option<&common::vault::Vault>,
) -> (Arc<Store>, Keyring) {
    let store = Arc::new(Store::open(dir).unwrap());
    let client = vault.map(common::vault::Vault::client);
    let keyring = Keyring::new(
        store.clone(),
        ManagedRootKeys::load_or_create(roots).unwrap(),
        client.ok_or_else(|| "managed keys only".to_owned()),
        CacheLimits::default(),
        RotationLimits::default(),
        Arc::new(keyseal::clock::SystemClock),
    );
    let tenants = TENANTS;
    for (t, tenant) in tenants.iter().enumerate() {
        let records = synthetic(tenant, "r-", count / tenants.len(), 1024, t as i64);
        for chunk in records.chunks(500) {
            store_batch(&store, &keyring, chunk.to_vec(), &UnreadableTenants::default(), clock.now_ms()).await.unwrap();
        }
    }
    if let Some(vault) = vault {
        let mut txn = store.transaction();
        for tenant in TENANTS {
            let version = vault.create(tenant, serde_json::json!({"kty": "RSA", "key_size": 2048})).await;
            txn.event(
                tenant,
                Kind::EncryptionEnabled(EncryptionEnabled { key_uri: vault.key_uri(tenant), key_version: version }),
            );
        }
        txn.commit(clock.now_ms()).unwrap();
    }
    clock.advance(SEAL_AFTER + Duration::from_secs(1));
    settle(&store);
    (store, keyring)
}

/// Flushes the memtables and waits for RocksDB's background compactions to
/// finish, so that every measured phase starts from a quiet store instead
/// of paying for the writes of the step before it (populating, or, for
/// re-encryption, the seal sweep that precedes it).
fn settle(store: &Store) {
    store.flush().unwrap();
    let db = store.raw();
    let deadline = Instant::now() + Duration::from_secs(120);
    let busy = || {
        let running = |name: &str| db.property_int_value(name).unwrap().unwrap_or(0);
        running("rocksdb.num-running-compactions") + running("rocksdb.num-running-flushes") > 0
            || [CF_HOT, CF_SEALED, CF_BY_TIME, CF_BY_TENANT].iter().any(|cf| {
                db.property_int_value_cf(db.cf_handle(cf).unwrap(), "rocksdb.compaction-pending").unwrap() == Some(1)
            })
    };
    while busy() {
        assert!(Instant::now() < deadline, "RocksDB compactions did not settle within 2 minutes");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The baseline: the same move (index scan, read hot, write sealed, delete
/// hot and index, one synced batch per 1,000) without decryption,
/// re-encryption or events.
fn plain_move(store: &Store) -> u64 {
    let db = store.raw();
    let (hot, sealed, index) =
        (db.cf_handle(CF_HOT).unwrap(), db.cf_handle(CF_SEALED).unwrap(), db.cf_handle(CF_BY_TIME).unwrap());
    let mut sync = WriteOptions::default();
    sync.set_sync(true);
    let mut moved = 0;
    // Like the sweep, continue after the last entry instead of rescanning
    // the deleted ones from the start.
    let mut cursor: Option<Box<[u8]>> = None;
    loop {
        let mode = match &cursor {
            Some(key) => IteratorMode::From(&key[..], Direction::Forward),
            None => IteratorMode::Start,
        };
        let entries: Vec<Box<[u8]>> = db
            .iterator_cf(index, mode)
            .map(|item| item.unwrap().0)
            .filter(|key| Some(key) != cursor.as_ref())
            .take(1000)
            .collect();
        let Some(last) = entries.last() else {
            return moved;
        };
        cursor = Some(last.clone());
        let values = db.multi_get_cf(entries.iter().map(|k| (hot, &k[8..])));
        let mut batch = WriteBatch::default();
        for (key, value) in entries.iter().zip(values) {
            if let Some(value) = value.unwrap() {
                batch.put_cf(sealed, &key[8..], value);
                batch.delete_cf(hot, &key[8..]);
                moved += 1;
            }
            batch.delete_cf(index, key);
        }
        db.write_opt(batch, &sync).unwrap();
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Seals everything due; returns records per second.
async fn sweep(store: &Store, keyring: &Keyring, clock: &ManualClock, count: usize) -> f64 {
    let started = Instant::now();
    let summary = seal_due(store, keyring, clock, SEAL_AFTER, &Default::default()).await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(summary.sealed as usize, count);
    count as f64 / secs
}

/// One measured phase; each opens, uses and drops its own store so no
/// background compaction of another phase competes with it.
#[derive(Clone, Copy)]
enum Phase {
    Managed,
    Customer,
    Plain,
    Reencrypt,
}

/// Runs a phase on a fresh store; returns (records/s, vault calls).
async fn measure(phase: Phase, roots: &Path, count: usize) -> (f64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_700_000_000_000);
    match phase {
        Phase::Managed => {
            let (store, keyring) = populate(dir.path(), roots, count, &clock, None).await;
            (sweep(&store, &keyring, &clock, count).await, 0)
        }
        Phase::Customer => {
            let state = tempfile::tempdir().unwrap();
            let vault =
                common::vault::Vault::start(common::vault::args(state.path(), RecoveryLevel::Recoverable)).await;
            let (store, keyring) = populate(dir.path(), roots, count, &clock, Some(&vault)).await;
            let before: u64 = vault.emulator.calls().values().sum();
            let rate = sweep(&store, &keyring, &clock, count).await;
            (rate, vault.emulator.calls().values().sum::<u64>() - before)
        }
        Phase::Plain => {
            let (store, _) = populate(dir.path(), roots, count, &clock, None).await;
            let started = Instant::now();
            assert_eq!(plain_move(&store) as usize, count);
            (count as f64 / started.elapsed().as_secs_f64(), 0)
        }
        Phase::Reencrypt => {
            let (store, keyring) = populate(dir.path(), roots, count, &clock, None).await;
            sweep(&store, &keyring, &clock, count).await;
            settle(&store);
            clock.advance(keyring.rotation().max_age + Duration::from_secs(3600));
            let progress = Progress::new(keyseal::placement::ShardId(0));
            let tracker = progress.begin(SweepKind::Reencrypt, count as u64);
            let mut unpaced = Pacer::new(u32::MAX);
            let started = Instant::now();
            let summary = reencrypt::run(&store, &keyring, &clock, &mut unpaced, &tracker).await.unwrap();
            let rate = count as f64 / started.elapsed().as_secs_f64();
            assert_eq!(summary.reencrypted as usize, count);
            (rate, 0)
        }
    }
}

fn main() {
    let count = env_usize("KEYSEAL_BENCH_RECORDS", 100_000);
    let runs = env_usize("KEYSEAL_BENCH_RUNS", 5);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let roots = tempfile::tempdir().unwrap();
    // `-- profile <phase>`: that phase once and nothing else, to run under
    // callgrind (docs/benchmarks.md says how).
    if let Some(name) = std::env::args().skip_while(|a| a != "profile").nth(1) {
        let phase = match name.as_str() {
            "managed" => Phase::Managed,
            "customer" => Phase::Customer,
            "plain" => Phase::Plain,
            "reencrypt" => Phase::Reencrypt,
            other => panic!("no phase {other}: managed, customer, plain or reencrypt"),
        };
        let (rate, _) = runtime.block_on(measure(phase, roots.path(), count));
        println!("{name}: {count} records at {rate:.0}/s");
        return;
    }
    let (mut managed, mut customer, mut plain, mut reencrypted) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut vault_calls = Vec::new();
    println!("seal sweep: {count} records of 1 KiB over 4 tenants, {runs} runs (phase order rotates)");
    let phases = [Phase::Managed, Phase::Customer, Phase::Plain, Phase::Reencrypt];
    for run in 0..runs {
        for i in 0..phases.len() {
            let phase = phases[(run + i) % phases.len()];
            let (rate, calls) = runtime.block_on(measure(phase, roots.path(), count));
            match phase {
                Phase::Managed => managed.push(rate),
                Phase::Customer => {
                    customer.push(rate);
                    vault_calls.push(calls as f64);
                }
                Phase::Plain => plain.push(rate),
                Phase::Reencrypt => reencrypted.push(rate),
            }
        }
        println!(
            "  run {run}: managed key {:>8.0}/s   customer key {:>8.0}/s   plain move {:>8.0}/s   \
             re-encryption {:>8.0}/s   vault calls {:.0}",
            managed[run], customer[run], plain[run], reencrypted[run], vault_calls[run]
        );
    }
    let (m, c, p, r) = (median(managed), median(customer), median(plain), median(reencrypted));
    println!(
        "median records/s: managed key {m:.0} ({:.1} MB/s), customer key {c:.0}, plain move {p:.0}",
        m * 1024.0 / 1e6
    );
    println!(
        "re-encryption sweep (unpaced): {r:.0} records/s ({:.1} MB/s), ratio re-encryption/seal = {:.2} (target >= 0.9)",
        r * 1024.0 / 1e6,
        r / m
    );
    println!("ratio managed/plain = {:.2} (target >= 0.8)", m / p);
    println!("ratio customer/managed = {:.2} (target >= 0.9)", c / m);
    let calls = median(vault_calls);
    println!(
        "vault calls while sealing {count} records: {calls:.0}, i.e. {:.1} per 1,000,000 records \
         (one wrap per sealed data key: they grow with tenants and days, not records)",
        calls * 1e6 / count as f64
    );
}
