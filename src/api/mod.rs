//! The `Tenant` custom resource: the user-facing contract of tenantry.
//!
//! These Rust types are the single source of `crds/tenantry.yaml`; `tenantry crd`
//! prints what they generate and a test keeps the committed file equal to it.

mod class;
mod reason;
mod tenant;

pub use class::*;
pub use reason::*;
pub use tenant::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use kube::CustomResourceExt;

/// The API group of every tenantry resource.
pub const GROUP: &str = "tenantry.dev";

/// Shortest and longest tenant name. The name becomes part of PostgreSQL
/// identifiers (63 bytes), S3 bucket names (63 chars, prefix included) and KMS
/// aliases, so it is kept well below those limits.
pub const TENANT_NAME_MIN: usize = 3;
pub const TENANT_NAME_MAX: usize = 40;
/// A DNS label that starts with a letter: it maps one-to-one onto a
/// PostgreSQL identifier (`-` becomes `_`, and `_` is never allowed here).
pub const TENANT_NAME_PATTERN: &str = "^[a-z]([a-z0-9-]*[a-z0-9])?$";

/// The TenantClass CRD as installed in a cluster.
pub fn tenant_class_crd() -> CustomResourceDefinition {
    let mut crd = TenantClass::crd();
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            strip_null_enum_values(schema);
        }
    }
    crd
}

/// The Tenant CRD as installed in a cluster: the derived schema plus the
/// constraints on `metadata.name`, which kube-derive cannot express.
pub fn tenant_crd() -> CustomResourceDefinition {
    let mut crd = Tenant::crd();
    for version in &mut crd.spec.versions {
        let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        else {
            continue;
        };
        strip_null_enum_values(schema);
        let name_schema = serde_json::from_value(serde_json::json!({
            "type": "object",
            "properties": {
                "name": {
                    "type": "string",
                    "minLength": TENANT_NAME_MIN,
                    "maxLength": TENANT_NAME_MAX,
                    "pattern": TENANT_NAME_PATTERN,
                }
            }
        }))
        .expect("static metadata schema is valid");
        schema
            .properties
            .get_or_insert_with(Default::default)
            .insert("metadata".to_string(), name_schema);
    }
    crd
}

/// schemars lists `null` among the values of an optional enum; Kubernetes
/// schemas express optionality by leaving the field out, and kubectl's client
/// validation rejects a `null` enum value.
fn strip_null_enum_values(schema: &mut JSONSchemaProps) {
    if let Some(values) = schema.enum_.as_mut() {
        values.retain(|v| !v.0.is_null());
        schema.nullable = None;
    }
    for child in schema.properties.iter_mut().flat_map(|p| p.values_mut()) {
        strip_null_enum_values(child);
    }
    if let Some(JSONSchemaPropsOrArray::Schema(items)) = schema.items.as_mut() {
        strip_null_enum_values(items);
    }
    if let Some(JSONSchemaPropsOrBool::Schema(extra)) = schema.additional_properties.as_mut() {
        strip_null_enum_values(extra);
    }
    for list in [&mut schema.any_of, &mut schema.one_of, &mut schema.all_of] {
        for child in list.iter_mut().flatten() {
            strip_null_enum_values(child);
        }
    }
}

/// All CRDs of tenantry as one multi-document YAML stream, as `tenantry crd`
/// prints it and `crds/` stores it.
pub fn crds_yaml() -> String {
    let crds = [tenant_crd(), tenant_class_crd()];
    crds.iter()
        .map(|crd| {
            format!(
                "---\n{}",
                serde_yaml::to_string(crd).expect("CRD serializes to YAML")
            )
        })
        .collect()
}

