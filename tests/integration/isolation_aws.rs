//! The storage and encryption probes against the local moto server.
//!
//! Each test provisions a tenant's key, bucket and secret with the real
//! backends, tampers with one control by hand as a platform engineer could
//! (with plain SDK clients), checks that the probe reports exactly that
//! control in the right state, repairs it with the backend's `ensure_*`, and
//! checks that the probe is satisfied again.

use crate::support::relay::relay;
use std::sync::{Arc, Mutex};

use aws_config::SdkConfig;
use aws_sdk_s3::types::{
    BucketVersioningStatus, PublicAccessBlockConfiguration, ServerSideEncryption,
    ServerSideEncryptionByDefault, ServerSideEncryptionConfiguration, ServerSideEncryptionRule,
    VersioningConfiguration,
};
use secrecy::ExposeSecret;
use tenantry::api::{Finding, IsolationState, LayerReport};
use tenantry::backends::aws::load_sdk_config;
use tenantry::backends::kms::KmsBackend;
use tenantry::backends::s3::S3Backend;
use tenantry::backends::secrets::SecretsManagerBackend;
use tenantry::backends::{
    BackendError, DatabaseCredentials, KeyInfo, KeyManager, ObjectStorage, SecretStore, TenantRef,
    generate_password,
};
use tenantry::isolation::encryption::{EncryptionProbe, check as enc};
use tenantry::isolation::storage::{StorageProbe, check as sto};
use tenantry::naming::TenantNames;
use tokio::net::{TcpListener, TcpStream};

use crate::support::{bucket_prefix, env, unique_name, unique_uid, unrecorded};

use IsolationState::{Broken, Enforced, Inert};

/// One provisioned tenant, the backends that repair it, the probes that
/// measure it, and plain clients to tamper with it.
struct Tenant {
    tenant: TenantRef,
    names: TenantNames,
    key: KeyInfo,
    credentials: DatabaseCredentials,
    keys: KmsBackend,
    buckets: S3Backend,
    secrets: SecretsManagerBackend,
    storage: StorageProbe,
    encryption: EncryptionProbe,
    kms: aws_sdk_kms::Client,
    s3: aws_sdk_s3::Client,
    sm: aws_sdk_secretsmanager::Client,
    /// Keys a test made besides the tenant's, deleted at the end.
    extra_keys: Mutex<Vec<String>>,
}

impl Tenant {
    async fn provision(prefix: &str) -> Self {
        env("AWS_ENDPOINT_URL");
        let config = load_sdk_config().await;
        let name = unique_name(prefix);
        let names = TenantNames::new(&name, &bucket_prefix()).unwrap();
        let tenant = TenantRef {
            name,
            uid: unique_uid(),
            display_name: None,
        };
        let keys = KmsBackend::new(&config);
        let buckets = S3Backend::new(&config, true);
        let secrets = SecretsManagerBackend::new(&config);
        let key = keys
            .ensure_key(&unrecorded(&tenant), &names.key_alias, false)
            .await
            .unwrap();
        buckets
            .ensure_bucket(&unrecorded(&tenant), &names.bucket, &key.arn, true, false)
            .await
            .unwrap();
        let initial = DatabaseCredentials {
            username: names.role.clone(),
            password: generate_password(),
            host: "db.example".into(),
            port: 5432,
            database: "tenantry".into(),
            schema: names.schema.clone(),
            engine: "postgres".into(),
        };
        let (_, credentials) = secrets
            .ensure_secret(&unrecorded(&tenant), &names.secret_name, &key.arn, &initial)
            .await
            .unwrap();
        let s3_config = aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(true)
            .build();
        Self {
            storage: StorageProbe::new(&config, true),
            encryption: EncryptionProbe::new(&config),
            kms: aws_sdk_kms::Client::new(&config),
            s3: aws_sdk_s3::Client::from_conf(s3_config),
            sm: aws_sdk_secretsmanager::Client::new(&config),
            tenant,
            names,
            key,
            credentials,
            keys,
            buckets,
            secrets,
            extra_keys: Mutex::default(),
        }
    }

