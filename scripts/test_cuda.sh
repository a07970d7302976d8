#!/usr/bin/env bash
# The CUDA lane: on a machine with a GPU (and a CUDA build of torch in .venv), the device tests
# with their cuda variants and the CPU vs CUDA agreement of the fit, the renderers and the
# appearance step. Fails when CUDA is not there (it must not pass by skipping everything).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${POINTWEAR_PYTHON:-$root/.venv/bin/python}"
"$py" -c 'import sys, torch; ok = torch.cuda.is_available(); print("torch", torch.__version__, "cuda", torch.version.cuda, "available", ok); sys.exit(0 if ok else 3)' \
  || { echo "test_cuda.sh: no usable CUDA here (install a CUDA torch build in .venv on a GPU machine)" >&2; exit 3; }
exec "$py" -m pytest tests/test_cuda.py tests/test_device.py -q -rs "$@"
