//! The tamper-evident audit trail: one row per change tenantry makes for a
//! tenant, in an operator-owned schema of the shared database.
//!
//! Rows of a tenant form a hash chain: each row stores the hash of the
//! previous row of the same tenant (`prev_hash`, 64 zeros for the first) and
//! its own SHA-256 over the canonical encoding of every other column (see
//! [`canonical`]). Changing, removing or reordering a row breaks the chain at
//! that row, which [`AuditLog::verify`] finds by recomputing every hash.
//!
//! Append-only is enforced by the database, not only by this code: the admin
//! role owns the table (it creates it), so the table's owner privileges
//! UPDATE, DELETE and TRUNCATE are revoked from it and from PUBLIC, and a
//! trigger refuses them for everyone, superusers included. The owner could
//! grant itself the privileges back or drop the trigger; that is why the
//! operator refuses to start when the trigger is missing or disabled, and why
//! verification never trusts stored hashes.
//!
//! Backend writes are recorded where they happen, through [`note`], which
//! reads the tenant being reconciled from a task-local [`Scope`] set by the
//! controller. That keeps the backend traits unchanged while every write made
//! during a tenant's reconcile is recorded; outside a scope (backend tests,
//! probes) `note` records nothing.

pub mod anchor;
pub mod checkpoint;

use std::sync::{Arc, Mutex};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{AssertSqlSafe, PgPool, Row};

pub use crate::backends::Action;
use crate::backends::{AuditSink, Backend, BackendError};
use crate::naming::quote_ident;

/// `prev_hash` of the first row of a chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// The schema tenantry keeps its audit trail in unless told otherwise.
pub const DEFAULT_SCHEMA: &str = "tenantry_audit";
/// Version tag at the start of the canonical encoding, so a future format
/// can never be confused with this one.
const ENCODING_VERSION: &str = "tenantry-audit-v1";

/// The owner role's name is the schema's with this suffix.
const OWNER_SUFFIX: &str = "_owner";

/// The store's objects, created as the owner role. The owner revokes its
/// own UPDATE, DELETE and TRUNCATE too: nobody can log in as it, but a
/// superuser acting as it must still take a visible step to get them back.
fn store_ddl(s: &str) -> Vec<String> {
    vec![
        format!(
            "CREATE TABLE {s}.events (
                seq bigserial PRIMARY KEY,
                at timestamptz NOT NULL,
                tenant text NOT NULL,
                tenant_uid text,
                actor text NOT NULL,
                pod text NOT NULL,
                generation bigint,
                resource_version text,
                action text NOT NULL,
                target text NOT NULL,
                outcome text NOT NULL,
                detail jsonb NOT NULL,
                prev_hash text NOT NULL,
                hash text NOT NULL)"
        ),
        format!("CREATE INDEX events_tenant_seq ON {s}.events (tenant, seq)"),
        format!(
            "CREATE FUNCTION {s}.refuse_change() RETURNS trigger LANGUAGE plpgsql
             SET search_path = pg_catalog AS $$
             BEGIN
               RAISE EXCEPTION 'tenantry audit rows are append-only: % refused', TG_OP
                 USING ERRCODE = 'insufficient_privilege';
             END $$"
        ),
        format!(
            "CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON {s}.events
             FOR EACH ROW EXECUTE FUNCTION {s}.refuse_change()"
        ),
        format!(
            "CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON {s}.events
             FOR EACH STATEMENT EXECUTE FUNCTION {s}.refuse_change()"
        ),
        format!("REVOKE UPDATE, DELETE, TRUNCATE ON {s}.events FROM PUBLIC, CURRENT_USER"),
    ]
}

