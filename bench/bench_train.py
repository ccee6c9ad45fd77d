"""Training benchmarks on this CPU, in one process:

    .ci/inenv python bench/bench_train.py [--examples DIR] [--steps 30] [--preset default --batch_size 16]

1. Step time of the preset's model (seed by default) fed by the tf.data input pipeline from the Beam job's
   TFRecords vs fed from the same batches held in memory (target: ratio <= 1.05, i.e. the input
   pipeline is never the bottleneck), and fed by the pipeline in its fixed-order mode
   (`deterministic_input`). Runs alternate A/B/C/A/B/C so drift hits all three.
2. The preset's training and prediction throughput (clips/s).

--examples is a Beam job output with the seed feature preset; without it the script builds one
from FSDD-FAT clips (../shared). Results: stdout and bench/out/train.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)


class StepTimer:
    def __init__(self):
        import keras

        class _CB(keras.callbacks.Callback):
            def on_train_batch_end(cb, batch, logs=None):
                self.times.append(time.perf_counter())
        self.callback = _CB()
        self.times: list[float] = []

    def step_seconds(self, skip: int) -> float:
        t = np.diff(self.times[skip:])
        return float(np.median(t))


def build_examples(work: str, n: int) -> str:
    data, out = os.path.join(work, f"fsdd-fat-{n}"), os.path.join(work, f"examples-{n}")
    shared = os.path.join(os.path.dirname(REPO), "shared")
    if not os.path.exists(os.path.join(data, "train_curated.csv")):
        subprocess.run([sys.executable, os.path.join(shared, "tools", "make_fat_dataset.py"), "--recordings",
                        os.path.join(shared, "data", "fsdd", "recordings"), "--out", data, "--train", str(n),
                        "--test", "1", "--seed", "7"], check=True)
    if not os.path.exists(os.path.join(out, "manifest.json")):
        subprocess.run([sys.executable, os.path.join(REPO, "beam_runner.py"), "--data_dir", data, "--output_dir", out,
                        "--overwrite", "--direct_num_workers=2", "--direct_running_mode=multi_processing"],
                       check=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples")
    ap.add_argument("--work_dir", default="/tmp/fatp-bench")
    ap.add_argument("--n", type=int, default=320)
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--preset", default="seed", help="trainer preset of the timed model")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from pipeline import config as config_lib
    from pipeline.training import dataset
    from pipeline.training import model as model_lib
    from pipeline.training import train

    examples = args.examples or build_examples(args.work_dir, args.n)
    cfg = config_lib.trainer_config(args.preset, f"batch_size: {args.batch_size}")
    job = train.job_from_examples(examples, cfg, os.path.join(args.work_dir, "train-bench"), None)
    num_classes = len(job.labels)
    files = job.train_files + job.eval_files  # all clips: more batches to time
    make = lambda deterministic: dataset.make_dataset(  # noqa: E731
        files, job.mel_shape, num_classes, args.batch_size, training=True, shuffle_buffer=256,
        deterministic=deterministic).repeat()
    ds = make(False)
    feeds = {"tfrecord": ds, "tfrecord_deterministic": make(True)}
    batches = [b for b in ds.take(args.steps)]
    mem_x = np.concatenate([b[0].numpy() for b in batches])
    mem_y = np.concatenate([b[1].numpy() for b in batches])
    model = model_lib.build_model(job.mel_shape, num_classes, cfg)
    model.compile(optimizer=model_lib.optimizer(cfg), loss=model_lib.loss_fn(cfg))
    model.fit(mem_x[: args.batch_size * 2], mem_y[: args.batch_size * 2], batch_size=args.batch_size, verbose=0)

    results = {"preset": args.preset, "batch_size": args.batch_size, "steps": args.steps, "mel_shape": list(job.mel_shape),
               "tfrecord_step_s": [], "memory_step_s": [], "tfrecord_deterministic_step_s": []}
    for _ in range(args.rounds):
        for kind in ("tfrecord", "memory", "tfrecord_deterministic"):
            timer = StepTimer()
            if kind in feeds:
                model.fit(feeds[kind], steps_per_epoch=args.steps, epochs=1, verbose=0, callbacks=[timer.callback])
            else:
                mem = tf.data.Dataset.from_tensor_slices((mem_x, mem_y)).batch(args.batch_size).prefetch(2)
                model.fit(mem, epochs=1, verbose=0, callbacks=[timer.callback])
            results[f"{kind}_step_s"].append(timer.step_seconds(skip=3))
            print(kind, results[f"{kind}_step_s"][-1], flush=True)
    tr, mem = np.median(results["tfrecord_step_s"]), np.median(results["memory_step_s"])
    results["step_ratio_tfrecord_vs_memory"] = float(tr / mem)
    results["step_ratio_deterministic_vs_tfrecord"] = float(np.median(results["tfrecord_deterministic_step_s"]) / tr)
    results["train_clips_per_s"] = float(args.batch_size / tr)
    t0 = time.perf_counter()
    model.predict(mem_x, batch_size=64, verbose=0)
    results["predict_clips_per_s"] = float(len(mem_x) / (time.perf_counter() - t0))
    os.makedirs(os.path.join(HERE, "out"), exist_ok=True)
    with open(os.path.join(HERE, "out", "train.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
