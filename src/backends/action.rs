//! What the audit trail records a change as: one variant per kind of
//! change, written as the dotted name every trail so far holds
//! (`kms.key.create`), so old and new rows read alike.

macro_rules! actions {
    ($($variant:ident => $name:literal,)*) => {
        /// The kind of a change in the audit trail.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Action {
            $($variant,)*
        }

        impl Action {
            /// Every action, for lookups and tests.
            pub const ALL: &[Action] = &[$(Action::$variant,)*];

            /// The name stored in the trail.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Action::$variant => $name,)*
                }
            }
        }
    };
}

actions! {
    DriftDetected => "drift.detected",
    DriftRepair => "drift.repair",
    IamRoleAdopt => "iam.role.adopt",
    IamRoleBoundary => "iam.role.boundary",
    IamRoleCreate => "iam.role.create",
    IamRoleDelete => "iam.role.delete",
    IamRolePolicy => "iam.role.policy",
    IamRolePolicyDelete => "iam.role.policy.delete",
    IamRolePolicyDetach => "iam.role.policy.detach",
    IamRoleRelease => "iam.role.release",
    IamRoleRestore => "iam.role.restore",
    IamRoleRevoke => "iam.role.revoke",
    IamRoleTag => "iam.role.tag",
    IamRoleTrust => "iam.role.trust",
    IamRoleUntag => "iam.role.untag",
    KmsAliasCreate => "kms.alias.create",
    KmsAliasDelete => "kms.alias.delete",
    KmsAliasUpdate => "kms.alias.update",
    KmsKeyAdopt => "kms.key.adopt",
    KmsKeyCancelDeletion => "kms.key.cancel-deletion",
    KmsKeyCreate => "kms.key.create",
    KmsKeyDelete => "kms.key.delete",
    KmsKeyEnable => "kms.key.enable",
    KmsKeyEnableRotation => "kms.key.enable-rotation",
    KmsKeyPolicy => "kms.key.policy",
    KmsKeyReset => "kms.key.reset",
    KmsKeyTag => "kms.key.tag",
    KmsKeyUntag => "kms.key.untag",
    KubernetesSecretAdopt => "kubernetes.secret.adopt",
    KubernetesSecretDelete => "kubernetes.secret.delete",
    KubernetesSecretRelease => "kubernetes.secret.release",
    KubernetesSecretWrite => "kubernetes.secret.write",
    KubernetesServiceAccountDelete => "kubernetes.service-account.delete",
    KubernetesServiceAccountWrite => "kubernetes.service-account.write",
    PostgresAccessGrant => "postgres.access.grant",
    PostgresAccessRevoke => "postgres.access.revoke",
    PostgresDatabaseAlter => "postgres.database.alter",
    PostgresDatabaseCreate => "postgres.database.create",
    PostgresDatabaseDrop => "postgres.database.drop",
    PostgresPublicSchemaSecure => "postgres.public-schema.secure",
    PostgresRelease => "postgres.release",
    PostgresRoleAdopt => "postgres.role.adopt",
    PostgresRoleAlter => "postgres.role.alter",
    PostgresRoleCreate => "postgres.role.create",
    PostgresRoleDrop => "postgres.role.drop",
    PostgresRoleLoginDisable => "postgres.role.login.disable",
    PostgresRoleLoginEnable => "postgres.role.login.enable",
    PostgresRoleSearchPath => "postgres.role.search-path",
    PostgresRoleTimeouts => "postgres.role.timeouts",
    PostgresSchemaAlter => "postgres.schema.alter",
    PostgresSchemaCreate => "postgres.schema.create",
    PostgresSchemaDrop => "postgres.schema.drop",
    PostgresSharedRowsDelete => "postgres.shared-rows.delete",
    ProvisionStepFailed => "provision.step.failed",
    RollbackDone => "rollback.done",
    RollbackStart => "rollback.start",
    S3BucketAdopt => "s3.bucket.adopt",
    S3BucketBlockPublicAccess => "s3.bucket.block-public-access",
    S3BucketCreate => "s3.bucket.create",
    S3BucketDelete => "s3.bucket.delete",
    S3BucketEncryption => "s3.bucket.encryption",
    S3BucketOwnershipControls => "s3.bucket.ownership-controls",
    S3BucketPolicy => "s3.bucket.policy",
    S3BucketPolicyDelete => "s3.bucket.policy.delete",
    S3BucketReset => "s3.bucket.reset",
    S3BucketTag => "s3.bucket.tag",
    S3BucketVersioning => "s3.bucket.versioning",
    SecretsmanagerSecretCreate => "secretsmanager.secret.create",
    SecretsmanagerSecretDelete => "secretsmanager.secret.delete",
    SecretsmanagerSecretReEncrypt => "secretsmanager.secret.re-encrypt",
    SecretsmanagerSecretReset => "secretsmanager.secret.reset",
    SecretsmanagerSecretRestore => "secretsmanager.secret.restore",
    SecretsmanagerSecretRotate => "secretsmanager.secret.rotate",
    SecretsmanagerSecretTag => "secretsmanager.secret.tag",
    SecretsmanagerSecretUntag => "secretsmanager.secret.untag",
    SecretsmanagerSecretUpdate => "secretsmanager.secret.update",
    TenantDelete => "tenant.delete",
    TenantReleased => "tenant.released",
    TenantResume => "tenant.resume",
    TenantSuspend => "tenant.suspend",
    TenantTombstone => "tenant.tombstone",
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_dotted_and_lowercase() {
        let names: std::collections::BTreeSet<_> = Action::ALL.iter().map(|a| a.as_str()).collect();
        assert_eq!(names.len(), Action::ALL.len());
        for name in names {
            assert!(name.contains('.'), "{name}");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-'),
                "{name}"
            );
        }
    }
}
