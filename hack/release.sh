#!/usr/bin/env bash
# Builds everything a user installs, for the version in the workspace Cargo.toml, into dist/:
# static binaries, OCI images of the controller and the webhook, the filter as a Wasm OCI
# artifact, the kubectl plugin's archive and krew manifest, and an SBOM per image. With --push,
# pushes the images and the Wasm artifact to a registry and checks the digests it reports.
set -euo pipefail
# shellcheck source=hack/lib/common.sh
source "$(dirname "$0")/lib/common.sh"
# shellcheck source=hack/lib/tools.sh
source "$(dirname "$0")/lib/tools.sh"

usage() {
  cat <<USAGE
Usage: hack/release.sh [--push] [--registry HOST[:PORT][/PATH]] [--plain-http] [--help]

Builds into dist/ (git-ignored), for the workspace version in Cargo.toml:
  dist/bin/                      kzscaler-controller, kzscaler-webhook, kubectl-kzscaler
                                 (x86_64-unknown-linux-musl, static, stripped)
  dist/images/<name>/            OCI image layouts (tag = version): kzscaler-controller and
                                 kzscaler-webhook (from scratch: the binary, CA certificates,
                                 user 65532, no shell), kzscaler-filter (the Wasm module as an
                                 OCI artifact, the layout Istio's WasmPlugin oci:// pulls)
  dist/sbom/<name>.cdx.json      CycloneDX SBOM of each image
  dist/kubectl-kzscaler_linux_amd64.tar.gz and dist/krew/kzscaler.yaml (with its sha256)
  dist/SHA256SUMS, dist/digests.txt

  --push          also push the three to REGISTRY/<name>:<version> and check that the
                  registry reports the digests built here
  --registry R    where to push (default: \$KZSCALER_REGISTRY, which the test bed sets in
                  .local/env to its own registry, plus /kzscaler)
  --plain-http    talk HTTP, not HTTPS, to the registry (default for 127.0.0.1 and localhost)

Tools: the Rust target x86_64-unknown-linux-musl (rustup), musl-gcc, umoci and ca-certificates
(Debian), oras (Go module proxy) and cargo-cyclonedx (crates.io), installed once and cached in
\$KZSCALER_CACHE_DIR/tools. No Docker daemon and no base image are needed.
Env: SOURCE_DATE_EPOCH (default: the commit's time) sets every timestamp, so a rebuild of the
same commit gives the same digests.
USAGE
}

push=false
registry=""
plain_http=""
while [ $# -gt 0 ]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --push) push=true ;;
    --registry)
      [ $# -ge 2 ] || { usage >&2; fail "arguments" "" "--registry needs a value, e.g. registry.example.com/kzscaler"; }
      registry=$2
      shift
      ;;
    --registry=*) registry=${1#--registry=} ;;
    --plain-http) plain_http=1 ;;
    *) usage >&2; fail "arguments" "" "unknown argument '$1' (expected --push, --registry R, --plain-http or --help)" ;;
  esac
  shift
done

cd "$REPO_ROOT"
# Files in the images must be readable by their user 65532 whatever the caller's umask.
umask 022
VERSION=$(workspace_version)
check_chart_version "$VERSION"
COMMIT=$(git rev-parse --short=12 HEAD 2>/dev/null || echo "${KZSCALER_GIT_COMMIT:-unknown}")
export KZSCALER_GIT_COMMIT=$COMMIT
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
export SOURCE_DATE_EPOCH
CREATED=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
TARGET=x86_64-unknown-linux-musl
DIST=$REPO_ROOT/dist
LOGS=$KZSCALER_CACHE_DIR/logs
mkdir -p "$LOGS"

if $push; then
  if [ -z "$registry" ]; then
    if [ -z "${KZSCALER_REGISTRY:-}" ] && [ -f "$REPO_ROOT/.local/env" ]; then
      KZSCALER_REGISTRY=$(sed -n 's/^\(export \)\{0,1\}KZSCALER_REGISTRY="\{0,1\}\([^"]*\)"\{0,1\}$/\2/p' "$REPO_ROOT/.local/env")
    fi
    [ -n "${KZSCALER_REGISTRY:-}" ] ||
      fail "--push" "" "no registry: pass --registry HOST/PATH, set KZSCALER_REGISTRY, or start the test bed (hack/local-up.sh)"
    registry=$KZSCALER_REGISTRY/kzscaler
  fi
  case "$registry" in
    127.0.0.1:* | localhost:* | 127.0.0.1/* | localhost/*) plain_http=1 ;;
  esac
fi

step "tools: rustup target $TARGET, musl-gcc, umoci, CA certificates, oras, cargo-cyclonedx"
rustup target add "$TARGET" >"$LOGS/rustup-musl.log" 2>&1 || fail "rustup" "$LOGS/rustup-musl.log" "rustup target add $TARGET failed"
rustup target add wasm32-wasip1 >>"$LOGS/rustup-musl.log" 2>&1 || fail "rustup" "$LOGS/rustup-musl.log" "rustup target add wasm32-wasip1 failed"
debian_tools musl-gcc:musl-tools umoci:umoci readelf:binutils
[ -f /etc/ssl/certs/ca-certificates.crt ] || debian_tools update-ca-certificates:ca-certificates
ORAS=$(oras_bin)
CYCLONEDX=$(cargo_tool cargo-cyclonedx cargo-cyclonedx "$CARGO_CYCLONEDX_VERSION")
ok "oras $ORAS_VERSION, cargo-cyclonedx $CARGO_CYCLONEDX_VERSION, $(umoci --version)"

step "cargo build --profile dist --target $TARGET (controller, webhook, kubectl plugin; commit $COMMIT)"
log=$LOGS/release-build.log
cargo build --locked --profile dist --target "$TARGET" \
  -p kzscaler-controller -p kzscaler-webhook -p kubectl-kzscaler >"$log" 2>&1 ||
  fail "cargo build ($TARGET)" "$log" "the static build failed"
cargo build --locked -p kzscaler-filter --target wasm32-wasip1 --profile wasm >>"$log" 2>&1 ||
  fail "cargo build (filter)" "$log" "the filter's Wasm build failed"
ok "$(du -sh "target/$TARGET/dist" | cut -f1) in target/$TARGET/dist"

rm -rf "$DIST"
mkdir -p "$DIST/bin" "$DIST/images" "$DIST/sbom" "$DIST/krew"
WORK=$(mktemp -d)
cleanup() {
  rm -rf "$WORK"
  # cargo-cyclonedx writes beside each Cargo.toml.
  find "$REPO_ROOT" -name 'kzscaler.*sbom.json' -not -path "$REPO_ROOT/target/*" -delete 2>/dev/null || true
}
trap cleanup EXIT

step "static binaries"
for b in kzscaler-controller kzscaler-webhook kubectl-kzscaler; do
  cp "target/$TARGET/dist/$b" "$DIST/bin/$b"
  # A static binary has no program interpreter; `--version` must name this commit.
  # (readelf's output is read whole: `grep -q` on a pipe could end it early, and pipefail then
  # hides a match.)
  headers=$(readelf -l "$DIST/bin/$b") || fail "$b" "" "readelf -l dist/bin/$b failed"
  if [[ "$headers" == *"program interpreter"* ]]; then
    fail "$b" "" "dist/bin/$b is dynamically linked; expected a static musl binary"
  fi
  v=$("$DIST/bin/$b" --version)
  case "$v" in
    *"$VERSION (commit $COMMIT)"*) ;;
    *) fail "$b" "" "dist/bin/$b --version printed '$v'; expected '$VERSION (commit $COMMIT)'" ;;
  esac
done
WASM=$REPO_ROOT/target/wasm32-wasip1/wasm/kzscaler_filter.wasm
ok "$("$DIST/bin/kzscaler-controller" --version)"

# The files every image has: CA certificates and a passwd/group naming the non-root user.
base_rootfs() { # DIR
  mkdir -p "$1/etc/ssl/certs" "$1/usr/local/bin" "$1/tmp"
  cp /etc/ssl/certs/ca-certificates.crt "$1/etc/ssl/certs/ca-certificates.crt"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$1/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$1/etc/group"
  chmod 1777 "$1/tmp"
}

# image NAME ROOTFS ENTRYPOINT PORT: an OCI image layout dist/images/NAME with one layer, the
# ROOTFS folder as a tar owned by root with every time SOURCE_DATE_EPOCH (so the digest depends
# on the files only, and no root is needed to build it).
image() {
  local name=$1 rootfs=$2 entrypoint=$3 port=$4
  local layout=$DIST/images/$name log=$LOGS/release-$name.log
  local entries
  mapfile -t entries < <(cd "$rootfs" && ls -A)
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" \
    --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$rootfs" -cf "$WORK/$name.tar" "${entries[@]}" || fail "image $name" "" "tar of $rootfs failed"
  {
    umoci init --layout "$layout" &&
      umoci new --image "$layout:$VERSION" &&
      umoci raw add-layer --image "$layout:$VERSION" --history.created "$CREATED" \
        --history.created_by "hack/release.sh (commit $COMMIT)" "$WORK/$name.tar" &&
      umoci config --image "$layout:$VERSION" --created "$CREATED" --history.created "$CREATED" \
        --os linux --architecture amd64 \
        --config.user 65532:65532 --config.workingdir / --clear config.cmd \
        --config.entrypoint "$entrypoint" --config.exposedports "$port/tcp" \
        --config.env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
        --config.label "org.opencontainers.image.title=$name" \
        --config.label "org.opencontainers.image.version=$VERSION" \
        --config.label "org.opencontainers.image.revision=$COMMIT" \
        --config.label "org.opencontainers.image.created=$CREATED" \
        --config.label "org.opencontainers.image.licenses=Apache-2.0" \
        --config.label "org.opencontainers.image.source=https://github.com/kzscaler/kzscaler" &&
      umoci gc --layout "$layout"
  } >"$log" 2>&1 || fail "image $name" "$log" "umoci failed"
}

step "OCI images (umoci): kzscaler-controller, kzscaler-webhook"
mkdir -p "$WORK/controller/kzscaler"
base_rootfs "$WORK/controller"
cp "$DIST/bin/kzscaler-controller" "$WORK/controller/usr/local/bin/"
# The controller serves the module on /v1/module (--module-file in manifests/controller.yaml).
cp "$WASM" "$WORK/controller/kzscaler/kzscaler_filter.wasm"
image kzscaler-controller "$WORK/controller" /usr/local/bin/kzscaler-controller 8080
base_rootfs "$WORK/webhook"
cp "$DIST/bin/kzscaler-webhook" "$WORK/webhook/usr/local/bin/"
image kzscaler-webhook "$WORK/webhook" /usr/local/bin/kzscaler-webhook 8443
ok "dist/images/kzscaler-controller, dist/images/kzscaler-webhook"

step "the filter as a Wasm OCI artifact (oras; the module and its runtime configuration as two layers)"
mkdir -p "$WORK/filter"
cp "$WASM" "$WORK/filter/plugin.wasm"
# The "oci" variant of the Wasm image spec (solo-io/wasm), as Istio's pilot-agent reads it: two
# layers, the module (application/vnd.module.wasm.content.layer.v1+wasm) and this runtime
# configuration (application/vnd.module.wasm.config.v1+json), which is also the config blob.
printf '{"type":"envoy_proxy","abiVersions":["proxy_abi_version_0_2_1"]}' >"$WORK/filter/config.json"
log=$LOGS/release-filter.log
(cd "$WORK/filter" && "$ORAS" push --oci-layout "$DIST/images/kzscaler-filter:$VERSION" \
  --config config.json:application/vnd.module.wasm.config.v1+json \
  --annotation "org.opencontainers.image.created=$CREATED" \
  --annotation "org.opencontainers.image.version=$VERSION" \
  --annotation "org.opencontainers.image.revision=$COMMIT" \
  plugin.wasm:application/vnd.module.wasm.content.layer.v1+wasm \
  config.json:application/vnd.module.wasm.config.v1+json) >"$log" 2>&1 ||
  fail "Wasm artifact" "$log" "oras push --oci-layout failed"
ok "dist/images/kzscaler-filter"

step "SBOMs (cargo-cyclonedx, plus the image's other files)"
log=$LOGS/release-sbom.log
"$CYCLONEDX" cyclonedx --format json --target "$TARGET" --spec-version 1.5 \
  --override-filename kzscaler.sbom >"$log" 2>&1 || fail "cargo cyclonedx" "$log" "SBOM generation failed"
# The filter's dependencies for its own target.
"$CYCLONEDX" cyclonedx --manifest-path filter/Cargo.toml --format json --target wasm32-wasip1 --spec-version 1.5 \
  --override-filename kzscaler.wasm.sbom >>"$log" 2>&1 || fail "cargo cyclonedx" "$log" "SBOM generation failed (filter)"
ca_version=$(dpkg-query -W -f '${Version}' ca-certificates 2>/dev/null || echo unknown)
for name in kzscaler-controller kzscaler-webhook kzscaler-filter; do
  case $name in
    kzscaler-controller) crate=controller ;;
    kzscaler-webhook) crate=webhook ;;
    kzscaler-filter) crate=filter ;;
  esac
  bom=$crate/kzscaler.sbom.json
  [ "$name" = kzscaler-filter ] && bom=filter/kzscaler.wasm.sbom.json
  [ -f "$bom" ] || fail "SBOM $name" "$log" "cargo-cyclonedx wrote no $bom"
  python3 "$REPO_ROOT/hack/lib/sbom.py" "$bom" "$name" "$VERSION" "$COMMIT" "$CREATED" \
    "$ca_version" "$WASM" >"$DIST/sbom/$name.cdx.json" 2>>"$log" ||
    fail "SBOM $name" "$log" "merging the SBOM failed"
done
ok "dist/sbom/*.cdx.json"

step "kubectl plugin archive and krew manifest"
mkdir -p "$WORK/plugin"
cp "$DIST/bin/kubectl-kzscaler" LICENSE "$WORK/plugin/"
archive=$DIST/kubectl-kzscaler_linux_amd64.tar.gz
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" \
  -C "$WORK/plugin" -cf - kubectl-kzscaler LICENSE | gzip -n -9 >"$archive"
sha=$(sha256sum "$archive" | cut -d' ' -f1)
sed -e "s/@VERSION@/$VERSION/g" -e "s/@SHA256_linux_amd64@/$sha/" hack/krew/kzscaler.yaml >"$DIST/krew/kzscaler.yaml"
if grep -q '@[A-Za-z0-9_]*@' "$DIST/krew/kzscaler.yaml"; then
  fail "krew manifest" "" "dist/krew/kzscaler.yaml still has a placeholder: $(grep -o '@[A-Za-z0-9_]*@' "$DIST/krew/kzscaler.yaml" | head -n 1)"
fi
ok "$(basename "$archive") sha256 $sha"

digest_of() { # LAYOUT: the digest of the manifest tagged with this version
  python3 -c '
import json, sys
index = json.load(open(sys.argv[1] + "/index.json"))
found = [m["digest"] for m in index["manifests"]
         if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == sys.argv[2]]
if len(found) != 1:
    sys.exit(f"{sys.argv[1]}/index.json: {len(found)} manifests tagged {sys.argv[2]}, expected 1")
print(found[0])' "$1" "$VERSION"
}
(cd "$DIST" && find . -type f -not -name digests.txt -not -path './images/*' -print0 |
  sort -z | xargs -0 sha256sum >"$WORK/SHA256SUMS")
mv "$WORK/SHA256SUMS" "$DIST/SHA256SUMS"
: >"$DIST/digests.txt"
for name in kzscaler-controller kzscaler-webhook kzscaler-filter; do
  digest=$(digest_of "$DIST/images/$name") || fail "digest" "" "no digest for dist/images/$name"
  printf '%s:%s %s\n' "$name" "$VERSION" "$digest" >>"$DIST/digests.txt"
done

if $push; then
  step "push to $registry"
  flags=()
  [ -n "$plain_http" ] && flags+=(--plain-http)
  log=$LOGS/release-push.log
  : >"$log"
  while read -r ref digest; do
    name=${ref%%:*}
    "$ORAS" cp --from-oci-layout "$DIST/images/$name:$VERSION" ${plain_http:+--to-plain-http} "$registry/$name:$VERSION" >>"$log" 2>&1 ||
      fail "push $name" "$log" "oras cp to $registry/$name:$VERSION failed"
    got=$("$ORAS" resolve "${flags[@]}" "$registry/$name:$VERSION" 2>>"$log") ||
      fail "push $name" "$log" "oras resolve $registry/$name:$VERSION failed"
    [ "$got" = "$digest" ] || fail "push $name" "$log" "the registry has $got for $registry/$name:$VERSION; built $digest"
    echo "$registry/$name:$VERSION@$digest" >>"$DIST/pushed.txt"
  done <"$DIST/digests.txt"
  ok "$(wc -l <"$DIST/pushed.txt") pushed, digests match"
fi

echo
printf '%-46s %10s  %s\n' ARTIFACT SIZE DIGEST
while read -r ref digest; do
  name=${ref%%:*}
  printf '%-46s %10s  %s\n' "image $ref" "$(du -sh "$DIST/images/$name/blobs" | cut -f1)" "$digest"
done <"$DIST/digests.txt"
while read -r sum file; do
  printf '%-46s %10s  sha256:%s\n' "${file#./}" "$(du -h "$DIST/$file" | cut -f1)" "$sum"
done <"$DIST/SHA256SUMS"
if $push; then
  echo
  echo "pushed:"
  sed 's/^/  /' "$DIST/pushed.txt"
fi
