//! The `TenantClass` resource: what a platform team allows its tenants
//! (isolation modes, placement, limits, deletion floors) and the backends a
//! class points its tenants at.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Condition, DeletionPolicy, IsolationMode};

/// Marks the class that Tenants naming no `spec.class` get, as
/// `storageclass.kubernetes.io/is-default-class` does for StorageClasses.
pub const DEFAULT_CLASS_ANNOTATION: &str = "tenantry.dev/is-default-class";

/// A tier of isolation, like a StorageClass: where a Tenant's data lives and
/// how it is guarded. Tenants name one in `spec.class`; those that name none
/// get the class annotated `tenantry.dev/is-default-class: "true"`, or, when
/// there is none, the operator's own flags.
///
/// Every field is optional: what a class leaves out comes from the operator's
/// flags.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "tenantry.dev",
    version = "v1alpha1",
    kind = "TenantClass",
    plural = "tenantclasses",
    shortname = "tclass",
    category = "tenantry",
    status = "TenantClassStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status","description":"Whether the class can be used: its Secrets and settings read, its PostgreSQL server answers"}"#,
    printcolumn = r#"{"name":"Tenants","type":"integer","jsonPath":".status.tenants","description":"How many Tenants are in this class"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.isolation.defaultMode","description":"Isolation mode of tenants that do not choose one"}"#,
    printcolumn = r#"{"name":"Default","type":"string","jsonPath":".metadata.annotations.tenantry\\.dev/is-default-class","description":"Whether Tenants without spec.class get this class"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TenantClassSpec {
    /// The PostgreSQL server of this class's tenants. Left out: the
    /// operator's `--database-url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<ClassPostgres>,

    /// The isolation mode of this class's tenants.
    #[serde(default)]
    pub isolation: ClassIsolation,

    /// Limits on what each tenant's database role may take of the server,
    /// so that one tenant cannot starve the others.
    #[serde(default, skip_serializing_if = "ClassDatabase::is_empty")]
    pub database: ClassDatabase,

    /// Tables shared by this class's tenants that row-level security splits,
    /// as `schema.table:tenant_column`, on this class's server. Left out: the
    /// operator's `--shared-table`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_tables: Option<Vec<String>>,

    /// Where the tenant's AWS resources are made and who may use them.
    #[serde(default)]
    pub aws: ClassAws,

    /// Which namespaces this class's tenants may have their credentials
    /// Secret written into (`spec.credentials.namespace`).
    #[serde(default, skip_serializing_if = "ClassCredentials::is_empty")]
    pub credentials: ClassCredentials,

    /// What happens to a tenant's resources when it is deleted, for Tenants
    /// that do not say.
    #[serde(default)]
    pub deletion: ClassDeletion,

    /// How often a settled tenant's isolation is measured again, e.g. `5m`.
    /// Left out: the operator's `--probe-interval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub probe_interval: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClassPostgres {
    /// The Secret key that holds the admin connection URL of this class's
    /// server (a dedicated server for an enterprise tier, say). The role
    /// needs LOGIN CREATEROLE CREATEDB, as for `--database-url`.
    pub admin_url_secret_ref: SecretKeyRef,

    /// Host that applications use to reach this server, written into the
    /// tenants' credentials. Left out: the host of the admin URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub tenant_host: Option<String>,

    /// Port that applications use to reach this server. Left out: the port
    /// of the admin URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub tenant_port: Option<u16>,

    /// Most connections tenantry opens to this server at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_connections: Option<u32>,

    /// How tenantry's connections to this server are encrypted, and the
    /// `sslmode` written into the tenants' credentials: `verify-full`
    /// checks the server's certificate and name. Wins over the admin URL's
    /// `sslmode`. Left out: the URL's, else `--database-ssl-mode`, else
    /// `prefer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_mode: Option<SslMode>,

    /// The Secret key (default `ca.crt`) that holds the PEM CA bundle this
    /// server's certificate is checked against (the RDS bundle, say); given
    /// to tenants as `ca.crt` in their credentials Secret. Wins over the
    /// admin URL's `sslrootcert`. Left out: the URL's, else
    /// `--database-ca-file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
}

// PostgreSQL's `sslmode`, as libpq spells it (`allow` is left out: it
// encrypts only when the server insists, which no server here does). Plain
// comments, not doc comments: a documented enum's text would replace the
// description of the fields that use it in the CRD.
#[derive(
    Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    // No TLS.
    Disable,
    // TLS when the server offers it, with no check of its certificate:
    // a network attacker can read or downgrade the connection.
    Prefer,
    // TLS or no connection, with no check of the server's certificate.
    Require,
    // TLS, and the certificate must chain to the CA bundle (any name).
    VerifyCa,
    // TLS, the certificate must chain to the CA bundle and name the host.
    VerifyFull,
}

