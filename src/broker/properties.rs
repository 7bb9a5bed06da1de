//! Which AMQP properties of a producer's message keyseal carries along when
//! it publishes the message again (to its shard from the intake, or to the
//! dead-letter queue). Only these: a property keyseal did not mean to keep
//! can stall it. `user-id` is checked by the broker against the publishing
//! connection's user, which is keyseal's, not the producer's (RabbitMQ
//! closes the channel over it); `expiration` could drop a record the broker
//! had already accepted. Everything a consumer of the data needs stays.

use lapin::BasicProperties;

/// `original`'s properties that keyseal keeps, persistent: content type
/// and encoding, headers, priority, correlation and message ids, reply-to,
/// timestamp, type and app id. Not `user-id`, `expiration` or the
/// deprecated `cluster-id`.
pub fn carried(original: &BasicProperties) -> BasicProperties {
    let mut properties = BasicProperties::default().with_delivery_mode(2);
    macro_rules! keep {
        ($($get:ident => $set:ident),* $(,)?) => {
            $(if let Some(value) = original.$get().clone() {
                properties = properties.$set(value);
            })*
        };
    }
    keep!(
        content_type => with_content_type,
        content_encoding => with_content_encoding,
        headers => with_headers,
        priority => with_priority,
        correlation_id => with_correlation_id,
        reply_to => with_reply_to,
        message_id => with_message_id,
        timestamp => with_timestamp,
        kind => with_type,
        app_id => with_app_id,
    );
    properties
}

#[cfg(test)]
mod tests {
    use lapin::types::{AMQPValue, FieldTable};

    use super::*;

    #[test]
    fn user_id_and_expiration_are_left_behind() {
        let mut headers = FieldTable::default();
        headers.insert("x-trace".into(), AMQPValue::LongString("t-1".into()));
        let original = BasicProperties::default()
            .with_content_type("application/x-protobuf".into())
            .with_message_id("m-1".into())
            .with_headers(headers.clone())
            .with_expiration("200".into())
            .with_user_id("producer".into())
            .with_cluster_id("old".into())
            .with_delivery_mode(1);
        let copy = carried(&original);
        assert_eq!(copy.expiration(), &None);
        assert_eq!(copy.user_id(), &None);
        assert_eq!(copy.cluster_id(), &None);
        assert_eq!(copy.delivery_mode(), &Some(2));
        assert_eq!(copy.content_type().as_ref().map(|c| c.as_str()), Some("application/x-protobuf"));
        assert_eq!(copy.message_id().as_ref().map(|c| c.as_str()), Some("m-1"));
        assert_eq!(copy.headers(), &Some(headers));
    }
}
