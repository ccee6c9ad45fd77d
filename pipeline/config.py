"""Configs as protos: presets, loading from text protos, and the values derived from them.

FeatureConfig (proto/feature_config.proto) carries the seed kernel's values as its defaults, so
the "seed" feature preset is simply an empty message; "small" keeps tests and the demo fast on two
CPU cores. Everything that depends on it (window length, frame count, fmax) is derived here, once,
so the Beam job, the input pipeline and the serving graph cannot disagree.

TrainerConfig (proto/trainer_config.proto) carries the project's measured defaults; its "seed"
preset is the Kaggle kernel's recipe and "small" a tiny model for tests.

The other stages' configs live here too, so there is one place to look: ServingConfig (the
export's request limits, proto/serving_config.proto), BlessingConfig (the Evaluator's bar,
proto/evaluator_config.proto) and AudioExampleGenConfig (the feature job inside TFX,
proto/example_gen_config.proto).
"""
from __future__ import annotations

import json

from google.protobuf import json_format, text_format

from pipeline.protos import (evaluator_config_pb2, example_gen_config_pb2, feature_config_pb2, serving_config_pb2,
                             trainer_config_pb2)

FeatureConfig = feature_config_pb2.FeatureConfig
TrainerConfig = trainer_config_pb2.TrainerConfig
AugmentConfig = trainer_config_pb2.AugmentConfig
NoisyConfig = trainer_config_pb2.NoisyConfig
ServingConfig = serving_config_pb2.ServingConfig
BlessingConfig = evaluator_config_pb2.BlessingConfig
AudioExampleGenConfig = example_gen_config_pb2.AudioExampleGenConfig

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

TRAINER_PRESETS = {
    "default": "",
    # The Kaggle kernel: BiLSTM 256 on the mel frames (no conv stem), softmax, Adam(0.005,
    # beta_1=0.1, beta_2=0.001, amsgrad), batch 1024, up to 500 epochs, early stopping after 10
    # epochs without improvement, no mixup, one model.
    "seed": """
        model { lstm_units: 256 dense_units: 400 dropout: 0.2 head: SOFTMAX conv_blocks: 0 }
        optimizer { name: "adam" learning_rate: 0.005 beta_1: 0.1 beta_2: 0.001 amsgrad: true clipnorm: 0 }
        augment { mixup_alpha: 0 }
        batch_size: 1024 epochs: 500 early_stopping_patience: 10 ensemble_size: 1
    """,
    "small": """
        model { lstm_units: 8 dense_units: 16 }
        batch_size: 8 epochs: 2 early_stopping_patience: 0 shuffle_buffer: 64 backup_every_steps: 0
        ensemble_size: 1
    """,
}


def _from_preset(message_cls, presets: dict, preset: str, overrides: str):
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(presets)}")
    cfg = message_cls()
    text_format.Parse(presets[preset], cfg)
    if overrides:
        try:
            text_format.Merge(overrides, cfg)
        except text_format.ParseError as e:
            raise ValueError(f"invalid {message_cls.__name__} text proto: {e}") from None
    return cfg


def feature_config(preset: str = "seed", overrides: str = "") -> FeatureConfig:
    """The preset's config with `overrides` (text-proto fields) merged on top."""
    cfg = _from_preset(FeatureConfig, PRESETS, preset, overrides)
    validate(cfg)
    return cfg


def trainer_config(preset: str = "default", overrides: str = "") -> TrainerConfig:
    cfg = _from_preset(TrainerConfig, TRAINER_PRESETS, preset, overrides)
    validate_trainer(cfg)
    return cfg


def load_text(path: str, preset: str = "seed") -> FeatureConfig:
    """A FeatureConfig from a .pbtxt file, merged over `preset`."""
    from pipeline.fileio import read_text

    return feature_config(preset, read_text(path))


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


