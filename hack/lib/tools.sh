# shellcheck shell=bash
# The release tools, built once from the Go module proxy (or Debian's packages) and cached in
# $KZSCALER_CACHE_DIR/tools/<name>-<version>, like the test bed's binaries. Sourced after common.sh.
# shellcheck disable=SC2034

ORAS_VERSION=v1.3.6
REGISTRY_VERSION=v3.1.2
HELM_VERSION=v3.22.0
KREW_VERSION=v0.4.3
CARGO_DENY_VERSION=0.20.2
CARGO_CYCLONEDX_VERSION=0.5.9

TOOLS_DIR=$KZSCALER_CACHE_DIR/tools

# cached_tool DIR EXE LOGNAME WHAT CMD...: print DIR/EXE, first running CMD once to install it
# into DIR.tmp (which CMD receives as its last argument), then moving that to DIR.
cached_tool() {
  local dir=$1 exe=$2 logname=$3 what=$4
  shift 4
  if [ ! -x "$dir/$exe" ]; then
    local log=$KZSCALER_CACHE_DIR/logs/$logname.log
    mkdir -p "$(dirname "$log")"
    step "$what (once; cached in $dir)"
    rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
    "$@" "$dir.tmp" >"$log" 2>&1 || fail "$logname" "$log" "$what failed"
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
    ok "$what"
  fi
  printf '%s\n' "$dir/$exe"
}

_go_install() { # PKG@VERSION DEST
  GOBIN="$2" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" "$1"
}

# go_tool NAME MODULE_PKG VERSION: the path of NAME built (go install, static) from
# MODULE_PKG@VERSION.
go_tool() {
  cached_tool "$TOOLS_DIR/$1-$3" "$1" "$1" "$1 $3: go install $2@$3" _go_install "$2@$3"
}

# cargo_tool NAME CRATE VERSION: the path of the cargo subcommand NAME from CRATE@VERSION
# (cargo install from crates.io).
cargo_tool() {
  cached_tool "$TOOLS_DIR/$2-$3" "bin/$1" "$2" "$2 $3: cargo install" \
    cargo install --locked --version "$3" "$2" --root
}

oras_bin() { go_tool oras oras.land/oras/cmd/oras "$ORAS_VERSION"; }
registry_bin() { go_tool registry github.com/distribution/distribution/v3/cmd/registry "$REGISTRY_VERSION"; }
helm_bin() { go_tool helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION"; }
krew_bin() { go_tool krew sigs.k8s.io/krew/cmd/krew "$KREW_VERSION"; }

# debian_tools CMD[:PACKAGE]...: install the Debian packages of these commands when missing
# (root only); PACKAGE defaults to the command's name.
debian_tools() {
  local missing=() spec
  for spec in "$@"; do
    command -v "${spec%%:*}" >/dev/null || missing+=("${spec#*:}")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || fail "tools" "" "missing packages ${missing[*]}; install them (apt-get install ${missing[*]}) or run as root"
  local log=$KZSCALER_CACHE_DIR/logs/apt-tools.log
  mkdir -p "$(dirname "$log")"
  step "apt-get install ${missing[*]}"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } >"$log" 2>&1 ||
    fail "apt-get install" "$log" "cannot install ${missing[*]}"
  ok "${missing[*]}"
}
