//! One module per real system tenantry changes, each behind a small trait.
//!
//! The traits speak in tenant resources ("ensure the tenant's bucket"), not in
//! API calls, so the provisioning steps stay short and a test or a fault
//! injector can wrap any backend. Every implementation:
//! - is idempotent: `ensure_*` creates or adopts, `remove_*` treats "absent" as done;
//! - reads before it writes, so a run with nothing to change makes no write;
//! - touches only resources whose ownership tag (or COMMENT, in PostgreSQL)
//!   carries the tenant's uid, or that a `Retain` deletion of a Tenant of the
//!   same name marked as released; anything else is a [`BackendError::Conflict`].

pub mod action;
pub mod aws;
pub mod iam;
pub mod kms;
pub mod kube;
pub mod operation;
pub mod pg_tls;
#[cfg(test)]
mod policy_proof;
pub mod postgres;
pub mod principals;
pub mod s3;
pub mod secrets;
pub mod service_accounts;
pub mod shared_tables;

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::api::IsolationMode;
use crate::naming::TenantNames;
use crate::provision::StepError;

pub use action::Action;
pub use operation::{AuditSink, Operation, Removal, Unrecorded};

/// Tag (and COMMENT field) names that mark what tenantry owns.
pub mod tags {
    /// The tenant name.
    pub const TENANT: &str = "tenantry.dev/tenant";
    /// The Tenant object's uid: the proof of ownership.
    pub const TENANT_UID: &str = "tenantry.dev/tenant-uid";
    /// Set to `true` when a `Retain` deletion let go of the resource; a Tenant
    /// of the same name may then adopt it.
    pub const RELEASED: &str = "tenantry.dev/released";
    pub const MANAGED_BY: &str = "tenantry.dev/managed-by";
    pub const MANAGED_BY_VALUE: &str = "tenantry";
}

/// The tenant a backend call acts for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantRef {
    pub name: String,
    pub uid: String,
    pub display_name: Option<String>,
}

impl TenantRef {
    /// The ownership tags every resource of this tenant carries.
    pub fn ownership_tags(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (tags::TENANT.to_string(), self.name.clone()),
            (tags::TENANT_UID.to_string(), self.uid.clone()),
            (
                tags::MANAGED_BY.to_string(),
                tags::MANAGED_BY_VALUE.to_string(),
            ),
        ])
    }

    /// Whose a resource is, judged by its tags.
    pub fn ownership_of<'a>(
        &self,
        tags: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Ownership {
        let tags: BTreeMap<&str, &str> = tags.into_iter().collect();
        if tags.is_empty() {
            return Ownership::Untagged;
        }
        match (tags.get(tags::TENANT_UID), tags.get(tags::TENANT)) {
            (Some(uid), _) if *uid == self.uid => Ownership::Ours,
            (_, Some(name)) if *name == self.name && tags.get(tags::RELEASED) == Some(&"true") => {
                Ownership::Released
            }
            (Some(uid), Some(name)) => Ownership::Foreign(format!(
                "it belongs to tenant {name:?} (uid {uid}) and was not released"
            )),
            _ => Ownership::Foreign("it carries no tenantry ownership tag".to_string()),
        }
    }
}

/// Whose a resource that has the tenant's name is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// Tagged with this Tenant's uid.
    Ours,
    /// Released by a `Retain` deletion of a Tenant with this name: adoptable.
    Released,
    /// Someone else's: never touched.
    Foreign(String),
    /// No tags at all. Ours only if the journal shows we were creating it.
    Untagged,
}

/// The systems tenantry talks to, for errors and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    Postgres,
    S3,
    Kms,
    SecretsManager,
    Kubernetes,
    Iam,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::S3 => "s3",
            Self::Kms => "kms",
            Self::SecretsManager => "secretsmanager",
            Self::Kubernetes => "kubernetes",
            Self::Iam => "iam",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A resource with the tenant's name exists and is not the tenant's.
    #[error("{backend}: {resource} already exists and is not this tenant's: {detail}")]
    Conflict {
        backend: Backend,
        resource: String,
        detail: String,
    },
    /// Throttling, 5xx, timeouts, refused or reset connections.
    #[error("{backend} is unavailable: {message}")]
    Unavailable { backend: Backend, message: String },
    /// The backend refused the request and will refuse it again.
    #[error("{backend} refused the request: {message}")]
    Rejected { backend: Backend, message: String },
    /// Something the tenant needs does not exist yet (e.g. its namespace);
    /// worth retrying later, not a reason to give up.
    #[error("{backend}: {message}")]
    Missing { backend: Backend, message: String },
}

