//! The storage layer of a tenant, measured: its bucket's controls are read
//! back and compared with what tenantry wants (the S3 backend's desired
//! state), and where the endpoint allows it the deny-non-TLS policy is put to
//! the test with a real request.
//!
//! The probe only reads, except for the one object PUT over plain HTTP that
//! the bucket policy exists to refuse; should it be accepted, the object is
//! deleted again.

use aws_config::SdkConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    BucketVersioningStatus, ObjectOwnership, PublicAccessBlockConfiguration, ServerSideEncryption,
    ServerSideEncryptionConfiguration,
};
use serde_json::Value;

use super::encryption::{KeyMatch, match_key};
use super::{Finding, IsolationState, LayerReport, fail, pass};
use crate::backends::Backend;
use crate::backends::aws::{AwsError, classify, error_code, http_status};
use crate::backends::s3::{moto_versioning_status, partition_of};

/// The stable ids of the findings this probe reports.
pub mod check {
    pub const EXISTS: &str = "bucket.exists";
    pub const PUBLIC_ACCESS_BLOCK: &str = "bucket.publicAccessBlock";
    pub const OWNERSHIP: &str = "bucket.ownership";
    pub const ENCRYPTION: &str = "bucket.encryption";
    pub const VERSIONING: &str = "bucket.versioning";
    pub const POLICY: &str = "bucket.policy";
    pub const INSECURE_TRANSPORT: &str = "bucket.insecureTransport";
}

const BACKEND: Backend = Backend::S3;

/// Where the insecure PUT writes, should the bucket accept it: a name no
/// application uses, that says what it is to anyone who finds it.
const PROBE_OBJECT: &str = ".tenantry/isolation-probe/insecure-transport";
const PROBE_BODY: &[u8] = b"tenantry isolation probe: sent without TLS, should have been refused\n";

pub struct StorageProbe {
    s3: aws_sdk_s3::Client,
    kms: aws_sdk_kms::Client,
    /// Requests travel without TLS (a local S3 such as moto): only then can
    /// the probe send a request the deny-non-TLS policy must refuse.
    plain_http: bool,
}

impl StorageProbe {
    /// `force_path_style` as for the S3 backend: for endpoints without
    /// virtual-host addressing (moto, MinIO).
    pub fn new(sdk: &SdkConfig, force_path_style: bool) -> Self {
        let s3_config = crate::backends::aws::count_s3_calls(
            aws_sdk_s3::config::Builder::from(sdk).force_path_style(force_path_style),
        )
        .build();
        Self {
            s3: aws_sdk_s3::Client::from_conf(s3_config),
            kms: crate::backends::aws::kms_client(sdk),
            plain_http: sdk.endpoint_url().is_some_and(|u| u.starts_with("http://")),
        }
    }

    /// Measures `bucket` against the desired state: encrypted with `key_arn`,
    /// versioned when `versioning`. A missing (or unreachable) bucket yields
    /// `bucket.exists` alone, since every other check would only repeat it.
    pub async fn probe(&self, bucket: &str, key_arn: &str, versioning: bool) -> LayerReport {
        // The bucket must be in the account of the tenant's key (the
        // operator's): a bucket of another account that answers is not it.
        let owner = key_arn.split(':').nth(4).filter(|a| !a.is_empty());
        let (exists, go_on) = self.check_exists(bucket, owner).await;
        if !go_on {
            return LayerReport::from_findings(vec![exists]);
        }
        let (public_access, ownership, encryption, versioned, policy, transport) = tokio::join!(
            self.check_public_access_block(bucket, owner),
            self.check_ownership(bucket, owner),
            self.check_encryption(bucket, owner, key_arn),
            self.check_versioning(bucket, owner, versioning),
            self.check_policy(bucket, owner, key_arn),
            self.check_insecure_transport(bucket, owner),
        );
        let mut findings = vec![
            exists,
            public_access,
            ownership,
            encryption,
            versioned,
            policy,
        ];
        findings.extend(transport);
        LayerReport::from_findings(findings)
    }

