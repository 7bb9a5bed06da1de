//! The store's schema: its column families, what each holds, the fixed
//! keys beside the projections, and decoding of stored values. The byte
//! layout of the other keys is [`super::keys`]'s.

use prost::Message;

use super::StoreError;
use crate::proto::v1::Layer;

/// Records younger than the seal age, encrypted under managed-rooted keys.
pub const CF_HOT: &str = "hot";
/// Records past the seal age, under keys rooted at the tenant's root.
pub const CF_SEALED: &str = "sealed";
/// Ingestion-time index of `hot`, read by the seal sweep.
pub const CF_BY_TIME: &str = "by_time";
/// Each tenant's records (hot and sealed) in ingestion order, with the
/// metadata a listing shows: read by `GET /v1/tenants/{t}/records`.
pub const CF_BY_TENANT: &str = "by_tenant";
/// Deleted records' ids, refused on ingest until their tombstone expires.
pub const CF_TOMBSTONES: &str = "tombstones";
/// Wrapped data keys.
pub const CF_DEKS: &str = "deks";
/// Each tenant's key-use audit (`KeyUsed` events) by time, read by
/// `GET /v1/tenants/{t}/audit` (key: tenant, time, sequence).
pub const CF_AUDIT: &str = "audit";
/// The append-only event log.
pub const CF_EVENTS: &str = "events";
/// Projection state, its checkpoint, the outbox watermark and the
/// fingerprints of the managed root versions the store was written under.
pub const CF_PROJECTIONS: &str = "projections";

pub(super) const COLUMN_FAMILIES: [&str; 9] =
    [CF_HOT, CF_SEALED, CF_BY_TIME, CF_BY_TENANT, CF_TOMBSTONES, CF_DEKS, CF_EVENTS, CF_PROJECTIONS, CF_AUDIT];
pub(super) const CHECKPOINT_KEY: &[u8] = b"checkpoint";
pub(super) const OUTBOX_KEY: &[u8] = b"outbox/published";
/// Present once `by_tenant` holds every record (stores from before it
/// existed are indexed at their first open).
pub(super) const TENANT_INDEX_BUILT_KEY: &[u8] = b"schema/by_tenant";

pub(super) fn layer_cf(layer: Layer) -> &'static str {
    match layer {
        Layer::Sealed => CF_SEALED,
        Layer::Hot | Layer::Unspecified => CF_HOT,
    }
}

pub(super) fn decode<M: Message + Default>(
    cf: &'static str,
    what: &'static str,
    bytes: &[u8],
) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|e| StoreError::Corrupt { cf, what, reason: e.to_string() })
}

pub(super) fn decode_sequence(bytes: &[u8]) -> Result<u64, StoreError> {
    let raw: [u8; 8] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        cf: CF_EVENTS,
        what: "sequence",
        reason: format!("expected 8 bytes, got {}", bytes.len()),
    })?;
    Ok(u64::from_be_bytes(raw))
}
