//! Operator configuration (flags with environment fallbacks) and the clients
//! built from it. Tests build their clients through this same code.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use secrecy::SecretString;

use crate::api::ClassIdentity;
use crate::backends::iam::IamBackend;
use crate::backends::kms::{KmsBackend, RateLimiter};
use crate::backends::kube::KubeSecrets;
use crate::backends::pg_tls::{CaSource, DatabaseTls};
use crate::backends::postgres::{PostgresBackend, RoleLimits};
use crate::backends::principals::AccessPrincipals;
use crate::backends::s3::S3Backend;
use crate::backends::secrets::SecretsManagerBackend;
use crate::backends::{
    CredentialSecrets, KeyManager, ObjectStorage, SecretStore, ServiceAccounts, TenantDatabase,
    TenantIdentity, aws,
};
use crate::isolation::SharedTable;
use crate::isolation::database::DatabaseProbe;
use crate::isolation::encryption::EncryptionProbe;
use crate::isolation::storage::StorageProbe;
use crate::isolation::tenant_access::TenantAccessProbe;
use crate::provision::RetryPolicy;

/// Where tenant resources are made.
#[derive(Args, Clone, Debug)]
pub struct BackendArgs {
    /// PostgreSQL admin connection URL, e.g. postgres://tenantry_admin:PASSWORD@db:5432/app.
    /// The role needs LOGIN CREATEROLE CREATEDB and must own (or have CREATE on) the
    /// database in the URL, where Schema-mode tenants get their schemas. It need not
    /// be a superuser, and should not be.
    #[arg(long, env = "TENANTRY_DATABASE_URL", hide_env_values = true, value_parser = parse_secret)]
    pub database_url: SecretString,

    #[command(flatten)]
    pub database_tls: DatabaseTlsArgs,

    /// Most connections tenantry opens to PostgreSQL at once.
    #[arg(long, env = "TENANTRY_DATABASE_MAX_CONNECTIONS", default_value_t = 10)]
    pub database_max_connections: u32,

    /// Host that applications use to reach PostgreSQL, written into tenants'
    /// credentials. Defaults to the host of --database-url.
    #[arg(long, env = "TENANTRY_TENANT_DATABASE_HOST")]
    pub tenant_database_host: Option<String>,

    /// Port that applications use to reach PostgreSQL. Defaults to the port of --database-url.
    #[arg(long, env = "TENANTRY_TENANT_DATABASE_PORT")]
    pub tenant_database_port: Option<u16>,

    /// Prefix of tenant bucket names: the bucket of tenant `acme` is `<prefix>-acme`.
    /// Bucket names are global in S3, so pick one unique to your organisation.
    #[arg(long, env = "TENANTRY_BUCKET_PREFIX", default_value = "tenantry")]
    pub bucket_prefix: String,

    /// Tables shared by all tenants that row-level security must split, as
    /// `schema.table:tenant_column` (the column holds the tenant name). Repeat the
    /// flag or separate with commas. The admin role must own these tables.
    #[arg(
        long = "shared-table",
        env = "TENANTRY_SHARED_TABLES",
        value_delimiter = ','
    )]
    pub shared_tables: Vec<SharedTable>,

    /// The operator's own namespace (the chart passes the pod's). No tenant
    /// may have its credentials Secret written there, whatever its class
    /// allows, and a class's Secret references must point there.
    #[arg(long, env = "POD_NAMESPACE")]
    pub operator_namespace: Option<String>,

    /// The operator's own IAM principal (an ARN), as the tenants' bucket and
    /// key policies and role trust name it. Left out: what STS says it is;
    /// for an assumed role (IRSA, Pod Identity) that is the role at path
    /// `/`, so set this when the operator's role has another path.
    #[arg(long, env = "TENANTRY_AWS_OPERATOR_PRINCIPAL")]
    pub aws_operator_principal: Option<String>,

    /// The AWS endpoint is an emulator (moto), which lets through requests
    /// that AWS would refuse: it evaluates neither IAM conditions nor KMS
    /// resource scope. A tenant's role let into the operator's canary key
    /// or bucket is then judged by tenantry's evaluation of the role's
    /// policies, and its finding says so. Never set it against AWS.
    #[arg(long, env = "TENANTRY_AWS_EMULATOR")]
    pub aws_emulator: bool,

    /// Address S3 buckets in the path (`endpoint/bucket`) instead of by virtual host.
    /// On by default when AWS_ENDPOINT_URL points at an S3-compatible server.
    #[arg(long, env = "TENANTRY_S3_FORCE_PATH_STYLE")]
    pub s3_force_path_style: Option<bool>,

    /// Most KMS keys created per second, on average (a token bucket with a
    /// burst of max(1, rate)), shared by every class. AWS's CreateKey quota
    /// is per account and Region; set this below it, minus what else in the
    /// account creates keys. 0: no pacing.
    #[arg(long, env = "TENANTRY_KMS_CREATE_RATE", default_value_t = 0.0)]
    pub kms_create_rate: f64,
}

