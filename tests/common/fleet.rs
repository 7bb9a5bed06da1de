//! Worker processes sharing one deployment (vhost and data dir), and what
//! shard tests ask of them: who owns which shard, whether the shards are
//! balanced, and whether every tenant's records reached its shard's owner.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Child;
use std::time::Duration;

use super::*;
use keyseal::broker::publish::synthetic;
use keyseal::placement::shard_of;
use keyseal::proto::v1::IngestRecord;
use keyseal::storage::Store;

/// Worker processes on one vhost and one data dir.
pub struct Fleet<'a> {
    vhost: &'a Vhost,
    /// The deployment's shard count (`--shards`).
    pub shards: u32,
    dir: &'a Path,
    flags: Vec<String>,
    workers: Vec<(u16, Child)>,
}

impl<'a> Fleet<'a> {
    pub fn new(vhost: &'a Vhost, dir: &'a Path, shards: u32, extra: &[&str]) -> Self {
        let mut flags: Vec<String> =
            ["--shards", &shards.to_string(), "--rebalance-interval", "1s", "--amqp-heartbeat", "5s"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        flags.extend(extra.iter().map(|s| s.to_string()));
        Self { vhost, dir, shards, flags, workers: Vec::new() }
    }

    pub fn spawn(&mut self, extra: &[&str]) {
        let port = free_port();
        let mut flags = self.flags.clone();
        flags.extend(extra.iter().map(|s| s.to_string()));
        self.workers.push((port, spawn_worker(self.vhost, self.dir, port, &flags)));
    }

    pub fn base(&self, worker: usize) -> String {
        format!("http://127.0.0.1:{}", self.workers[worker].0)
    }

    /// Each live worker's owned shards, once all of them answer ready.
    pub async fn ownership(&self) -> Option<Vec<BTreeSet<u32>>> {
        let mut all = Vec::new();
        for worker in 0..self.workers.len() {
            all.push(owned(&self.base(worker)).await?);
        }
        Some(all)
    }

    /// Waits until every shard is owned exactly once, by workers holding
    /// `min..=max` shards each.
    pub async fn wait_balanced(&self, min: usize, max: usize, timeout: Duration) -> Vec<BTreeSet<u32>> {
        let mut last = None;
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Some(all) = self.ownership().await {
                let union: Vec<u32> = all.iter().flatten().copied().collect();
                let once =
                    union.len() == self.shards as usize && union.iter().collect::<BTreeSet<_>>().len() == union.len();
                if once && all.iter().all(|s| (min..=max).contains(&s.len())) {
                    return all;
                }
                last = Some(all);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("shards not balanced {min}..={max} per worker within {timeout:?}: last seen {last:?}");
    }

    /// The worker that owns `tenant`'s shard.
    pub async fn owner_of(&self, tenant: &str) -> usize {
        let shard = shard_of(tenant, self.shards).0;
        let all = self.ownership().await.expect("every worker answers");
        all.iter().position(|s| s.contains(&shard)).expect("every shard owned")
    }

    pub fn kill(&mut self, worker: usize) {
        let (_, mut child) = self.workers.remove(worker);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    pub fn terminate(&mut self, worker: usize) {
        let (_, mut child) = self.workers.remove(worker);
        terminate(&mut child);
    }
}

impl Drop for Fleet<'_> {
    fn drop(&mut self) {
        for (_, child) in &mut self.workers {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// SIGTERM, then wait for the process to end.
pub fn terminate(child: &mut Child) {
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: kill(2) with a pid this test spawned and has not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    child.wait().unwrap();
}

/// The shards the worker at `base` owns, when it answers ready.
pub async fn owned(base: &str) -> Option<BTreeSet<u32>> {
    let response = reqwest::get(format!("{base}/readyz")).await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let body: serde_json::Value = response.json().await.ok()?;
    Some(body["shards"].as_array()?.iter().filter_map(|s| s.as_u64()).map(|s| s as u32).collect())
}

/// `per_tenant` records of `prefix` for each of `count` tenants `tenant-<t>`.
pub fn tenants(count: usize, per_tenant: usize, prefix: &str) -> Vec<IngestRecord> {
    (0..count).flat_map(|t| synthetic(&format!("tenant-{t}"), prefix, per_tenant, 200, 1)).collect()
}

/// Waits until every tenant in `expected` has its count at its shard's owner.
pub async fn wait_for_all(fleet: &Fleet<'_>, expected: &BTreeMap<String, u64>, timeout: Duration) {
    wait_until("every tenant's records at its shard's owner", timeout, || async {
        let Some(all) = fleet.ownership().await else { return false };
        for (tenant, &total) in expected {
            let shard = shard_of(tenant, fleet.shards).0;
            let Some(owner) = all.iter().position(|s| s.contains(&shard)) else { return false };
            if counts(&fleet.base(owner), tenant).await.is_none_or(|(h, s)| h + s != total) {
                return false;
            }
        }
        true
    })
    .await;
}

/// Per shard store: tenant -> records, read from the stores directly
/// (every worker stopped).
pub fn stored_per_shard(dir: &Path, shards: u32) -> Vec<BTreeMap<String, u64>> {
    (0..shards)
        .map(|i| {
            let store = Store::open(&dir.join("shards").join(i.to_string())).unwrap();
            store.tenants().into_iter().map(|(t, p)| (t, p.hot_records + p.sealed_records)).collect()
        })
        .collect()
}

/// Asserts that each tenant of `expected` has exactly its count stored, all
/// of it in the shard the hash names and none elsewhere (read from the
/// stores directly: every worker stopped). Records are keyed by id, so the
/// counts also say that each record was stored once.
pub fn assert_each_tenant_once_on_its_shard(dir: &Path, shards: u32, expected: &BTreeMap<String, u64>) {
    let per_shard = stored_per_shard(dir, shards);
    for (tenant, total) in expected {
        let home = shard_of(tenant, shards).0 as usize;
        for (i, stored) in per_shard.iter().enumerate() {
            let found = stored.get(tenant).copied().unwrap_or(0);
            assert_eq!(found, if i == home { *total } else { 0 }, "{tenant} in shard {i}");
        }
    }
}

/// Records per tenant in `records`.
pub fn expected_counts(records: &[IngestRecord]) -> BTreeMap<String, u64> {
    let mut expected = BTreeMap::new();
    for record in records {
        *expected.entry(record.tenant_id.clone()).or_insert(0) += 1;
    }
    expected
}

/// `keyseal_records_ingested_total{result="duplicate"}` of the worker at
/// `base`, summed over its shards.
pub async fn duplicates(base: &str) -> f64 {
    super::scrape_sum(base, "keyseal_records_ingested_total", &[("result", "duplicate")]).await.unwrap_or(0.0)
}
