//! The Tenant controller: thin glue from Kubernetes to the provisioning engine.
//!
//! A reconcile is a pipeline: validate the spec (pure), check what it refers to
//! (the credentials namespace), run the tenant's steps through the engine with
//! the journal kept in the status, then derive the status from the outcome.
//! Deletion is handled here too, behind the `tenantry.dev/cleanup` finalizer.

pub mod attestation;
pub mod class_status;
pub mod events;
pub mod lifecycle;
pub mod pacing;
pub mod status;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::{Predicate, predicates};
use kube::{Client, ResourceExt};
use rand::Rng;

use crate::api::{
    DeletionPolicy, DeletionStatus, IsolationMode, IsolationState, JournalOperation, Layer,
    Placement, ProvisioningJournal, Reason, Tenant, TenantClass, TenantPhase, TenantSpec,
    TenantStatus, Timestamp,
};
use crate::audit::{self, Action as AuditAction, AuditLog};
use crate::backends::{AuditSink, TenantRef};
use crate::class_registry::{ClassError, ClassRegistry, ClassRules, ClassSettings, class_name_of};
use crate::config::{EngineArgs, UnrepairableDrift};
use crate::metrics::{ErrorLabels, Metrics};
use crate::naming::TenantNames;
use crate::provision::{Engine, JournalStore, Lifecycle, Outcome, StepError, new_journal};
use crate::resources::{TenantContext, tenant_resources};
use attestation::{Measurement, measure};
use events::{EventPublisher, EventType};
use lifecycle::Situation;
use status::{Verdict, apply_verdict, failure_backoff};

/// Finalizer that guards every Tenant until its resources are released or removed.
pub const FINALIZER: &str = "tenantry.dev/cleanup";
/// Set to `Retain` on a terminating Tenant to cancel a `Delete` within its grace period.
pub const DELETION_POLICY_ANNOTATION: &str = "tenantry.dev/deletion-policy";
/// Field manager of tenantry's status writes.
pub const FIELD_MANAGER: &str = "tenantry";

/// How long to wait before looking again at a tenant whose namespace is missing.
const NAMESPACE_RETRY: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Step(#[from] StepError),
    #[error("Tenant has no {0}")]
    MissingField(&'static str),
    /// A patch guarded by the resourceVersion this reconcile read was refused
    /// because the Tenant has changed since: the watch cache is behind the
    /// API server (a watch that just came back, or this process's own last
    /// write not seen yet). Not a failure; the next reconcile reads anew.
    #[error("the Tenant changed since resourceVersion {0} was read; it is read again")]
    Stale(String),
}

impl Error {
    /// Fixed label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kubernetes",
            Self::Step(e) => e.category,
            Self::MissingField(_) => "invalid_object",
            Self::Stale(_) => "stale_read",
        }
    }
}

/// Shared state of the controller.
pub struct Context {
    pub client: Client,
    /// The TenantClasses and the clients built for each.
    pub classes: ClassRegistry,
    pub engine: EngineArgs,
    pub events: EventPublisher,
    pub metrics: Metrics,
    pub audit: AuditLog,
    /// Bounds the probes of settled tenants and stretches their interval
    /// when the tenants outgrow the probe slots.
    pub probes: pacing::ProbePacer,
    /// Consecutive reconcile errors per tenant, for a capped, jittered backoff
    /// (kube-runtime keeps none per object).
    error_counts: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(
        client: Client,
        classes: ClassRegistry,
        engine: EngineArgs,
        events: EventPublisher,
        metrics: Metrics,
        audit: AuditLog,
        probes: pacing::ProbePacer,
    ) -> Self {
        Self {
            client,
            classes,
            engine,
            events,
            metrics,
            audit,
            probes,
            error_counts: Mutex::default(),
        }
    }

    /// The probe interval of `class`'s tenants: the class's, or the time the
    /// probe slots need to go round every tenant once when that is longer.
    fn probe_interval(&self, class: &ClassSettings) -> Duration {
        let round = self.probes.round();
        self.metrics.probe_round_seconds.set(round.as_secs_f64());
        class.probe_interval.max(round)
    }
}

/// Fails fast when the CRD is missing, with what to run.
pub async fn check_crd_installed(client: &Client) -> anyhow::Result<()> {
    let tenants: Api<Tenant> = Api::all(client.clone());
    match tenants.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => anyhow::bail!(
            "the Tenant CRD (tenants.tenantry.dev) is not installed in this cluster: \
             run `tenantry crd | kubectl apply -f -` (or install the Helm chart)"
        ),
        Err(e) => Err(anyhow::Error::new(e).context("cannot list Tenants")),
    }
}

/// Runs the controller until `shutdown` resolves, then lets running
/// reconciles finish. Only the Tenants of `selector` and `shard` are watched
/// and kept in `store`.
pub async fn run(
    ctx: Arc<Context>,
    concurrency: u16,
    selector: &str,
    shard: crate::shard::Shard,
    store: kube::runtime::reflector::store::Writer<Tenant>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    use kube::runtime::WatchStreamExt;
    let tenants: Api<Tenant> = Api::all(ctx.client.clone());
    let mut watch = watcher::Config::default();
    if !selector.is_empty() {
        watch = watch.labels(selector);
    }
    let reader = store.as_reader();
    // The store sees every change; reconciles start only for changes a
    // person (or the API server) made. tenantry's own status writes would
    // otherwise start a reconcile each, and a tenant whose every pass writes
    // its status (a probe that cannot measure, say) would never leave the
    // queue to the others. Requeues still come from each reconcile's Action.
    let by_people = predicates::generation
        .combine(predicates::finalizers)
        .combine(predicates::annotations)
        .combine(predicates::labels)
        .combine(deletion_requested);
    let stream = crate::shard::filter_events(shard, watcher(tenants, watch).default_backoff())
        .reflect(store)
        .applied_objects()
        .predicate_filter(by_people, Default::default());
    // A changed (or new, or deleted) class is looked at by its tenants.
    let tenant_store = reader.clone();
    let class_store = ctx.classes.store();
    let classes: Api<TenantClass> = Api::all(ctx.client.clone());
    Controller::for_stream(stream, reader)
        .watches(classes, watcher::Config::default(), move |class| {
            let all_classes = class_store.state();
            let name = class.name_any();
            tenant_store
                .state()
                .into_iter()
                .filter(|t| class_name_of(t, &all_classes).is_ok_and(|c| c == name))
                .map(|t| kube::runtime::reflector::ObjectRef::from_obj(&*t))
                .collect::<Vec<_>>()
        })
        .watches_stream(credentials_secrets(&ctx.client), |secret| {
            // Deleted or changed by someone: the tenant looks at once.
            secret
                .labels()
                .get(crate::backends::tags::TENANT)
                .map(|tenant| kube::runtime::reflector::ObjectRef::<Tenant>::new(tenant))
        })
        .with_config(ControllerConfig::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::trace!(tenant = %object.name, "reconciled"),
                Err(error) => tracing::debug!(%error, "reconcile did not complete"),
            }
        })
        .await;
}

/// The credentials Secrets tenantry wrote (by their label), as metadata
/// only: the watch never holds a credential. Each change or deletion is a
/// trigger; tenantry's own writes are too, and cost a metadata read.
fn credentials_secrets(
    client: &kube::Client,
) -> impl futures::Stream<
    Item = Result<
        kube::core::PartialObjectMeta<k8s_openapi::api::core::v1::Secret>,
        watcher::Error,
    >,
> + Send
+ 'static {
    use kube::runtime::WatchStreamExt;
    // Api of PartialObjectMeta: metadata-only list and watch requests.
    let secrets: Api<kube::core::PartialObjectMeta<k8s_openapi::api::core::v1::Secret>> =
        Api::all(client.clone());
    let labels = format!(
        "{}={}",
        crate::backends::tags::MANAGED_BY,
        crate::backends::tags::MANAGED_BY_VALUE
    );
    watcher(secrets, watcher::Config::default().labels(&labels))
        .default_backoff()
        .filter_map(|event| {
            futures::future::ready(match event {
                Ok(watcher::Event::Delete(secret)) => Some(Ok(secret)),
                // tenantry's own writes are not news: reconciling on them
                // would run every step again before the status caught up.
                Ok(watcher::Event::Apply(secret)) if !last_written_by_tenantry(&secret) => {
                    Some(Ok(secret))
                }
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
        })
}

/// Whether the newest entry of the object's managedFields is tenantry's.
fn last_written_by_tenantry(
    secret: &kube::core::PartialObjectMeta<k8s_openapi::api::core::v1::Secret>,
) -> bool {
    secret
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|f| f.time.is_some())
        .max_by_key(|f| f.time.clone().map(|t| t.0))
        .is_some_and(|f| f.manager.as_deref() == Some(crate::backends::kube::FIELD_MANAGER))
}

/// Whether deletion was requested, for the predicate filter.
fn deletion_requested(tenant: &Tenant) -> Option<u64> {
    Some(u64::from(tenant.metadata.deletion_timestamp.is_some()))
}

