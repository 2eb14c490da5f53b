#!/usr/bin/env bash
# manifests/ is rendered from the Helm chart (charts/kzscaler) with its default values, so the
# two never disagree: edit the chart, then run this. --check compares instead of writing.
set -euo pipefail
# shellcheck source=hack/lib/common.sh
source "$(dirname "$0")/lib/common.sh"
# shellcheck source=hack/lib/tools.sh
source "$(dirname "$0")/lib/tools.sh"

check=false
case "${1:-}" in
  -h | --help)
    cat <<USAGE
Usage: hack/render-manifests.sh [--check] [--help]

Writes manifests/*.yaml, manifests/rbac/*.yaml and manifests/cert-manager/certificate.yaml from
  helm template kzscaler charts/kzscaler --namespace kzscaler-system --set createNamespace=true
(otherwise the defaults; certManager.enabled=true for manifests/cert-manager). It also checks
that the chart's version and appVersion are the workspace's (Cargo.toml). The kustomization.yaml
files are not rendered. --check writes nothing and fails, showing the difference, when
manifests/ is not what the chart renders. Helm $HELM_VERSION is built once from the Go module
proxy and cached in \$KZSCALER_CACHE_DIR/tools.
USAGE
    exit 0
    ;;
  --check) check=true ;;
  "") ;;
  *) fail "arguments" "" "unknown argument '$1' (expected --check or --help)" ;;
esac

HELM=$(helm_bin)
cd "$REPO_ROOT"
check_chart_version "$(workspace_version)"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
log=$out/helm.log
"$HELM" lint charts/kzscaler --namespace kzscaler-system >"$log" 2>&1 || fail "helm lint" "$log" "charts/kzscaler does not lint"
"$HELM" template kzscaler charts/kzscaler --namespace kzscaler-system --set createNamespace=true --output-dir "$out/default" >>"$log" 2>&1 ||
  fail "helm template" "$log" "charts/kzscaler does not render"
"$HELM" template kzscaler charts/kzscaler --namespace kzscaler-system --set createNamespace=true --set certManager.enabled=true \
  --output-dir "$out/cert-manager" >>"$log" 2>&1 ||
  fail "helm template" "$log" "charts/kzscaler does not render with certManager.enabled=true"

# FILE (under templates/) and where its output goes in manifests/.
mkdir -p "$out/manifests/rbac" "$out/manifests/cert-manager"
render() { # RENDERED_FILE MANIFEST
  {
    echo "# Rendered from charts/kzscaler by hack/render-manifests.sh: edit the chart, not this file."
    # helm starts with "---" and names the template before each document ("# Source: ...").
    sed '1{/^---$/d}' "$1" | sed '/^# Source: kzscaler\/templates\//d'
  } >"$out/manifests/$2"
}
for f in namespace.yaml controller.yaml webhook.yaml webhooks.yaml rbac/serviceaccounts.yaml rbac/controller.yaml; do
  [ -f "$out/default/kzscaler/templates/$f" ] || fail "helm template" "$log" "templates/$f rendered nothing with the defaults"
  render "$out/default/kzscaler/templates/$f" "$f"
done
[ ! -e "$out/default/kzscaler/templates/cert-manager/certificate.yaml" ] ||
  fail "helm template" "" "templates/cert-manager/certificate.yaml renders with the defaults; expected only with certManager.enabled=true"
render "$out/cert-manager/kzscaler/templates/cert-manager/certificate.yaml" cert-manager/certificate.yaml

status=0
for f in namespace.yaml controller.yaml webhook.yaml webhooks.yaml rbac/serviceaccounts.yaml rbac/controller.yaml cert-manager/certificate.yaml; do
  if $check; then
    if ! diff -u "manifests/$f" "$out/manifests/$f" >"$out/diff" 2>&1; then
      echo "manifests/$f differs from what charts/kzscaler renders (- manifests, + chart):" >&2
      cat "$out/diff" >&2
      status=1
    fi
  else
    cp "$out/manifests/$f" "manifests/$f"
  fi
done
if $check; then
  [ $status = 0 ] || fail "manifests" "" "manifests/ is not what the chart renders: run hack/render-manifests.sh"
  ok "manifests/ is what charts/kzscaler renders"
else
  ok "manifests/ rendered from charts/kzscaler"
fi