/// Encryption in transit to the PostgreSQL server of --database-url.
#[derive(Args, Clone, Debug, Default)]
pub struct DatabaseTlsArgs {
    /// TLS to PostgreSQL: disable, prefer, require, verify-ca or
    /// verify-full (checks the server's certificate and that it names the
    /// URL's host). Wins over the URL's `sslmode`; left out: the URL's, else
    /// `prefer`. Tenants' credentials carry the same sslmode. A class's
    /// server whose URL and class say nothing gets this too.
    #[arg(long, env = "TENANTRY_DATABASE_SSL_MODE", value_enum)]
    pub database_ssl_mode: Option<crate::api::SslMode>,

    /// PEM file of the CA certificate(s) the server's certificate must chain
    /// to (e.g. the RDS CA bundle), trusted besides the Mozilla roots. Wins
    /// over the URL's `sslrootcert`; needs sslmode verify-ca or verify-full.
    /// Tenants' credentials Secrets get it as `ca.crt`.
    #[arg(long, env = "TENANTRY_DATABASE_CA_FILE")]
    pub database_ca_file: Option<std::path::PathBuf>,
}

impl DatabaseTlsArgs {
    /// The settings of the flags' own server: the flags win over its URL.
    pub fn settings(&self) -> DatabaseTls {
        DatabaseTls {
            ssl_mode: self.database_ssl_mode,
            ca: self.database_ca_file.clone().map(CaSource::File),
            fallback_ssl_mode: None,
            fallback_ca: None,
        }
    }
}

/// How the engine retries and paces itself.
#[derive(Args, Clone, Debug)]
pub struct EngineArgs {
    /// Tries of a backend call that fails transiently (throttling, 5xx, timeouts,
    /// refused connections) before a provisioning attempt gives up and rolls back.
    #[arg(long, env = "TENANTRY_RETRY_ATTEMPTS", default_value_t = 6)]
    pub retry_attempts: u32,

    /// First delay between those tries; it doubles each time, with jitter.
    #[arg(long, env = "TENANTRY_RETRY_BASE_DELAY", default_value = "200ms", value_parser = humantime::parse_duration)]
    pub retry_base_delay: Duration,

    /// Longest delay between those tries.
    #[arg(long, env = "TENANTRY_RETRY_MAX_DELAY", default_value = "10s", value_parser = humantime::parse_duration)]
    pub retry_max_delay: Duration,

    /// Shortest wait before a failed (rolled back) tenant is tried again without a
    /// spec change; it doubles with each failure in a row, up to --failure-backoff-max.
    #[arg(long, env = "TENANTRY_FAILURE_BACKOFF", default_value = "1m", value_parser = humantime::parse_duration)]
    pub failure_backoff: Duration,

    /// Longest wait before a failed tenant is tried again.
    #[arg(long, env = "TENANTRY_FAILURE_BACKOFF_MAX", default_value = "1h", value_parser = humantime::parse_duration)]
    pub failure_backoff_max: Duration,

    /// How often the isolation of a settled tenant is measured again (jittered
    /// by ±10% so tenants do not move in step). Drift found is repaired.
    #[arg(long, env = "TENANTRY_PROBE_INTERVAL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub probe_interval: Duration,

    /// What to do when a probe finds drift tenantry has no right to repair (a
    /// tenant role made SUPERUSER or BYPASSRLS, which a non-superuser admin cannot
    /// undo): `fail-closed` disables the role's login until the flag is gone;
    /// `report-only` only reports it.
    #[arg(long, env = "TENANTRY_UNREPAIRABLE_DRIFT", value_enum, default_value_t = UnrepairableDrift::FailClosed)]
    pub unrepairable_drift: UnrepairableDrift,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum UnrepairableDrift {
    FailClosed,
    ReportOnly,
}

impl EngineArgs {
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            attempts: self.retry_attempts.max(1),
            base_delay: self.retry_base_delay,
            max_delay: self.retry_max_delay,
        }
    }
}

