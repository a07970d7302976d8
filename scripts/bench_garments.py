"""Compositional outfit fitting on physically simulated clothing: every subject of a clothsim
evaluation set (scripts/make_clothsim_set.py, evaluation seeds only; training-split subjects are
refused) fitted three ways and scored against its truth: the default fit (garments chosen per
label), the same with refinement (`--refine-steps`), and today's-before fit (the four fixed
outfits of the older model, no labels, all codes kept), beside the naked-body baseline. Writes
the section "Garments on simulated cloth" of docs/benchmarks.md.

    .venv/bin/python scripts/bench_garments.py CLOTHSIM_DIR [--subjects tshirt_1000,skirt_1000] [--no-write]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from benchdoc import machine, publish  # noqa: E402

SECTION = "Garments on simulated cloth"
LEGACY = ("tshirt-shorts", "longsleeve-trousers", "tank-skirt", "dress")
REFINE_STEPS = 100


def variants():
    from pointwear.fit.outfit_fit import FitOptions
    return {"garments": FitOptions(),
            "garments + refine": FitOptions(refine_steps=REFINE_STEPS),
            "four outfits (before)": FitOptions(labels="off", outfits=LEGACY, keep=len(LEGACY))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("clothsim", type=Path)
    ap.add_argument("--subjects", default=None, help="comma-separated subject folder names (default: all)")
    ap.add_argument("--variants", default=None, help="comma-separated variant names (default: all)")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--rows", default=None, help="publish the rows of an earlier run (out/bench_garments_rows.json)")
    args = ap.parse_args()
    from pointwear.fit.evaluate import evaluate_outfit
    from pointwear.fit.outfit_fit import fit_outfit

    if args.rows:      # publish saved rows again (after a change of this page's text), no fitting
        rows = json.loads(Path(args.rows).read_text())
        publish(SECTION, doc_lines(rows, args.clothsim.name, sorted({r["variant"] for r in rows})),
                write=not args.no_write)
        return
    names = args.subjects.split(",") if args.subjects else sorted(
        p.name for p in args.clothsim.iterdir() if (p / "subject.json").is_file())
    runs = variants()
    if args.variants:
        runs = {k: v for k, v in runs.items() if k in args.variants.split(",")}
    tmp = Path(tempfile.mkdtemp(prefix="bench_garments_"))
    rows = []
    for name in names:
        subject = args.clothsim / name
        meta = json.loads((subject / "subject.json").read_text())
        if meta.get("split") != "eval":
            raise SystemExit(f"{subject}: split {meta.get('split')!r}: only evaluation subjects are benchmarked")
        truth = [g for _, g in sorted(meta.get("garments", {}).items())]
        for variant, options in runs.items():
            out = tmp / f"{name}_{variant.replace(' ', '_')}"
            t0 = time.perf_counter()
            result = fit_outfit(subject, out, options)
            seconds = time.perf_counter() - t0
            r = evaluate_outfit(out, subject)
            picked = [g["name"] for g in (result.get("garments") or [])]
            row = {**r, "subject": name, "truth": truth, "variant": variant, "picked": picked,
                   "drape": result["drape"], "best_stage": result["best_stage"], "seconds": seconds}
            rows.append(row)
            f, b = r["fit"], r["baseline"]
            print(f"{name:28s} {variant:22s} {result['drape']:40s} {f['chamfer_cm']:.2f} cm IoU {f['heldout_iou']:.3f} "
                  f"| base {b['chamfer_cm']:.2f} cm IoU {b['heldout_iou']:.3f} | {seconds:.0f} s", flush=True)
    Path("out").mkdir(exist_ok=True)
    Path("out/bench_garments_rows.json").write_text(json.dumps(rows))
    publish(SECTION, doc_lines(rows, args.clothsim.name, list(runs)), write=not args.no_write)


def doc_lines(rows: list[dict], set_name: str, variants_run: list[str]) -> list[str]:
    described = {"garments": "the default fit (garments chosen per label)",
                 "garments + refine": f"the same with {REFINE_STEPS} refinement steps (kept only when the held-out "
                                      "score improves)",
                 "four outfits (before)": "the older model (the four fixed outfits, no labels)"}
    lines = [f"`.venv/bin/python scripts/bench_garments.py {set_name}` on {time.strftime('%Y-%m-%d')}; "
             f"{machine()}; 1 torch thread.", "",
             "Subjects: the clothsim evaluation set (`scripts/make_clothsim_set.py`, evaluation seeds 1000+, never "
             "tuned on; 8 frames at 256 px, every fourth frame held out), labels by slot (upper / lower / one-piece). "
             "Variants: " + "; ".join(described[v] for v in variants_run) + ". Targets: held-out IoU >= 0.85 and "
             "3D Chamfer <= 2.0 cm.", "",
             "| subject | truth | variant | picked | 3D Chamfer (cm) | F@1cm | held-out IoU | held-out 2D Chamfer (px) "
             "| baseline 3D Chamfer (cm) | baseline IoU | fit time |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f, b = r["fit"], r["baseline"]
        picked = r["drape"].split(":", 1)[-1]
        lines.append(f"| {Path(r['subject']).name} | {'+'.join(r['truth'])} | {r['variant']} | {picked} | "
                     f"{f['chamfer_cm']:.2f} | {f['fscore_1cm']:.3f} | {f['heldout_iou']:.3f} | "
                     f"{f['heldout_chamfer_px']:.2f} | {b['chamfer_cm']:.2f} | {b['heldout_iou']:.3f} | "
                     f"{r['seconds']:.0f} s |")
    return lines



if __name__ == "__main__":
    main()