/// What [`AuditLog::ensure_schema`] runs, given what it found: the schema
/// `s`'s current owner (none when it does not exist) and whether the owner
/// role exists. Nothing when the store is already the owner role's.
fn store_statements(
    s: &str,
    owner: &str,
    admin: &str,
    version: i32,
    role_exists: bool,
    schema_owner: Option<&str>,
) -> Vec<String> {
    // Membership only for the length of this transaction: enough to
    // make the owner own things, never visible to anyone else.
    let join = if version >= 160_000 {
        format!("GRANT {owner} TO CURRENT_USER WITH INHERIT FALSE, SET TRUE")
    } else {
        format!("GRANT {owner} TO CURRENT_USER")
    };
    let leave = format!("REVOKE {owner} FROM CURRENT_USER");
    let grants = [
        format!(
            "GRANT USAGE ON SCHEMA {s} TO {admin}",
            admin = quote_ident(admin)
        ),
        format!(
            "GRANT SELECT, INSERT ON {s}.events TO {admin}",
            admin = quote_ident(admin)
        ),
        format!(
            "GRANT USAGE ON SEQUENCE {s}.events_seq_seq TO {admin}",
            admin = quote_ident(admin)
        ),
    ];
    let mut statements: Vec<String> = Vec::new();
    if !role_exists {
        statements.push(format!("CREATE ROLE {owner} NOLOGIN"));
        statements.push(format!(
            "COMMENT ON ROLE {owner} IS 'tenantry: owns the audit trail in schema {s}; nobody logs in as it'"
        ));
    }
    match schema_owner {
        None => {
            statements.push(join.clone());
            statements.push(format!("CREATE SCHEMA {s} AUTHORIZATION {owner}"));
            statements.push(format!("SET LOCAL ROLE {owner}"));
            statements.extend(store_ddl(s));
            statements.extend(grants.iter().cloned());
            statements.push("RESET ROLE".to_string());
            statements.push(leave.clone());
        }
        // Written by a version whose admin owned the store: hand it to
        // the owner. Ownership changes carry the old owner's privileges
        // to the new one, so the admin is left with none until granted.
        Some(current) if current == admin => {
            statements.push(join.clone());
            statements.push(format!("ALTER SCHEMA {s} OWNER TO {owner}"));
            statements.push(format!("ALTER TABLE {s}.events OWNER TO {owner}"));
            statements.push(format!(
                "ALTER FUNCTION {s}.refuse_change() OWNER TO {owner}"
            ));
            statements.push(format!("SET LOCAL ROLE {owner}"));
            statements.push(format!(
                "REVOKE UPDATE, DELETE, TRUNCATE ON {s}.events FROM PUBLIC, {owner}"
            ));
            statements.extend(grants.iter().cloned());
            statements.push("RESET ROLE".to_string());
            statements.push(leave.clone());
            tracing::info!(schema = %s, owner = %owner, "moved the audit trail to its own owner role");
        }
        Some(_) => {}
    }
    statements
}

#[derive(sqlx::FromRow)]
struct GuardFacts {
    table_exists: bool,
    schema_owner: Option<String>,
    table_owner: Option<String>,
    function_owner: Option<String>,
    owner_can_login: Option<bool>,
    admin_acts_as_owner: bool,
    admin_is_superuser: Option<bool>,
}

/// What happened, as the caller knows it; the log adds time, actor and chain.
#[derive(Clone, Debug)]
pub struct AuditEntry {
    pub tenant: String,
    pub tenant_uid: Option<String>,
    pub generation: Option<i64>,
    pub resource_version: Option<String>,
    pub action: String,
    pub target: String,
    pub outcome: Outcome,
    /// Names, ids and flags only: never a password or secret value.
    pub detail: serde_json::Value,
}

pub use crate::backends::operation::Outcome;

/// One stored row.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AuditRow {
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub tenant: String,
    pub tenant_uid: Option<String>,
    pub actor: String,
    pub pod: String,
    pub generation: Option<i64>,
    pub resource_version: Option<String>,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub detail: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

/// The first broken link of a tenant's chain.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChainBreak {
    pub seq: i64,
    pub tenant: String,
    pub action: String,
    /// `prev_hash` (the row does not follow the one before it: a row was
    /// removed, inserted or moved) or `hash` (the row's own content changed).
    pub field: &'static str,
    pub expected: String,
    pub stored: String,
    /// The seq of the row the chain held before this one, if any.
    pub previous_seq: Option<i64>,
    /// The row as stored.
    pub row: AuditRow,
}

