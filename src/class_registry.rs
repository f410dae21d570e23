//! TenantClasses resolved into what a tenant's reconcile needs: the backend
//! clients of the class's server and region, and its defaults.
//!
//! Classes are read from a reflector store (no API call per reconcile), the
//! admin URL from the class's Secret. Built clients are kept per class and
//! rebuilt only when the class or its URL changes.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::core::{Selector, SelectorExt};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use secrecy::{ExposeSecret, SecretString};

use crate::api::{
    DEFAULT_GRACE_PERIOD, DeletionPolicy, IsolationMode, SecretKeyRef, Tenant, TenantClass,
    TenantClassSpec,
};
use crate::backends::pg_tls::{CaSource, DatabaseTls};
use crate::config::{BackendSettings, Backends, ConfigError};
use crate::isolation::SharedTable;

/// The class name recorded for tenants placed by the operator's flags.
pub const FLAGS_CLASS: &str = "(operator flags)";

/// A class, resolved: its clients and its rules.
pub struct ClassSettings {
    pub rules: ClassRules,
    pub backends: Backends,
    pub probe_interval: Duration,
    /// The TenantClass's `metadata.generation` these settings were built
    /// from; none for the flags.
    pub generation: Option<i64>,
}

impl ClassSettings {
    /// Where a tenant provisioned now with this class lives.
    pub fn placement(&self) -> crate::api::Placement {
        crate::api::Placement {
            class: self.rules.name.clone(),
            server: self.rules.server.clone(),
            class_generation: self.generation,
        }
    }
}

/// What a class decides about its tenants' specs (plain data, so the
/// controller's checks are testable without clients).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassRules {
    /// The TenantClass's name, or [`FLAGS_CLASS`].
    pub name: String,
    /// `host:port/database` of the class's PostgreSQL server.
    pub server: String,
    pub bucket_prefix: String,
    pub default_mode: IsolationMode,
    pub allow_override: bool,
    /// The most connections a tenant's role may be given.
    pub max_connection_limit: Option<i32>,
    pub deletion_policy: DeletionPolicy,
    pub grace_period: String,
    /// No deletion of this class's tenants destroys data sooner.
    pub min_grace_period: Option<Duration>,
    /// Where its tenants' credentials Secrets may be written.
    pub namespaces: NamespacePolicy,
}

/// Where a class's tenants may have their credentials Secret written.
/// `kube-*` namespaces and the operator's own are never allowed: the first
/// hold the cluster's machinery, the second the admin URLs of every class.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespacePolicy {
    /// Allowed by name (the class's `credentials.allowedNamespaces`).
    pub allowed: Vec<String>,
    /// Allowed by labels (the class's `credentials.namespaceSelector`).
    pub selector: Option<Selector>,
    pub operator_namespace: Option<String>,
}

impl NamespacePolicy {
    /// Why `namespace` (with `labels`) may not hold a Secret of `class`'s
    /// tenants, or Ok.
    pub fn check(
        &self,
        class: &str,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), String> {
        if namespace.starts_with("kube-") {
            return Err(format!(
                "namespace {namespace} (spec.credentials.namespace) is a kube-* namespace, where tenantry writes no tenant's Secret"
            ));
        }
        if self.operator_namespace.as_deref() == Some(namespace) {
            return Err(format!(
                "namespace {namespace} (spec.credentials.namespace) is the operator's own, where tenantry writes no tenant's Secret"
            ));
        }
        let restricted = !self.allowed.is_empty() || self.selector.is_some();
        let listed = self.allowed.iter().any(|n| n == namespace);
        let selected = self.selector.as_ref().is_some_and(|s| s.matches(labels));
        if restricted && !listed && !selected {
            let mut allowed = Vec::new();
            if !self.allowed.is_empty() {
                allowed.push(format!("the namespaces {:?}", self.allowed));
            }
            if let Some(selector) = &self.selector {
                allowed.push(format!("namespaces labelled {selector}"));
            }
            return Err(format!(
                "TenantClass {class} allows credentials only in {} (credentials.allowedNamespaces, \
                 credentials.namespaceSelector); namespace {namespace} is neither",
                allowed.join(" or ")
            ));
        }
        Ok(())
    }
}

