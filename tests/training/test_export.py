"""pipeline/training/export.py through the path TF Serving takes: the TF1 Session loader (tests/serving_loader.py)
and TensorFlow's own `saved_model_cli run`; warm-up requests replayed; bad requests refused in the
graph with INVALID_ARGUMENT and a readable message."""
import io
import os
import subprocess
import time

import keras
import numpy as np
import pytest
import soundfile as sf
import tensorflow as tf

from pipeline.features import audio as audio_lib
from pipeline import config
from pipeline.data import demo_data
from pipeline.data import example_schema as examples
from pipeline.training import export
from pipeline.features import feature_fn as features
from pipeline.training import model as model_lib
from tests.serving_loader import ServedModel

pytestmark = pytest.mark.slow   # a model exported and served end to end
FEATURES = config.feature_config("small")
# serving_audio's DecodeLimits lowered so files past them stay small: 40 s mono at 16 kHz, 2 MB
FEATURES.limits.max_source_samples, FEATURES.limits.max_file_bytes = 40 * 16000, 2_000_000
TRAINER = config.trainer_config("small")
SHAPE = config.mel_shape(FEATURES)
SR = FEATURES.sample_rate


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small model (seeded random weights: its scores depend on the input) exported with a
    40-second request limit and a batch cap of 5 (the clips here: every request below is at the
    cap), its Session-loaded twin and a few real clips."""
    root = tmp_path_factory.mktemp("export")
    keras.utils.set_random_seed(7)
    model = model_lib.build_model(SHAPE, 80, TRAINER)
    labels = root / "labels.txt"
    labels.write_text("\n".join(demo_data.LABELS) + "\n")
    path = export.export_saved_model(model, FEATURES, TRAINER, str(labels), str(root / "base"),
                                     serving_cfg=config.ServingConfig(max_request_seconds=40, max_batch=5))
    rng = np.random.default_rng(1)
    clips = [demo_data.make_clip([k, (k * 7) % 80], SR, rng).astype(np.float32) for k in range(5)]
    waveform, length = features.pad_batch(clips)
    mel = features.compute_features(waveform, length, FEATURES).numpy()
    serialized = np.array([examples.serialize(f"c{i}.wav", [], m, len(c) / SR)
                           for i, (m, c) in enumerate(zip(mel, clips))], dtype=object)
    keras_scores = model_lib.probabilities(model(mel, training=False), TRAINER).numpy()
    served = ServedModel(path)
    yield dict(root=root, path=path, model=model, clips=clips, waveform=waveform, length=length, mel=mel,
               serialized=serialized, keras_scores=keras_scores, served=served, labels=labels)
    served.close()


def test_both_signatures_run_under_the_tf_serving_loader_and_agree_with_keras(exported):
    served = exported["served"]
    assert set(served.signatures) >= {"serving_default", "serving_waveform"}
    by_example = served.run("serving_default", examples=exported["serialized"])["scores"]
    by_wave = served.run("serving_waveform", waveform=exported["waveform"], length=exported["length"])["scores"]
    assert by_example.shape == (5, 80) and by_example.dtype == np.float32
    labels = served.run("serving_waveform", waveform=exported["waveform"], length=exported["length"])["labels"]
    assert labels.shape == (5, 80) and [x.decode() for x in labels[4]] == demo_data.LABELS
    np.testing.assert_allclose(by_example, exported["keras_scores"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(by_wave, exported["keras_scores"], rtol=0, atol=1e-5)
    assert np.ptp(by_example, axis=0).max() > 1e-4          # scores depend on the clip: not vacuous


@pytest.mark.parametrize("signature", ["serving_default", "serving_waveform", "serving_audio"])
def test_saved_model_cli_runs_every_signature(exported, tmp_path, signature):
    """TensorFlow's own tool loads the SavedModel as TF Serving does and runs it by tensor name;
    string inputs go in as .npy object arrays (it loads them with allow_pickle)."""
    wavs = np.array([_wav(c, SR) for c in exported["clips"]], dtype=object)
    inputs = {"serving_default": {"examples": exported["serialized"]},
              "serving_waveform": {"waveform": exported["waveform"], "length": exported["length"]},
              "serving_audio": {"audio": wavs}}[signature]
    for name, value in inputs.items():
        np.save(tmp_path / f"{name}.npy", value, allow_pickle=True)
    out = tmp_path / "out"
    proc = subprocess.run(["saved_model_cli", "run", "--dir", exported["path"], "--tag_set", "serve",
                           "--signature_def", signature,
                           "--inputs", ";".join(f"{k}={tmp_path / k}.npy" for k in inputs),
                           "--outdir", str(out)],
                          capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    want = exported["keras_scores"]
    if signature == "serving_audio":        # the clips at the model's rate as 16-bit PCM: the decoded samples
        clips = [sf.read(io.BytesIO(w), dtype="float32")[0] for w in wavs]
        mel = features.compute_features(*features.pad_batch(clips), FEATURES)
        want = model_lib.probabilities(exported["model"](mel, training=False), TRAINER).numpy()
    np.testing.assert_allclose(np.load(out / "scores.npy"), want, rtol=0, atol=1e-5)


def test_layout_labels_asset_and_no_temporary_version(exported):
    base = exported["root"] / "base"
    versions = os.listdir(base)
    assert len(versions) == 1 and versions[0].isdigit() and exported["path"] == str(base / versions[0])
    assert (base / versions[0] / "assets" / "labels.txt").read_text() == exported["labels"].read_text()
    assert config.from_text((base / versions[0] / "assets" / "feature_config.pbtxt").read_text()) == FEATURES
    with pytest.raises(FileExistsError, match="never overwritten"):
        export.export_saved_model(exported["model"], FEATURES, TRAINER, str(exported["labels"]), str(base),
                                  version=versions[0])


def _export_again(exported, base, **kw):
    return export.export_saved_model(exported["model"], FEATURES, TRAINER, str(exported["labels"]), str(base),
                                     serving_cfg=config.ServingConfig(warmup_requests=0), **kw)


def test_another_exports_temporary_folder_is_never_removed(exported, tmp_path):
    """Before, an export of version V deleted EXPORT_BASE/.tmp-V, which may be another export of
    V in progress (or a folder of someone else's); now each export writes to a folder of its own."""
    base = tmp_path / "base"
    theirs = [base / ".tmp-1700000000", base / ".tmp-export-1700000000-1-other"]
    for folder in theirs:
        folder.mkdir(parents=True)
        (folder / "saved_model.pb").write_bytes(b"in progress")
    path = _export_again(exported, base, version=1700000000)
    assert path == str(base / "1700000000") and os.path.isfile(os.path.join(path, "saved_model.pb"))
    for folder in theirs:
        assert (folder / "saved_model.pb").read_bytes() == b"in progress"
    assert sorted(os.listdir(base)) == sorted(["1700000000"] + [f.name for f in theirs])


def test_an_export_without_a_version_goes_above_the_newest(exported, tmp_path):
    """A newest version ahead of the clock (another host's clock, a version copied by hand): the
    export takes the next number, not the clock's lower one, which TF Serving would never serve."""
    base = tmp_path / "base"
    ahead = int(time.time()) + 3600
    (base / str(ahead)).mkdir(parents=True)
    assert _export_again(exported, base) == str(base / str(ahead + 1))


def test_warmup_requests_replay_through_the_tf_serving_loader(exported):
    from tensorflow_serving.apis import prediction_log_pb2

    path = os.path.join(exported["path"], "assets.extra", "tf_serving_warmup_requests")
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(path)]
    signatures = [log.predict_log.request.model_spec.signature_name for log in logs]
    assert [signatures.count(s) for s in ("serving_default", "serving_waveform", "serving_audio")] == [3, 3, 3]
    served = exported["served"]
    for log in logs:
        request = log.predict_log.request
        inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        scores = served.run(request.model_spec.signature_name, **inputs)["scores"]
        if request.model_spec.signature_name == "serving_waveform":
            mel = features.compute_features(inputs["waveform"], inputs["length"], FEATURES)
        elif request.model_spec.signature_name == "serving_audio":     # at the model's rate: no resampling
            clips = [sf.read(io.BytesIO(b), dtype="float32")[0] for b in inputs["audio"]]
            mel = features.compute_features(*features.pad_batch(clips), FEATURES)
        else:
            mel = tf.io.parse_example(inputs["examples"], examples.parse_spec(SHAPE))[examples.MEL]
        expected = model_lib.probabilities(exported["model"](mel, training=False), TRAINER).numpy()
        np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-5)


