//! AWS KMS: one symmetric encryption key per tenant, found by its alias
//! `alias/tenantry/<tenant>`, with automatic rotation.
//!
//! CreateKey has no idempotency token, so the key is tagged with the Tenant's
//! uid *at creation*: a process that dies between CreateKey and CreateAlias
//! leaves a key that the next (interrupted) attempt finds by that tag instead
//! of making a second one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_kms::Client;
use aws_sdk_kms::types::{KeyMetadata, KeySpec, KeyState, KeyUsageType, Tag};
use futures::StreamExt;

use super::Action;
use super::aws::{
    AwsError, build_error, classify, conflict, desired_tags, error_code, tag_changes, tag_pairs,
};
use super::principals::AccessPrincipals;
use super::{Backend, BackendError, KeyInfo, KeyManager, Operation, Ownership, TenantRef, tags};

const BACKEND: Backend = Backend::Kms;

/// The shortest waiting period KMS allows before a key is destroyed.
const PENDING_WINDOW_DAYS: i32 = 7;

pub struct KmsBackend {
    client: Client,
    /// Uids of tenants whose key this process may have made (CreateKey sent,
    /// even if its answer was lost) but not yet aliased. The engine retries
    /// a failed step without `interrupted`, yet that key exists: the retry
    /// must look for it by tag as if a process had died.
    uncertain: Mutex<HashSet<String>>,
    /// What earlier scans read of each key: the tenant uid it is tagged
    /// with, or `None` for a key that is no tenant's. A tenantry key gets
    /// its uid tag in CreateKey itself and keeps it, so a scan needs to read
    /// the tags only of keys made since the last one: without this, every
    /// scan costs one call per key in the account. Held for the whole scan,
    /// so scans that coincide read each key once.
    known_owners: tokio::sync::Mutex<HashMap<String, Option<String>>>,
    /// Who the key policy lets use a tenant's key.
    access: Arc<AccessPrincipals>,
    /// Paces CreateKey (`--kms-create-rate`), shared by every class's client.
    create_limit: Option<Arc<RateLimiter>>,
}

/// A token bucket that paces one kind of call to at most `per_second` on
/// average, with a burst of `max(1, per_second)`. AWS's CreateKey quota is
/// low and per account and Region; a bulk onboarding that ignores it gets
/// throttled and spends its retries. Waiters are served in order.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    /// Tokens available at the instant.
    state: tokio::sync::Mutex<(f64, tokio::time::Instant)>,
}

impl RateLimiter {
    /// `None` unless `per_second` is positive and finite (0 turns pacing off).
    pub fn new(per_second: f64) -> Option<Self> {
        (per_second.is_finite() && per_second > 0.0).then(|| {
            let burst = per_second.max(1.0);
            Self {
                per_second,
                burst,
                state: tokio::sync::Mutex::new((burst, tokio::time::Instant::now())),
            }
        })
    }

    /// Waits for a token and takes it.
    pub async fn acquire(&self) {
        // Held while waiting: the next caller queues behind this one.
        let mut state = self.state.lock().await;
        let (tokens, at) = &mut *state;
        let now = tokio::time::Instant::now();
        *tokens =
            (*tokens + now.duration_since(*at).as_secs_f64() * self.per_second).min(self.burst);
        *at = now;
        if *tokens < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - *tokens) / self.per_second);
            tokio::time::sleep(wait).await;
            *tokens = 1.0;
            *at = now + wait;
        }
        *tokens -= 1.0;
    }
}

/// The key policy statements tenantry owns; every other statement is left
/// as it is.
const PRINCIPAL_SID: &str = "AllowTenantPrincipal";
const DENY_SID: &str = "DenyOtherPrincipals";

/// Tries of each read during a scan of every key.
const SCAN_READ_TRIES: u32 = 6;

/// Tag reads a scan has in flight at once: well within KMS's request quota
/// for ListResourceTags, shared with every other caller in the account.
const SCAN_READ_CONCURRENCY: usize = 16;

impl KmsBackend {
    pub fn new(config: &SdkConfig) -> Self {
        Self {
            client: super::aws::kms_client(config),
            uncertain: Mutex::default(),
            known_owners: tokio::sync::Mutex::default(),
            access: Arc::new(AccessPrincipals::new(config)),
            create_limit: None,
        }
    }

    /// Paces CreateKey with `limit` (shared with the other clients that hold it).
    pub fn with_create_limit(mut self, limit: Option<Arc<RateLimiter>>) -> Self {
        self.create_limit = limit;
        self
    }

    /// Who every key policy lets use the key.
    pub fn with_access(mut self, access: Arc<AccessPrincipals>) -> Self {
        self.access = access;
        self
    }

