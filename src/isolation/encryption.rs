//! The encryption layer of a tenant, measured: its KMS key is enabled,
//! symmetric, rotating and named by its alias, the Secrets Manager secret
//! holding its database credentials is encrypted with that key, and the key
//! really encrypts and decrypts.
//!
//! The probe only reads, except for one Encrypt and one Decrypt of a constant,
//! which change no state: using the key is the one proof that it is usable
//! that no configuration read can give. It never reads the secret's value.

use aws_config::SdkConfig;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{KeyMetadata, KeySpec, KeyState, KeyUsageType};

use super::{Finding, IsolationState, LayerReport, fail, pass};
use crate::backends::Backend;
use crate::backends::aws::{classify, error_code};

/// The stable ids of the findings this probe reports.
pub mod check {
    pub const KEY_STATE: &str = "key.state";
    pub const KEY_SPEC: &str = "key.spec";
    pub const KEY_ROTATION: &str = "key.rotation";
    pub const KEY_ALIAS: &str = "key.alias";
    pub const KEY_ROUND_TRIP: &str = "key.roundTrip";
    pub const SECRET_KMS_KEY: &str = "secret.kmsKey";
}

/// What the round trip encrypts: a constant, so nothing of the tenant's ever
/// leaves the operator.
const PROBE_PLAINTEXT: &[u8] = b"tenantry isolation probe";
/// Marks the probe's ciphertexts in CloudTrail, and binds them to the probe.
pub(crate) const PROBE_CONTEXT: (&str, &str) = ("tenantry.dev/probe", "key.roundTrip");

pub struct EncryptionProbe {
    kms: aws_sdk_kms::Client,
    secrets: aws_sdk_secretsmanager::Client,
}

impl EncryptionProbe {
    pub fn new(sdk: &SdkConfig) -> Self {
        Self {
            kms: crate::backends::aws::kms_client(sdk),
            secrets: crate::backends::aws::secrets_client(sdk),
        }
    }

    /// Measures the tenant's key (`key_arn`, named by `alias`) and the
    /// encryption of its secret `secret_name`. A key that does not exist any
    /// more yields `key.state` Broken without `key.spec`, `key.rotation` and
    /// `key.roundTrip`, which would only repeat it.
    pub async fn probe(&self, alias: &str, key_arn: &str, secret_name: &str) -> LayerReport {
        let (key, alias_finding, secret_finding) = tokio::join!(
            self.describe(key_arn),
            self.check_alias(alias, key_arn),
            self.check_secret(secret_name, key_arn),
        );
        let mut findings = Vec::with_capacity(6);
        match key {
            Ok(Some(meta)) => {
                findings.push(state_finding(&meta));
                findings.push(spec_finding(&meta));
                let key_id = meta.key_id();
                let (rotation, round_trip) = tokio::join!(
                    self.check_rotation(key_id, key_arn),
                    self.check_round_trip(key_arn)
                );
                findings.push(rotation);
                findings.push(round_trip);
            }
            Ok(None) => findings.push(fail(
                check::KEY_STATE,
                IsolationState::Broken,
                format!("KMS key {key_arn} does not exist"),
            )),
            Err(e) => {
                findings.push(fail(check::KEY_STATE, IsolationState::Unknown, e.clone()));
                findings.push(fail(check::KEY_SPEC, IsolationState::Unknown, e));
                // Neither needs the description: they may still tell something.
                let key_id = KeyRef::parse(key_arn).id().unwrap_or(key_arn).to_string();
                let (rotation, round_trip) = tokio::join!(
                    self.check_rotation(&key_id, key_arn),
                    self.check_round_trip(key_arn)
                );
                findings.push(rotation);
                findings.push(round_trip);
            }
        }
        findings.push(alias_finding);
        findings.push(secret_finding);
        LayerReport::from_findings(findings)
    }

    async fn describe(&self, key: &str) -> Result<Option<KeyMetadata>, String> {
        describe_key(&self.kms, key).await
    }

