//! Isolation you can prove, end to end: the operator measures every layer as
//! the tenant, repairs drift it finds within one probe interval, and fails
//! closed on drift it has no right to repair.

use std::time::Duration;

use kube::Client;
use serde_json::json;
use sqlx::Connection;
use tenantry::api::{IsolationState, Tenant, TenantPhase};

use crate::support::cluster::*;
use crate::support::readback;
use crate::support::unique_name;

/// Probes every 2 s, so "within one probe interval" fits a test.
const PROBE_INTERVAL: &str = "2s";
const TIMEOUT: Duration = Duration::from_secs(90);

/// A shared table owned by the admin, as a platform's migration would make it.
async fn create_shared_table() -> String {
    let table = unique_name("orders").replace('-', "_");
    let mut admin = readback::admin_db().await;
    let sql = format!(
        "CREATE TABLE public.{} (id serial primary key, tenant_id text not null, body text)",
        tenantry::naming::quote_ident(&table)
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&mut admin)
        .await
        .unwrap();
    table
}

async fn setup(shared_table: Option<&str>) -> (Client, Operator, String) {
    let client = kube_client().await;
    install_crd(&client).await;
    let ns = create_namespace(&client, "iso").await;
    let tables = shared_table.map(|t| format!("public.{t}:tenant_id"));
    let mut env = vec![("TENANTRY_PROBE_INTERVAL", PROBE_INTERVAL)];
    if let Some(tables) = &tables {
        env.push(("TENANTRY_SHARED_TABLES", tables));
    }
    let op = Operator::start(&env).await;
    (client, op, ns)
}

fn enforced(t: &Tenant) -> bool {
    is_ready(t)
        && t.status
            .as_ref()
            .and_then(|s| s.isolation.as_ref())
            .and_then(|i| i.summary)
            == Some(IsolationState::Enforced)
}

fn repairs(t: &Tenant) -> u32 {
    t.status
        .as_ref()
        .and_then(|s| s.isolation.as_ref())
        .map_or(0, |i| i.drift_repairs)
}

async fn ready_tenant(client: &Client, op: &Operator, ns: &str, mode: &str) -> (String, Tenant) {
    let name = unique_name("iso");
    let spec = json!({"credentials": {"namespace": ns}, "database": {"isolation": mode}});
    create_tenant(client, &tenant_manifest(op, &name, spec)).await;
    let t = wait_for_tenant(client, op, &name, TIMEOUT, "Ready and Enforced", enforced).await;
    // Wait for one more probe of the settled tenant, so tampering that
    // follows is found by a probe and not by a reconcile still settling.
    let first = verified_at(&t);
    let t = wait_for_tenant(client, op, &name, TIMEOUT, "probed again", |t| {
        enforced(t) && verified_at(t) != first
    })
    .await;
    (name, t)
}

fn verified_at(t: &Tenant) -> Option<tenantry::api::Timestamp> {
    t.status.as_ref()?.isolation.as_ref()?.verified_at
}

#[tokio::test]
async fn a_ready_tenant_carries_an_attestation_of_every_layer_and_verify_agrees() {
    let table = create_shared_table().await;
    let (client, op, ns) = setup(Some(&table)).await;
    let (name, t) = ready_tenant(&client, &op, &ns, "Database").await;
    let status = t.status.unwrap();
    for c in ["DatabaseIsolated", "StorageIsolated", "EncryptionAtRest"] {
        let c = status.conditions.iter().find(|x| x.type_ == c).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "Enforced"),
            "{c:?}"
        );
    }
    let isolation = status.isolation.unwrap();
    assert!(isolation.verified_at.is_some());
    let db = isolation.database.unwrap();
    let checks: Vec<_> = db.findings.iter().map(|f| f.check.as_str()).collect();
    for expected in ["role.superuser", "role.bypassrls", "canary.read"] {
        assert!(
            checks.contains(&expected),
            "missing {expected} in {checks:?}"
        );
    }
    assert!(
        checks.iter().any(|c| c.contains(&table)),
        "no shared-table check in {checks:?}"
    );

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tenantry"))
        .args(["verify", &name])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["tenant"], name);
    assert_eq!(doc["enforced"], true);
    assert_eq!(doc["isolation"]["summary"], "Enforced");
}

