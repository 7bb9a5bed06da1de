//! [`KeyUse::run`], the one place a root-key call is timed and recorded
//! as a `KeyUsed` event of its tenant.

use std::future::Future;
use std::time::Instant;

use crate::error::ErrorCode;
use crate::proto::v1::key_used::Operation;
use crate::proto::v1::root_key_ref::Root;
use crate::proto::v1::{KeyPurpose, KeyUsed, RootKeyRef};
use crate::storage::Store;

/// A root-key call about to be made: for whom, on which data key, why.
#[derive(Clone, Copy)]
pub struct KeyUse<'a> {
    /// Where the entry is recorded: the tenant's shard.
    pub store: &'a Store,
    /// Whose key it is.
    pub tenant: &'a str,
    /// The data key wrapped or unwrapped (empty for a throwaway key).
    pub data_key_id: &'a [u8],
    /// Why.
    pub purpose: KeyPurpose,
}

impl KeyUse<'_> {
    /// Runs `call` against `root` and records it. A vault call is given a
    /// fresh client request id to send as `x-ms-client-request-id`; a
    /// managed one gets none.
    pub async fn run<T, E, F>(
        &self,
        root: &RootKeyRef,
        operation: Operation,
        call: impl FnOnce(Option<String>) -> F,
    ) -> Result<T, E>
    where
        E: ErrorCode,
        F: Future<Output = Result<T, E>>,
    {
        let request_id = matches!(root.root, Some(Root::VaultKeyId(_))).then(new_client_request_id);
        let started = Instant::now();
        let result = call(request_id.clone()).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.code(),
        };
        let used = KeyUsed {
            root: Some(root.clone()),
            data_key_id: self.data_key_id.to_vec(),
            operation: operation as i32,
            purpose: self.purpose as i32,
            outcome: outcome.to_owned(),
            duration_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            client_request_id: request_id.unwrap_or_default(),
        };
        crate::telemetry::metrics::key_used(&used);
        self.store.audit(self.tenant, used);
        result
    }
}

/// A client request id as Azure's SDKs make them: a random UUID.
fn new_client_request_id() -> String {
    azure_core::Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::CryptoError;
    use crate::proto::names::root_key_id;

    #[tokio::test]
    async fn a_call_is_recorded_with_its_outcome_and_a_request_id_only_for_a_vault() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let usage = KeyUse { store: &store, tenant: "acme", data_key_id: b"dk", purpose: KeyPurpose::Read };
        let managed = RootKeyRef { root: Some(Root::ManagedVersion(2)) };
        let seen: Result<Option<String>, CryptoError> =
            usage.run(&managed, Operation::Unwrap, |id| async { Ok(id) }).await;
        assert_eq!(seen.unwrap(), None, "no request id for the managed key");
        let vault = RootKeyRef { root: Some(Root::VaultKeyId("https://v.vault.azure.net/keys/k/1".into())) };
        let failed: Result<Option<String>, CryptoError> = usage
            .run(&vault, Operation::Wrap, |id| async move {
                assert_eq!(id.as_deref().map(str::len), Some(36), "a UUID is sent");
                Err(CryptoError::Integrity { what: "t" })
            })
            .await;
        assert!(failed.is_err(), "the call's own result comes back");

        assert!(store.audit_pending());
        store.transaction().commit(5).unwrap();
        assert!(!store.audit_pending(), "the next commit appended them");
        let entries = store.audit_entries("acme", &Default::default(), 10).unwrap();
        let found: Vec<_> = entries
            .iter()
            .map(|e| (root_key_id(e.used.root.as_ref().unwrap()), e.used.operation(), e.used.outcome.clone()))
            .collect();
        assert_eq!(
            found,
            [
                ("managed/v2".to_owned(), Operation::Unwrap, "ok".to_owned()),
                ("https://v.vault.azure.net/keys/k/1".to_owned(), Operation::Wrap, "integrity_error".to_owned()),
            ]
        );
        assert!(entries[0].used.client_request_id.is_empty() && entries[1].used.client_request_id.len() == 36);
    }
}
