//! The lockdown policy, pure: given a tenant's projection, what a probe
//! found (or only the time) and the time, which events to append.
//! `KeyRolled` when the newest enabled version changed; `KeyHealth` only on
//! a change of health or reason; `TenantLockedDown` once the grace since the
//! first failed probe began has passed, decided by [`lockdown_due`] on every
//! tick of the clock whether or not a probe answered; `TenantRestored` with
//! the first healthy probe after a lockdown; `KeyExpiring` once per key
//! version, when a probe finds it expires within `--key-expiry-warning`
//! ([`expiry_warning`]). Throttling alone decides nothing, and a probe of a
//! key the tenant no longer uses decides nothing.

use std::time::Duration;

use crate::events::projection;
use crate::keyvault::KeyProblem;
use crate::keyvault::validate::KeyRefusal;
use crate::proto::store::{TenantProjection, TenantState};
use crate::proto::v1::key_health::Status;
use crate::proto::v1::{KeyExpiring, KeyHealth, KeyRolled, TenantLockedDown, TenantRestored, event::Kind};

/// What one probe of a tenant's key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// The key is readable, enabled, active, RSA, permits wrap and unwrap.
    Healthy {
        /// Newest enabled version seen (empty for the managed key).
        version: String,
        /// When that version expires (its `exp`, Unix ms), if it does.
        expires_at_ms: Option<i64>,
    },
    /// The key cannot be used, for one of DESIGN.md's reasons.
    Unavailable(HealthReason),
    /// The vault throttled every attempt: no conclusion either way.
    Inconclusive,
}

/// A finished probe: what it found, which key it asked about (the tenant's
/// key URI and version when it began) and when it began, so a result that
/// outlived the key it was about is recognised and a slow probe's failure
/// dates from when it began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// The tenant's key URI when the probe began.
    pub key_uri: String,
    /// The tenant's key version when the probe began.
    pub key_version: String,
    /// When the probe began (worker clock, Unix ms).
    pub began_at_ms: i64,
    /// What it found.
    pub probe: Probe,
}

/// Why a tenant's key is unavailable: DESIGN.md's closed list of health
/// reasons, as `KeyHealth.reason`, the status API and the metrics name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HealthReason {
    /// The key (or its newest enabled version) does not exist.
    KeyNotFound,
    /// The key is disabled.
    KeyDisabled,
    /// The key's `nbf` is in the future.
    KeyNotYetActive,
    /// The key's `exp` has passed.
    KeyExpired,
    /// Not an RSA key of at least 2048 bits.
    UnsupportedKeyType,
    /// keyseal may not use the key as it must (permissions, key operations, canary).
    MissingPermission,
    /// The vault did not answer, or answered with an error.
    VaultUnreachable,
}

impl HealthReason {
    /// The reason's stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KeyNotFound => "key_not_found",
            Self::KeyDisabled => "key_disabled",
            Self::KeyNotYetActive => "key_not_yet_active",
            Self::KeyExpired => "key_expired",
            Self::UnsupportedKeyType => "unsupported_key_type",
            Self::MissingPermission => "missing_permission",
            Self::VaultUnreachable => "vault_unreachable",
        }
    }
}

impl From<KeyProblem> for HealthReason {
    /// A key problem as a health reason: an outage of any kind (the vault
    /// unreachable, throttling past the retries, an error of its own) is
    /// `vault_unreachable`.
    fn from(problem: KeyProblem) -> Self {
        match problem {
            KeyProblem::KeyNotFound => Self::KeyNotFound,
            KeyProblem::KeyDisabled => Self::KeyDisabled,
            KeyProblem::KeyNotYetActive => Self::KeyNotYetActive,
            KeyProblem::KeyExpired => Self::KeyExpired,
            KeyProblem::MissingPermission => Self::MissingPermission,
            KeyProblem::VaultUnreachable | KeyProblem::VaultThrottled | KeyProblem::VaultError => {
                Self::VaultUnreachable
            }
        }
    }
}

