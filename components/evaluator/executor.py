"""The Evaluator: TFX's, with the project's baseline and gate (proto/evaluator_config.proto).

    Evaluator(examples=..., model=..., baseline_model=resolver.outputs["model"], blessing=BlessingConfig(...))
        -> outputs["evaluation"], outputs["blessing"]   (TFX's ModelEvaluation and ModelBlessing)

The component is TFX's EvaluatorSpec plus the BlessingConfig as a text proto, every default
written out (MLMD shows it readably, and a changed default is a changed cache key); its executor
is TFX's executor with these steps around it.

Before TFX evaluates:
  1. a baseline (the Resolver's: the best or the latest blessed model, pipeline/orchestration/
     baseline.py) whose labels (assets/labels.txt) are not the candidate's, in the same order, is
     no baseline: its score columns mean other labels, so it would be scored against the wrong
     labels (or, with fewer outputs than the eval split's label indices, fail the evaluation);
  2. the EvalConfig is lwlrap_tfma.eval_config(BlessingConfig) for what is left, with or without a
     baseline (the INTERVAL gate exists only with one).
After it, the blessing records what was compared and, in words, why the model was not blessed
(BASELINE_NOTE, REASON), and when blessed the best model so far, BEST_ID: the winner of this
head-to-head on the same clips (the candidate unless the baseline scored higher), which the next
run's BEST baseline is; when that is the baseline, NOT_BEST says so with the paired difference, and
the Pusher keeps serving the baseline (components/serving_pusher) and BulkInferrer scores the test
clips with it (components/bulk_inferrer).
While TFX evaluates, its TFXIO source reads batches of at most the models' max_batch examples
(pipeline.serving.predict.model_max_batch): TFX calls `BeamSource()` with no size, batches then
grow towards 1,000, the export refuses each one above max_batch, and TFMA retries the refused
batch one example at a time (correct, but one model call per example). TFX offers no setting for
this; `capped_batches` wraps its TFXIO factory for the duration of Do (BUILD_NOTES.md). Everything
else is TFX's executor unchanged.
"""
from __future__ import annotations

import contextlib
import logging
import os
from unittest import mock

from tfx.components.evaluator import executor as tfx_evaluator
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.dsl.io import fileio
from tfx.types import channel, standard_artifacts, standard_component_specs as specs
from tfx.types.component_spec import ExecutionParameter
from tfx.utils import path_utils, proto_utils

from pipeline import config as config_lib
from pipeline import saved_model_layout as layout
from pipeline import versions
from pipeline.metrics import lwlrap_tfma
from pipeline.serving import predict

log = logging.getLogger(__name__)
BLESSING_CONFIG = "blessing_config"       # exec property: the BlessingConfig as a text proto
BASELINE_NOTE = "baseline_note"           # blessing properties written here
REASON = "reason"
BEST_ID = "best_model_id"
CODE_VERSION = "code_version"             # exec property for the cache key only: a fix of the metric or the gate
                                          # is a cache miss, not a stale blessing
NOT_BEST = "not_best"                     # blessed, but the baseline scored higher: why it is not pushed


def read_labels(model) -> list[str] | None:
    """A Model artifact's label order (assets/labels.txt of its serving model); None without one."""
    path = os.path.join(path_utils.serving_model_path(model.uri, path_utils.is_old_model_artifact(model)),
                        layout.LABELS_ASSET)
    if not fileio.exists(path):
        return None
    with fileio.open(path, "r") as f:
        return f.read().splitlines()


def labels_differ(candidate, baseline) -> str:
    """How the baseline's labels differ from the candidate's, in words ('' when they are the same)."""
    mine, theirs = read_labels(candidate), read_labels(baseline)
    if mine is None or theirs is None:
        return f"no {layout.LABELS_ASSET} to compare"
    if mine == theirs:
        return ""
    if sorted(mine) == sorted(theirs):
        return f"the same {len(mine)} labels in another order"
    return (f"{len(theirs)} labels, {len(set(theirs) - set(mine))} of them not among the candidate's "
            f"{len(mine)}")


def choose_baseline(candidate, baseline, cfg: config_lib.BlessingConfig):
    """(the Resolver's baseline Model, or None when there is none or it has other labels; what it is
    in words)."""
    if baseline is None:
        return None, "none (no blessed model yet)"
    note = f"{'best' if cfg.baseline == cfg.BEST else 'latest'} blessed model {baseline.id}"
    differ = labels_differ(candidate, baseline)
    if differ:
        return None, f"none: the {note} has other labels ({differ}), so it is no baseline"
    return baseline, note


def max_batch(*models) -> int:
    """The smallest max_batch among Model artifacts (each one's serving model)."""
    return min(predict.model_max_batch(path_utils.serving_model_path(m.uri, path_utils.is_old_model_artifact(m)))
               for m in models)


@contextlib.contextmanager
def capped_batches(limit: int):
    """TFX's evaluator reads each split through `tfxio_factory(pattern).BeamSource()`: inside the
    block the TFXIO objects it makes read batches of `limit` records (the last one fewer)."""
    from tfx.components.util import tfxio_utils

    make_factory = tfxio_utils.get_tfxio_factory_from_artifact

    def factory_from_artifact(*args, **kwargs):
        make = make_factory(*args, **kwargs)

        def capped(pattern):
            tfxio = make(pattern)
            source = tfxio.BeamSource
            tfxio.BeamSource = lambda batch_size=None: source(batch_size=min(batch_size or limit, limit))
            return tfxio
        return capped

    with mock.patch.object(tfx_evaluator.tfxio_utils, "get_tfxio_factory_from_artifact", factory_from_artifact):
        yield


