#!/usr/bin/env bash
# Build Pointwear's free `default` body (backend/pointwear/body/data/default_body.npz) from the
# Anny body model. Build-time only: anny needs numpy 2 and warp, so it gets its own venv, never
# the project .venv; nothing at run time imports anny. Idempotent: the venv is reused when its
# stamp matches the pins. Extra arguments go to scripts/build_default_body.py.
#   BUILD_VENV   build venv         (default /work/scratch/anny/venv)
#   BUILD_CACHE  anny + warp caches (default: cache/ beside the venv; never $HOME)
#   RENDER_DIR   check renders      (default: renders/ beside the venv)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${BUILD_VENV:-/work/scratch/anny/venv}"
scratch="$(dirname "$venv")"
cache="${BUILD_CACHE:-$scratch/cache}"
renders="${RENDER_DIR:-$scratch/renders}"
# torch goes in first and alone so pip takes the CPU wheel, not a multi-GB CUDA build.
torch_pin="torch==2.13.0"
pins=(anny==0.6.2 numpy==2.4.6 warp-lang==1.19.0 roma==1.8.0 trimesh==5.2.0 safetensors==0.8.0
      smplx==0.1.28 pillow==13.0.0)

source "$(dirname "${BASH_SOURCE[0]}")/find_python.sh"

mkdir -p "$scratch" "$cache/anny" "$cache/warp"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
stamp="$venv/.default-body-stamp"
want="$(echo "$torch_pin ${pins[*]}" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "build_default_body: installing the build venv in $venv"
  "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
  "$venv/bin/python" -m pip install -q "$torch_pin"
  "$venv/bin/python" -m pip install -q "$torch_pin" "${pins[@]}"
  echo "$want" > "$stamp"
fi

export ANNY_CACHE_DIR="$cache/anny" WARP_CACHE_PATH="$cache/warp"
exec "$venv/bin/python" "$root/scripts/build_default_body.py" \
  --out "$root/backend/pointwear/body/data/default_body.npz" \
  --render-dir "$renders" --report "$scratch/default_body_report.json" "$@"
