//! tenantry's AWS policies, as the code writes them, evaluated by
//! [`crate::policy_eval`] for two tenants and their neighbours: the proof
//! that moto cannot give, since it evaluates no bucket or key policy and no
//! condition, and matches KMS and Secrets Manager statements against `*`
//! only (docs/security.md, "What moto enforces").
//!
//! The account has tenants acme and globex, each with its role, bucket, key
//! and secret; the operator (a user); and a neighbour: a role of the same
//! account that some IAM policy lets do everything.

use serde_json::{Value, json};

use super::iam::{TenantGrants, Workload, access_policy, revoked_policy, trust_policy};
use super::kms::{default_key_policy, with_tenantry_statements};
use super::principals::{Caller, allowed_patterns};
use super::s3::{BucketAccess, bucket_policy};
use crate::api::{IrsaTrust, RoleTrust};
use crate::policy_eval::{Decision, Request, evaluate, evaluate_kms, evaluate_trust};

const ACCOUNT: &str = "111122223333";
const OPERATOR: &str = "arn:aws:iam::111122223333:user/tenantry-operator";
const NEIGHBOUR: &str = "arn:aws:iam::111122223333:role/everything";
const UID_TAG: &str = "aws:ResourceTag/tenantry.dev/tenant-uid";

struct Tenant {
    name: &'static str,
    uid: &'static str,
}

const ACME: Tenant = Tenant {
    name: "acme",
    uid: "uid-acme",
};
const GLOBEX: Tenant = Tenant {
    name: "globex",
    uid: "uid-globex",
};

impl Tenant {
    fn role(&self) -> String {
        format!(
            "arn:aws:iam::{ACCOUNT}:role/tenantry/tenantry-{}",
            self.name
        )
    }
    fn bucket(&self) -> String {
        format!("tenantry-{}", self.name)
    }
    fn bucket_arn(&self) -> String {
        format!("arn:aws:s3:::tenantry-{}", self.name)
    }
    fn object(&self) -> String {
        format!("{}/reports/q1.csv", self.bucket_arn())
    }
    fn key_arn(&self) -> String {
        format!("arn:aws:kms:eu-west-1:{ACCOUNT}:key/key-{}", self.name)
    }
    fn secret_arn(&self) -> String {
        format!(
            "arn:aws:secretsmanager:eu-west-1:{ACCOUNT}:secret:tenantry/{}/database-AbCdEf",
            self.name
        )
    }
    fn allowed(&self) -> Vec<String> {
        let operator = Caller::from_arn(OPERATOR).unwrap();
        allowed_patterns(
            &operator,
            Some(&format!("tenantry-{}", self.name)),
            None,
            &[],
        )
    }
    fn bucket_policy(&self) -> Value {
        bucket_policy(
            &self.bucket(),
            &self.key_arn(),
            &BucketAccess {
                principal: None,
                allowed: &self.allowed(),
            },
        )
    }
    fn key_policy(&self) -> Value {
        let default = default_key_policy(&self.key_arn()).unwrap();
        with_tenantry_statements(&default, None, &self.allowed())
    }
    fn role_policy(&self) -> Value {
        access_policy(&TenantGrants {
            bucket: &self.bucket(),
            key_arn: &self.key_arn(),
            tenant_uid: self.uid,
        })
    }
}

/// What a request over TLS looks like.
fn request(principal: &str, action: &str, resource: &str) -> Request {
    Request::new(principal, action, resource).with("aws:SecureTransport", "true")
}

fn everything() -> Value {
    json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})
}

fn deny(sid: &str) -> Decision {
    Decision::ExplicitDeny {
        sid: Some(sid.to_string()),
    }
}

/// A request to a tenant's bucket, as S3 decides it.
fn s3(identity: &[Value], owner: &Tenant, request: &Request) -> Decision {
    evaluate(identity, Some(&owner.bucket_policy()), request).unwrap()
}

/// A request with a tenant's key, as KMS decides it.
fn kms(identity: &[Value], owner: &Tenant, principal: &str, action: &str) -> Decision {
    let request = request(principal, action, &owner.key_arn()).with(UID_TAG, owner.uid);
    evaluate_kms(identity, &owner.key_policy(), &request).unwrap()
}

