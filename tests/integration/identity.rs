//! Each tenant's own AWS identity, against moto-iam (IAM enforced): the
//! operator makes a role per tenant whose class asks for one; the tenant's
//! application, allowed nothing but to assume its role, reaches its own
//! bucket, key and secret through it and not its neighbour's; suspension
//! takes that away in AWS and resuming gives it back; deletion leaves no
//! role behind.
//!
//! What moto cannot show (it matches KMS and Secrets Manager statements
//! against `*` and evaluates no condition, and refuses every object call on
//! a bucket whose policy has a Deny): that the role is refused a
//! neighbour's key and secret, and that it may read and write its own
//! objects. Those rest on the bucket and key policies and the role's
//! policy, proven by the policy evaluator (`policy_eval` tests in the
//! library) and said in docs/security.md.

use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_iam::error::ProvideErrorMetadata;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tenantry::api::{IsolationState, Tenant, TenantPhase};

use crate::classes::create_class;
use crate::iam_enforcement::{assert_access_denied, policy, user_with_policy};
use crate::support::cluster::*;
use crate::support::moto_iam::{ACCOUNT, admin, config_as, s3_client, suite_scope, user_holding};
use crate::support::readback;
use crate::support::{env, unique_name};

const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// The operator, on moto-iam as a user holding exactly its documented
/// policy (`tenantry iam-policy`): the role statements are exercised too.
async fn operator_on_moto_iam() -> Operator {
    operator_on_moto_iam_with(&[]).await
}

async fn operator_on_moto_iam_with(extra: &[(&str, &str)]) -> Operator {
    let endpoint = env("TENANTRY_IAM_AWS_ENDPOINT");
    let (key, secret) = user_holding(&tenantry::permissions::operator_policy(&suite_scope())).await;
    let mut env = vec![
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", key.as_str()),
        ("AWS_SECRET_ACCESS_KEY", secret.as_str()),
        ("AWS_REGION", "us-east-1"),
    ];
    env.extend_from_slice(extra);
    Operator::start(&env).await
}

/// An application's IAM user: allowed to assume tenantry's roles and
/// nothing else, so whatever it reaches, it reaches through a role.
async fn application(iam: &aws_sdk_iam::Client, name: &str) -> SdkConfig {
    let assume_only = policy(json!([{
        "Effect": "Allow",
        "Action": "sts:AssumeRole",
        "Resource": format!("arn:aws:iam::{ACCOUNT}:role/tenantry/*"),
    }]));
    user_with_policy(iam, name, &assume_only).await
}

async fn assume(app: &SdkConfig, role_arn: &str) -> Result<SdkConfig, String> {
    let out = aws_sdk_sts::Client::new(app)
        .assume_role()
        .role_arn(role_arn)
        .role_session_name("app")
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let c = out.credentials.expect("session credentials");
    Ok(config_as(
        c.access_key_id(),
        c.secret_access_key(),
        Some(c.session_token().to_string()),
    )
    .await)
}

/// What a tenant's application reads from its credentials Secret.
struct Handed {
    role_arn: String,
    bucket: String,
    key_arn: String,
    secret_arn: String,
    service_account: String,
}

async fn handed(client: &Client, ns: &str, tenant: &str) -> Handed {
    let data = readback::kube_secret_data(client, ns, &format!("{tenant}-credentials")).await;
    let get = |k: &str| {
        data.get(k)
            .unwrap_or_else(|| panic!("the Secret has no {k}: {:?}", data.keys()))
            .clone()
    };
    Handed {
        role_arn: get("roleArn"),
        bucket: get("bucket"),
        key_arn: get("kmsKeyArn"),
        secret_arn: get("secretArn"),
        service_account: get("serviceAccount"),
    }
}

