//! The audit trail against the real environment: what the operator records,
//! that the database keeps it append-only, and that tampering done as a
//! superuser is found at the exact row.

use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, DeleteParams};
use serde_json::json;
use sqlx::{Connection, PgPool};
use tenantry::api::Tenant;
use tenantry::audit::anchor::Anchor;
use tenantry::audit::checkpoint::Checkpointer;
use tenantry::audit::{AuditEntry, AuditLog, AuditRow, Outcome};

use crate::support::cluster::*;
use crate::support::readback;
use crate::support::{env, unique_name, unique_uid};

const TIMEOUT: Duration = Duration::from_secs(90);

async fn admin_pool() -> PgPool {
    PgPool::connect(&env("TENANTRY_DATABASE_URL"))
        .await
        .expect("admin pool")
}

/// A schema of its own, so tampering here never disturbs the trail other
/// tests' operators write to.
fn private_schema() -> String {
    unique_name("audit_t").replace('-', "_")
}

pub(crate) async fn drop_schema(schema: &str) {
    let mut su = readback::superuser_db_in("tenantry").await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; DROP ROLE IF EXISTS {schema}_owner"
    )))
    .execute(&mut su)
    .await
    .unwrap();
}

/// Runs `tenantry audit ...` and returns (success, stdout + stderr).
async fn cli(args: &[&str], schema: &str) -> (bool, String) {
    run_cli(args, schema, true).await
}

/// The same without a cluster: only the chains themselves are checked, as
/// for chains seeded here whose tenants never existed as Tenant objects.
async fn cli_without_cluster(args: &[&str], schema: &str) -> (bool, String) {
    run_cli(args, schema, false).await
}

