//! Dead-lettering with a reason. A broker-side `nack(requeue=false)` cannot
//! add headers, so keyseal republishes the original message (body,
//! properties, routing key) to the dead-letter exchange with
//! `x-keyseal-error` set, waits for the broker's confirm, and only then lets
//! the original be acked.

use lapin::message::Delivery;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};

use super::validate::Rejection;
use crate::amqp::{DEAD_LETTER_EXCHANGE, ERROR_DETAIL_HEADER, ERROR_HEADER};

/// Why dead-lettering failed; the originals must then not be acked.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// Publishing or waiting for the confirm failed.
    #[error("publishing to the dead-letter exchange: {0}")]
    Broker(#[from] lapin::Error),
    /// The broker refused the dead letter.
    #[error("the broker nacked a dead letter")]
    Nacked,
}

/// Publishes each rejected delivery to the dead-letter exchange on a
/// channel in confirm mode and waits for every confirm.
pub async fn publish(channel: &Channel, rejected: &[(&Delivery, Rejection)]) -> Result<(), DeadLetterError> {
    let mut confirms = Vec::with_capacity(rejected.len());
    for (delivery, rejection) in rejected {
        let mut headers = delivery.properties.headers().clone().unwrap_or_else(FieldTable::default);
        headers.insert(ERROR_HEADER.into(), AMQPValue::LongString(rejection.code().into()));
        headers.insert(ERROR_DETAIL_HEADER.into(), AMQPValue::LongString(rejection.to_string().into()));
        let properties: BasicProperties = delivery.properties.clone().with_headers(headers).with_delivery_mode(2);
        confirms.push(
            channel
                .basic_publish(
                    DEAD_LETTER_EXCHANGE.into(),
                    delivery.routing_key.clone(),
                    BasicPublishOptions::default(),
                    &delivery.data,
                    properties,
                )
                .await?,
        );
    }
    for confirm in confirms {
        if !confirm.await?.is_ack() {
            return Err(DeadLetterError::Nacked);
        }
    }
    Ok(())
}
