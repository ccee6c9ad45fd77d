"""One line per epoch, for a person watching a long training run:

    epoch 7/30 (12 steps): loss 0.412, val_loss 0.398, val_lwlrap 0.731 (best 0.744 at epoch 5); 12.3 s/epoch, ~4 min left at most

"at most": early stopping may end the run sooner. Steps are the batches the epoch trained,
counted here, so they show where Keras was not told an epoch's length too (multi-worker input, a
noisy warm-up). Logged by every worker to its own log, through Python logging, so it shows at the
commands' default level where Keras' own progress bars (verbose=1) would flood a log file and
verbose=2 says nothing of what is left.
"""
from __future__ import annotations

import logging
import time

import keras

log = logging.getLogger("fatp.train")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class EpochProgress(keras.callbacks.Callback):
    def __init__(self, epochs: int, monitor: str = "val_lwlrap"):
        super().__init__()
        self._epochs, self._monitor = epochs, monitor
        self._best, self._best_epoch, self._seconds, self._t0 = None, None, [], 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._t0, self._steps = time.time(), 0

    def on_train_batch_end(self, batch, logs=None):
        self._steps += 1

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self._seconds.append(time.time() - self._t0)
        value = logs.get(self._monitor)
        if value is not None and (self._best is None or value > self._best):
            self._best, self._best_epoch = float(value), epoch + 1
        shown = ", ".join(f"{k} {float(v):.4g}" for k, v in logs.items() if k in ("loss", "val_loss", self._monitor))
        best = f" (best {self._best:.4g} at epoch {self._best_epoch})" if self._best is not None else ""
        per_epoch = sum(self._seconds[-3:]) / len(self._seconds[-3:])     # the last few: the first one traces
        left = self._epochs - (epoch + 1)
        eta = f", ~{_duration(per_epoch * left)} left at most" if left else ""
        log.info("epoch %d/%d (%d steps): %s%s; %.1f s/epoch%s", epoch + 1, self._epochs, self._steps,
                 shown, best, per_epoch, eta)