async fn run_cli(args: &[&str], schema: &str, cluster: bool) -> (bool, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tenantry"));
    cmd.arg("audit")
        .args(args)
        .env("TENANTRY_DATABASE_URL", env("TENANTRY_DATABASE_URL"))
        .env("TENANTRY_AUDIT_SCHEMA", schema);
    if !cluster {
        cmd.env("KUBECONFIG", "/nonexistent/kubeconfig");
    }
    let out = cmd.output().await.expect("run tenantry audit");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn is_subsequence(wanted: &[&str], actual: &[String]) -> bool {
    let mut it = actual.iter();
    wanted.iter().all(|w| it.any(|a| a == w))
}

#[tokio::test]
async fn a_tenant_lifecycle_leaves_a_complete_verified_trail_without_secrets() {
    let client = kube_client().await;
    install_crd(&client).await;
    let ns = create_namespace(&client, "aud").await;
    let op = Operator::start(&[("TENANTRY_PROBE_INTERVAL", "2s")]).await;
    let name = unique_name("aud");
    let spec = json!({"credentials": {"namespace": ns},
                      "deletion": {"policy": "Delete", "gracePeriod": "2s"}});
    let created = create_tenant(&client, &tenant_manifest(&op, &name, spec)).await;
    // Measured Enforced, then probed once more as a settled tenant, so the
    // drift below is found by a probe.
    let verified_at = |t: &Tenant| t.status.as_ref()?.isolation.as_ref()?.verified_at;
    let enforced = |t: &Tenant| {
        is_ready(t)
            && t.status
                .as_ref()
                .and_then(|s| s.isolation.as_ref())
                .and_then(|i| i.summary)
                == Some(tenantry::api::IsolationState::Enforced)
    };
    let first = wait_for_tenant(&client, &op, &name, TIMEOUT, "Ready and Enforced", enforced).await;
    let first = verified_at(&first);
    let t = wait_for_tenant(&client, &op, &name, TIMEOUT, "probed again", |t| {
        enforced(t) && verified_at(t) != first
    })
    .await;
    let data = readback::kube_secret_data(&client, &ns, &format!("{name}-credentials")).await;
    let password = data["password"].clone();
    assert_eq!(password.len(), 32);

    // Drift: key rotation turned off by hand, repaired by the operator.
    let key_arn = t.status.unwrap().resources.unwrap().key_arn.unwrap();
    let aws = readback::aws().await;
    aws.kms
        .disable_key_rotation()
        .key_id(&key_arn)
        .send()
        .await
        .unwrap();
    wait_for_tenant(&client, &op, &name, TIMEOUT, "repaired", |t| {
        is_ready(t)
            && t.status
                .as_ref()
                .and_then(|s| s.isolation.as_ref())
                .is_some_and(|i| i.drift_repairs >= 1)
    })
    .await;

    let api: Api<Tenant> = Api::all(client.clone());
    api.delete(&name, &DeleteParams::default()).await.unwrap();
    wait_for_tenant_gone(&client, &op, &name, Duration::from_secs(120)).await;

    let log = AuditLog::new(admin_pool().await, "tenantry_audit", "", "").unwrap();
    let rows = log.log(&name).await.unwrap();
    let actions: Vec<String> = rows.iter().map(|r| r.action.clone()).collect();
    let expected = [
        "kms.key.create",
        "kms.alias.create",
        "kms.key.enable-rotation",
        "secretsmanager.secret.create",
        "postgres.role.create",
        "postgres.schema.create",
        "s3.bucket.create",
        "s3.bucket.encryption",
        "kubernetes.secret.write",
        "drift.detected",
        "kms.key.enable-rotation",
        "drift.repair",
        "tenant.delete",
        // Access goes in the teardown's order (reverse of provisioning):
        // the application's Secret, then the login.
        "kubernetes.secret.delete",
        "postgres.role.login.disable",
        "s3.bucket.delete",
        "postgres.schema.drop",
        "postgres.role.drop",
        "secretsmanager.secret.delete",
        // The key is scheduled before its alias goes, so a removal cut
        // short still finds the key by its alias.
        "kms.key.delete",
        "kms.alias.delete",
        "tenant.tombstone",
    ];
    assert!(
        is_subsequence(&expected, &actions),
        "trail out of order or incomplete: {actions:#?}"
    );
    assert_eq!(actions.last().map(String::as_str), Some("tenant.tombstone"));
    let uid = created.uid().unwrap();
    for row in &rows {
        assert_eq!(row.tenant_uid.as_deref(), Some(uid.as_str()), "{row:?}");
        assert_eq!(row.actor, "tenantry");
        assert!(!row.pod.is_empty());
        assert!(
            row.generation.is_some() && row.resource_version.is_some(),
            "{row:?}"
        );
        assert_eq!(row.outcome, "ok", "{row:?}");
    }
    assert!(rows.windows(2).all(|w| w[0].seq < w[1].seq));

    let (ok, out) = cli(&["verify", "--tenant", &name], "tenantry_audit").await;
    assert!(ok, "audit verify failed on an untouched trail: {out}");
    let (ok, out) = cli(&["log", &name], "tenantry_audit").await;
    assert!(ok, "{out}");
    assert_eq!(out.lines().count(), rows.len(), "{out}");
    assert!(out.contains("\"action\":\"tenant.tombstone\""));

    // The whole table, every tenant's rows, and the operator's own log.
    let mut admin = readback::admin_db().await;
    let dump: String = sqlx::query_scalar(
        "SELECT coalesce(string_agg(e::text, E'\\n'), '') FROM tenantry_audit.events e",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert!(dump.contains(&name));
    assert!(
        !dump.contains(&password),
        "the audit trail holds the password"
    );
    assert!(
        !op.log().contains(&password),
        "the operator log holds the password"
    );
}

async fn seed(log: &AuditLog, tenant: &str, n: usize) -> Vec<i64> {
    let uid = unique_uid();
    let mut seqs = Vec::new();
    for i in 0..n {
        let row = log
            .record(AuditEntry {
                tenant: tenant.to_string(),
                tenant_uid: Some(uid.clone()),
                generation: Some(1),
                resource_version: Some(format!("{}", 100 + i)),
                action: format!("test.step{i}"),
                target: format!("target-{i}"),
                outcome: Outcome::Ok,
                detail: json!({"i": i}),
            })
            .await
            .unwrap();
        seqs.push(row.seq);
    }
    seqs
}

/// What an attacker with superuser rights does: switch the guard off, change
/// rows, switch it on again, in one transaction so no one sees it off.
async fn as_superuser(schema: &str, statements: &[String]) {
    let mut su = readback::superuser_db_in("tenantry").await;
    let mut tx = su.begin().await.unwrap();
    let mut all = vec![format!("ALTER TABLE {schema}.events DISABLE TRIGGER ALL")];
    all.extend(statements.iter().cloned());
    all.push(format!("ALTER TABLE {schema}.events ENABLE TRIGGER ALL"));
    for sql in all {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn edited_deleted_and_reordered_rows_are_reported_at_their_row_and_the_admin_cannot_change_any()
 {
    let schema = private_schema();
    let pool = admin_pool().await;
    let log = AuditLog::new(pool.clone(), &schema, "tenantry", "test-pod").unwrap();
    log.ensure_schema().await.unwrap();
    let (edited, deleted, swapped) = (
        unique_name("aud-edit"),
        unique_name("aud-del"),
        unique_name("aud-swap"),
    );
    let e = seed(&log, &edited, 4).await;
    let d = seed(&log, &deleted, 4).await;
    let s = seed(&log, &swapped, 4).await;
    let (ok, out) = cli_without_cluster(&["verify"], &schema).await;
    assert!(ok, "{out}");

    // The operator's own role may read and append, nothing else: every
    // rewrite, and every way around the guards, is refused.
    let owner = log.owner_role();
    for sql in [
        format!(
            "UPDATE {schema}.events SET target = 'x' WHERE seq = {}",
            e[0]
        ),
        format!("DELETE FROM {schema}.events WHERE seq = {}", e[0]),
        format!("TRUNCATE {schema}.events"),
        format!("ALTER TABLE {schema}.events DISABLE TRIGGER append_only"),
        format!("ALTER TABLE {schema}.events DISABLE TRIGGER ALL"),
        format!("DROP TRIGGER append_only ON {schema}.events"),
        format!("ALTER TABLE {schema}.events OWNER TO CURRENT_USER"),
        format!("DROP TABLE {schema}.events"),
        format!("DROP SCHEMA {schema} CASCADE"),
        format!(
            "CREATE OR REPLACE FUNCTION {schema}.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$"
        ),
        format!("SET ROLE {owner}"),
    ] {
        let refused = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
            .execute(&pool)
            .await;
        assert!(refused.is_err(), "admin was allowed: {sql}");
    }
    // It cannot grant itself a privilege back: a GRANT by a role that does
    // not own the table only warns, and nothing changes.
    let mut admin = readback::admin_db().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "GRANT UPDATE, DELETE ON {schema}.events TO CURRENT_USER"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    let refused = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "UPDATE {schema}.events SET target = 'x' WHERE seq = {}",
        e[0]
    )))
    .execute(&mut admin)
    .await;
    assert!(
        refused.is_err(),
        "admin updated a row after granting itself UPDATE"
    );
    // Even for a superuser, the trigger refuses until switched off.
    let mut su = readback::superuser_db_in("tenantry").await;
    let err = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "UPDATE {schema}.events SET target = 'x' WHERE seq = {}",
        e[0]
    )))
    .execute(&mut su)
    .await
    .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    assert_eq!(log.verify(None).await.unwrap(), vec![]);

    as_superuser(
        &schema,
        &[
            format!(
                "UPDATE {schema}.events SET target = 'somewhere-else' WHERE seq = {}",
                e[2]
            ),
            format!("DELETE FROM {schema}.events WHERE seq = {}", d[1]),
            // Swap every column but seq between two rows.
            format!(
                "UPDATE {schema}.events a SET (at, tenant, tenant_uid, actor, pod, generation, resource_version,
                     action, target, outcome, detail, prev_hash, hash) =
                   (b.at, b.tenant, b.tenant_uid, b.actor, b.pod, b.generation, b.resource_version,
                     b.action, b.target, b.outcome, b.detail, b.prev_hash, b.hash)
                 FROM {schema}.events b
                 WHERE (a.seq, b.seq) IN (({x}, {y}), ({y}, {x}))",
                x = s[1],
                y = s[2]
            ),
        ],
    )
    .await;

    let breaks = log.verify(None).await.unwrap();
    let at = |tenant: &str| breaks.iter().find(|b| b.tenant == tenant).map(|b| b.seq);
    assert_eq!(at(&edited), Some(e[2]), "{breaks:#?}");
    assert_eq!(at(&deleted), Some(d[2]), "{breaks:#?}");
    assert_eq!(at(&swapped), Some(s[1]), "{breaks:#?}");

    for (tenant, seq, field) in [
        (&edited, e[2], "hash"),
        (&deleted, d[2], "prev_hash"),
        (&swapped, s[1], "prev_hash"),
    ] {
        let (ok, out) = cli_without_cluster(&["verify", "--tenant", tenant], &schema).await;
        assert!(!ok, "verify passed on a tampered chain: {out}");
        assert!(
            out.contains(&format!("broken at seq {seq} ")),
            "not reported at seq {seq}: {out}"
        );
        assert!(out.contains(&format!("\"field\":\"{field}\"")), "{out}");
    }
    let (ok, out) = cli_without_cluster(&["verify"], &schema).await;
    assert!(!ok && out.contains("3 audit chain(s) broken"), "{out}");
    drop_schema(&schema).await;
}

