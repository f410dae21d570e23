//! What the reliability campaigns share: many tenants made, awaited and
//! deleted at once, audit chains checked with `tenantry audit verify`, and
//! every place a secret could leak to searched for the tenants' passwords.
//!
//! `TENANTRY_CAMPAIGN=1` (what `hack/campaign.sh` sets) selects the long
//! sizes; the suite runs the short ones with the same code.

use std::collections::BTreeMap;
use std::time::Duration;

use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tenantry::api::{Tenant, TenantClass};

use super::cluster::{Operator, TEST_LABEL, tail, tenant_manifest};
use super::{env, readback};

pub fn is_campaign() -> bool {
    std::env::var("TENANTRY_CAMPAIGN").is_ok_and(|v| v == "1")
}

/// How many tenants: `fast` in the suite, `campaign` under
/// `TENANTRY_CAMPAIGN=1` (or `TENANTRY_CAMPAIGN_TENANTS`, for a shorter or
/// longer campaign).
pub fn size(fast: usize, campaign: usize) -> usize {
    scaled(fast, campaign, "TENANTRY_CAMPAIGN_TENANTS")
}

/// How many crash rounds: as [`size`], overridden by `TENANTRY_CAMPAIGN_ROUNDS`.
pub fn rounds(fast: usize, campaign: usize) -> usize {
    scaled(fast, campaign, "TENANTRY_CAMPAIGN_ROUNDS")
}

fn scaled(fast: usize, campaign: usize, var: &str) -> usize {
    if !is_campaign() {
        return fast;
    }
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(campaign)
}

/// Fills the KMS account with keys of others until it holds `target` keys
/// (`TENANTRY_CAMPAIGN_OTHER_KEYS` in a campaign, none in the suite): a
/// real account is not empty, and every lookup of a key by tag must stay
/// cheap however many keys it holds. Returns how many keys it now holds.
pub async fn crowd_kms_account(campaign: usize) -> usize {
    use futures::StreamExt;
    let target = scaled(0, campaign, "TENANTRY_CAMPAIGN_OTHER_KEYS");
    let kms = readback::aws().await.kms;
    let mut held = 0;
    let mut pages = kms.list_keys().limit(1000).into_paginator().send();
    while let Some(page) = pages.next().await {
        held += page.expect("list keys").keys().len();
    }
    let missing = target.saturating_sub(held);
    futures::stream::iter(0..missing)
        .for_each_concurrent(16, |_| {
            let kms = kms.clone();
            async move {
                let tag = aws_sdk_kms::types::Tag::builder()
                    .tag_key("team")
                    .tag_value("another-team")
                    .build()
                    .expect("tag");
                kms.create_key()
                    .tags(tag)
                    .send()
                    .await
                    .expect("create a key of others");
            }
        })
        .await;
    held + missing
}

