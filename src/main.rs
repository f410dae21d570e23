//! The tenantry command line: the operator (`run`) and its tools.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use prometheus_client::registry::Registry;

use tenantry::config::{Backends, RunArgs};
use tenantry::controller::{self, events::EventPublisher};
use tenantry::metrics::Metrics;

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
}

fn init_tracing(format: LogFormat, filter: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).with_context(|| format!("invalid --log filter {filter:?}"))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
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
    let client = kube::Client::try_default()
        .await
        .context("cannot build a Kubernetes client (KUBECONFIG, ~/.kube/config or in-cluster)")?;
    controller::check_crd_installed(&client).await?;
    let backends = Backends::connect(&args.backends, client.clone()).await?;

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let ready = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("cannot listen on --metrics-addr {}", args.metrics_addr))?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
    let server = tokio::spawn(tenantry::metrics::serve(listener, registry, ready.clone()));

    let events = EventPublisher::new(client.clone(), args.event_namespace.clone());
    let ctx = Arc::new(controller::Context::new(client, backends, args.engine.clone(), events, metrics));
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "tenantry controller starting");
    ready.store(true, Ordering::Relaxed);
    controller::run(ctx, args.concurrency, &args.tenant_selector).await;
    server.abort();
    tracing::info!("tenantry controller stopped");
    Ok(())
}
