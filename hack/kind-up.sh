#!/usr/bin/env bash
# For users with Docker: a kind cluster with Istio and kzscaler installed from dist/ (the images
# built by hack/release.sh, loaded into kind; the Helm chart), then the smoke test hack/demo.sh
# runs on the test bed: a caller pod curls a Deployment at 0 replicas and gets 200.
# NOT TESTED on the machines kzscaler is developed on (no Docker daemon there); see README.
set -euo pipefail
# shellcheck source=hack/lib/common.sh
source "$(dirname "$0")/lib/common.sh"
# shellcheck source=hack/lib/smoke.sh
source "$(dirname "$0")/lib/smoke.sh"

CLUSTER=${KZSCALER_KIND_CLUSTER:-kzscaler}
NS=kzscaler-smoke
# An HTTP server on 8080 with no arguments.
APP_IMAGE=${KZSCALER_SMOKE_IMAGE:-us-docker.pkg.dev/google-samples/containers/gke/hello-app:1.0}
CURL_IMAGE=${KZSCALER_CURL_IMAGE:-docker.io/curlimages/curl:8.11.1}

case "${1:-}" in
  -h | --help)
    cat <<USAGE
Usage: hack/kind-up.sh [--help]

Needs docker, kind, kubectl, helm, istioctl and skopeo on PATH, and for hack/release.sh
rustup and root (it installs musl-tools and umoci from Debian's packages). Then:
  1. hack/release.sh, unless dist/ holds this version already;
  2. kind create cluster --name $CLUSTER (KZSCALER_KIND_CLUSTER), unless it exists;
  3. istioctl install --set profile=minimal;
  4. the images from dist/images loaded into kind (skopeo to docker-archive, kind load);
  5. the namespace kzscaler-system (labelled istio-injection=enabled), then
     helm install kzscaler charts/kzscaler -n kzscaler-system, with a webhook certificate
     from hack/webhook-certs.sh;
  6. the smoke test in namespace $NS: hello (managed) and plain (unmanaged) at 0 replicas
     ($APP_IMAGE, KZSCALER_SMOKE_IMAGE); a caller pod ($CURL_IMAGE) curls both: hello
     answers 200 (held, woken), plain 503.
Remove it all with: kind delete cluster --name $CLUSTER
USAGE
    exit 0
    ;;
  "") ;;
  *) fail "arguments" "" "unknown argument '$1' (see --help)" ;;
esac

for tool in docker kind kubectl helm istioctl skopeo; do
  command -v "$tool" >/dev/null || fail "kind-up" "" "$tool is not on PATH (see hack/kind-up.sh --help)"
done
cd "$REPO_ROOT"
VERSION=$(workspace_version)
LOGS=$REPO_ROOT/.local/kind
mkdir -p "$LOGS"

if ! grep -q "^kzscaler-controller:$VERSION " dist/digests.txt 2>/dev/null; then
  hack/release.sh
fi

step "kind cluster $CLUSTER"
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  ok "exists"
else
  run_logged "kind create cluster" "$LOGS/kind.log" kind create cluster --name "$CLUSTER"
  ok "created"
fi
kubectl config use-context "kind-$CLUSTER" >/dev/null

step "Istio (istioctl install --set profile=minimal)"
run_logged "istioctl install" "$LOGS/istio.log" istioctl install -y --set profile=minimal
ok "istiod ready"

step "loading the images of dist/ into kind"
for name in kzscaler-controller kzscaler-webhook; do
  archive=$LOGS/$name.tar
  rm -f "$archive"
  run_logged "skopeo copy $name" "$LOGS/skopeo.log" \
    skopeo copy "oci:dist/images/$name:$VERSION" "docker-archive:$archive:kzscaler.local/$name:$VERSION"
  run_logged "kind load $name" "$LOGS/kind.log" kind load image-archive "$archive" --name "$CLUSTER"
done
# The smoke test's images too, so a wake does not wait for a pull.
for image in "$APP_IMAGE" "$CURL_IMAGE"; do
  run_logged "docker pull $image" "$LOGS/docker.log" docker pull "$image"
  run_logged "kind load $image" "$LOGS/kind.log" kind load docker-image "$image" --name "$CLUSTER"
done
ok "kzscaler.local/kzscaler-controller:$VERSION, kzscaler.local/kzscaler-webhook:$VERSION, $APP_IMAGE, $CURL_IMAGE"

step "kzscaler (helm install charts/kzscaler; webhook certificate from hack/webhook-certs.sh)"
kubectl create namespace kzscaler-system --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl label namespace kzscaler-system istio-injection=enabled app.kubernetes.io/part-of=kzscaler --overwrite >/dev/null
run_logged "helm install" "$LOGS/helm.log" helm upgrade --install kzscaler charts/kzscaler \
  --namespace kzscaler-system --set image.registry=kzscaler.local --set image.pullPolicy=Never
certs=$LOGS/webhook-certs
hack/webhook-certs.sh "$certs"
kubectl -n kzscaler-system create secret tls kzscaler-webhook-tls --cert "$certs/tls.crt" --key "$certs/tls.key" \
  --dry-run=client -o yaml | kubectl apply -f - >/dev/null
hack/webhook-certs.sh --patch "$certs"
for d in kzscaler-controller kzscaler-webhook; do
  run_logged "rollout $d" "$LOGS/rollout.log" kubectl -n kzscaler-system rollout status "deployment/$d" --timeout 180s
done
ok "kzscaler running"

step "smoke test in namespace $NS"
smoke_workloads "$NS" "$APP_IMAGE" | kubectl apply -f - >/dev/null
kubectl -n "$NS" delete pod caller --ignore-not-found --wait >/dev/null
run_logged "caller pod" "$LOGS/caller.log" kubectl -n "$NS" run caller --image "$CURL_IMAGE" --restart Never --command -- sleep 3600
run_logged "caller pod" "$LOGS/caller.log" kubectl -n "$NS" wait pod/caller --for condition=Ready --timeout 180s
# Ready once its sidecar runs the Wasm filter (pilot-agent fetched the module and handed it to
# Envoy over ECDS; on failure it would be an RBAC filter instead), then one poll period for the
# filter to take the controller's snapshot.
for i in $(seq 120); do
  # Read whole: `grep -q` on the pipe could end it early and, with pipefail, fail the test.
  dump=$(kubectl -n "$NS" exec caller -c istio-proxy -- pilot-agent request GET config_dump 2>/dev/null || true)
  [[ "$dump" == *envoy.extensions.filters.http.wasm.v3.Wasm* ]] && break
  [ "$i" = 120 ] && fail "smoke test" "$LOGS/caller.log" "the caller's sidecar has no kzscaler filter after 120s (kubectl -n $NS logs caller -c istio-proxy)"
  sleep 1
done
sleep 3
request() { # NAME: "<status>" of a request from the caller pod
  kubectl -n "$NS" exec caller -c caller -- curl -s -o /dev/null -w '%{http_code}' --max-time 40 "http://$1.$NS/" || true
}
smoke_expect "plain.$NS" 503 "$(request plain)" "" "$LOGS/caller.log"
ok "plain (unmanaged, 0 replicas): 503"
smoke_expect "hello.$NS" 200 "$(request hello)" "" "$LOGS/caller.log"
ok "hello (managed, 0 replicas): 200 after being held and woken"
kubectl -n "$NS" get deployment hello plain
