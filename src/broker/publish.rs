//! A producer of `IngestRecord`s with publisher confirms, used by
//! `keyseal publish`, the tests and the benchmarks. Messages are persistent,
//! mandatory (an unroutable message is an error, not a silent drop) and
//! confirmed in windows, so a caller knows exactly which ones the broker holds.

use std::collections::BTreeMap;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection, PublisherConfirm};
use prost::Message;

use crate::broker::{self, Broker, INGEST_EXCHANGE, NodesError, PROTOBUF_CONTENT_TYPE};
use crate::error::ErrorCode;
use crate::proto::v1::IngestRecord;

/// Publishing failures.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The broker connection failed.
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    /// The broker's URL (or list of nodes) is malformed.
    #[error(transparent)]
    Nodes(#[from] NodesError),
    /// A records file could not be read or parsed.
    #[error("records file line {line}: {reason}")]
    File {
        /// 1-based line.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// A confirm-mode channel to `keyseal.ingest`.
pub struct Publisher {
    _connection: Connection,
    channel: Channel,
}

impl Publisher {
    /// Connects to the first node of `amqp_url` (one URL, or a cluster's
    /// nodes) that answers, declares the topology (so nothing published is
    /// unroutable because the worker has not started yet) and enables
    /// confirms.
    pub async fn connect(amqp_url: &str) -> Result<Self, PublishError> {
        let (connection, _) = broker::connect_any(&Broker::from_list(amqp_url)?, 0, "publisher", None).await?;
        let channel = connection.create_channel().await?;
        broker::declare_topology(&connection, None).await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Self { _connection: connection, channel })
    }

    /// Publishes one encoded body with routing key `routing_key`; await the
    /// returned confirm to learn whether the broker took it.
    pub async fn publish_raw(
        &self,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<PublisherConfirm, PublishError> {
        let options = BasicPublishOptions { mandatory: true, ..Default::default() };
        Ok(self.channel.basic_publish(INGEST_EXCHANGE.into(), routing_key.into(), options, body, properties).await?)
    }

    /// Publishes records in windows of `window`, waiting for each window's
    /// confirms; returns for each record whether the broker confirmed it.
    pub async fn publish_all(&self, records: &[IngestRecord], window: usize) -> Result<Vec<bool>, PublishError> {
        let mut confirmed = Vec::with_capacity(records.len());
        for chunk in records.chunks(window.max(1)) {
            let mut pending = Vec::with_capacity(chunk.len());
            for record in chunk {
                pending.push(self.publish_raw(&record.tenant_id, &record.encode_to_vec(), record_properties()).await?);
            }
            for confirm in pending {
                // An ack that carries a returned message means "unroutable".
                let taken = matches!(confirm.await?, Confirmation::Ack(None));
                confirmed.push(taken);
            }
        }
        Ok(confirmed)
    }

    /// Publishes `records`, then publishes again those the broker did not
    /// confirm (a nack hands responsibility back to the producer; keyseal
    /// deduplicates redeliveries), up to `attempts` rounds in all. Returns
    /// how many are still unconfirmed (0 when every record is held).
    pub async fn publish_until_confirmed(
        &self,
        records: &[IngestRecord],
        window: usize,
        attempts: usize,
    ) -> Result<usize, PublishError> {
        let mut unconfirmed: Vec<&IngestRecord> = records.iter().collect();
        for _ in 0..attempts.max(1) {
            if unconfirmed.is_empty() {
                break;
            }
            let batch: Vec<IngestRecord> = unconfirmed.iter().map(|r| (*r).clone()).collect();
            let confirmed = self.publish_all(&batch, window).await?;
            unconfirmed = unconfirmed.into_iter().zip(confirmed).filter(|(_, ok)| !ok).map(|(r, _)| r).collect();
        }
        Ok(unconfirmed.len())
    }
}

/// Properties of an `IngestRecord` message: persistent protobuf.
pub fn record_properties() -> BasicProperties {
    BasicProperties::default().with_content_type(PROTOBUF_CONTENT_TYPE.into()).with_delivery_mode(2)
}

/// Synthetic records `{prefix}{i}` for `tenant`, each with `size` payload bytes.
pub fn synthetic(tenant: &str, prefix: &str, count: usize, size: usize, observed_at_ms: i64) -> Vec<IngestRecord> {
    (0..count)
        .map(|i| IngestRecord {
            tenant_id: tenant.to_owned(),
            record_id: format!("{prefix}{i}"),
            observed_at_unix_ms: observed_at_ms,
            payload: synthetic_payload(i, size),
            attributes: BTreeMap::from([("source".to_owned(), "keyseal-publish".to_owned())]),
        })
        .collect()
}

/// Deterministic, incompressible-looking filler (xorshift), distinct per record.
fn synthetic_payload(seed: usize, size: usize) -> Vec<u8> {
    let mut state = (seed as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// One line of a records file (JSON Lines): `payload` is UTF-8 text, or
/// `payloadBase64` raw bytes.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileRecord {
    tenant_id: String,
    record_id: String,
    #[serde(default)]
    observed_at_unix_ms: Option<i64>,
    #[serde(default)]
    payload: Option<String>,
    #[serde(default)]
    payload_base64: Option<String>,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
}

/// Parses a JSON Lines records file (blank lines skipped).
pub fn parse_records_file(text: &str, now_ms: i64) -> Result<Vec<IngestRecord>, PublishError> {
    use base64::Engine;
    let mut records = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| PublishError::File { line: i + 1, reason };
        let parsed: FileRecord = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let payload = match (parsed.payload, parsed.payload_base64) {
            (Some(text), None) => text.into_bytes(),
            (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|e| bad(format!("payloadBase64: {e}")))?,
            (None, None) => Vec::new(),
            (Some(_), Some(_)) => return Err(bad("give payload or payloadBase64, not both".into())),
        };
        records.push(IngestRecord {
            tenant_id: parsed.tenant_id,
            record_id: parsed.record_id,
            observed_at_unix_ms: parsed.observed_at_unix_ms.unwrap_or(now_ms),
            payload,
            attributes: parsed.attributes,
        });
    }
    Ok(records)
}

impl ErrorCode for PublishError {
    fn code(&self) -> &'static str {
        match self {
            Self::Broker(_) => "broker_unavailable",
            Self::Nodes(_) => "invalid_amqp_url",
            Self::File { .. } => "invalid_records_file",
        }
    }

    fn is_retryable(&self) -> bool {
        matches!(self, Self::Broker(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_file_parses_text_and_base64() {
        let text = r#"{"tenantId":"acme","recordId":"1","payload":"hi"}

{"tenantId":"acme","recordId":"2","payloadBase64":"AAE=","attributes":{"k":"v"}}"#;
        let records = parse_records_file(text, 9).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].payload, b"hi");
        assert_eq!(records[1].payload, vec![0, 1]);
        assert_eq!(records[0].observed_at_unix_ms, 9);
        let err = parse_records_file("{\"tenantId\":1}", 0).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn synthetic_payloads_differ_per_record() {
        let records = synthetic("t", "r-", 2, 64, 0);
        assert_eq!(records[1].record_id, "r-1");
        assert_ne!(records[0].payload, records[1].payload);
        assert_eq!(records[0].payload.len(), 64);
    }
}
