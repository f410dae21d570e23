//! The operator's identity in the tests: the ServiceAccount, ClusterRole and
//! leader-election Role of the Helm chart, with the chart's own rules files,
//! so every operator a test starts runs with exactly the rights a
//! `helm install` gives it (a missing rule shows up as a 403 in its log and a
//! failing test).
//!
//! Made once per test process: the objects with create-or-replace (test
//! processes and threads race), a token from the TokenRequest API, and a
//! kubeconfig with that token in the run directory that `Operator::spawn`
//! hands to the child. The tests themselves keep the admin client.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tenantry::api::Tenant;

use super::cluster::kube_client;
use super::env;

/// The release namespace of the chart in the tests.
pub const OPERATOR_NAMESPACE: &str = "tenantry-system";
/// The chart's ServiceAccount (and role) name in the tests.
pub const OPERATOR_NAME: &str = "tenantry-operator";
/// Where the tests' operators publish Events (`--event-namespace`).
pub const EVENT_NAMESPACE: &str = "kube-system";
/// How long the operator's token lasts: longer than any test run.
const TOKEN_SECONDS: i64 = 6 * 3600;

pub fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/tenantry")
}

/// The rules of one of the chart's rules files (`clusterrole-rules.yaml`,
/// `leader-election-rules.yaml`).
pub fn chart_rules(file: &str) -> Vec<PolicyRule> {
    let path = chart_dir().join("files").join(file);
    let text = std::fs::read_to_string(&path).expect("read the chart's rules file");
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

static KUBECONFIG: tokio::sync::OnceCell<PathBuf> = tokio::sync::OnceCell::const_new();

/// Makes the operator's identity (once per test process) and returns the
/// kubeconfig the operator runs with.
pub async fn ensure_operator_identity() -> &'static Path {
    KUBECONFIG.get_or_init(make_operator_identity).await
}

/// The kubeconfig of the operator; `ensure_operator_identity` made it.
pub fn operator_kubeconfig() -> &'static Path {
    KUBECONFIG
        .get()
        .expect("ensure_operator_identity() runs before an operator starts")
}

async fn make_operator_identity() -> PathBuf {
    let client = kube_client().await;
    let ns = OPERATOR_NAMESPACE;
    create_or_replace(&Api::<Namespace>::all(client.clone()), named(None, ns)).await;
    create_or_replace(
        &Api::<ServiceAccount>::namespaced(client.clone(), ns),
        named(Some(ns), OPERATOR_NAME),
    )
    .await;
    let subject = vec![Subject {
        kind: "ServiceAccount".into(),
        name: OPERATOR_NAME.into(),
        namespace: Some(ns.into()),
        ..Default::default()
    }];
    create_or_replace(
        &Api::<ClusterRole>::all(client.clone()),
        ClusterRole {
            metadata: named::<ClusterRole>(None, OPERATOR_NAME).metadata,
            rules: Some(chart_rules("clusterrole-rules.yaml")),
            ..Default::default()
        },
    )
    .await;
    create_or_replace(
        &Api::<ClusterRoleBinding>::all(client.clone()),
        ClusterRoleBinding {
            metadata: named::<ClusterRoleBinding>(None, OPERATOR_NAME).metadata,
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "ClusterRole".into(),
                name: OPERATOR_NAME.into(),
            },
            subjects: Some(subject.clone()),
        },
    )
    .await;
    // The lease in the operator's namespace, Events only in the namespace
    // the tests' operators publish to, as the chart binds them.
    bind_role(&client, ns, "leader-election", &subject).await;
    bind_role(&client, EVENT_NAMESPACE, "events", &subject).await;

    let kubeconfig = service_account_kubeconfig(&client, ns, OPERATOR_NAME).await;
    let path = PathBuf::from(env("TENANTRY_LOCALENV_RUN_DIR"))
        .join(format!("kubeconfig-operator-{}.yaml", std::process::id()));
    write_private(&path, &kubeconfig);

    // RBAC reaches the authorizer through an informer: wait until the
    // operator's identity may list Tenants (a 404 means the CRD is not
    // installed yet, which also means the request was authorized).
    let operator = client_from_kubeconfig(&kubeconfig).await;
    let tenants: Api<Tenant> = Api::all(operator);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        match tenants.list_metadata(&ListParams::default().limit(1)).await {
            Ok(_) => break,
            Err(kube::Error::Api(s)) if s.code == 404 => break,
            Err(e) if tokio::time::Instant::now() > deadline => {
                panic!("the operator's ServiceAccount cannot list Tenants after 30s: {e}")
            }
            Err(_) => {}
        }
    }
    path
}

