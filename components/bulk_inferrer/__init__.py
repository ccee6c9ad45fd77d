"""TFX's BulkInferrer, scoring with the model the Pusher serves, at most its max_batch clips a call.

    BulkInferrer(examples=..., model=trainer.outputs["model"], model_blessing=evaluator.outputs["blessing"],
                 baseline_model=resolver.outputs["model"], data_spec=..., model_spec=...)
        -> outputs["inference_result"]   (TFX's PredictionLogs)

Batches: TFX's executor builds RunInference's InferenceSpecType without batch parameters, so Beam's
BatchElements grows batches towards 1,000 and the export's serving_default refuses every call
above ServingConfig.max_batch (INVALID_ARGUMENT, the run fails); seen only once a test split
outgrew the early small batches. The executor sets `batch_parameters.max_batch_size` to the
model's own limit (assets/serving_config.pbtxt, pipeline.serving.predict.model_max_batch).

Which model: the candidate when it is the best the Evaluator saw on the same clips; when the
blessing's best_model_id names the baseline (blessed within tolerance, but the baseline scored
higher), the baseline, which is the model the Pusher keeps serving, so the submission comes from
the served model.
"""
import os

from tfx.components.bulk_inferrer import component as tfx_bulk_inferrer
from tfx.dsl.components.base import executor_spec
from tfx.types import channel, standard_artifacts, standard_component_specs as specs
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from components.bulk_inferrer import executor
from pipeline import versions

CODE_VERSION = "code_version"


class BulkInferrerSpec(specs.BulkInferrerSpec):
    INPUTS = {**specs.BulkInferrerSpec.INPUTS,
              executor.BASELINE_MODEL: ChannelParameter(type=standard_artifacts.Model, optional=True)}
    # for the cache key only: a change of the executor (which model, batch limits) is a cache miss
    PARAMETERS = {**specs.BulkInferrerSpec.PARAMETERS, CODE_VERSION: ExecutionParameter(type=str, optional=True)}


class BulkInferrer(tfx_bulk_inferrer.BulkInferrer):
    SPEC_CLASS = BulkInferrerSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

    def __init__(self, examples, model, model_blessing, data_spec, model_spec, baseline_model=None):
        super(tfx_bulk_inferrer.BulkInferrer, self).__init__(spec=BulkInferrerSpec(
            examples=examples, model=model, model_blessing=model_blessing, baseline_model=baseline_model,
            data_spec=data_spec, model_spec=model_spec, output_example_spec=None,
            inference_result=channel.Channel(type=standard_artifacts.InferenceResult), output_examples=None,
            code_version=versions.code_version(versions.SERVING, os.path.dirname(os.path.abspath(__file__)))))
