//! Measuring a tenant's isolation and turning the reports into its attestation:
//! `status.isolation` and one condition per layer. (The probes themselves live
//! in `crate::isolation`, one module per layer.)

use chrono::{DateTime, Utc};

use crate::api::{IsolationState, IsolationStatus, Layer, LayerReport, Reason, TenantStatus};
use crate::controller::status::set_condition;
use crate::isolation::fail;
use crate::provision::{Engine, RetryPolicy};
use crate::resources::{TenantContext, tenant_resources};

pub const DATABASE_ISOLATED: &str = "DatabaseIsolated";
pub const STORAGE_ISOLATED: &str = "StorageIsolated";
pub const ENCRYPTION_AT_REST: &str = "EncryptionAtRest";

/// Checks whose failure a non-superuser admin cannot repair.
const UNREPAIRABLE_CHECKS: [&str; 2] = ["role.superuser", "role.bypassrls"];

/// The three layers as measured now.
#[derive(Clone, Debug, PartialEq)]
pub struct Measurement {
    pub database: LayerReport,
    pub storage: LayerReport,
    pub encryption: LayerReport,
}

impl Measurement {
    pub fn all_enforced(&self) -> bool {
        self.layers()
            .iter()
            .all(|(_, r)| r.state == IsolationState::Enforced)
    }

    /// The worst state of the three layers.
    pub fn summary(&self) -> IsolationState {
        self.layers()
            .iter()
            .map(|(_, r)| r.state)
            .max_by_key(|s| s.severity())
            .unwrap_or(IsolationState::Unknown)
    }

    pub fn layers(&self) -> [(&'static str, &LayerReport); 3] {
        [
            ("database", &self.database),
            ("storage", &self.storage),
            ("encryption", &self.encryption),
        ]
    }

    /// A short account of what failed, for messages and events.
    pub fn failures(&self) -> String {
        let failed: Vec<String> = self
            .layers()
            .iter()
            .flat_map(|(layer, r)| {
                r.failures().map(move |f| {
                    format!("{layer} {} is {}: {}", f.check, f.state.as_str(), f.detail)
                })
            })
            .collect();
        failed.join("; ")
    }

    /// Whether the database layer is broken in a way only a superuser can fix.
    /// Only what was seen counts: a check that could not run (`Unknown`, say
    /// the catalogs were unreachable) never cuts a customer off.
    pub fn unrepairable(&self) -> Vec<String> {
        self.database
            .failures()
            .filter(|f| f.state == IsolationState::Broken)
            .filter(|f| UNREPAIRABLE_CHECKS.contains(&f.check.as_str()))
            .map(|f| f.detail.clone())
            .collect()
    }

    pub fn into_status(self, verified_at: DateTime<Utc>, drift_repairs: u32) -> IsolationStatus {
        let summary = self.summary();
        IsolationStatus {
            database: Some(self.database),
            storage: Some(self.storage),
            encryption: Some(self.encryption),
            summary: Some(summary),
            verified_at: Some(verified_at.into()),
            drift_repairs,
        }
    }
}

/// Runs the probe of every resource that carries a layer. The context
/// must hold the tenant's key and credentials (the KMS and Secrets Manager
/// resources fill them in); a layer no resource reports is Unknown.
pub async fn measure(ctx: &TenantContext) -> Measurement {
    let resources = tenant_resources();
    let reports = Engine::new(&resources, RetryPolicy::default())
        .probe(ctx)
        .await;
    let report = |layer: Layer| {
        reports
            .iter()
            .find(|(l, _)| *l == layer)
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| {
                LayerReport::from_findings(vec![fail(
                    "probe",
                    IsolationState::Unknown,
                    format!(
                        "no resource of this tenant reports the {} layer",
                        layer.as_str()
                    ),
                )])
            })
    };
    Measurement {
        database: report(Layer::Database),
        storage: report(Layer::Storage),
        encryption: report(Layer::Encryption),
    }
}

