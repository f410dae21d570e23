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
/// namespace); `Reconciling` is True while work is in flight.
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

    #[test]
    fn failure_backoff_doubles_and_caps() {
        let (b, m) = (Duration::from_secs(60), Duration::from_secs(3600));
        assert_eq!(failure_backoff(1, b, m), Duration::from_secs(60));
        assert_eq!(failure_backoff(2, b, m), Duration::from_secs(120));
        assert_eq!(failure_backoff(10, b, m), Duration::from_secs(3600));
        assert_eq!(failure_backoff(u32::MAX, b, m), Duration::from_secs(3600));
    }
}
