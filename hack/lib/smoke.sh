# shellcheck shell=bash
# The smoke test that hack/demo.sh (on the test bed) and hack/kind-up.sh (on kind) share: a
# managed Deployment "hello" and an unmanaged "plain", both at 0 replicas with a Service; a
# request to hello must be held, woken and answered 200, one to plain gets 503.

# smoke_workloads NS IMAGE [NODE_SELECTOR]: the YAML of the namespace (opted in to kzscaler
# and to Istio's injection), hello and plain running IMAGE (listening on 8080). NODE_SELECTOR
# (flow YAML, e.g. "{type: kwok}") goes into both pod specs.
smoke_workloads() {
  local ns=$1 image=$2 node_selector=${3:-} name annotations
  cat <<YAML
apiVersion: v1
kind: Namespace
metadata:
  name: $ns
  labels: {kzscaler.io/injection: enabled, istio-injection: enabled}
YAML
  for name in hello plain; do
    annotations='{}'
    [ "$name" = hello ] && annotations='{kzscaler.io/scale-to-zero: "true", kzscaler.io/wake-timeout: "30s", kzscaler.io/idle-timeout: "10s"}'
    cat <<YAML
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: $name
  namespace: $ns
  annotations: $annotations
spec:
  replicas: 0
  selector: {matchLabels: {app: $name}}
  template:
    metadata: {labels: {app: $name}}
    spec:
      ${node_selector:+nodeSelector: $node_selector}
      containers: [{name: app, image: $image, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: $name, namespace: $ns}
spec:
  selector: {app: $name}
  ports: [{name: http, port: 80, targetPort: 8080}]
YAML
  done
}

# smoke_expect NAME WANT GOT BODY LOG: the request to NAME got GOT (WANT expected).
smoke_expect() {
  local name=$1 want=$2 got=$3 body=$4 log=$5
  [ "$got" = "$want" ] || fail "smoke test" "$log" "the request to $name got $got, not $want: $body"
}
