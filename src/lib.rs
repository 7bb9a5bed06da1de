//! keyseal: an event-sourced worker that keeps tenant records encrypted at
//! rest and seals them under each tenant's own key.
//!
//! The crate in layers, each importing only from itself and the layers
//! before it in this list (docs/architecture.md has the file-by-file table;
//! `../shared/tools/circles.py` checks there is no import circle):
//!
//! 0. Vocabulary: [`clock`], [`placement`] (a tenant's shard), [`readiness`],
//!    [`error`], [`proto`] and its names, [`config_file`], the pure parts of
//!    [`crypto`] (data keys, the envelope) and of [`events`] (the projection
//!    fold), [`telemetry`]'s metrics and typed events.
//! 1. [`storage`] (RocksDB, the one atomic write path, the event log) and
//!    [`broker`] (RabbitMQ: the cluster's nodes, the one reconnecting
//!    session, the fixed topology, the confirm-mode producer).
//! 2. Keys: [`keyvault`] (Azure Key Vault, and the one vocabulary of a
//!    key's trouble), the roots and the [`crypto::keyring`], [`audit`]
//!    of every root-key call.
//! 3. A shard and its work: [`shard`] (the handle its tasks share),
//!    [`records`], [`ingest`], [`health`], [`sweeps`], [`byok`],
//!    [`erasure`], the [`events`] outbox and replay check.
//! 4. [`fleet`]: many workers, one deployment (leases, balance, intake,
//!    forwarding to owners); [`config`] (the settings, and the option
//!    structs it builds for the layers below).
//! 5. [`admin`]: the HTTP API and the status page; [`client`], the API's
//!    client the CLI and tests share.
//! 6. [`worker`]: wires a process together.
//!
//! Outside the library: the `keyseal` binary (`src/cli/`: the commands and
//! `keyseal demo`) and the Key Vault emulator, its own workspace crate
//! (`keyvault-emulator/`, started by `keyseal keyvault-emulator`).

#![warn(missing_docs)]

pub mod admin;
pub mod audit;
pub mod broker;
pub mod byok;
pub mod client;
pub mod clock;
pub mod config;
pub mod config_file;
pub mod crypto;
pub mod erasure;
pub mod error;
pub mod events;
pub mod fleet;
pub mod health;
pub mod ingest;
pub mod keyvault;
pub mod placement;
pub mod proto;
pub mod readiness;
pub mod records;
pub mod shard;
pub mod storage;
pub mod sweeps;
pub mod telemetry;
pub mod worker;