def _wave(batch=2, n=SR):
    return np.full((batch, n), 0.1, np.float32), np.full([batch], n, np.int32)


def _bad_waveform_requests():
    w, n = _wave()
    nan = w.copy()
    nan[1, 100] = np.nan
    inf = w.copy()
    inf[0, 5] = -np.inf
    return {
        "empty waveform": (dict(waveform=np.zeros((2, 0), np.float32), length=np.zeros(2, np.int32)),
                           "waveform is empty"),
        "no clips": (dict(waveform=np.zeros((0, 10), np.float32), length=np.zeros(0, np.int32)), "holds no clips"),
        "negative length": (dict(waveform=w, length=np.array([SR, -1], np.int32)), "length must not be negative"),
        "length past the time axis": (dict(waveform=w, length=np.array([SR, SR + 1], np.int32)),
                                      "length exceeds the time axis of waveform"),
        "batch sizes differ": (dict(waveform=w, length=n[:1]), "same batch size"),
        "NaN sample": (dict(waveform=nan, length=n), "NaN or Inf"),
        "Inf sample": (dict(waveform=inf, length=n), "NaN or Inf"),
        "too long": (dict(zip(("waveform", "length"), _wave(1, 40 * SR + 1))), r"longer than 40 s \(640000 samples"),
    }


