#!/usr/bin/env bash
# Install (idempotently) into .venv and run the whole pytest suite. Exit non-zero on any failure.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup_env.sh
export BLENDER_USER_RESOURCES="${BLENDER_USER_RESOURCES:-$root/.venv/blender-user}"
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "test.sh: pytest collected no tests; that is a failure here" >&2
  exit 1
fi
exit "$rc"
