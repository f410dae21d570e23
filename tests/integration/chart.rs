//! The Helm chart `charts/tenantry`: its CRDs are the generated ones, it
//! renders to manifests the real API server accepts, its Deployment names only
//! options the binary has, its RBAC keeps tenants' workloads away from
//! Tenants, and its Argo CD health check reads real Tenants right.
//!
//! Every other integration test already runs its operator under the chart's
//! ServiceAccount and rules (support/rbac.rs), which is what proves the
//! ClusterRole covers every call the operator makes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams};
use kube::discovery::{self, Scope};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tenantry::api::{Tenant, TenantPhase};

use crate::support::cluster::*;
use crate::support::helm;
use crate::support::rbac::{self, chart_dir, chart_rules, create_or_replace, named};
use crate::support::unique_name;

const TIMEOUT: Duration = Duration::from_secs(90);

/// Variables the operator reads that are not its own flags: the pod name
/// for the audit trail, the namespace (for `$(POD_NAMESPACE)`), the AWS SDK's.
const OTHER_ENV: &[&str] = &[
    "POD_NAME",
    "POD_NAMESPACE",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
];

/// What `helm install --set database.existingSecret=...,aws.region=...` needs.
fn minimal_values() -> Value {
    json!({"database": {"existingSecret": "tenantry-db"}, "aws": {"region": "eu-west-1"}})
}

/// Static AWS credentials, monitoring, sharding and two classes.
fn full_values() -> Value {
    json!({
        "database": {
            "existingSecret": "tenantry-db", "urlKey": "admin-url", "tenantHost": "db.example",
            "sslMode": "verify-full", "caSecret": {"name": "rds-ca", "key": "global-bundle.pem"},
        },
        "aws": {
            "region": "eu-west-1",
            "endpointUrl": "https://s3.example",
            "credentials": {"existingSecret": "tenantry-aws"},
        },
        "bucketPrefix": "acme-tenants",
        "eventNamespace": "kube-system",
        "sharedTables": ["public.orders:tenant_id", "public.invoices:tenant_id"],
        "sharding": {"enabled": true, "count": 3, "index": 1},
        "extraEnv": [{"name": "TENANTRY_AUDIT_ACTOR", "value": "platform"}],
        "metrics": {
            "serviceMonitor": {"enabled": true, "labels": {"release": "prom"}},
            "prometheusRule": {"enabled": true},
        },
        "classes": [
            {"name": "standard", "default": true, "spec": {
                "postgres": {"adminUrlSecretRef": {"namespace": "tenantry-system", "name": "pg-a", "key": "url"},
                             "tenantHost": "pg-a.example", "tenantPort": 5432},
                "isolation": {"defaultMode": "Schema", "allowOverride": true},
                "sharedTables": ["public.orders:tenant_id"],
                "aws": {"region": "eu-west-1", "bucketPrefix": "acme-std"},
                "deletion": {"policy": "Retain", "gracePeriod": "72h"},
                "probeInterval": "5m",
            }},
            {"name": "dedicated", "spec": {
                "postgres": {"adminUrlSecretRef": {"namespace": "tenantry-system", "name": "pg-b", "key": "url"},
                             "sslMode": "verify-full",
                             "caSecretRef": {"namespace": "tenantry-system", "name": "pg-b-ca"}},
                "isolation": {"defaultMode": "Database", "allowOverride": false},
                "deletion": {"policy": "Delete", "gracePeriod": "168h"},
            }},
        ],
    })
}

fn render(release: &str, namespace: &str, values: &Value) -> Vec<(String, Value)> {
    helm::template(release, namespace, values).unwrap_or_else(|e| panic!("helm template: {e}"))
}

fn kinds(docs: &[(String, Value)]) -> BTreeMap<String, usize> {
    let mut kinds = BTreeMap::new();
    for (_, d) in docs {
        let key = format!(
            "{} {}",
            d["apiVersion"].as_str().unwrap(),
            d["kind"].as_str().unwrap()
        );
        *kinds.entry(key).or_default() += 1;
    }
    kinds
}

fn one<'a>(docs: &'a [(String, Value)], kind: &str) -> &'a Value {
    let found: Vec<_> = docs.iter().filter(|(_, d)| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "exactly one {kind}");
    &found[0].1
}

/// The one document of `kind` named `name`.
fn named_doc<'a>(docs: &'a [(String, Value)], kind: &str, name: &str) -> &'a Value {
    let found: Vec<_> = docs
        .iter()
        .filter(|(_, d)| d["kind"] == kind && d["metadata"]["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "exactly one {kind} {name}");
    &found[0].1
}

fn env_of(deployment: &Value) -> BTreeMap<String, Value> {
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e.clone()))
        .collect()
}

/// The flags and environment variables `tenantry run` accepts, from its help.
fn accepted_options() -> BTreeSet<String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tenantry"))
        .args(["run", "--help"])
        .output()
        .expect("run tenantry run --help");
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let mut options = BTreeSet::new();
    for word in help.split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']') {
        if let Some(flag) = word.strip_prefix("--") {
            let flag = flag.split('=').next().unwrap();
            if !flag.is_empty() {
                options.insert(format!("--{flag}"));
            }
        }
    }
    for part in help.split("[env: ").skip(1) {
        let name: String = part
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        options.insert(name);
    }
    options
}

/// Checks that the Deployment passes only options the binary accepts.
fn assert_deployment_options_exist(deployment: &Value) {
    let accepted = accepted_options();
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "run", "the operator runs `tenantry run`");
    for arg in &args[1..] {
        let flag = arg.split('=').next().unwrap();
        assert!(
            accepted.contains(flag),
            "the Deployment passes {flag}, which `tenantry run` does not accept"
        );
    }
    for name in env_of(deployment).keys() {
        let known = if name.starts_with("TENANTRY_") {
            accepted.contains(name)
        } else {
            OTHER_ENV.contains(&name.as_str())
        };
        assert!(
            known,
            "the Deployment sets {name}, which tenantry does not read"
        );
    }
}

#[test]
fn the_charts_crds_are_the_generated_crds() {
    let chart = std::fs::read_to_string(chart_dir().join("crds/tenantry.yaml")).unwrap();
    assert!(
        chart == tenantry::api::crds_yaml(),
        "charts/tenantry/crds/tenantry.yaml is stale: run \
         `cargo run -- crd > charts/tenantry/crds/tenantry.yaml`"
    );
}

/// What `helm lint --strict` says of the chart with the values the tests
/// install it with: nothing it would fail on.
#[test]
fn helm_lint_strict_passes_with_the_minimal_and_the_full_values() {
    for (what, values) in [("minimal", minimal_values()), ("full", full_values())] {
        helm::lint(&values).unwrap_or_else(|e| panic!("helm lint --strict, {what} values: {e}"));
    }
}

