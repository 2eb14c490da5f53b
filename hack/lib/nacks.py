"""Reads istiod's /debug/syncz (JSON on stdin); prints every NACK (proxy, xDS type, Envoy's
error, which names the resource and the extension) and exits 1 if there is one."""
import json
import sys

try:
    proxies = json.load(sys.stdin)
except ValueError as e:
    print(f"/debug/syncz is not JSON: {e}")
    sys.exit(2)
found = False
for p in proxies or []:
    for kind, status in (p.get("resources") or {}).items():
        error = status.get("lastError")
        if error:
            found = True
            print(f"proxy {p.get('proxy')}: {kind.rsplit('.', 1)[-1]} rejected: {error}")
sys.exit(1 if found else 0)
