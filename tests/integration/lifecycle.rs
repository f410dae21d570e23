//! The Tenant lifecycle end to end: the operator binary against the real
//! kube-apiserver, PostgreSQL and moto.

use std::time::Duration;

use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use sqlx::Connection;
use tenantry::api::{Tenant, TenantPhase};

use crate::support::cluster::*;
use crate::support::readback::{self, footprint};
use crate::support::unique_name;

const READY_TIMEOUT: Duration = Duration::from_secs(90);

async fn setup() -> (Client, Operator, String) {
    let client = kube_client().await;
    install_crd(&client).await;
    let namespace = create_namespace(&client, "apps").await;
    let op = Operator::start(&[]).await;
    (client, op, namespace)
}

fn spec(namespace: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut spec = json!({"displayName": "Test Corp", "credentials": {"namespace": namespace}});
    if let (Some(base), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            base.insert(k.clone(), v.clone());
        }
    }
    spec
}

#[tokio::test]
async fn a_schema_tenant_becomes_ready_with_every_resource_and_working_credentials() {
    let (client, op, ns) = setup().await;
    let name = unique_name("sch");
    create_tenant(&client, &tenant_manifest(&op, &name, spec(&ns, json!({})))).await;
    let t = wait_for_tenant(&client, &op, &name, READY_TIMEOUT, "Ready", is_ready).await;

    let status = t.status.clone().unwrap();
    assert_eq!(status.phase, Some(TenantPhase::Ready));
    assert_eq!(status.observed_generation, t.metadata.generation);
    for c in ["Ready", "Reconciling", "Stalled"] {
        let c = condition(&t, c).unwrap();
        assert_eq!(c.observed_generation, t.metadata.generation);
        assert!(!c.reason.is_empty() && !c.last_transition_time.is_empty());
    }
    assert_eq!(condition(&t, "Stalled").unwrap().status, "False");
    let resources = status.resources.unwrap();
    let ident = format!("t_{}", name.replace('-', "_"));
    assert_eq!(resources.role.as_deref(), Some(ident.as_str()));
    assert_eq!(resources.schema.as_deref(), Some(ident.as_str()));
    assert_eq!(resources.database.as_deref(), Some("tenantry"));
    let secret_ref = format!("{ns}/{name}-credentials");
    assert_eq!(
        resources.kubernetes_secret.as_deref(),
        Some(secret_ref.as_str())
    );

    // The Secret apps mount has every documented key, and they are true.
    let data = readback::kube_secret_data(&client, &ns, &format!("{name}-credentials")).await;
    let keys: Vec<_> = data.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "bucket",
            "ca.crt",
            "database",
            "host",
            "kmsKeyArn",
            "password",
            "port",
            "region",
            "schema",
            "secretArn",
            "url",
            "username"
        ]
    );
    assert_eq!(data["username"], ident);
    assert_eq!(data["kmsKeyArn"], resources.key_arn.clone().unwrap());
    assert_eq!(data["secretArn"], resources.secret_arn.clone().unwrap());
    // The local servers' TLS: the operator's sslmode and CA bundle.
    assert_eq!(
        data["ca.crt"],
        std::fs::read_to_string(crate::support::env("TENANTRY_PG_CA_FILE")).unwrap()
    );
    assert!(data["url"].contains("sslmode=verify-full"));
    let mut conn = sqlx::PgConnection::connect(&data["url"])
        .await
        .expect("tenant logs in with its url");
    let (user, search_path): (String, String) =
        sqlx::query_as("SELECT current_user::text, current_setting('search_path')")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(user, ident);
    assert!(search_path.contains(&ident), "{search_path}");
    sqlx::query("CREATE TABLE orders (id int)")
        .execute(&mut conn)
        .await
        .expect("tenant creates tables in its schema");

    // Secrets Manager holds the same password, encrypted with the tenant's key.
    let aws = readback::aws().await;
    let sm = aws
        .sm
        .get_secret_value()
        .secret_id(resources.secret_arn.clone().unwrap())
        .send()
        .await
        .unwrap();
    let stored: serde_json::Value = serde_json::from_str(sm.secret_string().unwrap()).unwrap();
    assert_eq!(stored["password"], data["password"]);
    let described = aws
        .sm
        .describe_secret()
        .secret_id(resources.secret_arn.unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(described.kms_key_id(), resources.key_arn.as_deref());

    // The bucket is encrypted with that same key.
    let enc = aws
        .s3
        .get_bucket_encryption()
        .bucket(&data["bucket"])
        .send()
        .await
        .unwrap();
    let rule = &enc.server_side_encryption_configuration().unwrap().rules()[0];
    let default = rule.apply_server_side_encryption_by_default().unwrap();
    assert_eq!(default.sse_algorithm().as_str(), "aws:kms");
    assert_eq!(default.kms_master_key_id(), resources.key_arn.as_deref());

    // People watching see what happened; nobody sees the password.
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), "kube-system");
    let reasons: Vec<String> = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name.as_str()))
        .filter_map(|e| e.reason)
        .collect();
    assert!(
        reasons.iter().any(|r| r == "Provisioned"),
        "events: {reasons:?}"
    );
    let tenant_yaml = serde_json::to_string(&t).unwrap();
    for (place, text) in [("operator log", op.log()), ("Tenant object", tenant_yaml)] {
        assert!(
            !text.contains(&data["password"]),
            "the password appears in the {place}"
        );
    }
}

