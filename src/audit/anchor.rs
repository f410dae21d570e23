//! The audit trail's external anchor: checkpoints (the head hash of every
//! tenant's chain, in a format [`super`] owns) MAC'd with a KMS HMAC key and
//! stored in an S3 bucket under Object Lock.
//!
//! The trail lives in PostgreSQL, where a database superuser can rewrite rows
//! and recompute their hashes. The anchor is outside the database's reach:
//!
//! - every checkpoint object is written with a COMPLIANCE retention, which
//!   nobody (the bucket owner and the account root included) can shorten or
//!   delete before it expires, so a checkpoint once written stays;
//! - whoever can write the bucket can still put a *newer version* over a key,
//!   so [`Anchor::checkpoints`] reads the *oldest* version of each key: the
//!   one tenantry wrote, which the lock keeps;
//! - the MAC is made by KMS with a key whose material never leaves KMS, so a
//!   database superuser cannot make a checkpoint that verifies.
//!
//! This module only stores and MACs bytes; what a checkpoint says and how
//! verification uses it is [`super`]'s business.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_config::SdkConfig;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{KeyMetadata, KeySpec, KeyState, KeyUsageType, MacAlgorithmSpec, Tag};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, DefaultRetention, ObjectLockConfiguration, ObjectLockEnabled,
    ObjectLockMode, ObjectLockRetentionMode, ObjectLockRule,
};
use sha2::{Digest, Sha256};

use crate::backends::aws::{classify, error_code, http_status};
use crate::backends::{Backend, BackendError, tags};

/// Where checkpoints live in the bucket: `checkpoints/<seq, 20 digits>.json`.
/// Twenty digits hold every non-negative `i64`, and zero padding makes the
/// keys list in seq order.
pub const CHECKPOINT_PREFIX: &str = "checkpoints/";
const CHECKPOINT_SUFFIX: &str = ".json";
const SEQ_DIGITS: usize = 20;

/// What the KMS key's description says it is for.
pub const KEY_DESCRIPTION: &str =
    "tenantry audit MAC key: authenticates the audit trail's checkpoints (do not delete)";

/// The MAC algorithm; KMS requires a key of spec HMAC_256 for it.
const MAC_ALGORITHM: MacAlgorithmSpec = MacAlgorithmSpec::HmacSha256;
/// Length of an HMAC-SHA-256: anything else cannot be a valid MAC.
const MAC_LEN: usize = 32;

/// Largest checkpoint body read back. A checkpoint holds one line per
/// tenant; anything near this size was not written by tenantry, and reading
/// a planted multi-gigabyte object into memory would take the verifier down.
const MAX_CHECKPOINT_BYTES: i64 = 64 * 1024 * 1024;

const SECONDS_PER_DAY: u64 = 86_400;

#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    /// An S3 or KMS call failed; classified like every other AWS call of
    /// tenantry (throttling, 5xx, timeouts are transient).
    #[error(transparent)]
    Aws(#[from] BackendError),
    /// The bucket exists but Object Lock is not enabled on it, so what is
    /// written there can be deleted or replaced: no anchor.
    #[error(
        "audit anchor bucket {bucket} exists but has no Object Lock enabled: checkpoints in it \
         could be deleted or replaced, so it cannot anchor the audit trail; use a bucket created \
         with Object Lock (or let tenantry create it under a new name)"
    )]
    BucketNotLocked { bucket: String },
    /// The bucket name is taken by another account, or these credentials
    /// may not see it.
    #[error("audit anchor bucket {bucket} cannot be used: {why}")]
    BucketUnavailable { bucket: String, why: String },
    /// A key id or ARN was given and no such key exists (tenantry creates a
    /// key only for an `alias/...` name).
    #[error(
        "audit MAC key {key} does not exist; name an alias (alias/...) to have tenantry create the key"
    )]
    KeyNotFound { key: String },
    /// The key exists but cannot make or check the audit MACs.
    #[error("audit MAC key {key} (key id {key_id}) cannot be used: {why}")]
    UnsuitableKey {
        key: String,
        key_id: String,
        why: String,
    },
    /// A checkpoint with this seq is already stored with different content.
    /// It is locked, so it stays: someone wrote it before tenantry did, or
    /// tenantry reused a seq.
    #[error(
        "audit checkpoint {seq} already exists in bucket {bucket} with a different body; \
         the stored one is locked and stays"
    )]
    CheckpointExists { bucket: String, seq: i64 },
    /// An object under the checkpoint prefix that tenantry cannot have written.
    #[error("audit anchor bucket {bucket}: object {key}: {why}")]
    Malformed {
        bucket: String,
        key: String,
        why: String,
    },
    /// The anchor was configured with values it cannot work with.
    #[error("audit anchor configuration: {0}")]
    Config(String),
}

