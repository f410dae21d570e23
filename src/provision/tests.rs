//! The engine's own contract, with small in-memory steps: ordering, journaling,
//! retries and reverse rollback. These are logic tests; the steps against real
//! backends are tested in `tests/`.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;

#[derive(Default)]
struct World {
    existing: BTreeSet<&'static str>,
    log: Vec<String>,
    /// Step name -> errors to return from its next ensure calls.
    ensure_failures: Vec<(&'static str, StepError)>,
    remove_failures: Vec<(&'static str, StepError)>,
    release_failures: Vec<(&'static str, StepError)>,
    /// Resources a Retain deletion released: ensure adopts them.
    released: BTreeSet<&'static str>,
    /// Log `restore_access` calls too (every provisioning with access
    /// granted makes them).
    log_restores: bool,
}

struct Thing(&'static str);

#[async_trait]
impl Resource<World> for Thing {
    fn name(&self) -> &'static str {
        self.0
    }
    async fn ensure(&self, w: &mut World, attempt: Attempt) -> Result<Ensured, StepError> {
        w.log.push(format!(
            "ensure {}{}",
            self.0,
            if attempt.interrupted {
                " (interrupted)"
            } else {
                ""
            }
        ));
        if let Some(i) = w.ensure_failures.iter().position(|(n, _)| *n == self.0) {
            let (_, e) = w.ensure_failures.remove(i);
            if !e.transient {
                // A permanent failure after a partial creation.
                w.existing.insert(self.0);
            }
            return Err(e);
        }
        let adopted = w.released.remove(self.0);
        w.existing.insert(self.0);
        Ok(if adopted {
            Ensured::AdoptedRelease
        } else {
            Ensured::Owned
        })
    }
    async fn release(&self, w: &mut World, _removal: Removal) -> Result<(), StepError> {
        w.log.push(format!("release {}", self.0));
        if let Some(i) = w.release_failures.iter().position(|(n, _)| *n == self.0) {
            let (_, e) = w.release_failures.remove(i);
            return Err(e);
        }
        w.existing.remove(self.0);
        w.released.insert(self.0);
        Ok(())
    }
    async fn restore_access(&self, w: &mut World) -> Result<(), StepError> {
        if w.log_restores {
            w.log.push(format!("restore {}", self.0));
        }
        Ok(())
    }
    async fn revoke_access(&self, w: &mut World) -> Result<(), StepError> {
        w.log.push(format!("revoke {}", self.0));
        if let Some(i) = w.remove_failures.iter().position(|(n, _)| *n == self.0) {
            let (_, e) = w.remove_failures.remove(i);
            return Err(e);
        }
        Ok(())
    }
    async fn remove(&self, w: &mut World, removal: Removal) -> Result<(), StepError> {
        w.log.push(format!(
            "remove {}{}",
            self.0,
            match (removal.interrupted, removal.failed) {
                (true, true) => " (interrupted, failed)",
                (true, false) => " (interrupted)",
                (false, true) => " (failed)",
                (false, false) => "",
            }
        ));
        if let Some(i) = w.remove_failures.iter().position(|(n, _)| *n == self.0) {
            let (_, e) = w.remove_failures.remove(i);
            return Err(e);
        }
        w.existing.remove(self.0);
        Ok(())
    }
}

#[derive(Clone, Default)]
struct SavedJournals(Arc<Mutex<Vec<ProvisioningJournal>>>);

#[async_trait]
impl JournalStore for SavedJournals {
    async fn save(&mut self, journal: &ProvisioningJournal) -> Result<(), StepError> {
        self.0.lock().unwrap().push(journal.clone());
        Ok(())
    }
}

fn steps() -> Vec<Box<dyn Resource<World>>> {
    vec![
        Box::new(Thing("key")),
        Box::new(Thing("bucket")),
        Box::new(Thing("database")),
    ]
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
    }
}

#[tokio::test]
async fn steps_are_ensured_in_order_and_journaled_before_each_with_one_write_per_step() {
    let steps = steps();
    let mut world = World::default();
    let mut journal = new_journal();
    let mut store = SavedJournals::default();
    let outcome = Engine::new(&steps, fast_retry())
        .provision(&mut world, &mut journal, &mut store, Access::Granted)
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Provisioned);
    assert_eq!(
        world.log,
        ["ensure key", "ensure bucket", "ensure database"]
    );
    let saved = store.0.lock().unwrap();
    let trail: Vec<_> = saved
        .iter()
        .map(|j| (j.in_progress.clone(), j.steps_done.len(), j.provisioned))
        .collect();
    // Each write after a step records it done and names the next one, which
    // is never begun before that write; the last also marks the tenant
    // provisioned.
    assert_eq!(
        trail,
        [
            (Some("key".into()), 0, false),
            (Some("bucket".into()), 1, false),
            (Some("database".into()), 2, false),
            (None, 3, true),
        ]
    );
}

#[tokio::test]
async fn a_rollback_releases_what_the_attempt_adopted_and_removes_what_it_made() {
    let steps = steps();
    let mut world = World {
        // A returning customer: their bucket was kept by a Retain deletion.
        released: ["bucket"].into(),
        ensure_failures: vec![(
            "database",
            StepError::permanent(Reason::Conflict, "postgres", "taken"),
        )],
        ..Default::default()
    };
    let mut journal = new_journal();
    let mut store = SavedJournals::default();
    let outcome = Engine::new(&steps, fast_retry())
        .provision(&mut world, &mut journal, &mut store, Access::Granted)
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::RolledBack { .. }), "{outcome:?}");
    assert_eq!(
        world.log,
        [
            "ensure key",
            "ensure bucket",
            "ensure database",
            "remove database (failed)",
            "release bucket",
            "remove key"
        ]
    );
    // The customer's bucket is back where it was, released for adoption.
    assert_eq!(world.released, ["bucket"].into());
    assert!(world.existing.is_empty());
    assert!(journal.adopted_released.is_empty());
    // The journal knew of the adoption before the failing step ran, so a
    // crash there would not have lost it.
    let saved = store.0.lock().unwrap();
    assert!(
        saved
            .iter()
            .any(|j| j.adopted_released == ["bucket"]
                && j.in_progress.as_deref() == Some("database"))
    );
}

