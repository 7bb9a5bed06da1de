//! The demo's broker: the one `--amqp-url` names, else the local one, else
//! a private RabbitMQ node the demo starts for itself (its own node name,
//! port and data dir) and stops when the story ends. A newcomer with
//! `rabbitmq-server` installed runs `keyseal demo` and nothing before it;
//! one without gets one line saying what to install, at once.

use std::time::Duration;

use keyseal::broker::{self, DEFAULT_AMQP_URL, INGEST_QUEUE, hide_password};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use private_broker::PrivateNode;

use super::DemoError;
use super::story::Narrator;

/// How long the broker may take to accept a connection.
const BROKER_TIMEOUT: Duration = Duration::from_secs(5);
/// Where the default URL points.
const DEFAULT_HOST: (&str, u16) = ("127.0.0.1", 5672);

/// The broker the demo uses, and the private node behind it if the demo
/// started one.
pub(super) struct DemoBroker {
    url: String,
    private: Option<(PrivateNode, tempfile::TempDir)>,
}

impl DemoBroker {
    /// The broker at `given` (refused when unreachable or in use), else the
    /// local one, else a private node when `rabbitmq-server` is installed.
    pub(super) async fn find(given: Option<&str>, narrator: &Narrator) -> Result<Self, DemoError> {
        if let Some(url) = given {
            check_broker(url).await?;
            return Ok(Self { url: url.to_owned(), private: None });
        }
        let (host, port) = DEFAULT_HOST;
        let answers = tokio::task::spawn_blocking(move || private_broker::answers(host, port, BROKER_TIMEOUT))
            .await
            .unwrap_or(false);
        if answers {
            check_broker(DEFAULT_AMQP_URL).await?;
            return Ok(Self { url: DEFAULT_AMQP_URL.to_owned(), private: None });
        }
        if !private_broker::installed() {
            return Err(DemoError::NoBroker { url: hide_password(DEFAULT_AMQP_URL) });
        }
        narrator.say(format!("no RabbitMQ answers at {host}:{port}: starting a private node (about 10 s)"));
        let (node, dir) = tokio::task::spawn_blocking(start_private).await??;
        narrator.say(format!(
            "private RabbitMQ node {} on 127.0.0.1:{} (data in {}; stopped when the demo ends)",
            node.node_name(),
            node.amqp_port(),
            dir.path().display()
        ));
        let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", node.amqp_port());
        Ok(Self { url, private: Some((node, dir)) })
    }

    /// The AMQP URL of the broker.
    pub(super) fn url(&self) -> &str {
        &self.url
    }

    /// Stops the private node, if the demo started one, and removes its data.
    pub(super) async fn close(self, narrator: &Narrator) -> Result<(), DemoError> {
        let Some((node, dir)) = self.private else { return Ok(()) };
        let name = node.node_name().to_owned();
        tokio::task::spawn_blocking(move || node.stop()).await??;
        drop(dir);
        narrator.say(format!("private RabbitMQ node {name} stopped"));
        Ok(())
    }
}

/// Starts a private node on a free port, in a temporary directory of its own.
fn start_private() -> Result<(PrivateNode, tempfile::TempDir), DemoError> {
    let dir = tempfile::Builder::new().prefix("keyseal-demo-rabbitmq-").tempdir().map_err(DemoError::TempDir)?;
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map_err(DemoError::TempDir)?
        .port();
    let name = format!("keyseal-demo-{}@localhost", std::process::id());
    let node = PrivateNode::start(dir.path(), &name, port)?;
    Ok((node, dir))
}

/// Fails with the way to start RabbitMQ when none answers at `url`, and
/// refuses a vhost where another keyseal consumes or has records waiting.
async fn check_broker(url: &str) -> Result<(), DemoError> {
    let shown_url = hide_password(url);
    let unreachable = |reason: String| DemoError::BrokerUnreachable { url: shown_url.clone(), reason };
    let connection = match tokio::time::timeout(BROKER_TIMEOUT, broker::connect(url, "demo")).await {
        Err(_) => return Err(unreachable(format!("no answer within {BROKER_TIMEOUT:?}"))),
        Ok(Err(e)) => return Err(unreachable(e.to_string())),
        Ok(Ok(connection)) => connection,
    };
    let load = ingest_queue_load(&connection).await;
    broker::close(&connection, "demo broker check done").await;
    match load {
        Some((messages, consumers)) if messages > 0 || consumers > 0 => {
            Err(DemoError::BrokerInUse { url: shown_url, messages, consumers })
        }
        _ => Ok(()),
    }
}

/// (waiting messages, consumers) of the ingest queue, declaring the
/// topology first (idempotent, as every role does) so that the passive
/// declare finds the queue; `None` when the broker refuses either.
async fn ingest_queue_load(connection: &lapin::Connection) -> Option<(u32, u32)> {
    let channel = connection.create_channel().await.ok()?;
    broker::declare_topology(connection, None).await.ok()?;
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    let queue = channel.queue_declare(INGEST_QUEUE.into(), passive, FieldTable::default()).await.ok()?;
    broker::close_channel(&channel, "demo broker check done").await;
    Some((queue.message_count(), queue.consumer_count()))
}
