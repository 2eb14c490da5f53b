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

# go_tool NAME MODULE_PKG VERSION: print the path of NAME built from MODULE_PKG@VERSION, building it
# (go install, static) the first time.
go_tool() {
  local name=$1 pkg=$2 version=$3
  local dir=$TOOLS_DIR/$name-$version
  if [ ! -x "$dir/$name" ]; then
    local log=$KZSCALER_CACHE_DIR/logs/$name.log
    mkdir -p "$(dirname "$log")"
    step "$name $version: go install $pkg@$version (once; cached in $dir)"
    rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
    GOBIN="$dir.tmp" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" "$pkg@$version" >"$log" 2>&1 ||
      fail "$name" "$log" "go install $pkg@$version failed"
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
    ok "$name $version"
  fi
  printf '%s\n' "$dir/$name"
}

# cargo_tool NAME CRATE VERSION: the same for a cargo subcommand from crates.io.
cargo_tool() {
  local name=$1 crate=$2 version=$3
  local dir=$TOOLS_DIR/$crate-$version
  if [ ! -x "$dir/bin/$name" ]; then
    local log=$KZSCALER_CACHE_DIR/logs/$crate.log
    mkdir -p "$(dirname "$log")"
    step "$crate $version: cargo install (once; cached in $dir)"
    rm -rf "$dir.tmp"
    cargo install --locked --root "$dir.tmp" --version "$version" "$crate" >"$log" 2>&1 ||
      fail "$crate" "$log" "cargo install $crate@$version failed"
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
    ok "$crate $version"
  fi
  printf '%s\n' "$dir/bin/$name"
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
