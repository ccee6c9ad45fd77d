"""pipeline/metrics/lwlrap_tfma.py: the TFMA lwlrap metric, its bootstrap intervals and the EvalConfig of the
blessing (the Evaluator that runs them on real models: tests/components/test_evaluator.py)."""
import json

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.util import assert_that
from tensorflow_model_analysis.metrics import metric_types
from tensorflow_model_analysis.proto import config_pb2

from pipeline import config
from pipeline.metrics import bootstrap, lwlrap_tfma
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


def test_interval_combiner_pairs_candidate_and_baseline_on_the_same_clips():
    """Candidate and baseline scores of one element are one clip's pair: the intervals are the
    bootstrap of the clips' sums (computed here from the score arrays), whatever the split of the
    work into accumulators, and through a real Beam pipeline."""
    labels, scores, truth = _random_case(seed=5)
    worse = np.where(np.random.default_rng(0).random(scores.shape) < 0.3, scores[:, ::-1], scores)
    cfg = config_pb2.EvalConfig(model_specs=[config_pb2.ModelSpec(name="candidate", label_key="labels"),
                                             config_pb2.ModelSpec(name="baseline", label_key="labels", is_baseline=True)])
    elements = [metric_types.StandardMetricInputs(labels=np.asarray(l, np.int64),
                                                  predictions={"candidate": s, "baseline": w})
                for l, s, w in zip(labels, scores, worse)]
    (computation,) = lwlrap_tfma.LwlrapInterval(confidence=0.9, samples=300).computations(
        eval_config=cfg, model_names=["candidate", "baseline"])
    fn = computation.combiner
    accs = []
    for part in (elements[20:], elements[:3], elements[3:20]):
        acc = fn.create_accumulator()
        for e in part:
            acc = fn.add_input(acc, e)
        accs.append(acc)
    out = {(k.model_name, k.name): v for k, v in fn.extract_output(fn.merge_accumulators(accs)).items()}

    (c_hits, positives), (b_hits, _) = bootstrap.clip_sums(truth, scores), bootstrap.clip_sums(truth, worse)
    (c_low, b_low, d_low), (c_high, b_high, d_high) = bootstrap.intervals(
        np.stack([c_hits, b_hits]), positives, [(0, 1)], confidence=0.9, samples=300)
    assert out[("candidate", "lwlrap_ci_low")] == pytest.approx(c_low, abs=1e-12)
    assert out[("baseline", "lwlrap_ci_high")] == pytest.approx(b_high, abs=1e-12)
    assert out[("candidate", "lwlrap_diff")] == pytest.approx(lwlrap(truth, scores) - lwlrap(truth, worse), abs=1e-12)
    assert out[("candidate", "lwlrap_diff_low")] == pytest.approx(d_low, abs=1e-12)
    assert out[("candidate", "lwlrap_diff_high")] == pytest.approx(d_high, abs=1e-12)
    assert c_low < lwlrap(truth, scores) < c_high and d_low < out[("candidate", "lwlrap_diff")] < d_high
    assert not {n for m, n in out if m == "baseline"} & {"lwlrap_diff", "lwlrap_diff_low", "lwlrap_diff_high"}

    def check(got):   # pickled combiner, Beam's own bundling and merging: the same numbers
        assert len(got) == 1
        assert {(k.model_name, k.name): v for k, v in got[0].items()} == out

    with beam.Pipeline(runner="FnApiRunner") as p:
        assert_that(p | beam.Create(elements) | beam.CombineGlobally(fn), check)


def test_interval_without_a_baseline_is_the_models_own():
    labels, scores, truth = _random_case()
    (computation,) = lwlrap_tfma.LwlrapInterval(samples=200).computations(model_names=[""])
    fn = computation.combiner
    acc = fn.create_accumulator()
    for l, s in zip(labels, scores):
        acc = fn.add_input(acc, metric_types.StandardMetricInputs(labels=np.asarray(l, np.int64), predictions=s))
    out = {k.name: v for k, v in fn.extract_output(acc).items()}
    assert set(out) == {"lwlrap_ci_low", "lwlrap_ci_high"}
    assert out["lwlrap_ci_low"] < lwlrap(truth, scores) < out["lwlrap_ci_high"]


def _thresholds(cfg):
    from tensorflow_model_analysis.metrics import metric_specs

    return {(k.name, k.is_diff): t for k, ts in metric_specs.metric_thresholds_from_metrics_specs(
        cfg.metrics_specs, eval_config=cfg).items() for _, t in ts}


def test_eval_config_carries_the_blessing_thresholds_of_either_gate():
    assert config.BlessingConfig().min_lwlrap == pytest.approx(0.4)
    assert config.BlessingConfig().gate == config.BlessingConfig.INTERVAL
    assert config.BlessingConfig().baseline == config.BlessingConfig.BEST
    point = lwlrap_tfma.eval_config(config.BlessingConfig(min_lwlrap=0.3, baseline_tolerance=0.02,
                                                          gate=config.BlessingConfig.POINT))
    metric = point.metrics_specs[0].metrics[0]
    assert metric.class_name == "Lwlrap" and metric.module == "pipeline.metrics.lwlrap_tfma"
    t = _thresholds(point)
    assert set(t) == {("lwlrap", False), ("lwlrap", True)}
    assert t["lwlrap", False].lower_bound.value == pytest.approx(0.3)
    assert t["lwlrap", True].absolute.value == pytest.approx(-0.02)
    assert t["lwlrap", True].direction == config_pb2.MetricDirection.HIGHER_IS_BETTER

    interval = config.BlessingConfig(min_lwlrap=0.3, baseline_tolerance=0.02, confidence=0.9, bootstrap_samples=50)
    t = _thresholds(lwlrap_tfma.eval_config(interval))
    assert set(t) == {("lwlrap", False), ("lwlrap_diff_high", False)}
    assert t["lwlrap_diff_high", False].lower_bound.value == pytest.approx(-0.02)
    # without a baseline the paired interval is not computed, so it cannot be a threshold
    assert set(_thresholds(lwlrap_tfma.eval_config(interval, has_baseline=False))) == {("lwlrap", False)}
    (cfg,) = [m for m in lwlrap_tfma.eval_config(interval).metrics_specs[0].metrics if m.class_name == "LwlrapInterval"]
    assert json.loads(cfg.config) == {"confidence": 0.9, "samples": 50}


def test_eval_config_refuses_an_interval_it_cannot_compute():
    with pytest.raises(ValueError, match=r"confidence must be in \(0, 1\), got 1.0"):
        lwlrap_tfma.eval_config(config.BlessingConfig(confidence=1.0))
    with pytest.raises(ValueError, match="bootstrap_samples must be >= 1, got 0"):
        lwlrap_tfma.eval_config(config.BlessingConfig(bootstrap_samples=0))
