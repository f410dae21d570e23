//! The tenantry command line: the operator (`run`) and its tools.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use prometheus_client::registry::Registry;

use tenantry::config::{BackendSettings, Backends, RunArgs};
use tenantry::controller::{self, events::EventPublisher};
use tenantry::metrics::Metrics;
use tenantry::runtime::Shutdown;

/// Kubernetes operator that gives every Tenant its own PostgreSQL schema or
/// database, KMS key, S3 bucket and credentials, all or nothing.
///
/// Kubernetes access follows the usual resolution: KUBECONFIG, ~/.kube/config,
/// or the in-cluster service account. AWS access follows the AWS SDK's standard
/// chain: AWS_REGION, AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY,
/// AWS_PROFILE, web identity (IRSA), instance metadata.
#[derive(Parser, Debug)]
#[command(name = "tenantry", version, about, long_about)]
struct Cli {
    /// Log format.
    #[arg(long, env = "TENANTRY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,

    /// Log filter in tracing's EnvFilter syntax, e.g. `info` or `tenantry=debug,kube=warn`.
    #[arg(long, env = "TENANTRY_LOG", default_value = "info", global = true)]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the operator: watch Tenants and provision them.
    Run(Box<RunArgs>),
    /// Print the CustomResourceDefinitions as YAML (pipe into `kubectl apply -f -`).
    Crd,
    /// Print the isolation attestation of tenants as JSON (one document per line),
    /// as the operator last measured it; exit 1 when any layer of any of them is
    /// not Enforced (or was never measured).
    Verify(VerifyArgs),
    /// The tamper-evident audit trail of tenantry's changes.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Print the AWS IAM policy the operator needs, as JSON. Without
    /// --account and --region: the form with PARTITION, ACCOUNT, REGION and
    /// PREFIX (and ANCHOR_BUCKET) to replace, as docs/install.md shows it.
    IamPolicy(IamPolicyArgs),
}

#[derive(clap::Args, Debug)]
struct IamPolicyArgs {
    /// AWS account id of the tenants' resources.
    #[arg(long, requires = "region")]
    account: Option<String>,
    /// AWS region of the tenants' resources.
    #[arg(long, requires = "account")]
    region: Option<String>,
    /// The operator's --bucket-prefix; repeat it for each TenantClass's
    /// `aws.bucketPrefix` [default: tenantry, or PREFIX in the form without
    /// --account].
    #[arg(long)]
    bucket_prefix: Vec<String>,
    /// ARN partition: aws, aws-cn or aws-us-gov [default: aws, or PARTITION
    /// in the form without --account].
    #[arg(long)]
    partition: Option<String>,
    /// The operator's --audit-anchor-bucket: adds the anchor's statements.
    #[arg(long)]
    audit_anchor_bucket: Option<String>,
    /// The operator's --audit-mac-key.
    #[arg(long, default_value = tenantry::permissions::DEFAULT_MAC_KEY)]
    audit_mac_key: String,
}

impl IamPolicyArgs {
    fn scope(&self) -> tenantry::permissions::PolicyScope {
        use tenantry::permissions::{AnchorScope, PolicyScope};
        let mut scope = match (&self.account, &self.region) {
            (Some(account), Some(region)) => PolicyScope {
                partition: "aws".into(),
                account: account.clone(),
                region: region.clone(),
                bucket_prefixes: vec!["tenantry".into()],
                anchor: None,
            },
            _ => PolicyScope::placeholders(),
        };
        if let Some(partition) = &self.partition {
            scope.partition.clone_from(partition);
        }
        if !self.bucket_prefix.is_empty() {
            scope.bucket_prefixes.clone_from(&self.bucket_prefix);
        }
        if let Some(bucket) = &self.audit_anchor_bucket {
            scope.anchor = Some(AnchorScope {
                bucket: bucket.clone(),
                mac_key: self.audit_mac_key.clone(),
            });
        }
        scope
    }
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Recompute every hash chain (or one tenant's); print the first broken
    /// link of each and exit 1 on any break.
    Verify {
        /// Only this tenant's chain.
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        store: AuditStoreArgs,
        /// With an anchor bucket, every chain is also checked against the
        /// MAC'd checkpoints there, which a database superuser cannot forge.
        #[command(flatten)]
        anchor: tenantry::config::AuditAnchorArgs,
    },
    /// Print a tenant's trail as JSON lines, oldest first.
    Log {
        tenant: String,
        #[command(flatten)]
        store: AuditStoreArgs,
    },
}

#[derive(clap::Args, Debug)]
struct AuditStoreArgs {
    /// PostgreSQL URL of the database holding the audit trail (the operator's
    /// --database-url; any role that may read the trail will do).
    #[arg(long, env = "TENANTRY_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    #[command(flatten)]
    database_tls: tenantry::config::DatabaseTlsArgs,
    #[arg(long, env = "TENANTRY_AUDIT_SCHEMA", default_value = tenantry::audit::DEFAULT_SCHEMA)]
    audit_schema: String,
}

#[derive(clap::Args, Debug)]
struct VerifyArgs {
    /// Tenants to attest; all Tenants when none is named.
    tenants: Vec<String>,

