//! The operator's AWS IAM policy, as data, in one place.
//!
//! Every statement follows from the AWS calls of `backends/{kms,s3,secrets}.rs`,
//! `isolation/{storage,encryption}.rs`, the tenant role's `backends/iam.rs`
//! and, when configured, `audit/anchor.rs`. `tenantry iam-policy` prints it,
//! docs/install.md shows it (a test below keeps the two equal), and the
//! integration tests run the operator under exactly this policy against the
//! IAM-enforcing moto (`tests/integration/operator_policy.rs`), so an action
//! missing here fails a test.
//!
//! Tag conditions follow what each service evaluates:
//! - KMS and Secrets Manager statements name `"Resource": "*"` and narrow it
//!   with `aws:ResourceTag`/`aws:RequestTag` (attribute-based access
//!   control), not with key or secret ARNs: a key's ARN is not known before
//!   it exists, a secret's ends in a random suffix, and moto's IAM matches
//!   every KMS and Secrets Manager call against the literal resource `*`, so
//!   an ARN-scoped statement could never be shown to work in the tests.
//! - S3 statements are scoped by bucket name. S3 evaluates bucket tags only
//!   on buckets with ABAC turned on, which then refuse PutBucketTagging, the
//!   call tenantry tags with.
//! - Reads that decide ownership (DescribeKey, ListResourceTags,
//!   DescribeSecret, GetRole) carry no tag condition: they must see a
//!   resource that is *not* tenantry's to report a conflict, and must find a
//!   missing one missing rather than refused.

use std::collections::BTreeSet;

use serde::Serialize;
use serde_json::{Value, json};

use crate::backends::tags;

/// Where the policy applies. `placeholders()` gives the form docs/install.md
/// shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyScope {
    /// `aws`, `aws-cn` or `aws-us-gov`.
    pub partition: String,
    pub account: String,
    pub region: String,
    /// The operator's `--bucket-prefix`, and those of its TenantClasses.
    pub bucket_prefixes: Vec<String>,
    /// The audit anchor, when `--audit-anchor-bucket` is set.
    pub anchor: Option<AnchorScope>,
}

/// The audit anchor's bucket and MAC key (`--audit-anchor-bucket`,
/// `--audit-mac-key`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnchorScope {
    pub bucket: String,
    /// An alias (`alias/...`), which tenantry creates with its key when
    /// missing, or a key id or ARN, which must exist.
    pub mac_key: String,
}

/// The MAC key the operator uses when `--audit-mac-key` is not given.
pub const DEFAULT_MAC_KEY: &str = "alias/tenantry-audit";

impl PolicyScope {
    /// The form with words in place of the values: PARTITION, ACCOUNT,
    /// REGION, PREFIX (ANCHOR_BUCKET: [`Self::with_anchor_placeholder`]).
    pub fn placeholders() -> Self {
        Self {
            partition: "PARTITION".into(),
            account: "ACCOUNT".into(),
            region: "REGION".into(),
            bucket_prefixes: vec!["PREFIX".into()],
            anchor: None,
        }
    }

    /// The same scope with the placeholder anchor (ANCHOR_BUCKET and the
    /// default MAC key alias).
    pub fn with_anchor_placeholder(mut self) -> Self {
        self.anchor = Some(AnchorScope {
            bucket: "ANCHOR_BUCKET".into(),
            mac_key: DEFAULT_MAC_KEY.into(),
        });
        self
    }

    fn arn(&self, service: &str, region: &str, account: &str, resource: &str) -> String {
        format!(
            "arn:{}:{service}:{region}:{account}:{resource}",
            self.partition
        )
    }

    /// The DNS suffix of the partition's service endpoints, as
    /// `kms:ViaService` names them.
    fn dns_suffix(&self) -> &'static str {
        match self.partition.as_str() {
            "aws-cn" => "amazonaws.com.cn",
            _ => "amazonaws.com",
        }
    }
}

/// Where tenant resources live, by name (see `naming.rs`; a test checks the
/// two agree).
pub const KEY_ALIAS_PREFIX: &str = "alias/tenantry/";
pub const SECRET_NAME_PREFIX: &str = "tenantry/";
/// IAM path of the tenants' roles.
pub const ROLE_PATH: &str = "/tenantry/";

/// One statement of an identity policy. Always `Allow`: the policy grants
/// what the operator calls and nothing else.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Statement {
    #[serde(rename = "Sid")]
    pub sid: String,
    #[serde(rename = "Effect")]
    effect: &'static str,
    #[serde(rename = "Action")]
    pub actions: Vec<String>,
    #[serde(rename = "Resource", serialize_with = "one_or_many")]
    pub resources: Vec<String>,
    #[serde(rename = "Condition", skip_serializing_if = "Option::is_none")]
    pub condition: Option<Value>,
}

fn one_or_many<S: serde::Serializer>(items: &[String], s: S) -> Result<S::Ok, S::Error> {
    match items {
        [one] => s.serialize_str(one),
        many => many.serialize(s),
    }
}

