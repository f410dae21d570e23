//! The KMS, S3 and Secrets Manager backends against the local moto server.
//!
//! Every property is read back with plain SDK clients; the backends' own
//! requests go through a recording HTTP client, so a test can tell that a run
//! with nothing to change made no write.

use crate::support::relay::relay;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aws_config::SdkConfig;
use aws_sdk_kms::types::{KeySpec, KeyState, KeyUsageType};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{BucketVersioningStatus, ObjectOwnership, ServerSideEncryption};
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use futures::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use tenantry::backends::aws::load_sdk_config;
use tenantry::backends::kms::KmsBackend;
use tenantry::backends::principals::AccessPrincipals;
use tenantry::backends::s3::S3Backend;
use tenantry::backends::secrets::SecretsManagerBackend;
use tenantry::backends::{
    BackendError, DatabaseCredentials, KeyInfo, KeyManager, ObjectStorage, Removal, SecretStore,
    TenantRef, tags,
};
use tenantry::naming::TenantNames;
use tokio::net::{TcpListener, TcpStream};

use crate::support::{bucket_prefix, in_trail, unique_name, unique_uid, unrecorded};

const DISPLAY_NAME_TAG: &str = "tenantry.dev/display-name";

/// The operations the backends sent, recorded by a TCP relay between them
/// and moto. (The SDK's default HTTP client cannot be wrapped from here, and
/// `SdkConfig` carries no interceptors.)
#[derive(Clone, Debug, Default)]
struct Recorder {
    calls: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }

    /// The calls since the last `take` that may change something.
    fn writes(&self) -> Vec<String> {
        let calls = self.take();
        assert!(!calls.is_empty(), "the relay saw no request at all");
        calls.into_iter().filter(|c| is_write(c)).collect()
    }

    /// Listens on a free loopback port and relays every connection to
    /// `upstream` (host:port) unchanged, noting each request's operation.
    async fn relay_to(&self, upstream: String) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = self.calls.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                tokio::spawn(relay(client, server, calls.clone()));
            }
        });
        addr
    }
}

fn is_write(call: &str) -> bool {
    match call.split_once(' ') {
        Some((method, _)) => !matches!(method, "GET" | "HEAD"),
        None => !["Describe", "Get", "List"]
            .iter()
            .any(|read| call.starts_with(read)),
    }
}

/// The backends under test (recorded) and plain clients for the checks.
struct Aws {
    recorder: Recorder,
    keys: KmsBackend,
    buckets: S3Backend,
    secrets: SecretsManagerBackend,
    kms: aws_sdk_kms::Client,
    s3: aws_sdk_s3::Client,
    sm: aws_sdk_secretsmanager::Client,
}

impl Aws {
    async fn new() -> Self {
        crate::support::env("AWS_ENDPOINT_URL");
        let config = load_sdk_config().await;
        let endpoint = config.endpoint_url().expect("AWS_ENDPOINT_URL names moto");
        let upstream = endpoint
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let recorder = Recorder::default();
        let relay = recorder.relay_to(upstream).await;
        // Set in code, the endpoint outranks AWS_ENDPOINT_URL (which would
        // bypass the relay); everything else comes from the same chain.
        let recorded: SdkConfig = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(format!("http://{relay}"))
            .load()
            .await;
        let s3_config = aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(true)
            .build();
        // Who the operator is, read once per process, is not one of the
        // calls under test: it is read past the relay.
        let access = Arc::new(AccessPrincipals::new(&config));
        Self {
            keys: KmsBackend::new(&recorded).with_access(access.clone()),
            buckets: S3Backend::new(&recorded, true).with_access(access),
            secrets: SecretsManagerBackend::new(&recorded),
            recorder,
            kms: aws_sdk_kms::Client::new(&config),
            s3: aws_sdk_s3::Client::from_conf(s3_config),
            sm: aws_sdk_secretsmanager::Client::new(&config),
        }
    }

    // ---- KMS checks

    async fn key_tags(&self, key_id: &str) -> BTreeMap<String, String> {
        let out = self
            .kms
            .list_resource_tags()
            .key_id(key_id)
            .send()
            .await
            .unwrap();
        out.tags()
            .iter()
            .map(|t| (t.tag_key().to_string(), t.tag_value().to_string()))
            .collect()
    }

    async fn key_state(&self, key_id: &str) -> KeyState {
        let out = self.kms.describe_key().key_id(key_id).send().await.unwrap();
        out.key_metadata.unwrap().key_state.unwrap()
    }

