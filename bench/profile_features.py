"""Where the feature job's time goes, per clip, on one core: the profile behind bench/README.md.

    .ci/inenv python bench/profile_features.py [--clips 400] [--baseline DIR] [--rounds 2]

Three measurements, each in a fresh subprocess per source tree (this checkout, and --baseline, an
older checkout of the project, e.g. `git archive <commit> | tar -x -C DIR` plus its compiled
protos), alternating trees round by round so that the shared machine's drift hits both:

1. start-up: seconds to import TensorFlow, to trace window_keeper and the feature function;
2. ops: the traced feature function (the job's: trim off, clips already cut to the window) run
   in a TF1 session with one intra-op thread on batches of 8 FSDD-FAT clips, every op timed by
   the step stats; op times are grouped into stages (framing, FFT, power, mel product, ...);
3. stages: the job's per-clip work in a loop, one thread: read the file, decode, trim
   (window_keeper), feature function (batches of 8), serialize the tf.Example, TFRecord framing
   and CRC, and deflate with each --compression setting, with the bytes each one writes.

Needs FSDD-FAT clips: ../shared (as bench_features.py makes them). Results: stdout and
bench/out/profile.json.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SHARED = os.path.join(os.path.dirname(REPO), "shared")

# name scopes of pipeline/features/feature_fn.py -> stage, first match wins
SCOPES = [("trim", "trim"), ("fit_window", "fit window (place clips)"), ("frame_selection", "frame selection"),
          ("/frames/", "framing + Hann window"), ("/fft/", "FFT (rfft)"), ("/power/", "power (cast, square)"),
          ("/mel_bands/", "mel product (banded)"), ("scatter", "scatter frames back"), ("db/", "dB, top_db floor"),
          ("normalize", "normalize")]
LOOP_OPS = ("TensorList", "Enter", "Exit", "Merge", "Switch", "NextIteration", "LoopCond", "While")


def _stage(op_type: str, name: str) -> str:
    for scope, stage in SCOPES:
        if scope in name:
            return stage
    if op_type.startswith(LOOP_OPS) or "/while/" in name:
        return "map_fn loop bookkeeping"
    return "other"


def _clips(data: str, n: int):
    import csv

    with open(os.path.join(data, "train_curated.csv")) as f:
        rows = [r[0] for r in csv.reader(f)][1:n + 1]
    return [os.path.join(data, "train_curated", r) for r in rows]


def worker(repo: str, data: str, n_clips: int, f64: bool) -> dict:
    """Runs inside a subprocess with `repo` first on sys.path."""
    t0 = time.perf_counter()
    import numpy as np
    import tensorflow as tf
    out = {"import_tensorflow_s": time.perf_counter() - t0}
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from pipeline.features import audio
    from pipeline import config
    from pipeline.data import example_schema as examples
    from pipeline.features import feature_fn as features
    from pipeline.data import tfrecord

    cfg = config.feature_config("seed", "" if f64 else "float64_stft: false")
    t = time.perf_counter()
    keep = features.window_keeper(cfg)
    keep(np.ones(1000, np.float32))
    out["trace_window_keeper_s"] = time.perf_counter() - t
    t = time.perf_counter()
    fn = features.feature_fn(features.without_trim(cfg))
    fn(*features.pad_batch([np.ones(1000, np.float32)]))
    out["trace_feature_fn_s"] = time.perf_counter() - t

    # 3. stages
    paths = _clips(data, n_clips)
    cost = collections.Counter()
    datas, kept = [], []
    for p in paths:
        t = time.perf_counter()
        with open(p, "rb") as f:
            b = f.read()
        cost["read"] += time.perf_counter() - t
        datas.append(b)
    infos = []
    for b in datas:
        t = time.perf_counter()
        w, info = audio.decode(b, cfg.sample_rate)
        cost["decode"] += time.perf_counter() - t
        t = time.perf_counter()
        k = np.ascontiguousarray(keep(w))
        cost["trim (window_keeper)"] += time.perf_counter() - t
        kept.append(k)
        infos.append(info)
    mels = []
    for i in range(0, len(kept), 8):
        t = time.perf_counter()
        mels.extend(fn(*features.pad_batch(kept[i:i + 8])).numpy())
        cost["features"] += time.perf_counter() - t
    t = time.perf_counter()
    records = [examples.serialize(os.path.basename(p), [1], m, inf["source_seconds"])
               for p, m, inf in zip(paths, mels, infos)]
    cost["serialize"] += time.perf_counter() - t
    t = time.perf_counter()
    framed = [tfrecord.frame(r) for r in records]
    cost["tfrecord framing + crc"] += time.perf_counter() - t
    raw = sum(len(f) for f in framed)
    sizes = {}
    import zlib
    for name, deflate in getattr(tfrecord, "DEFLATE", {}).items():
        if deflate is None:
            continue
        level, strategy = deflate
        z = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS, 8, strategy)
        t = time.perf_counter()
        size = sum(len(z.compress(f)) for f in framed) + len(z.flush())
        cost[f"deflate {name}"] += time.perf_counter() - t
        sizes[name] = size / raw
    n = len(paths)
    out["stages_ms_per_clip"] = {k: v / n * 1e3 for k, v in cost.items()}
    out["deflate_size_ratio"] = sizes
    out["record_kb"] = raw / n / 1e3
    out["kept_seconds_mean"] = float(np.mean([len(k) for k in kept]) / cfg.sample_rate)

    # 2. ops of the traced function, graph mode
    batches = [features.pad_batch(kept[i:i + 8]) for i in range(0, min(len(kept), 64), 8)]
    g = tf.Graph()
    with g.as_default():
        wave = tf.compat.v1.placeholder(tf.float32, [None, None])
        length = tf.compat.v1.placeholder(tf.int32, [None])
        mel = features.compute_features(wave, length, features.without_trim(cfg))
        sess = tf.compat.v1.Session(graph=g, config=tf.compat.v1.ConfigProto(
            intra_op_parallelism_threads=1, inter_op_parallelism_threads=1))
        for w, ln in batches[:2]:
            sess.run(mel, {wave: w, length: ln})
        t = time.perf_counter()
        for w, ln in batches:
            sess.run(mel, {wave: w, length: ln})
        clips = sum(len(ln) for _, ln in batches)
        out["graph_ms_per_clip"] = (time.perf_counter() - t) / clips * 1e3
        by_stage, by_op = collections.Counter(), collections.Counter()
        run_metadata = tf.compat.v1.RunMetadata()
        for w, ln in batches:
            sess.run(mel, {wave: w, length: ln}, options=tf.compat.v1.RunOptions(trace_level=3),
                     run_metadata=run_metadata)
            for dev in run_metadata.step_stats.dev_stats:
                for ns in dev.node_stats:
                    op_type = ns.timeline_label.split(" = ")[-1].split("(")[0].strip() if " = " in ns.timeline_label \
                        else ns.node_name
                    by_stage[_stage(op_type, ns.node_name)] += ns.all_end_rel_micros
                    by_op[op_type] += ns.all_end_rel_micros
        out["traced_ops_ms_per_clip"] = {k: v / clips / 1e3 for k, v in by_stage.most_common()}
        out["top_ops_ms_per_clip"] = {k: v / clips / 1e3 for k, v in by_op.most_common(12)}
    return out


def run_worker(repo: str, data: str, n_clips: int, f64: bool) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=repo)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", repo, "--data", data, "--clips", str(n_clips)]
    if not f64:
        cmd.append("--float32")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=repo)
    if proc.returncode != 0:
        sys.exit(f"worker failed for {repo}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=400)
    ap.add_argument("--baseline", help="another checkout of the project to profile in the same run")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--data", default="/tmp/fatp-bench/fsdd-fat-2000")
    ap.add_argument("--float32", action="store_true", help="float64_stft: false")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        sys.path.insert(0, args.worker)
        print(json.dumps(worker(args.worker, args.data, args.clips, not args.float32)))
        return
    if not os.path.exists(os.path.join(args.data, "train_curated.csv")):
        sys.exit(f"no clips in {args.data}: run bench/bench_features.py --n 2000 --skip_4n first (needs {SHARED})")
    trees = {"current": REPO}
    if args.baseline:
        trees["baseline"] = os.path.abspath(args.baseline)
    results = {"clips": args.clips, "float64_stft": not args.float32, "rounds": []}
    for r in range(args.rounds):
        results["rounds"].append({name: run_worker(path, args.data, args.clips, not args.float32)
                                  for name, path in (sorted(trees.items(), reverse=bool(r % 2)))})
        print(json.dumps(results["rounds"][-1], indent=1), flush=True)
    if args.baseline:
        ratios = collections.defaultdict(list)
        for rnd in results["rounds"]:
            for k, v in rnd["current"]["stages_ms_per_clip"].items():
                base = rnd["baseline"]["stages_ms_per_clip"].get(k)
                if base:
                    ratios[k].append(v / base)
            ratios["graph feature function"].append(rnd["current"]["graph_ms_per_clip"]
                                                    / rnd["baseline"]["graph_ms_per_clip"])
        results["current_over_baseline"] = {k: [round(x, 2) for x in v] for k, v in ratios.items()}
        print(json.dumps(results["current_over_baseline"], indent=1))
    os.makedirs(os.path.join(HERE, "out"), exist_ok=True)
    name = "profile.json" if not args.float32 else "profile-float32.json"
    with open(os.path.join(HERE, "out", name), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
