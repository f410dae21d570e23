//! AWS IAM: the role each tenant's workloads act as. It is allowed the
//! tenant's bucket and objects, key and secret and nothing else; its trust
//! policy comes from the class (IRSA, EKS Pod Identity or a fixed
//! principal) and also names the operator, whose probes act as the tenant.
//!
//! Access is taken away with an inline policy that denies everything
//! ([`REVOKED_POLICY`]): IAM evaluates a role's policies on every request,
//! so sessions already handed out lose their access at once, which
//! deleting the role's allow (or its trust) would not do.

use std::collections::BTreeMap;

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_iam::Client;
use aws_sdk_iam::types::{Role, Tag};
use serde_json::{Value, json};

use super::aws::{AwsError, build_error, classify, error_code};
use super::principals::{Caller, ROLE_PATH};
use super::s3::{partition_of, same_policy};
use super::{Action, Backend, BackendError, Operation, Ownership, TenantIdentity, tags};
use crate::api::RoleTrust;

const BACKEND: Backend = Backend::Iam;

/// The inline policy that allows the tenant its resources.
pub const ACCESS_POLICY: &str = "tenantry-access";
/// The inline policy that denies the role everything while the tenant's
/// access is revoked (suspension, the Delete grace period, Retain).
pub const REVOKED_POLICY: &str = "tenantry-revoked";

/// What the tenant's role must look like.
#[derive(Clone, Debug, PartialEq)]
pub struct RoleSpec {
    pub name: String,
    pub trust: Value,
    pub access: Value,
    pub permissions_boundary: Option<String>,
    /// Whether the tenant has its access (else [`REVOKED_POLICY`] is set).
    pub granted: bool,
}

/// A role's permissions as deployed (see [`TenantIdentity::role_policies`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RolePolicies {
    /// The documents of its inline policies, by name.
    pub inline: BTreeMap<String, Value>,
    /// The ARNs of the managed policies attached to it.
    pub attached: Vec<String>,
}

pub struct IamBackend {
    client: Client,
}

impl IamBackend {
    pub fn new(config: &SdkConfig) -> Self {
        Self {
            client: Client::new(config),
        }
    }

    async fn get_role(&self, name: &str) -> Result<Option<Role>, BackendError> {
        match self.client.get_role().role_name(name).send().await {
            Ok(out) => Ok(out.role),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(classify(BACKEND, &format!("GetRole {name}"), e)),
        }
    }

