//! The PostgreSQL backend against the local environment's real PostgreSQL,
//! as its non-superuser admin (`tenantry_admin`: LOGIN CREATEROLE CREATEDB).
//! The superuser connection plays the careless human or the attacker, and
//! reads what only a superuser may (`pg_authid`).

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection};
use tenantry::api::IsolationMode;
use tenantry::backends::postgres::{PostgresBackend, scram_sha256_verifier};
use tenantry::backends::{BackendError, TenantDatabase, TenantRef, generate_password};
use tenantry::naming::{TenantNames, quote_ident};

use crate::support::{bucket_prefix, env, unique_name, unique_uid, unrecorded};

const SHARED_DB: &str = "tenantry";

async fn backend() -> PostgresBackend {
    PostgresBackend::connect(
        &SecretString::from(env("TENANTRY_DATABASE_URL")),
        4,
        None,
        None,
    )
    .await
    .expect("the admin connects")
}

fn admin_options() -> PgConnectOptions {
    env("TENANTRY_DATABASE_URL").parse().unwrap()
}

/// A superuser pool on `database`.
async fn superuser(database: &str) -> PgPool {
    let options: PgConnectOptions = env("TENANTRY_TEST_SUPERUSER_URL").parse().unwrap();
    PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options.database(database))
        .await
        .expect("the superuser connects")
}

fn new_tenant(prefix: &str) -> (TenantRef, TenantNames) {
    let name = unique_name(prefix);
    let names = TenantNames::new(&name, &bucket_prefix()).unwrap();
    (
        TenantRef {
            name,
            uid: unique_uid(),
            display_name: None,
        },
        names,
    )
}

/// Logs in as the tenant, as its application would.
async fn login(
    role: &str,
    password: &SecretString,
    database: &str,
) -> Result<PgConnection, sqlx::Error> {
    PgConnection::connect_with(
        &admin_options()
            .username(role)
            .password(password.expose_secret())
            .database(database),
    )
    .await
}

async fn ensure(
    backend: &PostgresBackend,
    tenant: &TenantRef,
    names: &TenantNames,
    mode: IsolationMode,
    password: &SecretString,
) -> Result<tenantry::backends::DatabaseLocation, BackendError> {
    backend
        .ensure_tenant(&unrecorded(tenant), names, mode, 7, password, true, false)
        .await
}

/// Runs `sql` (one implicit transaction). Concurrent GRANTs of other tests
/// on the shared database can make PostgreSQL refuse a catalog update with
/// "tuple concurrently updated"; the whole batch was rolled back then, so it
/// is run again.
async fn run(pool: &PgPool, sql: &str) {
    for _ in 0..20 {
        match sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
            .execute(pool)
            .await
        {
            Ok(_) => return,
            Err(e) if e.to_string().contains("tuple concurrently updated") => continue,
            Err(e) => panic!("{sql}: {e}"),
        }
    }
    panic!("{sql}: refused 20 times as concurrently updated");
}

async fn sqlstate(conn: &mut PgConnection, sql: &str) -> Option<String> {
    match sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
        .execute(conn)
        .await
    {
        Ok(_) => None,
        Err(sqlx::Error::Database(e)) => Some(e.code().unwrap_or_default().into_owned()),
        Err(e) => panic!("{sql}: {e}"),
    }
}

#[derive(Debug, PartialEq, sqlx::FromRow)]
struct RoleFacts {
    rolsuper: bool,
    rolbypassrls: bool,
    rolcreatedb: bool,
    rolcreaterole: bool,
    rolinherit: bool,
    rolreplication: bool,
    rolcanlogin: bool,
    rolconnlimit: i32,
    rolpassword: Option<String>,
    comment: Option<String>,
}

async fn role_facts(su: &PgPool, role: &str) -> Option<RoleFacts> {
    sqlx::query_as(
        "SELECT rolsuper, rolbypassrls, rolcreatedb, rolcreaterole, rolinherit, rolreplication, \
                rolcanlogin, rolconnlimit, rolpassword, shobj_description(oid, 'pg_authid') AS comment \
           FROM pg_authid WHERE rolname = $1",
    )
    .bind(role)
    .fetch_optional(su)
    .await
    .unwrap()
}

#[derive(Debug, PartialEq, sqlx::FromRow)]
struct ObjectFacts {
    owner: String,
    comment: Option<String>,
    acl: Option<String>,
}

/// Owner, comment and ACL of a schema of the database `su` is connected to.
async fn schema_facts(su: &PgPool, schema: &str) -> Option<ObjectFacts> {
    sqlx::query_as(
        "SELECT pg_get_userbyid(nspowner)::text AS owner, obj_description(oid, 'pg_namespace') AS comment, \
                nspacl::text AS acl FROM pg_namespace WHERE nspname = $1",
    )
    .bind(schema)
    .fetch_optional(su)
    .await
    .unwrap()
}

async fn database_facts(su: &PgPool, database: &str) -> Option<ObjectFacts> {
    sqlx::query_as(
        "SELECT pg_get_userbyid(datdba)::text AS owner, shobj_description(oid, 'pg_database') AS comment, \
                datacl::text AS acl FROM pg_database WHERE datname = $1",
    )
    .bind(database)
    .fetch_optional(su)
    .await
    .unwrap()
}

