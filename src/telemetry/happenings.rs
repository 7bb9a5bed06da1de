//! Typed telemetry for the things that happen and must be both logged and
//! counted: one struct per thing, whose [`Emit::emit`] writes its log line
//! and moves its metrics together, so the two never drift apart (the shape
//! of vector's internal events). Counters with no log line of their own
//! stay plain functions in [`super::metrics`].

use std::fmt::Display;

use metrics::counter;
use tracing::warn;

use super::metrics::{self as m, set_ingest_paused};
use crate::placement::ShardId;

/// Something that happened, told to the logs and the metrics at once.
pub trait Emit {
    /// Logs it and counts it.
    fn emit(self);
}

/// The store refused a batch: consuming pauses until it is writable again.
pub struct IngestPaused<'a> {
    /// Why (a stable code).
    pub code: &'static str,
    /// The failure, without data.
    pub error: &'a dyn Display,
}

impl Emit for IngestPaused<'_> {
    fn emit(self) {
        warn!(code = self.code, error = %self.error, "store rejected a batch; batch requeued, consuming paused");
        set_ingest_paused(true);
    }
}

/// The store took writes again and consuming resumed.
pub struct IngestResumed;

impl Emit for IngestResumed {
    fn emit(self) {
        tracing::info!("store writable again; consuming resumed");
        set_ingest_paused(false);
    }
}

/// A message was dead-lettered (and the broker confirmed it).
pub struct MessageDeadLettered {
    /// The rejection's code, as in the dead letter's header.
    pub reason: &'static str,
    /// The shard whose consumer refused it; `None` for the intake, which
    /// refuses what no shard can take.
    pub shard: Option<ShardId>,
}

impl Emit for MessageDeadLettered {
    fn emit(self) {
        let shard = self.shard.map_or_else(|| "intake".to_owned(), |shard| shard.to_string());
        warn!(reason = self.reason, shard, "message dead-lettered");
        counter!("keyseal_records_ingested_total", "result" => "dead_lettered", "shard" => shard.clone()).increment(1);
        counter!("keyseal_dead_letters_total", "reason" => self.reason, "shard" => shard).increment(1);
    }
}

/// A scrub found a record that fails verification; it is left in place.
/// The log names the tenant, never the record id (ids can carry data of
/// their own); the scrub's summary lists the ids for whoever asked for it.
pub struct RecordFailedVerification<'a> {
    /// Its tenant.
    pub tenant: &'a str,
    /// `hot` or `sealed`.
    pub layer: &'static str,
    /// What is wrong (a scrub finding's name).
    pub reason: &'static str,
}

impl Emit for RecordFailedVerification<'_> {
    fn emit(self) {
        let Self { tenant, layer, reason } = self;
        warn!(tenant, layer, reason, "scrub: a record failed verification (left in place; its id is in the summary)");
        counter!("keyseal_corrupt_records_total", "layer" => layer).increment(1);
    }
}

/// A seal sweep could not have a tenant's sealed data key and held the
/// tenant's records back in `hot` for this sweep.
pub struct TenantHeldBack<'a> {
    /// The tenant.
    pub tenant: &'a str,
    /// Why (a hold reason's name).
    pub reason: &'static str,
    /// The failure, without data.
    pub error: &'a dyn Display,
}

impl Emit for TenantHeldBack<'_> {
    fn emit(self) {
        warn!(tenant = self.tenant, reason = self.reason, error = %self.error, "no sealed data key; tenant held back for this sweep");
        counter!("keyseal_seal_held_back_total", "reason" => self.reason).increment(1);
    }
}

/// Key-use audit entries were dropped: they waited for a commit that kept
/// failing, past the bound on what waits in memory.
pub struct AuditEntriesDropped {
    /// How many.
    pub entries: u64,
}

impl Emit for AuditEntriesDropped {
    fn emit(self) {
        warn!(entries = self.entries, "audit entries waited for a commit that keeps failing: the oldest were dropped");
        m::audit_dropped(self.entries);
    }
}

/// This worker stopped running a shard: handed it over (`rebalance`,
/// `shutdown`) or lost its lease (`lease_lost`).
pub struct ShardStopped {
    /// The shard.
    pub shard: ShardId,
    /// Why.
    pub cause: &'static str,
}

impl Emit for ShardStopped {
    fn emit(self) {
        tracing::info!(shard = %self.shard, cause = self.cause, "shard stopped");
        m::shard_handover(self.cause);
    }
}

/// A tenant was erased: its data keys destroyed and its data removed.
pub struct TenantErasureFinished<'a> {
    /// The tenant.
    pub tenant: &'a str,
    /// Data keys destroyed.
    pub data_keys: u32,
    /// Records removed.
    pub records: u64,
    /// How long the whole erasure took.
    pub took: std::time::Duration,
}

impl Emit for TenantErasureFinished<'_> {
    fn emit(self) {
        let Self { tenant, data_keys, records, took } = self;
        tracing::info!(tenant, data_keys, records, seconds = took.as_secs_f64(), "tenant erased");
        m::tenant_erased(took);
    }
}

/// Serving an admin request panicked: it was answered 500 and the server
/// (or the shard's inbox, for a forwarded request) went on.
pub struct RequestPanicked<'a> {
    /// The request's path (never its query or body).
    pub path: &'a str,
    /// Whether it came through a shard's lease queue.
    pub forwarded: bool,
}

impl Emit for RequestPanicked<'_> {
    fn emit(self) {
        let via = if self.forwarded { "forwarded" } else { "direct" };
        tracing::error!(path = self.path, via, "serving an admin request panicked; answered 500");
        counter!("keyseal_request_panics_total", "via" => via).increment(1);
    }
}

/// A forwarded admin request was refused before it ran (unsigned, a
/// replay, expired, …).
pub struct ForwardedRequestRefused {
    /// The owned shard whose inbox it reached.
    pub shard: ShardId,
    /// Why (the refusal's code).
    pub reason: &'static str,
}

impl Emit for ForwardedRequestRefused {
    fn emit(self) {
        warn!(shard = %self.shard, reason = self.reason, "forwarded request refused");
        counter!("keyseal_forwarded_requests_refused_total", "reason" => self.reason, "shard" => self.shard.to_string())
            .increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::metrics::ingest_paused;

    #[test]
    fn pausing_and_resuming_move_the_paused_gauge() {
        IngestPaused { code: "storage_unavailable", error: &"disk full" }.emit();
        assert!(ingest_paused());
        IngestResumed.emit();
        assert!(!ingest_paused());
    }
}
