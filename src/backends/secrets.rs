//! AWS Secrets Manager: the tenant's database credentials, as JSON, encrypted
//! with the tenant's KMS key.
//!
//! The stored password always wins over the one a caller proposes: a password
//! already handed to applications must not change because a step was retried.
//! No secret value is ever logged or put into an error.

use std::collections::BTreeMap;

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::operation::describe_secret::DescribeSecretOutput;
use aws_sdk_secretsmanager::types::Tag;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use super::Action;
use super::aws::{classify, conflict, desired_tags, error_code, tag_changes, tag_pairs};
use super::{Backend, BackendError, DatabaseCredentials, Operation, Ownership, SecretStore, tags};

const BACKEND: Backend = Backend::SecretsManager;

pub struct SecretsManagerBackend {
    client: Client,
}

impl SecretsManagerBackend {
    pub fn new(config: &SdkConfig) -> Self {
        Self {
            client: super::aws::secrets_client(config),
        }
    }

    async fn describe(&self, name: &str) -> Result<Option<DescribeSecretOutput>, BackendError> {
        match self.client.describe_secret().secret_id(name).send().await {
            Ok(out) => Ok(Some(out)),
            Err(e) if error_code(&e) == Some("ResourceNotFoundException") => Ok(None),
            Err(e) => Err(classify(BACKEND, &format!("DescribeSecret {name}"), e)),
        }
    }

    /// Creates the secret; `Ok(None)` when it already exists (made
    /// concurrently, or by an attempt whose answer was lost).
    async fn create(
        &self,
        op: &Operation,
        name: &str,
        key_arn: &str,
        initial: &DatabaseCredentials,
    ) -> Result<Option<String>, BackendError> {
        let tenant = &op.tenant;
        let value = serialize(initial)?;
        let created = self
            .client
            .create_secret()
            .name(name)
            .description(format!(
                "tenantry: database credentials of tenant {}",
                tenant.name
            ))
            .kms_key_id(key_arn)
            .secret_string(value.expose_secret())
            .set_tags(Some(secret_tags(&desired_tags(tenant))))
            // Deterministic, so an identical retry of a create whose answer
            // was lost succeeds instead of failing or making a new version.
            .client_request_token(request_token(&tenant.uid))
            .send()
            .await;
        match created {
            Ok(out) => {
                tracing::info!(tenant = %tenant.name, secret = name, "created Secrets Manager secret");
                let arn = out.arn.unwrap_or_default();
                // Never the value: only where it is and what encrypts it.
                op.note(Action::SecretsmanagerSecretCreate, &arn, serde_json::json!({"name": name, "kmsKeyArn": key_arn, "username": initial.username})).await?;
                Ok(Some(arn))
            }
            Err(e) if error_code(&e) == Some("ResourceExistsException") => Ok(None),
            Err(e) => Err(classify(BACKEND, &format!("CreateSecret {name}"), e)),
        }
    }

    async fn restore(&self, op: &Operation, name: &str) -> Result<(), BackendError> {
        self.client
            .restore_secret()
            .secret_id(name)
            .send()
            .await
            .map_err(|e| classify(BACKEND, &format!("RestoreSecret {name}"), e))?;
        op.note(
            Action::SecretsmanagerSecretRestore,
            name,
            serde_json::json!({}),
        )
        .await?;
        Ok(())
    }

    async fn set_tags(
        &self,
        op: &Operation,
        name: &str,
        set: &BTreeMap<String, String>,
    ) -> Result<(), BackendError> {
        self.client
            .tag_resource()
            .secret_id(name)
            .set_tags(Some(secret_tags(set)))
            .send()
            .await
            .map_err(|e| classify(BACKEND, &format!("TagResource {name}"), e))?;
        op.note(
            Action::SecretsmanagerSecretTag,
            name,
            serde_json::json!({"tags": set}),
        )
        .await?;
        Ok(())
    }

