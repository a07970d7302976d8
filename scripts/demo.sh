#!/usr/bin/env bash
# The main job, end to end on the default body: make a synthetic subject and a contact sheet
# of its frames, masks and garment labels. Later stages (fitting, Blender) extend this script.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup_env.sh
out="${1:-$root/out/demo}"
mkdir -p "$out"
.venv/bin/pointwear body export default --out "$out/body.npz"
.venv/bin/pointwear synth "$out/subject" --frames "${DEMO_FRAMES:-8}" --size "${DEMO_SIZE:-256}" \
  --outfit "${DEMO_OUTFIT:-tshirt-shorts}" --motion "${DEMO_MOTION:-turntable}" --seed "${DEMO_SEED:-1}"
.venv/bin/pointwear subject check "$out/subject"
.venv/bin/pointwear subject sheet "$out/subject" --out "$out/contact_sheet.png"
echo "demo: subject in $out/subject, contact sheet $out/contact_sheet.png"
