//! The crash campaign: the operator SIGKILLed at random moments while it
//! provisions and deletes tenants, restarted each time, round after round.
//! Every tenant converges (Ready, or gone when deleted), with exactly one of
//! each resource or none (an IAM role and a ServiceAccount too for the half
//! whose class gives them one), and every audit chain verifies.
//!
//! atomicity.rs stops the operator at each step boundary (failpoints); this
//! kills it anywhere, including inside steps and during deletions.

use std::time::Duration;

use rand::Rng;

use crate::support::campaign::{self, Plan};
use crate::support::census::Count;
use crate::support::cluster::*;

#[tokio::test]
async fn tenants_converge_after_the_operator_is_killed_at_random_moments_while_provisioning_and_deleting()
 {
    let n = campaign::size(6, 50);
    let rounds = campaign::rounds(4, 20);
    let client = kube_client().await;
    install_crd(&client).await;
    let ns = create_namespace(&client, "crash").await;
    let identity = campaign::create_identity_class(&client, "crs").await;
    let env = [
        ("TENANTRY_FAILURE_BACKOFF", "2s"),
        ("TENANTRY_FAILURE_BACKOFF_MAX", "10s"),
    ];
    let mut op = Operator::start(&env).await;
    let prefix = campaign::prefix("crs");
    let plan: Plan = campaign::plan_with_identity(&prefix, n, &ns, &identity);
    // Half of them (both modes) are deleted halfway through the rounds.
    let doomed: Plan = plan
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 4 < 2)
        .map(|(_, (k, v))| (k.clone(), v.clone()))
        .collect();
    // Some roles must go during the rounds and some live through them, or
    // the kills never land in a role's deletion, or never in a later step.
    let with_identity = campaign::with_identity(&doomed);
    assert!(
        with_identity > 0 && with_identity < campaign::with_identity(&plan),
        "{plan:?}"
    );
    campaign::create_all(&client, &op, &plan).await;

    let mut rng = rand::rng();
    let mut kills = 0;
    for round in 0..rounds {
        if round == rounds / 2 {
            campaign::delete_all(&client, &doomed).await;
        }
        // A random moment: the operator may be starting, provisioning,
        // rolling back, deleting, or idle.
        let alive = Duration::from_millis(rng.random_range(300..4000));
        tokio::time::sleep(alive).await;
        op.kill().await;
        kills += 1;
        op.restart_with(&env).await;
    }

    let timeout = Duration::from_secs(180 + 4 * n as u64);
    let kept: Plan = plan
        .iter()
        .filter(|(k, _)| !doomed.contains_key(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    campaign::wait_all(
        &client,
        &op.run_id,
        || op.log(),
        timeout,
        "converged",
        |tenants| {
            let mut pending = campaign::not_ready(&kept)(tenants);
            pending.extend(
                tenants
                    .iter()
                    .filter(|t| doomed.contains_key(&kube::ResourceExt::name_any(*t)))
                    .map(|t| format!("{} not deleted", kube::ResourceExt::name_any(t))),
            );
            pending
        },
    )
    .await;
    campaign::assert_census(
        &client,
        &prefix,
        &plan,
        |name| {
            if doomed.contains_key(name) {
                Count::default()
            } else {
                campaign::expected(&plan, name)
            }
        },
        &format!("after {kills} kills"),
    )
    .await;
    let passwords = campaign::passwords(&client, &kept).await;

    let (_, trails) = campaign::delete_and_check(&client, &op, &prefix, &plan, timeout).await;
    let (_, mut leaks) = campaign::log_leaks(&op.log_path, &passwords);
    leaks.extend(campaign::leaks(&passwords, &[("audit trail", &trails)]));
    println!(
        "CRASH CAMPAIGN: {n} tenants ({} with an IAM role), {rounds} rounds, {kills} SIGKILLs \
         ({} deleted during the rounds, {with_identity} of them with an IAM role), \
         duplicates 0, orphans 0, broken chains 0, secret leaks {}",
        campaign::with_identity(&plan),
        doomed.len(),
        leaks.len()
    );
    assert!(leaks.is_empty(), "secrets leaked: {leaks:?}");
}
