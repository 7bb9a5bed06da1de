//! `GET /v1/tenants/{t}/audit` (fixed by DESIGN.md, "Data lifecycle and
//! audit"): every use of a root key for the tenant's data keys, oldest
//! first, page by page from the `audit` index. It holds no key material,
//! record ids or payloads, so it stays readable while the tenant is locked
//! down (when an operator most needs it) and after the tenant is erased
//! (it is the record of what was done with the keys until then).

use axum::Json;
use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use serde_json::json;

use super::paging::{PageQuery, cursor, split_page};
use super::reply::{ApiError, query};
use super::tenant::Tenant;
use crate::clock::rfc3339;
use crate::crypto::data_key::DataKeyId;
use crate::proto::names::{operation_name, purpose_name, root_key_id, root_kind};
use crate::storage::AuditEntry;

/// An audit cursor's tie-break: the entry's sequence.
fn sequence_of(raw: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(raw).ok().map(u64::from_be_bytes)
}

/// `GET /v1/tenants/{tenant}/audit`: `{"entries":[…],"next"}`.
pub async fn audit(
    tenant: Tenant,
    page: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (range, limit) = query(page)?.parse(sequence_of)?;
    tenant.known()?;
    let entries = tenant.store().audit_entries(&tenant.id, &range, limit + 1)?;
    let (page, next) = split_page(entries, limit, |last| cursor(last.time_ms, &last.sequence.to_be_bytes()));
    let entries: Vec<_> = page.iter().map(entry_json).collect();
    Ok(Json(json!({"entries": entries, "next": next})))
}

/// One entry as DESIGN.md names its fields.
fn entry_json(entry: &AuditEntry) -> serde_json::Value {
    let used = &entry.used;
    let root = used.root.clone().unwrap_or_default();
    let data_key_id = DataKeyId::from_bytes(&used.data_key_id).ok().map(|id| id.to_string());
    json!({
        "sequence": entry.sequence,
        "time": rfc3339(entry.time_ms),
        "rootKind": root_kind(&root),
        "rootKeyId": root_key_id(&root),
        "dataKeyId": data_key_id,
        "operation": operation_name(used.operation()),
        "purpose": purpose_name(used.purpose()),
        "outcome": used.outcome,
        "durationMs": used.duration_us as f64 / 1000.0,
        "clientRequestId": (!used.client_request_id.is_empty()).then_some(&used.client_request_id),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::v1::key_used::Operation;
    use crate::proto::v1::{KeyPurpose, KeyUsed, Layer, RootKeyRef, root_key_ref::Root};

    #[test]
    fn an_entry_names_its_root_data_key_and_request() {
        let id = DataKeyId { tenant: "acme".into(), layer: Layer::Sealed, bucket: 20_428, generation: 2 };
        let used = KeyUsed {
            root: Some(RootKeyRef { root: Some(Root::VaultKeyId("https://v.vault.azure.net/keys/k/abc".into())) }),
            data_key_id: id.to_bytes(),
            operation: Operation::Unwrap as i32,
            purpose: KeyPurpose::Read as i32,
            outcome: "ok".into(),
            duration_us: 1_500,
            client_request_id: "0f6c".into(),
        };
        let json = entry_json(&AuditEntry { sequence: 9, time_ms: 0, used });
        assert_eq!(json["rootKind"], "customer");
        assert_eq!(json["rootKeyId"], "https://v.vault.azure.net/keys/k/abc");
        assert_eq!(json["dataKeyId"], "sealed/2025-12-06/2");
        assert_eq!((json["operation"].as_str(), json["purpose"].as_str()), (Some("unwrap"), Some("read")));
        assert_eq!((json["durationMs"].as_f64(), json["clientRequestId"].as_str()), (Some(1.5), Some("0f6c")));
        assert_eq!(sequence_of(&9u64.to_be_bytes()), Some(9));
        assert_eq!(sequence_of(b"short"), None);
    }
}
