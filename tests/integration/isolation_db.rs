//! Row-level security on shared tables and the database isolation probe,
//! against the local environment's real PostgreSQL. Tenants are made by the
//! real PostgreSQL backend as the non-superuser admin; the superuser plays
//! the careless human who tampers with roles and tables by hand.

use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection};
use tenantry::api::{IsolationMode, IsolationState, LayerReport};
use tenantry::backends::postgres::PostgresBackend;
use tenantry::backends::shared_tables::{
    CANARY_TENANT, ensure_shared_security, ensure_tenant_access, remove_tenant_access,
};
use tenantry::backends::{
    BackendError, DatabaseCredentials, TenantDatabase, TenantRef, generate_password,
};
use tenantry::isolation::SharedTable;
use tenantry::isolation::database::{DatabaseProbe, check};
use tenantry::naming::{TenantNames, quote_ident};

use crate::support::readback::admin_db;
use crate::support::{bucket_prefix, env, unique_name, unique_uid, unrecorded};

pub(crate) const SHARED_DB: &str = "tenantry";

pub(crate) async fn backend() -> PostgresBackend {
    PostgresBackend::connect(
        &SecretString::from(env("TENANTRY_DATABASE_URL")),
        4,
        None,
        None,
    )
    .await
    .expect("the admin connects")
}

/// The superuser on the shared database (the readback helper's is on
/// `postgres`).
pub(crate) async fn superuser_shared() -> PgPool {
    let options: PgConnectOptions = env("TENANTRY_TEST_SUPERUSER_URL").parse().unwrap();
    PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options.database(SHARED_DB))
        .await
        .expect("the superuser connects")
}

pub(crate) async fn run(pool: &PgPool, sql: &str) {
    sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// The SQLSTATE a statement fails with, None when it succeeds.
pub(crate) async fn sqlstate(conn: &mut PgConnection, sql: &str) -> Option<String> {
    match sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
        .execute(conn)
        .await
    {
        Ok(_) => None,
        Err(sqlx::Error::Database(e)) => Some(e.code().unwrap_or_default().into_owned()),
        Err(e) => panic!("{sql}: {e}"),
    }
}

/// A shared table with a unique name, made (and so owned) by the admin.
pub(crate) async fn shared_table(prefix: &str) -> SharedTable {
    let name = unique_name(prefix).replace('-', "_");
    let mut admin = admin_db().await;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE public.{} (id serial, tenant_id text NOT NULL, body text)",
        quote_ident(&name)
    )))
    .execute(&mut admin)
    .await
    .expect("the admin creates a shared table");
    let _ = admin.close().await;
    format!("public.{name}:tenant_id").parse().unwrap()
}

pub(crate) async fn drop_table(table: &SharedTable) {
    let mut admin = admin_db().await;
    let _ = sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP TABLE IF EXISTS {}.{}",
        quote_ident(&table.schema),
        quote_ident(&table.table)
    )))
    .execute(&mut admin)
    .await;
    let _ = admin.close().await;
}

pub(crate) fn qualified(table: &SharedTable) -> String {
    format!(
        "{}.{}",
        quote_ident(&table.schema),
        quote_ident(&table.table)
    )
}

/// A tenant provisioned by the real backend and given access to the shared
/// tables.
pub(crate) struct Tenant {
    pub(crate) tenant: TenantRef,
    pub(crate) names: TenantNames,
    pub(crate) mode: IsolationMode,
    pub(crate) credentials: DatabaseCredentials,
}

impl Tenant {
    pub(crate) fn role(&self) -> &str {
        &self.names.role
    }

    /// Logs in to `database` as the tenant, as its application would.
    pub(crate) async fn login(&self, database: &str) -> PgConnection {
        let options: PgConnectOptions = env("TENANTRY_DATABASE_URL").parse().unwrap();
        PgConnection::connect_with(
            &options
                .username(&self.credentials.username)
                .password(self.credentials.password.expose_secret())
                .database(database),
        )
        .await
        .unwrap_or_else(|e| panic!("{} logs in to {database}: {e}", self.role()))
    }
}