#[tokio::test]
async fn verify_fails_for_a_tenant_that_is_not_measured() {
    let client = kube_client().await;
    install_crd(&client).await;
    // No operator manages this tenant, so nothing ever measures it.
    let op = Operator::start(&[]).await;
    let name = unique_name("unmeasured");
    let mut manifest =
        tenant_manifest(&op, &name, json!({"credentials": {"namespace": "nowhere"}}));
    manifest.metadata.labels = None;
    create_tenant(&client, &manifest).await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tenantry"))
        .args(["verify", &name])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&name));
}

#[tokio::test]
async fn disabled_key_rotation_is_detected_and_repaired_within_a_probe_interval() {
    let (client, op, ns) = setup(None).await;
    let (name, t) = ready_tenant(&client, &op, &ns, "Schema").await;
    let key_arn = t.status.unwrap().resources.unwrap().key_arn.unwrap();
    let aws = readback::aws().await;
    aws.kms
        .disable_key_rotation()
        .key_id(&key_arn)
        .send()
        .await
        .unwrap();
    wait_for_tenant(&client, &op, &name, TIMEOUT, "repaired", |t| {
        repairs(t) >= 1 && enforced(t)
    })
    .await;
    let rotation = aws
        .kms
        .get_key_rotation_status()
        .key_id(&key_arn)
        .send()
        .await
        .unwrap();
    assert!(rotation.key_rotation_enabled());
}

#[tokio::test]
async fn public_access_turned_off_by_hand_is_detected_and_repaired() {
    let (client, op, ns) = setup(None).await;
    let (name, t) = ready_tenant(&client, &op, &ns, "Schema").await;
    let bucket = t.status.unwrap().resources.unwrap().bucket.unwrap();
    let aws = readback::aws().await;
    aws.s3
        .delete_public_access_block()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    wait_for_tenant(&client, &op, &name, TIMEOUT, "repaired", |t| {
        repairs(t) >= 1 && enforced(t)
    })
    .await;
    let bpa = aws
        .s3
        .get_public_access_block()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    let c = bpa.public_access_block_configuration().unwrap();
    assert_eq!(c.block_public_acls(), Some(true));
    assert_eq!(c.restrict_public_buckets(), Some(true));
}

#[tokio::test]
async fn rls_no_longer_forced_on_a_shared_table_is_detected_and_repaired() {
    let table = create_shared_table().await;
    let (client, op, ns) = setup(Some(&table)).await;
    let (name, _) = ready_tenant(&client, &op, &ns, "Schema").await;
    let mut su = readback::superuser_db_in("tenantry").await;
    let sql = format!(
        "ALTER TABLE public.{} NO FORCE ROW LEVEL SECURITY",
        tenantry::naming::quote_ident(&table)
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&mut su)
        .await
        .unwrap();
    wait_for_tenant(&client, &op, &name, TIMEOUT, "repaired", |t| {
        repairs(t) >= 1 && enforced(t)
    })
    .await;
    let forced: bool =
        sqlx::query_scalar("SELECT relforcerowsecurity FROM pg_class WHERE relname = $1")
            .bind(&table)
            .fetch_one(&mut su)
            .await
            .unwrap();
    assert!(forced);
}

