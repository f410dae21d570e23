//! The provisioning benchmark (`hack/bench.sh`; issue 7). Not a test:
//! `hack/bench.sh` builds it with the release operator and runs it; `cargo
//! test` only compiles it. A binary rather than a `[[bench]]` target on
//! purpose: a bench links the dev-dependencies, whose features (tokio's
//! `test-util`) would rebuild every dependency of the release build.
//!
//! Against the local environment (`source .localenv/env`), for each isolation
//! mode and tenant count N, at the same concurrency C:
//! - **operator**: the release binary manages N Tenants applied at once; the
//!   harness times create -> Ready (seen by a watch), reads the operator's CPU
//!   time and peak RSS from /proc and its backend calls from /metrics, then
//!   watches a steady state of two probe intervals;
//! - **engine**: the same steps through `tenantry::provision::Engine` with an
//!   in-memory journal, no Kubernetes in the loop but the Secret step's call;
//! - **engine+probe**: the same, followed by the one isolation measurement
//!   the operator makes before it calls a tenant Ready;
//! - **bare**: the minimum calls a plain client makes for the same resources.
//!
//! Then a scale stage: `--scale` Tenants in the API server (`--scale-real` of
//! them provisioned for real, the rest parked on a class that does not exist,
//! so they cost the operator a store entry and a reconcile but no backend
//! call), the operator's RSS, and a restart timed until every tenant has been
//! reconciled once, with the backend writes that resync made.
//!
//! Everything talks to 127.0.0.1 only; no secret is ever printed.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use secrecy::SecretString;
use tenantry::api::{Tenant, TenantPhase, TenantSpec};
use tenantry::backends::{TenantRef, Unrecorded};
use tenantry::config::{BackendSettings, Backends};
use tenantry::naming::TenantNames;
use tenantry::provision::{
    Access, Engine, JournalStore, Lifecycle, Outcome, RetryPolicy, StepError, new_journal,
};
use tenantry::resources::{TenantContext, tenant_resources};

const LABEL: &str = "tenantry.dev/bench";

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Clone, Debug)]
struct Args {
    tenants: Vec<usize>,
    modes: Vec<String>,
    concurrency: usize,
    probe_interval: Duration,
    steady: Option<Duration>,
    scale: usize,
    scale_real: usize,
    database_max: usize,
    baselines: Vec<String>,
    out: Option<PathBuf>,
    command: String,
}

fn parse_args() -> Res<Args> {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let mut a = Args {
        tenants: vec![1, 100, 1000],
        modes: vec!["schema".into(), "database".into()],
        concurrency: 16,
        probe_interval: Duration::from_secs(20),
        steady: None,
        scale: 10_000,
        scale_real: 1_000,
        // Each database costs PostgreSQL ~7.5 MB of disk, four times per N.
        database_max: 100,
        baselines: vec!["engine".into(), "engine-probe".into(), "bare".into()],
        out: None,
        command: std::env::var("TENANTRY_BENCH_COMMAND")
            .unwrap_or_else(|_| format!("hack/bench.sh {}", raw.join(" "))),
    };
    let mut it = raw.iter();
    while let Some(flag) = it.next() {
        let mut val = || it.next().cloned().ok_or(format!("{flag} needs a value"));
        let list = |v: String| -> Vec<String> {
            v.split(',')
                .filter(|s| !s.is_empty() && *s != "none")
                .map(str::to_string)
                .collect()
        };
        match flag.as_str() {
            "--tenants" => {
                a.tenants = list(val()?)
                    .iter()
                    .map(|s| s.parse())
                    .collect::<Result<_, _>>()?
            }
            "--modes" => a.modes = list(val()?),
            "--concurrency" => a.concurrency = val()?.parse()?,
            "--probe-interval" => a.probe_interval = humantime::parse_duration(&val()?)?,
            "--steady" => a.steady = Some(humantime::parse_duration(&val()?)?),
            "--scale" => a.scale = val()?.parse()?,
            "--scale-real" => a.scale_real = val()?.parse()?,
            "--database-max" => a.database_max = val()?.parse()?,
            "--baselines" => a.baselines = list(val()?),
            "--out" => a.out = Some(PathBuf::from(val()?)),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    for m in &a.modes {
        if m != "schema" && m != "database" {
            return Err(format!("unknown mode {m}").into());
        }
    }
    Ok(a)
}

fn env(name: &str) -> Res<String> {
    std::env::var(name).map_err(|_| format!("{name} is not set: source .localenv/env").into())
}

fn short_id() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..5)
        .map(|_| (b'a' + rng.random_range(0..26u8)) as char)
        .collect()
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[i.clamp(1, sorted.len()) - 1]
}

// ---------------------------------------------------------------- operator --

struct Operator {
    child: tokio::process::Child,
    pid: u32,
    port: u16,
}

fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of process `pid` ("self": this one), in seconds.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / clk_tck()
}

impl Operator {
    async fn start(selector: &str, port: u16, args: &Args, log: &Path) -> Res<Self> {
        Self::start_bin(None, selector, port, args, log).await
    }

