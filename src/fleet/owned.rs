//! The shards a worker owns right now, shared by the balancer (which adds
//! and removes them) and the admin API (which finds a tenant's shard here).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

use super::running::RunningShard;
use crate::placement::ShardId;
use crate::placement::shard_of;
use crate::telemetry::metrics as m;

/// The worker's owned shards, by id.
pub struct OwnedShards {
    count: u32,
    worker: String,
    workers: AtomicU32,
    /// The broker node (`host:port`) its lease connection is on.
    node: RwLock<Option<String>>,
    shards: RwLock<BTreeMap<ShardId, Owned>>,
}

/// An owned shard and since when (Unix ms).
#[derive(Clone)]
pub struct Owned {
    /// The running shard.
    pub running: Arc<RunningShard>,
    /// When this worker took it.
    pub since_ms: i64,
}

impl OwnedShards {
    /// None owned yet, in a deployment of `count` shards, by the worker
    /// named `worker` (shown as the owner of its shards).
    pub fn new(count: u32, worker: String) -> Self {
        Self {
            count,
            worker,
            workers: AtomicU32::new(1),
            node: RwLock::default(),
            shards: RwLock::new(BTreeMap::new()),
        }
    }

    /// This worker's name.
    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// Live workers as last counted by the balancer.
    pub fn workers(&self) -> u32 {
        self.workers.load(Ordering::Relaxed)
    }

    /// Records the balancer's latest count of live workers.
    pub fn set_workers(&self, workers: u32) {
        self.workers.store(workers, Ordering::Relaxed);
    }

    /// The broker node (`host:port`) holding this worker's leases, while
    /// it holds them: an operator (and the cluster test) sees which node's
    /// loss would move its shards.
    pub fn broker_node(&self) -> Option<String> {
        self.node.read().expect("broker node lock").clone()
    }

    /// Records the node of the lease connection (`None` once it is lost).
    pub fn set_broker_node(&self, node: Option<String>) {
        *self.node.write().expect("broker node lock") = node;
    }

    /// The deployment's shard count.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The shard `tenant` lives on.
    pub fn shard_of(&self, tenant: &str) -> ShardId {
        shard_of(tenant, self.count)
    }

    /// The running shard `id`, if this worker owns it.
    pub fn get(&self, id: ShardId) -> Option<Arc<RunningShard>> {
        self.read().get(&id).map(|owned| owned.running.clone())
    }

    /// The running shard of `tenant`, if this worker owns it.
    pub fn for_tenant(&self, tenant: &str) -> Result<Arc<RunningShard>, ShardId> {
        let id = self.shard_of(tenant);
        self.get(id).ok_or(id)
    }

    /// Every owned shard, by id.
    pub fn all(&self) -> Vec<(ShardId, Owned)> {
        self.read().iter().map(|(id, owned)| (*id, owned.clone())).collect()
    }

    /// The ids of the owned shards.
    pub fn ids(&self) -> Vec<ShardId> {
        self.read().keys().copied().collect()
    }

    /// How many shards are owned.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether none is owned.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records a shard as owned.
    pub fn insert(&self, running: Arc<RunningShard>, since_ms: i64) {
        let mut shards = self.shards.write().expect("owned shards lock");
        shards.insert(running.shard.id, Owned { running, since_ms });
        m::shards_owned(shards.len());
    }

    /// Takes a shard out, so no new request reaches it.
    pub fn remove(&self, id: ShardId) -> Option<Arc<RunningShard>> {
        let mut shards = self.shards.write().expect("owned shards lock");
        let removed = shards.remove(&id).map(|owned| owned.running);
        m::shards_owned(shards.len());
        removed
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<ShardId, Owned>> {
        self.shards.read().expect("owned shards lock")
    }
}
