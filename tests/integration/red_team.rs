//! The red team: tenantry attacked by the people the threat model names
//! (`docs/security.md`), against the real local PostgreSQL. Each test plays
//! the attacker step by step and asserts what the attacker must not get.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use serde_json::json;
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use tenantry::api::{IsolationMode, IsolationState, Tenant, TenantPhase};
use tenantry::backends::TenantDatabase;
use tenantry::backends::postgres::RoleLimits;
use tenantry::backends::shared_tables::{CANARY_TENANT, ensure_shared_security};
use tenantry::isolation::database::DatabaseProbe;
use tenantry::naming::quote_ident;

use crate::isolation_db::{
    SHARED_DB, backend, drop_table, finding, provision, qualified, remove, run, shared_table,
    show as show_report, sqlstate, superuser_shared,
};
use crate::support::cluster::*;
use crate::support::{env, readback, unique_name, unrecorded};

const TIMEOUT: Duration = Duration::from_secs(90);

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
            &unrecorded(&attacker.tenant),
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

/// Path 2 of the PostgreSQL red team. The docs make the admin own the
/// shared tables, so the application's migration role usually inherits the
/// admin; and an admin-owned view or SECURITY DEFINER function over a shared
/// table is a common convenience. Through none of them does anyone see a
/// tenant's rows: the admin's own policy covers the canary rows only.
#[tokio::test]
async fn a_role_inheriting_the_admin_and_admin_owned_views_see_no_tenant_rows() {
    let backend = backend().await;
    let table = shared_table("rt-inherit").await;
    let tables = vec![table.clone()];
    ensure_shared_security(backend.pool(), &tables)
        .await
        .expect("the shared table is secured");
    let owner = provision(&backend, "rt-rows", IsolationMode::Schema, &tables).await;
    let reader = provision(&backend, "rt-reader", IsolationMode::Schema, &tables).await;
    let q = qualified(&table);
    let mut as_owner = owner.login(SHARED_DB).await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {q} (tenant_id, body) VALUES ($1, 'private')"
    )))
    .bind(&owner.tenant.name)
    .execute(&mut as_owner)
    .await
    .expect("the tenant writes its row");
    let _ = as_owner.close().await;

    // The migration role: a login that inherits the admin.
    let migrator = format!("rt_migrator_{}", std::process::id());
    let password = "migrator-password-not-a-secret";
    let su = superuser_shared().await;
    run(
        &su,
        &format!(
            "DROP ROLE IF EXISTS {m}; CREATE ROLE {m} LOGIN INHERIT PASSWORD {p} IN ROLE {admin}",
            m = quote_ident(&migrator),
            p = tenantry::naming::quote_literal(password),
            admin = quote_ident(&admin_role()),
        ),
    )
    .await;
    // The admin's conveniences: a view and a SECURITY DEFINER function over
    // the shared table, both readable by the other tenant.
    let view = format!("public.{}", quote_ident(&format!("{}_v", table.table)));
    let function = format!("public.{}", quote_ident(&format!("{}_count", table.table)));
    let mut admin = crate::support::readback::admin_db().await;
    exec(
        &mut admin,
        "the admin",
        &format!(
            "CREATE VIEW {view} AS SELECT * FROM {q}; \
             GRANT SELECT ON {view} TO {reader}; \
             CREATE FUNCTION {function}(who text) RETURNS bigint LANGUAGE sql SECURITY DEFINER \
               SET search_path = pg_catalog AS $f$ SELECT count(*) FROM {q} WHERE tenant_id = who $f$; \
             GRANT EXECUTE ON FUNCTION {function}(text) TO {reader}",
            reader = quote_ident(reader.role()),
        ),
    )
    .await;

    let options: PgConnectOptions = env("TENANTRY_DATABASE_URL").parse().unwrap();
    let mut as_migrator = PgConnection::connect_with(
        &options
            .username(&migrator)
            .password(password)
            .database(SHARED_DB),
    )
    .await
    .expect("the migration role logs in");
    let seen: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT tenant_id FROM {q} WHERE tenant_id <> '{CANARY_TENANT}'"
    )))
    .fetch_all(&mut as_migrator)
    .await
    .expect("the migration role may query the table");
    assert!(
        seen.is_empty(),
        "a role inheriting the admin read tenant rows: {seen:?}"
    );
    let wrote = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {q} (tenant_id, body) VALUES ($1, 'planted')"
    )))
    .bind(&owner.tenant.name)
    .execute(&mut as_migrator)
    .await;
    assert!(
        wrote.is_err(),
        "a role inheriting the admin wrote a row into a tenant's share"
    );
    let _ = as_migrator.close().await;

    let mut as_reader = reader.login(SHARED_DB).await;
    let through_view: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {view} WHERE tenant_id = $1"
    )))
    .bind(&owner.tenant.name)
    .fetch_one(&mut as_reader)
    .await
    .expect("the other tenant reads the view");
    let through_function: i64 =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT {function}($1)")))
            .bind(&owner.tenant.name)
            .fetch_one(&mut as_reader)
            .await
            .expect("the other tenant calls the function");
    let _ = as_reader.close().await;
    assert_eq!(
        (through_view, through_function),
        (0, 0),
        "another tenant counted the owner's rows through an admin-owned view and function"
    );

    exec(
        &mut admin,
        "the admin",
        &format!("DROP VIEW {view}; DROP FUNCTION {function}(text)"),
    )
    .await;
    let _ = admin.close().await;
    run(&su, &format!("DROP ROLE {}", quote_ident(&migrator))).await;
    remove(&backend, &tables, &owner).await;
    remove(&backend, &tables, &reader).await;
    drop_table(&table).await;
}

