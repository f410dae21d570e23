//! A tenant's resources: each module implements the engine's
//! [`Resource`] contract for one kind (a KMS key, a Secrets Manager secret,
//! the PostgreSQL role with its schema or database, an S3 bucket, the
//! Kubernetes Secret) over the backend that owns that real system; the
//! outputs of one (key ARN, credentials) feed the next through
//! [`TenantContext`].

mod bucket;
mod database;
mod iam_role;
mod kms_key;
mod kubernetes_secret;
mod secret;

use std::collections::BTreeMap;
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};

use crate::api::{IsolationMode, Reason, TenantSpec};
use crate::backends::{
    AuditSink, DatabaseCredentials, DatabaseLocation, KeyInfo, Operation, TenantRef,
};
use crate::config::Backends;
use crate::naming::TenantNames;
use crate::provision::{Access, Ensured, Removal, Resource, StepError};

/// Everything the steps of one tenant read and produce.
pub struct TenantContext {
    pub tenant: TenantRef,
    pub names: TenantNames,
    pub spec: TenantSpec,
    pub backends: Backends,
    /// Where every change made for this tenant is recorded.
    pub audit: Arc<dyn AuditSink>,
    /// `<namespace>/<name>` of the Kubernetes Secret the status recorded
    /// before, so a changed `spec.credentials` does not leave the old one behind.
    pub previous_kube_secret: Option<String>,
    pub key: Option<KeyInfo>,
    pub secret_arn: Option<String>,
    pub credentials: Option<DatabaseCredentials>,
    pub location: Option<DatabaseLocation>,
    pub kube_secret_written: bool,
    /// The Secret's resourceVersion as this run wrote or found it.
    pub kube_secret_version: Option<String>,
    /// This run wrote the Secret (created it, or changed what it held).
    pub kube_secret_changed: bool,
    /// The Secret's resourceVersion before this run wrote it (None: it did
    /// not exist), when this run wrote it.
    pub kube_secret_found_version: Option<Option<String>>,
    /// The role's login as this run last set it, so access is not set twice.
    pub login: Option<Access>,
    /// The IAM role's ARN, when the class gives the tenant one.
    pub role_arn: Option<String>,
    /// The IAM role's access as this run last set it.
    pub role_access: Option<Access>,
    /// The ServiceAccount (in the credentials namespace) of its workloads.
    pub service_account: Option<String>,
}

impl TenantContext {
    pub fn new(
        tenant: TenantRef,
        names: TenantNames,
        spec: TenantSpec,
        backends: Backends,
        audit: Arc<dyn AuditSink>,
    ) -> Self {
        Self {
            tenant,
            names,
            spec,
            backends,
            audit,
            previous_kube_secret: None,
            key: None,
            secret_arn: None,
            credentials: None,
            location: None,
            kube_secret_written: false,
            kube_secret_version: None,
            kube_secret_changed: false,
            kube_secret_found_version: None,
            login: None,
            role_arn: None,
            role_access: None,
            service_account: None,
        }
    }

    pub fn kube_secret_name(&self) -> String {
        self.spec
            .credentials
            .secret_name
            .clone()
            .unwrap_or_else(|| format!("{}-credentials", self.tenant.name))
    }

    pub fn kube_secret_ref(&self) -> String {
        format!(
            "{}/{}",
            self.spec.credentials.namespace,
            self.kube_secret_name()
        )
    }

    /// The isolation mode (the spec the controller hands over has the
    /// class's default filled in).
    pub fn mode(&self) -> IsolationMode {
        self.spec.database.isolation.unwrap_or_default()
    }

    /// The database the tenant's data lives in for the spec's isolation mode.
    pub fn database_name(&self) -> String {
        match self.mode() {
            IsolationMode::Schema => self.backends.database.endpoint().2,
            IsolationMode::Database => self.names.database.clone(),
        }
    }

    /// The same tenant with nothing of this run's outputs: for a path that
    /// acts on its own (failing closed) beside the run that measured.
    pub fn fresh(&self) -> Self {
        Self::new(
            self.tenant.clone(),
            self.names.clone(),
            self.spec.clone(),
            self.backends.clone(),
            self.audit.clone(),
        )
    }

    /// A backend call for this tenant, recorded in its audit trail.
    pub fn operation(&self) -> Operation {
        Operation::new(self.tenant.clone(), self.audit.clone())
    }