#[tokio::test]
async fn the_operator_refuses_to_start_when_the_audit_trigger_was_dropped() {
    let client = kube_client().await;
    install_crd(&client).await;
    let schema = private_schema();
    let mut op = Operator::start(&[("TENANTRY_AUDIT_SCHEMA", &schema)]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !op.log().contains("audit trail verified") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "operator did not start: {}",
            op.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    op.kill().await;

    // A superuser may drop the trigger: the operator must notice and refuse.
    let mut su = readback::superuser_db_in("tenantry").await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP TRIGGER append_only ON {schema}.events"
    )))
    .execute(&mut su)
    .await
    .unwrap();
    op.restart_with(&[("TENANTRY_AUDIT_SCHEMA", &schema)]).await;
    let code = op.wait_exit(Duration::from_secs(30)).await;
    assert_ne!(code, Some(0));
    let log = op.log();
    assert!(
        log.contains("trigger append_only was dropped") && log.contains("refuses to run"),
        "{log}"
    );
    drop_schema(&schema).await;
}

#[tokio::test]
async fn a_change_whose_audit_row_cannot_be_written_fails_its_step() {
    let client = kube_client().await;
    install_crd(&client).await;
    let ns = create_namespace(&client, "aud").await;
    let schema = private_schema();
    let op = Operator::start(&[("TENANTRY_AUDIT_SCHEMA", &schema)]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !op.log().contains("audit trail verified") {
        assert!(tokio::time::Instant::now() < deadline, "{}", op.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Only the store's owner (or a superuser) can take the admin's INSERT.
    let admin_name = url::Url::parse(&env("TENANTRY_DATABASE_URL"))
        .unwrap()
        .username()
        .to_string();
    let mut su = readback::superuser_db_in("tenantry").await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "REVOKE INSERT ON {schema}.events FROM {admin_name}"
    )))
    .execute(&mut su)
    .await
    .unwrap();

    let name = unique_name("aud-fail");
    let spec = json!({"credentials": {"namespace": ns}});
    create_tenant(&client, &tenant_manifest(&op, &name, spec)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !op.log().contains("audit trail: append a row") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            tail(&op.log(), 40)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The step whose row could not be written is not reported done, not even
    // after the operator has come back to it: wait for a second refusal.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while op.log().matches("audit trail: append a row").count() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            tail(&op.log(), 40)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let api: Api<Tenant> = Api::all(client.clone());
    let t = api.get(&name).await.unwrap();
    assert!(!is_ready(&t));
    let journal = t.status.and_then(|s| s.provisioning);
    assert!(
        journal
            .as_ref()
            .is_none_or(|j| j.steps_done.is_empty() && !j.provisioned),
        "{journal:?}"
    );

    // Once rows can be written again, provisioning resumes, adopting the key
    // whose creation went unrecorded, and the trail says so.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "GRANT INSERT ON {schema}.events TO {admin_name}"
    )))
    .execute(&mut su)
    .await
    .unwrap();
    wait_for_tenant(&client, &op, &name, TIMEOUT, "Ready", is_ready).await;
    let log = AuditLog::new(admin_pool().await, &schema, "", "").unwrap();
    let actions: Vec<String> = log
        .log(&name)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.action)
        .collect();
    assert!(
        is_subsequence(
            &[
                "kms.key.adopt",
                "kms.alias.create",
                "kubernetes.secret.write"
            ],
            &actions
        ),
        "{actions:?}"
    );
    assert_eq!(log.verify(Some(&name)).await.unwrap(), vec![]);
    drop(op);
    drop_schema(&schema).await;
}

