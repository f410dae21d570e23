//! Leader election on a `coordination.k8s.io/v1` Lease.
//!
//! The algorithm is client-go's: every write is a `get` followed by a
//! `create` or an `update` that carries the resourceVersion it read, so of
//! two processes racing for the Lease exactly one write succeeds and the
//! other gets 409 Conflict and stays standby. Expiry is judged by the local
//! clock from when this process last saw the Lease change (not from the
//! `renewTime` written by another machine), so clock skew between nodes does
//! not matter.
//!
//! - A standby tries every `retry_period`; it takes the Lease when it is
//!   free (no holder, e.g. released on shutdown) or has not changed for
//!   `lease_duration`.
//! - The leader renews every `retry_period`. When it has not renewed for
//!   `renew_deadline` (shorter than `lease_duration`), or finds another
//!   holder, it has lost the Lease and must stop at once: [`Leadership::lost`]
//!   resolves, before any standby can have taken over.
//! - [`Leadership::release`] gives the Lease up (holder cleared) on a
//!   graceful shutdown, so a standby takes over at its next try.
//!
//! API use: `get`, `create` and `update` on `leases` in one namespace.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use tokio::sync::watch;

/// Where the Lease is and how it is held.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long a Lease that has not been renewed keeps standbys away.
    pub lease_duration: Duration,
    /// How long the leader may fail to renew before it gives up leading.
    pub renew_deadline: Duration,
    /// How often a standby tries to take the Lease and the leader renews it.
    pub retry_period: Duration,
}

impl LeaseConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.retry_period.is_zero() || self.renew_deadline <= self.retry_period {
            return Err("--leader-election-renew-deadline must be longer than --leader-election-retry-period".into());
        }
        if self.lease_duration <= self.renew_deadline {
            return Err("--leader-election-lease-duration must be longer than --leader-election-renew-deadline".into());
        }
        if self.lease_duration.as_secs() < 1 {
            return Err("--leader-election-lease-duration must be at least 1s".into());
        }
        Ok(())
    }
}

/// The identity of this process: `POD_NAME`, else the host name and pid.
pub fn default_identity() -> String {
    if let Ok(pod) = std::env::var("POD_NAME")
        && !pod.is_empty()
    {
        return pod;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".to_string());
    format!("{host}-{}", std::process::id())
}

/// What this process last saw of the Lease.
#[derive(Default)]
struct Observed {
    resource_version: Option<String>,
    /// When the Lease was last seen to change (local clock).
    at: Option<Instant>,
}

/// The outcome of one try.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    /// This process holds the Lease now.
    Held,
    /// Another process holds it (or won the race for it).
    Other(String),
}

pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    observed: Observed,
}

impl Elector {
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: Observed::default(),
        }
    }

    fn spec(&self, previous: Option<&LeaseSpec>, now: Timestamp) -> LeaseSpec {
        let ours = previous
            .and_then(|s| s.holder_identity.as_deref())
            .is_some_and(|h| h == self.config.identity);
        let transitions = previous.and_then(|s| s.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(self.config.lease_duration.as_secs().max(1) as i32),
            acquire_time: if ours {
                previous.and_then(|s| s.acquire_time.clone())
            } else {
                Some(MicroTime(now))
            },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(if ours || previous.is_none() {
                transitions
            } else {
                transitions + 1
            }),
            ..Default::default()
        }
    }

    /// One get followed, when the Lease is ours or free, by one create or
    /// update conditioned on what was read.
    async fn try_acquire_or_renew(&mut self) -> Result<Attempt, kube::Error> {
        let now = Timestamp::now();
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(None, now)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(&created);
                    Ok(Attempt::Held)
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Other(String::new())),
                Err(e) => Err(e),
            };
        };
        self.observe(&lease);
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        if !holder.is_empty() && holder != self.config.identity {
            let duration = spec
                .lease_duration_seconds
                .map(|s| Duration::from_secs(s.max(0) as u64))
                .unwrap_or(self.config.lease_duration);
            let unchanged_for = self.observed.at.map(|t| t.elapsed()).unwrap_or_default();
            if unchanged_for < duration {
                return Ok(Attempt::Other(holder));
            }
            tracing::info!(previous = %holder, "the leader's Lease expired; taking it over");
        }
        lease.spec = Some(self.spec(Some(&spec), now));
        // `replace` sends the resourceVersion just read: if anyone wrote the
        // Lease since, the API server answers 409 and nothing changes.
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(updated) => {
                self.observe(&updated);
                Ok(Attempt::Held)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Other(holder)),
            Err(e) => Err(e),
        }
    }

    fn observe(&mut self, lease: &Lease) {
        let rv = lease.resource_version();
        if rv != self.observed.resource_version {
            self.observed = Observed {
                resource_version: rv,
                at: Some(Instant::now()),
            };
        }
    }

    /// Gives the Lease up if this process still holds it: clears the holder
    /// with an update conditioned on the resourceVersion read.
    async fn release(&mut self) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            return Ok(false);
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(false);
        };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(false);
        }
        spec.holder_identity = None;
        spec.acquire_time = None;
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        spec.lease_duration_seconds = Some(1);
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// A held Lease, renewed in the background.
pub struct Leadership {
    lost: watch::Receiver<bool>,
    stop: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<Elector>,
}

