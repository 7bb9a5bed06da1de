//! Key rotation policies: what `PUT /keys/{name}/rotationpolicy` may set,
//! Key Vault's rules for it, and when a `Rotate` lifetime action is due so
//! the vault creates the new version by itself, on the emulator's clock.

use serde::{Deserialize, Serialize};

use crate::error::ServiceError;

use super::duration::{IsoDuration, SECONDS_PER_DAY};

/// The shortest time Key Vault lets a rotation or a notification be set
/// from creation or before expiry.
const MIN_ACTION_DAYS: i64 = 7;
/// The shortest `expiryTime` Key Vault accepts.
const MIN_EXPIRY_DAYS: i64 = 28;

/// What a lifetime action does when its trigger fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ActionType {
    /// Create a new key version.
    Rotate,
    /// Tell the owner (Key Vault publishes an Event Grid event; the
    /// emulator has no Event Grid, so it only keeps the action).
    Notify,
}

impl ActionType {
    /// Parses Key Vault's action type, which it matches case-insensitively.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "rotate" => Some(Self::Rotate),
            "notify" => Some(Self::Notify),
            _ => None,
        }
    }

    /// The spelling Key Vault answers with.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Rotate => "Rotate",
            Self::Notify => "Notify",
        }
    }
}

/// When an action fires: a time after the latest version's creation, or
/// before its expiry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Trigger {
    /// This long after the latest version was created.
    AfterCreate(IsoDuration),
    /// This long before the latest version expires.
    BeforeExpiry(IsoDuration),
}

/// One action of a rotation policy: when it fires and what it does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LifetimeAction {
    pub(crate) trigger: Trigger,
    pub(crate) action: ActionType,
}

/// A key's rotation policy as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RotationPolicy {
    pub(crate) lifetime_actions: Vec<LifetimeAction>,
    /// How long each new version lives: its `exp` is set this far after
    /// its creation.
    pub(crate) expiry_time: Option<IsoDuration>,
    pub(crate) created: i64,
    pub(crate) updated: i64,
}

impl RotationPolicy {
    /// Key Vault's rules: at most one action of each type, each at least
    /// 7 days from creation or expiry; rotating before expiry needs an
    /// expiry time, which is at least 28 days and leaves 7 days for any
    /// action; `Notify` fires only before expiry.
    pub(crate) fn validate(actions: &[LifetimeAction], expiry: Option<&IsoDuration>) -> Result<(), ServiceError> {
        let bad = |why: &str| Err(ServiceError::bad_parameter(format!("Invalid key rotation policy: {why}")));
        for kind in [ActionType::Rotate, ActionType::Notify] {
            if actions.iter().filter(|a| a.action == kind).count() > 1 {
                return bad(&format!("at most one {} action is allowed", kind.as_str()));
            }
        }
        if let Some(expiry) = expiry
            && expiry.seconds() < MIN_EXPIRY_DAYS * SECONDS_PER_DAY
        {
            return bad("expiryTime must be at least 28 days (P28D)");
        }
        for action in actions {
            let (Trigger::AfterCreate(at) | Trigger::BeforeExpiry(at)) = &action.trigger;
            if at.seconds() < MIN_ACTION_DAYS * SECONDS_PER_DAY {
                return bad("a lifetime action must be at least 7 days (P7D) from creation or expiry");
            }
            match (&action.trigger, action.action) {
                (Trigger::AfterCreate(_), ActionType::Notify) => {
                    return bad("a Notify action can only be triggered by timeBeforeExpiry");
                }
                // Notify before expiry works on a version's own exp, so
                // Key Vault's default policy (notify 30 days before expiry,
                // no expiryTime) round-trips.
                (Trigger::BeforeExpiry(_), ActionType::Rotate) if expiry.is_none() => {
                    return bad("rotating by timeBeforeExpiry needs an expiryTime");
                }
                _ => {}
            }
            if let Some(expiry) = expiry
                && at.seconds() > expiry.seconds() - MIN_ACTION_DAYS * SECONDS_PER_DAY
            {
                return bad("a lifetime action must leave at least 7 days before expiryTime");
            }
        }
        Ok(())
    }

