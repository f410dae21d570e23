//! The provisioning engine: a tenant's resources, run all or nothing.
//!
//! Every per-tenant resource implements one contract, [`Resource`]: an
//! idempotent `ensure` (create, or adopt what an earlier attempt made),
//! `remove`, `release`, `revoke_access` and `restore_access`, what it records
//! in `status.resources`, and the probe of its isolation layer. The engine
//! runs every lifecycle path over that list, in one order, reversed for
//! teardown: provisioning (with the tenant's access granted or revoked),
//! rollback, the `Retain` release, the `Delete` teardown, and revocation. The engine records its progress in
//! a [`ProvisioningJournal`] before and after every step, through a
//! [`JournalStore`], so that a process killed at any instant resumes (or keeps
//! rolling back) from the journal when it restarts. Transient errors are
//! retried inside the step with capped, jittered backoff; a permanent error or
//! exhausted retries removes what was made, in reverse.
//!
//! The engine knows no backend: resources and the journal store are
//! supplied by the caller. (A resource is called a step where the journal
//! records progress through the list.)

mod retry;

pub use retry::RetryPolicy;

use std::fmt;

use async_trait::async_trait;

use crate::api::{
    JournalOperation, Layer, LayerReport, ProvisioningJournal, Reason, StepFailure,
    TenantResources, Timestamp,
};

/// Why a step failed, and whether trying again may help.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct StepError {
    /// Worth retrying (throttling, 5xx, timeouts, refused connections).
    pub transient: bool,
    /// The cause for conditions and events, e.g. [`Reason::Conflict`].
    pub reason: Reason,
    /// A fixed label for metrics (never built from object names).
    pub category: &'static str,
    /// What happened, for people. Never holds a secret.
    pub message: String,
}

impl StepError {
    pub fn transient(category: &'static str, message: impl Into<String>) -> Self {
        Self {
            transient: true,
            reason: Reason::BackendUnavailable,
            category,
            message: message.into(),
        }
    }

    pub fn permanent(reason: Reason, category: &'static str, message: impl Into<String>) -> Self {
        Self {
            transient: false,
            reason,
            category,
            message: message.into(),
        }
    }

    /// A resource with the tenant's name exists and is not the tenant's.
    pub fn conflict(category: &'static str, message: impl Into<String>) -> Self {
        Self::permanent(Reason::Conflict, category, message)
    }
}

/// Facts about the current attempt that a resource needs to decide safely.
#[derive(Debug, Clone, Copy, Default)]
pub struct Attempt {
    /// The journal shows this step was started and never recorded as finished:
    /// a previous process may have created the resource and died before it
    /// could tag or record it.
    pub interrupted: bool,
    /// The access the tenant is to have at the end of this run. A resource
    /// that grants access of its own makes it so as it creates or repairs
    /// (so a suspended tenant never has a moment of access); the engine then
    /// runs `revoke_access` or `restore_access` as well.
    pub access: Access,
}

/// Whether the tenant may use its resources (`spec.suspended` says no).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Access {
    #[default]
    Granted,
    Revoked,
}

/// What kind of removal a call is part of. Both facts widen what a removal
/// may take as the tenant's: an untagged resource of the tenant's name may
/// be one a killed process made (`interrupted`) or, for a search that cannot
/// take what is not the tenant's (a KMS key found by the tenant's uid tag),
/// the one whose failure started this rollback (`failed`): an untagged
/// resource of the tenant's name may still be a squatter's, whose conflict
/// was the failure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removal {
    /// A killed process left this step's ensure unfinished.
    pub interrupted: bool,
    /// This step's failure started the rollback.
    pub failed: bool,
}

/// How an ensure found its resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    /// The tenant's own, made now or earlier.
    Owned,
    /// Taken over from a `Retain` deletion that released it: it may hold a
    /// returning customer's data, so a rollback of this onboarding must
    /// release it again, never destroy it.
    AdoptedRelease,
}

