//! Prometheus metrics. Each function records one thing that happened, so
//! call sites stay one line and names and labels live in one place. Labels
//! never carry key material or payloads; tenant is the only high-cardinality
//! label and is used only where a per-tenant view is needed.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;

use crate::placement::ShardId;

/// How long a gauge series may go without an update before `/metrics`
/// drops it. Per-tenant series are set when a tenant's projection changes,
/// so a flood of tenants that then go quiet does not keep a series each for
/// ever; shard-wide gauges are re-set by every scrape's refresh.
pub const GAUGE_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Whether ingest is paused by a storage failure, re-set on every refresh.
static INGEST_PAUSED: AtomicBool = AtomicBool::new(false);

/// Installs the process-wide recorder once and returns the handle that
/// renders `/metrics`. Every worker in a process shares it.
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .idle_timeout(MetricKindMask::GAUGE, Some(GAUGE_IDLE_TIMEOUT))
                .set_buckets(&[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5])
                .expect("static buckets are valid")
                // An erasure rewrites files: seconds to minutes.
                .set_buckets_for_metric(
                    Matcher::Full("keyseal_erasure_seconds".into()),
                    &[0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0],
                )
                .expect("static buckets are valid")
                .install_recorder()
                .expect("no other metrics recorder is installed");
            describe();
            // Counters of rare events exist from the start, so a dashboard
            // or an alert sees 0 rather than no series.
            for layer in ["hot", "sealed"] {
                counter!("keyseal_corrupt_records_total", "layer" => layer).absolute(0);
            }
            counter!("keyseal_data_keys_retired_total").absolute(0);
            counter!("keyseal_tenants_erased_total").absolute(0);
            counter!("keyseal_audit_dropped_total").absolute(0);
            for via in ["direct", "forwarded"] {
                counter!("keyseal_request_panics_total", "via" => via).absolute(0);
            }
            // Registered, so it renders (empty) before the first erasure.
            drop(histogram!("keyseal_erasure_seconds"));
            handle
        })
        .clone()
}

fn describe() {
    describe_counter!(
        "keyseal_records_ingested_total",
        Unit::Count,
        "Ingested messages by result: stored, duplicate, dead_lettered."
    );
    describe_counter!("keyseal_dead_letters_total", Unit::Count, "Messages sent to keyseal.ingest.dead, by reason.");
    describe_counter!(
        "keyseal_request_panics_total",
        Unit::Count,
        "Admin requests whose handler panicked (answered 500), direct or forwarded."
    );
    describe_counter!(
        "keyseal_forwarded_requests_refused_total",
        Unit::Count,
        "Forwarded admin requests an owner refused before running them, by reason (unauthorized, replayed, forward_expired, ...)."
    );
    describe_histogram!(
        "keyseal_batch_commit_seconds",
        Unit::Seconds,
        "Time to validate, encrypt, durably write and ack one ingest batch."
    );
    describe_gauge!(
        "keyseal_ingest_paused",
        Unit::Count,
        "1 while consuming is paused because the store rejects writes."
    );
    describe_counter!("keyseal_records_sealed_total", Unit::Count, "Records moved from hot to sealed.");
    describe_counter!(
        "keyseal_seal_held_back_total",
        Unit::Count,
        "Tenants a seal sweep held back because their sealed data key could not be had, by reason."
    );
    describe_gauge!(
        "keyseal_records",
        Unit::Count,
        "Records at rest, by tenant and layer (hot, sealed); a tenant's series expires after an hour without change."
    );
    describe_gauge!("keyseal_records_at_rest", Unit::Count, "Records at rest in the shard, by layer (hot, sealed).");
    describe_gauge!(
        "keyseal_seal_lag_seconds",
        Unit::Seconds,
        "How far past --seal-after the oldest unsealed record is (0 when none is overdue)."
    );
    describe_counter!(
        "keyseal_events_published_total",
        Unit::Count,
        "Domain events confirmed by the broker on keyseal.events."
    );
    describe_gauge!(
        "keyseal_outbox_lag_events",
        Unit::Count,
        "Events appended but not yet confirmed on keyseal.events."
    );
    describe_counter!("keyseal_data_key_cache_total", Unit::Count, "Data-key lookups by result: hit, miss.");
    describe_counter!(
        "keyseal_root_key_operations_total",
        Unit::Count,
        "Root-key wrap and unwrap calls (each one a KeyUsed audit entry), by root_kind, operation, purpose, outcome."
    );
    describe_counter!("keyseal_tenants_erased_total", Unit::Count, "Tenants erased on request.");
    describe_histogram!(
        "keyseal_erasure_seconds",
        Unit::Seconds,
        "How long an erasure took, from shredding the keys to the last file rolled."
    );
    describe_counter!(
        "keyseal_audit_dropped_total",
        Unit::Count,
        "Key-use audit entries dropped because commits kept failing while more than 100,000 waited."
    );
    describe_gauge!("keyseal_tenants", Unit::Count, "Tenants by lockdown state (active, degraded, locked_down).");
    describe_gauge!("keyseal_key_healthy", Unit::Count, "1 while a BYOK tenant's key is healthy, 0 while unavailable.");
    describe_counter!("keyseal_records_deleted_total", Unit::Count, "Records deleted, by cause (request, retention).");
    describe_gauge!(
        "keyseal_key_expires_in_seconds",
        Unit::Seconds,
        "Seconds until the version of its key a BYOK tenant uses expires (its exp), as the last probe read it."
    );
    describe_counter!(
        "keyseal_vault_requests_total",
        Unit::Count,
        "Key Vault requests by operation and outcome (ok, throttled, unreachable, error)."
    );
    describe_counter!(
        "keyseal_rewrap_data_keys_total",
        Unit::Count,
        "Sealed data keys wrapped anew under another root (key rolls, enable, disable)."
    );
    describe_gauge!(
        "keyseal_rewrap_pending_data_keys",
        Unit::Count,
        "Sealed data keys of a tenant still to be rewrapped by the running rewrap."
    );
    describe_counter!(
        "keyseal_sweep_records_total",
        Unit::Count,
        "Records handled by maintenance sweeps, by sweep (reencrypt, scrub)."
    );
    describe_gauge!(
        "keyseal_sweep_progress_ratio",
        Unit::Count,
        "Progress of the running maintenance sweep (0..1), by sweep; 1 when none runs."
    );
    describe_counter!(
        "keyseal_corrupt_records_total",
        Unit::Count,
        "Records a scrub found that do not decrypt and verify, by layer."
    );
    describe_counter!(
        "keyseal_data_keys_retired_total",
        Unit::Count,
        "Data keys deleted by the re-encryption sweep after their last record moved off them."
    );
    describe_histogram!(
        "keyseal_vault_request_seconds",
        Unit::Seconds,
        "Key Vault request latency, retries included, by operation."
    );
}

