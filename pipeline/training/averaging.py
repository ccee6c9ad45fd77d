"""Weight averaging (Polyak / EMA): the averaged weights are the ones validated, chosen by early
stopping and exported, while training steps the raw ones.

The optimizer keeps the averages (Keras' `use_ema`, set from `optimizer.ema_momentum`) and writes
them into the model at the end of `fit`. Two places must see them before that:
- validation: `AveragedValidation` swaps them in for each epoch's evaluation, so `val_lwlrap` is the
  averaged model's score;
- early stopping: `ResumableEarlyStopping` (pipeline/training/resume.py) records its best weights inside
  `averaged_weights`, and restores them after `fit` has written the final averages.

Keras ships `keras.callbacks.SwapEMAWeights` for the first, but it swaps by adding and subtracting
in place, which leaves the raw weights off by float32 rounding after every validation; here the raw
values are copied aside and written back exactly.
"""
from __future__ import annotations

import contextlib

import keras


def _pairs(model):
    """(trainable variable, its moving average) pairs, or [] when the optimizer keeps none yet."""
    opt = getattr(model, "optimizer", None)
    averages = getattr(opt, "_model_variables_moving_average", None)
    if not getattr(opt, "use_ema", False) or not averages:
        return []
    return list(zip(opt._trainable_variables, averages))


@contextlib.contextmanager
def averaged_weights(model):
    """Within the block, the model's trainable weights are the optimizer's moving averages (no-op
    without them); afterwards exactly the raw values they had before."""
    pairs = _pairs(model)
    raw = [v.numpy() for v, _ in pairs]
    for v, average in pairs:
        v.assign(average)
    try:
        yield
    finally:
        for (v, _), value in zip(pairs, raw):
            v.assign(value)


class AveragedValidation(keras.callbacks.Callback):
    """Each validation during `fit` runs on the averaged weights."""

    def __init__(self):
        super().__init__()
        self._block = None

    def on_test_begin(self, logs=None):
        self._block = averaged_weights(self.model)
        self._block.__enter__()

    def on_test_end(self, logs=None):
        if self._block is not None:
            self._block.__exit__(None, None, None)
            self._block = None
