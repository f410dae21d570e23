//! PostgreSQL: each tenant's login role and the schema (mode `Schema`) or
//! database (mode `Database`) it owns.
//!
//! Written for what managed services (RDS, Cloud SQL) give an operator: an
//! admin role with only LOGIN CREATEROLE CREATEDB, never a superuser. That
//! decides much of the shape below:
//! - the admin grants itself each tenant role (`GRANT <role> TO CURRENT_USER`),
//!   because PostgreSQL 15 requires membership before `CREATE SCHEMA ...
//!   AUTHORIZATION` or `CREATE DATABASE ... OWNER`, and 16+ requires the SET
//!   option, which the automatic grant to a role's creator lacks; membership
//!   (with INHERIT) is also what lets it drop, comment on and end the sessions
//!   of what the tenant owns;
//! - what only a superuser can repair (a tenant role that became SUPERUSER,
//!   BYPASSRLS or REPLICATION) is refused with the exact statement to run;
//! - in a tenant's own database `public` is taken from pg_database_owner (the
//!   tenant) and given to the admin, which on PostgreSQL 15 takes a detour
//!   through the database's ownership (see `deny_create_in_public`).
//!
//! `remove_tenant` and `release_tenant` act on what is the tenant's and leave
//! anything else with the tenant's names alone (logged, not an error), as the
//! other backends do: a rollback after a conflicting `ensure_tenant` has
//! nothing of the tenant's to remove and must be able to finish.
//!
//! Security by construction: identifiers go through [`quote_ident`], values
//! are bound parameters wherever PostgreSQL accepts one; the utility
//! statements that take none (CREATE ROLE, COMMENT ON, ALTER ROLE) are built
//! with [`quote_ident`]/[`quote_literal`] from validated values only. The
//! password is never sent: the role gets a SCRAM-SHA-256 verifier computed
//! here, so `log_statement` or a failed statement in the server log shows at
//! most the verifier. sqlx's own statement logging is turned off for the same
//! reason.
//!
//! Ownership lives in a COMMENT on the role, schema and database
//! (`tenantry.dev/managed-by=tenantry;tenantry.dev/tenant=<name>;tenantry.dev/tenant-uid=<uid>`,
//! plus `;tenantry.dev/released=true` once released). The role and the schema
//! are created together with their comment in one transaction, so an untagged
//! role or schema was never made by tenantry and is a conflict. `CREATE
//! DATABASE` cannot run in a transaction: only an untagged database can be the
//! leftover of an interrupted attempt. The tenant cannot change its role's
//! comment but can change those of the schema and database it owns, so a
//! schema or database owned by the tenant's (tagged) role is its own whatever
//! its comment says, and the comment is put back.

use std::borrow::Cow;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use sqlx::postgres::types::Oid;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgDatabaseError, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, PgExecutor};

use super::Action;
use crate::api::IsolationMode;
use crate::backends::{
    Backend, BackendError, DatabaseLocation, Operation, Ownership, TenantDatabase, TenantRef, tags,
};
use crate::naming::SharedTable;
use crate::naming::{TenantNames, quote_ident, quote_literal};

/// Iterations of the SCRAM verifier: what libpq and the server use by default
/// (`scram_iterations`), so a verifier made here is indistinguishable from one
/// made by `psql \password`.
const SCRAM_ITERATIONS: u32 = 4096;
const SCRAM_SALT_LEN: usize = 16;

/// How long to wait for a terminated session to be gone, so that "login
/// disabled" really means no session of the tenant is left when we return.
const TERMINATE_WAIT_MS: i64 = 5000;

/// DDL on a catalog row another session holds (a concurrent GRANT, a tenant
/// holding a lock on its schema) fails after this instead of hanging the
/// reconcile; the error is transient and the engine retries.
const LOCK_TIMEOUT: &str = "10s";

/// The search_path of every admin session: the catalog, then the session's
/// own temporary schema, which is never searched for functions or operators.
pub const ADMIN_SEARCH_PATH: &str = "pg_catalog,pg_temp";

/// The PostgreSQL backend. Holds a pool to the shared database as the admin.
pub struct PostgresBackend {
    pool: PgPool,
    /// Admin connect options, reused (with another database) to reach a
    /// tenant's own database.
    options: PgConnectOptions,
    /// The sslmode and CA bundle of every connection to this server.
    tls: super::pg_tls::EffectiveTls,
    advertised_host: String,
    advertised_port: u16,
    shared_database: String,
    admin: String,
    admin_is_superuser: bool,
    server_version: i32,
    /// The shared tables whose rows a destroyed tenant loses.
    shared_tables: Vec<SharedTable>,
    /// Session timeouts the class sets on each tenant role.
    role_limits: RoleLimits,
}

/// Session defaults a TenantClass sets on each tenant role in its database,
/// so that one tenant's runaway queries and abandoned transactions do not
/// hold the server's connections and locks for everyone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoleLimits {
    pub statement_timeout: Option<String>,
    pub idle_in_transaction_session_timeout: Option<String>,
}

