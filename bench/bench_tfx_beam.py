"""The TFX pipeline's Beam components under the two local running modes, in one command:

    .ci/inenv python bench/bench_tfx_beam.py [--data_dir DIR] [--rounds 2] [--epochs 5]

"processes" and "threads": FnApiRunner with one worker per usable core, in multi_processing or
multi_threading mode (pipeline.beam.runners.runner_flags picks threads up to
runners.MAX_THREAD_WORKERS workers, as the feature job). Each round runs the whole local pipeline
(`fatp-pipeline --no_cache`, small features, the demo data unless --data_dir) once per mode,
alternating, and reads each component's wall time from ML Metadata (execution created -> last
updated). Results: stdout and bench/out/tfx_beam.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

BEAM_COMPONENTS = ("AudioExampleGen", "StatisticsGen", "Evaluator")


def modes() -> dict[str, list[str]]:
    from pipeline.beam import runners

    common = [f"--runner={runners.LOCAL_RUNNER}", f"--direct_num_workers={runners.usable_cores()}"]
    return {"processes": common + ["--direct_running_mode=multi_processing"],
            "threads": common + ["--direct_running_mode=multi_threading"]}


def one_run(data_dir: str, root: str, epochs: int, beam_args: list[str]) -> dict:
    from pipeline.orchestration import run_report
    from pipeline.orchestration import tfx_pipeline

    shutil.rmtree(root, ignore_errors=True)
    cmd = [sys.executable, "-m", "pipeline.orchestration.run_local", "--data_dir", data_dir, "--pipeline_root",
           os.path.join(root, "pipeline"), "--serving_root", os.path.join(root, "serving"), "--feature_preset",
           "small", "--epochs", str(epochs), "--no_cache", *beam_args]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    store = run_report.open_store(os.path.join(root, "pipeline", "metadata.sqlite"))
    run_id = run_report.latest_run_id(store, tfx_pipeline.PIPELINE_NAME)
    seconds = {r.component: (r.execution.last_update_time_since_epoch - r.execution.create_time_since_epoch) / 1000
               for r in run_report.component_runs(store, tfx_pipeline.PIPELINE_NAME, run_id)}
    return {"wall_s": wall, "component_s": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data_dir", help="a Kaggle layout; default: the demo data, generated once")
    ap.add_argument("--work_dir", default="/tmp/fatp-bench-tfx")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=5, help="training epochs (the Trainer is not what is timed)")
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    data_dir = args.data_dir or os.path.join(args.work_dir, "demo_data")
    if not args.data_dir and not os.path.exists(os.path.join(data_dir, "train_curated.csv")):
        subprocess.run([sys.executable, "-m", "pipeline.data.demo_data", "--out", data_dir], check=True, cwd=REPO)
    variants = modes()
    runs = {name: [] for name in variants}
    for r in range(args.rounds):
        for name, beam_args in variants.items():
            out = one_run(data_dir, os.path.join(args.work_dir, name), args.epochs, beam_args)
            runs[name].append(out)
            beam = {c: round(out["component_s"].get(c, float("nan")), 1) for c in BEAM_COMPONENTS}
            print(f"round {r + 1} {name:9s} whole run {out['wall_s']:.1f} s; {beam}", flush=True)
    med = {name: {c: float(np.median([o["component_s"][c] for o in rs])) for c in BEAM_COMPONENTS + ("Trainer",)}
           | {"wall_s": float(np.median([o["wall_s"] for o in rs]))} for name, rs in runs.items()}
    ratios = {k: med["threads"][k] / med["processes"][k] for k in med["processes"]}
    print("median seconds:", json.dumps(med, indent=1))
    print("threads / processes:", {k: round(v, 2) for k, v in ratios.items()})
    os.makedirs(os.path.join(HERE, "out"), exist_ok=True)
    with open(os.path.join(HERE, "out", "tfx_beam.json"), "w") as f:
        json.dump({"modes": variants, "runs": runs, "median_s": med, "threads_over_processes": ratios}, f, indent=1)


if __name__ == "__main__":
    main()