pub(crate) async fn provision(
    backend: &PostgresBackend,
    prefix: &str,
    mode: IsolationMode,
    tables: &[SharedTable],
) -> Tenant {
    provision_named(backend, &unique_name(prefix), mode, tables).await
}

/// Provisions a tenant of exactly this name (with a new uid).
pub(crate) async fn provision_named(
    backend: &PostgresBackend,
    name: &str,
    mode: IsolationMode,
    tables: &[SharedTable],
) -> Tenant {
    let name = name.to_string();
    let names = TenantNames::new(&name, &bucket_prefix()).unwrap();
    let tenant = TenantRef {
        name,
        uid: unique_uid(),
        display_name: None,
    };
    let password = generate_password();
    let location = backend
        .ensure_tenant(
            &unrecorded(&tenant),
            &names,
            mode,
            10,
            &password,
            true,
            false,
        )
        .await
        .expect("the backend provisions the tenant");
    ensure_tenant_access(
        &unrecorded(&tenant),
        backend.pool(),
        tables,
        &names.role,
        &tenant.name,
    )
    .await
    .expect("the tenant gets access to the shared tables");
    let (host, port, _) = backend.endpoint();
    Tenant {
        credentials: DatabaseCredentials {
            username: names.role.clone(),
            password,
            host,
            port,
            database: location.database,
            schema: location.schema,
            engine: "postgres".into(),
        },
        tenant,
        names,
        mode,
    }
}

pub(crate) async fn remove(backend: &PostgresBackend, tables: &[SharedTable], t: &Tenant) {
    remove_tenant_access(&unrecorded(&t.tenant), backend.pool(), tables, t.role())
        .await
        .expect("access removed");
    backend
        .remove_tenant(&unrecorded(&t.tenant), &t.names, t.mode)
        .await
        .expect("tenant removed");
}

pub(crate) async fn probe(
    backend: &PostgresBackend,
    tables: &[SharedTable],
    t: &Tenant,
    other_schema: Option<&str>,
) -> LayerReport {
    DatabaseProbe::new(backend.pool().clone(), tables.to_vec())
        .probe(
            t.role(),
            &t.tenant.name,
            &t.credentials,
            t.mode,
            other_schema,
        )
        .await
}

pub(crate) fn show(report: &LayerReport) -> String {
    serde_json::to_string_pretty(report).unwrap()
}

pub(crate) fn finding<'a>(report: &'a LayerReport, id: &str) -> &'a tenantry::api::Finding {
    report
        .findings
        .iter()
        .find(|f| f.check == id)
        .unwrap_or_else(|| panic!("no finding {id} in {}", show(report)))
}

pub(crate) fn assert_enforced(report: &LayerReport, who: &str) {
    assert_eq!(
        report.state,
        IsolationState::Enforced,
        "{who} is not Enforced: {}",
        show(report)
    );
}

/// A table, secured, and one tenant of `mode` with a row of its own in it.
struct Fixture {
    backend: PostgresBackend,
    su: PgPool,
    tables: Vec<SharedTable>,
    tenant: Tenant,
}

impl Fixture {
    async fn new(prefix: &str, mode: IsolationMode) -> Self {
        let backend = backend().await;
        let tables = vec![shared_table(prefix).await];
        ensure_shared_security(backend.pool(), &tables)
            .await
            .expect("the shared table is secured");
        let tenant = provision(&backend, prefix, mode, &tables).await;
        let mut conn = tenant.login(SHARED_DB).await;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {} (tenant_id, body) VALUES ($1, 'mine')",
            qualified(&tables[0])
        )))
        .bind(&tenant.tenant.name)
        .execute(&mut conn)
        .await
        .expect("the tenant writes a row of its own");
        let _ = conn.close().await;
        let fixture = Self {
            backend,
            su: superuser_shared().await,
            tables,
            tenant,
        };
        assert_enforced(&fixture.probe().await, "the fresh tenant");
        fixture
    }

    async fn probe(&self) -> LayerReport {
        probe(&self.backend, &self.tables, &self.tenant, None).await
    }

    fn table(&self) -> &SharedTable {
        &self.tables[0]
    }

    async fn cleanup(self) {
        remove(&self.backend, &self.tables, &self.tenant).await;
        drop_table(self.table()).await;
    }
}