/// Every catalog row an ensure could write, with its `xmin`: equal
/// snapshots mean no row was written in between.
async fn catalog_snapshot(
    su: &PgPool,
    su_in_db: &PgPool,
    names: &TenantNames,
    database: &str,
) -> Vec<String> {
    let shared: Vec<String> = sqlx::query_scalar(
        "WITH r AS (SELECT oid FROM pg_authid WHERE rolname = $1) \
         SELECT 'authid ' || a.xmin::text || ' ' || a::text FROM pg_authid a, r WHERE a.oid = r.oid \
         UNION ALL SELECT 'shdescription ' || d.xmin::text || ' ' || d.description FROM pg_shdescription d, r WHERE d.objoid = r.oid \
         UNION ALL SELECT 'database ' || d.datname || ' ' || CASE WHEN d.datname = $3 \
                THEN d.xmin::text || ' ' || coalesce(d.datacl::text, '') \
                ELSE coalesce((SELECT string_agg(x.privilege_type, ',' ORDER BY x.privilege_type) \
                                 FROM aclexplode(d.datacl) x, r WHERE x.grantee = r.oid), '') END \
           FROM pg_database d WHERE d.datname = $2 \
         UNION ALL SELECT 'dbcomment ' || s.xmin::text || ' ' || s.description FROM pg_shdescription s JOIN pg_database d ON d.oid = s.objoid WHERE d.datname = $2 \
         UNION ALL SELECT 'setting ' || s.xmin::text || ' ' || s.setconfig::text FROM pg_db_role_setting s, r WHERE s.setrole = r.oid \
         UNION ALL SELECT 'member ' || m.xmin::text || ' ' || m.member::regrole::text FROM pg_auth_members m, r WHERE m.roleid = r.oid \
         ORDER BY 1",
    )
    .bind(&names.role)
    .bind(database)
    // The shared database's row changes whenever another tenant is granted
    // CONNECT: there only this role's own rights are compared.
    .bind(&names.database)
    .fetch_all(su)
    .await
    .unwrap();
    let local: Vec<String> = sqlx::query_scalar(
        "SELECT 'namespace ' || n.xmin::text || ' ' || n.nspname || ' ' || coalesce(n.nspacl::text, '') \
           FROM pg_namespace n WHERE n.nspname IN ($1, 'public') \
         UNION ALL SELECT 'description ' || d.xmin::text || ' ' || d.description \
           FROM pg_description d JOIN pg_namespace n ON n.oid = d.objoid WHERE n.nspname = $1 \
         ORDER BY 1",
    )
    .bind(&names.schema)
    .fetch_all(su_in_db)
    .await
    .unwrap();
    shared.into_iter().chain(local).collect()
}

fn expect_conflict(result: Result<impl std::fmt::Debug, BackendError>, naming: &str) {
    match result {
        Err(e @ BackendError::Conflict { .. }) => {
            assert!(e.to_string().contains(naming), "{e} should name {naming}");
        }
        other => panic!("expected a conflict naming {naming}, got {other:?}"),
    }
}

#[tokio::test]
async fn schema_tenant_role_is_unprivileged_and_owns_its_schema_alone() {
    let backend = backend().await;
    let su = superuser(SHARED_DB).await;
    let (tenant, names) = new_tenant("pg-flags");
    let location = ensure(
        &backend,
        &tenant,
        &names,
        IsolationMode::Schema,
        &generate_password(),
    )
    .await
    .unwrap();
    assert_eq!(location.database, SHARED_DB);
    assert_eq!(location.schema, names.schema);
    assert_eq!(location.role, names.role);

    let role = role_facts(&su, &names.role).await.unwrap();
    assert!(!role.rolsuper && !role.rolbypassrls && !role.rolcreatedb && !role.rolcreaterole);
    assert!(!role.rolinherit && !role.rolreplication && role.rolcanlogin);
    assert_eq!(role.rolconnlimit, 7);
    assert!(role.rolpassword.unwrap().starts_with("SCRAM-SHA-256$4096:"));
    let uid_comment = format!("tenantry.dev/tenant-uid={}", tenant.uid);
    assert!(role.comment.unwrap().contains(&uid_comment));

    let schema = schema_facts(&su, &names.schema).await.unwrap();
    assert_eq!(schema.owner, names.role);
    assert!(schema.comment.unwrap().contains(&uid_comment));
    let public_rights: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_namespace n, aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a \
          WHERE n.nspname = $1 AND a.grantee = 0",
    )
    .bind(&names.schema)
    .fetch_one(&su)
    .await
    .unwrap();
    assert_eq!(public_rights, 0, "PUBLIC has rights on the tenant's schema");

    backend
        .remove_tenant(&unrecorded(&tenant), &names, IsolationMode::Schema)
        .await
        .unwrap();
}