impl BackendError {
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::Missing { .. })
    }

    pub fn backend(&self) -> Backend {
        match self {
            Self::Conflict { backend, .. }
            | Self::Unavailable { backend, .. }
            | Self::Rejected { backend, .. }
            | Self::Missing { backend, .. } => *backend,
        }
    }

    /// The cause for conditions and events.
    pub fn reason(&self) -> crate::api::Reason {
        use crate::api::Reason;
        match self {
            Self::Conflict { .. } => Reason::Conflict,
            Self::Unavailable { .. } => Reason::BackendUnavailable,
            Self::Rejected { .. } => Reason::BackendRejected,
            Self::Missing { .. } => Reason::DependencyMissing,
        }
    }
}

impl From<BackendError> for StepError {
    fn from(e: BackendError) -> Self {
        StepError {
            transient: e.is_transient(),
            reason: e.reason(),
            category: e.backend().as_str(),
            message: e.to_string(),
        }
    }
}

/// Where the tenant connects, and as whom. The password never appears in
/// `Debug` output.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DatabaseCredentials {
    pub username: String,
    #[serde(serialize_with = "expose")]
    pub password: SecretString,
    pub host: String,
    pub port: u16,
    #[serde(rename = "dbname")]
    pub database: String,
    pub schema: String,
    #[serde(default = "postgres_engine")]
    pub engine: String,
}

fn postgres_engine() -> String {
    "postgres".to_string()
}

fn expose<S: serde::Serializer>(secret: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(secret.expose_secret())
}

impl DatabaseCredentials {
    /// A `postgres://` URL with the password, for the Kubernetes Secret,
    /// asking for `ssl_mode` (libpq's name, e.g. `verify-full`): the mode
    /// the operator itself uses with this server. It names no CA file: the
    /// application points `sslrootcert` (or `PGSSLROOTCERT`) at the
    /// Secret's `ca.crt` where it mounts it.
    pub fn url(&self, ssl_mode: &str) -> SecretString {
        let mut url = url::Url::parse("postgres://localhost").expect("static URL parses");
        let _ = url.set_host(Some(&self.host));
        let _ = url.set_port(Some(self.port));
        let _ = url.set_username(&self.username);
        let _ = url.set_password(Some(self.password.expose_secret()));
        url.set_path(&self.database);
        url.query_pairs_mut()
            .append_pair("options", &format!("-csearch_path={}", self.schema))
            .append_pair("sslmode", ssl_mode);
        SecretString::from(url.to_string())
    }
}

impl PartialEq for DatabaseCredentials {
    fn eq(&self, other: &Self) -> bool {
        self.username == other.username
            && self.password.expose_secret() == other.password.expose_secret()
            && self.host == other.host
            && self.port == other.port
            && self.database == other.database
            && self.schema == other.schema
    }
}

/// Generates a strong password: 32 random alphanumerics (~190 bits), safe in
/// URLs and connection strings without escaping.
pub fn generate_password() -> SecretString {
    use rand::Rng;
    use rand::distr::Alphanumeric;
    let password: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    SecretString::from(password)
}

/// A KMS key of a tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    pub key_id: String,
    pub arn: String,
}

/// Where a tenant's data lives in PostgreSQL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatabaseLocation {
    pub database: String,
    pub schema: String,
    pub role: String,
}

/// AWS KMS: one symmetric key per tenant, with an alias and rotation.
#[async_trait]
pub trait KeyManager: Send + Sync {
    /// Finds the tenant's key (by alias; by ownership tag too when
    /// `interrupted`, since a previous process may have died between
    /// CreateKey and CreateAlias), adopts or creates it, makes sure it is
    /// enabled with rotation on and that the alias points at it.
    async fn ensure_key(
        &self,
        op: &Operation,
        alias: &str,
        interrupted: bool,
    ) -> Result<KeyInfo, BackendError>;
    /// Deletes the alias and schedules the key's deletion (7 days, the
    /// shortest KMS allows). Absent or foreign keys are left alone.
    async fn remove_key(&self, op: &Operation, alias: &str) -> Result<(), BackendError>;
    /// Marks the key released so a later Tenant of the same name can adopt it.
    async fn release_key(&self, op: &Operation, alias: &str) -> Result<(), BackendError>;
}