/// See [`ClassRegistry::check`].
pub enum ClassCheck {
    /// In use: the clients its tenants use.
    Built(Arc<ClassSettings>),
    /// Valid, not in use yet: nothing was connected.
    Valid { server: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ClassError {
    #[error("TenantClass {0:?} (spec.class) does not exist; create it, or name an existing class")]
    NotFound(String),
    #[error(
        "several TenantClasses are annotated tenantry.dev/is-default-class=true ({0}); a tenant without spec.class cannot choose: keep the annotation on one"
    )]
    SeveralDefaults(String),
    #[error("TenantClass {class:?} cannot be used: {message}")]
    Invalid { class: String, message: String },
    #[error("TenantClass {class:?}: {source}")]
    Unavailable {
        class: String,
        #[source]
        source: ConfigError,
    },
    #[error("TenantClass {class:?} cannot be read from the API server (retried): {source}")]
    Unreadable {
        class: String,
        #[source]
        source: kube::Error,
    },
}

impl ClassError {
    /// The condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "ClassNotFound",
            Self::SeveralDefaults(_) => "SeveralDefaultClasses",
            Self::Invalid { .. } => "ClassInvalid",
            Self::Unavailable { .. } | Self::Unreadable { .. } => "ClassUnavailable",
        }
    }
}

/// Every class the operator knows, and the clients built for them.
pub struct ClassRegistry {
    client: Client,
    flags_settings: BackendSettings,
    default_probe_interval: Duration,
    sdk: aws_config::SdkConfig,
    flags: Arc<ClassSettings>,
    classes: Store<TenantClass>,
    built: Mutex<HashMap<String, (u64, Arc<ClassSettings>)>>,
    /// One build at a time: two reconciles of a new class would otherwise
    /// both connect and both set up shared-table security.
    building: tokio::sync::Mutex<()>,
}

