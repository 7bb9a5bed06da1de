//! Domain events: naming (the `<event_kind>` of routing keys), the
//! [`projection`] fold of events into tenant state, the
//! [`outbox`] relay that publishes the log to `keyseal.events`, and the
//! [`replay`] check of the projections against the log.

pub mod outbox;
pub mod projection;
pub mod replay;

use crate::proto::names::kind_name;
use crate::proto::v1::Event;

/// `tenant.<tenant>.<event_kind>`.
pub fn routing_key(event: &Event) -> String {
    let kind = event.kind.as_ref().map_or("unknown", kind_name);
    format!("tenant.{}.{}", event.tenant_id, kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::v1::KeyHealth;
    use crate::proto::v1::event::Kind;

    #[test]
    fn routing_key_names_tenant_and_kind() {
        let event = Event {
            sequence: 1,
            time_unix_ms: 0,
            tenant_id: "acme".into(),
            kind: Some(Kind::KeyHealth(KeyHealth::default())),
            ..Event::default()
        };
        assert_eq!(routing_key(&event), "tenant.acme.key_health");
    }
}