/// values.schema.json refuses them, naming the value (as a JSON pointer).
#[test]
fn the_chart_needs_a_database_secret_and_a_region() {
    let err = helm::template("tenantry", "tenantry-system", &json!({})).unwrap_err();
    assert!(err.contains("/database/existingSecret"), "{err}");
    let err = helm::template(
        "tenantry",
        "tenantry-system",
        &json!({"database": {"existingSecret": "db"}}),
    )
    .unwrap_err();
    assert!(err.contains("/aws/region"), "{err}");
    assert!(!err.contains("existingSecret"), "{err}");
}

/// values.schema.json: a value of the wrong type, outside its enum, or
/// unknown (a typo) is refused by `helm template` (and so by `helm install`),
/// and the error names it.
#[test]
fn the_schema_refuses_wrongly_typed_values_naming_them() {
    for (value, named) in [
        (json!({"replicaCount": "two"}), "/replicaCount"),
        (json!({"logFormat": "xml"}), "/logFormat"),
        (json!({"unrepairableDrift": "ignore"}), "/unrepairableDrift"),
        (json!({"database": {"sslMode": "on"}}), "/database/sslMode"),
        (json!({"metrics": {"port": "http"}}), "/metrics/port"),
        (json!({"podLabels": {"team": 7}}), "/podLabels/team"),
        (json!({"extraArgs": "--retry-attempts=8"}), "/extraArgs"),
        (json!({"image": {"digest": "latest"}}), "/image/digest"),
        (
            json!({"eventNamespace": "Not A Namespace"}),
            "/eventNamespace",
        ),
        (
            json!({"podDisruptionBudget": {"enabled": "yes"}}),
            "/podDisruptionBudget/enabled",
        ),
        (json!({"replicas": 3}), "replicas"),
        (json!({"rbac": {"craete": false}}), "craete"),
    ] {
        let mut values = minimal_values();
        helm::merge(&mut values, &value);
        let err = helm::template("tenantry", "tenantry-system", &values)
            .err()
            .unwrap_or_else(|| panic!("helm template accepted {value}"));
        assert!(err.contains("schema"), "{value}: {err}");
        assert!(
            err.contains(named),
            "{value}: the error names {named}: {err}"
        );
    }
    // The same values with the right types are accepted.
    let mut values = minimal_values();
    helm::merge(
        &mut values,
        &json!({"replicaCount": 3, "logFormat": "text", "unrepairableDrift": "report-only",
                "database": {"sslMode": "verify-full"}, "podDisruptionBudget": {"enabled": true},
                "image": {"digest": format!("sha256:{}", "a".repeat(64))}}),
    );
    render("tenantry", "tenantry-system", &values);
}