/// Checks a tenant name with the same rules as the CRD schema, for callers
/// that do not go through the API server (the CLI, the engine's own checks).
pub fn validate_tenant_name(name: &str) -> Result<(), String> {
    if name.len() < TENANT_NAME_MIN || name.len() > TENANT_NAME_MAX {
        return Err(format!(
            "tenant name {name:?} must be {TENANT_NAME_MIN} to {TENANT_NAME_MAX} characters long"
        ));
    }
    let bytes = name.as_bytes();
    let valid_chars = bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
    let starts_with_letter = bytes[0].is_ascii_lowercase();
    let ends_alnum = bytes[bytes.len() - 1] != b'-';
    if !(valid_chars && starts_with_letter && ends_alnum) {
        return Err(format!(
            "tenant name {name:?} must be a DNS label that starts with a letter: lowercase letters, digits and '-' ({TENANT_NAME_PATTERN})"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn status_times_read_every_earlier_form_and_write_the_documented_one() {
        // Written by earlier versions: seconds with Z, and nanoseconds with
        // an offset (the journal's failure time); one edited by hand.
        let journal: ProvisioningJournal = serde_json::from_value(serde_json::json!({
            "operation": "Provision",
            "lastFailureTime": "2026-03-01T10:00:00.123456789+00:00",
        }))
        .unwrap();
        let failed_at = journal.last_failure_time.expect("read");
        assert_eq!(failed_at.to_string(), "2026-03-01T10:00:00Z");
        let deletion: DeletionStatus = serde_json::from_value(serde_json::json!({
            "accessRevokedAt": "2026-03-01T10:00:00Z",
            "destroyAfter": "tomorrow",
        }))
        .unwrap();
        assert_eq!(
            deletion.destroy_after, None,
            "an unreadable time reads as absent"
        );
        assert_eq!(
            serde_json::to_value(&deletion).unwrap(),
            serde_json::json!({"accessRevokedAt": "2026-03-01T10:00:00Z"})
        );
    }

    use super::*;

    /// Conditions are a list keyed by `type` in both CRDs (server-side
    /// apply merges them one by one, `kubectl` and Argo CD show them so),
    /// and every key is required in the item schema, as the API server
    /// demands of list-map keys.
    #[test]
    fn conditions_are_a_list_map_keyed_by_type() {
        for crd in [tenant_crd(), tenant_class_crd()] {
            let name = crd.metadata.name.clone().unwrap();
            let version = &crd.spec.versions[0];
            let schema = version
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap();
            let status = &schema.properties.as_ref().unwrap()["status"];
            let conditions = &status.properties.as_ref().unwrap()["conditions"];
            assert_eq!(
                conditions.x_kubernetes_list_type.as_deref(),
                Some("map"),
                "{name}"
            );
            assert_eq!(
                conditions.x_kubernetes_list_map_keys.as_deref(),
                Some(&["type".to_string()][..]),
                "{name}"
            );
            let Some(JSONSchemaPropsOrArray::Schema(item)) = conditions.items.as_ref() else {
                panic!("{name}: conditions have no item schema");
            };
            assert!(
                item.required
                    .as_ref()
                    .is_some_and(|r| r.contains(&"type".to_string())),
                "{name}: type is not required"
            );
        }
    }

    #[test]
    fn valid_names_are_accepted() {
        for name in ["abc", "acme", "acme-corp", "a1b", &"a".repeat(40)] {
            assert_eq!(validate_tenant_name(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn invalid_names_are_refused_with_the_rule() {
        for name in [
            "ab",
            &"a".repeat(41),
            "1abc",
            "abc-",
            "-abc",
            "ab_c",
            "Acme",
            "ac.me",
            "ac me",
        ] {
            let err = validate_tenant_name(name).unwrap_err();
            assert!(err.contains(name), "{err}");
        }
    }

    #[test]
    fn committed_crds_equal_the_generated_ones() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/tenantry.yaml");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == crds_yaml(),
            "{path} is out of date with the Rust types: run `cargo run -- crd > crds/tenantry.yaml`"
        );
    }

    #[test]
    fn crd_constrains_the_tenant_name() {
        let crd = serde_json::to_value(tenant_crd()).unwrap();
        let name = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["metadata"]
            ["properties"]["name"];
        assert_eq!(name["pattern"], TENANT_NAME_PATTERN);
        assert_eq!(name["maxLength"], 40);
        assert_eq!(name["minLength"], 3);
        assert_eq!(crd["spec"]["scope"], "Cluster");
        assert_eq!(crd["spec"]["names"]["shortNames"][0], "tnt");
    }
}
