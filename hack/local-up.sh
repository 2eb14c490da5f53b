#!/usr/bin/env bash
# Starts the local test bed on 127.0.0.1: etcd, kube-apiserver (RBAC, admission webhooks, audit
# log), kube-controller-manager, kube-scheduler, kwok with a fake node, Istio's CRDs and istiod,
# the test bed's kubelet (pods in network namespaces of their own, Istio sidecars by
# pilot-agent), kzscaler's controller and webhook, and a caller pod whose sidecar is the Envoy
# that tests and the demo send requests to.
# Idempotent: what already runs is left alone.
# Writes .local/env (KUBECONFIG, PATH, KZSCALER_ENVOY, KZSCALER_STATE_DIR, ...) for `source`.
set -euo pipefail
# shellcheck source=hack/lib/common.sh
source "$(dirname "$0")/lib/common.sh"
# shellcheck source=hack/lib/testbed.sh
source "$(dirname "$0")/lib/testbed.sh"

case "${1:-}" in
  -h | --help)
    cat <<USAGE
Usage: hack/local-up.sh [--help]

Starts the local test bed (building it first if needed, see hack/build-testbed.sh) and writes
$REPO_ROOT/.local/env. Then:  source .local/env && kubectl get nodes
Stop it with hack/local-down.sh. State and logs: \$KZSCALER_STATE_DIR (now: $KZSCALER_STATE_DIR)

Ports on 127.0.0.1 (override with the variables):
  etcd               KZSCALER_ETCD_PORT=$ETCD_PORT (peer $ETCD_PEER_PORT)
  kube-apiserver     KZSCALER_APISERVER_PORT=$APISERVER_PORT
  controller-manager KZSCALER_KCM_PORT=$KCM_PORT
  scheduler          KZSCALER_SCHEDULER_PORT=$SCHEDULER_PORT
  istiod             KZSCALER_ISTIOD_XDS_PORT=$ISTIOD_XDS_PORT (xDS), KZSCALER_ISTIOD_PORT=$ISTIOD_HTTP_PORT (debug)
  caller's Envoy     KZSCALER_ENVOY_PORT=$ENVOY_PORT (HTTP proxy, admin KZSCALER_ENVOY_ADMIN_PORT=$ENVOY_ADMIN_PORT)
  controller         KZSCALER_CONTROLLER_PORT=$CONTROLLER_PORT (filter API, /metrics)
  webhook            KZSCALER_WEBHOOK_PORT=$WEBHOOK_PORT (HTTPS)
  OCI registry       KZSCALER_REGISTRY_PORT=$REGISTRY_PORT (plain HTTP; hack/release.sh --push)
The filter's plugin configuration (JSON): KZSCALER_PLUGIN_CONFIG (default {"poll_period_ms": 200})
Pods get addresses of 10.244.0.0/16 that exist only inside network namespaces the test bed
creates (kzscaler-*), so it must run as root. Nothing is sent to an address outside them.
USAGE
    exit 0
    ;;
  "") ;;
  *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
esac

"$REPO_ROOT/hack/build-testbed.sh"
[ "$(id -u)" = 0 ] || fail "test bed" "" "must run as root: pods live in network namespaces it creates (ip netns)"
command -v ip >/dev/null || fail "test bed" "" "ip (iproute2) is missing: apt-get install iproute2"
mkdir -p "$KZSCALER_STATE_DIR"/{logs,pids,pki,etcd,kubelet}
export PATH="$KZSCALER_BIN_DIR:$PATH"

