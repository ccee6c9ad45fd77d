"""The serving export: a versioned SavedModel that TensorFlow Serving loads.

    EXPORT_BASE/<version>/            version = seconds since the epoch, as TF Serving expects
        saved_model.pb, variables/, assets/labels.txt (the label order of the scores)
        assets.extra/tf_serving_warmup_requests   (PredictionLog records TF Serving replays on load)

Signatures:
    serving_default   examples: string [batch] (serialized tf.Example as the Beam job writes them)
                      -> scores: float32 [batch, labels], labels: string [batch, labels]
    serving_waveform  waveform: float32 [batch, time] (mono, at the model's sample rate, zero-padded)
                      length:   int32   [batch]       (samples of each clip; the rest is ignored)
                      -> scores: float32 [batch, labels], labels: string [batch, labels],
                         sample_rate: int32 [batch] (the rate the waveform must have: clients ask)
    serving_audio     audio: string [batch] (WAV files as they are: 16-bit PCM, any rate within the
                      feature config's DecodeLimits, any channels; decoded, downmixed and resampled
                      in the graph by pipeline.features.audio_graph)
                      -> scores: float32 [batch, labels], labels: string [batch, labels],
                         sample_rate: int32 [batch]

`labels` (the label order of `scores`, also assets/labels.txt) lets a remote client match columns
by name; assets/feature_config.pbtxt records the features the model was trained on.

serving_waveform computes features in the graph with pipeline.features.feature_fn.compute_features, the
very function the Beam job ran, so a clip scores the same by either route.

Why keras.export.ExportArchive: TF Serving loads a SavedModel through the TF1 loader
(SavedModelBundle: restore the variables by name into a Session, run signatures by tensor name).
A Keras 3 model held by a tf.Module and written by tf.saved_model.save scores under
tf.saved_model.load but fails there ("Could not find variable ...", tensorflow/serving#2226);
ExportArchive writes the variables the way that loader restores them. The tests load exports
the TF Serving way (tests/serving_loader.py), not with tf.saved_model.load.

Bad requests fail inside the graph with INVALID_ARGUMENT and a message saying what is wrong (TF
Serving passes it to the client): empty or mismatched batches, batches of more than
ServingConfig.max_batch clips, lengths out of range, NaN/Inf samples, audio longer than ServingConfig.max_request_seconds, examples without a mel, with a
mel of the wrong size or with NaN/Inf in it. (The messages avoid apostrophes: TF escapes them in error text.)
"""
from __future__ import annotations

import logging
import os
import time

import keras
import numpy as np
import tensorflow as tf

from pipeline import config as config_lib
from pipeline import fileio
from pipeline import saved_model_layout as layout
from pipeline.features import audio_graph
from pipeline.data import example_schema as examples
from pipeline.features import feature_fn as features
from pipeline.training.model import probabilities

log = logging.getLogger(__name__)

EXAMPLES_SPEC = tf.TensorSpec([None], tf.string, name="examples")
WAVEFORM_SPECS = (tf.TensorSpec([None, None], tf.float32, name="waveform"),
                  tf.TensorSpec([None], tf.int32, name="length"))
AUDIO_SPEC = tf.TensorSpec([None], tf.string, name="audio")


