"""lwlrap as a TFMA metric, so TFX's own Evaluator computes it, compares it with the baseline and
blesses the model.

    MetricConfig(class_name="Lwlrap", module="pipeline.metrics.lwlrap_tfma")

The combiner wraps `pipeline.metrics.lwlrap.LwlrapAccumulator` (per-class sums that merge exactly across
Beam workers), so TFMA's value is the exact lwlrap over the whole eval split, not an average of
batches. Each example's label is the Examples' `labels` feature, a list of label indices (a
multi-label clip has several); it becomes a multi-hot row of the prediction's width here, never
flattened into per-class binary problems as TFMA's built-in metrics would. Outputs:

    lwlrap                         overall (the key that thresholds apply to)
    lwlrap, sub_key class_id = k   per-class lwlrap, for every class positive in the eval split

`LwlrapInterval` keeps each clip's share of lwlrap for every model (pipeline.metrics.bootstrap) and
resamples the clips, the same clips for candidate and baseline:

    lwlrap_ci_low, lwlrap_ci_high         each model's interval (BlessingConfig.confidence)
    lwlrap_diff, lwlrap_diff_low/_high    the candidate's only, with a baseline: candidate - baseline
                                          on the same clips, and its paired interval

`eval_config()` turns the project's BlessingConfig (proto/evaluator_config.proto) into the
EvalConfig for TFX's Evaluator: a value threshold (lwlrap >= min_lwlrap) and, with a baseline, the
gate: POINT, a change threshold (lwlrap >= baseline - tolerance); INTERVAL, a value threshold on
the paired interval (lwlrap_diff_high >= -tolerance). Without a baseline there is no gate, so the
first model (or the first of a new label vocabulary) is judged by the bar alone.
"""
from __future__ import annotations

import json
from typing import Optional

import apache_beam as beam
import numpy as np
from tensorflow_model_analysis.metrics import metric_types, metric_util
from tensorflow_model_analysis.proto import config_pb2

from pipeline.metrics import bootstrap
from pipeline.metrics.lwlrap import LwlrapAccumulator
from pipeline import saved_model_layout as layout
from pipeline.config import BlessingConfig

NAME = "lwlrap"
CI_LOW, CI_HIGH = "lwlrap_ci_low", "lwlrap_ci_high"
DIFF, DIFF_LOW, DIFF_HIGH = "lwlrap_diff", "lwlrap_diff_low", "lwlrap_diff_high"
LABEL_KEY = "labels"          # pipeline.data.example_schema.LABELS
PREDICTION_KEY = layout.SCORES     # the serving signatures' output
SIGNATURE = layout.SERVING_DEFAULT


def multi_hot(indices, num_classes: int) -> np.ndarray:
    """A [num_classes] bool row from label indices; an index outside [0, num_classes) is an error
    (a labels file that does not match the model), never silently dropped."""
    idx = np.asarray(indices).reshape(-1)
    if idx.size and (idx.dtype.kind not in "iu" or idx.min() < 0 or idx.max() >= num_classes):
        raise ValueError(f"lwlrap: label indices {idx.tolist()} do not fit a model with {num_classes} outputs")
    row = np.zeros(num_classes, dtype=bool)
    row[idx.astype(np.int64)] = True
    return row


class LwlrapCombiner(beam.CombineFn):
    """StandardMetricInputs (label indices, prediction [C]) -> overall and per-class lwlrap."""

    def __init__(self, key: metric_types.MetricKey, eval_config: Optional[config_pb2.EvalConfig],
                 per_class: bool):
        super().__init__()
        self._key, self._eval_config, self._per_class = key, eval_config, per_class

    def create_accumulator(self) -> LwlrapAccumulator:
        return LwlrapAccumulator()

    def add_input(self, accumulator: LwlrapAccumulator, element: metric_types.StandardMetricInputs):
        # selects this model's (candidate or baseline) label and prediction; flatten=False keeps
        # the label as the clip's list of indices
        for label, prediction, _ in metric_util.to_label_prediction_example_weight(
                element, eval_config=self._eval_config, model_name=self._key.model_name,
                output_name=self._key.output_name, flatten=False, squeeze=False):
            scores = np.asarray(prediction, dtype=np.float64).reshape(-1)
            accumulator.add(multi_hot(label, scores.size), scores)
        return accumulator

    def merge_accumulators(self, accumulators) -> LwlrapAccumulator:
        return LwlrapAccumulator.merged(accumulators)

    def extract_output(self, accumulator: LwlrapAccumulator) -> dict:
        out = {self._key: accumulator.overall()}
        if self._per_class and accumulator.count is not None:
            for k, value in enumerate(accumulator.per_class()):
                if accumulator.count[k] > 0:
                    key = self._key._replace(sub_key=metric_types.SubKey(class_id=k))
                    out[key] = float(value)
        return out


