//! Amazon S3: one bucket per tenant, locked down (Block Public Access, owner
//! enforced, SSE-KMS with the tenant's key, TLS only) and tagged with the
//! Tenant's uid.
//!
//! The bucket is tagged with PutBucketTagging right after CreateBucket (tags
//! on CreateBucket itself are recent, need another permission and are not
//! served by every S3-compatible endpoint). A process that dies in between
//! leaves an untagged bucket, which only an `interrupted` attempt adopts.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::types::{
    BucketLocationConstraint, BucketVersioningStatus, CreateBucketConfiguration, Delete,
    NotificationConfiguration, ObjectIdentifier, ObjectOwnership, OwnershipControls,
    OwnershipControlsRule, PublicAccessBlockConfiguration, ServerSideEncryption,
    ServerSideEncryptionByDefault, ServerSideEncryptionConfiguration, ServerSideEncryptionRule,
    Tag, Tagging, VersioningConfiguration,
};
use serde_json::{Value, json};

use super::Action;
use super::aws::{
    AwsError, build_error, conflict, desired_tags, error_code, http_status, is_transient,
    tag_changes, tag_pairs,
};
use super::principals::AccessPrincipals;
use super::{Backend, BackendError, ObjectStorage, Operation, Ownership, tags};

const BACKEND: Backend = Backend::S3;

/// DeleteObjects takes at most this many keys.
const DELETE_BATCH: usize = 1000;

pub struct S3Backend {
    client: Client,
    /// S3 Control, for the access points that name a tenant's bucket.
    control: aws_sdk_s3control::Client,
    sts: aws_sdk_sts::Client,
    /// The AWS account every bucket must belong to, sent as
    /// `ExpectedBucketOwner` on every bucket and object call: a 200 from a
    /// bucket of another account that lets this one in (its policy can) is
    /// otherwise indistinguishable from one of ours. Set by
    /// [`S3Backend::with_account_id`], or read once from STS.
    account: tokio::sync::OnceCell<String>,
    region: Option<String>,
    /// The endpoint is plain HTTP (a local S3 such as moto): the tenant's own
    /// deny-non-TLS policy then refuses tenantry's object deletions too.
    plain_http: bool,
    /// Buckets this process made, or may have made (CreateBucket failed in
    /// a way that can hide a success), and has not tagged yet. The engine
    /// retries a failed step without `interrupted`, and rolls it back, yet
    /// such an untagged bucket is ours: the retry or the removal may take it.
    uncertain: Mutex<HashSet<String>>,
    /// Who the bucket policy lets use a tenant's bucket.
    access: Arc<AccessPrincipals>,
}

/// What HeadBucket tells about a bucket name.
enum Presence {
    Absent,
    /// In this account: its tags say whose it is.
    InAccount,
    /// Another account's (403): never ours, whatever its name.
    OtherAccount,
}

impl S3Backend {
    /// `force_path_style` is for endpoints without virtual-host addressing
    /// (moto, MinIO).
    pub fn new(config: &SdkConfig, force_path_style: bool) -> Self {
        let s3_config = super::aws::count_s3_calls(
            aws_sdk_s3::config::Builder::from(config).force_path_style(force_path_style),
        )
        .interceptor(RequireExpectedOwner)
        .build();
        Self {
            client: Client::from_conf(s3_config),
            control: control_client(config, force_path_style),
            sts: aws_sdk_sts::Client::new(config),
            account: tokio::sync::OnceCell::new(),
            region: config.region().map(|r| r.to_string()),
            plain_http: config
                .endpoint_url()
                .is_some_and(|u| u.starts_with("http://")),
            uncertain: Mutex::default(),
            access: Arc::new(AccessPrincipals::new(config)),
        }
    }

    /// Who every bucket policy lets use the bucket.
    pub fn with_access(mut self, access: Arc<AccessPrincipals>) -> Self {
        self.access = access;
        self
    }

    /// The account the buckets must belong to, when it is known (a class or
    /// the deployment names it): saves the STS call, and holds even where
    /// STS is not reachable.
    pub fn with_account_id(mut self, account: Option<String>) -> Self {
        if let Some(account) = account {
            self.account = tokio::sync::OnceCell::from(account);
        }
        self
    }

    /// The expected bucket owner: the configured account, or the one the
    /// credentials belong to. A failed look-up is not kept, so a transient
    /// STS error is tried again on the next call.
    async fn account(&self) -> Result<&str, BackendError> {
        let account =
            self.account
                .get_or_try_init(|| async {
                    let out =
                        self.sts.get_caller_identity().send().await.map_err(|e| {
                            super::aws::classify(BACKEND, "sts:GetCallerIdentity", e)
                        })?;
                    match out.account() {
                        Some(account) if !account.is_empty() => Ok(account.to_string()),
                        _ => Err(BackendError::Rejected {
                            backend: BACKEND,
                            message: "sts:GetCallerIdentity named no account".to_string(),
                        }),
                    }
                })
                .await?;
        Ok(account)
    }

