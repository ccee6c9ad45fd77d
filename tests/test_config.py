"""FeatureConfig presets, overrides, validation, text round trips and the manifest's dict."""
import json

import pytest

from pipeline import config


def test_seed_preset_is_the_kernels_features():
    """The seed preset (an empty message: proto defaults) gives the kernel's 636 x 128 log-mels."""
    cfg = config.feature_config("seed")
    assert config.to_text(cfg) == ""
    assert (cfg.sample_rate, cfg.clip_seconds, cfg.n_fft, cfg.hop_length, cfg.n_mels) == (44100, 5.0, 2560, 347, 128)
    assert config.clip_samples(cfg) == 220500
    assert config.n_frames(cfg) == 636
    assert config.mel_shape(cfg) == (636, 128)
    assert not cfg.HasField("fmax")
    assert config.fmax(cfg) == 22050.0
    assert cfg.trim.enabled and cfg.trim.top_db == 60.0
    assert cfg.normalization == config.FeatureConfig.PER_CLIP_STANDARDIZE
    assert cfg.float64_stft  # librosa parity (1e-3 dB) by default


def test_default_argument_is_seed():
    assert config.feature_config() == config.feature_config("seed")


def test_small_preset():
    cfg = config.feature_config("small")
    assert config.clip_samples(cfg) == 32000
    assert config.mel_shape(cfg) == (101, 40)
    assert config.fmax(cfg) == 8000.0


def test_explicit_fmax_is_used():
    assert config.fmax(config.feature_config("seed", "fmax: 8000")) == 8000.0


def test_overrides_merge_over_the_preset():
    """Overrides change only the fields they name, nested messages included."""
    cfg = config.feature_config("small", "n_mels: 64\ntrim { top_db: 40 }\nfloat64_stft: true")
    assert cfg.n_mels == 64 and cfg.float64_stft
    assert cfg.sample_rate == 16000 and cfg.n_fft == 512 and cfg.hop_length == 320  # from the preset
    assert cfg.trim.top_db == 40.0
    assert cfg.trim.enabled and cfg.trim.frame_length == 2048 and cfg.trim.hop_length == 512
    assert config.mel_shape(cfg) == (101, 64)


def test_load_text_merges_file_over_preset(tmp_path):
    path = tmp_path / "features.pbtxt"
    path.write_text("hop_length: 160\nnormalization: NONE\n")
    cfg = config.load_text(str(path), "small")
    assert cfg.hop_length == 160 and cfg.normalization == config.FeatureConfig.NONE
    assert cfg.sample_rate == 16000
    assert config.mel_shape(cfg) == (201, 40)


@pytest.mark.parametrize("preset,overrides,message", [
    ("small", "fmin: 8000", "fmin < fmax"),                   # fmin == fmax (sr/2)
    ("small", "fmin: 9000", "fmin < fmax"),                   # fmin > fmax
    ("seed", "fmin: 500 fmax: 400", "fmin < fmax"),
    ("small", "fmax: 9000", "fmax <= sample_rate/2"),         # above Nyquist
    ("small", "fmin: -1", "0 <= fmin"),
    ("seed", "n_fft: 0", "n_fft"),
    ("seed", "hop_length: -5", "hop_length"),
    ("seed", "n_mels: 0", "n_mels"),
    ("seed", "sample_rate: 0", "sample_rate must be > 0"),
    ("seed", "clip_seconds: 0", "clip_seconds must be > 0"),
    ("seed", "trim { frame_length: 0 }", "trim.frame_length"),
    ("seed", "amin: 0", "amin"),
    ("seed", "normalization_eps: 0", "normalization_eps"),
])
def test_invalid_configs_raise_value_error(preset, overrides, message):
    with pytest.raises(ValueError, match="invalid FeatureConfig") as e:
        config.feature_config(preset, overrides)
    assert message in str(e.value)


def test_disabled_trim_skips_trim_checks():
    cfg = config.feature_config("seed", "trim { enabled: false frame_length: 0 }")
    assert not cfg.trim.enabled


def test_several_problems_are_reported_together():
    with pytest.raises(ValueError) as e:
        config.feature_config("seed", "n_fft: 0 sample_rate: -1")
    assert "n_fft" in str(e.value) and "sample_rate" in str(e.value)


def test_unknown_preset():
    with pytest.raises(ValueError, match=r"unknown preset 'huge'; choose one of .*'seed'.*'small'"):
        config.feature_config("huge")


def test_unknown_field_in_overrides_is_an_error():
    """A typo in a text proto is a ValueError naming the message and the field, not a traceback."""
    with pytest.raises(ValueError, match=r"invalid FeatureConfig text proto: .*n_melz"):
        config.feature_config("small", "n_melz: 3")
    with pytest.raises(ValueError, match=r"invalid TrainerConfig text proto"):
        config.trainer_config("small", "epochs: five")