#[tokio::test]
async fn bypassrls_granted_by_hand_fails_closed_and_access_returns_once_it_is_gone() {
    let (client, op, ns) = setup(None).await;
    let (name, _) = ready_tenant(&client, &op, &ns, "Schema").await;
    let role = format!("t_{}", name.replace('-', "_"));
    let url = readback::kube_secret_data(&client, &ns, &format!("{name}-credentials")).await["url"]
        .clone();
    let mut su = readback::superuser_db().await;
    let q = tenantry::naming::quote_ident(&role);
    sqlx::query(sqlx::AssertSqlSafe(format!("ALTER ROLE {q} BYPASSRLS")))
        .execute(&mut su)
        .await
        .unwrap();

    let t = wait_for_tenant(&client, &op, &name, TIMEOUT, "failed closed", |t| {
        condition(t, "DatabaseIsolated")
            .is_some_and(|c| c.status == "False" && c.reason == "Broken")
            && condition(t, "Ready").is_some_and(|c| c.message.contains("failed closed"))
    })
    .await;
    assert_eq!(phase(&t), Some(TenantPhase::Failed));
    assert!(
        condition(&t, "Ready")
            .unwrap()
            .message
            .contains("NOBYPASSRLS"),
        "the message says what a superuser must run"
    );
    let err = readback::can_log_in(&url)
        .await
        .expect_err("login disabled while BYPASSRLS");
    assert!(err.contains("not permitted to log in"), "{err}");

    sqlx::query(sqlx::AssertSqlSafe(format!("ALTER ROLE {q} NOBYPASSRLS")))
        .execute(&mut su)
        .await
        .unwrap();
    wait_for_tenant(&client, &op, &name, TIMEOUT, "Ready again", enforced).await;
    let mut conn = sqlx::PgConnection::connect(&url)
        .await
        .expect("access came back by itself");
    let _: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn another_tenant_granted_usage_on_a_schema_is_detected_and_revoked() {
    let (client, op, ns) = setup(None).await;
    let (victim, _) = ready_tenant(&client, &op, &ns, "Schema").await;
    let (intruder, _) = ready_tenant(&client, &op, &ns, "Schema").await;
    let schema = tenantry::naming::quote_ident(&format!("t_{}", victim.replace('-', "_")));
    let intruder_role = tenantry::naming::quote_ident(&format!("t_{}", intruder.replace('-', "_")));
    let mut su = readback::superuser_db_in("tenantry").await;
    let grant = format!("GRANT USAGE ON SCHEMA {schema} TO {intruder_role}");
    sqlx::query(sqlx::AssertSqlSafe(grant))
        .execute(&mut su)
        .await
        .unwrap();

    wait_for_tenant(&client, &op, &victim, TIMEOUT, "repaired", |t| {
        repairs(t) >= 1 && enforced(t)
    })
    .await;
    let still: bool = sqlx::query_scalar("SELECT has_schema_privilege($1, $2, 'USAGE')")
        .bind(format!("t_{}", intruder.replace('-', "_")))
        .bind(format!("t_{}", victim.replace('-', "_")))
        .fetch_one(&mut su)
        .await
        .unwrap();
    assert!(!still, "the intruder's USAGE was revoked");
}

#[tokio::test]
async fn a_dropped_rls_policy_is_detected_and_restored() {
    let table = create_shared_table().await;
    let (client, op, ns) = setup(Some(&table)).await;
    let (name, _) = ready_tenant(&client, &op, &ns, "Database").await;
    let mut su = readback::superuser_db_in("tenantry").await;
    let sql = format!(
        "DROP POLICY tenantry_tenant_isolation ON public.{}",
        tenantry::naming::quote_ident(&table)
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&mut su)
        .await
        .unwrap();
    wait_for_tenant(&client, &op, &name, TIMEOUT, "repaired", |t| {
        repairs(t) >= 1 && enforced(t)
    })
    .await;
    let policies: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_policies WHERE tablename = $1 AND policyname = 'tenantry_tenant_isolation'")
        .bind(&table)
        .fetch_one(&mut su)
        .await
        .unwrap();
    assert_eq!(policies, 1);
}

#[tokio::test]
async fn bucket_encryption_removed_or_pointed_at_another_key_is_detected_and_repaired() {
    let (client, op, ns) = setup(None).await;
    let (name, t) = ready_tenant(&client, &op, &ns, "Schema").await;
    let resources = t.status.unwrap().resources.unwrap();
    let (bucket, key_arn) = (resources.bucket.unwrap(), resources.key_arn.unwrap());
    let aws = readback::aws().await;

    aws.s3
        .delete_bucket_encryption()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    wait_for_tenant(&client, &op, &name, TIMEOUT, "repaired", |t| {
        repairs(t) >= 1 && enforced(t)
    })
    .await;

    let other = aws.kms.create_key().send().await.unwrap();
    let other_arn = other.key_metadata().unwrap().arn().unwrap().to_string();
    let by_default = aws_sdk_s3::types::ServerSideEncryptionByDefault::builder()
        .sse_algorithm(aws_sdk_s3::types::ServerSideEncryption::AwsKms)
        .kms_master_key_id(&other_arn)
        .build()
        .unwrap();
    let config = aws_sdk_s3::types::ServerSideEncryptionConfiguration::builder()
        .rules(
            aws_sdk_s3::types::ServerSideEncryptionRule::builder()
                .apply_server_side_encryption_by_default(by_default)
                .build(),
        )
        .build()
        .unwrap();
    aws.s3
        .put_bucket_encryption()
        .bucket(&bucket)
        .server_side_encryption_configuration(config)
        .send()
        .await
        .unwrap();
    wait_for_tenant(&client, &op, &name, TIMEOUT, "repaired again", |t| {
        repairs(t) >= 2 && enforced(t)
    })
    .await;
    let enc = aws
        .s3
        .get_bucket_encryption()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    let rule = &enc.server_side_encryption_configuration().unwrap().rules()[0];
    assert_eq!(
        rule.apply_server_side_encryption_by_default()
            .unwrap()
            .kms_master_key_id(),
        Some(key_arn.as_str())
    );
}

#[tokio::test]
async fn a_disabled_key_is_detected_and_enabled_again() {
    let (client, op, ns) = setup(None).await;
    let (name, t) = ready_tenant(&client, &op, &ns, "Database").await;
    let key_arn = t.status.unwrap().resources.unwrap().key_arn.unwrap();
    // moto answers some KMS calls given an ARN with a 500; real KMS takes both.
    let key_id = key_arn.rsplit('/').next().unwrap().to_string();
    let aws = readback::aws().await;
    aws.kms.disable_key().key_id(&key_id).send().await.unwrap();
    wait_for_tenant(&client, &op, &name, TIMEOUT, "repaired", |t| {
        repairs(t) >= 1 && enforced(t)
    })
    .await;
    let key = aws.kms.describe_key().key_id(&key_id).send().await.unwrap();
    assert_eq!(
        key.key_metadata().unwrap().key_state().unwrap().as_str(),
        "Enabled"
    );
}

#[tokio::test]
async fn a_tenant_role_made_superuser_is_reported_broken_with_the_remedy() {
    let (client, op, ns) = setup(None).await;
    let (name, _) = ready_tenant(&client, &op, &ns, "Database").await;
    let role = tenantry::naming::quote_ident(&format!("t_{}", name.replace('-', "_")));
    let mut su = readback::superuser_db().await;
    sqlx::query(sqlx::AssertSqlSafe(format!("ALTER ROLE {role} SUPERUSER")))
        .execute(&mut su)
        .await
        .unwrap();
    let t = wait_for_tenant(&client, &op, &name, TIMEOUT, "reported Broken", |t| {
        condition(t, "DatabaseIsolated")
            .is_some_and(|c| c.status == "False" && c.reason == "Broken")
    })
    .await;
    assert_eq!(condition(&t, "Ready").unwrap().status, "False");
    let message = &condition(&t, "Ready").unwrap().message;
    assert!(message.contains("NOSUPERUSER"), "{message}");

    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER ROLE {role} NOSUPERUSER"
    )))
    .execute(&mut su)
    .await
    .unwrap();
    wait_for_tenant(&client, &op, &name, TIMEOUT, "Ready again", enforced).await;
}
