//! The requesting side: a worker that does not own a tenant's shard sends
//! the admin request to the owner's lease queue and relays the answer,
//! once it has checked the owner signed it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response, header};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection, Consumer};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::key::ForwardKey;
use super::message::{ForwardedRequest, MAX_SHORT_STRING, Refusal, unpack_answer};
use crate::broker::session::Sessions;
use crate::broker::{self, Broker, lease_queue};
use crate::clock::{Clock, SystemClock};
use crate::placement::ShardId;

/// Largest request body or answer relayed (a record is at most 1 MiB).
const MAX_BODY_BYTES: usize = 4 << 20;

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// No worker holds the shard's lease (the broker returned the request).
    #[error("no worker owns shard {0} right now")]
    NoOwner(ShardId),
    /// The owner did not answer before the deadline.
    #[error("the owner of shard {shard} did not answer within {deadline:?}")]
    Timeout {
        /// The shard.
        shard: ShardId,
        /// How long it was given.
        deadline: Duration,
    },
    /// The broker failed.
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    /// The connection went while the request waited for its answer.
    #[error("the connection to the broker closed while waiting for the answer")]
    Disconnected,
    /// The request cannot be carried: its body could not be read, or a
    /// header does not fit AMQP (a `Content-Type` over 255 bytes).
    #[error("{0}")]
    Unforwardable(String),
    /// The answer was not signed by a worker of the deployment.
    #[error("{}", .0.message)]
    ForgedAnswer(Refusal),
}

/// One connection, opened on first use and again after a failure, with one
/// channel that publishes requests and consumes their answers from an
/// exclusive reply queue of its own (so only this connection reads them,
/// and the owner can check the reply queue a request was signed for).
pub struct Forwarder {
    key: ForwardKey,
    deadline: Duration,
    session: tokio::sync::Mutex<Current>,
}

/// The live session, if any, and where the next one connects.
struct Current {
    sessions: Sessions,
    live: Option<Arc<Session>>,
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Delivery>>>>;

struct Session {
    connection: Connection,
    channel: Channel,
    reply_queue: String,
    pending: Pending,
    broken: CancellationToken,
}

impl Forwarder {
    /// A forwarder on `broker` (whichever of its nodes answers), signing
    /// with `key`, waiting `deadline` for each answer.
    pub fn new(broker: &Broker, key: ForwardKey, deadline: Duration) -> Self {
        let current = Current { sessions: Sessions::new(broker, "forwarder"), live: None };
        Self { key, deadline, session: tokio::sync::Mutex::new(current) }
    }

    /// Sends `request` to shard `shard`'s owner and returns its answer.
    pub async fn forward(&self, shard: ShardId, request: Request<Body>) -> Result<Response<Body>, ForwardError> {
        let (parts, body) = request.into_parts();
        let content_type = match parts.headers.get(header::CONTENT_TYPE) {
            None => None,
            Some(value) => match value.to_str() {
                Ok(text) if text.len() <= MAX_SHORT_STRING => Some(text.to_owned()),
                _ => {
                    return Err(ForwardError::Unforwardable(format!(
                        "the Content-Type header must be ASCII and at most {MAX_SHORT_STRING} bytes"
                    )));
                }
            },
        };
        let body = axum::body::to_bytes(body, MAX_BODY_BYTES)
            .await
            .map_err(|e| ForwardError::Unforwardable(format!("reading the request body: {e}")))?;
        let session = self.session().await?;
        let sent_at_ms = now_ms();
        let request = ForwardedRequest {
            shard,
            method: parts.method.as_str().to_owned(),
            uri: parts.uri.path_and_query().map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned()),
            content_type,
            sent_at_ms,
            expires_at_ms: sent_at_ms + self.deadline.as_millis() as i64,
            id: request_id(),
            reply_to: session.reply_queue.clone(),
            body,
        };
        let (answer, answered) = oneshot::channel();
        session.pending.lock().expect("pending lock").insert(request.id.clone(), answer);
        let result = self.exchange(&session, &request, answered).await;
        session.pending.lock().expect("pending lock").remove(&request.id);
        if matches!(result, Err(ForwardError::Broker(_) | ForwardError::Disconnected)) {
            self.session.lock().await.live.take();
        }
        result
    }

    async fn exchange(
        &self,
        session: &Session,
        request: &ForwardedRequest,
        answered: oneshot::Receiver<Delivery>,
    ) -> Result<Response<Body>, ForwardError> {
        let options = BasicPublishOptions { mandatory: true, ..Default::default() };
        let queue = lease_queue(request.shard.0);
        let properties = request.properties(&self.key);
        let confirm = session
            .channel
            .basic_publish("".into(), queue.as_str().into(), options, &request.body, properties)
            .await?
            .await?;
        if confirm.take_message().is_some() {
            return Err(ForwardError::NoOwner(request.shard));
        }
        let delivery = tokio::select! {
            answer = tokio::time::timeout(self.deadline, answered) => match answer {
                Ok(Ok(delivery)) => delivery,
                // The reply consumer ended: the connection is gone.
                Ok(Err(_)) => return Err(ForwardError::Disconnected),
                Err(_) => return Err(ForwardError::Timeout { shard: request.shard, deadline: self.deadline }),
            },
            () = session.broken.cancelled() => return Err(ForwardError::Disconnected),
        };
        let answer = unpack_answer(&request.id, &delivery.properties, &delivery.data, &self.key)
            .map_err(ForwardError::ForgedAnswer)?;
        Ok(answer.into_response())
    }

    async fn session(&self) -> Result<Arc<Session>, ForwardError> {
        let mut current = self.session.lock().await;
        if let Some(session) = current.live.as_ref().filter(|s| !s.broken.is_cancelled()) {
            return Ok(session.clone());
        }
        let connection = current.sessions.connect().await?;
        let channel = connection.create_channel().await?;
        let exclusive = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
        let reply_queue = channel.queue_declare("".into(), exclusive, FieldTable::default()).await?.name().to_string();
        let options = BasicConsumeOptions { no_ack: true, exclusive: true, ..Default::default() };
        let replies =
            channel.basic_consume(reply_queue.as_str().into(), "".into(), options, FieldTable::default()).await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        let session = Arc::new(Session {
            connection,
            channel,
            reply_queue,
            pending: Arc::default(),
            broken: CancellationToken::new(),
        });
        tokio::spawn(dispatch_replies(replies, session.pending.clone(), session.broken.clone()));
        current.live = Some(session.clone());
        Ok(session)
    }

    /// Closes the connection.
    pub async fn close(&self) {
        if let Some(session) = self.session.lock().await.live.take() {
            broker::close(&session.connection, "keyseal forwarder stopping").await;
        }
    }
}

async fn dispatch_replies(mut replies: Consumer, pending: Pending, broken: CancellationToken) {
    while let Some(Ok(delivery)) = replies.next().await {
        let Some(id) = delivery.properties.correlation_id().as_ref().map(ShortString::to_string) else { continue };
        if let Some(answer) = pending.lock().expect("pending lock").remove(&id) {
            let _ = answer.send(delivery);
        }
    }
    broken.cancel();
    pending.lock().expect("pending lock").clear();
}

/// A random request id (the correlation id).
fn request_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS random source");
    hex::encode(bytes)
}

/// The forwarding worker's wall clock: requests carry real times, since
/// they are checked by other processes.
pub(super) fn now_ms() -> i64 {
    SystemClock.now_ms()
}
