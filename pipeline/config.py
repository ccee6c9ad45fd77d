"""Feature configuration: presets, loading from text protos, and the values derived from it.

The proto (proto/feature_config.proto) carries the seed kernel's values as its defaults, so the
"seed" preset is simply an empty message. The "small" preset keeps tests and the demo fast on
two CPU cores. Everything that depends on the config (window length, frame count, fmax) is
derived here, once, so the Beam job, the input pipeline and the serving graph cannot disagree.
"""
from __future__ import annotations

import json

from google.protobuf import json_format, text_format

from pipeline.protos import feature_config_pb2

FeatureConfig = feature_config_pb2.FeatureConfig

_SMALL = """
sample_rate: 16000
clip_seconds: 2.0
n_fft: 512
hop_length: 320
n_mels: 40
fmin: 20
"""

PRESETS = {
    "seed": "",
    "small": _SMALL,
}


def feature_config(preset: str = "seed", overrides: str = "") -> FeatureConfig:
    """The preset's config with `overrides` (text-proto fields) merged on top."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    cfg = FeatureConfig()
    text_format.Parse(PRESETS[preset], cfg)
    if overrides:
        text_format.Merge(overrides, cfg)
    validate(cfg)
    return cfg


def load_text(path: str, preset: str = "seed") -> FeatureConfig:
    """A FeatureConfig from a .pbtxt file, merged over `preset`."""
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as f:
        return feature_config(preset, f.read().decode("utf-8"))


def clip_samples(cfg: FeatureConfig) -> int:
    return int(round(cfg.sample_rate * cfg.clip_seconds))


def n_frames(cfg: FeatureConfig) -> int:
    """Frames of a centred STFT over the fixed-length window (librosa's center=True)."""
    return 1 + clip_samples(cfg) // cfg.hop_length


def fmax(cfg: FeatureConfig) -> float:
    return float(cfg.fmax) if cfg.fmax > 0 else cfg.sample_rate / 2.0


def mel_shape(cfg: FeatureConfig) -> tuple[int, int]:
    """(frames, mels): the shape of one example's features."""
    return n_frames(cfg), cfg.n_mels


def validate(cfg: FeatureConfig) -> None:
    """Reject configs that would silently produce garbage features."""
    problems = []
    if cfg.sample_rate <= 0:
        problems.append("sample_rate must be > 0")
    if cfg.clip_seconds <= 0:
        problems.append("clip_seconds must be > 0")
    if cfg.n_fft <= 0 or cfg.hop_length <= 0 or cfg.n_mels <= 0:
        problems.append("n_fft, hop_length and n_mels must be > 0")
    if not 0 <= cfg.fmin < fmax(cfg) <= cfg.sample_rate / 2.0:
        problems.append(f"need 0 <= fmin < fmax <= sample_rate/2, got fmin={cfg.fmin} fmax={fmax(cfg)}")
    if cfg.trim.enabled and (cfg.trim.frame_length <= 0 or cfg.trim.hop_length <= 0):
        problems.append("trim.frame_length and trim.hop_length must be > 0")
    if cfg.amin <= 0 or cfg.top_db <= 0 or cfg.normalization_eps <= 0:
        problems.append("amin, top_db and normalization_eps must be > 0")
    if problems:
        raise ValueError("invalid FeatureConfig: " + "; ".join(problems))


def to_text(cfg: FeatureConfig) -> str:
    return text_format.MessageToString(cfg)


def from_text(text: str) -> FeatureConfig:
    return text_format.Parse(text, FeatureConfig())


def _with_defaults_set(msg):
    """A copy of a proto2 message with every default written out explicitly, recursively."""
    out = type(msg)()
    for field in msg.DESCRIPTOR.fields:
        if field.message_type is not None:
            getattr(out, field.name).CopyFrom(_with_defaults_set(getattr(msg, field.name)))
        else:
            setattr(out, field.name, getattr(msg, field.name))
    return out


def to_dict(cfg: FeatureConfig) -> dict:
    """Every field, defaults included, plus the derived shape: what the manifest records."""
    d = json.loads(json_format.MessageToJson(_with_defaults_set(cfg), preserving_proto_field_name=True))
    d["derived"] = {"clip_samples": clip_samples(cfg), "n_frames": n_frames(cfg), "fmax": fmax(cfg)}
    return d