/// Amazon S3: one bucket per tenant.
#[async_trait]
pub trait ObjectStorage: Send + Sync {
    /// Creates or adopts the bucket and converges its controls: Block Public
    /// Access, BucketOwnerEnforced, SSE-KMS with `key_arn` and bucket key,
    /// versioning, a deny-non-TLS policy, tags.
    async fn ensure_bucket(
        &self,
        op: &Operation,
        bucket: &str,
        key_arn: &str,
        versioning: bool,
        interrupted: bool,
    ) -> Result<(), BackendError>;
    /// Empties the bucket (every object version and delete marker) and deletes it.
    async fn remove_bucket(&self, op: &Operation, bucket: &str) -> Result<(), BackendError>;
    async fn release_bucket(&self, op: &Operation, bucket: &str) -> Result<(), BackendError>;
}

/// AWS Secrets Manager: the tenant's database credentials.
#[async_trait]
pub trait SecretStore: Send + Sync {
    /// Returns the secret's ARN and the credentials it holds, creating it with
    /// `initial` (encrypted with `key_arn`) when absent. Existing credentials
    /// win over `initial`, so a retry never changes a password that is in use.
    async fn ensure_secret(
        &self,
        op: &Operation,
        name: &str,
        key_arn: &str,
        initial: &DatabaseCredentials,
    ) -> Result<(String, DatabaseCredentials), BackendError>;
    /// Reads the stored credentials and the secret's ARN, writing nothing;
    /// `None` when the secret or its value is missing or unreadable as
    /// credentials. Probes use it, so measuring never repairs in passing.
    async fn read_secret(
        &self,
        name: &str,
    ) -> Result<Option<(String, DatabaseCredentials)>, BackendError>;
    /// Deletes the secret without a recovery window.
    async fn remove_secret(&self, op: &Operation, name: &str) -> Result<(), BackendError>;
    async fn release_secret(&self, op: &Operation, name: &str) -> Result<(), BackendError>;
}

/// PostgreSQL: the tenant's login role and its schema or database.
#[async_trait]
pub trait TenantDatabase: Send + Sync {
    /// Host and port the tenant connects to, and the shared database's name.
    fn endpoint(&self) -> (String, u16, String);
    /// Creates or adopts the role (NOSUPERUSER NOBYPASSRLS NOCREATEDB
    /// NOCREATEROLE, the connection limit, `login`), and the schema (mode
    /// `Schema`) or database (mode `Database`) it owns, with PUBLIC's rights
    /// revoked. The password is set when the role is created or adopted.
    #[allow(clippy::too_many_arguments)]
    async fn ensure_tenant(
        &self,
        op: &Operation,
        names: &TenantNames,
        mode: IsolationMode,
        connection_limit: i32,
        password: &SecretString,
        login: bool,
        interrupted: bool,
    ) -> Result<DatabaseLocation, BackendError>;
    /// Allows or forbids the role to log in; forbidding also ends its sessions.
    async fn set_login(
        &self,
        op: &Operation,
        names: &TenantNames,
        enabled: bool,
    ) -> Result<(), BackendError>;
    /// Drops the schema or database and the role.
    async fn remove_tenant(
        &self,
        op: &Operation,
        names: &TenantNames,
        mode: IsolationMode,
    ) -> Result<(), BackendError>;
    async fn release_tenant(
        &self,
        op: &Operation,
        names: &TenantNames,
        mode: IsolationMode,
    ) -> Result<(), BackendError>;
}

/// Kubernetes: the Secret that applications mount.
#[async_trait]
pub trait CredentialSecrets: Send + Sync {
    /// The namespace's labels, or None when it does not exist (tenantry
    /// never creates namespaces).
    async fn namespace_labels(
        &self,
        namespace: &str,
    ) -> Result<Option<BTreeMap<String, String>>, BackendError>;
    /// Creates or updates the Secret with `data`; a Secret of that name that
    /// tenantry does not own is a conflict.
    async fn ensure_secret(
        &self,
        op: &Operation,
        namespace: &str,
        name: &str,
        data: BTreeMap<String, SecretString>,
    ) -> Result<SecretWritten, BackendError>;
    /// The Secret's resourceVersion, read as metadata only (never its
    /// data); None when it does not exist.
    async fn secret_version(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<String>, BackendError>;
    async fn delete_secret(
        &self,
        op: &Operation,
        namespace: &str,
        name: &str,
    ) -> Result<(), BackendError>;
    /// Marks the Secret released so a later Tenant of the same name can adopt it.
    async fn release_secret(
        &self,
        op: &Operation,
        namespace: &str,
        name: &str,
    ) -> Result<(), BackendError>;
}

/// What [`CredentialSecrets::ensure_secret`] found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecretWritten {
    /// The Secret had to be created or written again.
    pub changed: bool,
    /// Its resourceVersion afterwards, when known.
    pub version: Option<String>,
    /// Its resourceVersion before this call; None when it did not exist.
    pub found_version: Option<String>,
}

