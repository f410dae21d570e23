//! A tenant's AWS access, measured as the tenant: the probes assume the
//! tenant's IAM role (its trust names the operator for this) and try, as
//! that role, its own bucket and key, and a neighbour's: the operator's
//! canary bucket and key, made like a tenant's and never handed to anyone.
//! The own ones must answer, the canary must refuse, just as the database
//! probe logs in as the tenant and reads the operator's canary table.
//!
//! An emulator (moto) may let a request through that AWS would refuse: it
//! evaluates neither conditions nor KMS resource scope (docs/security.md,
//! "What moto enforces"). With `--aws-emulator`, a neighbour request that
//! got through is judged by tenantry's own evaluation of the role's policies
//! as IAM holds them, and the finding says so; without it (real AWS), a
//! neighbour request that got through is Broken, whatever the policies say.

use std::sync::Arc;

use aws_config::SdkConfig;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_s3::config::{Credentials, SharedCredentialsProvider};
use serde_json::Value;

use super::{Finding, IsolationState, fail, pass};
use crate::backends::aws::{AwsError, classify, error_code, http_status};
use crate::backends::{
    Backend, KeyManager, ObjectStorage, Operation, TenantIdentity, TenantRef, tags,
};
use crate::policy_eval::{self, Decision, Request};

/// The stable ids of the findings this probe adds to the storage and
/// encryption layers.
pub mod check {
    pub const BUCKET_TENANT_ACCESS: &str = "bucket.tenantAccess";
    pub const BUCKET_NEIGHBOUR_REFUSED: &str = "bucket.neighbourRefused";
    pub const KEY_TENANT_ACCESS: &str = "key.tenantAccess";
    pub const KEY_NEIGHBOUR_REFUSED: &str = "key.neighbourRefused";
}

/// The canary's owner, as its tags say: not a valid Tenant name (an
/// underscore), so no Tenant can ever claim it.
pub const CANARY_TENANT: &str = "_canary";
pub const CANARY_UID: &str = "tenantry-canary";
/// The canary key's alias: under tenantry's, out of reach of any tenant's
/// (`alias/tenantry/<tenant>`).
pub const CANARY_KEY_ALIAS: &str = "alias/tenantry/_canary";

/// The canary bucket of a bucket prefix. A tenant's bucket is
/// `<prefix>-<tenant>` and no tenant name starts with `-`, so none is this.
pub fn canary_bucket(bucket_prefix: &str) -> String {
    format!("{bucket_prefix}--canary")
}

/// What the probe's session role is called in AWS's logs (CloudTrail).
const SESSION_NAME: &str = "tenantry-isolation-probe";
/// The shortest session STS grants: the probe needs seconds.
const SESSION_SECONDS: i32 = 900;
const ROUND_TRIP_PLAINTEXT: &[u8] = b"tenantry isolation probe, as the tenant";

/// The operator's neighbour, made once per process and class.
struct Canary {
    bucket: String,
    key_arn: String,
}

pub struct TenantAccessProbe {
    sdk: SdkConfig,
    sts: aws_sdk_sts::Client,
    force_path_style: bool,
    emulator: bool,
    keys: Arc<dyn KeyManager>,
    storage: Arc<dyn ObjectStorage>,
    identity: Arc<dyn TenantIdentity>,
    bucket_prefix: String,
    canary: tokio::sync::OnceCell<Canary>,
}

/// What AWS answered one request made as the tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Allowed,
    /// Access denied, with AWS's words.
    Refused(String),
    /// Anything else: the request says nothing about access.
    Failed(String),
}

/// A session as the tenant's role.
struct TenantSession {
    s3: aws_sdk_s3::Client,
    kms: aws_sdk_kms::Client,
}

/// The tenant, for the findings: its role, and the role's name in IAM.
#[derive(Clone, Copy)]
pub struct TenantRole<'a> {
    pub arn: &'a str,
    pub name: &'a str,
}