/// Everything a tenant tries on a shared table, after setting every session
/// variable it likes to the other tenant: it only ever reaches its own rows.
async fn assert_only_own_rows(conn: &mut PgConnection, table: &SharedTable, me: &str, other: &str) {
    let q = qualified(table);
    for setting in [
        "app.tenant_id",
        "app.tenant",
        "app.current_tenant",
        "tenantry.tenant",
        "request.jwt.claim.tenant_id",
    ] {
        sqlx::query("SELECT set_config($1, $2, false)")
            .bind(setting)
            .bind(other)
            .execute(&mut *conn)
            .await
            .unwrap();
    }
    let seen: Vec<String> =
        sqlx::query_scalar(AssertSqlSafe(format!("SELECT DISTINCT tenant_id FROM {q}")))
            .fetch_all(&mut *conn)
            .await
            .unwrap();
    assert_eq!(seen, [me], "{me} sees rows of {seen:?}");

    let insert_other = format!("INSERT INTO {q} (tenant_id, body) VALUES ('{other}', 'planted')");
    assert_eq!(
        sqlstate(conn, &insert_other).await.as_deref(),
        Some("42501"),
        "{me} wrote a row for {other}"
    );
    let give_away = format!("UPDATE {q} SET tenant_id = '{other}'");
    assert_eq!(
        sqlstate(conn, &give_away).await.as_deref(),
        Some("42501"),
        "{me} moved its rows to {other}"
    );
    for sql in [
        format!("UPDATE {q} SET body = 'stolen' WHERE tenant_id = '{other}'"),
        format!("DELETE FROM {q} WHERE tenant_id = '{other}'"),
    ] {
        let affected = sqlx::raw_sql(AssertSqlSafe(sql.clone()))
            .execute(&mut *conn)
            .await
            .unwrap()
            .rows_affected();
        assert_eq!(affected, 0, "{sql} as {me}");
    }
    // Not a bypass: with row_security off the query fails instead.
    sqlx::raw_sql("SET row_security = off")
        .execute(&mut *conn)
        .await
        .unwrap();
    assert_eq!(
        sqlstate(conn, &format!("SELECT * FROM {q}"))
            .await
            .as_deref(),
        Some("42501")
    );
    sqlx::raw_sql("RESET row_security")
        .execute(&mut *conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn two_tenants_in_both_modes_are_enforced_and_each_reaches_only_its_own_rows() {
    let backend = backend().await;
    let tables = vec![shared_table("idb_two").await];
    ensure_shared_security(backend.pool(), &tables)
        .await
        .unwrap();
    let a = provision(&backend, "idb-sch", IsolationMode::Schema, &tables).await;
    let b = provision(&backend, "idb-ded", IsolationMode::Database, &tables).await;
    let q = qualified(&tables[0]);

    // Each writes its own rows through the policy's WITH CHECK.
    let mut a_conn = a.login(SHARED_DB).await;
    let mut b_conn = b.login(SHARED_DB).await;
    for (conn, t) in [(&mut a_conn, &a), (&mut b_conn, &b)] {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {q} (tenant_id, body) VALUES ($1, 'one'), ($1, 'two')"
        )))
        .bind(&t.tenant.name)
        .execute(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("{} writes its rows: {e}", t.role()));
    }

    let a_report = probe(&backend, &tables, &a, Some(&b.names.schema)).await;
    let b_report = probe(&backend, &tables, &b, Some(&a.names.schema)).await;
    assert_enforced(&a_report, "the Schema tenant");
    assert_enforced(&b_report, "the Database tenant");
    for report in [&a_report, &b_report] {
        for id in [
            check::CANARY_READ,
            check::CANARY_WRITE,
            check::OTHER_SCHEMA,
            check::MAPPING,
            &check::table(&tables[0], check::READ),
            &check::table(&tables[0], check::WRITE),
            &check::table(&tables[0], check::POLICY),
        ] {
            assert_eq!(finding(report, id).state, IsolationState::Enforced);
        }
        assert!(
            finding(report, check::SERVER_VERSION)
                .detail
                .contains("PostgreSQL 1")
        );
    }

    assert_only_own_rows(&mut a_conn, &tables[0], &a.tenant.name, &b.tenant.name).await;
    assert_only_own_rows(&mut b_conn, &tables[0], &b.tenant.name, &a.tenant.name).await;
    // The canary row exists, and neither sees it.
    let mut admin = admin_db().await;
    let canaries: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {q} WHERE tenant_id = $1"
    )))
    .bind(CANARY_TENANT)
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(canaries, 1);

    // The tenant's identity is its role, and it cannot take another's.
    for (conn, other) in [(&mut a_conn, &b), (&mut b_conn, &a)] {
        let set_role = format!("SET ROLE {}", quote_ident(other.role()));
        assert_eq!(sqlstate(conn, &set_role).await.as_deref(), Some("42501"));
        let set_auth = format!("SET SESSION AUTHORIZATION {}", quote_ident(other.role()));
        assert_eq!(sqlstate(conn, &set_auth).await.as_deref(), Some("42501"));
        // Nor can it look the mapping up or call the function by name.
        assert_eq!(
            sqlstate(conn, "SELECT * FROM tenantry.tenant_roles")
                .await
                .as_deref(),
            Some("42501")
        );
    }
    let _ = a_conn.close().await;
    let _ = b_conn.close().await;
    let _ = admin.close().await;

    remove(&backend, &tables, &a).await;
    remove(&backend, &tables, &b).await;
    drop_table(&tables[0]).await;
}

