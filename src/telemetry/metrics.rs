//! Prometheus metrics. Each function records one thing that happened, so
//! call sites stay one line and names and labels live in one place. Labels
//! never carry key material or payloads; tenant is the only high-cardinality
//! label and is used only where a per-tenant view is needed.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;

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
                .install_recorder()
                .expect("no other metrics recorder is installed");
            describe();
            // Counters of rare events exist from the start, so a dashboard
            // or an alert sees 0 rather than no series.
            for layer in ["hot", "sealed"] {
                counter!("keyseal_corrupt_records_total", "layer" => layer).absolute(0);
            }
            counter!("keyseal_rewrap_data_keys_total").absolute(0);
            counter!("keyseal_data_keys_retired_total").absolute(0);
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
    describe_counter!("keyseal_root_key_operations_total", Unit::Count, "Root-key wrap and unwrap operations.");
    describe_gauge!("keyseal_tenants", Unit::Count, "Tenants by lockdown state (active, degraded, locked_down).");
    describe_gauge!("keyseal_key_healthy", Unit::Count, "1 while a BYOK tenant's key is healthy, 0 while unavailable.");
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
pub fn batch_committed(stored: u64, duplicates: u64, took: Duration) {
    counter!("keyseal_records_ingested_total", "result" => "stored").increment(stored);
    counter!("keyseal_records_ingested_total", "result" => "duplicate").increment(duplicates);
    histogram!("keyseal_batch_commit_seconds").record(took.as_secs_f64());
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
pub fn records_at_rest(hot: u64, sealed: u64) {
    gauge!("keyseal_records_at_rest", "layer" => "hot").set(hot as f64);
    gauge!("keyseal_records_at_rest", "layer" => "sealed").set(sealed as f64);
}

/// A seal sweep moved `count` records.
pub fn sealed(count: u64) {
    counter!("keyseal_records_sealed_total").increment(count);
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

/// Seal lag, in seconds past the seal age.
pub fn seal_lag(seconds: f64) {
    gauge!("keyseal_seal_lag_seconds").set(seconds.max(0.0));
}

/// Events confirmed by the broker.
pub fn events_published(count: u64) {
    counter!("keyseal_events_published_total").increment(count);
}

/// Events not yet confirmed.
pub fn outbox_lag(events: u64) {
    gauge!("keyseal_outbox_lag_events").set(events as f64);
}

/// A data-key lookup was served from memory (`hit`) or not.
pub fn data_key_lookup(hit: bool) {
    counter!("keyseal_data_key_cache_total", "result" => if hit { "hit" } else { "miss" }).increment(1);
}

/// A root key wrapped or unwrapped a data key.
pub fn root_key_operation() {
    counter!("keyseal_root_key_operations_total").increment(1);
}

/// One Key Vault request finished.
pub fn vault_request(operation: &'static str, outcome: &'static str, took: Duration) {
    counter!("keyseal_vault_requests_total", "operation" => operation, "outcome" => outcome).increment(1);
    histogram!("keyseal_vault_request_seconds", "operation" => operation).record(took.as_secs_f64());
}

/// How many tenants are in `state`.
pub fn tenants_in_state(state: &'static str, count: usize) {
    gauge!("keyseal_tenants", "state" => state).set(count as f64);
}

/// Whether a BYOK tenant's key is healthy.
pub fn key_health(tenant: &str, healthy: bool) {
    gauge!("keyseal_key_healthy", "tenant" => tenant.to_owned()).set(if healthy { 1.0 } else { 0.0 });
}

/// A sealed data key was wrapped anew.
pub fn data_key_rewrapped() {
    counter!("keyseal_rewrap_data_keys_total").increment(1);
}

/// Sealed data keys of `tenant` the running rewrap has still to move.
pub fn rewrap_pending(tenant: &str, keys: usize) {
    gauge!("keyseal_rewrap_pending_data_keys", "tenant" => tenant.to_owned()).set(keys as f64);
}

/// A maintenance sweep handled `records` more records and stands at `ratio`.
pub fn sweep_progress(sweep: &'static str, records: u64, ratio: f64) {
    counter!("keyseal_sweep_records_total", "sweep" => sweep).increment(records);
    gauge!("keyseal_sweep_progress_ratio", "sweep" => sweep).set(ratio.clamp(0.0, 1.0));
}

/// Data keys were retired.
pub fn data_keys_retired(count: usize) {
    counter!("keyseal_data_keys_retired_total").increment(count as u64);
}