impl TenantAccessProbe {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        sdk: &SdkConfig,
        force_path_style: bool,
        emulator: bool,
        keys: Arc<dyn KeyManager>,
        storage: Arc<dyn ObjectStorage>,
        identity: Arc<dyn TenantIdentity>,
        bucket_prefix: &str,
    ) -> Self {
        Self {
            sdk: sdk.clone(),
            sts: aws_sdk_sts::Client::new(sdk),
            force_path_style,
            emulator,
            keys,
            storage,
            identity,
            bucket_prefix: bucket_prefix.to_string(),
            canary: tokio::sync::OnceCell::new(),
        }
    }

    /// As the tenant's role: its bucket listed, the canary bucket refused.
    pub async fn storage(&self, role: TenantRole<'_>, bucket: &str) -> Vec<Finding> {
        let checks = [check::BUCKET_TENANT_ACCESS, check::BUCKET_NEIGHBOUR_REFUSED];
        let (session, canary) = match self.prepare(role).await {
            Ok(ready) => ready,
            Err(detail) => return unknown_all(&checks, &detail),
        };
        let (own, neighbour) = tokio::join!(
            list_bucket(&session.s3, bucket),
            list_bucket(&session.s3, &canary.bucket)
        );
        let own = own_access_finding(
            check::BUCKET_TENANT_ACCESS,
            &format!("ListObjectsV2 on its bucket {bucket}"),
            role.arn,
            own,
        );
        let partition = crate::backends::s3::partition_of(&canary.key_arn);
        let request = Request::new(
            role.arn,
            "s3:ListBucket",
            format!("arn:{partition}:s3:::{}", canary.bucket),
        );
        let neighbour = self
            .neighbour_finding(
                check::BUCKET_NEIGHBOUR_REFUSED,
                &format!(
                    "ListObjectsV2 on the operator's canary bucket {}",
                    canary.bucket
                ),
                role,
                request,
                neighbour,
            )
            .await;
        vec![own, neighbour]
    }

    /// As the tenant's role: its key encrypts and decrypts, the canary key
    /// refuses to encrypt.
    pub async fn encryption(&self, role: TenantRole<'_>, key_arn: &str) -> Vec<Finding> {
        let checks = [check::KEY_TENANT_ACCESS, check::KEY_NEIGHBOUR_REFUSED];
        let (session, canary) = match self.prepare(role).await {
            Ok(ready) => ready,
            Err(detail) => return unknown_all(&checks, &detail),
        };
        let (own, neighbour) = tokio::join!(
            round_trip(&session.kms, key_arn),
            encrypt(&session.kms, &canary.key_arn)
        );
        let own = own_access_finding(
            check::KEY_TENANT_ACCESS,
            &format!("Encrypt and Decrypt with its KMS key {key_arn}"),
            role.arn,
            own,
        );
        let request = Request::new(role.arn, "kms:Encrypt", canary.key_arn.clone())
            .with(format!("aws:ResourceTag/{}", tags::TENANT_UID), CANARY_UID)
            .with(
                format!("aws:ResourceTag/{}", tags::MANAGED_BY),
                tags::MANAGED_BY_VALUE,
            );
        let neighbour = self
            .neighbour_finding(
                check::KEY_NEIGHBOUR_REFUSED,
                &format!(
                    "Encrypt with the operator's canary KMS key {}",
                    canary.key_arn
                ),
                role,
                request,
                neighbour,
            )
            .await;
        vec![own, neighbour]
    }

    async fn prepare(&self, role: TenantRole<'_>) -> Result<(TenantSession, &Canary), String> {
        let canary = self.canary().await?;
        let session = self.assume(role.arn).await?;
        Ok((session, canary))
    }

    /// The canary, made like a tenant's key and bucket (tagged, the bucket
    /// locked down and encrypted with the key) the first time it is needed.
    /// A failure is not kept: the next probe tries again.
    async fn canary(&self) -> Result<&Canary, String> {
        self.canary
            .get_or_try_init(|| async {
                let op = Operation::unrecorded(TenantRef {
                    name: CANARY_TENANT.to_string(),
                    uid: CANARY_UID.to_string(),
                    display_name: None,
                });
                let key = self
                    .keys
                    .ensure_key(&op, CANARY_KEY_ALIAS, false)
                    .await
                    .map_err(|e| format!("cannot make the operator's canary KMS key: {e}"))?;
                let bucket = canary_bucket(&self.bucket_prefix);
                self.storage
                    .ensure_bucket(&op, &bucket, &key.arn, false, false)
                    .await
                    .map_err(|e| format!("cannot make the operator's canary bucket: {e}"))?;
                Ok(Canary {
                    bucket,
                    key_arn: key.arn,
                })
            })
            .await
    }

    async fn assume(&self, role_arn: &str) -> Result<TenantSession, String> {
        let out = self
            .sts
            .assume_role()
            .role_arn(role_arn)
            .role_session_name(SESSION_NAME)
            .duration_seconds(SESSION_SECONDS)
            .send()
            .await
            .map_err(|e| {
                format!(
                    "could not act as the tenant's role: {}",
                    classify(Backend::Iam, &format!("AssumeRole {role_arn}"), e)
                )
            })?;
        let Some(c) = out.credentials else {
            return Err(format!("AssumeRole {role_arn} returned no credentials"));
        };
        let credentials = Credentials::new(
            c.access_key_id(),
            c.secret_access_key(),
            Some(c.session_token().to_string()),
            None,
            "tenantry-tenant-role",
        );
        let sdk = self
            .sdk
            .to_builder()
            .credentials_provider(SharedCredentialsProvider::new(credentials))
            .build();
        let s3 = crate::backends::aws::count_s3_calls(
            aws_sdk_s3::config::Builder::from(&sdk).force_path_style(self.force_path_style),
        )
        .build();
        Ok(TenantSession {
            s3: aws_sdk_s3::Client::from_conf(s3),
            kms: crate::backends::aws::kms_client(&sdk),
        })
    }

    /// A neighbour's resource must refuse the tenant. Let through by an
    /// emulator, the role's policies as IAM holds them decide.
    async fn neighbour_finding(
        &self,
        check: &str,
        what: &str,
        role: TenantRole<'_>,
        request: Request,
        answer: Answer,
    ) -> Finding {
        let evaluation = match (&answer, self.emulator) {
            (Answer::Allowed, true) => Some(self.evaluate(role.name, &request).await),
            _ => None,
        };
        neighbour_access_finding(check, what, role.arn, answer, evaluation)
    }

    async fn evaluate(&self, role_name: &str, request: &Request) -> Result<Decision, String> {
        let policies = self
            .identity
            .role_policies(role_name)
            .await
            .map_err(|e| format!("cannot read the role's policies: {e}"))?;
        if !policies.attached.is_empty() {
            return Err(format!(
                "managed policies are attached to the role, which tenantry does not evaluate: {}",
                policies.attached.join(", ")
            ));
        }
        let documents: Vec<Value> = policies.inline.into_values().collect();
        policy_eval::evaluate(&documents, None, request).map_err(|e| e.to_string())
    }
}

