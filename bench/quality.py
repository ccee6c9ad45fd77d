"""Quality on real audio: FSDD-FAT (spoken digits mixed into the FAT2019 layout), lwlrap of recipes
on speakers the model never heard (speaker-held-out folds) and on a test split that shares them.

    .ci/inenv python bench/quality.py [--recipes default,seed,mlp] [--seeds 1234,7] [--epochs 30]
        [--folds george,jackson,nicolas,theo,shared] [--train_clips 800] [--test_clips 200]
        [--candidate NAME=PRESET:OVERRIDES ...] [--features FIELDS --work_dir DIR]
        [--noisy 2000 [--noisy_label_error 0.3]]
    .ci/inenv python bench/quality.py --folds kitchen0,kitchen1,kitchen2,kitchen3 --recipes default,mlp \
        --seeds 1234,7,42 --work_dir /tmp/fatp-quality-kitchen10

Folds (FSDD has four speakers; kitchen10 holds real sound events):
- `<speaker>` (speaker-held-out): `make_fat_dataset.py --speakers` the other three for training
  (TRAIN_CLIPS clips, --test 0) and the held-out speaker alone for test (--train 0, TEST_CLIPS
  clips); both with mixed formats (mono 16-bit, stereo 24-bit, mono float), as users' files come.
- `shared`: the earlier figure, `--train TRAIN_CLIPS --test TEST_CLIPS --seed 7` over all four
  speakers (mono 16-bit; 800/200 is the earlier table's data), whose test clips share their
  speakers with training.
- `kitchen0` .. `kitchen3` (issue 30): ../shared/data/kitchen10 (440 real 5 s clips, 10 classes,
  179 source recordings) in four folds by recording: the recordings are dealt to folds in a fixed
  shuffled order, and each fold's clips are its test clips, the other folds' its training clips
  (split into train/eval by the same group key, `--group_regex RECORDING_REGEX`, so no
  recording is on both sides of either split). The test set adds two-label mixes: half as many as
  the single clips, each the sum of two held-out clips of different classes (peak-normalised when
  the sum clips), as FAT2019's multi-label clips. Each run also reports lwlrap on the single clips
  and on the mixes. --train_clips/--test_clips do not apply.
For each fold the Beam job (seed feature preset, 636 x 128) writes the train clips (90/10
train/eval split by file name; early stopping sees only the training speakers) and, separately,
the test clips with their true labels. `--features` (FeatureConfig fields over the seed preset,
e.g. "float64_stft: false") builds the folds with other features; each feature config needs its
own --work_dir, and examples built with other features are refused.

Noisy source (issue 22): `--noisy N` also builds each fold's training data with N noisy clips
(`make_fat_dataset.py --noisy N`: louder background noise, a --noisy_label_error share of them with
a wrong, missing or extra label; from the fold's training speakers only) into FOLD-.../noisyN/, and
its examples with both sources. The recipes in NOISY_RECIPES (and `--candidate NAME=...` whose name
ends in "+noisy") train on those; every other recipe on the curated examples, which the flag does
not change (make_fat_dataset.py draws the noisy clips after the others; checked). Eval and test
clips are curated.

Recipes: "default" (TrainerConfig defaults as they are now), "seed" (`--preset seed`, the Kaggle kernel's recipe),
"mlp" (mean, max and std of each mel band into a 2-layer MLP: no time modelling), the candidates
in CANDIDATES below, and any `--candidate NAME=PRESET:OVERRIDES` (text-proto TrainerConfig fields
merged over the preset). Every recipe trains on the same examples for at most EPOCHS epochs, with
its own early stopping on eval lwlrap, once per trainer seed (the `seed` field; also the MLP's).
Test lwlrap is computed from the exported SavedModel's serving_default signature on the test
examples (so the export is what is measured; the MLP, which has no export, is scored in memory).

Time: `fit_s` is the wall time of model.fit (results.json's train_seconds), `cpu_s` the user+sys
CPU time of the whole training command (start-up and export included), which is less disturbed
by other jobs on the machine than wall time. Runs are cached under
WORK_DIR/runs/RECIPE/SEED/FOLD-CLIPS-EPOCHS (score.json), so an interrupted campaign resumes;
a cached run is used only if its TrainerConfig (results.json) is the one its recipe resolves to
now, so a changed default is never scored from runs of the old one; `--fresh` trains again.

Writes bench/out/quality{TAG}.json (every run) and prints per recipe and seed: each fold's lwlrap,
the held-out mean and worst fold, the shared-speaker figure and the times; then the spread over
seeds.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SHARED = os.path.join(os.path.dirname(REPO), "shared")
RECORDINGS = os.path.join(SHARED, "data", "fsdd", "recordings")
SPEAKERS = ("george", "jackson", "nicolas", "theo")
KITCHEN10 = os.path.join(SHARED, "data", "kitchen10")
# kitchen10's FOLD-RECORDING-TAKE-TARGET.ogg: takes of one source recording share RECORDING. (The
# issue's `^[0-9]+-([0-9]+)-` matches 272 of the 440 names: 168 takes of 41 recordings named in words,
# e.g. 4-M-Mixer.wav-A-0.ogg, would each be a group of one and leak across the split.)
RECORDING_REGEX = r"^[0-9]+-(.+)-[A-Z]+-[0-9]+\.ogg$"
KITCHEN_FOLDS = tuple(f"kitchen{i}" for i in range(4))
MIXED_FORMATS = "1:PCM_16,2:PCM_24,1:FLOAT"
sys.path.insert(0, REPO)

# name -> (trainer preset, TrainerConfig overrides). Section-2 candidates of issue 10, each measured
# under the same protocol (bench/README.md says which won). Overrides spell out what a candidate was
# trained with, so that a later change of a default does not change what its name means.
LSTM = "model { conv_blocks: 0 }"   # the BiLSTM on the mel frames: every default before the conv stem
CANDIDATES = {
    "default": ("default", ""),
    "seed": ("seed", ""),
    "nomix": ("default", f"augment {{ mixup_alpha: 0 }} {LSTM}"),        # the default until mixup (2026-11-29)
    "mixup": ("default", f"augment {{ mixup_alpha: 0.4 }} {LSTM}"),      # the default 2026-11-29 until crnn8
    "freqmask": ("default", f"augment {{ mixup_alpha: 0 freq_masks: 2 freq_mask_max_bins: 16 }} {LSTM}"),
    "warp10": ("default", f"augment {{ mixup_alpha: 0 freq_warp: 0.1 }} {LSTM}"),
    "mixwarp": ("default", f"augment {{ mixup_alpha: 0.4 freq_warp: 0.1 }} {LSTM}"),
    "cmn": ("default", f"augment {{ mixup_alpha: 0.4 }} model {{ band_mean_norm: true }} {LSTM}"),
    "cosmix": ("default", f"augment {{ mixup_alpha: 0.4 }} optimizer {{ schedule: COSINE }} {LSTM}"),
    "drop5": ("default", f"augment {{ mixup_alpha: 0.4 }} model {{ dropout: 0.5 }} {LSTM}"),
    "mix10": ("default", f"augment {{ mixup_alpha: 1.0 }} {LSTM}"),
    "tmask": ("default", f"augment {{ mixup_alpha: 0.4 time_masks: 2 time_mask_max_frames: 40 }} {LSTM}"),
    "ema99": ("default", f"augment {{ mixup_alpha: 0.4 }} optimizer {{ ema_momentum: 0.99 }} {LSTM}"),
    # won: the default since 2026-11-29 (evening)
    "crnn8": ("default", "augment { mixup_alpha: 0.4 } model { conv_blocks: 2 conv_channels: 8 }"),
    # issue 22 §3: random time shifts of up to a quarter of the window, on top of the default
    "shift25": ("default", "augment { mixup_alpha: 0.4 time_shift: 0.25 }"),
}
# Trained on the examples with the noisy clips (--noisy N); issue 22 §3's candidates. A recipe trains
# on them when its name ends in NOISY_SUFFIX (also a --candidate's).
NOISY_SUFFIX = "+noisy"
NOISY_RECIPES = {
    "default+noisy": ("default", ""),                                         # whatever the default does with them
    "full+noisy": ("default", "noisy { loss_weight: 1 batch_share: 0 }"),     # shuffled in, full weight
    "w05s25+noisy": ("default", "noisy { loss_weight: 0.5 batch_share: 0.25 }"),
    "s25+noisy": ("default", "noisy { loss_weight: 1 batch_share: 0.25 }"),
    "w05s50+noisy": ("default", "noisy { loss_weight: 0.5 batch_share: 0.5 }"),
    "ls20w05s25+noisy": ("default", "noisy { loss_weight: 0.5 batch_share: 0.25 label_smoothing: 0.2 }"),
    # warm-up: 10 epochs on both sources shuffled together at full weight, then 20 on curated alone
    "warm10+noisy": ("default", "noisy { loss_weight: 1 batch_share: 0 warmup_epochs: 10 }"),
}


def run(cmd: list[str]) -> float:
    """Run a command; returns its children's user+sys CPU seconds."""
    print("+", " ".join(cmd), flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, check=True, cwd=REPO)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def make_fat(out: str, *args: str) -> None:
    if not os.path.exists(os.path.join(out, "train_curated.csv")):
        run([sys.executable, os.path.join(SHARED, "tools", "make_fat_dataset.py"), "--recordings", RECORDINGS,
             "--out", out, *args])


