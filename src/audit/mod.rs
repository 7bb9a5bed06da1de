//! The key-use audit: every call of a root key (wrap or unwrap, managed or
//! the tenant's own) becomes a `KeyUsed` event of its tenant, whatever its
//! outcome, with the `x-ms-client-request-id` keyseal sent to the vault, so
//! each entry can be matched with the vault's own AuditEvent log.
//!
//! [`KeyUse::run`] is the one place a root-key call is timed and recorded.
//! Recording never waits for a disk: entries join the shard's next commit
//! (see [`crate::storage::Store::audit`]), so a read that unwraps a key
//! pays no fsync of its own.
//!
//! [`key_use`] records each call; [`flush`] commits entries on a quiet
//! shard. The audit's storage is `storage::audit`, its API
//! `admin::audit_api`.

pub mod flush;
pub mod key_use;
