//! The tenant's S3 bucket, encrypted with its key. It carries the storage
//! layer.

use async_trait::async_trait;

use super::{TenantContext, ensured, kms_key::unknown};
use crate::api::{Layer, LayerReport, TenantResources};
use crate::provision::{Attempt, Ensured, Removal, Resource, StepError};

pub struct Bucket;

#[async_trait]
impl Resource<TenantContext> for Bucket {
    fn name(&self) -> &'static str {
        "s3-bucket"
    }

    async fn ensure(
        &self,
        ctx: &mut TenantContext,
        attempt: Attempt,
    ) -> Result<Ensured, StepError> {
        let key_arn = ctx.key_arn()?;
        let op = ctx.operation();
        ctx.backends
            .storage
            .ensure_bucket(
                &op,
                &ctx.names.bucket,
                &key_arn,
                ctx.spec.storage.versioning,
                attempt.interrupted,
            )
            .await?;
        Ok(ensured(&op))
    }

    async fn remove(&self, ctx: &mut TenantContext, removal: Removal) -> Result<(), StepError> {
        let op = ctx.removal(removal);
        Ok(ctx
            .backends
            .storage
            .remove_bucket(&op, &ctx.names.bucket)
            .await?)
    }

    async fn release(&self, ctx: &mut TenantContext, removal: Removal) -> Result<(), StepError> {
        let op = ctx.removal(removal);
        Ok(ctx
            .backends
            .storage
            .release_bucket(&op, &ctx.names.bucket)
            .await?)
    }

    fn layer(&self) -> Option<Layer> {
        Some(Layer::Storage)
    }

    async fn probe(&self, ctx: &TenantContext) -> Option<LayerReport> {
        let Some(key) = &ctx.key else {
            return Some(unknown("bucket.exists"));
        };
        let probes = &ctx.backends.probes;
        let (mut report, as_tenant) = tokio::join!(
            probes
                .storage
                .probe(&ctx.names.bucket, &key.arn, ctx.spec.storage.versioning),
            super::as_tenant(ctx, |role| probes
                .tenant_access
                .storage(role, &ctx.names.bucket)),
        );
        report.add(as_tenant);
        Some(report)
    }

    fn record(&self, ctx: &TenantContext, resources: &mut TenantResources) {
        resources.bucket = Some(ctx.names.bucket.clone());
    }
}
