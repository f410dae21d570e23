//! Prometheus metrics and the health endpoints.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use kube::runtime::reflector::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api::{IsolationState, Tenant};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// A fixed category (backend or `kubernetes`), never an object name.
    pub category: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

/// The operator's own counters.
#[derive(Clone)]
pub struct Metrics {
    pub reconciles: Counter,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub provisioning_outcomes: Family<OutcomeLabels, Counter>,
    /// Drift found by a probe, repaired and verified by a second probe.
    pub drift_repairs: Counter,
    /// Provisioning attempts that were rolled back.
    pub rollbacks: Counter,
    /// 1 while this process holds the leader Lease (or runs without leader
    /// election and has started its controller), else 0.
    pub leader: Gauge,
    /// Probes that were due but found every probe slot busy (deferred).
    pub probes_deferred: Counter,
    /// The time the probe slots need to probe every tenant once, from the
    /// probes measured so far; a class's interval never goes below it.
    pub probe_round_seconds: Gauge<f64, AtomicU64>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            reconciles: Counter::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            provisioning_outcomes: Family::default(),
            drift_repairs: Counter::default(),
            rollbacks: Counter::default(),
            leader: Gauge::default(),
            probes_deferred: Counter::default(),
            probe_round_seconds: Gauge::default(),
        };
        registry.register(
            "tenantry_reconciles",
            "Reconciles of Tenants",
            m.reconciles.clone(),
        );
        registry.register(
            "tenantry_reconcile_errors",
            "Reconciles that ended in an error, by category",
            m.reconcile_errors.clone(),
        );
        registry.register(
            "tenantry_reconcile_duration_seconds",
            "Time one reconcile of a Tenant took",
            m.reconcile_duration.clone(),
        );
        registry.register(
            "tenantry_provisioning_outcomes",
            "Ends of provisioning runs: provisioned, rolled_back, removed, removal_stuck",
            m.provisioning_outcomes.clone(),
        );
        registry.register(
            "tenantry_drift_repairs",
            "Isolation drift found by a probe, repaired and verified",
            m.drift_repairs.clone(),
        );
        registry.register(
            "tenantry_rollbacks",
            "Provisioning attempts rolled back (nothing left behind)",
            m.rollbacks.clone(),
        );
        registry.register(
            "tenantry_leader",
            "1 while this process leads (holds the leader Lease) and reconciles",
            m.leader.clone(),
        );
        registry.register(
            "tenantry_probes_deferred",
            "Isolation probes that were due while every probe slot was busy, tried again a little later",
            m.probes_deferred.clone(),
        );
        registry.register(
            "tenantry_probe_round_seconds",
            "Time the probe slots need to probe every tenant once at the mean probe time; \
             a class's probe interval stretches to it when it is longer",
            m.probe_round_seconds.clone(),
        );
        let backend = backend_calls();
        registry.register(
            "tenantry_backend_calls",
            "Calls this process made to the systems tenants live on, by backend, operation, \
             kind (read: changes nothing; write) and outcome",
            backend.calls.clone(),
        );
        registry.register(
            "tenantry_backend_call_duration_seconds",
            "Time of one call to a backend",
            backend.duration.clone(),
        );
        m
    }

    /// Adds the gauges computed at each scrape from the controller's store:
    /// `tenantry_tenants{phase}` and `tenantry_tenant_isolation{layer,state}`.
    pub fn register_store(registry: &mut Registry, store: Store<Tenant>) {
        registry.register_collector(Box::new(StoreCollector { store }));
    }

    /// Counts the end of a provisioning run.
    pub fn record_outcome(&self, outcome: &str) {
        if outcome == "rolled_back" {
            self.rollbacks.inc();
        }
        self.provisioning_outcomes
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// Records the reconcile's duration when dropped, however it ends.
    pub fn reconcile_timer(&self) -> ReconcileTimer {
        self.reconciles.inc();
        ReconcileTimer {
            start: Instant::now(),
            histogram: self.reconcile_duration.clone(),
        }
    }
}