@pytest.mark.parametrize("preset,overrides", [("seed", ""), ("small", ""),
                                              ("small", "fmax: 7000 trim { enabled: false } normalization: NONE")])
def test_text_round_trip(preset, overrides):
    cfg = config.feature_config(preset, overrides)
    back = config.from_text(config.to_text(cfg))
    assert back == cfg
    assert config.to_text(back) == config.to_text(cfg)
    assert config.mel_shape(back) == config.mel_shape(cfg)


def test_text_with_defaults_spells_out_every_field():
    """What the Evaluator records in MLMD: the blessing it used, whatever later defaults become."""
    text = config.resolved_text(config.BlessingConfig(min_lwlrap=0.2))
    assert config.to_text(config.BlessingConfig()) == ""
    assert text.splitlines() == ["min_lwlrap: 0.2", "baseline_tolerance: 0.01", "baseline: BEST", "gate: INTERVAL",
                                 "confidence: 0.95", "bootstrap_samples: 1000"]
    assert config.from_text(text, config.BlessingConfig) == config.BlessingConfig(
        min_lwlrap=0.2, baseline_tolerance=0.01, baseline="BEST", gate="INTERVAL", confidence=0.95,
        bootstrap_samples=1000)


def test_to_dict_has_defaults_and_derived_values():
    """The manifest's record of the config spells out every default, nested ones too."""
    d = config.to_dict(config.feature_config("seed"))
    json.dumps(d)  # plain data
    assert d["sample_rate"] == 44100 and d["n_fft"] == 2560 and d["hop_length"] == 347
    assert d["fmax"] == 0.0 and d["float64_stft"] is True
    assert d["normalization"] == "PER_CLIP_STANDARDIZE"
    assert d["trim"] == {"enabled": True, "top_db": 60.0, "frame_length": 2048, "hop_length": 512}
    assert d["derived"] == {"clip_samples": 220500, "n_frames": 636, "fmax": 22050.0}
    fields = {f.name for f in config.FeatureConfig.DESCRIPTOR.fields}
    assert fields | {"derived"} == set(d)


def test_to_dict_small_preset_derived():
    d = config.to_dict(config.feature_config("small"))
    assert d["sample_rate"] == 16000 and d["n_mels"] == 40
    assert d["derived"] == {"clip_samples": 32000, "n_frames": 101, "fmax": 8000.0}


def test_serving_config_parses_and_checks_its_own_fields():
    assert config.serving_config("max_batch: 8").max_batch == 8
    assert config.serving_config("").max_batch == 64
    with pytest.raises(ValueError, match="invalid ServingConfig text proto"):
        config.serving_config("max_batch: many")
    with pytest.raises(ValueError, match="max_request_seconds must be > 0; max_batch must be > 0"):
        config.serving_config("max_request_seconds: 0 max_batch: 0")


@pytest.mark.parametrize("text, message", [
    ("warmup_requests: 13", r"longest warm-up clip lasts 62.5 s \(clip_seconds 5 x 12.5\) but max_request_seconds is 60"),
    ("max_request_seconds: 12", r"lasts 12.5 s .* max_request_seconds is 12"),
    ("max_batch: 1", "warm-up requests hold 2 clips but max_batch is 1: raise max_batch or set warmup_requests to 1"),
])
def test_a_serving_config_the_models_own_warmup_breaks_is_refused(text, message):
    """Issue 19 §3: with the seed preset (5 s clips), 13 warm-up requests or a 12 s limit would
    write warm-up requests the model refuses, and TF Serving would then fail to load the version."""
    with pytest.raises(ValueError, match=message):
        config.validate_serving(config.serving_config(text), config.feature_config("seed"))


@pytest.mark.parametrize("text", ["", "warmup_requests: 12", "max_request_seconds: 12.5", "max_batch: 1 warmup_requests: 1",
                                  "warmup_requests: 0 max_request_seconds: 1"])
def test_serving_configs_at_the_edge_are_accepted(text):
    config.validate_serving(config.serving_config(text), config.feature_config("seed"))


def test_the_default_trainer_is_two_members_without_early_stopping_and_the_other_presets_one_model():
    """bench/README.md round six measured this default; the kernel's recipe and the tests' keep one model."""
    d = config.trainer_config("default")
    assert (d.ensemble_size, d.early_stopping_patience, d.epochs) == (2, 0, 30)
    assert [(config.trainer_config(p).ensemble_size, config.trainer_config(p).early_stopping_patience)
            for p in ("seed", "small")] == [(1, 10), (1, 0)]
    assert config.trainer_config("default", "ensemble_size: 1").ensemble_size == 1