    /// A removal for this tenant, of the kind the engine says.
    fn removal(&self, removal: Removal) -> Operation {
        self.operation().removing(removal)
    }

    pub(crate) fn key_arn(&self) -> Result<String, StepError> {
        self.key.as_ref().map(|k| k.arn.clone()).ok_or_else(|| {
            StepError::permanent(Reason::Internal, "engine", "the KMS key step has not run")
        })
    }
}

/// The findings of a probe made as the tenant's IAM role, when its class
/// gives it one: none without, Unknown when the role is not known yet.
async fn as_tenant<'a, F, Fut>(ctx: &'a TenantContext, probe: F) -> Vec<crate::api::Finding>
where
    F: FnOnce(crate::isolation::tenant_access::TenantRole<'a>) -> Fut,
    Fut: std::future::Future<Output = Vec<crate::api::Finding>>,
{
    if ctx.backends.role.is_none() {
        return Vec::new();
    }
    let Some(arn) = ctx.role_arn.as_deref() else {
        return vec![crate::isolation::fail(
            "role.arn",
            crate::api::IsolationState::Unknown,
            "the tenant's IAM role is not known yet, so nothing could be tried as the tenant",
        )];
    };
    probe(crate::isolation::tenant_access::TenantRole {
        arn,
        name: &ctx.names.iam_role,
    })
    .await
}

/// Every tenant's resources, in provisioning order: what the engine runs
/// for provisioning, suspension, rollback and both deletion policies, and
/// what measurement probes. Removal runs in reverse: the Kubernetes Secret
/// (access) goes first, the key (which can only be scheduled for deletion)
/// last. The IAM role comes after the key (its policy is tagged to it) and
/// before the bucket, whose policy lets the role in. A new kind of resource is one module here and one line below.
pub fn tenant_resources() -> Vec<Box<dyn Resource<TenantContext>>> {
    vec![
        Box::new(kms_key::KmsKey),
        Box::new(secret::CredentialsSecret),
        Box::new(database::Database),
        Box::new(iam_role::IamRole),
        Box::new(bucket::Bucket),
        Box::new(kubernetes_secret::KubernetesSecret),
    ]
}

/// The keys applications read, as documented in the README.
pub(crate) fn kube_secret_data(
    ctx: &TenantContext,
) -> Result<BTreeMap<String, SecretString>, StepError> {
    let missing = |what: &str| {
        StepError::permanent(
            Reason::Internal,
            "engine",
            format!("{what} is not known yet"),
        )
    };
    let creds = ctx
        .credentials
        .as_ref()
        .ok_or_else(|| missing("the credentials"))?;
    let location = ctx
        .location
        .as_ref()
        .ok_or_else(|| missing("the database"))?;
    let plain = |v: &str| SecretString::from(v.to_string());
    // The server's TLS as the operator meets it: the same sslmode, and the
    // CA bundle (when there is one) for the app to mount as sslrootcert.
    let tls = ctx.backends.postgres.tls();
    let mut data = BTreeMap::from([
        ("username".to_string(), plain(&creds.username)),
        (
            "password".to_string(),
            plain(creds.password.expose_secret()),
        ),
        ("host".to_string(), plain(&creds.host)),
        ("port".to_string(), plain(&creds.port.to_string())),
        ("database".to_string(), plain(&location.database)),
        ("schema".to_string(), plain(&location.schema)),
        ("url".to_string(), creds.url(tls.mode_name())),
        ("bucket".to_string(), plain(&ctx.names.bucket)),
        ("region".to_string(), plain(&ctx.backends.region)),
        ("kmsKeyArn".to_string(), plain(&ctx.key_arn()?)),
        (
            "secretArn".to_string(),
            plain(
                ctx.secret_arn
                    .as_deref()
                    .ok_or_else(|| missing("the secret ARN"))?,
            ),
        ),
    ]);
    if let Some(ca) = &tls.ca {
        data.insert("ca.crt".to_string(), plain(ca.pem()));
    }
    if let Some(arn) = &ctx.role_arn {
        data.insert("roleArn".to_string(), plain(arn));
    }
    if let Some(account) = &ctx.service_account {
        data.insert("serviceAccount".to_string(), plain(account));
    }
    Ok(data)
}

/// What an ensure's operation found: a released resource it took over, or
/// the tenant's own.
fn ensured(op: &Operation) -> Ensured {
    if op.adopted_release() {
        Ensured::AdoptedRelease
    } else {
        Ensured::Owned
    }
}
