//! keyseal: an event-sourced worker that keeps tenant records encrypted at
//! rest and seals them under each tenant's own key.
//!
//! A map of the crate, in the order a record travels:
//!
//! - [`ingest`]: consume `keyseal.ingest` in batches, [`ingest::validate`]
//!   each message, dead-letter rejects with a reason, ack after durability.
//! - [`records`]: turn producer content into encrypted envelopes in `hot`
//!   (deduplicating redeliveries) and read them back.
//! - [`crypto`]: data keys, the root keys that wrap them (one
//!   [`crypto::root_key::RootKey`] per kind: managed, Key Vault), the
//!   keyring cache and the envelope that binds a ciphertext to its identity.
//! - [`storage`]: RocksDB column families and the one atomic write path,
//!   which appends events and folds them into the [`projection`].
//! - [`keyvault`]: Azure Key Vault for a tenant's root key (BYOK): key URIs,
//!   credentials, the official client (it wraps and unwraps plain bytes)
//!   and the enable checks.
//! - [`encryption`]: enabling and disabling a tenant's own key and holding
//!   back sealing while a key is unusable; [`rewrapper`]: the task that
//!   finishes rewraps after rolls, enables and restarts.
//! - [`health`]: the key prober, the lockdown policy and the lockdown
//!   deadline tick.
//! - [`sealing`]: the sweep that moves records older than the seal age
//!   into `sealed`.
//! - [`sweeps`]: the scheduled maintenance sweeps: re-encryption off old
//!   data keys and the scrub that verifies every record.
//! - [`events`]: event naming and the [`events::outbox`] relay to
//!   `keyseal.events`.
//! - [`api`] and [`client`]: the admin HTTP API and its CLI client.
//! - [`status_page`]: `GET /`, a self-refreshing HTML page of tenants'
//!   states, key health, record counts and seal lag.
//! - [`publish`]: a confirm-mode producer for `keyseal publish`, tests and
//!   benchmarks.
//! - [`emulator`]: `keyseal keyvault-emulator`, a local Azure Key
//!   Vault–compatible HTTPS server for tests, demos and compose.
//! - [`worker`]: wires one shard's tasks together; [`config`], [`clock`],
//!   [`amqp`], [`metrics`] (with [`gauges`], derived from the store) and
//!   [`proto`] support them.
//! - [`demo`]: `keyseal demo`, the whole story end to end in one process
//!   (emulator, worker, two tenants), narrated.

#![warn(missing_docs)]

pub mod amqp;
pub mod api;
pub mod client;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod demo;
pub mod emulator;
pub mod encryption;
pub mod events;
pub mod gauges;
pub mod health;
pub mod ingest;
pub mod keyvault;
pub mod metrics;
pub mod projection;
pub mod proto;
pub mod publish;
pub mod records;
pub mod rewrapper;
pub mod sealing;
pub mod status_page;
pub mod storage;
pub mod sweeps;
pub mod worker;
