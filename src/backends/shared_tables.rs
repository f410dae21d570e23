//! Row-level security on shared tables: tables that hold many tenants' rows,
//! with a column naming each row's tenant.
//!
//! Each shared table gets RLS ENABLED and FORCED and one permissive policy,
//! [`TENANT_POLICY`], for every role (`TO PUBLIC`):
//!
//! ```sql
//! USING (tenant_id = (SELECT tenantry.tenant_of(current_user)))
//! WITH CHECK (tenant_id = (SELECT tenantry.tenant_of(current_user)))
//! ```
//!
//! The tenant is found from the connected role, never from a setting:
//! `current_user` cannot be changed with `SET` of any setting, and `SET ROLE`
//! needs a membership that tenant roles do not have. `tenantry.tenant_of`
//! reads the operator's mapping `tenantry.tenant_roles` (role -> tenant) as
//! its owner (SECURITY DEFINER, with a fixed search_path), so tenants need no
//! right on the mapping; a role without a mapping row gets NULL and sees
//! nothing. The sub-select makes the call an InitPlan, run once per query
//! instead of once per row: on 200k rows that is 44 ms instead of 1.3 s,
//! because a SECURITY DEFINER function with a SET clause is never inlined.
//!
//! A policy's functions run with the privileges of the querying role, so each
//! tenant role needs EXECUTE on `tenantry.tenant_of` (granted by
//! [`ensure_tenant_access`]; PUBLIC has none). It needs no USAGE on schema
//! `tenantry`: the policy holds the function by oid, and without USAGE a
//! tenant cannot call the function by name to look up other roles.
//!
//! FORCE applies RLS to the table's owner too, so the owner (the operator's
//! admin role) has its own policy, [`OPERATOR_POLICY`], to maintain the
//! canary rows, and only them: `USING (tenant_id = '__tenantry_canary__')`.
//! A policy `USING (true)` for the admin would let every role that inherits
//! the admin (the usual migration role), every admin-owned view a tenant may
//! read and every admin-owned SECURITY DEFINER function see and write every
//! tenant's rows.
//!
//! Requirements on the shared tables: **the operator's admin role must own
//! every shared table** (only the owner can enable RLS and create policies,
//! and an application role owning the table would see nothing once RLS is
//! forced); the tenant column must be `text` or `varchar`. A table that is not
//! the admin's is refused, not taken over.
//!
//! A canary, `tenantry_canary.canary`, holds one row no one but the admin has
//! any right to; the isolation probe tries to read and write it as the tenant.
//! Each shared table also gets a canary row whose tenant is [`CANARY_TENANT`]
//! (when the table's other columns allow a row with only the tenant column
//! set), so that the probe always has "another tenant's" row to fail to see.
//!
//! Like the other backends, every function reads before it writes and writes
//! nothing when all is in place. Identifiers go through [`quote_ident`];
//! values are bound.

use sqlx::postgres::types::Oid;
use sqlx::postgres::{PgConnection, PgPool};
use sqlx::{AssertSqlSafe, Connection};

use super::Action;
use crate::backends::Operation;
use crate::backends::postgres::{classify, rejected};
use crate::backends::{Backend, BackendError};
use crate::naming::SharedTable;
use crate::naming::{quote_ident, quote_literal};

/// The operator's own schema in the shared database.
pub const SCHEMA: &str = "tenantry";
/// `tenantry.tenant_roles`: which tenant each tenant role acts for.
pub const MAPPING_TABLE: &str = "tenant_roles";
/// `tenantry.tenant_of(name)`: the tenant of a role, or NULL.
pub const FUNCTION: &str = "tenant_of";
pub const CANARY_SCHEMA: &str = "tenantry_canary";
pub const CANARY_TABLE: &str = "canary";
/// The tenant of the canary rows in shared tables. Not a valid tenant name
/// (tenant names are DNS labels), so no tenant is ever mapped to it.
pub const CANARY_TENANT: &str = "__tenantry_canary__";
pub const TENANT_POLICY: &str = "tenantry_tenant_isolation";
pub const OPERATOR_POLICY: &str = "tenantry_operator";

const FUNCTION_SIGNATURE: &str = "tenantry.tenant_of(name)";
const FUNCTION_BODY: &str = "SELECT tenant FROM tenantry.tenant_roles WHERE role_name = r";
/// How the server stores `SET search_path = pg_catalog, pg_temp`.
const FUNCTION_CONFIG: &str = "search_path=pg_catalog, pg_temp";
const CANARY_SECRET: &str = "tenantry canary: no tenant may read or write this row";

/// The table privileges a tenant needs on a shared table.
const TENANT_TABLE_PRIVILEGES: [&str; 4] = ["SELECT", "INSERT", "UPDATE", "DELETE"];
/// Table privileges a tenant must not hold: TRUNCATE empties the table for
/// every tenant (RLS does not apply to it), a trigger a tenant creates runs
/// in other tenants' sessions, and REFERENCES lets it probe other tenants'
/// keys through foreign keys.
pub const FORBIDDEN_TABLE_PRIVILEGES: [&str; 3] = ["TRUNCATE", "TRIGGER", "REFERENCES"];

// Serialises tenantry's DDL and grants on the shared objects across sessions
// (other replicas, parallel tests): concurrent GRANTs on one table or
// function fail with "tuple concurrently updated" otherwise.
const SHARED_LOCK_SQL: &str = "SELECT pg_advisory_xact_lock(hashtextextended('tenantry:shared-tables:' || current_database(), 0))";
// The PostgreSQL backend takes this one around GRANT CONNECT on the shared
// database; the same key, so the two never race on the pg_database row.
const DATABASE_ACL_LOCK_SQL: &str = "SELECT pg_advisory_xact_lock(hashtextextended('tenantry:database-acl:' || current_database(), 0))";

/// The USING and WITH CHECK expression of the tenant policy.
pub fn tenant_expression(column: &str) -> String {
    format!(
        "{} = (SELECT {}.{}(current_user))",
        quote_ident(column),
        quote_ident(SCHEMA),
        quote_ident(FUNCTION)
    )
}

/// The table, schema-qualified and quoted.
pub fn qualified(table: &SharedTable) -> String {
    format!(
        "{}.{}",
        quote_ident(&table.schema),
        quote_ident(&table.table)
    )
}

/// `CREATE POLICY` of the tenant policy.
pub fn tenant_policy_sql(table: &SharedTable) -> String {
    let expression = tenant_expression(&table.tenant_column);
    format!(
        "CREATE POLICY {} ON {} AS PERMISSIVE FOR ALL TO PUBLIC USING ({expression}) WITH CHECK ({expression})",
        quote_ident(TENANT_POLICY),
        qualified(table)
    )
}

/// The USING and WITH CHECK expression of the operator policy: the canary
/// rows, nothing else.
fn operator_expression(column: &str) -> String {
    format!("{} = {}", quote_ident(column), quote_literal(CANARY_TENANT))
}

fn operator_policy_sql(table: &SharedTable, admin: &str) -> String {
    let expression = operator_expression(&table.tenant_column);
    format!(
        "CREATE POLICY {} ON {} AS PERMISSIVE FOR ALL TO {} USING ({expression}) WITH CHECK ({expression})",
        quote_ident(OPERATOR_POLICY),
        qualified(table),
        quote_ident(admin)
    )
}

fn function_sql() -> String {
    format!(
        "CREATE OR REPLACE FUNCTION {FUNCTION_SIGNATURE_ARGS} RETURNS text LANGUAGE sql STABLE SECURITY DEFINER \
         SET search_path = pg_catalog, pg_temp AS {}",
        quote_literal(FUNCTION_BODY)
    )
}
const FUNCTION_SIGNATURE_ARGS: &str = "tenantry.tenant_of(r name)";

