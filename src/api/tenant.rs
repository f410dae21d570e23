//! The `Tenant` resource: its spec (what a customer gets), its status (the
//! journal, the attestation, the resources, the conditions) and the typed
//! state they hold (phases, layers, timestamps, step failures).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A customer of the platform, and the isolated infrastructure that belongs to it.
///
/// The object's name is the tenant id. tenantry creates, for each Tenant, a
/// PostgreSQL role with a schema (or a database), a KMS key, an S3 bucket
/// encrypted with that key, and the database credentials in AWS Secrets Manager
/// and in a Kubernetes Secret: all of them, or none.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "tenantry.dev",
    version = "v1alpha1",
    kind = "Tenant",
    plural = "tenants",
    shortname = "tnt",
    category = "tenantry",
    status = "TenantStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase","description":"Where the tenant is in its lifecycle"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status","description":"Whether every resource of the tenant exists and is configured"}"#,
    printcolumn = r#"{"name":"Isolation","type":"string","jsonPath":".status.isolation.summary","description":"The weakest isolation layer as measured: Enforced, Inert, Broken or Unknown"}"#,
    printcolumn = r#"{"name":"Class","type":"string","jsonPath":".status.placement.class","description":"The TenantClass the tenant was provisioned with"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".status.resources.isolationMode","description":"Schema (a schema in the shared database) or Database (a database of its own)"}"#,
    printcolumn = r#"{"name":"Secret","type":"string","priority":1,"jsonPath":".status.resources.kubernetesSecret","description":"namespace/name of the credentials Secret applications mount"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TenantSpec {
    /// Human-readable name of the customer, used in tags and descriptions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub display_name: Option<String>,

    /// The TenantClass (isolation tier) of the tenant: which PostgreSQL
    /// server, default isolation mode, region, bucket prefix and policies.
    /// Left out: the class annotated `tenantry.dev/is-default-class`, else
    /// the operator's flags. The class a tenant was first provisioned with
    /// stays its class; moving a live tenant to another server is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub class: Option<String>,

    /// How the tenant's data is separated in PostgreSQL.
    #[serde(default)]
    pub database: DatabaseSpec,

    /// The tenant's S3 bucket.
    #[serde(default)]
    pub storage: StorageSpec,

    /// Where the application reads the tenant's credentials.
    pub credentials: CredentialsSpec,

    /// What happens to the tenant's resources when the Tenant is deleted.
    #[serde(default)]
    pub deletion: DeletionSpec,

    /// Revoke the tenant's access (database login disabled, Kubernetes Secret
    /// removed) without deleting anything. Setting it back restores access.
    #[serde(default)]
    pub suspended: bool,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSpec {
    /// `Schema`: a schema of its own in the shared database. `Database`: a
    /// dedicated database (stronger separation, more cost). Left out: the
    /// class's default mode (`Schema` without a class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<IsolationMode>,

    /// Most concurrent connections the tenant's role may open.
    #[serde(default = "default_connection_limit")]
    #[schemars(range(min = 1, max = 10000))]
    pub connection_limit: i32,
}

impl Default for DatabaseSpec {
    fn default() -> Self {
        Self {
            isolation: None,
            connection_limit: default_connection_limit(),
        }
    }
}

fn default_connection_limit() -> i32 {
    20
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum IsolationMode {
    #[default]
    Schema,
    Database,
}

impl std::fmt::Display for IsolationMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Schema => "Schema",
            Self::Database => "Database",
        })
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Keep every version of every object in the bucket.
    #[serde(default = "default_true")]
    pub versioning: bool,
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self { versioning: true }
    }
}