    /// Takes from a released secret what tenantry never sets and someone
    /// may have added while no Tenant held it: a resource policy (another
    /// principal reading every new value) and a rotation schedule (a Lambda
    /// of theirs handed each new password).
    async fn reset_released(
        &self,
        op: &Operation,
        name: &str,
        described: &DescribeSecretOutput,
    ) -> Result<(), BackendError> {
        let policy = self
            .client
            .get_resource_policy()
            .secret_id(name)
            .send()
            .await
            .map_err(|e| classify(BACKEND, &format!("GetResourcePolicy {name}"), e))?;
        let had_policy = policy.resource_policy().is_some_and(|p| !p.is_empty());
        if had_policy {
            self.client
                .delete_resource_policy()
                .secret_id(name)
                .send()
                .await
                .map_err(|e| classify(BACKEND, &format!("DeleteResourcePolicy {name}"), e))?;
        }
        let had_rotation = described.rotation_enabled() == Some(true);
        if had_rotation {
            self.client
                .cancel_rotate_secret()
                .secret_id(name)
                .send()
                .await
                .map_err(|e| classify(BACKEND, &format!("CancelRotateSecret {name}"), e))?;
        }
        if had_policy || had_rotation {
            op.note(
                Action::SecretsmanagerSecretReset,
                name,
                serde_json::json!({"why": "adopted a released secret", "resourcePolicyDeleted": had_policy, "rotationCancelled": had_rotation}),
            )
            .await?;
        }
        Ok(())
    }

    /// The current value, or `None` when the secret has none (or only a
    /// binary one).
    async fn current_value(&self, name: &str) -> Result<Option<SecretString>, BackendError> {
        match self.client.get_secret_value().secret_id(name).send().await {
            Ok(out) => Ok(out.secret_string.map(SecretString::from)),
            Err(e) if error_code(&e) == Some("ResourceNotFoundException") => Ok(None),
            Err(e) => Err(classify(BACKEND, &format!("GetSecretValue {name}"), e)),
        }
    }

    async fn converge(
        &self,
        op: &Operation,
        name: &str,
        key_arn: &str,
        initial: &DatabaseCredentials,
        described: DescribeSecretOutput,
    ) -> Result<(String, DatabaseCredentials), BackendError> {
        let tenant = &op.tenant;
        let current_tags = tag_map(&described);
        let adopting = self.claim(op, name, &current_tags).await?;
        let arn = described.arn().unwrap_or_default().to_string();

        // Before anything else: a secret scheduled for deletion refuses tags
        // and new values.
        if described.deleted_date().is_some() {
            self.restore(op, name).await?;
            tracing::info!(tenant = %tenant.name, secret = name, "restored the tenant's secret from scheduled deletion");
        }

        // An adopted secret's password was known to whoever held the name
        // before (and to anyone who could read the secret since): the new
        // Tenant gets the password it brought. Written before the released
        // tag goes, so a retry after a crash in between rotates again.
        let mut under_key = described.kms_key_id() == Some(key_arn);
        if adopting {
            self.rotate_adopted(op, name, key_arn, initial, &described)
                .await?;
            under_key = true;
        }

        self.converge_tags(op, name, &current_tags).await?;
        let credentials = self
            .converge_value(op, name, key_arn, initial, under_key)
            .await?;
        Ok((arn, credentials))
    }

    /// Whether the existing secret is a released one being adopted; an error
    /// when it is not this tenant's to take.
    async fn claim(
        &self,
        op: &Operation,
        name: &str,
        current_tags: &BTreeMap<String, String>,
    ) -> Result<bool, BackendError> {
        match op.tenant.ownership_of(tag_pairs(current_tags)) {
            Ownership::Ours => Ok(false),
            Ownership::Released => {
                op.require_recorded_release(BACKEND, &format!("secret {name}"), name)
                    .await?;
                op.note_adopted_release();
                Ok(true)
            }
            // CreateSecret tags at creation, so an untagged secret was never
            // made by tenantry, interrupted or not.
            Ownership::Untagged => Err(conflict(
                BACKEND,
                format!("secret {name}"),
                "it exists without tenantry's ownership tags",
            )),
            Ownership::Foreign(detail) => Err(conflict(BACKEND, format!("secret {name}"), detail)),
        }
    }