impl RoleLimits {
    /// The settings as `(name, value)`.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        [
            ("statement_timeout", &self.statement_timeout),
            (
                "idle_in_transaction_session_timeout",
                &self.idle_in_transaction_session_timeout,
            ),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.clone().map(|v| (name, v)))
        .collect()
    }

    /// The settings `setconfig` (as `pg_db_role_setting` stores it) lacks.
    pub fn missing_from(&self, setconfig: &[String]) -> Vec<(&'static str, String)> {
        self.settings()
            .into_iter()
            .filter(|(name, value)| !setconfig.contains(&format!("{name}={value}")))
            .collect()
    }

    /// Checks each value: digits and a unit PostgreSQL reads (ms, s, min, h).
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in self.settings() {
            let digits = value.trim_end_matches(|c: char| c.is_ascii_alphabetic());
            let unit = &value[digits.len()..];
            let ok = !digits.is_empty()
                && digits.len() <= 9
                && digits.chars().all(|c| c.is_ascii_digit())
                && matches!(unit, "ms" | "s" | "min" | "h");
            if !ok {
                return Err(format!(
                    "{name} {value:?} must be a number with a unit of ms, s, min or h, e.g. 30s"
                ));
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresBackend")
            .field("host", &self.advertised_host)
            .field("port", &self.advertised_port)
            .field("database", &self.shared_database)
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

#[derive(sqlx::FromRow)]
struct RoleRow {
    oid: Oid,
    rolsuper: bool,
    rolinherit: bool,
    rolcreaterole: bool,
    rolcreatedb: bool,
    rolcanlogin: bool,
    rolreplication: bool,
    rolbypassrls: bool,
    rolconnlimit: i32,
    comment: Option<String>,
    /// The admin has the role's privileges (can act as its owner).
    admin_usage: bool,
    /// The admin may SET ROLE to it (needed to make it an owner; on 15 this
    /// is plain membership).
    admin_set: bool,
}

/// A schema or a database: what ownership and PUBLIC checks need.
#[derive(sqlx::FromRow)]
struct ObjectRow {
    owner: String,
    comment: Option<String>,
    /// PUBLIC holds any privilege on it (explicit or by the default ACL).
    public_has_rights: bool,
    /// Roles other than the owner and PUBLIC that hold a privilege on it: a
    /// grant to another tenant made by hand is drift, revoked on ensure.
    other_grantees: Vec<String>,
}

#[derive(sqlx::FromRow)]
struct PublicSchemaRow {
    owner: String,
    tenant_can_create: bool,
    public_can_create: bool,
    granted_to_tenant: bool,
}

const ROLE_SQL_15: &str = "SELECT r.oid, r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb, \
       r.rolcanlogin, r.rolreplication, r.rolbypassrls, r.rolconnlimit, \
       shobj_description(r.oid, 'pg_authid') AS comment, \
       pg_has_role(current_user, r.oid, 'USAGE') AS admin_usage, \
       pg_has_role(current_user, r.oid, 'MEMBER') AS admin_set \
  FROM pg_roles r WHERE r.rolname = $1";

// 'SET' is a privilege type only from 16 on; 15 rejects it.
const ROLE_SQL_16: &str = "SELECT r.oid, r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb, \
       r.rolcanlogin, r.rolreplication, r.rolbypassrls, r.rolconnlimit, \
       shobj_description(r.oid, 'pg_authid') AS comment, \
       pg_has_role(current_user, r.oid, 'USAGE') AS admin_usage, \
       pg_has_role(current_user, r.oid, 'SET') AS admin_set \
  FROM pg_roles r WHERE r.rolname = $1";

// A NULL ACL means the built-in default, which for a database grants PUBLIC
// CONNECT and TEMPORARY: acldefault() makes that visible to aclexplode().
const SCHEMA_SQL: &str = "SELECT pg_get_userbyid(n.nspowner)::text AS owner, \
       obj_description(n.oid, 'pg_namespace') AS comment, \
       EXISTS (SELECT 1 FROM aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a \
                WHERE a.grantee = 0::pg_catalog.oid) AS public_has_rights, \
       ARRAY(SELECT DISTINCT pg_get_userbyid(a.grantee)::text FROM aclexplode(n.nspacl) a \
              WHERE a.grantee <> 0::pg_catalog.oid AND a.grantee <> n.nspowner) AS other_grantees \
  FROM pg_namespace n WHERE n.nspname = $1";

const DATABASE_SQL: &str = "SELECT pg_get_userbyid(d.datdba)::text AS owner, \
       shobj_description(d.oid, 'pg_database') AS comment, \
       EXISTS (SELECT 1 FROM aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a \
                WHERE a.grantee = 0::pg_catalog.oid) AS public_has_rights, \
       ARRAY(SELECT DISTINCT pg_get_userbyid(a.grantee)::text FROM aclexplode(d.datacl) a \
              WHERE a.grantee <> 0::pg_catalog.oid AND a.grantee <> d.datdba) AS other_grantees \
  FROM pg_database d WHERE d.datname = $1";

const PUBLIC_SCHEMA_SQL: &str = "SELECT pg_get_userbyid(n.nspowner)::text AS owner, \
       has_schema_privilege($1::oid, n.oid, 'CREATE') AS tenant_can_create, \
       EXISTS (SELECT 1 FROM aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a \
                WHERE a.grantee = 0::pg_catalog.oid AND a.privilege_type = 'CREATE') AS public_can_create, \
       EXISTS (SELECT 1 FROM aclexplode(n.nspacl) a \
                WHERE a.grantee = $1 AND a.privilege_type = 'CREATE') AS granted_to_tenant \
  FROM pg_namespace n WHERE n.nspname = 'public'";

// An explicit CONNECT grant to the role ($1), by the owner (or a superuser,
// which PostgreSQL records as the owner) or by the admin itself. The shared
// database's ACL holds one entry per tenant: `aclcontains` reads it once,
// where `aclexplode` in a join detoasted it again for every row it returned
// (180 ms at 4,000 tenants, growing with the square of their number).
const HAS_CONNECT_GRANT_SQL: &str = "SELECT coalesce( \
       aclcontains(d.datacl, makeaclitem($1, d.datdba, 'CONNECT', false)) \
    OR aclcontains(d.datacl, makeaclitem($1, \
         (SELECT r.oid FROM pg_roles r WHERE r.rolname = current_user), 'CONNECT', false)), \
       false) \
  FROM pg_database d WHERE d.datname = current_database()";

const ROLE_SETTINGS_SQL: &str = "SELECT coalesce((SELECT s.setconfig FROM pg_db_role_setting s \
       JOIN pg_database d ON d.oid = s.setdatabase \
  WHERE s.setrole = $1 AND d.datname = $2), '{}'::text[])";

// Serialises ACL changes on the shared database across every session (other
// operator replicas, tests): concurrent GRANTs on one pg_database row fail
// with "tuple concurrently updated" otherwise.
const SHARED_ACL_LOCK_SQL: &str = "SELECT pg_advisory_xact_lock(hashtextextended('tenantry:database-acl:' || current_database(), 0))";

// The function sits in the select list so it only runs on rows that passed
// the filter (never on our own backend), whatever order the planner picks.
const TERMINATE_SQL: &str = "SELECT count(*) FILTER (WHERE ended) FROM ( \
  SELECT pg_terminate_backend(pid, $2) AS ended FROM pg_stat_activity \
   WHERE usesysid = $1 AND pid <> pg_backend_pid()) s";

impl PostgresBackend {
    /// Connects to the shared database (the admin URL's database) as the
    /// admin and checks that the server and the admin role can do the job.
    pub async fn connect(
        admin_url: &SecretString,
        max_connections: u32,
        advertised_host: Option<String>,
        advertised_port: Option<u16>,
    ) -> Result<Self, BackendError> {
        let tls = super::pg_tls::DatabaseTls::default();
        Self::connect_with_tls(
            admin_url,
            max_connections,
            advertised_host,
            advertised_port,
            &tls,
        )
        .await
    }

    /// [`Self::connect`] with TLS settings laid over the URL's (see
    /// [`super::pg_tls`]). A certificate that fails verification is a
    /// permanent error; nothing falls back to plaintext.
    pub async fn connect_with_tls(
        admin_url: &SecretString,
        max_connections: u32,
        advertised_host: Option<String>,
        advertised_port: Option<u16>,
        tls: &super::pg_tls::DatabaseTls,
    ) -> Result<Self, BackendError> {
        let (options, tls) = admin_options(admin_url.expose_secret(), tls)?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone())
            .await
            .map_err(|e| {
                let doing = format!(
                    "connecting to the shared database at {}:{} (sslmode={}) as the admin",
                    options.get_host(),
                    options.get_port(),
                    tls.mode_name()
                );
                classify(e, &doing)
            })?;
        let session = AdminSession::read(&pool).await?;
        session.check()?;
        Ok(Self {
            pool,
            advertised_host: advertised_host.unwrap_or_else(|| options.get_host().to_string()),
            advertised_port: advertised_port.unwrap_or_else(|| options.get_port()),
            options,
            tls,
            shared_database: session.database,
            admin: session.admin,
            admin_is_superuser: session.superuser,
            server_version: session.version,
            shared_tables: Vec::new(),
            role_limits: RoleLimits::default(),
        })
    }

    /// The timeouts each tenant role gets in its database.
    pub fn with_role_limits(mut self, limits: RoleLimits) -> Self {
        self.role_limits = limits;
        self
    }

    /// The shared tables from which a destroyed tenant's rows are deleted.
    pub fn with_shared_tables(mut self, tables: Vec<SharedTable>) -> Self {
        self.shared_tables = tables;
        self
    }

    /// The admin pool on the shared database.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The sslmode and CA bundle of the connections to this server, which
    /// tenants are given too.
    pub fn tls(&self) -> &super::pg_tls::EffectiveTls {
        &self.tls
    }

    async fn read_role(&self, role: &str) -> Result<Option<RoleRow>, BackendError> {
        let sql = if self.server_version >= 160_000 {
            ROLE_SQL_16
        } else {
            ROLE_SQL_15
        };
        crate::metrics::sql(
            crate::metrics::Sql::Select,
            sqlx::query_as::<_, RoleRow>(sql)
                .bind(role)
                .fetch_optional(&self.pool),
        )
        .await
        .map_err(|e| classify(e, &format!("reading role {role:?}")))
    }

    async fn read_database(&self, database: &str) -> Result<Option<ObjectRow>, BackendError> {
        crate::metrics::sql(
            crate::metrics::Sql::Select,
            sqlx::query_as::<_, ObjectRow>(DATABASE_SQL)
                .bind(database)
                .fetch_optional(&self.pool),
        )
        .await
        .map_err(|e| classify(e, &format!("reading database {database:?}")))
    }

    /// A short-lived admin connection to a tenant's own database: a pool per
    /// tenant database would hold connections that block `DROP DATABASE`.
    async fn connect_to(&self, database: &str) -> Result<PgConnection, BackendError> {
        PgConnection::connect_with(&self.options.clone().database(database))
            .await
            .map_err(|e| classify(e, &format!("connecting to database {database:?}")))
    }

    /// Plans the role: refuses a role that is not the tenant's, or one only a
    /// superuser can repair, before anything is written.
    fn judge_role(
        &self,
        op: &Operation,
        tenant: &TenantRef,
        role: &str,
        row: Option<RoleRow>,
    ) -> Result<Found<RoleRow>, BackendError> {
        let Some(row) = row else {
            return Ok(Found::Absent);
        };
        let found = match ownership(tenant, row.comment.as_deref()) {
            Ownership::Ours => Found::Ours(row),
            Ownership::Released => {
                op.note_adopted_release();
                Found::Adopt(row)
            }
            Ownership::Foreign(detail) => return Err(conflict(format!("role {role:?}"), detail)),
            Ownership::Untagged => {
                return Err(conflict(format!("role {role:?}"), untagged_detail()));
            }
        };
        let row = found.row().expect("present");
        let privileged = privileged_flags(row);
        if !privileged.is_empty() && !self.admin_is_superuser {
            return Err(rejected(format!(
                "role {role:?} has {}, which only a superuser can remove; a superuser must run: ALTER ROLE {} {};",
                privileged.join(", "),
                quote_ident(role),
                privileged
                    .iter()
                    .map(|f| format!("NO{f}"))
                    .collect::<Vec<_>>()
                    .join(" "),
            )));
        }
        Ok(found)
    }

    /// Creates the role, or converges an existing one (ours or adopted) with
    /// the fewest writes: none when nothing differs.
    #[allow(clippy::too_many_arguments)]
    async fn converge_role(
        &self,
        conn: &mut PgConnection,
        op: &Operation,
        role: &str,
        found: Found<RoleRow>,
        connection_limit: i32,
        password: &SecretString,
        login: bool,
        interrupted: bool,
    ) -> Result<(), BackendError> {
        let tenant = &op.tenant;
        let q = quote_ident(role);
        let comment = ownership_comment(tenant, false);
        let (row, adopting) = match found {
            Found::Absent => {
                return self
                    .create_role(conn, op, role, connection_limit, password, login)
                    .await;
            }
            Found::Ours(row) => (row, false),
            Found::Adopt(row) => (row, true),
        };

        let mut clauses = role_changes(&row, login, connection_limit);
        // Adoption takes over a role whose password nobody here knows; an
        // interrupted attempt may have set a password that was never stored.
        let set_password = adopting || interrupted;
        let need_grant = !(self.admin_is_superuser || (row.admin_usage && row.admin_set));
        let need_comment = row.comment.as_deref() != Some(comment.as_str());
        if clauses.is_empty() && !set_password && !need_grant && !need_comment {
            return Ok(());
        }
        let doing = if adopting {
            format!("adopting role {role:?}")
        } else {
            format!("updating role {role:?}")
        };
        let mut tx = begin_on(conn, &doing).await?;
        if need_grant {
            exec(&mut *tx, self.grant_role_to_admin_sql(&q), &doing).await?;
        }
        // One transaction: a comment that says "ours" must never exist
        // without the password the caller was promised.
        // Taken before the PASSWORD clause joins: the audit row names changes, never secrets.
        let changes = clauses.clone();
        if set_password {
            let verifier = scram_verifier(password)?;
            clauses.push(format!(
                "PASSWORD {}",
                quote_literal(verifier.expose_secret())
            ));
        }
        if !clauses.is_empty() {
            exec(
                &mut *tx,
                format!("ALTER ROLE {q} WITH {}", clauses.join(" ")),
                &doing,
            )
            .await?;
        }
        if need_comment {
            exec(
                &mut *tx,
                format!("COMMENT ON ROLE {q} IS {}", quote_literal(&comment)),
                &doing,
            )
            .await?;
        }
        commit(tx, &doing).await?;
        let action = if adopting {
            tracing::info!(tenant = %tenant.name, role, "adopted released PostgreSQL role");
            Action::PostgresRoleAdopt
        } else {
            tracing::info!(tenant = %tenant.name, role, "converged PostgreSQL role");
            Action::PostgresRoleAlter
        };
        let detail = serde_json::json!({"changes": changes, "passwordSet": set_password, "grantedToAdmin": need_grant, "commentSet": need_comment});
        op.note(action, role, detail).await?;
        Ok(())
    }

    /// The role, its comment and (unless the admin is a superuser) its grant
    /// to the admin in one transaction, so that no role exists that tenantry
    /// neither recognises nor can manage.
    async fn create_role(
        &self,
        conn: &mut PgConnection,
        op: &Operation,
        role: &str,
        connection_limit: i32,
        password: &SecretString,
        login: bool,
    ) -> Result<(), BackendError> {
        let q = quote_ident(role);
        let comment = ownership_comment(&op.tenant, false);
        let verifier = scram_verifier(password)?;
        let doing = format!("creating role {role:?}");
        let mut tx = begin_on(conn, &doing).await?;
        let create = format!(
            "CREATE ROLE {q} WITH {} NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION CONNECTION LIMIT {connection_limit} PASSWORD {}",
            if login { "LOGIN" } else { "NOLOGIN" },
            quote_literal(verifier.expose_secret()),
        );
        exec(&mut *tx, create, &doing).await?;
        exec(
            &mut *tx,
            format!("COMMENT ON ROLE {q} IS {}", quote_literal(&comment)),
            &doing,
        )
        .await?;
        if !self.admin_is_superuser {
            exec(&mut *tx, self.grant_role_to_admin_sql(&q), &doing).await?;
        }
        commit(tx, &doing).await?;
        tracing::info!(tenant = %op.tenant.name, role, "created PostgreSQL role");
        op.note(Action::PostgresRoleCreate, role, serde_json::json!({"login": login, "connectionLimit": connection_limit, "passwordSet": true})).await?;
        Ok(())
    }

    /// Membership with INHERIT (to act as the owner of what the role owns)
    /// and, on 16+, SET (to make the role an owner). On 16+ the automatic
    /// grant to a role's creator has ADMIN only, so this is needed there too.
    fn grant_role_to_admin_sql(&self, quoted_role: &str) -> String {
        if self.server_version >= 160_000 {
            format!("GRANT {quoted_role} TO CURRENT_USER WITH INHERIT TRUE, SET TRUE")
        } else {
            format!("GRANT {quoted_role} TO CURRENT_USER")
        }
    }

    /// Whose the schema or database with the tenant's name is.
    ///
    /// A schema's or database's owner can rewrite its comment, and the tenant
    /// owns its schema or database: so one owned by the tenant's own role
    /// (tagged with this uid, a comment the tenant cannot change) is the
    /// tenant's whatever its comment says, and the comment is rewritten.
    fn judge_container(
        &self,
        op: &Operation,
        resource: &str,
        row: Option<ObjectRow>,
        role: &str,
        role_is_ours: bool,
        interrupted_create: bool,
    ) -> Result<Found<ObjectRow>, BackendError> {
        let Some(row) = row else {
            return Ok(Found::Absent);
        };
        match ownership(&op.tenant, row.comment.as_deref()) {
            Ownership::Ours => Ok(Found::Ours(row)),
            Ownership::Released => {
                op.note_adopted_release();
                Ok(Found::Adopt(row))
            }
            _ if role_is_ours && row.owner == role => Ok(Found::Adopt(row)),
            // Only CREATE DATABASE leaves an untagged window, and it is made
            // by the admin for the tenant's role: nothing owned by anyone
            // else can be the leftover of an interrupted attempt.
            Ownership::Untagged
                if interrupted_create && (row.owner == role || row.owner == self.admin) =>
            {
                Ok(Found::Adopt(row))
            }
            Ownership::Foreign(detail) => Err(conflict(resource.to_string(), detail)),
            Ownership::Untagged => Err(conflict(resource.to_string(), untagged_detail())),
        }
    }

    /// The tenant's schema on `conn`'s database: created with its comment
    /// and without PUBLIC's rights in one transaction, or converged.
    async fn converge_schema(
        &self,
        conn: &mut PgConnection,
        op: &Operation,
        role: &str,
        schema: &str,
        database: &str,
        found: Found<ObjectRow>,
    ) -> Result<(), BackendError> {
        let tenant = &op.tenant;
        let (qs, qr) = (quote_ident(schema), quote_ident(role));
        let comment = ownership_comment(tenant, false);
        let set_comment = format!("COMMENT ON SCHEMA {qs} IS {}", quote_literal(&comment));
        let revoke = format!("REVOKE ALL ON SCHEMA {qs} FROM PUBLIC");
        let (statements, doing) = match found {
            Found::Absent => (
                vec![
                    format!("CREATE SCHEMA {qs} AUTHORIZATION {qr}"),
                    set_comment,
                    revoke,
                ],
                format!("creating schema {schema:?} in database {database:?}"),
            ),
            Found::Ours(row) | Found::Adopt(row) => {
                let mut statements = Vec::new();
                if row.owner != role {
                    statements.push(format!("ALTER SCHEMA {qs} OWNER TO {qr}"));
                }
                if row.comment.as_deref() != Some(comment.as_str()) {
                    statements.push(set_comment);
                }
                if row.public_has_rights {
                    statements.push(revoke);
                }
                for grantee in &row.other_grantees {
                    statements.push(format!(
                        "REVOKE ALL ON SCHEMA {qs} FROM {}",
                        quote_ident(grantee)
                    ));
                }
                (
                    statements,
                    format!("updating schema {schema:?} in database {database:?}"),
                )
            }
        };
        if statements.is_empty() {
            return Ok(());
        }
        let detail = serde_json::json!({"database": database, "statements": statements});
        let mut tx = conn.begin().await.map_err(|e| classify(e, &doing))?;
        for statement in statements {
            exec(&mut *tx, statement, &doing).await?;
        }
        commit(tx, &doing).await?;
        tracing::info!(tenant = %tenant.name, schema, database, "{doing}");
        let action = if doing.starts_with("creating") {
            Action::PostgresSchemaCreate
        } else {
            Action::PostgresSchemaAlter
        };
        op.note(action, schema, detail).await?;
        Ok(())
    }

    /// Makes sure the tenant cannot CREATE in `public` of `conn`'s database.
    ///
    /// In the tenant's own database (`own_database`), `public` belongs to
    /// pg_database_owner, i.e. to the tenant as the database's owner: it is
    /// handed to the admin. On PostgreSQL 15 the admin cannot act as
    /// pg_database_owner through a NOINHERIT tenant role (15 expands the
    /// database owner's implicit membership only for inheriting roles; 16+
    /// does it per grant), so the admin briefly becomes the database's owner
    /// itself, in the same transaction. (A NOINHERIT owner on 15 cannot
    /// create in `public` either, but 16+ owners can, and the schema should
    /// not depend on that subtlety.)
    async fn deny_create_in_public(
        &self,
        op: &Operation,
        conn: &mut PgConnection,
        role_oid: Oid,
        role: &str,
        database: &str,
        own_database: bool,
    ) -> Result<(), BackendError> {
        let doing = format!("securing schema public in database {database:?}");
        let Some(public) = read_public_schema(conn, role_oid, &doing).await? else {
            return Ok(());
        };
        let take = own_database && (public.owner == "pg_database_owner" || public.owner == role);
        if !take && !public.tenant_can_create {
            return Ok(());
        }
        let admin = quote_ident(&self.admin);
        let mut statements = Vec::new();
        if take {
            if public.owner == "pg_database_owner" {
                let db = quote_ident(database);
                statements.push(format!("ALTER DATABASE {db} OWNER TO {admin}"));
                statements.push(format!("ALTER SCHEMA public OWNER TO {admin}"));
                statements.push(format!(
                    "ALTER DATABASE {db} OWNER TO {}",
                    quote_ident(role)
                ));
            } else {
                statements.push(format!("ALTER SCHEMA public OWNER TO {admin}"));
            }
        }
        if public.public_can_create {
            statements.push("REVOKE CREATE ON SCHEMA public FROM PUBLIC".to_string());
        }
        if public.granted_to_tenant {
            statements.push(format!(
                "REVOKE CREATE ON SCHEMA public FROM {}",
                quote_ident(role)
            ));
        }
        if !statements.is_empty() {
            let detail = serde_json::json!({"database": database, "statements": statements});
            let mut tx = conn.begin().await.map_err(|e| classify(e, &doing))?;
            if !own_database {
                query_lock(&mut tx, &doing).await?;
            }
            for statement in statements {
                exec(&mut *tx, statement, &doing).await?;
            }
            commit(tx, &doing).await?;
            op.note(Action::PostgresPublicSchemaSecure, database, detail)
                .await?;
        }
        // REVOKE by a role without the grant option only warns: read back.
        let after = read_public_schema(conn, role_oid, &doing).await?;
        if after.is_some_and(|p| p.tenant_can_create) {
            return Err(rejected(format!(
                "role {role:?} can CREATE in schema public of database {database:?} and the admin cannot take that away \
                 (the owner of public, or a superuser, must run: REVOKE CREATE ON SCHEMA public FROM PUBLIC; \
                 and revoke any grant to {role:?})"
            )));
        }
        Ok(())
    }

    /// `ALTER ROLE .. IN DATABASE .. SET search_path`, unless already set.
    async fn converge_search_path(
        &self,
        op: &Operation,
        role_oid: Oid,
        role: &str,
        database: &str,
        schema: &str,
    ) -> Result<(), BackendError> {
        let doing = format!("setting the search_path of role {role:?} in database {database:?}");
        let settings: Vec<String> = crate::metrics::sql(
            crate::metrics::Sql::Select,
            sqlx::query_scalar(ROLE_SETTINGS_SQL)
                .bind(role_oid)
                .bind(database)
                .fetch_one(&self.pool),
        )
        .await
        .map_err(|e| classify(e, &doing))?;
        if !search_path_is_set(&settings, schema) {
            exec(
                &self.pool,
                format!(
                    "ALTER ROLE {} IN DATABASE {} SET search_path = {}",
                    quote_ident(role),
                    quote_ident(database),
                    quote_ident(schema)
                ),
                &doing,
            )
            .await?;
            op.note(
                Action::PostgresRoleSearchPath,
                role,
                serde_json::json!({"database": database, "searchPath": schema}),
            )
            .await?;
        }
        // The class's timeouts, in the same place: a setting for the role in
        // its database beats one the tenant sets for its role everywhere.
        let missing = self.role_limits.missing_from(&settings);
        if missing.is_empty() {
            return Ok(());
        }
        let doing = format!("setting the timeouts of role {role:?} in database {database:?}");
        for (name, value) in &missing {
            exec(
                &self.pool,
                format!(
                    "ALTER ROLE {} IN DATABASE {} SET {name} = {}",
                    quote_ident(role),
                    quote_ident(database),
                    quote_literal(value)
                ),
                &doing,
            )
            .await?;
        }
        let set: serde_json::Map<String, serde_json::Value> = missing
            .into_iter()
            .map(|(name, value)| (name.to_string(), value.into()))
            .collect();
        op.note(
            Action::PostgresRoleTimeouts,
            role,
            serde_json::json!({"database": database, "set": set}),
        )
        .await
    }

    async fn ensure_schema_mode(
        &self,
        conn: &mut PgConnection,
        op: &Operation,
        names: &TenantNames,
        role_oid: Oid,
        schema: Found<ObjectRow>,
    ) -> Result<(), BackendError> {
        let shared = &self.shared_database;
        self.converge_schema(conn, op, &names.role, &names.schema, shared, schema)
            .await?;

        // An explicit grant, so the tenant keeps CONNECT when PUBLIC loses it.
        let doing = format!(
            "granting CONNECT on database {shared:?} to role {:?}",
            names.role
        );
        let granted: bool = crate::metrics::sql(
            crate::metrics::Sql::Select,
            sqlx::query_scalar(HAS_CONNECT_GRANT_SQL)
                .bind(role_oid)
                .fetch_one(&mut *conn),
        )
        .await
        .map_err(|e| classify(e, &doing))?;
        if !granted {
            let mut tx = conn.begin().await.map_err(|e| classify(e, &doing))?;
            query_lock(&mut tx, &doing).await?;
            exec(
                &mut *tx,
                format!(
                    "GRANT CONNECT ON DATABASE {} TO {}",
                    quote_ident(shared),
                    quote_ident(&names.role)
                ),
                &doing,
            )
            .await?;
            commit(tx, &doing).await?;
            // A GRANT by a role without the right only warns: read back.
            let granted: bool = crate::metrics::sql(
                crate::metrics::Sql::Select,
                sqlx::query_scalar(HAS_CONNECT_GRANT_SQL)
                    .bind(role_oid)
                    .fetch_one(&mut *conn),
            )
            .await
            .map_err(|e| classify(e, &doing))?;
            if !granted {
                return Err(rejected(format!(
                    "the admin cannot grant CONNECT on database {shared:?}; its owner must run: GRANT CONNECT ON DATABASE {} TO {}",
                    quote_ident(shared),
                    quote_ident(&names.role)
                )));
            }
        }
        self.deny_create_in_public(op, conn, role_oid, &names.role, shared, false)
            .await?;
        self.converge_search_path(op, role_oid, &names.role, shared, &names.schema)
            .await
    }

    async fn ensure_database_mode(
        &self,
        admin: &mut PgConnection,
        op: &Operation,
        names: &TenantNames,
        role_oid: Oid,
        database: Found<ObjectRow>,
    ) -> Result<(), BackendError> {
        let created = matches!(database, Found::Absent);
        let statements = self
            .create_or_plan_database(admin, op, names, database)
            .await?;
        if !statements.is_empty() {
            self.secure_database(admin, op, &names.database, statements, created)
                .await?;
        }
        self.converge_database_schema(op, names, role_oid).await?;
        self.converge_search_path(op, role_oid, &names.role, &names.database, &names.schema)
            .await
    }

    /// Creates the tenant's database when there is none, and returns what
    /// must still be done to tag and secure it.
    async fn create_or_plan_database(
        &self,
        admin: &mut PgConnection,
        op: &Operation,
        names: &TenantNames,
        database: Found<ObjectRow>,
    ) -> Result<Vec<String>, BackendError> {
        let tenant = &op.tenant;
        let (db, role) = (&names.database, &names.role);
        let (qd, qr) = (quote_ident(db), quote_ident(role));
        let comment = ownership_comment(tenant, false);
        let set_comment = format!("COMMENT ON DATABASE {qd} IS {}", quote_literal(&comment));
        let revoke = format!("REVOKE ALL ON DATABASE {qd} FROM PUBLIC");
        match database {
            Found::Absent => {
                let doing = format!("creating database {db:?}");
                exec(
                    &mut *admin,
                    format!("CREATE DATABASE {qd} OWNER {qr}"),
                    &doing,
                )
                .await?;
                tracing::info!(tenant = %tenant.name, database = %db, "created PostgreSQL database");
                op.note(
                    Action::PostgresDatabaseCreate,
                    db,
                    serde_json::json!({"owner": role}),
                )
                .await?;
                Ok(vec![set_comment, revoke])
            }
            Found::Ours(row) | Found::Adopt(row) => {
                let mut statements = Vec::new();
                if row.owner != *role {
                    statements.push(format!("ALTER DATABASE {qd} OWNER TO {qr}"));
                }
                if row.comment.as_deref() != Some(comment.as_str()) {
                    statements.push(set_comment);
                }
                if row.public_has_rights {
                    statements.push(revoke);
                }
                for grantee in &row.other_grantees {
                    statements.push(format!(
                        "REVOKE ALL ON DATABASE {qd} FROM {}",
                        quote_ident(grantee)
                    ));
                }
                Ok(statements)
            }
        }
    }

    /// Runs `statements` in one transaction. `created`: the database was made
    /// by this attempt and is dropped again when they fail.
    async fn secure_database(
        &self,
        admin: &mut PgConnection,
        op: &Operation,
        db: &str,
        statements: Vec<String>,
        created: bool,
    ) -> Result<(), BackendError> {
        let doing = format!("tagging and securing database {db:?}");
        let detail = serde_json::json!({"statements": statements});
        let result = async {
            let mut tx = begin_on(&mut *admin, &doing).await?;
            for statement in statements {
                exec(&mut *tx, statement, &doing).await?;
            }
            commit(tx, &doing).await
        }
        .await;
        if let Err(e) = result {
            if created {
                // Untagged now. Nothing is in it yet, so dropping it (best
                // effort) lets the retry start clean; failing that, it is
                // owned by the tenant's role and a retry still adopts it.
                let qd = quote_ident(db);
                let _ = exec(&mut *admin, format!("DROP DATABASE IF EXISTS {qd}"), &doing).await;
            }
            return Err(e);
        }
        op.note(Action::PostgresDatabaseAlter, db, detail).await?;
        Ok(())
    }

    /// The tenant's schema inside its own database, and `public` there.
    async fn converge_database_schema(
        &self,
        op: &Operation,
        names: &TenantNames,
        role_oid: Oid,
    ) -> Result<(), BackendError> {
        let (db, role) = (&names.database, &names.role);
        let mut conn = self.connect_to(db).await?;
        let result = async {
            let resource = format!("schema {:?} in database {db:?}", names.schema);
            let row = read_schema(&mut conn, &names.schema, &resource).await?;
            let found = self.judge_container(op, &resource, row, role, true, false)?;
            self.converge_schema(&mut conn, op, role, &names.schema, db, found)
                .await?;
            self.deny_create_in_public(op, &mut conn, role_oid, role, db, true)
                .await
        }
        .await;
        let _ = conn.close().await;
        result
    }
}

impl PostgresBackend {
    async fn begin(
        &self,
        doing: &str,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, BackendError> {
        self.pool.begin().await.map_err(|e| classify(e, doing))
    }

    /// Ends every session of the role and waits (bounded) until they are gone.
    async fn terminate_sessions(&self, role_oid: Oid, role: &str) -> Result<(), BackendError> {
        let ended: i64 = crate::metrics::sql(
            crate::metrics::Sql::Select,
            sqlx::query_scalar(TERMINATE_SQL)
                .bind(role_oid)
                .bind(TERMINATE_WAIT_MS)
                .fetch_one(&self.pool),
        )
        .await
        .map_err(|e| classify(e, &format!("ending the sessions of role {role:?}")))?;
        if ended > 0 {
            tracing::info!(role, sessions = ended, "ended PostgreSQL sessions");
        }
        Ok(())
    }

    /// NOLOGIN (if needed) and no session left.
    async fn disable_login(
        &self,
        op: &Operation,
        row: &RoleRow,
        role: &str,
    ) -> Result<(), BackendError> {
        if row.rolcanlogin {
            exec(
                &self.pool,
                format!("ALTER ROLE {} NOLOGIN", quote_ident(role)),
                &format!("disabling login of role {role:?}"),
            )
            .await?;
            op.note(
                Action::PostgresRoleLoginDisable,
                role,
                serde_json::json!({}),
            )
            .await?;
        }
        self.terminate_sessions(row.oid, role).await
    }

    /// The schema (mode `Schema`, in the shared database) or the database
    /// (mode `Database`) with the tenant's name, and how to name it in errors.
    async fn read_container(
        &self,
        names: &TenantNames,
        mode: IsolationMode,
    ) -> Result<(String, Option<ObjectRow>), BackendError> {
        match mode {
            IsolationMode::Schema => {
                let resource = format!(
                    "schema {:?} in database {:?}",
                    names.schema, self.shared_database
                );
                let row = read_schema(&self.pool, &names.schema, &resource).await?;
                Ok((resource, row))
            }
            IsolationMode::Database => {
                let row = self.read_database(&names.database).await?;
                Ok((format!("database {:?}", names.database), row))
            }
        }
    }
}

#[async_trait]
impl TenantDatabase for PostgresBackend {
    fn endpoint(&self) -> (String, u16, String) {
        (
            self.advertised_host.clone(),
            self.advertised_port,
            self.shared_database.clone(),
        )
    }

    async fn ensure_tenant(
        &self,
        op: &Operation,
        names: &TenantNames,
        mode: IsolationMode,
        connection_limit: i32,
        password: &SecretString,
        login: bool,
        interrupted: bool,
    ) -> Result<DatabaseLocation, BackendError> {
        let tenant = &op.tenant;
        validate_tenant(tenant, names)?;
        check_password(password)?;
        let role = &names.role;

        // Judge everything before writing anything: a conflict on the schema
        // or database must not leave a new role behind.
        let role_found = self.judge_role(op, tenant, role, self.read_role(role).await?)?;
        let role_is_ours = matches!(role_found, Found::Ours(_));
        let (resource, row) = self.read_container(names, mode).await?;
        let interrupted_create = interrupted && mode == IsolationMode::Database;
        let container =
            self.judge_container(op, &resource, row, role, role_is_ours, interrupted_create)?;

        // The role, its grant to the admin and the schema or database it
        // owns are made on one connection: another pooled session refused
        // CREATE SCHEMA/DATABASE ... OWNER for a role it had just been
        // granted (measured: 2 in 1,000 Schema-mode and 10 in 100
        // Database-mode provisionings at 16 at once); the session that
        // granted it always sees its own grant. Not a pooled connection:
        // the audit rows written meanwhile take one from the pool, and
        // reconciles each holding one while waiting for another would
        // exhaust it (measured: a standstill in Database mode).
        let mut admin = self.connect_to(&self.shared_database).await?;
        self.converge_role(
            &mut admin,
            op,
            role,
            role_found,
            connection_limit,
            password,
            login,
            interrupted,
        )
        .await?;
        let role_oid = self
            .read_role(role)
            .await?
            .ok_or_else(|| BackendError::Unavailable {
                backend: Backend::Postgres,
                message: format!("role {role:?} disappeared while it was being provisioned"),
            })?
            .oid;

        let database = match mode {
            IsolationMode::Schema => {
                self.ensure_schema_mode(&mut admin, op, names, role_oid, container)
                    .await?;
                self.shared_database.clone()
            }
            IsolationMode::Database => {
                self.ensure_database_mode(&mut admin, op, names, role_oid, container)
                    .await?;
                names.database.clone()
            }
        };
        let _ = admin.close().await;
        Ok(DatabaseLocation {
            database,
            schema: names.schema.clone(),
            role: role.clone(),
        })
    }

    async fn set_login(
        &self,
        op: &Operation,
        names: &TenantNames,
        enabled: bool,
    ) -> Result<(), BackendError> {
        let tenant = &op.tenant;
        validate_tenant(tenant, names)?;
        let role = &names.role;
        let Some(row) = self.read_role(role).await? else {
            return Ok(());
        };
        let ownership = ownership(tenant, row.comment.as_deref());
        if ownership != Ownership::Ours {
            return Err(conflict(
                format!("role {role:?}"),
                not_ours_detail(ownership),
            ));
        }
        if enabled {
            if !row.rolcanlogin {
                exec(
                    &self.pool,
                    format!("ALTER ROLE {} LOGIN", quote_ident(role)),
                    &format!("enabling login of role {role:?}"),
                )
                .await?;
                op.note(Action::PostgresRoleLoginEnable, role, serde_json::json!({}))
                    .await?;
            }
            Ok(())
        } else {
            self.disable_login(op, &row, role).await
        }
    }

    async fn remove_tenant(
        &self,
        op: &Operation,
        names: &TenantNames,
        mode: IsolationMode,
    ) -> Result<(), BackendError> {
        let tenant = &op.tenant;
        validate_tenant(tenant, names)?;
        let role = &names.role;
        let plan = self.plan_removal(tenant, names, mode).await?;
        if let Some(row) = &plan.role {
            // No new session, and none left to hold locks the drops need.
            self.disable_login(op, row, role).await?;
        }
        if plan.drop_container {
            self.drop_container(op, names, mode, &plan.resource).await?;
        }
        if plan.role.is_some() {
            if plan.release_role_instead {
                self.mark_role_released(tenant, role).await?;
            } else {
                self.drop_role(op, role).await?;
            }
        }
        for (resource, detail) in plan.skipped {
            tracing::warn!(tenant = %tenant.name, %detail, "not removing {resource}: it is not this tenant's");
        }
        Ok(())
    }

    async fn release_tenant(
        &self,
        op: &Operation,
        names: &TenantNames,
        mode: IsolationMode,
    ) -> Result<(), BackendError> {
        let tenant = &op.tenant;
        validate_tenant(tenant, names)?;
        let role = &names.role;
        let released = ownership_comment(tenant, true);
        let plan = self.plan_release(tenant, names, mode, &released).await?;

        if let Some(row) = &plan.role {
            self.disable_login(op, row, role).await?;
        }
        if plan.container_needs_comment {
            self.mark_container_released(names, mode, &plan.resource, &released)
                .await?;
        }
        if let Some((conn, needs_comment)) = plan.inner {
            self.mark_inner_schema_released(conn, names, needs_comment, &released)
                .await?;
        }
        if let Some(row) = &plan.role
            && row.comment.as_deref() != Some(released.as_str())
        {
            self.mark_role_released(tenant, role).await?;
        }
        tracing::info!(tenant = %tenant.name, role, "released PostgreSQL objects");
        op.note(
            Action::PostgresRelease,
            role,
            serde_json::json!({"mode": mode.to_string()}),
        )
        .await?;
        Ok(())
    }
}

/// Removing and releasing a tenant: what of its names is its own, and the
/// writes both need.
impl PostgresBackend {
    /// The role with the tenant's name if it is the tenant's; otherwise
    /// whose it is (nothing when there is no such role).
    async fn read_own_role(
        &self,
        tenant: &TenantRef,
        role: &str,
    ) -> Result<(Option<RoleRow>, Option<Ownership>), BackendError> {
        let Some(row) = self.read_role(role).await? else {
            return Ok((None, None));
        };
        match ownership(tenant, row.comment.as_deref()) {
            Ownership::Ours => Ok((Some(row), None)),
            other => Ok((None, Some(other))),
        }
    }

    /// Decides what to drop before anything is written.
    async fn plan_removal(
        &self,
        tenant: &TenantRef,
        names: &TenantNames,
        mode: IsolationMode,
    ) -> Result<RemovalPlan, BackendError> {
        let role = &names.role;
        // What is not the tenant's is left alone and only logged, like the
        // other backends do: a rollback after a conflicting ensure must be
        // able to finish, and there is nothing of the tenant's to remove.
        let mut skipped: Vec<(String, String)> = Vec::new();
        let (role_row, role_owner) = self.read_own_role(tenant, role).await?;
        match role_owner {
            // Retained for a Tenant of this name: not ours to drop.
            None | Some(Ownership::Released) => {}
            Some(other) => skipped.push((format!("role {role:?}"), not_ours_detail(other))),
        }
        let role_is_ours = role_row.is_some();

        let (resource, row) = self.read_container(names, mode).await?;
        let mut drop_container = false;
        let mut release_role_instead = false;
        if let Some(row) = &row {
            match ownership(tenant, row.comment.as_deref()) {
                Ownership::Ours => drop_container = true,
                Ownership::Released => release_role_instead = role_is_ours && row.owner == *role,
                _ if role_is_ours && row.owner == *role => drop_container = true,
                other => skipped.push((resource.clone(), not_ours_detail(other))),
            }
        }
        Ok(RemovalPlan {
            role: role_row,
            resource,
            drop_container,
            release_role_instead,
            skipped,
        })
    }

    async fn drop_container(
        &self,
        op: &Operation,
        names: &TenantNames,
        mode: IsolationMode,
        resource: &str,
    ) -> Result<(), BackendError> {
        let (statement, action) = match mode {
            IsolationMode::Schema => (
                format!(
                    "DROP SCHEMA IF EXISTS {} CASCADE",
                    quote_ident(&names.schema)
                ),
                Action::PostgresSchemaDrop,
            ),
            IsolationMode::Database => (
                format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    quote_ident(&names.database)
                ),
                Action::PostgresDatabaseDrop,
            ),
        };
        exec(&self.pool, statement, &format!("dropping {resource}")).await?;
        tracing::info!(tenant = %op.tenant.name, "dropped {resource}");
        op.note(action, resource, serde_json::json!({})).await?;
        Ok(())
    }

    async fn drop_role(&self, op: &Operation, role: &str) -> Result<(), BackendError> {
        let tenant = &op.tenant;
        let q = quote_ident(role);
        // DROP OWNED also revokes what the role was granted in the
        // shared database (and on databases), which DROP ROLE needs.
        let doing = format!("dropping role {role:?}");
        let mut tx = self.begin(&doing).await?;
        // The tenant's rows in the shared tables go with its role, in
        // one transaction: a later Tenant of the same name (another
        // customer) must find none of them.
        let purged = crate::backends::shared_tables::purge_tenant_rows(
            &mut tx,
            &self.shared_tables,
            role,
            &tenant.name,
        )
        .await?;
        // DROP OWNED rewrites the shared database's ACL (the role's
        // CONNECT): serialised with the GRANTs of other tenants.
        query_lock(&mut tx, &doing).await?;
        exec(&mut *tx, format!("DROP OWNED BY {q}"), &doing).await?;
        exec(&mut *tx, format!("DROP ROLE {q}"), &doing).await?;
        commit(tx, &doing).await?;
        tracing::info!(tenant = %tenant.name, role, "dropped PostgreSQL role");
        if !purged.is_empty() {
            let rows: serde_json::Map<String, serde_json::Value> = purged
                .into_iter()
                .map(|(table, count)| (table, count.into()))
                .collect();
            op.note(
                Action::PostgresSharedRowsDelete,
                role,
                serde_json::json!({"tenant": tenant.name, "rowsPerTable": rows}),
            )
            .await?;
        }
        op.note(
            Action::PostgresRoleDrop,
            role,
            serde_json::json!({"dropOwned": true}),
        )
        .await?;
        Ok(())
    }

    /// Leaves the role for a later Tenant of the same name to adopt.
    async fn mark_role_released(&self, tenant: &TenantRef, role: &str) -> Result<(), BackendError> {
        exec(
            &self.pool,
            format!(
                "COMMENT ON ROLE {} IS {}",
                quote_ident(role),
                quote_literal(&ownership_comment(tenant, true))
            ),
            &format!("releasing role {role:?}"),
        )
        .await
    }

    /// Reads everything before anything is written, holding a connection to
    /// the tenant's database when its schema is to be released too.
    async fn plan_release(
        &self,
        tenant: &TenantRef,
        names: &TenantNames,
        mode: IsolationMode,
        released: &str,
    ) -> Result<ReleasePlan, BackendError> {
        let role = &names.role;
        // Only the tenant's objects are released; anything else with its
        // names is left alone and logged (as remove_tenant does).
        let (role_row, role_owner) = self.read_own_role(tenant, role).await?;
        if let Some(other) = role_owner {
            warn_not_releasing(tenant, &format!("role {role:?}"), other);
        }
        let role_is_ours = role_row.is_some();
        let (resource, row) = self.read_container(names, mode).await?;
        let container_is_ours = match &row {
            None => false,
            Some(row) => match ownership(tenant, row.comment.as_deref()) {
                Ownership::Ours => true,
                _ if role_is_ours && row.owner == *role => true,
                other => {
                    warn_not_releasing(tenant, &resource, other);
                    false
                }
            },
        };
        let container_needs_comment =
            container_is_ours && row.as_ref().and_then(|r| r.comment.as_deref()) != Some(released);
        // In mode Database the schema inside the database carries a comment too.
        let inner = if mode == IsolationMode::Database && container_is_ours {
            Some(
                self.judge_inner_schema(tenant, names, role_is_ours, released)
                    .await?,
            )
        } else {
            None
        };
        Ok(ReleasePlan {
            role: role_row,
            resource,
            container_needs_comment,
            inner,
        })
    }

    /// A connection to the tenant's database and whether the schema in it
    /// needs the released comment.
    async fn judge_inner_schema(
        &self,
        tenant: &TenantRef,
        names: &TenantNames,
        role_is_ours: bool,
        released: &str,
    ) -> Result<(PgConnection, bool), BackendError> {
        let role = &names.role;
        let mut conn = self.connect_to(&names.database).await?;
        let inner_resource = format!("schema {:?} in database {:?}", names.schema, names.database);
        let schema = read_schema(&mut conn, &names.schema, &inner_resource).await;
        let decision = match schema {
            Err(e) => Err(e),
            Ok(None) => Ok(false),
            Ok(Some(schema)) => match ownership(tenant, schema.comment.as_deref()) {
                Ownership::Ours => Ok(schema.comment.as_deref() != Some(released)),
                _ if role_is_ours && schema.owner == *role => Ok(true),
                other => {
                    warn_not_releasing(tenant, &inner_resource, other);
                    Ok(false)
                }
            },
        };
        match decision {
            Ok(needs_comment) => Ok((conn, needs_comment)),
            Err(e) => {
                let _ = conn.close().await;
                Err(e)
            }
        }
    }

    async fn mark_container_released(
        &self,
        names: &TenantNames,
        mode: IsolationMode,
        resource: &str,
        released: &str,
    ) -> Result<(), BackendError> {
        let statement = match mode {
            IsolationMode::Schema => format!(
                "COMMENT ON SCHEMA {} IS {}",
                quote_ident(&names.schema),
                quote_literal(released)
            ),
            IsolationMode::Database => format!(
                "COMMENT ON DATABASE {} IS {}",
                quote_ident(&names.database),
                quote_literal(released)
            ),
        };
        exec(&self.pool, statement, &format!("releasing {resource}")).await
    }

    /// Closes `conn` whatever happens: it holds up a later DROP DATABASE.
    async fn mark_inner_schema_released(
        &self,
        mut conn: PgConnection,
        names: &TenantNames,
        needs_comment: bool,
        released: &str,
    ) -> Result<(), BackendError> {
        let result = if needs_comment {
            exec(
                &mut conn,
                format!(
                    "COMMENT ON SCHEMA {} IS {}",
                    quote_ident(&names.schema),
                    quote_literal(released)
                ),
                &format!(
                    "releasing schema {:?} in database {:?}",
                    names.schema, names.database
                ),
            )
            .await
        } else {
            Ok(())
        };
        let _ = conn.close().await;
        result
    }
}

/// What `remove_tenant` found to be the tenant's.
struct RemovalPlan {
    /// The tenant's role, when it is the tenant's.
    role: Option<RoleRow>,
    /// The schema or database, as errors and the audit trail name it.
    resource: String,
    drop_container: bool,
    /// A retained (released) schema or database owned by our role: the
    /// role cannot be dropped without it, so it is released again instead
    /// (this is a rollback of an adoption that did not finish).
    release_role_instead: bool,
    /// Resources with the tenant's names that are not its own, and why.
    skipped: Vec<(String, String)>,
}

/// What `release_tenant` found to be the tenant's.
struct ReleasePlan {
    /// The tenant's role, when it is the tenant's.
    role: Option<RoleRow>,
    resource: String,
    container_needs_comment: bool,
    /// In mode Database: a connection to the tenant's database, and whether
    /// its schema needs the released comment.
    inner: Option<(PgConnection, bool)>,
}

fn warn_not_releasing(tenant: &TenantRef, resource: &str, ownership: Ownership) {
    tracing::warn!(tenant = %tenant.name, detail = %not_ours_detail(ownership), "not releasing {resource}: it is not this tenant's");
}

/// The schema named `schema` in the database `executor` is connected to.
async fn read_schema<'c, E: PgExecutor<'c>>(
    executor: E,
    schema: &str,
    resource: &str,
) -> Result<Option<ObjectRow>, BackendError> {
    crate::metrics::sql(
        crate::metrics::Sql::Select,
        sqlx::query_as::<_, ObjectRow>(SCHEMA_SQL)
            .bind(schema)
            .fetch_optional(executor),
    )
    .await
    .map_err(|e| classify(e, &format!("reading {resource}")))
}

/// The admin URL's connect options with the TLS settings laid over them,
/// and the TLS in effect.
fn admin_options(
    url: &str,
    tls: &super::pg_tls::DatabaseTls,
) -> Result<(PgConnectOptions, super::pg_tls::EffectiveTls), BackendError> {
    let options: PgConnectOptions = url.parse().map_err(|e: sqlx::Error| {
        rejected(format!(
            "the admin database URL is not a valid PostgreSQL URL: {}",
            scrub_url_secret(&e.to_string(), url)
        ))
    })?;
    let tls = tls.resolve(url).map_err(rejected)?;
    let options = tls.apply(options);
    let options = options
        .application_name("tenantry")
        // Forced per session (a startup option beats every database and
        // role default): quote_literal() is always right, and in a
        // database a tenant owns, nothing the tenant made (a schema named
        // after the admin, a database default search_path, an operator
        // or function with an exact-match signature) can stand in for
        // pg_catalog's in the admin's statements.
        .options([
            ("standard_conforming_strings", "on"),
            ("lock_timeout", LOCK_TIMEOUT),
            ("search_path", ADMIN_SEARCH_PATH),
        ])
        .disable_statement_logging();
    Ok((options, tls))
}

/// Who the admin is on the server it connected to, and what it may do.
struct AdminSession {
    admin: String,
    database: String,
    version: i32,
    superuser: bool,
    createrole: bool,
    createdb: bool,
    standard_conforming_strings: String,
}

impl AdminSession {
    async fn read(pool: &PgPool) -> Result<Self, BackendError> {
        let (admin, database, version, superuser, createrole, createdb, scs): (
            String,
            String,
            i32,
            bool,
            bool,
            bool,
            String,
        ) = crate::metrics::sql(
            crate::metrics::Sql::Select,
            sqlx::query_as(
                "SELECT current_user::text, current_database()::text, \
                    current_setting('server_version_num')::int, \
                    r.rolsuper, r.rolcreaterole, r.rolcreatedb, \
                    current_setting('standard_conforming_strings') \
               FROM pg_roles r WHERE r.rolname = current_user",
            )
            .fetch_one(pool),
        )
        .await
        .map_err(|e| classify(e, "reading the admin role"))?;
        Ok(Self {
            admin,
            database,
            version,
            superuser,
            createrole,
            createdb,
            standard_conforming_strings: scs,
        })
    }

    /// Refuses a server or an admin role the backend cannot work safely with.
    fn check(&self) -> Result<(), BackendError> {
        let (admin, version) = (&self.admin, self.version);
        if version < 150_000 {
            return Err(rejected(format!(
                "PostgreSQL {version} is not supported: tenantry needs PostgreSQL 15 or newer"
            )));
        }
        if self.standard_conforming_strings != "on" {
            return Err(rejected(
                "standard_conforming_strings is off and could not be turned on for the session"
                    .to_string(),
            ));
        }
        if !(self.superuser || (self.createrole && self.createdb)) {
            return Err(rejected(format!(
                "the admin role {admin:?} needs CREATEROLE and CREATEDB (a superuser must run: ALTER ROLE {} CREATEROLE CREATEDB)",
                quote_ident(admin)
            )));
        }
        if self.superuser {
            tracing::warn!(admin = %admin, "the PostgreSQL admin role is a superuser; a role with only LOGIN CREATEROLE CREATEDB is enough");
        }
        Ok(())
    }
}

async fn read_public_schema(
    conn: &mut PgConnection,
    role_oid: Oid,
    doing: &str,
) -> Result<Option<PublicSchemaRow>, BackendError> {
    crate::metrics::sql(
        crate::metrics::Sql::Select,
        sqlx::query_as::<_, PublicSchemaRow>(PUBLIC_SCHEMA_SQL)
            .bind(role_oid)
            .fetch_optional(conn),
    )
    .await
    .map_err(|e| classify(e, doing))
}

/// What a read found under the tenant's name, once judged.
enum Found<T> {
    Absent,
    /// Tagged with this tenant's uid.
    Ours(T),
    /// Released by a Tenant of this name, or left by an interrupted attempt:
    /// taken over (comment rewritten, password set).
    Adopt(T),
}

impl<T> Found<T> {
    fn row(&self) -> Option<&T> {
        match self {
            Self::Absent => None,
            Self::Ours(row) | Self::Adopt(row) => Some(row),
        }
    }
}

/// The COMMENT that marks an object as the tenant's.
fn ownership_comment(tenant: &TenantRef, released: bool) -> String {
    let mut comment = format!(
        "{}={};{}={};{}={}",
        tags::MANAGED_BY,
        tags::MANAGED_BY_VALUE,
        tags::TENANT,
        tenant.name,
        tags::TENANT_UID,
        tenant.uid
    );
    if released {
        comment.push_str(&format!(";{}=true", tags::RELEASED));
    }
    comment
}

/// Splits a comment into key/value pairs. A part without `=` (a comment a
/// person wrote) becomes a pair too, so that a commented object is never
/// mistaken for an untagged one.
fn parse_comment(comment: &str) -> Vec<(&str, &str)> {
    comment
        .split(';')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| match part.split_once('=') {
            Some((key, value)) => (key.trim(), value.trim()),
            None => ("comment", part),
        })
        .collect()
}

