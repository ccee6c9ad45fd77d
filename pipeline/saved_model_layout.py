"""What an exported model looks like from outside: the contract between the trainer's export
(pipeline/training/export.py), its readers (pipeline/serving/, the Evaluator's metric) and the
Pusher (components/serving_pusher). Plain names, no TensorFlow: every stage may import it.

    EXPORT_BASE/<version>/        version: digits only (seconds since the epoch), as TF Serving reads them
    EXPORT_BASE/.tmp-<kind>-<version>-<pid>-<random>/   a version being written (export, push), renamed
                                  into place when whole; TF Serving ignores it (not all digits)
        saved_model.pb, variables/
        assets/labels.txt           the label order of `scores`
        assets/feature_config.pbtxt the FeatureConfig the model was trained on
        assets/serving_config.pbtxt the ServingConfig it enforces (max_batch: every caller's batch limit)
        assets.extra/tf_serving_warmup_requests
"""
from __future__ import annotations

import os
import re
import secrets
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
SERVING_ASSET = os.path.join("assets", "serving_config.pbtxt")
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")

_VERSION = re.compile(r"^[0-9]+$")        # ASCII digits only: str.isdigit() also takes "²"


def is_version(name: str) -> bool:
    return bool(_VERSION.match(name.rstrip("/")))


def newest_version(names: Iterable[str]) -> str | None:
    """The highest version folder name among a model folder's entries (None: there is none)."""
    versions = [n.rstrip("/") for n in names if is_version(n)]
    return max(versions, key=int) if versions else None


def next_version(names: Iterable[str], now: float) -> int:
    """The version a new export or push takes among a model folder's entries: the clock's second,
    or the newest version + 1 when that is later. TF Serving serves the highest number, so a new
    version must be above every other: two within one second, or a clock behind the newest
    version (another host's clock, a version copied by hand), would otherwise collide or never
    be served."""
    newest = newest_version(names)
    return max(int(now), int(newest) + 1 if newest is not None else 0)


def temp_folders(names: Iterable[str]) -> list[str]:
    """The temp_name folders among a model folder's entries (writers in progress, or dead ones')."""
    return sorted(n.rstrip("/") for n in names if n.startswith(".tmp-"))


def temp_name(version: int | str, kind: str) -> str:
    """A folder name beside the versions for one writer of `version` (kind: "export", "push"): not
    all digits, so TF Serving ignores it, and unique to this process and call, so a writer only
    ever removes its own (never another's in progress, nor a crashed one's: left for a person)."""
    return f".tmp-{kind}-{version}-{os.getpid()}-{secrets.token_hex(4)}"
