//! Hermetic tests of a tenant's whole life: the decision of this module and
//! the engine, over resources that live in memory, as the controller
//! sequences them (the status writes replaced by the in-memory situation).
//! They run in milliseconds.

mod ledger;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::*;
use crate::api::{ProvisioningJournal, Reason};
use crate::provision::{
    Attempt, Engine, Ensured, JournalStore, Outcome, Removal, Resource, RetryPolicy, StepError,
    new_journal,
};
use ledger::Ledger;

/// The in-memory resources of one tenant, by name.
#[derive(Default)]
struct World {
    made: BTreeMap<&'static str, Made>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Made {
    /// The tenant's, with its access granted or not.
    Live { access: bool },
    /// Let go by a `Retain` deletion.
    Released,
}

/// A resource kept in the world: `grants_access` ones are access itself
/// (as a login or a Secret is), the others only exist.
struct Stored {
    name: &'static str,
    grants_access: bool,
}

#[async_trait]
impl Resource<World> for Stored {
    fn name(&self) -> &'static str {
        self.name
    }
    async fn ensure(&self, w: &mut World, attempt: Attempt) -> Result<Ensured, StepError> {
        let adopted = w.made.get(self.name) == Some(&Made::Released);
        let access = self.grants_access && attempt.access == Access::Granted;
        w.made.insert(self.name, Made::Live { access });
        Ok(if adopted {
            Ensured::AdoptedRelease
        } else {
            Ensured::Owned
        })
    }
    async fn remove(&self, w: &mut World, _: Removal) -> Result<(), StepError> {
        w.made.remove(self.name);
        Ok(())
    }
    async fn release(&self, w: &mut World, _: Removal) -> Result<(), StepError> {
        if w.made.contains_key(self.name) {
            w.made.insert(self.name, Made::Released);
        }
        Ok(())
    }
    async fn revoke_access(&self, w: &mut World) -> Result<(), StepError> {
        if let Some(Made::Live { access }) = w.made.get_mut(self.name) {
            *access = false;
        }
        Ok(())
    }
    async fn restore_access(&self, w: &mut World) -> Result<(), StepError> {
        if let Some(Made::Live { access }) = w.made.get_mut(self.name) {
            *access = self.grants_access;
        }
        Ok(())
    }
}

/// A tenant's resources like the operator's: a key, a database whose login
/// is access, a bucket, and the Secret that is access.
fn resources() -> Vec<Box<dyn Resource<World>>> {
    vec![
        Box::new(Stored {
            name: "key",
            grants_access: false,
        }),
        Box::new(Stored {
            name: "database",
            grants_access: true,
        }),
        Box::new(Stored {
            name: "bucket",
            grants_access: false,
        }),
        Box::new(Stored {
            name: "secret",
            grants_access: true,
        }),
    ]
}

struct NoStatus;

#[async_trait]
impl JournalStore for NoStatus {
    async fn save(&mut self, _: &ProvisioningJournal) -> Result<(), StepError> {
        Ok(())
    }
}

/// A Tenant as the controller sees it.
struct Tenant {
    situation: Situation,
    journal: ProvisioningJournal,
    grace: chrono::Duration,
}

impl Tenant {
    fn new() -> Self {
        Self {
            situation: Situation {
                suspended: false,
                deletion: None,
            },
            journal: new_journal(),
            grace: chrono::Duration::hours(72),
        }
    }

    fn delete(&mut self, policy: DeletionPolicy) {
        self.situation.deletion = Some(Deletion {
            policy,
            access_revoked_at: None,
            destroy_after: None,
        });
    }
}

/// What one reconcile did.
#[derive(Debug, PartialEq)]
enum Reconciled {
    Ran(Outcome),
    Waiting(Duration),
}

