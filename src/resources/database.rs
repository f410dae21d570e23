//! The tenant's PostgreSQL login role and its schema or database, with its
//! access to the shared tables. It carries the database layer, and its
//! login is the tenant's access to its data.

use async_trait::async_trait;

use super::{TenantContext, ensured, kms_key::unknown};
use crate::api::{Layer, LayerReport, Reason, TenantResources};
use crate::backends::{Operation, shared_tables};
use crate::provision::{Access, Attempt, Ensured, Removal, Resource, StepError};

pub struct Database;

#[async_trait]
impl Resource<TenantContext> for Database {
    fn name(&self) -> &'static str {
        "postgres"
    }

    async fn ensure(
        &self,
        ctx: &mut TenantContext,
        attempt: Attempt,
    ) -> Result<Ensured, StepError> {
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
        let op = ctx.operation();
        // The role is made or repaired with the login the run asks for, so a
        // suspended tenant never has a moment of access.
        let location = ctx
            .backends
            .database
            .ensure_tenant(
                &op,
                &ctx.names,
                ctx.mode(),
                ctx.spec.database.connection_limit,
                &password,
                attempt.access == Access::Granted,
                attempt.interrupted,
            )
            .await?;
        ctx.location = Some(location);
        ctx.login = Some(attempt.access);
        shared_tables::ensure_tenant_access(
            &op,
            ctx.backends.postgres.pool(),
            &ctx.backends.shared_tables,
            &ctx.names.role,
            &ctx.tenant.name,
        )
        .await?;
        Ok(ensured(&op))
    }

    async fn remove(&self, ctx: &mut TenantContext, removal: Removal) -> Result<(), StepError> {
        let op = ctx.removal(removal);
        drop_shared_table_access(ctx, &op).await?;
        Ok(ctx
            .backends
            .database
            .remove_tenant(&op, &ctx.names, ctx.mode())
            .await?)
    }

    async fn release(&self, ctx: &mut TenantContext, removal: Removal) -> Result<(), StepError> {
        let op = ctx.removal(removal);
        drop_shared_table_access(ctx, &op).await?;
        Ok(ctx
            .backends
            .database
            .release_tenant(&op, &ctx.names, ctx.mode())
            .await?)
    }

    async fn revoke_access(&self, ctx: &mut TenantContext) -> Result<(), StepError> {
        if ctx.login == Some(Access::Revoked) {
            return Ok(());
        }
        let op = ctx.operation();
        ctx.backends
            .database
            .set_login(&op, &ctx.names, false)
            .await?;
        ctx.login = Some(Access::Revoked);
        Ok(())
    }

    async fn restore_access(&self, ctx: &mut TenantContext) -> Result<(), StepError> {
        if ctx.login == Some(Access::Granted) {
            return Ok(());
        }
        let op = ctx.operation();
        ctx.backends
            .database
            .set_login(&op, &ctx.names, true)
            .await?;
        ctx.login = Some(Access::Granted);
        Ok(())
    }

    fn layer(&self) -> Option<Layer> {
        Some(Layer::Database)
    }

    async fn probe(&self, ctx: &TenantContext) -> Option<LayerReport> {
        let (Some(_), Some(credentials)) = (&ctx.key, &ctx.credentials) else {
            return Some(unknown("connect"));
        };
        Some(
            ctx.backends
                .probes
                .database
                .probe(
                    &ctx.names.role,
                    &ctx.tenant.name,
                    credentials,
                    ctx.mode(),
                    None,
                )
                .await,
        )
    }

    fn record(&self, ctx: &TenantContext, resources: &mut TenantResources) {
        resources.database = ctx.location.as_ref().map(|l| l.database.clone());
        resources.schema = ctx.location.as_ref().map(|l| l.schema.clone());
        resources.role = ctx.location.as_ref().map(|l| l.role.clone());
        resources.isolation_mode = ctx.location.as_ref().map(|_| ctx.mode());
    }
}

/// Takes the role's access to the shared tables, before the role is dropped
/// or let go: a released tenant's rows stay, unreachable until a Tenant of
/// its name adopts the role again.
async fn drop_shared_table_access(ctx: &TenantContext, op: &Operation) -> Result<(), StepError> {
    shared_tables::remove_tenant_access(
        op,
        ctx.backends.postgres.pool(),
        &ctx.backends.shared_tables,
        &ctx.names.role,
    )
    .await?;
    Ok(())
}
