//! The provisioning plan of a tenant: which steps, in which order, against
//! which backend. Each step is a thin adapter from the engine's [`Step`] to one
//! backend trait; the outputs of a step (key ARN, credentials) feed the next.

use std::collections::BTreeMap;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};

use crate::api::{IsolationMode, Reason, TenantResources, TenantSpec};
use crate::backends::{
    DatabaseCredentials, DatabaseLocation, KeyInfo, TenantRef, generate_password, shared_tables,
};
use crate::config::Backends;
use crate::naming::TenantNames;
use crate::provision::{Attempt, Step, StepError};

/// Everything the steps of one tenant read and produce.
pub struct TenantContext {
    pub tenant: TenantRef,
    pub names: TenantNames,
    pub spec: TenantSpec,
    pub backends: Backends,
    /// `<namespace>/<name>` of the Kubernetes Secret the status recorded
    /// before, so a changed `spec.credentials` does not leave the old one behind.
    pub previous_kube_secret: Option<String>,
    pub key: Option<KeyInfo>,
    pub secret_arn: Option<String>,
    pub credentials: Option<DatabaseCredentials>,
    pub location: Option<DatabaseLocation>,
    pub kube_secret_written: bool,
}

impl TenantContext {
    pub fn new(
        tenant: TenantRef,
        names: TenantNames,
        spec: TenantSpec,
        backends: Backends,
    ) -> Self {
        Self {
            tenant,
            names,
            spec,
            backends,
            previous_kube_secret: None,
            key: None,
            secret_arn: None,
            credentials: None,
            location: None,
            kube_secret_written: false,
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

    /// What exists, as far as this run has seen, for `status.resources`.
    pub fn resources(&self) -> TenantResources {
        TenantResources {
            database: self.location.as_ref().map(|l| l.database.clone()),
            schema: self.location.as_ref().map(|l| l.schema.clone()),
            role: self.location.as_ref().map(|l| l.role.clone()),
            bucket: Some(self.names.bucket.clone()),
            key_arn: self.key.as_ref().map(|k| k.arn.clone()),
            key_alias: Some(self.names.key_alias.clone()),
            secret_arn: self.secret_arn.clone(),
            kubernetes_secret: self.kube_secret_written.then(|| self.kube_secret_ref()),
        }
    }

    fn key_arn(&self) -> Result<String, StepError> {
        self.key.as_ref().map(|k| k.arn.clone()).ok_or_else(|| {
            StepError::permanent(Reason::Internal, "engine", "the KMS key step has not run")
        })
    }
}

/// The steps of every tenant, in provisioning order. Removal runs in reverse:
/// the Kubernetes Secret (access) goes first, the key (which can only be
/// scheduled for deletion) last.
pub fn tenant_steps() -> Vec<Box<dyn Step<TenantContext>>> {
    vec![
        Box::new(KmsKeyStep),
        Box::new(SecretsManagerStep),
        Box::new(PostgresStep),
        Box::new(BucketStep),
        Box::new(KubernetesSecretStep),
    ]
}

pub struct KmsKeyStep;

#[async_trait]
impl Step<TenantContext> for KmsKeyStep {
    fn name(&self) -> &'static str {
        "kms-key"
    }
    async fn ensure(&self, ctx: &mut TenantContext, attempt: Attempt) -> Result<(), StepError> {
        let key = ctx
            .backends
            .keys
            .ensure_key(&ctx.tenant, &ctx.names.key_alias, attempt.interrupted)
            .await?;
        ctx.key = Some(key);
        Ok(())
    }
    async fn remove(&self, ctx: &mut TenantContext) -> Result<(), StepError> {
        Ok(ctx
            .backends
            .keys
            .remove_key(&ctx.tenant, &ctx.names.key_alias)
            .await?)
    }
    async fn release(&self, ctx: &mut TenantContext) -> Result<(), StepError> {
        Ok(ctx
            .backends
            .keys
            .release_key(&ctx.tenant, &ctx.names.key_alias)
            .await?)
    }
}

pub struct SecretsManagerStep;

#[async_trait]
impl Step<TenantContext> for SecretsManagerStep {
    fn name(&self) -> &'static str {
        "secretsmanager-secret"
    }
    async fn ensure(&self, ctx: &mut TenantContext, _attempt: Attempt) -> Result<(), StepError> {
        let key_arn = ctx.key_arn()?;
        let (host, port, _) = ctx.backends.database.endpoint();
        // Used only if the secret does not exist yet: a stored password wins.
        let initial = DatabaseCredentials {
            username: ctx.names.role.clone(),
            password: generate_password(),
            host,
            port,
            database: ctx.database_name(),
            schema: ctx.names.schema.clone(),
            engine: "postgres".to_string(),
        };
        let (arn, credentials) = ctx
            .backends
            .secrets
            .ensure_secret(&ctx.tenant, &ctx.names.secret_name, &key_arn, &initial)
            .await?;
        ctx.secret_arn = Some(arn);
        ctx.credentials = Some(credentials);
        Ok(())
    }
    async fn remove(&self, ctx: &mut TenantContext) -> Result<(), StepError> {
        Ok(ctx
            .backends
            .secrets
            .remove_secret(&ctx.tenant, &ctx.names.secret_name)
            .await?)
    }
    async fn release(&self, ctx: &mut TenantContext) -> Result<(), StepError> {
        Ok(ctx
            .backends
            .secrets
            .release_secret(&ctx.tenant, &ctx.names.secret_name)
            .await?)
    }
}

pub struct PostgresStep;

