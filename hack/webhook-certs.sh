#!/usr/bin/env bash
# Creates a CA and a serving certificate for kzscaler's webhook, and optionally patches the CA
# into the webhook configurations' caBundle. The other way is cert-manager (see manifests/).
#
#   hack/webhook-certs.sh DIR [SAN ...]          writes DIR/ca.crt, DIR/ca.key, DIR/tls.crt, DIR/tls.key
#   hack/webhook-certs.sh --patch DIR            patches caBundle of the kzscaler webhook configurations
#
# SANs default to the in-cluster Service names and 127.0.0.1. Existing files are kept (a
# running webhook reloads rotated files by itself, so delete them to rotate).
set -euo pipefail
# shellcheck source=hack/lib/common.sh
source "$(dirname "$0")/lib/common.sh"

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; }
case "${1:-}" in
  -h | --help | "") usage; [ -n "${1:-}" ]; exit ;;
  --patch)
    dir=${2:?--patch needs DIR}
    ca=$(base64 -w0 <"$dir/ca.crt")
    for kind in mutatingwebhookconfiguration validatingwebhookconfiguration; do
      n=$(kubectl get "$kind" kzscaler -o jsonpath='{range .webhooks[*]}{.name}{"\n"}{end}' | wc -l)
      patch=$(for ((i = 0; i < n; i++)); do printf '{"op":"replace","path":"/webhooks/%d/clientConfig/caBundle","value":"%s"},' "$i" "$ca"; done)
      kubectl patch "$kind" kzscaler --type json -p "[${patch%,}]" >/dev/null
      ok "$kind/kzscaler: caBundle set for $n webhook(s)"
    done
    exit 0
    ;;
esac

dir=$1
shift
sans=("$@")
[ ${#sans[@]} -gt 0 ] || sans=(DNS:kzscaler-webhook.kzscaler-system.svc DNS:kzscaler-webhook.kzscaler-system.svc.cluster.local IP:127.0.0.1)
mkdir -p "$dir"
if [ -s "$dir/tls.crt" ] && [ -s "$dir/tls.key" ] && [ -s "$dir/ca.crt" ]; then
  ok "webhook certificate exists in $dir"
  exit 0
fi
log=$dir/openssl.log
san=$(IFS=,; echo "${sans[*]}")
{
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
    -keyout "$dir/ca.key" -out "$dir/ca.crt" -subj "/CN=kzscaler-webhook-ca" &&
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -keyout "$dir/tls.key.new" -out "$dir/tls.csr" -subj "/CN=kzscaler-webhook" &&
    printf 'subjectAltName=%s\n' "$san" >"$dir/san.ext" &&
    openssl x509 -req -in "$dir/tls.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
      -days 365 -extfile "$dir/san.ext" -out "$dir/tls.crt.new" &&
    mv "$dir/tls.key.new" "$dir/tls.key" && mv "$dir/tls.crt.new" "$dir/tls.crt"
} >"$log" 2>&1 || fail "webhook certificate" "$log" "openssl failed"
ok "webhook CA and serving certificate ($san) in $dir"
