//! How the operator process runs beside its peers: leader election,
//! sharding, and shutdown on a signal.

use std::time::Duration;

use clap::Args;
use tokio::sync::watch;

use crate::leader::LeaseConfig;
use crate::shard::Shard;

/// Leader election and sharding.
#[derive(Args, Clone, Debug)]
pub struct RuntimeArgs {
    /// Reconcile only while holding a coordination.k8s.io/v1 Lease, so that
    /// several replicas can run and one of them works. Standbys serve
    /// /healthz, /readyz and /metrics and reconcile nothing.
    #[arg(long, env = "TENANTRY_LEADER_ELECT", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub leader_elect: bool,

    /// Namespace of the Lease. Default: POD_NAMESPACE, else `default`.
    #[arg(long, env = "TENANTRY_LEADER_ELECTION_NAMESPACE")]
    pub leader_election_namespace: Option<String>,

    /// Name of the Lease. Operators that split Tenants by --shard-index or
    /// --tenant-selector need one Lease per part.
    #[arg(
        long,
        env = "TENANTRY_LEADER_ELECTION_LEASE_NAME",
        default_value = "tenantry"
    )]
    pub leader_election_lease_name: String,

    /// How long a Lease that is not renewed keeps standbys waiting. With the
    /// defaults a standby takes over at most ~12s after the leader dies.
    #[arg(long, env = "TENANTRY_LEADER_ELECTION_LEASE_DURATION", default_value = "8s", value_parser = humantime::parse_duration)]
    pub leader_election_lease_duration: Duration,

    /// How long the leader keeps reconciling without managing to renew the
    /// Lease; then it exits (shorter than the lease duration, so it has
    /// stopped before anyone else can take over).
    #[arg(long, env = "TENANTRY_LEADER_ELECTION_RENEW_DEADLINE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub leader_election_renew_deadline: Duration,

    /// How often the leader renews and a standby tries to take the Lease.
    #[arg(long, env = "TENANTRY_LEADER_ELECTION_RETRY_PERIOD", default_value = "2s", value_parser = humantime::parse_duration)]
    pub leader_election_retry_period: Duration,

    /// Number of shards the Tenants are split into by name (see --shard-index).
    #[arg(long, env = "TENANTRY_SHARD_COUNT", default_value_t = 1)]
    pub shard_count: u32,

    /// The shard this process manages: Tenants with
    /// `fnv1a64(name) % shard-count == shard-index` (and matching
    /// --tenant-selector).
    #[arg(long, env = "TENANTRY_SHARD_INDEX", default_value_t = 0)]
    pub shard_index: u32,
}

impl RuntimeArgs {
    pub fn shard(&self) -> Result<Shard, String> {
        Shard::new(self.shard_index, self.shard_count)
    }

    /// The Lease to hold, when leader election is on.
    pub fn lease(&self) -> Result<Option<LeaseConfig>, String> {
        if !self.leader_elect {
            return Ok(None);
        }
        let namespace = self
            .leader_election_namespace
            .clone()
            .filter(|n| !n.is_empty())
            .or_else(|| {
                std::env::var("POD_NAMESPACE")
                    .ok()
                    .filter(|n| !n.is_empty())
            })
            .unwrap_or_else(|| "default".to_string());
        let config = LeaseConfig {
            namespace,
            name: self.leader_election_lease_name.clone(),
            identity: crate::leader::default_identity(),
            lease_duration: self.leader_election_lease_duration,
            renew_deadline: self.leader_election_renew_deadline,
            retry_period: self.leader_election_retry_period,
        };
        config.validate()?;
        Ok(Some(config))
    }
}

/// Becomes true on the first SIGTERM or SIGINT. A second one ends the
/// process at once (exit code 1), without waiting for reconciles to finish.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// Installs the signal handlers.
    pub fn on_signals() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            let mut first = true;
            loop {
                let name = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                };
                if first {
                    tracing::info!(
                        signal = name,
                        "shutting down: no new reconciles; waiting for running ones to finish"
                    );
                    let _ = tx.send(true);
                    first = false;
                } else {
                    tracing::warn!(signal = name, "second signal: exiting at once");
                    std::process::exit(1);
                }
            }
        });
        Ok(Self(rx))
    }

    /// Resolves once shutdown was requested.
    pub async fn requested(&self) {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|s| *s).await;
    }
}
