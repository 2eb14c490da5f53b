#!/usr/bin/env bash
# The fleet benchmark: release builds of the controller and kzscaler-bench-fleet, then the
# benchmark against the test bed (started if needed). It creates N managed Deployments, runs a
# controller of its own for them, plays M sidecars speaking the filter API, churns wakes and
# sleeps, and prints Markdown tables (see the README's "Scale" section).
set -euo pipefail
# shellcheck source=hack/lib/common.sh
source "$(dirname "$0")/lib/common.sh"
case "${1:-}" in
  -h | --help)
    cat <<'USAGE'
Usage: hack/bench-fleet.sh [kzscaler-bench-fleet options]

  --deployments N     managed Deployments with Services (default 300)
  --sidecars M        simulated sidecars long-polling for deltas (default 200)
  --full-pollers P    simulated sidecars polling the full snapshot once a second (default 10)
  --churn K           wakes and sleeps per second (default 2)
  --unrelated-rate R  changes per second to unmanaged Deployments (default 50)
  --seconds S         length of each measured phase (default 10)
  --activations A     activates to time (default 10)
  --controller BIN    another controller build to measure (e.g. an older one)

The target size: hack/bench-fleet.sh --deployments 10000 --sidecars 5000
USAGE
    exit 0
    ;;
esac
cd "$REPO_ROOT"
"$REPO_ROOT/hack/local-up.sh"
step "release builds: controller and kzscaler-bench-fleet"
log=$KZSCALER_STATE_DIR/logs/bench-fleet-build.log
cargo build --release -p kzscaler-controller -p kzscaler-e2e --bin kzscaler-controller --bin kzscaler-bench-fleet \
  >"$log" 2>&1 || fail "bench build" "$log" "cargo build failed"
# Thousands of simulated sidecars hold a connection each, on both ends.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
step "kzscaler-bench-fleet"
# shellcheck source=/dev/null
source "$REPO_ROOT/.local/env"
exec "$REPO_ROOT/target/release/kzscaler-bench-fleet" "$@"
