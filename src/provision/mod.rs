//! The provisioning engine: an ordered list of steps, run all or nothing.
//!
//! Each [`Step`] has an idempotent `ensure` (create, or adopt what an earlier
//! attempt made) and an idempotent `remove`. The engine records its progress in
//! a [`ProvisioningJournal`] before and after every step, through a
//! [`JournalStore`], so that a process killed at any instant resumes (or keeps
//! rolling back) from the journal when it restarts. Transient errors are
//! retried inside the step with capped, jittered backoff; a permanent error or
//! exhausted retries removes what was made, in reverse.
//!
//! The engine knows no backend: steps and the journal store are supplied by
//! the caller.

mod retry;

pub use retry::RetryPolicy;

use std::cell::Cell;
use std::fmt;

use async_trait::async_trait;

use crate::api::{JournalOperation, ProvisioningJournal, Reason};

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

/// Facts about the current attempt that a step needs to decide safely.
#[derive(Debug, Clone, Copy, Default)]
pub struct Attempt {
    /// The journal shows this step was started and never recorded as finished:
    /// a previous process may have created the resource and died before it
    /// could tag or record it.
    pub interrupted: bool,
}

/// One unit of provisioning against one backend.
#[async_trait]
pub trait Step<C: Send>: Send + Sync {
    /// Stable name, recorded in the journal.
    fn name(&self) -> &'static str;
    /// Make the resource exist as desired, or adopt it. Idempotent.
    async fn ensure(&self, ctx: &mut C, attempt: Attempt) -> Result<(), StepError>;
    /// Make the resource not exist, if it is the tenant's. Idempotent; never
    /// touches a resource the tenant does not own.
    async fn remove(&self, ctx: &mut C) -> Result<(), StepError>;
    /// Let go of the resource without destroying it (as a `Retain` deletion
    /// does), for a rollback of a step that adopted a released resource.
    async fn release(&self, ctx: &mut C) -> Result<(), StepError>;
    /// Take the tenant's access away and keep the resource (the start of a
    /// `Delete` deletion's grace period). Idempotent. Most resources grant
    /// no access of their own, so by default there is nothing to take.
    async fn revoke_access(&self, _ctx: &mut C) -> Result<(), StepError> {
        Ok(())
    }
}

tokio::task_local! {
    /// Set by a backend while a step's ensure runs, when it takes over a
    /// released resource.
    static ADOPTED_RELEASED: Cell<bool>;
    /// Set while the engine removes the step a killed process was ensuring.
    static REMOVING_INTERRUPTED: bool;
    /// Set while a rollback removes the step whose failure started it.
    static REMOVING_FAILED: bool;
}

/// Runs a step's removal knowing whether a killed process left its ensure
/// unfinished (`interrupted`) and whether its failure started this rollback
/// (`failed`): either way the step may have made part of its resource
/// without recording it. The engine calls it for every removal.
pub async fn removal_scope<F: std::future::Future>(
    interrupted: bool,
    failed: bool,
    removal: F,
) -> F::Output {
    REMOVING_INTERRUPTED
        .scope(interrupted, REMOVING_FAILED.scope(failed, removal))
        .await
}

/// Whether the removal running now is of the step whose failure started
/// this rollback. Only a search that cannot take what is not the tenant's
/// (a KMS key found by the tenant's uid tag) may act on it; an untagged
/// resource of the tenant's name may still be a squatter's, whose conflict
/// was the failure. False outside an engine's removal.
pub fn removing_failed_step() -> bool {
    REMOVING_FAILED.try_with(|b| *b).unwrap_or(false)
}

/// Whether the removal running now is of a step whose ensure a killed
/// process left unfinished: an untagged resource of the tenant's name may
/// then be the one that process made, as `Attempt::interrupted` says for
/// ensure. False outside an engine's removal.
pub fn removing_interrupted_step() -> bool {
    REMOVING_INTERRUPTED.try_with(|b| *b).unwrap_or(false)
}

/// Backends call this when an ensure takes over a resource that a `Retain`
/// deletion released: it may hold a returning customer's data, so a rollback
/// of this onboarding must release it again, never destroy it. Outside an
/// engine's ensure it does nothing.
pub fn note_adopted_release() {
    let _ = ADOPTED_RELEASED.try_with(|adopted| adopted.set(true));
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
    /// A removal failed for good; the journal still lists what remains.
    RemovalStuck { step: String, error: String },
}