#[tokio::test]
async fn bypassrls_granted_by_hand_is_broken_with_the_alter_role_remedy() {
    let f = Fixture::new("idb-byp", IsolationMode::Schema).await;
    let role = quote_ident(f.tenant.role());
    run(&f.su, &format!("ALTER ROLE {role} BYPASSRLS")).await;

    let report = f.probe().await;
    assert_eq!(report.state, IsolationState::Broken, "{}", show(&report));
    let bypass = finding(&report, check::BYPASSRLS);
    assert_eq!(bypass.state, IsolationState::Broken);
    assert!(
        bypass.detail.contains(&format!(
            "a superuser must run: ALTER ROLE {role} NOBYPASSRLS;"
        )),
        "{}",
        bypass.detail
    );
    // And the probe proves it: the tenant now reads the canary row.
    let read = finding(&report, &check::table(f.table(), check::READ));
    assert_eq!(read.state, IsolationState::Broken, "{}", read.detail);

    run(&f.su, &format!("ALTER ROLE {role} NOBYPASSRLS")).await;
    assert_enforced(&f.probe().await, "the tenant after NOBYPASSRLS");
    f.cleanup().await;
}

#[tokio::test]
async fn superuser_granted_by_hand_is_broken() {
    let f = Fixture::new("idb-su", IsolationMode::Database).await;
    let role = quote_ident(f.tenant.role());
    run(&f.su, &format!("ALTER ROLE {role} SUPERUSER")).await;

    let report = f.probe().await;
    assert_eq!(report.state, IsolationState::Broken, "{}", show(&report));
    let superuser = finding(&report, check::SUPERUSER);
    assert_eq!(superuser.state, IsolationState::Broken);
    assert!(
        superuser
            .detail
            .contains(&format!("ALTER ROLE {role} NOSUPERUSER;")),
        "{}",
        superuser.detail
    );
    assert_eq!(
        finding(&report, check::CANARY_READ).state,
        IsolationState::Broken
    );

    run(&f.su, &format!("ALTER ROLE {role} NOSUPERUSER")).await;
    assert_enforced(&f.probe().await, "the tenant after NOSUPERUSER");
    f.cleanup().await;
}

/// A tampering with the table, by the superuser: detected as `state` on
/// `check`, then repaired by `ensure_shared_security`.
async fn tamper_and_repair(prefix: &str, tamper: &str, what: &str, state: IsolationState) {
    let f = Fixture::new(prefix, IsolationMode::Schema).await;
    let q = qualified(f.table());
    run(&f.su, &tamper.replace("{table}", &q)).await;

    let report = f.probe().await;
    assert_eq!(report.state, state, "after {tamper}: {}", show(&report));
    let found = finding(&report, &check::table(f.table(), what));
    assert_eq!(found.state, state, "after {tamper}: {}", found.detail);

    ensure_shared_security(f.backend.pool(), &f.tables)
        .await
        .expect("the repair");
    assert_enforced(
        &f.probe().await,
        &format!("the tenant after repairing {tamper}"),
    );
    f.cleanup().await;
}

