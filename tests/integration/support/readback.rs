//! Reads the real state of every backend, for assertions: what exists for a
//! tenant, counted from PostgreSQL's catalogs, moto and the API server.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use sqlx::{Connection, PgConnection};
use tenantry::backends::tags;

use super::env;

pub struct Aws {
    pub s3: aws_sdk_s3::Client,
    pub kms: aws_sdk_kms::Client,
    pub sm: aws_sdk_secretsmanager::Client,
    pub iam: aws_sdk_iam::Client,
}

pub async fn aws() -> Aws {
    let _ = env("AWS_ENDPOINT_URL");
    let sdk = tenantry::backends::aws::load_sdk_config().await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(true)
            .build(),
    );
    Aws {
        s3,
        kms: aws_sdk_kms::Client::new(&sdk),
        sm: aws_sdk_secretsmanager::Client::new(&sdk),
        iam: aws_sdk_iam::Client::new(&sdk),
    }
}

pub async fn admin_db() -> PgConnection {
    PgConnection::connect(&env("TENANTRY_DATABASE_URL"))
        .await
        .expect("connect to PostgreSQL as the admin")
}

pub async fn superuser_db() -> PgConnection {
    PgConnection::connect(&env("TENANTRY_TEST_SUPERUSER_URL"))
        .await
        .expect("connect to PostgreSQL as the superuser")
}

/// The superuser, connected to `database` of the first cluster.
pub async fn superuser_db_in(database: &str) -> PgConnection {
    let mut url = url::Url::parse(&env("TENANTRY_TEST_SUPERUSER_URL")).expect("superuser URL");
    url.set_path(database);
    PgConnection::connect(url.as_str())
        .await
        .expect("connect to PostgreSQL as the superuser")
}

/// What exists for one tenant, in every backend.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    pub roles: i64,
    pub schemas: i64,
    pub databases: i64,
    pub buckets: usize,
    /// Keys tagged with the tenant's uid that are not pending deletion.
    pub live_keys: usize,
    pub aliases: usize,
    pub secrets: usize,
    pub kube_secrets: usize,
    /// The tenant's IAM role (`<prefix>-<tenant>`), when its class gives one.
    pub iam_roles: usize,
    /// ServiceAccounts in the namespace labelled with the tenant's name.
    pub service_accounts: usize,
}

impl Footprint {
    pub fn is_empty(&self) -> bool {
        *self == Footprint::default()
    }
}

/// Counts the tenant's resources. `uid` selects the KMS keys by tag.
pub async fn footprint(
    kube: &kube::Client,
    tenant: &str,
    uid: &str,
    namespace: &str,
    secret_name: &str,
) -> Footprint {
    let ident = format!("t_{}", tenant.replace('-', "_"));
    let mut db = admin_db().await;
    let roles: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_roles WHERE rolname = $1")
        .bind(&ident)
        .fetch_one(&mut db)
        .await
        .unwrap();
    let schemas: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname = $1")
        .bind(&ident)
        .fetch_one(&mut db)
        .await
        .unwrap();
    let databases: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(&ident)
        .fetch_one(&mut db)
        .await
        .unwrap();
    let aws = aws().await;
    let bucket = format!("{}-{tenant}", env("TENANTRY_BUCKET_PREFIX"));
    let buckets = usize::from(aws.s3.head_bucket().bucket(&bucket).send().await.is_ok());
    let alias = format!("alias/tenantry/{tenant}");
    let aliases = usize::from(aws.kms.describe_key().key_id(&alias).send().await.is_ok());
    let live_keys = keys_tagged(&aws.kms, uid)
        .await
        .into_iter()
        .filter(|(_, state)| state != "PendingDeletion")
        .count();
    let secrets = usize::from(
        aws.sm
            .describe_secret()
            .secret_id(format!("tenantry/{tenant}/database"))
            .send()
            .await
            .is_ok_and(|d| d.deleted_date().is_none()),
    );
    let kube_secrets: Api<Secret> = Api::namespaced(kube.clone(), namespace);
    let kube_secrets = usize::from(kube_secrets.get_opt(secret_name).await.unwrap().is_some());
    let iam_roles = usize::from(aws.iam.get_role().role_name(&bucket).send().await.is_ok());
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(kube.clone(), namespace);
    let selector = kube::api::ListParams::default().labels(&format!("{}={tenant}", tags::TENANT));
    let service_accounts = accounts.list_metadata(&selector).await.unwrap().items.len();
    Footprint {
        roles,
        schemas,
        databases,
        buckets,
        live_keys,
        aliases,
        secrets,
        kube_secrets,
        iam_roles,
        service_accounts,
    }
}

/// (key id, key state) of every KMS key tagged with `uid`.
pub async fn keys_tagged(kms: &aws_sdk_kms::Client, uid: &str) -> Vec<(String, String)> {
    keys_where(kms, |tags| {
        tags.get(tags::TENANT_UID).map(String::as_str) == Some(uid)
    })
    .await
    .into_iter()
    .map(|(id, _, state)| (id, state))
    .collect()
}

/// (key id, tags, key state) of every KMS key whose tags `select` accepts.
/// The tags are read 16 keys at a time: an account that holds thousands of
/// keys (after a campaign) must not make a count slower than a test's
/// grace period.
pub async fn keys_where(
    kms: &aws_sdk_kms::Client,
    select: impl Fn(&BTreeMap<String, String>) -> bool,
) -> Vec<(String, BTreeMap<String, String>, String)> {
    use futures::StreamExt;
    let mut ids = Vec::new();
    let mut pages = kms.list_keys().limit(1000).into_paginator().send();
    while let Some(page) = pages.next().await {
        ids.extend(
            page.expect("list keys")
                .keys()
                .iter()
                .filter_map(|k| k.key_id().map(str::to_string)),
        );
    }
    let select = &select;
    futures::stream::iter(ids)
        .map(|id| async move {
            let tags: BTreeMap<String, String> = kms
                .list_resource_tags()
                .key_id(&id)
                .send()
                .await
                .ok()?
                .tags()
                .iter()
                .map(|t| (t.tag_key().to_string(), t.tag_value().to_string()))
                .collect();
            if !select(&tags) {
                return None;
            }
            let state = kms
                .describe_key()
                .key_id(&id)
                .send()
                .await
                .ok()
                .and_then(|d| {
                    d.key_metadata()
                        .and_then(|m| m.key_state().map(|s| s.as_str().to_string()))
                })
                .unwrap_or_default();
            Some((id, tags, state))
        })
        .buffer_unordered(16)
        .filter_map(std::future::ready)
        .collect()
        .await
}

/// The decoded data of a Kubernetes Secret.
pub async fn kube_secret_data(
    kube: &kube::Client,
    namespace: &str,
    name: &str,
) -> BTreeMap<String, String> {
    let secrets: Api<Secret> = Api::namespaced(kube.clone(), namespace);
    secrets
        .get(name)
        .await
        .expect("read Secret")
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8(v.0).expect("utf-8 secret value")))
        .collect()
}

/// Whether the tenant can log in with the given URL.
pub async fn can_log_in(url: &str) -> Result<(), String> {
    PgConnection::connect(url)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}
