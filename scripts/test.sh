#!/usr/bin/env bash
# Install (idempotently) and run the tests in two lanes; exit non-zero on any failure.
#   lane 1 (.venv, bpy 4.5.15 + torch + backend): the whole suite, or the pytest args given;
#   lane 2 (.venv-bpy5, bpy 5.0.1 only): tests/blender again, the backend started from .venv.
# With pytest args, lane 2 runs only when they name something under tests/blender.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup_env.sh
bash scripts/setup_gltf_validator.sh   # Khronos glTF-Validator for the export tests (npm, pinned)
export BLENDER_USER_RESOURCES="${BLENDER_USER_RESOURCES:-$root/.venv/blender-user}"
export POINTWEAR_BACKEND_PYTHON="$root/.venv/bin/python"

run_lane() {  # name python args...
  local name="$1" py="$2"; shift 2
  echo "== test.sh: lane $name ($("$py" -c 'import bpy; print("bpy", bpy.app.version_string)'))"
  set +e
  "$py" -m pytest "$@"
  local rc=$?
  set -e
  if [ "$rc" -eq 5 ]; then
    echo "test.sh: lane $name collected no tests; that is a failure here" >&2
    rc=1
  fi
  return "$rc"
}

lane2_args=(tests/blender)
if [ "$#" -gt 0 ]; then
  lane2_args=()
  for a in "$@"; do [[ "$a" == tests/blender* || "$a" == -* ]] && lane2_args+=("$a"); done
  [[ " ${lane2_args[*]-} " == *" tests/blender"* ]] || lane2_args=()
fi

rc=0
run_lane "bpy-4.5" .venv/bin/python "$@" || rc=$?
if [ "${#lane2_args[@]}" -gt 0 ]; then
  bash scripts/setup_bpy5_lane.sh
  BLENDER_USER_RESOURCES="$root/.venv-bpy5/blender-user" \
    run_lane "bpy-5.0" .venv-bpy5/bin/python "${lane2_args[@]}" || rc=$?
fi
exit "$rc"
