//! What a reconcile runs next for a tenant's resources: a pure decision from
//! the Tenant's state, so every lifecycle path (provisioning, suspension,
//! the `Delete` grace period and teardown, the `Retain` release) is chosen
//! in one place, unit-tested without I/O, and driven end to end over
//! in-memory resources by the hermetic tests beside this file.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::api::{DeletionPolicy, DeletionStatus, TenantSpec};
use crate::provision::{Access, Lifecycle};

/// What the decision needs to know of a Tenant.
#[derive(Clone, Debug, PartialEq)]
pub struct Situation {
    pub suspended: bool,
    /// Set once the Tenant is being deleted.
    pub deletion: Option<Deletion>,
}

/// A deletion under way.
#[derive(Clone, Debug, PartialEq)]
pub struct Deletion {
    pub policy: DeletionPolicy,
    /// `Delete`: when access was taken away (the grace period's start).
    pub access_revoked_at: Option<DateTime<Utc>>,
    /// `Delete`: when the data may be destroyed.
    pub destroy_after: Option<DateTime<Utc>>,
}

impl Situation {
    /// A Tenant that is not being deleted.
    pub fn live(spec: &TenantSpec) -> Self {
        Self {
            suspended: spec.suspended,
            deletion: None,
        }
    }

    /// A Tenant being deleted with `policy`, as far as its status says.
    pub fn deleting(
        spec: &TenantSpec,
        policy: DeletionPolicy,
        status: Option<&DeletionStatus>,
    ) -> Self {
        Self {
            suspended: spec.suspended,
            deletion: Some(Deletion {
                policy,
                access_revoked_at: status.and_then(|d| d.access_revoked_at).map(|t| t.0),
                destroy_after: status.and_then(|d| d.destroy_after).map(|t| t.0),
            }),
        }
    }
}

/// What to do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Run this path over every resource.
    Run(Lifecycle),
    /// A `Delete` deletion inside its grace period: nothing to run for this
    /// long.
    Wait(Duration),
}

/// The next lifecycle path for a tenant in `situation` at `now`.
pub fn next(situation: &Situation, now: DateTime<Utc>) -> Next {
    let Some(deletion) = &situation.deletion else {
        // Suspension is the same provisioning with access revoked: every
        // resource kept and repaired, the tenant's access taken away.
        let access = if situation.suspended {
            Access::Revoked
        } else {
            Access::Granted
        };
        return Next::Run(Lifecycle::Provision(access));
    };
    match deletion.policy {
        // Let go of everything, still tagged, so a Tenant of this name can
        // adopt it.
        DeletionPolicy::Retain => Next::Run(Lifecycle::Release),
        // Access goes at once; the data after the grace period.
        DeletionPolicy::Delete if deletion.access_revoked_at.is_none() => {
            Next::Run(Lifecycle::RevokeAccess(None))
        }
        DeletionPolicy::Delete => {
            let destroy_after = deletion.destroy_after.unwrap_or(now);
            match (destroy_after - now).to_std() {
                Ok(wait) if !wait.is_zero() => Next::Wait(wait),
                _ => Next::Run(Lifecycle::Teardown),
            }
        }
    }
}

#[cfg(test)]
mod tests;
