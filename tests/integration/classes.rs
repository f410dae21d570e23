//! TenantClasses against the real API server, both PostgreSQL clusters and
//! moto: tenants land on their class's server, with its mode, bucket prefix
//! and principal; a missing class is a clear condition; class changes reach
//! the tenants; a live tenant is never moved.

use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use sqlx::{Connection, PgConnection};
use tenantry::api::{Tenant, TenantClass, TenantPhase};

use crate::support::cluster::*;
use crate::support::readback::{self, footprint};
use crate::support::{env, unique_name};

const READY_TIMEOUT: Duration = Duration::from_secs(90);

async fn setup() -> (Client, Operator, String) {
    let client = kube_client().await;
    install_crd(&client).await;
    let namespace = create_namespace(&client, "apps").await;
    let op = Operator::start(&[]).await;
    (client, op, namespace)
}

/// A Secret holding the second cluster's admin URL, as a platform team
/// would give a dedicated server to an enterprise tier.
async fn second_server_secret(client: &Client, namespace: &str) -> String {
    let name = unique_name("pg2");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    secrets
        .create(
            &PostParams::default(),
            &Secret {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    ..Default::default()
                },
                data: Some(
                    [(
                        "url".to_string(),
                        ByteString(env("TENANTRY_DATABASE_URL_2").into_bytes()),
                    )]
                    .into(),
                ),
                ..Default::default()
            },
        )
        .await
        .expect("create admin URL Secret");
    name
}

