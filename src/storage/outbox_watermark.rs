//! The outbox watermark: how far the relay has had the event log confirmed
//! by the broker, kept beside the projections.

use super::schema::{CF_PROJECTIONS, OUTBOX_KEY, decode_sequence};
use super::{Store, StoreError};

impl Store {
    /// The highest sequence the outbox relay has had confirmed by the broker.
    pub fn published_watermark(&self) -> Result<u64, StoreError> {
        match self.db.get_cf(self.cf(CF_PROJECTIONS), OUTBOX_KEY)? {
            Some(v) => decode_sequence(&v),
            None => Ok(0),
        }
    }

    /// Records that every event up to `sequence` was confirmed by the
    /// broker, durably: written, then synced on a blocking thread.
    pub async fn set_published_watermark(&self, sequence: u64) -> Result<(), StoreError> {
        self.db.put_cf(self.cf(CF_PROJECTIONS), OUTBOX_KEY, sequence.to_be_bytes())?;
        self.sync_async().await
    }
}