fn ownership(tenant: &TenantRef, comment: Option<&str>) -> Ownership {
    match comment {
        None => Ownership::Untagged,
        Some(comment) => tenant.ownership_of(parse_comment(comment)),
    }
}

fn untagged_detail() -> String {
    "it has no tenantry ownership comment and was not made by an interrupted attempt of this tenant"
        .to_string()
}

fn not_ours_detail(ownership: Ownership) -> String {
    match ownership {
        Ownership::Foreign(detail) => detail,
        Ownership::Untagged => "it has no tenantry ownership comment".to_string(),
        Ownership::Released => {
            "it was released by an earlier Tenant of this name and has not been adopted".to_string()
        }
        Ownership::Ours => "it is this tenant's".to_string(),
    }
}

/// The attributes only a superuser can take away, as PostgreSQL spells them.
fn privileged_flags(row: &RoleRow) -> Vec<&'static str> {
    let mut flags = Vec::new();
    if row.rolsuper {
        flags.push("SUPERUSER");
    }
    if row.rolbypassrls {
        flags.push("BYPASSRLS");
    }
    if row.rolreplication {
        flags.push("REPLICATION");
    }
    flags
}

/// The ALTER ROLE clauses that bring the role to what a tenant role must be.
fn role_changes(row: &RoleRow, login: bool, connection_limit: i32) -> Vec<String> {
    let mut clauses: Vec<String> = privileged_flags(row)
        .into_iter()
        .map(|flag| format!("NO{flag}"))
        .collect();
    for (set, clause) in [
        (row.rolinherit, "NOINHERIT"),
        (row.rolcreaterole, "NOCREATEROLE"),
        (row.rolcreatedb, "NOCREATEDB"),
    ] {
        if set {
            clauses.push(clause.to_string());
        }
    }
    if row.rolcanlogin != login {
        clauses.push(if login { "LOGIN" } else { "NOLOGIN" }.to_string());
    }
    if row.rolconnlimit != connection_limit {
        clauses.push(format!("CONNECTION LIMIT {connection_limit}"));
    }
    clauses
}

