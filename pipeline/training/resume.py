"""Resuming training where it stopped: one backup of weights, optimizer state, progress and early
stopping, written atomically, shared by every worker, refused when it belongs to another
configuration, and deleted only once the model is exported.

    WORK_DIR/backup/config.json        what wrote the backup (refused if this run differs)
    WORK_DIR/backup/state-000042/      one complete save: model.weights.h5 (weights and optimizer),
                                       meta.json (epoch, batch, early stopping), best.npz (early
                                       stopping's best weights)
    WORK_DIR/backup/LATEST             the name of the newest complete save, replaced atomically

Why not keras.callbacks.BackupAndRestore (Keras 3.15), each gap reproduced:
- EarlyStopping resets its best value, best weights and patience counter in on_train_begin, so a
  restarted run's "best" model was only the best since the restart. Its state is saved in the
  same save as the weights and restored by ResumableEarlyStopping.
- The backup was deleted at the end of fit, before evaluation and export; a crash while exporting
  lost the run. Here `delete()` runs after the export, and a last save at the end of training
  records it as finished (best weights restored, early stop included), so a restart trains no
  more, whatever the save frequency.
- Its weights, metadata and (ours) early-stopping files were separate files written in place: a
  kill between or during writes paired one save's weights with another's progress, or left a
  truncated JSON that made every restart fail. Here a save is a new folder, and LATEST names it
  only once it is complete; the previous save stays until the next one is complete.
- Under MultiWorkerMirroredStrategy, non-chief workers backed up to a fresh temporary folder and
  restarted from epoch 0 while the chief resumed. Here the chief writes the backup to WORK_DIR,
  which every worker must see (as TFX's model_run_dir is; gs:// or a shared disk across machines),
  every worker restores from it, and the others write only to a throwaway folder of their own
  (in the scratch folder their trainer removes when it ends, pipeline/training/train.py).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os

import keras
import numpy as np
import tensorflow as tf

from pipeline import fileio
from pipeline.training import averaging

log = logging.getLogger(__name__)

CONFIG = "config.json"
LATEST = "LATEST"
WEIGHTS, META, BEST = "model.weights.h5", "meta.json", "best.npz"
KEEP = 2            # complete saves kept: the newest and the one before


class BackupMismatch(ValueError):
    """WORK_DIR/backup belongs to a run with another configuration."""


def weights_digest(model) -> str:
    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping whose state (best value and epoch, patience counter, best weights) survives a
    restart: TrainingBackup saves it with each save and hands it back before training resumes.
    With weight averaging on, the best weights it keeps are the averaged ones (pipeline/training/averaging.py)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._resume_state = None

    def state(self) -> dict:
        return {"wait": int(self.wait), "best": None if self.best is None else float(self.best),
                "best_epoch": int(self.best_epoch), "stopped_epoch": int(self.stopped_epoch)}

    def resume_from(self, state: dict, best_weights: list | None) -> None:
        self._resume_state = (state, best_weights)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)                # Keras' reset ...
        if self._resume_state is not None:          # ... then the saved state, if any
            state, best_weights = self._resume_state
            self.wait, self.best, self.best_epoch = state["wait"], state["best"], state["best_epoch"]
            self.stopped_epoch = state["stopped_epoch"]
            self.best_weights = best_weights

    def on_epoch_end(self, epoch, logs=None):
        with averaging.averaged_weights(self.model):   # the weights val_lwlrap was measured on
            super().on_epoch_end(epoch, logs)


class TrainingBackup(keras.callbacks.Callback):
    """Saves every `save_freq` batches (or at epoch ends with "epoch") and at the end of training;
    restores the newest complete save before training starts. Place it after the early stopping
    callback, so that at the end of training the best weights are back before the last save."""

    def __init__(self, backup_dir: str, chief: bool, fingerprint: dict, save_freq="epoch",
                 early_stopping: ResumableEarlyStopping | None = None, scratch_dir: str | None = None):
        """scratch_dir: where a non-chief worker writes its own saves (SCRATCH/backup); the caller
        removes it."""
        super().__init__()
        if not chief and not scratch_dir:
            raise ValueError("a non-chief worker writes its saves to a scratch folder of its own; none given")
        self.read_dir = backup_dir
        self.write_dir = backup_dir if chief else os.path.join(scratch_dir, "backup")
        self.chief, self.fingerprint, self.early_stopping = chief, fingerprint, early_stopping
        self.save_freq = save_freq
        self.restored = None
        self._epoch = self._since_save = self._saves = 0
        self._state = self._load_state()

    # ------------------------------------------------------------------------------ files
    def _saves_in(self, directory: str) -> list[str]:
        if not tf.io.gfile.isdir(directory):
            return []
        return sorted(d.rstrip("/") for d in tf.io.gfile.listdir(directory) if d.startswith("state-"))

    def _load_state(self):
        """(save folder, meta, best weights) of the newest complete save in read_dir, or None. A
        save LATEST does not name yet is an interrupted one and is ignored."""
        latest = os.path.join(self.read_dir, LATEST)
        if not tf.io.gfile.exists(latest):
            return None
        with tf.io.gfile.GFile(latest) as f:
            name = f.read().strip()
        folder = os.path.join(self.read_dir, name)
        with tf.io.gfile.GFile(os.path.join(folder, META)) as f:
            meta = json.load(f)
        best = None
        if tf.io.gfile.exists(os.path.join(folder, BEST)):
            with tf.io.gfile.GFile(os.path.join(folder, BEST), "rb") as f:
                arrays = np.load(io.BytesIO(f.read()))
                best = [arrays[f"w{i}"] for i in range(len(arrays.files))]
        self._saves = int(name.split("-")[1])
        return folder, meta, best

    def check(self) -> bool:
        """Refuse a backup of another configuration; the chief records this one's. True when there
        is a save to resume from."""
        path = os.path.join(self.read_dir, CONFIG)
        if tf.io.gfile.exists(path):
            with tf.io.gfile.GFile(path) as f:
                theirs = json.load(f)
            if theirs != self.fingerprint:
                differ = sorted(k for k in set(theirs) | set(self.fingerprint) if theirs.get(k) != self.fingerprint.get(k))
                raise BackupMismatch(f"{self.read_dir} holds the backup of a run with another configuration "
                                     f"({', '.join(differ)} differ); resume that run with its own settings, or "
                                     f"delete the folder or use another --work_dir to start afresh")
        elif self.chief:
            tf.io.gfile.makedirs(self.read_dir)
            fileio.write_bytes(path, json.dumps(self.fingerprint, sort_keys=True).encode())
        if self._state is not None and self.early_stopping is not None:
            _, meta, best = self._state
            if meta.get("early_stopping"):
                self.early_stopping.resume_from(meta["early_stopping"], best)
        return self._state is not None

    def _save(self, epoch: int, batch: int | None) -> None:
        self._saves += 1
        name = f"state-{self._saves:06d}"
        folder = os.path.join(self.write_dir, name)
        if tf.io.gfile.exists(folder):
            tf.io.gfile.rmtree(folder)
        tf.io.gfile.makedirs(folder)
        self.model.save_weights(os.path.join(folder, WEIGHTS))
        es = self.early_stopping
        if es is not None and es.best_weights is not None:
            buf = io.BytesIO()
            np.savez(buf, **{f"w{i}": w for i, w in enumerate(es.best_weights)})
            fileio.write_bytes(os.path.join(folder, BEST), buf.getvalue())
        meta = {"epoch": epoch, "batch": batch, "early_stopping": es.state() if es is not None else None}
        fileio.write_bytes(os.path.join(folder, META), json.dumps(meta).encode())
        fileio.write_bytes(os.path.join(self.write_dir, LATEST), name.encode())   # the save is now complete
        for old in self._saves_in(self.write_dir)[:-KEEP]:
            tf.io.gfile.rmtree(os.path.join(self.write_dir, old))

    # ------------------------------------------------------------------------------ callback
    def on_train_begin(self, logs=None):
        if self._state is None:
            return
        folder, meta, _ = self._state
        if not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(os.path.join(folder, WEIGHTS))
        self.model._initial_epoch = meta["epoch"]   # what Keras' own BackupAndRestore sets for fit
        self._epoch = meta["epoch"]
        self.restored = {"epoch": int(meta["epoch"]),
                         "optimizer_iterations": int(self.model.optimizer.iterations.numpy()),
                         "weights_sha256": weights_digest(self.model),
                         "early_stopping": meta.get("early_stopping")}
        log.info("resumed from %s: epoch %d, optimizer step %d", folder, meta["epoch"],
                 self.restored["optimizer_iterations"])

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq == "epoch":
            return
        self._since_save += 1
        if self._since_save >= self.save_freq:
            self._since_save = 0
            self._save(self._epoch, batch)      # a restart reruns this epoch from these weights

    def on_epoch_end(self, epoch, logs=None):
        self._epoch = epoch + 1
        if self.save_freq == "epoch":
            self._save(epoch + 1, None)

    def on_train_end(self, logs=None):
        # finished (or stopped early, best weights already restored): a restart trains no more
        self._save(int(self.params.get("epochs", self._epoch)), None)

    def delete(self) -> None:
        """Remove the backup (the chief's shared one; another worker's own throwaway folder).
        Call after the model is exported."""
        for directory in {self.write_dir} | ({self.read_dir} if self.chief else set()):
            if tf.io.gfile.exists(directory):
                tf.io.gfile.rmtree(directory)