# === certificates and credentials (made once per state dir) ===
PKI=$KZSCALER_STATE_DIR/pki
if [ ! -s "$PKI/apiserver.crt" ]; then
  step "certificates: CA, API server serving cert, service-account key"
  log=$KZSCALER_STATE_DIR/logs/pki.log
  {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
      -keyout "$PKI/ca.key" -out "$PKI/ca.crt" -subj "/CN=kzscaler-testbed-ca" &&
      openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$PKI/apiserver.key" -out "$PKI/apiserver.csr" -subj "/CN=kube-apiserver" &&
      printf 'subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n' >"$PKI/san.ext" &&
      openssl x509 -req -in "$PKI/apiserver.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
        -days 3650 -extfile "$PKI/san.ext" -out "$PKI/apiserver.crt" &&
      openssl genrsa -out "$PKI/sa.key" 2048 &&
      openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub"
  } >"$log" 2>&1 || fail "certificates" "$log" "openssl failed"
  printf '%s,admin,admin,system:masters\n' "$(openssl rand -hex 24)" >"$PKI/tokens.csv"
  ok "certificates in $PKI"
fi
ADMIN_TOKEN=$(cut -d, -f1 "$PKI/tokens.csv")
# write_kubeconfig FILE USER TOKEN: a kubeconfig for the test bed with a bearer token.
write_kubeconfig() {
  cat >"$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: testbed
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority: $PKI/ca.crt
users:
- name: $2
  user:
    token: $3
contexts:
- name: testbed
  context: {cluster: testbed, user: $2}
current-context: testbed
KC
  chmod 600 "$1"
}
KUBECONFIG_FILE=$KZSCALER_STATE_DIR/kubeconfig
write_kubeconfig "$KUBECONFIG_FILE" admin "$ADMIN_TOKEN"
export KUBECONFIG=$KUBECONFIG_FILE

cat >"$KZSCALER_STATE_DIR/audit-policy.yaml" <<'AP'
# Every write at Metadata level, so tests can count API calls (e.g. deployments/scale PATCHes).
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  verbs: [get, list, watch]
- level: None
  resources: [{group: coordination.k8s.io, resources: [leases]}]
- level: Metadata
AP

# === the OCI registry (distribution) for the release's images and the Wasm module ===
mkdir -p "$KZSCALER_STATE_DIR/registry"
cat >"$KZSCALER_STATE_DIR/registry.yaml" <<REGISTRY
version: 0.1
log: {level: info}
storage:
  filesystem: {rootdirectory: $KZSCALER_STATE_DIR/registry}
  delete: {enabled: true}
http:
  addr: 127.0.0.1:$REGISTRY_PORT
REGISTRY
registry_ready() { curl -sf "http://127.0.0.1:$REGISTRY_PORT/v2/" >/dev/null; }
start_component registry "$REGISTRY_PORT" registry_ready 30 \
  registry serve "$KZSCALER_STATE_DIR/registry.yaml"

# === etcd ===
start_component etcd "$ETCD_PORT $ETCD_PEER_PORT" etcd_ready 30 \
  etcd --name testbed --data-dir "$KZSCALER_STATE_DIR/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "testbed=http://127.0.0.1:$ETCD_PEER_PORT" --unsafe-no-fsync --log-level warn

# === kube-apiserver ===
start_component kube-apiserver "$APISERVER_PORT" apiserver_ready 90 \
  kube-apiserver --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
  --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$APISERVER_PORT" \
  --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
  --client-ca-file "$PKI/ca.crt" --token-auth-file "$PKI/tokens.csv" \
  --authorization-mode Node,RBAC --allow-privileged \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
  --service-cluster-ip-range 10.96.0.0/16 --endpoint-reconciler-type none \
  --audit-policy-file "$KZSCALER_STATE_DIR/audit-policy.yaml" \
  --audit-log-path "$KZSCALER_STATE_DIR/logs/audit.log" --audit-log-format json --audit-log-maxsize 0

# === controller-manager and scheduler ===
start_component kube-controller-manager "$KCM_PORT" "https_healthz $KCM_PORT" 60 \
  kube-controller-manager --kubeconfig "$KUBECONFIG" \
  --authentication-kubeconfig "$KUBECONFIG" --authorization-kubeconfig "$KUBECONFIG" \
  --bind-address 127.0.0.1 --secure-port "$KCM_PORT" --leader-elect=false \
  --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
  --use-service-account-credentials=false --concurrent-deployment-syncs 10 --concurrent-replicaset-syncs 10 \
  --horizontal-pod-autoscaler-sync-period 1s