class Endpoints:
    """The signature functions over one Keras model, with the request checks in the graph."""

    def __init__(self, model: keras.Model, feature_cfg: config_lib.FeatureConfig,
                 trainer_cfg: config_lib.TrainerConfig, serving_cfg: config_lib.ServingConfig, labels: list[str]):
        self._model, self._feature_cfg, self._trainer_cfg = model, feature_cfg, trainer_cfg
        self._labels = list(labels)
        self._mel_shape = config_lib.mel_shape(feature_cfg)
        self._max_samples = int(serving_cfg.max_request_seconds * feature_cfg.sample_rate)
        self._max_seconds = serving_cfg.max_request_seconds
        self._max_batch = serving_cfg.max_batch

    def _batch_checks(self, batch, what: str) -> list:
        """The request holds 1 to max_batch clips."""
        return [tf.debugging.assert_greater(batch, 0, message=f"the request holds no {what}"),
                tf.debugging.assert_less_equal(
                    batch, self._max_batch,
                    message=f"the request holds more than {self._max_batch} {what} (ServingConfig.max_batch); "
                            f"split it into smaller requests")]

    def _scores(self, mel):
        # labels per row: TF Serving's row format and TFMA want every output batched
        labels = tf.tile(tf.constant(self._labels)[tf.newaxis, :], [tf.shape(mel)[0], 1])
        return {layout.SCORES: probabilities(self._model(mel, training=False), self._trainer_cfg),
                layout.LABELS: labels}

    def serve_examples(self, serialized):
        frames, n_mels = self._mel_shape
        size = frames * n_mels
        with tf.control_dependencies(self._batch_checks(tf.size(serialized), "examples")):
            mel = tf.io.parse_example(serialized, {examples.MEL: tf.io.RaggedFeature(tf.float32)})[examples.MEL]
        lengths = mel.row_lengths()
        sized = tf.debugging.assert_equal(
            lengths, tf.cast(size, lengths.dtype),
            message=f"every example needs a float feature mel of {frames} x {n_mels} = {size} values (the feature "
                    f"config of the model); an example has none or another size (sizes follow)",
            summarize=8)
        with tf.control_dependencies([sized]):
            flat = tf.debugging.assert_all_finite(mel.flat_values, message="an example holds a mel with NaN or Inf "
                                                                           "values (the Beam job writes finite features)")
        return self._scores(tf.reshape(flat, [-1, frames, n_mels]))

    def serve_waveform(self, waveform, length):
        batch, time_len = tf.shape(waveform)[0], tf.shape(waveform)[1]
        checks = self._batch_checks(batch, "clips") + [
            tf.debugging.assert_equal(batch, tf.shape(length)[0],
                                      message="waveform and length must have the same batch size"),
            tf.debugging.assert_greater(time_len, 0, message="waveform is empty: its time axis has 0 samples"),
            tf.debugging.assert_less_equal(
                time_len, self._max_samples,
                message=f"waveform is longer than {self._max_seconds:g} s ({self._max_samples} samples at "
                        f"{self._feature_cfg.sample_rate} Hz; ServingConfig.max_request_seconds)"),
            tf.debugging.assert_non_negative(length, message="length must not be negative"),
            tf.debugging.assert_less_equal(length, time_len,
                                           message="length exceeds the time axis of waveform"),
            tf.debugging.assert_all_finite(waveform, message="waveform holds NaN or Inf samples"),
        ]
        with tf.control_dependencies(checks):
            waveform = tf.identity(waveform)
        return self._with_rate(self._scores(features.compute_features(waveform, length, self._feature_cfg)))

    def _with_rate(self, outputs: dict) -> dict:
        """The model's sample rate beside the scores: a client resampling audio itself learns the
        rate from the model, not from a flag that may name another model's features."""
        rows = tf.shape(outputs[layout.SCORES])[0]
        return dict(outputs, **{layout.SAMPLE_RATE: tf.fill([rows], tf.constant(self._feature_cfg.sample_rate, tf.int32))})

    def serve_audio(self, wav_bytes):
        with tf.control_dependencies(self._batch_checks(tf.size(wav_bytes), "files")):
            waveform, length = audio_graph.decode_batch(wav_bytes, self._feature_cfg.sample_rate, self._max_seconds,
                                                        self._feature_cfg.limits)
        return self._with_rate(self._scores(features.compute_features(waveform, length, self._feature_cfg)))


def _warmup_log(signature: str, inputs: dict):
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(signature_name=signature))
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))


def _wav_bytes(clip: np.ndarray, sample_rate: int) -> bytes:
    import io

    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, clip, sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def warmup_requests(feature_cfg: config_lib.FeatureConfig, count: int) -> list:
    """`count` PredictionLogs per signature: clips of a few lengths (a chirp over faint noise) as
    waveforms, and the same clips as tf.Examples with their features computed by the feature
    function, as the Beam job would write them. Deterministic."""
    sr, rng = feature_cfg.sample_rate, np.random.default_rng(0)
    logs = []
    for i, (clips, n) in enumerate(config_lib.warmup_shapes(feature_cfg, count)):
        t = np.arange(n) / sr
        clip = (0.3 * np.sin(2 * np.pi * (200 + 400 * t) * t) + rng.normal(0, 0.01, n)).astype(np.float32)
        batch = [clip] * clips
        waveform, length = features.pad_batch(batch)
        logs.append(_warmup_log(layout.SERVING_WAVEFORM, {"waveform": waveform, "length": length}))
        mel = features.compute_features(waveform, length, feature_cfg).numpy()
        serialized = [examples.serialize(f"warmup-{i}.wav", [], m, n / sr) for m in mel]
        logs.append(_warmup_log(layout.SERVING_DEFAULT, {"examples": np.array(serialized, dtype=object)}))
        logs.append(_warmup_log(layout.SERVING_AUDIO, {"audio": np.array([_wav_bytes(c, sr) for c in batch], dtype=object)}))
    return logs


