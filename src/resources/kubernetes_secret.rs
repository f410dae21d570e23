//! The Kubernetes Secret applications mount: the tenant's access. Granting
//! access writes it, revoking access deletes it; the rest of the tenant
//! stays.

use async_trait::async_trait;

use super::{TenantContext, ensured, kube_secret_data};
use crate::api::TenantResources;
use crate::backends::Operation;
use crate::provision::{Access, Attempt, Ensured, Removal, Resource, StepError};

pub struct KubernetesSecret;

#[async_trait]
impl Resource<TenantContext> for KubernetesSecret {
    fn name(&self) -> &'static str {
        "kubernetes-secret"
    }

    /// The Secret itself is access: it is written only when the run grants
    /// access (and by `restore_access`). Ensuring also takes away the one a
    /// changed `spec.credentials` left behind.
    async fn ensure(
        &self,
        ctx: &mut TenantContext,
        attempt: Attempt,
    ) -> Result<Ensured, StepError> {
        let op = ctx.operation();
        if attempt.access == Access::Granted {
            write(ctx, &op).await?;
        }
        if let Some(previous) = ctx.previous_kube_secret.clone()
            && previous != ctx.kube_secret_ref()
            && let Some((old_ns, old_name)) = previous.split_once('/')
        {
            ctx.backends
                .kube_secrets
                .delete_secret(&op, old_ns, old_name)
                .await?;
        }
        Ok(ensured(&op))
    }

    async fn remove(&self, ctx: &mut TenantContext, removal: Removal) -> Result<(), StepError> {
        let op = ctx.removal(removal);
        let name = ctx.kube_secret_name();
        ctx.backends
            .kube_secrets
            .delete_secret(&op, &ctx.spec.credentials.namespace, &name)
            .await?;
        ctx.kube_secret_written = false;
        ctx.kube_secret_version = None;
        Ok(())
    }

    async fn release(&self, ctx: &mut TenantContext, removal: Removal) -> Result<(), StepError> {
        let op = ctx.removal(removal);
        let name = ctx.kube_secret_name();
        ctx.backends
            .kube_secrets
            .release_secret(&op, &ctx.spec.credentials.namespace, &name)
            .await?;
        ctx.kube_secret_written = false;
        Ok(())
    }

    async fn revoke_access(&self, ctx: &mut TenantContext) -> Result<(), StepError> {
        self.remove(ctx, Removal::default()).await
    }

    async fn restore_access(&self, ctx: &mut TenantContext) -> Result<(), StepError> {
        if ctx.kube_secret_written {
            return Ok(());
        }
        let op = ctx.operation();
        write(ctx, &op).await
    }

    fn record(&self, ctx: &TenantContext, resources: &mut TenantResources) {
        resources.kubernetes_secret = ctx.kube_secret_written.then(|| ctx.kube_secret_ref());
        resources.kubernetes_secret_version = ctx
            .kube_secret_written
            .then(|| ctx.kube_secret_version.clone())
            .flatten();
    }
}

async fn write(ctx: &mut TenantContext, op: &Operation) -> Result<(), StepError> {
    let data = kube_secret_data(ctx)?;
    let name = ctx.kube_secret_name();
    let written = ctx
        .backends
        .kube_secrets
        .ensure_secret(op, &ctx.spec.credentials.namespace, &name, data)
        .await?;
    ctx.kube_secret_written = true;
    ctx.kube_secret_version = written.version;
    if written.changed {
        ctx.kube_secret_changed = true;
        ctx.kube_secret_found_version = Some(written.found_version);
    }
    Ok(())
}
