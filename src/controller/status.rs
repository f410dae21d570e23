//! Pure computation of the Tenant status: phases and kstatus conditions.
//! Writing it is the controller's job; deciding it is tested here without an
//! API server.

use chrono::{DateTime, Utc};

use crate::api::{Condition, Reason, TenantPhase, TenantStatus};

pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";

/// What the reconcile concluded, in the terms of the status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub phase: TenantPhase,
    /// Short PascalCase cause.
    pub reason: Reason,
    pub message: String,
}

impl Verdict {
    pub fn new(phase: TenantPhase, reason: Reason, message: impl Into<String>) -> Self {
        Self {
            phase,
            reason,
            message: message.into(),
        }
    }
}

/// Sets a condition, keeping its transition time when the status is unchanged.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &Reason,
    message: &str,
    generation: Option<i64>,
    now: DateTime<Utc>,
) {
    let status = if status { "True" } else { "False" }.to_string();
    // Kubernetes 1.20's server-side apply turns an empty string into null,
    // which the schema refuses; every condition says something anyway.
    let reason = reason.as_str();
    let message = if message.is_empty() { reason } else { message };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            }
            c.status = status;
            c.reason = reason.to_string();
            c.message = message.to_string();
            c.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: type_.to_string(),
            status,
            reason: reason.to_string(),
            message: message.to_string(),
            observed_generation: generation,
            last_transition_time: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        }),
    }
}

/// Applies a verdict: phase, observedGeneration and the three kstatus
/// conditions. `Ready` is True only in phase Ready; `Stalled` is True when
/// nothing will change without a person (a failure, a conflict, a missing
/// namespace); `Reconciling` is True while work is in flight, including a
/// failure tenantry retries by itself (an outage): kstatus, and with it
/// Flux, reads `Stalled` as final.
pub fn apply_verdict(
    status: &mut TenantStatus,
    verdict: &Verdict,
    generation: Option<i64>,
    now: DateTime<Utc>,
) {
    status.phase = Some(verdict.phase);
    status.observed_generation = generation;
    let (ready, reconciling, stalled) = match verdict.phase {
        TenantPhase::Ready => (true, false, false),
        TenantPhase::Pending
        | TenantPhase::Provisioning
        | TenantPhase::RollingBack
        | TenantPhase::Deleting => (false, true, false),
        TenantPhase::Failed if verdict.reason.retried_by_itself() => (false, true, false),
        TenantPhase::Failed => (false, false, true),
        TenantPhase::Suspended => (false, false, false),
    };
    // A tenant waiting for something a person must provide is stalled even
    // though tenantry keeps retrying.
    let stalled = stalled || verdict.reason.needs_a_person();
    let reconciling = reconciling && !stalled;
    let c = &mut status.conditions;
    set_condition(
        c,
        READY,
        ready,
        &verdict.reason,
        &verdict.message,
        generation,
        now,
    );
    let (r_reason, r_message) = if reconciling {
        (&verdict.reason, verdict.message.as_str())
    } else {
        (&Reason::Idle, "nothing in progress")
    };
    set_condition(
        c,
        RECONCILING,
        reconciling,
        r_reason,
        r_message,
        generation,
        now,
    );
    let (s_reason, s_message) = if stalled {
        (&verdict.reason, verdict.message.as_str())
    } else {
        (&Reason::NotStalled, "nothing needs a person")
    };
    set_condition(c, STALLED, stalled, s_reason, s_message, generation, now);
}

