"""Every component whose result depends on this project's code carries `code_version` in its
execution properties (TFX's cache key): a fix of lwlrap, the gate, the served-model choice or the
submission writer is a cache miss, never a stale result reused (the Trainer and the ExampleGens
had it; the Evaluator, BulkInferrer and the SubmissionWriter did not)."""
import os

from tfx import v1 as tfx
from tfx.types import channel, standard_artifacts

from components.bulk_inferrer import BulkInferrer
from components.evaluator.executor import Evaluator
from components.submission_writer import SubmissionWriter
from pipeline import versions


def _ch(kind):
    return channel.Channel(type=kind)


def _folder(module):
    return os.path.dirname(os.path.abspath(module.__file__))


def test_the_evaluator_bulk_inferrer_and_submission_writer_carry_their_code_version():
    import components.bulk_inferrer as bulk
    import components.evaluator.executor as evaluator
    import components.submission_writer as writer

    ev = Evaluator(examples=_ch(standard_artifacts.Examples), model=_ch(standard_artifacts.Model))
    bi = BulkInferrer(examples=_ch(standard_artifacts.Examples), model=_ch(standard_artifacts.Model),
                      model_blessing=_ch(standard_artifacts.ModelBlessing),
                      data_spec=tfx.proto.DataSpec(), model_spec=tfx.proto.ModelSpec())
    sw = SubmissionWriter(inference_result=_ch(standard_artifacts.InferenceResult), sample_submission="s.csv")
    assert ev.exec_properties["code_version"] == versions.code_version(versions.EVALUATOR, _folder(evaluator))
    assert bi.exec_properties["code_version"] == versions.code_version(versions.SERVING, _folder(bulk))
    assert sw.exec_properties["code_version"] == versions.code_version(versions.SERVING, _folder(writer))
    assert "metrics" in versions.EVALUATOR and "serving" in versions.SERVING


def test_a_change_in_the_metrics_code_changes_the_evaluators_version(tmp_path):
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "lwlrap.py").write_text("x = 1\n")
    before = versions.source_digest([str(tmp_path / "metrics")])
    (tmp_path / "metrics" / "lwlrap.py").write_text("x = 2\n")
    assert versions.source_digest([str(tmp_path / "metrics")]) != before