pub struct ReconcileTimer {
    start: Instant,
    histogram: Histogram,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

/// Labels of one backend call: all from fixed sets, never an object name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// postgres, kms, s3, secretsmanager or kubernetes.
    pub backend: &'static str,
    /// The API operation (e.g. `CreateKey`), or for PostgreSQL the kind of
    /// statement (e.g. `SELECT`, `DDL`).
    pub operation: &'static str,
    /// `read` (changes nothing) or `write`.
    pub kind: &'static str,
    /// `ok` or `error`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabel {
    pub backend: &'static str,
}

/// Read or write, for `tenantry_backend_calls_total{kind}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallKind {
    Read,
    Write,
}

impl CallKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
        }
    }
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The process-wide backend call counters. The backends are built far from
/// the registry (and tests build them without one), so they count into
/// these, and [`Metrics::register`] exposes them.
pub struct BackendCalls {
    pub calls: Family<CallLabels, Counter>,
    pub duration: HistogramFamily<BackendLabel>,
}

fn call_duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

pub fn backend_calls() -> &'static BackendCalls {
    static CALLS: std::sync::LazyLock<BackendCalls> = std::sync::LazyLock::new(|| BackendCalls {
        calls: Family::default(),
        duration: Family::new_with_constructor(call_duration_histogram),
    });
    &CALLS
}

/// Counts one finished call to a backend.
pub fn record_call(
    backend: &'static str,
    operation: &'static str,
    kind: CallKind,
    ok: bool,
    elapsed: std::time::Duration,
) {
    let calls = backend_calls();
    calls
        .calls
        .get_or_create(&CallLabels {
            backend,
            operation,
            kind: kind.as_str(),
            outcome: if ok { "ok" } else { "error" },
        })
        .inc();
    calls
        .duration
        .get_or_create(&BackendLabel { backend })
        .observe(elapsed.as_secs_f64());
}

/// Runs one call to a backend and counts it, with its outcome and time.
pub async fn observe<T, E>(
    backend: &'static str,
    operation: &'static str,
    kind: CallKind,
    call: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let start = Instant::now();
    let result = call.await;
    record_call(backend, operation, kind, result.is_ok(), start.elapsed());
    result
}

/// The kinds of PostgreSQL statement tenantry runs, for
/// `tenantry_backend_calls_total{backend="postgres"}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sql {
    /// A query (SELECT, also of functions such as `set_config` or
    /// `pg_advisory_xact_lock`): a read.
    Select,
    Insert,
    Update,
    Delete,
    /// CREATE, ALTER, DROP, COMMENT, GRANT, REVOKE, ...: a write.
    Ddl,
    /// A setting of the session or transaction (`SET`, `RESET`,
    /// `set_config`): changes nothing stored, a read.
    Session,
    /// INSERT, UPDATE or DELETE that an isolation probe tries as the tenant
    /// in a transaction that is always rolled back: a write attempt (it must
    /// be refused or reach nothing), counted apart from real writes.
    RolledBackDml,
}

impl Sql {
    fn operation(self) -> &'static str {
        match self {
            Self::Select => "SELECT",
            Self::Insert => "INSERT",
            Self::Update => "UPDATE",
            Self::Delete => "DELETE",
            Self::Ddl => "DDL",
            Self::Session => "SET",
            Self::RolledBackDml => "PROBE_DML_ROLLED_BACK",
        }
    }

    fn kind(self) -> CallKind {
        match self {
            Self::Select | Self::Session => CallKind::Read,
            Self::Insert | Self::Update | Self::Delete | Self::Ddl | Self::RolledBackDml => {
                CallKind::Write
            }
        }
    }
}

/// Runs one PostgreSQL statement (the future of sqlx's `execute`/`fetch_*`)
/// and counts it.
pub async fn sql<T>(
    statement: Sql,
    call: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    observe("postgres", statement.operation(), statement.kind(), call).await
}