impl SslMode {
    /// libpq's name: what a URL's `sslmode` says.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// Whether the server's certificate is checked against a CA bundle.
    pub fn verifies(self) -> bool {
        matches!(self, Self::VerifyCa | Self::VerifyFull)
    }
}

impl std::fmt::Display for SslMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A key of a Secret in a namespace.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    #[schemars(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub namespace: String,
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
    /// The key within the Secret's data. Left out: `url` in
    /// `adminUrlSecretRef`, `ca.crt` in `caSecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub key: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClassIsolation {
    /// The mode of tenants that set no `spec.database.isolation`.
    #[serde(default)]
    pub default_mode: IsolationMode,

    /// Whether a Tenant may choose another mode than `defaultMode`. An
    /// enterprise tier that promises dedicated databases sets it to false.
    #[serde(default = "default_true")]
    pub allow_override: bool,
}

impl Default for ClassIsolation {
    fn default() -> Self {
        Self {
            default_mode: IsolationMode::default(),
            allow_override: true,
        }
    }
}

/// Where a class's tenants may write their credentials Secret. A namespace
/// is allowed when it is listed or its labels match the selector. Left out
/// (both): any namespace but `kube-*` and the operator's own.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClassCredentials {
    /// Namespaces allowed by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_namespaces: Option<Vec<String>>,

    /// Namespaces allowed by their labels, e.g. `{matchLabels: {tenantry.dev/tenants: "true"}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<NamespaceSelector>,
}

/// A Kubernetes label selector (the shape of `metav1.LabelSelector`).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_labels: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_expressions: Option<Vec<SelectorRequirement>>,
}

/// One `matchExpressions` entry.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SelectorRequirement {
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    #[schemars(pattern(r"^(In|NotIn|Exists|DoesNotExist)$"))]
    pub operator: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
}

impl From<NamespaceSelector> for k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
    fn from(selector: NamespaceSelector) -> Self {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
        Self {
            match_labels: selector.match_labels,
            match_expressions: selector.match_expressions.map(|requirements| {
                requirements
                    .into_iter()
                    .map(|r| LabelSelectorRequirement {
                        key: r.key,
                        operator: r.operator,
                        values: r.values,
                    })
                    .collect()
            }),
        }
    }
}

impl ClassCredentials {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// Per-tenant limits on the class's PostgreSQL server.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClassDatabase {
    /// The most `spec.database.connectionLimit` a Tenant of this class may
    /// ask for; a Tenant asking for more is refused
    /// (`ConnectionLimitAboveClassMaximum`). Left out: no cap beyond the
    /// schema's 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_connection_limit: Option<i32>,

    /// `statement_timeout` of each tenant role in its database, e.g. `30s`
    /// (units ms, s, min, h). Left out: the server's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[0-9]{1,9}(ms|s|min|h)$"))]
    pub statement_timeout: Option<String>,

    /// `idle_in_transaction_session_timeout` of each tenant role in its
    /// database, e.g. `5min`. Left out: the server's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[0-9]{1,9}(ms|s|min|h)$"))]
    pub idle_in_transaction_session_timeout: Option<String>,
}

impl ClassDatabase {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

fn default_true() -> bool {
    true
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClassAws {
    /// AWS region of the tenants' key, bucket and secret. Left out: the
    /// operator's region (AWS_REGION).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32), pattern(r"^[a-z]{2}(-[a-z]+)+-[0-9]+$"))]
    pub region: Option<String>,

    /// Prefix of the tenants' bucket names. Left out: `--bucket-prefix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 20), pattern(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"))]
    pub bucket_prefix: Option<String>,

    /// The IAM principal (an ARN) that the bucket policy and the key policy
    /// allow to use the tenant's bucket and key, e.g.
    /// `arn:aws:iam::111122223333:role/app-{tenant}`: `{tenant}` is replaced
    /// by the tenant's name. Left out: no principal is named, and access goes
    /// by the account's IAM policies alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 1024),
        pattern(r"^arn:[a-z-]+:iam::[0-9]{12}:\S+$")
    )]
    pub principal: Option<String>,

    /// An IAM role for each tenant of this class: its own AWS identity,
    /// allowed its bucket, key and secret and nothing else, and the only
    /// application principal the bucket and key policies let in. Left out:
    /// no role is made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<ClassIdentity>,

    /// Principals (ARN patterns, `*` allowed) besides the tenant's role and
    /// the operator that the bucket and key policies still let use a
    /// tenant's data: the account's administrators, a backup role. The
    /// account's root is always among them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub administrators: Vec<String>,
}

