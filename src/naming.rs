//! Deterministic names of every external resource of a tenant.
//!
//! Names are derived from the tenant name alone, so a retry after a crash finds
//! what an earlier attempt made instead of making a second one. Ownership is
//! never inferred from a name: it is read from the tag or comment that carries
//! the Tenant's uid.

use std::fmt;
use std::str::FromStr;

use crate::api::validate_tenant_name;

/// Prefix of PostgreSQL identifiers owned by tenantry. It keeps tenant objects
/// apart from system names (`public`, `postgres`, `pg_*`, `template0`, ...).
pub const PG_PREFIX: &str = "t_";

/// Every name tenantry uses for one tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantNames {
    pub tenant: String,
    /// PostgreSQL login role of the tenant.
    pub role: String,
    /// Schema of the tenant (in the shared database, or in its own database).
    pub schema: String,
    /// Dedicated database (isolation mode `Database`).
    pub database: String,
    pub bucket: String,
    pub key_alias: String,
    pub secret_name: String,
    /// IAM role of the tenant's workloads (path `/tenantry/`), when its
    /// class gives it one.
    pub iam_role: String,
}

impl TenantNames {
    /// Derives the names, refusing tenant names that would not map one-to-one
    /// onto valid external names.
    pub fn new(tenant: &str, bucket_prefix: &str) -> Result<Self, String> {
        validate_tenant_name(tenant)?;
        let ident = format!("{PG_PREFIX}{}", tenant.replace('-', "_"));
        let bucket = format!("{bucket_prefix}-{tenant}");
        validate_bucket_name(&bucket)?;
        Ok(Self {
            tenant: tenant.to_string(),
            role: ident.clone(),
            schema: ident.clone(),
            database: ident,
            bucket,
            key_alias: format!("alias/tenantry/{tenant}"),
            secret_name: format!("tenantry/{tenant}/database"),
            iam_role: iam_role_name(bucket_prefix, tenant),
        })
    }
}

/// The IAM role of a tenant's workloads. IAM allows 64 characters: a
/// 20-character prefix and a 40-character tenant name fit.
pub fn iam_role_name(bucket_prefix: &str, tenant: &str) -> String {
    format!("{bucket_prefix}-{tenant}")
}

/// Validates a bucket prefix on its own, so a bad operator flag is reported at
/// start instead of on the first tenant.
pub fn validate_bucket_prefix(prefix: &str) -> Result<(), String> {
    // The longest tenant name must still fit.
    validate_bucket_name(&format!(
        "{prefix}-{}",
        "a".repeat(crate::api::TENANT_NAME_MAX)
    ))
    .map_err(|e| format!("bucket prefix {prefix:?} is not usable: {e}"))
}

/// S3 general purpose bucket naming rules that a prefix could break.
fn validate_bucket_name(bucket: &str) -> Result<(), String> {
    let ok_chars = bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let first_ok = bucket
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !(3..=63).contains(&bucket.len()) || !ok_chars || !first_ok || bucket.contains("..") {
        return Err(format!(
            "bucket name {bucket:?} is not a valid S3 bucket name (3-63 lowercase letters, digits, '-' or '.', starting with a letter or digit)"
        ));
    }
    if bucket.starts_with("xn--") || bucket.starts_with("sthree-") || bucket.ends_with("-s3alias") {
        return Err(format!(
            "bucket name {bucket:?} uses a prefix or suffix S3 reserves"
        ));
    }
    Ok(())
}

/// Quotes a PostgreSQL identifier: always double-quoted, inner quotes doubled,
/// so no name can change the meaning of a statement.
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Quotes a PostgreSQL string literal for the few statements (COMMENT ON,
/// CREATE ROLE ... PASSWORD) that take no bound parameters. Assumes
/// `standard_conforming_strings=on`, the default since PostgreSQL 9.1, which
/// the PostgreSQL backend checks at connect time.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A table shared by all tenants, with a column naming each row's tenant.
/// Row-level security keeps every tenant to its own rows.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SharedTable {
    pub schema: String,
    pub table: String,
    pub tenant_column: String,
}

impl FromStr for SharedTable {
    type Err = String;

    /// Parses `schema.table:column`, e.g. `public.orders:tenant_id`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || format!("shared table {s:?} must look like schema.table:tenant_column");
        let (qualified, column) = s.split_once(':').ok_or_else(err)?;
        let (schema, table) = qualified.split_once('.').ok_or_else(err)?;
        if [schema, table, column]
            .iter()
            .any(|p| p.is_empty() || p.len() > 63)
        {
            return Err(err());
        }
        Ok(Self {
            schema: schema.to_string(),
            table: table.to_string(),
            tenant_column: column.to_string(),
        })
    }
}

impl fmt::Display for SharedTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}:{}", self.schema, self.table, self.tenant_column)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_follow_the_documented_scheme() {
        let n = TenantNames::new("acme-corp", "tenantry-prod").unwrap();
        assert_eq!(n.role, "t_acme_corp");
        assert_eq!(n.schema, "t_acme_corp");
        assert_eq!(n.database, "t_acme_corp");
        assert_eq!(n.bucket, "tenantry-prod-acme-corp");
        assert_eq!(n.key_alias, "alias/tenantry/acme-corp");
        assert_eq!(n.secret_name, "tenantry/acme-corp/database");
    }

    #[test]
    fn reserved_and_malformed_names_are_refused() {
        for bad in ["public", "pg_catalog", "postgres_", "a_b", "-ab", "ab"] {
            // Reserved words that are valid DNS labels still map under the prefix.
            if let Ok(n) = TenantNames::new(bad, "p") {
                assert!(n.role.starts_with(PG_PREFIX), "{bad}");
            }
        }
        assert!(TenantNames::new("a_b", "p").is_err());
        assert!(TenantNames::new("Upper", "p").is_err());
    }

    #[test]
    fn a_prefix_that_cannot_make_a_bucket_name_is_refused() {
        assert!(validate_bucket_prefix("Tenantry").is_err());
        assert!(validate_bucket_prefix(&"p".repeat(30)).is_err());
        assert!(validate_bucket_prefix("xn--a").is_err());
        assert!(validate_bucket_prefix("tenantry").is_ok());
    }

    #[test]
    fn quoting_neutralises_quotes() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    proptest! {
        #[test]
        fn distinct_tenants_never_share_an_identifier(a in "[a-z][a-z0-9-]{1,38}[a-z0-9]", b in "[a-z][a-z0-9-]{1,38}[a-z0-9]") {
            let (na, nb) = (TenantNames::new(&a, "p"), TenantNames::new(&b, "p"));
            if let (Ok(na), Ok(nb)) = (na, nb) {
                prop_assert_eq!(a == b, na.role == nb.role);
                prop_assert_eq!(a == b, na.bucket == nb.bucket);
                prop_assert!(na.role.len() <= 63);
            }
        }

        #[test]
        fn quoted_identifiers_round_trip(s in "\\PC{0,40}") {
            let q = quote_ident(&s);
            prop_assert!(q.starts_with('"') && q.ends_with('"'));
            let inner = &q[1..q.len() - 1];
            prop_assert_eq!(inner.replace("\"\"", "\""), s);
            // No lone quote survives inside: every '"' comes in pairs.
            prop_assert_eq!(inner.matches('"').count() % 2, 0);
        }
    }
}