/// Sets `DatabaseIsolated`, `StorageIsolated` and `EncryptionAtRest` from
/// the attestation in the status.
pub fn apply_isolation_conditions(
    status: &mut TenantStatus,
    generation: Option<i64>,
    now: DateTime<Utc>,
) {
    let Some(isolation) = status.isolation.clone() else {
        return;
    };
    for (type_, report) in [
        (DATABASE_ISOLATED, &isolation.database),
        (STORAGE_ISOLATED, &isolation.storage),
        (ENCRYPTION_AT_REST, &isolation.encryption),
    ] {
        let Some(report) = report else { continue };
        let enforced = report.state == IsolationState::Enforced;
        let message = if enforced {
            format!("all {} checks passed", report.findings.len())
        } else {
            report
                .failures()
                .map(|f| format!("{} is {}: {}", f.check, f.state.as_str(), f.detail))
                .collect::<Vec<_>>()
                .join("; ")
        };
        set_condition(
            &mut status.conditions,
            type_,
            enforced,
            &Reason::layer(report.state),
            &message,
            generation,
            now,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isolation::pass;

    fn report(state: IsolationState) -> LayerReport {
        if state == IsolationState::Enforced {
            LayerReport::from_findings(vec![pass("x", "fine")])
        } else {
            LayerReport::from_findings(vec![pass("x", "fine"), fail("y", state, "bad")])
        }
    }

    #[test]
    fn the_summary_is_the_worst_layer() {
        let m = Measurement {
            database: report(IsolationState::Enforced),
            storage: report(IsolationState::Inert),
            encryption: report(IsolationState::Enforced),
        };
        assert!(!m.all_enforced());
        assert_eq!(m.summary(), IsolationState::Inert);
        assert_eq!(m.failures(), "storage y is Inert: bad");
    }

    #[test]
    fn each_layer_has_its_condition() {
        let m = Measurement {
            database: report(IsolationState::Broken),
            storage: report(IsolationState::Enforced),
            encryption: report(IsolationState::Enforced),
        };
        let mut status = TenantStatus {
            isolation: Some(m.into_status(Utc::now(), 0)),
            ..Default::default()
        };
        apply_isolation_conditions(&mut status, Some(1), Utc::now());
        let get = |t: &str| {
            status
                .conditions
                .iter()
                .find(|c| c.type_ == t)
                .unwrap()
                .clone()
        };
        assert_eq!(get(DATABASE_ISOLATED).status, "False");
        assert_eq!(get(DATABASE_ISOLATED).reason, "Broken");
        assert!(get(DATABASE_ISOLATED).message.contains("y is Broken: bad"));
        assert_eq!(get(STORAGE_ISOLATED).status, "True");
        assert_eq!(get(ENCRYPTION_AT_REST).message, "all 1 checks passed");
    }

    #[test]
    fn only_superuser_and_bypassrls_are_unrepairable() {
        let m = Measurement {
            database: LayerReport::from_findings(vec![
                fail(
                    "role.bypassrls",
                    IsolationState::Broken,
                    "ALTER ROLE \"t_a\" NOBYPASSRLS",
                ),
                fail(
                    "rls.public.orders.forced",
                    IsolationState::Inert,
                    "not forced",
                ),
            ]),
            storage: report(IsolationState::Enforced),
            encryption: report(IsolationState::Enforced),
        };
        assert_eq!(m.unrepairable(), ["ALTER ROLE \"t_a\" NOBYPASSRLS"]);
    }

    #[test]
    fn a_superuser_check_that_could_not_run_is_not_grounds_to_fail_closed() {
        let m = Measurement {
            database: LayerReport::from_findings(vec![fail(
                "role.superuser",
                IsolationState::Unknown,
                "could not read the catalogs as the admin",
            )]),
            storage: report(IsolationState::Enforced),
            encryption: report(IsolationState::Enforced),
        };
        assert!(m.unrepairable().is_empty());
    }
}
