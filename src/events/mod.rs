//! Domain events: naming (the `<event_kind>` of routing keys), the
//! [`projection`] fold of events into tenant state, the
//! [`outbox`] relay that publishes the log to `keyseal.events`, the
//! [`audit_flush`] that commits key-use audit entries on a quiet shard, and
//! the [`replay`] check of the projections against the log.

pub mod audit_flush;
pub mod outbox;
pub mod projection;
pub mod replay;

use crate::proto::v1::{Event, event::Kind};

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

/// `tenant.<tenant>.<event_kind>`.
pub fn routing_key(event: &Event) -> String {
    let kind = event.kind.as_ref().map_or("unknown", kind_name);
    format!("tenant.{}.{}", event.tenant_id, kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::v1::KeyHealth;

    #[test]
    fn routing_key_names_tenant_and_kind() {
        let event = Event {
            sequence: 1,
            time_unix_ms: 0,
            tenant_id: "acme".into(),
            kind: Some(Kind::KeyHealth(KeyHealth::default())),
            ..Event::default()
        };
        assert_eq!(routing_key(&event), "tenant.acme.key_health");
    }
}
