//! Integration tests against the real local environment: kube-apiserver with
//! RBAC and etcd, PostgreSQL, and moto's AWS API server, as started by
//! `hack/localenv.sh up` (the test command `hack/test.sh` does that first).
//!
//! One test binary, one module per area, so the suite links once.

mod support;

mod atomicity;
mod attacks;
mod audit;
mod audit_anchor;
mod aws;
mod chart;
mod classes;
mod crashes;
mod faults;
mod hostile;
mod iam_enforcement;
mod identity;
mod image;
mod isolation;
mod isolation_aws;
mod isolation_db;
mod lifecycle;
mod operator_policy;
mod postgres;
mod red_team;
mod runtime;
mod tls;