    /// The role, made now when absent, with its trust, boundary and tags,
    /// which CreateRole sets at once: a crash can never leave an untagged
    /// role behind. (No description: moto-iam recomputes the signature of
    /// a form body with a space in it differently from the SDK, and refuses
    /// the request; the tags say whose the role is.)
    async fn find_or_create(&self, op: &Operation, spec: &RoleSpec) -> Result<Role, BackendError> {
        if let Some(role) = self.get_role(&spec.name).await? {
            return Ok(role);
        }
        let tags = op
            .tenant
            .ownership_tags()
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| build_error(BACKEND, e))?;
        let created = self
            .client
            .create_role()
            .path(ROLE_PATH)
            .role_name(&spec.name)
            .assume_role_policy_document(spec.trust.to_string())
            .set_permissions_boundary(spec.permissions_boundary.clone())
            .set_tags(Some(tags))
            .send()
            .await;
        match created {
            Ok(out) => {
                op.note(
                    Action::IamRoleCreate,
                    &spec.name,
                    json!({"path": ROLE_PATH, "boundary": spec.permissions_boundary}),
                )
                .await?;
                tracing::info!(tenant = %op.tenant.name, role = %spec.name, "created IAM role");
                out.role.ok_or_else(|| BackendError::Rejected {
                    backend: BACKEND,
                    message: format!("CreateRole {} returned no role", spec.name),
                })
            }
            // Made meanwhile (another replica, a lost answer): read it and
            // judge its tags like any other.
            Err(e) if error_code(&e) == Some("EntityAlreadyExists") => self
                .get_role(&spec.name)
                .await?
                .ok_or_else(|| BackendError::Unavailable {
                    backend: BACKEND,
                    message: format!("role {} exists and cannot be read yet", spec.name),
                }),
            Err(e) => Err(classify(BACKEND, &format!("CreateRole {}", spec.name), e)),
        }
    }

    /// Whether the role is the tenant's (`Ok(false)`) or a released one it
    /// takes over (`Ok(true)`); a conflict otherwise.
    async fn claim(&self, op: &Operation, role: &Role) -> Result<bool, BackendError> {
        let what = format!("IAM role {}", role.role_name());
        if role.path() != ROLE_PATH {
            return Err(conflict(
                &what,
                format!("its path is {:?}, not {ROLE_PATH:?}", role.path()),
            ));
        }
        match op.tenant.ownership_of(role_tags(role)) {
            Ownership::Ours => Ok(false),
            Ownership::Released => {
                op.require_recorded_release(BACKEND, &what, role.role_name())
                    .await?;
                op.note_adopted_release();
                Ok(true)
            }
            // CreateRole tags at creation: an untagged role was never ours.
            Ownership::Untagged => Err(conflict(
                &what,
                "it exists without tenantry's ownership tags".to_string(),
            )),
            Ownership::Foreign(detail) => Err(conflict(&what, detail)),
        }
    }

    async fn inline_policies(&self, name: &str) -> Result<Vec<String>, BackendError> {
        self.client
            .list_role_policies()
            .role_name(name)
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| classify(BACKEND, &format!("ListRolePolicies {name}"), e))
    }

    async fn attached_policies(&self, name: &str) -> Result<Vec<String>, BackendError> {
        let attached = self
            .client
            .list_attached_role_policies()
            .role_name(name)
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| classify(BACKEND, &format!("ListAttachedRolePolicies {name}"), e))?;
        Ok(attached
            .iter()
            .filter_map(|p| p.policy_arn().map(str::to_string))
            .collect())
    }

    async fn inline_policy(
        &self,
        role: &str,
        policy: &str,
    ) -> Result<Option<String>, BackendError> {
        match self
            .client
            .get_role_policy()
            .role_name(role)
            .policy_name(policy)
            .send()
            .await
        {
            Ok(out) => Ok(Some(decode_policy(out.policy_document()))),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(classify(
                BACKEND,
                &format!("GetRolePolicy {role} {policy}"),
                e,
            )),
        }
    }

    async fn put_inline(
        &self,
        op: &Operation,
        role: &str,
        policy: &str,
        document: &Value,
        action: Action,
    ) -> Result<(), BackendError> {
        self.client
            .put_role_policy()
            .role_name(role)
            .policy_name(policy)
            .policy_document(document.to_string())
            .send()
            .await
            .map_err(|e| classify(BACKEND, &format!("PutRolePolicy {role} {policy}"), e))?;
        op.note(action, role, json!({"policy": policy})).await
    }

    async fn delete_inline(
        &self,
        op: &Operation,
        role: &str,
        policy: &str,
        action: Action,
    ) -> Result<(), BackendError> {
        match self
            .client
            .delete_role_policy()
            .role_name(role)
            .policy_name(policy)
            .send()
            .await
        {
            Ok(_) => op.note(action, role, json!({"policy": policy})).await,
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(classify(
                BACKEND,
                &format!("DeleteRolePolicy {role} {policy}"),
                e,
            )),
        }
    }

    /// Takes off every policy tenantry did not put there: an inline policy
    /// or an attached managed policy on a tenant's role is a grant beyond
    /// its own resources, made by someone else.
    async fn strip_foreign_policies(
        &self,
        op: &Operation,
        name: &str,
        keep: &[&str],
    ) -> Result<Vec<String>, BackendError> {
        let inline = self.inline_policies(name).await?;
        for policy in inline.iter().filter(|p| !keep.contains(&p.as_str())) {
            self.delete_inline(op, name, policy, Action::IamRolePolicyDelete)
                .await?;
        }
        for arn in self.attached_policies(name).await? {
            self.client
                .detach_role_policy()
                .role_name(name)
                .policy_arn(&arn)
                .send()
                .await
                .map_err(|e| classify(BACKEND, &format!("DetachRolePolicy {name} {arn}"), e))?;
            op.note(Action::IamRolePolicyDetach, name, json!({"policyArn": arn}))
                .await?;
        }
        Ok(inline)
    }

    async fn converge_trust(
        &self,
        op: &Operation,
        role: &Role,
        trust: &Value,
    ) -> Result<(), BackendError> {
        let current = role.assume_role_policy_document().map(decode_policy);
        if current.is_some_and(|current| same_policy(&current, trust)) {
            return Ok(());
        }
        let name = role.role_name();
        self.client
            .update_assume_role_policy()
            .role_name(name)
            .policy_document(trust.to_string())
            .send()
            .await
            .map_err(|e| classify(BACKEND, &format!("UpdateAssumeRolePolicy {name}"), e))?;
        op.note(Action::IamRoleTrust, name, json!({})).await
    }

    async fn converge_boundary(
        &self,
        op: &Operation,
        role: &Role,
        wanted: Option<&str>,
    ) -> Result<(), BackendError> {
        let current = role
            .permissions_boundary()
            .and_then(|b| b.permissions_boundary_arn());
        if current == wanted {
            return Ok(());
        }
        let name = role.role_name();
        let context = format!("permissions boundary of {name}");
        match wanted {
            Some(arn) => {
                self.client
                    .put_role_permissions_boundary()
                    .role_name(name)
                    .permissions_boundary(arn)
                    .send()
                    .await
                    .map_err(|e| classify(BACKEND, &context, e))?;
            }
            None => {
                self.client
                    .delete_role_permissions_boundary()
                    .role_name(name)
                    .send()
                    .await
                    .map_err(|e| classify(BACKEND, &context, e))?;
            }
        }
        op.note(Action::IamRoleBoundary, name, json!({"boundary": wanted}))
            .await
    }

    /// The ownership tags set and the released mark gone.
    async fn converge_tags(&self, op: &Operation, role: &Role) -> Result<(), BackendError> {
        let name = role.role_name();
        let current: BTreeMap<&str, &str> = role_tags(role).collect();
        let wanted = op.tenant.ownership_tags();
        let missing: Vec<Tag> = wanted
            .iter()
            .filter(|(k, v)| current.get(k.as_str()) != Some(&v.as_str()))
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect::<Result<_, _>>()
            .map_err(|e| build_error(BACKEND, e))?;
        if !missing.is_empty() {
            self.client
                .tag_role()
                .role_name(name)
                .set_tags(Some(missing))
                .send()
                .await
                .map_err(|e| classify(BACKEND, &format!("TagRole {name}"), e))?;
            op.note(Action::IamRoleTag, name, json!({})).await?;
        }
        if current.contains_key(tags::RELEASED) {
            self.client
                .untag_role()
                .role_name(name)
                .tag_keys(tags::RELEASED)
                .send()
                .await
                .map_err(|e| classify(BACKEND, &format!("UntagRole {name}"), e))?;
            op.note(
                Action::IamRoleUntag,
                name,
                json!({"tags": [tags::RELEASED]}),
            )
            .await?;
        }
        Ok(())
    }

    /// The role if it is this tenant's, else `None` (absent, or someone
    /// else's: never touched, only logged).
    async fn owned(&self, op: &Operation, name: &str) -> Result<Option<Role>, BackendError> {
        let Some(role) = self.get_role(name).await? else {
            return Ok(None);
        };
        let owner = op.tenant.ownership_of(role_tags(&role));
        if role.path() != ROLE_PATH || owner != Ownership::Ours {
            tracing::warn!(tenant = %op.tenant.name, role = name, ?owner, "leaving an IAM role that is not this tenant's");
            return Ok(None);
        }
        Ok(Some(role))
    }
}

