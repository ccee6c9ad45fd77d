"""Staged training on FAT2019's two sources (NoisyConfig.warmup_epochs): the first epochs on
curated + noisy clips, the rest on curated clips alone (fine-tuning), as the strongest FAT2019
write-ups trained.

One model.fit, one input: the training dataset (dataset.make_dataset) chooses each epoch's
batches from both sources or from the curated clips alone by reading `NoisyPhase.on`, which this
callback sets at the start of every epoch, before Keras makes that epoch's iterator (the input
has no declared length then, so Keras makes one per epoch). A run resumed from a backup starts
at its saved epoch, so it lands in the right phase.
"""
from __future__ import annotations

import logging

import keras
import tensorflow as tf

log = logging.getLogger("fatp.train")


class NoisyPhase(keras.callbacks.Callback):
    def __init__(self, warmup_epochs: int):
        super().__init__()
        self.warmup_epochs = warmup_epochs
        self.on = tf.Variable(True, trainable=False, name="noisy_phase")
        self._logged = None

    def on_epoch_begin(self, epoch, logs=None):
        warm = epoch < self.warmup_epochs
        self.on.assign(warm)
        if warm != self._logged:
            log.info("epoch %d: %s", epoch + 1, f"warm-up on curated + noisy clips until epoch {self.warmup_epochs}"
                     if warm else "fine-tuning on curated clips only")
            self._logged = warm