    /// Probes the bucket; whatever the outcome, the report must not carry
    /// the tenant's password.
    async fn storage(&self) -> LayerReport {
        let report = self
            .storage
            .probe(&self.names.bucket, &self.key.arn, true)
            .await;
        self.assert_no_password(&report);
        report
    }

    async fn encryption(&self) -> LayerReport {
        let report = self
            .encryption
            .probe(
                &self.names.key_alias,
                &self.key.arn,
                &self.names.secret_name,
            )
            .await;
        self.assert_no_password(&report);
        report
    }

    fn assert_no_password(&self, report: &LayerReport) {
        let json = serde_json::to_string(report).unwrap();
        let password = self.credentials.password.expose_secret();
        assert!(!password.is_empty());
        assert!(
            !json.contains(password),
            "the report shows the password: {json}"
        );
    }

    async fn repair_bucket(&self) {
        self.buckets
            .ensure_bucket(
                &unrecorded(&self.tenant),
                &self.names.bucket,
                &self.key.arn,
                true,
                false,
            )
            .await
            .unwrap();
    }

    async fn repair_key(&self) -> Result<KeyInfo, BackendError> {
        self.keys
            .ensure_key(&unrecorded(&self.tenant), &self.names.key_alias, false)
            .await
    }

    async fn repair_secret(&self) {
        self.secrets
            .ensure_secret(
                &unrecorded(&self.tenant),
                &self.names.secret_name,
                &self.key.arn,
                &self.credentials,
            )
            .await
            .unwrap();
    }

    /// A key that is not the tenant's, as a careless engineer might pick.
    async fn another_key(&self) -> KeyInfo {
        let meta = self
            .kms
            .create_key()
            .description("not a tenant's key")
            .send()
            .await
            .unwrap()
            .key_metadata
            .unwrap();
        self.extra_keys
            .lock()
            .unwrap()
            .push(meta.key_id().to_string());
        KeyInfo {
            arn: meta.arn().unwrap().to_string(),
            key_id: meta.key_id().to_string(),
        }
    }

    /// Every object version and delete marker in the bucket.
    async fn object_versions(&self) -> Vec<String> {
        let out = self
            .s3
            .list_object_versions()
            .bucket(&self.names.bucket)
            .send()
            .await
            .unwrap();
        let versions = out.versions().iter().filter_map(|v| v.key());
        let markers = out.delete_markers().iter().filter_map(|m| m.key());
        versions.chain(markers).map(str::to_string).collect()
    }

    /// Removes the tenant as its deletion would, and the keys a test made.
    async fn remove(&self) {
        self.buckets
            .remove_bucket(&unrecorded(&self.tenant), &self.names.bucket)
            .await
            .unwrap();
        self.secrets
            .remove_secret(&unrecorded(&self.tenant), &self.names.secret_name)
            .await
            .unwrap();
        self.keys
            .remove_key(&unrecorded(&self.tenant), &self.names.key_alias)
            .await
            .unwrap();
        let extra = std::mem::take(&mut *self.extra_keys.lock().unwrap());
        for key_id in extra {
            // The key id: moto fails on an ARN here.
            self.kms
                .schedule_key_deletion()
                .key_id(key_id)
                .pending_window_in_days(7)
                .send()
                .await
                .unwrap();
        }
    }
}

fn finding<'a>(report: &'a LayerReport, check: &str) -> &'a Finding {
    report
        .findings
        .iter()
        .find(|f| f.check == check)
        .unwrap_or_else(|| panic!("no {check} finding in {report:#?}"))
}