    fn uncertain(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.uncertain
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn remember_if_uncertain(&self, bucket: &str, e: &BackendError) {
        if e.is_transient() {
            self.uncertain().insert(bucket.to_string());
        }
    }

    async fn head(&self, bucket: &str) -> Result<Presence, BackendError> {
        let owner = self.account().await?;
        let err = match self
            .client
            .head_bucket()
            .bucket(bucket)
            .expected_bucket_owner(owner)
            .send()
            .await
        {
            Ok(_) => return Ok(Presence::InAccount),
            Err(e) => e,
        };
        match http_status(&err) {
            Some(404) => Ok(Presence::Absent),
            Some(403) => Ok(Presence::OtherAccount),
            Some(301) => Err(BackendError::Rejected {
                backend: BACKEND,
                message: format!(
                    "bucket {bucket} exists in another region than {:?}",
                    self.region
                ),
            }),
            _ => Err(classify(BACKEND, &format!("HeadBucket {bucket}"), err)),
        }
    }

    /// The bucket's tags; empty when it has none.
    async fn tags_of(&self, bucket: &str) -> Result<BTreeMap<String, String>, BackendError> {
        let owner = self.account().await?;
        match self
            .client
            .get_bucket_tagging()
            .bucket(bucket)
            .expected_bucket_owner(owner)
            .send()
            .await
        {
            Ok(out) => Ok(out
                .tag_set()
                .iter()
                .map(|t| (t.key().to_string(), t.value().to_string()))
                .collect()),
            Err(e) if error_code(&e) == Some("NoSuchTagSet") => Ok(BTreeMap::new()),
            Err(e) => Err(classify(BACKEND, &format!("GetBucketTagging {bucket}"), e)),
        }
    }

    async fn put_tags(
        &self,
        op: &Operation,
        bucket: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<(), BackendError> {
        let owner = self.account().await?;
        let tag_set = tags
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| build_error(BACKEND, e))?;
        let tagging = Tagging::builder()
            .set_tag_set(Some(tag_set))
            .build()
            .map_err(|e| build_error(BACKEND, e))?;
        self.client
            .put_bucket_tagging()
            .bucket(bucket)
            .expected_bucket_owner(owner)
            .tagging(tagging)
            .send()
            .await
            .map_err(|e| classify(BACKEND, &format!("PutBucketTagging {bucket}"), e))?;
        op.note(
            Action::S3BucketTag,
            bucket,
            serde_json::json!({"tags": tags}),
        )
        .await?;
        Ok(())
    }

    /// Creates the bucket. `Ok(false)` when it turned out to exist already in
    /// this account.
    async fn create(&self, op: &Operation, bucket: &str) -> Result<bool, BackendError> {
        let location = bucket_location(self.region.as_deref());
        let created = self
            .client
            .create_bucket()
            .bucket(bucket)
            .set_create_bucket_configuration(location)
            .send()
            .await;
        match created {
            Ok(_) => {
                // Untagged until claimed: should reading its tags or the
                // audit row fail now, the retry must still know it is ours.
                self.uncertain().insert(bucket.to_string());
                tracing::info!(bucket, "created S3 bucket");
                op.note(
                    Action::S3BucketCreate,
                    bucket,
                    serde_json::json!({"region": self.region}),
                )
                .await?;
                Ok(true)
            }
            Err(e) if error_code(&e) == Some("BucketAlreadyOwnedByYou") => Ok(false),
            Err(e) if error_code(&e) == Some("BucketAlreadyExists") => Err(conflict(
                BACKEND,
                format!("bucket {bucket}"),
                "the name is taken by another AWS account",
            )),
            Err(e) => {
                let e = classify(BACKEND, &format!("CreateBucket {bucket}"), e);
                self.remember_if_uncertain(bucket, &e);
                Err(e)
            }
        }
    }

    /// Decides from its tags whether the bucket may be converged, and makes
    /// its tags the tenant's (keeping tags someone else added).
    async fn claim(
        &self,
        op: &Operation,
        bucket: &str,
        current: BTreeMap<String, String>,
        interrupted: bool,
    ) -> Result<(), BackendError> {
        let tenant = &op.tenant;
        match tenant.ownership_of(tag_pairs(&current)) {
            Ownership::Ours => {}
            Ownership::Released => {
                op.require_recorded_release(BACKEND, &format!("bucket {bucket}"), bucket)
                    .await?;
                self.reset_released(op, bucket).await?;
                op.note_adopted_release()
            }
            Ownership::Untagged if interrupted => {
                tracing::info!(tenant = %tenant.name, bucket, "adopting the untagged bucket of an interrupted creation");
            }
            Ownership::Untagged => {
                return Err(conflict(
                    BACKEND,
                    format!("bucket {bucket}"),
                    "it exists in this account without tenantry's ownership tags",
                ));
            }
            Ownership::Foreign(detail) => {
                return Err(conflict(BACKEND, format!("bucket {bucket}"), detail));
            }
        }
        let (set, drop_released) = tag_changes(&current, &desired_tags(tenant));
        if set.is_empty() && !drop_released {
            return Ok(());
        }
        let mut wanted = current;
        wanted.remove(tags::RELEASED);
        wanted.extend(set);
        self.put_tags(op, bucket, &wanted).await
    }

    /// What others may have set up on a released bucket while no Tenant held
    /// it, and tenantry never sets: replication (a copy of every new object
    /// in a bucket of their choosing), event notifications (every key
    /// written, told to their queue, topic or function) and access points (a
    /// second door with a policy of its own). The bucket policy, Block
    /// Public Access, ownership, encryption and versioning are converged
    /// after the claim anyway. Runs while the bucket is still tagged
    /// released, so a retry after a crash resets again.
    async fn reset_released(&self, op: &Operation, bucket: &str) -> Result<(), BackendError> {
        let tenant = &op.tenant;
        let owner = self.account().await?;
        let (replication_deleted, destinations) = self.delete_replication(bucket, owner).await?;
        let targets = self.clear_notifications(bucket, owner).await?;
        let access_points = self.delete_access_points(bucket, owner).await?;
        tracing::info!(
            tenant = %tenant.name,
            bucket,
            replication = replication_deleted,
            notifications = targets.len(),
            access_points = access_points.len(),
            "reset the replication, notifications and access points of a released bucket"
        );
        op.note(
            Action::S3BucketReset,
            bucket,
            serde_json::json!({
                "why": "adopted a released bucket",
                "replicationDeleted": replication_deleted,
                "replicationDestinations": destinations,
                "notificationsCleared": targets,
                "accessPointsDeleted": access_points,
            }),
        )
        .await
    }

    /// Deletes the bucket's replication, if it has one; returns whether it
    /// had one and the buckets it copied to.
    async fn delete_replication(
        &self,
        bucket: &str,
        owner: &str,
    ) -> Result<(bool, Vec<String>), BackendError> {
        let replication = match self
            .client
            .get_bucket_replication()
            .bucket(bucket)
            .expected_bucket_owner(owner)
            .send()
            .await
        {
            Ok(out) => out.replication_configuration,
            Err(e) if error_code(&e) == Some("ReplicationConfigurationNotFoundError") => None,
            Err(e) => {
                return Err(classify(
                    BACKEND,
                    &format!("GetBucketReplication {bucket}"),
                    e,
                ));
            }
        };
        // Kept for the audit row: where the objects were being copied to.
        let destinations: Vec<String> = replication
            .iter()
            .flat_map(|c| c.rules())
            .filter_map(|r| r.destination().map(|d| d.bucket().to_string()))
            .collect();
        if replication.is_some() {
            self.client
                .delete_bucket_replication()
                .bucket(bucket)
                .expected_bucket_owner(owner)
                .send()
                .await
                .map_err(|e| classify(BACKEND, &format!("DeleteBucketReplication {bucket}"), e))?;
        }
        Ok((replication.is_some(), destinations))
    }

    /// Clears the bucket's event notifications; returns where they went.
    async fn clear_notifications(
        &self,
        bucket: &str,
        owner: &str,
    ) -> Result<Vec<String>, BackendError> {
        let notifications = match self
            .client
            .get_bucket_notification_configuration()
            .bucket(bucket)
            .expected_bucket_owner(owner)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if moto_no_notifications(&e) => {
                aws_sdk_s3::operation::get_bucket_notification_configuration::GetBucketNotificationConfigurationOutput::builder().build()
            }
            Err(e) => {
                return Err(classify(
                    BACKEND,
                    &format!("GetBucketNotificationConfiguration {bucket}"),
                    e,
                ));
            }
        };
        let mut targets: Vec<String> = notifications
            .topic_configurations()
            .iter()
            .map(|c| c.topic_arn().to_string())
            .chain(
                notifications
                    .queue_configurations()
                    .iter()
                    .map(|c| c.queue_arn().to_string()),
            )
            .chain(
                notifications
                    .lambda_function_configurations()
                    .iter()
                    .map(|c| c.lambda_function_arn().to_string()),
            )
            .collect();
        if notifications.event_bridge_configuration().is_some() {
            targets.push("EventBridge".to_string());
        }
        // Written even when the read showed none: a configuration the
        // reader does not know (or an endpoint that does not return it, as
        // moto leaves out EventBridge) must go too, and the write is cheap
        // and idempotent.
        self.client
            .put_bucket_notification_configuration()
            .bucket(bucket)
            .expected_bucket_owner(owner)
            .notification_configuration(NotificationConfiguration::builder().build())
            .send()
            .await
            .map_err(|e| {
                classify(
                    BACKEND,
                    &format!("PutBucketNotificationConfiguration {bucket}"),
                    e,
                )
            })?;
        Ok(targets)
    }

    /// Deletes the access points of this account that open `bucket`, and
    /// returns their names. Access points of other accounts are out of
    /// reach; they need the bucket policy to delegate to them, and the
    /// policy is rewritten to tenantry's own on adoption.
    async fn delete_access_points(
        &self,
        bucket: &str,
        owner: &str,
    ) -> Result<Vec<String>, BackendError> {
        let mut names = Vec::new();
        let mut next_token = None;
        loop {
            let listed = self
                .control
                .list_access_points()
                .account_id(owner)
                .bucket(bucket)
                .set_next_token(next_token.take())
                .send()
                .await;
            let page = match listed {
                Ok(page) => MotoAccessPoints {
                    access_points: page
                        .access_point_list()
                        .iter()
                        .map(|ap| (ap.name().to_string(), ap.bucket().to_string()))
                        .collect(),
                    next_token: page.next_token().map(str::to_string),
                },
                Err(e) => match moto_access_points(&e) {
                    Some(page) => page,
                    None => {
                        return Err(classify(BACKEND, &format!("ListAccessPoints {bucket}"), e));
                    }
                },
            };
            names.extend(
                page.access_points
                    .into_iter()
                    // The filter is the service's; the bucket is checked
                    // again here so a wider answer never deletes another
                    // bucket's access point.
                    .filter(|(_, of)| of == bucket)
                    .map(|(name, _)| name),
            );
            match page.next_token {
                Some(token) if !token.is_empty() => next_token = Some(token),
                _ => break,
            }
        }
        for name in &names {
            match self
                .control
                .delete_access_point()
                .account_id(owner)
                .name(name)
                .send()
                .await
            {
                Ok(_) => {}
                Err(e) if error_code(&e) == Some("NoSuchAccessPoint") => {}
                Err(e) => {
                    return Err(classify(
                        BACKEND,
                        &format!("DeleteAccessPoint {name} of bucket {bucket}"),
                        e,
                    ));
                }
            }
        }
        Ok(names)
    }

