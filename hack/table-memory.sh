#!/usr/bin/env bash
# What the filter's table of N destinations (default 10,000) costs in memory: the example
# filter/examples/table_memory.rs built natively (RSS) and for wasm32-wasip1, the filter's own
# target and allocator, run in wasmtime (its linear memory, which is what an Envoy Wasm VM
# holds). Prints one Markdown row each.
set -euo pipefail
# shellcheck source=hack/lib/common.sh
source "$(dirname "$0")/lib/common.sh"
case "${1:-}" in
  -h | --help)
    echo "Usage: hack/table-memory.sh [N]   (N destinations, default 10000)"
    exit 0
    ;;
esac
n=${1:-10000}
[[ $n =~ ^[0-9]+$ ]] || fail "table-memory" /dev/null "N must be a whole number of destinations, got \"$n\""
cd "$REPO_ROOT"
log=$(mktemp)
step "native build"
cargo build --release -p kzscaler-filter --example table_memory >"$log" 2>&1 || fail "native build" "$log" "cargo build failed"
step "wasm32-wasip1 build"
rustup target add wasm32-wasip1 >>"$log" 2>&1 || true
cargo build --release -p kzscaler-filter --example table_memory --target wasm32-wasip1 >>"$log" 2>&1 ||
  fail "wasm build" "$log" "cargo build --target wasm32-wasip1 failed"
step "wasmtime (PyPI, cached in a venv)"
venv=${KZSCALER_CACHE_DIR:-$HOME/.cache/kzscaler}/tools/wasmtime-py-50.0.1
if [[ ! -x $venv/bin/python ]]; then
  rm -rf "$venv.tmp"
  python3 -m venv "$venv.tmp" >>"$log" 2>&1 || fail "wasmtime" "$log" "python3 -m venv failed"
  "$venv.tmp/bin/pip" install -q wasmtime==50.0.1 >>"$log" 2>&1 || fail "wasmtime" "$log" "pip install wasmtime failed"
  mv "$venv.tmp" "$venv"
fi
"$REPO_ROOT/target/release/examples/table_memory" "$n" 2>/dev/null
"$venv/bin/python" - "$REPO_ROOT/target/wasm32-wasip1/release/examples/table_memory.wasm" "$n" <<'PY' | tail -1
import sys
from wasmtime import Engine, Linker, Module, Store, WasiConfig
engine = Engine()
store = Store(engine)
wasi = WasiConfig()
wasi.argv = ["table_memory", sys.argv[2]]
wasi.inherit_stdout()
wasi.inherit_stderr()
store.set_wasi(wasi)
linker = Linker(engine)
linker.define_wasi()
module = Module.from_file(engine, sys.argv[1])
# The filter's library brings proxy-wasm's host calls along; the table never calls them.
linker.define_unknown_imports_as_traps(module)
instance = linker.instantiate(store, module)
instance.exports(store)["_start"](store)
PY
rm -f "$log"