pub(crate) async fn create_class(
    client: &Client,
    name: &str,
    spec: serde_json::Value,
) -> TenantClass {
    let classes: Api<TenantClass> = Api::all(client.clone());
    let class: TenantClass = serde_json::from_value(json!({
        "apiVersion": "tenantry.dev/v1alpha1",
        "kind": "TenantClass",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("valid TenantClass");
    classes
        .create(&PostParams::default(), &class)
        .await
        .expect("create TenantClass")
}

async fn patch_class(client: &Client, name: &str, patch: serde_json::Value) {
    let classes: Api<TenantClass> = Api::all(client.clone());
    classes
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .expect("patch TenantClass");
}

async fn patch_tenant(client: &Client, name: &str, patch: serde_json::Value) {
    let tenants: Api<Tenant> = Api::all(client.clone());
    tenants
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .expect("patch Tenant");
}

async fn connect(url: &str) -> PgConnection {
    PgConnection::connect(url)
        .await
        .expect("connect as superuser")
}

async fn role_exists(db: &mut PgConnection, role: &str) -> bool {
    sqlx::query_scalar("SELECT count(*) = 1 FROM pg_roles WHERE rolname = $1")
        .bind(role)
        .fetch_one(db)
        .await
        .expect("read pg_roles")
}

async fn database_exists(db: &mut PgConnection, database: &str) -> bool {
    sqlx::query_scalar("SELECT count(*) = 1 FROM pg_database WHERE datname = $1")
        .bind(database)
        .fetch_one(db)
        .await
        .expect("read pg_database")
}

fn ident(name: &str) -> String {
    format!("t_{}", name.replace('-', "_"))
}

async fn bucket_policy(aws: &readback::Aws, bucket: &str) -> serde_json::Value {
    let policy = aws
        .s3
        .get_bucket_policy()
        .bucket(bucket)
        .send()
        .await
        .expect("read bucket policy")
        .policy
        .expect("bucket has a policy");
    serde_json::from_str(&policy).expect("policy is JSON")
}

async fn key_policy(aws: &readback::Aws, key_arn: &str) -> serde_json::Value {
    let key_id = key_arn.rsplit('/').next().unwrap();
    let policy = aws
        .kms
        .get_key_policy()
        .key_id(key_id)
        .policy_name("default")
        .send()
        .await
        .expect("read key policy")
        .policy
        .expect("key has a policy");
    serde_json::from_str(&policy).expect("policy is JSON")
}

/// The principals named by a policy's Allow statements.
fn allowed_principals(policy: &serde_json::Value) -> Vec<String> {
    policy["Statement"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["Effect"] == "Allow")
        .filter_map(|s| s["Principal"]["AWS"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn tenants_of_two_classes_land_on_their_own_servers_with_their_settings() {
    let (client, op, ns) = setup().await;
    let secret = second_server_secret(&client, &ns).await;
    let standard = unique_name("standard");
    let enterprise = unique_name("enterprise");
    create_class(&client, &standard, json!({})).await;
    create_class(
        &client,
        &enterprise,
        json!({
            "postgres": {"adminUrlSecretRef": {"namespace": ns, "name": secret}},
            "isolation": {"defaultMode": "Database", "allowOverride": false},
            "aws": {
                "bucketPrefix": "tenantry-ent",
                "principal": "arn:aws:iam::123456789012:role/app-{tenant}",
            },
            "deletion": {"policy": "Delete", "gracePeriod": "1s"},
        }),
    )
    .await;

    let std_tenant = unique_name("std");
    let ent_tenant = unique_name("ent");
    let spec = |class: &str| json!({"class": class, "credentials": {"namespace": ns}});
    create_tenant(&client, &tenant_manifest(&op, &std_tenant, spec(&standard))).await;
    create_tenant(
        &client,
        &tenant_manifest(&op, &ent_tenant, spec(&enterprise)),
    )
    .await;
    let s = wait_for_tenant(&client, &op, &std_tenant, READY_TIMEOUT, "Ready", is_ready).await;
    let e = wait_for_tenant(&client, &op, &ent_tenant, READY_TIMEOUT, "Ready", is_ready).await;

    let mut pg1 = connect(&env("TENANTRY_TEST_SUPERUSER_URL")).await;
    let mut pg2 = connect(&env("TENANTRY_TEST_SUPERUSER_URL_2")).await;

    // The standard tenant: a schema on the operator's own server only.
    let s_status = s.status.clone().unwrap();
    assert_eq!(s_status.placement.as_ref().unwrap().class, standard);
    assert_eq!(
        s_status.resources.as_ref().unwrap().schema.as_deref(),
        Some(ident(&std_tenant).as_str())
    );
    assert!(role_exists(&mut pg1, &ident(&std_tenant)).await);
    assert!(!role_exists(&mut pg2, &ident(&std_tenant)).await);

    // The enterprise tenant: its own database on the dedicated server, and
    // nothing on the shared one.
    let e_status = e.status.clone().unwrap();
    let placement = e_status.placement.clone().unwrap();
    assert_eq!(placement.class, enterprise);
    let port2 = url::Url::parse(&env("TENANTRY_DATABASE_URL_2"))
        .unwrap()
        .port()
        .unwrap();
    assert!(
        placement.server.contains(&format!(":{port2}/")),
        "{placement:?}"
    );
    let resources = e_status.resources.clone().unwrap();
    assert_eq!(
        resources.database.as_deref(),
        Some(ident(&ent_tenant).as_str())
    );
    assert!(role_exists(&mut pg2, &ident(&ent_tenant)).await);
    assert!(database_exists(&mut pg2, &ident(&ent_tenant)).await);
    assert!(!role_exists(&mut pg1, &ident(&ent_tenant)).await);
    assert!(!database_exists(&mut pg1, &ident(&ent_tenant)).await);

    // The credentials apps get point at the dedicated server and work there.
    let data = readback::kube_secret_data(&client, &ns, &format!("{ent_tenant}-credentials")).await;
    assert_eq!(data["port"], port2.to_string());
    readback::can_log_in(&data["url"])
        .await
        .expect("the enterprise tenant logs in on its server");

    // The class's bucket prefix and principal, in the bucket and key policies.
    let bucket = resources.bucket.clone().unwrap();
    assert_eq!(bucket, format!("tenantry-ent-{ent_tenant}"));
    let aws = readback::aws().await;
    let principal = format!("arn:aws:iam::123456789012:role/app-{ent_tenant}");
    assert_eq!(
        allowed_principals(&bucket_policy(&aws, &bucket).await),
        std::slice::from_ref(&principal)
    );
    assert!(
        allowed_principals(&key_policy(&aws, resources.key_arn.as_deref().unwrap()).await)
            .contains(&principal)
    );
    // The standard tenant's policies name no principal.
    let s_resources = s_status.resources.unwrap();
    assert!(
        allowed_principals(&bucket_policy(&aws, s_resources.bucket.as_deref().unwrap()).await)
            .is_empty()
    );

    // The class's deletion default applies: Delete with a 1 s grace period
    // removes everything from the dedicated server.
    let tenants: Api<Tenant> = Api::all(client.clone());
    tenants
        .delete(&ent_tenant, &Default::default())
        .await
        .expect("delete Tenant");
    wait_for_tenant_gone(&client, &op, &ent_tenant, READY_TIMEOUT).await;
    assert!(!role_exists(&mut pg2, &ident(&ent_tenant)).await);
    assert!(!database_exists(&mut pg2, &ident(&ent_tenant)).await);
}

#[tokio::test]
async fn a_missing_class_is_a_clear_condition_until_the_class_exists() {
    let (client, op, ns) = setup().await;
    let class = unique_name("later");
    let name = unique_name("orphan");
    let created = create_tenant(
        &client,
        &tenant_manifest(
            &op,
            &name,
            json!({"class": class, "credentials": {"namespace": ns}}),
        ),
    )
    .await;
    let t = wait_for_tenant(&client, &op, &name, READY_TIMEOUT, "ClassNotFound", |t| {
        condition(t, "Ready").is_some_and(|c| c.reason == "ClassNotFound")
    })
    .await;
    assert_eq!(phase(&t), Some(TenantPhase::Failed));
    let ready = condition(&t, "Ready").unwrap();
    assert_eq!(ready.status, "False");
    assert!(ready.message.contains(&class), "{}", ready.message);
    assert_eq!(condition(&t, "Stalled").unwrap().status, "True");
    // Nothing was made anywhere.
    let uid = created.uid().unwrap();
    assert!(
        footprint(&client, &name, &uid, &ns, &format!("{name}-credentials"))
            .await
            .is_empty()
    );

    // The class appears: the tenant proceeds without any change of its own.
    create_class(&client, &class, json!({})).await;
    wait_for_tenant(&client, &op, &name, READY_TIMEOUT, "Ready", is_ready).await;
}

#[tokio::test]
async fn a_class_change_reaches_its_tenants_and_a_forbidden_mode_is_refused() {
    let (client, op, ns) = setup().await;
    let class = unique_name("tier");
    // A long probe interval: only the class watch can bring the change soon.
    create_class(&client, &class, json!({"probeInterval": "1h"})).await;
    let name = unique_name("tiered");
    create_tenant(
        &client,
        &tenant_manifest(
            &op,
            &name,
            json!({"class": class, "credentials": {"namespace": ns}}),
        ),
    )
    .await;
    let t = wait_for_tenant(&client, &op, &name, READY_TIMEOUT, "Ready", is_ready).await;
    let bucket = t.status.unwrap().resources.unwrap().bucket.unwrap();
    let aws = readback::aws().await;
    assert!(allowed_principals(&bucket_policy(&aws, &bucket).await).is_empty());

    patch_class(
        &client,
        &class,
        json!({"spec": {"aws": {"principal": "arn:aws:iam::123456789012:role/{tenant}-app"}}}),
    )
    .await;
    let wanted = format!("arn:aws:iam::123456789012:role/{name}-app");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while allowed_principals(&bucket_policy(&aws, &bucket).await) != [wanted.clone()] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the class's new principal never reached bucket {bucket}; operator log:\n{}",
            tail(&op.log(), 40)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The class now promises dedicated databases only: the Schema tenant is
    // told so, and keeps everything it has.
    patch_class(
        &client,
        &class,
        json!({"spec": {"isolation": {"defaultMode": "Database", "allowOverride": false}}}),
    )
    .await;
    patch_tenant(
        &client,
        &name,
        json!({"spec": {"database": {"isolation": "Schema"}}}),
    )
    .await;
    let t = wait_for_tenant(&client, &op, &name, READY_TIMEOUT, "refused", |t| {
        condition(t, "Ready").is_some_and(|c| c.reason == "IsolationModeNotAllowed")
            && t.status.as_ref().and_then(|s| s.observed_generation) == t.metadata.generation
    })
    .await;
    assert!(
        condition(&t, "Ready").unwrap().message.contains(&class),
        "{:?}",
        condition(&t, "Ready")
    );
    let mut pg1 = connect(&env("TENANTRY_TEST_SUPERUSER_URL")).await;
    assert!(role_exists(&mut pg1, &ident(&name)).await);
    let uid = t.uid().unwrap();
    let kept = footprint(&client, &name, &uid, &ns, &format!("{name}-credentials")).await;
    assert_eq!((kept.roles, kept.schemas, kept.buckets), (1, 1, 1));
}

#[tokio::test]
async fn a_live_tenant_is_not_moved_to_another_server() {
    let (client, op, ns) = setup().await;
    let secret = second_server_secret(&client, &ns).await;
    let here = unique_name("here");
    let there = unique_name("there");
    create_class(&client, &here, json!({})).await;
    create_class(
        &client,
        &there,
        json!({"postgres": {"adminUrlSecretRef": {"namespace": ns, "name": secret}}}),
    )
    .await;
    let name = unique_name("stay");
    create_tenant(
        &client,
        &tenant_manifest(
            &op,
            &name,
            json!({"class": here, "credentials": {"namespace": ns}}),
        ),
    )
    .await;
    wait_for_tenant(&client, &op, &name, READY_TIMEOUT, "Ready", is_ready).await;

    patch_tenant(&client, &name, json!({"spec": {"class": there}})).await;
    let t = wait_for_tenant(&client, &op, &name, READY_TIMEOUT, "refused", |t| {
        condition(t, "Ready").is_some_and(|c| c.reason == "PlacementChangeRefused")
    })
    .await;
    let message = &condition(&t, "Ready").unwrap().message;
    assert!(
        message.contains(&here) && message.contains(&there),
        "{message}"
    );
    let mut pg2 = connect(&env("TENANTRY_TEST_SUPERUSER_URL_2")).await;
    assert!(!role_exists(&mut pg2, &ident(&name)).await);

    // Back to its class: Ready again, where it always was.
    patch_tenant(&client, &name, json!({"spec": {"class": here}})).await;
    wait_for_tenant(&client, &op, &name, READY_TIMEOUT, "Ready", is_ready).await;
}

/// Issue 15, path 4, as a class author would try it: a class that points
/// the operator at a Secret outside the operator's namespace is refused
/// (the operator never reads it), and a class that allows credentials only
/// in listed namespaces refuses a tenant elsewhere and serves one there.
#[tokio::test]
async fn a_class_cannot_reach_beyond_the_operators_namespace_and_can_narrow_its_tenants() {
    let client = kube_client().await;
    install_crd(&client).await;
    let operator_ns = create_namespace(&client, "tenantry-op").await;
    let apps = create_namespace(&client, "apps").await;
    let elsewhere = create_namespace(&client, "elsewhere").await;
    let op = Operator::start(&[("POD_NAMESPACE", operator_ns.as_str())]).await;

    let secret = second_server_secret(&client, &apps).await;
    let reaching = unique_name("reaching");
    create_class(
        &client,
        &reaching,
        json!({"postgres": {"adminUrlSecretRef": {"namespace": apps, "name": secret}}}),
    )
    .await;
    let name = unique_name("reach");
    let created = create_tenant(
        &client,
        &tenant_manifest(
            &op,
            &name,
            json!({"class": reaching, "credentials": {"namespace": apps}}),
        ),
    )
    .await;
    let t = wait_for_tenant(&client, &op, &name, READY_TIMEOUT, "ClassInvalid", |t| {
        condition(t, "Ready").is_some_and(|c| c.reason == "ClassInvalid")
    })
    .await;
    let message = &condition(&t, "Ready").unwrap().message;
    assert!(
        message.contains(&operator_ns) && message.contains(&apps),
        "{message}"
    );
    let uid = created.uid().unwrap();
    assert!(
        footprint(&client, &name, &uid, &apps, &format!("{name}-credentials"))
            .await
            .is_empty()
    );

    let narrow = unique_name("narrow");
    create_class(
        &client,
        &narrow,
        json!({"credentials": {"allowedNamespaces": [apps]}}),
    )
    .await;
    let outside = unique_name("outside");
    create_tenant(
        &client,
        &tenant_manifest(
            &op,
            &outside,
            json!({"class": narrow, "credentials": {"namespace": elsewhere}}),
        ),
    )
    .await;
    let t = wait_for_tenant(
        &client,
        &op,
        &outside,
        READY_TIMEOUT,
        "NamespaceNotAllowed",
        |t| condition(t, "Ready").is_some_and(|c| c.reason == "NamespaceNotAllowed"),
    )
    .await;
    let message = &condition(&t, "Stalled").unwrap().message;
    assert!(
        message.contains(&narrow) && message.contains(&elsewhere),
        "{message}"
    );
    let inside = unique_name("inside");
    create_tenant(
        &client,
        &tenant_manifest(
            &op,
            &inside,
            json!({"class": narrow, "credentials": {"namespace": apps}}),
        ),
    )
    .await;
    wait_for_tenant(&client, &op, &inside, READY_TIMEOUT, "Ready", is_ready).await;
}

/// Issue 15, path 5: deletion safety against whoever may write a Tenant. A
/// class's minimum grace period cannot be undercut (`gracePeriod: 0s` is
/// refused with the minimum, before anything is made), and the
/// `tenantry.dev/deletion-policy` annotation may cancel destruction but
/// never ask for it: a Retain tenant annotated `Delete` is released, its
/// data kept, when deleted.
#[tokio::test]
async fn a_tenant_author_cannot_undercut_the_grace_period_or_turn_retain_into_delete() {
    let (client, op, ns) = setup().await;
    let careful = unique_name("careful");
    create_class(
        &client,
        &careful,
        json!({"deletion": {"minGracePeriod": "1h"}}),
    )
    .await;
    let hasty = unique_name("hasty");
    let refused = create_tenant(
        &client,
        &tenant_manifest(
            &op,
            &hasty,
            json!({"class": careful, "credentials": {"namespace": ns},
                   "deletion": {"policy": "Delete", "gracePeriod": "0s"}}),
        ),
    )
    .await;
    let t = wait_for_tenant(&client, &op, &hasty, READY_TIMEOUT, "refused", |t| {
        condition(t, "Ready").is_some_and(|c| c.reason == "GracePeriodBelowClassMinimum")
    })
    .await;
    let message = condition(&t, "Ready").unwrap().message.clone();
    assert!(message.contains("1h"), "{message}");
    let fp = footprint(
        &client,
        &hasty,
        &refused.uid().unwrap(),
        &ns,
        &format!("{hasty}-credentials"),
    )
    .await;
    assert!(fp.is_empty(), "a refused tenant was provisioned: {fp:?}");

    let kept = unique_name("kept");
    let mut manifest = tenant_manifest(
        &op,
        &kept,
        json!({"credentials": {"namespace": ns}, "deletion": {"policy": "Retain"}}),
    );
    manifest
        .annotations_mut()
        .insert("tenantry.dev/deletion-policy".into(), "Delete".into());
    let created = create_tenant(&client, &manifest).await;
    wait_for_tenant(&client, &op, &kept, READY_TIMEOUT, "Ready", is_ready).await;
    let api: Api<Tenant> = Api::all(client.clone());
    api.delete(&kept, &Default::default()).await.unwrap();
    wait_for_tenant_gone(&client, &op, &kept, READY_TIMEOUT).await;
    let fp = footprint(
        &client,
        &kept,
        &created.uid().unwrap(),
        &ns,
        &format!("{kept}-credentials"),
    )
    .await;
    assert_eq!(
        (fp.roles, fp.schemas, fp.buckets, fp.live_keys, fp.secrets),
        (1, 1, 1, 1, 1),
        "the annotation turned Retain into Delete: {fp:?}"
    );
}

/// Waits until the class's status satisfies `check`.
async fn wait_for_class(
    client: &Client,
    op: &Operator,
    name: &str,
    what: &str,
    check: impl Fn(&tenantry::api::TenantClassStatus) -> bool,
) -> tenantry::api::TenantClassStatus {
    let classes: Api<TenantClass> = Api::all(client.clone());
    let wait = async {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            let class = classes.get(name).await.expect("read TenantClass");
            if let Some(status) = class.status.filter(|s| check(s)) {
                return status;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "TenantClass {name}: not {what} within 60 s; operator log:\n{}",
                tail(&op.log(), 40)
            )
        })
}

fn class_ready(status: &tenantry::api::TenantClassStatus) -> Option<&tenantry::api::Condition> {
    status.conditions.iter().find(|c| c.type_ == "Ready")
}

/// A class says in its status whether it can be used, and why not (the
/// reason its tenants would fail on), and how many tenants it holds.
#[tokio::test]
async fn a_class_says_whether_it_can_be_used_and_how_many_tenants_it_holds() {
    let client = kube_client().await;
    install_crd(&client).await;
    let ns = create_namespace(&client, "apps").await;
    let op = Operator::start(&[("TENANTRY_CLASS_STATUS", "true")]).await;
    let good = unique_name("usable");
    create_class(&client, &good, json!({})).await;
    let missing = unique_name("nosecret");
    create_class(
        &client,
        &missing,
        json!({"postgres": {"adminUrlSecretRef": {"namespace": ns, "name": "does-not-exist"}}}),
    )
    .await;

    let status = wait_for_class(&client, &op, &good, "Ready", |s| {
        class_ready(s).is_some_and(|c| c.status == "True")
    })
    .await;
    assert_eq!(status.tenants, 0);
    assert!(status.server.is_some(), "{status:?}");
    let status = wait_for_class(&client, &op, &missing, "refused", |s| {
        class_ready(s).is_some_and(|c| c.status == "False")
    })
    .await;
    let ready = class_ready(&status).unwrap();
    assert_eq!(ready.reason, "ClassInvalid", "{ready:?}");
    assert!(ready.message.contains("does-not-exist"), "{ready:?}");

    let name = unique_name("counted");
    let spec = json!({"class": good, "credentials": {"namespace": ns}});
    create_tenant(&client, &tenant_manifest(&op, &name, spec)).await;
    wait_for_class(&client, &op, &good, "holding one tenant", |s| {
        s.tenants == 1
    })
    .await;
}
