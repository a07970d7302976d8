#!/usr/bin/env bash
# Create or update the project venv (.venv, Python 3.11) with pinned dependencies.
# Idempotent: a stamp holding the hash of the requirements skips pip when nothing changed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${POINTWEAR_VENV:-$root/.venv}"
torch_pin="$(grep -m1 '^torch==' "$root/scripts/requirements.txt")"
source "$(dirname "${BASH_SOURCE[0]}")/find_python.sh"

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
stamp="$venv/.pointwear-stamp"
want="$( { echo "$torch_pin"; cat "$root/scripts/requirements.txt" "$root/pyproject.toml"; } | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup_env: installing dependencies into $venv"
  "$venv/bin/python" -m pip install -q --upgrade pip setuptools wheel >/dev/null
  "$venv/bin/python" -m pip install -q "$torch_pin"
  "$venv/bin/python" -m pip install -q -r "$root/scripts/requirements.txt"
  "$venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$root"
  echo "$want" > "$stamp"
fi