/// What path 2 cannot close: a role that is a member of the admin can act
/// as the admin, and the admin can always make itself a member of a tenant
/// role (it must, to make the role an owner). Such a role reads the
/// tenant's own schema; tenantry cannot prevent it, so every tenant's
/// attestation names the role (`exposure.admin-members`) with the REVOKE
/// that ends it, and stops naming it once it is revoked.
#[tokio::test]
async fn a_role_that_can_act_as_the_admin_is_named_in_every_tenants_attestation() {
    let backend = backend().await;
    let tenant = provision(&backend, "rt-admin-member", IsolationMode::Schema, &[]).await;
    let schema = quote_ident(&tenant.credentials.schema);
    let mut as_tenant = tenant.login(SHARED_DB).await;
    exec(
        &mut as_tenant,
        "the tenant",
        &format!("CREATE TABLE {schema}.orders (body text); INSERT INTO {schema}.orders VALUES ('private')"),
    )
    .await;
    let _ = as_tenant.close().await;

    let member = format!("rt_admin_member_{}", std::process::id());
    let password = "member-password-not-a-secret";
    let su = superuser_shared().await;
    run(
        &su,
        &format!(
            "DROP ROLE IF EXISTS {m}; CREATE ROLE {m} LOGIN PASSWORD {p} IN ROLE {admin}",
            m = quote_ident(&member),
            p = tenantry::naming::quote_literal(password),
            admin = quote_ident(&admin_role()),
        ),
    )
    .await;
    // Why it is reported rather than prevented: acting as the admin, the
    // member becomes the tenant and reads its table.
    let options: PgConnectOptions = env("TENANTRY_DATABASE_URL").parse().unwrap();
    let mut as_member = PgConnection::connect_with(
        &options
            .username(&member)
            .password(password)
            .database(SHARED_DB),
    )
    .await
    .expect("the admin's member logs in");
    exec(
        &mut as_member,
        "the admin's member",
        &format!(
            "SET ROLE {admin}; GRANT {role} TO {admin}; SET ROLE {role}",
            admin = quote_ident(&admin_role()),
            role = quote_ident(tenant.role()),
        ),
    )
    .await;
    let read: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT body FROM {schema}.orders"
    )))
    .fetch_all(&mut as_member)
    .await
    .expect("a member of the admin reaches the tenant's table");
    let _ = as_member.close().await;
    assert_eq!(read, vec!["private".to_string()]);

    let named = |report: &tenantry::api::LayerReport| {
        report
            .exposures
            .iter()
            .any(|f| f.check == "exposure.admin-members" && f.detail.contains(&member))
    };
    let report = crate::isolation_db::probe(&backend, &[], &tenant, None).await;
    assert!(named(&report), "{}", show_report(&report));
    let exposure = report
        .exposures
        .iter()
        .find(|f| f.check == "exposure.admin-members")
        .expect("the exposure");
    assert!(
        exposure.detail.contains(&format!(
            "REVOKE {} FROM {}",
            quote_ident(&admin_role()),
            quote_ident(&member)
        )),
        "{}",
        exposure.detail
    );

    run(&su, &format!("DROP ROLE {}", quote_ident(&member))).await;
    let report = crate::isolation_db::probe(&backend, &[], &tenant, None).await;
    assert!(!named(&report), "{}", show_report(&report));
    remove(&backend, &[], &tenant).await;
}

