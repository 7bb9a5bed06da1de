//! Any worker answers for any tenant: an admin request for a shard this
//! worker does not own is sent over AMQP to the owner's lease queue
//! (default exchange, `mandatory`, an exclusive reply queue of the
//! sender's, expiring at its deadline) by the [`Forwarder`], and the
//! owner's answer is relayed; the owner runs it through its own admin
//! router ([`serve_inbox`]).
//!
//! The broker is not an admin channel: anyone allowed to publish to the
//! default exchange could put a message in a lease queue. So every
//! forwarded request is authenticated, with or without an admin token,
//! under a [`ForwardKey`] only the deployment's workers can derive; it
//! binds the request to its shard, its reply queue and its deadline; an
//! owner refuses a request it has run before ([`replay`]); and the
//! sender accepts only answers signed with the same key, so a squatter on
//! a lease queue cannot answer for a shard. Auth of the HTTP request
//! itself is checked where it arrives; the bearer token never crosses the
//! broker.

mod inbox;
mod key;
pub mod message;
pub mod replay;
mod requester;

pub use inbox::{InboxContext, MAX_CONCURRENT_REQUESTS, PREFETCH, serve_inbox};
pub use key::ForwardKey;
pub use requester::{ForwardError, Forwarder};

/// Marks a request that came through a lease queue (a request extension,
/// which no HTTP client can set): it is not forwarded again, and its
/// signature stood in for the bearer token.
#[derive(Debug, Clone, Copy)]
pub struct Forwarded;