    async fn converge_public_access_block(
        &self,
        op: &Operation,
        bucket: &str,
    ) -> Result<(), BackendError> {
        let owner = self.account().await?;
        let current = match self
            .client
            .get_public_access_block()
            .bucket(bucket)
            .expected_bucket_owner(owner)
            .send()
            .await
        {
            Ok(out) => out.public_access_block_configuration,
            Err(e) if error_code(&e) == Some("NoSuchPublicAccessBlockConfiguration") => None,
            Err(e) => {
                return Err(classify(
                    BACKEND,
                    &format!("GetPublicAccessBlock {bucket}"),
                    e,
                ));
            }
        };
        let all_on = current.is_some_and(|c| {
            c.block_public_acls() == Some(true)
                && c.ignore_public_acls() == Some(true)
                && c.block_public_policy() == Some(true)
                && c.restrict_public_buckets() == Some(true)
        });
        if all_on {
            return Ok(());
        }
        let config = PublicAccessBlockConfiguration::builder()
            .block_public_acls(true)
            .ignore_public_acls(true)
            .block_public_policy(true)
            .restrict_public_buckets(true)
            .build();
        self.client
            .put_public_access_block()
            .bucket(bucket)
            .expected_bucket_owner(owner)
            .public_access_block_configuration(config)
            .send()
            .await
            .map_err(|e| classify(BACKEND, &format!("PutPublicAccessBlock {bucket}"), e))?;
        op.note(
            Action::S3BucketBlockPublicAccess,
            bucket,
            serde_json::json!({}),
        )
        .await?;
        Ok(())
    }

    async fn converge_ownership_controls(
        &self,
        op: &Operation,
        bucket: &str,
    ) -> Result<(), BackendError> {
        let owner = self.account().await?;
        let enforced = match self.client.get_bucket_ownership_controls().bucket(bucket).expected_bucket_owner(owner).send().await {
            Ok(out) => out.ownership_controls.is_some_and(|c| {
                matches!(c.rules(), [rule] if *rule.object_ownership() == ObjectOwnership::BucketOwnerEnforced)
            }),
            Err(e) if error_code(&e) == Some("OwnershipControlsNotFoundError") => false,
            Err(e) => return Err(classify(BACKEND, &format!("GetBucketOwnershipControls {bucket}"), e)),
        };
        if enforced {
            return Ok(());
        }
        let rule = OwnershipControlsRule::builder()
            .object_ownership(ObjectOwnership::BucketOwnerEnforced)
            .build()
            .map_err(|e| build_error(BACKEND, e))?;
        let controls = OwnershipControls::builder()
            .rules(rule)
            .build()
            .map_err(|e| build_error(BACKEND, e))?;
        self.client
            .put_bucket_ownership_controls()
            .bucket(bucket)
            .expected_bucket_owner(owner)
            .ownership_controls(controls)
            .send()
            .await
            .map_err(|e| classify(BACKEND, &format!("PutBucketOwnershipControls {bucket}"), e))?;
        op.note(
            Action::S3BucketOwnershipControls,
            bucket,
            serde_json::json!({"objectOwnership": "BucketOwnerEnforced"}),
        )
        .await?;
        Ok(())
    }

    async fn converge_encryption(
        &self,
        op: &Operation,
        bucket: &str,
        key_arn: &str,
    ) -> Result<(), BackendError> {
        let owner = self.account().await?;
        let done = match self.client.get_bucket_encryption().bucket(bucket).expected_bucket_owner(owner).send().await {
            Ok(out) => out.server_side_encryption_configuration.is_some_and(|c| {
                matches!(c.rules(), [rule] if rule.bucket_key_enabled() == Some(true)
                    && rule.apply_server_side_encryption_by_default().is_some_and(|d| {
                        *d.sse_algorithm() == ServerSideEncryption::AwsKms && d.kms_master_key_id() == Some(key_arn)
                    }))
            }),
            Err(e) if error_code(&e) == Some("ServerSideEncryptionConfigurationNotFoundError") => false,
            Err(e) => return Err(classify(BACKEND, &format!("GetBucketEncryption {bucket}"), e)),
        };
        if done {
            return Ok(());
        }
        let default = ServerSideEncryptionByDefault::builder()
            .sse_algorithm(ServerSideEncryption::AwsKms)
            .kms_master_key_id(key_arn)
            .build()
            .map_err(|e| build_error(BACKEND, e))?;
        let config = ServerSideEncryptionConfiguration::builder()
            .rules(
                ServerSideEncryptionRule::builder()
                    .apply_server_side_encryption_by_default(default)
                    .bucket_key_enabled(true)
                    .build(),
            )
            .build()
            .map_err(|e| build_error(BACKEND, e))?;
        self.client
            .put_bucket_encryption()
            .bucket(bucket)
            .expected_bucket_owner(owner)
            .server_side_encryption_configuration(config)
            .send()
            .await
            .map_err(|e| classify(BACKEND, &format!("PutBucketEncryption {bucket}"), e))?;
        op.note(
            Action::S3BucketEncryption,
            bucket,
            serde_json::json!({"sseAlgorithm": "aws:kms", "kmsKeyArn": key_arn, "bucketKey": true}),
        )
        .await?;
        Ok(())
    }

    async fn converge_versioning(
        &self,
        op: &Operation,
        bucket: &str,
        versioning: bool,
    ) -> Result<(), BackendError> {
        let owner = self.account().await?;
        let status = match self
            .client
            .get_bucket_versioning()
            .bucket(bucket)
            .expected_bucket_owner(owner)
            .send()
            .await
        {
            Ok(out) => out.status,
            Err(e) => match moto_versioning_status(&e) {
                Some(status) => status,
                None => {
                    return Err(classify(
                        BACKEND,
                        &format!("GetBucketVersioning {bucket}"),
                        e,
                    ));
                }
            },
        };
        let wanted = match (versioning, status) {
            (true, Some(BucketVersioningStatus::Enabled)) => return Ok(()),
            (true, _) => BucketVersioningStatus::Enabled,
            // Versioning can only be suspended, never undone: a bucket that
            // never had it is already what "off" can mean.
            (false, Some(BucketVersioningStatus::Enabled)) => BucketVersioningStatus::Suspended,
            (false, _) => return Ok(()),
        };
        self.client
            .put_bucket_versioning()
            .bucket(bucket)
            .expected_bucket_owner(owner)
            .versioning_configuration(
                VersioningConfiguration::builder()
                    .status(wanted.clone())
                    .build(),
            )
            .send()
            .await
            .map_err(|e| classify(BACKEND, &format!("PutBucketVersioning {bucket}"), e))?;
        op.note(
            Action::S3BucketVersioning,
            bucket,
            serde_json::json!({"status": wanted.as_str()}),
        )
        .await?;
        Ok(())
    }

