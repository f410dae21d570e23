//! Tenants provisioned and deleted through a proxy that injects faults into
//! the operator's real traffic to moto and PostgreSQL (support/faults.rs):
//! every tenant ends Ready, then gone, with exactly one of each resource in
//! between (an IAM role and a ServiceAccount for half of them, whose class
//! gives them one) and nothing left after, audit chains intact, and no
//! password in any log line (debug), Event, status or audit row.
//!
//! The suite runs a few tenants; `hack/campaign.sh` runs 200 with the same
//! code and prints the figures recorded in docs/reliability.md.

use std::time::{Duration, Instant};

use crate::support::campaign::{self, Plan};
use crate::support::cluster::*;
use crate::support::env;
use crate::support::faults::{FaultProxy, socket_of, with_port};

/// Waits until the operator has connected to everything and started its
/// controller, so the faults hit tenants' work, not its start-up checks.
pub async fn wait_started(op: &Operator) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !op.log().contains("tenantry controller starting") {
        assert!(
            Instant::now() < deadline,
            "the operator did not start: {}",
            tail(&op.log(), 40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn tenants_converge_through_injected_faults_leaving_no_duplicate_orphan_or_leaked_secret() {
    let n = campaign::size(12, 200);
    let rate = 0.2;
    let seed = campaign::seed();
    let client = kube_client().await;
    install_crd(&client).await;
    let ns = create_namespace(&client, "flt").await;
    let identity = campaign::create_identity_class(&client, "flt").await;
    let account_keys = campaign::crowd_kms_account(5000).await;

    let aws = FaultProxy::http(socket_of(&env("AWS_ENDPOINT_URL")), rate, seed).await;
    let db_url = env("TENANTRY_DATABASE_URL");
    let pg_addr = socket_of(&db_url);
    let pg = FaultProxy::tcp(pg_addr, rate, seed ^ 0x5eed).await;
    let proxied_db = with_port(&db_url, pg.addr.port());
    let aws_url = aws.url();
    let pg_port = pg_addr.port().to_string();
    let op = Operator::start(&[
        ("AWS_ENDPOINT_URL", aws_url.as_str()),
        ("TENANTRY_DATABASE_URL", proxied_db.as_str()),
        // Credentials name the real server, not the proxy.
        ("TENANTRY_TENANT_DATABASE_HOST", "127.0.0.1"),
        ("TENANTRY_TENANT_DATABASE_PORT", pg_port.as_str()),
        ("TENANTRY_LOG", "debug"),
        // A tenant whose retries ran out (rolled back, Failed) is tried again soon.
        ("TENANTRY_FAILURE_BACKOFF", "2s"),
        ("TENANTRY_FAILURE_BACKOFF_MAX", "10s"),
    ])
    .await;
    wait_started(&op).await;
    aws.set_enabled(true);
    pg.set_enabled(true);

    let started = Instant::now();
    let prefix = campaign::prefix("flt");
    let plan: Plan = campaign::plan_with_identity(&prefix, n, &ns, &identity);
    campaign::create_all(&client, &op, &plan).await;
    // Generous: a loaded CI machine with 20% of calls failing is slow, and a
    // longer wait costs nothing when the tenants converge.
    let timeout = Duration::from_secs(420 + 4 * n as u64);
    let ready = campaign::wait_all(
        &client,
        &op.run_id,
        || op.log(),
        timeout,
        "Ready",
        campaign::not_ready(&plan),
    )
    .await;
    let provisioned_in = started.elapsed();

    let made = campaign::assert_census(
        &client,
        &prefix,
        &plan,
        |name| campaign::expected(&plan, name),
        "after provisioning",
    )
    .await;
    let passwords = campaign::passwords(&client, &plan).await;
    let statuses = serde_json::to_string(&ready).unwrap();

    let (deleted_in, trails) =
        campaign::delete_and_check(&client, &op, &prefix, &plan, timeout).await;
    aws.set_enabled(false);
    pg.set_enabled(false);
    let events = campaign::events(&client, &plan).await;
    let (log_lines, mut leaks) = campaign::log_leaks(&op.log_path, &passwords);
    leaks.extend(campaign::leaks(
        &passwords,
        &[
            ("Events", &events),
            ("Tenant statuses", &statuses),
            ("audit trail", &trails),
        ],
    ));
    let rollbacks = trails.matches("rollback.start").count();
    let pending: usize = made.tenants.values().map(|c| c.pending_keys).sum();
    println!(
        "FAULT CAMPAIGN: seed {seed}, rate {rate}, {n} tenants (Schema and Database, {} with an IAM role), \
         {account_keys} KMS keys in the account before, provisioned in {provisioned_in:.0?}, deleted in {deleted_in:.0?}\n\
         FAULT CAMPAIGN: moto requests {} with {} faults {:?}\n\
         FAULT CAMPAIGN: PostgreSQL connections {} with {} faults {:?}\n\
         FAULT CAMPAIGN: rollbacks {rollbacks}, extra keys scheduled for deletion {pending}, \
         duplicates 0, orphans 0, broken chains 0, debug log lines {log_lines}, secret leaks {}",
        campaign::with_identity(&plan),
        aws.seen(),
        aws.injected(),
        aws.counts(),
        pg.seen(),
        pg.injected(),
        pg.counts(),
        leaks.len()
    );
    assert!(leaks.is_empty(), "secrets leaked: {leaks:?}");
    assert!(
        aws.injected() > 0 && pg.injected() > 0,
        "the proxies injected nothing"
    );
}

#[tokio::test]
async fn tenants_converge_after_every_connection_to_the_api_server_is_cut() {
    let client = kube_client().await;
    install_crd(&client).await;
    let ns = create_namespace(&client, "cut").await;
    let identity = campaign::create_identity_class(&client, "cut").await;
    crate::support::rbac::ensure_operator_identity().await;
    let server = crate::support::rbac::api_server_url();
    let proxy = FaultProxy::tcp(socket_of(&server), 0.0, 0).await;
    let kubeconfig = crate::support::rbac::operator_kubeconfig_with_server(
        &with_port(&server, proxy.addr.port()),
        &format!("via-{}", proxy.addr.port()),
    );
    let op = Operator::start(&[("KUBECONFIG", kubeconfig.to_str().unwrap())]).await;
    wait_started(&op).await;
    let prefix = campaign::prefix("cut");
    let timeout = Duration::from_secs(240);

    let before: Plan = campaign::plan_with_identity(&format!("{prefix}b"), 2, &ns, &identity);
    campaign::create_all(&client, &op, &before).await;
    campaign::wait_all(
        &client,
        &op.run_id,
        || op.log(),
        timeout,
        "Ready before the cut",
        campaign::not_ready(&before),
    )
    .await;

    // The watches (and every other connection) break, with no restart of
    // the API server or the operator to start them again.
    let severed = proxy.sever_all().await;
    assert!(severed > 0, "no connection of the operator was open");
    let after: Plan = campaign::plan_with_identity(&format!("{prefix}a"), 2, &ns, &identity);
    campaign::create_all(&client, &op, &after).await;
    let mut all = before.clone();
    all.extend(after);
    campaign::wait_all(
        &client,
        &op.run_id,
        || op.log(),
        timeout,
        "Ready after the cut",
        campaign::not_ready(&all),
    )
    .await;

    // Deletions after a second cut are seen too.
    assert!(proxy.sever_all().await > 0);
    campaign::delete_and_check(&client, &op, &prefix, &all, timeout).await;

    // A watch that comes back leaves the store behind the API server for a
    // moment; a finalizer patch guarded by the stale resourceVersion is
    // refused (HTTP 422) and must be read again, not reported as a failure.
    let log = op.log();
    let failed: Vec<_> = log
        .lines()
        .filter(|l| l.contains("reconcile failed") && l.contains("422"))
        .collect();
    assert!(
        failed.is_empty(),
        "stale reads reported as failures: {failed:#?}"
    );
}

#[tokio::test]
async fn a_tenant_whose_isolation_could_not_be_measured_is_measured_again_after_the_failure_backoff()
 {
    let client = kube_client().await;
    install_crd(&client).await;
    let ns = create_namespace(&client, "unm").await;
    // Tenants log in through a proxy: the probe's login as the tenant fails
    // while it refuses, and nothing else goes through it.
    let pg_addr = socket_of(&env("TENANTRY_DATABASE_URL"));
    let tenant_side = FaultProxy::tcp(pg_addr, 0.0, 0).await;
    tenant_side.set_refusing(true);
    let port = tenant_side.addr.port().to_string();
    let op = Operator::start(&[
        ("TENANTRY_TENANT_DATABASE_HOST", "127.0.0.1"),
        ("TENANTRY_TENANT_DATABASE_PORT", port.as_str()),
        ("TENANTRY_FAILURE_BACKOFF", "2s"),
        // Only the failure backoff can bring the next measurement in time.
        ("TENANTRY_PROBE_INTERVAL", "1h"),
    ])
    .await;
    let name = crate::support::unique_name("unm");
    let spec = serde_json::json!({"credentials": {"namespace": ns}});
    create_tenant(&client, &tenant_manifest(&op, &name, spec)).await;
    let timeout = Duration::from_secs(120);
    let unmeasured = wait_for_tenant(&client, &op, &name, timeout, "unmeasured", |t| {
        t.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.reason == "IsolationUnknown")
    })
    .await;
    assert_eq!(phase(&unmeasured), Some(tenantry::api::TenantPhase::Failed));

    // The database is reachable again: measured and Ready long before the
    // probe interval.
    tenant_side.set_refusing(false);
    wait_for_tenant(&client, &op, &name, timeout, "Ready", is_ready).await;
    let api: kube::Api<tenantry::api::Tenant> = kube::Api::all(client.clone());
    api.delete(&name, &Default::default()).await.unwrap();
    wait_for_tenant_gone(&client, &op, &name, timeout).await;
}
