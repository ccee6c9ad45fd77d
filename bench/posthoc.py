"""Issue 30 §3, without training again: what would per-class calibration, a sigmoid/softmax mix or
an ensemble of seeds (TrainerConfig.ensemble_size) make of the runs a `quality.py` campaign left in
WORK_DIR/runs/RECIPE/SEED/FOLD-*/export? Scored on each fold's held-out clips:

    .ci/inenv python bench/posthoc.py --work_dir /tmp/fatp-quality-kitchen10 --recipes base,base_noes

Per run, lwlrap (all clips; on kitchen10 also the single clips and the two-label mixes) of:
- `raw`: the export's scores, as served;
- `softmax_mix`: 0.5 sigmoid + 0.5 softmax of the same logits. Both increase with a label's logit
  while the others stay, so the ranking inside a clip, and lwlrap, cannot change: the column checks
  it (it must equal `raw`);
- `z_eval`: each class's logit standardised by its mean and s.d. over the eval split's clips (no
  labels used): constants a served model could carry;
- `z_test`: the same over the test clips themselves (transductive: only a batch submission such
  as Kaggle's could do it; a server scoring one clip cannot).
Per fold, `ensemble`: the mean of the logits of the recipe's runs of every seed (`--members K`: of
K of them, averaged over every choice of K), which is what an export with `ensemble_size` K serves
(tests/training/test_ensemble.py: each member is the single run of its seed), against the mean of
those runs alone.
Writes bench/out/posthoc.json.
"""
from __future__ import annotations

import argparse
import glob
import itertools
import json
import os

import numpy as np

import quality

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", "posthoc.json")
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
    return {"all": float(lwlrap.lwlrap(truth, scores)),
            **({"single": parts["test_lwlrap_single"], "mixes": parts["test_lwlrap_multi"]} if parts else {})}


def fold_dir(work_dir: str, run: str) -> str:
    """The folder of a run's fold: WORK/kitchenN (kitchen10) or WORK/SPEAKER-TRAINxTEST (FSDD)."""
    name = os.path.basename(run)
    kitchen = os.path.join(work_dir, name.split("-")[0])
    return kitchen if os.path.isdir(os.path.join(kitchen, "examples")) else os.path.join(work_dir, name.rsplit("-e", 1)[0])


def score_run(run: str, work_dir: str) -> dict:
    (export,) = glob.glob(os.path.join(run, "export", "*"))
    data = fold_dir(work_dir, run)
    raw_e, _, _ = quality.test_set(os.path.join(data, "examples"), "eval")
    raw_t, truth, _ = quality.test_set(os.path.join(data, "test_examples"))
    test_scores = quality.score_saved_model(export, raw_t)
    cal = calibrations(quality.score_saved_model(export, raw_e), test_scores)
    return {"run": run, "fold": os.path.basename(run), "truth": truth, "scores": test_scores,
            **{k: lwlraps(truth, s) for k, s in cal.items()}}


def ensembles(rows: list[dict], members: int = 0) -> list[dict]:
    """Per fold: ensembles (mean logits) of `members` of its runs (0: all), averaged over every such
    choice of seeds, against the mean of its runs alone."""
    out = []
    for fold in sorted({r["fold"] for r in rows}):
        runs = [r for r in rows if r["fold"] == fold]
        k = members or len(runs)
        scores = []
        for chosen in itertools.combinations(runs, k):
            mean = 1 / (1 + np.exp(-np.mean([_logits(r["scores"]) for r in chosen], axis=0)))
            scores.append(lwlraps(runs[0]["truth"], mean))
        out.append({"fold": fold, "members": k, "choices": len(scores),
                    "ensemble": {p: float(np.mean([s[p] for s in scores])) for p in scores[0]},
                    "members_mean": {p: float(np.mean([r["raw"][p] for r in runs])) for p in runs[0]["raw"]}})
    return out


def _fmt(d: dict) -> str:
    return " ".join(f"{p} {v:.4f}" for p, v in d.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work_dir", required=True, help="a quality.py campaign's --work_dir")
    ap.add_argument("--recipes", default="base_noes")
    ap.add_argument("--members", type=int, default=0,
                    help="ensembles of this many seeds' runs, averaged over every choice of them (0: all seeds)")
    args = ap.parse_args()
    out = {}
    for recipe in args.recipes.split(","):
        runs = sorted(r for r in glob.glob(os.path.join(args.work_dir, "runs", recipe, "*", "*"))
                      if glob.glob(os.path.join(r, "export", "*")))
        if not runs:
            raise SystemExit(f"no exported runs of {recipe!r} under {args.work_dir}/runs")
        rows = [score_run(r, args.work_dir) for r in runs]
        raw = np.array([r["raw"]["all"] for r in rows])
        for kind in KINDS:
            mean = {p: float(np.mean([r[kind][p] for r in rows])) for p in rows[0][kind]}
            up = int((np.array([r[kind]["all"] for r in rows]) > raw + 1e-9).sum())
            print(f"{recipe:12s} {kind:12s} {_fmt(mean)}   above raw in {up} of {len(rows)} runs", flush=True)
        ens = ensembles(rows, args.members)
        for e in ens:
            print(f"{recipe:12s} ensemble of {e['members']} ({e['choices']} choices) {e['fold']}: {_fmt(e['ensemble'])}   "
                  f"(its runs alone: {_fmt(e['members_mean'])})", flush=True)
        print(f"{recipe:12s} ensemble, mean of folds: "
              f"{np.mean([e['ensemble']['all'] for e in ens]):.4f} against {np.mean(raw):.4f} for single runs; "
              f"above its runs' mean in {sum(e['ensemble']['all'] > e['members_mean']['all'] for e in ens)} of "
              f"{len(ens)} folds", flush=True)
        out[recipe] = {"runs": [{k: v for k, v in r.items() if k not in ("truth", "scores")} for r in rows],
                       "ensembles": ens}
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