    async fn check_rotation(&self, key_id: &str, key_arn: &str) -> Finding {
        // The key id, not the ARN: moto refuses ARNs on some key operations.
        match self
            .kms
            .get_key_rotation_status()
            .key_id(key_id)
            .send()
            .await
        {
            Ok(out) if out.key_rotation_enabled() => pass(
                check::KEY_ROTATION,
                format!("automatic rotation of KMS key {key_arn} is on"),
            ),
            Ok(_) => fail(
                check::KEY_ROTATION,
                IsolationState::Inert,
                format!("automatic rotation of KMS key {key_arn} is off"),
            ),
            Err(e) => fail(
                check::KEY_ROTATION,
                IsolationState::Unknown,
                classify(Backend::Kms, &format!("GetKeyRotationStatus {key_id}"), e).to_string(),
            ),
        }
    }

    async fn check_round_trip(&self, key_arn: &str) -> Finding {
        let (context_key, context_value) = PROBE_CONTEXT;
        let encrypted = self
            .kms
            .encrypt()
            .key_id(key_arn)
            .plaintext(Blob::new(PROBE_PLAINTEXT))
            .encryption_context(context_key, context_value)
            .send()
            .await;
        let ciphertext = match encrypted {
            Ok(out) => match out.ciphertext_blob {
                Some(c) => c,
                None => {
                    return fail(
                        check::KEY_ROUND_TRIP,
                        IsolationState::Unknown,
                        format!("Encrypt with KMS key {key_arn} returned no ciphertext"),
                    );
                }
            },
            Err(e) => {
                let state = round_trip_failure(error_code(&e));
                let message = classify(Backend::Kms, &format!("Encrypt with {key_arn}"), e);
                return fail(check::KEY_ROUND_TRIP, state, message.to_string());
            }
        };
        // Naming the key makes KMS refuse to decrypt with any other one.
        let decrypted = self
            .kms
            .decrypt()
            .key_id(key_arn)
            .ciphertext_blob(ciphertext)
            .encryption_context(context_key, context_value)
            .send()
            .await;
        match decrypted {
            Ok(out) if out.plaintext().map(Blob::as_ref) == Some(PROBE_PLAINTEXT) => pass(
                check::KEY_ROUND_TRIP,
                format!("KMS key {key_arn} encrypted and decrypted a probe value"),
            ),
            Ok(_) => fail(
                check::KEY_ROUND_TRIP,
                IsolationState::Broken,
                format!("KMS key {key_arn} decrypted the probe value into something else"),
            ),
            Err(e) => {
                let state = round_trip_failure(error_code(&e));
                let message = classify(Backend::Kms, &format!("Decrypt with {key_arn}"), e);
                fail(check::KEY_ROUND_TRIP, state, message.to_string())
            }
        }
    }

    async fn check_alias(&self, alias: &str, key_arn: &str) -> Finding {
        match describe_key(&self.kms, alias).await {
            Ok(Some(target)) => {
                if target
                    .arn()
                    .is_some_and(|arn| KeyRef::same_key(arn, key_arn))
                    || KeyRef::same_key(target.key_id(), key_arn)
                {
                    pass(
                        check::KEY_ALIAS,
                        format!("{alias} points at KMS key {key_arn}"),
                    )
                } else {
                    fail(
                        check::KEY_ALIAS,
                        IsolationState::Broken,
                        format!(
                            "{alias} points at KMS key {}, not at the tenant's key {key_arn}",
                            target.arn().unwrap_or(target.key_id())
                        ),
                    )
                }
            }
            Ok(None) => fail(
                check::KEY_ALIAS,
                IsolationState::Broken,
                format!("{alias} does not exist"),
            ),
            Err(e) => fail(check::KEY_ALIAS, IsolationState::Unknown, e),
        }
    }

