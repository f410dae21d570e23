//! The cross-tenant attack matrix: N tenants in both modes sharing a table
//! under row-level security; for every ordered pair (A, B), A uses its own
//! credentials (and its namespace's ServiceAccount) against everything of
//! B's. Every attempt is counted; a leak is an attempt that read, wrote or
//! changed anything of B's. The test prints both counts; leaks must be 0.
//!
//! Not attacked here: B's Secrets Manager secret. moto does not enforce IAM,
//! so "A's AWS principal reads B's secret" cannot be tested against it;
//! tenantry gives tenants no AWS principal of their own (a class's
//! `aws.principal` is written into bucket and key policies, tested in
//! isolation_aws.rs).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::api::{Api, PostParams};
use serde_json::json;
use sqlx::{AssertSqlSafe, Connection, PgConnection};

use crate::support::campaign;
use crate::support::cluster::*;
use crate::support::rbac::{client_from_kubeconfig, named, service_account_kubeconfig};
use crate::support::{readback, unique_name};

struct Victim {
    name: String,
    ns: String,
    ident: String,
    database_mode: bool,
    creds: BTreeMap<String, String>,
}

impl Victim {
    /// The URL of the shared database with this tenant's credentials.
    fn shared_url(&self) -> String {
        let mut url = url::Url::parse(&self.creds["url"]).unwrap();
        url.set_path("tenantry");
        url.to_string()
    }
}

#[derive(Default)]
struct Tally {
    attempts: usize,
    leaks: Vec<String>,
}

impl Tally {
    fn record(&mut self, what: String, leaked: bool) {
        self.attempts += 1;
        if leaked {
            self.leaks.push(what);
        }
    }
}

/// Runs `sql`; Ok(rows affected) or the error.
async fn run(conn: &mut PgConnection, sql: &str) -> Result<u64, String> {
    sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
        .execute(&mut *conn)
        .await
        .map(|r| r.rows_affected())
        .map_err(|e| e.to_string())
}

async fn rows(conn: &mut PgConnection, sql: &str) -> Result<Vec<String>, String> {
    sqlx::query_scalar::<_, String>(AssertSqlSafe(sql.to_string()))
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| e.to_string())
}

/// A ServiceAccount in `ns` that may read only `secret`, as an app of the
/// tenant would have; returns a client authenticated as it.
async fn app_identity(client: &kube::Client, ns: &str, secret: &str) -> kube::Client {
    let pp = PostParams::default();
    let sa: ServiceAccount = named(Some(ns), "app");
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create(&pp, &sa)
        .await
        .unwrap();
    let mut role: Role = named(Some(ns), "read-own-credentials");
    role.rules = Some(vec![PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec!["secrets".into()]),
        resource_names: Some(vec![secret.into()]),
        verbs: vec!["get".into()],
        ..Default::default()
    }]);
    Api::<Role>::namespaced(client.clone(), ns)
        .create(&pp, &role)
        .await
        .unwrap();
    let mut binding: RoleBinding = named(Some(ns), "app-reads-own-credentials");
    binding.role_ref = RoleRef {
        api_group: "rbac.authorization.k8s.io".into(),
        kind: "Role".into(),
        name: "read-own-credentials".into(),
    };
    binding.subjects = Some(vec![Subject {
        kind: "ServiceAccount".into(),
        name: "app".into(),
        namespace: Some(ns.into()),
        ..Default::default()
    }]);
    Api::<RoleBinding>::namespaced(client.clone(), ns)
        .create(&pp, &binding)
        .await
        .unwrap();
    client_from_kubeconfig(&service_account_kubeconfig(client, ns, "app").await).await
}