/// Path 3 of the PostgreSQL red team: the next owner of a name. A tenant
/// with rows in a shared table is destroyed (`Delete`); another customer
/// then gets a Tenant of the same name (a new uid). The rows of the first
/// are gone with its role, so the second starts with none of them.
#[tokio::test]
async fn the_next_tenant_of_a_destroyed_name_finds_none_of_its_rows() {
    let table = shared_table("rt-reuse").await;
    let tables = vec![table.clone()];
    let backend = backend().await.with_shared_tables(tables.clone());
    ensure_shared_security(backend.pool(), &tables)
        .await
        .expect("the shared table is secured");
    let first = provision(&backend, "rt-reuse", IsolationMode::Schema, &tables).await;
    let q = qualified(&table);
    let mut as_first = first.login(SHARED_DB).await;
    for body in ["invoice 1", "invoice 2"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {q} (tenant_id, body) VALUES ($1, $2)"
        )))
        .bind(&first.tenant.name)
        .bind(body)
        .execute(&mut as_first)
        .await
        .expect("the first customer writes its rows");
    }
    let _ = as_first.close().await;

    // Destroyed as the operator's Delete teardown does it.
    remove(&backend, &tables, &first).await;
    let su = superuser_shared().await;
    let left: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {q} WHERE tenant_id = $1"
    )))
    .bind(&first.tenant.name)
    .fetch_one(&su)
    .await
    .expect("the superuser counts");
    assert_eq!(left, 0, "the destroyed tenant's rows are still in {table}");

    // The next customer of that name.
    let second = crate::isolation_db::provision_named(
        &backend,
        &first.tenant.name,
        IsolationMode::Schema,
        &tables,
    )
    .await;
    assert_ne!(second.tenant.uid, first.tenant.uid);
    let mut as_second = second.login(SHARED_DB).await;
    let inherited: Vec<String> =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT body FROM {q}")))
            .fetch_all(&mut as_second)
            .await
            .expect("the second customer reads the table");
    let _ = as_second.close().await;
    assert!(
        inherited.is_empty(),
        "the next owner of the name reads the destroyed tenant's rows: {inherited:?}"
    );
    remove(&backend, &tables, &second).await;
    drop_table(&table).await;
}

/// The statement and idle-in-transaction timeouts of the session.
async fn show(conn: &mut PgConnection) -> String {
    sqlx::query_scalar::<_, String>(
        "SELECT current_setting('statement_timeout') || ' ' || current_setting('idle_in_transaction_session_timeout')",
    )
    .fetch_one(conn)
    .await
    .expect("SHOW")
}

/// Path 5 of the PostgreSQL red team: a noisy neighbour. The class sets a
/// statement timeout for every tenant role in its database. The tenant
/// turns it off for itself (everywhere, then in its own database, both of
/// which PostgreSQL lets a role do for itself): its sessions still get the
/// class's timeout or the probe reports the gap, and the repair puts it back.
#[tokio::test]
async fn a_tenant_cannot_keep_itself_out_of_the_class_timeouts() {
    let limits = RoleLimits {
        statement_timeout: Some("2s".into()),
        idle_in_transaction_session_timeout: Some("1min".into()),
    };
    let backend = backend().await.with_role_limits(limits.clone());
    let tenant = provision(&backend, "rt-noisy", IsolationMode::Database, &[]).await;
    let own_db = tenant.credentials.database.clone();
    let probe = || async {
        DatabaseProbe::new(backend.pool().clone(), Vec::new())
            .with_role_limits(limits.clone())
            .probe(
                tenant.role(),
                &tenant.tenant.name,
                &tenant.credentials,
                tenant.mode,
                None,
            )
            .await
    };
    let mut as_tenant = tenant.login(&own_db).await;
    assert_eq!(show(&mut as_tenant).await, "2s 1min");
    assert_eq!(
        finding(&probe().await, "role.timeouts").state,
        IsolationState::Enforced
    );

    // Everywhere: a setting for the role in its database still wins.
    exec(
        &mut as_tenant,
        "the tenant",
        "ALTER ROLE CURRENT_USER SET statement_timeout = 0",
    )
    .await;
    let _ = as_tenant.close().await;
    let mut as_tenant = tenant.login(&own_db).await;
    assert_eq!(show(&mut as_tenant).await, "2s 1min");
    // In its own database: measured, then repaired.
    exec(
        &mut as_tenant,
        "the tenant",
        &format!(
            "ALTER ROLE CURRENT_USER IN DATABASE {} SET statement_timeout = 0",
            quote_ident(&own_db)
        ),
    )
    .await;
    let _ = as_tenant.close().await;
    let report = probe().await;
    let timeouts = finding(&report, "role.timeouts");
    assert_eq!(
        timeouts.state,
        IsolationState::Inert,
        "{}",
        show_report(&report)
    );
    assert!(
        timeouts.detail.contains("statement_timeout = 2s"),
        "{}",
        timeouts.detail
    );

    backend
        .ensure_tenant(
            &unrecorded(&tenant.tenant),
            &tenant.names,
            tenant.mode,
            10,
            &tenant.credentials.password,
            true,
            false,
        )
        .await
        .expect("the repair runs");
    let mut as_tenant = tenant.login(&own_db).await;
    assert_eq!(show(&mut as_tenant).await, "2s 1min");
    let _ = as_tenant.close().await;
    assert_eq!(
        finding(&probe().await, "role.timeouts").state,
        IsolationState::Enforced
    );
    remove(&backend, &[], &tenant).await;
}

