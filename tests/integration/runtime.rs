//! How the operator runs: leader election between replicas, sharding,
//! metrics of real backend calls, graceful shutdown, JSON logs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use kube::{Client, ResourceExt};
use serde_json::json;
use tenantry::api::Tenant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::cluster::*;
use crate::support::rbac::OPERATOR_NAMESPACE;
use crate::support::readback::{self, Footprint, footprint};
use crate::support::unique_name;

const READY: Duration = Duration::from_secs(180);

/// The audit actions that create a resource of a Schema-mode tenant.
const CREATES: &[&str] = &[
    "kms.key.create",
    "secretsmanager.secret.create",
    "postgres.role.create",
    "postgres.schema.create",
    "s3.bucket.create",
];

fn spec(namespace: &str) -> serde_json::Value {
    json!({"credentials": {"namespace": namespace}, "database": {"isolation": "Schema"}})
}

fn one_of_each() -> Footprint {
    Footprint {
        roles: 1,
        schemas: 1,
        databases: 0,
        buckets: 1,
        live_keys: 1,
        aliases: 1,
        secrets: 1,
        kube_secrets: 1,
        // Classes without `aws.identity`: no IAM role.
        ..Footprint::default()
    }
}

/// Polls `check` every 200ms until it gives a value or `timeout` passes.
async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn lease_holder(client: &Client, name: &str) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    leases
        .get_opt(name)
        .await
        .expect("read Lease")
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty())
}

/// (action, pod) of each of the tenant's audit rows, oldest first.
async fn audit_rows(tenant: &str) -> Vec<(String, String)> {
    let mut db = readback::admin_db().await;
    sqlx::query_as("SELECT action, pod FROM tenantry_audit.events WHERE tenant = $1 ORDER BY seq")
        .bind(tenant)
        .fetch_all(&mut db)
        .await
        .expect("read the audit trail")
}

/// Asserts that each resource of the tenant was created at most once (a
/// process killed between a create and its audit row leaves the next one
/// to adopt it) and that exactly one of each exists.
async fn assert_made_once(client: &Client, tenant: &Tenant, ns: &str) {
    let name = tenant.name_any();
    let rows = audit_rows(&name).await;
    for action in CREATES {
        let n = rows.iter().filter(|(a, _)| a == action).count();
        assert!(n <= 1, "{name}: {action} recorded {n} times: {rows:?}");
    }
    let found = footprint(
        client,
        &name,
        &tenant.uid().expect("uid"),
        ns,
        &format!("{name}-credentials"),
    )
    .await;
    assert_eq!(found, one_of_each(), "{name}: resources");
}

fn send_signal(op: &Operator, signal: &str) {
    let pid = op.pid().expect("operator running");
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

fn leader_env<'a>(lease: &'a str, pod: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("TENANTRY_LEADER_ELECT", "true"),
        ("TENANTRY_LEADER_ELECTION_NAMESPACE", OPERATOR_NAMESPACE),
        ("TENANTRY_LEADER_ELECTION_LEASE_NAME", lease),
        ("POD_NAME", pod),
    ]
}