fn unknown_all(checks: &[&str], detail: &str) -> Vec<Finding> {
    checks
        .iter()
        .map(|check| fail(check, IsolationState::Unknown, detail))
        .collect()
}

/// What a refused or failed request as the tenant tells: AccessDenied (in
/// AWS's JSON or moto's XML, which the SDK cannot read for a code) is a
/// refusal; anything else says nothing about access.
fn answer_of<E>(backend: Backend, context: &str, err: AwsError<E>) -> Answer
where
    E: aws_smithy_types::error::metadata::ProvideErrorMetadata + std::error::Error + 'static,
{
    let refused = http_status(&err) == Some(403)
        || matches!(
            error_code(&err),
            Some("AccessDenied" | "AccessDeniedException")
        );
    let message = classify(backend, context, err).to_string();
    if refused {
        Answer::Refused(message)
    } else {
        Answer::Failed(message)
    }
}

async fn list_bucket(s3: &aws_sdk_s3::Client, bucket: &str) -> Answer {
    match s3.list_objects_v2().bucket(bucket).max_keys(1).send().await {
        Ok(_) => Answer::Allowed,
        Err(e) => answer_of(Backend::S3, &format!("ListObjectsV2 {bucket}"), e),
    }
}

async fn encrypt(kms: &aws_sdk_kms::Client, key_arn: &str) -> Answer {
    match kms
        .encrypt()
        .key_id(key_arn)
        .plaintext(Blob::new(ROUND_TRIP_PLAINTEXT))
        .send()
        .await
    {
        Ok(_) => Answer::Allowed,
        Err(e) => answer_of(Backend::Kms, &format!("Encrypt with {key_arn}"), e),
    }
}

