//! Counts everything that exists for a set of tenants in one pass over each
//! backend (PostgreSQL catalogs, moto, the API server), for campaigns of many
//! tenants: duplicates and orphans show as counts other than expected, and
//! anything with the run's prefix that belongs to no tenant of the run is a
//! stray.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use tenantry::backends::tags;

use super::readback::{self, admin_db};

/// What exists for one tenant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Count {
    pub roles: usize,
    pub schemas: usize,
    pub databases: usize,
    pub buckets: usize,
    /// Keys tagged with the tenant's name that are not pending deletion.
    pub live_keys: usize,
    /// Keys of the tenant scheduled for deletion (by a rollback or `Delete`).
    pub pending_keys: usize,
    pub aliases: usize,
    pub secrets: usize,
    pub kube_secrets: usize,
    /// IAM roles named `<bucket prefix>-<tenant>` (under `/tenantry/`).
    pub iam_roles: usize,
    /// ServiceAccounts in the tenant's credentials namespace labelled with
    /// its name.
    pub service_accounts: usize,
}

impl Count {
    /// Exactly one of everything, in the given mode, and no IAM role or
    /// ServiceAccount (see [`Count::with_identity`]).
    pub fn one(database_mode: bool) -> Self {
        Self {
            roles: 1,
            schemas: usize::from(!database_mode),
            databases: usize::from(database_mode),
            buckets: 1,
            live_keys: 1,
            pending_keys: 0,
            aliases: 1,
            secrets: 1,
            kube_secrets: 1,
            iam_roles: 0,
            service_accounts: 0,
        }
    }

    /// The same, with one IAM role and one ServiceAccount when the tenant's
    /// class gives it an identity, and none otherwise.
    pub fn with_identity(self, identity: bool) -> Self {
        Self {
            iam_roles: usize::from(identity),
            service_accounts: usize::from(identity),
            ..self
        }
    }

    /// The same, ignoring keys scheduled for deletion (what a rollback or a
    /// deletion leaves: AWS deletes keys only after a waiting period).
    pub fn without_pending(&self) -> Self {
        Self {
            pending_keys: 0,
            ..self.clone()
        }
    }
}

/// The census of a run: per tenant, and what carries the run's prefix but
/// belongs to none of its tenants.
#[derive(Debug, Default)]
pub struct Census {
    pub tenants: BTreeMap<String, Count>,
    pub strays: Vec<String>,
}

