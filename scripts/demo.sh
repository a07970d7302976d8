#!/usr/bin/env bash
# The main job, end to end on the default body and a synthetic subject:
#   1. make a synthetic subject (and a contact sheet of its frames, masks and garment labels);
#   2. Blender (the bpy module) + the add-on start the backend, fit the outfit, import it onto an
#      SMPL armature with the subject's camera, save subject.blend and render frame 2 with Cycles,
#      which is put beside the subject's own frame 2 (compare_frame.png);
#   3. the appearance fitted to the frames (neural descriptors + U-Net; baked point colours);
#   4. Blender again: the fitted result with its colours on a new motion (a procedural walk),
#      saved as scene.blend, rendered with Cycles to walk.gif and neurally to neural_walk.gif;
#   4b. the appearance result exported as walk.glb (mesh, texture, skeleton, the walk) and checked
#      by Khronos' glTF-Validator;
#   5. score the fit against the synthetic truth, and re-drape it on a taller body from the CLI;
#   6. real footage: the real video ../shared/data/real/single_person_demo.mp4 through prepare ->
#      fit-outfit -> fit-appearance -> Blender: the overlay contact sheet (real_sheet.png) and the
#      fitted clothing rendered by Cycles with the video's camera beside each frame (real.gif).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup_env.sh
out="$(mkdir -p "${1:-$root/out/demo}" && cd "${1:-$root/out/demo}" && pwd)"
export BLENDER_USER_RESOURCES="${BLENDER_USER_RESOURCES:-$root/.venv/blender-user}"
export POINTWEAR_BACKEND_PYTHON="$root/.venv/bin/python"
pw=.venv/bin/pointwear
frame="${DEMO_FRAME:-2}"

$pw body export default --out "$out/body.npz"
$pw synth "$out/subject" --frames "${DEMO_FRAMES:-8}" --size "${DEMO_SIZE:-256}" \
  --outfit "${DEMO_OUTFIT:-tshirt-shorts}" --motion "${DEMO_MOTION:-turntable}" --seed "${DEMO_SEED:-1}"
$pw subject check "$out/subject"
$pw subject sheet "$out/subject" --out "$out/contact_sheet.png"
$pw motion export walk --frames "${DEMO_WALK_FRAMES:-48}" --out "$out/walk.npz"

rm -rf "$out/fit"
.venv/bin/python scripts/pointwear_batch.py --subject "$out/subject" --work "$out/work" \
  --copy-result "$out/fit" --out "$out/subject.blend" --render "$out/render_frame.png" --frame "$frame" \
  ${DEMO_FIT_ARGS:-}
.venv/bin/python - "$out" "$frame" <<'PY'
import sys
from pathlib import Path
import imageio.v3 as iio
import numpy as np
out, k = Path(sys.argv[1]), int(sys.argv[2])
photo = iio.imread(out / "subject" / "frames" / f"{k:06d}.png")[..., :3]
render = iio.imread(out / "render_frame.png")[..., :3]
iio.imwrite(out / "compare_frame.png", np.concatenate([photo, render], axis=1))
PY
$pw fit-appearance "$out/subject" --outfit "$out/fit" --out "$out/app" --minutes "${DEMO_APP_MINUTES:-4}"
rm -rf "$out/neural"
.venv/bin/python scripts/pointwear_batch.py --result "$out/app" --motion "$out/walk.npz" --up Y \
  --out "$out/scene.blend" --animation "$out/walk.gif" --scale "${DEMO_ANIM_SCALE:-100}" \
  --neural-render "$out/neural"
.venv/bin/python - "$out" <<'PY'
import sys
from pathlib import Path
import imageio.v3 as iio
import numpy as np
out = Path(sys.argv[1])
frames = []
for f in sorted((out / "neural").glob("*.png")):
    rgba = iio.imread(f).astype(np.float32) / 255.0
    grey = np.full(rgba.shape[:2] + (3,), 0.45, np.float32)
    frames.append((255 * (rgba[..., :3] * rgba[..., 3:] + grey * (1 - rgba[..., 3:]))).astype(np.uint8))