/// Waits (trying every retry period) until this process holds the Lease.
/// Errors of the API server are logged and retried.
pub async fn acquire(client: Client, config: LeaseConfig) -> Leadership {
    let mut elector = Elector::new(client, config);
    let mut last_holder = None;
    loop {
        match tokio::time::timeout(
            elector.config.renew_deadline,
            elector.try_acquire_or_renew(),
        )
        .await
        {
            Ok(Ok(Attempt::Held)) => break,
            Ok(Ok(Attempt::Other(holder))) => {
                if last_holder.as_ref() != Some(&holder) {
                    tracing::info!(leader = %holder, lease = %elector.config.name, "standing by: another process leads");
                    last_holder = Some(holder);
                }
            }
            Ok(Err(error)) => tracing::warn!(%error, "cannot read or take the leader Lease"),
            Err(_) => tracing::warn!("the leader Lease request timed out"),
        }
        tokio::time::sleep(elector.config.retry_period).await;
    }
    tracing::info!(
        identity = %elector.config.identity,
        lease = %format!("{}/{}", elector.config.namespace, elector.config.name),
        "became the leader"
    );
    let (tx, lost) = watch::channel(false);
    let stop = Arc::new(tokio::sync::Notify::new());
    let task = tokio::spawn(renew(elector, tx, stop.clone()));
    Leadership { lost, stop, task }
}

async fn renew(
    mut elector: Elector,
    lost: watch::Sender<bool>,
    stop: Arc<tokio::sync::Notify>,
) -> Elector {
    let config = elector.config.clone();
    let mut renewed = Instant::now();
    loop {
        tokio::select! {
            () = stop.notified() => return elector,
            () = tokio::time::sleep(config.retry_period) => {}
        }
        let left = config.renew_deadline.saturating_sub(renewed.elapsed());
        let sent = Instant::now();
        match tokio::time::timeout(left, elector.try_acquire_or_renew()).await {
            Ok(Ok(Attempt::Held)) => {
                renewed = sent;
                continue;
            }
            Ok(Ok(Attempt::Other(holder))) => {
                tracing::error!(leader = %holder, "lost the leader Lease to another process");
            }
            Ok(Err(error)) if renewed.elapsed() < config.renew_deadline => {
                tracing::warn!(%error, "cannot renew the leader Lease; trying again");
                continue;
            }
            Ok(Err(error)) => {
                tracing::error!(%error, deadline = ?config.renew_deadline, "could not renew the leader Lease in time");
            }
            Err(_) => {
                tracing::error!(deadline = ?config.renew_deadline, "could not renew the leader Lease in time");
            }
        }
        let _ = lost.send(true);
        return elector;
    }
}

impl Leadership {
    /// Resolves when the Lease is lost: the caller must stop leading at once.
    pub async fn lost(&self) {
        let mut lost = self.lost.clone();
        let _ = lost.wait_for(|l| *l).await;
    }

    /// Stops renewing and gives the Lease up, so a standby takes over at its
    /// next try instead of after the Lease expires.
    pub async fn release(self) {
        self.stop.notify_one();
        let Ok(mut elector) = self.task.await else {
            return;
        };
        if *self.lost.borrow() {
            return;
        }
        match tokio::time::timeout(elector.config.renew_deadline, elector.release()).await {
            Ok(Ok(true)) => tracing::info!("released the leader Lease"),
            Ok(Ok(false)) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "cannot release the leader Lease; it will expire")
            }
            Err(_) => tracing::warn!("releasing the leader Lease timed out; it will expire"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LeaseConfig {
        LeaseConfig {
            namespace: "ns".into(),
            name: "tenantry".into(),
            identity: "a".into(),
            lease_duration: Duration::from_secs(8),
            renew_deadline: Duration::from_secs(5),
            retry_period: Duration::from_secs(2),
        }
    }

    #[test]
    fn the_defaults_are_consistent() {
        assert_eq!(config().validate(), Ok(()));
        let mut c = config();
        c.renew_deadline = c.lease_duration;
        assert!(c.validate().is_err());
        let mut c = config();
        c.retry_period = c.renew_deadline;
        assert!(c.validate().is_err());
    }
}