#[async_trait]
impl TenantIdentity for IamBackend {
    async fn ensure_role(&self, op: &Operation, spec: &RoleSpec) -> Result<String, BackendError> {
        let role = self.find_or_create(op, spec).await?;
        let adopting = self.claim(op, &role).await?;
        let name = role.role_name();
        // Revoked first, so a suspended tenant's role never allows anything,
        // not even between two of these calls.
        if !spec.granted {
            self.put_inline(
                op,
                name,
                REVOKED_POLICY,
                &revoked_policy(),
                Action::IamRoleRevoke,
            )
            .await?;
        }
        let inline = self
            .strip_foreign_policies(op, name, &[ACCESS_POLICY, REVOKED_POLICY])
            .await?;
        if adopting {
            op.note(Action::IamRoleAdopt, name, json!({})).await?;
        }
        self.converge_trust(op, &role, &spec.trust).await?;
        self.converge_boundary(op, &role, spec.permissions_boundary.as_deref())
            .await?;
        let access = self.inline_policy(name, ACCESS_POLICY).await?;
        if !access.is_some_and(|current| same_policy(&current, &spec.access)) {
            self.put_inline(op, name, ACCESS_POLICY, &spec.access, Action::IamRolePolicy)
                .await?;
        }
        if spec.granted && inline.iter().any(|p| p == REVOKED_POLICY) {
            self.delete_inline(op, name, REVOKED_POLICY, Action::IamRoleRestore)
                .await?;
        }
        self.converge_tags(op, &role).await?;
        Ok(role.arn().to_string())
    }

