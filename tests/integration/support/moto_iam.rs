//! moto-iam, the moto of the local environment that authenticates and
//! authorizes every request (docs/security.md, "What moto enforces"): its
//! administrator, and users that hold exactly the operator's IAM policy.
//!
//! When the suite's own AWS endpoint is moto-iam (`hack/test.sh`'s default;
//! `TENANTRY_TEST_AWS=moto` is the permissive one), every operator a test starts signs as a
//! user holding the operator's policy for this environment
//! ([`suite_scope`]), so a call the policy does not allow fails the test
//! that makes it.

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_sts::config::Credentials;
use tenantry::permissions::{self, AnchorScope, Policy, PolicyScope};

use super::{bucket_prefix, env, unique_name};

/// moto's default account, the only one moto-iam's administrator lives in.
pub const ACCOUNT: &str = "123456789012";

/// Bucket prefixes the suite's TenantClasses set (`classes.rs`), besides the
/// environment's: the policy names each, as an installation's would.
const CLASS_BUCKET_PREFIXES: &[&str] = &["tenantry-ent"];

/// An SDK config for moto-iam that signs with exactly these credentials
/// (set in code, they outrank the AWS_* in the environment).
pub async fn config_as(key_id: &str, secret: &str, session_token: Option<String>) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(env("TENANTRY_IAM_AWS_ENDPOINT"))
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(
            key_id,
            secret,
            session_token,
            None,
            "moto-iam",
        ))
        .load()
        .await
}

pub async fn admin() -> SdkConfig {
    config_as(
        &env("TENANTRY_IAM_ADMIN_ACCESS_KEY_ID"),
        &env("TENANTRY_IAM_ADMIN_SECRET_ACCESS_KEY"),
        None,
    )
    .await
}

pub fn s3_client(config: &SdkConfig) -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(config)
            .force_path_style(true)
            .build(),
    )
}

/// Where the suite's operators act: moto's account, the environment's
/// region, bucket prefixes and audit anchor.
pub fn suite_scope() -> PolicyScope {
    let mut prefixes = vec![bucket_prefix()];
    prefixes.extend(CLASS_BUCKET_PREFIXES.iter().map(|p| p.to_string()));
    PolicyScope {
        partition: "aws".into(),
        account: ACCOUNT.into(),
        region: env("AWS_REGION"),
        bucket_prefixes: prefixes,
        anchor: std::env::var("TENANTRY_AUDIT_ANCHOR_BUCKET")
            .ok()
            .map(|bucket| AnchorScope {
                bucket,
                mac_key: std::env::var("TENANTRY_AUDIT_MAC_KEY")
                    .unwrap_or_else(|_| permissions::DEFAULT_MAC_KEY.into()),
            }),
    }
}

/// A moto-iam user holding `policy`, as moto evaluates it
/// ([`permissions::as_moto_evaluates`]), and nothing else: its access key
/// id and secret.
pub async fn user_holding(policy: &Policy) -> (String, String) {
    let iam = aws_sdk_iam::Client::new(&admin().await);
    let name = unique_name("tenantry-operator");
    iam.create_user()
        .user_name(&name)
        .send()
        .await
        .expect("create the operator's user");
    // Compact: moto-iam recomputes the signature over the form-encoded
    // body and gets a pretty-printed document's wrong.
    iam.put_user_policy()
        .user_name(&name)
        .policy_name("tenantry-operator")
        .policy_document(
            permissions::as_moto_evaluates(policy)
                .to_value()
                .to_string(),
        )
        .send()
        .await
        .expect("moto-iam accepts the operator's policy");
    let key = iam
        .create_access_key()
        .user_name(&name)
        .send()
        .await
        .expect("create the operator's access key")
        .access_key
        .expect("an access key");
    (
        key.access_key_id().to_string(),
        key.secret_access_key().to_string(),
    )
}

/// Whether the suite's own AWS endpoint is moto-iam.
pub fn suite_is_on_moto_iam() -> bool {
    std::env::var("AWS_ENDPOINT_URL").ok() == std::env::var("TENANTRY_IAM_AWS_ENDPOINT").ok()
        && std::env::var("AWS_ENDPOINT_URL").is_ok()
}

/// The access key of the user every operator of this test process signs
/// as when the suite is on moto-iam; made once, from the operator's policy.
pub async fn suite_operator_key() -> Option<(String, String)> {
    static KEY: tokio::sync::OnceCell<Option<(String, String)>> =
        tokio::sync::OnceCell::const_new();
    KEY.get_or_init(|| async {
        if !suite_is_on_moto_iam() {
            return None;
        }
        Some(user_holding(&permissions::operator_policy(&suite_scope())).await)
    })
    .await
    .clone()
}
