//! The operator under exactly its IAM policy (`tenantry::permissions`, the
//! policy docs/install.md shows), against `moto-iam`, which refuses every
//! call the policy does not allow: an action missing from the policy fails
//! these tests.
//!
//! moto names some S3 requests differently from AWS (HeadBucket is
//! `s3:HeadBucket` there, `s3:ListBucket` on AWS) and matches a few calls
//! against `*` (docs/security.md, "What moto enforces"), so the operator's
//! user holds the policy as `as_moto_evaluates` renders it: the same
//! statements, each S3 action joined by moto's name for the same request.
//! The rendering is derived from the policy alone, so what the policy lacks
//! the user lacks too (except the pairs `moto_blind_spots` lists).
//!
//! The harness's own checks use moto-iam's administrator.

use std::time::Duration;

use aws_config::SdkConfig;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;
use tenantry::api::{IsolationState, Tenant, TenantPhase};
use tenantry::permissions::{self, Policy};

use crate::support::cluster::*;
use crate::support::moto_iam::{admin, s3_client, suite_scope, user_holding};
use crate::support::{bucket_prefix, env, readback, unique_name};

const TIMEOUT: Duration = Duration::from_secs(120);

/// The operator binary, signing every AWS call as a user that holds `policy`.
async fn operator_under(policy: &Policy) -> Operator {
    let (key_id, secret) = user_holding(policy).await;
    let endpoint = env("TENANTRY_IAM_AWS_ENDPOINT");
    Operator::start(&[
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", key_id.as_str()),
        ("AWS_SECRET_ACCESS_KEY", secret.as_str()),
        ("TENANTRY_PROBE_INTERVAL", "2s"),
        ("TENANTRY_AUDIT_CHECKPOINT_INTERVAL", "1s"),
    ])
    .await
}

fn enforced(t: &Tenant) -> bool {
    is_ready(t)
        && t.status
            .as_ref()
            .and_then(|s| s.isolation.as_ref())
            .and_then(|i| i.summary)
            == Some(IsolationState::Enforced)
}

/// What moto-iam holds of the tenant, read as its administrator.
#[derive(Debug, PartialEq, Eq)]
struct InMotoIam {
    bucket: bool,
    alias: bool,
    live_keys: usize,
    secret: bool,
}

async fn in_moto_iam(admin: &SdkConfig, tenant: &str, uid: &str) -> InMotoIam {
    let s3 = s3_client(admin);
    let kms = aws_sdk_kms::Client::new(admin);
    let sm = aws_sdk_secretsmanager::Client::new(admin);
    let bucket = s3
        .head_bucket()
        .bucket(format!("{}-{tenant}", bucket_prefix()))
        .send()
        .await
        .is_ok();
    let alias = kms
        .describe_key()
        .key_id(format!("alias/tenantry/{tenant}"))
        .send()
        .await
        .is_ok();
    let live_keys = readback::keys_tagged(&kms, uid)
        .await
        .into_iter()
        .filter(|(_, state)| state != "PendingDeletion")
        .count();
    let secret = sm
        .describe_secret()
        .secret_id(format!("tenantry/{tenant}/database"))
        .send()
        .await
        .is_ok_and(|d| d.deleted_date().is_none());
    InMotoIam {
        bucket,
        alias,
        live_keys,
        secret,
    }
}