async fn set_suspended(client: &Client, name: &str, suspended: bool) {
    let api: Api<Tenant> = Api::all(client.clone());
    let patch = json!({"spec": {"suspended": suspended}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch spec.suspended");
}

/// The role's session can use the tenant's own bucket (listing), key and
/// secret.
async fn reaches_its_own(session: &SdkConfig, own: &Handed) {
    s3_client(session)
        .list_objects_v2()
        .bucket(&own.bucket)
        .send()
        .await
        .expect("the role lists its own bucket");
    aws_sdk_kms::Client::new(session)
        .generate_data_key()
        .key_id(&own.key_arn)
        .number_of_bytes(32)
        .send()
        .await
        .expect("the role makes a data key under its own key");
    aws_sdk_secretsmanager::Client::new(session)
        .get_secret_value()
        .secret_id(&own.secret_arn)
        .send()
        .await
        .expect("the role reads its own secret");
}

/// The role's session is refused the tenant's own bucket, key and secret.
async fn refused_its_own(session: &SdkConfig, own: &Handed) {
    assert_access_denied(
        "ListObjectsV2 while suspended",
        s3_client(session)
            .list_objects_v2()
            .bucket(&own.bucket)
            .send()
            .await,
    );
    assert_access_denied(
        "GenerateDataKey while suspended",
        aws_sdk_kms::Client::new(session)
            .generate_data_key()
            .key_id(&own.key_arn)
            .number_of_bytes(32)
            .send()
            .await,
    );
    assert_access_denied(
        "GetSecretValue while suspended",
        aws_sdk_secretsmanager::Client::new(session)
            .get_secret_value()
            .secret_id(&own.secret_arn)
            .send()
            .await,
    );
}

#[tokio::test]
async fn a_tenants_role_reaches_its_own_data_not_its_neighbours_and_nothing_while_suspended() {
    let client = kube_client().await;
    install_crd(&client).await;
    let ns = create_namespace(&client, "apps").await;
    let iam = aws_sdk_iam::Client::new(&admin().await);
    let run = unique_name("idn");
    let (a, b) = (format!("{run}-a"), format!("{run}-b"));
    let app_a = application(&iam, &format!("{a}-app")).await;
    application(&iam, &format!("{b}-app")).await;
    let class = unique_name("identity");
    create_class(
        &client,
        &class,
        json!({
            "aws": {"identity": {"trust": {
                "principal": format!("arn:aws:iam::{ACCOUNT}:user/{{tenant}}-app"),
            }}},
            "deletion": {"policy": "Delete", "gracePeriod": "1s"},
        }),
    )
    .await;
    let op = operator_on_moto_iam().await;
    for name in [&a, &b] {
        let spec = json!({"class": class, "credentials": {"namespace": ns}});
        create_tenant(&client, &tenant_manifest(&op, name, spec)).await;
    }
    for name in [&a, &b] {
        wait_for_tenant(&client, &op, name, READY_TIMEOUT, "Ready", is_ready).await;
    }
    let (own, neighbour) = (
        handed(&client, &ns, &a).await,
        handed(&client, &ns, &b).await,
    );
    // Named like the bucket: `<bucket prefix>-<tenant>`, under /tenantry/.
    assert_eq!(
        own.role_arn,
        format!("arn:aws:iam::{ACCOUNT}:role/tenantry/{}", own.bucket)
    );
    assert_eq!(own.service_account, format!("{a}-app"));

    // Its application assumes its own role, and not the neighbour's.
    let session = assume(&app_a, &own.role_arn)
        .await
        .expect("A assumes A's role");
    let refused = assume(&app_a, &neighbour.role_arn).await;
    assert!(refused.is_err(), "A assumed B's role");

    reaches_its_own(&session, &own).await;
    // The neighbour's bucket, by the role's own policy (moto evaluates it
    // for S3). Object calls are not asked here: moto answers every one on
    // a bucket whose policy has a Deny with a bare 403, the tenant's own
    // too, so a refusal there would prove nothing (the evaluator does).
    assert_access_denied(
        "ListObjectsV2 of the neighbour's bucket",
        s3_client(&session)
            .list_objects_v2()
            .bucket(&neighbour.bucket)
            .send()
            .await,
    );

    // Suspension reaches AWS: the same session is refused everything.
    set_suspended(&client, &a, true).await;
    wait_for_tenant(&client, &op, &a, READY_TIMEOUT, "Suspended", |t| {
        phase(t) == Some(TenantPhase::Suspended)
            && t.status.as_ref().unwrap().observed_generation == t.metadata.generation
    })
    .await;
    refused_its_own(&session, &own).await;

    set_suspended(&client, &a, false).await;
    wait_for_tenant(&client, &op, &a, READY_TIMEOUT, "Ready again", |t| {
        is_ready(t) && t.status.as_ref().unwrap().observed_generation == t.metadata.generation
    })
    .await;
    reaches_its_own(&session, &own).await;

    // Deleted: the role and its ServiceAccount are gone.
    let tenants: Api<Tenant> = Api::all(client.clone());
    tenants.delete(&a, &Default::default()).await.unwrap();
    wait_for_tenant_gone(&client, &op, &a, READY_TIMEOUT).await;
    let role = iam.get_role().role_name(&own.bucket).send().await;
    assert_eq!(
        role.err()
            .and_then(|e| e.code().map(str::to_string))
            .as_deref(),
        Some("NoSuchEntity"),
        "A's role outlived A"
    );
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), &ns);
    assert!(
        accounts
            .get_opt(&format!("{a}-app"))
            .await
            .unwrap()
            .is_none(),
        "A's ServiceAccount outlived A"
    );
    tenants.delete(&b, &Default::default()).await.unwrap();
    wait_for_tenant_gone(&client, &op, &b, READY_TIMEOUT).await;
}