#[tokio::test]
async fn two_tenants_never_share_an_object_and_cannot_reach_each_other() {
    let (client, op, ns) = setup().await;
    let (a, b) = (unique_name("two-a"), unique_name("two-b"));
    for name in [&a, &b] {
        create_tenant(&client, &tenant_manifest(&op, name, spec(&ns, json!({})))).await;
    }
    let ta = wait_for_tenant(&client, &op, &a, READY_TIMEOUT, "Ready", is_ready).await;
    let tb = wait_for_tenant(&client, &op, &b, READY_TIMEOUT, "Ready", is_ready).await;
    let (ra, rb) = (
        ta.status.unwrap().resources.unwrap(),
        tb.status.unwrap().resources.unwrap(),
    );
    assert_ne!(ra.role, rb.role);
    assert_ne!(ra.schema, rb.schema);
    assert_ne!(ra.bucket, rb.bucket);
    assert_ne!(ra.key_arn, rb.key_arn);
    assert_ne!(ra.secret_arn, rb.secret_arn);
    assert_ne!(ra.kubernetes_secret, rb.kubernetes_secret);

    let data_a = readback::kube_secret_data(&client, &ns, &format!("{a}-credentials")).await;
    let data_b = readback::kube_secret_data(&client, &ns, &format!("{b}-credentials")).await;
    assert_ne!(data_a["password"], data_b["password"]);
    let mut conn_b = sqlx::PgConnection::connect(&data_b["url"]).await.unwrap();
    sqlx::query("CREATE TABLE secrets_of_b (v text)")
        .execute(&mut conn_b)
        .await
        .unwrap();
    let mut conn_a = sqlx::PgConnection::connect(&data_a["url"]).await.unwrap();
    let sql = format!(
        "SELECT * FROM {}.secrets_of_b",
        tenantry::naming::quote_ident(rb.schema.as_deref().unwrap())
    );
    let err = sqlx::query(sqlx::AssertSqlSafe(sql))
        .fetch_all(&mut conn_a)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
}

#[tokio::test]
async fn a_database_tenant_becomes_ready_in_its_own_database() {
    let (client, op, ns) = setup().await;
    let name = unique_name("ded");
    let s = spec(
        &ns,
        json!({"database": {"isolation": "Database", "connectionLimit": 7}}),
    );
    create_tenant(&client, &tenant_manifest(&op, &name, s)).await;
    let t = wait_for_tenant(&client, &op, &name, READY_TIMEOUT, "Ready", is_ready).await;
    let ident = format!("t_{}", name.replace('-', "_"));
    let resources = t.status.unwrap().resources.unwrap();
    assert_eq!(resources.database.as_deref(), Some(ident.as_str()));

    let data = readback::kube_secret_data(&client, &ns, &format!("{name}-credentials")).await;
    assert_eq!(data["database"], ident);
    let mut conn = sqlx::PgConnection::connect(&data["url"])
        .await
        .expect("tenant logs in to its database");
    let db: String = sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(db, ident);
    let mut admin = readback::admin_db().await;
    let limit: i32 = sqlx::query_scalar("SELECT rolconnlimit FROM pg_roles WHERE rolname = $1")
        .bind(&ident)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(limit, 7);
}

