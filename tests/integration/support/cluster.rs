//! The real kube-apiserver of the local environment, and the operator run as
//! a child process against it.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, ResourceExt};
use tenantry::api::{Tenant, TenantClass, TenantPhase};

use super::{env, unique_name};

/// Label that scopes a test's Tenants to the operator that test started.
pub const TEST_LABEL: &str = "tenantry.dev/test-run";

pub async fn kube_client() -> Client {
    let _ = env("KUBECONFIG");
    Client::try_default()
        .await
        .expect("kube client from KUBECONFIG")
}

/// Installs (or updates) the CRDs from the Rust types and waits until the
/// API server serves them.
pub async fn install_crd(client: &Client) {
    for crd in [
        tenantry::api::tenant_crd(),
        tenantry::api::tenant_class_crd(),
    ] {
        install_one_crd(client, crd).await;
    }
}

async fn install_one_crd(client: &Client, mut crd: CustomResourceDefinition) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    // Create or replace, not server-side apply: kube-apiserver 1.20 mangles a
    // CRD created by server-side apply. Tests run in parallel, so races
    // between them are retried.
    for _ in 0..10 {
        let result = match crds.get_opt(&crd.name_any()).await.expect("read CRD") {
            None => crds.create(&PostParams::default(), &crd).await.map(|_| ()),
            Some(existing) if existing.spec == crd.spec => Ok(()),
            Some(existing) => {
                crd.metadata.resource_version = existing.resource_version();
                crds.replace(&crd.name_any(), &PostParams::default(), &crd)
                    .await
                    .map(|_| ())
            }
        };
        match result {
            Ok(()) => break,
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => panic!("install CRD: {e}"),
        }
    }
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(crds, &crd.name_any(), conditions::is_crd_established()),
    )
    .await
    .expect("CRD established in time")
    .expect("watch CRD");
}

/// Creates a namespace with a unique name and returns the name.
pub async fn create_namespace(client: &Client, prefix: &str) -> String {
    let name = unique_name(prefix);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("create namespace");
    name
}

/// Fails fast when the environment holds a default TenantClass: every test
/// Tenant without `spec.class` would get it (and its probe interval), so
/// tests would fail far from the cause. `hack/demo.sh` keeps its classes in
/// an environment of its own for this reason.
async fn refuse_a_foreign_default_class() {
    static CHECKED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    CHECKED
        .get_or_init(|| async {
            let classes: Api<TenantClass> = Api::all(kube_client().await);
            let defaults: Vec<String> = classes
                .list(&Default::default())
                .await
                .expect("list TenantClasses")
                .into_iter()
                .filter(|c| c.is_default())
                .map(|c| c.name_any())
                .collect();
            assert!(
                defaults.is_empty(),
                "the test environment ({}) holds default TenantClass(es) {defaults:?} that \
                 no test made; every test Tenant would get it. Delete it, or run the tests \
                 in an environment of their own (hack/demo.sh uses .localenv-demo)",
                env("TENANTRY_LOCALENV_RUN_DIR")
            );
        })
        .await;
}

/// The operator binary, run as a child process that manages only the Tenants
/// labelled with this test's run id. Killed when dropped.
pub struct Operator {
    child: Option<tokio::process::Child>,
    pub run_id: String,
    pub log_path: PathBuf,
    extra_env: Vec<(String, String)>,
    /// The key of the user holding the operator's IAM policy, when the
    /// suite runs against moto-iam (`support::moto_iam`).
    aws_key: Option<(String, String)>,
    /// Started elsewhere (`adopt`): `spawn` would start another binary.
    adopted: bool,
}

impl Operator {
    /// Starts an operator with a new run id.
    pub async fn start(extra_env: &[(&str, &str)]) -> Self {
        let run_id = unique_name("run");
        Self::start_for(&run_id, extra_env).await
    }

    /// Starts an operator for an existing run id (e.g. after a crash).
    pub async fn start_for(run_id: &str, extra_env: &[(&str, &str)]) -> Self {
        let log_dir = PathBuf::from(env("TENANTRY_LOCALENV_RUN_DIR"))
            .join("logs")
            .join("tests");
        std::fs::create_dir_all(&log_dir).expect("log dir");
        let mut op = Self {
            child: None,
            run_id: run_id.to_string(),
            log_path: log_dir.join(format!("{run_id}.log")),
            extra_env: extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            aws_key: super::moto_iam::suite_operator_key().await,
            adopted: false,
        };
        super::rbac::ensure_operator_identity().await;
        refuse_a_foreign_default_class().await;
        op.spawn();
        op
    }

    /// An operator some other way started (e.g. from the OCI image's root
    /// filesystem), managing the Tenants labelled with `run_id` and logging
    /// to `log_path`; killed when dropped if `child` was spawned with
    /// `kill_on_drop`. It cannot be restarted.
    pub fn adopt(child: tokio::process::Child, run_id: String, log_path: PathBuf) -> Self {
        Self {
            child: Some(child),
            run_id,
            log_path,
            extra_env: Vec::new(),
            aws_key: None,
            adopted: true,
        }
    }