/// Whether `setconfig` already holds `search_path = <schema>`. The server
/// stores the identifier quoted only when it needs quotes; accept both.
fn search_path_is_set(settings: &[String], schema: &str) -> bool {
    let plain = format!("search_path={schema}");
    let quoted = format!("search_path={}", quote_ident(schema));
    settings.iter().any(|s| *s == plain || *s == quoted)
}

/// Refuses tenant data that could not round-trip through the comment.
fn validate_tenant(tenant: &TenantRef, names: &TenantNames) -> Result<(), BackendError> {
    if names.tenant != tenant.name {
        return Err(rejected(format!(
            "names of tenant {:?} were passed for tenant {:?}",
            names.tenant, tenant.name
        )));
    }
    let fits =
        |v: &str| !v.is_empty() && !v.contains([';', '=']) && !v.chars().any(char::is_control);
    if !fits(&tenant.name) || !fits(&tenant.uid) {
        return Err(rejected(format!(
            "tenant {:?} (uid {:?}) cannot be recorded in a PostgreSQL ownership comment",
            tenant.name, tenant.uid
        )));
    }
    Ok(())
}

/// SASLprep (RFC 4013), which both libpq and the server apply, is the
/// identity on ASCII; it is not implemented here, so anything else is
/// refused rather than hashed into a verifier the server would not match.
fn check_password(password: &SecretString) -> Result<(), BackendError> {
    let p = password.expose_secret();
    if p.is_empty() || !p.is_ascii() || p.contains('\0') {
        return Err(rejected(
            "the tenant's database password must be non-empty printable ASCII".to_string(),
        ));
    }
    Ok(())
}

