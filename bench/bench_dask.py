"""Feature-job benchmark across runners: DirectRunner vs DaskRunner with 1 and 2 workers, same clips.

    .ci/inenv python bench/bench_dask.py [--n 2000] [--rounds 1] [--preset seed] [--data KAGGLE_LAYOUT]

Builds N FSDD-FAT clips as bench_features.py does (needs ../shared), then runs the whole
`beam_runner.py` command (start-up included) on each runner, in turn, `--rounds` times:
  direct_1   DirectRunner, --direct_num_workers=1
  direct_2   DirectRunner, --direct_num_workers=2 --direct_running_mode=multi_processing (the baseline)
  dask_1     --runner=DaskRunner --dask_local_workers=1 (the job starts a LocalCluster of 1 process)
  dask_2     --runner=DaskRunner --dask_local_workers=2
Reports clips/s, peak RSS of the process tree and the ratio of each to direct_2 in the same round
(the machine is noisy; only ratios within one run are compared), and the CPU seconds of the whole
process tree per clip (user + sys of every reaped descendant: less sensitive to other load than
wall time, it counts start-up and the runner's own work too). Every run's outputs are checked
against direct_2's: same examples per fname, same manifest counts. Results: stdout and
bench/out/dask.json.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from bench_features import REPO, SHARED, make_data, timed  # noqa: E402

RUNNERS = {
    "direct_1": ["--runner=DirectRunner", "--direct_num_workers=1"],
    "direct_2": ["--runner=DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing"],
    "dask_1": ["--runner=DaskRunner", "--dask_local_workers=1"],
    "dask_2": ["--runner=DaskRunner", "--dask_local_workers=2"],
}
BASELINE = "direct_2"


def run_job(data: str, out: str, runner_flags: list[str], extra: list[str]) -> dict:
    cmd = [sys.executable, os.path.join(REPO, "beam_runner.py"), "--data_dir", data, "--output_dir", out,
           "--overwrite", "--eval_ratio", "0.1", *runner_flags, *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds, rss, _ = timed(cmd)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    with open(os.path.join(out, "manifest.json")) as f:
        manifest = json.load(f)
    written = manifest["counts"]["written"]
    return {"clips": written, "seconds": seconds, "clips_per_s": written / seconds, "peak_rss_mb": rss / 2**20,
            "cpu_s": cpu, "cpu_ms_per_clip": 1000 * cpu / written, "counts": manifest["counts"]}


def examples_by_fname(out: str) -> dict:
    import tensorflow as tf

    from pipeline.data import tfrecord

    with open(os.path.join(out, "manifest.json")) as f:
        manifest = json.load(f)
    got = {}
    for split, info in manifest["splits"].items():
        for shard in info["files"]:
            for rec in tf.data.TFRecordDataset(os.path.join(out, shard["path"]),
                                              compression_type=tfrecord.compression_type(shard["path"])):
                raw = rec.numpy()
                fname = tf.train.Example.FromString(raw).features.feature["fname"].bytes_list.value[0]
                got[fname.decode()] = (split, raw)
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--preset", default="seed")
    ap.add_argument("--runners", default=",".join(RUNNERS), help="comma-separated subset of " + ",".join(RUNNERS))
    ap.add_argument("--work_dir", default="/tmp/fatp-bench-dask")
    ap.add_argument("--job_args", default="", help="extra flags for every job, space separated")
    ap.add_argument("--data", help="an existing Kaggle layout to run on instead of N new FSDD-FAT clips "
                                   "(e.g. bench_fat_scale.py's FAT2019-shaped data; its noisy source included)")
    args = ap.parse_args()
    if not args.data and not os.path.isdir(SHARED):
        sys.exit(f"needs {SHARED} (FSDD recordings and make_fat_dataset.py)")
    names = args.runners.split(",")
    if BASELINE not in names:
        names.insert(0, BASELINE)
    extra = ["--preset", args.preset, *args.job_args.split()]
    data = args.data or os.path.join(args.work_dir, f"fsdd-fat-{args.n}")
    if args.data:
        args.n = sum(max(0, sum(1 for _ in open(os.path.join(data, c))) - 1)
                     for c in ("train_curated.csv", "train_noisy.csv") if os.path.exists(os.path.join(data, c)))
    else:
        make_data(args.n, data)
    results = {"n": args.n, "preset": args.preset, "job_args": extra, "cpu_count": os.cpu_count(), "rounds": []}
    for r in range(args.rounds):
        row = {}
        for name in names:
            out = os.path.join(args.work_dir, f"out-{name}")
            row[name] = run_job(data, out, RUNNERS[name], extra)
            print(json.dumps({f"round {r} {name}": {k: v for k, v in row[name].items() if k != "counts"}}), flush=True)
        base = row[BASELINE]
        for name in names:
            row[name]["ratio_to_" + BASELINE] = row[name]["clips_per_s"] / base["clips_per_s"]
        results["rounds"].append(row)
    want = examples_by_fname(os.path.join(args.work_dir, f"out-{BASELINE}"))
    results["outputs_equal_to_" + BASELINE] = {
        name: (examples_by_fname(os.path.join(args.work_dir, f"out-{name}")) == want
               and results["rounds"][-1][name]["counts"] == results["rounds"][-1][BASELINE]["counts"])
        for name in names}
    os.makedirs(os.path.join(HERE, "out"), exist_ok=True)
    with open(os.path.join(HERE, "out", "dask.json"), "w") as f:
        json.dump(results, f, indent=1)
    for r, row in enumerate(results["rounds"]):
        for name in names:
            x = row[name]
            print(f"round {r} {name:9s} {x['clips_per_s']:7.1f} clips/s  {x['seconds']:6.1f} s  "
                  f"{x['cpu_ms_per_clip']:5.1f} CPU ms/clip  {x['peak_rss_mb']:6.0f} MB  "
                  f"ratio to {BASELINE} {x['ratio_to_' + BASELINE]:.2f}")
    print(json.dumps({"outputs_equal_to_" + BASELINE: results["outputs_equal_to_" + BASELINE]}))


if __name__ == "__main__":
    main()