/// The class of the tests below: IRSA through a
/// made-up OIDC provider (moto does not check that it exists).
async fn irsa_class(client: &Client) -> String {
    let class = unique_name("irsa");
    create_class(
        client,
        &class,
        json!({"aws": {"identity": {"trust": {"irsa": {"oidcProviderArn": OIDC_PROVIDER}}}}}),
    )
    .await;
    class
}

const OIDC_PROVIDER: &str =
    "arn:aws:iam::123456789012:oidc-provider/oidc.eks.us-east-1.amazonaws.com/id/TENANTRY";

/// The API server, a namespace for the credentials, an IRSA class and an
/// operator (stopping at `failpoint`, when given).
async fn irsa_setup(failpoint: Option<&str>) -> (Client, String, String, Operator) {
    let client = kube_client().await;
    install_crd(&client).await;
    let ns = create_namespace(&client, "apps").await;
    let class = irsa_class(&client).await;
    let env = failpoint.map(|f| format!("{f}=return"));
    let env: Vec<(&str, &str)> = env.iter().map(|f| ("FAILPOINTS", f.as_str())).collect();
    let op = Operator::start(&env).await;
    (client, ns, class, op)
}

/// Someone else's Secret where the tenant's credentials go: the last step
/// fails, and everything before it rolls back.
async fn squat_credentials(client: &Client, ns: &str, name: &str) {
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), ns);
    let squatter: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": {"name": format!("{name}-credentials")},
        "stringData": {"owner": "someone else"}
    }))
    .unwrap();
    secrets
        .create(&Default::default(), &squatter)
        .await
        .unwrap();
}

fn spec_in(class: &str, ns: &str) -> serde_json::Value {
    json!({"class": class, "credentials": {"namespace": ns}})
}

async fn footprint_of(client: &Client, tenant: &Tenant, ns: &str) -> readback::Footprint {
    let name = kube::ResourceExt::name_any(tenant);
    readback::footprint(
        client,
        &name,
        &kube::ResourceExt::uid(tenant).unwrap(),
        ns,
        &format!("{name}-credentials"),
    )
    .await
}

fn one_of_each_with_a_role() -> readback::Footprint {
    readback::Footprint {
        roles: 1,
        schemas: 1,
        buckets: 1,
        live_keys: 1,
        aliases: 1,
        secrets: 1,
        kube_secrets: 1,
        iam_roles: 1,
        service_accounts: 1,
        ..Default::default()
    }
}

