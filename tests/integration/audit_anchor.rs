//! The audit trail's external anchor (src/audit/anchor.rs) against the local
//! moto: the Object Lock bucket and the KMS HMAC key it makes and checks, the
//! MACs, and that checkpoints cannot be removed or replaced by whoever holds
//! the same credentials.
//!
//! Each test makes its own bucket and key. Buckets under Object Lock cannot
//! be emptied before their retention ends (that is the point), so they are
//! left in moto, which forgets them when the local environment stops.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_kms::types::{KeySpec, KeyState, KeyUsageType};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ObjectLockEnabled, ObjectLockMode, ObjectLockRetentionMode};
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use tenantry::audit::anchor::{Anchor, AnchorError, KEY_DESCRIPTION};

use crate::support::readback::{self, Aws};
use crate::support::{bucket_prefix, unique_name};

const DAY: Duration = Duration::from_secs(86_400);

fn bucket_name() -> String {
    format!("{}-{}", bucket_prefix(), unique_name("anchor"))
}

fn alias_name() -> String {
    format!("alias/tenantry-test/{}", unique_name("audit-mac"))
}

async fn anchor(bucket: &str, mac_key: &str) -> Anchor {
    let sdk = tenantry::backends::aws::load_sdk_config().await;
    Anchor::new(&sdk, true, bucket, mac_key, DAY)
}

/// A bucket and key made by `ensure`, for the tests that need a working one.
async fn ready_anchor() -> (Anchor, Aws) {
    let aws = readback::aws().await;
    let anchor = anchor(&bucket_name(), &alias_name()).await;
    anchor.ensure().await.expect("ensure a fresh anchor");
    (anchor, aws)
}

async fn alias_target(aws: &Aws, alias: &str) -> String {
    aws.kms
        .describe_key()
        .key_id(alias)
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap()
        .key_id
}

#[tokio::test]
async fn ensure_creates_a_locked_bucket_and_an_hmac_key_once_then_only_checks() {
    let aws = readback::aws().await;
    let (bucket, alias) = (bucket_name(), alias_name());
    let anchor = anchor(&bucket, &alias).await;
    anchor.ensure().await.expect("first ensure creates");

    let lock = aws
        .s3
        .get_object_lock_configuration()
        .bucket(&bucket)
        .send()
        .await
        .unwrap()
        .object_lock_configuration
        .unwrap();
    assert_eq!(
        lock.object_lock_enabled(),
        Some(&ObjectLockEnabled::Enabled)
    );
    let rule = lock.rule().and_then(|r| r.default_retention()).unwrap();
    assert_eq!(rule.mode(), Some(&ObjectLockRetentionMode::Compliance));
    assert_eq!(rule.days(), Some(1));
    // Object Lock turned versioning on. (moto answers GetBucketVersioning
    // with a root element the SDK does not parse: read the raw answer.)
    let versioning = match aws.s3.get_bucket_versioning().bucket(&bucket).send().await {
        Ok(out) => out.status().map(|s| s.as_str().to_string()),
        Err(e) => e
            .raw_response()
            .and_then(|r| r.body().bytes())
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .and_then(|body| {
                body.split_once("<Status>")
                    .and_then(|(_, rest)| rest.split_once("</Status>"))
                    .map(|(status, _)| status.to_string())
            }),
    };
    assert_eq!(versioning.as_deref(), Some("Enabled"));

    let meta = aws
        .kms
        .describe_key()
        .key_id(&alias)
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap();
    assert_eq!(meta.key_spec(), Some(&KeySpec::Hmac256));
    assert_eq!(meta.key_usage(), Some(&KeyUsageType::GenerateVerifyMac));
    assert_eq!(meta.key_state(), Some(&KeyState::Enabled));
    assert_eq!(meta.description(), Some(KEY_DESCRIPTION));
    let key_id = meta.key_id;

    // A second run (a restart, another replica) finds both and changes
    // nothing: the alias still names the same key.
    anchor.ensure().await.expect("second ensure only checks");
    assert_eq!(alias_target(&aws, &alias).await, key_id);

    // A second Anchor over the same names (another process) agrees.
    let other = self::anchor(&bucket, &alias).await;
    other.ensure().await.expect("another process's ensure");
    assert_eq!(alias_target(&aws, &alias).await, key_id);
}

#[tokio::test]
async fn ensure_adds_the_default_rule_to_a_locked_bucket_without_one() {
    let aws = readback::aws().await;
    let bucket = bucket_name();
    aws.s3
        .create_bucket()
        .bucket(&bucket)
        .object_lock_enabled_for_bucket(true)
        .send()
        .await
        .unwrap();
    anchor(&bucket, &alias_name()).await.ensure().await.unwrap();
    let lock = aws
        .s3
        .get_object_lock_configuration()
        .bucket(&bucket)
        .send()
        .await
        .unwrap()
        .object_lock_configuration
        .unwrap();
    let rule = lock.rule().and_then(|r| r.default_retention()).unwrap();
    assert_eq!(rule.mode(), Some(&ObjectLockRetentionMode::Compliance));
}