    /// The finding, and whether the other checks can tell anything more.
    async fn check_exists(&self, bucket: &str, owner: Option<&str>) -> (Finding, bool) {
        let err = match self
            .s3
            .head_bucket()
            .bucket(bucket)
            .set_expected_bucket_owner(owner.map(str::to_string))
            .send()
            .await
        {
            Ok(_) => return (pass(check::EXISTS, format!("bucket {bucket} exists")), true),
            Err(e) => e,
        };
        match http_status(&err) {
            Some(404) => {
                let detail = format!("bucket {bucket} does not exist");
                (fail(check::EXISTS, IsolationState::Broken, detail), false)
            }
            // Another account's bucket, another region, or the operator may
            // not look: every other read would be refused the same way.
            Some(status @ (301 | 403)) => {
                let detail = format!(
                    "HeadBucket {bucket}: HTTP {status}: the bucket is in another region or \
                     account, or the operator may not read it"
                );
                (fail(check::EXISTS, IsolationState::Unknown, detail), false)
            }
            // Perhaps transient: the other reads may still get through, and
            // each reports its own failure.
            _ => (
                unknown(check::EXISTS, &format!("HeadBucket {bucket}"), err),
                true,
            ),
        }
    }

    async fn check_public_access_block(&self, bucket: &str, owner: Option<&str>) -> Finding {
        match self
            .s3
            .get_public_access_block()
            .bucket(bucket)
            .set_expected_bucket_owner(owner.map(str::to_string))
            .send()
            .await
        {
            Ok(out) => public_access_block_finding(bucket, out.public_access_block_configuration()),
            Err(e) if error_code(&e) == Some("NoSuchPublicAccessBlockConfiguration") => {
                public_access_block_finding(bucket, None)
            }
            Err(e) => unknown(
                check::PUBLIC_ACCESS_BLOCK,
                &format!("GetPublicAccessBlock {bucket}"),
                e,
            ),
        }
    }

    async fn check_ownership(&self, bucket: &str, owner: Option<&str>) -> Finding {
        let rules = match self
            .s3
            .get_bucket_ownership_controls()
            .bucket(bucket)
            .set_expected_bucket_owner(owner.map(str::to_string))
            .send()
            .await
        {
            Ok(out) => out
                .ownership_controls()
                .map(|c| {
                    c.rules()
                        .iter()
                        .map(|r| r.object_ownership().clone())
                        .collect()
                })
                .unwrap_or_default(),
            Err(e) if error_code(&e) == Some("OwnershipControlsNotFoundError") => Vec::new(),
            Err(e) => {
                return unknown(
                    check::OWNERSHIP,
                    &format!("GetBucketOwnershipControls {bucket}"),
                    e,
                );
            }
        };
        ownership_finding(bucket, &rules)
    }

    async fn check_encryption(&self, bucket: &str, owner: Option<&str>, key_arn: &str) -> Finding {
        let config = match self
            .s3
            .get_bucket_encryption()
            .bucket(bucket)
            .set_expected_bucket_owner(owner.map(str::to_string))
            .send()
            .await
        {
            Ok(out) => out.server_side_encryption_configuration,
            Err(e) if error_code(&e) == Some("ServerSideEncryptionConfigurationNotFoundError") => {
                None
            }
            Err(e) => {
                return unknown(
                    check::ENCRYPTION,
                    &format!("GetBucketEncryption {bucket}"),
                    e,
                );
            }
        };
        let default = match encryption_default(bucket, key_arn, config.as_ref()) {
            Ok(default) => default,
            Err(finding) => return finding,
        };
        let matched = match match_key(&self.kms, &default.key, key_arn).await {
            Ok(m) => m,
            Err(e) => return fail(check::ENCRYPTION, IsolationState::Unknown, e),
        };
        encryption_finding(bucket, key_arn, &default, &matched)
    }

    async fn check_versioning(&self, bucket: &str, owner: Option<&str>, desired: bool) -> Finding {
        let status = match self
            .s3
            .get_bucket_versioning()
            .bucket(bucket)
            .set_expected_bucket_owner(owner.map(str::to_string))
            .send()
            .await
        {
            Ok(out) => out.status,
            Err(e) => match moto_versioning_status(&e) {
                Some(status) => status,
                None => {
                    return unknown(
                        check::VERSIONING,
                        &format!("GetBucketVersioning {bucket}"),
                        e,
                    );
                }
            },
        };
        versioning_finding(bucket, desired, status.as_ref())
    }

    async fn check_policy(&self, bucket: &str, owner: Option<&str>, key_arn: &str) -> Finding {
        match self
            .s3
            .get_bucket_policy()
            .bucket(bucket)
            .set_expected_bucket_owner(owner.map(str::to_string))
            .send()
            .await
        {
            Ok(out) => policy_finding(bucket, partition_of(key_arn), out.policy()),
            Err(e) if error_code(&e) == Some("NoSuchBucketPolicy") => {
                policy_finding(bucket, partition_of(key_arn), None)
            }
            Err(e) => unknown(check::POLICY, &format!("GetBucketPolicy {bucket}"), e),
        }
    }