/// Kubernetes: the ServiceAccount the tenant's workloads run as.
#[async_trait]
pub trait ServiceAccounts: Send + Sync {
    /// Creates or updates it with `annotations`; one of that name tenantry
    /// does not own is a conflict.
    async fn ensure_service_account(
        &self,
        op: &Operation,
        namespace: &str,
        name: &str,
        annotations: BTreeMap<String, String>,
    ) -> Result<(), BackendError>;
    async fn delete_service_account(
        &self,
        op: &Operation,
        namespace: &str,
        name: &str,
    ) -> Result<(), BackendError>;
}

/// AWS IAM: the role the tenant's workloads act as.
#[async_trait]
pub trait TenantIdentity: Send + Sync {
    /// Creates or adopts the role and converges it to `spec`: trust,
    /// boundary, the access policy and nothing else, tags; access as
    /// `spec.granted` says. Returns the role's ARN.
    async fn ensure_role(
        &self,
        op: &Operation,
        spec: &iam::RoleSpec,
    ) -> Result<String, BackendError>;
    /// Grants or revokes the role's access (absent or foreign roles are
    /// left alone).
    async fn set_role_access(
        &self,
        op: &Operation,
        name: &str,
        granted: bool,
    ) -> Result<(), BackendError>;
    /// Deletes the role and its policies.
    async fn remove_role(&self, op: &Operation, name: &str) -> Result<(), BackendError>;
    /// Revokes the role's access and marks it released.
    async fn release_role(&self, op: &Operation, name: &str) -> Result<(), BackendError>;
    /// What the role is allowed, as deployed: its inline policies' documents
    /// and the ARNs of the managed policies attached to it. Reads only.
    async fn role_policies(&self, name: &str) -> Result<iam::RolePolicies, BackendError>;
}

/// A class's principal template for one tenant: `{tenant}` becomes its name.
pub fn principal_for(template: &str, tenant: &str) -> String {
    template.replace("{tenant}", tenant)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acme() -> TenantRef {
        TenantRef {
            name: "acme".into(),
            uid: "uid-1".into(),
            display_name: None,
        }
    }

    #[test]
    fn ownership_is_decided_by_the_uid_tag() {
        let t = acme();
        assert_eq!(
            t.ownership_of([(tags::TENANT_UID, "uid-1")]),
            Ownership::Ours
        );
        assert_eq!(t.ownership_of([]), Ownership::Untagged);
        assert!(matches!(
            t.ownership_of([(tags::TENANT, "acme"), (tags::TENANT_UID, "uid-0")]),
            Ownership::Foreign(_)
        ));
        assert!(matches!(
            t.ownership_of([("team", "x")]),
            Ownership::Foreign(_)
        ));
    }

    #[test]
    fn a_released_resource_of_the_same_name_is_adoptable_and_no_other() {
        let t = acme();
        let released = [
            (tags::TENANT, "acme"),
            (tags::TENANT_UID, "old"),
            (tags::RELEASED, "true"),
        ];
        assert_eq!(t.ownership_of(released), Ownership::Released);
        let other = [
            (tags::TENANT, "globex"),
            (tags::TENANT_UID, "old"),
            (tags::RELEASED, "true"),
        ];
        assert!(matches!(t.ownership_of(other), Ownership::Foreign(_)));
    }

    #[test]
    fn credentials_never_show_the_password_in_debug() {
        let c = DatabaseCredentials {
            username: "t_acme".into(),
            password: SecretString::from("hunter2-very-secret"),
            host: "db".into(),
            port: 5432,
            database: "app".into(),
            schema: "t_acme".into(),
            engine: "postgres".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains("hunter2-very-secret"));
        let url = c.url("verify-full");
        assert!(
            url.expose_secret()
                .starts_with("postgres://t_acme:hunter2-very-secret@db:5432/app?")
        );
        let parsed = url::Url::parse(url.expose_secret()).unwrap();
        let query: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
        assert_eq!(
            query,
            [
                ("options".to_string(), "-csearch_path=t_acme".to_string()),
                ("sslmode".to_string(), "verify-full".to_string())
            ]
        );
        let options: sqlx::postgres::PgConnectOptions = url.expose_secret().parse().unwrap();
        assert!(matches!(
            options.get_ssl_mode(),
            sqlx::postgres::PgSslMode::VerifyFull
        ));
    }

    #[test]
    fn generated_passwords_are_long_and_distinct() {
        let (a, b) = (generate_password(), generate_password());
        assert_eq!(a.expose_secret().len(), 32);
        assert_ne!(a.expose_secret(), b.expose_secret());
    }
}
