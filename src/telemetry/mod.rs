//! What keyseal tells dashboards: the Prometheus [`metrics`] it counts as
//! things happen, the [`happenings`] that are logged and counted at once,
//! and the [`gauges`] derived from a shard's store.

pub mod gauges;
pub mod happenings;
pub mod metrics;
