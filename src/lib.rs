//! tenantry: a Kubernetes operator that provisions isolated per-tenant
//! infrastructure, all or nothing, and proves that the isolation holds.

pub mod api;
pub mod audit;
pub mod backends;
pub mod class_registry;
pub mod config;
pub mod controller;
pub mod isolation;
pub mod leader;
pub mod metrics;
pub mod naming;
pub mod permissions;
pub mod policy_eval;
pub mod provision;
pub mod resources;
pub mod runtime;
pub mod shard;

/// Selects the TLS crypto provider for the whole process. The Kubernetes,
/// PostgreSQL and AWS clients each bring rustls, with different default
/// providers; without one chosen explicitly rustls refuses to pick.
pub fn init_tls() {
    // Err means another provider was installed first, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
