//! The tenant's IAM role and the ServiceAccount its workloads run as: the
//! tenant's own AWS identity, allowed its bucket, key and secret and
//! nothing else. Made only when the class asks for it (`aws.identity`);
//! its access is revoked and restored with the tenant's.

use std::collections::BTreeMap;

use async_trait::async_trait;

use super::{TenantContext, ensured};
use crate::api::TenantResources;
use crate::backends::Backend;
use crate::backends::iam::{RoleSpec, TenantGrants, Workload, access_policy, trust_policy};
use crate::provision::{Access, Attempt, Ensured, Removal, Resource, StepError};

/// The annotation IRSA's webhook reads to give a pod the role.
const IRSA_ROLE_ANNOTATION: &str = "eks.amazonaws.com/role-arn";

pub struct IamRole;

#[async_trait]
impl Resource<TenantContext> for IamRole {
    fn name(&self) -> &'static str {
        "iam-role"
    }

    async fn ensure(
        &self,
        ctx: &mut TenantContext,
        attempt: Attempt,
    ) -> Result<Ensured, StepError> {
        let op = ctx.operation();
        let Some(identity) = ctx.backends.role.clone() else {
            // Not (or no longer) in this class: a role an earlier setting
            // made goes, so no identity outlives the class's choice.
            ctx.backends
                .identity
                .remove_role(&op, &ctx.names.iam_role)
                .await?;
            return Ok(ensured(&op));
        };
        let key_arn = ctx.key_arn()?;
        let caller = ctx.backends.access.caller(Backend::Iam).await?.clone();
        let namespace = ctx.spec.credentials.namespace.clone();
        let service_account = identity.service_account_for(&ctx.tenant.name);
        let spec = RoleSpec {
            name: ctx.names.iam_role.clone(),
            trust: trust_policy(
                &identity.trust,
                &ctx.tenant.name,
                &Workload {
                    namespace: &namespace,
                    service_account: &service_account,
                },
                &caller,
            ),
            access: access_policy(&TenantGrants {
                bucket: &ctx.names.bucket,
                key_arn: &key_arn,
                tenant_uid: &ctx.tenant.uid,
            }),
            permissions_boundary: identity.permissions_boundary.clone(),
            granted: attempt.access == Access::Granted,
        };
        let arn = ctx.backends.identity.ensure_role(&op, &spec).await?;
        ctx.role_access = Some(attempt.access);
        let annotations = match identity.trust.irsa {
            Some(_) => BTreeMap::from([(IRSA_ROLE_ANNOTATION.to_string(), arn.clone())]),
            None => BTreeMap::new(),
        };
        ctx.backends
            .service_accounts
            .ensure_service_account(&op, &namespace, &service_account, annotations)
            .await?;
        ctx.role_arn = Some(arn);
        ctx.service_account = Some(service_account);
        Ok(ensured(&op))
    }

    async fn remove(&self, ctx: &mut TenantContext, removal: Removal) -> Result<(), StepError> {
        let op = ctx.removal(removal);
        delete_service_account(ctx, &op).await?;
        ctx.backends
            .identity
            .remove_role(&op, &ctx.names.iam_role)
            .await?;
        ctx.role_arn = None;
        Ok(())
    }

    async fn release(&self, ctx: &mut TenantContext, removal: Removal) -> Result<(), StepError> {
        let op = ctx.removal(removal);
        // The ServiceAccount is only a door to the role: it goes; the role
        // stays, released with no access, for a returning tenant.
        delete_service_account(ctx, &op).await?;
        ctx.backends
            .identity
            .release_role(&op, &ctx.names.iam_role)
            .await?;
        Ok(())
    }

    async fn revoke_access(&self, ctx: &mut TenantContext) -> Result<(), StepError> {
        set_access(ctx, Access::Revoked).await
    }

    async fn restore_access(&self, ctx: &mut TenantContext) -> Result<(), StepError> {
        set_access(ctx, Access::Granted).await
    }

    fn record(&self, ctx: &TenantContext, resources: &mut TenantResources) {
        resources.iam_role_arn = ctx.role_arn.clone();
        resources.service_account = ctx
            .service_account
            .as_ref()
            .map(|name| format!("{}/{name}", ctx.spec.credentials.namespace));
    }
}

async fn set_access(ctx: &mut TenantContext, access: Access) -> Result<(), StepError> {
    if ctx.backends.role.is_none() || ctx.role_access == Some(access) {
        return Ok(());
    }
    let op = ctx.operation();
    ctx.backends
        .identity
        .set_role_access(&op, &ctx.names.iam_role, access == Access::Granted)
        .await?;
    ctx.role_access = Some(access);
    Ok(())
}

async fn delete_service_account(
    ctx: &TenantContext,
    op: &crate::backends::Operation,
) -> Result<(), StepError> {
    let Some(identity) = &ctx.backends.role else {
        return Ok(());
    };
    let name = identity.service_account_for(&ctx.tenant.name);
    Ok(ctx
        .backends
        .service_accounts
        .delete_service_account(op, &ctx.spec.credentials.namespace, &name)
        .await?)
}
