"""The shards' compression over the whole path: the job that writes them, the disk, the training
input that reads them every epoch.

    .ci/inenv python bench/bench_compression.py [--n 2000] [--rounds 2]

For each `--compression` (none, fast, best), on the same N FSDD-FAT clips (as bench_features.py
makes them; needs ../shared):
  1. the Beam job, whole command (DirectRunner, one process: --direct_running_mode=in_memory, so
     the CPU seconds are the job's own work, not worker start-up): wall seconds, CPU ms per clip;
  2. the bytes on disk;
  3. one epoch of the training input (pipeline.training.dataset.make_dataset, training=True, batch 32) over
     the shards, files in the page cache: clips/s and CPU ms per clip with 1 and 2 tf.data threads.
Rounds alternate the order. Results: stdout and bench/out/compression.json.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, REPO)

from bench_features import SHARED, make_data  # noqa: E402

COMPRESSIONS = ["none", "fast", "best"]

READ = r"""
import json, os, resource, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import tensorflow as tf
from pipeline.training import dataset
out, threads = sys.argv[1], int(sys.argv[2])
m = json.load(open(os.path.join(out, "manifest.json")))
files = [os.path.join(out, f["path"]) for s in m["splits"].values() for f in s["files"]]
opts = tf.data.Options()
opts.threading.private_threadpool_size = threads
ds = dataset.make_dataset(files, tuple(m["example"]["mel_shape"]), len(open(os.path.join(out, "labels.txt")).read().split()),
                          32, training=True).with_options(opts)
for b in ds.take(2):
    pass
r0, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
n = sum(int(b[0].shape[0]) for b in ds)
dt, r1 = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"clips": n, "clips_per_s": n / dt, "cpu_ms_per_clip": 1e3 * ((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)) / n}))
"""


def job(data: str, out: str, compression: str) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.time()
    subprocess.run([sys.executable, os.path.join(REPO, "beam_runner.py"), "--data_dir", data, "--output_dir", out,
                    "--overwrite", "--compression", compression, "--direct_num_workers=1",
                    "--direct_running_mode=in_memory", "--log_level", "WARNING"], check=True, cwd=REPO,
                   capture_output=True)
    seconds = time.time() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(os.path.join(out, "manifest.json")) as f:
        manifest = json.load(f)
    n = manifest["counts"]["written"]
    size = sum(os.path.getsize(os.path.join(out, f["path"])) for s in manifest["splits"].values() for f in s["files"])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"clips": n, "seconds": seconds, "cpu_ms_per_clip": 1e3 * cpu / n, "mb": size / 1e6,
            "kb_per_clip": size / n / 1e3}


def read(out: str, threads: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", READ, out, str(threads)], check=True, cwd=REPO, capture_output=True,
                          text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--work_dir", default="/tmp/fatp-bench")
    args = ap.parse_args()
    if not os.path.isdir(SHARED):
        sys.exit(f"needs {SHARED} (FSDD recordings and make_fat_dataset.py)")
    data = os.path.join(args.work_dir, f"fsdd-fat-{args.n}")
    make_data(args.n, data)
    results = {"n": args.n, "rounds": []}
    for r in range(args.rounds):
        order = COMPRESSIONS if r % 2 == 0 else COMPRESSIONS[::-1]
        res = {}
        for c in order:
            out = os.path.join(args.work_dir, f"compression-{c}-{args.n}")
            res[c] = {"job": job(data, out, c), "read_1_thread": read(out, 1), "read_2_threads": read(out, 2)}
            print(c, json.dumps(res[c]), flush=True)
        results["rounds"].append(res)
    os.makedirs(os.path.join(HERE, "out"), exist_ok=True)
    with open(os.path.join(HERE, "out", "compression.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
