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
/// Wrapped data keys.
pub const CF_DEKS: &str = "deks";
/// The append-only event log.
pub const CF_EVENTS: &str = "events";
/// Projection state, its checkpoint, the outbox watermark and the
/// fingerprints of the managed root versions the store was written under.
pub const CF_PROJECTIONS: &str = "projections";

pub(super) const COLUMN_FAMILIES: [&str; 6] = [CF_HOT, CF_SEALED, CF_BY_TIME, CF_DEKS, CF_EVENTS, CF_PROJECTIONS];
pub(super) const CHECKPOINT_KEY: &[u8] = b"checkpoint";
pub(super) const OUTBOX_KEY: &[u8] = b"outbox/published";

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