#[tokio::test]
async fn ensure_refuses_a_bucket_without_object_lock() {
    let aws = readback::aws().await;
    let bucket = bucket_name();
    aws.s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let err = anchor(&bucket, &alias_name())
        .await
        .ensure()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AnchorError::BucketNotLocked { bucket: b } if *b == bucket),
        "{err:?}"
    );
    assert!(!err.is_transient());
    let message = err.to_string();
    assert!(
        message.contains(&bucket) && message.contains("Object Lock"),
        "{message}"
    );

    // Versioning alone is no lock either.
    aws.s3
        .put_bucket_versioning()
        .bucket(&bucket)
        .versioning_configuration(
            aws_sdk_s3::types::VersioningConfiguration::builder()
                .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let err = anchor(&bucket, &alias_name())
        .await
        .ensure()
        .await
        .unwrap_err();
    assert!(
        matches!(err, AnchorError::BucketNotLocked { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn ensure_refuses_keys_that_cannot_make_the_macs() {
    let aws = readback::aws().await;

    // An encryption key behind the alias.
    let alias = alias_name();
    let symmetric = aws
        .kms
        .create_key()
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap()
        .key_id;
    aws.kms
        .create_alias()
        .alias_name(&alias)
        .target_key_id(&symmetric)
        .send()
        .await
        .unwrap();
    let err = anchor(&bucket_name(), &alias)
        .await
        .ensure()
        .await
        .unwrap_err();
    match &err {
        AnchorError::UnsuitableKey { key, key_id, why } => {
            assert_eq!((key, key_id), (&alias, &symmetric));
            assert!(why.contains("HMAC_256"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    assert!(!err.is_transient());
    // And it was not replaced by a key of tenantry's making.
    assert_eq!(alias_target(&aws, &alias).await, symmetric);

    // An HMAC key of the right kind, but disabled.
    let disabled = aws
        .kms
        .create_key()
        .key_spec(KeySpec::Hmac256)
        .key_usage(KeyUsageType::GenerateVerifyMac)
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap()
        .key_id;
    aws.kms
        .disable_key()
        .key_id(&disabled)
        .send()
        .await
        .unwrap();
    let err = anchor(&bucket_name(), &disabled)
        .await
        .ensure()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AnchorError::UnsuitableKey { why, .. } if why.contains("Disabled")),
        "{err:?}"
    );

    // A key id that names nothing: tenantry cannot choose a key's id, so it
    // creates keys only behind an alias.
    let missing = "0b0b0b0b-1111-2222-3333-444444444444";
    let err = anchor(&bucket_name(), missing)
        .await
        .ensure()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AnchorError::KeyNotFound { key } if key == missing),
        "{err:?}"
    );
}

#[tokio::test]
async fn macs_verify_and_any_change_to_message_or_mac_does_not() {
    let (anchor, _aws) = ready_anchor().await;
    let message = br#"{"seq":1,"heads":{"acme":"00ff"}}"#;
    let mac = anchor.mac(message).await.unwrap();
    assert_eq!(mac.len(), 32, "HMAC-SHA-256");
    assert_eq!(anchor.mac(message).await.unwrap(), mac, "deterministic");
    assert!(anchor.verify_mac(message, &mac).await.unwrap());

    let mut changed = message.to_vec();
    changed[10] ^= 1;
    assert!(!anchor.verify_mac(&changed, &mac).await.unwrap());
    let mut flipped = mac.clone();
    flipped[0] ^= 0x80;
    assert!(!anchor.verify_mac(message, &flipped).await.unwrap());
    assert!(!anchor.verify_mac(message, &mac[..31]).await.unwrap());
    assert!(!anchor.verify_mac(message, &[]).await.unwrap());

    // Longer than the 4096 bytes KMS takes as a message: the digest is MAC'd.
    let long = vec![b'x'; 100_000];
    let long_mac = anchor.mac(&long).await.unwrap();
    assert!(anchor.verify_mac(&long, &long_mac).await.unwrap());

    // Another key's MAC of the same message does not verify with this one.
    let (other, _) = ready_anchor().await;
    let foreign = other.mac(message).await.unwrap();
    assert!(!anchor.verify_mac(message, &foreign).await.unwrap());
}

#[tokio::test]
async fn checkpoints_come_back_in_seq_order_locked_in_compliance_mode() {
    let (anchor, aws) = ready_anchor().await;
    let bucket = anchor.bucket().to_string();
    // Written out of order, and with seqs whose decimal text sorts differently.
    for seq in [10, 2, 9] {
        anchor
            .put_checkpoint(seq, format!("{{\"seq\":{seq}}}").as_bytes())
            .await
            .unwrap();
    }
    let got = anchor.checkpoints().await.unwrap();
    let expected: Vec<(i64, Vec<u8>)> = [2, 9, 10]
        .into_iter()
        .map(|s| (s, format!("{{\"seq\":{s}}}").into_bytes()))
        .collect();
    assert_eq!(got, expected);

    // Each object is locked until about now + retention. (moto does not
    // implement GetObjectRetention; HeadObject carries the same.)
    let head = aws
        .s3
        .head_object()
        .bucket(&bucket)
        .key(anchor.checkpoint_key(2))
        .send()
        .await
        .unwrap();
    assert_eq!(head.object_lock_mode(), Some(&ObjectLockMode::Compliance));
    let until = head.object_lock_retain_until_date().unwrap().secs();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let expected_until = now + DAY.as_secs() as i64;
    assert!(
        (expected_until - 120..=expected_until + 1).contains(&until),
        "retain until {until}, expected about {expected_until}"
    );

    // An object in the prefix that is not a checkpoint is skipped.
    aws.s3
        .put_object()
        .bucket(&bucket)
        .key("checkpoints/notes.txt")
        .body(ByteStream::from_static(b"hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(anchor.checkpoints().await.unwrap(), expected);
}

#[tokio::test]
async fn a_checkpoint_cannot_be_deleted_or_replaced_with_the_same_credentials() {
    let (anchor, aws) = ready_anchor().await;
    let bucket = anchor.bucket().to_string();
    for seq in 1..=3 {
        anchor
            .put_checkpoint(seq, format!("original {seq}").as_bytes())
            .await
            .unwrap();
    }
    let key = anchor.checkpoint_key(2);
    let versions = aws
        .s3
        .list_object_versions()
        .bucket(&bucket)
        .prefix(&key)
        .send()
        .await
        .unwrap();
    let version = versions.versions()[0].version_id().unwrap().to_string();

    // Deleting the locked version is refused, bypass header or not
    // (COMPLIANCE has no bypass).
    for bypass in [false, true] {
        let err = aws
            .s3
            .delete_object()
            .bucket(&bucket)
            .key(&key)
            .version_id(&version)
            .bypass_governance_retention(bypass)
            .send()
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some("AccessDenied"), "bypass {bypass}: {err:?}");
    }
    let batch = aws
        .s3
        .delete_objects()
        .bucket(&bucket)
        .delete(
            aws_sdk_s3::types::Delete::builder()
                .objects(
                    aws_sdk_s3::types::ObjectIdentifier::builder()
                        .key(&key)
                        .version_id(&version)
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert!(batch.deleted().is_empty(), "{batch:?}");
    assert_eq!(batch.errors().len(), 1, "{batch:?}");
    // Nor can the bucket go.
    let err = aws
        .s3
        .delete_bucket()
        .bucket(&bucket)
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("BucketNotEmpty"), "{err:?}");

    // A newer version over the key, and a delete marker over another: the
    // versions tenantry wrote are what is read.
    aws.s3
        .put_object()
        .bucket(&bucket)
        .key(&key)
        .body(ByteStream::from_static(b"forged 2"))
        .send()
        .await
        .unwrap();
    aws.s3
        .delete_object()
        .bucket(&bucket)
        .key(anchor.checkpoint_key(3))
        .send()
        .await
        .unwrap();
    let current = aws
        .s3
        .get_object()
        .bucket(&bucket)
        .key(&key)
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    assert_eq!(
        &current[..],
        b"forged 2",
        "the forgery is the current version"
    );
    let got = anchor.checkpoints().await.unwrap();
    assert_eq!(
        got,
        vec![
            (1, b"original 1".to_vec()),
            (2, b"original 2".to_vec()),
            (3, b"original 3".to_vec()),
        ]
    );
}

#[tokio::test]
async fn a_seq_is_written_once_and_a_retry_of_the_same_write_succeeds() {
    let (anchor, aws) = ready_anchor().await;
    let bucket = anchor.bucket().to_string();
    anchor.put_checkpoint(7, b"seven").await.unwrap();
    // The same body again: a retry whose first answer was lost.
    anchor.put_checkpoint(7, b"seven").await.unwrap();
    let err = anchor.put_checkpoint(7, b"other").await.unwrap_err();
    assert!(
        matches!(&err, AnchorError::CheckpointExists { seq: 7, .. }),
        "{err:?}"
    );
    assert!(!err.is_transient());

    // Under a delete marker the key looks absent to If-None-Match, but the
    // locked version is still the first: a different body is refused there
    // too, the same body accepted.
    aws.s3
        .delete_object()
        .bucket(&bucket)
        .key(anchor.checkpoint_key(7))
        .send()
        .await
        .unwrap();
    let err = anchor.put_checkpoint(7, b"other").await.unwrap_err();
    assert!(
        matches!(&err, AnchorError::CheckpointExists { seq: 7, .. }),
        "{err:?}"
    );
    anchor.put_checkpoint(7, b"seven").await.unwrap();
    assert_eq!(
        anchor.checkpoints().await.unwrap(),
        vec![(7, b"seven".to_vec())]
    );

    // A seq someone else wrote first (a planted version) is not taken over.
    let planted = anchor.checkpoint_key(8);
    aws.s3
        .put_object()
        .bucket(&bucket)
        .key(&planted)
        .body(ByteStream::from_static(b"planted"))
        .send()
        .await
        .unwrap();
    let err = anchor.put_checkpoint(8, b"eight").await.unwrap_err();
    assert!(
        matches!(&err, AnchorError::CheckpointExists { seq: 8, .. }),
        "{err:?}"
    );
}