#[tokio::test]
async fn a_teardown_tells_the_removal_of_a_step_a_killed_process_was_ensuring() {
    let steps = steps();
    let mut world = World::default();
    // A process was killed while ensuring "bucket": the journal says so.
    let mut journal = ProvisioningJournal {
        steps_done: vec!["key".into()],
        in_progress: Some("bucket".into()),
        ..new_journal()
    };
    let mut store = SavedJournals::default();
    let outcome = Engine::new(&steps, fast_retry())
        .teardown(&mut world, &mut journal, &mut store)
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Removed);
    assert_eq!(
        world.log,
        [
            "remove database",
            "remove bucket (interrupted)",
            "remove key"
        ]
    );
    assert_eq!(journal.interrupted_step, None);
    // Recorded before any removal, so a second crash keeps it.
    let saved = store.0.lock().unwrap();
    assert_eq!(saved[0].interrupted_step.as_deref(), Some("bucket"));
}

#[tokio::test]
async fn a_teardown_removes_even_what_was_adopted() {
    let steps = steps();
    let mut world = World {
        released: ["bucket"].into(),
        ..Default::default()
    };
    let mut journal = new_journal();
    let mut store = SavedJournals::default();
    let engine = Engine::new(&steps, fast_retry());
    engine
        .provision(&mut world, &mut journal, &mut store, Access::Granted)
        .await
        .unwrap();
    assert!(journal.adopted_released.is_empty());
    engine
        .teardown(&mut world, &mut journal, &mut store)
        .await
        .unwrap();
    assert!(world.log.iter().all(|l| !l.starts_with("release")));
    assert!(world.existing.is_empty() && world.released.is_empty());
}

