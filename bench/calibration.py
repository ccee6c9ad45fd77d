"""Issue 30 §3: would per-class score calibration, or a sigmoid/softmax mix, help real sound events
(the two-label mixes above all)? Scored post hoc on the exports a `quality.py` kitchen10 campaign
left in WORK_DIR/runs/RECIPE/SEED/FOLD-*/export (no training):

    .ci/inenv python bench/calibration.py --work_dir /tmp/fatp-quality-kitchen10 --recipes base,base_noes

For every run, lwlrap on the fold's held-out clips (all / single clips / two-label mixes) of:
- `raw`: the export's scores, as served;
- `softmax_mix`: 0.5 sigmoid + 0.5 softmax of the same logits. Both are increasing in a label's
  logit with the others fixed, so the ranking inside a clip, and lwlrap, cannot change; the column
  checks it (it must equal `raw`);
- `z_eval`: each class's logit standardised by its mean and s.d. over the eval split's clips
  (no labels used), constants a served model could carry;
- `z_test`: the same over the test clips themselves (transductive: only a batch submission such
  as Kaggle's could do it, a server scoring one clip cannot).
Prints the mean over runs and, per calibration, how many runs it raised over `raw`; writes
bench/out/calibration.json.
"""
from __future__ import annotations

import argparse
import glob
import json
import os

import numpy as np

import quality

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", "calibration.json")
KINDS = ("raw", "softmax_mix", "z_eval", "z_test")


def _logits(p: np.ndarray) -> np.ndarray:
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def _standardised(logits: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return (logits - ref.mean(axis=0)) / (ref.std(axis=0) + 1e-6)


def calibrations(eval_scores: np.ndarray, test_scores: np.ndarray) -> dict[str, np.ndarray]:
    le, lt = _logits(eval_scores), _logits(test_scores)
    soft = np.exp(lt - lt.max(axis=1, keepdims=True))
    soft /= soft.sum(axis=1, keepdims=True)
    return {"raw": test_scores, "softmax_mix": 0.5 * test_scores + 0.5 * soft,
            "z_eval": _standardised(lt, le), "z_test": _standardised(lt, lt)}


def lwlraps(truth: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    from pipeline.metrics import lwlrap

    parts = quality.by_label_count(truth, scores)
    return {"all": float(lwlrap.lwlrap(truth, scores)), "single": parts["test_lwlrap_single"],
            "mixes": parts["test_lwlrap_multi"]}


def score_run(run: str, work_dir: str) -> dict:
    fold = os.path.basename(run).split("-")[0]
    (export,) = glob.glob(os.path.join(run, "export", "*"))
    raw_e, _, _ = quality.test_set(os.path.join(work_dir, fold, "examples"), "eval")
    raw_t, truth, _ = quality.test_set(os.path.join(work_dir, fold, "test_examples"))
    cal = calibrations(quality.score_saved_model(export, raw_e), quality.score_saved_model(export, raw_t))
    return {"run": run, **{k: lwlraps(truth, s) for k, s in cal.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work_dir", required=True, help="a quality.py kitchen10 campaign's --work_dir")
    ap.add_argument("--recipes", default="base_noes")
    args = ap.parse_args()
    out = {}
    for recipe in args.recipes.split(","):
        runs = sorted(glob.glob(os.path.join(args.work_dir, "runs", recipe, "*", "kitchen*")))
        if not runs:
            raise SystemExit(f"no kitchen10 runs of {recipe!r} under {args.work_dir}/runs")
        rows = [score_run(r, args.work_dir) for r in runs]
        out[recipe] = rows
        raw = np.array([r["raw"]["all"] for r in rows])
        for kind in KINDS:
            mean = {part: np.mean([r[kind][part] for r in rows]) for part in rows[0][kind]}
            up = int((np.array([r[kind]["all"] for r in rows]) > raw + 1e-9).sum())
            print(f"{recipe:12s} {kind:12s} " + " ".join(f"{p} {v:.4f}" for p, v in mean.items())
                  + f"   above raw in {up} of {len(rows)} runs", flush=True)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