#[test]
fn the_default_chart_is_a_restricted_leader_elected_deployment_with_least_privilege() {
    let docs = render("tenantry", "tenantry-system", &minimal_values());
    let expected: BTreeMap<String, usize> = [
        ("v1 ServiceAccount", 1),
        ("v1 Service", 1),
        ("apps/v1 Deployment", 1),
        ("rbac.authorization.k8s.io/v1 ClusterRole", 1),
        ("rbac.authorization.k8s.io/v1 ClusterRoleBinding", 1),
        ("rbac.authorization.k8s.io/v1 Role", 2),
        ("rbac.authorization.k8s.io/v1 RoleBinding", 2),
        ("policy/v1 PodDisruptionBudget", 1),
    ]
    .into_iter()
    .map(|(k, n)| (k.to_string(), n))
    .collect();
    assert_eq!(kinds(&docs), expected);

    // The RBAC is the rules files the tests run every operator under.
    let cluster_role = one(&docs, "ClusterRole");
    assert_eq!(
        cluster_role["rules"],
        serde_json::to_value(chart_rules("clusterrole-rules.yaml")).unwrap()
    );
    // Leases and Events each in one namespace only, never cluster-wide.
    for (role, namespace, rules) in [
        (
            "tenantry-leader-election",
            "tenantry-system",
            "leader-election-rules.yaml",
        ),
        ("tenantry-events", "default", "events-rules.yaml"),
    ] {
        let found = named_doc(&docs, "Role", role);
        assert_eq!(found["metadata"]["namespace"], namespace, "{role}");
        assert_eq!(
            found["rules"],
            serde_json::to_value(chart_rules(rules)).unwrap(),
            "{role}"
        );
        let binding = named_doc(&docs, "RoleBinding", role);
        assert_eq!(binding["metadata"]["namespace"], namespace, "{role}");
        assert_eq!(binding["roleRef"]["name"], role);
    }
    assert!(
        !cluster_role["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["resources"] == json!(["events"])),
        "no Events cluster-wide"
    );
    // A separate event namespace gets the Events Role; the lease stays.
    let mut values = minimal_values();
    helm::merge(&mut values, &json!({"eventNamespace": "kube-system"}));
    let docs_elsewhere = render("tenantry", "tenantry-system", &values);
    let events = named_doc(&docs_elsewhere, "Role", "tenantry-events");
    assert_eq!(events["metadata"]["namespace"], "kube-system");
    let events = named_doc(&docs_elsewhere, "RoleBinding", "tenantry-events");
    assert_eq!(events["metadata"]["namespace"], "kube-system");
    assert_eq!(
        events["subjects"][0]["namespace"], "tenantry-system",
        "the ServiceAccount stays in the release namespace"
    );
    for (_, d) in &docs {
        if let Some(subjects) = d["subjects"].as_array() {
            assert_eq!(
                subjects,
                &vec![
                    json!({"kind": "ServiceAccount", "name": "tenantry", "namespace": "tenantry-system"})
                ]
            );
        }
    }
    // No wildcard anywhere, no write on Tenants' spec beyond patch.
    for rule in chart_rules("clusterrole-rules.yaml") {
        assert!(!rule.verbs.iter().any(|v| v == "*"));
        assert!(!rule.resources.unwrap_or_default().iter().any(|r| r == "*"));
    }

    let sa = one(&docs, "ServiceAccount");
    assert!(
        sa["metadata"]["annotations"].is_null(),
        "no IRSA unless asked"
    );

    let deployment = one(&docs, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(pod["serviceAccountName"], "tenantry");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let sc = &container["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert!(container["resources"]["requests"].is_object());
    assert!(container["resources"]["limits"].is_object());
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["port"], "metrics");
    assert_eq!(container["ports"][0]["containerPort"], 8080);
    assert_eq!(container["image"], "ghcr.io/tenantry/tenantry:0.1.0");
    let args = container["args"].as_array().unwrap();
    assert!(args.contains(&json!("--leader-elect")));
    assert!(args.contains(&json!("--leader-election-namespace=$(POD_NAMESPACE)")));
    // client-go's leader-election timings (the binary's own are shorter).
    for flag in [
        "--leader-election-lease-duration=15s",
        "--leader-election-renew-deadline=10s",
        "--leader-election-retry-period=2s",
    ] {
        assert!(args.contains(&json!(flag)), "{flag} in {args:?}");
    }
    assert_eq!(pod["terminationGracePeriodSeconds"], 30);
    for absent in [
        "priorityClassName",
        "topologySpreadConstraints",
        "nodeSelector",
    ] {
        assert!(pod[absent].is_null(), "no {absent} unless asked");
    }

    let env = env_of(deployment);
    assert_eq!(
        env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(
        env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(
        env["TENANTRY_DATABASE_URL"]["valueFrom"]["secretKeyRef"],
        json!({"name": "tenantry-db", "key": "url"})
    );
    assert!(
        env["TENANTRY_DATABASE_URL"].get("value").is_none(),
        "the URL only by reference"
    );
    assert_eq!(env["AWS_REGION"]["value"], "eu-west-1");
    assert_eq!(env["TENANTRY_EVENT_NAMESPACE"]["value"], "default");
    assert_eq!(env["TENANTRY_LOG"]["value"], "info");
    assert_eq!(env["TENANTRY_LOG_FORMAT"]["value"], "json");
    assert_eq!(env["TENANTRY_METRICS_ADDR"]["value"], "0.0.0.0:8080");
    assert_eq!(
        env["TENANTRY_LEADER_ELECTION_LEASE_NAME"]["value"],
        "tenantry"
    );
    for absent in [
        "AWS_ACCESS_KEY_ID",
        "AWS_ENDPOINT_URL",
        "TENANTRY_SHARD_COUNT",
    ] {
        assert!(!env.contains_key(absent), "{absent} only when asked for");
    }
    assert_deployment_options_exist(deployment);

    let service = one(&docs, "Service");
    assert_eq!(service["spec"]["ports"][0]["port"], 8080);
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["selector"]["matchLabels"]
    );
}

#[test]
fn irsa_is_an_annotation_of_the_service_account_and_no_static_keys() {
    let mut values = minimal_values();
    helm::merge(
        &mut values,
        &json!({"serviceAccount": {"annotations": {
            "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/tenantry"}}}),
    );
    let docs = render("prod", "platform", &values);
    let sa = one(&docs, "ServiceAccount");
    assert_eq!(sa["metadata"]["name"], "prod-tenantry");
    assert_eq!(
        sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"],
        "arn:aws:iam::123456789012:role/tenantry"
    );
    let env = env_of(one(&docs, "Deployment"));
    assert!(!env.contains_key("AWS_ACCESS_KEY_ID"));
    assert!(!env.contains_key("AWS_SECRET_ACCESS_KEY"));
}

#[test]
fn static_credentials_monitoring_sharding_and_classes_render() {
    let docs = render("tenantry", "tenantry-system", &full_values());
    let kinds = kinds(&docs);
    assert_eq!(kinds["monitoring.coreos.com/v1 ServiceMonitor"], 1);
    assert_eq!(kinds["monitoring.coreos.com/v1 PrometheusRule"], 1);
    assert_eq!(kinds["tenantry.dev/v1alpha1 TenantClass"], 2);

    let deployment = one(&docs, "Deployment");
    let env = env_of(deployment);
    assert_eq!(
        env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"],
        json!({"name": "tenantry-aws", "key": "AWS_ACCESS_KEY_ID"})
    );
    assert_eq!(
        env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"],
        json!({"name": "tenantry-aws", "key": "AWS_SECRET_ACCESS_KEY"})
    );
    assert_eq!(env["AWS_ENDPOINT_URL"]["value"], "https://s3.example");
    assert_eq!(
        env["TENANTRY_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["key"],
        "admin-url"
    );
    assert_eq!(env["TENANTRY_TENANT_DATABASE_HOST"]["value"], "db.example");
    assert_eq!(env["TENANTRY_BUCKET_PREFIX"]["value"], "acme-tenants");
    assert_eq!(env["TENANTRY_EVENT_NAMESPACE"]["value"], "kube-system");
    assert_eq!(
        env["TENANTRY_SHARED_TABLES"]["value"],
        "public.orders:tenant_id,public.invoices:tenant_id"
    );
    assert_eq!(env["TENANTRY_SHARD_COUNT"]["value"], "3");
    assert_eq!(env["TENANTRY_SHARD_INDEX"]["value"], "1");
    assert_eq!(env["TENANTRY_AUDIT_ACTOR"]["value"], "platform");
    // The CA bundle: its Secret mounted read-only, the file named by the flag.
    assert_eq!(env["TENANTRY_DATABASE_SSL_MODE"]["value"], "verify-full");
    assert_eq!(
        env["TENANTRY_DATABASE_CA_FILE"]["value"],
        "/etc/tenantry/database-ca/global-bundle.pem"
    );
    let pod = &deployment["spec"]["template"]["spec"];
    assert!(
        pod["volumes"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "database-ca", "secret": {"secretName": "rds-ca"}})),
        "{pod}"
    );
    assert!(
        pod["containers"][0]["volumeMounts"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "database-ca", "mountPath": "/etc/tenantry/database-ca", "readOnly": true})),
        "{pod}"
    );
    assert_deployment_options_exist(deployment);

    let monitor = one(&docs, "ServiceMonitor");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prom");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"],
        one(&docs, "Service")["spec"]["selector"]
    );

    let rules = &one(&docs, "PrometheusRule")["spec"]["groups"][0]["rules"];
    let alerts: BTreeMap<&str, &Value> = rules
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["alert"].as_str().unwrap(), r))
        .collect();
    assert_eq!(
        alerts["TenantryIsolationNotEnforced"]["expr"],
        r#"tenantry_tenant_isolation{state!="Enforced"} > 0"#
    );
    assert_eq!(alerts["TenantryIsolationNotEnforced"]["for"], "10m");
    assert_eq!(
        alerts["TenantryTenantFailed"]["expr"],
        r#"tenantry_tenants{phase="Failed"} > 0"#
    );
    assert!(
        alerts["TenantryReconcileErrors"]["expr"]
            .as_str()
            .unwrap()
            .contains("rate(tenantry_reconcile_errors_total[10m])")
    );
    // Prometheus templates pass through Helm's templating untouched.
    assert!(
        alerts["TenantryIsolationNotEnforced"]["annotations"]["description"]
            .as_str()
            .unwrap()
            .contains("{{ $labels.state }}")
    );

    let classes: Vec<&Value> = docs
        .iter()
        .map(|(_, d)| d)
        .filter(|d| d["kind"] == "TenantClass")
        .collect();
    let standard = classes
        .iter()
        .find(|c| c["metadata"]["name"] == "standard")
        .unwrap();
    let dedicated = classes
        .iter()
        .find(|c| c["metadata"]["name"] == "dedicated")
        .unwrap();
    assert_eq!(
        standard["metadata"]["annotations"]["tenantry.dev/is-default-class"],
        "true"
    );
    assert!(dedicated["metadata"]["annotations"].is_null());
    assert!(
        standard["metadata"]["namespace"].is_null(),
        "cluster-scoped"
    );
    assert_eq!(standard["spec"], full_values()["classes"][0]["spec"]);
    assert_eq!(dedicated["spec"], full_values()["classes"][1]["spec"]);
}