    /// Sets tenantry's two statements: the one that denies the key's use to
    /// every principal but the allowed ones, and the one that lets the
    /// class's principal use it (removed when the class no longer names
    /// one).
    async fn converge_policy(&self, op: &Operation, key_id: &str) -> Result<(), BackendError> {
        let tenant = &op.tenant;
        let current = self
            .client
            .get_key_policy()
            .key_id(key_id)
            .policy_name("default")
            .send()
            .await
            .map_err(|e| classify(BACKEND, &format!("GetKeyPolicy {key_id}"), e))?
            .policy
            .and_then(|p| serde_json::from_str::<serde_json::Value>(&p).ok())
            .unwrap_or_else(|| serde_json::json!({"Version": "2012-10-17", "Statement": []}));
        let principal = self.access.principal_for(&tenant.name);
        let allowed = self.access.allowed(BACKEND, &tenant.name).await?;
        let desired = with_tenantry_statements(&current, principal.as_deref(), &allowed);
        if desired == current {
            return Ok(());
        }
        self.client
            .put_key_policy()
            .key_id(key_id)
            .policy_name("default")
            .policy(desired.to_string())
            .send()
            .await
            .map_err(|e| classify(BACKEND, &format!("PutKeyPolicy {key_id}"), e))?;
        op.note(
            Action::KmsKeyPolicy,
            key_id,
            serde_json::json!({"principal": principal, "allowed": allowed}),
        )
        .await?;
        Ok(())
    }

    /// What others may have given themselves on a released key while no
    /// Tenant held it: statements in its key policy and grants. The key
    /// policy goes back to the one KMS gives a new key (the account's IAM
    /// decides; the tenant's principal statement is added again by
    /// `converge_policy`), and every grant is revoked (tenantry makes none).
    /// Runs while the key is still tagged released, so a retry after a
    /// crash resets again.
    async fn reset_released(&self, op: &Operation, meta: &KeyMetadata) -> Result<(), BackendError> {
        let tenant = &op.tenant;
        let key_id = meta.key_id();
        let arn = meta.arn().unwrap_or_default();
        let policy = default_key_policy(arn).ok_or_else(|| BackendError::Rejected {
            backend: BACKEND,
            message: format!("KMS key {key_id} has no ARN to read its account from"),
        })?;
        self.client
            .put_key_policy()
            .key_id(key_id)
            .policy_name("default")
            .policy(policy.to_string())
            .send()
            .await
            .map_err(|e| classify(BACKEND, &format!("PutKeyPolicy {key_id}"), e))?;
        let mut revoked = Vec::new();
        loop {
            let out = self
                .client
                .list_grants()
                .key_id(key_id)
                .send()
                .await
                .map_err(|e| classify(BACKEND, &format!("ListGrants {key_id}"), e))?;
            let grants: Vec<String> = out
                .grants()
                .iter()
                .filter_map(|g| g.grant_id().map(str::to_string))
                .collect();
            if grants.is_empty() {
                break;
            }
            for grant in grants {
                self.client
                    .revoke_grant()
                    .key_id(key_id)
                    .grant_id(&grant)
                    .send()
                    .await
                    .map_err(|e| classify(BACKEND, &format!("RevokeGrant {key_id}"), e))?;
                revoked.push(grant);
            }
        }
        tracing::info!(tenant = %tenant.name, key_id, grants = revoked.len(), "reset the key policy and grants of a released key");
        op.note(
            Action::KmsKeyReset,
            key_id,
            serde_json::json!({"why": "adopted a released key", "policy": "default", "grantsRevoked": revoked}),
        )
        .await
    }

