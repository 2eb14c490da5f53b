#!/usr/bin/env bash
# The local demo: starts the test bed (building it the first time; istiod configures the caller
# pod's Istio sidecar, which gets the kzscaler filter from the controller's WasmPlugin), deploys a managed Deployment at 0 replicas, and
# sends it a request: the filter holds it, the controller wakes the Deployment, the request
# succeeds. An unmanaged Deployment at 0 replicas still gets Envoy's 503, for contrast.
set -euo pipefail
# shellcheck source=hack/lib/common.sh
source "$(dirname "$0")/lib/common.sh"
# shellcheck source=hack/lib/smoke.sh
source "$(dirname "$0")/lib/smoke.sh"

case "${1:-}" in
  -h | --help)
    echo "Usage: hack/demo.sh"
    echo "Starts the test bed and wakes a sleeping Deployment with one request through Envoy."
    echo "Leaves the test bed running: stop it with hack/local-down.sh."
    exit 0
    ;;
esac

"$REPO_ROOT/hack/local-up.sh"
# shellcheck source=/dev/null
source "$REPO_ROOT/.local/env"
NS=kzscaler-demo

step "deploying into namespace $NS: hello (kzscaler.io/scale-to-zero: \"true\") and plain (unmanaged), both at 0 replicas"
smoke_workloads "$NS" registry.invalid/hello:1 "{type: kwok}" | kubectl apply -f - >/dev/null
kubectl -n "$NS" scale deployment hello plain --replicas 0 >/dev/null

step "waiting until the controller lists hello as asleep and the filter has polled it"
for _ in $(seq 100); do
  curl -sf "http://$KZSCALER_CONTROLLER/v1/snapshot" | grep -q "\"service\":\"hello\",\"deployment\":\"hello\",\"state\":\"asleep\"" && break
  sleep 0.1
done
curl -sf "http://$KZSCALER_CONTROLLER/v1/snapshot" | grep -q '"state":"asleep"' ||
  fail "demo" "$KZSCALER_STATE_DIR/logs/controller.log" "the controller does not list hello as asleep"
sleep 0.6
kubectl -n "$NS" get deployment hello plain

request() { # HOST: prints "<status> <seconds>" and keeps the body in /tmp/kzscaler-demo.body
  curl -s -o /tmp/kzscaler-demo.body -w '%{http_code} %{time_total}' --max-time 40 -H "Host: $1" "http://$KZSCALER_ENVOY/" || true
}

step "unmanaged plain at 0 replicas: curl -H 'Host: plain.$NS' http://$KZSCALER_ENVOY/"
echo "    $(request "plain.$NS")s: $(cat /tmp/kzscaler-demo.body)"

step "managed hello at 0 replicas: curl -H 'Host: hello.$NS' http://$KZSCALER_ENVOY/"
read -r status secs <<<"$(request "hello.$NS")"
echo "    $status after ${secs}s: $(cat /tmp/kzscaler-demo.body)"
smoke_expect "hello.$NS" 200 "$status" "$(cat /tmp/kzscaler-demo.body)" "$KZSCALER_STATE_DIR/logs/envoy.log"
kubectl -n "$NS" get deployment hello
sleep 0.5
echo "    recorded on the Deployment: kzscaler.io/last-wake=$(kubectl -n "$NS" get deployment hello -o jsonpath='{.metadata.annotations.kzscaler\.io/last-wake}')"
kubectl -n "$NS" get events --field-selector reason=Woke --sort-by=.metadata.creationTimestamp -o custom-columns=REASON:.reason,MESSAGE:.message 2>/dev/null | tail -n 1 || true

step "no more requests: hello falls asleep after its 10s idle timeout"
for i in $(seq 40); do
  [ "$(kubectl -n "$NS" get deployment hello -o jsonpath='{.spec.replicas}')" = 0 ] && break
  sleep 0.5
  [ $((i % 4)) = 0 ] && printf '    %ss...\n' $((i / 2))
done
kubectl -n "$NS" get deployment hello
kubectl -n "$NS" get events --field-selector reason=Slept --sort-by=.metadata.creationTimestamp -o custom-columns=REASON:.reason,MESSAGE:.message 2>/dev/null | tail -n 1 || true

step "the kubectl plugin: kubectl kzscaler status -n $NS"
kubectl kzscaler status -n "$NS" || fail "demo" "$KZSCALER_STATE_DIR/logs/controller.log" "kubectl kzscaler status failed"

cat <<MSG

The test bed is still running. Try it yourself:
  source .local/env
  curl -H 'Host: hello.$NS' http://\$KZSCALER_ENVOY/      # held, woken, answered
  kubectl -n $NS get deployment hello -w                  # asleep again 10s later
  kubectl kzscaler status -n $NS                          # state, last request, last wake
  kubectl kzscaler explain hello -n $NS                   # why it is in that state
  kubectl kzscaler wake hello -n $NS                      # wake it without a request
  curl http://\$KZSCALER_CONTROLLER/v1/snapshot            # what the filters see
  curl http://\$KZSCALER_CONTROLLER/metrics | grep kzscaler_
Stop it with: hack/local-down.sh
MSG