/// Tenants are cluster-scoped, and current API servers refuse Events about
/// cluster-scoped objects in any namespace but `default`: the chart's default
/// event namespace is `default`, where its Events Role lands, whatever the
/// release namespace.
#[test]
fn events_about_tenants_go_to_the_default_namespace_by_default() {
    let docs = render("tenantry", "tenantry-system", &minimal_values());
    let env = env_of(one(&docs, "Deployment"));
    assert_eq!(env["TENANTRY_EVENT_NAMESPACE"]["value"], "default");
    for kind in ["Role", "RoleBinding"] {
        let events = named_doc(&docs, kind, "tenantry-events");
        assert_eq!(events["metadata"]["namespace"], "default", "{kind}");
    }
    let binding = named_doc(&docs, "RoleBinding", "tenantry-events");
    assert_eq!(binding["subjects"][0]["namespace"], "tenantry-system");
    // An empty value still means the release namespace.
    let mut values = minimal_values();
    helm::merge(&mut values, &json!({"eventNamespace": ""}));
    let docs = render("tenantry", "tenantry-system", &values);
    assert_eq!(
        env_of(one(&docs, "Deployment"))["TENANTRY_EVENT_NAMESPACE"]["value"],
        "tenantry-system"
    );
    assert_eq!(
        named_doc(&docs, "Role", "tenantry-events")["metadata"]["namespace"],
        "tenantry-system"
    );
}

/// Helm allows release names of 53 characters; every name the chart makes
/// from one stays a DNS label (63 characters, no trailing `-`), and the
/// suffixed names (`-events`, `-leader-election`, `-metrics`) keep their
/// suffix, so they never collide.
#[test]
fn every_object_name_fits_in_63_characters() {
    let long_release = format!("r{}", "e".repeat(52));
    // Cut at 63 it would end in "-": that goes too.
    let long_override = format!("{}-xxxxxxx", "o".repeat(62));
    for (release, values, full_name) in [
        (
            long_release.as_str(),
            minimal_values(),
            format!("{long_release}-tenantry"),
        ),
        (
            "tenantry",
            json!({"database": {"existingSecret": "db"}, "aws": {"region": "eu-west-1"},
                   "fullnameOverride": long_override, "networkPolicy": {"enabled": true}}),
            "o".repeat(62),
        ),
    ] {
        let docs = render(release, "tenantry-system", &values);
        let mut names = BTreeSet::new();
        for (file, d) in &docs {
            let name = d["metadata"]["name"].as_str().unwrap();
            assert!(name.len() <= 63, "{file}: {name} is {} long", name.len());
            assert!(!name.ends_with('-'), "{file}: {name}");
            assert!(
                names.insert((d["kind"].as_str().unwrap().to_string(), name.to_string())),
                "{file}: two {} named {name}",
                d["kind"]
            );
        }
        let role_names: Vec<&str> = docs
            .iter()
            .filter(|(_, d)| d["kind"] == "Role")
            .map(|(_, d)| d["metadata"]["name"].as_str().unwrap())
            .collect();
        assert!(
            role_names.iter().any(|n| n.ends_with("-events")),
            "{role_names:?}"
        );
        assert!(
            role_names.iter().any(|n| n.ends_with("-leader-election")),
            "{role_names:?}"
        );
        let service = one(&docs, "Service")["metadata"]["name"].as_str().unwrap();
        assert!(service.ends_with("-metrics"), "{service}");
        let deployment = one(&docs, "Deployment");
        assert_eq!(deployment["metadata"]["name"], full_name);
        assert_eq!(
            deployment["spec"]["template"]["spec"]["serviceAccountName"],
            full_name
        );
        // The longest suffix: the full name is cut, the suffix kept.
        let lease_role = format!(
            "{}-leader-election",
            &full_name[..63 - "-leader-election".len()]
        );
        named_doc(&docs, "Role", &lease_role);
    }
}

/// What users of CNPG's and cert-manager's charts set on the pod: labels,
/// annotations, priority, placement, extra arguments and volumes (a CA bundle
/// for PostgreSQL TLS), a grace period and an image pinned by digest.
#[test]
fn pod_placement_extra_args_volumes_and_digest_render() {
    let digest = format!("sha256:{}", "0123456789abcdef".repeat(4));
    let mut values = minimal_values();
    helm::merge(
        &mut values,
        &json!({
            "image": {"tag": "9.9.9", "digest": digest},
            "podLabels": {"team": "platform", "app.kubernetes.io/name": "hijack"},
            "podAnnotations": {"example.com/scrape": "true"},
            "priorityClassName": "system-cluster-critical",
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "platform", "effect": "NoSchedule"}],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}},
            "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "tenantry"}}}],
            "terminationGracePeriodSeconds": 120,
            "extraArgs": ["--retry-attempts=8", "--retry-max-delay=30s"],
            "extraVolumes": [{"name": "pg-ca", "configMap": {"name": "pg-ca-bundle"}}],
            "extraVolumeMounts": [{"name": "pg-ca", "mountPath": "/etc/pg-ca", "readOnly": true}],
        }),
    );
    let docs = render("tenantry", "tenantry-system", &values);
    let deployment = one(&docs, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(
        container["image"],
        format!("ghcr.io/tenantry/tenantry@{digest}"),
        "the digest wins over the tag"
    );
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert_eq!(labels["team"], "platform");
    assert_eq!(
        labels["app.kubernetes.io/name"], "tenantry",
        "the selector stays the chart's"
    );
    assert_eq!(
        deployment["spec"]["template"]["metadata"]["annotations"]["example.com/scrape"],
        "true"
    );
    assert_eq!(pod["priorityClassName"], "system-cluster-critical");
    assert_eq!(pod["nodeSelector"], values["nodeSelector"]);
    assert_eq!(pod["tolerations"], values["tolerations"]);
    assert_eq!(pod["affinity"], values["affinity"]);
    assert_eq!(
        pod["topologySpreadConstraints"],
        values["topologySpreadConstraints"]
    );
    assert_eq!(pod["terminationGracePeriodSeconds"], 120);
    let args = container["args"].as_array().unwrap();
    assert_eq!(
        &args[args.len() - 2..],
        &[json!("--retry-attempts=8"), json!("--retry-max-delay=30s")],
        "extraArgs come last"
    );
    assert!(
        pod["volumes"]
            .as_array()
            .unwrap()
            .contains(&values["extraVolumes"][0])
    );
    assert!(
        container["volumeMounts"]
            .as_array()
            .unwrap()
            .contains(&values["extraVolumeMounts"][0])
    );
    assert_deployment_options_exist(deployment);
}