    async fn check_secret(&self, name: &str, key_arn: &str) -> Finding {
        let described = match self.secrets.describe_secret().secret_id(name).send().await {
            Ok(out) => out,
            Err(e) if error_code(&e) == Some("ResourceNotFoundException") => {
                return fail(
                    check::SECRET_KMS_KEY,
                    IsolationState::Broken,
                    format!("secret {name} does not exist"),
                );
            }
            Err(e) => {
                return fail(
                    check::SECRET_KMS_KEY,
                    IsolationState::Unknown,
                    classify(
                        Backend::SecretsManager,
                        &format!("DescribeSecret {name}"),
                        e,
                    )
                    .to_string(),
                );
            }
        };
        let Some(reference) = described.kms_key_id() else {
            return fail(
                check::SECRET_KMS_KEY,
                IsolationState::Broken,
                format!(
                    "secret {name} is encrypted with the AWS managed key aws/secretsmanager, \
                     not the tenant's key {key_arn}"
                ),
            );
        };
        match match_key(&self.kms, reference, key_arn).await {
            Ok(KeyMatch::Same) => pass(
                check::SECRET_KMS_KEY,
                format!("secret {name} is encrypted with KMS key {key_arn}"),
            ),
            Ok(KeyMatch::ViaAlias) => pass(
                check::SECRET_KMS_KEY,
                format!("secret {name} is encrypted with KMS key {key_arn}, through {reference}"),
            ),
            Ok(KeyMatch::Other(other)) => fail(
                check::SECRET_KMS_KEY,
                IsolationState::Broken,
                format!(
                    "secret {name} is encrypted with KMS key {other}, not the tenant's key {key_arn}"
                ),
            ),
            Ok(KeyMatch::MissingAlias) => fail(
                check::SECRET_KMS_KEY,
                IsolationState::Broken,
                format!("secret {name} is encrypted with {reference}, which names no key"),
            ),
            Err(e) => fail(check::SECRET_KMS_KEY, IsolationState::Unknown, e),
        }
    }
}

fn state_finding(meta: &KeyMetadata) -> Finding {
    let key = meta.arn().unwrap_or(meta.key_id());
    match meta.key_state() {
        Some(KeyState::Enabled) => pass(check::KEY_STATE, format!("KMS key {key} is Enabled")),
        // Passing states: the next probe tells where they led.
        Some(s @ (KeyState::Creating | KeyState::Updating)) => fail(
            check::KEY_STATE,
            IsolationState::Unknown,
            format!("KMS key {key} is {s}"),
        ),
        Some(KeyState::PendingDeletion) => {
            let when = meta
                .deletion_date()
                .map(|d| format!(", to be deleted at {d}"))
                .unwrap_or_default();
            fail(
                check::KEY_STATE,
                IsolationState::Broken,
                format!(
                    "KMS key {key} is PendingDeletion{when}: nothing can be encrypted or decrypted with it"
                ),
            )
        }
        Some(s) => fail(
            check::KEY_STATE,
            IsolationState::Broken,
            format!("KMS key {key} is {s}: nothing can be encrypted or decrypted with it"),
        ),
        None => fail(
            check::KEY_STATE,
            IsolationState::Unknown,
            format!("KMS did not say in which state key {key} is"),
        ),
    }
}

fn spec_finding(meta: &KeyMetadata) -> Finding {
    let key = meta.arn().unwrap_or(meta.key_id());
    // moto leaves KeyUsage out of DescribeKey; absent means the default,
    // which is what CreateKey made, as the KMS backend also reads it.
    let spec_ok = meta
        .key_spec()
        .is_none_or(|s| *s == KeySpec::SymmetricDefault);
    let usage_ok = meta
        .key_usage()
        .is_none_or(|u| *u == KeyUsageType::EncryptDecrypt);
    if spec_ok && usage_ok {
        pass(
            check::KEY_SPEC,
            format!("KMS key {key} is a SYMMETRIC_DEFAULT ENCRYPT_DECRYPT key"),
        )
    } else {
        fail(
            check::KEY_SPEC,
            IsolationState::Broken,
            format!(
                "KMS key {key} is a {} {} key: S3 and Secrets Manager need SYMMETRIC_DEFAULT ENCRYPT_DECRYPT",
                meta.key_spec().map_or("?", KeySpec::as_str),
                meta.key_usage().map_or("?", KeyUsageType::as_str),
            ),
        )
    }
}