    async fn converge_policy(
        &self,
        op: &Operation,
        bucket: &str,
        key_arn: &str,
    ) -> Result<(), BackendError> {
        let tenant = &op.tenant;
        let owner = self.account().await?;
        let current = match self
            .client
            .get_bucket_policy()
            .bucket(bucket)
            .expected_bucket_owner(owner)
            .send()
            .await
        {
            Ok(out) => out.policy,
            Err(e) if error_code(&e) == Some("NoSuchBucketPolicy") => None,
            Err(e) => return Err(classify(BACKEND, &format!("GetBucketPolicy {bucket}"), e)),
        };
        let principal = self.access.principal_for(&tenant.name);
        let allowed = self.access.allowed(BACKEND, &tenant.name).await?;
        let desired = bucket_policy(
            bucket,
            key_arn,
            &BucketAccess {
                principal: principal.as_deref(),
                allowed: &allowed,
            },
        );
        if current.as_deref().is_some_and(|p| same_policy(p, &desired)) {
            return Ok(());
        }
        self.client
            .put_bucket_policy()
            .bucket(bucket)
            .expected_bucket_owner(owner)
            .policy(desired.to_string())
            .send()
            .await
            .map_err(|e| classify(BACKEND, &format!("PutBucketPolicy {bucket}"), e))?;
        op.note(Action::S3BucketPolicy, bucket, serde_json::json!({}))
            .await?;
        Ok(())
    }

    /// Deletes every object version and delete marker, a page at a time.
    /// Each page is deleted before the next is listed, so the next listing
    /// starts again from the top instead of from a marker: a marker naming a
    /// version that is gone is positional in S3, but moto looks it up and
    /// then lists nothing, which would leave the bucket half full.
    async fn empty(&self, bucket: &str) -> Result<(), BackendError> {
        let owner = self.account().await?;
        let mut previous_first = None;
        loop {
            let page = self
                .client
                .list_object_versions()
                .bucket(bucket)
                .expected_bucket_owner(owner)
                .send()
                .await
                .map_err(|e| classify(BACKEND, &format!("ListObjectVersions {bucket}"), e))?;
            let mut ids = Vec::new();
            let versions = page.versions().iter().map(|v| (v.key(), v.version_id()));
            let markers = page
                .delete_markers()
                .iter()
                .map(|m| (m.key(), m.version_id()));
            for (key, version) in versions.chain(markers) {
                let Some(key) = key else { continue };
                let id = ObjectIdentifier::builder()
                    .key(key)
                    // An unversioned object lists as version "null".
                    .set_version_id(version.map(str::to_string))
                    .build()
                    .map_err(|e| build_error(BACKEND, e))?;
                ids.push(id);
            }
            let Some(first) = ids
                .first()
                .map(|id| (id.key().to_string(), id.version_id().map(str::to_string)))
            else {
                return Ok(());
            };
            if previous_first.as_ref() == Some(&first) {
                // Deleted without error yet listed again: never loop on it.
                return Err(BackendError::Unavailable {
                    backend: BACKEND,
                    message: format!(
                        "emptying bucket {bucket}: object {:?} is still listed after its deletion",
                        first.0
                    ),
                });
            }
            for batch in ids.chunks(DELETE_BATCH) {
                self.delete_batch(bucket, batch.to_vec()).await?;
            }
            if page.is_truncated() != Some(true) {
                return Ok(());
            }
            previous_first = Some(first);
        }
    }

    async fn delete_batch(
        &self,
        bucket: &str,
        ids: Vec<ObjectIdentifier>,
    ) -> Result<(), BackendError> {
        let owner = self.account().await?;
        let count = ids.len();
        let delete = Delete::builder()
            .set_objects(Some(ids))
            .quiet(true)
            .build()
            .map_err(|e| build_error(BACKEND, e))?;
        let out = self
            .client
            .delete_objects()
            .bucket(bucket)
            .expected_bucket_owner(owner)
            .delete(delete)
            .send()
            .await
            .map_err(|e| classify(BACKEND, &format!("DeleteObjects {bucket}"), e))?;
        let errors = out.errors();
        let Some(first) = errors.first() else {
            return Ok(());
        };
        let message = format!(
            "DeleteObjects {bucket}: {} of {count} objects not deleted, e.g. {:?} version {:?}: {} {}",
            errors.len(),
            first.key().unwrap_or_default(),
            first.version_id().unwrap_or_default(),
            first.code().unwrap_or("UnknownError"),
            first.message().unwrap_or_default(),
        );
        if errors.iter().all(|e| is_transient(None, e.code())) {
            Err(BackendError::Unavailable {
                backend: BACKEND,
                message,
            })
        } else {
            Err(BackendError::Rejected {
                backend: BACKEND,
                message,
            })
        }
    }
}

#[async_trait]
impl ObjectStorage for S3Backend {
    async fn ensure_bucket(
        &self,
        op: &Operation,
        bucket: &str,
        key_arn: &str,
        versioning: bool,
        interrupted: bool,
    ) -> Result<(), BackendError> {
        let interrupted = interrupted || self.uncertain().contains(bucket);
        let made = match self.head(bucket).await? {
            Presence::Absent => self.create(op, bucket).await?,
            Presence::InAccount => false,
            Presence::OtherAccount => return Err(other_account(bucket)),
        };
        // Read the tags even after a successful create: in us-east-1 CreateBucket
        // also answers 200 for a bucket this account already had.
        let current = self.tags_of(bucket).await?;
        let fresh = made && current.is_empty();
        if fresh {
            // Until it carries our tags, only this memory tells that the
            // bucket is ours, should tagging fail and the step roll back.
            self.uncertain().insert(bucket.to_string());
        }
        // A bucket this attempt did not create, found untagged: one an
        // interrupted attempt made, whose creation may be unrecorded.
        let adopting = !fresh && interrupted && current.is_empty();
        self.claim(op, bucket, current, interrupted || fresh)
            .await?;
        if adopting {
            op.note(
                Action::S3BucketAdopt,
                bucket,
                serde_json::json!({"why": "interrupted creation"}),
            )
            .await?;
        }
        // Tagged: from now on a retry recognises the bucket by its tags.
        self.uncertain().remove(bucket);

        self.converge_public_access_block(op, bucket).await?;
        self.converge_ownership_controls(op, bucket).await?;
        self.converge_encryption(op, bucket, key_arn).await?;
        self.converge_versioning(op, bucket, versioning).await?;
        self.converge_policy(op, bucket, key_arn).await?;
        Ok(())
    }

    async fn remove_bucket(&self, op: &Operation, bucket: &str) -> Result<(), BackendError> {
        let tenant = &op.tenant;
        let account = self.account().await?;
        match self.head(bucket).await? {
            Presence::Absent => return Ok(()),
            Presence::InAccount => {}
            Presence::OtherAccount => {
                tracing::warn!(tenant = %tenant.name, bucket, "not removing a bucket of another account");
                return Ok(());
            }
        }
        let owner = tenant.ownership_of(tag_pairs(&self.tags_of(bucket).await?));
        // Untagged and ours: this process, or a killed one, made it and
        // never got to tag it.
        let ours = owner == Ownership::Ours
            || (owner == Ownership::Untagged
                && (self.uncertain().contains(bucket) || op.removal.interrupted));
        if !ours {
            tracing::warn!(tenant = %tenant.name, bucket, ?owner, "not removing a bucket that is not this tenant's");
            return Ok(());
        }
        if self.plain_http {
            // The bucket is going away; over plain HTTP its deny-non-TLS
            // policy would refuse the deletions that empty it. Over HTTPS
            // (any real S3) the policy stays to the end.
            self.client
                .delete_bucket_policy()
                .bucket(bucket)
                .expected_bucket_owner(account)
                .send()
                .await
                .map_err(|e| classify(BACKEND, &format!("DeleteBucketPolicy {bucket}"), e))?;
            op.note(Action::S3BucketPolicyDelete, bucket, serde_json::json!({"why": "plain HTTP endpoint; the deny-non-TLS policy would refuse emptying"})).await?;
        }
        self.empty(bucket).await?;
        match self
            .client
            .delete_bucket()
            .bucket(bucket)
            .expected_bucket_owner(account)
            .send()
            .await
        {
            Ok(_) => {}
            Err(e) if error_code(&e) == Some("NoSuchBucket") => {}
            // Something wrote while we emptied it: another pass will do.
            Err(e) if error_code(&e) == Some("BucketNotEmpty") => {
                return Err(BackendError::Unavailable {
                    backend: BACKEND,
                    message: format!(
                        "DeleteBucket {bucket}: objects were written while it was emptied"
                    ),
                });
            }
            Err(e) => return Err(classify(BACKEND, &format!("DeleteBucket {bucket}"), e)),
        }
        self.uncertain().remove(bucket);
        tracing::info!(tenant = %tenant.name, bucket, "deleted S3 bucket");
        op.note(
            Action::S3BucketDelete,
            bucket,
            serde_json::json!({"emptied": true}),
        )
        .await?;
        Ok(())
    }

