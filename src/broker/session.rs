//! The one way a long-lived broker task keeps going: connect to a node of
//! the cluster, run the task's session on that connection until it ends,
//! close the connection, and on a failure go on to the next node after a
//! backoff, until shutdown. The outbox relay, the intake, each shard's
//! consumer and the lease connection all recover through it: each session
//! starts from scratch on whatever node answers, with the topology declared
//! there, and resumes where its own state says (the store's watermark, the queue's
//! unacked deliveries), which lapin's auto-recovery cannot do (it
//! reconnects to the same URI and replays consumes as first issued).

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

use lapin::Connection;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{Backoff, Broker, close, connect_any, declare_topology};

/// A session that lasted this long was a working one: the next failure
/// retries at once rather than after a long backoff.
const HEALTHY_SESSION: Duration = Duration::from_secs(10);

/// The sessions of one task on one broker.
pub struct Sessions {
    broker: Broker,
    role: &'static str,
    heartbeat: Option<u16>,
    next: usize,
    /// The node of the latest connection.
    node: Option<usize>,
    backoff: Backoff,
}

impl Sessions {
    /// Sessions of the task named `role` (it names its connections), from
    /// the broker's first node on.
    pub fn new(broker: &Broker, role: &'static str) -> Self {
        Self {
            broker: broker.clone(),
            role,
            heartbeat: None,
            next: broker.first,
            node: None,
            backoff: Backoff::default(),
        }
    }

    /// The same, with AMQP heartbeats every `heartbeat` (the lease
    /// connection: a lost host loses its leases after two missed ones).
    pub fn with_heartbeat(self, heartbeat: Duration) -> Self {
        Self { heartbeat: Some(u16::try_from(heartbeat.as_secs()).unwrap_or(u16::MAX)), ..self }
    }

    /// Connects to the next node that answers and declares the topology
    /// there (every session relies on it, and a node that was down may not
    /// have it yet); the node after it is tried first next time.
    pub async fn connect(&mut self) -> lapin::Result<Connection> {
        match connect_any(&self.broker, self.next, self.role, self.heartbeat).await {
            Ok((connection, node)) => {
                (self.next, self.node) = (node + 1, Some(node));
                if let Err(e) = declare_topology(&connection, self.broker.quorum_size).await {
                    close(&connection, "topology refused").await;
                    return Err(e);
                }
                Ok(connection)
            }
            Err(e) => {
                self.next += 1;
                Err(e)
            }
        }
    }

    /// The node (`host:port`) of the latest connection.
    pub fn node(&self) -> Option<String> {
        self.node.map(|i| self.broker.nodes.shown(i))
    }

    /// Waits out the backoff before the next connection; `false` if
    /// `shutdown` came first.
    pub async fn pause(&mut self, shutdown: &CancellationToken) -> bool {
        tokio::select! {
            () = shutdown.cancelled() => false,
            () = tokio::time::sleep(self.backoff.next_delay()) => true,
        }
    }

    /// Runs `session` on a connection to a node, again and again on the
    /// next node after each failure (told to [`Session::ended`] first,
    /// which may wait: the consumer waits for its store), until a session
    /// returns `Ok` (the task is done) or `shutdown`.
    pub async fn run<S: Session>(mut self, shutdown: &CancellationToken, mut session: S) {
        loop {
            match self.connect().await {
                Ok(connection) => {
                    let started = Instant::now();
                    let result = session.run(&connection).await;
                    close(&connection, "keyseal session ended").await;
                    match result {
                        Ok(()) => return,
                        Err(e) => {
                            if started.elapsed() >= HEALTHY_SESSION {
                                self.backoff.reset();
                            }
                            warn!(role = self.role, error = %e, "broker session ended; reconnecting");
                            session.ended(e).await;
                        }
                    }
                }
                Err(e) => warn!(role = self.role, error = %e, "no broker node answers; retrying"),
            }
            if !self.pause(shutdown).await {
                return;
            }
        }
    }
}

/// A long-lived task's work on one broker connection.
pub trait Session: Send {
    /// Why a session ended early.
    type Error: Display + Send;

    /// Works on `connection` until the task is done (`Ok`) or fails.
    fn run(&mut self, connection: &Connection) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Told why a session ended (after it is logged) before the next one
    /// starts; nothing more by default.
    fn ended(&mut self, error: Self::Error) -> impl Future<Output = ()> + Send {
        drop(error);
        std::future::ready(())
    }
}