    async fn start_bin(
        bin: Option<&str>,
        selector: &str,
        port: u16,
        args: &Args,
        log: &Path,
    ) -> Res<Self> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        // TENANTRY_BENCH_OPERATOR: another build to compare (e.g. a saved
        // copy of the release binary before a change).
        let bin = bin.map(str::to_string).unwrap_or_else(|| {
            std::env::var("TENANTRY_BENCH_OPERATOR").unwrap_or_else(|_| sibling_operator())
        });
        let child = tokio::process::Command::new(bin)
            .arg("run")
            .env("TENANTRY_TENANT_SELECTOR", selector)
            .env("TENANTRY_METRICS_ADDR", format!("127.0.0.1:{port}"))
            .env("TENANTRY_EVENT_NAMESPACE", "kube-system")
            .env("TENANTRY_LOG", "warn")
            .env("TENANTRY_CONCURRENCY", args.concurrency.to_string())
            .env(
                "TENANTRY_PROBE_INTERVAL",
                humantime::format_duration(args.probe_interval).to_string(),
            )
            .env_remove("FAILPOINTS")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().ok_or("operator exited at once")?;
        let mut op = Self { child, pid, port };
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            if let Ok(Some(status)) = op.child.try_wait() {
                return Err(format!("operator exited: {status}").into());
            }
            if http_get(port, "/readyz")
                .await
                .is_ok_and(|(code, _)| code == 200)
            {
                return Ok(op);
            }
            if Instant::now() > deadline {
                return Err("operator not ready within 300 s".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// utime + stime in seconds.
    fn cpu(&self) -> f64 {
        cpu_seconds(&self.pid.to_string())
    }

    /// (VmHWM, VmRSS) in MiB.
    fn rss(&self) -> (f64, f64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        let kib = |key: &str| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (kib("VmHWM:") / 1024.0, kib("VmRSS:") / 1024.0)
    }

    async fn metrics(&self) -> Res<Metrics> {
        let (code, body) = http_get(self.port, "/metrics").await?;
        if code != 200 {
            return Err(format!("/metrics answered {code}").into());
        }
        Ok(Metrics::parse(&body))
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// The `tenantry` binary built next to this one.
fn sibling_operator() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("tenantry")))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "tenantry".to_string())
}

async fn http_get(port: u16, path: &str) -> Res<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let io = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(10), io).await??;
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// The counters the benchmark reads from /metrics.
#[derive(Clone, Debug, Default)]
struct Metrics {
    /// (backend, operation, kind, outcome) -> count
    calls: BTreeMap<(String, String, String, String), f64>,
    reconciles: f64,
}

impl Metrics {
    fn parse(text: &str) -> Self {
        let mut m = Self::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("tenantry_backend_calls_total{") {
                let Some((labels, value)) = rest.rsplit_once("} ") else {
                    continue;
                };
                let mut map = HashMap::new();
                for pair in labels.split(',') {
                    if let Some((k, v)) = pair.split_once('=') {
                        map.insert(k.trim(), v.trim_matches('"').to_string());
                    }
                }
                let get = |k: &str| map.get(k).cloned().unwrap_or_default();
                let key = (
                    get("backend"),
                    get("operation"),
                    get("kind"),
                    get("outcome"),
                );
                *m.calls.entry(key).or_default() += value.trim().parse::<f64>().unwrap_or(0.0);
            } else if let Some(v) = line.strip_prefix("tenantry_reconciles_total ") {
                m.reconciles = v.trim().parse().unwrap_or(0.0);
            }
        }
        m
    }

    fn minus(&self, before: &Metrics) -> Metrics {
        let mut out = self.clone();
        for (k, v) in &before.calls {
            *out.calls.entry(k.clone()).or_default() -= v;
        }
        out.reconciles -= before.reconciles;
        out
    }

    /// backend -> (reads, writes), writes without the probe's rolled-back DML.
    fn by_backend(&self) -> BTreeMap<String, (f64, f64)> {
        let mut out: BTreeMap<String, (f64, f64)> = BTreeMap::new();
        for ((backend, op, kind, _), v) in &self.calls {
            let e = out.entry(backend.clone()).or_default();
            if op == "PROBE_DML_ROLLED_BACK" {
                continue;
            }
            if kind == "write" {
                e.1 += v;
            } else {
                e.0 += v;
            }
        }
        out
    }

    fn totals(&self) -> (f64, f64) {
        self.by_backend()
            .values()
            .fold((0.0, 0.0), |(r, w), (r2, w2)| (r + r2, w + w2))
    }

    /// Writes that succeeded (a resync without drift must make none).
    fn ok_writes(&self) -> Vec<String> {
        self.calls
            .iter()
            .filter(|((_, op, kind, outcome), v)| {
                kind == "write" && outcome == "ok" && op != "PROBE_DML_ROLLED_BACK" && **v > 0.0
            })
            .map(|((b, op, _, _), v)| format!("{b}/{op}={v}"))
            .collect()
    }
}

/// What a watch of the run's Tenants saw.
#[derive(Default)]
struct Seen {
    ready: HashMap<String, Instant>,
    failed: HashMap<String, String>,
    /// Every new `status.isolation.verifiedAt` value, per tenant.
    verified: HashMap<String, tenantry::api::Timestamp>,
    probes: Vec<chrono::DateTime<chrono::Utc>>,
    events: u64,
}

fn is_ready(t: &Tenant) -> bool {
    t.status.as_ref().is_some_and(|s| {
        s.observed_generation == t.metadata.generation
            && s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

fn watch(client: Client, selector: String) -> (Arc<Mutex<Seen>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = seen.clone();
    let api: Api<Tenant> = Api::all(client);
    let task = tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default().labels(&selector));
        let mut stream = std::pin::pin!(stream);
        while let Ok(Some(ev)) = stream.try_next().await {
            let t = match ev {
                watcher::Event::Apply(t) | watcher::Event::InitApply(t) => t,
                _ => continue,
            };
            let now = Instant::now();
            let mut s = s.lock().expect("lock");
            s.events += 1;
            let name = t.name_any();
            if is_ready(&t) {
                s.ready.entry(name.clone()).or_insert(now);
            }
            let status = t.status.as_ref();
            if status.and_then(|s| s.phase) == Some(TenantPhase::Failed) {
                let reason = status
                    .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
                    .map(|c| c.reason.clone())
                    .unwrap_or_default();
                s.failed.insert(name.clone(), reason);
            }
            if let Some(v) = status
                .and_then(|s| s.isolation.as_ref())
                .and_then(|i| i.verified_at)
                && s.verified.get(&name) != Some(&v)
            {
                s.probes.push(v.0);
                s.verified.insert(name, v);
            }
        }
    });
    (seen, task)
}

