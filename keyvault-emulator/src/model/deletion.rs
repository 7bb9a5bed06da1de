//! Deletion in Key Vault's terms: the vault-wide policy (recovery level
//! and retention) that decides whether a deleted key is kept and for how
//! long, and the dates a soft-deleted key carries.

use serde::{Deserialize, Serialize};

use super::duration::SECONDS_PER_DAY;
use crate::error::EmulatorError;
use crate::settings::RecoveryLevel;

/// How deleting a key behaves in this vault.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DeletionPolicy {
    level: RecoveryLevel,
    recoverable_days: u32,
}

impl DeletionPolicy {
    /// Checks the retention Key Vault allows: 7 to 90 days with soft delete.
    pub(crate) fn new(level: RecoveryLevel, recoverable_days: u32) -> Result<Self, EmulatorError> {
        if level.soft_delete() && !(7..=90).contains(&recoverable_days) {
            return Err(EmulatorError::InvalidSetting(format!(
                "--recoverable-days must be between 7 and 90 with recovery level {}, not {recoverable_days}",
                level.as_str()
            )));
        }
        Ok(Self { level, recoverable_days })
    }

    /// The recovery level every key reports in `recoveryLevel`.
    pub(crate) fn level(&self) -> RecoveryLevel {
        self.level
    }

    /// `recoverableDays` as Key Vault reports it: 0 without soft delete.
    pub(crate) fn recoverable_days(&self) -> u32 {
        if self.level.soft_delete() { self.recoverable_days } else { 0 }
    }

    /// The dates of a key soft-deleted at `now`: purged once the retention
    /// has passed.
    pub(crate) fn deletion_at(&self, now: i64) -> Deletion {
        Deletion { deleted_date: now, scheduled_purge_date: now + i64::from(self.recoverable_days()) * SECONDS_PER_DAY }
    }
}

/// When a soft-deleted key was deleted and when it will be purged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Deletion {
    pub(crate) deleted_date: i64,
    pub(crate) scheduled_purge_date: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_outside_key_vault_range_is_refused() {
        assert!(DeletionPolicy::new(RecoveryLevel::Recoverable, 6).is_err());
        assert!(DeletionPolicy::new(RecoveryLevel::Recoverable, 91).is_err());
        let purgeable = DeletionPolicy::new(RecoveryLevel::Purgeable, 0).expect("no soft delete");
        assert_eq!(purgeable.recoverable_days(), 0);
    }
}