/// A policy as `pg_policies` shows it.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct PolicyRow {
    pub name: String,
    /// `PERMISSIVE` or `RESTRICTIVE`.
    pub permissive: String,
    pub roles: Vec<String>,
    pub cmd: String,
    pub qual: Option<String>,
    pub with_check: Option<String>,
}

/// What the catalogs say about a shared table's row-level security.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct TableSecurity {
    pub oid: Oid,
    /// `relkind`: `r` table, `p` partitioned table, anything else unusable.
    pub kind: String,
    pub owner: String,
    pub rls_enabled: bool,
    pub rls_forced: bool,
    /// `format_type` of the tenant column; None when there is no such column.
    pub column_type: Option<String>,
    /// Every other column is nullable, defaulted, identity or generated: a
    /// row with only the tenant column set can be inserted.
    pub canary_possible: bool,
    #[sqlx(skip)]
    pub policies: Vec<PolicyRow>,
}

impl TableSecurity {
    pub fn policy(&self, name: &str) -> Option<&PolicyRow> {
        self.policies.iter().find(|p| p.name == name)
    }

    /// Other permissive policies that apply to `role` (or to everyone):
    /// OR-ed with the tenant policy, they can widen what a tenant sees.
    pub fn widening_policies(&self, role: &str) -> Vec<&PolicyRow> {
        self.policies
            .iter()
            .filter(|p| p.name != TENANT_POLICY && p.name != OPERATOR_POLICY)
            .filter(|p| p.permissive == "PERMISSIVE")
            .filter(|p| p.roles.iter().any(|r| r == "public" || r == role))
            .collect()
    }
}

/// Whether a policy is the tenant policy tenantry makes for `column`.
pub fn is_tenant_policy(policy: &PolicyRow, column: &str) -> bool {
    policy.permissive == "PERMISSIVE"
        && policy.roles == ["public"]
        && policy.cmd == "ALL"
        && policy
            .qual
            .as_deref()
            .is_some_and(|q| expression_matches(q, column))
        && policy
            .with_check
            .as_deref()
            .is_some_and(|q| expression_matches(q, column))
}

fn is_operator_policy(policy: &PolicyRow, admin: &str, column: &str) -> bool {
    let canary_only = |rendered: Option<&str>| {
        rendered.is_some_and(|r| {
            normalize_expression(r) == normalize_expression(&operator_expression(column))
        })
    };
    policy.permissive == "PERMISSIVE"
        && policy.roles == [admin]
        && policy.cmd == "ALL"
        && canary_only(policy.qual.as_deref())
        && canary_only(policy.with_check.as_deref())
}

/// Whether an expression as the server deparses it (`pg_policies.qual`, read
/// with search_path `pg_catalog`) is `column = tenantry.tenant_of(current_user)`,
/// with or without the sub-select. The server adds parentheses, a `::text`
/// cast for a varchar column, an `AS tenant_of` alias in the sub-select, and
/// quotes the column only when it must; none of that changes the meaning.
pub fn expression_matches(rendered: &str, column: &str) -> bool {
    let column = normalize_expression(&quote_ident(column));
    let got = normalize_expression(rendered);
    got == format!("{column}=SELECTtenantry.tenant_ofCURRENT_USER")
        || got == format!("{column}=tenantry.tenant_ofCURRENT_USER")
}

fn normalize_expression(expression: &str) -> String {
    expression
        .chars()
        .filter(|c| !c.is_whitespace() && !matches!(c, '(' | ')' | '"'))
        .collect::<String>()
        .replace("::text", "")
        .replace("AStenant_of", "")
}

/// Reads the row-level security of one shared table (None: no such table).
/// Runs in a transaction with search_path `pg_catalog`, so that the
/// deparsed policies name `tenantry.tenant_of` whatever the session's path.
pub async fn read_table_security(
    conn: &mut PgConnection,
    table: &SharedTable,
) -> Result<Option<TableSecurity>, BackendError> {
    let doing = format!("reading the row-level security of {table}");
    let mut tx = conn.begin().await.map_err(|e| classify(e, &doing))?;
    pin_search_path(&mut tx, &doing).await?;
    let found = read_table(&mut tx, table, &doing).await;
    let _ = tx.rollback().await;
    found
}

async fn pin_search_path(conn: &mut PgConnection, doing: &str) -> Result<(), BackendError> {
    crate::metrics::sql(
        crate::metrics::Sql::Session,
        sqlx::query("SELECT set_config('search_path', 'pg_catalog, pg_temp', true)").execute(conn),
    )
    .await
    .map(|_| ())
    .map_err(|e| classify(e, doing))
}

const TABLE_SQL: &str = "SELECT c.oid, c.relkind::text AS kind, pg_get_userbyid(c.relowner)::text AS owner, \
       c.relrowsecurity AS rls_enabled, c.relforcerowsecurity AS rls_forced, \
       (SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
         WHERE a.attrelid = c.oid AND a.attname = $3 AND a.attnum > 0 AND NOT a.attisdropped) AS column_type, \
       NOT EXISTS (SELECT 1 FROM pg_attribute o WHERE o.attrelid = c.oid AND o.attnum > 0 \
          AND NOT o.attisdropped AND o.attname <> $3 AND o.attnotnull AND NOT o.atthasdef \
          AND o.attidentity = '' AND o.attgenerated = '') AS canary_possible \
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
 WHERE n.nspname = $1 AND c.relname = $2";

const POLICIES_SQL: &str = "SELECT policyname::text AS name, permissive, roles::text[] AS roles, cmd, qual, with_check \
  FROM pg_policies WHERE schemaname = $1 AND tablename = $2 ORDER BY policyname";

async fn read_table(
    conn: &mut PgConnection,
    table: &SharedTable,
    doing: &str,
) -> Result<Option<TableSecurity>, BackendError> {
    let Some(mut found) = crate::metrics::sql(
        crate::metrics::Sql::Select,
        sqlx::query_as::<_, TableSecurity>(TABLE_SQL)
            .bind(&table.schema)
            .bind(&table.table)
            .bind(&table.tenant_column)
            .fetch_optional(&mut *conn),
    )
    .await
    .map_err(|e| classify(e, doing))?
    else {
        return Ok(None);
    };
    found.policies = crate::metrics::sql(
        crate::metrics::Sql::Select,
        sqlx::query_as::<_, PolicyRow>(POLICIES_SQL)
            .bind(&table.schema)
            .bind(&table.table)
            .fetch_all(&mut *conn),
    )
    .await
    .map_err(|e| classify(e, doing))?;
    Ok(Some(found))
}

/// Owner of a schema or relation, and who else holds any right on it.
#[derive(sqlx::FromRow)]
struct ObjectAcl {
    owner: String,
    /// Grantees other than the owner; "" is PUBLIC.
    others: Vec<String>,
}

const SCHEMA_ACL_SQL: &str = "SELECT pg_get_userbyid(n.nspowner)::text AS owner, \
       ARRAY(SELECT DISTINCT CASE WHEN a.grantee = 0::pg_catalog.oid THEN '' ELSE pg_get_userbyid(a.grantee)::text END \
               FROM aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a \
              WHERE a.grantee <> n.nspowner ORDER BY 1) AS others \
  FROM pg_namespace n WHERE n.nspname = $1";

