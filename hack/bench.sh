#!/usr/bin/env bash
# The provisioning benchmark of issue 7: starts the local environment, builds
# the release operator and runs bench/src/main.rs (the workspace member
# tenantry-bench, not shipped with the operator), which prints a table
# and rewrites the results section of docs/benchmarks.md.
#
# Usage: hack/bench.sh [--tenants 1,100,1000] [--modes schema,database]
#                      [--concurrency 16] [--probe-interval 20s] [--steady 45s]
#                      [--scale 10000] [--scale-real 1000] [--database-max 100]
#                      [--baselines engine,engine-probe,bare] [--fresh]
#   --fresh      purge the local environment first (all its data) for a clean run
#   --scale 0    skips the scale stage; --baselines none runs the operator only
#   --database-max  largest N run in Database mode (each database is ~7.5 MB
#                of disk, made four times: operator, engine, engine+probe, bare)
# Runs against 127.0.0.1 only. Long: minutes per 1,000 tenants.
set -Eeuo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

args=()
fresh=false
for a in "$@"; do
  if [[ "$a" == "--fresh" ]]; then fresh=true; else args+=("$a"); fi
done

if $fresh; then hack/localenv.sh purge; fi
hack/localenv.sh up
# shellcheck source=/dev/null
source .localenv/env
# The CRDs, as the chart installs them.
kubectl apply -f crds/ >/dev/null

export TENANTRY_BENCH_COMMAND="hack/bench.sh $*"
# The operator and the harness (bench/), optimised.
# Build outputs live outside the clone, as for hack/test.sh.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${TENANTRY_CACHE_DIR:-$HOME/.cache/tenantry}/target}
cargo build --release -p tenantry -p tenantry-bench
target="$CARGO_TARGET_DIR"
exec "$target/release/tenantry-bench" --out docs/benchmarks.md "${args[@]}"