#[tokio::test]
async fn rls_not_forced_is_inert_until_repaired() {
    tamper_and_repair(
        "idb-nof",
        "ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY",
        check::FORCED,
        IsolationState::Inert,
    )
    .await;
}

#[tokio::test]
async fn rls_disabled_is_broken_until_repaired() {
    tamper_and_repair(
        "idb-dis",
        "ALTER TABLE {table} DISABLE ROW LEVEL SECURITY",
        check::ENABLED,
        IsolationState::Broken,
    )
    .await;
}

#[tokio::test]
async fn a_dropped_policy_is_broken_until_repaired() {
    tamper_and_repair(
        "idb-pol",
        "DROP POLICY tenantry_tenant_isolation ON {table}",
        check::POLICY,
        IsolationState::Broken,
    )
    .await;
}

#[tokio::test]
async fn a_policy_widened_by_hand_is_caught_by_the_read_probe() {
    tamper_and_repair(
        "idb-wid",
        "ALTER POLICY tenantry_tenant_isolation ON {table} USING (true)",
        check::READ,
        IsolationState::Broken,
    )
    .await;
}

#[tokio::test]
async fn usage_on_another_tenants_schema_is_broken() {
    let f = Fixture::new("idb-oth", IsolationMode::Schema).await;
    let other = provision(&f.backend, "idb-oth-b", IsolationMode::Schema, &f.tables).await;
    let mut other_conn = other.login(SHARED_DB).await;
    sqlx::raw_sql("CREATE TABLE secrets (v text); INSERT INTO secrets VALUES ('b-only')")
        .execute(&mut other_conn)
        .await
        .unwrap();
    let _ = other_conn.close().await;
    let report = probe(&f.backend, &f.tables, &f.tenant, Some(&other.names.schema)).await;
    assert_enforced(&report, "the tenant before the grant");

    let (schema, role) = (
        quote_ident(&other.names.schema),
        quote_ident(f.tenant.role()),
    );
    run(&f.su, &format!("GRANT USAGE ON SCHEMA {schema} TO {role}")).await;
    run(
        &f.su,
        &format!("GRANT SELECT ON {schema}.secrets TO {role}"),
    )
    .await;
    let report = probe(&f.backend, &f.tables, &f.tenant, Some(&other.names.schema)).await;
    assert_eq!(report.state, IsolationState::Broken, "{}", show(&report));
    let reach = finding(&report, check::OTHER_SCHEMA);
    assert_eq!(reach.state, IsolationState::Broken);
    assert!(
        reach.detail.contains("USAGE") && reach.detail.contains("read table"),
        "{}",
        reach.detail
    );

    run(
        &f.su,
        &format!("REVOKE ALL ON {schema}.secrets FROM {role}"),
    )
    .await;
    run(
        &f.su,
        &format!("REVOKE USAGE ON SCHEMA {schema} FROM {role}"),
    )
    .await;
    assert_enforced(
        &probe(&f.backend, &f.tables, &f.tenant, Some(&other.names.schema)).await,
        "the tenant after the revoke",
    );
    remove(&f.backend, &f.tables, &other).await;
    f.cleanup().await;
}

#[tokio::test]
async fn a_tenant_whose_login_is_disabled_is_unknown_and_says_why() {
    let f = Fixture::new("idb-nol", IsolationMode::Schema).await;
    f.backend
        .set_login(&unrecorded(&f.tenant.tenant), &f.tenant.names, false)
        .await
        .unwrap();
    let report = f.probe().await;
    assert_eq!(report.state, IsolationState::Unknown, "{}", show(&report));
    let connect = finding(&report, check::CONNECT);
    assert!(
        connect.detail.contains("login disabled"),
        "{}",
        connect.detail
    );
    // The catalogs are still read.
    assert_eq!(
        finding(&report, check::BYPASSRLS).state,
        IsolationState::Enforced
    );
    assert_eq!(
        finding(&report, &check::table(f.table(), check::FORCED)).state,
        IsolationState::Enforced
    );
    f.cleanup().await;
}

