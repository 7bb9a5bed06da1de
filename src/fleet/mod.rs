//! Many workers, one deployment. RabbitMQ is the distributed engine and
//! keyseal adds no consensus of its own (DESIGN.md, "Shards"):
//! [`crate::placement`] computes a tenant's shard, [`intake`] places new tenants
//! by binding them on `keyseal.route`, [`leases`] holds shard ownership as
//! exclusive queues, the [`balance`]r takes and hands over shards toward
//! ceil(N / W) each, and every owned shard runs as a [`running`] shard,
//! listed in [`owned`] for the admin API, which [`forward`]s requests for
//! the other shards to their owners.

pub mod balance;
pub mod forward;
pub mod intake;
pub mod leases;
pub mod owned;
pub mod running;