    /// Gives an adopted secret the adopting tenant's password, under its key.
    async fn rotate_adopted(
        &self,
        op: &Operation,
        name: &str,
        key_arn: &str,
        initial: &DatabaseCredentials,
        described: &DescribeSecretOutput,
    ) -> Result<(), BackendError> {
        // First what others may have added while no Tenant held it, so
        // that none of them reads the new password.
        self.reset_released(op, name, described).await?;
        self.client
            .update_secret()
            .secret_id(name)
            .kms_key_id(key_arn)
            .secret_string(serialize(initial)?.expose_secret())
            .send()
            .await
            .map_err(|e| classify(BACKEND, &format!("UpdateSecret {name}"), e))?;
        op.note(
            Action::SecretsmanagerSecretRotate,
            name,
            serde_json::json!({"why": "adopted a released secret", "kmsKeyArn": key_arn}),
        )
        .await?;
        tracing::info!(tenant = %op.tenant.name, secret = name, "adopted the released secret with a new password");
        Ok(())
    }

    async fn converge_tags(
        &self,
        op: &Operation,
        name: &str,
        current_tags: &BTreeMap<String, String>,
    ) -> Result<(), BackendError> {
        let (set, drop_released) = tag_changes(current_tags, &desired_tags(&op.tenant));
        if !set.is_empty() {
            self.set_tags(op, name, &set).await?;
        }
        if drop_released {
            self.client
                .untag_resource()
                .secret_id(name)
                .tag_keys(tags::RELEASED)
                .send()
                .await
                .map_err(|e| classify(BACKEND, &format!("UntagResource {name}"), e))?;
            op.note(
                Action::SecretsmanagerSecretUntag,
                name,
                serde_json::json!({"tags": [tags::RELEASED]}),
            )
            .await?;
        }
        Ok(())
    }

    /// Brings the stored value to the current connection details (keeping
    /// its password) and under the tenant's key; returns the credentials
    /// the secret now holds.
    async fn converge_value(
        &self,
        op: &Operation,
        name: &str,
        key_arn: &str,
        initial: &DatabaseCredentials,
        under_key: bool,
    ) -> Result<DatabaseCredentials, BackendError> {
        let stored = self.current_value(name).await?;
        let (credentials, rewrite) = merge_stored(stored.as_ref(), initial);
        let new_value = if rewrite {
            tracing::info!(tenant = %op.tenant.name, secret = name, "updating the connection details in the tenant's secret, keeping its password");
            Some(serialize(&credentials)?)
        } else {
            None
        };

        if !under_key {
            // UpdateSecret with a value writes a new current version, which
            // is what moves the value under the tenant's key; a bare KmsKeyId
            // change would only apply to later versions.
            let value = match (new_value, stored) {
                (Some(v), _) => v,
                (None, Some(v)) => v,
                (None, None) => serialize(&credentials)?,
            };
            self.re_encrypt(op, name, key_arn, &value, rewrite).await?;
        } else if let Some(value) = new_value {
            self.client
                .put_secret_value()
                .secret_id(name)
                .secret_string(value.expose_secret())
                .send()
                .await
                .map_err(|e| classify(BACKEND, &format!("PutSecretValue {name}"), e))?;
            op.note(
                Action::SecretsmanagerSecretUpdate,
                name,
                serde_json::json!({"why": "connection details changed; password kept"}),
            )
            .await?;
        }
        Ok(credentials)
    }

    async fn re_encrypt(
        &self,
        op: &Operation,
        name: &str,
        key_arn: &str,
        value: &SecretString,
        rewrite: bool,
    ) -> Result<(), BackendError> {
        self.client
            .update_secret()
            .secret_id(name)
            .kms_key_id(key_arn)
            .secret_string(value.expose_secret())
            .send()
            .await
            .map_err(|e| classify(BACKEND, &format!("UpdateSecret {name}"), e))?;
        op.note(
            Action::SecretsmanagerSecretReEncrypt,
            name,
            serde_json::json!({"kmsKeyArn": key_arn, "valueRewritten": rewrite}),
        )
        .await?;
        tracing::info!(tenant = %op.tenant.name, secret = name, "re-encrypted the tenant's secret with the tenant's key");
        Ok(())
    }
}