/// A kubeconfig (YAML) for a ServiceAccount: the admin kubeconfig's server
/// and CA, and a token from the TokenRequest API. It holds a credential: never
/// print it.
pub async fn service_account_kubeconfig(client: &Client, namespace: &str, name: &str) -> String {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(TOKEN_SECONDS),
            bound_object_ref: None,
        },
        ..Default::default()
    };
    let token = accounts
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for {namespace}/{name}: {e}"))
        .status
        .expect("TokenRequest status")
        .token;
    let admin = Kubeconfig::read_from(env("KUBECONFIG")).expect("read the admin kubeconfig");
    let context = admin.current_context.as_deref().expect("a current context");
    let cluster_name = admin
        .contexts
        .iter()
        .find(|c| c.name == context)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone())
        .expect("the current context's cluster");
    let cluster = admin
        .clusters
        .iter()
        .find(|c| c.name == cluster_name)
        .and_then(|c| c.cluster.as_ref())
        .expect("the admin kubeconfig's cluster");
    let mut cluster_yaml = serde_json::json!({"server": cluster.server});
    if let Some(data) = &cluster.certificate_authority_data {
        cluster_yaml["certificate-authority-data"] = data.clone().into();
    }
    if let Some(file) = &cluster.certificate_authority {
        cluster_yaml["certificate-authority"] = file.clone().into();
    }
    let user = format!("system:serviceaccount:{namespace}:{name}");
    serde_yaml::to_string(&serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": cluster_yaml}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
        "current-context": "local",
    }))
    .expect("kubeconfig YAML")
}

pub async fn client_from_kubeconfig(yaml: &str) -> Client {
    let kubeconfig = Kubeconfig::from_yaml(yaml).expect("parse the kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("client config");
    Client::try_from(config).expect("client")
}

/// A Role `<operator>-<what>` in `namespace` with the chart's
/// `files/<what>-rules.yaml`, bound to `subject`.
async fn bind_role(client: &Client, namespace: &str, what: &str, subject: &[Subject]) {
    let name = format!("{OPERATOR_NAME}-{what}");
    create_or_replace(
        &Api::<Role>::namespaced(client.clone(), namespace),
        Role {
            metadata: named::<Role>(Some(namespace), &name).metadata,
            rules: Some(chart_rules(&format!("{what}-rules.yaml"))),
        },
    )
    .await;
    create_or_replace(
        &Api::<RoleBinding>::namespaced(client.clone(), namespace),
        RoleBinding {
            metadata: named::<RoleBinding>(Some(namespace), &name).metadata,
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "Role".into(),
                name,
            },
            subjects: Some(subject.to_vec()),
        },
    )
    .await;
}

/// The API server's URL in the operator's kubeconfig.
pub fn api_server_url() -> String {
    let kubeconfig = Kubeconfig::read_from(operator_kubeconfig()).expect("read the kubeconfig");
    kubeconfig.clusters[0]
        .cluster
        .as_ref()
        .and_then(|c| c.server.clone())
        .expect("the kubeconfig names a server")
}

/// A copy of the operator's kubeconfig that reaches the API server at
/// `server` instead (e.g. through a proxy), written next to it.
pub fn operator_kubeconfig_with_server(server: &str, tag: &str) -> PathBuf {
    let mut kubeconfig = Kubeconfig::read_from(operator_kubeconfig()).expect("read the kubeconfig");
    for cluster in &mut kubeconfig.clusters {
        if let Some(c) = cluster.cluster.as_mut() {
            c.server = Some(server.to_string());
        }
    }
    let path = operator_kubeconfig().with_extension(format!("{tag}.yaml"));
    write_private(
        &path,
        &serde_yaml::to_string(&kubeconfig).expect("kubeconfig YAML"),
    );
    path
}

/// Writes a file only its owner can read, atomically.
fn write_private(path: &Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .expect("create the kubeconfig file");
    file.write_all(text.as_bytes())
        .expect("write the kubeconfig");
    std::fs::rename(&tmp, path).expect("move the kubeconfig in place");
}

/// An object with only a name (and namespace), e.g. a ServiceAccount.
pub fn named<K: Resource + Default>(namespace: Option<&str>, name: &str) -> K {
    let mut object = K::default();
    *object.meta_mut() = ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(Into::into),
        ..Default::default()
    };
    object
}

/// Creates the object, or replaces it when it exists; races with other test
/// processes (409) are retried.
pub async fn create_or_replace<K>(api: &Api<K>, mut object: K)
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let name = object.name_any();
    for _ in 0..10 {
        let result = match api.get_opt(&name).await.expect("read object") {
            None => api.create(&PostParams::default(), &object).await,
            Some(existing) => {
                object.meta_mut().resource_version = existing.resource_version();
                api.replace(&name, &PostParams::default(), &object).await
            }
        };
        match result {
            Ok(_) => return,
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => panic!("create or replace {name}: {e}"),
        }
    }
    panic!("create or replace {name}: still conflicting after 10 tries");
}