#[tokio::test]
async fn a_second_run_writes_no_journal_when_nothing_changed() {
    let steps = steps();
    let mut world = World::default();
    let mut journal = new_journal();
    let mut store = SavedJournals::default();
    let engine = Engine::new(&steps, fast_retry());
    engine
        .provision(&mut world, &mut journal, &mut store, Access::Granted)
        .await
        .unwrap();
    store.0.lock().unwrap().clear();
    engine
        .provision(&mut world, &mut journal, &mut store, Access::Granted)
        .await
        .unwrap();
    assert!(store.0.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn transient_errors_are_retried_inside_the_step() {
    let steps = steps();
    let mut world = World {
        ensure_failures: vec![
            ("bucket", StepError::transient("s3", "503 SlowDown")),
            ("bucket", StepError::transient("s3", "503 SlowDown")),
        ],
        ..Default::default()
    };
    let mut journal = new_journal();
    let outcome = Engine::new(&steps, fast_retry())
        .provision(
            &mut world,
            &mut journal,
            &mut SavedJournals::default(),
            Access::Granted,
        )
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Provisioned);
    assert_eq!(
        world.log.iter().filter(|l| *l == "ensure bucket").count(),
        3
    );
}

#[tokio::test]
async fn a_permanent_error_removes_completed_steps_in_reverse_and_leaves_nothing() {
    let steps = steps();
    let mut world = World {
        ensure_failures: vec![("database", StepError::conflict("postgres", "schema taken"))],
        ..Default::default()
    };
    let mut journal = new_journal();
    let outcome = Engine::new(&steps, fast_retry())
        .provision(
            &mut world,
            &mut journal,
            &mut SavedJournals::default(),
            Access::Granted,
        )
        .await
        .unwrap();
    assert!(
        matches!(outcome, Outcome::RolledBack { ref failed_step, ref reason, .. } if failed_step == "database" && reason == "Conflict")
    );
    assert!(
        world.existing.is_empty(),
        "left behind: {:?}",
        world.existing
    );
    assert_eq!(
        &world.log[3..],
        ["remove database (failed)", "remove bucket", "remove key"]
    );
    assert_eq!(journal.failed_attempts, 1);
    assert!(
        journal
            .failure
            .as_ref()
            .unwrap()
            .message
            .contains("schema taken")
    );
    assert!(journal.steps_done.is_empty());
}

#[tokio::test(start_paused = true)]
async fn exhausted_retries_roll_back_too() {
    let steps = steps();
    let mut world = World {
        ensure_failures: vec![("bucket", StepError::transient("s3", "500")); 3],
        ..Default::default()
    };
    let mut journal = new_journal();
    let outcome = Engine::new(&steps, fast_retry())
        .provision(
            &mut world,
            &mut journal,
            &mut SavedJournals::default(),
            Access::Granted,
        )
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::RolledBack { .. }));
    assert!(
        journal
            .failure
            .unwrap()
            .message
            .contains("gave up after 3 tries")
    );
    assert!(world.existing.is_empty());
}

#[tokio::test]
async fn an_interrupted_rollback_resumes_before_anything_new_is_made() {
    let steps = steps();
    let mut world = World::default();
    world.existing.extend(["key", "bucket"]);
    // As saved by a process that died in the middle of rolling back.
    let mut journal = ProvisioningJournal {
        operation: JournalOperation::RollBack,
        steps_done: vec!["key".into(), "bucket".into()],
        failure: Some("database: conflict".into()),
        ..new_journal()
    };
    let outcome = Engine::new(&steps, fast_retry())
        .provision(
            &mut world,
            &mut journal,
            &mut SavedJournals::default(),
            Access::Granted,
        )
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::RolledBack { .. }));
    assert_eq!(world.log, ["remove bucket", "remove key"]);
    assert!(world.existing.is_empty());
    assert_eq!(journal.operation, JournalOperation::Provision);
}

#[tokio::test]
async fn a_step_interrupted_mid_ensure_is_told_so_on_resume() {
    let steps = steps();
    let mut world = World::default();
    let mut journal = ProvisioningJournal {
        steps_done: vec!["key".into()],
        in_progress: Some("bucket".into()),
        ..new_journal()
    };
    Engine::new(&steps, fast_retry())
        .provision(
            &mut world,
            &mut journal,
            &mut SavedJournals::default(),
            Access::Granted,
        )
        .await
        .unwrap();
    assert_eq!(
        world.log,
        [
            "ensure key",
            "ensure bucket (interrupted)",
            "ensure database"
        ]
    );
}