#[tokio::test]
async fn a_missing_namespace_is_reported_and_the_tenant_proceeds_once_it_exists() {
    let client = kube_client().await;
    install_crd(&client).await;
    let op = Operator::start(&[]).await;
    let name = unique_name("nons");
    let ns = unique_name("later");
    create_tenant(&client, &tenant_manifest(&op, &name, spec(&ns, json!({})))).await;
    let t = wait_for_tenant(
        &client,
        &op,
        &name,
        READY_TIMEOUT,
        "stalled on its namespace",
        |t| {
            condition(t, "Stalled")
                .is_some_and(|c| c.status == "True" && c.reason == "NamespaceMissing")
        },
    )
    .await;
    assert!(condition(&t, "Stalled").unwrap().message.contains(&ns));
    assert_eq!(condition(&t, "Ready").unwrap().status, "False");

    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &Default::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await
        .unwrap();
    // The operator retries missing namespaces every 30 s.
    wait_for_tenant(
        &client,
        &op,
        &name,
        Duration::from_secs(120),
        "Ready",
        is_ready,
    )
    .await;
}

#[tokio::test]
async fn an_invalid_grace_period_is_a_clear_condition_and_nothing_is_made() {
    let (client, op, ns) = setup().await;
    let name = unique_name("bad");
    // The schema accepts the digits-and-unit shape; the reconciler catches the rest.
    let s = spec(
        &ns,
        json!({"deletion": {"policy": "Delete", "gracePeriod": "99999999999999999999h"}}),
    );
    let created = create_tenant(&client, &tenant_manifest(&op, &name, s)).await;
    let t = wait_for_tenant(&client, &op, &name, READY_TIMEOUT, "rejected", |t| {
        condition(t, "Stalled").is_some_and(|c| c.reason == "InvalidSpec")
    })
    .await;
    assert!(
        condition(&t, "Stalled")
            .unwrap()
            .message
            .contains("gracePeriod")
    );
    let fp = footprint(
        &client,
        &name,
        &created.uid().unwrap(),
        &ns,
        &format!("{name}-credentials"),
    )
    .await;
    assert!(fp.is_empty(), "{fp:?}");
}

#[tokio::test]
async fn the_api_server_refuses_names_the_schema_forbids() {
    let client = kube_client().await;
    install_crd(&client).await;
    let op = Operator::start(&[]).await;
    for bad in ["ab", "Upper", "has_underscore", "ends-", &"x".repeat(41)] {
        let api: Api<Tenant> = Api::all(client.clone());
        let err = api
            .create(
                &Default::default(),
                &tenant_manifest(&op, bad, spec("apps", json!({}))),
            )
            .await;
        assert!(err.is_err(), "{bad} was accepted");
    }
}

#[tokio::test]
async fn suspending_revokes_access_and_resuming_restores_it() {
    let (client, op, ns) = setup().await;
    let name = unique_name("sus");
    create_tenant(&client, &tenant_manifest(&op, &name, spec(&ns, json!({})))).await;
    wait_for_tenant(&client, &op, &name, READY_TIMEOUT, "Ready", is_ready).await;
    let secret_name = format!("{name}-credentials");
    let url = readback::kube_secret_data(&client, &ns, &secret_name).await["url"].clone();
    readback::can_log_in(&url)
        .await
        .expect("logs in while active");

    let api: Api<Tenant> = Api::all(client.clone());
    let patch = json!({"spec": {"suspended": true}});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    wait_for_tenant(&client, &op, &name, READY_TIMEOUT, "Suspended", |t| {
        phase(t) == Some(TenantPhase::Suspended)
            && t.status.as_ref().unwrap().observed_generation == t.metadata.generation
    })
    .await;
    let err = readback::can_log_in(&url)
        .await
        .expect_err("login refused while suspended");
    assert!(err.contains("not permitted to log in"), "{err}");
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
    assert!(
        secrets.get_opt(&secret_name).await.unwrap().is_none(),
        "Secret removed while suspended"
    );

    let patch = json!({"spec": {"suspended": false}});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    wait_for_tenant(&client, &op, &name, READY_TIMEOUT, "Ready again", is_ready).await;
    let url_after = readback::kube_secret_data(&client, &ns, &secret_name).await["url"].clone();
    assert_eq!(url_after, url, "the same credentials come back");
    readback::can_log_in(&url)
        .await
        .expect("logs in again after resuming");
}

