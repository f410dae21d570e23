#!/usr/bin/env bash
# The reliability campaign: the long variants of the fault and crash tests
# (200 tenants through a proxy injecting faults at 20%; 50 tenants with the
# operator SIGKILLed at random moments, 20 rounds), then the cross-tenant
# attack matrix, against the real local environment. Prints the figures
# recorded in docs/reliability.md.
#
#   hack/campaign.sh                      # everything
#   TENANTRY_FAULT_SEED=42 hack/campaign.sh faults::   # one part, a given seed
#   TENANTRY_CAMPAIGN_TENANTS=60 TENANTRY_CAMPAIGN_ROUNDS=10 hack/campaign.sh   # smaller
#   TENANTRY_CAMPAIGN_OTHER_KEYS=0 hack/campaign.sh faults::   # skip filling the KMS
#                                         # account to 5,000 keys of others first
#
# Environment: as hack/test.sh (TENANTRY_KEEP_ENV=1 keeps the local
# environment running when this script started it).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
cache=${TENANTRY_CACHE_DIR:-$HOME/.cache/tenantry}
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

export TENANTRY_CAMPAIGN=1
filters=("$@")
[[ ${#filters[@]} -gt 0 ]] || filters=(faults:: crashes:: attacks:: hostile::)
echo "campaign: machine: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)" >&2
out=$(mktemp)
status=0
for filter in "${filters[@]}"; do
  start=$(date +%s)
  # One test at a time: the figures are the campaign's, not a race's.
  set +e
  cargo test --features failpoints --test integration "$filter" -- --nocapture --test-threads=1 2>&1 \
    | tee -a "$out" | grep -E '^(test |test result|[A-Z ]+CAMPAIGN|ATTACK|HOSTILE|thread .* panicked)' -A3
  rc=${PIPESTATUS[0]}
  set -e
  [[ $rc == 0 ]] || status=1
  echo "campaign: $filter took $(( $(date +%s) - start )) s" >&2
done
echo "campaign: figures" >&2
grep -oE '[A-Z][A-Z ]*(CAMPAIGN|MATRIX|INPUTS): .*' "$out" || true
rm -f "$out"
exit "$status"