fn default_true() -> bool {
    true
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSpec {
    /// Namespace of the Kubernetes Secret with the tenant's credentials. It must
    /// exist: tenantry does not create namespaces.
    #[schemars(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub namespace: String,

    /// Name of that Secret; `<tenant>-credentials` when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub secret_name: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeletionSpec {
    /// `Retain` keeps every resource (still tagged, so a Tenant of the same
    /// name adopts them later); `Delete` destroys them after the grace period.
    /// Left out: the class's default (`Retain` without a class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<DeletionPolicy>,

    /// With `Delete`: how long after deletion access stays revoked before the
    /// data is destroyed, as a duration such as `72h`, `30m` or `90s`. Setting
    /// the annotation `tenantry.dev/deletion-policy: Retain` on the
    /// terminating Tenant within this time cancels the destruction. Left
    /// out: the class's default (`72h` without a class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub grace_period: Option<String>,
}

/// The grace period of a Delete when neither the Tenant nor its class sets one.
pub const DEFAULT_GRACE_PERIOD: &str = "72h";

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    #[default]
    Retain,
    Delete,
}

/// What tenantry observed and did, written only by the operator.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<TenantPhase>,

    /// kstatus conditions: `Ready`, `Reconciling`, `Stalled`, and one per
    /// isolation layer. A list keyed by `type`, so server-side apply merges
    /// them one by one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// What exists for this tenant, by backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<TenantResources>,

    /// The provisioning journal: written before and after every step so an
    /// operator restarted at any point resumes or rolls back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning: Option<ProvisioningJournal>,

    /// Progress of a deletion with policy `Delete`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion: Option<DeletionStatus>,

    /// The isolation attestation: every layer as measured by probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<IsolationStatus>,

    /// Where the tenant was first provisioned. A tenant stays on its class's
    /// server: a later change of class or server is refused, not migrated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,

    /// The newest row of the tenant's audit chain when this status was
    /// written. Kept outside the database, it lets `tenantry audit verify`
    /// notice rows removed from the end of a chain, which the chain itself
    /// cannot show.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_head: Option<AuditHead>,
}

/// The class and PostgreSQL server a tenant lives on.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// The TenantClass, or `(operator flags)` when none applied.
    pub class: String,
    /// `host:port/database` of the admin connection (never credentials).
    pub server: String,
    /// The class's `metadata.generation` the tenant was last provisioned
    /// with: a newer one makes the operator apply the class again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_generation: Option<i64>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditHead {
    /// The audit schema the chain lives in.
    #[serde(default = "default_audit_schema")]
    pub schema: String,
    pub seq: i64,
    pub hash: String,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum TenantPhase {
    Pending,
    Provisioning,
    Ready,
    Suspended,
    RollingBack,
    Failed,
    Deleting,
}

impl TenantPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Provisioning => "Provisioning",
            Self::Ready => "Ready",
            Self::Suspended => "Suspended",
            Self::RollingBack => "RollingBack",
            Self::Failed => "Failed",
            Self::Deleting => "Deleting",
        }
    }
}

/// A kstatus-style condition.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// What the condition is about: `Ready`, `Reconciling`, `Stalled`,
    /// `DatabaseIsolated`, `StorageIsolated`, `EncryptionAtRest`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    /// Human-readable details; empty when there is nothing to add.
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// RFC 3339 time of the last change of `status`.
    pub last_transition_time: String,
}

