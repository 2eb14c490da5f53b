#!/usr/bin/env bash
# The filter benchmark: release builds of the controller, the test bed's kubelet and the benchmark,
# the kzscaler and no-op filter modules, then kzscaler-bench against the test bed (started if
# needed). Prints Markdown tables (warm-path ratios, cold-path overhead); see the README.
set -euo pipefail
# shellcheck source=hack/lib/common.sh
source "$(dirname "$0")/lib/common.sh"
case "${1:-}" in
  -h | --help)
    echo "Usage: hack/bench.sh [kzscaler-bench options]   (e.g. --seconds 3 --rounds 5)"
    exit 0
    ;;
esac
cd "$REPO_ROOT"
"$REPO_ROOT/hack/local-up.sh"
step "release builds: controller, kubelet, benchmark; filter modules"
log=$KZSCALER_STATE_DIR/logs/bench-build.log
{
  cargo build --release -p kzscaler-controller -p kzscaler-e2e --bins &&
    cargo build -p kzscaler-filter --target wasm32-wasip1 --profile wasm &&
    cargo build -p kzscaler-filter --example noop --target wasm32-wasip1 --profile wasm
} >"$log" 2>&1 || fail "bench build" "$log" "cargo build failed"
step "kzscaler-bench (about 2 minutes)"
# shellcheck source=/dev/null
source "$REPO_ROOT/.local/env"
exec "$REPO_ROOT/target/release/kzscaler-bench" "$@"
