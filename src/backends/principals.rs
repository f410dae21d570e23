//! Who may touch a tenant's data in AWS. The bucket policy and the key
//! policy refuse the data actions to every principal but these (an
//! `aws:PrincipalArn` condition): the tenant's own role, the class's
//! principal, the operator, and the account's administrators. So isolation
//! between tenants does not rest on the account's IAM alone: a neighbour's
//! role that some policy lets do `s3:*` still cannot read this tenant's
//! objects or decrypt with its key.

use tokio::sync::OnceCell;

use super::{Backend, BackendError};

/// IAM path of every tenant role: the operator's IAM policy is scoped to it.
pub const ROLE_PATH: &str = "/tenantry/";

/// Whom the operator's AWS credentials belong to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub account: String,
    pub partition: String,
    /// What `sts:GetCallerIdentity` says: a user's ARN, or an assumed role's
    /// session ARN (`arn:aws:sts::ACCOUNT:assumed-role/NAME/SESSION`).
    pub arn: String,
    /// The operator's principal as configured (`--aws-operator-principal`),
    /// which wins over what the session ARN lets one guess.
    pub configured: Option<String>,
}

impl Caller {
    /// Reads the account and partition from the caller's ARN.
    pub fn from_arn(arn: &str) -> Option<Self> {
        let mut parts = arn.splitn(6, ':');
        let (Some("arn"), Some(partition), Some(_service), Some(_region), Some(account)) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        (!partition.is_empty() && !account.is_empty()).then(|| Self {
            account: account.to_string(),
            partition: partition.to_string(),
            arn: arn.to_string(),
            configured: None,
        })
    }

    /// `aws:PrincipalArn` patterns that match the operator itself. A
    /// session of a role is matched by its role, whose path the session ARN
    /// does not show: both the root path and any other one are named.
    pub fn principal_patterns(&self) -> Vec<String> {
        if let Some(configured) = &self.configured {
            return vec![configured.clone()];
        }
        let Self {
            account, partition, ..
        } = self;
        match self.arn.split_once(":assumed-role/") {
            Some((_, rest)) => {
                let role = rest.split('/').next().unwrap_or(rest);
                vec![
                    format!("arn:{partition}:iam::{account}:role/{role}"),
                    format!("arn:{partition}:iam::{account}:role/*/{role}"),
                ]
            }
            None => vec![self.arn.clone()],
        }
    }

    /// The principal a trust policy names for the operator (so probes can
    /// act as the tenant): the user, or the role of a session (path `/`).
    pub fn trust_principal(&self) -> String {
        self.principal_patterns().swap_remove(0)
    }

    /// The ARN of an IAM role of this account under [`ROLE_PATH`].
    pub fn role_arn(&self, role_name: &str) -> String {
        format!(
            "arn:{}:iam::{}:role{ROLE_PATH}{role_name}",
            self.partition, self.account
        )
    }

    pub fn root(&self) -> String {
        format!("arn:{}:iam::{}:root", self.partition, self.account)
    }
}

/// The principals one class lets use its tenants' data, and the caller
/// identity they are computed against (read once per process).
#[derive(Debug)]
pub struct AccessPrincipals {
    sts: aws_sdk_sts::Client,
    caller: OnceCell<Caller>,
    /// The class's `aws.principal`, `{tenant}` standing for the tenant's name.
    pub principal: Option<String>,
    /// The bucket prefix, when the class gives each tenant an IAM role
    /// (named from it).
    pub role_prefix: Option<String>,
    /// The class's `aws.administrators`.
    pub administrators: Vec<String>,
    /// `--aws-operator-principal`.
    pub operator: Option<String>,
}