#[async_trait]
impl SecretStore for SecretsManagerBackend {
    async fn ensure_secret(
        &self,
        op: &Operation,
        name: &str,
        key_arn: &str,
        initial: &DatabaseCredentials,
    ) -> Result<(String, DatabaseCredentials), BackendError> {
        let described = match self.describe(name).await? {
            Some(d) => d,
            None => match self.create(op, name, key_arn, initial).await? {
                Some(arn) => return Ok((arn, initial.clone())),
                None => self
                    .describe(name)
                    .await?
                    .ok_or_else(|| BackendError::Unavailable {
                        backend: BACKEND,
                        message: format!("secret {name} exists and vanished while being read"),
                    })?,
            },
        };
        self.converge(op, name, key_arn, initial, described).await
    }

    async fn read_secret(
        &self,
        name: &str,
    ) -> Result<Option<(String, DatabaseCredentials)>, BackendError> {
        let out = match self.client.get_secret_value().secret_id(name).send().await {
            Ok(out) => out,
            Err(e) if error_code(&e) == Some("ResourceNotFoundException") => return Ok(None),
            Err(e) => return Err(classify(BACKEND, &format!("GetSecretValue {name}"), e)),
        };
        let (Some(arn), Some(value)) = (out.arn, out.secret_string) else {
            return Ok(None);
        };
        // A value that does not parse is reported as missing: the error
        // text could quote the value.
        Ok(serde_json::from_str::<DatabaseCredentials>(&value)
            .ok()
            .map(|c| (arn, c)))
    }

    async fn remove_secret(&self, op: &Operation, name: &str) -> Result<(), BackendError> {
        let tenant = &op.tenant;
        let Some(described) = self.describe(name).await? else {
            return Ok(());
        };
        let owner = tenant.ownership_of(tag_pairs(&tag_map(&described)));
        if owner != Ownership::Ours {
            tracing::warn!(tenant = %tenant.name, secret = name, ?owner, "not removing a secret that is not this tenant's");
            return Ok(());
        }
        if described.deleted_date().is_some() {
            // Someone scheduled it for deletion with a recovery window; that
            // keeps the name taken for days, and Secrets Manager refuses a
            // forced deletion of a scheduled secret.
            self.restore(op, name).await?;
        }
        match self
            .client
            .delete_secret()
            .secret_id(name)
            .force_delete_without_recovery(true)
            .send()
            .await
        {
            Ok(_) => {}
            Err(e) if error_code(&e) == Some("ResourceNotFoundException") => {}
            Err(e) => return Err(classify(BACKEND, &format!("DeleteSecret {name}"), e)),
        }
        tracing::info!(tenant = %tenant.name, secret = name, "deleted Secrets Manager secret");
        op.note(
            Action::SecretsmanagerSecretDelete,
            described.arn().unwrap_or(name),
            serde_json::json!({"name": name, "recoveryWindow": false}),
        )
        .await?;
        Ok(())
    }

    async fn release_secret(&self, op: &Operation, name: &str) -> Result<(), BackendError> {
        let tenant = &op.tenant;
        let Some(described) = self.describe(name).await? else {
            return Ok(());
        };
        let current = tag_map(&described);
        let owner = tenant.ownership_of(tag_pairs(&current));
        if owner != Ownership::Ours {
            tracing::warn!(tenant = %tenant.name, secret = name, ?owner, "not releasing a secret that is not this tenant's");
            return Ok(());
        }
        if current.get(tags::RELEASED).map(String::as_str) == Some("true") {
            return Ok(());
        }
        self.set_tags(
            op,
            name,
            &BTreeMap::from([(tags::RELEASED.to_string(), "true".to_string())]),
        )
        .await
    }
}

fn tag_map(described: &DescribeSecretOutput) -> BTreeMap<String, String> {
    described
        .tags()
        .iter()
        .filter_map(|t| {
            Some((
                t.key()?.to_string(),
                t.value().unwrap_or_default().to_string(),
            ))
        })
        .collect()
}

fn secret_tags(tags: &BTreeMap<String, String>) -> Vec<Tag> {
    tags.iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
}

fn serialize(credentials: &DatabaseCredentials) -> Result<SecretString, BackendError> {
    serde_json::to_string(credentials)
        .map(SecretString::from)
        // The serde message could quote the value: keep it out.
        .map_err(|_| BackendError::Rejected {
            backend: BACKEND,
            message: "the database credentials could not be serialized".to_string(),
        })
}