/// A SCRAM-SHA-256 verifier for `password` with a fresh random salt.
fn scram_verifier(password: &SecretString) -> Result<SecretString, BackendError> {
    check_password(password)?;
    let mut salt = [0u8; SCRAM_SALT_LEN];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut salt);
    Ok(SecretString::from(scram_sha256_verifier(
        password.expose_secret(),
        &salt,
    )))
}

/// The SCRAM-SHA-256 verifier (RFC 5802, RFC 7677) that PostgreSQL stores in
/// `pg_authid.rolpassword`, as libpq's `PQencryptPasswordConn` makes it:
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, base64.
/// `password` must be ASCII (see [`check_password`]). The result is a secret
/// too: it allows an offline guessing attack on the password.
pub fn scram_sha256_verifier(password: &str, salt: &[u8]) -> String {
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, SCRAM_ITERATIONS, &mut salted);
    let hmac = |key: &[u8], message: &[u8]| {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(message);
        mac.finalize().into_bytes()
    };
    let client_key = hmac(&salted, b"Client Key");
    let stored_key = Sha256::digest(client_key);
    let server_key = hmac(&salted, b"Server Key");
    format!(
        "SCRAM-SHA-256${SCRAM_ITERATIONS}:{}${}:{}",
        BASE64.encode(salt),
        BASE64.encode(stored_key),
        BASE64.encode(server_key)
    )
}