/// Waits until the operator's log holds `needle` `count` times.
async fn wait_for_log(op: &Operator, needle: &str, count: usize, what: &str) {
    let seen = tokio::time::timeout(TIMEOUT, async {
        loop {
            if op.log().matches(needle).count() >= count {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(
        seen.is_ok(),
        "{what}: the operator did not log {needle:?} within {TIMEOUT:?}\n{}",
        tail(&op.log(), 60)
    );
}

/// Every refusal moto-iam sends is an HTTP 403; under a complete policy
/// the operator meets none, on any path (probes and checkpoints included).
fn assert_no_refusal(op: &Operator) {
    let log = op.log();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("HTTP 403") || l.contains("AccessDenied"))
        .collect();
    assert!(
        refused.is_empty(),
        "the operator was refused under its own policy:\n{}",
        refused.join("\n")
    );
}

#[tokio::test]
async fn the_operator_under_exactly_its_policy_runs_a_tenant_through_its_life() {
    let client = kube_client().await;
    install_crd(&client).await;
    let ns = create_namespace(&client, "iam-policy").await;
    let op = operator_under(&permissions::operator_policy(&suite_scope())).await;
    let admin = admin().await;

    let name = unique_name("iamp");
    let spec = json!({
        "credentials": {"namespace": ns},
        "storage": {"versioning": true},
        "deletion": {"policy": "Delete", "gracePeriod": "20s"},
    });
    let created = create_tenant(&client, &tenant_manifest(&op, &name, spec)).await;
    let uid = created.uid().unwrap();
    let t = wait_for_tenant(&client, &op, &name, TIMEOUT, "Ready and Enforced", enforced).await;

    let isolation = t.status.unwrap().isolation.unwrap();
    for (layer, report) in [
        ("database", &isolation.database),
        ("storage", &isolation.storage),
        ("encryption", &isolation.encryption),
    ] {
        let report = report
            .as_ref()
            .unwrap_or_else(|| panic!("{layer} not measured"));
        assert_eq!(
            report.state,
            IsolationState::Enforced,
            "{layer}: {report:?}"
        );
        assert!(!report.findings.is_empty(), "{layer} has no findings");
    }
    let storage: Vec<&str> = isolation
        .storage
        .as_ref()
        .unwrap()
        .findings
        .iter()
        .map(|f| f.check.as_str())
        .collect();
    // Measured with the operator's write allowed (StorageProbeInsecureWrite),
    // so the refusal counted is the bucket policy's.
    assert!(storage.contains(&"bucket.insecureTransport"), "{storage:?}");
    assert_eq!(
        in_moto_iam(&admin, &name, &uid).await,
        InMotoIam {
            bucket: true,
            alias: true,
            live_keys: 1,
            secret: true
        },
        "the tenant's resources are in moto-iam"
    );
    // With an anchor, the tenant's chain gets checkpointed under the policy
    // too (the first checkpoint may precede the tenant).
    if suite_scope().anchor.is_some() {
        let before = op.log().matches("audit checkpoint written").count();
        wait_for_log(&op, "audit checkpoint written", before + 1, "checkpoint").await;
    }

    let api: Api<Tenant> = Api::all(client.clone());
    let secret_name = format!("{name}-credentials");
    let url = readback::kube_secret_data(&client, &ns, &secret_name).await["url"].clone();
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"suspended": true}})),
    )
    .await
    .unwrap();
    wait_for_tenant(&client, &op, &name, TIMEOUT, "Suspended", |t| {
        phase(t) == Some(TenantPhase::Suspended)
            && t.status.as_ref().unwrap().observed_generation == t.metadata.generation
    })
    .await;
    readback::can_log_in(&url)
        .await
        .expect_err("login refused while suspended");
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"suspended": false}})),
    )
    .await
    .unwrap();
    wait_for_tenant(&client, &op, &name, TIMEOUT, "Ready again", enforced).await;
    readback::can_log_in(&url)
        .await
        .expect("logs in again after resuming");

    api.delete(&name, &DeleteParams::default()).await.unwrap();
    wait_for_tenant(&client, &op, &name, TIMEOUT, "revoked", |t| {
        condition(t, "Ready").is_some_and(|c| c.reason == "AccessRevoked")
    })
    .await;
    // An object for the teardown to empty out, version by version. moto
    // refuses every object write while the deny-non-TLS policy is on the
    // bucket, so the administrator takes the policy off first (the
    // teardown takes it off over plain HTTP anyway).
    let bucket = format!("{}-{name}", bucket_prefix());
    let s3 = s3_client(&admin);
    s3.delete_bucket_policy()
        .bucket(&bucket)
        .send()
        .await
        .expect("the administrator removes the bucket policy");
    s3.put_object()
        .bucket(&bucket)
        .key("data/orders.csv")
        .body(aws_sdk_s3::primitives::ByteStream::from_static(b"1,2\n"))
        .send()
        .await
        .expect("the administrator writes an object during the grace period");
    wait_for_tenant_gone(&client, &op, &name, TIMEOUT).await;
    assert_eq!(
        in_moto_iam(&admin, &name, &uid).await,
        InMotoIam {
            bucket: false,
            alias: false,
            live_keys: 0,
            secret: false
        },
        "removed from moto-iam"
    );
    assert_no_refusal(&op);
}

/// The policy without `action`: the tenant fails, naming the refused call,
/// and what was made before it is rolled back under the same policy.
async fn without_action_the_tenant_fails(action: &str, refused_call: &str) {
    let full = permissions::operator_policy(&suite_scope());
    assert!(full.actions().contains(action), "{action} is in the policy");
    let client = kube_client().await;
    install_crd(&client).await;
    let ns = create_namespace(&client, "iam-missing").await;
    let op = operator_under(&full.without_action(action)).await;

    let name = unique_name("iamm");
    let spec = json!({"credentials": {"namespace": ns}});
    let created = create_tenant(&client, &tenant_manifest(&op, &name, spec)).await;
    let t = wait_for_tenant(&client, &op, &name, TIMEOUT, "Failed", |t| {
        phase(t) == Some(TenantPhase::Failed)
    })
    .await;
    let stalled = condition(&t, "Stalled").expect("a Stalled condition");
    assert_eq!(stalled.status, "True", "{stalled:?}");
    assert!(
        stalled.message.contains(refused_call) && stalled.message.contains("HTTP 403"),
        "the condition names the refused call {refused_call}: {stalled:?}"
    );
    assert!(!is_ready(&t), "not Ready without {action}: {:?}", t.status);
    assert_eq!(
        in_moto_iam(&admin().await, &name, &created.uid().unwrap()).await,
        InMotoIam {
            bucket: false,
            alias: false,
            live_keys: 0,
            secret: false
        },
        "rolled back"
    );
}

#[tokio::test]
async fn without_kms_get_key_policy_the_tenant_fails_naming_the_refusal() {
    without_action_the_tenant_fails("kms:GetKeyPolicy", "GetKeyPolicy").await;
}

#[tokio::test]
async fn without_s3_put_bucket_policy_the_tenant_fails_naming_the_refusal() {
    without_action_the_tenant_fails("s3:PutBucketPolicy", "PutBucketPolicy").await;
}
