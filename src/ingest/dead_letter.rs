//! Dead-lettering with a reason. A broker-side `nack(requeue=false)` cannot
//! add headers, so keyseal republishes the original message (body,
//! properties, routing key) to the dead-letter exchange with
//! `x-keyseal-error` set, `mandatory`, waits for the broker's confirm, and
//! only then lets the original be acked. The dead letter of an erased
//! tenant's record keeps its headers and reason but not its body. A dead letter the broker returns
//! as unroutable (the dead-letter queue or its binding is missing) counts
//! as a failure, like a nack: the original stays unacked and comes back.

use lapin::message::Delivery;
use lapin::options::BasicPublishOptions;
use lapin::types::AMQPValue;
use lapin::{BasicProperties, Channel};

use super::validate::Rejection;
use crate::broker::{DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE, ERROR_DETAIL_HEADER, ERROR_HEADER, properties};
use crate::error::ErrorCode;

/// Why dead-lettering failed; the originals must then not be acked.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// Publishing or waiting for the confirm failed.
    #[error("publishing to the dead-letter exchange: {0}")]
    Broker(#[from] lapin::Error),
    /// The broker refused the dead letter.
    #[error("the broker nacked a dead letter")]
    Nacked,
    /// The broker could not route the dead letter to any queue.
    #[error(
        "the broker returned a dead letter as unroutable ({code} {text}): is {DEAD_LETTER_QUEUE} bound to {DEAD_LETTER_EXCHANGE}?"
    )]
    Returned {
        /// AMQP reply code (312 NO_ROUTE).
        code: u16,
        /// The broker's reply text.
        text: String,
    },
}

/// Publishes each rejected delivery to the dead-letter exchange on a
/// channel in confirm mode and waits for every confirm.
pub async fn publish(channel: &Channel, rejected: &[(&Delivery, Rejection)]) -> Result<(), DeadLetterError> {
    let mut confirms = Vec::with_capacity(rejected.len());
    for (delivery, rejection) in rejected {
        confirms.push(
            channel
                .basic_publish(
                    DEAD_LETTER_EXCHANGE.into(),
                    delivery.routing_key.clone(),
                    BasicPublishOptions { mandatory: true, ..Default::default() },
                    if rejection.keeps_payload() { &delivery.data } else { &[] },
                    dead_letter_properties(&delivery.properties, rejection),
                )
                .await?,
        );
    }
    for confirm in confirms {
        let confirmation = confirm.await?;
        let acked = confirmation.is_ack();
        if let Some(returned) = confirmation.take_message() {
            return Err(DeadLetterError::Returned { code: returned.reply_code, text: returned.reply_text.to_string() });
        }
        if !acked {
            return Err(DeadLetterError::Nacked);
        }
    }
    Ok(())
}

/// The original's properties that keyseal carries
/// ([`properties::carried`]), with the reason headers added.
fn dead_letter_properties(original: &BasicProperties, rejection: &Rejection) -> BasicProperties {
    let mut headers = original.headers().clone().unwrap_or_default();
    headers.insert(ERROR_HEADER.into(), AMQPValue::LongString(rejection.code().into()));
    headers.insert(ERROR_DETAIL_HEADER.into(), AMQPValue::LongString(rejection.to_string().into()));
    properties::carried(original).with_headers(headers)
}

impl ErrorCode for DeadLetterError {
    fn code(&self) -> &'static str {
        match self {
            Self::Broker(_) => "broker_unavailable",
            Self::Nacked => "dead_letter_nacked",
            Self::Returned { .. } => "dead_letter_unroutable",
        }
    }

    fn is_retryable(&self) -> bool {
        // An unroutable dead letter needs the queue bound first.
        !matches!(self, Self::Returned { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_keeps_the_properties_but_not_the_expiration() {
        let original = BasicProperties::default()
            .with_content_type("application/x-protobuf".into())
            .with_message_id("m-1".into())
            .with_expiration("200".into())
            .with_user_id("producer".into())
            .with_delivery_mode(1);
        let copy = dead_letter_properties(&original, &Rejection::InvalidTenantId);
        assert_eq!(copy.expiration(), &None);
        assert_eq!(copy.user_id(), &None);
        assert_eq!(copy.delivery_mode(), &Some(2));
        assert_eq!(copy.content_type().as_ref().map(|c| c.as_str()), Some("application/x-protobuf"));
        assert_eq!(copy.message_id().as_ref().map(|c| c.as_str()), Some("m-1"));
        let headers = copy.headers().clone().unwrap();
        assert_eq!(headers.inner().get(ERROR_HEADER), Some(&AMQPValue::LongString("invalid_tenant_id".into())));
    }
}