fn tenant(name: &str, run: &str, namespace: &str, mode: &str, class: Option<&str>) -> Tenant {
    let isolation = if mode == "database" {
        "Database"
    } else {
        "Schema"
    };
    let mut spec = serde_json::json!({
        "database": {"isolation": isolation},
        "credentials": {"namespace": namespace},
        "deletion": {"policy": "Retain"},
    });
    if let Some(class) = class {
        spec["class"] = class.into();
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "tenantry.dev/v1alpha1",
        "kind": "Tenant",
        "metadata": {"name": name, "labels": {LABEL: run}},
        "spec": spec,
    }))
    .expect("valid Tenant")
}

async fn create_namespace(client: &Client, name: &str) -> Res<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        ..Default::default()
    };
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Creates the Tenants 32 at a time; returns when each create was sent.
async fn create_tenants(client: &Client, tenants: Vec<Tenant>) -> Res<HashMap<String, Instant>> {
    let api: Api<Tenant> = Api::all(client.clone());
    let sent: Vec<(String, Instant)> = futures::stream::iter(tenants)
        .map(|t| {
            let api = api.clone();
            async move {
                let at = Instant::now();
                let mut tries = 0;
                loop {
                    tries += 1;
                    match api.create(&PostParams::default(), &t).await {
                        Ok(_) => return Ok::<_, kube::Error>((t.name_any(), at)),
                        Err(e) if tries < 5 => {
                            eprintln!("bench: create {}: {e}; retrying", t.name_any());
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        })
        .buffer_unordered(32)
        .try_collect()
        .await?;
    Ok(sent.into_iter().collect())
}

/// Waits until `want` of the watched tenants are Ready (and `parked` more
/// Failed), or the deadline.
async fn wait_settled(
    seen: &Arc<Mutex<Seen>>,
    want: usize,
    parked: usize,
    deadline: Instant,
) -> Res<()> {
    let mut last_print = Instant::now();
    loop {
        let (ready, failed) = {
            let s = seen.lock().expect("lock");
            (s.ready.len(), s.failed.len())
        };
        if ready >= want && failed >= parked {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "only {ready}/{want} Ready and {failed}/{parked} parked before the deadline"
            )
            .into());
        }
        if last_print.elapsed() > Duration::from_secs(30) {
            eprintln!(
                "bench:   {ready}/{want} Ready, {failed} failed/parked (load {})",
                load()
            );
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[derive(Clone, Debug, Default)]
struct OperatorResult {
    total_s: f64,
    p50: f64,
    p95: f64,
    p99: f64,
    cpu_s: f64,
    hwm_mib: f64,
    failed: usize,
    calls: Metrics,
    steady: Option<Steady>,
}

#[derive(Clone, Debug, Default)]
struct Steady {
    window_s: f64,
    writes: Vec<String>,
    reads_per_tenant_hour: f64,
    reads_per_probe: f64,
    probes: usize,
    probes_expected: f64,
    max_per_s: usize,
    mean_per_s: f64,
    reconciles: f64,
    cpu_s: f64,
    hwm_mib: f64,
    watch_events: u64,
}

async fn run_operator(
    client: &Client,
    args: &Args,
    mode: &str,
    n: usize,
    port: u16,
    logs: &Path,
) -> Res<OperatorResult> {
    let run = format!("o{}", short_id());
    let namespace = format!("bench-{run}");
    create_namespace(client, &namespace).await?;
    let selector = format!("{LABEL}={run}");
    let op = Operator::start(&selector, port, args, &logs.join(format!("{run}.log"))).await?;
    let (seen, watch_task) = watch(client.clone(), selector.clone());
    let before = op.metrics().await?;
    let cpu0 = op.cpu();
    let tenants: Vec<Tenant> = (0..n)
        .map(|i| tenant(&format!("{run}-{i}"), &run, &namespace, mode, None))
        .collect();
    let t0 = Instant::now();
    let sent = create_tenants(client, tenants).await?;
    let timeout = Duration::from_secs(120) + Duration::from_millis(1500) * n as u32;
    let settled = wait_settled(&seen, n, 0, t0 + timeout).await;
    if let Err(e) = &settled {
        eprintln!("bench: operator {mode} N={n}: {e}");
    }
    let (mut lat, last) = {
        let s = seen.lock().expect("lock");
        let lat: Vec<f64> = s
            .ready
            .iter()
            .filter_map(|(name, at)| sent.get(name).map(|c| (*at - *c).as_secs_f64()))
            .collect();
        let last = s.ready.values().max().copied().unwrap_or(t0);
        (lat, last)
    };
    lat.sort_by(f64::total_cmp);
    let after = op.metrics().await?;
    let mut result = OperatorResult {
        total_s: (last - t0).as_secs_f64(),
        p50: pct(&lat, 50.0),
        p95: pct(&lat, 95.0),
        p99: pct(&lat, 99.0),
        cpu_s: op.cpu() - cpu0,
        hwm_mib: op.rss().0,
        failed: n - lat.len(),
        calls: after.minus(&before),
        steady: None,
    };
    if settled.is_ok() {
        let window = args
            .steady
            .unwrap_or_else(|| args.probe_interval.mul_f64(2.25));
        eprintln!(
            "bench:   all Ready in {:.1} s; steady state for {:.0} s",
            result.total_s,
            window.as_secs_f64()
        );
        let probes0 = seen.lock().expect("lock").probes.len();
        let events0 = seen.lock().expect("lock").events;
        let wall0 = chrono::Utc::now();
        let m0 = op.metrics().await?;
        let c0 = op.cpu();
        let s0 = Instant::now();
        tokio::time::sleep(window).await;
        let m1 = op.metrics().await?;
        let elapsed = s0.elapsed().as_secs_f64();
        let d = m1.minus(&m0);
        let (reads, _) = d.totals();
        let s = seen.lock().expect("lock");
        let window_probes: Vec<_> = s.probes[probes0..]
            .iter()
            .filter(|at| **at >= wall0 - chrono::Duration::seconds(1))
            .collect();
        let mut per_second: BTreeMap<i64, usize> = BTreeMap::new();
        for at in &window_probes {
            *per_second.entry(at.timestamp()).or_default() += 1;
        }
        result.steady = Some(Steady {
            window_s: elapsed,
            writes: d.ok_writes(),
            reads_per_tenant_hour: reads / n as f64 / elapsed * 3600.0,
            reads_per_probe: if window_probes.is_empty() {
                f64::NAN
            } else {
                reads / window_probes.len() as f64
            },
            probes: window_probes.len(),
            probes_expected: n as f64 * elapsed / args.probe_interval.as_secs_f64(),
            max_per_s: per_second.values().copied().max().unwrap_or(0),
            mean_per_s: window_probes.len() as f64 / elapsed,
            reconciles: d.reconciles,
            cpu_s: op.cpu() - c0,
            hwm_mib: op.rss().0,
            watch_events: s.events - events0,
        });
    }
    watch_task.abort();
    op.stop().await;
    Ok(result)
}

// ------------------------------------------------------------- baselines --

struct MemoryJournal {
    saves: usize,
    last: Option<tenantry::api::ProvisioningJournal>,
}

#[async_trait::async_trait]
impl JournalStore for MemoryJournal {
    async fn save(
        &mut self,
        journal: &tenantry::api::ProvisioningJournal,
    ) -> Result<(), StepError> {
        // Serialised, as the operator serialises the status it writes.
        let _ = serde_json::to_vec(journal);
        self.saves += 1;
        self.last = Some(journal.clone());
        Ok(())
    }
}

#[derive(Clone, Debug, Default)]
struct BaselineResult {
    total_s: f64,
    p50: f64,
    p99: f64,
    /// CPU of this process while it drove the baseline, per tenant (it
    /// does nothing else meanwhile).
    cpu_ms_per_tenant: f64,
    failed: usize,
    first_error: Option<String>,
}

fn summarise(start: Instant, cpu0: f64, done: Vec<Result<Instant, String>>) -> BaselineResult {
    let cpu_ms_per_tenant = (cpu_seconds("self") - cpu0) * 1000.0 / done.len().max(1) as f64;
    let mut lat: Vec<f64> = done
        .iter()
        .filter_map(|r| r.as_ref().ok().map(|at| (*at - start).as_secs_f64()))
        .collect();
    lat.sort_by(f64::total_cmp);
    BaselineResult {
        total_s: lat.last().copied().unwrap_or(f64::NAN),
        p50: pct(&lat, 50.0),
        p99: pct(&lat, 99.0),
        cpu_ms_per_tenant,
        failed: done.iter().filter(|r| r.is_err()).count(),
        first_error: done.into_iter().find_map(|r| r.err()),
    }
}

async fn run_engine(
    client: &Client,
    backends: &Backends,
    args: &Args,
    mode: &str,
    n: usize,
    probe: bool,
) -> Res<BaselineResult> {
    let run = format!("e{}", short_id());
    let namespace = format!("bench-{run}");
    create_namespace(client, &namespace).await?;
    let prefix = env("TENANTRY_BUCKET_PREFIX")?;
    let steps = Arc::new(tenant_resources());
    // The operator's default retry policy.
    let retry = RetryPolicy {
        attempts: 6,
        base_delay: Duration::from_millis(200),
        max_delay: Duration::from_secs(10),
    };
    let start = Instant::now();
    let cpu0 = cpu_seconds("self");
    let done: Vec<Result<Instant, String>> = futures::stream::iter(0..n)
        .map(|i| {
            let steps = steps.clone();
            let backends = backends.clone();
            let name = format!("{run}-{i}");
            let t = tenant(&name, &run, &namespace, mode, None);
            let prefix = prefix.clone();
            async move {
                let names = TenantNames::new(&name, &prefix)?;
                let spec: TenantSpec = t.spec.clone();
                let tenant = TenantRef {
                    name: name.clone(),
                    uid: format!("bench-{name}-{}", short_id()),
                    display_name: None,
                };
                // The baseline measures the engine alone: its changes go to
                // no audit trail, and it says so.
                let mut ctx =
                    TenantContext::new(tenant, names, spec, backends, Arc::new(Unrecorded));
                let engine = Engine::new(&steps, retry);
                let mut journal = new_journal();
                let mut store = MemoryJournal {
                    saves: 0,
                    last: None,
                };
                let outcome = engine
                    .run(
                        &mut ctx,
                        &mut journal,
                        &mut store,
                        Lifecycle::Provision(Access::Granted),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                if outcome != Outcome::Provisioned {
                    return Err(format!("{outcome:?}"));
                }
                if probe {
                    let m = tenantry::controller::attestation::measure(&ctx).await;
                    if !m.all_enforced() {
                        return Err(format!("not enforced: {}", m.failures()));
                    }
                }
                Ok(Instant::now())
            }
        })
        .buffer_unordered(args.concurrency)
        .collect()
        .await;
    Ok(summarise(start, cpu0, done))
}

struct Bare {
    kms: aws_sdk_kms::Client,
    sm: aws_sdk_secretsmanager::Client,
    s3: aws_sdk_s3::Client,
    pg: sqlx::PgPool,
    kube: Client,
}

fn random_password() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..32)
        .map(|_| (b'a' + rng.random_range(0..26u8)) as char)
        .collect()
}

impl Bare {
    async fn tenant(&self, name: &str, namespace: &str, mode: &str) -> Res<()> {
        let key = self
            .kms
            .create_key()
            .description(format!("bench {name}"))
            .send()
            .await?
            .key_metadata
            .ok_or("no key metadata")?;
        let key_id = key.key_id().to_string();
        let key_arn = key.arn().unwrap_or_default().to_string();
        self.kms
            .create_alias()
            .alias_name(format!("alias/bench/{name}"))
            .target_key_id(&key_id)
            .send()
            .await?;
        self.kms
            .enable_key_rotation()
            .key_id(&key_id)
            .send()
            .await?;
        let password = random_password();
        let role = format!("b_{}", name.replace('-', "_"));
        self.sm
            .create_secret()
            .name(format!("bench/{name}/database"))
            .kms_key_id(&key_arn)
            .secret_string(serde_json::json!({"username": role, "password": password}).to_string())
            .send()
            .await?;
        {
            let mut conn = self.pg.acquire().await?;
            let stmts = [
                format!(
                    "CREATE ROLE \"{role}\" LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE PASSWORD '{password}'"
                ),
                format!("GRANT \"{role}\" TO CURRENT_USER"),
            ];
            for s in &stmts {
                sqlx::raw_sql(sqlx::AssertSqlSafe(s.clone()))
                    .execute(&mut *conn)
                    .await?;
            }
            let objects = if mode == "database" {
                vec![
                    format!("CREATE DATABASE \"{role}\" OWNER \"{role}\""),
                    format!("REVOKE ALL ON DATABASE \"{role}\" FROM PUBLIC"),
                ]
            } else {
                vec![
                    format!("CREATE SCHEMA \"{role}\" AUTHORIZATION \"{role}\""),
                    format!("REVOKE ALL ON SCHEMA \"{role}\" FROM PUBLIC"),
                ]
            };
            for s in objects {
                sqlx::raw_sql(sqlx::AssertSqlSafe(s))
                    .execute(&mut *conn)
                    .await?;
            }
        }
        let bucket = format!("{}-{name}", env("TENANTRY_BUCKET_PREFIX")?);
        self.s3.create_bucket().bucket(&bucket).send().await?;
        use aws_sdk_s3::types::*;
        self.s3
            .put_bucket_encryption()
            .bucket(&bucket)
            .server_side_encryption_configuration(
                ServerSideEncryptionConfiguration::builder()
                    .rules(
                        ServerSideEncryptionRule::builder()
                            .apply_server_side_encryption_by_default(
                                ServerSideEncryptionByDefault::builder()
                                    .sse_algorithm(ServerSideEncryption::AwsKms)
                                    .kms_master_key_id(&key_arn)
                                    .build()?,
                            )
                            .bucket_key_enabled(true)
                            .build(),
                    )
                    .build()?,
            )
            .send()
            .await?;
        self.s3
            .put_public_access_block()
            .bucket(&bucket)
            .public_access_block_configuration(
                PublicAccessBlockConfiguration::builder()
                    .block_public_acls(true)
                    .ignore_public_acls(true)
                    .block_public_policy(true)
                    .restrict_public_buckets(true)
                    .build(),
            )
            .send()
            .await?;
        let policy = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": "*",
                "Action": "s3:*",
                "Resource": [format!("arn:aws:s3:::{bucket}"), format!("arn:aws:s3:::{bucket}/*")],
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            }],
        });
        self.s3
            .put_bucket_policy()
            .bucket(&bucket)
            .policy(policy.to_string())
            .send()
            .await?;
        self.s3
            .put_bucket_versioning()
            .bucket(&bucket)
            .versioning_configuration(
                VersioningConfiguration::builder()
                    .status(BucketVersioningStatus::Enabled)
                    .build(),
            )
            .send()
            .await?;
        let secrets: Api<Secret> = Api::namespaced(self.kube.clone(), namespace);
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(format!("{name}-credentials")),
                ..Default::default()
            },
            string_data: Some(BTreeMap::from([
                ("username".to_string(), role.clone()),
                ("password".to_string(), password),
            ])),
            ..Default::default()
        };
        secrets.create(&PostParams::default(), &secret).await?;
        Ok(())
    }
}