impl AccessPrincipals {
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        Self {
            sts: aws_sdk_sts::Client::new(config),
            caller: OnceCell::new(),
            principal: None,
            role_prefix: None,
            administrators: Vec::new(),
            operator: None,
        }
    }

    pub fn with_operator(mut self, operator: Option<String>) -> Self {
        self.operator = operator;
        self
    }

    pub fn with_principal(mut self, principal: Option<String>) -> Self {
        self.principal = principal;
        self
    }

    pub fn with_tenant_roles(mut self, role_prefix: Option<String>) -> Self {
        self.role_prefix = role_prefix;
        self
    }

    pub fn with_administrators(mut self, administrators: Vec<String>) -> Self {
        self.administrators = administrators;
        self
    }

    /// The operator's identity. A failed look-up is not kept, so a
    /// transient STS error is tried again on the next call.
    pub async fn caller(&self, backend: Backend) -> Result<&Caller, BackendError> {
        self.caller
            .get_or_try_init(|| async {
                let out = self
                    .sts
                    .get_caller_identity()
                    .send()
                    .await
                    .map_err(|e| super::aws::classify(backend, "sts:GetCallerIdentity", e))?;
                out.arn()
                    .and_then(Caller::from_arn)
                    .map(|caller| Caller {
                        configured: self.operator.clone(),
                        ..caller
                    })
                    .ok_or_else(|| BackendError::Rejected {
                        backend,
                        message: "sts:GetCallerIdentity named no usable ARN".to_string(),
                    })
            })
            .await
    }

    /// The class principal for one tenant.
    pub fn principal_for(&self, tenant: &str) -> Option<String> {
        self.principal
            .as_deref()
            .map(|p| super::principal_for(p, tenant))
    }

    /// `aws:PrincipalArn` patterns that may use the data of `tenant`.
    pub async fn allowed(
        &self,
        backend: Backend,
        tenant: &str,
    ) -> Result<Vec<String>, BackendError> {
        let caller = self.caller(backend).await?;
        let role = self
            .role_prefix
            .as_deref()
            .map(|prefix| crate::naming::iam_role_name(prefix, tenant));
        Ok(allowed_patterns(
            caller,
            role.as_deref(),
            self.principal_for(tenant).as_deref(),
            &self.administrators,
        ))
    }
}

/// Every pattern, sorted and without repeats so a policy compares equal
/// run after run.
pub fn allowed_patterns(
    caller: &Caller,
    role_name: Option<&str>,
    principal: Option<&str>,
    administrators: &[String],
) -> Vec<String> {
    let mut allowed = caller.principal_patterns();
    allowed.push(caller.root());
    allowed.extend(role_name.map(|name| caller.role_arn(name)));
    allowed.extend(principal.map(str::to_string));
    allowed.extend(administrators.iter().cloned());
    allowed.sort();
    allowed.dedup();
    allowed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(arn: &str) -> Caller {
        Caller::from_arn(arn).unwrap()
    }

    #[test]
    fn a_role_session_is_matched_by_its_role_on_any_path() {
        let c =
            caller("arn:aws:sts::111122223333:assumed-role/tenantry-operator/botocore-session-1");
        assert_eq!(c.account, "111122223333");
        assert_eq!(
            c.principal_patterns(),
            [
                "arn:aws:iam::111122223333:role/tenantry-operator",
                "arn:aws:iam::111122223333:role/*/tenantry-operator"
            ]
        );
        assert_eq!(
            c.trust_principal(),
            "arn:aws:iam::111122223333:role/tenantry-operator"
        );
        let user = caller("arn:aws-cn:iam::111122223333:user/ops/tenantry");
        assert_eq!(user.partition, "aws-cn");
        assert_eq!(
            user.principal_patterns(),
            ["arn:aws-cn:iam::111122223333:user/ops/tenantry"]
        );
        assert!(Caller::from_arn("not-an-arn").is_none());
        let configured = Caller {
            configured: Some("arn:aws:iam::111122223333:role/platform/tenantry".into()),
            ..c
        };
        assert_eq!(
            configured.trust_principal(),
            "arn:aws:iam::111122223333:role/platform/tenantry"
        );
    }

    #[test]
    fn the_tenant_role_class_principal_operator_root_and_admins_are_allowed() {
        let c = caller("arn:aws:iam::111122223333:user/op");
        let allowed = allowed_patterns(
            &c,
            Some("tenantry-acme"),
            Some("arn:aws:iam::111122223333:role/app-acme"),
            &["arn:aws:iam::111122223333:role/admin-*".to_string()],
        );
        assert_eq!(
            allowed,
            [
                "arn:aws:iam::111122223333:role/admin-*",
                "arn:aws:iam::111122223333:role/app-acme",
                "arn:aws:iam::111122223333:role/tenantry/tenantry-acme",
                "arn:aws:iam::111122223333:root",
                "arn:aws:iam::111122223333:user/op",
            ]
        );
        let without_role = allowed_patterns(&c, None, None, &[]);
        assert_eq!(
            without_role,
            [
                "arn:aws:iam::111122223333:root",
                "arn:aws:iam::111122223333:user/op"
            ]
        );
    }
}
