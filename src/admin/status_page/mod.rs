//! The status page, `GET /`: one small server-rendered HTML page that an
//! operator can leave open in a browser. It shows each tenant's state, key
//! health, hot and sealed counts and seal lag, the worker's totals, and
//! every shard of the deployment with its owner and tenant count; it
//! refreshes itself, needs no scripts and loads no external assets.
//!
//! [`snapshot()`] reads what the page shows from the owned shards;
//! [`render()`] turns a [`Snapshot`] into HTML. The page never shows
//! payloads, key material or key URIs: only what `/metrics` already
//! exposes, plus key health reasons, key versions and the state times the
//! lockdown policy works from.

mod render;
mod snapshot;

pub use render::render;
pub use snapshot::{MAX_TENANT_ROWS, OVERDUE_SCAN_LIMIT, REFRESH_SECONDS, Snapshot, TenantRow, snapshot};