@pytest.mark.parametrize("case", list(_bad_waveform_requests()))
def test_bad_waveform_requests_are_refused_with_a_reason(exported, case):
    inputs, message = _bad_waveform_requests()[case]
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        exported["served"].run("serving_waveform", **inputs)


def test_the_longest_accepted_request_is_scored(exported):
    w, n = _wave(1, 40 * SR)
    assert exported["served"].run("serving_waveform", waveform=w, length=n)["scores"].shape == (1, 80)


@pytest.mark.parametrize("signature", ["serving_default", "serving_waveform", "serving_audio"])
def test_every_signature_scores_a_request_at_max_batch_and_refuses_one_past_it(exported, signature):
    """ServingConfig.max_batch bounds the clips of one request, so a request's memory is bounded by
    the config (max_batch x max_request_seconds): 5 clips are scored, 6 refused before any work."""
    clips = exported["clips"] + exported["clips"][:1]
    waveform, length = features.pad_batch(clips)
    requests = {"serving_default": lambda k: dict(examples=np.concatenate([exported["serialized"]] * 2)[:k]),
                "serving_waveform": lambda k: dict(waveform=waveform[:k], length=length[:k]),
                "serving_audio": lambda k: dict(audio=np.array([_wav(c, SR) for c in clips[:k]], dtype=object))}
    assert exported["served"].run(signature, **requests[signature](5))["scores"].shape == (5, 80)
    what = {"serving_default": "examples", "serving_waveform": "clips", "serving_audio": "files"}[signature]
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=rf"holds more than 5 {what} \(ServingConfig.max_batch\); split it"):
        exported["served"].run(signature, **requests[signature](6))


def test_an_export_whose_warmup_the_model_would_refuse_is_refused_before_writing(exported, tmp_path):
    """TF Serving replays the warm-up requests on load and fails the version if one fails: a
    ServingConfig that makes them too long or too large for its own limits is refused, and
    nothing is written."""
    for serving, message in [(config.ServingConfig(max_request_seconds=4.9), r"lasts 5 s .* max_request_seconds is 4.9"),
                             (config.ServingConfig(max_batch=1), "hold 2 clips but max_batch is 1")]:
        with pytest.raises(ValueError, match=message):
            export.export_saved_model(exported["model"], FEATURES, TRAINER, str(exported["labels"]),
                                      str(tmp_path / "base"), serving_cfg=serving)
    assert not (tmp_path / "base").exists()


def _example(**features_):
    feats = {k: tf.train.Feature(float_list=tf.train.FloatList(value=v)) for k, v in features_.items()}
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


@pytest.mark.parametrize("case", ["no mel", "short mel", "long mel", "no examples", "NaN mel", "Inf mel"])
def test_bad_example_requests_are_refused_with_a_reason(exported, case):
    """Through TF Serving's Session loader. A mel of NaN or Inf (no Beam job writes one: its
    features are normalized finite values) is refused, not answered with ordinary-looking scores."""
    size = SHAPE[0] * SHAPE[1]
    good = exported["serialized"][0]
    batch = {"no mel": [good, _example(source_seconds=[1.0])],
             "short mel": [_example(mel=[0.0] * (size - 1)), good],
             "long mel": [good, _example(mel=[0.0] * (size + 40))],
             "no examples": [],
             "NaN mel": [good, _example(mel=[float("nan")] * size)],
             "Inf mel": [_example(mel=[0.0] * (size - 1) + [float("inf")]), good]}[case]
    message = {"no examples": "holds no examples", "NaN mel": "NaN or Inf", "Inf mel": "NaN or Inf"}.get(
        case, f"float feature mel of 101 x 40 = {size} values")
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        exported["served"].run("serving_default", examples=np.array(batch, dtype=object))