    /// The key an alias points at, or `None` when the alias does not exist.
    async fn alias_target(&self, alias: &str) -> Option<String> {
        let mut pages = self.kms.list_aliases().into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.unwrap();
            if let Some(a) = page
                .aliases()
                .iter()
                .find(|a| a.alias_name() == Some(alias))
            {
                return a.target_key_id().map(str::to_string);
            }
        }
        None
    }

    async fn keys_tagged_with(&self, uid: &str) -> Vec<String> {
        let mut found = Vec::new();
        let mut pages = self.kms.list_keys().into_paginator().send();
        while let Some(page) = pages.next().await {
            for key in page.unwrap().keys() {
                let id = key.key_id().unwrap();
                if self
                    .key_tags(id)
                    .await
                    .get(tags::TENANT_UID)
                    .map(String::as_str)
                    == Some(uid)
                {
                    found.push(id.to_string());
                }
            }
        }
        found
    }

    /// A key tagged as another tenant's, made outside tenantry.
    /// What a tenantry process that died between CreateKey and CreateAlias
    /// leaves: a key with tenantry's description and tags, and no alias.
    async fn orphan_key(&self, owner: &TenantRef) -> String {
        self.tagged_key(
            owner,
            Some(format!("tenantry: encryption key of tenant {}", owner.name)),
        )
        .await
    }

    /// A key someone else made and tagged with `owner`'s tags.
    async fn foreign_key(&self, owner: &TenantRef) -> String {
        self.tagged_key(owner, None).await
    }

    async fn tagged_key(&self, owner: &TenantRef, description: Option<String>) -> String {
        let mut create = self.kms.create_key().set_description(description);
        for (k, v) in owner.ownership_tags() {
            create = create.tags(
                aws_sdk_kms::types::Tag::builder()
                    .tag_key(k)
                    .tag_value(v)
                    .build()
                    .unwrap(),
            );
        }
        create.send().await.unwrap().key_metadata.unwrap().key_id
    }

    // ---- S3 checks

    async fn bucket_tags(&self, bucket: &str) -> BTreeMap<String, String> {
        match self.s3.get_bucket_tagging().bucket(bucket).send().await {
            Ok(out) => out
                .tag_set()
                .iter()
                .map(|t| (t.key().to_string(), t.value().to_string()))
                .collect(),
            Err(e) if e.code() == Some("NoSuchTagSet") => BTreeMap::new(),
            Err(e) => panic!("GetBucketTagging: {e:?}"),
        }
    }

    async fn bucket_exists(&self, bucket: &str) -> bool {
        match self.s3.head_bucket().bucket(bucket).send().await {
            Ok(_) => true,
            Err(e) if e.raw_response().map(|r| r.status().as_u16()) == Some(404) => false,
            Err(e) => panic!("HeadBucket: {e:?}"),
        }
    }

    async fn bucket_policy(&self, bucket: &str) -> Option<serde_json::Value> {
        match self.s3.get_bucket_policy().bucket(bucket).send().await {
            Ok(out) => Some(serde_json::from_str(out.policy().unwrap()).unwrap()),
            Err(e) if e.code() == Some("NoSuchBucketPolicy") => None,
            Err(e) => panic!("GetBucketPolicy: {e:?}"),
        }
    }

    async fn public_access_block(&self, bucket: &str) -> Option<[Option<bool>; 4]> {
        match self
            .s3
            .get_public_access_block()
            .bucket(bucket)
            .send()
            .await
        {
            Ok(out) => {
                let c = out.public_access_block_configuration.unwrap();
                Some([
                    c.block_public_acls,
                    c.ignore_public_acls,
                    c.block_public_policy,
                    c.restrict_public_buckets,
                ])
            }
            Err(e) if e.code() == Some("NoSuchPublicAccessBlockConfiguration") => None,
            Err(e) => panic!("GetPublicAccessBlock: {e:?}"),
        }
    }

    async fn versioning(&self, bucket: &str) -> Option<BucketVersioningStatus> {
        match self.s3.get_bucket_versioning().bucket(bucket).send().await {
            Ok(out) => out.status,
            // moto's root element is not the one the SDK expects (see
            // `moto_versioning_status` in the backend): read the raw answer.
            Err(e) => {
                let body = e
                    .raw_response()
                    .and_then(|r| r.body().bytes())
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                assert!(
                    body.contains("<GetBucketVersioningResponse"),
                    "GetBucketVersioning: {e:?}"
                );
                body.split_once("<Status>")
                    .and_then(|(_, rest)| rest.split_once("</Status>"))
                    .map(|(status, _)| BucketVersioningStatus::from(status))
            }
        }
    }

    /// Lifts the tenant's deny-non-TLS policy, which moto enforces on object
    /// requests, so a test can write objects over the local plain-HTTP endpoint.
    async fn without_bucket_policy(&self, bucket: &str) {
        self.s3
            .delete_bucket_policy()
            .bucket(bucket)
            .send()
            .await
            .unwrap();
    }

    /// Everything `ensure_bucket` controls, as one comparable value.
    async fn bucket_snapshot(&self, bucket: &str) -> String {
        let ownership = self
            .s3
            .get_bucket_ownership_controls()
            .bucket(bucket)
            .send()
            .await
            .ok()
            .and_then(|o| o.ownership_controls);
        let encryption = self
            .s3
            .get_bucket_encryption()
            .bucket(bucket)
            .send()
            .await
            .ok()
            .and_then(|o| o.server_side_encryption_configuration);
        format!(
            "{:?}|{ownership:?}|{encryption:?}|{:?}|{:?}|{:?}",
            self.public_access_block(bucket).await,
            self.versioning(bucket).await,
            self.bucket_policy(bucket).await,
            self.bucket_tags(bucket).await,
        )
    }

    /// Checks every control of a tenant bucket, as the attestation would.
    async fn assert_bucket_locked_down(
        &self,
        bucket: &str,
        key_arn: &str,
        versioning: Option<BucketVersioningStatus>,
    ) {
        assert_eq!(
            self.public_access_block(bucket).await,
            Some([Some(true); 4]),
            "Block Public Access fully on"
        );

        let controls = self
            .s3
            .get_bucket_ownership_controls()
            .bucket(bucket)
            .send()
            .await
            .unwrap()
            .ownership_controls
            .unwrap();
        let rules: Vec<_> = controls
            .rules()
            .iter()
            .map(|r| r.object_ownership().clone())
            .collect();
        assert_eq!(rules, vec![ObjectOwnership::BucketOwnerEnforced]);

        let sse = self
            .s3
            .get_bucket_encryption()
            .bucket(bucket)
            .send()
            .await
            .unwrap()
            .server_side_encryption_configuration
            .unwrap();
        let [rule] = sse.rules() else {
            panic!("one encryption rule expected: {sse:?}")
        };
        let default = rule.apply_server_side_encryption_by_default().unwrap();
        assert_eq!(*default.sse_algorithm(), ServerSideEncryption::AwsKms);
        assert_eq!(default.kms_master_key_id(), Some(key_arn));
        assert_eq!(rule.bucket_key_enabled(), Some(true));

        assert_eq!(self.versioning(bucket).await, versioning);

        let policy = self.bucket_policy(bucket).await.expect("a bucket policy");
        let statements = policy["Statement"].as_array().unwrap();
        assert!(
            statements.iter().any(|s| s["Effect"] == "Deny"
                && s["Principal"] == "*"
                && s["Action"] == "s3:*"
                && s["Resource"]
                    == serde_json::json!([
                        format!("arn:aws:s3:::{bucket}"),
                        format!("arn:aws:s3:::{bucket}/*")
                    ])
                && s["Condition"]["Bool"]["aws:SecureTransport"] == "false"),
            "the policy denies requests without TLS on the bucket and its objects: {policy}"
        );
    }

    // ---- Secrets Manager checks

    async fn secret_value(&self, name: &str) -> DatabaseCredentials {
        let out = self
            .sm
            .get_secret_value()
            .secret_id(name)
            .send()
            .await
            .unwrap();
        serde_json::from_str(out.secret_string().unwrap()).expect("the secret holds credentials")
    }

    async fn secret_tags(&self, name: &str) -> BTreeMap<String, String> {
        let out = self
            .sm
            .describe_secret()
            .secret_id(name)
            .send()
            .await
            .unwrap();
        out.tags()
            .iter()
            .map(|t| {
                (
                    t.key().unwrap().to_string(),
                    t.value().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    async fn secret_kms_key(&self, name: &str) -> Option<String> {
        let out = self
            .sm
            .describe_secret()
            .secret_id(name)
            .send()
            .await
            .unwrap();
        out.kms_key_id
    }

    async fn secret_exists(&self, name: &str) -> bool {
        match self.sm.describe_secret().secret_id(name).send().await {
            Ok(_) => true,
            Err(e) if e.code() == Some("ResourceNotFoundException") => false,
            Err(e) => panic!("DescribeSecret: {e:?}"),
        }
    }
}

fn new_tenant(prefix: &str) -> (TenantRef, TenantNames) {
    let name = unique_name(prefix);
    let names = TenantNames::new(&name, &bucket_prefix()).unwrap();
    let tenant = TenantRef {
        name,
        uid: unique_uid(),
        display_name: Some("Acme Corp".to_string()),
    };
    (tenant, names)
}

/// The same tenant name under a new Tenant object, as after a `Retain`
/// deletion and a re-creation.
fn successor(tenant: &TenantRef) -> TenantRef {
    TenantRef {
        uid: unique_uid(),
        ..tenant.clone()
    }
}

fn other_tenant() -> TenantRef {
    TenantRef {
        name: unique_name("someone"),
        uid: unique_uid(),
        display_name: None,
    }
}

fn credentials(password: &str, host: &str) -> DatabaseCredentials {
    DatabaseCredentials {
        username: "t_acme".into(),
        password: SecretString::from(password),
        host: host.into(),
        port: 5432,
        database: "tenantry".into(),
        schema: "t_acme".into(),
        engine: "postgres".into(),
    }
}

fn assert_conflict<T: std::fmt::Debug>(result: Result<T, BackendError>, resource: &str) {
    match result {
        Err(e @ BackendError::Conflict { .. }) => {
            assert!(
                e.to_string().contains(resource),
                "the error names {resource}: {e}"
            )
        }
        other => panic!("expected a conflict about {resource}, got {other:?}"),
    }
}

fn assert_owned_by(tags: &BTreeMap<String, String>, tenant: &TenantRef) {
    assert_eq!(tags.get(tags::TENANT_UID), Some(&tenant.uid), "{tags:?}");
    assert_eq!(tags.get(tags::TENANT), Some(&tenant.name), "{tags:?}");
    assert_eq!(
        tags.get(tags::MANAGED_BY).map(String::as_str),
        Some(tags::MANAGED_BY_VALUE),
        "{tags:?}"
    );
    assert_eq!(
        tags.get(DISPLAY_NAME_TAG),
        tenant.display_name.as_ref(),
        "{tags:?}"
    );
    assert!(!tags.contains_key(tags::RELEASED), "{tags:?}");
}

async fn ensure_key(aws: &Aws, tenant: &TenantRef, names: &TenantNames) -> KeyInfo {
    aws.keys
        .ensure_key(&unrecorded(tenant), &names.key_alias, false)
        .await
        .unwrap()
}

// ======================================================================= KMS

#[tokio::test]
async fn a_new_tenant_gets_an_enabled_rotating_symmetric_key_behind_its_alias() {
    let aws = Aws::new().await;
    let (tenant, names) = new_tenant("kms-new");

    let key = ensure_key(&aws, &tenant, &names).await;

    // The key policy gets tenantry's deny of every other principal.
    assert_eq!(
        aws.recorder.writes(),
        [
            "CreateKey",
            "CreateAlias",
            "EnableKeyRotation",
            "PutKeyPolicy"
        ]
    );
    let meta = aws
        .kms
        .describe_key()
        .key_id(&names.key_alias)
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap();
    assert_eq!(meta.key_id(), key.key_id);
    assert_eq!(meta.arn(), Some(key.arn.as_str()));
    assert!(meta.enabled());
    assert_eq!(meta.key_state(), Some(&KeyState::Enabled));
    assert_eq!(meta.key_spec(), Some(&KeySpec::SymmetricDefault));
    assert_eq!(meta.key_usage(), Some(&KeyUsageType::EncryptDecrypt));
    let rotation = aws
        .kms
        .get_key_rotation_status()
        .key_id(&key.key_id)
        .send()
        .await
        .unwrap();
    assert!(rotation.key_rotation_enabled());
    assert_eq!(
        aws.alias_target(&names.key_alias).await,
        Some(key.key_id.clone())
    );
    assert_owned_by(&aws.key_tags(&key.key_id).await, &tenant);
}

#[tokio::test]
async fn ensuring_a_key_twice_returns_the_same_key_and_writes_nothing() {
    let aws = Aws::new().await;
    let (tenant, names) = new_tenant("kms-twice");
    let first = ensure_key(&aws, &tenant, &names).await;
    aws.recorder.take();

    let second = ensure_key(&aws, &tenant, &names).await;

    assert_eq!(first, second);
    assert_eq!(aws.recorder.writes(), Vec::<String>::new());
    assert_eq!(aws.keys_tagged_with(&tenant.uid).await, vec![first.key_id]);
}

#[tokio::test]
async fn an_alias_pointing_at_another_tenants_key_is_a_conflict_and_the_key_is_left_alone() {
    let aws = Aws::new().await;
    let (tenant, names) = new_tenant("kms-foreign");
    let owner = other_tenant();
    let foreign = aws.foreign_key(&owner).await;
    aws.kms
        .create_alias()
        .alias_name(&names.key_alias)
        .target_key_id(&foreign)
        .send()
        .await
        .unwrap();
    let tags_before = aws.key_tags(&foreign).await;

    assert_conflict(
        aws.keys
            .ensure_key(&unrecorded(&tenant), &names.key_alias, false)
            .await,
        &names.key_alias,
    );
    assert_conflict(
        aws.keys
            .ensure_key(&unrecorded(&tenant), &names.key_alias, true)
            .await,
        &names.key_alias,
    );
    aws.keys
        .remove_key(&unrecorded(&tenant), &names.key_alias)
        .await
        .unwrap();
    aws.keys
        .release_key(&unrecorded(&tenant), &names.key_alias)
        .await
        .unwrap();

    assert_eq!(aws.key_state(&foreign).await, KeyState::Enabled);
    assert_eq!(
        aws.alias_target(&names.key_alias).await,
        Some(foreign.clone())
    );
    assert_eq!(aws.key_tags(&foreign).await, tags_before);
}

#[tokio::test]
async fn removing_a_key_deletes_its_alias_and_schedules_the_key_for_deletion() {
    let aws = Aws::new().await;
    let (tenant, names) = new_tenant("kms-remove");
    let key = ensure_key(&aws, &tenant, &names).await;

    aws.keys
        .remove_key(&unrecorded(&tenant), &names.key_alias)
        .await
        .unwrap();

    assert_eq!(aws.key_state(&key.key_id).await, KeyState::PendingDeletion);
    assert_eq!(aws.alias_target(&names.key_alias).await, None);
    // Removing what is already gone is done, not an error.
    aws.recorder.take();
    aws.keys
        .remove_key(&unrecorded(&tenant), &names.key_alias)
        .await
        .unwrap();
    assert_eq!(aws.recorder.writes(), Vec::<String>::new());
}

#[tokio::test]
async fn ensuring_a_key_pending_deletion_cancels_the_deletion_and_enables_it() {
    let aws = Aws::new().await;
    let (tenant, names) = new_tenant("kms-revive");
    let key = ensure_key(&aws, &tenant, &names).await;
    aws.kms
        .schedule_key_deletion()
        .key_id(&key.key_id)
        .pending_window_in_days(7)
        .send()
        .await
        .unwrap();
    assert_eq!(aws.key_state(&key.key_id).await, KeyState::PendingDeletion);

    assert_eq!(ensure_key(&aws, &tenant, &names).await, key);

    assert_eq!(aws.key_state(&key.key_id).await, KeyState::Enabled);
    let rotation = aws
        .kms
        .get_key_rotation_status()
        .key_id(&key.key_id)
        .send()
        .await
        .unwrap();
    assert!(rotation.key_rotation_enabled());
}

#[tokio::test]
async fn a_disabled_key_without_rotation_is_enabled_and_rotates_again() {
    let aws = Aws::new().await;
    let (tenant, names) = new_tenant("kms-drift");
    let key = ensure_key(&aws, &tenant, &names).await;
    aws.kms
        .disable_key_rotation()
        .key_id(&key.key_id)
        .send()
        .await
        .unwrap();
    aws.kms
        .disable_key()
        .key_id(&key.key_id)
        .send()
        .await
        .unwrap();

    ensure_key(&aws, &tenant, &names).await;

    assert_eq!(aws.key_state(&key.key_id).await, KeyState::Enabled);
    let rotation = aws
        .kms
        .get_key_rotation_status()
        .key_id(&key.key_id)
        .send()
        .await
        .unwrap();
    assert!(rotation.key_rotation_enabled());
}

#[tokio::test]
async fn a_released_key_is_adopted_by_a_new_tenant_of_the_same_name() {
    let aws = Aws::new().await;
    let (tenant, names) = new_tenant("kms-adopt");
    let key = ensure_key(&aws, &tenant, &names).await;

    aws.keys
        .release_key(&unrecorded(&tenant), &names.key_alias)
        .await
        .unwrap();
    assert_eq!(
        aws.key_tags(&key.key_id)
            .await
            .get(tags::RELEASED)
            .map(String::as_str),
        Some("true")
    );
    let next = successor(&tenant);
    let adopted = aws
        .keys
        .ensure_key(&unrecorded(&next), &names.key_alias, false)
        .await
        .unwrap();

    assert_eq!(adopted, key);
    assert_owned_by(&aws.key_tags(&key.key_id).await, &next);
    assert_eq!(aws.key_state(&key.key_id).await, KeyState::Enabled);
}

#[tokio::test]
async fn a_key_of_a_previous_tenant_of_the_same_name_that_was_not_released_is_a_conflict() {
    let aws = Aws::new().await;
    let (tenant, names) = new_tenant("kms-notrel");
    let key = ensure_key(&aws, &tenant, &names).await;

    let next = successor(&tenant);
    assert_conflict(
        aws.keys
            .ensure_key(&unrecorded(&next), &names.key_alias, false)
            .await,
        &names.key_alias,
    );
    assert_owned_by(&aws.key_tags(&key.key_id).await, &tenant);
}

#[tokio::test]
async fn an_interrupted_key_creation_is_found_by_its_tag_and_not_duplicated() {
    let aws = Aws::new().await;
    let (tenant, names) = new_tenant("kms-crash");
    // What a process that died between CreateKey and CreateAlias leaves.
    let orphan = aws.orphan_key(&tenant).await;

    let key = aws
        .keys
        .ensure_key(&unrecorded(&tenant), &names.key_alias, true)
        .await
        .unwrap();

    assert_eq!(key.key_id, orphan);
    assert_eq!(
        aws.alias_target(&names.key_alias).await,
        Some(orphan.clone())
    );
    assert_eq!(aws.keys_tagged_with(&tenant.uid).await, vec![orphan]);
    let rotation = aws
        .kms
        .get_key_rotation_status()
        .key_id(&key.key_id)
        .send()
        .await
        .unwrap();
    assert!(rotation.key_rotation_enabled());
}

#[tokio::test]
async fn removing_a_key_whose_alias_was_never_made_still_schedules_its_deletion() {
    for (interrupted, failed) in [(true, false), (false, true)] {
        let aws = Aws::new().await;
        let (tenant, names) = new_tenant("kms-orphan");
        let orphan = aws.orphan_key(&tenant).await;

        // As the engine removes a step a killed process was ensuring, or
        // the step whose failure started the rollback.
        aws.keys
            .remove_key(
                &unrecorded(&tenant).removing(Removal {
                    interrupted,
                    failed,
                }),
                &names.key_alias,
            )
            .await
            .unwrap();

        assert_eq!(aws.key_state(&orphan).await, KeyState::PendingDeletion);
    }
}

/// Issue 15, path 2: deletion by tag. A neighbour in the account who may
/// tag keys puts a tenant's uid (and name) tags on a key of its own. Neither
/// the adoption after an interrupted creation nor the removal of a failed
/// or interrupted KMS step takes it: it lacks tenantry's description.
#[tokio::test]
async fn a_key_a_neighbour_tagged_with_a_tenants_uid_is_neither_adopted_nor_deleted() {
    let aws = Aws::new().await;
    let (tenant, names) = new_tenant("kms-plant");
    let planted = aws.foreign_key(&tenant).await;

    for (interrupted, failed) in [(true, false), (false, true)] {
        aws.keys
            .remove_key(
                &unrecorded(&tenant).removing(Removal {
                    interrupted,
                    failed,
                }),
                &names.key_alias,
            )
            .await
            .unwrap();
        assert_eq!(
            aws.key_state(&planted).await,
            KeyState::Enabled,
            "the neighbour's key was scheduled for deletion"
        );
    }
    let key = aws
        .keys
        .ensure_key(&unrecorded(&tenant), &names.key_alias, true)
        .await
        .unwrap();
    assert_ne!(key.key_id, planted, "the neighbour's key was adopted");
    assert_eq!(aws.key_state(&planted).await, KeyState::Enabled);
    aws.keys
        .remove_key(&unrecorded(&tenant), &names.key_alias)
        .await
        .unwrap();
    assert_eq!(aws.key_state(&planted).await, KeyState::Enabled);
}

#[tokio::test]
async fn a_second_scan_reads_the_tags_only_of_keys_it_has_not_read_before() {
    let aws = Aws::new().await;
    // Enough keys of other tenants that a full second scan would show.
    for _ in 0..30 {
        aws.foreign_key(&new_tenant("kms-scan-other").0).await;
    }
    let (first, first_names) = new_tenant("kms-scan-a");
    let first_orphan = aws.orphan_key(&first).await;
    aws.recorder.take();
    aws.keys
        .remove_key(
            &unrecorded(&first).removing(Removal {
                interrupted: true,
                failed: false,
            }),
            &first_names.key_alias,
        )
        .await
        .unwrap();
    let first_reads = tag_reads(&aws.recorder.take());

    let (second, second_names) = new_tenant("kms-scan-b");
    let second_orphan = aws.orphan_key(&second).await;
    aws.keys
        .remove_key(
            &unrecorded(&second).removing(Removal {
                interrupted: true,
                failed: false,
            }),
            &second_names.key_alias,
        )
        .await
        .unwrap();
    let second_reads = tag_reads(&aws.recorder.take());

    assert_eq!(
        aws.key_state(&first_orphan).await,
        KeyState::PendingDeletion
    );
    assert_eq!(
        aws.key_state(&second_orphan).await,
        KeyState::PendingDeletion
    );
    assert!(
        first_reads > 30,
        "the first scan read {first_reads} keys' tags"
    );
    // The new key, any made meanwhile by other tests, and none read before.
    assert!(
        second_reads < first_reads / 2,
        "the second scan read {second_reads} keys' tags, the first {first_reads}"
    );
}

#[tokio::test]
async fn a_key_untagged_since_a_scan_read_it_is_not_taken_for_the_tenants() {
    let aws = Aws::new().await;
    let (tenant, names) = new_tenant("kms-retag");
    let key = aws.orphan_key(&tenant).await;
    // A scan that learns the key is the tenant's (it finds and adopts it).
    let adopted = aws
        .keys
        .ensure_key(&unrecorded(&tenant), &names.key_alias, true)
        .await
        .unwrap();
    assert_eq!(adopted.key_id, key);
    // Someone takes the key out of tenantry's hands, alias and tags.
    aws.kms
        .delete_alias()
        .alias_name(&names.key_alias)
        .send()
        .await
        .unwrap();
    aws.kms
        .untag_resource()
        .key_id(&key)
        .tag_keys(tags::TENANT_UID)
        .send()
        .await
        .unwrap();

    aws.keys
        .remove_key(
            &unrecorded(&tenant).removing(Removal {
                interrupted: true,
                failed: false,
            }),
            &names.key_alias,
        )
        .await
        .unwrap();

    assert_eq!(aws.key_state(&key).await, KeyState::Enabled);
}

/// How many ListResourceTags calls were recorded.
fn tag_reads(calls: &[String]) -> usize {
    calls
        .iter()
        .filter(|c| c.contains("ListResourceTags"))
        .count()
}

#[tokio::test]
async fn removing_a_finished_tenant_without_an_alias_does_not_read_every_key() {
    let aws = Aws::new().await;
    let (tenant, names) = new_tenant("kms-noscan");
    aws.recorder.take();

    // Nothing says a creation was left unfinished: the alias is the key.
    aws.keys
        .remove_key(&unrecorded(&tenant), &names.key_alias)
        .await
        .unwrap();

    let calls = aws.recorder.take();
    assert!(
        !calls
            .iter()
            .any(|c| c.contains("ListKeys") || c.contains("ListResourceTags")),
        "{calls:?}"
    );
}

// ======================================================================== S3

#[tokio::test]
async fn a_new_tenant_gets_a_private_encrypted_versioned_bucket_that_requires_tls() {
    let aws = Aws::new().await;
    let (tenant, names) = new_tenant("s3-new");
    let key = ensure_key(&aws, &tenant, &names).await;

    aws.buckets
        .ensure_bucket(&unrecorded(&tenant), &names.bucket, &key.arn, true, false)
        .await
        .unwrap();

    aws.assert_bucket_locked_down(
        &names.bucket,
        &key.arn,
        Some(BucketVersioningStatus::Enabled),
    )
    .await;
    assert_owned_by(&aws.bucket_tags(&names.bucket).await, &tenant);
}

#[tokio::test]
async fn ensuring_a_bucket_twice_changes_nothing_and_writes_nothing() {
    let aws = Aws::new().await;
    let (tenant, names) = new_tenant("s3-twice");
    let key = ensure_key(&aws, &tenant, &names).await;
    aws.buckets
        .ensure_bucket(&unrecorded(&tenant), &names.bucket, &key.arn, true, false)
        .await
        .unwrap();
    let before = aws.bucket_snapshot(&names.bucket).await;
    aws.recorder.take();

    aws.buckets
        .ensure_bucket(&unrecorded(&tenant), &names.bucket, &key.arn, true, false)
        .await
        .unwrap();

    assert_eq!(aws.recorder.writes(), Vec::<String>::new());
    assert_eq!(aws.bucket_snapshot(&names.bucket).await, before);
}

#[tokio::test]
async fn a_bucket_whose_controls_were_loosened_is_locked_down_again() {
    let aws = Aws::new().await;
    let (tenant, names) = new_tenant("s3-drift");
    let key = ensure_key(&aws, &tenant, &names).await;
    let bucket = &names.bucket;
    aws.buckets
        .ensure_bucket(&unrecorded(&tenant), bucket, &key.arn, true, false)
        .await
        .unwrap();

    aws.s3
        .delete_public_access_block()
        .bucket(bucket)
        .send()
        .await
        .unwrap();
    aws.s3
        .delete_bucket_policy()
        .bucket(bucket)
        .send()
        .await
        .unwrap();
    aws.s3
        .delete_bucket_ownership_controls()
        .bucket(bucket)
        .send()
        .await
        .unwrap();
    aws.s3
        .put_bucket_encryption()
        .bucket(bucket)
        .server_side_encryption_configuration(
            aws_sdk_s3::types::ServerSideEncryptionConfiguration::builder()
                .rules(
                    aws_sdk_s3::types::ServerSideEncryptionRule::builder()
                        .apply_server_side_encryption_by_default(
                            aws_sdk_s3::types::ServerSideEncryptionByDefault::builder()
                                .sse_algorithm(ServerSideEncryption::Aes256)
                                .build()
                                .unwrap(),
                        )
                        .build(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    // A user's own tag on the tenant's bucket is theirs to keep.
    let mut user_tags = aws.bucket_tags(bucket).await;
    user_tags.insert("cost-centre".into(), "42".into());
    user_tags.remove(DISPLAY_NAME_TAG);
    put_bucket_tags(&aws, bucket, &user_tags).await;

    aws.buckets
        .ensure_bucket(&unrecorded(&tenant), bucket, &key.arn, true, false)
        .await
        .unwrap();

    aws.assert_bucket_locked_down(bucket, &key.arn, Some(BucketVersioningStatus::Enabled))
        .await;
    let tags = aws.bucket_tags(bucket).await;
    assert_owned_by(&tags, &tenant);
    assert_eq!(tags.get("cost-centre").map(String::as_str), Some("42"));
}

#[tokio::test]
async fn versioning_off_leaves_a_new_bucket_unversioned_and_suspends_a_versioned_one() {
    let aws = Aws::new().await;
    let (tenant, names) = new_tenant("s3-versions");
    let key = ensure_key(&aws, &tenant, &names).await;
    let bucket = &names.bucket;

    aws.buckets
        .ensure_bucket(&unrecorded(&tenant), bucket, &key.arn, false, false)
        .await
        .unwrap();
    aws.assert_bucket_locked_down(bucket, &key.arn, None).await;

    aws.buckets
        .ensure_bucket(&unrecorded(&tenant), bucket, &key.arn, true, false)
        .await
        .unwrap();
    assert_eq!(
        aws.versioning(bucket).await,
        Some(BucketVersioningStatus::Enabled)
    );

    aws.buckets
        .ensure_bucket(&unrecorded(&tenant), bucket, &key.arn, false, false)
        .await
        .unwrap();
    assert_eq!(
        aws.versioning(bucket).await,
        Some(BucketVersioningStatus::Suspended)
    );
}

#[tokio::test]
async fn a_bucket_someone_else_made_with_the_tenants_name_is_a_conflict_and_stays_untouched() {
    let aws = Aws::new().await;
    let (tenant, names) = new_tenant("s3-foreign");
    let key = ensure_key(&aws, &tenant, &names).await;
    let bucket = &names.bucket;
    aws.s3.create_bucket().bucket(bucket).send().await.unwrap();
    aws.s3
        .put_object()
        .bucket(bucket)
        .key("their-data")
        .body(ByteStream::from_static(b"keep me"))
        .send()
        .await
        .unwrap();

    assert_conflict(
        aws.buckets
            .ensure_bucket(&unrecorded(&tenant), bucket, &key.arn, true, false)
            .await,
        bucket,
    );
    aws.buckets
        .remove_bucket(&unrecorded(&tenant), bucket)
        .await
        .unwrap();
    aws.buckets
        .release_bucket(&unrecorded(&tenant), bucket)
        .await
        .unwrap();

    assert!(aws.bucket_exists(bucket).await);
    assert_eq!(aws.bucket_policy(bucket).await, None, "no policy was added");
    assert_eq!(
        aws.public_access_block(bucket).await,
        None,
        "no Block Public Access was added"
    );
    assert_eq!(aws.versioning(bucket).await, None);
    assert_eq!(aws.bucket_tags(bucket).await, BTreeMap::new());
    let object = aws
        .s3
        .get_object()
        .bucket(bucket)
        .key("their-data")
        .send()
        .await
        .unwrap();
    assert_eq!(
        object.body.collect().await.unwrap().into_bytes().as_ref(),
        b"keep me"
    );
}

#[tokio::test]
async fn a_bucket_of_another_tenant_is_a_conflict_and_stays_untouched() {
    let aws = Aws::new().await;
    let (tenant, names) = new_tenant("s3-other");
    let key = ensure_key(&aws, &tenant, &names).await;
    let owner = other_tenant();
    let bucket = &names.bucket;
    aws.s3.create_bucket().bucket(bucket).send().await.unwrap();
    put_bucket_tags(&aws, bucket, &owner.ownership_tags()).await;

    assert_conflict(
        aws.buckets
            .ensure_bucket(&unrecorded(&tenant), bucket, &key.arn, true, true)
            .await,
        bucket,
    );
    aws.buckets
        .remove_bucket(&unrecorded(&tenant), bucket)
        .await
        .unwrap();

    assert!(aws.bucket_exists(bucket).await);
    assert_eq!(aws.bucket_tags(bucket).await, owner.ownership_tags());
    assert_eq!(aws.bucket_policy(bucket).await, None);
}

#[tokio::test]
async fn an_untagged_bucket_left_by_an_interrupted_creation_is_adopted() {
    let aws = Aws::new().await;
    let (tenant, names) = new_tenant("s3-crash");
    let key = ensure_key(&aws, &tenant, &names).await;
    // What a process that died between CreateBucket and PutBucketTagging leaves.
    aws.s3
        .create_bucket()
        .bucket(&names.bucket)
        .send()
        .await
        .unwrap();

    aws.buckets
        .ensure_bucket(&unrecorded(&tenant), &names.bucket, &key.arn, true, true)
        .await
        .unwrap();

    assert_owned_by(&aws.bucket_tags(&names.bucket).await, &tenant);
    aws.assert_bucket_locked_down(
        &names.bucket,
        &key.arn,
        Some(BucketVersioningStatus::Enabled),
    )
    .await;
}

#[tokio::test]
async fn a_released_bucket_is_adopted_by_a_new_tenant_of_the_same_name() {
    let aws = Aws::new().await;
    let (tenant, names) = new_tenant("s3-adopt");
    let key = ensure_key(&aws, &tenant, &names).await;
    let bucket = &names.bucket;
    aws.buckets
        .ensure_bucket(&unrecorded(&tenant), bucket, &key.arn, true, false)
        .await
        .unwrap();

    aws.buckets
        .release_bucket(&unrecorded(&tenant), bucket)
        .await
        .unwrap();
    assert_eq!(
        aws.bucket_tags(bucket)
            .await
            .get(tags::RELEASED)
            .map(String::as_str),
        Some("true")
    );
    let next = successor(&tenant);
    aws.buckets
        .ensure_bucket(&unrecorded(&next), bucket, &key.arn, true, false)
        .await
        .unwrap();

    assert_owned_by(&aws.bucket_tags(bucket).await, &next);
    // The old owner may no longer remove it.
    aws.buckets
        .remove_bucket(&unrecorded(&tenant), bucket)
        .await
        .unwrap();
    assert!(aws.bucket_exists(bucket).await);
}

#[tokio::test]
async fn removing_a_bucket_deletes_every_object_version_and_delete_marker() {
    let aws = Aws::new().await;
    let (tenant, names) = new_tenant("s3-remove");
    let key = ensure_key(&aws, &tenant, &names).await;
    let bucket = &names.bucket;
    aws.buckets
        .ensure_bucket(&unrecorded(&tenant), bucket, &key.arn, true, false)
        .await
        .unwrap();
    aws.without_bucket_policy(bucket).await;
    for (object, body) in [
        ("a", "1"),
        ("a", "2"),
        ("b", "1"),
        ("dir/c", "1"),
        ("dir/c", "2"),
    ] {
        put(&aws, bucket, object, body).await;
    }
    aws.s3
        .delete_object()
        .bucket(bucket)
        .key("a")
        .send()
        .await
        .unwrap();
    aws.s3
        .delete_object()
        .bucket(bucket)
        .key("dir/c")
        .send()
        .await
        .unwrap();
    let listed = aws
        .s3
        .list_object_versions()
        .bucket(bucket)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.versions().len(), 5);
    assert_eq!(listed.delete_markers().len(), 2);
    aws.buckets
        .ensure_bucket(&unrecorded(&tenant), bucket, &key.arn, true, false)
        .await
        .unwrap();
    assert!(aws.bucket_policy(bucket).await.is_some());

    aws.buckets
        .remove_bucket(&unrecorded(&tenant), bucket)
        .await
        .unwrap();

    assert!(!aws.bucket_exists(bucket).await);
    aws.buckets
        .remove_bucket(&unrecorded(&tenant), bucket)
        .await
        .unwrap();
}

#[tokio::test]
async fn removing_a_bucket_with_more_versions_than_one_listing_page_deletes_them_all() {
    let aws = Aws::new().await;
    let (tenant, names) = new_tenant("s3-many");
    let key = ensure_key(&aws, &tenant, &names).await;
    let bucket = &names.bucket;
    aws.buckets
        .ensure_bucket(&unrecorded(&tenant), bucket, &key.arn, true, false)
        .await
        .unwrap();
    aws.without_bucket_policy(bucket).await;
    futures::stream::iter(0..1100)
        .for_each_concurrent(16, |i| {
            let aws = &aws;
            async move { put(aws, bucket, &format!("k{}", i % 700), "x").await }
        })
        .await;

    aws.buckets
        .remove_bucket(&unrecorded(&tenant), bucket)
        .await
        .unwrap();

    assert!(!aws.bucket_exists(bucket).await);
}

#[tokio::test]
async fn the_bucket_refuses_object_requests_without_tls() {
    let aws = Aws::new().await;
    let (tenant, names) = new_tenant("s3-tls");
    let key = ensure_key(&aws, &tenant, &names).await;
    let bucket = &names.bucket;
    aws.buckets
        .ensure_bucket(&unrecorded(&tenant), bucket, &key.arn, true, false)
        .await
        .unwrap();

    // The local endpoint is plain HTTP, and moto evaluates bucket policies
    // for object requests: the deny-non-TLS statement is seen to hold.
    let put = aws
        .s3
        .put_object()
        .bucket(bucket)
        .key("x")
        .body(ByteStream::from_static(b"x"))
        .send()
        .await;
    let status = put
        .err()
        .and_then(|e| e.raw_response().map(|r| r.status().as_u16()));
    assert_eq!(status, Some(403));
}

async fn put(aws: &Aws, bucket: &str, key: &str, body: &'static str) {
    aws.s3
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from_static(body.as_bytes()))
        .send()
        .await
        .unwrap();
}

async fn put_bucket_tags(aws: &Aws, bucket: &str, tags: &BTreeMap<String, String>) {
    let tag_set = tags
        .iter()
        .map(|(k, v)| {
            aws_sdk_s3::types::Tag::builder()
                .key(k)
                .value(v)
                .build()
                .unwrap()
        })
        .collect();
    aws.s3
        .put_bucket_tagging()
        .bucket(bucket)
        .tagging(
            aws_sdk_s3::types::Tagging::builder()
                .set_tag_set(Some(tag_set))
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
}

// =========================================================== Secrets Manager

#[tokio::test]
async fn a_new_tenant_gets_its_credentials_in_a_secret_encrypted_with_its_key() {
    let aws = Aws::new().await;
    let (tenant, names) = new_tenant("sm-new");
    let key = ensure_key(&aws, &tenant, &names).await;
    let initial = credentials("first-password", "db");

    let (arn, stored) = aws
        .secrets
        .ensure_secret(&unrecorded(&tenant), &names.secret_name, &key.arn, &initial)
        .await
        .unwrap();

    assert_eq!(stored, initial);
    let described = aws
        .sm
        .describe_secret()
        .secret_id(&names.secret_name)
        .send()
        .await
        .unwrap();
    assert_eq!(described.arn(), Some(arn.as_str()));
    assert_eq!(
        aws.secret_kms_key(&names.secret_name).await,
        Some(key.arn.clone())
    );
    assert_eq!(aws.secret_value(&names.secret_name).await, initial);
    assert_owned_by(&aws.secret_tags(&names.secret_name).await, &tenant);
}

#[tokio::test]
async fn ensuring_a_secret_again_keeps_the_stored_password_and_writes_nothing() {
    let aws = Aws::new().await;
    let (tenant, names) = new_tenant("sm-twice");
    let key = ensure_key(&aws, &tenant, &names).await;
    let first = credentials("first-password", "db");
    let (arn, _) = aws
        .secrets
        .ensure_secret(&unrecorded(&tenant), &names.secret_name, &key.arn, &first)
        .await
        .unwrap();
    aws.recorder.take();

    let (again, stored) = aws
        .secrets
        .ensure_secret(
            &unrecorded(&tenant),
            &names.secret_name,
            &key.arn,
            &credentials("another-password", "db"),
        )
        .await
        .unwrap();

    assert_eq!(aws.recorder.writes(), Vec::<String>::new());
    assert_eq!(again, arn);
    assert_eq!(stored.password.expose_secret(), "first-password");
    assert_eq!(aws.secret_value(&names.secret_name).await, first);
}

#[tokio::test]
async fn moved_connection_details_are_rewritten_and_the_password_kept() {
    let aws = Aws::new().await;
    let (tenant, names) = new_tenant("sm-moved");
    let key = ensure_key(&aws, &tenant, &names).await;
    aws.secrets
        .ensure_secret(
            &unrecorded(&tenant),
            &names.secret_name,
            &key.arn,
            &credentials("first-password", "db1"),
        )
        .await
        .unwrap();

    let (_, stored) = aws
        .secrets
        .ensure_secret(
            &unrecorded(&tenant),
            &names.secret_name,
            &key.arn,
            &credentials("another-password", "db2"),
        )
        .await
        .unwrap();

    let expected = credentials("first-password", "db2");
    assert_eq!(stored, expected);
    assert_eq!(aws.secret_value(&names.secret_name).await, expected);
}

#[tokio::test]
async fn a_secret_of_ours_under_another_key_is_re_encrypted_with_the_tenants_key() {
    let aws = Aws::new().await;
    let (tenant, names) = new_tenant("sm-rekey");
    let key = ensure_key(&aws, &tenant, &names).await;
    let first = credentials("first-password", "db");
    let mut create = aws
        .sm
        .create_secret()
        .name(&names.secret_name)
        .secret_string(serde_json::to_string(&first).unwrap());
    for (k, v) in tenant.ownership_tags() {
        create = create.tags(
            aws_sdk_secretsmanager::types::Tag::builder()
                .key(k)
                .value(v)
                .build(),
        );
    }
    create.send().await.unwrap();

    let (_, stored) = aws
        .secrets
        .ensure_secret(
            &unrecorded(&tenant),
            &names.secret_name,
            &key.arn,
            &credentials("another-password", "db"),
        )
        .await
        .unwrap();

    assert_eq!(stored, first);
    assert_eq!(
        aws.secret_kms_key(&names.secret_name).await,
        Some(key.arn.clone())
    );
    assert_eq!(aws.secret_value(&names.secret_name).await, first);
}

#[tokio::test]
async fn a_secret_with_the_tenants_name_and_another_uid_is_a_conflict_and_left_alone() {
    let aws = Aws::new().await;
    let (tenant, names) = new_tenant("sm-foreign");
    let key = ensure_key(&aws, &tenant, &names).await;
    let previous = successor(&tenant);
    let theirs = credentials("their-password", "db");
    let mut create = aws
        .sm
        .create_secret()
        .name(&names.secret_name)
        .secret_string(serde_json::to_string(&theirs).unwrap());
    for (k, v) in previous.ownership_tags() {
        create = create.tags(
            aws_sdk_secretsmanager::types::Tag::builder()
                .key(k)
                .value(v)
                .build(),
        );
    }
    create.send().await.unwrap();

    assert_conflict(
        aws.secrets
            .ensure_secret(
                &unrecorded(&tenant),
                &names.secret_name,
                &key.arn,
                &credentials("mine", "db"),
            )
            .await,
        &names.secret_name,
    );
    aws.secrets
        .remove_secret(&unrecorded(&tenant), &names.secret_name)
        .await
        .unwrap();
    aws.secrets
        .release_secret(&unrecorded(&tenant), &names.secret_name)
        .await
        .unwrap();

    assert!(aws.secret_exists(&names.secret_name).await);
    assert_eq!(aws.secret_value(&names.secret_name).await, theirs);
    assert_eq!(
        aws.secret_tags(&names.secret_name).await,
        previous.ownership_tags()
    );
    assert_eq!(aws.secret_kms_key(&names.secret_name).await, None);
}

#[tokio::test]
async fn a_released_secret_is_adopted_with_a_new_password_by_a_new_tenant_of_the_same_name() {
    let aws = Aws::new().await;
    let (tenant, names) = new_tenant("sm-adopt");
    let key = ensure_key(&aws, &tenant, &names).await;
    aws.secrets
        .ensure_secret(
            &unrecorded(&tenant),
            &names.secret_name,
            &key.arn,
            &credentials("first-password", "db"),
        )
        .await
        .unwrap();

    aws.secrets
        .release_secret(&unrecorded(&tenant), &names.secret_name)
        .await
        .unwrap();
    assert_eq!(
        aws.secret_tags(&names.secret_name)
            .await
            .get(tags::RELEASED)
            .map(String::as_str),
        Some("true")
    );
    let next = successor(&tenant);
    let (_, stored) = aws
        .secrets
        .ensure_secret(
            &unrecorded(&next),
            &names.secret_name,
            &key.arn,
            &credentials("another-password", "db"),
        )
        .await
        .unwrap();

    // Whoever held the name before knew the old password.
    assert_eq!(stored.password.expose_secret(), "another-password");
    assert_eq!(
        aws.secret_value(&names.secret_name)
            .await
            .password
            .expose_secret(),
        "another-password"
    );
    assert_owned_by(&aws.secret_tags(&names.secret_name).await, &next);
}

#[tokio::test]
async fn a_secret_scheduled_for_deletion_is_restored() {
    let aws = Aws::new().await;
    let (tenant, names) = new_tenant("sm-restore");
    let key = ensure_key(&aws, &tenant, &names).await;
    let first = credentials("first-password", "db");
    aws.secrets
        .ensure_secret(&unrecorded(&tenant), &names.secret_name, &key.arn, &first)
        .await
        .unwrap();
    aws.sm
        .delete_secret()
        .secret_id(&names.secret_name)
        .recovery_window_in_days(7)
        .send()
        .await
        .unwrap();

    let (_, stored) = aws
        .secrets
        .ensure_secret(
            &unrecorded(&tenant),
            &names.secret_name,
            &key.arn,
            &credentials("another-password", "db"),
        )
        .await
        .unwrap();

    assert_eq!(stored, first);
    let described = aws
        .sm
        .describe_secret()
        .secret_id(&names.secret_name)
        .send()
        .await
        .unwrap();
    assert_eq!(described.deleted_date(), None);
    assert_eq!(aws.secret_value(&names.secret_name).await, first);
}

#[tokio::test]
async fn removing_a_secret_deletes_it_at_once_so_the_name_can_be_used_again() {
    let aws = Aws::new().await;
    let (tenant, names) = new_tenant("sm-remove");
    let key = ensure_key(&aws, &tenant, &names).await;
    aws.secrets
        .ensure_secret(
            &unrecorded(&tenant),
            &names.secret_name,
            &key.arn,
            &credentials("first-password", "db"),
        )
        .await
        .unwrap();

    aws.secrets
        .remove_secret(&unrecorded(&tenant), &names.secret_name)
        .await
        .unwrap();

    assert!(!aws.secret_exists(&names.secret_name).await);
    aws.secrets
        .remove_secret(&unrecorded(&tenant), &names.secret_name)
        .await
        .unwrap();
    // A rolled-back tenant tries again with a fresh password and the same
    // uid, hence the same request token.
    let retry = credentials("second-password", "db");
    let (_, stored) = aws
        .secrets
        .ensure_secret(&unrecorded(&tenant), &names.secret_name, &key.arn, &retry)
        .await
        .unwrap();
    assert_eq!(stored, retry);
    assert_eq!(aws.secret_value(&names.secret_name).await, retry);
}

/// Issue 15, path 6: a display name is free text, but AWS refuses a tag
/// value with a comma or an apostrophe (S3 `InvalidTag`), which would fail
/// onboarding forever. moto accepts anything, so the test reads back what
/// tenantry wrote and holds it to AWS's rules: letters, digits, spaces and
/// `_ . : / = + - @`, at most 256 characters.
#[tokio::test]
async fn a_free_text_display_name_is_tagged_in_the_characters_aws_accepts() {
    let aws = Aws::new().await;
    let (mut tenant, names) = new_tenant("tag-text");
    tenant.display_name = Some(format!("O'Brien, Ltd. <{}>", "x".repeat(300)));
    let key = ensure_key(&aws, &tenant, &names).await;
    aws.buckets
        .ensure_bucket(&unrecorded(&tenant), &names.bucket, &key.arn, true, false)
        .await
        .expect("the bucket is made");
    aws.secrets
        .ensure_secret(
            &unrecorded(&tenant),
            &names.secret_name,
            &key.arn,
            &credentials("pw", "db"),
        )
        .await
        .expect("the secret is made");
    let accepted = |v: &str| {
        v.chars().count() <= 256
            && v.chars()
                .all(|c| c.is_alphanumeric() || " _.:/=+-@".contains(c))
    };
    for (what, tags) in [
        ("key", aws.key_tags(&key.key_id).await),
        ("bucket", aws.bucket_tags(&names.bucket).await),
        ("secret", aws.secret_tags(&names.secret_name).await),
    ] {
        let display = tags.get(DISPLAY_NAME_TAG).expect("a display-name tag");
        assert!(display.starts_with("O Brien Ltd."), "{what}: {display:?}");
        for (k, v) in &tags {
            assert!(
                accepted(v),
                "{what} tag {k} = {v:?} would be refused by AWS"
            );
        }
    }
    aws.secrets
        .remove_secret(&unrecorded(&tenant), &names.secret_name)
        .await
        .unwrap();
    aws.buckets
        .remove_bucket(&unrecorded(&tenant), &names.bucket)
        .await
        .unwrap();
    aws.keys
        .remove_key(&unrecorded(&tenant), &names.key_alias)
        .await
        .unwrap();
}

/// An audit trail of its own in the shared database, and a scope on it for
/// `tenant`, as the operator's reconcile of that Tenant has.
async fn audit_scope(tenant: &TenantRef) -> (tenantry::audit::Scope, String) {
    let schema = unique_name("audit_aws").replace('-', "_");
    let pool = sqlx::PgPool::connect(&crate::support::env("TENANTRY_DATABASE_URL"))
        .await
        .expect("admin pool");
    let log = tenantry::audit::AuditLog::new(pool, &schema, "tenantry", "test").unwrap();
    log.ensure_schema().await.expect("the audit store");
    let scope = tenantry::audit::Scope {
        log,
        tenant: tenant.name.clone(),
        tenant_uid: Some(tenant.uid.clone()),
        generation: Some(1),
        resource_version: None,
    };
    (scope, schema)
}

/// Issue 15, path 1, what a released resource may have gathered while no
/// Tenant held it: someone in the account added a key-policy statement and a
/// grant for another account to the tenant's released key, and a resource
/// policy and a rotation schedule to its released secret. The next Tenant of
/// the name adopts both (their release is recorded) and finds none of that:
/// whoever added it would otherwise decrypt the new tenant's data and read
/// its new password.
#[tokio::test]
async fn what_others_added_to_a_released_key_and_secret_is_taken_away_on_adoption() {
    let aws = Aws::new().await;
    let (tenant, names) = new_tenant("adopt-reset");
    let (scope, schema) = audit_scope(&tenant).await;
    let key = async {
        let key = aws
            .keys
            .ensure_key(&in_trail(&scope, &tenant), &names.key_alias, false)
            .await?;
        aws.secrets
            .ensure_secret(
                &in_trail(&scope, &tenant),
                &names.secret_name,
                &key.arn,
                &credentials("first", "db"),
            )
            .await?;
        aws.keys
            .release_key(&in_trail(&scope, &tenant), &names.key_alias)
            .await?;
        aws.secrets
            .release_secret(&in_trail(&scope, &tenant), &names.secret_name)
            .await?;
        Ok::<_, BackendError>(key)
    }
    .await
    .unwrap();

    // Someone else's additions while the resources wait for their tenant.
    let outsider = "arn:aws:iam::111122223333:root";
    let policy = aws
        .kms
        .get_key_policy()
        .key_id(&key.key_id)
        .policy_name("default")
        .send()
        .await
        .unwrap()
        .policy
        .unwrap();
    let mut policy: serde_json::Value = serde_json::from_str(&policy).unwrap();
    policy["Statement"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "Sid": "Outsider", "Effect": "Allow", "Principal": {"AWS": outsider},
            "Action": "kms:Decrypt", "Resource": "*"
        }));
    aws.kms
        .put_key_policy()
        .key_id(&key.key_id)
        .policy_name("default")
        .policy(policy.to_string())
        .send()
        .await
        .unwrap();
    aws.kms
        .create_grant()
        .key_id(&key.key_id)
        .grantee_principal(outsider)
        .operations(aws_sdk_kms::types::GrantOperation::Decrypt)
        .send()
        .await
        .unwrap();
    aws.sm
        .put_resource_policy()
        .secret_id(&names.secret_name)
        .resource_policy(
            serde_json::json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
                "Principal": {"AWS": outsider}, "Action": "secretsmanager:GetSecretValue", "Resource": "*"}]})
            .to_string(),
        )
        .send()
        .await
        .unwrap();

    let next = successor(&tenant);
    async {
        aws.keys
            .ensure_key(&in_trail(&scope, &next), &names.key_alias, false)
            .await?;
        aws.secrets
            .ensure_secret(
                &in_trail(&scope, &next),
                &names.secret_name,
                &key.arn,
                &credentials("second", "db"),
            )
            .await
    }
    .await
    .expect("the recorded releases are adopted");

    let policy = aws
        .kms
        .get_key_policy()
        .key_id(&key.key_id)
        .policy_name("default")
        .send()
        .await
        .unwrap()
        .policy
        .unwrap();
    assert!(
        !policy.contains(outsider),
        "the outsider's statement stayed: {policy}"
    );
    let grants = aws
        .kms
        .list_grants()
        .key_id(&key.key_id)
        .send()
        .await
        .unwrap();
    assert!(
        grants.grants().is_empty(),
        "the outsider's grant stayed: {grants:?}"
    );
    let resource_policy = aws
        .sm
        .get_resource_policy()
        .secret_id(&names.secret_name)
        .send()
        .await
        .unwrap();
    assert!(
        resource_policy
            .resource_policy()
            .is_none_or(|p| !p.contains(outsider)),
        "the outsider's resource policy stayed: {resource_policy:?}"
    );

    aws.secrets
        .remove_secret(&unrecorded(&next), &names.secret_name)
        .await
        .unwrap();
    aws.keys
        .remove_key(&unrecorded(&next), &names.key_alias)
        .await
        .unwrap();
    crate::audit::drop_schema(&schema).await;
}