fn secret(identity: &[Value], owner: &Tenant, principal: &str) -> Decision {
    let request = request(
        principal,
        "secretsmanager:GetSecretValue",
        &owner.secret_arn(),
    )
    .with(UID_TAG, owner.uid);
    evaluate(identity, None, &request).unwrap()
}

#[test]
fn a_tenants_role_uses_its_own_bucket_key_and_secret() {
    let role = [ACME.role_policy()];
    let own = ACME.role();
    for (action, resource) in [
        ("s3:ListBucket", ACME.bucket_arn()),
        ("s3:GetObject", ACME.object()),
        ("s3:PutObject", ACME.object()),
        ("s3:DeleteObject", ACME.object()),
    ] {
        assert_eq!(
            s3(&role, &ACME, &request(&own, action, &resource)),
            Decision::Allow,
            "{action}"
        );
    }
    // Under its own key, named or by the bucket's default.
    let put = request(&own, "s3:PutObject", &ACME.object());
    let under_own_key = put
        .clone()
        .with("s3:x-amz-server-side-encryption", "aws:kms")
        .with(
            "s3:x-amz-server-side-encryption-aws-kms-key-id",
            ACME.key_arn(),
        );
    assert_eq!(s3(&role, &ACME, &under_own_key), Decision::Allow);
    for action in ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey"] {
        assert_eq!(kms(&role, &ACME, &own, action), Decision::Allow, "{action}");
    }
    assert_eq!(secret(&role, &ACME, &own), Decision::Allow);
}

#[test]
fn a_tenants_role_is_refused_its_neighbours_bucket_key_and_secret() {
    let role = [ACME.role_policy()];
    let own = ACME.role();
    for (action, resource) in [
        ("s3:ListBucket", GLOBEX.bucket_arn()),
        ("s3:GetObject", GLOBEX.object()),
        ("s3:PutObject", GLOBEX.object()),
    ] {
        assert_eq!(
            s3(&role, &GLOBEX, &request(&own, action, &resource)),
            deny("DenyOtherPrincipals"),
            "{action}"
        );
    }
    assert_eq!(
        kms(&role, &GLOBEX, &own, "kms:Decrypt"),
        deny("DenyOtherPrincipals")
    );
    // No resource policy on the secret: the role's own policy does not
    // reach a secret tagged with another uid.
    assert_eq!(secret(&role, &GLOBEX, &own), Decision::ImplicitDeny);
}

#[test]
fn a_role_that_iam_lets_do_everything_is_still_refused_a_tenants_data() {
    let anything = [everything()];
    for (action, resource) in [
        ("s3:GetObject", ACME.object()),
        ("s3:PutObject", ACME.object()),
        ("s3:ListBucket", ACME.bucket_arn()),
        ("s3:GetObjectVersion", ACME.object()),
    ] {
        assert_eq!(
            s3(&anything, &ACME, &request(NEIGHBOUR, action, &resource)),
            deny("DenyOtherPrincipals"),
            "{action}"
        );
    }
    assert_eq!(
        kms(&anything, &ACME, NEIGHBOUR, "kms:Decrypt"),
        deny("DenyOtherPrincipals")
    );
    // Configuration stays IAM's: the deny never locks anyone out of a fix.
    let put_policy = request(NEIGHBOUR, "s3:PutBucketPolicy", &ACME.bucket_arn());
    assert_eq!(s3(&anything, &ACME, &put_policy), Decision::Allow);
    assert_eq!(
        kms(&anything, &ACME, NEIGHBOUR, "kms:PutKeyPolicy"),
        Decision::Allow
    );
}