    async fn release_bucket(&self, op: &Operation, bucket: &str) -> Result<(), BackendError> {
        let tenant = &op.tenant;
        if !matches!(self.head(bucket).await?, Presence::InAccount) {
            return Ok(());
        }
        let mut current = self.tags_of(bucket).await?;
        let owner = tenant.ownership_of(tag_pairs(&current));
        if owner != Ownership::Ours {
            tracing::warn!(tenant = %tenant.name, bucket, ?owner, "not releasing a bucket that is not this tenant's");
            return Ok(());
        }
        if current.get(tags::RELEASED).map(String::as_str) == Some("true") {
            return Ok(());
        }
        current.insert(tags::RELEASED.to_string(), "true".to_string());
        self.put_tags(op, bucket, &current).await
    }
}

fn other_account(bucket: &str) -> BackendError {
    conflict(
        BACKEND,
        format!("bucket {bucket}"),
        "it exists and is owned by another account (S3 refused it to this one, or it is not owned by the expected bucket owner)",
    )
}

/// Every S3 operation the backend sends names the expected bucket owner,
/// except these, which do not take one.
const WITHOUT_EXPECTED_OWNER: &[&str] = &["CreateBucket", "ListBuckets"];

const EXPECTED_OWNER_HEADER: &str = "x-amz-expected-bucket-owner";

/// Refuses to send an S3 request that lacks `ExpectedBucketOwner`, so a
/// call added without it fails in every test that reaches it instead of
/// quietly trusting whichever account answers.
#[derive(Debug)]
struct RequireExpectedOwner;

/// The refusal of [`RequireExpectedOwner`]: a bug in tenantry, never worth
/// retrying.
#[derive(Debug, thiserror::Error)]
#[error("tenantry bug: S3 {operation} was about to be sent without ExpectedBucketOwner")]
struct MissingExpectedOwner {
    operation: String,
}

fn lacks_expected_owner(operation: &str, header: Option<&str>) -> bool {
    !WITHOUT_EXPECTED_OWNER.contains(&operation) && header.is_none_or(str::is_empty)
}

impl aws_smithy_runtime_api::client::interceptors::Intercept for RequireExpectedOwner {
    fn name(&self) -> &'static str {
        "tenantry::RequireExpectedOwner"
    }

    fn read_before_signing(
        &self,
        context: &aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let operation = cfg
            .load::<aws_smithy_runtime_api::client::orchestrator::Metadata>()
            .map_or("unknown", |m| m.name());
        let header = context.request().headers().get(EXPECTED_OWNER_HEADER);
        if lacks_expected_owner(operation, header) {
            return Err(Box::new(MissingExpectedOwner {
                operation: operation.to_string(),
            }));
        }
        Ok(())
    }
}

/// [`super::aws::classify`], except that a request [`RequireExpectedOwner`]
/// stopped is a permanent refusal: the SDK reports it as a dispatch failure,
/// which would otherwise be retried as transient.
fn classify<E>(backend: Backend, context: &str, err: AwsError<E>) -> BackendError
where
    E: aws_smithy_types::error::metadata::ProvideErrorMetadata + std::error::Error + 'static,
{
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = source {
        if let Some(missing) = e.downcast_ref::<MissingExpectedOwner>() {
            return BackendError::Rejected {
                backend,
                message: format!("{context}: {missing}"),
            };
        }
        source = e.source();
    }
    super::aws::classify(backend, context, err)
}

/// An S3 Control client; `force_path_style` as for S3 (see
/// [`UnprefixedControlEndpoint`]).
pub fn control_client(config: &SdkConfig, force_path_style: bool) -> aws_sdk_s3control::Client {
    let mut control = aws_sdk_s3control::config::Builder::from(config);
    if force_path_style {
        control = control.endpoint_resolver(UnprefixedControlEndpoint::default());
    }
    aws_sdk_s3control::Client::from_conf(control.build())
}

/// Where CreateBucket puts a bucket: `None` in us-east-1, the one region
/// that refuses its own name as a location.
pub(crate) fn bucket_location(region: Option<&str>) -> Option<CreateBucketConfiguration> {
    region.filter(|r| *r != "us-east-1").map(|r| {
        CreateBucketConfiguration::builder()
            .location_constraint(BucketLocationConstraint::from(r))
            .build()
    })
}

/// The S3 Control endpoint for an S3-compatible endpoint without
/// virtual-host addressing (the same setting as `force_path_style`): the
/// standard rules put the account id in front of the endpoint's host
/// (`123456789012.127.0.0.1`), a name that does not resolve; the account
/// still travels in the `x-amz-account-id` header. Real S3 Control keeps
/// the standard rules.
#[derive(Debug, Default)]
struct UnprefixedControlEndpoint(aws_sdk_s3control::config::endpoint::DefaultResolver);

impl aws_sdk_s3control::config::endpoint::ResolveEndpoint for UnprefixedControlEndpoint {
    fn resolve_endpoint<'a>(
        &'a self,
        params: &'a aws_sdk_s3control::config::endpoint::Params,
    ) -> aws_sdk_s3control::config::endpoint::EndpointFuture<'a> {
        let resolved = self.0.resolve_endpoint(params);
        aws_sdk_s3control::config::endpoint::EndpointFuture::new(async move {
            let endpoint = resolved.await?;
            let url = unprefixed(endpoint.url(), params.account_id());
            Ok(endpoint.into_builder().url(url).build())
        })
    }
}

/// `url` without a leading `<account>.` on its host.
fn unprefixed(url: &str, account: Option<&str>) -> String {
    let Some(account) = account.filter(|a| !a.is_empty()) else {
        return url.to_string();
    };
    match url.split_once("://") {
        Some((scheme, rest)) => {
            match rest.strip_prefix(account).and_then(|r| r.strip_prefix('.')) {
                Some(host) => format!("{scheme}://{host}"),
                None => url.to_string(),
            }
        }
        None => url.to_string(),
    }
}

/// moto (5.2) answers GetBucketVersioning with a `<GetBucketVersioningResponse>`
/// root where S3 sends `<VersioningConfiguration>`, and the SDK refuses to
/// parse it. Reads the status from such an answer; `None` for any other error.
pub(crate) fn moto_versioning_status<E>(e: &AwsError<E>) -> Option<Option<BucketVersioningStatus>> {
    let raw = e.raw_response()?;
    parse_moto_versioning(
        raw.status().as_u16(),
        &String::from_utf8_lossy(raw.body().bytes()?),
    )
}

pub(crate) fn parse_moto_versioning(
    status: u16,
    body: &str,
) -> Option<Option<BucketVersioningStatus>> {
    if status != 200 || !body.contains("<GetBucketVersioningResponse") {
        return None;
    }
    let versioning = body
        .split_once("<Status>")
        .and_then(|(_, rest)| rest.split_once("</Status>"))
        .map(|(s, _)| BucketVersioningStatus::from(s.trim()));
    Some(versioning)
}