    fn spawn(&mut self) {
        assert!(!self.adopted, "an adopted operator cannot be restarted");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open operator log");
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tenantry"));
        cmd.arg("run")
            // The chart's ServiceAccount and rules, not the admin (support/rbac.rs).
            .env("KUBECONFIG", super::rbac::operator_kubeconfig())
            .env(
                "TENANTRY_TENANT_SELECTOR",
                format!("{TEST_LABEL}={}", self.run_id),
            )
            .env("TENANTRY_METRICS_ADDR", "127.0.0.1:0")
            .env("TENANTRY_EVENT_NAMESPACE", super::rbac::EVENT_NAMESPACE)
            // The suite's operators share one API server and its classes but
            // select different Tenants: each would write its own count into
            // every class's status. Only the tests of class status turn it on.
            .env("TENANTRY_CLASS_STATUS", "false")
            .env("TENANTRY_LOG", "tenantry=debug,info")
            .env("TENANTRY_RETRY_ATTEMPTS", "4")
            .env("TENANTRY_RETRY_BASE_DELAY", "50ms")
            .env("TENANTRY_RETRY_MAX_DELAY", "1s")
            // Failed tenants stay failed for the length of a test.
            .env("TENANTRY_FAILURE_BACKOFF", "1h")
            .env_remove("FAILPOINTS")
            .envs(self.aws_key.iter().flat_map(|(id, secret)| {
                [("AWS_ACCESS_KEY_ID", id), ("AWS_SECRET_ACCESS_KEY", secret)]
            }))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .kill_on_drop(true);
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("start the operator binary"));
    }

    /// Waits for the process to exit by itself (a failpoint) and returns its code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut().expect("operator running");
        let status = tokio::time::timeout(timeout, child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "operator did not exit within {timeout:?}; log: {}",
                    self.log()
                )
            })
            .expect("wait for operator");
        self.child = None;
        status.code()
    }

    /// Starts it again with other settings (the same run id and log).
    pub async fn restart_with(&mut self, extra_env: &[(&str, &str)]) {
        self.kill().await;
        self.extra_env = extra_env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.spawn();
    }

    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// The process id of the running operator, e.g. to send it a signal.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Labels that put a Tenant under this operator.
    pub fn labels(&self) -> serde_json::Value {
        serde_json::json!({ TEST_LABEL: self.run_id })
    }
}

/// A Tenant manifest for this operator.
pub fn tenant_manifest(op: &Operator, name: &str, spec: serde_json::Value) -> Tenant {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "tenantry.dev/v1alpha1",
        "kind": "Tenant",
        "metadata": {"name": name, "labels": op.labels()},
        "spec": spec,
    }))
    .expect("valid Tenant")
}

pub async fn create_tenant(client: &Client, tenant: &Tenant) -> Tenant {
    let api: Api<Tenant> = Api::all(client.clone());
    api.create(&PostParams::default(), tenant)
        .await
        .expect("create Tenant")
}

/// Waits until the Tenant satisfies `check`, failing with its status and the
/// operator log when it does not within `timeout`.
pub async fn wait_for_tenant(
    client: &Client,
    op: &Operator,
    name: &str,
    timeout: Duration,
    what: &str,
    check: impl Fn(&Tenant) -> bool,
) -> Tenant {
    let api: Api<Tenant> = Api::all(client.clone());
    let cond = |t: Option<&Tenant>| t.is_some_and(&check);
    match tokio::time::timeout(timeout, await_condition(api.clone(), name, cond)).await {
        Ok(Ok(Some(t))) => t,
        _ => {
            let current = api.get_opt(name).await.ok().flatten();
            panic!(
                "tenant {name} not {what} within {timeout:?}\nstatus: {}\noperator log (tail):\n{}",
                serde_json::to_string_pretty(&current.and_then(|t| t.status)).unwrap(),
                tail(&op.log(), 60)
            )
        }
    }
}

/// Waits until the Tenant object is gone.
pub async fn wait_for_tenant_gone(client: &Client, op: &Operator, name: &str, timeout: Duration) {
    let api: Api<Tenant> = Api::all(client.clone());
    let gone = |t: Option<&Tenant>| t.is_none();
    let gone = tokio::time::timeout(timeout, await_condition(api.clone(), name, gone)).await;
    if !matches!(gone, Ok(Ok(_))) {
        let current = api.get_opt(name).await.ok().flatten();
        panic!(
            "tenant {name} still exists after {timeout:?}\nstatus: {}\noperator log (tail):\n{}",
            serde_json::to_string_pretty(&current.and_then(|t| t.status)).unwrap(),
            tail(&op.log(), 60)
        );
    }
}

pub fn phase(t: &Tenant) -> Option<TenantPhase> {
    t.status.as_ref().and_then(|s| s.phase)
}

pub fn condition<'a>(t: &'a Tenant, type_: &str) -> Option<&'a tenantry::api::Condition> {
    t.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

pub fn is_ready(t: &Tenant) -> bool {
    condition(t, "Ready").is_some_and(|c| c.status == "True")
        && t.status.as_ref().and_then(|s| s.observed_generation) == t.metadata.generation
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<_> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