/// `serviceAccount.create: false` runs the operator as an existing
/// ServiceAccount; `rbac.create: false` renders no role or binding at all.
#[test]
fn the_service_account_and_rbac_can_be_left_to_the_user() {
    let mut values = minimal_values();
    helm::merge(
        &mut values,
        &json!({"serviceAccount": {"create": false, "name": "platform-operator"}}),
    );
    let docs = render("tenantry", "tenantry-system", &values);
    assert!(!kinds(&docs).keys().any(|k| k.ends_with(" ServiceAccount")));
    let deployment = one(&docs, "Deployment");
    assert_eq!(
        deployment["spec"]["template"]["spec"]["serviceAccountName"],
        "platform-operator"
    );
    for (file, d) in &docs {
        if let Some(subjects) = d["subjects"].as_array() {
            assert_eq!(subjects[0]["name"], "platform-operator", "{file}");
        }
    }
    // A custom name for a ServiceAccount the chart creates.
    let mut values = minimal_values();
    helm::merge(&mut values, &json!({"serviceAccount": {"name": "op"}}));
    let docs = render("tenantry", "tenantry-system", &values);
    assert_eq!(one(&docs, "ServiceAccount")["metadata"]["name"], "op");
    assert_eq!(
        one(&docs, "ClusterRoleBinding")["subjects"][0]["name"],
        "op"
    );

    let mut values = minimal_values();
    helm::merge(&mut values, &json!({"rbac": {"create": false}}));
    let docs = render("tenantry", "tenantry-system", &values);
    let rendered = kinds(&docs);
    assert!(
        !rendered
            .keys()
            .any(|k| k.starts_with("rbac.authorization.k8s.io/")),
        "{rendered:?}"
    );
    assert_eq!(rendered["v1 ServiceAccount"], 1);
    assert_eq!(rendered["apps/v1 Deployment"], 1);
}

/// A PodDisruptionBudget (maxUnavailable 1) whenever there is more than one
/// replica: policy/v1 where the API server serves it, policy/v1beta1 on
/// Kubernetes 1.20 (what Helm learns from the API server, given here as
/// `--kube-version` / `--api-versions`).
#[test]
fn a_pod_disruption_budget_is_policy_v1_or_v1beta1_as_the_api_server_serves_it() {
    let values = minimal_values();
    let pdb_of = |docs: &[(String, Value)]| -> Option<Value> {
        let found: Vec<&Value> = docs
            .iter()
            .map(|(_, d)| d)
            .filter(|d| d["kind"] == "PodDisruptionBudget")
            .collect();
        assert!(found.len() <= 1);
        found.first().map(|d| (*d).clone())
    };
    let docs = render("tenantry", "tenantry-system", &values);
    let pdb = pdb_of(&docs).expect("a PDB for two replicas");
    assert_eq!(pdb["apiVersion"], "policy/v1");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        one(&docs, "Deployment")["spec"]["selector"]["matchLabels"]
    );
    for (args, api_version) in [
        (vec!["--kube-version", "1.20.2"], "policy/v1beta1"),
        (
            vec![
                "--kube-version",
                "1.20.2",
                "--api-versions",
                "policy/v1/PodDisruptionBudget",
            ],
            "policy/v1",
        ),
        (vec!["--kube-version", "1.21.0"], "policy/v1"),
    ] {
        let docs = helm::template_with("tenantry", "tenantry-system", &values, &args)
            .unwrap_or_else(|e| panic!("helm template {args:?}: {e}"));
        assert_eq!(
            pdb_of(&docs).unwrap()["apiVersion"],
            api_version,
            "{args:?}"
        );
    }
    for (overrides, rendered) in [
        (json!({"replicaCount": 1}), false),
        (
            json!({"replicaCount": 1, "podDisruptionBudget": {"enabled": true}}),
            true,
        ),
        (
            json!({"replicaCount": 3, "podDisruptionBudget": {"enabled": false}}),
            false,
        ),
        (
            json!({"replicaCount": 3, "podDisruptionBudget": {"maxUnavailable": "50%"}}),
            true,
        ),
    ] {
        let mut values = minimal_values();
        helm::merge(&mut values, &overrides);
        let pdb = pdb_of(&render("tenantry", "tenantry-system", &values));
        assert_eq!(pdb.is_some(), rendered, "{overrides}");
        if let Some(max) = overrides["podDisruptionBudget"].get("maxUnavailable") {
            assert_eq!(&pdb.unwrap()["spec"]["maxUnavailable"], max);
        }
    }
}

/// `networkPolicy.enabled`: only the metrics port is reachable (from
/// `metricsFrom` when given); egress stays open unless rules are given.
#[test]
fn the_network_policy_admits_only_the_metrics_port() {
    let docs = render("tenantry", "tenantry-system", &minimal_values());
    assert!(
        !docs.iter().any(|(_, d)| d["kind"] == "NetworkPolicy"),
        "off by default"
    );

    let mut values = minimal_values();
    helm::merge(&mut values, &json!({"networkPolicy": {"enabled": true}}));
    let docs = render("tenantry", "tenantry-system", &values);
    let policy = one(&docs, "NetworkPolicy");
    let spec = &policy["spec"];
    assert_eq!(
        spec["podSelector"]["matchLabels"],
        one(&docs, "Deployment")["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(spec["policyTypes"], json!(["Ingress"]), "egress open");
    assert_eq!(
        spec["ingress"],
        json!([{"ports": [{"port": "metrics", "protocol": "TCP"}]}])
    );
    assert!(spec["egress"].is_null());

    let monitoring = json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]);
    let egress =
        json!([{"ports": [{"port": 443, "protocol": "TCP"}, {"port": 5432, "protocol": "TCP"}]}]);
    helm::merge(
        &mut values,
        &json!({"networkPolicy": {"metricsFrom": monitoring, "egress": egress}}),
    );
    let docs = render("tenantry", "tenantry-system", &values);
    let spec = &one(&docs, "NetworkPolicy")["spec"];
    assert_eq!(spec["policyTypes"], json!(["Ingress", "Egress"]));
    assert_eq!(spec["ingress"][0]["from"], monitoring);
    assert_eq!(spec["egress"], egress);
}