def _lwlrap_computations(name: str = NAME, per_class: bool = True,
                         eval_config: Optional[config_pb2.EvalConfig] = None,
                         model_names: Optional[list[str]] = None, output_names: Optional[list[str]] = None,
                         example_weighted: bool = False, **_) -> metric_types.MetricComputations:
    computations = []
    for model_name in model_names or [""]:
        for output_name in output_names or [""]:
            key = metric_types.MetricKey(name=name, model_name=model_name, output_name=output_name,
                                         example_weighted=example_weighted)
            computations.append(metric_types.MetricComputation(
                keys=[key], preprocessors=None, combiner=LwlrapCombiner(key, eval_config, per_class)))
    return computations


class Lwlrap(metric_types.Metric):
    """Label-weighted label-ranking average precision (FAT2019's metric), exact, multi-label."""

    def __init__(self, name: str = NAME, per_class: bool = True):
        super().__init__(_lwlrap_computations, name=name, per_class=per_class)


metric_types.register_metric(Lwlrap)


def _rows(element, eval_config, model_names: list[str], output_name: str):
    """[(label, scores of model 0, scores of model 1, ...)] of one element, the models' rows paired."""
    per_model = [list(metric_util.to_label_prediction_example_weight(
        element, eval_config=eval_config, model_name=name, output_name=output_name, flatten=False, squeeze=False))
        for name in model_names]
    return [(group[0][0], *(np.asarray(p, dtype=np.float64).reshape(-1) for _, p, _ in group))
            for group in zip(*per_model)]


class LwlrapIntervalCombiner(beam.CombineFn):
    """StandardMetricInputs -> per clip (positives, hits of each model) -> bootstrap intervals."""

    def __init__(self, keys: dict, model_names: list[str], baseline: Optional[str],
                 eval_config: Optional[config_pb2.EvalConfig], output_name: str, confidence: float, samples: int):
        super().__init__()
        self._keys, self._models, self._baseline = keys, model_names, baseline
        self._candidate = next((n for n in model_names if n != baseline), None)
        self._eval_config, self._output_name = eval_config, output_name
        self._confidence, self._samples = confidence, samples

    def create_accumulator(self) -> list:
        return []

    def add_input(self, accumulator: list, element: metric_types.StandardMetricInputs) -> list:
        for label, *scores in _rows(element, self._eval_config, self._models, self._output_name):
            truth = multi_hot(label, scores[0].size)[None]
            sums = [bootstrap.clip_sums(truth, s[None]) for s in scores]
            accumulator.append((float(sums[0][1][0]), *(float(hits[0]) for hits, _ in sums)))
        return accumulator

    def merge_accumulators(self, accumulators) -> list:
        return [row for acc in accumulators for row in acc]

    def extract_output(self, accumulator: list) -> dict:
        rows = np.asarray(accumulator, dtype=np.float64).reshape(-1, 1 + len(self._models))
        rows = rows[np.lexsort(rows.T)]          # one order, whatever Beam's: the same sums to the last bit
        pairs = [] if self._baseline is None else [tuple(self._models.index(n) for n in (self._candidate, self._baseline))]
        low, high = bootstrap.intervals(rows[:, 1:].T, rows[:, 0], pairs, self._confidence, self._samples)
        out = {}
        for j, name in enumerate(self._models):
            out[self._keys[name, CI_LOW]], out[self._keys[name, CI_HIGH]] = float(low[j]), float(high[j])
        if pairs:
            (c, b), d = pairs[0], len(self._models)
            with np.errstate(invalid="ignore"):
                point = rows[:, 1:].sum(axis=0) / rows[:, 0].sum()
            out.update({self._keys[self._candidate, DIFF]: float(point[c] - point[b]),
                        self._keys[self._candidate, DIFF_LOW]: float(low[d]),
                        self._keys[self._candidate, DIFF_HIGH]: float(high[d])})
        return out


def _interval_computations(confidence: float = 0.95, samples: int = 1000,
                           eval_config: Optional[config_pb2.EvalConfig] = None,
                           model_names: Optional[list[str]] = None, output_names: Optional[list[str]] = None,
                           **_) -> metric_types.MetricComputations:
    # Keys without example_weighted: a threshold by metric name (MetricsSpec.thresholds, the
    # INTERVAL gate's) is keyed so, and a key that differs in it is "Metric not found".
    models = list(model_names or [""])
    baseline = next((s.name for s in (eval_config.model_specs if eval_config else []) if s.is_baseline), None)
    baseline = baseline if baseline in models and len(models) == 2 else None
    computations = []
    for output_name in output_names or [""]:
        names = [(m, n) for m in models for n in (CI_LOW, CI_HIGH)]
        if baseline is not None:
            names += [(m, n) for m in models if m != baseline for n in (DIFF, DIFF_LOW, DIFF_HIGH)]
        keys = {(m, n): metric_types.MetricKey(name=n, model_name=m, output_name=output_name, example_weighted=None)
                for m, n in names}
        computations.append(metric_types.MetricComputation(
            keys=list(keys.values()), preprocessors=None,
            combiner=LwlrapIntervalCombiner(keys, models, baseline, eval_config, output_name, confidence, samples)))
    return computations


