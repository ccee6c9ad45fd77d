"""Audio ExampleGen: a TFX Beam component over the project's feature job.

    AudioExampleGen(data_dir="/data/fat2019", config=AudioExampleGenConfig(...))
        -> outputs["examples"]: standard_artifacts.Examples (Split-train, Split-eval)

A BaseBeamComponent, so the pipeline's `beam_pipeline_args` (runner, workers, Dataflow flags) reach
the feature job. Its parameters, which TFX's cache key holds, are the data folder, the config
(proto/example_gen_config.proto, stored as a text proto with every default written out, so MLMD
shows it readably and a changed default is a changed key) and the code's version
(pipeline/versions.py: the project version and a digest of the feature job's source); its driver
(driver.py) adds a fingerprint of the data folder's contents, so that TFX's cache sees changed
data and not only a changed path.
"""
from __future__ import annotations

import os

from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.types import channel, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from components.audio_example_gen import driver, executor, inputs
from pipeline import config as config_lib
from pipeline import versions


class AudioExampleGenSpec(ComponentSpec):
    PARAMETERS = {
        inputs.DATA_DIR: ExecutionParameter(type=str),
        inputs.CONFIG: ExecutionParameter(type=str),
        inputs.CODE_VERSION: ExecutionParameter(type=str),
    }
    INPUTS = {}
    OUTPUTS = {executor.EXAMPLES: ChannelParameter(type=standard_artifacts.Examples)}


class AudioExampleGen(base_beam_component.BaseBeamComponent):
    SPEC_CLASS = AudioExampleGenSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)
    DRIVER_CLASS = driver.Driver

    def __init__(self, data_dir: str, config: config_lib.AudioExampleGenConfig | None = None):
        """data_dir: the Kaggle layout's root (local path, gs:// or s3://); config: what to read
        inside it and how (defaults: train_curated.csv, train_curated/, sample_submission.csv,
        the seed's features, 10% eval)."""
        cfg = config if config is not None else config_lib.AudioExampleGenConfig()
        config_lib.validate(cfg.features)       # fail at pipeline construction, not at run time
        code = versions.code_version(versions.FEATURE_JOB, os.path.dirname(os.path.abspath(__file__)))
        super().__init__(spec=AudioExampleGenSpec(data_dir=data_dir, config=config_lib.resolved_text(cfg),
                                                  code_version=code,
                                                  examples=channel.Channel(type=standard_artifacts.Examples)))
