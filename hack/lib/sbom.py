"""Turns cargo-cyclonedx's SBOM of a crate into the SBOM of the image that ships it.

Usage: sbom.py CRATE_BOM NAME VERSION COMMIT CREATED CA_CERTIFICATES_VERSION WASM

The image becomes the SBOM's subject (a container); the crate, with all its dependencies, is
one of its components, and so are the other files the image carries: Debian's CA
certificates and, in the controller's image, the filter's Wasm module (with its sha256).
Prints the result on stdout.
"""

import hashlib
import json
import sys


def main() -> int:
    if len(sys.argv) != 8:
        print(__doc__, file=sys.stderr)
        return 2
    crate_bom, name, version, commit, created, ca_version, wasm = sys.argv[1:]
    with open(crate_bom, encoding="utf-8") as f:
        bom = json.load(f)
    meta = bom.setdefault("metadata", {})
    crate = meta.get("component")
    if not isinstance(crate, dict) or "bom-ref" not in crate:
        print(f"{crate_bom}: metadata.component with a bom-ref expected", file=sys.stderr)
        return 1
    image_ref = f"image:{name}@{version}"
    meta["timestamp"] = created
    meta["component"] = {
        "type": "container",
        "bom-ref": image_ref,
        "name": name,
        "version": version,
        "description": f"kzscaler {name} {version} (commit {commit})",
        "licenses": [{"license": {"id": "Apache-2.0"}}],
    }
    components = bom.setdefault("components", [])
    components.insert(0, crate)
    extra = [crate["bom-ref"]]
    if name != "kzscaler-filter":
        ca = {
            "type": "data",
            "bom-ref": f"pkg:deb/debian/ca-certificates@{ca_version}",
            "name": "ca-certificates",
            "version": ca_version,
            "purl": f"pkg:deb/debian/ca-certificates@{ca_version}?arch=all",
            "description": "/etc/ssl/certs/ca-certificates.crt",
        }
        components.append(ca)
        extra.append(ca["bom-ref"])
    if name == "kzscaler-controller":
        with open(wasm, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        module = {
            "type": "file",
            "bom-ref": "file:/kzscaler/kzscaler_filter.wasm",
            "name": "/kzscaler/kzscaler_filter.wasm",
            "version": version,
            "hashes": [{"alg": "SHA-256", "content": digest}],
            "description": "the kzscaler filter, served on /v1/module (its own SBOM: kzscaler-filter.cdx.json)",
        }
        components.append(module)
        extra.append(module["bom-ref"])
    deps = bom.setdefault("dependencies", [])
    deps.insert(0, {"ref": image_ref, "dependsOn": extra})
    json.dump(bom, sys.stdout, indent=2, sort_keys=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