/// The controller process.
#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub backends: BackendArgs,

    #[command(flatten)]
    pub engine: EngineArgs,

    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, env = "TENANTRY_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,

    /// Tenants reconciled at once.
    #[arg(long, env = "TENANTRY_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,

    /// Of those, how many may be isolation probes of settled tenants at once
    /// (default: a quarter of --concurrency, at least 1), so probes never
    /// hold up onboarding. When the tenants outgrow what these slots measure
    /// in one probe interval, the interval stretches (tenantry_probe_round_seconds).
    #[arg(long, env = "TENANTRY_PROBE_CONCURRENCY")]
    pub probe_concurrency: Option<u16>,

    /// Manage only the Tenants whose labels match this selector (e.g.
    /// `tenantry.dev/shard=a`), so several operators can split the tenants.
    /// Empty: every Tenant.
    #[arg(long, env = "TENANTRY_TENANT_SELECTOR", default_value = "")]
    pub tenant_selector: String,

    /// Write each TenantClass's status (Ready, tenants, server). Turn it
    /// off in all but one of several installations that share the classes
    /// but select different Tenants: each counts only its own.
    #[arg(long, env = "TENANTRY_CLASS_STATUS", default_value_t = true, action = clap::ArgAction::Set)]
    pub class_status: bool,

    /// Namespace of the Events tenantry publishes about Tenants (which are
    /// cluster-scoped). Kubernetes 1.30+ accepts `default`.
    #[arg(long, env = "TENANTRY_EVENT_NAMESPACE", default_value = "default")]
    pub event_namespace: String,

    /// The identity the audit trail names as the actor of tenantry's changes
    /// (the pod comes from POD_NAME, else the host name).
    #[arg(long, env = "TENANTRY_AUDIT_ACTOR", default_value = "tenantry")]
    pub audit_actor: String,

    /// Schema of the audit trail in the database of --database-url, created on
    /// first start and owned by a NOLOGIN role `<schema>_owner` (the admin
    /// may only read and append).
    #[arg(long, env = "TENANTRY_AUDIT_SCHEMA", default_value = crate::audit::DEFAULT_SCHEMA)]
    pub audit_schema: String,

    #[command(flatten)]
    pub audit_anchor: AuditAnchorArgs,

    /// How often the audit store's guards are checked again and, with an
    /// anchor, a checkpoint is written (when any chain moved).
    #[arg(long, env = "TENANTRY_AUDIT_CHECKPOINT_INTERVAL", default_value = "1m", value_parser = humantime::parse_duration)]
    pub audit_checkpoint_interval: Duration,

    #[command(flatten)]
    pub runtime: crate::runtime::RuntimeArgs,
}

/// Where the audit trail's checkpoints are anchored, outside the database.
#[derive(clap::Args, Clone, Debug)]
pub struct AuditAnchorArgs {
    /// S3 bucket that holds the audit trail's checkpoints under Object Lock
    /// (created with Object Lock when absent). Without it the trail is
    /// checked only against itself, which a database superuser can rewrite.
    #[arg(long = "audit-anchor-bucket", env = "TENANTRY_AUDIT_ANCHOR_BUCKET")]
    pub bucket: Option<String>,

    /// KMS HMAC key that MACs each checkpoint: a key id, ARN, or
    /// `alias/...` (created as an HMAC_256 key when absent).
    #[arg(
        long = "audit-mac-key",
        env = "TENANTRY_AUDIT_MAC_KEY",
        default_value = "alias/tenantry-audit"
    )]
    pub mac_key: String,

    /// How long each checkpoint stays locked (COMPLIANCE mode: nobody can
    /// delete it before then).
    #[arg(
        long = "audit-anchor-retention",
        env = "TENANTRY_AUDIT_ANCHOR_RETENTION",
        default_value = "365days",
        value_parser = humantime::parse_duration
    )]
    pub retention: Duration,

    /// Address the anchor bucket in the path (as --s3-force-path-style).
    #[arg(long = "audit-anchor-path-style", env = "TENANTRY_S3_FORCE_PATH_STYLE")]
    pub force_path_style: Option<bool>,
}

impl AuditAnchorArgs {
    /// The anchor, when a bucket is configured.
    pub fn anchor(&self, sdk: &aws_config::SdkConfig) -> Option<crate::audit::anchor::Anchor> {
        let bucket = self.bucket.as_deref().filter(|b| !b.is_empty())?;
        let path_style = self
            .force_path_style
            .unwrap_or_else(|| sdk.endpoint_url().is_some());
        Some(crate::audit::anchor::Anchor::new(
            sdk,
            path_style,
            bucket,
            &self.mac_key,
            self.retention,
        ))
    }
}

