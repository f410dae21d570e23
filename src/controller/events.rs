//! Kubernetes Events about Tenants, for people running `kubectl describe`.
//!
//! Tenants are cluster-scoped, so their Events live in a configurable
//! namespace (`default` on current clusters). Publishing is best effort: a
//! failed event is logged and never fails a reconcile. An Event the API
//! server refuses (no such namespace, no RBAC there, a namespace it does not
//! accept for cluster-scoped objects) will be refused every time: that is
//! logged once at warn, naming the fix, and the rest at debug.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, Resource, ResourceExt};

use crate::api::{Reason, Tenant};

pub const REPORTING_CONTROLLER: &str = "tenantry.dev/operator";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

#[derive(Clone)]
pub struct EventPublisher {
    client: Client,
    namespace: String,
    instance: String,
    /// Whether a refusal has been logged at warn already.
    refusal_warned: Arc<AtomicBool>,
}

impl EventPublisher {
    pub fn new(client: Client, namespace: String) -> Self {
        let instance = std::env::var("POD_NAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| "tenantry".to_string());
        Self {
            client,
            namespace,
            instance,
            refusal_warned: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Publishes an event about `tenant`. `note` must never hold a secret.
    pub async fn publish(
        &self,
        tenant: &Tenant,
        type_: EventType,
        reason: &Reason,
        action: &str,
        note: &str,
    ) {
        let regarding = ObjectReference {
            api_version: Some(Tenant::api_version(&()).to_string()),
            kind: Some(Tenant::kind(&()).to_string()),
            name: Some(tenant.name_any()),
            uid: tenant.uid(),
            resource_version: tenant.resource_version(),
            ..Default::default()
        };
        let event = Event {
            metadata: ObjectMeta {
                // generateName must itself be a valid name, so a trailing '.'
                // is refused: the suffix is made here instead.
                name: Some(format!(
                    "{}.{:016x}",
                    tenant.name_any(),
                    rand::random::<u64>()
                )),
                namespace: Some(self.namespace.clone()),
                ..Default::default()
            },
            action: Some(action.to_string()),
            reason: Some(reason.to_string()),
            note: Some(within_note_limit(note).to_string()),
            type_: Some(
                match type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .to_string(),
            ),
            event_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
            reporting_controller: Some(REPORTING_CONTROLLER.to_string()),
            reporting_instance: Some(self.instance.clone()),
            regarding: Some(regarding),
            ..Default::default()
        };
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.namespace);
        let Err(error) = events.create(&PostParams::default(), &event).await else {
            return;
        };
        let refused = matches!(&error, kube::Error::Api(status) if is_refusal(status.code));
        if refused && !self.refusal_warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                %error,
                namespace = %self.namespace,
                "the API server refuses tenantry's Events in this namespace, so none will be \
                 published: check that it exists, that the operator may create events there \
                 (the chart's events Role), and that it accepts Events about cluster-scoped \
                 objects (`default` does on every cluster; --event-namespace). Logged once."
            );
        } else {
            tracing::debug!(%error, %reason, "could not publish event (best effort)");
        }
    }
}

/// An answer that will be the same for every Event: the namespace is
/// missing (404), forbidden (403) or refused for this object (422, 400).
fn is_refusal(code: u16) -> bool {
    matches!(code, 400 | 403 | 404 | 422)
}

/// The API server refuses an Event whose note is longer than 1024 bytes
/// (not characters); a longer one is cut at the last whole character.
fn within_note_limit(note: &str) -> &str {
    const LIMIT: usize = 1024;
    if note.len() <= LIMIT {
        return note;
    }
    let end = (0..=LIMIT)
        .rev()
        .find(|&i| note.is_char_boundary(i))
        .unwrap_or(0);
    &note[..end]
}

#[cfg(test)]
mod tests {
    use super::within_note_limit;

    #[test]
    fn a_note_is_cut_to_1024_bytes_at_a_character_boundary() {
        assert_eq!(within_note_limit("short"), "short");
        let ascii = "a".repeat(2000);
        assert_eq!(within_note_limit(&ascii).len(), 1024);
        // 3-byte characters: 341 whole ones fit in 1024 bytes.
        let wide = "\u{2192}".repeat(400);
        let cut = within_note_limit(&wide);
        assert_eq!(cut.len(), 1023);
        assert_eq!(cut.chars().count(), 341);
    }
}