#[tokio::test]
async fn rows_removed_from_the_end_of_a_chain_are_caught_by_the_head_in_the_tenant_status() {
    let schema = private_schema();
    let client = kube_client().await;
    install_crd(&client).await;
    let ns = create_namespace(&client, "audit").await;
    let mut op = Operator::start(&[("TENANTRY_AUDIT_SCHEMA", schema.as_str())]).await;
    let name = unique_name("tail");
    let spec = json!({"credentials": {"namespace": ns}});
    create_tenant(&client, &tenant_manifest(&op, &name, spec)).await;
    let t = wait_for_tenant(
        &client,
        &op,
        &name,
        TIMEOUT,
        "Ready with a chain head",
        |t| is_ready(t) && t.status.as_ref().is_some_and(|s| s.audit_head.is_some()),
    )
    .await;
    let head = t.status.unwrap().audit_head.unwrap();
    op.kill().await;
    let (ok, out) = cli(&["verify", "--tenant", &name], &schema).await;
    assert!(ok, "{out}");

    // The chain that is left is internally consistent: only the head kept in
    // the Tenant's status shows that its end is gone.
    let tenant = tenantry::naming::quote_literal(&name);
    as_superuser(
        &schema,
        &[format!(
            "DELETE FROM {schema}.events WHERE tenant = {tenant} AND seq = (SELECT max(seq) FROM {schema}.events WHERE tenant = {tenant})"
        )],
    )
    .await;
    let (ok, out) = cli(&["verify", "--tenant", &name], &schema).await;
    assert!(!ok, "verify passed after the newest row was deleted: {out}");
    assert!(out.contains(&format!("row seq {}", head.seq)), "{out}");
    assert!(out.contains("removed from the end"), "{out}");
    drop_schema(&schema).await;
}