/// The layer is in `state` because of exactly the findings `checks`, each in
/// `state`; every other finding passed.
fn assert_only(report: &LayerReport, state: IsolationState, checks: &[&str]) -> Finding {
    assert_eq!(report.state, state, "{report:#?}");
    for f in &report.findings {
        let expected = if checks.contains(&f.check.as_str()) {
            state
        } else {
            Enforced
        };
        assert_eq!(f.state, expected, "{}: {report:#?}", f.check);
    }
    finding(report, checks[0]).clone()
}

fn assert_enforced(report: &LayerReport) {
    assert_eq!(report.state, Enforced, "{report:#?}");
    assert!(
        report.failures().next().is_none(),
        "every finding passes: {report:#?}"
    );
}

// =============================================================== a fresh tenant

#[tokio::test]
async fn a_fresh_tenant_is_enforced_on_storage_and_encryption_with_every_check_reported() {
    let t = Tenant::provision("iso-fresh").await;

    let storage = t.storage().await;
    let encryption = t.encryption().await;

    assert_enforced(&storage);
    assert_enforced(&encryption);
    let ids = |r: &LayerReport| {
        r.findings
            .iter()
            .map(|f| f.check.clone())
            .collect::<Vec<_>>()
    };
    // moto listens on plain HTTP: the insecure PUT is made and refused.
    assert_eq!(
        ids(&storage),
        [
            sto::EXISTS,
            sto::PUBLIC_ACCESS_BLOCK,
            sto::OWNERSHIP,
            sto::ENCRYPTION,
            sto::VERSIONING,
            sto::POLICY,
            sto::INSECURE_TRANSPORT
        ]
    );
    assert_eq!(
        ids(&encryption),
        [
            enc::KEY_STATE,
            enc::KEY_SPEC,
            enc::KEY_ROTATION,
            enc::KEY_ROUND_TRIP,
            enc::KEY_ALIAS,
            enc::SECRET_KMS_KEY
        ]
    );
    assert!(
        finding(&storage, sto::ENCRYPTION)
            .detail
            .contains(&t.key.arn)
    );
    assert!(
        finding(&encryption, enc::SECRET_KMS_KEY)
            .detail
            .contains(&t.key.arn)
    );
    // The refused PUT left nothing behind.
    assert_eq!(t.object_versions().await, Vec::<String>::new());
    t.remove().await;
}

#[tokio::test]
async fn the_probes_write_nothing_but_the_refused_plain_put_and_the_key_round_trip() {
    let t = Tenant::provision("iso-reads").await;
    let recorder = Recorder::default();
    let config = recorder.config().await;

    let storage = StorageProbe::new(&config, true)
        .probe(&t.names.bucket, &t.key.arn, true)
        .await;
    let encryption = EncryptionProbe::new(&config)
        .probe(&t.names.key_alias, &t.key.arn, &t.names.secret_name)
        .await;

    assert_enforced(&storage);
    assert_enforced(&encryption);
    let mut writes = recorder.writes();
    writes.sort();
    assert_eq!(writes.len(), 3, "{writes:?}");
    assert_eq!(&writes[..2], ["Decrypt", "Encrypt"]);
    assert!(
        writes[2].starts_with(&format!(
            "PUT /{}/.tenantry/isolation-probe/",
            t.names.bucket
        )),
        "{writes:?}"
    );
    t.remove().await;
}

// ============================================================ storage tampering

#[tokio::test]
async fn turning_off_block_public_access_is_broken_until_repaired() {
    let t = Tenant::provision("iso-bpa").await;
    let off = PublicAccessBlockConfiguration::builder()
        .block_public_acls(false)
        .ignore_public_acls(false)
        .block_public_policy(false)
        .restrict_public_buckets(false)
        .build();
    t.s3.put_public_access_block()
        .bucket(&t.names.bucket)
        .public_access_block_configuration(off)
        .send()
        .await
        .unwrap();

    let f = assert_only(&t.storage().await, Broken, &[sto::PUBLIC_ACCESS_BLOCK]);
    assert!(
        f.detail.ends_with(
            "BlockPublicAcls, IgnorePublicAcls, BlockPublicPolicy, RestrictPublicBuckets"
        ),
        "{f:?}"
    );

    t.repair_bucket().await;
    assert_enforced(&t.storage().await);
    t.remove().await;
}

