"""What an exported model looks like from outside: the contract between the trainer's export
(pipeline/training/export.py), its readers (pipeline/serving/, the Evaluator's metric) and the
Pusher (components/serving_pusher). Plain names, no TensorFlow: every stage may import it.

    EXPORT_BASE/<version>/        version: digits only (seconds since the epoch), as TF Serving reads them
        saved_model.pb, variables/
        assets/labels.txt           the label order of `scores`
        assets/feature_config.pbtxt the FeatureConfig the model was trained on
        assets.extra/tf_serving_warmup_requests
"""
from __future__ import annotations

import os
import re
from typing import Iterable

MODEL_NAME = "fat_tagger"                 # SERVING_ROOT/<model name>/<version>/ (TF Serving's MODEL_NAME)

SERVING_DEFAULT = "serving_default"       # examples: serialized tf.Example [batch]
SERVING_WAVEFORM = "serving_waveform"     # waveform float32 [batch, time], length int32 [batch]
SERVING_AUDIO = "serving_audio"           # audio: WAV file bytes [batch]
SIGNATURE_INPUTS = {SERVING_DEFAULT: ["examples"], SERVING_WAVEFORM: ["waveform", "length"],
                    SERVING_AUDIO: ["audio"]}
SCORES = "scores"                         # every signature's outputs: float32 [batch, labels]
LABELS = "labels"                         # ... and string [batch, labels], the label of each column
SAMPLE_RATE = "sample_rate"               # serving_waveform's and serving_audio's int32 [batch]: the model's rate

LABELS_ASSET = os.path.join("assets", "labels.txt")
FEATURES_ASSET = os.path.join("assets", "feature_config.pbtxt")
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")

_VERSION = re.compile(r"^[0-9]+$")        # ASCII digits only: str.isdigit() also takes "²"


def is_version(name: str) -> bool:
    return bool(_VERSION.match(name.rstrip("/")))


def newest_version(names: Iterable[str]) -> str | None:
    """The highest version folder name among a model folder's entries (None: there is none)."""
    versions = [n.rstrip("/") for n in names if is_version(n)]
    return max(versions, key=int) if versions else None