#[tokio::test]
async fn a_removed_tombstone_of_a_deleted_tenant_is_caught() {
    let schema = private_schema();
    let client = kube_client().await;
    install_crd(&client).await;
    let ns = create_namespace(&client, "audit").await;
    let mut op = Operator::start(&[("TENANTRY_AUDIT_SCHEMA", schema.as_str())]).await;
    let (gone, kept) = (unique_name("tomb"), unique_name("kept"));
    for (name, policy) in [(&gone, "Delete"), (&kept, "Retain")] {
        let spec = json!({"credentials": {"namespace": ns},
                          "deletion": {"policy": policy, "gracePeriod": "1s"}});
        create_tenant(&client, &tenant_manifest(&op, name, spec)).await;
        wait_for_tenant(&client, &op, name, TIMEOUT, "Ready", is_ready).await;
    }
    let api: Api<Tenant> = Api::all(client.clone());
    for name in [&gone, &kept] {
        api.delete(name, &DeleteParams::default()).await.unwrap();
        wait_for_tenant_gone(&client, &op, name, TIMEOUT).await;
    }
    op.kill().await;
    for name in [&gone, &kept] {
        let (ok, out) = cli(&["verify", "--tenant", name], &schema).await;
        assert!(ok, "{out}");
    }

    let tenant = tenantry::naming::quote_literal(&gone);
    as_superuser(
        &schema,
        &[format!(
            "DELETE FROM {schema}.events WHERE tenant = {tenant} AND action = 'tenant.tombstone'"
        )],
    )
    .await;
    let (ok, out) = cli(&["verify", "--tenant", &gone], &schema).await;
    assert!(!ok, "verify passed without the tombstone: {out}");
    assert!(out.contains("the Tenant is gone"), "{out}");
    let (ok, out) = cli(&["verify", "--tenant", &kept], &schema).await;
    assert!(ok, "a Retain deletion ends its chain on purpose too: {out}");
    drop_schema(&schema).await;
}

