//! Kubernetes: the ServiceAccount the tenant's workloads run as, which IRSA
//! and EKS Pod Identity turn into the tenant's IAM role. Owned like the
//! credentials Secret: labels name the tenant, an annotation its uid.

use std::collections::BTreeMap;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::ResourceExt;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};

use super::kube::{
    FIELD_MANAGER, KubeSecrets, claim, classify, delete_owned, is_not_found, secret_labels,
};
use super::{Action, Backend, BackendError, Operation, ServiceAccounts, tags};
use crate::metrics::{CallKind, observe};

#[async_trait]
impl ServiceAccounts for KubeSecrets {
    async fn ensure_service_account(
        &self,
        op: &Operation,
        namespace: &str,
        name: &str,
        annotations: BTreeMap<String, String>,
    ) -> Result<(), BackendError> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let what = format!("ServiceAccount {namespace}/{name}");
        let existing = match observe(
            "kubernetes",
            "GetServiceAccount",
            CallKind::Read,
            api.get_opt(name),
        )
        .await
        {
            Ok(existing) => existing,
            Err(e) => return Err(classify(e, &format!("reading {what}"))),
        };
        let labels = secret_labels(&op.tenant);
        let mut annotations = annotations;
        annotations.insert(tags::TENANT_UID.to_string(), op.tenant.uid.clone());
        if let Some(existing) = &existing {
            claim(op, existing, &what).await?;
            let current = labels
                .iter()
                .all(|(k, v)| existing.labels().get(k) == Some(v))
                && annotations
                    .iter()
                    .all(|(k, v)| existing.annotations().get(k) == Some(v))
                && !existing.annotations().contains_key(tags::RELEASED);
            if current {
                return Ok(());
            }
        }
        let account = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(namespace.to_string()),
                labels: Some(labels),
                annotations: Some(annotations.clone()),
                ..Default::default()
            },
            // Applications read the role's ARN from the Secret; a token
            // is mounted only where the pod asks for one.
            automount_service_account_token: Some(false),
            ..Default::default()
        };
        observe(
            "kubernetes",
            "ApplyServiceAccount",
            CallKind::Write,
            api.patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&account),
            ),
        )
        .await
        .map_err(|e| {
            if is_not_found(&e) {
                BackendError::Missing {
                    backend: Backend::Kubernetes,
                    message: format!(
                        "namespace {namespace} does not exist; tenantry does not create namespaces"
                    ),
                }
            } else {
                classify(e, &format!("writing {what}"))
            }
        })?;
        op.note(
            Action::KubernetesServiceAccountWrite,
            &what,
            serde_json::json!({"annotations": annotations.keys().collect::<Vec<_>>(), "created": existing.is_none()}),
        )
        .await
    }

    async fn delete_service_account(
        &self,
        op: &Operation,
        namespace: &str,
        name: &str,
    ) -> Result<(), BackendError> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let what = format!("ServiceAccount {namespace}/{name}");
        delete_owned(
            &api,
            op,
            name,
            &what,
            ["GetServiceAccount", "DeleteServiceAccount"],
            Action::KubernetesServiceAccountDelete,
        )
        .await
    }
}