#[tokio::test]
async fn an_irsa_class_gives_each_tenant_a_role_and_an_annotated_service_account() {
    let (client, ns, class, op) = irsa_setup(None).await;
    let name = unique_name("irsa");
    let created = create_tenant(&client, &tenant_manifest(&op, &name, spec_in(&class, &ns))).await;
    let t = wait_for_tenant(&client, &op, &name, READY_TIMEOUT, "Ready", is_ready).await;
    assert_eq!(
        footprint_of(&client, &created, &ns).await,
        one_of_each_with_a_role()
    );

    let given = handed(&client, &ns, &name).await;
    let resources = t.status.as_ref().unwrap().resources.as_ref().unwrap();
    assert_eq!(
        resources.iam_role_arn.as_deref(),
        Some(given.role_arn.as_str())
    );
    assert_eq!(
        resources.service_account.as_deref(),
        Some(format!("{ns}/{name}-app").as_str())
    );
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), &ns);
    let account = accounts.get(&given.service_account).await.unwrap();
    assert_eq!(
        kube::ResourceExt::annotations(&account).get("eks.amazonaws.com/role-arn"),
        Some(&given.role_arn),
        "IRSA's webhook finds the role on the ServiceAccount"
    );

    // The role as IAM holds it: trust in the cluster's provider for this
    // ServiceAccount only, tenantry's one inline policy, the tenant's tags.
    let iam = readback::aws().await.iam;
    let role = iam
        .get_role()
        .role_name(&given.bucket)
        .send()
        .await
        .unwrap()
        .role
        .unwrap();
    assert_eq!(role.path(), "/tenantry/");
    let trust: serde_json::Value = serde_json::from_str(
        &percent_encoding::percent_decode_str(role.assume_role_policy_document().unwrap())
            .decode_utf8_lossy(),
    )
    .unwrap();
    let irsa = &trust["Statement"][0];
    assert_eq!(irsa["Principal"]["Federated"], OIDC_PROVIDER);
    assert_eq!(
        irsa["Condition"]["StringEquals"]["oidc.eks.us-east-1.amazonaws.com/id/TENANTRY:sub"],
        format!("system:serviceaccount:{ns}:{name}-app")
    );
    let uid = kube::ResourceExt::uid(&created).unwrap();
    assert!(
        role.tags()
            .iter()
            .any(|t| t.key() == "tenantry.dev/tenant-uid" && t.value() == uid),
        "{:?}",
        role.tags()
    );
    let inline = iam
        .list_role_policies()
        .role_name(&given.bucket)
        .send()
        .await
        .unwrap();
    assert_eq!(inline.policy_names(), ["tenantry-access"]);

    // Someone gives the tenant's role more: the next reconcile takes it off.
    let backdoor = json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]});
    iam.put_role_policy()
        .role_name(&given.bucket)
        .policy_name("backdoor")
        .policy_document(backdoor.to_string())
        .send()
        .await
        .unwrap();
    let tenants: Api<Tenant> = Api::all(client.clone());
    let patch = json!({"spec": {"displayName": "Renamed Inc"}});
    tenants
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    wait_for_tenant(&client, &op, &name, READY_TIMEOUT, "Ready again", |t| {
        is_ready(t) && t.status.as_ref().unwrap().observed_generation == t.metadata.generation
    })
    .await;
    let inline = iam
        .list_role_policies()
        .role_name(&given.bucket)
        .send()
        .await
        .unwrap();
    assert_eq!(
        inline.policy_names(),
        ["tenantry-access"],
        "a policy someone else put on the tenant's role stayed"
    );
}