start_component kube-scheduler "$SCHEDULER_PORT" "https_healthz $SCHEDULER_PORT" 60 \
  kube-scheduler --kubeconfig "$KUBECONFIG" \
  --authentication-kubeconfig "$KUBECONFIG" --authorization-kubeconfig "$KUBECONFIG" \
  --bind-address 127.0.0.1 --secure-port "$SCHEDULER_PORT" --leader-elect=false

# === kwok and its fake node ===
stages=$KWOK_DIR/stage
# Pods become Running with an address through our stage; the kubelet marks them Ready.
cat "$stages/node/fast/node-initialize.yaml" <(echo ---) \
  "$stages/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml" <(echo ---) \
  "$REPO_ROOT/hack/testbed/kwok-pod-running.yaml" <(echo ---) "$stages/pod/fast/pod-complete.yaml" <(echo ---) \
  "$stages/pod/fast/pod-delete.yaml" >"$KZSCALER_STATE_DIR/kwok-stages.yaml"
kwok_was_running=false
pid_of kwok >/dev/null && kwok_was_running=true
start_component kwok "" true 10 \
  kwok --kubeconfig "$KUBECONFIG" --config "$KZSCALER_STATE_DIR/kwok-stages.yaml" \
  --manage-all-nodes=false --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
  --cidr 10.244.0.0/16 --node-ip 10.240.0.1 --node-lease-duration-seconds 40
step "kwok: fake node kwok-node-0"
kubectl apply -f - >"$KZSCALER_STATE_DIR/logs/node.log" 2>&1 <<'NODE' || fail "kwok node" "$KZSCALER_STATE_DIR/logs/node.log" "kubectl apply of the fake node failed"
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-0
  annotations: {kwok.x-k8s.io/node: fake, node.alpha.kubernetes.io/ttl: "0"}
  labels: {type: kwok, kubernetes.io/hostname: kwok-node-0, kubernetes.io/os: linux, kubernetes.io/arch: amd64}
status:
  allocatable: {cpu: "64", memory: 256Gi, pods: "1000"}
  capacity: {cpu: "64", memory: 256Gi, pods: "1000"}
NODE
kubectl wait --for=condition=Ready node/kwok-node-0 --timeout=60s >>"$KZSCALER_STATE_DIR/logs/node.log" 2>&1 ||
  fail "kwok" "$KZSCALER_STATE_DIR/logs/kwok.log" "node kwok-node-0 did not become Ready within 60s"
ok "node kwok-node-0 Ready"
if ! $kwok_was_running; then
  # kwok hands out pod addresses from memory: pods left from an earlier run (etcd keeps them)
  # hold addresses it would give again. Delete them; their owners (and local-up) recreate them.
  kubectl delete pods -A --field-selector spec.nodeName=kwok-node-0 --wait=false >>"$KZSCALER_STATE_DIR/logs/node.log" 2>&1 || true
fi

# === Istio: CRDs and istiod ===
step "Istio CRDs (istio.io/istio $ISTIO_VERSION)"
log=$KZSCALER_STATE_DIR/logs/istio-crds.log
kubectl apply --server-side --force-conflicts -f "$ISTIOD_DIR/crd-all.gen.yaml" >"$log" 2>&1 || fail "istio CRDs" "$log" "kubectl apply failed"
kubectl wait --for condition=established --timeout=60s crd/wasmplugins.extensions.istio.io crd/peerauthentications.security.istio.io >>"$log" 2>&1 ||
  fail "istio CRDs" "$log" "CRDs wasmplugins/peerauthentications not established"
