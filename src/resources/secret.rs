//! The tenant's database credentials in AWS Secrets Manager, encrypted with
//! its key: where the password lives, so a retry never changes one in use.

use async_trait::async_trait;

use super::{TenantContext, ensured};
use crate::api::TenantResources;
use crate::backends::{DatabaseCredentials, generate_password};
use crate::provision::{Attempt, Ensured, Removal, Resource, StepError};

pub struct CredentialsSecret;

#[async_trait]
impl Resource<TenantContext> for CredentialsSecret {
    fn name(&self) -> &'static str {
        "secretsmanager-secret"
    }

    async fn ensure(
        &self,
        ctx: &mut TenantContext,
        _attempt: Attempt,
    ) -> Result<Ensured, StepError> {
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
        let op = ctx.operation();
        let (arn, credentials) = ctx
            .backends
            .secrets
            .ensure_secret(&op, &ctx.names.secret_name, &key_arn, &initial)
            .await?;
        ctx.secret_arn = Some(arn);
        ctx.credentials = Some(credentials);
        Ok(ensured(&op))
    }

    async fn remove(&self, ctx: &mut TenantContext, removal: Removal) -> Result<(), StepError> {
        let op = ctx.removal(removal);
        Ok(ctx
            .backends
            .secrets
            .remove_secret(&op, &ctx.names.secret_name)
            .await?)
    }

    async fn release(&self, ctx: &mut TenantContext, removal: Removal) -> Result<(), StepError> {
        let op = ctx.removal(removal);
        Ok(ctx
            .backends
            .secrets
            .release_secret(&op, &ctx.names.secret_name)
            .await?)
    }

    fn record(&self, ctx: &TenantContext, resources: &mut TenantResources) {
        resources.secret_arn = ctx.secret_arn.clone();
    }
}
