//! The operator's side of a shard: the admin HTTP API ([`api`]: health,
//! readiness, `/metrics`, tenant status, record reads, BYOK, sweeps,
//! replay) and the status page it serves at `/` ([`status_page`]).

pub mod api;
pub mod status_page;
