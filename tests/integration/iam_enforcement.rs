//! The environment can refuse: against `moto-iam`, the second moto of the
//! local environment, which authenticates and authorizes every request
//! (`INITIAL_NO_AUTH_ACTION_COUNT`; what it evaluates and what it does not is
//! in docs/security.md, "What moto enforces").
//!
//! These tests do not run the operator yet (issue 17, item 4): they show that
//! a missing permission fails a call here, so that tests which run the
//! operator or a tenant's role against moto-iam can fail for one.
//!
//! Users and roles are made with the administrator `hack/localenv.sh`
//! bootstraps (`TENANTRY_IAM_ADMIN_*`); names are unique per test run, since
//! moto-iam keeps its state until it restarts.

use aws_config::SdkConfig;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use serde_json::json;

use crate::support::moto_iam::{ACCOUNT, admin, config_as, s3_client};
use crate::support::unique_name;

pub(crate) fn policy(statements: serde_json::Value) -> String {
    json!({"Version": "2012-10-17", "Statement": statements}).to_string()
}

/// Creates an IAM user with one inline policy and returns an SDK config
/// signed with its new access key.
pub(crate) async fn user_with_policy(
    iam: &aws_sdk_iam::Client,
    name: &str,
    document: &str,
) -> SdkConfig {
    iam.create_user()
        .user_name(name)
        .send()
        .await
        .expect("create user");
    iam.put_user_policy()
        .user_name(name)
        .policy_name("only")
        .policy_document(document)
        .send()
        .await
        .expect("put user policy");
    let key = iam
        .create_access_key()
        .user_name(name)
        .send()
        .await
        .expect("create access key")
        .access_key
        .expect("an access key");
    config_as(key.access_key_id(), key.secret_access_key(), None).await
}

/// Asserts that a call was refused for want of permission (HTTP 403,
/// AccessDenied), not failed for any other reason, and returns the message.
/// moto answers a refused call of a JSON-protocol service (KMS, Secrets
/// Manager) with an XML `ErrorResponse`, which the SDK cannot parse for a
/// code, so the raw body is read too.
pub(crate) fn assert_access_denied<
    T: std::fmt::Debug,
    E: ProvideErrorMetadata + std::fmt::Debug,
>(
    what: &str,
    result: Result<T, SdkError<E, HttpResponse>>,
) -> String {
    let err = match result {
        Ok(ok) => panic!("{what} was allowed: {ok:?}"),
        Err(err) => err,
    };
    let raw = err
        .raw_response()
        .unwrap_or_else(|| panic!("{what} failed without a response: {err:?}"));
    let status = raw.status().as_u16();
    let body = raw
        .body()
        .bytes()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default();
    let code = err.code().map(str::to_owned);
    assert_eq!(status, 403, "{what}: expected 403, got {status}: {body}");
    assert!(
        code.as_deref() == Some("AccessDenied") || body.contains("<Code>AccessDenied</Code>"),
        "{what}: expected AccessDenied, got code {code:?}: {body}"
    );
    err.message().map(str::to_owned).unwrap_or(body)
}

/// A user allowed exactly `kms:CreateKey` creates a key, and is refused
/// `kms:ListKeys` and `s3:CreateBucket`; the administrator is allowed both, so
/// the refusals are the user's policy at work, not a broken call.
#[tokio::test]
async fn a_user_allowed_one_action_is_refused_every_other() {
    let admin = admin().await;
    let iam = aws_sdk_iam::Client::new(&admin);
    let name = unique_name("iam-one-action");
    let only_create_key = policy(json!([
        {"Effect": "Allow", "Action": "kms:CreateKey", "Resource": "*"}
    ]));
    let user = user_with_policy(&iam, &name, &only_create_key).await;

    let kms = aws_sdk_kms::Client::new(&user);
    let key = kms
        .create_key()
        .description("iam_enforcement: the one allowed action")
        .send()
        .await
        .expect("kms:CreateKey is the user's one allowed action");
    assert!(key.key_metadata().is_some(), "CreateKey returned no key");

    let message = assert_access_denied("kms:ListKeys", kms.list_keys().send().await);
    assert!(
        message.contains(&format!("user/{name}")) && message.contains("kms:ListKeys"),
        "the refusal names the user and the action: {message}"
    );
    let bucket = unique_name("iam-one-action");
    assert_access_denied(
        "s3:CreateBucket",
        s3_client(&user)
            .create_bucket()
            .bucket(&bucket)
            .send()
            .await,
    );

    // The same calls as the administrator succeed.
    aws_sdk_kms::Client::new(&admin)
        .list_keys()
        .send()
        .await
        .expect("the administrator lists keys");
    let admin_s3 = s3_client(&admin);
    admin_s3
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("the administrator creates the bucket");
    admin_s3
        .delete_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("delete bucket");

    // Keys moto does not know are refused before any policy is read.
    let stranger = config_as("AKIAIOSFODNN7EXAMPLE", "not-a-secret", None).await;
    let err = aws_sdk_kms::Client::new(&stranger)
        .create_key()
        .send()
        .await
        .expect_err("unknown access keys are refused");
    let status = err.raw_response().map(|r| r.status().as_u16());
    assert_eq!(status, Some(403), "unknown keys: {err:?}");
}

