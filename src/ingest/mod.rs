//! Ingestion: consume `keyseal.ingest` in batches, store each batch in one
//! synced write, dead-letter what cannot be accepted, and only then ack.

pub mod consumer;
pub mod dead_letter;
pub mod prefetch;
pub mod validate;
