//! Kubernetes: the Secret in the tenant's namespace that applications mount.

use std::collections::BTreeMap;

use async_trait::async_trait;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams};
use kube::{Client, ResourceExt};
use secrecy::{ExposeSecret, SecretString};

use super::Action;
use super::{Backend, BackendError, CredentialSecrets, Operation, SecretWritten, TenantRef, tags};
use crate::metrics::{CallKind, observe};

/// Field manager of every write tenantry makes with server-side apply.
pub const FIELD_MANAGER: &str = "tenantry";

pub struct KubeSecrets {
    pub(super) client: Client,
}

impl KubeSecrets {
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

/// Maps a kube client error: API server trouble is transient, a refusal is not.
pub fn classify(error: kube::Error, what: &str) -> BackendError {
    let message = format!("{what}: {error}");
    match &error {
        kube::Error::Api(status) if status.code == 429 || status.code >= 500 => {
            BackendError::Unavailable {
                backend: Backend::Kubernetes,
                message,
            }
        }
        kube::Error::Api(status) if status.code == 409 => {
            // A concurrent write: reading again and retrying settles it.
            BackendError::Unavailable {
                backend: Backend::Kubernetes,
                message,
            }
        }
        kube::Error::Api(_) => BackendError::Rejected {
            backend: Backend::Kubernetes,
            message,
        },
        _ => BackendError::Unavailable {
            backend: Backend::Kubernetes,
            message,
        },
    }
}

pub(super) fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(s) if s.code == 404)
}