#[tokio::test]
async fn deleting_with_retain_keeps_everything_for_a_tenant_of_the_same_name_to_adopt() {
    let (client, op, ns) = setup().await;
    let name = unique_name("ret");
    let created = create_tenant(&client, &tenant_manifest(&op, &name, spec(&ns, json!({})))).await;
    let first = wait_for_tenant(&client, &op, &name, READY_TIMEOUT, "Ready", is_ready).await;
    let first_resources = first.status.unwrap().resources.unwrap();
    let secret_name = format!("{name}-credentials");
    let password = readback::kube_secret_data(&client, &ns, &secret_name).await["password"].clone();

    let api: Api<Tenant> = Api::all(client.clone());
    api.delete(&name, &DeleteParams::default()).await.unwrap();
    wait_for_tenant_gone(&client, &op, &name, READY_TIMEOUT).await;
    let fp = footprint(&client, &name, &created.uid().unwrap(), &ns, &secret_name).await;
    assert_eq!(
        (fp.roles, fp.schemas, fp.buckets, fp.live_keys, fp.secrets),
        (1, 1, 1, 1, 1),
        "{fp:?}"
    );

    // A new Tenant with the same name adopts the retained resources.
    let again = create_tenant(&client, &tenant_manifest(&op, &name, spec(&ns, json!({})))).await;
    assert_ne!(again.uid(), created.uid());
    let second = wait_for_tenant(
        &client,
        &op,
        &name,
        READY_TIMEOUT,
        "Ready after adoption",
        is_ready,
    )
    .await;
    let second_resources = second.status.unwrap().resources.unwrap();
    assert_eq!(
        second_resources.key_arn, first_resources.key_arn,
        "the same key was adopted"
    );
    assert_eq!(second_resources.secret_arn, first_resources.secret_arn);
    let data = readback::kube_secret_data(&client, &ns, &secret_name).await;
    // Compared without printing either: a failure message must show no password.
    assert!(
        data["password"] != password,
        "the adopting Tenant gets a new password: whoever held the name before knew the old one"
    );
    readback::can_log_in(&data["url"])
        .await
        .expect("login enabled again after adoption, with the new password");
}

#[tokio::test]
async fn a_failed_return_of_a_retained_tenant_gives_its_data_back_instead_of_destroying_it() {
    let (client, op, ns) = setup().await;
    let name = unique_name("back");
    let ident = format!("t_{}", name.replace('-', "_"));
    create_tenant(&client, &tenant_manifest(&op, &name, spec(&ns, json!({})))).await;
    let first = wait_for_tenant(&client, &op, &name, READY_TIMEOUT, "Ready", is_ready).await;
    let first_resources = first.status.unwrap().resources.unwrap();
    // The customer's data: a table in their schema.
    let mut su = readback::superuser_db_in("tenantry").await;
    let table = format!("{}.orders", tenantry::naming::quote_ident(&ident));
    for sql in [
        format!("CREATE TABLE {table} (id int)"),
        format!("INSERT INTO {table} VALUES (1), (2)"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut su)
            .await
            .unwrap();
    }
    let api: Api<Tenant> = Api::all(client.clone());
    api.delete(&name, &DeleteParams::default()).await.unwrap();
    wait_for_tenant_gone(&client, &op, &name, READY_TIMEOUT).await;

    // The customer returns, but their new credentials namespace holds a
    // Secret of that name that someone else owns: the last step conflicts
    // and the onboarding is rolled back.
    let ns2 = create_namespace(&client, "apps").await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns2);
    let squatter = serde_json::from_value(json!({
        "metadata": {"name": format!("{name}-credentials")},
        "stringData": {"owner": "someone else"}
    }))
    .unwrap();
    secrets
        .create(&Default::default(), &squatter)
        .await
        .unwrap();
    create_tenant(&client, &tenant_manifest(&op, &name, spec(&ns2, json!({})))).await;
    let failed = wait_for_tenant(&client, &op, &name, READY_TIMEOUT, "rolled back", |t| {
        phase(t) == Some(TenantPhase::Failed)
            && condition(t, "Ready").is_some_and(|c| c.reason == "Conflict")
    })
    .await;
    assert!(
        failed
            .status
            .as_ref()
            .and_then(|s| s.provisioning.as_ref())
            .is_some_and(|j| j.steps_done.is_empty() && j.adopted_released.is_empty())
    );

    // Everything the first Tenant kept is still there: given back, not destroyed.
    let rows: i64 =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(&mut su)
            .await
            .expect("the customer's table survived the rollback");
    assert_eq!(rows, 2);
    let aws = readback::aws().await;
    aws.s3
        .head_bucket()
        .bucket(first_resources.bucket.clone().unwrap())
        .send()
        .await
        .expect("the customer's bucket survived the rollback");
    let key = aws
        .kms
        .describe_key()
        .key_id(first_resources.key_alias.clone().unwrap())
        .send()
        .await
        .expect("the key's alias survived the rollback")
        .key_metadata
        .unwrap();
    assert_eq!(
        key.key_state(),
        Some(&aws_sdk_kms::types::KeyState::Enabled),
        "the key is not scheduled for deletion"
    );
    let stored = aws
        .sm
        .describe_secret()
        .secret_id(first_resources.secret_arn.clone().unwrap())
        .send()
        .await
        .expect("the stored credentials survived the rollback");
    assert!(stored.deleted_date().is_none());

    // Once the squatter is gone, the customer gets everything back.
    secrets
        .delete(&format!("{name}-credentials"), &Default::default())
        .await
        .unwrap();
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"displayName": "Back Again"}})),
    )
    .await
    .unwrap();
    let back = wait_for_tenant(&client, &op, &name, READY_TIMEOUT, "Ready", is_ready).await;
    assert_eq!(
        back.status.unwrap().resources.unwrap().key_arn,
        first_resources.key_arn
    );
}