impl From<&KeyRefusal> for HealthReason {
    /// The health reason a probe records for a refusal of its checks.
    fn from(refusal: &KeyRefusal) -> Self {
        match refusal {
            KeyRefusal::KeyNotFound => KeyProblem::KeyNotFound.into(),
            KeyRefusal::KeyDisabled => KeyProblem::KeyDisabled.into(),
            KeyRefusal::KeyNotYetActive(_) => KeyProblem::KeyNotYetActive.into(),
            KeyRefusal::KeyExpired(_) => KeyProblem::KeyExpired.into(),
            KeyRefusal::UnsupportedKeyType(_) | KeyRefusal::KeyTooSmall(_) => Self::UnsupportedKeyType,
            KeyRefusal::MissingPermission(_)
            | KeyRefusal::MissingKeyOperations(_)
            | KeyRefusal::CanaryFailed(_)
            | KeyRefusal::PurgeProtectionRequired(_) => KeyProblem::MissingPermission.into(),
            KeyRefusal::VaultUnreachable(_) | KeyRefusal::InvalidKeyUri(_) | KeyRefusal::UntrustedVaultHost(_) => {
                KeyProblem::VaultUnreachable.into()
            }
        }
    }
}

/// The events `observation`, concluded at `now_ms`, calls for, in order.
/// None if the tenant's key URI or version changed since the probe began
/// (disabled, or enabled again with another key): that result is about a
/// key the tenant no longer uses.
pub fn decide(
    current: &TenantProjection,
    observation: &Observation,
    now_ms: i64,
    lockdown_after: Duration,
) -> Vec<Kind> {
    if !is_about_current_key(current, observation) {
        return Vec::new();
    }
    let mut events = Vec::new();
    match &observation.probe {
        Probe::Inconclusive => {}
        Probe::Healthy { version, .. } => {
            // A new newest enabled version: roll to it (data keys are
            // rewrapped after the event, records are not touched).
            if !version.is_empty() && *version != current.key_version {
                events.push(Kind::KeyRolled(KeyRolled {
                    from_version: current.key_version.clone(),
                    to_version: version.clone(),
                }));
            }
            if current.state() != TenantState::Active {
                events.push(Kind::KeyHealth(KeyHealth {
                    status: Status::Healthy as i32,
                    key_version: version.clone(),
                    ..KeyHealth::default()
                }));
            }
            if current.state() == TenantState::LockedDown {
                events.push(Kind::TenantRestored(TenantRestored { locked_since_unix_ms: current.state_since_unix_ms }));
            }
        }
        Probe::Unavailable(reason) => {
            if current.state() == TenantState::Active || current.health_reason != reason.as_str() {
                events.push(Kind::KeyHealth(KeyHealth {
                    status: Status::Unavailable as i32,
                    reason: reason.as_str().to_owned(),
                    key_version: String::new(),
                    observed_at_unix_ms: observation.began_at_ms,
                }));
            }
        }
    }
    let mut after = current.clone();
    for event in &events {
        projection::apply(&mut after, event, now_ms);
    }
    events.extend(lockdown_due(&after, now_ms, lockdown_after));
    events
}

/// Whether `observation` is about the key the tenant uses now (not one it
/// disabled, or replaced, while the probe ran).
fn is_about_current_key(current: &TenantProjection, observation: &Observation) -> bool {
    !current.key_uri.is_empty()
        && current.key_uri == observation.key_uri
        && current.key_version == observation.key_version
}

/// `KeyExpiring` if `observation` found the newest version of the tenant's
/// key healthy but expiring within `warning` of `now_ms`, and no warning
/// was appended for that version yet. Decided on the projection before
/// [`decide`]'s events, so a version rolled to in the same probe is warned
/// about at once.
pub fn expiry_warning(
    current: &TenantProjection,
    observation: &Observation,
    now_ms: i64,
    warning: Duration,
) -> Option<Kind> {
    let Probe::Healthy { version, expires_at_ms: Some(expires_at) } = &observation.probe else {
        return None;
    };
    let version = if version.is_empty() { &current.key_version } else { version };
    let within = *expires_at <= now_ms.saturating_add(i64::try_from(warning.as_millis()).unwrap_or(i64::MAX));
    (is_about_current_key(current, observation) && within && current.expiry_warned_version != *version)
        .then(|| Kind::KeyExpiring(KeyExpiring { key_version: version.clone(), expires_at_unix_ms: *expires_at }))
}

/// `TenantLockedDown` if the tenant is degraded and its grace has passed at
/// `now_ms`: the time-driven transition, decided from the projection and
/// the time alone. The event carries what the fold needs, so replay never
/// looks at a clock.
pub fn lockdown_due(current: &TenantProjection, now_ms: i64, lockdown_after: Duration) -> Option<Kind> {
    (current.state() == TenantState::Degraded && now_ms >= lockdown_at(current, lockdown_after)).then(|| {
        Kind::TenantLockedDown(TenantLockedDown {
            reason: current.health_reason.clone(),
            degraded_since_unix_ms: current.degraded_since_unix_ms,
        })
    })
}