#[tokio::test]
async fn removing_bucket_encryption_is_broken_until_repaired() {
    let t = Tenant::provision("iso-noenc").await;
    t.s3.delete_bucket_encryption()
        .bucket(&t.names.bucket)
        .send()
        .await
        .unwrap();

    let f = assert_only(&t.storage().await, Broken, &[sto::ENCRYPTION]);
    assert!(f.detail.contains("no default encryption"), "{f:?}");

    t.repair_bucket().await;
    assert_enforced(&t.storage().await);
    t.remove().await;
}

#[tokio::test]
async fn pointing_bucket_encryption_at_another_key_is_broken_and_names_that_key() {
    let t = Tenant::provision("iso-otherkey").await;
    let other = t.another_key().await;
    let default = ServerSideEncryptionByDefault::builder()
        .sse_algorithm(ServerSideEncryption::AwsKms)
        .kms_master_key_id(&other.arn)
        .build()
        .unwrap();
    let config = ServerSideEncryptionConfiguration::builder()
        .rules(
            ServerSideEncryptionRule::builder()
                .apply_server_side_encryption_by_default(default)
                .bucket_key_enabled(true)
                .build(),
        )
        .build()
        .unwrap();
    t.s3.put_bucket_encryption()
        .bucket(&t.names.bucket)
        .server_side_encryption_configuration(config)
        .send()
        .await
        .unwrap();

    let f = assert_only(&t.storage().await, Broken, &[sto::ENCRYPTION]);
    assert!(f.detail.contains(&other.arn), "{f:?}");
    assert!(f.detail.contains(&t.key.arn), "{f:?}");

    t.repair_bucket().await;
    assert_enforced(&t.storage().await);
    t.remove().await;
}

#[tokio::test]
async fn encryption_through_the_tenants_alias_is_accepted_and_without_bucket_key_is_inert() {
    let t = Tenant::provision("iso-aliasenc").await;
    let put = |key: &str, bucket_key: bool| {
        let default = ServerSideEncryptionByDefault::builder()
            .sse_algorithm(ServerSideEncryption::AwsKms)
            .kms_master_key_id(key)
            .build()
            .unwrap();
        ServerSideEncryptionConfiguration::builder()
            .rules(
                ServerSideEncryptionRule::builder()
                    .apply_server_side_encryption_by_default(default)
                    .bucket_key_enabled(bucket_key)
                    .build(),
            )
            .build()
            .unwrap()
    };
    for (key, bucket_key) in [
        (t.names.key_alias.as_str(), true),
        (t.key.key_id.as_str(), false),
    ] {
        t.s3.put_bucket_encryption()
            .bucket(&t.names.bucket)
            .server_side_encryption_configuration(put(key, bucket_key))
            .send()
            .await
            .unwrap();
        let report = t.storage().await;
        if bucket_key {
            assert_enforced(&report);
            assert!(
                finding(&report, sto::ENCRYPTION)
                    .detail
                    .contains(&t.names.key_alias)
            );
        } else {
            let f = assert_only(&report, Inert, &[sto::ENCRYPTION]);
            assert!(f.detail.contains("bucket key is off"), "{f:?}");
        }
    }

    t.repair_bucket().await;
    assert_enforced(&t.storage().await);
    t.remove().await;
}

#[tokio::test]
async fn suspending_versioning_is_inert_until_repaired() {
    let t = Tenant::provision("iso-version").await;
    t.s3.put_bucket_versioning()
        .bucket(&t.names.bucket)
        .versioning_configuration(
            VersioningConfiguration::builder()
                .status(BucketVersioningStatus::Suspended)
                .build(),
        )
        .send()
        .await
        .unwrap();

    let f = assert_only(&t.storage().await, Inert, &[sto::VERSIONING]);
    assert!(f.detail.contains("Suspended"), "{f:?}");
    // Not wanted, suspended versioning is what was asked for.
    let unwanted = t.storage.probe(&t.names.bucket, &t.key.arn, false).await;
    assert_enforced(&unwanted);

    t.repair_bucket().await;
    assert_enforced(&t.storage().await);
    t.remove().await;
}

