//! Isolation probes: each layer of a tenant is measured, as the tenant where
//! possible, never assumed. The reports feed `status.isolation`, the
//! `DatabaseIsolated`/`StorageIsolated`/`EncryptionAtRest` conditions and the
//! `tenantry verify` attestation.

pub mod database;
pub mod encryption;
pub mod storage;
pub mod tenant_access;

pub use crate::api::{Finding, IsolationState, LayerReport};
pub use crate::naming::SharedTable;

/// A finding that passed.
pub fn pass(check: &str, detail: impl Into<String>) -> Finding {
    Finding {
        check: check.to_string(),
        state: IsolationState::Enforced,
        detail: detail.into(),
    }
}

/// A finding that did not pass, with what it means.
pub fn fail(check: &str, state: IsolationState, detail: impl Into<String>) -> Finding {
    Finding {
        check: check.to_string(),
        state,
        detail: detail.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_tables_parse_from_configuration() {
        let t: SharedTable = "public.orders:tenant_id".parse().unwrap();
        assert_eq!(
            (
                t.schema.as_str(),
                t.table.as_str(),
                t.tenant_column.as_str()
            ),
            ("public", "orders", "tenant_id")
        );
        assert_eq!(t.to_string(), "public.orders:tenant_id");
        for bad in ["orders:tenant_id", "public.orders", ":x", "a.:b", "a.b:"] {
            assert!(bad.parse::<SharedTable>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_layer_is_as_weak_as_its_worst_finding() {
        let r = LayerReport::from_findings(vec![
            pass("a", "ok"),
            fail("b", IsolationState::Inert, "not forced"),
            fail("c", IsolationState::Unknown, "timeout"),
        ]);
        assert_eq!(r.state, IsolationState::Inert);
        let r = LayerReport::from_findings(vec![
            pass("a", "ok"),
            fail("b", IsolationState::Broken, "read 3 rows"),
        ]);
        assert_eq!(r.state, IsolationState::Broken);
        assert_eq!(
            LayerReport::from_findings(vec![pass("a", "ok")]).state,
            IsolationState::Enforced
        );
        assert_eq!(
            LayerReport::from_findings(vec![]).state,
            IsolationState::Unknown
        );
    }
}
