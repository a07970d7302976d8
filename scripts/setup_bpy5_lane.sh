#!/usr/bin/env bash
# Create or update .venv-bpy5: Blender 5.0 (the bpy module) + numpy + pytest, for the second
# Blender test lane. Idempotent via a stamp holding the hash of its requirements.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${POINTWEAR_BPY5_VENV:-$root/.venv-bpy5}"
source "$(dirname "${BASH_SOURCE[0]}")/find_python.sh"

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
stamp="$venv/.pointwear-stamp"
want="$(sha256sum "$root/scripts/requirements-bpy5.txt" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup_bpy5_lane: installing bpy 5.0 into $venv"
  "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  "$venv/bin/python" -m pip install -q -r "$root/scripts/requirements-bpy5.txt"
  echo "$want" > "$stamp"
fi