/// Installs every CRD of `tenantry crd` (the Tenant CRD as the other tests
/// do, the rest here) and waits until they are served.
async fn install_all_crds(client: &Client) {
    install_crd(client).await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for doc in tenantry::api::crds_yaml().split("\n---\n") {
        let doc = doc.trim_start_matches("---\n");
        let crd: CustomResourceDefinition = serde_yaml::from_str(doc).expect("CRD");
        if crd.name_any() == tenantry::api::tenant_crd().name_any() {
            continue;
        }
        create_or_replace(&crds, crd.clone()).await;
        tokio::time::timeout(
            Duration::from_secs(30),
            await_condition(
                crds.clone(),
                &crd.name_any(),
                conditions::is_crd_established(),
            ),
        )
        .await
        .expect("CRD established in time")
        .expect("watch CRD");
    }
}

#[tokio::test]
async fn the_api_server_accepts_the_rendered_manifests_in_a_dry_run() {
    let client = kube_client().await;
    install_all_crds(&client).await;
    let namespace = create_namespace(&client, "chart").await;
    let release = unique_name("rel");
    let mut values = full_values();
    helm::merge(
        &mut values,
        &json!({"serviceAccount": {"annotations": {
            "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/tenantry"}}}),
    );
    // Class names are cluster-wide: unique per run.
    for (i, class) in values["classes"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .enumerate()
    {
        class["name"] = json!(format!("{release}-{i}"));
    }
    helm::merge(&mut values, &json!({"networkPolicy": {"enabled": true}}));
    // Rendered for this API server's version, as `helm install` would.
    let version = client.apiserver_version().await.expect("server version");
    let docs = helm::template_with(
        &release,
        &namespace,
        &values,
        &["--kube-version", &version.git_version],
    )
    .unwrap_or_else(|e| panic!("helm template: {e}"));
    let tenant_class_served = tenantry::api::crds_yaml().contains("kind: TenantClass");

    let mut validated = BTreeSet::new();
    let mut skipped = BTreeSet::new();
    for (file, doc) in &docs {
        let (group, version) = match doc["apiVersion"].as_str().unwrap().split_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (
                String::new(),
                doc["apiVersion"].as_str().unwrap().to_string(),
            ),
        };
        let kind = doc["kind"].as_str().unwrap().to_string();
        // Prometheus Operator CRDs do not exist here; TenantClass only once
        // its CRD is part of `tenantry crd`.
        if group == "monitoring.coreos.com" || (kind == "TenantClass" && !tenant_class_served) {
            skipped.insert(kind);
            continue;
        }
        let gvk = GroupVersionKind::gvk(&group, &version, &kind);
        let (resource, caps) = discovery::pinned_kind(&client, &gvk)
            .await
            .unwrap_or_else(|e| panic!("{file}: the API server does not serve {kind}: {e}"));
        let object: DynamicObject = serde_json::from_value(doc.clone()).expect("object");
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Namespaced => {
                // Everything in the release namespace but the Events' Role,
                // which lives where the Events go.
                let expected = if file.ends_with("events-role.yaml") {
                    values["eventNamespace"].as_str().unwrap()
                } else {
                    namespace.as_str()
                };
                assert_eq!(doc["metadata"]["namespace"], expected, "{file}: {kind}");
                Api::namespaced_with(client.clone(), expected, &resource)
            }
            Scope::Cluster => {
                assert!(doc["metadata"]["namespace"].is_null(), "{file}: {kind}");
                Api::all_with(client.clone(), &resource)
            }
        };
        let dry_run = PostParams {
            dry_run: true,
            ..Default::default()
        };
        api.create(&dry_run, &object)
            .await
            .unwrap_or_else(|e| panic!("{file}: the API server refuses the {kind}: {e}"));
        validated.insert(kind);
    }
    let mut expected: BTreeSet<String> = [
        "ServiceAccount",
        "Service",
        "Deployment",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "PodDisruptionBudget",
        "NetworkPolicy",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    if tenant_class_served {
        expected.insert("TenantClass".into());
    }
    assert_eq!(validated, expected);
    let mut expected_skipped: BTreeSet<String> = ["ServiceMonitor", "PrometheusRule"]
        .into_iter()
        .map(String::from)
        .collect();
    if !tenant_class_served {
        expected_skipped.insert("TenantClass".into());
    }
    assert_eq!(skipped, expected_skipped);
}

/// Every kind the chart renders (CRDs aside), by group: what a release may
/// leave on the API server.
const CHART_KINDS: &[(&str, &str)] = &[
    ("", "ServiceAccount"),
    ("", "Service"),
    ("apps", "Deployment"),
    ("rbac.authorization.k8s.io", "ClusterRole"),
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"),
    ("rbac.authorization.k8s.io", "Role"),
    ("rbac.authorization.k8s.io", "RoleBinding"),
    ("policy", "PodDisruptionBudget"),
    ("networking.k8s.io", "NetworkPolicy"),
    ("tenantry.dev", "TenantClass"),
];