/// Issue 15, path 1: adoption on a tag anyone can write. A neighbour in the
/// account plants a secret under a tenant's name, tagged "released" for
/// that name, holding a password of its choosing. The next Tenant of that
/// name must not adopt it (and hand the neighbour's password to its role):
/// this installation's audit trail records no such release. A release the
/// trail does record is adopted as before.
#[tokio::test]
async fn a_planted_released_secret_is_a_conflict_and_a_recorded_release_is_adopted() {
    let aws = Aws::new().await;
    let (tenant, names) = new_tenant("sm-plant");
    let key = ensure_key(&aws, &tenant, &names).await;
    let neighbour = successor(&tenant);
    let mut planted_tags = neighbour.ownership_tags();
    planted_tags.insert(tags::RELEASED.to_string(), "true".to_string());
    let mut create = aws
        .sm
        .create_secret()
        .name(&names.secret_name)
        .secret_string(r#"{"username":"t_x","password":"the-neighbours-password","host":"db","port":5432,"dbname":"tenantry","schema":"t_x","engine":"postgres"}"#);
    for (k, v) in &planted_tags {
        create = create.tags(
            aws_sdk_secretsmanager::types::Tag::builder()
                .key(k)
                .value(v)
                .build(),
        );
    }
    create.send().await.expect("the neighbour plants a secret");

    let (scope, schema) = audit_scope(&tenant).await;
    let planted = aws
        .secrets
        .ensure_secret(
            &in_trail(&scope, &tenant),
            &names.secret_name,
            &key.arn,
            &credentials("the-tenants-password", "db"),
        )
        .await;
    assert_conflict(planted, &names.secret_name);
    assert_eq!(
        aws.secret_value(&names.secret_name)
            .await
            .password
            .expose_secret(),
        "the-neighbours-password",
        "the planted secret was changed"
    );
    aws.sm
        .delete_secret()
        .secret_id(&names.secret_name)
        .force_delete_without_recovery(true)
        .send()
        .await
        .unwrap();

    // The same, released by a Tenant of this name under this trail.
    async {
        aws.secrets
            .ensure_secret(
                &in_trail(&scope, &neighbour),
                &names.secret_name,
                &key.arn,
                &credentials("first-password", "db"),
            )
            .await?;
        aws.secrets
            .release_secret(&in_trail(&scope, &neighbour), &names.secret_name)
            .await
    }
    .await
    .unwrap();
    let (_, stored) = aws
        .secrets
        .ensure_secret(
            &in_trail(&scope, &tenant),
            &names.secret_name,
            &key.arn,
            &credentials("another-password", "db"),
        )
        .await
        .expect("a recorded release is adopted");
    assert_eq!(stored.password.expose_secret(), "another-password");
    assert_owned_by(&aws.secret_tags(&names.secret_name).await, &tenant);
    aws.secrets
        .remove_secret(&unrecorded(&tenant), &names.secret_name)
        .await
        .unwrap();
    crate::audit::drop_schema(&schema).await;
}

/// Issue 15, path 1, for buckets: what a released bucket may have gathered
/// while no Tenant held it. Someone in the account made it copy every new
/// object to a bucket of theirs (replication), tell a function of theirs
/// every key written (notifications), and opened a second door to it (an
/// access point). The next Tenant of the name adopts the bucket (its
/// release is recorded) and finds none of that, and the trail says what
/// was taken away.
#[tokio::test]
async fn what_others_added_to_a_released_bucket_is_taken_away_on_adoption() {
    let aws = Aws::new().await;
    let (tenant, names) = new_tenant("s3-reset");
    let bucket = &names.bucket;
    let (scope, schema) = audit_scope(&tenant).await;
    let key = async {
        let key = aws
            .keys
            .ensure_key(&in_trail(&scope, &tenant), &names.key_alias, false)
            .await?;
        aws.buckets
            .ensure_bucket(&in_trail(&scope, &tenant), bucket, &key.arn, true, false)
            .await?;
        aws.buckets
            .release_bucket(&in_trail(&scope, &tenant), bucket)
            .await?;
        Ok::<_, BackendError>(key)
    }
    .await
    .unwrap();

    // The neighbour's additions while the bucket waits for its tenant.
    let config = load_sdk_config().await;
    let region = config.region().expect("AWS_REGION").to_string();
    let account = aws_sdk_sts::Client::new(&config)
        .get_caller_identity()
        .send()
        .await
        .unwrap()
        .account
        .unwrap();
    let outsider_copies = "arn:aws:s3:::outsider-copies";
    let outsider_function = format!("arn:aws:lambda:{region}:111122223333:function:outsider");
    use aws_sdk_s3::types::{
        Destination, Event, LambdaFunctionConfiguration, NotificationConfiguration,
        ReplicationConfiguration, ReplicationRule, ReplicationRuleFilter, ReplicationRuleStatus,
    };
    aws.s3
        .put_bucket_replication()
        .bucket(bucket)
        .replication_configuration(
            ReplicationConfiguration::builder()
                .role("arn:aws:iam::111122223333:role/outsider")
                .rules(
                    ReplicationRule::builder()
                        .id("outsider")
                        .priority(1)
                        .status(ReplicationRuleStatus::Enabled)
                        .filter(ReplicationRuleFilter::builder().prefix("").build())
                        .destination(
                            Destination::builder()
                                .bucket(outsider_copies)
                                .build()
                                .unwrap(),
                        )
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("the neighbour sets up replication");
    aws.s3
        .put_bucket_notification_configuration()
        .bucket(bucket)
        .notification_configuration(
            NotificationConfiguration::builder()
                .lambda_function_configurations(
                    LambdaFunctionConfiguration::builder()
                        .id("outsider")
                        .lambda_function_arn(&outsider_function)
                        .events(Event::from("s3:ObjectCreated:*"))
                        .build()
                        .unwrap(),
                )
                .build(),
        )
        .send()
        .await
        .expect("the neighbour sets up notifications");
    let control = tenantry::backends::s3::control_client(&config, true);
    let access_point = unique_name("outsider-ap");
    // moto 5.2.5 answers CreateAccessPoint under a `CreateAccessPointResponse`
    // root where S3 Control sends `CreateAccessPointResult`, which the SDK
    // cannot parse: a 200 is the success, and the listing below shows it.
    let created = control
        .create_access_point()
        .account_id(&account)
        .name(&access_point)
        .bucket(bucket)
        .send()
        .await;
    if let Err(e) = created {
        assert_eq!(
            e.raw_response().map(|r| r.status().as_u16()),
            Some(200),
            "the neighbour opens an access point: {e:?}"
        );
    }
    let access_points = |control: aws_sdk_s3control::Client| {
        let account = account.clone();
        async move {
            let listed = control
                .list_access_points()
                .account_id(account)
                .bucket(bucket)
                .send()
                .await;
            match listed {
                Ok(out) => out
                    .access_point_list()
                    .iter()
                    .map(|ap| ap.name().to_string())
                    .collect::<Vec<_>>(),
                // moto's `ListAccessPointsResponse` root, as for CreateAccessPoint.
                Err(e) => {
                    let raw = e.raw_response().expect("an answer");
                    assert_eq!(raw.status().as_u16(), 200, "ListAccessPoints: {e:?}");
                    let body = String::from_utf8_lossy(raw.body().bytes().unwrap()).into_owned();
                    body.split("<Name>")
                        .skip(1)
                        .filter_map(|rest| rest.split_once("</Name>"))
                        .map(|(name, _)| name.to_string())
                        .collect()
                }
            }
        }
    };
    assert_eq!(
        access_points(control.clone()).await,
        vec![access_point.clone()]
    );

    let next = successor(&tenant);
    aws.buckets
        .ensure_bucket(&in_trail(&scope, &next), bucket, &key.arn, true, false)
        .await
        .expect("the recorded release is adopted");

    assert_owned_by(&aws.bucket_tags(bucket).await, &next);
    match aws.s3.get_bucket_replication().bucket(bucket).send().await {
        Err(e) if e.code() == Some("ReplicationConfigurationNotFoundError") => {}
        other => panic!("the neighbour's replication stayed: {other:?}"),
    }
    match aws
        .s3
        .get_bucket_notification_configuration()
        .bucket(bucket)
        .send()
        .await
    {
        Ok(notifications) => assert!(
            notifications.lambda_function_configurations().is_empty()
                && notifications.queue_configurations().is_empty()
                && notifications.topic_configurations().is_empty()
                && notifications.event_bridge_configuration().is_none(),
            "the neighbour's notifications stayed: {notifications:?}"
        ),
        // moto answers "none" with an empty `<GetBucketNotificationResponse/>`
        // the SDK cannot parse; anything with a configuration in it fails.
        Err(e) => {
            let raw = e.raw_response().expect("an answer");
            let body = String::from_utf8_lossy(raw.body().bytes().unwrap()).into_owned();
            assert!(
                raw.status().as_u16() == 200
                    && body.contains("<GetBucketNotificationResponse")
                    && !body.contains("Configuration"),
                "the neighbour's notifications stayed: {body}"
            );
        }
    }
    assert_eq!(
        access_points(control).await,
        Vec::<String>::new(),
        "the neighbour's access point stayed"
    );
    let reset = scope
        .log
        .log(&tenant.name)
        .await
        .unwrap()
        .into_iter()
        .find(|row| row.action == "s3.bucket.reset" && row.target == *bucket)
        .expect("the reset is in the audit trail");
    assert_eq!(
        reset.detail["replicationDestinations"],
        serde_json::json!([outsider_copies])
    );
    assert_eq!(
        reset.detail["notificationsCleared"],
        serde_json::json!([outsider_function])
    );
    assert_eq!(
        reset.detail["accessPointsDeleted"],
        serde_json::json!([access_point])
    );

    aws.buckets
        .remove_bucket(&unrecorded(&next), bucket)
        .await
        .unwrap();
    aws.keys
        .remove_key(&unrecorded(&next), &names.key_alias)
        .await
        .unwrap();
    crate::audit::drop_schema(&schema).await;
}
