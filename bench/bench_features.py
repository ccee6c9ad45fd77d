"""Feature-job benchmark: the seed kernel's per-clip librosa loop vs the Beam job, same clips.

    .ci/inenv python bench/bench_features.py [--n 2000] [--sizes 2000 5000] [--rounds 1]
        [--variant NAME=FLAGS ...] [--baseline DIR] [--skip_4n]

Builds FSDD-FAT clips with ../shared/tools/make_fat_dataset.py from ../shared/data/fsdd (real
speech, 44.1 kHz, 0.8-7 s, 1-3 digits per clip), then in one command, for each size:
  1. the seed loop (librosa.load -> trim -> pad -> melspectrogram -> power_to_db -> normalize,
     every mel kept in a list as the kernel does) in a subprocess: clips/s, peak RSS;
  2. the Beam job, whole `beam_runner.py` command (start-up included), DirectRunner with
     --direct_num_workers=W --direct_running_mode=multi_processing unless a variant says otherwise,
     once per variant (--variant name="--compression none ..."; "default" = no extra flags) and, with
     --baseline DIR (another checkout, e.g. the commit before a change), that checkout's job:
     clips/s, CPU seconds of the process tree, peak RSS;
  3. with two or more sizes, each job's steady state: the clips/s between the sizes,
     (N2 - N1) / (t2 - t1), and its fixed cost, t1 - N1 / steady rate (start-up and shut-down);
  4. unless --skip_4n, the seed loop and the default job at 4N as well, for memory: the job's RSS
     should stay flat, the seed's grows.
Rounds alternate the order of the commands. Ratios are computed within this one run (the machine
is noisy). Results go to stdout and bench/out/features.json.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
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


def timed(cmd: list[str], cwd: str = REPO) -> tuple[float, int, str]:
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd)
    rss = PeakRSS(proc)
    out, _ = proc.communicate()
    seconds = time.time() - t0
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{out[-3000:]}")
    return seconds, rss.peak, out


def make_data(n: int, out: str, formats: str | None = None) -> None:
    """n FSDD-FAT training clips in `out`, built once; `formats` is make_fat_dataset's --formats
    (e.g. "1:PCM_16,2:PCM_24,1:FLOAT"; default: its own, mono 16-bit)."""
    if os.path.exists(os.path.join(out, "train_curated.csv")):
        return
    subprocess.run([sys.executable, os.path.join(SHARED, "tools", "make_fat_dataset.py"), "--recordings",
                    os.path.join(SHARED, "data", "fsdd", "recordings"), "--out", out, "--train", str(n),
                    "--test", "1", "--seed", "7", *(["--formats", formats] if formats else [])], check=True)
    # the job wants sample_submission.csv for the label order; make_fat_dataset writes it


def seed_loop(data: str) -> dict:
    code = SEED_LOOP % {"repo": REPO, "csv": os.path.join(data, "train_curated.csv"),
                        "audio": os.path.join(data, "train_curated")}
    wall, rss, out = timed([sys.executable, "-c", code])
    seconds, n = [float(x) for x in out.split("SECONDS")[1].split()[:2]]
    return {"clips": int(n), "seconds": seconds, "clips_per_s": n / seconds, "peak_rss_mb": rss / 2**20}


def beam_job(data: str, out: str, workers: int, extra: list[str], repo: str = REPO) -> dict:
    cmd = [sys.executable, os.path.join(repo, "beam_runner.py"), "--data_dir", data, "--output_dir", out,
           "--overwrite", "--eval_ratio", "0.1"]
    if not any(a.startswith(("--runner", "--direct_running_mode", "--direct_num_workers")) for a in extra):
        cmd += [f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds, rss, log = timed(cmd + list(extra), cwd=repo)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    with open(os.path.join(out, "manifest.json")) as f:
        written = json.load(f)["counts"]["written"]
    return {"clips": written, "seconds": seconds, "clips_per_s": written / seconds, "peak_rss_mb": rss / 2**20,
            "cpu_s": cpu, "cpu_ms_per_clip": 1000 * cpu / written}


def _variants(args) -> dict[str, tuple[str, list[str]]]:
    """name -> (checkout, extra job flags)."""
    out = {}
    for v in args.variant or ["default="]:
        name, _, flags = v.partition("=")
        out[name] = (REPO, flags.split())
    if args.baseline:
        out["baseline"] = (os.path.abspath(args.baseline), [])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=600, help="the size the headline ratio is taken at")
    ap.add_argument("--sizes", type=int, nargs="*", help="sizes to run (default: --n); two or more give steady states")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--work_dir", default="/tmp/fatp-bench")
    ap.add_argument("--skip_4n", action="store_true")
    ap.add_argument("--variant", action="append", help="NAME=FLAGS: a job with extra flags (repeatable)")
    ap.add_argument("--baseline", help="another checkout of the project: its job runs as variant 'baseline'")
    ap.add_argument("--job_args", default="", help="extra flags for every job, space separated")
    args = ap.parse_args()
    if not os.path.isdir(SHARED):
        sys.exit(f"needs {SHARED} (FSDD recordings and make_fat_dataset.py)")
    common = args.job_args.split()
    variants = _variants(args)
    sizes = sorted(set(args.sizes or [args.n]) | {args.n})
    results = {"n": args.n, "sizes": sizes, "workers": args.workers, "job_args": common, "cpu_count": os.cpu_count(),
               "variants": {k: {"repo": r, "flags": f} for k, (r, f) in variants.items()}, "rounds": []}
    for rnd in range(args.rounds):
        res = {}
        for n in sizes:
            data = os.path.join(args.work_dir, f"fsdd-fat-{n}")
            make_data(n, data)
            order = list(variants.items())
            if rnd % 2:
                order.reverse()
            if rnd % 2 == 0:
                res[f"seed_{n}"] = seed_loop(data)
            for name, (repo, flags) in order:
                res[f"job_{name}_{n}"] = beam_job(data, os.path.join(args.work_dir, f"out-{name}-{n}"), args.workers,
                                                  common + flags, repo)
            if rnd % 2:
                res[f"seed_{n}"] = seed_loop(data)
            for name in variants:
                res[f"ratio_{name}_{n}"] = res[f"job_{name}_{n}"]["clips_per_s"] / res[f"seed_{n}"]["clips_per_s"]
            print(json.dumps({k: v for k, v in res.items() if k.endswith(f"_{n}")}, indent=1), flush=True)
        if len(sizes) > 1:
            n1, n2 = sizes[0], sizes[-1]
            for name in list(variants) + ["seed"]:
                key = f"job_{name}" if name != "seed" else "seed"
                t1, t2 = res[f"{key}_{n1}"]["seconds"], res[f"{key}_{n2}"]["seconds"]
                rate = (n2 - n1) / (t2 - t1)
                res[f"steady_{name}"] = {"clips_per_s": rate, "fixed_s": t1 - n1 / rate}
        results["rounds"].append(res)
    if not args.skip_4n:
        n = 4 * args.n
        data = os.path.join(args.work_dir, f"fsdd-fat-{n}")
        make_data(n, data)
        name = next(iter(variants))
        big = {f"seed_{n}": seed_loop(data),
               f"job_{name}_{n}": beam_job(data, os.path.join(args.work_dir, f"out-{name}-{n}"), args.workers,
                                           common + variants[name][1], variants[name][0])}
        small = results["rounds"][0]
        results["memory"] = {
            "job_rss_ratio_4n_vs_n": big[f"job_{name}_{n}"]["peak_rss_mb"] / small[f"job_{name}_{args.n}"]["peak_rss_mb"],
            "seed_rss_ratio_4n_vs_n": big[f"seed_{n}"]["peak_rss_mb"] / small[f"seed_{args.n}"]["peak_rss_mb"],
            **big}
    os.makedirs(os.path.join(HERE, "out"), exist_ok=True)
    with open(os.path.join(HERE, "out", "features.json"), "w") as f:
        json.dump(results, f, indent=1)
    summary = {k: [round(r[k], 2) for r in results["rounds"]] for k in results["rounds"][0] if k.startswith("ratio")}
    summary.update({k: [{kk: round(vv, 1) for kk, vv in r[k].items()} for r in results["rounds"]]
                    for k in results["rounds"][0] if k.startswith("steady")})
    if "memory" in results:
        summary.update({k: round(v, 2) for k, v in results["memory"].items() if "ratio" in k})
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
