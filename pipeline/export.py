"""The serving export: a versioned SavedModel that TensorFlow Serving loads.

    EXPORT_BASE/<version>/            version = seconds since the epoch, as TF Serving expects
        saved_model.pb, variables/, assets/labels.txt (the label order of the scores)

Signatures:
    serving_default   examples: string [batch] (serialized tf.Example as the Beam job writes them)
                      -> scores: float32 [batch, labels]
    serving_waveform  waveform: float32 [batch, time] (mono, at the model's sample rate, zero-padded)
                      length:   int32   [batch]       (samples of each clip; the rest is ignored)
                      -> scores: float32 [batch, labels]

serving_waveform computes features in the graph with pipeline.features.compute_features, the
very function the Beam job ran, so a clip scores the same by either route (tested to 1e-4).
"""
from __future__ import annotations

import logging
import os
import time

import keras
import tensorflow as tf

from pipeline import config as config_lib
from pipeline import examples, features
from pipeline.model import probabilities

log = logging.getLogger(__name__)


class ServingModule(tf.Module):
    def __init__(self, model: keras.Model, feature_cfg: config_lib.FeatureConfig,
                 trainer_cfg: config_lib.TrainerConfig, labels_path: str):
        super().__init__()
        self.model = model
        self.labels = tf.saved_model.Asset(labels_path)
        self._feature_cfg = feature_cfg
        self._trainer_cfg = trainer_cfg
        self._mel_shape = config_lib.mel_shape(feature_cfg)

    def _scores(self, mel):
        return {"scores": probabilities(self.model(mel, training=False), self._trainer_cfg)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(self, serialized):
        parsed = tf.io.parse_example(serialized, {examples.MEL: examples.parse_spec(self._mel_shape)[examples.MEL]})
        return self._scores(parsed[examples.MEL])

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="waveform"),
                                  tf.TensorSpec([None], tf.int32, name="length")])
    def serve_waveform(self, waveform, length):
        return self._scores(features.compute_features(waveform, length, self._feature_cfg))


def export_saved_model(model: keras.Model, feature_cfg: config_lib.FeatureConfig,
                       trainer_cfg: config_lib.TrainerConfig, labels_path: str, export_base: str,
                       version: int | str | None = None) -> str:
    """Write EXPORT_BASE/<version>/ and return its path (version: seconds since the epoch unless
    given; TFX's run_fn gives the last part of its serving_model_dir).

    Locally the SavedModel is written under a temporary name and renamed, so TF Serving, which
    polls EXPORT_BASE for new versions, never sees half a model. Object stores have no atomic
    rename; there the version is written in place.
    """
    version = version or int(time.time())
    final = os.path.join(export_base, str(version))
    if tf.io.gfile.exists(final):
        raise FileExistsError(f"{final} exists; versions are never overwritten")
    local = "://" not in export_base
    target = os.path.join(export_base, f".tmp-{version}") if local else final
    module = ServingModule(model, feature_cfg, trainer_cfg, labels_path)
    tf.saved_model.save(module, target, signatures={"serving_default": module.serve_examples,
                                                    "serving_waveform": module.serve_waveform})
    if local:
        os.rename(target, final)
    log.info("exported SavedModel %s", final)
    return final