kubectl apply -f "$REPO_ROOT/hack/testbed/istio.yaml" >>"$log" 2>&1 || fail "istio-system" "$log" "kubectl apply of hack/testbed/istio.yaml failed"
ok "Istio CRDs established, istio-system with mTLS off"
istiod_ready() { curl -sf "http://127.0.0.1:$ISTIOD_HTTP_PORT/ready" >/dev/null; }
# Out of cluster, no CA, no injection or validation webhooks. Istio's own Envoy extensions that
# upstream Envoy lacks are switched off (ALPN, metadata exchange); a short debounce.
# PILOT_AUTO_SEND_UNHEALTHY_ENDPOINTS (on by default) sends not-ready endpoints as unhealthy;
# Envoy's upstream.num_endpoints counts them, and the filter would resume a held request
# before the woken pod is ready (see the README's known limitations). Off here until the
# filter tells healthy endpoints apart.
start_component istiod "$ISTIOD_XDS_PORT $ISTIOD_HTTP_PORT $ISTIOD_MONITORING_PORT" istiod_ready 60 \
  env POD_NAMESPACE=istio-system CLUSTER_ID=Kubernetes INJECT_ENABLED=false ENABLE_CA_SERVER=false \
  VALIDATION_WEBHOOK_CONFIG_NAME= INJECTION_WEBHOOK_CONFIG_NAME= \
  PILOT_ENABLE_ALPN_FILTER=false PILOT_ENABLE_METADATA_EXCHANGE=false PILOT_DEBOUNCE_AFTER=10ms \
  PILOT_AUTO_SEND_UNHEALTHY_ENDPOINTS=false \
  pilot-discovery discovery --kubeconfig "$KUBECONFIG" --meshConfig "$REPO_ROOT/hack/testbed/mesh.yaml" \
  --domain cluster.local --grpcAddr "127.0.0.1:$ISTIOD_XDS_PORT" --secureGRPCAddr "" --httpsAddr "" \
  --httpAddr "127.0.0.1:$ISTIOD_HTTP_PORT" --monitoringAddr "127.0.0.1:$ISTIOD_MONITORING_PORT" --ctrlz_port 0

# === kzscaler: controller, webhook, the kubelet, and the caller whose sidecar runs the filter ===
step "kzscaler: cargo build (controller, webhook, kubectl plugin, test bed kubelet) and the filter (.wasm)"
log=$KZSCALER_STATE_DIR/logs/build.log
{
  rustup target add wasm32-wasip1 &&
    cargo build -p kzscaler-controller -p kzscaler-webhook -p kubectl-kzscaler -p kzscaler-e2e --bins &&
    cargo build -p kzscaler-filter --target wasm32-wasip1 --profile wasm
} >"$log" 2>&1 || fail "kzscaler build" "$log" "cargo build failed"
ok "built (log $log)"
WASM=$REPO_ROOT/target/wasm32-wasip1/wasm/kzscaler_filter.wasm
# .local/bin is on the PATH .local/env sets, so `kubectl kzscaler` finds the plugin there.
for b in kzscaler-controller kzscaler-webhook kzscaler-kubelet kubectl-kzscaler; do
  ln -sfn "$REPO_ROOT/target/debug/$b" "$KZSCALER_BIN_DIR/$b"
done
# A rebuilt binary or filter replaces the running one.
restart_if_newer() { # NAME FILE...
  local name=$1 f
  shift
  pid_of "$name" >/dev/null || return 0
  for f in "$@"; do
    if [ "$f" -nt "$PIDS/$name.pid" ]; then
      step "$name: $(basename "$f") was rebuilt; restarting"
      stop_component "$name"
      return 0
    fi
  done
}
restart_if_newer controller "$REPO_ROOT/target/debug/kzscaler-controller" "$WASM"
restart_if_newer webhook "$REPO_ROOT/target/debug/kzscaler-webhook"
restart_if_newer kubelet "$REPO_ROOT/target/debug/kzscaler-kubelet"

# The kubelet: pods' network namespaces (kzscaler-*), their containers, their Istio sidecars.
kubelet_ready() { [ -e /run/netns/kzscaler-node ]; }
start_component kubelet "" kubelet_ready 30 \
  kzscaler-kubelet --dir "$KZSCALER_STATE_DIR/kubelet" --netns-prefix kzscaler \
  --pilot-agent "$KZSCALER_BIN_DIR/pilot-agent" --envoy "$KZSCALER_BIN_DIR/envoy" \
  --bootstrap-template "$ISTIOD_DIR/envoy_bootstrap.json" --discovery "127.0.0.1:$ISTIOD_XDS_PORT"

