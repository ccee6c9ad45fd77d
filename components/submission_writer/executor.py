"""The submission writer's executor: PredictionLogs (BulkInferrer's, serving_default's `scores` and
`labels` for each test example) -> SUBMISSION_URI/submission.csv. See __init__.py."""
from __future__ import annotations

import logging
import os

from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils
from tfx.components.util import model_utils

from pipeline import saved_model_layout as layout
from pipeline.data import example_schema as examples
from pipeline.data import kaggle_layout
from pipeline.serving import predict

log = logging.getLogger(__name__)

INFERENCE_RESULT = "inference_result"
MODEL_BLESSING = "model_blessing"
SUBMISSION = "submission"
SAMPLE_SUBMISSION = "sample_submission"
ALLOW_MISSING = "allow_missing"
FILE = "submission.csv"
INPUT = layout.SIGNATURE_INPUTS[layout.SERVING_DEFAULT][0]        # "examples"


def read_predictions(folder: str) -> tuple[dict, list[str] | None]:
    """({fname: scores}, the model's label order) from the PredictionLog files of a folder."""
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    files = sorted(tf.io.gfile.glob(os.path.join(folder, "*.gz")))
    by_fname, labels = {}, None
    for raw in tf.data.TFRecordDataset(files, compression_type="GZIP") if files else []:
        entry = prediction_log_pb2.PredictionLog.FromString(raw.numpy()).predict_log
        requests = tf.make_ndarray(entry.request.inputs[INPUT]).reshape(-1)     # tensor_content or *_val
        outputs = entry.response.outputs
        scores = np.asarray(tf.make_ndarray(outputs[layout.SCORES]), np.float32).reshape(len(requests), -1)
        names = [x.decode() for x in tf.make_ndarray(outputs[layout.LABELS]).reshape(len(requests), -1)[0]]
        if labels is None:
            labels = names
        elif names != labels:
            raise ValueError(f"{folder}: predictions with two label orders")
        for example, row in zip(requests, scores):
            fname = tf.train.Example.FromString(example).features.feature[examples.FNAME].bytes_list.value[0].decode()
            if fname in by_fname:
                raise ValueError(f"{folder}: {fname} was predicted twice")
            by_fname[fname] = row
    return by_fname, labels


class Executor(base_executor.BaseExecutor):
    def Do(self, input_dict, output_dict, exec_properties) -> None:
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
        by_fname, labels = read_predictions(result.uri)
        if labels is None:
            raise ValueError(f"{result.uri} holds no predictions (BulkInferrer wrote none for a blessed model)")
        path = os.path.join(out.uri, FILE)
        summary = predict.finish_submission(
            predict.submission_rows(sample), kaggle_layout.load_vocabulary(sample), labels, by_fname, path,
            bool(exec_properties.get(ALLOW_MISSING)), result.uri, "see the TestExampleGen's dead_letters.jsonl")
        out.set_int_custom_property("written", 1)
        out.set_string_custom_property("path", path)
        for key in ("rows", "scored"):
            out.set_int_custom_property(key, summary[key])
        out.set_int_custom_property("missing", len(summary["missing"]))
