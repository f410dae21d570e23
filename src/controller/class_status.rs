//! The status of each TenantClass, for the platform team that writes them:
//! whether the class can be used (its Secrets read, its settings valid, its
//! PostgreSQL server answers) and how many tenants it holds. A class is
//! checked the way a tenant of it would be resolved, so `Ready=False` says
//! in advance what its tenants would fail on.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};

use super::Context;
use super::status::set_condition;
use crate::api::{Reason, Tenant, TenantClass, TenantClassStatus};
use crate::class_registry::{ClassCheck, class_name_of};

/// How often every class is checked again.
pub const CLASS_STATUS_INTERVAL: Duration = Duration::from_secs(15);
/// A server that does not answer `SELECT 1` within this is unavailable.
const PING_TIMEOUT: Duration = Duration::from_secs(5);
const FIELD_MANAGER: &str = "tenantry-class-status";

/// Checks every class and writes its status, every
/// [`CLASS_STATUS_INTERVAL`], until the future is dropped. Tenants are
/// counted from a list of those `selector` picks, so every shard counts all.
pub async fn run(ctx: Arc<Context>, selector: String) {
    let mut tick = tokio::time::interval(CLASS_STATUS_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(error) = check_all(&ctx, &selector).await {
            tracing::debug!(%error, "TenantClass status not written this round");
        }
    }
}

async fn check_all(ctx: &Context, selector: &str) -> Result<(), kube::Error> {
    let tenants: Api<Tenant> = Api::all(ctx.client.clone());
    let mut params = kube::api::ListParams::default();
    if !selector.is_empty() {
        params = params.labels(selector);
    }
    let tenants = tenants.list(&params).await?.items;
    let classes = ctx.classes.store().state();
    for class in &classes {
        let name = class.name_any();
        let count = tenants
            .iter()
            .filter(|t| class_name_of(t, &classes).is_ok_and(|c| c == name))
            .count();
        let status = measure(ctx, class, u32::try_from(count).unwrap_or(u32::MAX)).await;
        if class.status.as_ref() != Some(&status) {
            write(ctx, &name, &status).await?;
        }
    }
    Ok(())
}

/// The class's status as found now; the transition time of an unchanged
/// `Ready` is kept, so an unchanged class is not written again.
async fn measure(ctx: &Context, class: &TenantClass, tenants: u32) -> TenantClassStatus {
    let mut status = class.status.clone().unwrap_or_default();
    status.observed_generation = class.metadata.generation;
    status.tenants = tenants;
    let (ready, reason, message, server) = match ctx.classes.check(&class.name_any()).await {
        Err(error) => (false, Reason::from(error.reason()), error.to_string(), None),
        // No tenant has needed its server yet: none is connected to for a
        // status (one class or hundreds).
        Ok(ClassCheck::Valid { server }) => (
            true,
            Reason::ClassReady,
            format!(
                "settings valid; its PostgreSQL server {server} is first connected to when a tenant uses the class"
            ),
            Some(server),
        ),
        Ok(ClassCheck::Built(settings)) => {
            let server = settings.rules.server.clone();
            match ping(settings.backends.postgres.pool()).await {
                Ok(()) => (
                    true,
                    Reason::ClassReady,
                    format!("settings valid and PostgreSQL server {server} answers"),
                    Some(server),
                ),
                Err(error) => (
                    false,
                    Reason::ClassUnavailable,
                    format!("PostgreSQL server {server} does not answer: {error}"),
                    Some(server),
                ),
            }
        }
    };
    status.server = server;
    set_condition(
        &mut status.conditions,
        super::status::READY,
        ready,
        &reason,
        &message,
        class.metadata.generation,
        Utc::now(),
    );
    status
}

async fn ping(pool: &sqlx::PgPool) -> Result<(), String> {
    match tokio::time::timeout(PING_TIMEOUT, sqlx::query("SELECT 1").execute(pool)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {PING_TIMEOUT:?}")),
    }
}

async fn write(ctx: &Context, name: &str, status: &TenantClassStatus) -> Result<(), kube::Error> {
    let api: Api<TenantClass> = Api::all(ctx.client.clone());
    let patch = serde_json::json!({
        "apiVersion": "tenantry.dev/v1alpha1",
        "kind": "TenantClass",
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}