def beam(data: str, out: str, features: str, *args: str) -> None:
    """Examples of `data` in `out`, built once with the seed feature preset + `features` (text proto);
    examples already there built with other features are refused."""
    from pipeline import config

    manifest = os.path.join(out, "manifest.json")
    if not os.path.exists(manifest):
        path = out.rstrip("/") + ".features.pbtxt"
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(features)
        run([sys.executable, "beam_runner.py", "--runner=DirectRunner", "--direct_num_workers=2",
             "--direct_running_mode=multi_processing", "--overwrite", "--labels",
             os.path.join(data, "sample_submission.csv"), "--output_dir", out, "--feature_config", path, *args])
    with open(manifest) as f:
        built = json.load(f)["feature_config_text"]
    if config.from_text(built) != config.feature_config("seed", features):
        sys.exit(f"{out} holds examples of other features than --features {features!r} asks for; they were "
                 f"built with (fields over the defaults):\n{built}Give each feature config its own --work_dir.")


def kitchen_folds() -> dict[str, list[tuple[str, str]]]:
    """{fold: [(fname, labels)] of its held-out clips}: kitchen10's recordings dealt to the folds in
    a fixed shuffled order, every take of a recording in one fold."""
    import csv
    import random
    import re

    with open(os.path.join(KITCHEN10, "train_curated.csv"), newline="") as f:
        rows = [(r["fname"], r["labels"]) for r in csv.DictReader(f)]
    recording = {fname: re.match(RECORDING_REGEX, fname).group(1) for fname, _ in rows}
    recordings = sorted(set(recording.values()))
    random.Random(7).shuffle(recordings)
    fold_of = {rec: KITCHEN_FOLDS[i % len(KITCHEN_FOLDS)] for i, rec in enumerate(recordings)}
    out = {fold: [] for fold in KITCHEN_FOLDS}
    for fname, labels in rows:
        out[fold_of[recording[fname]]].append((fname, labels))
    return out