/// moto (5.2) answers GetBucketNotificationConfiguration for a bucket
/// without notifications with an empty `<GetBucketNotificationResponse/>`
/// where S3 sends an empty `<NotificationConfiguration/>`, and the SDK
/// refuses to parse it.
fn moto_no_notifications<E>(e: &AwsError<E>) -> bool {
    e.raw_response().is_some_and(|raw| {
        raw.status().as_u16() == 200
            && raw
                .body()
                .bytes()
                .is_some_and(|body| is_moto_empty_notifications(&String::from_utf8_lossy(body)))
    })
}

pub(crate) fn is_moto_empty_notifications(body: &str) -> bool {
    body.contains("<GetBucketNotificationResponse") && !body.contains("Configuration")
}

/// One page of access points: (name, bucket) pairs and the next page's token.
#[derive(Debug, PartialEq)]
pub(crate) struct MotoAccessPoints {
    access_points: Vec<(String, String)>,
    next_token: Option<String>,
}

/// moto (5.2) answers ListAccessPoints with a `<ListAccessPointsResponse>`
/// root where S3 Control sends `<ListAccessPointsResult>`, and the SDK
/// refuses to parse it. Reads the page from such an answer; `None` for any
/// other error.
fn moto_access_points<E>(e: &AwsError<E>) -> Option<MotoAccessPoints> {
    let raw = e.raw_response()?;
    parse_moto_access_points(
        raw.status().as_u16(),
        &String::from_utf8_lossy(raw.body().bytes()?),
    )
}

pub(crate) fn parse_moto_access_points(status: u16, body: &str) -> Option<MotoAccessPoints> {
    if status != 200 || !body.contains("<ListAccessPointsResponse") {
        return None;
    }
    let element = |xml: &str, name: &str| -> Option<String> {
        let (_, rest) = xml.split_once(&format!("<{name}>"))?;
        let (value, _) = rest.split_once(&format!("</{name}>"))?;
        Some(unescape_xml(value.trim()))
    };
    let mut access_points = Vec::new();
    let mut rest = body;
    while let Some((_, after)) = rest.split_once("<AccessPoint>") {
        let (entry, next) = after.split_once("</AccessPoint>")?;
        access_points.push((element(entry, "Name")?, element(entry, "Bucket")?));
        rest = next;
    }
    // The token follows the list; reading it from what is left keeps an
    // element of an access point from being taken for it.
    let next_token = element(rest, "NextToken");
    Some(MotoAccessPoints {
        access_points,
        next_token,
    })
}

fn unescape_xml(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// The ARN partition (`aws`, `aws-cn`, `aws-us-gov`) of the tenant's key,
/// which is the bucket's partition too.
pub(crate) fn partition_of(arn: &str) -> &str {
    match arn.split(':').nth(1) {
        Some(p) if arn.starts_with("arn:") && !p.is_empty() => p,
        _ => "aws",
    }
}

/// Who may use a tenant's bucket.
pub(crate) struct BucketAccess<'a> {
    /// The class's principal, allowed the bucket by the policy itself.
    pub(crate) principal: Option<&'a str>,
    /// `aws:PrincipalArn` patterns spared by the deny.
    pub(crate) allowed: &'a [String],
}

/// The bucket policy tenantry wants: refuse any request not made over TLS;
/// refuse the data actions to every principal but the allowed ones, so a
/// neighbour's role that IAM lets do `s3:*` still cannot read or write
/// here; refuse objects written under any encryption but the tenant's key
/// (no header at all is fine: the bucket's default is that key); and, when
/// the class names one, let the tenant's principal use the bucket.
pub(crate) fn bucket_policy(bucket: &str, key_arn: &str, access: &BucketAccess) -> Value {
    let partition = partition_of(key_arn);
    let bucket_arn = format!("arn:{partition}:s3:::{bucket}");
    let objects_arn = format!("arn:{partition}:s3:::{bucket}/*");
    let resources = json!([bucket_arn, objects_arn]);
    let mut statements = vec![
        json!({
            "Sid": "DenyInsecureTransport",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": resources,
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        }),
        json!({
            "Sid": "DenyOtherPrincipals",
            "Effect": "Deny",
            "Principal": "*",
            "Action": DATA_ACTIONS,
            "Resource": resources,
            "Condition": {"ArnNotLike": {"aws:PrincipalArn": access.allowed}},
        }),
        json!({
            "Sid": "DenyOtherEncryption",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:PutObject",
            "Resource": objects_arn,
            // Only when the header is sent: a Deny with `...IfExists` would
            // also refuse an upload without it, which the bucket's default
            // encrypts under the tenant's key.
            "Condition": {
                "StringNotEquals": {"s3:x-amz-server-side-encryption": "aws:kms"},
                "Null": {"s3:x-amz-server-side-encryption": "false"},
            },
        }),
        json!({
            "Sid": "DenyOtherKeys",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:PutObject",
            "Resource": objects_arn,
            "Condition": {
                "StringNotEquals": {"s3:x-amz-server-side-encryption-aws-kms-key-id": key_arn},
                "Null": {"s3:x-amz-server-side-encryption-aws-kms-key-id": "false"},
            },
        }),
    ];
    if let Some(principal) = access.principal {
        statements.push(json!({
            "Sid": "AllowTenantPrincipal",
            "Effect": "Allow",
            "Principal": {"AWS": principal},
            "Action": [
                "s3:GetObject",
                "s3:GetObjectVersion",
                "s3:PutObject",
                "s3:DeleteObject",
                "s3:ListBucket",
                "s3:GetBucketLocation",
            ],
            "Resource": resources,
        }));
    }
    json!({"Version": "2012-10-17", "Statement": statements})
}

/// What reads, writes or lists a bucket's data. Configuration actions are
/// left to IAM: denying them to a mistaken principal list could lock the
/// operator out of repairing the bucket.
const DATA_ACTIONS: &[&str] = &[
    "s3:GetObject*",
    "s3:PutObject*",
    "s3:DeleteObject*",
    "s3:ListBucket*",
    "s3:ListMultipartUploadParts",
    "s3:AbortMultipartUpload",
    "s3:RestoreObject",
    "s3:ReplicateObject",
];

/// Whether a stored policy means the same as `desired`: S3 may give it back
/// reformatted, with one-element lists as scalars, or with another order.
pub(crate) fn same_policy(stored: &str, desired: &Value) -> bool {
    serde_json::from_str::<Value>(stored)
        .is_ok_and(|s| normalize_policy(&s) == normalize_policy(desired))
}

fn normalize_policy(policy: &Value) -> Value {
    let mut statements: Vec<Value> = as_list(policy.get("Statement"))
        .iter()
        .map(normalize_statement)
        .collect();
    statements.sort_by_key(|s| s.to_string());
    json!({
        "Version": policy.get("Version").cloned().unwrap_or(Value::Null),
        "Statement": statements,
    })
}

fn normalize_statement(statement: &Value) -> Value {
    let Some(fields) = statement.as_object() else {
        return statement.clone();
    };
    let mut out = serde_json::Map::new();
    for (name, value) in fields {
        let value = match name.as_str() {
            // Action names are case-insensitive.
            "Action" | "NotAction" => Value::from(
                sorted_strings(value)
                    .into_iter()
                    .map(|a| a.to_ascii_lowercase())
                    .collect::<Vec<_>>(),
            ),
            "Resource" | "NotResource" => Value::from(sorted_strings(value)),
            "Principal" | "NotPrincipal" => normalize_principal(value),
            "Condition" => normalize_condition(value),
            _ => value.clone(),
        };
        out.insert(name.clone(), value);
    }
    Value::Object(out)
}

