# shellcheck shell=bash
# Starting, checking and stopping the test bed's processes. Every process has a pid file in
# $KZSCALER_STATE_DIR/pids and a log in $KZSCALER_STATE_DIR/logs.
# The variables below are used by the scripts that source this file.
# shellcheck disable=SC2034

ETCD_PORT=${KZSCALER_ETCD_PORT:-23790}
ETCD_PEER_PORT=${KZSCALER_ETCD_PEER_PORT:-23800}
APISERVER_PORT=${KZSCALER_APISERVER_PORT:-16443}
KCM_PORT=${KZSCALER_KCM_PORT:-16257}
SCHEDULER_PORT=${KZSCALER_SCHEDULER_PORT:-16259}
ENVOY_PORT=${KZSCALER_ENVOY_PORT:-15001}
ENVOY_ADMIN_PORT=${KZSCALER_ENVOY_ADMIN_PORT:-15000}
CONTROLLER_PORT=${KZSCALER_CONTROLLER_PORT:-18080}
WEBHOOK_PORT=${KZSCALER_WEBHOOK_PORT:-18443}
REGISTRY_PORT=${KZSCALER_REGISTRY_PORT:-15500}
ISTIOD_XDS_PORT=${KZSCALER_ISTIOD_XDS_PORT:-15010}
ISTIOD_HTTP_PORT=${KZSCALER_ISTIOD_PORT:-15018}
ISTIOD_MONITORING_PORT=${KZSCALER_ISTIOD_MONITORING_PORT:-15019}

PIDS=$KZSCALER_STATE_DIR/pids
# Start order; local-down stops in reverse (the kubelet stops every pod's sidecar with it).
COMPONENTS=(registry etcd kube-apiserver kube-controller-manager kube-scheduler kwok istiod kubelet controller webhook)

pid_of() { # NAME: the pid if the process recorded for NAME is alive
  local f=$PIDS/$1.pid pid
  [ -f "$f" ] || return 1
  pid=$(cat "$f")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

etcd_ready() { curl -sf "http://127.0.0.1:$ETCD_PORT/health" | grep -q '"health":"true"'; }
apiserver_ready() {
  curl -sf --cacert "$KZSCALER_STATE_DIR/pki/ca.crt" -H "Authorization: Bearer $ADMIN_TOKEN" \
    "https://127.0.0.1:$APISERVER_PORT/readyz" | grep -qx ok
}
https_healthz() { curl -skf "https://127.0.0.1:$1/healthz" | grep -qx ok; }
envoy_ready() { curl -sf "http://127.0.0.1:$ENVOY_ADMIN_PORT/ready" | grep -qx LIVE; }

# start_component NAME "PORTS" READY_CMD TIMEOUT_S CMD...: start CMD in its own session unless
# NAME already runs; wait until READY_CMD succeeds. Fails naming NAME and its log.
start_component() {
  local name=$1 ports=$2 ready=$3 timeout=$4
  shift 4
  local log=$KZSCALER_STATE_DIR/logs/$name.log pid
  if pid=$(pid_of "$name"); then
    if $ready; then
      ok "$name already running (pid $pid)"
      return 0
    fi
    fail "$name" "$log" "already running (pid $pid) but not ready; run hack/local-down.sh and retry"
  fi
  local p
  for p in $ports; do
    port_in_use "$p" && fail "$name" "" "port $p on 127.0.0.1 is in use by another process (set the KZSCALER_*_PORT variables, see --help)"
  done
  command -v "$1" >/dev/null || fail "$name" "" "binary $1 not found (expected in $KZSCALER_BIN_DIR; run hack/build-testbed.sh)"
  step "$name: starting"
  setsid "$@" </dev/null >"$log" 2>&1 &
  pid=$!
  echo "$pid" >"$PIDS/$name.pid"
  local waited=0
  until $ready; do
    kill -0 "$pid" 2>/dev/null || fail "$name" "$log" "exited during start-up"
    if [ "$waited" -ge $((timeout * 5)) ]; then
      # Do not leave a half-started process behind: the next local-up starts it afresh.
      stop_component "$name" >/dev/null 2>&1
      fail "$name" "$log" "not ready after ${timeout}s (stopped it again)"
    fi
    sleep 0.2
    waited=$((waited + 1))
  done
  ok "$name ready (pid $pid, log $log)"
}

# stop_component NAME: TERM, then KILL after 10s.
stop_component() {
  local name=$1 pid
  if pid=$(pid_of "$name"); then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
      kill -KILL "$pid" 2>/dev/null || true
      ok "$name killed (pid $pid did not stop on TERM within 10s)"
    else
      ok "$name stopped (pid $pid)"
    fi
  fi
  rm -f "$PIDS/$name.pid"
}