#[tokio::test]
async fn a_standby_takes_over_within_15s_of_the_leader_being_killed_and_nothing_is_made_twice() {
    let client = kube_client().await;
    install_crd(&client).await;
    let ns = create_namespace(&client, "apps").await;
    let lease = unique_name("lease");
    let (pod_a, pod_b, pod_c) = (unique_name("a"), unique_name("b"), unique_name("c"));
    let mut a = Operator::start(&leader_env(&lease, &pod_a)).await;
    eventually(
        Duration::from_secs(30),
        "the first operator leads",
        || async {
            (lease_holder(&client, &lease).await.as_deref() == Some(pod_a.as_str())).then_some(())
        },
    )
    .await;
    let mut b = Operator::start_for(&a.run_id, &leader_env(&lease, &pod_b)).await;

    let mut tenants = Vec::new();
    for _ in 0..3 {
        let name = unique_name("le");
        tenants.push(create_tenant(&client, &tenant_manifest(&a, &name, spec(&ns))).await);
    }
    // Kill the leader while it works on them.
    wait_for_tenant(&client, &a, &tenants[0].name_any(), READY, "started", |t| {
        t.status.is_some()
    })
    .await;
    a.kill().await;
    let killed = Instant::now();
    eventually(
        Duration::from_secs(20),
        "the standby takes over",
        || async {
            (lease_holder(&client, &lease).await.as_deref() == Some(pod_b.as_str())).then_some(())
        },
    )
    .await;
    let took = killed.elapsed();
    assert!(took <= Duration::from_secs(15), "took over after {took:?}");

    // Tenants created after the kill are provisioned by the new leader alone.
    let mut later = Vec::new();
    for _ in 0..2 {
        let name = unique_name("le");
        later.push(create_tenant(&client, &tenant_manifest(&a, &name, spec(&ns))).await);
    }
    for t in tenants.iter().chain(&later) {
        let ready = wait_for_tenant(&client, &b, &t.name_any(), READY, "Ready", is_ready).await;
        assert_made_once(&client, &ready, &ns).await;
        let rows = audit_rows(&t.name_any()).await;
        assert!(
            rows.iter().all(|(_, pod)| *pod == pod_a || *pod == pod_b),
            "{rows:?}"
        );
    }
    for t in &later {
        let rows = audit_rows(&t.name_any()).await;
        assert!(
            !rows.is_empty() && rows.iter().all(|(_, pod)| *pod == pod_b),
            "{rows:?}"
        );
    }

    // A leader stopped with SIGTERM releases the Lease: its standby takes
    // over at once, well before the Lease (8s) would have expired.
    let c = Operator::start_for(&a.run_id, &leader_env(&lease, &pod_c)).await;
    eventually(Duration::from_secs(30), "the new standby is up", || async {
        strip_ansi(&c.log())
            .contains(&format!("leader={pod_b}"))
            .then_some(())
    })
    .await;
    send_signal(&b, "TERM");
    let stopped = Instant::now();
    assert_eq!(
        b.wait_exit(Duration::from_secs(30)).await,
        Some(0),
        "{}",
        b.log()
    );
    eventually(
        Duration::from_secs(10),
        "the standby takes the released Lease",
        || async {
            (lease_holder(&client, &lease).await.as_deref() == Some(pod_c.as_str())).then_some(())
        },
    )
    .await;
    let took = stopped.elapsed();
    assert!(
        took < Duration::from_secs(6),
        "took the released Lease after {took:?}"
    );
}

#[tokio::test]
async fn two_shards_split_the_tenants_and_each_provisions_only_its_own() {
    use tenantry::shard::Shard;
    let client = kube_client().await;
    install_crd(&client).await;
    let ns = create_namespace(&client, "apps").await;
    let (pod0, pod1) = (unique_name("shard0"), unique_name("shard1"));
    let s0 = Operator::start(&[
        ("TENANTRY_SHARD_COUNT", "2"),
        ("TENANTRY_SHARD_INDEX", "0"),
        ("POD_NAME", &pod0),
    ])
    .await;
    let _s1 = Operator::start_for(
        &s0.run_id,
        &[
            ("TENANTRY_SHARD_COUNT", "2"),
            ("TENANTRY_SHARD_INDEX", "1"),
            ("POD_NAME", &pod1),
        ],
    )
    .await;
    // Four tenants in each shard.
    let mut names: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    while names.values().map(Vec::len).sum::<usize>() < 8 {
        let name = unique_name("shd");
        let list = names.entry(Shard::of(&name, 2)).or_default();
        if list.len() < 4 {
            list.push(name);
        }
    }
    for name in names.values().flatten() {
        create_tenant(&client, &tenant_manifest(&s0, name, spec(&ns))).await;
    }
    for (shard, list) in &names {
        let owner = if *shard == 0 { &pod0 } else { &pod1 };
        for name in list {
            let t = wait_for_tenant(&client, &s0, name, READY, "Ready", is_ready).await;
            assert_made_once(&client, &t, &ns).await;
            let rows = audit_rows(name).await;
            assert!(!rows.is_empty());
            assert!(
                rows.iter().all(|(_, pod)| pod == owner),
                "{name} (shard {shard}) was touched by another shard: {rows:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_shard_index_outside_the_count_is_a_usage_error() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tenantry"))
        .args(["run", "--shard-count", "2", "--shard-index", "2"])
        .env(
            "TENANTRY_DATABASE_URL",
            "postgres://unused@127.0.0.1:1/unused",
        )
        .output()
        .await
        .expect("run tenantry");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--shard-index 2 is out of range"),
        "{stderr}"
    );
}