    /// Whether a `Rotate` action is due at `now` for the latest version,
    /// created at `created` and expiring at `exp` (all Unix seconds): the
    /// policy's rule on plain timestamps, so it is checked without a key.
    pub(crate) fn rotation_due(&self, now: i64, created: i64, exp: Option<i64>) -> bool {
        self.lifetime_actions.iter().filter(|a| a.action == ActionType::Rotate).any(|a| match &a.trigger {
            Trigger::AfterCreate(after) => now >= created.saturating_add(after.seconds()),
            Trigger::BeforeExpiry(before) => exp.is_some_and(|exp| now >= exp.saturating_sub(before.seconds())),
        })
    }

    /// The `exp` of a version created at `now` under this policy.
    pub(crate) fn expiry_for(&self, now: i64) -> Option<i64> {
        self.expiry_time.as_ref().map(|expiry| now.saturating_add(expiry.seconds()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn duration(text: &str) -> IsoDuration {
        IsoDuration::try_from(text.to_owned()).expect("valid duration")
    }

    fn action(trigger: Trigger, action: ActionType) -> LifetimeAction {
        LifetimeAction { trigger, action }
    }

    #[test]
    fn policies_follow_key_vault_rules() {
        let rotate_2m = action(Trigger::AfterCreate(duration("P2M")), ActionType::Rotate);
        assert!(RotationPolicy::validate(&[], None).is_ok());
        assert!(RotationPolicy::validate(std::slice::from_ref(&rotate_2m), None).is_ok());
        let notify = action(Trigger::BeforeExpiry(duration("P60D")), ActionType::Notify);
        assert!(RotationPolicy::validate(std::slice::from_ref(&notify), Some(&duration("P90D"))).is_ok());
        // Key Vault's default policy, as GET shows it, can be PUT back.
        assert!(RotationPolicy::validate(&[notify], None).is_ok());
        let rotate_before_expiry = action(Trigger::BeforeExpiry(duration("P30D")), ActionType::Rotate);
        assert!(RotationPolicy::validate(std::slice::from_ref(&rotate_before_expiry), None).is_err());
        assert!(RotationPolicy::validate(&[rotate_before_expiry], Some(&duration("P90D"))).is_ok());
        assert!(RotationPolicy::validate(&[], Some(&duration("P27D"))).is_err());
        let too_soon = action(Trigger::AfterCreate(duration("P6D")), ActionType::Rotate);
        assert!(RotationPolicy::validate(&[too_soon], None).is_err());
        let notify_after_create = action(Trigger::AfterCreate(duration("P30D")), ActionType::Notify);
        assert!(RotationPolicy::validate(&[notify_after_create], None).is_err());
        assert!(RotationPolicy::validate(&[rotate_2m.clone(), rotate_2m.clone()], None).is_err());
        assert!(RotationPolicy::validate(&[rotate_2m], Some(&duration("P60D"))).is_err());
    }

    #[test]
    fn rotation_is_due_from_the_latest_versions_timestamps() {
        let day = SECONDS_PER_DAY;
        let policy = |trigger| RotationPolicy {
            lifetime_actions: vec![action(trigger, ActionType::Rotate)],
            expiry_time: None,
            created: 0,
            updated: 0,
        };
        let after_30 = policy(Trigger::AfterCreate(duration("P30D")));
        assert!(!after_30.rotation_due(40 * day - 1, 10 * day, None));
        assert!(after_30.rotation_due(40 * day, 10 * day, None));
        let before_7 = policy(Trigger::BeforeExpiry(duration("P7D")));
        assert!(!before_7.rotation_due(i64::MAX, 0, None), "no expiry, nothing to rotate before");
        assert!(!before_7.rotation_due(23 * day - 1, 0, Some(30 * day)));
        assert!(before_7.rotation_due(23 * day, 0, Some(30 * day)));
        let notify = RotationPolicy {
            lifetime_actions: vec![action(Trigger::BeforeExpiry(duration("P7D")), ActionType::Notify)],
            ..after_30
        };
        assert!(!notify.rotation_due(i64::MAX, 0, Some(0)), "only Rotate actions rotate");
    }
}
