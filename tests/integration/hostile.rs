//! Hostile and awkward input: tenant names and shared-table names from a
//! property-based generator, and spec changes on a Ready tenant.
//!
//! Names: every accepted tenant name maps to PostgreSQL identifiers made only
//! of `[a-z0-9_]`, starting with `t_`, at most 42 bytes (PostgreSQL truncates
//! at 63, so no two names collide after truncation), never a reserved or
//! system name; the `_` twin of a `-` name, and anything else outside the
//! pattern, is refused with a message naming the rule. SQL builders quote
//! every identifier: the statement's text outside quoted identifiers does
//! not depend on the names at all.
//! The API server's own refusal of such names is
//! lifecycle::the_api_server_refuses_names_the_schema_forbids.

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use proptest::prelude::*;
use serde_json::json;
use tenantry::api::{TENANT_NAME_MAX, Tenant, validate_tenant_name};
use tenantry::backends::shared_tables::{qualified, tenant_policy_sql};
use tenantry::isolation::SharedTable;
use tenantry::naming::{TenantNames, quote_ident};

use crate::support::cluster::*;
use crate::support::readback;
use crate::support::unique_name;

/// Names PostgreSQL (or tenantry itself) keeps for itself.
fn reserved(ident: &str) -> bool {
    ident.starts_with("pg_")
        || [
            "public",
            "postgres",
            "template0",
            "template1",
            "information_schema",
            "tenantry",
            "tenantry_audit",
            "tenantry_canary",
            "tenantry_admin",
        ]
        .contains(&ident)
}

/// The statement with every quoted identifier replaced by `""`: what is
/// left is the statement's own text.
fn skeleton(sql: &str) -> String {
    let (mut out, mut chars) = (String::new(), sql.chars().peekable());
    while let Some(c) = chars.next() {
        if c != '"' {
            out.push(c);
            continue;
        }
        // Inside an identifier until a '"' that is not doubled.
        loop {
            match chars.next() {
                Some('"') if chars.peek() == Some(&'"') => {
                    chars.next();
                }
                Some('"') | None => break,
                Some(_) => {}
            }
        }
        out.push_str("\"\"");
    }
    out
}

const HOSTILE: &str = "[a-zA-Z0-9_\\-\"';$ .()/*\\\\\u{0}\u{e9}]{1,45}";

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn any_accepted_name_maps_to_plain_unreserved_identifiers_and_any_other_is_refused_clearly(
        name in prop_oneof![HOSTILE, "[a-z][a-z0-9-]{1,38}[a-z0-9]"]
    ) {
        match TenantNames::new(&name, "tenantry") {
            Ok(n) => {
                prop_assert!(validate_tenant_name(&name).is_ok());
                for ident in [&n.role, &n.schema, &n.database] {
                    prop_assert!(ident.starts_with("t_"));
                    prop_assert!(ident.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'), "{}", ident);
                    prop_assert!(ident.len() <= 2 + TENANT_NAME_MAX && ident.len() < 63);
                    prop_assert!(!reserved(ident), "{}", ident);
                    // Nothing to escape: quoting only wraps it.
                    prop_assert_eq!(quote_ident(ident), format!("\"{ident}\""));
                }
                // Its `_` twin is refused, so `-` and `_` never meet in one identifier.
                if name.contains('-') {
                    let twin = name.replace('-', "_");
                    let err = TenantNames::new(&twin, "tenantry").unwrap_err();
                    prop_assert!(err.contains("DNS label"), "{}", err);
                }
            }
            Err(e) => {
                prop_assert!(validate_tenant_name(&name).is_err());
                prop_assert!(
                    e.contains("characters long") || e.contains("DNS label"),
                    "unclear refusal: {}", e
                );
            }
        }
    }

    #[test]
    fn shared_table_statements_quote_every_identifier(
        schema in HOSTILE, table in HOSTILE, column in HOSTILE
    ) {
        let hostile = SharedTable { schema, table, tenant_column: column };
        let plain = SharedTable {
            schema: "s".into(), table: "t".into(), tenant_column: "c".into(),
        };
        prop_assert_eq!(skeleton(&tenant_policy_sql(&hostile)), skeleton(&tenant_policy_sql(&plain)));
        prop_assert_eq!(skeleton(&qualified(&hostile)), skeleton(&qualified(&plain)));
    }
}

#[test]
fn reserved_names_cannot_be_reached_by_any_accepted_name() {
    // Each reserved name as a tenant name: accepted ones map under `t_`.
    for name in [
        "public",
        "postgres",
        "template0",
        "template1",
        "pg-catalog",
        "pg-toast",
        "information-schema",
        "tenantry",
        "tenantry-audit",
    ] {
        let n = TenantNames::new(name, "tenantry").unwrap();
        assert!(n.role.starts_with("t_") && !reserved(&n.role), "{name}");
    }
    for name in ["pg_catalog", "information_schema", "t_acme", "Public"] {
        let err = TenantNames::new(name, "tenantry").unwrap_err();
        assert!(err.contains("DNS label"), "{name}: {err}");
    }
    // The longest name is far from PostgreSQL's 63-byte limit.
    let longest = TenantNames::new(&"a".repeat(TENANT_NAME_MAX), "tenantry").unwrap();
    assert_eq!(longest.role.len(), TENANT_NAME_MAX + 2);
    assert!(TenantNames::new(&"a".repeat(TENANT_NAME_MAX + 1), "tenantry").is_err());
}

const TIMEOUT: Duration = Duration::from_secs(90);

#[tokio::test]
async fn lowering_the_connection_limit_and_moving_the_credentials_are_applied_leaving_nothing_behind()
 {
    let client = kube_client().await;
    install_crd(&client).await;
    let ns = create_namespace(&client, "hst").await;
    let other_ns = create_namespace(&client, "hst2").await;
    let op = Operator::start(&[]).await;
    let name = unique_name("hst");
    let spec = json!({"credentials": {"namespace": ns}, "database": {"connectionLimit": 20}});
    create_tenant(&client, &tenant_manifest(&op, &name, spec)).await;
    wait_for_tenant(&client, &op, &name, TIMEOUT, "Ready", is_ready).await;
    let secret = format!("{name}-credentials");
    let before = readback::kube_secret_data(&client, &ns, &secret).await;

    let api: Api<Tenant> = Api::all(client.clone());
    let patch = json!({"spec": {"database": {"connectionLimit": 2}, "credentials": {"namespace": other_ns}}});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    wait_for_tenant(&client, &op, &name, TIMEOUT, "Ready again", is_ready).await;

    let ident = format!("t_{}", name.replace('-', "_"));
    let mut admin = readback::admin_db().await;
    let limit: i32 = sqlx::query_scalar("SELECT rolconnlimit FROM pg_roles WHERE rolname = $1")
        .bind(&ident)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(limit, 2, "the lower limit is applied");
    let moved = readback::kube_secret_data(&client, &other_ns, &secret).await;
    assert_eq!(
        moved["password"], before["password"],
        "the same credentials"
    );
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
    assert!(
        secrets.get_opt(&secret).await.unwrap().is_none(),
        "the Secret in the old namespace is removed"
    );
}