fn parse_secret(value: &str) -> Result<SecretString, String> {
    if value.is_empty() {
        return Err("must not be empty".to_string());
    }
    Ok(SecretString::from(value.to_string()))
}

/// Every backend client, ready to use.
#[derive(Clone)]
pub struct Backends {
    pub database: Arc<dyn TenantDatabase>,
    pub keys: Arc<dyn KeyManager>,
    pub storage: Arc<dyn ObjectStorage>,
    pub secrets: Arc<dyn SecretStore>,
    pub kube_secrets: Arc<dyn CredentialSecrets>,
    pub bucket_prefix: String,
    pub region: String,
    /// The PostgreSQL backend itself, for work beyond the trait (probes, audit).
    pub postgres: Arc<PostgresBackend>,
    pub shared_tables: Arc<Vec<SharedTable>>,
    pub probes: Arc<Probes>,
    /// IAM principal template the bucket and key policies allow.
    pub principal: Option<String>,
    /// Who the bucket and key policies let use a tenant's data.
    pub access: Arc<AccessPrincipals>,
    pub identity: Arc<dyn TenantIdentity>,
    pub service_accounts: Arc<dyn ServiceAccounts>,
    /// The class's `aws.identity`: each tenant gets an IAM role.
    pub role: Option<Arc<ClassIdentity>>,
}

/// The isolation probes, one per layer.
pub struct Probes {
    pub database: DatabaseProbe,
    pub storage: StorageProbe,
    pub encryption: EncryptionProbe,
    /// The storage and encryption layers again, as the tenant's IAM role.
    pub tenant_access: TenantAccessProbe,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Invalid(String),
    // The cause is in the message, not also a `source`: `{:#}` would print
    // it twice.
    #[error("cannot reach PostgreSQL: {0}")]
    Postgres(crate::backends::BackendError),
    #[error("cannot set up row-level security on the shared tables: {0}")]
    SharedTables(crate::backends::BackendError),
    #[error("no AWS region: set AWS_REGION (or a profile with a region)")]
    NoRegion,
}

/// What one set of backend clients is built from: the operator's flags, or
/// a TenantClass laid over them.
#[derive(Clone, Debug)]
pub struct BackendSettings {
    pub database_url: SecretString,
    /// The sslmode and CA bundle, laid over the URL's.
    pub database_tls: DatabaseTls,
    pub max_connections: u32,
    pub tenant_database_host: Option<String>,
    pub tenant_database_port: Option<u16>,
    pub bucket_prefix: String,
    pub shared_tables: Vec<SharedTable>,
    /// Overrides the region of the AWS configuration.
    pub region: Option<String>,
    pub s3_force_path_style: Option<bool>,
    /// IAM principal the bucket and key policies allow, with `{tenant}` for
    /// the tenant's name.
    pub principal: Option<String>,
    /// The class's `aws.identity`.
    pub identity: Option<ClassIdentity>,
    /// The class's `aws.administrators`.
    pub administrators: Vec<String>,
    /// See [`BackendArgs::aws_operator_principal`].
    pub operator_principal: Option<String>,
    /// See [`BackendArgs::aws_emulator`].
    pub aws_emulator: bool,
    /// Paces KMS CreateKey; cloned settings share one bucket.
    pub kms_create_limit: Option<Arc<RateLimiter>>,
    /// Session timeouts of every tenant role (a class's `database`).
    pub role_limits: RoleLimits,
    /// See [`BackendArgs::operator_namespace`].
    pub operator_namespace: Option<String>,
}

impl BackendSettings {
    pub fn from_args(args: &BackendArgs) -> Self {
        Self {
            database_url: args.database_url.clone(),
            database_tls: args.database_tls.settings(),
            max_connections: args.database_max_connections,
            tenant_database_host: args.tenant_database_host.clone(),
            tenant_database_port: args.tenant_database_port,
            bucket_prefix: args.bucket_prefix.clone(),
            shared_tables: args.shared_tables.clone(),
            region: None,
            s3_force_path_style: args.s3_force_path_style,
            principal: None,
            identity: None,
            administrators: Vec::new(),
            operator_principal: args.aws_operator_principal.clone(),
            aws_emulator: args.aws_emulator,
            kms_create_limit: RateLimiter::new(args.kms_create_rate).map(Arc::new),
            role_limits: RoleLimits::default(),
            operator_namespace: args.operator_namespace.clone(),
        }
    }

