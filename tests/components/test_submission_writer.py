"""components/submission_writer: PredictionLogs as BulkInferrer writes them (one per example, tensors
in tensor_content) from the real exported model -> submission.csv in the sample's order and columns;
a missing row fails by name unless allowed; a model that is not blessed gets no submission."""
import csv

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2
from tfx.types import standard_artifacts

from components.submission_writer import Submission
from components.submission_writer import executor


def _artifact(cls, uri):
    a = cls()
    a.uri = str(uri)
    return a


@pytest.fixture(scope="module")
def predictions(trained, train_examples, tmp_path_factory):
    """The eval examples scored by the export's serving_default, written as BulkInferrer's PredictionLogs:
    (folder, {fname: scores in the model's label order}, model labels)."""
    _, _, results = trained
    serve = tf.saved_model.load(results["export_path"]).signatures["serving_default"]
    folder = tmp_path_factory.mktemp("inference_result")
    want, labels = {}, None
    with tf.io.TFRecordWriter(str(folder / "prediction_logs-00000-of-00001.gz"), "GZIP") as w:
        for rec in train_examples.records["eval"]:
            out = serve(examples=tf.constant([rec.serialized]))
            entry = prediction_log_pb2.PredictionLog()
            entry.predict_log.request.inputs["examples"].CopyFrom(tf.make_tensor_proto([rec.serialized], shape=[1]))
            for key in ("scores", "labels"):
                entry.predict_log.response.outputs[key].CopyFrom(tf.make_tensor_proto(out[key].numpy()))
            w.write(entry.SerializeToString())
            labels = [x.decode() for x in out["labels"].numpy()[0]]
            want[rec.fname] = out["scores"].numpy()[0]
    return folder, want, labels


def _run(predictions, tmp_path, fnames, blessed=1, allow_missing=0):
    folder, _, labels = predictions
    tmp_path.mkdir(parents=True, exist_ok=True)
    sample = tmp_path / "sample_submission.csv"
    columns = sorted(labels)                      # another column order than the model's
    with open(sample, "w", newline="") as f:
        csv.writer(f).writerows([["fname", *columns], *([n, *([0] * len(columns))] for n in fnames)])
    blessing = _artifact(standard_artifacts.ModelBlessing, tmp_path / "blessing")
    blessing.set_int_custom_property("blessed", blessed)
    out = _artifact(Submission, tmp_path / "submission")
    (tmp_path / "submission").mkdir()
    ctx = executor.Executor.Context(beam_pipeline_args=["--runner=FnApiRunner"])
    executor.Executor(ctx).Do({"inference_result": [_artifact(standard_artifacts.InferenceResult, folder)],
                            "model_blessing": [blessing]}, {"submission": [out]},
                           {"sample_submission": str(sample), "allow_missing": allow_missing})
    return out, columns


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_submission_rows_are_the_models_scores_in_the_samples_order(predictions, tmp_path):
    _, want, labels = predictions
    fnames = sorted(want, reverse=True)
    out, columns = _run(predictions, tmp_path, fnames)
    header, *rows = _rows(tmp_path / "submission" / "submission.csv")
    assert header == ["fname", *columns] and [r[0] for r in rows] == fnames
    for r in rows:
        np.testing.assert_allclose(np.array(r[1:], float), want[r[0]][[labels.index(c) for c in columns]],
                                   rtol=0, atol=1e-5)
    assert out.get_int_custom_property("written") == 1 and out.get_int_custom_property("scored") == len(fnames)


def test_a_row_without_a_prediction_fails_by_name_unless_allowed(predictions, tmp_path):
    _, want, _ = predictions
    with pytest.raises(ValueError, match=r"1 clips have no scores .*ghost\.wav.*--allow_missing"):
        _run(predictions, tmp_path / "a", [*want, "ghost.wav"])
    assert not (tmp_path / "a" / "submission" / "submission.csv").exists()
    out, _ = _run(predictions, tmp_path / "b", [*want, "ghost.wav"], allow_missing=1)
    assert _rows(tmp_path / "b" / "submission" / "submission.csv")[-1][1:] == ["0"] * 80
    assert out.get_int_custom_property("missing") == 1


def test_a_model_that_is_not_blessed_gets_no_submission(predictions, tmp_path):
    _, want, _ = predictions
    out, _ = _run(predictions, tmp_path, list(want), blessed=0)
    assert out.get_int_custom_property("written") == 0
    assert "not blessed" in out.get_string_custom_property("reason")
    assert not (tmp_path / "submission" / "submission.csv").exists()