#[tokio::test]
async fn deleting_the_bucket_policy_is_broken_and_a_plain_http_put_then_gets_through() {
    let t = Tenant::provision("iso-policy").await;
    t.s3.delete_bucket_policy()
        .bucket(&t.names.bucket)
        .send()
        .await
        .unwrap();

    let report = t.storage().await;

    assert_only(&report, Broken, &[sto::POLICY, sto::INSECURE_TRANSPORT]);
    let put = finding(&report, sto::INSECURE_TRANSPORT);
    assert!(put.detail.contains("was accepted"), "{put:?}");
    assert!(put.detail.contains("deleted again"), "{put:?}");
    // Deleted for good, with its version, not hidden behind a delete marker.
    assert_eq!(t.object_versions().await, Vec::<String>::new());

    t.repair_bucket().await;
    assert_enforced(&t.storage().await);
    t.remove().await;
}

#[tokio::test]
async fn a_missing_bucket_is_broken_and_reported_alone() {
    let t = Tenant::provision("iso-nobucket").await;
    t.buckets
        .remove_bucket(&unrecorded(&t.tenant), &t.names.bucket)
        .await
        .unwrap();

    let report = t.storage().await;

    assert_eq!(report.state, Broken);
    assert_eq!(report.findings.len(), 1, "{report:#?}");
    assert_eq!(report.findings[0].check, sto::EXISTS);

    t.repair_bucket().await;
    assert_enforced(&t.storage().await);
    t.remove().await;
}

// ========================================================= encryption tampering

#[tokio::test]
async fn disabling_key_rotation_is_inert_until_repaired() {
    let t = Tenant::provision("iso-rotation").await;
    t.kms
        .disable_key_rotation()
        .key_id(&t.key.key_id)
        .send()
        .await
        .unwrap();

    let f = assert_only(&t.encryption().await, Inert, &[enc::KEY_ROTATION]);
    assert!(f.detail.contains("off"), "{f:?}");

    t.repair_key().await.unwrap();
    assert_enforced(&t.encryption().await);
    t.remove().await;
}

#[tokio::test]
async fn disabling_the_key_is_broken_until_ensure_key_enables_it() {
    let t = Tenant::provision("iso-disable").await;
    t.kms
        .disable_key()
        .key_id(&t.key.key_id)
        .send()
        .await
        .unwrap();

    let report = t.encryption().await;

    assert_eq!(report.state, Broken, "{report:#?}");
    let state = finding(&report, enc::KEY_STATE);
    assert_eq!(state.state, Broken);
    assert!(state.detail.contains("Disabled"), "{state:?}");
    // Real KMS refuses a disabled key (DisabledException: Broken); moto 5.2
    // encrypts with it anyway, so the round trip may pass here.
    assert!(
        matches!(
            finding(&report, enc::KEY_ROUND_TRIP).state,
            Broken | Enforced
        ),
        "{report:#?}"
    );
    for f in &report.findings {
        if f.check != enc::KEY_STATE && f.check != enc::KEY_ROUND_TRIP {
            assert_eq!(f.state, Enforced, "{report:#?}");
        }
    }

    assert_eq!(t.repair_key().await.unwrap(), t.key);
    assert_enforced(&t.encryption().await);
    t.remove().await;
}