/// Time to wait before retrying a tenant whose provisioning failed
/// `failed_attempts` times in a row: doubling, capped.
pub fn failure_backoff(
    failed_attempts: u32,
    base: std::time::Duration,
    max: std::time::Duration,
) -> std::time::Duration {
    let factor = 2u32.saturating_pow(failed_attempts.saturating_sub(1).min(20));
    base.saturating_mul(factor).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn condition<'a>(s: &'a TenantStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn ready_tenant_is_ready_and_neither_reconciling_nor_stalled() {
        let mut s = TenantStatus::default();
        apply_verdict(
            &mut s,
            &Verdict::new(TenantPhase::Ready, Reason::Provisioned, "all there"),
            Some(3),
            at(0),
        );
        assert_eq!(s.phase, Some(TenantPhase::Ready));
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(condition(&s, READY).status, "True");
        assert_eq!(condition(&s, READY).observed_generation, Some(3));
        assert_eq!(condition(&s, RECONCILING).status, "False");
        assert_eq!(condition(&s, STALLED).status, "False");
    }

    #[test]
    fn failed_tenant_is_stalled_with_the_cause() {
        let mut s = TenantStatus::default();
        let v = Verdict::new(
            TenantPhase::Failed,
            Reason::Conflict,
            "bucket x is someone else's",
        );
        apply_verdict(&mut s, &v, Some(1), at(0));
        assert_eq!(condition(&s, READY).status, "False");
        assert_eq!(condition(&s, STALLED).status, "True");
        assert_eq!(condition(&s, STALLED).reason, "Conflict");
        assert!(condition(&s, STALLED).message.contains("bucket x"));
        assert_eq!(condition(&s, RECONCILING).status, "False");
    }

    #[test]
    fn a_missing_namespace_stalls_the_tenant() {
        let mut s = TenantStatus::default();
        let v = Verdict::new(
            TenantPhase::Pending,
            Reason::NamespaceMissing,
            "namespace acme does not exist",
        );
        apply_verdict(&mut s, &v, Some(1), at(0));
        assert_eq!(condition(&s, STALLED).status, "True");
        assert_eq!(condition(&s, RECONCILING).status, "False");
    }

    #[test]
    fn transition_time_moves_only_when_the_status_flips() {
        let mut s = TenantStatus::default();
        let prov = Verdict::new(TenantPhase::Provisioning, Reason::Provisioning, "");
        apply_verdict(&mut s, &prov, Some(1), at(0));
        apply_verdict(&mut s, &prov, Some(1), at(10));
        assert_eq!(
            condition(&s, READY).last_transition_time,
            at(0).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        apply_verdict(
            &mut s,
            &Verdict::new(TenantPhase::Ready, Reason::Provisioned, ""),
            Some(1),
            at(20),
        );
        assert_eq!(
            condition(&s, READY).last_transition_time,
            at(20).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
    }

    /// kstatus (sigs.k8s.io/cli-utils `pkg/kstatus/status`, `Compute` and
    /// `checkGenericProperties`) as it reads a custom resource: a deletion
    /// timestamp is Terminating; an observedGeneration other than the
    /// generation is InProgress; `Reconciling=True` is InProgress,
    /// `Stalled=True` Failed; anything else is Current (kstatus does not
    /// read `Ready` of a custom resource).
    fn kstatus(tenant: &serde_json::Value) -> &'static str {
        if !tenant["metadata"]["deletionTimestamp"].is_null() {
            return "Terminating";
        }
        let observed = &tenant["status"]["observedGeneration"];
        if !observed.is_null() && observed != &tenant["metadata"]["generation"] {
            return "InProgress";
        }
        let empty = Vec::new();
        let conditions = tenant["status"]["conditions"].as_array().unwrap_or(&empty);
        for c in conditions {
            match (c["type"].as_str(), c["status"].as_str()) {
                (Some(RECONCILING), Some("True")) => return "InProgress",
                (Some(STALLED), Some("True")) => return "Failed",
                _ => {}
            }
        }
        "Current"
    }

    /// The chart's Argo CD health script run on the Tenant, as Argo CD
    /// runs it (Lua 5.1).
    fn argocd(tenant: &serde_json::Value) -> String {
        use mlua::LuaSerdeExt as _;
        let lua = mlua::Lua::new();
        let options = mlua::serde::SerializeOptions::new()
            .serialize_none_to_null(false)
            .serialize_unit_to_null(false);
        let obj = lua.to_value_with(tenant, options).unwrap();
        lua.globals().set("obj", obj).unwrap();
        let script = include_str!("../../charts/tenantry/files/argocd-health.lua");
        let hs: mlua::Table = lua.load(script).eval().unwrap();
        hs.get("status").unwrap()
    }

    /// A Tenant at generation 2 after `verdict`, observed at `observed`.
    fn tenant_after(
        verdict: &Verdict,
        observed: i64,
        suspended: bool,
        deleting: bool,
    ) -> serde_json::Value {
        let mut status = TenantStatus::default();
        apply_verdict(&mut status, verdict, Some(observed), at(0));
        let mut metadata = serde_json::json!({"name": "acme", "generation": 2});
        if deleting {
            metadata["deletionTimestamp"] = serde_json::json!("2027-01-01T00:00:00Z");
        }
        serde_json::json!({
            "metadata": metadata,
            "spec": {"suspended": suspended},
            "status": serde_json::to_value(&status).unwrap(),
        })
    }

    /// Every phase and reason, as kstatus (hence Flux) and the chart's Argo
    /// CD script read them, against what a person would say: Current when
    /// there is nothing to wait for (Ready, or Suspended as asked),
    /// InProgress while tenantry is at work or retrying by itself, Failed
    /// only when nothing changes without a person.
    #[test]
    fn kstatus_and_argocd_read_every_phase_and_reason_as_a_person_would() {
        use TenantPhase::*;
        // The failures tenantry gets past by retrying.
        let retried = [
            Reason::BackendUnavailable,
            Reason::DependencyMissing,
            Reason::ClassUnavailable,
            Reason::IsolationUnknown,
            Reason::RollbackStuck,
            Reason::DeletionStuck,
        ];
        let mut rows: Vec<(Verdict, i64, bool, bool, &str, &str)> = vec![
            (
                Verdict::new(Pending, Reason::Provisioning, "queued"),
                2,
                false,
                false,
                "InProgress",
                "Progressing",
            ),
            (
                Verdict::new(Provisioning, Reason::Provisioning, "ensuring s3-bucket"),
                2,
                false,
                false,
                "InProgress",
                "Progressing",
            ),
            (
                Verdict::new(RollingBack, Reason::RollingBack, "undoing"),
                2,
                false,
                false,
                "InProgress",
                "Progressing",
            ),
            (
                Verdict::new(Ready, Reason::Provisioned, "all there"),
                2,
                false,
                false,
                "Current",
                "Healthy",
            ),
            // A spec change not seen yet, a suspension among them.
            (
                Verdict::new(Ready, Reason::Provisioned, "all there"),
                1,
                false,
                false,
                "InProgress",
                "Progressing",
            ),
            (
                Verdict::new(Ready, Reason::Provisioned, "all there"),
                1,
                true,
                false,
                "InProgress",
                "Progressing",
            ),
            (
                Verdict::new(Suspended, Reason::Suspended, "access revoked"),
                2,
                true,
                false,
                "Current",
                "Suspended",
            ),
            (
                Verdict::new(Deleting, Reason::Deleting, "removing"),
                2,
                false,
                true,
                "Terminating",
                "Progressing",
            ),
            (
                Verdict::new(Deleting, Reason::DeletionStuck, "retried"),
                2,
                false,
                true,
                "Terminating",
                "Progressing",
            ),
            (
                Verdict::new(Pending, Reason::NamespaceMissing, "no namespace"),
                2,
                false,
                false,
                "Failed",
                "Degraded",
            ),
        ];
        for reason in Reason::KNOWN {
            let (k, a) = if retried.contains(reason) {
                ("InProgress", "Progressing")
            } else {
                ("Failed", "Degraded")
            };
            rows.push((
                Verdict::new(Failed, reason.clone(), "why"),
                2,
                false,
                false,
                k,
                a,
            ));
        }
        for (verdict, observed, suspended, deleting, want_kstatus, want_argocd) in rows {
            let tenant = tenant_after(&verdict, observed, suspended, deleting);
            let row = format!(
                "{} {} observed {observed} suspended {suspended} deleting {deleting}",
                verdict.phase.as_str(),
                verdict.reason
            );
            assert_eq!(kstatus(&tenant), want_kstatus, "kstatus of {row}");
            assert_eq!(argocd(&tenant), want_argocd, "Argo CD health of {row}");
        }
    }

    #[test]
    fn failure_backoff_doubles_and_caps() {
        let (b, m) = (Duration::from_secs(60), Duration::from_secs(3600));
        assert_eq!(failure_backoff(1, b, m), Duration::from_secs(60));
        assert_eq!(failure_backoff(2, b, m), Duration::from_secs(120));
        assert_eq!(failure_backoff(10, b, m), Duration::from_secs(3600));
        assert_eq!(failure_backoff(u32::MAX, b, m), Duration::from_secs(3600));
    }
}