impl Statement {
    fn allow(sid: &str, actions: &[&str], resources: &[String], condition: Option<Value>) -> Self {
        Self {
            sid: sid.to_string(),
            effect: "Allow",
            actions: actions.iter().map(|a| a.to_string()).collect(),
            resources: resources.to_vec(),
            condition,
        }
    }
}

/// An IAM policy document.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Policy {
    #[serde(rename = "Version")]
    version: &'static str,
    #[serde(rename = "Statement")]
    pub statements: Vec<Statement>,
}

impl Policy {
    fn new(statements: Vec<Statement>) -> Self {
        Self {
            version: "2012-10-17",
            statements,
        }
    }

    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("a policy serializes")
    }

    /// The document as `tenantry iam-policy` prints it and docs/install.md
    /// shows it.
    pub fn to_pretty(&self) -> String {
        serde_json::to_string_pretty(self).expect("a policy serializes")
    }

    /// The same policy without `action` in any statement (statements left
    /// empty go): what a test needs to show that the action is needed.
    pub fn without_action(&self, action: &str) -> Self {
        let statements = self
            .statements
            .iter()
            .cloned()
            .filter_map(|mut s| {
                s.actions.retain(|a| a != action);
                (!s.actions.is_empty()).then_some(s)
            })
            .collect();
        Self::new(statements)
    }

    /// Every action the policy names, once.
    pub fn actions(&self) -> BTreeSet<&str> {
        self.statements
            .iter()
            .flat_map(|s| s.actions.iter().map(String::as_str))
            .collect()
    }
}

/// `StringEquals` on the tag tenantry puts on everything it makes.
fn managed(key_kind: &str) -> (String, Value) {
    (
        format!("aws:{key_kind}/{}", tags::MANAGED_BY),
        json!(tags::MANAGED_BY_VALUE),
    )
}

/// The condition `{operator: {key: value, ...}, ...}` from pairs.
fn condition(operators: &[(&str, Vec<(String, Value)>)]) -> Option<Value> {
    let mut out = serde_json::Map::new();
    for (operator, keys) in operators {
        let keys: serde_json::Map<String, Value> = keys.iter().cloned().collect();
        out.insert(operator.to_string(), Value::Object(keys));
    }
    Some(Value::Object(out))
}

/// Tag keys tenantry sets and removes: its own, under `tenantry.dev/`.
fn only_tenantry_tag_keys() -> (String, Value) {
    let namespace = tags::MANAGED_BY
        .split_once('/')
        .map(|(ns, _)| ns)
        .expect("tenantry's tag keys have a namespace");
    ("aws:TagKeys".into(), json!([format!("{namespace}/*")]))
}