#[tokio::test]
async fn a_stuck_removal_keeps_the_rest_in_the_journal() {
    let steps = steps();
    let mut world = World {
        remove_failures: vec![(
            "bucket",
            StepError::permanent(Reason::BackendRejected, "s3", "denied"),
        )],
        ..Default::default()
    };
    let mut journal = new_journal();
    let engine = Engine::new(&steps, fast_retry());
    engine
        .provision(
            &mut world,
            &mut journal,
            &mut SavedJournals::default(),
            Access::Granted,
        )
        .await
        .unwrap();
    let outcome = engine
        .teardown(&mut world, &mut journal, &mut SavedJournals::default())
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::RemovalStuck { ref step, .. } if step == "bucket"));
    assert_eq!(journal.steps_done, ["key", "bucket"]);
    // The next teardown finishes the job.
    let outcome = engine
        .teardown(&mut world, &mut journal, &mut SavedJournals::default())
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Removed);
    assert!(world.existing.is_empty());
}

#[test]
fn backoff_grows_and_is_capped() {
    let p = RetryPolicy {
        attempts: 10,
        base_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(1),
    };
    assert_eq!(p.delay_cap(1), Duration::from_millis(100));
    assert_eq!(p.delay_cap(3), Duration::from_millis(400));
    assert_eq!(p.delay_cap(9), Duration::from_secs(1));
}

#[tokio::test]
async fn a_provisioned_tenant_is_never_rolled_back_by_a_later_failure() {
    let steps = steps();
    let mut world = World::default();
    let mut journal = new_journal();
    let engine = Engine::new(&steps, fast_retry());
    engine
        .provision(
            &mut world,
            &mut journal,
            &mut SavedJournals::default(),
            Access::Granted,
        )
        .await
        .unwrap();
    assert!(journal.provisioned);

    world.ensure_failures.push((
        "bucket",
        StepError::permanent(Reason::BackendRejected, "s3", "drifted"),
    ));
    let outcome = engine
        .provision(
            &mut world,
            &mut journal,
            &mut SavedJournals::default(),
            Access::Granted,
        )
        .await
        .unwrap();
    assert!(
        matches!(outcome, Outcome::Degraded { ref failed_step, .. } if failed_step == "bucket")
    );
    assert_eq!(world.existing.len(), 3, "nothing was removed");
    assert!(!world.log.iter().any(|l| l.starts_with("remove")));
    assert_eq!(journal.failed_attempts, 1);

    // The next successful run clears the failure.
    engine
        .provision(
            &mut world,
            &mut journal,
            &mut SavedJournals::default(),
            Access::Granted,
        )
        .await
        .unwrap();
    assert_eq!(journal.failed_attempts, 0);
    assert!(journal.failure.is_none());
}

#[tokio::test]
async fn a_rollback_after_a_killed_process_removes_its_unfinished_step_as_interrupted() {
    let steps = steps();
    let mut world = World {
        ensure_failures: vec![(
            "database",
            StepError::permanent(Reason::Conflict, "postgres", "taken"),
        )],
        ..Default::default()
    };
    // A killed process was ensuring "bucket".
    let mut journal = ProvisioningJournal {
        steps_done: vec!["key".into()],
        in_progress: Some("bucket".into()),
        ..new_journal()
    };
    let outcome = Engine::new(&steps, fast_retry())
        .provision(
            &mut world,
            &mut journal,
            &mut SavedJournals::default(),
            Access::Granted,
        )
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::RolledBack { .. }), "{outcome:?}");
    // The step that failed and the one a killed process left unfinished may
    // each have made part of their resource; the others are told nothing.
    assert_eq!(
        &world.log[3..],
        [
            "remove database (failed)",
            "remove bucket (interrupted)",
            "remove key"
        ]
    );
    assert!(world.existing.is_empty());
    assert_eq!(journal.interrupted_step, None);
}

