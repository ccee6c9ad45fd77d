"""TFX's BulkInferrer, whose RunInference sends the model at most its own max_batch clips a call.

    BulkInferrer(examples=..., model=..., model_blessing=..., data_spec=..., model_spec=...)
        (TFX's arguments and outputs, unchanged)

TFX's executor builds RunInference's InferenceSpecType without batch parameters, so Beam's
BatchElements grows batches towards 1,000 and the export's serving_default refuses every call
above ServingConfig.max_batch (INVALID_ARGUMENT, the run fails); seen only once a test split
outgrew the early small batches. The executor here sets `batch_parameters.max_batch_size` to the
model's own limit (assets/serving_config.pbtxt, pipeline.serving.predict.model_max_batch).
"""
from tfx.components.bulk_inferrer import component as tfx_bulk_inferrer
from tfx.dsl.components.base import executor_spec

from components.bulk_inferrer import executor


class BulkInferrer(tfx_bulk_inferrer.BulkInferrer):
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)