/// One reconcile, sequenced as the controller's: decide, run the path over
/// every resource, and record what a revocation started.
async fn reconcile(
    resources: &[Box<dyn Resource<World>>],
    world: &mut World,
    tenant: &mut Tenant,
    now: DateTime<Utc>,
) -> Reconciled {
    let retry = RetryPolicy {
        attempts: 2,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(2),
    };
    match next(&tenant.situation, now) {
        Next::Wait(wait) => Reconciled::Waiting(wait),
        Next::Run(path) => {
            let outcome = Engine::new(resources, retry)
                .run(world, &mut tenant.journal, &mut NoStatus, path)
                .await
                .expect("an in-memory journal always saves");
            if outcome == Outcome::AccessRevoked
                && let Some(deletion) = tenant.situation.deletion.as_mut()
            {
                deletion.access_revoked_at = Some(now);
                deletion.destroy_after = Some(now + tenant.grace);
            }
            Reconciled::Ran(outcome)
        }
    }
}

fn live(access: bool) -> Made {
    Made::Live { access }
}

#[tokio::test]
async fn a_resource_kind_added_by_a_test_takes_part_in_every_lifecycle_path() {
    let started = Instant::now();
    let ledger = Ledger::default();
    let mut resources = resources();
    resources.push(Box::new(ledger.clone()));
    let mut world = World::default();
    let mut tenant = Tenant::new();
    let now = Utc::now();

    // Provisioning fails at the new kind: everything the attempt made is
    // removed, the new kind's part-made entry too.
    ledger.fail_next_ensure();
    let rolled_back = reconcile(&resources, &mut world, &mut tenant, now).await;
    let Reconciled::Ran(Outcome::RolledBack {
        failed_step,
        reason,
        ..
    }) = rolled_back
    else {
        panic!("not rolled back: {rolled_back:?}");
    };
    assert_eq!(
        (failed_step.as_str(), reason),
        ("ledger", Reason::BackendRejected.to_string())
    );
    assert!(world.made.is_empty(), "left behind: {:?}", world.made);
    assert_eq!(ledger.entry(), ledger::Entry::default());

    // The next attempt provisions all five, access granted.
    let provisioned = reconcile(&resources, &mut world, &mut tenant, now).await;
    assert_eq!(provisioned, Reconciled::Ran(Outcome::Provisioned));
    assert_eq!(world.made["database"], live(true));
    assert_eq!(world.made["secret"], live(true));
    assert!(ledger.entry().exists && ledger.entry().enabled);

    // Suspended: every resource kept, every access revoked, the new kind's
    // included; resumed: restored.
    tenant.situation.suspended = true;
    reconcile(&resources, &mut world, &mut tenant, now).await;
    assert_eq!(world.made["database"], live(false));
    assert_eq!(world.made["secret"], live(false));
    assert!(ledger.entry().exists && !ledger.entry().enabled);
    tenant.situation.suspended = false;
    reconcile(&resources, &mut world, &mut tenant, now).await;
    assert_eq!(world.made["secret"], live(true));
    assert!(ledger.entry().enabled);

    // Deleted with policy Delete: access goes at once, data after the grace
    // period, the new kind's entry with the rest.
    tenant.delete(DeletionPolicy::Delete);
    let revoked = reconcile(&resources, &mut world, &mut tenant, now).await;
    assert_eq!(revoked, Reconciled::Ran(Outcome::AccessRevoked));
    assert_eq!(world.made["database"], live(false));
    assert!(ledger.entry().exists && !ledger.entry().enabled);
    let waiting = reconcile(&resources, &mut world, &mut tenant, now).await;
    assert_eq!(waiting, Reconciled::Waiting(Duration::from_secs(72 * 3600)));
    assert_eq!(
        world.made.len(),
        4,
        "something went before the grace period ended"
    );
    let after_grace = now + tenant.grace + chrono::Duration::seconds(1);
    let removed = reconcile(&resources, &mut world, &mut tenant, after_grace).await;
    assert_eq!(removed, Reconciled::Ran(Outcome::Removed));
    assert!(world.made.is_empty(), "left behind: {:?}", world.made);
    assert!(!ledger.entry().exists);

    // A Tenant of the same name, deleted with policy Retain: everything is
    // let go, the new kind's entry too, and the next Tenant adopts it.
    let mut tenant = Tenant::new();
    reconcile(&resources, &mut world, &mut tenant, now).await;
    tenant.delete(DeletionPolicy::Retain);
    let released = reconcile(&resources, &mut world, &mut tenant, now).await;
    assert_eq!(released, Reconciled::Ran(Outcome::Released));
    assert!(world.made.values().all(|m| *m == Made::Released));
    assert!(ledger.entry().released && !ledger.entry().enabled);
    let mut returning = Tenant::new();
    reconcile(&resources, &mut world, &mut returning, now).await;
    assert!(ledger.entry().enabled && !ledger.entry().released);

    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_failed_onboarding_that_adopted_a_released_resource_gives_it_back_released() {
    let ledger = Ledger::default();
    let mut resources = resources();
    resources.push(Box::new(ledger.clone()));
    let mut world = World::default();
    // A returning customer's bucket, released by an earlier Tenant.
    world.made.insert("bucket", Made::Released);
    ledger.fail_next_ensure();
    let mut tenant = Tenant::new();
    reconcile(&resources, &mut world, &mut tenant, Utc::now()).await;
    assert_eq!(
        world.made.into_iter().collect::<Vec<_>>(),
        [("bucket", Made::Released)],
        "the adopted bucket was destroyed, or something else stayed"
    );
}

#[test]
fn a_live_tenant_provisions_with_access_unless_suspended() {
    let mut situation = Situation {
        suspended: false,
        deletion: None,
    };
    let now = Utc::now();
    assert_eq!(
        next(&situation, now),
        Next::Run(Lifecycle::Provision(Access::Granted))
    );
    situation.suspended = true;
    assert_eq!(
        next(&situation, now),
        Next::Run(Lifecycle::Provision(Access::Revoked))
    );
}

#[test]
fn a_deletion_releases_or_revokes_waits_and_tears_down() {
    let now = Utc::now();
    let deleting =
        |policy, revoked: Option<DateTime<Utc>>, after: Option<DateTime<Utc>>| Situation {
            // A suspended tenant is deleted like any other.
            suspended: true,
            deletion: Some(Deletion {
                policy,
                access_revoked_at: revoked,
                destroy_after: after,
            }),
        };
    assert_eq!(
        next(&deleting(DeletionPolicy::Retain, None, None), now),
        Next::Run(Lifecycle::Release)
    );
    assert_eq!(
        next(&deleting(DeletionPolicy::Delete, None, None), now),
        Next::Run(Lifecycle::RevokeAccess(None))
    );
    let later = now + chrono::Duration::minutes(5);
    assert_eq!(
        next(
            &deleting(DeletionPolicy::Delete, Some(now), Some(later)),
            now
        ),
        Next::Wait(Duration::from_secs(300))
    );
    assert_eq!(
        next(&deleting(DeletionPolicy::Delete, Some(now), Some(now)), now),
        Next::Run(Lifecycle::Teardown)
    );
    // A grace period whose end is unknown is over: the revocation happened.
    assert_eq!(
        next(&deleting(DeletionPolicy::Delete, Some(now), None), now),
        Next::Run(Lifecycle::Teardown)
    );
}

#[test]
fn the_situation_is_read_from_the_deletion_status() {
    let spec: crate::api::TenantSpec = serde_json::from_value(serde_json::json!({
        "displayName": "Acme",
        "credentials": {"namespace": "apps"}
    }))
    .unwrap();
    let status = crate::api::DeletionStatus {
        access_revoked_at: Some("2026-01-01T00:00:00Z".parse().unwrap()),
        destroy_after: Some("2026-01-04T00:00:00Z".parse().unwrap()),
    };
    let situation = Situation::deleting(&spec, DeletionPolicy::Delete, Some(&status));
    let deletion = situation.deletion.unwrap();
    assert_eq!(
        deletion.destroy_after.unwrap() - deletion.access_revoked_at.unwrap(),
        chrono::Duration::days(3)
    );
}
