#!/usr/bin/env bash
# The main job on the local environment: bring up kube-apiserver, PostgreSQL
# and moto, install the CRD, run the operator, apply examples/, and show the
# tenants it provisioned.
#
#   hack/demo.sh          # run it (the operator keeps running in the background)
#   hack/demo.sh down     # stop the operator and the demo's local environment
#
# The demo has an environment of its own (run dir .localenv-demo, ports from
# 24200; TENANTRY_DEMO_RUN_DIR and TENANTRY_DEMO_PORT_BASE change them), apart
# from the one hack/test.sh uses (.localenv, ports from 24100): the demo's
# default TenantClass and tenants survive `down`, and tests must never meet them.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
cache=${TENANTRY_CACHE_DIR:-$HOME/.cache/tenantry}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache/target}
export TENANTRY_RUN_DIR=${TENANTRY_DEMO_RUN_DIR:-$repo/.localenv-demo}
export TENANTRY_PORT_BASE=${TENANTRY_DEMO_PORT_BASE:-24200}
run_dir=$TENANTRY_RUN_DIR
pid_file=$run_dir/operator.pid
log_file=$run_dir/logs/operator.log

stop_operator() {
  if [[ -f $pid_file ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then
    kill "$(cat "$pid_file")" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$(cat "$pid_file")" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$pid_file"
}

if [[ ${1:-} == down ]]; then
  stop_operator
  hack/localenv.sh down
  exit 0
fi

say() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }

say "starting the local environment (first run installs and builds; later runs reuse)"
hack/localenv.sh up
# shellcheck disable=SC1091
source "$run_dir/env"

say "building tenantry"
cargo build --quiet --bin tenantry
bin=$CARGO_TARGET_DIR/debug/tenantry

say "installing the CRDs: tenantry crd | kubectl apply -f -"
"$bin" crd | kubectl apply -f -
kubectl wait --for=condition=Established crd/tenants.tenantry.dev crd/tenantclasses.tenantry.dev --timeout=60s

say "running the operator (log: $log_file)"
stop_operator
# Kubernetes 1.20 accepts Events about cluster-scoped objects only in kube-system.
TENANTRY_EVENT_NAMESPACE=kube-system \
  TENANTRY_METRICS_ADDR=127.0.0.1:$((TENANTRY_OPERATOR_PORT_BASE)) \
  nohup "$bin" run >"$log_file" 2>&1 &
echo $! >"$pid_file"

say "applying examples/ (two TenantClasses, a tenant of each): kubectl apply -k examples/"
kubectl apply -f examples/namespace.yaml
# The enterprise class's dedicated server is the local environment's second
# PostgreSQL cluster; its admin URL goes into a Secret, never into a manifest.
kubectl create secret generic postgres-enterprise -n tenantry-system \
  --from-literal=url="$TENANTRY_DATABASE_URL_2" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl apply -k examples/

say "waiting for the tenants to be Ready"
if ! kubectl wait --for=condition=Ready tenant/acme tenant/globex --timeout=180s; then
  kubectl get tenants -o yaml >&2
  tail -n 50 "$log_file" >&2
  exit 1
fi

say "kubectl get tenants"
kubectl get tenants
say "the isolation attestation: tenantry verify acme globex"
"$bin" verify acme globex | python3 -c 'import json,sys
for line in sys.stdin:
    d = json.loads(line); i = d["isolation"]
    print(d["tenant"], "enforced" if d["enforced"] else "NOT enforced", {k: i[k]["state"] for k in ("database", "storage", "encryption")}, "verified at", i["verifiedAt"])'

say "kubectl get tenantclasses"
kubectl get tenantclasses
say "where each tenant lives (kubectl get tenant NAME -o jsonpath='{.status.placement}')"
for t in acme globex; do echo "$t: $(kubectl get tenant "$t" -o jsonpath='{.status.placement}')"; done
say "what the operator made for tenant acme (kubectl get tenant acme -o jsonpath='{.status.resources}')"
kubectl get tenant acme -o jsonpath='{.status.resources}' | python3 -m json.tool
say "globex's own AWS identity (enterprise class: aws.identity), and its ServiceAccount"
echo "role: $(kubectl get tenant globex -o jsonpath='{.status.resources.iamRoleArn}')"
echo "serviceAccount: $(kubectl get tenant globex -o jsonpath='{.status.resources.serviceAccount}')"
say "measured as globex's role: its own bucket and key, and the operator's canary (a neighbour)"
kubectl get tenant globex -o json | python3 -c 'import json,sys
i = json.load(sys.stdin)["status"]["isolation"]
for layer in ("storage", "encryption"):
    for f in i[layer]["findings"]:
        if f["check"].endswith(("tenantAccess", "neighbourRefused")):
            print(f["check"], f["state"] + ":", f["detail"])'
say "the credentials Secret apps mount (keys only)"
kubectl get secret -n demo-apps acme-credentials -o jsonpath='{.data}' | python3 -c 'import json,sys; print(sorted(json.load(sys.stdin)))'

cat >&2 <<MSG

The operator keeps running (pid $(cat "$pid_file"), metrics on http://127.0.0.1:$TENANTRY_OPERATOR_PORT_BASE/metrics).
Try:  source $run_dir/env; kubectl get tenants -w
Stop: hack/demo.sh down
MSG