fn normalize_principal(principal: &Value) -> Value {
    // `"*"` and `{"AWS": "*"}` both mean everyone.
    if principal == "*"
        || principal
            .get("AWS")
            .is_some_and(|a| a == "*" || *a == json!(["*"]))
    {
        return Value::from("*");
    }
    match principal.as_object() {
        Some(kinds) => Value::Object(
            kinds
                .iter()
                .map(|(k, v)| (k.clone(), Value::from(sorted_strings(v))))
                .collect(),
        ),
        None => principal.clone(),
    }
}

fn normalize_condition(condition: &Value) -> Value {
    let Some(operators) = condition.as_object() else {
        return condition.clone();
    };
    let operators = operators
        .iter()
        .map(|(op, keys)| {
            let keys = keys
                .as_object()
                .map(|keys| {
                    keys.iter()
                        // Condition keys are case-insensitive; values are compared
                        // as text, so `false` and `"false"` agree.
                        .map(|(k, v)| (k.to_ascii_lowercase(), Value::from(sorted_strings(v))))
                        .collect::<serde_json::Map<_, _>>()
                })
                .map(Value::Object)
                .unwrap_or_else(|| keys.clone());
            (op.clone(), keys)
        })
        .collect();
    Value::Object(operators)
}

fn as_list(value: Option<&Value>) -> Vec<Value> {
    match value {
        Some(Value::Array(items)) => items.clone(),
        Some(other) => vec![other.clone()],
        None => Vec::new(),
    }
}

