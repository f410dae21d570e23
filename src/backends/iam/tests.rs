use super::*;
use crate::api::{IrsaTrust, PodIdentityTrust};

fn operator() -> Caller {
    Caller::from_arn("arn:aws:iam::111122223333:user/tenantry-operator").unwrap()
}

fn workload() -> Workload<'static> {
    Workload {
        namespace: "acme-apps",
        service_account: "acme-app",
    }
}

fn statement<'a>(policy: &'a Value, sid: &str) -> &'a Value {
    policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["Sid"] == sid)
        .unwrap_or_else(|| panic!("no statement {sid} in {policy}"))
}

#[test]
fn irsa_trusts_the_tenants_service_account_through_the_clusters_provider() {
    let trust = RoleTrust {
        irsa: Some(IrsaTrust {
            oidc_provider_arn:
                "arn:aws:iam::111122223333:oidc-provider/oidc.eks.eu-west-1.amazonaws.com/id/ABC"
                    .into(),
            audience: None,
        }),
        ..Default::default()
    };
    let policy = trust_policy(&trust, "acme", &workload(), &operator());
    let irsa = statement(&policy, "Irsa");
    assert_eq!(irsa["Action"], "sts:AssumeRoleWithWebIdentity");
    let equals = &irsa["Condition"]["StringEquals"];
    assert_eq!(
        equals["oidc.eks.eu-west-1.amazonaws.com/id/ABC:sub"],
        "system:serviceaccount:acme-apps:acme-app"
    );
    assert_eq!(
        equals["oidc.eks.eu-west-1.amazonaws.com/id/ABC:aud"],
        "sts.amazonaws.com"
    );
    // Two statements: the workload's and the operator's probes.
    assert_eq!(policy["Statement"].as_array().unwrap().len(), 2);
    assert_eq!(
        statement(&policy, "AssumeRole")["Principal"]["AWS"],
        json!(["arn:aws:iam::111122223333:user/tenantry-operator"])
    );
}

#[test]
fn pod_identity_trusts_the_eks_service_for_the_tenants_service_account_only() {
    let trust = RoleTrust {
        pod_identity: Some(PodIdentityTrust {
            cluster_arn: Some("arn:aws:eks:eu-west-1:111122223333:cluster/prod".into()),
        }),
        ..Default::default()
    };
    let policy = trust_policy(&trust, "acme", &workload(), &operator());
    let pods = statement(&policy, "PodIdentity");
    assert_eq!(pods["Principal"]["Service"], "pods.eks.amazonaws.com");
    assert_eq!(pods["Action"], json!(["sts:AssumeRole", "sts:TagSession"]));
    let equals = &pods["Condition"]["StringEquals"];
    assert_eq!(equals["aws:RequestTag/kubernetes-namespace"], "acme-apps");
    assert_eq!(
        equals["aws:RequestTag/kubernetes-service-account"],
        "acme-app"
    );
    assert_eq!(
        equals["aws:RequestTag/eks-cluster-arn"],
        "arn:aws:eks:eu-west-1:111122223333:cluster/prod"
    );
    assert_eq!(equals["aws:SourceAccount"], "111122223333");
}

#[test]
fn a_fixed_principal_is_named_with_the_tenant_filled_in() {
    let trust = RoleTrust {
        principal: Some("arn:aws:iam::111122223333:role/app-{tenant}".into()),
        ..Default::default()
    };
    let policy = trust_policy(&trust, "acme", &workload(), &operator());
    let principal = statement(&policy, "AssumeRole");
    assert_eq!(
        principal["Principal"]["AWS"],
        json!([
            "arn:aws:iam::111122223333:role/app-acme",
            "arn:aws:iam::111122223333:user/tenantry-operator"
        ])
    );
    assert_eq!(principal["Action"], "sts:AssumeRole");
    assert_eq!(policy["Statement"].as_array().unwrap().len(), 1);
}

#[test]
fn the_access_policy_names_the_tenants_bucket_objects_key_and_secret_only() {
    let policy = access_policy(&TenantGrants {
        bucket: "tenantry-acme",
        key_arn: "arn:aws:kms:eu-west-1:111122223333:key/k-1",
        tenant_uid: "uid-acme",
    });
    assert_eq!(
        statement(&policy, "Bucket")["Resource"],
        "arn:aws:s3:::tenantry-acme"
    );
    assert_eq!(
        statement(&policy, "Objects")["Resource"],
        "arn:aws:s3:::tenantry-acme/*"
    );
    for sid in ["Key", "Secret"] {
        assert_eq!(
            statement(&policy, sid)["Condition"]["StringEquals"]["aws:ResourceTag/tenantry.dev/tenant-uid"],
            "uid-acme"
        );
    }
    // No wildcard action anywhere: nothing beyond the tenant's own data.
    for s in policy["Statement"].as_array().unwrap() {
        assert!(!s["Action"].to_string().contains("\"s3:*\""), "{s}");
        assert!(!s["Action"].to_string().contains("\"*\""), "{s}");
    }
}

#[test]
fn the_revoked_policy_denies_everything() {
    let policy = revoked_policy();
    assert_eq!(policy["Statement"][0]["Effect"], "Deny");
    assert_eq!(policy["Statement"][0]["Action"], "*");
    assert_eq!(policy["Statement"][0]["Resource"], "*");
}

#[test]
fn a_url_encoded_document_reads_as_the_same_policy() {
    let policy = revoked_policy();
    let encoded: String = percent_encoding::utf8_percent_encode(
        &policy.to_string(),
        percent_encoding::NON_ALPHANUMERIC,
    )
    .to_string();
    assert!(same_policy(&decode_policy(&encoded), &policy));
    assert!(!same_policy(
        &decode_policy(&encoded),
        &access_policy(&TenantGrants {
            bucket: "b",
            key_arn: "arn:aws:kms:eu-west-1:1:key/k",
            tenant_uid: "u",
        })
    ));
}
