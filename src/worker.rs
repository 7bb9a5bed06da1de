//! Wiring of a worker process: the admin API, the intake forwarder and the
//! [`Balancer`], which takes the worker's shards (leases first, then the
//! store) and runs each as a [`RunningShard`]. Everything stops on one
//! cancellation token; nothing here is process-global but the metrics
//! recorder, so a process (or a test) can run several workers.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::admin::{self, state::AdminState};
use crate::broker::Broker;
use crate::clock::SharedClock;
use crate::config::{Secret, Settings};
use crate::fleet::balance::Balancer;
use crate::fleet::forward::{ForwardKey, Forwarder, InboxContext};
use crate::fleet::intake::{self, Intake, PlacementBudget};
use crate::fleet::leases::LeaseError;
use crate::fleet::owned::OwnedShards;
use crate::fleet::running::RunningShard;
use crate::placement::ShardId;
use crate::readiness::Readiness;
use crate::shard::deployment_root_keys;
use crate::telemetry::metrics as m;

/// A running worker.
pub struct Worker {
    /// The shards it owns right now.
    pub owned: Arc<OwnedShards>,
    /// Where the admin API listens.
    pub http_addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

impl Worker {
    /// Starts the worker. When the broker answers, the first balance round
    /// runs before this returns, so a lone worker owns every shard (or its
    /// `--own-shards`) on return, and a shard it cannot open fails the
    /// start; otherwise the balancer keeps trying.
    pub async fn start(settings: Settings, clock: SharedClock) -> anyhow::Result<Self> {
        // Install the recorder first so every counter counts from the start.
        m::handle();
        m::set_ingest_paused(false);
        m::shards_owned(0);
        m::shard_counters();
        if let Some(pinned) = &settings.own_shards {
            if let Some(outside) = pinned.0.iter().find(|&&i| i >= settings.shards) {
                anyhow::bail!(
                    "--own-shards names shard {outside}, but the deployment has {} (0 to {})",
                    settings.shards,
                    settings.shards - 1
                );
            }
        }
        let settings = Arc::new(settings);
        let listener = admin::bind(&settings).await?;
        let http_addr = listener.local_addr()?;
        let owned = Arc::new(OwnedShards::new(settings.shards, worker_name(http_addr)));
        let broker =
            Broker { quorum_size: settings.quorum_size, ..Broker::new(settings.amqp_url.clone(), owned.worker()) };
        info!(
            %http_addr,
            data_dir = %settings.data_dir.display(),
            shards = settings.shards,
            broker = %broker.nodes,
            first_node = %broker.nodes.shown(broker.first),
            "keyseal worker starting"
        );

        let (leased, intake_ready) = (Readiness::default(), Readiness::default());
        let (data_dir, shards) = (settings.data_dir.clone(), settings.shards);
        let roots = tokio::task::spawn_blocking(move || deployment_root_keys(&data_dir, shards))
            .await
            .expect("loading the root keys does not panic")
            .context("the managed root key")?;
        let key = ForwardKey::derive(&roots, settings.admin_token.as_ref().map(Secret::expose))?;
        drop(roots);
        let forwarder = Arc::new(Forwarder::new(&broker, key.clone(), settings.forward_timeout));
        let state = AdminState {
            owned: owned.clone(),
            settings: settings.clone(),
            clock: clock.clone(),
            leased: leased.clone(),
            intake: intake_ready.clone(),
            forwarder: forwarder.clone(),
            broker: broker.clone(),
        };
        let router = admin::router(state.clone());
        let inbox = InboxContext { router: router.clone(), key, replays: Arc::default() };
        let vault = settings.vault();
        let balancer =
            Arc::new(Balancer::new(settings.clone(), &broker, vault, clock.clone(), owned.clone(), leased, inbox));
        let leases = match balancer.connect().await {
            Ok(leases) => match balancer.round(&leases).await {
                // A shard that cannot be opened at start (its root key gone,
                // its store damaged) stops the start with the reason; later
                // rounds only log it.
                Ok(refused) if !refused.is_empty() => {
                    balancer.give_up(leases).await;
                    let (id, e) = refused.into_iter().next().expect("not empty");
                    return Err(anyhow::Error::new(e).context(format!("shard {id} cannot be opened")));
                }
                Ok(_) => Some(leases),
                Err(e) => {
                    warn!(error = %e, "taking this worker's first shards failed; the next round tries again");
                    Some(leases)
                }
            },
            Err(e @ LeaseError::ShardCount(_)) => return Err(e.into()),
            Err(e) => {
                warn!(error = %e, "the broker does not answer yet; shards are taken once it does");
                None
            }
        };
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let (b, stop) = (balancer.clone(), shutdown.clone());
        tasks.spawn(async move { b.run(leases, stop).await });
        let intake = Intake {
            shards: settings.shards,
            prefetch: intake::prefetch_for(settings.prefetch_bytes),
            placements: PlacementBudget::new(settings.new_tenants_per_minute, clock.clone()),
        };
        let (r, stop) = (intake_ready, shutdown.clone());
        tasks.spawn(async move { intake::run(&broker, intake, &r, stop).await });
        let stop = shutdown.clone();
        tasks.spawn(async move {
            if let Err(e) = admin::serve(listener, router, stop).await {
                error!(error = %e, "admin API stopped");
            }
            forwarder.close().await;
        });
        Ok(Self { owned, http_addr, shutdown, tasks })
    }

    /// Owned shard `id`, if this worker owns it.
    pub fn shard(&self, id: ShardId) -> Option<Arc<RunningShard>> {
        self.owned.get(id)
    }

    /// The one shard of a one-shard deployment (tests and the demo).
    /// Panics unless the worker owns exactly one shard.
    pub fn only(&self) -> Arc<RunningShard> {
        let all = self.owned.all();
        assert_eq!(all.len(), 1, "the worker owns {} shards, not one", all.len());
        all[0].1.running.clone()
    }

    /// Runs until Ctrl-C or SIGTERM, then stops cleanly.
    pub async fn run_until_signal(self) -> anyhow::Result<()> {
        shutdown_signal().await;
        info!("shutting down");
        self.stop().await;
        Ok(())
    }

    /// Hands every shard over (each acks its last batch and closes its
    /// store; unacked messages return to their queue), gives the leases
    /// back and stops every task.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// How this worker is shown as a shard's owner: `host:pid/http-addr`.
fn worker_name(http_addr: SocketAddr) -> String {
    let mut host = [0u8; 256];
    // SAFETY: gethostname(2) writes at most `len` bytes into the buffer.
    let named = unsafe { libc::gethostname(host.as_mut_ptr().cast(), host.len()) } == 0;
    let end = host.iter().position(|&b| b == 0).unwrap_or(host.len());
    let host = if named { String::from_utf8_lossy(&host[..end]).into_owned() } else { "unknown-host".to_owned() };
    format!("{host}:{}/{http_addr}", std::process::id())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