/// One ingest batch was made durable and acked (its dead letters count
/// themselves: [`super::happenings::MessageDeadLettered`]).
pub fn batch_committed(shard: ShardId, stored: u64, duplicates: u64, took: Duration) {
    let shard = shard.to_string();
    counter!("keyseal_records_ingested_total", "result" => "stored", "shard" => shard.clone()).increment(stored);
    counter!("keyseal_records_ingested_total", "result" => "duplicate", "shard" => shard.clone()).increment(duplicates);
    histogram!("keyseal_batch_commit_seconds", "shard" => shard).record(took.as_secs_f64());
}

/// Sets `keyseal_ingest_paused` (see [`super::happenings::IngestPaused`]).
pub fn set_ingest_paused(paused: bool) {
    INGEST_PAUSED.store(paused, Ordering::Relaxed);
    gauge!("keyseal_ingest_paused").set(if paused { 1.0 } else { 0.0 });
}

/// Whether ingestion is paused by a storage failure.
#[cfg(test)]
pub(super) fn ingest_paused() -> bool {
    INGEST_PAUSED.load(Ordering::Relaxed)
}

/// Re-sets the process-wide gauges that change rarely, so they outlive
/// [`GAUGE_IDLE_TIMEOUT`].
pub fn refresh_process_gauges() {
    set_ingest_paused(INGEST_PAUSED.load(Ordering::Relaxed));
}

/// Records at rest in the shard, per layer.
pub fn records_at_rest(shard: ShardId, hot: u64, sealed: u64) {
    let shard = shard.to_string();
    gauge!("keyseal_records_at_rest", "layer" => "hot", "shard" => shard.clone()).set(hot as f64);
    gauge!("keyseal_records_at_rest", "layer" => "sealed", "shard" => shard).set(sealed as f64);
}

/// A seal sweep of `shard` moved `count` records.
pub fn sealed(shard: ShardId, count: u64) {
    counter!("keyseal_records_sealed_total", "shard" => shard.to_string()).increment(count);
}

/// Starts `keyseal_seal_held_back_total` at 0 for each of `reasons`, so
/// every series exists before its first increment (the seal sweep names
/// its reasons; this module knows none).
pub fn seal_hold_reasons(reasons: impl IntoIterator<Item = &'static str>) {
    for reason in reasons {
        counter!("keyseal_seal_held_back_total", "reason" => reason).absolute(0);
    }
}

/// Current record counts of one tenant.
pub fn tenant_records(tenant: &str, hot: u64, sealed: u64) {
    gauge!("keyseal_records", "tenant" => tenant.to_owned(), "layer" => "hot").set(hot as f64);
    gauge!("keyseal_records", "tenant" => tenant.to_owned(), "layer" => "sealed").set(sealed as f64);
}

/// Seal lag of a shard, in seconds past the seal age.
pub fn seal_lag(shard: ShardId, seconds: f64) {
    gauge!("keyseal_seal_lag_seconds", "shard" => shard.to_string()).set(seconds.max(0.0));
}

/// Events of `shard` confirmed by the broker.
pub fn events_published(shard: ShardId, count: u64) {
    counter!("keyseal_events_published_total", "shard" => shard.to_string()).increment(count);
}