/// Whether an AWS API operation changes nothing: Get*, Head*, List*,
/// Describe*, and the KMS data operations that only use a key.
pub fn aws_operation_kind(operation: &str) -> CallKind {
    const READ_PREFIXES: &[&str] = &["Get", "Head", "List", "Describe"];
    const READ_OPERATIONS: &[&str] = &["Encrypt", "Decrypt", "GenerateDataKey", "ReEncrypt"];
    if READ_PREFIXES.iter().any(|p| operation.starts_with(p))
        || READ_OPERATIONS.contains(&operation)
    {
        CallKind::Read
    } else {
        CallKind::Write
    }
}

/// Computes, at each scrape, the gauges that describe the Tenants in the
/// controller's store (only this process's shard and selector).
#[derive(Debug)]
struct StoreCollector {
    store: Store<Tenant>,
}

const PHASES: &[&str] = &[
    "Pending",
    "Provisioning",
    "Ready",
    "Suspended",
    "RollingBack",
    "Failed",
    "Deleting",
];
const LAYERS: &[&str] = &["database", "storage", "encryption"];
const STATES: &[IsolationState] = &[
    IsolationState::Enforced,
    IsolationState::Inert,
    IsolationState::Broken,
    IsolationState::Unknown,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LayerLabels {
    layer: &'static str,
    state: &'static str,
}

/// Counts Tenants by phase and by layer state. A Tenant without a status
/// (or a phase) yet counts as `Pending`; a layer never measured is not
/// counted in that layer.
fn tally(tenants: &[Arc<Tenant>]) -> (Vec<i64>, Vec<[i64; 4]>) {
    let mut phases = vec![0i64; PHASES.len()];
    let mut layers = vec![[0i64; 4]; LAYERS.len()];
    for tenant in tenants {
        let status = tenant.status.as_ref();
        let phase = status
            .and_then(|s| s.phase)
            .map_or("Pending", |p| p.as_str());
        if let Some(i) = PHASES.iter().position(|p| *p == phase) {
            phases[i] += 1;
        }
        let Some(isolation) = status.and_then(|s| s.isolation.as_ref()) else {
            continue;
        };
        let reports = [
            isolation.database.as_ref(),
            isolation.storage.as_ref(),
            isolation.encryption.as_ref(),
        ];
        for (layer, report) in reports.into_iter().enumerate() {
            if let Some(report) = report
                && let Some(s) = STATES.iter().position(|s| *s == report.state)
            {
                layers[layer][s] += 1;
            }
        }
    }
    (phases, layers)
}

impl Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (phases, layers) = tally(&self.store.state());
        let mut family = encoder.encode_descriptor(
            "tenantry_tenants",
            "Tenants this process manages, by status.phase (Pending also counts those without a status yet)",
            None,
            MetricType::Gauge,
        )?;
        for (phase, count) in PHASES.iter().zip(phases) {
            ConstGauge::new(count).encode(family.encode_family(&PhaseLabel { phase })?)?;
        }
        let mut family = encoder.encode_descriptor(
            "tenantry_tenant_isolation",
            "Tenants this process manages, by isolation layer and its measured state",
            None,
            MetricType::Gauge,
        )?;
        for (layer, counts) in LAYERS.iter().zip(layers) {
            for (state, count) in STATES.iter().zip(counts) {
                let labels = LayerLabels {
                    layer,
                    state: state.as_str(),
                };
                ConstGauge::new(count).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[derive(Clone)]
struct HttpState {
    registry: Arc<Registry>,
    ready: Arc<AtomicBool>,
}

/// Serves /metrics, /healthz (the process runs) and /readyz (the process
/// has started: as leader, or as a standby ready to take over; false again
/// once shutdown began) until `stop` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Registry,
    ready: Arc<AtomicBool>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = HttpState {
        registry: Arc::new(registry),
        ready,
    };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}