#[tokio::test]
async fn a_retain_deletion_releases_every_step_in_reverse_through_the_journal_and_resumes() {
    let steps = steps();
    let mut world = World {
        release_failures: vec![(
            "bucket",
            StepError::permanent(Reason::BackendRejected, "s3", "denied"),
        )],
        ..Default::default()
    };
    let mut journal = new_journal();
    let engine = Engine::new(&steps, fast_retry());
    engine
        .provision(
            &mut world,
            &mut journal,
            &mut SavedJournals::default(),
            Access::Granted,
        )
        .await
        .unwrap();
    world.log.clear();
    let store = SavedJournals::default();
    let outcome = engine
        .release(&mut world, &mut journal, &mut store.clone())
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::RemovalStuck { ref step, .. } if step == "bucket"));
    assert_eq!(journal.operation, JournalOperation::Release);
    assert_eq!(journal.steps_done, ["key", "bucket"]);
    // Journaled before the first release, so a crash resumes the release.
    assert_eq!(
        store.0.lock().unwrap()[0].operation,
        JournalOperation::Release
    );
    let outcome = engine
        .release(&mut world, &mut journal, &mut SavedJournals::default())
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Released);
    assert_eq!(
        world.log,
        [
            "release database",
            "release bucket",
            "release bucket",
            "release key"
        ]
    );
    assert!(world.existing.is_empty());
    assert_eq!(
        world.released,
        ["bucket", "database", "key"].into_iter().collect()
    );
}

#[tokio::test]
async fn access_is_revoked_at_every_step_last_first_retrying_and_nothing_is_removed() {
    let steps = steps();
    let mut world = World::default();
    let mut journal = new_journal();
    let engine = Engine::new(&steps, fast_retry());
    engine
        .provision(
            &mut world,
            &mut journal,
            &mut SavedJournals::default(),
            Access::Granted,
        )
        .await
        .unwrap();
    world.log.clear();
    world.remove_failures = vec![("bucket", StepError::transient("s3", "slow down"))];
    engine.revoke_access(&mut world, None).await.unwrap();
    assert_eq!(
        world.log,
        [
            "revoke database",
            "revoke bucket",
            "revoke bucket",
            "revoke key"
        ]
    );
    assert_eq!(world.existing.len(), 3, "a revocation removed something");
}

#[tokio::test]
async fn a_suspended_run_ensures_every_resource_then_revokes_its_access_and_resuming_restores_it() {
    let steps = steps();
    let mut world = World {
        log_restores: true,
        ..World::default()
    };
    let mut journal = new_journal();
    let engine = Engine::new(&steps, fast_retry());
    let outcome = engine
        .provision(
            &mut world,
            &mut journal,
            &mut SavedJournals::default(),
            Access::Revoked,
        )
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Provisioned);
    assert_eq!(
        world.log,
        [
            "ensure key",
            "revoke key",
            "ensure bucket",
            "revoke bucket",
            "ensure database",
            "revoke database"
        ]
    );
    world.log.clear();
    engine
        .provision(
            &mut world,
            &mut journal,
            &mut SavedJournals::default(),
            Access::Granted,
        )
        .await
        .unwrap();
    assert_eq!(
        world.log,
        [
            "ensure key",
            "restore key",
            "ensure bucket",
            "restore bucket",
            "ensure database",
            "restore database"
        ]
    );
    assert_eq!(world.existing.len(), 3);
}

#[tokio::test]
async fn a_revocation_of_one_layer_touches_only_the_resources_that_carry_it() {
    struct Layered(&'static str, Option<Layer>);
    #[async_trait]
    impl Resource<World> for Layered {
        fn name(&self) -> &'static str {
            self.0
        }
        async fn ensure(&self, _: &mut World, _: Attempt) -> Result<Ensured, StepError> {
            Ok(Ensured::Owned)
        }
        async fn remove(&self, _: &mut World, _: Removal) -> Result<(), StepError> {
            Ok(())
        }
        async fn release(&self, _: &mut World, _: Removal) -> Result<(), StepError> {
            Ok(())
        }
        async fn revoke_access(&self, w: &mut World) -> Result<(), StepError> {
            w.log.push(format!("revoke {}", self.0));
            Ok(())
        }
        fn layer(&self) -> Option<Layer> {
            self.1
        }
    }
    let resources: Vec<Box<dyn Resource<World>>> = vec![
        Box::new(Layered("key", Some(Layer::Encryption))),
        Box::new(Layered("database", Some(Layer::Database))),
        Box::new(Layered("secret", None)),
    ];
    let mut world = World::default();
    let engine = Engine::new(&resources, fast_retry());
    engine
        .revoke_access(&mut world, Some(Layer::Database))
        .await
        .unwrap();
    assert_eq!(world.log, ["revoke database"]);
}