/// Path 6 of the PostgreSQL red team: what a Schema-mode tenant sees of
/// others that PostgreSQL does not let tenantry take away: a neighbour's
/// function (with its source) and comment in the shared database's
/// catalogs, and databases whose owner left PUBLIC's CONNECT (`postgres`).
/// The attestation names both as exposures instead of staying silent, and
/// they do not count against the tenant's isolation state.
#[tokio::test]
async fn what_a_tenant_sees_of_others_in_the_catalogs_is_reported_not_hidden() {
    let backend = backend().await;
    let neighbour = provision(&backend, "rt-catalog-a", IsolationMode::Schema, &[]).await;
    let looker = provision(&backend, "rt-catalog-b", IsolationMode::Schema, &[]).await;
    let mut as_neighbour = neighbour.login(SHARED_DB).await;
    exec(
        &mut as_neighbour,
        "the neighbour",
        &format!(
            "CREATE FUNCTION {}.pricing() RETURNS int LANGUAGE sql AS 'SELECT 42 /* discount rule */'",
            quote_ident(&neighbour.credentials.schema)
        ),
    )
    .await;
    let _ = as_neighbour.close().await;

    // The looker reads the neighbour's function source: PostgreSQL allows it.
    let mut as_looker = looker.login(SHARED_DB).await;
    let source: Option<String> = sqlx::query_scalar(
        "SELECT p.prosrc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
          WHERE n.nspname = $1 AND p.proname = 'pricing'",
    )
    .bind(&neighbour.credentials.schema)
    .fetch_optional(&mut as_looker)
    .await
    .expect("read pg_proc");
    let _ = as_looker.close().await;
    assert!(source.is_some_and(|s| s.contains("discount rule")));

    let report = crate::isolation_db::probe(&backend, &[], &looker, None).await;
    assert_eq!(
        report.state,
        IsolationState::Enforced,
        "{}",
        show_report(&report)
    );
    let exposure = |id: &str| {
        report
            .exposures
            .iter()
            .find(|f| f.check == id)
            .unwrap_or_else(|| panic!("no exposure {id} in {}", show_report(&report)))
            .detail
            .clone()
    };
    let catalogs = exposure("exposure.catalogs");
    assert!(catalogs.contains("functions"), "{catalogs}");
    let databases = exposure("exposure.databases");
    assert!(databases.contains("\"postgres\""), "{databases}");
    assert!(
        databases.contains("REVOKE CONNECT ON DATABASE \"postgres\" FROM PUBLIC"),
        "{databases}"
    );
    remove(&backend, &[], &neighbour).await;
    remove(&backend, &[], &looker).await;
}