def kitchen_test_audio(held: list[tuple[str, str]], folder: str, seed: int) -> list[tuple[str, str]]:
    """The held-out clips copied into `folder`, plus len(held) // 2 two-label mixes of two of them
    (different classes) written as float WAV; returns the test rows (fname, labels)."""
    import random
    import shutil

    import soundfile as sf

    os.makedirs(folder, exist_ok=True)
    for fname, _ in held:
        shutil.copyfile(os.path.join(KITCHEN10, "train_curated", fname), os.path.join(folder, fname))
    rng, rows = random.Random(seed), list(held)
    while len(rows) < len(held) + len(held) // 2:
        (a, la), (b, lb) = rng.sample(held, 2)
        name = f"mix-{a[:-4]}+{b[:-4]}.wav"
        if la == lb or any(r[0] == name for r in rows):
            continue
        (x, rate), (y, rate_b) = (sf.read(os.path.join(KITCHEN10, "train_curated", n), dtype="float32", always_2d=True)
                                  for n in (a, b))
        if rate != rate_b:
            sys.exit(f"kitchen10: {a} and {b} differ in sample rate ({rate}, {rate_b})")
        n = min(len(x), len(y))
        mix = x[:n].mean(axis=1) + y[:n].mean(axis=1)
        mix /= max(1.0, float(np.abs(mix).max()))
        sf.write(os.path.join(folder, name), mix, rate, subtype="FLOAT")
        rows.append((name, f"{la},{lb}"))
    return rows