    /// `host:port/database` of the admin URL: which server this is, without
    /// credentials.
    pub fn server(&self) -> Result<String, ConfigError> {
        use secrecy::ExposeSecret;
        let options: sqlx::postgres::PgConnectOptions =
            self.database_url.expose_secret().parse().map_err(|_| {
                ConfigError::Invalid("the admin database URL is not a valid PostgreSQL URL".into())
            })?;
        Ok(format!(
            "{}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or_default()
        ))
    }
}

impl Backends {
    /// Connects to PostgreSQL and loads the AWS configuration from the
    /// standard chain (AWS_REGION, AWS_ENDPOINT_URL, credentials, IRSA, ...).
    pub async fn connect(args: &BackendArgs, kube: kube::Client) -> Result<Self, ConfigError> {
        let sdk = aws::load_sdk_config().await;
        Self::connect_with(&BackendSettings::from_args(args), &sdk, kube).await
    }

    /// Builds every client from `settings` over a loaded AWS configuration.
    pub async fn connect_with(
        settings: &BackendSettings,
        sdk: &aws_config::SdkConfig,
        kube: kube::Client,
    ) -> Result<Self, ConfigError> {
        crate::naming::validate_bucket_prefix(&settings.bucket_prefix)
            .map_err(ConfigError::Invalid)?;
        {
            use secrecy::ExposeSecret;
            // A bad bundle or mode is the configuration's fault, not the server's.
            settings
                .database_tls
                .resolve(settings.database_url.expose_secret())
                .map_err(ConfigError::Invalid)?;
        }
        let postgres = PostgresBackend::connect_with_tls(
            &settings.database_url,
            settings.max_connections,
            settings.tenant_database_host.clone(),
            settings.tenant_database_port,
            &settings.database_tls,
        )
        .await
        .map_err(ConfigError::Postgres)?
        .with_shared_tables(settings.shared_tables.clone())
        .with_role_limits(settings.role_limits.clone());
        let postgres = Arc::new(postgres);
        let sdk = match &settings.region {
            Some(region) => sdk
                .to_builder()
                .region(aws_config::Region::new(region.clone()))
                .build(),
            None => sdk.clone(),
        };
        let region = sdk
            .region()
            .map(|r| r.to_string())
            .ok_or(ConfigError::NoRegion)?;
        let path_style = settings
            .s3_force_path_style
            .unwrap_or_else(|| sdk.endpoint_url().is_some());
        crate::backends::shared_tables::ensure_shared_security(
            postgres.pool(),
            &settings.shared_tables,
        )
        .await
        .map_err(ConfigError::SharedTables)?;
        let access = Arc::new(
            AccessPrincipals::new(&sdk)
                .with_principal(settings.principal.clone())
                .with_tenant_roles(
                    settings
                        .identity
                        .as_ref()
                        .map(|_| settings.bucket_prefix.clone()),
                )
                .with_administrators(settings.administrators.clone())
                .with_operator(settings.operator_principal.clone()),
        );
        let kube_secrets = Arc::new(KubeSecrets::new(kube));
        let keys: Arc<dyn KeyManager> = Arc::new(
            KmsBackend::new(&sdk)
                .with_access(access.clone())
                .with_create_limit(settings.kms_create_limit.clone()),
        );
        let storage: Arc<dyn ObjectStorage> =
            Arc::new(S3Backend::new(&sdk, path_style).with_access(access.clone()));
        let identity: Arc<dyn TenantIdentity> = Arc::new(IamBackend::new(&sdk));
        let probes = Probes {
            database: DatabaseProbe::new(postgres.pool().clone(), settings.shared_tables.clone())
                .with_role_limits(settings.role_limits.clone()),
            storage: StorageProbe::new(&sdk, path_style),
            encryption: EncryptionProbe::new(&sdk),
            tenant_access: TenantAccessProbe::new(
                &sdk,
                path_style,
                settings.aws_emulator,
                keys.clone(),
                storage.clone(),
                identity.clone(),
                &settings.bucket_prefix,
            ),
        };
        Ok(Self {
            shared_tables: Arc::new(settings.shared_tables.clone()),
            probes: Arc::new(probes),
            database: postgres.clone(),
            keys,
            storage,
            secrets: Arc::new(SecretsManagerBackend::new(&sdk)),
            kube_secrets: kube_secrets.clone(),
            service_accounts: kube_secrets,
            identity,
            role: settings.identity.clone().map(Arc::new),
            access,
            bucket_prefix: settings.bucket_prefix.clone(),
            principal: settings.principal.clone(),
            region,
            postgres,
        })
    }
}