    async fn role_policies(&self, name: &str) -> Result<RolePolicies, BackendError> {
        let mut inline = BTreeMap::new();
        for policy in self.inline_policies(name).await? {
            // Gone between the listing and the read: nothing left to allow.
            let Some(document) = self.inline_policy(name, &policy).await? else {
                continue;
            };
            let document = serde_json::from_str(&document).map_err(|e| BackendError::Rejected {
                backend: BACKEND,
                message: format!("GetRolePolicy {name} {policy}: the document is not JSON: {e}"),
            })?;
            inline.insert(policy, document);
        }
        Ok(RolePolicies {
            inline,
            attached: self.attached_policies(name).await?,
        })
    }

    async fn set_role_access(
        &self,
        op: &Operation,
        name: &str,
        granted: bool,
    ) -> Result<(), BackendError> {
        if self.owned(op, name).await?.is_none() {
            return Ok(());
        }
        let revoked = self.inline_policy(name, REVOKED_POLICY).await?.is_some();
        match (granted, revoked) {
            (true, true) => {
                self.delete_inline(op, name, REVOKED_POLICY, Action::IamRoleRestore)
                    .await
            }
            (false, false) => {
                self.put_inline(
                    op,
                    name,
                    REVOKED_POLICY,
                    &revoked_policy(),
                    Action::IamRoleRevoke,
                )
                .await
            }
            _ => Ok(()),
        }
    }

    async fn remove_role(&self, op: &Operation, name: &str) -> Result<(), BackendError> {
        if self.owned(op, name).await?.is_none() {
            return Ok(());
        }
        // IAM refuses to delete a role that still has policies.
        self.strip_foreign_policies(op, name, &[]).await?;
        match self.client.delete_role().role_name(name).send().await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) => return Err(classify(BACKEND, &format!("DeleteRole {name}"), e)),
        }
        tracing::info!(tenant = %op.tenant.name, role = name, "deleted IAM role");
        op.note(Action::IamRoleDelete, name, json!({})).await
    }

    async fn release_role(&self, op: &Operation, name: &str) -> Result<(), BackendError> {
        let Some(role) = self.owned(op, name).await? else {
            return Ok(());
        };
        // Released with no access: a returning tenant gets it back by
        // adoption, nobody before.
        self.set_role_access(op, name, false).await?;
        if role_tags(&role).any(|(k, v)| k == tags::RELEASED && v == "true") {
            return Ok(());
        }
        let released = Tag::builder()
            .key(tags::RELEASED)
            .value("true")
            .build()
            .map_err(|e| build_error(BACKEND, e))?;
        self.client
            .tag_role()
            .role_name(name)
            .tags(released)
            .send()
            .await
            .map_err(|e| classify(BACKEND, &format!("TagRole {name}"), e))?;
        op.note(Action::IamRoleRelease, name, json!({})).await
    }
}

fn role_tags(role: &Role) -> impl Iterator<Item = (&str, &str)> {
    role.tags().iter().map(|t| (t.key(), t.value()))
}

fn is_not_found<E: aws_smithy_types::error::metadata::ProvideErrorMetadata>(
    e: &AwsError<E>,
) -> bool {
    error_code(e) == Some("NoSuchEntity")
}

fn conflict(what: &str, detail: String) -> BackendError {
    BackendError::Conflict {
        backend: BACKEND,
        resource: what.to_string(),
        detail,
    }
}

/// IAM gives policy documents back URL-encoded (RFC 3986) and possibly
/// reshaped; [`same_policy`] compares them by meaning.
fn decode_policy(document: &str) -> String {
    percent_encoding::percent_decode_str(document)
        .decode_utf8_lossy()
        .into_owned()
}

/// Denies everything: set while the tenant's access is revoked.
pub fn revoked_policy() -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "TenantAccessRevoked",
            "Effect": "Deny",
            "Action": "*",
            "Resource": "*",
        }],
    })
}