/// The contract every per-tenant resource implements: one shape for a KMS
/// key, a bucket or a database role, the way Crossplane's ExternalClient
/// gives every managed resource Observe/Create/Update/Delete. Every verb is
/// idempotent and touches only what the tenant owns.
#[async_trait]
pub trait Resource<C: Send>: Send + Sync {
    /// Stable name, recorded in the journal.
    fn name(&self) -> &'static str;
    /// Make the resource exist as desired, or adopt it.
    async fn ensure(&self, ctx: &mut C, attempt: Attempt) -> Result<Ensured, StepError>;
    /// Make the resource not exist, if it is the tenant's.
    async fn remove(&self, ctx: &mut C, removal: Removal) -> Result<(), StepError>;
    /// Let go of the resource without destroying it, marked for a Tenant of
    /// the same name to adopt (a `Retain` deletion, or a rollback of a step
    /// that adopted a released resource).
    async fn release(&self, ctx: &mut C, removal: Removal) -> Result<(), StepError>;
    /// Take the tenant's access away and keep the resource (suspension, the
    /// start of a `Delete` grace period, failing closed). Most resources
    /// grant no access of their own, so by default there is nothing to take.
    async fn revoke_access(&self, _ctx: &mut C) -> Result<(), StepError> {
        Ok(())
    }
    /// Give back what `revoke_access` took (a resumed tenant).
    async fn restore_access(&self, _ctx: &mut C) -> Result<(), StepError> {
        Ok(())
    }
    /// The isolation layer this resource carries, if any: its probe reports
    /// that layer, and failing closed on it revokes this resource's access.
    fn layer(&self) -> Option<Layer> {
        None
    }
    /// Measures the resource's layer as the tenant would meet it. Called
    /// only when `layer` names one.
    async fn probe(&self, _ctx: &C) -> Option<LayerReport> {
        None
    }
    /// What this resource adds to `status.resources`, from what this run
    /// has seen.
    fn record(&self, _ctx: &C, _resources: &mut TenantResources) {}
}

/// Where the journal is persisted (the Tenant's status, in the operator).
#[async_trait]
pub trait JournalStore: Send {
    async fn save(&mut self, journal: &ProvisioningJournal) -> Result<(), StepError>;
}

/// How a run of the engine ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every step ensured.
    Provisioned,
    /// A step failed for good; everything made was removed.
    RolledBack {
        failed_step: String,
        error: String,
        reason: String,
    },
    /// A step of an already provisioned tenant failed for good. Nothing was
    /// removed; the failure is in the journal and the step is tried again later.
    Degraded {
        failed_step: String,
        error: String,
        reason: String,
    },
    /// Every step removed (teardown).
    Removed,
    /// Every step released (a deletion with policy `Retain`).
    Released,
    /// Access taken away at every resource asked; nothing removed.
    AccessRevoked,
    /// A removal failed for good; the journal still lists what remains.
    RemovalStuck { step: String, error: String },
}

/// A lifecycle path of a tenant: each runs over every resource, in
/// provisioning order or reversed for teardown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    /// Ensure every resource, with the tenant's access granted or revoked
    /// (suspension); a failure before the tenant was ever provisioned rolls
    /// back what the attempt made.
    Provision(Access),
    /// Take access away at every resource (the start of a `Delete` grace
    /// period), or at those of one layer (failing closed). Nothing is removed.
    RevokeAccess(Option<Layer>),
    /// Let go of every resource, still tagged (deletion with policy `Retain`).
    Release,
    /// Remove every resource (deletion with policy `Delete`).
    Teardown,
}

/// Runs a tenant's resources with the journal, retries and rollback.
pub struct Engine<'a, C: Send> {
    resources: &'a [Box<dyn Resource<C>>],
    retry: RetryPolicy,
}

impl<C: Send> fmt::Debug for Engine<'_, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self.resources.iter().map(|s| s.name()).collect();
        f.debug_struct("Engine").field("resources", &names).finish()
    }
}

/// Which verb a removal runs.
#[derive(Clone, Copy)]
enum Letting {
    Remove,
    Release,
}

impl<'a, C: Send> Engine<'a, C> {
    pub fn new(resources: &'a [Box<dyn Resource<C>>], retry: RetryPolicy) -> Self {
        Self { resources, retry }
    }

