//! `--vault-rate` is per worker and per vault, as documented: a worker
//! owning many shards has one Key Vault client, so its shards share one
//! pace. Eight shards, sixteen tenants with their own keys on one vault,
//! every key enabled and then rolled; the vault's own audit log must never
//! show more calls in a second than one pace allows.

mod common;

use std::time::Duration;

use common::byok::setup;
use common::*;
use keyseal::broker::publish::synthetic;
use keyvault_emulator::RecoveryLevel;

/// The worker's `--vault-rate`.
const RATE: usize = 10;

/// The most calls the vault's log shows in any one-second window. One
/// pace lets an idle vault take a second's worth at once and then the rate,
/// so no window holds more than twice the rate; a pace per shard would let
/// each of eight shards do that.
fn busiest_second(times_ms: &mut [i64]) -> usize {
    times_ms.sort_unstable();
    let mut busiest = 0;
    let mut start = 0;
    for end in 0..times_ms.len() {
        while times_ms[end] - times_ms[start] >= 1000 {
            start += 1;
        }
        busiest = busiest.max(end - start + 1);
    }
    busiest
}

fn ms(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339).expect("an RFC 3339 time").timestamp_millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_shards_share_one_pace_per_vault() {
    let rate = RATE.to_string();
    let flags = ["--shards", "8", "--vault-rate", &rate, "--probe-interval", "1s"];
    let s = setup("vault-pace", RecoveryLevel::Recoverable, None, &flags).await;
    let tenants: Vec<String> = (0..16).map(|i| format!("paced-{i}")).collect();
    for tenant in &tenants {
        s.rsa_key(tenant).await;
    }
    let uris: Vec<String> = tenants.iter().map(|tenant| s.vault.key_uri(tenant)).collect();
    let enables = tenants.iter().zip(&uris).map(|(tenant, uri)| s.enable(tenant, uri));
    for (code, answer) in futures_util::future::join_all(enables).await {
        assert_eq!(code, 200, "{answer}");
    }
    let records: Vec<_> = tenants.iter().flat_map(|t| synthetic(t, "r-", 2, 64, 1)).collect();
    publish_confirmed(&s.vhost, &records).await;
    for tenant in &tenants {
        wait_for_records(&s.base, tenant, 2, Duration::from_secs(60)).await;
    }
    s.clock.advance(Duration::from_secs(49 * 3600));
    let sealed: serde_json::Value = s.sweep().await;
    let total: u64 = sealed["shards"].as_array().unwrap().iter().map(|s| s["seal"]["sealed"].as_u64().unwrap()).sum();
    assert_eq!(total, records.len() as u64, "{sealed}");

    // A roll of every key: probes find the new versions, the rewrapper
    // moves every sealed data key under them.
    let mut rolled = Vec::new();
    for tenant in &tenants {
        rolled.push(s.vault.admin.rotate(tenant).await.unwrap());
    }
    for (tenant, version) in tenants.iter().zip(&rolled) {
        wait_until(&format!("{tenant} on {version}"), Duration::from_secs(120), || async {
            let status = s.status(tenant).await;
            status["encryption"]["keyVersion"] == version.as_str() && status["dataKeys"]["onOlderRoot"] == 0
        })
        .await;
    }

    // keyseal's calls: the test's own (creating and rotating keys) aside.
    let log: Vec<_> = s
        .vault
        .emulator
        .audit_log()
        .into_iter()
        .filter(|event| !["KeyCreate", "KeyRotate"].contains(&event.operation_name.as_str()))
        .collect();
    assert!(log.len() > 4 * tenants.len(), "the vault was called for every tenant: {} calls", log.len());
    let mut times: Vec<i64> = log.iter().map(|event| ms(&event.time)).collect();
    let busiest = busiest_second(&mut times);
    assert!(
        busiest <= 2 * RATE,
        "the vault saw {busiest} calls in one second from one worker paced at {RATE}/s ({} calls in all)",
        log.len()
    );
    s.worker.stop().await;
}
