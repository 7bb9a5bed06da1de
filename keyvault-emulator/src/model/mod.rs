//! The vault's data and Key Vault's rules on it, free of I/O and of the
//! clock (every rule takes `now` as Unix seconds): keys, versions and their
//! attributes (`key`), deletion (`deletion`), rotation policies
//! (`rotation`) and the ISO 8601 durations they are written in
//! (`duration`). The bottom layer: the store persists it, the vault applies
//! it to its keys, the wire renders it.

mod deletion;
mod duration;
mod key;
mod rotation;

pub(crate) use self::deletion::{Deletion, DeletionPolicy};
pub(crate) use self::duration::IsoDuration;
// The vault's tests count policy periods in days; the vault itself leaves
// day arithmetic to the model.
#[cfg(test)]
pub(crate) use self::duration::SECONDS_PER_DAY;
pub(crate) use self::key::{
    KeyOperation, KeyRecord, KeyVersion, KeyView, NewVersion, PropsChange, ReleasePolicy, VersionProps,
};
pub(crate) use self::rotation::{ActionType, LifetimeAction, RotationPolicy, Trigger};
