#!/usr/bin/env bash
# Validate glTF files with Khronos' glTF-Validator (pinned in scripts/gltf_validator/package.json,
# installed into .venv/gltf-validator by scripts/setup_gltf_validator.sh on first use).
#   bash scripts/validate_gltf.sh FILE.glb [...]
# Prints one summary line per file; exits 1 when a file has errors or warnings, 3 when node/npm
# are missing (nothing validated: the caller decides whether that matters).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${POINTWEAR_GLTF_VALIDATOR:-$root/.venv/gltf-validator}"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "validate_gltf: node/npm not found: not validated ($*)" >&2
  exit 3
fi
bash "$root/scripts/setup_gltf_validator.sh"
status=0
for file in "$@"; do
  report="$(node "$dest/validate.js" "$file")" || [ -n "$report" ] || { echo "validate_gltf: $file: validator failed" >&2; exit 2; }
  line="$(printf '%s' "$report" | python3 -c '
import json, sys
r = json.load(sys.stdin)["issues"]
print("{} {} {} {} {}".format(r["numErrors"], r["numWarnings"], r["numInfos"], r["numHints"],
      "; ".join("{} {}".format(m["code"], m.get("pointer", "")) for m in r["messages"][:5])))')"
  read -r errors warnings infos hints rest <<<"$line"
  echo "glTF-Validator: $file: $errors errors, $warnings warnings, $infos infos, $hints hints${rest:+ ($rest)}"
  if [ "$errors" != 0 ] || [ "$warnings" != 0 ]; then status=1; fi
done
exit "$status"