/// Something of the tenant's role name that is not the tenant's: a role
/// without tenantry's tags. The tenant rolls back to nothing and the role
/// is left as it was.
#[tokio::test]
async fn a_role_of_someone_else_rolls_everything_back_and_is_left_alone() {
    let (client, ns, class, op) = irsa_setup(None).await;
    let name = unique_name("cfl");
    let iam = readback::aws().await.iam;
    let role_name = format!("{}-{name}", env("TENANTRY_BUCKET_PREFIX"));
    let theirs = json!({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
        "Action": "sts:AssumeRole"}]});
    iam.create_role()
        .path("/tenantry/")
        .role_name(&role_name)
        .assume_role_policy_document(theirs.to_string())
        .send()
        .await
        .unwrap();

    let created = create_tenant(&client, &tenant_manifest(&op, &name, spec_in(&class, &ns))).await;
    let t = wait_for_tenant(&client, &op, &name, READY_TIMEOUT, "Failed", |t| {
        phase(t) == Some(TenantPhase::Failed)
    })
    .await;
    let stalled = condition(&t, "Stalled").unwrap();
    assert_eq!(stalled.reason, "Conflict", "{stalled:?}");
    assert!(stalled.message.contains("IAM role"), "{}", stalled.message);
    assert_eq!(
        footprint_of(&client, &created, &ns).await,
        readback::Footprint {
            iam_roles: 1,
            ..Default::default()
        },
        "only the other role remains"
    );
    let role = iam
        .get_role()
        .role_name(&role_name)
        .send()
        .await
        .unwrap()
        .role
        .unwrap();
    assert!(
        role.tags().is_empty(),
        "tenantry tagged a role it does not own"
    );
    let inline = iam
        .list_role_policies()
        .role_name(&role_name)
        .send()
        .await
        .unwrap();
    assert!(
        inline.policy_names().is_empty(),
        "tenantry wrote into a role it does not own"
    );
}

/// A failure after the role (a Kubernetes Secret of someone else) rolls
/// the role and its ServiceAccount back with the rest.
#[tokio::test]
async fn a_failure_after_the_role_rolls_the_role_and_service_account_back() {
    let (client, ns, class, op) = irsa_setup(None).await;
    let name = unique_name("rbk");
    squat_credentials(&client, &ns, &name).await;

    let created = create_tenant(&client, &tenant_manifest(&op, &name, spec_in(&class, &ns))).await;
    wait_for_tenant(&client, &op, &name, READY_TIMEOUT, "Failed", |t| {
        phase(t) == Some(TenantPhase::Failed)
    })
    .await;
    assert_eq!(
        footprint_of(&client, &created, &ns).await,
        readback::Footprint {
            kube_secrets: 1,
            ..Default::default()
        },
        "the rollback left the role, its ServiceAccount or more behind"
    );
}

/// The operator killed just before and just after the role step: the
/// restarted one converges with one role and one ServiceAccount.
async fn crash_at(failpoint: &str) {
    let (client, ns, class, mut op) = irsa_setup(Some(failpoint)).await;
    let name = unique_name("crash");
    let created = create_tenant(&client, &tenant_manifest(&op, &name, spec_in(&class, &ns))).await;
    assert_eq!(
        op.wait_exit(READY_TIMEOUT).await,
        Some(86),
        "stopped at {failpoint}"
    );
    op.restart_with(&[]).await;
    wait_for_tenant(
        &client,
        &op,
        &name,
        READY_TIMEOUT,
        "Ready after the crash",
        is_ready,
    )
    .await;
    assert_eq!(
        footprint_of(&client, &created, &ns).await,
        one_of_each_with_a_role(),
        "after a crash at {failpoint}: duplicates or orphans"
    );
}

#[tokio::test]
async fn a_crash_before_the_role_converges() {
    crash_at("ensure-before-iam-role").await;
}

#[tokio::test]
async fn a_crash_after_the_role_converges() {
    crash_at("ensure-after-iam-role").await;
}

#[tokio::test]
async fn a_crash_before_removing_the_role_during_rollback_still_leaves_nothing() {
    let (client, ns, class, mut op) = irsa_setup(Some("remove-before-iam-role")).await;
    let name = unique_name("rbk");
    squat_credentials(&client, &ns, &name).await;
    let created = create_tenant(&client, &tenant_manifest(&op, &name, spec_in(&class, &ns))).await;
    assert_eq!(op.wait_exit(READY_TIMEOUT).await, Some(86));
    op.restart_with(&[]).await;
    wait_for_tenant(&client, &op, &name, READY_TIMEOUT, "Failed", |t| {
        phase(t) == Some(TenantPhase::Failed)
    })
    .await;
    assert_eq!(
        footprint_of(&client, &created, &ns).await,
        readback::Footprint {
            kube_secrets: 1,
            ..Default::default()
        },
        "after a crash during the role's rollback"
    );
}