# Ready: caches synced and leading (Lease kzscaler-system/kzscaler-controller; a controller
# killed earlier holds it for up to --lease-duration-seconds).
controller_ready() {
  curl -sf "http://127.0.0.1:$CONTROLLER_PORT/readyz" >/dev/null &&
    curl -sf "http://127.0.0.1:$CONTROLLER_PORT/leaderz" >/dev/null
}
# kzscaler's ServiceAccounts and RBAC exactly as manifests/ has them; the controller runs with
# its ServiceAccount's token, so a missing permission fails the tests.
log=$KZSCALER_STATE_DIR/logs/rbac.log
{ kubectl apply -f "$REPO_ROOT/manifests/namespace.yaml" && kubectl apply -k "$REPO_ROOT/manifests/rbac"; } >"$log" 2>&1 ||
  fail "kzscaler RBAC" "$log" "kubectl apply of manifests/rbac failed"
CONTROLLER_KUBECONFIG=$KZSCALER_STATE_DIR/controller.kubeconfig
if ! pid_of controller >/dev/null; then
  token=$(kubectl -n kzscaler-system create token kzscaler-controller --duration 48h 2>>"$log") ||
    fail "kzscaler RBAC" "$log" "kubectl create token kzscaler-controller failed"
  write_kubeconfig "$CONTROLLER_KUBECONFIG" kzscaler-controller "$token"
fi
ok "controller runs as system:serviceaccount:kzscaler-system:kzscaler-controller"

# The plugin configuration a WasmPlugin would carry; a short poll period suits tests and demos.
PLUGIN_CONFIG=${KZSCALER_PLUGIN_CONFIG:-'{"poll_period_ms": 200}'}
# The controller serves the module and keeps a WasmPlugin in each opted-in namespace. Tests
# that kill controllers run their own for one namespace labelled kzscaler.io/e2e-controller,
# which this one leaves alone.
# Its pod (kzscaler-system/kzscaler-controller-testbed) forwards the Service's endpoint to it.
log=$KZSCALER_STATE_DIR/logs/controller-pod.log
sed "s|@PORT@|$CONTROLLER_PORT|" "$REPO_ROOT/hack/testbed/controller-pod.yaml" | kubectl apply -f - >"$log" 2>&1 ||
  fail "controller pod" "$log" "kubectl apply of hack/testbed/controller-pod.yaml failed"
start_component controller "$CONTROLLER_PORT" controller_ready 60 \
  env KUBECONFIG="$CONTROLLER_KUBECONFIG" POD_NAME=kzscaler-controller-testbed POD_NAMESPACE=kzscaler-system \
  kzscaler-controller --listen "127.0.0.1:$CONTROLLER_PORT" --label-pod \
  --module-file "$WASM" --module-url "http://127.0.0.1:$CONTROLLER_PORT/v1/module" \
  --plugin-config "$PLUGIN_CONFIG" --wasmplugin-resync-seconds 2 --lease-duration-seconds 5 \
  --namespace-selector '!kzscaler.io/e2e-controller'

# The webhook: a serving certificate from its own CA, then the configurations pointing at it.
WEBHOOK_PKI=$PKI/webhook
"$REPO_ROOT/hack/webhook-certs.sh" "$WEBHOOK_PKI" IP:127.0.0.1
webhook_ready() { curl -sf --cacert "$WEBHOOK_PKI/ca.crt" "https://127.0.0.1:$WEBHOOK_PORT/readyz" >/dev/null; }
start_component webhook "$WEBHOOK_PORT" webhook_ready 30 \
  kzscaler-webhook --listen "127.0.0.1:$WEBHOOK_PORT" --tls-cert "$WEBHOOK_PKI/tls.crt" --tls-key "$WEBHOOK_PKI/tls.key" \
  --min-idle-timeout 1s --shutdown-delay 0s