#[test]
fn the_operator_and_the_accounts_root_keep_their_access() {
    let operator = [everything()];
    let list = request(OPERATOR, "s3:ListBucketVersions", &ACME.bucket_arn());
    assert_eq!(s3(&operator, &ACME, &list), Decision::Allow);
    let delete = request(OPERATOR, "s3:DeleteObjectVersion", &ACME.object());
    assert_eq!(s3(&operator, &ACME, &delete), Decision::Allow);
    assert_eq!(
        kms(&operator, &ACME, OPERATOR, "kms:GenerateDataKey"),
        Decision::Allow
    );
    let root = format!("arn:aws:iam::{ACCOUNT}:root");
    let read = request(&root, "s3:GetObject", &ACME.object());
    assert_eq!(s3(&[], &ACME, &read), Decision::Allow);
}

#[test]
fn objects_under_another_encryption_or_key_are_refused_even_to_the_tenant() {
    let role = [ACME.role_policy()];
    let put = request(&ACME.role(), "s3:PutObject", &ACME.object());
    let s3_managed = put
        .clone()
        .with("s3:x-amz-server-side-encryption", "AES256");
    assert_eq!(s3(&role, &ACME, &s3_managed), deny("DenyOtherEncryption"));
    let neighbours_key = put.with("s3:x-amz-server-side-encryption", "aws:kms").with(
        "s3:x-amz-server-side-encryption-aws-kms-key-id",
        GLOBEX.key_arn(),
    );
    assert_eq!(s3(&role, &ACME, &neighbours_key), deny("DenyOtherKeys"));
}

#[test]
fn nothing_without_tls_and_nothing_while_access_is_revoked() {
    let role = [ACME.role_policy()];
    let plain = Request::new(ACME.role(), "s3:GetObject", ACME.object())
        .with("aws:SecureTransport", "false");
    assert_eq!(s3(&role, &ACME, &plain), deny("DenyInsecureTransport"));

    let suspended = [ACME.role_policy(), revoked_policy()];
    let own = ACME.role();
    let read = request(&own, "s3:GetObject", &ACME.object());
    assert_eq!(s3(&suspended, &ACME, &read), deny("TenantAccessRevoked"));
    assert_eq!(
        kms(&suspended, &ACME, &own, "kms:Decrypt"),
        deny("TenantAccessRevoked")
    );
    assert_eq!(secret(&suspended, &ACME, &own), deny("TenantAccessRevoked"));
}

#[test]
fn only_the_trusted_workload_and_the_operator_may_become_the_role() {
    let operator = Caller::from_arn(OPERATOR).unwrap();
    let workload = Workload {
        namespace: "apps",
        service_account: "acme-app",
    };
    let fixed = RoleTrust {
        principal: Some(format!("arn:aws:iam::{ACCOUNT}:role/app-{{tenant}}")),
        ..Default::default()
    };
    let trust = trust_policy(&fixed, "acme", &workload, &operator);
    let assume = |principal: &str| {
        let request = request(principal, "sts:AssumeRole", &ACME.role());
        evaluate_trust(&[everything()], &trust, &request).unwrap()
    };
    assert_eq!(
        assume(&format!("arn:aws:iam::{ACCOUNT}:role/app-acme")),
        Decision::Allow
    );
    assert_eq!(assume(OPERATOR), Decision::Allow);
    assert_eq!(
        assume(&format!("arn:aws:iam::{ACCOUNT}:role/app-globex")),
        Decision::ImplicitDeny
    );
    assert_eq!(assume(NEIGHBOUR), Decision::ImplicitDeny);

    let provider =
        format!("arn:aws:iam::{ACCOUNT}:oidc-provider/oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE");
    let irsa = RoleTrust {
        irsa: Some(IrsaTrust {
            oidc_provider_arn: provider.clone(),
            audience: None,
        }),
        ..Default::default()
    };
    let trust = trust_policy(&irsa, "acme", &workload, &operator);
    let web_identity = |subject: &str| {
        let request = Request::new(&provider, "sts:AssumeRoleWithWebIdentity", ACME.role())
            .with("oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE:sub", subject)
            .with(
                "oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE:aud",
                "sts.amazonaws.com",
            );
        evaluate_trust(&[], &trust, &request).unwrap()
    };
    assert_eq!(
        web_identity("system:serviceaccount:apps:acme-app"),
        Decision::Allow
    );
    assert_eq!(
        web_identity("system:serviceaccount:apps:globex-app"),
        Decision::ImplicitDeny
    );
}