impl ClassRegistry {
    /// Starts watching TenantClasses and waits until the first list is in,
    /// so that no tenant is resolved against an empty cache.
    pub async fn start(
        client: Client,
        flags_settings: BackendSettings,
        flags_backends: Backends,
        sdk: aws_config::SdkConfig,
        default_probe_interval: Duration,
    ) -> anyhow::Result<Self> {
        let api: Api<TenantClass> = Api::all(client.clone());
        if let Err(e) = api
            .list_metadata(&kube::api::ListParams::default().limit(1))
            .await
        {
            anyhow::bail!(
                "cannot list TenantClasses ({e}); is the TenantClass CRD installed? run `tenantry crd | kubectl apply -f -`"
            );
        }
        let (reader, writer) = reflector::store();
        let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
            .default_backoff()
            .applied_objects();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(item) = stream.next().await {
                if let Err(error) = item {
                    tracing::warn!(%error, "TenantClass watch error; retrying");
                }
            }
        });
        reader
            .wait_until_ready()
            .await
            .map_err(|e| anyhow::anyhow!("TenantClass cache never filled: {e}"))?;
        let server = flags_settings.server()?;
        let flags = Arc::new(ClassSettings {
            rules: ClassRules {
                name: FLAGS_CLASS.to_string(),
                server,
                bucket_prefix: flags_backends.bucket_prefix.clone(),
                default_mode: IsolationMode::default(),
                allow_override: true,
                max_connection_limit: None,
                deletion_policy: DeletionPolicy::default(),
                grace_period: DEFAULT_GRACE_PERIOD.to_string(),
                min_grace_period: None,
                namespaces: NamespacePolicy {
                    operator_namespace: flags_settings.operator_namespace.clone(),
                    ..NamespacePolicy::default()
                },
            },
            backends: flags_backends,
            probe_interval: default_probe_interval,
            generation: None,
        });
        Ok(Self {
            client,
            flags_settings,
            default_probe_interval,
            sdk,
            flags,
            classes: reader,
            built: Mutex::default(),
            building: tokio::sync::Mutex::default(),
        })
    }

    /// The class the operator's flags make.
    pub fn flags(&self) -> Arc<ClassSettings> {
        self.flags.clone()
    }

    /// The cached TenantClasses, for mapping a class change to its tenants.
    pub fn store(&self) -> Store<TenantClass> {
        self.classes.clone()
    }

    /// The name of the class a tenant is in: `spec.class`, else the class it
    /// was placed with, else the default class, else the flags.
    pub fn class_name_of(&self, tenant: &Tenant) -> Result<String, ClassError> {
        class_name_of(tenant, &self.classes.state())
    }

    /// The settings of the tenant's class, building its clients if needed.
    pub async fn resolve(&self, tenant: &Tenant) -> Result<Arc<ClassSettings>, ClassError> {
        let name = self.class_name_of(tenant)?;
        if name == FLAGS_CLASS {
            return Ok(self.flags.clone());
        }
        let class = match self
            .classes
            .get(&kube::runtime::reflector::ObjectRef::new(&name))
        {
            Some(class) => class,
            // The store follows its own watch, which may lag the one that
            // woke this tenant for the new class: the API server decides.
            None => match Api::<TenantClass>::all(self.client.clone())
                .get_opt(&name)
                .await
            {
                Ok(Some(class)) => Arc::new(class),
                Ok(None) => return Err(ClassError::NotFound(name)),
                Err(source) => {
                    return Err(ClassError::Unreadable {
                        class: name,
                        source,
                    });
                }
            },
        };
        let admin_url = self.admin_url(&name, &class.spec).await?;
        let ca = self.ca_bundle(&name, &class.spec).await?;
        let fingerprint = fingerprint(&class.spec, admin_url.as_ref(), ca.as_ref());
        let cached = || {
            self.built
                .lock()
                .expect("lock")
                .get(&name)
                .filter(|(seen, _)| *seen == fingerprint)
                .map(|(_, built)| built.clone())
        };
        if let Some(built) = cached() {
            return Ok(built);
        }
        let _building = self.building.lock().await;
        if let Some(built) = cached() {
            return Ok(built);
        }
        let mut settings = self.build(&name, &class.spec, admin_url, ca).await?;
        settings.generation = class.metadata.generation;
        let settings = Arc::new(settings);
        self.built
            .lock()
            .expect("lock")
            .insert(name, (fingerprint, settings.clone()));
        Ok(settings)
    }

    async fn admin_url(
        &self,
        class: &str,
        spec: &TenantClassSpec,
    ) -> Result<Option<SecretString>, ClassError> {
        let Some(postgres) = &spec.postgres else {
            return Ok(None);
        };
        let reference = &postgres.admin_url_secret_ref;
        let value = self
            .secret_value(class, reference, "url", "spec.postgres.adminUrlSecretRef")
            .await?;
        let url = String::from_utf8(value).map_err(|_| ClassError::Invalid {
            class: class.to_string(),
            message: format!(
                "key {:?} of Secret {}/{} is not UTF-8",
                reference.key.as_deref().unwrap_or("url"),
                reference.namespace,
                reference.name
            ),
        })?;
        Ok(Some(SecretString::from(url.trim().to_string())))
    }

    /// The PEM CA bundle of the class's `spec.postgres.caSecretRef`, not yet
    /// checked (building the class's clients does that).
    async fn ca_bundle(
        &self,
        class: &str,
        spec: &TenantClassSpec,
    ) -> Result<Option<CaSource>, ClassError> {
        let Some(reference) = spec
            .postgres
            .as_ref()
            .and_then(|p| p.ca_secret_ref.as_ref())
        else {
            return Ok(None);
        };
        let pem = self
            .secret_value(class, reference, "ca.crt", "spec.postgres.caSecretRef")
            .await?;
        Ok(Some(CaSource::Pem {
            origin: format!(
                "key {:?} of Secret {}/{} (spec.postgres.caSecretRef)",
                reference.key.as_deref().unwrap_or("ca.crt"),
                reference.namespace,
                reference.name
            ),
            pem,
        }))
    }

    /// One key of a Secret a class points at (`field`, for messages).
    async fn secret_value(
        &self,
        class: &str,
        reference: &SecretKeyRef,
        default_key: &str,
        field: &str,
    ) -> Result<Vec<u8>, ClassError> {
        let key = reference.key.as_deref().unwrap_or(default_key);
        let invalid = |message: String| ClassError::Invalid {
            class: class.to_string(),
            message,
        };
        // Whoever may create a TenantClass must not make the operator read a
        // Secret elsewhere (and use it as an admin URL, or leak its shape in
        // an error): class Secrets live in the operator's namespace.
        if let Some(own) = &self.flags_settings.operator_namespace
            && reference.namespace != *own
        {
            return Err(invalid(format!(
                "{field} names a Secret in namespace {}; a class's Secrets must be in the operator's namespace {own}",
                reference.namespace
            )));
        }
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &reference.namespace);
        let secret = secrets
            .get_opt(&reference.name)
            .await
            .map_err(|e| ClassError::Unavailable {
                class: class.to_string(),
                source: ConfigError::Invalid(format!(
                    "cannot read Secret {}/{}: {e}",
                    reference.namespace, reference.name
                )),
            })?
            .ok_or_else(|| {
                invalid(format!(
                    "Secret {}/{} ({field}) does not exist",
                    reference.namespace, reference.name
                ))
            })?;
        let value = secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .ok_or_else(|| {
                invalid(format!(
                    "Secret {}/{} has no key {key:?} ({field}.key)",
                    reference.namespace, reference.name
                ))
            })?;
        Ok(value.0.clone())
    }

    /// Everything of the class that can be checked without connecting to
    /// its servers: its settings and rules, or why they are invalid.
    fn prepare(
        &self,
        name: &str,
        spec: &TenantClassSpec,
        admin_url: Option<SecretString>,
        ca: Option<CaSource>,
    ) -> Result<(BackendSettings, ClassRules, Duration), ClassError> {
        let invalid = |message: String| ClassError::Invalid {
            class: name.to_string(),
            message,
        };
        let settings = self
            .class_backend_settings(spec, admin_url, ca)
            .map_err(invalid)?;
        let probe_interval = match &spec.probe_interval {
            Some(text) => humantime::parse_duration(text)
                .map_err(|e| invalid(format!("spec.probeInterval {text:?}: {e}")))?,
            None => self.default_probe_interval,
        };
        let grace_period = spec
            .deletion
            .grace_period
            .clone()
            .unwrap_or_else(|| DEFAULT_GRACE_PERIOD.to_string());
        humantime::parse_duration(&grace_period)
            .map_err(|e| invalid(format!("spec.deletion.gracePeriod {grace_period:?}: {e}")))?;
        let namespaces =
            namespace_policy(spec, settings.operator_namespace.clone()).map_err(invalid)?;
        let min_grace_period = match &spec.deletion.min_grace_period {
            Some(text) => Some(
                humantime::parse_duration(text)
                    .map_err(|e| invalid(format!("spec.deletion.minGracePeriod {text:?}: {e}")))?,
            ),
            None => None,
        };
        let server = settings.server().map_err(|e| invalid(e.to_string()))?;
        {
            use secrecy::ExposeSecret;
            settings
                .database_tls
                .resolve(settings.database_url.expose_secret())
                .map_err(invalid)?;
        }
        let rules = ClassRules {
            name: name.to_string(),
            server,
            bucket_prefix: settings.bucket_prefix.clone(),
            default_mode: spec.isolation.default_mode,
            allow_override: spec.isolation.allow_override,
            max_connection_limit: spec.database.max_connection_limit,
            min_grace_period,
            namespaces,
            deletion_policy: spec.deletion.policy.unwrap_or_default(),
            grace_period,
        };
        Ok((settings, rules, probe_interval))
    }

    async fn build(
        &self,
        name: &str,
        spec: &TenantClassSpec,
        admin_url: Option<SecretString>,
        ca: Option<CaSource>,
    ) -> Result<ClassSettings, ClassError> {
        let (settings, rules, probe_interval) = self.prepare(name, spec, admin_url, ca)?;
        let backends = Backends::connect_with(&settings, &self.sdk, self.client.clone())
            .await
            .map_err(|source| match source {
                ConfigError::Invalid(message) => ClassError::Invalid {
                    class: name.to_string(),
                    message,
                },
                source => ClassError::Unavailable {
                    class: name.to_string(),
                    source,
                },
            })?;
        tracing::info!(class = name, server = %rules.server, "clients of TenantClass ready");
        Ok(ClassSettings {
            rules,
            backends,
            probe_interval,
            generation: None,
        })
    }

    /// What can be said of the class `name` without connecting anew: its
    /// clients, when its tenants had them built (for the current spec and
    /// Secrets), else whether its settings are valid and its server.
    pub async fn check(&self, name: &str) -> Result<ClassCheck, ClassError> {
        let Some(class) = self
            .classes
            .get(&kube::runtime::reflector::ObjectRef::new(name))
        else {
            return Err(ClassError::NotFound(name.to_string()));
        };
        let admin_url = self.admin_url(name, &class.spec).await?;
        let ca = self.ca_bundle(name, &class.spec).await?;
        let fingerprint = fingerprint(&class.spec, admin_url.as_ref(), ca.as_ref());
        let built = self
            .built
            .lock()
            .expect("lock")
            .get(name)
            .filter(|(seen, _)| *seen == fingerprint)
            .map(|(_, built)| built.clone());
        if let Some(built) = built {
            return Ok(ClassCheck::Built(built));
        }
        let (_, rules, _) = self.prepare(name, &class.spec, admin_url, ca)?;
        Ok(ClassCheck::Valid {
            server: rules.server,
        })
    }

    /// The class's backend settings, or why they are invalid. They start
    /// from the flags' so that a class without a `postgres` section, a
    /// region or a bucket prefix uses the operator's own.
    fn class_backend_settings(
        &self,
        spec: &TenantClassSpec,
        admin_url: Option<SecretString>,
        ca: Option<CaSource>,
    ) -> Result<BackendSettings, String> {
        let mut settings = self.flags_settings.clone();
        if let Some(postgres) = &spec.postgres {
            settings.database_url = admin_url.unwrap_or(settings.database_url);
            settings.tenant_database_host = postgres.tenant_host.clone();
            settings.tenant_database_port = postgres.tenant_port;
            if let Some(max) = postgres.max_connections {
                settings.max_connections = max;
            }
            // Another server: what the class and its URL say wins, and the
            // flags only fill in what neither says.
            let flags = &self.flags_settings.database_tls;
            settings.database_tls = DatabaseTls {
                ssl_mode: postgres.ssl_mode,
                ca,
                fallback_ssl_mode: flags.ssl_mode,
                fallback_ca: flags.ca.clone(),
            };
        }
        if let Some(tables) = &spec.shared_tables {
            settings.shared_tables = tables
                .iter()
                .map(|t| t.parse::<SharedTable>())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("spec.sharedTables: {e}"))?;
        }
        if let Some(region) = &spec.aws.region {
            settings.region = Some(region.clone());
        }
        if let Some(prefix) = &spec.aws.bucket_prefix {
            crate::naming::validate_bucket_prefix(prefix)
                .map_err(|e| format!("spec.aws.bucketPrefix: {e}"))?;
            settings.bucket_prefix = prefix.clone();
        }
        settings.principal = spec.aws.principal.clone();
        if let Some(identity) = &spec.aws.identity {
            identity.validate().map_err(|e| format!("spec.{e}"))?;
        }
        settings.identity = spec.aws.identity.clone();
        settings.administrators = spec.aws.administrators.clone();
        settings.role_limits = crate::backends::postgres::RoleLimits {
            statement_timeout: spec.database.statement_timeout.clone(),
            idle_in_transaction_session_timeout: spec
                .database
                .idle_in_transaction_session_timeout
                .clone(),
        };
        settings
            .role_limits
            .validate()
            .map_err(|e| format!("spec.database: {e}"))?;
        Ok(settings)
    }
}

