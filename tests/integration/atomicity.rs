//! All or nothing: a conflict at any backend rolls back to nothing, and an
//! operator killed before or after any step converges when restarted, with no
//! duplicate and no orphan.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tenantry::api::TenantPhase;

use crate::support::cluster::*;
use crate::support::readback::{self, Footprint, footprint};
use crate::support::{bucket_prefix, unique_name, unique_uid};

const TIMEOUT: Duration = Duration::from_secs(90);

fn spec(namespace: &str, mode: &str) -> serde_json::Value {
    json!({"credentials": {"namespace": namespace}, "database": {"isolation": mode}})
}

/// Something of the tenant's name that belongs to someone else.
#[derive(Clone, Copy, Debug)]
enum Squatter {
    PostgresRole,
    Bucket,
    KeyAlias,
    SecretsManagerSecret,
    KubernetesSecret,
}

async fn squat(which: Squatter, client: &Client, name: &str, ns: &str) -> Footprint {
    let ident = format!("t_{}", name.replace('-', "_"));
    let aws = readback::aws().await;
    let mut expected = Footprint::default();
    match which {
        Squatter::PostgresRole => {
            let mut su = readback::superuser_db().await;
            let sql = format!(
                "CREATE ROLE {} NOLOGIN",
                tenantry::naming::quote_ident(&ident)
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut su)
                .await
                .unwrap();
            expected.roles = 1;
        }
        Squatter::Bucket => {
            aws.s3
                .create_bucket()
                .bucket(format!("{}-{name}", bucket_prefix()))
                .send()
                .await
                .unwrap();
            expected.buckets = 1;
        }
        Squatter::KeyAlias => {
            let key = aws
                .kms
                .create_key()
                .tags(
                    aws_sdk_kms::types::Tag::builder()
                        .tag_key("tenantry.dev/tenant-uid")
                        .tag_value(unique_uid())
                        .build()
                        .unwrap(),
                )
                .send()
                .await
                .unwrap();
            aws.kms
                .create_alias()
                .alias_name(format!("alias/tenantry/{name}"))
                .target_key_id(key.key_metadata().unwrap().key_id())
                .send()
                .await
                .unwrap();
            expected.aliases = 1;
        }
        Squatter::SecretsManagerSecret => {
            aws.sm
                .create_secret()
                .name(format!("tenantry/{name}/database"))
                .secret_string("{\"owner\": \"someone else\"}")
                .send()
                .await
                .unwrap();
            expected.secrets = 1;
        }
        Squatter::KubernetesSecret => {
            let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
            let secret: Secret = serde_json::from_value(json!({
                "metadata": {"name": format!("{name}-credentials")},
                "stringData": {"owner": "someone else"}
            }))
            .unwrap();
            secrets
                .create(&PostParams::default(), &secret)
                .await
                .unwrap();
            expected.kube_secrets = 1;
        }
    }
    expected
}

async fn conflict_rolls_back_to_nothing(which: Squatter, mode: &str) {
    let client = kube_client().await;
    install_crd(&client).await;
    let ns = create_namespace(&client, "apps").await;
    let op = Operator::start(&[]).await;
    let name = unique_name("cfl");
    let expected = squat(which, &client, &name, &ns).await;

    let created = create_tenant(&client, &tenant_manifest(&op, &name, spec(&ns, mode))).await;
    let t = wait_for_tenant(&client, &op, &name, TIMEOUT, "Failed", |t| {
        phase(t) == Some(TenantPhase::Failed)
    })
    .await;
    let stalled = condition(&t, "Stalled").unwrap();
    assert_eq!(stalled.status, "True");
    assert_eq!(stalled.reason, "Conflict", "{stalled:?}");
    assert!(
        stalled.message.contains("not this tenant's"),
        "{}",
        stalled.message
    );
    assert_eq!(condition(&t, "Ready").unwrap().status, "False");

    // Only the squatter's object remains, untouched.
    let fp = footprint(
        &client,
        &name,
        &created.uid().unwrap(),
        &ns,
        &format!("{name}-credentials"),
    )
    .await;
    assert_eq!(
        fp, expected,
        "{which:?}: the rollback left something behind, or removed what was not ours"
    );
}

#[tokio::test]
async fn a_postgres_role_of_someone_else_rolls_everything_back() {
    conflict_rolls_back_to_nothing(Squatter::PostgresRole, "Schema").await;
}

#[tokio::test]
async fn a_bucket_of_someone_else_rolls_everything_back() {
    conflict_rolls_back_to_nothing(Squatter::Bucket, "Database").await;
}

#[tokio::test]
async fn a_kms_alias_of_someone_else_rolls_everything_back() {
    conflict_rolls_back_to_nothing(Squatter::KeyAlias, "Schema").await;
}

