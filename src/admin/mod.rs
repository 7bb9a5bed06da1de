//! The operator's side of a shard: the admin HTTP API ([`api`]: health,
//! readiness, `/metrics`, tenant status, record reads, BYOK, sweeps,
//! replay), the data owner's record paths ([`records_api`]: listing and
//! deletion), the key-use audit ([`audit_api`]), the paging both use
//! ([`paging`]), the retention paths ([`retention_api`]), who owns which
//! shard ([`shards_api`]) and the status page it serves at `/`
//! ([`status_page`]).

pub mod api;
pub mod audit_api;
pub mod paging;
pub mod records_api;
pub mod retention_api;
pub mod shards_api;
pub mod status_page;