/// Where the class's tenants may have their credentials, or why the class's
/// `credentials` section is invalid.
fn namespace_policy(
    spec: &TenantClassSpec,
    operator_namespace: Option<String>,
) -> Result<NamespacePolicy, String> {
    let selector = match &spec.credentials.namespace_selector {
        Some(selector) => Some(
            Selector::try_from(
                k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector::from(
                    selector.clone(),
                ),
            )
            .map_err(|e| format!("spec.credentials.namespaceSelector: {e}"))?,
        ),
        None => None,
    };
    Ok(NamespacePolicy {
        allowed: spec
            .credentials
            .allowed_namespaces
            .clone()
            .unwrap_or_default(),
        selector,
        operator_namespace,
    })
}

/// See [`ClassRegistry::class_name_of`].
pub fn class_name_of(tenant: &Tenant, classes: &[Arc<TenantClass>]) -> Result<String, ClassError> {
    if let Some(name) = &tenant.spec.class {
        return Ok(name.clone());
    }
    let status = tenant.status.as_ref();
    if let Some(placement) = status.and_then(|s| s.placement.as_ref()) {
        return Ok(placement.class.clone());
    }
    // Provisioned before classes existed: it lives where the flags point.
    if status
        .and_then(|s| s.provisioning.as_ref())
        .is_some_and(|j| j.provisioned)
    {
        return Ok(FLAGS_CLASS.to_string());
    }
    let mut defaults: Vec<String> = classes
        .iter()
        .filter(|c| c.is_default())
        .map(|c| c.name_any())
        .collect();
    defaults.sort();
    match defaults.len() {
        0 => Ok(FLAGS_CLASS.to_string()),
        1 => Ok(defaults.remove(0)),
        _ => Err(ClassError::SeveralDefaults(defaults.join(", "))),
    }
}

