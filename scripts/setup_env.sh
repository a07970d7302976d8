#!/usr/bin/env bash
# Create or update the project venv (.venv, Python 3.11) with pinned dependencies.
# Idempotent: a stamp holding the hash of the requirements skips pip when nothing changed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${POINTWEAR_VENV:-$root/.venv}"
torch_pin="torch==2.13.0"
python="${PYTHON:-}"
if [ -z "$python" ]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      python="$cand"; break
    fi
  done
fi
[ -n "$python" ] || { echo "setup_env: Python 3.11 is required (bpy 4.5 wheels exist only for 3.11); set PYTHON=/path/to/python3.11" >&2; exit 2; }

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