class LwlrapInterval(metric_types.Metric):
    """lwlrap's bootstrap intervals, and with a baseline the paired candidate - baseline interval."""

    def __init__(self, confidence: float = 0.95, samples: int = 1000, name: str = "lwlrap_interval"):
        super().__init__(_interval_computations, confidence=confidence, samples=samples, name=name)


metric_types.register_metric(LwlrapInterval)


def eval_config(blessing: BlessingConfig | None = None, has_baseline: bool = True) -> config_pb2.EvalConfig:
    """TFX Evaluator's EvalConfig: lwlrap, its intervals and the example count on the whole eval
    split, with the blessing thresholds of `blessing` (BlessingConfig defaults when None); the
    INTERVAL gate's threshold only when the Evaluator has a baseline (TFMA counts a threshold on a
    metric it did not compute as a failure)."""
    blessing = blessing or BlessingConfig()
    if not 0 < blessing.confidence < 1:
        raise ValueError(f"BlessingConfig.confidence must be in (0, 1), got {blessing.confidence}")
    if blessing.bootstrap_samples < 1:
        raise ValueError(f"BlessingConfig.bootstrap_samples must be >= 1, got {blessing.bootstrap_samples}")
    bar = config_pb2.MetricThreshold(
        value_threshold=config_pb2.GenericValueThreshold(lower_bound={"value": blessing.min_lwlrap}))
    gate = {}
    if blessing.gate == BlessingConfig.POINT:       # TFMA drops a change threshold when there is no baseline
        bar.change_threshold.CopyFrom(config_pb2.GenericChangeThreshold(
            direction=config_pb2.MetricDirection.HIGHER_IS_BETTER, absolute={"value": -blessing.baseline_tolerance}))
    elif has_baseline:
        gate[DIFF_HIGH] = config_pb2.MetricThreshold(value_threshold=config_pb2.GenericValueThreshold(
            lower_bound={"value": -blessing.baseline_tolerance}))
    interval = json.dumps({"confidence": blessing.confidence, "samples": blessing.bootstrap_samples})
    return config_pb2.EvalConfig(
        model_specs=[config_pb2.ModelSpec(signature_name=SIGNATURE, prediction_key=PREDICTION_KEY,
                                          label_key=LABEL_KEY)],
        slicing_specs=[config_pb2.SlicingSpec()],
        metrics_specs=[config_pb2.MetricsSpec(metrics=[
            config_pb2.MetricConfig(class_name="Lwlrap", module=__name__, threshold=bar),
            config_pb2.MetricConfig(class_name="LwlrapInterval", module=__name__, config=interval),
            config_pb2.MetricConfig(class_name="ExampleCount"),
        ], thresholds=gate)])


def evaluation_metrics(evaluation_uri: str) -> dict:
    """The overall figures of a TFMA evaluation written with eval_config(): {"candidate": lwlrap,
    "baseline": lwlrap or None, "examples": count, "candidate_ci" / "baseline_ci": (low, high) or
    None, "diff": candidate - baseline or None, "diff_ci": its paired (low, high) or None}."""
    import tensorflow_model_analysis as tfma
    from tensorflow_model_analysis import constants

    got = {}
    for slice_metrics in tfma.load_metrics(evaluation_uri):
        if slice_metrics.slice_key.single_slice_keys:
            continue
        for kv in slice_metrics.metric_keys_and_values:
            if not (kv.key.HasField("sub_key") or kv.key.is_diff):
                who = "baseline" if kv.key.model_name == constants.BASELINE_KEY else "candidate"
                got[who, kv.key.name] = kv.value.double_value.value
    pair = lambda who, low, high: (got[who, low], got[who, high]) if (who, low) in got else None  # noqa: E731
    count = got.get(("candidate", "example_count"))
    return {"candidate": got.get(("candidate", NAME)), "baseline": got.get(("baseline", NAME)),
            "examples": None if count is None else int(count),
            "candidate_ci": pair("candidate", CI_LOW, CI_HIGH), "baseline_ci": pair("baseline", CI_LOW, CI_HIGH),
            "diff": got.get(("candidate", DIFF)), "diff_ci": pair("candidate", DIFF_LOW, DIFF_HIGH)}


def per_class_metrics(evaluation_uri: str) -> dict:
    """Per-class lwlrap of a TFMA evaluation written with eval_config(): {"candidate": {class index:
    lwlrap}, "baseline": {...} (empty without a baseline)}. Classes without a positive in the eval
    split have no value."""
    import tensorflow_model_analysis as tfma
    from tensorflow_model_analysis import constants

    out = {"candidate": {}, "baseline": {}}
    for slice_metrics in tfma.load_metrics(evaluation_uri):
        if slice_metrics.slice_key.single_slice_keys:
            continue
        for kv in slice_metrics.metric_keys_and_values:
            k = kv.key
            if k.name == NAME and not k.is_diff and k.HasField("sub_key") and k.sub_key.HasField("class_id"):
                who = "baseline" if k.model_name == constants.BASELINE_KEY else "candidate"
                out[who][k.sub_key.class_id.value] = kv.value.double_value.value
    return out