def not_best(m: dict, baseline_id: int) -> str:
    """Why a blessed candidate is not served: the baseline scored higher on the same clips."""
    ci = f" [{m['diff_ci'][0]:+.4f}, {m['diff_ci'][1]:+.4f}]" if m.get("diff_ci") else ""
    return (f"the served model (model {baseline_id}) scored higher on the same clips: candidate - baseline "
            f"{m['diff']:+.4f}{ci}")


def _fmt(x) -> str:
    return "?" if x is None else f"{x:.4f}"


def refusal(failure, m: dict, cfg: config_lib.BlessingConfig) -> str:
    """One TFMA validation failure in words."""
    name, is_diff = failure.metric_key.name, failure.metric_key.is_diff
    if name == lwlrap_tfma.NAME and not is_diff:
        return f"lwlrap {_fmt(m['candidate'])} is below min_lwlrap {cfg.min_lwlrap:g}"
    if name == lwlrap_tfma.NAME:
        return (f"lwlrap {_fmt(m['candidate'])} is more than baseline_tolerance {cfg.baseline_tolerance:g} below "
                f"the baseline's {_fmt(m['baseline'])} (POINT gate)")
    if not failure.HasField("metric_value"):
        return f"{name}: {failure.message or 'not computed'}"
    if name == lwlrap_tfma.DIFF_HIGH and m["diff_ci"] is not None:
        low, high = m["diff_ci"]
        return (f"candidate - baseline is {m['diff']:+.4f}, {cfg.confidence:.0%} paired interval [{low:+.4f}, "
                f"{high:+.4f}] on {m['examples']} clips: worse than the baseline by more than baseline_tolerance "
                f"{cfg.baseline_tolerance:g} beyond the eval split's noise (INTERVAL gate)")
    return f"{name}{' (change)' if is_diff else ''}: {failure.message or 'threshold not met'}"


class Executor(tfx_evaluator.Executor):
    def Do(self, input_dict, output_dict, exec_properties) -> None:
        import tensorflow_model_analysis as tfma

        cfg = config_lib.from_text(exec_properties.get(BLESSING_CONFIG) or "", config_lib.BlessingConfig)
        candidate = input_dict[specs.MODEL_KEY][0]
        baseline, note = choose_baseline(candidate, (input_dict.get(specs.BASELINE_MODEL_KEY) or [None])[0], cfg)
        log.info("baseline: %s", note)
        inputs = {k: v for k, v in input_dict.items() if k != specs.BASELINE_MODEL_KEY}
        if baseline is not None:
            inputs[specs.BASELINE_MODEL_KEY] = [baseline]
        eval_config = lwlrap_tfma.eval_config(cfg, has_baseline=baseline is not None)
        limit = max_batch(candidate, *([baseline] if baseline is not None else []))
        log.info("evaluating in batches of at most %d examples (the models' ServingConfig.max_batch)", limit)
        with capped_batches(limit):
            super().Do(inputs, output_dict, {**exec_properties,
                                             specs.EVAL_CONFIG_KEY: proto_utils.proto_to_json(eval_config)})

        evaluation = output_dict[specs.EVALUATION_KEY][0]
        blessing = output_dict[specs.BLESSING_KEY][0]
        m = lwlrap_tfma.evaluation_metrics(evaluation.uri)
        blessing.set_string_custom_property(BASELINE_NOTE, note)
        if blessing.get_int_custom_property("blessed") == 1:
            beaten = baseline is not None and m["baseline"] is not None and m["baseline"] > m["candidate"]
            best = baseline if beaten else candidate
            blessing.set_int_custom_property(BEST_ID, best.id)
            if beaten:
                blessing.set_string_custom_property(NOT_BEST, not_best(m, baseline.id))
            return
        result = tfma.load_validation_result(evaluation.uri)
        reasons = [refusal(f, m, cfg) for s in result.metric_validations_per_slice for f in s.failures]
        blessing.set_string_custom_property(REASON, "; ".join(reasons) or "TFMA's validation failed")


class EvaluatorSpec(specs.EvaluatorSpec):
    PARAMETERS = {**specs.EvaluatorSpec.PARAMETERS, BLESSING_CONFIG: ExecutionParameter(type=str),
                  CODE_VERSION: ExecutionParameter(type=str, optional=True)}


class Evaluator(base_beam_component.BaseBeamComponent):
    SPEC_CLASS = EvaluatorSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

    def __init__(self, examples, model, baseline_model=None, blessing: config_lib.BlessingConfig | None = None):
        cfg = blessing if blessing is not None else config_lib.BlessingConfig()
        lwlrap_tfma.eval_config(cfg)            # a bad BlessingConfig fails here, not at run time
        super().__init__(spec=EvaluatorSpec(
            examples=examples, model=model, baseline_model=baseline_model,
            blessing_config=config_lib.resolved_text(cfg), example_splits='["eval"]',
            code_version=versions.code_version(versions.EVALUATOR, os.path.dirname(os.path.abspath(__file__))),
            evaluation=channel.Channel(type=standard_artifacts.ModelEvaluation),
            blessing=channel.Channel(type=standard_artifacts.ModelBlessing)))