async fn run_bare(bare: &Arc<Bare>, args: &Args, mode: &str, n: usize) -> Res<BaselineResult> {
    let run = format!("r{}", short_id());
    let namespace = format!("bench-{run}");
    create_namespace(&bare.kube, &namespace).await?;
    let start = Instant::now();
    let cpu0 = cpu_seconds("self");
    let done: Vec<Result<Instant, String>> = futures::stream::iter(0..n)
        .map(|i| {
            let bare = bare.clone();
            let name = format!("{run}-{i}");
            let namespace = namespace.clone();
            async move {
                bare.tenant(&name, &namespace, mode)
                    .await
                    .map(|()| Instant::now())
                    .map_err(|e| format!("{name}: {e}"))
            }
        })
        .buffer_unordered(args.concurrency)
        .collect()
        .await;
    Ok(summarise(start, cpu0, done))
}

// ----------------------------------------------------------------- scale --

/// A restart of the operator over settled tenants, timed until every
/// tenant has been reconciled once.
#[derive(Debug, Default)]
struct Restart {
    binary: String,
    ready_s: f64,
    resync_s: f64,
    reconciles: f64,
    writes: Vec<String>,
    reads: f64,
    cpu_s: f64,
    hwm_mib: f64,
    probes: usize,
    max_probes_per_s: usize,
    error: Option<String>,
}