/// A seed from `TENANTRY_FAULT_SEED`, else a fresh one (printed, so a run
/// can be repeated with the same mix of faults).
pub fn seed() -> u64 {
    std::env::var("TENANTRY_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}

/// A short prefix no other run uses, for `n` tenant names `<prefix><i>`.
pub fn prefix(tag: &str) -> String {
    format!("{tag}-{:08x}-", rand::random::<u32>())
}

/// The tenants of a run: name → (credentials namespace, Database mode,
/// the TenantClass that gives it an IAM role and a ServiceAccount).
pub type Plan = BTreeMap<String, (String, bool, Option<String>)>;

/// `n` tenants, Schema and Database mode in turn, none with an IAM role.
pub fn plan(prefix: &str, n: usize, namespace: &str) -> Plan {
    (0..n)
        .map(|i| {
            (
                format!("{prefix}{i}"),
                (namespace.to_string(), i % 2 == 1, None),
            )
        })
        .collect()
}

/// As [`plan`], and half the tenants (`<prefix><i>` with `i % 4` 1 or 2)
/// are of `identity_class`: not every other one, which would be one
/// isolation mode only, and not a half that a test would select the same
/// way as one of its own halves (the crash campaign's, `i % 4 < 2`).
pub fn plan_with_identity(prefix: &str, n: usize, namespace: &str, identity_class: &str) -> Plan {
    (0..n)
        .map(|i| {
            let class = matches!(i % 4, 1 | 2).then(|| identity_class.to_string());
            (
                format!("{prefix}{i}"),
                (namespace.to_string(), i % 2 == 1, class),
            )
        })
        .collect()
}

/// What one tenant of the plan must have while it exists.
pub fn expected(plan: &Plan, name: &str) -> super::census::Count {
    let (_, database, class) = &plan[name];
    super::census::Count::one(*database).with_identity(class.is_some())
}

/// How many tenants of the plan have an IAM role.
pub fn with_identity(plan: &Plan) -> usize {
    plan.values()
        .filter(|(_, _, class)| class.is_some())
        .count()
}

/// An OIDC provider no cluster has: moto does not check that it exists.
const OIDC_PROVIDER: &str =
    "arn:aws:iam::123456789012:oidc-provider/oidc.eks.us-east-1.amazonaws.com/id/TENANTRY";

/// Creates a TenantClass of the run (cluster-scoped, so named uniquely)
/// whose tenants get an IAM role trusted through IRSA, and returns its name.
pub async fn create_identity_class(client: &Client, tag: &str) -> String {
    let name = super::unique_name(&format!("{tag}-irsa"));
    let class: TenantClass = serde_json::from_value(json!({
        "apiVersion": "tenantry.dev/v1alpha1",
        "kind": "TenantClass",
        "metadata": {"name": name},
        "spec": {"aws": {"identity": {"trust": {"irsa": {"oidcProviderArn": OIDC_PROVIDER}}}}},
    }))
    .expect("valid TenantClass");
    Api::<TenantClass>::all(client.clone())
        .create(&PostParams::default(), &class)
        .await
        .expect("create the identity TenantClass");
    name
}

pub fn namespaces(plan: &Plan) -> BTreeMap<String, String> {
    plan.iter()
        .map(|(n, (ns, _, _))| (n.clone(), ns.clone()))
        .collect()
}

/// Creates every tenant of the plan (policy `Delete`, a 1 s grace period).
/// A create the API server answers with 5xx (an etcd "request timed out"
/// under load) is asked again, as a client would; one that was applied
/// after all answers 409 the second time, and the tenant exists.
pub async fn create_all(client: &Client, op: &Operator, plan: &Plan) {
    let api: Api<Tenant> = Api::all(client.clone());
    for (name, (ns, database, class)) in plan {
        let mut spec = json!({
            "credentials": {"namespace": ns},
            "database": {"isolation": if *database { "Database" } else { "Schema" }},
            "deletion": {"policy": "Delete", "gracePeriod": "1s"},
        });
        if let Some(class) = class {
            spec["class"] = json!(class);
        }
        let tenant = tenant_manifest(op, name, spec);
        let mut tries = 0;
        loop {
            tries += 1;
            match api.create(&Default::default(), &tenant).await {
                Ok(_) => break,
                Err(kube::Error::Api(s)) if s.code == 409 && tries > 1 => break,
                Err(kube::Error::Api(s)) if (s.code >= 500 || s.code == 429) && tries < 60 => {}
                Err(kube::Error::HyperError(_) | kube::Error::Service(_)) if tries < 60 => {}
                Err(e) => panic!("create Tenant {name}: {e}"),
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }
}

/// The run's Tenants as they are now.
pub async fn list(client: &Client, run_id: &str) -> Vec<Tenant> {
    let api: Api<Tenant> = Api::all(client.clone());
    let lp = ListParams::default().labels(&format!("{TEST_LABEL}={run_id}"));
    // The API server may be restarting: a failed list is tried again.
    for _ in 0..60 {
        if let Ok(list) = api.list(&lp).await {
            return list.items;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("cannot list the run's Tenants for 30 s");
}

/// Polls (once a second) until `done` holds for the run's Tenants, or panics
/// after `timeout` with the ones that are not done and the log's tail.
pub async fn wait_all(
    client: &Client,
    run_id: &str,
    log: impl Fn() -> String,
    timeout: Duration,
    what: &str,
    done: impl Fn(&[Tenant]) -> Vec<String>,
) -> Vec<Tenant> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let tenants = list(client, run_id).await;
        let pending = done(&tenants);
        if pending.is_empty() {
            return tenants;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "{} tenants not {what} within {timeout:?}: {}\noperator log (tail):\n{}",
                pending.len(),
                pending
                    .iter()
                    .take(10)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n"),
                tail(&log(), 80)
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The plan's tenants that are not Ready (with their phase and Stalled reason).
pub fn not_ready(plan: &Plan) -> impl Fn(&[Tenant]) -> Vec<String> + '_ {
    move |tenants| {
        let by_name: BTreeMap<String, &Tenant> =
            tenants.iter().map(|t| (t.name_any(), t)).collect();
        plan.keys()
            .filter_map(|name| match by_name.get(name) {
                Some(t) if super::cluster::is_ready(t) => None,
                Some(t) => Some(format!(
                    "{name}: {:?} {:?}",
                    super::cluster::phase(t),
                    super::cluster::condition(t, "Stalled").map(|c| &c.message)
                )),
                None => Some(format!("{name}: missing")),
            })
            .collect()
    }
}

/// Every tenant of the run gone.
pub fn still_there(tenants: &[Tenant]) -> Vec<String> {
    tenants
        .iter()
        .map(|t| format!("{}: {:?}", t.name_any(), super::cluster::phase(t)))
        .collect()
}

/// Deletes every tenant of the plan. The API server may be restarting, or
/// its etcd slow ("request timed out", 5xx): such a refusal is asked again,
/// as a client would; any other is the test's failure.
pub async fn delete_all(client: &Client, plan: &Plan) {
    let api: Api<Tenant> = Api::all(client.clone());
    for name in plan.keys() {
        let mut tries = 0;
        loop {
            tries += 1;
            match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => break,
                Err(kube::Error::Api(s)) if s.code == 404 => break,
                Err(kube::Error::Api(s)) if (s.code >= 500 || s.code == 429) && tries < 60 => {}
                Err(kube::Error::HyperError(_) | kube::Error::Service(_)) if tries < 60 => {}
                Err(e) => panic!("delete {name}: {e}"),
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }
}

/// The generated passwords, read from the tenants' Kubernetes Secrets.
pub async fn passwords(client: &Client, plan: &Plan) -> Vec<String> {
    let mut out = Vec::new();
    for (name, (ns, _, _)) in plan {
        let data = readback::kube_secret_data(client, ns, &format!("{name}-credentials")).await;
        out.push(data["password"].clone());
    }
    out
}

async fn tenantry_cli(args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tenantry"))
        .args(args)
        .env("TENANTRY_DATABASE_URL", env("TENANTRY_DATABASE_URL"))
        .output()
        .await
        .expect("run tenantry");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Runs `tenantry audit verify --tenant` for each tenant: the names whose
/// chain is broken (with the tool's output), and every tenant's trail as
/// `tenantry audit log` prints it.
pub async fn audit(plan: &Plan) -> (Vec<String>, String) {
    let mut broken = Vec::new();
    let mut trails = String::new();
    for name in plan.keys() {
        let (ok, out) = tenantry_cli(&["audit", "verify", "--tenant", name]).await;
        if !ok {
            broken.push(format!("{name}: {out}"));
        }
        let (ok, log) = tenantry_cli(&["audit", "log", name]).await;
        assert!(ok, "tenantry audit log {name}: {log}");
        trails.push_str(&log);
    }
    (broken, trails)
}

/// Events about the plan's tenants, as JSON.
pub async fn events(client: &Client, plan: &Plan) -> String {
    let api: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), "kube-system");
    api.list(&ListParams::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| {
            e.regarding
                .as_ref()
                .and_then(|r| r.name.as_deref())
                .is_some_and(|n| plan.contains_key(n))
        })
        .map(|e| serde_json::to_string(&e).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Where (by place name) any of `secrets` appears in `places`; never the secret.
pub fn leaks(secrets: &[String], places: &[(&str, &str)]) -> Vec<String> {
    let mut found = Vec::new();
    for (place, text) in places {
        for (i, s) in secrets.iter().enumerate() {
            assert!(s.len() >= 16, "a generated password is long");
            if text.contains(s.as_str()) {
                found.push(format!("password #{i} in the {place}"));
            }
        }
    }
    found
}

/// Searches a log file line by line (debug logs of a campaign are large,
/// hundreds of MB): the number of lines, and where any of `secrets` appears.
/// One pass for all secrets at once.
pub fn log_leaks(path: &std::path::Path, secrets: &[String]) -> (usize, Vec<String>) {
    use std::io::BufRead;
    let searcher = aho_corasick::AhoCorasick::new(secrets).expect("a searcher of the passwords");
    let file = std::fs::File::open(path).expect("open the operator log");
    let mut reader = std::io::BufReader::new(file);
    let (mut lines, mut found, mut line) = (0, Vec::new(), Vec::new());
    while reader.read_until(b'\n', &mut line).expect("read the log") > 0 {
        lines += 1;
        for hit in searcher.find_overlapping_iter(&line) {
            found.push(format!(
                "password #{} in the operator log, line {lines}",
                hit.pattern().as_usize()
            ));
        }
        line.clear();
    }
    (lines, found)
}

/// Counts the plan's resources and asserts each tenant has what `expected`
/// says (keys scheduled for deletion aside) and nothing strays.
pub async fn assert_census(
    client: &Client,
    prefix: &str,
    plan: &Plan,
    expected: impl Fn(&str) -> super::census::Count,
    when: &str,
) -> super::census::Census {
    let found = super::census::census(client, prefix, &namespaces(plan)).await;
    let wrong = super::census::mismatches(&found, expected);
    assert!(
        wrong.is_empty() && found.strays.is_empty(),
        "{when}: duplicates or orphans: {wrong:#?}\nstrays: {:?}",
        found.strays
    );
    found
}

/// Deletes every tenant of the plan, waits until they are gone, asserts that
/// nothing of them is left and that every audit chain verifies. Returns how
/// long the deletion took and the trails (for leak searches).
pub async fn delete_and_check(
    client: &Client,
    op: &Operator,
    prefix: &str,
    plan: &Plan,
    timeout: Duration,
) -> (Duration, String) {
    let started = std::time::Instant::now();
    delete_all(client, plan).await;
    wait_all(
        client,
        &op.run_id,
        || op.log(),
        timeout,
        "deleted",
        still_there,
    )
    .await;
    let took = started.elapsed();
    assert_census(
        client,
        prefix,
        plan,
        |_| super::census::Count::default(),
        "after deletion",
    )
    .await;
    let (broken, trails) = audit(plan).await;
    assert!(broken.is_empty(), "broken audit chains: {broken:#?}");
    (took, trails)
}