/// A ClientRequestToken (32 to 64 characters) that depends on the tenant
/// alone. A Kubernetes uid (36 characters) is used as is, for people reading
/// CloudTrail; anything else is hashed to fit.
fn request_token(uid: &str) -> String {
    let readable = format!("tenantry-{uid}");
    if (32..=64).contains(&readable.len())
        && uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return readable;
    }
    let digest = Sha256::digest(uid.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("tenantry-{}", &hex[..55])
}

/// The credentials to keep, from what is stored and what the caller proposes,
/// and whether the stored value must be rewritten. The stored password wins;
/// where to connect and as whom come from `initial`, which reflects the
/// current configuration.
fn merge_stored(
    stored: Option<&SecretString>,
    initial: &DatabaseCredentials,
) -> (DatabaseCredentials, bool) {
    let Some(stored) = stored else {
        return (initial.clone(), true);
    };
    if let Ok(current) = serde_json::from_str::<DatabaseCredentials>(stored.expose_secret()) {
        let same_place = current.username == initial.username
            && current.host == initial.host
            && current.port == initial.port
            && current.database == initial.database
            && current.schema == initial.schema;
        if same_place {
            return (current, false);
        }
        let merged = DatabaseCredentials {
            password: current.password,
            ..initial.clone()
        };
        return (merged, true);
    }
    // Not our shape (edited by hand?): keep a password if there is one.
    let password = serde_json::from_str::<serde_json::Value>(stored.expose_secret())
        .ok()
        .and_then(|v| {
            v.get("password")?
                .as_str()
                .filter(|p| !p.is_empty())
                .map(SecretString::from)
        });
    tracing::warn!("the stored credentials are not in tenantry's format; rewriting them");
    let merged = DatabaseCredentials {
        password: password.unwrap_or_else(|| initial.password.clone()),
        ..initial.clone()
    };
    (merged, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(password: &str, host: &str) -> DatabaseCredentials {
        DatabaseCredentials {
            username: "t_acme".into(),
            password: SecretString::from(password),
            host: host.into(),
            port: 5432,
            database: "app".into(),
            schema: "t_acme".into(),
            engine: "postgres".into(),
        }
    }

    fn stored(c: &DatabaseCredentials) -> SecretString {
        SecretString::from(serde_json::to_string(c).unwrap())
    }

    #[test]
    fn the_stored_password_wins_and_nothing_is_rewritten_when_the_rest_matches() {
        let (merged, rewrite) =
            merge_stored(Some(&stored(&creds("old", "db"))), &creds("new", "db"));
        assert!(!rewrite);
        assert_eq!(merged.password.expose_secret(), "old");
    }

    #[test]
    fn a_moved_database_is_rewritten_with_the_stored_password() {
        let (merged, rewrite) =
            merge_stored(Some(&stored(&creds("old", "db1"))), &creds("new", "db2"));
        assert!(rewrite);
        assert_eq!(merged.password.expose_secret(), "old");
        assert_eq!(merged.host, "db2");
    }

    #[test]
    fn a_missing_or_foreign_shaped_value_is_replaced_keeping_any_password() {
        let (merged, rewrite) = merge_stored(None, &creds("new", "db"));
        assert!(rewrite);
        assert_eq!(merged.password.expose_secret(), "new");

        let odd = SecretString::from(r#"{"password":"kept","user":"x"}"#);
        let (merged, rewrite) = merge_stored(Some(&odd), &creds("new", "db"));
        assert!(rewrite);
        assert_eq!(merged.password.expose_secret(), "kept");
        assert_eq!(merged.username, "t_acme");

        let garbage = SecretString::from("not json");
        let (merged, _) = merge_stored(Some(&garbage), &creds("new", "db"));
        assert_eq!(merged.password.expose_secret(), "new");
    }

    #[test]
    fn request_tokens_are_deterministic_and_within_the_allowed_length() {
        let uid = "0f8fad5b-d9cb-469f-a165-70867728950e";
        assert_eq!(request_token(uid), format!("tenantry-{uid}"));
        assert_eq!(request_token(uid), request_token(uid));
        for uid in ["a", "uid-1", &"x".repeat(100), "weird/uid with spaces"] {
            let t = request_token(uid);
            assert!((32..=64).contains(&t.len()), "{t}");
            assert_eq!(t, request_token(uid));
        }
        assert_ne!(request_token("a"), request_token("b"));
    }
}