/// Runs one utility statement with the simple protocol: no parameters to
/// bind, and no prepared statement (which would keep a verifier cached).
async fn exec<'c, E: PgExecutor<'c>>(
    executor: E,
    sql: String,
    doing: &str,
) -> Result<(), BackendError> {
    crate::metrics::sql(
        crate::metrics::Sql::Ddl,
        sqlx::raw_sql(AssertSqlSafe(sql)).execute(executor),
    )
    .await
    .map(|_| ())
    .map_err(|e| classify(e, doing))
}

async fn begin_on<'c>(
    conn: &'c mut PgConnection,
    doing: &str,
) -> Result<sqlx::Transaction<'c, sqlx::Postgres>, BackendError> {
    sqlx::Connection::begin(conn)
        .await
        .map_err(|e| classify(e, doing))
}

async fn commit(
    tx: sqlx::Transaction<'_, sqlx::Postgres>,
    doing: &str,
) -> Result<(), BackendError> {
    tx.commit().await.map_err(|e| classify(e, doing))
}

async fn query_lock(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    doing: &str,
) -> Result<(), BackendError> {
    crate::metrics::sql(
        crate::metrics::Sql::Select,
        sqlx::query(SHARED_ACL_LOCK_SQL).execute(&mut **tx),
    )
    .await
    .map(|_| ())
    .map_err(|e| classify(e, doing))
}