#[tokio::test]
async fn pointing_the_alias_at_another_key_is_broken_and_not_repaired_by_ensure_key() {
    let t = Tenant::provision("iso-alias").await;
    let other = t.another_key().await;
    t.kms
        .update_alias()
        .alias_name(&t.names.key_alias)
        .target_key_id(&other.key_id)
        .send()
        .await
        .unwrap();

    let f = assert_only(&t.encryption().await, Broken, &[enc::KEY_ALIAS]);
    assert!(f.detail.contains(&other.arn), "{f:?}");

    // The alias now names a key tenantry does not own, and ensure_key never
    // takes over what is not the tenant's: the drift stays reported until
    // someone puts the alias back.
    let refused = t.repair_key().await;
    assert!(
        matches!(refused, Err(BackendError::Conflict { .. })),
        "{refused:?}"
    );
    assert_only(&t.encryption().await, Broken, &[enc::KEY_ALIAS]);

    t.kms
        .update_alias()
        .alias_name(&t.names.key_alias)
        .target_key_id(&t.key.key_id)
        .send()
        .await
        .unwrap();
    assert_enforced(&t.encryption().await);
    t.remove().await;
}

#[tokio::test]
async fn re_encrypting_the_secret_with_another_key_is_broken_until_repaired() {
    let t = Tenant::provision("iso-secret").await;
    let other = t.another_key().await;
    t.sm.update_secret()
        .secret_id(&t.names.secret_name)
        .kms_key_id(&other.arn)
        .send()
        .await
        .unwrap();

    let f = assert_only(&t.encryption().await, Broken, &[enc::SECRET_KMS_KEY]);
    assert!(f.detail.contains(&other.arn), "{f:?}");

    t.repair_secret().await;
    assert_enforced(&t.encryption().await);
    t.remove().await;
}

#[tokio::test]
async fn a_secret_encrypted_through_the_tenants_alias_is_accepted() {
    let t = Tenant::provision("iso-secalias").await;
    t.sm.update_secret()
        .secret_id(&t.names.secret_name)
        .kms_key_id(&t.names.key_alias)
        .send()
        .await
        .unwrap();

    let report = t.encryption().await;

    assert_enforced(&report);
    assert!(
        finding(&report, enc::SECRET_KMS_KEY)
            .detail
            .contains(&t.names.key_alias)
    );
    t.remove().await;
}

#[tokio::test]
async fn a_removed_tenant_probes_broken_on_both_layers() {
    let t = Tenant::provision("iso-removed").await;
    t.remove().await;

    let storage = t.storage().await;
    let encryption = t.encryption().await;

    assert_only(&storage, Broken, &[sto::EXISTS]);
    assert_eq!(encryption.state, Broken, "{encryption:#?}");
    let state = finding(&encryption, enc::KEY_STATE);
    assert!(state.detail.contains("PendingDeletion"), "{state:?}");
    assert_eq!(finding(&encryption, enc::KEY_ALIAS).state, Broken);
    assert_eq!(finding(&encryption, enc::SECRET_KMS_KEY).state, Broken);
}

// ===================================================================== recorder

/// The operations the probes sent, seen by a TCP relay between them and moto.
#[derive(Clone, Default)]
struct Recorder {
    calls: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    /// An SDK configuration whose requests go through the relay.
    async fn config(&self) -> SdkConfig {
        let upstream = env("AWS_ENDPOINT_URL")
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
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
        // Set in code, the endpoint outranks AWS_ENDPOINT_URL.
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(format!("http://{addr}"))
            .load()
            .await
    }

    /// The recorded calls that may change something: S3 requests other than
    /// GET and HEAD, and KMS or Secrets Manager operations other than
    /// Describe*, Get* and List*.
    fn writes(&self) -> Vec<String> {
        let calls = std::mem::take(&mut *self.calls.lock().unwrap());
        assert!(!calls.is_empty(), "the relay saw no request");
        calls
            .into_iter()
            .filter(|call| match call.split_once(' ') {
                Some((method, _)) => !matches!(method, "GET" | "HEAD"),
                None => !["Describe", "Get", "List"]
                    .iter()
                    .any(|r| call.starts_with(r)),
            })
            .collect()
    }
}
