"""Quality on real audio: FSDD-FAT (spoken digits mixed into the FAT2019 layout), test-split lwlrap.

    .ci/inenv python bench/quality.py [--epochs 30] [--recipes default,seed,mlp]

1. `make_fat_dataset.py --train 800 --test 200 --seed 7` on ../shared/data/fsdd/recordings.
2. The Beam job (seed feature preset, 636 x 128) on the train clips (90/10 train/eval split) and,
   separately, on the test clips with their true labels (test_labels.csv).
3. Each recipe trains on the same examples for at most the same number of epochs, with its own
   early stopping on eval lwlrap: "default" (this project's TrainerConfig defaults), "seed" (the
   Kaggle kernel's recipe) and "mlp" (a reference without time modelling: mean, max and std of
   each mel band into a 2-layer MLP).
4. Test-split lwlrap is computed from the exported SavedModel's serving_default signature on the
   test examples (so the export is what is measured), with the training time of each recipe.

Writes bench/out/quality.json and prints a table.
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
SHARED = os.path.join(os.path.dirname(REPO), "shared")
sys.path.insert(0, REPO)


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


def prepare(work: str) -> tuple[str, str]:
    data, examples, test_examples = (os.path.join(work, d) for d in ("data", "examples", "test_examples"))
    if not os.path.exists(os.path.join(data, "train_curated.csv")):
        run([sys.executable, os.path.join(SHARED, "tools", "make_fat_dataset.py"), "--recordings",
             os.path.join(SHARED, "data", "fsdd", "recordings"), "--out", data, "--train", "800", "--test", "200",
             "--seed", "7"])
    beam = [sys.executable, "beam_runner.py", "--direct_num_workers=2", "--direct_running_mode=multi_processing",
            "--overwrite", "--labels", os.path.join(data, "sample_submission.csv")]
    if not os.path.exists(os.path.join(examples, "manifest.json")):
        run(beam + ["--data_dir", data, "--output_dir", examples])
    if not os.path.exists(os.path.join(test_examples, "manifest.json")):
        # the test clips with their (normally secret) labels; eval_ratio 0 puts them all in "train"
        run(beam + ["--csv", os.path.join(data, "test_labels.csv"), "--audio_dir", os.path.join(data, "test"),
                    "--output_dir", test_examples, "--eval_ratio", "0"])
    return examples, test_examples


def test_set(test_examples: str):
    """Serialized test examples, their multi-hot truth and mels, all in the same order."""
    import tensorflow as tf

    from pipeline import dataset, examples, output

    files, _ = dataset.split_files(test_examples, "train")
    manifest = output.require_complete(test_examples)
    with open(os.path.join(test_examples, "labels.txt")) as f:
        num_classes = sum(1 for line in f if line.strip())
    raw = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]
    parsed = tf.io.parse_example(tf.constant(raw), examples.parse_spec(tuple(manifest["example"]["mel_shape"])))
    truth = tf.sparse.to_indicator(parsed[examples.LABELS], num_classes).numpy().astype(np.float32)
    return raw, truth, parsed[examples.MEL].numpy()


def score_saved_model(path: str, raw: list[bytes]) -> np.ndarray:
    import tensorflow as tf

    fn = tf.saved_model.load(path).signatures["serving_default"]
    return np.concatenate([fn(examples=tf.constant(raw[i:i + 64]))["scores"].numpy() for i in range(0, len(raw), 64)])


def train_recipe(name: str, examples: str, work: str, epochs: int, overrides: str, reuse: bool, tag: str) -> dict:
    out = os.path.join(work, f"run-{name}{tag}")
    if reuse and os.path.exists(os.path.join(out, "results.json")):
        with open(os.path.join(out, "results.json")) as f:
            return json.load(f)
    run(["rm", "-rf", out])
    preset = "seed" if name == "seed" else "default"
    run([sys.executable, "-m", "pipeline.train", "--examples", examples, "--work_dir", out, "--export_dir",
         os.path.join(out, "export"), "--preset", preset, "--set", f"epochs: {epochs} {overrides}"])
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)


def mlp_baseline(examples: str, test_mels: np.ndarray, truth: np.ndarray, epochs: int) -> dict:
    """Mean, max and std of each band -> Dense 256 -> Dense 80 (sigmoid), Adam 1e-3."""
    import keras
    import tensorflow as tf

    from pipeline import config, dataset, lwlrap, train

    job = train.job_from_examples(examples, config.trainer_config(), "/tmp", None)
    pool = lambda x: tf.concat([tf.reduce_mean(x, 1), tf.reduce_max(x, 1), tf.math.reduce_std(x, 1)], -1)  # noqa
    n = len(job.labels)
    mk = lambda files, training: dataset.make_dataset(files, job.mel_shape, n, 32, training=training).map(  # noqa
        lambda x, y: (pool(x), y))
    keras.utils.set_random_seed(1234)
    model = keras.Sequential([keras.Input((3 * job.mel_shape[1],)), keras.layers.Dense(256, activation="relu"),
                              keras.layers.Dropout(0.2), keras.layers.Dense(n)])
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.BinaryCrossentropy(from_logits=True),
                  metrics=[lwlrap.LwlrapMetric(n)])
    t0 = time.time()
    model.fit(mk(job.train_files, True), validation_data=mk(job.eval_files, False), epochs=epochs, verbose=0,
              callbacks=[keras.callbacks.EarlyStopping("val_lwlrap", mode="max", patience=10,
                                                       restore_best_weights=True)])
    seconds = time.time() - t0
    scores = model.predict(pool(tf.constant(test_mels)), verbose=0)
    return {"test_lwlrap": lwlrap.lwlrap(truth, scores), "train_seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work_dir", default="/tmp/fatp-quality")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--recipes", default="default,seed,mlp")
    ap.add_argument("--set", default="", help="TrainerConfig overrides for the 'default' recipe (experiments)")
    ap.add_argument("--reuse", action="store_true", help="score existing runs instead of training again")
    ap.add_argument("--tag", default="", help="suffix of the run directories (experiments side by side)")
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    examples, test_examples = prepare(args.work_dir)
    from pipeline import lwlrap

    raw, truth, test_mels = test_set(test_examples)
    results = {"epochs": args.epochs, "test_clips": len(raw), "default_overrides": args.set}
    for name in args.recipes.split(","):
        if name == "mlp":
            results[name] = mlp_baseline(examples, test_mels, truth, args.epochs)
        else:
            r = train_recipe(name, examples, args.work_dir, args.epochs, args.set if name == "default" else "",
                             args.reuse, args.tag)
            scores = score_saved_model(r["export_path"], raw)
            results[name] = {"test_lwlrap": lwlrap.lwlrap(truth, scores), "eval_lwlrap": r["eval_lwlrap"],
                             "train_seconds": r["train_seconds"], "epochs_run": r["epochs_run"],
                             "final_train_loss": r["history"]["loss"][-1]}
        print(name, json.dumps(results[name]), flush=True)
    os.makedirs(os.path.join(HERE, "out"), exist_ok=True)
    with open(os.path.join(HERE, "out", f"quality{args.tag}.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(f"{'recipe':10s} {'test lwlrap':>12s} {'train s':>9s} {'epochs':>7s}")
    for name in args.recipes.split(","):
        r = results[name]
        print(f"{name:10s} {r['test_lwlrap']:12.4f} {r['train_seconds']:9.0f} {r.get('epochs_run', '-')!s:>7s}")


if __name__ == "__main__":
    main()