/// Issue 15, path 4: the Kubernetes blast radius. Whoever may create a
/// Tenant must not get a Secret written into `kube-system` or the
/// operator's own namespace (where the classes' admin URLs live). Both are
/// refused with a condition naming the rule, and nothing is made.
#[tokio::test]
async fn a_tenant_cannot_have_its_secret_written_into_kube_system_or_the_operators_namespace() {
    let client = kube_client().await;
    install_crd(&client).await;
    let operator_namespace = create_namespace(&client, "rt-operator").await;
    let op = Operator::start(&[("POD_NAMESPACE", operator_namespace.as_str())]).await;
    let tenants: Api<Tenant> = Api::all(client.clone());
    for (prefix, namespace, rule) in [
        ("rt-kube", "kube-system", "kube-*"),
        ("rt-opns", operator_namespace.as_str(), "the operator's own"),
    ] {
        let name = unique_name(prefix);
        let spec = json!({"credentials": {"namespace": namespace}});
        let created = create_tenant(&client, &tenant_manifest(&op, &name, spec)).await;
        let refused =
            |t: &Tenant| condition(t, "Ready").is_some_and(|c| c.reason == "NamespaceNotAllowed");
        let tenant = wait_for_tenant(&client, &op, &name, TIMEOUT, "refused", refused).await;
        assert_eq!(phase(&tenant), Some(TenantPhase::Failed));
        let stalled = condition(&tenant, "Stalled").expect("Stalled");
        assert_eq!(stalled.status, "True");
        assert!(stalled.message.contains(rule), "{}", stalled.message);
        let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
        assert!(
            secrets
                .get_opt(&format!("{name}-credentials"))
                .await
                .unwrap()
                .is_none(),
            "a Secret was written into {namespace}"
        );
        let uid = created.metadata.uid.clone().unwrap();
        let made = readback::footprint(
            &client,
            &name,
            &uid,
            namespace,
            &format!("{name}-credentials"),
        )
        .await;
        assert_eq!(
            made,
            readback::Footprint::default(),
            "something was made for {name}"
        );
        tenants.delete(&name, &Default::default()).await.unwrap();
        wait_for_tenant_gone(&client, &op, &name, TIMEOUT).await;
    }
}

/// Path 2 of the PostgreSQL red team, what the policy cannot stop: a view
/// of a superuser (or BYPASSRLS role) and a materialized view over a shared
/// table show every tenant's rows to whoever may read them. The database
/// probe names both (`rls.<schema>.<table>.exposed`, Inert).
#[tokio::test]
async fn views_that_read_a_shared_table_past_its_policy_are_named_by_the_probe() {
    let backend = backend().await;
    let table = shared_table("rt-exposed").await;
    let tables = vec![table.clone()];
    ensure_shared_security(backend.pool(), &tables)
        .await
        .expect("the shared table is secured");
    let tenant = provision(&backend, "rt-exposed", IsolationMode::Schema, &tables).await;
    let check = format!("rls.{}.{}.exposed", table.schema, table.table);
    let report = crate::isolation_db::probe(&backend, &tables, &tenant, None).await;
    assert_eq!(
        finding(&report, &check).state,
        IsolationState::Enforced,
        "{}",
        show_report(&report)
    );

    let q = qualified(&table);
    let view = format!("{}_all", table.table);
    let copy = format!("{}_copy", table.table);
    let su = superuser_shared().await;
    run(
        &su,
        &format!(
            "CREATE VIEW public.{} AS SELECT * FROM {q}",
            quote_ident(&view)
        ),
    )
    .await;
    let mut admin = crate::support::readback::admin_db().await;
    exec(
        &mut admin,
        "the admin",
        &format!(
            "CREATE MATERIALIZED VIEW public.{} AS SELECT * FROM {q}",
            quote_ident(&copy)
        ),
    )
    .await;
    let report = crate::isolation_db::probe(&backend, &tables, &tenant, None).await;
    let exposed = finding(&report, &check);
    assert_eq!(
        exposed.state,
        IsolationState::Inert,
        "{}",
        show_report(&report)
    );
    assert!(
        exposed.detail.contains(&format!("view public.{view}"))
            && exposed
                .detail
                .contains(&format!("materialized view public.{copy}")),
        "{}",
        exposed.detail
    );

    exec(
        &mut admin,
        "the admin",
        &format!("DROP MATERIALIZED VIEW public.{}", quote_ident(&copy)),
    )
    .await;
    let _ = admin.close().await;
    run(&su, &format!("DROP VIEW public.{}", quote_ident(&view))).await;
    remove(&backend, &tables, &tenant).await;
    drop_table(&table).await;
}
