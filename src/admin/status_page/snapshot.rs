//! What the status page shows, read from the owned shards at one moment
//! ([`snapshot`]): the worker's totals, the deployment's shards, and at
//! most [`MAX_TENANT_ROWS`] tenants, those that need attention first.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::admin::shards_api::ShardLine;
use crate::config::Settings;
use crate::health::policy::KeyHealthView;
use crate::placement::ShardList;
use crate::proto::store::{TenantProjection, TenantState};
use crate::shard::Shard;
use crate::storage::{StoreError, TenantCensus, keys};
use crate::sweeps::seal as sealing;

/// Seconds between the page's self-refreshes.
pub const REFRESH_SECONDS: u32 = 5;

/// Most tenant rows the page shows: those that need attention (locked
/// down, degraded) first, then the others by id. The totals count every
/// tenant; `GET /v1/tenants/{tenant}` shows any of them.
pub const MAX_TENANT_ROWS: usize = 500;

/// Most overdue index entries one [`snapshot`] reads to find each tenant's
/// oldest overdue record (a few milliseconds of work).
pub const OVERDUE_SCAN_LIMIT: usize = 10_000;

/// Everything the page shows, read at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// When the snapshot was taken (Unix ms, the worker's clock).
    pub taken_at_ms: i64,
    /// Whether the worker holds its leases and every owned shard consumes.
    pub amqp_ready: bool,
    /// The worker's `--seal-after`.
    pub seal_after: Duration,
    /// How far past the seal age the oldest record in `hot` is (what
    /// `/metrics` reports as `keyseal_seal_lag_seconds`).
    pub seal_lag: Duration,
    /// The shards this worker owns.
    pub shards: ShardList,
    /// The deployment's shard count.
    pub shard_count: u32,
    /// Every shard of the deployment: its owner, since when, its tenants.
    pub deployment: Vec<ShardLine>,
    /// Totals over every tenant of the owned shards.
    pub census: TenantCensus,
    /// At most [`MAX_TENANT_ROWS`] tenants of the owned shards: locked down,
    /// then degraded, then the others, each group by id.
    pub tenants: Vec<TenantRow>,
}

/// One tenant's line on the page.
#[derive(Debug, Clone)]
pub struct TenantRow {
    /// The tenant id.
    pub tenant: String,
    /// Its projection: state, key in use, record counts.
    pub projection: TenantProjection,
    /// Its key health, as the admin API reports it.
    pub health: KeyHealthView,
    /// How far past the seal age its oldest record in `hot` is; `None` when
    /// the bounded scan of overdue records did not reach this tenant.
    pub seal_lag: Option<Duration>,
}

/// Reads what the page shows from the worker's owned `shards` now, with
/// the `deployment`'s shard lines (asked of their owners beforehand).
pub fn snapshot(
    shards: &[Arc<Shard>],
    deployment: Vec<ShardLine>,
    now_ms: i64,
    amqp_ready: bool,
    settings: &Settings,
) -> Result<Snapshot, StoreError> {
    let mut census = TenantCensus::default();
    let mut seal_lag = Duration::ZERO;
    let mut overdue = Vec::with_capacity(shards.len());
    for shard in shards {
        census.merge(&shard.store.census());
        let (lag, oldest) = overdue_of(shard, now_ms, settings.seal_after)?;
        seal_lag = seal_lag.max(lag);
        overdue.push(oldest);
    }
    let mut tenants = Vec::new();
    for group in [Some(TenantState::LockedDown), Some(TenantState::Degraded), None] {
        let wanted = |p: &TenantProjection| match group {
            Some(state) => p.state() == state,
            None => !matches!(p.state(), TenantState::LockedDown | TenantState::Degraded),
        };
        let mut rows = Vec::new();
        for (shard, oldest) in shards.iter().zip(&overdue) {
            let room = MAX_TENANT_ROWS - tenants.len();
            for (tenant, projection) in shard.store.first_tenants_where(room, wanted) {
                rows.push(oldest.row(tenant, projection, now_ms, settings));
            }
        }
        rows.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        rows.truncate(MAX_TENANT_ROWS - tenants.len());
        tenants.extend(rows);
    }
    Ok(Snapshot {
        taken_at_ms: now_ms,
        amqp_ready,
        seal_after: settings.seal_after,
        seal_lag,
        shards: ShardList(shards.iter().map(|shard| shard.id.0).collect()),
        shard_count: deployment.len() as u32,
        deployment,
        census,
        tenants,
    })
}

/// What a bounded read of a shard's overdue records found: each tenant's
/// oldest overdue record, and whether the read reached them all.
struct Overdue {
    oldest: HashMap<String, i64>,
    complete: bool,
    seal_after: Duration,
}

impl Overdue {
    fn row(&self, tenant: String, projection: TenantProjection, now_ms: i64, settings: &Settings) -> TenantRow {
        let seal_lag = match self.oldest.get(tenant.as_str()) {
            Some(&ingested_at_ms) => Some(sealing::seal_lag(now_ms, self.seal_after, ingested_at_ms)),
            None if self.complete || projection.hot_records == 0 => Some(Duration::ZERO),
            None => None,
        };
        TenantRow { health: KeyHealthView::of(&projection, settings.lockdown_after), tenant, projection, seal_lag }
    }
}

/// `shard`'s seal lag and its tenants' oldest overdue records.
fn overdue_of(shard: &Shard, now_ms: i64, seal_after: Duration) -> Result<(Duration, Overdue), StoreError> {
    // A tenant's seal lag needs its oldest record in `hot`, but the time
    // index is ordered by time, not by tenant. Reading only the overdue part
    // of it (before the seal cutoff) finds every tenant's oldest overdue
    // record, and that part is small: each sweep seals the overdue records
    // of every active tenant. Only a tenant whose sealing is held back piles
    // up a backlog there, so the read stops after OVERDUE_SCAN_LIMIT entries
    // and a tenant it did not reach shows its lag as not measured. The
    // shard-wide lag is exact either way: it is the first entry's.
    let cutoff_ms = sealing::seal_cutoff_ms(now_ms, seal_after);
    let overdue = shard.store.ingested_before(None, cutoff_ms, OVERDUE_SCAN_LIMIT)?;
    let mut oldest = HashMap::new();
    for entry in &overdue {
        if let Some((tenant, _)) = keys::split_record_key(&entry.record_key) {
            oldest.entry(tenant.to_owned()).or_insert(entry.ingested_at_ms);
        }
    }
    let lag =
        overdue.first().map_or(Duration::ZERO, |entry| sealing::seal_lag(now_ms, seal_after, entry.ingested_at_ms));
    Ok((lag, Overdue { oldest, complete: overdue.len() < OVERDUE_SCAN_LIMIT, seal_after }))
}
