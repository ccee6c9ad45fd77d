"""The TFX pipeline's Beam components under two variants, in one command:

    .ci/inenv python bench/bench_tfx_beam.py [--data_dir DIR] [--rounds 2] [--epochs 5] [--compare modes|staging]

--compare modes (default), "processes" and "threads": FnApiRunner with one worker per usable core,
in multi_processing or multi_threading mode (pipeline.beam.runners.runner_flags picks threads up to
runners.MAX_THREAD_WORKERS workers, as the feature job).
--compare staging, "tfx-copy" and "no-copy": the runner's default flags, with TFX's own rule (each
Beam executor copies TFX into a temp folder and builds an sdist of it; beam_staging.install made a
no-op for the run) and with the pipeline's (pipeline/orchestration/beam_staging.py); also the bytes
each run left in its temp folder.
Each round runs the whole local pipeline (`fatp-pipeline --no_cache`, small features, the demo data
unless --data_dir) once per variant, alternating, and reads each component's wall time from ML
Metadata (execution created -> last updated). Results: stdout and bench/out/tfx_beam.json.
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


# the pipeline's command line with TFX's own staging rule (beam_staging.install a no-op)
TFX_COPY = ("import sys; from pipeline.orchestration import beam_staging, run_local; "
            "beam_staging.install = lambda: None; sys.argv[0] = 'fatp-pipeline'; run_local.main()")


def staging() -> dict[str, tuple[list[str], list[str]]]:
    return {"tfx-copy": (["-c", TFX_COPY], []), "no-copy": (["-m", "pipeline.orchestration.run_local"], [])}


def _bytes_under(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs
               if not os.path.islink(os.path.join(d, f)))


def one_run(data_dir: str, root: str, epochs: int, beam_args: list[str], entry: list[str]) -> dict:
    from pipeline.orchestration import run_report
    from pipeline.orchestration import tfx_pipeline

    shutil.rmtree(root, ignore_errors=True)
    tmp = os.path.join(root, "tmp")
    os.makedirs(tmp)
    cmd = [sys.executable, *entry, "--data_dir", data_dir, "--pipeline_root",
           os.path.join(root, "pipeline"), "--serving_root", os.path.join(root, "serving"), "--feature_preset",
           "small", "--epochs", str(epochs), "--no_cache", *beam_args]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL, env={**os.environ, "TMPDIR": tmp})
    wall = time.perf_counter() - t0
    left = _bytes_under(tmp)
    store = run_report.open_store(os.path.join(root, "pipeline", "metadata.sqlite"))
    run_id = run_report.latest_run_id(store, tfx_pipeline.PIPELINE_NAME)
    seconds = {r.component: (r.execution.last_update_time_since_epoch - r.execution.create_time_since_epoch) / 1000
               for r in run_report.component_runs(store, tfx_pipeline.PIPELINE_NAME, run_id)}
    return {"wall_s": wall, "component_s": seconds, "temp_bytes_left": left}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data_dir", help="a Kaggle layout; default: the demo data, generated once")
    ap.add_argument("--work_dir", default="/tmp/fatp-bench-tfx")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=5, help="training epochs (the Trainer is not what is timed)")
    ap.add_argument("--compare", choices=("modes", "staging"), default="modes")
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    data_dir = args.data_dir or os.path.join(args.work_dir, "demo_data")
    if not args.data_dir and not os.path.exists(os.path.join(data_dir, "train_curated.csv")):
        subprocess.run([sys.executable, "-m", "pipeline.data.demo_data", "--out", data_dir], check=True, cwd=REPO)
    entry = ["-m", "pipeline.orchestration.run_local"]
    variants = ({name: (entry, beam_args) for name, beam_args in modes().items()} if args.compare == "modes"
                else staging())
    runs = {name: [] for name in variants}
    for r in range(args.rounds):
        for name, (how, beam_args) in variants.items():
            out = one_run(data_dir, os.path.join(args.work_dir, name), args.epochs, beam_args, how)
            runs[name].append(out)
            beam = {c: round(out["component_s"].get(c, float("nan")), 1) for c in BEAM_COMPONENTS}
            print(f"round {r + 1} {name:9s} whole run {out['wall_s']:.1f} s; {beam}; "
                  f"{out['temp_bytes_left'] / 2**20:.0f} MiB left in its temp folder", flush=True)
    med = {name: {c: float(np.median([o["component_s"][c] for o in rs])) for c in BEAM_COMPONENTS + ("Trainer",)}
           | {"wall_s": float(np.median([o["wall_s"] for o in rs]))} for name, rs in runs.items()}
    first, second = list(variants)
    ratios = {k: med[second][k] / med[first][k] for k in med[first]}
    print("median seconds:", json.dumps(med, indent=1))
    print(f"{second} / {first}:", {k: round(v, 2) for k, v in ratios.items()})
    os.makedirs(os.path.join(HERE, "out"), exist_ok=True)
    with open(os.path.join(HERE, "out", f"tfx_beam_{args.compare}.json"), "w") as f:
        json.dump({"variants": variants, "runs": runs, "median_s": med, f"{second}_over_{first}": ratios}, f, indent=1)


if __name__ == "__main__":
    main()