iio.imwrite(out / "neural_walk.gif", frames, duration=1000 / 24, loop=0)
print(f"wrote {out / 'neural_walk.gif'} ({len(frames)} frames)")
PY

# the appearance result as a skinned, textured glTF walking (the motion file says it is Y-up),
# checked by Khronos' glTF-Validator when node/npm are here (scripts/validate_gltf.sh)
$pw export "$out/app" --format glb --motion "$out/walk.npz" --out "$out/walk.glb"
status=0
bash scripts/validate_gltf.sh "$out/walk.glb" || status=$?
if [ "$status" = 3 ]; then
  echo "demo: $out/walk.glb not validated (no node/npm)" >&2
elif [ "$status" != 0 ]; then
  echo "demo: $out/walk.glb FAILED glTF validation" >&2
  exit 1
fi

$pw eval-outfit "$out/fit" "$out/subject"
$pw drape "$out/fit" --betas "2.0" --out "$out/redrape"

video="${DEMO_VIDEO:-$root/../shared/data/real/single_person_demo.mp4}"
if [ -f "$video" ]; then
  $pw prepare "$video" --out "$out/real" --size "${DEMO_REAL_SIZE:-512}" ${DEMO_PREPARE_ARGS:-}
  $pw subject check "$out/real"
  cp "$out/real/prepare/contact_sheet.png" "$out/real_sheet.png"
  rm -rf "$out/real_fit" "$out/real_app"
  $pw fit-outfit "$out/real" --out "$out/real_fit" ${DEMO_REAL_FIT_ARGS:-}
  $pw fit-appearance "$out/real" --outfit "$out/real_fit" --out "$out/real_app" \
    --minutes "${DEMO_REAL_APP_MINUTES:-3}"
  rm -rf "$out/real_frames"
  .venv/bin/python scripts/pointwear_batch.py --result "$out/real_app" --out "$out/real.blend" \
    --animation "$out/real_frames/" --scale "${DEMO_REAL_ANIM_SCALE:-100}"
  .venv/bin/python - "$out" <<'PY'
import sys
from pathlib import Path
import imageio.v3 as iio
import numpy as np
out = Path(sys.argv[1])
renders = sorted((out / "real_frames").glob("*.png"))
frames = []
for k, f in enumerate(renders):
    photo = iio.imread(out / "real" / "frames" / f"{k:06d}.png")[..., :3]
    render = iio.imread(f)[..., :3]
    if render.shape != photo.shape:
        render = np.asarray(__import__("PIL.Image", fromlist=["Image"]).fromarray(render).resize(photo.shape[1::-1]))
    frames.append(np.concatenate([photo, render], axis=1)[::2, ::2])
iio.imwrite(out / "real.gif", frames, duration=1000 / 12, loop=0)
print(f"wrote {out / 'real.gif'} ({len(frames)} frames)")
PY
else
  echo "demo: $video not found; skipping the real-video part" >&2
fi
cat <<MSG
demo: subject         $out/subject (contact sheet $out/contact_sheet.png)
      fitted outfit   $out/fit (outfit.npz, posed.npz, body.npz, result.json, fit_frames.gif)
      Blender         $out/subject.blend (subject motion, subject camera), $out/scene.blend (walk)
      appearance      $out/app (appearance.pt, outfit.npz with colours, heldout/, heldout_sheet.png, result.json)
      renders         $out/compare_frame.png (subject frame $frame | Cycles), $out/walk.gif (Cycles),
                      $out/neural_walk.gif (neural render of the walk)
      glTF            $out/walk.glb (textured, skinned garment + the walk; glTF-Validator checked)
      re-draped       $out/redrape (beta1 = 2)
      real video      $out/real (prepared subject; overlay sheet $out/real_sheet.png), $out/real_fit,
                      $out/real_app, $out/real.blend, $out/real.gif (video | Cycles render of the fit)
MSG