def prepare_kitchen(work: str, fold: str, features: str) -> tuple[str, None, str]:
    """(train examples, None, test examples) of a kitchen10 fold, built once."""
    from pipeline.data.demo_data import write_labels_csv

    base = os.path.join(work, fold)
    examples, test_examples = os.path.join(base, "examples"), os.path.join(base, "test_examples")
    folds = kitchen_folds()
    train_csv, test_csv = os.path.join(base, "train.csv"), os.path.join(base, "test_labels.csv")
    if not os.path.exists(test_csv):
        os.makedirs(base, exist_ok=True)
        write_labels_csv(train_csv, [r for f, rows in sorted(folds.items()) if f != fold for r in rows])
        rows = kitchen_test_audio(folds[fold], os.path.join(base, "test_audio"), KITCHEN_FOLDS.index(fold))
        write_labels_csv(test_csv + ".tmp", rows)
        os.replace(test_csv + ".tmp", test_csv)
    beam(KITCHEN10, examples, features, "--csv", train_csv, "--audio_dir", os.path.join(KITCHEN10, "train_curated"),
         "--group_regex", RECORDING_REGEX)
    beam(KITCHEN10, test_examples, features, "--csv", test_csv, "--audio_dir", os.path.join(base, "test_audio"),
         "--eval_ratio", "0")
    return examples, None, test_examples


def prepare(work: str, fold: str, train_clips: int, test_clips: int, features: str = "", noisy: int = 0,
            noisy_label_error: float = 0.3) -> tuple[str, str | None, str]:
    """(train examples, train examples with `noisy` noisy clips or None, test examples) of a fold,
    built once."""
    if fold in KITCHEN_FOLDS:
        if noisy:
            sys.exit("kitchen10 has no noisy source: --noisy applies to the FSDD folds")
        return prepare_kitchen(work, fold, features)
    base = os.path.join(work, f"{fold}-{train_clips}x{test_clips}")
    examples, test_examples = os.path.join(base, "examples"), os.path.join(base, "test_examples")
    if fold == "shared":
        data = test_data = os.path.join(base, "data")
        train_args = ["--train", str(train_clips), "--test", str(test_clips), "--seed", "7"]
        make_fat(data, *train_args)
    else:
        data, test_data = os.path.join(base, "train_data"), os.path.join(base, "test_data")
        others = ",".join(s for s in SPEAKERS if s != fold)
        train_args = ["--speakers", others, "--train", str(train_clips), "--test", "0", "--seed", "7",
                      "--formats", MIXED_FORMATS]
        make_fat(data, *train_args)
        make_fat(test_data, "--speakers", fold, "--train", "0", "--test", str(test_clips), "--seed", "8",
                 "--formats", MIXED_FORMATS)
    beam(data, examples, features, "--data_dir", data, "--no_noisy")
    # the test clips with their (normally secret) labels; eval_ratio 0 puts them all in "train"
    beam(data, test_examples, features, "--csv", os.path.join(test_data, "test_labels.csv"), "--audio_dir",
         os.path.join(test_data, "test"), "--eval_ratio", "0")
    noisy_examples = None
    if noisy:
        nbase = os.path.join(base, f"noisy{noisy}-e{noisy_label_error:g}")
        ndata, noisy_examples = os.path.join(nbase, "data"), os.path.join(nbase, "examples")
        make_fat(ndata, *train_args, "--noisy", str(noisy), "--noisy_label_error", str(noisy_label_error))
        for name in ("train_curated.csv", "sample_submission.csv"):
            with open(os.path.join(data, name)) as a, open(os.path.join(ndata, name)) as b:
                if a.read() != b.read():
                    sys.exit(f"{ndata}/{name} differs from {data}/{name}: --noisy changed the curated clips")
        beam(ndata, noisy_examples, features, "--data_dir", ndata, "--noisy")
    return examples, noisy_examples, test_examples