/// Names and ids of everything tenantry made for the tenant.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantResources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_arn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_alias: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_arn: Option<String>,
    /// The isolation mode the tenant's data lives in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation_mode: Option<IsolationMode>,
    /// `<namespace>/<name>` of the Kubernetes Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_secret: Option<String>,
    /// The resourceVersion of that Secret as tenantry last wrote or checked
    /// it: another one means someone changed or deleted it, and tenantry
    /// writes it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_secret_version: Option<String>,
    /// ARN of the tenant's IAM role, when its class gives it one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iam_role_arn: Option<String>,
    /// `<namespace>/<name>` of the ServiceAccount its workloads run as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum JournalOperation {
    /// Ensuring every step, in order.
    Provision,
    /// Removing the steps a failed provisioning completed, in reverse.
    RollBack,
    /// Removing every step, in reverse, for a deletion with policy `Delete`.
    Teardown,
    /// Releasing every step, in reverse, for a deletion with policy
    /// `Retain`: each resource is let go, still tagged, for a Tenant of the
    /// same name to adopt.
    Release,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProvisioningJournal {
    pub operation: JournalOperation,
    /// Steps whose `ensure` finished (Provision) or whose `remove` is still to
    /// run (RollBack, Teardown, Release), in provisioning order.
    #[serde(default)]
    pub steps_done: Vec<String>,
    /// The step that was started and not yet recorded as finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_progress: Option<String>,
    /// Why the last provisioning failed (kept during and after rollback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub failure: Option<StepFailure>,
    /// The cause of that failure as a PascalCase reason, e.g. `Conflict`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    /// Provisioning attempts that failed in a row, for backoff.
    #[serde(default)]
    pub failed_attempts: u32,
    /// RFC 3339 time of the last failure.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "Timestamp::lenient"
    )]
    #[schemars(with = "Option<String>")]
    pub last_failure_time: Option<Timestamp>,
    /// The generation whose spec the last failure was about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_generation: Option<i64>,
    /// Steps that took over a resource a `Retain` deletion had released (a
    /// returning customer's data). Rolling back a failed onboarding releases
    /// these again instead of destroying them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adopted_released: Vec<String>,
    /// The step whose ensure a killed process left unfinished when a
    /// teardown began: its resource may exist without tenantry's tag yet,
    /// and its removal takes it as an interrupted ensure would.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupted_step: Option<String>,
    /// Every step has been ensured at least once. From then on a failing step
    /// is reported and retried, never rolled back: rollback exists for
    /// onboarding, and must not destroy a live tenant's data.
    #[serde(default)]
    pub provisioned: bool,
}

/// A moment in a status: written as RFC 3339 in UTC to the second (as every
/// version wrote it), held as a `DateTime` so no code parses strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub chrono::DateTime<chrono::Utc>);

impl Timestamp {
    pub fn now() -> Self {
        Self(chrono::Utc::now())
    }

    /// Reads an optional time; one that does not parse (a status edited by
    /// hand) reads as absent rather than making the whole Tenant unreadable.
    pub fn lenient<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Self>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        Ok(text.and_then(|t| t.parse().ok()))
    }
}

impl From<chrono::DateTime<chrono::Utc>> for Timestamp {
    fn from(time: chrono::DateTime<chrono::Utc>) -> Self {
        Self(time)
    }
}

impl std::str::FromStr for Timestamp {
    type Err = chrono::ParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Self(
            chrono::DateTime::parse_from_rfc3339(text)?.with_timezone(&chrono::Utc),
        ))
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Which step failed and how: written to the journal as `<step>: <message>`
/// (the form every earlier version wrote), read back into its parts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepFailure {
    pub step: String,
    pub message: String,
}

impl std::fmt::Display for StepFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.step, self.message)
    }
}

impl From<&str> for StepFailure {
    /// Step names hold no `:`, so the first one ends the step; a text
    /// without one (written by hand) is all message.
    fn from(text: &str) -> Self {
        match text.split_once(": ") {
            Some((step, message)) if !step.contains(' ') => Self {
                step: step.to_string(),
                message: message.to_string(),
            },
            _ => Self {
                step: String::new(),
                message: text.to_string(),
            },
        }
    }
}

impl Serialize for StepFailure {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for StepFailure {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Ok(Self::from(text.as_str()))
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeletionStatus {
    /// RFC 3339 time at which the tenant's access was revoked.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "Timestamp::lenient"
    )]
    #[schemars(with = "Option<String>")]
    pub access_revoked_at: Option<Timestamp>,
    /// RFC 3339 time after which the tenant's data is destroyed.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "Timestamp::lenient"
    )]
    #[schemars(with = "Option<String>")]
    pub destroy_after: Option<Timestamp>,
}

