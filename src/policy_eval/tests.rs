//! Each rule of the evaluator with a small policy, the AWS documentation's
//! own examples, and the malformed policies it must refuse. Every test
//! asserts the exact decision (the Sid of a Deny included) or error.

use serde_json::{Value, json};

use super::*;

const ACCOUNT: &str = "111122223333";
const OTHER_ACCOUNT: &str = "444455556666";
const ROOT: &str = "arn:aws:iam::111122223333:root";
const ALICE: &str = "arn:aws:iam::111122223333:user/alice";
const BOB: &str = "arn:aws:iam::111122223333:user/bob";
const ACME: &str = "arn:aws:iam::111122223333:role/tenantry/t-acme";
const GLOBEX: &str = "arn:aws:iam::111122223333:role/tenantry/t-globex";
const OPERATOR: &str = "arn:aws:iam::111122223333:role/tenantry/operator";
const BUCKET: &str = "arn:aws:s3:::tenantry-acme";
const OBJECT: &str = "arn:aws:s3:::tenantry-acme/data.csv";
const KEY: &str = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
const OTHER_KEY: &str =
    "arn:aws:kms:eu-west-1:111122223333:key/0000aaaa-12ab-34cd-56ef-1234567890ab";

fn policy(statements: Value) -> Value {
    json!({"Version": "2012-10-17", "Statement": statements})
}

fn allow(action: &str, resource: &str) -> Value {
    policy(json!([{"Effect": "Allow", "Action": action, "Resource": resource}]))
}

fn decide(identity: &[Value], resource: Option<&Value>, request: &Request) -> Decision {
    evaluate(identity, resource, request).expect("the policies are well-formed")
}

fn denied(sid: &str) -> Decision {
    Decision::ExplicitDeny {
        sid: Some(sid.to_string()),
    }
}

/// Whether an identity policy allowing everything under `condition` allows
/// a request whose context is `context`.
fn holds(condition: Value, context: &[(&str, &str)]) -> bool {
    let identity = policy(json!([{
        "Effect": "Allow", "Action": "*", "Resource": "*", "Condition": condition,
    }]));
    let request = context
        .iter()
        .fold(Request::new(ALICE, "s3:GetObject", OBJECT), |r, (k, v)| {
            r.with(*k, *v)
        });
    match decide(&[identity], None, &request) {
        Decision::Allow => true,
        Decision::ImplicitDeny => false,
        other => panic!("no Deny in this policy, got {other:?}"),
    }
}

fn identity_error(document: Value) -> PolicyError {
    evaluate(
        &[document],
        None,
        &Request::new(ALICE, "s3:GetObject", OBJECT),
    )
    .expect_err("the identity policy is malformed")
}

fn resource_error(document: Value) -> PolicyError {
    evaluate(
        &[],
        Some(&document),
        &Request::new(ALICE, "s3:GetObject", OBJECT),
    )
    .expect_err("the resource policy is malformed")
}

// Evaluation logic.

#[test]
fn no_policy_is_an_implicit_deny() {
    let request = Request::new(ALICE, "s3:GetObject", OBJECT);
    assert_eq!(decide(&[], None, &request), Decision::ImplicitDeny);
}

#[test]
fn request_new_reads_the_account_from_the_principal_arn() {
    let request = Request::new(ACME, "s3:GetObject", OBJECT).with("aws:SecureTransport", "true");
    assert_eq!(request.account, ACCOUNT);
    assert_eq!(request.context["aws:SecureTransport"], ["true"]);
    assert_eq!(
        Request::new("s3.amazonaws.com", "kms:Decrypt", KEY).account,
        ""
    );
}

#[test]
fn an_identity_allow_allows_its_action_on_its_resource_only() {
    let identity = [allow("s3:GetObject", OBJECT)];
    let get = Request::new(ALICE, "s3:GetObject", OBJECT);
    assert_eq!(decide(&identity, None, &get), Decision::Allow);
    let put = Request::new(ALICE, "s3:PutObject", OBJECT);
    assert_eq!(decide(&identity, None, &put), Decision::ImplicitDeny);
    let other = Request::new(
        ALICE,
        "s3:GetObject",
        "arn:aws:s3:::tenantry-acme/other.csv",
    );
    assert_eq!(decide(&identity, None, &other), Decision::ImplicitDeny);
}