/// A trail written by a version whose admin owned the store.
async fn create_store_of_the_previous_version(schema: &str) {
    let mut admin = readback::admin_db().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA {schema};
         CREATE TABLE {schema}.events (
             seq bigserial PRIMARY KEY, at timestamptz NOT NULL, tenant text NOT NULL,
             tenant_uid text, actor text NOT NULL, pod text NOT NULL, generation bigint,
             resource_version text, action text NOT NULL, target text NOT NULL,
             outcome text NOT NULL, detail jsonb NOT NULL, prev_hash text NOT NULL,
             hash text NOT NULL);
         CREATE INDEX events_tenant_seq ON {schema}.events (tenant, seq);
         CREATE FUNCTION {schema}.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'tenantry audit rows are append-only: % refused', TG_OP
           USING ERRCODE = 'insufficient_privilege'; END $$;
         CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON {schema}.events
           FOR EACH ROW EXECUTE FUNCTION {schema}.refuse_change();
         CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON {schema}.events
           FOR EACH STATEMENT EXECUTE FUNCTION {schema}.refuse_change();
         REVOKE UPDATE, DELETE, TRUNCATE ON {schema}.events FROM PUBLIC, CURRENT_USER"
    )))
    .execute(&mut admin)
    .await
    .expect("the previous version's store");
}

/// Issue 15, path 3, migration: a store the admin owned (as every version
/// before this one made it) is handed to the owner role on the next start,
/// its rows kept and still verified, and from then on the admin can no
/// longer change what guards it.
#[tokio::test]
async fn a_trail_of_the_previous_version_is_handed_to_its_owner_role_with_its_rows() {
    let schema = private_schema();
    create_store_of_the_previous_version(&schema).await;
    let pool = admin_pool().await;
    // The admin owns it: it can switch its guard off, as the attack needs.
    let mut admin = readback::admin_db().await;
    let mut tx = admin.begin().await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE {schema}.events DISABLE TRIGGER append_only"
    )))
    .execute(&mut *tx)
    .await
    .expect("the previous version's admin owns the trail");
    tx.rollback().await.unwrap();

    let log = AuditLog::new(pool.clone(), &schema, "tenantry", "test-pod").unwrap();
    // Rows written by the previous version (same row format).
    let tenant = unique_name("aud-mig");
    let before = seed(&log, &tenant, 3).await;
    log.ensure_schema().await.expect("the store is migrated");
    log.ensure_schema().await.expect("and then only checked");

    let owners: Vec<String> = sqlx::query_scalar(
        "SELECT pg_get_userbyid(nspowner)::text FROM pg_namespace WHERE nspname = $1 \
         UNION ALL SELECT pg_get_userbyid(relowner)::text FROM pg_class WHERE oid = to_regclass($2)",
    )
    .bind(&schema)
    .bind(format!("{schema}.events"))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(owners, vec![log.owner_role(), log.owner_role()]);
    let refused = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE {schema}.events DISABLE TRIGGER append_only"
    )))
    .execute(&pool)
    .await;
    assert!(refused.is_err(), "the admin still owns the migrated trail");
    let after = seed(&log, &tenant, 1).await;
    let rows = log.log(&tenant).await.unwrap();
    assert_eq!(
        rows.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [before, after].concat()
    );
    assert_eq!(log.verify(None).await.unwrap(), vec![]);
    drop_schema(&schema).await;
}