const RELATION_ACL_SQL: &str = "SELECT pg_get_userbyid(c.relowner)::text AS owner, \
       ARRAY(SELECT DISTINCT CASE WHEN a.grantee = 0::pg_catalog.oid THEN '' ELSE pg_get_userbyid(a.grantee)::text END \
               FROM aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a \
              WHERE a.grantee <> c.relowner ORDER BY 1) AS others \
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
 WHERE n.nspname = $1 AND c.relname = $2";

#[derive(sqlx::FromRow)]
struct FunctionRow {
    owner: String,
    language: String,
    prosrc: String,
    prosecdef: bool,
    provolatile: String,
    config: Vec<String>,
    returns_text: bool,
    public_execute: bool,
}

const FUNCTION_SQL: &str = "SELECT pg_get_userbyid(p.proowner)::text AS owner, l.lanname::text AS language, \
       p.prosrc, p.prosecdef, p.provolatile::text, coalesce(p.proconfig, '{}') AS config, \
       p.prorettype = 'text'::regtype AS returns_text, \
       EXISTS (SELECT 1 FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a \
                WHERE a.grantee = 0::pg_catalog.oid) AS public_execute \
  FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang \
 WHERE p.oid = to_regprocedure('tenantry.tenant_of(name)')";

/// The statements that bring the shared objects to the desired state.
#[derive(Debug, Default)]
struct SecurityPlan {
    statements: Vec<String>,
    /// Why, for the log: one entry per thing that was not in place.
    changes: Vec<String>,
}

impl SecurityPlan {
    fn add(&mut self, why: String, statements: impl IntoIterator<Item = String>) {
        self.changes.push(why);
        self.statements.extend(statements);
    }
}

/// `REVOKE ALL ... FROM` everyone in `others`.
fn revoke_others(on: &str, others: &[String]) -> String {
    let grantees: Vec<String> = others
        .iter()
        .map(|g| {
            if g.is_empty() {
                "PUBLIC".to_string()
            } else {
                quote_ident(g)
            }
        })
        .collect();
    format!("REVOKE ALL ON {on} FROM {}", grantees.join(", "))
}

fn not_ours(what: &str, owner: &str, admin: &str) -> BackendError {
    rejected(format!(
        "{what} exists and is owned by {owner:?}, not by the operator's admin role {admin:?}; \
         tenantry does not take over objects it did not make (drop or rename it, or make {admin:?} its owner)"
    ))
}

/// Reads everything `ensure_shared_security` manages and plans the writes.
async fn plan_security(
    conn: &mut PgConnection,
    tables: &[SharedTable],
) -> Result<SecurityPlan, BackendError> {
    let doing = "reading the shared tables' row-level security";
    let admin: String = crate::metrics::sql(
        crate::metrics::Sql::Select,
        sqlx::query_scalar("SELECT current_user::text").fetch_one(&mut *conn),
    )
    .await
    .map_err(|e| classify(e, doing))?;
    let mut plan = SecurityPlan::default();

    // Schema tenantry, the mapping and the function.
    plan_schema(conn, SCHEMA, &admin, &mut plan, doing).await?;
    plan_mapping(conn, &admin, &mut plan, doing).await?;
    plan_function(conn, &admin, &mut plan, doing).await?;

    // The canary.
    plan_schema(conn, CANARY_SCHEMA, &admin, &mut plan, doing).await?;
    plan_canary(conn, &admin, &mut plan, doing).await?;

    for table in tables {
        plan_table(conn, table, &admin, &mut plan, doing).await?;
    }
    Ok(plan)
}

/// A schema of the operator's own. Grants on it to anyone else are revoked:
/// USAGE on `tenantry` would let a tenant call `tenant_of` by name to look up
/// other roles, and the canary is for no one but the admin.
async fn plan_schema(
    conn: &mut PgConnection,
    schema: &str,
    admin: &str,
    plan: &mut SecurityPlan,
    doing: &str,
) -> Result<(), BackendError> {
    let q = quote_ident(schema);
    match read_schema_acl(conn, schema, doing).await? {
        None => plan.add(
            format!("schema {schema} is missing"),
            [format!("CREATE SCHEMA {q}")],
        ),
        Some(acl) if acl.owner != admin => {
            return Err(not_ours(&format!("schema {schema:?}"), &acl.owner, admin));
        }
        Some(acl) if !acl.others.is_empty() => plan.add(
            format!("schema {schema} has grants to {:?}", acl.others),
            [revoke_others(&format!("SCHEMA {q}"), &acl.others)],
        ),
        Some(_) => {}
    }
    Ok(())
}

async fn plan_mapping(
    conn: &mut PgConnection,
    admin: &str,
    plan: &mut SecurityPlan,
    doing: &str,
) -> Result<(), BackendError> {
    let mapping = format!("{}.{}", quote_ident(SCHEMA), quote_ident(MAPPING_TABLE));
    match read_relation_acl(conn, SCHEMA, MAPPING_TABLE, doing).await? {
        None => plan.add(
            format!("table {SCHEMA}.{MAPPING_TABLE} is missing"),
            [format!(
                "CREATE TABLE {mapping} (role_name name PRIMARY KEY, tenant text NOT NULL)"
            )],
        ),
        Some(acl) if acl.owner != admin => {
            return Err(not_ours(
                &format!("table {SCHEMA}.{MAPPING_TABLE}"),
                &acl.owner,
                admin,
            ));
        }
        Some(acl) if !acl.others.is_empty() => plan.add(
            format!(
                "table {SCHEMA}.{MAPPING_TABLE} has grants to {:?}",
                acl.others
            ),
            [revoke_others(&format!("TABLE {mapping}"), &acl.others)],
        ),
        Some(_) => {}
    }
    Ok(())
}

async fn plan_function(
    conn: &mut PgConnection,
    admin: &str,
    plan: &mut SecurityPlan,
    doing: &str,
) -> Result<(), BackendError> {
    let function = crate::metrics::sql(
        crate::metrics::Sql::Select,
        sqlx::query_as::<_, FunctionRow>(FUNCTION_SQL).fetch_optional(&mut *conn),
    )
    .await
    .map_err(|e| classify(e, doing))?;
    let revoke_execute = format!("REVOKE EXECUTE ON FUNCTION {FUNCTION_SIGNATURE} FROM PUBLIC");
    match function {
        None => plan.add(
            format!("function {FUNCTION_SIGNATURE} is missing"),
            // A new function is executable by PUBLIC until revoked.
            [function_sql(), revoke_execute],
        ),
        Some(f) if f.owner != admin => {
            return Err(not_ours(
                &format!("function {FUNCTION_SIGNATURE}"),
                &f.owner,
                admin,
            ));
        }
        Some(f) => {
            let as_desired = f.language == "sql"
                && f.prosrc == FUNCTION_BODY
                && f.prosecdef
                && f.provolatile == "s"
                && f.config == [FUNCTION_CONFIG]
                && f.returns_text;
            if !as_desired {
                // CREATE OR REPLACE keeps the grants to tenant roles.
                plan.add(
                    format!("function {FUNCTION_SIGNATURE} differs"),
                    [function_sql()],
                );
            }
            if f.public_execute {
                plan.add(
                    format!("PUBLIC may execute {FUNCTION_SIGNATURE}"),
                    [revoke_execute],
                );
            }
        }
    }
    Ok(())
}