/// Catalog rows `ensure_*` could write for `table` and `role`, with their
/// xmin: equal snapshots mean nothing was written in between.
async fn snapshot(su: &PgPool, table: &SharedTable, role: &str) -> Vec<String> {
    sqlx::query_scalar(
        "WITH t AS (SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = $1 AND c.relname = $2) \
         SELECT 'class ' || c.xmin || ' ' || c.relrowsecurity || c.relforcerowsecurity || ' ' || coalesce(c.relacl::text, '') \
           FROM pg_class c, t WHERE c.oid = t.oid \
         UNION ALL SELECT 'policy ' || p.xmin || ' ' || p.polname || ' ' || p.polroles::text || ' ' || \
                pg_get_expr(p.polqual, p.polrelid) || ' ' || pg_get_expr(p.polwithcheck, p.polrelid) \
           FROM pg_policy p, t WHERE p.polrelid = t.oid \
         UNION ALL SELECT 'mapping ' || m.xmin || ' ' || m.tenant FROM tenantry.tenant_roles m WHERE m.role_name = $3 \
         UNION ALL SELECT 'sequence ' || s.xmin || ' ' || coalesce(s.relacl::text, '') \
           FROM pg_class s, t WHERE s.oid = pg_get_serial_sequence(quote_ident($1) || '.' || quote_ident($2), 'id')::regclass \
         UNION ALL SELECT 'canary ' || c.xmin || ' ' || coalesce(c.relacl::text, '') FROM pg_class c \
          WHERE c.oid = 'tenantry_canary.canary'::regclass \
         UNION ALL SELECT 'function ' || has_function_privilege($3, 'tenantry.tenant_of(name)', 'EXECUTE') \
         ORDER BY 1",
    )
    .bind(&table.schema)
    .bind(&table.table)
    .bind(role)
    .fetch_all(su)
    .await
    .unwrap()
}

