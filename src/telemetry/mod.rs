//! What keyseal tells dashboards: the Prometheus [`metrics`] it counts as
//! things happen, and the [`gauges`] derived from a shard's store.

pub mod gauges;
pub mod metrics;
