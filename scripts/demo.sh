#!/usr/bin/env bash
# The main job, end to end on the default body: make a synthetic subject (and a contact sheet of
# its frames, masks and garment labels), fit an outfit to it, score the fit against the truth,
# and re-drape the outfit on a taller body. The Blender stage extends this script later.
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
.venv/bin/pointwear fit-outfit "$out/subject" --out "$out/fit" ${DEMO_FIT_ARGS:-}
.venv/bin/pointwear eval-outfit "$out/fit" "$out/subject"
.venv/bin/pointwear drape "$out/fit" --betas "2.0" --out "$out/redrape"
echo "demo: subject $out/subject (contact sheet $out/contact_sheet.png); fitted outfit $out/fit"
echo "      (outfit.npz, posed.npz, outfit.ply, result.json, fit_frames.gif); re-draped on a taller body: $out/redrape"