/// What a failed Encrypt or Decrypt tells about the key: a key KMS refuses
/// to use is Broken; anything else (throttling, the operator's permissions)
/// says nothing about the key.
fn round_trip_failure(code: Option<&str>) -> IsolationState {
    match code {
        Some(
            "DisabledException"
            | "KMSInvalidStateException"
            | "NotFoundException"
            | "IncorrectKeyException"
            | "InvalidCiphertextException",
        ) => IsolationState::Broken,
        _ => IsolationState::Unknown,
    }
}

/// The key a key id, key ARN, alias name or alias ARN names; `None` when
/// there is no such key (or alias).
pub(crate) async fn describe_key(
    kms: &aws_sdk_kms::Client,
    key: &str,
) -> Result<Option<KeyMetadata>, String> {
    match kms.describe_key().key_id(key).send().await {
        Ok(out) => Ok(out.key_metadata),
        Err(e) if error_code(&e) == Some("NotFoundException") => Ok(None),
        Err(e) => Err(classify(Backend::Kms, &format!("DescribeKey {key}"), e).to_string()),
    }
}

/// How a key reference that another service stores (a bucket's default
/// encryption, a secret's KmsKeyId) relates to the tenant's key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum KeyMatch {
    /// It names the tenant's key, by id or ARN.
    Same,
    /// An alias that now points at the tenant's key.
    ViaAlias,
    /// Another key: its ARN, or the reference as stored.
    Other(String),
    /// An alias that points nowhere.
    MissingAlias,
}

/// Compares `reference` with the tenant's key, asking KMS only when the
/// reference is an alias (its target can change, so it must be looked up).
pub(crate) async fn match_key(
    kms: &aws_sdk_kms::Client,
    reference: &str,
    key_arn: &str,
) -> Result<KeyMatch, String> {
    match KeyRef::parse(reference) {
        KeyRef::Key { .. } if KeyRef::same_key(reference, key_arn) => Ok(KeyMatch::Same),
        KeyRef::Key { .. } => Ok(KeyMatch::Other(reference.to_string())),
        KeyRef::Alias { .. } => match describe_key(kms, reference).await? {
            None => Ok(KeyMatch::MissingAlias),
            Some(meta) => {
                let target = meta.arn().unwrap_or(meta.key_id());
                if KeyRef::same_key(target, key_arn) {
                    Ok(KeyMatch::ViaAlias)
                } else {
                    Ok(KeyMatch::Other(format!("{target} (through {reference})")))
                }
            }
        },
    }
}

/// A KMS key reference in one of the forms the AWS APIs accept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum KeyRef<'a> {
    /// `1234abcd-...` or `arn:aws:kms:eu-west-1:111122223333:key/1234abcd-...`;
    /// `scope` is the ARN up to the resource (`arn:aws:kms:eu-west-1:111122223333`).
    Key { scope: Option<&'a str>, id: &'a str },
    /// `alias/name` or `arn:aws:kms:...:alias/name`.
    Alias {
        scope: Option<&'a str>,
        name: &'a str,
    },
}

impl<'a> KeyRef<'a> {
    pub(crate) fn parse(reference: &'a str) -> Self {
        if reference.starts_with("arn:") {
            // The resource follows the fifth colon; ids and aliases hold none.
            if let Some((scope, resource)) = reference.rsplit_once(':') {
                if let Some(id) = resource.strip_prefix("key/") {
                    return Self::Key {
                        scope: Some(scope),
                        id,
                    };
                }
                if resource.starts_with("alias/") {
                    return Self::Alias {
                        scope: Some(scope),
                        name: resource,
                    };
                }
            }
        }
        if reference.starts_with("alias/") {
            return Self::Alias {
                scope: None,
                name: reference,
            };
        }
        Self::Key {
            scope: None,
            id: reference,
        }
    }