#[tokio::test]
async fn schema_tenant_works_in_its_schema_and_cannot_reach_public_or_another_tenant() {
    let backend = backend().await;
    let (a, a_names) = new_tenant("pg-iso-a");
    let (b, b_names) = new_tenant("pg-iso-b");
    let (a_pw, b_pw) = (generate_password(), generate_password());
    ensure(&backend, &a, &a_names, IsolationMode::Schema, &a_pw)
        .await
        .unwrap();
    ensure(&backend, &b, &b_names, IsolationMode::Schema, &b_pw)
        .await
        .unwrap();

    let mut b_conn = login(&b_names.role, &b_pw, SHARED_DB).await.unwrap();
    sqlx::raw_sql("CREATE TABLE secrets (v text); INSERT INTO secrets VALUES ('b-only')")
        .execute(&mut b_conn)
        .await
        .unwrap();

    let mut conn = login(&a_names.role, &a_pw, SHARED_DB)
        .await
        .expect("the tenant logs in with its password");
    let search_path: String = sqlx::query_scalar("SHOW search_path")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(search_path, a_names.schema);
    sqlx::raw_sql("CREATE TABLE orders (id int); INSERT INTO orders VALUES (1)")
        .execute(&mut conn)
        .await
        .expect("the tenant creates a table in its schema");
    let in_schema: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(format!("{}.orders", a_names.schema))
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(in_schema.is_some());

    assert_eq!(
        sqlstate(&mut conn, "CREATE TABLE public.escape (id int)")
            .await
            .as_deref(),
        Some("42501")
    );
    let usage: bool = sqlx::query_scalar("SELECT has_schema_privilege($1, 'USAGE')")
        .bind(&b_names.schema)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(!usage, "tenant a has USAGE on tenant b's schema");
    let read_b = format!("SELECT * FROM {}.secrets", quote_ident(&b_names.schema));
    assert_eq!(sqlstate(&mut conn, &read_b).await.as_deref(), Some("42501"));
    let create_in_b = format!(
        "CREATE TABLE {}.planted (id int)",
        quote_ident(&b_names.schema)
    );
    assert_eq!(
        sqlstate(&mut conn, &create_in_b).await.as_deref(),
        Some("42501")
    );
    let _ = conn.close().await;
    let _ = b_conn.close().await;

    backend
        .remove_tenant(&unrecorded(&a), &a_names, IsolationMode::Schema)
        .await
        .unwrap();
    backend
        .remove_tenant(&unrecorded(&b), &b_names, IsolationMode::Schema)
        .await
        .unwrap();
}