#[tokio::test]
async fn deleting_with_delete_revokes_access_at_once_and_removes_everything_after_the_grace_period()
{
    let (client, op, ns) = setup().await;
    let name = unique_name("del");
    let s = spec(
        &ns,
        json!({"deletion": {"policy": "Delete", "gracePeriod": "30s"}, "database": {"isolation": "Database"}}),
    );
    let created = create_tenant(&client, &tenant_manifest(&op, &name, s)).await;
    wait_for_tenant(&client, &op, &name, READY_TIMEOUT, "Ready", is_ready).await;
    let secret_name = format!("{name}-credentials");
    let url = readback::kube_secret_data(&client, &ns, &secret_name).await["url"].clone();

    let api: Api<Tenant> = Api::all(client.clone());
    api.delete(&name, &DeleteParams::default()).await.unwrap();
    let t = wait_for_tenant(&client, &op, &name, READY_TIMEOUT, "revoked", |t| {
        condition(t, "Ready").is_some_and(|c| c.reason == "AccessRevoked")
    })
    .await;
    assert_eq!(phase(&t), Some(TenantPhase::Deleting));
    assert!(
        readback::can_log_in(&url).await.is_err(),
        "login refused during the grace period"
    );
    // The grace period is long enough for this check even on a loaded
    // machine (the footprint scans every KMS key in moto).
    let fp = footprint(&client, &name, &created.uid().unwrap(), &ns, &secret_name).await;
    assert_eq!(fp.kube_secrets, 0, "Secret removed at once");
    assert_eq!(
        (fp.databases, fp.buckets, fp.live_keys),
        (1, 1, 1),
        "data kept during the grace period: {fp:?}"
    );

    wait_for_tenant_gone(&client, &op, &name, Duration::from_secs(120)).await;
    let fp = footprint(&client, &name, &created.uid().unwrap(), &ns, &secret_name).await;
    assert!(fp.is_empty(), "left behind after deletion: {fp:?}");
}

#[tokio::test]
async fn the_retain_annotation_cancels_a_pending_deletion() {
    let (client, op, ns) = setup().await;
    let name = unique_name("cxl");
    let s = spec(
        &ns,
        json!({"deletion": {"policy": "Delete", "gracePeriod": "1h"}}),
    );
    let created = create_tenant(&client, &tenant_manifest(&op, &name, s)).await;
    wait_for_tenant(&client, &op, &name, READY_TIMEOUT, "Ready", is_ready).await;
    let api: Api<Tenant> = Api::all(client.clone());
    api.delete(&name, &DeleteParams::default()).await.unwrap();
    wait_for_tenant(&client, &op, &name, READY_TIMEOUT, "revoked", |t| {
        condition(t, "Ready").is_some_and(|c| c.reason == "AccessRevoked")
    })
    .await;
    let patch = json!({"metadata": {"annotations": {"tenantry.dev/deletion-policy": "Retain"}}});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    wait_for_tenant_gone(&client, &op, &name, READY_TIMEOUT).await;
    let fp = footprint(
        &client,
        &name,
        &created.uid().unwrap(),
        &ns,
        &format!("{name}-credentials"),
    )
    .await;
    assert_eq!(
        (fp.roles, fp.schemas, fp.buckets, fp.live_keys, fp.secrets),
        (1, 1, 1, 1, 1),
        "{fp:?}"
    );
}