def test_set(test_examples: str, split: str = "train"):
    """Serialized examples of one split (a test job writes all to "train"), their multi-hot truth
    and mels, all in the same order."""
    import tensorflow as tf

    from pipeline.training import dataset
    from pipeline.data import example_schema as examples
    from pipeline.data import job_output as output
    from pipeline.data import tfrecord

    files, _ = dataset.split_files(test_examples, split)
    manifest = output.require_complete(test_examples)
    with open(os.path.join(test_examples, "labels.txt")) as f:
        num_classes = sum(1 for line in f if line.strip())
    raw = [r.numpy() for f in files for r in tf.data.TFRecordDataset(f, compression_type=tfrecord.compression_type(f))]
    parsed = tf.io.parse_example(tf.constant(raw), examples.parse_spec(tuple(manifest["example"]["mel_shape"])))
    truth = tf.sparse.to_indicator(parsed[examples.LABELS], num_classes).numpy().astype(np.float32)
    return raw, truth, parsed[examples.MEL].numpy()


def score_saved_model(path: str, raw: list[bytes]) -> np.ndarray:
    import tensorflow as tf

    fn = tf.saved_model.load(path).signatures["serving_default"]
    return np.concatenate([fn(examples=tf.constant(raw[i:i + 64]))["scores"].numpy() for i in range(0, len(raw), 64)])


def train_recipe(preset: str, overrides: str, examples: str, out: str, epochs: int, seed: int) -> dict:
    run(["rm", "-rf", out])
    cpu = run([sys.executable, "-m", "pipeline.training.train", "--examples", examples, "--work_dir", out, "--export_dir",
               os.path.join(out, "export"), "--preset", preset, "--set", f"epochs: {epochs} seed: {seed} {overrides}"])
    with open(os.path.join(out, "results.json")) as f:
        r = json.load(f)
    r["cpu_seconds"] = cpu
    return r


def mlp_baseline(examples: str, test_mels: np.ndarray, truth: np.ndarray, epochs: int, seed: int) -> dict:
    """Mean, max and std of each band -> Dense 256 -> Dense labels (sigmoid), Adam 1e-3."""
    import keras
    import tensorflow as tf

    from pipeline import config
    from pipeline.training import dataset
    from pipeline.metrics import lwlrap
    from pipeline.training import train
    from pipeline.metrics.lwlrap_keras import LwlrapMetric

    job = train.job_from_examples(examples, config.trainer_config(), "/tmp", None)
    pool = lambda x: tf.concat([tf.reduce_mean(x, 1), tf.reduce_max(x, 1), tf.math.reduce_std(x, 1)], -1)  # noqa
    n = len(job.labels)
    mk = lambda files, training: dataset.make_dataset(files, job.mel_shape, n, 32, training=training,  # noqa
                                                      seed=seed).map(lambda x, y: (pool(x), y))
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((3 * job.mel_shape[1],)), keras.layers.Dense(256, activation="relu"),
                              keras.layers.Dropout(0.2), keras.layers.Dense(n)])
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.BinaryCrossentropy(from_logits=True),
                  metrics=[LwlrapMetric(n, name="lwlrap")])
    t0, c0 = time.time(), time.process_time()
    hist = model.fit(mk(job.train_files, True), validation_data=mk(job.eval_files, False), epochs=epochs, verbose=0,
                     callbacks=[keras.callbacks.EarlyStopping("val_lwlrap", mode="max", patience=10,
                                                              restore_best_weights=True)])
    seconds, cpu = time.time() - t0, time.process_time() - c0
    scores = model.predict(pool(tf.constant(test_mels)), verbose=0)
    return {"test_lwlrap": float(lwlrap.lwlrap(truth, scores)), "fit_s": seconds, "cpu_s": cpu,
            "epochs_run": len(hist.history["loss"]), "eval_lwlrap": float(max(hist.history["val_lwlrap"]))}


