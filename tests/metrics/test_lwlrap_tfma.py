"""pipeline/metrics/lwlrap_tfma.py: the TFMA lwlrap metric, and TFX's own Evaluator executor blessing (or
not) a real exported model with it, as the pipeline runs it."""
import os
import shutil

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.util import assert_that
from tensorflow_model_analysis.metrics import metric_types
from tensorflow_model_analysis.proto import config_pb2

from pipeline import config
from pipeline.metrics import lwlrap_tfma
from pipeline.metrics.lwlrap import lwlrap, per_class_lwlrap


def _random_case(n=40, c=12, seed=3):
    rng = np.random.default_rng(seed)
    labels = [rng.choice(c, rng.integers(1, 4), replace=False) for _ in range(n)]
    scores = rng.random((n, c)).round(1)           # rounded: ties, which lwlrap must count exactly
    truth = np.zeros((n, c), dtype=bool)
    for i, idx in enumerate(labels):
        truth[i, idx] = True
    return labels, scores, truth


def _combine(elements, key, eval_config=None):
    """The combiner's output over `elements`, split into three accumulators and merged, as Beam does."""
    fn = lwlrap_tfma.LwlrapCombiner(key, eval_config, per_class=True)
    accs = []
    for part in (elements[:7], elements[7:8], elements[8:]):
        acc = fn.create_accumulator()
        for e in part:
            acc = fn.add_input(acc, e)
        accs.append(acc)
    return fn.extract_output(fn.merge_accumulators(accs))


def test_combiner_is_exact_overall_and_per_class():
    labels, scores, truth = _random_case()
    elements = [metric_types.StandardMetricInputs(labels=np.asarray(l, np.int64), predictions=s)
                for l, s in zip(labels, scores)]
    key = metric_types.MetricKey(name="lwlrap")
    out = _combine(elements, key)
    assert abs(out[key] - lwlrap(truth, scores)) < 1e-12
    expected = per_class_lwlrap(truth, scores)
    per_class = {k.sub_key.class_id: v for k, v in out.items() if k.sub_key is not None}
    assert sorted(per_class) == [k for k in range(truth.shape[1]) if truth[:, k].any()]
    for k, v in per_class.items():
        assert abs(v - expected[k]) < 1e-12
    overall = out[key]

    def check(got):   # the same through a real Beam pipeline (pickled combiner, Beam's merging)
        assert len(got) == 1 and abs(got[0][key] - overall) < 1e-12, got

    with beam.Pipeline(runner="FnApiRunner") as p:
        assert_that(p | beam.Create(elements) | beam.CombineGlobally(
            lwlrap_tfma.LwlrapCombiner(key, None, per_class=True)), check)


def test_combiner_picks_its_model_when_candidate_and_baseline_run_together():
    labels, scores, truth = _random_case(seed=5)
    worse = scores[:, ::-1].copy()
    cfg = config_pb2.EvalConfig(model_specs=[config_pb2.ModelSpec(name="candidate", label_key="labels"),
                                             config_pb2.ModelSpec(name="baseline", label_key="labels", is_baseline=True)])
    elements = [metric_types.StandardMetricInputs(labels=np.asarray(l, np.int64),
                                                  predictions={"candidate": s, "baseline": w})
                for l, s, w in zip(labels, scores, worse)]
    for name, expect in (("candidate", scores), ("baseline", worse)):
        key = metric_types.MetricKey(name="lwlrap", model_name=name)
        assert abs(_combine(elements, key, cfg)[key] - lwlrap(truth, expect)) < 1e-12


def test_label_index_outside_the_model_is_an_error():
    assert lwlrap_tfma.multi_hot(np.array([0, 2]), 3).tolist() == [True, False, True]
    with pytest.raises(ValueError, match="do not fit a model with 3 outputs"):
        lwlrap_tfma.multi_hot(np.array([3]), 3)
    with pytest.raises(ValueError, match="do not fit"):
        lwlrap_tfma.multi_hot(np.array([-1]), 3)


def test_eval_config_carries_the_blessing_thresholds():
    cfg = lwlrap_tfma.eval_config(config.BlessingConfig(min_lwlrap=0.3, baseline_tolerance=0.02))
    metric = cfg.metrics_specs[0].metrics[0]
    assert metric.class_name == "Lwlrap" and metric.module == "pipeline.metrics.lwlrap_tfma"
    assert metric.threshold.value_threshold.lower_bound.value == pytest.approx(0.3)
    assert metric.threshold.change_threshold.absolute.value == pytest.approx(-0.02)
    assert metric.threshold.change_threshold.direction == config_pb2.MetricDirection.HIGHER_IS_BETTER
    assert config.BlessingConfig().min_lwlrap == pytest.approx(0.4)