/// (kind, namespace or "", name) of each document.
fn identities(docs: &[(String, Value)]) -> BTreeSet<(String, String, String)> {
    docs.iter()
        .map(|(_, d)| {
            (
                d["kind"].as_str().unwrap().to_string(),
                d["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                d["metadata"]["name"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// (kind, namespace or "", name) of every object of the chart's kinds that
/// carries the release's instance label, in any namespace.
async fn release_objects(client: &Client, release: &str) -> BTreeSet<(String, String, String)> {
    let selector = format!("app.kubernetes.io/instance={release}");
    let mut found = BTreeSet::new();
    for (group, kind) in CHART_KINDS {
        let (resource, _) = discovery::group(client, group)
            .await
            .unwrap_or_else(|e| panic!("discover {group}: {e}"))
            .recommended_kind(kind)
            .unwrap_or_else(|| panic!("the API server serves no {kind}"));
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        let list = api
            .list(&ListParams::default().labels(&selector))
            .await
            .unwrap_or_else(|e| panic!("list {kind}: {e}"));
        for o in list.items {
            found.insert((
                kind.to_string(),
                o.namespace().unwrap_or_default(),
                o.name_any(),
            ));
        }
    }
    found
}

/// `helm install` into the local API server (Kubernetes 1.20, no kubelet:
/// no pod ever runs, so no `--wait`), then `helm upgrade`, then `helm
/// uninstall`: the API server holds exactly what `helm template` shows for
/// the same values (the PodDisruptionBudget as policy/v1beta1, which is all
/// 1.20 serves), the upgrade changes the Deployment, and the uninstall
/// removes every object but leaves the CRDs (Helm never deletes what it
/// installed from `crds/`) and the Tenants that exist.
#[tokio::test]
async fn helm_install_upgrade_and_uninstall_against_the_api_server() {
    let client = kube_client().await;
    // The CRDs exist already (as after a first install, or the other
    // tests): Helm skips `crds/` then.
    install_crd(&client).await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd_uids = |list: Vec<CustomResourceDefinition>| -> BTreeMap<String, String> {
        list.into_iter()
            .filter(|c| c.spec.group == "tenantry.dev")
            .map(|c| (c.name_any(), c.uid().unwrap()))
            .collect()
    };
    let crds_before = crd_uids(crds.list(&Default::default()).await.unwrap().items);
    assert_eq!(crds_before.len(), 2, "{crds_before:?}");

    let namespace = create_namespace(&client, "helm").await;
    let release = unique_name("inst");
    // A Tenant from before the release; no operator selects its label.
    let tenant_name = unique_name("keep");
    let tenant: Tenant = serde_json::from_value(json!({
        "apiVersion": "tenantry.dev/v1alpha1",
        "kind": "Tenant",
        "metadata": {"name": tenant_name, "labels": {TEST_LABEL: release}},
        "spec": {"credentials": {"namespace": namespace}},
    }))
    .unwrap();
    let tenants: Api<Tenant> = Api::all(client.clone());
    let tenant_uid = tenants
        .create(&PostParams::default(), &tenant)
        .await
        .expect("create a Tenant")
        .uid();

    let mut values = minimal_values();
    helm::merge(
        &mut values,
        &json!({
            "serviceAccount": {"annotations": {
                "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/tenantry"}},
            "podLabels": {"rollout": "1"},
            "networkPolicy": {"enabled": true},
            "classes": [{"name": format!("{release}-class"), "spec": full_values()["classes"][1]["spec"]}],
        }),
    );
    let version = client.apiserver_version().await.expect("server version");
    let template = |values: &Value| {
        helm::template_with(
            &release,
            &namespace,
            values,
            &["--kube-version", &version.git_version],
        )
        .unwrap_or_else(|e| panic!("helm template: {e}"))
    };
    let docs = template(&values);
    assert_eq!(
        one(&docs, "PodDisruptionBudget")["apiVersion"],
        "policy/v1beta1",
        "Kubernetes {} serves no policy/v1",
        version.git_version
    );
    let expected = identities(&docs);
    assert!(
        expected.contains(&(
            "Role".to_string(),
            "default".to_string(),
            format!("{release}-tenantry-events")
        )),
        "{expected:?}"
    );

    helm::install(&release, &namespace, &values).unwrap_or_else(|e| panic!("helm install: {e}"));
    assert_eq!(
        release_objects(&client, &release).await,
        expected,
        "after install"
    );
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), &namespace);
    let deployment_name = format!("{release}-tenantry");
    let installed = deployments.get(&deployment_name).await.expect("Deployment");
    let spec = installed.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(2));
    let pod_labels = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .as_ref()
        .unwrap();
    assert_eq!(pod_labels["rollout"], "1");

    // An upgrade with more replicas and another pod label.
    helm::merge(
        &mut values,
        &json!({"replicaCount": 3, "podLabels": {"rollout": "2"}}),
    );
    helm::upgrade(&release, &namespace, &values).unwrap_or_else(|e| panic!("helm upgrade: {e}"));
    let upgraded = deployments.get(&deployment_name).await.expect("Deployment");
    let spec = upgraded.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(3));
    let pod_labels = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .as_ref()
        .unwrap();
    assert_eq!(pod_labels["rollout"], "2");
    assert_eq!(upgraded.uid(), installed.uid(), "changed in place");
    assert_eq!(
        release_objects(&client, &release).await,
        identities(&template(&values)),
        "after upgrade"
    );

    helm::uninstall(&release, &namespace).unwrap_or_else(|e| panic!("helm uninstall: {e}"));
    assert_eq!(
        release_objects(&client, &release).await,
        BTreeSet::new(),
        "the uninstall removes every object of the release"
    );
    // The CRDs stay, the same objects, and so do the Tenants.
    let crds_after = crd_uids(crds.list(&Default::default()).await.unwrap().items);
    assert_eq!(crds_after, crds_before, "helm uninstall keeps the CRDs");
    let kept = tenants
        .get(&tenant_name)
        .await
        .expect("the Tenant outlives the release");
    assert_eq!(kept.uid(), tenant_uid);
    tenants
        .delete(&tenant_name, &Default::default())
        .await
        .expect("delete the Tenant");
}

#[tokio::test]
async fn a_tenant_namespaces_service_account_can_neither_create_nor_read_tenants() {
    let client = kube_client().await;
    install_crd(&client).await;
    let namespace = create_namespace(&client, "app").await;
    create_or_replace(
        &Api::<ServiceAccount>::namespaced(client.clone(), &namespace),
        named(Some(&namespace), "app"),
    )
    .await;
    let kubeconfig = rbac::service_account_kubeconfig(&client, &namespace, "app").await;
    let app = rbac::client_from_kubeconfig(&kubeconfig).await;
    let tenants: Api<Tenant> = Api::all(app.clone());

    let name = unique_name("steal");
    let manifest: Tenant = serde_json::from_value(json!({
        "apiVersion": "tenantry.dev/v1alpha1",
        "kind": "Tenant",
        "metadata": {"name": name},
        "spec": {"credentials": {"namespace": namespace}},
    }))
    .unwrap();
    let forbidden = |r: Result<(), kube::Error>, what: &str| match r {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{what}: {s:?}"),
        other => panic!("{what} should be forbidden, got {other:?}"),
    };
    forbidden(
        tenants
            .create(&PostParams::default(), &manifest)
            .await
            .map(|_| ()),
        "create a Tenant",
    );
    forbidden(
        tenants.list(&Default::default()).await.map(|_| ()),
        "list Tenants",
    );
    // A Tenant that exists, made by the admin.
    let admin: Api<Tenant> = Api::all(client.clone());
    admin
        .create(&PostParams::default(), &manifest)
        .await
        .expect("admin creates");
    forbidden(tenants.get(&name).await.map(|_| ()), "read a Tenant");
    forbidden(
        tenants
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"suspended": true}})),
            )
            .await
            .map(|_| ()),
        "change a Tenant",
    );
    admin
        .delete(&name, &Default::default())
        .await
        .expect("admin deletes");
}