/// The canary the isolation probe tries to read and write as each tenant.
async fn plan_canary(
    conn: &mut PgConnection,
    admin: &str,
    plan: &mut SecurityPlan,
    doing: &str,
) -> Result<(), BackendError> {
    let canary = format!(
        "{}.{}",
        quote_ident(CANARY_SCHEMA),
        quote_ident(CANARY_TABLE)
    );
    let insert_canary = format!(
        "INSERT INTO {canary} (id, secret) VALUES (1, {})",
        quote_literal(CANARY_SECRET)
    );
    match read_relation_acl(conn, CANARY_SCHEMA, CANARY_TABLE, doing).await? {
        None => plan.add(
            format!("table {CANARY_SCHEMA}.{CANARY_TABLE} is missing"),
            [
                format!("CREATE TABLE {canary} (id int, secret text)"),
                insert_canary,
            ],
        ),
        Some(acl) if acl.owner != admin => {
            return Err(not_ours(
                &format!("table {CANARY_SCHEMA}.{CANARY_TABLE}"),
                &acl.owner,
                admin,
            ));
        }
        Some(acl) => {
            if !acl.others.is_empty() {
                plan.add(
                    format!(
                        "table {CANARY_SCHEMA}.{CANARY_TABLE} has grants to {:?}",
                        acl.others
                    ),
                    [revoke_others(&format!("TABLE {canary}"), &acl.others)],
                );
            }
            let rows: i64 = crate::metrics::sql(
                crate::metrics::Sql::Select,
                sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {canary}")))
                    .fetch_one(&mut *conn),
            )
            .await
            .map_err(|e| classify(e, doing))?;
            if rows == 0 {
                plan.add(
                    format!("table {CANARY_SCHEMA}.{CANARY_TABLE} is empty"),
                    [insert_canary],
                );
            }
        }
    }
    Ok(())
}

async fn plan_table(
    conn: &mut PgConnection,
    table: &SharedTable,
    admin: &str,
    plan: &mut SecurityPlan,
    doing: &str,
) -> Result<(), BackendError> {
    let q = qualified(table);
    let Some(found) = read_table(conn, table, doing).await? else {
        // Most likely the application's migrations have not run yet.
        return Err(BackendError::Missing {
            backend: Backend::Postgres,
            message: format!(
                "shared table {}.{} does not exist",
                table.schema, table.table
            ),
        });
    };
    check_table(table, &found, admin)?;
    let mut alter = Vec::new();
    if !found.rls_enabled {
        alter.push("ENABLE ROW LEVEL SECURITY");
    }
    if !found.rls_forced {
        alter.push("FORCE ROW LEVEL SECURITY");
    }
    if !alter.is_empty() {
        plan.add(
            format!("{table}: {}", alter.join(", ").to_lowercase()),
            [format!("ALTER TABLE {q} {}", alter.join(", "))],
        );
    }
    let tenant_ok = found
        .policy(TENANT_POLICY)
        .is_some_and(|p| is_tenant_policy(p, &table.tenant_column));
    if !tenant_ok {
        plan.add(
            format!("{table}: policy {TENANT_POLICY} missing or different"),
            [
                format!(
                    "DROP POLICY IF EXISTS {} ON {q}",
                    quote_ident(TENANT_POLICY)
                ),
                tenant_policy_sql(table),
            ],
        );
    }
    let operator_ok = found
        .policy(OPERATOR_POLICY)
        .is_some_and(|p| is_operator_policy(p, admin, &table.tenant_column));
    if !operator_ok {
        plan.add(
            format!("{table}: policy {OPERATOR_POLICY} missing or different"),
            [
                format!(
                    "DROP POLICY IF EXISTS {} ON {q}",
                    quote_ident(OPERATOR_POLICY)
                ),
                operator_policy_sql(table, admin),
            ],
        );
    }
    Ok(())
}

/// Refuses a shared table tenantry cannot secure.
fn check_table(
    table: &SharedTable,
    found: &TableSecurity,
    admin: &str,
) -> Result<(), BackendError> {
    let name = format!("{}.{}", table.schema, table.table);
    if !matches!(found.kind.as_str(), "r" | "p") {
        return Err(rejected(format!(
            "shared table {name} is not a table (relkind {:?}): row-level security applies to tables",
            found.kind
        )));
    }
    if found.owner != admin {
        return Err(rejected(format!(
            "shared table {name} is owned by {:?}, not by the operator's admin role {admin:?}: \
             the admin must own every shared table to enable and force row-level security and keep its policies \
             (its owner or a superuser must run: ALTER TABLE {} OWNER TO {})",
            found.owner,
            qualified(table),
            quote_ident(admin)
        )));
    }
    match found.column_type.as_deref() {
        None => Err(rejected(format!(
            "shared table {name} has no column {:?} to hold the tenant",
            table.tenant_column
        ))),
        Some(t) if t == "text" || t.starts_with("character varying") => Ok(()),
        Some(t) => Err(rejected(format!(
            "the tenant column {:?} of shared table {name} is {t}; it must be text or varchar (it holds the tenant name)",
            table.tenant_column
        ))),
    }
}

async fn read_schema_acl(
    conn: &mut PgConnection,
    schema: &str,
    doing: &str,
) -> Result<Option<ObjectAcl>, BackendError> {
    crate::metrics::sql(
        crate::metrics::Sql::Select,
        sqlx::query_as::<_, ObjectAcl>(SCHEMA_ACL_SQL)
            .bind(schema)
            .fetch_optional(conn),
    )
    .await
    .map_err(|e| classify(e, doing))
}

async fn read_relation_acl(
    conn: &mut PgConnection,
    schema: &str,
    relation: &str,
    doing: &str,
) -> Result<Option<ObjectAcl>, BackendError> {
    crate::metrics::sql(
        crate::metrics::Sql::Select,
        sqlx::query_as::<_, ObjectAcl>(RELATION_ACL_SQL)
            .bind(schema)
            .bind(relation)
            .fetch_optional(conn),
    )
    .await
    .map_err(|e| classify(e, doing))
}

/// Puts row-level security in place on `tables` (in the database `pool`
/// points at, as its admin), with the operator schema `tenantry`, the
/// mapping, the function and the canary. Idempotent; writes nothing when all
/// is in place, and repairs what drifted (RLS disabled or not forced, a
/// policy dropped or altered, grants on the canary).
///
/// The admin must own every shared table: one it does not own is refused
/// with [`BackendError::Rejected`], one that does not exist (yet) is
/// [`BackendError::Missing`].
pub async fn ensure_shared_security(
    pool: &PgPool,
    tables: &[SharedTable],
) -> Result<(), BackendError> {
    let doing = "securing the shared tables";
    let mut conn = pool.acquire().await.map_err(|e| classify(e, doing))?;
    let first = {
        let mut tx = conn.begin().await.map_err(|e| classify(e, doing))?;
        pin_search_path(&mut tx, doing).await?;
        let plan = plan_security(&mut tx, tables).await;
        let _ = tx.rollback().await;
        plan?
    };
    if !first.statements.is_empty() {
        let mut tx = conn.begin().await.map_err(|e| classify(e, doing))?;
        pin_search_path(&mut tx, doing).await?;
        lock(&mut tx, SHARED_LOCK_SQL, doing).await?;
        // Planned again under the lock: another session may have done it.
        let plan = plan_security(&mut tx, tables).await?;
        for statement in &plan.statements {
            exec(&mut tx, statement, doing).await?;
        }
        tx.commit().await.map_err(|e| classify(e, doing))?;
        if !plan.changes.is_empty() {
            tracing::info!(changes = ?plan.changes, "secured the shared tables");
        }
    }
    for table in tables {
        ensure_canary_row(&mut conn, table).await?;
    }
    Ok(())
}