    /// Fail when an attestation is older than this (e.g. `15m`), so a stopped
    /// operator cannot pass for a healthy one.
    #[arg(long, value_parser = humantime::parse_duration)]
    max_age: Option<std::time::Duration>,
}

fn init_tracing(format: LogFormat, filter: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("invalid --log filter {filter:?}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Run(args) = &cli.command
        && let Err(message) = args
            .runtime
            .shard()
            .and_then(|_| args.runtime.lease().map(|_| ()))
    {
        Cli::command()
            .error(clap::error::ErrorKind::ValueValidation, message)
            .exit();
    }
    tenantry::init_tls();
    if let Err(error) = init_tracing(cli.log_format, &cli.log) {
        eprintln!("tenantry: {error:#}");
        return ExitCode::from(2);
    }
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let result = match cli.command {
        Command::Crd => {
            print!("{}", tenantry::api::crds_yaml());
            Ok(())
        }
        Command::Run(args) => run(*args).await,
        Command::Verify(args) => verify(args).await,
        Command::Audit(command) => audit(command).await,
        Command::IamPolicy(args) => {
            let policy = tenantry::permissions::operator_policy(&args.scope());
            println!("{}", policy.to_pretty());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tenantry: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let shard = args.runtime.shard().map_err(anyhow::Error::msg)?;
    let lease = args.runtime.lease().map_err(anyhow::Error::msg)?;
    let shutdown = Shutdown::on_signals().context("cannot install the signal handlers")?;
    let client = kube::Client::try_default()
        .await
        .context("cannot build a Kubernetes client (KUBECONFIG, ~/.kube/config or in-cluster)")?;
    controller::check_crd_installed(&client).await?;
    let sdk = tenantry::backends::aws::load_sdk_config().await;
    let flags = BackendSettings::from_args(&args.backends);
    let backends = Backends::connect_with(&flags, &sdk, client.clone()).await?;

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let store = kube::runtime::reflector::store::Writer::default();
    Metrics::register_store(&mut registry, store.as_reader());
    let health = HealthServer::start(args.metrics_addr, registry, &shutdown).await?;

    let leadership = match lease {
        None => None,
        Some(lease) => match wait_for_lease(client.clone(), lease, &shutdown).await {
            Some(held) => Some(held),
            None => {
                health.set_unready();
                health.stop().await;
                tracing::info!("tenantry stopped (was standing by)");
                return Ok(());
            }
        },
    };
    metrics.leader.set(1);

    let audit = start_audit(&args, &client, &backends, &sdk, shard).await?;
    let classes = tenantry::class_registry::ClassRegistry::start(
        client.clone(),
        flags,
        backends,
        sdk,
        args.engine.probe_interval,
    )
    .await?;
    let ctx = controller_context(
        &args,
        client,
        classes,
        metrics.clone(),
        audit,
        store.as_reader(),
    );
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        shard = shard.index,
        shards = shard.count,
        "tenantry controller starting"
    );
    let lost = reconcile(ctx, &args, shard, store, &shutdown, leadership.as_ref()).await;
    metrics.leader.set(0);
    health.set_unready();
    if lost {
        // Whatever was running is dropped here, as in a crash: the journal
        // in each Tenant's status lets the next leader resume it.
        anyhow::bail!(
            "lost the leader Lease: stopped reconciling; exiting so that a restart begins clean"
        );
    }
    if let Some(held) = leadership {
        held.release().await;
    }
    health.stop().await;
    tracing::info!("tenantry controller stopped");
    Ok(())
}

/// The server of /metrics, /healthz and /readyz, and the readiness it
/// reports.
struct HealthServer {
    ready: Arc<AtomicBool>,
    stop_signal: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl HealthServer {
    async fn start(
        addr: std::net::SocketAddr,
        registry: Registry,
        shutdown: &Shutdown,
    ) -> anyhow::Result<Self> {
        let ready = Arc::new(AtomicBool::new(false));
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on --metrics-addr {addr}"))?;
        tracing::info!(addr = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
        let (stop_signal, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(tenantry::metrics::serve(
            listener,
            registry,
            ready.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        // Ready means started: a standby is ready to take over, and must not
        // hold up a rolling update by looking unready (`tenantry_leader` tells
        // which process leads).
        ready.store(true, Ordering::Relaxed);
        {
            let (ready, shutdown) = (ready.clone(), shutdown.clone());
            tokio::spawn(async move {
                shutdown.requested().await;
                ready.store(false, Ordering::Relaxed);
            });
        }
        Ok(Self {
            ready,
            stop_signal,
            task,
        })
    }

    fn set_unready(&self) {
        self.ready.store(false, Ordering::Relaxed);
    }

    async fn stop(self) {
        let _ = self.stop_signal.send(());
        let _ = self.task.await;
    }
}

/// Stands by until this process holds the Lease; None when a shutdown comes
/// first, since a standby has nothing to finish.
async fn wait_for_lease(
    client: kube::Client,
    lease: tenantry::leader::LeaseConfig,
    shutdown: &Shutdown,
) -> Option<tenantry::leader::Leadership> {
    tracing::info!(
        identity = %lease.identity,
        lease = %format!("{}/{}", lease.namespace, lease.name),
        "leader election on: waiting for the Lease"
    );
    tokio::select! {
        held = tenantry::leader::acquire(client, lease) => Some(held),
        () = shutdown.requested() => None,
    }
}

fn controller_context(
    args: &RunArgs,
    client: kube::Client,
    classes: tenantry::class_registry::ClassRegistry,
    metrics: Metrics,
    audit: tenantry::audit::AuditLog,
    tenants: kube::runtime::reflector::Store<tenantry::api::Tenant>,
) -> Arc<controller::Context> {
    let events = EventPublisher::new(client.clone(), args.event_namespace.clone());
    Arc::new(controller::Context::new(
        client,
        classes,
        args.engine.clone(),
        events,
        metrics,
        audit,
        controller::pacing::ProbePacer::new(
            args.probe_concurrency.map_or_else(
                || controller::pacing::default_probe_slots(args.concurrency),
                usize::from,
            ),
            tenants,
        ),
    ))
}

/// Reconciles Tenants until shutdown or, under leader election, until the
/// Lease is lost: then at once, since another process may already lead.
/// True when the Lease was lost.
async fn reconcile(
    ctx: Arc<controller::Context>,
    args: &RunArgs,
    shard: tenantry::shard::Shard,
    store: kube::runtime::reflector::store::Writer<tenantry::api::Tenant>,
    shutdown: &Shutdown,
    leadership: Option<&tenantry::leader::Leadership>,
) -> bool {
    let stopping = shutdown.clone();
    // One writer of the classes' status: the first shard's leader.
    let class_status = (args.class_status && shard.index == 0)
        .then(|| controller::class_status::run(ctx.clone(), args.tenant_selector.clone()));
    let controller = controller::run(
        ctx,
        args.concurrency,
        &args.tenant_selector,
        shard,
        store,
        async move { stopping.requested().await },
    );
    let controller = async move {
        match class_status {
            Some(class_status) => tokio::select! {
                () = controller => {}
                () = class_status => {}
            },
            None => controller.await,
        }
    };
    match leadership {
        None => {
            controller.await;
            false
        }
        Some(held) => tokio::select! {
            () = controller => false,
            () = held.lost() => true,
        },
    }
}

async fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    use kube::ResourceExt;
    use tenantry::api::{IsolationState, Tenant};
    let client = kube::Client::try_default()
        .await
        .context("cannot build a Kubernetes client (KUBECONFIG, ~/.kube/config or in-cluster)")?;
    let api: kube::Api<Tenant> = kube::Api::all(client);
    let tenants = if args.tenants.is_empty() {
        api.list(&Default::default())
            .await
            .context("cannot list Tenants")?
            .items
    } else {
        let mut found = Vec::new();
        for name in &args.tenants {
            match api
                .get_opt(name)
                .await
                .with_context(|| format!("cannot read Tenant {name}"))?
            {
                Some(t) => found.push(t),
                None => anyhow::bail!("Tenant {name:?} does not exist"),
            }
        }
        found
    };
    let mut not_enforced = Vec::new();
    let now = chrono::Utc::now();
    for tenant in &tenants {
        let status = tenant.status.clone().unwrap_or_default();
        let isolation = status.isolation.clone().unwrap_or_default();
        let stale = match (args.max_age, isolation.verified_at) {
            (Some(max), Some(at)) => {
                now.signed_duration_since(at.0).to_std().unwrap_or_default() > max
            }
            (Some(_), None) => true,
            (None, _) => false,
        };
        let enforced = isolation.summary == Some(IsolationState::Enforced) && !stale;
        if !enforced {
            not_enforced.push(tenant.name_any());
        }
        let document = serde_json::json!({
            "tenant": tenant.name_any(),
            "uid": tenant.uid(),
            "enforced": enforced,
            "stale": stale,
            "isolation": isolation,
            "resources": status.resources,
            "phase": status.phase,
            "observedGeneration": status.observed_generation,
            "generation": tenant.metadata.generation,
            "attestedAt": now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "verifierVersion": env!("CARGO_PKG_VERSION"),
        });
        print_line(&document.to_string());
    }
    if !not_enforced.is_empty() {
        anyhow::bail!(
            "isolation is not enforced (or not measured) for: {}",
            not_enforced.join(", ")
        );
    }
    Ok(())
}

/// Opens the audit trail and refuses to go on unless it is intact: the
/// store's guards in place and the chain of every tenant this operator
/// manages verified.
async fn start_audit(
    args: &RunArgs,
    client: &kube::Client,
    backends: &Backends,
    sdk: &aws_config::SdkConfig,
    shard: tenantry::shard::Shard,
) -> anyhow::Result<tenantry::audit::AuditLog> {
    use kube::ResourceExt;
    use tenantry::api::Tenant;
    let log = tenantry::audit::AuditLog::new(
        backends.postgres.pool().clone(),
        &args.audit_schema,
        &args.audit_actor,
        &tenantry::audit::AuditLog::current_pod(),
    )
    .map_err(anyhow::Error::msg)?;
    log.ensure_schema()
        .await
        .context("the audit trail is not usable")?;
    let api: kube::Api<Tenant> = kube::Api::all(client.clone());
    let mut params = kube::api::ListParams::default();
    if !args.tenant_selector.is_empty() {
        params = params.labels(&args.tenant_selector);
    }
    let tenants: Vec<(String, bool)> = api
        .list(&params)
        .await
        .context("cannot list Tenants")?
        .items
        .iter()
        .filter(|t| shard.owns(&t.name_any()))
        .map(|t| {
            let provisioned = t
                .status
                .as_ref()
                .and_then(|s| s.provisioning.as_ref())
                .is_some_and(|j| j.provisioned);
            (t.name_any(), provisioned)
        })
        .collect();
    log.check_chains(&tenants)
        .await
        .context("the audit trail failed verification")?;
    tracing::info!(schema = %args.audit_schema, tenants = tenants.len(), "audit trail verified");
    let anchor = args
        .audit_anchor
        .anchor(sdk)
        .map(|anchor| anchor.for_trail(&args.audit_schema));
    match &anchor {
        Some(anchor) => anchor
            .ensure()
            .await
            .context("the audit anchor is not usable")?,
        None => tracing::warn!(
            "no --audit-anchor-bucket: the audit trail is checked only against itself, which a database superuser can rewrite"
        ),
    }
    // The first round runs at once and anchors what is already there (a
    // trail written by an earlier version included). It does not hold up
    // the start: replicas sharing the trail take turns writing it.
    let checkpointer = tenantry::audit::checkpoint::Checkpointer::new(log.clone(), anchor);
    tokio::spawn(checkpointer.run(args.audit_checkpoint_interval));
    Ok(log)
}

async fn audit(command: AuditCommand) -> anyhow::Result<()> {
    let store = match &command {
        AuditCommand::Verify { store, .. } | AuditCommand::Log { store, .. } => store,
    };
    let options: sqlx::postgres::PgConnectOptions = store
        .database_url
        .parse()
        .map_err(|_| anyhow::anyhow!("--database-url is not a valid PostgreSQL URL"))?;
    let options = options.options([(
        "search_path",
        tenantry::backends::postgres::ADMIN_SEARCH_PATH,
    )]);
    let tls = store
        .database_tls
        .settings()
        .resolve(&store.database_url)
        .map_err(anyhow::Error::msg)?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with(tls.apply(options))
        .await
        .map_err(|e| match tenantry::backends::pg_tls::tls_failure(&e) {
            Some(problem) => anyhow::anyhow!("{problem}"),
            None => anyhow::Error::new(e),
        })
        .context("cannot connect to PostgreSQL (--database-url)")?;
    let log = tenantry::audit::AuditLog::new(pool, &store.audit_schema, "", "")
        .map_err(anyhow::Error::msg)?;
    match command {
        AuditCommand::Log { tenant, .. } => {
            for row in log.log(&tenant).await? {
                print_line(&serde_json::to_string(&row)?);
            }
            Ok(())
        }
        AuditCommand::Verify { tenant, anchor, .. } => {
            let breaks = log.verify(tenant.as_deref()).await?;
            for broken in &breaks {
                print_line(&broken.to_string());
                print_line(&serde_json::to_string(broken)?);
            }
            let truncated = check_recorded_heads(&log, tenant.as_deref()).await?;
            for message in &truncated {
                print_line(message);
            }
            let sdk = tenantry::backends::aws::load_sdk_config().await;
            let anchor = anchor
                .anchor(&sdk)
                .map(|anchor| anchor.for_trail(log.schema()));
            let anchored = match anchor {
                Some(anchor) => {
                    let report =
                        tenantry::audit::checkpoint::verify(&log, &anchor, tenant.as_deref())
                            .await?;
                    for problem in &report.problems {
                        print_line(problem);
                    }
                    eprintln!(
                        "tenantry: {} checkpoint(s) in {}, the latest at {}; {} row(s) newer than it are covered by the unkeyed chain only",
                        report.checkpoints,
                        anchor.bucket(),
                        report.latest_at.as_deref().unwrap_or("(none)"),
                        report.rows_after_latest
                    );
                    report.problems
                }
                None => {
                    eprintln!(
                        "tenantry: no --audit-anchor-bucket: the trail was checked against itself only, which a database superuser can rewrite"
                    );
                    Vec::new()
                }
            };
            if breaks.is_empty() && truncated.is_empty() && anchored.is_empty() {
                print_line("audit trail intact");
                return Ok(());
            }
            anyhow::bail!(
                "{} audit chain(s) broken, {} problem(s) against the anchor",
                breaks.len() + truncated.len(),
                anchored.len()
            )
        }
    }
}

/// Prints one line of output. A reader that went away (`tenantry audit log
/// acme | head`) ends the command quietly instead of with a panic.
fn print_line(line: &str) {
    use std::io::Write;
    if let Err(e) = writeln!(std::io::stdout().lock(), "{line}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("tenantry: cannot write output: {e}");
        std::process::exit(1);
    }
}

/// Compares each chain with the head its Tenant's status recorded, which the
/// database cannot rewrite: rows removed from the end of a chain leave an
/// intact but shorter chain, and only this comparison shows it. Skipped (with
/// a note on stderr) when no cluster is reachable.
async fn check_recorded_heads(
    log: &tenantry::audit::AuditLog,
    only: Option<&str>,
) -> anyhow::Result<Vec<String>> {
    use kube::ResourceExt;
    let Ok(client) = kube::Client::try_default().await else {
        eprintln!(
            "tenantry: no Kubernetes cluster reachable; chain heads recorded in Tenant status not checked"
        );
        return Ok(Vec::new());
    };
    let api: kube::Api<tenantry::api::Tenant> = kube::Api::all(client);
    let tenants = match api.list(&Default::default()).await {
        Ok(list) => list.items,
        Err(e) => {
            eprintln!(
                "tenantry: cannot list Tenants ({e}); chain heads recorded in Tenant status not checked"
            );
            return Ok(Vec::new());
        }
    };
    let mut problems = Vec::new();
    // A chain whose Tenant is gone must end on purpose: with the tombstone of
    // a Delete, or the release of a Retain. Anything else means rows were
    // removed from its end (or the Tenant went without tenantry).
    let live: std::collections::HashSet<String> = tenants.iter().map(|t| t.name_any()).collect();
    for (name, action) in log.last_actions().await? {
        if only.is_some_and(|o| o != name) || live.contains(&name) {
            continue;
        }
        if action != tenantry::audit::Action::TenantTombstone.as_str()
            && action != tenantry::audit::Action::TenantReleased.as_str()
        {
            problems.push(format!(
                "tenant {name}: the Tenant is gone but its chain ends with {action}, not tenant.tombstone or \
                 tenant.released (rows were removed from the end of the chain, or it was deleted without tenantry)"
            ));
        }
    }
    for tenant in tenants {
        let name = tenant.name_any();
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let Some(head) = tenant.status.as_ref().and_then(|s| s.audit_head.as_ref()) else {
            continue;
        };
        if head.schema != log.schema() {
            continue;
        }
        if let Some(problem) = log.check_head(&name, head.seq, &head.hash).await? {
            problems.push(problem);
        }
    }
    Ok(problems)
}