/// AssumeRole follows the role's trust policy: a principal it names gets
/// session credentials that act with the role's policy (and only that
/// policy); a principal it does not name is refused, although its own
/// identity policy allows `sts:AssumeRole` on the role just the same; and a
/// named principal whose own policy lacks `sts:AssumeRole` is refused too.
#[tokio::test]
async fn assume_role_is_allowed_to_the_trusted_principal_only() {
    let admin = admin().await;
    let iam = aws_sdk_iam::Client::new(&admin);
    let role_name = unique_name("iam-trust-role");
    let role_arn = format!("arn:aws:iam::{ACCOUNT}:role/{role_name}");
    // Distinct names neither of which contains the other: moto 5.2.5 matches
    // a single trusted principal by substring (docs/security.md).
    let trusted = unique_name("iam-trusted");
    let other = unique_name("iam-untrusted");
    let may_assume = policy(json!([
        {"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": role_arn}
    ]));
    let trusted_user = user_with_policy(&iam, &trusted, &may_assume).await;
    let other_user = user_with_policy(&iam, &other, &may_assume).await;
    let no_assume = unique_name("iam-no-assume");
    let no_assume_user = user_with_policy(
        &iam,
        &no_assume,
        &policy(json!([{"Effect": "Allow", "Action": "kms:CreateKey", "Resource": "*"}])),
    )
    .await;

    let trust = policy(json!([{
        "Effect": "Allow",
        "Principal": {"AWS": [
            format!("arn:aws:iam::{ACCOUNT}:user/{trusted}"),
            format!("arn:aws:iam::{ACCOUNT}:user/{no_assume}"),
        ]},
        "Action": "sts:AssumeRole",
    }]));
    let created = iam
        .create_role()
        .role_name(&role_name)
        .assume_role_policy_document(trust)
        .send()
        .await
        .expect("create role")
        .role
        .expect("a role");
    assert_eq!(created.arn(), role_arn);
    iam.put_role_policy()
        .role_name(&role_name)
        .policy_name("only")
        .policy_document(policy(json!([
            {"Effect": "Allow", "Action": "kms:CreateKey", "Resource": "*"}
        ])))
        .send()
        .await
        .expect("put role policy");

    // The trusted user assumes the role and acts as it.
    let assumed = aws_sdk_sts::Client::new(&trusted_user)
        .assume_role()
        .role_arn(&role_arn)
        .role_session_name("trusted")
        .send()
        .await
        .expect("the trusted user assumes the role");
    let creds = assumed.credentials().expect("session credentials");
    let session = config_as(
        creds.access_key_id(),
        creds.secret_access_key(),
        Some(creds.session_token().to_owned()),
    )
    .await;
    let me = aws_sdk_sts::Client::new(&session)
        .get_caller_identity()
        .send()
        .await
        .expect("get caller identity");
    assert_eq!(
        me.arn(),
        Some(format!("arn:aws:sts::{ACCOUNT}:assumed-role/{role_name}/trusted").as_str())
    );
    let kms = aws_sdk_kms::Client::new(&session);
    kms.create_key()
        .description("iam_enforcement: as the assumed role")
        .send()
        .await
        .expect("the role's policy allows kms:CreateKey");
    assert_access_denied("kms:ListKeys as the role", kms.list_keys().send().await);

    // The other user may call AssumeRole but the role does not trust it.
    let message = assert_access_denied(
        "sts:AssumeRole by a principal the trust policy does not name",
        aws_sdk_sts::Client::new(&other_user)
            .assume_role()
            .role_arn(&role_arn)
            .role_session_name("untrusted")
            .send()
            .await,
    );
    assert!(message.contains(&format!("user/{other}")), "{message}");

    // A principal the trust policy names needs sts:AssumeRole in its own
    // policy too.
    assert_access_denied(
        "sts:AssumeRole by a trusted principal without sts:AssumeRole in its policy",
        aws_sdk_sts::Client::new(&no_assume_user)
            .assume_role()
            .role_arn(&role_arn)
            .role_session_name("noassume")
            .send()
            .await,
    );
}