#[test]
fn an_explicit_deny_wins_over_an_allow_and_names_its_sid() {
    let identity = policy(json!([
        {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
        {"Sid": "NoDeletes", "Effect": "Deny", "Action": "s3:DeleteObject", "Resource": "*"},
    ]));
    let delete = Request::new(ALICE, "s3:DeleteObject", OBJECT);
    assert_eq!(
        decide(std::slice::from_ref(&identity), None, &delete),
        denied("NoDeletes")
    );
    let get = Request::new(ALICE, "s3:GetObject", OBJECT);
    assert_eq!(decide(&[identity], None, &get), Decision::Allow);
}

#[test]
fn a_deny_without_sid_is_reported_without_one() {
    let identity = policy(json!({"Effect": "Deny", "Action": "*", "Resource": "*"}));
    let request = Request::new(ALICE, "s3:GetObject", OBJECT);
    assert_eq!(
        decide(&[identity], None, &request),
        Decision::ExplicitDeny { sid: None }
    );
}

#[test]
fn the_first_deny_is_reported_identity_policies_first() {
    let deny =
        |sid: &str| policy(json!([{"Sid": sid, "Effect": "Deny", "Action": "*", "Resource": "*"}]));
    let bucket = policy(
        json!([{"Sid": "BucketDeny", "Effect": "Deny", "Principal": "*",
        "Action": "*", "Resource": "*"}]),
    );
    let request = Request::new(ALICE, "s3:GetObject", OBJECT);
    let identity = [allow("*", "*"), deny("Second"), deny("Third")];
    assert_eq!(decide(&identity, Some(&bucket), &request), denied("Second"));
    assert_eq!(
        decide(&identity[..1], Some(&bucket), &request),
        denied("BucketDeny")
    );
}

#[test]
fn a_deny_of_the_resource_policy_wins_over_an_identity_allow() {
    let bucket = policy(json!([{
        "Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
        "Resource": [BUCKET, format!("{BUCKET}/*")],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }]));
    let identity = [allow("s3:*", "*")];
    let plain = Request::new(ALICE, "s3:GetObject", OBJECT).with("aws:SecureTransport", "false");
    assert_eq!(
        decide(&identity, Some(&bucket), &plain),
        denied("DenyInsecureTransport")
    );
    let tls = Request::new(ALICE, "s3:GetObject", OBJECT).with("aws:SecureTransport", "true");
    assert_eq!(decide(&identity, Some(&bucket), &tls), Decision::Allow);
}

#[test]
fn a_resource_policy_allow_naming_the_principal_allows_on_its_own() {
    let bucket = policy(json!([{"Effect": "Allow", "Principal": {"AWS": ACME},
        "Action": "s3:GetObject", "Resource": format!("{BUCKET}/*")}]));
    let acme = Request::new(ACME, "s3:GetObject", OBJECT);
    assert_eq!(decide(&[], Some(&bucket), &acme), Decision::Allow);
    let globex = Request::new(GLOBEX, "s3:GetObject", OBJECT);
    assert_eq!(decide(&[], Some(&bucket), &globex), Decision::ImplicitDeny);
}

#[test]
fn a_resource_policy_allow_naming_the_account_delegates_to_iam() {
    for account in [json!(ROOT), json!(ACCOUNT)] {
        let bucket = policy(json!([{"Effect": "Allow", "Principal": {"AWS": account},
            "Action": "s3:GetObject", "Resource": format!("{BUCKET}/*")}]));
        let request = Request::new(ALICE, "s3:GetObject", OBJECT);
        assert_eq!(decide(&[], Some(&bucket), &request), Decision::ImplicitDeny);
        let identity = [allow("s3:GetObject", "*")];
        assert_eq!(decide(&identity, Some(&bucket), &request), Decision::Allow);
    }
}

#[test]
fn everyone_is_named_by_a_star() {
    for principal in [json!("*"), json!({"AWS": "*"}), json!({"AWS": ["*"]})] {
        let bucket = policy(json!([{"Effect": "Allow", "Principal": principal,
            "Action": "s3:GetObject", "Resource": format!("{BUCKET}/*")}]));
        let request = Request::new(BOB, "s3:GetObject", OBJECT);
        assert_eq!(decide(&[], Some(&bucket), &request), Decision::Allow);
    }
}

#[test]
fn a_deny_naming_the_account_denies_everyone_in_it() {
    let bucket = policy(json!([{"Sid": "DenyAccount", "Effect": "Deny",
        "Principal": {"AWS": ACCOUNT}, "Action": "s3:*", "Resource": "*"}]));
    let identity = [allow("s3:*", "*")];
    for principal in [ALICE, ACME, ROOT] {
        let request = Request::new(principal, "s3:GetObject", OBJECT);
        assert_eq!(
            decide(&identity, Some(&bucket), &request),
            denied("DenyAccount")
        );
    }
    let stranger = Request::new("arn:aws:iam::444455556666:user/eve", "s3:GetObject", OBJECT);
    assert_eq!(decide(&identity, Some(&bucket), &stranger), Decision::Allow);
}

#[test]
fn a_role_session_is_named_by_its_role_arn_path_included() {
    let named = |arn: &str| {
        policy(json!([{"Effect": "Allow", "Principal": {"AWS": [BOB, arn]},
            "Action": "s3:GetObject", "Resource": "*"}]))
    };
    let request = Request::new(ACME, "s3:GetObject", OBJECT);
    assert_eq!(decide(&[], Some(&named(ACME)), &request), Decision::Allow);
    let without_path = named("arn:aws:iam::111122223333:role/t-acme");
    assert_eq!(
        decide(&[], Some(&without_path), &request),
        Decision::ImplicitDeny
    );
}

#[test]
fn a_principal_naming_a_session_needs_the_session_name() {
    let bucket = policy(json!([{"Effect": "Allow",
        "Principal": {"AWS": "arn:aws:sts::111122223333:assumed-role/t-acme/app"},
        "Action": "s3:GetObject", "Resource": "*"}]));
    let request = Request::new(ACME, "s3:GetObject", OBJECT);
    let app = request.clone().with("aws:userid", "AROAEXAMPLEID:app");
    assert_eq!(decide(&[], Some(&bucket), &app), Decision::Allow);
    let batch = request.clone().with("aws:userid", "AROAEXAMPLEID:batch");
    assert_eq!(decide(&[], Some(&bucket), &batch), Decision::ImplicitDeny);
    assert!(matches!(
        evaluate(&[], Some(&bucket), &request),
        Err(PolicyError::SessionUnknown { role, .. }) if role == "t-acme"
    ));
    // Another role's session is not this caller, whatever its session.
    let globex = Request::new(GLOBEX, "s3:GetObject", OBJECT);
    assert_eq!(decide(&[], Some(&bucket), &globex), Decision::ImplicitDeny);
    // An entry naming the role itself decides without the session.
    let both = policy(json!([{"Effect": "Allow",
        "Principal": {"AWS": ["arn:aws:sts::111122223333:assumed-role/t-acme/app", ACME]},
        "Action": "s3:GetObject", "Resource": "*"}]));
    assert_eq!(decide(&[], Some(&both), &request), Decision::Allow);
}

#[test]
fn the_root_user_is_allowed_in_its_account_unless_denied() {
    let request = Request::new(ROOT, "s3:DeleteBucket", BUCKET);
    assert_eq!(decide(&[], None, &request), Decision::Allow);
    let bucket = policy(
        json!([{"Sid": "NoDelete", "Effect": "Deny", "Principal": "*",
        "Action": "s3:DeleteBucket", "Resource": BUCKET}]),
    );
    assert_eq!(decide(&[], Some(&bucket), &request), denied("NoDelete"));
}

#[test]
fn a_service_principal_is_named_by_service() {
    let bucket = policy(json!([{"Effect": "Allow",
        "Principal": {"Service": "logging.s3.amazonaws.com"},
        "Action": "s3:PutObject", "Resource": format!("{BUCKET}/*")}]));
    let service = Request::new("logging.s3.amazonaws.com", "s3:PutObject", OBJECT);
    assert_eq!(decide(&[], Some(&bucket), &service), Decision::Allow);
    let other = Request::new("cloudtrail.amazonaws.com", "s3:PutObject", OBJECT);
    assert_eq!(decide(&[], Some(&bucket), &other), Decision::ImplicitDeny);
    let role = Request::new(ACME, "s3:PutObject", OBJECT);
    assert_eq!(decide(&[], Some(&bucket), &role), Decision::ImplicitDeny);
}

// tenantry's own bucket policy (src/backends/s3.rs `bucket_policy`).

#[test]
fn tenantry_bucket_policy_lets_in_its_tenant_over_tls_only() {
    let resources = json!([BUCKET, format!("{BUCKET}/*")]);
    let bucket = policy(json!([
        {"Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
         "Resource": resources, "Condition": {"Bool": {"aws:SecureTransport": "false"}}},
        {"Sid": "AllowTenantPrincipal", "Effect": "Allow", "Principal": {"AWS": ACME},
         "Action": ["s3:GetObject", "s3:GetObjectVersion", "s3:PutObject", "s3:DeleteObject",
                    "s3:ListBucket", "s3:GetBucketLocation"],
         "Resource": resources},
    ]));
    let tls = |principal: &str, action: &str, resource: &str| {
        Request::new(principal, action, resource).with("aws:SecureTransport", "true")
    };
    assert_eq!(
        decide(&[], Some(&bucket), &tls(ACME, "s3:GetObject", OBJECT)),
        Decision::Allow
    );
    assert_eq!(
        decide(&[], Some(&bucket), &tls(ACME, "s3:ListBucket", BUCKET)),
        Decision::Allow
    );
    assert_eq!(
        decide(&[], Some(&bucket), &tls(ACME, "s3:PutBucketPolicy", BUCKET)),
        Decision::ImplicitDeny
    );
    assert_eq!(
        decide(&[], Some(&bucket), &tls(GLOBEX, "s3:GetObject", OBJECT)),
        Decision::ImplicitDeny
    );
    let plain = Request::new(ACME, "s3:GetObject", OBJECT).with("aws:SecureTransport", "false");
    assert_eq!(
        decide(&[], Some(&bucket), &plain),
        denied("DenyInsecureTransport")
    );
}

// KMS key policies.

fn default_key_policy() -> Value {
    json!({"Version": "2012-10-17", "Id": "key-default-1", "Statement": [{
        "Sid": "Enable IAM User Permissions", "Effect": "Allow",
        "Principal": {"AWS": ROOT}, "Action": "kms:*", "Resource": "*",
    }]})
}

fn kms(identity: &[Value], key_policy: &Value, request: &Request) -> Decision {
    evaluate_kms(identity, key_policy, request).expect("the policies are well-formed")
}

#[test]
fn kms_the_default_key_policy_delegates_to_identity_policies() {
    let request = Request::new(ACME, "kms:Decrypt", KEY);
    assert_eq!(
        kms(&[], &default_key_policy(), &request),
        Decision::ImplicitDeny
    );
    let identity = [allow("kms:Decrypt", KEY)];
    assert_eq!(
        kms(&identity, &default_key_policy(), &request),
        Decision::Allow
    );
    let elsewhere = [allow("kms:Decrypt", OTHER_KEY)];
    assert_eq!(
        kms(&elsewhere, &default_key_policy(), &request),
        Decision::ImplicitDeny
    );
}

#[test]
fn kms_a_key_policy_naming_the_role_allows_without_identity_policy() {
    let key_policy = policy(json!([{"Sid": "tenantry-principal", "Effect": "Allow",
        "Principal": {"AWS": ACME},
        "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*",
                   "kms:DescribeKey"],
        "Resource": "*"}]));
    let decrypt = Request::new(ACME, "kms:Decrypt", KEY);
    assert_eq!(kms(&[], &key_policy, &decrypt), Decision::Allow);
    let data_key = Request::new(ACME, "kms:GenerateDataKeyWithoutPlaintext", KEY);
    assert_eq!(kms(&[], &key_policy, &data_key), Decision::Allow);
    let delete = Request::new(ACME, "kms:ScheduleKeyDeletion", KEY);
    assert_eq!(
        kms(&[allow("kms:*", "*")], &key_policy, &delete),
        Decision::ImplicitDeny
    );
}

