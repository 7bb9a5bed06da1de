//! Rotation policies, backup and restore: the operations that manage a
//! key's life rather than use it.

use super::{blocking, internal};
use crate::app::App;
use crate::error::ServiceError;
use crate::model::{ActionType, IsoDuration, KeyView, LifetimeAction, RotationPolicy, Trigger};
use crate::store;
use crate::wire::{self, BackupBlob, RotationPolicyWire};

/// Validates a `KeyRotationPolicy` body into its actions and expiry time.
pub(super) fn rotation_policy(
    request: RotationPolicyWire,
) -> Result<(Vec<LifetimeAction>, Option<IsoDuration>), ServiceError> {
    let duration = |text: String, property: &str| {
        IsoDuration::try_from(text).map_err(|why| ServiceError::bad_parameter(format!("Property {property}: {why}.")))
    };
    let expiry = request
        .attributes
        .and_then(|attributes| attributes.expiry_time)
        .map(|text| duration(text, "attributes.expiryTime"))
        .transpose()?;
    let actions = request
        .lifetime_actions
        .unwrap_or_default()
        .into_iter()
        .map(|wire| {
            let action = ActionType::parse(&wire.action.kind).ok_or_else(|| {
                ServiceError::bad_parameter(format!(
                    "Property lifetimeActions.action.type has invalid value {}; use Rotate or Notify.",
                    wire.action.kind
                ))
            })?;
            let trigger = match (wire.trigger.time_after_create, wire.trigger.time_before_expiry) {
                (Some(after), None) => Trigger::AfterCreate(duration(after, "trigger.timeAfterCreate")?),
                (None, Some(before)) => Trigger::BeforeExpiry(duration(before, "trigger.timeBeforeExpiry")?),
                _ => {
                    return Err(ServiceError::bad_parameter(
                        "A lifetime action's trigger needs exactly one of timeAfterCreate and timeBeforeExpiry.",
                    ));
                }
            };
            Ok(LifetimeAction { trigger, action })
        })
        .collect::<Result<Vec<_>, ServiceError>>()?;
    RotationPolicy::validate(&actions, expiry.as_ref())?;
    Ok((actions, expiry))
}

/// `BackupKeyResult`: every version of the key, sealed for this instance.
pub(super) async fn backup(app: &App, name: &str) -> Result<BackupBlob, ServiceError> {
    let record = app.vault.backup(name).await?;
    let document = blocking("encode a backup", move || store::encode(&record)).await?;
    let document = document.map_err(|e| internal("encode a backup", &e))?;
    Ok(BackupBlob { value: wire::to_base64url(&app.backups.seal(&document)) })
}

/// Restores a blob [`backup`] produced on this instance.
pub(super) async fn restore(app: &App, request: BackupBlob) -> Result<KeyView, ServiceError> {
    let invalid = || ServiceError::bad_parameter("Backup blob contains invalid or corrupt version.");
    let blob = wire::from_base64url(&request.value).map_err(|_| invalid())?;
    let document = app.backups.open_blob(&blob).ok_or_else(invalid)?;
    let record = blocking("decode a backup", move || store::decode(&document)).await?.map_err(|_| invalid())?;
    app.vault.restore(record).await
}
