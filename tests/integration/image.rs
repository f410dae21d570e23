//! The OCI image `hack/image.sh` builds: its configuration (non-root user,
//! entrypoint, OCI labels) and, above all, that the operator runs from the
//! image's root filesystem alone, as the Helm chart's Deployment runs it.
//!
//! The archive is unpacked with umoci into a temporary root filesystem, the
//! files Kubernetes would mount into the pod are put where the chart mounts
//! them (the ServiceAccount's token and CA, the PostgreSQL CA), and the
//! binary is started with `chroot --userspec=65532:65532` with exactly the
//! arguments and environment `helm template` renders for the Deployment,
//! under the chart's ServiceAccount and RBAC (in-cluster configuration, as
//! in a pod), the operator's IAM policy and TLS with verify-full to
//! PostgreSQL and the API server. After the chroot it sees nothing of the
//! host: a library, certificate or file the image lacks makes it fail, and
//! the Tenant never becomes Ready. (Seen: without the CA bundle the AWS
//! SDK's HTTPS client panics at start, "no valid root certificates".)

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use kube::api::{Api, DeleteParams};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use tenantry::api::Tenant;
use tenantry::backends::pg_tls::CaBundle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::cluster::*;
use crate::support::rbac::{self, EVENT_NAMESPACE, OPERATOR_NAMESPACE};
use crate::support::{bucket_prefix, env, helm, moto_iam, unique_name};

const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// The user and group the image and the chart run the operator as.
const RUN_AS: u32 = 65532;
/// Where Kubernetes mounts a pod's ServiceAccount credentials.
const SERVICE_ACCOUNT_DIR: &str = "var/run/secrets/kubernetes.io/serviceaccount";
/// The Secrets the rendered Deployment refers to (made up by this test; their
/// contents come from the local environment).
const DATABASE_SECRET: &str = "tenantry-db";
const DATABASE_CA_SECRET: &str = "tenantry-db-ca";
const AWS_SECRET: &str = "tenantry-aws";

/// A directory removed (with everything in it) when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> Self {
        let path = std::env::temp_dir().join(unique_name(prefix));
        std::fs::create_dir(&path).expect("create a temporary directory");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// `hack/image.sh`: builds the image, or finds it built for this binary.
async fn build_image() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("hack/image.sh");
    // Not the variables cargo sets for a test (CARGO_PKG_*, CARGO_BIN_EXE_*,
    // ...): a build under them is another build, and would redo the release
    // build hack/test.sh made a moment ago.
    let keep = [
        "PATH",
        "HOME",
        "CARGO_HOME",
        "CARGO_TARGET_DIR",
        "RUSTUP_HOME",
        "RUSTUP_TOOLCHAIN",
        "TENANTRY_CACHE_DIR",
    ];
    let out = tokio::process::Command::new(&script)
        .env_clear()
        .envs(std::env::vars_os().filter(|(k, _)| keep.iter().any(|v| k == v)))
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run hack/image.sh");
    assert!(
        out.status.success(),
        "hack/image.sh failed ({}):\n{}",
        out.status,
        tail(&String::from_utf8_lossy(&out.stderr), 40)
    );
    let stdout = String::from_utf8(out.stdout).expect("UTF-8 output");
    let archive = PathBuf::from(stdout.lines().last().expect("hack/image.sh prints a path"));
    assert!(archive.is_file(), "{} is not a file", archive.display());
    archive
}

/// A blob of an OCI image layout, by digest.
fn blob(layout: &Path, digest: &str) -> Value {
    let (algorithm, hex) = digest.split_once(':').expect("a digest");
    let path = layout.join("blobs").join(algorithm).join(hex);
    serde_json::from_slice(&std::fs::read(&path).expect("read a blob")).expect("a JSON blob")
}

