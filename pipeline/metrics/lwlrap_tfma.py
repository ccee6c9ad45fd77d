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

`eval_config()` turns the project's BlessingConfig (proto/evaluator_config.proto) into the
EvalConfig for TFX's Evaluator: a value threshold (lwlrap >= min_lwlrap) and, when the Evaluator
has a baseline model, a change threshold (lwlrap >= baseline - tolerance). TFMA drops change
thresholds when there is no baseline, so the first model is judged by the bar alone.
"""
from __future__ import annotations

from typing import Optional

import apache_beam as beam
import numpy as np
from tensorflow_model_analysis.metrics import metric_types, metric_util
from tensorflow_model_analysis.proto import config_pb2

from pipeline.metrics.lwlrap import LwlrapAccumulator
from pipeline import saved_model_layout as layout
from pipeline.config import BlessingConfig

NAME = "lwlrap"
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


def eval_config(blessing: BlessingConfig | None = None) -> config_pb2.EvalConfig:
    """TFX Evaluator's EvalConfig: lwlrap and the example count on the whole eval split, with the
    blessing thresholds of `blessing` (BlessingConfig defaults when None)."""
    blessing = blessing or BlessingConfig()
    threshold = config_pb2.MetricThreshold(
        value_threshold=config_pb2.GenericValueThreshold(lower_bound={"value": blessing.min_lwlrap}),
        change_threshold=config_pb2.GenericChangeThreshold(
            direction=config_pb2.MetricDirection.HIGHER_IS_BETTER,
            absolute={"value": -blessing.baseline_tolerance}))
    return config_pb2.EvalConfig(
        model_specs=[config_pb2.ModelSpec(signature_name=SIGNATURE, prediction_key=PREDICTION_KEY,
                                          label_key=LABEL_KEY)],
        slicing_specs=[config_pb2.SlicingSpec()],
        metrics_specs=[config_pb2.MetricsSpec(metrics=[
            config_pb2.MetricConfig(class_name="Lwlrap", module=__name__, threshold=threshold),
            config_pb2.MetricConfig(class_name="ExampleCount"),
        ])])