/// The tenant's resources, for its role's policy.
pub struct TenantGrants<'a> {
    pub bucket: &'a str,
    pub key_arn: &'a str,
    /// The Tenant's uid, which only tenantry's own resources are tagged with.
    pub tenant_uid: &'a str,
}

/// The role's allow: its bucket and objects by ARN; its key and secret by
/// the tenant's uid tag as well as by ARN. KMS and Secrets Manager support
/// `aws:ResourceTag` on these actions, and the tag form is also what moto
/// can evaluate (it matches KMS and Secrets Manager statements against `*`
/// only): a neighbour's key or secret carries another uid.
pub fn access_policy(grants: &TenantGrants) -> Value {
    let partition = partition_of(grants.key_arn);
    let bucket = format!("arn:{partition}:s3:::{}", grants.bucket);
    let uid_tag = json!({
        "StringEquals": {format!("aws:ResourceTag/{}", tags::TENANT_UID): grants.tenant_uid}
    });
    json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "Bucket",
                "Effect": "Allow",
                "Action": ["s3:ListBucket", "s3:ListBucketVersions", "s3:GetBucketLocation"],
                "Resource": bucket,
            },
            {
                "Sid": "Objects",
                "Effect": "Allow",
                "Action": [
                    "s3:GetObject", "s3:GetObjectVersion", "s3:PutObject",
                    "s3:DeleteObject", "s3:DeleteObjectVersion",
                    "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts",
                ],
                "Resource": format!("{bucket}/*"),
            },
            {
                "Sid": "Key",
                "Effect": "Allow",
                "Action": [
                    "kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*",
                    "kms:GenerateDataKey*", "kms:DescribeKey",
                ],
                "Resource": "*",
                "Condition": uid_tag,
            },
            {
                "Sid": "Secret",
                "Effect": "Allow",
                "Action": ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"],
                "Resource": "*",
                "Condition": uid_tag,
            },
        ],
    })
}

/// Where the tenant's workloads run: what IRSA and Pod Identity trust.
pub struct Workload<'a> {
    pub namespace: &'a str,
    pub service_account: &'a str,
}

/// Who may act as the role: the class's choice, and the operator (its
/// probes measure access as the tenant).
pub fn trust_policy(
    trust: &RoleTrust,
    tenant: &str,
    workload: &Workload,
    operator: &Caller,
) -> Value {
    let subject = format!(
        "system:serviceaccount:{}:{}",
        workload.namespace, workload.service_account
    );
    let mut statements = Vec::new();
    if let Some(irsa) = &trust.irsa {
        let issuer = irsa.issuer().unwrap_or_default();
        statements.push(json!({
            "Sid": "Irsa",
            "Effect": "Allow",
            "Principal": {"Federated": irsa.oidc_provider_arn},
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {"StringEquals": {
                format!("{issuer}:sub"): subject,
                format!("{issuer}:aud"): irsa.audience.as_deref().unwrap_or("sts.amazonaws.com"),
            }},
        }));
    }
    if let Some(pod_identity) = &trust.pod_identity {
        let mut condition = serde_json::Map::from_iter([
            (
                "aws:RequestTag/kubernetes-namespace".to_string(),
                json!(workload.namespace),
            ),
            (
                "aws:RequestTag/kubernetes-service-account".to_string(),
                json!(workload.service_account),
            ),
            ("aws:SourceAccount".to_string(), json!(operator.account)),
        ]);
        if let Some(cluster) = &pod_identity.cluster_arn {
            condition.insert("aws:RequestTag/eks-cluster-arn".to_string(), json!(cluster));
        }
        statements.push(json!({
            "Sid": "PodIdentity",
            "Effect": "Allow",
            "Principal": {"Service": "pods.eks.amazonaws.com"},
            "Action": ["sts:AssumeRole", "sts:TagSession"],
            "Condition": {"StringEquals": condition},
        }));
    }
    // The class's principal and the operator share one statement: moto
    // reads a statement that names another principal as a refusal.
    let mut principals: Vec<String> = trust
        .principal
        .iter()
        .map(|p| super::principal_for(p, tenant))
        .collect();
    principals.push(operator.trust_principal());
    statements.push(json!({
        "Sid": "AssumeRole",
        "Effect": "Allow",
        "Principal": {"AWS": principals},
        "Action": "sts:AssumeRole",
    }));
    json!({"Version": "2012-10-17", "Statement": statements})
}

#[cfg(test)]
mod tests;
