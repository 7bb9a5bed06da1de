//! The replay check: rebuild every projection from the log's first event
//! and compare it with the live one, which proves the projections are what
//! the events say (`POST /v1/admin/replay`, `keyseal replay`).

use std::collections::BTreeSet;

use serde::Serialize;

use crate::events::projection;
use crate::storage::{Store, StoreError};

/// The outcome of [`check`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplayReport {
    /// Whether replayed and live projections are identical.
    pub equal: bool,
    /// The sequence both reflect.
    pub sequence: u64,
    /// Events replayed.
    pub events: u64,
    /// Tenants rebuilt.
    pub tenants: usize,
    /// Tenants whose projections differ.
    pub differing: Vec<String>,
}

/// Rebuilds every projection of `store` from sequence 1 into scratch
/// memory and compares it with the live projections at the same sequence.
pub fn check(store: &Store) -> Result<ReplayReport, StoreError> {
    store.sync()?;
    let (live, sequence) = store.projections_at();
    let events = store.events_after(0, usize::try_from(sequence).unwrap_or(usize::MAX))?;
    let replayed = projection::replay(&events);
    let differing: BTreeSet<String> =
        live.keys().chain(replayed.keys()).filter(|t| live.get(*t) != replayed.get(*t)).cloned().collect();
    Ok(ReplayReport {
        equal: differing.is_empty(),
        sequence,
        events: events.len() as u64,
        tenants: replayed.len(),
        differing: differing.into_iter().collect(),
    })
}