/// Counts the resources of `tenants` (name → namespace of its credentials
/// Secret, named `<name>-credentials`), whose names all start with `prefix`.
pub async fn census(
    kube: &kube::Client,
    prefix: &str,
    tenants: &BTreeMap<String, String>,
) -> Census {
    let mut out = Census {
        tenants: tenants
            .keys()
            .map(|n| (n.clone(), Count::default()))
            .collect(),
        strays: Vec::new(),
    };
    let by_ident: BTreeMap<String, String> = tenants
        .keys()
        .map(|n| (format!("t_{}", n.replace('-', "_")), n.clone()))
        .collect();
    let ident_prefix = format!("t_{}", prefix.replace('-', "_"));

    let mut db = admin_db().await;
    for (kind, sql) in [
        (
            "role",
            "SELECT rolname::text FROM pg_roles WHERE starts_with(rolname, $1)",
        ),
        (
            "schema",
            "SELECT nspname::text FROM pg_namespace WHERE starts_with(nspname, $1)",
        ),
        (
            "database",
            "SELECT datname::text FROM pg_database WHERE starts_with(datname, $1)",
        ),
    ] {
        let names: Vec<String> = sqlx::query_scalar(sql)
            .bind(&ident_prefix)
            .fetch_all(&mut db)
            .await
            .expect("read the catalog");
        for ident in names {
            match by_ident.get(&ident).and_then(|n| out.tenants.get_mut(n)) {
                Some(c) if kind == "role" => c.roles += 1,
                Some(c) if kind == "schema" => c.schemas += 1,
                Some(c) => c.databases += 1,
                None => out.strays.push(format!("{kind} {ident}")),
            }
        }
    }
    // Schemas inside tenants' own databases are theirs, not counted here.

    let aws = readback::aws().await;
    let bucket_prefix = format!("{}-", super::bucket_prefix());
    let buckets = aws.s3.list_buckets().send().await.expect("list buckets");
    for b in buckets.buckets() {
        let Some(tenant) = b.name().and_then(|n| n.strip_prefix(&bucket_prefix)) else {
            continue;
        };
        if !tenant.starts_with(prefix) {
            continue;
        }
        match out.tenants.get_mut(tenant) {
            Some(c) => c.buckets += 1,
            None => out.strays.push(format!("bucket {tenant}")),
        }
    }

    let mut aliases = aws.kms.list_aliases().into_paginator().send();
    while let Some(page) = aliases.next().await {
        for a in page.expect("list aliases").aliases() {
            let Some(tenant) = a
                .alias_name()
                .and_then(|n| n.strip_prefix("alias/tenantry/"))
            else {
                continue;
            };
            if !tenant.starts_with(prefix) {
                continue;
            }
            match out.tenants.get_mut(tenant) {
                Some(c) if a.target_key_id().is_some() => c.aliases += 1,
                Some(_) => {}
                None => out.strays.push(format!("alias {tenant}")),
            }
        }
    }

    let run_keys = readback::keys_where(&aws.kms, |tags| {
        tags.get(tags::TENANT)
            .is_some_and(|t| t.starts_with(prefix))
    })
    .await;
    for (id, tags, state) in run_keys {
        let tenant = &tags[tags::TENANT];
        match out.tenants.get_mut(tenant) {
            Some(c) if state == "PendingDeletion" => c.pending_keys += 1,
            Some(c) => c.live_keys += 1,
            None => out.strays.push(format!("key {id} of {tenant}")),
        }
    }

    let mut secrets = aws.sm.list_secrets().into_paginator().send();
    while let Some(page) = secrets.next().await {
        for s in page.expect("list secrets").secret_list() {
            let Some(tenant) = s
                .name()
                .and_then(|n| n.strip_prefix("tenantry/"))
                .and_then(|n| n.strip_suffix("/database"))
            else {
                continue;
            };
            if !tenant.starts_with(prefix) || s.deleted_date().is_some() {
                continue;
            }
            match out.tenants.get_mut(tenant) {
                Some(c) => c.secrets += 1,
                None => out.strays.push(format!("secret {tenant}")),
            }
        }
    }

    // Every role of the account, by name: a role named for a tenant of the
    // run counts whatever its tags say, so one that a rollback or a deletion
    // left behind shows however it was left; one at another path than
    // tenantry's is a stray, not the tenant's.
    let role_prefix = format!("{bucket_prefix}{prefix}");
    let roles = aws
        .iam
        .list_roles()
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .expect("list IAM roles");
    for role in roles {
        let name = role.role_name();
        if !name.starts_with(&role_prefix) {
            continue;
        }
        match out.tenants.get_mut(&name[bucket_prefix.len()..]) {
            Some(c) if role.path() == "/tenantry/" => c.iam_roles += 1,
            Some(_) => out
                .strays
                .push(format!("IAM role {name} at path {}", role.path())),
            None => out.strays.push(format!("IAM role {name}")),
        }
    }

    for (name, namespace) in tenants {
        let api: Api<Secret> = Api::namespaced(kube.clone(), namespace);
        if api
            .get_opt(&format!("{name}-credentials"))
            .await
            .expect("read Secret")
            .is_some()
        {
            out.tenants.get_mut(name).unwrap().kube_secrets += 1;
        }
    }

    // One list per namespace, by the label's presence: a ServiceAccount
    // labelled for a tenant of the run that is not in its namespace's plan
    // is a stray.
    let namespaces: BTreeSet<&String> = tenants.values().collect();
    for namespace in namespaces {
        let api: Api<ServiceAccount> = Api::namespaced(kube.clone(), namespace);
        let accounts = api
            .list_metadata(&ListParams::default().labels(tags::TENANT))
            .await
            .expect("list ServiceAccounts");
        for account in accounts {
            let Some(tenant) = account.labels().get(tags::TENANT) else {
                continue;
            };
            if !tenant.starts_with(prefix) {
                continue;
            }
            match out.tenants.get_mut(tenant) {
                Some(c) if tenants.get(tenant) == Some(namespace) => c.service_accounts += 1,
                _ => out.strays.push(format!(
                    "ServiceAccount {namespace}/{} of {tenant}",
                    account.name_any()
                )),
            }
        }
    }
    out
}

/// The tenants whose counts differ from `expected(name)`, with what was found.
pub fn mismatches(census: &Census, expected: impl Fn(&str) -> Count) -> Vec<String> {
    census
        .tenants
        .iter()
        .filter(|(name, c)| c.without_pending() != expected(name))
        .map(|(name, c)| format!("{name}: {c:?}"))
        .collect()
}
