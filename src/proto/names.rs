//! The names the API, the events' routing keys and the metrics give the
//! protobuf enums and messages: one table each, at the bottom of the
//! crate's map, so every layer names things the same way without
//! importing the layer that uses them most.

use super::store::TenantState;
use super::v1::event::Kind;
use super::v1::key_used::Operation;
use super::v1::root_key_ref::Root;
use super::v1::{KeyPurpose, RootKeyRef};

/// The `<event_kind>` part of an event's routing key.
pub fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::RecordsStored(_) => "records_stored",
        Kind::RecordsSealed(_) => "records_sealed",
        Kind::DataKeyCreated(_) => "data_key_created",
        Kind::KeyHealth(_) => "key_health",
        Kind::KeyRolled(_) => "key_rolled",
        Kind::EncryptionEnabled(_) => "encryption_enabled",
        Kind::EncryptionDisabled(_) => "encryption_disabled",
        Kind::TenantLockedDown(_) => "tenant_locked_down",
        Kind::TenantRestored(_) => "tenant_restored",
        Kind::RewrapProgress(_) => "rewrap_progress",
        Kind::RecordsReencrypted(_) => "records_reencrypted",
        Kind::DataKeyRetired(_) => "data_key_retired",
        Kind::CorruptionDetected(_) => "corruption_detected",
        Kind::RecordDeleted(_) => "record_deleted",
        Kind::KeyExpiring(_) => "key_expiring",
        Kind::RetentionSet(_) => "retention_set",
        Kind::RecordsExpired(_) => "records_expired",
        Kind::KeyUsed(_) => "key_used",
        Kind::TenantErased(_) => "tenant_erased",
        Kind::TenantErasureCompleted(_) => "tenant_erasure_completed",
    }
}

/// The API name of a purpose (DESIGN.md's fixed names).
pub fn purpose_name(purpose: KeyPurpose) -> &'static str {
    match purpose {
        KeyPurpose::Store | KeyPurpose::Unspecified => "store",
        KeyPurpose::Seal => "seal",
        KeyPurpose::Read => "read",
        KeyPurpose::Rewrap => "rewrap",
        KeyPurpose::Canary => "canary",
        KeyPurpose::Validate => "validate",
        KeyPurpose::Reencrypt => "reencrypt",
        KeyPurpose::Scrub => "scrub",
    }
}

/// The API name of an operation.
pub fn operation_name(operation: Operation) -> &'static str {
    match operation {
        Operation::Wrap | Operation::Unspecified => "wrap",
        Operation::Unwrap => "unwrap",
    }
}

/// `managed` or `customer`: which kind of root a reference names.
pub fn root_kind(root: &RootKeyRef) -> &'static str {
    match root.root {
        Some(Root::VaultKeyId(_)) => "customer",
        Some(Root::ManagedVersion(_)) | None => "managed",
    }
}

/// How an audit entry names its root: `managed/v<version>`, or the vault
/// key id with its version.
pub fn root_key_id(root: &RootKeyRef) -> String {
    match &root.root {
        Some(Root::VaultKeyId(kid)) => kid.clone(),
        Some(Root::ManagedVersion(version)) => format!("managed/v{version}"),
        None => String::new(),
    }
}

/// Every tenant state, for gauges and views that show each.
pub const TENANT_STATES: [TenantState; 4] =
    [TenantState::Active, TenantState::Degraded, TenantState::LockedDown, TenantState::Erased];

/// The API and metrics name of a tenant state.
pub fn state_name(state: TenantState) -> &'static str {
    match state {
        TenantState::Active => "active",
        TenantState::Degraded => "degraded",
        TenantState::LockedDown => "locked_down",
        TenantState::Erased => "erased",
    }
}
