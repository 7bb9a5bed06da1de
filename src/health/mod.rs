//! Key health and lockdown. The [`prober`] reads each BYOK tenant's key
//! every probe interval; the [`policy`] turns what it found, and the passage
//! of time, into `KeyHealth`, `TenantLockedDown` and `TenantRestored` events;
//! the [`lockdown`] tick appends the time-driven `TenantLockedDown` when a
//! grace has passed; the [`canary`] round trip proves a key wraps and
//! unwraps; the projection (`crate::events::projection`) folds them into
//! the tenant's state.

pub mod canary;
pub mod lockdown;
pub mod policy;
pub mod prober;