/// Waits until the tenant's credentials Secret holds `expected` again.
async fn secret_holds(
    client: &Client,
    ns: &str,
    name: &str,
    expected: &std::collections::BTreeMap<String, String>,
    what: &str,
) {
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), ns);
    let wait = async {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            if secrets.get_opt(name).await.expect("read Secret").is_some()
                && &readback::kube_secret_data(client, ns, name).await == expected
            {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .unwrap_or_else(|_| {
            panic!("{what}: the credentials Secret {ns}/{name} was not written again within 30 s")
        });
}

/// A deleted or edited credentials Secret of a settled tenant is written
/// again within seconds (its probe is 5 minutes away): the operator watches
/// the Secrets it wrote (metadata only), records the version it wrote in
/// `status.resources.kubernetesSecretVersion`, and says so in an Event.
#[tokio::test]
async fn a_deleted_or_edited_credentials_secret_is_written_again_within_seconds() {
    let (client, op, ns) = setup().await;
    let name = unique_name("keep");
    create_tenant(&client, &tenant_manifest(&op, &name, spec(&ns, json!({})))).await;
    wait_for_tenant(&client, &op, &name, READY_TIMEOUT, "Ready", is_ready).await;
    let secret_name = format!("{name}-credentials");
    let original = readback::kube_secret_data(&client, &ns, &secret_name).await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);

    secrets
        .delete(&secret_name, &DeleteParams::default())
        .await
        .expect("delete the Secret");
    secret_holds(&client, &ns, &secret_name, &original, "after deletion").await;

    secrets
        .patch(
            &secret_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"password": "chosen-by-someone-else"}})),
        )
        .await
        .expect("edit the Secret");
    secret_holds(&client, &ns, &secret_name, &original, "after an edit").await;

    // The status names the version tenantry wrote, which is the Secret's.
    let written = secrets.get(&secret_name).await.unwrap().resource_version();
    let t = wait_for_tenant(
        &client,
        &op,
        &name,
        READY_TIMEOUT,
        "version recorded",
        |t| {
            t.status
                .as_ref()
                .and_then(|s| s.resources.as_ref())
                .and_then(|r| r.kubernetes_secret_version.clone())
                == written
        },
    )
    .await;
    assert!(is_ready(&t));
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), crate::support::rbac::EVENT_NAMESPACE);
    let restored = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name.as_str())
                && e.reason.as_deref() == Some("CredentialsRestored")
        })
        .count();
    assert!(
        restored >= 2,
        "{restored} CredentialsRestored Events, expected one per restore"
    );
}

/// `kubectl get tenants` (the real kubectl 1.33) shows where each tenant
/// lives: its class and isolation mode, and with `-o wide` its Secret.
#[tokio::test]
async fn kubectl_shows_the_class_the_mode_and_wide_the_secret() {
    let (client, op, ns) = setup().await;
    let class = unique_name("cols");
    crate::classes::create_class(&client, &class, json!({})).await;
    let name = unique_name("cols");
    let with_class = spec(&ns, json!({"class": class}));
    create_tenant(&client, &tenant_manifest(&op, &name, with_class)).await;
    wait_for_tenant(&client, &op, &name, READY_TIMEOUT, "Ready", is_ready).await;
    let kubectl = |wide: bool| {
        let mut cmd = std::process::Command::new(crate::support::env("TENANTRY_KUBECTL_133_BIN"));
        cmd.args(["get", "tenant", &name]);
        if wide {
            cmd.args(["-o", "wide"]);
        }
        let out = cmd.output().expect("run kubectl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let mut lines = text.lines();
        let header: Vec<String> = lines
            .next()
            .unwrap()
            .split_whitespace()
            .map(String::from)
            .collect();
        let row: Vec<String> = lines
            .next()
            .unwrap()
            .split_whitespace()
            .map(String::from)
            .collect();
        (header, row)
    };
    let cell = |(header, row): &(Vec<String>, Vec<String>), column: &str| {
        let i = header.iter().position(|h| h == column)?;
        row.get(i).cloned()
    };
    let narrow = kubectl(false);
    assert_eq!(cell(&narrow, "CLASS"), Some(class.clone()), "{narrow:?}");
    assert_eq!(
        cell(&narrow, "MODE").as_deref(),
        Some("Schema"),
        "{narrow:?}"
    );
    assert_eq!(
        cell(&narrow, "SECRET"),
        None,
        "the Secret is for -o wide: {narrow:?}"
    );
    let wide = kubectl(true);
    assert_eq!(
        cell(&wide, "SECRET"),
        Some(format!("{ns}/{name}-credentials")),
        "{wide:?}"
    );
}