#[tokio::test]
async fn no_tenant_reaches_anything_of_another_in_any_ordered_pair() {
    let n = if campaign::is_campaign() { 8 } else { 5 };
    let client = kube_client().await;
    install_crd(&client).await;
    let table = unique_name("atk").replace('-', "_");
    let mut admin = readback::admin_db().await;
    run(
        &mut admin,
        &format!("CREATE TABLE public.{table} (id serial primary key, tenant_id text not null, body text)"),
    )
    .await
    .unwrap();
    let tables = format!("public.{table}:tenant_id");
    let op = Operator::start(&[("TENANTRY_SHARED_TABLES", &tables)]).await;

    let mut victims = Vec::new();
    let prefix = campaign::prefix("atk");
    for i in 0..n {
        let name = format!("{prefix}{i}");
        let ns = create_namespace(&client, "atk").await;
        let database_mode = i % 2 == 1;
        let spec = json!({"credentials": {"namespace": ns},
                          "database": {"isolation": if database_mode { "Database" } else { "Schema" }}});
        create_tenant(&client, &tenant_manifest(&op, &name, spec)).await;
        victims.push((name, ns, database_mode));
    }
    let mut tenants = Vec::new();
    for (name, ns, database_mode) in victims {
        wait_for_tenant(
            &client,
            &op,
            &name,
            Duration::from_secs(120),
            "Ready",
            is_ready,
        )
        .await;
        let creds = readback::kube_secret_data(&client, &ns, &format!("{name}-credentials")).await;
        tenants.push(Victim {
            ident: format!("t_{}", name.replace('-', "_")),
            name,
            ns,
            database_mode,
            creds,
        });
    }

    // Each tenant keeps a row in its own table and one in the shared table.
    let q = format!("public.{table}");
    for t in &tenants {
        let mut own = PgConnection::connect(&t.creds["url"]).await.unwrap();
        run(
            &mut own,
            &format!(
                "CREATE TABLE {}.secrets (v text); INSERT INTO {}.secrets VALUES ('of {}')",
                t.ident, t.ident, t.name
            ),
        )
        .await
        .unwrap();
        let mut shared = PgConnection::connect(&t.shared_url()).await.unwrap();
        run(
            &mut shared,
            &format!(
                "INSERT INTO {q} (tenant_id, body) VALUES ('{}', 'row of {}')",
                t.name, t.name
            ),
        )
        .await
        .expect("a tenant writes its own rows");
    }
    let mut apps = Vec::new();
    for t in &tenants {
        let app = app_identity(&client, &t.ns, &format!("{}-credentials", t.name)).await;
        // The control: the app reads its own Secret.
        Api::<Secret>::namespaced(app.clone(), &t.ns)
            .get(&format!("{}-credentials", t.name))
            .await
            .expect("an app reads its own tenant's Secret");
        apps.push(app);
    }

    let mut tally = Tally::default();
    for (ai, a) in tenants.iter().enumerate() {
        let mut conn = PgConnection::connect(&a.shared_url()).await.unwrap();
        for b in tenants.iter().filter(|b| b.name != a.name) {
            let pair = format!("{} -> {}", a.name, b.name);
            let bs = &b.ident;
            // B's own objects.
            for sql in [
                format!("SELECT v FROM {bs}.secrets"),
                format!("SELECT v FROM {bs}.{bs}.secrets"),
            ] {
                let got = rows(&mut conn, &sql).await;
                tally.record(format!("{pair}: {sql}"), got.is_ok());
            }
            for sql in [
                format!("INSERT INTO {bs}.secrets VALUES ('planted')"),
                format!("UPDATE {bs}.secrets SET v = 'changed'"),
                format!("DELETE FROM {bs}.secrets"),
                format!("DROP TABLE {bs}.secrets"),
                format!("CREATE TABLE {bs}.planted (v text)"),
                format!("DROP SCHEMA {bs} CASCADE"),
                format!("ALTER ROLE {bs} PASSWORD 'taken-over-123456'"),
                format!("SET ROLE {bs}"),
                format!("SET SESSION AUTHORIZATION {bs}"),
                format!("GRANT {bs} TO {}", a.ident),
                "CREATE TABLE public.planted_by_tenant (v text)".to_string(),
            ] {
                let res = run(&mut conn, &sql).await;
                tally.record(format!("{pair}: {sql}"), res.is_ok());
                let _ = run(&mut conn, "RESET ROLE").await;
            }
            // Listing: the privilege-aware catalog shows nothing of B's.
            let listed = rows(
                &mut conn,
                &format!("SELECT table_name::text FROM information_schema.tables WHERE table_schema = '{bs}'"),
            )
            .await
            .unwrap_or_default();
            tally.record(format!("{pair}: list {bs}"), !listed.is_empty());
            // B's own database.
            if b.database_mode {
                let mut url = url::Url::parse(&a.creds["url"]).unwrap();
                url.set_path(bs);
                let res = PgConnection::connect(url.as_str()).await;
                tally.record(format!("{pair}: connect to database {bs}"), res.is_ok());
            }
            // B's rows in the shared table, under every session setting.
            for setting in [
                format!("SET app.tenant = '{}'", b.name),
                format!("SET app.tenant_id = '{}'", b.name),
                format!(
                    "SELECT set_config('app.current_tenant', '{}', false)",
                    b.name
                ),
                format!("SET search_path = {bs}, public"),
                format!("SET ROLE {bs}"),
                "SET row_security = off".to_string(),
            ] {
                let _ = run(&mut conn, &setting).await;
                let seen = rows(
                    &mut conn,
                    &format!("SELECT body FROM {q} WHERE tenant_id = '{}'", b.name),
                )
                .await
                .unwrap_or_default();
                tally.record(
                    format!("{pair}: read B's rows after {setting}"),
                    !seen.is_empty(),
                );
                let inserted = run(
                    &mut conn,
                    &format!(
                        "INSERT INTO {q} (tenant_id, body) VALUES ('{}', 'planted')",
                        b.name
                    ),
                )
                .await;
                tally.record(
                    format!("{pair}: insert B's row after {setting}"),
                    inserted.is_ok(),
                );
                for sql in [
                    format!(
                        "UPDATE {q} SET body = 'stolen' WHERE tenant_id = '{}'",
                        b.name
                    ),
                    format!("DELETE FROM {q} WHERE tenant_id = '{}'", b.name),
                    format!(
                        "UPDATE {q} SET tenant_id = '{}' WHERE tenant_id = '{}'",
                        b.name, a.name
                    ),
                ] {
                    let res = run(&mut conn, &sql).await;
                    let leaked = match (
                        &res,
                        sql.starts_with("UPDATE") && sql.contains("SET tenant_id"),
                    ) {
                        (Ok(_), true) => true,
                        (Ok(n), false) => *n > 0,
                        (Err(_), _) => false,
                    };
                    tally.record(format!("{pair}: {sql} after {setting}"), leaked);
                }
                let _ = run(&mut conn, "RESET ALL").await;
                let _ = run(&mut conn, "RESET ROLE").await;
            }
            // B's Kubernetes Secret with A's app ServiceAccount.
            let read = Api::<Secret>::namespaced(apps[ai].clone(), &b.ns)
                .get(&format!("{}-credentials", b.name))
                .await;
            tally.record(format!("{pair}: get B's Secret as A's app"), read.is_ok());
            let listed = Api::<Secret>::namespaced(apps[ai].clone(), &b.ns)
                .list(&Default::default())
                .await;
            tally.record(
                format!("{pair}: list B's Secrets as A's app"),
                listed.is_ok(),
            );
        }
    }

    // What each tenant owns is untouched.
    let mut su = readback::superuser_db_in("tenantry").await;
    for t in &tenants {
        let bodies = rows(
            &mut su,
            &format!(
                "SELECT body FROM {q} WHERE tenant_id = '{}' ORDER BY id",
                t.name
            ),
        )
        .await
        .unwrap();
        assert_eq!(
            bodies,
            [format!("row of {}", t.name)],
            "{}'s shared rows changed",
            t.name
        );
        let mut own = PgConnection::connect(&t.creds["url"]).await.unwrap();
        let mine = rows(&mut own, &format!("SELECT v FROM {}.secrets", t.ident))
            .await
            .unwrap();
        assert_eq!(
            mine,
            [format!("of {}", t.name)],
            "{}'s own table changed",
            t.name
        );
    }
    let _ = run(&mut su, "DROP TABLE IF EXISTS public.planted_by_tenant").await;
    println!(
        "ATTACK MATRIX: {n} tenants (Schema and Database), {} ordered pairs, {} attempts, {} leaks",
        n * (n - 1),
        tally.attempts,
        tally.leaks.len()
    );
    assert!(tally.leaks.is_empty(), "leaks: {:#?}", tally.leaks);
}