async fn restart(
    bin: Option<&str>,
    seen: &Arc<Mutex<Seen>>,
    total: usize,
    selector: &str,
    port: u16,
    args: &Args,
    log: &Path,
) -> Res<Restart> {
    let mut r = Restart {
        binary: bin.unwrap_or("this build").to_string(),
        ..Default::default()
    };
    let probes0 = seen.lock().expect("lock").probes.len();
    let wall0 = chrono::Utc::now();
    let t1 = Instant::now();
    let op = Operator::start_bin(bin, selector, port, args, log).await?;
    r.ready_s = t1.elapsed().as_secs_f64();
    let c0 = op.cpu();
    let deadline = t1 + Duration::from_secs(1800);
    loop {
        let m = op.metrics().await?;
        if m.reconciles >= total as f64 {
            break;
        }
        if Instant::now() > deadline {
            r.error = Some(format!(
                "resync: only {} reconciles within 1800 s",
                m.reconciles
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    r.resync_s = t1.elapsed().as_secs_f64();
    r.cpu_s = op.cpu() - c0;
    // Let reconciles in flight finish before reading the counters.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let m = op.metrics().await?;
    r.reconciles = m.reconciles;
    r.writes = m.ok_writes();
    r.reads = m.totals().0;
    r.hwm_mib = op.rss().0;
    {
        let s = seen.lock().expect("lock");
        let probes: Vec<_> = s.probes[probes0..]
            .iter()
            .filter(|at| **at >= wall0 - chrono::Duration::seconds(1))
            .collect();
        let mut per_second: BTreeMap<i64, usize> = BTreeMap::new();
        for at in &probes {
            *per_second.entry(at.timestamp()).or_default() += 1;
        }
        r.probes = probes.len();
        r.max_probes_per_s = per_second.values().copied().max().unwrap_or(0);
    }
    op.stop().await;
    Ok(r)
}

#[derive(Debug, Default)]
struct ScaleResult {
    total: usize,
    real: usize,
    create_s: f64,
    settle_s: f64,
    hwm_mib: f64,
    rss_mib: f64,
    restarts: Vec<Restart>,
    error: Option<String>,
}

async fn run_scale(client: &Client, args: &Args, port: u16, logs: &Path) -> Res<ScaleResult> {
    let run = format!("s{}", short_id());
    let namespace = format!("bench-{run}");
    create_namespace(client, &namespace).await?;
    let selector = format!("{LABEL}={run}");
    let log = logs.join(format!("{run}.log"));
    let total = args.scale;
    let real = args.scale_real.min(total);
    let mut r = ScaleResult {
        total,
        real,
        ..Default::default()
    };
    let op = Operator::start(&selector, port, args, &log).await?;
    let (seen, watch_task) = watch(client.clone(), selector.clone());
    // Parked tenants name a class that does not exist: Failed/ClassNotFound,
    // a store entry and a cheap reconcile each, no backend call.
    let tenants: Vec<Tenant> = (0..total)
        .map(|i| {
            let class = (i >= real).then_some("bench-parked-no-such-class");
            tenant(&format!("{run}-{i}"), &run, &namespace, "schema", class)
        })
        .collect();
    let t0 = Instant::now();
    create_tenants(client, tenants).await?;
    r.create_s = t0.elapsed().as_secs_f64();
    eprintln!("bench:   {total} Tenants created in {:.1} s", r.create_s);
    let timeout = Duration::from_secs(300) + Duration::from_millis(1500) * real as u32;
    if let Err(e) = wait_settled(&seen, real, total - real, t0 + timeout).await {
        r.error = Some(e.to_string());
        watch_task.abort();
        op.stop().await;
        return Ok(r);
    }
    r.settle_s = t0.elapsed().as_secs_f64();
    (r.hwm_mib, r.rss_mib) = op.rss();
    eprintln!(
        "bench:   settled in {:.1} s, RSS {:.1} MiB (peak {:.1}); restarting",
        r.settle_s, r.rss_mib, r.hwm_mib
    );
    op.stop().await;
    // TENANTRY_BENCH_COMPARE: an older build, restarted first, so the same
    // settled tenants show both.
    let compare = std::env::var("TENANTRY_BENCH_COMPARE").ok();
    let mut bins = vec![None];
    if let Some(c) = compare.as_deref() {
        bins.insert(0, Some(c));
    }
    for bin in bins {
        eprintln!("bench:   restart ({})", bin.unwrap_or("this build"));
        r.restarts
            .push(restart(bin, &seen, total, &selector, port, args, &log).await?);
    }
    watch_task.abort();
    Ok(r)
}

// ------------------------------------------------------------------ main --

#[derive(Debug)]
struct Row {
    mode: String,
    n: usize,
    load_before: String,
    load_after: String,
    op: Result<OperatorResult, String>,
    engine: Option<Result<BaselineResult, String>>,
    engine_probe: Option<Result<BaselineResult, String>>,
    bare: Option<Result<BaselineResult, String>>,
}

fn f(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn ratio(
    op: &Result<OperatorResult, String>,
    base: &Option<Result<BaselineResult, String>>,
) -> String {
    match (op, base) {
        (Ok(o), Some(Ok(b))) if o.failed == 0 && b.failed == 0 => f(b.total_s / o.total_s),
        _ => "-".into(),
    }
}

fn base_total(b: &Option<Result<BaselineResult, String>>) -> String {
    match b {
        Some(Ok(b)) if b.failed == 0 => {
            format!(
                "{} (p50 {}, p99 {}; CPU {} ms/tenant)",
                f(b.total_s),
                f(b.p50),
                f(b.p99),
                f(b.cpu_ms_per_tenant)
            )
        }
        Some(Ok(b)) => format!("{} ({} failed)", f(b.total_s), b.failed),
        Some(Err(e)) => format!("error: {e}"),
        None => "-".into(),
    }
}

fn render(rows: &[Row], scale: &Option<Result<ScaleResult, String>>, args: &Args) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "Concurrency {} (operator `--concurrency`, engine and bare tasks), probe interval {}.\n\
         Throughput ratio = baseline time / operator time (1.0: as fast as the baseline).\n\n",
        args.concurrency,
        humantime::format_duration(args.probe_interval)
    ));
    out.push_str("| mode | N | load (1/5/15) before → after | operator all Ready s | p50 / p95 / p99 s | CPU ms/tenant | peak RSS MiB | engine s | engine+probe s | bare s | op/engine | op/engine+probe | op/bare |\n");
    out.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        let (total, lat, cpu, rss) = match &r.op {
            Ok(o) => (
                if o.failed == 0 {
                    f(o.total_s)
                } else {
                    format!("{} ({} not Ready)", f(o.total_s), o.failed)
                },
                format!("{} / {} / {}", f(o.p50), f(o.p95), f(o.p99)),
                f(o.cpu_s * 1000.0 / r.n as f64),
                f(o.hwm_mib),
            ),
            Err(e) => (format!("error: {e}"), "-".into(), "-".into(), "-".into()),
        };
        out.push_str(&format!(
            "| {} | {} | {} → {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.mode,
            r.n,
            r.load_before,
            r.load_after,
            total,
            lat,
            cpu,
            rss,
            base_total(&r.engine),
            base_total(&r.engine_probe),
            base_total(&r.bare),
            ratio(&r.op, &r.engine),
            ratio(&r.op, &r.engine_probe),
            ratio(&r.op, &r.bare),
        ));
    }
    out.push_str("\nOperator backend calls per provisioned tenant (reads / writes, probe rolled-back DML excluded; errors included):\n\n");
    out.push_str("| mode | N | kms | secretsmanager | postgres | s3 | kubernetes | total | of which outcome=error |\n|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        if let Ok(o) = &r.op {
            let by = o.calls.by_backend();
            let n = r.n as f64;
            let cell = |b: &str| {
                by.get(b)
                    .map(|(rd, wr)| format!("{} / {}", f(rd / n), f(wr / n)))
                    .unwrap_or_else(|| "0 / 0".into())
            };
            let (rd, wr) = o.calls.totals();
            let errors: f64 = o
                .calls
                .calls
                .iter()
                .filter(|(k, _)| k.3 == "error")
                .map(|(_, v)| v)
                .sum();
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} / {} | {} |\n",
                r.mode,
                r.n,
                cell("kms"),
                cell("secretsmanager"),
                cell("postgres"),
                cell("s3"),
                cell("kubernetes"),
                f(rd / n),
                f(wr / n),
                f(errors / n),
            ));
        }
    }
    out.push_str("\nSteady state after all Ready:\n\n");
    out.push_str("| mode | N | window s | backend writes (ok, excl. PROBE_DML_ROLLED_BACK) | reads /tenant/hour | reads /probe | probes seen / expected | probes/s mean / max | reconciles | watch events | CPU s | peak RSS MiB |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        if let Ok(OperatorResult {
            steady: Some(s), ..
        }) = &r.op
        {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} / {} | {} / {} | {} | {} | {} | {} |\n",
                r.mode,
                r.n,
                f(s.window_s),
                if s.writes.is_empty() {
                    "0".to_string()
                } else {
                    s.writes.join(", ")
                },
                f(s.reads_per_tenant_hour),
                f(s.reads_per_probe),
                s.probes,
                f(s.probes_expected),
                f(s.mean_per_s),
                s.max_per_s,
                s.reconciles,
                s.watch_events,
                f(s.cpu_s),
                f(s.hwm_mib),
            ));
        }
    }
    let errors: Vec<String> = rows
        .iter()
        .flat_map(|r| {
            [&r.engine, &r.engine_probe, &r.bare]
                .into_iter()
                .filter_map(|b| b.as_ref().and_then(|b| b.as_ref().ok()))
                .filter_map(|b| b.first_error.clone())
                .map(|e| format!("{} N={}: {e}", r.mode, r.n))
                .collect::<Vec<_>>()
        })
        .collect();
    if !errors.is_empty() {
        out.push_str("\nBaseline failures (first per run):\n\n");
        for e in errors {
            out.push_str(&format!("- {e}\n"));
        }
    }
    match scale {
        Some(Ok(s)) => {
            out.push_str(&format!(
                "\nScale: {} Tenants in the API server ({} provisioned for real, {} parked on a missing class): \
                 created in {} s, settled in {} s, operator RSS {} MiB (peak {} MiB).\n\n\
                 | restart of | to /readyz s | to every tenant reconciled s | reconciles | backend writes (ok) | backend reads | CPU s | peak RSS MiB | probes / max per s |\n|---|---|---|---|---|---|---|---|---|\n",
                s.total,
                s.real,
                s.total - s.real,
                f(s.create_s),
                f(s.settle_s),
                f(s.rss_mib),
                f(s.hwm_mib),
            ));
            for r in &s.restarts {
                out.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} / {} |\n",
                    r.binary,
                    f(r.ready_s),
                    f(r.resync_s),
                    r.reconciles,
                    if r.writes.is_empty() {
                        "0".to_string()
                    } else {
                        r.writes.join(", ")
                    },
                    r.reads,
                    f(r.cpu_s),
                    f(r.hwm_mib),
                    r.probes,
                    r.max_probes_per_s,
                ));
                if let Some(e) = &r.error {
                    out.push_str(&format!("\nRestart incomplete: {e}\n"));
                }
            }
            if let Some(e) = &s.error {
                out.push_str(&format!("\nScale stage incomplete: {e}\n"));
            }
        }
        Some(Err(e)) => out.push_str(&format!("\nScale stage failed: {e}\n")),
        None => {}
    }
    out
}