def validate_trainer(cfg: TrainerConfig) -> None:
    problems = []
    if cfg.model.lstm_units <= 0 or cfg.model.dense_units <= 0:
        problems.append("model.lstm_units and model.dense_units must be > 0")
    if cfg.model.conv_blocks < 0 or cfg.model.conv_channels <= 0:
        problems.append("model.conv_blocks must be >= 0 and model.conv_channels > 0")
    if not 0 <= cfg.model.dropout < 1:
        problems.append("model.dropout must be in [0, 1)")
    if cfg.optimizer.name not in ("adam", "adamw", "sgd", "rmsprop"):
        problems.append(f"optimizer.name {cfg.optimizer.name!r} is not adam, adamw, sgd or rmsprop")
    if cfg.optimizer.learning_rate <= 0:
        problems.append("optimizer.learning_rate must be > 0")
    if not 0 <= cfg.optimizer.ema_momentum < 1:
        problems.append("optimizer.ema_momentum must be in [0, 1)")
    if cfg.batch_size <= 0 or cfg.epochs <= 0:
        problems.append("batch_size and epochs must be > 0")
    if cfg.ensemble_size < 1:
        problems.append("ensemble_size must be >= 1 (1: one model)")
    if cfg.augment.mixup_alpha < 0:
        problems.append("augment.mixup_alpha must be >= 0")
    if not 0 <= cfg.augment.freq_warp < 0.5:
        problems.append("augment.freq_warp must be in [0, 0.5)")
    if not 0 <= cfg.augment.time_shift <= 0.5:
        problems.append("augment.time_shift must be in [0, 0.5]")
    if not 0 <= cfg.augment.resized_crop_min < 1:
        problems.append("augment.resized_crop_min must be in [0, 1)")
    if not cfg.noisy.loss_weight > 0:
        problems.append("noisy.loss_weight must be > 0 (to train on curated clips only, run the feature job "
                        "with --no_noisy)")
    if not 0 <= cfg.noisy.batch_share < 1:
        problems.append("noisy.batch_share must be in [0, 1)")
    if not 0 <= cfg.noisy.label_smoothing < 1:
        problems.append("noisy.label_smoothing must be in [0, 1)")
    if not 0 <= cfg.noisy.warmup_epochs < cfg.epochs:
        problems.append("noisy.warmup_epochs must be in [0, epochs): the epochs after it fine-tune on curated clips")
    if problems:
        raise ValueError("invalid TrainerConfig: " + "; ".join(problems))


def serving_config(text: str = "") -> ServingConfig:
    """A ServingConfig from its text proto (its own checks; `validate_serving` checks it against
    the model's features)."""
    try:
        cfg = text_format.Parse(text or "", ServingConfig())
    except text_format.ParseError as e:
        raise ValueError(f"invalid ServingConfig text proto: {e}") from None
    problems = []
    if cfg.max_request_seconds <= 0:
        problems.append("max_request_seconds must be > 0")
    if cfg.max_batch <= 0:
        problems.append("max_batch must be > 0")
    if cfg.warmup_requests < 0:
        problems.append("warmup_requests must be >= 0")
    if problems:
        raise ValueError("invalid ServingConfig: " + "; ".join(problems))
    return cfg


def warmup_shapes(features: FeatureConfig, count: int) -> list[tuple[int, int]]:
    """(clips, samples per clip) of the export's `count` warm-up requests (export.warmup_requests)."""
    return [(1 + i % 2, int(features.sample_rate * features.clip_seconds * (0.5 + i))) for i in range(count)]


def validate_serving(cfg: ServingConfig, features: FeatureConfig) -> None:
    """Refuse a ServingConfig whose warm-up requests the model itself would refuse: TF Serving
    replays them when it loads a version and fails to load it if one fails."""
    serving_config(to_text(cfg))
    shapes = warmup_shapes(features, cfg.warmup_requests)
    if not shapes:
        return
    clips, samples = max(c for c, _ in shapes), max(n for _, n in shapes)
    problems = []
    if samples > int(cfg.max_request_seconds * features.sample_rate):
        problems.append(f"its longest warm-up clip lasts {samples / features.sample_rate:g} s (clip_seconds "
                        f"{features.clip_seconds:g} x {cfg.warmup_requests - 0.5:g}) but max_request_seconds is "
                        f"{cfg.max_request_seconds:g}: raise max_request_seconds or lower warmup_requests")
    if clips > cfg.max_batch:
        problems.append(f"its warm-up requests hold {clips} clips but max_batch is {cfg.max_batch}: raise "
                        f"max_batch or set warmup_requests to 1")
    if problems:
        raise ValueError("invalid ServingConfig for this model: " + "; ".join(problems))


def example_gen_config(text: str = "") -> AudioExampleGenConfig:
    """The Audio ExampleGen's config from its text proto, its feature config checked."""
    try:
        cfg = text_format.Parse(text or "", AudioExampleGenConfig())
    except text_format.ParseError as e:
        raise ValueError(f"invalid AudioExampleGenConfig text proto: {e}") from None
    validate(cfg.features)
    return cfg


def to_text(cfg) -> str:
    return text_format.MessageToString(cfg)


def from_text(text: str, message_cls=FeatureConfig):
    return text_format.Parse(text, message_cls())


def with_defaults(msg):
    """A copy of a proto2 message with every default written out explicitly, recursively."""
    out = type(msg)()
    for field in msg.DESCRIPTOR.fields:
        if field.message_type is not None:
            getattr(out, field.name).CopyFrom(with_defaults(getattr(msg, field.name)))
        else:
            setattr(out, field.name, getattr(msg, field.name))
    return out


def resolved_text(cfg) -> str:
    """The text proto with every default written out: what a cache key must hold, since a
    changed default changes the result but not the text of the fields that were set."""
    return to_text(with_defaults(cfg))


def to_dict(cfg) -> dict:
    """Every field, defaults included (plus, for features, the derived shape): what manifests record."""
    d = json.loads(json_format.MessageToJson(with_defaults(cfg), preserving_proto_field_name=True))
    if isinstance(cfg, FeatureConfig):
        d["derived"] = {"clip_samples": clip_samples(cfg), "n_frames": n_frames(cfg), "fmax": fmax(cfg)}
    return d