/// One row of [`CANARY_TENANT`] in the table, when the table's other columns
/// allow it. Runs after the policies exist: the operator policy is what lets
/// the admin see (and write) the canary rows under FORCE.
async fn ensure_canary_row(
    conn: &mut PgConnection,
    table: &SharedTable,
) -> Result<(), BackendError> {
    let doing = format!("adding the canary row to {table}");
    let Some(found) = read_table_security(conn, table).await? else {
        return Ok(());
    };
    if !found.canary_possible {
        tracing::debug!(%table, "no canary row: other columns need values; the probe uses the rows that exist");
        return Ok(());
    }
    let q = qualified(table);
    let col = quote_ident(&table.tenant_column);
    let exists_sql = format!("SELECT EXISTS (SELECT 1 FROM {q} WHERE {col} = $1)");
    let exists: bool = crate::metrics::sql(
        crate::metrics::Sql::Select,
        sqlx::query_scalar(AssertSqlSafe(exists_sql.clone()))
            .bind(CANARY_TENANT)
            .fetch_one(&mut *conn),
    )
    .await
    .map_err(|e| classify(e, &doing))?;
    if exists {
        return Ok(());
    }
    let mut tx = conn.begin().await.map_err(|e| classify(e, &doing))?;
    lock(&mut tx, SHARED_LOCK_SQL, &doing).await?;
    let exists: bool = crate::metrics::sql(
        crate::metrics::Sql::Select,
        sqlx::query_scalar(AssertSqlSafe(exists_sql))
            .bind(CANARY_TENANT)
            .fetch_one(&mut *tx),
    )
    .await
    .map_err(|e| classify(e, &doing))?;
    if exists {
        return Ok(());
    }
    let inserted = crate::metrics::sql(
        crate::metrics::Sql::Insert,
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {q} ({col}) VALUES ($1)"
        )))
        .bind(CANARY_TENANT)
        .execute(&mut *tx),
    )
    .await;
    match inserted {
        Ok(_) => {
            tx.commit().await.map_err(|e| classify(e, &doing))?;
            tracing::info!(%table, "added the canary row");
            Ok(())
        }
        // A CHECK, foreign key or trigger the catalogs could not predict:
        // the table simply has no canary row.
        Err(sqlx::Error::Database(e)) if e.code().is_some_and(|c| c.starts_with("23")) => {
            tracing::info!(%table, error = %e.message(), "no canary row: the table refuses one; the probe uses the rows that exist");
            Ok(())
        }
        Err(e) => Err(classify(e, &doing)),
    }
}

/// What `ensure_tenant_access` found missing for one role.
#[derive(Debug, Default)]
struct AccessPlan {
    role_oid: Option<Oid>,
    write_mapping: bool,
    delete_mapping: bool,
    statements: Vec<String>,
    /// The role lacks CONNECT on the shared database.
    grant_connect: bool,
}

#[derive(sqlx::FromRow)]
struct TableAccess {
    oid: Oid,
    owns_schema: bool,
    schema_usage: bool,
    schema_granted: bool,
    can_select: bool,
    can_insert: bool,
    can_update: bool,
    can_delete: bool,
    /// Privileges granted to the role directly.
    granted: Vec<String>,
}

const TABLE_ACCESS_SQL: &str = "SELECT c.oid, n.nspowner = $3 AS owns_schema, \
       has_schema_privilege($3, n.oid, 'USAGE') AS schema_usage, \
       EXISTS (SELECT 1 FROM aclexplode(n.nspacl) a WHERE a.grantee = $3) AS schema_granted, \
       has_table_privilege($3, c.oid, 'SELECT') AS can_select, \
       has_table_privilege($3, c.oid, 'INSERT') AS can_insert, \
       has_table_privilege($3, c.oid, 'UPDATE') AS can_update, \
       has_table_privilege($3, c.oid, 'DELETE') AS can_delete, \
       ARRAY(SELECT a.privilege_type FROM aclexplode(c.relacl) a WHERE a.grantee = $3 ORDER BY 1) AS granted \
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
 WHERE n.nspname = $1 AND c.relname = $2";

/// Sequences the table's column defaults draw from (`serial`, or an explicit
/// `DEFAULT nextval(...)`): an INSERT needs USAGE on them. Identity columns
/// need none (the server calls their sequence without a privilege check).
#[derive(sqlx::FromRow)]
struct SequenceAccess {
    schema: String,
    name: String,
    usage: bool,
    granted: bool,
}

const SEQUENCES_SQL: &str = "SELECT DISTINCT sn.nspname::text AS schema, s.relname::text AS name, \
       has_sequence_privilege($2, s.oid, 'USAGE') AS usage, \
       EXISTS (SELECT 1 FROM aclexplode(s.relacl) a WHERE a.grantee = $2) AS granted \
  FROM pg_attrdef ad \
  JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid AND d.refclassid = 'pg_class'::regclass \
  JOIN pg_class s ON s.oid = d.refobjid AND s.relkind = 'S' \
  JOIN pg_namespace sn ON sn.oid = s.relnamespace \
 WHERE ad.adrelid = $1";

async fn role_oid(
    conn: &mut PgConnection,
    role: &str,
    doing: &str,
) -> Result<Option<Oid>, BackendError> {
    crate::metrics::sql(
        crate::metrics::Sql::Select,
        sqlx::query_scalar("SELECT oid FROM pg_roles WHERE rolname = $1")
            .bind(role)
            .fetch_optional(conn),
    )
    .await
    .map_err(|e| classify(e, doing))
}

async fn mapping_exists(conn: &mut PgConnection, doing: &str) -> Result<bool, BackendError> {
    crate::metrics::sql(
        crate::metrics::Sql::Select,
        sqlx::query_scalar(
            "SELECT to_regclass('tenantry.tenant_roles') IS NOT NULL \
            AND to_regprocedure('tenantry.tenant_of(name)') IS NOT NULL",
        )
        .fetch_one(conn),
    )
    .await
    .map_err(|e| classify(e, doing))
}

async fn mapped_tenant(
    conn: &mut PgConnection,
    role: &str,
    doing: &str,
) -> Result<Option<String>, BackendError> {
    crate::metrics::sql(
        crate::metrics::Sql::Select,
        sqlx::query_scalar("SELECT tenant FROM tenantry.tenant_roles WHERE role_name = $1")
            .bind(role)
            .fetch_optional(conn),
    )
    .await
    .map_err(|e| classify(e, doing))
}

async fn plan_access(
    conn: &mut PgConnection,
    tables: &[SharedTable],
    role: &str,
    tenant: &str,
    doing: &str,
) -> Result<AccessPlan, BackendError> {
    let Some(oid) = role_oid(conn, role, doing).await? else {
        return Err(BackendError::Missing {
            backend: Backend::Postgres,
            message: format!("role {role:?} does not exist yet"),
        });
    };
    if !mapping_exists(conn, doing).await? {
        return Err(BackendError::Missing {
            backend: Backend::Postgres,
            message: format!(
                "{SCHEMA}.{MAPPING_TABLE} or {FUNCTION_SIGNATURE} does not exist: the shared tables have not been secured yet"
            ),
        });
    }
    let qr = quote_ident(role);
    let mut plan = AccessPlan {
        role_oid: Some(oid),
        write_mapping: mapped_tenant(conn, role, doing).await?.as_deref() != Some(tenant),
        ..AccessPlan::default()
    };
    let execute: bool = crate::metrics::sql(crate::metrics::Sql::Select, sqlx::query_scalar(
        "SELECT has_function_privilege($1, to_regprocedure('tenantry.tenant_of(name)'), 'EXECUTE')",
    )
    .bind(oid)
    .fetch_one(&mut *conn))
    .await
    .map_err(|e| classify(e, doing))?;
    if !execute {
        plan.statements.push(format!(
            "GRANT EXECUTE ON FUNCTION {FUNCTION_SIGNATURE} TO {qr}"
        ));
    }
    if !tables.is_empty() {
        // A tenant of mode Database lives in another database: without
        // CONNECT here its grants on the shared tables would be useless.
        let connect: bool = crate::metrics::sql(
            crate::metrics::Sql::Select,
            sqlx::query_scalar("SELECT has_database_privilege($1, current_database(), 'CONNECT')")
                .bind(oid)
                .fetch_one(&mut *conn),
        )
        .await
        .map_err(|e| classify(e, doing))?;
        plan.grant_connect = !connect;
    }
    for table in tables {
        plan.statements
            .extend(plan_table_access(conn, table, oid, &qr, doing).await?);
    }
    Ok(plan)
}

