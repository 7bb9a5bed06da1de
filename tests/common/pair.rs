//! Two in-process workers of one deployment (two shards, one each) sharing
//! a vhost, a data dir, a manual clock and a Key Vault emulator: what a
//! test needs to ask the same thing of a tenant's owner and of a worker
//! that forwards to it.

use std::sync::Arc;
use std::time::Duration;

use super::vault::{Vault, args};
use super::*;
use keyseal::clock::ManualClock;
use keyseal::placement::ShardId;
use keyseal::placement::shard_of;
use keyvault_emulator::RecoveryLevel;
use serde_json::{Value, json};

/// The deployment's shard count.
pub const SHARDS: u32 = 2;

pub struct Pair {
    pub vault: Vault,
    pub vhost: Vhost,
    pub dir: tempfile::TempDir,
    pub clock: ManualClock,
    pub workers: [Worker; 2],
    pub http: reqwest::Client,
    _state: tempfile::TempDir,
}

impl Pair {
    /// Starts the emulator and both workers (with `extra` flags) and waits
    /// until each owns one shard.
    pub async fn start(name: &str, extra: &[&str]) -> Self {
        let state = tempfile::tempdir().unwrap();
        let vault = Vault::start(args(state.path(), RecoveryLevel::Recoverable)).await;
        let vhost = Vhost::new(name);
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::starting_now();
        let vault_flags = vault.worker_flags();
        let mut flags: Vec<&str> = vault_flags.iter().map(String::as_str).collect();
        flags.extend_from_slice(&["--shards", "2", "--rebalance-interval", "500ms"]);
        flags.extend_from_slice(extra);
        let mut workers = Vec::new();
        for _ in 0..2 {
            let settings = settings(&vhost, dir.path(), &flags);
            workers.push(Worker::start(settings, Arc::new(clock.clone())).await.expect("worker starts"));
        }
        let workers: [Worker; 2] = workers.try_into().unwrap_or_else(|_| unreachable!());
        wait_until("one shard each", Duration::from_secs(60), || async { workers.iter().all(|w| w.owned.len() == 1) })
            .await;
        Self { vault, vhost, dir, clock, workers, http: reqwest::Client::new(), _state: state }
    }

    /// The base URL of the worker that owns `tenant`'s shard, and of the
    /// one that forwards to it.
    pub fn owner_and_other(&self, tenant: &str) -> (String, String) {
        let shard = shard_of(tenant, SHARDS);
        let owner = self.workers.iter().position(|w| w.owned.get(shard).is_some()).expect("every shard is owned");
        (base_url(&self.workers[owner]), base_url(&self.workers[1 - owner]))
    }

    /// Both base URLs, the owner's first.
    pub fn both(&self, tenant: &str) -> [String; 2] {
        let (owner, other) = self.owner_and_other(tenant);
        [owner, other]
    }

    /// The running shard that holds `tenant`.
    pub fn shard_of(&self, tenant: &str) -> Arc<keyseal::fleet::running::RunningShard> {
        let shard = shard_of(tenant, SHARDS);
        self.workers.iter().find_map(|w| w.owned.get(shard)).expect("every shard is owned")
    }

    pub async fn status(&self, base: &str, tenant: &str) -> (u16, Value) {
        let response = self.http.get(format!("{base}/v1/tenants/{tenant}")).send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    pub async fn enable(&self, base: &str, tenant: &str, key_uri: &str) -> (u16, Value) {
        let response = self
            .http
            .put(format!("{base}/v1/tenants/{tenant}/encryption"))
            .json(&json!({"keyUri": key_uri}))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    /// Waits until `tenant`'s status (asked of its owner) satisfies `done`.
    pub async fn wait_for_status(&self, tenant: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let (owner, _) = self.owner_and_other(tenant);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (code, status) = self.status(&owner, tenant).await;
            if code == 200 && done(&status) {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "{tenant} never became {what}: {status}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stop(self) {
        let [a, b] = self.workers;
        tokio::join!(a.stop(), b.stop());
    }
}

/// A tenant id starting with `prefix` that lives on shard `shard`.
pub fn tenant_on(shard: u32, prefix: &str) -> String {
    (0..).map(|i| format!("{prefix}-{i}")).find(|t| shard_of(t, SHARDS) == ShardId(shard)).expect("some id")
}
