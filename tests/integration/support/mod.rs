//! Shared helpers of the integration tests: the environment written by
//! `hack/localenv.sh`, unique names so tests run in parallel, clients.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};

use tenantry::backends::{Operation, TenantRef};

/// Backend tests drive a backend directly, with no Tenant reconcile and so
/// no audit trail behind its changes: each such call says so with an
/// operation whose changes go nowhere (the operator never makes one).
pub fn unrecorded(tenant: &TenantRef) -> Operation {
    Operation::unrecorded(tenant.clone())
}

/// A backend call recorded in `scope`'s trail, as the operator's are.
pub fn in_trail(scope: &tenantry::audit::Scope, tenant: &TenantRef) -> Operation {
    Operation::new(tenant.clone(), std::sync::Arc::new(scope.clone()))
}

/// Reads a variable that `hack/localenv.sh` exports, failing loudly when the
/// tests were started without the local environment.
pub fn env(name: &str) -> String {
    tenantry::init_tls();
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run the tests with `hack/test.sh`, or `hack/localenv.sh up` \
             and `source .localenv/env` first"
        )
    })
}

/// A tenant name no other test (or earlier run) uses: `<prefix>-<pid>-<n>`.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        % 100_000;
    format!("{prefix}-{pid}-{nanos}-{n}")
}

/// A fresh random uid, as the API server would give a Tenant.
pub fn unique_uid() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        rng.random::<u32>(),
        rng.random::<u16>(),
        rng.random::<u16>() & 0xfff,
        rng.random::<u16>() & 0xfff,
        rng.random::<u64>() & 0xffff_ffff_ffff
    )
}

pub mod campaign;
pub mod census;
pub mod cluster;
pub mod faults;
pub mod helm;
pub mod moto_iam;
pub mod rbac;
pub mod readback;
pub mod relay;

/// The bucket prefix the local environment uses.
pub fn bucket_prefix() -> String {
    env("TENANTRY_BUCKET_PREFIX")
}
