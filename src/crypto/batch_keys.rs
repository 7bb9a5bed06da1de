//! Writer keys for one batch of records. A batch asks the keyring for one
//! reservation per tenant covering all of the tenant's records in it, and
//! for another only when a rotation limit cut the first one short.

use std::collections::HashMap;

use super::keyring::{Keyring, KeyringError, WriteKey};
use crate::proto::v1::Layer;

/// Hands out the key each record of a batch is encrypted with.
pub struct BatchKeys<'a> {
    keyring: &'a Keyring,
    layer: Layer,
    now_ms: i64,
    /// Records per tenant not yet handed a key.
    wanted: HashMap<String, u64>,
    leases: HashMap<String, WriteKey>,
}

impl<'a> BatchKeys<'a> {
    /// Keys for a batch writing `wanted` records per tenant into `layer` at `now_ms`.
    pub fn new(keyring: &'a Keyring, layer: Layer, now_ms: i64, wanted: HashMap<String, u64>) -> Self {
        Self { keyring, layer, now_ms, wanted, leases: HashMap::new() }
    }

    /// The key for the next record of `tenant`.
    pub async fn next(&mut self, tenant: &str) -> Result<&WriteKey, KeyringError> {
        let still_wanted = self.wanted.get(tenant).copied().unwrap_or(1);
        if self.leases.get(tenant).is_none_or(|lease| lease.granted == 0) {
            let lease = self.keyring.reserve(tenant, self.layer, self.now_ms, still_wanted).await?;
            self.leases.insert(tenant.to_owned(), lease);
        }
        if let Some(wanted) = self.wanted.get_mut(tenant) {
            *wanted = wanted.saturating_sub(1);
        }
        let lease = self.leases.get_mut(tenant).expect("reserved above");
        lease.granted -= 1;
        Ok(lease)
    }
}