/// Runs steps with the journal, retries and rollback.
pub struct Engine<'a, C: Send> {
    steps: &'a [Box<dyn Step<C>>],
    retry: RetryPolicy,
}

impl<C: Send> fmt::Debug for Engine<'_, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self.steps.iter().map(|s| s.name()).collect();
        f.debug_struct("Engine").field("steps", &names).finish()
    }
}

impl<'a, C: Send> Engine<'a, C> {
    pub fn new(steps: &'a [Box<dyn Step<C>>], retry: RetryPolicy) -> Self {
        Self { steps, retry }
    }

    /// Ensures every step in order. Resumes an interrupted rollback first, so
    /// a failed attempt always ends with nothing left behind before a new one
    /// starts. An `Err` means the journal could not be saved: nothing is lost,
    /// the caller retries later and the engine resumes from the journal.
    pub async fn provision(
        &self,
        ctx: &mut C,
        journal: &mut ProvisioningJournal,
        store: &mut dyn JournalStore,
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
        for (index, step) in self.steps.iter().enumerate() {
            let name = step.name();
            let done_before = journal.steps_done.iter().any(|s| s == name);
            let attempt = Attempt {
                interrupted: interrupted_step.as_deref() == Some(name),
            };
            if !done_before && journal.in_progress.as_deref() != Some(name) {
                journal.in_progress = Some(name.to_string());
                store.save(journal).await?;
            }
            crash_point(&format!("ensure-before-{name}"));
            let (result, adopted) = self.ensure_with_retry(step.as_ref(), ctx, attempt).await;
            crash_point(&format!("ensure-after-{name}"));
            if adopted && !journal.adopted_released.iter().any(|s| s == name) {
                journal.adopted_released.push(name.to_string());
            }
            match result {
                Ok(()) => {
                    if !done_before || journal.in_progress.as_deref() == Some(name) {
                        if !done_before {
                            journal.steps_done.push(name.to_string());
                        }
                        // One write records this step done and announces the
                        // next (or the end): "in progress" means "may have
                        // begun", true of the next step from here on, and
                        // each journal write is a status write to the API
                        // server.
                        journal.in_progress = self
                            .steps
                            .get(index + 1)
                            .map(|next| next.name())
                            .filter(|next| !journal.steps_done.iter().any(|s| s == next))
                            .map(str::to_string);
                        if index + 1 == self.steps.len() {
                            mark_provisioned(journal);
                        }
                        store.save(journal).await?;
                    }
                }
                Err(error) if journal.provisioned => {
                    tracing::warn!(step = name, reason = %error.reason, %error, "step of a provisioned tenant failed; keeping everything");
                    journal.in_progress = None;
                    journal.failure = Some(format!("{name}: {error}"));
                    journal.failure_reason = Some(error.reason.to_string());
                    journal.failed_attempts += 1;
                    journal.last_failure_time = Some(chrono::Utc::now().to_rfc3339());
                    store.save(journal).await?;
                    return Ok(Outcome::Degraded {
                        failed_step: name.to_string(),
                        error: error.message,
                        reason: error.reason.to_string(),
                    });
                }
                Err(error) => {
                    tracing::warn!(step = name, reason = %error.reason, %error, "step failed; rolling back");
                    // The failed step may have made part of its resource.
                    if !done_before {
                        journal.steps_done.push(name.to_string());
                    }
                    journal.operation = JournalOperation::RollBack;
                    journal.in_progress = None;
                    // A step a killed process left unfinished is removed as
                    // such, as a teardown would.
                    if journal.interrupted_step.is_none() {
                        journal.interrupted_step = interrupted_step.clone();
                    }
                    journal.failure = Some(format!("{name}: {error}"));
                    journal.failure_reason = Some(error.reason.to_string());
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
            }
        }
        if journal.failed_attempts > 0 || journal.failure.is_some() || !journal.provisioned {
            mark_provisioned(journal);
            store.save(journal).await?;
        }
        Ok(Outcome::Provisioned)
    }

    /// Removes every step in reverse, whatever the journal says was made:
    /// removals are idempotent and check ownership.
    pub async fn teardown(
        &self,
        ctx: &mut C,
        journal: &mut ProvisioningJournal,
        store: &mut dyn JournalStore,
    ) -> Result<Outcome, StepError> {
        if journal.operation != JournalOperation::Teardown {
            journal.interrupted_step = journal.in_progress.take();
            journal.operation = JournalOperation::Teardown;
            journal.steps_done = self.steps.iter().map(|s| s.name().to_string()).collect();
            journal.in_progress = None;
            store.save(journal).await?;
        }
        if let Some(stuck) = self.remove_remaining(ctx, journal, store).await? {
            return Ok(stuck);
        }
        Ok(Outcome::Removed)
    }

    /// Releases every step in reverse (a deletion with policy `Retain`):
    /// journaled and retried like a teardown, each step letting go of its
    /// resource instead of removing it.
    pub async fn release(
        &self,
        ctx: &mut C,
        journal: &mut ProvisioningJournal,
        store: &mut dyn JournalStore,
    ) -> Result<Outcome, StepError> {
        if journal.operation != JournalOperation::Release {
            journal.interrupted_step = journal.in_progress.take();
            journal.operation = JournalOperation::Release;
            journal.steps_done = self.steps.iter().map(|s| s.name().to_string()).collect();
            journal.in_progress = None;
            store.save(journal).await?;
        }
        if let Some(stuck) = self.remove_remaining(ctx, journal, store).await? {
            return Ok(stuck);
        }
        Ok(Outcome::Released)
    }

    /// Takes the tenant's access away at every step, last first, each
    /// retried like a removal. Not journaled: every revocation is idempotent,
    /// and the caller records that access is gone once all have run.
    pub async fn revoke_access(&self, ctx: &mut C) -> Result<(), StepError> {
        for step in self.steps.iter().rev() {
            let mut tried = 0;
            loop {
                tried += 1;
                match step.revoke_access(ctx).await {
                    Ok(()) => break,
                    Err(e) => self.retry.after_failure(tried, e).await?,
                }
            }
        }
        Ok(())
    }

    /// Removes the steps listed in the journal, last first, recording each.
    async fn remove_remaining(
        &self,
        ctx: &mut C,
        journal: &mut ProvisioningJournal,
        store: &mut dyn JournalStore,
    ) -> Result<Option<Outcome>, StepError> {
        while let Some(name) = journal.steps_done.last().cloned() {
            let Some(step) = self.steps.iter().find(|s| s.name() == name) else {
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
            let release = journal.operation == JournalOperation::Release
                || (journal.operation == JournalOperation::RollBack
                    && journal.adopted_released.contains(&name));
            let interrupted = journal.interrupted_step.as_deref() == Some(name.as_str());
            let failed = journal.operation == JournalOperation::RollBack
                && failed_step(journal) == Some(name.as_str());
            let result = removal_scope(
                interrupted,
                failed,
                self.remove_with_retry(step.as_ref(), ctx, release),
            )
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
            if interrupted {
                journal.interrupted_step = None;
            }
            store.save(journal).await?;
        }
        Ok(None)
    }

    /// The step's result, and whether any try took over a released resource.
    async fn ensure_with_retry(
        &self,
        step: &dyn Step<C>,
        ctx: &mut C,
        attempt: Attempt,
    ) -> (Result<(), StepError>, bool) {
        ADOPTED_RELEASED
            .scope(Cell::new(false), async {
                let mut tried = 0;
                let result = loop {
                    tried += 1;
                    match step.ensure(ctx, attempt).await {
                        Ok(()) => break Ok(()),
                        Err(e) => {
                            if let Err(e) = self.retry.after_failure(tried, e).await {
                                break Err(e);
                            }
                        }
                    }
                };
                (result, ADOPTED_RELEASED.with(Cell::get))
            })
            .await
    }

    async fn remove_with_retry(
        &self,
        step: &dyn Step<C>,
        ctx: &mut C,
        release: bool,
    ) -> Result<(), StepError> {
        let mut tried = 0;
        loop {
            tried += 1;
            let result = if release {
                step.release(ctx).await
            } else {
                step.remove(ctx).await
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
        journal.last_failure_time = Some(chrono::Utc::now().to_rfc3339());
        store.save(journal).await?;
        let failure = journal.failure.clone().unwrap_or_default();
        let failed_step = failed_step(journal).unwrap_or_default().to_string();
        let reason = journal
            .failure_reason
            .clone()
            .unwrap_or_else(|| "RolledBack".to_string());
        Ok(Outcome::RolledBack {
            failed_step,
            error: failure,
            reason,
        })
    }
}

/// The step named by the journal's failure (recorded as "step: error").
pub fn failed_step(journal: &ProvisioningJournal) -> Option<&str> {
    journal.failure.as_deref().and_then(|f| f.split(':').next())
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