impl std::fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let why = match self.field {
            "prev_hash" => format!(
                "does not follow the row before it (seq {}): a row was removed, inserted or reordered",
                self.previous_seq
                    .map_or_else(|| "none".to_string(), |s| s.to_string())
            ),
            _ => "its content does not match its hash: the row was altered".to_string(),
        };
        write!(
            f,
            "audit chain of tenant {:?} broken at seq {} (action {}): {why}; expected {} {}, stored {}",
            self.tenant, self.seq, self.action, self.field, self.expected, self.stored
        )
    }
}

/// The hash input of a row: the version tag, then every column but `hash`
/// in a fixed order, each as `<byte length>:<bytes>;` or `~;` for NULL, so
/// no two different rows encode alike. Time is RFC 3339 UTC with
/// microseconds (PostgreSQL's precision); `detail` is compact JSON with
/// sorted keys (how serde_json writes a `Value`, and jsonb keeps no order).
pub fn canonical(row: &AuditRow) -> Vec<u8> {
    fn field(out: &mut Vec<u8>, value: Option<&str>) {
        match value {
            Some(v) => {
                out.extend_from_slice(v.len().to_string().as_bytes());
                out.push(b':');
                out.extend_from_slice(v.as_bytes());
            }
            None => out.push(b'~'),
        }
        out.push(b';');
    }
    let mut out = Vec::with_capacity(512);
    field(&mut out, Some(ENCODING_VERSION));
    field(&mut out, Some(&row.seq.to_string()));
    field(
        &mut out,
        Some(&row.at.to_rfc3339_opts(SecondsFormat::Micros, true)),
    );
    field(&mut out, Some(&row.tenant));
    field(&mut out, row.tenant_uid.as_deref());
    field(&mut out, Some(&row.actor));
    field(&mut out, Some(&row.pod));
    field(&mut out, row.generation.map(|g| g.to_string()).as_deref());
    field(&mut out, row.resource_version.as_deref());
    field(&mut out, Some(&row.action));
    field(&mut out, Some(&row.target));
    field(&mut out, Some(&row.outcome));
    field(&mut out, Some(&row.detail.to_string()));
    field(&mut out, Some(&row.prev_hash));
    out
}

pub fn row_hash(row: &AuditRow) -> String {
    let digest = Sha256::digest(canonical(row));
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Walks rows of one tenant in seq order; the first break, if any.
pub fn verify_chain(rows: &[AuditRow]) -> Option<ChainBreak> {
    let mut prev = GENESIS.to_string();
    let mut previous_seq = None;
    for row in rows {
        let broken = |field, expected: String, stored: &str| ChainBreak {
            seq: row.seq,
            tenant: row.tenant.clone(),
            action: row.action.clone(),
            field,
            expected,
            stored: stored.to_string(),
            previous_seq,
            row: row.clone(),
        };
        if row.prev_hash != prev {
            return Some(broken("prev_hash", prev, &row.prev_hash));
        }
        let computed = row_hash(row);
        if computed != row.hash {
            return Some(broken("hash", computed, &row.hash));
        }
        prev = row.hash.clone();
        previous_seq = Some(row.seq);
    }
    None
}

fn db_error(what: &str, e: sqlx::Error) -> BackendError {
    let message = format!("audit trail: {what}: {e}");
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
            BackendError::Unavailable {
                backend: Backend::Postgres,
                message,
            }
        }
        _ => BackendError::Rejected {
            backend: Backend::Postgres,
            message,
        },
    }
}

/// A valid unquoted identifier, so the schema can be put into SQL as is.
pub fn validate_schema_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63 - OWNER_SUFFIX.len()
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "audit schema {name:?} must be a lowercase identifier ([a-z_][a-z0-9_]*, at most 57 bytes: its owner role adds {OWNER_SUFFIX:?})"
        ))
    }
}

/// The audit trail, over the admin connection.
#[derive(Clone, Debug)]
pub struct AuditLog {
    pool: PgPool,
    schema: String,
    actor: String,
    pod: String,
    /// Why the store failed a guard check while running, if it did: every
    /// later write is refused with it (fail closed).
    tampered: Arc<Mutex<Option<String>>>,
}