/// The statements that give the role `oid` (quoted: `qr`) what a tenant
/// needs on `table`, and take away what it must not hold.
async fn plan_table_access(
    conn: &mut PgConnection,
    table: &SharedTable,
    oid: Oid,
    qr: &str,
    doing: &str,
) -> Result<Vec<String>, BackendError> {
    let mut statements = Vec::new();
    let access = read_access(conn, table, oid, doing).await?;
    let q = qualified(table);
    if !access.schema_usage && !access.owns_schema {
        statements.push(format!(
            "GRANT USAGE ON SCHEMA {} TO {qr}",
            quote_ident(&table.schema)
        ));
    }
    let missing: Vec<&str> = TENANT_TABLE_PRIVILEGES
        .into_iter()
        .zip([
            access.can_select,
            access.can_insert,
            access.can_update,
            access.can_delete,
        ])
        .filter(|(_, has)| !has)
        .map(|(p, _)| p)
        .collect();
    if !missing.is_empty() {
        statements.push(format!("GRANT {} ON {q} TO {qr}", missing.join(", ")));
    }
    let forbidden = forbidden_grants(&access.granted);
    if !forbidden.is_empty() {
        statements.push(format!("REVOKE {} ON {q} FROM {qr}", forbidden.join(", ")));
    }
    for sequence in read_sequences(conn, access.oid, oid, doing).await? {
        if !sequence.usage {
            statements.push(format!(
                "GRANT USAGE ON SEQUENCE {} TO {qr}",
                sequence.qualified()
            ));
        }
    }
    Ok(statements)
}

/// The privileges in `granted` a tenant must not hold, as SQL keywords.
pub fn forbidden_grants(granted: &[String]) -> Vec<&'static str> {
    FORBIDDEN_TABLE_PRIVILEGES
        .into_iter()
        .filter(|p| granted.iter().any(|g| g == p))
        .collect()
}

async fn read_access(
    conn: &mut PgConnection,
    table: &SharedTable,
    role_oid: Oid,
    doing: &str,
) -> Result<TableAccess, BackendError> {
    crate::metrics::sql(
        crate::metrics::Sql::Select,
        sqlx::query_as::<_, TableAccess>(TABLE_ACCESS_SQL)
            .bind(&table.schema)
            .bind(&table.table)
            .bind(role_oid)
            .fetch_optional(conn),
    )
    .await
    .map_err(|e| classify(e, doing))?
    .ok_or_else(|| BackendError::Missing {
        backend: Backend::Postgres,
        message: format!(
            "shared table {}.{} does not exist",
            table.schema, table.table
        ),
    })
}

async fn read_sequences(
    conn: &mut PgConnection,
    table_oid: Oid,
    role_oid: Oid,
    doing: &str,
) -> Result<Vec<SequenceAccess>, BackendError> {
    crate::metrics::sql(
        crate::metrics::Sql::Select,
        sqlx::query_as::<_, SequenceAccess>(SEQUENCES_SQL)
            .bind(table_oid)
            .bind(role_oid)
            .fetch_all(conn),
    )
    .await
    .map_err(|e| classify(e, doing))
}

impl SequenceAccess {
    fn qualified(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

impl AccessPlan {
    fn is_empty(&self) -> bool {
        !self.write_mapping
            && !self.delete_mapping
            && !self.grant_connect
            && self.statements.is_empty()
    }
}

async fn apply_access(
    tx: &mut PgConnection,
    plan: &AccessPlan,
    role: &str,
    tenant: &str,
    doing: &str,
) -> Result<(), BackendError> {
    if plan.write_mapping {
        crate::metrics::sql(
            crate::metrics::Sql::Insert,
            sqlx::query(
                "INSERT INTO tenantry.tenant_roles (role_name, tenant) VALUES ($1, $2) \
             ON CONFLICT (role_name) DO UPDATE SET tenant = EXCLUDED.tenant",
            )
            .bind(role)
            .bind(tenant)
            .execute(&mut *tx),
        )
        .await
        .map_err(|e| classify(e, doing))?;
    }
    if plan.delete_mapping {
        crate::metrics::sql(
            crate::metrics::Sql::Delete,
            sqlx::query("DELETE FROM tenantry.tenant_roles WHERE role_name = $1")
                .bind(role)
                .execute(&mut *tx),
        )
        .await
        .map_err(|e| classify(e, doing))?;
    }
    if plan.grant_connect {
        lock(tx, DATABASE_ACL_LOCK_SQL, doing).await?;
        let database: String = crate::metrics::sql(
            crate::metrics::Sql::Select,
            sqlx::query_scalar("SELECT current_database()::text").fetch_one(&mut *tx),
        )
        .await
        .map_err(|e| classify(e, doing))?;
        exec(
            tx,
            &format!(
                "GRANT CONNECT ON DATABASE {} TO {}",
                quote_ident(&database),
                quote_ident(role)
            ),
            doing,
        )
        .await?;
    }
    for statement in &plan.statements {
        exec(tx, statement, doing).await?;
    }
    Ok(())
}

/// Lets `role` (the login role of `tenant`) use the shared tables, through
/// the policies: maps the role to the tenant, and grants what is missing of
/// EXECUTE on `tenantry.tenant_of` (the policy runs it as the tenant),
/// USAGE on each table's schema, SELECT, INSERT, UPDATE, DELETE on each table
/// and USAGE on the sequences its defaults draw from; and CONNECT on the
/// shared database when tables are configured and the role lacks it (a
/// tenant of mode Database has no other reason to hold it). TRUNCATE,
/// TRIGGER and REFERENCES granted to the role are revoked. Nothing is written
/// when all is in place.
pub async fn ensure_tenant_access(
    op: &Operation,
    pool: &PgPool,
    tables: &[SharedTable],
    role: &str,
    tenant: &str,
) -> Result<(), BackendError> {
    if tenant == CANARY_TENANT || tenant.is_empty() {
        return Err(rejected(format!(
            "{tenant:?} cannot be a tenant of the shared tables"
        )));
    }
    let doing = format!("granting role {role:?} access to the shared tables");
    let mut conn = pool.acquire().await.map_err(|e| classify(e, &doing))?;
    let plan = plan_access(&mut conn, tables, role, tenant, &doing).await?;
    if plan.is_empty() {
        return Ok(());
    }
    let mut tx = conn.begin().await.map_err(|e| classify(e, &doing))?;
    lock(&mut tx, SHARED_LOCK_SQL, &doing).await?;
    let plan = plan_access(&mut tx, tables, role, tenant, &doing).await?;
    apply_access(&mut tx, &plan, role, tenant, &doing).await?;
    tx.commit().await.map_err(|e| classify(e, &doing))?;
    // Back to the pool before the audit row takes one: reconciles that each
    // held one while waiting for another could exhaust it.
    drop(conn);
    tracing::info!(role, tenant, "granted access to the shared tables");
    op.note(
        Action::PostgresAccessGrant,
        role,
        serde_json::json!({"statements": plan.statements, "grantConnect": plan.grant_connect}),
    )
    .await?;
    Ok(())
}

async fn plan_removal(
    conn: &mut PgConnection,
    tables: &[SharedTable],
    role: &str,
    doing: &str,
) -> Result<AccessPlan, BackendError> {
    let mut plan = AccessPlan::default();
    if !mapping_exists(conn, doing).await? {
        return Ok(plan);
    }
    plan.delete_mapping = mapped_tenant(conn, role, doing).await?.is_some();
    let Some(oid) = role_oid(conn, role, doing).await? else {
        return Ok(plan);
    };
    plan.role_oid = Some(oid);
    let qr = quote_ident(role);
    let execute_granted: bool = crate::metrics::sql(
        crate::metrics::Sql::Select,
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_proc p, aclexplode(p.proacl) a \
          WHERE p.oid = to_regprocedure('tenantry.tenant_of(name)') AND a.grantee = $1)",
        )
        .bind(oid)
        .fetch_one(&mut *conn),
    )
    .await
    .map_err(|e| classify(e, doing))?;
    if execute_granted {
        plan.statements.push(format!(
            "REVOKE EXECUTE ON FUNCTION {FUNCTION_SIGNATURE} FROM {qr}"
        ));
    }
    let mut schemas = Vec::new();
    for table in tables {
        let access = match read_access(conn, table, oid, doing).await {
            Ok(access) => access,
            Err(BackendError::Missing { .. }) => continue,
            Err(e) => return Err(e),
        };
        if !access.granted.is_empty() {
            plan.statements
                .push(format!("REVOKE ALL ON {} FROM {qr}", qualified(table)));
        }
        // Never from the schema's owner: that would take its own rights.
        if access.schema_granted && !access.owns_schema && !schemas.contains(&table.schema) {
            schemas.push(table.schema.clone());
            plan.statements.push(format!(
                "REVOKE USAGE ON SCHEMA {} FROM {qr}",
                quote_ident(&table.schema)
            ));
        }
        for sequence in read_sequences(conn, access.oid, oid, doing).await? {
            if sequence.granted {
                plan.statements.push(format!(
                    "REVOKE ALL ON SEQUENCE {} FROM {qr}",
                    sequence.qualified()
                ));
            }
        }
    }
    Ok(plan)
}

