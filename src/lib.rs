//! keyseal: an event-sourced worker that keeps tenant records encrypted at
//! rest and seals them under each tenant's own key.
//!
//! A map of the crate, in the order a record travels:
//!
//! - [`broker`]: RabbitMQ connections, the fixed topology and
//!   [`broker::publish`], the confirm-mode producer of `keyseal publish`.
//! - [`ingest`]: consume a shard's queue in batches, [`ingest::validate`]
//!   each message, dead-letter rejects with a reason, ack after durability.
//! - [`records`]: turn producer content into encrypted envelopes in `hot`
//!   (deduplicating redeliveries) and read them back.
//! - [`crypto`]: data keys, the root keys that wrap them (one
//!   [`crypto::root_key::RootKey`] per kind: managed, Key Vault), the
//!   [`crypto::keyring`] and the envelope that binds a ciphertext to its
//!   identity.
//! - [`storage`]: RocksDB column families, the one atomic write path (which
//!   appends events and folds them into the [`events::projection`]) and
//!   the [`storage::pager`] for cursor scans.
//! - [`keyvault`]: Azure Key Vault for a tenant's root key (BYOK): key URIs,
//!   credentials, the official client (it wraps and unwraps plain bytes)
//!   and the enable checks.
//! - [`byok`]: enabling and disabling a tenant's own key, and the
//!   [`byok::rewrapper`], the one task that moves data keys under a new root
//!   (after enables, rolls and restarts).
//! - [`health`]: the key prober, the lockdown policy and the lockdown
//!   deadline tick.
//! - [`sweeps`]: the [`sweeps::Sweeper`] and its sweeps: [`sweeps::seal`]
//!   moves records older than the seal age into `sealed`; re-encryption
//!   off old data keys and the scrub that verifies every record.
//! - [`erasure`]: erasing a tenant provably: its data keys shredded in
//!   one batch, then its data removed from every file.
//! - [`audit`]: the key-use audit: every root-key call is a `KeyUsed`
//!   event, recorded without an fsync of its own.
//! - [`events`]: event naming, the projection fold, the
//!   [`events::outbox`] relay to `keyseal.events` and the replay check.
//! - [`admin`]: the admin HTTP API and the status page.
//! - [`telemetry`]: Prometheus metrics and the gauges derived from the store.
//! - [`shard`]: the handle a shard's tasks share (store, keyring, clock);
//!   [`shards`]: placement, leases, balancing and forwarding across the
//!   workers of a deployment; [`worker`] wires a process together; [`config`],
//!   [`clock`] and [`proto`] support them; [`error`] holds the one table
//!   of error codes.
//!
//! Outside the library: the `keyseal` binary (`src/cli/`: the commands, the
//! CLI's admin client, `keyseal demo`) and the Key Vault emulator, its own
//! workspace crate (`keyvault-emulator/`, started by `keyseal
//! keyvault-emulator`).

#![warn(missing_docs)]

pub mod admin;
pub mod audit;
pub mod broker;
pub mod byok;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod erasure;
pub mod error;
pub mod events;
pub mod health;
pub mod ingest;
pub mod keyvault;
pub mod placement;
pub mod proto;
pub mod records;
pub mod shard;
pub mod shards;
pub mod storage;
pub mod sweeps;
pub mod telemetry;
pub mod worker;
