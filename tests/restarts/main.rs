//! Restarts of the servers the operator depends on: PostgreSQL restarted
//! while tenants are being provisioned, and the API server restarted (which
//! breaks every watch the operator holds). Everything converges.
//!
//! A separate test binary on purpose: a restart disturbs every test that
//! shares the local environment, and cargo runs test binaries one after
//! another, so nothing else runs while this one restarts servers. Its one
//! test does the restarts in sequence for the same reason.

#[path = "../integration/support/mod.rs"]
mod support;

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tenantry::api::Tenant;

use support::campaign::{self, Plan};
use support::census::Count;
use support::cluster::*;
use support::env;

async fn localenv(args: &[&str]) {
    let out = tokio::process::Command::new(env("TENANTRY_LOCALENV"))
        .args(args)
        .output()
        .await
        .expect("run hack/localenv.sh");
    assert!(
        out.status.success(),
        "localenv {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until at least one tenant of the plan has started provisioning, so
/// the restart lands in the middle of the work.
async fn wait_provisioning_started(client: &kube::Client, op: &Operator) {
    campaign::wait_all(
        client,
        &op.run_id,
        || op.log(),
        Duration::from_secs(60),
        "started",
        |ts| {
            if ts.iter().any(|t| phase(t).is_some()) {
                vec![]
            } else {
                vec!["none yet".into()]
            }
        },
    )
    .await;
}

#[tokio::test]
async fn tenants_converge_across_restarts_of_postgresql_and_the_api_server() {
    let client = kube_client().await;
    install_crd(&client).await;
    let ns = create_namespace(&client, "rst").await;
    let env_ = [
        ("TENANTRY_FAILURE_BACKOFF", "2s"),
        ("TENANTRY_FAILURE_BACKOFF_MAX", "10s"),
    ];
    let op = Operator::start(&env_).await;
    let prefix = campaign::prefix("rst");
    let timeout = Duration::from_secs(240);

    // PostgreSQL restarted in the middle of provisioning.
    let first: Plan = campaign::plan(&format!("{prefix}p"), 6, &ns);
    campaign::create_all(&client, &op, &first).await;
    wait_provisioning_started(&client, &op).await;
    localenv(&["restart-postgres", "postgres"]).await;
    campaign::wait_all(
        &client,
        &op.run_id,
        || op.log(),
        timeout,
        "Ready after the PostgreSQL restart",
        campaign::not_ready(&first),
    )
    .await;

    // The API server restarted: every watch breaks. Tenants created before
    // and changed after it converge, so the watch came back.
    let second: Plan = campaign::plan(&format!("{prefix}a"), 4, &ns);
    campaign::create_all(&client, &op, &second).await;
    wait_provisioning_started(&client, &op).await;
    localenv(&["restart-apiserver"]).await;
    let third: Plan = campaign::plan(&format!("{prefix}w"), 2, &ns);
    let api: Api<Tenant> = Api::all(kube_client().await);
    // The API server may still be coming up: retried within the deadline.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while api.list(&Default::default()).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the API server did not come back"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    campaign::create_all(&client, &op, &third).await;
    let mut all: Plan = first.clone();
    all.extend(second.clone());
    all.extend(third.clone());
    campaign::wait_all(
        &client,
        &op.run_id,
        || op.log(),
        timeout,
        "Ready after the API server restart",
        campaign::not_ready(&all),
    )
    .await;
    let name = first.keys().next().unwrap();
    let patch = json!({"spec": {"displayName": "changed after the restarts"}});
    let changed = api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    wait_for_tenant(&client, &op, name, timeout, "the change observed", |t| {
        is_ready(t) && t.metadata.generation == changed.metadata.generation
    })
    .await;

    campaign::assert_census(
        &client,
        &prefix,
        &all,
        |n| Count::one(all[n].1),
        "after the restarts",
    )
    .await;
    campaign::delete_and_check(&client, &op, &prefix, &all, timeout).await;
}