# Fields whose default is not what runs trained before the field existed did: the value that is.
PREDATED = {"model.conv_blocks": 0, "ensemble_size": 1}


def config_changes(out: str, preset: str, overrides: str, epochs: int, seed: int) -> list[str]:
    """The TrainerConfig fields (dotted) in which the run cached in `out` (its results.json) differs
    from what preset + overrides resolve to now. A field the cached run predates counts as
    unchanged while it has the value that does what runs before it did: its entry in PREDATED,
    else its default."""
    from pipeline import config

    def flat(d, prefix=""):
        return {k2: v2 for k, v in d.items()
                for k2, v2 in (flat(v, f"{prefix}{k}.").items() if isinstance(v, dict) else [(prefix + k, v)])}

    with open(os.path.join(out, "results.json")) as f:
        then = flat(json.load(f)["trainer_config"])
    now = flat(config.to_dict(config.trainer_config(preset, f"epochs: {epochs} seed: {seed} {overrides}")))
    default = {**flat(config.to_dict(config.TrainerConfig())), **PREDATED}
    return [f"{k}: {then.get(k, '(absent)')} -> {v}" for k, v in sorted(now.items())
            if then.get(k, default.get(k)) != v]


def one_run(recipe: str, spec: tuple[str, str] | None, seed: int, fold: str, args, data: dict) -> dict:
    from pipeline.metrics import lwlrap

    noisy = recipe.endswith(NOISY_SUFFIX)
    tail = f"-n{args.noisy}e{args.noisy_label_error:g}" if noisy else ""
    out = os.path.join(args.work_dir, "runs", recipe, str(seed),
                       f"{fold}-{args.train_clips}x{args.test_clips}{tail}-e{args.epochs}")
    path = os.path.join(out, "score.json")
    curated_examples, noisy_examples, (raw, truth, mels) = data[fold]
    examples = noisy_examples if noisy else curated_examples
    if not args.fresh and os.path.exists(path):
        with open(path) as f:
            cached = json.load(f)
        if recipe != "mlp" and "eval_interval" not in cached:     # a run cached before the interval was kept
            with open(os.path.join(out, "results.json")) as f:
                cached.update(eval_check(json.load(f)["export_path"], examples, cached))
            with open(path, "w") as f:
                json.dump(cached, f, indent=1)
        # the resolved TrainerConfig decides, not the spelling: a candidate whose overrides were
        # rewritten (or whose preset's defaults moved into them) but train the same stays cached
        changed = spec is not None and config_changes(out, *spec, args.epochs, seed)
        if changed:
            sys.exit(f"{path}: {recipe} now resolves to another TrainerConfig than the cached run was trained "
                     f"with ({'; '.join(changed)}), e.g. after a default changed; --fresh trains it again")
        return cached
    if recipe == "mlp":
        s = mlp_baseline(examples, mels, truth, args.epochs, seed)
    else:
        preset, overrides = spec
        r = train_recipe(preset, overrides, examples, out, args.epochs, seed)
        scores = score_saved_model(r["export_path"], raw)
        s = {"test_lwlrap": float(lwlrap.lwlrap(truth, scores)), **by_label_count(truth, scores),
             "eval_lwlrap": r["eval_lwlrap"], "fit_s": r["train_seconds"], "cpu_s": r["cpu_seconds"],
             "epochs_run": r["epochs_run"], "preset": preset, "overrides": overrides}
        s.update(eval_check(r["export_path"], examples, s))
    if noisy:
        s.update(noisy_clips=args.noisy, noisy_label_error=args.noisy_label_error)
    s.update(recipe=recipe, seed=seed, fold=fold, test_clips=len(raw), epochs=args.epochs,
             load_avg=os.getloadavg()[0])
    os.makedirs(out, exist_ok=True)
    with open(path, "w") as f:
        json.dump(s, f, indent=1)
    print(f"{recipe} seed {seed} fold {fold}: test lwlrap {s['test_lwlrap']:.4f} (eval {s['eval_lwlrap']:.4f}), "
          f"{s['epochs_run']} epochs, fit {s['fit_s']:.0f} s, cpu {s['cpu_s']:.0f} s", flush=True)
    return s