/// When a degraded tenant will be locked down unless its key comes back.
pub fn lockdown_at(projection: &TenantProjection, lockdown_after: Duration) -> i64 {
    projection.degraded_since_unix_ms + lockdown_after.as_millis() as i64
}

/// A tenant's key health as operators see it, derived from the projection
/// alone so the admin API's `keyHealth` and the status page always agree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyHealthView {
    /// Why the key is unavailable; `None` while it is healthy.
    pub reason: Option<String>,
    /// Since when the key has been unavailable (the first failed probe of
    /// this outage), or healthy again after its last state change.
    pub since_ms: Option<i64>,
    /// While degraded: when the tenant will be locked down unless the key
    /// comes back.
    pub lockdown_at_ms: Option<i64>,
    /// When the version in use expires, once a `KeyExpiring` warned of it.
    pub expiring_at_ms: Option<i64>,
}

impl KeyHealthView {
    /// The view of `projection` for a worker with `--lockdown-after lockdown_after`.
    pub fn of(projection: &TenantProjection, lockdown_after: Duration) -> Self {
        let state = projection.state();
        let reason = (!projection.health_reason.is_empty()).then(|| projection.health_reason.clone());
        let since_ms = match (&reason, state) {
            (Some(_), _) => Some(projection.degraded_since_unix_ms),
            (None, TenantState::Active) if projection.state_since_unix_ms > 0 => Some(projection.state_since_unix_ms),
            _ => None,
        };
        let lockdown_at_ms = (state == TenantState::Degraded).then(|| lockdown_at(projection, lockdown_after));
        let warned =
            projection.key_expires_at_unix_ms > 0 && projection.expiry_warned_version == projection.key_version;
        let expiring_at_ms = warned.then_some(projection.key_expires_at_unix_ms);
        Self { reason, since_ms, lockdown_at_ms, expiring_at_ms }
    }

    /// `healthy` or `unavailable`, the API's `keyHealth.status`.
    pub fn status(&self) -> &'static str {
        if self.reason.is_some() { "unavailable" } else { "healthy" }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(50 * 60);

    /// A tenant on its own key `u` at `version`.
    fn byok(version: &str) -> TenantProjection {
        TenantProjection { key_uri: "u".into(), key_version: version.into(), ..Default::default() }
    }

    /// A probe of the tenant's current key that began at `began` and ended at `now`.
    fn of(p: &TenantProjection, probe: Probe, began: i64) -> Observation {
        Observation { key_uri: p.key_uri.clone(), key_version: p.key_version.clone(), began_at_ms: began, probe }
    }