    /// Over HTTPS there is no plain request to make, and nothing is reported:
    /// `bucket.policy` alone tells whether plain requests would be refused.
    async fn check_insecure_transport(&self, bucket: &str, owner: Option<&str>) -> Option<Finding> {
        if !self.plain_http {
            return None;
        }
        let put = self
            .s3
            .put_object()
            .bucket(bucket)
            .set_expected_bucket_owner(owner.map(str::to_string))
            .key(PROBE_OBJECT)
            .body(ByteStream::from_static(PROBE_BODY))
            .send()
            .await;
        let out = match put {
            Ok(out) => out,
            Err(e) if http_status(&e) == Some(403) || error_code(&e) == Some("AccessDenied") => {
                return Some(pass(
                    check::INSECURE_TRANSPORT,
                    format!("an object PUT to bucket {bucket} without TLS was refused"),
                ));
            }
            Err(e) => {
                return Some(unknown(
                    check::INSECURE_TRANSPORT,
                    &format!("PutObject {bucket}/{PROBE_OBJECT} without TLS"),
                    e,
                ));
            }
        };
        // The version id, when versioning is on, removes the object for
        // good instead of hiding it behind a delete marker.
        let deleted = self
            .s3
            .delete_object()
            .bucket(bucket)
            .set_expected_bucket_owner(owner.map(str::to_string))
            .key(PROBE_OBJECT)
            .set_version_id(out.version_id)
            .send()
            .await;
        let cleanup = match deleted {
            Ok(_) => "the probe object was deleted again".to_string(),
            Err(e) => format!(
                "the probe object {PROBE_OBJECT} could not be deleted: {}",
                classify(BACKEND, &format!("DeleteObject {bucket}/{PROBE_OBJECT}"), e)
            ),
        };
        Some(fail(
            check::INSECURE_TRANSPORT,
            IsolationState::Broken,
            format!("an object PUT to bucket {bucket} without TLS was accepted; {cleanup}"),
        ))
    }
}

fn unknown<E>(check: &str, context: &str, err: AwsError<E>) -> Finding
where
    E: aws_smithy_types::error::metadata::ProvideErrorMetadata + std::error::Error + 'static,
{
    fail(
        check,
        IsolationState::Unknown,
        classify(BACKEND, context, err).to_string(),
    )
}

fn public_access_block_finding(
    bucket: &str,
    config: Option<&PublicAccessBlockConfiguration>,
) -> Finding {
    let Some(config) = config else {
        return fail(
            check::PUBLIC_ACCESS_BLOCK,
            IsolationState::Broken,
            format!("bucket {bucket} has no Block Public Access configuration"),
        );
    };
    let off: Vec<&str> = [
        ("BlockPublicAcls", config.block_public_acls()),
        ("IgnorePublicAcls", config.ignore_public_acls()),
        ("BlockPublicPolicy", config.block_public_policy()),
        ("RestrictPublicBuckets", config.restrict_public_buckets()),
    ]
    .into_iter()
    .filter(|(_, on)| *on != Some(true))
    .map(|(name, _)| name)
    .collect();
    if off.is_empty() {
        pass(
            check::PUBLIC_ACCESS_BLOCK,
            format!("Block Public Access of bucket {bucket} is fully on"),
        )
    } else {
        fail(
            check::PUBLIC_ACCESS_BLOCK,
            IsolationState::Broken,
            format!(
                "Block Public Access of bucket {bucket} is off: {}",
                off.join(", ")
            ),
        )
    }
}