def eval_check(export: str, examples: str, score: dict) -> dict:
    """Issue 30 §2: does the eval split tell the truth about held-out recordings? The exported
    model's lwlrap on the training examples' eval split with its 95% bootstrap interval (as the
    Evaluator computes one), and whether the held-out single clips' lwlrap lies inside it."""
    from pipeline.metrics import bootstrap, lwlrap

    raw, truth, _ = test_set(examples, "eval")
    scores = score_saved_model(export, raw)
    lo, hi = bootstrap.intervals(*bootstrap.clip_sums(truth, scores))
    held = score.get("test_lwlrap_single", score["test_lwlrap"])
    return {"eval_lwlrap_export": float(lwlrap.lwlrap(truth, scores)), "eval_interval": [float(lo[0]), float(hi[0])],
            "eval_clips": len(raw), "heldout_in_eval_interval": bool(lo[0] <= held <= hi[0])}


def by_label_count(truth: np.ndarray, scores: np.ndarray) -> dict:
    """lwlrap of the single-label and of the multi-label test clips, where the test set has both."""
    from pipeline.metrics import lwlrap

    multi = truth.sum(axis=1) > 1
    if not multi.any() or multi.all():
        return {}
    return {"test_lwlrap_single": float(lwlrap.lwlrap(truth[~multi], scores[~multi])),
            "test_lwlrap_multi": float(lwlrap.lwlrap(truth[multi], scores[multi]))}


def summarize(runs: list[dict], recipes: list[str], seeds: list[int], folds: list[str]) -> dict:
    held = [f for f in folds if f != "shared"]
    table = {}
    for recipe in recipes:
        per_seed = {}
        for seed in seeds:
            rs = {r["fold"]: r for r in runs if r["recipe"] == recipe and r["seed"] == seed}
            row = {f: rs[f]["test_lwlrap"] for f in folds if f in rs}
            if held and all(f in rs for f in held):
                row["heldout_mean"] = float(np.mean([rs[f]["test_lwlrap"] for f in held]))
                worst = min(held, key=lambda f: rs[f]["test_lwlrap"])
                row["worst"], row["worst_fold"] = rs[worst]["test_lwlrap"], worst
                row["fit_s_per_fold"] = float(np.mean([rs[f]["fit_s"] for f in held]))
                row["cpu_s_per_fold"] = float(np.mean([rs[f]["cpu_s"] for f in held]))
                row["epochs_run"] = [rs[f]["epochs_run"] for f in held]
            per_seed[seed] = row
        means = [r["heldout_mean"] for r in per_seed.values() if "heldout_mean" in r]
        table[recipe] = {"seeds": per_seed,
                         "heldout_mean_over_seeds": float(np.mean(means)) if means else None,
                         "heldout_mean_spread": float(max(means) - min(means)) if len(means) > 1 else None}
        checked = [r for r in runs if r["recipe"] == recipe and "eval_interval" in r and r["fold"] in held]
        if checked:      # issue 30 §2: the eval split's interval against the held-out single clips
            table[recipe]["eval_vs_heldout"] = {
                "runs": len(checked), "heldout_inside": sum(r["heldout_in_eval_interval"] for r in checked),
                "mean_eval": float(np.mean([r["eval_lwlrap_export"] for r in checked])),
                "mean_heldout_single": float(np.mean([r.get("test_lwlrap_single", r["test_lwlrap"]) for r in checked])),
                "mean_interval_width": float(np.mean([np.diff(r["eval_interval"])[0] for r in checked]))}
    return table


