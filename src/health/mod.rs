//! Key health and lockdown. The [`prober`] reads each BYOK tenant's key
//! every probe interval; the [`policy`] turns what it found, and the passage
//! of time, into `KeyHealth`, `TenantLockedDown` and `TenantRestored` events;
//! the projection (`crate::projection`) folds them into the tenant's state.

pub mod policy;
pub mod prober;