/// The address the operator logged for /metrics (it binds 127.0.0.1:0).
async fn metrics_addr(op: &Operator) -> SocketAddr {
    eventually(
        Duration::from_secs(30),
        "the operator logs its metrics address",
        || async {
            let log = strip_ansi(&op.log());
            let line = log.lines().rev().find(|l| l.contains("serving /metrics"))?;
            let start = line
                .find("addr=")
                .map(|i| i + 5)
                .or_else(|| line.find("\"addr\":\"").map(|i| i + 8))?;
            let rest = &line[start..];
            let end = rest
                .find(|c: char| c.is_whitespace() || c == '"')
                .unwrap_or(rest.len());
            rest[..end].parse().ok()
        },
    )
    .await
}

/// The text of a log without the terminal colour codes of the text format.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    conn.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("send request");
    let mut response = String::new();
    conn.read_to_string(&mut response)
        .await
        .expect("read response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("HTTP status");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// One scrape: `name{labels} value` lines.
struct Scrape(String);

impl Scrape {
    /// The sum of the samples of `name` whose labels include all of `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples(name, labels).map(|(_, v)| v).sum()
    }

    fn samples<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = (&'a str, f64)> + 'a {
        self.0.lines().filter_map(move |line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            if metric != name || line.starts_with('#') {
                return None;
            }
            labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
                .then(|| (series, value.parse().unwrap_or(0.0)))
        })
    }

    /// Successful backend writes, per series (the isolation probe's rolled
    /// back write attempts excluded).
    fn writes(&self) -> BTreeMap<String, f64> {
        self.samples(
            "tenantry_backend_calls_total",
            &[("kind", "write"), ("outcome", "ok")],
        )
        .filter(|(s, _)| !s.contains("PROBE_DML_ROLLED_BACK"))
        .map(|(s, v)| (s.to_string(), v))
        .collect()
    }
}

async fn scrape(addr: SocketAddr) -> Scrape {
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    Scrape(body)
}

#[tokio::test]
async fn metrics_count_real_backend_calls_and_a_resync_without_drift_writes_nothing() {
    let client = kube_client().await;
    install_crd(&client).await;
    let ns = create_namespace(&client, "apps").await;
    let op = Operator::start(&[("TENANTRY_PROBE_INTERVAL", "2s")]).await;
    let addr = metrics_addr(&op).await;
    assert_eq!(http_get(addr, "/healthz").await.0, 200);
    assert_eq!(http_get(addr, "/readyz").await.0, 200);

    let name = unique_name("met");
    create_tenant(&client, &tenant_manifest(&op, &name, spec(&ns))).await;
    wait_for_tenant(&client, &op, &name, READY, "Ready", is_ready).await;

    let m = eventually(
        Duration::from_secs(30),
        "the store shows the tenant Ready",
        || async {
            let m = scrape(addr).await;
            (m.sum("tenantry_tenants", &[("phase", "Ready")]) == 1.0).then_some(m)
        },
    )
    .await;
    assert_eq!(m.sum("tenantry_tenants", &[]), 1.0, "{}", m.0);
    assert_eq!(m.sum("tenantry_leader", &[]), 1.0);
    for layer in ["database", "storage", "encryption"] {
        assert_eq!(
            m.sum(
                "tenantry_tenant_isolation",
                &[("layer", layer), ("state", "Enforced")]
            ),
            1.0,
            "{layer}"
        );
        assert_eq!(m.sum("tenantry_tenant_isolation", &[("layer", layer)]), 1.0);
    }
    let call = |backend, operation, kind| {
        m.sum(
            "tenantry_backend_calls_total",
            &[
                ("backend", backend),
                ("operation", operation),
                ("kind", kind),
                ("outcome", "ok"),
            ],
        )
    };
    assert_eq!(call("kms", "CreateKey", "write"), 1.0, "{}", m.0);
    assert_eq!(call("s3", "CreateBucket", "write"), 1.0);
    assert_eq!(call("secretsmanager", "CreateSecret", "write"), 1.0);
    assert_eq!(call("kubernetes", "ApplySecret", "write"), 1.0);
    assert!(call("kms", "DescribeKey", "read") >= 1.0);
    assert!(call("postgres", "DDL", "write") >= 3.0, "{}", m.0);
    assert!(call("postgres", "SELECT", "read") >= 1.0);
    assert!(m.sum("tenantry_reconciles_total", &[]) >= 1.0);
    assert_eq!(
        m.sum(
            "tenantry_provisioning_outcomes_total",
            &[("outcome", "provisioned")]
        ),
        1.0
    );
    assert!(
        m.sum(
            "tenantry_backend_call_duration_seconds_count",
            &[("backend", "postgres")]
        ) >= 1.0
    );
    for line in m.0.lines().filter(|l| l.starts_with("tenantry_")) {
        assert!(!line.contains(&name), "a metric names the tenant: {line}");
    }

    // Resyncs (every ~2s here) probe the isolation again and find nothing
    // to repair: no backend write may happen.
    let before = scrape(addr).await;
    let reconciles = before.sum("tenantry_reconciles_total", &[]);
    let after = eventually(Duration::from_secs(60), "two resyncs", || async {
        let m = scrape(addr).await;
        (m.sum("tenantry_reconciles_total", &[]) >= reconciles + 2.0).then_some(m)
    })
    .await;
    assert_eq!(before.writes(), after.writes());
    assert!(
        after.sum(
            "tenantry_backend_calls_total",
            &[("backend", "kms"), ("kind", "read")]
        ) > before.sum(
            "tenantry_backend_calls_total",
            &[("backend", "kms"), ("kind", "read")]
        ),
        "the resyncs probed"
    );
    assert_eq!(after.sum("tenantry_drift_repairs_total", &[]), 0.0);
}