#[tokio::test]
async fn securing_and_granting_twice_changes_nothing_the_second_time() {
    let backend = backend().await;
    let su = superuser_shared().await;
    let tables = vec![shared_table("idb_idem").await];
    ensure_shared_security(backend.pool(), &tables)
        .await
        .unwrap();
    let t = provision(&backend, "idb-idem", IsolationMode::Schema, &tables).await;
    let first = snapshot(&su, &tables[0], t.role()).await;
    assert_eq!(
        first.iter().filter(|r| r.starts_with("policy ")).count(),
        2,
        "{first:#?}"
    );
    assert!(
        first.iter().any(|r| r.starts_with("mapping ")),
        "{first:#?}"
    );
    assert!(first.contains(&"function true".to_string()), "{first:#?}");

    ensure_shared_security(backend.pool(), &tables)
        .await
        .unwrap();
    ensure_tenant_access(
        &unrecorded(&t.tenant),
        backend.pool(),
        &tables,
        t.role(),
        &t.tenant.name,
    )
    .await
    .unwrap();
    assert_eq!(snapshot(&su, &tables[0], t.role()).await, first);

    // Exactly the DML privileges, and USAGE on the serial column's sequence.
    let role = t.role().to_string();
    let privileges: Vec<String> = sqlx::query_scalar(
        "SELECT a.privilege_type FROM pg_class c, aclexplode(c.relacl) a \
          WHERE c.oid = $1::regclass AND a.grantee = $2::regrole ORDER BY 1",
    )
    .bind(qualified(&tables[0]))
    .bind(quote_ident(&role))
    .fetch_all(&su)
    .await
    .unwrap();
    assert_eq!(privileges, ["DELETE", "INSERT", "SELECT", "UPDATE"]);
    let sequence_usage: bool = sqlx::query_scalar(
        "SELECT has_sequence_privilege($1, pg_get_serial_sequence($2, 'id'), 'USAGE')",
    )
    .bind(&role)
    .bind(qualified(&tables[0]))
    .fetch_one(&su)
    .await
    .unwrap();
    assert!(sequence_usage);
    // One canary row, not one per run.
    let canaries: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {} WHERE tenant_id = $1",
        qualified(&tables[0])
    )))
    .bind(CANARY_TENANT)
    .fetch_one(&su)
    .await
    .unwrap();
    assert_eq!(canaries, 1);

    // A TRUNCATE granted by hand is taken back (RLS does not cover it).
    run(
        &su,
        &format!(
            "GRANT TRUNCATE ON {} TO {}",
            qualified(&tables[0]),
            quote_ident(&role)
        ),
    )
    .await;
    let report = probe(&backend, &tables, &t, None).await;
    assert_eq!(
        finding(&report, &check::table(&tables[0], check::PRIVILEGES)).state,
        IsolationState::Broken
    );
    ensure_tenant_access(
        &unrecorded(&t.tenant),
        backend.pool(),
        &tables,
        &role,
        &t.tenant.name,
    )
    .await
    .unwrap();
    assert_enforced(
        &probe(&backend, &tables, &t, None).await,
        "the tenant after the repair",
    );

    // Removing takes back the grants and the mapping, and twice is fine.
    remove_tenant_access(&unrecorded(&t.tenant), backend.pool(), &tables, &role)
        .await
        .unwrap();
    remove_tenant_access(&unrecorded(&t.tenant), backend.pool(), &tables, &role)
        .await
        .unwrap();
    let left: Vec<String> = snapshot(&su, &tables[0], &role)
        .await
        .into_iter()
        .filter(|r| r.starts_with("mapping ") || r.starts_with("function "))
        .collect();
    assert_eq!(left, ["function false"]);
    let has_any: bool = sqlx::query_scalar(
        "SELECT has_table_privilege($1, $2, 'SELECT') OR has_table_privilege($1, $2, 'INSERT')",
    )
    .bind(&role)
    .bind(qualified(&tables[0]))
    .fetch_one(&su)
    .await
    .unwrap();
    assert!(!has_any);
    backend
        .remove_tenant(&unrecorded(&t.tenant), &t.names, t.mode)
        .await
        .unwrap();
    remove_tenant_access(&unrecorded(&t.tenant), backend.pool(), &tables, &role)
        .await
        .expect("an absent role is fine");
    drop_table(&tables[0]).await;
}

