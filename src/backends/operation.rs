//! The operation a backend call is part of, passed down explicitly: which
//! tenant it acts for, what kind of removal it is (if any), and the audit
//! sink every change is recorded in. There is no ambient state: a backend
//! that changes something without an [`Operation`] does not compile, and an
//! operation cannot be made without saying where its changes go.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;

use super::{Action, Backend, BackendError, TenantRef};
pub use crate::provision::Removal;

/// How a recorded change ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failed => "failed",
        }
    }
}

/// Where a tenant's changes are recorded: the audit trail in the operator
/// (`audit::Scope`), or [`Unrecorded`] for tools and tests that drive a
/// backend with no Tenant and no trail behind it.
#[async_trait]
pub trait AuditSink: Send + Sync + fmt::Debug {
    /// Records a change (or a turn of the engine). A change whose record
    /// cannot be written is not reported done: the caller returns this error.
    async fn record(
        &self,
        action: Action,
        target: &str,
        outcome: Outcome,
        detail: serde_json::Value,
    ) -> Result<(), BackendError>;

    /// Whether this sink's trail records the release of `target` by a
    /// Tenant of this operation's name: what a `Retain` deletion wrote, which
    /// no tag in AWS or Kubernetes can forge.
    async fn release_recorded(&self, target: &str) -> Result<bool, BackendError>;
}

/// A sink that records nothing and trusts the tags for releases: for tests
/// and tools that act with no Tenant behind them. The operator never uses
/// it; choosing it is explicit at the place the operation is made.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unrecorded;

#[async_trait]
impl AuditSink for Unrecorded {
    async fn record(
        &self,
        _action: Action,
        _target: &str,
        _outcome: Outcome,
        _detail: serde_json::Value,
    ) -> Result<(), BackendError> {
        Ok(())
    }

    async fn release_recorded(&self, _target: &str) -> Result<bool, BackendError> {
        Ok(true)
    }
}

/// One tenant's call into a backend.
#[derive(Debug)]
pub struct Operation {
    pub tenant: TenantRef,
    /// Set for removals and releases by the engine; default otherwise.
    pub removal: Removal,
    audit: Arc<dyn AuditSink>,
    /// Set by a backend when an ensure takes over a released resource.
    adopted_released: AtomicBool,
}

impl Operation {
    pub fn new(tenant: TenantRef, audit: Arc<dyn AuditSink>) -> Self {
        Self {
            tenant,
            removal: Removal::default(),
            audit,
            adopted_released: AtomicBool::new(false),
        }
    }

    /// An operation whose changes go nowhere: see [`Unrecorded`].
    pub fn unrecorded(tenant: TenantRef) -> Self {
        Self::new(tenant, Arc::new(Unrecorded))
    }

    /// The same tenant and sink, for a removal of the given kind.
    pub fn removing(&self, removal: Removal) -> Self {
        Self {
            removal,
            ..Self::new(self.tenant.clone(), self.audit.clone())
        }
    }

    /// The same tenant and sink, with fresh per-call facts.
    pub fn fresh(&self) -> Self {
        self.removing(Removal::default())
    }

    pub fn audit(&self) -> &Arc<dyn AuditSink> {
        &self.audit
    }

    /// Records a successful change for this operation's tenant. Call it
    /// right after the change and return its error.
    pub async fn note(
        &self,
        action: Action,
        target: &str,
        detail: serde_json::Value,
    ) -> Result<(), BackendError> {
        self.audit.record(action, target, Outcome::Ok, detail).await
    }

    /// Refuses to adopt a resource whose tags say "released for this
    /// tenant's name" unless the audit trail records that release: whoever
    /// may tag resources in the account (or write Secrets in the namespace)
    /// could otherwise plant one, with its own password, key policy or
    /// replication, for the next Tenant of that name to take over.
    pub async fn require_recorded_release(
        &self,
        backend: Backend,
        resource: &str,
        target: &str,
    ) -> Result<(), BackendError> {
        if self.audit.release_recorded(target).await? {
            return Ok(());
        }
        Err(BackendError::Conflict {
            backend,
            resource: resource.to_string(),
            detail: format!(
                "it is tagged as released for a tenant named {:?}, but this installation's audit trail records no such release; \
                 a tag anyone may write is no proof, so tenantry does not adopt it (delete or rename it, or untag it if it is yours)",
                self.tenant.name
            ),
        })
    }

    /// A backend calls this when an ensure takes over a resource that a
    /// `Retain` deletion released: it may hold a returning customer's data,
    /// so a rollback of this onboarding must release it again, never
    /// destroy it.
    pub fn note_adopted_release(&self) {
        self.adopted_released.store(true, Ordering::Relaxed);
    }

    /// Whether a call of this operation took over a released resource.
    pub fn adopted_release(&self) -> bool {
        self.adopted_released.load(Ordering::Relaxed)
    }
}