fn anchor_for(schema: &str, config: &aws_config::SdkConfig) -> Anchor {
    Anchor::new(
        config,
        true,
        &env("TENANTRY_AUDIT_ANCHOR_BUCKET"),
        "alias/tenantry-audit",
        Duration::from_secs(86_400),
    )
    .for_trail(schema)
}

/// What a superuser who knows the row format does: rewrite a tenant's chain
/// and recompute every hash, so that the chain verifies again.
async fn rewrite_chain(
    schema: &str,
    log: &AuditLog,
    tenant: &str,
    change: impl FnOnce(&mut Vec<AuditRow>),
) {
    let mut rows = log.log(tenant).await.unwrap();
    change(&mut rows);
    let mut prev = tenantry::audit::GENESIS.to_string();
    for row in &mut rows {
        row.prev_hash = prev.clone();
        row.hash = tenantry::audit::row_hash(row);
        prev = row.hash.clone();
    }
    let mut su = readback::superuser_db_in("tenantry").await;
    let mut tx = su.begin().await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE {schema}.events DISABLE TRIGGER ALL"
    )))
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM {schema}.events WHERE tenant = $1"
    )))
    .bind(tenant)
    .execute(&mut *tx)
    .await
    .unwrap();
    for r in &rows {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {schema}.events (seq, at, tenant, tenant_uid, actor, pod, generation, resource_version,
                 action, target, outcome, detail, prev_hash, hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        )))
        .bind(r.seq)
        .bind(r.at)
        .bind(&r.tenant)
        .bind(&r.tenant_uid)
        .bind(&r.actor)
        .bind(&r.pod)
        .bind(r.generation)
        .bind(&r.resource_version)
        .bind(&r.action)
        .bind(&r.target)
        .bind(&r.outcome)
        .bind(&r.detail)
        .bind(&r.prev_hash)
        .bind(&r.hash)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE {schema}.events ENABLE TRIGGER ALL"
    )))
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

