"""The whole pipeline at FAT2019's size (issue 29): per component wall time, CPU time, peak RSS and
bytes written, at a fraction of FAT2019's clip counts or at its full size.

    .ci/inenv python bench/bench_fat_scale.py --scale 0.25 --data /work/fat/quarter --epochs 2
    .ci/inenv python bench/bench_fat_scale.py --scale 1 --data /work/fat/full --epochs 2
    .ci/inenv python bench/bench_fat_scale.py --compare bench/out/fat_scale_0.25.json bench/out/fat_scale_1.json

--data is built with ../shared/tools/make_fat_dataset.py when it holds no train_curated.csv
(FAT2019's clip counts times --scale, its clip lengths: curated and test 0.3-30 s, noisy 1-16 s).
`fatp-pipeline` then runs on it as a user runs it (default feature and trainer presets, the noisy
source read, --epochs as given), in a child process. The process tree's resident memory and CPU
time are sampled every 0.5 s; the pipeline's own progress lines ("[5/11] Trainer: running",
"... executed in 42 s") cut the samples into components. One process runs every component
(LocalDagRunner, Beam's local runner on threads), so a component's peak is the whole process's
while it ran: memory an earlier component left allocated counts in a later one's peak too.

Writes bench/out/fat_scale_<scale>.json and prints a table; --compare prints full / fraction
ratios of two such files against issue 29's targets (RSS <= 1.2x, time <= 4.4x for 4x the clips).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MAKE_FAT = os.path.join(REPO, "..", "shared", "tools", "make_fat_dataset.py")
FSDD = os.path.join(REPO, "..", "shared", "data", "fsdd", "recordings")
FAT2019 = {"train": 4970, "test": 3361, "noisy": 19815}
# bytes per second of 16-bit mono 44.1 kHz audio; mean clip lengths of the uniform ranges below
AUDIO_BYTES_S = 2 * 44100
MEAN_S = {"train": 15.15, "test": 15.15, "noisy": 8.5}
EXAMPLE_BYTES = 636 * 128 * 4 + 1024      # one seed-preset Example, uncompressed
PROGRESS = re.compile(r"\[(\d+)/(\d+)\] (\S+): (running|executed in|cached|done in|FAILED)")
EPOCH = re.compile(r"epoch (\d+)/(\d+) \((\d+) steps\).*?; ([0-9.]+) s/epoch")
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def counts(scale: float) -> dict:
    return {k: max(1, round(v * scale)) for k, v in FAT2019.items()}


def disk_needed(n: dict) -> dict:
    audio = sum(n[k] * MEAN_S[k] * AUDIO_BYTES_S for k in n)
    examples = (n["train"] + n["noisy"] + n["test"]) * EXAMPLE_BYTES
    return {"audio_gb": audio / 1e9, "examples_gb": examples / 1e9}


def build_data(data: str, scale: float) -> None:
    if os.path.exists(os.path.join(data, "train_curated.csv")):
        return
    n = counts(scale)
    cmd = [sys.executable, MAKE_FAT, "--recordings", FSDD, "--out", data, "--train", str(n["train"]),
           "--test", str(n["test"]), "--noisy", str(n["noisy"]), "--seconds", "0.3,30", "--noisy_seconds", "1,16"]
    print("building", data, ":", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def tree_sample(root: int) -> tuple[int, float]:
    """(resident bytes, CPU seconds) of a process and its live descendants, plus the CPU of the
    children it has already reaped."""
    rss, cpu, todo, first = 0, 0.0, [root], True
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/statm") as f:
                rss += int(f.read().split()[1]) * PAGE
        except OSError:
            continue
        # fields after the name: state is [0], utime [11], stime [12], cutime [13], cstime [14]
        cpu += (int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if first else 0)) / TICK
        first = False
        todo += _children(pid)
    return rss, cpu


class Sampler(threading.Thread):
    def __init__(self, pid: int, every: float = 0.5):
        super().__init__(daemon=True)
        self.pid, self.every, self.samples, self.done = pid, every, [], False

    def run(self):
        while not self.done:
            rss, cpu = tree_sample(self.pid)
            self.samples.append((time.time(), rss, cpu))
            time.sleep(self.every)


def du(path: str) -> int:
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(d, f)).st_size
            except OSError:
                pass
    return total


def run_pipeline(data: str, work: str, epochs: int, extra: list[str]) -> dict:
    root, serving = os.path.join(work, "pipeline"), os.path.join(work, "serving")
    cmd = [shutil.which("fatp-pipeline") or "fatp-pipeline", "--data_dir", data, "--pipeline_root", root,
           "--serving_root", serving, "--epochs", str(epochs), *extra]
    print("running:", " ".join(cmd), flush=True)
    sizes_before = {name: du(os.path.join(root, name)) for name in (os.listdir(root) if os.path.isdir(root) else [])}
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    sampler = Sampler(proc.pid)
    sampler.start()
    lines = []
    for line in proc.stdout:
        lines.append((time.time(), line.rstrip("\n")))
        print(f"{time.time() - t0:8.1f} {line}", end="", flush=True)
    rc = proc.wait()
    sampler.done = True
    sampler.join()
    wall = time.time() - t0
    components, open_ = [], {}
    for t, line in lines:
        m = PROGRESS.search(line)
        if not m:
            continue
        name, what = m.group(3), m.group(4)
        if what == "running":
            open_[name] = t
        elif name in open_:
            components.append({"component": name, "start": open_.pop(name), "end": t, "how": what.split()[0]})
    for c in components:
        inside = [s for s in sampler.samples if c["start"] <= s[0] <= c["end"]]
        before = [s for s in sampler.samples if s[0] <= c["start"]]
        after = [s for s in sampler.samples if s[0] >= c["end"]]
        c["wall_s"] = round(c["end"] - c["start"], 1)
        c["peak_rss_gb"] = round(max((s[1] for s in inside), default=0) / 2**30, 2)
        cpu0 = before[-1][2] if before else 0.0
        cpu1 = after[0][2] if after else (inside[-1][2] if inside else cpu0)
        c["cpu_s"] = round(cpu1 - cpu0, 1)
        c["bytes_written_mb"] = round((du(os.path.join(root, c["component"]))
                                       - sizes_before.get(c["component"], 0)) / 1e6, 1)   # by this run
        c["start"] = round(c["start"] - t0, 1)
        del c["end"]
    epochs_seen = [{"epoch": int(m.group(1)), "steps": int(m.group(3)), "s_per_epoch": float(m.group(4))}
                   for _, line in lines for m in [EPOCH.search(line)] if m]
    return {"rc": rc, "wall_s": round(wall, 1), "peak_rss_gb": round(max(s[1] for s in sampler.samples) / 2**30, 2),
            "cpu_s": round(sampler.samples[-1][2], 1), "components": components, "epochs": epochs_seen,
            "tail": [line for _, line in lines[-40:]], "pipeline_root": root}


def rows_in(path: str) -> int:
    with open(path) as f:
        return max(0, sum(1 for _ in f) - 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=0.25, help="share of FAT2019's clip counts (1 = its full size)")
    ap.add_argument("--data", help="the Kaggle layout to run on (built there when missing)")
    ap.add_argument("--work", help="pipeline root and serving root go here (default: beside --data)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--compare", nargs=2, metavar=("FRACTION_JSON", "FULL_JSON"))
    args, extra = ap.parse_known_args(argv)
    if args.compare:
        return compare(*args.compare)
    data = args.data or f"/tmp/fat-scale-{args.scale:g}"
    work = args.work or data.rstrip("/") + "-run"
    n = counts(args.scale)
    need = disk_needed(n)
    free = shutil.disk_usage(os.path.dirname(os.path.abspath(data)) or ".").free / 1e9
    print(f"scale {args.scale:g}: {n}; needs ~{need['audio_gb']:.1f} GB of audio and ~{need['examples_gb']:.1f} GB "
          f"of Examples; {free:.0f} GB free", flush=True)
    build_data(data, args.scale)
    result = run_pipeline(data, work, args.epochs, extra)
    result.update(scale=args.scale, data=data, epochs_asked=args.epochs, audio_gb=round(du(data) / 1e9, 2),
                  clips={"train": rows_in(os.path.join(data, "train_curated.csv")),
                         "noisy": rows_in(os.path.join(data, "train_noisy.csv"))
                         if os.path.exists(os.path.join(data, "train_noisy.csv")) else 0,
                         "test": rows_in(os.path.join(data, "sample_submission.csv"))})
    by = {c["component"]: c for c in result["components"]}
    if "AudioExampleGen" in by and by["AudioExampleGen"]["how"] == "executed":
        result["feature_job_clips_s"] = round((result["clips"]["train"] + result["clips"]["noisy"])
                                              / by["AudioExampleGen"]["wall_s"], 1)
    if "BulkInferrer" in by and by["BulkInferrer"]["how"] == "executed":
        result["bulk_inferrer_clips_s"] = round(result["clips"]["test"] / by["BulkInferrer"]["wall_s"], 1)
    os.makedirs(os.path.join(HERE, "out"), exist_ok=True)
    out = os.path.join(HERE, "out", f"fat_scale_{args.scale:g}.json")
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(table(result))
    print("wrote", out)
    return result["rc"]


def table(r: dict) -> str:
    lines = [f"scale {r['scale']:g} ({r['clips']}): exit {r['rc']}, {r['wall_s'] / 60:.1f} min, "
             f"peak {r['peak_rss_gb']} GB, {r['cpu_s'] / 60:.1f} CPU min",
             "| component | how | wall s | CPU s | peak RSS GB | MB written |", "|---|---|---|---|---|---|"]
    lines += [f"| {c['component']} | {c['how']} | {c['wall_s']} | {c['cpu_s']} | {c['peak_rss_gb']} | "
              f"{c['bytes_written_mb']} |" for c in r["components"]]
    for k in ("feature_job_clips_s", "bulk_inferrer_clips_s"):
        if k in r:
            lines.append(f"{k}: {r[k]}")
    if r["epochs"]:
        lines.append("epochs: " + ", ".join(f"{e['epoch']}: {e['steps']} steps {e['s_per_epoch']} s"
                                            for e in r["epochs"]))
    return "\n".join(lines)


def compare(small_path: str, full_path: str) -> int:
    small, full = (json.load(open(p)) for p in (small_path, full_path))
    clips = lambda r: sum(r["clips"].values())  # noqa: E731
    k = clips(full) / clips(small)
    print(f"clips {clips(small)} -> {clips(full)} ({k:.2f}x); time target <= {k * 1.1:.2f}x, RSS <= 1.2x and <= 8 GB")
    print("| component | wall small / full s | ratio | peak RSS small / full GB | ratio |")
    print("|---|---|---|---|---|")
    s_by = {c["component"]: c for c in small["components"]}
    for c in full["components"]:
        s = s_by.get(c["component"])
        if not s:
            continue
        rt = c["wall_s"] / max(s["wall_s"], 1e-9)
        rr = c["peak_rss_gb"] / max(s["peak_rss_gb"], 1e-9)
        print(f"| {c['component']} | {s['wall_s']} / {c['wall_s']} | {rt:.2f} | {s['peak_rss_gb']} / "
              f"{c['peak_rss_gb']} | {rr:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