#[test]
fn kms_an_identity_allow_without_the_key_policy_has_no_effect() {
    let key_policy = policy(json!([{"Effect": "Allow", "Principal": {"AWS": ACME},
        "Action": "kms:*", "Resource": "*"}]));
    let identity = [allow("kms:*", "*")];
    let globex = Request::new(GLOBEX, "kms:Decrypt", KEY);
    assert_eq!(kms(&identity, &key_policy, &globex), Decision::ImplicitDeny);
    // The same documents read as an S3-style resource policy would allow:
    // the key policy rule is what keeps the other tenant out.
    assert_eq!(
        decide(&identity, Some(&key_policy), &globex),
        Decision::Allow
    );
}

#[test]
fn kms_delegation_to_the_account_is_per_action() {
    let key_policy = policy(json!([{"Effect": "Allow", "Principal": {"AWS": ACCOUNT},
        "Action": "kms:Describe*", "Resource": "*"}]));
    let identity = [allow("kms:*", KEY)];
    let describe = Request::new(ACME, "kms:DescribeKey", KEY);
    assert_eq!(kms(&identity, &key_policy, &describe), Decision::Allow);
    let decrypt = Request::new(ACME, "kms:Decrypt", KEY);
    assert_eq!(
        kms(&identity, &key_policy, &decrypt),
        Decision::ImplicitDeny
    );
}

#[test]
fn kms_the_root_user_needs_the_key_policy_too() {
    let request = Request::new(ROOT, "kms:Decrypt", KEY);
    assert_eq!(kms(&[], &default_key_policy(), &request), Decision::Allow);
    let acme_only = policy(json!([{"Effect": "Allow", "Principal": {"AWS": ACME},
        "Action": "kms:*", "Resource": "*"}]));
    assert_eq!(kms(&[], &acme_only, &request), Decision::ImplicitDeny);
}

#[test]
fn kms_a_deny_wins_over_the_key_policy() {
    let key_policy = policy(json!([
        {"Effect": "Allow", "Principal": {"AWS": ACME}, "Action": "kms:*", "Resource": "*"},
        {"Sid": "DenyOutsideS3", "Effect": "Deny", "Principal": "*", "Action": "kms:Decrypt",
         "Resource": "*",
         "Condition": {"StringNotEquals": {"kms:ViaService": "s3.eu-west-1.amazonaws.com"}}},
    ]));
    let direct = Request::new(ACME, "kms:Decrypt", KEY);
    assert_eq!(kms(&[], &key_policy, &direct), denied("DenyOutsideS3"));
    let via_s3 = direct
        .clone()
        .with("kms:ViaService", "s3.eu-west-1.amazonaws.com");
    assert_eq!(kms(&[], &key_policy, &via_s3), Decision::Allow);
    let identity_deny = policy(json!([{"Sid": "NoKms", "Effect": "Deny", "Action": "kms:*",
        "Resource": "*"}]));
    assert_eq!(kms(&[identity_deny], &key_policy, &via_s3), denied("NoKms"));
}

// Role trust policies.

fn trust(identity: &[Value], trust_policy: &Value, request: &Request) -> Decision {
    evaluate_trust(identity, trust_policy, request).expect("the policies are well-formed")
}

#[test]
fn trust_naming_the_caller_allows_assume_role_on_its_own() {
    let trust_policy = policy(json!([{"Effect": "Allow", "Principal": {"AWS": OPERATOR},
        "Action": "sts:AssumeRole"}]));
    let operator = Request::new(OPERATOR, "sts:AssumeRole", ACME);
    assert_eq!(trust(&[], &trust_policy, &operator), Decision::Allow);
    let globex = Request::new(GLOBEX, "sts:AssumeRole", ACME);
    assert_eq!(
        trust(&[allow("sts:AssumeRole", "*")], &trust_policy, &globex),
        Decision::ImplicitDeny
    );
}

#[test]
fn trust_naming_the_account_needs_an_identity_allow() {
    let trust_policy = policy(json!([{"Effect": "Allow", "Principal": {"AWS": ROOT},
        "Action": "sts:AssumeRole"}]));
    let request = Request::new(OPERATOR, "sts:AssumeRole", ACME);
    assert_eq!(trust(&[], &trust_policy, &request), Decision::ImplicitDeny);
    assert_eq!(
        trust(&[allow("sts:AssumeRole", ACME)], &trust_policy, &request),
        Decision::Allow
    );
    assert_eq!(
        trust(&[allow("sts:AssumeRole", GLOBEX)], &trust_policy, &request),
        Decision::ImplicitDeny
    );
}

#[test]
fn trust_of_a_web_identity_provider_checks_the_subject() {
    let provider =
        "arn:aws:iam::111122223333:oidc-provider/oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE";
    let issuer = "oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE";
    let trust_policy = policy(
        json!([{"Effect": "Allow", "Principal": {"Federated": provider},
        "Action": "sts:AssumeRoleWithWebIdentity",
        "Condition": {"StringEquals": {
            format!("{issuer}:sub"): "system:serviceaccount:acme:app",
            format!("{issuer}:aud"): "sts.amazonaws.com",
        }}}]),
    );
    let request = |sub: &str| {
        Request::new(provider, "sts:AssumeRoleWithWebIdentity", ACME)
            .with(format!("{issuer}:sub"), sub)
            .with(format!("{issuer}:aud"), "sts.amazonaws.com")
    };
    let app = request("system:serviceaccount:acme:app");
    assert_eq!(trust(&[], &trust_policy, &app), Decision::Allow);
    let other = request("system:serviceaccount:globex:app");
    assert_eq!(trust(&[], &trust_policy, &other), Decision::ImplicitDeny);
    let mut no_audience = app.clone();
    no_audience.context.remove(&format!("{issuer}:aud"));
    assert_eq!(
        trust(&[], &trust_policy, &no_audience),
        Decision::ImplicitDeny
    );
}

#[test]
fn trust_the_root_user_cannot_assume_a_role() {
    let trust_policy = policy(json!([{"Effect": "Allow", "Principal": {"AWS": ROOT},
        "Action": "sts:AssumeRole"}]));
    let request = Request::new(ROOT, "sts:AssumeRole", ACME);
    assert!(matches!(
        evaluate_trust(&[], &trust_policy, &request),
        Err(PolicyError::InvalidRequest { .. })
    ));
}

#[test]
fn trust_policy_statements_take_no_resource() {
    let trust_policy = policy(json!([{"Effect": "Allow", "Principal": {"AWS": OPERATOR},
        "Action": "sts:AssumeRole", "Resource": ACME}]));
    let request = Request::new(OPERATOR, "sts:AssumeRole", ACME);
    assert!(matches!(
        evaluate_trust(&[], &trust_policy, &request),
        Err(PolicyError::ProhibitedElement {
            element: "Resource",
            policy: "trust policy",
            ..
        })
    ));
}