def write_warmup(saved_model_dir: str, logs: list) -> str:
    path = os.path.join(saved_model_dir, layout.WARMUP_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.TFRecordWriter(path) as w:
        for entry in logs:
            w.write(entry.SerializeToString())
    return path


def export_saved_model(model: keras.Model, feature_cfg: config_lib.FeatureConfig,
                       trainer_cfg: config_lib.TrainerConfig, labels_path: str, export_base: str,
                       version: int | str | None = None, serving_cfg: config_lib.ServingConfig | None = None) -> str:
    """Write EXPORT_BASE/<version>/ and return its path (version: unless given, the clock's second
    or the newest version there + 1 if that is later, saved_model_layout.next_version; TFX's run_fn
    gives the last part of its serving_model_dir). An existing version is never overwritten.

    Locally the SavedModel (warm-up file included) is written under a temporary name of its own
    (saved_model_layout.temp_name: another export's folder is never touched) and renamed, so TF
    Serving, which polls EXPORT_BASE for new versions, never sees half a model; the temporary
    folder is removed if the export fails. Object stores have no atomic rename; there the version
    is written in place.
    """
    serving_cfg = serving_cfg or config_lib.ServingConfig()
    config_lib.validate_serving(serving_cfg, feature_cfg)     # before anything is written
    if not version:
        names = tf.io.gfile.listdir(export_base) if tf.io.gfile.isdir(export_base) else []
        version = layout.next_version(names, time.time())
    final = os.path.join(export_base, str(version))
    if tf.io.gfile.exists(final):
        raise FileExistsError(f"{final} exists; versions are never overwritten")
    local = fileio.is_local(export_base)
    target = os.path.join(export_base, layout.temp_name(version, "export")) if local else final
    try:
        _write(target, model, feature_cfg, trainer_cfg, serving_cfg, labels_path)
        if local:
            fileio.publish_dir(target, final)
    finally:
        if local and tf.io.gfile.exists(target):     # this export's own folder only (never another's in progress)
            tf.io.gfile.rmtree(target)
    log.info("exported SavedModel %s", final)
    return final


def _write(target: str, model: keras.Model, feature_cfg: config_lib.FeatureConfig,
           trainer_cfg: config_lib.TrainerConfig, serving_cfg: config_lib.ServingConfig, labels_path: str) -> None:
    from pipeline.data.kaggle_layout import load_vocabulary

    endpoints = Endpoints(model, feature_cfg, trainer_cfg, serving_cfg, load_vocabulary(labels_path))
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(layout.SERVING_DEFAULT, endpoints.serve_examples, [EXAMPLES_SPEC])
    archive.add_endpoint(layout.SERVING_WAVEFORM, endpoints.serve_waveform, list(WAVEFORM_SPECS))
    archive.add_endpoint(layout.SERVING_AUDIO, endpoints.serve_audio, [AUDIO_SPEC])
    archive.write_out(target, verbose=False)
    # the label order of the scores beside the graph (ExportArchive keeps only the assets an
    # endpoint reads; TF Serving and the clients need none in the graph, only the file)
    tf.io.gfile.makedirs(os.path.join(target, os.path.dirname(layout.LABELS_ASSET)))
    tf.io.gfile.copy(labels_path, os.path.join(target, layout.LABELS_ASSET), overwrite=True)
    with tf.io.gfile.GFile(os.path.join(target, layout.FEATURES_ASSET), "w") as f:
        f.write(config_lib.to_text(feature_cfg))
    # the limits the graph enforces, for callers that batch (BulkInferrer, the Evaluator, batch_predict)
    with tf.io.gfile.GFile(os.path.join(target, layout.SERVING_ASSET), "w") as f:
        f.write(config_lib.resolved_text(serving_cfg))
    if serving_cfg.warmup_requests > 0:
        write_warmup(target, warmup_requests(feature_cfg, serving_cfg.warmup_requests))