fn ownership_finding(bucket: &str, rules: &[ObjectOwnership]) -> Finding {
    match rules {
        [ObjectOwnership::BucketOwnerEnforced] => pass(
            check::OWNERSHIP,
            format!("bucket {bucket} enforces bucket-owner ownership (ACLs disabled)"),
        ),
        [] => fail(
            check::OWNERSHIP,
            IsolationState::Broken,
            format!("bucket {bucket} has no ownership controls: ACLs can grant access"),
        ),
        other => fail(
            check::OWNERSHIP,
            IsolationState::Broken,
            format!(
                "bucket {bucket} object ownership is {}, not BucketOwnerEnforced: ACLs can grant access",
                other
                    .iter()
                    .map(ObjectOwnership::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
    }
}

/// The bucket's default KMS encryption, before the key is compared.
struct KmsDefault {
    /// The key as S3 stores it: an id, key ARN, alias or alias ARN.
    key: String,
    bucket_key: bool,
}

/// The default encryption if it is SSE-KMS with a named key; otherwise the
/// (Broken) finding that says what it is instead.
fn encryption_default(
    bucket: &str,
    key_arn: &str,
    config: Option<&ServerSideEncryptionConfiguration>,
) -> Result<KmsDefault, Finding> {
    let broken = |what: String| fail(check::ENCRYPTION, IsolationState::Broken, what);
    let rule = config
        .into_iter()
        .flat_map(|c| c.rules())
        .find(|r| r.apply_server_side_encryption_by_default().is_some());
    let Some((rule, default)) =
        rule.and_then(|r| Some((r, r.apply_server_side_encryption_by_default()?)))
    else {
        return Err(broken(format!("bucket {bucket} has no default encryption")));
    };
    let algorithm = default.sse_algorithm();
    // DSSE-KMS is SSE-KMS with a second layer: the same key decides access.
    if !matches!(
        algorithm,
        ServerSideEncryption::AwsKms | ServerSideEncryption::AwsKmsDsse
    ) {
        return Err(broken(format!(
            "bucket {bucket} encrypts with {}, not with the tenant's KMS key {key_arn}",
            algorithm.as_str()
        )));
    }
    let Some(key) = default.kms_master_key_id().filter(|k| !k.is_empty()) else {
        return Err(broken(format!(
            "bucket {bucket} encrypts with the AWS managed key aws/s3, not with the tenant's key {key_arn}"
        )));
    };
    Ok(KmsDefault {
        key: key.to_string(),
        bucket_key: rule.bucket_key_enabled() == Some(true),
    })
}

fn encryption_finding(
    bucket: &str,
    key_arn: &str,
    default: &KmsDefault,
    matched: &KeyMatch,
) -> Finding {
    let how = match matched {
        KeyMatch::Same => String::new(),
        KeyMatch::ViaAlias => format!(" through {}", default.key),
        KeyMatch::Other(other) => {
            return fail(
                check::ENCRYPTION,
                IsolationState::Broken,
                format!(
                    "bucket {bucket} encrypts with KMS key {other}, not with the tenant's key {key_arn}"
                ),
            );
        }
        KeyMatch::MissingAlias => {
            return fail(
                check::ENCRYPTION,
                IsolationState::Broken,
                format!(
                    "bucket {bucket} encrypts with {}, which names no key",
                    default.key
                ),
            );
        }
    };
    if default.bucket_key {
        pass(
            check::ENCRYPTION,
            format!("bucket {bucket} encrypts with aws:kms, KMS key {key_arn}{how}, bucket key on"),
        )
    } else {
        fail(
            check::ENCRYPTION,
            IsolationState::Inert,
            format!(
                "bucket {bucket} encrypts with aws:kms, KMS key {key_arn}{how}, but its bucket key is off"
            ),
        )
    }
}

fn versioning_finding(
    bucket: &str,
    desired: bool,
    status: Option<&BucketVersioningStatus>,
) -> Finding {
    let shown = status.map_or("never enabled", BucketVersioningStatus::as_str);
    match (desired, status) {
        (true, Some(BucketVersioningStatus::Enabled)) => pass(
            check::VERSIONING,
            format!("versioning of bucket {bucket} is Enabled"),
        ),
        // Overwritten or deleted objects are gone for good: the data is still
        // the tenant's alone, but not protected as configured.
        (true, _) => fail(
            check::VERSIONING,
            IsolationState::Inert,
            format!("versioning of bucket {bucket} is {shown}, not Enabled"),
        ),
        (false, _) => pass(
            check::VERSIONING,
            format!("versioning of bucket {bucket} is not required ({shown})"),
        ),
    }
}

/// Judges a bucket policy: it must deny every S3 action to everyone without
/// TLS, on the bucket and on its objects. Other statements are not judged:
/// Block Public Access keeps public grants from taking effect.
fn policy_finding(bucket: &str, partition: &str, policy: Option<&str>) -> Finding {
    let Some(policy) = policy.filter(|p| !p.trim().is_empty()) else {
        return fail(
            check::POLICY,
            IsolationState::Broken,
            format!("bucket {bucket} has no policy: requests without TLS are not refused"),
        );
    };
    let Ok(policy) = serde_json::from_str::<Value>(policy) else {
        return fail(
            check::POLICY,
            IsolationState::Unknown,
            format!("the policy of bucket {bucket} is not JSON"),
        );
    };
    let denying: Vec<&Value> = as_list(policy.get("Statement"))
        .into_iter()
        .filter(|s| denies_insecure_transport(s))
        .collect();
    let required = [
        format!("arn:{partition}:s3:::{bucket}"),
        format!("arn:{partition}:s3:::{bucket}/*"),
    ];
    let uncovered: Vec<&str> = required
        .iter()
        .filter(|arn| {
            !denying.iter().any(|s| {
                texts(s.get("Resource"))
                    .iter()
                    .any(|pattern| glob_match(pattern, arn, false))
            })
        })
        .map(String::as_str)
        .collect();
    if uncovered.is_empty() {
        pass(
            check::POLICY,
            format!("the policy of bucket {bucket} denies every request without TLS"),
        )
    } else {
        fail(
            check::POLICY,
            IsolationState::Broken,
            format!(
                "the policy of bucket {bucket} does not deny requests without TLS on {}",
                uncovered.join(" and ")
            ),
        )
    }
}

/// A statement that denies every S3 action to everyone when the request
/// came without TLS, and on no further condition.
fn denies_insecure_transport(statement: &Value) -> bool {
    let everyone = |p: &Value| p == "*" || texts(p.get("AWS")).iter().any(|x| x == "*");
    let all_actions = texts(statement.get("Action"))
        .iter()
        .any(|a| glob_match(a, "s3:*", true));
    statement.get("Effect").and_then(Value::as_str) == Some("Deny")
        && statement.get("Principal").is_some_and(everyone)
        && statement.get("NotPrincipal").is_none()
        && statement.get("NotAction").is_none()
        && statement.get("NotResource").is_none()
        && all_actions
        && statement
            .get("Condition")
            .is_some_and(is_insecure_transport_condition)
}

/// `{"Bool": {"aws:SecureTransport": "false"}}`, or the IfExists form, which
/// denies also when the key is absent; nothing else may narrow the deny.
fn is_insecure_transport_condition(condition: &Value) -> bool {
    let Some(operators) = condition.as_object() else {
        return false;
    };
    let [(operator, keys)] = operators.iter().collect::<Vec<_>>()[..] else {
        return false;
    };
    if !matches!(operator.as_str(), "Bool" | "BoolIfExists") {
        return false;
    }
    let Some(keys) = keys.as_object() else {
        return false;
    };
    let [(key, value)] = keys.iter().collect::<Vec<_>>()[..] else {
        return false;
    };
    // Values compare as text: `false` and `"false"` are the same condition.
    let values = texts(Some(value));
    key.eq_ignore_ascii_case("aws:SecureTransport")
        && values.iter().any(|v| v.eq_ignore_ascii_case("false"))
        && !values.iter().any(|v| v.eq_ignore_ascii_case("true"))
}

/// A policy field's values (one, or a list), as text.
fn texts(value: Option<&Value>) -> Vec<String> {
    as_list(value)
        .into_iter()
        .map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect()
}

fn as_list(value: Option<&Value>) -> Vec<&Value> {
    match value {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(other) => vec![other],
        None => Vec::new(),
    }
}

/// IAM wildcard matching: `*` any run of characters, `?` any one. A pattern
/// matches the literal text `s3:*` only if it covers every S3 action.
fn glob_match(pattern: &str, text: &str, ignore_case: bool) -> bool {
    let fold = |s: &str| {
        if ignore_case {
            s.to_ascii_lowercase()
        } else {
            s.to_string()
        }
    };
    let (p, t) = (fold(pattern).into_bytes(), fold(text).into_bytes());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || (p[pi] == t[ti] && p[pi] != b'*')) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const KEY: &str = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

    fn tenantry_policy(bucket: &str) -> Value {
        json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Sid": "DenyInsecureTransport",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": [format!("arn:aws:s3:::{bucket}"), format!("arn:aws:s3:::{bucket}/*")],
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            }],
        })
    }

    fn judge(policy: &Value) -> IsolationState {
        policy_finding("b", "aws", Some(&policy.to_string())).state
    }

    #[test]
    fn tenantrys_policy_and_equivalent_shapes_pass() {
        assert_eq!(judge(&tenantry_policy("b")), IsolationState::Enforced);
        let reshaped = json!({
            "Statement": [
                {"Effect": "Deny", "Principal": {"AWS": ["*"]}, "Action": ["s3:*"],
                 "Resource": "arn:aws:s3:::b", "Condition": {"BoolIfExists": {"aws:securetransport": false}}},
                {"Effect": "Deny", "Principal": "*", "Action": "*",
                 "Resource": "arn:aws:s3:::b/*", "Condition": {"Bool": {"aws:SecureTransport": ["false"]}}},
                {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:root"}, "Action": "s3:GetObject",
                 "Resource": "arn:aws:s3:::b/*"},
            ]
        });
        assert_eq!(judge(&reshaped), IsolationState::Enforced);
        let wildcard = json!({"Statement": {"Effect": "Deny", "Principal": "*", "Action": "S3:*",
            "Resource": "arn:aws:s3:::b*", "Condition": {"Bool": {"aws:SecureTransport": "false"}}}});
        assert_eq!(judge(&wildcard), IsolationState::Enforced);
    }

    #[test]
    fn a_missing_partial_or_weakened_deny_is_broken() {
        let f = policy_finding("b", "aws", None);
        assert_eq!(f.state, IsolationState::Broken);
        assert!(f.detail.contains("no policy"), "{}", f.detail);

        let mut objects_only = tenantry_policy("b");
        objects_only["Statement"][0]["Resource"] = json!("arn:aws:s3:::b/*");
        let f = policy_finding("b", "aws", Some(&objects_only.to_string()));
        assert_eq!(f.state, IsolationState::Broken);
        assert!(f.detail.ends_with("on arn:aws:s3:::b"), "{}", f.detail);

        let weakenings = [
            ("Effect", json!("Allow")),
            ("Action", json!("s3:GetObject")),
            (
                "Principal",
                json!({"AWS": "arn:aws:iam::111122223333:root"}),
            ),
            (
                "Condition",
                json!({"Bool": {"aws:SecureTransport": "true"}}),
            ),
            (
                "Condition",
                json!({"Bool": {"aws:SecureTransport": "false"}, "IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}),
            ),
            (
                "Condition",
                json!({"Bool": {"aws:SecureTransport": "false", "aws:ViaAWSService": "false"}}),
            ),
            (
                "Resource",
                json!(["arn:aws:s3:::other", "arn:aws:s3:::other/*"]),
            ),
        ];
        for (field, value) in weakenings {
            let mut p = tenantry_policy("b");
            p["Statement"][0][field] = value.clone();
            assert_eq!(judge(&p), IsolationState::Broken, "{field}: {value}");
        }
        let mut not_action = tenantry_policy("b");
        not_action["Statement"][0]["NotAction"] = json!("s3:PutObject");
        assert_eq!(judge(&not_action), IsolationState::Broken);
        assert_eq!(judge(&tenantry_policy("b-other")), IsolationState::Broken);
        assert_eq!(
            policy_finding("b", "aws", Some("{")).state,
            IsolationState::Unknown
        );
        // The partition comes from the key: a policy for another one does not count.
        assert_eq!(
            policy_finding("b", "aws-cn", Some(&tenantry_policy("b").to_string())).state,
            IsolationState::Broken
        );
    }

    #[test]
    fn wildcards_match_as_in_iam() {
        assert!(glob_match("*", "arn:aws:s3:::b", false));
        assert!(glob_match("arn:aws:s3:::b/*", "arn:aws:s3:::b/*", false));
        assert!(!glob_match("arn:aws:s3:::b/*", "arn:aws:s3:::b", false));
        assert!(glob_match("arn:aws:s3:::?", "arn:aws:s3:::b", false));
        assert!(glob_match("s3:*", "s3:*", true));
        assert!(!glob_match("s3:Put*", "s3:*", true));
        assert!(!glob_match("s3:*", "S3:*", false));
    }

    fn pab(flags: [bool; 4]) -> PublicAccessBlockConfiguration {
        PublicAccessBlockConfiguration::builder()
            .block_public_acls(flags[0])
            .ignore_public_acls(flags[1])
            .block_public_policy(flags[2])
            .restrict_public_buckets(flags[3])
            .build()
    }

    #[test]
    fn block_public_access_must_be_fully_on() {
        assert_eq!(
            public_access_block_finding("b", Some(&pab([true; 4]))).state,
            IsolationState::Enforced
        );
        let f = public_access_block_finding("b", Some(&pab([true, false, true, false])));
        assert_eq!(f.state, IsolationState::Broken);
        assert!(
            f.detail
                .ends_with("IgnorePublicAcls, RestrictPublicBuckets"),
            "{}",
            f.detail
        );
        assert_eq!(
            public_access_block_finding("b", None).state,
            IsolationState::Broken
        );
    }

    #[test]
    fn only_bucket_owner_enforced_disables_acls() {
        assert_eq!(
            ownership_finding("b", &[ObjectOwnership::BucketOwnerEnforced]).state,
            IsolationState::Enforced
        );
        for rules in [
            vec![],
            vec![ObjectOwnership::ObjectWriter],
            vec![ObjectOwnership::BucketOwnerPreferred],
        ] {
            assert_eq!(
                ownership_finding("b", &rules).state,
                IsolationState::Broken,
                "{rules:?}"
            );
        }
    }

    fn sse(
        algorithm: ServerSideEncryption,
        key: Option<&str>,
        bucket_key: bool,
    ) -> ServerSideEncryptionConfiguration {
        use aws_sdk_s3::types::{ServerSideEncryptionByDefault, ServerSideEncryptionRule};
        let default = ServerSideEncryptionByDefault::builder()
            .sse_algorithm(algorithm)
            .set_kms_master_key_id(key.map(str::to_string))
            .build()
            .unwrap();
        ServerSideEncryptionConfiguration::builder()
            .rules(
                ServerSideEncryptionRule::builder()
                    .apply_server_side_encryption_by_default(default)
                    .bucket_key_enabled(bucket_key)
                    .build(),
            )
            .build()
            .unwrap()
    }

    #[test]
    fn encryption_must_be_kms_with_a_named_key() {
        assert_eq!(
            encryption_default("b", KEY, None).err().unwrap().state,
            IsolationState::Broken
        );
        let aes = sse(ServerSideEncryption::Aes256, None, false);
        let f = encryption_default("b", KEY, Some(&aes)).err().unwrap();
        assert_eq!(f.state, IsolationState::Broken);
        assert!(f.detail.contains("AES256"), "{}", f.detail);
        let managed = sse(ServerSideEncryption::AwsKms, None, true);
        let f = encryption_default("b", KEY, Some(&managed)).err().unwrap();
        assert!(f.detail.contains("aws/s3"), "{}", f.detail);
        let ours = sse(ServerSideEncryption::AwsKms, Some(KEY), true);
        let d = encryption_default("b", KEY, Some(&ours)).ok().unwrap();
        assert_eq!((d.key.as_str(), d.bucket_key), (KEY, true));
    }

    #[test]
    fn the_tenants_key_without_bucket_key_is_inert_and_another_key_broken() {
        let d = |bucket_key| KmsDefault {
            key: KEY.to_string(),
            bucket_key,
        };
        assert_eq!(
            encryption_finding("b", KEY, &d(true), &KeyMatch::Same).state,
            IsolationState::Enforced
        );
        assert_eq!(
            encryption_finding("b", KEY, &d(true), &KeyMatch::ViaAlias).state,
            IsolationState::Enforced
        );
        assert_eq!(
            encryption_finding("b", KEY, &d(false), &KeyMatch::Same).state,
            IsolationState::Inert
        );
        let f = encryption_finding("b", KEY, &d(true), &KeyMatch::Other("arn:other".into()));
        assert_eq!(f.state, IsolationState::Broken);
        assert!(f.detail.contains("arn:other"), "{}", f.detail);
        assert_eq!(
            encryption_finding("b", KEY, &d(true), &KeyMatch::MissingAlias).state,
            IsolationState::Broken
        );
    }

    #[test]
    fn versioning_is_judged_only_when_wanted() {
        let enabled = BucketVersioningStatus::Enabled;
        let suspended = BucketVersioningStatus::Suspended;
        assert_eq!(
            versioning_finding("b", true, Some(&enabled)).state,
            IsolationState::Enforced
        );
        assert_eq!(
            versioning_finding("b", true, Some(&suspended)).state,
            IsolationState::Inert
        );
        assert_eq!(
            versioning_finding("b", true, None).state,
            IsolationState::Inert
        );
        assert_eq!(
            versioning_finding("b", false, None).state,
            IsolationState::Enforced
        );
    }
}