/// How well one isolation layer holds, as measured by probes.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum IsolationState {
    /// Every check passed.
    Enforced,
    /// Configured, but bypassable (e.g. RLS present while not forced).
    Inert,
    /// A probe reached another tenant's data, or a control is off.
    Broken,
    /// The probe could not run; the finding says why.
    Unknown,
}

impl IsolationState {
    /// Severity for combining findings: Broken > Inert > Unknown > Enforced.
    pub fn severity(self) -> u8 {
        match self {
            Self::Enforced => 0,
            Self::Unknown => 1,
            Self::Inert => 2,
            Self::Broken => 3,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforced => "Enforced",
            Self::Inert => "Inert",
            Self::Broken => "Broken",
            Self::Unknown => "Unknown",
        }
    }
}

/// One check of a probe.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    /// Stable id of the check, e.g. `role.bypassrls` or `bucket.encryption`.
    pub check: String,
    /// `Enforced` when the check passed; otherwise what its failure means.
    pub state: IsolationState,
    /// What was observed (never a secret).
    pub detail: String,
}

/// The measured state of one layer.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LayerReport {
    /// The worst state among the findings.
    pub state: IsolationState,
    #[serde(default)]
    pub findings: Vec<Finding>,
    /// What the tenant can see of others that tenantry cannot take away
    /// (e.g. PostgreSQL shows its catalogs to every role), measured as the
    /// tenant and reported so that nobody assumes otherwise. Not counted in
    /// `state`: no other tenant's data is reached.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exposures: Vec<Finding>,
}

impl LayerReport {
    pub fn from_findings(findings: Vec<Finding>) -> Self {
        let state = findings
            .iter()
            .map(|f| f.state)
            .max_by_key(|s| s.severity())
            .unwrap_or(IsolationState::Unknown);
        Self {
            state,
            findings,
            exposures: Vec::new(),
        }
    }

    /// The report with more findings, its state recomputed.
    pub fn add(&mut self, findings: Vec<Finding>) {
        self.findings.extend(findings);
        let exposures = std::mem::take(&mut self.exposures);
        *self = Self::from_findings(std::mem::take(&mut self.findings)).with_exposures(exposures);
    }

    /// The report with these exposures.
    pub fn with_exposures(mut self, exposures: Vec<Finding>) -> Self {
        self.exposures = exposures;
        self
    }

    /// The findings that did not pass, for condition messages.
    pub fn failures(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.state != IsolationState::Enforced)
    }
}

/// The attestation: each layer as measured, and when.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IsolationStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<LayerReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<LayerReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<LayerReport>,
    /// `Enforced` when all three layers are; else the worst of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<IsolationState>,
    /// RFC 3339 time of the last complete probe.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "Timestamp::lenient"
    )]
    #[schemars(with = "Option<String>")]
    pub verified_at: Option<Timestamp>,
    /// Drift found and repaired since the tenant was created.
    #[serde(default)]
    pub drift_repairs: u32,
}

/// Heads written before the schema was recorded are in the default schema.
fn default_audit_schema() -> String {
    "tenantry_audit".to_string()
}

/// The isolation layers tenantry measures, each with its condition and its
/// place in `status.isolation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Layer {
    Database,
    Storage,
    Encryption,
}

impl Layer {
    pub const ALL: [Layer; 3] = [Layer::Database, Layer::Storage, Layer::Encryption];

    /// The name in messages and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Database => "database",
            Self::Storage => "storage",
            Self::Encryption => "encryption",
        }
    }

    /// The condition type that reports this layer.
    pub fn condition_type(self) -> &'static str {
        match self {
            Self::Database => "DatabaseIsolated",
            Self::Storage => "StorageIsolated",
            Self::Encryption => "EncryptionAtRest",
        }
    }
}
