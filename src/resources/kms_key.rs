//! The tenant's KMS key: its own encryption key, under which its secret and
//! bucket are encrypted. It carries the encryption layer.

use async_trait::async_trait;

use super::{TenantContext, ensured};
use crate::api::{IsolationState, Layer, LayerReport, TenantResources};
use crate::isolation::fail;
use crate::provision::{Attempt, Ensured, Removal, Resource, StepError};

pub struct KmsKey;

#[async_trait]
impl Resource<TenantContext> for KmsKey {
    fn name(&self) -> &'static str {
        "kms-key"
    }

    async fn ensure(
        &self,
        ctx: &mut TenantContext,
        attempt: Attempt,
    ) -> Result<Ensured, StepError> {
        let op = ctx.operation();
        let key = ctx
            .backends
            .keys
            .ensure_key(&op, &ctx.names.key_alias, attempt.interrupted)
            .await?;
        ctx.key = Some(key);
        Ok(ensured(&op))
    }

    async fn remove(&self, ctx: &mut TenantContext, removal: Removal) -> Result<(), StepError> {
        let op = ctx.removal(removal);
        Ok(ctx
            .backends
            .keys
            .remove_key(&op, &ctx.names.key_alias)
            .await?)
    }

    async fn release(&self, ctx: &mut TenantContext, removal: Removal) -> Result<(), StepError> {
        let op = ctx.removal(removal);
        Ok(ctx
            .backends
            .keys
            .release_key(&op, &ctx.names.key_alias)
            .await?)
    }

    fn layer(&self) -> Option<Layer> {
        Some(Layer::Encryption)
    }

    async fn probe(&self, ctx: &TenantContext) -> Option<LayerReport> {
        let Some(key) = &ctx.key else {
            return Some(unknown("key.state"));
        };
        let probes = &ctx.backends.probes;
        let (mut report, as_tenant) = tokio::join!(
            probes
                .encryption
                .probe(&ctx.names.key_alias, &key.arn, &ctx.names.secret_name),
            super::as_tenant(ctx, |role| probes.tenant_access.encryption(role, &key.arn)),
        );
        report.add(as_tenant);
        Some(report)
    }

    fn record(&self, ctx: &TenantContext, resources: &mut TenantResources) {
        resources.key_arn = ctx.key.as_ref().map(|k| k.arn.clone());
        resources.key_alias = Some(ctx.names.key_alias.clone());
    }
}

/// The report of a probe whose inputs this run could not read.
pub(super) fn unknown(check: &str) -> LayerReport {
    LayerReport::from_findings(vec![fail(
        check,
        IsolationState::Unknown,
        "the tenant's key or credentials could not be read, so the probe could not run",
    )])
}
