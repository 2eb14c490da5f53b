#!/usr/bin/env bash
# Stops every process hack/local-up.sh started (by the pid files it wrote). Keeps the state
# folder (logs, etcd data) unless --purge is given.
set -euo pipefail
# shellcheck source=hack/lib/common.sh
source "$(dirname "$0")/lib/common.sh"
# shellcheck source=hack/lib/testbed.sh
source "$(dirname "$0")/lib/testbed.sh"

purge=false
case "${1:-}" in
  -h | --help)
    echo "Usage: hack/local-down.sh [--purge]"
    echo "Stops the test bed's processes. --purge also deletes $KZSCALER_STATE_DIR (etcd data, logs, certificates)."
    exit 0
    ;;
  --purge) purge=true ;;
  "") ;;
  *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
esac

[ -d "$PIDS" ] || { ok "nothing to stop ($PIDS does not exist)"; exit 0; }
step "stopping the test bed"
for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
  stop_component "${COMPONENTS[$i]}"
done
rm -f "$REPO_ROOT/.local/env"
if $purge; then
  rm -rf "$KZSCALER_STATE_DIR"
  ok "removed $KZSCALER_STATE_DIR"
fi