/// The image's reference name in the layout and its configuration.
fn image_config(layout: &Path) -> (String, Value) {
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index.json"))
            .expect("index.json is JSON");
    let manifests = index["manifests"].as_array().expect("an index");
    assert_eq!(manifests.len(), 1, "one image in the archive: {index}");
    let reference = manifests[0]["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .expect("the image's name in the archive")
        .to_string();
    let manifest = blob(layout, manifests[0]["digest"].as_str().unwrap());
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    let config = blob(layout, manifest["config"]["digest"].as_str().unwrap());
    (reference, config)
}

fn git_head() -> String {
    run(std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR")))
    .trim()
    .to_string()
}

/// `contents` at `path` inside the root filesystem, with the parents made.
fn put(rootfs: &Path, path: &str, contents: &[u8], mode: u32) {
    let target = rootfs.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(target.parent().unwrap()).expect("make the parents");
    std::fs::write(&target, contents).expect("write into the root filesystem");
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// `url` without `sslrootcert`: a host path, which the image cannot see. The
/// chart passes the CA as a mounted Secret (`database.caSecret`) instead.
fn without_sslrootcert(url: &str) -> String {
    let mut parsed = url::Url::parse(url).expect("the database URL");
    let kept: Vec<(String, String)> = parsed
        .query_pairs()
        .into_owned()
        .filter(|(k, _)| k != "sslrootcert")
        .collect();
    parsed.set_query(None);
    parsed.query_pairs_mut().extend_pairs(kept);
    parsed.to_string()
}

/// The value of one `env` entry of the rendered container, as the kubelet
/// would resolve it for pod `pod` from `secrets`.
fn resolve_env(
    entry: &Value,
    pod: &str,
    namespace: &str,
    secrets: &BTreeMap<(&str, &str), String>,
) -> String {
    if let Some(value) = entry.get("value") {
        return value.as_str().expect("a string value").to_string();
    }
    let from = &entry["valueFrom"];
    if let Some(field) = from["fieldRef"]["fieldPath"].as_str() {
        return match field {
            "metadata.name" => pod.to_string(),
            "metadata.namespace" => namespace.to_string(),
            other => panic!("the chart reads field {other}, which this test does not provide"),
        };
    }
    let secret = &from["secretKeyRef"];
    let key = (
        secret["name"].as_str().expect("a Secret name"),
        secret["key"].as_str().expect("a Secret key"),
    );
    secrets
        .get(&key)
        .unwrap_or_else(|| panic!("the chart reads Secret key {key:?}, which this test has not"))
        .clone()
}

/// `$(NAME)` in an argument replaced by the container's variable, as the
/// kubelet expands it.
fn expand(arg: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = arg.to_string();
    for (name, value) in vars {
        out = out.replace(&format!("$({name})"), value);
    }
    out
}

/// A program on the test's PATH, by its full path (the operator's
/// environment, which has no PATH, cannot find it).
fn host_program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is not on PATH"))
}

/// The HTTP status of GET `path`, or None while nothing answers.
async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut conn = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    conn.read_to_string(&mut response).await.ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

/// Uid, Gid and Groups of a running process, from /proc.
fn credentials_of(pid: u32) -> BTreeMap<String, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| ["Uid", "Gid", "Groups"].contains(k))
        .map(|(k, v)| {
            (
                k.to_string(),
                v.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_image_runs_the_operator_from_its_own_root_filesystem_as_the_chart_deploys_it() {
    let archive = build_image().await;

    // The archive, unpacked: an OCI layout with one image.
    let work = TempDir::new("image");
    let layout = work.0.join("layout");
    std::fs::create_dir(&layout).unwrap();
    run(std::process::Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&layout));
    let (reference, config) = image_config(&layout);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(reference, format!("tenantry:{version}"));

    // Its configuration: the chart's user, the binary as entrypoint, labels.
    let settings = &config["config"];
    assert_eq!(settings["User"], format!("{RUN_AS}:{RUN_AS}"));
    assert_eq!(settings["Entrypoint"], json!(["/usr/local/bin/tenantry"]));
    let labels = &settings["Labels"];
    let label = |name: &str| {
        labels[format!("org.opencontainers.image.{name}")]
            .as_str()
            .unwrap_or_else(|| panic!("label org.opencontainers.image.{name} missing: {labels}"))
            .to_string()
    };
    assert_eq!(label("title"), "tenantry");
    assert_eq!(label("version"), version);
    assert_eq!(label("revision"), git_head());
    assert_eq!(label("description"), env!("CARGO_PKG_DESCRIPTION"));
    assert_eq!(label("licenses"), env!("CARGO_PKG_LICENSE"));
    assert!(label("source").starts_with("https://"), "{labels}");
    let created = chrono::DateTime::parse_from_rfc3339(&label("created"))
        .unwrap_or_else(|e| panic!("created is not RFC 3339: {e}"));
    assert_eq!(config["created"], json!(label("created")), "{config}");
    assert!(created.timestamp() > 0);

    // Its root filesystem, as a container runtime lays it out (as root:
    // owners as in the image).
    let rootfs = work.0.join("rootfs");
    run(std::process::Command::new("umoci")
        .args(["raw", "unpack", "--image"])
        .arg(format!("{}:{reference}", layout.display()))
        .arg(&rootfs));
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).expect("/etc/passwd");
    assert!(
        passwd.lines().any(|l| l.split(':').nth(2) == Some("65532")),
        "{passwd}"
    );
    // The CA bundle a client with the system's roots (the AWS SDK's HTTPS
    // client) reads, whole and usable as trust anchors.
    let bundle = CaBundle::from_file(
        &rootfs.join("etc/ssl/certs/ca-certificates.crt"),
        "of the image",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(bundle.len() > 100, "{} certificates", bundle.len());

    // The Deployment the chart renders for this environment: its image is
    // the one built, and its arguments and environment are what runs.
    let client = kube_client().await;
    install_crd(&client).await;
    rbac::ensure_operator_identity().await;
    let run_id = unique_name("run");
    let metrics_port: u16 = env("TENANTRY_OPERATOR_PORT_BASE")
        .parse::<u16>()
        .expect("a port")
        + 9;
    // The local environment's AWS is an emulator (moto), as the suite's
    // operators are told.
    let extra_env: Vec<Value> = std::env::var("TENANTRY_AWS_EMULATOR")
        .ok()
        .map(|v| json!({"name": "TENANTRY_AWS_EMULATOR", "value": v}))
        .into_iter()
        .collect();
    let mut values = json!({
        "database": {
            "existingSecret": DATABASE_SECRET,
            "sslMode": "verify-full",
            "caSecret": {"name": DATABASE_CA_SECRET, "key": "ca.crt"},
        },
        "aws": {
            "region": env("AWS_REGION"),
            "endpointUrl": env("AWS_ENDPOINT_URL"),
            "credentials": {"existingSecret": AWS_SECRET},
        },
        // The ServiceAccount the tests' operators run as (support/rbac.rs).
        "fullnameOverride": rbac::OPERATOR_NAME,
        "bucketPrefix": bucket_prefix(),
        "eventNamespace": EVENT_NAMESPACE,
        "tenantSelector": format!("{TEST_LABEL}={run_id}"),
        "leaderElection": {"leaseName": run_id},
        "metrics": {"port": metrics_port},
        "logLevel": "tenantry=debug,info",
        "extraEnv": extra_env,
    });
    if let Ok(bucket) = std::env::var("TENANTRY_AUDIT_ANCHOR_BUCKET") {
        let retention =
            std::env::var("TENANTRY_AUDIT_ANCHOR_RETENTION").unwrap_or_else(|_| "365days".into());
        helm::merge(
            &mut values,
            &json!({"audit": {"anchorBucket": bucket, "anchorRetention": retention}}),
        );
    }
    let docs = helm::template("tenantry", OPERATOR_NAMESPACE, &values)
        .unwrap_or_else(|e| panic!("helm template: {e}"));
    let deployment = &docs
        .iter()
        .find(|(_, d)| d["kind"] == "Deployment")
        .expect("a Deployment")
        .1;
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(
        container["image"],
        format!("ghcr.io/tenantry/tenantry:{version}"),
        "the chart's default image is the version built"
    );
    assert_eq!(pod["serviceAccountName"], rbac::OPERATOR_NAME);
    assert_eq!(pod["securityContext"]["runAsUser"], RUN_AS);
    assert_eq!(pod["securityContext"]["runAsGroup"], RUN_AS);

    // What the kubelet would mount: the ServiceAccount's token, CA and
    // namespace, and the chart's volumes (the PostgreSQL CA Secret, /tmp).
    let kubeconfig = kube::config::Kubeconfig::read_from(rbac::operator_kubeconfig())
        .expect("the operator's kubeconfig");
    let token = kubeconfig.auth_infos[0]
        .auth_info
        .as_ref()
        .and_then(|a| a.token.clone())
        .expect("the ServiceAccount's token");
    put(
        &rootfs,
        &format!("{SERVICE_ACCOUNT_DIR}/token"),
        token.expose_secret().as_bytes(),
        0o644,
    );
    let kube_ca = std::fs::read(env("TENANTRY_KUBE_CA_FILE")).expect("the API server's CA");
    put(
        &rootfs,
        &format!("{SERVICE_ACCOUNT_DIR}/ca.crt"),
        &kube_ca,
        0o644,
    );
    put(
        &rootfs,
        &format!("{SERVICE_ACCOUNT_DIR}/namespace"),
        OPERATOR_NAMESPACE.as_bytes(),
        0o644,
    );
    let pg_ca = std::fs::read(env("TENANTRY_PG_CA_FILE")).expect("the PostgreSQL CA");
    for mount in container["volumeMounts"].as_array().expect("volume mounts") {
        let path = mount["mountPath"].as_str().unwrap();
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .expect("the mount's volume");
        if volume.get("emptyDir").is_some() {
            let dir = rootfs.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        } else {
            assert_eq!(
                volume["secret"]["secretName"], DATABASE_CA_SECRET,
                "{volume}"
            );
            put(&rootfs, &format!("{path}/ca.crt"), &pg_ca, 0o644);
        }
    }

    // The Secrets' contents: the admin URL (its CA comes from the mounted
    // Secret, not a host path) and the key of a user holding exactly the
    // operator's IAM policy.
    let (key_id, secret_key) = moto_iam::suite_operator_key()
        .await
        .unwrap_or_else(|| (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")));
    let database_url = without_sslrootcert(&env("TENANTRY_DATABASE_URL"));
    let secrets: BTreeMap<(&str, &str), String> = [
        ((DATABASE_SECRET, "url"), database_url),
        ((AWS_SECRET, "AWS_ACCESS_KEY_ID"), key_id),
        ((AWS_SECRET, "AWS_SECRET_ACCESS_KEY"), secret_key),
    ]
    .into();
    let pod_name = format!("tenantry-{run_id}");
    let mut vars = BTreeMap::new();
    for entry in container["env"].as_array().expect("env") {
        let name = entry["name"].as_str().unwrap().to_string();
        let value = resolve_env(entry, &pod_name, OPERATOR_NAMESPACE, &secrets);
        vars.insert(name, value);
    }
    // The kubelet's own: where the API server is.
    let server = url::Url::parse(&env("TENANTRY_KUBE_SERVER")).expect("the API server URL");
    vars.insert(
        "KUBERNETES_SERVICE_HOST".into(),
        server.host_str().unwrap().into(),
    );
    vars.insert(
        "KUBERNETES_SERVICE_PORT".into(),
        server.port().unwrap().to_string(),
    );
    let args: Vec<String> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| expand(a.as_str().unwrap(), &vars))
        .collect();

    // The image's entrypoint, chrooted into its root filesystem, as the
    // image's user, with nothing of the test's environment.
    let log_dir = PathBuf::from(env("TENANTRY_LOCALENV_RUN_DIR"))
        .join("logs")
        .join("tests");
    std::fs::create_dir_all(&log_dir).unwrap();
    let log_path = log_dir.join(format!("{run_id}.log"));
    let log = std::fs::File::create(&log_path).expect("the operator's log");
    let entrypoint: Vec<String> = serde_json::from_value(settings["Entrypoint"].clone()).unwrap();
    let mut child = tokio::process::Command::new(host_program("chroot"))
        .arg(format!("--userspec={}", settings["User"].as_str().unwrap()))
        .arg(&rootfs)
        .args(&entrypoint)
        .args(&args)
        .env_clear()
        .envs(&vars)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("chroot into the image");

    // The chart's readiness probe answers, from the operator in the image
    // (which, say, panics at once when the image has no CA bundle).
    let metrics: SocketAddr = ([127, 0, 0, 1], metrics_port).into();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        if let Some(status) = child.try_wait().expect("the operator's state") {
            panic!(
                "the operator in the image exited ({status}); log:\n{}",
                tail(&std::fs::read_to_string(&log_path).unwrap_or_default(), 60)
            );
        }
        if http_status(metrics, "/readyz").await == Some(200) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the operator in the image is not ready on {metrics}/readyz after 60s; log:\n{}",
            tail(&std::fs::read_to_string(&log_path).unwrap_or_default(), 60)
        );
    }
    let op = Operator::adopt(child, run_id.clone(), log_path);
    let pid = op.pid().expect("the operator runs");
    let ids = credentials_of(pid);
    assert_eq!(ids["Uid"], "65532 65532 65532 65532", "{ids:?}");
    assert_eq!(ids["Gid"], "65532 65532 65532 65532", "{ids:?}");
    assert!(
        ids["Groups"].split_whitespace().all(|g| g == "65532"),
        "{ids:?}"
    );
    let root = std::fs::read_link(format!("/proc/{pid}/root")).expect("the process's root");
    assert_eq!(
        root, rootfs,
        "the operator runs inside the image's root filesystem"
    );

    // A Tenant for it: every backend over TLS, verify-full, with the
    // image's files only.
    let namespace = create_namespace(&client, "img").await;
    let name = unique_name("img");
    create_tenant(
        &client,
        &tenant_manifest(
            &op,
            &name,
            json!({"credentials": {"namespace": namespace},
                   "deletion": {"policy": "Delete", "gracePeriod": "1s"}}),
        ),
    )
    .await;
    wait_for_tenant(&client, &op, &name, READY_TIMEOUT, "Ready", is_ready).await;

    // And it takes the tenant away again.
    let tenants: Api<Tenant> = Api::all(client.clone());
    tenants
        .delete(&name, &DeleteParams::default())
        .await
        .expect("delete the Tenant");
    wait_for_tenant_gone(&client, &op, &name, READY_TIMEOUT).await;
}