pub(crate) fn rejected(message: String) -> BackendError {
    BackendError::Rejected {
        backend: Backend::Postgres,
        message: scrub(&message),
    }
}

fn conflict(resource: String, detail: String) -> BackendError {
    BackendError::Conflict {
        backend: Backend::Postgres,
        resource,
        detail,
    }
}

/// Whether a SQLSTATE (and message) is worth retrying. Besides connection,
/// resource and lock errors this includes the races of concurrent
/// provisioning: two creates of one name (the retry then reads the winner and
/// judges its ownership), and concurrent updates of one catalog row.
pub(crate) fn is_transient_sqlstate(code: &str, message: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(
            code,
            "57P01" | "57P02" | "57P03" | "57014" // shutdown, crash, cannot connect now, canceled
                | "40001" | "40P01" // serialization failure, deadlock
                | "55P03" | "55006" // lock not available, object in use (template1 busy)
                | "42710" | "42P06" | "42P07" | "42P04" | "23505" // concurrent create of one name
        )
        || (code == "XX000" && message.contains("tuple concurrently"))
        // DROP DATABASE ... WITH (FORCE) meets a backend that has not
        // authenticated yet (no role to be a member of); it is gone a moment later.
        || (code == "42501" && message.contains("whose process is being terminated"))
        // Another pooled session can refuse CREATE SCHEMA/DATABASE ... OWNER
        // for a role the admin was just granted (measured under load on
        // PostgreSQL 15; the granting session never does, and the tenant's
        // steps now use it). Tried again, it passes; membership that is
        // really missing still fails once the step's tries are spent.
        || (code == "42501" && message.starts_with("must be member of role"))
}