/// When the probes of the Ready tenants come due faster than they can run,
/// they wait for a probe slot and never take the reconcile slots new tenants
/// need; they still all run.
#[tokio::test]
async fn probes_of_ready_tenants_never_hold_up_onboarding() {
    let client = kube_client().await;
    install_crd(&client).await;
    let ns = create_namespace(&client, "apps").await;
    // Two reconcile slots, one of them for probes, and a probe due every
    // second: more than one slot can measure for four Ready tenants.
    let op = Operator::start(&[
        ("TENANTRY_CONCURRENCY", "2"),
        ("TENANTRY_PROBE_INTERVAL", "1s"),
    ])
    .await;
    let addr = metrics_addr(&op).await;
    let first: Vec<String> = (0..4).map(|_| unique_name("prb")).collect();
    for name in &first {
        create_tenant(&client, &tenant_manifest(&op, name, spec(&ns))).await;
    }
    for name in &first {
        wait_for_tenant(&client, &op, name, READY, "Ready", is_ready).await;
    }
    eventually(
        Duration::from_secs(60),
        "a due probe found the probe slot busy",
        || async {
            let m = scrape(addr).await;
            (m.sum("tenantry_probes_deferred_total", &[]) >= 1.0).then_some(())
        },
    )
    .await;

    // Onboarding goes on while the probes contend for their slot.
    let later: Vec<String> = (0..3).map(|_| unique_name("prb")).collect();
    for name in &later {
        create_tenant(&client, &tenant_manifest(&op, name, spec(&ns))).await;
    }
    for name in &later {
        wait_for_tenant(&client, &op, name, READY, "Ready", is_ready).await;
    }

    // And every Ready tenant is still measured, each again after that.
    let api: Api<Tenant> = Api::all(client.clone());
    let verified_at = |t: &Tenant| {
        t.status
            .as_ref()
            .and_then(|s| s.isolation.as_ref())
            .and_then(|i| i.verified_at)
    };
    for name in &first {
        let before = verified_at(&api.get(name).await.expect("get tenant"));
        wait_for_tenant(&client, &op, name, READY, "measured again", |t| {
            is_ready(t) && verified_at(t) > before
        })
        .await;
    }
    let m = scrape(addr).await;
    assert!(
        m.sum("tenantry_probe_round_seconds", &[]) > 0.0,
        "the probe round is shown: {}",
        m.0
    );
}

