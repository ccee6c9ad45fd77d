"""The submission writer's executor: PredictionLogs (BulkInferrer's, serving_default's `scores` and
`labels` for each test example) -> SUBMISSION_URI/submission.csv, a Beam job that joins the
scores to the sample's rows by file name (pipeline.serving.submission) so no worker holds every
clip's scores; SUBMISSION_URI/summary.json says what was written. See __init__.py."""
from __future__ import annotations

import json
import logging
import os

import apache_beam as beam
from tfx.dsl.components.base import base_beam_executor
from tfx.types import artifact_utils
from tfx.components.util import model_utils

from pipeline import fileio
from pipeline import saved_model_layout as layout
from pipeline.data import example_schema as examples
from pipeline.data import kaggle_layout
from pipeline.serving import predict
from pipeline.serving import submission

log = logging.getLogger(__name__)

INFERENCE_RESULT = "inference_result"
MODEL_BLESSING = "model_blessing"
SUBMISSION = "submission"
SAMPLE_SUBMISSION = "sample_submission"
ALLOW_MISSING = "allow_missing"
FILE = "submission.csv"
SUMMARY = "summary.json"
INPUT = layout.SIGNATURE_INPUTS[layout.SERVING_DEFAULT][0]        # "examples"


def _entries(raw: bytes):
    """(fname, scores, the model's labels) of each example of one PredictionLog record."""
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    entry = prediction_log_pb2.PredictionLog.FromString(raw).predict_log
    requests = tf.make_ndarray(entry.request.inputs[INPUT]).reshape(-1)     # tensor_content or *_val
    outputs = entry.response.outputs
    scores = np.asarray(tf.make_ndarray(outputs[layout.SCORES]), np.float32).reshape(len(requests), -1)
    names = tuple(x.decode() for x in tf.make_ndarray(outputs[layout.LABELS]).reshape(len(requests), -1)[0])
    for example, row in zip(requests, scores):
        fname = tf.train.Example.FromString(example).features.feature[examples.FNAME].bytes_list.value[0].decode()
        yield fname, row, names


def model_labels(files: list[str]) -> list[str] | None:
    """The label order of the first prediction in the files (None: they hold none)."""
    import tensorflow as tf

    for raw in tf.data.TFRecordDataset(files, compression_type="GZIP").take(1):
        return list(next(_entries(raw.numpy()))[2])
    return None


def _scores(raw: bytes, labels: tuple[str, ...], folder: str):
    for fname, row, names in _entries(raw):
        if names != labels:
            raise ValueError(f"{folder}: predictions with two label orders")
        yield fname, row


class Executor(base_beam_executor.BaseBeamExecutor):
    def Do(self, input_dict, output_dict, exec_properties) -> None:
        import tensorflow as tf

        self._log_startup(input_dict, output_dict, exec_properties)
        result = artifact_utils.get_single_instance(input_dict[INFERENCE_RESULT])
        out = artifact_utils.get_single_instance(output_dict[SUBMISSION])
        sample = exec_properties[SAMPLE_SUBMISSION]
        blessing = (input_dict.get(MODEL_BLESSING) or [None])[0]
        if blessing is not None and not model_utils.is_model_blessed(blessing):
            log.info("no submission: the model was not blessed (%s)", blessing.uri)
            out.set_int_custom_property("written", 0)
            out.set_string_custom_property("reason", "model not blessed: BulkInferrer predicted nothing")
            return
        files = sorted(tf.io.gfile.glob(os.path.join(result.uri, "*.gz")))
        labels = model_labels(files)
        if labels is None:
            raise ValueError(f"{result.uri} holds no predictions (BulkInferrer wrote none for a blessed model)")
        predict.submission_rows(sample)       # a sample with rows that cannot be used fails here, by name
        path, summary_path = os.path.join(out.uri, FILE), os.path.join(out.uri, SUMMARY)
        with self._make_beam_pipeline() as p:
            _ = (p | "Read" >> beam.io.ReadFromTFRecord(os.path.join(result.uri, "*.gz"))
                 | "Scores" >> beam.FlatMap(_scores, tuple(labels), result.uri)
                 | "Write" >> submission.WriteSubmission(
                     sample, kaggle_layout.load_vocabulary(sample), labels, path,
                     bool(exec_properties.get(ALLOW_MISSING)), result.uri,
                     "see the TestExampleGen's dead_letters.jsonl")
                 | "Summary" >> beam.Map(lambda s: fileio.write_json(summary_path, s)))
        summary = json.loads(fileio.read_text(summary_path))
        if summary.get("error"):
            raise ValueError(summary["error"])
        out.set_int_custom_property("written", 1)
        out.set_string_custom_property("path", path)
        for key in ("rows", "scored", "missing"):
            out.set_int_custom_property(key, summary[key])
