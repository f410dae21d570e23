//! The crash campaign: the operator SIGKILLed at random moments while it
//! provisions and deletes tenants, restarted each time, round after round.
//! Every tenant converges (Ready, or gone when deleted), with exactly one of
//! each resource or none (an IAM role and a ServiceAccount too for the half
//! whose class gives them one), and every audit chain verifies.
//!
//! atomicity.rs stops the operator at each step boundary (failpoints); this
//! kills it anywhere, including inside steps and during deletions.

use std::time::{Duration, Instant};

use aws_sdk_iam::error::ProvideErrorMetadata;
use rand::Rng;

use crate::support::campaign::{self, Plan};
use crate::support::census::Count;
use crate::support::cluster::*;
use crate::support::{bucket_prefix, readback};

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
    let mut roles_then = 0;
    for round in 0..rounds {
        if round == rounds / 2 {
            // Not before one of them has its role, and the rounds left not
            // before the deletion of one reached IAM: the first rounds land
            // before any role step (the operator spends them restarting),
            // and a deletion waits for the others' work, so without these
            // waits no kill would land in a role's removal.
            let (made, theirs) = wait_for_a_role(&op, &plan, &doomed).await;
            roles_then = made;
            campaign::delete_all(&client, &doomed).await;
            wait_for_a_revocation(&op, &theirs).await;
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
         ({} deleted during the rounds, {with_identity} of them with an IAM role, \
         {roles_then} roles made by then), \
         duplicates 0, orphans 0, broken chains 0, secret leaks {}",
        campaign::with_identity(&plan),
        doomed.len(),
        leaks.len()
    );
    assert!(leaks.is_empty(), "secrets leaked: {leaks:?}");
}

/// Waits (the operator running) until the IAM role of a tenant of `doomed`
/// exists: how many tenants of `plan` have theirs by then, and the roles of
/// `doomed`'s.
async fn wait_for_a_role(op: &Operator, plan: &Plan, doomed: &Plan) -> (usize, Vec<String>) {
    let iam = readback::aws().await.iam;
    let role_prefix = format!("{}-", bucket_prefix());
    let deadline = Instant::now() + Duration::from_secs(120 + 4 * plan.len() as u64);
    loop {
        let roles = iam
            .list_roles()
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .expect("list IAM roles");
        let made: Vec<&str> = roles
            .iter()
            .map(|r| r.role_name())
            .filter(|role| {
                role.strip_prefix(&role_prefix)
                    .is_some_and(|tenant| plan.contains_key(tenant))
            })
            .collect();
        let theirs: Vec<String> = made
            .iter()
            .filter(|role| doomed.contains_key(&role[role_prefix.len()..]))
            .map(|role| role.to_string())
            .collect();
        if !theirs.is_empty() {
            return (made.len(), theirs);
        }
        assert!(
            Instant::now() < deadline,
            "no role of a tenant to be deleted was made in time ({} of others): {}",
            made.len(),
            tail(&op.log(), 40)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits (the operator running) until one of `roles` is revoked (what a
/// deletion does first in IAM, before the grace period) or gone.
async fn wait_for_a_revocation(op: &Operator, roles: &[String]) {
    let iam = readback::aws().await.iam;
    let deadline = Instant::now() + Duration::from_secs(120 + 4 * roles.len() as u64);
    loop {
        for role in roles {
            match iam.list_role_policies().role_name(role).send().await {
                Ok(out) if out.policy_names().iter().any(|p| p == "tenantry-revoked") => return,
                Ok(_) => {}
                Err(e) if e.code() == Some("NoSuchEntity") => return,
                Err(e) => panic!("ListRolePolicies {role}: {e:?}"),
            }
        }
        assert!(
            Instant::now() < deadline,
            "the deletion of none of {roles:?} reached IAM in time: {}",
            tail(&op.log(), 40)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