#[tokio::test]
async fn database_tenant_owns_a_database_no_other_tenant_can_connect_to() {
    let backend = backend().await;
    let su = superuser(SHARED_DB).await;
    let (a, a_names) = new_tenant("pg-db-a");
    let (b, b_names) = new_tenant("pg-db-b");
    let (a_pw, b_pw) = (generate_password(), generate_password());
    let location = ensure(&backend, &a, &a_names, IsolationMode::Database, &a_pw)
        .await
        .unwrap();
    assert_eq!(location.database, a_names.database);
    ensure(&backend, &b, &b_names, IsolationMode::Schema, &b_pw)
        .await
        .unwrap();

    let db = database_facts(&su, &a_names.database).await.unwrap();
    assert_eq!(db.owner, a_names.role);
    assert!(db.comment.unwrap().contains(&a.uid));
    let public_connect: bool =
        sqlx::query_scalar("SELECT has_database_privilege('public', $1, 'CONNECT')")
            .bind(&a_names.database)
            .fetch_one(&su)
            .await
            .unwrap();
    assert!(
        !public_connect,
        "PUBLIC can connect to the tenant's database"
    );

    match login(&b_names.role, &b_pw, &a_names.database).await {
        Err(sqlx::Error::Database(e)) => assert_eq!(e.code().as_deref(), Some("42501"), "{e}"),
        other => panic!("another tenant connected to the database: {other:?}"),
    }

    let mut conn = login(&a_names.role, &a_pw, &a_names.database)
        .await
        .unwrap();
    let search_path: String = sqlx::query_scalar("SHOW search_path")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(search_path, a_names.schema);
    sqlx::raw_sql("CREATE TABLE orders (id int)")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        sqlstate(&mut conn, "CREATE TABLE public.escape (id int)")
            .await
            .as_deref(),
        Some("42501")
    );
    // The owner of a database must not get `public` back either.
    assert_eq!(
        sqlstate(&mut conn, "ALTER SCHEMA public OWNER TO CURRENT_USER")
            .await
            .as_deref(),
        Some("42501")
    );
    let _ = conn.close().await;

    let su_db = superuser(&a_names.database).await;
    let schema = schema_facts(&su_db, &a_names.schema).await.unwrap();
    assert_eq!(schema.owner, a_names.role);
    // Not left to pg_database_owner (the tenant): on 16+ that alone would
    // let it create there; on 15 only its NOINHERIT stops it.
    let public = schema_facts(&su_db, "public").await.unwrap();
    assert_eq!(public.owner, "tenantry_admin");
    assert!(schema.comment.unwrap().contains(&a.uid));
    su_db.close().await;

    backend
        .remove_tenant(&unrecorded(&a), &a_names, IsolationMode::Database)
        .await
        .unwrap();
    backend
        .remove_tenant(&unrecorded(&b), &b_names, IsolationMode::Schema)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_second_ensure_writes_nothing_and_keeps_the_first_password() {
    let backend = backend().await;
    let su = superuser("postgres").await;
    for mode in [IsolationMode::Schema, IsolationMode::Database] {
        let (tenant, names) = new_tenant("pg-again");
        let password = generate_password();
        let location = ensure(&backend, &tenant, &names, mode, &password)
            .await
            .unwrap();
        let su_db = superuser(&location.database).await;
        let before = catalog_snapshot(&su, &su_db, &names, &location.database).await;
        let facts_before = role_facts(&su, &names.role).await;

        // Another password on a role that is already ours must not be applied:
        // the first one may be in use.
        let other = generate_password();
        let again = ensure(&backend, &tenant, &names, mode, &other)
            .await
            .unwrap();
        assert_eq!(again, location);
        let after = catalog_snapshot(&su, &su_db, &names, &location.database).await;
        assert_eq!(
            before, after,
            "{mode}: the second ensure wrote to the catalog"
        );
        assert_eq!(facts_before, role_facts(&su, &names.role).await);

        login(&names.role, &password, &location.database)
            .await
            .expect("the first password still works");
        assert!(
            login(&names.role, &other, &location.database)
                .await
                .is_err()
        );
        su_db.close().await;
        backend
            .remove_tenant(&unrecorded(&tenant), &names, mode)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_role_someone_else_made_is_a_conflict_and_stays_untouched() {
    let backend = backend().await;
    let su = superuser(SHARED_DB).await;
    let (tenant, names) = new_tenant("pg-foreign-role");
    let q = quote_ident(&names.role);
    run(
        &su,
        &format!("CREATE ROLE {q} LOGIN CREATEDB PASSWORD 'human-set'"),
    )
    .await;
    let before = role_facts(&su, &names.role).await.unwrap();

    expect_conflict(
        ensure(
            &backend,
            &tenant,
            &names,
            IsolationMode::Schema,
            &generate_password(),
        )
        .await,
        &names.role,
    );
    // Not even when the journal says a create was interrupted: a role is
    // created with its comment in one transaction.
    expect_conflict(
        backend
            .ensure_tenant(
                &unrecorded(&tenant),
                &names,
                IsolationMode::Schema,
                7,
                &generate_password(),
                true,
                true,
            )
            .await,
        &names.role,
    );
    assert_eq!(role_facts(&su, &names.role).await.unwrap(), before);
    assert!(
        schema_facts(&su, &names.schema).await.is_none(),
        "a schema was made for a foreign role"
    );

    // Someone else's role is never dropped, released or disabled either;
    // removing and releasing leave it alone without failing (a rollback
    // after the conflict must finish), disabling it is a conflict.
    backend
        .remove_tenant(&unrecorded(&tenant), &names, IsolationMode::Schema)
        .await
        .unwrap();
    backend
        .release_tenant(&unrecorded(&tenant), &names, IsolationMode::Schema)
        .await
        .unwrap();
    expect_conflict(
        backend.set_login(&unrecorded(&tenant), &names, false).await,
        &names.role,
    );
    assert_eq!(role_facts(&su, &names.role).await.unwrap(), before);
    run(&su, &format!("DROP ROLE {q}")).await;
}

#[tokio::test]
async fn a_role_of_another_tenant_uid_is_a_conflict() {
    let backend = backend().await;
    let su = superuser(SHARED_DB).await;
    let (tenant, names) = new_tenant("pg-other-uid");
    ensure(
        &backend,
        &tenant,
        &names,
        IsolationMode::Schema,
        &generate_password(),
    )
    .await
    .unwrap();
    let before = role_facts(&su, &names.role).await.unwrap();
    let impostor = TenantRef {
        uid: unique_uid(),
        ..tenant.clone()
    };
    expect_conflict(
        ensure(
            &backend,
            &impostor,
            &names,
            IsolationMode::Schema,
            &generate_password(),
        )
        .await,
        &names.role,
    );
    // A rollback of the failed ensure: nothing of the tenant's, nothing done.
    backend
        .remove_tenant(&unrecorded(&impostor), &names, IsolationMode::Schema)
        .await
        .unwrap();
    assert_eq!(role_facts(&su, &names.role).await.unwrap(), before);
    assert!(schema_facts(&su, &names.schema).await.is_some());
    backend
        .remove_tenant(&unrecorded(&tenant), &names, IsolationMode::Schema)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_schema_someone_else_owns_is_a_conflict_and_no_role_is_made() {
    let backend = backend().await;
    let su = superuser(SHARED_DB).await;
    let (tenant, names) = new_tenant("pg-foreign-schema");
    let q = quote_ident(&names.schema);
    run(
        &su,
        &format!("CREATE SCHEMA {q}; COMMENT ON SCHEMA {q} IS 'billing, do not touch'"),
    )
    .await;
    let before = schema_facts(&su, &names.schema).await.unwrap();

    expect_conflict(
        ensure(
            &backend,
            &tenant,
            &names,
            IsolationMode::Schema,
            &generate_password(),
        )
        .await,
        &names.schema,
    );
    assert_eq!(schema_facts(&su, &names.schema).await.unwrap(), before);
    assert!(
        role_facts(&su, &names.role).await.is_none(),
        "a role was left behind"
    );

    // A rollback of the failed ensure: nothing of the tenant's, nothing done.
    backend
        .remove_tenant(&unrecorded(&tenant), &names, IsolationMode::Schema)
        .await
        .unwrap();
    assert_eq!(schema_facts(&su, &names.schema).await.unwrap(), before);
    run(&su, &format!("DROP SCHEMA {q}")).await;
}

#[tokio::test]
async fn a_database_someone_else_owns_is_a_conflict() {
    let backend = backend().await;
    let su = superuser(SHARED_DB).await;
    let (tenant, names) = new_tenant("pg-foreign-db");
    let q = quote_ident(&names.database);
    run(&su, &format!("CREATE DATABASE {q}")).await;
    run(&su, &format!("COMMENT ON DATABASE {q} IS 'analytics'")).await;
    let before = database_facts(&su, &names.database).await.unwrap();

    for interrupted in [false, true] {
        expect_conflict(
            backend
                .ensure_tenant(
                    &unrecorded(&tenant),
                    &names,
                    IsolationMode::Database,
                    7,
                    &generate_password(),
                    true,
                    interrupted,
                )
                .await,
            &names.database,
        );
    }
    // A rollback of the failed ensure: nothing of the tenant's, nothing done.
    backend
        .remove_tenant(&unrecorded(&tenant), &names, IsolationMode::Database)
        .await
        .unwrap();
    assert_eq!(database_facts(&su, &names.database).await.unwrap(), before);
    assert!(role_facts(&su, &names.role).await.is_none());
    run(&su, &format!("DROP DATABASE {q}")).await;
}

#[tokio::test]
async fn remove_drops_the_schema_and_the_role_and_twice_is_fine() {
    let backend = backend().await;
    let su = superuser(SHARED_DB).await;
    let (tenant, names) = new_tenant("pg-remove");
    let password = generate_password();
    ensure(&backend, &tenant, &names, IsolationMode::Schema, &password)
        .await
        .unwrap();
    // A session left open and a table: neither may stop the removal.
    let mut conn = login(&names.role, &password, SHARED_DB).await.unwrap();
    sqlx::raw_sql("CREATE TABLE t (id int)")
        .execute(&mut conn)
        .await
        .unwrap();

    backend
        .remove_tenant(&unrecorded(&tenant), &names, IsolationMode::Schema)
        .await
        .unwrap();
    assert!(schema_facts(&su, &names.schema).await.is_none());
    assert!(role_facts(&su, &names.role).await.is_none());
    assert!(
        sqlx::raw_sql("SELECT 1").execute(&mut conn).await.is_err(),
        "the session survived"
    );
    backend
        .remove_tenant(&unrecorded(&tenant), &names, IsolationMode::Schema)
        .await
        .unwrap();
    backend
        .set_login(&unrecorded(&tenant), &names, false)
        .await
        .expect("an absent role is fine");
}

#[tokio::test]
async fn remove_drops_the_database_and_the_role() {
    let backend = backend().await;
    let su = superuser(SHARED_DB).await;
    let (tenant, names) = new_tenant("pg-remove-db");
    let password = generate_password();
    ensure(
        &backend,
        &tenant,
        &names,
        IsolationMode::Database,
        &password,
    )
    .await
    .unwrap();
    let _open = login(&names.role, &password, &names.database)
        .await
        .unwrap();

    backend
        .remove_tenant(&unrecorded(&tenant), &names, IsolationMode::Database)
        .await
        .unwrap();
    assert!(database_facts(&su, &names.database).await.is_none());
    assert!(role_facts(&su, &names.role).await.is_none());
    backend
        .remove_tenant(&unrecorded(&tenant), &names, IsolationMode::Database)
        .await
        .unwrap();
}

#[tokio::test]
async fn disabling_login_ends_the_open_session_and_enabling_restores_it() {
    let backend = backend().await;
    let (tenant, names) = new_tenant("pg-login");
    let password = generate_password();
    ensure(&backend, &tenant, &names, IsolationMode::Schema, &password)
        .await
        .unwrap();
    let mut open = login(&names.role, &password, SHARED_DB).await.unwrap();

    backend
        .set_login(&unrecorded(&tenant), &names, false)
        .await
        .unwrap();
    assert!(
        sqlx::raw_sql("SELECT 1").execute(&mut open).await.is_err(),
        "the session survived"
    );
    match login(&names.role, &password, SHARED_DB).await {
        Err(sqlx::Error::Database(e)) => assert_eq!(e.code().as_deref(), Some("28000"), "{e}"),
        other => panic!("a disabled tenant logged in: {other:?}"),
    }
    backend
        .set_login(&unrecorded(&tenant), &names, false)
        .await
        .expect("disabling twice is fine");

    backend
        .set_login(&unrecorded(&tenant), &names, true)
        .await
        .unwrap();
    login(&names.role, &password, SHARED_DB)
        .await
        .expect("login works again");
    backend
        .remove_tenant(&unrecorded(&tenant), &names, IsolationMode::Schema)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_released_tenant_is_adopted_by_a_new_uid_with_the_new_password() {
    let backend = backend().await;
    let su = superuser(SHARED_DB).await;
    for mode in [IsolationMode::Schema, IsolationMode::Database] {
        let (old, names) = new_tenant("pg-adopt");
        let old_pw = generate_password();
        let location = ensure(&backend, &old, &names, mode, &old_pw).await.unwrap();
        let mut conn = login(&names.role, &old_pw, &location.database)
            .await
            .unwrap();
        sqlx::raw_sql("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('retained')")
            .execute(&mut conn)
            .await
            .unwrap();

        backend
            .release_tenant(&unrecorded(&old), &names, mode)
            .await
            .unwrap();
        assert!(
            sqlx::raw_sql("SELECT 1").execute(&mut conn).await.is_err(),
            "{mode}: session survived release"
        );
        let role = role_facts(&su, &names.role).await.unwrap();
        assert!(!role.rolcanlogin);
        let comment = role.comment.unwrap();
        assert!(
            comment.contains(&old.uid) && comment.ends_with(";tenantry.dev/released=true"),
            "{comment}"
        );
        let su_db = superuser(&location.database).await;
        let schema_comment = schema_facts(&su_db, &names.schema)
            .await
            .unwrap()
            .comment
            .unwrap();
        assert!(
            schema_comment.ends_with(";tenantry.dev/released=true"),
            "{schema_comment}"
        );
        if mode == IsolationMode::Database {
            let db_comment = database_facts(&su, &names.database)
                .await
                .unwrap()
                .comment
                .unwrap();
            assert!(
                db_comment.ends_with(";tenantry.dev/released=true"),
                "{db_comment}"
            );
        }
        backend
            .release_tenant(&unrecorded(&old), &names, mode)
            .await
            .expect("releasing twice is fine");

        let new = TenantRef {
            uid: unique_uid(),
            ..old.clone()
        };
        let new_pw = generate_password();
        ensure(&backend, &new, &names, mode, &new_pw).await.unwrap();
        let comment = role_facts(&su, &names.role).await.unwrap().comment.unwrap();
        assert!(
            comment.contains(&new.uid) && !comment.contains("released"),
            "{comment}"
        );
        let schema_comment = schema_facts(&su_db, &names.schema)
            .await
            .unwrap()
            .comment
            .unwrap();
        assert!(schema_comment.contains(&new.uid) && !schema_comment.contains("released"));
        if mode == IsolationMode::Database {
            let db_comment = database_facts(&su, &names.database)
                .await
                .unwrap()
                .comment
                .unwrap();
            assert!(db_comment.contains(&new.uid) && !db_comment.contains("released"));
        }
        let mut conn = login(&names.role, &new_pw, &location.database)
            .await
            .expect("the adoption password works");
        let kept: String = sqlx::query_scalar("SELECT v FROM kept")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(kept, "retained");
        let _ = conn.close().await;
        assert!(
            login(&names.role, &old_pw, &location.database)
                .await
                .is_err()
        );

        // The old tenant has no say any more.
        backend
            .remove_tenant(&unrecorded(&old), &names, mode)
            .await
            .unwrap();
        backend
            .release_tenant(&unrecorded(&old), &names, mode)
            .await
            .unwrap();
        expect_conflict(
            backend.set_login(&unrecorded(&old), &names, false).await,
            &names.role,
        );
        let comment = role_facts(&su, &names.role).await.unwrap().comment.unwrap();
        assert!(
            comment.contains(&new.uid) && !comment.contains("released"),
            "{comment}"
        );
        login(&names.role, &new_pw, &location.database)
            .await
            .expect("the old tenant's remove left the adopted tenant alone");
        su_db.close().await;
        backend
            .remove_tenant(&unrecorded(&new), &names, mode)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_release_by_another_tenant_name_is_never_adopted() {
    let backend = backend().await;
    let su = superuser(SHARED_DB).await;
    let (tenant, names) = new_tenant("pg-other-name");
    let q = quote_ident(&names.role);
    run(
        &su,
        &format!(
            "CREATE ROLE {q} NOLOGIN; COMMENT ON ROLE {q} IS \
             'tenantry.dev/managed-by=tenantry;tenantry.dev/tenant=someone-else;tenantry.dev/tenant-uid=u-1;tenantry.dev/released=true'"
        ),
    )
    .await;
    let before = role_facts(&su, &names.role).await.unwrap();
    expect_conflict(
        ensure(
            &backend,
            &tenant,
            &names,
            IsolationMode::Schema,
            &generate_password(),
        )
        .await,
        "someone-else",
    );
    assert_eq!(role_facts(&su, &names.role).await.unwrap(), before);
    run(&su, &format!("DROP ROLE {q}")).await;
}

#[tokio::test]
async fn an_interrupted_database_creation_is_adopted_only_when_interrupted() {
    let backend = backend().await;
    let su = superuser(SHARED_DB).await;
    let (tenant, names) = new_tenant("pg-interrupted");
    // What a process that died between CREATE DATABASE and COMMENT leaves.
    run(
        backend.pool(),
        &format!("CREATE DATABASE {}", quote_ident(&names.database)),
    )
    .await;
    let before = database_facts(&su, &names.database).await.unwrap();

    let password = generate_password();
    expect_conflict(
        backend
            .ensure_tenant(
                &unrecorded(&tenant),
                &names,
                IsolationMode::Database,
                7,
                &password,
                true,
                false,
            )
            .await,
        &names.database,
    );
    assert_eq!(database_facts(&su, &names.database).await.unwrap(), before);

    backend
        .ensure_tenant(
            &unrecorded(&tenant),
            &names,
            IsolationMode::Database,
            7,
            &password,
            true,
            true,
        )
        .await
        .unwrap();
    let db = database_facts(&su, &names.database).await.unwrap();
    assert_eq!(db.owner, names.role);
    assert!(db.comment.unwrap().contains(&tenant.uid));
    let mut conn = login(&names.role, &password, &names.database)
        .await
        .unwrap();
    assert_eq!(
        sqlstate(&mut conn, "CREATE TABLE public.escape (id int)")
            .await
            .as_deref(),
        Some("42501")
    );
    let _ = conn.close().await;
    backend
        .remove_tenant(&unrecorded(&tenant), &names, IsolationMode::Database)
        .await
        .unwrap();
    assert!(database_facts(&su, &names.database).await.is_none());
}

#[tokio::test]
async fn drifted_privileges_and_settings_are_put_back() {
    let backend = backend().await;
    let su = superuser(SHARED_DB).await;
    let (tenant, names) = new_tenant("pg-drift");
    let password = generate_password();
    ensure(&backend, &tenant, &names, IsolationMode::Schema, &password)
        .await
        .unwrap();
    let (qr, qs) = (quote_ident(&names.role), quote_ident(&names.schema));
    // A careless human, and the tenant itself (it owns its schema and may
    // rewrite or drop its comment).
    run(
        &su,
        &format!(
            "GRANT USAGE ON SCHEMA {qs} TO PUBLIC; ALTER ROLE {qr} CREATEDB INHERIT CONNECTION LIMIT 99; \
             ALTER ROLE {qr} IN DATABASE {SHARED_DB} RESET search_path; GRANT CREATE ON SCHEMA public TO {qr}; \
             REVOKE CONNECT ON DATABASE {SHARED_DB} FROM {qr}"
        ),
    )
    .await;
    let mut conn = login(&names.role, &password, SHARED_DB).await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "COMMENT ON SCHEMA {qs} IS 'mine now'"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    let _ = conn.close().await;

    ensure(&backend, &tenant, &names, IsolationMode::Schema, &password)
        .await
        .unwrap();
    let role = role_facts(&su, &names.role).await.unwrap();
    assert!(!role.rolcreatedb && !role.rolinherit);
    assert_eq!(role.rolconnlimit, 7);
    let schema = schema_facts(&su, &names.schema).await.unwrap();
    assert!(schema.comment.unwrap().contains(&tenant.uid));
    let (public_usage, create_public, connect): (bool, bool, bool) = sqlx::query_as(
        "SELECT has_schema_privilege('public', $1, 'USAGE'), has_schema_privilege($2, 'public', 'CREATE'), \
                has_database_privilege($2, current_database(), 'CONNECT')",
    )
    .bind(&names.schema)
    .bind(&names.role)
    .fetch_one(&su)
    .await
    .unwrap();
    assert!(!public_usage && !create_public && connect);
    let mut conn = login(&names.role, &password, SHARED_DB).await.unwrap();
    let search_path: String = sqlx::query_scalar("SHOW search_path")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(search_path, names.schema);
    let _ = conn.close().await;
    backend
        .remove_tenant(&unrecorded(&tenant), &names, IsolationMode::Schema)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_tenant_database_whose_public_schema_was_handed_back_is_secured_again() {
    let backend = backend().await;
    let (tenant, names) = new_tenant("pg-drift-db");
    let password = generate_password();
    ensure(
        &backend,
        &tenant,
        &names,
        IsolationMode::Database,
        &password,
    )
    .await
    .unwrap();
    let su_db = superuser(&names.database).await;
    run(
        &su_db,
        "ALTER SCHEMA public OWNER TO pg_database_owner; GRANT CREATE ON SCHEMA public TO PUBLIC",
    )
    .await;
    let mut conn = login(&names.role, &password, &names.database)
        .await
        .unwrap();
    assert_eq!(
        sqlstate(&mut conn, "CREATE TABLE public.t1 (id int)").await,
        None,
        "drift not in place"
    );

    ensure(
        &backend,
        &tenant,
        &names,
        IsolationMode::Database,
        &password,
    )
    .await
    .unwrap();
    assert_eq!(
        sqlstate(&mut conn, "CREATE TABLE public.t2 (id int)")
            .await
            .as_deref(),
        Some("42501")
    );
    let _ = conn.close().await;
    su_db.close().await;
    backend
        .remove_tenant(&unrecorded(&tenant), &names, IsolationMode::Database)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_role_made_bypassrls_is_refused_with_the_statement_a_superuser_must_run() {
    let backend = backend().await;
    let su = superuser(SHARED_DB).await;
    let (tenant, names) = new_tenant("pg-bypass");
    ensure(
        &backend,
        &tenant,
        &names,
        IsolationMode::Schema,
        &generate_password(),
    )
    .await
    .unwrap();
    let q = quote_ident(&names.role);
    run(
        &su,
        &format!("ALTER ROLE {q} BYPASSRLS CONNECTION LIMIT 50"),
    )
    .await;
    let before = role_facts(&su, &names.role).await.unwrap();

    match ensure(
        &backend,
        &tenant,
        &names,
        IsolationMode::Schema,
        &generate_password(),
    )
    .await
    {
        Err(e @ BackendError::Rejected { .. }) => {
            let message = e.to_string();
            assert!(
                message.contains(&format!("ALTER ROLE {q} NOBYPASSRLS;")),
                "{message}"
            );
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(
        role_facts(&su, &names.role).await.unwrap(),
        before,
        "the role was changed anyway"
    );

    run(&su, &format!("ALTER ROLE {q} NOBYPASSRLS")).await;
    backend
        .remove_tenant(&unrecorded(&tenant), &names, IsolationMode::Schema)
        .await
        .unwrap();
}

#[tokio::test]
async fn errors_never_show_the_password_or_its_verifier() {
    let backend = backend().await;
    let (tenant, names) = new_tenant("pg-secret");
    let password = generate_password();
    // PostgreSQL refuses this limit in CREATE ROLE, the statement that
    // carries the verifier.
    let err = backend
        .ensure_tenant(
            &unrecorded(&tenant),
            &names,
            IsolationMode::Schema,
            -5,
            &password,
            true,
            false,
        )
        .await
        .unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(matches!(err, BackendError::Rejected { .. }), "{shown}");
    assert!(shown.contains(&names.role), "{shown}");
    assert!(
        !shown.contains(password.expose_secret()) && !shown.contains("SCRAM"),
        "{shown}"
    );
}

#[tokio::test]
async fn the_verifier_matches_what_the_server_computes_for_the_same_salt() {
    let su = superuser(SHARED_DB).await;
    let (_, names) = new_tenant("pg-scram");
    let password = generate_password();
    let q = quote_ident(&names.role);
    // Only here does a plaintext password travel, to get the server's own verifier.
    run(
        &su,
        &format!(
            "SET password_encryption = 'scram-sha-256'; CREATE ROLE {q} PASSWORD '{}'",
            password.expose_secret()
        ),
    )
    .await;
    let stored = role_facts(&su, &names.role)
        .await
        .unwrap()
        .rolpassword
        .unwrap();
    run(&su, &format!("DROP ROLE {q}")).await;
    let salt_b64 = stored
        .strip_prefix("SCRAM-SHA-256$4096:")
        .and_then(|rest| rest.split('$').next())
        .unwrap();
    use base64::Engine as _;
    let salt = base64::engine::general_purpose::STANDARD
        .decode(salt_b64)
        .unwrap();
    assert_eq!(
        scram_sha256_verifier(password.expose_secret(), &salt),
        stored
    );
}

#[tokio::test]
async fn many_tenants_provisioned_at_once_all_succeed() {
    let backend = std::sync::Arc::new(backend().await);
    let tenants: Vec<_> = (0..24)
        .map(|i| {
            let mode = if i % 4 == 0 {
                IsolationMode::Database
            } else {
                IsolationMode::Schema
            };
            let (tenant, names) = new_tenant("pg-many");
            (tenant, names, mode)
        })
        .collect();
    // As the engine does: transient errors are retried, anything else is final.
    static RETRIES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    async fn retried<T>(
        mut op: impl AsyncFnMut() -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        let mut tries = 0;
        loop {
            match op().await {
                Err(e) if e.is_transient() && tries < 30 => {
                    eprintln!("transient, retrying: {e}");
                    RETRIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(50 * tries)).await;
                }
                other => return other,
            }
        }
    }
    let ensures = tenants.iter().map(|(tenant, names, mode)| {
        let backend = backend.clone();
        async move {
            let password = generate_password();
            retried(async || {
                backend
                    .ensure_tenant(&unrecorded(tenant), names, *mode, 5, &password, true, false)
                    .await
            })
            .await
            .map(|_| password)
        }
    });
    let results = futures::future::join_all(ensures).await;
    for (result, (tenant, names, mode)) in results.iter().zip(&tenants) {
        let password = result
            .as_ref()
            .unwrap_or_else(|e| panic!("{}: {e}", tenant.name));
        let database = if *mode == IsolationMode::Database {
            names.database.as_str()
        } else {
            SHARED_DB
        };
        let conn = login(&names.role, password, database).await.unwrap();
        let _ = conn.close().await;
    }
    let removals = tenants.iter().map(|(tenant, names, mode)| {
        let backend = backend.clone();
        async move {
            retried(async || {
                backend
                    .remove_tenant(&unrecorded(tenant), names, *mode)
                    .await
            })
            .await
        }
    });
    for result in futures::future::join_all(removals).await {
        result.unwrap();
    }
    eprintln!(
        "{} tenants, {} transient errors retried",
        tenants.len(),
        RETRIES.load(std::sync::atomic::Ordering::Relaxed)
    );
}

#[tokio::test]
async fn a_tenant_provisioned_without_login_cannot_log_in() {
    let backend = backend().await;
    let (tenant, names) = new_tenant("pg-nologin");
    let password = generate_password();
    backend
        .ensure_tenant(
            &unrecorded(&tenant),
            &names,
            IsolationMode::Schema,
            7,
            &password,
            false,
            false,
        )
        .await
        .unwrap();
    match login(&names.role, &password, SHARED_DB).await {
        Err(sqlx::Error::Database(e)) => assert_eq!(e.code().as_deref(), Some("28000"), "{e}"),
        other => panic!("a NOLOGIN tenant logged in: {other:?}"),
    }
    backend
        .set_login(&unrecorded(&tenant), &names, true)
        .await
        .unwrap();
    login(&names.role, &password, SHARED_DB).await.unwrap();
    backend
        .remove_tenant(&unrecorded(&tenant), &names, IsolationMode::Schema)
        .await
        .unwrap();
}

#[tokio::test]
async fn an_interrupted_ensure_sets_the_password_it_was_given() {
    let backend = backend().await;
    let (tenant, names) = new_tenant("pg-retry-pw");
    let first = generate_password();
    ensure(&backend, &tenant, &names, IsolationMode::Schema, &first)
        .await
        .unwrap();
    // A process that died after creating the role may never have stored
    // `first`: the resumed attempt's password is the one that must work.
    let second = generate_password();
    backend
        .ensure_tenant(
            &unrecorded(&tenant),
            &names,
            IsolationMode::Schema,
            7,
            &second,
            true,
            true,
        )
        .await
        .unwrap();
    login(&names.role, &second, SHARED_DB)
        .await
        .expect("the resumed attempt's password works");
    assert!(login(&names.role, &first, SHARED_DB).await.is_err());
    backend
        .remove_tenant(&unrecorded(&tenant), &names, IsolationMode::Schema)
        .await
        .unwrap();
}

#[tokio::test]
async fn the_endpoint_is_the_advertised_address_or_the_admin_urls() {
    let url = SecretString::from(env("TENANTRY_DATABASE_URL"));
    let plain = PostgresBackend::connect(&url, 1, None, None).await.unwrap();
    let options = admin_options();
    assert_eq!(
        plain.endpoint(),
        (
            options.get_host().to_string(),
            options.get_port(),
            SHARED_DB.to_string()
        )
    );
    let advertised =
        PostgresBackend::connect(&url, 1, Some("db.example.internal".into()), Some(6432))
            .await
            .unwrap();
    assert_eq!(
        advertised.endpoint(),
        (
            "db.example.internal".to_string(),
            6432,
            SHARED_DB.to_string()
        )
    );
}
