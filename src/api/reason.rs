//! Condition and event reasons: every short PascalCase cause tenantry writes
//! into a Tenant's conditions, its journal's `failureReason` and its Events.
//!
//! A reason is written as a string (the CRD's fields stay strings); this enum
//! is the one list of them. Each known variant is written exactly as it is
//! named, so `Reason::NamespaceMissing` is `"NamespaceMissing"` on the wire.
//! `docs/troubleshooting.md` says what each one means and what to do.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::IsolationState;

/// Declares the known reasons once: the variants, their strings (the
/// variant's own name) and the list of them all.
macro_rules! reasons {
    ($( $(#[$doc:meta])* $variant:ident, )+) => {
        /// A condition or event reason.
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        pub enum Reason {
            $( $(#[$doc])* $variant, )+
            /// A reason this version does not know, read back from a stored
            /// string (see [`Reason::from`]).
            Other(UnknownReason),
        }

        impl Reason {
            /// Every known reason (all but [`Reason::Other`]).
            pub const KNOWN: &'static [Reason] = &[$(Reason::$variant,)+];

            /// The reason as written in conditions, the journal and events.
            pub fn as_str(&self) -> &str {
                match self {
                    $( Self::$variant => stringify!($variant), )+
                    Self::Other(other) => &other.0,
                }
            }

            fn known(s: &str) -> Option<Self> {
                match s {
                    $( stringify!($variant) => Some(Self::$variant), )+
                    _ => None,
                }
            }
        }
    };
}

reasons! {
    // A step of the engine failed (`StepError`).
    /// A resource with the tenant's name exists and is not the tenant's.
    Conflict,
    /// A backend could not be reached or answered with a retryable error.
    BackendUnavailable,
    /// A backend refused the request and will refuse it again.
    BackendRejected,
    /// Something the tenant needs (say, its namespace) does not exist yet.
    DependencyMissing,
    /// tenantry's own invariant was broken (a step ran before its inputs).
    Internal,

    // The spec cannot be honoured.
    /// The spec breaks a rule the schema cannot express.
    InvalidSpec,
    /// The class does not let a tenant choose another isolation mode.
    IsolationModeNotAllowed,
    /// The isolation mode cannot change once the tenant's data exists.
    IsolationModeChangeRefused,
    /// The deletion grace period is shorter than the class's minimum.
    GracePeriodBelowClassMinimum,
    /// The connection limit is above the class's maximum.
    ConnectionLimitAboveClassMaximum,
    /// The tenant's class now places it elsewhere; tenantry does not move data.
    PlacementChangeRefused,

    // The tenant's class.
    /// `spec.class` names no TenantClass.
    ClassNotFound,
    /// Several TenantClasses claim to be the default.
    SeveralDefaultClasses,
    /// The TenantClass is malformed.
    ClassInvalid,
    /// The TenantClass's backends cannot be used or read right now.
    ClassUnavailable,
    /// The TenantClass can be used: settings valid, server answers.
    ClassReady,

    // The credentials namespace.
    /// The credentials namespace does not exist (yet).
    NamespaceMissing,
    /// The class does not allow credentials in that namespace.
    NamespaceNotAllowed,

    /// The audit trail failed its guards; nothing more is changed.
    AuditTrailDistrusted,

    // Provisioning and deletion.
    /// Steps are being ensured.
    Provisioning,
    /// Every resource exists and every isolation layer is enforced.
    Provisioned,
    /// A failed onboarding is being undone.
    RollingBack,
    /// A failed onboarding was undone (when the journal kept no cause).
    RolledBack,
    /// Undoing a failed onboarding cannot remove a resource; retried.
    RollbackStuck,
    /// `spec.suspended`: access revoked, data kept.
    Suspended,
    /// The tenant's resources are being released or removed.
    Deleting,
    /// A `Delete` deletion took access away; data waits out the grace period.
    AccessRevoked,
    /// A deletion cannot remove a resource; retried.
    DeletionStuck,
    /// Deleted with policy `Retain`: resources released for adoption (event).
    Retained,
    /// Deleted with policy `Delete`: every resource removed (event).
    Deleted,

    // Isolation of a provisioned tenant: the worst layer's state, prefixed.
    /// Every layer enforced (never written today: enforced is `Provisioned`).
    IsolationEnforced,
    /// A layer is configured but bypassable.
    IsolationInert,
    /// A layer is broken.
    IsolationBroken,
    /// A layer could not be measured.
    IsolationUnknown,
    // One layer's condition (`DatabaseIsolated`, ...): its state.
    /// The layer's checks all passed.
    Enforced,
    /// The layer is configured but bypassable.
    Inert,
    /// The layer is broken.
    Broken,
    /// The layer could not be measured.
    Unknown,
    /// Isolation drift was found by a probe (event).
    DriftDetected,
    /// The credentials Secret was deleted or changed and written again (event).
    CredentialsRestored,
    /// Isolation drift was repaired and verified (event).
    DriftRepaired,
    /// Drift only a superuser can undo: the tenant's login was disabled (event).
    FailedClosed,

    // The kstatus conditions when they are False.
    /// `Reconciling` is False: nothing in progress.
    Idle,
    /// `Stalled` is False: nothing needs a person.
    NotStalled,
}

impl Reason {
    /// The reason of a provisioned tenant whose isolation, at worst, is `state`.
    pub fn isolation(state: IsolationState) -> Self {
        match state {
            IsolationState::Enforced => Self::IsolationEnforced,
            IsolationState::Inert => Self::IsolationInert,
            IsolationState::Broken => Self::IsolationBroken,
            IsolationState::Unknown => Self::IsolationUnknown,
        }
    }

    /// The reason of one isolation layer's condition: its state.
    pub fn layer(state: IsolationState) -> Self {
        match state {
            IsolationState::Enforced => Self::Enforced,
            IsolationState::Inert => Self::Inert,
            IsolationState::Broken => Self::Broken,
            IsolationState::Unknown => Self::Unknown,
        }
    }

    /// Nothing will change without a person, even though tenantry keeps
    /// retrying: the tenant is `Stalled` whatever its phase.
    pub fn needs_a_person(&self) -> bool {
        matches!(self, Self::NamespaceMissing | Self::InvalidSpec)
    }

    /// A failure tenantry gets past by itself, by retrying (an outage, a
    /// measurement that could not be taken, a removal that waits on one):
    /// the tenant is still `Reconciling`, never `Stalled`, which GitOps
    /// tools (kstatus, Flux) take for final.
    pub fn retried_by_itself(&self) -> bool {
        matches!(
            self,
            Self::BackendUnavailable
                | Self::DependencyMissing
                | Self::ClassUnavailable
                | Self::IsolationUnknown
                | Self::RollbackStuck
                | Self::DeletionStuck
        )
    }
}

/// A reason string that names no known [`Reason`], kept as it was read.
///
/// Only parsing makes one, so a known reason is never an `Other`: two
/// reasons are equal exactly when their strings are.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UnknownReason(String);

impl UnknownReason {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Reads a stored reason (the journal's `failureReason`, a condition's
/// `reason`). Never fails: a string that is no known reason becomes
/// [`Reason::Other`] and is written back unchanged. Such strings are real:
/// a status written by another version of tenantry (an upgrade, a
/// rollback of one) may hold a reason this one does not have, and the
/// tenant's conditions must keep saying what that version said rather than
/// a guess.
impl From<&str> for Reason {
    fn from(s: &str) -> Self {
        Self::known(s).unwrap_or_else(|| Self::Other(UnknownReason(s.to_string())))
    }
}

impl FromStr for Reason {
    type Err = std::convert::Infallible;

    /// As [`Reason::from`]: unknown strings become [`Reason::Other`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::from(s))
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Reason {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Ok(Self::from(s.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_round_trips_through_its_string() {
        for reason in Reason::KNOWN {
            let s = reason.as_str();
            assert_eq!(reason.to_string(), s);
            assert_eq!(&Reason::from(s), reason, "{s}");
            assert_eq!(s.parse::<Reason>().as_ref(), Ok(reason), "{s}");
            let json = serde_json::to_value(reason).unwrap();
            assert_eq!(json, serde_json::Value::String(s.to_string()));
            assert_eq!(&serde_json::from_value::<Reason>(json).unwrap(), reason);
            assert!(!matches!(reason, Reason::Other(_)));
        }
    }

    #[test]
    fn known_reasons_are_written_as_named() {
        assert_eq!(Reason::NamespaceMissing.as_str(), "NamespaceMissing");
        assert_eq!(Reason::BackendUnavailable.to_string(), "BackendUnavailable");
        assert_eq!(
            Reason::isolation(IsolationState::Inert).as_str(),
            "IsolationInert"
        );
        assert_eq!(Reason::layer(IsolationState::Broken).as_str(), "Broken");
        let mut strings: Vec<&str> = Reason::KNOWN.iter().map(Reason::as_str).collect();
        strings.sort_unstable();
        strings.dedup();
        assert_eq!(
            strings.len(),
            Reason::KNOWN.len(),
            "no two reasons share a string"
        );
    }

    #[test]
    fn every_isolation_state_has_its_reasons() {
        for state in [
            IsolationState::Enforced,
            IsolationState::Inert,
            IsolationState::Broken,
            IsolationState::Unknown,
        ] {
            assert_eq!(Reason::layer(state).as_str(), state.as_str());
            assert_eq!(
                Reason::isolation(state).as_str(),
                format!("Isolation{}", state.as_str())
            );
        }
    }

    #[test]
    fn an_unknown_reason_is_kept_as_it_was_read() {
        let reason = Reason::from("SomethingAFutureVersionSays");
        assert!(matches!(reason, Reason::Other(_)));
        assert_eq!(reason.as_str(), "SomethingAFutureVersionSays");
        assert_eq!(
            serde_json::to_value(&reason).unwrap(),
            "SomethingAFutureVersionSays"
        );
        assert_eq!(
            serde_json::from_str::<Reason>("\"SomethingAFutureVersionSays\"").unwrap(),
            reason
        );
    }

    #[test]
    fn only_a_wait_for_a_person_stalls_a_retrying_tenant() {
        let stalling: Vec<&Reason> = Reason::KNOWN
            .iter()
            .filter(|r| r.needs_a_person())
            .collect();
        assert_eq!(
            stalling,
            [&Reason::InvalidSpec, &Reason::NamespaceMissing],
            "in declaration order"
        );
    }
}