#[async_trait]
impl Step<TenantContext> for PostgresStep {
    fn name(&self) -> &'static str {
        "postgres"
    }
    async fn ensure(&self, ctx: &mut TenantContext, attempt: Attempt) -> Result<(), StepError> {
        let password = ctx
            .credentials
            .as_ref()
            .map(|c| c.password.clone())
            .ok_or_else(|| {
                StepError::permanent(
                    Reason::Internal,
                    "engine",
                    "the credentials step has not run",
                )
            })?;
        let location = ctx
            .backends
            .database
            .ensure_tenant(
                &ctx.tenant,
                &ctx.names,
                ctx.mode(),
                ctx.spec.database.connection_limit,
                &password,
                !ctx.spec.suspended,
                attempt.interrupted,
            )
            .await?;
        ctx.location = Some(location);
        shared_tables::ensure_tenant_access(
            ctx.backends.postgres.pool(),
            &ctx.backends.shared_tables,
            &ctx.names.role,
            &ctx.tenant.name,
        )
        .await?;
        Ok(())
    }
    async fn remove(&self, ctx: &mut TenantContext) -> Result<(), StepError> {
        shared_tables::remove_tenant_access(
            ctx.backends.postgres.pool(),
            &ctx.backends.shared_tables,
            &ctx.names.role,
        )
        .await?;
        Ok(ctx
            .backends
            .database
            .remove_tenant(&ctx.tenant, &ctx.names, ctx.mode())
            .await?)
    }
    async fn release(&self, ctx: &mut TenantContext) -> Result<(), StepError> {
        // The rows stay; only this attempt's access to the shared tables goes.
        shared_tables::remove_tenant_access(
            ctx.backends.postgres.pool(),
            &ctx.backends.shared_tables,
            &ctx.names.role,
        )
        .await?;
        Ok(ctx
            .backends
            .database
            .release_tenant(&ctx.tenant, &ctx.names, ctx.mode())
            .await?)
    }
    async fn revoke_access(&self, ctx: &mut TenantContext) -> Result<(), StepError> {
        Ok(ctx
            .backends
            .database
            .set_login(&ctx.tenant, &ctx.names, false)
            .await?)
    }
}

pub struct BucketStep;

#[async_trait]
impl Step<TenantContext> for BucketStep {
    fn name(&self) -> &'static str {
        "s3-bucket"
    }
    async fn ensure(&self, ctx: &mut TenantContext, attempt: Attempt) -> Result<(), StepError> {
        let key_arn = ctx.key_arn()?;
        ctx.backends
            .storage
            .ensure_bucket(
                &ctx.tenant,
                &ctx.names.bucket,
                &key_arn,
                ctx.spec.storage.versioning,
                attempt.interrupted,
            )
            .await?;
        Ok(())
    }
    async fn remove(&self, ctx: &mut TenantContext) -> Result<(), StepError> {
        Ok(ctx
            .backends
            .storage
            .remove_bucket(&ctx.tenant, &ctx.names.bucket)
            .await?)
    }
    async fn release(&self, ctx: &mut TenantContext) -> Result<(), StepError> {
        Ok(ctx
            .backends
            .storage
            .release_bucket(&ctx.tenant, &ctx.names.bucket)
            .await?)
    }
}

pub struct KubernetesSecretStep;

#[async_trait]
impl Step<TenantContext> for KubernetesSecretStep {
    fn name(&self) -> &'static str {
        "kubernetes-secret"
    }
    async fn ensure(&self, ctx: &mut TenantContext, _attempt: Attempt) -> Result<(), StepError> {
        let namespace = ctx.spec.credentials.namespace.clone();
        let name = ctx.kube_secret_name();
        if ctx.spec.suspended {
            // Suspension revokes access: the Secret goes, the rest stays.
            ctx.backends
                .kube_secrets
                .delete_secret(&ctx.tenant, &namespace, &name)
                .await?;
            ctx.kube_secret_written = false;
        } else {
            let data = kube_secret_data(ctx)?;
            ctx.backends
                .kube_secrets
                .ensure_secret(&ctx.tenant, &namespace, &name, data)
                .await?;
            ctx.kube_secret_written = true;
        }
        if let Some(previous) = ctx.previous_kube_secret.clone()
            && previous != ctx.kube_secret_ref()
            && let Some((old_ns, old_name)) = previous.split_once('/')
        {
            ctx.backends
                .kube_secrets
                .delete_secret(&ctx.tenant, old_ns, old_name)
                .await?;
        }
        Ok(())
    }
    async fn remove(&self, ctx: &mut TenantContext) -> Result<(), StepError> {
        let name = ctx.kube_secret_name();
        ctx.backends
            .kube_secrets
            .delete_secret(&ctx.tenant, &ctx.spec.credentials.namespace, &name)
            .await?;
        ctx.kube_secret_written = false;
        Ok(())
    }
    async fn release(&self, ctx: &mut TenantContext) -> Result<(), StepError> {
        let name = ctx.kube_secret_name();
        ctx.backends
            .kube_secrets
            .release_secret(&ctx.tenant, &ctx.spec.credentials.namespace, &name)
            .await?;
        ctx.kube_secret_written = false;
        Ok(())
    }
    async fn revoke_access(&self, ctx: &mut TenantContext) -> Result<(), StepError> {
        // The Secret is the application's access: it goes.
        self.remove(ctx).await
    }
}

/// The keys applications read, as documented in the README.
fn kube_secret_data(ctx: &TenantContext) -> Result<BTreeMap<String, SecretString>, StepError> {
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
    Ok(data)
}