    fn id(&self) -> Option<&'a str> {
        match self {
            Self::Key { id, .. } => Some(id),
            Self::Alias { .. } => None,
        }
    }

    /// Whether two references name the same key without asking KMS: the same
    /// key id, in the same account and region when both say which.
    pub(crate) fn same_key(a: &str, b: &str) -> bool {
        match (KeyRef::parse(a), KeyRef::parse(b)) {
            (KeyRef::Key { scope: sa, id: ia }, KeyRef::Key { scope: sb, id: ib }) => {
                ia == ib && (sa.is_none() || sb.is_none() || sa == sb)
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARN: &str = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    const ID: &str = "1234abcd-12ab-34cd-56ef-1234567890ab";

    #[test]
    fn key_references_parse_in_every_form() {
        assert_eq!(
            KeyRef::parse(ARN),
            KeyRef::Key {
                scope: Some("arn:aws:kms:eu-west-1:111122223333"),
                id: ID
            }
        );
        assert_eq!(
            KeyRef::parse(ID),
            KeyRef::Key {
                scope: None,
                id: ID
            }
        );
        assert_eq!(
            KeyRef::parse("alias/tenantry/acme"),
            KeyRef::Alias {
                scope: None,
                name: "alias/tenantry/acme"
            }
        );
        assert_eq!(
            KeyRef::parse("arn:aws:kms:eu-west-1:111122223333:alias/tenantry/acme"),
            KeyRef::Alias {
                scope: Some("arn:aws:kms:eu-west-1:111122223333"),
                name: "alias/tenantry/acme"
            }
        );
    }

    #[test]
    fn a_key_is_the_same_by_id_or_arn_and_only_in_its_own_account_and_region() {
        assert!(KeyRef::same_key(ARN, ARN));
        assert!(KeyRef::same_key(ID, ARN));
        assert!(KeyRef::same_key(ARN, ID));
        assert!(!KeyRef::same_key(
            "arn:aws:kms:eu-west-1:999999999999:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            ARN
        ));
        assert!(!KeyRef::same_key(
            "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            ARN
        ));
        assert!(!KeyRef::same_key(
            "1234abcd-0000-34cd-56ef-1234567890ab",
            ARN
        ));
        // An alias is never judged without asking where it points.
        assert!(!KeyRef::same_key("alias/tenantry/acme", ARN));
    }

    fn meta(state: KeyState) -> KeyMetadata {
        KeyMetadata::builder()
            .key_id(ID)
            .arn(ARN)
            .key_state(state)
            .key_spec(KeySpec::SymmetricDefault)
            .key_usage(KeyUsageType::EncryptDecrypt)
            .build()
            .unwrap()
    }

    #[test]
    fn only_an_enabled_key_is_enforced() {
        assert_eq!(
            state_finding(&meta(KeyState::Enabled)).state,
            IsolationState::Enforced
        );
        for broken in [
            KeyState::Disabled,
            KeyState::PendingDeletion,
            KeyState::PendingImport,
            KeyState::PendingReplicaDeletion,
            KeyState::Unavailable,
        ] {
            let f = state_finding(&meta(broken.clone()));
            assert_eq!(f.state, IsolationState::Broken, "{broken:?}");
            assert!(f.detail.contains(broken.as_str()), "{}", f.detail);
        }
        assert_eq!(
            state_finding(&meta(KeyState::Creating)).state,
            IsolationState::Unknown
        );
    }

    #[test]
    fn an_asymmetric_or_signing_key_is_broken() {
        assert_eq!(
            spec_finding(&meta(KeyState::Enabled)).state,
            IsolationState::Enforced
        );
        let mut rsa = meta(KeyState::Enabled);
        rsa.key_spec = Some(KeySpec::Rsa2048);
        rsa.key_usage = Some(KeyUsageType::SignVerify);
        let f = spec_finding(&rsa);
        assert_eq!(f.state, IsolationState::Broken);
        assert!(f.detail.contains("RSA_2048 SIGN_VERIFY"), "{}", f.detail);
    }

    #[test]
    fn a_round_trip_fails_broken_only_when_kms_refuses_the_key() {
        for code in [
            "DisabledException",
            "KMSInvalidStateException",
            "NotFoundException",
        ] {
            assert_eq!(
                round_trip_failure(Some(code)),
                IsolationState::Broken,
                "{code}"
            );
        }
        for code in [
            Some("ThrottlingException"),
            Some("AccessDeniedException"),
            None,
        ] {
            assert_eq!(
                round_trip_failure(code),
                IsolationState::Unknown,
                "{code:?}"
            );
        }
    }
}