/// Runs the chart's Argo CD health script on a Tenant as Argo CD does:
/// the object as a Lua table in `obj`, absent fields absent.
fn argocd_health(tenant: &Tenant) -> (String, String) {
    use mlua::LuaSerdeExt as _;
    let lua = mlua::Lua::new();
    let options = mlua::serde::SerializeOptions::new()
        .serialize_none_to_null(false)
        .serialize_unit_to_null(false);
    let object = serde_json::to_value(tenant).unwrap();
    let obj = lua.to_value_with(&object, options).expect("Tenant as Lua");
    lua.globals().set("obj", obj).unwrap();
    let script = std::fs::read_to_string(chart_dir().join("files/argocd-health.lua")).unwrap();
    let hs: mlua::Table = lua.load(&script).eval().expect("the health script runs");
    (hs.get("status").unwrap(), hs.get("message").unwrap())
}

/// Waits for an Event about the Tenant in the namespace the tests' operators
/// publish to.
async fn await_event_about(client: &Client, op: &Operator, name: &str) {
    use k8s_openapi::api::events::v1::Event;
    let events: Api<Event> = Api::namespaced(client.clone(), "kube-system");
    let found = |list: &[Event]| {
        list.iter()
            .any(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
    };
    let wait = async {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            let list = events.list(&Default::default()).await.expect("list Events");
            if found(&list.items) {
                return;
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .is_err()
    {
        panic!(
            "no Event about {name} in kube-system; operator log:\n{}",
            tail(&op.log(), 40)
        );
    }
}

async fn get_tenant(client: &Client, name: &str) -> Tenant {
    Api::<Tenant>::all(client.clone())
        .get(name)
        .await
        .expect("read Tenant")
}

#[tokio::test]
async fn argocd_health_follows_a_tenant_from_new_to_healthy_to_suspended() {
    let client = kube_client().await;
    install_crd(&client).await;
    let ns = create_namespace(&client, "apps").await;
    let mut op = Operator::start(&[]).await;
    let name = unique_name("argo");
    let manifest = tenant_manifest(&op, &name, json!({"credentials": {"namespace": ns}}));

    // Before the operator wrote anything.
    let created = create_tenant(&client, &manifest).await;
    assert_eq!(argocd_health(&created).0, "Progressing");

    let ready = wait_for_tenant(&client, &op, &name, TIMEOUT, "Ready", is_ready).await;
    let (status, message) = argocd_health(&ready);
    assert_eq!(status, "Healthy", "{message}");
    // Publishing Events is best effort (a refusal is only logged): check
    // that the chart's role lets the operator publish them.
    await_event_about(&client, &op, &name).await;

    // A measured layer that is not Enforced degrades it (the same real
    // object, one layer's state changed as a probe would write it).
    let mut broken = ready.clone();
    let isolation = broken.status.as_mut().unwrap().isolation.as_mut().unwrap();
    let mut storage = serde_json::to_value(isolation.storage.as_ref().unwrap()).unwrap();
    storage["state"] = json!("Broken");
    isolation.storage = Some(serde_json::from_value(storage).unwrap());
    let (status, message) = argocd_health(&broken);
    assert_eq!(status, "Degraded");
    assert!(message.contains("storage"), "{message}");

    // A spec change the operator has not seen yet.
    op.kill().await;
    let api: Api<Tenant> = Api::all(client.clone());
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"displayName": "Renamed"}})),
    )
    .await
    .unwrap();
    let (status, message) = argocd_health(&get_tenant(&client, &name).await);
    assert_eq!(status, "Progressing");
    assert!(message.contains("generation"), "{message}");

    op.restart_with(&[]).await;
    let ready = wait_for_tenant(&client, &op, &name, TIMEOUT, "Ready again", is_ready).await;
    assert_eq!(argocd_health(&ready).0, "Healthy");

    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"suspended": true}})),
    )
    .await
    .unwrap();
    let suspended = wait_for_tenant(&client, &op, &name, TIMEOUT, "Suspended", |t| {
        phase(t) == Some(TenantPhase::Suspended)
            && t.status.as_ref().unwrap().observed_generation == t.metadata.generation
    })
    .await;
    assert_eq!(argocd_health(&suspended).0, "Suspended");
}

#[tokio::test]
async fn argocd_health_is_degraded_for_an_invalid_spec() {
    let client = kube_client().await;
    install_crd(&client).await;
    let ns = create_namespace(&client, "apps").await;
    let op = Operator::start(&[]).await;
    let name = unique_name("argobad");
    let spec = json!({
        "credentials": {"namespace": ns},
        "deletion": {"policy": "Delete", "gracePeriod": "99999999999999999999h"},
    });
    create_tenant(&client, &tenant_manifest(&op, &name, spec)).await;
    let t = wait_for_tenant(&client, &op, &name, TIMEOUT, "rejected", |t| {
        condition(t, "Stalled").is_some_and(|c| c.reason == "InvalidSpec")
    })
    .await;
    let (status, message) = argocd_health(&t);
    assert_eq!(status, "Degraded");
    assert!(message.contains("gracePeriod"), "{message}");
}

#[tokio::test]
async fn argocd_health_is_progressing_while_a_tenant_is_provisioned() {
    let client = kube_client().await;
    install_crd(&client).await;
    let ns = create_namespace(&client, "apps").await;
    // The operator stops right after the first step, leaving the Tenant
    // mid-provisioning as a real crash would.
    let mut op = Operator::start(&[("FAILPOINTS", "ensure-after-kms-key=return")]).await;
    let name = unique_name("argoprov");
    create_tenant(
        &client,
        &tenant_manifest(&op, &name, json!({"credentials": {"namespace": ns}})),
    )
    .await;
    assert_eq!(op.wait_exit(TIMEOUT).await, Some(86));
    let t = get_tenant(&client, &name).await;
    assert_eq!(phase(&t), Some(TenantPhase::Provisioning), "{:?}", t.status);
    let (status, message) = argocd_health(&t);
    assert_eq!(status, "Progressing", "{message}");

    // It finishes once the operator is back.
    op.restart_with(&[]).await;
    let ready = wait_for_tenant(&client, &op, &name, TIMEOUT, "Ready", is_ready).await;
    assert_eq!(argocd_health(&ready).0, "Healthy");
}
