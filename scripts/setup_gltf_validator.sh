#!/usr/bin/env bash
# Install (idempotently) Khronos' glTF-Validator, pinned in scripts/gltf_validator/package.json,
# into .venv/gltf-validator (outside git) for the export tests; needs node + npm.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${POINTWEAR_GLTF_VALIDATOR:-$root/.venv/gltf-validator}"
want="$(sha256sum "$root/scripts/gltf_validator/package.json" | cut -d' ' -f1)"
if [ "$(cat "$dest/.stamp" 2>/dev/null)" != "$want" ]; then
  command -v npm >/dev/null || { echo "setup_gltf_validator: npm not found (install nodejs + npm)" >&2; exit 1; }
  mkdir -p "$dest"
  cp "$root/scripts/gltf_validator/package.json" "$root/scripts/gltf_validator/validate.js" "$dest/"
  (cd "$dest" && npm install --no-audit --no-fund --silent)
  echo "$want" > "$dest/.stamp"
fi