async fn inline_policies(iam: &aws_sdk_iam::Client, role: &str) -> Vec<String> {
    iam.list_role_policies()
        .role_name(role)
        .send()
        .await
        .unwrap()
        .policy_names()
        .to_vec()
}

async fn role_tag(iam: &aws_sdk_iam::Client, role: &str, key: &str) -> Option<String> {
    let role = iam
        .get_role()
        .role_name(role)
        .send()
        .await
        .unwrap()
        .role
        .unwrap();
    role.tags()
        .iter()
        .find(|t| t.key() == key)
        .map(|t| t.value().to_string())
}

/// Retain: the role stays, released and denied everything, and its
/// ServiceAccount goes; a returning tenant of the same name adopts it with
/// its access back and nothing of the old tenant's marks.
#[tokio::test]
async fn a_retained_role_is_released_without_access_and_adopted_by_a_returning_tenant() {
    let client = kube_client().await;
    install_crd(&client).await;
    let ns = create_namespace(&client, "apps").await;
    let class = unique_name("irsa-retain");
    create_class(
        &client,
        &class,
        json!({
            "aws": {"identity": {"trust": {"irsa": {"oidcProviderArn": OIDC_PROVIDER}}}},
            "deletion": {"policy": "Retain"},
        }),
    )
    .await;
    let op = Operator::start(&[]).await;
    let name = unique_name("ret");
    let role = format!("{}-{name}", env("TENANTRY_BUCKET_PREFIX"));
    let iam = readback::aws().await.iam;
    let tenants: Api<Tenant> = Api::all(client.clone());

    let first = create_tenant(&client, &tenant_manifest(&op, &name, spec_in(&class, &ns))).await;
    wait_for_tenant(&client, &op, &name, READY_TIMEOUT, "Ready", is_ready).await;
    tenants.delete(&name, &Default::default()).await.unwrap();
    wait_for_tenant_gone(&client, &op, &name, READY_TIMEOUT).await;
    assert_eq!(
        inline_policies(&iam, &role).await,
        ["tenantry-access", "tenantry-revoked"],
        "a released role keeps no access"
    );
    assert_eq!(
        role_tag(&iam, &role, "tenantry.dev/released")
            .await
            .as_deref(),
        Some("true")
    );
    let gone = footprint_of(&client, &first, &ns).await;
    assert_eq!(
        gone.service_accounts, 0,
        "the ServiceAccount outlived the tenant"
    );
    assert_eq!(gone.iam_roles, 1);

    let second = create_tenant(&client, &tenant_manifest(&op, &name, spec_in(&class, &ns))).await;
    wait_for_tenant(&client, &op, &name, READY_TIMEOUT, "Ready again", is_ready).await;
    assert_eq!(inline_policies(&iam, &role).await, ["tenantry-access"]);
    assert_eq!(role_tag(&iam, &role, "tenantry.dev/released").await, None);
    assert_eq!(
        role_tag(&iam, &role, "tenantry.dev/tenant-uid").await,
        kube::ResourceExt::uid(&second)
    );
}

/// The finding `check` of a layer of the tenant's attestation.
fn finding(t: &Tenant, layer: &str, check: &str) -> Option<tenantry::api::Finding> {
    let isolation = t.status.as_ref()?.isolation.as_ref()?;
    let report = match layer {
        "storage" => isolation.storage.as_ref(),
        _ => isolation.encryption.as_ref(),
    }?;
    report.findings.iter().find(|f| f.check == check).cloned()
}