/// The IAM role of each tenant: `<bucketPrefix>-<tenant>` under the path
/// `/tenantry/`, with an inline policy scoped to the tenant's bucket and
/// its objects, key and secret, and a trust policy from `trust`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClassIdentity {
    /// Who may act as the role. Exactly one of `irsa`, `podIdentity` or
    /// `principal`.
    pub trust: RoleTrust,

    /// The ARN of a managed policy that bounds what the role may ever do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 20, max = 2048),
        pattern(r"^arn:[a-z-]+:iam::([0-9]{12}|aws):policy/\S+$")
    )]
    pub permissions_boundary: Option<String>,

    /// The ServiceAccount tenantry makes in the credentials namespace for
    /// the tenant's workloads, `{tenant}` standing for the tenant's name.
    /// Left out: `{tenant}-app`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 200),
        pattern(r"^[a-z0-9{}]([-a-z0-9.{}]*[a-z0-9{}])?$")
    )]
    pub service_account_name: Option<String>,
}

impl ClassIdentity {
    /// The tenant's ServiceAccount name.
    pub fn service_account_for(&self, tenant: &str) -> String {
        self.service_account_name
            .as_deref()
            .unwrap_or("{tenant}-app")
            .replace("{tenant}", tenant)
    }

    /// Refuses a trust that names no or several kinds of principal.
    pub fn validate(&self) -> Result<(), String> {
        let t = &self.trust;
        let kinds = [
            t.irsa.is_some(),
            t.pod_identity.is_some(),
            t.principal.is_some(),
        ];
        match kinds.iter().filter(|k| **k).count() {
            1 => {}
            0 => {
                return Err(
                    "aws.identity.trust names none of irsa, podIdentity and principal".into(),
                );
            }
            _ => {
                return Err(
                    "aws.identity.trust names more than one of irsa, podIdentity and principal"
                        .into(),
                );
            }
        }
        if let Some(irsa) = &t.irsa
            && irsa.issuer().is_none()
        {
            return Err(format!(
                "aws.identity.trust.irsa.oidcProviderArn {:?} is not an IAM OIDC provider ARN (arn:aws:iam::ACCOUNT:oidc-provider/ISSUER)",
                irsa.oidc_provider_arn
            ));
        }
        Ok(())
    }
}

/// Who may act as a tenant's role.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoleTrust {
    /// IAM Roles for Service Accounts: pods running as the tenant's
    /// ServiceAccount, through the cluster's OIDC provider. tenantry
    /// annotates the ServiceAccount with the role's ARN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub irsa: Option<IrsaTrust>,

    /// EKS Pod Identity: pods running as the tenant's ServiceAccount, once
    /// a pod identity association links it to the role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_identity: Option<PodIdentityTrust>,

    /// One IAM principal (an ARN) that may assume the role, `{tenant}`
    /// standing for the tenant's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 1024),
        pattern(r"^arn:[a-z-]+:iam::[0-9]{12}:\S+$")
    )]
    pub principal: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IrsaTrust {
    /// The cluster's IAM OIDC provider, e.g.
    /// `arn:aws:iam::111122223333:oidc-provider/oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE`.
    #[schemars(
        length(min = 20, max = 2048),
        pattern(r"^arn:[a-z-]+:iam::[0-9]{12}:oidc-provider/\S+$")
    )]
    pub oidc_provider_arn: String,

    /// The token audience. Left out: `sts.amazonaws.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
}

impl IrsaTrust {
    /// The issuer (`oidc.eks.REGION.amazonaws.com/id/ID`) the provider ARN names.
    pub fn issuer(&self) -> Option<&str> {
        self.oidc_provider_arn
            .split_once(":oidc-provider/")
            .map(|(_, issuer)| issuer)
            .filter(|issuer| !issuer.is_empty())
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodIdentityTrust {
    /// Only pods of this cluster (its ARN) may act as the role. Left out:
    /// any cluster of the account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_arn: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClassDeletion {
    /// Deletion policy of tenants that set none. Left out: `Retain`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<DeletionPolicy>,

    /// Grace period of tenants that set none. Left out: `72h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub grace_period: Option<String>,

    /// The shortest grace period a Tenant of this class may set, e.g. `24h`:
    /// a Tenant asking for less is refused
    /// (`GracePeriodBelowClassMinimum`), and a deletion never destroys data
    /// sooner, whatever the Tenant says by then. Left out: no minimum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub min_grace_period: Option<String>,
}

impl TenantClass {
    /// Whether the class carries the default-class annotation.
    pub fn is_default(&self) -> bool {
        self.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
            .is_some_and(|v| v == "true")
    }
}

/// What the operator last found of a class.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantClassStatus {
    /// The class's `metadata.generation` this status speaks of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: True when the class can be used (its admin URL and CA
    /// Secrets read, its settings valid, its PostgreSQL server answers);
    /// otherwise the reason (`ClassInvalid`, `ClassUnavailable`) and what
    /// was seen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// How many Tenants (of this operator's selector) are in this class.
    #[serde(default)]
    pub tenants: u32,
    /// `host:port/database` of the class's admin connection (never
    /// credentials), when it could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
}