/// Changes whenever the class or the URL or CA bundle it points at does;
/// never stored.
fn fingerprint(
    spec: &TenantClassSpec,
    admin_url: Option<&SecretString>,
    ca: Option<&CaSource>,
) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(spec)
        .unwrap_or_default()
        .hash(&mut hasher);
    admin_url
        .map(|u| u.expose_secret().to_string())
        .hash(&mut hasher);
    match ca {
        Some(CaSource::Pem { pem, .. }) => pem.hash(&mut hasher),
        Some(CaSource::File(path)) => path.hash(&mut hasher),
        None => 0u8.hash(&mut hasher),
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{CredentialsSpec, Placement, ProvisioningJournal, TenantSpec, TenantStatus};

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn kube_namespaces_and_the_operators_own_are_never_allowed() {
        let open = NamespacePolicy {
            operator_namespace: Some("tenantry-system".into()),
            ..NamespacePolicy::default()
        };
        assert!(open.check("c", "acme", &labels(&[])).is_ok());
        for ns in ["kube-system", "kube-public", "tenantry-system"] {
            let err = open.check("c", ns, &labels(&[])).unwrap_err();
            assert!(err.contains(ns), "{err}");
        }
        let listing_them = NamespacePolicy {
            allowed: vec!["kube-system".into(), "tenantry-system".into()],
            ..open.clone()
        };
        assert!(
            listing_them
                .check("c", "kube-system", &labels(&[]))
                .is_err()
        );
        assert!(
            listing_them
                .check("c", "tenantry-system", &labels(&[]))
                .is_err()
        );
    }

    #[test]
    fn a_class_allows_namespaces_by_name_or_by_labels_and_names_its_rule() {
        let selector: Selector = k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
            match_labels: Some(labels(&[("tenantry.dev/tenants", "true")])),
            ..Default::default()
        }
        .try_into()
        .unwrap();
        let policy = NamespacePolicy {
            allowed: vec!["apps".into()],
            selector: Some(selector),
            operator_namespace: None,
        };
        assert!(policy.check("gold", "apps", &labels(&[])).is_ok());
        assert!(
            policy
                .check(
                    "gold",
                    "team-a",
                    &labels(&[("tenantry.dev/tenants", "true")])
                )
                .is_ok()
        );
        let err = policy.check("gold", "team-b", &labels(&[])).unwrap_err();
        assert!(
            err.contains("gold")
                && err.contains("apps")
                && err.contains("tenantry.dev/tenants=true"),
            "{err}"
        );
    }

    fn tenant(class: Option<&str>) -> Tenant {
        Tenant::new(
            "acme",
            TenantSpec {
                display_name: None,
                class: class.map(str::to_string),
                database: Default::default(),
                storage: Default::default(),
                credentials: CredentialsSpec {
                    namespace: "apps".into(),
                    secret_name: None,
                },
                deletion: Default::default(),
                suspended: false,
            },
        )
    }

    fn class(name: &str, default: bool) -> Arc<TenantClass> {
        let mut c = TenantClass::new(name, TenantClassSpec::default());
        if default {
            c.metadata.annotations = Some(
                [(
                    crate::api::DEFAULT_CLASS_ANNOTATION.to_string(),
                    "true".to_string(),
                )]
                .into(),
            );
        }
        Arc::new(c)
    }

    #[test]
    fn the_named_class_wins() {
        let classes = [class("standard", true), class("enterprise", false)];
        assert_eq!(
            class_name_of(&tenant(Some("enterprise")), &classes).unwrap(),
            "enterprise"
        );
    }

    #[test]
    fn without_a_name_the_default_class_then_the_flags_apply() {
        let t = tenant(None);
        assert_eq!(
            class_name_of(&t, &[class("standard", true), class("x", false)]).unwrap(),
            "standard"
        );
        assert_eq!(
            class_name_of(&t, &[class("x", false)]).unwrap(),
            FLAGS_CLASS
        );
    }

    #[test]
    fn two_default_classes_are_an_error_naming_both() {
        let err = class_name_of(&tenant(None), &[class("b", true), class("a", true)]).unwrap_err();
        assert_eq!(err.reason(), "SeveralDefaultClasses");
        assert!(err.to_string().contains("a, b"), "{err}");
    }

    #[test]
    fn a_placed_tenant_keeps_its_class_when_the_default_changes() {
        let mut t = tenant(None);
        t.status = Some(TenantStatus {
            placement: Some(Placement {
                class: "standard".into(),
                server: "db:5432/app".into(),
                class_generation: None,
            }),
            ..Default::default()
        });
        assert_eq!(
            class_name_of(&t, &[class("premium", true)]).unwrap(),
            "standard"
        );
    }

    #[test]
    fn a_tenant_provisioned_before_classes_stays_on_the_flags() {
        let mut t = tenant(None);
        t.status = Some(TenantStatus {
            provisioning: Some(ProvisioningJournal {
                provisioned: true,
                ..crate::provision::new_journal()
            }),
            ..Default::default()
        });
        assert_eq!(
            class_name_of(&t, &[class("premium", true)]).unwrap(),
            FLAGS_CLASS
        );
    }
}
