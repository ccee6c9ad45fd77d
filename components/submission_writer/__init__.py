"""Submission writer: a TFX component that turns BulkInferrer's predictions into submission.csv
(the component here, its executor in executor.py).

    SubmissionWriter(inference_result=bulk_inferrer.outputs["inference_result"],
                     model_blessing=evaluator.outputs["blessing"],
                     sample_submission="DATA/sample_submission.csv")
        -> outputs["submission"]: a Submission artifact, SUBMISSION_URI/submission.csv

Rows follow sample_submission.csv's order and columns its label order (matched by the label names
the model returns), written by a Beam job that joins scores to the sample's rows by file name
(pipeline.serving.submission, as fatp-batch-predict does): no worker holds every clip's scores.
BulkInferrer writes nothing for a model that is not blessed: the writer then writes no file and
records why (`written` 0, `reason`); a blessed model's predictions that miss a row of the sample
fail the component, naming the clips, unless `allow_missing` writes zeros for them.
"""
from __future__ import annotations

import os

from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.types import artifact, channel, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from components.submission_writer import executor
from pipeline import versions

CODE_VERSION = "code_version"


class Submission(artifact.Artifact):
    """A folder holding submission.csv (Kaggle's format)."""
    TYPE_NAME = "Submission"


class SubmissionWriterSpec(ComponentSpec):
    PARAMETERS = {
        executor.SAMPLE_SUBMISSION: ExecutionParameter(type=str),
        executor.ALLOW_MISSING: ExecutionParameter(type=int, optional=True),
        CODE_VERSION: ExecutionParameter(type=str, optional=True),      # for the cache key only
    }
    INPUTS = {
        executor.INFERENCE_RESULT: ChannelParameter(type=standard_artifacts.InferenceResult),
        executor.MODEL_BLESSING: ChannelParameter(type=standard_artifacts.ModelBlessing, optional=True),
    }
    OUTPUTS = {executor.SUBMISSION: ChannelParameter(type=Submission)}


class SubmissionWriter(base_beam_component.BaseBeamComponent):
    SPEC_CLASS = SubmissionWriterSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

    def __init__(self, inference_result, sample_submission: str, model_blessing=None, allow_missing: bool = False):
        super().__init__(spec=SubmissionWriterSpec(
            inference_result=inference_result, model_blessing=model_blessing, sample_submission=sample_submission,
            allow_missing=int(allow_missing), submission=channel.Channel(type=Submission),
            code_version=versions.code_version(versions.SERVING, os.path.dirname(os.path.abspath(__file__)))))