async fn environment(client: &Client) -> String {
    let cmd = |c: &str, a: &[&str]| {
        std::process::Command::new(c)
            .args(a)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse::<f64>().ok())
        .map(|kib| format!("{:.1} GiB", kib / 1024.0 / 1024.0))
        .unwrap_or_default();
    let kube = client
        .apiserver_version()
        .await
        .map(|v| v.git_version)
        .unwrap_or_default();
    let pg = match sqlx::PgPool::connect(&env("TENANTRY_DATABASE_URL").unwrap_or_default()).await {
        Ok(pool) => sqlx::query_scalar::<_, String>("SHOW server_version")
            .fetch_one(&pool)
            .await
            .unwrap_or_default(),
        Err(_) => String::new(),
    };
    // hack/localenv.sh caches moto as $TENANTRY_CACHE_DIR/moto-<version>.
    let moto = std::env::var("TENANTRY_CACHE_DIR")
        .ok()
        .and_then(|d| std::fs::read_dir(d).ok())
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find_map(|n| n.strip_prefix("moto-").map(str::to_string))
        .unwrap_or_default();
    format!(
        "- machine: {} × {cpu}, {mem} RAM, shared (load is given per run)\n\
         - {} ; kernel {}\n\
         - tenantry {} (commit {}), release build\n\
         - kube-apiserver {kube} + etcd, PostgreSQL {pg}, moto {moto} (hack/localenv.sh)\n",
        cmd("nproc", &[]),
        cmd("rustc", &["-V"]),
        cmd("uname", &["-r"]),
        env!("CARGO_PKG_VERSION"),
        cmd("git", &["rev-parse", "--short", "HEAD"]),
    )
}

