//! The red team: tenantry attacked by the people the threat model names
//! (`docs/security.md`), against the real local PostgreSQL. Each test plays
//! the attacker step by step and asserts what the attacker must not get.

use sqlx::Connection;
use sqlx::postgres::PgConnection;
use tenantry::api::IsolationMode;
use tenantry::naming::quote_ident;

use crate::isolation_db::{SHARED_DB, backend, provision, remove, sqlstate};
use crate::support::env;

/// The admin role's name, as the operator logs in with it.
fn admin_role() -> String {
    let url = url::Url::parse(&env("TENANTRY_DATABASE_URL")).expect("admin URL");
    url.username().to_string()
}

/// Runs `sql` as `who`, failing the test with the statement when it fails.
async fn exec(conn: &mut PgConnection, who: &str, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(conn)
        .await
        .unwrap_or_else(|e| panic!("{who}: {sql}: {e}"));
}

/// What a role holds that a tenant role must never hold.
async fn privileges_of(conn: &mut PgConnection, role: &str) -> (bool, Vec<String>) {
    sqlx::query_as(
        "SELECT r.rolcreatedb, \
                ARRAY(SELECT g.rolname::text FROM pg_auth_members m \
                        JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid) \
           FROM pg_roles r WHERE r.rolname = $1",
    )
    .bind(role)
    .fetch_one(conn)
    .await
    .expect("read the role")
}

/// Path 1 of the PostgreSQL red team. A tenant that owns its database
/// decides what unqualified names mean there: it makes a schema named after
/// the admin (the `"$user"` entry of the default search_path), points the
/// database's default search_path at it, and plants an `=(oid, integer)`
/// operator whose function grants its own role CREATEDB and
/// `pg_read_all_data`. `oid = 0` in the operator's catalog SQL would pick it
/// over pg_catalog's `oid = oid`, and run it as the admin. Then it waits for
/// the operator's repair, and tries to read a neighbour's table.
#[tokio::test]
async fn a_database_tenant_cannot_borrow_the_admin_through_an_operator_it_plants() {
    let backend = backend().await;
    let attacker = provision(&backend, "rt-owner", IsolationMode::Database, &[]).await;
    let victim = provision(&backend, "rt-victim", IsolationMode::Schema, &[]).await;

    // The neighbour keeps a secret in its own schema.
    let mut as_victim = victim.login(SHARED_DB).await;
    let secret_table = format!("{}.secrets", quote_ident(&victim.credentials.schema));
    exec(
        &mut as_victim,
        "the victim",
        &format!("CREATE TABLE {secret_table} (body text); INSERT INTO {secret_table} VALUES ('the victim''s secret')"),
    )
    .await;
    let _ = as_victim.close().await;

    // The attacker plants its operator in its own database.
    let me = quote_ident(attacker.role());
    let admin = quote_ident(&admin_role());
    let database = quote_ident(&attacker.credentials.database);
    let mut as_attacker = attacker.login(&attacker.credentials.database).await;
    exec(
        &mut as_attacker,
        "the attacker",
        &format!(
            "CREATE SCHEMA {admin}; \
             GRANT USAGE ON SCHEMA {admin} TO PUBLIC; \
             CREATE FUNCTION {admin}.borrow(l oid, r integer) RETURNS boolean \
               LANGUAGE plpgsql AS $body$ \
               BEGIN \
                 IF current_user <> {me_literal} THEN \
                   EXECUTE 'ALTER ROLE {me} CREATEDB'; \
                   EXECUTE 'GRANT pg_read_all_data TO {me}'; \
                 END IF; \
                 RETURN l OPERATOR(pg_catalog.=) r::pg_catalog.oid; \
               END $body$; \
             CREATE OPERATOR {admin}.= (LEFTARG = oid, RIGHTARG = integer, FUNCTION = {admin}.borrow); \
             ALTER DATABASE {database} SET search_path = {admin}, public",
            me_literal = tenantry::naming::quote_literal(attacker.role()),
        ),
    )
    .await;
    let _ = as_attacker.close().await;

    // The operator repairs the tenant (what it does after any drift), which
    // reads the catalog inside the attacker's database as the admin.
    backend
        .ensure_tenant(
            &attacker.tenant,
            &attacker.names,
            attacker.mode,
            10,
            &attacker.credentials.password,
            true,
            false,
        )
        .await
        .expect("the repair runs");

    let mut su = crate::support::readback::superuser_db().await;
    let (createdb, member_of) = privileges_of(&mut su, attacker.role()).await;
    let _ = su.close().await;
    assert!(
        !createdb && member_of.is_empty(),
        "the repair ran the attacker's operator as the admin: {} has CREATEDB={createdb}, member of {member_of:?}",
        attacker.role()
    );
    let mut as_attacker = attacker.login(SHARED_DB).await;
    let refused = sqlstate(
        &mut as_attacker,
        &format!("SET ROLE pg_read_all_data; SELECT * FROM {secret_table}"),
    )
    .await;
    assert_eq!(
        refused.as_deref(),
        Some("42501"),
        "the attacker read its neighbour's table"
    );
    let _ = as_attacker.close().await;

    remove(&backend, &[], &attacker).await;
    remove(&backend, &[], &victim).await;
}
