//! A key roll's rewrap survives kill -9: the worker runs as a child process
//! against a slow vault, is killed with part of the rewrap committed, the
//! key rolls once more while it is down, and after a restart every sealed
//! data key ends on the newest version, every record reads back, and no
//! data key was replaced or lost on the way.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::vault::{Vault, args, version_of};
use common::*;
use keyseal::broker::publish::synthetic;
use keyseal::crypto::data_key::DataKeyId;
use keyseal::proto::v1::Layer;
use keyseal::proto::v1::event::Kind;
use keyseal::proto::v1::root_key_ref::Root;
use keyseal::storage::Store;
use keyvault_emulator::RecoveryLevel;
use reqwest::Method;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(120);
const RECORDS: usize = 1000;

/// Flags of the child worker: the emulator as its vault, fast sealing and
/// probes, and 20 records per data key (1,000 sealed records make 50 sealed
/// data keys).
fn child_flags(vault: &Vault) -> Vec<String> {
    let mut flags = vault.worker_flags();
    flags.extend(
        ["--seal-after", "1s", "--sweep-interval", "500ms", "--probe-interval", "300ms", "--max-records-per-dek", "20"]
            .map(String::from),
    );
    flags
}

/// The tenant's sealed data keys as stored: id → version that wraps it.
fn sealed_keys(data_dir: &std::path::Path) -> BTreeMap<Vec<u8>, String> {
    let store = Store::open(&data_dir.join("db")).unwrap();
    store
        .data_keys_of("acme")
        .unwrap()
        .into_iter()
        .filter(|(id, _)| DataKeyId::from_bytes(id).unwrap().layer == Layer::Sealed)
        .map(|(id, wrapped)| match wrapped.wrapped_by.unwrap().root.unwrap() {
            Root::VaultKeyId(kid) => (id, kid.rsplit('/').next().unwrap().to_owned()),
            other => panic!("sealed key on {other:?}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_rewrap_resumes_on_the_newest_version_losing_nothing() {
    let state = tempfile::tempdir().unwrap();
    let mut emulator_args = args(state.path(), RecoveryLevel::Recoverable);
    // Every vault call takes 100 ms: rewrapping 50 data keys takes ~10 s.
    emulator_args.latency = Duration::from_millis(100);
    let vault = Vault::start(emulator_args).await;
    let v1 = vault.create("k", json!({"kty": "RSA", "key_size": 2048})).await;
    let vhost = Vhost::new("rewrap-kill");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let status = || async { reqwest::get(format!("{base}/v1/tenants/acme")).await.ok()?.json::<Value>().await.ok() };

    let mut child = spawn_worker(&vhost, dir.path(), port, &child_flags(&vault));
    wait_until("the worker", WAIT, || async { reqwest::get(format!("{base}/healthz")).await.is_ok() }).await;
    enable(&base, "acme", &vault.key_uri("k")).await;
    let records = synthetic("acme", "r-", RECORDS, 200, 1);
    publish_confirmed(&vhost, &records).await;
    wait_until("every record sealed", WAIT, || async {
        status().await.is_some_and(|s| s["records"]["sealed"] == RECORDS as u64)
    })
    .await;

    // Roll, and kill the worker once part of the rewrap is committed.
    let v2 = version_of(&vault.ok(Method::POST, "/keys/k/rotate", None).await);
    wait_until("the rewrap to be part done", WAIT, || async {
        status().await.is_some_and(|s| {
            // About half of the ~50 sealed keys still on v1 (steps of 16).
            let older = s["dataKeys"]["onOlderRoot"].as_u64().unwrap();
            s["encryption"]["keyVersion"] == v2.as_str() && older > 0 && older <= (RECORDS / 20 / 2) as u64
        })
    })
    .await;
    // Reads keep working mid-rewrap: a record's data key id never changes.
    for record in records.iter().step_by(97) {
        let (code, body) = get_record(&base, "acme", &record.record_id).await;
        assert_eq!((code, body.as_slice()), (200, record.payload.as_slice()), "{}", record.record_id);
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let at_kill = sealed_keys(dir.path());
    let on = |version: &str| at_kill.values().filter(|v| *v == version).count();
    assert!(at_kill.len() >= RECORDS / 20, "{} sealed data keys", at_kill.len());
    assert!(on(&v1) > 0 && on(&v2) > 0, "killed mid-rewrap: {} on v1, {} on v2", on(&v1), on(&v2));

    // Another roll while the worker is down.
    let v3 = version_of(&vault.ok(Method::POST, "/keys/k/rotate", None).await);
    let mut child = spawn_worker(&vhost, dir.path(), port, &child_flags(&vault));
    wait_until("the rewrap to finish on the newest version", WAIT, || async {
        status().await.is_some_and(|s| {
            s["encryption"]["keyVersion"] == v3.as_str()
                && s["encryption"]["rewrapPending"] == false
                && s["dataKeys"]["onOlderRoot"] == 0
        })
    })
    .await;
    for record in &records {
        let (code, body) = get_record(&base, "acme", &record.record_id).await;
        assert_eq!((code, body.as_slice()), (200, record.payload.as_slice()), "{}", record.record_id);
    }
    let metrics = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    let sample = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
    };
    assert_eq!(sample("keyseal_rewrap_pending_data_keys{tenant=\"acme\"}"), 0.0);
    let rewrapped = common::metric_sum(&metrics, "keyseal_rewrap_data_keys_total", &[]).expect("the counter");
    assert!(rewrapped >= at_kill.len() as f64, "this process rewrapped every key to v3: {rewrapped}");
    child.kill().unwrap();
    child.wait().unwrap();

    let after = sealed_keys(dir.path());
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        at_kill.keys().collect::<Vec<_>>(),
        "the same data keys, none replaced or lost"
    );
    assert!(after.values().all(|v| *v == v3), "{after:?}");
    // Progress was committed step by step, each step counting up.
    let store = Store::open(&dir.path().join("db")).unwrap();
    let steps: Vec<u32> = store
        .events_after(0, usize::MAX)
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.kind {
            Some(Kind::RewrapProgress(p)) if p.total > 0 => Some(p.rewrapped),
            _ => None,
        })
        .collect();
    assert!(steps.len() >= 4, "rewrap progress events: {steps:?}");
}
