# Sourced by the setup scripts: sets $python to a Python 3.11 (bpy 4.5 and the pinned wheels
# need exactly 3.11), honouring $PYTHON, or exits with a clear message naming the caller.
python="${PYTHON:-}"
if [ -z "$python" ]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      python="$cand"; break
    fi
  done
fi
[ -n "$python" ] || { echo "$(basename "$0"): Python 3.11 is required; set PYTHON=/path/to/python3.11" >&2; exit 2; }