# ------------------------------------------------------------------------------ TFX's Evaluator

@pytest.fixture(scope="module")
def artifacts(trained, train_examples, tmp_path_factory):
    """A Model artifact (Format-Serving = the trained fixture's export) and an Examples artifact
    (Split-eval = the fixture's eval shards), laid out as TFX lays them out."""
    from tfx.types import artifact_utils, standard_artifacts

    root = tmp_path_factory.mktemp("evaluator")
    model = standard_artifacts.Model()
    model.uri = str(root / "model")
    model.id = 42
    shutil.copytree(trained[2]["export_path"], os.path.join(model.uri, "Format-Serving"))
    examples = standard_artifacts.Examples()
    examples.uri = str(root / "examples")
    os.makedirs(os.path.join(examples.uri, "Split-eval"))
    for f in train_examples.manifest["splits"]["eval"]["files"]:
        shutil.copy(os.path.join(train_examples.out, f["path"]), os.path.join(examples.uri, "Split-eval"))
    examples.split_names = artifact_utils.encode_split_names(["train", "eval"])
    return root, model, examples


def _evaluate(root, name, model, examples, blessing, baseline=None):
    from tfx.components.evaluator import executor
    from tfx.dsl.components.base import base_beam_executor
    from tfx.types import standard_artifacts
    from tfx.utils import proto_utils

    evaluation, bless = standard_artifacts.ModelEvaluation(), standard_artifacts.ModelBlessing()
    evaluation.uri, bless.uri = str(root / name / "evaluation"), str(root / name / "blessing")
    os.makedirs(evaluation.uri)
    os.makedirs(bless.uri)
    inputs = {"examples": [examples], "model": [model]}
    if baseline is not None:
        inputs["baseline_model"] = [baseline]
    ctx = base_beam_executor.BaseBeamExecutor.Context(beam_pipeline_args=["--runner=FnApiRunner"])
    executor.Executor(ctx).Do(inputs, {"evaluation": [evaluation], "blessing": [bless]},
                              {"eval_config": proto_utils.proto_to_json(lwlrap_tfma.eval_config(blessing)),
                               "example_splits": '["eval"]'})
    return evaluation, bless


def _expected_lwlrap(model_dir, train_examples):
    """lwlrap of the model's serving_default scores on the eval examples, computed here."""
    import tensorflow as tf

    serve = tf.saved_model.load(model_dir).signatures["serving_default"]
    rows = train_examples.records["eval"]
    scores = serve(examples=tf.constant([r.serialized for r in rows]))["scores"].numpy()
    truth = np.zeros(scores.shape, dtype=bool)
    for i, r in enumerate(rows):
        truth[i, r.labels] = True
    return lwlrap(truth, scores)


@pytest.mark.slow
def test_evaluator_blesses_a_model_over_the_bar_with_exact_lwlrap(artifacts, train_examples):
    from pipeline.orchestration import run_report

    root, model, examples = artifacts
    evaluation, bless = _evaluate(root, "first", model, examples, config.BlessingConfig(min_lwlrap=0.0))
    assert os.listdir(bless.uri) == ["BLESSED"]
    assert bless.get_int_custom_property("blessed") == 1
    assert bless.get_int_custom_property("current_model_id") == 42
    assert bless.get_string_custom_property("current_model") == model.uri
    m = run_report.evaluation_metrics(evaluation.uri)
    expected = _expected_lwlrap(os.path.join(model.uri, "Format-Serving"), train_examples)
    assert m["baseline"] is None and m["examples"] == len(train_examples.records["eval"])
    assert abs(m["candidate"] - expected) < 1e-6


@pytest.mark.slow
def test_evaluator_refuses_below_the_bar_and_below_the_baseline(artifacts):
    root, model, examples = artifacts
    # lwlrap is at most 1: this bar cannot be cleared
    _, bless = _evaluate(root, "bar", model, examples, config.BlessingConfig(min_lwlrap=1.01), baseline=model)
    assert os.listdir(bless.uri) == ["NOT_BLESSED"] and bless.get_int_custom_property("blessed") == 0
    assert bless.get_int_custom_property("baseline_model_id") == 42
    # the same model as its own baseline: equal passes with tolerance 0 ...
    _, bless = _evaluate(root, "equal", model, examples,
                         config.BlessingConfig(min_lwlrap=0.0, baseline_tolerance=0.0), baseline=model)
    assert os.listdir(bless.uri) == ["BLESSED"]
    # ... and fails when the candidate must beat the baseline by 0.01
    _, bless = _evaluate(root, "regress", model, examples,
                         config.BlessingConfig(min_lwlrap=0.0, baseline_tolerance=-0.01), baseline=model)
    assert os.listdir(bless.uri) == ["NOT_BLESSED"]