def print_table(table: dict, folds: list[str]) -> None:
    cols = folds + ["mean", "worst"]
    print(f"{'recipe':22s} {'seed':>5s} " + " ".join(f"{c[:8]:>8s}" for c in cols) + f" {'fit s/fold':>10s} "
          f"{'cpu s/fold':>10s}")
    for recipe, t in table.items():
        for seed, row in t["seeds"].items():
            vals = [row.get(f) for f in folds] + [row.get("heldout_mean"), row.get("worst")]
            cells = " ".join(f"{v:8.4f}" if v is not None else f"{'-':>8s}" for v in vals)
            fit, cpu = row.get("fit_s_per_fold"), row.get("cpu_s_per_fold")
            print(f"{recipe:22s} {seed:>5d} {cells} {fit or 0:10.0f} {cpu or 0:10.0f}")
        if t["heldout_mean_spread"] is not None:
            print(f"{'':22s} held-out mean over seeds {t['heldout_mean_over_seeds']:.4f}, "
                  f"spread {t['heldout_mean_spread']:.4f}")
        if "eval_vs_heldout" in t:
            e = t["eval_vs_heldout"]
            print(f"{'':22s} eval split {e['mean_eval']:.4f} (95% interval {e['mean_interval_width']:.3f} wide) vs "
                  f"held-out single clips {e['mean_heldout_single']:.4f}: inside the interval in "
                  f"{e['heldout_inside']} of {e['runs']} runs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work_dir", default="/tmp/fatp-quality")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--recipes", default="default,seed,mlp")
    ap.add_argument("--seeds", default="1234,7", help="trainer seeds; each recipe runs once per seed")
    ap.add_argument("--folds", default=",".join(SPEAKERS + ("shared",)),
                    help="held-out speakers (each a fold) and/or 'shared' (the shared-speaker test split)")
    ap.add_argument("--train_clips", type=int, default=800, help="training clips per held-out fold")
    ap.add_argument("--test_clips", type=int, default=200, help="test clips of the held-out speaker")
    ap.add_argument("--candidate", action="append", default=[], metavar="NAME=PRESET:OVERRIDES",
                    help="a recipe: TrainerConfig overrides (text proto) merged over a trainer preset")
    ap.add_argument("--fresh", action="store_true", help="train again instead of reusing cached runs")
    ap.add_argument("--prepare_only", action="store_true", help="build the folds' examples and stop")
    ap.add_argument("--tag", default="", help="suffix of the JSON written to bench/out/")
    ap.add_argument("--features", default="", help="FeatureConfig fields (text proto) over the seed preset for "
                    "the folds' examples, e.g. 'float64_stft: false'; each feature config needs its own --work_dir")
    ap.add_argument("--noisy", type=int, default=0, help="noisy clips per fold for the +noisy recipes "
                    "(make_fat_dataset.py --noisy)")
    ap.add_argument("--noisy_label_error", type=float, default=0.3, help="share of noisy clips with corrupted labels")
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    candidates = {**CANDIDATES, **NOISY_RECIPES}
    for c in args.candidate:
        name, _, spec = c.partition("=")
        preset, _, overrides = spec.partition(":")
        candidates[name] = (preset or "default", overrides)
    recipes, folds = args.recipes.split(","), args.folds.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    unknown = [r for r in recipes if r != "mlp" and r not in candidates] + [
        f for f in folds if f != "shared" and f not in SPEAKERS + KITCHEN_FOLDS]
    if unknown:
        sys.exit(f"unknown recipes/folds {unknown}; recipes: mlp, {sorted(candidates)}; folds: {SPEAKERS}, shared, "
                 f"{KITCHEN_FOLDS}")
    if not args.noisy and any(r.endswith(NOISY_SUFFIX) for r in recipes):
        sys.exit("the +noisy recipes train on noisy clips: give --noisy N")
    data = {}
    for fold in folds:
        examples, noisy_examples, test_examples = prepare(args.work_dir, fold, args.train_clips, args.test_clips,
                                                          args.features, args.noisy, args.noisy_label_error)
        data[fold] = (examples, noisy_examples, None if args.prepare_only else test_set(test_examples))
    if args.prepare_only:
        return
    runs = []
    for recipe in recipes:
        for seed in seeds:
            for fold in folds:
                runs.append(one_run(recipe, candidates.get(recipe), seed, fold, args, data))
    table = summarize(runs, recipes, seeds, folds)
    os.makedirs(os.path.join(HERE, "out"), exist_ok=True)
    with open(os.path.join(HERE, "out", f"quality{args.tag}.json"), "w") as f:
        json.dump({"args": vars(args), "candidates": {r: candidates.get(r) for r in recipes},
                   "table": table, "runs": runs}, f, indent=1)
    print_table(table, folds)


if __name__ == "__main__":
    main()