/// Whether a sqlx error is worth retrying: a lost or refused connection, or
/// a SQLSTATE [`is_transient_sqlstate`] accepts.
pub(crate) fn is_transient_error(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            is_transient_sqlstate(db.code().as_deref().unwrap_or_default(), db.message())
        }
        // A certificate that fails verification, or a server that refuses
        // TLS, fails the same way next time (and is never worked around).
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) if super::pg_tls::tls_failure(err).is_some() => {
            false
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

/// Turns a sqlx error into a backend error that names what was being done.
/// Statements are never part of the message (they may hold a verifier).
pub(crate) fn classify(err: sqlx::Error, doing: &str) -> BackendError {
    let transient = is_transient_error(&err);
    let message = match &err {
        sqlx::Error::Database(db) => {
            let code = db.code().map(Cow::into_owned).unwrap_or_default();
            let mut message = format!("{doing}: {} (SQLSTATE {code})", db.message());
            if let Some(detail) = db
                .try_downcast_ref::<PgDatabaseError>()
                .and_then(|e| e.detail())
            {
                message.push_str(&format!("; {detail}"));
            }
            message
        }
        _ => match super::pg_tls::tls_failure(&err) {
            Some(tls) => format!("{doing}: {tls}"),
            None => format!("{doing}: {err}"),
        },
    };
    let message = scrub(&message);
    if transient {
        BackendError::Unavailable {
            backend: Backend::Postgres,
            message,
        }
    } else {
        BackendError::Rejected {
            backend: Backend::Postgres,
            message,
        }
    }
}

/// Removes anything shaped like a SCRAM verifier: a last line of defence in
/// case the server ever echoes part of a statement.
fn scrub(message: &str) -> String {
    const MARK: &str = "SCRAM-SHA-256$";
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(MARK) {
        out.push_str(&rest[..at]);
        out.push_str("[redacted]");
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| c.is_whitespace() || c == '\'' || c == '"')
            .unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// A URL parse error may quote the URL: take its password out.
fn scrub_url_secret(message: &str, url: &str) -> String {
    match url::Url::parse(url)
        .ok()
        .and_then(|u| u.password().map(str::to_string))
    {
        Some(password) if !password.is_empty() => message.replace(&password, "[redacted]"),
        _ => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acme() -> TenantRef {
        TenantRef {
            name: "acme".into(),
            uid: "uid-1".into(),
            display_name: None,
        }
    }

    fn role_row() -> RoleRow {
        RoleRow {
            oid: Oid(1),
            rolsuper: false,
            rolinherit: false,
            rolcreaterole: false,
            rolcreatedb: false,
            rolcanlogin: true,
            rolreplication: false,
            rolbypassrls: false,
            rolconnlimit: 20,
            comment: None,
            admin_usage: true,
            admin_set: true,
        }
    }

    #[test]
    fn the_verifier_matches_one_postgresql_15_made() {
        // `CREATE ROLE r PASSWORD 'correct horse battery staple'` on the local
        // PostgreSQL 15.18 (password_encryption = scram-sha-256), then
        // `SELECT rolpassword FROM pg_authid`: the server picked the salt.
        let server = "SCRAM-SHA-256$4096:Z5qBc46gdJ5FoLNWyXq+pg==$RXV8WZXmWjdwtV9atRuQwXEJDUp1pRZQLNi7hXMll7A=:ZI1jyDScdnh583PQu+jHfMrWFhcGQB/DmuetcX87YJU=";
        let salt = BASE64.decode("Z5qBc46gdJ5FoLNWyXq+pg==").unwrap();
        assert_eq!(
            scram_sha256_verifier("correct horse battery staple", &salt),
            server
        );
    }

    #[test]
    fn the_verifier_matches_an_independent_implementation() {
        // Python's hashlib.pbkdf2_hmac + hmac over a fixed salt 0..15.
        let salt: Vec<u8> = (0..16).collect();
        assert_eq!(
            scram_sha256_verifier("correct horse battery staple", &salt),
            "SCRAM-SHA-256$4096:AAECAwQFBgcICQoLDA0ODw==$ONYbSJBXtKl6bP6PVqw8pm9e7EiacprLnoUQPFS80Hw=:IPOtHuGJ2HifEQg74W2XXqqCrCyQG55GbPRHa6g6n9w="
        );
    }

    #[test]
    fn each_verifier_gets_a_fresh_salt_and_never_contains_the_password() {
        let password = SecretString::from("p4ssw0rdPASSWORD");
        let a = scram_verifier(&password).unwrap();
        let b = scram_verifier(&password).unwrap();
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert!(a.expose_secret().starts_with("SCRAM-SHA-256$4096:"));
        assert!(!a.expose_secret().contains("p4ssw0rd"));
        let salt = a.expose_secret()["SCRAM-SHA-256$4096:".len()..]
            .split('$')
            .next()
            .unwrap();
        assert_eq!(BASE64.decode(salt).unwrap().len(), SCRAM_SALT_LEN);
    }

    #[test]
    fn passwords_sasl_prep_would_change_are_refused() {
        for bad in ["", "pässwort", "nul\0byte"] {
            assert!(check_password(&SecretString::from(bad)).is_err(), "{bad:?}");
        }
        assert!(check_password(&SecretString::from("Ab3 !~")).is_ok());
    }

    #[test]
    fn the_ownership_comment_round_trips() {
        let t = acme();
        let comment = ownership_comment(&t, false);
        assert_eq!(
            comment,
            "tenantry.dev/managed-by=tenantry;tenantry.dev/tenant=acme;tenantry.dev/tenant-uid=uid-1"
        );
        assert_eq!(ownership(&t, Some(&comment)), Ownership::Ours);
        let released = ownership_comment(&t, true);
        assert!(released.ends_with(";tenantry.dev/released=true"));
        // Released by us is still ours; by an older Tenant of the name, adoptable.
        assert_eq!(ownership(&t, Some(&released)), Ownership::Ours);
        let successor = TenantRef {
            uid: "uid-2".into(),
            ..acme()
        };
        assert_eq!(ownership(&successor, Some(&released)), Ownership::Released);
        assert!(matches!(
            ownership(&successor, Some(&comment)),
            Ownership::Foreign(_)
        ));
    }

    #[test]
    fn comments_people_wrote_are_foreign_not_untagged() {
        let t = acme();
        assert_eq!(ownership(&t, None), Ownership::Untagged);
        for human in ["billing data, do not drop", "owner=finance", " ; "] {
            let own = ownership(&t, Some(human));
            if human.trim_matches([' ', ';']).is_empty() {
                assert_eq!(own, Ownership::Untagged);
            } else {
                assert!(matches!(own, Ownership::Foreign(_)), "{human:?}: {own:?}");
            }
        }
        // Another tenant's release is never ours to adopt.
        let other = "tenantry.dev/managed-by=tenantry;tenantry.dev/tenant=globex;tenantry.dev/tenant-uid=u;tenantry.dev/released=true";
        assert!(matches!(ownership(&t, Some(other)), Ownership::Foreign(_)));
        assert_eq!(
            parse_comment(" a = b ;c"),
            vec![("a", "b"), ("comment", "c")]
        );
    }

    #[test]
    fn tenants_that_cannot_be_written_in_a_comment_are_refused() {
        let names = TenantNames::new("acme", "p").unwrap();
        assert!(validate_tenant(&acme(), &names).is_ok());
        let bad_uid = TenantRef {
            uid: "x;tenantry.dev/released=true".into(),
            ..acme()
        };
        assert!(validate_tenant(&bad_uid, &names).is_err());
        let other = TenantNames::new("globex", "p").unwrap();
        assert!(validate_tenant(&acme(), &other).is_err());
    }

    #[test]
    fn a_role_as_desired_needs_no_change() {
        assert!(role_changes(&role_row(), true, 20).is_empty());
    }

    #[test]
    fn only_the_attributes_that_differ_are_altered() {
        let row = RoleRow {
            rolinherit: true,
            rolcreatedb: true,
            rolconnlimit: -1,
            ..role_row()
        };
        assert_eq!(
            role_changes(&row, false, 5),
            ["NOINHERIT", "NOCREATEDB", "NOLOGIN", "CONNECTION LIMIT 5"]
        );
        let row = RoleRow {
            rolsuper: true,
            rolbypassrls: true,
            ..role_row()
        };
        assert_eq!(privileged_flags(&row), ["SUPERUSER", "BYPASSRLS"]);
        assert_eq!(role_changes(&row, true, 20), ["NOSUPERUSER", "NOBYPASSRLS"]);
    }

    #[test]
    fn the_search_path_is_recognised_as_the_server_stores_it() {
        // The server stores `search_path=t_ab_1` for `SET search_path = "t_ab_1"`.
        assert!(search_path_is_set(&["search_path=t_ab_1".into()], "t_ab_1"));
        assert!(search_path_is_set(
            &["search_path=\"t_ab_1\"".into()],
            "t_ab_1"
        ));
        assert!(!search_path_is_set(
            &["search_path=t_ab_1, public".into()],
            "t_ab_1"
        ));
        assert!(!search_path_is_set(&[], "t_ab_1"));
    }

    #[test]
    fn races_and_outages_are_transient_and_the_rest_is_not() {
        for code in [
            "08006", "53300", "57P01", "57P03", "40001", "40P01", "55P03", "42710", "42P06",
            "42P04",
        ] {
            assert!(is_transient_sqlstate(code, ""), "{code}");
        }
        assert!(is_transient_sqlstate("XX000", "tuple concurrently updated"));
        assert!(!is_transient_sqlstate("XX000", "cache lookup failed"));
        assert!(is_transient_sqlstate(
            "42501",
            "must be member of role \"t_a_1\""
        ));
        assert!(!is_transient_sqlstate(
            "42501",
            "permission denied for schema public"
        ));
        for code in ["42501", "42601", "2BP01", "22023"] {
            assert!(!is_transient_sqlstate(code, ""), "{code}");
        }
        assert!(classify(sqlx::Error::PoolTimedOut, "x").is_transient());
        assert!(!classify(sqlx::Error::RowNotFound, "x").is_transient());
    }

    #[test]
    fn verifiers_are_scrubbed_from_messages() {
        let v = scram_sha256_verifier("pw", &[1; 16]);
        let m = scrub(&format!("syntax error near '{v}' and \"{v}\" or {v}"));
        assert!(!m.contains("SCRAM-SHA-256$"), "{m}");
        assert_eq!(
            m,
            "syntax error near '[redacted]' and \"[redacted]\" or [redacted]"
        );
        assert_eq!(
            scrub_url_secret("bad url postgres://a:s3cret@h/d", "postgres://a:s3cret@h/d"),
            "bad url postgres://a:[redacted]@h/d"
        );
    }
}
