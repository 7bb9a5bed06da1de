//! A probe round for 1,000 BYOK tenants against the emulator over TLS, with
//! the official client: time per round and vault calls per round, for a
//! plain round (one key read per tenant) and a canary round (plus a wrap
//! and an unwrap). Target: a round takes under 10% of the 60 s probe interval.
//!
//! `cargo bench --bench probe` (KEYSEAL_BENCH_TENANTS, KEYSEAL_BENCH_RUNS).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Instant;

use keyseal::byok::rewrapper;
use keyseal::clock::{Clock, SystemClock};
use keyseal::config::{self, Settings};
use keyseal::health::prober::Prober;
use keyseal::placement::ShardId;
use keyseal::proto::v1::EncryptionEnabled;
use keyseal::proto::v1::event::Kind;
use keyseal::shard::Shard;
use keyvault_emulator::RecoveryLevel;

/// Keys shared by the tenants (key creation is not what is measured).
const KEYS: usize = 10;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    let tenants = env_usize("KEYSEAL_BENCH_TENANTS", 1000);
    let runs = env_usize("KEYSEAL_BENCH_RUNS", 5);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let state = tempfile::tempdir().unwrap();
        let vault = common::vault::Vault::start(common::vault::args(state.path(), RecoveryLevel::Recoverable)).await;
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec!["--data-dir".to_owned(), dir.path().display().to_string()];
        args.extend(vault.worker_flags());
        let settings: Settings = config::parse_flags(args).expect("valid bench settings");
        let shard = Arc::new(Shard::open(ShardId(0), &settings.shard_options(), settings.vault(), Arc::new(SystemClock)).unwrap());
        let prober = Prober::new(shard.clone(), settings.probe_options(), rewrapper::channel().0);
        let mut versions = Vec::new();
        for k in 0..KEYS {
            versions.push(vault.create(&format!("key-{k}"), serde_json::json!({"kty": "RSA", "key_size": 2048})).await);
        }
        let mut txn = shard.store.transaction();
        for t in 0..tenants {
            txn.event(
                &format!("tenant-{t}"),
                Kind::EncryptionEnabled(EncryptionEnabled {
                    key_uri: vault.key_uri(&format!("key-{}", t % KEYS)),
                    key_version: versions[t % KEYS].clone(),
                }),
            );
        }
        txn.commit(SystemClock.now_ms()).unwrap();
        println!("probe rounds: {tenants} tenants on {KEYS} keys in one emulator (TLS, official client), {runs} runs");
        for (label, canary) in [("plain", false), ("canary", true)] {
            let (mut seconds, mut calls) = (Vec::new(), Vec::new());
            for _ in 0..runs {
                let before: u64 = vault.emulator.calls().values().sum();
                let started = Instant::now();
                let summary = prober.probe_round(canary).await.unwrap();
                seconds.push(started.elapsed().as_secs_f64());
                assert_eq!(summary.probed, tenants);
                assert_eq!(summary.events, 0, "every key is healthy");
                calls.push((vault.emulator.calls().values().sum::<u64>() - before) as f64);
            }
            let s = median(seconds);
            println!(
                "  {label:>6} round: median {s:.2} s ({:.1}% of the default 60 s interval), {:.0} vault calls per round",
                s / 60.0 * 100.0,
                median(calls)
            );
        }
    });
}