#[tokio::test]
async fn a_table_the_admin_does_not_own_is_refused_and_left_alone() {
    let backend = backend().await;
    let su = superuser_shared().await;
    let name = unique_name("idb_foreign").replace('-', "_");
    run(
        &su,
        &format!(
            "CREATE TABLE public.{} (tenant_id text)",
            quote_ident(&name)
        ),
    )
    .await;
    let table: SharedTable = format!("public.{name}:tenant_id").parse().unwrap();
    match ensure_shared_security(backend.pool(), std::slice::from_ref(&table)).await {
        Err(e @ BackendError::Rejected { .. }) => {
            let message = e.to_string();
            assert!(
                message.contains("owned by \"postgres\"")
                    && message.contains("admin must own every shared table")
                    && message.contains(&format!("ALTER TABLE {} OWNER TO", qualified(&table))),
                "{message}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let (enabled, policies): (bool, i64) = sqlx::query_as(
        "SELECT c.relrowsecurity, (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid) \
           FROM pg_class c WHERE c.oid = $1::regclass",
    )
    .bind(qualified(&table))
    .fetch_one(&su)
    .await
    .unwrap();
    assert!(!enabled && policies == 0, "the foreign table was changed");

    let missing: SharedTable = format!("public.{name}_absent:tenant_id").parse().unwrap();
    assert!(matches!(
        ensure_shared_security(backend.pool(), &[missing]).await,
        Err(BackendError::Missing { .. })
    ));
    run(&su, &format!("DROP TABLE public.{}", quote_ident(&name))).await;
}

#[tokio::test]
async fn the_probe_never_reports_the_password() {
    let f = Fixture::new("idb-pw", IsolationMode::Database).await;
    let password = f.tenant.credentials.password.expose_secret().to_string();
    let report = f.probe().await;
    let json = serde_json::to_string(&report).unwrap();
    assert!(!json.contains(&password), "the report holds the password");

    // Nor a wrong password it was given, when the login fails.
    let wrong = DatabaseCredentials {
        password: SecretString::from(format!("{password}-wrong")),
        ..f.tenant.credentials.clone()
    };
    let report = DatabaseProbe::new(f.backend.pool().clone(), f.tables.clone())
        .probe(
            f.tenant.role(),
            &f.tenant.tenant.name,
            &wrong,
            f.tenant.mode,
            None,
        )
        .await;
    assert_eq!(report.state, IsolationState::Unknown, "{}", show(&report));
    assert!(
        finding(&report, check::CONNECT)
            .detail
            .contains("password authentication failed")
    );
    let json = serde_json::to_string(&report).unwrap();
    assert!(!json.contains(&password), "the report holds the password");
    f.cleanup().await;
}

#[tokio::test]
async fn without_shared_tables_the_probe_still_checks_the_role_and_the_canary() {
    let backend = backend().await;
    ensure_shared_security(backend.pool(), &[]).await.unwrap();
    let t = provision(&backend, "idb-none", IsolationMode::Database, &[]).await;
    let report = probe(&backend, &[], &t, None).await;
    assert_enforced(&report, "a tenant without shared tables");
    assert_eq!(
        finding(&report, check::TABLES).state,
        IsolationState::Enforced
    );
    assert_eq!(
        finding(&report, check::CANARY_READ).state,
        IsolationState::Enforced
    );
    remove(&backend, &[], &t).await;
}

#[tokio::test]
async fn a_database_tenant_gets_connect_on_the_shared_database_when_public_has_none() {
    // A shared database of its own, hardened as production would be: no
    // CONNECT for PUBLIC. (Revoking it on `tenantry` would disturb the
    // other tests.)
    let backend = backend().await;
    let scratch = unique_name("idb_hard").replace('-', "_");
    let mut admin = admin_db().await;
    for sql in [
        format!("CREATE DATABASE {}", quote_ident(&scratch)),
        format!(
            "REVOKE CONNECT ON DATABASE {} FROM PUBLIC",
            quote_ident(&scratch)
        ),
    ] {
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&mut admin)
            .await
            .unwrap();
    }
    let options: PgConnectOptions = env("TENANTRY_DATABASE_URL").parse().unwrap();
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options.database(&scratch))
        .await
        .unwrap();
    run(
        &pool,
        "CREATE TABLE public.orders (id serial, tenant_id text NOT NULL)",
    )
    .await;
    let tables: Vec<SharedTable> = vec!["public.orders:tenant_id".parse().unwrap()];
    ensure_shared_security(&pool, &tables).await.unwrap();
    let t = provision(&backend, "idb-hard", IsolationMode::Database, &[]).await;
    let probe = DatabaseProbe::new(pool.clone(), tables.clone());

    let before = probe
        .probe(t.role(), &t.tenant.name, &t.credentials, t.mode, None)
        .await;
    assert_eq!(before.state, IsolationState::Unknown, "{}", show(&before));
    let read = finding(&before, &check::table(&tables[0], check::READ));
    assert!(
        read.detail.contains(&format!(
            "GRANT CONNECT ON DATABASE {}",
            quote_ident(&scratch)
        )),
        "{}",
        read.detail
    );

    ensure_tenant_access(
        &unrecorded(&t.tenant),
        &pool,
        &tables,
        t.role(),
        &t.tenant.name,
    )
    .await
    .unwrap();
    let connect: bool =
        sqlx::query_scalar("SELECT has_database_privilege($1, current_database(), 'CONNECT')")
            .bind(t.role())
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(connect);
    let after = probe
        .probe(t.role(), &t.tenant.name, &t.credentials, t.mode, None)
        .await;
    assert_enforced(&after, "the Database tenant with CONNECT");

    remove_tenant_access(&unrecorded(&t.tenant), &pool, &tables, t.role())
        .await
        .unwrap();
    pool.close().await;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP DATABASE {} WITH (FORCE)",
        quote_ident(&scratch)
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    let _ = admin.close().await;
    remove(&backend, &[], &t).await;
}