# ------------------------------------------------------------------------------ serving_audio

def _wav(clip, rate, subtype="PCM_16"):
    buf = io.BytesIO()
    sf.write(buf, clip, rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def test_serving_audio_at_the_models_rate_equals_serving_waveform(exported):
    """No resampling: decode_wav's samples are soundfile's (int16 / 32768), channels averaged."""
    rng = np.random.default_rng(3)
    mono = demo_data.make_clip([5, 9], SR, rng).astype(np.float32)
    stereo = np.stack([mono, 0.5 * mono[::-1]], axis=1)
    wavs = [_wav(mono, SR), _wav(stereo, SR)]
    decoded = [audio_lib.decode(w, SR)[0] for w in wavs]
    served = exported["served"]
    by_audio = served.run("serving_audio", audio=np.array(wavs, dtype=object))["scores"]
    by_wave = served.run("serving_waveform", **dict(zip(("waveform", "length"), features.pad_batch(decoded))))["scores"]
    np.testing.assert_allclose(by_audio, by_wave, rtol=0, atol=1e-6)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_serving_audio_resamples_close_to_the_beam_path(exported, rate):
    """Other rates: in-graph resampling with soxr HQ's response vs the Beam job's soxr HQ. On these
    synthetic clips and this untrained model the scores agree to 1e-4 (real FSDD clips with a
    trained model: bench_serving_audio.py, BUILD_NOTES.md)."""
    rng = np.random.default_rng(rate)
    wavs = [_wav(demo_data.make_clip([k, 40 + k], rate, rng), rate) for k in range(3)]
    beam = [audio_lib.decode(w, SR)[0] for w in wavs]
    served = exported["served"]
    by_audio = served.run("serving_audio", audio=np.array(wavs, dtype=object))["scores"]
    by_beam = served.run("serving_waveform", **dict(zip(("waveform", "length"), features.pad_batch(beam))))["scores"]
    assert np.abs(by_audio - by_beam).max() < 1e-4


def _wav_header(rate, samples, channels=1):
    """A 16-bit PCM WAV file written by hand: any rate a header can hold, as a client could send."""
    import struct

    data = np.zeros(samples * channels, "<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * channels * 2 & 0xFFFFFFFF, channels * 2, 16)
    return (b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data)) + b"WAVE"
            + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data)


def test_a_hand_written_wav_header_decodes(exported):
    """The helper below makes valid files: a plausible one is scored."""
    files = np.array([_wav_header(SR, SR)], dtype=object)
    assert exported["served"].run("serving_audio", audio=files)["scores"].shape == (1, 80)


@pytest.mark.parametrize("case", ["not a wav", "24-bit", "too long", "no files", "rate too high", "rate too low",
                                  "no samples", "too many samples", "too large"])
def test_bad_audio_requests_are_refused_with_a_reason(exported, case):
    files, message = {
        "not a wav": ([b"<html>not audio</html>"], "Header mismatch"),
        "24-bit": ([_wav(np.zeros(1000), SR, "PCM_24")], "Can only read 16-bit WAV files"),
        "too long": ([_wav(np.zeros(41 * 8000), 8000)], "longer than 40 s"),
        "no files": ([], "holds no files"),
        # a prime rate near int32's top: resampling it would need an FFT of 2**31 points
        "rate too high": ([_wav_header(2147483629, 100)], "sample rate above 384000 Hz"),
        "rate too low": ([_wav_header(1000, 100)], "sample rate below 2000 Hz"),
        "no samples": ([_wav_header(SR, 0)], "holds no samples"),
        # 21 s of stereo: within 40 s, but 672000 samples (frames x channels, as the Beam job counts)
        "too many samples": ([_wav_header(SR, 21 * SR, channels=2)], "holds more than 640000 samples"),
        "too large": ([_wav_header(SR, 1_000_000)], "larger than 2000000 bytes"),
    }[case]
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        exported["served"].run("serving_audio", audio=np.array(files, dtype=object))