    fn uncertain(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.uncertain
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The key an alias (or key id) names, if any.
    async fn describe(&self, key: &str) -> Result<Option<KeyMetadata>, BackendError> {
        match self.client.describe_key().key_id(key).send().await {
            Ok(out) => Ok(out.key_metadata),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(classify(BACKEND, &format!("DescribeKey {key}"), e)),
        }
    }

    /// `tags_of`, tried again on transient errors: a scan reads the tags of
    /// every key in the account, and one throttled read among thousands
    /// must not fail the whole scan (and with it a rollback).
    async fn tags_of_patiently(
        &self,
        key_id: &str,
    ) -> Result<BTreeMap<String, String>, BackendError> {
        let mut tries = 0;
        loop {
            tries += 1;
            match self.tags_of(key_id).await {
                Err(e) if e.is_transient() && tries < SCAN_READ_TRIES => {
                    tokio::time::sleep(std::time::Duration::from_millis(50 * u64::from(tries)))
                        .await;
                }
                result => return result,
            }
        }
    }

    async fn tags_of(&self, key_id: &str) -> Result<BTreeMap<String, String>, BackendError> {
        let mut tags = BTreeMap::new();
        let mut marker = None;
        loop {
            let out = self
                .client
                .list_resource_tags()
                .key_id(key_id)
                .set_marker(marker)
                .send()
                .await
                .map_err(|e| classify(BACKEND, &format!("ListResourceTags {key_id}"), e))?;
            for t in out.tags() {
                tags.insert(t.tag_key().to_string(), t.tag_value().to_string());
            }
            match out.next_marker() {
                Some(m) if out.truncated() => marker = Some(m.to_string()),
                _ => return Ok(tags),
            }
        }
    }

    /// Every key tagged with the tenant's uid. Lists every key of the
    /// account, so only the rare paths that follow an interrupted creation
    /// call it; the tags of a key are read once per process (see
    /// `known_owners`), and read again before a key is taken as the tenant's.
    async fn keys_tagged_with(&self, op: &Operation) -> Result<Vec<KeyMetadata>, BackendError> {
        let candidates = self.scan_for_uid(&op.tenant.uid).await?;
        let mut found = Vec::new();
        for (key_id, _) in candidates {
            if let Some(meta) = self.confirm_tagged(&op.tenant, key_id).await? {
                found.push(meta);
            }
        }
        Ok(found)
    }

    /// The keys of the account whose tags, as last read, carry `uid`: each
    /// with whether this scan read them (rather than `known_owners`).
    async fn scan_for_uid(&self, uid: &str) -> Result<Vec<(String, bool)>, BackendError> {
        let mut known = self.known_owners.lock().await;
        let mut listed = HashSet::new();
        let mut candidates = Vec::new();
        let mut marker = None;
        loop {
            let out = self
                .client
                .list_keys()
                .limit(1000)
                .set_marker(marker)
                .send()
                .await
                .map_err(|e| classify(BACKEND, "ListKeys", e))?;
            let mut unread = Vec::new();
            for key_id in out.keys().iter().filter_map(|k| k.key_id()) {
                listed.insert(key_id.to_string());
                match known.get(key_id) {
                    Some(owner) if owner.as_deref() == Some(uid) => {
                        candidates.push((key_id.to_string(), false));
                    }
                    Some(_) => {}
                    None => unread.push(key_id.to_string()),
                }
            }
            let tagged = self.read_owners(&mut known, unread, uid).await?;
            candidates.extend(tagged.into_iter().map(|key_id| (key_id, true)));
            match out.next_marker() {
                Some(m) if out.truncated() => marker = Some(m.to_string()),
                _ => break,
            }
        }
        // Deleted keys leave the listing; forget them.
        known.retain(|key_id, _| listed.contains(key_id));
        Ok(candidates)
    }

    /// Reads the tags of `unread` into `known`; returns those tagged with
    /// `uid`.
    async fn read_owners(
        &self,
        known: &mut HashMap<String, Option<String>>,
        unread: Vec<String>,
        uid: &str,
    ) -> Result<Vec<String>, BackendError> {
        let mut tagged = Vec::new();
        // The keys not read before, a few at a time: one by one, the
        // first scan of a large account takes minutes.
        let mut reads = futures::stream::iter(unread)
            .map(|key_id: String| async move {
                let read = self.tags_of_patiently(&key_id).await;
                (key_id, read)
            })
            .buffer_unordered(SCAN_READ_CONCURRENCY);
        let mut failure = None;
        while let Some((key_id, read)) = reads.next().await {
            let owner = match read {
                Ok(tags) => {
                    let owner = tags.get(tags::TENANT_UID).cloned();
                    // A key read without any tag may be one whose tags
                    // KMS does not show yet (it is eventually
                    // consistent): read it again next time.
                    if !tags.is_empty() {
                        known.insert(key_id.clone(), owner.clone());
                    }
                    owner
                }
                // Keys we may not read (another principal's, AWS
                // managed) cannot be ours anyway.
                Err(e) if !e.is_transient() => {
                    known.insert(key_id.clone(), None);
                    None
                }
                // What was read is kept for the next scan.
                Err(e) => {
                    failure.get_or_insert(e);
                    continue;
                }
            };
            if owner.as_deref() == Some(uid) {
                tagged.push(key_id);
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(tagged),
        }
    }

    /// The key, if it carries the tenant's uid now and was made by tenantry.
    async fn confirm_tagged(
        &self,
        tenant: &TenantRef,
        key_id: String,
    ) -> Result<Option<KeyMetadata>, BackendError> {
        // Someone may have retagged the key since an earlier scan read
        // it; only a key that carries the uid now is the tenant's.
        let tags = self.tags_of_patiently(&key_id).await?;
        let owner = tags.get(tags::TENANT_UID).cloned();
        if owner.as_deref() != Some(tenant.uid.as_str()) {
            self.known_owners.lock().await.insert(key_id, owner);
            return Ok(None);
        }
        let Some(meta) = self.describe(&key_id).await? else {
            return Ok(None);
        };
        // Anyone who may tag keys in the account can put the uid on a
        // key of theirs; such a key must be neither adopted nor deleted.
        if made_by_tenantry(&meta, &tags, tenant) {
            Ok(Some(meta))
        } else {
            tracing::warn!(tenant = %tenant.name, key_id, "a KMS key carries the tenant's uid but not tenantry's marks (description, tags): left alone");
            Ok(None)
        }
    }

    async fn create(&self, op: &Operation) -> Result<KeyMetadata, BackendError> {
        let tenant = &op.tenant;
        if let Some(limit) = &self.create_limit {
            limit.acquire().await;
        }
        let out = self
            .client
            .create_key()
            .key_spec(KeySpec::SymmetricDefault)
            .key_usage(KeyUsageType::EncryptDecrypt)
            .description(key_description(tenant))
            .set_tags(Some(kms_tags(&desired_tags(tenant))?))
            // CreateKey is not idempotent: the SDK's own retry of a request
            // whose answer was lost would make a second key. Without it, the
            // failure reaches the engine, whose retry finds the first key by
            // its tag (`uncertain`).
            .customize()
            .config_override(
                aws_sdk_kms::config::Config::builder()
                    .retry_config(aws_config::retry::RetryConfig::disabled()),
            )
            .send()
            .await
            .map_err(|e| classify(BACKEND, &format!("CreateKey for tenant {}", tenant.name), e))?;
        let meta = out.key_metadata.ok_or_else(|| BackendError::Rejected {
            backend: BACKEND,
            message: "CreateKey returned no key metadata".to_string(),
        })?;
        tracing::info!(tenant = %tenant.name, key_id = meta.key_id(), "created KMS key");
        op.note(
            Action::KmsKeyCreate,
            meta.arn().unwrap_or(meta.key_id()),
            serde_json::json!({"keyId": meta.key_id()}),
        )
        .await?;
        Ok(meta)
    }

    /// Points the alias at `key_id`. The alias normally does not exist here;
    /// when it does (a concurrent attempt, or an alias left on a deleted key)
    /// it is moved only if its key is ours or gone.
    async fn point_alias(
        &self,
        op: &Operation,
        alias: &str,
        key_id: &str,
    ) -> Result<(), BackendError> {
        let tenant = &op.tenant;
        let created = self
            .client
            .create_alias()
            .alias_name(alias)
            .target_key_id(key_id)
            .send()
            .await;
        match created {
            Ok(_) => {
                op.note(
                    Action::KmsAliasCreate,
                    alias,
                    serde_json::json!({"keyId": key_id}),
                )
                .await?;
                return Ok(());
            }
            Err(e) if error_code(&e) == Some("AlreadyExistsException") => {}
            Err(e) => return Err(classify(BACKEND, &format!("CreateAlias {alias}"), e)),
        }
        let target = self.alias_target(alias).await?;
        if target.as_deref() == Some(key_id) {
            return Ok(());
        }
        if let Some(target) = &target
            && self.describe(target).await?.is_some()
        {
            let owner = tenant.ownership_of(tag_pairs(&self.tags_of(target).await?));
            if owner != Ownership::Ours {
                return Err(conflict(
                    BACKEND,
                    format!("alias {alias}"),
                    format!("it points at key {target}, which is not this tenant's"),
                ));
            }
        }
        self.client
            .update_alias()
            .alias_name(alias)
            .target_key_id(key_id)
            .send()
            .await
            .map_err(|e| classify(BACKEND, &format!("UpdateAlias {alias}"), e))?;
        op.note(
            Action::KmsAliasUpdate,
            alias,
            serde_json::json!({"keyId": key_id, "previousKeyId": target}),
        )
        .await?;
        Ok(())
    }

    async fn alias_target(&self, alias: &str) -> Result<Option<String>, BackendError> {
        let mut marker = None;
        loop {
            let out = self
                .client
                .list_aliases()
                .set_marker(marker)
                .send()
                .await
                .map_err(|e| classify(BACKEND, "ListAliases", e))?;
            if let Some(entry) = out.aliases().iter().find(|a| a.alias_name() == Some(alias)) {
                return Ok(entry.target_key_id().map(str::to_string));
            }
            match out.next_marker() {
                Some(m) if out.truncated() => marker = Some(m.to_string()),
                _ => return Ok(None),
            }
        }
    }

    async fn set_tags(
        &self,
        op: &Operation,
        key_id: &str,
        set: &BTreeMap<String, String>,
    ) -> Result<(), BackendError> {
        self.client
            .tag_resource()
            .key_id(key_id)
            .set_tags(Some(kms_tags(set)?))
            .send()
            .await
            .map_err(|e| classify(BACKEND, &format!("TagResource {key_id}"), e))?;
        op.note(Action::KmsKeyTag, key_id, serde_json::json!({"tags": set}))
            .await?;
        Ok(())
    }

    /// Makes the key usable: not pending deletion, enabled, tagged, rotating.
    async fn converge(
        &self,
        meta: &KeyMetadata,
        current_tags: &BTreeMap<String, String>,
        op: &Operation,
        new_key: bool,
    ) -> Result<(), BackendError> {
        let key_id = meta.key_id();
        let mut state = meta.key_state().cloned();
        if state == Some(KeyState::PendingDeletion) {
            self.cancel_deletion(op, key_id).await?;
            // A cancelled deletion leaves the key disabled.
            state = Some(KeyState::Disabled);
        }
        // Tags only after the deletion is cancelled: KMS refuses to tag a key
        // that is pending deletion.
        self.converge_tags(op, key_id, current_tags).await?;
        self.ensure_enabled(op, key_id, state).await?;
        self.ensure_rotation(op, key_id, new_key).await?;
        self.converge_policy(op, key_id).await
    }

    async fn cancel_deletion(&self, op: &Operation, key_id: &str) -> Result<(), BackendError> {
        self.client
            .cancel_key_deletion()
            .key_id(key_id)
            .send()
            .await
            .map_err(|e| classify(BACKEND, &format!("CancelKeyDeletion {key_id}"), e))?;
        tracing::info!(tenant = %op.tenant.name, key_id, "cancelled the deletion of the tenant's KMS key");
        op.note(Action::KmsKeyCancelDeletion, key_id, serde_json::json!({}))
            .await?;
        Ok(())
    }

    async fn converge_tags(
        &self,
        op: &Operation,
        key_id: &str,
        current_tags: &BTreeMap<String, String>,
    ) -> Result<(), BackendError> {
        let (set, drop_released) = tag_changes(current_tags, &desired_tags(&op.tenant));
        if !set.is_empty() {
            self.set_tags(op, key_id, &set).await?;
        }
        if drop_released {
            self.client
                .untag_resource()
                .key_id(key_id)
                .tag_keys(tags::RELEASED)
                .send()
                .await
                .map_err(|e| classify(BACKEND, &format!("UntagResource {key_id}"), e))?;
            op.note(
                Action::KmsKeyUntag,
                key_id,
                serde_json::json!({"tags": [tags::RELEASED]}),
            )
            .await?;
        }
        Ok(())
    }

    /// Enables a disabled key; refuses one in a state no data can be
    /// encrypted with.
    async fn ensure_enabled(
        &self,
        op: &Operation,
        key_id: &str,
        state: Option<KeyState>,
    ) -> Result<(), BackendError> {
        match state {
            Some(KeyState::Enabled) => {}
            Some(KeyState::Disabled) => {
                self.client
                    .enable_key()
                    .key_id(key_id)
                    .send()
                    .await
                    .map_err(|e| classify(BACKEND, &format!("EnableKey {key_id}"), e))?;
                op.note(Action::KmsKeyEnable, key_id, serde_json::json!({}))
                    .await?;
            }
            Some(KeyState::Creating | KeyState::Updating) => {
                return Err(BackendError::Unavailable {
                    backend: BACKEND,
                    message: format!("KMS key {key_id} is still being created or updated"),
                });
            }
            other => {
                return Err(BackendError::Rejected {
                    backend: BACKEND,
                    message: format!("KMS key {key_id} is in state {other:?} and cannot be used"),
                });
            }
        }
        Ok(())
    }

    async fn ensure_rotation(
        &self,
        op: &Operation,
        key_id: &str,
        new_key: bool,
    ) -> Result<(), BackendError> {
        // A new key never rotates: skip the read.
        let rotating = !new_key
            && self
                .client
                .get_key_rotation_status()
                .key_id(key_id)
                .send()
                .await
                .map_err(|e| classify(BACKEND, &format!("GetKeyRotationStatus {key_id}"), e))?
                .key_rotation_enabled();
        if !rotating {
            self.client
                .enable_key_rotation()
                .key_id(key_id)
                .send()
                .await
                .map_err(|e| classify(BACKEND, &format!("EnableKeyRotation {key_id}"), e))?;
            op.note(
                Action::KmsKeyEnableRotation,
                key_id,
                serde_json::json!({"newKey": new_key}),
            )
            .await?;
        }
        Ok(())
    }

    async fn schedule_deletion(
        &self,
        op: &Operation,
        meta: &KeyMetadata,
    ) -> Result<(), BackendError> {
        let tenant = &op.tenant;
        if meta.key_state() == Some(&KeyState::PendingDeletion) {
            return Ok(());
        }
        let key_id = meta.key_id();
        // The key id, not the ARN: moto fails with HTTP 500 on an ARN here.
        let scheduled = self
            .client
            .schedule_key_deletion()
            .key_id(key_id)
            .pending_window_in_days(PENDING_WINDOW_DAYS)
            .send()
            .await;
        match scheduled {
            Ok(_) => {}
            // Scheduled by someone else in the meantime: what we wanted.
            Err(e)
                if error_code(&e) == Some("KMSInvalidStateException")
                    && self.is_pending_deletion(key_id).await? => {}
            Err(e) => {
                return Err(classify(
                    BACKEND,
                    &format!("ScheduleKeyDeletion {key_id}"),
                    e,
                ));
            }
        }
        tracing::info!(tenant = %tenant.name, key_id, days = PENDING_WINDOW_DAYS, "scheduled the deletion of the tenant's KMS key");
        op.note(
            Action::KmsKeyDelete,
            meta.arn().unwrap_or(key_id),
            serde_json::json!({"keyId": key_id, "pendingWindowDays": PENDING_WINDOW_DAYS}),
        )
        .await?;
        Ok(())
    }

    async fn is_pending_deletion(&self, key_id: &str) -> Result<bool, BackendError> {
        Ok(self
            .describe(key_id)
            .await?
            .is_none_or(|m| m.key_state() == Some(&KeyState::PendingDeletion)))
    }
}

#[async_trait]
impl KeyManager for KmsBackend {
    async fn ensure_key(
        &self,
        op: &Operation,
        alias: &str,
        interrupted: bool,
    ) -> Result<KeyInfo, BackendError> {
        let tenant = &op.tenant;
        let interrupted = interrupted || self.uncertain().contains(&tenant.uid);
        let (meta, current_tags, new_key) = match self.describe(alias).await? {
            Some(meta) => {
                let tags = self.tags_of(meta.key_id()).await?;
                match tenant.ownership_of(tag_pairs(&tags)) {
                    Ownership::Ours => {}
                    Ownership::Released => {
                        op.require_recorded_release(
                            BACKEND,
                            &format!("alias {alias}"),
                            meta.key_id(),
                        )
                        .await?;
                        self.reset_released(op, &meta).await?;
                        op.note_adopted_release()
                    }
                    Ownership::Untagged if interrupted => {}
                    Ownership::Untagged => {
                        return Err(conflict(
                            BACKEND,
                            format!("alias {alias}"),
                            format!("it points at key {}, which carries no tags", meta.key_id()),
                        ));
                    }
                    Ownership::Foreign(detail) => {
                        return Err(conflict(
                            BACKEND,
                            format!("alias {alias}"),
                            format!("its key {}: {detail}", meta.key_id()),
                        ));
                    }
                }
                (meta, tags, false)
            }
            None => {
                let mut earlier = if interrupted {
                    self.keys_tagged_with(op).await?
                } else {
                    Vec::new()
                };
                // Prefer a live key over one an earlier rollback scheduled
                // for deletion.
                earlier.sort_by_key(|m| m.key_state() == Some(&KeyState::PendingDeletion));
                let (meta, tags, new_key) = match earlier.into_iter().next() {
                    Some(meta) => {
                        tracing::info!(tenant = %tenant.name, key_id = meta.key_id(), "found the key of an interrupted creation");
                        // Its creation may never have been recorded.
                        op.note(
                            Action::KmsKeyAdopt,
                            meta.arn().unwrap_or(meta.key_id()),
                            serde_json::json!({"keyId": meta.key_id(), "why": "interrupted creation"}),
                        )
                        .await?;
                        let tags = self.tags_of(meta.key_id()).await?;
                        (meta, tags, false)
                    }
                    None => {
                        self.uncertain().insert(tenant.uid.clone());
                        (self.create(op).await?, desired_tags(tenant), true)
                    }
                };
                self.point_alias(op, alias, meta.key_id()).await?;
                (meta, tags, new_key)
            }
        };
        // Found or made, and aliased: a retry now finds it by its alias.
        self.uncertain().remove(&tenant.uid);
        check_spec(alias, &meta)?;
        self.converge(&meta, &current_tags, op, new_key).await?;
        let arn = meta
            .arn()
            .map(str::to_string)
            .ok_or_else(|| BackendError::Rejected {
                backend: BACKEND,
                message: format!("KMS key {} has no ARN", meta.key_id()),
            })?;
        Ok(KeyInfo {
            key_id: meta.key_id().to_string(),
            arn,
        })
    }

    async fn remove_key(&self, op: &Operation, alias: &str) -> Result<(), BackendError> {
        let tenant = &op.tenant;
        let Some(meta) = self.describe(alias).await? else {
            // A creation that did not finish may have left a key without its
            // alias: one this process is unsure of, one a killed process was
            // making, or one of the step whose failure is being rolled back.
            // Only then is every key of the account read (one call per key:
            // at 10,000 tenants, 10,000 calls per rollback otherwise).
            let unfinished = self.uncertain().contains(&tenant.uid)
                || op.removal.interrupted
                || op.removal.failed;
            if unfinished {
                for meta in self.keys_tagged_with(op).await? {
                    self.schedule_deletion(op, &meta).await?;
                }
                self.uncertain().remove(&tenant.uid);
            }
            return Ok(());
        };
        let owner = tenant.ownership_of(tag_pairs(&self.tags_of(meta.key_id()).await?));
        if owner != Ownership::Ours {
            tracing::warn!(tenant = %tenant.name, alias, key_id = meta.key_id(), ?owner, "not removing a KMS key that is not this tenant's");
            return Ok(());
        }
        // The key first, the alias last: a removal interrupted in between
        // (a lost answer, a kill) still finds the key by its alias, so an
        // alias that is gone means the key is scheduled for deletion.
        self.schedule_deletion(op, &meta).await?;
        match self.client.delete_alias().alias_name(alias).send().await {
            Ok(_) => {
                op.note(
                    Action::KmsAliasDelete,
                    alias,
                    serde_json::json!({"keyId": meta.key_id()}),
                )
                .await?;
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(classify(BACKEND, &format!("DeleteAlias {alias}"), e)),
        }
        Ok(())
    }

    async fn release_key(&self, op: &Operation, alias: &str) -> Result<(), BackendError> {
        let tenant = &op.tenant;
        let Some(meta) = self.describe(alias).await? else {
            return Ok(());
        };
        let tags = self.tags_of(meta.key_id()).await?;
        let owner = tenant.ownership_of(tag_pairs(&tags));
        if owner != Ownership::Ours {
            tracing::warn!(tenant = %tenant.name, alias, ?owner, "not releasing a KMS key that is not this tenant's");
            return Ok(());
        }
        if tags.get(tags::RELEASED).map(String::as_str) == Some("true") {
            return Ok(());
        }
        self.set_tags(
            op,
            meta.key_id(),
            &BTreeMap::from([(tags::RELEASED.to_string(), "true".to_string())]),
        )
        .await
    }
}

/// The key policy KMS gives a key made without one: the account's IAM
/// policies decide who may use it. None when `arn` is not a KMS key ARN.
pub(crate) fn default_key_policy(arn: &str) -> Option<serde_json::Value> {
    let mut parts = arn.split(':');
    let (Some("arn"), Some(partition), Some("kms"), Some(_region), Some(account)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    if account.is_empty() {
        return None;
    }
    Some(serde_json::json!({
        "Version": "2012-10-17",
        "Id": "key-default-1",
        "Statement": [{
            "Sid": "Enable IAM User Permissions",
            "Effect": "Allow",
            "Principal": {"AWS": format!("arn:{partition}:iam::{account}:root")},
            "Action": "kms:*",
            "Resource": "*",
        }],
    }))
}

/// The description tenantry gives a tenant's key when it creates it.
fn key_description(tenant: &TenantRef) -> String {
    format!("tenantry: encryption key of tenant {}", tenant.name)
}

/// Whether a key found by the tenant's uid tag carries every mark tenantry
/// gives the keys it creates (its description and all ownership tags), so
/// that a key someone else merely tagged is never taken for the tenant's.
fn made_by_tenantry(
    meta: &KeyMetadata,
    tags: &BTreeMap<String, String>,
    tenant: &TenantRef,
) -> bool {
    meta.description() == Some(key_description(tenant).as_str())
        && tenant
            .ownership_tags()
            .iter()
            .all(|(k, v)| tags.get(k) == Some(v))
}

/// Only a symmetric encryption key can encrypt a bucket and a secret: an
/// adopted key of another kind is refused rather than silently used.
fn check_spec(alias: &str, meta: &KeyMetadata) -> Result<(), BackendError> {
    let spec_ok = meta
        .key_spec()
        .is_none_or(|s| *s == KeySpec::SymmetricDefault);
    let usage_ok = meta
        .key_usage()
        .is_none_or(|u| *u == KeyUsageType::EncryptDecrypt);
    if spec_ok && usage_ok {
        return Ok(());
    }
    Err(BackendError::Rejected {
        backend: BACKEND,
        message: format!(
            "the key of {alias} ({}) is not a symmetric encryption key (spec {:?}, usage {:?})",
            meta.key_id(),
            meta.key_spec(),
            meta.key_usage()
        ),
    })
}

fn is_not_found<E: aws_smithy_types::error::metadata::ProvideErrorMetadata>(
    e: &AwsError<E>,
) -> bool {
    error_code(e) == Some("NotFoundException")
}

fn kms_tags(tags: &BTreeMap<String, String>) -> Result<Vec<Tag>, BackendError> {
    tags.iter()
        .map(|(k, v)| {
            Tag::builder()
                .tag_key(k)
                .tag_value(v)
                .build()
                .map_err(|e| build_error(BACKEND, e))
        })
        .collect()
}

/// `policy` with tenantry's statements set: the deny of the key's use to
/// every principal but `allowed`, and the class principal's allow (dropped
/// when there is none); every other statement unchanged.
///
/// The deny names the cryptographic actions only: a key policy can lock
/// everyone out of a key for good, and a mistaken list must not take
/// `kms:PutKeyPolicy` from the operator that would correct it.
pub(crate) fn with_tenantry_statements(
    policy: &serde_json::Value,
    principal: Option<&str>,
    allowed: &[String],
) -> serde_json::Value {
    let mut policy = policy.clone();
    let mut statements: Vec<serde_json::Value> = match policy.get("Statement") {
        Some(serde_json::Value::Array(list)) => list.clone(),
        Some(single) => vec![single.clone()],
        None => Vec::new(),
    };
    let ours = |s: &serde_json::Value| {
        matches!(
            s.get("Sid").and_then(|v| v.as_str()),
            Some(PRINCIPAL_SID | DENY_SID)
        )
    };
    let mut wanted = vec![serde_json::json!({
        "Sid": DENY_SID,
        "Effect": "Deny",
        "Principal": {"AWS": "*"},
        "Action": DATA_ACTIONS,
        "Resource": "*",
        "Condition": {"ArnNotLike": {"aws:PrincipalArn": allowed}},
    })];
    let principal_actions = [DATA_ACTIONS, &["kms:DescribeKey"]].concat();
    wanted.extend(principal.map(|principal| {
        serde_json::json!({
            "Sid": PRINCIPAL_SID,
            "Effect": "Allow",
            "Principal": {"AWS": principal},
            "Action": principal_actions,
            "Resource": "*",
        })
    }));
    let present: Vec<_> = statements.iter().filter(|s| ours(s)).cloned().collect();
    if present == wanted {
        return policy;
    }
    statements.retain(|s| !ours(s));
    statements.extend(wanted);
    policy["Statement"] = serde_json::Value::Array(statements);
    policy
}

/// What uses a key to encrypt or decrypt.
const DATA_ACTIONS: &[&str] = &[
    "kms:Encrypt",
    "kms:Decrypt",
    "kms:ReEncrypt*",
    "kms:GenerateDataKey*",
];

#[cfg(test)]
mod tests {
    use super::{Duration, RateLimiter, with_tenantry_statements};

    #[test]
    fn the_default_key_policy_names_the_keys_account() {
        let policy = super::default_key_policy(
            "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        )
        .unwrap();
        assert_eq!(
            policy["Statement"][0]["Principal"]["AWS"],
            "arn:aws:iam::111122223333:root"
        );
        assert!(super::default_key_policy("not-an-arn").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn key_creation_is_paced_to_the_configured_rate() {
        let limit = RateLimiter::new(2.0).expect("a positive rate");
        let start = tokio::time::Instant::now();
        for _ in 0..7 {
            limit.acquire().await;
        }
        // A burst of 2, then one every 500 ms: 5 more take 2.5 s.
        assert_eq!(start.elapsed(), Duration::from_millis(2500));
        // Idle time refills the bucket up to the burst, not beyond.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let again = tokio::time::Instant::now();
        for _ in 0..3 {
            limit.acquire().await;
        }
        assert_eq!(again.elapsed(), Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_fractional_rate_spaces_calls_evenly() {
        let limit = RateLimiter::new(0.5).expect("a positive rate");
        let start = tokio::time::Instant::now();
        for _ in 0..3 {
            limit.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::from_secs(4));
    }

    #[test]
    fn a_zero_or_invalid_rate_means_no_pacing() {
        assert!(RateLimiter::new(0.0).is_none());
        assert!(RateLimiter::new(-1.0).is_none());
        assert!(RateLimiter::new(f64::NAN).is_none());
        assert!(RateLimiter::new(f64::INFINITY).is_none());
    }

    fn default_policy() -> serde_json::Value {
        serde_json::json!({"Version": "2012-10-17", "Id": "key-default-1", "Statement": [
            {"Sid": "Enable IAM User Permissions", "Effect": "Allow",
             "Principal": {"AWS": "arn:aws:iam::123456789012:root"}, "Action": "kms:*", "Resource": "*"}]})
    }

    fn allowed() -> Vec<String> {
        vec!["arn:aws:iam::1:role/tenantry/t-acme".to_string()]
    }

    fn set(policy: &serde_json::Value, principal: Option<&str>) -> serde_json::Value {
        with_tenantry_statements(policy, principal, &allowed())
    }

    #[test]
    fn the_statements_are_added_once_and_other_statements_kept() {
        let with = set(&default_policy(), Some("arn:aws:iam::1:role/a"));
        let statements = with["Statement"].as_array().unwrap();
        assert_eq!(statements.len(), 3);
        assert_eq!(statements[0], default_policy()["Statement"][0]);
        assert_eq!(statements[1]["Sid"], "DenyOtherPrincipals");
        assert_eq!(statements[1]["Effect"], "Deny");
        assert_eq!(
            statements[1]["Condition"]["ArnNotLike"]["aws:PrincipalArn"],
            serde_json::json!(allowed())
        );
        // Never the management actions: a wrong list must stay correctable.
        assert!(!statements[1]["Action"].to_string().contains("PutKeyPolicy"));
        assert!(!statements[1]["Action"].to_string().contains("kms:*"));
        assert_eq!(statements[2]["Principal"]["AWS"], "arn:aws:iam::1:role/a");
        // Already there: nothing to change.
        assert_eq!(set(&with, Some("arn:aws:iam::1:role/a")), with);
    }

    #[test]
    fn a_changed_or_removed_principal_replaces_or_drops_its_statement() {
        let with = set(&default_policy(), Some("arn:aws:iam::1:role/a"));
        let moved = set(&with, Some("arn:aws:iam::1:role/b"));
        assert_eq!(moved["Statement"].as_array().unwrap().len(), 3);
        assert_eq!(
            moved["Statement"][2]["Principal"]["AWS"],
            "arn:aws:iam::1:role/b"
        );
        let without = set(&with, None);
        assert_eq!(without["Statement"].as_array().unwrap().len(), 2);
        assert_eq!(set(&default_policy(), None), without);
        let other_allowed = with_tenantry_statements(&without, None, &[]);
        assert_ne!(other_allowed, without);
    }
}
