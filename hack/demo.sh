#!/usr/bin/env bash
# The local demo: starts the test bed (building it the first time), deploys a service and shows
# a request through the sidecar-like Envoy failing at 0 replicas and succeeding at 1.
# kzscaler's controller and filter are not built yet; once they are, this demo shows the same
# request being held and the Deployment woken instead of the 503.
set -euo pipefail
# shellcheck source=hack/lib/common.sh
source "$(dirname "$0")/lib/common.sh"

case "${1:-}" in
  -h | --help)
    echo "Usage: hack/demo.sh"
    echo "Starts the test bed and walks a Deployment from 0 to 1 replica, requesting it through Envoy."
    echo "Leaves the test bed running: stop it with hack/local-down.sh."
    exit 0
    ;;
esac

"$REPO_ROOT/hack/local-up.sh"
# shellcheck source=/dev/null
source "$REPO_ROOT/.local/env"
NS=kzscaler-demo

step "deploying Deployment hello (0 replicas) and Service hello in namespace $NS"
kubectl apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Namespace
metadata: {name: $NS}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: hello, namespace: $NS}
spec:
  replicas: 0
  selector: {matchLabels: {app: hello}}
  template:
    metadata: {labels: {app: hello}}
    spec:
      nodeSelector: {type: kwok}
      containers: [{name: app, image: registry.invalid/hello:1, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: hello, namespace: $NS}
spec:
  selector: {app: hello}
  ports: [{name: http, port: 80, targetPort: 8080}]
YAML
kubectl -n "$NS" scale deployment hello --replicas 0 >/dev/null

request() { curl -s -o /tmp/kzscaler-demo.body -w '%{http_code}' -H "Host: hello.$NS" "http://$KZSCALER_ENVOY/" || true; }

wait_status() { # STATUS: poll until Envoy answers it (EDS follows the EndpointSlice)
  local i
  for i in $(seq 100); do
    [ "$(request)" = "$1" ] && return 0
    sleep 0.1
  done
  fail "demo" "$KZSCALER_STATE_DIR/logs/meshsim.log" "Envoy did not answer $1 for hello.$NS within 10s"
}

step "at 0 replicas: curl -H 'Host: hello.$NS' http://$KZSCALER_ENVOY/"
wait_status 503
echo "    503 $(cat /tmp/kzscaler-demo.body)"

step "scaling hello to 1 replica (kwok makes the pod Ready; the mesh simulator starts its backend)"
kubectl -n "$NS" scale deployment hello --replicas 1 >/dev/null
t0=$(date +%s%N)
wait_status 200
echo "    200 after $((($(date +%s%N) - t0) / 1000000)) ms: $(cat /tmp/kzscaler-demo.body)"

step "scaling hello back to 0"
kubectl -n "$NS" scale deployment hello --replicas 0 >/dev/null
wait_status 503
echo "    503 again"
cat <<MSG

The test bed is still running. Try it yourself:
  source .local/env
  kubectl -n $NS scale deployment hello --replicas 2
  curl -H 'Host: hello.$NS' http://\$KZSCALER_ENVOY/
Stop it with: hack/local-down.sh
MSG