#[async_trait]
impl CredentialSecrets for KubeSecrets {
    async fn namespace_labels(
        &self,
        namespace: &str,
    ) -> Result<Option<BTreeMap<String, String>>, BackendError> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        match observe(
            "kubernetes",
            "GetNamespace",
            CallKind::Read,
            namespaces.get_metadata_opt(namespace),
        )
        .await
        {
            Ok(found) => Ok(found.map(|ns| ns.labels().clone())),
            Err(e) => Err(classify(e, &format!("reading namespace {namespace}"))),
        }
    }

    async fn ensure_secret(
        &self,
        op: &Operation,
        namespace: &str,
        name: &str,
        data: BTreeMap<String, SecretString>,
    ) -> Result<SecretWritten, BackendError> {
        let tenant = &op.tenant;
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let what = format!("Secret {namespace}/{name}");
        let existing = match observe(
            "kubernetes",
            "GetSecret",
            CallKind::Read,
            secrets.get_opt(name),
        )
        .await
        {
            Ok(existing) => existing,
            Err(e) if is_not_found(&e) => None,
            Err(e) => return Err(classify(e, &format!("reading {what}"))),
        };
        let desired: BTreeMap<String, ByteString> = data
            .iter()
            .map(|(k, v)| (k.clone(), ByteString(v.expose_secret().as_bytes().to_vec())))
            .collect();
        let desired_labels = secret_labels(tenant);
        if let Some(existing) = &existing {
            claim(op, existing, &what).await?;
            if is_current(existing, tenant, &desired, &desired_labels) {
                return Ok(SecretWritten {
                    changed: false,
                    version: existing.resource_version(),
                    found_version: existing.resource_version(),
                });
            }
        }
        // Key names only: the values are the credentials.
        let keys: Vec<String> = desired.keys().cloned().collect();
        let audit_detail = serde_json::json!({"keys": keys, "created": existing.is_none()});
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(namespace.to_string()),
                labels: Some(desired_labels),
                annotations: Some(BTreeMap::from([(
                    tags::TENANT_UID.to_string(),
                    tenant.uid.clone(),
                )])),
                ..Default::default()
            },
            type_: Some("Opaque".to_string()),
            data: Some(desired),
            ..Default::default()
        };
        let written = apply(&secrets, namespace, name, &what, &secret).await?;
        op.note(Action::KubernetesSecretWrite, &what, audit_detail)
            .await?;
        let was_released = existing
            .as_ref()
            .is_some_and(|e| e.annotations().contains_key(tags::RELEASED));
        if was_released {
            drop_released_mark(op, &secrets, name, &what).await?;
        }
        Ok(SecretWritten {
            changed: true,
            found_version: existing.as_ref().and_then(|e| e.resource_version()),
            // Dropping the mark wrote again: its version is read next time.
            version: (!was_released)
                .then(|| written.resource_version())
                .flatten(),
        })
    }

    async fn secret_version(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<String>, BackendError> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        match observe(
            "kubernetes",
            "GetSecretMetadata",
            CallKind::Read,
            secrets.get_metadata_opt(name),
        )
        .await
        {
            Ok(found) => Ok(found.and_then(|m| m.resource_version())),
            Err(e) => Err(classify(e, &format!("reading Secret {namespace}/{name}"))),
        }
    }

    async fn delete_secret(
        &self,
        op: &Operation,
        namespace: &str,
        name: &str,
    ) -> Result<(), BackendError> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let what = format!("Secret {namespace}/{name}");
        let calls = ["GetSecret", "DeleteSecret"];
        delete_owned(
            &secrets,
            op,
            name,
            &what,
            calls,
            Action::KubernetesSecretDelete,
        )
        .await
    }

    async fn release_secret(
        &self,
        op: &Operation,
        namespace: &str,
        name: &str,
    ) -> Result<(), BackendError> {
        let tenant = &op.tenant;
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let what = format!("Secret {namespace}/{name}");
        let existing = match observe(
            "kubernetes",
            "GetSecret",
            CallKind::Read,
            secrets.get_metadata_opt(name),
        )
        .await
        {
            Ok(Some(existing)) => existing,
            Ok(None) => return Ok(()),
            Err(e) => return Err(classify(e, &format!("reading {what}"))),
        };
        if existing.annotations().get(tags::TENANT_UID) != Some(&tenant.uid)
            || existing
                .annotations()
                .get(tags::RELEASED)
                .map(String::as_str)
                == Some("true")
        {
            return Ok(());
        }
        let patch = serde_json::json!({"metadata": {"annotations": {tags::RELEASED: "true"}}});
        observe(
            "kubernetes",
            "PatchSecret",
            CallKind::Write,
            secrets.patch(name, &PatchParams::default(), &Patch::Merge(&patch)),
        )
        .await
        .map_err(|e| classify(e, &format!("releasing {what}")))?;
        op.note(
            Action::KubernetesSecretRelease,
            &what,
            serde_json::json!({}),
        )
        .await
    }
}