/// Issue 15, path 3: a superuser rewrites the trail and recomputes every
/// hash, so each chain verifies on its own. Against the checkpoints in the
/// anchor (MAC'd by KMS, under Object Lock), `tenantry audit verify` still
/// finds each: a row edited, a row removed, a whole tenant's chain removed,
/// the tail cut; and a checkpoint planted in the bucket fails its MAC.
#[tokio::test]
async fn verify_against_the_anchor_finds_what_a_superuser_rewrote_with_recomputed_hashes() {
    let schema = private_schema();
    let pool = admin_pool().await;
    let log = AuditLog::new(pool.clone(), &schema, "tenantry", "test-pod").unwrap();
    log.ensure_schema().await.unwrap();
    let config = tenantry::backends::aws::load_sdk_config().await;
    let anchor = anchor_for(&schema, &config);
    anchor.ensure().await.expect("the anchor");
    let [edited, removed, gone, cut, untouched] =
        ["aud-edit", "aud-rm", "aud-gone", "aud-cut", "aud-ok"].map(unique_name);
    for tenant in [&edited, &removed, &gone, &cut, &untouched] {
        seed(&log, tenant, 4).await;
    }
    let mut checkpointer = Checkpointer::new(log.clone(), Some(anchor_for(&schema, &config)));
    let first = checkpointer.tick().await.unwrap();
    assert_eq!(first, Some(1));
    assert_eq!(checkpointer.tick().await.unwrap(), None, "nothing moved");
    let (ok, out) = cli_without_cluster(&["verify"], &schema).await;
    assert!(ok && out.contains("1 checkpoint(s)"), "{out}");

    rewrite_chain(&schema, &log, &edited, |rows| {
        rows[1].target = "somewhere-else".into();
    })
    .await;
    rewrite_chain(&schema, &log, &removed, |rows| {
        rows.remove(1);
    })
    .await;
    rewrite_chain(&schema, &log, &gone, Vec::clear).await;
    rewrite_chain(&schema, &log, &cut, |rows| {
        rows.pop();
    })
    .await;
    // Each chain is consistent on its own: without the anchor, nothing shows.
    assert_eq!(log.verify(None).await.unwrap(), vec![]);

    let (ok, out) = cli_without_cluster(&["verify"], &schema).await;
    assert!(!ok, "verify passed a rewritten trail: {out}");
    for (tenant, says) in [
        (&edited, "its hashes recomputed"),
        // A row taken out of the middle changes every hash after it.
        (&removed, "its hashes recomputed"),
        (&gone, "its whole chain is gone"),
        (&cut, "is missing: rows were removed"),
    ] {
        assert!(
            out.lines()
                .any(|l| l.contains(&format!("tenant {tenant}:")) && l.contains(says)),
            "{tenant}: not reported as {says:?}: {out}"
        );
    }
    assert!(!out.contains(&format!("tenant {untouched}:")), "{out}");
    assert!(out.contains("4 problem(s) against the anchor"), "{out}");

    // Whoever may write the bucket plants a checkpoint of its own: its MAC
    // cannot be made without the key.
    let forged = tenantry::audit::checkpoint::encode(b"{}", &[0u8; 32]);
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(true)
            .build(),
    );
    s3.put_object()
        .bucket(env("TENANTRY_AUDIT_ANCHOR_BUCKET"))
        .key(anchor.checkpoint_key(2))
        .body(forged.into())
        .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Sha256)
        .send()
        .await
        .expect("plant an object");
    let (ok, out) = cli_without_cluster(&["verify", "--tenant", &untouched], &schema).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("checkpoint 2 cannot be read")
            || out.contains("checkpoint 2: its MAC does not verify"),
        "{out}"
    );
    drop_schema(&schema).await;
}

/// Issue 15, path 3: the guards are checked while the operator runs, not
/// only at start. The admin can still take a step PostgreSQL allows a
/// CREATEROLE role (making itself a member of the owner role); at the next
/// round the operator notices, and from then on refuses every change,
/// because none could be recorded in a trail it can no longer trust.
#[tokio::test]
async fn a_store_tampered_with_while_the_operator_runs_stops_every_change() {
    let client = kube_client().await;
    install_crd(&client).await;
    let ns = create_namespace(&client, "aud").await;
    let schema = private_schema();
    let op = Operator::start(&[
        ("TENANTRY_AUDIT_SCHEMA", &schema),
        ("TENANTRY_AUDIT_CHECKPOINT_INTERVAL", "1s"),
    ])
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !op.log().contains("audit trail verified") {
        assert!(tokio::time::Instant::now() < deadline, "{}", op.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = AuditLog::new(admin_pool().await, &schema, "", "").unwrap();
    let mut admin = readback::admin_db().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "GRANT {} TO CURRENT_USER",
        log.owner_role()
    )))
    .execute(&mut admin)
    .await
    .expect("CREATEROLE lets the admin join the owner role");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !op.log().contains("member of the owner role") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            tail(&op.log(), 40)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let name = unique_name("aud-tamper");
    let spec = json!({"credentials": {"namespace": ns}});
    create_tenant(&client, &tenant_manifest(&op, &name, spec)).await;
    let t = wait_for_tenant(&client, &op, &name, TIMEOUT, "refused for the trail", |t| {
        t.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == "False" && c.message.contains("tampered with"))
    })
    .await;
    assert!(!is_ready(&t));
    assert_eq!(
        log.log(&name).await.unwrap(),
        vec![],
        "a change was recorded in a distrusted trail"
    );
    drop(op);
    drop_schema(&schema).await;
}