// Action and NotAction.

fn action_allowed(pattern: &str, action: &str) -> bool {
    let request = Request::new(ALICE, action, "*");
    decide(&[allow(pattern, "*")], None, &request) == Decision::Allow
}

#[test]
fn actions_take_wildcards_regardless_of_case() {
    assert!(action_allowed("s3:Get*", "s3:GetObject"));
    assert!(action_allowed("s3:Get*", "S3:GETOBJECT"));
    assert!(action_allowed("S3:getobject", "s3:GetObject"));
    assert!(action_allowed("s3:Get?bject", "s3:GetObject"));
    assert!(!action_allowed("s3:Get?bject", "s3:GetObjects"));
    assert!(!action_allowed("s3:Get*", "s3:PutObject"));
    assert!(!action_allowed("s3:*", "kms:Decrypt"));
    assert!(!action_allowed("s3:GetObject", "s3:GetObjectVersion"));
    assert!(action_allowed("*", "kms:Decrypt"));
    assert!(action_allowed("kms:*Key*", "kms:GenerateDataKeyPair"));
}

#[test]
fn not_action_applies_to_every_other_action() {
    let identity = policy(json!([
        {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
        {"Sid": "ReadOnly", "Effect": "Deny", "NotAction": ["s3:Get*", "s3:List*"], "Resource": "*"},
    ]));
    let get = Request::new(ALICE, "s3:GetObject", OBJECT);
    assert_eq!(
        decide(std::slice::from_ref(&identity), None, &get),
        Decision::Allow
    );
    let put = Request::new(ALICE, "s3:PutObject", OBJECT);
    assert_eq!(decide(&[identity], None, &put), denied("ReadOnly"));
}

// Resource and NotResource.

fn resource_allowed(pattern: &str, resource: &str) -> bool {
    let request = Request::new(ALICE, "s3:GetObject", resource);
    decide(&[allow("s3:GetObject", pattern)], None, &request) == Decision::Allow
}

#[test]
fn resources_take_wildcards_and_are_case_sensitive() {
    let objects = "arn:aws:s3:::tenantry-acme/*";
    assert!(resource_allowed(objects, OBJECT));
    assert!(resource_allowed(
        objects,
        "arn:aws:s3:::tenantry-acme/a:b/c"
    ));
    assert!(!resource_allowed(
        objects,
        "arn:aws:s3:::TENANTRY-ACME/data.csv"
    ));
    assert!(!resource_allowed(objects, BUCKET));
    assert!(!resource_allowed(
        objects,
        "arn:aws:s3:::tenantry-acme-evil/data.csv"
    ));
    assert!(resource_allowed("arn:aws:s3:::tenantry-acm?/*", OBJECT));
    assert!(!resource_allowed(
        "arn:aws:s3:::tenantry-acm?/*",
        "arn:aws:s3:::tenantry-acmee/x"
    ));
    assert!(resource_allowed("*", OBJECT));
}

#[test]
fn the_resource_part_of_an_arn_keeps_its_colons() {
    let log_group = "arn:aws:logs:eu-west-1:111122223333:log-group:/tenantry/acme:*";
    assert!(resource_allowed(
        log_group,
        "arn:aws:logs:eu-west-1:111122223333:log-group:/tenantry/acme:log-stream:app"
    ));
    assert!(!resource_allowed(
        log_group,
        "arn:aws:logs:eu-west-1:111122223333:log-group:/tenantry/globex:log-stream:app"
    ));
}

#[test]
fn a_resource_wildcard_stays_within_its_arn_segment() {
    let pattern = "arn:aws:kms:*:111122223333:key/*";
    assert!(resource_allowed(pattern, KEY));
    assert!(!resource_allowed(
        pattern,
        "arn:aws:kms:eu-west-1:444455556666:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    ));
    // As one string, `*` would swallow "eu-west-1:444455556666:x" here.
    assert!(!resource_allowed(
        pattern,
        "arn:aws:kms:eu-west-1:444455556666:x:111122223333:key/y"
    ));
}

#[test]
fn an_action_on_no_resource_matches_only_the_lone_star() {
    let list = Request::new(ALICE, "kms:ListKeys", "*");
    let scoped = [allow("kms:*", "arn:aws:kms:*:111122223333:key/*")];
    assert_eq!(decide(&scoped, None, &list), Decision::ImplicitDeny);
    assert_eq!(decide(&[allow("kms:*", "*")], None, &list), Decision::Allow);
}

#[test]
fn not_resource_applies_to_every_other_resource() {
    let identity = policy(json!([
        {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
        {"Sid": "OwnBucketOnly", "Effect": "Deny", "Action": "s3:*",
         "NotResource": [BUCKET, format!("{BUCKET}/*")]},
    ]));
    let own = Request::new(ACME, "s3:GetObject", OBJECT);
    assert_eq!(
        decide(std::slice::from_ref(&identity), None, &own),
        Decision::Allow
    );
    let other = Request::new(
        ACME,
        "s3:GetObject",
        "arn:aws:s3:::tenantry-globex/data.csv",
    );
    assert_eq!(decide(&[identity], None, &other), denied("OwnBucketOnly"));
}

#[test]
fn single_values_and_lists_are_alike() {
    let single = json!({"Version": "2012-10-17", "Statement": {
        "Effect": "Allow", "Action": "s3:GetObject", "Resource": OBJECT,
        "Condition": {"StringEquals": {"aws:SourceVpce": "vpce-1"}}}});
    let lists = policy(json!([{
        "Effect": "Allow", "Action": ["s3:GetObject"], "Resource": [OBJECT],
        "Condition": {"StringEquals": {"aws:SourceVpce": ["vpce-1"]}}}]));
    for identity in [single, lists] {
        let good = Request::new(ALICE, "s3:GetObject", OBJECT).with("aws:SourceVpce", "vpce-1");
        assert_eq!(
            decide(std::slice::from_ref(&identity), None, &good),
            Decision::Allow
        );
        let bad = Request::new(ALICE, "s3:GetObject", OBJECT).with("aws:SourceVpce", "vpce-2");
        assert_eq!(decide(&[identity], None, &bad), Decision::ImplicitDeny);
    }
}

// Conditions.

#[test]
fn string_operators() {
    let key = "aws:PrincipalTag/team";
    let c = |op: &str, v: &str| json!({op: {key: v}});
    let team = [(key, "Data-Eng")];
    assert!(holds(c("StringEquals", "Data-Eng"), &team));
    assert!(!holds(c("StringEquals", "data-eng"), &team));
    assert!(!holds(c("StringEquals", "Data-*"), &team));
    assert!(holds(c("StringEquals", "Data-*"), &[(key, "Data-*")]));
    assert!(holds(c("StringEqualsIgnoreCase", "data-ENG"), &team));
    assert!(!holds(c("StringEqualsIgnoreCase", "data"), &team));
    assert!(holds(c("StringNotEquals", "data-eng"), &team));
    assert!(!holds(c("StringNotEquals", "Data-Eng"), &team));
    assert!(!holds(c("StringNotEqualsIgnoreCase", "DATA-ENG"), &team));
    assert!(holds(c("StringNotEqualsIgnoreCase", "ops"), &team));
    assert!(holds(c("StringLike", "Data-*"), &team));
    assert!(holds(c("StringLike", "D?ta-E*g"), &team));
    assert!(!holds(c("StringLike", "data-*"), &team));
    assert!(holds(c("StringNotLike", "Ops-*"), &team));
    assert!(!holds(c("StringNotLike", "*Eng"), &team));
}

#[test]
fn an_absent_key_fails_a_condition_and_passes_a_negated_one() {
    let key = "aws:ResourceTag/tenant";
    let arn = "arn:aws:iam::111122223333:role/x";
    let positive = [
        ("StringEquals", "acme"),
        ("StringEqualsIgnoreCase", "acme"),
        ("StringLike", "*"),
        ("ArnEquals", arn),
        ("ArnLike", arn),
        ("NumericEquals", "1"),
        ("NumericLessThan", "1"),
        ("NumericLessThanEquals", "1"),
        ("NumericGreaterThan", "1"),
        ("NumericGreaterThanEquals", "1"),
        ("Bool", "true"),
        ("Bool", "false"),
    ];
    for (op, value) in positive {
        assert!(
            !holds(json!({op: {key: value}}), &[]),
            "{op} passed an absent key"
        );
    }
    let negated = [
        ("StringNotEquals", "acme"),
        ("StringNotEqualsIgnoreCase", "acme"),
        ("StringNotLike", "*"),
        ("ArnNotEquals", arn),
        ("ArnNotLike", arn),
        ("NumericNotEquals", "1"),
    ];
    for (op, value) in negated {
        assert!(
            holds(json!({op: {key: value}}), &[]),
            "{op} failed an absent key"
        );
    }
}

#[test]
fn if_exists_passes_an_absent_key_and_tests_a_present_one() {
    let key = "ec2:InstanceType";
    let like = json!({"StringLikeIfExists": {key: ["t1.*", "t2.*", "m3.*"]}});
    assert!(holds(like.clone(), &[]));
    assert!(holds(like.clone(), &[(key, "t2.micro")]));
    assert!(!holds(like, &[(key, "m5.large")]));
    let not_equals = json!({"StringNotEqualsIfExists": {key: "t2.micro"}});
    assert!(holds(not_equals.clone(), &[]));
    assert!(!holds(not_equals, &[(key, "t2.micro")]));
    let boolean = json!({"BoolIfExists": {"aws:MultiFactorAuthPresent": "true"}});
    assert!(holds(boolean.clone(), &[]));
    assert!(!holds(boolean, &[("aws:MultiFactorAuthPresent", "false")]));
}

#[test]
fn values_of_one_key_are_ored_and_nored_when_negated() {
    let key = "aws:RequestedRegion";
    let equals = json!({"StringEquals": {key: ["eu-west-1", "eu-central-1"]}});
    assert!(holds(equals.clone(), &[(key, "eu-central-1")]));
    assert!(!holds(equals, &[(key, "us-east-1")]));
    let not_equals = json!({"StringNotEquals": {key: ["eu-west-1", "eu-central-1"]}});
    assert!(!holds(not_equals.clone(), &[(key, "eu-central-1")]));
    assert!(holds(not_equals, &[(key, "us-east-1")]));
}

#[test]
fn keys_of_an_operator_and_operators_are_anded() {
    let two_keys = json!({"StringEquals": {"aws:RequestedRegion": "eu-west-1",
        "aws:SourceVpce": "vpce-1"}});
    let both = [
        ("aws:RequestedRegion", "eu-west-1"),
        ("aws:SourceVpce", "vpce-1"),
    ];
    assert!(holds(two_keys.clone(), &both));
    assert!(!holds(two_keys, &both[..1]));
    let two_operators = json!({"StringEquals": {"aws:RequestedRegion": "eu-west-1"},
        "Bool": {"aws:SecureTransport": "true"}});
    assert!(holds(
        two_operators.clone(),
        &[
            ("aws:RequestedRegion", "eu-west-1"),
            ("aws:SecureTransport", "true")
        ]
    ));
    assert!(!holds(
        two_operators,
        &[
            ("aws:RequestedRegion", "eu-west-1"),
            ("aws:SecureTransport", "false")
        ]
    ));
}

#[test]
fn for_all_values_and_for_any_value_over_multivalued_keys() {
    let key = "aws:TagKeys";
    let created = [(key, "CreatedBy"), (key, "CreatedAt")];
    let mixed = [(key, "CreatedBy"), (key, "Owner")];
    let all_like = json!({"ForAllValues:StringLike": {key: "Created*"}});
    assert!(holds(all_like.clone(), &created));
    assert!(!holds(all_like.clone(), &mixed));
    assert!(holds(all_like, &[]), "ForAllValues passes an absent key");
    let any_equals = json!({"ForAnyValue:StringEquals": {key: ["Owner", "Project"]}});
    assert!(holds(any_equals.clone(), &mixed));
    assert!(!holds(any_equals.clone(), &created));
    assert!(!holds(any_equals, &[]), "ForAnyValue fails an absent key");
    let all_not = json!({"ForAllValues:StringNotEquals": {key: "Owner"}});
    assert!(holds(all_not.clone(), &created));
    assert!(!holds(all_not, &mixed));
    let any_not = json!({"ForAnyValue:StringNotLike": {key: "Created*"}});
    assert!(holds(any_not.clone(), &mixed));
    assert!(!holds(any_not, &created));
}

#[test]
fn a_single_valued_operator_on_several_values_tests_any_of_them() {
    let key = "aws:TagKeys";
    let mixed = [(key, "CreatedBy"), (key, "Owner")];
    assert!(holds(json!({"StringEquals": {key: "Owner"}}), &mixed));
    assert!(!holds(json!({"StringNotEquals": {key: "Owner"}}), &mixed));
    assert!(holds(json!({"StringNotEquals": {key: "Project"}}), &mixed));
}

#[test]
fn null_tests_whether_the_key_is_present() {
    let key = "aws:TokenIssueTime";
    assert!(holds(json!({"Null": {key: "true"}}), &[]));
    assert!(!holds(
        json!({"Null": {key: "true"}}),
        &[(key, "2026-01-01T00:00:00Z")]
    ));
    assert!(holds(
        json!({"Null": {key: false}}),
        &[(key, "2026-01-01T00:00:00Z")]
    ));
    assert!(!holds(json!({"Null": {key: "false"}}), &[]));
}

#[test]
fn numeric_operators() {
    let key = "s3:max-keys";
    let c = |op: &str, v: Value| json!({op: {key: v}});
    assert!(holds(
        c("NumericLessThanEquals", json!("10")),
        &[(key, "10")]
    ));
    assert!(!holds(
        c("NumericLessThanEquals", json!("10")),
        &[(key, "11")]
    ));
    assert!(holds(c("NumericLessThan", json!(10)), &[(key, "9.5")]));
    assert!(!holds(c("NumericLessThan", json!(10)), &[(key, "10")]));
    assert!(holds(c("NumericEquals", json!("10")), &[(key, "10.0")]));
    assert!(holds(
        c("NumericNotEquals", json!(["10", "20"])),
        &[(key, "15")]
    ));
    assert!(!holds(
        c("NumericNotEquals", json!(["10", "20"])),
        &[(key, "20")]
    ));
    assert!(holds(c("NumericGreaterThan", json!("10")), &[(key, "11")]));
    assert!(!holds(c("NumericGreaterThan", json!("10")), &[(key, "10")]));
    assert!(holds(
        c("NumericGreaterThanEquals", json!("10")),
        &[(key, "10")]
    ));
}

#[test]
fn bool_compares_true_and_false_regardless_of_case() {
    let key = "aws:SecureTransport";
    assert!(holds(json!({"Bool": {key: "true"}}), &[(key, "TRUE")]));
    assert!(holds(json!({"Bool": {key: true}}), &[(key, "true")]));
    assert!(!holds(json!({"Bool": {key: false}}), &[(key, "true")]));
}

#[test]
fn arn_operators_match_segment_by_segment_unlike_string_like() {
    // The example of AWS's "Condition operators" page.
    let key = "aws:SourceArn";
    let pattern = "arn:aws:someservice:*:111122223333:finance/*";
    let value = [(
        key,
        "arn:aws:someservice:us-east-2:999999999999:store/abc:111122223333:finance/document.txt",
    )];
    assert!(holds(json!({"StringLike": {key: pattern}}), &value));
    assert!(!holds(json!({"ArnLike": {key: pattern}}), &value));
    assert!(holds(json!({"ArnNotLike": {key: pattern}}), &value));
    let ok = [(
        key,
        "arn:aws:someservice:us-east-2:111122223333:finance/document.txt",
    )];
    assert!(holds(json!({"ArnLike": {key: pattern}}), &ok));
    assert!(
        holds(json!({"ArnEquals": {key: pattern}}), &ok),
        "ArnEquals takes wildcards too"
    );
    assert!(!holds(json!({"ArnNotEquals": {key: pattern}}), &ok));
    assert!(!holds(
        json!({"ArnLike": {key: pattern}}),
        &[(key, "not-an-arn")]
    ));
}

#[test]
fn condition_keys_match_regardless_of_case() {
    assert!(holds(
        json!({"Bool": {"aws:securetransport": "true"}}),
        &[("AWS:SecureTransport", "true")]
    ));
    assert!(holds(
        json!({"StringEquals": {"aws:principalarn": ALICE}}),
        &[]
    ));
}

#[test]
fn principal_arn_and_account_come_from_the_request() {
    // "Deny unless the principal ARN matches", the ArnNotLike way.
    let bucket = policy(
        json!([{"Sid": "OnlyAcme", "Effect": "Deny", "Principal": "*",
        "Action": "s3:*", "Resource": [BUCKET, format!("{BUCKET}/*")],
        "Condition": {"ArnNotLike": {"aws:PrincipalArn": "arn:aws:iam::111122223333:role/tenantry/t-acme"}}}]),
    );
    let identity = [allow("s3:*", "*")];
    let acme = Request::new(ACME, "s3:GetObject", OBJECT);
    assert_eq!(decide(&identity, Some(&bucket), &acme), Decision::Allow);
    let globex = Request::new(GLOBEX, "s3:GetObject", OBJECT);
    assert_eq!(
        decide(&identity, Some(&bucket), &globex),
        denied("OnlyAcme")
    );
    let account = json!({"StringEquals": {"aws:PrincipalAccount": ACCOUNT}});
    assert!(holds(account, &[]));
    let other = json!({"StringEquals": {"aws:PrincipalAccount": OTHER_ACCOUNT}});
    assert!(!holds(other, &[]));
}

#[test]
fn sse_kms_enforcement_denies_uploads_without_the_tenant_key() {
    let key_id = "s3:x-amz-server-side-encryption-aws-kms-key-id";
    let bucket = policy(json!([
        {"Sid": "AllowTenant", "Effect": "Allow", "Principal": {"AWS": ACME},
         "Action": ["s3:GetObject", "s3:PutObject"], "Resource": format!("{BUCKET}/*")},
        {"Sid": "DenyOtherKeys", "Effect": "Deny", "Principal": "*", "Action": "s3:PutObject",
         "Resource": format!("{BUCKET}/*"),
         "Condition": {"StringNotEqualsIfExists": {key_id: KEY}}},
    ]));
    let put = Request::new(ACME, "s3:PutObject", OBJECT);
    let own_key = put.clone().with(key_id, KEY);
    assert_eq!(decide(&[], Some(&bucket), &own_key), Decision::Allow);
    let other_key = put.clone().with(key_id, OTHER_KEY);
    assert_eq!(
        decide(&[], Some(&bucket), &other_key),
        denied("DenyOtherKeys")
    );
    // A negated operator with IfExists still passes (and so denies) when
    // the header is absent.
    assert_eq!(decide(&[], Some(&bucket), &put), denied("DenyOtherKeys"));
    let get = Request::new(ACME, "s3:GetObject", OBJECT);
    assert_eq!(decide(&[], Some(&bucket), &get), Decision::Allow);
}

#[test]
fn the_context_may_not_set_the_principal_keys() {
    let request = Request::new(ALICE, "s3:GetObject", OBJECT).with("aws:principalarn", ACME);
    assert!(matches!(
        evaluate(&[allow("*", "*")], None, &request),
        Err(PolicyError::InvalidRequest { .. })
    ));
}

// Policy variables.

#[test]
fn a_policy_variable_in_a_resource_is_the_request_value() {
    let identity = [allow("s3:GetObject", "arn:aws:s3:::home/${aws:username}/*")];
    let own = Request::new(ALICE, "s3:GetObject", "arn:aws:s3:::home/alice/notes")
        .with("aws:username", "alice");
    assert_eq!(decide(&identity, None, &own), Decision::Allow);
    let bobs = Request::new(ALICE, "s3:GetObject", "arn:aws:s3:::home/bob/notes")
        .with("aws:username", "alice");
    assert_eq!(decide(&identity, None, &bobs), Decision::ImplicitDeny);
}

#[test]
fn a_policy_variable_takes_its_default_when_the_key_is_absent() {
    let identity = [allow(
        "s3:GetObject",
        "arn:aws:s3:::home/${ aws:username , 'it''s' }/*",
    )];
    let anonymous = Request::new(ALICE, "s3:GetObject", "arn:aws:s3:::home/it's/x");
    assert_eq!(decide(&identity, None, &anonymous), Decision::Allow);
    let named = anonymous.clone().with("aws:username", "alice");
    assert_eq!(decide(&identity, None, &named), Decision::ImplicitDeny);
}

#[test]
fn escaped_wildcards_are_literal() {
    let identity = [allow("s3:GetObject", "arn:aws:s3:::b/${*}${?}${$}")];
    let literal = Request::new(ALICE, "s3:GetObject", "arn:aws:s3:::b/*?$");
    assert_eq!(decide(&identity, None, &literal), Decision::Allow);
    let other = Request::new(ALICE, "s3:GetObject", "arn:aws:s3:::b/xy$");
    assert_eq!(decide(&identity, None, &other), Decision::ImplicitDeny);
}

#[test]
fn an_unresolved_variable_invalidates_the_statement_deny_included() {
    let identity = policy(json!([
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": BUCKET},
        {"Sid": "OwnPrefix", "Effect": "Deny", "Action": "s3:ListBucket", "Resource": BUCKET,
         "Condition": {"StringNotLike": {"s3:prefix": "home/${aws:username}/*"}}},
    ]));
    let list = Request::new(ALICE, "s3:ListBucket", BUCKET).with("s3:prefix", "home/bob/");
    assert_eq!(
        decide(
            std::slice::from_ref(&identity),
            None,
            &list.clone().with("aws:username", "alice")
        ),
        denied("OwnPrefix")
    );
    assert_eq!(
        decide(
            std::slice::from_ref(&identity),
            None,
            &list.clone().with("aws:username", "bob")
        ),
        Decision::Allow
    );
    assert_eq!(decide(&[identity], None, &list), Decision::Allow);
}

#[test]
fn an_unresolved_variable_in_not_resource_invalidates_the_deny() {
    let identity = policy(json!([
        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"},
        {"Sid": "OwnHomeOnly", "Effect": "Deny", "Action": "s3:GetObject",
         "NotResource": "arn:aws:s3:::home/${aws:username}/*"},
    ]));
    let request = Request::new(ALICE, "s3:GetObject", "arn:aws:s3:::home/bob/x");
    assert_eq!(
        decide(
            std::slice::from_ref(&identity),
            None,
            &request.clone().with("aws:username", "alice")
        ),
        denied("OwnHomeOnly")
    );
    // Without aws:username the Deny is invalid, not a Deny of everything.
    assert_eq!(decide(&[identity], None, &request), Decision::Allow);
}

#[test]
fn a_variable_with_several_values_is_unresolved() {
    let identity = [allow("s3:GetObject", "arn:aws:s3:::home/${aws:username}/*")];
    let request = Request::new(ALICE, "s3:GetObject", "arn:aws:s3:::home/alice/x")
        .with("aws:username", "alice")
        .with("aws:username", "bob");
    assert_eq!(decide(&identity, None, &request), Decision::ImplicitDeny);
}

#[test]
fn variables_are_literal_text_before_version_2012_10_17() {
    for version in [None, Some("2008-10-17")] {
        let mut identity = json!({"Statement": [{"Effect": "Allow", "Action": "s3:GetObject",
            "Resource": "arn:aws:s3:::home/${aws:username}/*"}]});
        if let Some(version) = version {
            identity["Version"] = json!(version);
        }
        let literal = Request::new(ALICE, "s3:GetObject", "arn:aws:s3:::home/${aws:username}/x")
            .with("aws:username", "alice");
        assert_eq!(
            decide(std::slice::from_ref(&identity), None, &literal),
            Decision::Allow
        );
        let substituted = Request::new(ALICE, "s3:GetObject", "arn:aws:s3:::home/alice/x")
            .with("aws:username", "alice");
        assert_eq!(
            decide(&[identity], None, &substituted),
            Decision::ImplicitDeny
        );
    }
}

// NotPrincipal.

#[test]
fn a_deny_with_not_principal_spares_a_user_named_with_its_account() {
    let bucket = policy(json!([{"Sid": "OnlyAlice", "Effect": "Deny",
        "NotPrincipal": {"AWS": [ALICE, ROOT]}, "Action": "s3:*", "Resource": "*"}]));
    let identity = [allow("s3:*", "*")];
    let alice = Request::new(ALICE, "s3:GetObject", OBJECT);
    assert_eq!(decide(&identity, Some(&bucket), &alice), Decision::Allow);
    let bob = Request::new(BOB, "s3:GetObject", OBJECT);
    assert_eq!(decide(&identity, Some(&bucket), &bob), denied("OnlyAlice"));
    // Without the account, AWS may deny the account first: strict reading.
    let user_only = policy(json!([{"Sid": "UserOnly", "Effect": "Deny",
        "NotPrincipal": {"AWS": ALICE}, "Action": "s3:*", "Resource": "*"}]));
    assert_eq!(
        decide(&identity, Some(&user_only), &alice),
        denied("UserOnly")
    );
}

#[test]
fn a_deny_with_not_principal_spares_a_role_session_named_in_full() {
    let session = "arn:aws:sts::111122223333:assumed-role/t-acme/app";
    let full = policy(json!([{"Sid": "OnlyAcmeApp", "Effect": "Deny",
        "NotPrincipal": {"AWS": [session, ACME, ACCOUNT]}, "Action": "s3:*", "Resource": "*"}]));
    let identity = [allow("s3:*", "*")];
    let request = Request::new(ACME, "s3:GetObject", OBJECT);
    let app = request.clone().with("aws:userid", "AROAEXAMPLEID:app");
    assert_eq!(decide(&identity, Some(&full), &app), Decision::Allow);
    let batch = request.clone().with("aws:userid", "AROAEXAMPLEID:batch");
    assert_eq!(
        decide(&identity, Some(&full), &batch),
        denied("OnlyAcmeApp")
    );
    assert!(matches!(
        evaluate(&identity, Some(&full), &request),
        Err(PolicyError::SessionUnknown { .. })
    ));
    let no_session = policy(json!([{"Sid": "RoleAndAccount", "Effect": "Deny",
        "NotPrincipal": {"AWS": [ACME, ACCOUNT]}, "Action": "s3:*", "Resource": "*"}]));
    assert_eq!(
        decide(&identity, Some(&no_session), &app),
        denied("RoleAndAccount")
    );
}

#[test]
fn an_allow_with_not_principal_allows_everyone_else() {
    let bucket = policy(
        json!([{"Effect": "Allow", "NotPrincipal": {"AWS": [GLOBEX, ROOT]},
        "Action": "s3:GetObject", "Resource": "*"}]),
    );
    let acme = Request::new(ACME, "s3:GetObject", OBJECT);
    assert_eq!(decide(&[], Some(&bucket), &acme), Decision::Allow);
}

// Malformed policies and requests are refused.

#[test]
fn an_unknown_condition_operator_is_refused() {
    for operator in [
        "StringEqualz",
        "stringequals",
        "NullIfExists",
        "ForAnyValue:Null",
        "ForSomeValues:StringLike",
    ] {
        let error = identity_error(policy(
            json!([{"Effect": "Allow", "Action": "*", "Resource": "*",
            "Condition": {operator: {"aws:SourceVpce": "vpce-1"}}}]),
        ));
        assert_eq!(
            error,
            PolicyError::UnknownOperator {
                at: "identity policy [0] statement [0]".into(),
                operator: operator.into()
            }
        );
    }
}

#[test]
fn an_operator_left_out_is_refused_as_unsupported() {
    for operator in [
        "DateLessThan",
        "IpAddress",
        "NotIpAddressIfExists",
        "BinaryEquals",
        "ForAnyValue:NumericEquals",
        "ForAllValues:Bool",
    ] {
        let error = identity_error(policy(
            json!([{"Effect": "Allow", "Action": "*", "Resource": "*",
            "Condition": {operator: {"aws:SourceIp": "1"}}}]),
        ));
        assert!(
            matches!(error, PolicyError::Unsupported { .. }),
            "{operator}: {error:?}"
        );
    }
}

#[test]
fn errors_name_the_statement_and_its_sid() {
    let error = identity_error(policy(json!([
        {"Effect": "Allow", "Action": "*", "Resource": "*"},
        {"Sid": "Bad", "Effect": "Allow", "Action": "*", "Resource": "*",
         "Condition": {"StringEqualz": {"k": "v"}}},
    ])));
    assert_eq!(
        error.to_string(),
        "identity policy [0] statement [1] (Sid Bad): unknown condition operator StringEqualz"
    );
}

#[test]
fn a_misspelt_element_is_refused() {
    let error = identity_error(policy(
        json!([{"Effect": "Deny", "Action": "*", "Resource": "*",
        "Conditon": {"Bool": {"aws:SecureTransport": "false"}}}]),
    ));
    assert!(matches!(error, PolicyError::UnknownElement { element, .. } if element == "Conditon"));
    let error = identity_error(json!({"Version": "2012-10-17", "Statment": []}));
    assert!(matches!(error, PolicyError::UnknownElement { element, .. } if element == "Statment"));
}

#[test]
fn an_element_and_its_not_form_together_are_refused() {
    let error = identity_error(policy(json!([{"Effect": "Allow", "Action": "s3:*",
        "NotAction": "s3:Delete*", "Resource": "*"}])));
    assert!(matches!(
        error,
        PolicyError::ConflictingElements {
            first: "Action",
            second: "NotAction",
            ..
        }
    ));
    let error = resource_error(policy(json!([{"Effect": "Allow", "Principal": "*",
        "NotPrincipal": {"AWS": ROOT}, "Action": "s3:*", "Resource": "*"}])));
    assert!(matches!(
        error,
        PolicyError::ConflictingElements {
            first: "Principal",
            second: "NotPrincipal",
            ..
        }
    ));
}

#[test]
fn missing_elements_are_refused() {
    let error = identity_error(policy(json!([{"Effect": "Allow", "Resource": "*"}])));
    assert!(matches!(
        error,
        PolicyError::MissingElement {
            element: "Action or NotAction",
            ..
        }
    ));
    let error = identity_error(policy(json!([{"Action": "*", "Resource": "*"}])));
    assert!(matches!(
        error,
        PolicyError::MissingElement {
            element: "Effect",
            ..
        }
    ));
    let error = identity_error(policy(json!([{"Effect": "Allow", "Action": "*"}])));
    assert!(matches!(
        error,
        PolicyError::MissingElement {
            element: "Resource or NotResource",
            ..
        }
    ));
    let error = resource_error(policy(
        json!([{"Effect": "Allow", "Principal": "*", "Action": "*"}]),
    ));
    assert!(matches!(
        error,
        PolicyError::MissingElement {
            element: "Resource or NotResource",
            ..
        }
    ));
    let error = resource_error(policy(
        json!([{"Effect": "Allow", "Action": "*", "Resource": "*"}]),
    ));
    assert!(matches!(
        error,
        PolicyError::MissingElement {
            element: "Principal or NotPrincipal",
            ..
        }
    ));
    let error = identity_error(json!({"Version": "2012-10-17"}));
    assert!(matches!(
        error,
        PolicyError::MissingElement {
            element: "Statement",
            ..
        }
    ));
}

#[test]
fn a_principal_in_an_identity_policy_is_refused() {
    let error = identity_error(policy(json!([{"Effect": "Allow", "Principal": "*",
        "Action": "*", "Resource": "*"}])));
    assert!(matches!(
        error,
        PolicyError::ProhibitedElement {
            element: "Principal",
            policy: "identity policy",
            ..
        }
    ));
}

#[test]
fn malformed_values_are_refused() {
    let statement = |extra: Value| {
        let mut s = json!({"Effect": "Allow", "Action": "*", "Resource": "*"});
        for (k, v) in extra.as_object().expect("an object") {
            s[k] = v.clone();
        }
        policy(json!([s]))
    };
    let cases = [
        ("Effect", statement(json!({"Effect": "allow"}))),
        ("Sid", statement(json!({"Sid": 7}))),
        ("Action", statement(json!({"Action": "s3GetObject"}))),
        ("Action", statement(json!({"Action": []}))),
        ("Action", statement(json!({"Action": ["s3:GetObject", 7]}))),
        (
            "Resource",
            statement(json!({"Resource": "tenantry-acme/*"})),
        ),
        (
            "Resource",
            statement(json!({"Resource": "arn:aws:kms:eu-west-1:*"})),
        ),
        (
            "Resource",
            statement(json!({"Resource": "arn:aws:s3:::home/${aws:username"})),
        ),
        (
            "Condition.Bool.aws:SecureTransport",
            statement(json!({"Condition": {"Bool": {"aws:SecureTransport": "yes"}}})),
        ),
        (
            "Condition.Null.k",
            statement(json!({"Condition": {"Null": {"k": "maybe"}}})),
        ),
        (
            "Condition.NumericLessThan.s3:max-keys",
            statement(json!({"Condition": {"NumericLessThan": {"s3:max-keys": "ten"}}})),
        ),
        (
            "Condition.StringEquals.k",
            statement(json!({"Condition": {"StringEquals": {"k": {"v": 1}}}})),
        ),
        (
            "Condition.StringEquals.k",
            statement(json!({"Condition": {"StringEquals": {"k": []}}})),
        ),
        (
            "Condition.StringEquals.k",
            statement(json!({"Condition": {"StringEquals": {"k": "${aws:username, nobody}"}}})),
        ),
        (
            "Condition.StringEquals",
            statement(json!({"Condition": {"StringEquals": {}}})),
        ),
        (
            "Condition.StringEquals",
            statement(json!({"Condition": {"StringEquals": "k"}})),
        ),
        (
            "Condition",
            statement(json!({"Condition": ["StringEquals"]})),
        ),
        (
            "Condition.ArnLike.aws:SourceArn",
            statement(json!({"Condition": {"ArnLike": {"aws:SourceArn": "not-an-arn"}}})),
        ),
        ("Version", json!({"Version": "2012-10-18", "Statement": []})),
        ("Id", json!({"Id": 1, "Statement": []})),
        ("Statement", json!({"Statement": "Allow everything"})),
        ("policy", json!(["not", "an", "object"])),
    ];
    for (element, document) in cases {
        match identity_error(document) {
            PolicyError::InvalidValue { element: e, .. } if e == element => {}
            other => panic!("{element}: {other:?}"),
        }
    }
}

#[test]
fn malformed_principals_are_refused() {
    let bucket = |principal: Value| {
        policy(json!([{"Effect": "Allow", "Principal": principal, "Action": "*", "Resource": "*"}]))
    };
    for (principal, element) in [
        (
            json!({"AWS": "arn:aws:iam::111122223333:role/*"}),
            "Principal.AWS",
        ),
        (json!({"AWS": "alice"}), "Principal.AWS"),
        (json!({"AWS": "arn:aws:iam::1111:root"}), "Principal.AWS"),
        (
            json!({"AWS": "arn:aws:sts::111122223333:assumed-role/t-acme"}),
            "Principal.AWS",
        ),
        (json!({"Service": "*"}), "Principal.Service"),
        (json!({"AWS": []}), "Principal.AWS"),
        (json!("everyone"), "Principal"),
        (json!({}), "Principal"),
    ] {
        match resource_error(bucket(principal.clone())) {
            PolicyError::InvalidValue { element: e, .. } if e == element => {}
            other => panic!("{principal}: {other:?}"),
        }
    }
    assert!(matches!(
        resource_error(bucket(json!({"CanonicalUser": "79a59df9"}))),
        PolicyError::Unsupported { .. }
    ));
    assert!(matches!(
        resource_error(bucket(json!({"Aws": ROOT}))),
        PolicyError::UnknownElement { element, .. } if element == "Principal.Aws"
    ));
}

#[test]
fn a_deny_does_not_hide_a_malformed_statement_after_it() {
    let identity = policy(json!([
        {"Sid": "DenyAll", "Effect": "Deny", "Action": "*", "Resource": "*"},
        {"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {"StringLikeIfExist": {"k": "v"}}},
    ]));
    assert!(matches!(
        identity_error(identity),
        PolicyError::UnknownOperator { .. }
    ));
}

#[test]
fn malformed_requests_are_refused() {
    let numeric = policy(json!([{"Effect": "Allow", "Action": "*", "Resource": "*",
        "Condition": {"NumericLessThan": {"s3:max-keys": "10"}}}]));
    let request = Request::new(ALICE, "s3:ListBucket", BUCKET).with("s3:max-keys", "ten");
    assert!(matches!(
        evaluate(&[numeric], None, &request),
        Err(PolicyError::InvalidRequest { .. })
    ));
    let boolean = policy(json!([{"Effect": "Allow", "Action": "*", "Resource": "*",
        "Condition": {"Bool": {"aws:SecureTransport": "true"}}}]));
    let request = Request::new(ALICE, "s3:ListBucket", BUCKET).with("aws:SecureTransport", "yes");
    assert!(matches!(
        evaluate(&[boolean], None, &request),
        Err(PolicyError::InvalidRequest { .. })
    ));
    let session = Request::new(
        "arn:aws:sts::111122223333:assumed-role/t-acme/app",
        "s3:GetObject",
        OBJECT,
    );
    assert!(matches!(
        evaluate(&[allow("*", "*")], None, &session),
        Err(PolicyError::InvalidRequest { .. })
    ));
    let mut wrong_account = Request::new(ALICE, "s3:GetObject", OBJECT);
    wrong_account.account = OTHER_ACCOUNT.into();
    assert!(matches!(
        evaluate(&[allow("*", "*")], None, &wrong_account),
        Err(PolicyError::InvalidRequest { .. })
    ));
    let userid = Request::new(ACME, "s3:GetObject", OBJECT).with("aws:userid", "no-colon");
    assert!(matches!(
        evaluate(&[allow("*", "*")], None, &userid),
        Err(PolicyError::InvalidRequest { .. })
    ));
}