fn repairs(t: &Tenant) -> u32 {
    t.status
        .as_ref()
        .and_then(|s| s.isolation.as_ref())
        .map_or(0, |i| i.drift_repairs)
}

/// The probes act as the tenant's role: its own bucket and key answer it,
/// the operator's canary bucket and key (a neighbour) refuse it. A policy
/// someone adds to a settled tenant's role that opens other buckets is
/// measured (the canary bucket answers the role) and removed by the repair
/// that follows; without the role's probe nothing would look at the role of
/// a settled tenant again.
#[tokio::test]
async fn the_probes_act_as_the_tenants_role_and_catch_a_role_opened_to_its_neighbours() {
    let client = kube_client().await;
    install_crd(&client).await;
    let ns = create_namespace(&client, "apps").await;
    let class = irsa_class(&client).await;
    let op = operator_on_moto_iam_with(&[("TENANTRY_PROBE_INTERVAL", "2s")]).await;
    let name = unique_name("probe");
    create_tenant(&client, &tenant_manifest(&op, &name, spec_in(&class, &ns))).await;
    let t = wait_for_tenant(&client, &op, &name, READY_TIMEOUT, "Ready", is_ready).await;
    let role_arn = handed(&client, &ns, &name).await.role_arn;
    let role_name = role_arn.rsplit('/').next().unwrap().to_string();

    let own_bucket = finding(&t, "storage", "bucket.tenantAccess").expect("bucket.tenantAccess");
    assert_eq!(own_bucket.state, IsolationState::Enforced, "{own_bucket:?}");
    assert!(own_bucket.detail.contains(&role_arn), "{own_bucket:?}");
    // moto-iam refuses the role another bucket by itself (S3 resources are
    // evaluated): a live refusal, not tenantry's evaluation.
    let canary_bucket =
        finding(&t, "storage", "bucket.neighbourRefused").expect("bucket.neighbourRefused");
    assert_eq!(
        canary_bucket.state,
        IsolationState::Enforced,
        "{canary_bucket:?}"
    );
    assert!(
        canary_bucket.detail.contains("was refused"),
        "{canary_bucket:?}"
    );
    assert!(
        canary_bucket.detail.contains("--canary"),
        "{canary_bucket:?}"
    );
    let own_key = finding(&t, "encryption", "key.tenantAccess").expect("key.tenantAccess");
    assert_eq!(own_key.state, IsolationState::Enforced, "{own_key:?}");
    // moto lets any KMS call through that a `*` statement allows: the
    // role's deployed policies decide, and the finding says so.
    let canary_key =
        finding(&t, "encryption", "key.neighbourRefused").expect("key.neighbourRefused");
    assert_eq!(canary_key.state, IsolationState::Enforced, "{canary_key:?}");
    assert!(canary_key.detail.contains("emulator"), "{canary_key:?}");

    // Someone opens the settled tenant's role to every bucket and key.
    let iam = aws_sdk_iam::Client::new(&admin().await);
    let opened = json!({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow",
        "Action": ["s3:ListBucket", "kms:*"],
        "Resource": "*",
    }]});
    iam.put_role_policy()
        .role_name(&role_name)
        .policy_name("opened")
        .policy_document(opened.to_string())
        .send()
        .await
        .expect("open the role");
    let before = repairs(&t);
    let repaired = wait_for_tenant(&client, &op, &name, READY_TIMEOUT, "drift repaired", |t| {
        is_ready(t) && repairs(t) > before
    })
    .await;
    assert_eq!(
        inline_policies(&iam, &role_name).await,
        vec!["tenantry-access".to_string()],
        "the added policy is still on the role"
    );
    let canary_bucket = finding(&repaired, "storage", "bucket.neighbourRefused").unwrap();
    assert_eq!(
        canary_bucket.state,
        IsolationState::Enforced,
        "{canary_bucket:?}"
    );
    // The repair says what it found: the role reached the canary.
    let log = op.log();
    assert!(
        log.contains("bucket.neighbourRefused") && log.contains("key.neighbourRefused"),
        "the drift found is not named in the log"
    );
}