impl AuditLog {
    pub fn new(pool: PgPool, schema: &str, actor: &str, pod: &str) -> Result<Self, String> {
        validate_schema_name(schema)?;
        Ok(Self {
            pool,
            schema: schema.to_string(),
            actor: actor.to_string(),
            pod: pod.to_string(),
            tampered: Arc::default(),
        })
    }

    /// The pod this process runs as: `POD_NAME` (set from the downward API),
    /// else the host name.
    pub fn current_pod() -> String {
        std::env::var("POD_NAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .ok()
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|h| h.trim().to_string())
            })
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unknown".to_string())
    }

    fn table(&self) -> String {
        format!("{}.events", self.schema)
    }

    /// The schema the trail lives in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The NOLOGIN role that owns the store. The operator's admin is not a
    /// member of it, so it cannot alter, disable or drop what guards the
    /// trail; it may only read and append.
    pub fn owner_role(&self) -> String {
        format!("{}{OWNER_SUFFIX}", self.schema)
    }

    /// Creates the store on first start, and moves a store of an earlier
    /// version (owned by the admin itself) to the owner role. When the store
    /// exists it is only checked: a table or trigger that went missing is
    /// tampering, not something to quietly recreate.
    pub async fn ensure_schema(&self) -> Result<(), BackendError> {
        let s = &self.schema;
        let owner = self.owner_role();
        let mut tx = self.pool.begin().await.map_err(|e| db_error("begin", e))?;
        // Operators starting together must not race on CREATE.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('tenantry-audit-schema'))")
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error("lock", e))?;
        let (schema_owner, role_exists, version): (Option<String>, bool, i32) = sqlx::query_as(
            "SELECT (SELECT pg_get_userbyid(nspowner)::text FROM pg_namespace WHERE nspname = $1), \
                    EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $2), \
                    current_setting('server_version_num')::int",
        )
        .bind(s)
        .bind(&owner)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| db_error("look for the store", e))?;
        let admin: String = sqlx::query_scalar("SELECT current_user::text")
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| db_error("read the admin's name", e))?;
        let statements = store_statements(
            s,
            &owner,
            &admin,
            version,
            role_exists,
            schema_owner.as_deref(),
        );
        for sql in &statements {
            sqlx::query(AssertSqlSafe(sql.as_str()))
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error("create the audit store", e))?;
        }
        if schema_owner.is_none() {
            tracing::info!(schema = %s, owner = %owner, "created the audit trail store");
        }
        tx.commit().await.map_err(|e| db_error("commit", e))?;
        self.check_guards().await
    }

    /// The store is as [`ensure_schema`](Self::ensure_schema) made it: the
    /// table exists, both triggers exist and fire, everything is owned by
    /// the owner role, which nobody logs in as and the operator cannot act
    /// as, and the operator's connection has no right to change rows.
    ///
    /// Checked at start and again every checkpoint interval; a failure stops
    /// every later audit write (and so every change) until the store is
    /// repaired and the operator restarted.
    pub async fn check_guards(&self) -> Result<(), BackendError> {
        let result = self.read_guards().await;
        if let Err(BackendError::Rejected { message, .. }) = &result {
            let mut tampered = self
                .tampered
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            tampered.get_or_insert_with(|| message.clone());
        }
        result
    }

    async fn read_guards(&self) -> Result<(), BackendError> {
        let table = self.table();
        let owner = self.owner_role();
        let facts: GuardFacts = sqlx::query_as(
            "SELECT to_regclass($1) IS NOT NULL AS table_exists, \
                    (SELECT pg_get_userbyid(nspowner)::text FROM pg_namespace WHERE nspname = $2) AS schema_owner, \
                    (SELECT pg_get_userbyid(relowner)::text FROM pg_class WHERE oid = to_regclass($1)) AS table_owner, \
                    (SELECT pg_get_userbyid(p.proowner)::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
                      WHERE n.nspname = $2 AND p.proname = 'refuse_change') AS function_owner, \
                    (SELECT rolcanlogin FROM pg_roles WHERE rolname = $3) AS owner_can_login, \
                    CASE WHEN NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $3) THEN false \
                         WHEN current_setting('server_version_num')::int >= 160000 \
                           THEN pg_has_role(current_user, $3, 'USAGE') OR pg_has_role(current_user, $3, 'SET') \
                         ELSE pg_has_role(current_user, $3, 'MEMBER') END AS admin_acts_as_owner, \
                    (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS admin_is_superuser",
        )
        .bind(&table)
        .bind(&self.schema)
        .bind(&owner)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| db_error("read the store's guards", e))?;
        self.check_owners(&facts, &owner)?;
        self.check_triggers(&table).await?;
        self.check_not_writable(&table, &facts).await
    }

    /// The refusal every failed guard check reports.
    fn tampered(&self, message: String) -> BackendError {
        BackendError::Rejected {
            backend: Backend::Postgres,
            message: format!(
                "the audit trail {}.events was tampered with or is incomplete: {message}; \
                 tenantry refuses to run without a trustworthy audit trail",
                self.schema
            ),
        }
    }

    /// The table exists, the owner role owns the store, nobody logs in as
    /// it and the operator cannot act as it.
    fn check_owners(&self, facts: &GuardFacts, owner: &str) -> Result<(), BackendError> {
        if !facts.table_exists {
            return Err(self.tampered("the schema exists but its events table is missing".into()));
        }
        for (what, found) in [
            ("schema", &facts.schema_owner),
            ("table", &facts.table_owner),
            ("function refuse_change", &facts.function_owner),
        ] {
            if found.as_deref() != Some(owner) {
                return Err(self.tampered(format!(
                    "its {what} is owned by {found:?}, not by the owner role {owner:?}"
                )));
            }
        }
        if facts.owner_can_login != Some(false) {
            return Err(self.tampered(format!(
                "the owner role {owner:?} may log in (or is missing)"
            )));
        }
        if facts.admin_acts_as_owner {
            return Err(self.tampered(format!(
                "the operator's role is a member of the owner role {owner:?}"
            )));
        }
        Ok(())
    }

    async fn check_triggers(&self, table: &str) -> Result<(), BackendError> {
        let triggers: Vec<(String, String)> = sqlx::query_as(
            "SELECT tgname::text, tgenabled::text FROM pg_trigger
             WHERE tgrelid = to_regclass($1) AND NOT tgisinternal",
        )
        .bind(table)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("read the triggers", e))?;
        for wanted in ["append_only", "append_only_truncate"] {
            match triggers.iter().find(|(name, _)| name == wanted) {
                None => return Err(self.tampered(format!("trigger {wanted} was dropped"))),
                // 'O' fires in normal sessions, 'A' always; 'D' and 'R' do not.
                Some((_, enabled)) if enabled != "O" && enabled != "A" => {
                    return Err(self.tampered(format!("trigger {wanted} is disabled")));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    async fn check_not_writable(
        &self,
        table: &str,
        facts: &GuardFacts,
    ) -> Result<(), BackendError> {
        // A superuser passes every privilege check (only the trigger holds
        // it back); the backend already warns against running as one.
        let writable: bool = sqlx::query_scalar(
            "SELECT has_table_privilege($1, 'UPDATE') OR has_table_privilege($1, 'DELETE') \
                 OR has_table_privilege($1, 'TRUNCATE')",
        )
        .bind(table)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| db_error("read the privileges", e))?;
        if writable && !facts.admin_is_superuser.unwrap_or(false) {
            return Err(
                self.tampered("the operator's role was granted UPDATE, DELETE or TRUNCATE".into())
            );
        }
        Ok(())
    }

    /// Checks the chains of the tenants this operator manages: each verifies,
    /// and each tenant already provisioned (`true`) has one.
    pub async fn check_chains(&self, tenants: &[(String, bool)]) -> Result<(), BackendError> {
        for (tenant, provisioned) in tenants {
            let rows = self.log(tenant).await?;
            if let Some(broken) = verify_chain(&rows) {
                return Err(BackendError::Rejected {
                    backend: Backend::Postgres,
                    message: format!("{broken}; tenantry refuses to run on a tampered audit trail"),
                });
            }
            if *provisioned && rows.is_empty() {
                return Err(BackendError::Rejected {
                    backend: Backend::Postgres,
                    message: format!(
                        "tenant {tenant:?} is provisioned but its audit chain in {} is missing: \
                         the audit trail was removed or replaced; tenantry refuses to run",
                        self.table()
                    ),
                });
            }
        }
        Ok(())
    }

    /// Why the store is no longer trusted, once a guard check failed.
    pub fn distrusted(&self) -> Option<String> {
        self.tampered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Appends one row to the tenant's chain and returns it.
    pub async fn record(&self, entry: AuditEntry) -> Result<AuditRow, BackendError> {
        if let Some(why) = self.distrusted() {
            return Err(BackendError::Rejected {
                backend: Backend::Postgres,
                message: why,
            });
        }
        let mut tx = self.pool.begin().await.map_err(|e| db_error("begin", e))?;
        // One writer per chain at a time, across operator replicas, so two
        // rows never claim the same predecessor.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('tenantry-audit:' || $1))")
            .bind(&entry.tenant)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error("lock the chain", e))?;
        // A statement of its own after the lock, so its snapshot sees the row
        // of whoever held the lock before. The seq is part of the hash, so it
        // is taken here too, in the same round trip.
        let (prev, seq): (Option<String>, i64) = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT (SELECT hash FROM {} WHERE tenant = $1 ORDER BY seq DESC LIMIT 1), \
                    nextval(pg_get_serial_sequence($2, 'seq'))",
            self.table()
        )))
        .bind(&entry.tenant)
        .bind(self.table())
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| db_error("read the chain head", e))?;
        let now = Utc::now();
        let at = DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now);
        let mut row = AuditRow {
            seq,
            at,
            tenant: entry.tenant,
            tenant_uid: entry.tenant_uid,
            actor: self.actor.clone(),
            pod: self.pod.clone(),
            generation: entry.generation,
            resource_version: entry.resource_version,
            action: entry.action,
            target: entry.target,
            outcome: entry.outcome.as_str().to_string(),
            detail: entry.detail,
            prev_hash: prev.unwrap_or_else(|| GENESIS.to_string()),
            hash: String::new(),
        };
        row.hash = row_hash(&row);
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {} (seq, at, tenant, tenant_uid, actor, pod, generation, resource_version,
                 action, target, outcome, detail, prev_hash, hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            self.table()
        )))
        .bind(row.seq)
        .bind(row.at)
        .bind(&row.tenant)
        .bind(&row.tenant_uid)
        .bind(&row.actor)
        .bind(&row.pod)
        .bind(row.generation)
        .bind(&row.resource_version)
        .bind(&row.action)
        .bind(&row.target)
        .bind(&row.outcome)
        .bind(&row.detail)
        .bind(&row.prev_hash)
        .bind(&row.hash)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error("append a row", e))?;
        tx.commit().await.map_err(|e| db_error("commit", e))?;
        tracing::debug!(tenant = %row.tenant, seq = row.seq, action = %row.action, target = %row.target, "audit row written");
        Ok(row)
    }

    /// The action and tenant uid of the last row of a tenant's chain.
    pub async fn head(
        &self,
        tenant: &str,
    ) -> Result<Option<(String, Option<String>)>, BackendError> {
        sqlx::query_as(AssertSqlSafe(format!(
            "SELECT action, tenant_uid FROM {} WHERE tenant = $1 ORDER BY seq DESC LIMIT 1",
            self.table()
        )))
        .bind(tenant)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error("read the chain head", e))
    }

    /// The seq and hash of the newest row of a tenant's chain.
    pub async fn last_row(&self, tenant: &str) -> Result<Option<(i64, String)>, BackendError> {
        sqlx::query_as(AssertSqlSafe(format!(
            "SELECT seq, hash FROM {} WHERE tenant = $1 ORDER BY seq DESC LIMIT 1",
            self.table()
        )))
        .bind(tenant)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error("read the chain head", e))
    }

    /// Checks that the row a Tenant's status recorded as its chain head is
    /// still there, unchanged. A message when it is not: rows were removed
    /// from the end of the chain, or the head row was rewritten.
    pub async fn check_head(
        &self,
        tenant: &str,
        seq: i64,
        hash: &str,
    ) -> Result<Option<String>, BackendError> {
        let stored: Option<String> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT hash FROM {} WHERE tenant = $1 AND seq = $2",
            self.table()
        )))
        .bind(tenant)
        .bind(seq)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error("read the recorded chain head", e))?;
        Ok(match stored {
            None => Some(format!(
                "tenant {tenant}: row seq {seq}, recorded as the chain head in the Tenant's status, is missing \
                 (rows were removed from the end of the chain)"
            )),
            Some(stored) if stored != hash => Some(format!(
                "tenant {tenant}: row seq {seq} has hash {stored}, but the Tenant's status recorded {hash}"
            )),
            Some(_) => None,
        })
    }

    /// The last action of every tenant's chain.
    pub async fn last_actions(&self) -> Result<Vec<(String, String)>, BackendError> {
        sqlx::query_as(AssertSqlSafe(format!(
            "SELECT DISTINCT ON (tenant) tenant, action FROM {} ORDER BY tenant, seq DESC",
            self.table()
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("read the chain ends", e))
    }

    /// A tenant's rows, in order.
    pub async fn log(&self, tenant: &str) -> Result<Vec<AuditRow>, BackendError> {
        self.rows(Some(tenant)).await
    }

    async fn rows(&self, tenant: Option<&str>) -> Result<Vec<AuditRow>, BackendError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT seq, at, tenant, tenant_uid, actor, pod, generation, resource_version, action,
                    target, outcome, detail, prev_hash, hash
             FROM {} WHERE $1::text IS NULL OR tenant = $1 ORDER BY tenant, seq",
            self.table()
        )))
        .bind(tenant)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("read the trail", e))?;
        rows.iter()
            .map(|r| {
                Ok(AuditRow {
                    seq: r.try_get("seq")?,
                    at: r.try_get("at")?,
                    tenant: r.try_get("tenant")?,
                    tenant_uid: r.try_get("tenant_uid")?,
                    actor: r.try_get("actor")?,
                    pod: r.try_get("pod")?,
                    generation: r.try_get("generation")?,
                    resource_version: r.try_get("resource_version")?,
                    action: r.try_get("action")?,
                    target: r.try_get("target")?,
                    outcome: r.try_get("outcome")?,
                    detail: r.try_get("detail")?,
                    prev_hash: r.try_get("prev_hash")?,
                    hash: r.try_get("hash")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(|e| db_error("decode a row", e))
    }

    /// The first break of each chain (of one tenant, or of all).
    pub async fn verify(&self, tenant: Option<&str>) -> Result<Vec<ChainBreak>, BackendError> {
        let rows = self.rows(tenant).await?;
        let mut breaks = Vec::new();
        for chain in rows.chunk_by(|a, b| a.tenant == b.tenant) {
            breaks.extend(verify_chain(chain));
        }
        Ok(breaks)
    }
}

/// The tenant a reconcile acts for, and where to record what it does.
#[derive(Clone, Debug)]
pub struct Scope {
    pub log: AuditLog,
    pub tenant: String,
    pub tenant_uid: Option<String>,
    pub generation: Option<i64>,
    pub resource_version: Option<String>,
}

impl Scope {
    pub async fn record(
        &self,
        action: Action,
        target: &str,
        outcome: Outcome,
        detail: serde_json::Value,
    ) -> Result<(), BackendError> {
        self.log
            .record(AuditEntry {
                tenant: self.tenant.clone(),
                tenant_uid: self.tenant_uid.clone(),
                generation: self.generation,
                resource_version: self.resource_version.clone(),
                action: action.as_str().to_string(),
                target: target.to_string(),
                outcome,
                detail,
            })
            .await
            .map(|_| ())
    }
}

/// The operator's sink: every change a backend makes for this tenant is a
/// row of its chain.
#[async_trait::async_trait]
impl AuditSink for Scope {
    async fn record(
        &self,
        action: Action,
        target: &str,
        outcome: Outcome,
        detail: serde_json::Value,
    ) -> Result<(), BackendError> {
        Scope::record(self, action, target, outcome, detail).await
    }

    async fn release_recorded(&self, target: &str) -> Result<bool, BackendError> {
        self.log.release_recorded(&self.tenant, target).await
    }
}

/// Releases as the backends record them: an action of its own, or a tag
/// write that sets `tenantry.dev/released=true`.
const RELEASE_ACTIONS: [Action; 2] = [Action::KubernetesSecretRelease, Action::PostgresRelease];
const TAG_ACTIONS: [Action; 3] = [
    Action::KmsKeyTag,
    Action::S3BucketTag,
    Action::SecretsmanagerSecretTag,
];

impl AuditLog {
    /// Whether this trail records the release of `target` by a Tenant named
    /// `tenant`: what a `Retain` deletion wrote, which no tag in AWS or
    /// Kubernetes can forge. Trails written before this check existed hold
    /// the same rows, so their releases are honoured too.
    pub async fn release_recorded(&self, tenant: &str, target: &str) -> Result<bool, BackendError> {
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM {} \
              WHERE tenant = $1 AND target = $2 \
                AND (action = ANY($3) \
                     OR (action = ANY($4) AND detail->'tags'->>'{}' = 'true')))",
            self.table(),
            crate::backends::tags::RELEASED
        );
        sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(tenant)
            .bind(target)
            .bind(RELEASE_ACTIONS.map(Action::as_str).to_vec())
            .bind(TAG_ACTIONS.map(Action::as_str).to_vec())
            .fetch_one(&self.pool)
            .await
            .map_err(|e| db_error("look for a release", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: i64, prev: &str) -> AuditRow {
        let mut r = AuditRow {
            seq,
            at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            tenant: "acme".into(),
            tenant_uid: Some("uid".into()),
            actor: "tenantry".into(),
            pod: "pod-0".into(),
            generation: Some(1),
            resource_version: None,
            action: Action::KmsKeyCreate.as_str().into(),
            target: "alias/x".into(),
            outcome: "ok".into(),
            detail: serde_json::json!({"b": 1, "a": "x"}),
            prev_hash: prev.into(),
            hash: String::new(),
        };
        r.hash = row_hash(&r);
        r
    }

    #[test]
    fn the_encoding_separates_fields_and_null_from_empty() {
        let mut a = row(1, GENESIS);
        let mut b = a.clone();
        a.tenant = "ab".into();
        a.actor = "c".into();
        b.tenant = "a".into();
        b.actor = "bc".into();
        assert_ne!(canonical(&a), canonical(&b));
        a.resource_version = None;
        b = a.clone();
        b.resource_version = Some(String::new());
        assert_ne!(row_hash(&a), row_hash(&b));
        let text = String::from_utf8(canonical(&a)).unwrap();
        assert!(text.contains("2023-11-14T22:13:20.123456Z"), "{text}");
        assert!(text.contains(r#"{"a":"x","b":1}"#), "{text}");
    }

    #[test]
    fn a_chain_verifies_and_each_kind_of_tampering_is_found_at_its_row() {
        let r1 = row(1, GENESIS);
        let r2 = row(5, &r1.hash);
        let r3 = row(9, &r2.hash);
        let chain = vec![r1.clone(), r2.clone(), r3.clone()];
        assert_eq!(verify_chain(&chain), None);

        let mut edited = chain.clone();
        edited[1].target = "alias/other".into();
        let b = verify_chain(&edited).unwrap();
        assert_eq!((b.seq, b.field), (5, "hash"));

        let removed = vec![r1.clone(), r3.clone()];
        let b = verify_chain(&removed).unwrap();
        assert_eq!((b.seq, b.field, b.previous_seq), (9, "prev_hash", Some(1)));

        // Contents swapped between seq 5 and 9, seq numbers kept.
        let mut swapped = chain.clone();
        swapped[1] = AuditRow {
            seq: 5,
            ..r3.clone()
        };
        swapped[2] = AuditRow {
            seq: 9,
            ..r2.clone()
        };
        let b = verify_chain(&swapped).unwrap();
        assert_eq!(b.seq, 5);
    }

    #[test]
    fn schema_names_are_plain_identifiers() {
        assert!(validate_schema_name("tenantry_audit").is_ok());
        assert!(validate_schema_name("a; drop").is_err());
        assert!(validate_schema_name("Audit").is_err());
        assert!(validate_schema_name("").is_err());
    }
}
