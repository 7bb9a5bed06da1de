//! What the admin API serves from ([`AdminState`]): the shards the worker
//! owns, its settings and clock, whether its broker tasks are up, and the
//! forwarder that reaches the owners of the other shards.

use std::sync::Arc;

use axum::http::StatusCode;

use super::reply::ApiError;
use crate::broker::Broker;
use crate::clock::SharedClock;
use crate::config::Settings;
use crate::fleet::forward::Forwarder;
use crate::fleet::owned::OwnedShards;
use crate::fleet::running::RunningShard;
use crate::placement::ShardId;
use crate::readiness::Readiness;

/// What the admin API serves from: the shards the worker owns (each with
/// its sweeper, rewrapper and read-only views of its consumer and prober)
/// and whether the worker's own broker tasks are up.
#[derive(Clone)]
pub struct AdminState {
    /// The shards whose tenants it answers for.
    pub owned: Arc<OwnedShards>,
    /// The worker's settings (token, grace, seal age).
    pub settings: Arc<Settings>,
    /// The worker's clock (for views that span shards).
    pub clock: SharedClock,
    /// Whether the lease connection is up.
    pub leased: Readiness,
    /// Whether the intake forwarder consumes.
    pub intake: Readiness,
    /// Sends requests for shards other workers own to their owners.
    pub forwarder: Arc<Forwarder>,
    /// The broker (an erasure removes the tenant's route binding).
    pub broker: Broker,
}

impl AdminState {
    /// The running shard of `tenant`, or 503 `shard_unavailable` (with
    /// `Retry-After`) when this worker does not own it: it may be moving,
    /// ask again shortly.
    pub fn owner_of(&self, tenant: &str) -> Result<Arc<RunningShard>, ApiError> {
        self.owned.for_tenant(tenant).map_err(|shard| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shard_unavailable",
                format!("tenant {tenant} lives on shard {shard}, which this worker does not own right now"),
            )
            .retry_after(self.settings.rebalance_interval)
        })
    }

    /// Shard `id` of a `?shard=` query, when the deployment has it (else 400).
    pub fn existing_shard(&self, id: u32) -> Result<ShardId, ApiError> {
        let count = self.owned.count();
        if id < count {
            return Ok(ShardId(id));
        }
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("shard {id} does not exist: the deployment has {count} (0 to {})", count - 1),
        ))
    }

    /// The owned shards a `?shard=` query names: that one (400 when the
    /// deployment has no such shard, 503 when not owned), or all of them.
    pub fn shards_named(&self, shard: Option<u32>) -> Result<Vec<Arc<RunningShard>>, ApiError> {
        match shard {
            Some(id) => self.owned.get(self.existing_shard(id)?).map(|running| vec![running]).ok_or_else(|| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "shard_unavailable",
                    format!("this worker does not own shard {id}"),
                )
                .retry_after(self.settings.rebalance_interval)
            }),
            None => Ok(self.owned.all().into_iter().map(|(_, owned)| owned.running).collect()),
        }
    }

    /// Ready when the worker holds its lease connection, forwards the intake,
    /// owns every shard it is pinned to (`--own-shards`) and every shard it
    /// owns consumes. A balancing worker with no shard is ready: a standby.
    pub fn is_ready(&self) -> bool {
        let owned = self.owned.all();
        let pinned_owned = self
            .settings
            .own_shards
            .as_ref()
            .is_none_or(|pinned| pinned.0.iter().all(|&id| owned.iter().any(|(owned, _)| owned.0 == id)));
        self.leased.is_ready()
            && self.intake.is_ready()
            && pinned_owned
            && owned.iter().all(|(_, owned)| owned.running.ready.is_ready())
    }
}
