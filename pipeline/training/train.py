"""Training: one code path for the standalone command (`fatp-train`) and the TFX Trainer's run_fn.

    TrainJob (files, shapes, configs, directories)
      -> strategy (MirroredStrategy; MultiWorkerMirroredStrategy when TF_CONFIG names >1 worker)
      -> tf.data input (pipeline.training.dataset) -> model.fit with validation lwlrap, EarlyStopping on it
         (best weights restored) if asked, BackupAndRestore, TensorBoard, CSV history
         (ensemble_size > 1: that many models fit one after another, then one model of their mean logits)
      -> eval-split predictions -> per-class lwlrap CSV + bar chart, curves, a mel picture
      -> versioned SavedModel (pipeline.training.export) -> results.json

WORK_DIR/backup (resume state), logs/ (TensorBoard), history.csv, plots/, results.json; an
ensemble's members keep their backup (WORK_DIR/backup/member-<i>), logs, history.csv and curves in
WORK_DIR/member-<i>/, and results.json lists them under "members".
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from pipeline import fileio
from pipeline import config as config_lib
from pipeline import logs
from pipeline.training import dataset
from pipeline.data import kaggle_layout
from pipeline.data import job_output as output
from pipeline.training import plots

log = logging.getLogger("fatp.train")


@dataclass
class TrainJob:
    train_files: list[str]
    eval_files: list[str]
    mel_shape: tuple[int, int]
    labels_path: str
    feature_cfg: config_lib.FeatureConfig
    cfg: config_lib.TrainerConfig
    work_dir: str
    export_base: str | None = None
    train_examples: int | None = None      # from the manifest; lets Keras know an epoch's length
    eval_examples: int | None = None
    export_version: str | None = None      # EXPORT_BASE/<this>/ instead of a timestamp (TFX: "Format-Serving")
    data_id: str | None = None             # which Beam job output: its folder and manifest time (backups check it)
    serving_cfg: config_lib.ServingConfig = field(default_factory=config_lib.ServingConfig)   # the export's limits
    backup_dir: str | None = None          # where the backup lives (default WORK_DIR/backup; TFX: see run_fn)
    train_sources: dict | None = None      # {source: clips} of the train files (None: unknown), from the manifest

    @property
    def noisy_clips(self) -> int:
        return (self.train_sources or {}).get(kaggle_layout.NOISY, 0)

    @property
    def curated_clips(self) -> int | None:
        return (self.train_sources or {}).get(kaggle_layout.CURATED)

    def train_batches(self, global_batch: int) -> int | None:
        """Training batches per epoch at `global_batch` (None: unknown); with noisy clips and a
        warm-up, per warm-up epoch."""
        if self.noisy_clips and self.cfg.noisy.batch_share > 0:
            return dataset.epoch_batches(self.curated_clips, self.cfg.noisy.batch_share, global_batch)
        return -(-self.train_examples // global_batch) if self.train_examples else None

    def train_steps(self, global_batch: int) -> int | None:
        """Optimizer steps of the whole schedule at `global_batch` (None: unknown)."""
        batches, n = self.train_batches(global_batch), self.cfg.noisy
        if batches is None or not (self.noisy_clips and n.warmup_epochs):
            return batches * self.cfg.epochs if batches else None
        return batches * n.warmup_epochs + -(-self.curated_clips // global_batch) * (self.cfg.epochs - n.warmup_epochs)

    @property
    def backup_root(self) -> str:
        return self.backup_dir or os.path.join(self.work_dir, "backup")

    @property
    def labels(self) -> list[str]:
        return kaggle_layout.load_vocabulary(self.labels_path)


def job_from_examples(examples_dir: str, cfg: config_lib.TrainerConfig, work_dir: str, export_base: str | None,
                      files: tuple[list[str], list[str]] | None = None, export_version: str | None = None,
                      serving_cfg: config_lib.ServingConfig | None = None) -> TrainJob:
    """A TrainJob over a finished Beam job output: its manifest gives the input shape, labels,
    feature config and, unless `files` (train, eval) are given, the train and eval shards.
    `serving_cfg` is checked against that feature config here, before any training."""
    manifest = output.require_complete(examples_dir)
    if manifest["mode"] != "train":
        raise ValueError(f"{examples_dir} holds {manifest['mode']!r} examples, not labelled train/eval ones")
    if files is None:
        files = (dataset.split_files(examples_dir, "train", manifest)[0],
                 dataset.split_files(examples_dir, "eval", manifest)[0])
    records = {fileio.join(examples_dir, f["path"]): f["records"]
               for split in manifest["splits"].values() for f in split["files"]}
    count = lambda fs: sum(records[f] for f in fs) if all(f in records for f in fs) else None  # noqa: E731
    feature_cfg = config_lib.from_text(manifest["feature_config_text"])
    serving_cfg = serving_cfg or config_lib.ServingConfig()
    config_lib.validate_serving(serving_cfg, feature_cfg)
    return TrainJob(train_files=files[0], eval_files=files[1], train_examples=count(files[0]),
                    train_sources=_train_sources(manifest, examples_dir, files[0]),
                    eval_examples=count(files[1]), mel_shape=tuple(manifest["example"]["mel_shape"]),
                    labels_path=fileio.join(examples_dir, manifest["labels"]["file"]), feature_cfg=feature_cfg,
                    cfg=cfg, work_dir=work_dir, export_base=export_base, export_version=export_version,
                    data_id=f"{examples_dir} {manifest.get('created', '')}", serving_cfg=serving_cfg)


def _train_sources(manifest: dict, examples_dir: str, train_files: list[str]) -> dict | None:
    """{source: clips} among `train_files`, which must then be the manifest's train split (the
    counts are per split); None when the examples hold one source."""
    sources = manifest["counts"].get("per_source") or {}
    if set(sources) <= {kaggle_layout.CURATED}:
        return None     # one source: nothing to tell apart (a job before sources were counted too)
    split = manifest["splits"].get("train") or {"files": []}
    if sorted(train_files) != sorted(fileio.join(examples_dir, f["path"]) for f in split["files"]):
        raise ValueError(f"{examples_dir} holds clips of {len(sources)} sources ({', '.join(sorted(sources))}) and "
                         f"its manifest counts them per split: train on its whole train split, not other files")
    return {name: c["per_split"].get("train", 0) for name, c in sources.items()}


def _tf_config() -> dict:
    return json.loads(os.environ.get("TF_CONFIG") or "{}")


def _num_workers() -> int:
    """Training tasks TF_CONFIG names: its workers and its chief, if any."""
    cluster = _tf_config().get("cluster", {})
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def strategy_from_env():
    """MultiWorkerMirroredStrategy when TF_CONFIG names several workers, else MirroredStrategy
    over the local devices (GPUs, or the CPU's logical devices)."""
    import tensorflow as tf

    if _num_workers() > 1:
        from pipeline.training import keras_multiworker

        keras_multiworker.apply()
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.MirroredStrategy()


def is_chief() -> bool:
    task = _tf_config().get("task", {})
    cluster = _tf_config().get("cluster", {})
    if not task:
        return True
    return task.get("type") == "chief" or (task.get("type") == "worker" and task.get("index") == 0
                                           and "chief" not in cluster)


def split_cpu(replicas: int) -> None:
    """Expose the CPU as `replicas` logical devices, so MirroredStrategy runs real replicas on a
    CPU-only machine. Must run before TensorFlow initializes its devices."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)


def _fingerprint(job: TrainJob, replicas: int) -> dict:
    """What a backup must match to be resumed: anything that changes the model, its inputs or the
    meaning of a step."""
    return {"trainer_config": config_lib.to_dict(job.cfg), "mel_shape": list(job.mel_shape),
            "labels": len(job.labels), "replicas": replicas, "train_examples": job.train_examples,
            "data": job.data_id}


def _callbacks(job: TrainJob, scratch: str | None, replicas: int):
    """(callbacks, the backup): early stopping before the backup, so each backup holds its state
    as of the same epoch; logs and history in WORK_DIR on the chief only (every worker may share
    WORK_DIR, and must for resuming: pipeline/training/resume.py), in `scratch` on the others."""
    import keras

    from pipeline.training import averaging
    from pipeline.training import resume
    from pipeline.training.progress import EpochProgress

    cfg = job.cfg
    backup_dir = job.backup_root
    chief = scratch is None
    log_dir = job.work_dir if chief else scratch
    early = None
    if cfg.early_stopping_patience > 0:
        early = resume.ResumableEarlyStopping(monitor="val_lwlrap", mode="max", verbose=1,
                                              patience=cfg.early_stopping_patience, restore_best_weights=True)
    backup = resume.TrainingBackup(backup_dir, chief, _fingerprint(job, replicas),
                                   save_freq=cfg.backup_every_steps or "epoch", early_stopping=early,
                                   scratch_dir=scratch)
    if backup.check():
        log.info("resuming from the backup in %s", backup_dir)
    cbs = ([averaging.AveragedValidation()] if cfg.optimizer.ema_momentum > 0 else []) + (
        [early] if early else []) + [
        backup,
        keras.callbacks.TensorBoard(os.path.join(log_dir, "logs")),
        keras.callbacks.CSVLogger(os.path.join(log_dir, "history.csv"), append=True),
        EpochProgress(cfg.epochs)]
    return cbs, backup


def _noisy_input(job: TrainJob, global_batch: int) -> config_lib.NoisyConfig | None:
    """How the training input treats noisy clips: None when the train files hold none."""
    if not job.noisy_clips:
        return None
    n = job.cfg.noisy
    drawn = (f"{n.batch_share:.0%} of each batch noisy, {job.train_batches(global_batch)} batches an epoch"
             if n.batch_share > 0 else "shuffled together with the curated")
    smoothed = f", their labels smoothed by {n.label_smoothing:g}" if n.label_smoothing > 0 else ""
    staged = (f"; curated clips only after epoch {n.warmup_epochs}, one pass an epoch" if n.warmup_epochs else "")
    log.info("training on %d curated + %d noisy clips: noisy loss weight %g, %s%s%s", job.curated_clips or 0,
             job.noisy_clips, n.loss_weight, drawn, smoothed, staged)
    return n


def _evaluate(model, job: TrainJob, eval_ds) -> dict:
    """Exact lwlrap over the whole eval split, per class too, and the pictures."""
    from pipeline.metrics.lwlrap import LwlrapAccumulator

    labels = job.labels
    acc = LwlrapAccumulator(len(labels))
    first_mel = None
    for mel, truth in eval_ds:
        # a plain call, not predict_on_batch: under MultiWorkerMirroredStrategy predict gathers the
        # outputs of all workers (a collective), and only the chief evaluates, so it would hang
        acc.add(truth.numpy(), model(mel, training=False).numpy())
        first_mel = mel[0].numpy() if first_mel is None else first_mel
    plot_dir = plots.ensure_dir(os.path.join(job.work_dir, "plots"))
    per_class = acc.per_class()
    plots.per_class_lwlrap(labels, per_class, acc.count, os.path.join(plot_dir, "per_class_lwlrap.csv"),
                           os.path.join(plot_dir, "per_class_lwlrap.png"))
    plots.mel_example(first_mel, "normalized log-mel of the first eval example",
                      os.path.join(plot_dir, "mel_example.png"))
    return {"eval_lwlrap": float(acc.overall()), "eval_examples_positive_labels": int(np.sum(acc.count))}


def full_history(work_dir: str, this_run: dict) -> dict:
    """Every epoch's logs, across restarts (history.csv is appended to by every resumed run);
    `this_run` when there is no history.csv (or it is empty). `work_dir` may be a URL."""
    import csv
    import io

    try:
        rows = list(csv.DictReader(io.StringIO(fileio.read_text(fileio.join(work_dir, "history.csv")))))
    except FileNotFoundError:
        return this_run
    return {k: [float(r[k]) for r in rows if r.get(k)] for k in rows[0] if k != "epoch"} if rows else this_run


def train(job: TrainJob) -> dict:
    """Train, evaluate, export. Returns (and writes to WORK_DIR/results.json) the outcome.

    Every worker of a multi-worker run trains and saves (the collectives need them all); a worker
    other than the chief writes its logs, backup and export to a scratch folder of its own
    (TMPDIR/fatp-worker-*), removed when it ends, finished or failed."""
    scratch = None if is_chief() else tempfile.mkdtemp(prefix="fatp-worker-")
    try:
        return _train(job, scratch)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def member_dir(work_dir: str, i: int) -> str:
    """Where member `i` of an ensemble keeps its logs, history.csv and curves."""
    return fileio.join(work_dir, f"member-{i}")


def member_job(job: TrainJob, i: int) -> TrainJob:
    """Member `i` of an ensemble (TrainerConfig.ensemble_size > 1): seed + i, its own logs in
    WORK_DIR/member-<i>/ and its own backup, kept until the ensemble is exported, so a restart
    trains no finished member again."""
    cfg = config_lib.TrainerConfig()
    cfg.CopyFrom(job.cfg)
    cfg.seed = job.cfg.seed + i
    return dataclasses.replace(job, cfg=cfg, work_dir=member_dir(job.work_dir, i),
                               backup_dir=member_dir(job.backup_root, i))


@dataclass
class _Fit:
    seed: int
    model: object
    backup: object
    history: dict
    seconds: float


def _fit(job: TrainJob, scratch: str | None, strategy, eval_ds, name: str) -> _Fit:
    """One model trained as job.cfg says (from its backup, if one is there)."""
    import keras

    from pipeline.training import model as model_lib
    from pipeline.training import warmup
    from pipeline.metrics.lwlrap_keras import LwlrapMetric

    cfg = job.cfg
    keras.utils.set_random_seed(cfg.seed)
    os.makedirs(job.work_dir, exist_ok=True)
    replicas = strategy.num_replicas_in_sync
    global_batch = cfg.batch_size * replicas
    num_classes = len(job.labels)
    noisy = _noisy_input(job, global_batch)
    phase = warmup.NoisyPhase(noisy.warmup_epochs) if noisy is not None and noisy.warmup_epochs else None
    train_ds = _dataset(job, job.train_files, True, global_batch, noisy, phase)
    with strategy.scope():
        model = model_lib.build_model(job.mel_shape, num_classes, cfg, name=name)
        model.compile(optimizer=model_lib.optimizer(cfg, job.train_steps(global_batch)), loss=model_lib.loss_fn(cfg),
                      metrics=[LwlrapMetric(num_classes, name="lwlrap")])
    callbacks, backup = _callbacks(job, scratch, replicas)
    callbacks += [phase] if phase else []
    t0 = time.time()
    with warnings.catch_warnings():
        # an input without a declared length (multi-worker, a noisy warm-up) ends its epochs by running
        # out, and Keras warns "...ran out of data; interrupting training" each time: it interrupts nothing
        warnings.filterwarnings("ignore", message="Your input ran out of data", category=UserWarning)
        history = model.fit(train_ds, validation_data=eval_ds, epochs=cfg.epochs, callbacks=callbacks,
                            shuffle=False, verbose=0)    # one line per epoch from EpochProgress
    seconds = time.time() - t0
    if scratch is None:
        plots.training_curves(full_history(job.work_dir, history.history),
                              os.path.join(plots.ensure_dir(os.path.join(job.work_dir, "plots")), "training_curves.png"))
    return _Fit(cfg.seed, model, backup, history.history, seconds)


def _dataset(job: TrainJob, files: list[str], training: bool, global_batch: int, noisy=None, phase=None):
    import tensorflow as tf

    cfg = job.cfg
    multi_worker = _num_workers() > 1   # the same count that chose the strategy (a chief is a worker too)
    ds = dataset.make_dataset(
        files, job.mel_shape, len(job.labels), global_batch, training=training, augment=cfg.augment,
        shuffle_buffer=cfg.shuffle_buffer, seed=cfg.seed,
        num_examples=None if multi_worker else (job.train_examples if training else job.eval_examples),
        feature_cfg=job.feature_cfg, deterministic=cfg.deterministic_input, noisy=noisy if training else None,
        curated_examples=job.curated_clips, noisy_on=phase.on if phase else None)
    if multi_worker:
        opts = tf.data.Options()
        opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        ds = ds.with_options(opts)
    return ds


def summary_line(results: dict) -> str:
    """One line of a results.json for the log and the pipeline's summary (an ensemble's epochs member
    by member)."""
    members = results.get("members") or []
    epochs = " + ".join(str(m["epochs_run"]) for m in members) or str(results["epochs_run"])
    who = f"{len(members)} members, " if members else ""
    return f"eval lwlrap {results['eval_lwlrap']:.4f} after {epochs} epochs ({who}{results['train_seconds']:.0f} s)"


def _member_summary(fit: _Fit) -> dict:
    return {"seed": fit.seed,
            "epochs_run": len(fit.history.get("loss", [])), "train_seconds": fit.seconds,
            "resumed": fit.backup.restored,
            "early_stopping": fit.backup.early_stopping.state() if fit.backup.early_stopping else None}


def _train(job: TrainJob, scratch: str | None) -> dict:
    import tensorflow as tf

    from pipeline.training import export
    from pipeline.training import model as model_lib
    from pipeline.training import resume

    cfg = job.cfg
    os.makedirs(job.work_dir, exist_ok=True)
    strategy = strategy_from_env()
    replicas = strategy.num_replicas_in_sync
    global_batch = cfg.batch_size * replicas
    log.info("%d replica(s) under %s, global batch %d; %d train / %d eval files; input %s, %d labels",
             replicas, type(strategy).__name__, global_batch, len(job.train_files), len(job.eval_files),
             "x".join(map(str, job.mel_shape)), len(job.labels))
    eval_ds = _dataset(job, job.eval_files, False, global_batch)
    chief = scratch is None
    n = cfg.ensemble_size
    if n == 1:
        fits = [_fit(job, scratch, strategy, eval_ds, "bilstm_attention")]
        model = fits[0].model
    else:
        fits = []
        for i in range(n):
            member = member_job(job, i)
            log.info("ensemble member %d of %d (seed %d): logs in %s", i + 1, n, member.cfg.seed, member.work_dir)
            fits.append(_fit(member, scratch, strategy, eval_ds, f"member_{i}"))
        with strategy.scope():
            model = model_lib.ensemble([f.model for f in fits], job.mel_shape)
    summaries = [_member_summary(f) for f in fits]
    results = {"replicas": replicas, "global_batch": global_batch,
               "epochs_run": sum(m["epochs_run"] for m in summaries),
               "train_seconds": sum(m["train_seconds"] for m in summaries), "history": fits[0].history,
               "trainer_config": config_lib.to_dict(cfg)}
    if n == 1:
        results.update(resumed=summaries[0]["resumed"], early_stopping=summaries[0]["early_stopping"])
    else:
        results.update(members=summaries, early_stopping=None,
                       resumed={f"member-{i}": m["resumed"] for i, m in enumerate(summaries) if m["resumed"]} or None)
    if chief:
        if n > 1:    # the members' own curves are in their folders; the top one shows the first's
            shutil.copyfile(os.path.join(member_dir(job.work_dir, 0), "plots", "training_curves.png"),
                            os.path.join(plots.ensure_dir(os.path.join(job.work_dir, "plots")), "training_curves.png"))
        results.update(_evaluate(model, job, eval_ds))
    if job.export_base:  # every worker saves (collectives); non-chiefs into their scratch folder
        base = job.export_base if chief else os.path.join(scratch, "export")
        path = export.export_saved_model(model, job.feature_cfg, cfg, job.labels_path, base,
                                         version=job.export_version, serving_cfg=job.serving_cfg)
        results["export_path"] = path if chief else None
    results["weights_sha256"] = resume.weights_digest(model)   # equal on every worker (synchronous all-reduce)
    if chief:
        with open(os.path.join(job.work_dir, "results.json"), "w") as f:
            json.dump(results, f, indent=1, default=float)
        log.info("%s%s", summary_line(results), f"; exported {results['export_path']}" if job.export_base else "")
    for fit in fits:      # only now: a crash before this point resumes from the backups, export included
        fit.backup.delete()
    root = job.backup_root
    if n > 1 and chief and tf.io.gfile.isdir(root) and not tf.io.gfile.listdir(root):
        tf.io.gfile.rmtree(root)     # the members' folder, now empty
    return results


EXAMPLES_URI = "examples_uri"    # custom_config key set by components/trainer/executor.py
RESOLVED_CONFIG = "trainer_config_resolved"   # custom_config keys set by the pipeline (its cache key)
CODE_VERSION = "code_version"


def run_fn(fn_args) -> None:
    """The TFX Trainer's entry point (GenericExecutor): the same `train()` as the command line.

    custom_config: {"trainer_config": text proto (optional), "trainer_preset": name (optional),
    "trainer_config_resolved": the two resolved, every default written out (what the pipeline's
    cache key holds; when present it is what trains), "code_version" (for the cache key only),
    "serving_config": ServingConfig text proto (optional), "examples_uri": the Examples artifact's folder (components/trainer's executor adds it)}. The
    examples' manifest there gives the input shape, labels and features.
    The SavedModel is written to fn_args.serving_model_dir itself, where TFX's GenericExecutor
    checks for it (and Evaluator and Pusher read it); results, plots and logs go to model_run_dir.
    """
    import tensorflow as tf

    custom = fn_args.custom_config or {}
    if custom.get(RESOLVED_CONFIG):
        cfg = config_lib.from_text(custom[RESOLVED_CONFIG], config_lib.TrainerConfig)
        config_lib.validate_trainer(cfg)
    else:
        cfg = config_lib.trainer_config(custom.get("trainer_preset", "default"), custom.get("trainer_config", ""))
    train_files = sorted(f for pattern in fn_args.train_files for f in tf.io.gfile.glob(pattern))
    eval_files = sorted(f for pattern in fn_args.eval_files for f in tf.io.gfile.glob(pattern))
    if not train_files or not eval_files:
        raise ValueError(f"no TFRecord files match train {fn_args.train_files} / eval {fn_args.eval_files}")
    examples_dir = custom.get(EXAMPLES_URI)
    if not examples_dir:
        raise ValueError(f"custom_config has no {EXAMPLES_URI!r}: run the Trainer with components.trainer's executor "
                         f"(it passes the Examples artifact's folder, where manifest.json lies)")
    serving_dir = fn_args.serving_model_dir.rstrip("/")
    job = job_from_examples(examples_dir, cfg, fn_args.model_run_dir, os.path.dirname(serving_dir),
                            files=(train_files, eval_files), export_version=os.path.basename(serving_dir),
                            serving_cfg=config_lib.serving_config(custom.get("serving_config", "")))
    job.backup_dir = attempts_backup_dir(fn_args.model_run_dir, examples_dir, config_lib.resolved_text(cfg),
                                         custom.get(CODE_VERSION, ""))
    train(job)


def attempts_backup_dir(model_run_dir: str, examples_dir: str, config_text: str, code_version: str) -> str:
    """Where a TFX Trainer keeps its backup so that a retry resumes it.

    TFX gives every attempt its own model_run folder (PIPELINE_ROOT/Trainer/model_run/<execution
    id>), so a backup kept there was never seen again: a Trainer killed after hours started from
    epoch 0. Attempts of the same training (the same Examples folder, resolved config and code)
    share PIPELINE_ROOT/Trainer/backups/<their digest>/; the backup's own check still refuses one
    written with other settings (another replica count, say), and it is deleted once the model is
    exported."""
    key = hashlib.sha256("\0".join([examples_dir, config_text, code_version]).encode()).hexdigest()[:16]
    trainer_dir = os.path.dirname(os.path.dirname(model_run_dir.rstrip("/")))
    return fileio.join(trainer_dir, "backups", key)


def arg_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fatp-train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", required=True, help="output directory of the Beam job (with manifest.json)")
    ap.add_argument("--work_dir", required=True, help="backups, TensorBoard logs, plots, results.json")
    ap.add_argument("--export_dir", help="serving base directory: the SavedModel goes to EXPORT_DIR/<version>/")
    ap.add_argument("--preset", choices=sorted(config_lib.TRAINER_PRESETS), default="default",
                    help="default: measured best; seed: the Kaggle kernel's recipe; small: tiny, for tests")
    ap.add_argument("--trainer_config", help="a TrainerConfig text proto file merged over --preset")
    ap.add_argument("--set", default="", help="TrainerConfig fields as text proto, e.g. 'epochs: 5 batch_size: 64'")
    ap.add_argument("--serving_config", help="a ServingConfig text proto file: the export's request limits "
                                             "(max_batch, max_request_seconds, warmup_requests)")
    ap.add_argument("--cpu_replicas", type=int, default=0,
                    help="split the CPU into this many logical devices (MirroredStrategy replicas without GPUs)")
    return ap


def main(argv: list[str] | None = None) -> None:
    args = arg_parser().parse_args(argv)
    logs.setup("INFO")
    try:
        overrides = (fileio.read_text(args.trainer_config) if args.trainer_config else "") + "\n" + args.set
        cfg = config_lib.trainer_config(args.preset, overrides)
        if args.cpu_replicas:
            split_cpu(args.cpu_replicas)
        serving_cfg = config_lib.serving_config(fileio.read_text(args.serving_config) if args.serving_config else "")
        job = job_from_examples(args.examples, cfg, args.work_dir, args.export_dir, serving_cfg=serving_cfg)
    except (ValueError, FileNotFoundError, output.OutputError) as e:
        sys.exit(f"error: {e}")
    from pipeline.training.resume import BackupMismatch

    try:
        train(job)
    except BackupMismatch as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