/// Takes back what [`ensure_tenant_access`] gave `role`: the mapping row and
/// the grants on the function, the tables, their schemas and sequences.
/// CONNECT on the shared database is left alone (the PostgreSQL backend
/// grants it to tenants of mode Schema too; dropping the role takes it). An
/// absent role or mapping is fine.
pub async fn remove_tenant_access(
    op: &Operation,
    pool: &PgPool,
    tables: &[SharedTable],
    role: &str,
) -> Result<(), BackendError> {
    let doing = format!("revoking role {role:?}'s access to the shared tables");
    let mut conn = pool.acquire().await.map_err(|e| classify(e, &doing))?;
    let plan = plan_removal(&mut conn, tables, role, &doing).await?;
    if plan.is_empty() {
        return Ok(());
    }
    let mut tx = conn.begin().await.map_err(|e| classify(e, &doing))?;
    lock(&mut tx, SHARED_LOCK_SQL, &doing).await?;
    let plan = plan_removal(&mut tx, tables, role, &doing).await?;
    apply_access(&mut tx, &plan, role, "", &doing).await?;
    tx.commit().await.map_err(|e| classify(e, &doing))?;
    drop(conn);
    tracing::info!(role, "revoked access to the shared tables");
    op.note(
        Action::PostgresAccessRevoke,
        role,
        serde_json::json!({"statements": plan.statements}),
    )
    .await?;
    Ok(())
}

/// Deletes every row of `tenant` from the shared tables, as its own role
/// `role` (`SET LOCAL ROLE`), inside the caller's transaction: the tenant
/// policy decides which rows go, so the admin needs no policy that reaches
/// tenants' rows, and nothing but this tenant's rows can be deleted. The
/// mapping and the grants the deletion needs are put in place first (an
/// earlier removal may have taken them), and the mapping is deleted after;
/// the caller drops the role in the same transaction, which takes the
/// grants. Returns the number of rows deleted per table (tables that do not
/// exist are skipped).
///
/// Called only when the tenant is destroyed (its role dropped): the rows of
/// a released (`Retain`) tenant stay for the next Tenant of its name, and a
/// destroyed tenant must leave none for the next owner of its name.
pub async fn purge_tenant_rows(
    tx: &mut PgConnection,
    tables: &[SharedTable],
    role: &str,
    tenant: &str,
) -> Result<Vec<(String, u64)>, BackendError> {
    let doing = format!("deleting tenant {tenant:?}'s rows from the shared tables");
    if tables.is_empty() || !mapping_exists(tx, &doing).await? {
        return Ok(Vec::new());
    }
    lock(tx, SHARED_LOCK_SQL, &doing).await?;
    let qr = quote_ident(role);
    let mut present = Vec::new();
    for table in tables {
        if read_table(tx, table, &doing).await?.is_some() {
            present.push(table);
        }
    }
    if present.is_empty() {
        return Ok(Vec::new());
    }
    let plan = AccessPlan {
        write_mapping: true,
        ..AccessPlan::default()
    };
    apply_access(tx, &plan, role, tenant, &doing).await?;
    exec(
        tx,
        &format!("GRANT EXECUTE ON FUNCTION {FUNCTION_SIGNATURE} TO {qr}"),
        &doing,
    )
    .await?;
    for table in &present {
        exec(
            tx,
            &format!(
                "GRANT USAGE ON SCHEMA {} TO {qr}; GRANT SELECT, DELETE ON {} TO {qr}",
                quote_ident(&table.schema),
                qualified(table)
            ),
            &doing,
        )
        .await?;
    }
    exec(tx, &format!("SET LOCAL ROLE {qr}"), &doing).await?;
    let mut deleted = Vec::new();
    for table in &present {
        let result = crate::metrics::sql(
            crate::metrics::Sql::Delete,
            sqlx::query(AssertSqlSafe(format!("DELETE FROM {}", qualified(table))))
                .execute(&mut *tx),
        )
        .await
        .map_err(|e| classify(e, &doing))?;
        deleted.push((table.to_string(), result.rows_affected()));
    }
    exec(tx, "RESET ROLE", &doing).await?;
    let plan = AccessPlan {
        delete_mapping: true,
        ..AccessPlan::default()
    };
    apply_access(tx, &plan, role, tenant, &doing).await?;
    Ok(deleted)
}

async fn lock(conn: &mut PgConnection, sql: &'static str, doing: &str) -> Result<(), BackendError> {
    crate::metrics::sql(crate::metrics::Sql::Select, sqlx::query(sql).execute(conn))
        .await
        .map(|_| ())
        .map_err(|e| classify(e, doing))
}