log=$KZSCALER_STATE_DIR/logs/webhook-config.log
sed -e "s|@URL@|https://127.0.0.1:$WEBHOOK_PORT|" -e "s|@CABUNDLE@|$(base64 -w0 <"$WEBHOOK_PKI/ca.crt")|" \
  "$REPO_ROOT/hack/testbed/webhooks.yaml" | kubectl apply -f - >"$log" 2>&1 ||
  fail "webhook configuration" "$log" "kubectl apply failed"
ok "webhook configurations registered (mutating pods, validating deployments)"

# The caller: a pod in the opted-in namespace kzscaler-testbed whose sidecar istiod configures.
log=$KZSCALER_STATE_DIR/logs/caller.log
sed -e "s|@ENVOY_PORT@|$ENVOY_PORT|" -e "s|@ADMIN_PORT@|$ENVOY_ADMIN_PORT|g" "$REPO_ROOT/hack/testbed/caller.yaml" |
  kubectl apply -f - >"$log" 2>&1 || fail "caller pod" "$log" "kubectl apply of hack/testbed/caller.yaml failed"
CALLER_LOG=$KZSCALER_STATE_DIR/kubelet/kzscaler-testbed/caller/pilot-agent.log
ln -sfn "$CALLER_LOG" "$KZSCALER_STATE_DIR/logs/envoy.log"
step "caller: waiting for its sidecar (pilot-agent, Envoy configured by istiod, the filter through ECDS)"
# Loaded means a Wasm filter in Envoy's ECDS config (pilot-agent substitutes an RBAC filter when
# the module download fails, so a name alone proves nothing).
filter_loaded() {
  curl -sf "http://127.0.0.1:$ENVOY_ADMIN_PORT/config_dump?resource=ecds_filters" 2>/dev/null |
    grep -q 'envoy.extensions.filters.http.wasm.v3.Wasm'
}
waited=0
until envoy_ready && filter_loaded; do
  if [ "$waited" -ge 300 ]; then
    fail "caller sidecar" "$CALLER_LOG" "not ready with the kzscaler filter after 60s (kubelet log: $KZSCALER_STATE_DIR/logs/kubelet.log)"
  fi
  sleep 0.2
  waited=$((waited + 1))
done
ok "caller's Envoy ready on 127.0.0.1:$ENVOY_PORT with the kzscaler filter from the WasmPlugin"
# A NACK means Envoy refused part of istiod's config (an extension upstream Envoy lacks, say):
# istiod's /debug/syncz then shows Envoy's error as the resource type's lastError.
nacks=$(curl -sf "http://127.0.0.1:$ISTIOD_HTTP_PORT/debug/syncz" | python3 "$REPO_ROOT/hack/lib/nacks.py") ||
  fail "istiod config" "$CALLER_LOG" "Envoy NACKed istiod's config: $nacks"

# === .local/env ===
cat >"$REPO_ROOT/.local/env" <<ENV
# Written by hack/local-up.sh: source it to use the test bed.
export KUBECONFIG="$KUBECONFIG_FILE"
export PATH="$KZSCALER_BIN_DIR:\$PATH"
export KZSCALER_STATE_DIR="$KZSCALER_STATE_DIR"
export KZSCALER_ENVOY="127.0.0.1:$ENVOY_PORT"
export KZSCALER_ENVOY_ADMIN="127.0.0.1:$ENVOY_ADMIN_PORT"
export KZSCALER_APISERVER="https://127.0.0.1:$APISERVER_PORT"
export KZSCALER_AUDIT_LOG="$KZSCALER_STATE_DIR/logs/audit.log"
export KZSCALER_CONTROLLER="127.0.0.1:$CONTROLLER_PORT"
export KZSCALER_WEBHOOK="127.0.0.1:$WEBHOOK_PORT"
export KZSCALER_ISTIOD="127.0.0.1:$ISTIOD_HTTP_PORT"
export KZSCALER_REGISTRY="127.0.0.1:$REGISTRY_PORT"
ENV
ok "test bed up. Use it with: source .local/env"