/// Deletes an object (a Secret, a ServiceAccount) if the tenant's uid
/// annotation is on it, and only that object (a uid precondition): one of
/// someone else, or of a later Tenant of the same name, is left.
pub(super) async fn delete_owned<K>(
    api: &Api<K>,
    op: &Operation,
    name: &str,
    what: &str,
    // The metric names of the read and the delete.
    [get_call, delete_call]: [&'static str; 2],
    action: Action,
) -> Result<(), BackendError>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let existing = match observe(
        "kubernetes",
        get_call,
        CallKind::Read,
        api.get_metadata_opt(name),
    )
    .await
    {
        Ok(Some(existing)) => existing,
        Ok(None) => return Ok(()),
        Err(e) if is_not_found(&e) => return Ok(()),
        Err(e) => return Err(classify(e, &format!("reading {what}"))),
    };
    if existing.annotations().get(tags::TENANT_UID) != Some(&op.tenant.uid) {
        tracing::warn!(object = %what, "not deleting what this tenant does not own");
        return Ok(());
    }
    let params = DeleteParams {
        preconditions: existing.uid().map(|uid| kube::api::Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..Default::default()
    };
    match observe(
        "kubernetes",
        delete_call,
        CallKind::Write,
        api.delete(name, &params),
    )
    .await
    {
        Ok(_) => op.note(action, what, serde_json::json!({})).await,
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(classify(e, &format!("deleting {what}"))),
    }
}

/// Refuses an existing object (a Secret, a ServiceAccount) that is not the
/// tenant's; one released by a Tenant of the same name is taken over.
pub(super) async fn claim<K: ResourceExt>(
    op: &Operation,
    existing: &K,
    what: &str,
) -> Result<(), BackendError> {
    let owner_tags = existing
        .labels()
        .iter()
        .chain(existing.annotations().iter())
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .filter(|(k, _)| k.starts_with("tenantry.dev/"));
    match op.tenant.ownership_of(owner_tags) {
        super::Ownership::Ours => {}
        super::Ownership::Released => {
            op.require_recorded_release(Backend::Kubernetes, what, what)
                .await?;
            op.note_adopted_release()
        }
        super::Ownership::Foreign(detail) => {
            return Err(BackendError::Conflict {
                backend: Backend::Kubernetes,
                resource: what.to_string(),
                detail,
            });
        }
        super::Ownership::Untagged => {
            return Err(BackendError::Conflict {
                backend: Backend::Kubernetes,
                resource: what.to_string(),
                detail: "it was not made by tenantry".to_string(),
            });
        }
    }
    Ok(())
}

/// Whether the Secret already holds what would be written, so that an
/// unchanged Secret is not written (and audited) on every reconcile.
fn is_current(
    existing: &Secret,
    tenant: &TenantRef,
    desired: &BTreeMap<String, ByteString>,
    desired_labels: &BTreeMap<String, String>,
) -> bool {
    let labels_match = desired_labels
        .iter()
        .all(|(k, v)| existing.labels().get(k) == Some(v));
    let uid_matches = existing.annotations().get(tags::TENANT_UID) == Some(&tenant.uid);
    let released = existing.annotations().contains_key(tags::RELEASED);
    existing.data.as_ref() == Some(desired) && labels_match && uid_matches && !released
}

/// Server-side apply of the whole Secret.
async fn apply(
    secrets: &Api<Secret>,
    namespace: &str,
    name: &str,
    what: &str,
    secret: &Secret,
) -> Result<Secret, BackendError> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    observe(
        "kubernetes",
        "ApplySecret",
        CallKind::Write,
        secrets.patch(name, &params, &Patch::Apply(secret)),
    )
    .await
    .map_err(|e| {
        if matches!(&e, kube::Error::Api(s) if s.code == 404) {
            BackendError::Missing {
                backend: Backend::Kubernetes,
                message: format!(
                    "namespace {namespace} does not exist; tenantry does not create namespaces"
                ),
            }
        } else {
            classify(e, &format!("writing {what}"))
        }
    })
}

/// Adopted: a later Tenant of the same name must not adopt it again.
async fn drop_released_mark(
    op: &Operation,
    secrets: &Api<Secret>,
    name: &str,
    what: &str,
) -> Result<(), BackendError> {
    let patch = serde_json::json!({"metadata": {"annotations": {tags::RELEASED: null}}});
    observe(
        "kubernetes",
        "PatchSecret",
        CallKind::Write,
        secrets.patch(name, &PatchParams::default(), &Patch::Merge(&patch)),
    )
    .await
    .map_err(|e| classify(e, &format!("adopting {what}")))?;
    op.note(Action::KubernetesSecretAdopt, what, serde_json::json!({}))
        .await?;
    Ok(())
}

pub(super) fn secret_labels(tenant: &TenantRef) -> BTreeMap<String, String> {
    BTreeMap::from([
        (tags::TENANT.to_string(), tenant.name.clone()),
        (
            tags::MANAGED_BY.to_string(),
            tags::MANAGED_BY_VALUE.to_string(),
        ),
        (
            "app.kubernetes.io/managed-by".to_string(),
            tags::MANAGED_BY_VALUE.to_string(),
        ),
    ])
}