    pub fn resources(&self) -> &'a [Box<dyn Resource<C>>] {
        self.resources
    }

    /// Runs one lifecycle path over every resource: the one entry point
    /// the controller uses.
    pub async fn run(
        &self,
        ctx: &mut C,
        journal: &mut ProvisioningJournal,
        store: &mut dyn JournalStore,
        path: Lifecycle,
    ) -> Result<Outcome, StepError> {
        match path {
            Lifecycle::Provision(access) => self.provision(ctx, journal, store, access).await,
            Lifecycle::RevokeAccess(layer) => {
                self.revoke_access(ctx, layer).await?;
                Ok(Outcome::AccessRevoked)
            }
            Lifecycle::Release => self.release(ctx, journal, store).await,
            Lifecycle::Teardown => self.teardown(ctx, journal, store).await,
        }
    }

    /// Ensures every resource in order, each followed by the access verb
    /// `access` asks for. Resumes an interrupted rollback first, so a failed
    /// attempt always ends with nothing left behind before a new one starts.
    /// An `Err` means the journal could not be saved: nothing is lost, the
    /// caller retries later and the engine resumes from the journal.
    pub async fn provision(
        &self,
        ctx: &mut C,
        journal: &mut ProvisioningJournal,
        store: &mut dyn JournalStore,
        access: Access,
    ) -> Result<Outcome, StepError> {
        if journal.operation == JournalOperation::RollBack {
            if let Some(stuck) = self.remove_remaining(ctx, journal, store).await? {
                return Ok(stuck);
            }
            return self.finish_rollback(journal, store).await;
        }
        if journal.operation == JournalOperation::Teardown {
            // A teardown never turns back into provisioning by itself.
            return self.teardown(ctx, journal, store).await;
        }

        // The step a previous process started and never recorded as finished.
        let interrupted_step = journal.in_progress.clone();
        for (index, resource) in self.resources.iter().enumerate() {
            let name = resource.name();
            let done_before = journal.steps_done.iter().any(|s| s == name);
            let attempt = Attempt {
                interrupted: interrupted_step.as_deref() == Some(name),
                access,
            };
            if !done_before && journal.in_progress.as_deref() != Some(name) {
                journal.in_progress = Some(name.to_string());
                store.save(journal).await?;
            }
            crash_point(&format!("ensure-before-{name}"));
            let result = self
                .ensure_with_retry(resource.as_ref(), ctx, attempt)
                .await;
            crash_point(&format!("ensure-after-{name}"));
            let adopted = match &result {
                Ok(ensured) => *ensured == Ensured::AdoptedRelease,
                Err((_, adopted)) => *adopted,
            };
            if adopted && !journal.adopted_released.iter().any(|s| s == name) {
                journal.adopted_released.push(name.to_string());
            }
            let error = match result {
                Ok(_) => {
                    self.record_done(journal, store, index, done_before).await?;
                    continue;
                }
                Err((error, _)) => error,
            };
            let failure = StepFailure {
                step: name.to_string(),
                message: error.to_string(),
            };
            if journal.provisioned {
                tracing::warn!(step = name, reason = %error.reason, %error, "step of a provisioned tenant failed; keeping everything");
                journal.in_progress = None;
                record_failure(journal, failure, &error);
                journal.failed_attempts += 1;
                journal.last_failure_time = Some(Timestamp::now());
                store.save(journal).await?;
                return Ok(Outcome::Degraded {
                    failed_step: name.to_string(),
                    error: error.message,
                    reason: error.reason.to_string(),
                });
            }
            tracing::warn!(step = name, reason = %error.reason, %error, "step failed; rolling back");
            // The failed step may have made part of its resource.
            if !done_before {
                journal.steps_done.push(name.to_string());
            }
            journal.operation = JournalOperation::RollBack;
            journal.in_progress = None;
            // A step a killed process left unfinished is removed as such,
            // as a teardown would.
            if journal.interrupted_step.is_none() {
                journal.interrupted_step = interrupted_step.clone();
            }
            record_failure(journal, failure, &error);
            store.save(journal).await?;
            if let Some(stuck) = self.remove_remaining(ctx, journal, store).await? {
                return Ok(stuck);
            }
            self.finish_rollback(journal, store).await?;
            return Ok(Outcome::RolledBack {
                failed_step: name.to_string(),
                error: error.message,
                reason: error.reason.to_string(),
            });
        }
        if journal.failed_attempts > 0 || journal.failure.is_some() || !journal.provisioned {
            mark_provisioned(journal);
            store.save(journal).await?;
        }
        Ok(Outcome::Provisioned)
    }

    /// Records the resource at `index` done and announces the next (or the
    /// end), in one write: "in progress" means "may have begun", true of the
    /// next step from here on, and each journal write is a status write to
    /// the API server.
    async fn record_done(
        &self,
        journal: &mut ProvisioningJournal,
        store: &mut dyn JournalStore,
        index: usize,
        done_before: bool,
    ) -> Result<(), StepError> {
        let name = self.resources[index].name();
        if done_before && journal.in_progress.as_deref() != Some(name) {
            return Ok(());
        }
        if !done_before {
            journal.steps_done.push(name.to_string());
        }
        journal.in_progress = self
            .resources
            .get(index + 1)
            .map(|next| next.name())
            .filter(|next| !journal.steps_done.iter().any(|s| s == next))
            .map(str::to_string);
        if index + 1 == self.resources.len() {
            mark_provisioned(journal);
        }
        store.save(journal).await
    }

    /// Removes every resource in reverse, whatever the journal says was
    /// made: removals are idempotent and check ownership.
    pub async fn teardown(
        &self,
        ctx: &mut C,
        journal: &mut ProvisioningJournal,
        store: &mut dyn JournalStore,
    ) -> Result<Outcome, StepError> {
        self.begin_removal(journal, store, JournalOperation::Teardown)
            .await?;
        if let Some(stuck) = self.remove_remaining(ctx, journal, store).await? {
            return Ok(stuck);
        }
        Ok(Outcome::Removed)
    }

    /// Releases every resource in reverse (a deletion with policy `Retain`):
    /// journaled and retried like a teardown, each resource letting go
    /// instead of being removed.
    pub async fn release(
        &self,
        ctx: &mut C,
        journal: &mut ProvisioningJournal,
        store: &mut dyn JournalStore,
    ) -> Result<Outcome, StepError> {
        self.begin_removal(journal, store, JournalOperation::Release)
            .await?;
        if let Some(stuck) = self.remove_remaining(ctx, journal, store).await? {
            return Ok(stuck);
        }
        Ok(Outcome::Released)
    }

    /// Turns the journal into a removal of every resource (unless it is one
    /// already, resumed after a restart).
    async fn begin_removal(
        &self,
        journal: &mut ProvisioningJournal,
        store: &mut dyn JournalStore,
        operation: JournalOperation,
    ) -> Result<(), StepError> {
        if journal.operation == operation {
            return Ok(());
        }
        journal.interrupted_step = journal.in_progress.take();
        journal.operation = operation;
        journal.steps_done = self
            .resources
            .iter()
            .map(|s| s.name().to_string())
            .collect();
        journal.in_progress = None;
        store.save(journal).await
    }

    /// Takes the tenant's access away at every resource of `layer` (every
    /// resource when `None`), last first, each retried like a removal. Not
    /// journaled: every revocation is idempotent, and the caller records
    /// that access is gone once all have run.
    pub async fn revoke_access(&self, ctx: &mut C, layer: Option<Layer>) -> Result<(), StepError> {
        for resource in self.resources.iter().rev() {
            if layer.is_some() && resource.layer() != layer {
                continue;
            }
            let mut tried = 0;
            loop {
                tried += 1;
                match resource.revoke_access(ctx).await {
                    Ok(()) => break,
                    Err(e) => self.retry.after_failure(tried, e).await?,
                }
            }
        }
        Ok(())
    }

    /// Every resource's probe, by layer, run concurrently.
    pub async fn probe(&self, ctx: &C) -> Vec<(Layer, LayerReport)>
    where
        C: Sync,
    {
        let probes = self.resources.iter().filter_map(|resource| {
            let layer = resource.layer()?;
            Some(async move { resource.probe(ctx).await.map(|report| (layer, report)) })
        });
        futures::future::join_all(probes)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// What every resource records in `status.resources`.
    pub fn record(&self, ctx: &C) -> TenantResources {
        let mut resources = TenantResources::default();
        for resource in self.resources {
            resource.record(ctx, &mut resources);
        }
        resources
    }

    /// Removes the resources listed in the journal, last first, recording each.
    async fn remove_remaining(
        &self,
        ctx: &mut C,
        journal: &mut ProvisioningJournal,
        store: &mut dyn JournalStore,
    ) -> Result<Option<Outcome>, StepError> {
        while let Some(name) = journal.steps_done.last().cloned() {
            let Some(resource) = self.resources.iter().find(|s| s.name() == name) else {
                // A step this version no longer has: nothing to remove it with.
                tracing::warn!(step = %name, "journal names an unknown step; skipping its removal");
                journal.steps_done.pop();
                store.save(journal).await?;
                continue;
            };
            crash_point(&format!("remove-before-{name}"));
            // A rollback gives back what the attempt adopted and a release
            // gives back everything; a teardown (deletion with policy
            // Delete) removes everything.
            let letting = if journal.operation == JournalOperation::Release
                || (journal.operation == JournalOperation::RollBack
                    && journal.adopted_released.contains(&name))
            {
                Letting::Release
            } else {
                Letting::Remove
            };
            let removal = Removal {
                interrupted: journal.interrupted_step.as_deref() == Some(name.as_str()),
                failed: journal.operation == JournalOperation::RollBack
                    && failed_step(journal) == Some(name.as_str()),
            };
            let result = self
                .remove_with_retry(resource.as_ref(), ctx, letting, removal)
                .await;
            crash_point(&format!("remove-after-{name}"));
            if let Err(error) = result {
                tracing::error!(step = %name, %error, "removal failed; will retry later");
                return Ok(Some(Outcome::RemovalStuck {
                    step: name,
                    error: error.message,
                }));
            }
            journal.steps_done.pop();
            journal.adopted_released.retain(|s| *s != name);
            if removal.interrupted {
                journal.interrupted_step = None;
            }
            store.save(journal).await?;
        }
        Ok(None)
    }

    /// The resource ensured with its access set as asked, or the error that
    /// ended the tries and whether any try took over a released resource.
    async fn ensure_with_retry(
        &self,
        resource: &dyn Resource<C>,
        ctx: &mut C,
        attempt: Attempt,
    ) -> Result<Ensured, (StepError, bool)> {
        let mut adopted = false;
        let mut tried = 0;
        loop {
            tried += 1;
            let result = match resource.ensure(ctx, attempt).await {
                Ok(ensured) => {
                    adopted |= ensured == Ensured::AdoptedRelease;
                    match attempt.access {
                        Access::Granted => resource.restore_access(ctx).await,
                        Access::Revoked => resource.revoke_access(ctx).await,
                    }
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(()) if adopted => return Ok(Ensured::AdoptedRelease),
                Ok(()) => return Ok(Ensured::Owned),
                Err(e) => {
                    if let Err(e) = self.retry.after_failure(tried, e).await {
                        return Err((e, adopted));
                    }
                }
            }
        }
    }

    async fn remove_with_retry(
        &self,
        resource: &dyn Resource<C>,
        ctx: &mut C,
        letting: Letting,
        removal: Removal,
    ) -> Result<(), StepError> {
        let mut tried = 0;
        loop {
            tried += 1;
            let result = match letting {
                Letting::Release => resource.release(ctx, removal).await,
                Letting::Remove => resource.remove(ctx, removal).await,
            };
            match result {
                Ok(()) => return Ok(()),
                Err(e) => self.retry.after_failure(tried, e).await?,
            }
        }
    }

    async fn finish_rollback(
        &self,
        journal: &mut ProvisioningJournal,
        store: &mut dyn JournalStore,
    ) -> Result<Outcome, StepError> {
        journal.operation = JournalOperation::Provision;
        journal.failed_attempts += 1;
        journal.last_failure_time = Some(Timestamp::now());
        store.save(journal).await?;
        let failure = journal.failure.clone();
        let reason = journal
            .failure_reason
            .clone()
            .unwrap_or_else(|| "RolledBack".to_string());
        Ok(Outcome::RolledBack {
            failed_step: failure.as_ref().map(|f| f.step.clone()).unwrap_or_default(),
            error: failure.map(|f| f.to_string()).unwrap_or_default(),
            reason,
        })
    }
}

fn record_failure(journal: &mut ProvisioningJournal, failure: StepFailure, error: &StepError) {
    journal.failure = Some(failure);
    journal.failure_reason = Some(error.reason.to_string());
}

/// The step named by the journal's failure.
pub fn failed_step(journal: &ProvisioningJournal) -> Option<&str> {
    journal.failure.as_ref().map(|f| f.step.as_str())
}

/// Every step is done: what an earlier failure left in the journal is over.
fn mark_provisioned(journal: &mut ProvisioningJournal) {
    journal.provisioned = true;
    journal.failed_attempts = 0;
    journal.failure = None;
    journal.failure_reason = None;
    journal.last_failure_time = None;
    journal.failed_generation = None;
    // Rollback is over for this tenant: nothing to remember.
    journal.adopted_released.clear();
}

/// A fresh journal for a tenant that has none yet.
pub fn new_journal() -> ProvisioningJournal {
    ProvisioningJournal {
        operation: JournalOperation::Provision,
        steps_done: Vec::new(),
        in_progress: None,
        failure: None,
        failure_reason: None,
        failed_attempts: 0,
        last_failure_time: None,
        failed_generation: None,
        adopted_released: Vec::new(),
        interrupted_step: None,
        provisioned: false,
    }
}

/// Lets crash tests stop the process at an exact point (`FAILPOINTS=
/// ensure-after-bucket=return`). Compiled to nothing without the
/// `failpoints` feature.
#[inline]
fn crash_point(name: &str) {
    #[cfg(feature = "failpoints")]
    if fail::eval(name, |_| ()).is_some() {
        eprintln!("tenantry: failpoint {name} hit; exiting as if killed");
        std::process::exit(86);
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

#[cfg(test)]
mod tests;