impl AnchorError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Aws(e) => e.is_transient(),
            _ => false,
        }
    }
}

/// The S3 bucket and KMS key that anchor the audit trail.
pub struct Anchor {
    s3: aws_sdk_s3::Client,
    kms: aws_sdk_kms::Client,
    region: Option<String>,
    bucket: String,
    /// Key id, key ARN, `alias/...` or alias ARN, as configured.
    mac_key: String,
    retention: Duration,
    /// Where this trail's checkpoints live in the bucket.
    prefix: String,
}

impl std::fmt::Debug for Anchor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Anchor")
            .field("bucket", &self.bucket)
            .field("mac_key", &self.mac_key)
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

fn key_for(prefix: &str, seq: i64) -> String {
    format!(
        "{prefix}{seq:0width$}{CHECKPOINT_SUFFIX}",
        width = SEQ_DIGITS
    )
}

fn parse_key(prefix: &str, key: &str) -> Option<i64> {
    let digits = key.strip_prefix(prefix)?.strip_suffix(CHECKPOINT_SUFFIX)?;
    if digits.len() != SEQ_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

impl Anchor {
    /// `force_path_style` is for endpoints without virtual-host addressing
    /// (moto, MinIO), as for the tenants' buckets. `retention` is how long
    /// each checkpoint stays locked; it must be at least a second, and the
    /// bucket's default rule rounds it up to whole days.
    pub fn new(
        config: &SdkConfig,
        force_path_style: bool,
        bucket: &str,
        mac_key: &str,
        retention: Duration,
    ) -> Self {
        // The same clients as the backends', so the anchor's calls are
        // counted in tenantry_backend_calls_total too.
        let s3_config = crate::backends::aws::count_s3_calls(
            aws_sdk_s3::config::Builder::from(config).force_path_style(force_path_style),
        )
        .build();
        Self {
            s3: aws_sdk_s3::Client::from_conf(s3_config),
            kms: crate::backends::aws::kms_client(config),
            region: config.region().map(|r| r.to_string()),
            bucket: bucket.to_string(),
            mac_key: mac_key.to_string(),
            retention,
            prefix: CHECKPOINT_PREFIX.to_string(),
        }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn mac_key(&self) -> &str {
        &self.mac_key
    }

    /// The same anchor for one trail: its checkpoints under
    /// `checkpoints/<trail>/`, so trails in several schemas (or several
    /// installations) can share a bucket without sharing a sequence.
    pub fn for_trail(mut self, trail: &str) -> Self {
        self.prefix = format!("{CHECKPOINT_PREFIX}{trail}/");
        self
    }

    /// The object key of checkpoint `seq`.
    pub fn checkpoint_key(&self, seq: i64) -> String {
        key_for(&self.prefix, seq)
    }

    /// The seq of a checkpoint object key; `None` for any other key.
    pub fn parse_checkpoint_key(&self, key: &str) -> Option<i64> {
        parse_key(&self.prefix, key)
    }

    /// Creates what is missing, and checks what exists: the bucket with
    /// Object Lock enabled and a default COMPLIANCE retention rule; the HMAC
    /// key (and its alias, when `mac_key` is one). A bucket without Object
    /// Lock, or a key that is not an enabled HMAC_256 key for
    /// GENERATE_VERIFY_MAC, is an error: it would give an anchor that
    /// anchors nothing.
    pub async fn ensure(&self) -> Result<(), AnchorError> {
        if self.retention < Duration::from_secs(1) {
            return Err(AnchorError::Config(format!(
                "retention {:?} is shorter than a second: checkpoints would not be locked",
                self.retention
            )));
        }
        self.ensure_bucket().await?;
        self.ensure_key().await?;
        Ok(())
    }

    async fn ensure_bucket(&self) -> Result<(), AnchorError> {
        let bucket = &self.bucket;
        match self.s3.head_bucket().bucket(bucket).send().await {
            Ok(_) => {}
            Err(e) if http_status(&e) == Some(404) => self.create_bucket().await?,
            Err(e) if http_status(&e) == Some(403) => {
                return Err(AnchorError::BucketUnavailable {
                    bucket: bucket.clone(),
                    why: "access denied (HTTP 403): it belongs to another AWS account, or these \
                          credentials lack s3:ListBucket on it"
                        .into(),
                });
            }
            Err(e) => return Err(classify(Backend::S3, &format!("HeadBucket {bucket}"), e).into()),
        }

        let config = match self
            .s3
            .get_object_lock_configuration()
            .bucket(bucket)
            .send()
            .await
        {
            Ok(out) => out.object_lock_configuration,
            // What S3 answers for a bucket created without Object Lock.
            Err(e) if error_code(&e) == Some("ObjectLockConfigurationNotFoundError") => None,
            Err(e) => {
                return Err(classify(
                    Backend::S3,
                    &format!("GetObjectLockConfiguration {bucket}"),
                    e,
                )
                .into());
            }
        };
        let enabled = config
            .as_ref()
            .and_then(|c| c.object_lock_enabled())
            .is_some_and(|e| *e == ObjectLockEnabled::Enabled);
        if !enabled {
            return Err(AnchorError::BucketNotLocked {
                bucket: bucket.clone(),
            });
        }
        // An existing rule is left as it is, whatever its mode or period:
        // every checkpoint carries its own COMPLIANCE retention, so the
        // default rule is only a backstop for objects put without one, and a
        // longer rule an administrator chose must not be replaced.
        if config.and_then(|c| c.rule).is_none() {
            self.put_default_rule().await?;
        }
        Ok(())
    }

    async fn create_bucket(&self) -> Result<(), AnchorError> {
        let bucket = &self.bucket;
        let location = crate::backends::s3::bucket_location(self.region.as_deref());
        let created = self
            .s3
            .create_bucket()
            .bucket(bucket)
            .set_create_bucket_configuration(location)
            // Object Lock can be enabled at creation without any further
            // call; it turns versioning on, for good.
            .object_lock_enabled_for_bucket(true)
            .send()
            .await;
        match created {
            Ok(_) => {
                tracing::info!(bucket, "created the audit anchor bucket with Object Lock");
                Ok(())
            }
            // Another replica made it between our HeadBucket and here; the
            // checks that follow decide whether it will do.
            Err(e) if error_code(&e) == Some("BucketAlreadyOwnedByYou") => Ok(()),
            Err(e) if error_code(&e) == Some("BucketAlreadyExists") => {
                Err(AnchorError::BucketUnavailable {
                    bucket: bucket.clone(),
                    why: "the name is taken by another AWS account".into(),
                })
            }
            Err(e) => Err(classify(Backend::S3, &format!("CreateBucket {bucket}"), e).into()),
        }
    }

    /// The bucket's default retention: COMPLIANCE for the anchor's
    /// retention, in whole days (the rule's unit), rounded up.
    async fn put_default_rule(&self) -> Result<(), AnchorError> {
        let bucket = &self.bucket;
        let days = retention_days(self.retention);
        let rule = ObjectLockRule::builder()
            .default_retention(
                DefaultRetention::builder()
                    .mode(ObjectLockRetentionMode::Compliance)
                    .days(days)
                    .build(),
            )
            .build();
        let config = ObjectLockConfiguration::builder()
            .object_lock_enabled(ObjectLockEnabled::Enabled)
            .rule(rule)
            .build();
        self.s3
            .put_object_lock_configuration()
            .bucket(bucket)
            .object_lock_configuration(config)
            .send()
            .await
            .map_err(|e| {
                classify(
                    Backend::S3,
                    &format!("PutObjectLockConfiguration {bucket}"),
                    e,
                )
            })?;
        tracing::info!(
            bucket,
            days,
            "set the audit anchor bucket's default retention (COMPLIANCE)"
        );
        Ok(())
    }

    async fn ensure_key(&self) -> Result<(), AnchorError> {
        let meta = match self.describe_key().await? {
            Some(meta) => meta,
            None if self.mac_key.starts_with("alias/") => self.create_key().await?,
            None => {
                return Err(AnchorError::KeyNotFound {
                    key: self.mac_key.clone(),
                });
            }
        };
        check_key(&self.mac_key, &meta)
    }

    /// The key `mac_key` names, or `None` when there is none.
    async fn describe_key(&self) -> Result<Option<KeyMetadata>, AnchorError> {
        let key = &self.mac_key;
        match self.kms.describe_key().key_id(key).send().await {
            Ok(out) => Ok(out.key_metadata),
            Err(e) if error_code(&e) == Some("NotFoundException") => Ok(None),
            Err(e) => Err(classify(Backend::Kms, &format!("DescribeKey {key}"), e).into()),
        }
    }

    /// Creates the HMAC key and points the alias `mac_key` at it.
    async fn create_key(&self) -> Result<KeyMetadata, AnchorError> {
        let alias = &self.mac_key;
        let created = self
            .kms
            .create_key()
            .key_spec(KeySpec::Hmac256)
            .key_usage(KeyUsageType::GenerateVerifyMac)
            .description(KEY_DESCRIPTION)
            .tags(
                Tag::builder()
                    .tag_key(tags::MANAGED_BY)
                    .tag_value(tags::MANAGED_BY_VALUE)
                    .build()
                    .map_err(|e| AnchorError::Config(format!("tag: {e}")))?,
            )
            .send()
            .await
            .map_err(|e| classify(Backend::Kms, &format!("CreateKey for {alias}"), e))?;
        let meta = created.key_metadata.ok_or_else(|| {
            AnchorError::Aws(BackendError::Rejected {
                backend: Backend::Kms,
                message: format!("CreateKey for {alias}: the answer held no key metadata"),
            })
        })?;
        let key_id = meta.key_id().to_string();
        match self
            .kms
            .create_alias()
            .alias_name(alias)
            .target_key_id(&key_id)
            .send()
            .await
        {
            Ok(_) => {
                tracing::info!(alias = %alias, key_id = %key_id, "created the audit MAC key");
                Ok(meta)
            }
            // Another replica created its key and alias first: use that one,
            // and retire ours so no unused key is left behind.
            Err(e) if error_code(&e) == Some("AlreadyExistsException") => {
                if let Err(e) = self
                    .kms
                    .schedule_key_deletion()
                    .key_id(&key_id)
                    .pending_window_in_days(7)
                    .send()
                    .await
                {
                    tracing::warn!(key_id = %key_id, error = %classify(Backend::Kms, "ScheduleKeyDeletion", e),
                        "could not retire a duplicate audit MAC key");
                }
                self.describe_key()
                    .await?
                    .ok_or_else(|| AnchorError::KeyNotFound { key: alias.clone() })
            }
            Err(e) => {
                Err(classify(Backend::Kms, &format!("CreateAlias {alias} -> {key_id}"), e).into())
            }
        }
    }

    /// HMAC-SHA-256, made by KMS with the MAC key, of the SHA-256 digest of
    /// `message`. KMS takes at most 4096 bytes of message and a checkpoint
    /// can be longer, so the digest is what is MAC'd: to check a MAC by hand,
    /// give `aws kms verify-mac` the 32-byte digest, not the message.
    pub async fn mac(&self, message: &[u8]) -> Result<Vec<u8>, AnchorError> {
        let key = &self.mac_key;
        let out = self
            .kms
            .generate_mac()
            .key_id(key)
            .mac_algorithm(MAC_ALGORITHM)
            .message(Blob::new(Sha256::digest(message).to_vec()))
            .send()
            .await
            .map_err(|e| classify(Backend::Kms, &format!("GenerateMac {key}"), e))?;
        out.mac.map(Blob::into_inner).ok_or_else(|| {
            AnchorError::Aws(BackendError::Rejected {
                backend: Backend::Kms,
                message: format!("GenerateMac {key}: the answer held no MAC"),
            })
        })
    }

    /// Whether `mac` is [`Anchor::mac`] of `message`. A MAC that does not
    /// match is `Ok(false)`; only a failed call is an error.
    pub async fn verify_mac(&self, message: &[u8], mac: &[u8]) -> Result<bool, AnchorError> {
        // KMS refuses some malformed MACs (empty, too long) as invalid
        // requests rather than invalid MACs; none of them can be valid.
        if mac.len() != MAC_LEN {
            return Ok(false);
        }
        let key = &self.mac_key;
        match self
            .kms
            .verify_mac()
            .key_id(key)
            .mac_algorithm(MAC_ALGORITHM)
            .message(Blob::new(Sha256::digest(message).to_vec()))
            .mac(Blob::new(mac.to_vec()))
            .send()
            .await
        {
            Ok(out) => Ok(out.mac_valid()),
            // How KMS says "does not match".
            Err(e) if error_code(&e) == Some("KMSInvalidMacException") => Ok(false),
            Err(e) => Err(classify(Backend::Kms, &format!("VerifyMac {key}"), e).into()),
        }
    }

    /// Stores checkpoint `seq`, locked in COMPLIANCE mode until now plus the
    /// retention. Written only if the key does not exist yet (If-None-Match),
    /// so a seq is never written twice; a retry of a write whose answer was
    /// lost finds its own body there and succeeds.
    pub async fn put_checkpoint(&self, seq: i64, body: &[u8]) -> Result<(), AnchorError> {
        if seq < 0 {
            return Err(AnchorError::Config(format!(
                "checkpoint seq {seq} is negative"
            )));
        }
        let bucket = &self.bucket;
        let key = self.checkpoint_key(seq);
        let until = retain_until(SystemTime::now(), self.retention);
        let put = self
            .s3
            .put_object()
            .bucket(bucket)
            .key(&key)
            .content_type("application/json")
            .body(ByteStream::from(body.to_vec()))
            .object_lock_mode(ObjectLockMode::Compliance)
            .object_lock_retain_until_date(aws_smithy_types::DateTime::from_secs(until))
            // S3 refuses an Object Lock put without an integrity checksum
            // (Content-MD5 or an x-amz-checksum-*); SHA-256 is computed by
            // the SDK over the body.
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .if_none_match("*")
            .send()
            .await;
        match put {
            Ok(out) => {
                // If-None-Match looks at the current version only: under a
                // delete marker, older versions (someone else's, or ours)
                // are still there and are what `checkpoints` reads. Ours
                // must be the first version of the key.
                let ours = out.version_id;
                match self.oldest_version(&key).await? {
                    Some(oldest) if oldest == ours => {
                        tracing::info!(bucket, seq, "stored audit checkpoint");
                        Ok(())
                    }
                    Some(Some(oldest)) if self.get_version(&key, Some(&oldest)).await? == body => {
                        Ok(())
                    }
                    _ => Err(AnchorError::CheckpointExists {
                        bucket: bucket.clone(),
                        seq,
                    }),
                }
            }
            // The key exists: fine if it holds this very body (a retry of a
            // write whose answer was lost), else the seq is taken.
            Err(e) if http_status(&e) == Some(412) => match self.oldest_version(&key).await? {
                Some(version) if self.get_version(&key, version.as_deref()).await? == body => {
                    Ok(())
                }
                _ => Err(AnchorError::CheckpointExists {
                    bucket: bucket.clone(),
                    seq,
                }),
            },
            // Two conditional writes of the same key raced (S3 answers 409
            // ConditionalRequestConflict): the next try sees who won.
            Err(e) if http_status(&e) == Some(409) => {
                let message = format!(
                    "PutObject {bucket}/{key}: {} (HTTP 409): a concurrent write of the same key",
                    error_code(&e).unwrap_or("Conflict")
                );
                Err(AnchorError::Aws(BackendError::Unavailable {
                    backend: Backend::S3,
                    message,
                }))
            }
            Err(e) => Err(classify(Backend::S3, &format!("PutObject {bucket}/{key}"), e).into()),
        }
    }

    /// Every checkpoint, oldest seq first, as `(seq, body)`. Each key's
    /// *oldest* version is read: whoever can write the bucket can put a
    /// newer version over a key, but cannot remove or alter a locked one,
    /// so the first version is the one tenantry wrote. Delete markers are
    /// ignored for the same reason, and objects under the prefix whose name
    /// is not a checkpoint's are skipped.
    pub async fn checkpoints(&self) -> Result<Vec<(i64, Vec<u8>)>, AnchorError> {
        let by_seq = self.checkpoint_versions().await?;
        let mut out = Vec::with_capacity(by_seq.len());
        for (seq, (key, version)) in by_seq {
            out.push((seq, self.get_version(&key, version.as_deref()).await?));
        }
        Ok(out)
    }

    /// The newest checkpoint, as [`checkpoints`](Self::checkpoints) reads
    /// it, reading one body instead of all: what a writer needs to go on.
    pub async fn latest_checkpoint(&self) -> Result<Option<(i64, Vec<u8>)>, AnchorError> {
        let Some((seq, (key, version))) = self.checkpoint_versions().await?.pop_last() else {
            return Ok(None);
        };
        Ok(Some((
            seq,
            self.get_version(&key, version.as_deref()).await?,
        )))
    }

    /// Key and oldest version of every checkpoint, by seq.
    async fn checkpoint_versions(
        &self,
    ) -> Result<BTreeMap<i64, (String, Option<String>)>, AnchorError> {
        let oldest = self.oldest_versions(&self.prefix).await?;
        let mut by_seq = BTreeMap::new();
        for (key, version) in oldest {
            match self.parse_checkpoint_key(&key) {
                Some(seq) => {
                    by_seq.insert(seq, (key, version));
                }
                None => tracing::warn!(
                    bucket = %self.bucket,
                    key = %key,
                    "object in the audit anchor's checkpoint prefix is not a checkpoint; skipped"
                ),
            }
        }
        Ok(by_seq)
    }

    /// The oldest version id of one key; `None` when the key has none.
    /// (`Some(None)`: a version without id, which a bucket under Object Lock
    /// never has, but a listing may say so.)
    async fn oldest_version(&self, key: &str) -> Result<Option<Option<String>>, AnchorError> {
        Ok(self.oldest_versions(key).await?.remove(key))
    }

    /// The oldest version of every key under `prefix`, by key.
    async fn oldest_versions(
        &self,
        prefix: &str,
    ) -> Result<BTreeMap<String, Option<String>>, AnchorError> {
        let bucket = &self.bucket;
        let mut oldest = BTreeMap::new();
        let mut key_marker: Option<String> = None;
        let mut version_marker: Option<String> = None;
        loop {
            let page = self
                .s3
                .list_object_versions()
                .bucket(bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.take())
                .set_version_id_marker(version_marker.take())
                .send()
                .await
                .map_err(|e| classify(Backend::S3, &format!("ListObjectVersions {bucket}"), e))?;
            // S3 lists the versions of a key newest first, so the last one
            // seen of a key (across pages too) is its oldest. The listing
            // order is what counts: LastModified has whole seconds on S3 and
            // ties when versions are written in the same second.
            for version in page.versions() {
                if let Some(key) = version.key() {
                    oldest.insert(key.to_string(), version.version_id().map(str::to_string));
                }
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_string);
            version_marker = page.next_version_id_marker().map(str::to_string);
            if key_marker.is_none() {
                // A truncated page with nowhere to continue from: stop
                // rather than list the first page forever.
                return Err(AnchorError::Aws(BackendError::Rejected {
                    backend: Backend::S3,
                    message: format!(
                        "ListObjectVersions {bucket}: a truncated page without a next marker"
                    ),
                }));
            }
        }
        Ok(oldest)
    }

    /// The body of one version of a key.
    async fn get_version(&self, key: &str, version: Option<&str>) -> Result<Vec<u8>, AnchorError> {
        let bucket = &self.bucket;
        let out = self
            .s3
            .get_object()
            .bucket(bucket)
            .key(key)
            .set_version_id(version.map(str::to_string))
            .send()
            .await
            .map_err(|e| classify(Backend::S3, &format!("GetObject {bucket}/{key}"), e))?;
        if out.content_length().unwrap_or(0) > MAX_CHECKPOINT_BYTES {
            return Err(AnchorError::Malformed {
                bucket: bucket.clone(),
                key: key.to_string(),
                why: format!(
                    "{} bytes, more than any checkpoint ({MAX_CHECKPOINT_BYTES})",
                    out.content_length().unwrap_or(0)
                ),
            });
        }
        let body = out.body.collect().await.map_err(|e| {
            AnchorError::Aws(BackendError::Unavailable {
                backend: Backend::S3,
                message: format!("GetObject {bucket}/{key}: reading the body: {e}"),
            })
        })?;
        Ok(body.into_bytes().to_vec())
    }
}

/// Checks that a key can make and check the audit MACs.
fn check_key(name: &str, meta: &KeyMetadata) -> Result<(), AnchorError> {
    let unsuitable = |why: String| AnchorError::UnsuitableKey {
        key: name.to_string(),
        key_id: meta.key_id().to_string(),
        why,
    };
    if meta.key_spec() != Some(&KeySpec::Hmac256) {
        return Err(unsuitable(format!(
            "its key spec is {}, not HMAC_256",
            meta.key_spec().map_or("unknown", |s| s.as_str())
        )));
    }
    if meta.key_usage() != Some(&KeyUsageType::GenerateVerifyMac) {
        return Err(unsuitable(format!(
            "its key usage is {}, not GENERATE_VERIFY_MAC",
            meta.key_usage().map_or("unknown", |u| u.as_str())
        )));
    }
    if meta.key_state() != Some(&KeyState::Enabled) {
        return Err(unsuitable(format!(
            "it is {}, not Enabled",
            meta.key_state()
                .map_or("in an unknown state", |s| s.as_str())
        )));
    }
    Ok(())
}

/// The retain-until instant, in whole seconds since the epoch: now plus the
/// retention, rounded up so an object is never locked for less.
fn retain_until(now: SystemTime, retention: Duration) -> i64 {
    let until = now.duration_since(UNIX_EPOCH).unwrap_or_default() + retention;
    let secs = until.as_secs() + u64::from(until.subsec_nanos() > 0);
    i64::try_from(secs).unwrap_or(i64::MAX)
}

/// The retention in whole days, rounded up, at least one (S3's minimum).
fn retention_days(retention: Duration) -> i32 {
    let days = retention.as_secs().div_ceil(SECONDS_PER_DAY).max(1);
    i32::try_from(days).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_keys_are_zero_padded_and_parse_back() {
        assert_eq!(
            key_for(CHECKPOINT_PREFIX, 42),
            "checkpoints/00000000000000000042.json"
        );
        assert_eq!(
            key_for(CHECKPOINT_PREFIX, i64::MAX),
            "checkpoints/09223372036854775807.json"
        );
        for seq in [0, 1, 42, i64::MAX] {
            assert_eq!(
                parse_key(CHECKPOINT_PREFIX, &key_for(CHECKPOINT_PREFIX, seq)),
                Some(seq)
            );
        }
        // Keys sort like their seqs.
        assert!(key_for(CHECKPOINT_PREFIX, 9) < key_for(CHECKPOINT_PREFIX, 10));
        for other in [
            "checkpoints/42.json",
            "checkpoints/0000000000000000004x.json",
            "checkpoints/00000000000000000042.json.bak",
            "checkpoints/+0000000000000000042.json",
            "other/00000000000000000042.json",
            "checkpoints/99999999999999999999.json",
        ] {
            assert_eq!(parse_key(CHECKPOINT_PREFIX, other), None, "{other}");
        }
    }

    #[test]
    fn retention_rounds_up_never_down() {
        let now = UNIX_EPOCH + Duration::from_millis(1_000_500);
        assert_eq!(retain_until(now, Duration::from_secs(10)), 1_011);
        assert_eq!(
            retain_until(UNIX_EPOCH + Duration::from_secs(5), Duration::from_secs(10)),
            15
        );
        assert_eq!(retention_days(Duration::from_secs(1)), 1);
        assert_eq!(retention_days(Duration::from_secs(SECONDS_PER_DAY)), 1);
        assert_eq!(retention_days(Duration::from_secs(SECONDS_PER_DAY + 1)), 2);
        assert_eq!(
            retention_days(Duration::from_secs(365 * SECONDS_PER_DAY)),
            365
        );
    }

    #[test]
    fn only_transport_failures_are_transient() {
        let unavailable = AnchorError::Aws(BackendError::Unavailable {
            backend: Backend::S3,
            message: "503".into(),
        });
        assert!(unavailable.is_transient());
        let refused = AnchorError::Aws(BackendError::Rejected {
            backend: Backend::Kms,
            message: "AccessDenied".into(),
        });
        assert!(!refused.is_transient());
        assert!(!AnchorError::BucketNotLocked { bucket: "b".into() }.is_transient());
        assert!(
            AnchorError::BucketNotLocked {
                bucket: "audit-b".into()
            }
            .to_string()
            .contains("audit-b")
        );
    }
}
