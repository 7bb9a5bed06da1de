//! Key rotation policies: what `PUT /keys/{name}/rotationpolicy` may set,
//! Key Vault's rules for it, and when a `Rotate` lifetime action is due so
//! the vault creates the new version by itself, on the emulator's clock.

use serde::{Deserialize, Serialize};

use crate::error::ServiceError;

use super::model::{KeyVersion, SECONDS_PER_DAY};

/// The shortest time Key Vault lets a rotation or a notification be set
/// from creation or before expiry.
const MIN_ACTION_DAYS: i64 = 7;
/// The shortest `expiryTime` Key Vault accepts.
const MIN_EXPIRY_DAYS: i64 = 28;

/// An ISO 8601 duration as Key Vault's policies carry it (`P90D`, `P2M`,
/// `P1Y10D`, `PT48H`), kept in the caller's spelling and measured with
/// years of 365 days and months of 30.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub(crate) struct IsoDuration {
    text: String,
    seconds: i64,
}

impl IsoDuration {
    pub(crate) fn seconds(&self) -> i64 {
        self.seconds
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }
}

impl TryFrom<String> for IsoDuration {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let seconds = parse_iso_duration(&text).ok_or_else(|| format!("{text} is not an ISO 8601 duration"))?;
        Ok(Self { text, seconds })
    }
}

impl From<IsoDuration> for String {
    fn from(duration: IsoDuration) -> Self {
        duration.text
    }
}

/// Seconds in `P[nY][nM][nW][nD][T[nH][nM][nS]]`; `None` unless at least
/// one part is present and every part is a whole number.
fn parse_iso_duration(text: &str) -> Option<i64> {
    let rest = text.strip_prefix('P')?;
    let (date, time) = match rest.split_once('T') {
        Some((date, time)) if !time.is_empty() => (date, Some(time)),
        Some(_) => return None,
        None => (rest, None),
    };
    let date_units: &[(char, i64)] = &[
        ('Y', 365 * SECONDS_PER_DAY),
        ('M', 30 * SECONDS_PER_DAY),
        ('W', 7 * SECONDS_PER_DAY),
        ('D', SECONDS_PER_DAY),
    ];
    let time_units: &[(char, i64)] = &[('H', 3600), ('M', 60), ('S', 1)];
    let mut total: i64 = 0;
    let mut parts = 0;
    for (section, units) in [(Some(date), date_units), (time, time_units)] {
        let Some(mut section) = section else { continue };
        for &(unit, scale) in units {
            if let Some((number, tail)) = section.split_once(unit) {
                if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                total = total.checked_add(number.parse::<i64>().ok()?.checked_mul(scale)?)?;
                parts += 1;
                section = tail;
            }
        }
        if !section.is_empty() {
            return None;
        }
    }
    (parts > 0).then_some(total)
}

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
    AfterCreate(IsoDuration),
    BeforeExpiry(IsoDuration),
}

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

    /// Whether a `Rotate` action is due for `latest` at `now`.
    pub(crate) fn rotation_due(&self, latest: &KeyVersion, now: i64) -> bool {
        self.lifetime_actions.iter().filter(|a| a.action == ActionType::Rotate).any(|a| match &a.trigger {
            Trigger::AfterCreate(after) => now >= latest.props.created.saturating_add(after.seconds()),
            Trigger::BeforeExpiry(before) => {
                latest.props.exp.is_some_and(|exp| now >= exp.saturating_sub(before.seconds()))
            }
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
    fn iso_durations_parse_as_key_vault_writes_them() {
        let day = SECONDS_PER_DAY;
        assert_eq!(duration("P90D").seconds(), 90 * day);
        assert_eq!(duration("P2M").seconds(), 60 * day);
        assert_eq!(duration("P1Y10D").seconds(), 375 * day);
        assert_eq!(duration("P1W").seconds(), 7 * day);
        assert_eq!(duration("PT48H").seconds(), 2 * day);
        assert_eq!(duration("P1DT1M").seconds(), day + 60);
        assert_eq!(duration("P2M").as_str(), "P2M");
        for bad in ["", "P", "90D", "PT", "P1.5D", "P-1D", "P1DT", "P1H", "PD", "P1D2"] {
            assert!(IsoDuration::try_from(bad.to_owned()).is_err(), "{bad:?}");
        }
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
}
