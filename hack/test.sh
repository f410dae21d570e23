#!/usr/bin/env bash
# Runs every check and test of tenantry against the real local environment
# (kube-apiserver + etcd, PostgreSQL, moto), installing and starting it first.
#
#   hack/test.sh                 # everything
#   hack/test.sh aws             # extra arguments go to `cargo test`
#
# Environment: TENANTRY_KEEP_ENV=1 leaves the local environment running when
# this script started it (by default it stops what it started).
# The suite runs against the moto that enforces IAM (TENANTRY_TEST_AWS,
# default moto-iam): the tests' own AWS calls as its administrator, and every
# operator a test starts as a user holding exactly the operator's IAM policy
# (tests/integration/support/moto_iam.rs), so a missing action fails a test.
# TENANTRY_TEST_AWS=moto runs it against the moto that lets everything in.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

cache=${TENANTRY_CACHE_DIR:-$HOME/.cache/tenantry}
# Build outputs live outside the clone so fresh clones (CI) reuse them.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache/target}

started_env=0
if ! hack/localenv.sh status >/dev/null 2>&1; then
  started_env=1
fi
cleanup() {
  if [[ $started_env == 1 && ${TENANTRY_KEEP_ENV:-0} != 1 ]]; then
    hack/localenv.sh down >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

hack/localenv.sh up
# shellcheck disable=SC1091
source "${TENANTRY_RUN_DIR:-$repo/.localenv}/env"
if [[ ${TENANTRY_TEST_AWS:-moto-iam} == moto-iam ]]; then
  export AWS_ENDPOINT_URL=$TENANTRY_IAM_AWS_ENDPOINT
  export AWS_ACCESS_KEY_ID=$TENANTRY_IAM_ADMIN_ACCESS_KEY_ID
  export AWS_SECRET_ACCESS_KEY=$TENANTRY_IAM_ADMIN_SECRET_ACCESS_KEY
fi

echo "test: cargo fmt --check" >&2
cargo fmt --all -- --check
echo "test: cargo clippy --workspace --all-targets -- -D warnings" >&2
cargo clippy --workspace --all-targets --features failpoints -- -D warnings
# The OCI image that tests/integration/image.rs runs the operator from, built
# (a release build: minutes when the cache is cold) before the tests start,
# so it does not take the CPU from tests that wait on their operators; the
# test's own call of hack/image.sh then finds it up to date.
echo "test: hack/image.sh (the OCI image)" >&2
hack/image.sh >/dev/null
echo "test: cargo test (unit and integration, against the local environment)" >&2
# Integration tests wait on servers, not on the CPU: run more at once.
export RUST_TEST_THREADS=${RUST_TEST_THREADS:-8}
results=$(mktemp)
set +e
cargo test --workspace --features failpoints "$@" 2>&1 | tee "$results"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "%d passed, %d failed\n", p, f }' "$results"
rm -f "$results"
exit "$status"