fn write_doc(path: &Path, section: &str) -> Res<()> {
    const BEGIN: &str = "<!-- bench:results:begin -->";
    const END: &str = "<!-- bench:results:end -->";
    let doc = std::fs::read_to_string(path).unwrap_or_else(|_| {
        format!(
            "# Benchmarks\n\nResults of `hack/bench.sh`, rewritten by each run.\n\n{BEGIN}\n{END}\n"
        )
    });
    let new = match (doc.find(BEGIN), doc.find(END)) {
        (Some(b), Some(e)) if b < e => format!(
            "{}{BEGIN}\n{section}{END}{}",
            &doc[..b],
            &doc[e + END.len()..]
        ),
        _ => format!("{doc}\n{BEGIN}\n{section}{END}\n"),
    };
    std::fs::write(path, new)?;
    Ok(())
}

async fn main_async() -> Res<()> {
    let args = parse_args()?;
    let client = Client::try_default().await?;
    let port: u16 = env("TENANTRY_OPERATOR_PORT_BASE")?.parse::<u16>()? + 9;
    let logs = PathBuf::from(env("TENANTRY_LOCALENV_RUN_DIR")?)
        .join("logs")
        .join("bench");
    std::fs::create_dir_all(&logs)?;
    let started = chrono::Utc::now();
    let header = environment(&client).await;
    eprintln!("bench: {}", header.replace('\n', "\nbench: "));

    let sdk = tenantry::backends::aws::load_sdk_config().await;
    let settings = BackendSettings {
        database_url: SecretString::from(env("TENANTRY_DATABASE_URL")?),
        database_tls: Default::default(),
        max_connections: 10,
        tenant_database_host: None,
        tenant_database_port: None,
        bucket_prefix: env("TENANTRY_BUCKET_PREFIX")?,
        shared_tables: Vec::new(),
        region: None,
        s3_force_path_style: None,
        principal: None,
        identity: None,
        administrators: Vec::new(),
        operator_principal: None,
        aws_emulator: std::env::var("TENANTRY_AWS_EMULATOR").is_ok_and(|v| v == "true"),
        kms_create_limit: None,
        role_limits: Default::default(),
        operator_namespace: None,
    };
    let needs_backends = args.baselines.iter().any(|b| b.starts_with("engine"));
    let backends = if needs_backends {
        Some(Backends::connect_with(&settings, &sdk, client.clone()).await?)
    } else {
        None
    };
    let bare = Arc::new(Bare {
        kms: aws_sdk_kms::Client::new(&sdk),
        sm: aws_sdk_secretsmanager::Client::new(&sdk),
        s3: aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&sdk)
                .force_path_style(true)
                .build(),
        ),
        pg: sqlx::postgres::PgPoolOptions::new()
            .max_connections(10)
            .connect(&env("TENANTRY_DATABASE_URL")?)
            .await?,
        kube: client.clone(),
    });

    let mut rows = Vec::new();
    for mode in &args.modes {
        for &n in &args.tenants {
            if mode == "database" && n > args.database_max {
                eprintln!("bench: database N={n}: skipped (above --database-max)");
                continue;
            }
            let load_before = load();
            eprintln!("bench: {mode} N={n}: operator (load {load_before})");
            let op = run_operator(&client, &args, mode, n, port, &logs)
                .await
                .map_err(|e| e.to_string());
            let mut row = Row {
                mode: mode.clone(),
                n,
                load_before,
                load_after: String::new(),
                op,
                engine: None,
                engine_probe: None,
                bare: None,
            };
            for b in &args.baselines {
                eprintln!("bench: {mode} N={n}: {b} (load {})", load());
                let result = match (b.as_str(), &backends) {
                    ("engine", Some(be)) => {
                        Some(run_engine(&client, be, &args, mode, n, false).await)
                    }
                    ("engine-probe", Some(be)) => {
                        Some(run_engine(&client, be, &args, mode, n, true).await)
                    }
                    ("bare", _) => Some(run_bare(&bare, &args, mode, n).await),
                    _ => None,
                }
                .map(|r| r.map_err(|e| e.to_string()));
                match b.as_str() {
                    "engine" => row.engine = result,
                    "engine-probe" => row.engine_probe = result,
                    "bare" => row.bare = result,
                    _ => {}
                }
            }
            row.load_after = load();
            rows.push(row);
            let table = render(&rows, &None, &args);
            eprintln!("{table}");
        }
    }
    let scale = if args.scale > 0 {
        eprintln!(
            "bench: scale {} ({} real) (load {})",
            args.scale,
            args.scale_real,
            load()
        );
        Some(
            run_scale(&client, &args, port, &logs)
                .await
                .map_err(|e| e.to_string()),
        )
    } else {
        None
    };
    let table = render(&rows, &scale, &args);
    println!("{table}");
    if let Some(out) = &args.out {
        let section = format!(
            "## Last run: {}\n\nCommand: `{}`\n\n{header}- load (1/5/15 min) at the end: {}\n\n{table}\n",
            started.format("%Y-%m-%d %H:%M UTC"),
            args.command,
            load(),
        );
        write_doc(out, &section)?;
        eprintln!("bench: wrote {}", out.display());
    }
    Ok(())
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(main_async()) {
        eprintln!("bench: {e}");
        std::process::exit(1);
    }
}
