//! A kind of resource that exists only in the tests: a tenant's entry in an
//! in-memory ledger, with an "enabled" flag that is its access. Nothing
//! outside this file knows it; the hermetic tests register it with one line
//! and it takes part in every lifecycle path.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::api::Reason;
use crate::provision::{Access, Attempt, Ensured, Removal, Resource, StepError};

/// What the ledger holds for the tenant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    pub exists: bool,
    pub enabled: bool,
    /// Let go by a `Retain` deletion, for a Tenant of the same name.
    pub released: bool,
}

#[derive(Clone, Default)]
pub struct Ledger {
    pub entry: Arc<Mutex<Entry>>,
    /// Permanent failures to return from the next ensures.
    pub failures_to_come: Arc<Mutex<u32>>,
}

impl Ledger {
    pub fn entry(&self) -> Entry {
        self.entry.lock().unwrap().clone()
    }

    pub fn fail_next_ensure(&self) {
        *self.failures_to_come.lock().unwrap() += 1;
    }
}

#[async_trait]
impl<C: Send + Sync> Resource<C> for Ledger {
    fn name(&self) -> &'static str {
        "ledger"
    }

    async fn ensure(&self, _ctx: &mut C, attempt: Attempt) -> Result<Ensured, StepError> {
        let mut failures = self.failures_to_come.lock().unwrap();
        let mut entry = self.entry.lock().unwrap();
        if *failures > 0 {
            *failures -= 1;
            // Made in part before failing, as a real backend may.
            entry.exists = true;
            return Err(StepError::permanent(
                Reason::BackendRejected,
                "ledger",
                "the ledger refused the entry",
            ));
        }
        let adopted = entry.released;
        *entry = Entry {
            exists: true,
            enabled: attempt.access == Access::Granted,
            released: false,
        };
        Ok(if adopted {
            Ensured::AdoptedRelease
        } else {
            Ensured::Owned
        })
    }

    async fn remove(&self, _ctx: &mut C, _removal: Removal) -> Result<(), StepError> {
        *self.entry.lock().unwrap() = Entry::default();
        Ok(())
    }

    async fn release(&self, _ctx: &mut C, _removal: Removal) -> Result<(), StepError> {
        let mut entry = self.entry.lock().unwrap();
        if entry.exists {
            entry.enabled = false;
            entry.released = true;
        }
        Ok(())
    }

    async fn revoke_access(&self, _ctx: &mut C) -> Result<(), StepError> {
        self.entry.lock().unwrap().enabled = false;
        Ok(())
    }

    async fn restore_access(&self, _ctx: &mut C) -> Result<(), StepError> {
        let mut entry = self.entry.lock().unwrap();
        entry.enabled = entry.exists;
        Ok(())
    }
}