async fn round_trip(kms: &aws_sdk_kms::Client, key_arn: &str) -> Answer {
    let ciphertext = match kms
        .encrypt()
        .key_id(key_arn)
        .plaintext(Blob::new(ROUND_TRIP_PLAINTEXT))
        .send()
        .await
    {
        Ok(out) => match out.ciphertext_blob {
            Some(c) => c,
            None => return Answer::Failed(format!("Encrypt with {key_arn} returned nothing")),
        },
        Err(e) => return answer_of(Backend::Kms, &format!("Encrypt with {key_arn}"), e),
    };
    match kms
        .decrypt()
        .key_id(key_arn)
        .ciphertext_blob(ciphertext)
        .send()
        .await
    {
        Ok(out) if out.plaintext().map(Blob::as_ref) == Some(ROUND_TRIP_PLAINTEXT) => {
            Answer::Allowed
        }
        Ok(_) => Answer::Failed(format!(
            "Decrypt with {key_arn} gave back something else than was encrypted"
        )),
        Err(e) => answer_of(Backend::Kms, &format!("Decrypt with {key_arn}"), e),
    }
}

/// The tenant's own resource must answer its role: refused, its workloads
/// cannot work, and what tenantry set up is not what holds.
pub fn own_access_finding(check: &str, what: &str, role_arn: &str, answer: Answer) -> Finding {
    match answer {
        Answer::Allowed => pass(
            check,
            format!("as its role {role_arn}, the tenant was allowed {what}"),
        ),
        Answer::Refused(error) => fail(
            check,
            IsolationState::Broken,
            format!(
                "as its role {role_arn}, the tenant was refused {what}: its workloads cannot reach it ({error})"
            ),
        ),
        Answer::Failed(error) => fail(
            check,
            IsolationState::Unknown,
            format!("as its role {role_arn}, {what} failed: {error}"),
        ),
    }
}