async fn reconcile(tenant: Arc<Tenant>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_timer();
    let name = tenant.name_any();
    // Every backend write of this reconcile is recorded for this tenant, with
    // the generation and resourceVersion that led to it.
    let scope = audit::Scope {
        log: ctx.audit.clone(),
        tenant: name.clone(),
        tenant_uid: tenant.uid(),
        generation: tenant.metadata.generation,
        resource_version: tenant.resource_version(),
    };
    let audit: Arc<dyn AuditSink> = Arc::new(scope);
    // Boxed: the reconcile futures are large and overflow the stack of
    // debug builds inline.
    let result = if tenant.metadata.deletion_timestamp.is_some() {
        if tenant.finalizers().iter().any(|f| f == FINALIZER) {
            Box::pin(cleanup(&tenant, &ctx, &audit)).await
        } else {
            Ok(Action::await_change())
        }
    } else if !tenant.finalizers().iter().any(|f| f == FINALIZER) {
        add_finalizer(&tenant, &ctx.client)
            .await
            .map(|()| Action::await_change())
    } else {
        Box::pin(apply(&tenant, &ctx, &audit)).await
    };
    if result.is_ok() {
        ctx.error_counts.lock().expect("lock").remove(&name);
    }
    result
}

fn error_policy(tenant: Arc<Tenant>, error: &Error, ctx: Arc<Context>) -> Action {
    if let Error::Stale(_) = error {
        // Neither a failure nor worth a warning or an alert: the store
        // catches up within moments, and counting it would back a healthy
        // tenant off.
        tracing::debug!(tenant = %tenant.name_any(), %error, "reconcile deferred");
        return Action::requeue(jitter(
            Duration::from_millis(500),
            Duration::from_millis(1500),
        ));
    }
    ctx.metrics
        .reconcile_errors
        .get_or_create(&ErrorLabels {
            category: error.category().to_string(),
        })
        .inc();
    let failures = {
        let mut counts = ctx.error_counts.lock().expect("lock");
        let n = counts.entry(tenant.name_any()).or_default();
        *n += 1;
        *n
    };
    let cap = failure_backoff(failures, Duration::from_secs(2), Duration::from_secs(300));
    let delay = jitter(cap / 2, cap);
    tracing::warn!(tenant = %tenant.name_any(), %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

fn jitter(min: Duration, max: Duration) -> Duration {
    if max <= min {
        return min;
    }
    rand::rng().random_range(min..=max)
}

/// The resync delay for a settled tenant, spread so tenants do not move in step.
fn resync(base: Duration) -> Action {
    Action::requeue(jitter(base.mul_f64(0.9), base.mul_f64(1.1)))
}

async fn add_finalizer(tenant: &Tenant, client: &Client) -> Result<(), Error> {
    let api: Api<Tenant> = Api::all(client.clone());
    let mut finalizers = tenant.finalizers().to_vec();
    finalizers.push(FINALIZER.to_string());
    let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
        {"op": "test", "path": "/metadata/resourceVersion", "value": tenant.resource_version()},
        {"op": "add", "path": "/metadata/finalizers", "value": finalizers},
    ]))
    .expect("static JSON patch is valid");
    api.patch(
        &tenant.name_any(),
        &PatchParams::default(),
        &Patch::Json::<()>(patch),
    )
    .await
    .map_err(|e| stale_or(e, tenant))?;
    Ok(())
}

/// The API server answers a failed JSON patch `test` with 422 `Invalid` and
/// no causes; the patches here cannot be invalid otherwise.
fn stale_or(error: kube::Error, tenant: &Tenant) -> Error {
    match error {
        kube::Error::Api(s) if s.code == 422 => {
            Error::Stale(tenant.resource_version().unwrap_or_default())
        }
        e => e.into(),
    }
}

async fn remove_finalizer(tenant: &Tenant, client: &Client) -> Result<(), Error> {
    let api: Api<Tenant> = Api::all(client.clone());
    let finalizers: Vec<_> = tenant
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
        {"op": "test", "path": "/metadata/resourceVersion", "value": tenant.resource_version()},
        {"op": "replace", "path": "/metadata/finalizers", "value": finalizers},
    ]))
    .expect("static JSON patch is valid");
    match api
        .patch(
            &tenant.name_any(),
            &PatchParams::default(),
            &Patch::Json::<()>(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(stale_or(e, tenant)),
    }
}

