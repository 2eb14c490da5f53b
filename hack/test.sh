#!/usr/bin/env bash
# The whole test suite: formatting, lints, the Wasm build, unit tests, then the end-to-end tests
# on a real test bed (started here if it is not running, and stopped again if this script
# started it). This is the README's test command and what CI runs.
set -euo pipefail
# shellcheck source=hack/lib/common.sh
source "$(dirname "$0")/lib/common.sh"
# shellcheck source=hack/lib/testbed.sh
source "$(dirname "$0")/lib/testbed.sh"
# shellcheck source=hack/lib/tools.sh
source "$(dirname "$0")/lib/tools.sh"

case "${1:-}" in
  -h | --help)
    cat <<USAGE
Usage: hack/test.sh [--help]

Runs, in order: shellcheck, cargo fmt --check, cargo clippy -D warnings (native and wasm32-wasip1), the
filter's .wasm build, unit tests, cargo deny (deny.toml), hack/local-up.sh, hack/release.sh --push
(the release into the test bed's registry), and the e2e tests (e2e/tests/*).
A test bed that already runs is reused and left running; one started here is stopped at the end
(set KZSCALER_KEEP_TESTBED=1 to keep it). Extra cargo test arguments: KZSCALER_E2E_ARGS.
USAGE
    exit 0
    ;;
esac
cd "$REPO_ROOT"
start=$(date +%s)

step "rust toolchain (rust-toolchain.toml) and the wasm32-wasip1 target"
log=$KZSCALER_CACHE_DIR/logs/rustup.log
mkdir -p "$(dirname "$log")"
rustup show active-toolchain >"$log" 2>&1 || fail "rustup" "$log" "cannot install the pinned toolchain"
rustup target add wasm32-wasip1 >>"$log" 2>&1 || fail "rustup" "$log" "rustup target add wasm32-wasip1 failed"
ok "$(rustc --version)"

step "shellcheck (hack/, .ci/run)"
if ! command -v shellcheck >/dev/null && [ "$(id -u)" = 0 ]; then
  log=$KZSCALER_CACHE_DIR/logs/apt-shellcheck.log
  { apt-get update -qq && apt-get install -y -qq shellcheck; } >"$log" 2>&1 || fail "shellcheck" "$log" "apt-get install shellcheck failed"
fi
if command -v shellcheck >/dev/null; then
  shellcheck -x hack/*.sh hack/lib/*.sh .ci/run
else
  echo "    shellcheck is not installed and this is not root: skipped" >&2
fi

step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy (native)"
cargo clippy --workspace --all-targets --locked -- -D warnings
step "cargo clippy (filter, wasm32-wasip1)"
cargo clippy -p kzscaler-filter --target wasm32-wasip1 --locked -- -D warnings
step "filter: cargo build --target wasm32-wasip1 --profile wasm"
cargo build -p kzscaler-filter --target wasm32-wasip1 --profile wasm --locked
ok "target/wasm32-wasip1/wasm/kzscaler_filter.wasm: $(stat -c %s target/wasm32-wasip1/wasm/kzscaler_filter.wasm) bytes"

step "unit tests"
cargo test --workspace --locked --exclude kzscaler-e2e
cargo test -p kzscaler-e2e --locked --lib --bins

step "cargo deny check (licences, bans, sources; advisories: see below)"
DENY=$(cargo_tool cargo-deny cargo-deny "$CARGO_DENY_VERSION")
"$DENY" --log-level error check bans licenses sources
# The advisory database is a git repository on GitHub. Where it cannot be fetched (no access
# to github.com, as on the machines this was written on), the check says so and goes on;
# KZSCALER_REQUIRE_ADVISORIES=1 makes that a failure.
log=$KZSCALER_CACHE_DIR/logs/cargo-deny-fetch.log
if timeout 120 "$DENY" fetch db >"$log" 2>&1; then
  "$DENY" --offline --log-level error check advisories
  ok "no known advisory"
elif [ "${KZSCALER_REQUIRE_ADVISORIES:-0}" = 1 ]; then
  fail "cargo deny" "$log" "cannot fetch the advisory database"
else
  echo "    advisories NOT checked: cannot fetch the advisory database (log: $log)" >&2
fi
# That deny.toml fails the build on a known advisory, whatever the database: a synthetic one
# (RUSTSEC-2099-0001, for serde, which every crate here uses) in a local database.
adv=$(mktemp -d)
mkdir -p "$adv/db/crates/serde"
cat >"$adv/db/crates/serde/RUSTSEC-2099-0001.md" <<'ADVISORY'
```toml
[advisory]
id = "RUSTSEC-2099-0001"
package = "serde"
date = "2099-01-01"
url = "https://example.invalid/RUSTSEC-2099-0001"
categories = ["memory-corruption"]

[versions]
patched = []
```

# A synthetic advisory (hack/test.sh)
ADVISORY
mkdir -p "$adv/dbs"
{
  git -C "$adv/db" init -q -b main && git -C "$adv/db" add -A &&
    git -C "$adv/db" -c user.name=test -c user.email=test@invalid commit -qm advisory &&
    # cargo-deny keeps the default database (RustSec on GitHub) under this name.
    git clone -q "$adv/db" "$adv/dbs/advisory-db-3157b0e258782691"
} >"$adv/git.log" 2>&1 || fail "cargo deny" "$adv/git.log" "cannot make the synthetic advisory database"
sed "s|^\[advisories\]|[advisories]\ndb-path = \"$adv/dbs\"|" deny.toml >"$adv/deny.toml"
if "$DENY" --offline --config "$adv/deny.toml" check advisories >"$adv/check.log" 2>&1 ||
  ! grep -q 'RUSTSEC-2099-0001' "$adv/check.log"; then
  fail "cargo deny" "$adv/check.log" "deny.toml let a known advisory (RUSTSEC-2099-0001 for serde) pass"
fi
rm -rf "$adv"
ok "a known advisory fails the check (synthetic RUSTSEC-2099-0001)"

started_here=false
if ! pid_of kube-apiserver >/dev/null; then
  started_here=true
fi
cleanup() {
  if $started_here && [ "${KZSCALER_KEEP_TESTBED:-0}" != 1 ]; then
    "$REPO_ROOT/hack/local-down.sh" || true
  fi
}
trap cleanup EXIT
step "test bed"
"$REPO_ROOT/hack/local-up.sh"

step "the release (hack/release.sh --push to the test bed's registry)"
"$REPO_ROOT/hack/release.sh" --push

step "end-to-end tests (real API server, kwok, Envoy)"
# shellcheck disable=SC2086
cargo test -p kzscaler-e2e --locked --test '*' ${KZSCALER_E2E_ARGS:-}
ok "all tests passed in $(($(date +%s) - start))s"
