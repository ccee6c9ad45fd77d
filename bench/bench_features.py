"""Feature-job benchmark: the seed kernel's per-clip librosa loop vs the Beam job, same clips.

    .ci/inenv python bench/bench_features.py [--n 600] [--workers 2]

Builds FSDD-FAT clips with ../shared/tools/make_fat_dataset.py from ../shared/data/fsdd (real
speech, 44.1 kHz, 0.8-7 s, 1-3 digits per clip), then in one command:
  1. the seed loop (librosa.load -> trim -> pad -> melspectrogram -> power_to_db -> normalize,
     every mel kept in a list as the kernel does) on N clips, in a subprocess: clips/s, peak RSS;
  2. the Beam job (DirectRunner, --direct_num_workers=W, multi_processing) on the same N clips:
     clips/s over the whole command (start-up included) and peak RSS of its process tree;
  3. both again at 4N, for memory: the job's RSS should stay flat, the seed's grows.
Ratios are computed within this one run (the machine is noisy). Results go to stdout and
bench/out/features.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SHARED = os.path.join(os.path.dirname(REPO), "shared")

SEED_LOOP = r"""
import sys, time, csv, numpy as np
sys.path.insert(0, %(repo)r)
from tests import seed_reference as ref
from pipeline import config
import librosa
cfg = config.feature_config("seed")
rows = [r[0] for r in csv.reader(open(%(csv)r))][1:]
def read_as_melspectrogram(path):
    y, _ = librosa.load(path, sr=cfg.sample_rate)
    return ref.audio_to_melspectrogram(ref.read_audio(y, cfg), cfg)
for f in rows[:3]:
    read_as_melspectrogram(%(audio)r + "/" + f)          # warm-up: numba, caches
t0 = time.time()
X = [read_as_melspectrogram(%(audio)r + "/" + f).T for f in rows]
X = [ref.normalize(x) for x in X]
print("SECONDS", time.time() - t0, len(X))
"""


class PeakRSS:
    """Samples the summed RSS of a process and all its descendants."""

    def __init__(self, proc: subprocess.Popen):
        self.peak = 0
        self._p = psutil.Process(proc.pid)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while True:
            try:
                procs = [self._p] + self._p.children(recursive=True)
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs if p.is_running()))
            except psutil.Error:
                pass
            if not self._p.is_running() or self._p.status() == psutil.STATUS_ZOMBIE:
                return
            time.sleep(0.1)


def timed(cmd: list[str]) -> tuple[float, int, str]:
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    rss = PeakRSS(proc)
    out, _ = proc.communicate()
    seconds = time.time() - t0
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{out[-3000:]}")
    return seconds, rss.peak, out


def make_data(n: int, out: str) -> None:
    if os.path.exists(os.path.join(out, "train_curated.csv")):
        return
    subprocess.run([sys.executable, os.path.join(SHARED, "tools", "make_fat_dataset.py"), "--recordings",
                    os.path.join(SHARED, "data", "fsdd", "recordings"), "--out", out, "--train", str(n),
                    "--test", "1", "--seed", "7"], check=True)
    # the job wants sample_submission.csv for the label order; make_fat_dataset writes it


def seed_loop(data: str) -> dict:
    code = SEED_LOOP % {"repo": REPO, "csv": os.path.join(data, "train_curated.csv"),
                        "audio": os.path.join(data, "train_curated")}
    wall, rss, out = timed([sys.executable, "-c", code])
    seconds, n = [float(x) for x in out.split("SECONDS")[1].split()[:2]]
    return {"clips": int(n), "seconds": seconds, "clips_per_s": n / seconds, "peak_rss_mb": rss / 2**20}


def beam_job(data: str, out: str, workers: int, extra: list[str]) -> dict:
    cmd = [sys.executable, os.path.join(REPO, "beam_runner.py"), "--data_dir", data, "--output_dir", out,
           "--overwrite", "--eval_ratio", "0.1", f"--direct_num_workers={workers}",
           "--direct_running_mode=multi_processing", *extra]
    seconds, rss, log = timed(cmd)
    with open(os.path.join(out, "manifest.json")) as f:
        written = json.load(f)["counts"]["written"]
    return {"clips": written, "seconds": seconds, "clips_per_s": written / seconds, "peak_rss_mb": rss / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work_dir", default="/tmp/fatp-bench")
    ap.add_argument("--skip_4n", action="store_true")
    ap.add_argument("--job_args", default="", help="extra flags for the Beam job, space separated")
    args = ap.parse_args()
    if not os.path.isdir(SHARED):
        sys.exit(f"needs {SHARED} (FSDD recordings and make_fat_dataset.py)")
    extra = args.job_args.split()
    results = {"n": args.n, "workers": args.workers, "job_args": extra, "cpu_count": os.cpu_count()}
    sizes = [args.n] if args.skip_4n else [args.n, 4 * args.n]
    for n in sizes:
        data = os.path.join(args.work_dir, f"fsdd-fat-{n}")
        make_data(n, data)
        results[f"seed_{n}"] = seed_loop(data)
        results[f"job_{n}"] = beam_job(data, os.path.join(args.work_dir, f"out-{n}"), args.workers, extra)
        print(json.dumps({k: v for k, v in results.items() if k.endswith(str(n))}, indent=1), flush=True)
    n = args.n
    results["speed_ratio_job_vs_seed"] = results[f"job_{n}"]["clips_per_s"] / results[f"seed_{n}"]["clips_per_s"]
    if not args.skip_4n:
        results["job_rss_ratio_4n_vs_n"] = results[f"job_{4 * n}"]["peak_rss_mb"] / results[f"job_{n}"]["peak_rss_mb"]
        results["seed_rss_ratio_4n_vs_n"] = (results[f"seed_{4 * n}"]["peak_rss_mb"]
                                             / results[f"seed_{n}"]["peak_rss_mb"])
    os.makedirs(os.path.join(HERE, "out"), exist_ok=True)
    with open(os.path.join(HERE, "out", "features.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(json.dumps({k: v for k, v in results.items() if "ratio" in k}, indent=1))


if __name__ == "__main__":
    main()