/// Events of a shard not yet confirmed.
pub fn outbox_lag(shard: ShardId, events: u64) {
    gauge!("keyseal_outbox_lag_events", "shard" => shard.to_string()).set(events as f64);
}

/// A data-key lookup was served from memory (`hit`) or not.
pub fn data_key_lookup(hit: bool) {
    counter!("keyseal_data_key_cache_total", "result" => if hit { "hit" } else { "miss" }).increment(1);
}

/// A root key wrapped or unwrapped a data key (or failed to): the
/// counting side of its audit entry.
pub fn key_used(used: &crate::proto::v1::KeyUsed) {
    let root = used.root.as_ref().map_or("managed", crate::proto::names::root_kind);
    let outcome = if used.outcome == "ok" { "ok" } else { "error" };
    counter!(
        "keyseal_root_key_operations_total",
        "root_kind" => root,
        "operation" => crate::proto::names::operation_name(used.operation()),
        "purpose" => crate::proto::names::purpose_name(used.purpose()),
        "outcome" => outcome,
    )
    .increment(1);
}

/// A tenant was erased (keys shredded, data removed) in `took`.
pub fn tenant_erased(took: Duration) {
    counter!("keyseal_tenants_erased_total").increment(1);
    histogram!("keyseal_erasure_seconds").record(took.as_secs_f64());
}

/// Audit entries were dropped (see `keyseal_audit_dropped_total`).
pub fn audit_dropped(entries: u64) {
    counter!("keyseal_audit_dropped_total").increment(entries);
}

/// One Key Vault request finished.
pub fn vault_request(operation: &'static str, outcome: &'static str, took: Duration) {
    counter!("keyseal_vault_requests_total", "operation" => operation, "outcome" => outcome).increment(1);
    histogram!("keyseal_vault_request_seconds", "operation" => operation).record(took.as_secs_f64());
}

/// How many tenants of a shard are in `state`.
pub fn tenants_in_state(shard: ShardId, state: &'static str, count: usize) {
    gauge!("keyseal_tenants", "state" => state, "shard" => shard.to_string()).set(count as f64);
}

/// How many shards this worker owns.
pub fn shards_owned(count: usize) {
    gauge!("keyseal_shards_owned").set(count as f64);
}

/// Starts the shard counters at 0 (every cause), so their series exist
/// before the first handover.
pub fn shard_counters() {
    for cause in ["rebalance", "shutdown", "lease_lost"] {
        counter!("keyseal_shard_handovers_total", "cause" => cause).absolute(0);
    }
    counter!("keyseal_intake_forwarded_total").absolute(0);
}

/// Starts the per-shard counters of rare events of `shard` at 0, when
/// this worker starts running it.
pub fn shard_started(shard: ShardId) {
    counter!("keyseal_rewrap_data_keys_total", "shard" => shard.to_string()).absolute(0);
}

/// This worker handed a shard over (`rebalance`, `shutdown`) or lost it (`lease_lost`).
pub fn shard_handover(cause: &'static str) {
    counter!("keyseal_shard_handovers_total", "cause" => cause).increment(1);
}

/// Records deleted, by `cause` (`request`, `retention`).
pub fn records_deleted(cause: &'static str, count: u64) {
    counter!("keyseal_records_deleted_total", "cause" => cause).increment(count);
}

/// Intake messages forwarded to their shard's queue.
pub fn intake_forwarded(count: u64) {
    counter!("keyseal_intake_forwarded_total").increment(count);
}

/// Seconds until the key version a BYOK tenant uses expires (negative once past).
pub fn key_expires_in(tenant: &str, seconds: f64) {
    gauge!("keyseal_key_expires_in_seconds", "tenant" => tenant.to_owned()).set(seconds);
}

/// Whether a BYOK tenant's key is healthy.
pub fn key_health(tenant: &str, healthy: bool) {
    gauge!("keyseal_key_healthy", "tenant" => tenant.to_owned()).set(if healthy { 1.0 } else { 0.0 });
}

/// A sealed data key of `shard` was wrapped anew.
pub fn data_key_rewrapped(shard: ShardId) {
    counter!("keyseal_rewrap_data_keys_total", "shard" => shard.to_string()).increment(1);
}

/// Sealed data keys of `tenant` the running rewrap has still to move.
pub fn rewrap_pending(tenant: &str, keys: usize) {
    gauge!("keyseal_rewrap_pending_data_keys", "tenant" => tenant.to_owned()).set(keys as f64);
}

/// A maintenance sweep of `shard` handled `records` more records and stands at `ratio`.
pub fn sweep_progress(shard: ShardId, sweep: &'static str, records: u64, ratio: f64) {
    let shard = shard.to_string();
    counter!("keyseal_sweep_records_total", "sweep" => sweep, "shard" => shard.clone()).increment(records);
    gauge!("keyseal_sweep_progress_ratio", "sweep" => sweep, "shard" => shard).set(ratio.clamp(0.0, 1.0));
}

/// Data keys were retired.
pub fn data_keys_retired(count: usize) {
    counter!("keyseal_data_keys_retired_total").increment(count as u64);
}