/// A neighbour's resource must refuse the tenant's role. `evaluation` is
/// tenantry's verdict on the role's deployed policies, when an emulator
/// let the request through.
pub fn neighbour_access_finding(
    check: &str,
    what: &str,
    role_arn: &str,
    answer: Answer,
    evaluation: Option<Result<Decision, String>>,
) -> Finding {
    match (answer, evaluation) {
        (Answer::Refused(_), _) => pass(
            check,
            format!("as its role {role_arn}, the tenant was refused {what}, as on any neighbour's"),
        ),
        (Answer::Failed(error), _) => fail(
            check,
            IsolationState::Unknown,
            format!("as its role {role_arn}, {what} failed: {error}"),
        ),
        (Answer::Allowed, None) => fail(
            check,
            IsolationState::Broken,
            format!(
                "as its role {role_arn}, the tenant was allowed {what}: it reaches resources that are not its own"
            ),
        ),
        (Answer::Allowed, Some(Ok(Decision::Allow))) => fail(
            check,
            IsolationState::Broken,
            format!(
                "as its role {role_arn}, the tenant was allowed {what}, and the role's policies allow it: \
                 it reaches resources that are not its own"
            ),
        ),
        (Answer::Allowed, Some(Ok(denied))) => pass(
            check,
            format!(
                "as its role {role_arn}, the tenant was allowed {what} by this AWS emulator \
                 (--aws-emulator), which lets through requests AWS refuses; the role's policies as \
                 IAM holds them refuse it (tenantry's evaluation: {})",
                match denied {
                    Decision::ExplicitDeny { sid: Some(sid) } => format!("denied by {sid}"),
                    Decision::ExplicitDeny { sid: None } => "denied".to_string(),
                    _ => "no statement allows it".to_string(),
                }
            ),
        ),
        (Answer::Allowed, Some(Err(error))) => fail(
            check,
            IsolationState::Unknown,
            format!(
                "as its role {role_arn}, the tenant was allowed {what} by this AWS emulator, and its \
                 policies could not be evaluated: {error}"
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::iam::{TenantGrants, access_policy, revoked_policy};

    const ROLE: &str = "arn:aws:iam::123456789012:role/tenantry/tenantry-acme";
    const KEY: &str = "arn:aws:kms:eu-west-1:123456789012:key/1111";
    const CANARY_KEY: &str = "arn:aws:kms:eu-west-1:123456789012:key/2222";

    fn canary_key_request() -> Request {
        Request::new(ROLE, "kms:Encrypt", CANARY_KEY)
            .with(format!("aws:ResourceTag/{}", tags::TENANT_UID), CANARY_UID)
            .with(
                format!("aws:ResourceTag/{}", tags::MANAGED_BY),
                tags::MANAGED_BY_VALUE,
            )
    }

    fn acme_policy() -> Value {
        access_policy(&TenantGrants {
            bucket: "tenantry-acme",
            key_arn: KEY,
            tenant_uid: "uid-acme",
        })
    }

    #[test]
    fn a_refused_neighbour_is_enforced_and_one_let_in_by_aws_is_broken() {
        let refused = neighbour_access_finding(
            "c",
            "Encrypt",
            ROLE,
            Answer::Refused("AccessDenied".into()),
            None,
        );
        assert_eq!(refused.state, IsolationState::Enforced);
        // Real AWS let it through: no evaluation can excuse that.
        let allowed = neighbour_access_finding("c", "Encrypt", ROLE, Answer::Allowed, None);
        assert_eq!(allowed.state, IsolationState::Broken);
        assert!(allowed.detail.contains("not its own"), "{}", allowed.detail);
        let failed = neighbour_access_finding(
            "c",
            "Encrypt",
            ROLE,
            Answer::Failed("HTTP 500".into()),
            None,
        );
        assert_eq!(failed.state, IsolationState::Unknown);
    }

    #[test]
    fn behind_an_emulator_the_roles_deployed_policies_decide_and_the_finding_says_so() {
        // tenantry's own access policy: the canary key carries another uid.
        let decision = policy_eval::evaluate(&[acme_policy()], None, &canary_key_request());
        let finding = neighbour_access_finding(
            "c",
            "Encrypt",
            ROLE,
            Answer::Allowed,
            Some(decision.map_err(|e| e.to_string())),
        );
        assert_eq!(
            finding.state,
            IsolationState::Enforced,
            "{}",
            finding.detail
        );
        assert!(finding.detail.contains("emulator"), "{}", finding.detail);
        // A policy someone added that opens every key: Broken.
        let open = serde_json::json!({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "kms:*", "Resource": "*"}]});
        let decision = policy_eval::evaluate(&[acme_policy(), open], None, &canary_key_request());
        let finding = neighbour_access_finding(
            "c",
            "Encrypt",
            ROLE,
            Answer::Allowed,
            Some(decision.map_err(|e| e.to_string())),
        );
        assert_eq!(finding.state, IsolationState::Broken, "{}", finding.detail);
        // Revoked: the deny is named.
        let decision = policy_eval::evaluate(
            &[acme_policy(), revoked_policy()],
            None,
            &canary_key_request(),
        );
        let finding = neighbour_access_finding(
            "c",
            "Encrypt",
            ROLE,
            Answer::Allowed,
            Some(decision.map_err(|e| e.to_string())),
        );
        assert_eq!(finding.state, IsolationState::Enforced);
        assert!(finding.detail.contains("denied by"), "{}", finding.detail);
        // Policies that cannot be read say nothing.
        let finding = neighbour_access_finding(
            "c",
            "Encrypt",
            ROLE,
            Answer::Allowed,
            Some(Err("managed policies are attached".into())),
        );
        assert_eq!(finding.state, IsolationState::Unknown);
    }

    #[test]
    fn the_tenants_own_resource_must_answer_its_role() {
        assert_eq!(
            own_access_finding("c", "ListObjectsV2", ROLE, Answer::Allowed).state,
            IsolationState::Enforced
        );
        let refused = own_access_finding(
            "c",
            "ListObjectsV2",
            ROLE,
            Answer::Refused("AccessDenied".into()),
        );
        assert_eq!(refused.state, IsolationState::Broken);
        assert!(refused.detail.contains(ROLE), "{}", refused.detail);
        assert_eq!(
            own_access_finding("c", "ListObjectsV2", ROLE, Answer::Failed("x".into())).state,
            IsolationState::Unknown
        );
    }

    #[test]
    fn the_canary_cannot_be_a_tenants() {
        let canary = canary_bucket("tenantry");
        // Every tenant's bucket is `<prefix>-<name>` with a DNS-label name.
        assert!(crate::naming::TenantNames::new("-canary", "tenantry").is_err());
        assert_eq!(canary, "tenantry--canary");
        assert!(crate::naming::TenantNames::new(CANARY_TENANT, "tenantry").is_err());
    }
}