/// A utility statement, built from quoted identifiers only.
async fn exec(conn: &mut PgConnection, sql: &str, doing: &str) -> Result<(), BackendError> {
    crate::metrics::sql(
        crate::metrics::Sql::Ddl,
        sqlx::raw_sql(AssertSqlSafe(sql.to_string())).execute(conn),
    )
    .await
    .map(|_| ())
    .map_err(|e| classify(e, doing))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn orders() -> SharedTable {
        "public.orders:tenant_id".parse().unwrap()
    }

    #[test]
    fn the_policy_is_keyed_on_the_connected_role_through_a_sub_select() {
        assert_eq!(
            tenant_policy_sql(&orders()),
            "CREATE POLICY \"tenantry_tenant_isolation\" ON \"public\".\"orders\" AS PERMISSIVE FOR ALL TO PUBLIC \
             USING (\"tenant_id\" = (SELECT \"tenantry\".\"tenant_of\"(current_user))) \
             WITH CHECK (\"tenant_id\" = (SELECT \"tenantry\".\"tenant_of\"(current_user)))"
        );
        let hostile: SharedTable = "a\"b.t; DROP TABLE x:c\"ol".parse().unwrap();
        let sql = tenant_policy_sql(&hostile);
        assert!(sql.contains("ON \"a\"\"b\".\"t; DROP TABLE x\""), "{sql}");
        assert!(sql.contains("USING (\"c\"\"ol\" = "), "{sql}");
    }

    #[test]
    fn the_expression_is_recognised_as_the_server_deparses_it() {
        // pg_policies.qual on PostgreSQL 15.18, search_path pg_catalog.
        let text = "(tenant_id = ( SELECT tenantry.tenant_of(CURRENT_USER) AS tenant_of))";
        let varchar =
            "((tenant_id)::text = ( SELECT tenantry.tenant_of(CURRENT_USER) AS tenant_of))";
        let unwrapped = "(tenant_id = tenantry.tenant_of(CURRENT_USER))";
        for rendered in [text, varchar, unwrapped] {
            assert!(expression_matches(rendered, "tenant_id"), "{rendered}");
        }
        assert!(expression_matches(
            "(\"Tenant Id\" = ( SELECT tenantry.tenant_of(CURRENT_USER) AS tenant_of))",
            "Tenant Id"
        ));
        for wrong in [
            "true",
            "(tenant_id = current_setting('app.tenant_id'::text))",
            "(owner = ( SELECT tenantry.tenant_of(CURRENT_USER) AS tenant_of))",
            "((tenant_id = ( SELECT tenantry.tenant_of(CURRENT_USER) AS tenant_of)) OR true)",
            "(tenant_id = ( SELECT tenantry.tenant_of(SESSION_USER) AS tenant_of))",
        ] {
            assert!(!expression_matches(wrong, "tenant_id"), "{wrong}");
        }
    }

    fn policy(name: &str, roles: &[&str], qual: &str) -> PolicyRow {
        PolicyRow {
            name: name.into(),
            permissive: "PERMISSIVE".into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            cmd: "ALL".into(),
            qual: Some(qual.into()),
            with_check: Some(qual.into()),
        }
    }

    #[test]
    fn a_policy_is_ours_only_with_every_attribute_as_made() {
        let qual = "(tenant_id = ( SELECT tenantry.tenant_of(CURRENT_USER) AS tenant_of))";
        let good = policy(TENANT_POLICY, &["public"], qual);
        assert!(is_tenant_policy(&good, "tenant_id"));
        let no_check = PolicyRow {
            with_check: None,
            ..good.clone()
        };
        assert!(!is_tenant_policy(&no_check, "tenant_id"));
        let select_only = PolicyRow {
            cmd: "SELECT".into(),
            ..good.clone()
        };
        assert!(!is_tenant_policy(&select_only, "tenant_id"));
        let restrictive = PolicyRow {
            permissive: "RESTRICTIVE".into(),
            ..good.clone()
        };
        assert!(!is_tenant_policy(&restrictive, "tenant_id"));
        assert!(!is_tenant_policy(
            &policy(TENANT_POLICY, &["app"], qual),
            "tenant_id"
        ));
        // As the server deparses it for a text and a varchar column.
        let canary = "(tenant_id = '__tenantry_canary__'::text)";
        let canary_varchar = "((tenant_id)::text = '__tenantry_canary__'::text)";
        assert!(is_operator_policy(
            &policy(OPERATOR_POLICY, &["admin"], canary),
            "admin",
            "tenant_id"
        ));
        assert!(is_operator_policy(
            &policy(OPERATOR_POLICY, &["admin"], canary_varchar),
            "admin",
            "tenant_id"
        ));
        assert!(!is_operator_policy(
            &policy(OPERATOR_POLICY, &["public"], canary),
            "admin",
            "tenant_id"
        ));
        // What tenantry made before: every row for the admin.
        assert!(!is_operator_policy(
            &policy(OPERATOR_POLICY, &["admin"], "true"),
            "admin",
            "tenant_id"
        ));
    }

    #[test]
    fn other_permissive_policies_for_the_tenant_are_reported_as_widening() {
        let found = TableSecurity {
            oid: Oid(1),
            kind: "r".into(),
            owner: "admin".into(),
            rls_enabled: true,
            rls_forced: true,
            column_type: Some("text".into()),
            canary_possible: true,
            policies: vec![
                policy(TENANT_POLICY, &["public"], "x"),
                policy(OPERATOR_POLICY, &["admin"], "true"),
                policy("open", &["public"], "true"),
                policy("mine", &["t_a"], "true"),
                policy("theirs", &["t_b"], "true"),
                PolicyRow {
                    permissive: "RESTRICTIVE".into(),
                    ..policy("narrowing", &["public"], "true")
                },
            ],
        };
        let names: Vec<&str> = found
            .widening_policies("t_a")
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(names, ["open", "mine"]);
    }

    #[test]
    fn tables_tenantry_cannot_secure_are_refused_with_the_remedy() {
        let mut found = TableSecurity {
            oid: Oid(1),
            kind: "r".into(),
            owner: "app".into(),
            rls_enabled: false,
            rls_forced: false,
            column_type: Some("text".into()),
            canary_possible: true,
            policies: vec![],
        };
        let err = check_table(&orders(), &found, "tenantry_admin")
            .unwrap_err()
            .to_string();
        assert!(err.contains("owned by \"app\""), "{err}");
        assert!(
            err.contains("ALTER TABLE \"public\".\"orders\" OWNER TO \"tenantry_admin\""),
            "{err}"
        );
        found.owner = "tenantry_admin".into();
        assert!(check_table(&orders(), &found, "tenantry_admin").is_ok());
        found.column_type = Some("character varying(64)".into());
        assert!(check_table(&orders(), &found, "tenantry_admin").is_ok());
        found.column_type = Some("integer".into());
        assert!(check_table(&orders(), &found, "tenantry_admin").is_err());
        found.column_type = None;
        assert!(check_table(&orders(), &found, "tenantry_admin").is_err());
        found.column_type = Some("text".into());
        found.kind = "v".into();
        assert!(check_table(&orders(), &found, "tenantry_admin").is_err());
    }

    #[test]
    fn grants_to_strip_are_named_as_sql_spells_them() {
        let granted = ["SELECT", "TRUNCATE", "TRIGGER"].map(String::from);
        assert_eq!(forbidden_grants(&granted), ["TRUNCATE", "TRIGGER"]);
        assert!(forbidden_grants(&["SELECT".to_string()]).is_empty());
        assert_eq!(
            revoke_others("SCHEMA \"s\"", &["".into(), "t_a".into()]),
            "REVOKE ALL ON SCHEMA \"s\" FROM PUBLIC, \"t_a\""
        );
    }

    #[test]
    fn the_function_is_made_as_the_policy_needs_it() {
        let sql = function_sql();
        assert!(
            sql.starts_with("CREATE OR REPLACE FUNCTION tenantry.tenant_of(r name) RETURNS text")
        );
        assert!(sql.contains(
            "LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp"
        ));
        assert!(sql.ends_with(&format!("AS '{FUNCTION_BODY}'")));
    }
}