fn sorted_strings(value: &Value) -> Vec<String> {
    let mut items: Vec<String> = as_list(Some(value))
        .into_iter()
        .map(|v| match v {
            Value::String(s) => s,
            other => other.to_string(),
        })
        .collect();
    items.sort();
    items.dedup();
    items
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::TenantRef;

    const KEY: &str = "arn:aws:kms:eu-west-1:111122223333:key/k-1";

    fn allowed() -> Vec<String> {
        vec![
            "arn:aws:iam::111122223333:role/tenantry/tenantry-acme".to_string(),
            "arn:aws:iam::111122223333:root".to_string(),
        ]
    }

    /// The policy of `bucket` with the usual principals, and `principal`.
    fn policy(bucket: &str, principal: Option<&str>) -> Value {
        bucket_policy(
            bucket,
            KEY,
            &BucketAccess {
                principal,
                allowed: &allowed(),
            },
        )
    }

    #[test]
    fn the_policy_denies_every_request_without_tls_on_bucket_and_objects() {
        let p = policy("tenantry-acme", None);
        let s = &p["Statement"][0];
        assert_eq!(s["Effect"], "Deny");
        assert_eq!(s["Principal"], "*");
        assert_eq!(s["Action"], "s3:*");
        assert_eq!(
            s["Resource"],
            json!(["arn:aws:s3:::tenantry-acme", "arn:aws:s3:::tenantry-acme/*"])
        );
        assert_eq!(s["Condition"]["Bool"]["aws:SecureTransport"], "false");
    }

    #[test]
    fn a_class_principal_is_allowed_on_the_bucket_and_its_objects_only() {
        let p = policy("t-acme", Some("arn:aws:iam::111122223333:role/app-acme"));
        let allow = &p["Statement"][4];
        assert_eq!(allow["Effect"], "Allow");
        assert_eq!(
            allow["Principal"]["AWS"],
            "arn:aws:iam::111122223333:role/app-acme"
        );
        assert_eq!(
            allow["Resource"],
            json!(["arn:aws:s3:::t-acme", "arn:aws:s3:::t-acme/*"])
        );
        assert!(!allow["Action"].to_string().contains("s3:*"));
        // The TLS deny stays first and whole.
        assert_eq!(p["Statement"][0]["Sid"], "DenyInsecureTransport");
        assert!(!same_policy(&policy("t-acme", None).to_string(), &p));
    }

    #[test]
    fn other_principals_and_other_encryption_are_denied_the_data() {
        let p = policy("t-acme", None);
        let deny = &p["Statement"][1];
        assert_eq!(deny["Sid"], "DenyOtherPrincipals");
        assert_eq!(deny["Effect"], "Deny");
        assert_eq!(
            deny["Condition"]["ArnNotLike"]["aws:PrincipalArn"],
            json!(allowed())
        );
        assert!(deny["Action"].to_string().contains("s3:GetObject*"));
        assert!(!deny["Action"].to_string().contains("PutBucketPolicy"));
        assert_eq!(
            p["Statement"][3]["Condition"]["StringNotEquals"]["s3:x-amz-server-side-encryption-aws-kms-key-id"],
            KEY
        );
    }

    #[test]
    fn a_policy_given_back_in_another_shape_is_the_same_policy() {
        let mut desired = policy("b", None);
        // One statement is enough to show the reshaping.
        desired["Statement"] = json!([desired["Statement"][0].clone()]);
        let reshaped = r#"{
            "Statement": {
                "Condition": {"Bool": {"aws:securetransport": false}},
                "Resource": ["arn:aws:s3:::b/*", "arn:aws:s3:::b"],
                "Action": ["S3:*"],
                "Principal": {"AWS": "*"},
                "Effect": "Deny",
                "Sid": "DenyInsecureTransport"
            },
            "Version": "2012-10-17"
        }"#;
        assert!(same_policy(reshaped, &desired));
        assert!(same_policy(&desired.to_string(), &desired));
    }

    #[test]
    fn a_weaker_or_different_policy_is_not_the_same() {
        let desired = policy("b", None);
        let mut allow = desired.clone();
        allow["Statement"][0]["Effect"] = json!("Allow");
        assert!(!same_policy(&allow.to_string(), &desired));

        let mut objects_only = desired.clone();
        objects_only["Statement"][0]["Resource"] = json!("arn:aws:s3:::b/*");
        assert!(!same_policy(&objects_only.to_string(), &desired));

        let mut extra = desired.clone();
        extra["Statement"]
            .as_array_mut()
            .unwrap()
            .push(json!({"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/*"}));
        assert!(!same_policy(&extra.to_string(), &desired));

        assert!(!same_policy("not json", &desired));
        assert!(!same_policy(&policy("other", None).to_string(), &desired));
    }

    #[test]
    fn motos_versioning_answer_is_understood_and_nothing_else_is_taken_for_it() {
        let root = r#"<?xml version="1.0" encoding="utf-8"?>"#;
        let never = format!(
            r#"{root}<GetBucketVersioningResponse xmlns="http://s3.amazonaws.com/doc/2006-03-01/"/>"#
        );
        assert_eq!(parse_moto_versioning(200, &never), Some(None));
        let on = format!(
            r#"{root}<GetBucketVersioningResponse xmlns="x"><Status>Enabled</Status></GetBucketVersioningResponse>"#
        );
        assert_eq!(
            parse_moto_versioning(200, &on),
            Some(Some(BucketVersioningStatus::Enabled))
        );
        let off = on.replace("Enabled", "Suspended");
        assert_eq!(
            parse_moto_versioning(200, &off),
            Some(Some(BucketVersioningStatus::Suspended))
        );
        assert_eq!(parse_moto_versioning(500, &on), None);
        assert_eq!(
            parse_moto_versioning(200, "<Error><Code>AccessDenied</Code></Error>"),
            None
        );
    }

    /// Notes, for every request about to go out, its operation and the
    /// expected bucket owner it carries.
    #[derive(Clone, Debug, Default)]
    struct SeenOwners(std::sync::Arc<Mutex<Vec<Sent>>>);

    /// An operation and the expected owner it carried.
    type Sent = (String, Option<String>);

    impl aws_smithy_runtime_api::client::interceptors::Intercept for SeenOwners {
        fn name(&self) -> &'static str {
            "test::SeenOwners"
        }

        fn read_before_transmit(
            &self,
            context: &aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef<'_>,
            _runtime_components: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
            cfg: &mut aws_smithy_types::config_bag::ConfigBag,
        ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
            let operation = cfg
                .load::<aws_smithy_runtime_api::client::orchestrator::Metadata>()
                .map_or("unknown", |m| m.name())
                .to_string();
            let owner = context
                .request()
                .headers()
                .get(EXPECTED_OWNER_HEADER)
                .map(str::to_string);
            self.0.lock().unwrap().push((operation, owner));
            Ok(())
        }
    }

    const ACCOUNT: &str = "111122223333";

    /// A backend whose requests go nowhere (nothing listens on port 1 of
    /// loopback), so each call fails at once after showing what it was
    /// about to send. No server answers for S3.
    fn offline_backend(seen: &SeenOwners) -> S3Backend {
        let sdk = SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("eu-west-1"))
            .endpoint_url("http://127.0.0.1:1")
            .credentials_provider(aws_sdk_s3::config::SharedCredentialsProvider::new(
                aws_sdk_s3::config::Credentials::new("AKID", "not-a-secret", None, None, "test"),
            ))
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .build();
        let mut backend = S3Backend::new(&sdk, true).with_account_id(Some(ACCOUNT.to_string()));
        backend.client = Client::from_conf(
            backend
                .client
                .config()
                .to_builder()
                .interceptor(seen.clone())
                .build(),
        );
        backend
    }

    #[tokio::test]
    async fn bucket_and_object_calls_name_the_configured_account_as_expected_owner() {
        let seen = SeenOwners::default();
        let backend = offline_backend(&seen);
        let tenant = TenantRef {
            name: "acme".into(),
            uid: "uid".into(),
            display_name: None,
        };
        let op = &Operation::unrecorded(tenant.clone());
        let key = "arn:aws:kms:eu-west-1:111122223333:key/k";
        let id = ObjectIdentifier::builder().key("o").build().unwrap();
        // Each fails on the refused connection; only what was sent matters.
        assert!(backend.head("b").await.is_err());
        assert!(backend.tags_of("b").await.is_err());
        assert!(backend.put_tags(op, "b", &BTreeMap::new()).await.is_err());
        assert!(backend.reset_released(op, "b").await.is_err());
        assert!(backend.converge_public_access_block(op, "b").await.is_err());
        assert!(backend.converge_ownership_controls(op, "b").await.is_err());
        assert!(backend.converge_encryption(op, "b", key).await.is_err());
        assert!(backend.converge_versioning(op, "b", true).await.is_err());
        assert!(backend.converge_policy(op, "b", key).await.is_err());
        assert!(backend.empty("b").await.is_err());
        assert!(backend.delete_batch("b", vec![id]).await.is_err());
        let seen = seen.0.lock().unwrap().clone();
        let operations: Vec<&str> = seen.iter().map(|(op, _)| op.as_str()).collect();
        assert_eq!(
            operations,
            [
                "HeadBucket",
                "GetBucketTagging",
                "PutBucketTagging",
                "GetBucketReplication",
                "GetPublicAccessBlock",
                "GetBucketOwnershipControls",
                "GetBucketEncryption",
                "GetBucketVersioning",
                "GetBucketPolicy",
                "ListObjectVersions",
                "DeleteObjects",
            ]
        );
        for (operation, owner) in &seen {
            assert_eq!(owner.as_deref(), Some(ACCOUNT), "{operation}");
        }
    }

    #[tokio::test]
    async fn a_bucket_call_without_an_expected_owner_is_never_sent_and_not_retried() {
        let seen = SeenOwners::default();
        let backend = offline_backend(&seen);
        let err = backend
            .client
            .get_bucket_tagging()
            .bucket("b")
            .send()
            .await
            .unwrap_err();
        let err = classify(BACKEND, "GetBucketTagging b", err);
        assert!(
            matches!(err, BackendError::Rejected { .. }),
            "a bug, not a transient error: {err:?}"
        );
        assert!(err.to_string().contains("ExpectedBucketOwner"), "{err}");
        assert!(seen.0.lock().unwrap().is_empty(), "it was sent");

        // CreateBucket takes no expected owner: it goes out (and meets the
        // closed port).
        let op = Operation::unrecorded(TenantRef {
            name: "acme".into(),
            uid: "uid".into(),
            display_name: None,
        });
        let created = backend.create(&op, "b").await;
        assert!(
            matches!(created, Err(BackendError::Unavailable { .. })),
            "{created:?}"
        );
        assert_eq!(
            seen.0.lock().unwrap()[0],
            ("CreateBucket".to_string(), None)
        );
    }

    #[test]
    fn only_create_and_list_buckets_go_without_an_expected_owner() {
        assert!(lacks_expected_owner("HeadBucket", None));
        assert!(lacks_expected_owner("DeleteBucket", Some("")));
        assert!(!lacks_expected_owner("DeleteBucket", Some(ACCOUNT)));
        assert!(!lacks_expected_owner("CreateBucket", None));
        assert!(!lacks_expected_owner("ListBuckets", None));
    }

    #[test]
    fn the_local_control_endpoint_loses_only_the_account_prefix() {
        assert_eq!(
            unprefixed("http://123456789012.127.0.0.1:4566", Some("123456789012")),
            "http://127.0.0.1:4566"
        );
        assert_eq!(
            unprefixed("http://127.0.0.1:4566", Some("123456789012")),
            "http://127.0.0.1:4566"
        );
        assert_eq!(
            unprefixed("https://1234567890123.example.com", Some("123456789012")),
            "https://1234567890123.example.com"
        );
        assert_eq!(
            unprefixed("https://1.example.com", None),
            "https://1.example.com"
        );
    }

    #[test]
    fn motos_access_point_and_notification_answers_are_understood() {
        let root = r#"<?xml version="1.0" encoding="utf-8"?>"#;
        let page = format!(
            "{root}<ListAccessPointsResponse xmlns=\"x\"><AccessPointList>\
             <AccessPoint><Name>a&amp;1</Name><NetworkOrigin>Internet</NetworkOrigin><Bucket>b</Bucket></AccessPoint>\
             <AccessPoint><Name>a2</Name><Bucket>other</Bucket></AccessPoint>\
             </AccessPointList><NextToken>t</NextToken></ListAccessPointsResponse>"
        );
        assert_eq!(
            parse_moto_access_points(200, &page),
            Some(MotoAccessPoints {
                access_points: vec![
                    ("a&1".to_string(), "b".to_string()),
                    ("a2".to_string(), "other".to_string())
                ],
                next_token: Some("t".to_string()),
            })
        );
        let empty = format!(
            "{root}<ListAccessPointsResponse xmlns=\"x\"><AccessPointList/></ListAccessPointsResponse>"
        );
        assert_eq!(
            parse_moto_access_points(200, &empty),
            Some(MotoAccessPoints {
                access_points: vec![],
                next_token: None
            })
        );
        assert_eq!(parse_moto_access_points(403, &page), None);
        assert_eq!(
            parse_moto_access_points(200, "<Error><Code>AccessDenied</Code></Error>"),
            None
        );

        assert!(is_moto_empty_notifications(&format!(
            "{root}<GetBucketNotificationResponse xmlns=\"x\"/>"
        )));
        assert!(!is_moto_empty_notifications(&format!(
            "{root}<GetBucketNotificationResponse><QueueConfiguration/></GetBucketNotificationResponse>"
        )));
        assert!(!is_moto_empty_notifications("<NotificationConfiguration/>"));
    }

    #[test]
    fn the_partition_comes_from_the_key_arn() {
        assert_eq!(partition_of("arn:aws:kms:eu-west-1:123:key/abc"), "aws");
        assert_eq!(
            partition_of("arn:aws-cn:kms:cn-north-1:123:key/abc"),
            "aws-cn"
        );
        assert_eq!(partition_of("abc"), "aws");
    }
}