    fn apply_all(p: &mut TenantProjection, events: &[Kind], now: i64) -> Vec<&'static str> {
        for event in events {
            projection::apply(p, event, now);
        }
        events.iter().map(crate::proto::names::kind_name).collect()
    }

    fn run(p: &mut TenantProjection, probe: Probe, now: i64) -> Vec<&'static str> {
        let events = decide(p, &of(p, probe, now), now, GRACE);
        apply_all(p, &events, now)
    }

    /// A tenant's story, read as cqrs-es tests read: `given` the events it
    /// has (on its own key `u` at `v1`), `when` a probe concludes at a
    /// time, `then` the events the policy decides, by name. Each step goes
    /// on from where the one before left the tenant.
    struct Story {
        tenant: TenantProjection,
    }

    /// The tenant after `events`, each applied at its time.
    fn given(events: &[(i64, Kind)]) -> Story {
        let mut tenant = byok("v1");
        for (at, event) in events {
            projection::apply(&mut tenant, event, *at);
        }
        Story { tenant }
    }

    /// What the policy decided, not yet checked.
    struct Decided {
        story: Story,
        events: Vec<&'static str>,
    }

    impl Story {
        /// A probe of the tenant's current key that began and ended at `at`.
        fn when(mut self, probe: Probe, at: i64) -> Decided {
            let events = run(&mut self.tenant, probe, at);
            Decided { story: self, events }
        }
    }

    impl Decided {
        /// Checks the decided events; the story goes on.
        #[track_caller]
        fn then(self, expected: &[&str]) -> Story {
            assert_eq!(self.events, expected);
            self.story
        }
    }

    /// `KeyHealth`: the key unavailable for `reason`, seen at `at`.
    fn unavailable(reason: HealthReason, at: i64) -> (i64, Kind) {
        let health = KeyHealth {
            status: Status::Unavailable as i32,
            reason: reason.as_str().into(),
            key_version: String::new(),
            observed_at_unix_ms: at,
        };
        (at, Kind::KeyHealth(health))
    }

    fn healthy(version: &str) -> Probe {
        Probe::Healthy { version: version.into(), expires_at_ms: None }
    }

    #[test]
    fn an_expiring_version_is_warned_of_once_and_a_version_rolled_to_afresh() {
        const DAY: i64 = 86_400_000;
        let warning = Duration::from_secs(30 * 86_400);
        let expiring = |version: &str, at: i64| Probe::Healthy { version: version.into(), expires_at_ms: Some(at) };
        let step = |p: &mut TenantProjection, probe: Probe, now: i64| {
            let observation = of(p, probe, now);
            let mut events = decide(p, &observation, now, GRACE);
            events.extend(expiry_warning(p, &observation, now, warning));
            apply_all(p, &events, now)
        };
        let mut p = byok("v1");
        assert!(step(&mut p, expiring("v1", 40 * DAY), 0).is_empty(), "40 days out: no warning yet");
        assert_eq!(step(&mut p, expiring("v1", 40 * DAY), 10 * DAY), ["key_expiring"], "30 days out");
        assert!(step(&mut p, expiring("v1", 40 * DAY), 11 * DAY).is_empty(), "once per version");
        assert_eq!(KeyHealthView::of(&p, GRACE).expiring_at_ms, Some(40 * DAY));
        assert_eq!(step(&mut p, expiring("v2", 35 * DAY), 12 * DAY), ["key_rolled", "key_expiring"]);
        assert_eq!(KeyHealthView::of(&p, GRACE).expiring_at_ms, Some(35 * DAY));
        assert_eq!(
            step(&mut p, expiring("v3", 400 * DAY), 13 * DAY),
            ["key_rolled"],
            "a fresh version is not warned of"
        );
        assert_eq!(KeyHealthView::of(&p, GRACE).expiring_at_ms, None, "and the warning is gone");
        let never = Probe::Healthy { version: "v3".into(), expires_at_ms: None };
        assert!(step(&mut p, never, 14 * DAY).is_empty(), "a key without exp never warns");
    }

    #[test]
    fn a_new_version_rolls_once() {
        let story = given(&[]).when(healthy("v1"), 0).then(&[]).when(healthy("v2"), 1).then(&["key_rolled"]);
        assert_eq!((story.tenant.key_version.as_str(), story.tenant.rewrap_pending), ("v2", true));
        story.when(healthy("v2"), 2).then(&[]);
    }

    #[test]
    fn a_broken_key_degrades_then_locks_after_the_grace_then_restores() {
        let disabled = || Probe::Unavailable(HealthReason::KeyDisabled);
        let at = 1_000 + GRACE.as_millis() as i64;
        let story = given(&[])
            .when(healthy("v1"), 0)
            .then(&[]) // healthy stays silent
            .when(disabled(), 1_000)
            .then(&["key_health"])
            .when(disabled(), 61_000)
            .then(&[]) // no event without a change
            .when(Probe::Inconclusive, 3_000_000)
            .then(&[]) // throttling decides nothing
            .when(disabled(), at - 1)
            .then(&[])
            .when(disabled(), at)
            .then(&["tenant_locked_down"]);
        assert_eq!(story.tenant.state(), TenantState::LockedDown);
        let story = story
            .when(Probe::Unavailable(HealthReason::KeyNotFound), at + 1)
            .then(&["key_health"]) // a change of reason
            .when(healthy("v1"), at + 2)
            .then(&["key_health", "tenant_restored"]);
        assert_eq!(story.tenant.state(), TenantState::Active);
    }

    #[test]
    fn recovery_within_the_grace_never_locks() {
        let story = given(&[unavailable(HealthReason::VaultUnreachable, 0)])
            .when(healthy("v1"), 10)
            .then(&["key_health"])
            .when(Probe::Unavailable(HealthReason::VaultUnreachable), GRACE.as_millis() as i64 + 5)
            .then(&["key_health"]);
        assert_eq!(story.tenant.state(), TenantState::Degraded, "a new outage starts a new grace");
    }

    #[test]
    fn the_key_health_view_names_the_reason_and_the_deadline_only_while_it_matters() {
        let mut p = byok("v1");
        let view = |p: &TenantProjection| KeyHealthView::of(p, GRACE);
        assert_eq!(
            view(&p),
            KeyHealthView { reason: None, since_ms: None, lockdown_at_ms: None, expiring_at_ms: None }
        );
        run(&mut p, Probe::Unavailable(HealthReason::KeyDisabled), 1_000);
        let degraded = view(&p);
        assert_eq!((degraded.status(), degraded.reason.as_deref()), ("unavailable", Some("key_disabled")));
        assert_eq!((degraded.since_ms, degraded.lockdown_at_ms), (Some(1_000), Some(1_000 + GRACE.as_millis() as i64)));
        run(&mut p, Probe::Unavailable(HealthReason::KeyDisabled), 1_000 + GRACE.as_millis() as i64);
        assert_eq!(view(&p).lockdown_at_ms, None, "locked down: no deadline left");
        assert_eq!(view(&p).since_ms, Some(1_000), "unavailable since the first failed probe");
        run(&mut p, Probe::Healthy { version: "v1".into(), expires_at_ms: None }, 9_000_000);
        assert_eq!(
            view(&p),
            KeyHealthView { reason: None, since_ms: Some(9_000_000), lockdown_at_ms: None, expiring_at_ms: None }
        );
    }

    #[test]
    fn a_probe_arriving_after_a_long_outage_locks_at_once() {
        given(&[unavailable(HealthReason::KeyExpired, 0)])
            .when(Probe::Unavailable(HealthReason::KeyExpired), 10 * GRACE.as_millis() as i64)
            .then(&["tenant_locked_down"]);
    }

    #[test]
    fn a_slow_probe_starts_the_grace_when_it_began() {
        let mut p = byok("v1");
        let events = decide(&p, &of(&p, Probe::Unavailable(HealthReason::VaultUnreachable), 1_000), 61_000, GRACE);
        assert_eq!(apply_all(&mut p, &events, 61_000), ["key_health"]);
        assert_eq!(p.degraded_since_unix_ms, 1_000);
        assert_eq!(KeyHealthView::of(&p, GRACE).lockdown_at_ms, Some(1_000 + GRACE.as_millis() as i64));
    }

    #[test]
    fn the_deadline_locks_with_no_probe_at_all_and_only_once() {
        let mut p = byok("v1");
        run(&mut p, Probe::Unavailable(HealthReason::VaultUnreachable), 1_000);
        let at = 1_000 + GRACE.as_millis() as i64;
        assert_eq!(lockdown_due(&p, at - 1, GRACE), None, "not before the grace has passed");
        let locked = lockdown_due(&p, at, GRACE).expect("due at the deadline");
        assert_eq!(
            locked,
            Kind::TenantLockedDown(TenantLockedDown {
                reason: "vault_unreachable".into(),
                degraded_since_unix_ms: 1_000
            })
        );
        apply_all(&mut p, &[locked], at);
        assert_eq!(p.state(), TenantState::LockedDown);
        assert_eq!(lockdown_due(&p, at + 10_000, GRACE), None, "a locked tenant is not locked again");
        assert_eq!(lockdown_due(&byok("v1"), at, GRACE), None, "an active tenant has no deadline");
    }

    #[test]
    fn a_result_about_a_key_the_tenant_no_longer_uses_is_discarded() {
        let began = byok("v1");
        let failed = of(&began, Probe::Unavailable(HealthReason::KeyNotFound), 0);
        let rolled = of(&began, Probe::Healthy { version: "v0".into(), expires_at_ms: None }, 0);
        let other_key = TenantProjection { key_uri: "w".into(), ..byok("v1") };
        assert!(decide(&other_key, &failed, 10, GRACE).is_empty(), "enabled again with another key URI");
        let other_version = byok("v2");
        assert!(decide(&other_version, &rolled, 10, GRACE).is_empty(), "enabled again: no roll back to v0");
        assert!(decide(&TenantProjection::default(), &failed, 10, GRACE).is_empty(), "disabled meanwhile");
        assert_eq!(decide(&began, &failed, 10, GRACE).len(), 1, "the same key: the result counts");
    }
}
