"""Batch prediction benchmark: fatp-batch-predict on DirectRunner and DaskRunner against local
fatp-predict (the feature job in test mode, then the SavedModel over its Examples), same clips,
one command.

    .ci/inenv python bench/bench_batch_predict.py [--n 2000] [--scale 4] [--preset small]

Builds FSDD-FAT clips with make_fat_dataset.py (needs ../shared): a few labelled clips to train a
small model on (one epoch: speed, not quality, is measured) and N x scale test clips. Then, for N
and N x scale clips listed in a sample_submission subset, runs each whole command (start-up
included):
  direct_2   fatp-batch-predict, --direct_num_workers=2 (threads; the local default on 2 cores)
  dask_2     fatp-batch-predict, --runner=DaskRunner --dask_local_workers=2
  local      beam_runner.py --mode test, then fatp-predict's local mode (the baseline)
Reports clips/s and the peak RSS of the process tree, the ratio of each to `local` at the same N
(the machine is noisy: only ratios within one run are compared), and peak RSS at N x scale over N
(target: flat, <= 1.2). Every submission is checked against local's (within 1e-5). Results:
stdout and bench/out/batch_predict.json.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from bench_features import REPO, SHARED, timed  # noqa: E402

PREDICT_LOCAL = """
import sys
from pipeline.serving import predict
predict.predict(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], allow_missing=False)
"""


def make_data(out: str, test: int) -> None:
    if os.path.exists(os.path.join(out, "sample_submission.csv")):
        return
    subprocess.run([sys.executable, os.path.join(SHARED, "tools", "make_fat_dataset.py"), "--recordings",
                    os.path.join(SHARED, "data", "fsdd", "recordings"), "--out", out, "--train", "120",
                    "--test", str(test), "--seed", "7"], check=True)


def train_model(data: str, work: str, preset: str) -> str:
    examples, export = os.path.join(work, "examples"), os.path.join(work, "export")
    if not os.path.isdir(export):
        subprocess.run([sys.executable, os.path.join(REPO, "beam_runner.py"), "--data_dir", data, "--output_dir",
                        examples, "--preset", preset, "--overwrite", "--max_error_ratio", "1",
                        "--log_level", "WARNING"], check=True, cwd=REPO)
        subprocess.run([sys.executable, "-m", "pipeline.training.train", "--examples", examples, "--work_dir",
                        os.path.join(work, "train"), "--export_dir", export, "--preset", "small",
                        "--set", "epochs: 1"], check=True, cwd=REPO, capture_output=True)
    return export


def subset(data: str, n: int, work: str) -> str:
    """A sample_submission.csv listing the first n test clips."""
    path = os.path.join(work, f"sample_{n}.csv")
    with open(os.path.join(data, "sample_submission.csv"), newline="") as f:
        rows = list(csv.reader(f))
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows[:n + 1])
    return path


def read_submission(path: str) -> np.ndarray:
    with open(path, newline="") as f:
        return np.array([[float(x) for x in r[1:]] for r in list(csv.reader(f))[1:]])


def run(name: str, data: str, sample: str, model: str, out: str, preset: str) -> dict:
    audio = os.path.join(data, "test")
    if name == "local":
        job = [sys.executable, os.path.join(REPO, "beam_runner.py"), "--mode", "test", "--csv", sample, "--audio_dir",
               audio, "--labels", sample, "--output_dir", os.path.join(out, "examples"), "--preset", preset,
               "--overwrite", "--log_level", "WARNING"]
        s1, rss1, _ = timed(job)
        s2, rss2, _ = timed([sys.executable, "-c", PREDICT_LOCAL, model, os.path.join(out, "examples"), sample,
                             os.path.join(out, "submission.csv")])
        seconds, rss = s1 + s2, max(rss1, rss2)
    else:
        flags = {"direct_2": ["--runner=DirectRunner", "--direct_num_workers=2"],
                 "dask_2": ["--runner=DaskRunner", "--dask_local_workers=2"]}[name]
        seconds, rss, _ = timed([sys.executable, "-m", "pipeline.serving.batch_predict", "--model", model,
                                 "--audio_dir", audio, "--sample_submission", sample, "--output_dir", out,
                                 "--overwrite", "--log_level", "WARNING", *flags])
    return {"seconds": seconds, "peak_rss_mb": rss / 2**20, "submission": os.path.join(out, "submission.csv")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--preset", default="small", help="feature preset of the model (small: 16 kHz, 101x40)")
    ap.add_argument("--work", default=os.path.join(HERE, "out", "batch_predict"))
    args = ap.parse_args()
    if not os.path.isdir(os.path.join(SHARED, "data", "fsdd")):
        sys.exit(f"needs ../shared (FSDD) beside the repository: {SHARED}")
    data = os.path.join(args.work, f"data_{args.n * args.scale}")
    make_data(data, args.n * args.scale)
    model = train_model(data, os.path.join(args.work, "model"), args.preset)
    results = {}
    for n in (args.n, args.n * args.scale):
        sample = subset(data, n, args.work)
        for name in ("local", "direct_2", "dask_2"):
            r = run(name, data, sample, model, os.path.join(args.work, f"{name}_{n}"), args.preset)
            r["clips_per_s"] = n / r["seconds"]
            results[f"{name}@{n}"] = r
            print(f"{name:9s} n={n:5d}: {r['seconds']:7.1f} s  {r['clips_per_s']:6.1f} clips/s  "
                  f"peak RSS {r['peak_rss_mb']:7.0f} MB", flush=True)
        want = read_submission(results[f"local@{n}"]["submission"])
        for name in ("direct_2", "dask_2"):
            got = read_submission(results[f"{name}@{n}"]["submission"])
            assert got.shape == want.shape and np.abs(got - want).max() <= 1e-5, (name, n, np.abs(got - want).max())
    n, big = args.n, args.n * args.scale
    summary = {}
    for name in ("direct_2", "dask_2", "local"):
        summary[name] = {"clips_per_s_vs_local": results[f"{name}@{n}"]["clips_per_s"] / results[f"local@{n}"]["clips_per_s"],
                         "rss_scale_ratio": results[f"{name}@{big}"]["peak_rss_mb"] / results[f"{name}@{n}"]["peak_rss_mb"]}
        print(f"{name:9s} clips/s vs local at n={n}: {summary[name]['clips_per_s_vs_local']:.2f}x; "
              f"peak RSS at {big} / at {n}: {summary[name]['rss_scale_ratio']:.2f}")
    os.makedirs(os.path.join(HERE, "out"), exist_ok=True)
    with open(os.path.join(HERE, "out", "batch_predict.json"), "w") as f:
        json.dump({"args": vars(args), "results": results, "summary": summary}, f, indent=1)


if __name__ == "__main__":
    main()