#[tokio::test]
async fn a_secrets_manager_secret_of_someone_else_rolls_everything_back() {
    conflict_rolls_back_to_nothing(Squatter::SecretsManagerSecret, "Schema").await;
}

#[tokio::test]
async fn a_kubernetes_secret_of_someone_else_rolls_everything_back() {
    conflict_rolls_back_to_nothing(Squatter::KubernetesSecret, "Database").await;
}

/// Kills the operator at `failpoint` while it provisions, restarts it, and
/// checks the tenant converges to exactly one of everything.
async fn crash_then_converge(failpoint: &str, mode: &str) {
    let client = kube_client().await;
    install_crd(&client).await;
    let ns = create_namespace(&client, "apps").await;
    let mut op = Operator::start(&[("FAILPOINTS", &format!("{failpoint}=return"))]).await;
    let name = unique_name("crash");
    let created = create_tenant(&client, &tenant_manifest(&op, &name, spec(&ns, mode))).await;
    let code = op.wait_exit(TIMEOUT).await;
    assert_eq!(code, Some(86), "the operator stopped at {failpoint}");

    op.restart_with(&[]).await;
    wait_for_tenant(
        &client,
        &op,
        &name,
        TIMEOUT,
        "Ready after the crash",
        is_ready,
    )
    .await;
    let fp = footprint(
        &client,
        &name,
        &created.uid().unwrap(),
        &ns,
        &format!("{name}-credentials"),
    )
    .await;
    let one = Footprint {
        roles: 1,
        schemas: i64::from(mode == "Schema"),
        databases: i64::from(mode == "Database"),
        buckets: 1,
        live_keys: 1,
        aliases: 1,
        secrets: 1,
        kube_secrets: 1,
        // Classes without `aws.identity`: no IAM role.
        ..Footprint::default()
    };
    assert_eq!(
        fp, one,
        "after a crash at {failpoint}: duplicates or orphans"
    );
}

macro_rules! crash_tests {
    ($($test:ident: $failpoint:literal, $mode:literal;)*) => {
        $(
            #[tokio::test]
            async fn $test() {
                crash_then_converge($failpoint, $mode).await;
            }
        )*
    };
}

crash_tests! {
    crash_before_the_key_converges: "ensure-before-kms-key", "Schema";
    crash_after_the_key_converges: "ensure-after-kms-key", "Database";
    crash_before_the_secret_converges: "ensure-before-secretsmanager-secret", "Schema";
    crash_after_the_secret_converges: "ensure-after-secretsmanager-secret", "Database";
    crash_before_postgres_converges: "ensure-before-postgres", "Database";
    crash_after_postgres_converges: "ensure-after-postgres", "Schema";
    crash_before_the_bucket_converges: "ensure-before-s3-bucket", "Schema";
    crash_after_the_bucket_converges: "ensure-after-s3-bucket", "Database";
    crash_before_the_kubernetes_secret_converges: "ensure-before-kubernetes-secret", "Schema";
    crash_after_the_kubernetes_secret_converges: "ensure-after-kubernetes-secret", "Database";
}

/// Kills the operator in the middle of a rollback; the restarted one finishes
/// it, leaving nothing of the tenant.
async fn crash_during_rollback(failpoint: &str) {
    let client = kube_client().await;
    install_crd(&client).await;
    let ns = create_namespace(&client, "apps").await;
    let mut op = Operator::start(&[("FAILPOINTS", &format!("{failpoint}=return"))]).await;
    let name = unique_name("rbk");
    // A foreign Kubernetes Secret makes the last step fail, so all others roll back.
    let expected = squat(Squatter::KubernetesSecret, &client, &name, &ns).await;
    let created = create_tenant(&client, &tenant_manifest(&op, &name, spec(&ns, "Schema"))).await;
    assert_eq!(op.wait_exit(TIMEOUT).await, Some(86));
    let api: Api<tenantry::api::Tenant> = Api::all(client.clone());
    let mid = api.get(&name).await.unwrap();
    assert_eq!(
        phase(&mid),
        Some(TenantPhase::RollingBack),
        "the journal shows the rollback in progress"
    );

    op.restart_with(&[]).await;
    wait_for_tenant(&client, &op, &name, TIMEOUT, "Failed", |t| {
        phase(t) == Some(TenantPhase::Failed)
    })
    .await;
    let fp = footprint(
        &client,
        &name,
        &created.uid().unwrap(),
        &ns,
        &format!("{name}-credentials"),
    )
    .await;
    assert_eq!(fp, expected, "after a crash at {failpoint} during rollback");
    let _ = created.name_any();
}

#[tokio::test]
async fn a_crash_before_removing_the_bucket_during_rollback_still_leaves_nothing() {
    crash_during_rollback("remove-before-s3-bucket").await;
}

#[tokio::test]
async fn a_crash_after_removing_postgres_during_rollback_still_leaves_nothing() {
    crash_during_rollback("remove-after-postgres").await;
}