/// Writes the whole status with one server-side apply under tenantry's field manager.
pub async fn write_status(
    client: &Client,
    name: &str,
    status: &TenantStatus,
) -> Result<(), kube::Error> {
    let api: Api<Tenant> = Api::all(client.clone());
    let patch = serde_json::json!({
        "apiVersion": "tenantry.dev/v1alpha1",
        "kind": "Tenant",
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

/// Persists the engine's journal into the Tenant's status as it goes.
struct StatusJournal<'a> {
    client: &'a Client,
    name: String,
    generation: Option<i64>,
    status: TenantStatus,
    /// Phase shown while steps are being ensured (Provisioning, or Deleting
    /// for a teardown).
    working_phase: TenantPhase,
    /// Where the engine's turns (a step failing, a rollback) are recorded.
    audit: Arc<dyn AuditSink>,
}

#[async_trait]
impl JournalStore for StatusJournal<'_> {
    async fn save(&mut self, journal: &ProvisioningJournal) -> Result<(), StepError> {
        let mut journal = journal.clone();
        // A rollback that just finished is a failure of this generation. It
        // is recorded in the same write, so no reconcile that reads this
        // status back (the cache may lag the final write) starts a new
        // attempt before the backoff.
        let rolled_back = journal.operation == JournalOperation::Provision
            && journal.failure.is_some()
            && journal.in_progress.is_none()
            && journal.steps_done.is_empty()
            && !journal.provisioned;
        if rolled_back {
            journal.failed_generation = self.generation;
        }
        audit_journal(
            self.audit.as_ref(),
            self.status.provisioning.as_ref(),
            &journal,
            rolled_back,
        )
        .await?;
        self.status.provisioning = Some(journal.clone());
        let phase = match journal.operation {
            JournalOperation::Provision if rolled_back => TenantPhase::Failed,
            JournalOperation::Provision => self.working_phase,
            JournalOperation::RollBack => TenantPhase::RollingBack,
            JournalOperation::Teardown | JournalOperation::Release => TenantPhase::Deleting,
        };
        // Keep the visible phase while a Ready tenant is only being re-checked.
        if self.status.phase != Some(phase) || phase != TenantPhase::Ready {
            let (reason, message) = match phase {
                TenantPhase::RollingBack => (
                    Reason::RollingBack,
                    format!(
                        "provisioning failed ({}); removing what was made",
                        journal
                            .failure
                            .as_ref()
                            .map_or("unknown cause".to_string(), ToString::to_string)
                    ),
                ),
                TenantPhase::Deleting => (
                    Reason::Deleting,
                    "removing the tenant's resources".to_string(),
                ),
                TenantPhase::Failed => (
                    journal
                        .failure_reason
                        .as_deref()
                        .map_or(Reason::RolledBack, Reason::from),
                    format!(
                        "provisioning failed and was rolled back, nothing was left behind: {}",
                        journal
                            .failure
                            .as_ref()
                            .map_or("unknown cause".to_string(), ToString::to_string)
                    ),
                ),
                _ => (
                    Reason::Provisioning,
                    match &journal.in_progress {
                        Some(step) => format!("ensuring {step}"),
                        None => format!("{} steps done", journal.steps_done.len()),
                    },
                ),
            };
            apply_verdict(
                &mut self.status,
                &Verdict::new(phase, reason, message),
                self.generation,
                Utc::now(),
            );
        }
        write_status(self.client, &self.name, &self.status)
            .await
            .map_err(|e| {
                StepError::transient(
                    "kubernetes",
                    format!("saving the provisioning journal: {e}"),
                )
            })
    }
}

/// Records the engine's turns that no backend call shows: a step failing,
/// a rollback starting and ending. Written before the journal that reports
/// them, so a failed audit write stops the engine there.
async fn audit_journal(
    sink: &dyn AuditSink,
    before: Option<&ProvisioningJournal>,
    now: &ProvisioningJournal,
    rolled_back: bool,
) -> Result<(), StepError> {
    let failure = now.failure.as_ref();
    let was_rolling_back = before.is_some_and(|j| j.operation == JournalOperation::RollBack);
    if failure.is_some() && failure != before.and_then(|j| j.failure.as_ref()) {
        let step = crate::provision::failed_step(now).unwrap_or_default();
        let detail = serde_json::json!({"error": failure.map(ToString::to_string), "reason": now.failure_reason});
        record(
            sink,
            AuditAction::ProvisionStepFailed,
            step,
            audit::Outcome::Failed,
            detail,
        )
        .await?;
    }
    if now.operation == JournalOperation::RollBack && !was_rolling_back {
        let detail = serde_json::json!({"undo": now.steps_done});
        record(
            sink,
            AuditAction::RollbackStart,
            "tenant",
            audit::Outcome::Ok,
            detail,
        )
        .await?;
    }
    if rolled_back && was_rolling_back {
        record(
            sink,
            AuditAction::RollbackDone,
            "tenant",
            audit::Outcome::Ok,
            serde_json::json!({}),
        )
        .await?;
    }
    Ok(())
}

/// Records a controller-level event for the tenant being reconciled.
async fn record(
    sink: &dyn AuditSink,
    action: AuditAction,
    target: &str,
    outcome: audit::Outcome,
    detail: serde_json::Value,
) -> Result<(), StepError> {
    Ok(sink.record(action, target, outcome, detail).await?)
}

/// Pure validation of what the API server's schema cannot check.
/// A spec the reconciler cannot honour, with its condition reason.
#[derive(Debug)]
struct Refusal {
    reason: Reason,
    message: String,
}

impl Refusal {
    fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// The spec with the class's defaults filled in: what the steps work from.
fn effective_spec(tenant: &Tenant, class: &ClassRules) -> Result<TenantSpec, Refusal> {
    if let Some(mode) = tenant.spec.database.isolation
        && mode != class.default_mode
        && !class.allow_override
    {
        return Err(Refusal::new(
            Reason::IsolationModeNotAllowed,
            format!(
                "TenantClass {} puts every tenant in mode {} (isolation.allowOverride is false), \
                 so spec.database.isolation {mode} is refused: remove it, or choose another class",
                class.name, class.default_mode
            ),
        ));
    }
    if let (Some(min), Some(asked)) = (
        class.min_grace_period,
        tenant.spec.deletion.grace_period.as_deref(),
    ) && parse_grace_period(asked).is_ok_and(|asked| asked < min)
    {
        return Err(Refusal::new(
            Reason::GracePeriodBelowClassMinimum,
            format!(
                "spec.deletion.gracePeriod {asked} is shorter than TenantClass {} allows ({}, \
                 deletion.minGracePeriod): lengthen it, or leave it out for the class's default",
                class.name,
                humantime::format_duration(min)
            ),
        ));
    }
    let asked = tenant.spec.database.connection_limit;
    if let Some(max) = class.max_connection_limit
        && asked > max
    {
        return Err(Refusal::new(
            Reason::ConnectionLimitAboveClassMaximum,
            format!(
                "spec.database.connectionLimit {asked} is more than TenantClass {} allows ({max}, \
                 database.maxConnectionLimit): set it to {max} or less, or choose another class",
                class.name
            ),
        ));
    }
    Ok(with_class_defaults(tenant, class))
}

/// The spec with what the Tenant leaves out taken from its class.
fn with_class_defaults(tenant: &Tenant, class: &ClassRules) -> TenantSpec {
    let mut spec = tenant.spec.clone();
    spec.database.isolation.get_or_insert(class.default_mode);
    spec.deletion.policy.get_or_insert(class.deletion_policy);
    spec.deletion
        .grace_period
        .get_or_insert_with(|| class.grace_period.clone());
    spec
}

fn validate(
    tenant: &Tenant,
    spec: &TenantSpec,
    class: &ClassRules,
) -> Result<(TenantNames, Duration), Refusal> {
    let invalid = |message: String| Refusal::new(Reason::InvalidSpec, message);
    let names = TenantNames::new(&tenant.name_any(), &class.bucket_prefix).map_err(invalid)?;
    let grace = parse_grace_period(spec.deletion.grace_period.as_deref().unwrap_or_default())
        .map_err(invalid)?;
    let mode = spec.database.isolation.unwrap_or_default();
    let status = tenant.status.as_ref();
    // Where the data lives is decided once; moving it is a migration, not a
    // reconcile.
    if let Some(placement) = status.and_then(|s| s.placement.as_ref())
        && placement.server != class.server
    {
        return Err(Refusal::new(
            Reason::PlacementChangeRefused,
            format!(
                "the tenant's data lives on {} (class {}); class {} uses {}. tenantry does not move a tenant \
                 between servers: set spec.class back to {}",
                placement.server, placement.class, class.name, class.server, placement.class
            ),
        ));
    }
    if let Some(resources) = status.and_then(|s| s.resources.as_ref()) {
        if let Some(recorded) = &resources.database {
            let dedicated = *recorded == names.database;
            if dedicated != (mode == IsolationMode::Database) {
                let was = if dedicated {
                    IsolationMode::Database
                } else {
                    IsolationMode::Schema
                };
                return Err(Refusal::new(
                    Reason::IsolationModeChangeRefused,
                    format!(
                        "spec.database.isolation cannot change from {was} to {mode} once the tenant's data exists; \
                         set it back to {was}"
                    ),
                ));
            }
        }
        if let Some(bucket) = &resources.bucket
            && *bucket != names.bucket
        {
            return Err(Refusal::new(
                Reason::PlacementChangeRefused,
                format!(
                    "the tenant's bucket is {bucket}, but class {} would name it {} (another bucket prefix); \
                     tenantry does not move a tenant's objects: restore the class's bucket prefix",
                    class.name, names.bucket
                ),
            ));
        }
    }
    Ok((names, grace))
}

fn parse_grace_period(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value).map_err(|e| {
        format!("spec.deletion.gracePeriod {value:?} is not a duration such as 72h or 30m: {e}")
    })
}

fn tenant_ref(tenant: &Tenant) -> Result<TenantRef, Error> {
    Ok(TenantRef {
        name: tenant.name_any(),
        uid: tenant.uid().ok_or(Error::MissingField("metadata.uid"))?,
        display_name: tenant.spec.display_name.clone(),
    })
}

/// The tenant's class, or the status that says why there is none to use.
async fn resolve_class(
    tenant: &Tenant,
    ctx: &Context,
) -> Result<Result<Arc<ClassSettings>, Action>, Error> {
    match ctx.classes.resolve(tenant).await {
        Ok(class) => Ok(Ok(class)),
        Err(error) => {
            tracing::warn!(tenant = %tenant.name_any(), %error, "cannot resolve the tenant's class");
            // Nothing is changed for a tenant whose class cannot be used; a
            // new or fixed class wakes it through the class watch.
            let retry = match error {
                ClassError::Unavailable { .. } | ClassError::Unreadable { .. } => {
                    Duration::from_secs(30)
                }
                _ => Duration::from_secs(300),
            };
            let mut status = tenant.status.clone().unwrap_or_default();
            let phase = if tenant.metadata.deletion_timestamp.is_some() {
                TenantPhase::Deleting
            } else {
                TenantPhase::Failed
            };
            let verdict = Verdict::new(phase, Reason::from(error.reason()), error.to_string());
            apply_verdict(
                &mut status,
                &verdict,
                tenant.metadata.generation,
                Utc::now(),
            );
            if Some(&status) != tenant.status.as_ref() {
                write_status(&ctx.client, &tenant.name_any(), &status).await?;
            }
            Ok(Err(Action::requeue(jitter(retry, retry.mul_f64(1.2)))))
        }
    }
}

async fn apply(
    tenant: &Tenant,
    ctx: &Context,
    audit: &Arc<dyn AuditSink>,
) -> Result<Action, Error> {
    let current = tenant.status.clone().unwrap_or_default();
    let class = match resolve_class(tenant, ctx).await? {
        Ok(class) => class,
        Err(action) => return Ok(action),
    };
    let spec = effective_spec(tenant, &class.rules);
    let (spec, names) = match spec
        .and_then(|spec| validate(tenant, &spec, &class.rules).map(|(names, _grace)| (spec, names)))
    {
        Ok(valid) => valid,
        Err(refusal) => {
            let verdict = Verdict::new(TenantPhase::Failed, refusal.reason, refusal.message);
            return finish(tenant, ctx, &class, current, &verdict, None).await;
        }
    };
    // A store that failed its guards while running records nothing more, so
    // nothing more is changed: refused before any backend is touched.
    if let Some(why) = ctx.audit.distrusted() {
        let verdict = Verdict::new(TenantPhase::Failed, Reason::AuditTrailDistrusted, why);
        return finish(tenant, ctx, &class, current, &verdict, None).await;
    }
    if let Some(wait) = backoff_remaining(
        &current,
        tenant.metadata.generation,
        &ctx.engine,
        Utc::now(),
    ) {
        tracing::debug!(tenant = %tenant.name_any(), ?wait, "failed tenant still in backoff");
        return Ok(Action::requeue(wait));
    }
    // A credentials Secret someone deleted or changed is written again now,
    // not at the next probe: the tenant is run as if it were not settled.
    let secret_touched =
        is_settled(tenant, &current, &class) && credentials_secret_touched(&class, &current).await;
    let settled = is_settled(tenant, &current, &class) && !secret_touched;
    // Held to the end of this reconcile.
    let _probe_slot = match probe_turn(tenant, ctx, &class, &current, settled) {
        Ok(slot) => slot,
        Err(wait) => return Ok(Action::requeue(wait)),
    };
    if let Some(action) = namespace_gate(tenant, ctx, &class, &current, &spec).await? {
        return Ok(action);
    }

    let mut steps_ctx = TenantContext::new(
        tenant_ref(tenant)?,
        names,
        spec.clone(),
        class.backends.clone(),
        audit.clone(),
    );
    steps_ctx.previous_kube_secret = current
        .resources
        .as_ref()
        .and_then(|r| r.kubernetes_secret.clone());

    // A settled tenant is measured before its steps run: the steps repair
    // drift as a side effect, and it must be seen and counted first.
    let drift = if settled {
        match measure_settled(tenant, ctx, &class, &current, &mut steps_ctx).await? {
            Ok(drift) => Some(drift),
            Err(action) => return Ok(action),
        }
    } else {
        None
    };

    let (outcome, status) = run_provisioning(tenant, ctx, &class, &current, &mut steps_ctx).await?;
    if credentials_restored(&current, &steps_ctx) {
        let message = format!(
            "the credentials Secret {} was deleted or changed; written again",
            steps_ctx.kube_secret_ref()
        );
        tracing::warn!(tenant = %tenant.name_any(), "{message}");
        ctx.events
            .publish(
                tenant,
                EventType::Warning,
                &Reason::CredentialsRestored,
                "Restore",
                &message,
            )
            .await;
    }
    on_outcome(
        tenant, ctx, &class, &current, status, &steps_ctx, drift, outcome,
    )
    .await
}

/// Turns how the engine's run ended into the tenant's verdict.
#[allow(clippy::too_many_arguments)]
async fn on_outcome(
    tenant: &Tenant,
    ctx: &Context,
    class: &ClassSettings,
    current: &TenantStatus,
    status: TenantStatus,
    steps_ctx: &TenantContext,
    drift: Option<Measurement>,
    outcome: Outcome,
) -> Result<Action, Error> {
    match outcome {
        Outcome::Provisioned => {
            Box::pin(on_provisioned(
                tenant, ctx, class, current, status, steps_ctx, drift,
            ))
            .await
        }
        Outcome::RolledBack { error, reason, .. } => {
            on_rolled_back(tenant, ctx, class, status, error, reason).await
        }
        Outcome::Degraded {
            error,
            reason,
            failed_step,
        } => {
            let failure = (failed_step, error, reason);
            Box::pin(on_degraded(
                tenant, ctx, class, current, status, steps_ctx, failure,
            ))
            .await
        }
        Outcome::RemovalStuck { step, error } => {
            let verdict = Verdict::new(
                TenantPhase::RollingBack,
                Reason::RollbackStuck,
                format!("could not remove {step}, will retry: {error}"),
            );
            finish(tenant, ctx, class, status, &verdict, Some("removal_stuck")).await?;
            Ok(Action::requeue(Duration::from_secs(30)))
        }
        Outcome::Removed | Outcome::Released | Outcome::AccessRevoked => {
            Ok(resync(ctx.probe_interval(class)))
        }
    }
}

/// Whether this run wrote again a credentials Secret that someone else had
/// deleted or changed: tenantry had written it (the status records the
/// version), and before this run's write it was gone or at another version.
/// A change of tenantry's own (new data for a new class, say) starts from
/// the recorded version and is not a restore.
fn credentials_restored(current: &TenantStatus, steps_ctx: &TenantContext) -> bool {
    let Some(resources) = &current.resources else {
        return false;
    };
    let recorded = resources.kubernetes_secret_version.clone();
    recorded.is_some()
        && resources.kubernetes_secret.as_deref() == Some(steps_ctx.kube_secret_ref().as_str())
        && steps_ctx
            .kube_secret_found_version
            .as_ref()
            .is_some_and(|found| *found != recorded)
}

/// Whether the credentials Secret of a settled tenant is not as tenantry
/// last wrote it: gone, or at another resourceVersion (only its metadata is
/// read). A status that recorded no version counts as touched, once: the
/// steps record it. A read that fails says nothing: the probe goes on.
async fn credentials_secret_touched(class: &ClassSettings, current: &TenantStatus) -> bool {
    let Some(resources) = &current.resources else {
        return false;
    };
    let Some((namespace, name)) = resources
        .kubernetes_secret
        .as_deref()
        .and_then(|r| r.split_once('/'))
    else {
        return false;
    };
    match class
        .backends
        .kube_secrets
        .secret_version(namespace, name)
        .await
    {
        Ok(found) => found.is_none() || found != resources.kubernetes_secret_version,
        Err(error) => {
            tracing::debug!(%error, "cannot read the credentials Secret's version");
            false
        }
    }
}

/// Ready, provisioned for this generation on this class's placement, and not
/// suspended: all that is left to do is to measure it now and then.
fn is_settled(tenant: &Tenant, current: &TenantStatus, class: &ClassSettings) -> bool {
    current.phase == Some(TenantPhase::Ready)
        && current.observed_generation == tenant.metadata.generation
        && current.provisioning.as_ref().is_some_and(|j| j.provisioned)
        && current
            .resources
            .as_ref()
            .is_some_and(|r| r.key_arn.is_some())
        && current.placement == Some(class.placement())
        && !tenant.spec.suspended
}

/// Whether a settled tenant's probe may run now: a probe slot, or how long to
/// wait. An unsettled tenant needs no slot.
fn probe_turn(
    tenant: &Tenant,
    ctx: &Context,
    class: &ClassSettings,
    current: &TenantStatus,
    settled: bool,
) -> Result<Option<pacing::ProbeSlot>, Duration> {
    if !settled {
        return Ok(None);
    }
    // A settled tenant measured less than a probe interval ago (after a
    // restart, a relist, or the watch event of its own status write) waits
    // for its turn: a resync costs no backend call, and the probes stay
    // spread as they were instead of bursting.
    let probe_interval = ctx.probe_interval(class);
    let verified_at = current.isolation.as_ref().and_then(|i| i.verified_at);
    if let Some(wait) = probe_not_due(verified_at, probe_interval, Utc::now()) {
        tracing::debug!(tenant = %tenant.name_any(), ?wait, "measured recently; next probe later");
        return Err(wait);
    }
    // A due probe runs only in a probe slot; without one it gives the
    // reconcile slot back to onboarding.
    match ctx.probes.try_slot() {
        Some(slot) => Ok(Some(slot)),
        None => {
            ctx.metrics.probes_deferred.inc();
            let wait = ctx.probes.retry_delay(probe_interval);
            tracing::debug!(tenant = %tenant.name_any(), ?wait, "probe due, no probe slot free; later");
            Err(wait)
        }
    }
}

/// The credentials namespace must exist and be one the class allows; else
/// nothing is written, and the namespace is read again later (namespaces
/// are not watched).
async fn namespace_gate(
    tenant: &Tenant,
    ctx: &Context,
    class: &ClassSettings,
    current: &TenantStatus,
    spec: &TenantSpec,
) -> Result<Option<Action>, Error> {
    let namespace = &spec.credentials.namespace;
    let labels = class
        .backends
        .kube_secrets
        .namespace_labels(namespace)
        .await
        .map_err(StepError::from)?;
    let verdict = match &labels {
        Some(labels) => match class
            .rules
            .namespaces
            .check(&class.rules.name, namespace, labels)
        {
            Ok(()) => return Ok(None),
            Err(message) => Verdict::new(TenantPhase::Failed, Reason::NamespaceNotAllowed, message),
        },
        None => Verdict::new(
            TenantPhase::Pending,
            Reason::NamespaceMissing,
            format!(
                "namespace {namespace} (spec.credentials.namespace) does not exist; tenantry does not create \
                 namespaces and will retry"
            ),
        ),
    };
    finish(tenant, ctx, class, current.clone(), &verdict, None).await?;
    Ok(Some(Action::requeue(NAMESPACE_RETRY)))
}

/// Measures a settled tenant. All enforced: its status is written and the
/// reconcile ends (`Err`). Otherwise the drift found, recorded and announced,
/// for the steps to repair.
async fn measure_settled(
    tenant: &Tenant,
    ctx: &Context,
    class: &ClassSettings,
    current: &TenantStatus,
    steps_ctx: &mut TenantContext,
) -> Result<Result<Measurement, Action>, Error> {
    // Missing inputs (the secret gone, say) make every layer Unknown: that
    // too is drift, repaired by the steps.
    read_probe_inputs(steps_ctx, current).await;
    let measured = Box::pin(measure(steps_ctx)).await;
    if measured.all_enforced() {
        let mut status = current.clone();
        let repairs = status.isolation.as_ref().map_or(0, |i| i.drift_repairs);
        status.isolation = Some(measured.into_status(Utc::now(), repairs));
        let verdict = Verdict::new(TenantPhase::Ready, Reason::Provisioned, READY_MESSAGE);
        return Ok(Err(
            finish(tenant, ctx, class, status, &verdict, None).await?
        ));
    }
    let found = measured.failures();
    tracing::warn!(tenant = %tenant.name_any(), drift = %found, "isolation drift detected; repairing");
    repair_shared_security(class).await;
    record(
        steps_ctx.audit.as_ref(),
        AuditAction::DriftDetected,
        "tenant",
        audit::Outcome::Ok,
        serde_json::json!({"found": found}),
    )
    .await?;
    ctx.events
        .publish(
            tenant,
            EventType::Warning,
            &Reason::DriftDetected,
            "Probe",
            &found,
        )
        .await;
    Ok(Ok(measured))
}

/// Runs the tenant's steps through the engine, journaled in its status.
async fn run_provisioning(
    tenant: &Tenant,
    ctx: &Context,
    class: &ClassSettings,
    current: &TenantStatus,
    steps_ctx: &mut TenantContext,
) -> Result<(Outcome, TenantStatus), Error> {
    let generation = tenant.metadata.generation;
    let resources = tenant_resources();
    let engine = Engine::new(&resources, ctx.engine.retry_policy());
    let mut journal = current.provisioning.clone().unwrap_or_else(new_journal);
    // The placement is recorded with the first journal write, before any
    // resource exists, so a crash cannot leave a tenant on an unknown server.
    let mut placed = current.clone();
    placed.placement.get_or_insert_with(|| Placement {
        class_generation: None,
        ..class.placement()
    });
    let mut store = StatusJournal {
        client: &ctx.client,
        name: tenant.name_any(),
        generation,
        status: placed,
        working_phase: match current.phase {
            Some(TenantPhase::Ready) if current.observed_generation == generation => {
                TenantPhase::Ready
            }
            _ => TenantPhase::Provisioning,
        },
        audit: steps_ctx.audit.clone(),
    };
    let lifecycle::Next::Run(path) = lifecycle::next(&Situation::live(&steps_ctx.spec), Utc::now())
    else {
        unreachable!("a live tenant always has a path to run")
    };
    let outcome = engine
        .run(steps_ctx, &mut journal, &mut store, path)
        .await?;
    let mut status = store.status;
    status.provisioning = Some(journal);
    Ok((outcome, status))
}

/// Every step ensured: record a suspension or resumption, measure (and
/// report a repaired drift), and write the verdict.
async fn on_provisioned(
    tenant: &Tenant,
    ctx: &Context,
    class: &ClassSettings,
    current: &TenantStatus,
    mut status: TenantStatus,
    steps_ctx: &TenantContext,
    drift: Option<Measurement>,
) -> Result<Action, Error> {
    status.resources =
        Some(Engine::new(&tenant_resources(), ctx.engine.retry_policy()).record(steps_ctx));
    // Every step ran with this class as it is now.
    status.placement = Some(class.placement());
    if steps_ctx.spec.suspended != (current.phase == Some(TenantPhase::Suspended)) {
        let action = if tenant.spec.suspended {
            AuditAction::TenantSuspend
        } else {
            AuditAction::TenantResume
        };
        record(
            steps_ctx.audit.as_ref(),
            action,
            "tenant",
            audit::Outcome::Ok,
            serde_json::json!({}),
        )
        .await?;
    }
    // A measurement that could not be taken (a backend that failed to
    // answer) says nothing about isolation: it is taken again after the
    // failure backoff, not a whole probe interval later.
    let mut unmeasured = false;
    let verdict = if tenant.spec.suspended {
        Verdict::new(
            TenantPhase::Suspended,
            Reason::Suspended,
            "access revoked: database login disabled and the Kubernetes Secret removed",
        )
    } else {
        let (verdict, measured_status, missing) = Box::pin(measure_provisioned(
            tenant, ctx, class, current, steps_ctx, drift,
        ))
        .await?;
        status.isolation = Some(measured_status);
        unmeasured = missing;
        verdict
    };
    // The event goes first, so whoever sees the new phase finds it.
    if current.phase != Some(verdict.phase) {
        ctx.events
            .publish(
                tenant,
                EventType::Normal,
                &verdict.reason,
                "Provision",
                &verdict.message,
            )
            .await;
    }
    let action = finish(tenant, ctx, class, status, &verdict, Some("provisioned")).await?;
    if unmeasured {
        return Ok(Action::requeue(
            ctx.engine.failure_backoff.min(ctx.probe_interval(class)),
        ));
    }
    Ok(action)
}

/// The measurement after the steps ran: the verdict, the attestation, and
/// whether it could not be taken at all.
async fn measure_provisioned(
    tenant: &Tenant,
    ctx: &Context,
    class: &ClassSettings,
    current: &TenantStatus,
    steps_ctx: &TenantContext,
    mut drift: Option<Measurement>,
) -> Result<(Verdict, crate::api::IsolationStatus, bool), Error> {
    let mut measured = Box::pin(measure(steps_ctx)).await;
    if !measured.all_enforced() && drift.is_none() {
        // Not caught by a settled probe (say, the cache still showed an
        // older phase): repair what the steps do not cover and measure again.
        repair_shared_security(class).await;
        let again = Box::pin(measure(steps_ctx)).await;
        drift = Some(std::mem::replace(&mut measured, again));
    }
    let mut repairs = current.isolation.as_ref().map_or(0, |i| i.drift_repairs);
    let mut unmeasured = false;
    let verdict = if measured.all_enforced() {
        if let Some(before) = &drift {
            repairs += 1;
            ctx.metrics.drift_repairs.inc();
            let message = format!("repaired and verified: {}", before.failures());
            record(
                steps_ctx.audit.as_ref(),
                AuditAction::DriftRepair,
                "tenant",
                audit::Outcome::Ok,
                serde_json::json!({"repaired": before.failures()}),
            )
            .await?;
            tracing::info!(tenant = %tenant.name_any(), %message, "isolation drift repaired");
            ctx.events
                .publish(
                    tenant,
                    EventType::Normal,
                    &Reason::DriftRepaired,
                    "Repair",
                    &message,
                )
                .await;
        }
        Verdict::new(TenantPhase::Ready, Reason::Provisioned, READY_MESSAGE)
    } else {
        unmeasured = measured.summary() == IsolationState::Unknown;
        isolation_failure(tenant, ctx, steps_ctx, &measured).await
    };
    Ok((
        verdict,
        measured.into_status(Utc::now(), repairs),
        unmeasured,
    ))
}

/// A step failed for good and everything made was removed.
async fn on_rolled_back(
    tenant: &Tenant,
    ctx: &Context,
    class: &ClassSettings,
    mut status: TenantStatus,
    error: String,
    reason: String,
) -> Result<Action, Error> {
    if let Some(j) = status.provisioning.as_mut() {
        j.failed_generation = tenant.metadata.generation;
    }
    // What exists now is nothing, anywhere.
    status.resources = None;
    status.placement = None;
    let message =
        format!("provisioning failed and was rolled back, nothing was left behind: {error}");
    let verdict = Verdict::new(TenantPhase::Failed, Reason::from(reason.as_str()), message);
    ctx.events
        .publish(
            tenant,
            EventType::Warning,
            &verdict.reason,
            "RollBack",
            &verdict.message,
        )
        .await;
    let failed = status
        .provisioning
        .as_ref()
        .map_or(1, |j| j.failed_attempts);
    finish(tenant, ctx, class, status, &verdict, Some("rolled_back")).await?;
    Ok(Action::requeue(failure_backoff(
        failed,
        ctx.engine.failure_backoff,
        ctx.engine.failure_backoff_max,
    )))
}

/// A step of a provisioned tenant failed for good: everything is kept, the
/// fence measured, and the step retried within a probe interval.
async fn on_degraded(
    tenant: &Tenant,
    ctx: &Context,
    class: &ClassSettings,
    current: &TenantStatus,
    mut status: TenantStatus,
    steps_ctx: &TenantContext,
    (failed_step, error, reason): (String, String, String),
) -> Result<Action, Error> {
    let mut message = format!(
        "{failed_step} cannot be brought to the desired state; every resource is kept and it is retried: {error}"
    );
    if steps_ctx.key.is_some() && steps_ctx.credentials.is_some() && !tenant.spec.suspended {
        let measured = Box::pin(measure(steps_ctx)).await;
        if !measured.all_enforced() {
            let fenced = isolation_failure(tenant, ctx, steps_ctx, &measured).await;
            message = format!("{message}; {}", fenced.message);
        }
        let repairs = current.isolation.as_ref().map_or(0, |i| i.drift_repairs);
        status.isolation = Some(measured.into_status(Utc::now(), repairs));
    }
    let verdict = Verdict::new(TenantPhase::Failed, Reason::from(reason.as_str()), message);
    if current.phase != Some(TenantPhase::Failed) {
        ctx.events
            .publish(
                tenant,
                EventType::Warning,
                &verdict.reason,
                "Reconcile",
                &verdict.message,
            )
            .await;
    }
    // A live tenant is looked at again within one probe interval, so access
    // comes back soon after a person fixes what tenantry cannot.
    finish(tenant, ctx, class, status, &verdict, Some("degraded")).await
}

/// Shared-table security belongs to no single tenant, so no step ensures it;
/// drift there is repaired here.
async fn repair_shared_security(class: &ClassSettings) {
    if let Err(error) = crate::backends::shared_tables::ensure_shared_security(
        class.backends.postgres.pool(),
        &class.backends.shared_tables,
    )
    .await
    {
        tracing::warn!(%error, "could not repair shared-table security");
    }
}

const READY_MESSAGE: &str =
    "every resource of the tenant exists and every isolation layer is enforced, as measured";

/// Fills the context with what the probes need (the key from the status, the
/// stored credentials from Secrets Manager) by reading only: measuring must
/// not repair in passing, or drift would go uncounted. Whatever is missing
/// leaves the probes Unknown, which the caller treats as drift to repair.
async fn read_probe_inputs(steps_ctx: &mut TenantContext, current: &TenantStatus) {
    let resources = current.resources.clone().unwrap_or_default();
    let Some(key_arn) = resources.key_arn.clone() else {
        return;
    };
    let key_id = key_arn.rsplit('/').next().unwrap_or_default().to_string();
    steps_ctx.key = Some(crate::backends::KeyInfo {
        key_id,
        arn: key_arn,
    });
    match steps_ctx
        .backends
        .secrets
        .read_secret(&steps_ctx.names.secret_name)
        .await
    {
        Ok(Some((arn, credentials))) => {
            steps_ctx.secret_arn = Some(arn);
            steps_ctx.credentials = Some(credentials);
        }
        Ok(None) => return,
        Err(error) => {
            tracing::warn!(tenant = %steps_ctx.tenant.name, %error, "cannot read the tenant's credentials; re-ensuring");
            return;
        }
    }
    if let (Some(database), Some(schema), Some(role)) =
        (resources.database, resources.schema, resources.role)
    {
        steps_ctx.location = Some(crate::backends::DatabaseLocation {
            database,
            schema,
            role,
        });
    }
    steps_ctx.kube_secret_written = resources.kubernetes_secret.is_some();
    steps_ctx.kube_secret_version = resources.kubernetes_secret_version;
    steps_ctx.role_arn = resources.iam_role_arn;
}

/// The verdict for a provisioned tenant whose isolation is not enforced.
/// Drift a non-superuser admin cannot undo fails closed unless configured
/// otherwise: the role's login is disabled until a superuser fixes it.
async fn isolation_failure(
    tenant: &Tenant,
    ctx: &Context,
    steps_ctx: &TenantContext,
    measured: &Measurement,
) -> Verdict {
    let unrepairable = measured.unrepairable();
    let state = measured.summary();
    let reason = Reason::isolation(state);
    if unrepairable.is_empty() {
        return Verdict::new(
            TenantPhase::Failed,
            reason,
            format!("not enforced after repair: {}", measured.failures()),
        );
    }
    let remedy = unrepairable.join("; ");
    if ctx.engine.unrepairable_drift == UnrepairableDrift::ReportOnly {
        return Verdict::new(
            TenantPhase::Failed,
            reason,
            format!("tenantry cannot repair this (report-only): {remedy}"),
        );
    }
    // Failing closed revokes the access of the broken layer's resources
    // (the database login), through the engine like every revocation.
    let resources = tenant_resources();
    let fenced = Engine::new(&resources, ctx.engine.retry_policy())
        .revoke_access(&mut steps_ctx.fresh(), Some(Layer::Database))
        .await;
    let message = match fenced {
        Ok(()) => format!(
            "failed closed: login of {} disabled until the flag is removed (access returns by itself): {remedy}",
            steps_ctx.names.role
        ),
        Err(e) => format!("could not disable the login either ({e}): {remedy}"),
    };
    ctx.events
        .publish(
            tenant,
            EventType::Warning,
            &Reason::FailedClosed,
            "Probe",
            &message,
        )
        .await;
    Verdict::new(TenantPhase::Failed, reason, message)
}

/// Time left before a settled tenant, last measured at `verified_at`, is due
/// for its next probe; `None` when it is due now. Due from 90% of the
/// interval on (the low end of the resync jitter, so a timer-driven resync
/// always probes); the wait is jittered like a resync. A time in the future
/// (clock skew) or none at all (never measured, or unreadable) makes the
/// probe due.
fn probe_not_due(
    verified_at: Option<Timestamp>,
    interval: Duration,
    now: DateTime<Utc>,
) -> Option<Duration> {
    let elapsed = (now - verified_at?.0).to_std().ok()?;
    if elapsed >= interval.mul_f64(0.9) {
        return None;
    }
    let next = jitter(interval.mul_f64(0.9), interval.mul_f64(1.1));
    Some(next.saturating_sub(elapsed).max(Duration::from_secs(1)))
}

/// Time left before a failed tenant may be tried again, if any. A spec
/// change (a new generation) ends the wait at once.
fn backoff_remaining(
    status: &TenantStatus,
    generation: Option<i64>,
    engine: &EngineArgs,
    now: DateTime<Utc>,
) -> Option<Duration> {
    if status.phase != Some(TenantPhase::Failed) {
        return None;
    }
    let journal = status.provisioning.as_ref()?;
    if journal.operation != JournalOperation::Provision || journal.failed_generation != generation {
        return None;
    }
    let failed_at = journal.last_failure_time?.0;
    let wait = failure_backoff(
        journal.failed_attempts,
        engine.failure_backoff,
        engine.failure_backoff_max,
    );
    let retry_at = failed_at + chrono::Duration::from_std(wait).ok()?;
    (retry_at > now).then(|| (retry_at - now).to_std().unwrap_or_default())
}

/// Applies the verdict and writes the status only if it changed, so a
/// reconcile with nothing to do makes no write.
async fn finish(
    tenant: &Tenant,
    ctx: &Context,
    class: &ClassSettings,
    mut status: TenantStatus,
    verdict: &Verdict,
    outcome: Option<&str>,
) -> Result<Action, Error> {
    let now = Utc::now();
    match ctx.audit.last_row(&tenant.name_any()).await {
        Ok(Some((seq, hash))) => {
            status.audit_head = Some(crate::api::AuditHead {
                schema: ctx.audit.schema().to_string(),
                seq,
                hash,
            })
        }
        Ok(None) => {}
        // The head only helps verification; a missed update is caught up later.
        Err(error) => tracing::warn!(%error, "cannot read the audit chain head"),
    }
    apply_verdict(&mut status, verdict, tenant.metadata.generation, now);
    attestation::apply_isolation_conditions(&mut status, tenant.metadata.generation, now);
    // Counted before the status shows it, so whoever sees the new status
    // finds the outcome in the metrics too.
    if let Some(outcome) = outcome {
        ctx.metrics.record_outcome(outcome);
    }
    if Some(&status) != tenant.status.as_ref() {
        write_status(&ctx.client, &tenant.name_any(), &status).await?;
    }
    Ok(resync(ctx.probe_interval(class)))
}

/// The deletion policy in force: the spec's (which holds the class's
/// default when the Tenant sets none), unless the cancel annotation says
/// `Retain`. The annotation only ever cancels a destruction: whoever may
/// annotate a Tenant must not be able to turn a `Retain` into a `Delete`.
fn effective_deletion_policy(tenant: &Tenant, spec: &TenantSpec) -> DeletionPolicy {
    match tenant
        .annotations()
        .get(DELETION_POLICY_ANNOTATION)
        .map(String::as_str)
    {
        Some("Retain") => DeletionPolicy::Retain,
        _ => spec.deletion.policy.unwrap_or_default(),
    }
}

/// How long a `Delete` waits before destroying data: the spec's grace
/// period, never shorter than the class's minimum.
fn effective_grace_period(spec: &TenantSpec, class: &ClassRules) -> Duration {
    let grace = spec
        .deletion
        .grace_period
        .as_deref()
        .and_then(|g| parse_grace_period(g).ok())
        .unwrap_or(Duration::from_secs(72 * 3600));
    class.min_grace_period.map_or(grace, |min| grace.max(min))
}

async fn cleanup(
    tenant: &Tenant,
    ctx: &Context,
    audit: &Arc<dyn AuditSink>,
) -> Result<Action, Error> {
    let name = tenant.name_any();
    let tref = tenant_ref(tenant)?;
    let class = match resolve_class(tenant, ctx).await? {
        Ok(class) => class,
        Err(action) => return Ok(action),
    };
    // A class that now forbids the tenant's mode must not stop its deletion.
    let spec = with_class_defaults(tenant, &class.rules);
    let names = match TenantNames::new(&name, &class.rules.bucket_prefix) {
        Ok(names) => names,
        // Nothing can have been made for a name that maps to no resource.
        Err(_) => {
            remove_finalizer(tenant, &ctx.client).await?;
            return Ok(Action::await_change());
        }
    };
    let mut status = tenant.status.clone().unwrap_or_default();

    let policy = effective_deletion_policy(tenant, &spec);
    if policy == DeletionPolicy::Retain
        && status
            .provisioning
            .as_ref()
            .is_none_or(|j| j.operation != JournalOperation::Release)
    {
        record(
            audit.as_ref(),
            AuditAction::TenantDelete,
            "tenant",
            audit::Outcome::Ok,
            serde_json::json!({"policy": "Retain"}),
        )
        .await?;
    }
    loop {
        let situation = Situation::deleting(&spec, policy, status.deletion.as_ref());
        match lifecycle::next(&situation, Utc::now()) {
            lifecycle::Next::Run(Lifecycle::RevokeAccess(_)) => {
                let parts = (&spec, &tref, &names);
                revoke_for_deletion(tenant, ctx, audit, &class, parts, &mut status).await?;
            }
            lifecycle::Next::Wait(wait) => {
                return Ok(Action::requeue(
                    wait.min(class.probe_interval) + Duration::from_millis(100),
                ));
            }
            lifecycle::Next::Run(path) => {
                let parts = (tref, names, spec);
                return finish_deletion(tenant, ctx, audit, parts, &class, status, path).await;
            }
        }
    }
}

/// The start of a `Delete` deletion: the login disabled and the Kubernetes
/// Secret removed at once, the data kept until the grace period ends.
async fn revoke_for_deletion(
    tenant: &Tenant,
    ctx: &Context,
    audit: &Arc<dyn AuditSink>,
    class: &ClassSettings,
    (spec, tref, names): (&TenantSpec, &TenantRef, &TenantNames),
    status: &mut TenantStatus,
) -> Result<(), Error> {
    let name = tenant.name_any();
    let grace = effective_grace_period(spec, &class.rules);
    // As the Tenant wrote it, unless the class's minimum lengthened it.
    let grace_period = match spec.deletion.grace_period.clone() {
        Some(asked) if parse_grace_period(&asked) == Ok(grace) => asked,
        _ => humantime::format_duration(grace).to_string(),
    };
    record(
        audit.as_ref(),
        AuditAction::TenantDelete,
        "tenant",
        audit::Outcome::Ok,
        serde_json::json!({"policy": "Delete", "gracePeriod": grace_period}),
    )
    .await?;
    // Every resource takes its access away, through the engine.
    let mut steps_ctx = TenantContext::new(
        tref.clone(),
        names.clone(),
        spec.clone(),
        class.backends.clone(),
        audit.clone(),
    );
    let resources = tenant_resources();
    let mut journal = status.provisioning.clone().unwrap_or_else(new_journal);
    let mut store = StatusJournal {
        client: &ctx.client,
        name: name.clone(),
        generation: tenant.metadata.generation,
        status: status.clone(),
        working_phase: TenantPhase::Deleting,
        audit: audit.clone(),
    };
    Engine::new(&resources, ctx.engine.retry_policy())
        .run(
            &mut steps_ctx,
            &mut journal,
            &mut store,
            Lifecycle::RevokeAccess(None),
        )
        .await?;
    let deleted_at = tenant
        .metadata
        .deletion_timestamp
        .as_ref()
        .and_then(|t| DateTime::from_timestamp(t.0.as_second(), 0))
        .unwrap_or_else(Utc::now);
    let destroy_after = deleted_at + chrono::Duration::from_std(grace).unwrap_or_default();
    status.deletion = Some(DeletionStatus {
        access_revoked_at: Some(Timestamp::now()),
        destroy_after: Some(destroy_after.into()),
    });
    if let Some(r) = status.resources.as_mut() {
        r.kubernetes_secret = None;
    }
    let message = format!(
        "access revoked; data is destroyed after {} unless annotation {DELETION_POLICY_ANNOTATION}=Retain is set",
        destroy_after.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    apply_verdict(
        status,
        &Verdict::new(
            TenantPhase::Deleting,
            Reason::AccessRevoked,
            message.clone(),
        ),
        tenant.metadata.generation,
        Utc::now(),
    );
    write_status(&ctx.client, &name, status).await?;
    ctx.events
        .publish(
            tenant,
            EventType::Normal,
            &Reason::AccessRevoked,
            "Delete",
            &message,
        )
        .await;
    Ok(())
}

/// The last part of a deletion, through the engine: every step released
/// (`Retain`) or removed (`Delete`), in reverse order, journaled and retried;
/// then the chain ends on purpose and the finalizer goes.
async fn finish_deletion(
    tenant: &Tenant,
    ctx: &Context,
    audit: &Arc<dyn AuditSink>,
    (tref, names, spec): (TenantRef, TenantNames, TenantSpec),
    class: &ClassSettings,
    status: TenantStatus,
    path: Lifecycle,
) -> Result<Action, Error> {
    let name = tenant.name_any();
    let mut steps_ctx =
        TenantContext::new(tref, names, spec, class.backends.clone(), audit.clone());
    let resources = tenant_resources();
    let engine = Engine::new(&resources, ctx.engine.retry_policy());
    let mut journal = status.provisioning.clone().unwrap_or_else(new_journal);
    let mut store = StatusJournal {
        client: &ctx.client,
        name: name.clone(),
        generation: tenant.metadata.generation,
        status,
        working_phase: TenantPhase::Deleting,
        audit: audit.clone(),
    };
    let outcome = engine
        .run(&mut steps_ctx, &mut journal, &mut store, path)
        .await?;
    let policy = if path == Lifecycle::Release {
        DeletionPolicy::Retain
    } else {
        DeletionPolicy::Delete
    };
    if let Outcome::RemovalStuck { step, error } = outcome {
        let mut status = store.status;
        let verdict = Verdict::new(
            TenantPhase::Deleting,
            Reason::DeletionStuck,
            format!("could not remove {step}, will retry: {error}"),
        );
        apply_verdict(
            &mut status,
            &verdict,
            tenant.metadata.generation,
            Utc::now(),
        );
        write_status(&ctx.client, &name, &status).await?;
        ctx.events
            .publish(
                tenant,
                EventType::Warning,
                &verdict.reason,
                "Delete",
                &verdict.message,
            )
            .await;
        return Ok(Action::requeue(Duration::from_secs(30)));
    }
    // The trail outlives the tenant (it holds no customer data); its last
    // row says the chain ended on purpose, and `audit verify` expects a gone
    // tenant's chain to end with one of the two. A retry after a failed
    // finalizer removal must not end the chain twice.
    let (last_action, reason, message) = match policy {
        DeletionPolicy::Retain => (
            AuditAction::TenantReleased,
            Reason::Retained,
            "Tenant deleted with policy Retain: resources kept and released for adoption; login disabled",
        ),
        DeletionPolicy::Delete => (
            AuditAction::TenantTombstone,
            Reason::Deleted,
            "every resource of the tenant was removed (the KMS key is scheduled for deletion)",
        ),
    };
    let ended = ctx.audit.head(&name).await.map_err(StepError::from)?
        == Some((last_action.to_string(), tenant.uid()));
    if !ended {
        let policy = match policy {
            DeletionPolicy::Retain => "Retain",
            DeletionPolicy::Delete => "Delete",
        };
        record(
            steps_ctx.audit.as_ref(),
            last_action,
            "tenant",
            audit::Outcome::Ok,
            serde_json::json!({"policy": policy}),
        )
        .await?;
    }
    ctx.events
        .publish(tenant, EventType::Normal, &reason, "Delete", message)
        .await;
    remove_finalizer(tenant, &ctx.client).await?;
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{CredentialsSpec, TenantResources, TenantSpec};

    fn tenant(name: &str, mode: IsolationMode) -> Tenant {
        let mut spec = TenantSpec {
            display_name: None,
            class: None,
            database: Default::default(),
            storage: Default::default(),
            credentials: CredentialsSpec {
                namespace: "apps".into(),
                secret_name: None,
            },
            deletion: Default::default(),
            suspended: false,
        };
        spec.database.isolation = Some(mode);
        Tenant::new(name, spec)
    }

    fn flags() -> ClassRules {
        ClassRules {
            name: crate::class_registry::FLAGS_CLASS.into(),
            server: "db:5432/app".into(),
            bucket_prefix: "tenantry".into(),
            default_mode: IsolationMode::Schema,
            allow_override: true,
            max_connection_limit: None,
            deletion_policy: DeletionPolicy::Retain,
            grace_period: "72h".into(),
            min_grace_period: None,
            namespaces: Default::default(),
        }
    }

    fn check(t: &Tenant, class: &ClassRules) -> Result<(TenantNames, Duration), Refusal> {
        let spec = effective_spec(t, class)?;
        validate(t, &spec, class)
    }

    #[test]
    fn a_valid_tenant_passes_validation() {
        let (names, grace) = check(&tenant("acme", IsolationMode::Schema), &flags()).unwrap();
        assert_eq!(names.role, "t_acme");
        assert_eq!(grace, Duration::from_secs(72 * 3600));
    }

    #[test]
    fn changing_the_isolation_mode_of_a_provisioned_tenant_is_refused() {
        let mut t = tenant("acme", IsolationMode::Database);
        t.status = Some(TenantStatus {
            resources: Some(TenantResources {
                database: Some("tenantry".into()),
                ..Default::default()
            }),
            ..Default::default()
        });
        let err = check(&t, &flags()).unwrap_err();
        assert_eq!(err.reason, Reason::IsolationModeChangeRefused);
        assert!(
            err.message
                .contains("cannot change from Schema to Database"),
            "{err:?}"
        );
    }

    #[test]
    fn a_bad_grace_period_is_named() {
        let mut t = tenant("acme", IsolationMode::Schema);
        t.spec.deletion.grace_period = Some("soon".into());
        assert!(
            check(&t, &flags())
                .unwrap_err()
                .message
                .contains("gracePeriod")
        );
    }

    #[test]
    fn the_cancel_annotation_overrides_the_spec_policy() {
        let mut t = tenant("acme", IsolationMode::Schema);
        t.spec.deletion.policy = Some(DeletionPolicy::Delete);
        assert_eq!(
            effective_deletion_policy(&t, &t.spec),
            DeletionPolicy::Delete
        );
        t.metadata.annotations =
            Some([(DELETION_POLICY_ANNOTATION.to_string(), "Retain".to_string())].into());
        assert_eq!(
            effective_deletion_policy(&t, &t.spec),
            DeletionPolicy::Retain
        );
    }

    #[test]
    fn the_annotation_only_cancels_a_destruction_and_never_orders_one() {
        let mut t = tenant("acme", IsolationMode::Schema);
        t.spec.deletion.policy = Some(DeletionPolicy::Retain);
        t.metadata.annotations =
            Some([(DELETION_POLICY_ANNOTATION.to_string(), "Delete".to_string())].into());
        assert_eq!(
            effective_deletion_policy(&t, &t.spec),
            DeletionPolicy::Retain
        );
    }

    #[test]
    fn a_class_minimum_grace_period_refuses_less_and_lengthens_a_deletion() {
        let class = ClassRules {
            name: "regulated".into(),
            min_grace_period: Some(Duration::from_secs(24 * 3600)),
            ..flags()
        };
        let mut t = tenant("acme", IsolationMode::Schema);
        t.spec.deletion.policy = Some(DeletionPolicy::Delete);
        t.spec.deletion.grace_period = Some("0s".into());
        let err = check(&t, &class).unwrap_err();
        assert_eq!(err.reason, Reason::GracePeriodBelowClassMinimum);
        assert!(err.message.contains("regulated"), "{err:?}");
        // A Tenant that got past the check (edited just before its deletion)
        // still waits the class's minimum.
        let spec = with_class_defaults(&t, &class);
        assert_eq!(
            effective_grace_period(&spec, &class),
            Duration::from_secs(24 * 3600)
        );
        t.spec.deletion.grace_period = Some("48h".into());
        assert!(check(&t, &class).is_ok());
        let spec = with_class_defaults(&t, &class);
        assert_eq!(
            effective_grace_period(&spec, &class),
            Duration::from_secs(48 * 3600)
        );
    }

    #[test]
    fn the_class_fills_in_what_the_tenant_leaves_out() {
        let mut t = tenant("acme", IsolationMode::Schema);
        t.spec.database.isolation = None;
        let class = ClassRules {
            default_mode: IsolationMode::Database,
            deletion_policy: DeletionPolicy::Delete,
            grace_period: "1h".into(),
            ..flags()
        };
        let spec = effective_spec(&t, &class).unwrap();
        assert_eq!(spec.database.isolation, Some(IsolationMode::Database));
        assert_eq!(spec.deletion.policy, Some(DeletionPolicy::Delete));
        assert_eq!(spec.deletion.grace_period.as_deref(), Some("1h"));
        // What the tenant says wins.
        t.spec.deletion.grace_period = Some("2h".into());
        assert_eq!(
            effective_spec(&t, &class)
                .unwrap()
                .deletion
                .grace_period
                .as_deref(),
            Some("2h")
        );
    }

    #[test]
    fn a_class_without_override_refuses_another_mode_by_name() {
        let class = ClassRules {
            name: "enterprise".into(),
            default_mode: IsolationMode::Database,
            allow_override: false,
            ..flags()
        };
        let err = check(&tenant("acme", IsolationMode::Schema), &class).unwrap_err();
        assert_eq!(err.reason, Reason::IsolationModeNotAllowed);
        assert!(err.message.contains("enterprise"), "{err:?}");
        assert!(check(&tenant("acme", IsolationMode::Database), &class).is_ok());
    }

    #[test]
    fn a_connection_limit_above_the_class_maximum_is_refused_with_the_maximum() {
        let class = ClassRules {
            name: "shared".into(),
            max_connection_limit: Some(50),
            ..flags()
        };
        let mut greedy = tenant("acme", IsolationMode::Schema);
        greedy.spec.database.connection_limit = 10_000;
        let err = check(&greedy, &class).unwrap_err();
        assert_eq!(err.reason, Reason::ConnectionLimitAboveClassMaximum);
        assert!(
            err.message.contains("10000") && err.message.contains("50"),
            "{err:?}"
        );
        greedy.spec.database.connection_limit = 50;
        assert!(check(&greedy, &class).is_ok());
        greedy.spec.database.connection_limit = 10_000;
        assert!(check(&greedy, &flags()).is_ok(), "no class, no cap");
    }

    #[test]
    fn moving_a_placed_tenant_to_another_server_or_bucket_prefix_is_refused() {
        let mut t = tenant("acme", IsolationMode::Schema);
        t.status = Some(TenantStatus {
            placement: Some(Placement {
                class: "standard".into(),
                server: "db:5432/app".into(),
                class_generation: Some(1),
            }),
            resources: Some(TenantResources {
                bucket: Some("tenantry-acme".into()),
                ..Default::default()
            }),
            ..Default::default()
        });
        let elsewhere = ClassRules {
            name: "enterprise".into(),
            server: "db2:5432/app".into(),
            ..flags()
        };
        let err = check(&t, &elsewhere).unwrap_err();
        assert_eq!(err.reason, Reason::PlacementChangeRefused);
        assert!(
            err.message.contains("db:5432/app") && err.message.contains("standard"),
            "{err:?}"
        );
        let other_prefix = ClassRules {
            bucket_prefix: "other".into(),
            ..flags()
        };
        let err = check(&t, &other_prefix).unwrap_err();
        assert_eq!(err.reason, Reason::PlacementChangeRefused);
        assert!(err.message.contains("tenantry-acme"), "{err:?}");
        assert!(check(&t, &flags()).is_ok());
    }

    #[test]
    fn a_recently_measured_tenant_is_probed_again_only_when_due() {
        let interval = Duration::from_secs(300);
        let now = Utc::now();
        let ago = |secs: i64| Some(Timestamp::from(now - chrono::Duration::seconds(secs)));
        // Measured 100 s ago: the next probe is 170..230 s away.
        let wait = probe_not_due(ago(100), interval, now).expect("not due");
        assert!(
            wait >= Duration::from_secs(169) && wait <= Duration::from_secs(231),
            "{wait:?}"
        );
        // From 90% of the interval on (where the resync timer fires), due.
        assert_eq!(probe_not_due(ago(270), interval, now), None);
        assert_eq!(probe_not_due(ago(3600), interval, now), None);
        // Never measured (or unreadable), or in the future (clock skew): due.
        assert_eq!(probe_not_due(None, interval, now), None);
        assert_eq!(probe_not_due(ago(-60), interval, now), None);
        // Just measured (the event of its own status write): a whole interval.
        let wait = probe_not_due(ago(0), interval, now).expect("not due");
        assert!(wait >= Duration::from_secs(269), "{wait:?}");
    }

    #[test]
    fn a_failed_tenant_waits_out_its_backoff_unless_the_spec_changes() {
        let engine = EngineArgs {
            retry_attempts: 1,
            retry_base_delay: Duration::ZERO,
            retry_max_delay: Duration::ZERO,
            failure_backoff: Duration::from_secs(60),
            failure_backoff_max: Duration::from_secs(3600),
            probe_interval: Duration::from_secs(300),
            unrepairable_drift: crate::config::UnrepairableDrift::FailClosed,
        };
        let now = Utc::now();
        let status = TenantStatus {
            phase: Some(TenantPhase::Failed),
            provisioning: Some(ProvisioningJournal {
                failed_attempts: 1,
                failed_generation: Some(2),
                last_failure_time: Some((now - chrono::Duration::seconds(10)).into()),
                ..new_journal()
            }),
            ..Default::default()
        };
        let wait = backoff_remaining(&status, Some(2), &engine, now).unwrap();
        assert!(
            wait <= Duration::from_secs(50) && wait >= Duration::from_secs(49),
            "{wait:?}"
        );
        assert_eq!(backoff_remaining(&status, Some(3), &engine, now), None);
    }
}