/// The tenant's own resources: tagged as tenantry's and with a tenant uid.
/// The uid keeps the audit MAC key (tenantry's, no tenant's) out of reach.
fn tenant_resource(operators: &mut Vec<(&'static str, Vec<(String, Value)>)>) {
    operators.push(("StringEquals", vec![managed("ResourceTag")]));
    operators.push((
        "Null",
        vec![(
            format!("aws:ResourceTag/{}", tags::TENANT_UID),
            json!("false"),
        )],
    ));
}

/// Adds `more` to the `StringEquals` of `operators`.
fn string_equals(
    mut operators: Vec<(&'static str, Vec<(String, Value)>)>,
    more: Vec<(String, Value)>,
) -> Vec<(&'static str, Vec<(String, Value)>)> {
    match operators.iter_mut().find(|(op, _)| *op == "StringEquals") {
        Some((_, keys)) => keys.extend(more),
        None => operators.push(("StringEquals", more)),
    }
    operators
}

/// The operator's policy for `scope`: the tenant statements, and the audit
/// anchor's when `scope.anchor` is set.
pub fn operator_policy(scope: &PolicyScope) -> Policy {
    let mut statements = tenant_statements(scope);
    statements.extend(anchor_statements(scope));
    Policy::new(statements)
}

/// What every tenant needs: its KMS key, bucket, secret and IAM role.
pub fn tenant_statements(scope: &PolicyScope) -> Vec<Statement> {
    let star = vec!["*".to_string()];
    let p = &scope.partition;
    let symmetric = vec![("kms:KeySpec".to_string(), json!("SYMMETRIC_DEFAULT"))];
    let tenant_keys = || {
        let mut ops = Vec::new();
        tenant_resource(&mut ops);
        string_equals(ops, symmetric.clone())
    };
    let (probe_key, probe_value) = crate::isolation::encryption::PROBE_CONTEXT;
    let buckets: Vec<String> = scope
        .bucket_prefixes
        .iter()
        .map(|prefix| format!("arn:{p}:s3:::{prefix}-*"))
        .collect();
    let objects: Vec<String> = buckets.iter().map(|b| format!("{b}/*")).collect();
    let roles = vec![scope.arn("iam", "", &scope.account, &format!("role{ROLE_PATH}*"))];

    vec![
        // Ownership checks read what carries the tenant's alias or uid, and
        // scans list every key, before anything is touched.
        Statement::allow(
            "KmsRead",
            &[
                "kms:ListKeys",
                "kms:ListAliases",
                "kms:DescribeKey",
                "kms:ListResourceTags",
            ],
            &star,
            None,
        ),
        // A tenant key is symmetric and carries its tenant's uid from its
        // creation on (an interrupted creation is found again by that tag).
        Statement::allow(
            "KmsCreateTenantKeys",
            &["kms:CreateKey"],
            &star,
            condition(&[
                (
                    "StringEquals",
                    vec![
                        managed("RequestTag"),
                        ("kms:KeySpec".into(), json!("SYMMETRIC_DEFAULT")),
                        ("kms:KeyUsage".into(), json!("ENCRYPT_DECRYPT")),
                    ],
                ),
                (
                    "Null",
                    vec![(
                        format!("aws:RequestTag/{}", tags::TENANT_UID),
                        json!("false"),
                    )],
                ),
            ]),
        ),
        // CreateKey with tags is authorized as TagResource on a key that has
        // no tags yet, hence IfExists; on an existing key only tenantry's own
        // may be retagged, and only with tenantry.dev/ keys.
        Statement::allow(
            "KmsTag",
            &["kms:TagResource"],
            &star,
            condition(&[
                ("ForAllValues:StringLike", vec![only_tenantry_tag_keys()]),
                ("StringEqualsIfExists", vec![managed("ResourceTag")]),
            ]),
        ),
        // Only the released mark is ever removed.
        Statement::allow(
            "KmsUntagReleased",
            &["kms:UntagResource"],
            &star,
            condition(&{
                let mut ops = tenant_keys();
                ops.push((
                    "ForAllValues:StringEquals",
                    vec![("aws:TagKeys".into(), json!([tags::RELEASED]))],
                ));
                ops
            }),
        ),
        // Enabled, rotating, deleted on rollback or Delete, restored on
        // adoption (policy reset, grants revoked), the class principal's
        // key-policy statement; the key side of the alias calls.
        Statement::allow(
            "KmsManageTenantKeys",
            &[
                "kms:EnableKey",
                "kms:EnableKeyRotation",
                "kms:GetKeyRotationStatus",
                "kms:ScheduleKeyDeletion",
                "kms:CancelKeyDeletion",
                "kms:GetKeyPolicy",
                "kms:PutKeyPolicy",
                "kms:ListGrants",
                "kms:RevokeGrant",
                "kms:CreateAlias",
                "kms:UpdateAlias",
                "kms:DeleteAlias",
            ],
            &star,
            condition(&tenant_keys()),
        ),
        // The alias side of the alias calls: aliases cannot be tagged, so
        // they are scoped by name.
        Statement::allow(
            "KmsTenantAliases",
            &["kms:CreateAlias", "kms:UpdateAlias", "kms:DeleteAlias"],
            &[scope.arn(
                "kms",
                &scope.region,
                &scope.account,
                &format!("{KEY_ALIAS_PREFIX}*"),
            )],
            None,
        ),
        // The encryption probe's round trip, with its own encryption context
        // only: the operator cannot decrypt what the tenant encrypted.
        Statement::allow(
            "KmsProbeRoundTrip",
            &["kms:Encrypt", "kms:Decrypt"],
            &star,
            condition(&string_equals(
                tenant_keys(),
                vec![(
                    format!("kms:EncryptionContext:{probe_key}"),
                    json!(probe_value),
                )],
            )),
        ),
        // Secrets Manager encrypting and decrypting the tenant's secret under
        // its key, on the operator's behalf.
        Statement::allow(
            "KmsForTenantSecrets",
            &["kms:GenerateDataKey", "kms:Decrypt"],
            &star,
            condition(&string_equals(
                tenant_keys(),
                vec![(
                    "kms:ViaService".into(),
                    json!(format!(
                        "secretsmanager.{}.{}",
                        scope.region,
                        scope.dns_suffix()
                    )),
                )],
            )),
        ),
        // Made, locked down, read back by the storage probe, reset on
        // adoption (replication, notifications), emptied and deleted.
        // s3:ListBucket is HeadBucket; s3:PutReplicationConfiguration is
        // what DeleteBucketReplication needs.
        Statement::allow(
            "TenantBuckets",
            &[
                "s3:CreateBucket",
                "s3:DeleteBucket",
                "s3:ListBucket",
                "s3:ListBucketVersions",
                "s3:GetBucketTagging",
                "s3:PutBucketTagging",
                "s3:GetBucketPolicy",
                "s3:PutBucketPolicy",
                "s3:DeleteBucketPolicy",
                "s3:GetBucketPublicAccessBlock",
                "s3:PutBucketPublicAccessBlock",
                "s3:GetBucketOwnershipControls",
                "s3:PutBucketOwnershipControls",
                "s3:GetEncryptionConfiguration",
                "s3:PutEncryptionConfiguration",
                "s3:GetBucketVersioning",
                "s3:PutBucketVersioning",
                "s3:GetReplicationConfiguration",
                "s3:PutReplicationConfiguration",
                "s3:GetBucketNotification",
                "s3:PutBucketNotification",
            ],
            &buckets,
            None,
        ),
        // Emptying a bucket before its deletion, version by version.
        Statement::allow(
            "TenantBucketObjects",
            &["s3:DeleteObject", "s3:DeleteObjectVersion"],
            &objects,
            None,
        ),
        // The storage probe's write without TLS, which the bucket policy
        // must refuse (on plain-HTTP endpoints only). Allowed only without
        // TLS, so over TLS the operator can write no tenant's object, and
        // without TLS the refusal measured is the bucket policy's, not this
        // policy's.
        Statement::allow(
            "StorageProbeInsecureWrite",
            &["s3:PutObject"],
            &objects,
            condition(&[("Bool", vec![("aws:SecureTransport".into(), json!("false"))])]),
        ),
        // An adopted bucket loses the access points of the account that
        // open it; any of them may be a neighbour's, hence accesspoint/*.
        Statement::allow("AccessPointsList", &["s3:ListAccessPoints"], &star, None),
        Statement::allow(
            "AccessPointsDelete",
            &["s3:DeleteAccessPoint"],
            &[scope.arn("s3", &scope.region, &scope.account, "accesspoint/*")],
            None,
        ),
        Statement::allow(
            "SecretsRead",
            &["secretsmanager:DescribeSecret"],
            &star,
            None,
        ),
        Statement::allow(
            "SecretsCreate",
            &["secretsmanager:CreateSecret"],
            &star,
            condition(&[
                ("StringEquals", vec![managed("RequestTag")]),
                (
                    "StringLike",
                    vec![(
                        "secretsmanager:Name".into(),
                        json!(format!("{SECRET_NAME_PREFIX}*")),
                    )],
                ),
                (
                    "Null",
                    vec![(
                        format!("aws:RequestTag/{}", tags::TENANT_UID),
                        json!("false"),
                    )],
                ),
            ]),
        ),
        // As for keys: CreateSecret with tags needs TagResource too.
        Statement::allow(
            "SecretsTag",
            &["secretsmanager:TagResource"],
            &star,
            condition(&[
                ("ForAllValues:StringLike", vec![only_tenantry_tag_keys()]),
                ("StringEqualsIfExists", vec![managed("ResourceTag")]),
            ]),
        ),
        Statement::allow(
            "SecretsUntagReleased",
            &["secretsmanager:UntagResource"],
            &star,
            condition(&{
                let mut ops = Vec::new();
                tenant_resource(&mut ops);
                ops.push((
                    "ForAllValues:StringEquals",
                    vec![("aws:TagKeys".into(), json!([tags::RELEASED]))],
                ));
                ops
            }),
        ),
        // Value kept current, moved under the tenant's key, deleted on
        // rollback or Delete, restored; an adopted secret loses resource
        // policy and rotation.
        Statement::allow(
            "SecretsManage",
            &[
                "secretsmanager:GetSecretValue",
                "secretsmanager:PutSecretValue",
                "secretsmanager:UpdateSecret",
                "secretsmanager:DeleteSecret",
                "secretsmanager:RestoreSecret",
                "secretsmanager:GetResourcePolicy",
                "secretsmanager:DeleteResourcePolicy",
                "secretsmanager:CancelRotateSecret",
            ],
            &star,
            condition(&{
                let mut ops = Vec::new();
                tenant_resource(&mut ops);
                ops
            }),
        ),
        // The tenant's IAM role, under its own path.
        Statement::allow(
            "TenantRolesRead",
            &[
                "iam:GetRole",
                "iam:GetRolePolicy",
                "iam:ListRolePolicies",
                "iam:ListAttachedRolePolicies",
            ],
            &roles,
            None,
        ),
        Statement::allow(
            "TenantRolesCreate",
            &["iam:CreateRole"],
            &roles,
            condition(&[("StringEquals", vec![managed("RequestTag")])]),
        ),
        Statement::allow(
            "TenantRolesTag",
            &["iam:TagRole"],
            &roles,
            condition(&[
                ("ForAllValues:StringLike", vec![only_tenantry_tag_keys()]),
                ("StringEqualsIfExists", vec![managed("ResourceTag")]),
            ]),
        ),
        Statement::allow(
            "TenantRolesManage",
            &[
                "iam:UntagRole",
                "iam:UpdateAssumeRolePolicy",
                "iam:PutRolePermissionsBoundary",
                "iam:DeleteRolePermissionsBoundary",
                "iam:PutRolePolicy",
                "iam:DeleteRolePolicy",
                "iam:DetachRolePolicy",
                "iam:DeleteRole",
            ],
            &roles,
            condition(&[("StringEquals", vec![managed("ResourceTag")])]),
        ),
        // The probes act as the tenant's role.
        Statement::allow(
            "AssumeTenantRoles",
            &["sts:AssumeRole"],
            &roles,
            condition(&[("StringEquals", vec![managed("ResourceTag")])]),
        ),
    ]
}

/// What the audit anchor needs (`audit/anchor.rs`); none without one.
pub fn anchor_statements(scope: &PolicyScope) -> Vec<Statement> {
    let Some(anchor) = &scope.anchor else {
        return Vec::new();
    };
    let p = &scope.partition;
    let star = vec!["*".to_string()];
    let hmac = ("kms:KeySpec".to_string(), json!("HMAC_256"));
    let checkpoints = format!(
        "arn:{p}:s3:::{}/{}*",
        anchor.bucket,
        crate::audit::anchor::CHECKPOINT_PREFIX
    );
    let mut statements = vec![
        // HeadBucket (s3:ListBucket), the Object Lock check and default
        // rule; CreateBucket with Object Lock needs the lock and versioning
        // permissions as well.
        Statement::allow(
            "AuditAnchorBucket",
            &[
                "s3:CreateBucket",
                "s3:ListBucket",
                "s3:ListBucketVersions",
                "s3:GetBucketObjectLockConfiguration",
                "s3:PutBucketObjectLockConfiguration",
                "s3:PutBucketVersioning",
            ],
            &[format!("arn:{p}:s3:::{}", anchor.bucket)],
            None,
        ),
        // Checkpoints are put locked and read back by version; never
        // deleted.
        Statement::allow(
            "AuditAnchorCheckpoints",
            &[
                "s3:PutObject",
                "s3:PutObjectRetention",
                "s3:GetObjectVersion",
            ],
            &[checkpoints],
            None,
        ),
    ];
    let mut use_key = vec![hmac.clone()];
    if anchor.mac_key.starts_with("alias/") {
        use_key.push(("kms:RequestAlias".into(), json!(anchor.mac_key)));
    }
    statements.push(Statement::allow(
        "AuditMacKeyUse",
        &["kms:GenerateMac", "kms:VerifyMac"],
        &star,
        condition(&[("StringEquals", use_key)]),
    ));
    // Only a key named by an alias is created when missing. No
    // ScheduleKeyDeletion: the key of a replica that lost the race to the
    // alias stays (a warning names it), so that nothing under this policy
    // can delete the MAC key and leave every checkpoint unverifiable.
    if anchor.mac_key.starts_with("alias/") {
        statements.push(Statement::allow(
            "AuditMacKeyCreate",
            &["kms:CreateKey"],
            &star,
            condition(&[(
                "StringEquals",
                vec![
                    managed("RequestTag"),
                    hmac.clone(),
                    ("kms:KeyUsage".into(), json!("GENERATE_VERIFY_MAC")),
                ],
            )]),
        ));
        statements.push(Statement::allow(
            "AuditMacKeyAlias",
            &["kms:CreateAlias"],
            &star,
            condition(&[("StringEquals", vec![managed("ResourceTag"), hmac])]),
        ));
        statements.push(Statement::allow(
            "AuditMacAliasName",
            &["kms:CreateAlias"],
            &[scope.arn("kms", &scope.region, &scope.account, &anchor.mac_key)],
            None,
        ));
    }
    statements
}

/// How moto (5.2) names the S3 requests tenantry makes, by the IAM action
/// AWS checks for them, where the two differ or moto needs more: moto-iam
/// checks `s3:<its name>` (`moto/s3/responses.py`, `ACTION_MAP`; a query
/// parameter it does not list falls back to `ListBucket` for GET and
/// `CreateBucket` for PUT).
const MOTO_S3_NAMES: &[(&str, &[&str])] = &[
    // HeadBucket.
    ("s3:ListBucket", &["s3:HeadBucket"]),
    ("s3:GetBucketPublicAccessBlock", &["s3:ListBucket"]),
    ("s3:PutBucketPublicAccessBlock", &["s3:CreateBucket"]),
    ("s3:GetBucketOwnershipControls", &["s3:ListBucket"]),
    ("s3:PutBucketOwnershipControls", &["s3:CreateBucket"]),
    ("s3:GetEncryptionConfiguration", &["s3:ListBucket"]),
    ("s3:PutEncryptionConfiguration", &["s3:CreateBucket"]),
    ("s3:GetReplicationConfiguration", &["s3:ListBucket"]),
    // DeleteBucketReplication is a DELETE without a listed parameter.
    ("s3:PutReplicationConfiguration", &["s3:DeleteBucket"]),
    ("s3:GetBucketObjectLockConfiguration", &["s3:ListBucket"]),
    ("s3:PutBucketObjectLockConfiguration", &["s3:CreateBucket"]),
    // An object PUT with a retention is a PutObject to moto.
    ("s3:PutObjectRetention", &["s3:PutObject"]),
];

/// S3 calls moto matches against the bucket although AWS matches them
/// against objects: DeleteObjects is `s3:DeleteObject` on the bucket.
const MOTO_ON_BUCKET: &[(&str, &str)] = &[
    ("s3:DeleteObject", "s3:DeleteObject"),
    ("s3:DeleteObjectVersion", "s3:DeleteObject"),
];

/// Calls moto matches against the literal `*` although AWS scopes them:
/// S3 Control's, and IAM's on a role that does not exist yet (CreateRole,
/// and GetRole finding it missing).
const MOTO_ON_STAR: &[&str] = &["s3:DeleteAccessPoint", "iam:CreateRole", "iam:GetRole"];

/// Services moto matches against `*` only: a statement of theirs scoped to
/// ARNs never allows there.
const MOTO_STAR_ONLY_SERVICES: &[&str] = &["kms", "secretsmanager"];

/// `policy` as moto-iam can evaluate it: each S3 action with the names moto
/// gives the same requests, DeleteObjects on the bucket, and the calls moto
/// matches against `*` on `*`. Conditions are kept (moto treats them as
/// met). Derived from the policy alone, so an action missing from the
/// policy is missing here too, unless another action of its statement maps
/// to the same moto name ([`moto_blind_spots`]).
pub fn as_moto_evaluates(policy: &Policy) -> Policy {
    let mut statements = Vec::new();
    for s in &policy.statements {
        let mut main = s.clone();
        for action in &s.actions {
            for (aws, moto) in MOTO_S3_NAMES {
                if action == aws {
                    main.actions.extend(moto.iter().map(|m| m.to_string()));
                }
            }
        }
        dedup(&mut main.actions);
        statements.push(main);

        let on_bucket: Vec<&str> = MOTO_ON_BUCKET
            .iter()
            .filter(|(aws, _)| s.actions.iter().any(|a| a == aws))
            .map(|(_, moto)| *moto)
            .collect();
        let buckets: Vec<String> = s
            .resources
            .iter()
            .filter_map(|r| r.strip_prefix("arn:"))
            .filter_map(|r| {
                let (head, object) = r.split_once(":::")?;
                let (bucket, _) = object.split_once('/')?;
                Some(format!("arn:{head}:::{bucket}"))
            })
            .collect();
        if !on_bucket.is_empty() && !buckets.is_empty() {
            let mut extra = s.clone();
            extra.sid = format!("{}MotoOnBucket", s.sid);
            extra.actions = on_bucket.iter().map(|a| a.to_string()).collect();
            dedup(&mut extra.actions);
            extra.resources = buckets;
            statements.push(extra);
        }

        let on_star: Vec<String> = s
            .actions
            .iter()
            .filter(|a| MOTO_ON_STAR.contains(&a.as_str()))
            .cloned()
            .collect();
        if !on_star.is_empty() && s.resources.iter().all(|r| r != "*") {
            let mut extra = s.clone();
            extra.sid = format!("{}MotoOnStar", s.sid);
            extra.actions = on_star;
            extra.resources = vec!["*".into()];
            statements.push(extra);
        }
    }
    Policy::new(statements)
}

fn dedup(items: &mut Vec<String>) {
    let mut seen = BTreeSet::new();
    items.retain(|i| seen.insert(i.clone()));
}

/// What moto-iam can allow under `policy`: (moto action, resource pattern)
/// pairs, leaving out statements moto never matches.
fn moto_grants(policy: &Policy) -> BTreeSet<(String, String)> {
    let mut grants = BTreeSet::new();
    for s in &as_moto_evaluates(policy).statements {
        for action in &s.actions {
            let service = action.split(':').next().unwrap_or_default();
            for resource in &s.resources {
                if MOTO_STAR_ONLY_SERVICES.contains(&service) && resource != "*" {
                    continue;
                }
                grants.insert((action.clone(), resource.clone()));
            }
        }
    }
    grants
}

/// The (statement, action) pairs of `policy` whose removal moto-iam cannot
/// notice: moto names their request like another action's of the same
/// statement, or never matches the statement (KMS and Secrets Manager on
/// ARNs). Everything else the operator's tests under moto-iam can catch.
pub fn moto_blind_spots(policy: &Policy) -> Vec<(String, String)> {
    let all = moto_grants(policy);
    let mut blind = Vec::new();
    for (i, s) in policy.statements.iter().enumerate() {
        for action in &s.actions {
            let mut fewer = policy.clone();
            fewer.statements[i].actions.retain(|a| a != action);
            if moto_grants(&fewer) == all {
                blind.push((s.sid.clone(), action.clone()));
            }
        }
    }
    blind
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> PolicyScope {
        PolicyScope {
            partition: "aws".into(),
            account: "123456789012".into(),
            region: "us-east-1".into(),
            bucket_prefixes: vec!["tenantry-local".into()],
            anchor: Some(AnchorScope {
                bucket: "tenantry-local-audit-anchor".into(),
                mac_key: DEFAULT_MAC_KEY.into(),
            }),
        }
    }

    /// The JSON block that follows `marker` in docs/install.md.
    fn documented_block(marker: &str) -> String {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/install.md");
        let doc = std::fs::read_to_string(path).expect("read docs/install.md");
        let (_, after) = doc
            .split_once(marker)
            .unwrap_or_else(|| panic!("docs/install.md lacks the marker {marker:?}"));
        let (_, block) = after
            .split_once("```json\n")
            .expect("a ```json block after the marker");
        let (block, _) = block.split_once("```").expect("the block ends");
        block.to_string()
    }

    #[test]
    fn the_documented_policy_is_the_generated_one() {
        let generated = operator_policy(&PolicyScope::placeholders()).to_pretty();
        let documented = documented_block("<!-- generated: tenantry iam-policy -->");
        assert!(
            documented.trim_end() == generated,
            "docs/install.md shows another policy than `tenantry iam-policy` prints; \
             paste its output there:\n{generated}"
        );
    }

    #[test]
    fn the_documented_anchor_statements_are_the_generated_ones() {
        let scope = PolicyScope::placeholders().with_anchor_placeholder();
        let generated = serde_json::to_string_pretty(&anchor_statements(&scope)).unwrap();
        let documented = documented_block(
            "<!-- generated: the anchor statements of tenantry iam-policy --audit-anchor-bucket ANCHOR_BUCKET -->",
        );
        assert!(
            documented.trim_end() == generated,
            "docs/install.md shows other anchor statements than `tenantry iam-policy \
             --audit-anchor-bucket ANCHOR_BUCKET` ends with; paste them there:\n{generated}"
        );
    }

    #[test]
    fn the_policy_fits_a_roles_inline_policy() {
        // IAM counts characters without whitespace: 10,240 for all inline
        // policies of a role together (docs/install.md says so, and that a
        // managed policy, 6,144, is too small for it).
        let policy = operator_policy(&local());
        let compact = serde_json::to_string(&policy).unwrap();
        let size = compact.chars().filter(|c| !c.is_whitespace()).count();
        assert!((6144..=10240).contains(&size), "{size} characters");
    }

    #[test]
    fn sids_are_unique_and_alphanumeric() {
        let policy = as_moto_evaluates(&operator_policy(&local()));
        let mut seen = BTreeSet::new();
        for s in &policy.statements {
            assert!(
                s.sid.chars().all(|c| c.is_ascii_alphanumeric()),
                "{}",
                s.sid
            );
            assert!(seen.insert(s.sid.clone()), "duplicate Sid {}", s.sid);
        }
    }

    #[test]
    fn tenant_names_fall_under_the_policys_patterns() {
        let names = crate::naming::TenantNames::new("acme", "tenantry-local").unwrap();
        assert!(names.key_alias.starts_with(KEY_ALIAS_PREFIX));
        assert!(names.secret_name.starts_with(SECRET_NAME_PREFIX));
        assert!(names.bucket.starts_with("tenantry-local-"));
    }

    /// The request tags the policy demands at creation are the ones
    /// tenantry sends, and every tag it sets or removes is under the
    /// allowed namespace.
    #[test]
    fn the_tag_conditions_admit_the_tags_tenantry_sets() {
        let tenant = crate::backends::TenantRef {
            name: "acme".into(),
            uid: "uid".into(),
            display_name: Some("Acme".into()),
        };
        let sent = crate::backends::aws::desired_tags(&tenant);
        assert_eq!(
            sent.get(tags::MANAGED_BY).map(String::as_str),
            Some(tags::MANAGED_BY_VALUE)
        );
        assert!(sent.contains_key(tags::TENANT_UID));
        for key in sent.keys().map(String::as_str).chain([tags::RELEASED]) {
            assert!(key.starts_with("tenantry.dev/"), "{key}");
        }
        let policy = operator_policy(&local()).to_value();
        let text = policy.to_string();
        assert!(text.contains(&format!("aws:RequestTag/{}", tags::MANAGED_BY)));
        assert!(text.contains(r#""aws:TagKeys":["tenantry.dev/*"]"#));
    }

    #[test]
    fn kms_and_secrets_statements_name_no_arn_but_the_alias_sides() {
        for s in operator_policy(&local()).statements {
            let service = s.actions[0].split(':').next().unwrap();
            if MOTO_STAR_ONLY_SERVICES.contains(&service) && s.resources != ["*"] {
                assert!(
                    s.actions.iter().all(|a| a == "kms:CreateAlias"
                        || a == "kms:UpdateAlias"
                        || a == "kms:DeleteAlias"),
                    "{} scopes {:?} to ARNs, which moto never matches",
                    s.sid,
                    s.actions
                );
            }
        }
    }

    #[test]
    fn every_s3_action_is_known_to_the_moto_rendering() {
        // Actions moto names as AWS does; a new S3 action must be added
        // here or to MOTO_S3_NAMES, after checking moto's ACTION_MAP.
        const SAME_IN_MOTO: &[&str] = &[
            "s3:CreateBucket",
            "s3:DeleteBucket",
            "s3:ListBucketVersions",
            "s3:GetBucketTagging",
            "s3:PutBucketTagging",
            "s3:GetBucketPolicy",
            "s3:PutBucketPolicy",
            "s3:DeleteBucketPolicy",
            "s3:GetBucketVersioning",
            "s3:PutBucketVersioning",
            "s3:GetBucketNotification",
            "s3:PutBucketNotification",
            "s3:DeleteObject",
            "s3:DeleteObjectVersion",
            "s3:PutObject",
            "s3:GetObjectVersion",
            "s3:ListAccessPoints",
            "s3:DeleteAccessPoint",
        ];
        for action in operator_policy(&local()).actions() {
            if action.starts_with("s3:") {
                assert!(
                    SAME_IN_MOTO.contains(&action)
                        || MOTO_S3_NAMES.iter().any(|(aws, _)| *aws == action),
                    "how does moto name {action}?"
                );
            }
        }
    }

    #[test]
    fn the_moto_rendering_only_adds() {
        let policy = operator_policy(&local());
        let moto = as_moto_evaluates(&policy);
        for s in &policy.statements {
            let rendered = moto.statements.iter().find(|m| m.sid == s.sid).unwrap();
            assert!(s.actions.iter().all(|a| rendered.actions.contains(a)));
            assert_eq!(rendered.resources, s.resources);
            assert_eq!(rendered.condition, s.condition);
        }
        let deletes = moto
            .statements
            .iter()
            .find(|s| s.sid == "TenantBucketObjectsMotoOnBucket")
            .unwrap();
        assert_eq!(deletes.resources, ["arn:aws:s3:::tenantry-local-*"]);
        assert_eq!(deletes.actions, ["s3:DeleteObject"]);
    }

    /// What moto-iam cannot tell apart is listed in docs/security.md;
    /// this keeps the list current.
    #[test]
    fn moto_blind_spots_are_the_known_ones() {
        let blind: Vec<String> = moto_blind_spots(&operator_policy(&local()))
            .into_iter()
            .map(|(sid, action)| format!("{sid} {action}"))
            .collect();
        assert_eq!(
            blind,
            [
                // Also granted (moto ignores conditions) by the MAC key's
                // statement, and the other way round.
                "KmsCreateTenantKeys kms:CreateKey",
                // The key side of the alias calls is what moto matches;
                // the alias side names ARNs, which moto never matches.
                "KmsManageTenantKeys kms:CreateAlias",
                "KmsTenantAliases kms:CreateAlias",
                "KmsTenantAliases kms:UpdateAlias",
                "KmsTenantAliases kms:DeleteAlias",
                // Decrypt is in both, told apart by conditions only.
                "KmsProbeRoundTrip kms:Decrypt",
                "KmsForTenantSecrets kms:Decrypt",
                // moto calls the Put* configuration calls CreateBucket and
                // DeleteBucketReplication DeleteBucket.
                "TenantBuckets s3:CreateBucket",
                "TenantBuckets s3:DeleteBucket",
                "AuditAnchorBucket s3:CreateBucket",
                // An object PUT with a retention is PutObject to moto.
                "AuditAnchorCheckpoints s3:PutObject",
                "AuditMacKeyCreate kms:CreateKey",
                "AuditMacKeyAlias kms:CreateAlias",
                "AuditMacAliasName kms:CreateAlias",
            ],
            "{blind:#?}"
        );
    }

    #[test]
    fn without_action_drops_it_everywhere() {
        let policy = operator_policy(&local());
        assert!(policy.actions().contains("kms:CreateAlias"));
        let fewer = policy.without_action("kms:CreateAlias");
        assert!(!fewer.actions().contains("kms:CreateAlias"));
        assert_eq!(fewer.actions().len() + 1, policy.actions().len());
    }

    #[test]
    fn placeholders_fill_every_arn() {
        let text =
            operator_policy(&PolicyScope::placeholders().with_anchor_placeholder()).to_pretty();
        assert!(text.contains("arn:PARTITION:s3:::PREFIX-*"));
        assert!(text.contains("arn:PARTITION:kms:REGION:ACCOUNT:alias/tenantry/*"));
        assert!(text.contains("arn:PARTITION:iam::ACCOUNT:role/tenantry/*"));
        assert!(text.contains("arn:PARTITION:s3:::ANCHOR_BUCKET/checkpoints/*"));
        assert!(text.contains("secretsmanager.REGION.amazonaws.com"));
    }

    #[test]
    fn every_bucket_prefix_gets_its_buckets_and_objects() {
        let mut scope = local();
        scope.bucket_prefixes.push("tenantry-ent".into());
        let policy = operator_policy(&scope);
        for sid in [
            "TenantBuckets",
            "TenantBucketObjects",
            "StorageProbeInsecureWrite",
        ] {
            let s = policy.statements.iter().find(|s| s.sid == sid).unwrap();
            assert_eq!(s.resources.len(), 2, "{sid}");
            assert!(
                s.resources[1].starts_with("arn:aws:s3:::tenantry-ent-*"),
                "{sid}"
            );
        }
    }

    #[test]
    fn the_china_partition_has_its_own_service_domain() {
        let mut scope = local();
        scope.partition = "aws-cn".into();
        scope.region = "cn-north-1".into();
        let text = operator_policy(&scope).to_pretty();
        assert!(text.contains("secretsmanager.cn-north-1.amazonaws.com.cn"));
        assert!(text.contains("arn:aws-cn:s3:::tenantry-local-*"));
    }
}