#[tokio::test]
async fn sigterm_during_a_step_lets_it_finish_exits_0_and_a_restart_makes_nothing_twice() {
    let client = kube_client().await;
    install_crd(&client).await;
    let ns = create_namespace(&client, "apps").await;
    let mut op = Operator::start(&[("FAILPOINTS", "ensure-before-s3-bucket=sleep(4000)")]).await;
    let name = unique_name("term");
    create_tenant(&client, &tenant_manifest(&op, &name, spec(&ns))).await;
    wait_for_tenant(&client, &op, &name, READY, "in the s3-bucket step", |t| {
        t.status
            .as_ref()
            .and_then(|s| s.provisioning.as_ref())
            .and_then(|j| j.in_progress.as_deref())
            == Some("s3-bucket")
    })
    .await;
    send_signal(&op, "TERM");
    let code = op.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(code, Some(0), "{}", tail(&op.log(), 40));
    assert!(op.log().contains("shutting down"));

    // The step that was running finished and was journaled.
    let api: Api<Tenant> = Api::all(client.clone());
    let t = api.get(&name).await.expect("read Tenant");
    let journal = t
        .status
        .as_ref()
        .and_then(|s| s.provisioning.clone())
        .expect("journal");
    assert_eq!(journal.in_progress, None, "{journal:?}");
    assert!(
        journal.steps_done.iter().any(|s| s == "s3-bucket"),
        "{journal:?}"
    );

    op.restart_with(&[]).await;
    let t = wait_for_tenant(&client, &op, &name, READY, "Ready", is_ready).await;
    assert_made_once(&client, &t, &ns).await;
    let rows = audit_rows(&name).await;
    for action in CREATES {
        assert_eq!(
            rows.iter().filter(|(a, _)| a == action).count(),
            1,
            "{action}: {rows:?}"
        );
    }
}

#[tokio::test]
async fn json_logs_parse_line_by_line_and_never_hold_the_password() {
    let client = kube_client().await;
    install_crd(&client).await;
    let ns = create_namespace(&client, "apps").await;
    let op = Operator::start(&[("TENANTRY_LOG_FORMAT", "json")]).await;
    let name = unique_name("log");
    create_tenant(&client, &tenant_manifest(&op, &name, spec(&ns))).await;
    wait_for_tenant(&client, &op, &name, READY, "Ready", is_ready).await;
    let secret = readback::kube_secret_data(&client, &ns, &format!("{name}-credentials")).await;
    let password = secret.get("password").expect("password in the Secret");
    assert!(password.len() >= 16);
    let log = op.log();
    let mut lines = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let parsed: Result<serde_json::Value, _> = serde_json::from_str(line);
        assert!(
            parsed.is_ok_and(|v| v.is_object()),
            "not a JSON object: {line}"
        );
        assert!(
            !line.contains(password.as_str()),
            "the password is in the log"
        );
        lines += 1;
    }
    assert!(lines > 5, "{log}");
    assert!(log.contains(&name), "the log says nothing about the tenant");
}

/// Events in a namespace the API server refuses them in (here: one that
/// does not exist) are never published: the operator says so once, at warn,
/// naming the namespace, instead of at debug for every Event.
#[tokio::test]
async fn refused_events_are_reported_once_at_warn_naming_the_namespace() {
    let client = kube_client().await;
    install_crd(&client).await;
    let ns = create_namespace(&client, "ev").await;
    let nowhere = unique_name("no-events");
    let op = Operator::start(&[("TENANTRY_EVENT_NAMESPACE", nowhere.as_str())]).await;
    let names = [unique_name("ev"), unique_name("ev")];
    for name in &names {
        let spec = json!({"credentials": {"namespace": ns}});
        create_tenant(&client, &tenant_manifest(&op, name, spec)).await;
    }
    for name in &names {
        wait_for_tenant(&client, &op, name, READY, "Ready", is_ready).await;
    }
    let log = op.log();
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("refuses tenantry's Events"))
        .collect();
    assert_eq!(warned.len(), 1, "{warned:#?}");
    assert!(warned[0].contains(&nowhere), "{}", warned[0]);
    // Every tenant's onboarding published (and was refused) more than one.
    assert!(
        log.matches("could not publish event").count() >= 1,
        "no second refusal was logged at debug"
    );
}
